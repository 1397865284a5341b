//! The seal pipeline: what happens to a head partition's events between the
//! head and a segment file.
//!
//! ```text
//!   head chunks ─► concat ─► stage 1 ─► stage 2 ─► … ─► write segment ─► catalog
//!                           (dedupe)  (attribution, invalid traffic, rollups …)
//! ```
//!
//! Stages are the extension point for the exactly-once and rollup work:
//! each receives the events being sealed and a [`SealContext`] with the
//! sealed segments visible when the seal started (for lookups across
//! buckets), and returns the events to store. A stage may drop rows
//! (duplicates) and fill derived columns (`attributed`, `attributed_to`,
//! `invalid_reason`). Stages run off the ingest path, on the sealer thread.

use std::sync::Arc;

use crate::error::Result;
use crate::event::EventBatch;
use crate::manifest::PartitionKey;
use crate::store::Snapshot;

/// What a stage knows about the seal it runs in.
pub struct SealContext<'a> {
    pub partition: PartitionKey,
    pub bucket_width_ms: i64,
    /// The store as it was when the seal started: sealed segments and head.
    pub snapshot: &'a Snapshot,
    /// True when the bucket has closed and this seal produces final data.
    pub is_final: bool,
}

/// One step of the seal pipeline.
pub trait SealStage: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &str;

    /// Transforms the events of one partition before they are written.
    ///
    /// # Errors
    /// An error aborts this seal: nothing is written, the events stay in the
    /// head, and the seal is retried on the next tick.
    fn apply(&self, ctx: &SealContext<'_>, events: EventBatch) -> Result<EventBatch>;
}

/// The ordered list of stages a store runs at every seal. Empty by default:
/// events are stored as they arrived.
#[derive(Clone, Default)]
pub struct SealPipeline {
    stages: Vec<Arc<dyn SealStage>>,
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

    pub fn run(&self, ctx: &SealContext<'_>, mut events: EventBatch) -> Result<EventBatch> {
        for stage in &self.stages {
            events = stage.apply(ctx, events)?;
        }
        Ok(events)
    }
}
