//! Seal jobs: a partition's head chunks and/or segments through the seal
//! pipeline into one new segment, committed with every other job of the
//! pass in one catalog edit.
//!
//! ```text
//!  jobs ─► (background pool, in parallel) read events ─► pipeline ─► write segment + sidecars
//!          + its minute rollup segments, fsync
//!       ─► one catalog commit (adds them; removes replaced segments and their rollup segments)
//!       ─► swap catalog, drop sealed head chunks, readers (one write lock)
//!       ─► delete replaced segment files ─► WAL truncate_before(min LSN still in head)
//! ```
//! A failure before the commit removes every file the pass wrote.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use rayon::prelude::*;

use super::{Snapshot, Store, now_ms};
use crate::error::{IoContext, Result, StorageError};
use crate::event::EventBatch;
use crate::failpoint;
use crate::head::{HeadChunk, SealCandidate};
use crate::ids::SegmentId;
use crate::manifest::{CatalogEdit, Level, PartitionKey, SealWatermark, SegmentMeta, Tier, sync_dir};
use crate::rollup::{RollupDef, RollupInput};
use crate::seal::{PipelineOutput, SealContext, SealKind};
use crate::segment::{SegmentReader, SegmentSchema, SegmentSummary, SegmentWriteOptions, write_columns, write_segment};

/// One partition's worth of sealing: head chunks and/or segments to replace.
pub(super) struct SealJob {
    pub(super) partition: PartitionKey,
    pub(super) kind: SealKind,
    pub(super) is_final: bool,
    pub(super) head: SealCandidate,
    pub(super) replaces: Vec<SegmentMeta>,
    /// The reprocess job this re-seal is part of, recorded on its segment.
    pub(super) reprocess_job: Option<u64>,
}

impl SealJob {
    /// Rows it reads: its head chunks' and those of the segments it replaces.
    fn rows(&self) -> usize {
        self.head.rows() + self.replaces.iter().map(|m| usize::try_from(m.rows).unwrap_or(usize::MAX)).sum::<usize>()
    }

    pub(super) fn context<'a>(&'a self, snapshot: &'a Snapshot, bucket_width_ms: i64) -> SealContext<'a> {
        SealContext {
            partition: self.partition,
            bucket_width_ms,
            kind: self.kind,
            snapshot,
            is_final: self.is_final,
            replaces: &self.replaces,
        }
    }
}

/// A job whose segment is written but not yet committed.
pub(super) struct PreparedSeal {
    pub(super) job: SealJob,
    pub(super) segment: Option<(SegmentMeta, Arc<SegmentReader>)>,
    /// The minute rollup segments of `segment`.
    pub(super) rollups: Vec<(SegmentMeta, Arc<SegmentReader>)>,
    pub(super) output: PipelineOutput,
    pub(super) rows_in: usize,
}

/// What one sealer pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    pub partitions: usize,
    pub rows_in: usize,
    pub rows_out: usize,
    /// Segments written.
    pub segments: Vec<SegmentId>,
    /// Segments replaced (re-seals).
    pub replaced: Vec<SegmentId>,
}

impl SealReport {
    /// Adds what another pass did.
    pub(super) fn absorb(&mut self, other: SealReport) {
        self.partitions += other.partitions;
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.segments.extend(other.segments);
        self.replaced.extend(other.replaced);
    }
}

impl Store {
    /// How this store lays out the segments it writes.
    pub(super) fn segment_options(&self) -> SegmentWriteOptions {
        let c = &self.inner.config;
        SegmentWriteOptions {
            block_rows: c.block_rows,
            zstd_level: c.zstd_level,
            id_index: c.id_index,
            ..SegmentWriteOptions::default()
        }
    }
}

/// The segments derived from `replaced` (their rollup segments, and those
/// merged from a day they belong to), which go with them.
fn derived_of<'a>(snapshot: &'a Snapshot, replaced: &'a [SegmentMeta]) -> impl Iterator<Item = SegmentId> + 'a {
    snapshot
        .catalog
        .segments
        .values()
        .filter(|m| m.derived_from().any(|s| replaced.iter().any(|r| r.id == s)))
        .map(|m| m.id)
}

