//! The archive as Apache Iceberg tables (`[tiering] iceberg`): the
//! Parquet mirror's parts (`crate::mirror`) committed to one table per
//! level, raw `events` and each rollup's `{name}_hour` and `{name}_day`,
//! partitioned by `day(ts)`, in a warehouse that several nodes share.
//! Spark, Trino, DuckDB or pyiceberg then query the whole fleet's history.
//!
//! ```text
//!  {warehouse}/adstore/{table}/metadata/v{N}.metadata.json       table metadata, one per commit
//!                                      /version-hint.text         N, for readers that want it
//!                                      /snap-{id}-{uuid}.avro     a snapshot's manifest list
//!                                      /{day}-{node}-{uuid}-m0.avro  a node's files of one day
//!  data files: the mirror's parts where each node wrote them (its own object store)
//! ```
//!
//! This is a minimal writer of the format-version 2 spec, written here
//! because the `iceberg` crate pins another major version of arrow and
//! parquet and brings its own I/O stack. It writes what the spec requires
//! (no column statistics: readers plan by partition), and commits as the
//! spec's file-system tables do:
//!
//! ```text
//!  commit_day(table, day, files)        files: this node's parts of that day, all of them
//!   1. latest metadata: the highest v{N} listed                (none: a new table)
//!   2. this node's manifests of the day, from the current manifest list; unchanged files: done
//!   3. a manifest: files kept EXISTING, new ADDED, gone DELETED; a manifest list: the other
//!      manifests as they were, plus this one
//!   4. v{N+1}.metadata.json written only if absent (S3 If-None-Match, a hard link on disk)
//!      taken: another node committed first; back to 1 (the two files of 3 deleted)
//!   5. version-hint.text (then listed again: a later version another node committed meanwhile
//!      is written in its place); manifest lists and metadata files that fell out of the metadata deleted
//! ```
//!
//! A node is named by the location of its object store, so nodes must not
//! share one (their parts would collide anyway). Each (node, day) has one
//! manifest: a re-commit (a reprocessed day, an erasure's rewrite) replaces
//! it, and other engines must not rewrite this table's manifests.

use std::sync::Arc;

use arrow_schema::Schema;
use serde_json::json;

use crate::billing::day_name;
use crate::error::{Result, StorageError};
use crate::tier::ObjectTier;

mod avro;
mod metadata;

pub use avro::Status;
use avro::{Entry, ManifestFile};

/// How often a commit that lost the race to another node is tried again.
const MAX_ATTEMPTS: u32 = 20;
/// The namespace the tables live in, under the warehouse.
pub const NAMESPACE: &str = "adstore";

/// A Parquet file of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Its URL (`s3://…`, `file:///…`).
    pub path: String,
    /// The day its rows belong to (epoch ms of midnight, UTC).
    pub day: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The table already held exactly these files.
    Unchanged,
    /// A new snapshot, in metadata file `version`, after `attempts` tries.
    Committed { version: u64, snapshot_id: i64, attempts: u32 },
}

/// The tables of one warehouse, as one node writes them.
pub struct Warehouse {
    tier: Arc<ObjectTier>,
    /// The warehouse's directory under the store's prefix ("" or "iceberg").
    base: String,
    /// This node's name in manifest file names.
    node: String,
}

impl Warehouse {
    /// The warehouse in `tier` under `base`, written by the node whose
    /// parts live at `node_location`.
    pub fn new(tier: Arc<ObjectTier>, base: &str, node_location: &str) -> Warehouse {
        let node = format!("{:012x}", xxhash_rust::xxh3::xxh3_64(node_location.as_bytes()) >> 16);
        Warehouse { tier, base: base.trim_matches('/').to_string(), node }
    }

    /// The key of `table`'s directory, relative to the store.
    fn table_dir(&self, table: &str) -> String {
        match self.base.is_empty() {
            true => format!("{NAMESPACE}/{table}"),
            false => format!("{}/{NAMESPACE}/{table}", self.base),
        }
    }

    /// The URL of `table` (its metadata's `location`).
    pub fn table_location(&self, table: &str) -> String {
        self.tier.location(&self.table_dir(table))
    }

    /// The URL of `table`'s current metadata file, if it exists.
    pub fn current_metadata(&self, table: &str) -> Result<Option<String>> {
        let dir = self.table_dir(table);
        Ok(self.latest(&dir)?.map(|(v, _)| self.tier.location(&format!("{dir}/metadata/v{v}.metadata.json"))))
    }

    /// The highest metadata version of the table at `dir`, and its JSON.
    fn latest(&self, dir: &str) -> Result<Option<(u64, serde_json::Value)>> {
        let Some(v) = self.latest_version(dir)? else { return Ok(None) };
        let key = format!("{dir}/metadata/v{v}.metadata.json");
        let meta = serde_json::from_slice(&self.tier.get(&key)?)
            .map_err(|e| StorageError::Internal(format!("{}: {e}", self.tier.location(&key))))?;
        Ok(Some((v, meta)))
    }

