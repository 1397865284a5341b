//! The Avro files of an Iceberg table (format version 2): manifests, which
//! list data files, and manifest lists, which list a snapshot's
//! manifests. Fields carry the spec's `field-id`s, which readers resolve
//! by; the optional fields adstore has no use for (column bounds, value
//! counts, partition summaries) are left out, as the spec allows.

use apache_avro::types::Value;
use apache_avro::{Reader, Schema, Writer};

use super::DataFile;
use crate::error::{Result, StorageError};

/// `manifest_entry`: one data file and what a snapshot did to it. The
/// partition is the table's one field, `ts_day` (`day(ts)`, id 1000).
const MANIFEST_ENTRY: &str = r#"{"type": "record", "name": "manifest_entry", "fields": [
  {"name": "status", "type": "int", "field-id": 0},
  {"name": "snapshot_id", "type": ["null", "long"], "default": null, "field-id": 1},
  {"name": "sequence_number", "type": ["null", "long"], "default": null, "field-id": 3},
  {"name": "file_sequence_number", "type": ["null", "long"], "default": null, "field-id": 4},
  {"name": "data_file", "field-id": 2, "type": {"type": "record", "name": "r2", "fields": [
    {"name": "content", "type": "int", "field-id": 134},
    {"name": "file_path", "type": "string", "field-id": 100},
    {"name": "file_format", "type": "string", "field-id": 101},
    {"name": "partition", "field-id": 102, "type": {"type": "record", "name": "r102", "fields": [
      {"name": "ts_day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null, "field-id": 1000}
    ]}},
    {"name": "record_count", "type": "long", "field-id": 103},
    {"name": "file_size_in_bytes", "type": "long", "field-id": 104}
  ]}}
]}"#;

/// `manifest_file`: one manifest of a snapshot, in its manifest list.
const MANIFEST_FILE: &str = r#"{"type": "record", "name": "manifest_file", "fields": [
  {"name": "manifest_path", "type": "string", "field-id": 500},
  {"name": "manifest_length", "type": "long", "field-id": 501},
  {"name": "partition_spec_id", "type": "int", "field-id": 502},
  {"name": "content", "type": "int", "field-id": 517},
  {"name": "sequence_number", "type": "long", "field-id": 515},
  {"name": "min_sequence_number", "type": "long", "field-id": 516},
  {"name": "added_snapshot_id", "type": "long", "field-id": 503},
  {"name": "added_files_count", "type": "int", "field-id": 504},
  {"name": "existing_files_count", "type": "int", "field-id": 505},
  {"name": "deleted_files_count", "type": "int", "field-id": 506},
  {"name": "added_rows_count", "type": "long", "field-id": 512},
  {"name": "existing_rows_count", "type": "long", "field-id": 513},
  {"name": "deleted_rows_count", "type": "long", "field-id": 514}
]}"#;

const DAY_MS: i64 = 86_400_000;

/// What a snapshot did to a data file (`status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Existing = 0,
    Added = 1,
    Deleted = 2,
}

/// One `manifest_entry`. Sequence numbers are `None` only for an added
/// file as written: it inherits its manifest's.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub status: Status,
    pub snapshot_id: i64,
    pub sequence_number: Option<i64>,
    pub file_sequence_number: Option<i64>,
    pub file: DataFile,
}

/// One `manifest_file` of a manifest list.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestFile {
    pub path: String,
    pub length: i64,
    pub sequence_number: i64,
    pub min_sequence_number: i64,
    pub added_snapshot_id: i64,
    /// Files and rows added, existing, deleted.
    pub files: [i32; 3],
    pub rows: [i64; 3],
}

impl ManifestFile {
    /// The entry of `entries`, written as `path` (`length` bytes) by
    /// snapshot `snapshot_id` of sequence number `sequence_number`.
    pub fn of(path: String, length: usize, snapshot_id: i64, sequence_number: i64, entries: &[Entry]) -> Self {
        let (mut files, mut rows) = ([0i32; 3], [0i64; 3]);
        let mut min_sequence_number = sequence_number;
        for e in entries {
            let slot = match e.status {
                Status::Added => 0,
                Status::Existing => 1,
                Status::Deleted => 2,
            };
            files[slot] = files[slot].saturating_add(1);
            rows[slot] = rows[slot].saturating_add(i64::try_from(e.file.rows).unwrap_or(i64::MAX));
            if e.status != Status::Deleted {
                min_sequence_number = min_sequence_number.min(e.sequence_number.unwrap_or(sequence_number));
            }
        }
        ManifestFile {
            path,
            length: length as i64,
            sequence_number,
            min_sequence_number,
            added_snapshot_id: snapshot_id,
            files,
            rows,
        }
    }
}

