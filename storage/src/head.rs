//! The head: acknowledged events not yet in segments, in memory.
//!
//! Events are split into partitions (time bucket × shard, see
//! [`PartitionKey`]). Each partition is a list of immutable chunks, one per
//! WAL record that had rows for it, kept in LSN order:
//!
//! ```text
//!   partition (bucket 10:00, shard 2): [chunk lsn 7][chunk lsn 9][chunk lsn 12]
//!                                        └──── taken by a seal ────┘  (still open)
//! ```
//!
//! A chunk is an [`EventBatch`] (Arrow buffers behind `Arc`s), or the rows
//! of one that belong to its partition (a WAL record's rows stay in the
//! order they came in: see [`Partitioning::index`]), so a query snapshot is
//! a cheap clone of the chunk lists and never blocks ingest for longer than
//! that clone. A seal takes a prefix of a partition's chunks and, once its
//! segment is in the catalog, drops exactly that prefix.
//!
//! Scans read a partition's chunks in runs of up to [`dicts::RUN_ROWS`]
//! rows, their dimension columns as codes of one dictionary per run, built
//! at the first scan that needs them ([`dicts`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

mod dicts;
pub use dicts::{Run, RunCodes};

use crate::error::{Result, StorageError};
use crate::event::{ColumnId, EventBatch, are_rows_under, other_rows, shard_of};
use crate::ids::Lsn;
use crate::manifest::PartitionKey;

/// How events are assigned to partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    pub bucket_width_ms: i64,
    pub shards: u32,
}

impl Partitioning {
    /// Start of the bucket holding `ts` (saturating at the ends of i64).
    pub fn bucket_start(&self, ts: i64) -> i64 {
        ts.saturating_sub(ts.rem_euclid(self.bucket_width_ms))
    }

    /// Splits a batch into one batch per partition, keeping row order (a
    /// gather per partition; the store keeps rows where they are, see
    /// [`Partitioning::index`]). For tests.
    #[cfg(test)]
    pub(crate) fn split(&self, batch: &EventBatch) -> Result<Vec<(PartitionKey, EventBatch)>> {
        let indexed = self.index(batch, None)?;
        let rows = &indexed.rows;
        indexed
            .parts
            .iter()
            .map(|(key, picked)| Ok((*key, picked.as_deref().map_or_else(|| Ok(rows.clone()), |r| rows.take(r))?)))
            .collect()
    }

    /// The rows to `keep` (all when `None`; indices ascending) and each
    /// partition's rows among them, without copying rows into partition
    /// order: the head reads each partition's rows through their indices,
    /// and a seal gathers them. Gathering the rows of every request into
    /// partition order (Arrow's `take`) was 15-17% of the server's time in a
    /// 10M-event Arrow load.
    ///
    /// When at most [`MAX_DROPPED_SHARE`] of the rows are dropped (a batch
    /// with a few duplicates), the rows stay where they are too: `rows` is
    /// `batch`, and the dropped rows are listed in `dropped` and in no
    /// partition. Filtering them out (an Arrow filter, a copy of every kept
    /// row) was 5-7% of the server's time in the same load, where every
    /// batch holds a duplicate or two. When more are dropped, the kept rows
    /// are copied, so that a retry storing a few rows does not keep its
    /// whole batch alive.
    pub fn index(&self, batch: &EventBatch, keep: Option<&[u32]>) -> Result<Indexed> {
        let Some(keep) = keep else { return Ok(self.index_stored(batch.clone(), Vec::new())) };
        let dropped = dropped_rows(keep, batch.num_rows())?;
        if dropped.len() as f64 <= batch.num_rows() as f64 * MAX_DROPPED_SHARE {
            Ok(self.index_stored(batch.clone(), dropped))
        } else {
            Ok(self.index_stored(batch.filter_rows(keep)?, Vec::new()))
        }
    }

