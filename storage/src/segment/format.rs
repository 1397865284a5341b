//! Byte-level building blocks of the segment format (docs/segment-format.md):
//! little-endian encoder/decoder for the footer, and the footer itself; the
//! integer block codec (bit packing, frame of reference and delta + frame of
//! reference) is in `format/ints.rs`.
//!
//! Everything here is pure: bytes in, values out. Decoders never panic on
//! bad input; they return a short reason that the reader wraps into
//! `StorageError::SegmentCorrupt` together with the segment's path.

use std::ops::Range;
use std::sync::Arc;

use crate::event::ColumnKind;

use super::{ColumnStats, Dictionary, ValueRange};

mod ints;

pub(crate) use ints::{decode_ints_at, decode_ints_map, encode_ints, pack, packed_len, select_ints};

/// First and last 8 bytes of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"ADSTSEG\0";
/// The version this code writes. Readers accept every version listed in
/// [`SUPPORTED_VERSIONS`].
/// Version 1: events only. Version 2: any schema, and the `Bytes` kind.
/// Version 3: an optional id section (the id index, `storage/src/idindex.rs`).
pub(crate) const FORMAT_VERSION: u32 = 3;
pub(crate) const SUPPORTED_VERSIONS: [u32; 3] = [1, 2, 3];
/// The first version whose files may hold `Bytes` columns.
pub(crate) const BYTES_SINCE: u32 = 2;
/// The first version whose footer says whether there is an id section.
pub(crate) const IDS_SINCE: u32 = 3;
/// magic (8) + version u32 + reserved u32 (zero).
pub(crate) const HEADER_LEN: usize = 16;
/// footer_len u64 + footer_crc u32 + version u32 + magic (8).
pub(crate) const TRAILER_LEN: usize = 24;

/// Why a decoder rejected its input; the reader adds file and column.
pub(crate) type Reason = String;

// ---------------------------------------------------------------- codes

pub(crate) fn kind_code(kind: ColumnKind) -> u8 {
    match kind {
        ColumnKind::Str => 0,
        ColumnKind::I64 => 1,
        ColumnKind::U8 => 2,
        ColumnKind::Bool => 3,
        ColumnKind::Bytes => 4,
    }
}

pub(crate) fn kind_from_code(code: u8) -> Option<ColumnKind> {
    match code {
        0 => Some(ColumnKind::Str),
        1 => Some(ColumnKind::I64),
        2 => Some(ColumnKind::U8),
        3 => Some(ColumnKind::Bool),
        4 => Some(ColumnKind::Bytes),
        _ => None,
    }
}

/// How a column's blocks are encoded (footer byte `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// I64 / U8 / Bool values as integer blocks.
    Int = 0,
    /// Strings as dictionary codes (0 = NULL) in integer blocks.
    Dict = 1,
    /// Strings (and Bytes) as validity bitmap + lengths (integer block) + bytes.
    PlainStr = 2,
}

impl Encoding {
    pub(crate) fn from_code(code: u8) -> Option<Encoding> {
        match code {
            0 => Some(Encoding::Int),
            1 => Some(Encoding::Dict),
            2 => Some(Encoding::PlainStr),
            _ => None,
        }
    }
}

/// Block flag bit: the stored bytes are a zstd frame.
pub(crate) const FLAG_ZSTD: u8 = 1;

// ---------------------------------------------------------------- encoder

/// Appends little-endian values to a byte buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// `u32` length, then the bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        // Invariant: callers pass footer fields (names, dictionary entries,
        // user metadata), far below 4 GiB; the writer checks user_meta.
        self.u32(u32::try_from(v.len()).expect("footer field below 4 GiB"));
        self.buf.extend_from_slice(v);
    }
}

// ---------------------------------------------------------------- decoder

