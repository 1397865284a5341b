//! The attribution index: impressions and clicks within their windows, by
//! id and by (user_key, scope) for last touch: the newest in memory, the
//! rest in parts on disk (`parts.rs`).
//!
//! By id, anchors are in hash maps sharded by the top bits of the id's
//! hash; a request's anchors go in shard by shard
//! ([`AttributionIndex::insert_all`]), so each shard's table is in cache
//! while its share goes in. By user, touches are in sorted runs
//! ([`TouchRuns`]): a request's touches are sorted once and appended as a
//! run, runs of like size are merged, and a last-touch lookup (a minority
//! of clicks and conversions) searches each run. One touch per impression
//! in a hash map of every impression took a cache miss and an allocation
//! per impression on the acknowledgement path; a run takes neither.

use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use super::parts::Part;

use adstore_storage::EventType;

pub(super) fn h(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// `s` hashed within its publisher. Anchors are found by their id within
/// the publisher (ids are unique per publisher, DESIGN §1) and must share
/// the publisher and the ad (impressions) or advertiser (clicks) with the
/// event attributed to them: attribution never crosses publishers, so one
/// publisher's events can neither borrow nor disturb another's anchors.
pub(super) fn scoped(publisher: &str, s: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(publisher.as_bytes());
    // 0xff never occurs in UTF-8: ("ab", "c") and ("a", "bc") differ.
    hasher.update(&[0xff]);
    hasher.update(s.as_bytes());
    hasher.digest()
}

/// The key last touches are found by: a user's hash and a scope hash
/// ([`scoped`] ad or advertiser) as one hash. Two pairs share a key only by
/// a 64-bit collision, as two ids share an anchor's [`scoped`] key.
pub(super) fn touch_key(user: u64, scope: u64) -> u64 {
    let mut pair = [0u8; 16];
    pair[..8].copy_from_slice(&user.to_le_bytes());
    pair[8..].copy_from_slice(&scope.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&pair)
}

/// An anchor as a last-touch lookup finds it.
#[derive(Debug, Clone)]
pub(super) struct Touch {
    pub ts: i64,
    pub id: CompactString,
}

/// One impression or click, borrowed from where it is read.
#[derive(Clone, Copy)]
pub(super) struct AnchorRef<'a> {
    pub kind: EventType,
    pub ts: i64,
    /// impression_id or click_id.
    pub id: &'a str,
    /// [`scoped`] hash of its id: what it is looked up by.
    pub key: u64,
    /// [`scoped`] hash of its ad_id (impressions) or advertiser_id (clicks).
    pub scope: u64,
    pub user_key: Option<&'a str>,
}

/// A map in `1 << SHARD_BITS` shards by the top bits of a key's hash.
pub(super) struct Sharded<K, V> {
    shards: Vec<FxHashMap<K, V>>,
}

const SHARD_BITS: u32 = 6;

/// The hash a key is sharded by (keys are hashes already).
pub(super) trait ShardKey: Copy + Eq + std::hash::Hash {
    fn shard(&self) -> usize;
}

impl ShardKey for u64 {
    fn shard(&self) -> usize {
        (self >> (u64::BITS - SHARD_BITS)) as usize
    }
}

impl<K: ShardKey, V> Default for Sharded<K, V> {
    fn default() -> Sharded<K, V> {
        Sharded { shards: (0..1 << SHARD_BITS).map(|_| FxHashMap::default()).collect() }
    }
}

impl<K: ShardKey, V> Sharded<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[key.shard()].get(key)
    }

    fn shard_mut(&mut self, key: &K) -> &mut FxHashMap<K, V> {
        &mut self.shards[key.shard()]
    }

    fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in &mut self.shards {
            shard.retain(|k, v| keep(k, v));
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(FxHashMap::len).sum()
    }

    /// Bytes of memory the tables hold (a slot per capacity plus its control byte).
    fn memory_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.capacity() * (std::mem::size_of::<(K, V)>() + 1)).sum()
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// Impressions and clicks within their windows: every one acknowledged
/// (inserted at ingest, once its append is durable; at open, from the
/// segments and the replayed head),
/// and older ones while a bucket that is not final yet may need them.
/// The newest are in memory ([`Live`]); older ones in parts taken out of
/// memory ([`Part`], see `parts.rs`), looked up newest first.
#[derive(Default)]
pub(super) struct AttributionIndex {
    pub live: Live,
    /// Impression parts, then click parts ([`Touches`] as index), oldest first.
    pub parts: [Vec<Arc<Part>>; 2],
    /// Impressions older than this may have been dropped ([`AttributionIndex::expire`]);
    /// `i64::MIN` while none was.
    pub imp_floor: i64,
    /// Clicks older than this may have been dropped.
    pub click_floor: i64,
}

