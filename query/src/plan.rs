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
    /// Billing snapshots of final days: one row per (day, advertiser,
    /// campaign, version).
    BillingDaily,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Metrics => "metrics",
            Table::BillingDaily => "billing_daily",
        }
    }
}

/// A column of `billing_daily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BillingCol {
    /// Start of the day (UTC).
    Day,
    AdvertiserId,
    CampaignId,
    /// The snapshot version (1, 2, …).
    Version,
    /// A summed measure of `metrics`.
    Sum(Measure),
    /// Estimated distinct users.
    Users,
}

impl BillingCol {
    /// Every column, in table order.
    pub(crate) fn all() -> Vec<BillingCol> {
        let mut cols = vec![BillingCol::Day, BillingCol::AdvertiserId, BillingCol::CampaignId, BillingCol::Version];
        cols.extend(Measure::sums().map(BillingCol::Sum));
        cols.push(BillingCol::Users);
        cols
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            BillingCol::Day => "day",
            BillingCol::AdvertiserId => "advertiser_id",
            BillingCol::CampaignId => "campaign_id",
            BillingCol::Version => "version",
            BillingCol::Sum(m) => m.name(),
            BillingCol::Users => "users",
        }
    }

    pub(crate) fn ty(self) -> DataType {
        match self {
            BillingCol::Day => DataType::Timestamp,
            BillingCol::AdvertiserId | BillingCol::CampaignId => DataType::Str,
            BillingCol::Version | BillingCol::Sum(_) | BillingCol::Users => DataType::Int,
        }
    }
}

/// A column a scan delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanCol {
    Event(ColumnId),
    /// Whether the row's bucket is final: per segment, false in the head.
    Final,
    /// A column of `billing_daily`.
    Billing(BillingCol),
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
    /// On `billing_daily`: every snapshot version (WHERE names `version`),
    /// not only the latest of each day.
    pub all_versions: bool,
    pub explain: bool,
    /// `SELECT` without `FROM`: one row of constant outputs, nothing read.
    pub no_from: bool,
    pub scan_cols: Vec<ScanCol>,
    pub filter: Option<Expr>,
    pub aggregate: Option<Aggregate>,
    pub outputs: Vec<Output>,
    pub sort_exprs: Vec<Expr>,
    pub order: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}
