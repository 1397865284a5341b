//! The mirror task (`[tiering] parquet_mirror`): each settled day's raw
//! events and rollup rows written to the object store as Parquet
//! (`crate::mirror` has the layout and the file format).
//!
//! ```text
//!  day settled (every raw segment final, billed, merged by every rollup)
//!  and its parts' keys ≠ catalog.mirrored[day]
//!    1. each part not yet uploaded: segment ─► {data_dir}/mirror-part.parquet.tmp ─► put, size checked
//!       (at most PARTS_PER_PASS a pass, so seals keep their pace; uploaded keys remembered in memory)
//!    2. all uploaded, the raw segments changed: whatever else the day's directories hold deleted
//!    3. catalog commit: mirrored[day] = keys           crash before: the day is written again
//! ```
//!
//! A reprocess that re-seals a settled day changes its raw segments, so
//! their keys: the day is written again, and at its commit every object of
//! the day's directories that the new set does not name is deleted (parts
//! of the old version, and of an earlier attempt a crash or a re-seal cut
//! short), but for parts the Iceberg tables still hold: those go once the
//! day's next Iceberg commit has replaced them. While a day is rewritten, readers may see old and new parts
//! side by side. Rollup segments that only go (their level's ttl) change
//! nothing: the mirror is an archive, retention never deletes it; a rollup
//! that only comes (a new rollup's backfill) adds its parts. A day that
//! fails is tried again after the other due days, so it holds up no other.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{SealReport, Store};
use crate::billing::day_name;
use crate::error::{Result, StorageError};
use crate::manifest::{Catalog, CatalogEdit, Level, SegmentMeta, Tier};
use crate::mirror::{EVENTS_PREFIX, MIRROR_DIR, PART_TMP, day_of, part_key, write_part};

/// Parts a pass writes at most.
const PARTS_PER_PASS: usize = 4;

impl Store {
    /// One pass of the mirror task (see the module docs).
    pub fn mirror_parquet(&self) -> Result<SealReport> {
        if !self.inner.config.parquet_mirror {
            return Ok(SealReport::default());
        }
        // No erasure meanwhile: it rewrites parts of the days it touches.
        let _pass = self.inner.object_pass.lock();
        let snapshot = self.snapshot();
        let catalog = &snapshot.catalog;
        let due = self.mirror_due(catalog);
        one_day(&self.inner.mirror_failed, &due, |d| d.day, |day| self.mirror_day(&snapshot, day))
    }

