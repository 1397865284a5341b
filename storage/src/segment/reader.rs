//! Reads a segment file through a read-only memory map.
//!
//! `open` checks magic, version and the footer checksum, parses the footer
//! and validates its structure against the file (every block and index
//! range inside its section, the schema its caller expects: events unless
//! it says otherwise), so later reads can
//! index the map without further bounds surprises. Block bytes and index
//! bitmaps are checked against their own CRC32C each time they are read:
//! a flipped byte becomes a `SegmentCorrupt` error naming the file, never
//! wrong data. With a [`BlockCache`], the query reads (`read_column*`,
//! `select_rows`) keep the checked, decompressed bytes of the blocks they
//! read there; `verify` and whole-segment reads always read the file.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt8Array};
use memmap2::Mmap;
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::error::{IoContext, Result, StorageError};
use crate::event::{ColumnKind, EventBatch};
use crate::idindex::IdIndex;
use crate::ids::SegmentId;
use crate::tier::ObjectTier;

use super::cache::{BlockCache, BlockKey, next_reader_id};
use decode::{Pick, decode_block};
use dicts::{DictPlace, Known};
use ids::id_page_key;

mod decode;
mod dicts;
mod ids;
use super::format::{
    BYTES_SINCE, BlockMeta, ColumnMeta, Encoding, FLAG_ZSTD, Footer, HEADER_LEN, MAGIC, Reason, SUPPORTED_VERSIONS,
    TRAILER_LEN, decode_ints_at, select_ints,
};
use super::{ColumnData, ColumnStats, SegmentColumn, SegmentSchema, Selection};

/// An open segment file. Cheap to share (`Send + Sync`); every read method
/// takes `&self`.
#[derive(Debug)]
pub struct SegmentReader {
    id: SegmentId,
    path: PathBuf,
    source: Arc<Source>,
    pub(super) footer: Footer,
    /// The id index, opened at its first lookup (a failed open is tried again).
    ids: parking_lot::Mutex<Option<Arc<IdIndex>>>,
    schema: Arc<SegmentSchema>,
    /// Where each column's dictionary lies in the file (`None`: not
    /// dictionary-encoded).
    pub(super) dicts: Vec<Option<DictPlace>>,
    /// Per column, the dictionary it last handed out (see [`Known`]).
    known: parking_lot::Mutex<Vec<Known>>,
    /// Bytes its footer holds in memory, the dictionaries let go.
    metadata_bytes: u64,
    /// This reader's key in the block cache (never reused in the process).
    uid: u64,
    cache: Option<Arc<BlockCache>>,
}

/// Where a segment's bytes are read from.
#[derive(Debug)]
enum Source {
    /// A local file, memory-mapped.
    Mapped(Mmap),
    /// A file in the object store, read by ranges (the footer once, at open).
    Remote { tier: Arc<ObjectTier>, len: u64 },
}

/// Why bytes of a segment could not be read.
enum ReadError {
    /// Outside the file, or not what they should be (a checksum): the file is corrupt.
    Range(Reason),
    /// The object store failed.
    Store(StorageError),
}

impl From<Reason> for ReadError {
    fn from(r: Reason) -> ReadError {
        ReadError::Range(r)
    }
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Mapped(m) => m.len() as u64,
            Source::Remote { len, .. } => *len,
        }
    }

    /// Bytes `offset..offset + len`: borrowed from the map, or fetched.
    fn read(&self, id: SegmentId, offset: u64, len: u64) -> Result<Cow<'_, [u8]>, ReadError> {
        let outside = || ReadError::Range(format!("range {offset}+{len} outside the file"));
        let end = offset.checked_add(len).filter(|&end| end <= self.len()).ok_or_else(outside)?;
        match self {
            Source::Mapped(m) => {
                let range = usize::try_from(offset).ok().zip(usize::try_from(end).ok()).ok_or_else(outside)?;
                m.get(range.0..range.1).map(Cow::Borrowed).ok_or_else(outside)
            }
            Source::Remote { tier, len: file_len } => {
                let bytes = tier.read(id, offset..end, *file_len).map_err(ReadError::Store)?;
                if bytes.len() as u64 != len {
                    return Err(ReadError::Range(format!("read {} bytes of {len} at {offset}", bytes.len())));
                }
                Ok(Cow::Owned(bytes))
            }
        }
    }
}

