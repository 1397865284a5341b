//! The billing task: a snapshot of every final day, a new version when its
//! final numbers change (see [`crate::billing`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{SealReport, Store, now_ms};
use crate::billing::{self as snapshots, BillingRow, BillingSnapshot, Cause};
use crate::error::{IoContext, Result, StorageError};
use crate::ids::SegmentId;
use crate::manifest::{Catalog, CatalogEdit, Level, SegmentMeta, Tier, sync_dir};
use crate::rollup::{RollupInput, merge};
use crate::segment::write_columns;

/// Days a pass snapshots at most, so seals keep their pace.
const DAYS_PER_PASS: usize = 2;

/// Files under `billing/` that no catalog entry names: left by a pass that
/// stopped between writing and committing.
pub(super) fn remove_orphans(data_dir: &Path, catalog: &Catalog) -> Result<Vec<PathBuf>> {
    let dir = data_dir.join(snapshots::BILLING_DIR);
    let live: BTreeSet<PathBuf> = catalog.billing.iter().map(|b| b.path(data_dir)).collect();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let path = entry.at(&dir)?.path();
        if !live.contains(&path) && path.is_file() {
            std::fs::remove_file(&path).at(&path)?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(&dir)?;
    }
    Ok(removed)
}

impl Store {
    /// One pass of the billing task: snapshots the final days whose raw
    /// segments changed since their latest snapshot was checked (or that
    /// have none), at most `DAYS_PER_PASS` of them.
    pub fn snapshot_billing(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let snapshot = self.snapshot();
        let catalog = &snapshot.catalog;
        let skipped = self.inner.billing_skipped.lock().clone();
        let due: Vec<(i64, Vec<&SegmentMeta>)> = self
            .final_days(catalog.segments_of(Level::Raw))
            .into_iter()
            .filter(|(day, raws)| {
                let basis: Vec<SegmentId> = raws.iter().map(|m| m.id).collect();
                // Retention deletes raw events only once their day is snapshotted.
                let local = raws.iter().all(|m| m.tier == Tier::Local);
                local && !skipped.contains(&(*day, basis.clone())) && !up_to_date(catalog, *day, &basis)
            })
            .take(DAYS_PER_PASS)
            .collect();
        let mut report = SealReport::default();
        let def = snapshots::definition();
        for (day, raws) in due {
            // Each raw segment's rows, then the day's (None: a sum overflows).
            let mut batches = Vec::with_capacity(raws.len());
            for raw in &raws {
                let Some(s) = snapshot.segments.iter().find(|s| s.meta.id == raw.id) else {
                    return Err(StorageError::Internal(format!(
                        "raw segment {} is in the catalog but not open",
                        raw.id
                    )));
                };
                let events = s.reader.read_batch()?;
                batches.push(RollupInput::new(&events, std::slice::from_ref(&def))?.rows(&def)?);
            }
            let basis: Vec<SegmentId> = raws.iter().map(|m| m.id).collect();
            let rows = match batches.into_iter().collect::<Option<Vec<_>>>() {
                Some(batches) => merge(&def, &batches)?,
                None => None,
            };
            let Some(rows) = rows else {
                tracing::error!(day = %snapshots::day_name(day), "a billing sum overflows i64: no snapshot for this day");
                self.inner.billing_skipped.lock().insert((day, basis));
                continue;
            };
            let previous = latest(catalog, day);
            let unchanged = match previous {
                Some(p) => {
                    let old = self.read_billing(p)?;
                    snapshots::numbers(&old)? == snapshots::numbers(&rows)?
                }
                None => false,
            };
            let rules_version = raws.iter().map(|m| m.attribution_version).max().unwrap_or_default();
            let entry = match previous {
                Some(p) if unchanged => BillingSnapshot { basis, ..p.clone() },
                _ => {
                    let version = previous.map_or(1, |p| p.version + 1);
                    // The job of a re-seal since the previous check, if any.
                    let job = raws
                        .iter()
                        .filter(|m| previous.is_some_and(|p| !p.basis.contains(&m.id)))
                        .filter_map(|m| m.reprocess_job)
                        .max();
                    let cause = match (previous, job) {
                        (None, _) => Cause::Final,
                        (Some(_), Some(_)) => Cause::Reprocess,
                        (Some(_), None) => Cause::LateEvents,
                    };
                    let path = snapshots::file_path(&self.inner.data_dir, day, version);
                    let schema = def.schema();
                    let summary = write_columns(&path, &schema, &rows, &self.segment_options())
                        .inspect_err(|_| drop(std::fs::remove_file(&path)))?;
                    let dir = self.inner.data_dir.join(snapshots::BILLING_DIR);
                    sync_dir(&dir).inspect_err(|_| drop(std::fs::remove_file(&path)))?;
                    report.rows_out += summary.rows as usize;
                    BillingSnapshot {
                        day_ms: day,
                        version,
                        rows: summary.rows,
                        size_bytes: summary.size_bytes,
                        created_ms: now_ms(),
                        cause,
                        reprocess_job: job,
                        rules_version,
                        basis,
                    }
                }
            };
            let written = (!unchanged).then(|| entry.path(&self.inner.data_dir));
            let edit = CatalogEdit { billing: vec![entry.clone()], ..CatalogEdit::default() };
            let catalog = self.inner.manifest.commit(&edit).inspect_err(|_| {
                if let Some(path) = &written {
                    drop(std::fs::remove_file(path));
                }
            })?;
            self.inner.visible.write().catalog = catalog;
            report.partitions += 1;
            if written.is_some() {
                tracing::info!(day = %snapshots::day_name(day), version = entry.version, cause = ?entry.cause, "billing snapshot written");
            }
        }
        Ok(report)
    }

