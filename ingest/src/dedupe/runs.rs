//! Sealed keys spilled from the dedupe table to disk: immutable sorted
//! runs, each behind an in-memory binary fuse filter.
//!
//! ```text
//!  table (RAM, 16 B a slot) ──spill── run-N.keys (disk, 16 B a key, sorted by key)
//!                                     + BinaryFuse16 filter (RAM, ≈2.3 B a key)
//!                                     + one fence key per 256 (RAM, 0.06 B a key)
//!  lookup: filter says no (all but ≈1/65,536 of new keys) → not in the run
//!          filter says maybe → one 4 KiB block of the run, binary search
//! ```
//!
//! A run holds table slots as they were (key body + tag), so an answer from
//! a run is the table's answer: the same 112 bits of key, the same epoch.
//! Runs are merged like the touch runs of the attribution index: a new run
//! absorbs the runs before it while they are not more than twice its size,
//! so a store holds about log2(keys / spill) runs, and a merge drops the
//! keys that expired. Runs are a cache of what the segments hold: the
//! directory is emptied at open and the runs are written again from the
//! keys recovery reads (see [`super::DedupeIndex::clear_stale_runs`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use xorf::{BinaryFuse16, Filter};

use super::table::{TAG_BITS, Tag, body, stored, tag};

const MAGIC: &[u8; 8] = b"ADKEYRN1";
/// Magic, key count, oldest and newest epoch (absolute).
const HEADER: usize = 32;
const SLOT: usize = 16;
/// Keys per fence: a lookup past the filter reads one block of this many
/// slots (4 KiB, one page).
const FENCE: usize = 256;

/// The 64 bits of a key a filter holds: bits 16..80, the table's `home`
/// bits (the top bits pick the shard, the low ones hold the tag).
fn filter_key(slot: u128) -> u64 {
    (slot >> TAG_BITS) as u64
}

/// One run file, mapped, with its filter and fences in memory.
pub(super) struct Run {
    path: PathBuf,
    map: Mmap,
    len: usize,
    /// Absolute epochs of its oldest and newest key.
    pub min_epoch: i64,
    pub max_epoch: i64,
    filter: Option<BinaryFuse16>,
    /// The body of the first slot of every `FENCE` slots.
    fences: Vec<u128>,
}

