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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Result, StorageError};
use crate::event::{ColumnId, EventBatch, shard_of};
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

    /// Splits a batch into one batch per partition, keeping row order.
    pub fn split(&self, batch: &EventBatch) -> Result<Vec<(PartitionKey, EventBatch)>> {
        Ok(self.group(batch, None)?.parts)
    }

    /// Groups the rows to `keep` (all when `None`; indices ascending) by
    /// partition with at most one copy.
    ///
    /// The result holds the kept rows with each partition's rows next to
    /// each other, in their order in `batch`, and each partition's slice of
    /// those rows (zero-copy). Rows are copied once when some are dropped or
    /// partitions interleave, and not at all otherwise. Filtering and then
    /// splitting copied every row twice, each time into memory the kernel had
    /// to zero, a quarter of Arrow ingest time in a profile.
    pub fn group(&self, batch: &EventBatch, keep: Option<&[u32]>) -> Result<Grouped> {
        let ts = batch.ts();
        let adv = batch.str_column(ColumnId::AdvertiserId);
        let n = keep.map_or(batch.num_rows(), <[u32]>::len);
        let row = |j: usize| keep.map_or(j, |k| k[j] as usize);
        // Each row's partition, as an index into the batch's distinct
        // partitions (a map lookup per row was most of this function).
        // Shard hashes and partitions repeat heavily; remember the last ones.
        let mut parts = PartitionIndex::default();
        let mut last_shard: Option<(&str, u32)> = None;
        let mut last_part: Option<(PartitionKey, u32)> = None;
        let mut runs = 0;
        let mut part_of = Vec::with_capacity(n);
        for j in 0..n {
            let i = row(j);
            let a = adv.value(i);
            let shard = match last_shard {
                Some((s, h)) if s == a => h,
                _ => {
                    let h = shard_of(a, self.shards);
                    last_shard = Some((a, h));
                    h
                }
            };
            let key = PartitionKey { bucket_start_ms: self.bucket_start(ts[i]), shard };
            let p = match last_part {
                Some((k, p)) if k == key => p,
                _ => {
                    runs += 1;
                    let p = parts.find_or_add(key);
                    last_part = Some((key, p));
                    p
                }
            };
            part_of.push(p);
        }
        let keys = parts.keys;
        if keep.is_none() && runs == keys.len() {
            // Already grouped: slice in place.
            let mut out = Vec::with_capacity(runs);
            let mut j = 0;
            while j < n {
                let p = part_of[j];
                let len = part_of[j..].iter().take_while(|x| **x == p).count();
                out.push((keys[p as usize], if len == n { batch.clone() } else { batch.slice(j, len) }));
                j += len;
            }
            return Ok(Grouped { rows: batch.clone(), parts: out });
        }
        // Partitions in key order; each one's span in the grouped rows.
        let mut counts = vec![0usize; keys.len()];
        for &p in &part_of {
            counts[p as usize] += 1;
        }
        let mut sorted: Vec<usize> = (0..keys.len()).collect();
        sorted.sort_by_key(|&p| keys[p]);
        let mut spans = Vec::with_capacity(keys.len());
        // From here on: where each partition's next row goes.
        let mut slot = vec![0usize; keys.len()];
        let mut next = 0;
        for p in sorted {
            spans.push((keys[p], next, counts[p]));
            slot[p] = next;
            next += counts[p];
        }
        let mut order = vec![0u32; n];
        for (j, &p) in part_of.iter().enumerate() {
            order[slot[p as usize]] = row(j) as u32;
            slot[p as usize] += 1;
        }
        let rows = batch.take(&order)?;
        let parts = spans
            .into_iter()
            .map(|(k, start, len)| (k, if len == n { rows.clone() } else { rows.slice(start, len) }))
            .collect();
        Ok(Grouped { rows, parts })
    }
}

