//! `metrics` from rollup segments (minute, hour or day rows).
//!
//! ```text
//!  plan_scan (raw segments kept by time and filters) ─► per kept raw segment:
//!     a day or hour segment merged from its final day, of a rollup covering the query's
//!       dimensions, at a granularity the query's time filters and groupings allow? ─► its blocks, once
//!     else a segment written from it at seal (minute or hour rows)                 ─► its blocks (Task::Rollup)
//!     none (rollup added later, sums that overflowed, damaged)                     ─► the raw blocks, as before
//!  head ─► events, as before
//!  rollup block: ts + dimension codes ─► time range, pushed filters ─► residual ─► group keys
//!     sum(measure) ─► sum of the measure's column; approx_count_distinct(users) ─► sketches merged
//! ```
//!
//! A rollup row holds the measures of one bucket and dimension combination
//! of the raw segments it derives from, so summing rows over any filter and
//! grouping on its dimensions and minute gives what the raw events would:
//! a `metrics` query reads only dimensions, `ts` (the minute) and measures
//! (the binder refuses anything else), and its time filters are whole
//! minutes (the planner translates them). Raw segments a filter prunes have
//! no rows the query wants, so neither do their minute segments.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;

use adstore_storage::hll::Hll;
use adstore_storage::measure::{DIMENSIONS, Measure};
use adstore_storage::rollup::Granularity;
use adstore_storage::{ColumnData, ColumnId, Level, LiveSegment, ScanPlan, SegmentId, Snapshot, Tier, ValueRange};

use super::agg::{self, Grouping, State};
use crate::error::{QueryError, Result};
use crate::expr::{Batch, DictRef, Expr, Vector, eval, true_rows};
use crate::plan::{AggFunc, AggSpec, ScanCol, Table};
use crate::planner::PhysicalPlan;
use crate::time::TimeUnit;
use crate::types::{DataType, Scalar};

/// Which raw segments are read through a rollup segment instead: one
/// written at seal from that raw segment, or one merged from the final day
/// it belongs to (which stands for every raw segment of that day).
pub(crate) struct Cover<'s> {
    by_raw: HashMap<SegmentId, &'s LiveSegment>,
}

impl<'s> Cover<'s> {
    /// No raw segment is read through a rollup.
    pub(crate) fn none() -> Cover<'s> {
        Cover { by_raw: HashMap::default() }
    }

    /// The rollup segment read instead of raw segment `id`, if any.
    pub(crate) fn of(&self, id: SegmentId) -> Option<&'s LiveSegment> {
        self.by_raw.get(&id).copied()
    }

    /// Rollup segments merged from final days that are read, each once:
    /// the raw segments they stand for are not in the scan plan.
    pub(crate) fn merged(&self) -> Vec<&'s LiveSegment> {
        self.reads().into_iter().filter(|s| !s.meta.covers.is_empty()).collect()
    }

    /// The rollup segments to read, each once.
    pub(crate) fn reads(&self) -> Vec<&'s LiveSegment> {
        let mut reads: Vec<&'s LiveSegment> = self.by_raw.values().copied().collect();
        reads.sort_by_key(|s| s.meta.id);
        reads.dedup_by_key(|s| s.meta.id);
        reads
    }

    /// What the query read, for its stats and EXPLAIN: e.g. `day rollup
    /// campaign (2 segments), hour rollup advertiser (12 segments), events
    /// (1 segment, head)`.
    pub(crate) fn describe(&self, scan: &ScanPlan) -> String {
        let mut counts: std::collections::BTreeMap<(Granularity, &str), usize> = std::collections::BTreeMap::new();
        for s in self.reads() {
            if let Some(r) = &s.meta.rollup {
                *counts.entry((r.granularity, r.name.as_str())).or_default() += 1;
            }
        }
        let plural = |n: usize| if n == 1 { "segment" } else { "segments" };
        let mut parts: Vec<String> = counts
            .into_iter()
            .rev()
            .map(|((granularity, name), n)| format!("{} rollup {name} ({n} {})", granularity.name(), plural(n)))
            .collect();
        let raw = scan.segments.iter().filter(|s| self.of(s.segment.meta.id).is_none()).count();
        let mut events = Vec::new();
        if raw > 0 {
            events.push(format!("{raw} {}", plural(raw)));
        }
        if !scan.head.is_empty() {
            events.push("head".to_string());
        }
        if !events.is_empty() || parts.is_empty() {
            parts.push(if events.is_empty() {
                "events".to_string()
            } else {
                format!("events ({})", events.join(", "))
            });
        }
        parts.join(", ")
    }
}

