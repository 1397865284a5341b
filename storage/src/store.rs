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

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::buffers::BufferPool;
use crate::error::{IoContext, Result, StorageError};
use crate::event::EventBatch;
use crate::head::{Head, HeadChunk, Partitioning};
use crate::ids::Lsn;
use crate::ids::SegmentId;
use crate::manifest::{Catalog, CatalogEdit, Level, Manifest, PartitionKey, SegmentMeta, Tier};
use crate::offsets::SourceOffsets;
use crate::rollup::RollupDef;
use crate::seal::{SealPipeline, SidecarReader};
use crate::segment::{BlockCache, SegmentReader, SegmentSchema};
use crate::wal::{Wal, WalConfig, decode_record};

#[cfg(test)]
mod tests;

mod append;
mod billing;
mod erasure;
mod iceberg;
mod jobs;
mod maintenance;
mod mirror;
mod priority;
mod reconcile;
mod retention;
mod rollups;
mod space;
mod tiering;

pub use append::{PartlyStored, Rows};
pub use jobs::SealReport;
pub use maintenance::{Task, TaskStats};
pub use reconcile::{Check, Difference, ReconcileReport};
pub use rollups::RollupStatus;
pub use tiering::TieringStatus;

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
    /// Once no event has been appended for this long, a head holding an
    /// eighth of `max_head_bytes` or more is sealed whole, however young
    /// its partitions: the end of a load is sealed at once instead of
    /// `seal_max_age_ms` later, while the cores are free. 0 turns it off.
    /// Default 1_000.
    pub seal_idle_ms: u64,
    /// How many nice steps below the rest of the process the background
    /// threads (seals, compaction, finalization, rollups, tiering) run, so
    /// that queries and ingest get the cores first while a load is sealed
    /// (`store/priority.rs`); 0 runs them level. Default 10.
    pub background_nice: u8,
    /// Rows per segment block. Default 65_536.
    pub block_rows: usize,
    /// zstd level for segment blocks. Default 1: on ad events it compresses
    /// as well as 3 (31.2 vs 31.4 bytes per event) and seals 20% faster.
    pub zstd_level: i32,
    /// Write an id index (tantivy, `event_id`, `impression_id`, `click_id`,
    /// `user_key`, `ip_hash`) into every final raw segment, so equality and
    /// `IN` filters on those columns read a few granules instead of every
    /// row. Default true.
    pub id_index: bool,
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
    /// half of `memory_limit`.
    pub max_head_bytes: Option<u64>,
    /// The memory the head, the block cache, the dedupe keys and the
    /// attribution anchors share (the server's budget, `server/src/memory.rs`;
    /// the store itself keeps to `max_head_bytes` and `block_cache_bytes`).
    /// Default `None`: half of the machine's memory.
    pub memory_limit: Option<u64>,
    /// Appends are refused with [`StorageError::DiskLow`] while the data
    /// directory's file system has less than this many bytes free, before
    /// a write fails for want of space. 0 turns the check off. Default
    /// 268_435_456 (256 MiB).
    pub min_free_bytes: u64,
    /// The rollups every seal writes minute rows for (the server sets them
    /// from `[[rollups]]`). Default [`RollupDef::defaults`].
    #[serde(skip)]
    pub rollups: Vec<RollupDef>,
    /// How long each level is kept (the server sets it from
    /// `[retention.*]`); a policy set at run time
    /// ([`Store::set_retention`]) wins. Default: everything forever.
    #[serde(skip)]
    pub retention: crate::retention::RetentionPolicy,
    /// Where segments past their `hot` age go (the server sets it from
    /// `[tiering] object_store`): `s3://bucket/prefix`, or a directory.
    /// Default `None`: `{data_dir}/objects`.
    #[serde(skip)]
    pub object_store: Option<String>,
    /// How long one object store call may take before it fails (the
    /// server sets it from `[tiering] timeout_ms`). Default 30_000.
    #[serde(skip)]
    pub object_store_timeout_ms: u64,
    /// Bytes of cold segments kept on local disk, in `{data_dir}/cache`
    /// (the server sets it from `[tiering] cache_bytes`); 0 turns the
    /// cache off. Default 1_073_741_824 (1 GiB).
    #[serde(skip)]
    pub object_cache_bytes: u64,
    /// Write each settled day's raw events and rollup rows to the object
    /// store as Parquet (the server sets it from `[tiering]
    /// parquet_mirror`). Default false.
    #[serde(skip)]
    pub parquet_mirror: bool,
    /// Commit the mirror's parts to Iceberg tables (`crate::iceberg`; the
    /// server sets it from `[tiering] iceberg`). Default false.
    #[serde(skip)]
    pub iceberg: bool,
    /// Where the Iceberg tables live: `s3://bucket/prefix` or a
    /// directory, shared by the nodes that write them (`[tiering]
    /// iceberg_warehouse`). Default `None`: `iceberg/` in the object store.
    #[serde(skip)]
    pub iceberg_warehouse: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            shards: 4,
            bucket_width_ms: 3_600_000,
            seal_max_rows: 1_000_000,
            seal_max_age_ms: 30_000,
            seal_interval_ms: 1_000,
            seal_idle_ms: 1_000,
            background_nice: 10,
            block_rows: 65_536,
            zstd_level: 1,
            id_index: true,
            wal_file_size_bytes: 64 << 20,
            fsync: true,
            compact_min_segments: 8,
            allowed_lateness_ms: 86_400_000,
            close_idle_ms: 60_000,
            block_cache_bytes: 256 << 20,
            max_head_bytes: None,
            memory_limit: None,
            min_free_bytes: 256 << 20,
            rollups: RollupDef::defaults(),
            retention: crate::retention::RetentionPolicy::default(),
            object_store: None,
            object_store_timeout_ms: 30_000,
            object_cache_bytes: 1 << 30,
            parquet_mirror: false,
            iceberg: false,
            iceberg_warehouse: None,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StorageError::Config(m.to_string()));
        if self.iceberg && !self.parquet_mirror {
            return bad(
                "tiering.iceberg = true needs tiering.parquet_mirror = true: the tables' data files are the mirror's parts",
            );
        }
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
        if self.background_nice > 19 {
            return bad("storage.background_nice must be between 0 and 19");
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
    pub meta: Arc<SegmentMeta>,
    pub reader: Arc<SegmentReader>,
}