impl Partitioning {
    /// The rows to `keep` (all when `None`; indices ascending), in their
    /// order in `batch`, and each partition's rows among them, without
    /// copying rows into partition order: the head reads each partition's
    /// rows through their indices, and a seal gathers them. Gathering the
    /// rows of every request by partition ([`Partitioning::group`]) was
    /// 15-17% of the server's time in a 10M-event Arrow load. Rows are
    /// copied only when some are dropped (an Arrow filter: runs of rows).
    pub fn index(&self, batch: &EventBatch, keep: Option<&[u32]>) -> Result<Indexed> {
        let rows = match keep {
            None => batch.clone(),
            Some(keep) => {
                let n = batch.num_rows();
                if keep.windows(2).any(|w| w[0] >= w[1]) || keep.last().is_some_and(|&last| last as usize >= n) {
                    return Err(StorageError::Internal(format!(
                        "rows to keep must be ascending row numbers under {n}, one each"
                    )));
                }
                // Ascending, distinct and under `n`: all rows when there are `n`.
                if keep.len() == n { batch.clone() } else { batch.filter_rows(keep)? }
            }
        };
        let ts = rows.ts();
        let adv = rows.str_column(ColumnId::AdvertiserId);
        let mut parts = PartitionIndex::default();
        let mut last_shard: Option<(&str, u32)> = None;
        let mut last_part: Option<(PartitionKey, u32)> = None;
        let mut part_of = Vec::with_capacity(rows.num_rows());
        for (i, &t) in ts.iter().enumerate() {
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
        if keys.len() == 1 {
            return Ok(Indexed { parts: vec![(keys[0], None)], rows });
        }
        let mut picked: Vec<Vec<u32>> = keys.iter().map(|_| Vec::new()).collect();
        for (i, &p) in part_of.iter().enumerate() {
            picked[p as usize].push(i as u32);
        }
        let mut parts: Vec<(PartitionKey, Option<Arc<[u32]>>)> =
            keys.into_iter().zip(picked).map(|(k, rows)| (k, Some(rows.into()))).collect();
        parts.sort_by_key(|(k, _)| *k);
        Ok(Indexed { rows, parts })
    }
}

/// A batch's kept rows and each partition's rows among them, see
/// [`Partitioning::index`].
#[derive(Debug)]
pub struct Indexed {
    /// All kept rows, in their order in the batch.
    pub rows: EventBatch,
    /// Each partition's rows of `rows`, ascending (`None`: all of them), in
    /// partition order.
    pub parts: Vec<(PartitionKey, Option<Arc<[u32]>>)>,
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

/// A batch's kept rows grouped by partition, see [`Partitioning::group`].
#[derive(Debug)]
pub struct Grouped {
    /// All kept rows, each partition's together.
    pub rows: EventBatch,
    /// Each partition's rows, as slices of `rows`, in the order they
    /// appear there.
    pub parts: Vec<(PartitionKey, EventBatch)>,
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
}

impl HeadChunk {
    /// A chunk of every row of `batch`.
    pub fn whole(lsn: Lsn, batch: EventBatch) -> HeadChunk {
        let bytes = batch.memory_bytes() as u64;
        HeadChunk { lsn, source: batch, rows: None, bytes }
    }

    /// A chunk of the rows of `source` at `rows` (ascending), or of all of
    /// them for `None`.
    pub fn picked(lsn: Lsn, source: EventBatch, rows: Option<Arc<[u32]>>) -> HeadChunk {
        let Some(rows) = rows else { return HeadChunk::whole(lsn, source) };
        let share = rows.len() as f64 / source.num_rows().max(1) as f64;
        let bytes = (source.memory_bytes() as f64 * share) as u64;
        HeadChunk { lsn, source, rows: Some(rows), bytes }
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

    /// The event times of the chunk's rows.
    pub fn ts(&self) -> impl Iterator<Item = i64> + '_ {
        let ts = self.source.ts();
        let all = self.rows.is_none().then(|| ts.iter().copied());
        let picked = self.rows.as_deref().map(|r| r.iter().map(|&i| ts[i as usize]));
        all.into_iter().flatten().chain(picked.into_iter().flatten())
    }
}

#[derive(Debug, Default)]
struct HeadPartition {
    chunks: Vec<HeadChunk>,
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
    /// Adds the rows of record `lsn`. Callers insert in LSN order.
    pub fn insert(&mut self, lsn: Lsn, parts: Vec<(PartitionKey, EventBatch)>, now: Instant) {
        let chunks = parts.into_iter().map(|(key, batch)| (key, HeadChunk::whole(lsn, batch))).collect();
        self.insert_chunks(chunks, now);
    }

