//! The store: WAL, head, segments and catalog behind one handle.
//!
//! ```text
//!  append(batch)
//!    index by partition ──► WAL append (group commit) ──► fsync ──► Ok(lsn)
//!                                   │ under the append lock, in LSN order
//!                                   ▼
//!                             head.insert(chunks)  (visible to snapshots at once;
//!                                                   a chunk: the record + its rows' indices)
//!
//!  sealer thread, every tick
//!    head.due() ─► pipeline ─► write segment + fsync ─► catalog commit
//!               ─► swap catalog, drop sealed chunks (one write lock, atomically)
//!               ─► WAL truncate_before(min LSN still in head)
//! ```
//!
//! Invariants:
//! - An event is in exactly one of: the head, or a segment named by the
//!   catalog. A snapshot reads catalog and head under one lock, so it never
//!   sees an event twice or misses one mid-seal.
//! - A partition's events from record `lsn` are skipped at replay iff the
//!   catalog's seal watermark of that partition is `>= lsn`.
//! - WAL files are deleted only after the catalog that covers their events
//!   is durable.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::buffers::BufferPool;
use crate::error::{IoContext, Result, StorageError};
use crate::event::EventBatch;
use crate::failpoint;
use crate::head::{Head, HeadChunk, Indexed, Partitioning, SealCandidate};
use crate::ids::{Lsn, SegmentId};
use crate::manifest::{
    Catalog, CatalogEdit, Level, Manifest, PartitionKey, SealWatermark, SegmentMeta, Tier, sync_dir,
};
use crate::seal::{PipelineOutput, SealContext, SealKind, SealPipeline, SidecarReader};
use crate::segment::{BlockCache, SegmentReader, SegmentSummary, SegmentWriteOptions, write_segment};
use crate::wal::{Wal, WalConfig, Written, decode_encoded_record, decode_record, encode_batch_into};

#[cfg(test)]
mod tests;

mod space;

/// Storage settings. Every field has a default; see `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Number of dimension shards (`hash(advertiser_id) mod shards`). Default 4.
    pub shards: u32,
    /// Width of a time bucket in ms. Default 3_600_000 (one hour).
    pub bucket_width_ms: i64,
    /// A head partition seals once it holds this many rows. Default 1_000_000.
    pub seal_max_rows: usize,
    /// A head partition seals once its oldest event arrived this long ago. Default 30_000.
    pub seal_max_age_ms: u64,
    /// How often the sealer looks for due partitions, in ms. Default 1_000.
    pub seal_interval_ms: u64,
    /// Rows per segment block. Default 65_536.
    pub block_rows: usize,
    /// zstd level for segment blocks. Default 1: on ad events it compresses
    /// as well as 3 (31.2 vs 31.4 bytes per event) and seals 20% faster.
    pub zstd_level: i32,
    /// WAL file size before rotation. Default 64 MiB.
    pub wal_file_size_bytes: u64,
    /// fsync the WAL before acknowledging. Default true; turn off only for
    /// throwaway data (tests, benchmarks of everything but durability).
    pub fsync: bool,
    /// A partition with this many provisional raw segments is compacted
    /// into one (seals every `seal_max_age_ms` make many small segments
    /// before the bucket closes); 0 turns compaction off. Default 8.
    pub compact_min_segments: usize,
    /// A bucket closes (and is re-sealed as final) once the newest event
    /// time is this far past its end. Default 86_400_000 (24 h); the server
    /// sets it from `ingest.allowed_lateness_ms`.
    pub allowed_lateness_ms: i64,
    /// A bucket also closes once the wall clock is `allowed_lateness_ms`
    /// past its end and no event has been appended for this long: when
    /// traffic stops, the last buckets still become final. (While events
    /// flow, event time closes buckets; closing on the clock then would
    /// re-finalize every bucket of a historical load at each seal pass.)
    /// Default 60_000; 0 turns closing on the wall clock off.
    pub close_idle_ms: u64,
    /// Bytes of checked, decompressed segment blocks kept for queries (see
    /// `BlockCache`); 0 turns the cache off. Default 268_435_456 (256 MiB).
    pub block_cache_bytes: u64,
    /// Appends are refused with [`StorageError::HeadFull`] while the head
    /// holds this many bytes of unsealed events ([`Head::bytes`]), and from
    /// half of it on the sealer seals every partition at each pass, however
    /// young. `None` or `Some(0)`: no limit. Default `None`; the server sets
    /// a quarter of the memory.
    pub max_head_bytes: Option<u64>,
    /// Appends are refused with [`StorageError::DiskLow`] while the data
    /// directory's file system has less than this many bytes free, before
    /// a write fails for want of space. 0 turns the check off. Default
    /// 268_435_456 (256 MiB).
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            shards: 4,
            bucket_width_ms: 3_600_000,
            seal_max_rows: 1_000_000,
            seal_max_age_ms: 30_000,
            seal_interval_ms: 1_000,
            block_rows: 65_536,
            zstd_level: 1,
            wal_file_size_bytes: 64 << 20,
            fsync: true,
            compact_min_segments: 8,
            allowed_lateness_ms: 86_400_000,
            close_idle_ms: 60_000,
            block_cache_bytes: 256 << 20,
            max_head_bytes: None,
            min_free_bytes: 256 << 20,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StorageError::Config(m.to_string()));
        if self.shards == 0 || self.shards > 4096 {
            return bad("storage.shards must be between 1 and 4096");
        }
        if self.bucket_width_ms < 60_000 || 86_400_000 % self.bucket_width_ms != 0 {
            return bad("storage.bucket_width_ms must be at least 60000 and divide a day evenly");
        }
        if self.seal_max_rows == 0 {
            return bad("storage.seal_max_rows must be positive");
        }
        if self.block_rows < 128 {
            return bad("storage.block_rows must be at least 128");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad("storage.zstd_level must be between 1 and 22");
        }
        if self.allowed_lateness_ms < 0 {
            return bad("allowed lateness must not be negative");
        }
        if self.wal_file_size_bytes < 4096 {
            return bad("storage.wal_file_size_bytes must be at least 4096");
        }
        Ok(())
    }

    pub fn partitioning(&self) -> Partitioning {
        Partitioning { bucket_width_ms: self.bucket_width_ms, shards: self.shards }
    }
}

