//! The tiering task: moves segments past their level's `hot` age to the
//! object store (`crate::tier`), where queries still read them.
//!
//! ```text
//!  segment past retention.{level}.hot, settled (raw: final, billed, merged by every rollup;
//!  rollup rows: of settled raw segments), in the Parquet mirror if there is one
//!    1. upload segments/{id}.seg                       crash: catalog still says local; uploaded again
//!    2. open it from the store (size, trailer, header,  (the object is overwritten)
//!       footer checksum): the verification
//!    3. seal lock, catalog commit of the segments       crash: the local file is an orphan,
//!       still local in it: tier remote; queries switch  removed at the next open
//!       to the remote reader (steps 1-2 run without the lock)
//!    4. local file and sidecars deleted
//!  every pass: objects whose segment is no longer remote in the catalog (replaced by a
//!  re-seal, expired, an upload whose commit never came) are deleted
//! ```
//!
//! A pass moves at most `SEGMENTS_PER_PASS` segments, so seals keep their pace.

use std::collections::HashSet;
use std::sync::Arc;

use super::retention::bucket_end;
use super::rollups::is_of;
use super::{SealReport, Store, now_ms, open_segment_remote};
use crate::error::Result;
use crate::ids::SegmentId;
use crate::manifest::{Catalog, CatalogEdit, Level, SegmentMeta, Tier};
use crate::segment::SegmentReader;
use crate::tier::ObjectTier;

/// The object store of `config` (`{data_dir}/objects` unless it names
/// one), with its cache of cold chunks in `{data_dir}/cache`.
pub(super) fn open_object_tier(config: &super::StoreConfig, data_dir: &std::path::Path) -> Result<ObjectTier> {
    let url = match &config.object_store {
        Some(url) => url.clone(),
        None => data_dir.join("objects").to_string_lossy().into_owned(),
    };
    let timeout = std::time::Duration::from_millis(config.object_store_timeout_ms.max(1));
    let tier = ObjectTier::open(&url, timeout)?;
    Ok(match config.object_cache_bytes {
        0 => tier,
        bytes => tier.with_cache(crate::tier::ChunkCache::open(&data_dir.join("cache"), bytes)?),
    })
}

/// Whether `m`'s part of the Parquet mirror is written (or it has none).
fn mirrored(catalog: &Catalog, m: &SegmentMeta) -> bool {
    let day = catalog.mirrored.get(&crate::mirror::day_of(m));
    crate::mirror::part_key(m).is_none_or(|key| day.is_some_and(|keys| keys.contains(&key)))
}

/// Segments a pass of the tiering task moves at most.
const SEGMENTS_PER_PASS: usize = 16;

/// What the tiering task has left, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TieringStatus {
    /// Segments past their `hot` age still on local disk.
    pub due: usize,
    /// How long the oldest of them has been due, in ms (0 when none is).
    pub lag_ms: i64,
}

impl Store {
    /// The object store, opened on first use (`StoreConfig::object_store`).
    pub(super) fn object_tier(&self) -> Result<Arc<ObjectTier>> {
        let mut slot = self.inner.object_tier.lock();
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let tier = Arc::new(open_object_tier(&self.inner.config, &self.inner.data_dir)?);
        let remote: HashSet<SegmentId> =
            self.catalog().segments.values().filter(|m| m.tier == Tier::Remote).map(|m| m.id).collect();
        tier.keep_cached(&remote);
        *slot = Some(tier.clone());
        Ok(tier)
    }

    /// What the object store was asked for; `None` before it is first used.
    pub fn object_store_stats(&self) -> Option<crate::tier::ObjectStoreStats> {
        self.inner.object_tier.lock().as_ref().map(|t| t.stats())
    }

    /// Raw segments nothing will rewrite in bulk any more: final, their
    /// day's billing snapshot up to date, and held by a merged day of
    /// every configured rollup. Retention and tiering act only on these.
    pub(super) fn settled_raws(&self, catalog: &Catalog) -> HashSet<SegmentId> {
        let defs = &self.inner.config.rollups;
        let merged: Vec<HashSet<SegmentId>> = defs
            .iter()
            .map(|d| {
                let of_d = catalog.segments.values().filter(|m| !m.covers.is_empty() && is_of(m, d));
                of_d.flat_map(|m| m.covers.iter().copied()).collect()
            })
            .collect();
        self.final_days(catalog.segments_of(Level::Raw))
            .into_iter()
            .filter(|(day, raws)| {
                let ids: Vec<SegmentId> = raws.iter().map(|m| m.id).collect();
                super::billing::up_to_date(catalog, *day, &ids)
            })
            .flat_map(|(_, raws)| raws.into_iter().map(|m| m.id))
            .filter(|id| merged.iter().all(|held| held.contains(id)))
            .collect()
    }

