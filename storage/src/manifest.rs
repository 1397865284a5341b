//! The catalog: which segments are live, and how far each head partition
//! has been sealed.
//!
//! The catalog is one JSON file, `catalog.json`, in the data directory. It is
//! never edited in place. Every change ([`CatalogEdit`]: add segments, remove
//! segments, advance seal watermarks) goes through [`Manifest::commit`]:
//!
//! ```text
//!   new = current.apply(edit), version + 1
//!   write catalog.json.tmp ─► fsync ─► rename over catalog.json ─► fsync dir
//!   swap the in-memory Arc
//! ```
//!
//! so after a crash the directory holds either the old or the new catalog,
//! never a mix. A segment file that is not named by the catalog is garbage
//! from an interrupted seal; [`Manifest::remove_orphans`] deletes it at start.
//!
//! The file carries a CRC32C of its catalog body, so a damaged catalog is
//! reported with its path rather than read as an empty store.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::billing::BillingSnapshot;
use crate::error::{IoContext, Result, StorageError};
use crate::failpoint;
use crate::ids::{Lsn, SegmentId};
use crate::offsets::SourceOffsets;
use crate::rollup::RollupRef;

const CATALOG_FILE: &str = "catalog.json";
const CATALOG_TMP: &str = "catalog.json.tmp";
const CATALOG_FORMAT: u32 = 1;

/// Granularity of the data a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Raw,
    Minute,
    Hour,
    Day,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Raw => "raw",
            Level::Minute => "minute",
            Level::Hour => "hour",
            Level::Day => "day",
        }
    }
}

/// Where a segment's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// On local disk under `segments/`.
    Local,
    /// In the object store, read through the local cache.
    Remote,
    /// A raw segment deleted by retention (`retention.raw.ttl`) while
    /// rollup segments derived from it remain: its entry stays, so those
    /// are still planned by it and a query that needs its events is
    /// refused, never answered without them. Dropped once nothing derives
    /// from it (and [`Catalog::deleted_before`] moves past it).
    Expired,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Remote => "remote",
            Tier::Expired => "expired",
        }
    }
}

/// A head partition: one time bucket of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    /// Start of the time bucket, epoch ms.
    pub bucket_start_ms: i64,
    /// `hash(advertiser_id) mod shards`.
    pub shard: u32,
}

/// What the catalog knows of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub level: Level,
    pub partition: PartitionKey,
    pub bucket_width_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub size_bytes: u64,
    pub tier: Tier,
    pub attribution_version: u32,
    /// True once the bucket closed and was re-sealed with complete data.
    pub is_final: bool,
    /// Highest WAL LSN whose events this segment (or its ancestors) holds.
    pub max_lsn: Lsn,
    /// Wall-clock time the segment was written, epoch ms.
    pub created_ms: i64,
    /// For a rollup segment: which rollup, with the dimensions it was
    /// written with (its schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<RollupRef>,
    /// For a rollup segment written at seal: the raw segment it summarizes.
    /// It is replaced and removed together with that segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SegmentId>,
    /// For a rollup segment merged when a day became final: the raw
    /// segments of that day whose numbers it holds. Replacing any of them
    /// removes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<SegmentId>,
    /// For a raw segment written by a reprocess job: its id (the lineage
    /// of the billing snapshot that follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocess_job: Option<u64>,
    /// For a raw segment rewritten by an erasure: its rows whose identity
    /// (`user_key`, `ip_hash`, `ua_hash`) was removed. The rollup rows and
    /// billing snapshot written from it before kept their `users`
    /// sketches, which reconciliation then does not compare.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub erased_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SegmentMeta {
    /// The raw segments whose numbers this (derived) segment holds.
    pub fn derived_from(&self) -> impl Iterator<Item = SegmentId> + '_ {
        self.source.into_iter().chain(self.covers.iter().copied())
    }
}

