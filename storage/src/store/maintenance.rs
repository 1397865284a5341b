//! Background maintenance: the sealer thread and the tasks it runs at
//! each pass (seal the head, compact small segments, finalize closed
//! buckets, keep rollups in step with the configuration), with what each
//! decides is due.
//!
//! ```text
//!  sealer thread: verify segments once, then every seal_interval_ms
//!    for each task of Task::ALL not using the object store: task.run()   (each takes seal_lock)
//!    a failed pass: back off, doubling up to MAX_SEAL_BACKOFF
//!  tiering thread: every seal_interval_ms
//!    for each task using it (mirror, iceberg, tiering): task.run()   (seal_lock only to commit)
//!    a failed pass: this thread backs off, the sealer does not: an object
//!    store that is down or slow never holds up seals, ingest or queries on hot data
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use serde::Serialize;

use super::jobs::SealJob;
use super::{DamagedSegment, LiveSegment, SealReport, Store, now_ms, space};
use crate::error::Result;
use crate::head::SealCandidate;
use crate::manifest::{Level, PartitionKey, SegmentMeta};
use crate::seal::SealKind;

/// One kind of background work, run at every pass of the sealer thread.
/// Each decides for itself what is due; a failure of one does not stop
/// the others, and the pass is retried after a back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Seal head partitions that are due ([`Store::seal_due`]).
    Seal = 0,
    /// Merge small provisional segments ([`Store::compact_small`]).
    Compact = 1,
    /// Re-seal closed buckets as final ([`Store::finalize_closed`]).
    Finalize = 2,
    /// Build missing rollup segments, drop those of rollups no longer
    /// configured, merge final days ([`Store::roll_up`]).
    Rollup = 3,
    /// Snapshot the billing numbers of final days
    /// ([`Store::snapshot_billing`]).
    Billing = 4,
    /// Delete what the retention policy says is past its ttl
    /// ([`Store::apply_retention`]).
    Retention = 5,
    /// Move segments past their `hot` age to the object store
    /// ([`Store::apply_tiering`]).
    Tiering = 6,
    /// Write settled days to the Parquet mirror ([`Store::mirror_parquet`]).
    Mirror = 7,
    /// Commit mirrored days to the Iceberg tables ([`Store::commit_iceberg`]).
    Iceberg = 8,
}

impl Task {
    /// The order of a pass: the head is sealed first, so that compaction
    /// and finalization see its rows in segments.
    pub const ALL: [Task; 9] = [
        Task::Seal,
        Task::Compact,
        Task::Finalize,
        Task::Rollup,
        Task::Billing,
        Task::Mirror,
        Task::Iceberg,
        Task::Retention,
        Task::Tiering,
    ];

    /// Whether the task talks to the object store, and so runs on the
    /// tiering thread rather than the sealer's.
    pub fn uses_object_store(self) -> bool {
        matches!(self, Task::Mirror | Task::Iceberg | Task::Tiering)
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Seal => "seal",
            Task::Compact => "compact",
            Task::Finalize => "finalize",
            Task::Rollup => "rollup",
            Task::Billing => "billing",
            Task::Retention => "retention",
            Task::Tiering => "tiering",
            Task::Mirror => "mirror",
            Task::Iceberg => "iceberg",
        }
    }

    fn run(self, store: &Store) -> Result<SealReport> {
        match self {
            Task::Seal => store.seal_due(),
            Task::Compact => store.compact_small(),
            Task::Finalize => store.finalize_closed(),
            Task::Rollup => store.roll_up(),
            Task::Billing => store.snapshot_billing(),
            Task::Retention => store.apply_retention(),
            Task::Tiering => store.apply_tiering(),
            Task::Mirror => store.mirror_parquet(),
            Task::Iceberg => store.commit_iceberg(),
        }
    }
}

/// A task's runs since open, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct TaskCounters {
    runs: AtomicU64,
    failures: AtomicU64,
    busy_us: AtomicU64,
}

