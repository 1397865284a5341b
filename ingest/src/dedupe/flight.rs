//! Requests in flight: the keys each request admitted until its append
//! is durable, kept per request in a small table of fingerprints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SHARDS;

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
pub(super) struct FlightKeys {
    pub(super) slots: Vec<u64>,
    /// 128 less log2 of the table's size: shifted right by this, a key
    /// gives its start slot.
    pub(super) shift: u32,
}

impl FlightKeys {
    /// An empty table for `n` keys, made of `spare`'s memory when it is
    /// large enough (cleared, which also brings it into cache).
    pub(super) fn for_keys(n: usize, spare: &mut Vec<FlightKeys>) -> FlightKeys {
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
    pub(super) fn place(&self, key: u128) -> (u64, usize) {
        (((key >> 64) as u64) | 1, (key >> self.shift) as usize)
    }

    pub(super) fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    pub(super) fn insert(&mut self, key: u128) {
        let (print, mut i) = self.place(key);
        while self.slots[i] != 0 && self.slots[i] != print {
            i = self.next(i);
        }
        self.slots[i] = print;
    }

    pub(super) fn may_hold(&self, key: u128) -> bool {
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
pub(super) struct Flights {
    pub(super) open: Vec<(Arc<AtomicBool>, FlightKeys)>,
    /// Tables of settled requests, for the next ones to reuse: a new
    /// table is memory the kernel has to zero.
    pub(super) spare: Vec<FlightKeys>,
}

/// Spare tables kept: as many as requests usually in flight.
pub(super) const SPARE_FLIGHT_TABLES: usize = 8;
/// Largest spare table kept, in slots (1 MiB, for requests of up to 65,536
/// keys): a larger one, for a rare large request, is freed.
pub(super) const MAX_SPARE_FLIGHT_SLOTS: usize = 1 << 17;

impl Flights {
    /// Whether a request still in flight may have admitted `key`.
    pub(super) fn may_hold(&self, key: u128) -> bool {
        self.open.iter().any(|(settled, keys)| !settled.load(Ordering::Acquire) && keys.may_hold(key))
    }

    /// The settled flag of a request still in flight that may have
    /// admitted `key`.
    pub(super) fn holder_of(&self, key: u128) -> Option<Arc<AtomicBool>> {
        self.open
            .iter()
            .find(|(settled, keys)| !settled.load(Ordering::Acquire) && keys.may_hold(key))
            .map(|(settled, _)| settled.clone())
    }

    pub(super) fn drop_settled(&mut self) {
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
    pub(super) fn keep_spare(&mut self, table: FlightKeys) {
        if self.spare.len() < SPARE_FLIGHT_TABLES && table.slots.capacity() <= MAX_SPARE_FLIGHT_SLOTS {
            self.spare.push(table);
        }
    }

    /// An empty table for `n` keys.
    pub(super) fn table_for(&mut self, n: usize) -> FlightKeys {
        FlightKeys::for_keys(n, &mut self.spare)
    }
}

/// A request admitted by [`DedupeIndex::admit_durable`] whose keys are in
/// flight until it is passed to [`DedupeIndex::settle`].
#[derive(Debug)]
#[must_use = "keys stay in flight until the request is settled"]
pub struct Flight {
    pub(super) settled: Arc<AtomicBool>,
    /// Keys the request found in the index and gave a new time, as
    /// [`Rewrite`]s to undo if its events are not stored.
    pub(super) rewritten: Vec<Rewrite>,
}

/// A slot an admit rewrote: a key found outside the window gets the new
/// event's time. Undone by [`DedupeIndex::restore`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Rewrite {
    /// The entry of the admitted keys that wrote it (its index).
    pub(super) entry: usize,
    pub(super) key: u128,
    pub(super) before: u128,
    pub(super) written: u128,
    /// Whether the slot held the key before this request (not an event of
    /// the same request, earlier in it).
    pub(super) found_before: bool,
}
