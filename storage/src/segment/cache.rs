//! A bounded cache of segment blocks as queries read them.
//!
//! A block read from the file has its checksum verified and, when stored
//! compressed, is decompressed: for a query that keeps a fraction of a
//! block's rows, that costs more than decoding the rows. Dashboards ask the
//! same questions over the same recent blocks all day, so the store keeps
//! the verified, decompressed bytes of the blocks queries read, up to a
//! byte budget (`storage.block_cache_bytes`), evicting the least useful
//! (S3-FIFO, from `quick_cache`).
//!
//! A cached block was checked when it entered the cache, like a page of a
//! database's buffer pool; damage to the file after that is found by the
//! background verification, which reads the file, never the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// A block: the reader it belongs to (unique per opened file in this
/// process, never reused) and the block's offset in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    pub reader: u64,
    pub offset: u64,
}

/// Bookkeeping bytes per entry on top of the block itself.
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct ByLength;

impl Weighter<BlockKey, Arc<[u8]>> for ByLength {
    fn weight(&self, _key: &BlockKey, block: &Arc<[u8]>) -> u64 {
        block.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Verified, decompressed segment blocks, shared by every reader of a store.
pub struct BlockCache {
    blocks: Cache<BlockKey, Arc<[u8]>, ByLength>,
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
        self.blocks.get(key)
    }

    /// Keeps `block` unless the cache is disabled or the block alone
    /// would take more than an eighth of it.
    pub(crate) fn insert(&self, key: BlockKey, block: Arc<[u8]>) {
        if (block.len() as u64 + ENTRY_OVERHEAD) * 8 <= self.capacity {
            self.blocks.insert(key, block);
        }
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