    /// Final days whose latest snapshot is missing or was computed from
    /// raw segments since replaced (skipped overflowing days aside).
    pub fn billing_snapshots_pending(&self) -> usize {
        let catalog = self.catalog();
        let skipped = self.inner.billing_skipped.lock().clone();
        self.final_days(catalog.segments_of(Level::Raw))
            .into_iter()
            .filter(|(day, raws)| {
                let ids: Vec<SegmentId> = raws.iter().map(|m| m.id).collect();
                let local = raws.iter().all(|m| m.tier == Tier::Local);
                local && !skipped.contains(&(*day, ids.clone())) && !up_to_date(&catalog, *day, &ids)
            })
            .count()
    }

    /// Every snapshot version of `day_ms`, oldest first.
    pub fn billing_versions(&self, day_ms: i64) -> Vec<BillingSnapshot> {
        self.catalog().billing.iter().filter(|b| b.day_ms == day_ms).cloned().collect()
    }

    /// The rows of `day_ms`'s snapshot `version` (the latest when `None`),
    /// with its catalog entry; `None` when there is no such snapshot.
    pub fn billing_rows(
        &self,
        day_ms: i64,
        version: Option<u32>,
    ) -> Result<Option<(BillingSnapshot, Vec<BillingRow>)>> {
        let catalog = self.catalog();
        let found = match version {
            Some(v) => catalog.billing.iter().find(|b| b.day_ms == day_ms && b.version == v),
            None => latest(&catalog, day_ms),
        };
        let Some(entry) = found else { return Ok(None) };
        let batch = self.read_billing(entry)?;
        Ok(Some((entry.clone(), snapshots::rows_of(&batch)?)))
    }

    /// `day_ms`'s snapshot versions as a caller who sees only
    /// `advertisers` sees them (see [`crate::billing::as_seen_by`]).
    pub fn billing_seen_by(
        &self,
        day_ms: i64,
        advertisers: &[String],
    ) -> Result<Vec<(BillingSnapshot, arrow_array::RecordBatch)>> {
        crate::billing::as_seen_by(&self.billing_versions(day_ms), |e| self.read_billing(e), advertisers)
    }

    pub(super) fn read_billing(&self, entry: &BillingSnapshot) -> Result<arrow_array::RecordBatch> {
        snapshots::read(&self.inner.data_dir, entry)
    }
}

/// Whether `day`'s latest snapshot was checked against exactly `raws`.
pub(super) fn up_to_date(catalog: &Catalog, day: i64, raws: &[SegmentId]) -> bool {
    latest(catalog, day)
        .is_some_and(|b| b.basis.iter().copied().collect::<BTreeSet<_>>() == raws.iter().copied().collect())
}

/// The latest snapshot of `day`.
fn latest(catalog: &Catalog, day: i64) -> Option<&BillingSnapshot> {
    catalog.billing.iter().filter(|b| b.day_ms == day).max_by_key(|b| b.version)
}
