//! The appending side of the WAL: framing records into the active file,
//! group commit, rotation and deletion of covered files.
//!
//! Locks, always taken in this order (never `append` while holding `sync`):
//! - `truncate` serialises [`Wal::truncate_before`] calls;
//! - `append` guards the active file, the closed-file list and LSN
//!   assignment; held for one `write_all` (plus a rotation now and then);
//! - `sync` guards the durable watermark and the "a leader is syncing" flag;
//!   waiters sleep on `synced_cv`;
//! - `fsync` serialises fsyncs of data files (the group-commit leader's and
//!   rotation's), so that a failure reported to one of them poisons the log
//!   before the other can report success for the same pages: after a failed
//!   fsync the kernel may have dropped the dirty pages, and a later fsync of
//!   the same file succeeds without having written them.

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{IoContext, Result, StorageError};
use crate::failpoint;
use crate::ids::Lsn;
use crate::wal::format::{self, MAX_PAYLOAD_BYTES, RECORD_HEADER_LEN};
use crate::wal::replay::{self, ClosedFile};
use crate::wal::{WalConfig, WalStats};

/// Writes `parts` one after the other with vectored writes: a record's
/// header and payload go out without first being copied into one buffer
/// (a copy of every payload, into memory the allocator often had to get
/// fresh from the kernel). A crash between partial writes leaves a torn
/// tail, which replay truncates.
fn write_all_parts(mut file: &File, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Failure injection (`ADSTORE_FAILPOINT=wal_write_enospc`): writes half
/// of `parts`, then fails as a write to a full disk does.
fn write_half_then_fail(file: &File, parts: &[&[u8]]) -> std::io::Result<()> {
    let whole = parts.concat();
    write_all_parts(file, &[&whole[..whole.len() / 2]])?;
    Err(std::io::ErrorKind::StorageFull.into())
}

/// Where [`Wal::write_with`] wrote a record's payload.
pub struct Written {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// Most payload mappings alive at once, across all logs of the process:
/// each is one memory map, and Linux allows 65,530 per process by default.
const MAX_LIVE_MAPS: usize = 16_384;
/// Payload mappings alive now.
static LIVE_MAPS: AtomicUsize = AtomicUsize::new(0);

/// A mapped payload; counted in [`LIVE_MAPS`] while it lives.
struct MappedPayload(memmap2::Mmap);

impl AsRef<[u8]> for MappedPayload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for MappedPayload {
    fn drop(&mut self) {
        LIVE_MAPS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Written {
    /// Bytes of the payload.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the payload starts in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The payload as written, mapped read-only from the file: its bytes
    /// stay in the page cache, where the write put them, rather than in a
    /// second copy the process has to fault in page by page. The mapping
    /// lives as long as the returned bytes and their slices. `None` while
    /// [`MAX_LIVE_MAPS`] mappings are alive, or if the map fails.
    #[allow(unsafe_code)]
    pub fn map(&self) -> Option<bytes::Bytes> {
        if LIVE_MAPS.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE_MAPS {
            LIVE_MAPS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let page = rustix::param::page_size() as u64;
        let start = self.offset - self.offset % page;
        let lead = (self.offset - start) as usize;
        // SAFETY: the WAL only appends: no byte of the mapped range, which
        // this process wrote, is written again. Replay truncates a torn tail
        // before the log takes appends, so before any mapping exists, and a
        // file whose records are sealed is unlinked, not truncated, which
        // leaves existing mappings intact. No other process writes the file:
        // the store holds the data directory's lock (`Store::open`). So the
        // bytes behind the map do not change while it lives, given a disk
        // that returns what was written: a page the kernel evicts after its
        // fsync is read back from the file (a read error raises SIGBUS).
        let mapped = unsafe { memmap2::MmapOptions::new().offset(start).len(lead + self.len).map(&*self.file) };
        match mapped {
            Ok(map) => Some(bytes::Bytes::from_owner(MappedPayload(map)).slice(lead..)),
            Err(e) => {
                LIVE_MAPS.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "WAL payload not mapped");
                None
            }
        }
    }
}

/// A segmented, checksummed write-ahead log with group commit. See the
/// `wal` module docs (storage/src/wal.rs) for the format and protocol.
///
/// All methods take `&self`; share a `Wal` between threads with an `Arc`.
pub struct Wal {
    config: WalConfig,
    append: Mutex<AppendState>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    truncate: Mutex<()>,
    fsync: Mutex<()>,
    /// Set once, by the first failed write or fsync; never cleared.
    poison: OnceLock<String>,
    /// The LSN the next append gets. Written under `append`.
    next_lsn: AtomicU64,
    appends: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    /// Test hook: the next data-file fsync fails.
    #[cfg(test)]
    pub(crate) fail_next_sync: std::sync::atomic::AtomicBool,
    /// Tests: the write this many writes from now (1: the next) fails half
    /// way for want of space; 0: none does.
    #[cfg(test)]
    pub(crate) fail_nth_write: AtomicU64,
}

struct AppendState {
    active: ActiveFile,
    /// Closed files, oldest first. Rotation pushes at the back,
    /// `truncate_before` removes from the front.
    closed: Vec<ClosedFile>,
}

struct ActiveFile {
    file: Arc<File>,
    path: PathBuf,
    first_lsn: Lsn,
    len_bytes: u64,
    records: u64,
}

struct SyncState {
    /// Every record with an LSN at or below this is on stable storage.
    synced: Lsn,
    /// A thread is running an fsync for the group; others wait.
    leader: bool,
}

impl Wal {
    /// Opens the log in `config.dir` (creating the directory if needed),
    /// replays every valid record in LSN order through `visit`, repairs a
    /// torn tail, and positions for appending after the last valid record.
    ///
    /// # Errors
    /// [`StorageError::WalCorrupt`] (naming file and offset) for damage that
    /// is not a torn tail; [`StorageError::Io`]; any error `visit` returns,
    /// which stops replay.
    pub fn open(config: WalConfig, mut visit: impl FnMut(Lsn, &[u8]) -> Result<()>) -> Result<Wal> {
        if config.file_size_bytes == 0 {
            return Err(StorageError::Config("wal.file_size_bytes must be greater than 0".into()));
        }
        fs::create_dir_all(&config.dir).at(&config.dir)?;
        let recovered = replay::recover(&config.dir, config.fsync, &mut visit)?;
        // Replay read the last file's records, and the store builds on
        // them (their keys are duplicates from now on), but a process
        // killed before its fsync may have left some in the page cache
        // only. Closed files are durable: `rotate` syncs a file before it
        // closes it.
        if let Some(tail) = recovered.tail.as_ref().filter(|t| config.fsync && t.records > 0) {
            sync_file(&tail.path)?;
        }
        let next_lsn = recovered.next_lsn;
        let mut closed = recovered.closed;
        let active = match recovered.tail {
            Some(tail) if tail.version == format::VERSION || tail.records == 0 => {
                let file = OpenOptions::new().read(true).append(true).open(&tail.path).at(&tail.path)?;
                let mut len_bytes = tail.len_bytes;
                if tail.version != format::VERSION {
                    // No record in it: its header can just be the current one.
                    replay::rewrite_header(&file, &tail.path, config.fsync)?;
                    len_bytes = format::FILE_HEADER_LEN;
                }
                ActiveFile {
                    file: Arc::new(file),
                    path: tail.path,
                    first_lsn: tail.first_lsn,
                    len_bytes,
                    records: tail.records,
                }
            }
            // An older version's records: the file is closed as it is, and
            // appends go to a new file (see `format`).
            Some(tail) => {
                tracing::info!(path = %tail.path.display(), version = tail.version,
                    "WAL file of an older format version closed; appends go to a new file");
                closed.push(ClosedFile { path: tail.path, first_lsn: tail.first_lsn, last_lsn: Lsn(next_lsn.0 - 1) });
                create_file(&config.dir, next_lsn, config.fsync)?
            }
            None => create_file(&config.dir, next_lsn, config.fsync)?,
        };
        tracing::info!(dir = %config.dir.display(), next_lsn = next_lsn.0, files = closed.len() + 1, "WAL opened");
        Ok(Wal {
            append: Mutex::new(AppendState { active, closed }),
            // Everything recovered is durable: replay fsynced what it
            // repaired, closed files were synced when they were closed, and
            // the last file just now.
            sync: Mutex::new(SyncState { synced: Lsn(next_lsn.0 - 1), leader: false }),
            synced_cv: Condvar::new(),
            truncate: Mutex::new(()),
            fsync: Mutex::new(()),
            poison: OnceLock::new(),
            next_lsn: AtomicU64::new(next_lsn.0),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_nth_write: AtomicU64::new(0),
            config,
        })
    }

    /// Appends one record and returns once it is durable (see
    /// [`Wal::append_with`]).
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        self.append_with(payload, |_| {})
    }

    /// Appends one record: assigns the next LSN, writes the framed record,
    /// calls `on_assigned(lsn)` while still holding the append lock (so
    /// callers see assignments in LSN order), then waits until an fsync
    /// covering the record has completed. Concurrent callers share fsyncs.
    ///
    /// With `fsync` disabled in the config the wait is skipped.
    ///
    /// # Errors
    /// [`StorageError::WalRecordTooLarge`] for a payload over 4 GiB - 1;
    /// [`StorageError::WalPoisoned`] if this or an earlier write or fsync
    /// failed. A poisoned log never acknowledges again; `on_assigned` may
    /// have run for a record that then fails, so the caller must treat its
    /// in-memory state as unconfirmed and recover by reopening.
    pub fn append_with(&self, payload: &[u8], on_assigned: impl FnOnce(Lsn)) -> Result<Lsn> {
        let lsn = self.write_with(payload, |lsn, _| on_assigned(lsn))?;
        self.wait_written(lsn)?;
        Ok(lsn)
    }

    /// [`Wal::append_with`] without the wait: the record is written, not
    /// yet durable. Several records can be written this way and then waited
    /// for once, with [`Wal::wait_written`] on the last LSN. `on_assigned`
    /// also gets where the payload was written, to map it.
    pub fn write_with(&self, payload: &[u8], on_assigned: impl FnOnce(Lsn, Written)) -> Result<Lsn> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(StorageError::WalRecordTooLarge { size_bytes: payload.len(), max_bytes: MAX_PAYLOAD_BYTES });
        }
        let lsn = {
            let mut st = self.append.lock();
            self.check_poison()?;
            let lsn = Lsn(self.next_lsn.load(Ordering::Acquire));
            let frame_len = (RECORD_HEADER_LEN + payload.len()) as u64;
            if st.active.records > 0 && st.active.len_bytes + frame_len > self.config.file_size_bytes {
                self.rotate(&mut st, lsn)?;
            }
            let active = &mut st.active;
            let header = format::record_header(lsn, payload);
            let injected = failpoint::fails("wal_write_enospc");
            #[cfg(test)]
            let injected = injected
                || self.fail_nth_write.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1);
            let write = if injected {
                write_half_then_fail(&active.file, &[&header, payload])
            } else {
                write_all_parts(&active.file, &[&header, payload])
            };
            if let Err(e) = write.at(&active.path) {
                // Out of space: at most part of this record is in the file,
                // after the last whole one. Cut it off and the log goes on
                // (the record was never acknowledged, nor in the head); if
                // it cannot be cut off, or the write failed otherwise, the
                // log is poisoned.
                if e.is_disk_full() && active.file.set_len(active.len_bytes).is_ok() {
                    tracing::warn!(error = %e, "WAL append failed for want of space; the partial record was cut off");
                    return Err(e);
                }
                return Err(self.poison_with(&e));
            }
            failpoint::hit("wal_after_write");
            let offset = active.len_bytes + RECORD_HEADER_LEN as u64;
            let written = Written { file: Arc::clone(&active.file), offset, len: payload.len() };
            // The log's state is complete before `on_assigned` runs, so a
            // panic in it cannot leave the next record's offset wrong.
            active.len_bytes += frame_len;
            active.records += 1;
            self.next_lsn.store(lsn.next().0, Ordering::Release);
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(frame_len, Ordering::Relaxed);
            on_assigned(lsn, written);
            lsn
        };
        Ok(lsn)
    }

    /// Returns once the records up to `lsn` are as durable as
    /// [`Wal::append_with`] leaves them: covered by an fsync, or at once
    /// with `fsync` disabled in the config.
    pub fn wait_written(&self, lsn: Lsn) -> Result<()> {
        if self.config.fsync { self.wait_durable(lsn) } else { Ok(()) }
    }

    /// Makes every record appended so far durable. Forces an fsync even when
    /// the config disables per-append fsync.
    pub fn sync(&self) -> Result<()> {
        let last = self.last_lsn();
        if last == Lsn(0) {
            return self.check_poison();
        }
        self.wait_durable(last)
    }

    /// The LSN the next append will get.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.load(Ordering::Acquire))
    }

    /// The LSN of the last record written (replayed or appended), or
    /// `Lsn(0)` if the log has never held a record.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn().0 - 1)
    }

    /// The first LSN of the oldest retained file: no record below it can be
    /// replayed any more (once `truncate_before` has returned).
    pub fn first_lsn(&self) -> Lsn {
        let st = self.append.lock();
        st.closed.first().map_or(st.active.first_lsn, |f| f.first_lsn)
    }

    /// Closes the active file if it holds records, so that every record
    /// written so far is in a closed file ([`Wal::truncate_before`] can
    /// delete), and returns the first LSN of the files after them.
    pub fn close_active(&self) -> Result<Lsn> {
        let mut st = self.append.lock();
        self.check_poison()?;
        let next = Lsn(self.next_lsn.load(Ordering::Acquire));
        if st.active.records > 0 {
            self.rotate(&mut st, next)?;
        }
        Ok(next)
    }

    /// Closed files whose records all have an LSN below `lsn`.
    pub fn files_before(&self, lsn: Lsn) -> usize {
        self.append.lock().closed.iter().take_while(|f| f.last_lsn < lsn).count()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        WalStats {
            appends: self.appends.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether [`Wal::truncate_before`]`(lsn)` would delete a file.
    pub fn would_truncate(&self, lsn: Lsn) -> bool {
        self.append.lock().closed.first().is_some_and(|f| f.last_lsn < lsn)
    }

    /// Deletes every closed file whose records all have an LSN below `lsn`,
    /// oldest first, and returns how many it deleted. The active file is
    /// never deleted. Call it only once those records are safe elsewhere
    /// (in sealed segments recorded in the catalog).
    ///
    /// Deleting oldest first keeps the remaining files contiguous if the
    /// process dies half way; a file whose unlink was not yet durable may
    /// reappear after a crash and be replayed again, so replay consumers
    /// must skip LSNs they already hold.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let _serial = self.truncate.lock();
        let victims: Vec<ClosedFile> =
            self.append.lock().closed.iter().take_while(|f| f.last_lsn < lsn).cloned().collect();
        let mut deleted = 0;
        let mut result = Ok(());
        for f in &victims {
            if let Err(e) = fs::remove_file(&f.path).at(&f.path) {
                result = Err(e);
                break;
            }
            tracing::debug!(path = %f.path.display(), first_lsn = f.first_lsn.0, last_lsn = f.last_lsn.0,
                "deleted WAL file");
            deleted += 1;
        }
        // Only this function removes entries, and it is serialised, so the
        // first `deleted` entries are still the ones deleted above.
        self.append.lock().closed.drain(..deleted);
        result?;
        if deleted > 0 && self.config.fsync {
            sync_file(&self.config.dir)?;
        }
        Ok(deleted)
    }

    /// Why the log failed, if it did.
    pub fn poisoned(&self) -> Option<String> {
        self.poison.get().cloned()
    }

    fn check_poison(&self) -> Result<()> {
        match self.poison.get() {
            Some(reason) => Err(StorageError::WalPoisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Marks the log failed (the first failure wins) and returns the error
    /// the caller reports. Idempotent: an already-poisoned error passes through.
    fn poison_with(&self, cause: &StorageError) -> StorageError {
        if let StorageError::WalPoisoned(reason) = cause {
            return StorageError::WalPoisoned(reason.clone());
        }
        let reason = self.poison.get_or_init(|| {
            tracing::error!(error = %cause, "WAL poisoned; no further appends will be acknowledged");
            cause.to_string()
        });
        StorageError::WalPoisoned(reason.clone())
    }

    /// Closes the active file (fsynced) and starts a new one at `first_lsn`.
    /// A failed sync poisons the log; a new file that cannot be created for
    /// want of space is removed and the active file stays, so the next
    /// append tries again.
    fn rotate(&self, st: &mut MutexGuard<'_, AppendState>, first_lsn: Lsn) -> Result<()> {
        if self.config.fsync {
            self.sync_file(&st.active.file, &st.active.path).map_err(|e| self.poison_with(&e))?;
        }
        let new = match create_file(&self.config.dir, first_lsn, self.config.fsync) {
            Ok(new) => new,
            Err(e) if e.is_disk_full() => {
                let _ = fs::remove_file(self.config.dir.join(format::file_name(first_lsn)));
                return Err(e);
            }
            Err(e) => return Err(self.poison_with(&e)),
        };
        let old = std::mem::replace(&mut st.active, new);
        tracing::debug!(closed = %old.path.display(), next = %st.active.path.display(), "WAL rotated");
        st.closed.push(ClosedFile { path: old.path, first_lsn: old.first_lsn, last_lsn: Lsn(first_lsn.0 - 1) });
        Ok(())
    }

    /// Waits until `lsn` is durable, becoming the sync leader if no one is.
    fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let mut s = self.sync.lock();
        loop {
            if s.synced >= lsn {
                return Ok(());
            }
            self.check_poison()?;
            if s.leader {
                self.synced_cv.wait(&mut s);
                continue;
            }
            s.leader = true;
            let result = MutexGuard::unlocked(&mut s, || self.sync_active());
            s.leader = false;
            // A failure poisoned the log (inside `sync_file`) before the
            // leader flag is released, so no later leader can acknowledge.
            if let Ok(covered) = result {
                s.synced = s.synced.max(covered);
            }
            self.synced_cv.notify_all();
            result?;
        }
    }

    /// One group-commit fsync: everything written before it started is
    /// durable when it returns. Returns the last LSN it covers.
    fn sync_active(&self) -> Result<Lsn> {
        // Records in closed files were fsynced at rotation, so syncing the
        // file active at this instant covers every LSN written so far.
        let (file, path, covered) = {
            let st = self.append.lock();
            let covered = Lsn(self.next_lsn.load(Ordering::Acquire) - 1);
            (Arc::clone(&st.active.file), st.active.path.clone(), covered)
        };
        self.sync_file(&file, &path)?;
        failpoint::hit("wal_after_fsync");
        Ok(covered)
    }

    /// fsyncs one data file. A failure poisons the log before the `fsync`
    /// lock is released; once poisoned, no fsync is attempted (its success
    /// would prove nothing about pages an earlier failed fsync dropped).
    ///
    /// The file's pages stay in the page cache: the head maps large records
    /// from there (see [`Written::map`]), and the cache is freed with the
    /// file once its records are sealed. (Dropping them after each fsync
    /// made the head keep a second copy in process memory.)
    fn sync_file(&self, file: &File, path: &Path) -> Result<()> {
        let _serial = self.fsync.lock();
        self.check_poison()?;
        let injected = failpoint::fails("wal_fsync_eio");
        #[cfg(test)]
        let injected = injected || self.fail_next_sync.swap(false, Ordering::SeqCst);
        if injected {
            let source = std::io::Error::other("injected fsync failure");
            return Err(self.poison_with(&crate::error::io_error(path.to_path_buf(), source)));
        }
        file.sync_data().at(path).map_err(|e| self.poison_with(&e))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.config.dir)
            .field("next_lsn", &self.next_lsn())
            .field("poisoned", &self.poison.get())
            .finish_non_exhaustive()
    }
}

/// Creates `{first_lsn:020}.wal` with its header, durably (file and
/// directory entry) when `fsync` is set.
fn create_file(dir: &Path, first_lsn: Lsn, fsync: bool) -> Result<ActiveFile> {
    let path = dir.join(format::file_name(first_lsn));
    let mut file = OpenOptions::new().read(true).append(true).create_new(true).open(&path).at(&path)?;
    file.write_all(&format::file_header()).at(&path)?;
    if fsync {
        file.sync_all().at(&path)?;
        sync_file(dir)?;
    }
    Ok(ActiveFile { file: Arc::new(file), path, first_lsn, len_bytes: format::FILE_HEADER_LEN, records: 0 })
}

/// Makes the file or directory at `path` durable, data and metadata.
fn sync_file(path: &Path) -> Result<()> {
    #[cfg(test)]
    if FAIL_SYNC_OF.with(|p| p.borrow().as_deref() == Some(path)) {
        return Err(std::io::Error::other("injected sync failure")).at(path);
    }
    File::open(path).and_then(|f| f.sync_all()).at(path)
}

#[cfg(test)]
thread_local! {
    /// A file whose [`sync_file`] fails on this thread, for tests.
    pub(crate) static FAIL_SYNC_OF: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}
