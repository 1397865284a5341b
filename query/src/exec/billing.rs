//! `billing_daily` from the billing snapshot files: one task per snapshot
//! version read (the latest of each day, or every version when WHERE names
//! `version`), each a batch of its rows over the plan's scan slots.

use std::borrow::Cow;

use adstore_storage::Snapshot;
use adstore_storage::billing::{self, BillingSnapshot};
use adstore_storage::hll::Hll;
use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};

use crate::error::{QueryError, Result};
use crate::expr::{Batch, Vector};
use crate::plan::{BillingCol, ScanCol, Table};
use crate::planner::PhysicalPlan;
use crate::types::Scalar;

/// A snapshot version a plan reads: the catalog's entry, or for a scoped
/// plan the version as its caller sees it with its rows already read.
pub(crate) struct Billed {
    pub entry: BillingSnapshot,
    rows: Option<RecordBatch>,
}

/// The snapshot versions a plan reads: none unless it queries
/// `billing_daily`; the latest of each day, or every version when WHERE
/// names `version`. A scoped plan sees each day through
/// [`billing::as_seen_by`]: only the versions that changed its rows.
pub(crate) fn entries(snapshot: &Snapshot, plan: &PhysicalPlan) -> Result<Vec<Billed>> {
    if plan.logical.table != Table::BillingDaily {
        return Ok(Vec::new());
    }
    // The catalog keeps them sorted by (day, version).
    let days = snapshot.catalog.billing.chunk_by(|a, b| a.day_ms == b.day_ms);
    let mut out = Vec::new();
    for day in days {
        let versions: Vec<Billed> = match &plan.scope {
            None => day.iter().map(|e| Billed { entry: e.clone(), rows: None }).collect(),
            Some(advertisers) => billing::as_seen_by(day, |e| snapshot.billing_batch(e), advertisers)?
                .into_iter()
                .map(|(entry, rows)| Billed { entry, rows: Some(rows) })
                .collect(),
        };
        match plan.logical.all_versions {
            true => out.extend(versions),
            false => out.extend(versions.into_iter().last()),
        }
    }
    Ok(out)
}

fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| QueryError::Internal(format!("a billing snapshot has no {name} column")))
}

/// The rows of snapshot version `billed` over the plan's scan slots.
pub(crate) fn batch(snapshot: &Snapshot, billed: &Billed, plan: &PhysicalPlan) -> Result<Batch<'static>> {
    let entry = &billed.entry;
    let rows = match (&billed.rows, &plan.scope) {
        (Some(rows), _) => rows.clone(),
        (None, None) => snapshot.billing_batch(entry)?,
        (None, Some(_)) => return Err(QueryError::Internal("a scoped billing read without its rows".into())),
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

/// What a `billing_daily` query read: e.g. `billing snapshots (3 days, 4 versions)`.
pub(crate) fn describe(entries: &[Billed]) -> String {
    let mut days: Vec<i64> = entries.iter().map(|b| b.entry.day_ms).collect();
    days.dedup();
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "billing snapshots ({}, {})",
        plural(days.len(), "day", "days"),
        plural(entries.len(), "version", "versions")
    )
}
