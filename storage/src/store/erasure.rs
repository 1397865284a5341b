//! Erasure: every raw row of one user, local or in the object store, has
//! its identity columns (`user_key`, `ip_hash`, `ua_hash`) removed by
//! rewriting the segments that hold them (`crate::erasure` has the rows'
//! transformation, the set of erased events and the log).
//!
//! ```text
//!  Store::erase(user_key)        one at a time; no mirror or tiering pass runs meanwhile
//!   1. the WAL's active file closed, the head sealed until every WAL file
//!      before it is deleted: the user's acknowledged events are all in segments
//!   2. raw segments that may hold the user: by the id index (final ones),
//!      else by the user_key column, block by block
//!   3. per group of GROUP_SEGMENTS: each read whole, its user's rows erased,
//!      written as a new segment (with an id index if the old one had one);
//!      the rows' keys recorded (erasure/{n}.{c}.keys, fsynced)
//!   4. seal lock, one catalog commit: the old segments out, the new in, and
//!      what derives from the old (rollups, merged days, billing snapshots'
//!      basis) renamed to the new, unchanged         crash before: the new files are orphans
//!                                                   removed at the next open; a retry redoes it
//!   5. the old files deleted; the old objects deleted, their cached chunks with them
//!   (2-5 again until no segment holds the user: a finalization meanwhile may have re-sealed one)
//!   6. the Parquet mirror: each events part of the days that may hold the user (touched now, rewritten
//!      by an erasure and not yet written again, or whose raw events retention deleted) read, and
//!      written again in place without the user's identity; objects no segment names deleted
//!   7. erasure/log.jsonl: what was done and when, never the values
//!  Steps 5 and 6 look at what earlier erasures left, not at what this one did: a retry after a
//!  crash or a failure finishes them.
//! ```
//!
//! Counts do not change: only the identity columns do, and re-seals keep
//! the decisions of erased events (`ErasedEvents::keep_decisions`).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{LiveSegment, Store, now_ms};
use crate::billing::day_name;
use crate::erasure::{ErasureRecord, append_log, erase_identity};
use crate::error::{Result, StorageError};
use crate::event::ColumnId;
use crate::ids::SegmentId;
use crate::manifest::{CatalogEdit, Level, SegmentMeta, Tier, sync_dir};
use crate::mirror::{ERASED_PART_TMP, EVENTS_PREFIX, day_of, erase_part, part_key};
use crate::segment::{ColumnData, SegmentReader, SegmentWriteOptions, write_segment};

/// Segments rewritten per catalog commit: each is held in memory whole
/// while its group is written.
const GROUP_SEGMENTS: usize = 4;
/// Seal passes an erasure waits for the WAL's older files to empty.
const FLUSH_ATTEMPTS: usize = 200;
/// Rounds of finding and rewriting segments: more means the user's
/// segments keep being re-sealed meanwhile.
const MAX_ROUNDS: usize = 16;

/// A rewritten segment, not yet committed.
struct Rewritten {
    old: Arc<SegmentMeta>,
    meta: SegmentMeta,
    reader: Arc<SegmentReader>,
    keys: Vec<u128>,
}