/// The `metrics` dimensions a plan reads or filters on.
fn needed_dims(plan: &PhysicalPlan) -> Vec<ColumnId> {
    let read = plan.logical.scan_cols.iter().filter_map(|c| match c {
        ScanCol::Event(c) if DIMENSIONS.contains(c) => Some(*c),
        _ => None,
    });
    let mut dims: Vec<ColumnId> = read.chain(plan.request.filters.iter().map(|f| f.column)).collect();
    dims.sort();
    dims.dedup();
    dims
}

/// Whether `e` reads the time slot `ts` only through truncations to whole
/// `width_ms` buckets (`date_trunc('hour', ts)`, `time_bucket(INTERVAL
/// '2 hours', ts)`, … of `ts` itself): what rows bucketed that coarsely
/// can answer.
#[recursive::recursive]
fn coarse_ts_only(e: &Expr, ts: usize, width_ms: i64) -> bool {
    let is_ts = |x: &Expr| match x {
        Expr::Slot(i, _) => *i == ts,
        Expr::DateTrunc(TimeUnit::Minute, inner) => matches!(inner.as_ref(), Expr::Slot(i, _) if *i == ts),
        _ => false,
    };
    match e {
        Expr::Slot(i, _) => *i != ts,
        Expr::DateTrunc(u, x) if is_ts(x) => u.fixed_ms().is_none_or(|w| w % width_ms == 0),
        Expr::TimeBucket(w, x) if is_ts(x) => w % width_ms == 0,
        other => other.children().into_iter().all(|c| coarse_ts_only(c, ts, width_ms)),
    }
}

/// Whether rows bucketed by `width_ms` answer the plan exactly: its time
/// range starts and ends on bucket edges, and every filter, group key and
/// aggregate reads `ts` only through coarser truncations.
fn answers_at(plan: &PhysicalPlan, width_ms: i64) -> bool {
    let range = plan.request.time_range;
    let edge = |t: i64| t == i64::MIN || t == i64::MAX || t.rem_euclid(width_ms) == 0;
    if !edge(range.start_ms) || !edge(range.end_ms) {
        return false;
    }
    let Some(a) = &plan.logical.aggregate else { return false };
    let Some(ts) = plan.logical.scan_cols.iter().position(|c| matches!(c, ScanCol::Event(ColumnId::Ts))) else {
        return true;
    };
    let ok = |e: &Expr| coarse_ts_only(e, ts, width_ms);
    plan.residual.as_ref().is_none_or(ok)
        && a.keys.iter().all(ok)
        && a.aggs
            .iter()
            .all(|s| s.filter.as_ref().is_none_or(ok) && (s.measure.is_some() || s.arg.as_ref().is_none_or(ok)))
}

