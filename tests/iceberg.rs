//! The archive as Iceberg tables, read back by pyiceberg (the Apache
//! project's Python client, installed by `scripts/test`) the way Trino,
//! Spark or DuckDB would read them: from the table's location, every file
//! of its current snapshot. Its numbers must be those sent and those the
//! nodes answer, for one node through a reprocess of a committed day, and
//! for two nodes appending their days to the same tables in a real
//! S3-compatible store (moto), racing for each commit.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const SETTLE: &str = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n\n\
                      [ingest]\nallowed_lateness_ms = 3600000\n";

/// What pyiceberg reads from the table at `location` (`kind`: `events` or
/// `rollup`): `{"days": [[day, impressions, clicks]...], "files", "snapshots", "rows"}`.
fn pyiceberg(location: &str, kind: &str, properties: &serde_json::Value) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iceberg/read.py");
    let out = Command::new("python3")
        .args([script, location, kind, &properties.to_string()])
        .output()
        .expect("python3 with pyiceberg (pip install 'pyiceberg[pyarrow]'; scripts/test installs it)");
    assert!(out.status.success(), "pyiceberg failed on {location}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A map of the catalog (`mirrored` or `iceberg`): day → keys of parts.
fn catalog_days(dir: &Path, field: &str) -> BTreeMap<String, Vec<String>> {
    let Ok(bytes) = std::fs::read(dir.join("catalog.json")) else { return BTreeMap::new() };
    let catalog: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    serde_json::from_value(catalog["catalog"][field].clone()).unwrap_or_default()
}

/// Waits until `days` days are mirrored and all of them committed as they are.
fn wait_committed(dir: &Path, days: usize, what: &str) -> BTreeMap<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mirrored = catalog_days(dir, "mirrored");
        if mirrored.len() == days && catalog_days(dir, "iceberg") == mirrored {
            return mirrored;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: mirrored {mirrored:?}, committed {:?}",
            catalog_days(dir, "iceberg")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per day: impressions and clicks, each multiplied by `times`, as
/// pyiceberg prints them.
fn expected(per_day: &PerDay, times: u64) -> serde_json::Value {
    let rows: Vec<[String; 3]> = per_day
        .iter()
        .map(|(day, (imps, clicks))| [date(*day), (imps * times).to_string(), (clicks * times).to_string()])
        .collect();
    serde_json::to_value(rows).expect("json")
}

/// The tables a node writes for the default rollups, with their kind.
const TABLES: [(&str, &str); 3] = [("events", "events"), ("campaign_hour", "rollup"), ("campaign_day", "rollup")];

#[test]
fn a_nodes_days_are_iceberg_tables_that_pyiceberg_reads_and_a_reprocess_replaces_its_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = format!("{SETTLE}\n[tiering]\nparquet_mirror = true\niceberg = true\n");
    let server = Server::start(&dir, Some(&config));
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    let before = wait_committed(&dir, per_day.len(), "every day committed");

    let warehouse = dir.join("objects/iceberg/adstore");
    let none = serde_json::json!({});
    let mut snapshots = BTreeMap::new();
    for (table, kind) in TABLES {
        let got = pyiceberg(&warehouse.join(table).to_string_lossy(), kind, &none);
        assert_eq!(got["days"], expected(&per_day, 1), "{table}: {got}");
        snapshots.insert(table, got["snapshots"].as_u64().expect("snapshots"));
    }
    assert_eq!(snapshots["events"], per_day.len() as u64, "a snapshot per day");

    // A reprocess re-seals day 0: its parts are new files, the old ones
    // are deleted from the table in the same snapshot; the numbers stay.
    let first = before.keys().next().expect("a day").clone();
    let body = serde_json::json!({ "from": day0, "to": day0 + DAY_MS, "reason": "test" }).to_string();
    let (status, job) = server.post("/v1/reprocess", "application/json", None, body.as_bytes());
    assert_eq!(status, 202, "{job}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mirrored = catalog_days(&dir, "mirrored");
        if mirrored[&first] != before[&first] && catalog_days(&dir, "iceberg") == mirrored {
            break;
        }
        assert!(Instant::now() < deadline, "the reprocessed day committed again");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (table, kind) in TABLES {
        let got = pyiceberg(&warehouse.join(table).to_string_lossy(), kind, &none);
        assert_eq!(got["days"], expected(&per_day, 1), "{table} after the reprocess: {got}");
        assert!(got["snapshots"].as_u64() > Some(snapshots[table]), "{table}: a new snapshot: {got}");
    }
    assert_eq!(server.metric("adstore_iceberg_commits_due"), 0);
    // The old parts, kept until the tables stopped naming them, are gone.
    let mut named: Vec<String> = catalog_days(&dir, "mirrored").into_values().flatten().collect();
    named.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    while parts(&dir.join("objects")) != named {
        assert!(Instant::now() < deadline, "old parts deleted: {:?} vs {named:?}", parts(&dir.join("objects")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.stop().success());
}

/// The keys of the `.parquet` files under `objects/parquet`, sorted.
fn parts(objects: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![objects.join("parquet")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                out.push(path.strip_prefix(objects).expect("under").to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Per day: impressions and clicks sent.
type PerDay = BTreeMap<i64, (u64, u64)>;

/// `three_days` of one node: its own event ids and advertisers.
fn node_days(day0: i64, node: &str) -> (Vec<u8>, PerDay) {
    let (body, per_day) = three_days(day0);
    let body = String::from_utf8(body).expect("utf-8");
    let body = body
        .replace("\"event_id\":\"", &format!("\"event_id\":\"{node}-"))
        .replace("\"advertiser_id\":\"", &format!("\"advertiser_id\":\"{node}-"))
        .replace("\"impression_id\":\"", &format!("\"impression_id\":\"{node}-"))
        .replace("\"click_id\":\"", &format!("\"click_id\":\"{node}-"));
    (body.into_bytes(), per_day)
}

#[test]
fn two_nodes_append_their_days_to_shared_tables_in_s3_and_pyiceberg_counts_both() {
    let moto = Moto::start("archive");
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let nodes: Vec<(std::path::PathBuf, Server, PerDay)> = ["node-1", "node-2"]
        .iter()
        .map(|node| {
            let dir = tmp.path().join(node);
            let config = format!(
                "{SETTLE}\n[tiering]\nobject_store = \"s3://archive/{node}\"\nparquet_mirror = true\niceberg = true\n\
                 iceberg_warehouse = \"s3://archive/warehouse\"\n"
            );
            let server = Server::start_env(&dir, Some(&config), &[], &env);
            let (body, per_day) = node_days(day0, node);
            let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
            assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{node}: {r}");
            (dir, server, per_day)
        })
        .collect();
    for (dir, _, per_day) in &nodes {
        wait_committed(dir, per_day.len(), "every day of every node committed");
    }
    assert_eq!(nodes[0].2, nodes[1].2, "the nodes were sent the same shape of traffic");

    let properties = serde_json::json!({
        "s3.endpoint": moto.endpoint,
        "s3.access-key-id": "test",
        "s3.secret-access-key": "test",
        "s3.region": "us-east-1",
    });
    // What the nodes answer themselves, summed.
    let mut answered: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, server, _) in &nodes {
        let (status, r) = sql(
            server,
            "SELECT date_trunc('day', ts), count(*) FILTER (WHERE type = 'impression'), \
             count(*) FILTER (WHERE type = 'click') FROM events GROUP BY 1 ORDER BY 1",
        );
        assert_eq!(status, 200, "{r}");
        for row in r["rows"].as_array().expect("rows") {
            let day: String = row[0].as_str().expect("day").chars().take(10).collect();
            let e = answered.entry(day).or_default();
            e.0 += row[1].as_u64().expect("impressions");
            e.1 += row[2].as_u64().expect("clicks");
        }
    }
    let answered: Vec<[String; 3]> =
        answered.into_iter().map(|(day, (i, c))| [day, i.to_string(), c.to_string()]).collect();
    let answered = serde_json::to_value(answered).expect("json");
    assert_eq!(answered, expected(&nodes[0].2, 2));
    for (table, kind) in TABLES {
        let got = pyiceberg(&format!("s3://archive/warehouse/adstore/{table}"), kind, &properties);
        assert_eq!(got["days"], answered, "{table}: {got}");
    }
    let events = pyiceberg("s3://archive/warehouse/adstore/events", "events", &properties);
    assert_eq!(events["snapshots"].as_u64(), Some(2 * nodes[0].2.len() as u64), "a snapshot per node and day");
    for (_, server, _) in nodes {
        assert!(server.stop().success());
    }
}

/// Set (with the moto server's `AWS_*`) when the race below runs in a
/// process of its own: the S3 client reads its settings from the
/// environment, which a test cannot change in a process of many threads.
const RACE_BUCKET: &str = "ADSTORE_TEST_RACE_BUCKET";

#[test]
fn commits_racing_on_s3_all_land_one_version_each() {
    let moto = Moto::start("race");
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["racing_commits_on_s3", "--exact", "--include-ignored", "--nocapture"])
        .envs(moto.env())
        .env(RACE_BUCKET, "race")
        .output()
        .expect("run the race");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("1 passed"), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", printed.lines().find(|l| l.contains("attempts")).unwrap_or_default());
}

/// Four writers commit five days each to one table in S3 at once: every
/// commit lands as its own version (S3's If-None-Match refuses all but one
/// writer of each), and the table holds every file.
#[test]
#[ignore = "run by commits_racing_on_s3_all_land_one_version_each, in a process with moto's environment"]
fn racing_commits_on_s3() {
    use adstore_storage::iceberg::{DataFile, Warehouse};
    use adstore_storage::tier::ObjectTier;
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    let Ok(bucket) = std::env::var(RACE_BUCKET) else { return };
    let schema = Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("advertiser_id", DataType::Utf8, false),
    ]);
    let url = format!("s3://{bucket}/warehouse");
    let writers: Vec<Warehouse> = (0..4)
        .map(|n| {
            let tier = ObjectTier::open(&url, Duration::from_secs(30)).expect("S3");
            Warehouse::new(std::sync::Arc::new(tier), "", &format!("s3://{bucket}/node-{n}"))
        })
        .collect();
    let day0 = 20_400 * DAY_MS;
    let attempts = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for (n, w) in writers.iter().enumerate() {
            let (schema, attempts, bucket) = (&schema, &attempts, &bucket);
            s.spawn(move || {
                for d in 0..5 {
                    let day = day0 + d * DAY_MS;
                    let file =
                        DataFile { path: format!("s3://{bucket}/node-{n}/d{d}.parquet"), day, rows: 1, bytes: 1 };
                    match w.commit_day("events", schema, day, &[file]).expect("commit") {
                        adstore_storage::iceberg::Commit::Committed { attempts: a, .. } => {
                            attempts.fetch_add(a, std::sync::atomic::Ordering::Relaxed);
                        }
                        other => panic!("a new file left the table unchanged: {other:?}"),
                    }
                }
            });
        }
    });
    let files = writers[0].files("events").expect("files");
    assert_eq!(files.len(), 20, "{files:?}");
    let current = writers[0].current_metadata("events").expect("read").expect("a table");
    assert!(current.ends_with("/v20.metadata.json"), "{current}");
    println!("20 commits took {} attempts", attempts.into_inner());
}