/// Opens a segment of the catalog with the schema its entry names: events
/// for raw segments, the recorded rollup's for the others.
pub(crate) fn open_segment(meta: &SegmentMeta, path: &std::path::Path) -> Result<SegmentReader> {
    match (&meta.level, &meta.rollup) {
        (Level::Raw, _) => SegmentReader::open(meta.id, path),
        (_, Some(r)) => {
            let def = RollupDef::from_ref(r).map_err(|reason| StorageError::Damaged { id: meta.id, reason })?;
            SegmentReader::open_as(meta.id, path, def.schema())
        }
        (level, None) => Err(StorageError::Damaged {
            id: meta.id,
            reason: format!("a {} segment whose catalog entry names no rollup", level.as_str()),
        }),
    }
}

/// Opens a segment of the catalog that is in the object store, with the
/// schema its entry names (see [`open_segment`]).
pub(crate) fn open_segment_remote(meta: &SegmentMeta, tier: Arc<crate::tier::ObjectTier>) -> Result<SegmentReader> {
    let schema = match (&meta.level, &meta.rollup) {
        (Level::Raw, _) => SegmentSchema::events().clone(),
        (_, Some(r)) => {
            RollupDef::from_ref(r).map_err(|reason| StorageError::Damaged { id: meta.id, reason })?.schema()
        }
        (level, None) => {
            return Err(StorageError::Damaged {
                id: meta.id,
                reason: format!("a {} segment whose catalog entry names no rollup", level.as_str()),
            });
        }
    };
    SegmentReader::open_remote(meta.id, tier, schema, meta.size_bytes)
}

