//! The logical plan: what a query asks for, after name resolution and
//! typing, before any decision about how to read it.
//!
//! ```text
//!  scan (table, scan_cols) ─► filter ─► [aggregate: keys, aggs ─► having] ─► outputs ─► order ─► offset/limit
//! ```
//!
//! Expressions before the aggregate read scan slots (`scan_cols`);
//! expressions after it read post slots: group keys first, then aggregates.

use adstore_storage::ColumnId;
use adstore_storage::measure::Measure;

use crate::expr::Expr;
use crate::types::DataType;

/// A table of DESIGN.md §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per event.
    Events,
    /// Pre-aggregated measures by dimension and minute bucket.
    Metrics,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Metrics => "metrics",
        }
    }
}

/// A column a scan delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanCol {
    Event(ColumnId),
    /// Whether the row's bucket is final: per segment, false in the head.
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFunc {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
    ApproxDistinct,
}

/// One aggregate: `func(arg) FILTER (WHERE filter)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AggSpec {
    pub func: AggFunc,
    pub arg: Option<Expr>,
    pub filter: Option<Expr>,
    /// On `metrics`: the measure this aggregate reads (`sum(m)`, or
    /// `approx_count_distinct(users)`). `arg` is its expression over
    /// events; a rollup reads the measure's column instead.
    pub measure: Option<Measure>,
}

impl AggSpec {
    pub(crate) fn result_type(&self) -> DataType {
        match self.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::CountDistinct | AggFunc::ApproxDistinct => DataType::Int,
            AggFunc::Avg => DataType::Float,
            AggFunc::Sum | AggFunc::Min | AggFunc::Max => self.arg.as_ref().map_or(DataType::Null, Expr::ty),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Aggregate {
    pub keys: Vec<Expr>,
    pub aggs: Vec<AggSpec>,
    pub having: Option<Expr>,
}

/// What an ORDER BY key sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SortTarget {
    Output(usize),
    /// An expression that is not an output column (`LogicalPlan::sort_exprs`).
    Extra(usize),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SortKey {
    pub target: SortTarget,
    pub desc: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub name: String,
    pub expr: Expr,
}

#[derive(Debug, Clone)]
pub(crate) struct LogicalPlan {
    pub table: Table,
    pub explain: bool,
    pub scan_cols: Vec<ScanCol>,
    pub filter: Option<Expr>,
    pub aggregate: Option<Aggregate>,
    pub outputs: Vec<Output>,
    pub sort_exprs: Vec<Expr>,
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}
