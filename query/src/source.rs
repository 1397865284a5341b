//! Where a query's rows come from. `events` is always answered by scanning
//! raw events; `metrics` is answered by the cheapest source that covers the
//! query. Only the raw-events source exists today; minute / hour / day
//! rollups plug in here as further [`Source`] variants, each declaring
//! which queries it can answer exactly ([`candidates`]).

use crate::plan::{LogicalPlan, Table};

/// A physical source of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Scan raw events in segments and the head.
    EventsScan,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::EventsScan => "events",
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
        Table::Metrics => vec![SourceChoice {
            source: Source::EventsScan,
            reason: "no rollup covers this query (rollups are not built yet): aggregating raw events",
        }],
    }
}

pub(crate) fn choose(plan: &LogicalPlan) -> SourceChoice {
    candidates(plan)
        .into_iter()
        .next()
        .unwrap_or(SourceChoice { source: Source::EventsScan, reason: "fallback: raw events" })
}