/// The durable state of the store, one version of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Incremented by every commit.
    pub version: u64,
    /// The next segment id to hand out; ids are never reused.
    pub next_segment_id: u64,
    pub segments: BTreeMap<SegmentId, SegmentMeta>,
    /// For each head partition, the highest LSN whose events for that
    /// partition are already in segments. WAL replay skips them.
    pub sealed: Vec<SealWatermark>,
    /// The partitioning the data directory was created with (shards,
    /// bucket width in ms). Fixed for its life: replay and pruning depend
    /// on it.
    #[serde(default)]
    pub partitioning: Option<(u32, i64)>,
    /// Billing snapshots, every version of every final day, by (day,
    /// version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub billing: Vec<BillingSnapshot>,
    /// Retention deleted every level of the data of time buckets that
    /// ended at or before this (epoch ms): queries over it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_before: Option<i64>,
    /// The Parquet mirror (`crate::mirror`): for each day written, the
    /// keys of its parts in the object store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrored: BTreeMap<i64, Vec<String>>,
    /// The Iceberg tables (`crate::iceberg`): for each day committed, the
    /// keys of the mirror's parts its snapshots hold (the day is due again
    /// while they differ from `mirrored`). While a commit is under way, or
    /// after an erasure rewrote parts in place, the keys the tables may
    /// hold, with the mark `"!uncommitted"` (`store/iceberg.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub iceberg: BTreeMap<i64, Vec<String>>,
    /// How far outside streams (Kafka partitions) were read into WAL
    /// records already deleted (`crate::offsets`).
    #[serde(default, skip_serializing_if = "SourceOffsets::is_empty")]
    pub source_offsets: SourceOffsets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealWatermark {
    pub partition: PartitionKey,
    pub lsn: Lsn,
}

impl Catalog {
    pub fn sealed_lsn(&self, partition: PartitionKey) -> Lsn {
        self.sealed.iter().find(|w| w.partition == partition).map(|w| w.lsn).unwrap_or_default()
    }

    pub fn segments_of(&self, level: Level) -> impl Iterator<Item = &SegmentMeta> {
        self.segments.values().filter(move |s| s.level == level)
    }

    fn apply(&self, edit: &CatalogEdit) -> Result<Catalog> {
        let mut next = self.clone();
        next.version += 1;
        for id in &edit.remove {
            if next.segments.remove(id).is_none() {
                return Err(StorageError::Internal(format!("catalog edit removes unknown segment {id}")));
            }
        }
        for meta in &edit.add {
            if meta.id.0 >= next.next_segment_id {
                return Err(StorageError::Internal(format!("segment {} was not allocated", meta.id)));
            }
            if next.segments.insert(meta.id, meta.clone()).is_some() {
                return Err(StorageError::Internal(format!("catalog edit adds segment {} twice", meta.id)));
            }
        }
        for w in &edit.sealed {
            match next.sealed.iter_mut().find(|x| x.partition == w.partition) {
                Some(x) => x.lsn = x.lsn.max(w.lsn),
                None => next.sealed.push(*w),
            }
        }
        for (old, new) in &edit.renamed {
            // Only a raw segment replaced in this edit by one of the same partition.
            let added = edit.add.iter().find(|m| m.id == *new);
            let same = added.is_some_and(|m| {
                m.level == Level::Raw
                    && edit.remove.contains(old)
                    && self.segments.get(old).is_some_and(|o| o.level == Level::Raw && o.partition == m.partition)
            });
            if !same {
                return Err(StorageError::Internal(format!(
                    "catalog edit renames segment {old} to {new}, which does not replace it"
                )));
            }
            let rename = |id: &mut SegmentId| {
                if id == old {
                    *id = *new;
                }
            };
            for m in next.segments.values_mut() {
                m.source.iter_mut().chain(m.covers.iter_mut()).for_each(rename);
            }
            for b in &mut next.billing {
                b.basis.iter_mut().for_each(rename);
            }
        }
        if let Some(orphan) = next.segments.values().find(|m| m.derived_from().any(|s| !next.segments.contains_key(&s)))
        {
            return Err(StorageError::Internal(format!(
                "catalog edit leaves segment {} without its source segment",
                orphan.id
            )));
        }
        if let Some(p) = edit.set_partitioning {
            next.partitioning = Some(p);
        }
        for b in &edit.billing {
            match next.billing.iter_mut().find(|x| (x.day_ms, x.version) == (b.day_ms, b.version)) {
                Some(x) => *x = b.clone(),
                None => next.billing.push(b.clone()),
            }
        }
        next.billing.sort_by_key(|b| (b.day_ms, b.version));
        if let Some(floor) = edit.forget_sealed_below {
            next.sealed.retain(|w| w.lsn >= floor);
        }
        if let Some(t) = edit.deleted_before {
            next.deleted_before = Some(next.deleted_before.map_or(t, |d| d.max(t)));
        }
        for (day, keys) in &edit.mirrored {
            next.mirrored.insert(*day, keys.clone());
        }
        for (day, keys) in &edit.iceberg {
            next.iceberg.insert(*day, keys.clone());
        }
        if let Some(offsets) = &edit.source_offsets {
            next.source_offsets.merge(offsets);
        }
        next.sealed.sort_by_key(|w| w.partition);
        Ok(next)
    }
}

