//! Billing snapshots: the final numbers of a day per (advertiser,
//! campaign), written once the day is final and never changed after.
//!
//! ```text
//!  a final day (every raw segment final, its last bucket closed)
//!    ─► its raw events, segment by segment ─► rows per (day, advertiser, campaign)
//!    ─► no snapshot yet: version 1 ("final")
//!       numbers differ from the latest version: version n + 1 ("reprocess" with the job,
//!         or "late events"), the older versions kept
//!       numbers equal: the latest version records the raw segments it was checked against
//! ```
//!
//! A snapshot is a file `billing/{day}.v{version}.seg` in the segment
//! format (the rows of the `billing_daily` rollup definition: every summed
//! measure and the `users` sketch) and an entry in the catalog
//! ([`BillingSnapshot`]), committed together. Snapshots are read from raw
//! events rather than rollups, so they do not depend on which rollups are
//! configured, and `reconcile` can compare the two.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::hll::Hll;
use crate::ids::SegmentId;
use crate::measure::Measure;
use crate::rollup::{Granularity, RollupDef};
use crate::time::format_timestamp;

#[cfg(test)]
mod tests;

/// The directory of snapshot files, under the data directory.
pub const BILLING_DIR: &str = "billing";

/// Why a snapshot version was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The day became final: version 1.
    Final,
    /// A reprocess job re-sealed part of the day and changed its numbers.
    Reprocess,
    /// Events loaded late (a backfill) changed the day's numbers.
    LateEvents,
}

/// One version of one day's snapshot, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingSnapshot {
    /// Start of the UTC day, epoch ms.
    pub day_ms: i64,
    /// 1, 2, …: a new version when the day's final numbers change.
    pub version: u32,
    pub rows: u64,
    pub size_bytes: u64,
    pub created_ms: i64,
    pub cause: Cause,
    /// The reprocess job whose re-seal changed the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocess_job: Option<u64>,
    /// The attribution rules version of the day's raw segments.
    pub rules_version: u32,
    /// The raw segments of the day the numbers were last checked against.
    pub basis: Vec<SegmentId>,
}

impl BillingSnapshot {
    /// The snapshot file's path under `data_dir`.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        file_path(data_dir, self.day_ms, self.version)
    }
}

pub(crate) fn file_path(data_dir: &Path, day_ms: i64, version: u32) -> PathBuf {
    data_dir.join(BILLING_DIR).join(format!("{}.v{version}.seg", day_name(day_ms)))
}

/// `2026-11-22` for the day starting at `day_ms`.
pub fn day_name(day_ms: i64) -> String {
    format_timestamp(day_ms).chars().take(10).collect()
}

/// The rows a snapshot holds: the `billing_daily` rollup, per day.
pub fn definition() -> RollupDef {
    // Invariant: both are dimensions of metrics and the name is valid.
    RollupDef::new("billing_daily", &["advertiser_id", "campaign_id"])
        .expect("the billing definition is valid")
        .with_granularity(Granularity::Day)
}

/// The rows of snapshot `entry`, from its file under `data_dir`.
pub(crate) fn read(data_dir: &Path, entry: &BillingSnapshot) -> Result<RecordBatch> {
    // Snapshot files are not segments of the catalog: no id, no cache.
    let reader =
        crate::segment::SegmentReader::open_as(SegmentId(u64::MAX), &entry.path(data_dir), definition().schema())?;
    reader.read_record_batch()
}

/// One row of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillingRow {
    pub advertiser_id: String,
    pub campaign_id: String,
    /// Every summed measure, in [`Measure::sums`] order, by name.
    pub measures: Vec<(&'static str, i64)>,
    /// Estimated distinct users (HyperLogLog), 0 when none.
    pub users: i64,
}

fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StorageError::Internal(format!("billing rows without a {name} column")))
}

