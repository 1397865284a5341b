//! adstore-storage: where events live.
//!
//! ```text
//!  append ──► WAL (fsync, group commit) ──► head (per bucket × shard, in memory)
//!                                              │ seal (background)
//!                                              ▼
//!                          segments (immutable, mmap, columnar) + catalog
//!                                              │
//!  query ◄── snapshot (catalog + head chunks) ◄┘
//! ```
//!
//! This crate depends on no other adstore crate; `ingest`, `query` and
//! `server` depend on it, never the other way.

pub mod billing;
mod buffers;
pub mod erasure;
mod error;
mod event;
pub mod failpoint;
mod head;
pub mod hll;
pub mod iceberg;
mod idindex;
mod ids;
mod lookup;
mod manifest;
pub mod measure;
pub mod mirror;
pub mod offsets;
pub mod retention;
pub mod rollup;
mod scan;
mod seal;
mod segment;
mod store;
#[cfg(test)]
mod testutil;
pub mod tier;
pub mod time;
mod wal;

pub use buffers::{BufferPool, PooledBuf};
pub use error::{Result, StorageError, io_errors_total};
pub use event::{
    COLUMNS, ColumnId, ColumnKind, ColumnSpec, Event, EventBatch, EventBatchBuilder, EventType, InvalidReason,
    TimestampMs, batch_keys, event_schema, idempotency_key, shard_of,
};
pub use head::{HeadChunk, Indexed, Partitioning};
pub use idindex::{GRANULE_ROWS, ID_COLUMNS};
pub use ids::{Lsn, SegmentId};
pub use lookup::{Found, FoundEvent, MAX_LOOKUP_EVENTS};
pub use manifest::{Catalog, CatalogEdit, Level, PartitionKey, SealWatermark, SegmentMeta, Tier};
pub use scan::{
    BlockScan, CodeCounts, DimFilter, HeadScan, MAX_COUNT_CELLS, PruneReason, ScanBatch, ScanPlan, ScanRequest,
    ScanSource, SegmentScan, TimeRange, count_block, gather, scan_block, scan_head_chunk, scan_head_run,
};
pub use seal::{SealContext, SealKind, SealPipeline, SealStage, Sidecar, SidecarReader, StageOutput};
pub use segment::{
    BlockCache, ColumnData, ColumnDef, ColumnStats, Dictionary, MAX_SORT_COLUMNS, SegmentColumn, SegmentReader,
    SegmentSchema, SegmentSummary, SegmentWriteOptions, Selection, ValueRange, write_columns, write_segment,
};
pub use store::{
    Check, DamagedSegment, Difference, LiveSegment, PartlyStored, ReconcileReport, RollupStatus, Rows, SealReport,
    Snapshot, Store, StoreConfig, StoreStats, Task, TaskStats, TieringStatus, lock_data_dir,
};
pub use wal::{Wal, WalConfig, WalStats, decode_batch, encode_batch};