/// Segment lists built for one catalog version (see `Store::live_segments`).
struct LiveCache {
    catalog: Arc<Catalog>,
    readers: usize,
    segments: Arc<Vec<LiveSegment>>,
    rollups: Arc<Vec<LiveSegment>>,
}

/// A consistent view of the store: the catalog, its open segments and the
/// head chunks, all as of one instant. Cheap to take (clones of `Arc`s).
#[derive(Clone)]
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    /// Raw events segments.
    pub segments: Arc<Vec<LiveSegment>>,
    /// Rollup segments (minute, hour, day).
    pub rollups: Arc<Vec<LiveSegment>>,
    pub head: Vec<(PartitionKey, HeadChunk)>,
    pub damaged: Vec<DamagedSegment>,
    /// Width of the time buckets the head is partitioned by.
    pub bucket_width_ms: i64,
    /// Dimension shards the head and raw segments are partitioned by.
    pub shards: u32,
    /// The data directory, where billing snapshot files are.
    data_dir: Arc<Path>,
    /// Events whose identity was erased: a re-seal keeps their decisions.
    pub erased: Arc<crate::erasure::ErasedEvents>,
}

impl Snapshot {
    /// The rows of a billing snapshot of this snapshot's catalog.
    pub fn billing_batch(&self, entry: &crate::billing::BillingSnapshot) -> Result<arrow_array::RecordBatch> {
        crate::billing::read(&self.data_dir, entry)
    }

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
        for s in self.segments.iter() {
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
    tasks: [maintenance::TaskCounters; Task::ALL.len()],
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
    /// Dictionary codes scans built for the unsealed events.
    pub head_codes_bytes: u64,
    /// Appends refused because the head was full.
    pub head_full_refusals: u64,
    /// Block metadata and zone maps the open segments keep in memory.
    pub segment_metadata_bytes: u64,
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
    /// Each maintenance task's runs, failures and time.
    pub tasks: Vec<TaskStats>,
    /// Raw events segments served.
    pub segments: usize,
    /// Rollup segments served, and their bytes.
    pub rollup_segments: usize,
    pub rollup_bytes: u64,
    /// Raw segments still lacking a configured rollup's minute segment
    /// (counted once per rollup).
    pub rollup_backfill_pending: usize,
    /// Billing snapshot versions in the catalog.
    pub billing_snapshots: usize,
    /// Final days without an up-to-date billing snapshot.
    pub billing_snapshots_pending: usize,
    pub wal_appends: u64,
    pub wal_fsyncs: u64,
    /// Bytes held by the block cache.
    pub block_cache_bytes: u64,
}

struct Inner {
    config: StoreConfig,
    segments_dir: PathBuf,
    /// `{data_dir}`, where `billing/` and the catalog live.
    data_dir: Arc<Path>,
    partitioning: Partitioning,
    wal: Wal,
    manifest: Manifest,
    visible: RwLock<Visible>,
    seal_lock: Mutex<()>,
    pipeline: SealPipeline,
    counters: Counters,
    stop: AtomicBool,
    sealer: Mutex<Option<JoinHandle<()>>>,
    /// The thread of the object store's tasks (`Task::uses_object_store`).
    tiering_thread: Mutex<Option<JoinHandle<()>>>,
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
    /// (raw segment, rollup) pairs whose sums overflow: the rollup task
    /// does not retry them (see `store/rollups.rs`).
    rollup_skipped: Mutex<std::collections::HashSet<(SegmentId, String)>>,
    /// (Day, rollup) pairs whose merged sums overflow an i64: those days
    /// keep their seal-time rows (see `store/rollups/days.rs`).
    merge_skipped: Mutex<std::collections::HashSet<(i64, String)>>,
    /// (Day, raw segments) whose billing sums overflow an i64: no
    /// snapshot until the day's segments change.
    billing_skipped: Mutex<std::collections::HashSet<(i64, Vec<SegmentId>)>>,
    /// Parts of the Parquet mirror uploaded for a day not yet committed
    /// (`store/mirror.rs`).
    mirror_uploaded: Mutex<std::collections::HashSet<String>>,
    /// Days whose mirror failed last time: tried after the others.
    mirror_failed: Mutex<std::collections::HashSet<i64>>,
    /// The Iceberg warehouse, opened on first use (`store/iceberg.rs`).
    warehouse: Mutex<Option<Arc<crate::iceberg::Warehouse>>>,
    /// Days whose Iceberg commit failed last time: tried after the others.
    iceberg_failed: Mutex<std::collections::HashSet<i64>>,
    /// The last snapshot's segment lists, reused while the catalog and
    /// readers stay the same (a query on a store of many segments would
    /// otherwise copy every segment's metadata).
    live: Mutex<Option<LiveCache>>,
    /// The retention policy in force (see `store/retention.rs`).
    retention: RwLock<crate::retention::RetentionPolicy>,
    /// The object store of cold segments, opened on first use (`store/tiering.rs`).
    object_tier: Mutex<Option<Arc<crate::tier::ObjectTier>>>,
    /// Source offsets of every WAL record written, and the LSN of the last
    /// record that carried any (`crate::offsets`).
    offsets: Mutex<(SourceOffsets, Lsn)>,
    /// Held by a pass of the tiering or the mirror task and by an erasure,
    /// so no mirror part or upload of a segment being erased runs meanwhile.
    object_pass: Mutex<()>,
    /// One erasure at a time (`store/erasure.rs`).
    erasure_lock: Mutex<()>,
    /// Events whose identity an erasure removed.
    erased: Arc<crate::erasure::ErasedEvents>,
}

/// At most this many encode buffers are kept, each at most this large, so
/// at most 128 MiB sit idle.
const ENCODE_BUFFERS_KEPT: usize = 8;
const ENCODE_BUFFER_MAX_KEPT_BYTES: usize = 16 << 20;

/// Takes the exclusive lock on `{data_dir}/LOCK` (created if absent), or
/// fails with [`StorageError::DataDirInUse`] if another process, or another
/// open `Store` of this one, holds it. The kernel releases it if the
/// process dies, or when the file is dropped. Tools that change files of a
/// stopped server's data directory (`adstore token create --data-dir`)
/// hold it too.
pub fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StorageError::DataDirInUse { path: data_dir.to_path_buf() }),
        Err(e) => Err(crate::error::io_error(path, e.into())),
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
        let billing_dir = data_dir.join(crate::billing::BILLING_DIR);
        std::fs::create_dir_all(&billing_dir).at(&billing_dir)?;
        for orphan in billing::remove_orphans(data_dir, &manifest.current())? {
            tracing::info!(path = %orphan.display(), "removed billing snapshot file not in the catalog");
        }
        // Parquet parts being written when the process stopped: raw events.
        for tmp in [crate::mirror::PART_TMP, crate::mirror::ERASED_PART_TMP] {
            let _ = std::fs::remove_file(data_dir.join(tmp));
        }
        let retention = retention::load(data_dir)?.unwrap_or(config.retention);
        let erased = Arc::new(crate::erasure::ErasedEvents::open(data_dir)?);
        retention.validate(config.allowed_lateness_ms).map_err(StorageError::Config)?;
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
        let nice = config.background_nice;
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("adstore-seal-{i}"))
            .start_handler(move |_| priority::lower_this_thread(nice))
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start the seal threads: {e}")))?;
        let block_cache = Arc::new(BlockCache::new(config.block_cache_bytes));
        let mut readers = HashMap::new();
        let mut damaged = Vec::new();
        // Cold segments: their footers are read from the object store now
        // (an unreachable store leaves them damaged until the next open).
        let remote: Vec<&SegmentMeta> = catalog.segments.values().filter(|m| m.tier == Tier::Remote).collect();
        let object_tier = match remote.is_empty() {
            true => None,
            false => {
                let tier = tiering::open_object_tier(&config, data_dir)?;
                // Chunks of segments deleted or erased while it was closed.
                tier.keep_cached(&remote.iter().map(|m| m.id).collect());
                Some(Arc::new(tier))
            }
        };
        for meta in catalog.segments.values().filter(|m| m.tier != Tier::Expired) {
            let path = segments_dir.join(meta.id.file_name());
            let opened = match &object_tier {
                Some(tier) if meta.tier == Tier::Remote => open_segment_remote(meta, tier.clone()),
                _ => open_segment(meta, &path),
            };
            match opened {
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
        let mut offsets = catalog.source_offsets.clone();
        let wal = Wal::open(wal_config, |lsn, payload| {
            let record = decode_record(payload)?;
            if let Some(o) = &record.offsets {
                offsets.merge(o);
            }
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
            .segments_of(Level::Raw)
            .map(|m| m.max_ts)
            .chain(head.snapshot().iter().filter_map(|(_, c)| c.ts().max()))
            .max()
            .unwrap_or(i64::MIN);
        let inner = Inner {
            config,
            segments_dir,
            data_dir: Arc::from(data_dir),
            partitioning,
            wal,
            manifest,
            visible: RwLock::new(Visible { catalog, readers, head, damaged }),
            seal_lock: Mutex::new(()),
            pipeline,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            sealer: Mutex::new(None),
            tiering_thread: Mutex::new(None),
            max_event_ts: AtomicI64::new(max_event_ts),
            opened: Instant::now(),
            last_append_ms: AtomicU64::new(0),
            block_cache,
            encode_buffers: BufferPool::new(ENCODE_BUFFERS_KEPT, ENCODE_BUFFER_MAX_KEPT_BYTES),
            head_full: AtomicBool::new(false),
            disk: space::DiskWatch::new(data_dir),
            lock: Mutex::new(Some(lock)),
            background,
            rollup_skipped: Mutex::new(std::collections::HashSet::new()),
            merge_skipped: Mutex::new(std::collections::HashSet::new()),
            billing_skipped: Mutex::new(std::collections::HashSet::new()),
            mirror_uploaded: Mutex::new(std::collections::HashSet::new()),
            mirror_failed: Mutex::new(std::collections::HashSet::new()),
            warehouse: Mutex::new(None),
            iceberg_failed: Mutex::new(std::collections::HashSet::new()),
            live: Mutex::new(None),
            retention: RwLock::new(retention),
            object_pass: Mutex::new(()),
            erasure_lock: Mutex::new(()),
            erased,
            object_tier: Mutex::new(object_tier),
            offsets: Mutex::new((offsets, Lsn(0))),
        };
        let store = Store { inner: Arc::new(inner) };
        let sidecars = SidecarReader { segments_dir: store.inner.segments_dir.clone() };
        store.inner.pipeline.recover(&store.snapshot(), &sidecars)?;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// How far into each outside stream the records written so far have
    /// read (durable once the append that wrote them has returned).
    pub fn source_offsets(&self) -> SourceOffsets {
        self.inner.offsets.lock().0.clone()
    }

    pub fn partitioning(&self) -> Partitioning {
        self.inner.partitioning
    }

    /// A consistent view of catalog, segments and head.
    pub fn snapshot(&self) -> Snapshot {
        let v = self.inner.visible.read();
        let (segments, rollups) = self.live_segments(&v);
        Snapshot {
            catalog: v.catalog.clone(),
            segments,
            rollups,
            head: v.head.snapshot(),
            damaged: v.damaged.clone(),
            bucket_width_ms: self.inner.config.bucket_width_ms,
            shards: self.inner.config.shards,
            data_dir: self.inner.data_dir.clone(),
            erased: self.inner.erased.clone(),
        }
    }

    /// The open raw and rollup segments of `v`, built once per catalog
    /// version: every change of the readers comes with a new catalog, or
    /// (a damaged segment taken out) changes their number.
    fn live_segments(&self, v: &Visible) -> (Arc<Vec<LiveSegment>>, Arc<Vec<LiveSegment>>) {
        let mut cache = self.inner.live.lock();
        if let Some(c) = cache.as_ref()
            && Arc::ptr_eq(&c.catalog, &v.catalog)
            && c.readers == v.readers.len()
        {
            return (c.segments.clone(), c.rollups.clone());
        }
        let (segments, rollups): (Vec<LiveSegment>, Vec<LiveSegment>) = v
            .catalog
            .segments
            .values()
            .filter_map(|m| v.readers.get(&m.id).map(|r| LiveSegment { meta: Arc::new(m.clone()), reader: r.clone() }))
            .partition(|s| s.meta.level == Level::Raw);
        let (segments, rollups) = (Arc::new(segments), Arc::new(rollups));
        *cache = Some(LiveCache {
            catalog: v.catalog.clone(),
            readers: v.readers.len(),
            segments: segments.clone(),
            rollups: rollups.clone(),
        });
        (segments, rollups)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.visible.read().catalog.clone()
    }

    pub fn damaged(&self) -> Vec<DamagedSegment> {
        self.inner.visible.read().damaged.clone()
    }

    pub fn stats(&self) -> StoreStats {
        let pending = self.rollup_status().iter().map(|r| r.pending).sum();
        let billing_snapshots_pending = self.billing_snapshots_pending();
        let v = self.inner.visible.read();
        let c = &self.inner.counters;
        let wal = self.inner.wal.stats();
        let served = |level: Level| v.catalog.segments_of(level).filter(|m| v.readers.contains_key(&m.id));
        let served_rollups = || [Level::Minute, Level::Hour, Level::Day].into_iter().flat_map(served);
        StoreStats {
            appended_rows: c.appended_rows.load(Ordering::Relaxed),
            sealed_rows: c.sealed_rows.load(Ordering::Relaxed),
            seals: c.seals.load(Ordering::Relaxed),
            seal_errors: c.seal_errors.load(Ordering::Relaxed),
            head_rows: v.head.rows(),
            head_partitions: v.head.partition_count(),
            head_bytes: v.head.bytes(),
            head_limit_bytes: self.head_limit().unwrap_or(0),
            head_codes_bytes: v.head.codes_bytes(),
            head_full_refusals: c.head_full_refusals.load(Ordering::Relaxed),
            segment_metadata_bytes: v.readers.values().map(|r| r.metadata_bytes()).sum(),
            disk_free_bytes: self.disk_free_bytes(),
            disk_min_free_bytes: self.inner.config.min_free_bytes,
            disk_low_refusals: self.disk_low_refusals(),
            wal_poisoned: self.inner.wal.poisoned().is_some(),
            io_errors: crate::error::io_errors_total(),
            tasks: self.task_stats(),
            segments: served(Level::Raw).count(),
            rollup_segments: served_rollups().count(),
            rollup_bytes: served_rollups().map(|m| m.size_bytes).sum(),
            rollup_backfill_pending: pending,
            billing_snapshots: v.catalog.billing.len(),
            billing_snapshots_pending,
            wal_appends: wal.appends,
            wal_fsyncs: wal.fsyncs,
            block_cache_bytes: self.inner.block_cache.used_bytes(),
        }
    }

    /// Bytes of unsealed events in the head.
    pub fn head_bytes(&self) -> u64 {
        self.inner.visible.read().head.bytes()
    }

    /// Bytes of the dictionary codes scans built for the head's events.
    pub fn head_codes_bytes(&self) -> u64 {
        self.inner.visible.read().head.codes_bytes()
    }

    /// Bytes held by the block cache.
    pub fn block_cache_bytes(&self) -> u64 {
        self.inner.block_cache.used_bytes()
    }

    /// Newest event time accepted so far (`i64::MIN` if none).
    pub fn max_event_ts(&self) -> i64 {
        self.inner.max_event_ts.load(Ordering::Acquire)
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
        if let Some(handle) = self.inner.tiering_thread.lock().take()
            && handle.join().is_err()
        {
            tracing::error!("tiering thread panicked");
        }
        let synced = self.inner.wal.sync();
        // Appends are refused from here on: another process may open the
        // directory once its WAL is synced.
        self.inner.lock.lock().take();
        synced
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
