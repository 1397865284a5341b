//! The write-ahead log: every accepted event batch is framed, checksummed and
//! fsynced here before the caller is told it is stored.
//!
//! # Files
//!
//! A directory of segment files, each named after the LSN of its first
//! record, zero-padded so name order is LSN order:
//!
//! ```text
//! wal/00000000000000000001.wal   LSNs 1 ..= 4711        (closed)
//! wal/00000000000000004712.wal   LSNs 4712 ..           (active: appends go here)
//! ```
//!
//! # Framing
//!
//! ```text
//! file   = magic "ADSWAL\0\0" | version: u32 LE (2) | 4 zero bytes | record*
//! record = len: u32 LE | crc32c: u32 LE | lsn: u64 LE | payload (len bytes)
//! ```
//!
//! Version 1 files (no zero bytes after the version) are still read.
//!
//! The checksum covers the LSN and the payload. LSNs start at 1 and grow by
//! one per record, across files. A file is closed when the next record
//! would push it past [`WalConfig::file_size_bytes`] (a record larger than
//! that gets a file of its own): the old file is fsynced, the new one is
//! created with its header, fsynced, and the directory fsynced.
//!
//! # Group commit
//!
//! ```text
//!  append_with = write_with, then wait_written:
//!  write_with ─► lock ─► assign LSN ─► write_all(frame) ─► on_assigned(lsn, written) ─► unlock
//!                                                                                      │
//!  wait_written(lsn): synced ≥ lsn? ── yes ─► return Ok ◄──────────────────────────────┘
//!        │ no
//!        ├─ a leader is syncing ─► wait on the condvar, check again
//!        └─ become leader ─► note last written LSN ─► fdatasync active file
//!                            ─► synced = that LSN ─► wake all waiters
//! ```
//!
//! Every thread that wrote before the leader noted the last LSN is covered by
//! that one fsync, so concurrent appenders share fsyncs; a caller with
//! several records writes them all and waits once, for the last.
//! `on_assigned` gets where the payload was written ([`Written`]), to map
//! it back from the file: the WAL keeps its pages in the page cache. If a write or fsync
//! fails, the log is *poisoned*: that append and every later one return
//! [`StorageError::WalPoisoned`](crate::StorageError::WalPoisoned). Nothing is
//! acknowledged after a failed fsync, because the kernel may have dropped the
//! dirty pages it could not write.
//!
//! # Replay
//!
//! [`Wal::open`] reads the files in LSN order and hands each valid record to
//! the caller. Each file must start at the LSN after the previous file's
//! last. In the **last** file, a record that runs past end of file, or whose
//! checksum fails and is followed only by zero bytes, is a torn tail (a crash
//! mid-write): the file is truncated there and fsynced, with a warning. Any
//! other bad record — a checksum failure followed by data, a bad record in a
//! closed file, a valid record with an unexpected LSN — is
//! [`StorageError::WalCorrupt`](crate::StorageError::WalCorrupt) naming the
//! file and byte offset. An empty or absent directory is a fresh log.
//!
//! # Deletion
//!
//! [`Wal::truncate_before`]`(lsn)` deletes closed files whose records all
//! have LSNs below `lsn`, once the store has those events in sealed segments
//! recorded in its catalog. The active file is never deleted, so the log
//! always knows its next LSN.
//!
//! # Payloads
//!
//! Records are opaque bytes to the log. [`encode_batch_into`] /
//! `decode_record` turn an [`EventBatch`](crate::EventBatch), and the rows
//! of it the record does not store, into one Arrow IPC stream (one schema
//! message, one batch) after a list of those rows, and back.

mod codec;
mod format;
mod replay;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use codec::{RecordNotes, decode_batch, encode_batch, encode_batch_into};
pub(crate) use codec::{decode_encoded_record, decode_record};
pub use writer::{Wal, Written};

/// Where and how the WAL writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalConfig {
    /// Directory holding the `*.wal` files. Created if absent.
    pub dir: PathBuf,
    /// A file is closed once the next record would grow it past this size.
    /// Default: 64 MiB.
    #[serde(default = "WalConfig::default_file_size_bytes")]
    pub file_size_bytes: u64,
    /// fsync each append (group committed), each rotation and each new file.
    /// Default: `true`. Set `false` only in tests and benchmarks: appends
    /// then return once written to the OS, and a machine crash can lose
    /// acknowledged records. [`Wal::sync`] still fsyncs.
    #[serde(default = "WalConfig::default_fsync")]
    pub fsync: bool,
}

impl WalConfig {
    /// The default configuration for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig { dir: dir.into(), file_size_bytes: Self::default_file_size_bytes(), fsync: Self::default_fsync() }
    }

    fn default_file_size_bytes() -> u64 {
        64 << 20
    }

    fn default_fsync() -> bool {
        true
    }
}

/// Counters since [`Wal::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalStats {
    /// Records appended.
    pub appends: u64,
    /// fsyncs of data files (group commits and rotations).
    pub fsyncs: u64,
    /// Bytes appended, framing included.
    pub bytes: u64,
}
