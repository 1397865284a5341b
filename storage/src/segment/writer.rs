//! Writes one segment file.
//!
//! ```text
//!  batch of a SegmentSchema (EventBatch: the events schema)
//!             ─► per string column: dictionary (sorted) or plain   (parallel)
//!             ─► permutation sorted by (sort columns' codes, ts, input row)
//!             ─► per column: gather block rows, encode, compress?, crc (parallel)
//!             ─► id index of the id columns (final events segments; parallel to the columns)
//!             ─► header | blocks | index bitmaps | id section | footer | trailer ─► fsync
//! ```
//!
//! The writer holds the encoded segment in memory before writing it; the
//! batch is in memory already and encoded columns are smaller than it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt8Array};
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::error::{IoContext, Result, StorageError};
use crate::event::{ColumnKind, EventBatch};
use crate::idindex::{self, ID_COLUMNS};

use super::format::{
    BlockMeta, ColumnMeta, Encoding, FLAG_ZSTD, FORMAT_VERSION, Footer, HEADER_LEN, ID_PAGE_BYTES, IdSection,
    IndexEntry, MAGIC, encode_ints, pack,
};
use super::{ColumnDef, ColumnStats, Dictionary, SegmentSchema, SegmentSummary, SegmentWriteOptions, ValueRange};

/// Largest `user_meta` accepted.
const MAX_USER_META: usize = 16 << 20;

/// Writes `batch` to a new segment file at `path` (replacing any file
/// there) and fsyncs it. Rows are stored sorted by `(advertiser_id,
/// campaign_id, ad_id, ts)`; rows equal on all four keep their input order.
///
/// The caller chooses the file name and fsyncs the directory. On error a
/// partial file may remain at `path`; it fails [`super::SegmentReader::open`].
pub fn write_segment(path: &Path, batch: &EventBatch, opts: &SegmentWriteOptions) -> Result<SegmentSummary> {
    write_columns(path, SegmentSchema::events(), batch.record_batch(), opts)
}

