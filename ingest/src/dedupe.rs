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
//!  restart: recover from `{segment}.keys` sidecars + replayed head     (no data rescan)
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

use adstore_storage::{ColumnId, EventBatch, EventType};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

const SHARDS: usize = 64;
const SLOT_BYTES: usize = std::mem::size_of::<u128>();
/// An announced load grows a table that holds less than 1/1.05 of its target.
const ANNOUNCED_SLACK: f64 = 1.05;
const MAX_LOAD: f64 = 0.85;
/// The load a table sized ahead of its keys is sized for (expected keys,
/// an announced load): 21.3 bytes per key once they are all in, still
/// under the 24-byte budget. A new key's probe run is shorter than at
/// `MAX_LOAD`: admitting 10M keys took 343 ms at 0.85 and 275 ms at 0.75
/// into a warm table, 465 and 401 ms into a new one (`admit_10m_warm`,
/// `admit_10m_presized` in `cargo bench -p adstore-ingest --bench dedupe`).
/// Past its keys the table grows as any other, at `MAX_LOAD`.
const PRESIZED_LOAD: f64 = 0.75;
const GROWTH: f64 = 1.25;
/// A stored key's tag: the low 16 bits of its slot.
type Tag = u16;
const TAG_BITS: u32 = Tag::BITS;
const TAG_MASK: u128 = (1 << TAG_BITS) - 1;
const SEALED: Tag = 0x8000;
/// Epoch tags are kept mod this (15 bits): 2.9 years of 48-minute epochs
/// (the default window and lateness), so that a jump forward in event time
/// of up to that much leaves every tag's age unambiguous, and the keys of
/// the events just before the jump are still answered exactly.
const EPOCHS: i64 = 1 << 15;
/// Ingest sweeps expired keys when the newest epoch has moved this far
/// since the last sweep. Live keys span at most 61 epochs (see
/// [`DedupeConfig::epoch_ms`]), so tags stay far younger than `EPOCHS`.
const INGEST_SWEEP_EPOCHS: i64 = 16;

/// The idempotency key of one event: a 128-bit hash of its publisher, type
/// and id. Two publishers' colliding event ids never collide here.
pub fn idempotency_key(publisher_id: &str, kind: EventType, event_id: &str) -> u128 {
    // Hashed: publisher length (u32 LE), publisher, type code, event id.
    // Assembled on the stack for usual lengths: a heap buffer per event was
    // a few percent of ingest.
    let len = publisher_id.len() + event_id.len() + 5;
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let p = publisher_id.len();
    buf[..4].copy_from_slice(&(p as u32).to_le_bytes());
    buf[4..4 + p].copy_from_slice(publisher_id.as_bytes());
    buf[4 + p] = kind as u8;
    buf[5 + p..].copy_from_slice(event_id.as_bytes());
    xxhash_rust::xxh3::xxh3_128(buf)
}

/// The keys and event times of every row of a batch.
pub fn batch_keys(batch: &EventBatch) -> Vec<(u128, i64)> {
    let publisher = batch.str_column(ColumnId::PublisherId);
    let id = batch.str_column(ColumnId::EventId);
    let kind = batch.u8_column(ColumnId::Type).values();
    let ts = batch.ts();
    (0..batch.num_rows())
        .map(|i| {
            let k = EventType::from_code(kind[i]).unwrap_or_default();
            (idempotency_key(publisher.value(i), k, id.value(i)), ts[i])
        })
        .collect()
}

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

/// One shard: linear probing over `u128` slots, 0 = empty.
struct Shard {
    slots: Vec<u128>,
    len: usize,
    /// No key of the shard has an older epoch than this (absolute, as
    /// [`DedupeIndex::newest_epoch`]); `i64::MAX` when none was noted. A
    /// sweep passes over a shard only if this is old enough for one of
    /// its keys to have expired: in a backfill, sweeps counted the keys of
    /// tables with nothing to drop, 2.7% of the server's time.
    oldest_epoch: i64,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { slots: Vec::new(), len: 0, oldest_epoch: i64::MAX }
    }
}

#[inline]
fn stored(key: u128, tag: Tag) -> u128 {
    let body = key & !TAG_MASK;
    // Never store 0 (the empty slot), whatever the hash.
    let body = if body == 0 { 1 << TAG_BITS } else { body };
    body | u128::from(tag)
}

#[inline]
fn body(slot: u128) -> u128 {
    slot & !TAG_MASK
}

#[inline]
fn tag(slot: u128) -> Tag {
    (slot & TAG_MASK) as Tag
}

impl Shard {
    /// Notes that a key of `epoch` was stored.
    fn noted(&mut self, epoch: i64) {
        self.oldest_epoch = self.oldest_epoch.min(epoch);
    }

