//! Moving sealed keys out of the dedupe table into runs on disk, so that
//! memory holds the keys of the head and of the last few seals, not of the
//! whole window.
//!
//! ```text
//!  seal commits ──► spill_if_due: `spill_keys` keys sealed since the last spill?
//!                     1. gate closed (no seal between claim and commit): copy the sealed slots
//!                     2. gate open; write them as a run; the run joins the list
//!                     3. each copied slot still unchanged in the table is removed
//!                     4. runs merged (size-tiered), expired keys dropped
//! ```
//!
//! Only keys of committed seals go to disk: a key claimed by a seal that
//! then aborts goes back to pending ([`DedupeIndex::unclaim`]), which a
//! run could not undo. So a seal's claim holds the gate until its commit
//! or abort ([`DedupeIndex::claim_done`]), and a spill copies slots only
//! while no claim is open. Lookups take the table first and the runs
//! newest first, reading the list under the shard's lock: a spill adds its
//! run before it removes any slot, so a key is always in one or the other.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use super::runs::{Run, Runs, merge_slots};
use super::table::{SEALED, Tag, tag};
use super::{DedupeConfig, DedupeIndex};

pub(super) struct Spill {
    pub runs: RwLock<Runs>,
    /// Keys the table may gain between two spills.
    pub keys: usize,
    /// Keys sealed into the table (claimed, or loaded sealed at recovery)
    /// since the last spill copied the sealed ones out.
    pub sealed_since: AtomicUsize,
    gate: Mutex<Gate>,
    opened: Condvar,
    /// One spill or merge at a time.
    work: Mutex<()>,
    /// Keys written by spills since the process started.
    written: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Gate {
    /// Seals between their claim and its commit or abort.
    claims: usize,
    /// A spill is copying sealed slots.
    copying: bool,
}

impl Spill {
    pub fn new(dir: &Path, keys: usize) -> Spill {
        Spill {
            runs: RwLock::new(Runs::new(dir)),
            keys: keys.max(1),
            sealed_since: AtomicUsize::new(0),
            gate: Mutex::new(Gate::default()),
            opened: Condvar::new(),
            work: Mutex::new(()),
            written: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// What the runs hold, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct SpilledStats {
    pub runs: u64,
    /// Keys in runs (a key spilled twice counts twice until a merge).
    pub keys: u64,
    /// Filters and fences.
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Keys spilled since the process started.
    pub written: u64,
}

impl DedupeIndex {
    /// An index that keeps at most about `spill_keys` sealed keys in
    /// memory beyond the head's, and writes the rest to sorted runs in
    /// `dir`. Nothing is read or written there until recovery calls
    /// [`DedupeIndex::clear_stale_runs`] or the first spill.
    pub fn with_spill(config: DedupeConfig, dir: &Path, spill_keys: usize) -> DedupeIndex {
        let mut index = DedupeIndex::new(config);
        index.spill = Some(Spill::new(dir, spill_keys));
        index
    }

    /// Empties the runs directory of what an earlier process left: the
    /// runs are a cache of the segments' keys, written again as recovery
    /// reads them. Call it once the data directory is locked (an open
    /// that failed to take the lock must not delete a running server's
    /// runs).
    pub fn clear_stale_runs(&self) -> std::io::Result<()> {
        self.spill.as_ref().map_or(Ok(()), |s| s.runs.read().clear_stale())
    }

    /// The tag of `key` in the newest run that holds it among the runs
    /// with keys in the window of an event at `ts` (others cannot make it
    /// a duplicate, and their filters are not probed).
    pub(super) fn spilled(&self, runs: &[Arc<Run>], key: u128, ts: i64) -> Option<Tag> {
        if runs.is_empty() {
            return None;
        }
        let (e, w) = (self.config.epoch_of(ts), self.config.window_epochs());
        let (lo, hi) = (e.saturating_sub(w), e.saturating_add(w));
        runs.iter().rev().filter(|r| r.max_epoch >= lo && r.min_epoch <= hi).find_map(|r| r.get(key))
    }

    /// The runs to look keys up in: read under a shard's lock (see the module doc).
    pub(super) fn runs_now(&self) -> Arc<Vec<Arc<Run>>> {
        self.spill.as_ref().map_or_else(|| Arc::new(Vec::new()), |s| s.runs.read().list.clone())
    }

    /// Opens a claim: waits while a spill copies slots. Paired with
    /// [`DedupeIndex::claim_done`].
    pub(super) fn claim_begin(&self) {
        if let Some(spill) = &self.spill {
            let mut gate = spill.gate.lock();
            while gate.copying {
                spill.opened.wait(&mut gate);
            }
            gate.claims += 1;
        }
    }

    /// Closes a seal's claim once the seal has committed or aborted.
    pub fn claim_done(&self) {
        if let Some(spill) = &self.spill {
            let mut gate = spill.gate.lock();
            gate.claims = gate.claims.saturating_sub(1);
        }
    }

    /// Spills the sealed keys of the table to a new run if the table grew
    /// by the spill size since the last spill and no seal is between its
    /// claim and commit (else a later call does it). Then merges runs.
    pub fn spill_if_due(&self) -> std::io::Result<()> {
        let Some(spill) = &self.spill else { return Ok(()) };
        // Sealed keys, not all keys: keys pending in a full head are
        // sealed in place later, and a trigger on the table's growth left
        // millions of them in memory once a load ended.
        if spill.sealed_since.load(Ordering::Acquire) < spill.keys {
            return Ok(());
        }
        let Some(_work) = spill.work.try_lock() else { return Ok(()) };
        {
            let mut gate = spill.gate.lock();
            if gate.claims > 0 {
                return Ok(());
            }
            gate.copying = true;
        }
        // No claim can seal a key while the gate is closed.
        let copied = self.copy_sealed();
        spill.sealed_since.store(0, Ordering::Release);
        spill.gate.lock().copying = false;
        spill.opened.notify_all();
        let newest = self.newest_epoch.load(Ordering::Acquire);
        self.write_run(spill, copied.clone(), newest).and_then(|()| {
            self.remove_copied(&copied);
            self.merge_runs(spill)
        })
    }

    /// Every sealed slot of the table, sorted.
    fn copy_sealed(&self) -> Vec<u128> {
        let mut slots = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            slots.extend(shard.slots.iter().copied().filter(|&s| s != 0 && tag(s) & SEALED != 0));
        }
        slots.sort_unstable();
        slots
    }

    /// The absolute epoch of a stored tag.
    fn epoch_of_tag(&self, newest: i64, t: Tag) -> i64 {
        newest - self.age(t)
    }

    fn write_run(&self, spill: &Spill, slots: Vec<u128>, newest: i64) -> std::io::Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let epochs = slots.iter().map(|&s| self.epoch_of_tag(newest, tag(s)));
        let (min, max) = epochs.fold((i64::MAX, i64::MIN), |(lo, hi), e| (lo.min(e), hi.max(e)));
        let path = spill.runs.write().next_path()?;
        let run = Run::write(path, &slots, min, max)?;
        spill.runs.write().push(run);
        spill.written.fetch_add(slots.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Removes each copied slot the table still holds unchanged. A slot
    /// that changed since the copy (admitted again from outside the
    /// window) stays: it is newer than the run's.
    fn remove_copied(&self, copied: &[u128]) {
        let keys: Vec<(u128, i64)> = copied.iter().map(|&s| (s, 0)).collect();
        self.in_shards(&keys, false, |shard, _, _, (slot, _)| {
            if shard.slots.is_empty() {
                return;
            }
            let (i, found) = shard.find(slot);
            if found && shard.slots[i] == slot {
                shard.remove_at(i);
            }
        });
        for shard in &self.shards {
            let mut shard = shard.lock();
            let cap = ((shard.len as f64 / 0.75) as usize).max(64).max(self.config.min_slots());
            if shard.len > 0 && shard.slots.len() > 2 * cap {
                shard.rebuild(cap, |_| true);
            } else if shard.len == 0 && shard.slots.len() > cap {
                shard.rebuild(self.config.min_slots(), |_| true);
            }
        }
    }

    /// Merges the newest run with the runs before it that are not more
    /// than twice its size, dropping expired keys, until none qualifies.
    fn merge_runs(&self, spill: &Spill) -> std::io::Result<()> {
        loop {
            let old = spill.runs.read().to_merge();
            if old.is_empty() {
                return Ok(());
            }
            let slots: Vec<Vec<u128>> = old.iter().map(|r| r.read_all()).collect::<std::io::Result<_>>()?;
            let newest = self.newest_epoch.load(Ordering::Acquire);
            let keep = self.keep_epochs();
            let merged = merge_slots(&slots, |s| self.age(tag(s)) <= keep);
            let run = if merged.is_empty() {
                None
            } else {
                let epochs = merged.iter().map(|&s| self.epoch_of_tag(newest, tag(s)));
                let (min, max) = epochs.fold((i64::MAX, i64::MIN), |(lo, hi), e| (lo.min(e), hi.max(e)));
                let path = spill.runs.write().next_path()?;
                Some(Run::write(path, &merged, min, max)?)
            };
            spill.runs.write().replace(&old, run);
        }
    }

    /// Drops runs that hold only expired keys (all of them on `everything`).
    pub(super) fn expire_runs(&self, everything: bool, keep_epochs: i64) {
        if let Some(spill) = &self.spill {
            let mut runs = spill.runs.write();
            if everything {
                runs.clear();
            } else {
                let newest = self.newest_epoch.load(Ordering::Acquire);
                runs.expire(newest.saturating_sub(keep_epochs));
            }
        }
    }

    pub fn spilled_stats(&self) -> SpilledStats {
        let Some(spill) = &self.spill else { return SpilledStats::default() };
        let list = spill.runs.read().list.clone();
        SpilledStats {
            runs: list.len() as u64,
            keys: list.iter().map(|r| r.len() as u64).sum(),
            memory_bytes: list.iter().map(|r| r.memory_bytes()).sum(),
            disk_bytes: list.iter().map(|r| r.disk_bytes()).sum(),
            written: spill.written.load(Ordering::Relaxed),
        }
    }
}
