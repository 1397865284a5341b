//! The retention task: deletes the segments the policy says are past their
//! ttl (`crate::retention`), oldest data first, in one catalog edit a pass.
//!
//! ```text
//!  rollup segment (minute, hour, day) past its level's ttl ─► removed, file deleted
//!  raw segment (local or in the object store) past retention.raw.ttl, final, its day's
//!      billing snapshot taken, and held by a merged day of every configured rollup ─► entry kept as Tier::Expired (its rollups are planned
//!      by it; queries needing its events are refused), file and sidecars deleted
//!  expired raw entry nothing derives from any more ─► dropped; Catalog::deleted_before moves up
//! ```
//!
//! The rollup task does not rebuild what retention deleted: it skips raw
//! segments that are not local, and rollup rows of a level past its ttl.

use std::collections::HashSet;
use std::path::Path;

use super::{SealReport, Store, now_ms};
use crate::error::{IoContext, Result, StorageError};
use crate::ids::SegmentId;
use crate::manifest::{CatalogEdit, Level, SegmentMeta, Tier, sync_dir};
use crate::retention::RetentionPolicy;

/// The policy set at run time, in the data directory: it wins over the
/// configuration file's until changed again.
const RETENTION_FILE: &str = "retention.json";

/// The end of a segment's time bucket (what ages count from).
pub(super) fn bucket_end(m: &SegmentMeta) -> i64 {
    m.partition.bucket_start_ms.saturating_add(m.bucket_width_ms)
}

/// The policy persisted in `data_dir`, if one was set at run time.
pub(super) fn load(data_dir: &Path) -> Result<Option<RetentionPolicy>> {
    let path = data_dir.join(RETENTION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StorageError::Io { path, source }),
    }
}

impl Store {
    /// The policy in force.
    pub fn retention(&self) -> RetentionPolicy {
        *self.inner.retention.read()
    }

    /// Checks `policy`, persists it (it survives a restart and wins over
    /// the configuration file) and puts it in force for the next pass of
    /// the retention task. A refused policy changes nothing.
    pub fn set_retention(&self, policy: RetentionPolicy) -> Result<()> {
        policy.validate(self.inner.config.allowed_lateness_ms).map_err(StorageError::Config)?;
        let dir: &Path = &self.inner.data_dir;
        let (path, tmp) = (dir.join(RETENTION_FILE), dir.join(format!("{RETENTION_FILE}.tmp")));
        let json = serde_json::to_vec_pretty(&policy).map_err(|e| StorageError::Internal(e.to_string()))?;
        std::fs::write(&tmp, json).at(&tmp)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
        sync_dir(dir)?;
        *self.inner.retention.write() = policy;
        tracing::info!(?policy, "retention policy set");
        Ok(())
    }

    /// Whether rows of `level` for a bucket ending at `end_ms` are past
    /// their ttl now: the rollup task does not build them again.
    pub(super) fn past_ttl(&self, level: Level, end_ms: i64) -> bool {
        self.inner.retention.read().expired(level, end_ms, now_ms())
    }

    /// One pass of the retention task at the wall-clock time.
    pub fn apply_retention(&self) -> Result<SealReport> {
        self.apply_retention_at(now_ms())
    }

    /// One pass of the retention task as if the wall clock read `now`
    /// (see the module docs).
    pub fn apply_retention_at(&self, now: i64) -> Result<SealReport> {
        let policy = self.retention();
        if [Level::Raw, Level::Minute, Level::Hour, Level::Day].iter().all(|&l| policy.level(l).ttl.is_none()) {
            return Ok(SealReport::default());
        }
        let _one_sealer = self.inner.seal_lock.lock();
        let catalog = self.catalog();
        // Final, billed, and held by a merged day of every rollup.
        let settled = self.settled_raws(&catalog);
        let mut expire: Vec<SegmentMeta> = Vec::new();
        let mut remove: Vec<SegmentId> = Vec::new();
        for m in catalog.segments.values() {
            if !policy.expired(m.level, bucket_end(m), now) {
                continue;
            }
            match (m.level, m.tier) {
                (Level::Raw, Tier::Local | Tier::Remote) => {
                    if settled.contains(&m.id) {
                        expire.push(SegmentMeta { tier: Tier::Expired, ..m.clone() });
                    }
                }
                (Level::Raw, _) => {}
                _ => remove.push(m.id),
            }
        }
        // Expired raw entries (old and new) that nothing will derive from.
        let removed: HashSet<SegmentId> = remove.iter().copied().collect();
        let derived: HashSet<SegmentId> =
            catalog.segments.values().filter(|m| !removed.contains(&m.id)).flat_map(|m| m.derived_from()).collect();
        let expiring: HashSet<SegmentId> = expire.iter().map(|m| m.id).collect();
        let dropped: Vec<&SegmentMeta> = catalog
            .segments
            .values()
            .filter(|m| m.level == Level::Raw && (m.tier == Tier::Expired || expiring.contains(&m.id)))
            .filter(|m| !derived.contains(&m.id))
            .collect();
        if expire.is_empty() && remove.is_empty() && dropped.is_empty() {
            return Ok(SealReport::default());
        }
        let dropped_ids: HashSet<SegmentId> = dropped.iter().map(|m| m.id).collect();
        // Nothing kept starts before the new floor: queries before it are
        // refused, and none of them would have found data.
        let kept_from = catalog
            .segments
            .values()
            .filter(|m| !removed.contains(&m.id) && !dropped_ids.contains(&m.id))
            .map(|m| m.partition.bucket_start_ms)
            .min()
            .unwrap_or(i64::MAX);
        let deleted_before = dropped.iter().map(|m| bucket_end(m)).max().map(|end| end.min(kept_from));
        let files: Vec<SegmentId> = remove.iter().chain(&expiring).copied().collect();
        let edit = CatalogEdit {
            add: expire.iter().filter(|m| !dropped_ids.contains(&m.id)).cloned().collect(),
            remove: remove.iter().chain(&expiring).chain(dropped_ids.difference(&expiring)).copied().collect(),
            deleted_before,
            ..CatalogEdit::default()
        };
        let next = self.inner.manifest.commit(&edit)?;
        crate::failpoint::hit("retention_after_commit");
        {
            let mut v = self.inner.visible.write();
            v.catalog = next;
            for id in &files {
                v.readers.remove(id);
            }
        }
        for id in &files {
            self.delete_segment_files(*id);
        }
        // Objects of cold segments: best effort (the tiering task deletes
        // any object whose segment is not remote in the catalog).
        let cold: Vec<SegmentId> = files
            .iter()
            .filter(|id| catalog.segments.get(id).is_some_and(|m| m.tier == Tier::Remote))
            .copied()
            .collect();
        if !cold.is_empty() {
            match self.object_tier() {
                Ok(tier) => {
                    for id in cold {
                        if let Err(e) = tier.delete(id) {
                            tracing::warn!(segment = %id, error = %e, "expired object not deleted yet");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expired objects not deleted yet"),
            }
        }
        tracing::info!(
            raw_expired = expire.len(),
            rollups_removed = remove.len(),
            entries_dropped = dropped_ids.len(),
            ?deleted_before,
            "retention applied"
        );
        Ok(SealReport { replaced: files, ..SealReport::default() })
    }
}