impl Store {
    /// Seals head partitions that are due or for which `force` holds, and,
    /// with `finals_due`, those whose first seal is final
    /// ([`Store::first_final_partitions`]). Callers hold `seal_lock`.
    pub(super) fn seal_head(&self, finals_due: bool, force: impl Fn(&PartitionKey) -> bool) -> Result<SealReport> {
        let inner = &self.inner;
        let max_age = Duration::from_millis(inner.config.seal_max_age_ms);
        let now = Instant::now();
        let finals = self.first_final_partitions();
        let candidates = inner
            .visible
            .read()
            .head
            .due(now, inner.config.seal_max_rows, max_age, |p| force(p) || (finals_due && finals.contains(p)));
        // A pass over a large head, as under pressure, drops each group's
        // head chunks once committed (their memory goes once no other
        // partition's slice of the same append still holds it).
        let jobs = candidates.into_iter().map(|c| SealJob {
            partition: c.partition,
            kind: SealKind::Seal,
            is_final: finals.contains(&c.partition),
            head: c,
            replaces: vec![],
            reprocess_job: None,
        });
        self.run_grouped(jobs)
    }

    /// The head partitions whose first seal is final at once: the bucket
    /// has closed, the partition has no raw segment, and every seal stage
    /// agrees. Such a seal already sees every event and anchor that a
    /// re-seal at closing would (closing waits for no more events), so
    /// sealing it provisional and then again as final would do the work
    /// twice. A partition with segments is sealed provisional and merged
    /// with them by finalization. (The stages are asked outside the store's
    /// lock; the catalog does not change meanwhile, under `seal_lock`.)
    fn first_final_partitions(&self) -> HashSet<PartitionKey> {
        let closed: Vec<PartitionKey> = {
            let visible = self.inner.visible.read();
            let stored: HashSet<PartitionKey> = visible.catalog.segments_of(Level::Raw).map(|m| m.partition).collect();
            visible
                .head
                .partition_keys()
                .filter(|p| !stored.contains(p) && self.bucket_closed(p.bucket_start_ms))
                .collect()
        };
        closed.into_iter().filter(|p| self.inner.pipeline.first_seal_final(p.bucket_start_ms)).collect()
    }

    /// Runs `jobs` with one commit per group of at most `seal_max_rows`
    /// rows (and at least one job): a pass over many partitions (a large
    /// head, the closing of a day's buckets) holds the sealed copy of one
    /// group at a time instead of all of them. Each partition's segments
    /// are still replaced in one commit. Callers hold `seal_lock`.
    pub(super) fn run_grouped(&self, jobs: impl IntoIterator<Item = SealJob>) -> Result<SealReport> {
        let mut report = SealReport::default();
        let mut group = Vec::new();
        let mut group_rows = 0;
        for job in jobs {
            let rows = job.rows();
            if !group.is_empty() && group_rows + rows > self.inner.config.seal_max_rows {
                report.absorb(self.run_jobs(std::mem::take(&mut group))?);
                group_rows = 0;
            }
            group_rows += rows;
            group.push(job);
        }
        report.absorb(self.run_jobs(group)?);
        Ok(report)
    }

    pub(super) fn reseal_locked(&self, buckets: &[i64], kind: SealKind, job: Option<u64>) -> Result<SealReport> {
        let buckets: std::collections::HashSet<i64> = buckets.iter().copied().collect();
        let inner = &self.inner;
        let mut report = self.seal_head(false, |p| buckets.contains(&p.bucket_start_ms))?;
        let catalog = inner.visible.read().catalog.clone();
        let mut by_partition: BTreeMap<PartitionKey, Vec<SegmentMeta>> = BTreeMap::new();
        for m in catalog.segments_of(Level::Raw) {
            if buckets.contains(&m.partition.bucket_start_ms) {
                by_partition.entry(m.partition).or_default().push(m.clone());
            }
        }
        // A partition already final in one segment (sealed final at once)
        // is left as it is: only its own events or a reprocess change a
        // final partition's numbers (docs/exactly-once.md).
        let already_final = |segs: &[SegmentMeta]| kind == SealKind::Final && matches!(segs, [m] if m.is_final);
        let jobs: Vec<SealJob> = by_partition
            .into_iter()
            .filter(|(_, replaces)| !already_final(replaces))
            .map(|(partition, replaces)| SealJob {
                partition,
                kind,
                is_final: self.bucket_closed(partition.bucket_start_ms),
                head: SealCandidate { partition, chunks: vec![] },
                replaces,
                reprocess_job: job,
            })
            .collect();
        // A reprocess job is one commit, so that no reader sees part of it;
        // it holds its whole range's events until then. Finalization goes
        // in groups.
        report.absorb(if kind == SealKind::Reprocess { self.run_jobs(jobs)? } else { self.run_grouped(jobs)? });
        Ok(report)
    }

