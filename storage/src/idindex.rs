//! The id index: which rows of an events segment may hold a given
//! `event_id`, `impression_id`, `click_id`, `user_key` or `ip_hash`.
//! These columns have a distinct value on almost every row, so zone maps and
//! dictionaries cannot prune them; without this index, `WHERE click_id = 'x'`
//! reads the column of every segment in range.
//!
//! ```text
//!  segment rows (stored order) ─► granules of GRANULE_ROWS rows
//!    granule g: the distinct values of the five id columns
//!      ─► one tantivy document: field "ids" (one term per value), fast field "granule" = g
//!  tantivy index built in memory (writer.rs) ─► its files packed into the segment's
//!  id section (segment/format.rs), so it is written, tiered, expired and
//!  re-sealed with its segment
//!  lookup(values) (reader.rs): postings of each value's term ─► granules ─► row ranges
//! ```
//!
//! The index narrows, it does not answer: the scan still checks the filter
//! on every row of the granules it returns, so a value that sits in another
//! id column of the same granule costs a few rows read, never a wrong row.
//! What it must never do is miss a granule holding a value (tested against
//! a plain scan in `idindex/tests.rs`).
//!
//! Terms are the values' bytes, all five columns in one field: one term
//! per distinct value per granule, so an impression's `event_id` and
//! `impression_id` (the same string) cost one. The term dictionary is an
//! sstable (tantivy's `quickwit` feature), read by blocks, so a lookup in a
//! segment on the object store costs a few small range reads, not the index.

mod reader;
mod tokenizer;
mod writer;

#[cfg(test)]
mod tests;

use crate::event::ColumnId;

pub(crate) use reader::{IdIndex, SectionBytes};
pub(crate) use writer::build;

/// The columns the id index covers.
pub const ID_COLUMNS: [ColumnId; 5] =
    [ColumnId::EventId, ColumnId::ImpressionId, ColumnId::ClickId, ColumnId::UserKey, ColumnId::IpHash];

/// Rows per granule: the index says which granules may hold a value, and
/// the scan reads those rows. Smaller granules cost more terms (a value
/// repeated across granules is a term in each) for fewer rows checked.
pub const GRANULE_ROWS: u32 = 4096;

/// Whether the id index covers `column`.
pub fn covers(column: ColumnId) -> bool {
    ID_COLUMNS.contains(&column)
}

/// The tantivy field holding every id value.
const IDS_FIELD: &str = "ids";
/// The tantivy fast field holding a document's granule number.
const GRANULE_FIELD: &str = "granule";
/// The name the id tokenizer is registered under.
const TOKENIZER: &str = "adstore_ids";
