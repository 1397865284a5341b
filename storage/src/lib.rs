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

mod error;
mod event;
mod ids;
mod segment;

pub use error::{Result, StorageError};
pub use event::{
    COLUMNS, ColumnId, ColumnKind, ColumnSpec, Event, EventBatch, EventBatchBuilder, EventType, InvalidReason,
    TimestampMs, event_schema, shard_of,
};
pub use ids::{Lsn, SegmentId};
pub use segment::{
    ColumnData, ColumnStats, Dictionary, SegmentReader, SegmentSummary, SegmentWriteOptions, ValueRange, write_segment,
};