    /// The settled days whose mirror is missing or out of date, oldest first.
    fn mirror_due<'a>(&self, catalog: &'a Catalog) -> Vec<DueDay<'a>> {
        let settled = self.settled_raws(catalog);
        let mut due = Vec::new();
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
            let recorded: BTreeSet<&String> = catalog.mirrored.get(&day).into_iter().flatten().collect();
            let rewrite =
                !catalog.mirrored.contains_key(&day) || events(parts.keys()) != events(recorded.iter().copied());
            let added = parts.keys().any(|k| !recorded.contains(k));
            if rewrite || added {
                // Unchanged raw segments: keep the parts of rollup segments since gone.
                let keep: Vec<String> = match rewrite {
                    true => Vec::new(),
                    false => recorded.iter().filter(|k| !parts.contains_key(**k)).map(|k| (*k).clone()).collect(),
                };
                due.push(DueDay { day, parts: parts.into_iter().collect(), keep, rewrite });
            }
        }
        due
    }

    /// Writes (some of) the parts of `day`; once all are up, deletes what
    /// else its directories hold (on a rewrite) and commits its keys.
    fn mirror_day(&self, snapshot: &super::Snapshot, day: &DueDay<'_>) -> Result<SealReport> {
        let tier = self.object_tier()?;
        let mut uploaded = self.inner.mirror_uploaded.lock();
        let mut report = SealReport::default();
        // A part the catalog records is in the store already: a segment's
        // part never changes (an erasure rewrites it in place), and tables
        // of other engines may name it with its size.
        let recorded: BTreeSet<&String> = snapshot.catalog.mirrored.get(&day.day).into_iter().flatten().collect();
        uploaded.extend(day.parts.iter().filter(|(key, _)| recorded.contains(key)).map(|(key, _)| key.clone()));
        let missing: Vec<&(String, &SegmentMeta)> =
            day.parts.iter().filter(|(key, _)| !uploaded.contains(key)).take(PARTS_PER_PASS).collect();
        for (key, meta) in missing {
            let live = snapshot.segments.iter().chain(snapshot.rollups.iter()).find(|s| s.meta.id == meta.id);
            let Some(live) = live else {
                return Err(StorageError::Internal(format!(
                    "segment {} of day {} is not open: the day's mirror waits",
                    meta.id,
                    day_name(day.day)
                )));
            };
            let tmp = self.inner.data_dir.join(PART_TMP);
            let written = write_part(&live.reader, meta.level, &tmp).and_then(|rows| Ok((rows, tier.put(key, &tmp)?)));
            let _ = std::fs::remove_file(&tmp);
            let (rows, bytes) = written?;
            report.rows_out += rows as usize;
            tracing::debug!(key, rows, bytes, "part of the Parquet mirror written");
            uploaded.insert(key.clone());
        }
        if day.parts.iter().any(|(key, _)| !uploaded.contains(key)) {
            return Ok(report);
        }
        let mut keys: Vec<String> =
            day.parts.iter().map(|(key, _)| key.clone()).chain(day.keep.iter().cloned()).collect();
        keys.sort();
        if day.rewrite {
            // Every directory of the day: the new parts', the old ones', and
            // those of the tables configured now.
            let name = day_name(day.day);
            let dir_of = |key: &String| key.rsplit_once('/').map(|(dir, _)| dir.to_string());
            let mut dirs: BTreeSet<String> = keys.iter().filter_map(dir_of).collect();
            let snapshot_keys = snapshot.catalog.mirrored.get(&day.day).into_iter().flatten();
            dirs.extend(snapshot_keys.filter_map(dir_of));
            dirs.insert(format!("{EVENTS_PREFIX}day={name}"));
            for def in &self.inner.config.rollups {
                for level in [Level::Minute, Level::Hour, Level::Day] {
                    dirs.insert(format!("{MIRROR_DIR}/rollups/{}/{}/day={name}", def.name(), level.as_str()));
                }
            }
            // Parts the Iceberg tables hold stay until the day's next commit
            // there replaces them (`store/iceberg.rs` deletes them then).
            let committed: BTreeSet<&String> = match self.inner.config.iceberg {
                true => snapshot.catalog.iceberg.get(&day.day).into_iter().flatten().collect(),
                false => BTreeSet::new(),
            };
            for dir in dirs {
                for stale in tier.list_dir(&dir)?.into_iter().filter(|k| !keys.contains(k) && !committed.contains(k)) {
                    tier.remove(&stale)?;
                }
            }
        }
        let _one_sealer = self.inner.seal_lock.lock();
        let now = self.catalog();
        if day.parts.iter().any(|(_, m)| !now.segments.contains_key(&m.id)) {
            // A segment was replaced meanwhile: the day is due again, its
            // parts are written anew and the stale ones deleted then.
            uploaded.retain(|k| !day.parts.iter().any(|(key, _)| key == k));
            return Ok(report);
        }
        let edit = CatalogEdit { mirrored: vec![(day.day, keys.clone())], ..CatalogEdit::default() };
        let next = self.inner.manifest.commit(&edit)?;
        self.inner.visible.write().catalog = next;
        uploaded.retain(|k| !keys.contains(k));
        report.partitions += 1;
        tracing::info!(day = %day_name(day.day), parts = keys.len(), store = tier.url(), "day written to the Parquet mirror");
        Ok(report)
    }
}

/// Runs `work` on the first of `due` (days oldest first, `day_of` each's
/// day) that did not fail last time, or on the first if all did, and
/// records in `failed` whether it failed: a day that fails holds up no other.
pub(super) fn one_day<T>(
    failed: &parking_lot::Mutex<HashSet<i64>>,
    due: &[T],
    day_of: impl Fn(&T) -> i64,
    work: impl FnOnce(&T) -> Result<SealReport>,
) -> Result<SealReport> {
    let skip = failed.lock().clone();
    let Some(next) = due.iter().find(|d| !skip.contains(&day_of(d))).or_else(|| due.first()) else {
        return Ok(SealReport::default());
    };
    let result = work(next);
    match result.is_ok() {
        true => failed.lock().remove(&day_of(next)),
        false => failed.lock().insert(day_of(next)),
    };
    result
}

