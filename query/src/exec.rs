//! The executor: runs a [`PhysicalPlan`] over a storage snapshot.
//!
//! ```text
//!  plan_scan (pruning) ──► tasks: every kept block + every head chunk
//!     │  rayon, in rounds of a few tasks per thread; deadline and cancel flag checked per task
//!     ▼
//!  scan_block ──► batch (codes, not strings) ──► residual filter ──► gather
//!     ├─ aggregate: group by codes ─► partial states ──► AggMerger (lock, merge)
//!     └─ rows: outputs ─► per-block top-N ─► Arrow chunk ──► chunk list
//!  finish: HAVING ─► outputs ─► ORDER BY (top-N) ─► OFFSET/LIMIT ─► RecordBatch
//! ```
//!
//! # Sharing the threads
//! Queries share one rayon pool. A rayon thread takes work from its own
//! query before it looks at another's, so one parallel loop over every task
//! of a heavy query would hold all threads until it ends. Tasks run instead
//! in rounds of [`TASKS_PER_THREAD_PER_ROUND`] per thread: every round
//! re-enters the pool behind the work other queries have sent meanwhile, so
//! a light query waits a round, not the whole heavy query.
//!
//! # Errors and cancellation
//! Every task checks the query deadline and its cancel flag
//! ([`QueryOptions::cancel`]) before it starts; the first error (timeout,
//! cancel, group or memory limit, a damaged block) stops the remaining
//! tasks and is returned. Nothing panics on data or query input.

mod agg;
mod billing;
mod rollup;
mod sort;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use adstore_storage::{
    BlockScan, ColumnData, ColumnId, HeadChunk, HeadScan, ScanBatch, ScanPlan, SegmentScan, Snapshot, count_block,
    scan_block, scan_head_run,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{Field, Schema, SchemaRef};
use rayon::prelude::*;

use crate::QueryOptions;
use crate::bind::{INVALID_NAMES, TYPE_NAMES};
use crate::error::{QueryError, Result};
use crate::expr::{Batch, DictRef, Expr, Vector, eval, gather, true_rows};
use crate::plan::{AggFunc, LogicalPlan, ScanCol, SortTarget};
use crate::planner::PhysicalPlan;
use crate::time::format_timestamp;
use crate::types::DataType;

/// Counters of one execution.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecStats {
    pub rows_scanned: u64,
    pub segments_scanned: usize,
    pub segments_pruned: usize,
    pub blocks_scanned: usize,
    pub blocks_pruned: usize,
    pub provisional: bool,
    /// What was read (see `rollup::Cover::describe`).
    pub source: String,
}

enum Task<'p> {
    Block(&'p SegmentScan, &'p BlockScan),
    /// A run of head chunks ([`ScanPlan::head_runs`]), read as one batch.
    Head(&'p [HeadScan]),
    /// A block of a rollup segment read instead of a raw segment.
    Rollup(&'p adstore_storage::LiveSegment, usize),
    /// A billing snapshot (`billing_daily`).
    Billing(&'p billing::Billed),
}

fn scan_task(task: &Task<'_>, req: &adstore_storage::ScanRequest) -> Result<Option<(ScanBatch, bool)>> {
    Ok(match task {
        Task::Block(s, b) => scan_block(s, b, req)?.map(|sb| (sb, s.segment.meta.is_final)),
        Task::Rollup(..) | Task::Billing(_) => {
            return Err(QueryError::Internal("a rollup block or billing snapshot scanned as events".into()));
        }
        // Read here, on this task's thread: a scan plan would hand the
        // run to the pool again from inside the pool.
        Task::Head(run) => {
            let chunks: Vec<&HeadChunk> = run.iter().map(|h| &h.chunk).collect();
            scan_head_run(&chunks, req)?.map(|sb| (sb, false))
        }
    })
}

fn column_vector(data: &ColumnData, col: ColumnId) -> Result<Vector<'_>> {
    Ok(match data {
        ColumnData::I64(v) => Vector::Int(std::borrow::Cow::Borrowed(v), None),
        ColumnData::U8(v) => {
            Vector::Dict(v.iter().map(|&c| u32::from(c) + 1).collect(), DictRef::Static(enum_names(col)))
        }
        ColumnData::Bool(v) => Vector::Bool(std::borrow::Cow::Borrowed(v), None),
        ColumnData::Dict { codes, dict } => {
            Vector::Dict(std::borrow::Cow::Borrowed(codes), DictRef::Segment(dict.clone()))
        }
        ColumnData::Str(a) => Vector::Plain(a.clone()),
        ColumnData::Bytes(_) => {
            return Err(QueryError::Internal(format!(
                "column {} holds bytes, which expressions cannot read",
                col.name()
            )));
        }
    })
}

/// The names of an enum column's codes as the executor's vectors give
/// them (see [`column_vector`]).
fn enum_names(col: ColumnId) -> &'static [&'static str] {
    if col == ColumnId::Type { &TYPE_NAMES } else { &INVALID_NAMES }
}