/// Reads little-endian values from a byte slice; every read is bounds-checked.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        if self.remaining() < n {
            return Err(format!("truncated: need {n} bytes at offset {}, have {}", self.pos, self.remaining()));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Reason> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Reason> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Reason> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Reason> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Reason> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, Reason> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Reason> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn str(&mut self) -> Result<&'a str, Reason> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("invalid UTF-8 at offset {}: {e}", self.pos))
    }
    /// A count of entries each at least `min_entry` bytes long: rejects
    /// counts the remaining input cannot hold, so a corrupt count never
    /// drives a huge allocation.
    pub(crate) fn count(&self, n: u64, min_entry: usize) -> Result<usize, Reason> {
        let n = usize::try_from(n).map_err(|_| format!("count {n} too large"))?;
        if n.saturating_mul(min_entry.max(1)) > self.remaining() {
            return Err(format!("count {n} at offset {} exceeds the remaining {} bytes", self.pos, self.remaining()));
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------- footer

/// Where a block's bytes are and how to check them.
#[derive(Debug, Clone)]
pub(crate) struct BlockMeta {
    pub(crate) offset: u64,
    pub(crate) stored_len: u64,
    pub(crate) raw_len: u64,
    pub(crate) flags: u8,
    pub(crate) crc: u32,
    pub(crate) rows: u32,
    pub(crate) stats: ColumnStats,
}

/// One serialized roaring bitmap in the index section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) crc: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct ColumnMeta {
    pub(crate) name: String,
    pub(crate) kind: ColumnKind,
    pub(crate) encoding: Encoding,
    pub(crate) stats: ColumnStats,
    /// The dictionary of a dictionary-encoded column: the writer's, or
    /// the one `decode` read. A reader lets go of it once the footer is
    /// checked and reads it again from `dict_at` when needed.
    pub(crate) dict: Option<Arc<Dictionary>>,
    /// Where `decode` found the dictionary (its count and entries) in the
    /// footer's bytes.
    pub(crate) dict_at: Option<Range<usize>>,
    pub(crate) blocks: Vec<BlockMeta>,
    /// Per dictionary code (0 = NULL, then 1..=dict.len()), the bitmap of
    /// rows holding it. Present for dictionary-encoded dimension columns.
    pub(crate) index: Option<Vec<IndexEntry>>,
}

/// Bytes per checksummed page of the id section: tantivy reads a few
/// kilobytes at a time (a term block, a postings list), and each read is
/// checked against the CRCs of the pages it touches.
pub(crate) const ID_PAGE_BYTES: u32 = 16 << 10;

/// The id section: the files of a tantivy index, back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdSection {
    /// Absolute file offset of the section.
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) granule_rows: u32,
    pub(crate) page_bytes: u32,
    /// CRC of each page of `page_bytes` (the last one may be shorter).
    pub(crate) page_crcs: Vec<u32>,
    /// Each file's name and byte range within the section.
    pub(crate) files: Vec<(String, Range<u64>)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Footer {
    pub(crate) rows: u64,
    pub(crate) block_rows: u32,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
    pub(crate) user_meta: Vec<u8>,
    pub(crate) index_offset: u64,
    pub(crate) index_len: u64,
    pub(crate) index_crc: u32,
    pub(crate) columns: Vec<ColumnMeta>,
    /// Version 3 on; `None` in older files.
    pub(crate) ids: Option<IdSection>,
}

impl Footer {
    /// Bytes it holds in memory (the dictionaries aside): the block
    /// metadata and zone maps of every column, index entries, id pages.
    pub(crate) fn memory_bytes(&self) -> usize {
        let heap = |s: &ColumnStats| match &s.range {
            ValueRange::Str { min, max } => min.len() + max.len(),
            _ => 0,
        };
        let column = |c: &ColumnMeta| {
            size_of::<ColumnMeta>()
                + c.name.len()
                + heap(&c.stats)
                + c.blocks.iter().map(|b| size_of::<BlockMeta>() + heap(&b.stats)).sum::<usize>()
                + c.index.as_ref().map_or(0, |e| e.len() * size_of::<IndexEntry>())
        };
        let ids = self.ids.as_ref().map_or(0, |ids| {
            size_of::<IdSection>()
                + ids.page_crcs.len() * size_of::<u32>()
                + ids.files.iter().map(|(name, _)| name.len() + size_of::<(String, Range<u64>)>()).sum::<usize>()
        });
        size_of::<Footer>() + self.user_meta.len() + self.columns.iter().map(column).sum::<usize>() + ids
    }
}