/// One atomic change to the catalog.
#[derive(Debug, Clone, Default)]
pub struct CatalogEdit {
    pub add: Vec<SegmentMeta>,
    pub remove: Vec<SegmentId>,
    pub sealed: Vec<SealWatermark>,
    /// Drop watermarks below this LSN: no retained WAL record is that old.
    pub forget_sealed_below: Option<Lsn>,
    /// Record the data directory's partitioning (first open only).
    pub set_partitioning: Option<(u32, i64)>,
    /// Billing snapshots to add, or to update (same day and version).
    pub billing: Vec<BillingSnapshot>,
    /// Raise [`Catalog::deleted_before`] to this.
    pub deleted_before: Option<i64>,
    /// Days of the Parquet mirror written, with the keys of their parts.
    pub mirrored: Vec<(i64, Vec<String>)>,
    /// Days committed to the Iceberg tables, with the keys committed
    /// (see [`Catalog::iceberg`]).
    pub iceberg: Vec<(i64, Vec<String>)>,
    /// Raw segments rewritten in place of others with the same events (an
    /// erasure), as (old, new): what derives from the old one (rollup
    /// segments, merged days, billing snapshots' basis) now names the new.
    pub renamed: Vec<(SegmentId, SegmentId)>,
    /// Source offsets to keep (each only moves forward).
    pub source_offsets: Option<SourceOffsets>,
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    format: u32,
    /// CRC32C of the JSON encoding of `catalog`.
    checksum: u32,
    catalog: Catalog,
}

/// Owner of `catalog.json`: loads it, and commits edits atomically.
pub struct Manifest {
    dir: PathBuf,
    current: Mutex<Arc<Catalog>>,
    /// Serializes commits and segment id allocation.
    commit_lock: Mutex<()>,
}

impl Manifest {
    /// Loads the catalog of `dir`, or starts an empty one.
    pub fn open(dir: &Path) -> Result<Manifest> {
        fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(CATALOG_FILE);
        let catalog = match fs::read(&path) {
            Ok(bytes) => decode(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Catalog { next_segment_id: 1, ..Catalog::default() },
            Err(source) => return Err(StorageError::Io { path, source }),
        };
        let tmp = dir.join(CATALOG_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).at(&tmp)?;
        }
        Ok(Manifest { dir: dir.to_path_buf(), current: Mutex::new(Arc::new(catalog)), commit_lock: Mutex::new(()) })
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.current.lock().clone()
    }

    /// Reserves a fresh segment id. The id is durable only once a commit
    /// that adds the segment lands; a crash before that leaves an orphan
    /// file that the next start removes.
    pub fn allocate_segment_id(&self) -> Result<SegmentId> {
        let _guard = self.commit_lock.lock();
        let mut current = self.current.lock();
        let mut next = (**current).clone();
        let id = SegmentId(next.next_segment_id);
        next.next_segment_id += 1;
        // The in-memory counter moves ahead; it is persisted with the next
        // commit. Ids handed out and lost in a crash are simply skipped.
        *current = Arc::new(next);
        Ok(id)
    }

    /// Applies `edit` atomically and durably, returning the new catalog.
    pub fn commit(&self, edit: &CatalogEdit) -> Result<Arc<Catalog>> {
        let _guard = self.commit_lock.lock();
        let next = Arc::new(self.current().apply(edit)?);
        self.persist(&next)?;
        *self.current.lock() = next.clone();
        Ok(next)
    }

