//! `billing_daily` from the billing snapshot files: one task per snapshot
//! version read (the latest of each day, or every version when WHERE names
//! `version`), each a batch of its rows over the plan's scan slots.

use std::borrow::Cow;

use adstore_storage::Snapshot;
use adstore_storage::billing::BillingSnapshot;
use adstore_storage::hll::Hll;
use arrow_array::{Array, BinaryArray, BooleanArray, Int64Array, RecordBatch, StringArray};

use crate::error::{QueryError, Result};
use crate::expr::{Batch, Vector};
use crate::plan::{BillingCol, ScanCol, Table};
use crate::planner::PhysicalPlan;
use crate::types::Scalar;

/// The snapshot versions a plan reads: none unless it queries
/// `billing_daily`.
pub(crate) fn entries<'s>(snapshot: &'s Snapshot, plan: &PhysicalPlan) -> Vec<&'s BillingSnapshot> {
    if plan.logical.table != Table::BillingDaily {
        return Vec::new();
    }
    let all = &snapshot.catalog.billing;
    if plan.logical.all_versions {
        return all.iter().collect();
    }
    // The catalog keeps them sorted by (day, version): the last of each day.
    all.iter()
        .enumerate()
        .filter(|(i, b)| all.get(i + 1).is_none_or(|next| next.day_ms != b.day_ms))
        .map(|(_, b)| b)
        .collect()
}

fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| QueryError::Internal(format!("a billing snapshot has no {name} column")))
}

/// The rows of snapshot `entry` over the plan's scan slots.
pub(crate) fn batch(snapshot: &Snapshot, entry: &BillingSnapshot, plan: &PhysicalPlan) -> Result<Batch<'static>> {
    let rows = snapshot.billing_batch(entry)?;
    let rows = match &plan.scope {
        Some(advertisers) => in_scope(&rows, advertisers)?,
        None => rows,
    };
    let n = rows.num_rows();
    let ints = |name: &str| -> Result<Vector<'static>> {
        Ok(Vector::Int(Cow::Owned(column::<Int64Array>(&rows, name)?.values().to_vec()), None))
    };
    let cols = plan
        .logical
        .scan_cols
        .iter()
        .map(|c| match c {
            ScanCol::Billing(BillingCol::Day) => ints("ts"),
            ScanCol::Billing(BillingCol::Version) => Ok(Vector::Const(Scalar::Int(i64::from(entry.version)))),
            ScanCol::Billing(BillingCol::Sum(m)) => ints(m.name()),
            ScanCol::Billing(c @ (BillingCol::AdvertiserId | BillingCol::CampaignId)) => {
                Ok(Vector::Plain(column::<StringArray>(&rows, c.name())?.clone()))
            }
            ScanCol::Billing(BillingCol::Users) => {
                let sketches = column::<BinaryArray>(&rows, "users")?;
                let estimates = (0..n)
                    .map(|i| {
                        if sketches.is_null(i) {
                            return Ok(0);
                        }
                        Hll::from_bytes(sketches.value(i))
                            .map(|h| h.estimate())
                            .map_err(|e| QueryError::Internal(format!("a billing users sketch does not decode: {e}")))
                    })
                    .collect::<Result<Vec<i64>>>()?;
                Ok(Vector::Int(Cow::Owned(estimates), None))
            }
            ScanCol::Event(_) | ScanCol::Final => {
                Err(QueryError::Internal("billing_daily read with an events column".into()))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch { rows: n, cols, ts_bounds: None })
}

/// The rows of a snapshot whose advertiser is one of `advertisers`: the
/// statement's expressions never see the others.
fn in_scope(rows: &RecordBatch, advertisers: &[String]) -> Result<RecordBatch> {
    let ids = column::<StringArray>(rows, "advertiser_id")?;
    let keep: BooleanArray =
        ids.iter().map(|id| Some(id.is_some_and(|id| advertisers.iter().any(|a| a == id)))).collect();
    arrow_select::filter::filter_record_batch(rows, &keep).map_err(QueryError::Arrow)
}

/// What a `billing_daily` query read: e.g. `billing snapshots (3 days, 4 versions)`.
pub(crate) fn describe(entries: &[&BillingSnapshot]) -> String {
    let mut days: Vec<i64> = entries.iter().map(|b| b.day_ms).collect();
    days.dedup();
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "billing snapshots ({}, {})",
        plural(days.len(), "day", "days"),
        plural(entries.len(), "version", "versions")
    )
}
