//! The scan API: the rows of a snapshot that match a time range and
//! dimension filters, with the pruning that got there made visible.
//!
//! ```text
//!  ScanRequest ──► plan_scan ──► ScanPlan ──► execute (rayon, per block) ──► ScanBatch…
//!                   │
//!                   ├─ segment: time range vs min/max ts          → pruned (TimeRange)
//!                   ├─ segment: shard of no advertiser_id IN value → pruned (Shard)
//!                   ├─ segment: IN value absent from dictionary   → pruned (Dictionary)
//!                   ├─ rows:    ∩ of per-value row indexes (roaring)
//!                   └─ block:   ts zone map, code-range zone map   → block pruned
//! ```
//!
//! Filters on dictionary columns are resolved to codes once per segment;
//! rows are never compared as strings in segments. Head chunks (not yet
//! sealed) are filtered row by row (`scan/head.rs`), those of other shards
//! than an `advertiser_id` filter's skipped whole.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::Array;
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::error::{Result, StorageError};
use crate::event::{ColumnId, ColumnKind, shard_of};
use crate::head::HeadChunk;
use crate::ids::{Lsn, SegmentId};
use crate::manifest::{Level, PartitionKey, Tier};
use crate::segment::{ColumnData, Selection, ValueRange};
use crate::store::{LiveSegment, Snapshot};

