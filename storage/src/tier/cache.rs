//! A bounded cache on local disk of the bytes read from cold segments.
//!
//! Reads of a cold segment are widened to aligned chunks of `CHUNK_BYTES`
//! (256 KiB)
//! (one range request per run of missing chunks); each chunk is kept as a
//! file `{dir}/{segment}-{index}.chunk` ending in the CRC32C of its bytes,
//! up to `capacity` bytes, evicting the least useful (S3-FIFO, from
//! `quick_cache`) and deleting its file. A segment's blocks are laid out
//! column by column, so a chunk holds the next blocks of the column a query
//! reads: the next read of that column costs no request.
//!
//! The cache survives restarts: `open` indexes the chunk files it finds. A
//! chunk whose checksum or length is wrong (a crash mid-write, a flipped
//! byte) is deleted and fetched again, never returned. Above it, the block
//! cache holds decompressed blocks in memory; the segment reader checks
//! every block's own checksum whatever the cache returns.
//!
//! ```text
//!  read(segment, offset..end) ─► chunks first..=last ─► on disk? ─yes─► bytes
//!                                                        │no (runs of missing chunks)
//!                                                        ▼
//!                                 get_range(run) ─► written as chunk files ─► bytes
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use crate::error::{IoContext, Result};
use crate::ids::SegmentId;

/// Bytes of one chunk (the last chunk of a file is shorter).
pub const CHUNK_BYTES: u64 = 256 << 10;
/// The checksum after a chunk's bytes in its file.
const CRC_LEN: u64 = 4;

/// One chunk of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChunkKey {
    segment: SegmentId,
    index: u64,
}

#[derive(Clone)]
struct FileBytes;

impl Weighter<ChunkKey, u64> for FileBytes {
    fn weight(&self, _key: &ChunkKey, file_bytes: &u64) -> u64 {
        (*file_bytes).max(1)
    }
}

/// Deletes the file of every chunk the cache evicts.
#[derive(Clone)]
struct DeleteFile {
    dir: PathBuf,
}

impl Lifecycle<ChunkKey, u64> for DeleteFile {
    type RequestState = ();

    fn begin_request(&self) {}

    fn on_evict(&self, _state: &mut (), key: ChunkKey, _file_bytes: u64) {
        let _ = std::fs::remove_file(chunk_path(&self.dir, key));
    }
}

fn chunk_path(dir: &Path, key: ChunkKey) -> PathBuf {
    dir.join(format!("{:016x}-{}.chunk", key.segment.0, key.index))
}

/// The key of a chunk file's name (`None` for any other file).
fn parse_name(name: &str) -> Option<ChunkKey> {
    let (segment, index) = name.strip_suffix(".chunk")?.split_once('-')?;
    Some(ChunkKey { segment: SegmentId(u64::from_str_radix(segment, 16).ok()?), index: index.parse().ok()? })
}

/// Counters of the cache, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkCacheStats {
    /// Bytes the cache may hold (0: no cache).
    pub capacity_bytes: u64,
    /// Bytes of chunk files held now.
    pub bytes: u64,
    /// Chunks read from the cache.
    pub hits: u64,
    /// Chunks not in the cache, fetched from the object store.
    pub misses: u64,
}

/// Chunks of cold segments on local disk (see the module docs).
pub struct ChunkCache {
    dir: PathBuf,
    chunks: Cache<ChunkKey, u64, FileBytes, DefaultHashBuilder, DeleteFile>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Segments forgotten lately (deleted, erased): a read of one still in
    /// flight stores nothing of it. The newest `FORGOTTEN_KEPT`.
    forgotten: parking_lot::Mutex<std::collections::VecDeque<SegmentId>>,
}

/// Forgotten segments remembered: far more than reads can be in flight.
const FORGOTTEN_KEPT: usize = 4096;

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkCache({}, {} of {} bytes)", self.dir.display(), self.chunks.weight(), self.capacity)
    }
}