    /// The files of `table`'s current snapshot, as its manifests list them.
    pub fn files(&self, table: &str) -> Result<Vec<DataFile>> {
        let Some((_, meta)) = self.latest(&self.table_dir(table))? else { return Ok(Vec::new()) };
        let Some((_, list)) = metadata::current_snapshot(&meta) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for m in avro::read_manifest_list(&self.tier.get(self.key_of(&list)?)?, &list)? {
            let entries = avro::read_manifest(&self.tier.get(self.key_of(&m.path)?)?, &m)?;
            out.extend(entries.into_iter().filter(|e| e.status != Status::Deleted).map(|e| e.file));
        }
        Ok(out)
    }

    /// Whether the metadata file `key` is this commit's (snapshot
    /// `snapshot_id`): a write retried after the store took it but failed
    /// to answer finds it there already.
    fn is_ours(&self, key: &str, snapshot_id: i64) -> Result<bool> {
        let meta: serde_json::Value = serde_json::from_slice(&self.tier.get(key)?)
            .map_err(|e| StorageError::Internal(format!("{}: {e}", self.tier.location(key))))?;
        Ok(meta["current-snapshot-id"].as_i64() == Some(snapshot_id))
    }

    /// The highest metadata version of the table at `dir`, by listing.
    fn latest_version(&self, dir: &str) -> Result<Option<u64>> {
        let listed = self.tier.list_dir(&format!("{dir}/metadata"))?;
        let version = |key: &String| {
            let name = key.rsplit('/').next()?;
            name.strip_prefix('v')?.strip_suffix(".metadata.json")?.parse::<u64>().ok()
        };
        Ok(listed.iter().filter_map(version).max())
    }

    /// Points `version-hint.text` at `version`, or at a later version
    /// another node committed meanwhile: written, then checked against a
    /// listing until no later version shows, so the last hint written is
    /// never behind the last version committed.
    fn write_hint(&self, dir: &str, mut version: u64) -> Result<()> {
        loop {
            self.tier.put_bytes(&format!("{dir}/metadata/version-hint.text"), version.to_string().into(), false)?;
            match self.latest_version(dir)? {
                Some(latest) if latest > version => version = latest,
                _ => return Ok(()),
            }
        }
    }

