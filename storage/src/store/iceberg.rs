//! The Iceberg task (`[tiering] iceberg`): each day of the Parquet mirror
//! committed to the Iceberg tables (`crate::iceberg` has the format and
//! the commit protocol).
//!
//! ```text
//!  catalog.mirrored[day] ≠ catalog.iceberg[day]         (a new day, a rewritten one, an erasure's)
//!    catalog commit: iceberg[day] = what it held ∪ mirrored[day] ∪ {UNCOMMITTED}
//!      (every part a table may name from here on: the mirror task deletes none of them)
//!    for each table the day's parts belong to now or did at the last commit:
//!      each part's size and Parquet footer (rows, columns) read from the object store
//!      warehouse.commit_day(table, day, parts)          this node's files of that day, replaced
//!    catalog commit: iceberg[day] = mirrored[day]        crash before: committed again, unchanged
//!    parts of the last commit the mirror no longer names deleted (the mirror task left them
//!    for this commit, so the tables never name a deleted file)
//! ```
//!
//! Minute rollups stay out: the tables are raw events and each rollup's
//! hour and day rows (`events`, `{rollup}_hour`, `{rollup}_day`).

use std::collections::BTreeMap;
use std::sync::Arc;

use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};

use super::{SealReport, Store};
use crate::billing::day_name;
use crate::error::{Result, StorageError};
use crate::iceberg::{Commit, DataFile, Warehouse};
use crate::manifest::{Catalog, CatalogEdit};
use crate::mirror::{EVENTS_PREFIX, MIRROR_DIR};
use crate::tier::ObjectTier;

impl Store {
    /// One pass of the Iceberg task: the oldest due day (see the module docs).
    pub fn commit_iceberg(&self) -> Result<SealReport> {
        if !self.inner.config.iceberg {
            return Ok(SealReport::default());
        }
        // No erasure meanwhile: it rewrites parts in place.
        let _pass = self.inner.object_pass.lock();
        let catalog = self.catalog();
        let due: Vec<i64> = iceberg_due(&catalog).collect();
        super::mirror::one_day(&self.inner.iceberg_failed, &due, |d| *d, |day| self.commit_iceberg_day(&catalog, *day))
    }

    /// Days of the mirror not yet committed to the Iceberg tables as they
    /// are now (0 when the tables are off).
    pub fn iceberg_days_due(&self) -> usize {
        match self.inner.config.iceberg {
            true => iceberg_due(&self.catalog()).count(),
            false => 0,
        }
    }

    /// The warehouse, opened on first use.
    fn warehouse(&self, tier: &Arc<ObjectTier>) -> Result<Arc<Warehouse>> {
        let mut slot = self.inner.warehouse.lock();
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let node = tier.location("");
        let warehouse = match &self.inner.config.iceberg_warehouse {
            Some(url) => {
                let timeout = std::time::Duration::from_millis(self.inner.config.object_store_timeout_ms.max(1));
                let opened = ObjectTier::open(url, timeout).map_err(|e| match e {
                    StorageError::Config(m) => StorageError::Config(m.replace("object_store", "iceberg_warehouse")),
                    other => other,
                })?;
                Warehouse::new(Arc::new(opened), "", &node)
            }
            None => Warehouse::new(tier.clone(), "iceberg", &node),
        };
        let warehouse = Arc::new(warehouse);
        *slot = Some(warehouse.clone());
        Ok(warehouse)
    }