/// The key columns of a plan whose blocks [`count_block`] can answer:
/// only `count(*)`, grouped by bare columns, with the whole WHERE pushed
/// into the scan.
fn counted_keys(plan: &PhysicalPlan) -> Option<Vec<ColumnId>> {
    let aggregate = plan.logical.aggregate.as_ref()?;
    if plan.residual.is_some() || !aggregate.aggs.iter().all(|a| a.func == AggFunc::CountStar && a.filter.is_none()) {
        return None;
    }
    aggregate
        .keys
        .iter()
        .map(|k| match k {
            Expr::Slot(i, _) => match plan.logical.scan_cols.get(*i)? {
                ScanCol::Event(id) => Some(*id),
                ScanCol::Final | ScanCol::Billing(_) => None,
            },
            _ => None,
        })
        .collect()
}

/// The batch a plan's expressions read, from one scan batch.
fn make_batch<'a>(sb: &'a ScanBatch, plan: &PhysicalPlan, is_final: bool) -> Result<Batch<'a>> {
    let cols = plan
        .logical
        .scan_cols
        .iter()
        .map(|c| match c {
            ScanCol::Final => Ok(Vector::Const(crate::types::Scalar::Bool(is_final))),
            ScanCol::Billing(_) => Err(QueryError::Internal("a billing_daily column read from events".into())),
            ScanCol::Event(id) => {
                let i = plan
                    .request
                    .columns
                    .iter()
                    .position(|x| x == id)
                    .ok_or_else(|| QueryError::Internal(format!("column {} not scanned", id.name())))?;
                let data =
                    sb.columns.get(i).ok_or_else(|| QueryError::Internal("scan batch misses a column".into()))?;
                column_vector(data, *id)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let ts_slot = plan.logical.scan_cols.iter().position(|c| matches!(c, ScanCol::Event(ColumnId::Ts)));
    Ok(Batch { rows: sb.rows, cols, ts_bounds: ts_slot.map(|i| (i, sb.ts_bounds.0, sb.ts_bounds.1)) })
}

/// Applies the residual filter; `None` when no row is left.
fn filtered<'a>(batch: Batch<'a>, plan: &PhysicalPlan) -> Result<Option<Batch<'a>>> {
    let Some(f) = &plan.residual else {
        return Ok((batch.rows > 0).then_some(batch));
    };
    let sel = true_rows(&eval(f, &batch)?, batch.rows)?;
    if sel.is_empty() {
        return Ok(None);
    }
    if sel.len() == batch.rows {
        return Ok(Some(batch));
    }
    let cols = batch.cols.iter().map(|c| gather(c, &sel)).collect();
    Ok(Some(Batch { rows: sel.len(), cols, ts_bounds: batch.ts_bounds }))
}

fn output_types(l: &LogicalPlan) -> Vec<DataType> {
    l.outputs.iter().map(|o| o.expr.ty()).collect()
}

/// The result schema of a plan.
pub(crate) fn schema_of(l: &LogicalPlan) -> SchemaRef {
    Arc::new(Schema::new(
        l.outputs.iter().map(|o| Field::new(o.name.clone(), o.expr.ty().arrow(), true)).collect::<Vec<_>>(),
    ))
}