    /// [`Partitioning::index`] of the rows of `rows` not in `dropped`
    /// (ascending row numbers of `rows`, each once): a WAL record as replay
    /// reads it.
    pub(crate) fn index_stored(&self, rows: EventBatch, dropped: Vec<u32>) -> Indexed {
        let ts = rows.ts();
        let adv = rows.str_column(ColumnId::AdvertiserId);
        let mut parts = PartitionIndex::default();
        let mut last_shard: Option<(&str, u32)> = None;
        let mut last_part: Option<(PartitionKey, u32)> = None;
        let mut part_of = Vec::with_capacity(rows.num_rows());
        let mut next_dropped = dropped.iter().copied().peekable();
        let mut max_ts = None;
        for (i, &t) in ts.iter().enumerate() {
            if next_dropped.next_if_eq(&(i as u32)).is_some() {
                part_of.push(DROPPED);
                continue;
            }
            max_ts = max_ts.max(Some(t));
            let a = adv.value(i);
            let shard = match last_shard {
                Some((s, h)) if s == a => h,
                _ => {
                    let h = shard_of(a, self.shards);
                    last_shard = Some((a, h));
                    h
                }
            };
            let key = PartitionKey { bucket_start_ms: self.bucket_start(t), shard };
            let p = match last_part {
                Some((k, p)) if k == key => p,
                _ => {
                    let p = parts.find_or_add(key);
                    last_part = Some((key, p));
                    p
                }
            };
            part_of.push(p);
        }
        let keys = parts.keys;
        if keys.len() == 1 && dropped.is_empty() {
            return Indexed { parts: vec![(keys[0], None)], rows, dropped, max_ts };
        }
        let mut picked: Vec<Vec<u32>> = keys.iter().map(|_| Vec::new()).collect();
        for (i, &p) in part_of.iter().enumerate() {
            if p != DROPPED {
                picked[p as usize].push(i as u32);
            }
        }
        let mut parts: Vec<(PartitionKey, Option<Arc<[u32]>>)> =
            keys.into_iter().zip(picked).map(|(k, rows)| (k, Some(rows.into()))).collect();
        parts.sort_by_key(|(k, _)| *k);
        Indexed { rows, dropped, parts, max_ts }
    }
}

/// The largest share of a batch's rows that [`Partitioning::index`] leaves
/// in place when they are dropped: the WAL and the head then hold them
/// too, unread.
pub const MAX_DROPPED_SHARE: f64 = 1.0 / 8.0;

/// `part_of` mark of a dropped row in [`Partitioning::index_stored`].
const DROPPED: u32 = u32::MAX;

/// The rows under `n` not in `keep`, which must be ascending row numbers
/// under `n`, each once.
fn dropped_rows(keep: &[u32], n: usize) -> Result<Vec<u32>> {
    if !are_rows_under(keep, n) {
        return Err(StorageError::Internal(format!("rows to keep must be ascending row numbers under {n}, one each")));
    }
    Ok(other_rows(keep, n))
}

/// A batch's stored rows and each partition's rows among them, see
/// [`Partitioning::index`].
#[derive(Debug)]
pub struct Indexed {
    /// The batch holding the stored rows, in their order in the batch
    /// given, and the dropped rows when there are any.
    pub rows: EventBatch,
    /// Rows of `rows` not stored, ascending.
    pub dropped: Vec<u32>,
    /// Each partition's rows of `rows`, ascending (`None`: all of them), in
    /// partition order.
    pub parts: Vec<(PartitionKey, Option<Arc<[u32]>>)>,
    /// The latest event time of the stored rows.
    pub max_ts: Option<i64>,
}

impl Indexed {
    /// How many rows are stored: those of `rows` not dropped.
    pub fn stored_rows(&self) -> usize {
        self.rows.num_rows() - self.dropped.len()
    }
}

/// The distinct partitions of a batch, in order of first appearance.
/// Searched in a list while there are few (a batch usually spans a bucket
/// or two), through a map beyond that.
#[derive(Default)]
struct PartitionIndex {
    keys: Vec<PartitionKey>,
    map: std::collections::HashMap<PartitionKey, u32>,
}

impl PartitionIndex {
    /// Partitions searched by a scan of the list.
    const LIST_LEN: usize = 16;

    fn find_or_add(&mut self, key: PartitionKey) -> u32 {
        let found = if self.keys.len() <= Self::LIST_LEN {
            self.keys.iter().position(|k| *k == key).map(|p| p as u32)
        } else {
            self.map.get(&key).copied()
        };
        if let Some(p) = found {
            return p;
        }
        let p = self.keys.len() as u32;
        self.keys.push(key);
        if self.keys.len() > Self::LIST_LEN {
            if self.map.is_empty() {
                self.map.extend(self.keys.iter().enumerate().map(|(i, k)| (*k, i as u32)));
            } else {
                self.map.insert(key, p);
            }
        }
        p
    }
}

