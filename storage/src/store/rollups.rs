//! The rollup task: keeps every raw segment's rollup segments in step with
//! the configured rollups, and merges final days into hour and day rows.
//!
//! ```text
//!  every pass: rollup segments of rollups no longer configured (by name and dimensions) ─► removed
//!              raw segments whose numbers a configured rollup lacks (a rollup added to the
//!              configuration, data sealed before it) ─► read back, rollup rows written, committed
//!              (at most BACKFILL_SEGMENTS_PER_PASS raw segments a pass, so seals keep their pace)
//!              final days not yet merged ─► hour and day segments (rollups/days.rs)
//! ```
//!
//! Queries use whatever rollup segments exist, segment by segment, and read
//! the events of the rest, so a backfill in progress changes how fast a
//! query is, never its numbers.

use std::collections::HashSet;

use serde::Serialize;

use super::{SealReport, Store};
use crate::error::Result;
use crate::ids::SegmentId;
use std::sync::Arc;

use crate::manifest::sync_dir;
use crate::manifest::{Catalog, CatalogEdit, Level, SegmentMeta, Tier};
use crate::rollup::{Granularity, RollupDef, RollupInput};
use crate::segment::SegmentReader;

mod days;

/// Raw segments a pass of the rollup task reads back at most.
const BACKFILL_SEGMENTS_PER_PASS: usize = 8;

/// One configured rollup's coverage, for `/v1/rollups` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RollupStatus {
    pub name: String,
    pub dimensions: Vec<String>,
    pub granularity: &'static str,
    /// Segments of this rollup (written at seal, and merged from final days).
    pub segments: usize,
    pub raw_segments: usize,
    /// Raw segments whose numbers a segment of this rollup holds.
    pub covered: usize,
    /// Raw segments whose sums overflow an i64 for this rollup: they keep
    /// no rollup segment, queries read their events.
    pub without: usize,
    /// Days whose raw segments are all final and whose last bucket closed.
    pub final_days: usize,
    /// Final days merged into hour and day rows (or whose merged sums
    /// overflow, which keep their seal-time rows).
    pub days_merged: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Raw segments to cover plus final days to merge: the work the rollup
    /// task has left.
    pub pending: usize,
    /// Nothing is pending.
    pub complete: bool,
}

/// Whether `m` is a segment of `def`, as configured now: written at seal
/// with its granularity, or merged from a final day.
pub(super) fn is_of(m: &SegmentMeta, def: &RollupDef) -> bool {
    m.level != Level::Raw
        && m.rollup.as_ref().is_some_and(|r| {
            r.is_of(def) && (if m.covers.is_empty() { r.granularity == def.granularity() } else { true })
        })
}

/// The (raw segment, rollup) pairs whose numbers no segment of the rollup
/// holds.
fn missing<'a>(catalog: &'a Catalog, defs: &'a [RollupDef]) -> Vec<(&'a SegmentMeta, &'a RollupDef)> {
    let have: HashSet<(SegmentId, usize)> = catalog
        .segments
        .values()
        .flat_map(|m| defs.iter().enumerate().filter(|(_, d)| is_of(m, d)).map(move |(i, _)| (m, i)))
        .flat_map(|(m, i)| m.derived_from().map(move |raw| (raw, i)))
        .collect();
    catalog
        .segments_of(Level::Raw)
        .flat_map(|raw| defs.iter().enumerate().map(move |(i, d)| (raw, i, d)))
        .filter(|(raw, i, _)| !have.contains(&(raw.id, *i)))
        .map(|(raw, _, d)| (raw, d))
        .collect()
}

impl Store {
    /// Whether raw segment `raw` is owed rows of `def`: it is local, and
    /// rows of its level are not past their ttl (retention deleted them).
    fn wants_rows(&self, raw: &SegmentMeta, def: &RollupDef) -> bool {
        raw.tier == Tier::Local && !self.past_ttl(def.granularity().level(), super::retention::bucket_end(raw))
    }

    /// One pass of the rollup task (see the module docs): backfill, then
    /// the merge of final days. Callers need no lock; it takes
    /// `seal_lock`, so no seal replaces a raw segment while its rollup rows
    /// are built.
    pub fn roll_up(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let mut report = self.backfill()?;
        report.absorb(self.merge_final_days()?);
        Ok(report)
    }