/// Writes `batch`, whose Arrow schema must be `schema.arrow()`, to a new
/// segment file at `path`, as [`write_segment`] does for events: rows
/// sorted by the schema's sort columns and time, ties in input order.
pub fn write_columns(
    path: &Path,
    schema: &SegmentSchema,
    batch: &RecordBatch,
    opts: &SegmentWriteOptions,
) -> Result<SegmentSummary> {
    let rows = batch.num_rows();
    if opts.block_rows == 0 || u32::try_from(opts.block_rows).is_err() {
        return Err(StorageError::Config(format!("segment block_rows must be in 1..=2^32-1, got {}", opts.block_rows)));
    }
    if !zstd::compression_level_range().contains(&opts.zstd_level) {
        return Err(StorageError::Config(format!("segment zstd_level {} is out of range", opts.zstd_level)));
    }
    if opts.user_meta.len() > MAX_USER_META {
        return Err(StorageError::Config(format!(
            "segment user_meta is {} bytes; the limit is {MAX_USER_META}",
            opts.user_meta.len()
        )));
    }
    if u32::try_from(rows).is_err() {
        return Err(StorageError::SegmentTooLarge { path: path.to_owned(), rows: rows as u64 });
    }
    if batch.schema().fields() != schema.arrow().fields() {
        return Err(StorageError::Schema(format!(
            "a batch to write as a segment has columns {:?}, its schema {:?}",
            batch.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
            schema.columns().iter().map(|c| c.name).collect::<Vec<_>>()
        )));
    }

    let defs = schema.columns();
    let sources = defs
        .par_iter()
        .zip(batch.columns())
        .map(|(def, array)| Source::prepare(array, def))
        .collect::<Result<Vec<_>>>()?;
    let ts = match &sources[schema.ts()] {
        Source::I64(v) => *v,
        _ => return Err(StorageError::Internal("the time column is not I64".into())),
    };
    let perm = sort_permutation(&sources, schema, ts)?;
    let id_columns = if opts.id_index { id_columns(schema, batch)? } else { None };
    let (encoded, ids) = rayon::join(
        || {
            defs.par_iter()
                .enumerate()
                .zip(&sources)
                .map(|((i, def), src)| encode_column(def, i == schema.ts(), src, &perm, opts))
                .collect::<Result<Vec<_>>>()
        },
        || id_columns.map(|cols| idindex::build(&cols, &perm, idindex::GRANULE_ROWS, usize::MAX)).transpose(),
    );
    let (encoded, ids) = (encoded?, ids?);
    drop(sources);

    let (min_ts, max_ts) = ts.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    let file = File::create(path).at(path)?;
    let mut w = CountingWriter { inner: BufWriter::with_capacity(1 << 20, file), pos: 0 };

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    w.write(&header).at(path)?;

    let mut columns = Vec::with_capacity(encoded.len());
    let mut bitmaps = Vec::with_capacity(encoded.len());
    for mut col in encoded {
        let base = w.pos;
        for b in &mut col.meta.blocks {
            b.offset += base;
        }
        w.write(&col.data).at(path)?;
        columns.push(col.meta);
        bitmaps.push(col.bitmaps);
    }

    let index_offset = w.pos;
    let mut index_crc = 0u32;
    for (meta, maps) in columns.iter_mut().zip(&bitmaps) {
        let Some(maps) = maps else { continue };
        let mut entries = Vec::with_capacity(maps.len());
        for bytes in maps {
            entries.push(IndexEntry { offset: w.pos, len: bytes.len() as u64, crc: crc32c::crc32c(bytes) });
            index_crc = crc32c::crc32c_append(index_crc, bytes);
            w.write(bytes).at(path)?;
        }
        meta.index = Some(entries);
    }
    let index_len = w.pos - index_offset;

    // The id section after the bitmaps: a cold scan reads blocks and
    // bitmaps, which then stay adjacent (fewer, longer ranges).
    let ids = match ids {
        None => None,
        Some(index) => {
            let offset = w.pos;
            let mut files = Vec::with_capacity(index.files.len());
            let mut pages = IdPages::default();
            for (name, bytes) in &index.files {
                let start = w.pos - offset;
                w.write(bytes).at(path)?;
                pages.add(bytes);
                files.push((name.clone(), start..w.pos - offset));
            }
            let page_crcs = pages.finish();
            let (granule_rows, page_bytes) = (index.granule_rows, ID_PAGE_BYTES);
            Some(IdSection { offset, len: w.pos - offset, granule_rows, page_bytes, page_crcs, files })
        }
    };

    let footer = Footer {
        rows: rows as u64,
        block_rows: opts.block_rows as u32,
        min_ts,
        max_ts,
        user_meta: opts.user_meta.clone(),
        index_offset,
        index_len,
        index_crc,
        columns,
        ids,
    }
    .encode();
    w.write(&footer).at(path)?;
    let mut trailer = Vec::with_capacity(super::format::TRAILER_LEN);
    trailer.extend_from_slice(&(footer.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
    trailer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    trailer.extend_from_slice(&MAGIC);
    w.write(&trailer).at(path)?;

    let size_bytes = w.pos;
    let file = w.inner.into_inner().map_err(|e| e.into_error()).at(path)?;
    file.sync_all().at(path)?;
    Ok(SegmentSummary { rows: rows as u64, size_bytes, min_ts, max_ts })
}

/// The id columns of `batch`, when its schema has all of them as strings
/// (events do; derived tables do not, and get no id index).
fn id_columns<'a>(schema: &SegmentSchema, batch: &'a RecordBatch) -> Result<Option<Vec<&'a StringArray>>> {
    let mut out = Vec::with_capacity(ID_COLUMNS.len());
    for c in ID_COLUMNS {
        let Some(i) = schema.position(c.name()) else { return Ok(None) };
        let def = &schema.columns()[i];
        if def.kind != ColumnKind::Str {
            return Ok(None);
        }
        out.push(downcast::<StringArray>(batch.column(i), def)?);
    }
    Ok(Some(out))
}

/// The CRCs of the id section's pages, as its bytes go by.
#[derive(Default)]
struct IdPages {
    crcs: Vec<u32>,
    crc: u32,
    filled: usize,
}