fn put_stats(e: &mut Enc, s: &ColumnStats) {
    e.u64(s.null_count);
    match &s.range {
        ValueRange::Empty => e.u8(0),
        ValueRange::Int { min, max } => {
            e.u8(1);
            e.i64(*min);
            e.i64(*max);
        }
        ValueRange::Codes { min, max } => {
            e.u8(2);
            e.u32(*min);
            e.u32(*max);
        }
        ValueRange::Str { min, max } => {
            e.u8(3);
            e.bytes(min.as_bytes());
            e.bytes(max.as_bytes());
        }
    }
}

fn get_stats(d: &mut Dec<'_>) -> Result<ColumnStats, Reason> {
    let null_count = d.u64()?;
    let range = match d.u8()? {
        0 => ValueRange::Empty,
        1 => ValueRange::Int { min: d.i64()?, max: d.i64()? },
        2 => ValueRange::Codes { min: d.u32()?, max: d.u32()? },
        3 => ValueRange::Str { min: d.str()?.to_owned(), max: d.str()?.to_owned() },
        t => return Err(format!("unknown stats tag {t}")),
    };
    Ok(ColumnStats { null_count, range })
}

/// A dictionary as the footer stores it: a `u32` count, then each entry
/// length-prefixed, in strictly ascending order.
pub(crate) fn decode_dictionary(d: &mut Dec<'_>) -> Result<Dictionary, Reason> {
    let n = d.u32()?;
    let n = d.count(u64::from(n), 4)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(d.str()?);
    }
    Dictionary::from_sorted(&entries).ok_or_else(|| "dictionary is not strictly sorted".to_string())
}