    /// Adds chunks of one record. Callers insert in LSN order.
    pub fn insert_chunks(&mut self, chunks: Vec<(PartitionKey, HeadChunk)>, now: Instant) {
        for (key, chunk) in chunks {
            if chunk.is_empty() {
                continue;
            }
            let p = self.partitions.entry(key).or_default();
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

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
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
        let (rows, bytes) =
            p.chunks.drain(..count).fold((0, 0), |(rows, bytes), c| (rows + c.num_rows(), bytes + c.bytes));
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

    fn check(p: &Partitioning, events: &[Event], keep: Option<Vec<u32>>) -> Result<(), TestCaseError> {
        let batch = EventBatch::from_events(events);
        let kept: Vec<usize> =
            keep.as_ref().map_or((0..events.len()).collect(), |k| k.iter().map(|&i| i as usize).collect());
        let grouped = p.group(&batch, keep.as_deref()).expect("group");
        let want = naive(p, events, &kept);
        let got: BTreeMap<PartitionKey, Vec<Event>> = grouped.parts.iter().map(|(k, b)| (*k, b.events())).collect();
        prop_assert_eq!(grouped.parts.len(), got.len(), "one slice per partition");
        prop_assert_eq!(&got, &want);
        // `rows` holds exactly the parts, one after another.
        let concatenated: Vec<Event> = grouped.parts.iter().flat_map(|(_, b)| b.events()).collect();
        prop_assert_eq!(grouped.rows.events(), concatenated);
        Ok(())
    }

    /// `index` against the model: the kept rows in batch order, and each
    /// partition's rows among them, through chunks as the head keeps them.
    fn check_index(p: &Partitioning, events: &[Event], keep: Option<Vec<u32>>) -> Result<(), TestCaseError> {
        let batch = EventBatch::from_events(events);
        let kept: Vec<usize> =
            keep.as_ref().map_or((0..events.len()).collect(), |k| k.iter().map(|&i| i as usize).collect());
        let indexed = p.index(&batch, keep.as_deref()).expect("index");
        let want_rows: Vec<Event> = kept.iter().map(|&i| events[i].clone()).collect();
        prop_assert_eq!(indexed.rows.events(), want_rows);
        let keys: Vec<PartitionKey> = indexed.parts.iter().map(|(k, _)| *k).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "partitions in order, each once");
        let mut head = Head::default();
        let chunks = indexed
            .parts
            .into_iter()
            .map(|(k, rows)| (k, HeadChunk::picked(Lsn(1), indexed.rows.clone(), rows)))
            .collect();
        head.insert_chunks(chunks, Instant::now());
        let mut got: BTreeMap<PartitionKey, Vec<Event>> = BTreeMap::new();
        for (k, c) in head.snapshot() {
            let batch = c.batch().expect("rows in range");
            prop_assert_eq!(batch.num_rows(), c.num_rows());
            prop_assert_eq!(c.ts().collect::<Vec<_>>(), batch.ts().to_vec());
            got.entry(k).or_default().extend(batch.events());
        }
        prop_assert_eq!(got, naive(p, events, &kept));
        prop_assert_eq!(head.rows(), kept.len());
        Ok(())
    }

    proptest! {
        #[test]
        fn indexing_matches_filter_then_split(
            events in prop::collection::vec(any_event(), 0..60),
            mask in prop::collection::vec(any::<bool>(), 60),
            shards in 1u32..5,
            width in prop_oneof![Just(1i64), Just(1_000), Just(3_600_000)],
        ) {
            let p = Partitioning { bucket_width_ms: width, shards };
            check_index(&p, &events, None)?;
            let keep: Vec<u32> = (0..events.len() as u32).filter(|&i| mask[i as usize]).collect();
            check_index(&p, &events, Some(keep))?;
        }

        #[test]
        fn grouping_matches_filter_then_split(
            events in prop::collection::vec(any_event(), 0..60),
            mask in prop::collection::vec(any::<bool>(), 60),
            shards in 1u32..5,
            width in prop_oneof![Just(1i64), Just(1_000), Just(3_600_000)],
            sorted in any::<bool>(),
        ) {
            let p = Partitioning { bucket_width_ms: width, shards };
            let mut events = events;
            if sorted {
                // Already grouped input takes the zero-copy path.
                events.sort_by_key(|e| (p.bucket_start(e.ts), shard_of(&e.advertiser_id, p.shards)));
            }
            check(&p, &events, None)?;
            let keep: Vec<u32> = (0..events.len() as u32).filter(|&i| mask[i as usize]).collect();
            check(&p, &events, Some(keep))?;
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
        head.insert(Lsn(1), vec![(key(0), rows(5)), (key(1), rows(1)), (key(2), rows(1))], start);
        head.insert(Lsn(2), vec![(key(3), rows(1))], start + Duration::from_secs(20));
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
    fn grouped_input_is_sliced_not_copied() {
        let p = Partitioning { bucket_width_ms: 1_000, shards: 1 };
        let events: Vec<Event> =
            [100, 200, 1_100, 1_200, 2_500].iter().map(|&ts| Event { ts, ..Event::default() }).collect();
        let batch = EventBatch::from_events(&events);
        let grouped = p.group(&batch, None).expect("group");
        assert_eq!(grouped.parts.len(), 3);
        let base = batch.ts().as_ptr();
        let first = grouped.parts[0].1.ts().as_ptr();
        assert_eq!(first, base, "the first partition is a slice of the input");
        // Interleaved partitions are copied once, into `rows`.
        let mixed = EventBatch::from_events(&[events[2].clone(), events[0].clone(), events[3].clone()]);
        let grouped = p.group(&mixed, None).expect("group");
        assert_eq!(grouped.rows.ts().to_vec(), vec![100, 1_100, 1_200]);
        assert_eq!(grouped.parts[1].1.ts().as_ptr(), grouped.rows.ts()[1..].as_ptr());
    }
}