/// Rows of one WAL record for one partition: all the rows of `source`, or
/// those at `rows`.
#[derive(Debug, Clone)]
pub struct HeadChunk {
    pub lsn: Lsn,
    source: EventBatch,
    /// Ascending row indices into `source`; `None`: every row.
    rows: Option<Arc<[u32]>>,
    /// The Arrow bytes of the chunk's rows (of `source` in proportion to
    /// its rows it holds), counted into the head's bytes at insert and out
    /// again, the same number, when sealed.
    pub bytes: u64,
    /// The run of its partition's chunks it is scanned with.
    run: Arc<Run>,
}

impl HeadChunk {
    /// A chunk of every row of `batch`.
    pub fn whole(lsn: Lsn, batch: EventBatch) -> HeadChunk {
        let bytes = batch.memory_bytes() as u64;
        HeadChunk { lsn, source: batch, rows: None, bytes, run: Arc::new(Run::new(Arc::default())) }
    }

    /// A chunk of the rows of `source` at `rows` (ascending), or of all of
    /// them for `None`, where `source` holds `stored` rows of the head's
    /// (it may hold dropped rows too, see [`Indexed::dropped`]): the
    /// chunk's bytes are its share of those.
    pub fn picked(lsn: Lsn, source: EventBatch, rows: Option<Arc<[u32]>>, stored: usize) -> HeadChunk {
        let Some(rows) = rows else { return HeadChunk::whole(lsn, source) };
        let share = rows.len() as f64 / stored.max(1) as f64;
        let bytes = (source.memory_bytes() as f64 * share) as u64;
        HeadChunk { lsn, source, rows: Some(rows), bytes, run: Arc::new(Run::new(Arc::default())) }
    }

    pub fn num_rows(&self) -> usize {
        self.rows.as_ref().map_or(self.source.num_rows(), |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.num_rows() == 0
    }

    /// The batch the chunk's rows are in (with other partitions' rows
    /// when [`HeadChunk::rows`] is `Some`).
    pub fn source(&self) -> &EventBatch {
        &self.source
    }

    /// The chunk's rows of [`HeadChunk::source`], ascending; `None`: all.
    pub fn rows(&self) -> Option<&[u32]> {
        self.rows.as_deref()
    }

    /// The chunk's rows as a batch of their own: gathered (a copy) when
    /// the source holds other rows too.
    pub fn batch(&self) -> Result<EventBatch> {
        match &self.rows {
            None => Ok(self.source.clone()),
            Some(rows) => self.source.take(rows),
        }
    }

    /// The run it is scanned with: the chunks of its partition that
    /// share dictionaries ([`Run::codes`]). A chunk outside a head is a
    /// run of its own.
    pub fn run(&self) -> &Arc<Run> {
        &self.run
    }

    /// The event times of the chunk's rows.
    pub fn ts(&self) -> impl Iterator<Item = i64> + '_ {
        let ts = self.source.ts();
        (0..self.num_rows()).map(move |j| ts[self.rows.as_deref().map_or(j, |r| r[j] as usize)])
    }
}

#[derive(Debug, Default)]
struct HeadPartition {
    chunks: Vec<HeadChunk>,
    /// The run new chunks join, and the rows it was given.
    run: Option<(Arc<Run>, usize)>,
    rows: usize,
    /// Arrow bytes of the chunks' rows ([`EventBatch::memory_bytes`]).
    bytes: u64,
    /// When the oldest chunk still in the partition arrived.
    oldest_arrival: Option<Instant>,
}

/// All unsealed partitions.
#[derive(Debug, Default)]
pub struct Head {
    partitions: BTreeMap<PartitionKey, HeadPartition>,
    /// Sum of the partitions' `bytes`.
    bytes: u64,
    /// Bytes of the runs' dictionary codes (see [`Run::codes`]), until the
    /// last reference to a run's chunks is dropped.
    codes_bytes: Arc<AtomicU64>,
}