/// Evaluates outputs and extra sort expressions over a batch as arrays.
fn project(plan: &LogicalPlan, batch: &Batch<'_>) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
    let n = batch.rows;
    let outs = plan
        .outputs
        .iter()
        .map(|o| sort::to_arrow(&eval(&o.expr, batch)?, o.expr.ty(), n))
        .collect::<Result<Vec<_>>>()?;
    let extras =
        plan.sort_exprs.iter().map(|e| sort::to_arrow(&eval(e, batch)?, e.ty(), n)).collect::<Result<Vec<_>>>()?;
    Ok((outs, extras))
}

fn sort_keys(plan: &LogicalPlan, outs: &[ArrayRef], extras: &[ArrayRef]) -> Vec<(ArrayRef, bool, bool)> {
    plan.order
        .iter()
        .map(|k| {
            let a = match k.target {
                SortTarget::Output(i) => outs[i].clone(),
                SortTarget::Extra(i) => extras[i].clone(),
            };
            (a, k.desc, k.nulls_first)
        })
        .collect()
}

fn take_all(arrays: &[ArrayRef], idx: &[u32]) -> Result<Vec<ArrayRef>> {
    let idx = UInt32Array::from(idx.to_vec());
    arrays.iter().map(|a| Ok(arrow_select::take::take(a.as_ref(), &idx, None)?)).collect()
}

/// ORDER BY, OFFSET and LIMIT over final arrays.
fn finish_rows(plan: &LogicalPlan, outs: Vec<ArrayRef>, extras: Vec<ArrayRef>, n: usize) -> Result<Vec<ArrayRef>> {
    let offset = usize::try_from(plan.offset).unwrap_or(usize::MAX);
    let end = plan.limit.map(|l| offset.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)));
    let outs = if plan.order.is_empty() {
        outs
    } else {
        let keys = sort_keys(plan, &outs, &extras);
        let idx = sort::order(&keys, n, end)?;
        take_all(&outs, &idx)?
    };
    let len = outs.first().map_or(0, |a| a.len());
    let start = offset.min(len);
    let stop = end.unwrap_or(len).min(len);
    Ok(outs.iter().map(|a| a.slice(start, stop.saturating_sub(start))).collect())
}

/// Tasks a round gives each pool thread (see "Sharing the threads").
const TASKS_PER_THREAD_PER_ROUND: usize = 4;

/// Runs `f` on every task in parallel, round after round; stops at the
/// first error.
fn for_each_in_rounds<T: Sync>(tasks: &[T], f: impl Fn(&T) -> Result<()> + Sync + Send) -> Result<()> {
    let round = rayon::current_num_threads().max(1) * TASKS_PER_THREAD_PER_ROUND;
    tasks.chunks(round).try_for_each(|r| r.par_iter().try_for_each(&f))
}

/// The segments and head chunks a plan scans (none for `billing_daily`),
/// and the rollup segments read instead of raw ones (see `rollup::plan`).
fn plan_scan<'s>(snapshot: &'s Snapshot, plan: &PhysicalPlan) -> Result<(ScanPlan, rollup::Cover<'s>)> {
    if plan.logical.table == crate::plan::Table::BillingDaily {
        return Ok((ScanPlan::default(), rollup::Cover::none()));
    }
    rollup::plan(snapshot, plan)
}

/// When a running query must stop: its deadline, or a cancel request.
struct Stop<'a> {
    deadline: Instant,
    opts: &'a QueryOptions,
}

impl Stop<'_> {
    fn check(&self) -> Result<()> {
        if self.opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(QueryError::Cancelled);
        }
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout { timeout_ms: self.opts.timeout.as_millis() as u64 });
        }
        Ok(())
    }
}

