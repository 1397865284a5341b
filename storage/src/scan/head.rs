//! Reading the head: the unsealed rows of a scan, a run of chunks at a
//! time (`scan_head_run`, dimension columns as the run's codes, so they
//! filter and group as a segment block's do) or a chunk at a time
//! (`scan_head_chunk`, strings, for lookups that need each chunk's LSN).
//! Rows are read where they are, in the WAL records' Arrow arrays.

use std::sync::Arc;

use arrow_array::Array;

use super::{CodeVerdict, DimFilter, ScanBatch, ScanRequest, ScanSource, TimeRange};
use crate::error::{Result, StorageError};
use crate::event::{ColumnId, ColumnKind, EventBatch};
use crate::head::{HeadChunk, RunCodes};
use crate::segment::ColumnData;

/// Column `c` of every row of `batch`.
fn head_column(batch: &EventBatch, c: ColumnId) -> ColumnData {
    match c.spec().kind {
        ColumnKind::Str => ColumnData::Str(batch.str_column(c).clone()),
        ColumnKind::I64 => ColumnData::I64(batch.i64_column(c).values().to_vec()),
        ColumnKind::U8 => ColumnData::U8(batch.u8_column(c).values().to_vec()),
        ColumnKind::Bool => ColumnData::Bool(batch.bool_column(c).iter().map(|v| v.unwrap_or(false)).collect()),
        // Invariant: no event column is Bytes (`COLUMNS`).
        ColumnKind::Bytes => ColumnData::Bytes(arrow_array::BinaryArray::new_null(batch.num_rows())),
    }
}

/// `values(source)` at the rows `idx` of each (source, idx) part, one part
/// after another (`rows` in all).
fn gather<'a, T: Copy + 'a>(
    rows: usize,
    parts: impl Iterator<Item = (&'a EventBatch, &'a [u32])>,
    values: impl Fn(&'a EventBatch) -> &'a [T],
) -> Vec<T> {
    let mut out = Vec::with_capacity(rows);
    for (b, idx) in parts {
        let v = values(b);
        out.extend(idx.iter().map(|&i| v[i as usize]));
    }
    out
}

/// Column `c`'s values at rows `idx[k]` of chunk `k`'s source, one after
/// another, read where they are: a copy of the whole column first would
/// cost a record's size for each of its partitions' chunks.
fn head_column_of(chunks: &[&HeadChunk], idx: &[&[u32]], c: ColumnId) -> ColumnData {
    if let ([chunk], [idx]) = (chunks, idx)
        && idx.len() == chunk.source().num_rows()
    {
        return head_column(chunk.source(), c);
    }
    let rows = idx.iter().map(|idx| idx.len()).sum();
    let parts = || chunks.iter().zip(idx).map(|(ch, idx)| (ch.source(), *idx));
    match c.spec().kind {
        ColumnKind::Str => ColumnData::Str(
            parts()
                .flat_map(|(b, idx)| {
                    let a = b.str_column(c);
                    idx.iter().map(move |&i| (!a.is_null(i as usize)).then(|| a.value(i as usize)))
                })
                .collect(),
        ),
        ColumnKind::I64 => ColumnData::I64(gather(rows, parts(), |b| &b.i64_column(c).values()[..])),
        ColumnKind::U8 => ColumnData::U8(gather(rows, parts(), |b| &b.u8_column(c).values()[..])),
        ColumnKind::Bool => {
            let mut out = Vec::with_capacity(rows);
            for (b, idx) in parts() {
                let a = b.bool_column(c);
                out.extend(idx.iter().map(|&i| a.is_valid(i as usize) && a.value(i as usize)));
            }
            ColumnData::Bool(out)
        }
        // Invariant: no event column is Bytes (`COLUMNS`).
        ColumnKind::Bytes => ColumnData::Bytes(arrow_array::BinaryArray::new_null(rows)),
    }
}

/// A filter on head rows, row by row; per chunk where it reads a column.
enum HeadFilter<'a> {
    /// A string column, compared as strings.
    Str(&'a DimFilter, Vec<&'a arrow_array::StringArray>),
    /// An enum column: its codes, and the verdict per code (by name).
    Enum(Vec<&'a [u8]>, CodeVerdict),
    /// A dimension column as the run's codes, and the verdict per code.
    Codes(Vec<Arc<[u32]>>, CodeVerdict),
}

impl HeadFilter<'_> {
    /// Whether row `j` of chunk `k`, row `i` of its source, passes.
    fn holds(&self, k: usize, j: usize, i: usize) -> bool {
        match self {
            HeadFilter::Str(f, a) => f.matches_str((!a[k].is_null(i)).then(|| a[k].value(i))),
            HeadFilter::Enum(codes, verdict) => verdict.holds(i64::from(codes[k][i])),
            HeadFilter::Codes(codes, verdict) => verdict.holds(i64::from(codes[k][j])),
        }
    }
}

/// The rows of one head chunk that match a scan.
struct Picked {
    /// Positions among the chunk's rows.
    kept: Vec<u32>,
    /// The same rows of the chunk's source.
    rows: Vec<u32>,
    ts_min: i64,
    ts_max: i64,
}