impl IdPages {
    fn add(&mut self, mut bytes: &[u8]) {
        let page = ID_PAGE_BYTES as usize;
        while !bytes.is_empty() {
            let take = (page - self.filled).min(bytes.len());
            self.crc = crc32c::crc32c_append(self.crc, &bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == page {
                self.crcs.push(std::mem::take(&mut self.crc));
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.crcs.push(self.crc);
        }
        self.crcs
    }
}

struct CountingWriter {
    inner: BufWriter<File>,
    pos: u64,
}

impl CountingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// A column of the input batch, in input row order, ready to be gathered.
enum Source<'a> {
    I64(&'a [i64]),
    U8(&'a [u8]),
    Bool(&'a BooleanArray),
    Dict { dict: Dictionary, codes: Vec<u32> },
    Plain(&'a StringArray),
    Bytes(&'a BinaryArray),
}

/// `array` as the Arrow type `T`, or a `Schema` error naming the column.
fn downcast<'a, T: 'static>(array: &'a ArrayRef, def: &ColumnDef) -> Result<&'a T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| StorageError::Schema(format!("column {} is not of kind {:?}", def.name, def.kind)))
}

impl<'a> Source<'a> {
    fn prepare(array: &'a ArrayRef, def: &ColumnDef) -> Result<Source<'a>> {
        if !def.nullable && array.null_count() > 0 {
            return Err(StorageError::Schema(format!("column {} must not contain nulls", def.name)));
        }
        Ok(match def.kind {
            ColumnKind::I64 => Source::I64(downcast::<Int64Array>(array, def)?.values()),
            ColumnKind::U8 => Source::U8(downcast::<UInt8Array>(array, def)?.values()),
            ColumnKind::Bool => Source::Bool(downcast::<BooleanArray>(array, def)?),
            ColumnKind::Bytes => Source::Bytes(downcast::<BinaryArray>(array, def)?),
            ColumnKind::Str => {
                let array = downcast::<StringArray>(array, def)?;
                // Dimensions are always dictionary-encoded (the index needs
                // codes); other strings only while few values are distinct.
                let limit = if def.dimension { None } else { Some(array.len() / 2) };
                match dictionary_encode(array, limit)? {
                    Some((dict, codes)) => Source::Dict { dict, codes },
                    None => Source::Plain(array),
                }
            }
        })
    }

    fn codes(&self, name: &str) -> Result<&[u32]> {
        match self {
            Source::Dict { codes, .. } => Ok(codes),
            _ => Err(StorageError::Internal(format!("sort key column {name} is not dictionary-encoded"))),
        }
    }
}

/// Hashes a `&str` key with one xxh3 call (`Hash for str` calls `write`
/// once for the bytes and `write_u8` once for a terminator).
#[derive(Default, Clone, Copy)]
struct BuildStrHasher;

#[derive(Default)]
struct StrHasher(u64);

impl std::hash::BuildHasher for BuildStrHasher {
    type Hasher = StrHasher;
    fn build_hasher(&self) -> StrHasher {
        StrHasher(0)
    }
}

impl std::hash::Hasher for StrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Rows after which a non-dimension string column with more than 3/4
/// distinct values is stored plain without looking further.
const EARLY_CHECK_ROWS: usize = 4096;

/// Sorted dictionary and per-row codes (0 = NULL), or `None` once more than
/// `limit` distinct values are seen (or the early check fails).
fn dictionary_encode(array: &StringArray, limit: Option<usize>) -> Result<Option<(Dictionary, Vec<u32>)>> {
    let mut ids: HashMap<&str, u32, BuildStrHasher> = HashMap::default();
    // Provisional ids in first-seen order, remapped to sorted codes below.
    let mut provisional = Vec::with_capacity(array.len());
    for i in 0..array.len() {
        if array.is_null(i) {
            provisional.push(0);
            continue;
        }
        let next = ids.len() as u32 + 1;
        let id = *ids.entry(array.value(i)).or_insert(next);
        if let Some(limit) = limit {
            // Give up once the column cannot qualify, or early when the
            // first rows are nearly all distinct (ids, hashes).
            if ids.len() > limit || (i + 1 == EARLY_CHECK_ROWS && ids.len() > EARLY_CHECK_ROWS * 3 / 4) {
                return Ok(None);
            }
        }
        provisional.push(id);
    }
    let mut distinct: Vec<(&str, u32)> = ids.into_iter().collect();
    distinct.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut remap = vec![0u32; distinct.len() + 1];
    for (code, (_, id)) in distinct.iter().enumerate() {
        remap[*id as usize] = code as u32 + 1;
    }
    let codes = provisional.into_iter().map(|id| remap[id as usize]).collect();
    let entries: Vec<&str> = distinct.iter().map(|d| d.0).collect();
    let dict = Dictionary::from_sorted(&entries)
        .ok_or_else(|| StorageError::Internal("dictionary entries are not distinct".into()))?;
    Ok(Some((dict, codes)))
}

/// Input row indices in stored order. Dictionary codes compare like their
/// strings, so the key is the sort columns' codes (32 bits each) and `ts`;
/// the input row breaks ties, which makes the unstable sort stable.
fn sort_permutation(sources: &[Source<'_>], schema: &SegmentSchema, ts: &[i64]) -> Result<Vec<u32>> {
    let sort =
        schema.sort().iter().map(|&i| sources[i].codes(schema.columns()[i].name)).collect::<Result<Vec<&[u32]>>>()?;
    let mut keys: Vec<(u128, i64, u32)> = (0..ts.len())
        .map(|i| {
            let k = sort.iter().fold(0u128, |k, codes| (k << 32) | u128::from(codes[i]));
            (k, ts[i], i as u32)
        })
        .collect();
    keys.par_sort_unstable();
    Ok(keys.into_iter().map(|k| k.2).collect())
}

struct EncodedColumn {
    /// Block offsets relative to `data`.
    meta: ColumnMeta,
    data: Vec<u8>,
    /// Serialized bitmap per dictionary code, for indexed columns.
    bitmaps: Option<Vec<Vec<u8>>>,
}

fn encode_column(
    def: &ColumnDef,
    is_ts: bool,
    src: &Source<'_>,
    perm: &[u32],
    opts: &SegmentWriteOptions,
) -> Result<EncodedColumn> {
    let rows = perm.len();
    let mut compressor = zstd::bulk::Compressor::new(opts.zstd_level)
        .map_err(|e| StorageError::Config(format!("zstd level {}: {e}", opts.zstd_level)))?;
    let mut data = Vec::new();
    let mut blocks = Vec::with_capacity(rows.div_ceil(opts.block_rows));
    let mut stats = ColumnStats { null_count: 0, range: ValueRange::Empty };
    let mut payload = Vec::new();
    let mut ints: Vec<i64> = Vec::with_capacity(opts.block_rows.min(rows));
    for idx in perm.chunks(opts.block_rows) {
        payload.clear();
        ints.clear();
        let block_stats = match src {
            Source::I64(v) => {
                ints.extend(idx.iter().map(|&i| v[i as usize]));
                encode_ints(&ints, is_ts, &mut payload);
                int_stats(&ints)
            }
            Source::U8(v) => {
                ints.extend(idx.iter().map(|&i| i64::from(v[i as usize])));
                encode_ints(&ints, false, &mut payload);
                int_stats(&ints)
            }
            Source::Bool(a) => {
                ints.extend(idx.iter().map(|&i| i64::from(a.value(i as usize))));
                encode_ints(&ints, false, &mut payload);
                int_stats(&ints)
            }
            Source::Dict { codes, .. } => {
                ints.extend(idx.iter().map(|&i| i64::from(codes[i as usize])));
                encode_ints(&ints, false, &mut payload);
                code_stats(&ints)
            }
            Source::Plain(a) => encode_plain(a, idx, &mut payload, &mut ints),
            Source::Bytes(a) => encode_bytes(a, idx, &mut payload, &mut ints),
        };
        let compressed =
            compressor.compress(&payload).map_err(|e| StorageError::Internal(format!("zstd compression: {e}")))?;
        // Keep the zstd frame only if it saves at least a third: every scan
        // of the block pays for decompression (about 1 GB/s), while bit-packed
        // integers that zstd shrinks by 10-20% (costs, timestamps) stay
        // cheaper to read raw.
        let (stored, flags) = if compressed.len() < payload.len() - payload.len() / 3 {
            (Cow::Owned(compressed), FLAG_ZSTD)
        } else {
            (Cow::Borrowed(payload.as_slice()), 0)
        };
        stats = merge_stats(stats, &block_stats);
        blocks.push(BlockMeta {
            offset: data.len() as u64,
            stored_len: stored.len() as u64,
            raw_len: payload.len() as u64,
            flags,
            crc: crc32c::crc32c(&stored),
            rows: idx.len() as u32,
            stats: block_stats,
        });
        data.extend_from_slice(&stored);
    }

    let (encoding, dict, bitmaps) = match src {
        Source::Dict { dict, codes } => {
            let bitmaps = if def.dimension { Some(build_index(dict, codes, perm)?) } else { None };
            (Encoding::Dict, Some(std::sync::Arc::new(dict.clone())), bitmaps)
        }
        Source::Plain(_) | Source::Bytes(_) => (Encoding::PlainStr, None, None),
        _ => (Encoding::Int, None, None),
    };
    let meta = ColumnMeta {
        name: def.name.to_owned(),
        kind: def.kind,
        encoding,
        stats,
        dict,
        dict_at: None,
        blocks,
        index: None,
    };
    Ok(EncodedColumn { meta, data, bitmaps })
}

/// Plain string block: `null_count u32 | validity bitmap (only if
/// null_count > 0) | lengths (integer block) | bytes`.
fn encode_plain(a: &StringArray, idx: &[u32], out: &mut Vec<u8>, lengths: &mut Vec<i64>) -> ColumnStats {
    let nulls = encode_lengths(a, idx, out, lengths);
    let mut range: Option<(&str, &str)> = None;
    for &i in idx {
        if a.is_valid(i as usize) {
            let v = a.value(i as usize);
            out.extend_from_slice(v.as_bytes());
            range = Some(match range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        }
    }
    let range = match range {
        None => ValueRange::Empty,
        Some((lo, hi)) => ValueRange::Str { min: lo.to_owned(), max: hi.to_owned() },
    };
    ColumnStats { null_count: nulls, range }
}

/// A bytes block: laid out like a plain string block; no value range.
fn encode_bytes(a: &BinaryArray, idx: &[u32], out: &mut Vec<u8>, lengths: &mut Vec<i64>) -> ColumnStats {
    let nulls = encode_lengths(a, idx, out, lengths);
    for &i in idx {
        if a.is_valid(i as usize) {
            out.extend_from_slice(a.value(i as usize));
        }
    }
    ColumnStats { null_count: nulls, range: ValueRange::Empty }
}

/// The head of a plain block: null count, validity bitmap if any nulls,
/// value lengths. Returns the null count.
fn encode_lengths<O: arrow_array::OffsetSizeTrait, T: arrow_array::types::ByteArrayType<Offset = O>>(
    a: &arrow_array::GenericByteArray<T>,
    idx: &[u32],
    out: &mut Vec<u8>,
    lengths: &mut Vec<i64>,
) -> u64 {
    let nulls = idx.iter().filter(|&&i| a.is_null(i as usize)).count();
    out.extend_from_slice(&(nulls as u32).to_le_bytes());
    if nulls > 0 {
        pack(idx.iter().map(|&i| u64::from(a.is_valid(i as usize))), 1, out);
    }
    let offsets = a.value_offsets();
    lengths.extend(idx.iter().map(|&i| {
        let i = i as usize;
        if a.is_null(i) { 0 } else { (offsets[i + 1] - offsets[i]).as_usize() as i64 }
    }));
    encode_ints(lengths, false, out);
    nulls as u64
}

fn int_stats(values: &[i64]) -> ColumnStats {
    let range = match values.split_first() {
        None => ValueRange::Empty,
        Some((&f, rest)) => {
            let (min, max) = rest.iter().fold((f, f), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            ValueRange::Int { min, max }
        }
    };
    ColumnStats { null_count: 0, range }
}

fn code_stats(codes: &[i64]) -> ColumnStats {
    let nulls = codes.iter().filter(|&&c| c == 0).count() as u64;
    let (min, max) = codes.iter().filter(|&&c| c != 0).fold((i64::MAX, 0), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    let range = if max == 0 { ValueRange::Empty } else { ValueRange::Codes { min: min as u32, max: max as u32 } };
    ColumnStats { null_count: nulls, range }
}

fn merge_stats(acc: ColumnStats, b: &ColumnStats) -> ColumnStats {
    let range = match (acc.range, &b.range) {
        (r, ValueRange::Empty) => r,
        (ValueRange::Empty, r) => r.clone(),
        (ValueRange::Int { min, max }, ValueRange::Int { min: m2, max: x2 }) => {
            ValueRange::Int { min: min.min(*m2), max: max.max(*x2) }
        }
        (ValueRange::Codes { min, max }, ValueRange::Codes { min: m2, max: x2 }) => {
            ValueRange::Codes { min: min.min(*m2), max: max.max(*x2) }
        }
        (ValueRange::Str { min, max }, ValueRange::Str { min: m2, max: x2 }) => ValueRange::Str {
            min: if m2 < &min { m2.clone() } else { min },
            max: if x2 > &max { x2.clone() } else { max },
        },
        // Invariant: one column's blocks all produce the same variant.
        (r, _) => r,
    };
    ColumnStats { null_count: acc.null_count + b.null_count, range }
}

/// One roaring bitmap of stored row ids per code (0 = NULL, then the
/// dictionary), run-optimized and serialized in the portable roaring format.
fn build_index(dict: &Dictionary, codes: &[u32], perm: &[u32]) -> Result<Vec<Vec<u8>>> {
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); dict.len() + 1];
    for (row, &i) in perm.iter().enumerate() {
        rows[codes[i as usize] as usize].push(row as u32);
    }
    rows.into_iter()
        .map(|ids| {
            // Rows were pushed in increasing order, so the iterator is sorted.
            let mut map = RoaringBitmap::from_sorted_iter(ids)
                .map_err(|_| StorageError::Internal("index rows out of order".into()))?;
            map.optimize();
            let mut buf = Vec::with_capacity(map.serialized_size());
            map.serialize_into(&mut buf).map_err(|e| StorageError::Internal(format!("serializing index: {e}")))?;
            Ok(buf)
        })
        .collect()
}