/// Runs a plan; returns the result schema, batches and counters.
pub(crate) fn execute(
    snapshot: &Snapshot,
    plan: &PhysicalPlan,
    opts: &QueryOptions,
    deadline: Instant,
) -> Result<(SchemaRef, Vec<RecordBatch>, ExecStats)> {
    let (scan, cover) = plan_scan(snapshot, plan)?;
    let billed = billing::entries(snapshot, plan)?;
    let mut tasks: Vec<Task<'_>> = billed.iter().map(Task::Billing).collect();
    for s in scan.segments.iter().filter(|s| cover.of(s.segment.meta.id).is_none()) {
        tasks.extend(s.blocks.iter().map(|b| Task::Block(s, b)));
    }
    for r in cover.reads() {
        tasks.extend(rollup::blocks(r, plan).into_iter().map(|b| Task::Rollup(r, b)));
    }
    tasks.extend(scan.head_runs().into_iter().map(Task::Head));
    let rows_scanned = AtomicU64::new(0);
    let head_rows = AtomicBool::new(false);
    let stop = Stop { deadline, opts };
    let logical = &plan.logical;
    let schema = schema_of(logical);

    let next_batch = |t: &Task<'_>| -> Result<Option<(ScanBatch, bool)>> {
        stop.check()?;
        let got = scan_task(t, &plan.request)?;
        if let Some((sb, _)) = &got {
            rows_scanned.fetch_add(sb.rows as u64, Ordering::Relaxed);
            if matches!(t, Task::Head(_)) && sb.rows > 0 {
                head_rows.store(true, Ordering::Relaxed);
            }
        }
        Ok(got)
    };

    let billing_batch = |entry: &billing::Billed| -> Result<Batch<'static>> {
        stop.check()?;
        let b = billing::batch(snapshot, entry, plan)?;
        rows_scanned.fetch_add(b.rows as u64, Ordering::Relaxed);
        Ok(b)
    };

    let columns: Vec<ArrayRef> = match &logical.aggregate {
        Some(aggregate) => {
            let key_types: Vec<DataType> = aggregate.keys.iter().map(|k| k.ty()).collect();
            let merger =
                Mutex::new(agg::AggMerger::new(key_types, &aggregate.aggs, opts.max_groups, opts.max_memory_bytes));
            let poisoned = || QueryError::Internal("aggregation state poisoned by an earlier panic".into());
            let counted = counted_keys(plan);
            let counted_names: Vec<&'static [&'static str]> =
                counted.iter().flatten().map(|&c| enum_names(c)).collect();
            for_each_in_rounds(&tasks, |t| -> Result<()> {
                if let (Some(keys), Task::Block(s, b)) = (&counted, t) {
                    stop.check()?;
                    if let Some(counts) = count_block(s, b, &plan.request, keys)? {
                        let rows: u64 = counts.counts.iter().map(|&c| u64::from(c)).sum();
                        rows_scanned.fetch_add(rows, Ordering::Relaxed);
                        let partial = agg::counted_partial(counts, &counted_names, aggregate.aggs.len());
                        return merger.lock().map_err(|_| poisoned())?.merge(partial);
                    }
                }
                if let Task::Rollup(segment, block) = t {
                    stop.check()?;
                    let got = rollup::partial(segment, *block, plan, opts.max_groups, |b| filtered(b, plan))?;
                    let Some((rows, partial)) = got else { return Ok(()) };
                    rows_scanned.fetch_add(rows as u64, Ordering::Relaxed);
                    return merger.lock().map_err(|_| poisoned())?.merge(partial);
                }
                let scanned;
                let batch = match t {
                    Task::Billing(entry) => billing_batch(entry)?,
                    _ => {
                        let Some((sb, is_final)) = next_batch(t)? else { return Ok(()) };
                        scanned = sb;
                        make_batch(&scanned, plan, is_final)?
                    }
                };
                let Some(batch) = filtered(batch, plan)? else { return Ok(()) };
                let n = batch.rows;
                let keys = aggregate
                    .keys
                    .iter()
                    .map(|k| agg::key_col(&eval(k, &batch)?, k.ty(), n))
                    .collect::<Result<Vec<_>>>()?;
                let grouping = agg::group(&keys, n, opts.max_groups)?;
                let states =
                    aggregate.aggs.iter().map(|s| agg::update(s, &batch, &grouping)).collect::<Result<Vec<_>>>()?;
                let partial = agg::Partial { domains: keys.into_iter().map(|k| k.domain).collect(), grouping, states };
                merger.lock().map_err(|_| poisoned())?.merge(partial)
            })?;
            stop.check()?;
            let (ng, cols) = merger.into_inner().map_err(|_| poisoned())?.finish()?;
            let post = Batch::new(ng, cols);
            let post = match &aggregate.having {
                None => post,
                Some(h) => {
                    let sel = true_rows(&eval(h, &post)?, post.rows)?;
                    Batch::new(sel.len(), post.cols.iter().map(|c| gather(c, &sel)).collect())
                }
            };
            let (outs, extras) = project(logical, &post)?;
            finish_rows(logical, outs, extras, post.rows)?
        }
        None => {
            let offset = usize::try_from(logical.offset).unwrap_or(usize::MAX);
            let keep = logical.limit.map(|l| offset.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)));
            let collected = AtomicUsize::new(0);
            let bytes = AtomicUsize::new(0);
            let chunks: Mutex<Vec<(Vec<ArrayRef>, Vec<ArrayRef>)>> = Mutex::new(Vec::new());
            let poisoned = || QueryError::Internal("row buffer poisoned by an earlier panic".into());
            for_each_in_rounds(&tasks, |t| -> Result<()> {
                // Without ORDER BY any `keep` rows will do.
                if logical.order.is_empty() && keep.is_some_and(|k| collected.load(Ordering::Relaxed) >= k) {
                    return Ok(());
                }
                let scanned;
                let batch = match t {
                    Task::Billing(entry) => billing_batch(entry)?,
                    _ => {
                        let Some((sb, is_final)) = next_batch(t)? else { return Ok(()) };
                        scanned = sb;
                        make_batch(&scanned, plan, is_final)?
                    }
                };
                let Some(batch) = filtered(batch, plan)? else { return Ok(()) };
                let (mut outs, mut extras) = project(logical, &batch)?;
                let mut n = batch.rows;
                if let Some(k) = keep
                    && k < n
                {
                    if logical.order.is_empty() {
                        outs = outs.iter().map(|a| a.slice(0, k)).collect();
                    } else {
                        let idx = sort::order(&sort_keys(logical, &outs, &extras), n, Some(k))?;
                        outs = take_all(&outs, &idx)?;
                        extras = take_all(&extras, &idx)?;
                    }
                    n = k;
                }
                // Rows past a LIMIT are cut later; any others past the
                // most a result may hold fail the query before they are kept.
                let total = collected.fetch_add(n, Ordering::Relaxed) + n;
                if total > opts.max_result_rows && keep.is_none_or(|k| k > opts.max_result_rows) {
                    return Err(QueryError::ResultTooLarge { max_rows: opts.max_result_rows });
                }
                let size: usize = outs.iter().chain(&extras).map(|a| a.get_array_memory_size()).sum();
                if bytes.fetch_add(size, Ordering::Relaxed) + size > opts.max_memory_bytes {
                    return Err(QueryError::MemoryLimit { max_bytes: opts.max_memory_bytes });
                }
                chunks.lock().map_err(|_| poisoned())?.push((outs, extras));
                Ok(())
            })?;
            stop.check()?;
            let chunks = chunks.into_inner().map_err(|_| poisoned())?;
            let concat = |which: usize, width: usize, types: &[DataType]| -> Result<Vec<ArrayRef>> {
                (0..width)
                    .map(|j| {
                        let parts: Vec<&dyn Array> =
                            chunks.iter().map(|c| if which == 0 { c.0[j].as_ref() } else { c.1[j].as_ref() }).collect();
                        if parts.is_empty() {
                            return Ok(arrow_array::new_empty_array(&types[j].arrow()));
                        }
                        Ok(arrow_select::concat::concat(&parts)?)
                    })
                    .collect()
            };
            let out_types = output_types(logical);
            let extra_types: Vec<DataType> = logical.sort_exprs.iter().map(|e| e.ty()).collect();
            let outs = concat(0, logical.outputs.len(), &out_types)?;
            let extras = concat(1, logical.sort_exprs.len(), &extra_types)?;
            let n = chunks.iter().map(|c| c.0.first().map_or(0, |a| a.len())).sum();
            finish_rows(logical, outs, extras, n)?
        }
    };
    let batch = if columns.is_empty() {
        RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(0)),
        )?
    } else {
        RecordBatch::try_new(schema.clone(), columns)?
    };
    let stats = ExecStats {
        rows_scanned: rows_scanned.load(Ordering::Relaxed),
        segments_scanned: scan.segments.len(),
        segments_pruned: scan.pruned.len(),
        blocks_scanned: scan.blocks_total - scan.blocks_pruned,
        blocks_pruned: scan.blocks_pruned,
        provisional: scan.segments.iter().any(|s| !s.segment.meta.is_final) || head_rows.load(Ordering::Relaxed),
        source: match logical.table {
            crate::plan::Table::Metrics => cover.describe(&scan),
            crate::plan::Table::BillingDaily => billing::describe(&billed),
            crate::plan::Table::Events => String::new(),
        },
    };
    Ok((schema, vec![batch], stats))
}