impl Run {
    /// Writes `slots` (sorted by body, one per body) to `path` and maps it.
    /// `min_epoch..=max_epoch` are the absolute epochs of their tags.
    pub fn write(path: PathBuf, slots: &[u128], min_epoch: i64, max_epoch: i64) -> std::io::Result<Run> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        out.write_all(MAGIC)?;
        out.write_all(&(slots.len() as u64).to_le_bytes())?;
        out.write_all(&min_epoch.to_le_bytes())?;
        out.write_all(&max_epoch.to_le_bytes())?;
        for s in slots {
            out.write_all(&s.to_le_bytes())?;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        let file = File::open(&path)?;
        // SAFETY: the file is this process's own, written above and never
        // written again; it is removed only once no `Run` maps it.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file)? };
        let mut keys: Vec<u64> = slots.iter().map(|&s| filter_key(s)).collect();
        keys.sort_unstable();
        keys.dedup();
        let filter = if keys.is_empty() {
            None
        } else {
            Some(BinaryFuse16::try_from(&keys).map_err(|e| std::io::Error::other(format!("dedupe run filter: {e}")))?)
        };
        let fences = slots.iter().step_by(FENCE).map(|&s| body(s)).collect();
        Ok(Run { path, map, len: slots.len(), min_epoch, max_epoch, filter, fences })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> u128 {
        let at = HEADER + i * SLOT;
        let mut b = [0u8; SLOT];
        b.copy_from_slice(&self.map[at..at + SLOT]);
        u128::from_le_bytes(b)
    }

    /// The tag stored for `key`, if the run holds it.
    pub fn get(&self, key: u128) -> Option<Tag> {
        let filter = self.filter.as_ref()?;
        let want = body(stored(key, 0));
        if !filter.contains(&filter_key(want)) {
            return None;
        }
        let block = self.fences.partition_point(|&f| f <= want).checked_sub(1)?;
        let (mut lo, mut hi) = (block * FENCE, ((block + 1) * FENCE).min(self.len));
        while lo < hi {
            let mid = (lo + hi) / 2;
            let s = self.slot(mid);
            match body(s).cmp(&want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(tag(s)),
            }
        }
        None
    }

    /// Every slot, in order, read from the file (not through the map, so
    /// that a merge does not leave the whole run resident).
    pub fn read_all(&self) -> std::io::Result<Vec<u128>> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(&self.path)?);
        let mut header = [0u8; HEADER];
        input.read_exact(&mut header)?;
        if &header[..8] != MAGIC {
            return Err(std::io::Error::other(format!("{}: not a dedupe run", self.path.display())));
        }
        let mut slots = Vec::with_capacity(self.len);
        let mut b = [0u8; SLOT];
        for _ in 0..self.len {
            input.read_exact(&mut b)?;
            slots.push(u128::from_le_bytes(b));
        }
        Ok(slots)
    }

    /// Bytes of memory it holds outside the page cache.
    pub fn memory_bytes(&self) -> u64 {
        let filter = self.filter.as_ref().map_or(0, |f| f.fingerprints.len() * 2);
        (filter + self.fences.len() * SLOT) as u64
    }

    pub fn disk_bytes(&self) -> u64 {
        (HEADER + self.len * SLOT) as u64
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // The last holder of a run replaced by a merge or expired removes
        // its file; a failure leaves a file that the next open removes.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The runs of one dedupe index, oldest first.
pub(super) struct Runs {
    dir: PathBuf,
    next: u64,
    pub list: Arc<Vec<Arc<Run>>>,
}

impl Runs {
    /// No runs yet; they will go to `dir`, which is not touched until
    /// [`Runs::clear_stale`] or the first run.
    pub fn new(dir: &Path) -> Runs {
        Runs { dir: dir.to_path_buf(), next: 0, list: Arc::new(Vec::new()) }
    }

    /// Creates the directory, or empties it of the runs of an earlier
    /// process. Only once that process is gone: recovery calls it, after
    /// the store has taken the data directory's lock.
    pub fn clear_stale(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let ours = self.list.iter().any(|r| r.path == path);
            if !ours && path.extension().is_some_and(|e| e == "keys" || e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The path of the next run to write.
    pub fn next_path(&mut self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        self.next += 1;
        Ok(self.dir.join(format!("run-{:08}.keys", self.next)))
    }

    pub fn push(&mut self, run: Run) {
        Arc::make_mut(&mut self.list).push(Arc::new(run));
    }

    /// Replaces the runs `old` (a contiguous stretch of the list, by
    /// identity) with `merged`.
    pub fn replace(&mut self, old: &[Arc<Run>], merged: Option<Run>) {
        let list = Arc::make_mut(&mut self.list);
        let Some(at) = list.iter().position(|r| Arc::ptr_eq(r, &old[0])) else { return };
        list.drain(at..at + old.len());
        if let Some(m) = merged {
            list.insert(at, Arc::new(m));
        }
    }

    /// Drops the runs whose newest key is older than `floor` (absolute epoch).
    pub fn expire(&mut self, floor: i64) {
        if self.list.iter().any(|r| r.max_epoch < floor) {
            Arc::make_mut(&mut self.list).retain(|r| r.max_epoch >= floor);
        }
    }

    pub fn clear(&mut self) {
        self.list = Arc::new(Vec::new());
    }

    /// The runs a new run at the end should absorb: the runs before it that
    /// are not more than twice the size of what absorbs them.
    pub fn to_merge(&self) -> Vec<Arc<Run>> {
        let list = &self.list;
        let Some(last) = list.last() else { return Vec::new() };
        let mut size = last.len();
        let mut from = list.len() - 1;
        while from > 0 && list[from - 1].len() <= 2 * size {
            from -= 1;
            size += list[from].len();
        }
        if from + 1 == list.len() { Vec::new() } else { list[from..].to_vec() }
    }
}

/// The sorted union of runs given oldest first, one slot per body: where
/// runs share a body, the newest run's slot (a key spilled again was
/// admitted again since, so its later slot is its answer). Slots that
/// `keep` refuses are left out.
pub(super) fn merge_slots(runs: &[Vec<u128>], keep: impl Fn(u128) -> bool) -> Vec<u128> {
    let mut all: Vec<(u128, usize, u128)> = Vec::with_capacity(runs.iter().map(Vec::len).sum());
    for (age, run) in runs.iter().rev().enumerate() {
        all.extend(run.iter().map(|&s| (body(s), age, s)));
    }
    // Newest run first within a body: age 0 is the newest.
    all.sort_unstable_by_key(|&(b, age, _)| (b, age));
    all.dedup_by_key(|(b, _, _)| *b);
    all.into_iter().map(|(_, _, s)| s).filter(|&s| keep(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(i: u64) -> u128 {
        u128::from(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())) << 64 | u128::from(i) << 16
    }

    proptest::proptest! {
        /// A run answers every key it was written with, with its tag, and
        /// (almost) nothing else; merges keep the newest slot of a key.
        #[test]
        fn runs_answer_like_a_map(
            batches in proptest::collection::vec(proptest::collection::vec((0u64..3000, 0u16..60), 0..900), 1..5),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let mut runs = Runs::new(dir.path());
            let mut want: BTreeMap<u128, Tag> = BTreeMap::new();
            let mut written = Vec::new();
            for batch in &batches {
                let mut slots: BTreeMap<u128, u128> = BTreeMap::new();
                for &(k, t) in batch {
                    let s = stored(key(k), t);
                    slots.insert(body(s), s);
                    want.insert(body(s), t);
                }
                let slots: Vec<u128> = slots.into_values().collect();
                written.push(slots.clone());
                let path = runs.next_path().expect("dir");
                runs.push(Run::write(path, &slots, 0, 60).expect("write"));
            }
            let lookup = |runs: &Runs, k: u128| runs.list.iter().rev().find_map(|r| r.get(k));
            for k in 0..3000u64 {
                proptest::prop_assert_eq!(lookup(&runs, key(k)), want.get(&body(stored(key(k), 0))).copied());
            }
            let merged = merge_slots(&written, |s| tag(s) >= 10);
            let path = runs.next_path().expect("dir");
            let old: Vec<Arc<Run>> = runs.list.to_vec();
            runs.replace(&old, Some(Run::write(path, &merged, 0, 60).expect("write")));
            proptest::prop_assert_eq!(runs.list.len(), 1);
            for k in 0..3000u64 {
                let expect = want.get(&body(stored(key(k), 0))).copied().filter(|t| *t >= 10);
                proptest::prop_assert_eq!(lookup(&runs, key(k)), expect);
            }
        }
    }

    #[test]
    fn replaced_and_expired_runs_leave_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        let mut runs = Runs::new(dir.path());
        for epoch in 0..3 {
            let path = runs.next_path().expect("dir");
            runs.push(Run::write(path, &[stored(key(epoch as u64), 1)], epoch, epoch).expect("write"));
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 3);
        runs.expire(1);
        assert_eq!(runs.list.len(), 2);
        let old = runs.to_merge();
        assert_eq!(old.len(), 2, "two runs of one key each merge");
        runs.replace(&old, None);
        drop(old);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
        // A new process empties the directory of what an old one left.
        std::fs::write(dir.path().join("run-00000009.keys"), b"stale").expect("write");
        Runs::new(dir.path()).clear_stale().expect("clear");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