    fn home(&self, key: u128) -> usize {
        // Multiply-shift range reduction (tables are not powers of two) over
        // bits 16..80: not the top bits, which pick the shard and so are the
        // same for every key of a shard, nor the low bits, which hold the tag.
        ((((key >> TAG_BITS) as u64) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot index holding `key`, or the empty slot where it would go.
    fn find(&self, key: u128) -> (usize, bool) {
        let want = body(stored(key, 0));
        let n = self.slots.len();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return (i, false);
            }
            if body(s) == want {
                return (i, true);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Prefetches the first two cache lines from the home slot of each
    /// key, so that the lookups that follow find their probe runs in cache.
    /// Prefetches depend on nothing but the key, so the CPU has many misses
    /// in flight at once, where a lookup's probe loop, branching on what it
    /// loads, waits for each miss in turn. Two lines, because a probe run
    /// at 85% load often crosses into the next line (four slots each), and
    /// each crossing was another miss in turn: admitting 10M keys into a
    /// warm table took 570 ms with one load per key, 495 ms with one
    /// prefetched line, 362 ms with two, and 375 ms with three
    /// (`admit_10m_warm` in `cargo bench -p adstore-ingest --bench dedupe`).
    fn touch(&self, keys: impl Iterator<Item = u128>) {
        if self.slots.is_empty() {
            return;
        }
        for key in keys {
            prefetch_lines(&self.slots[self.home(key)..]);
        }
    }

    /// Makes room for `more` keys within the maximum load.
    fn reserve(&mut self, more: usize) {
        if (self.len + more) as f64 > self.slots.len() as f64 * MAX_LOAD {
            let need = ((self.len + more) as f64 / MAX_LOAD) as usize + 1;
            let cap = ((self.slots.len() as f64 * GROWTH) as usize).max(need).max(64);
            self.rebuild(cap, |_| true);
        }
    }

    /// Grows the table in one step to hold `keys` keys at `PRESIZED_LOAD`,
    /// but to no more than `max_slots` slots; a table that large already
    /// stays as it is.
    fn grow_to(&mut self, keys: usize, max_slots: usize) {
        let cap = ((keys as f64 / PRESIZED_LOAD) as usize + 1).min(max_slots);
        // Invariant: a larger table than now, so it keeps an empty slot.
        if cap > self.slots.len() {
            self.rebuild(cap, |_| true);
        }
    }

    /// Re-inserts the slots that `keep` accepts into a table of `cap` slots.
    fn rebuild(&mut self, cap: usize, keep: impl Fn(u128) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        self.len = 0;
        for s in old.into_iter().filter(|&s| s != 0 && keep(s)) {
            let (i, _) = self.find(s);
            self.slots[i] = s;
            self.len += 1;
        }
    }

    fn remove_at(&mut self, mut hole: usize) {
        // Backward-shift deletion keeps probe chains intact without tombstones.
        let n = self.slots.len();
        self.slots[hole] = 0;
        self.len -= 1;
        let mut i = hole;
        loop {
            i = if i + 1 == n { 0 } else { i + 1 };
            let s = self.slots[i];
            if s == 0 {
                return;
            }
            let home = self.home(s);
            // Move `s` into the hole if its home is not in (hole, i].
            let between = if hole <= i { home > hole && home <= i } else { home > hole || home <= i };
            if !between {
                self.slots[hole] = s;
                self.slots[i] = 0;
                hole = i;
            }
        }
    }
}

/// Asks the CPU to bring the cache line holding `slots[0]` and the line
/// after it into cache.
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_lines(slots: &[u128]) {
    use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    let first = slots.as_ptr().cast::<i8>();
    // SAFETY: a prefetch is a hint that never faults and changes no memory,
    // whatever the address; the second line may lie past the table's end.
    #[allow(unsafe_code)]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(first);
        _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(64));
    }
}

/// Elsewhere a load of the home slot stands in for the prefetch: it also
/// overlaps the misses of consecutive keys, though fewer of them.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch_lines(slots: &[u128]) {
    std::hint::black_box(slots[0]);
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

/// The keys one request admitted as new: an open-addressing table of
/// 64-bit fingerprints, at most half full. The keys are hashes already, so
/// the fingerprint and the probe start are bits of the key itself. Only a
/// key found in the index is looked up here: by other requests (a retry, a
/// duplicate), and by the request itself, to tell a key it added from one
/// it found. Two keys share a fingerprint with a chance of 2^-63 per
/// lookup; then a retry waits for an unrelated request to settle, or a
/// request whose append fails forgets a key it found instead of giving it
/// its old time back. (With 32-bit fingerprints, a review showed the
/// second at a chance of 2^-31 per key, too high for counts.)
///
/// The probe starts at the key's top bits, whose first six pick its shard
/// of the index: an admit takes keys shard by shard, so its inserts walk
/// the table in order, a sixty-fourth of it at a time, and mostly find it
/// in cache. Placed by lower bits, each insert was a cache miss, 38% of the
/// admit's samples in a profile of a 10M-event Arrow load.
struct FlightKeys {
    slots: Vec<u64>,
    /// 128 less log2 of the table's size: shifted right by this, a key
    /// gives its start slot.
    shift: u32,
}

impl FlightKeys {
    /// An empty table for `n` keys, made of `spare`'s memory when it is
    /// large enough (cleared, which also brings it into cache).
    fn for_keys(n: usize, spare: &mut Vec<FlightKeys>) -> FlightKeys {
        let len = n.saturating_mul(2).next_power_of_two().max(SHARDS);
        let shift = 128 - len.trailing_zeros();
        let slots = match spare.iter().position(|t| t.slots.capacity() >= len) {
            Some(i) => {
                let mut slots = spare.swap_remove(i).slots;
                slots.clear();
                slots.resize(len, 0);
                slots
            }
            None => vec![0; len],
        };
        FlightKeys { slots, shift }
    }

    /// Bits 64..128 (never 0, the empty slot), and a start from the top
    /// bits: not the bits 8..72 that place the key in its shard's table.
    fn place(&self, key: u128) -> (u64, usize) {
        (((key >> 64) as u64) | 1, (key >> self.shift) as usize)
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    fn insert(&mut self, key: u128) {
        let (print, mut i) = self.place(key);
        while self.slots[i] != 0 && self.slots[i] != print {
            i = self.next(i);
        }
        self.slots[i] = print;
    }

    fn may_hold(&self, key: u128) -> bool {
        let (print, mut i) = self.place(key);
        loop {
            match self.slots[i] {
                0 => return false,
                s if s == print => return true,
                _ => i = self.next(i),
            }
        }
    }
}

/// The requests in flight: each one's new keys, and whether it has
/// settled. Settling only sets that flag, without the lock an admit holds
/// through its pass over the index (waiting for it was a tenth of the time
/// requests spent off the CPU); the next admit drops settled entries.
#[derive(Default)]
struct Flights {
    open: Vec<(Arc<AtomicBool>, FlightKeys)>,
    /// Tables of settled requests, for the next ones to reuse: a new
    /// table is memory the kernel has to zero.
    spare: Vec<FlightKeys>,
}

/// Spare tables kept: as many as requests usually in flight.
const SPARE_FLIGHT_TABLES: usize = 8;
/// Largest spare table kept, in slots (1 MiB, for requests of up to 65,536
/// keys): a larger one, for a rare large request, is freed.
const MAX_SPARE_FLIGHT_SLOTS: usize = 1 << 17;

impl Flights {
    /// Whether a request still in flight may have admitted `key`.
    fn may_hold(&self, key: u128) -> bool {
        self.open.iter().any(|(settled, keys)| !settled.load(Ordering::Acquire) && keys.may_hold(key))
    }

    /// The settled flag of a request still in flight that may have
    /// admitted `key`.
    fn holder_of(&self, key: u128) -> Option<Arc<AtomicBool>> {
        self.open
            .iter()
            .find(|(settled, keys)| !settled.load(Ordering::Acquire) && keys.may_hold(key))
            .map(|(settled, _)| settled.clone())
    }

    fn drop_settled(&mut self) {
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].0.load(Ordering::Acquire) {
                let (_, table) = self.open.swap_remove(i);
                self.keep_spare(table);
            } else {
                i += 1;
            }
        }
    }

    /// Keeps a table no request uses any more for the next ones, if there
    /// is room and it is not too large.
    fn keep_spare(&mut self, table: FlightKeys) {
        if self.spare.len() < SPARE_FLIGHT_TABLES && table.slots.capacity() <= MAX_SPARE_FLIGHT_SLOTS {
            self.spare.push(table);
        }
    }

    /// An empty table for `n` keys.
    fn table_for(&mut self, n: usize) -> FlightKeys {
        FlightKeys::for_keys(n, &mut self.spare)
    }
}

/// A request admitted by [`DedupeIndex::admit_durable`] whose keys are in
/// flight until it is passed to [`DedupeIndex::settle`].
#[derive(Debug)]
#[must_use = "keys stay in flight until the request is settled"]
pub struct Flight {
    settled: Arc<AtomicBool>,
    /// Keys the request found in the index and gave a new time, as
    /// [`Rewrite`]s to undo if its events are not stored.
    rewritten: Vec<Rewrite>,
}

/// A slot an admit rewrote: a key found outside the window gets the new
/// event's time. Undone by [`DedupeIndex::restore`].
#[derive(Debug, Clone, Copy)]
struct Rewrite {
    key: u128,
    before: u128,
    written: u128,
    /// Whether the slot held the key before this request (not an event of
    /// the same request, earlier in it).
    found_before: bool,
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
        self.by_shard(keys, |shard, i, (key, ts)| {
            if blocked.is_some() {
                return;
            }
            let (slot, found) = shard.find(key);
            if found && in_flight(key) {
                blocked = Some(key);
                return;
            }
            if found && self.within_window(tag(shard.slots[slot]), ts) {
                state[i] = DUPLICATE;
                return;
            }
            let before = shard.slots[slot];
            let written = stored(key, self.epoch_tag(ts) | if found { tag(before) & SEALED } else { 0 });
            shard.slots[slot] = written;
            shard.noted(self.config.epoch_of(ts));
            if found {
                rewritten.push(Rewrite { key, before, written, found_before: !own.may_hold(key) });
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
        // Undone before the flag is set: a lookup that still finds a key
        // (under its shard's lock) still sees the request in flight.
        if !stored {
            let found_before = |k: &u128| flight.rewritten.iter().any(|r| r.found_before && r.key == *k);
            let added: Vec<(u128, i64)> = admitted.iter().filter(|(k, _)| !found_before(k)).copied().collect();
            self.undo(&flight.rewritten, &added);
        }
        flight.settled.store(true, Ordering::Release);
        self.settled.notify_all();
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
        self.by_shard(keys, |shard, i, (key, ts)| {
            let (slot, found) = shard.find(key);
            if found && self.within_window(tag(shard.slots[slot]), ts) {
                verdicts[i] = true;
                return;
            }
            let t = self.epoch_tag(ts) | if found { tag(shard.slots[slot]) & SEALED } else { 0 };
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
    fn by_shard(&self, keys: &[(u128, i64)], f: impl FnMut(&mut Shard, usize, (u128, i64))) {
        self.in_shards(keys, true, f);
    }

    /// [`DedupeIndex::by_shard`], making room for the keys only if `room`
    /// (not for keys being removed).
    fn in_shards(&self, keys: &[(u128, i64)], room: bool, mut f: impl FnMut(&mut Shard, usize, (u128, i64))) {
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
            if room {
                shard.reserve(run.len());
            }
            shard.touch(run.iter().map(|&i| keys[i as usize].0));
            for &i in run {
                f(&mut shard, i as usize, keys[i as usize]);
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
        self.in_shards(keys, false, |shard, _, (key, _)| {
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
    /// twice) or repeats an earlier key of `keys`.
    pub fn claim(&self, keys: &[(u128, i64)]) -> Vec<bool> {
        let sweep = self.advance(keys);
        let mut verdicts = vec![false; keys.len()];
        let mut seen = KeySet::with_capacity_and_hasher(keys.len(), KeyHash);
        self.by_shard(keys, |shard, i, (key, ts)| {
            // Equal keys share a shard and keep their order: the first
            // occurrence is claimed, the others repeat it.
            if !seen.insert(key) {
                verdicts[i] = true;
                return;
            }
            let (slot, found) = shard.find(key);
            if found && tag(shard.slots[slot]) & SEALED != 0 && self.within_window(tag(shard.slots[slot]), ts) {
                verdicts[i] = true;
                return;
            }
            if !found {
                shard.len += 1;
            }
            shard.slots[slot] = stored(key, self.epoch_tag(ts) | SEALED);
            shard.noted(self.config.epoch_of(ts));
        });
        self.sweep_due(sweep);
        verdicts
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
        let room = shard_share(keys);
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

    /// Records keys known to be sealed (recovery from sidecars).
    pub fn insert_sealed(&self, keys: &[(u128, i64)]) {
        let sweep = self.advance(keys);
        self.by_shard(keys, |shard, _, (key, ts)| {
            let (i, found) = shard.find(key);
            if !found {
                shard.len += 1;
            }
            shard.slots[i] = stored(key, self.epoch_tag(ts) | SEALED);
            shard.noted(self.config.epoch_of(ts));
        });
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

    /// Rebuilds each shard without its expired keys, one shard at a time,
    /// so the extra memory is at most one shard's.
    fn sweep(&self, everything: bool) -> u64 {
        let newest = self.newest_epoch.load(Ordering::Acquire);
        self.swept_epoch.fetch_max(newest, Ordering::AcqRel);
        // Keys within the retention of the oldest time a request in flight
        // was checked against stay too (all of them while one is unset).
        let held = self.holds.lock().iter().map(|(_, ts)| *ts).min();
        let behind = held.map_or(0, |ts| {
            if ts == i64::MIN { i64::MAX } else { newest.saturating_sub(self.config.epoch_of(ts)).max(0) }
        });
        let keep_epochs = self.config.retention_epochs().saturating_add(behind);
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

/// Sidecar encoding of a segment's keys: `ADSKEYS1`, count (u64 LE), then
/// per key the 16-byte key (LE) and its event time (i64 LE).
pub fn encode_keys(keys: &[(u128, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + keys.len() * 24);
    out.extend_from_slice(b"ADSKEYS1");
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (k, ts) in keys {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
    }
    out
}

pub fn decode_keys(bytes: &[u8]) -> Option<Vec<(u128, i64)>> {
    let rest = bytes.strip_prefix(b"ADSKEYS1")?;
    let (n, rest) = rest.split_first_chunk::<8>()?;
    let n = usize::try_from(u64::from_le_bytes(*n)).ok()?;
    if rest.len() != n.checked_mul(24)? {
        return None;
    }
    Some(
        rest.chunks_exact(24)
            .map(|c| {
                let (k, t) = c.split_at(16);
                let k = u128::from_le_bytes(k.try_into().unwrap_or([0; 16]));
                let t = i64::from_le_bytes(t.try_into().unwrap_or([0; 8]));
                (k, t)
            })
            .collect(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn keys_are_scoped_by_publisher_and_type() {
        let a = idempotency_key("p1", EventType::Click, "e1");
        assert_ne!(a, idempotency_key("p2", EventType::Click, "e1"));
        assert_ne!(a, idempotency_key("p1", EventType::Impression, "e1"));
        assert_ne!(idempotency_key("ab", EventType::Click, "c"), idempotency_key("a", EventType::Click, "bc"));
        assert_eq!(a, idempotency_key("p1", EventType::Click, "e1"));
    }

    /// Keys are stored in `.keys` sidecars: the hash must never change.
    #[test]
    fn keys_are_pinned() {
        let long = "x".repeat(300);
        let got = [
            idempotency_key("pub-07", EventType::Impression, "i-42-0"),
            idempotency_key("", EventType::Conversion, ""),
            idempotency_key(&long, EventType::Click, &long),
        ];
        let want: [u128; 3] = [
            275602801121435503353490969606958634940,
            252325976123243896022857265417502198020,
            42143490801585804183104089417562216373,
        ];
        assert_eq!(got, want);
    }

    /// A request is checked for lateness against the event time before it,
    /// so its re-sends of events from just before a jump in event time
    /// (a load that ends with conversions days after the rest) must still
    /// be found: the regression file of issue 21 admitted five such
    /// re-sends as new events. Then, with event time moved on, the old
    /// keys expire.
    #[test]
    fn a_jump_in_event_time_keeps_the_keys_its_own_request_repeats() {
        for jump_h in [70, 24 * 400] {
            let idx = DedupeIndex::new(DedupeConfig::default());
            let k = |id: &str, ts: i64| (idempotency_key("p", EventType::Impression, id), ts);
            let t0 = 40 * H;
            assert_eq!(idx.admit(&[k("a", t0), k("b", t0 + 1)]), vec![false, false]);
            let later = t0 + jump_h * H;
            let verdicts = idx.admit(&[k("a", t0), k("c", later), k("b", t0 + 1)]);
            assert_eq!(verdicts, vec![true, false, true], "re-sends in the request that jumps ({jump_h} h)");
            // Once the request is done, the keys older than the retention
            // behind the new time expire; the next request is checked for
            // lateness against that time.
            assert_eq!(idx.stats().keys, 1, "a and b expired after time moved {jump_h} h on");
            assert_eq!(idx.admit(&[k("c", later), k("d", later + 1)]), vec![true, false]);
        }
    }

    /// A request checked for lateness before another one jumped days ahead
    /// still finds the keys of its re-sends, while it holds them.
    #[test]
    fn a_hold_keeps_the_keys_a_request_was_checked_against() {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let k = |id: &str, ts: i64| (idempotency_key("p", EventType::Impression, id), ts);
        let t0 = 40 * H;
        assert_eq!(idx.admit(&[k("a", t0)]), vec![false]);
        let hold = idx.hold();
        hold.checked_against(t0);
        // Another request jumps 70 h ahead; its sweep runs after its pass.
        assert_eq!(idx.admit(&[k("far", t0 + 70 * H)]), vec![false]);
        assert_eq!(idx.expire(t0 + 70 * H), 0, "held keys stay");
        assert_eq!(idx.admit(&[k("a", t0)]), vec![true], "the held request's re-send is a duplicate");
        drop(hold);
        idx.expire(t0 + 71 * H);
        assert_eq!(idx.stats().keys, 1, "released, the old key expires");
    }

    #[test]
    fn admit_claim_forget() {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let k = |n: u64| (idempotency_key("p", EventType::Click, &n.to_string()), 10 * H);
        assert_eq!(idx.admit(&[k(1), k(2), k(1)]), vec![false, false, true]);
        assert_eq!(idx.admit(&[k(2), k(3)]), vec![true, false]);
        idx.forget(&[k(3)]);
        assert_eq!(idx.admit(&[k(3)]), vec![false], "a forgotten key may be admitted again");
        // Seal: first claim wins, a second claim of the same key is a duplicate.
        assert_eq!(idx.claim(&[k(1), k(2), k(2)]), vec![false, false, true]);
        assert_eq!(idx.claim(&[k(1)]), vec![true]);
        idx.unclaim(&[k(1)]);
        assert_eq!(idx.claim(&[k(1)]), vec![false]);
        // Sealed keys are still duplicates at ingest, and cannot be forgotten.
        idx.forget(&[k(1)]);
        assert_eq!(idx.admit(&[k(1)]), vec![true]);
    }

    #[test]
    fn window_and_expiry() {
        let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
        let idx = DedupeIndex::new(cfg);
        let key = idempotency_key("p", EventType::Impression, "x");
        assert_eq!(idx.admit(&[(key, 0)]), vec![false]);
        assert_eq!(idx.admit(&[(key, 20 * H)]), vec![true], "inside the window");
        assert_eq!(idx.stats().keys, 1);
        assert_eq!(idx.expire(30 * H), 0, "kept for window + lateness");
        assert_eq!(idx.expire(50 * H), 1);
        assert_eq!(idx.stats().keys, 0);
        assert_eq!(idx.admit(&[(key, 50 * H)]), vec![false]);
    }

    #[test]
    fn steady_ingest_over_many_tag_wraps_keeps_verdicts_and_bounds_the_table() {
        // No sealer: only ingest's own sweeps keep tags unambiguous.
        let cfg = DedupeConfig::default();
        let epoch = cfg.epoch_ms();
        let idx = DedupeIndex::new(cfg);
        let key = |e: i64| idempotency_key("p", EventType::Impression, &e.to_string());
        for e in 0..400i64 {
            assert_eq!(idx.admit(&[(key(e), e * epoch)]), vec![false], "epoch {e} is new");
            if e >= 30 {
                // A re-send 30 epochs (24 h) later, inside the window.
                assert_eq!(idx.admit(&[(key(e - 30), (e - 30) * epoch)]), vec![true], "re-send at epoch {e}");
            }
            if e >= 130 {
                // Long expired: new again, never mistaken for a recent key.
                assert_eq!(idx.admit(&[(key(e - 130), (e - 130) * epoch)]), vec![false], "old re-send at epoch {e}");
                idx.forget(&[(key(e - 130), (e - 130) * epoch)]);
            }
            // Live keys span 61 epochs, plus up to 16 epochs between sweeps.
            assert!(idx.stats().keys <= 80, "{} keys at epoch {e}", idx.stats().keys);
        }
    }

    #[test]
    fn keys_newer_than_the_last_expiry_time_are_kept() {
        // The sealer may expire with an older "newest" than ingest has seen.
        let idx = DedupeIndex::new(DedupeConfig::default());
        let key = idempotency_key("p", EventType::Impression, "late-sealer");
        assert_eq!(idx.admit(&[(key, 100 * H)]), vec![false]);
        assert_eq!(idx.expire(10 * H), 0);
        assert_eq!(idx.admit(&[(key, 100 * H)]), vec![true]);
        // Long idle, then far newer traffic: old keys never alias as recent.
        let key2 = idempotency_key("p", EventType::Impression, "ancient");
        assert_eq!(idx.admit(&[(key2, 101 * H)]), vec![false]);
        let fresh = idempotency_key("p", EventType::Impression, "fresh");
        assert_eq!(idx.admit(&[(fresh, 101 * H + 200 * 24 * H)]), vec![false]);
        assert_eq!(idx.admit(&[(key2, 101 * H + 200 * 24 * H)]), vec![false], "an expired key is new again");
    }

    #[test]
    fn memory_per_key_stays_under_budget() {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let mut worst: f64 = 0.0;
        for batch in 0..40u64 {
            let keys: Vec<(u128, i64)> =
                (0..5_000).map(|i| (idempotency_key("p", EventType::Impression, &format!("{batch}-{i}")), 0)).collect();
            idx.admit(&keys);
            worst = worst.max(idx.stats().bytes_per_key());
        }
        assert_eq!(idx.stats().keys, 200_000);
        assert!(worst <= 24.0, "bytes per key peaked at {worst}");
    }

    #[test]
    fn expected_keys_are_room_from_the_start_and_a_floor() {
        const EXPECTED: usize = 100_000;
        let cfg = DedupeConfig { expected_keys: EXPECTED, ..DedupeConfig::default() };
        let idx = DedupeIndex::new(cfg);
        let sized = idx.stats().table_bytes;
        assert!(sized as f64 >= EXPECTED as f64 * 16.0 / PRESIZED_LOAD, "table of {sized} bytes");
        assert_eq!(cfg.expected_table_bytes(), sized);
        let keys = |from: usize, n: usize, ts: i64| -> Vec<(u128, i64)> {
            (from..from + n).map(|i| (idempotency_key("p", EventType::Impression, &i.to_string()), ts)).collect()
        };
        for batch in 0..10 {
            let verdicts = idx.admit(&keys(batch * EXPECTED / 10, EXPECTED / 10, 0));
            assert!(verdicts.iter().all(|dup| !dup), "fresh keys are not duplicates");
            assert_eq!(idx.stats().table_bytes, sized, "the table grew before the expected keys were in");
        }
        assert_eq!(idx.stats().keys, EXPECTED as u64);
        assert!(idx.admit(&keys(0, 10, 0)).iter().all(|dup| *dup), "the keys are remembered");
        // Expiring every key keeps the table at its expected size.
        let far = 10 * (cfg.window_ms + cfg.allowed_lateness_ms);
        assert_eq!(idx.expire(far), EXPECTED as u64);
        assert_eq!(idx.stats().keys, 0);
        assert_eq!(idx.stats().table_bytes, sized, "the sweep shrank the table below its floor");
        // More keys than expected: it grows as usual.
        idx.admit(&keys(0, 2 * EXPECTED, far));
        assert!(idx.stats().table_bytes > sized);
        assert_eq!(idx.stats().keys, 2 * EXPECTED as u64);
    }

    #[test]
    fn an_announcement_leaves_a_table_its_keys_grew_when_they_fit() {
        // Grown by its keys alone, a table is 0.68-0.85 full. An
        // announcement of a few more keys fits within the maximum load, so
        // it must not copy the table (sized ahead, a table targets a lower
        // load; growing to that at every announcement copied the whole
        // table for each 5% of keys).
        let idx = DedupeIndex::new(DedupeConfig::default());
        for from in (0..3_000_000).step_by(10_000) {
            let keys: Vec<(u128, i64)> =
                (from..from + 10_000).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect();
            idx.admit(&keys);
        }
        let resize = idx.reserve_announced(1_000, 1 << 40);
        assert_eq!(resize.from_bytes, resize.to_bytes, "{resize:?} for 1,000 more keys on {:?}", idx.stats());
    }

    #[test]
    fn an_announced_load_grows_the_table_once_and_within_its_limit() {
        const LOAD: usize = 200_000;
        const REQUEST: usize = 5_000;
        let keys = |from: usize| -> Vec<(u128, i64)> {
            (from..from + REQUEST).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect()
        };
        let no_limit = 1 << 40;
        let idx = DedupeIndex::new(DedupeConfig::default());
        // Each request announces the events still to come, its own included.
        let first = idx.reserve_announced(LOAD, no_limit);
        assert_eq!(first.from_bytes, 0);
        let sized = first.to_bytes;
        assert!(sized as f64 >= LOAD as f64 * 16.0 / PRESIZED_LOAD, "room for the whole load: {sized} bytes");
        for from in (0..LOAD).step_by(REQUEST) {
            let resize = idx.reserve_announced(LOAD - from, no_limit);
            assert_eq!(
                resize,
                TableResize { from_bytes: sized, to_bytes: sized },
                "announcing the rest grew the table"
            );
            assert!(idx.admit(&keys(from)).iter().all(|dup| !dup));
        }
        assert_eq!(idx.stats(), DedupeStats { keys: LOAD as u64, table_bytes: sized });
        assert!(idx.admit(&keys(0)).iter().all(|dup| *dup), "the keys are remembered");

        // Requests of one load arrive out of order, so announcements
        // overshoot by a few requests: that alone does not copy the table,
        // nor does any announcement the table holds within the maximum
        // load (it is sized for less); one past that grows it.
        let other = DedupeIndex::new(DedupeConfig::default());
        let sized = other.reserve_announced(LOAD, no_limit).to_bytes;
        assert_eq!(other.reserve_announced(LOAD + LOAD / 50, no_limit).to_bytes, sized);
        assert_eq!(other.reserve_announced(LOAD + LOAD / 10, no_limit).to_bytes, sized);
        assert!(other.reserve_announced(LOAD + LOAD / 2, no_limit).to_bytes > sized);
    }

    #[test]
    fn an_announcement_never_sizes_the_table_past_its_limit() {
        const REQUEST: usize = 5_000;
        let keys = |from: usize| -> Vec<(u128, i64)> {
            (from..from + REQUEST).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect()
        };
        let limit: u64 = 1 << 20;
        // From empty: up to the limit and no further.
        let empty = DedupeIndex::new(DedupeConfig::default());
        let resize = empty.reserve_announced(1_000_000_000, limit);
        assert!(resize.to_bytes <= limit && resize.to_bytes * 10 >= limit * 9, "{resize:?} for a limit of {limit}");
        // From a table that grew by itself to just under the limit: an
        // announcement does not take it over (a 1.25x step would).
        let grown = DedupeIndex::new(DedupeConfig::default());
        let mut from = 0;
        while grown.stats().table_bytes * 5 < limit * 4 {
            assert!(grown.admit(&keys(from)).iter().all(|dup| !dup));
            from += REQUEST;
        }
        let resize = grown.reserve_announced(1_000_000_000, limit);
        assert!(resize.to_bytes <= limit, "{resize:?} for a limit of {limit}");
        // Keys that do arrive still grow it, within the usual bytes per key.
        for _ in 0..20 {
            assert!(grown.admit(&keys(from)).iter().all(|dup| !dup));
            from += REQUEST;
        }
        assert!(grown.stats().table_bytes > limit);
        assert!(grown.stats().bytes_per_key() <= 24.0, "{:?}", grown.stats());
    }

    #[test]
    fn sidecar_round_trip() {
        let keys = vec![(1u128 << 100 | 7, -5i64), (u128::MAX, i64::MAX)];
        assert_eq!(decode_keys(&encode_keys(&keys)), Some(keys));
        assert_eq!(decode_keys(b"garbage"), None);
        let mut bytes = encode_keys(&[(1, 1)]);
        bytes.pop();
        assert_eq!(decode_keys(&bytes), None);
    }

    #[test]
    fn a_retry_waits_for_the_first_request_to_settle() {
        let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
        let key = [(idempotency_key("p", EventType::Click, "e"), 0i64)];
        let (verdicts, first) = idx.admit_durable(&key, std::time::Duration::from_secs(1)).expect("admitted");
        assert_eq!(verdicts, vec![false]);
        // While in flight, a retry cannot get an answer.
        assert!(idx.admit_durable(&key, std::time::Duration::from_millis(20)).is_none());
        let waiter = {
            let idx = idx.clone();
            std::thread::spawn(move || idx.admit_durable(&key, std::time::Duration::from_secs(10)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The first append failed: the retry is admitted as new.
        idx.settle(first, &key, false);
        let (verdicts, retry) = waiter.join().expect("thread").expect("admitted after the settle");
        assert_eq!(verdicts, vec![false]);
        idx.settle(retry, &key, true);
        assert_eq!(idx.admit_durable(&key, std::time::Duration::from_secs(1)).map(|(v, _)| v), Some(vec![true]));
    }

    #[test]
    fn a_waiting_request_holds_none_of_its_keys() {
        let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
        let long = std::time::Duration::from_secs(10);
        let key = |id: &str| (idempotency_key("p", EventType::Click, id), 0i64);
        let (a, b) = (key("a"), key("b"));
        let (_, first) = idx.admit_durable(&[a], long).expect("a admitted");
        let waiter = {
            let idx = idx.clone();
            std::thread::spawn(move || {
                let (verdicts, flight) = idx.admit_durable(&[b, a], long).expect("admitted in the end");
                idx.settle(flight, &[], true);
                verdicts
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The waiter holds neither b nor a: b goes to another request at once.
        let (verdicts, third) = idx.admit_durable(&[b], std::time::Duration::from_millis(100)).expect("b is free");
        assert_eq!(verdicts, vec![false]);
        idx.settle(first, &[a], true);
        std::thread::sleep(std::time::Duration::from_millis(20));
        idx.settle(third, &[b], true);
        assert_eq!(waiter.join().expect("thread"), vec![true, true], "both stored by the others");
    }

    /// How long a test lets a request wait for another's keys.
    pub(crate) const SHORT: std::time::Duration = std::time::Duration::from_millis(20);

    /// An index holding one key, admitted and sealed at time 0.
    fn index_with_a_sealed_key() -> (DedupeIndex, u128) {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let k = idempotency_key("p", EventType::Click, "k");
        assert_eq!(idx.admit(&[(k, 0)]), vec![false]);
        assert_eq!(idx.claim(&[(k, 0)]), vec![false], "a seal claims it");
        (idx, k)
    }

    #[test]
    fn a_sealed_key_taken_again_after_the_window_is_in_flight_like_any_other() {
        let (idx, k) = index_with_a_sealed_key();
        // The same id 30 h later is a new event, in flight until settled:
        // its retry waits instead of being told it is a duplicate.
        let later = [(k, 30 * H)];
        let (verdicts, first) = idx.admit_durable(&later, SHORT).expect("admitted");
        assert_eq!(verdicts, vec![false]);
        assert!(idx.admit_durable(&later, SHORT).is_none(), "the retry waits");
        idx.settle(first, &later, true);
        assert_eq!(idx.admit_durable(&later, SHORT).map(|(v, _)| v), Some(vec![true]));
    }

    #[test]
    fn a_blocked_request_changes_nothing_it_found() {
        let idx = DedupeIndex::new(DedupeConfig::default());
        // Ids whose shards put the key in flight last in the pass, so a pass
        // that wrote as it went would have written the two found keys.
        let find_key = |name: &str, fits: &dyn Fn(usize) -> bool| {
            (0..)
                .map(|i| idempotency_key("p", EventType::Click, &format!("{name}{i}")))
                .find(|k| fits(idx.shard_of(*k)))
                .expect("some id fits")
        };
        let pending = find_key("pending", &|s| s < SHARDS / 4);
        let sealed = find_key("sealed", &|s| s < SHARDS / 4);
        let busy = find_key("busy", &|s| s > SHARDS / 2);
        assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![false, false]);
        assert_eq!(idx.claim(&[(sealed, 0)]), vec![false]);
        let (_, other) = idx.admit_durable(&[(busy, 0)], SHORT).expect("admitted");
        // Both found keys 30 h on (outside the window), behind a key in flight.
        let request = [(pending, 30 * H), (sealed, 30 * H), (busy, 0)];
        assert!(idx.admit_durable(&request, SHORT).is_none());
        // Nothing it found was touched: the first copies are still duplicates.
        let first_copies = [(pending, 0), (sealed, 0)];
        assert_eq!(idx.admit_durable(&first_copies, SHORT).map(|(v, _)| v), Some(vec![true, true]));
        idx.settle(other, &[(busy, 0)], true);
        let (verdicts, _) = idx.admit_durable(&request, SHORT).expect("admitted once the other settled");
        assert_eq!(verdicts, vec![false, false, true], "new, new, and a duplicate of the settled request");
    }

    #[test]
    fn a_failed_request_gives_back_what_it_found() {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let key = |id: &str| idempotency_key("p", EventType::Click, id);
        let (pending, sealed, twice) = (key("pending"), key("sealed"), key("twice"));
        assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![false, false]);
        assert_eq!(idx.claim(&[(sealed, 0)]), vec![false]);
        // 30 h on: new events with the same ids, and one id twice, 30 h apart.
        let request = [(pending, 30 * H), (sealed, 30 * H), (twice, 0), (twice, 30 * H)];
        let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
        assert_eq!(verdicts, vec![false; 4]);
        idx.settle(flight, &request, false);
        // The append failed: the first copies are still duplicates, and
        // every event of the request is new again.
        assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![true, true]);
        let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
        assert_eq!(verdicts, vec![false; 4], "a retry of the failed request is new");
        idx.settle(flight, &request, true);
    }

    #[test]
    fn a_failed_request_keeps_a_key_it_found_whose_top_bits_match_one_it_added() {
        // `a` and `b` share bits 96..128: their fingerprints differed only
        // there when flight tables held 32-bit fingerprints, and the failed
        // request then took `b`, found pending from an earlier request, for
        // a key of its own and forgot it (found by a review).
        let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
        let idx = DedupeIndex::new(cfg);
        let top: u128 = 0x9E37_79B9 << 96;
        let a = top | 0x1111_2222_3333_4444_5555_6600;
        let b = top | 0x7777_8888_9999_AAAA_BBBB_CC00;
        assert_eq!(idx.admit(&[(b, 0)]), vec![false]);
        let request = [(a, 40 * H), (b, 40 * H)];
        let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
        assert_eq!(verdicts, vec![false, false]);
        idx.settle(flight, &request, false);
        assert_eq!(idx.stats().keys, 1, "b stays in the index");
        assert_eq!(idx.admit(&[(b, 0)]), vec![true], "b's first event is still a duplicate");
    }

    #[test]
    fn a_sweep_passes_over_shards_with_nothing_expired_and_still_drops_every_expired_key() {
        let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
        let idx = DedupeIndex::new(cfg);
        let fillers: Vec<(u128, i64)> =
            (0..2000).map(|i| (idempotency_key("p", EventType::Click, &format!("f{i}")), 0)).collect();
        let old = idempotency_key("p", EventType::Click, "old");
        assert!(idx.admit(&fillers).iter().all(|dup| !dup));
        assert_eq!(idx.admit(&[(old, 0)]), vec![false]);
        // Within retention every shard is passed over, and nothing dropped.
        assert_eq!(idx.expire(40 * H), 0);
        // A re-send outside the window, in flight while a sweep at 60 h
        // drops the fillers (one in every shard) and keeps it at 50 h.
        let (verdicts, flight) = idx.admit_durable(&[(old, 50 * H)], SHORT).expect("admitted");
        assert_eq!(verdicts, vec![false]);
        assert_eq!(idx.expire(60 * H), 2000);
        // Its append fails: the key gets back its time of 0 h, long expired,
        // and the next sweep drops it although its shard noted only 50 h.
        idx.settle(flight, &[(old, 50 * H)], false);
        assert_eq!(idx.expire(62 * H), 1);
        assert_eq!(idx.stats().keys, 0);
        assert_eq!(idx.admit(&[(old, 62 * H)]), vec![false]);
    }

    #[test]
    fn an_undo_keeps_what_a_seal_did_meanwhile() {
        let (idx, k) = index_with_a_sealed_key();
        let later = [(k, 30 * H)];
        let (_, flight) = idx.admit_durable(&later, SHORT).expect("admitted");
        // The seal aborts (its claim undone), then the later request fails.
        idx.unclaim(&[(k, 0)]);
        idx.settle(flight, &later, false);
        // The first event is pending again, at its own time: a re-send is a
        // duplicate, and the next seal claims it.
        assert_eq!(idx.admit(&[(k, 0)]), vec![true]);
        assert_eq!(idx.claim(&[(k, 0)]), vec![false]);
    }

    /// Requests over a few shared keys, from several threads, some of whose
    /// appends fail: every key ends up stored by exactly one request that
    /// saw it as new, and never by two.
    #[test]
    fn concurrent_requests_store_each_key_once_whatever_fails() {
        let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
        let stored = std::sync::Arc::new(Mutex::new(HashMap::<u128, usize>::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (idx, stored) = (idx.clone(), stored.clone());
                std::thread::spawn(move || {
                    let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut next = || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    for _ in 0..300 {
                        let keys: Vec<(u128, i64)> = (0..1 + next() % 8)
                            .map(|_| (idempotency_key("p", EventType::Impression, &(next() % 40).to_string()), 0))
                            .collect();
                        let (dup, flight) =
                            idx.admit_durable(&keys, std::time::Duration::from_secs(20)).expect("no deadlock");
                        let fresh: Vec<(u128, i64)> =
                            keys.iter().zip(&dup).filter(|(_, d)| !**d).map(|(k, _)| *k).collect();
                        let ok = next() % 4 != 0;
                        // In flight for a moment, as an append is.
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        if ok {
                            let mut s = stored.lock();
                            for (k, _) in &fresh {
                                *s.entry(*k).or_default() += 1;
                            }
                        }
                        idx.settle(flight, &fresh, ok);
                        // A duplicate answer is only given for a key already
                        // stored, or repeated earlier in the same request.
                        let s = stored.lock();
                        for (i, ((k, _), d)) in keys.iter().zip(&dup).enumerate() {
                            let repeat = keys[..i].iter().any(|(e, _)| e == k);
                            assert!(!d || repeat || s.contains_key(k), "duplicate of a key never stored");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let stored = stored.lock();
        assert!(stored.values().all(|n| *n == 1), "{stored:?}");
        assert_eq!(stored.len(), 40, "every key was stored in the end");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The table behaves like a set under random admits, forgets and expiry-free use.
        #[test]
        fn table_matches_a_hash_set(ops in prop::collection::vec((0u8..3, 0u64..300), 1..2000)) {
            let idx = DedupeIndex::new(DedupeConfig::default());
            let mut model: HashMap<u128, bool> = HashMap::new(); // key -> sealed
            for (op, n) in ops {
                let key = (idempotency_key("p", EventType::Click, &n.to_string()), 5 * H);
                match op {
                    0 => {
                        let dup = idx.admit(&[key])[0];
                        prop_assert_eq!(dup, model.contains_key(&key.0));
                        model.entry(key.0).or_insert(false);
                    }
                    1 => {
                        idx.forget(&[key]);
                        if model.get(&key.0) == Some(&false) {
                            model.remove(&key.0);
                        }
                    }
                    _ => {
                        let dup = idx.claim(&[key])[0];
                        prop_assert_eq!(dup, model.get(&key.0) == Some(&true));
                        model.insert(key.0, true);
                    }
                }
                prop_assert_eq!(idx.stats().keys, model.len() as u64);
            }
        }

        /// A flight table holds the keys put in it, and a reused one holds
        /// none of its earlier keys; tables of several sizes share a spare
        /// list. A key not put in is held only if its fingerprint is that
        /// of a key put in.
        #[test]
        fn flight_tables_hold_their_keys_and_forget_them_when_reused(
            rounds in prop::collection::vec((1usize..3000, 0u64..4), 1..8)
        ) {
            let mut spare = Vec::new();
            for (n, seed) in rounds {
                let keys: Vec<u128> = (0..n as u64)
                    .map(|i| idempotency_key("p", EventType::Click, &(seed * 10_000 + i).to_string()))
                    .collect();
                let (put, other) = keys.split_at(n / 2);
                let mut table = FlightKeys::for_keys(n, &mut spare);
                for &k in put {
                    table.insert(k);
                }
                let prints: HashSet<u64> = put.iter().map(|&k| table.place(k).0).collect();
                for &k in put {
                    prop_assert!(table.may_hold(k));
                }
                for &k in other {
                    prop_assert_eq!(table.may_hold(k), prints.contains(&table.place(k).0));
                }
                spare.push(table);
            }
        }

        /// Whole batches (keys spread over every shard, repeats within a
        /// batch) get the verdicts of taking their keys one by one.
        #[test]
        fn batches_match_a_hash_set(
            batches in prop::collection::vec((any::<bool>(), prop::collection::vec(0u64..400, 0..300)), 1..20),
        ) {
            let idx = DedupeIndex::new(DedupeConfig::default());
            let mut model: HashMap<u128, bool> = HashMap::new(); // key -> sealed
            for (claim, ns) in batches {
                let keys: Vec<(u128, i64)> =
                    ns.iter().map(|n| (idempotency_key("p", EventType::Click, &n.to_string()), 5 * H)).collect();
                let got = if claim { idx.claim(&keys) } else { idx.admit(&keys) };
                let mut seen_here = std::collections::HashSet::new();
                let want: Vec<bool> = keys
                    .iter()
                    .map(|(k, _)| {
                        let first = seen_here.insert(*k);
                        if claim {
                            let dup = !first || model.get(k) == Some(&true);
                            model.insert(*k, true);
                            dup
                        } else {
                            let dup = model.contains_key(k);
                            model.entry(*k).or_insert(false);
                            dup
                        }
                    })
                    .collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(idx.stats().keys, model.len() as u64);
            }
        }
    }
}
