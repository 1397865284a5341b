//! Reconciliation: raw events re-aggregated, row by row, and compared with
//! every rollup segment and billing snapshot that holds their numbers.
//!
//! ```text
//!  raw segments overlapping [from, to)
//!    per rollup segment of them (written at seal, or merged from a final day):
//!       its raw segments' events ─► sums per (bucket, dimensions), row at a time ─┐ compare every
//!       its rows                 ─► the same keys                                  ┘ measure and sketch
//!    per billing snapshot (latest version) of a final day among them: the same, per (advertiser, campaign)
//!  ─► checks (what was compared, how many groups) and differences (expected: none)
//! ```
//!
//! The expected side is computed here from the measure definitions
//! ([`Measure::of_parts`]), one event at a time into ordered maps: a path
//! that shares nothing with the rollup builder or merger but those
//! definitions, so a bug or a damaged file on one side shows as a
//! difference.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};
use serde::Serialize;

use super::{LiveSegment, Snapshot, Store};
use crate::billing;
use crate::error::{Result, StorageError};
use crate::event::{ColumnId, EventType, InvalidReason};
use crate::hll::{Hll, hash_bytes};
use crate::ids::SegmentId;
use crate::manifest::{Level, SegmentMeta, Tier};
use crate::measure::Measure;
use crate::rollup::{RollupDef, RollupRef};
use crate::time::{floor_to, format_timestamp};

/// Differences listed in a report at most (all are counted).
const MAX_LISTED: usize = 1_000;

type Key = (i64, Vec<Option<String>>);

/// One group's numbers: the summed measures, the users sketch.
#[derive(Debug, Default)]
struct Numbers {
    sums: Vec<i128>,
    users: Hll,
}

/// What `reconcile` compared and what differed.
#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub from: String,
    pub to: String,
    pub raw_segments: usize,
    pub events: u64,
    pub checks: Vec<Check>,
    /// Groups whose numbers differ, over every check.
    pub differing: usize,
    /// The first differences (at most 1,000).
    pub differences: Vec<Difference>,
}

/// One rollup segment or billing snapshot compared with the events it holds.
#[derive(Debug, Serialize)]
pub struct Check {
    /// e.g. `rollup campaign (minute rows) segment 00000000000000a1`,
    /// `billing_daily 2026-11-22 version 2`.
    pub what: String,
    pub groups: usize,
    pub differing: usize,
}

/// A group whose stored numbers are not the events' numbers.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub what: String,
    /// Start of the group's bucket.
    pub bucket: String,
    pub dimensions: BTreeMap<String, Option<String>>,
    /// The measure (or `users`, or `row` for a group only one side has).
    pub column: String,
    pub expected: String,
    pub stored: String,
}

/// The events of `raws`, summed per (bucket of `width_ms`, `dims`).
fn expected(
    snapshot: &Snapshot,
    raws: &[SegmentId],
    dims: &[ColumnId],
    width_ms: i64,
) -> Result<(BTreeMap<Key, Numbers>, u64)> {
    let sums: Vec<Measure> = Measure::sums().collect();
    let mut out: BTreeMap<Key, Numbers> = BTreeMap::new();
    let mut events = 0u64;
    for id in raws {
        let raw = snapshot
            .segments
            .iter()
            .find(|s| s.meta.id == *id)
            .ok_or_else(|| StorageError::Internal(format!("raw segment {id} is not open")))?;
        let batch = raw.reader.read_batch()?;
        let kinds = batch.u8_column(ColumnId::Type).values();
        let reasons = batch.u8_column(ColumnId::InvalidReason).values();
        let attributed = batch.bool_column(ColumnId::Attributed);
        let cost = batch.i64_column(ColumnId::CostMicros).values();
        let value = batch.i64_column(ColumnId::ValueMicros).values();
        let users = batch.str_column(ColumnId::UserKey);
        let dim_columns: Vec<&StringArray> = dims.iter().map(|d| batch.str_column(*d)).collect();
        for row in 0..batch.num_rows() {
            events += 1;
            let kind = EventType::from_code(kinds[row])
                .ok_or_else(|| StorageError::Damaged { id: *id, reason: format!("event type code {}", kinds[row]) })?;
            let reason = InvalidReason::from_code(reasons[row]).ok_or_else(|| StorageError::Damaged {
                id: *id,
                reason: format!("invalid reason code {}", reasons[row]),
            })?;
            let key = (
                floor_to(batch.ts()[row], width_ms),
                dim_columns.iter().map(|c| c.is_valid(row).then(|| c.value(row).to_string())).collect(),
            );
            let n = out.entry(key).or_insert_with(|| Numbers { sums: vec![0; sums.len()], users: Hll::default() });
            for (total, m) in n.sums.iter_mut().zip(&sums) {
                *total +=
                    i128::from(m.of_parts(kind, reason, attributed.value(row), cost[row], value[row]).unwrap_or(0));
            }
            if users.is_valid(row) {
                n.users.insert_hash(hash_bytes(users.value(row).as_bytes()));
            }
        }
    }
    Ok((out, events))
}

fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StorageError::Internal(format!("rows without a {name} column")))
}

/// Stored rows (of a rollup or billing schema) summed per key.
fn stored(batch: &RecordBatch, dims: &[ColumnId]) -> Result<BTreeMap<Key, Numbers>> {
    let ts = column::<Int64Array>(batch, "ts")?;
    let dim_columns = dims.iter().map(|d| column::<StringArray>(batch, d.name())).collect::<Result<Vec<_>>>()?;
    let sums = Measure::sums().map(|m| column::<Int64Array>(batch, m.name())).collect::<Result<Vec<_>>>()?;
    let users = column::<BinaryArray>(batch, "users")?;
    let mut out: BTreeMap<Key, Numbers> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let key =
            (ts.value(row), dim_columns.iter().map(|c| c.is_valid(row).then(|| c.value(row).to_string())).collect());
        let n = out.entry(key).or_insert_with(|| Numbers { sums: vec![0; sums.len()], users: Hll::default() });
        for (total, c) in n.sums.iter_mut().zip(&sums) {
            *total += i128::from(c.value(row));
        }
        if users.is_valid(row) {
            let h = Hll::from_bytes(users.value(row))
                .map_err(|e| StorageError::Internal(format!("a users sketch does not decode: {e}")))?;
            n.users.merge(&h);
        }
    }
    Ok(out)
}

impl ReconcileReport {
    /// Compares `want` with `got` under the name `what`; the `users`
    /// sketches only if `sketches` (not when an erasure removed user keys
    /// from the raw events after `got` was written from them).
    fn compare(
        &mut self,
        what: String,
        dims: &[ColumnId],
        want: &BTreeMap<Key, Numbers>,
        got: &BTreeMap<Key, Numbers>,
        sketches: bool,
    ) {
        let keys: BTreeSet<&Key> = want.keys().chain(got.keys()).collect();
        let mut differing = 0;
        for key in &keys {
            let mut diffs: Vec<(String, String, String)> = Vec::new();
            match (want.get(*key), got.get(*key)) {
                (Some(w), Some(g)) => {
                    for ((m, a), b) in Measure::sums().zip(&w.sums).zip(&g.sums) {
                        if a != b {
                            diffs.push((m.name().to_string(), a.to_string(), b.to_string()));
                        }
                    }
                    if sketches && w.users.to_bytes() != g.users.to_bytes() {
                        diffs.push(("users".into(), w.users.estimate().to_string(), g.users.estimate().to_string()));
                    }
                }
                (Some(_), None) => diffs.push(("row".into(), "present".into(), "missing".into())),
                (None, Some(_)) => diffs.push(("row".into(), "missing".into(), "present".into())),
                (None, None) => {}
            }
            if diffs.is_empty() {
                continue;
            }
            differing += 1;
            for (column, expected, stored) in diffs {
                if self.differences.len() < MAX_LISTED {
                    self.differences.push(Difference {
                        what: what.clone(),
                        bucket: format_timestamp(key.0),
                        dimensions: dims.iter().map(|d| d.name().to_string()).zip(key.1.iter().cloned()).collect(),
                        column,
                        expected,
                        stored,
                    });
                }
            }
        }
        self.differing += differing;
        self.checks.push(Check { what, groups: keys.len(), differing });
    }
}