/// A segment the catalog names but that could not be opened.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSegment {
    pub meta: SegmentMeta,
    pub error: String,
}

/// A live segment: its catalog entry and its open reader.
#[derive(Clone)]
pub struct LiveSegment {
    pub meta: SegmentMeta,
    pub reader: Arc<SegmentReader>,
}

/// A consistent view of the store: the catalog, its open segments and the
/// head chunks, all as of one instant. Cheap to take (clones of `Arc`s).
#[derive(Clone)]
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub segments: Vec<LiveSegment>,
    pub head: Vec<(PartitionKey, HeadChunk)>,
    pub damaged: Vec<DamagedSegment>,
    /// Width of the time buckets the head is partitioned by.
    pub bucket_width_ms: i64,
}

impl Snapshot {
    pub fn head_rows(&self) -> usize {
        self.head.iter().map(|(_, c)| c.num_rows()).sum()
    }

    pub fn segment_rows(&self) -> u64 {
        self.segments.iter().map(|s| s.meta.rows).sum()
    }

    /// Every event of the snapshot, decoded: segments first, then the head.
    /// Fails on the first damaged block. For tests, reprocessing and exports,
    /// not for queries (they scan, see [`crate::ScanRequest`]).
    pub fn read_events(&self) -> Result<Vec<EventBatch>> {
        let mut out = Vec::with_capacity(self.segments.len() + self.head.len());
        for s in &self.segments {
            out.push(s.reader.read_batch()?);
        }
        for (_, c) in &self.head {
            out.push(c.batch()?);
        }
        Ok(out)
    }
}

struct Visible {
    catalog: Arc<Catalog>,
    readers: HashMap<SegmentId, Arc<SegmentReader>>,
    head: Head,
    damaged: Vec<DamagedSegment>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    appended_rows: AtomicU64,
    sealed_rows: AtomicU64,
    seals: AtomicU64,
    seal_errors: AtomicU64,
    head_full_refusals: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub appended_rows: u64,
    pub sealed_rows: u64,
    pub seals: u64,
    pub seal_errors: u64,
    pub head_rows: usize,
    pub head_partitions: usize,
    /// Arrow bytes of the unsealed events.
    pub head_bytes: u64,
    /// `max_head_bytes`, 0 when there is none.
    pub head_limit_bytes: u64,
    /// Appends refused because the head was full.
    pub head_full_refusals: u64,
    /// Free bytes on the data directory's file system.
    pub disk_free_bytes: u64,
    /// `min_free_bytes`.
    pub disk_min_free_bytes: u64,
    /// Appends refused for want of space.
    pub disk_low_refusals: u64,
    /// Whether the WAL failed (a restart is needed to append again).
    pub wal_poisoned: bool,
    /// I/O errors met since the process started (see [`crate::io_errors_total`]).
    pub io_errors: u64,
    pub segments: usize,
    pub wal_appends: u64,
    pub wal_fsyncs: u64,
    /// Bytes held by the block cache.
    pub block_cache_bytes: u64,
}

/// One partition's worth of sealing: head chunks and/or segments to replace.
struct SealJob {
    partition: PartitionKey,
    kind: SealKind,
    is_final: bool,
    head: SealCandidate,
    replaces: Vec<SegmentMeta>,
}

impl SealJob {
    fn context<'a>(&'a self, snapshot: &'a Snapshot, bucket_width_ms: i64) -> SealContext<'a> {
        SealContext {
            partition: self.partition,
            bucket_width_ms,
            kind: self.kind,
            snapshot,
            is_final: self.is_final,
            replaces: &self.replaces,
        }
    }
}

/// A job whose segment is written but not yet committed.
struct PreparedSeal {
    job: SealJob,
    segment: Option<(SegmentMeta, Arc<SegmentReader>)>,
    output: PipelineOutput,
    rows_in: usize,
}

/// What one sealer pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    pub partitions: usize,
    pub rows_in: usize,
    pub rows_out: usize,
    /// Segments written.
    pub segments: Vec<SegmentId>,
    /// Segments replaced (re-seals).
    pub replaced: Vec<SegmentId>,
}

impl SealReport {
    /// Adds what another pass did.
    fn absorb(&mut self, other: SealReport) {
        self.partitions += other.partitions;
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.segments.extend(other.segments);
        self.replaced.extend(other.replaced);
    }
}

struct Inner {
    config: StoreConfig,
    segments_dir: PathBuf,
    partitioning: Partitioning,
    wal: Wal,
    manifest: Manifest,
    visible: RwLock<Visible>,
    seal_lock: Mutex<()>,
    pipeline: SealPipeline,
    counters: Counters,
    stop: AtomicBool,
    sealer: Mutex<Option<JoinHandle<()>>>,
    /// Newest event time appended or recovered; buckets close relative to it.
    max_event_ts: AtomicI64,
    /// When the store opened; `last_append_ms` counts from it.
    opened: Instant,
    /// Milliseconds from `opened` to the last append (0 before any).
    last_append_ms: AtomicU64,
    /// Blocks queries read, shared by every segment reader.
    block_cache: Arc<BlockCache>,
    /// WAL payload buffers kept between appends.
    encode_buffers: Arc<BufferPool>,
    /// Whether the last head-room check found the head full (logged once
    /// per change, not once per refused request).
    head_full: AtomicBool,
    /// Free space, and the sealer's failures.
    disk: space::DiskWatch,
    /// The exclusive lock on `{data_dir}/LOCK`, held until `close`: one
    /// process writes a data directory (the head maps WAL files, trusting
    /// that no one else rewrites them).
    lock: Mutex<Option<File>>,
    /// Threads for seals, compactions and verification. Apart from the
    /// global rayon pool that queries (and ingest parsing) use: a query's
    /// tasks queued there behind seal tasks of seconds each, and took
    /// seconds instead of tens of milliseconds while a load was being
    /// sealed. In two pools, the OS shares the cores between them instead.
    background: rayon::ThreadPool,
}