/// The raw segments a plan scans and, for `metrics`, the rollup segment
/// read instead of each raw segment:
/// 1. merged from a final day: the smallest such segment (coarser rows on a
///    tie) whose rollup has every dimension the plan needs and whose
///    granularity answers it, of a day whose events segments meet the time
///    range; it stands for every events segment of its day, which are then
///    not planned at all;
/// 2. else, for each raw segment the scan keeps, the smallest segment
///    written from it at seal that answers the plan;
/// 3. else none: its events are read.
///
/// A merged segment is read for all the raw segments it covers or for
/// none, so no event is counted twice; the raw segments it stands for that
/// a filter would have pruned hold no rows the plan wants, and the same
/// time range and filters drop their rows from its rows.
pub(crate) fn plan<'s>(snapshot: &'s Snapshot, plan: &PhysicalPlan) -> Result<(ScanPlan, Cover<'s>)> {
    let mut by_raw = HashMap::default();
    if plan.logical.table != Table::Metrics || plan.logical.aggregate.is_none() {
        return Ok((snapshot.plan_scan(&plan.request)?, Cover { by_raw }));
    }
    let needed: Vec<&str> = needed_dims(plan).iter().map(|c| c.name()).collect();
    let hourly = answers_at(plan, Granularity::Hour.width_ms());
    let daily = answers_at(plan, Granularity::Day.width_ms());
    let answers = |s: &LiveSegment| {
        s.meta.rollup.as_ref().is_some_and(|r| {
            needed.iter().all(|d| r.dimensions.iter().any(|x| x == d))
                && match r.granularity {
                    Granularity::Minute => true,
                    Granularity::Hour => hourly,
                    Granularity::Day => daily,
                }
        })
    };
    let range = plan.request.time_range;
    let in_range =
        |id: &SegmentId| snapshot.catalog.segments.get(id).is_some_and(|m| range.overlaps(m.min_ts, m.max_ts));
    let mut merged: Vec<&'s LiveSegment> =
        snapshot.rollups.iter().filter(|s| !s.meta.covers.is_empty() && answers(s)).collect();
    // Fewest rows first; on a tie the coarser rows.
    merged.sort_by_key(|s| (s.meta.rows, std::cmp::Reverse(s.meta.level), s.meta.id));
    for m in merged {
        let covers = &m.meta.covers;
        if covers.iter().any(|r| by_raw.contains_key(r)) || !covers.iter().any(in_range) {
            continue;
        }
        by_raw.extend(covers.iter().map(|r| (*r, m)));
    }
    let mut children: HashMap<SegmentId, &'s LiveSegment> = HashMap::default();
    for s in snapshot.rollups.iter() {
        let Some(source) = s.meta.source.filter(|r| !by_raw.contains_key(r)) else { continue };
        if !answers(s) {
            continue;
        }
        if children.get(&source).is_none_or(|c| s.meta.rows < c.meta.rows) {
            children.insert(source, s);
        }
    }
    // Raw segments retention deleted are read through their rows written
    // at seal when no merged day stands for them; the scan refuses the rest.
    let expired: Vec<SegmentId> = snapshot
        .catalog
        .segments
        .values()
        .filter(|m| m.tier == Tier::Expired && m.level == Level::Raw && range.overlaps(m.min_ts, m.max_ts))
        .map(|m| m.id)
        .collect();
    for id in expired {
        if let Some(child) = children.get(&id).filter(|_| !by_raw.contains_key(&id)) {
            by_raw.insert(id, *child);
        }
    }
    let scan = snapshot.plan_scan_except(&plan.request, |id| by_raw.contains_key(&id))?;
    for s in &scan.segments {
        let id = s.segment.meta.id;
        if let Some(child) = children.get(&id) {
            by_raw.insert(id, *child);
        }
    }
    Ok((scan, Cover { by_raw }))
}

/// The blocks of `segment` that may hold rows the plan wants: by each
/// block's time range, and by the codes of the pushed `IN` filters its
/// dimension stats allow (rows are sorted by the first dimensions, so a
/// filter on one of them keeps few blocks).
pub(crate) fn blocks(segment: &LiveSegment, plan: &PhysicalPlan) -> Vec<usize> {
    let r = &segment.reader;
    let range = plan.request.time_range;
    // Per pushed (non-negated) filter: its column and the codes it accepts.
    let mut wanted: Vec<(usize, Vec<u32>)> = Vec::new();
    for f in plan.request.filters.iter().filter(|f| !f.negated) {
        let Some(col) = r.schema().position(f.column.name()) else { return Vec::new() };
        // A dictionary that cannot be read keeps every block: reading one
        // fails with the reason.
        let Ok(Some(dict)) = r.dictionary(col) else { continue };
        let codes: Vec<u32> = f.values.iter().filter_map(|v| dict.code_of(v)).collect();
        if codes.is_empty() {
            return Vec::new();
        }
        wanted.push((col, codes));
    }
    (0..r.num_blocks())
        .filter(|&b| match r.block_stats(0usize, b).map(|s| &s.range) {
            Some(ValueRange::Int { min, max }) => range.overlaps(*min, *max),
            _ => true,
        })
        .filter(|&b| {
            wanted.iter().all(|(col, codes)| match r.block_stats(*col, b).map(|s| &s.range) {
                Some(ValueRange::Codes { min, max }) => codes.iter().any(|c| (*min..=*max).contains(c)),
                Some(ValueRange::Empty) => false,
                _ => true,
            })
        })
        .collect()
}

