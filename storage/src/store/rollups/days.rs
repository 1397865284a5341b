//! Final days: once every bucket of a day is final, each configured
//! rollup's rows of that day are merged into one segment of hour rows and
//! one of day rows, which cover (`SegmentMeta::covers`) the day's raw
//! segments.
//!
//! ```text
//!  a day whose raw segments are all final and whose last bucket has closed
//!    per rollup: its segments of the day (rows per minute or hour, from seals;
//!                an earlier merge's hour segment) ─► merge ─► hour rows ─► merge ─► day rows
//!    one catalog edit: both merged segments added; the earlier merge's segments removed,
//!                      and so are the seal-time segments of an hourly rollup (the hour rows hold them)
//! ```
//!
//! Hour and day rows are merged from the rollup's own rows, never read back
//! from raw events. A re-seal of one of the day's raw segments (a
//! reprocess, a late backfill) removes the merged segments with it
//! (`derived_of`); the rollup task then rebuilds what the day lacks, and
//! the day is merged again once it is final again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::super::{Snapshot, Store, now_ms};
use super::is_of;
use crate::error::{Result, StorageError};
use crate::ids::SegmentId;
use crate::manifest::{Level, PartitionKey, SegmentMeta, Tier};
use crate::rollup::{Granularity, RollupDef, merge};
use crate::segment::SegmentReader;
use crate::time::floor_to;

/// Days a pass merges at most, so seals keep their pace.
const DAYS_PER_PASS: usize = 2;

/// One rollup's merge of one day.
struct DayMerge<'a> {
    day: i64,
    def: &'a RollupDef,
    /// The day's raw segments.
    raws: Vec<&'a SegmentMeta>,
    /// The rollup's segments the rows are read from.
    sources: Vec<SegmentId>,
    /// Segments the merged ones supersede.
    replaces: Vec<SegmentId>,
}

/// The start of the UTC day of `ms`.
fn day_of(ms: i64) -> i64 {
    floor_to(ms, Granularity::Day.width_ms())
}