    /// Rollup segments for raw segments without them, and the removal of
    /// those of rollups no longer configured. Callers hold `seal_lock`.
    fn backfill(&self) -> Result<SealReport> {
        let inner = &self.inner;
        let snapshot = self.snapshot();
        let defs = &inner.config.rollups;
        let stale: Vec<SegmentId> = snapshot
            .catalog
            .segments
            .values()
            .filter(|m| m.level != Level::Raw && !defs.iter().any(|d| is_of(m, d)))
            .map(|m| m.id)
            .collect();
        // Forget skips of segments that are gone (ids are never reused).
        inner.rollup_skipped.lock().retain(|(id, _)| snapshot.catalog.segments.contains_key(id));
        let skipped = inner.rollup_skipped.lock().clone();
        let mut todo: Vec<(&SegmentMeta, &RollupDef)> = missing(&snapshot.catalog, defs)
            .into_iter()
            .filter(|(raw, d)| !skipped.contains(&(raw.id, d.name().to_string())) && self.wants_rows(raw, d))
            .collect();
        let mut raws: Vec<SegmentId> = todo.iter().map(|(raw, _)| raw.id).collect();
        raws.dedup();
        raws.truncate(BACKFILL_SEGMENTS_PER_PASS);
        todo.retain(|(raw, _)| raws.contains(&raw.id));
        if stale.is_empty() && todo.is_empty() {
            return Ok(SealReport::default());
        }

        let mut written = Vec::new();
        let mut build = || -> Result<()> {
            for &raw_id in &raws {
                let Some(raw) = snapshot.segments.iter().find(|s| s.meta.id == raw_id) else { continue };
                let events = raw.reader.read_batch()?;
                let defs: Vec<RollupDef> =
                    todo.iter().filter(|(r, _)| r.id == raw_id).map(|(_, d)| (*d).clone()).collect();
                let input = RollupInput::new(&events, &defs)?;
                for def in &defs {
                    match self.write_rollup(&raw.meta, def, &input)? {
                        Some(segment) => written.push(segment),
                        None => {
                            inner.rollup_skipped.lock().insert((raw_id, def.name().to_string()));
                        }
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = build() {
            for (meta, _) in &written {
                self.delete_segment_files(meta.id);
            }
            return Err(e);
        }
        let rows_out = written.iter().map(|(m, _)| m.rows as usize).sum();
        let segments = written.iter().map(|(m, _)| m.id).collect();
        self.commit_derived(written, stale.clone())?;
        Ok(SealReport { partitions: raws.len(), rows_out, segments, replaced: stale, ..SealReport::default() })
    }

    /// Commits derived segments written (their files synced here) and
    /// the removal of `remove` in one catalog edit, then shows them to
    /// queries and deletes the removed files. On failure the written files
    /// are deleted.
    pub(super) fn commit_derived(
        &self,
        written: Vec<(SegmentMeta, Arc<SegmentReader>)>,
        remove: Vec<SegmentId>,
    ) -> Result<()> {
        let inner = &self.inner;
        if written.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let cleanup = |written: &[(SegmentMeta, Arc<SegmentReader>)]| {
            for (meta, _) in written {
                self.delete_segment_files(meta.id);
            }
        };
        if !written.is_empty() {
            sync_dir(&inner.segments_dir).inspect_err(|_| cleanup(&written))?;
        }
        let edit = CatalogEdit {
            add: written.iter().map(|(m, _)| m.clone()).collect(),
            remove: remove.clone(),
            ..CatalogEdit::default()
        };
        let catalog = inner.manifest.commit(&edit).inspect_err(|_| cleanup(&written))?;
        {
            let mut v = inner.visible.write();
            v.catalog = catalog;
            for (meta, reader) in &written {
                v.readers.insert(meta.id, reader.clone());
            }
            for id in &remove {
                v.readers.remove(id);
            }
        }
        for id in &remove {
            self.delete_segment_files(*id);
        }
        tracing::info!(written = written.len(), removed = remove.len(), "rollup segments committed");
        Ok(())
    }

    /// Each configured rollup's coverage of the raw segments and of the
    /// final days.
    pub fn rollup_status(&self) -> Vec<RollupStatus> {
        let catalog = self.catalog();
        let skipped = self.inner.rollup_skipped.lock().clone();
        let days_skipped = self.inner.merge_skipped.lock().clone();
        // Retention: raw segments deleted, and rows of levels past their
        // ttl, are not owed.
        let local = || catalog.segments_of(Level::Raw).filter(|m| m.tier == Tier::Local);
        let final_days: Vec<(i64, Vec<SegmentId>)> = self
            .final_days(local())
            .into_iter()
            .filter(|(day, _)| {
                let end = day.saturating_add(Granularity::Day.width_ms());
                !self.past_ttl(Level::Hour, end) && !self.past_ttl(Level::Day, end)
            })
            .map(|(day, raws)| (day, raws.iter().map(|m| m.id).collect()))
            .collect();
        self.inner
            .config
            .rollups
            .iter()
            .map(|d| {
                let mine: Vec<&SegmentMeta> = catalog.segments.values().filter(|m| is_of(m, d)).collect();
                let owed: HashSet<SegmentId> = local().filter(|raw| self.wants_rows(raw, d)).map(|m| m.id).collect();
                let raw_segments = owed.len();
                let covered: HashSet<SegmentId> =
                    mine.iter().flat_map(|m| m.derived_from()).filter(|r| owed.contains(r)).collect();
                let merged: HashSet<SegmentId> = mine.iter().flat_map(|m| m.covers.iter().copied()).collect();
                let without = skipped.iter().filter(|(_, name)| name == d.name()).count();
                let days_merged = final_days
                    .iter()
                    .filter(|(day, raws)| {
                        raws.iter().all(|r| merged.contains(r)) || days_skipped.contains(&(*day, d.name().to_string()))
                    })
                    .count();
                let pending =
                    raw_segments.saturating_sub(covered.len() + without) + final_days.len().saturating_sub(days_merged);
                RollupStatus {
                    name: d.name().to_string(),
                    dimensions: d.dims().iter().map(|c| c.name().to_string()).collect(),
                    granularity: d.granularity().name(),
                    segments: mine.len(),
                    raw_segments,
                    covered: covered.len(),
                    without,
                    final_days: final_days.len(),
                    days_merged,
                    rows: mine.iter().map(|m| m.rows).sum(),
                    bytes: mine.iter().map(|m| m.size_bytes).sum(),
                    pending,
                    complete: pending == 0,
                }
            })
            .collect()
    }
}