/// The anchors indexed in memory.
#[derive(Default)]
pub(super) struct Live {
    /// impression_id → (ts, scope hash: publisher and ad)
    pub impressions: Sharded<u64, (i64, u64)>,
    /// (user_key, ad_id) → impressions, for last-touch clicks.
    pub imp_by_user: TouchRuns,
    /// click_id → (ts, scope hash: publisher and advertiser)
    pub clicks: Sharded<u64, (i64, u64)>,
    /// (user_key, advertiser_id) → clicks, for last-touch conversions.
    pub click_by_user: TouchRuns,
}

/// Which anchors a last-touch lookup looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touches {
    /// Impressions by (user_key, ad_id), for clicks.
    Impressions,
    /// Clicks by (user_key, advertiser_id), for conversions.
    Clicks,
}

impl Touches {
    pub const BOTH: [Touches; 2] = [Touches::Impressions, Touches::Clicks];
}

impl Live {
    pub fn entries(&self) -> usize {
        self.impressions.len() + self.clicks.len()
    }

    /// The newest anchor of kind `which` (`i64::MIN` if none).
    pub fn max_ts(&self, which: Touches) -> i64 {
        match which {
            Touches::Impressions => self.impressions.iter().map(|(_, (ts, _))| *ts).max(),
            Touches::Clicks => self.clicks.iter().map(|(_, (ts, _))| *ts).max(),
        }
        .unwrap_or(i64::MIN)
    }

    pub fn touches(&self, which: Touches) -> &TouchRuns {
        match which {
            Touches::Impressions => &self.imp_by_user,
            Touches::Clicks => &self.click_by_user,
        }
    }

    /// Bytes of memory the maps and runs hold (ids longer than a
    /// `CompactString` keeps inline, 24 bytes, are not counted).
    pub fn memory_bytes(&self) -> usize {
        self.impressions.memory_bytes()
            + self.clicks.memory_bytes()
            + self.imp_by_user.memory_bytes()
            + self.click_by_user.memory_bytes()
    }
}

/// An anchor's entries by id, hashed, ready to go in shard by shard.
enum ById {
    Impression(u64, (i64, u64)),
    Click(u64, (i64, u64)),
}

impl ById {
    fn shard(&self) -> usize {
        match self {
            ById::Impression(k, _) | ById::Click(k, _) => k.shard(),
        }
    }
}

impl Live {
    /// Indexes many anchors: by id shard by shard, by user as one run each.
    pub fn insert_all<'a>(&mut self, anchors: impl IntoIterator<Item = AnchorRef<'a>>) {
        let mut by_id = Vec::new();
        let (mut imp_touches, mut click_touches) = (Vec::new(), Vec::new());
        for AnchorRef { kind, ts, id, key, scope, user_key } in anchors {
            let (entry, touches) = match kind {
                EventType::Impression => (ById::Impression(key, (ts, scope)), &mut imp_touches),
                EventType::Click => (ById::Click(key, (ts, scope)), &mut click_touches),
                EventType::Conversion => continue,
            };
            by_id.push(entry);
            if let Some(u) = user_key {
                touches.push(RunEntry { key: touch_key(h(u), scope), ts, id: CompactString::from(id) });
            }
        }
        by_id.sort_unstable_by_key(ById::shard);
        for e in by_id {
            match e {
                ById::Impression(k, v) => {
                    self.impressions.shard_mut(&k).insert(k, v);
                }
                ById::Click(k, v) => {
                    self.clicks.shard_mut(&k).insert(k, v);
                }
            }
        }
        self.imp_by_user.add(imp_touches);
        self.click_by_user.add(click_touches);
    }

    /// Drops impressions before `imp_floor` and clicks before `click_floor`.
    fn expire(&mut self, imp_floor: i64, click_floor: i64) {
        self.impressions.retain(|_, (ts, _)| *ts >= imp_floor);
        self.clicks.retain(|_, (ts, _)| *ts >= click_floor);
        self.imp_by_user.expire(imp_floor);
        self.click_by_user.expire(click_floor);
    }
}

impl AttributionIndex {
    /// Indexes one impression or click.
    #[cfg(test)]
    pub fn insert(&mut self, a: AnchorRef<'_>) {
        self.live.insert_all([a]);
    }

