//! The rollup task: keeps every raw segment's rollup segments in step with
//! the configured rollups.
//!
//! ```text
//!  every pass: rollup segments of rollups no longer configured (by name and dimensions) ─► removed
//!              raw segments lacking a configured rollup's segment (a rollup added to the
//!              configuration, data sealed before it) ─► read back, rollup rows written, committed
//!              (at most BACKFILL_SEGMENTS_PER_PASS raw segments a pass, so seals keep their pace)
//! ```
//!
//! Queries use whatever rollup segments exist, segment by segment, and read
//! the events of the rest, so a backfill in progress changes how fast a
//! query is, never its numbers.

use std::collections::HashSet;

use serde::Serialize;

use super::{SealReport, Store};
use crate::error::Result;
use crate::ids::SegmentId;
use crate::manifest::sync_dir;
use crate::manifest::{Catalog, CatalogEdit, Level, SegmentMeta};
use crate::rollup::{RollupDef, RollupInput, RollupRef};

/// Raw segments a pass of the rollup task reads back at most.
const BACKFILL_SEGMENTS_PER_PASS: usize = 8;

/// One configured rollup's coverage, for `/v1/rollups` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RollupStatus {
    pub name: String,
    pub dimensions: Vec<String>,
    pub granularity: &'static str,
    /// Raw segments with this rollup's segment, of all raw segments.
    pub segments: usize,
    pub raw_segments: usize,
    /// Raw segments whose sums overflow an i64 for this rollup: they keep
    /// no rollup segment, queries read their events.
    pub without: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Every raw segment has its rollup segment (or cannot have one).
    pub complete: bool,
}

/// Whether `m` is a segment of `def`, as configured now.
fn is_of(m: &SegmentMeta, def: &RollupDef) -> bool {
    m.level != Level::Raw && m.rollup.as_ref().is_some_and(|r| *r == def.to_ref())
}

/// The (raw segment, rollup) pairs that lack a rollup segment.
fn missing<'a>(catalog: &'a Catalog, defs: &'a [RollupDef]) -> Vec<(&'a SegmentMeta, &'a RollupDef)> {
    let have: HashSet<(SegmentId, &RollupRef)> = catalog
        .segments
        .values()
        .filter(|m| m.level != Level::Raw)
        .filter_map(|m| Some((m.source?, m.rollup.as_ref()?)))
        .collect();
    let refs: Vec<RollupRef> = defs.iter().map(RollupDef::to_ref).collect();
    catalog
        .segments_of(Level::Raw)
        .flat_map(|raw| defs.iter().zip(&refs).map(move |(d, r)| (raw, d, r)))
        .filter(|(raw, _, r)| !have.contains(&(raw.id, *r)))
        .map(|(raw, d, _)| (raw, d))
        .collect()
}

impl Store {
    /// One pass of the rollup task (see the module docs). Callers need no
    /// lock; it takes `seal_lock`, so no seal replaces a raw segment while
    /// its rollup rows are built.
    pub fn roll_up(&self) -> Result<SealReport> {
        let _one_sealer = self.inner.seal_lock.lock();
        let inner = &self.inner;
        let snapshot = self.snapshot();
        let defs = &inner.config.rollups;
        let stale: Vec<SegmentId> = snapshot
            .catalog
            .segments
            .values()
            .filter(|m| m.source.is_some() && !defs.iter().any(|d| is_of(m, d)))
            .map(|m| m.id)
            .collect();
        // Forget skips of segments that are gone (ids are never reused).
        inner.rollup_skipped.lock().retain(|(id, _)| snapshot.catalog.segments.contains_key(id));
        let skipped = inner.rollup_skipped.lock().clone();
        let mut todo: Vec<(&SegmentMeta, &RollupDef)> = missing(&snapshot.catalog, defs)
            .into_iter()
            .filter(|(raw, d)| !skipped.contains(&(raw.id, d.name().to_string())))
            .collect();
        let mut raws: Vec<SegmentId> = todo.iter().map(|(raw, _)| raw.id).collect();
        raws.dedup();
        raws.truncate(BACKFILL_SEGMENTS_PER_PASS);
        todo.retain(|(raw, _)| raws.contains(&raw.id));
        if stale.is_empty() && todo.is_empty() {
            return Ok(SealReport::default());
        }

        let mut written = Vec::new();
        let mut build = || -> Result<()> {
            for &raw_id in &raws {
                let Some(raw) = snapshot.segments.iter().find(|s| s.meta.id == raw_id) else { continue };
                let events = raw.reader.read_batch()?;
                let defs: Vec<RollupDef> =
                    todo.iter().filter(|(r, _)| r.id == raw_id).map(|(_, d)| (*d).clone()).collect();
                let input = RollupInput::new(&events, &defs)?;
                for def in &defs {
                    match self.write_rollup(&raw.meta, def, &input)? {
                        Some(segment) => written.push(segment),
                        None => {
                            inner.rollup_skipped.lock().insert((raw_id, def.name().to_string()));
                        }
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = build() {
            for (meta, _) in &written {
                self.delete_segment_files(meta.id);
            }
            return Err(e);
        }
        if !written.is_empty() {
            sync_dir(&inner.segments_dir)?;
        }
        let edit = CatalogEdit {
            add: written.iter().map(|(m, _)| m.clone()).collect(),
            remove: stale.clone(),
            ..CatalogEdit::default()
        };
        let catalog = match inner.manifest.commit(&edit) {
            Ok(c) => c,
            Err(e) => {
                for (meta, _) in &written {
                    self.delete_segment_files(meta.id);
                }
                return Err(e);
            }
        };
        {
            let mut v = inner.visible.write();
            v.catalog = catalog;
            for (meta, reader) in &written {
                v.readers.insert(meta.id, reader.clone());
            }
            for id in &stale {
                v.readers.remove(id);
            }
        }
        for id in &stale {
            self.delete_segment_files(*id);
        }
        if !written.is_empty() || !stale.is_empty() {
            tracing::info!(
                written = written.len(),
                removed = stale.len(),
                "rollup segments brought in step with the configuration"
            );
        }
        Ok(SealReport {
            partitions: raws.len(),
            rows_out: written.iter().map(|(m, _)| m.rows as usize).sum(),
            segments: written.iter().map(|(m, _)| m.id).collect(),
            replaced: stale,
            ..SealReport::default()
        })
    }

    /// Each configured rollup's coverage of the raw segments.
    pub fn rollup_status(&self) -> Vec<RollupStatus> {
        let catalog = self.catalog();
        let skipped = self.inner.rollup_skipped.lock().clone();
        let raw_segments = catalog.segments_of(Level::Raw).count();
        self.inner
            .config
            .rollups
            .iter()
            .map(|d| {
                let mine: Vec<&SegmentMeta> = catalog.segments.values().filter(|m| is_of(m, d)).collect();
                let without = skipped.iter().filter(|(_, name)| name == d.name()).count();
                RollupStatus {
                    name: d.name().to_string(),
                    dimensions: d.dims().iter().map(|c| c.name().to_string()).collect(),
                    granularity: d.granularity().name(),
                    segments: mine.len(),
                    raw_segments,
                    without,
                    rows: mine.iter().map(|m| m.rows).sum(),
                    bytes: mine.iter().map(|m| m.size_bytes).sum(),
                    complete: mine.len() + without >= raw_segments,
                }
            })
            .collect()
    }
}