/// At most this many encode buffers are kept, each at most this large, so
/// at most 128 MiB sit idle.
const ENCODE_BUFFERS_KEPT: usize = 8;
const ENCODE_BUFFER_MAX_KEPT_BYTES: usize = 16 << 20;

/// Takes the exclusive lock on `{data_dir}/LOCK` (created if absent), or
/// fails with [`StorageError::DataDirInUse`] if another process, or another
/// open `Store` of this one, holds it. The kernel releases it if the
/// process dies.
fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StorageError::DataDirInUse { path: data_dir.to_path_buf() }),
        Err(e) => Err(StorageError::Io { path, source: e.into() }),
    }
}

/// Smallest WAL payload whose rows the head keeps as a mapping of the WAL
/// file rather than as a copy in memory: a mapping costs a system call and
/// a memory map of the process (see [`Written::map`]).
const MIN_MAPPED_PAYLOAD_BYTES: usize = 256 << 10;

/// The head's chunks of one WAL record, by partition: rows of the payload
/// as written, decoded in place. A payload of [`MIN_MAPPED_PAYLOAD_BYTES`]
/// or more is mapped from the WAL file: the page cache holds those bytes
/// once written, and keeping the rows instead kept a second copy, in memory
/// the kernel had to map and zero page by page (a fifth of the time of an
/// Arrow load). A smaller payload, or one that could not be mapped, is
/// copied: the rows may be slices of the request body, which the head would
/// then keep whole.
#[allow(unsafe_code)]
fn head_chunks(lsn: Lsn, written: &Written, payload: &[u8], indexed: Indexed) -> Vec<(PartitionKey, HeadChunk)> {
    let mapped = (written.len() >= MIN_MAPPED_PAYLOAD_BYTES).then(|| written.map()).flatten();
    let bytes = mapped.unwrap_or_else(|| bytes::Bytes::copy_from_slice(payload));
    // SAFETY: `bytes` are the payload `encode_batch_into` wrote for
    // `indexed`: a copy of it, or its mapping from the WAL file, whose
    // bytes do not change while it lives (see `Written::map`).
    let stored = indexed.stored_rows();
    let source = match unsafe { decode_encoded_record(bytes.into()) } {
        Ok(record) if record.batch.num_rows() == indexed.rows.num_rows() => record.batch,
        // Not expected: the payload is the encoding of these rows.
        Ok(_) | Err(_) => indexed.rows,
    };
    indexed.parts.into_iter().map(|(key, rows)| (key, HeadChunk::picked(lsn, source.clone(), rows, stored))).collect()
}

/// The rows of one batch that an append stores: all of them, or those at
/// `keep` (ascending row indexes).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub batch: &'a EventBatch,
    pub keep: Option<&'a [u32]>,
}

