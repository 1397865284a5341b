//! A bounded cache of segment blocks and dictionaries as queries read them.
//!
//! A block read from the file has its checksum verified and, when stored
//! compressed, is decompressed: for a query that keeps a fraction of a
//! block's rows, that costs more than decoding the rows. Dashboards ask the
//! same questions over the same recent blocks all day, so the store keeps
//! the verified, decompressed bytes of the blocks queries read, up to a
//! byte budget (`storage.block_cache_bytes`), evicting the least useful
//! (S3-FIFO, from `quick_cache`).
//!
//! The dictionaries of the segments' string columns share the same budget:
//! a reader checks its footer at open, then lets go of them and reads a
//! dictionary again from the file when the cache no longer holds it, so the
//! memory they take no longer grows with the segments kept.
//!
//! A cached block was checked when it entered the cache, like a page of a
//! database's buffer pool; damage to the file after that is found by the
//! background verification, which reads the file, never the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::Dictionary;

/// A block: the reader it belongs to (unique per opened file in this
/// process, never reused) and the block's offset in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    pub reader: u64,
    pub offset: u64,
}

/// Bookkeeping bytes per entry on top of the block itself.
const ENTRY_OVERHEAD: u64 = 64;

/// What an entry holds.
#[derive(Clone)]
enum Cached {
    /// A block's (or bitmap's, or id page's) verified, decompressed bytes.
    Block(Arc<[u8]>),
    /// A column's dictionary, keyed by its offset in the footer.
    Dictionary(Arc<Dictionary>),
}

impl Cached {
    fn bytes(&self) -> u64 {
        match self {
            Cached::Block(b) => b.len() as u64,
            Cached::Dictionary(d) => d.memory_bytes() as u64,
        }
    }
}

#[derive(Clone)]
struct ByLength;

impl Weighter<BlockKey, Cached> for ByLength {
    fn weight(&self, _key: &BlockKey, entry: &Cached) -> u64 {
        entry.bytes() + ENTRY_OVERHEAD
    }
}

/// Verified, decompressed segment blocks and decoded dictionaries, shared
/// by every reader of a store.
pub struct BlockCache {
    blocks: Cache<BlockKey, Cached, ByLength>,
    capacity: u64,
}

/// A process-wide source of reader ids for [`BlockKey`].
static NEXT_READER: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_reader_id() -> u64 {
    NEXT_READER.fetch_add(1, Ordering::Relaxed)
}

/// Typical size of a cached block, to size the cache's tables.
const TYPICAL_BLOCK_BYTES: u64 = 32 << 10;

impl BlockCache {
    /// A cache holding up to `capacity_bytes` of blocks (0: none).
    pub fn new(capacity_bytes: u64) -> BlockCache {
        let items = (capacity_bytes / TYPICAL_BLOCK_BYTES).max(16) as usize;
        BlockCache { blocks: Cache::with_weighter(items, capacity_bytes.max(1), ByLength), capacity: capacity_bytes }
    }

    /// Bytes the cache may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.blocks.weight()
    }

    pub(crate) fn get(&self, key: &BlockKey) -> Option<Arc<[u8]>> {
        match self.blocks.get(key)? {
            Cached::Block(b) => Some(b),
            Cached::Dictionary(_) => None,
        }
    }

    /// Keeps `block` unless the cache is disabled or the block alone
    /// would take more than an eighth of it.
    pub(crate) fn insert(&self, key: BlockKey, block: Arc<[u8]>) {
        self.keep(key, Cached::Block(block));
    }

    pub(crate) fn get_dictionary(&self, key: &BlockKey) -> Option<Arc<Dictionary>> {
        match self.blocks.get(key)? {
            Cached::Dictionary(d) => Some(d),
            Cached::Block(_) => None,
        }
    }

    /// Keeps `dict` on the terms of [`BlockCache::insert`]; whether it
    /// was kept (the cache also refuses an entry larger than one of its
    /// shards, a fraction of the whole on a machine with many cores).
    pub(crate) fn insert_dictionary(&self, key: BlockKey, dict: Arc<Dictionary>) -> bool {
        self.keep(key, Cached::Dictionary(dict)) && self.blocks.contains_key(&key)
    }

    /// Inserts `entry` unless it alone would take more than an eighth of
    /// the cache; whether it was offered.
    fn keep(&self, key: BlockKey, entry: Cached) -> bool {
        let fits = (entry.bytes() + ENTRY_OVERHEAD) * 8 <= self.capacity;
        if fits {
            self.blocks.insert(key, entry);
        }
        fits
    }

    pub(crate) fn remove(&self, key: &BlockKey) {
        self.blocks.remove(key);
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache").field("capacity", &self.capacity).field("used", &self.used_bytes()).finish()
    }
}