    /// Indexes many anchors in memory (see [`Live::insert_all`]).
    pub fn insert_all<'a>(&mut self, anchors: impl IntoIterator<Item = AnchorRef<'a>>) {
        self.live.insert_all(anchors);
    }

    /// Drops impressions before `imp_floor` and clicks before `click_floor`:
    /// in memory one by one, on disk whole parts whose newest is older
    /// (merges drop the rest, see `parts.rs`).
    pub fn expire(&mut self, imp_floor: i64, click_floor: i64) {
        self.imp_floor = self.imp_floor.max(imp_floor);
        self.click_floor = self.click_floor.max(click_floor);
        self.live.expire(imp_floor, click_floor);
        for (which, floor) in [(Touches::Impressions, imp_floor), (Touches::Clicks, click_floor)] {
            self.parts[which as usize].retain(|p| p.max_ts(which) >= floor);
        }
    }

    /// Anchors of kind `which` older than this may have been dropped.
    pub fn floor(&self, which: Touches) -> i64 {
        match which {
            Touches::Impressions => self.imp_floor,
            Touches::Clicks => self.click_floor,
        }
    }

    /// Impressions and clicks indexed, in memory and in parts (an anchor
    /// in two parts until they merge counts twice).
    pub fn entries(&self) -> usize {
        self.live.entries() + self.parts_entries()
    }

    pub fn parts_entries(&self) -> usize {
        Touches::BOTH.iter().flat_map(|&w| self.parts[w as usize].iter().map(move |p| p.entries(w))).sum()
    }

    /// The impression with id hash `id`: (ts, scope hash), from memory,
    /// else the newest part that has it.
    pub fn impression(&self, id: u64) -> Option<(i64, u64)> {
        self.live.impressions.get(&id).copied().or_else(|| {
            self.parts[Touches::Impressions as usize].iter().rev().find_map(|p| p.anchor(Touches::Impressions, id))
        })
    }

    /// The click with id hash `id`: (ts, scope hash).
    pub fn click(&self, id: u64) -> Option<(i64, u64)> {
        self.live
            .clicks
            .get(&id)
            .copied()
            .or_else(|| self.parts[Touches::Clicks as usize].iter().rev().find_map(|p| p.anchor(Touches::Clicks, id)))
    }

    /// The latest touch under `key` with `lo <= ts <= hi` (by ts, then id),
    /// in memory and in every part.
    pub fn last_touch(&self, which: Touches, key: u64, lo: i64, hi: i64) -> Option<Touch> {
        let parts = self.parts[which as usize].iter().filter_map(|p| p.last_touch(which, key, lo, hi));
        self.live.touches(which).last_touch(key, lo, hi).into_iter().chain(parts).max_by(latest)
    }
}

/// Orders touches by time, then id.
fn latest(a: &Touch, b: &Touch) -> std::cmp::Ordering {
    (a.ts, a.id.as_str()).cmp(&(b.ts, b.id.as_str()))
}

/// One touch under its [`touch_key`], as runs hold it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RunEntry {
    pub key: u64,
    pub ts: i64,
    pub id: CompactString,
}

/// Touches by (user_key, scope): sorted runs, each sorted by (key, ts, id)
/// without repeats. A new run is merged with the runs before it while
/// they are not more than twice its size, so there are about log2(n / run)
/// runs and each touch is moved about as many times, sequentially.
#[derive(Default)]
pub(super) struct TouchRuns {
    runs: Vec<Vec<RunEntry>>,
}

impl TouchRuns {
    /// Adds touches (in any order; repeats of held touches are dropped at
    /// the next merge and never change a lookup).
    pub fn add(&mut self, mut touches: Vec<RunEntry>) {
        if touches.is_empty() {
            return;
        }
        touches.sort_unstable();
        touches.dedup();
        let mut run = touches;
        while let Some(last) = self.runs.last() {
            if last.len() > 2 * run.len() {
                break;
            }
            let last = self.runs.pop().unwrap_or_default();
            run = merge(last, run);
        }
        self.runs.push(run);
    }

    /// The latest touch under `key` with `lo <= ts <= hi` (by ts, then id).
    pub fn last_touch(&self, key: u64, lo: i64, hi: i64) -> Option<Touch> {
        self.runs
            .iter()
            .filter_map(|run| {
                let end = run.partition_point(|e| (e.key, e.ts) <= (key, hi));
                run[..end].last().filter(|e| e.key == key && e.ts >= lo)
            })
            .max_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)))
            .map(|e| Touch { ts: e.ts, id: e.id.clone() })
    }

    /// Drops the touches before `floor`.
    fn expire(&mut self, floor: i64) {
        for run in &mut self.runs {
            run.retain(|e| e.ts >= floor);
        }
        self.runs.retain(|run| !run.is_empty());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }

    /// Every touch, sorted by (key, ts, id), once.
    pub fn sorted(&self) -> Vec<&RunEntry> {
        let mut all: Vec<&RunEntry> = self.runs.iter().flatten().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn memory_bytes(&self) -> usize {
        self.runs.iter().map(|r| r.capacity() * std::mem::size_of::<RunEntry>()).sum()
    }
}