/// `EXPLAIN`: the plan as (property, value) rows.
pub(crate) fn explain(snapshot: &Snapshot, plan: &PhysicalPlan) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let l = &plan.logical;
    let (scan, cover) = plan_scan(snapshot, plan)?;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| rows.push((k.to_string(), v));
    push("table", l.table.name().to_string());
    push("source", format!("{} ({})", plan.source.source.name(), plan.source.reason));
    let scoped = plan.scope.is_some();
    match l.table {
        _ if scoped => {}
        crate::plan::Table::Metrics => push("reads", cover.describe(&scan)),
        crate::plan::Table::BillingDaily => push("reads", billing::describe(&billing::entries(snapshot, plan)?)),
        crate::plan::Table::Events => {}
    }
    let r = plan.request.time_range;
    let bound = |ms: i64| match ms {
        i64::MIN => "-inf".to_string(),
        i64::MAX => "+inf".to_string(),
        x => format_timestamp(x),
    };
    push("time_range", format!("[{}, {})", bound(r.start_ms), bound(r.end_ms)));
    if plan.request.filters.is_empty() {
        push("pushed_filter", "none".into());
    }
    for f in &plan.request.filters {
        let vals: Vec<String> = f.values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
        push(
            "pushed_filter",
            format!("{} {}IN ({})", f.column.name(), if f.negated { "NOT " } else { "" }, vals.join(", ")),
        );
    }
    let names: Vec<String> = l
        .scan_cols
        .iter()
        .map(|c| match c {
            ScanCol::Event(c) => c.name().to_string(),
            ScanCol::Final => "final".into(),
            ScanCol::Billing(c) => c.name().into(),
        })
        .collect();
    push("residual_filter", plan.residual.as_ref().map_or("none".into(), |e| describe(e, &names)));
    push("columns", if names.is_empty() { "none".into() } else { names.join(", ") });
    match &l.aggregate {
        Some(a) => push(
            "aggregate",
            format!(
                "hash aggregate on dictionary codes: {} key(s) [{}], {} aggregate(s), partial per block, merged at the end{}",
                a.keys.len(),
                a.keys.iter().map(|k| describe(k, &names)).collect::<Vec<_>>().join(", "),
                a.aggs.len(),
                if counted_keys(plan).is_some() {
                    "; segment blocks counted from packed codes where the keys' codes fit a table"
                } else {
                    ""
                }
            ),
        ),
        None => push("aggregate", "none (row query)".into()),
    }
    let order = if l.order.is_empty() {
        "none".to_string()
    } else {
        match l.limit {
            Some(n) => format!("top-{} of {} key(s)", n.saturating_add(l.offset), l.order.len()),
            None => format!("full sort on {} key(s)", l.order.len()),
        }
    };
    push("order", order);
    if scoped {
        // Segment, block, row and snapshot counts describe every
        // advertiser's data.
        push("storage", "not shown to a token scoped to advertisers".into());
        return explain_batch(rows);
    }
    push(
        "segments",
        format!(
            "{} kept, {} pruned; blocks {} of {} read",
            scan.segments.len(),
            scan.pruned.len(),
            scan.blocks_total - scan.blocks_pruned,
            scan.blocks_total
        ),
    );
    // One row per segment, in (bucket, shard) order.
    let label = |m: &adstore_storage::SegmentMeta| {
        (
            (m.partition.bucket_start_ms, m.partition.shard),
            format!(
                "segment {} (bucket {}, shard {})",
                m.id,
                format_timestamp(m.partition.bucket_start_ms),
                m.partition.shard
            ),
        )
    };
    let mut segs: Vec<((i64, u32), String, String)> = scan
        .segments
        .iter()
        .map(|s| {
            let (k, name) = label(&s.segment.meta);
            if let Some(r) = cover.of(s.segment.meta.id) {
                let what = format!(
                    "read through {} rollup {} segment {}: {} of {} blocks, {} rows, {}",
                    r.meta.rollup.as_ref().map_or("?", |x| x.granularity.name()),
                    r.meta.rollup.as_ref().map_or("?", |x| x.name.as_str()),
                    r.meta.id,
                    rollup::blocks(r, plan).len(),
                    r.reader.num_blocks(),
                    r.meta.rows,
                    if r.meta.is_final { "final" } else { "provisional" },
                );
                return (k, name, what);
            }
            let ids = s.id_lookups.iter().map(|c| c.name()).collect::<Vec<_>>();
            let what = format!(
                "kept: {} of {} blocks, {}{}{}",
                s.blocks.len(),
                s.segment.reader.num_blocks(),
                if s.segment.meta.is_final { "final" } else { "provisional" },
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", id index on {}: {} candidate rows",
                        ids.join(", "),
                        s.blocks.iter().map(|b| b.candidate_rows).sum::<usize>()
                    )
                },
                if s.row_filters.is_empty() {
                    String::new()
                } else {
                    format!(", {} filter(s) checked per row", s.row_filters.len())
                }
            );
            (k, name, what)
        })
        .chain(scan.pruned.iter().filter_map(|(id, why)| {
            let meta = snapshot.segments.iter().find(|s| s.meta.id == *id)?;
            let (k, name) = label(&meta.meta);
            let why = match why {
                adstore_storage::PruneReason::TimeRange => "time range".to_string(),
                adstore_storage::PruneReason::Shard => "advertiser_id in another shard".to_string(),
                adstore_storage::PruneReason::Dictionary(c) => format!("no matching {} in dictionary", c.name()),
                adstore_storage::PruneReason::IdIndex(c) => format!("no matching {} in the id index", c.name()),
            };
            Some((k, name, format!("pruned: {why}")))
        }))
        .collect();
    // Rollup segments merged from final days stand for their days' events
    // segments, which are not planned.
    for m in cover.merged() {
        let r = m.meta.rollup.as_ref();
        segs.push((
            (m.meta.partition.bucket_start_ms, 0),
            format!("segment {} (day {})", m.meta.id, &format_timestamp(m.meta.partition.bucket_start_ms)[..10]),
            format!(
                "{} rollup {} merged from the final day, read instead of its {} events segment(s): {} of {} blocks, {} rows",
                r.map_or("?", |x| x.granularity.name()),
                r.map_or("?", |x| x.name.as_str()),
                m.meta.covers.len(),
                rollup::blocks(m, plan).len(),
                m.reader.num_blocks(),
                m.meta.rows,
            ),
        ));
    }
    segs.sort();
    for (_, name, what) in segs {
        push(&name, what);
    }
    let head_rows: usize = scan.head.iter().map(|h| h.chunk.num_rows()).sum();
    let head_runs = scan.head_runs().len();
    push(
        "head",
        format!(
            "{} chunk(s) in {head_runs} run(s), {head_rows} row(s) checked row by row (dimensions as codes)",
            scan.head.len()
        ),
    );
    let raw_blocks: usize =
        scan.segments.iter().filter(|s| cover.of(s.segment.meta.id).is_none()).map(|s| s.blocks.len()).sum();
    let rollup_blocks: usize = cover.reads().iter().map(|r| rollup::blocks(r, plan).len()).sum();
    let tasks = raw_blocks + rollup_blocks + head_runs;
    push(
        "parallelism",
        format!("{} task(s) (blocks + head runs) on {} rayon thread(s)", tasks, rayon::current_num_threads()),
    );
    explain_batch(rows)
}