    fn persist(&self, catalog: &Catalog) -> Result<()> {
        let body = serde_json::to_vec(catalog).map_err(|e| StorageError::Internal(format!("encode catalog: {e}")))?;
        let file = CatalogFile { format: CATALOG_FORMAT, checksum: crc32c::crc32c(&body), catalog: catalog.clone() };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| StorageError::Internal(format!("encode catalog: {e}")))?;
        let tmp = self.dir.join(CATALOG_TMP);
        let path = self.dir.join(CATALOG_FILE);
        {
            let mut f = File::create(&tmp).at(&tmp)?;
            f.write_all(&bytes).at(&tmp)?;
            failpoint::hit("catalog_before_fsync");
            f.sync_all().at(&tmp)?;
        }
        failpoint::hit("catalog_before_rename");
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(&self.dir)?;
        failpoint::hit("catalog_after_rename");
        Ok(())
    }

    /// Deletes files in `segments_dir` that the catalog does not name:
    /// leftovers of a seal interrupted before its commit. Returns their names.
    pub fn remove_orphans(&self, segments_dir: &Path) -> Result<Vec<PathBuf>> {
        let catalog = self.current();
        let mut removed = Vec::new();
        let entries = match fs::read_dir(segments_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(source) => return Err(StorageError::Io { path: segments_dir.to_path_buf(), source }),
        };
        for entry in entries {
            let entry = entry.at(segments_dir)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // `{id}.seg` and its sidecars `{id}.{suffix}` live and die
            // together; an entry retention expired, or moved to the object
            // store, keeps no local file (a crash between its commit and
            // the deletion leaves one behind).
            let live = name
                .split_once('.')
                .and_then(|(hex, _)| u64::from_str_radix(hex, 16).ok())
                .and_then(|id| catalog.segments.get(&SegmentId(id)))
                .is_some_and(|m| m.tier == Tier::Local);
            if !live && entry.file_type().at(&path)?.is_file() {
                fs::remove_file(&path).at(&path)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            sync_dir(segments_dir)?;
        }
        Ok(removed)
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Catalog> {
    let corrupt = |reason: String| StorageError::ManifestCorrupt { path: path.to_path_buf(), reason };
    let file: CatalogFile = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a catalog: {e}")))?;
    if file.format != CATALOG_FORMAT {
        return Err(corrupt(format!("unsupported catalog format {}", file.format)));
    }
    let body = serde_json::to_vec(&file.catalog).map_err(|e| corrupt(e.to_string()))?;
    if crc32c::crc32c(&body) != file.checksum {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(file.catalog)
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64) -> SegmentMeta {
        SegmentMeta {
            id: SegmentId(id),
            level: Level::Raw,
            partition: PartitionKey { bucket_start_ms: 0, shard: 1 },
            bucket_width_ms: 3_600_000,
            min_ts: 10,
            max_ts: 20,
            rows: 5,
            size_bytes: 100,
            tier: Tier::Local,
            attribution_version: 1,
            is_final: false,
            max_lsn: Lsn(7),
            created_ms: 0,
            rollup: None,
            source: None,
            covers: Vec::new(),
            reprocess_job: None,
            erased_rows: 0,
        }
    }

    #[test]
    fn a_merged_segment_goes_with_every_segment_it_covers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest::open(dir.path()).expect("open");
        let ids: Vec<SegmentId> = (0..3).map(|_| m.allocate_segment_id().expect("id")).collect();
        let merged = SegmentMeta { level: Level::Day, covers: vec![ids[0], ids[1]], ..meta(ids[2].0) };
        m.commit(&CatalogEdit { add: vec![meta(ids[0].0), meta(ids[1].0), merged], ..CatalogEdit::default() })
            .expect("commit");
        let err = m.commit(&CatalogEdit { remove: vec![ids[1]], ..CatalogEdit::default() }).expect_err("orphan");
        assert!(err.to_string().contains(&format!("segment {} without its source", ids[2])), "{err}");
        m.commit(&CatalogEdit { remove: vec![ids[1], ids[2]], ..CatalogEdit::default() }).expect("both");
        let reopened = Manifest::open(dir.path()).expect("reopen");
        assert_eq!(reopened.current().segments.keys().copied().collect::<Vec<_>>(), vec![ids[0]]);
    }

    #[test]
    fn a_derived_segment_goes_with_its_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest::open(dir.path()).expect("open");
        let (raw, minute) = (m.allocate_segment_id().expect("id"), m.allocate_segment_id().expect("id"));
        let derived = SegmentMeta {
            level: Level::Minute,
            rollup: Some(RollupRef {
                name: "r".into(),
                dimensions: vec!["ad_id".into()],
                granularity: Default::default(),
            }),
            source: Some(raw),
            ..meta(minute.0)
        };
        m.commit(&CatalogEdit { add: vec![meta(raw.0), derived.clone()], ..CatalogEdit::default() }).expect("commit");
        // Removing the raw segment alone would orphan its minutes: refused.
        let err = m.commit(&CatalogEdit { remove: vec![raw], ..CatalogEdit::default() }).expect_err("orphan");
        assert!(err.to_string().contains(&format!("segment {minute} without its source")), "{err}");
        m.commit(&CatalogEdit { remove: vec![raw, minute], ..CatalogEdit::default() }).expect("both");
        // The fields survive a reopen; a catalog without them still reads.
        let (raw, minute) = (m.allocate_segment_id().expect("id"), m.allocate_segment_id().expect("id"));
        let derived = SegmentMeta { id: minute, source: Some(raw), ..derived };
        m.commit(&CatalogEdit { add: vec![meta(raw.0), derived.clone()], ..CatalogEdit::default() }).expect("commit");
        drop(m);
        let m = Manifest::open(dir.path()).expect("reopen");
        assert_eq!(m.current().segments.get(&minute), Some(&derived));
    }

    #[test]
    fn commit_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest::open(dir.path()).expect("open");
        let id = m.allocate_segment_id().expect("id");
        let p = PartitionKey { bucket_start_ms: 0, shard: 1 };
        let edit = CatalogEdit {
            add: vec![meta(id.0)],
            sealed: vec![SealWatermark { partition: p, lsn: Lsn(7) }],
            ..CatalogEdit::default()
        };
        m.commit(&edit).expect("commit");
        drop(m);
        let m = Manifest::open(dir.path()).expect("reopen");
        let c = m.current();
        assert_eq!(c.segments.len(), 1);
        assert_eq!(c.sealed_lsn(p), Lsn(7));
        assert_eq!(c.version, 1);
        // The allocated id is not handed out again.
        assert_ne!(m.allocate_segment_id().expect("id"), id);
    }

    #[test]
    fn rejects_bad_edits_without_changing_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest::open(dir.path()).expect("open");
        let err = m.commit(&CatalogEdit { remove: vec![SegmentId(9)], ..CatalogEdit::default() });
        assert!(err.is_err());
        let err = m.commit(&CatalogEdit { add: vec![meta(99)], ..CatalogEdit::default() });
        assert!(err.is_err());
        assert_eq!(m.current().version, 0);
    }

    #[test]
    fn corrupt_catalog_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Manifest::open(dir.path()).expect("open");
        let id = m.allocate_segment_id().expect("id");
        m.commit(&CatalogEdit { add: vec![meta(id.0)], ..CatalogEdit::default() }).expect("commit");
        let path = dir.path().join(CATALOG_FILE);
        let text = fs::read_to_string(&path).expect("read");
        fs::write(&path, text.replace("\"rows\": 5", "\"rows\": 6")).expect("write");
        let err = Manifest::open(dir.path()).err().expect("must fail");
        assert!(err.to_string().contains("catalog.json"), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn orphans_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segs = dir.path().join("segments");
        fs::create_dir_all(&segs).expect("mkdir");
        let m = Manifest::open(dir.path()).expect("open");
        let id = m.allocate_segment_id().expect("id");
        m.commit(&CatalogEdit { add: vec![meta(id.0)], ..CatalogEdit::default() }).expect("commit");
        fs::write(segs.join(id.file_name()), b"live").expect("write");
        fs::write(segs.join(SegmentId(42).file_name()), b"orphan").expect("write");
        let removed = m.remove_orphans(&segs).expect("gc");
        assert_eq!(removed.len(), 1);
        assert!(segs.join(id.file_name()).exists());
        assert!(!segs.join(SegmentId(42).file_name()).exists());
    }
}