    /// Commits `day`'s parts to every table they belong to, then records it.
    fn commit_iceberg_day(&self, catalog: &Catalog, day: i64) -> Result<SealReport> {
        let tier = self.object_tier()?;
        let warehouse = self.warehouse(&tier)?;
        let keys = catalog.mirrored.get(&day).cloned().unwrap_or_default();
        let held = catalog.iceberg.get(&day).cloned().unwrap_or_default();
        // From here a table may name any of these: the mirror task keeps
        // them until the commit below is recorded (a crash in between
        // leaves them marked, and the day due).
        let marked = uncommitted(&held, &keys);
        if held != marked {
            let _one_sealer = self.inner.seal_lock.lock();
            if self.catalog().mirrored.get(&day) != Some(&keys) {
                return Ok(SealReport::default());
            }
            let edit = CatalogEdit { iceberg: vec![(day, marked)], ..CatalogEdit::default() };
            let next = self.inner.manifest.commit(&edit)?;
            self.inner.visible.write().catalog = next;
        }
        // The tables of the parts now, and of those committed before (a
        // table whose parts of the day are all gone has them deleted).
        let mut tables: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for key in &keys {
            if let Some(table) = table_of(key) {
                tables.entry(table).or_default().push(key);
            }
        }
        for key in &held {
            if let Some(table) = table_of(key) {
                tables.entry(table).or_default();
            }
        }
        let mut report = SealReport::default();
        for (table, keys) in &tables {
            let mut files = Vec::with_capacity(keys.len());
            let mut schemas = Vec::with_capacity(keys.len());
            for key in keys {
                let (file, columns) = read_part(&tier, key, day)?;
                schemas.push(columns);
                files.push(file);
            }
            // Every column of every part (a rollup's parts of one day may
            // come from before and after a change of its columns).
            let schema = arrow_schema::Schema::try_merge(schemas).map_err(|e| {
                StorageError::Internal(format!("Iceberg table {table}: parts of {}: {e}", day_name(day)))
            })?;
            if let Commit::Committed { version, attempts, .. } = warehouse.commit_day(table, &schema, day, &files)? {
                report.rows_out += files.iter().map(|f| f.rows as usize).sum::<usize>();
                tracing::info!(table, day = %day_name(day), files = files.len(), version, attempts, "Iceberg commit");
            }
        }
        let _one_sealer = self.inner.seal_lock.lock();
        if self.catalog().mirrored.get(&day) != Some(&keys) {
            // Rewritten meanwhile: due again.
            return Ok(report);
        }
        let edit = CatalogEdit { iceberg: vec![(day, keys.clone())], ..CatalogEdit::default() };
        let next = self.inner.manifest.commit(&edit)?;
        self.inner.visible.write().catalog = next;
        drop(_one_sealer);
        report.partitions += 1;
        // Parts the tables held and the mirror no longer names (a rewritten
        // day's old version, which the mirror task left for this commit).
        for old in held.iter().filter(|k| !keys.contains(k) && k.as_str() != UNCOMMITTED) {
            if let Err(e) = tier.remove(old) {
                tracing::warn!(key = old, error = %e, "a replaced part of the Parquet mirror was not deleted");
            }
        }
        Ok(report)
    }
}

/// The mark of a day in `Catalog::iceberg` whose keys are not (all)
/// committed as they are: a commit under way, or parts an erasure
/// rewrote in place. It is no key of the mirror, so the day is due.
const UNCOMMITTED: &str = "!uncommitted";

/// `held` (a day's keys in `Catalog::iceberg`) with `more`, marked
/// uncommitted.
pub(super) fn uncommitted(held: &[String], more: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = held.iter().chain(more).cloned().collect();
    keys.push(UNCOMMITTED.to_string());
    keys.sort();
    keys.dedup();
    keys
}

/// The mirrored days whose parts differ from those committed.
fn iceberg_due(catalog: &Catalog) -> impl Iterator<Item = i64> + '_ {
    catalog.mirrored.iter().filter(|(day, keys)| catalog.iceberg.get(day) != Some(keys)).map(|(day, _)| *day)
}

/// The table a part of the mirror belongs to: `events`, `{rollup}_hour`,
/// `{rollup}_day`; `None` for minute rows.
fn table_of(key: &str) -> Option<String> {
    if key.starts_with(EVENTS_PREFIX) {
        return Some("events".to_string());
    }
    let rest = key.strip_prefix(MIRROR_DIR)?.strip_prefix("/rollups/")?;
    let mut parts = rest.split('/');
    let (rollup, level) = (parts.next()?, parts.next()?);
    matches!(level, "hour" | "day").then(|| format!("{rollup}_{level}"))
}