/// The keys of raw events' parts among `keys`.
fn events<'a>(keys: impl Iterator<Item = &'a String>) -> BTreeSet<&'a String> {
    keys.filter(|k| k.starts_with(EVENTS_PREFIX)).collect()
}

/// A day the mirror task has to write.
struct DueDay<'a> {
    day: i64,
    /// Its parts now, by key.
    parts: Vec<(String, &'a SegmentMeta)>,
    /// Keys recorded before whose segments have gone (retention), kept.
    keep: Vec<String>,
    /// Whether its raw segments changed: stale parts are deleted at commit.
    rewrite: bool,
}

#[cfg(test)]
mod tests {
    use crate::event::{Event, EventBatch, EventType};
    use crate::manifest::Level;
    use crate::retention::RetentionPolicy;
    use crate::seal::SealPipeline;
    use crate::store::{Store, StoreConfig};

    const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
    const DAY: i64 = 86_400_000;

    fn event(i: i64, ts: i64) -> Event {
        Event {
            event_id: format!("e{i}"),
            kind: EventType::Impression,
            ts,
            publisher_id: "p".into(),
            advertiser_id: format!("a{}", i % 2),
            campaign_id: "c".into(),
            ad_id: "x".into(),
            ..Event::default()
        }
    }

    /// Every file under `dir`, relative to it.
    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                match e.path().is_dir() {
                    true => stack.push(e.path()),
                    false => out.push(e.path().strip_prefix(dir).expect("under").to_string_lossy().into_owned()),
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_day_is_mirrored_once_and_rollup_rows_that_retention_removes_leave_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig { fsync: false, close_idle_ms: 0, parquet_mirror: true, ..StoreConfig::default() };
        let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
        let day0 = BASE.div_euclid(DAY) * DAY;
        let mut events: Vec<Event> = (0..400).map(|i| event(i, BASE + i * 300_000)).collect();
        events.extend((0..5).map(|i| event(1_000 + i, day0 + 3 * DAY + i)));
        store.append(&EventBatch::from_events(&events)).expect("append");
        store.seal_all().expect("seal");
        crate::testutil::settle(&store);
        let catalog = store.catalog();
        assert!(store.mirror_due(&catalog).is_empty(), "every settled day mirrored");
        assert_eq!(catalog.mirrored.len(), 2, "the two settled days");
        let keys = catalog.mirrored.get(&day0).cloned().expect("the first day mirrored");
        assert!(keys.iter().any(|k| k.starts_with("parquet/events/day=2026-11-22/")), "{keys:?}");
        assert!(keys.iter().any(|k| k.starts_with("parquet/rollups/campaign/minute/day=2026-11-22/")), "{keys:?}");
        let objects = dir.path().join("objects");
        let mirrored: Vec<String> = catalog.mirrored.values().flatten().cloned().collect();
        let mut mirrored = mirrored;
        mirrored.sort();
        assert_eq!(files(&objects), mirrored, "exactly the parts the catalog names");

        // Minute rows past their ttl go; the mirror keeps them.
        let policy: RetentionPolicy = serde_json::from_str(r#"{"minute": {"ttl": "3d"}}"#).expect("policy");
        store.set_retention(policy).expect("set");
        store.apply_retention_at(day0 + 30 * DAY).expect("retention");
        let catalog = store.catalog();
        assert!(
            !catalog.segments.values().any(|m| m.level == Level::Minute && m.partition.bucket_start_ms < day0 + DAY)
        );
        assert!(store.mirror_due(&catalog).iter().all(|d| d.day != day0), "nothing to write again");
        store.mirror_parquet().expect("mirror");
        assert_eq!(store.catalog().mirrored.get(&day0), Some(&keys));
        assert_eq!(files(&objects), mirrored, "no part deleted");
    }
}
