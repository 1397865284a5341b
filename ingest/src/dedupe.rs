//! Exactly-once counting, part one: idempotency keys and the dedupe index.
//!
//! An event's idempotency key is a 128-bit hash of (`publisher_id`, `type`,
//! `event_id`) (DESIGN.md §2). The [`DedupeIndex`] remembers every key
//! accepted within the dedupe window (plus the allowed lateness, since a
//! retry may arrive that late) and answers two questions:
//!
//! ```text
//!  ingest:  admit(keys)  ── new? record as pending : "duplicate"      (atomic per key)
//!  seal:    claim(keys)  ── pending → sealed;  already sealed? drop    (the exact check)
//!  restart: recover from the segments inside the window + replayed head
//! ```
//!
//! Memory: keys live in a sharded open-addressing table of bare `u128`
//! slots (16 bytes). The low 16 bits of a stored key are replaced by a tag
//! (sealed bit + 15-bit time epoch used for expiry), leaving 112 bits of
//! hash. Tables grow by 1.25× at a load of 0.85, so the table costs between
//! 18.8 and 23.5 bytes per key: under the 24-byte budget at every size. A
//! table sized ahead of its keys (expected keys, an announced load) is sized
//! for a load of 0.75, 21.3 bytes per key, where probe runs are shorter.
//! Expired keys are dropped by [`DedupeIndex::expire`], shard by shard.

pub use adstore_storage::{batch_keys, idempotency_key};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

mod flight;
mod runs;
mod spill;
mod table;
#[cfg(test)]
pub(crate) mod tests;

pub use flight::Flight;
use flight::{FlightKeys, Flights, Rewrite};
use runs::Run;
pub use spill::SpilledStats;
use table::{EPOCHS, MAX_LOAD, PRESIZED_LOAD, SEALED, Shard, Tag, stored, tag};

const SHARDS: usize = 64;
const SLOT_BYTES: usize = std::mem::size_of::<u128>();
/// An announced load grows a table that holds less than 1/1.05 of its target.
const ANNOUNCED_SLACK: f64 = 1.05;
/// Ingest sweeps expired keys when the newest epoch has moved this far
/// since the last sweep. Live keys span at most 61 epochs (see
/// [`DedupeConfig::epoch_ms`]), so tags stay far younger than `EPOCHS`.
const INGEST_SWEEP_EPOCHS: i64 = 16;

/// Dedupe settings.
#[derive(Debug, Clone, Copy)]
pub struct DedupeConfig {
    /// Two events with one key whose times are this close are one event.
    /// Default 24 h.
    pub window_ms: i64,
    /// How late an event may arrive; keys are kept for window + lateness.
    pub allowed_lateness_ms: i64,
    /// Keys the table is sized for from the start, and never shrinks
    /// below. 0 (the default): start empty and grow as keys arrive.
    pub expected_keys: usize,
}

impl Default for DedupeConfig {
    fn default() -> DedupeConfig {
        DedupeConfig { window_ms: 86_400_000, allowed_lateness_ms: 86_400_000, expected_keys: 0 }
    }
}

impl DedupeConfig {
    /// Width of one expiry epoch: the retention spans at most 60 epochs, a
    /// small part of the `EPOCHS` a tag tells apart.
    fn epoch_ms(&self) -> i64 {
        ((self.window_ms + self.allowed_lateness_ms) / 60).max(60_000)
    }

    fn epoch_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.epoch_ms())
    }

    fn retention_epochs(&self) -> i64 {
        (self.window_ms + self.allowed_lateness_ms).div_euclid(self.epoch_ms()) + 1
    }

    /// The oldest event time whose key expiry still keeps once the newest
    /// event time is `newest_ts`: the start of the oldest retained epoch
    /// (expiry works in whole epochs, so this is up to two epochs before
    /// `newest_ts - window - lateness`).
    pub fn kept_from(&self, newest_ts: i64) -> i64 {
        self.epoch_of(newest_ts).saturating_sub(self.retention_epochs()).saturating_mul(self.epoch_ms())
    }

    fn window_epochs(&self) -> i64 {
        self.window_ms.div_euclid(self.epoch_ms()) + 1
    }

    /// Bytes of table allocated up front for `expected_keys`.
    pub fn expected_table_bytes(&self) -> u64 {
        (self.min_slots() * SHARDS * std::mem::size_of::<u128>()) as u64
    }

    /// Slots each shard keeps at least: room for its share of
    /// `expected_keys` within the maximum load.
    fn min_slots(&self) -> usize {
        if self.expected_keys == 0 {
            return 0;
        }
        (shard_share(self.expected_keys) as f64 / PRESIZED_LOAD) as usize + 1
    }
}