impl ChunkCache {
    /// The cache in `dir` (created if missing) holding at most `capacity`
    /// bytes; the chunk files already there are kept (up to `capacity`),
    /// anything else in the directory (a write a crash cut short) deleted.
    pub fn open(dir: &Path, capacity: u64) -> Result<ChunkCache> {
        std::fs::create_dir_all(dir).at(dir)?;
        let items = (capacity / CHUNK_BYTES).max(16) as usize;
        let lifecycle = DeleteFile { dir: dir.to_path_buf() };
        let chunks = Cache::with(items, capacity.max(1), FileBytes, DefaultHashBuilder::default(), lifecycle);
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            chunks,
            capacity,
            hits: 0.into(),
            misses: 0.into(),
            forgotten: parking_lot::Mutex::new(std::collections::VecDeque::new()),
        };
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            let key = name.to_str().and_then(parse_name);
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match key {
                Some(key) if len > CRC_LEN => cache.chunks.insert(key, len),
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(cache)
    }

    pub fn stats(&self) -> ChunkCacheStats {
        ChunkCacheStats {
            capacity_bytes: self.capacity,
            bytes: self.chunks.weight(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The bytes of segment `id`'s bytes `range` (of a file of `len`
    /// bytes), fetching the chunks not cached with `fetch` (one call per
    /// run of adjacent missing chunks, given the run's byte range).
    pub fn read(
        &self,
        id: SegmentId,
        len: u64,
        range: std::ops::Range<u64>,
        mut fetch: impl FnMut(std::ops::Range<u64>) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let (first, last) = (range.start / CHUNK_BYTES, (range.end - 1) / CHUNK_BYTES);
        let mut chunks: Vec<Option<Vec<u8>>> =
            (first..=last).map(|index| self.get(ChunkKey { segment: id, index })).collect();
        let found = chunks.iter().filter(|c| c.is_some()).count() as u64;
        self.hits.fetch_add(found, Ordering::Relaxed);
        self.misses.fetch_add(chunks.len() as u64 - found, Ordering::Relaxed);
        // Runs of missing chunks, each fetched with one request.
        let mut i = 0;
        while i < chunks.len() {
            if chunks[i].is_some() {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < chunks.len() && chunks[i].is_none() {
                i += 1;
            }
            let from = (first + run_start as u64) * CHUNK_BYTES;
            let to = ((first + i as u64) * CHUNK_BYTES).min(len);
            let bytes = fetch(from..to)?;
            for (n, piece) in bytes.chunks(CHUNK_BYTES as usize).take(i - run_start).enumerate() {
                chunks[run_start + n] = Some(piece.to_vec());
            }
            self.store(id, from, &bytes);
        }
        for (n, chunk) in chunks.iter().enumerate() {
            let chunk_start = (first + n as u64) * CHUNK_BYTES;
            let chunk = chunk.as_deref().unwrap_or_default();
            let from = range.start.saturating_sub(chunk_start) as usize;
            let to = ((range.end - chunk_start) as usize).min(chunk.len());
            out.extend_from_slice(chunk.get(from..to).unwrap_or_default());
        }
        Ok(out)
    }

    /// The byte ranges to fetch so that every chunk `ranges` touch (of
    /// segment `id`, a file of `len` bytes) is cached: runs of adjacent
    /// missing chunks.
    pub fn missing(&self, id: SegmentId, len: u64, ranges: &[std::ops::Range<u64>]) -> Vec<std::ops::Range<u64>> {
        let mut wanted: Vec<u64> = ranges
            .iter()
            .filter(|r| r.start < r.end)
            .flat_map(|r| r.start / CHUNK_BYTES..=(r.end.min(len).max(1) - 1) / CHUNK_BYTES)
            .filter(|&index| !self.chunks.contains_key(&ChunkKey { segment: id, index }))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
        for index in wanted {
            let (from, to) = (index * CHUNK_BYTES, ((index + 1) * CHUNK_BYTES).min(len));
            match runs.last_mut() {
                Some(run) if run.end == from => run.end = to,
                _ => runs.push(from..to),
            }
        }
        runs
    }

    /// Keeps `bytes`, fetched from offset `start` (a chunk boundary), as
    /// the chunks they hold.
    pub fn store(&self, id: SegmentId, start: u64, bytes: &[u8]) {
        // Held while storing: a `forget` of the segment waits, then drops
        // what this stored.
        let forgotten = self.forgotten.lock();
        if forgotten.contains(&id) {
            return;
        }
        for (n, piece) in bytes.chunks(CHUNK_BYTES as usize).enumerate() {
            self.put(ChunkKey { segment: id, index: start / CHUNK_BYTES + n as u64 }, piece);
        }
    }

    /// A cached chunk's bytes, if its file is there and whole.
    fn get(&self, key: ChunkKey) -> Option<Vec<u8>> {
        self.chunks.get(&key)?;
        let path = chunk_path(&self.dir, key);
        let whole = std::fs::read(&path).ok().and_then(|mut bytes| {
            let crc_at = bytes.len().checked_sub(CRC_LEN as usize)?;
            let crc = u32::from_le_bytes(bytes.get(crc_at..)?.try_into().ok()?);
            bytes.truncate(crc_at);
            (crc32c::crc32c(&bytes) == crc).then_some(bytes)
        });
        if whole.is_none() {
            tracing::warn!(file = %path.display(), "cached chunk unreadable or damaged: fetched again");
            self.chunks.remove(&key);
            let _ = std::fs::remove_file(&path);
        }
        whole
    }

    /// Keeps `bytes` as chunk `key` (a failure to write only costs a later
    /// request, so it is logged, not returned).
    fn put(&self, key: ChunkKey, bytes: &[u8]) {
        // Replacing a cached entry would run the eviction hook, which
        // deletes the file just renamed into place.
        if (bytes.len() as u64 + CRC_LEN) * 8 > self.capacity || self.chunks.contains_key(&key) {
            return;
        }
        let path = chunk_path(&self.dir, key);
        // Two readers may fetch the same chunk at once: each writes a file
        // of its own, and the last rename wins (both hold the same bytes).
        static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!("{}.tmp", NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.write_all(&crc32c::crc32c(bytes).to_le_bytes())
        });
        match written.and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => self.chunks.insert(key, bytes.len() as u64 + CRC_LEN),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "chunk of a cold segment not cached");
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// Drops every chunk of segment `id` (deleted from the store, erased),
    /// and stores none of it from now on.
    pub fn forget(&self, id: SegmentId) {
        {
            let mut forgotten = self.forgotten.lock();
            if forgotten.len() == FORGOTTEN_KEPT {
                forgotten.pop_front();
            }
            forgotten.push_back(id);
        }
        self.forget_where(|segment| segment == id);
    }

    /// Drops every chunk of a segment not in `remote` (at the first use of
    /// the object store: chunks of segments deleted or erased while the
    /// store was closed, or by a read that raced their deletion).
    pub fn keep_only(&self, remote: &std::collections::HashSet<SegmentId>) {
        self.forget_where(|segment| !remote.contains(&segment));
    }

    fn forget_where(&self, gone: impl Fn(SegmentId) -> bool) {
        let dropped = parking_lot::Mutex::new(Vec::new());
        self.chunks.retain(|key, _| {
            let keep = !gone(key.segment);
            if !keep {
                dropped.lock().push(*key);
            }
            keep
        });
        for key in dropped.into_inner() {
            let _ = std::fs::remove_file(chunk_path(&self.dir, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A fetch from `data` that counts its calls and bytes.
    fn reader<'a>(
        data: &'a [u8],
        calls: &'a mut Vec<std::ops::Range<u64>>,
    ) -> impl FnMut(std::ops::Range<u64>) -> Result<Vec<u8>> + 'a {
        move |r: std::ops::Range<u64>| {
            calls.push(r.clone());
            Ok(data[r.start as usize..r.end as usize].to_vec())
        }
    }

    #[test]
    fn reads_any_range_once_from_the_store_then_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = file((CHUNK_BYTES * 3 + 1000) as usize);
        let cache = ChunkCache::open(dir.path(), 64 * CHUNK_BYTES).expect("open");
        let id = SegmentId(7);
        let len = data.len() as u64;
        let ranges = [0..16, CHUNK_BYTES - 10..CHUNK_BYTES + 10, len - 24..len, 5..len, CHUNK_BYTES..2 * CHUNK_BYTES];
        let mut calls = Vec::new();
        for r in &ranges {
            let got = cache.read(id, len, r.clone(), reader(&data, &mut calls)).expect("read");
            assert_eq!(got, &data[r.start as usize..r.end as usize], "{r:?}");
        }
        // 0..16 fetches chunk 0; the second range chunk 1; the third chunk
        // 3 (short); 5..len only chunk 2; the last is all cached.
        assert_eq!(
            calls,
            vec![0..CHUNK_BYTES, CHUNK_BYTES..2 * CHUNK_BYTES, 3 * CHUNK_BYTES..len, 2 * CHUNK_BYTES..3 * CHUNK_BYTES]
        );
        assert_eq!(cache.stats().misses, 4);

        // Reopened: everything is still there.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), 64 * CHUNK_BYTES).expect("reopen");
        let mut calls = Vec::new();
        let got = cache.read(id, len, 0..len, reader(&data, &mut calls)).expect("read");
        assert_eq!(got, data);
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(cache.stats().bytes, len + 4 * CRC_LEN);
    }

    #[test]
    fn missing_names_runs_of_uncached_chunks_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::open(dir.path(), 64 * CHUNK_BYTES).expect("open");
        let id = SegmentId(3);
        let len = CHUNK_BYTES * 6 + 10;
        cache.store(id, 2 * CHUNK_BYTES, &file(CHUNK_BYTES as usize));
        let c = CHUNK_BYTES;
        let ranges = [0..10, c + 5..c + 9, 2 * c..2 * c + 1, 4 * c - 1..5 * c + 1, 6 * c..len, 5..6];
        assert_eq!(cache.missing(id, len, &ranges), vec![0..2 * c, 3 * c..len]);
        assert!(cache.missing(id, len, &[]).is_empty());
        let cached = 2 * c..3 * c;
        assert!(cache.missing(id, len, std::slice::from_ref(&cached)).is_empty());
    }

    #[test]
    fn a_damaged_chunk_is_fetched_again_and_a_torn_write_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = file(5000);
        let cache = ChunkCache::open(dir.path(), 64 * CHUNK_BYTES).expect("open");
        let id = SegmentId(9);
        let mut calls = Vec::new();
        cache.read(id, 5000, 0..5000, reader(&data, &mut calls)).expect("read");
        let path = chunk_path(dir.path(), ChunkKey { segment: id, index: 0 });
        let mut bytes = std::fs::read(&path).expect("chunk file");
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        std::fs::write(dir.path().join("0000000000000009-1.tmp"), b"torn").expect("torn");
        let cache = ChunkCache::open(dir.path(), 64 * CHUNK_BYTES).expect("reopen");
        assert!(!dir.path().join("0000000000000009-1.tmp").exists());
        let mut calls = Vec::new();
        let got = cache.read(id, 5000, 90..110, reader(&data, &mut calls)).expect("read");
        assert_eq!(got, &data[90..110]);
        assert_eq!(calls, vec![0..5000]);
    }

    #[test]
    fn stays_within_its_capacity_and_forgets_a_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = file((CHUNK_BYTES * 40) as usize);
        let cache = ChunkCache::open(dir.path(), 16 * CHUNK_BYTES).expect("open");
        let len = data.len() as u64;
        for seg in 1..=3 {
            let mut calls = Vec::new();
            let got = cache.read(SegmentId(seg), len, 0..len, reader(&data, &mut calls)).expect("read");
            assert_eq!(got.len() as u64, len);
        }
        let on_disk = |dir: &Path| -> u64 {
            std::fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").metadata().expect("meta").len()).sum()
        };
        assert!(cache.stats().bytes <= 16 * CHUNK_BYTES, "{:?}", cache.stats());
        assert_eq!(on_disk(dir.path()), cache.stats().bytes);
        cache.forget(SegmentId(3));
        assert_eq!(on_disk(dir.path()), cache.stats().bytes);
        assert!(
            std::fs::read_dir(dir.path())
                .expect("dir")
                .all(|e| { !e.expect("entry").file_name().to_string_lossy().starts_with("0000000000000003-") })
        );
    }
}