/// The rows of chunk `k` of a run that match: `rows` gives (position
/// among the chunk's rows, row of its source), in order.
fn pick(
    chunk: &HeadChunk,
    rows: impl Iterator<Item = (usize, usize)>,
    range: TimeRange,
    filters: &[HeadFilter<'_>],
    k: usize,
) -> Picked {
    let ts = chunk.source().ts();
    let every_time = range == TimeRange::ALL;
    let mut p = Picked { kept: Vec::new(), rows: Vec::new(), ts_min: i64::MAX, ts_max: i64::MIN };
    for (j, i) in rows {
        let t = ts[i];
        if (every_time || range.contains(t)) && filters.iter().all(|f| f.holds(k, j, i)) {
            p.kept.push(j as u32);
            p.rows.push(i as u32);
            p.ts_min = p.ts_min.min(t);
            p.ts_max = p.ts_max.max(t);
        }
    }
    p
}

/// One head chunk's matching rows, its string columns as strings: for
/// reads that need each chunk's own LSN (lookups), where building its
/// run's codes one chunk at a time would cost more than it saves.
pub fn scan_head_chunk(chunk: &HeadChunk, req: &ScanRequest) -> Result<Option<ScanBatch>> {
    scan_head(&[chunk], req, false)
}

/// The rows of head chunks of one run (see [`HeadChunk::run`]) that
/// match, and the requested columns of them, as one batch: dimension
/// columns as the run's dictionary codes (built by the first scan that
/// reads them), so that they group and filter as a segment's do; the
/// others read where they are. Its source names the first chunk's LSN.
pub fn scan_head_run(chunks: &[&HeadChunk], req: &ScanRequest) -> Result<Option<ScanBatch>> {
    scan_head(chunks, req, true)
}

/// [`scan_head_run`], with dimension columns as the run's codes or not.
fn scan_head(chunks: &[&HeadChunk], req: &ScanRequest, as_codes: bool) -> Result<Option<ScanBatch>> {
    let Some(first) = chunks.first() else { return Ok(None) };
    if chunks.iter().any(|c| !Arc::ptr_eq(c.run(), first.run())) {
        return Err(StorageError::Internal("head chunks of different runs scanned as one".into()));
    }
    let run = first.run();
    // Each dimension column's codes, taken once for the filters and the
    // columns alike (one dictionary, whatever other scans add meanwhile).
    let mut codes: Vec<(ColumnId, RunCodes)> = Vec::new();
    if as_codes {
        for c in req.filters.iter().map(|f| f.column).chain(req.columns.iter().copied()) {
            if !codes.iter().any(|(have, _)| *have == c)
                && let Some(run_codes) = run.codes(c, chunks)
            {
                codes.push((c, run_codes));
            }
        }
    }
    let codes_of = |c: ColumnId| codes.iter().find(|(have, _)| *have == c).map(|(_, rc)| rc);
    let filters: Vec<HeadFilter<'_>> = req
        .filters
        .iter()
        .map(|f| match f.column.enum_names() {
            Some(names) => HeadFilter::Enum(
                chunks.iter().map(|ch| ch.source().u8_column(f.column).values().as_ref()).collect(),
                CodeVerdict::of_table(names.iter().map(|n| f.matches_str(Some(n))).collect()),
            ),
            None => match codes_of(f.column) {
                Some((dict, codes)) => {
                    HeadFilter::Codes(codes.clone(), CodeVerdict::new(dict.len(), |c| f.matches_str(dict.value(c))))
                }
                None => HeadFilter::Str(f, chunks.iter().map(|ch| ch.source().str_column(f.column)).collect()),
            },
        })
        .collect();
    let picked: Vec<Picked> = chunks
        .iter()
        .enumerate()
        .map(|(k, ch)| match ch.rows() {
            Some(rows) => pick(ch, rows.iter().map(|&i| i as usize).enumerate(), req.time_range, &filters, k),
            None => pick(ch, (0..ch.num_rows()).map(|i| (i, i)), req.time_range, &filters, k),
        })
        .collect();
    let rows: usize = picked.iter().map(|p| p.kept.len()).sum();
    if rows == 0 {
        return Ok(None);
    }
    let idx: Vec<&[u32]> = picked.iter().map(|p| p.rows.as_slice()).collect();
    let columns = req
        .columns
        .iter()
        .map(|&c| match codes_of(c) {
            Some((dict, codes)) => {
                let mut out = Vec::with_capacity(rows);
                for (codes, p) in codes.iter().zip(&picked) {
                    if p.kept.len() == codes.len() {
                        out.extend_from_slice(codes);
                    } else {
                        out.extend(p.kept.iter().map(|&j| codes[j as usize]));
                    }
                }
                ColumnData::Dict { codes: out, dict: dict.clone() }
            }
            None => head_column_of(chunks, &idx, c),
        })
        .collect();
    let ts_bounds = picked.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| (lo.min(p.ts_min), hi.max(p.ts_max)));
    Ok(Some(ScanBatch { source: ScanSource::Head { lsn: first.lsn }, rows, columns, ts_bounds }))
}
