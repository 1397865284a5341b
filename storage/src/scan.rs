//! The scan API: the rows of a snapshot that match a time range and
//! dimension filters, with the pruning that got there made visible.
//!
//! ```text
//!  ScanRequest ──► plan_scan ──► ScanPlan ──► execute (rayon, per block) ──► ScanBatch…
//!                   │
//!                   ├─ segment: time range vs min/max ts          → pruned (TimeRange)
//!                   ├─ segment: IN value absent from dictionary   → pruned (Dictionary)
//!                   ├─ rows:    ∩ of per-value row indexes (roaring)
//!                   └─ block:   ts zone map, code-range zone map   → block pruned
//! ```
//!
//! Filters on dictionary columns are resolved to codes once per segment;
//! rows are never compared as strings in segments. Head chunks (not yet
//! sealed) are filtered row by row.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::Array;
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::error::{Result, StorageError};
use crate::event::{ColumnId, ColumnKind, EventBatch};
use crate::head::HeadChunk;
use crate::ids::{Lsn, SegmentId};
use crate::manifest::PartitionKey;
use crate::segment::{ColumnData, SegmentReader, ValueRange};
use crate::store::{LiveSegment, Snapshot};

/// Half-open range of event time `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange { start_ms: i64::MIN, end_ms: i64::MAX };

    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.start_ms && (ts < self.end_ms || self.end_ms == i64::MAX)
    }

    /// Whether any ts in `[min, max]` (inclusive) is in the range.
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= max && max >= self.start_ms && (min < self.end_ms || self.end_ms == i64::MAX)
    }

    /// Whether every ts in `[min, max]` is in the range.
    pub fn covers(&self, min: i64, max: i64) -> bool {
        self.contains(min) && self.contains(max)
    }
}

/// `column IN (values)`, or `column NOT IN (values)` when `negated`.
/// NULL never matches either (SQL semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimFilter {
    pub column: ColumnId,
    pub values: Vec<String>,
    pub negated: bool,
}

impl DimFilter {
    pub fn eq(column: ColumnId, value: impl Into<String>) -> DimFilter {
        DimFilter { column, values: vec![value.into()], negated: false }
    }

    fn matches_str(&self, v: Option<&str>) -> bool {
        match v {
            None => false,
            Some(v) => self.values.iter().any(|x| x == v) != self.negated,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub time_range: TimeRange,
    /// All must hold (AND).
    pub filters: Vec<DimFilter>,
    /// The columns to return, in this order.
    pub columns: Vec<ColumnId>,
}

impl ScanRequest {
    fn validate(&self) -> Result<()> {
        for f in &self.filters {
            if f.column.spec().kind != ColumnKind::Str {
                return Err(StorageError::Internal(format!(
                    "dimension filter on non-string column {}",
                    f.column.name()
                )));
            }
        }
        Ok(())
    }
}

/// Why a segment was skipped without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneReason {
    TimeRange,
    /// An `IN` filter on this column names no value the segment holds.
    Dictionary(ColumnId),
}

/// The rows to read from one block: every row, or offsets within the block.
#[derive(Debug, Clone)]
pub struct BlockScan {
    pub block: usize,
    pub rows: Range<usize>,
    pub selection: Option<Vec<u32>>,
    /// Rows still to be checked against the time range.
    pub check_time: bool,
}

#[derive(Clone)]
pub struct SegmentScan {
    pub segment: LiveSegment,
    pub blocks: Vec<BlockScan>,
    /// Filters that could not be answered by indexes and are checked per row.
    pub row_filters: Vec<DimFilter>,
}

#[derive(Clone)]
pub struct HeadScan {
    pub partition: PartitionKey,
    pub chunk: HeadChunk,
}

/// What a scan will read and what it skipped.
#[derive(Clone)]
pub struct ScanPlan {
    pub segments: Vec<SegmentScan>,
    pub pruned: Vec<(SegmentId, PruneReason)>,
    pub blocks_total: usize,
    pub blocks_pruned: usize,
    pub head: Vec<HeadScan>,
    /// Rows that survive index lookups (before per-row checks).
    pub candidate_rows: u64,
}

impl ScanPlan {
    pub fn segments_scanned(&self) -> usize {
        self.segments.len()
    }
}

/// Where a [`ScanBatch`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanSource {
    Segment { id: SegmentId, block: usize },
    Head { lsn: Lsn },
}

