//! adstore-ingest: from request bodies to valid, typed event batches.
//!
//! ```text
//!  HTTP body (NDJSON / JSON array / Arrow IPC) ──► parse ──► EventBatch (valid rows) + per-line errors
//!                                                   │
//!                                                   ▼
//!                                  server: dedupe, WAL append (adstore-storage)
//! ```
//!
//! It holds the parser and validator of DESIGN.md §1 and §5
//! ([`parse_ndjson`], [`parse_json_array`], [`parse_arrow_ipc`]), the dedupe
//! index ([`DedupeIndex`]), the exactly-once seal stage with attribution and
//! invalid-traffic rules ([`ExactlyOnce`]), and the log of duplicate
//! arrivals the event trace reads ([`DuplicateLog`]).
//!
//! Dependencies point one way: this crate depends on `adstore-storage` for
//! the event model and must never depend on `adstore-query` or
//! `adstore-server`.

mod arrow;
mod dedupe;
mod duplicates;
mod error;
mod exactly_once;
mod parse;

pub use arrow::parse_arrow_ipc;
pub use dedupe::{
    DedupeConfig, DedupeIndex, DedupeStats, Flight, Hold, SpilledStats, TableResize, batch_keys, idempotency_key,
};
pub use duplicates::{
    Arrival, DUPLICATES_DIR, DuplicateLog, DuplicateLogStats, DuplicateStage, Duplicates,
    MAX_LISTED as MAX_DUPLICATES_LISTED,
};
pub use error::IngestError;
pub use exactly_once::{AttributionPartStats, AttributionRules, ExactlyOnce, ExactlyOnceStats, IngestSummary};
pub use parse::rfc3339::parse_ms as parse_rfc3339_ms;
pub use parse::validate::{MAX_EVENT_ID_BYTES, MAX_STR_BYTES};
pub use parse::{LineError, ParseOptions, ParseOutcome, parse_json_array, parse_ndjson};
