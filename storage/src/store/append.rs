//! The write path: a request's batches into the WAL and the head.
//!
//! ```text
//!  append_all(rows)
//!    disk space, head room ─► per batch: group by partition ─► encode ─► WAL write
//!                                                   │ under the append lock, in LSN order
//!                                                   ▼
//!                                      head.insert(chunks)  (visible to snapshots at once)
//!    ─► one fsync for the last record ─► Ok(lsn)
//! ```

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Store, now_ms};
use crate::error::{Result, StorageError};
use crate::event::EventBatch;
use crate::head::{HeadChunk, Indexed};
use crate::ids::Lsn;
use crate::manifest::PartitionKey;
use crate::offsets::SourceOffsets;
use crate::wal::{RecordNotes, Written, decode_encoded_record, encode_batch_into};

/// Smallest WAL payload whose rows the head keeps as a mapping of the WAL
/// file rather than as a copy in memory: a mapping costs a system call and
/// a memory map of the process (see [`Written::map`]).
const MIN_MAPPED_PAYLOAD_BYTES: usize = 256 << 10;

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

/// The head's chunks of one WAL record, by partition: rows of the payload
/// as written, decoded in place. A payload of [`MIN_MAPPED_PAYLOAD_BYTES`]
/// or more is mapped from the WAL file: the page cache holds those bytes
/// once written, and keeping the rows instead kept a second copy, in memory
/// the kernel had to map and zero page by page (a fifth of the time of an
/// Arrow load). A smaller payload, or one that could not be mapped, is
/// copied: the rows may be slices of the request body, which the head would
/// then keep whole.
#[allow(unsafe_code)]
pub(super) fn head_chunks(
    lsn: Lsn,
    written: &Written,
    payload: &[u8],
    indexed: Indexed,
) -> Vec<(PartitionKey, HeadChunk)> {
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

impl Store {
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
            match self.write_rows(*r, None) {
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

    /// Appends the selected rows of `batch` in one WAL record with the
    /// source offsets of the messages they came in (`crate::offsets`), as
    /// [`Store::append`] does: the offsets are durable exactly when the
    /// rows are. An append with no rows still writes its offsets, so that a
    /// run of duplicates or bad messages is not read again.
    pub fn append_from(&self, rows: Rows<'_>, offsets: &SourceOffsets) -> Result<Lsn> {
        if self.inner.stop.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        self.check_disk_space()?;
        self.check_head_room()?;
        let lsn = self.write_rows(rows, Some(offsets))?;
        self.inner.wal.wait_written(lsn)?;
        Ok(lsn)
    }

    /// One record of [`Store::append_all`]: groups the rows, writes them to
    /// the WAL (not waiting for its fsync) and puts them in the head.
    pub(super) fn write_rows(&self, r: Rows<'_>, offsets: Option<&SourceOffsets>) -> Result<Lsn> {
        let indexed = self.inner.partitioning.index(r.batch, r.keep)?;
        let mut payload = self.inner.encode_buffers.take();
        let notes = RecordNotes { arrived_ms: Some(now_ms()), offsets };
        encode_batch_into(&indexed.rows, &indexed.dropped, notes, payload.vec_mut())?;
        let appended = indexed.stored_rows() as u64;
        let max_ts = indexed.max_ts;
        let lsn = self.inner.wal.write_with(&payload, |lsn, written| {
            let chunks = head_chunks(lsn, &written, &payload, indexed);
            self.inner.visible.write().head.insert(chunks, Instant::now());
            // In LSN order, under the log's append lock.
            if let Some(offsets) = offsets {
                let mut noted = self.inner.offsets.lock();
                noted.0.merge(offsets);
                noted.1 = lsn;
            }
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
    pub(super) fn head_limit(&self) -> Option<u64> {
        self.inner.config.max_head_bytes.filter(|&l| l > 0)
    }
}