/// Matching rows of one block or head chunk: the requested columns, in
/// request order, all of length `rows`.
#[derive(Debug, Clone)]
pub struct ScanBatch {
    pub source: ScanSource,
    pub rows: usize,
    pub columns: Vec<ColumnData>,
}

impl Snapshot {
    /// Decides which segments, blocks and rows a scan must read.
    pub fn plan_scan(&self, req: &ScanRequest) -> Result<ScanPlan> {
        req.validate()?;
        // Never answer from a partial store: a damaged segment in range is an error.
        if let Some(d) = self.damaged.iter().find(|d| req.time_range.overlaps(d.meta.min_ts, d.meta.max_ts)) {
            return Err(StorageError::Damaged { id: d.meta.id, reason: d.error.clone() });
        }
        let per_segment: Vec<Result<SegmentOutcome>> = self.segments.par_iter().map(|s| plan_segment(s, req)).collect();
        let mut plan = ScanPlan {
            segments: Vec::new(),
            pruned: Vec::new(),
            blocks_total: 0,
            blocks_pruned: 0,
            head: Vec::new(),
            candidate_rows: 0,
        };
        for outcome in per_segment {
            match outcome? {
                SegmentOutcome::Pruned(id, why, blocks) => {
                    plan.pruned.push((id, why));
                    plan.blocks_total += blocks;
                    plan.blocks_pruned += blocks;
                }
                SegmentOutcome::Scan(scan, blocks) => {
                    plan.blocks_total += blocks;
                    plan.blocks_pruned += blocks - scan.blocks.len();
                    plan.candidate_rows += scan
                        .blocks
                        .iter()
                        .map(|b| b.selection.as_ref().map_or(b.rows.len(), Vec::len) as u64)
                        .sum::<u64>();
                    plan.segments.push(scan);
                }
            }
        }
        plan.head = self
            .head
            .iter()
            .filter(|(p, _)| {
                let last = p.bucket_start_ms.saturating_add(self.bucket_width_ms - 1);
                req.time_range.overlaps(p.bucket_start_ms, last)
            })
            .map(|(p, c)| HeadScan { partition: *p, chunk: c.clone() })
            .collect();
        Ok(plan)
    }

    /// Plans and executes a scan, returning every matching batch. Segments'
    /// blocks are read in parallel.
    pub fn scan(&self, req: &ScanRequest) -> Result<Vec<ScanBatch>> {
        let plan = self.plan_scan(req)?;
        plan.execute(req)
    }
}

enum SegmentOutcome {
    Pruned(SegmentId, PruneReason, usize),
    Scan(SegmentScan, usize),
}