/// A partition that a seal should take now, and how much of it.
#[derive(Debug, Clone)]
pub struct SealCandidate {
    pub partition: PartitionKey,
    pub chunks: Vec<HeadChunk>,
}

impl SealCandidate {
    pub fn rows(&self) -> usize {
        self.chunks.iter().map(HeadChunk::num_rows).sum()
    }

    pub fn max_lsn(&self) -> Lsn {
        self.chunks.iter().map(|c| c.lsn).max().unwrap_or_default()
    }
}

impl Head {
    /// Adds the chunks of one WAL record. Callers insert in LSN order.
    pub fn insert(&mut self, chunks: Vec<(PartitionKey, HeadChunk)>, now: Instant) {
        for (key, chunk) in chunks {
            if chunk.is_empty() {
                continue;
            }
            let p = self.partitions.entry(key).or_default();
            let rows = chunk.num_rows();
            let (run, held) = match p.run.take() {
                Some((run, held)) if held + rows <= dicts::RUN_ROWS => (run, held + rows),
                // Its codes count in this head's bytes (none are built yet).
                _ => (Arc::new(Run::new(self.codes_bytes.clone())), rows),
            };
            let chunk = HeadChunk { run: run.clone(), ..chunk };
            p.run = Some((run, held));
            p.rows += chunk.num_rows();
            p.bytes += chunk.bytes;
            self.bytes += chunk.bytes;
            p.oldest_arrival.get_or_insert(now);
            p.chunks.push(chunk);
        }
    }

    pub fn rows(&self) -> usize {
        self.partitions.values().map(|p| p.rows).sum()
    }

