use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};

use super::*;

const DAY: i64 = 86_400_000;
const DAY0: i64 = 20_400 * DAY; // 2025-11-08

fn schema(extra: &[&str]) -> Schema {
    let mut fields = vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("advertiser_id", DataType::Utf8, false),
        Field::new("impressions", DataType::Int64, false),
    ];
    fields.extend(extra.iter().map(|n| Field::new(*n, DataType::Utf8, true)));
    Schema::new(fields)
}

fn file(name: &str, day: i64, rows: u64) -> DataFile {
    DataFile { path: format!("file:///parts/{name}.parquet"), day, rows, bytes: 100 + rows }
}

fn warehouse(dir: &std::path::Path, node: &str) -> Warehouse {
    let tier = ObjectTier::open(&dir.to_string_lossy(), std::time::Duration::from_secs(10)).expect("tier");
    Warehouse::new(Arc::new(tier), "iceberg", node)
}

fn sorted(mut files: Vec<DataFile>) -> Vec<DataFile> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn metadata_json(w: &Warehouse, table: &str) -> serde_json::Value {
    let (_, meta) = w.latest(&w.table_dir(table)).expect("read").expect("a table");
    meta
}

#[test]
fn a_day_committed_twice_is_one_snapshot_and_a_rewrite_deletes_what_it_no_longer_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = warehouse(dir.path(), "node-a");
    assert_eq!(w.commit_day("events", &schema(&[]), DAY0, &[]).expect("empty"), Commit::Unchanged);
    assert_eq!(w.current_metadata("events").expect("read"), None, "no table for nothing");

    let day0 = vec![file("a", DAY0, 10), file("b", DAY0, 20)];
    let first = w.commit_day("events", &schema(&[]), DAY0, &day0).expect("commit");
    assert!(matches!(first, Commit::Committed { version: 1, attempts: 1, .. }), "{first:?}");
    assert_eq!(w.commit_day("events", &schema(&[]), DAY0, &day0).expect("again"), Commit::Unchanged);
    let day1 = vec![file("c", DAY0 + DAY, 5)];
    w.commit_day("events", &schema(&[]), DAY0 + DAY, &day1).expect("day 1");
    let all = sorted([day0.clone(), day1.clone()].concat());
    assert_eq!(sorted(w.files("events").expect("files")), all);

    // Day 0 rewritten: b stays, a goes, d comes; day 1 untouched.
    let rewritten = vec![file("b", DAY0, 20), file("d", DAY0, 11)];
    let third = w.commit_day("events", &schema(&[]), DAY0, &rewritten).expect("rewrite");
    assert!(matches!(third, Commit::Committed { version: 3, .. }), "{third:?}");
    assert_eq!(sorted(w.files("events").expect("files")), sorted([rewritten, day1].concat()));
    let meta = metadata_json(&w, "events");
    let snapshots = meta["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 3);
    let last = &snapshots[2]["summary"];
    assert_eq!((last["operation"].as_str(), last["deleted-data-files"].as_str()), (Some("overwrite"), Some("1")));
    assert_eq!(meta["last-sequence-number"], 3);
    assert_eq!(meta["metadata-log"].as_array().map(Vec::len), Some(2));
    let hint = std::fs::read_to_string(dir.path().join("iceberg/adstore/events/metadata/version-hint.text"));
    assert_eq!(hint.expect("hint"), "3");
}

#[test]
fn nodes_keep_their_own_files_of_the_same_day_and_racing_commits_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<Warehouse> = (0..4).map(|n| warehouse(dir.path(), &format!("s3://bucket/node-{n}"))).collect();
    std::thread::scope(|s| {
        for (n, w) in nodes.iter().enumerate() {
            s.spawn(move || {
                for d in 0..5 {
                    let files = vec![file(&format!("n{n}-d{d}"), DAY0 + d * DAY, 1 + n as u64)];
                    w.commit_day("events", &schema(&[]), DAY0 + d * DAY, &files).expect("commit");
                }
            });
        }
    });
    let files = nodes[0].files("events").expect("files");
    assert_eq!(files.len(), 20, "every node's every day: {files:?}");
    let meta = metadata_json(&nodes[0], "events");
    assert_eq!(meta["last-sequence-number"], 20, "one snapshot per commit, none lost");
    let hint = std::fs::read_to_string(dir.path().join("iceberg/adstore/events/metadata/version-hint.text"));
    assert_eq!(hint.expect("hint"), "20", "the hint names the last version");
    // One node rewriting a day leaves the others' files of that day alone.
    nodes[1].commit_day("events", &schema(&[]), DAY0, &[file("n1-d0-again", DAY0, 9)]).expect("rewrite");
    let files = nodes[0].files("events").expect("files");
    assert_eq!(files.len(), 20);
    assert_eq!(files.iter().filter(|f| f.day == DAY0).count(), 4);
    assert!(files.iter().any(|f| f.path.ends_with("n1-d0-again.parquet")));
    assert!(!files.iter().any(|f| f.path.ends_with("n1-d0.parquet")));
}

#[test]
fn new_columns_evolve_the_schema_and_old_snapshots_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = warehouse(dir.path(), "node");
    w.commit_day("r_day", &schema(&[]), DAY0, &[file("a", DAY0, 1)]).expect("commit");
    w.commit_day("r_day", &schema(&["country"]), DAY0 + DAY, &[file("b", DAY0 + DAY, 1)]).expect("commit");
    let meta = metadata_json(&w, "r_day");
    assert_eq!(meta["current-schema-id"], 1);
    assert_eq!(meta["last-column-id"], 4);
    let mapping: serde_json::Value =
        serde_json::from_str(meta["properties"]["schema.name-mapping.default"].as_str().expect("mapping"))
            .expect("json");
    assert_eq!(mapping[3], serde_json::json!({"field-id": 4, "names": ["country"]}));
    let retyped = Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("impressions", DataType::Utf8, false),
    ]);
    let refused = w.commit_day("r_day", &retyped, DAY0, &[file("c", DAY0, 1)]).expect_err("type changed");
    assert!(refused.to_string().contains("column impressions is \"long\""), "{refused}");

    for d in 0..(metadata::KEEP_SNAPSHOTS as i64 + 5) {
        w.commit_day("r_day", &schema(&["country"]), DAY0 + (d % 3) * DAY, &[file(&format!("x{d}"), DAY0, 1)])
            .expect("commit");
    }
    let meta = metadata_json(&w, "r_day");
    assert_eq!(meta["snapshots"].as_array().map(Vec::len), Some(metadata::KEEP_SNAPSHOTS));
    assert_eq!(meta["metadata-log"].as_array().map(Vec::len), Some(metadata::KEEP_METADATA_FILES));
    let listed = std::fs::read_dir(dir.path().join("iceberg/adstore/r_day/metadata")).expect("dir");
    let names: Vec<String> = listed.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let lists = names.iter().filter(|n| n.starts_with("snap-")).count();
    let metas = names.iter().filter(|n| n.ends_with(".metadata.json")).count();
    assert_eq!(lists, metadata::KEEP_SNAPSHOTS, "expired manifest lists deleted");
    assert_eq!(metas, metadata::KEEP_METADATA_FILES + 1, "older metadata files deleted");
}
