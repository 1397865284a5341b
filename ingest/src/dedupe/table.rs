//! The dedupe index's storage: one shard's open-addressing table of
//! 16-byte slots, each a key whose low 16 bits are replaced by its tag
//! (sealed bit + 15-bit expiry epoch), with linear probing and
//! backward-shift deletion.

pub(super) const MAX_LOAD: f64 = 0.85;
/// The load a table sized ahead of its keys is sized for (expected keys,
/// an announced load): 21.3 bytes per key once they are all in, still
/// under the 24-byte budget. A new key's probe run is shorter than at
/// `MAX_LOAD`: admitting 10M keys took 343 ms at 0.85 and 275 ms at 0.75
/// into a warm table, 465 and 401 ms into a new one (`admit_10m_warm`,
/// `admit_10m_presized` in `cargo bench -p adstore-ingest --bench dedupe`).
/// Past its keys the table grows as any other, at `MAX_LOAD`.
pub(super) const PRESIZED_LOAD: f64 = 0.75;
pub(super) const GROWTH: f64 = 1.25;
/// A stored key's tag: the low 16 bits of its slot.
pub(super) type Tag = u16;
pub(super) const TAG_BITS: u32 = Tag::BITS;
pub(super) const TAG_MASK: u128 = (1 << TAG_BITS) - 1;
pub(super) const SEALED: Tag = 0x8000;
/// Epoch tags are kept mod this (15 bits): 2.9 years of 48-minute epochs
/// (the default window and lateness), so that a jump forward in event time
/// of up to that much leaves every tag's age unambiguous, and the keys of
/// the events just before the jump are still answered exactly.
pub(super) const EPOCHS: i64 = 1 << 15;

/// One shard: linear probing over `u128` slots, 0 = empty.
pub(super) struct Shard {
    pub(super) slots: Vec<u128>,
    pub(super) len: usize,
    /// No key of the shard has an older epoch than this (absolute, as
    /// [`DedupeIndex::newest_epoch`]); `i64::MAX` when none was noted. A
    /// sweep passes over a shard only if this is old enough for one of
    /// its keys to have expired: in a backfill, sweeps counted the keys of
    /// tables with nothing to drop, 2.7% of the server's time.
    pub(super) oldest_epoch: i64,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { slots: Vec::new(), len: 0, oldest_epoch: i64::MAX }
    }
}

#[inline]
pub(super) fn stored(key: u128, tag: Tag) -> u128 {
    let body = key & !TAG_MASK;
    // Never store 0 (the empty slot), whatever the hash.
    let body = if body == 0 { 1 << TAG_BITS } else { body };
    body | u128::from(tag)
}

#[inline]
pub(super) fn body(slot: u128) -> u128 {
    slot & !TAG_MASK
}

#[inline]
pub(super) fn tag(slot: u128) -> Tag {
    (slot & TAG_MASK) as Tag
}

impl Shard {
    /// Notes that a key of `epoch` was stored.
    pub(super) fn noted(&mut self, epoch: i64) {
        self.oldest_epoch = self.oldest_epoch.min(epoch);
    }

    pub(super) fn home(&self, key: u128) -> usize {
        // Multiply-shift range reduction (tables are not powers of two) over
        // bits 16..80: not the top bits, which pick the shard and so are the
        // same for every key of a shard, nor the low bits, which hold the tag.
        ((((key >> TAG_BITS) as u64) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot index holding `key`, or the empty slot where it would go.
    pub(super) fn find(&self, key: u128) -> (usize, bool) {
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
    pub(super) fn touch(&self, keys: impl Iterator<Item = u128>) {
        if self.slots.is_empty() {
            return;
        }
        for key in keys {
            prefetch_lines(&self.slots[self.home(key)..]);
        }
    }

    /// Makes room for `more` keys within the maximum load.
    pub(super) fn reserve(&mut self, more: usize) {
        if (self.len + more) as f64 > self.slots.len() as f64 * MAX_LOAD {
            let need = ((self.len + more) as f64 / MAX_LOAD) as usize + 1;
            let cap = ((self.slots.len() as f64 * GROWTH) as usize).max(need).max(64);
            self.rebuild(cap, |_| true);
        }
    }

    /// Grows the table in one step to hold `keys` keys at `PRESIZED_LOAD`,
    /// but to no more than `max_slots` slots; a table that large already
    /// stays as it is.
    pub(super) fn grow_to(&mut self, keys: usize, max_slots: usize) {
        let cap = ((keys as f64 / PRESIZED_LOAD) as usize + 1).min(max_slots);
        // Invariant: a larger table than now, so it keeps an empty slot.
        if cap > self.slots.len() {
            self.rebuild(cap, |_| true);
        }
    }

    /// Re-inserts the slots that `keep` accepts into a table of `cap` slots.
    pub(super) fn rebuild(&mut self, cap: usize, keep: impl Fn(u128) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        self.len = 0;
        for s in old.into_iter().filter(|&s| s != 0 && keep(s)) {
            let (i, _) = self.find(s);
            self.slots[i] = s;
            self.len += 1;
        }
    }

    pub(super) fn remove_at(&mut self, mut hole: usize) {
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
pub(super) fn prefetch_lines(slots: &[u128]) {
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
pub(super) fn prefetch_lines(slots: &[u128]) {
    std::hint::black_box(slots[0]);
}