/// A block's encoded bytes: in the mapped file, decompressed for this
/// read, or shared with the block cache.
enum BlockBytes<'a> {
    Mapped(&'a [u8]),
    Owned(Vec<u8>),
    Cached(Arc<[u8]>),
}

impl Deref for BlockBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BlockBytes::Mapped(b) => b,
            BlockBytes::Owned(b) => b,
            BlockBytes::Cached(b) => b,
        }
    }
}

/// Whether a read goes through the block cache (query reads) or always
/// reads the file (verification, whole-segment reads).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Cache,
    File,
}

impl Drop for SegmentReader {
    fn drop(&mut self) {
        // The file is gone or replaced: its blocks will not be read again.
        if let Some(cache) = &self.cache {
            for b in self.footer.columns.iter().flat_map(|c| &c.blocks) {
                cache.remove(&BlockKey { reader: self.uid, offset: b.offset });
            }
            for place in self.dicts.iter().flatten() {
                cache.remove(&BlockKey { reader: self.uid, offset: place.at.start });
            }
            // A cold segment's bitmaps and id pages are cached too.
            if self.is_remote() {
                let bitmaps = self.footer.columns.iter().flat_map(|c| c.index.iter().flatten());
                for e in bitmaps {
                    cache.remove(&BlockKey { reader: self.uid, offset: e.offset });
                }
                if let Some(ids) = &self.footer.ids {
                    for n in 0..ids.page_crcs.len() as u64 {
                        cache.remove(&id_page_key(self.uid, ids.offset, u64::from(ids.page_bytes), n));
                    }
                }
            }
        }
    }
}

