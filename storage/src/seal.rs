//! The seal pipeline: what happens to a head partition's events between the
//! head and a segment file.
//!
//! ```text
//!   head chunks ─► concat ─► stage 1 ─► stage 2 ─► … ─► write segment + sidecars ─► catalog commit
//!                           (exactly-once: dedupe, attribution, invalid traffic; rollups …)
//!                                                                         │
//!                                              stage.committed() ◄────────┘  (or stage.aborted())
//! ```
//!
//! Stages are the extension point for the exactly-once and rollup work.
//! Each receives the events being sealed and a [`SealContext`] (which
//! partition, what kind of seal, the store as it was when the seal started)
//! and returns the events to store plus optional **sidecar** files, kept
//! beside the segment (`{segment id}.{suffix}`), written and fsynced before
//! the catalog commit and deleted with the segment. Sidecars let a stage
//! rebuild its in-memory state at the next open ([`SealStage::recover`])
//! without rescanning segment data.
//!
//! The same pipeline runs again over already-sealed events when a bucket
//! closes ([`SealKind::Final`]) or when rules change ([`SealKind::Reprocess`]);
//! stages must then recompute derived columns from scratch. A head
//! partition of a bucket that has closed before its first seal is sealed
//! final at once ([`SealContext::is_final`] with [`SealKind::Seal`]) when
//! every stage agrees ([`SealStage::first_seal_final`]).

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::event::EventBatch;
use crate::ids::SegmentId;
use crate::manifest::{PartitionKey, SegmentMeta};
use crate::store::Snapshot;

/// Why the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealKind {
    /// Head events become a segment for the first time: provisional, or
    /// final at once when the bucket has closed and has no segment yet.
    Seal,
    /// A closed bucket's segments are re-sealed with complete data (final).
    Final,
    /// Segments are re-sealed under the current rules (reprocessing).
    Reprocess,
    /// A partition's small provisional segments are merged into one before
    /// its bucket closes (current rules, still provisional).
    Compact,
}

impl SealKind {
    /// Its name in logs and fail points: `seal`, `final`, `reprocess`, `compact`.
    pub fn name(self) -> &'static str {
        match self {
            SealKind::Seal => "seal",
            SealKind::Final => "final",
            SealKind::Reprocess => "reprocess",
            SealKind::Compact => "compact",
        }
    }
}

/// What a stage knows about the seal it runs in.
pub struct SealContext<'a> {
    pub partition: PartitionKey,
    pub bucket_width_ms: i64,
    pub kind: SealKind,
    /// The store as it was when the seal started: sealed segments and head.
    pub snapshot: &'a Snapshot,
    /// True when the output is final (the bucket has closed).
    pub is_final: bool,
    /// Segments this seal replaces (empty for [`SealKind::Seal`]).
    pub replaces: &'a [SegmentMeta],
}

/// A file a stage stores beside a segment.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// File name suffix, e.g. `keys` for `0000000000000007.keys`. ASCII letters only.
    pub suffix: &'static str,
    pub bytes: Vec<u8>,
}

/// What a stage returns.
pub struct StageOutput {
    pub events: EventBatch,
    pub sidecars: Vec<Sidecar>,
}

impl StageOutput {
    pub fn events(events: EventBatch) -> StageOutput {
        StageOutput { events, sidecars: Vec::new() }
    }
}

/// Reads the sidecar files of live segments (at open, and for stages that
/// need older state again, e.g. a re-seal of an old bucket).
#[derive(Debug, Clone)]
pub struct SidecarReader {
    pub(crate) segments_dir: PathBuf,
}

impl SidecarReader {
    /// The sidecar `suffix` of segment `id`, or `None` if it was never written.
    pub fn read(&self, id: SegmentId, suffix: &str) -> Result<Option<Vec<u8>>> {
        let path = self.segments_dir.join(format!("{id}.{suffix}"));
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }
}