impl Store {
    /// Re-aggregates the raw events of every raw segment overlapping
    /// `[from_ms, to_ms)` and compares them with each rollup segment and
    /// latest billing snapshot that holds their numbers (see the module
    /// docs). Reads one consistent snapshot; takes no lock.
    pub fn reconcile(&self, from_ms: i64, to_ms: i64) -> Result<ReconcileReport> {
        let snapshot = self.snapshot();
        let raws: BTreeSet<SegmentId> = snapshot
            .segments
            .iter()
            .filter(|s| s.meta.max_ts >= from_ms && s.meta.min_ts < to_ms)
            .map(|s| s.meta.id)
            .collect();
        let mut report = ReconcileReport {
            from: format_timestamp(from_ms),
            to: format_timestamp(to_ms),
            raw_segments: raws.len(),
            ..ReconcileReport::default()
        };
        let derived: Vec<&LiveSegment> =
            snapshot.rollups.iter().filter(|s| s.meta.derived_from().any(|r| raws.contains(&r))).collect();
        // Raw segments retention deleted cannot be re-aggregated: they, and
        // what derives from them, are listed as not compared.
        let gone = snapshot
            .catalog
            .segments_of(Level::Raw)
            .filter(|m| m.tier == Tier::Expired && m.max_ts >= from_ms && m.min_ts < to_ms)
            .count();
        if gone > 0 {
            let what = format!("{gone} raw segments in range: not compared, their events were deleted by retention");
            report.checks.push(Check { what, groups: 0, differing: 0 });
        }
        let live: BTreeSet<SegmentId> = snapshot.segments.iter().map(|s| s.meta.id).collect();
        let deleted = |ids: &[SegmentId]| ids.iter().any(|id| !live.contains(id));
        let erased: BTreeSet<SegmentId> =
            snapshot.segments.iter().filter(|s| s.meta.erased_rows > 0).map(|s| s.meta.id).collect();
        let sketches = |ids: &[SegmentId]| !ids.iter().any(|id| erased.contains(id));
        for s in derived {
            let Some(r) = &s.meta.rollup else { continue };
            if deleted(&s.meta.derived_from().collect::<Vec<_>>()) {
                let what = format!("{}: not compared, its raw events were deleted by retention", describe(&s.meta, r));
                report.checks.push(Check { what, groups: 0, differing: 0 });
                continue;
            }
            let def = RollupDef::from_ref(r).map_err(StorageError::Internal)?;
            let covered: Vec<SegmentId> = s.meta.derived_from().collect();
            let (want, _) = expected(&snapshot, &covered, def.dims(), r.granularity.width_ms())?;
            let got = stored(&s.reader.read_record_batch()?, def.dims())?;
            report.compare(describe(&s.meta, r), def.dims(), &want, &got, sketches(&covered));
        }
        let catalog = &snapshot.catalog;
        for (day, day_raws) in self.final_days(catalog.segments_of(Level::Raw)) {
            if !day_raws.iter().any(|m| raws.contains(&m.id)) {
                continue;
            }
            let Some(entry) = catalog.billing.iter().filter(|b| b.day_ms == day).max_by_key(|b| b.version) else {
                continue;
            };
            let def = billing::definition();
            let ids: Vec<SegmentId> = day_raws.iter().map(|m| m.id).collect();
            if deleted(&ids) {
                let what = format!(
                    "billing_daily {} version {}: not compared, raw events deleted by retention",
                    billing::day_name(day),
                    entry.version
                );
                report.checks.push(Check { what, groups: 0, differing: 0 });
                continue;
            }
            if entry.basis.iter().collect::<BTreeSet<_>>() != ids.iter().collect() {
                // Re-sealed since: the billing task has yet to check it.
                let what = format!(
                    "billing_daily {} version {}: pending, the day changed since",
                    billing::day_name(day),
                    entry.version
                );
                report.checks.push(Check { what, groups: 0, differing: 0 });
                continue;
            }
            let (want, _) = expected(&snapshot, &ids, def.dims(), def.granularity().width_ms())?;
            let got = stored(&self.read_billing(entry)?, def.dims())?;
            let what = format!("billing_daily {} version {}", billing::day_name(day), entry.version);
            report.compare(what, def.dims(), &want, &got, sketches(&ids));
        }
        report.events = snapshot.segments.iter().filter(|s| raws.contains(&s.meta.id)).map(|s| s.meta.rows).sum();
        Ok(report)
    }
}

fn describe(meta: &SegmentMeta, r: &RollupRef) -> String {
    let from = if meta.covers.is_empty() { "written at seal" } else { "merged from a final day" };
    format!("rollup {} ({} rows, {from}) segment {}", r.name, r.granularity.name(), meta.id)
}

#[cfg(test)]
mod tests;