/// The sorted union of two sorted runs, without repeats.
fn merge(a: Vec<RunEntry>, b: Vec<RunEntry>) -> Vec<RunEntry> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    b.next();
                    a.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// The latest touch with `lo <= ts <= hi` under `key` in any of the
/// indexes (by ts, then id).
pub(super) fn last_touch_in(
    indexes: &[&AttributionIndex],
    which: Touches,
    key: u64,
    lo: i64,
    hi: i64,
) -> Option<Touch> {
    indexes.iter().filter_map(|x| x.last_touch(which, key, lo, hi)).max_by(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u64, ts: i64, id: &str) -> RunEntry {
        RunEntry { key, ts, id: id.into() }
    }

    #[test]
    fn last_touch_picks_latest_in_window() {
        let mut runs = TouchRuns::default();
        runs.add(vec![entry(1, 10, "a"), entry(1, 30, "c"), entry(2, 20, "x")]);
        runs.add(vec![entry(1, 20, "b"), entry(1, 30, "c")]);
        assert_eq!(runs.len(), 4, "the repeat of (1, 30, c) is dropped by the merge");
        let id = |lo, hi| runs.last_touch(1, lo, hi).map(|t| t.id.to_string());
        assert_eq!(id(0, 25).as_deref(), Some("b"));
        assert_eq!(id(21, 25), None);
        assert_eq!(id(0, 100).as_deref(), Some("c"));
        assert_eq!(runs.last_touch(3, 0, 100).map(|t| t.ts), None);
    }

    proptest::proptest! {
        /// Whatever the batches and their order, a lookup finds what a
        /// scan of every touch added finds, and expiry drops exactly the
        /// touches before the floor.
        #[test]
        fn runs_answer_like_a_scan(
            batches in proptest::collection::vec(proptest::collection::vec((0u64..4, 0i64..60, 0u8..3), 0..40), 0..30),
            floor in 0i64..60,
        ) {
            let mut runs = TouchRuns::default();
            for b in &batches {
                runs.add(b.iter().map(|(k, ts, id)| entry(*k, *ts, &id.to_string())).collect());
            }
            let all: std::collections::BTreeSet<(u64, i64, String)> =
                batches.iter().flatten().map(|(k, ts, id)| (*k, *ts, id.to_string())).collect();
            // Repeats in runs not merged yet remain (they never change a lookup).
            proptest::prop_assert!(runs.len() >= all.len());
            proptest::prop_assert!(runs.len() <= batches.iter().map(Vec::len).sum::<usize>());
            let check = |runs: &TouchRuns, from: i64| -> Result<(), proptest::test_runner::TestCaseError> {
                for key in 0..4u64 {
                    for (lo, hi) in [(0, 59), (10, 30), (25, 25), (40, 20)] {
                        let want = all
                            .iter()
                            .filter(|(k, ts, _)| *k == key && *ts >= lo.max(from) && *ts <= hi)
                            .max_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)))
                            .map(|(_, ts, id)| (*ts, id.clone()));
                        let got = runs.last_touch(key, lo, hi).map(|t| (t.ts, t.id.to_string()));
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                Ok(())
            };
            check(&runs, i64::MIN)?;
            runs.expire(floor);
            check(&runs, floor)?;
        }
    }

    #[test]
    fn one_by_one_and_all_at_once_index_the_same() {
        let users = ["u1", "u2", "u3"];
        let ids: Vec<String> = (0..200).map(|i| format!("imp-{i}")).collect();
        let anchors: Vec<AnchorRef<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| AnchorRef {
                kind: if i % 3 == 0 { EventType::Click } else { EventType::Impression },
                ts: (i as i64 * 7919) % 1000,
                id,
                key: h(id),
                scope: h(if i % 2 == 0 { "ad-1" } else { "ad-2" }),
                user_key: (i % 5 != 0).then_some(users[i % 3]),
            })
            .collect();
        let (mut one, mut all) = (AttributionIndex::default(), AttributionIndex::default());
        anchors.iter().for_each(|a| one.insert(*a));
        all.insert_all(anchors.iter().copied());
        assert_eq!(one.entries(), all.entries());
        for a in &anchors {
            assert_eq!(one.impression(h(a.id)), all.impression(h(a.id)));
            assert_eq!(one.click(h(a.id)), all.click(h(a.id)));
            if let Some(u) = a.user_key {
                let key = touch_key(h(u), a.scope);
                for which in Touches::BOTH {
                    let got = |x: &AttributionIndex| x.last_touch(which, key, 0, 1000).map(|t| (t.ts, t.id));
                    assert_eq!(got(&one), got(&all));
                }
            }
        }
    }
}
