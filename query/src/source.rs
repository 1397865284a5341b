//! Where a query's rows come from. `events` is always answered by scanning
//! raw events; `metrics` by rollups (day, hour or minute rows) where one covers the query's
//! dimensions, and raw events elsewhere (the head, segments sealed before a
//! rollup existed): the executor decides segment by segment
//! (`exec/rollup.rs`), and EXPLAIN and the stats say what it read.

use crate::plan::{LogicalPlan, Table};

/// A physical source of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Scan raw events in segments and the head.
    EventsScan,
    /// Rollup segments where they cover the query, raw events
    /// elsewhere.
    Rollups,
    /// Billing snapshot files.
    Billing,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::EventsScan => "events",
            Source::Rollups => "rollups",
            Source::Billing => "billing snapshots",
        }
    }
}

/// The source chosen for a query, and why.
#[derive(Debug, Clone)]
pub(crate) struct SourceChoice {
    pub source: Source,
    pub reason: &'static str,
}

/// Every source able to answer `plan` exactly, cheapest first.
fn candidates(plan: &LogicalPlan) -> Vec<SourceChoice> {
    match plan.table {
        Table::Events => vec![SourceChoice { source: Source::EventsScan, reason: "table events" }],
        Table::BillingDaily => vec![SourceChoice {
            source: Source::Billing,
            reason: "the snapshot of each final day (every version when WHERE names version)",
        }],
        Table::Metrics => vec![SourceChoice {
            source: Source::Rollups,
            reason: "rollups covering the query's dimensions, by day, hour or minute; raw events for the head and segments without one",
        }],
    }
}

pub(crate) fn choose(plan: &LogicalPlan) -> SourceChoice {
    candidates(plan)
        .into_iter()
        .next()
        .unwrap_or(SourceChoice { source: Source::EventsScan, reason: "fallback: raw events" })
}