impl Rows<'_> {
    /// How many rows are selected.
    pub fn len(&self) -> usize {
        self.keep.map_or(self.batch.num_rows(), <[u32]>::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why [`Store::append_all`] failed, and how many of its leading `rows`
/// were stored before it did: those are durable, in the head, and counted.
#[derive(Debug)]
pub struct PartlyStored {
    pub stored: usize,
    pub error: StorageError,
}

impl From<PartlyStored> for StorageError {
    fn from(e: PartlyStored) -> Self {
        e.error
    }
}

/// Handle to an open store. Clones share the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`: loads the catalog, removes
    /// orphan segment files, opens segments (reporting damaged ones), and
    /// replays the WAL into the head.
    pub fn open(data_dir: &Path, config: StoreConfig, pipeline: SealPipeline) -> Result<Store> {
        config.validate()?;
        std::fs::create_dir_all(data_dir).at(data_dir)?;
        let lock = lock_data_dir(data_dir)?;
        let segments_dir = data_dir.join("segments");
        std::fs::create_dir_all(&segments_dir).at(&segments_dir)?;
        let manifest = Manifest::open(data_dir)?;
        for orphan in manifest.remove_orphans(&segments_dir)? {
            tracing::info!(path = %orphan.display(), "removed segment file not in the catalog");
        }
        let mut catalog = manifest.current();
        let wanted = (config.shards, config.bucket_width_ms);
        match catalog.partitioning {
            Some(have) if have != wanted => {
                return Err(StorageError::Config(format!(
                    "{} was created with shards = {} and bucket_width_ms = {}; the configuration says shards = {} \
                     and bucket_width_ms = {} (these cannot change for an existing data directory)",
                    data_dir.display(),
                    have.0,
                    have.1,
                    wanted.0,
                    wanted.1
                )));
            }
            Some(_) => {}
            None => {
                let edit = CatalogEdit { set_partitioning: Some(wanted), ..CatalogEdit::default() };
                catalog = manifest.commit(&edit)?;
            }
        }
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("adstore-seal-{i}"))
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start the seal threads: {e}")))?;
        let block_cache = Arc::new(BlockCache::new(config.block_cache_bytes));
        let mut readers = HashMap::new();
        let mut damaged = Vec::new();
        for meta in catalog.segments.values().filter(|m| m.tier == Tier::Local) {
            let path = segments_dir.join(meta.id.file_name());
            match SegmentReader::open(meta.id, &path) {
                Ok(r) => {
                    readers.insert(meta.id, Arc::new(r.with_cache(block_cache.clone())));
                }
                Err(e) => {
                    tracing::error!(segment = %meta.id, error = %e, "damaged segment: not served");
                    damaged.push(DamagedSegment { meta: meta.clone(), error: e.to_string() });
                }
            }
        }

        let partitioning = config.partitioning();
        let mut head = Head::default();
        let (now, wall_now_ms) = (Instant::now(), now_ms());
        let max_age = Duration::from_millis(config.seal_max_age_ms);
        let wal_config =
            WalConfig { dir: data_dir.join("wal"), file_size_bytes: config.wal_file_size_bytes, fsync: config.fsync };
        let wal = Wal::open(wal_config, |lsn, payload| {
            let record = decode_record(payload)?;
            let indexed = partitioning.index_stored(record.batch, record.dropped);
            let stored = indexed.stored_rows();
            let chunks = indexed
                .parts
                .into_iter()
                .filter(|(p, _)| catalog.sealed_lsn(*p) < lsn)
                .map(|(p, rows)| (p, HeadChunk::picked(lsn, indexed.rows.clone(), rows, stored)))
                .collect();
            // Replayed events keep the age they had: a server restarted more
            // often than every `seal_max_age_ms` still seals them. (Records
            // written before arrival times were noted count as due.)
            let age = record.arrived_ms.map_or(max_age, |ms| {
                Duration::from_millis(u64::try_from(wall_now_ms.saturating_sub(ms)).unwrap_or(0)).min(max_age)
            });
            head.insert(chunks, now.checked_sub(age).unwrap_or(now));
            Ok(())
        })?;
        tracing::info!(segments = readers.len(), damaged = damaged.len(), head_rows = head.rows(), "store opened");
        let max_event_ts = catalog
            .segments
            .values()
            .map(|m| m.max_ts)
            .chain(head.snapshot().iter().filter_map(|(_, c)| c.ts().max()))
            .max()
            .unwrap_or(i64::MIN);
        let inner = Inner {
            config,
            segments_dir,
            partitioning,
            wal,
            manifest,
            visible: RwLock::new(Visible { catalog, readers, head, damaged }),
            seal_lock: Mutex::new(()),
            pipeline,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            sealer: Mutex::new(None),
            max_event_ts: AtomicI64::new(max_event_ts),
            opened: Instant::now(),
            last_append_ms: AtomicU64::new(0),
            block_cache,
            encode_buffers: BufferPool::new(ENCODE_BUFFERS_KEPT, ENCODE_BUFFER_MAX_KEPT_BYTES),
            head_full: AtomicBool::new(false),
            disk: space::DiskWatch::new(data_dir),
            lock: Mutex::new(Some(lock)),
            background,
        };
        let store = Store { inner: Arc::new(inner) };
        let sidecars = SidecarReader { segments_dir: store.inner.segments_dir.clone() };
        store.inner.pipeline.recover(&store.snapshot(), &sidecars)?;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn partitioning(&self) -> Partitioning {
        self.inner.partitioning
    }

    /// Appends a batch durably. Returns once the WAL record holding it is
    /// fsynced; the events are visible to snapshots from that moment on
    /// (in fact slightly before: from when the record is written).
    pub fn append(&self, batch: &EventBatch) -> Result<Lsn> {
        self.append_rows(batch, None)
    }

    /// Appends the rows of `batch` at `keep` (ascending), or all rows when
    /// `None`, as [`Store::append`] does. The rows are copied at most once.
    pub fn append_rows(&self, batch: &EventBatch, keep: Option<&[u32]>) -> Result<Lsn> {
        self.append_all(&[Rows { batch, keep }]).map_err(|e| e.error)
    }

    /// Appends the selected rows of several batches, one WAL record each,
    /// and returns once one fsync covers them all (the LSN of the last).
    /// A request that arrives as several batches thus waits once, and its
    /// batches are not joined first: each is grouped, encoded and written
    /// while its rows are still in the CPU's cache (grouping and writing a
    /// 64K-row request at once made copying into the page cache six times
    /// as costly). The head room is checked once, before the first.
    ///
    /// A crash can keep some of the batches and not others. The request was
    /// not acknowledged then; replay puts the kept events' keys back in the
    /// dedupe index, so its retry stores the rest and counts them as
    /// duplicates. A failure part way (a record that finds the disk full)
    /// ends the same way without the crash: the records written before it
    /// stay in the head and are made durable, and [`PartlyStored::stored`]
    /// says how many of `rows` they hold, so the caller keeps their keys
    /// and forgets only the rest's. Returns `Lsn(0)` when no row is selected.
    pub fn append_all(&self, rows: &[Rows<'_>]) -> std::result::Result<Lsn, PartlyStored> {
        let none = |error| PartlyStored { stored: 0, error };
        if rows.iter().all(Rows::is_empty) {
            return Ok(Lsn(0));
        }
        if self.inner.stop.load(Ordering::Acquire) {
            return Err(none(StorageError::ShuttingDown));
        }
        self.check_disk_space().map_err(none)?;
        self.check_head_room().map_err(none)?;
        let mut last = Lsn(0);
        for (i, r) in rows.iter().enumerate() {
            if r.is_empty() {
                continue;
            }
            match self.write_rows(*r) {
                Ok(lsn) => last = lsn,
                Err(error) => {
                    // The records before this one are in the head. Once
                    // durable they stay counted; if the log cannot make
                    // them so it is poisoned, and a restart replays
                    // whatever did reach the disk.
                    let stored = if last != Lsn(0) && self.inner.wal.wait_written(last).is_ok() { i } else { 0 };
                    return Err(PartlyStored { stored, error });
                }
            }
        }
        self.inner.wal.wait_written(last).map_err(none)?;
        Ok(last)
    }

    /// One record of [`Store::append_all`]: groups the rows, writes them to
    /// the WAL (not waiting for its fsync) and puts them in the head.
    fn write_rows(&self, r: Rows<'_>) -> Result<Lsn> {
        let indexed = self.inner.partitioning.index(r.batch, r.keep)?;
        let mut payload = self.inner.encode_buffers.take();
        encode_batch_into(&indexed.rows, &indexed.dropped, Some(now_ms()), payload.vec_mut())?;
        let appended = indexed.stored_rows() as u64;
        let max_ts = indexed.max_ts;
        let lsn = self.inner.wal.write_with(&payload, |lsn, written| {
            let chunks = head_chunks(lsn, &written, &payload, indexed);
            self.inner.visible.write().head.insert(chunks, Instant::now());
        })?;
        self.inner.counters.appended_rows.fetch_add(appended, Ordering::Relaxed);
        if let Some(max) = max_ts {
            self.inner.max_event_ts.fetch_max(max, Ordering::AcqRel);
        }
        let since_open = u64::try_from(self.inner.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_append_ms.fetch_max(since_open, Ordering::Relaxed);
        Ok(lsn)
    }

    /// `Err(`[`StorageError::HeadFull`]`)` while the head holds
    /// `max_head_bytes` or more of unsealed events. [`Store::append_rows`]
    /// checks it first; a server can check it before parsing a request.
    /// Appends that find room at the same moment may together take the head
    /// past the limit; an empty head always takes the next append.
    pub fn check_head_room(&self) -> Result<()> {
        let Some(limit) = self.head_limit() else { return Ok(()) };
        let head_bytes = self.inner.visible.read().head.bytes();
        let full = head_bytes >= limit;
        if full != self.inner.head_full.swap(full, Ordering::AcqRel) {
            if full {
                tracing::warn!(head_bytes, limit_bytes = limit, "head full: appends refused until seals catch up");
            } else {
                tracing::info!(head_bytes, limit_bytes = limit, "head has room again: appends accepted");
            }
        }
        if full {
            self.inner.counters.head_full_refusals.fetch_add(1, Ordering::Relaxed);
            let retry_after_s = self.inner.config.seal_interval_ms.div_ceil(1000).max(1);
            return Err(StorageError::HeadFull { head_bytes, limit_bytes: limit, retry_after_s });
        }
        Ok(())
    }

    /// `max_head_bytes`, when there is one.
    fn head_limit(&self) -> Option<u64> {
        self.inner.config.max_head_bytes.filter(|&l| l > 0)
    }

    /// A consistent view of catalog, segments and head.
    pub fn snapshot(&self) -> Snapshot {
        let v = self.inner.visible.read();
        let segments = v
            .catalog
            .segments
            .values()
            .filter_map(|m| v.readers.get(&m.id).map(|r| LiveSegment { meta: m.clone(), reader: r.clone() }))
            .collect();
        Snapshot {
            catalog: v.catalog.clone(),
            segments,
            head: v.head.snapshot(),
            damaged: v.damaged.clone(),
            bucket_width_ms: self.inner.config.bucket_width_ms,
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.visible.read().catalog.clone()
    }

    pub fn damaged(&self) -> Vec<DamagedSegment> {
        self.inner.visible.read().damaged.clone()
    }

    pub fn stats(&self) -> StoreStats {
        let v = self.inner.visible.read();
        let c = &self.inner.counters;
        let wal = self.inner.wal.stats();
        StoreStats {
            appended_rows: c.appended_rows.load(Ordering::Relaxed),
            sealed_rows: c.sealed_rows.load(Ordering::Relaxed),
            seals: c.seals.load(Ordering::Relaxed),
            seal_errors: c.seal_errors.load(Ordering::Relaxed),
            head_rows: v.head.rows(),
            head_partitions: v.head.partition_count(),
            head_bytes: v.head.bytes(),
            head_limit_bytes: self.head_limit().unwrap_or(0),
            head_full_refusals: c.head_full_refusals.load(Ordering::Relaxed),
            disk_free_bytes: self.disk_free_bytes(),
            disk_min_free_bytes: self.inner.config.min_free_bytes,
            disk_low_refusals: self.disk_low_refusals(),
            wal_poisoned: self.inner.wal.poisoned().is_some(),
            io_errors: crate::error::io_errors_total(),
            segments: v.readers.len(),
            wal_appends: wal.appends,
            wal_fsyncs: wal.fsyncs,
            block_cache_bytes: self.inner.block_cache.used_bytes(),
        }
    }

    /// Seals the partitions that are due (row threshold or age), or every
    /// partition while the head holds half of `max_head_bytes` or more:
    /// waiting for partitions to age would leave appends refused meanwhile.
    pub fn seal_due(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let head_bytes = self.inner.visible.read().head.bytes();
        let pressed = self.head_limit().is_some_and(|limit| head_bytes >= limit / 2);
        if pressed {
            tracing::debug!(head_bytes, "head at half its limit or more: sealing every partition");
        }
        self.seal_head(|_| pressed)
    }

    /// Seals every head partition now (tests, shutdown, benchmarks).
    pub fn seal_all(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        self.seal_head(|_| true)
    }

    /// Seals head partitions that are due or for which `force` holds.
    /// Callers hold `seal_lock`.
    fn seal_head(&self, force: impl Fn(&PartitionKey) -> bool) -> Result<SealReport> {
        let inner = &self.inner;
        let max_age = Duration::from_millis(inner.config.seal_max_age_ms);
        let now = Instant::now();
        let candidates: Vec<SealCandidate> =
            inner.visible.read().head.due(now, inner.config.seal_max_rows, max_age, force);
        // One commit per group of at most `seal_max_rows` rows (and at least
        // one partition). A pass over a large head, as under pressure, then
        // holds the sealed copy of one group at a time instead of the whole
        // head's, and drops each group's head chunks once committed (their
        // memory goes once no other partition's slice of the same append
        // still holds it).
        let mut report = SealReport::default();
        let mut group = Vec::new();
        let mut group_rows = 0;
        for c in candidates {
            let rows = c.rows();
            if !group.is_empty() && group_rows + rows > inner.config.seal_max_rows {
                report.absorb(self.run_jobs(std::mem::take(&mut group))?);
                group_rows = 0;
            }
            group_rows += rows;
            group.push(SealJob {
                partition: c.partition,
                kind: SealKind::Seal,
                is_final: false,
                head: c,
                replaces: vec![],
            });
        }
        report.absorb(self.run_jobs(group)?);
        Ok(report)
    }

    /// Re-seals every partition of the given buckets from its raw segments
    /// (after sealing whatever the head holds for them): with
    /// [`SealKind::Final`] when buckets close, with [`SealKind::Reprocess`]
    /// when rules changed. Each partition's old segments are replaced by one
    /// new segment in a single catalog commit, so a snapshot sees all old or
    /// all new. Output is final when the bucket has closed.
    /// The start of every bucket in `[from_ms, to_ms)` that holds raw
    /// events, sealed or in the head, sorted: what a re-seal of the range
    /// has to visit (a range of centuries holds few).
    pub fn buckets_with_data(&self, from_ms: i64, to_ms: i64) -> Vec<i64> {
        let width = self.inner.config.bucket_width_ms;
        let first = from_ms.div_euclid(width).saturating_mul(width);
        let snapshot = self.snapshot();
        let segments = snapshot.segments.iter().filter(|s| s.meta.level == Level::Raw).map(|s| s.meta.partition);
        let mut buckets: Vec<i64> = segments
            .chain(snapshot.head.iter().map(|(p, _)| *p))
            .map(|p| p.bucket_start_ms)
            .filter(|b| *b >= first && *b < to_ms)
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }

    pub fn reseal_buckets(&self, buckets: &[i64], kind: SealKind) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        self.reseal_locked(buckets, kind)
    }

    fn reseal_locked(&self, buckets: &[i64], kind: SealKind) -> Result<SealReport> {
        let buckets: std::collections::HashSet<i64> = buckets.iter().copied().collect();
        let inner = &self.inner;
        let mut report = self.seal_head(|p| buckets.contains(&p.bucket_start_ms))?;
        let catalog = inner.visible.read().catalog.clone();
        let mut by_partition: BTreeMap<PartitionKey, Vec<SegmentMeta>> = BTreeMap::new();
        for m in catalog.segments_of(Level::Raw) {
            if buckets.contains(&m.partition.bucket_start_ms) {
                by_partition.entry(m.partition).or_default().push(m.clone());
            }
        }
        let jobs: Vec<SealJob> = by_partition
            .into_iter()
            .map(|(partition, replaces)| SealJob {
                partition,
                kind,
                is_final: self.bucket_closed(partition.bucket_start_ms),
                head: SealCandidate { partition, chunks: vec![] },
                replaces,
            })
            .collect();
        report.absorb(self.run_jobs(jobs)?);
        Ok(report)
    }

    /// Closed buckets that still have provisional raw segments: the
    /// sealer's next [`Store::finalize_closed`] re-seals them (ascending).
    pub fn closed_provisional_buckets(&self) -> Vec<i64> {
        let catalog = self.inner.visible.read().catalog.clone();
        let mut buckets: Vec<i64> = catalog
            .segments_of(Level::Raw)
            .filter(|m| !m.is_final && self.bucket_closed(m.partition.bucket_start_ms))
            .map(|m| m.partition.bucket_start_ms)
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }

    /// Whether the bucket has closed: its end plus the allowed lateness is
    /// behind the newest event time seen, or behind the wall clock while
    /// no event has been appended for `close_idle_ms`.
    pub fn bucket_closed(&self, bucket_start_ms: i64) -> bool {
        let config = &self.inner.config;
        let newest = self.inner.max_event_ts.load(Ordering::Acquire);
        let closes_at =
            bucket_start_ms.saturating_add(config.bucket_width_ms).saturating_add(config.allowed_lateness_ms);
        let by_event_time = newest != i64::MIN && closes_at <= newest;
        by_event_time || (self.idle() && closes_at <= now_ms())
    }

    /// Whether wall-clock closing applies: it is on and no event has been
    /// appended for `close_idle_ms`.
    fn idle(&self) -> bool {
        let idle_ms = self.inner.config.close_idle_ms;
        let since_open = u64::try_from(self.inner.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        idle_ms > 0 && since_open.saturating_sub(self.inner.last_append_ms.load(Ordering::Relaxed)) >= idle_ms
    }

    /// Newest event time accepted so far (`i64::MIN` if none).
    pub fn max_event_ts(&self) -> i64 {
        self.inner.max_event_ts.load(Ordering::Acquire)
    }

    /// Re-seals, as final, every closed bucket that still has provisional
    /// raw segments (including buckets a backfill re-opened).
    pub fn finalize_closed(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let buckets = self.closed_provisional_buckets();
        if buckets.is_empty() {
            return Ok(SealReport::default());
        }
        tracing::info!(buckets = buckets.len(), "finalizing closed buckets");
        self.reseal_locked(&buckets, SealKind::Final)
    }

    /// Merges the provisional raw segments of every partition that has at
    /// least `compact_min_segments` of them (and whose bucket has not
    /// closed: those are finalized instead) into one segment per partition.
    pub fn compact_small(&self) -> Result<SealReport> {
        let min = self.inner.config.compact_min_segments;
        if min < 2 {
            return Ok(SealReport::default());
        }
        let _one_sealer = self.inner.seal_lock.lock();
        let catalog = self.inner.visible.read().catalog.clone();
        let mut by_partition: BTreeMap<PartitionKey, Vec<SegmentMeta>> = BTreeMap::new();
        for m in catalog.segments_of(Level::Raw) {
            by_partition.entry(m.partition).or_default().push(m.clone());
        }
        let jobs: Vec<SealJob> = by_partition
            .into_iter()
            .filter(|(p, segs)| {
                segs.len() >= min && segs.iter().any(|m| !m.is_final) && !self.bucket_closed(p.bucket_start_ms)
            })
            .map(|(partition, replaces)| SealJob {
                partition,
                kind: SealKind::Compact,
                is_final: false,
                head: SealCandidate { partition, chunks: vec![] },
                replaces,
            })
            .collect();
        if jobs.is_empty() {
            return Ok(SealReport::default());
        }
        tracing::debug!(partitions = jobs.len(), "compacting small provisional segments");
        self.run_jobs(jobs)
    }

    /// Runs the pipeline for every job in parallel, writes their segments,
    /// and commits them all in one catalog edit. Callers hold `seal_lock`.
    fn run_jobs(&self, jobs: Vec<SealJob>) -> Result<SealReport> {
        let inner = &self.inner;
        if jobs.is_empty() {
            return Ok(SealReport::default());
        }
        let snapshot = self.snapshot();
        let results: Vec<Result<PreparedSeal>> =
            inner.background.install(|| jobs.into_par_iter().map(|j| self.prepare(j, &snapshot)).collect());
        let mut prepared = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => prepared.push(p),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            self.abandon(&prepared, &snapshot);
            return Err(e);
        }

        let mut edit = CatalogEdit::default();
        let mut report = SealReport::default();
        for p in &prepared {
            if p.job.kind == SealKind::Seal {
                edit.sealed.push(SealWatermark { partition: p.job.partition, lsn: p.job.head.max_lsn() });
            }
            if let Some((meta, _)) = &p.segment {
                edit.add.push(meta.clone());
                report.segments.push(meta.id);
            }
            edit.remove.extend(p.job.replaces.iter().map(|m| m.id));
            report.replaced.extend(p.job.replaces.iter().map(|m| m.id));
            report.partitions += 1;
            report.rows_in += p.rows_in;
            report.rows_out += p.output.events.num_rows();
        }
        let catalog = match inner.manifest.commit(&edit) {
            Ok(c) => c,
            Err(e) => {
                self.abandon(&prepared, &snapshot);
                return Err(e);
            }
        };
        failpoint::hit("seal_after_commit");
        if let Some(p) = prepared.first() {
            failpoint::hit(&format!("{}_after_commit", p.job.kind.name()));
        }
        {
            let mut v = inner.visible.write();
            v.catalog = catalog;
            let now = Instant::now();
            for p in &prepared {
                if let Some((meta, reader)) = &p.segment {
                    v.readers.insert(meta.id, reader.clone());
                }
                for old in &p.job.replaces {
                    v.readers.remove(&old.id);
                }
                if !p.job.head.chunks.is_empty() {
                    v.head.remove_sealed(p.job.partition, p.job.head.chunks.len(), now);
                }
            }
        }
        for p in &prepared {
            inner.pipeline.committed(&p.job.context(&snapshot, inner.config.bucket_width_ms), &p.output.per_stage);
        }
        // Replaced segments are out of the catalog: their files can go.
        // Snapshots still holding a reader keep the mapping alive.
        for p in &prepared {
            for old in &p.job.replaces {
                self.delete_segment_files(old.id);
            }
        }
        inner.counters.seals.fetch_add(prepared.len() as u64, Ordering::Relaxed);
        inner.counters.sealed_rows.fetch_add(report.rows_out as u64, Ordering::Relaxed);
        if prepared.iter().any(|p| p.job.kind == SealKind::Seal) {
            self.truncate_wal()?;
        }
        Ok(report)
    }

    fn abandon(&self, prepared: &[PreparedSeal], snapshot: &Snapshot) {
        for p in prepared {
            self.inner
                .pipeline
                .aborted(&p.job.context(snapshot, self.inner.config.bucket_width_ms), &p.output.per_stage);
            if let Some((meta, _)) = &p.segment {
                self.delete_segment_files(meta.id);
            }
        }
    }

    /// Removes a segment file and its sidecars (best effort: a leftover is
    /// an orphan that the next open removes).
    fn delete_segment_files(&self, id: SegmentId) {
        let prefix = format!("{id}.");
        let Ok(entries) = std::fs::read_dir(&self.inner.segments_dir) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix)
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not delete replaced segment file");
            }
        }
    }

    /// Runs the pipeline over one job's events and writes the segment and
    /// its sidecars (durably, but not yet in the catalog: until the commit,
    /// a crash leaves orphan files that the next open removes).
    fn prepare(&self, job: SealJob, snapshot: &Snapshot) -> Result<PreparedSeal> {
        let inner = &self.inner;
        let mut batches: Vec<EventBatch> = job.head.chunks.iter().map(HeadChunk::batch).collect::<Result<_>>()?;
        for old in &job.replaces {
            let reader =
                snapshot.segments.iter().find(|s| s.meta.id == old.id).map(|s| s.reader.clone()).ok_or_else(|| {
                    StorageError::Damaged { id: old.id, reason: "segment not readable for re-seal".into() }
                })?;
            batches.push(reader.read_batch()?);
        }
        let events = EventBatch::concat(&batches)?;
        let rows_in = events.num_rows();
        let ctx = job.context(snapshot, inner.config.bucket_width_ms);
        let output = inner.pipeline.run(&ctx, events)?;
        if output.events.is_empty() {
            return Ok(PreparedSeal { job, segment: None, output, rows_in });
        }
        let written = self.write_job_segment(&job, &output);
        match written {
            Ok(segment) => Ok(PreparedSeal { job, segment: Some(segment), output, rows_in }),
            Err(e) => {
                inner.pipeline.aborted(&ctx, &output.per_stage);
                Err(e)
            }
        }
    }

    fn write_job_segment(&self, job: &SealJob, output: &PipelineOutput) -> Result<(SegmentMeta, Arc<SegmentReader>)> {
        let inner = &self.inner;
        let id = inner.manifest.allocate_segment_id()?;
        let path = inner.segments_dir.join(id.file_name());
        let opts = SegmentWriteOptions {
            block_rows: inner.config.block_rows,
            zstd_level: inner.config.zstd_level,
            ..SegmentWriteOptions::default()
        };
        let write = || -> Result<SegmentSummary> {
            let summary = write_segment(&path, &output.events, &opts)?;
            for sidecar in &output.sidecars {
                let path = inner.segments_dir.join(format!("{id}.{}", sidecar.suffix));
                let mut f = std::fs::File::create(&path).at(&path)?;
                std::io::Write::write_all(&mut f, &sidecar.bytes).at(&path)?;
                f.sync_all().at(&path)?;
            }
            sync_dir(&inner.segments_dir)?;
            Ok(summary)
        };
        // A failed write (the disk full, say) leaves no partial files behind
        // for the retries to pile up on.
        let summary = write().inspect_err(|_| self.delete_segment_files(id))?;
        failpoint::hit("seal_after_segment_write");
        failpoint::hit(&format!("{}_after_segment_write", job.kind.name()));
        let reader = Arc::new(SegmentReader::open(id, &path)?.with_cache(inner.block_cache.clone()));
        let max_lsn = job.replaces.iter().map(|m| m.max_lsn).chain([job.head.max_lsn()]).max().unwrap_or_default();
        let meta = SegmentMeta {
            id,
            level: Level::Raw,
            partition: job.partition,
            bucket_width_ms: inner.config.bucket_width_ms,
            min_ts: summary.min_ts,
            max_ts: summary.max_ts,
            rows: summary.rows,
            size_bytes: summary.size_bytes,
            tier: Tier::Local,
            attribution_version: inner.pipeline.rules_version(),
            is_final: job.is_final,
            max_lsn,
            created_ms: now_ms(),
        };
        Ok((meta, reader))
    }

    /// Deletes WAL files whose records are all in segments, and forgets
    /// seal watermarks that no retained record can need.
    fn truncate_wal(&self) -> Result<()> {
        let inner = &self.inner;
        let keep_from = inner.visible.read().head.min_lsn().unwrap_or_else(|| inner.wal.next_lsn());
        let deleted = inner.wal.truncate_before(keep_from)?;
        // Without fsync a deleted file may come back after a crash; keep the
        // watermarks then, so a resurrected record is still skipped.
        if deleted > 0 && inner.config.fsync {
            tracing::debug!(deleted, keep_from = %keep_from, "deleted sealed WAL files");
            let oldest_retained = inner.wal.first_lsn();
            let catalog = inner.manifest.current();
            if catalog.sealed.iter().any(|w| w.lsn < oldest_retained) {
                let edit = CatalogEdit { forget_sealed_below: Some(oldest_retained), ..CatalogEdit::default() };
                let catalog = inner.manifest.commit(&edit)?;
                inner.visible.write().catalog = catalog;
            }
        }
        Ok(())
    }

    /// Checks every checksum of every local segment; a segment that fails is
    /// reported as damaged (`damaged()`, `/health`) and no longer served.
    /// Returns the number of damaged segments found. The sealer thread runs
    /// this once at start, so a large store opens without waiting for it.
    pub fn verify_segments(&self) -> usize {
        let live: Vec<LiveSegment> = self.snapshot().segments;
        let bad: Vec<DamagedSegment> = self.inner.background.install(|| {
            live.par_iter()
                .filter_map(|s| {
                    s.reader.verify().err().map(|e| DamagedSegment { meta: s.meta.clone(), error: e.to_string() })
                })
                .collect()
        });
        if !bad.is_empty() {
            let mut v = self.inner.visible.write();
            for d in &bad {
                tracing::error!(segment = %d.meta.id, error = %d.error, "damaged segment: no longer served");
                v.readers.remove(&d.meta.id);
                if !v.damaged.iter().any(|x| x.meta.id == d.meta.id) {
                    v.damaged.push(d.clone());
                }
            }
        }
        bad.len()
    }

    /// Starts the background sealer thread (idempotent).
    pub fn start_sealer(&self) -> Result<()> {
        let mut slot = self.inner.sealer.lock();
        if slot.is_some() {
            return Ok(());
        }
        let store = self.clone();
        let interval = Duration::from_millis(self.inner.config.seal_interval_ms.max(10));
        let handle = std::thread::Builder::new()
            .name("adstore-sealer".into())
            .spawn(move || {
                store.verify_segments();
                // While passes fail (the disk full, say), the wait between
                // them doubles up to `MAX_SEAL_BACKOFF`, rather than a
                // retry a second that logs and writes as often.
                let mut wait = interval;
                while !store.inner.stop.load(Ordering::Acquire) {
                    let mut failed = None;
                    if let Err(e) = store.seal_due() {
                        tracing::error!(error = %e, "seal failed; events stay in the head and WAL");
                        failed = Some(e);
                    }
                    if let Err(e) = store.compact_small() {
                        tracing::error!(error = %e, "compaction failed; will retry");
                        failed = Some(e);
                    }
                    if let Err(e) = store.finalize_closed() {
                        tracing::error!(error = %e, "finalizing closed buckets failed; will retry");
                        failed = Some(e);
                    }
                    match failed {
                        Some(e) => {
                            store.inner.counters.seal_errors.fetch_add(1, Ordering::Relaxed);
                            store.inner.disk.seal_failed(&e);
                            wait = (wait * 2).min(space::MAX_SEAL_BACKOFF.max(interval));
                        }
                        None => {
                            store.inner.disk.seal_succeeded();
                            wait = interval;
                        }
                    }
                    let deadline = Instant::now() + wait;
                    while Instant::now() < deadline && !store.inner.stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(10).min(interval));
                    }
                }
            })
            .map_err(|source| crate::error::io_error(PathBuf::from("<sealer thread>"), source))?;
        *slot = Some(handle);
        Ok(())
    }

    /// Stops the sealer, refuses new appends, and fsyncs the WAL. Events in
    /// the head stay in the WAL and are replayed at the next open.
    pub fn close(&self) -> Result<()> {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(handle) = self.inner.sealer.lock().take()
            && handle.join().is_err()
        {
            tracing::error!("sealer thread panicked");
        }
        let synced = self.inner.wal.sync();
        // Appends are refused from here on: another process may open the
        // directory once its WAL is synced.
        self.inner.lock.lock().take();
        synced
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