/// What one task has done since the store opened.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStats {
    pub task: &'static str,
    pub runs: u64,
    pub failures: u64,
    /// Time spent running it.
    pub busy_seconds: f64,
}

impl Store {
    /// Seals the partitions that are due (row threshold, age, or the first
    /// segment of a closed bucket), or every partition while the head holds half of
    /// `max_head_bytes` or more (waiting for partitions to age would leave
    /// appends refused meanwhile), or an eighth of it once no event has been
    /// appended for `seal_idle_ms` (a load has ended: its head is sealed
    /// while the cores are free, not `seal_max_age_ms` later).
    pub fn seal_due(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let head_bytes = self.inner.visible.read().head.bytes();
        let pressed = self.head_limit().is_some_and(|limit| {
            head_bytes >= limit / 2 || (head_bytes >= limit / 8 && self.quiet_for(self.inner.config.seal_idle_ms))
        });
        if pressed {
            tracing::debug!(
                head_bytes,
                "head at half its limit, or an eighth with ingest quiet: sealing every partition"
            );
        }
        // A closed bucket's partition that would be its first segment waits
        // for nothing more: it is sealed as final at once. (One with
        // segments waits for its age as before: each seal of it would make
        // finalization re-seal the whole bucket again.)
        let report = self.seal_head(true, |_| pressed)?;
        // Records without events (a stream's offsets alone) never reach the
        // head, so no seal deletes their files: this pass does, once
        // nothing in the head is older.
        if report.partitions == 0 {
            self.truncate_wal()?;
        }
        Ok(report)
    }

    /// Seals every head partition now (tests, shutdown, benchmarks).
    pub fn seal_all(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        self.seal_head(false, |_| true)
    }

    /// The start of every bucket in `[from_ms, to_ms)` that holds raw
    /// events, sealed or in the head, sorted: what a re-seal of the range
    /// has to visit (a range of centuries holds few).
    pub fn buckets_with_data(&self, from_ms: i64, to_ms: i64) -> Vec<i64> {
        let width = self.inner.config.bucket_width_ms;
        let first = from_ms.div_euclid(width).saturating_mul(width);
        let snapshot = self.snapshot();
        let segments = snapshot.segments.iter().filter(|s| s.meta.level == Level::Raw).map(|s| s.meta.partition);
        let mut buckets: Vec<i64> = segments
            .chain(snapshot.head.iter().map(|(p, _)| *p))
            .map(|p| p.bucket_start_ms)
            .filter(|b| *b >= first && *b < to_ms)
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }

    /// Re-seals every partition of the given buckets from its raw segments
    /// (after sealing whatever the head holds for them): with
    /// [`SealKind::Final`] when buckets close, with [`SealKind::Reprocess`]
    /// when rules changed. Each partition's old segments are replaced by one
    /// new segment in a single catalog commit, so a snapshot sees all old or
    /// all new; a reprocess commits all its partitions at once, a
    /// finalization in groups of `seal_max_rows` rows. Output is final when
    /// the bucket has closed. A finalization leaves a partition that is
    /// already one final segment (its first seal was final) as it is.
    pub fn reseal_buckets(&self, buckets: &[i64], kind: SealKind) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        self.reseal_locked(buckets, kind, None)
    }

    /// [`Store::reseal_buckets`] for reprocess job `job`: its segments
    /// record the job, so the billing snapshots that follow name it.
    pub fn reprocess(&self, buckets: &[i64], job: u64) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        self.reseal_locked(buckets, SealKind::Reprocess, Some(job))
    }

    /// Closed buckets that still have provisional raw segments: the
    /// sealer's next [`Store::finalize_closed`] re-seals them (ascending).
    pub fn closed_provisional_buckets(&self) -> Vec<i64> {
        let catalog = self.inner.visible.read().catalog.clone();
        let mut buckets: Vec<i64> = catalog
            .segments_of(Level::Raw)
            .filter(|m| !m.is_final && self.bucket_closed(m.partition.bucket_start_ms))
            .map(|m| m.partition.bucket_start_ms)
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }

    /// Whether the bucket has closed: its end plus the allowed lateness is
    /// behind the newest event time seen, or behind the wall clock while
    /// no event has been appended for `close_idle_ms`.
    pub fn bucket_closed(&self, bucket_start_ms: i64) -> bool {
        let config = &self.inner.config;
        let newest = self.inner.max_event_ts.load(Ordering::Acquire);
        let closes_at =
            bucket_start_ms.saturating_add(config.bucket_width_ms).saturating_add(config.allowed_lateness_ms);
        let by_event_time = newest != i64::MIN && closes_at <= newest;
        by_event_time || (self.idle() && closes_at <= now_ms())
    }

    /// Whether wall-clock closing applies: it is on and no event has been
    /// appended for `close_idle_ms`.
    pub(super) fn idle(&self) -> bool {
        self.quiet_for(self.inner.config.close_idle_ms)
    }

    /// Whether no event has been appended for `ms` (never, for 0).
    fn quiet_for(&self, ms: u64) -> bool {
        let since_open = u64::try_from(self.inner.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        ms > 0 && since_open.saturating_sub(self.inner.last_append_ms.load(Ordering::Relaxed)) >= ms
    }

    /// Re-seals, as final, every closed bucket that still has provisional
    /// raw segments (including buckets a backfill re-opened).
    pub fn finalize_closed(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let buckets = self.closed_provisional_buckets();
        if buckets.is_empty() {
            return Ok(SealReport::default());
        }
        tracing::info!(buckets = buckets.len(), "finalizing closed buckets");
        self.reseal_locked(&buckets, SealKind::Final, None)
    }

    /// Merges the provisional raw segments of every partition that has at
    /// least `compact_min_segments` of them (and whose bucket has not
    /// closed: those are finalized instead) into one segment per partition.
    pub fn compact_small(&self) -> Result<SealReport> {
        let min = self.inner.config.compact_min_segments;
        if min < 2 {
            return Ok(SealReport::default());
        }
        let _one_sealer = self.inner.seal_lock.lock();
        let catalog = self.inner.visible.read().catalog.clone();
        let mut by_partition: BTreeMap<PartitionKey, Vec<SegmentMeta>> = BTreeMap::new();
        for m in catalog.segments_of(Level::Raw) {
            by_partition.entry(m.partition).or_default().push(m.clone());
        }
        let jobs: Vec<SealJob> = by_partition
            .into_iter()
            .filter(|(p, segs)| {
                segs.len() >= min && segs.iter().any(|m| !m.is_final) && !self.bucket_closed(p.bucket_start_ms)
            })
            .map(|(partition, replaces)| SealJob {
                partition,
                kind: SealKind::Compact,
                is_final: false,
                head: SealCandidate { partition, chunks: vec![] },
                replaces,
                reprocess_job: None,
            })
            .collect();
        if jobs.is_empty() {
            return Ok(SealReport::default());
        }
        tracing::debug!(partitions = jobs.len(), "compacting small provisional segments");
        self.run_grouped(jobs)
    }

    /// Checks every checksum of every local segment; a segment that fails is
    /// reported as damaged (`damaged()`, `/health`) and no longer served.
    /// Returns the number of damaged segments found. The sealer thread runs
    /// this once at start, so a large store opens without waiting for it.
    pub fn verify_segments(&self) -> usize {
        // Cold segments are not read back whole: the object store checked
        // their size and the footer's checksum when they moved.
        let live: Vec<LiveSegment> =
            self.snapshot().segments.iter().filter(|s| !s.reader.is_remote()).cloned().collect();
        let bad: Vec<DamagedSegment> = self.inner.background.install(|| {
            live.par_iter()
                .filter_map(|s| {
                    s.reader.verify().err().map(|e| DamagedSegment { meta: (*s.meta).clone(), error: e.to_string() })
                })
                .collect()
        });
        if !bad.is_empty() {
            let mut v = self.inner.visible.write();
            for d in &bad {
                tracing::error!(segment = %d.meta.id, error = %d.error, "damaged segment: no longer served");
                v.readers.remove(&d.meta.id);
                if !v.damaged.iter().any(|x| x.meta.id == d.meta.id) {
                    v.damaged.push(d.clone());
                }
            }
        }
        bad.len()
    }

    /// Runs one task now, counting its run, time and failure.
    pub fn run_task(&self, task: Task) -> Result<SealReport> {
        let started = Instant::now();
        let result = task.run(self);
        let counters = &self.inner.counters.tasks[task as usize];
        counters.runs.fetch_add(1, Ordering::Relaxed);
        let busy_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.busy_us.fetch_add(busy_us, Ordering::Relaxed);
        if let Err(e) = &result {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task = task.name(), error = %e, "maintenance task failed; it runs again next pass");
        }
        result
    }

    /// What each maintenance task has done since open, in [`Task::ALL`] order.
    pub fn task_stats(&self) -> Vec<TaskStats> {
        Task::ALL
            .iter()
            .map(|&task| {
                let c = &self.inner.counters.tasks[task as usize];
                TaskStats {
                    task: task.name(),
                    runs: c.runs.load(Ordering::Relaxed),
                    failures: c.failures.load(Ordering::Relaxed),
                    busy_seconds: c.busy_us.load(Ordering::Relaxed) as f64 / 1e6,
                }
            })
            .collect()
    }

    /// Sleeps `wait`, waking every `interval` (at most 10 ms) to see
    /// whether the store is closing.
    fn pause(&self, wait: Duration, interval: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.inner.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10).min(interval));
        }
    }

    /// Starts the background threads, the sealer and the tiering thread
    /// (idempotent).
    pub fn start_sealer(&self) -> Result<()> {
        let mut slot = self.inner.sealer.lock();
        if slot.is_some() {
            return Ok(());
        }
        let store = self.clone();
        let interval = Duration::from_millis(self.inner.config.seal_interval_ms.max(10));
        let handle = std::thread::Builder::new()
            .name("adstore-sealer".into())
            .spawn(move || {
                super::priority::lower_this_thread(store.inner.config.background_nice);
                store.verify_segments();
                // While passes fail (the disk full, say), the wait between
                // them doubles up to `MAX_SEAL_BACKOFF`, rather than a
                // retry a second that logs and writes as often.
                let mut wait = interval;
                while !store.inner.stop.load(Ordering::Acquire) {
                    let mut failed = None;
                    for task in Task::ALL.into_iter().filter(|t| !t.uses_object_store()) {
                        if let Err(e) = store.run_task(task) {
                            failed = Some(e);
                        }
                    }
                    match failed {
                        Some(e) => {
                            store.inner.counters.seal_errors.fetch_add(1, Ordering::Relaxed);
                            store.inner.disk.seal_failed(&e);
                            wait = (wait * 2).min(space::MAX_SEAL_BACKOFF.max(interval));
                        }
                        None => {
                            store.inner.disk.seal_succeeded();
                            wait = interval;
                        }
                    }
                    store.pause(wait, interval);
                }
            })
            .map_err(|source| crate::error::io_error(PathBuf::from("<sealer thread>"), source))?;
        *slot = Some(handle);
        let store = self.clone();
        let tiering = std::thread::Builder::new()
            .name("adstore-tiering".into())
            .spawn(move || {
                super::priority::lower_this_thread(store.inner.config.background_nice);
                let mut wait = interval;
                while !store.inner.stop.load(Ordering::Acquire) {
                    let mut failed = false;
                    for task in Task::ALL.into_iter().filter(|t| t.uses_object_store()) {
                        failed |= store.run_task(task).is_err();
                    }
                    wait = if failed { (wait * 2).min(space::MAX_SEAL_BACKOFF.max(interval)) } else { interval };
                    store.pause(wait, interval);
                }
            })
            .map_err(|source| crate::error::io_error(PathBuf::from("<tiering thread>"), source))?;
        *self.inner.tiering_thread.lock() = Some(tiering);
        Ok(())
    }
}