/// Room one shard needs for its part of `keys` keys spread over the
/// shards by hash: the mean plus five standard deviations (a binomial
/// count's is at most the square root of the mean), plus a little. A shard
/// that still gets more grows as usual.
fn shard_share(keys: usize) -> usize {
    let mean = keys / SHARDS;
    mean + 5 * (mean as f64).sqrt() as usize + 64
}

/// Table bytes before and after [`DedupeIndex::reserve_announced`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableResize {
    pub from_bytes: u64,
    pub to_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DedupeStats {
    pub keys: u64,
    pub table_bytes: u64,
}

impl DedupeStats {
    pub fn bytes_per_key(&self) -> f64 {
        if self.keys == 0 { 0.0 } else { self.table_bytes as f64 / self.keys as f64 }
    }
}

/// A set of idempotency keys (the keys of one seal, at claim). The keys
/// are 128-bit hashes already, so the set folds them to 64 bits instead of
/// hashing them again (SipHash of every key was a tenth of the ingest path
/// when ingest kept its keys in flight in such a set).
type KeySet = HashSet<u128, KeyHash>;

#[derive(Default, Clone, Copy)]
struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key as u64) ^ ((key >> 64) as u64);
    }

    /// Not used by `u128` keys; mixes any other input properly.
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

/// How long a request blocked by another's keys waits before it looks
/// again, at most: a settle does not take the lock the waiter sleeps on, so
/// its wake-up can come just before the wait begins.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Keys admitted by a request whose events are not yet durable are **in
/// flight**. A later request carrying one of them waits in
/// [`DedupeIndex::admit_durable`] until the first one settles: if it was
/// stored, the later one is a duplicate; if its append failed, the later
/// one is admitted. So a `duplicate` answer is never given for an event
/// that could still be lost.
///
/// Each request in flight keeps a small table of its new keys rather than
/// each key in one shared set: settling drops the table whole, and only a
/// key already in the index (a retry, a duplicate) is looked up in the
/// tables. (Inserting every key into a shared set and removing it again
/// was 5% of Arrow ingest.)
pub struct DedupeIndex {
    config: DedupeConfig,
    shards: Vec<Mutex<Shard>>,
    flights: Mutex<Flights>,
    settled: Condvar,
    /// The newest epoch of any key recorded (absolute, not mod `EPOCHS`).
    /// Every stored tag is at or behind it, so tag ages are unambiguous as
    /// long as keys are swept before they are `EPOCHS` epochs old.
    newest_epoch: AtomicI64,
    /// The newest epoch at the last sweep.
    swept_epoch: AtomicI64,
    /// Requests between their lateness check and their admit, each with
    /// the newest event time it was checked against (`i64::MIN` until set).
    holds: Mutex<Vec<(u64, i64)>>,
    next_hold: AtomicU64,
    /// Where sealed keys go once the table has enough of them (`None`:
    /// every key stays in the table). See `spill.rs`.
    spill: Option<spill::Spill>,
}

/// A request's claim on the keys its lateness check relied on: while it
/// lasts, no sweep drops a key that an event accepted by that check could
/// repeat. Released when dropped. See [`DedupeIndex::hold`].
pub struct Hold<'a> {
    index: &'a DedupeIndex,
    id: u64,
}

impl Hold<'_> {
    /// Records the newest event time the request's lateness check uses.
    /// Call it after taking the hold and before reading that time for
    /// the check: until then the hold keeps every key.
    pub fn checked_against(&self, newest_ts: i64) {
        if let Some(h) = self.index.holds.lock().iter_mut().find(|(id, _)| *id == self.id) {
            h.1 = newest_ts;
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.index.holds.lock().retain(|(id, _)| *id != self.id);
    }
}

