//! The reader's side of the id index (`crate::idindex`): a segment's id
//! section as tantivy reads it, page by page, each page checked against
//! its CRC32C (a cold segment's pages kept in the block cache), and the
//! lookups that turn a value into the rows that may hold it.

use std::ops::Range;
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::{ReadError, SegmentReader, Source};
use crate::error::{Result, StorageError};
use crate::event::ColumnId;
use crate::idindex::{self, IdIndex, SectionBytes};
use crate::ids::SegmentId;
use crate::segment::cache::{BlockCache, BlockKey};
use crate::segment::format::IdSection;

/// A segment's id section, for the id index to read: every read is
/// widened to whole pages and checked against their CRCs, so a flipped
/// byte, on local disk or in the object store, is an error, never a term
/// or posting silently lost.
#[derive(Debug)]
struct IdSectionBytes {
    id: SegmentId,
    source: Arc<Source>,
    offset: u64,
    len: u64,
    page_bytes: u64,
    page_crcs: Arc<[u32]>,
    /// A cold segment's block cache and reader id: checked pages are kept
    /// there, as lookups read the same few pages of an index again.
    cache: Option<(Arc<BlockCache>, u64)>,
}

impl IdSectionBytes {
    fn corrupt(reason: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
    }

    fn page_key(&self, reader: u64, n: u64) -> BlockKey {
        id_page_key(reader, self.offset, self.page_bytes, n)
    }
}

impl SectionBytes for IdSectionBytes {
    fn read(&self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        if range.start > range.end || range.end > self.len {
            return Err(Self::corrupt(format!("range {range:?} outside the id section of {} bytes", self.len)));
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let first = range.start / self.page_bytes;
        let start = first * self.page_bytes;
        let end = (range.end.div_ceil(self.page_bytes) * self.page_bytes).min(self.len);
        let wanted = |pages: &[u8]| pages[(range.start - start) as usize..(range.end - start) as usize].to_vec();
        if let Some((cache, uid)) = &self.cache {
            let kept: Option<Vec<Arc<[u8]>>> =
                (first..end.div_ceil(self.page_bytes)).map(|n| cache.get(&self.page_key(*uid, n))).collect();
            if let Some(pages) = kept.map(|kept| kept.concat()).filter(|p| p.len() as u64 == end - start) {
                return Ok(wanted(&pages));
            }
        }
        let pages = match self.source.read(self.id, self.offset + start, end - start) {
            Ok(bytes) => bytes,
            Err(ReadError::Range(r)) => return Err(Self::corrupt(r)),
            Err(ReadError::Store(e)) => {
                ID_STORE_FAILURES.with(|n| n.set(n.get() + 1));
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        for (i, page) in pages.chunks(self.page_bytes as usize).enumerate() {
            let n = first as usize + i;
            if self.page_crcs.get(n) != Some(&crc32c::crc32c(page)) {
                return Err(Self::corrupt(format!("id section page {n}: checksum mismatch")));
            }
        }
        if let Some((cache, uid)) = &self.cache {
            for (i, page) in pages.chunks(self.page_bytes as usize).enumerate() {
                cache.insert(self.page_key(*uid, first + i as u64), page.into());
            }
        }
        Ok(wanted(&pages))
    }
}

/// The block cache key of page `n` of the id section at file offset
/// `section`: the page's file offset with the top bit set (file offsets are
/// below 2^63), apart from the keys of blocks and bitmaps (plain offsets).
pub(super) fn id_page_key(reader: u64, section: u64, page_bytes: u64, n: u64) -> BlockKey {
    BlockKey { reader, offset: (1 << 63) | (section + n * page_bytes) }
}

thread_local! {
    /// Object store reads of an id index that failed on this thread: a
    /// lookup runs on its caller's thread, so a change across one lookup
    /// tells an outage (`ObjectStore`) from damage (`SegmentCorrupt`).
    static ID_STORE_FAILURES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl SegmentReader {
    /// Whether the segment has an id index (`storage/src/idindex.rs`).
    pub fn has_id_index(&self) -> bool {
        self.footer.ids.is_some()
    }

    /// Stored row ids that may hold one of `values` in `col`, from the id
    /// index: a superset of the matching rows (the caller checks each),
    /// never missing one. `None` when the index cannot answer: no index,
    /// a column it does not cover, or a value it holds no term for.
    ///
    /// # Errors
    /// `SegmentCorrupt` when the index is damaged (every read of it is
    /// checked against its pages' CRC32C); `ObjectStore` when a cold
    /// segment's index cannot be read.
    pub fn id_rows(&self, col: ColumnId, values: &[String]) -> Result<Option<RoaringBitmap>> {
        if !idindex::covers(col) {
            return Ok(None);
        }
        let Some(ids) = &self.footer.ids else { return Ok(None) };
        let failures_before = ID_STORE_FAILURES.with(std::cell::Cell::get);
        let looked_up = self.id_index(ids).and_then(|index| {
            let granules = index.granules(values)?;
            Ok(granules.map(|g| index.rows_of(&g, self.footer.rows as u32)))
        });
        looked_up.map_err(|reason| {
            if ID_STORE_FAILURES.with(std::cell::Cell::get) != failures_before {
                let url = self.remote().map_or("the object store", |(tier, _)| tier.url());
                StorageError::ObjectStore {
                    what: format!("reading the id index of segment {} in {url}", self.id),
                    reason,
                }
            } else {
                self.corrupt(format!("id index: {reason}"))
            }
        })
    }

    /// The id index, opened at its first use. Not under the lock: opening
    /// a cold segment's index takes requests that concurrent lookups should
    /// not queue behind (two first lookups may both open it; one is kept).
    fn id_index(&self, ids: &IdSection) -> Result<Arc<IdIndex>, String> {
        if let Some(index) = &*self.ids.lock() {
            return Ok(index.clone());
        }
        let bytes = Arc::new(IdSectionBytes {
            id: self.id,
            source: self.source.clone(),
            offset: ids.offset,
            len: ids.len,
            page_bytes: u64::from(ids.page_bytes),
            page_crcs: ids.page_crcs.clone().into(),
            cache: self.cache.clone().filter(|_| self.is_remote()).map(|c| (c, self.uid)),
        });
        let index = Arc::new(IdIndex::open(&ids.files, ids.granule_rows, bytes)?);
        Ok(self.ids.lock().get_or_insert(index).clone())
    }
}
