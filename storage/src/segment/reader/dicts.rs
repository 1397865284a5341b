//! The reader's side of the dictionaries: checked at open, then read
//! through the block cache (from the file on a miss, against a CRC32C
//! taken at open), so open segments do not keep them; one the cache will
//! not take stays with its reader.

use std::ops::Range;
use std::sync::Arc;

use super::super::cache::BlockKey;
use super::super::format::{Dec, decode_dictionary};
use super::super::{Dictionary, SegmentColumn};
use super::SegmentReader;
use crate::error::Result;

/// What a reader knows of a column's dictionary besides the block cache.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// The one it last handed out: while a query or the cache still holds
    /// it, every read of the column gets this same dictionary (the
    /// aggregation keys its work per dictionary object), without a lookup.
    pub(super) seen: std::sync::Weak<Dictionary>,
    /// One the block cache would not take (no cache, the cache off, or a
    /// dictionary too large for it), kept for the reader's life so it is
    /// not decoded again at every block.
    pub(super) kept: Option<Arc<Dictionary>>,
}

/// A dictionary in the file: read and checked at open, then read again
/// (against `crc`, its bytes' CRC32C) whenever the block cache does not
/// hold it.
#[derive(Debug)]
pub(in crate::segment) struct DictPlace {
    pub(in crate::segment) at: Range<u64>,
    crc: u32,
}

impl DictPlace {
    /// The dictionary encoded in `bytes`, at `at` in the file.
    pub(super) fn new(at: Range<u64>, bytes: &[u8]) -> DictPlace {
        DictPlace { at, crc: crc32c::crc32c(bytes) }
    }
}

impl SegmentReader {
    /// The column's dictionary, if it is dictionary-encoded in this
    /// segment: the one this reader last handed out while it is still in
    /// use, else from the block cache, else read from the file (checked
    /// against its CRC32C) and kept in the cache, or by the reader when the
    /// cache will not take it. Errors: `SegmentCorrupt` for a damaged
    /// dictionary, the object store's error for a cold segment it cannot
    /// read.
    pub fn dictionary(&self, col: impl SegmentColumn) -> Result<Option<Arc<Dictionary>>> {
        let i = col.position();
        let Some(place) = self.dicts.get(i).and_then(Option::as_ref) else { return Ok(None) };
        if let Some(dict) = self.known.lock().get(i).and_then(|k| k.seen.upgrade()) {
            return Ok(Some(dict));
        }
        let key = BlockKey { reader: self.uid, offset: place.at.start };
        let (dict, cached) = match self.cache.as_ref().and_then(|c| c.get_dictionary(&key)) {
            Some(dict) => (dict, true),
            None => {
                let dict = Arc::new(self.file_dictionary(col, place)?);
                let cached = self.cache.as_ref().is_some_and(|c| c.insert_dictionary(key, dict.clone()));
                (dict, cached)
            }
        };
        if let Some(k) = self.known.lock().get_mut(i) {
            k.seen = Arc::downgrade(&dict);
            k.kept = (!cached).then(|| dict.clone());
        }
        Ok(Some(dict))
    }

    /// Where the dictionaries of `cols` lie in the file, for those that
    /// have one (for a prefetch).
    pub(crate) fn dictionary_ranges<C: SegmentColumn>(&self, cols: impl IntoIterator<Item = C>) -> Vec<Range<u64>> {
        cols.into_iter()
            .filter_map(|c| self.dicts.get(c.position()).and_then(Option::as_ref))
            .map(|p| p.at.clone())
            .collect()
    }

    /// A dictionary read from the file, checksum verified.
    pub(super) fn file_dictionary(&self, col: impl SegmentColumn, place: &DictPlace) -> Result<Dictionary> {
        let what = || format!("dictionary of column {}", self.name(col));
        let bytes = self.slice(place.at.start, place.at.end - place.at.start).map_err(|r| self.failed(what(), r))?;
        if crc32c::crc32c(&bytes) != place.crc {
            return Err(self.corrupt(format!("{}: checksum mismatch", what())));
        }
        decode_dictionary(&mut Dec::new(&bytes)).map_err(|r| self.corrupt(format!("{}: {r}", what())))
    }
}