impl Store {
    /// Removes the identity columns of every stored event of `user_key`
    /// (see the module docs); `by` names who asked and `requested_ms` when,
    /// for the log.
    ///
    /// # Errors
    /// `Damaged` when a damaged raw segment may hold the user's rows (it can
    /// be neither read nor rewritten); `ObjectStore` when a cold segment or
    /// the mirror cannot be reached; I/O errors. What was committed before
    /// stays erased, and a retry finishes the rest.
    pub fn erase(&self, user_key: &str, by: Option<String>, requested_ms: i64) -> Result<ErasureRecord> {
        let _one_erasure = self.inner.erasure_lock.lock();
        let _no_object_pass = self.inner.object_pass.lock();
        let id = self.inner.erased.next_erasure()?;
        let wal_files_deleted = self.seal_everything_before_now()?;
        let values = [user_key.to_string()];
        let mut clean: HashSet<SegmentId> = HashSet::new();
        let mut rewritten: Vec<(Arc<SegmentMeta>, SegmentMeta)> = Vec::new();
        let mut commit = 0u32;
        for round in 0.. {
            if round == MAX_ROUNDS {
                return Err(StorageError::Busy(format!(
                    "the user's segments were re-sealed {MAX_ROUNDS} times during the erasure: what was rewritten stays erased; retry"
                )));
            }
            let snapshot = self.snapshot();
            if let Some(d) = snapshot.damaged.iter().find(|d| d.meta.level == Level::Raw) {
                return Err(StorageError::Damaged {
                    id: d.meta.id,
                    reason: format!(
                        "a damaged raw segment may hold the user's rows and cannot be rewritten ({}): restore or remove it, then erase again",
                        d.error
                    ),
                });
            }
            let mut holding = Vec::new();
            let unchecked: Vec<&LiveSegment> =
                snapshot.segments.iter().filter(|s| !clean.contains(&s.meta.id)).collect();
            for s in unchecked {
                match may_hold(s, &values)? {
                    true => holding.push(s.clone()),
                    false => {
                        clean.insert(s.meta.id);
                    }
                }
            }
            if holding.is_empty() {
                break;
            }
            for group in holding.chunks(GROUP_SEGMENTS) {
                commit += 1;
                for (old, new) in self.rewrite_group(group, user_key, id, commit)? {
                    clean.insert(new.id);
                    rewritten.push((old, new));
                }
                // A segment whose rows turned out not to be the user's.
                clean.extend(group.iter().map(|s| s.meta.id).filter(|id| !rewritten.iter().any(|(o, _)| o.id == *id)));
            }
        }
        let mirror_days = self.erase_from_objects(user_key, &rewritten)?;
        let record = ErasureRecord {
            id,
            requested_ms,
            finished_ms: now_ms(),
            by,
            segments_rewritten: rewritten.len(),
            remote_segments: rewritten.iter().filter(|(o, _)| o.tier == Tier::Remote).count(),
            rows: rewritten.iter().map(|(o, n)| n.erased_rows - o.erased_rows).sum(),
            mirror_days,
            wal_files_deleted,
        };
        append_log(&self.inner.data_dir, &record)?;
        tracing::info!(erasure = id, segments = record.segments_rewritten, rows = record.rows, "erasure done");
        Ok(record)
    }

    /// The erasures done, oldest first.
    pub fn erasures(&self) -> Result<Vec<ErasureRecord>> {
        crate::erasure::read_log(&self.inner.data_dir.join(crate::erasure::ERASURE_DIR))
    }

    /// Events whose identity was erased, for `/metrics`.
    pub fn erased_events(&self) -> usize {
        self.inner.erased.len()
    }