fn plan_segment(seg: &LiveSegment, req: &ScanRequest) -> Result<SegmentOutcome> {
    let reader = &seg.reader;
    let nblocks = reader.num_blocks();
    let (min_ts, max_ts) = reader.time_range();
    if reader.num_rows() == 0 || !req.time_range.overlaps(min_ts, max_ts) {
        return Ok(SegmentOutcome::Pruned(reader.id(), PruneReason::TimeRange, nblocks));
    }
    let whole_time = req.time_range.covers(min_ts, max_ts);

    // Index lookups for IN filters on dictionary columns.
    let mut selection: Option<RoaringBitmap> = None;
    let mut code_ranges: Vec<(ColumnId, Vec<u32>)> = Vec::new();
    let mut row_filters = Vec::new();
    for f in &req.filters {
        let Some(dict) = reader.dictionary(f.column) else {
            row_filters.push(f.clone());
            continue;
        };
        if f.negated {
            row_filters.push(f.clone());
            continue;
        }
        let mut codes: Vec<u32> = f.values.iter().filter_map(|v| dict.code_of(v)).collect();
        codes.sort_unstable();
        codes.dedup();
        if codes.is_empty() {
            return Ok(SegmentOutcome::Pruned(reader.id(), PruneReason::Dictionary(f.column), nblocks));
        }
        let mut rows = RoaringBitmap::new();
        for &code in &codes {
            rows |= reader.index_rows(f.column, code)?;
        }
        selection = Some(match selection {
            None => rows,
            Some(prev) => prev & rows,
        });
        code_ranges.push((f.column, codes));
    }
    if selection.as_ref().is_some_and(|s| s.is_empty()) {
        let column = code_ranges.last().map(|(c, _)| *c).unwrap_or(ColumnId::AdvertiserId);
        return Ok(SegmentOutcome::Pruned(reader.id(), PruneReason::Dictionary(column), nblocks));
    }

    let mut blocks = Vec::new();
    for b in 0..nblocks {
        let rows = reader.block_rows(b);
        let mut check_time = !whole_time;
        if check_time && let Some(ValueRange::Int { min, max }) = reader.block_stats(ColumnId::Ts, b).map(|s| &s.range)
        {
            if !req.time_range.overlaps(*min, *max) {
                continue;
            }
            check_time = !req.time_range.covers(*min, *max);
        }
        // Zone map on dictionary codes: skip blocks whose code range holds none of the codes.
        let excluded = code_ranges.iter().any(|(col, codes)| match reader.block_stats(*col, b).map(|s| &s.range) {
            Some(ValueRange::Codes { min, max }) => !codes.iter().any(|c| (*min..=*max).contains(c)),
            Some(ValueRange::Empty) => true,
            _ => false,
        });
        if excluded {
            continue;
        }
        let selection = match &selection {
            None => None,
            Some(bits) => {
                let start = rows.start as u32;
                let offsets: Vec<u32> = bits.range(start..rows.end as u32).map(|r| r - start).collect();
                if offsets.is_empty() {
                    continue;
                }
                if offsets.len() == rows.len() { None } else { Some(offsets) }
            }
        };
        blocks.push(BlockScan { block: b, rows, selection, check_time });
    }
    Ok(SegmentOutcome::Scan(SegmentScan { segment: seg.clone(), blocks, row_filters }, nblocks))
}

impl ScanPlan {
    /// Reads every planned block and head chunk, in parallel, keeping only
    /// matching rows.
    pub fn execute(&self, req: &ScanRequest) -> Result<Vec<ScanBatch>> {
        let work: Vec<(&SegmentScan, &BlockScan)> =
            self.segments.iter().flat_map(|s| s.blocks.iter().map(move |b| (s, b))).collect();
        let mut out: Vec<ScanBatch> = work
            .par_iter()
            .map(|(s, b)| scan_block(&s.segment.reader, b, &s.row_filters, req))
            .filter_map(|r| r.transpose())
            .collect::<Result<Vec<_>>>()?;
        let head: Vec<ScanBatch> = self
            .head
            .par_iter()
            .map(|h| scan_head_chunk(&h.chunk, req))
            .filter_map(|r| r.transpose())
            .collect::<Result<Vec<_>>>()?;
        out.extend(head);
        Ok(out)
    }
}

