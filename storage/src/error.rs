//! The storage crate's error type: one variant per cause, each naming the
//! file, offset or segment a person needs to find the problem.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::SegmentId;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL file {path} is corrupt at offset {offset}: {reason}")]
    WalCorrupt { path: PathBuf, offset: u64, reason: String },
    #[error("WAL record of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    WalRecordTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("the write-ahead log failed earlier and accepts no more writes: {0}")]
    WalPoisoned(String),
    #[error("segment {id} ({path}) is corrupt: {reason}")]
    SegmentCorrupt { id: SegmentId, path: PathBuf, reason: String },
    #[error("segment {path} would hold {rows} rows; a segment holds at most 4294967295")]
    SegmentTooLarge { path: PathBuf, rows: u64 },
    #[error("segment file {path} has unsupported format version {version}")]
    UnsupportedFormat { path: PathBuf, version: u32 },
    #[error("data in this range is unavailable: segment {id} is damaged ({reason})")]
    Damaged { id: SegmentId, reason: String },
    /// A call to the object store failed (unreachable, refused, timed out).
    #[error("object store: {what} failed: {reason}")]
    ObjectStore { what: String, reason: String },
    /// A query needs data that retention deleted (the message names the
    /// range and what still holds it).
    #[error("{0}")]
    Expired(String),
    /// A lookup of whole events (the event trace) matched more than it may
    /// hold in memory.
    #[error("more than {limit} stored events match this lookup; narrow it (an id, a publisher, a time)")]
    LookupTooLarge { limit: usize },
    #[error("catalog {path} is corrupt: {reason}")]
    ManifestCorrupt { path: PathBuf, reason: String },
    #[error("event batch schema mismatch: {0}")]
    Schema(String),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("busy: {0}; retry later")]
    Busy(String),
    /// Unsealed events fill the head's memory limit; sealing frees it.
    #[error(
        "the head holds {head_bytes} bytes of unsealed events, at its limit of {limit_bytes} (storage.max_head_bytes); \
         retry once seals have caught up"
    )]
    HeadFull {
        head_bytes: u64,
        limit_bytes: u64,
        /// When to try again: the sealer's next pass (`seal_interval_ms`), in whole seconds, at least 1.
        retry_after_s: u64,
    },
    /// The data directory's file system is below `storage.min_free_bytes`.
    #[error(
        "only {free_bytes} bytes free on the file system of {path}, under storage.min_free_bytes ({min_free_bytes}); \
         appends resume once space is freed"
    )]
    DiskLow {
        path: PathBuf,
        free_bytes: u64,
        min_free_bytes: u64,
        /// When to try again, in seconds.
        retry_after_s: u64,
    },
    #[error("the store is shutting down")]
    ShuttingDown,
    /// Another process (or another open `Store`) holds the data directory.
    #[error("data directory {path} is in use by another adstore process (it holds the lock on {path}/LOCK)")]
    DataDirInUse { path: PathBuf },
    #[error("internal error (a bug): {0}")]
    Internal(String),
}

impl StorageError {
    /// Whether the file system ran out of space (or quota), or is below
    /// `min_free_bytes`: a state that passes once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::DiskLow { .. } => true,
            StorageError::Io { source, .. } => is_disk_full(source),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| io_error(path.into(), source))
    }
}

/// I/O errors the storage layer met since the process started (reads,
/// writes, fsyncs, renames; a full disk included), for
/// `adstore_io_errors_total`. Expected misses, such as a sidecar that was
/// never written, are not errors and are not counted.
static IO_ERRORS: AtomicU64 = AtomicU64::new(0);

/// An I/O failure at `path`, counted in [`io_errors_total`].
pub(crate) fn io_error(path: PathBuf, source: std::io::Error) -> StorageError {
    IO_ERRORS.fetch_add(1, Ordering::Relaxed);
    StorageError::Io { path, source }
}

/// How many I/O errors the storage layer has met since the process started.
pub fn io_errors_total() -> u64 {
    IO_ERRORS.load(Ordering::Relaxed)
}
