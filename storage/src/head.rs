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
//! A chunk is an [`EventBatch`] (Arrow buffers behind `Arc`s), so a query
//! snapshot is a cheap clone of the chunk lists and never blocks ingest for
//! longer than that clone. A seal takes a prefix of a partition's chunks and,
//! once its segment is in the catalog, drops exactly that prefix.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::error::Result;
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
        let ts = batch.ts();
        let adv = batch.str_column(ColumnId::AdvertiserId);
        let mut rows: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
        // Shard hashes repeat heavily within a batch; remember the last one.
        let mut last: Option<(&str, u32)> = None;
        for (i, &t) in ts.iter().enumerate() {
            let a = adv.value(i);
            let shard = match last {
                Some((s, h)) if s == a => h,
                _ => {
                    let h = shard_of(a, self.shards);
                    last = Some((a, h));
                    h
                }
            };
            let key = PartitionKey { bucket_start_ms: self.bucket_start(t), shard };
            rows.entry(key).or_default().push(i as u32);
        }
        if rows.len() == 1 {
            return Ok(rows.into_keys().map(|k| (k, batch.clone())).collect());
        }
        rows.into_iter().map(|(k, idx)| Ok((k, batch.take(&idx)?))).collect()
    }
}

/// Rows of one WAL record for one partition.
#[derive(Debug, Clone)]
pub struct HeadChunk {
    pub lsn: Lsn,
    pub batch: EventBatch,
}

#[derive(Debug, Default)]
struct HeadPartition {
    chunks: Vec<HeadChunk>,
    rows: usize,
    /// When the oldest chunk still in the partition arrived.
    oldest_arrival: Option<Instant>,
}

/// All unsealed partitions.
#[derive(Debug, Default)]
pub struct Head {
    partitions: BTreeMap<PartitionKey, HeadPartition>,
}

/// A partition that a seal should take now, and how much of it.
#[derive(Debug, Clone)]
pub struct SealCandidate {
    pub partition: PartitionKey,
    pub chunks: Vec<HeadChunk>,
}

impl SealCandidate {
    pub fn max_lsn(&self) -> Lsn {
        self.chunks.iter().map(|c| c.lsn).max().unwrap_or_default()
    }
}

impl Head {
    /// Adds the rows of record `lsn`. Callers insert in LSN order.
    pub fn insert(&mut self, lsn: Lsn, parts: Vec<(PartitionKey, EventBatch)>, now: Instant) {
        for (key, batch) in parts {
            if batch.is_empty() {
                continue;
            }
            let p = self.partitions.entry(key).or_default();
            p.rows += batch.num_rows();
            p.oldest_arrival.get_or_insert(now);
            p.chunks.push(HeadChunk { lsn, batch });
        }
    }

    pub fn rows(&self) -> usize {
        self.partitions.values().map(|p| p.rows).sum()
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Every chunk, with its partition, in partition then LSN order.
    pub fn snapshot(&self) -> Vec<(PartitionKey, HeadChunk)> {
        self.partitions.iter().flat_map(|(k, p)| p.chunks.iter().map(move |c| (*k, c.clone()))).collect()
    }

    /// Partitions that hold at least `max_rows` rows or whose oldest chunk is
    /// older than `max_age`; with `force`, every partition.
    pub fn due(&self, now: Instant, max_rows: usize, max_age: std::time::Duration, force: bool) -> Vec<SealCandidate> {
        self.partitions
            .iter()
            .filter(|(_, p)| {
                force || p.rows >= max_rows || p.oldest_arrival.is_some_and(|t| now.duration_since(t) >= max_age)
            })
            .map(|(k, p)| SealCandidate { partition: *k, chunks: p.chunks.clone() })
            .collect()
    }

    /// Drops the chunks a finished seal took: the first `count` chunks of
    /// the partition (later chunks arrived during the seal and stay).
    pub fn remove_sealed(&mut self, partition: PartitionKey, count: usize, now: Instant) {
        let Some(p) = self.partitions.get_mut(&partition) else { return };
        let count = count.min(p.chunks.len());
        let removed: usize = p.chunks.drain(..count).map(|c| c.batch.num_rows()).sum();
        p.rows -= removed;
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