/// Part `key` of `day` as a data file, and its columns: its size, and its
/// Parquet footer's row count and schema (two range reads).
fn read_part(tier: &ObjectTier, key: &str, day: i64) -> Result<(DataFile, arrow_schema::Schema)> {
    let bad = |what: String| StorageError::Internal(format!("{}: {what}", tier.location(key)));
    let size = tier.size(key)?;
    const TAIL: u64 = parquet::file::FOOTER_SIZE as u64;
    if size < TAIL {
        return Err(bad(format!("{size} bytes is no Parquet file")));
    }
    let tail = tier.get_range(key, size - TAIL..size)?;
    let tail: [u8; parquet::file::FOOTER_SIZE] = tail.as_ref().try_into().map_err(|_| bad("short read".into()))?;
    let footer = FooterTail::try_new(&tail).map_err(|e| bad(e.to_string()))?;
    let len = footer.metadata_length() as u64;
    if len > size - TAIL {
        return Err(bad(format!("a footer of {len} bytes in a file of {size}")));
    }
    let bytes = tier.get_range(key, size - TAIL - len..size - TAIL)?;
    let meta = ParquetMetaDataReader::decode_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let file = meta.file_metadata();
    let schema = parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| bad(e.to_string()))?;
    let rows = u64::try_from(file.num_rows()).map_err(|_| bad("a negative row count".into()))?;
    Ok((DataFile { path: tier.location(key), day, rows, bytes: size }, schema))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{table_of, uncommitted};
    use crate::event::{Event, EventBatch, EventType};
    use crate::iceberg::Warehouse;
    use crate::manifest::CatalogEdit;
    use crate::seal::SealPipeline;
    use crate::store::{Store, StoreConfig};
    use crate::tier::ObjectTier;

    const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
    const DAY: i64 = 86_400_000;

    #[test]
    fn settled_days_are_in_the_tables_and_an_erasure_commits_its_days_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            fsync: false,
            close_idle_ms: 0,
            parquet_mirror: true,
            iceberg: true,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
        let events: Vec<Event> = (0..300)
            .map(|i| Event {
                event_id: format!("e{i}"),
                kind: if i % 10 == 0 { EventType::Click } else { EventType::Impression },
                ts: BASE + i * 600_000, // 50 h: three days
                publisher_id: "p".into(),
                advertiser_id: format!("a{}", i % 3),
                campaign_id: "c".into(),
                ad_id: "x".into(),
                user_key: Some(format!("u{}", i % 7)),
                ..Event::default()
            })
            .collect();
        let mut events = events;
        // Later traffic closes the three days.
        let later = events[1].clone();
        events.extend((0..3).map(|i| Event { event_id: format!("late{i}"), ts: BASE + 4 * DAY, ..later.clone() }));
        store.append(&EventBatch::from_events(&events)).expect("append");
        store.seal_all().expect("seal");
        crate::testutil::settle(&store);
        let catalog = store.catalog();
        assert_eq!(catalog.mirrored.len(), 3);
        assert_eq!(catalog.iceberg, catalog.mirrored, "every mirrored day committed");
        assert_eq!(store.iceberg_days_due(), 0);

        let objects = dir.path().join("objects");
        let tier = ObjectTier::open(&objects.to_string_lossy(), std::time::Duration::from_secs(10)).expect("tier");
        let node = tier.location("");
        let warehouse = Warehouse::new(Arc::new(tier), "iceberg", &node);
        let files = warehouse.files("events").expect("events");
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 300, "every event once");
        let mut paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        paths.sort();
        let mut keys: Vec<String> = catalog
            .mirrored
            .values()
            .flatten()
            .filter(|k| k.starts_with("parquet/events/"))
            .map(|k| format!("{node}{k}"))
            .collect();
        keys.sort();
        assert_eq!(paths, keys, "the tables' files are the mirror's parts");
        for table in ["campaign_hour", "campaign_day"] {
            assert!(!warehouse.files(table).expect(table).is_empty(), "{table}");
        }
        assert!(warehouse.files("campaign_minute").expect("none").is_empty());

        // A commit cut short (marked, the tables maybe ahead) is finished
        // by the next pass, and a part only the mark named is deleted.
        let (day, keys) = catalog.mirrored.iter().next().map(|(d, k)| (*d, k.clone())).expect("a day");
        let stray = format!("{}/stray.parquet", keys[0].rsplit_once('/').expect("a directory").0);
        std::fs::write(objects.join(&stray), b"an earlier attempt's").expect("stray part");
        let edit = CatalogEdit {
            iceberg: vec![(day, uncommitted(&keys, std::slice::from_ref(&stray)))],
            ..CatalogEdit::default()
        };
        let next = store.inner.manifest.commit(&edit).expect("commit");
        store.inner.visible.write().catalog = next;
        assert_eq!(store.iceberg_days_due(), 1);
        crate::testutil::settle(&store);
        assert_eq!(store.catalog().iceberg, catalog.mirrored);
        assert!(!objects.join(&stray).exists(), "a part no table names any more is deleted");
        assert_eq!(warehouse.files("events").expect("events").iter().map(|f| f.rows).sum::<u64>(), 300);

        // An erasure rewrites parts in place: their days are committed
        // again with the new sizes.
        let before = warehouse.files("events").expect("events");
        let report = store.erase("u3", None, 0).expect("erase");
        assert!(report.mirror_days > 0, "{report:?}");
        assert!(store.iceberg_days_due() > 0, "the rewritten days are due");
        crate::testutil::settle(&store);
        assert_eq!(store.iceberg_days_due(), 0);
        let after = warehouse.files("events").expect("events");
        assert_eq!(after.iter().map(|f| f.rows).sum::<u64>(), 300);
        assert_ne!(before, after, "new sizes recorded");
        for f in &after {
            let key = f.path.strip_prefix(&node).expect("under the store");
            let on_disk = std::fs::metadata(objects.join(key)).expect("part").len();
            assert_eq!(f.bytes, on_disk, "{key}");
        }
    }

    #[test]
    fn parts_belong_to_the_table_of_their_level() {
        assert_eq!(table_of("parquet/events/day=2026-11-02/part-1.parquet").as_deref(), Some("events"));
        assert_eq!(
            table_of("parquet/rollups/campaign/hour/day=2026-11-02/p.parquet").as_deref(),
            Some("campaign_hour")
        );
        assert_eq!(table_of("parquet/rollups/campaign/day/day=2026-11-02/p.parquet").as_deref(), Some("campaign_day"));
        assert_eq!(table_of("parquet/rollups/campaign/minute/day=2026-11-02/p.parquet"), None);
    }
}