impl Footer {
    /// The footer's bytes (version 1 layout, docs/segment-format.md).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.rows);
        e.u32(self.block_rows);
        e.i64(self.min_ts);
        e.i64(self.max_ts);
        e.bytes(&self.user_meta);
        e.u64(self.index_offset);
        e.u64(self.index_len);
        e.u32(self.index_crc);
        // Invariant: the event schema has 23 columns.
        e.u16(u16::try_from(self.columns.len()).expect("column count fits u16"));
        for c in &self.columns {
            e.bytes(c.name.as_bytes());
            e.u8(kind_code(c.kind));
            e.u8(c.encoding as u8);
            put_stats(&mut e, &c.stats);
            if let Some(dict) = &c.dict {
                e.u32(dict.len() as u32);
                for (_, v) in dict.iter() {
                    e.bytes(v.as_bytes());
                }
            }
            e.u32(c.blocks.len() as u32);
            for b in &c.blocks {
                e.u64(b.offset);
                e.u64(b.stored_len);
                e.u64(b.raw_len);
                e.u8(b.flags);
                e.u32(b.crc);
                e.u32(b.rows);
                put_stats(&mut e, &b.stats);
            }
            match &c.index {
                None => e.u8(0),
                Some(entries) => {
                    e.u8(1);
                    e.u32(entries.len() as u32);
                    for x in entries {
                        e.u64(x.offset);
                        e.u64(x.len);
                        e.u32(x.crc);
                    }
                }
            }
        }
        match &self.ids {
            None => e.u8(0),
            Some(ids) => {
                e.u8(1);
                e.u64(ids.offset);
                e.u64(ids.len);
                e.u32(ids.granule_rows);
                e.u32(ids.page_bytes);
                // Invariant: the section of a segment (< 2^32 rows) has far fewer pages.
                e.u32(u32::try_from(ids.page_crcs.len()).expect("id page count fits u32"));
                for crc in &ids.page_crcs {
                    e.u32(*crc);
                }
                // Invariant: an index holds a few dozen files.
                e.u32(u32::try_from(ids.files.len()).expect("id index file count fits u32"));
                for (name, range) in &ids.files {
                    e.bytes(name.as_bytes());
                    e.u64(range.start);
                    e.u64(range.end - range.start);
                }
            }
        }
        e.buf
    }

    /// Parses a footer of format `version`. Structural checks against the
    /// file (block ranges, schema) are the reader's job.
    pub(crate) fn decode(buf: &[u8], version: u32) -> Result<Footer, Reason> {
        let mut d = Dec::new(buf);
        let rows = d.u64()?;
        let block_rows = d.u32()?;
        let min_ts = d.i64()?;
        let max_ts = d.i64()?;
        let user_meta = d.bytes()?.to_vec();
        let index_offset = d.u64()?;
        let index_len = d.u64()?;
        let index_crc = d.u32()?;
        let ncols = d.u16()?;
        let mut columns = Vec::with_capacity(d.count(u64::from(ncols), 8)?);
        for _ in 0..ncols {
            let name = d.str()?.to_owned();
            let kind = kind_from_code(d.u8()?).ok_or_else(|| format!("column {name}: unknown kind"))?;
            let encoding = Encoding::from_code(d.u8()?).ok_or_else(|| format!("column {name}: unknown encoding"))?;
            let stats = get_stats(&mut d)?;
            let (dict, dict_at) = if encoding == Encoding::Dict {
                let start = d.pos();
                let dict = decode_dictionary(&mut d).map_err(|r| format!("column {name}: {r}"))?;
                (Some(Arc::new(dict)), Some(start..d.pos()))
            } else {
                (None, None)
            };
            let nblocks = d.u32()?;
            let nblocks = d.count(u64::from(nblocks), 42)?;
            let mut blocks = Vec::with_capacity(nblocks);
            for _ in 0..nblocks {
                blocks.push(BlockMeta {
                    offset: d.u64()?,
                    stored_len: d.u64()?,
                    raw_len: d.u64()?,
                    flags: d.u8()?,
                    crc: d.u32()?,
                    rows: d.u32()?,
                    stats: get_stats(&mut d)?,
                });
            }
            let index = match d.u8()? {
                0 => None,
                1 => {
                    let n = d.u32()?;
                    let n = d.count(u64::from(n), 20)?;
                    let mut entries = Vec::with_capacity(n);
                    for _ in 0..n {
                        entries.push(IndexEntry { offset: d.u64()?, len: d.u64()?, crc: d.u32()? });
                    }
                    Some(entries)
                }
                t => return Err(format!("column {name}: bad index flag {t}")),
            };
            columns.push(ColumnMeta { name, kind, encoding, stats, dict, dict_at, blocks, index });
        }
        let ids = if version < IDS_SINCE {
            None
        } else {
            match d.u8()? {
                0 => None,
                1 => {
                    let (offset, len, granule_rows, page_bytes) = (d.u64()?, d.u64()?, d.u32()?, d.u32()?);
                    let n = d.u32()?;
                    let n = d.count(u64::from(n), 4)?;
                    let mut page_crcs = Vec::with_capacity(n);
                    for _ in 0..n {
                        page_crcs.push(d.u32()?);
                    }
                    let n = d.u32()?;
                    let n = d.count(u64::from(n), 20)?;
                    let mut files = Vec::with_capacity(n);
                    for _ in 0..n {
                        let name = d.str()?.to_owned();
                        let (start, flen) = (d.u64()?, d.u64()?);
                        let end = start.checked_add(flen).ok_or_else(|| format!("id file {name}: length overflows"))?;
                        files.push((name, start..end));
                    }
                    Some(IdSection { offset, len, granule_rows, page_bytes, page_crcs, files })
                }
                t => return Err(format!("bad id section flag {t}")),
            }
        };
        if d.remaining() != 0 {
            return Err(format!("{} unexpected bytes after the footer's last column", d.remaining()));
        }
        Ok(Footer { rows, block_rows, min_ts, max_ts, user_meta, index_offset, index_len, index_crc, columns, ids })
    }
}