/// Reads one block, applying the per-row checks, and returns the requested
/// columns of the surviving rows (`None` if none survive).
pub fn scan_block(
    reader: &Arc<SegmentReader>,
    block: &BlockScan,
    row_filters: &[DimFilter],
    req: &ScanRequest,
) -> Result<Option<ScanBatch>> {
    let mut selection: Option<Vec<u32>> = block.selection.clone();
    if block.check_time {
        let ColumnData::I64(ts) = reader.read_column(ColumnId::Ts, block.block)? else {
            return Err(StorageError::Internal("ts column is not I64".into()));
        };
        selection = Some(refine(selection, ts.len(), |i| req.time_range.contains(ts[i])));
    }
    for f in row_filters {
        let data = reader.read_column(f.column, block.block)?;
        let keep: Box<dyn Fn(usize) -> bool> = match &data {
            ColumnData::Dict { codes, dict } => {
                // Resolve the filter to a per-code verdict once.
                let verdict: Vec<bool> = (0..=dict.len() as u32).map(|c| f.matches_str(dict.value(c))).collect();
                Box::new(move |i| verdict.get(codes[i] as usize).copied().unwrap_or(false))
            }
            ColumnData::Str(a) => Box::new(move |i| f.matches_str((!a.is_null(i)).then(|| a.value(i)))),
            _ => return Err(StorageError::Internal(format!("filter on non-string column {}", f.column.name()))),
        };
        selection = Some(refine(selection, data.len(), keep));
    }
    let rows = selection.as_ref().map_or(block.rows.len(), Vec::len);
    if rows == 0 {
        return Ok(None);
    }
    let columns = req
        .columns
        .iter()
        .map(|&c| {
            let data = reader.read_column(c, block.block)?;
            Ok(match &selection {
                None => data,
                Some(idx) => gather(&data, idx),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(ScanBatch { source: ScanSource::Segment { id: reader.id(), block: block.block }, rows, columns }))
}

fn refine(selection: Option<Vec<u32>>, len: usize, keep: impl Fn(usize) -> bool) -> Vec<u32> {
    match selection {
        Some(mut idx) => {
            idx.retain(|&i| keep(i as usize));
            idx
        }
        None => (0..len as u32).filter(|&i| keep(i as usize)).collect(),
    }
}

/// The rows of `data` at `idx`, in that order.
pub fn gather(data: &ColumnData, idx: &[u32]) -> ColumnData {
    match data {
        ColumnData::I64(v) => ColumnData::I64(idx.iter().map(|&i| v[i as usize]).collect()),
        ColumnData::U8(v) => ColumnData::U8(idx.iter().map(|&i| v[i as usize]).collect()),
        ColumnData::Bool(v) => ColumnData::Bool(idx.iter().map(|&i| v[i as usize]).collect()),
        ColumnData::Dict { codes, dict } => {
            ColumnData::Dict { codes: idx.iter().map(|&i| codes[i as usize]).collect(), dict: dict.clone() }
        }
        ColumnData::Str(a) => {
            let b: arrow_array::StringArray =
                idx.iter().map(|&i| (!a.is_null(i as usize)).then(|| a.value(i as usize))).collect();
            ColumnData::Str(b)
        }
    }
}

fn head_column(batch: &EventBatch, c: ColumnId) -> ColumnData {
    match c.spec().kind {
        ColumnKind::Str => ColumnData::Str(batch.str_column(c).clone()),
        ColumnKind::I64 => ColumnData::I64(batch.i64_column(c).values().to_vec()),
        ColumnKind::U8 => ColumnData::U8(batch.u8_column(c).values().to_vec()),
        ColumnKind::Bool => ColumnData::Bool(batch.bool_column(c).iter().map(|v| v.unwrap_or(false)).collect()),
    }
}

fn scan_head_chunk(chunk: &HeadChunk, req: &ScanRequest) -> Result<Option<ScanBatch>> {
    let batch = &chunk.batch;
    let ts = batch.ts();
    let filters: Vec<(&DimFilter, &arrow_array::StringArray)> =
        req.filters.iter().map(|f| (f, batch.str_column(f.column))).collect();
    let idx: Vec<u32> = (0..batch.num_rows())
        .filter(|&i| {
            req.time_range.contains(ts[i])
                && filters.iter().all(|(f, a)| f.matches_str((!a.is_null(i)).then(|| a.value(i))))
        })
        .map(|i| i as u32)
        .collect();
    if idx.is_empty() {
        return Ok(None);
    }
    let all = idx.len() == batch.num_rows();
    let columns = req
        .columns
        .iter()
        .map(|&c| {
            let data = head_column(batch, c);
            if all { data } else { gather(&data, &idx) }
        })
        .collect();
    Ok(Some(ScanBatch { source: ScanSource::Head { lsn: chunk.lsn }, rows: idx.len(), columns }))
}