/// EXPLAIN's (property, value) rows as its answer.
fn explain_batch(rows: Vec<(String, String)>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = explain_schema();
    let k: StringArray = rows.iter().map(|r| Some(r.0.as_str())).collect();
    let v: StringArray = rows.iter().map(|r| Some(r.1.as_str())).collect();
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)])?;
    Ok((schema, vec![batch]))
}

/// The answer to a SELECT without FROM: its constant outputs as one row
/// (none past OFFSET or at LIMIT 0); EXPLAIN of it says nothing is read.
pub(crate) fn constant_row(l: &LogicalPlan) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    if l.explain {
        let schema = explain_schema();
        let k = StringArray::from(vec!["reads"]);
        let v = StringArray::from(vec!["nothing: SELECT without FROM is one row of constants"]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)])?;
        return Ok((schema, vec![batch]));
    }
    let schema = schema_of(l);
    let rows = usize::from(l.offset == 0 && l.limit != Some(0));
    let one = Batch::new(1, Vec::new());
    let columns = l
        .outputs
        .iter()
        .map(|o| {
            let array = sort::to_arrow(&eval(&o.expr, &one)?, o.expr.ty(), 1)?;
            Ok(array.slice(0, rows))
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    Ok((schema, vec![batch]))
}

/// The columns of an EXPLAIN answer.
pub(crate) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("property", arrow_schema::DataType::Utf8, false),
        Field::new("value", arrow_schema::DataType::Utf8, false),
    ]))
}

