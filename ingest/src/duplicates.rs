//! The duplicate log: when each duplicate of an event arrived, for the
//! event trace (`GET /v1/trace`, docs/trace.md).
//!
//! The dedupe index answers "seen before?" and keeps no more: not how many
//! copies came, nor when. Disputes ask exactly that ("we sent it three
//! times"), so every copy answered `duplicate` at ingest, and every copy
//! dropped by the exact check at seal, is appended here as a fixed-width
//! record:
//!
//! ```text
//!  duplicates/{seq:08}.log   records of RECORD_BYTES, little-endian:
//!    key u128 | received_ms i64 | ts i64 | stage u8 | 7 bytes zero
//!  append ─► current file (buffered, one write per call; not fsynced)
//!         ─► past FILE_SHARE of the budget: a new file
//!         ─► past the budget: the oldest files deleted
//!  lookup(key) ─► every file, record by record (a scan of at most the budget)
//! ```
//!
//! The log is diagnostic, not part of counting: a crash may lose its last
//! unflushed records or leave a torn one at a file's end (skipped when
//! read), and a seal that is retried after an abort may log its drops
//! twice. It never holds more than its budget; the oldest duplicates go
//! first, and [`DuplicateLog::stats`] says since when it remembers.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::Serialize;

/// The log's directory, under the data directory.
pub const DUPLICATES_DIR: &str = "duplicates";

const RECORD_BYTES: usize = 40;
/// A file is closed, and a new one begun, once it holds this share of the
/// budget: the oldest quarter goes at once when the budget is full.
const FILE_SHARE: u64 = 4;
/// A lookup reads a file in pieces of this many bytes (whole records).
const READ_BYTES: u64 = RECORD_BYTES as u64 * 16_384;
/// Arrivals a lookup lists; the count stays exact past it.
pub const MAX_LISTED: usize = 100;

/// Where a duplicate was caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateStage {
    /// Answered `duplicate` to the request that carried it.
    Ingest = 1,
    /// Dropped by the exact check when its bucket was sealed.
    Seal = 2,
}

impl DuplicateStage {
    fn from_code(code: u8) -> Option<DuplicateStage> {
        match code {
            1 => Some(DuplicateStage::Ingest),
            2 => Some(DuplicateStage::Seal),
            _ => None,
        }
    }
}

/// One duplicate copy of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Wall-clock time it was caught, epoch ms.
    pub received_ms: i64,
    /// The event time the copy carried.
    pub ts: i64,
    pub stage: DuplicateStage,
}

/// What the log holds about one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// Every copy logged.
    pub count: usize,
    /// The first [`MAX_LISTED`] of them, oldest first.
    pub arrivals: Vec<Arrival>,
}

/// `/metrics` figures and how far back the log reaches.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DuplicateLogStats {
    pub bytes: u64,
    pub records: u64,
    pub budget_bytes: u64,
    /// When the oldest record still held was caught, epoch ms (`None`: empty).
    pub oldest_ms: Option<i64>,
}

struct Current {
    seq: u64,
    out: BufWriter<File>,
    bytes: u64,
}

struct Inner {
    /// Closed files, oldest first: (seq, bytes).
    closed: Vec<(u64, u64)>,
    current: Option<Current>,
    oldest_ms: Option<i64>,
}

/// A bounded, append-only log of duplicate arrivals (module docs).
pub struct DuplicateLog {
    dir: PathBuf,
    budget_bytes: u64,
    inner: Mutex<Inner>,
}

fn file_name(seq: u64) -> String {
    format!("{seq:08}.log")
}

fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