mod head;
pub use head::{scan_head_chunk, scan_head_run};

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
/// NULL never matches either (SQL semantics). The column is a string
/// column, or an enum column (`type`, `invalid_reason`) compared by the
/// names of its codes.
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

    /// Whether a value (NULL: `None`) passes the filter.
    pub fn matches_str(&self, v: Option<&str>) -> bool {
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
    /// The shards that can hold a matching row, of `shards` (events go to
    /// shard `shard_of(advertiser_id)`): those of the advertisers its
    /// `advertiser_id IN (...)` filters name; `None` without such a filter.
    pub fn shards(&self, shards: u32) -> Option<Vec<u32>> {
        let mut out: Option<Vec<u32>> = None;
        for f in self.filters.iter().filter(|f| f.column == ColumnId::AdvertiserId && !f.negated) {
            let mut these: Vec<u32> = f.values.iter().map(|v| shard_of(v, shards)).collect();
            these.sort_unstable();
            these.dedup();
            out = Some(match out {
                None => these,
                Some(prev) => prev.into_iter().filter(|s| these.contains(s)).collect(),
            });
        }
        out
    }

    fn validate(&self) -> Result<()> {
        for f in &self.filters {
            if f.column.spec().kind != ColumnKind::Str && f.column.enum_names().is_none() {
                return Err(StorageError::Internal(format!(
                    "dimension filter on column {}, neither a string nor an enum",
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
    /// The segment holds another shard than those of the advertisers an
    /// `advertiser_id IN` filter names.
    Shard,
    /// An `IN` filter on this column names no value the segment holds.
    Dictionary(ColumnId),
    /// The id index holds none of an `IN` filter's values on this column.
    IdIndex(ColumnId),
}

/// The rows to read from one block.
#[derive(Debug, Clone)]
pub struct BlockScan {
    pub block: usize,
    /// Stored row ids of the whole block.
    pub rows: Range<usize>,
    /// Rows kept by the indexes (before per-row checks).
    pub selection: Selection,
    /// Rows that match the index lookups (before per-row checks), also
    /// where those lookups are left to `check_codes`.
    pub candidate_rows: usize,
    /// Rows still to be checked against the time range.
    pub check_time: bool,
    /// The segment's `code_filters` are still to be checked row by row:
    /// set where the matching rows are too many and too scattered for the
    /// index to be the cheaper way to find them.
    pub check_codes: bool,
}

#[derive(Clone)]
pub struct SegmentScan {
    pub segment: LiveSegment,
    pub blocks: Vec<BlockScan>,
    /// `IN` filters on dictionary columns, resolved to this segment's codes
    /// (ascending). Applied by the index, or per row in blocks with
    /// `check_codes`.
    pub code_filters: Vec<(ColumnId, Vec<u32>)>,
    /// Filters that could not be answered by indexes and are checked per row.
    pub row_filters: Vec<DimFilter>,
    /// Id columns whose filters the id index narrowed to a few granules
    /// (those filters are in `row_filters` too: the index narrows, the
    /// rows decide).
    pub id_lookups: Vec<ColumnId>,
}

#[derive(Clone)]
pub struct HeadScan {
    pub partition: PartitionKey,
    pub chunk: HeadChunk,
}

/// What a scan will read and what it skipped.
#[derive(Clone, Default)]
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

    /// The head chunks by run ([`HeadChunk::run`]), each read as one
    /// batch by [`scan_head_run`].
    pub fn head_runs(&self) -> Vec<&[HeadScan]> {
        let mut runs: Vec<&[HeadScan]> = Vec::new();
        let mut start = 0;
        for end in 1..=self.head.len() {
            if end == self.head.len() || !Arc::ptr_eq(self.head[end].chunk.run(), self.head[start].chunk.run()) {
                runs.push(&self.head[start..end]);
                start = end;
            }
        }
        runs
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
    /// `(min, max)` bounds of the rows' `ts` (of the whole block or chunk,
    /// so possibly wider than the rows kept): lets a consumer see that a
    /// time truncation is the same for every row without reading `ts`.
    pub ts_bounds: (i64, i64),
}

impl Snapshot {
    /// Decides which segments, blocks and rows a scan must read.
    pub fn plan_scan(&self, req: &ScanRequest) -> Result<ScanPlan> {
        self.plan_scan_except(req, |_| false)
    }

    /// Refuses a scan whose range needs events that retention deleted
    /// (raw segments in range that `skip` does not read some other way),
    /// naming the range and the rollup levels that still hold it.
    fn check_retained(&self, range: TimeRange, skip: &impl Fn(SegmentId) -> bool) -> Result<()> {
        let stamp = crate::time::format_timestamp;
        if let Some(d) = self.catalog.deleted_before
            && range.start_ms < d
        {
            return Err(StorageError::Expired(format!(
                "data before {} was deleted by retention at every level; query from {} on",
                stamp(d),
                stamp(d)
            )));
        }
        let gone = self.catalog.segments.values().filter(|m| {
            m.level == Level::Raw && m.tier == Tier::Expired && range.overlaps(m.min_ts, m.max_ts) && !skip(m.id)
        });
        let (from, to) = gone.fold((i64::MAX, i64::MIN), |(lo, hi), m| {
            (lo.min(m.partition.bucket_start_ms), hi.max(m.partition.bucket_start_ms + m.bucket_width_ms))
        });
        if from > to {
            return Ok(());
        }
        let held: Vec<&str> = [Level::Minute, Level::Hour, Level::Day]
            .into_iter()
            .filter(|&l| self.catalog.segments_of(l).any(|m| m.max_ts >= from && m.min_ts < to))
            .map(Level::as_str)
            .collect();
        let still = match held.last() {
            None => "no rollup holds that range either".to_string(),
            Some(coarsest) => format!(
                "metrics still has it at {} granularity (coarsest: {coarsest}): query metrics with whole {coarsest}s there",
                held.join(", ")
            ),
        };
        Err(StorageError::Expired(format!(
            "events from {} to {} were deleted by retention (retention.raw.ttl); {still}",
            stamp(from),
            stamp(to)
        )))
    }

    /// [`Snapshot::plan_scan`] without the segments of `skip` (read some
    /// other way: a query on `metrics` reads rollup rows that hold them).
    pub fn plan_scan_except(&self, req: &ScanRequest, skip: impl Fn(SegmentId) -> bool + Sync) -> Result<ScanPlan> {
        req.validate()?;
        // Never answer from a partial store: a damaged segment in range is an error.
        if let Some(d) = self.damaged.iter().find(|d| req.time_range.overlaps(d.meta.min_ts, d.meta.max_ts)) {
            return Err(StorageError::Damaged { id: d.meta.id, reason: d.error.clone() });
        }
        self.check_retained(req.time_range, &skip)?;
        let shards = req.shards(self.shards);
        let in_shards = |p: &PartitionKey| shards.as_ref().is_none_or(|s| s.contains(&p.shard));
        if !req.filters.is_empty() {
            // Cold segments in range: the dictionaries and index bitmaps
            // of the filtered columns, in parallel.
            let cold = self.segments.iter().filter(|s| !skip(s.meta.id) && s.reader.remote().is_some());
            let in_range =
                cold.filter(|s| req.time_range.overlaps(s.meta.min_ts, s.meta.max_ts) && in_shards(&s.meta.partition));
            prefetch(in_range.map(|s| {
                let filtered = || req.filters.iter().map(|f| f.column);
                let mut ranges = s.reader.dictionary_ranges(filtered());
                ranges.extend(filtered().filter_map(|c| s.reader.index_range(c)));
                (s, ranges)
            }));
        }
        let per_segment: Vec<Result<SegmentOutcome>> = self
            .segments
            .par_iter()
            .with_min_len(64)
            .filter(|s| !skip(s.meta.id))
            .map(|s| {
                // Out of range is said before another shard.
                if in_shards(&s.meta.partition) || !req.time_range.overlaps(s.meta.min_ts, s.meta.max_ts) {
                    plan_segment(s, req)
                } else {
                    Ok(SegmentOutcome::Pruned(s.meta.id, PruneReason::Shard, s.reader.num_blocks()))
                }
            })
            .collect();
        let mut plan = ScanPlan::default();
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
                    plan.candidate_rows += scan.blocks.iter().map(|b| b.candidate_rows as u64).sum::<u64>();
                    plan.segments.push(*scan);
                }
            }
        }
        plan.head = self
            .head
            .iter()
            .filter(|(p, _)| {
                let last = p.bucket_start_ms.saturating_add(self.bucket_width_ms - 1);
                req.time_range.overlaps(p.bucket_start_ms, last) && in_shards(p)
            })
            .map(|(p, c)| HeadScan { partition: *p, chunk: c.clone() })
            .collect();
        // Cold segments: the blocks the scan reads, in parallel.
        let cold: Vec<&SegmentScan> = plan.segments.iter().filter(|s| s.segment.reader.remote().is_some()).collect();
        if !cold.is_empty() {
            let mut columns: Vec<ColumnId> =
                req.columns.iter().chain(req.filters.iter().map(|f| &f.column)).copied().collect();
            columns.push(ColumnId::Ts);
            columns.sort_unstable_by_key(|c| c.index());
            columns.dedup();
            // The blocks of every column read, and the dictionaries that
            // decode them.
            prefetch(cold.into_iter().map(|s| {
                let reader = &s.segment.reader;
                let blocks = || s.blocks.iter().map(|b| b.block);
                let ranges = columns.iter().flat_map(|&c| reader.block_ranges(c, blocks()));
                (&s.segment, ranges.chain(reader.dictionary_ranges(req.columns.iter().copied())).collect())
            }));
        }
        Ok(plan)
    }

    /// Plans and executes a scan, returning every matching batch. Segments'
    /// blocks are read in parallel.
    pub fn scan(&self, req: &ScanRequest) -> Result<Vec<ScanBatch>> {
        let plan = self.plan_scan(req)?;
        plan.execute(req)
    }
}

/// Fetches `wants` (cold segments and byte ranges of each) into the
/// object store's cache in parallel, before the reads that need them.
fn prefetch<'a>(wants: impl Iterator<Item = (&'a LiveSegment, Vec<Range<u64>>)>) {
    let mut tier = None;
    let mut all = Vec::new();
    for (seg, ranges) in wants {
        if let Some((t, len)) = seg.reader.remote() {
            tier.get_or_insert_with(|| t.clone());
            all.push((seg.meta.id, len, ranges));
        }
    }
    if let Some(tier) = tier {
        tier.prefetch(&all);
    }
}

enum SegmentOutcome {
    Pruned(SegmentId, PruneReason, usize),
    Scan(Box<SegmentScan>, usize),
}

fn plan_segment(seg: &LiveSegment, req: &ScanRequest) -> Result<SegmentOutcome> {
    let reader = &seg.reader;
    let nblocks = reader.num_blocks();
    let (min_ts, max_ts) = reader.time_range();
    if reader.num_rows() == 0 || !req.time_range.overlaps(min_ts, max_ts) {
        return Ok(SegmentOutcome::Pruned(reader.id(), PruneReason::TimeRange, nblocks));
    }
    let whole_time = req.time_range.covers(min_ts, max_ts);

    // Index lookups for IN filters: dictionaries and their bitmaps for
    // dimensions, the id index for ids.
    let mut selection: Option<RoaringBitmap> = None;
    let mut code_ranges: Vec<(ColumnId, Vec<u32>)> = Vec::new();
    let mut row_filters = Vec::new();
    let mut id_lookups = Vec::new();
    let mut narrowed_by = PruneReason::Dictionary(ColumnId::AdvertiserId);
    for f in &req.filters {
        if !f.negated
            && let Some(dict) = reader.dictionary(f.column)?
        {
            let mut codes: Vec<u32> = f.values.iter().filter_map(|v| dict.code_of(v)).collect();
            codes.sort_unstable();
            codes.dedup();
            if codes.is_empty() {
                return Ok(SegmentOutcome::Pruned(reader.id(), PruneReason::Dictionary(f.column), nblocks));
            }
            // A non-dimension string column (an id) is dictionary-encoded
            // when a segment holds few distinct values of it, but has no
            // bitmap index: it is checked row by row, below.
            if reader.has_index(f.column) {
                let mut rows = RoaringBitmap::new();
                for &code in &codes {
                    rows |= reader.index_rows(f.column, code)?;
                }
                selection = Some(match selection {
                    None => rows,
                    Some(prev) => prev & rows,
                });
                code_ranges.push((f.column, codes));
                narrowed_by = PruneReason::Dictionary(f.column);
                continue;
            }
        }
        // Checked row by row; the id index first narrows the rows to read.
        if !f.negated
            && let Some(rows) = reader.id_rows(f.column, &f.values)?
        {
            selection = Some(match selection {
                None => rows,
                Some(prev) => prev & rows,
            });
            id_lookups.push(f.column);
            narrowed_by = PruneReason::IdIndex(f.column);
        }
        row_filters.push(f.clone());
    }
    if selection.as_ref().is_some_and(|s| s.is_empty()) {
        return Ok(SegmentOutcome::Pruned(reader.id(), narrowed_by, nblocks));
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
        let (selection, candidate_rows, check_codes) = match &selection {
            None => (Selection::All, rows.len(), false),
            Some(bits) => match block_selection(bits, &rows, id_lookups.is_empty()) {
                None => continue,
                Some(found) => found,
            },
        };
        blocks.push(BlockScan { block: b, rows, selection, candidate_rows, check_time, check_codes });
    }
    Ok(SegmentOutcome::Scan(
        Box::new(SegmentScan { segment: seg.clone(), blocks, code_filters: code_ranges, row_filters, id_lookups }),
        nblocks,
    ))
}

/// How to find the rows of `block` (stored row ids) that are in `bits`:
/// `(selection, matching rows, check codes per row)`, or `None` if none
/// are. A run of rows becomes a range; many scattered rows are cheaper to
/// find by comparing the block's codes than by walking the bitmap, when
/// `by_codes` (the bits are the code filters' rows alone: rows the id
/// index kept have no codes to compare, and are listed).
fn block_selection(bits: &RoaringBitmap, block: &Range<usize>, by_codes: bool) -> Option<(Selection, usize, bool)> {
    let (start, end) = (block.start as u32, block.end as u32);
    let count = bits.range_cardinality(start..end) as usize;
    if count == 0 {
        return None;
    }
    if count == block.len() {
        return Some((Selection::All, count, false));
    }
    let mut it = bits.range(start..end);
    let (first, last) = (it.next()?, it.next_back().unwrap_or(start));
    let first = first.max(start);
    let last = last.max(first);
    if (last - first) as usize + 1 == count {
        return Some((Selection::Range(first - start..last - start + 1), count, false));
    }
    // Walking a bitmap costs several times a code comparison per row.
    if by_codes && count * 8 >= block.len() {
        return Some((Selection::All, count, true));
    }
    Some((Selection::Rows(bits.range(start..end).map(|r| r - start).collect()), count, false))
}

impl ScanPlan {
    /// Reads every planned block and head chunk, in parallel, keeping only
    /// matching rows.
    pub fn execute(&self, req: &ScanRequest) -> Result<Vec<ScanBatch>> {
        let work: Vec<(&SegmentScan, &BlockScan)> =
            self.segments.iter().flat_map(|s| s.blocks.iter().map(move |b| (s, b))).collect();
        let mut out: Vec<ScanBatch> = work
            .par_iter()
            .map(|(s, b)| scan_block(s, b, req))
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

/// A filter resolved to a verdict per dictionary code (0 = NULL), looked
/// up without a branch: rows test codes in an unpredictable order, and a
/// mispredicted branch per row costs more than the lookup.
struct CodeVerdict(Vec<bool>);

impl CodeVerdict {
    fn new(dict_len: usize, matches: impl Fn(u32) -> bool) -> CodeVerdict {
        CodeVerdict::of_table((0..=dict_len as u32).map(matches).collect())
    }

    /// `table[c]`: whether code `c` matches.
    fn of_table(mut table: Vec<bool>) -> CodeVerdict {
        // One slot past the table, always false, for codes outside it
        // (never written; a block's codes are checked by its CRC).
        table.push(false);
        CodeVerdict(table)
    }

    fn holds(&self, code: i64) -> bool {
        // `as usize` maps a negative code past the end too.
        self.0[(code as usize).min(self.0.len() - 1)]
    }
}

/// Reads one block, applying the per-row checks, and returns the requested
/// columns of the surviving rows (`None` if none survive).
pub fn scan_block(seg: &SegmentScan, block: &BlockScan, req: &ScanRequest) -> Result<Option<ScanBatch>> {
    let reader = &seg.segment.reader;
    let n = block.rows.len();
    let mut selection = block.selection.clone();
    if block.check_time {
        let range = req.time_range;
        selection = reader.select_rows(ColumnId::Ts, block.block, selection, |ts| range.contains(ts))?;
    }
    if block.check_codes {
        for (col, codes) in &seg.code_filters {
            let dict_len = reader.dictionary(*col)?.map_or(0, |d| d.len());
            let verdict = CodeVerdict::new(dict_len, |c| codes.binary_search(&c).is_ok());
            selection = reader.select_rows(*col, block.block, selection, |c| verdict.holds(c))?;
        }
    }
    for f in &seg.row_filters {
        selection = match (reader.dictionary(f.column)?, f.column.enum_names()) {
            (Some(dict), _) => {
                let verdict = CodeVerdict::new(dict.len(), |c| f.matches_str(dict.value(c)));
                reader.select_rows(f.column, block.block, selection, |c| verdict.holds(c))?
            }
            (None, Some(names)) => {
                // Enum codes start at 0 (no NULL code): `names[c]`.
                let verdict = CodeVerdict::of_table(names.iter().map(|n| f.matches_str(Some(n))).collect());
                reader.select_rows(f.column, block.block, selection, |c| verdict.holds(c))?
            }
            (None, None) => {
                let ColumnData::Str(a) = reader.read_column(f.column, block.block)? else {
                    return Err(StorageError::Internal(format!("filter on non-string column {}", f.column.name())));
                };
                selection.refine(n, |i| f.matches_str((!a.is_null(i)).then(|| a.value(i))))
            }
        };
    }
    let rows = selection.count(n);
    if rows == 0 {
        return Ok(None);
    }
    let columns = req
        .columns
        .iter()
        .map(|&c| match &selection {
            Selection::All => reader.read_column(c, block.block),
            Selection::Range(r) => reader.read_column_rows(c, block.block, r.start as usize..r.end as usize),
            Selection::Rows(idx) => reader.read_column_at(c, block.block, idx),
        })
        .collect::<Result<Vec<_>>>()?;
    let ts_bounds = match reader.block_stats(ColumnId::Ts, block.block).map(|s| &s.range) {
        Some(ValueRange::Int { min, max }) => (*min, *max),
        _ => (i64::MIN, i64::MAX),
    };
    Ok(Some(ScanBatch {
        source: ScanSource::Segment { id: reader.id(), block: block.block },
        rows,
        columns,
        ts_bounds,
    }))
}

/// Largest table [`count_block`] fills: one cell per combination of the
/// keys' codes.
pub const MAX_COUNT_CELLS: usize = 1 << 14;

/// How many rows of one block pass a scan's filters, per combination of
/// the codes of some key columns.
#[derive(Debug, Clone)]
pub struct CodeCounts {
    /// Per key, the segment's dictionary (codes: 0 = NULL, then entries),
    /// or `None` for an enum column (codes index [`ColumnId::enum_names`]).
    pub dicts: Vec<Option<std::sync::Arc<crate::segment::Dictionary>>>,
    /// Key `j` has codes `0..cards[j]`.
    pub cards: Vec<usize>,
    /// Row-major over the keys' codes, the last key varying fastest: the
    /// cell of codes `(c0, c1)` is `c0 * cards[1] + c1`.
    pub counts: Vec<u32>,
}

/// The fused scan of `count(*) … GROUP BY` on dimension columns: counts
/// the rows of one block that pass the request's filters per combination
/// of the codes of `keys`, reading each column's block once, in order,
/// without listing the surviving rows or decoding them to values.
///
/// `None` when [`scan_block`] is the better way to this block: a key is
/// not dictionary-encoded in this segment and not an enum column, the
/// table would pass [`MAX_COUNT_CELLS`], or the indexes left a short list
/// of rows, which is cheaper to read row by row.
pub fn count_block(
    seg: &SegmentScan,
    block: &BlockScan,
    req: &ScanRequest,
    keys: &[ColumnId],
) -> Result<Option<CodeCounts>> {
    let reader = &seg.segment.reader;
    let n = block.rows.len();
    if let Selection::Rows(idx) = &block.selection
        && idx.len() * 4 < n
    {
        return Ok(None);
    }
    let corrupt = |reason: String| StorageError::SegmentCorrupt {
        id: reader.id(),
        path: reader.path().to_owned(),
        reason: format!("block {}: {reason}", block.block),
    };
    let mut dicts = Vec::with_capacity(keys.len());
    let mut cards = Vec::with_capacity(keys.len());
    let mut cells = 1usize;
    for &k in keys {
        let card = match (reader.dictionary(k)?, k.enum_names()) {
            (Some(dict), _) => dict.len() + 1,
            (None, Some(names)) => names.len(),
            (None, None) => return Ok(None),
        };
        cells = cells.saturating_mul(card);
        cards.push(card);
    }
    // More cells than rows: a sparse table, better grouped by hashing.
    if cells > MAX_COUNT_CELLS || cells > n.max(64) {
        return Ok(None);
    }
    // Each row's cell; a row a filter rejects gets the `drop` bit, above
    // every cell, so that each filter is a branch-free OR.
    let drop = cells.next_power_of_two() as u32;
    let mut cell = vec![0u32; n];
    for (&k, &card) in keys.iter().zip(&cards) {
        let card32 = card as u32;
        match reader.read_column(k, block.block)? {
            ColumnData::Dict { codes, dict } => {
                // The reader checked every code against the dictionary.
                for (c, code) in cell.iter_mut().zip(codes) {
                    *c = *c * card32 + code;
                }
                dicts.push(Some(dict));
            }
            ColumnData::U8(codes) => {
                if let Some(bad) = codes.iter().find(|&&c| u32::from(c) >= card32) {
                    return Err(corrupt(format!("code {bad} of column {} names no value", k.name())));
                }
                for (c, code) in cell.iter_mut().zip(codes) {
                    *c = *c * card32 + u32::from(code);
                }
                dicts.push(None);
            }
            _ => return Ok(None),
        }
    }
    match &block.selection {
        Selection::All => {}
        Selection::Range(r) => {
            let (start, end) = ((r.start as usize).min(n), (r.end as usize).min(n));
            cell[..start].fill(drop);
            cell[end..].fill(drop);
        }
        Selection::Rows(idx) => {
            let mut kept = vec![drop; n];
            for &i in idx {
                let i = i as usize;
                let c = cell.get(i).ok_or_else(|| StorageError::Internal(format!("row {i} outside a block of {n}")))?;
                kept[i] = *c;
            }
            cell = kept;
        }
    }
    if block.check_time {
        let ColumnData::I64(ts) = reader.read_column(ColumnId::Ts, block.block)? else {
            return Err(StorageError::Internal("ts is not an integer column".into()));
        };
        drop_failing(&mut cell, drop, ts.iter(), |t| req.time_range.contains(*t));
    }
    if block.check_codes {
        for (col, codes) in &seg.code_filters {
            let ColumnData::Dict { codes: got, dict } = reader.read_column(*col, block.block)? else {
                return Err(StorageError::Internal(format!("code filter on column {} without codes", col.name())));
            };
            let verdict = CodeVerdict::new(dict.len(), |c| codes.binary_search(&c).is_ok());
            drop_by_code(&mut cell, drop, &got, &verdict);
        }
    }
    for f in &seg.row_filters {
        match reader.read_column(f.column, block.block)? {
            ColumnData::Dict { codes, dict } => {
                let verdict = CodeVerdict::new(dict.len(), |c| f.matches_str(dict.value(c)));
                drop_by_code(&mut cell, drop, &codes, &verdict);
            }
            ColumnData::U8(codes) => {
                let names = f.column.enum_names().unwrap_or(&[]);
                let verdict = CodeVerdict::of_table(names.iter().map(|n| f.matches_str(Some(n))).collect());
                drop_by_code(&mut cell, drop, &codes, &verdict);
            }
            ColumnData::Str(a) => drop_failing(&mut cell, drop, a.iter(), |v| f.matches_str(v)),
            _ => return Err(StorageError::Internal(format!("filter on non-string column {}", f.column.name()))),
        }
    }
    // Four interleaved tables, so that rows of one cell in a row (sorted
    // keys) do not each wait for the previous add's store.
    let width = 2 * drop as usize;
    let mut tables = vec![0u32; 4 * width];
    let (t0, rest) = tables.split_at_mut(width);
    let (t1, rest) = rest.split_at_mut(width);
    let (t2, t3) = rest.split_at_mut(width);
    let mut quads = cell.chunks_exact(4);
    for q in &mut quads {
        t0[q[0] as usize] += 1;
        t1[q[1] as usize] += 1;
        t2[q[2] as usize] += 1;
        t3[q[3] as usize] += 1;
    }
    for &c in quads.remainder() {
        t0[c as usize] += 1;
    }
    let counts = (0..cells).map(|i| t0[i] + t1[i] + t2[i] + t3[i]).collect();
    Ok(Some(CodeCounts { dicts, cards, counts }))
}

/// Sets the `drop` bit of the rows whose code fails `verdict`: a lookup
/// of the bit to OR, without a branch.
fn drop_by_code<C: Copy + Into<u64>>(cell: &mut [u32], drop: u32, codes: &[C], verdict: &CodeVerdict) {
    let bits: Vec<u32> = verdict.0.iter().map(|&ok| if ok { 0 } else { drop }).collect();
    let last = bits.len() - 1;
    for (c, &code) in cell.iter_mut().zip(codes) {
        let code: u64 = code.into();
        *c |= bits[(code as usize).min(last)];
    }
}

/// Sets the `drop` bit of the rows whose value fails `passes`.
fn drop_failing<T>(cell: &mut [u32], drop: u32, values: impl Iterator<Item = T>, passes: impl Fn(T) -> bool) {
    for (c, v) in cell.iter_mut().zip(values) {
        // passes: 1 - 1 = 0; fails: 0 - 1 = all bits.
        *c |= drop & u32::from(passes(v)).wrapping_sub(1);
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
        ColumnData::Bytes(a) => {
            let b: arrow_array::BinaryArray =
                idx.iter().map(|&i| (!a.is_null(i as usize)).then(|| a.value(i as usize))).collect();
            ColumnData::Bytes(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(rows: impl IntoIterator<Item = u32>) -> RoaringBitmap {
        rows.into_iter().collect()
    }

    #[test]
    fn block_selection_picks_the_cheapest_way_to_the_rows() {
        let block = 1000..2000;
        assert_eq!(block_selection(&bits(0..1000), &block, true), None, "no rows of this block");
        assert_eq!(block_selection(&bits(500..2500), &block, true), Some((Selection::All, 1000, false)));
        assert_eq!(
            block_selection(&bits(1200..1300), &block, true),
            Some((Selection::Range(200..300), 100, false)),
            "a run of rows is a range"
        );
        assert_eq!(
            block_selection(&bits((1000..2000).step_by(2)), &block, true),
            Some((Selection::All, 500, true)),
            "many scattered rows are found by their codes"
        );
        assert_eq!(
            block_selection(&bits([999, 1003, 1500, 1999, 2000]), &block, true),
            Some((Selection::Rows(vec![3, 500, 999]), 3, false)),
            "a few scattered rows are listed"
        );
        assert_eq!(
            block_selection(&bits((1000..2000).step_by(2)), &block, false).map(|(s, n, codes)| (
                matches!(s, Selection::Rows(r) if r.len() == 500),
                n,
                codes
            )),
            Some((true, 500, false)),
            "rows the id index kept have no codes to compare: they are listed"
        );
    }

    #[test]
    fn code_verdict_never_matches_codes_outside_the_dictionary() {
        let v = CodeVerdict::new(3, |c| c == 2 || c == 3);
        assert!(v.holds(2) && v.holds(3));
        assert!(!v.holds(0) && !v.holds(1) && !v.holds(4) && !v.holds(1 << 40) && !v.holds(-1));
    }
}
