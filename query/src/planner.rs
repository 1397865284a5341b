//! Logical plan → physical plan: the scan request (time range and
//! dimension filters pushed into storage, only the columns still needed),
//! the residual filter the executor evaluates, and the source.
//!
//! Pushdown takes only top-level `AND` conjuncts:
//! - `ts op literal` (and BETWEEN, which binds to two of them) narrows the
//!   scan's time range; on `metrics`, whose `ts` is the minute bucket, the
//!   bound is translated to event time exactly
//!   (`floor_minute(t) >= x` ⇔ `t >= ceil_minute(x)`);
//! - `dim = 'v'`, `dim <> 'v'`, `dim [NOT] IN ('a', …)` on string columns
//!   become storage [`DimFilter`]s, answered by dictionaries and indexes.
//!
//! Pushed conjuncts leave the residual filter, because storage applies them
//! exactly (with SQL's NULL semantics).

use adstore_storage::{ColumnId, ColumnKind, DimFilter, ScanRequest, TimeRange};

use crate::bind::METRICS_BUCKET_MS;
use crate::expr::{BinOp, Expr};
use crate::plan::{LogicalPlan, ScanCol, Table};
use crate::source::{SourceChoice, choose};
use crate::time::TimeUnit;
use crate::types::{DataType, Scalar};

pub(crate) struct PhysicalPlan {
    pub logical: LogicalPlan,
    /// The advertisers whose rows the statement may see
    /// ([`crate::QueryOptions::advertisers`]); `None` for all.
    pub scope: Option<Vec<String>>,
    pub request: ScanRequest,
    /// The part of WHERE the executor evaluates (over `logical.scan_cols`).
    pub residual: Option<Expr>,
    pub source: SourceChoice,
}

#[recursive::recursive]
fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Bin(BinOp::And, a, b, _) => {
            conjuncts(*a, out);
            conjuncts(*b, out);
        }
        other => out.push(other),
    }
}

fn ceil_to(x: i64, w: i64) -> i64 {
    if x == i64::MIN || x == i64::MAX {
        return x;
    }
    let f = x.div_euclid(w) * w;
    if f == x { x } else { f.saturating_add(w) }
}

pub(crate) fn plan(mut logical: LogicalPlan, scope: Option<&[String]>) -> PhysicalPlan {
    let source = choose(&logical);
    let mut range = TimeRange::ALL;
    // A scope is the first filter storage applies, whatever the statement
    // says: rows of other advertisers never reach an expression. (Billing
    // rows are filtered the same way as they are read, `exec/billing.rs`.)
    let mut filters: Vec<DimFilter> = match (scope, logical.table) {
        (Some(advertisers), Table::Events | Table::Metrics) => {
            vec![DimFilter { column: ColumnId::AdvertiserId, values: advertisers.to_vec(), negated: false }]
        }
        _ => Vec::new(),
    };
    let mut residual = Vec::new();
    if let Some(f) = logical.filter.take() {
        let mut cs = Vec::new();
        conjuncts(f, &mut cs);
        for c in cs {
            if let Some((lo, hi, exact)) = time_bound(&c, &logical) {
                range.start_ms = range.start_ms.max(lo);
                range.end_ms = range.end_ms.min(hi);
                if !exact {
                    residual.push(c);
                }
            } else if let Some(df) = dim_filter(&c, &logical) {
                filters.push(df);
            } else {
                residual.push(c);
            }
        }
    }
    if range.start_ms > range.end_ms {
        range.end_ms = range.start_ms;
    }
    let residual = residual.into_iter().reduce(|a, b| Expr::Bin(BinOp::And, Box::new(a), Box::new(b), DataType::Bool));
    logical.filter = residual;
    // Keep only scan columns still read, renumbering slots.
    let mut used = vec![false; logical.scan_cols.len()];
    {
        let mut mark = |i: usize| {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
        };
        if let Some(f) = &logical.filter {
            f.visit_slots(&mut mark);
        }
        match &logical.aggregate {
            Some(a) => {
                a.keys.iter().for_each(|k| k.visit_slots(&mut mark));
                for s in &a.aggs {
                    if let Some(x) = &s.arg {
                        x.visit_slots(&mut mark);
                    }
                    if let Some(x) = &s.filter {
                        x.visit_slots(&mut mark);
                    }
                }
            }
            None => {
                logical.outputs.iter().for_each(|o| o.expr.visit_slots(&mut mark));
                logical.sort_exprs.iter().for_each(|e| e.visit_slots(&mut mark));
            }
        }
    }
    let mut remap = vec![usize::MAX; used.len()];
    let mut cols = Vec::new();
    for (i, u) in used.iter().enumerate() {
        if *u {
            remap[i] = cols.len();
            cols.push(logical.scan_cols[i]);
        }
    }
    let f = |i: usize| remap.get(i).copied().unwrap_or(usize::MAX);
    if let Some(x) = &mut logical.filter {
        x.map_slots(&f);
    }
    match &mut logical.aggregate {
        Some(a) => {
            a.keys.iter_mut().for_each(|k| k.map_slots(&f));
            for s in &mut a.aggs {
                if let Some(x) = &mut s.arg {
                    x.map_slots(&f);
                }
                if let Some(x) = &mut s.filter {
                    x.map_slots(&f);
                }
            }
        }
        None => {
            logical.outputs.iter_mut().for_each(|o| o.expr.map_slots(&f));
            logical.sort_exprs.iter_mut().for_each(|e| e.map_slots(&f));
        }
    }
    logical.scan_cols = cols;
    let columns = logical
        .scan_cols
        .iter()
        .filter_map(|c| match c {
            ScanCol::Event(c) => Some(*c),
            ScanCol::Final | ScanCol::Billing(_) => None,
        })
        .collect();
    let residual = logical.filter.clone();
    PhysicalPlan {
        request: ScanRequest { time_range: range, filters, columns },
        residual,
        source,
        logical,
        scope: scope.map(<[String]>::to_vec),
    }
}