    /// The key under the store of `url`, a file of this warehouse.
    fn key_of<'a>(&self, url: &'a str) -> Result<&'a str> {
        let root = self.tier.location("");
        url.strip_prefix(root.as_str())
            .ok_or_else(|| StorageError::Internal(format!("{url} is not in the warehouse at {root}")))
    }

    /// Makes `files` (of columns `schema`) the files this node holds in
    /// `table` for `day`: new ones added, those no longer among them
    /// deleted, as one snapshot (see the module docs).
    pub fn commit_day(&self, table: &str, schema: &Schema, day: i64, files: &[DataFile]) -> Result<Commit> {
        let dir = self.table_dir(table);
        let mine = format!("{}-{}-", day_name(day), self.node);
        for attempt in 1..=MAX_ATTEMPTS {
            let latest = self.latest(&dir)?;
            let version = latest.as_ref().map_or(0, |(v, _)| *v);
            let mut meta = match latest {
                Some((_, meta)) => meta,
                None if files.is_empty() => return Ok(Commit::Unchanged),
                None => metadata::new_table(&self.tier.location(&dir), schema, super::store::now_ms())?,
            };
            // Never before the table's last update: readers refuse logs
            // that go back in time, and nodes' clocks differ.
            let now = super::store::now_ms().max(metadata::last_updated_ms(&meta));
            if !files.is_empty() {
                metadata::evolve(&mut meta, schema)?;
            }
            let current = metadata::current_snapshot(&meta);
            let listed = match &current {
                Some((_, list)) => avro::read_manifest_list(&self.tier.get(self.key_of(list)?)?, list)?,
                None => Vec::new(),
            };
            let (ours, others): (Vec<ManifestFile>, Vec<ManifestFile>) =
                listed.into_iter().partition(|m| m.path.rsplit('/').next().is_some_and(|n| n.starts_with(&mine)));
            // A manifest of deleted files only is needed by the snapshot that
            // deleted them, not by the ones after.
            let parent = current.as_ref().map(|c| c.0);
            let others: Vec<ManifestFile> = others
                .into_iter()
                .filter(|m| m.files[0] + m.files[1] > 0 || Some(m.added_snapshot_id) == parent)
                .collect();
            let mut held = Vec::new();
            for m in &ours {
                let entries = avro::read_manifest(&self.tier.get(self.key_of(&m.path)?)?, m)?;
                held.extend(entries.into_iter().filter(|e| e.status != Status::Deleted));
            }
            let unchanged = held.len() == files.len() && files.iter().all(|f| held.iter().any(|e| e.file == *f));
            if unchanged {
                return Ok(Commit::Unchanged);
            }

            let snapshot_id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
            let sequence_number =
                meta["last-sequence-number"].as_i64().unwrap_or(0).checked_add(1).ok_or_else(|| {
                    StorageError::Internal(format!("Iceberg table {table}: sequence numbers exhausted"))
                })?;
            let entries = changes(&held, files, snapshot_id);
            let (schema_json, spec_json) = metadata::manifest_header(&meta)?;
            let schema_id = meta["current-schema-id"].as_i64().unwrap_or(0);
            let manifest = avro::write_manifest(&entries, &schema_json, schema_id, &spec_json)?;
            let manifest_key = format!("{dir}/metadata/{mine}{}-m0.avro", uuid::Uuid::new_v4());
            let mut manifests = others;
            manifests.push(ManifestFile::of(
                self.tier.location(&manifest_key),
                manifest.len(),
                snapshot_id,
                sequence_number,
                &entries,
            ));
            let list =
                avro::write_manifest_list(&manifests, snapshot_id, current.as_ref().map(|c| c.0), sequence_number)?;
            let list_key = format!("{dir}/metadata/snap-{snapshot_id}-1-{}.avro", uuid::Uuid::new_v4());
            self.tier.put_bytes(&manifest_key, manifest, false)?;
            self.tier.put_bytes(&list_key, list, false)?;

            let count = |s: Status| entries.iter().filter(move |e| e.status == s);
            let added = count(Status::Added).count();
            let deleted = count(Status::Deleted).count();
            let summary = json!({
                "operation": match (added, deleted) {
                    (_, 0) => "append",
                    (0, _) => "delete",
                    _ => "overwrite",
                },
                "added-data-files": added.to_string(),
                "deleted-data-files": deleted.to_string(),
                "added-records": count(Status::Added).map(|e| e.file.rows).sum::<u64>().to_string(),
                "deleted-records": count(Status::Deleted).map(|e| e.file.rows).sum::<u64>().to_string(),
                "adstore.day": day_name(day),
                "adstore.node": self.node,
            });
            let mut snapshot = json!({
                "snapshot-id": snapshot_id,
                "sequence-number": sequence_number,
                "timestamp-ms": now,
                "manifest-list": self.tier.location(&list_key),
                "summary": summary,
                "schema-id": meta["current-schema-id"],
            });
            if let Some((parent, _)) = current {
                snapshot["parent-snapshot-id"] = json!(parent);
            }
            let previous =
                (version > 0).then(|| self.tier.location(&format!("{dir}/metadata/v{version}.metadata.json")));
            let expired = metadata::add_snapshot(&mut meta, snapshot, previous.as_deref(), now)?;
            let next = version
                .checked_add(1)
                .ok_or_else(|| StorageError::Internal(format!("Iceberg table {table}: versions exhausted")))?;
            let body = serde_json::to_vec_pretty(&meta).map_err(|e| StorageError::Internal(e.to_string()))?;
            let next_key = format!("{dir}/metadata/v{next}.metadata.json");
            if !self.tier.put_bytes(&next_key, body, true)? && !self.is_ours(&next_key, snapshot_id)? {
                // Another node committed version `next` first: start over
                // from it; the files written for this attempt go.
                let _ = self.tier.remove(&manifest_key);
                let _ = self.tier.remove(&list_key);
                let backoff = 10u64 << attempt.min(6);
                let pause = backoff + uuid::Uuid::new_v4().as_u64_pair().1 % backoff;
                std::thread::sleep(std::time::Duration::from_millis(pause));
                continue;
            }
            // Best effort from here: the commit is done.
            if let Err(e) = self.write_hint(&dir, next) {
                tracing::warn!(table, version = next, error = %e, "version-hint.text not written");
            }
            for url in expired.manifest_lists.iter().chain(&expired.metadata_files) {
                if let Ok(key) = self.key_of(url) {
                    let _ = self.tier.remove(key);
                }
            }
            return Ok(Commit::Committed { version: next, snapshot_id, attempts: attempt });
        }
        Err(StorageError::Internal(format!(
            "Iceberg table {table}: {MAX_ATTEMPTS} commits of day {} lost to other writers",
            day_name(day)
        )))
    }
}

/// The entries of a new manifest that turns `held` (this node's files of
/// a day now) into `files`: unchanged ones existing, new ones added, the
/// rest deleted.
fn changes(held: &[Entry], files: &[DataFile], snapshot_id: i64) -> Vec<Entry> {
    let mut out = Vec::new();
    for f in files {
        match held.iter().find(|e| e.file == *f) {
            Some(e) => out.push(Entry { status: Status::Existing, ..e.clone() }),
            None => out.push(Entry {
                status: Status::Added,
                snapshot_id,
                sequence_number: None,
                file_sequence_number: None,
                file: f.clone(),
            }),
        }
    }
    for e in held.iter().filter(|e| !files.contains(&e.file)) {
        out.push(Entry { status: Status::Deleted, snapshot_id, ..e.clone() });
    }
    out
}

#[cfg(test)]
mod tests;
