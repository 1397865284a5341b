//! An Iceberg table's metadata file (`metadata/v{N}.metadata.json`,
//! format version 2), kept as JSON so that whatever another writer put in
//! it (properties, snapshots of its own) is written back untouched.

use arrow_schema::{DataType, Schema, TimeUnit};
use serde_json::{Value, json};

use crate::error::{Result, StorageError};

/// Snapshots a metadata file keeps (older ones are expired: their
/// manifest lists deleted).
pub const KEEP_SNAPSHOTS: usize = 100;
/// Earlier metadata files a metadata file names (older ones are deleted).
pub const KEEP_METADATA_FILES: usize = 20;
/// The id of the partition field, `ts_day`.
const PARTITION_FIELD_ID: i64 = 1000;
/// The table property that maps Parquet columns to field ids by name (the
/// mirror's parts carry no ids).
const NAME_MAPPING: &str = "schema.name-mapping.default";

fn bad(what: &str) -> StorageError {
    StorageError::Internal(format!("Iceberg table metadata: {what}"))
}

/// The Iceberg type of an Arrow column of the mirror.
fn iceberg_type(field: &arrow_schema::Field) -> Result<&'static str> {
    Ok(match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => "string",
        DataType::Int64 => "long",
        DataType::Int32 => "int",
        DataType::Boolean => "boolean",
        DataType::Binary | DataType::LargeBinary => "binary",
        DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Millisecond, Some(_)) => "timestamptz",
        DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Millisecond, None) => "timestamp",
        other => return Err(bad(&format!("column {} is of type {other}, which has no Iceberg type", field.name()))),
    })
}

/// The partition spec: `ts_day = day(ts)`.
pub fn spec_json(ts_field_id: i64) -> Value {
    json!({"spec-id": 0, "fields": [
        {"name": "ts_day", "transform": "day", "source-id": ts_field_id, "field-id": PARTITION_FIELD_ID}
    ]})
}

/// The metadata of a new table at `location` with the columns of `arrow`
/// (which must have `ts`), no snapshot yet.
pub fn new_table(location: &str, arrow: &Schema, now_ms: i64) -> Result<Value> {
    let mut fields = Vec::new();
    for (i, f) in arrow.fields().iter().enumerate() {
        fields.push(json!({"id": i + 1, "name": f.name(), "required": false, "type": iceberg_type(f)?}));
    }
    let ts = fields.iter().find(|f| f["name"] == "ts").and_then(|f| f["id"].as_i64());
    let ts = ts.ok_or_else(|| bad("the table has no ts column to partition by"))?;
    let schema = json!({"type": "struct", "schema-id": 0, "fields": fields});
    Ok(json!({
        "format-version": 2,
        "table-uuid": uuid::Uuid::new_v4().to_string(),
        "location": location,
        "last-sequence-number": 0,
        "last-updated-ms": now_ms,
        "last-column-id": arrow.fields().len(),
        "current-schema-id": 0,
        "schemas": [schema],
        "default-spec-id": 0,
        "partition-specs": [spec_json(ts)],
        "last-partition-id": PARTITION_FIELD_ID,
        "default-sort-order-id": 0,
        "sort-orders": [{"order-id": 0, "fields": []}],
        "properties": {
            "write.format.default": "parquet",
            NAME_MAPPING: name_mapping(&fields).to_string(),
        },
        "current-snapshot-id": -1,
        "refs": {},
        "snapshots": [],
        "snapshot-log": [],
        "metadata-log": [],
    }))
}

/// `[{"field-id": 1, "names": ["ts"]}, ...]` of `fields`.
fn name_mapping(fields: &[Value]) -> Value {
    Value::Array(fields.iter().map(|f| json!({"field-id": f["id"], "names": [f["name"]]})).collect())
}

/// The current schema.
fn current_schema(meta: &Value) -> Result<&Value> {
    let id = &meta["current-schema-id"];
    let schemas = meta["schemas"].as_array().ok_or_else(|| bad("no schemas"))?;
    schemas.iter().find(|s| s["schema-id"] == *id).ok_or_else(|| bad("no current schema"))
}

/// The current schema's fields.
fn current_fields(meta: &Value) -> Result<&Vec<Value>> {
    current_schema(meta)?["fields"].as_array().ok_or_else(|| bad("a schema without fields"))
}

/// The current schema and the partition spec as the JSON a manifest's
/// header carries.
pub fn manifest_header(meta: &Value) -> Result<(String, String)> {
    let schema = current_schema(meta)?;
    let specs = meta["partition-specs"].as_array().ok_or_else(|| bad("no partition specs"))?;
    let spec = specs.iter().find(|s| s["spec-id"] == 0).ok_or_else(|| bad("no partition spec 0"))?;
    if spec["fields"].as_array().map(Vec::len) != Some(1) || spec["fields"][0]["transform"] != "day" {
        return Err(bad("partition spec 0 is not day(ts), the one adstore writes"));
    }
    Ok((schema.to_string(), spec["fields"].to_string()))
}