fn slot_col(e: &Expr, plan: &LogicalPlan) -> Option<ColumnId> {
    match e {
        Expr::Slot(i, _) => match plan.scan_cols.get(*i) {
            Some(ScanCol::Event(c)) => Some(*c),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `e` is the table's `ts` column.
fn is_ts(e: &Expr, plan: &LogicalPlan) -> bool {
    match (plan.table, e) {
        (Table::Events, e) => slot_col(e, plan) == Some(ColumnId::Ts),
        (Table::Metrics, Expr::DateTrunc(TimeUnit::Minute, x)) => slot_col(x, plan) == Some(ColumnId::Ts),
        _ => false,
    }
}

/// `[lo, hi)` of event time implied by a `ts op literal` conjunct, and
/// whether the range says exactly what the conjunct says.
fn time_bound(c: &Expr, plan: &LogicalPlan) -> Option<(i64, i64, bool)> {
    let Expr::Bin(op, a, b, _) = c else { return None };
    let (op, lit) = if is_ts(a, plan) {
        (*op, b)
    } else if is_ts(b, plan) {
        (op.flip(), a)
    } else {
        return None;
    };
    let Expr::Lit(Scalar::Ts(v) | Scalar::Int(v), _) = lit.as_ref() else { return None };
    let v = *v;
    let (lo, hi) = match op {
        BinOp::Eq => (v, v.saturating_add(1)),
        BinOp::Gt => (v.saturating_add(1), i64::MAX),
        BinOp::GtEq => (v, i64::MAX),
        BinOp::Lt => (i64::MIN, v),
        BinOp::LtEq => (i64::MIN, v.saturating_add(1)),
        _ => return None,
    };
    // TimeRange treats an end of i64::MAX as inclusive, and saturation at
    // the extremes widens a bound: such conjuncts stay in the residual.
    let exact =
        !(hi == i64::MAX && matches!(op, BinOp::Lt | BinOp::LtEq | BinOp::Eq) && (op == BinOp::Lt || v != i64::MAX))
            && !(op == BinOp::Gt && v == i64::MAX);
    if plan.table == Table::Metrics {
        // floor_m(t) ∈ [lo, hi) ⇔ t ∈ [ceil_m(lo), ceil_m(hi))
        return Some((ceil_to(lo, METRICS_BUCKET_MS), ceil_to(hi, METRICS_BUCKET_MS), exact));
    }
    Some((lo, hi, exact))
}

fn dim_filter(c: &Expr, plan: &LogicalPlan) -> Option<DimFilter> {
    // String columns, and enum columns (`type`, `invalid_reason`) that SQL
    // compares by name: storage tests either on its stored codes.
    let string_col =
        |e: &Expr| slot_col(e, plan).filter(|c| c.spec().kind == ColumnKind::Str || c.enum_names().is_some());
    match c {
        Expr::Bin(op @ (BinOp::Eq | BinOp::NotEq), a, b, _) => {
            let (col, v) = match (string_col(a), string_col(b), a.as_ref(), b.as_ref()) {
                (Some(col), _, _, Expr::Lit(Scalar::Str(v), _)) => (col, v),
                (_, Some(col), Expr::Lit(Scalar::Str(v), _), _) => (col, v),
                _ => return None,
            };
            Some(DimFilter { column: col, values: vec![v.to_string()], negated: *op == BinOp::NotEq })
        }
        Expr::InList(x, values, negated) => {
            let col = string_col(x)?;
            let values = values
                .iter()
                .map(|v| match v {
                    Scalar::Str(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(DimFilter { column: col, values, negated: *negated })
        }
        _ => None,
    }
}