    /// Seals the head until no WAL file written before this call is left,
    /// and returns how many there were.
    fn seal_everything_before_now(&self) -> Result<usize> {
        let inner = &self.inner;
        let boundary = inner.wal.close_active()?;
        let files = inner.wal.files_before(boundary);
        for _ in 0..FLUSH_ATTEMPTS {
            {
                let _one_sealer = inner.seal_lock.lock();
                self.seal_head(false, |_| true)?;
                self.truncate_wal()?;
            }
            if inner.wal.first_lsn() >= boundary {
                return Ok(files);
            }
            // A request between its WAL write and its head insert: sealed next time.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(StorageError::Busy("the WAL files before the erasure could not be emptied: retry".into()))
    }

    /// Rewrites `group` without `user_key`'s identity and commits it;
    /// returns (old, new) of each segment rewritten.
    fn rewrite_group(
        &self,
        group: &[LiveSegment],
        user_key: &str,
        erasure: u64,
        commit: u32,
    ) -> Result<Vec<(Arc<SegmentMeta>, SegmentMeta)>> {
        let inner = &self.inner;
        let mut done: Vec<Rewritten> = Vec::new();
        let written = group.iter().try_for_each(|s| {
            if let Some(r) = self.rewrite_segment(s, user_key)? {
                done.push(r);
            }
            Ok(())
        });
        let discard = |done: &[Rewritten]| done.iter().for_each(|r| self.delete_segment_files(r.meta.id));
        if let Err(e) = written.and_then(|()| sync_dir(&inner.segments_dir)) {
            discard(&done);
            return Err(e);
        }
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<u128> = done.iter().flat_map(|r| r.keys.iter().copied()).collect();
        if let Err(e) = inner.erased.record(erasure, commit, &keys) {
            discard(&done);
            return Err(e);
        }
        crate::failpoint::hit("erasure_before_commit");
        {
            let _one_sealer = inner.seal_lock.lock();
            // A segment re-sealed or moved meanwhile is found again by the next round.
            let now = self.catalog();
            let (keep, stale): (Vec<Rewritten>, Vec<Rewritten>) =
                done.into_iter().partition(|r| now.segments.get(&r.old.id) == Some(&*r.old));
            discard(&stale);
            done = keep;
            if done.is_empty() {
                return Ok(Vec::new());
            }
            let edit = CatalogEdit {
                add: done.iter().map(|r| r.meta.clone()).collect(),
                remove: done.iter().map(|r| r.old.id).collect(),
                renamed: done.iter().map(|r| (r.old.id, r.meta.id)).collect(),
                ..CatalogEdit::default()
            };
            let catalog = match inner.manifest.commit(&edit) {
                Ok(c) => c,
                Err(e) => {
                    discard(&done);
                    return Err(e);
                }
            };
            crate::failpoint::hit("erasure_after_commit");
            let mut v = inner.visible.write();
            v.catalog = catalog;
            for r in &done {
                v.readers.remove(&r.old.id);
                v.readers.insert(r.meta.id, r.reader.clone());
            }
        }
        if let Some(max_ts) = done.iter().map(|r| r.old.max_ts).max() {
            inner.pipeline.erased(user_key, max_ts);
        }
        for r in done.iter().filter(|r| r.old.tier == Tier::Local) {
            self.delete_segment_files(r.old.id);
        }
        // Best effort: the garbage collection at the end of this erasure (or
        // of its retry) deletes what is left.
        if done.iter().any(|r| r.old.tier == Tier::Remote) {
            match self.object_tier() {
                Ok(tier) => {
                    for r in done.iter().filter(|r| r.old.tier == Tier::Remote) {
                        if let Err(e) = tier.delete(r.old.id) {
                            tracing::warn!(segment = %r.old.id, error = %e, "object of an erased segment not deleted yet");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "objects of erased segments not deleted yet"),
            }
        }
        Ok(done.into_iter().map(|r| (r.old, r.meta)).collect())
    }

    /// `s` rewritten without `user_key`'s identity (not yet committed), or
    /// `None` when none of its rows is the user's.
    fn rewrite_segment(&self, s: &LiveSegment, user_key: &str) -> Result<Option<Rewritten>> {
        let inner = &self.inner;
        let Some((events, keys)) = erase_identity(&s.reader.read_batch()?, user_key)? else {
            return Ok(None);
        };
        let id = inner.manifest.allocate_segment_id()?;
        let path = inner.segments_dir.join(id.file_name());
        let opts = self.segment_options();
        let opts = SegmentWriteOptions { id_index: opts.id_index && s.meta.is_final, ..opts };
        let summary = write_segment(&path, &events, &opts).inspect_err(|_| self.delete_segment_files(id))?;
        let reader = SegmentReader::open(id, &path)
            .inspect_err(|_| self.delete_segment_files(id))?
            .with_cache(inner.block_cache.clone());
        let meta = SegmentMeta {
            id,
            size_bytes: summary.size_bytes,
            tier: Tier::Local,
            created_ms: now_ms(),
            erased_rows: s.meta.erased_rows + keys.len() as u64,
            ..(*s.meta).clone()
        };
        Ok(Some(Rewritten { old: s.meta.clone(), meta, reader: Arc::new(reader), keys }))
    }

    /// Finishes the erasure in the object store: objects of segments no
    /// longer remote deleted (this erasure's old segments, and any an
    /// earlier one left), and the Parquet mirror's events parts that may
    /// hold the user rewritten in place without their identity. Returns
    /// the days of the mirror rewritten.
    fn erase_from_objects(&self, user_key: &str, rewritten: &[(Arc<SegmentMeta>, SegmentMeta)]) -> Result<usize> {
        let catalog = self.catalog();
        let mirror = self.inner.config.parquet_mirror;
        let remote = catalog.segments.values().any(|m| m.tier == Tier::Remote);
        let none_moved = !rewritten.iter().any(|(old, _)| old.tier == Tier::Remote);
        if !mirror && !remote && none_moved && catalog.mirrored.is_empty() {
            return Ok(0);
        }
        let tier = self.object_tier()?;
        self.collect_garbage(&tier)?;
        if !mirror && catalog.mirrored.is_empty() {
            return Ok(0);
        }
        // Days that may hold the user: touched now, and every archived day
        // with an events part of no live raw segment (rewritten since, by an
        // erasure or a re-seal, or whose raw events retention deleted).
        let live: HashSet<String> =
            catalog.segments_of(Level::Raw).filter(|m| m.tier != Tier::Expired).filter_map(part_key).collect();
        let mut days: BTreeSet<i64> = rewritten.iter().map(|(old, _)| day_of(old)).collect();
        for (day, keys) in &catalog.mirrored {
            if keys.iter().any(|k| k.starts_with(EVENTS_PREFIX) && !live.contains(k)) {
                days.insert(*day);
            }
        }
        let tmp = self.inner.data_dir.join(ERASED_PART_TMP);
        let mut rewritten_days = Vec::new();
        for day in &days {
            let mut any = false;
            for key in tier.list_dir(&format!("{EVENTS_PREFIX}day={}", day_name(*day)))? {
                let erased = erase_part(tier.get(&key)?, user_key, &tmp).and_then(|rows| match rows {
                    Some(_) => tier.put(&key, &tmp).map(|_| true),
                    None => Ok(false),
                });
                let _ = std::fs::remove_file(&tmp);
                any |= erased?;
            }
            if any {
                rewritten_days.push(*day);
            }
        }
        // Parts uploaded for a day not yet committed: written again.
        self.inner.mirror_uploaded.lock().retain(|k| !days.iter().any(|d| k.contains(&day_name(*d))));
        // Parts rewritten in place have new sizes: their days are committed
        // to the Iceberg tables again.
        let committed: Vec<(i64, Vec<String>)> = rewritten_days
            .iter()
            .filter_map(|d| Some((*d, super::iceberg::uncommitted(catalog.iceberg.get(d)?, &[]))))
            .collect();
        if !committed.is_empty() {
            let _one_sealer = self.inner.seal_lock.lock();
            let edit = CatalogEdit { iceberg: committed, ..CatalogEdit::default() };
            let next = self.inner.manifest.commit(&edit)?;
            self.inner.visible.write().catalog = next;
        }
        Ok(rewritten_days.len())
    }
}

/// Whether `s` may hold a row whose `user_key` is `values[0]`: the id index
/// rules most segments out without reading their rows; the blocks it
/// leaves (or every block, without one) are checked on the column.
fn may_hold(s: &LiveSegment, values: &[String]) -> Result<bool> {
    let reader = &s.reader;
    let candidates = reader.id_rows(ColumnId::UserKey, values)?;
    if candidates.as_ref().is_some_and(|rows| rows.is_empty()) {
        return Ok(false);
    }
    for block in 0..reader.num_blocks() {
        let rows = reader.block_rows(block);
        let (start, end) = (u32::try_from(rows.start).unwrap_or(u32::MAX), u32::try_from(rows.end).unwrap_or(u32::MAX));
        if candidates.as_ref().is_some_and(|c| c.range_cardinality(start..end) == 0) {
            continue;
        }
        let holds = match reader.read_column(ColumnId::UserKey, block)? {
            ColumnData::Str(a) => a.iter().any(|v| v == Some(values[0].as_str())),
            ColumnData::Dict { codes, dict } => dict.code_of(&values[0]).is_some_and(|c| codes.contains(&c)),
            _ => false,
        };
        if holds {
            return Ok(true);
        }
    }
    Ok(false)
}