impl Store {
    /// Days whose raw segments are all final, whose last bucket has
    /// closed and with no events in the head, with those raw segments. (A
    /// closed bucket's first seal is final: while a pass seals a day's
    /// partitions in groups, those of its first groups are final and the
    /// rest still in the head.)
    pub(in crate::store) fn final_days<'a>(
        &self,
        raws: impl Iterator<Item = &'a SegmentMeta>,
    ) -> Vec<(i64, Vec<&'a SegmentMeta>)> {
        let width = self.inner.config.bucket_width_ms;
        let in_head: BTreeSet<i64> =
            self.inner.visible.read().head.partition_keys().map(|p| day_of(p.bucket_start_ms)).collect();
        let mut days: BTreeMap<i64, Vec<&SegmentMeta>> = BTreeMap::new();
        for m in raws {
            days.entry(day_of(m.partition.bucket_start_ms)).or_default().push(m);
        }
        days.into_iter()
            .filter(|(day, raws)| {
                let last_bucket = floor_to(day.saturating_add(Granularity::Day.width_ms() - 1), width);
                raws.iter().all(|m| m.is_final) && self.bucket_closed(last_bucket) && !in_head.contains(day)
            })
            .collect()
    }

    /// The (day, rollup) pairs whose merged segments are missing or do not
    /// cover every raw segment of the day, when the rollup's rows of every
    /// raw segment are there to merge.
    fn days_to_merge<'a>(&self, snapshot: &'a Snapshot, defs: &'a [RollupDef]) -> Vec<DayMerge<'a>> {
        let catalog = &snapshot.catalog;
        let skipped = self.inner.merge_skipped.lock().clone();
        // Each rollup's segments by the day of the raw segments they derive
        // from: one pass over the catalog, not one per day.
        let raw_day: HashMap<SegmentId, i64> =
            catalog.segments_of(Level::Raw).map(|m| (m.id, day_of(m.partition.bucket_start_ms))).collect();
        let mut by_day: HashMap<(i64, usize), Vec<&SegmentMeta>> = HashMap::new();
        for m in catalog.segments.values().filter(|m| m.level != Level::Raw) {
            let Some(day) = m.derived_from().next().and_then(|r| raw_day.get(&r)) else { continue };
            for (i, _) in defs.iter().enumerate().filter(|(_, d)| is_of(m, d)) {
                by_day.entry((*day, i)).or_default().push(m);
            }
        }
        let mut todo = Vec::new();
        for (day, raws) in self.final_days(catalog.segments_of(Level::Raw)) {
            // What retention deleted is not built again.
            let day_end = day.saturating_add(Granularity::Day.width_ms());
            if raws.iter().any(|m| m.tier != Tier::Local)
                || [Level::Minute, Level::Hour, Level::Day].into_iter().any(|l| self.past_ttl(l, day_end))
            {
                continue;
            }
            let ids: BTreeSet<SegmentId> = raws.iter().map(|m| m.id).collect();
            for (i, def) in defs.iter().enumerate().filter(|(_, d)| !skipped.contains(&(day, d.name().to_string()))) {
                let mine: Vec<&SegmentMeta> = by_day
                    .get(&(day, i))
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .copied()
                    .filter(|m| m.derived_from().all(|r| ids.contains(&r)))
                    .collect();
                let by_source: HashMap<SegmentId, &SegmentMeta> =
                    mine.iter().filter_map(|m| Some((m.source?, *m))).collect();
                let merged: Vec<&SegmentMeta> = mine.iter().copied().filter(|m| !m.covers.is_empty()).collect();
                let covered: BTreeSet<SegmentId> = merged.iter().flat_map(|m| m.covers.iter().copied()).collect();
                if covered == ids {
                    continue;
                }
                // An earlier merge's hour rows, and the seal-time rows of every
                // raw segment they do not cover.
                let earlier: Vec<&SegmentMeta> =
                    merged.iter().copied().filter(|m| m.level == Granularity::Hour.level()).collect();
                let in_earlier: HashSet<SegmentId> = earlier.iter().flat_map(|m| m.covers.iter().copied()).collect();
                let mut sources: Vec<SegmentId> = earlier.iter().map(|m| m.id).collect();
                let mut complete = true;
                for raw in ids.iter().filter(|r| !in_earlier.contains(r)) {
                    match by_source.get(raw) {
                        Some(m) => sources.push(m.id),
                        None => complete = false,
                    }
                }
                if !complete {
                    continue; // the backfill writes them first
                }
                let mut replaces: Vec<SegmentId> = merged.iter().map(|m| m.id).collect();
                if def.granularity() == Granularity::Hour {
                    replaces.extend(mine.iter().filter(|m| m.source.is_some()).map(|m| m.id));
                }
                todo.push(DayMerge { day, def, raws: raws.clone(), sources, replaces });
            }
            let days: BTreeSet<i64> = todo.iter().map(|t| t.day).collect();
            if days.len() >= DAYS_PER_PASS {
                break;
            }
        }
        todo
    }

    /// Merges the rows of final days into hour and day segments (see the
    /// module docs). Callers hold `seal_lock`.
    pub(super) fn merge_final_days(&self) -> Result<super::SealReport> {
        let snapshot = self.snapshot();
        let defs = &self.inner.config.rollups;
        let todo = self.days_to_merge(&snapshot, defs);
        let mut written: Vec<(SegmentMeta, Arc<SegmentReader>)> = Vec::new();
        let mut removed = Vec::new();
        let mut build = || -> Result<()> {
            for t in &todo {
                let batches = t
                    .sources
                    .iter()
                    .map(|id| {
                        let s = snapshot.rollups.iter().find(|s| s.meta.id == *id).ok_or_else(|| {
                            StorageError::Internal(format!("rollup segment {id} is in the catalog but not open"))
                        })?;
                        s.reader.read_record_batch()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let hour = t.def.clone().with_granularity(Granularity::Hour);
                let day = t.def.clone().with_granularity(Granularity::Day);
                let Some(hours) = merge(&hour, &batches)? else {
                    self.skip_day(t);
                    continue;
                };
                let Some(days) = merge(&day, std::slice::from_ref(&hours))? else {
                    self.skip_day(t);
                    continue;
                };
                for (def, rows) in [(&hour, &hours), (&day, &days)] {
                    let segment = self.write_derived(&def.schema(), rows, |id, summary| SegmentMeta {
                        id,
                        level: def.granularity().level(),
                        partition: PartitionKey { bucket_start_ms: t.day, shard: 0 },
                        bucket_width_ms: Granularity::Day.width_ms(),
                        min_ts: summary.min_ts,
                        max_ts: summary.max_ts,
                        rows: summary.rows,
                        size_bytes: summary.size_bytes,
                        tier: Tier::Local,
                        attribution_version: t.raws.iter().map(|m| m.attribution_version).max().unwrap_or_default(),
                        is_final: true,
                        max_lsn: t.raws.iter().map(|m| m.max_lsn).max().unwrap_or_default(),
                        created_ms: now_ms(),
                        rollup: Some(def.to_ref()),
                        source: None,
                        covers: t.raws.iter().map(|m| m.id).collect(),
                        reprocess_job: None,
                        erased_rows: 0,
                    })?;
                    written.push(segment);
                }
                removed.extend(t.replaces.iter().copied());
            }
            Ok(())
        };
        if let Err(e) = build() {
            for (meta, _) in &written {
                self.delete_segment_files(meta.id);
            }
            return Err(e);
        }
        let report = super::SealReport {
            partitions: todo.iter().map(|t| t.day).collect::<BTreeSet<_>>().len(),
            rows_out: written.iter().map(|(m, _)| m.rows as usize).sum(),
            segments: written.iter().map(|(m, _)| m.id).collect(),
            replaced: removed.clone(),
            ..super::SealReport::default()
        };
        self.commit_derived(written, removed)?;
        Ok(report)
    }

    /// Remembers that a day's sums overflow an i64 for a rollup: its
    /// queries read the seal-time rows (or events) of that day.
    fn skip_day(&self, t: &DayMerge<'_>) {
        tracing::warn!(
            day = t.day,
            rollup = t.def.name(),
            "a merged rollup sum overflows i64: the day keeps its seal-time rows"
        );
        self.inner.merge_skipped.lock().insert((t.day, t.def.name().to_string()));
    }
}