    /// Arrow bytes of every unsealed event: what [`Head::insert`] added and
    /// [`Head::remove_sealed`] has not yet removed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of the dictionary codes scans built for head chunks.
    pub fn codes_bytes(&self) -> u64 {
        self.codes_bytes.load(Ordering::Relaxed)
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// The partitions holding events, in order.
    pub fn partition_keys(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.partitions.keys().copied()
    }

    /// Every chunk, with its partition, in partition then LSN order.
    pub fn snapshot(&self) -> Vec<(PartitionKey, HeadChunk)> {
        self.partitions.iter().flat_map(|(k, p)| p.chunks.iter().map(move |c| (*k, c.clone()))).collect()
    }

    /// Partitions that hold at least `max_rows` rows, whose oldest chunk is
    /// older than `max_age`, or for which `force` holds. Only those
    /// partitions' chunk lists are copied: the sealer asks every second, and
    /// a backfill leaves tens of thousands of chunks in the head.
    pub fn due(
        &self,
        now: Instant,
        max_rows: usize,
        max_age: std::time::Duration,
        force: impl Fn(&PartitionKey) -> bool,
    ) -> Vec<SealCandidate> {
        self.partitions
            .iter()
            .filter(|(k, p)| {
                p.rows >= max_rows || p.oldest_arrival.is_some_and(|t| now.duration_since(t) >= max_age) || force(k)
            })
            .map(|(k, p)| SealCandidate { partition: *k, chunks: p.chunks.clone() })
            .collect()
    }

    /// Drops the chunks a finished seal took: the first `count` chunks of
    /// the partition (later chunks arrived during the seal and stay).
    pub fn remove_sealed(&mut self, partition: PartitionKey, count: usize, now: Instant) {
        let Some(p) = self.partitions.get_mut(&partition) else { return };
        let count = count.min(p.chunks.len());
        let sealed: Vec<HeadChunk> = p.chunks.drain(..count).collect();
        let (rows, bytes) = sealed.iter().fold((0, 0), |(rows, bytes), c| (rows + c.num_rows(), bytes + c.bytes));
        for same_run in sealed.chunk_by(|a, b| Arc::ptr_eq(&a.run, &b.run)) {
            if let Some(first) = same_run.first() {
                first.run.forget(&same_run.iter().map(|c| c.lsn).collect::<Vec<Lsn>>());
            }
        }
        debug_assert!(p.bytes >= bytes && self.bytes >= bytes, "head bytes out of step");
        p.rows -= rows;
        p.bytes -= bytes;
        self.bytes -= bytes;
        if p.chunks.is_empty() {
            self.partitions.remove(&partition);
        } else {
            // The remaining chunks arrived while the seal ran.
            p.oldest_arrival = Some(now);
        }
    }

    /// The lowest LSN still needed by the head, if any: WAL records below
    /// it are fully in segments.
    pub fn min_lsn(&self) -> Option<Lsn> {
        self.partitions.values().filter_map(|p| p.chunks.first().map(|c| c.lsn)).min()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::event::Event;
    use crate::testutil::any_event;

    /// The model: filter, then give each partition its rows in batch order.
    fn naive(p: &Partitioning, events: &[Event], keep: &[usize]) -> BTreeMap<PartitionKey, Vec<Event>> {
        let mut out: BTreeMap<PartitionKey, Vec<Event>> = BTreeMap::new();
        for &i in keep {
            let e = &events[i];
            let key =
                PartitionKey { bucket_start_ms: p.bucket_start(e.ts), shard: shard_of(&e.advertiser_id, p.shards) };
            out.entry(key).or_default().push(e.clone());
        }
        out
    }

    /// `index` against the model: the kept rows in batch order, and each
    /// partition's rows among them, through chunks as the head keeps them.
    fn check_index(p: &Partitioning, events: &[Event], keep: Option<Vec<u32>>) -> Result<(), TestCaseError> {
        let batch = EventBatch::from_events(events);
        let kept: Vec<usize> =
            keep.as_ref().map_or((0..events.len()).collect(), |k| k.iter().map(|&i| i as usize).collect());
        let indexed = p.index(&batch, keep.as_deref()).expect("index");
        let dropped = events.len() - kept.len();
        if dropped as f64 <= events.len() as f64 * MAX_DROPPED_SHARE {
            prop_assert_eq!(indexed.rows.num_rows(), events.len(), "few dropped: no row copied");
        } else {
            prop_assert!(indexed.dropped.is_empty(), "many dropped: the kept rows copied");
        }
        let stored: Vec<Event> = indexed
            .rows
            .events()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !indexed.dropped.contains(&(*i as u32)))
            .map(|(_, e)| e)
            .collect();
        let want_rows: Vec<Event> = kept.iter().map(|&i| events[i].clone()).collect();
        prop_assert_eq!(stored, want_rows);
        prop_assert_eq!(indexed.stored_rows(), kept.len());
        prop_assert_eq!(indexed.max_ts, kept.iter().map(|&i| events[i].ts).max());
        let keys: Vec<PartitionKey> = indexed.parts.iter().map(|(k, _)| *k).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "partitions in order, each once");
        let mut head = Head::default();
        let stored = indexed.stored_rows();
        let chunks = indexed
            .parts
            .into_iter()
            .map(|(k, rows)| (k, HeadChunk::picked(Lsn(1), indexed.rows.clone(), rows, stored)))
            .collect();
        head.insert(chunks, Instant::now());
        let mut got: BTreeMap<PartitionKey, Vec<Event>> = BTreeMap::new();
        for (k, c) in head.snapshot() {
            let batch = c.batch().expect("rows in range");
            prop_assert_eq!(batch.num_rows(), c.num_rows());
            prop_assert_eq!(c.ts().collect::<Vec<_>>(), batch.ts().to_vec());
            got.entry(k).or_default().extend(batch.events());
        }
        prop_assert_eq!(got, naive(p, events, &kept));
        prop_assert_eq!(head.rows(), kept.len());
        if !kept.is_empty() {
            let whole = indexed.rows.memory_bytes() as f64;
            let off = (head.bytes() as f64 - whole).abs();
            prop_assert!(off <= keys.len() as f64, "the chunks' bytes add up to their batch's, dropped rows too");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn indexing_matches_filter_then_split(
            events in prop::collection::vec(any_event(), 0..60),
            mask in prop::collection::vec(any::<bool>(), 60),
            few_dropped in prop::collection::vec(prop::bool::weighted(1.0 / 16.0), 60),
            shards in 1u32..5,
            width in prop_oneof![Just(1i64), Just(1_000), Just(3_600_000)],
        ) {
            let p = Partitioning { bucket_width_ms: width, shards };
            check_index(&p, &events, None)?;
            for drop in [mask, few_dropped] {
                let keep: Vec<u32> = (0..events.len() as u32).filter(|&i| !drop[i as usize]).collect();
                check_index(&p, &events, Some(keep))?;
            }
        }
    }

    #[test]
    fn rows_to_keep_are_ascending_row_numbers_of_the_batch() {
        let p = Partitioning { bucket_width_ms: 1_000, shards: 2 };
        let batch = EventBatch::from_events(&vec![Event::default(); 5]);
        for bad in [&[0, 1, 2, 3, 9][..], &[0, 0, 1], &[2, 1], &[5]] {
            let err = p.index(&batch, Some(bad)).expect_err("not rows of the batch, once each, in order");
            assert!(err.to_string().contains("ascending row numbers under 5"), "{bad:?}: {err}");
        }
        assert_eq!(p.index(&batch, Some(&[0, 1, 2, 3, 4])).expect("all").rows.num_rows(), 5);
        assert_eq!(p.index(&batch, Some(&[1, 3])).expect("two").rows.num_rows(), 2);
        assert_eq!(p.index(&batch, Some(&[])).expect("none").rows.num_rows(), 0);
    }

    #[test]
    fn due_takes_full_old_and_forced_partitions_only() {
        let key = |shard| PartitionKey { bucket_start_ms: 0, shard };
        let rows = |n: usize| EventBatch::from_events(&vec![Event::default(); n]);
        let start = Instant::now();
        let mut head = Head::default();
        let chunks = |lsn, parts: Vec<(PartitionKey, EventBatch)>| -> Vec<(PartitionKey, HeadChunk)> {
            parts.into_iter().map(|(k, b)| (k, HeadChunk::whole(lsn, b))).collect()
        };
        head.insert(chunks(Lsn(1), vec![(key(0), rows(5)), (key(1), rows(1)), (key(2), rows(1))]), start);
        head.insert(chunks(Lsn(2), vec![(key(3), rows(1))]), start + Duration::from_secs(20));
        let now = start + Duration::from_secs(30);
        let due = |max_rows, force: &dyn Fn(&PartitionKey) -> bool| -> Vec<(u32, usize)> {
            let picked = head.due(now, max_rows, Duration::from_secs(25), force);
            picked.iter().map(|c| (c.partition.shard, c.chunks.len())).collect()
        };
        // Shards 0..3 arrived 30 s ago (older than 25 s); shard 3 10 s ago.
        assert_eq!(due(usize::MAX, &|_| false), vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(due(usize::MAX, &|k| k.shard == 3), vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
        let young = head.due(start, 5, Duration::from_secs(25), |_| false);
        assert_eq!(young.iter().map(|c| c.partition.shard).collect::<Vec<_>>(), vec![0], "5 rows reach max_rows");
        let forced = head.due(start, usize::MAX, Duration::from_secs(25), |k| k.shard == 2);
        assert_eq!(forced.iter().map(|c| c.partition.shard).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn kept_rows_stay_where_they_are() {
        let p = Partitioning { bucket_width_ms: 1_000, shards: 1 };
        let events: Vec<Event> =
            [1_100, 100, 1_200, 2_500, 200].iter().map(|&ts| Event { ts, ..Event::default() }).collect();
        let batch = EventBatch::from_events(&events);
        let indexed = p.index(&batch, None).expect("index");
        assert_eq!(indexed.rows.ts().as_ptr(), batch.ts().as_ptr(), "no row copied");
        let parts: Vec<(i64, Option<Vec<u32>>)> =
            indexed.parts.iter().map(|(k, rows)| (k.bucket_start_ms, rows.as_deref().map(<[u32]>::to_vec))).collect();
        assert_eq!(parts, vec![(0, Some(vec![1, 4])), (1_000, Some(vec![0, 2])), (2_000, Some(vec![3]))]);
        let split: Vec<Vec<i64>> = p.split(&batch).expect("split").iter().map(|(_, b)| b.ts().to_vec()).collect();
        assert_eq!(split, vec![vec![100, 200], vec![1_100, 1_200], vec![2_500]]);
        let one = p.index(&batch.slice(3, 1), None).expect("index");
        assert!(one.parts[0].1.is_none(), "one partition: all rows, no list");
    }
}