fn corrupt(id: SegmentId, path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::SegmentCorrupt { id, path: path.to_owned(), reason: reason.into() }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: segment files are immutable. `write_segment` writes and fsyncs
    // a file once, before anyone opens it; nothing in adstore opens a
    // segment for writing or truncates it afterwards, and removal unlinks the
    // whole file, which leaves existing mappings intact. So the bytes behind
    // this map do not change while the `Mmap` lives.
    unsafe { Mmap::map(file) }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl SegmentReader {
    /// Maps the segment at `path` and validates its header, trailer and
    /// footer. Errors: `Io` if the file cannot be read,
    /// `UnsupportedFormat` for a version this build cannot read,
    /// `SegmentCorrupt` for anything else wrong, a file of another schema
    /// included.
    pub fn open(id: SegmentId, path: &Path) -> Result<SegmentReader> {
        SegmentReader::open_as(id, path, SegmentSchema::events().clone())
    }

    /// Like [`SegmentReader::open`], for a segment of `schema`.
    pub fn open_as(id: SegmentId, path: &Path, schema: Arc<SegmentSchema>) -> Result<SegmentReader> {
        let file = File::open(path).at(path)?;
        let mmap = map_file(&file).at(path)?;
        SegmentReader::open_source(id, path.to_owned(), Arc::new(Source::Mapped(mmap)), schema)
    }

    /// Segment `id` of `schema` in the object store, a file of `len`
    /// bytes: its header, trailer and footer are read (through the tier's
    /// cache) and checked as for a local file; blocks are read when a query
    /// needs them.
    pub fn open_remote(
        id: SegmentId,
        tier: Arc<ObjectTier>,
        schema: Arc<SegmentSchema>,
        len: u64,
    ) -> Result<SegmentReader> {
        let path = PathBuf::from(format!("{}/{}", tier.url().trim_end_matches('/'), tier.key(id)));
        SegmentReader::open_source(id, path, Arc::new(Source::Remote { tier, len }), schema)
    }

    fn open_source(
        id: SegmentId,
        path: PathBuf,
        source: Arc<Source>,
        schema: Arc<SegmentSchema>,
    ) -> Result<SegmentReader> {
        let path = path.as_path();
        let n = source.len();
        if n < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(corrupt(id, path, format!("file is {n} bytes, shorter than header and trailer")));
        }
        let read = |offset: u64, len: u64| -> Result<Cow<'_, [u8]>> {
            source.read(id, offset, len).map_err(|e| match e {
                ReadError::Store(e) => e,
                ReadError::Range(r) => corrupt(id, path, r),
            })
        };
        let trailer = read(n - TRAILER_LEN as u64, TRAILER_LEN as u64)?;
        if trailer[16..24] != MAGIC {
            return Err(corrupt(id, path, "bad magic at end of file (truncated or not a segment)"));
        }
        let version = le_u32(&trailer[12..16]);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(StorageError::UnsupportedFormat { path: path.to_owned(), version });
        }
        // A cold segment's header was checked on local disk before the
        // upload, whose size was verified: reading it again would cost its
        // first chunk (blocks no query may need).
        if let Source::Mapped(_) = &*source {
            let header = read(0, 16)?;
            if header[..8] != MAGIC {
                return Err(corrupt(id, path, "bad magic at start of file"));
            }
            if le_u32(&header[8..12]) != version {
                return Err(corrupt(id, path, "header and trailer disagree on the format version"));
            }
            if le_u32(&header[12..16]) != 0 {
                return Err(corrupt(id, path, "reserved header bytes are not zero"));
            }
        }
        let footer_len = le_u64(&trailer);
        let footer_crc = le_u32(&trailer[8..12]);
        let footer_end = n - TRAILER_LEN as u64;
        let footer_start = match footer_len {
            l if l <= footer_end - HEADER_LEN as u64 => footer_end - l,
            _ => return Err(corrupt(id, path, format!("footer length {footer_len} exceeds the file"))),
        };
        let footer_bytes = read(footer_start, footer_len)?;
        if crc32c::crc32c(&footer_bytes) != footer_crc {
            return Err(corrupt(id, path, "footer checksum mismatch"));
        }
        let mut footer =
            Footer::decode(&footer_bytes, version).map_err(|r| corrupt(id, path, format!("footer: {r}")))?;
        validate(&footer, footer_start, version, &schema).map_err(|r| corrupt(id, path, format!("footer: {r}")))?;
        // Checked: the dictionaries go, and come back through the block cache.
        let mut dicts = Vec::with_capacity(footer.columns.len());
        for c in &mut footer.columns {
            c.dict = None;
            let place = match c.dict_at.clone() {
                None => None,
                Some(at) => {
                    let bytes = footer_bytes.get(at.clone()).ok_or_else(|| {
                        corrupt(id, path, format!("footer: dictionary of column {} outside the footer", c.name))
                    })?;
                    Some(DictPlace::new(footer_start + at.start as u64..footer_start + at.end as u64, bytes))
                }
            };
            dicts.push(place);
        }
        drop((trailer, footer_bytes));
        let metadata_bytes = (footer.memory_bytes() + dicts.len() * size_of::<Option<DictPlace>>()) as u64;
        Ok(SegmentReader {
            id,
            metadata_bytes,
            path: path.to_owned(),
            source,
            known: parking_lot::Mutex::new(dicts.iter().map(|_| Known::default()).collect()),
            dicts,
            footer,
            ids: parking_lot::Mutex::new(None),
            schema,
            uid: next_reader_id(),
            cache: None,
        })
    }

    /// This reader, keeping the blocks its query reads check and
    /// decompress in `cache`.
    pub fn with_cache(mut self, cache: Arc<BlockCache>) -> SegmentReader {
        self.cache = Some(cache);
        self
    }

    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// The schema the file was checked against.
    pub fn schema(&self) -> &Arc<SegmentSchema> {
        &self.schema
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size_bytes(&self) -> u64 {
        self.source.len()
    }

    /// Bytes of block metadata and zone maps it keeps in memory while open
    /// (its dictionaries are in the block cache).
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_bytes
    }

    /// Whether its bytes are in the object store.
    pub fn is_remote(&self) -> bool {
        matches!(*self.source, Source::Remote { .. })
    }

    /// The `user_meta` the writer was given.
    pub fn user_meta(&self) -> &[u8] {
        &self.footer.user_meta
    }

    pub fn num_rows(&self) -> usize {
        self.footer.rows as usize
    }

    /// `(min ts, max ts)`; `(i64::MAX, i64::MIN)` for an empty segment.
    pub fn time_range(&self) -> (i64, i64) {
        (self.footer.min_ts, self.footer.max_ts)
    }

    /// Blocks per column (every column has the same block boundaries).
    pub fn num_blocks(&self) -> usize {
        self.num_rows().div_ceil(self.footer.block_rows as usize)
    }

    /// Stored row range of `block`; empty past the last block.
    pub fn block_rows(&self, block: usize) -> Range<usize> {
        let br = self.footer.block_rows as usize;
        let start = block.saturating_mul(br).min(self.num_rows());
        start..start.saturating_add(br).min(self.num_rows())
    }

    /// Null count and value range of the whole column.
    pub fn column_stats(&self, col: impl SegmentColumn) -> &ColumnStats {
        &self.col(col).stats
    }

    /// Null count and value range of one block; `None` past the last block.
    pub fn block_stats(&self, col: impl SegmentColumn, block: usize) -> Option<&ColumnStats> {
        self.col(col).blocks.get(block).map(|b| &b.stats)
    }

    /// Whether [`SegmentReader::index_rows`] works for `col` (dictionary-encoded dimensions).
    pub fn has_index(&self, col: impl SegmentColumn) -> bool {
        self.col(col).index.is_some()
    }

    /// Stored row ids whose `col` holds dictionary `code` (0: NULL). Read
    /// from the map on each call and checked against its CRC32C. A code
    /// past the dictionary gives an empty bitmap; a column without an index
    /// is a caller bug (`Internal`).
    pub fn index_rows(&self, col: impl SegmentColumn, code: u32) -> Result<RoaringBitmap> {
        let Some(entries) = &self.col(col).index else {
            return Err(StorageError::Internal(format!(
                "column {} of segment {} has no index",
                self.name(col),
                self.id
            )));
        };
        let Some(e) = entries.get(code as usize) else { return Ok(RoaringBitmap::new()) };
        let what = || format!("index of column {} code {code}", self.name(col));
        let bytes = self.index_bytes(e.offset, e.len, e.crc).map_err(|r| self.failed(what(), r))?;
        let map =
            RoaringBitmap::deserialize_from(&bytes[..]).map_err(|err| self.corrupt(format!("{}: {err}", what())))?;
        if map.max().is_some_and(|m| u64::from(m) >= self.footer.rows) {
            return Err(self.corrupt(format!("{}: row id past the end of the segment", what())));
        }
        Ok(map)
    }

    /// Decodes one block of one column, after checking its CRC32C. Errors:
    /// `SegmentCorrupt` naming the file, column and block; `Internal` for a
    /// block past the last.
    pub fn read_column(&self, col: impl SegmentColumn, block: usize) -> Result<ColumnData> {
        self.read_picked(col, block, Pick::Run(&(0..self.block_rows(block).len())), Via::Cache)
    }

    /// The values of `col` at offsets `idx` within `block`, in `idx` order:
    /// a gather that decodes bit-packed values in place instead of the
    /// whole block. The whole block's checksum is still verified.
    pub fn read_column_at(&self, col: impl SegmentColumn, block: usize, idx: &[u32]) -> Result<ColumnData> {
        self.read_picked(col, block, Pick::At(idx), Via::Cache)
    }

    /// The rows of `within` (offsets in `block`) whose stored integer of
    /// `col` satisfies `keep`: the value of an integer column, the code of
    /// a dictionary column (0 = NULL). Tests packed values in place,
    /// without decoding the column. `Internal` for a plain string column.
    pub fn select_rows(
        &self,
        col: impl SegmentColumn,
        block: usize,
        within: Selection,
        keep: impl Fn(i64) -> bool,
    ) -> Result<Selection> {
        let (meta, b) = self.block_meta(col, block)?;
        if meta.encoding == Encoding::PlainStr {
            return Err(StorageError::Internal(format!("select_rows on plain string column {}", self.name(col))));
        }
        let what = || format!("column {} block {block}", self.name(col));
        let raw = self.block_bytes(b, Via::Cache).map_err(|r| self.failed(what(), r))?;
        let n = b.rows as usize;
        let check = |used: usize| {
            if used == raw.len() {
                Ok(())
            } else {
                Err(self.corrupt(format!("{}: {} trailing bytes", what(), raw.len().abs_diff(used))))
            }
        };
        let mut out = Vec::new();
        match within {
            Selection::All => check(
                select_ints(&raw, n, 0..n, &mut out, keep).map_err(|r| self.corrupt(format!("{}: {r}", what())))?,
            )?,
            Selection::Range(r) => check(
                select_ints(&raw, n, r.start as usize..r.end as usize, &mut out, keep)
                    .map_err(|r| self.corrupt(format!("{}: {r}", what())))?,
            )?,
            Selection::Rows(idx) => {
                let mut values = Vec::with_capacity(idx.len());
                check(
                    decode_ints_at(&raw, n, &idx, &mut values, |x| x)
                        .map_err(|r| self.corrupt(format!("{}: {r}", what())))?,
                )?;
                out = idx.into_iter().zip(values).filter(|(_, v)| keep(*v)).map(|(i, _)| i).collect();
            }
        }
        Ok(Selection::Rows(out))
    }

    /// Like [`SegmentReader::read_column`], but decodes only `rows`
    /// (offsets within the block): bit-packed values are read in place, so a
    /// scan that keeps a run of rows (sorted dimensions) decodes just that
    /// run. The whole block's checksum is still verified. `rows` past the
    /// block is `Internal`.
    pub fn read_column_rows(&self, col: impl SegmentColumn, block: usize, rows: Range<usize>) -> Result<ColumnData> {
        self.read_picked(col, block, Pick::Run(&rows), Via::Cache)
    }

    fn read_picked(&self, col: impl SegmentColumn, block: usize, pick: Pick<'_>, via: Via) -> Result<ColumnData> {
        let (meta, b) = self.block_meta(col, block)?;
        if let Pick::Run(rows) = pick
            && (rows.start > rows.end || rows.end > b.rows as usize)
        {
            return Err(StorageError::Internal(format!(
                "segment {}: rows {rows:?} of column {} block {block} out of range ({} rows)",
                self.id,
                self.name(col),
                b.rows
            )));
        }
        let what = || format!("column {} block {block}", self.name(col));
        let raw = self.block_bytes(b, via).map_err(|r| self.failed(what(), r))?;
        let dict = match meta.encoding {
            Encoding::Dict => {
                Some(self.dictionary(col)?.ok_or_else(|| self.corrupt(format!("{}: no dictionary", what())))?)
            }
            _ => None,
        };
        decode_block(meta, dict, b, &raw, pick).map_err(|r| self.corrupt(format!("{}: {r}", what())))
    }

    /// The whole events segment as one batch, rows in stored (sorted) order.
    pub fn read_batch(&self) -> Result<EventBatch> {
        if self.num_rows() == 0 {
            return Ok(EventBatch::empty());
        }
        let batch = self.read_record_batch()?;
        EventBatch::try_new(batch).map_err(|e| self.corrupt(format!("decoded rows are not valid events: {e}")))
    }

    /// The whole segment as one batch of its schema, rows in stored order.
    pub fn read_record_batch(&self) -> Result<RecordBatch> {
        self.read_blocks(0..self.num_blocks())
    }

    /// The rows of blocks `blocks` as one batch of the segment's schema
    /// (a range past the last block reads up to it).
    pub fn read_blocks(&self, blocks: Range<usize>) -> Result<RecordBatch> {
        let blocks = blocks.start.min(self.num_blocks())..blocks.end.min(self.num_blocks());
        let n = self.schema.columns().len();
        let columns = (0..n).into_par_iter().map(|i| self.read_array(i, blocks.clone())).collect::<Result<Vec<_>>>()?;
        let rows = blocks.clone().map(|b| self.block_rows(b).len()).sum();
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema.arrow(), columns, &options)
            .map_err(|e| self.corrupt(format!("decoded columns do not form a batch: {e}")))
    }

    /// Checks every checksum in the file and decodes every block and bitmap.
    pub fn verify(&self) -> Result<()> {
        let n = self.schema.columns().len();
        for (col, place) in self.dicts.iter().enumerate() {
            if let Some(place) = place {
                self.file_dictionary(col, place)?;
            }
        }
        for col in 0..n {
            for block in 0..self.col(col).blocks.len() {
                self.read_picked(col, block, Pick::Run(&(0..self.block_rows(block).len())), Via::File)?;
            }
        }
        let f = &self.footer;
        let section = self.slice(f.index_offset, f.index_len).map_err(|r| self.failed("index section", r))?;
        if crc32c::crc32c(&section) != f.index_crc {
            return Err(self.corrupt("index section checksum mismatch"));
        }
        for col in 0..n {
            if let Some(entries) = &self.col(col).index {
                for code in 0..entries.len() {
                    self.index_rows(col, code as u32)?;
                }
            }
        }
        if let Some(ids) = &self.footer.ids {
            let section = self.slice(ids.offset, ids.len).map_err(|r| self.failed("id section", r))?;
            for (n, page) in section.chunks(ids.page_bytes as usize).enumerate() {
                if ids.page_crcs.get(n) != Some(&crc32c::crc32c(page)) {
                    return Err(self.corrupt(format!("id section page {n}: checksum mismatch")));
                }
            }
        }
        Ok(())
    }

    /// A column's metadata and that of one of its blocks; `Internal` past the last block.
    fn block_meta(&self, col: impl SegmentColumn, block: usize) -> Result<(&ColumnMeta, &BlockMeta)> {
        let meta = self.col(col);
        let b = meta.blocks.get(block).ok_or_else(|| {
            StorageError::Internal(format!(
                "segment {}: block {block} of column {} out of range ({} blocks)",
                self.id,
                self.name(col),
                meta.blocks.len()
            ))
        })?;
        Ok((meta, b))
    }

    fn col(&self, col: impl SegmentColumn) -> &ColumnMeta {
        // Invariant: `validate` checked that the footer has every column of
        // the schema, in order; callers pass positions in that schema.
        &self.footer.columns[col.position()]
    }

    fn name(&self, col: impl SegmentColumn) -> &str {
        &self.col(col).name
    }

    fn corrupt(&self, reason: impl Into<String>) -> StorageError {
        corrupt(self.id, &self.path, reason)
    }

    /// A failed read of `what`: the object store's failure as it is, a
    /// range or checksum problem as corruption of this file.
    fn failed(&self, what: impl fmt::Display, e: ReadError) -> StorageError {
        match e {
            ReadError::Store(e) => e,
            ReadError::Range(r) => self.corrupt(format!("{what}: {r}")),
        }
    }

    fn slice(&self, offset: u64, len: u64) -> Result<Cow<'_, [u8]>, ReadError> {
        self.source.read(self.id, offset, len)
    }

    /// An index bitmap's bytes, checksum verified: from the map, or for a
    /// cold segment from the block cache (kept there once read).
    fn index_bytes(&self, offset: u64, len: u64, crc: u32) -> Result<BlockBytes<'_>, ReadError> {
        let cache = self.cache.as_ref().filter(|_| self.is_remote());
        let key = BlockKey { reader: self.uid, offset };
        if let Some(hit) = cache.and_then(|c| c.get(&key)) {
            return Ok(BlockBytes::Cached(hit));
        }
        let bytes = self.slice(offset, len)?;
        if crc32c::crc32c(&bytes) != crc {
            return Err(ReadError::Range("checksum mismatch".into()));
        }
        Ok(match (bytes, cache) {
            (Cow::Borrowed(b), _) => BlockBytes::Mapped(b),
            (Cow::Owned(b), None) => BlockBytes::Owned(b),
            (Cow::Owned(b), Some(cache)) => {
                let shared: Arc<[u8]> = b.into();
                cache.insert(key, shared.clone());
                BlockBytes::Cached(shared)
            }
        })
    }

    /// For a cold segment: its object store and file length.
    pub(crate) fn remote(&self) -> Option<(&Arc<ObjectTier>, u64)> {
        match &*self.source {
            Source::Remote { tier, len } => Some((tier, *len)),
            Source::Mapped(_) => None,
        }
    }

    /// The bytes of column `col`'s blocks `blocks` in the file (for a
    /// prefetch).
    pub(crate) fn block_ranges(&self, col: impl SegmentColumn, blocks: impl Iterator<Item = usize>) -> Vec<Range<u64>> {
        let meta = self.col(col);
        blocks.filter_map(|b| meta.blocks.get(b)).map(|b| b.offset..b.offset + b.stored_len).collect()
    }

    /// The bytes of column `col`'s bitmaps in the index section (every
    /// code's), if it has an index (for a prefetch).
    pub(crate) fn index_range(&self, col: impl SegmentColumn) -> Option<Range<u64>> {
        let entries = self.col(col).index.as_ref()?;
        let start = entries.iter().map(|e| e.offset).min()?;
        let end = entries.iter().map(|e| e.offset + e.len).max()?;
        Some(start..end)
    }

    /// A block's encoded bytes: checksum verified, decompressed if needed;
    /// from the block cache when `via` allows and it holds them.
    fn block_bytes(&self, b: &BlockMeta, via: Via) -> Result<BlockBytes<'_>, ReadError> {
        let cache = self.cache.as_ref().filter(|_| via == Via::Cache);
        let Some(cache) = cache else { return self.file_block_bytes(b) };
        let key = BlockKey { reader: self.uid, offset: b.offset };
        if let Some(hit) = cache.get(&key) {
            return Ok(BlockBytes::Cached(hit));
        }
        let block: Arc<[u8]> = match self.file_block_bytes(b)? {
            BlockBytes::Owned(v) => v.into(),
            other => Arc::from(&*other),
        };
        cache.insert(key, block.clone());
        Ok(BlockBytes::Cached(block))
    }

    /// A block's encoded bytes read from the file: checksum verified,
    /// decompressed if needed.
    fn file_block_bytes(&self, b: &BlockMeta) -> Result<BlockBytes<'_>, ReadError> {
        let stored = self.slice(b.offset, b.stored_len)?;
        if crc32c::crc32c(&stored) != b.crc {
            return Err(ReadError::Range("checksum mismatch".into()));
        }
        if b.flags & FLAG_ZSTD == 0 {
            return Ok(match stored {
                Cow::Borrowed(bytes) => BlockBytes::Mapped(bytes),
                Cow::Owned(bytes) => BlockBytes::Owned(bytes),
            });
        }
        let stored: &[u8] = &stored;
        let cap = usize::try_from(b.raw_len).map_err(|_| "block too large".to_string())?;
        // One decompression context per thread: creating one per block costs
        // more than decompressing a small block.
        thread_local! {
            static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        let raw = DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress(stored, cap).map_err(|e| format!("zstd: {e}")),
                None => Err("zstd: no decompression context".to_string()),
            }
        })?;
        if raw.len() as u64 != b.raw_len {
            return Err(format!("decompressed to {} bytes, expected {}", raw.len(), b.raw_len).into());
        }
        Ok(BlockBytes::Owned(raw))
    }

    /// A column's rows in blocks `blocks` as one Arrow array.
    fn read_array(&self, col: impl SegmentColumn, blocks: Range<usize>) -> Result<ArrayRef> {
        let meta = self.col(col);
        let parts = blocks
            .clone()
            .map(|b| self.read_picked(col, b, Pick::Run(&(0..self.block_rows(b).len())), Via::File))
            .collect::<Result<Vec<_>>>()?;
        let rows = blocks.map(|b| self.block_rows(b).len()).sum();
        let mismatch = || StorageError::Internal(format!("column {} decoded to mixed block types", self.name(col)));
        let array: ArrayRef = match meta.kind {
            ColumnKind::I64 => {
                let mut all = Vec::with_capacity(rows);
                for p in parts {
                    let ColumnData::I64(v) = p else { return Err(mismatch()) };
                    all.extend_from_slice(&v);
                }
                Arc::new(Int64Array::from(all))
            }
            ColumnKind::U8 => {
                let mut all = Vec::with_capacity(rows);
                for p in parts {
                    let ColumnData::U8(v) = p else { return Err(mismatch()) };
                    all.extend_from_slice(&v);
                }
                Arc::new(UInt8Array::from(all))
            }
            ColumnKind::Bool => {
                let mut all = Vec::with_capacity(rows);
                for p in parts {
                    let ColumnData::Bool(v) = p else { return Err(mismatch()) };
                    all.extend_from_slice(&v);
                }
                Arc::new(BooleanArray::from(all))
            }
            ColumnKind::Str if meta.encoding == Encoding::Dict => {
                let dict = self.dictionary(col)?.ok_or_else(mismatch)?;
                let mut b = StringBuilder::with_capacity(rows, rows * 8);
                for p in parts {
                    let ColumnData::Dict { codes, .. } = p else { return Err(mismatch()) };
                    for code in codes {
                        if code == 0 {
                            b.append_null();
                        } else {
                            // `decode_block` checked every code against the dictionary.
                            b.append_option(dict.value(code));
                        }
                    }
                }
                Arc::new(b.finish())
            }
            // Plain strings and bytes: every block is an Arrow array already.
            ColumnKind::Str | ColumnKind::Bytes => {
                let arrays = parts
                    .into_iter()
                    .map(|p| match p {
                        ColumnData::Str(a) => Ok(Arc::new(a) as ArrayRef),
                        ColumnData::Bytes(a) => Ok(Arc::new(a) as ArrayRef),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                match refs.is_empty() {
                    true if meta.kind == ColumnKind::Str => Arc::new(StringArray::from(Vec::<&str>::new())),
                    true => Arc::new(BinaryArray::from(Vec::<&[u8]>::new())),
                    false => arrow_select::concat::concat(&refs)?,
                }
            }
        };
        Ok(array)
    }
}

/// Structural checks of a decoded footer against the file and the schema.
fn validate(f: &Footer, footer_start: u64, version: u32, schema: &SegmentSchema) -> Result<(), Reason> {
    if f.rows > u64::from(u32::MAX) {
        return Err(format!("row count {} exceeds the limit", f.rows));
    }
    if f.block_rows == 0 {
        return Err("block_rows is 0".into());
    }
    let defs = schema.columns();
    if f.columns.len() != defs.len() {
        return Err(format!("{} columns, expected {}", f.columns.len(), defs.len()));
    }
    // The index section, then the id section (version 3, optional), end
    // where the footer starts.
    let index_end = f.index_offset.saturating_add(f.index_len);
    let sections_end = match &f.ids {
        None => Some(index_end),
        Some(ids) => Some(ids.offset).filter(|&o| o == index_end).and_then(|o| o.checked_add(ids.len)),
    };
    if f.index_offset < HEADER_LEN as u64 || sections_end != Some(footer_start) {
        return Err("index and id sections do not end where the footer starts".into());
    }
    if let Some(ids) = &f.ids {
        if ids.granule_rows == 0 || ids.page_bytes == 0 {
            return Err("id section with granules or pages of 0 rows or bytes".into());
        }
        if ids.page_crcs.len() as u64 != ids.len.div_ceil(u64::from(ids.page_bytes)) {
            return Err(format!("id section of {} bytes with {} page checksums", ids.len, ids.page_crcs.len()));
        }
        let mut names = std::collections::HashSet::new();
        for (name, r) in &ids.files {
            if r.start > r.end || r.end > ids.len || !names.insert(name) {
                return Err(format!("id file {name} outside the id section, or named twice"));
            }
        }
        let in_data =
            f.columns.iter().flat_map(|c| &c.blocks).any(|b| b.offset.saturating_add(b.stored_len) > ids.offset);
        if in_data {
            return Err("a block reaches into the id section".into());
        }
    }
    let rows = f.rows as usize;
    let block_rows = f.block_rows as usize;
    let nblocks = rows.div_ceil(block_rows);
    for (spec, c) in defs.iter().zip(&f.columns) {
        if c.name != spec.name {
            return Err(format!("column {:?} where the schema has {:?}", c.name, spec.name));
        }
        if c.kind != spec.kind {
            return Err(format!("column {} is {:?} where the schema has {:?}", c.name, c.kind, spec.kind));
        }
        if c.kind == ColumnKind::Bytes && version < BYTES_SINCE {
            return Err(format!("column {}: bytes in a version {version} file", c.name));
        }
        let encoding_ok = match spec.kind {
            ColumnKind::Str => matches!(c.encoding, Encoding::Dict | Encoding::PlainStr),
            ColumnKind::Bytes => c.encoding == Encoding::PlainStr,
            _ => c.encoding == Encoding::Int,
        };
        if !encoding_ok {
            return Err(format!("column {}: encoding {:?} does not fit its kind", c.name, c.encoding));
        }
        if c.blocks.len() != nblocks {
            return Err(format!("column {}: {} blocks, expected {nblocks}", c.name, c.blocks.len()));
        }
        for (i, b) in c.blocks.iter().enumerate() {
            let want = (rows - i * block_rows).min(block_rows);
            if b.rows as usize != want {
                return Err(format!("column {} block {i}: {} rows, expected {want}", c.name, b.rows));
            }
            let end = b.offset.checked_add(b.stored_len);
            if b.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > f.index_offset) {
                return Err(format!("column {} block {i}: byte range outside the data section", c.name));
            }
            if b.flags & !FLAG_ZSTD != 0 {
                return Err(format!("column {} block {i}: unknown flags {:#x}", c.name, b.flags));
            }
        }
        if let Some(entries) = &c.index {
            let dict_len = c.dict.as_ref().map(|d| d.len());
            if dict_len.map(|n| n + 1) != Some(entries.len()) {
                return Err(format!("column {}: index does not match its dictionary", c.name));
            }
            for e in entries {
                let end = e.offset.checked_add(e.len);
                if e.offset < f.index_offset || end.is_none_or(|x| x > index_end) {
                    return Err(format!("column {}: index entry outside the index section", c.name));
                }
            }
        }
    }
    Ok(())
}