/// The rows of a snapshot batch, sorted by advertiser and campaign.
pub fn rows_of(batch: &RecordBatch) -> Result<Vec<BillingRow>> {
    let adv = column::<StringArray>(batch, "advertiser_id")?;
    let camp = column::<StringArray>(batch, "campaign_id")?;
    let sums =
        Measure::sums().map(|m| Ok((m.name(), column::<Int64Array>(batch, m.name())?))).collect::<Result<Vec<_>>>()?;
    let users = column::<BinaryArray>(batch, "users")?;
    let mut rows = (0..batch.num_rows())
        .map(|r| {
            let users = if users.is_valid(r) {
                Hll::from_bytes(users.value(r))
                    .map_err(|e| StorageError::Internal(format!("a billing users sketch does not decode: {e}")))?
                    .estimate()
            } else {
                0
            };
            Ok(BillingRow {
                advertiser_id: adv.value(r).to_string(),
                campaign_id: camp.value(r).to_string(),
                measures: sums.iter().map(|(name, col)| (*name, col.value(r))).collect(),
                users,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    rows.sort_by(|a, b| (&a.advertiser_id, &a.campaign_id).cmp(&(&b.advertiser_id, &b.campaign_id)));
    Ok(rows)
}

/// A snapshot's numbers by (advertiser, campaign): sums and sketch.
pub(crate) type Numbers = BTreeMap<(String, String), (Vec<i64>, Option<Vec<u8>>)>;

/// A snapshot batch's numbers, to tell whether two versions differ.
pub(crate) fn numbers(batch: &RecordBatch) -> Result<Numbers> {
    let adv = column::<StringArray>(batch, "advertiser_id")?;
    let camp = column::<StringArray>(batch, "campaign_id")?;
    let sums = Measure::sums().map(|m| column::<Int64Array>(batch, m.name())).collect::<Result<Vec<_>>>()?;
    let users = column::<BinaryArray>(batch, "users")?;
    Ok((0..batch.num_rows())
        .map(|r| {
            let key = (adv.value(r).to_string(), camp.value(r).to_string());
            let sketch = users.is_valid(r).then(|| users.value(r).to_vec());
            (key, (sums.iter().map(|c| c.value(r)).collect(), sketch))
        })
        .collect())
}

/// The rows of `batch` whose advertiser is one of `advertisers`.
pub fn rows_for(batch: &RecordBatch, advertisers: &[String]) -> Result<RecordBatch> {
    let ids = column::<StringArray>(batch, "advertiser_id")?;
    let keep: arrow_array::BooleanArray =
        ids.iter().map(|id| Some(id.is_some_and(|id| advertisers.iter().any(|a| a == id)))).collect();
    arrow_select::filter::filter_record_batch(batch, &keep).map_err(|e| StorageError::Internal(e.to_string()))
}

/// One day's snapshot versions (`day`, in version order) as a caller who
/// sees only `advertisers` sees them, with their rows read by `read`:
/// the others' rows removed; a version that changed none of the caller's
/// rows left out (it would repeat the one before); the rest numbered 1, 2,
/// … in order, with their own row counts and no basis; no version at all
/// until one holds a row of theirs. Nothing in the answer depends on other
/// advertisers' events.
pub fn as_seen_by(
    day: &[BillingSnapshot],
    read: impl Fn(&BillingSnapshot) -> Result<RecordBatch>,
    advertisers: &[String],
) -> Result<Vec<(BillingSnapshot, RecordBatch)>> {
    let mut out: Vec<(BillingSnapshot, RecordBatch)> = Vec::new();
    let mut last: Option<Numbers> = None;
    for entry in day {
        let rows = rows_for(&read(entry)?, advertisers)?;
        let seen = numbers(&rows)?;
        let unchanged = match &last {
            Some(last) => *last == seen,
            None => seen.is_empty(),
        };
        if unchanged {
            continue;
        }
        let version = u32::try_from(out.len() + 1).unwrap_or(u32::MAX);
        let entry = BillingSnapshot {
            version,
            rows: rows.num_rows() as u64,
            size_bytes: 0,
            basis: Vec::new(),
            ..entry.clone()
        };
        last = Some(seen);
        out.push((entry, rows));
    }
    Ok(out)
}
