//! Rollups: the measures of `metrics` pre-aggregated by a set of its
//! dimensions, per minute or per hour (the rollup's granularity), stored
//! as segments of their own schema.
//!
//! ```text
//!  seal: events of a partition ─► stages ─► raw segment
//!                                        └► per rollup: rows per minute (hour) ─► rollup segment ┐ one catalog
//!                                                                                               ┘ commit
//!  a re-seal (final, reprocess, compact) replaces the raw segment and its
//!  rollup segments together; removing a raw segment removes its rollups.
//! ```
//!
//! A rollup row is `(ts = minute (hour) start, the rollup's dimensions, one column
//! per summed measure, users)`, `users` being the HyperLogLog sketch of the
//! group's `user_key`s ([`crate::hll`]), NULL when none. Every rollup
//! segment names its raw segment (`SegmentMeta::source`) and its rollup's
//! name and dimensions (`SegmentMeta::rollup`), so it opens with the
//! schema it was written with whatever the configuration says now.
//!
//! A group whose sum does not fit an i64 (costs near `i64::MAX` sent on
//! purpose) cannot be stored: that raw segment then has no segment for the
//! rollup, and a query reads its events instead. Exact either way.

mod build;
mod def;
mod merge;

#[cfg(test)]
pub(crate) mod tests;

pub use build::RollupInput;
pub use def::{Granularity, RollupDef, RollupRef};
pub use merge::merge;