/// One step of the seal pipeline.
pub trait SealStage: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &str;

    /// Version of the rules this stage applies (recorded on segments as
    /// `attribution_version`). Default 0.
    fn rules_version(&self) -> u32 {
        0
    }

    /// Rebuilds in-memory state when the store opens, from the recovered
    /// snapshot (segments and replayed head) and the sidecars this stage
    /// wrote. Called once, before any seal.
    ///
    /// # Errors
    /// An error fails `Store::open`.
    fn recover(&self, _snapshot: &Snapshot, _sidecars: &SidecarReader) -> Result<()> {
        Ok(())
    }

    /// Whether a first seal of the closed bucket starting at
    /// `bucket_start_ms` may be final at once: everything this stage would
    /// read when re-sealing the bucket at its closing is at hand (no state
    /// to read back from older segments, which may be in the object
    /// store). If a stage says no, the seal is provisional and
    /// finalization re-seals it. Default true.
    fn first_seal_final(&self, _bucket_start_ms: i64) -> bool {
        true
    }

    /// Transforms the events of one partition before they are written.
    ///
    /// # Errors
    /// An error aborts the seal pass from the group of partitions (at most
    /// `seal_max_rows` rows, committed together) it happened in: nothing
    /// of that group is committed, its events stay where they were,
    /// [`SealStage::aborted`] is called for every partition of the group
    /// this stage already processed, and the rest is retried on the next
    /// tick. Groups committed before stay committed.
    fn apply(&self, ctx: &SealContext<'_>, events: EventBatch) -> Result<StageOutput>;

    /// The catalog commit that made `events` (this stage's output) visible
    /// has landed.
    fn committed(&self, _ctx: &SealContext<'_>, _events: &EventBatch) {}

    /// The seal pass that `apply` produced `events` for was abandoned.
    fn aborted(&self, _ctx: &SealContext<'_>, _events: &EventBatch) {}

    /// An erasure removed the identity of `user_key`'s events, none newer
    /// than `max_ts`: state kept from before (in memory) must not link
    /// later events to them.
    fn erased(&self, _user_key: &str, _max_ts: i64) {}
}

/// The ordered list of stages a store runs at every seal. Empty by default:
/// events are stored as they arrived.
#[derive(Clone, Default)]
pub struct SealPipeline {
    stages: Vec<Arc<dyn SealStage>>,
}

/// The pipeline's output for one partition: final events, all sidecars, and
/// what each stage produced (for the commit/abort callbacks).
pub(crate) struct PipelineOutput {
    pub events: EventBatch,
    pub sidecars: Vec<Sidecar>,
    pub per_stage: Vec<EventBatch>,
}

impl SealPipeline {
    pub fn new() -> SealPipeline {
        SealPipeline::default()
    }

    pub fn with_stage(mut self, stage: Arc<dyn SealStage>) -> SealPipeline {
        self.stages.push(stage);
        self
    }

    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    pub(crate) fn rules_version(&self) -> u32 {
        self.stages.iter().map(|s| s.rules_version()).max().unwrap_or(0)
    }

    pub(crate) fn first_seal_final(&self, bucket_start_ms: i64) -> bool {
        self.stages.iter().all(|s| s.first_seal_final(bucket_start_ms))
    }

    pub(crate) fn recover(&self, snapshot: &Snapshot, sidecars: &SidecarReader) -> Result<()> {
        self.stages.iter().try_for_each(|s| s.recover(snapshot, sidecars))
    }

    pub(crate) fn run(&self, ctx: &SealContext<'_>, mut events: EventBatch) -> Result<PipelineOutput> {
        let mut sidecars = Vec::new();
        let mut per_stage = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            match stage.apply(ctx, events) {
                Ok(out) => {
                    events = out.events;
                    sidecars.extend(out.sidecars);
                    per_stage.push(events.clone());
                }
                Err(e) => {
                    self.aborted_upto(ctx, &per_stage, i);
                    return Err(e);
                }
            }
        }
        Ok(PipelineOutput { events, sidecars, per_stage })
    }

    pub(crate) fn committed(&self, ctx: &SealContext<'_>, per_stage: &[EventBatch]) {
        for (stage, events) in self.stages.iter().zip(per_stage) {
            stage.committed(ctx, events);
        }
    }

    pub(crate) fn erased(&self, user_key: &str, max_ts: i64) {
        self.stages.iter().for_each(|s| s.erased(user_key, max_ts));
    }

    pub(crate) fn aborted(&self, ctx: &SealContext<'_>, per_stage: &[EventBatch]) {
        self.aborted_upto(ctx, per_stage, per_stage.len());
    }

    fn aborted_upto(&self, ctx: &SealContext<'_>, per_stage: &[EventBatch], n: usize) {
        for (stage, events) in self.stages.iter().zip(per_stage).take(n) {
            stage.aborted(ctx, events);
        }
    }
}