/// A rollup column's position, by name.
fn position(segment: &LiveSegment, name: &str) -> Result<usize> {
    segment
        .reader
        .schema()
        .position(name)
        .ok_or_else(|| QueryError::Internal(format!("rollup segment {} has no column {name}", segment.meta.id)))
}

fn read(segment: &LiveSegment, col: usize, block: usize, rows: &[u32]) -> Result<ColumnData> {
    Ok(segment.reader.read_column_at(col, block, rows)?)
}

/// One rollup block's rows as a batch over the plan's scan slots (the
/// slots of event columns no rollup has stay NULL: only measure
/// aggregates read them, and those read the measure columns), after the
/// time range and the pushed filters. Slot `scan_cols.len()` holds each
/// row's offset in the block, so the measure columns can be read for the
/// rows the residual filter keeps. `None` when no row is left.
fn batch<'a>(segment: &LiveSegment, block: usize, plan: &PhysicalPlan) -> Result<Option<Batch<'a>>> {
    let ColumnData::I64(ts) = segment.reader.read_column(0usize, block)? else {
        return Err(QueryError::Internal("a rollup's ts column is not I64".into()));
    };
    let range = plan.request.time_range;
    let mut rows: Vec<u32> = (0..ts.len() as u32).filter(|&i| range.contains(ts[i as usize])).collect();
    for f in &plan.request.filters {
        if rows.is_empty() {
            break;
        }
        let ColumnData::Dict { codes, dict } = read(segment, position(segment, f.column.name())?, block, &rows)? else {
            return Err(QueryError::Internal(format!(
                "rollup dimension {} is not dictionary-encoded",
                f.column.name()
            )));
        };
        let verdict: Vec<bool> = (0..=dict.len() as u32).map(|c| f.matches_str(dict.value(c))).collect();
        rows = rows.into_iter().zip(codes).filter(|(_, c)| verdict[*c as usize]).map(|(r, _)| r).collect();
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let mut cols = Vec::with_capacity(plan.logical.scan_cols.len() + 1);
    let mut bounds = (i64::MAX, i64::MIN);
    for c in &plan.logical.scan_cols {
        cols.push(match c {
            ScanCol::Final => Vector::Const(Scalar::Bool(segment.meta.is_final)),
            ScanCol::Event(ColumnId::Ts) => {
                let v: Vec<i64> = rows.iter().map(|&r| ts[r as usize]).collect();
                bounds = v.iter().fold(bounds, |(lo, hi), &t| (lo.min(t), hi.max(t)));
                Vector::Int(Cow::Owned(v), None)
            }
            ScanCol::Event(d) if DIMENSIONS.contains(d) => {
                match read(segment, position(segment, d.name())?, block, &rows)? {
                    ColumnData::Dict { codes, dict } => Vector::Dict(Cow::Owned(codes), DictRef::Segment(dict)),
                    _ => {
                        return Err(QueryError::Internal(format!(
                            "rollup dimension {} is not dictionary-encoded",
                            d.name()
                        )));
                    }
                }
            }
            ScanCol::Event(_) | ScanCol::Billing(_) => Vector::Const(Scalar::Null),
        });
    }
    cols.push(Vector::Int(Cow::Owned(rows.iter().map(|&r| i64::from(r)).collect()), None));
    let ts_slot = plan.logical.scan_cols.iter().position(|c| matches!(c, ScanCol::Event(ColumnId::Ts)));
    let n = rows.len();
    Ok(Some(Batch { rows: n, cols, ts_bounds: ts_slot.map(|i| (i, bounds.0, bounds.1)) }))
}

/// The partial aggregate of one rollup block: group keys and one state per
/// aggregate, as `exec` merges them. `None` when no row is left.
pub(crate) fn partial(
    segment: &LiveSegment,
    block: usize,
    plan: &PhysicalPlan,
    max_groups: usize,
    filtered: impl Fn(Batch<'static>) -> Result<Option<Batch<'static>>>,
) -> Result<Option<(usize, agg::Partial)>> {
    let Some(aggregate) = &plan.logical.aggregate else {
        return Err(QueryError::Internal("a rollup read without an aggregate".into()));
    };
    let Some(b) = batch(segment, block, plan)? else { return Ok(None) };
    let Some(b) = filtered(b)? else { return Ok(None) };
    let n = b.rows;
    let offsets: Vec<u32> = match b.cols.last() {
        Some(Vector::Int(v, _)) => v.iter().map(|&x| x as u32).collect(),
        _ => return Err(QueryError::Internal("rollup row offsets lost".into())),
    };
    let keys = aggregate.keys.iter().map(|k| agg::key_col(&eval(k, &b)?, k.ty(), n)).collect::<Result<Vec<_>>>()?;
    let grouping = agg::group(&keys, n, max_groups)?;
    let states = aggregate
        .aggs
        .iter()
        .map(|spec| state(segment, block, spec, &b, &offsets, &grouping))
        .collect::<Result<Vec<_>>>()?;
    let partial = agg::Partial { domains: keys.into_iter().map(|k| k.domain).collect(), grouping, states };
    Ok(Some((n, partial)))
}

/// One aggregate over a rollup block: a measure from its column, anything
/// else (over dimensions and `ts`) as over events.
fn state(
    segment: &LiveSegment,
    block: usize,
    spec: &AggSpec,
    b: &Batch<'_>,
    offsets: &[u32],
    g: &Grouping,
) -> Result<State> {
    let Some(m) = spec.measure else { return agg::update(spec, b, g) };
    let rows: Vec<u32> = match &spec.filter {
        Some(f) => true_rows(&eval(f, b)?, b.rows)?,
        None => (0..b.rows as u32).collect(),
    };
    let stored: Vec<u32> = rows.iter().map(|&i| offsets[i as usize]).collect();
    let column = read(segment, position(segment, m.name())?, block, &stored)?;
    if m == Measure::Users {
        let ColumnData::Bytes(sketches) = column else {
            return Err(QueryError::Internal("a rollup's users column does not hold sketches".into()));
        };
        let mut pairs = Vec::with_capacity(rows.len());
        for (k, &i) in rows.iter().enumerate() {
            if arrow_array::Array::is_valid(&sketches, k) {
                let sketch = Hll::from_bytes(sketches.value(k)).map_err(|reason| {
                    QueryError::Storage(adstore_storage::StorageError::Damaged { id: segment.meta.id, reason })
                })?;
                pairs.push((g.gid[i as usize], sketch));
            }
        }
        return Ok(State::ApproxSketches(pairs));
    }
    let ColumnData::I64(values) = column else {
        return Err(QueryError::Internal(format!("a rollup's {} column is not I64", m.name())));
    };
    // sum(column) under the aggregate's FILTER: the state `sum` over
    // events gives, from a batch holding the column in the rows' places.
    let mut full = vec![0i64; b.rows];
    let mut kept = vec![false; b.rows];
    for (k, &i) in rows.iter().enumerate() {
        full[i as usize] = values[k];
        kept[i as usize] = true;
    }
    let one = Batch {
        rows: b.rows,
        cols: vec![Vector::Int(Cow::Owned(full), None), Vector::Bool(Cow::Owned(kept), None)],
        ts_bounds: None,
    };
    let filter = spec.filter.as_ref().map(|_| Expr::Slot(1, DataType::Bool));
    let sum = AggSpec { func: AggFunc::Sum, arg: Some(Expr::Slot(0, DataType::Int)), filter, measure: None };
    agg::update(&sum, &one, g)
}
