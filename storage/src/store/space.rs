//! Room on disk: appends are refused while the data directory's file system
//! has less than `min_free_bytes` free, before a write fails for want of
//! space; the store's health names what is wrong (space low, a poisoned
//! WAL, a sealer that keeps failing).
//!
//! A write that does fail for want of space is not fatal either: the WAL
//! cuts off the partial record and goes on (`wal/writer.rs`), a seal
//! removes the files it had written and the sealer backs off, retrying as
//! space returns. Only a failed fsync still poisons the WAL (the kernel may
//! have dropped pages it could not write), and that needs a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::Store;
use crate::error::{Result, StorageError};

/// When to retry an append refused for space, in seconds.
const RETRY_AFTER_S: u64 = 10;
/// The longest the sealer waits between attempts while seals fail.
pub(super) const MAX_SEAL_BACKOFF: Duration = Duration::from_secs(60);

/// Bytes an unprivileged process may still write on the file system of `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// What [`Store::check_disk_space`] and the sealer found.
pub(super) struct DiskWatch {
    data_dir: PathBuf,
    /// Whether the last check found space low (logged once per change).
    low: AtomicBool,
    refusals: AtomicU64,
    /// The last seal pass's error, until a pass succeeds.
    seal_failing: Mutex<Option<String>>,
}

impl DiskWatch {
    pub(super) fn new(data_dir: &Path) -> DiskWatch {
        DiskWatch {
            data_dir: data_dir.to_path_buf(),
            low: AtomicBool::new(false),
            refusals: AtomicU64::new(0),
            seal_failing: Mutex::new(None),
        }
    }

    pub(super) fn seal_failed(&self, error: &StorageError) {
        *self.seal_failing.lock() = Some(error.to_string());
    }

    pub(super) fn seal_succeeded(&self) {
        *self.seal_failing.lock() = None;
    }
}

impl Store {
    /// `Err(`[`StorageError::DiskLow`]`)` while the data directory's file
    /// system has less than `min_free_bytes` free. [`Store::append_all`]
    /// checks it first; a server can check it before parsing a request.
    /// (If the free space cannot be read, appends go ahead.)
    pub fn check_disk_space(&self) -> Result<()> {
        let min_free_bytes = self.inner.config.min_free_bytes;
        if min_free_bytes == 0 {
            return Ok(());
        }
        let disk = &self.inner.disk;
        let Ok(free) = free_bytes(&disk.data_dir) else { return Ok(()) };
        let low = free < min_free_bytes;
        if low != disk.low.swap(low, Ordering::AcqRel) {
            if low {
                tracing::warn!(
                    free_bytes = free,
                    min_free_bytes,
                    "disk space low: appends refused until space is freed"
                );
            } else {
                tracing::info!(free_bytes = free, min_free_bytes, "disk space back: appends accepted");
            }
        }
        if low {
            disk.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::DiskLow {
                path: disk.data_dir.clone(),
                free_bytes: free,
                min_free_bytes,
                retry_after_s: RETRY_AFTER_S,
            });
        }
        Ok(())
    }

    /// Free bytes on the data directory's file system (0 if unknown).
    pub fn disk_free_bytes(&self) -> u64 {
        free_bytes(&self.inner.disk.data_dir).unwrap_or(0)
    }

    /// Appends refused for want of space since open.
    pub fn disk_low_refusals(&self) -> u64 {
        self.inner.disk.refusals.load(Ordering::Relaxed)
    }

    /// Why the store is not healthy, in words; empty when it is: space low,
    /// the WAL poisoned, the sealer failing, damaged segments.
    pub fn health_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let min_free_bytes = self.inner.config.min_free_bytes;
        if let Ok(free) = free_bytes(&self.inner.disk.data_dir)
            && free < min_free_bytes
        {
            out.push(format!(
                "disk space low: {free} bytes free on the file system of {}, under storage.min_free_bytes \
                 ({min_free_bytes}); appends are refused until space is freed",
                self.inner.disk.data_dir.display()
            ));
        }
        if let Some(reason) = self.inner.wal.poisoned() {
            out.push(format!("the WAL failed and accepts no more appends until a restart: {reason}"));
        }
        if let Some(error) = self.inner.disk.seal_failing.lock().clone() {
            out.push(format!("seals are failing and being retried: {error}"));
        }
        let damaged = self.damaged().len();
        if damaged > 0 {
            out.push(format!("{damaged} damaged segments are not served"));
        }
        out
    }
}