/// A readable rendering of a bound expression, for EXPLAIN.
#[recursive::recursive]
fn describe(e: &crate::expr::Expr, names: &[String]) -> String {
    use crate::expr::Expr as E;
    use crate::types::Scalar as S;
    let d = |x: &E| describe(x, names);
    let lit = |s: &S| match s {
        S::Null => "NULL".to_string(),
        S::Bool(b) => b.to_string(),
        S::Int(i) => i.to_string(),
        S::Float(f) => f.to_string(),
        S::Str(s) => format!("'{}'", s.replace('\'', "''")),
        S::Ts(t) => format!("TIMESTAMP '{}'", format_timestamp(*t)),
    };
    match e {
        E::Slot(i, _) => names.get(*i).cloned().unwrap_or_else(|| format!("#{i}")),
        E::Lit(s, _) => lit(s),
        E::Not(x) => format!("NOT {}", d(x)),
        E::Neg(x) => format!("-{}", d(x)),
        E::ToFloat(x) => d(x),
        E::Bin(op, a, b, _) => format!("({} {} {})", d(a), op.symbol(), d(b)),
        E::IsNull(x, neg) => format!("{} IS {}NULL", d(x), if *neg { "NOT " } else { "" }),
        E::InList(x, l, neg) => {
            format!(
                "{} {}IN ({})",
                d(x),
                if *neg { "NOT " } else { "" },
                l.iter().map(lit).collect::<Vec<_>>().join(", ")
            )
        }
        E::Like(x, p, neg) => format!("{} {}LIKE '{}'", d(x), if *neg { "NOT " } else { "" }, p),
        E::Case(w, els, _) => format!(
            "CASE {} ELSE {} END",
            w.iter().map(|(c, v)| format!("WHEN {} THEN {}", d(c), d(v))).collect::<Vec<_>>().join(" "),
            d(els)
        ),
        E::Coalesce(a, _) => format!("coalesce({})", a.iter().map(d).collect::<Vec<_>>().join(", ")),
        E::NullIf(a, b) => format!("nullif({}, {})", d(a), d(b)),
        E::TimeBucket(w, x) => format!("time_bucket({w} ms, {})", d(x)),
        E::DateTrunc(u, x) => format!("date_trunc('{}', {})", u.name(), d(x)),
        E::Epoch(x) => format!("extract(epoch FROM {})", d(x)),
        E::Math(crate::expr::MathFn::Round(digits), x) => format!("round({}, {digits})", d(x)),
        E::Math(f, x) => format!("{}({})", f.name(), d(x)),
        E::Text(f, x) => format!("{}({})", f.name(), d(x)),
        E::FromEpoch(x) => format!("to_timestamp({})", d(x)),
    }
}
