//! Immutable columnar segment files: [`write_segment`] turns an
//! [`EventBatch`] into one file ([`write_columns`] any batch of a
//! [`SegmentSchema`]); [`SegmentReader`] maps it and decodes columns block
//! by block.
//!
//! A segment holds rows sorted by its schema's sort columns and time (for
//! events `(advertiser_id, campaign_id, ad_id, ts)`; ties keep their input
//! order). Each column is cut into blocks of
//! `block_rows` rows; every block is encoded on its own, zstd-compressed when
//! that saves at least 1/3 of its bytes, and checksummed, so a scan touches only the
//! blocks it needs and a flipped byte is reported with the file's name
//! instead of being returned as data.
//!
//! ```text
//!  offset 0
//!  ┌──────────────────────────────────────────────────────────────┐
//!  │ header   magic "ADSTSEG\0" | version u32 | reserved u32 (0)  │ 16 bytes
//!  ├──────────────────────────────────────────────────────────────┤
//!  │ column 0: block 0 | block 1 | ...                            │ data section,
//!  │ column 1: block 0 | block 1 | ...                            │ column-major;
//!  │ ...                                                          │ CRC32C per block
//!  ├──────────────────────────────────────────────────────────────┤
//!  │ index section: roaring bitmap per (dimension column, code)   │ CRC32C per bitmap
//!  │                                                              │ + one for the section
//!  ├──────────────────────────────────────────────────────────────┤
//!  │ footer: rows, block_rows, time range, user_meta, index ref,  │ explicit
//!  │   per column: name, kind, encoding, stats, dictionary,       │ little-endian,
//!  │   blocks (offset, lengths, flags, crc, rows, stats), index   │ CRC32C in trailer
//!  ├──────────────────────────────────────────────────────────────┤
//!  │ trailer  footer_len u64 | footer_crc u32 | version u32 | magic │ 24 bytes
//!  └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! The byte-level layout, encodings and the versioning rule are in
//! `docs/segment-format.md`; `tests/golden/segment-v1.seg` and
//! `segment-v2.seg` pin versions 1 and 2.
//!
//! Invariants:
//! - a segment file is never modified after `write_segment` returns (the
//!   reader relies on this to map it);
//! - dictionaries are sorted, so code order is string order, and code 0 is
//!   NULL;
//! - every byte of a file is covered by a magic check or a CRC32C.

mod cache;
mod format;
mod reader;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

pub use cache::BlockCache;
pub use reader::SegmentReader;
pub use schema::{ColumnDef, MAX_SORT_COLUMNS, SegmentColumn, SegmentSchema};
pub use writer::{write_columns, write_segment};

/// How [`write_segment`] lays out a segment.
#[derive(Debug, Clone)]
pub struct SegmentWriteOptions {
    /// Rows per block. Default 65536.
    pub block_rows: usize,
    /// zstd level for blocks (a block is stored compressed only when that
    /// saves at least 1/3 of its bytes). Default 1.
    pub zstd_level: i32,
    /// Opaque caller metadata stored in the footer (at most 16 MiB).
    /// Default empty.
    pub user_meta: Vec<u8>,
    /// Build the id index (`storage/src/idindex.rs`) of a schema that has
    /// the id columns (events). Default true.
    pub id_index: bool,
}

impl Default for SegmentWriteOptions {
    fn default() -> Self {
        SegmentWriteOptions { block_rows: 65536, zstd_level: 1, user_meta: Vec::new(), id_index: true }
    }
}

/// What [`write_segment`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub rows: u64,
    pub size_bytes: u64,
    /// Smallest `ts`; `i64::MAX` for an empty segment (so no range overlaps it).
    pub min_ts: i64,
    /// Largest `ts`; `i64::MIN` for an empty segment.
    pub max_ts: i64,
}

/// Null count and value range of a column or of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnStats {
    pub null_count: u64,
    pub range: ValueRange,
}

/// The range of the non-null values of a column or block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRange {
    /// No non-null values.
    Empty,
    /// `I64`, `U8` and `Bool` (0/1) columns.
    Int { min: i64, max: i64 },
    /// Dictionary-encoded strings: the range of codes (never 0, the NULL
    /// code). Codes are ordered like the strings they stand for.
    Codes { min: u32, max: u32 },
    /// Plain-encoded strings, compared bytewise.
    Str { min: String, max: String },
}