impl DuplicateLog {
    /// Opens (or creates) the log in `dir`, holding at most `budget_bytes`.
    /// Files left by an earlier run are kept and read; appends go to a new
    /// file, so a torn record stays at the end of an old one.
    pub fn open(dir: &Path, budget_bytes: u64) -> std::io::Result<DuplicateLog> {
        fs::create_dir_all(dir)?;
        let mut closed = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(seq) = seq_of(&path) {
                closed.push((seq, fs::metadata(&path)?.len()));
            }
        }
        closed.sort_unstable();
        let log = DuplicateLog {
            dir: dir.to_path_buf(),
            budget_bytes: budget_bytes.max(RECORD_BYTES as u64 * FILE_SHARE),
            inner: Mutex::new(Inner { closed, current: None, oldest_ms: None }),
        };
        {
            let mut inner = log.inner.lock();
            log.trim(&mut inner, 0)?;
            inner.oldest_ms = log.first_received(&inner);
        }
        Ok(log)
    }

    /// Appends one record per `(key, ts)`, all caught now at `stage`.
    /// Written in pieces of at most a file each, so that the log stays in
    /// its budget even while one call holds more than the budget.
    pub fn append(&self, keys: &[(u128, i64)], stage: DuplicateStage, received_ms: i64) -> std::io::Result<()> {
        let per_file = (self.budget_bytes / FILE_SHARE / RECORD_BYTES as u64).max(1) as usize;
        let mut inner = self.inner.lock();
        for piece in keys.chunks(per_file) {
            let result = self.append_piece(&mut inner, piece, stage, received_ms);
            if let Err(e) = result {
                // Whatever reached the file stays readable; the next append
                // starts a file of its own, counted from what is on disk.
                if let Some(mut broken) = inner.current.take() {
                    let _ = broken.out.flush();
                    let path = self.dir.join(file_name(broken.seq));
                    let bytes = fs::metadata(&path).map_or(broken.bytes, |m| m.len());
                    inner.closed.push((broken.seq, bytes));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn append_piece(
        &self,
        inner: &mut Inner,
        keys: &[(u128, i64)],
        stage: DuplicateStage,
        received_ms: i64,
    ) -> std::io::Result<()> {
        let incoming = (keys.len() * RECORD_BYTES) as u64;
        let full_file = self.budget_bytes / FILE_SHARE;
        if inner.current.as_ref().is_some_and(|c| c.bytes + incoming > full_file)
            && let Some(mut done) = inner.current.take()
        {
            // Listed before the flush: a failed flush leaves its file
            // known (and trimmed in its turn), not orphaned.
            inner.closed.push((done.seq, done.bytes));
            done.out.flush()?;
        }
        self.trim(inner, incoming)?;
        if inner.current.is_none() {
            let seq = inner.closed.last().map_or(0, |(s, _)| s + 1);
            let file = fs::OpenOptions::new().create_new(true).append(true).open(self.dir.join(file_name(seq)))?;
            inner.current = Some(Current { seq, out: BufWriter::new(file), bytes: 0 });
        }
        if inner.oldest_ms.is_none() {
            inner.oldest_ms = Some(received_ms);
        }
        let Some(current) = inner.current.as_mut() else {
            return Ok(());
        };
        for &(key, ts) in keys {
            current.out.write_all(&encode(key, received_ms, ts, stage))?;
        }
        current.out.flush()?;
        current.bytes += incoming;
        Ok(())
    }

    /// Deletes the oldest closed files until `incoming` more bytes fit.
    fn trim(&self, inner: &mut Inner, incoming: u64) -> std::io::Result<()> {
        let held = |inner: &Inner| {
            inner.closed.iter().map(|(_, b)| b).sum::<u64>() + inner.current.as_ref().map_or(0, |c| c.bytes)
        };
        let mut removed = false;
        while let Some(&(seq, _)) = inner.closed.first() {
            if held(inner) + incoming <= self.budget_bytes {
                break;
            }
            match fs::remove_file(self.dir.join(file_name(seq))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            inner.closed.remove(0);
            removed = true;
        }
        if removed {
            inner.oldest_ms = self.first_received(inner);
        }
        Ok(())
    }

    /// The receive time of the first record of the oldest file holding one.
    fn first_received(&self, inner: &Inner) -> Option<i64> {
        let seqs = inner.closed.iter().map(|(s, _)| *s).chain(inner.current.as_ref().map(|c| c.seq));
        seqs.into_iter().find_map(|seq| {
            let mut record = [0u8; RECORD_BYTES];
            File::open(self.dir.join(file_name(seq))).ok()?.read_exact(&mut record).ok()?;
            decode(&record).map(|(_, a)| a.received_ms)
        })
    }

    /// Every logged duplicate of `key`, oldest first (files read in
    /// pieces: memory stays small whatever the budget).
    pub fn lookup(&self, key: u128) -> std::io::Result<Duplicates> {
        self.lookup_where(key, |_| true)
    }

    /// The logged duplicates of `key` whose event time passes `keep` (an
    /// id stored twice, beyond the dedupe window: each copy's own).
    pub fn lookup_where(&self, key: u128, keep: impl Fn(i64) -> bool) -> std::io::Result<Duplicates> {
        let seqs: Vec<u64> = {
            let mut inner = self.inner.lock();
            if let Some(c) = inner.current.as_mut() {
                c.out.flush()?;
            }
            inner.closed.iter().map(|(s, _)| *s).chain(inner.current.as_ref().map(|c| c.seq)).collect()
        };
        let mut found = Duplicates::default();
        let mut piece = Vec::with_capacity(READ_BYTES as usize);
        for seq in seqs {
            let mut file = match File::open(self.dir.join(file_name(seq))) {
                Ok(file) => file,
                // Trimmed since the list was taken: its records are gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            loop {
                piece.clear();
                let n = (&mut file).take(READ_BYTES).read_to_end(&mut piece)?;
                for record in piece.chunks_exact(RECORD_BYTES) {
                    let Some((k, arrival)) = decode(record) else { continue };
                    if k != key || !keep(arrival.ts) {
                        continue;
                    }
                    found.count += 1;
                    if found.arrivals.len() < MAX_LISTED {
                        found.arrivals.push(arrival);
                    }
                }
                if (n as u64) < READ_BYTES {
                    break;
                }
            }
        }
        Ok(found)
    }

    pub fn stats(&self) -> DuplicateLogStats {
        let inner = self.inner.lock();
        let bytes = inner.closed.iter().map(|(_, b)| b).sum::<u64>() + inner.current.as_ref().map_or(0, |c| c.bytes);
        DuplicateLogStats {
            bytes,
            records: bytes / RECORD_BYTES as u64,
            budget_bytes: self.budget_bytes,
            oldest_ms: inner.oldest_ms,
        }
    }
}

fn encode(key: u128, received_ms: i64, ts: i64, stage: DuplicateStage) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    record[..16].copy_from_slice(&key.to_le_bytes());
    record[16..24].copy_from_slice(&received_ms.to_le_bytes());
    record[24..32].copy_from_slice(&ts.to_le_bytes());
    record[32] = stage as u8;
    record
}

/// A record's key and arrival; `None` for a record that is not one.
fn decode(record: &[u8]) -> Option<(u128, Arrival)> {
    let key = u128::from_le_bytes(record.get(..16)?.try_into().ok()?);
    let at = |r: std::ops::Range<usize>| record.get(r)?.try_into().ok().map(i64::from_le_bytes);
    let stage = DuplicateStage::from_code(*record.get(32)?)?;
    Some((key, Arrival { received_ms: at(16..24)?, ts: at(24..32)?, stage }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_count_every_copy_and_list_them_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DuplicateLog::open(dir.path(), 1 << 20).expect("open");
        log.append(&[(7, 100), (8, 100)], DuplicateStage::Ingest, 1_000).expect("append");
        log.append(&[(7, 101)], DuplicateStage::Seal, 2_000).expect("append");
        let found = log.lookup(7).expect("lookup");
        assert_eq!(found.count, 2);
        assert_eq!(
            found.arrivals,
            vec![
                Arrival { received_ms: 1_000, ts: 100, stage: DuplicateStage::Ingest },
                Arrival { received_ms: 2_000, ts: 101, stage: DuplicateStage::Seal },
            ]
        );
        assert_eq!(log.lookup(9).expect("lookup").count, 0);
        assert_eq!(log.lookup_where(7, |ts| ts > 100).expect("lookup").arrivals.len(), 1, "the copy's own");
        assert_eq!(log.stats().records, 3);
        assert_eq!(log.stats().oldest_ms, Some(1_000));
    }

    #[test]
    fn the_log_survives_a_reopen_and_skips_a_torn_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = DuplicateLog::open(dir.path(), 1 << 20).expect("open");
            log.append(&[(5, 1)], DuplicateStage::Ingest, 10).expect("append");
        }
        // A crash mid-write leaves part of a record.
        let path = dir.path().join(file_name(0));
        let mut f = fs::OpenOptions::new().append(true).open(&path).expect("open file");
        f.write_all(&5u128.to_le_bytes()).expect("torn write");
        drop(f);
        let log = DuplicateLog::open(dir.path(), 1 << 20).expect("reopen");
        log.append(&[(5, 2)], DuplicateStage::Ingest, 20).expect("append");
        let found = log.lookup(5).expect("lookup");
        assert_eq!(found.count, 2);
        assert_eq!(found.arrivals.iter().map(|a| a.received_ms).collect::<Vec<_>>(), vec![10, 20]);
    }

    #[test]
    fn the_budget_drops_the_oldest_records_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = (RECORD_BYTES * 40) as u64;
        let log = DuplicateLog::open(dir.path(), budget).expect("open");
        for i in 0..200u64 {
            log.append(&[(u128::from(i), i as i64)], DuplicateStage::Ingest, i as i64).expect("append");
        }
        let stats = log.stats();
        assert!(stats.bytes <= budget, "{} bytes held, budget {budget}", stats.bytes);
        let on_disk: u64 =
            fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").metadata().expect("meta").len()).sum();
        assert!(on_disk <= budget, "{on_disk} bytes on disk");
        assert_eq!(log.lookup(0).expect("lookup").count, 0, "the oldest went first");
        assert_eq!(log.lookup(199).expect("lookup").count, 1, "the newest stays");
        let oldest = stats.oldest_ms.expect("not empty");
        assert!(oldest > 150, "oldest kept record from {oldest}");
        assert_eq!(log.lookup(oldest as u128).expect("lookup").count, 1);
        assert_eq!(log.lookup(oldest as u128 - 1).expect("lookup").count, 0);

        // One append of five times the budget: still within it, the newest kept.
        let many: Vec<(u128, i64)> = (1_000..1_200u128).map(|k| (k, 0)).collect();
        log.append(&many, DuplicateStage::Seal, 7).expect("append");
        let on_disk: u64 =
            fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").metadata().expect("meta").len()).sum();
        assert!(on_disk <= budget && log.stats().bytes <= budget, "{on_disk} bytes on disk");
        assert_eq!(log.lookup(1_199).expect("lookup").count, 1);
        assert_eq!(log.lookup(1_000).expect("lookup").count, 0);
    }
}