/// Makes the current schema hold every column of `arrow` by name: columns
/// it lacks are added (optional, new ids) as a new schema, and the name
/// mapping follows. A column whose type changed is refused.
pub fn evolve(meta: &mut Value, arrow: &Schema) -> Result<()> {
    let fields = current_fields(meta)?.clone();
    let mut last = meta["last-column-id"].as_i64().ok_or_else(|| bad("no last-column-id"))?;
    let mut next = fields.clone();
    for f in arrow.fields() {
        let ty = iceberg_type(f)?;
        match fields.iter().find(|x| x["name"] == f.name().as_str()) {
            Some(x) if x["type"] == ty => {}
            Some(x) => {
                return Err(bad(&format!("column {} is {} in the table and {ty} in the file", f.name(), x["type"])));
            }
            None => {
                last += 1;
                next.push(json!({"id": last, "name": f.name(), "required": false, "type": ty}));
            }
        }
    }
    if next.len() == fields.len() {
        return Ok(());
    }
    let schemas = meta["schemas"].as_array_mut().ok_or_else(|| bad("no schemas"))?;
    let id = schemas.iter().filter_map(|s| s["schema-id"].as_i64()).max().unwrap_or(0) + 1;
    schemas.push(json!({"type": "struct", "schema-id": id, "fields": next}));
    meta["current-schema-id"] = json!(id);
    meta["last-column-id"] = json!(last);
    object_mut(meta, "properties")?.insert(NAME_MAPPING.into(), json!(name_mapping(&next).to_string()));
    Ok(())
}

/// When the table was last changed (epoch ms): its `last-updated-ms`, or a
/// later entry of its logs.
pub fn last_updated_ms(meta: &Value) -> i64 {
    let logged = |log: &str| {
        let entries = meta[log].as_array().into_iter().flatten();
        entries.filter_map(|e| e["timestamp-ms"].as_i64()).max().unwrap_or(i64::MIN)
    };
    meta["last-updated-ms"].as_i64().unwrap_or(i64::MIN).max(logged("snapshot-log")).max(logged("metadata-log"))
}

/// `meta[key]` as an object to write into (made one if absent).
fn object_mut<'a>(meta: &'a mut Value, key: &str) -> Result<&'a mut serde_json::Map<String, Value>> {
    let slot = meta.as_object_mut().ok_or_else(|| bad("not a JSON object"))?.entry(key).or_insert_with(|| json!({}));
    slot.as_object_mut().ok_or_else(|| bad(&format!("{key} is not an object")))
}

/// The current snapshot's id and manifest list, if the table has one.
pub fn current_snapshot(meta: &Value) -> Option<(i64, String)> {
    let id = meta["current-snapshot-id"].as_i64().filter(|id| *id >= 0)?;
    let snapshots = meta["snapshots"].as_array()?;
    let snapshot = snapshots.iter().find(|s| s["snapshot-id"].as_i64() == Some(id))?;
    Some((id, snapshot["manifest-list"].as_str()?.to_string()))
}

/// What `add_snapshot` dropped from the metadata: files no longer named.
#[derive(Debug, Default)]
pub struct Expired {
    pub manifest_lists: Vec<String>,
    pub metadata_files: Vec<String>,
}

/// A new snapshot made current: `snapshot` (its JSON), committed as the
/// metadata file after `previous` (the file `meta` was read from). Keeps
/// the last [`KEEP_SNAPSHOTS`] snapshots and [`KEEP_METADATA_FILES`]
/// metadata files; returns what it dropped.
pub fn add_snapshot(meta: &mut Value, snapshot: Value, previous: Option<&str>, now_ms: i64) -> Result<Expired> {
    let id = snapshot["snapshot-id"].clone();
    let sequence_number = snapshot["sequence-number"].clone();
    let mut expired = Expired::default();
    // Snapshots a tag or branch of another writer names are kept.
    let named: Vec<Value> = meta["refs"]
        .as_object()
        .into_iter()
        .flat_map(|refs| refs.iter())
        .filter(|(name, _)| *name != "main")
        .map(|(_, r)| r["snapshot-id"].clone())
        .collect();
    let snapshots = meta["snapshots"].as_array_mut().ok_or_else(|| bad("no snapshots"))?;
    snapshots.push(snapshot);
    let mut excess = snapshots.len().saturating_sub(KEEP_SNAPSHOTS);
    snapshots.retain(|s| {
        let expire = excess > 0 && !named.contains(&s["snapshot-id"]);
        if expire {
            excess -= 1;
            expired.manifest_lists.extend(s["manifest-list"].as_str().map(str::to_string));
        }
        !expire
    });
    let log = meta["snapshot-log"].as_array_mut().ok_or_else(|| bad("no snapshot-log"))?;
    log.push(json!({"snapshot-id": id, "timestamp-ms": now_ms}));
    let drop = log.len().saturating_sub(KEEP_SNAPSHOTS);
    log.drain(..drop);
    if let Some(previous) = previous {
        let updated = meta["last-updated-ms"].clone();
        let log = meta["metadata-log"].as_array_mut().ok_or_else(|| bad("no metadata-log"))?;
        log.push(json!({"metadata-file": previous, "timestamp-ms": updated}));
        let drop = log.len().saturating_sub(KEEP_METADATA_FILES);
        for old in log.drain(..drop) {
            expired.metadata_files.extend(old["metadata-file"].as_str().map(str::to_string));
        }
    }
    meta["current-snapshot-id"] = id.clone();
    object_mut(meta, "refs")?.insert("main".into(), json!({"snapshot-id": id, "type": "branch"}));
    meta["last-sequence-number"] = sequence_number;
    meta["last-updated-ms"] = json!(now_ms);
    Ok(expired)
}