    /// Runs the pipeline for every job in parallel, writes their segments,
    /// and commits them all in one catalog edit. Callers hold `seal_lock`.
    pub(super) fn run_jobs(&self, jobs: Vec<SealJob>) -> Result<SealReport> {
        let inner = &self.inner;
        if jobs.is_empty() {
            return Ok(SealReport::default());
        }
        let snapshot = self.snapshot();
        let results: Vec<Result<PreparedSeal>> =
            inner.background.install(|| jobs.into_par_iter().map(|j| self.prepare(j, &snapshot)).collect());
        let mut prepared = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => prepared.push(p),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            self.abandon(&prepared, &snapshot);
            return Err(e);
        }

        let mut edit = CatalogEdit::default();
        let mut report = SealReport::default();
        for p in &prepared {
            if p.job.kind == SealKind::Seal {
                edit.sealed.push(SealWatermark { partition: p.job.partition, lsn: p.job.head.max_lsn() });
            }
            if let Some((meta, _)) = &p.segment {
                edit.add.push(meta.clone());
                report.segments.push(meta.id);
            }
            edit.add.extend(p.rollups.iter().map(|(m, _)| m.clone()));
            report.replaced.extend(p.job.replaces.iter().map(|m| m.id));
            report.partitions += 1;
            report.rows_in += p.rows_in;
            report.rows_out += p.output.events.num_rows();
        }
        // What goes: the replaced segments and what derives from them (a
        // segment merged from a day goes with the first of its raw
        // segments replaced, so it is listed once).
        let replaced: Vec<SegmentMeta> = prepared.iter().flat_map(|p| p.job.replaces.iter().cloned()).collect();
        let mut removed: Vec<SegmentId> =
            replaced.iter().map(|m| m.id).chain(derived_of(&snapshot, &replaced)).collect();
        removed.sort_unstable();
        removed.dedup();
        edit.remove = removed.clone();
        let catalog = match inner.manifest.commit(&edit) {
            Ok(c) => c,
            Err(e) => {
                self.abandon(&prepared, &snapshot);
                return Err(e);
            }
        };
        failpoint::hit("seal_after_commit");
        if let Some(p) = prepared.first() {
            failpoint::hit(&format!("{}_after_commit", p.job.kind.name()));
        }
        {
            let mut v = inner.visible.write();
            v.catalog = catalog;
            let now = Instant::now();
            for old in &removed {
                v.readers.remove(old);
            }
            for p in &prepared {
                for (meta, reader) in p.segment.iter().chain(&p.rollups) {
                    v.readers.insert(meta.id, reader.clone());
                }
                if !p.job.head.chunks.is_empty() {
                    v.head.remove_sealed(p.job.partition, p.job.head.chunks.len(), now);
                }
            }
        }
        for p in &prepared {
            inner.pipeline.committed(&p.job.context(&snapshot, inner.config.bucket_width_ms), &p.output.per_stage);
        }
        // Replaced segments are out of the catalog: their files can go.
        // Snapshots still holding a reader keep the mapping alive.
        for old in removed {
            self.delete_segment_files(old);
        }
        inner.counters.seals.fetch_add(prepared.len() as u64, Ordering::Relaxed);
        inner.counters.sealed_rows.fetch_add(report.rows_out as u64, Ordering::Relaxed);
        if prepared.iter().any(|p| p.job.kind == SealKind::Seal) {
            self.truncate_wal()?;
        }
        Ok(report)
    }

    pub(super) fn abandon(&self, prepared: &[PreparedSeal], snapshot: &Snapshot) {
        for p in prepared {
            self.inner
                .pipeline
                .aborted(&p.job.context(snapshot, self.inner.config.bucket_width_ms), &p.output.per_stage);
            for (meta, _) in p.segment.iter().chain(&p.rollups) {
                self.delete_segment_files(meta.id);
            }
        }
    }

    /// Removes a segment file and its sidecars (best effort: a leftover is
    /// an orphan that the next open removes).
    pub(super) fn delete_segment_files(&self, id: SegmentId) {
        let prefix = format!("{id}.");
        let Ok(entries) = std::fs::read_dir(&self.inner.segments_dir) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix)
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not delete replaced segment file");
            }
        }
    }

    /// Runs the pipeline over one job's events and writes the segment and
    /// its sidecars (durably, but not yet in the catalog: until the commit,
    /// a crash leaves orphan files that the next open removes).
    pub(super) fn prepare(&self, job: SealJob, snapshot: &Snapshot) -> Result<PreparedSeal> {
        let inner = &self.inner;
        let mut batches: Vec<EventBatch> = job.head.chunks.iter().map(HeadChunk::batch).collect::<Result<_>>()?;
        for old in &job.replaces {
            let reader =
                snapshot.segments.iter().find(|s| s.meta.id == old.id).map(|s| s.reader.clone()).ok_or_else(|| {
                    StorageError::Damaged { id: old.id, reason: "segment not readable for re-seal".into() }
                })?;
            batches.push(reader.read_batch()?);
        }
        let events = EventBatch::concat(&batches)?;
        let rows_in = events.num_rows();
        let ctx = job.context(snapshot, inner.config.bucket_width_ms);
        let output = inner.pipeline.run(&ctx, events)?;
        if output.events.is_empty() {
            return Ok(PreparedSeal { job, segment: None, rollups: Vec::new(), output, rows_in });
        }
        let written = self.write_job_segment(&job, &output).and_then(|(meta, reader)| {
            let rollups =
                self.write_rollups(&meta, &output.events).inspect_err(|_| self.delete_segment_files(meta.id))?;
            Ok(((meta, reader), rollups))
        });
        match written {
            Ok((segment, rollups)) => Ok(PreparedSeal { job, segment: Some(segment), rollups, output, rows_in }),
            Err(e) => {
                inner.pipeline.aborted(&ctx, &output.per_stage);
                Err(e)
            }
        }
    }

    /// Writes the rollup segment of every configured rollup over `events`,
    /// the rows of the raw segment `raw` (durably, not yet in the catalog).
    /// A rollup whose sums overflow gets none: queries read `raw` instead.
    fn write_rollups(&self, raw: &SegmentMeta, events: &EventBatch) -> Result<Vec<(SegmentMeta, Arc<SegmentReader>)>> {
        let inner = &self.inner;
        let mut written: Vec<(SegmentMeta, Arc<SegmentReader>)> = Vec::new();
        let input = RollupInput::new(events, &inner.config.rollups)?;
        let result = inner.config.rollups.iter().try_for_each(|def| {
            if let Some(rollup) = self.write_rollup(raw, def, &input)? {
                written.push(rollup);
            }
            Ok(())
        });
        if let Err(e) = result {
            for (meta, _) in &written {
                self.delete_segment_files(meta.id);
            }
            return Err(e);
        }
        if !written.is_empty() {
            sync_dir(&inner.segments_dir)?;
        }
        failpoint::hit("rollup_after_write");
        Ok(written)
    }

    pub(super) fn write_rollup(
        &self,
        raw: &SegmentMeta,
        def: &RollupDef,
        input: &RollupInput<'_>,
    ) -> Result<Option<(SegmentMeta, Arc<SegmentReader>)>> {
        let Some(rows) = input.rows(def)? else {
            tracing::warn!(segment = %raw.id, rollup = def.name(), "a rollup sum overflows i64: no rollup segment for this segment, its queries read events");
            return Ok(None);
        };
        let schema = def.schema();
        let segment = self.write_derived(&schema, &rows, |id, summary| SegmentMeta {
            id,
            level: def.granularity().level(),
            min_ts: summary.min_ts,
            max_ts: summary.max_ts,
            rows: summary.rows,
            size_bytes: summary.size_bytes,
            created_ms: now_ms(),
            rollup: Some(def.to_ref()),
            source: Some(raw.id),
            erased_rows: 0,
            ..raw.clone()
        })?;
        Ok(Some(segment))
    }

    /// Writes `rows` of a derived table as a segment of `schema` (not yet
    /// synced into the directory, nor committed), described by `meta`.
    pub(super) fn write_derived(
        &self,
        schema: &Arc<SegmentSchema>,
        rows: &RecordBatch,
        meta: impl FnOnce(SegmentId, &SegmentSummary) -> SegmentMeta,
    ) -> Result<(SegmentMeta, Arc<SegmentReader>)> {
        let inner = &self.inner;
        let id = inner.manifest.allocate_segment_id()?;
        let path = inner.segments_dir.join(id.file_name());
        let opts = self.segment_options();
        let summary = write_columns(&path, schema, rows, &opts).inspect_err(|_| self.delete_segment_files(id))?;
        let reader = SegmentReader::open_as(id, &path, schema.clone())
            .inspect_err(|_| self.delete_segment_files(id))?
            .with_cache(inner.block_cache.clone());
        Ok((meta(id, &summary), Arc::new(reader)))
    }

    pub(super) fn write_job_segment(
        &self,
        job: &SealJob,
        output: &PipelineOutput,
    ) -> Result<(SegmentMeta, Arc<SegmentReader>)> {
        let inner = &self.inner;
        let id = inner.manifest.allocate_segment_id()?;
        let path = inner.segments_dir.join(id.file_name());
        // Only final segments get an id index: a provisional one is merged
        // and re-sealed as final when its bucket closes, and building the
        // index at every one of those writes would cost each seal as much
        // again (the newest day, still provisional, is scanned instead).
        let opts = self.segment_options();
        let opts = SegmentWriteOptions { id_index: opts.id_index && job.is_final, ..opts };
        let write = || -> Result<SegmentSummary> {
            let summary = write_segment(&path, &output.events, &opts)?;
            for sidecar in &output.sidecars {
                let path = inner.segments_dir.join(format!("{id}.{}", sidecar.suffix));
                let mut f = std::fs::File::create(&path).at(&path)?;
                std::io::Write::write_all(&mut f, &sidecar.bytes).at(&path)?;
                f.sync_all().at(&path)?;
            }
            sync_dir(&inner.segments_dir)?;
            Ok(summary)
        };
        // A failed write (the disk full, say) leaves no partial files behind
        // for the retries to pile up on.
        let summary = write().inspect_err(|_| self.delete_segment_files(id))?;
        failpoint::hit("seal_after_segment_write");
        failpoint::hit(&format!("{}_after_segment_write", job.kind.name()));
        let reader = Arc::new(SegmentReader::open(id, &path)?.with_cache(inner.block_cache.clone()));
        let max_lsn = job.replaces.iter().map(|m| m.max_lsn).chain([job.head.max_lsn()]).max().unwrap_or_default();
        let meta = SegmentMeta {
            id,
            level: Level::Raw,
            partition: job.partition,
            bucket_width_ms: inner.config.bucket_width_ms,
            min_ts: summary.min_ts,
            max_ts: summary.max_ts,
            rows: summary.rows,
            size_bytes: summary.size_bytes,
            tier: Tier::Local,
            attribution_version: inner.pipeline.rules_version(),
            is_final: job.is_final,
            max_lsn,
            created_ms: now_ms(),
            rollup: None,
            source: None,
            covers: Vec::new(),
            reprocess_job: job.reprocess_job,
            // Rewritten from the rows, every rollup with them: consistent again.
            erased_rows: 0,
        };
        Ok((meta, reader))
    }

    /// Commits to the catalog the source offsets of the records written so
    /// far, once they are durable: the WAL files about to be deleted may be
    /// the only place that holds them.
    fn keep_source_offsets(&self) -> Result<()> {
        let inner = &self.inner;
        let (offsets, lsn) = inner.offsets.lock().clone();
        if !inner.manifest.current().source_offsets.is_behind(&offsets) {
            return Ok(());
        }
        inner.wal.wait_written(lsn)?;
        let edit = CatalogEdit { source_offsets: Some(offsets), ..CatalogEdit::default() };
        let catalog = inner.manifest.commit(&edit)?;
        inner.visible.write().catalog = catalog;
        Ok(())
    }

    /// Deletes WAL files whose records are all in segments, and forgets
    /// seal watermarks that no retained record can need. Returns how many
    /// files it deleted.
    pub(super) fn truncate_wal(&self) -> Result<usize> {
        let inner = &self.inner;
        let keep_from = inner.visible.read().head.min_lsn().unwrap_or_else(|| inner.wal.next_lsn());
        if inner.wal.would_truncate(keep_from) {
            self.keep_source_offsets()?;
        }
        let deleted = inner.wal.truncate_before(keep_from)?;
        // Without fsync a deleted file may come back after a crash; keep the
        // watermarks then, so a resurrected record is still skipped.
        if deleted > 0 && inner.config.fsync {
            tracing::debug!(deleted, keep_from = %keep_from, "deleted sealed WAL files");
            let oldest_retained = inner.wal.first_lsn();
            let catalog = inner.manifest.current();
            if catalog.sealed.iter().any(|w| w.lsn < oldest_retained) {
                let edit = CatalogEdit { forget_sealed_below: Some(oldest_retained), ..CatalogEdit::default() };
                let catalog = inner.manifest.commit(&edit)?;
                inner.visible.write().catalog = catalog;
            }
        }
        Ok(deleted)
    }
}