    /// Local segments past their level's `hot` age at `now`, settled,
    /// oldest first.
    fn due_for_tiering(&self, catalog: &Catalog, now: i64) -> Vec<SegmentMeta> {
        let policy = self.retention();
        let settled = self.settled_raws(catalog);
        let mut due: Vec<SegmentMeta> = catalog
            .segments
            .values()
            .filter(|m| m.tier == Tier::Local)
            .filter(|m| policy.level(m.level).hot.is_some_and(|hot| now >= bucket_end(m).saturating_add(hot.ms())))
            .filter(|m| match m.level {
                Level::Raw => settled.contains(&m.id),
                _ => m.derived_from().all(|r| settled.contains(&r)),
            })
            // With the Parquet mirror, a segment moves once its part is
            // written (read from local disk, not back from the store).
            .filter(|m| !self.inner.config.parquet_mirror || mirrored(catalog, m))
            .cloned()
            .collect();
        due.sort_by_key(|m| (bucket_end(m), m.id));
        due
    }

    /// How far the tiering task is behind.
    pub fn tiering_status(&self) -> TieringStatus {
        let now = now_ms();
        let policy = self.retention();
        let due = self.due_for_tiering(&self.catalog(), now);
        let lag_ms = due
            .iter()
            .filter_map(|m| Some(now - bucket_end(m).saturating_add(policy.level(m.level).hot?.ms())))
            .max()
            .unwrap_or(0);
        TieringStatus { due: due.len(), lag_ms }
    }

    /// One pass of the tiering task at the wall-clock time.
    pub fn apply_tiering(&self) -> Result<SealReport> {
        self.apply_tiering_at(now_ms())
    }

    /// One pass of the tiering task as if the wall clock read `now` (see
    /// the module docs).
    pub fn apply_tiering_at(&self, now: i64) -> Result<SealReport> {
        // No erasure meanwhile: it could rewrite a segment being uploaded.
        let _pass = self.inner.object_pass.lock();
        let policy = self.retention();
        let any_hot =
            [Level::Raw, Level::Minute, Level::Hour, Level::Day].iter().any(|&l| policy.level(l).hot.is_some());
        let any_remote = self.catalog().segments.values().any(|m| m.tier == Tier::Remote);
        if !any_hot && !any_remote {
            return Ok(SealReport::default());
        }
        // Uploads run without the seal lock (seals go on meanwhile); the
        // commit takes it and keeps only segments still local in the catalog.
        let tier = self.object_tier()?;
        let catalog = self.catalog();
        let mut moved: Vec<(SegmentMeta, Arc<SegmentReader>)> = Vec::new();
        let mut failure = None;
        for meta in self.due_for_tiering(&catalog, now).into_iter().take(SEGMENTS_PER_PASS) {
            let path = self.inner.segments_dir.join(meta.id.file_name());
            let reader = tier.upload(meta.id, &path).and_then(|_| open_segment_remote(&meta, tier.clone()));
            match reader {
                Ok(r) => moved.push((
                    SegmentMeta { tier: Tier::Remote, ..meta },
                    Arc::new(r.with_cache(self.inner.block_cache.clone())),
                )),
                Err(e) => {
                    tracing::warn!(segment = %meta.id, error = %e, "segment not moved to the object store; retried next pass");
                    failure = Some(e);
                    break;
                }
            }
        }
        let ids: Vec<SegmentId> = {
            let _one_sealer = self.inner.seal_lock.lock();
            let now = self.catalog();
            // Replaced or expired during the upload: its object is garbage now.
            moved.retain(|(m, _)| now.segments.get(&m.id).is_some_and(|c| c.tier == Tier::Local));
            let ids: Vec<SegmentId> = moved.iter().map(|(m, _)| m.id).collect();
            if !moved.is_empty() {
                let edit = CatalogEdit {
                    add: moved.iter().map(|(m, _)| m.clone()).collect(),
                    remove: ids.clone(),
                    ..CatalogEdit::default()
                };
                let next = self.inner.manifest.commit(&edit)?;
                crate::failpoint::hit("tiering_after_commit");
                let mut v = self.inner.visible.write();
                v.catalog = next;
                for (m, r) in &moved {
                    v.readers.insert(m.id, r.clone());
                }
            }
            ids
        };
        if !moved.is_empty() {
            for id in &ids {
                self.delete_segment_files(*id);
            }
            let bytes: u64 = moved.iter().map(|(m, _)| m.size_bytes).sum();
            tracing::info!(segments = ids.len(), bytes, store = tier.url(), "segments moved to the object store");
        }
        self.collect_garbage(&tier)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(SealReport { segments: ids, ..SealReport::default() }),
        }
    }

    /// Deletes objects whose segment the catalog no longer holds as remote.
    pub(super) fn collect_garbage(&self, tier: &ObjectTier) -> Result<()> {
        let catalog = self.catalog();
        let remote: HashSet<SegmentId> =
            catalog.segments.values().filter(|m| m.tier == Tier::Remote).map(|m| m.id).collect();
        for id in tier.list()? {
            if !remote.contains(&id) {
                tier.delete(id)?;
                tracing::info!(segment = %id, "object of a segment no longer in the object store tier deleted");
            }
        }
        Ok(())
    }
}