fn schema(json: &str) -> Result<Schema> {
    Schema::parse_str(json).map_err(|e| StorageError::Internal(format!("Iceberg Avro schema: {e}")))
}

fn failed(what: &str) -> impl Fn(apache_avro::Error) -> StorageError + '_ {
    move |e| StorageError::Internal(format!("{what}: {e}"))
}

fn optional_long(v: Option<i64>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(Value::Long(v))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

/// A manifest of `entries`, with the header metadata the spec asks for
/// (the table's schema and partition spec as JSON).
pub fn write_manifest(entries: &[Entry], schema_json: &str, schema_id: i64, spec_json: &str) -> Result<Vec<u8>> {
    let schema = schema(MANIFEST_ENTRY)?;
    let mut writer = Writer::new(&schema, Vec::new());
    let schema_id = schema_id.to_string();
    for (key, value) in [
        ("schema", schema_json),
        ("schema-id", schema_id.as_str()),
        ("partition-spec", spec_json),
        ("partition-spec-id", "0"),
        ("format-version", "2"),
        ("content", "data"),
    ] {
        writer.add_user_metadata(key.into(), value).map_err(failed("manifest header"))?;
    }
    for e in entries {
        let day = i32::try_from(e.file.day.div_euclid(DAY_MS))
            .map_err(|_| StorageError::Internal(format!("{}: day out of range", e.file.path)))?;
        let file = Value::Record(vec![
            ("content".into(), Value::Int(0)),
            ("file_path".into(), Value::String(e.file.path.clone())),
            ("file_format".into(), Value::String("PARQUET".into())),
            ("partition".into(), Value::Record(vec![("ts_day".into(), Value::Union(1, Box::new(Value::Date(day))))])),
            ("record_count".into(), Value::Long(i64::try_from(e.file.rows).unwrap_or(i64::MAX))),
            ("file_size_in_bytes".into(), Value::Long(i64::try_from(e.file.bytes).unwrap_or(i64::MAX))),
        ]);
        let entry = Value::Record(vec![
            ("status".into(), Value::Int(e.status as i32)),
            ("snapshot_id".into(), optional_long(Some(e.snapshot_id))),
            ("sequence_number".into(), optional_long(e.sequence_number)),
            ("file_sequence_number".into(), optional_long(e.file_sequence_number)),
            ("data_file".into(), file),
        ]);
        writer.append(entry).map_err(failed("manifest entry"))?;
    }
    writer.into_inner().map_err(failed("manifest"))
}

/// The entries of a manifest listed by `list` (`bytes` its file), their
/// inherited sequence numbers filled in.
pub fn read_manifest(bytes: &[u8], list: &ManifestFile) -> Result<Vec<Entry>> {
    let what = format!("manifest {}", list.path);
    let reader = Reader::new(bytes).map_err(|e| StorageError::Internal(format!("{what}: {e}")))?;
    let mut out = Vec::new();
    for value in reader {
        let value = value.map_err(|e| StorageError::Internal(format!("{what}: {e}")))?;
        let bad = |field: &str| StorageError::Internal(format!("{what}: entry without a readable {field}"));
        let file = get(&value, "data_file").ok_or_else(|| bad("data_file"))?;
        let status = match long(get(&value, "status")) {
            Some(0) => Status::Existing,
            Some(1) => Status::Added,
            Some(2) => Status::Deleted,
            _ => return Err(bad("status")),
        };
        // A null snapshot id or sequence number is the manifest's (inherited).
        let inherited = long(get(&value, "sequence_number")).or(Some(list.sequence_number));
        let day = get(file, "partition").and_then(|p| long(get(p, "ts_day")));
        out.push(Entry {
            status,
            snapshot_id: long(get(&value, "snapshot_id")).unwrap_or(list.added_snapshot_id),
            sequence_number: inherited,
            file_sequence_number: long(get(&value, "file_sequence_number")).or(inherited),
            file: DataFile {
                path: string(get(file, "file_path")).ok_or_else(|| bad("file_path"))?,
                day: day.and_then(|d| d.checked_mul(DAY_MS)).ok_or_else(|| bad("partition"))?,
                rows: count(get(file, "record_count")).ok_or_else(|| bad("record_count"))?,
                bytes: count(get(file, "file_size_in_bytes")).ok_or_else(|| bad("file_size_in_bytes"))?,
            },
        });
    }
    Ok(out)
}

/// A manifest list of `manifests`, for snapshot `snapshot_id`.
pub fn write_manifest_list(
    manifests: &[ManifestFile],
    snapshot_id: i64,
    parent: Option<i64>,
    sequence_number: i64,
) -> Result<Vec<u8>> {
    let schema = schema(MANIFEST_FILE)?;
    let mut writer = Writer::new(&schema, Vec::new());
    let parent = parent.map_or_else(|| "null".to_string(), |p| p.to_string());
    for (key, value) in [
        ("snapshot-id", snapshot_id.to_string()),
        ("parent-snapshot-id", parent),
        ("sequence-number", sequence_number.to_string()),
        ("format-version", "2".to_string()),
    ] {
        writer.add_user_metadata(key.into(), value).map_err(failed("manifest list header"))?;
    }
    for m in manifests {
        let record = Value::Record(vec![
            ("manifest_path".into(), Value::String(m.path.clone())),
            ("manifest_length".into(), Value::Long(m.length)),
            ("partition_spec_id".into(), Value::Int(0)),
            ("content".into(), Value::Int(0)),
            ("sequence_number".into(), Value::Long(m.sequence_number)),
            ("min_sequence_number".into(), Value::Long(m.min_sequence_number)),
            ("added_snapshot_id".into(), Value::Long(m.added_snapshot_id)),
            ("added_files_count".into(), Value::Int(m.files[0])),
            ("existing_files_count".into(), Value::Int(m.files[1])),
            ("deleted_files_count".into(), Value::Int(m.files[2])),
            ("added_rows_count".into(), Value::Long(m.rows[0])),
            ("existing_rows_count".into(), Value::Long(m.rows[1])),
            ("deleted_rows_count".into(), Value::Long(m.rows[2])),
        ]);
        writer.append(record).map_err(failed("manifest list entry"))?;
    }
    writer.into_inner().map_err(failed("manifest list"))
}

/// The manifests a manifest list (`bytes`, the file at `path`) names.
pub fn read_manifest_list(bytes: &[u8], path: &str) -> Result<Vec<ManifestFile>> {
    let what = format!("manifest list {path}");
    let reader = Reader::new(bytes).map_err(|e| StorageError::Internal(format!("{what}: {e}")))?;
    let mut out = Vec::new();
    for value in reader {
        let value = value.map_err(|e| StorageError::Internal(format!("{what}: {e}")))?;
        let bad = |field: &str| StorageError::Internal(format!("{what}: manifest without a readable {field}"));
        let req = |field: &'static str| long(get(&value, field)).ok_or_else(|| bad(field));
        if long(get(&value, "content")).unwrap_or(0) != 0 {
            return Err(StorageError::Internal(format!("{what}: delete manifests are not supported")));
        }
        let count = |a: &'static str, b: &'static str| {
            let n = long(get(&value, a)).or_else(|| long(get(&value, b)));
            n.and_then(|n| i32::try_from(n).ok()).ok_or_else(|| bad(a))
        };
        out.push(ManifestFile {
            path: string(get(&value, "manifest_path")).ok_or_else(|| bad("manifest_path"))?,
            length: req("manifest_length")?,
            sequence_number: req("sequence_number")?,
            min_sequence_number: req("min_sequence_number")?,
            added_snapshot_id: req("added_snapshot_id")?,
            files: [
                count("added_files_count", "added_data_files_count")?,
                count("existing_files_count", "existing_data_files_count")?,
                count("deleted_files_count", "deleted_data_files_count")?,
            ],
            rows: [req("added_rows_count")?, req("existing_rows_count")?, req("deleted_rows_count")?],
        });
    }
    Ok(out)
}

/// Field `name` of record `v`.
fn get<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        Value::Union(_, inner) => get(inner, name),
        _ => None,
    }
}

fn long(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Long(n) => Some(*n),
        Value::Int(n) | Value::Date(n) => Some(i64::from(*n)),
        Value::Union(_, inner) => long(Some(inner)),
        _ => None,
    }
}

/// A count: a long that is not negative.
fn count(v: Option<&Value>) -> Option<u64> {
    long(v).and_then(|n| u64::try_from(n).ok())
}

fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Union(_, inner) => string(Some(inner)),
        _ => None,
    }
}
