//! The mirror task (`[tiering] parquet_mirror`): each settled day's raw
//! events and rollup rows written to the object store as Parquet
//! (`crate::mirror` has the layout and the file format).
//!
//! ```text
//!  day settled (every raw segment final, billed, merged by every rollup)
//!  and its parts' keys ≠ catalog.mirrored[day]
//!    1. each part not yet uploaded: segment ─► {data_dir}/mirror-part.parquet.tmp ─► put, size checked
//!       (at most PARTS_PER_PASS a pass, so seals keep their pace; uploaded keys remembered in memory)
//!    2. all uploaded: parts of the day's previous set no longer in it deleted
//!    3. catalog commit: mirrored[day] = keys           crash before: the day is written again
//! ```
//!
//! A reprocess that re-seals a settled day changes its segments, so its
//! keys: the day is written again and the old parts deleted. The mirror
//! is an archive: retention never deletes it.

use std::collections::{BTreeMap, HashSet};

use super::{SealReport, Store};
use crate::error::Result;
use crate::manifest::{CatalogEdit, Level, SegmentMeta, Tier};
use crate::mirror::{day_of, part_key, write_part};

/// Parts a pass writes at most.
const PARTS_PER_PASS: usize = 4;
/// The file a part is written to before its upload.
const PART_TMP: &str = "mirror-part.parquet.tmp";

impl Store {
    /// One pass of the mirror task (see the module docs).
    pub fn mirror_parquet(&self) -> Result<SealReport> {
        if !self.inner.config.parquet_mirror {
            return Ok(SealReport::default());
        }
        let snapshot = self.snapshot();
        let catalog = &snapshot.catalog;
        let settled = self.settled_raws(catalog);
        let mut due: Vec<(i64, Vec<(String, &SegmentMeta)>)> = Vec::new();
        for (day, raws) in self.final_days(catalog.segments_of(Level::Raw)) {
            if raws.iter().any(|m| !settled.contains(&m.id) || m.tier == Tier::Expired) {
                continue;
            }
            let ids: HashSet<_> = raws.iter().map(|m| m.id).collect();
            let derived = catalog.segments.values().filter(|m| {
                m.level != Level::Raw
                    && m.tier != Tier::Expired
                    && day_of(m) == day
                    && m.derived_from().next().is_some()
                    && m.derived_from().all(|s| ids.contains(&s))
            });
            let parts: BTreeMap<String, &SegmentMeta> =
                raws.into_iter().chain(derived).filter_map(|m| Some((part_key(m)?, m))).collect();
            let keys: Vec<&String> = parts.keys().collect();
            if catalog.mirrored.get(&day).is_none_or(|k| k.iter().collect::<Vec<_>>() != keys) {
                due.push((day, parts.into_iter().collect()));
            }
        }
        let Some((day, parts)) = due.into_iter().next() else {
            return Ok(SealReport::default());
        };
        let tier = self.object_tier()?;
        let mut uploaded = self.inner.mirror_uploaded.lock();
        let mut report = SealReport::default();
        let missing: Vec<&(String, &SegmentMeta)> =
            parts.iter().filter(|(key, _)| !uploaded.contains(key)).take(PARTS_PER_PASS).collect();
        for (key, meta) in missing {
            let Some(live) = snapshot.segments.iter().chain(snapshot.rollups.iter()).find(|s| s.meta.id == meta.id)
            else {
                return Ok(report); // not open (damaged): the day waits
            };
            let tmp = self.inner.data_dir.join(PART_TMP);
            let written = write_part(&live.reader, meta.level, &tmp).and_then(|rows| Ok((rows, tier.put(key, &tmp)?)));
            let _ = std::fs::remove_file(&tmp);
            let (rows, bytes) = written?;
            report.rows_out += rows as usize;
            tracing::debug!(key, rows, bytes, "part of the Parquet mirror written");
            uploaded.insert(key.clone());
        }
        if parts.iter().any(|(key, _)| !uploaded.contains(key)) {
            return Ok(report);
        }
        let keys: Vec<String> = parts.iter().map(|(key, _)| key.clone()).collect();
        let stale = catalog.mirrored.get(&day).into_iter().flatten().filter(|k| !keys.contains(k));
        for key in stale {
            tier.remove(key)?;
        }
        let _one_sealer = self.inner.seal_lock.lock();
        let now = self.catalog();
        if parts.iter().any(|(_, m)| !now.segments.contains_key(&m.id)) {
            return Ok(report); // a segment was replaced meanwhile: written again next pass
        }
        let edit = CatalogEdit { mirrored: vec![(day, keys.clone())], ..CatalogEdit::default() };
        let next = self.inner.manifest.commit(&edit)?;
        self.inner.visible.write().catalog = next;
        for key in &keys {
            uploaded.remove(key);
        }
        report.partitions += 1;
        tracing::info!(day = %crate::billing::day_name(day), parts = keys.len(), store = tier.url(), "day written to the Parquet mirror");
        Ok(report)
    }
}