impl DedupeIndex {
    /// An empty index; with `expected_keys` set, its tables are allocated
    /// at that size now (resident memory reaches it as keys spread over the
    /// tables).
    pub fn new(config: DedupeConfig) -> DedupeIndex {
        let shard = || {
            let mut shard = Shard::default();
            shard.rebuild(config.min_slots(), |_| true);
            Mutex::new(shard)
        };
        DedupeIndex {
            config,
            shards: (0..SHARDS).map(|_| shard()).collect(),
            flights: Mutex::new(Flights::default()),
            settled: Condvar::new(),
            newest_epoch: AtomicI64::new(i64::MIN),
            swept_epoch: AtomicI64::new(i64::MIN),
            holds: Mutex::new(Vec::new()),
            next_hold: AtomicU64::new(0),
            spill: None,
        }
    }

    /// Takes a hold for a request about to be checked for lateness and
    /// then admitted: a sweep that runs meanwhile, started by another
    /// request that moved event time on, keeps every key within the
    /// retention of the time this request was checked against. Without
    /// it, requests of one load in flight beside the one that jumped days
    /// ahead found the keys of their re-sends swept, and stored the
    /// re-sends (issue 21). Hold from before the check until the admit
    /// has returned.
    pub fn hold(&self) -> Hold<'_> {
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.holds.lock().push((id, i64::MIN));
        Hold { index: self, id }
    }

    /// Raises the newest epoch to cover `keys`. Called before keys are
    /// recorded, so no stored tag is ever ahead of the newest epoch.
    ///
    /// Returns whether a sweep of expired keys is due, which the caller
    /// runs with [`DedupeIndex::sweep_due`] once its pass over `keys` is
    /// done: `keys` were checked for lateness against the event time before
    /// them, so a sweep relative to their own newest time would drop the
    /// keys of their re-sends (the last batch of a load that ends with a
    /// jump in event time, conversions days after the rest, admitted the
    /// re-sends it carried as new events).
    ///
    /// Only a jump so far that older tags would read as young sweeps first,
    /// and everything: ages mod `EPOCHS` are unambiguous up to that.
    /// Otherwise ingest sweeps only every `INGEST_SWEEP_EPOCHS`; the
    /// sealer's `expire` drops expired keys at each seal. (A backfill
    /// crosses an epoch every few requests: a sweep of the whole table each
    /// time was 4% of ingest.)
    #[must_use]
    fn advance(&self, keys: &[(u128, i64)]) -> bool {
        let Some(max_ts) = keys.iter().map(|(_, ts)| *ts).max() else { return false };
        let epoch = self.config.epoch_of(max_ts);
        let prev = self.newest_epoch.fetch_max(epoch, Ordering::AcqRel);
        if epoch <= prev || prev == i64::MIN {
            return false;
        }
        if self.ambiguous_jump(prev, epoch) {
            self.sweep(true);
            return false;
        }
        epoch.saturating_sub(self.swept_epoch.load(Ordering::Acquire)) >= INGEST_SWEEP_EPOCHS
    }

    /// Whether a move of the newest epoch from `prev` to `epoch` could make
    /// an unswept key's tag read younger than it is.
    fn ambiguous_jump(&self, prev: i64, epoch: i64) -> bool {
        prev != i64::MIN && epoch.saturating_sub(prev) >= EPOCHS - self.config.retention_epochs() - INGEST_SWEEP_EPOCHS
    }

    /// Runs the sweep [`DedupeIndex::advance`] found due.
    fn sweep_due(&self, due: bool) {
        if due {
            self.sweep(false);
        }
    }

    /// Age in epochs of a stored tag relative to the newest epoch.
    fn age(&self, slot_tag: Tag) -> i64 {
        let now = self.newest_epoch.load(Ordering::Acquire).rem_euclid(EPOCHS);
        (now - i64::from(slot_tag & !SEALED)).rem_euclid(EPOCHS)
    }

    /// Like [`DedupeIndex::admit`], for a request about to be made durable:
    /// admits `keys`, and keeps the new ones in flight until
    /// [`DedupeIndex::settle`]. If another request has one of them in
    /// flight, this one waits (up to `timeout`) until that request settles,
    /// having admitted none of its own keys, so two waiting requests never
    /// wait for each other. Returns `None` on timeout, with nothing admitted.
    pub fn admit_durable(&self, keys: &[(u128, i64)], timeout: std::time::Duration) -> Option<(Vec<bool>, Flight)> {
        let deadline = std::time::Instant::now() + timeout;
        let mut flights = self.flights.lock();
        loop {
            flights.drop_settled();
            // Under the flights lock: no other request admits between a
            // key's lookup and the registration of this request's keys.
            let mut own = flights.table_for(keys.len());
            let blocker = match self.admit_unless(keys, |key| flights.may_hold(key), &mut own) {
                Ok((verdicts, rewritten)) => {
                    let settled = Arc::new(AtomicBool::new(false));
                    flights.open.push((settled.clone(), own));
                    return Some((verdicts, Flight { settled, rewritten }));
                }
                Err(key) => {
                    flights.keep_spare(own);
                    flights.holder_of(key)
                }
            };
            // Look again only once the request holding the key has settled:
            // each look is a pass over all of this request's keys, undone
            // when blocked. Looking again at every other request's settle
            // (or every `SETTLE_POLL`) made 14 to 34 blocked passes over
            // 64K keys in a 10M-event Arrow load, against 4 or 5 now.
            loop {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return None;
                }
                self.settled.wait_until(&mut flights, deadline.min(now + SETTLE_POLL));
                if blocker.as_ref().is_none_or(|settled| settled.load(Ordering::Acquire)) {
                    break;
                }
            }
        }
    }

    /// [`DedupeIndex::admit`], with each new key added to `own`, unless a
    /// key already in the index (pending or sealed) may be in flight: then
    /// it stops there, undoes what it wrote, and returns that key. Also
    /// returns the slots it rewrote, for [`DedupeIndex::settle`] to undo.
    ///
    /// The undo is exact: keys it added are removed, and keys it found and
    /// gave a new time (found outside the window) get their old time back
    /// (see [`DedupeIndex::restore`]). Looking first and writing in a second
    /// pass cost 6-8% of Arrow ingest.
    fn admit_unless(
        &self,
        keys: &[(u128, i64)],
        in_flight: impl Fn(u128) -> bool,
        own: &mut FlightKeys,
    ) -> Result<(Vec<bool>, Vec<Rewrite>), u128> {
        const OPEN: u8 = 0;
        const ADDED: u8 = 1;
        const REWRITTEN: u8 = 2;
        const DUPLICATE: u8 = 3;
        let sweep = self.advance(keys);
        let mut state = vec![OPEN; keys.len()];
        let mut blocked = None;
        // Few: only re-sends from outside the window.
        let mut rewritten: Vec<Rewrite> = Vec::new();
        self.by_shard(keys, |shard, runs, i, (key, ts)| {
            if blocked.is_some() {
                return;
            }
            let (slot, found) = shard.find(key);
            if found && in_flight(key) {
                blocked = Some(key);
                return;
            }
            if self.seen_within(shard, runs, slot, found, key, ts) {
                state[i] = DUPLICATE;
                return;
            }
            let before = shard.slots[slot];
            // The new event is pending, whatever became of the old copy.
            let written = stored(key, self.epoch_tag(ts));
            shard.slots[slot] = written;
            shard.noted(self.config.epoch_of(ts));
            if found {
                rewritten.push(Rewrite { entry: i, key, before, written, found_before: !own.may_hold(key) });
                state[i] = REWRITTEN;
            } else {
                shard.len += 1;
                state[i] = ADDED;
            }
            own.insert(key);
        });
        let Some(blocked) = blocked else {
            self.sweep_due(sweep);
            return Ok((state.into_iter().map(|s| s == DUPLICATE).collect(), rewritten));
        };
        let added: Vec<(u128, i64)> = keys.iter().zip(&state).filter(|(_, s)| **s == ADDED).map(|(k, _)| *k).collect();
        self.undo(&rewritten, &added);
        self.sweep_due(sweep);
        Err(blocked)
    }

    /// Undoes an admit: the rewritten slots first, newest first (a key
    /// added and then rewritten by a later event of the same request goes
    /// back to added), then the added keys are forgotten.
    fn undo(&self, rewritten: &[Rewrite], added: &[(u128, i64)]) {
        for r in rewritten.iter().rev() {
            self.restore(*r);
        }
        self.forget(added);
    }

    /// Gives a rewritten key its old time back if the slot still holds the
    /// time written. Its sealed bit stays as it is now: a seal's claim or
    /// unclaim may have changed it since, and that change stands.
    fn restore(&self, r: Rewrite) {
        let mut shard = self.shard(r.key).lock();
        let (slot, found) = shard.find(r.key);
        let time_of = |s: u128| s & !u128::from(SEALED);
        if found && time_of(shard.slots[slot]) == time_of(r.written) {
            let sealed = shard.slots[slot] & u128::from(SEALED);
            shard.slots[slot] = time_of(r.before) | sealed;
            // The old time may be older than any the shard noted since:
            // the next sweep looks at every key again.
            shard.oldest_epoch = i64::MIN;
        }
    }

    /// Ends the flight of a request admitted by
    /// [`DedupeIndex::admit_durable`]; `admitted` are its keys answered new
    /// and `stored` says whether their events are durable. If not, the
    /// admit is undone (keys it added are forgotten, keys it found get their
    /// old time back), so a retry is admitted.
    pub fn settle(&self, flight: Flight, admitted: &[(u128, i64)], stored: bool) {
        if !stored {
            let found_before = |k: &u128| flight.rewritten.iter().any(|r| r.found_before && r.key == *k);
            let added: Vec<(u128, i64)> = admitted.iter().filter(|(k, _)| !found_before(k)).copied().collect();
            self.undo(&flight.rewritten, &added);
        }
        Self::end_flight(&self.settled, flight);
    }

    /// [`DedupeIndex::settle`] for a request whose entries before
    /// `stored_before` (indexes into the keys it was admitted with) are
    /// durable and the others are not (an append that failed part way).
    /// `admitted` are its keys answered new, each with its entry. What the
    /// lost entries did is undone, entry by entry: their rewrites get the
    /// old time back, and a key they added is forgotten unless a stored
    /// entry holds it too.
    pub fn settle_stored(&self, flight: Flight, admitted: &[(usize, (u128, i64))], stored_before: usize) {
        let lost = |entry: usize| entry >= stored_before;
        // Undone before the flag is set: a lookup that still finds a key
        // (under its shard's lock) still sees the request in flight.
        if admitted.iter().any(|(e, _)| lost(*e)) {
            let kept: HashSet<u128> = admitted.iter().filter(|(e, _)| !lost(*e)).map(|(_, (k, _))| *k).collect();
            let found_before = |k: &u128| flight.rewritten.iter().any(|r| r.found_before && r.key == *k);
            let added: Vec<(u128, i64)> = admitted
                .iter()
                .filter(|(e, (k, _))| lost(*e) && !kept.contains(k) && !found_before(k))
                .map(|(_, kt)| *kt)
                .collect();
            let rewritten: Vec<Rewrite> = flight.rewritten.iter().filter(|r| lost(r.entry)).copied().collect();
            self.undo(&rewritten, &added);
        }
        Self::end_flight(&self.settled, flight);
    }

    fn end_flight(settled: &Condvar, flight: Flight) {
        flight.settled.store(true, Ordering::Release);
        settled.notify_all();
    }

    pub fn config(&self) -> DedupeConfig {
        self.config
    }

    fn shard(&self, key: u128) -> &Mutex<Shard> {
        &self.shards[self.shard_of(key)]
    }

    fn shard_of(&self, key: u128) -> usize {
        // The top bits pick the shard; `home` uses the next 64 bits.
        (key >> 122) as usize % SHARDS
    }

    fn epoch_tag(&self, ts: i64) -> Tag {
        (self.config.epoch_of(ts).rem_euclid(EPOCHS)) as Tag
    }

    /// Whether a stored tag's event time is within the window of `ts`
    /// (at epoch granularity).
    fn within_window(&self, slot_tag: Tag, ts: i64) -> bool {
        let newest = self.newest_epoch.load(Ordering::Acquire);
        let age_new = newest.saturating_sub(self.config.epoch_of(ts));
        let age_old = self.age(slot_tag);
        (age_new - age_old).abs() <= self.config.window_epochs()
    }

    /// Ingest-time check. For each `(key, ts)` in order: a duplicate if the
    /// key was admitted before (or earlier in `keys`) with an event time in
    /// the window; otherwise recorded as pending. Returns the verdicts.
    pub fn admit(&self, keys: &[(u128, i64)]) -> Vec<bool> {
        let sweep = self.advance(keys);
        let mut verdicts = vec![false; keys.len()];
        self.by_shard(keys, |shard, runs, i, (key, ts)| {
            let (slot, found) = shard.find(key);
            if self.seen_within(shard, runs, slot, found, key, ts) {
                verdicts[i] = true;
                return;
            }
            // The new event is pending, whatever became of an old copy.
            let t = self.epoch_tag(ts);
            if !found {
                shard.len += 1;
            }
            shard.slots[slot] = stored(key, t);
            shard.noted(self.config.epoch_of(ts));
        });
        self.sweep_due(sweep);
        verdicts
    }

    /// Runs `f(shard, index, key)` for every key, shard by shard, each
    /// shard locked once with room made for all its keys. Keys of one
    /// shard keep their order, and equal keys share a shard, so the result
    /// is that of taking the keys in order. The table is far larger than
    /// the caches: with one lock per key, each lookup's cache miss waited
    /// for the previous one (a lock is a full fence); under one lock the
    /// misses of consecutive keys overlap.
    fn by_shard(&self, keys: &[(u128, i64)], f: impl FnMut(&mut Shard, &[Arc<Run>], usize, (u128, i64))) {
        self.in_shards(keys, true, f);
    }

    /// Whether `key`, looked up in `shard` (`slot`, `found`), was recorded
    /// with an event time in the window of `ts`: in the table if it is
    /// there, else in the newest run that holds it.
    fn seen_within(&self, shard: &Shard, runs: &[Arc<Run>], slot: usize, found: bool, key: u128, ts: i64) -> bool {
        let recorded = if found { Some(tag(shard.slots[slot])) } else { self.spilled(runs, key, ts) };
        recorded.is_some_and(|t| self.within_window(t, ts))
    }

    /// [`DedupeIndex::by_shard`], making room for the keys only if `room`
    /// (not for keys being removed). `f` also gets the runs, read once
    /// the shard is locked (see `spill.rs`).
    fn in_shards(
        &self,
        keys: &[(u128, i64)],
        room: bool,
        mut f: impl FnMut(&mut Shard, &[Arc<Run>], usize, (u128, i64)),
    ) {
        // A counting sort by shard, stable: keys of a shard stay in input order.
        let mut start = [0usize; SHARDS + 1];
        for (k, _) in keys {
            start[self.shard_of(*k) + 1] += 1;
        }
        for s in 0..SHARDS {
            start[s + 1] += start[s];
        }
        let mut next = start;
        let mut order = vec![0u32; keys.len()];
        for (i, (k, _)) in keys.iter().enumerate() {
            let s = self.shard_of(*k);
            order[next[s]] = i as u32;
            next[s] += 1;
        }
        for (s, shard) in self.shards.iter().enumerate() {
            let run = &order[start[s]..start[s + 1]];
            if run.is_empty() {
                continue;
            }
            let mut shard = shard.lock();
            let runs = self.runs_now();
            if room {
                shard.reserve(run.len());
            }
            shard.touch(run.iter().map(|&i| keys[i as usize].0));
            for &i in run {
                f(&mut shard, &runs, i as usize, keys[i as usize]);
            }
        }
    }

    /// Forgets keys admitted for events that were then not stored (their
    /// WAL append failed), so a retry is not taken for a duplicate.
    ///
    /// Shard by shard, like an admit: a request blocked by another's key
    /// forgets what it had added so far, and a lock and a lone cache miss
    /// per key made that 1.3% of the server's time in an Arrow load.
    pub fn forget(&self, keys: &[(u128, i64)]) {
        self.in_shards(keys, false, |shard, _, _, (key, _)| {
            if shard.slots.is_empty() {
                return;
            }
            let (i, found) = shard.find(key);
            if found && tag(shard.slots[i]) & SEALED == 0 {
                shard.remove_at(i);
            }
        });
    }

    /// The exact check at seal: marks each key sealed and returns, for each,
    /// whether it was already sealed (a duplicate that must not be stored
    /// twice) or repeats an earlier key of `keys`. Every claim is closed by
    /// [`DedupeIndex::claim_done`] once its seal commits or aborts (after
    /// [`DedupeIndex::unclaim`]).
    pub fn claim(&self, keys: &[(u128, i64)]) -> Vec<bool> {
        self.claim_begin();
        let sweep = self.advance(keys);
        let mut verdicts = vec![false; keys.len()];
        let mut seen = KeySet::with_capacity_and_hasher(keys.len(), KeyHash);
        let mut sealed = 0usize;
        self.by_shard(keys, |shard, runs, i, (key, ts)| {
            // Equal keys share a shard and keep their order: the first
            // occurrence is claimed, the others repeat it.
            if !seen.insert(key) {
                verdicts[i] = true;
                return;
            }
            let (slot, found) = shard.find(key);
            // Runs hold sealed keys only.
            let recorded = if found { Some(tag(shard.slots[slot])) } else { self.spilled(runs, key, ts) };
            if recorded.is_some_and(|t| t & SEALED != 0 && self.within_window(t, ts)) {
                verdicts[i] = true;
                return;
            }
            if !found {
                shard.len += 1;
            }
            shard.slots[slot] = stored(key, self.epoch_tag(ts) | SEALED);
            shard.noted(self.config.epoch_of(ts));
            sealed += 1;
        });
        self.sealed_more(sealed);
        self.sweep_due(sweep);
        verdicts
    }

    /// Counts keys sealed into the table towards the next spill.
    fn sealed_more(&self, keys: usize) {
        if let Some(spill) = &self.spill {
            spill.sealed_since.fetch_add(keys, Ordering::AcqRel);
        }
    }

    /// Undoes [`DedupeIndex::claim`] for a seal that did not commit: the
    /// keys go back to pending.
    pub fn unclaim(&self, keys: &[(u128, i64)]) {
        for &(key, _) in keys {
            let mut shard = self.shard(key).lock();
            if shard.slots.is_empty() {
                continue;
            }
            let (i, found) = shard.find(key);
            if found {
                let s = shard.slots[i];
                shard.slots[i] = stored(key, tag(s) & !SEALED);
            }
        }
    }

    /// Makes room for about `keys` more keys in every shard at once (keys
    /// spread evenly over shards), so that loading them does not grow each
    /// table step by step: recovery knows its key count up front.
    pub fn reserve(&self, keys: usize) {
        let room = shard_share(self.in_memory_at_most(keys));
        for shard in &self.shards {
            shard.lock().reserve(room);
        }
    }

    /// Makes room for `keys` more keys that a client announced (a bulk
    /// load saying how many events are still to come): each shard that
    /// could not hold its share of the keys held now plus `keys` within
    /// the maximum load grows, in one step, to hold them at
    /// `PRESIZED_LOAD`, but never past a table of `max_bytes`, since an
    /// announcement is not trusted with more memory than that. Growing once
    /// instead of in 1.25x steps saved about a tenth of the server's CPU in
    /// a 10M-event load (docs/ingest.md).
    pub fn reserve_announced(&self, keys: usize, max_bytes: u64) -> TableResize {
        // Room for what every shard will hold at the end, not for its share
        // of `keys` on top of what it holds: a load announces the rest
        // with every request, and the slack of each share would add up.
        let keys = self.in_memory_at_most(keys);
        let held: usize = self.shards.iter().map(|s| s.lock().len).sum();
        let max_slots = usize::try_from(max_bytes / (SHARDS * SLOT_BYTES) as u64).unwrap_or(usize::MAX);
        let target = shard_share(held.saturating_add(keys));
        // `held` also counts keys of requests sent after this one that
        // arrived first, so consecutive announcements of one load differ by
        // a few requests' keys: a table within `ANNOUNCED_SLACK` of the
        // target is left as it is rather than copied for so little.
        let enough = (target as f64 / ANNOUNCED_SLACK) as usize;
        let mut resize = TableResize::default();
        for shard in &self.shards {
            let mut shard = shard.lock();
            resize.from_bytes += (shard.slots.len() * SLOT_BYTES) as u64;
            // Grown only if the keys would not fit at the maximum load, and
            // then to `PRESIZED_LOAD`: growing whenever a table was fuller
            // than that copied it for every 5% more keys.
            if enough as f64 > shard.slots.len() as f64 * MAX_LOAD {
                shard.grow_to(target, max_slots);
            }
            resize.to_bytes += (shard.slots.len() * SLOT_BYTES) as u64;
        }
        resize
    }

    /// Of `keys` keys about to arrive, how many the table will hold at once:
    /// with runs, about a spill's worth stay in memory.
    fn in_memory_at_most(&self, keys: usize) -> usize {
        self.spill.as_ref().map_or(keys, |s| keys.min(s.keys))
    }

    /// Records keys known to be sealed (recovery from segments).
    pub fn insert_sealed(&self, keys: &[(u128, i64)]) {
        let sweep = self.advance(keys);
        self.by_shard(keys, |shard, _, _, (key, ts)| {
            let (i, found) = shard.find(key);
            if !found {
                shard.len += 1;
            }
            shard.slots[i] = stored(key, self.epoch_tag(ts) | SEALED);
            shard.noted(self.config.epoch_of(ts));
        });
        self.sealed_more(keys.len());
        self.sweep_due(sweep);
    }

    /// Drops keys whose event time is older than window + lateness behind
    /// `newest_ts` (or behind the newest key recorded, if that is later).
    /// Returns how many were dropped.
    pub fn expire(&self, newest_ts: i64) -> u64 {
        let epoch = self.config.epoch_of(newest_ts);
        let prev = self.newest_epoch.fetch_max(epoch, Ordering::AcqRel);
        let newest = self.newest_epoch.load(Ordering::Acquire);
        // Nothing can have expired since the last sweep at this epoch.
        if self.swept_epoch.load(Ordering::Acquire) >= newest {
            return 0;
        }
        self.sweep(self.ambiguous_jump(prev, epoch))
    }

    /// How many epochs behind the newest a key is kept: the retention, and
    /// the retention of the oldest time a request in flight was checked
    /// against (everything while one is unset).
    fn keep_epochs(&self) -> i64 {
        let newest = self.newest_epoch.load(Ordering::Acquire);
        let held = self.holds.lock().iter().map(|(_, ts)| *ts).min();
        let behind = held.map_or(0, |ts| {
            if ts == i64::MIN { i64::MAX } else { newest.saturating_sub(self.config.epoch_of(ts)).max(0) }
        });
        self.config.retention_epochs().saturating_add(behind)
    }

    /// Rebuilds each shard without its expired keys, one shard at a time,
    /// so the extra memory is at most one shard's.
    fn sweep(&self, everything: bool) -> u64 {
        let newest = self.newest_epoch.load(Ordering::Acquire);
        self.swept_epoch.fetch_max(newest, Ordering::AcqRel);
        let keep_epochs = self.keep_epochs();
        self.expire_runs(everything, keep_epochs);
        let mut dropped = 0u64;
        for shard in &self.shards {
            let mut shard = shard.lock();
            if !everything && newest.saturating_sub(shard.oldest_epoch) <= keep_epochs {
                continue;
            }
            let before = shard.len;
            let live = |s: u128| !everything && self.age(tag(s)) <= keep_epochs;
            let mut survivors = 0;
            let mut oldest_age = None;
            for age in shard.slots.iter().filter(|&&s| s != 0).map(|&s| self.age(tag(s))) {
                if !everything && age <= keep_epochs {
                    survivors += 1;
                    oldest_age = oldest_age.max(Some(age));
                }
            }
            shard.oldest_epoch = oldest_age.map_or(i64::MAX, |age| newest.saturating_sub(age));
            if survivors == before {
                continue;
            }
            let cap = if survivors == 0 { 0 } else { ((survivors as f64 / 0.75) as usize).max(64) };
            let cap = cap.max(self.config.min_slots());
            shard.rebuild(cap, live);
            dropped += (before - shard.len) as u64;
        }
        dropped
    }

    pub fn stats(&self) -> DedupeStats {
        let mut s = DedupeStats::default();
        for shard in &self.shards {
            let shard = shard.lock();
            s.keys += shard.len as u64;
            s.table_bytes += (shard.slots.capacity() * std::mem::size_of::<u128>()) as u64;
        }
        s
    }
}