/// A segment's sorted dictionary of one string column. Code 0 is NULL;
/// codes `1..=len()` name the entries in ascending (bytewise) order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dictionary {
    data: String,
    /// `len() + 1` offsets into `data`; entry `i` (code `i+1`) is
    /// `data[ends[i]..ends[i+1]]`.
    ends: Vec<usize>,
}

impl Dictionary {
    /// Builds a dictionary from strictly ascending entries; `None` if they are not.
    pub(crate) fn from_sorted<S: AsRef<str>>(entries: &[S]) -> Option<Dictionary> {
        if entries.windows(2).any(|w| w[0].as_ref() >= w[1].as_ref()) {
            return None;
        }
        Some(Dictionary::build(entries))
    }

    /// A dictionary of `entries`, sorted and deduplicated first.
    pub(crate) fn from_distinct(mut entries: Vec<&str>) -> Dictionary {
        entries.sort_unstable();
        entries.dedup();
        Dictionary::build(&entries)
    }

    fn build<S: AsRef<str>>(entries: &[S]) -> Dictionary {
        let mut data = String::with_capacity(entries.iter().map(|e| e.as_ref().len()).sum());
        let mut ends = Vec::with_capacity(entries.len() + 1);
        ends.push(0);
        for e in entries {
            data.push_str(e.as_ref());
            ends.push(data.len());
        }
        Dictionary { data, ends }
    }

    /// Number of entries (not counting NULL).
    pub fn len(&self) -> usize {
        self.ends.len().saturating_sub(1)
    }

    /// Bytes it holds in memory.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.ends.len() * size_of::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string for `code`; `None` for 0 (NULL) and codes past the end.
    pub fn value(&self, code: u32) -> Option<&str> {
        let i = (code as usize).checked_sub(1)?;
        let (start, end) = (*self.ends.get(i)?, *self.ends.get(i + 1)?);
        self.data.get(start..end)
    }

    /// The code of `value`, if the segment holds it.
    pub fn code_of(&self, value: &str) -> Option<u32> {
        let (mut lo, mut hi) = (1u32, self.len() as u32);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.value(mid)?.cmp(value) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid - 1,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// `(code, value)` in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        (1..=self.len() as u32).filter_map(|c| self.value(c).map(|v| (c, v)))
    }
}

/// Which rows of a block a scan keeps, as offsets within the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    /// A run of consecutive rows (a dimension the rows are sorted by).
    Range(Range<u32>),
    /// Ascending offsets.
    Rows(Vec<u32>),
}

impl Selection {
    /// Rows kept of a block of `block_len` rows.
    pub fn count(&self, block_len: usize) -> usize {
        match self {
            Selection::All => block_len,
            Selection::Range(r) => r.len(),
            Selection::Rows(v) => v.len(),
        }
    }

    /// Keeps the selected rows `i` (offsets within the block) for which
    /// `keep(i)` holds.
    pub(crate) fn refine(self, block_len: usize, keep: impl Fn(usize) -> bool) -> Selection {
        let scan = |rows: Range<usize>| {
            let mut out = vec![0u32; rows.len()];
            let mut kept = 0;
            for i in rows {
                // Branch-free: write the offset, advance only if kept.
                out[kept] = i as u32;
                kept += usize::from(keep(i));
            }
            out.truncate(kept);
            out
        };
        Selection::Rows(match self {
            Selection::All => scan(0..block_len),
            Selection::Range(r) => scan(r.start as usize..r.end as usize),
            Selection::Rows(mut v) => {
                v.retain(|&i| keep(i as usize));
                v
            }
        })
    }
}

/// One decoded block of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    I64(Vec<i64>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    /// Dictionary codes (0 = NULL) and the segment's dictionary.
    Dict {
        codes: Vec<u32>,
        dict: Arc<Dictionary>,
    },
    /// A plain-encoded string column.
    Str(arrow_array::StringArray),
    /// A bytes column.
    Bytes(arrow_array::BinaryArray),
}

impl ColumnData {
    pub fn len(&self) -> usize {
        match self {
            ColumnData::I64(v) => v.len(),
            ColumnData::U8(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Dict { codes, .. } => codes.len(),
            ColumnData::Str(a) => arrow_array::Array::len(a),
            ColumnData::Bytes(a) => arrow_array::Array::len(a),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
