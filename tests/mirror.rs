//! The Parquet mirror end to end: three settled days of events are written
//! to the object store (a local directory here) as Hive-partitioned
//! Parquet, and DuckDB (the Python package, installed by `scripts/test`)
//! reading the files gives the numbers counted from the events sent and
//! those adstore answers; a reprocess of a mirrored day writes it again
//! and removes the old parts.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const CONFIG: &str = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n\n\
                      [ingest]\nallowed_lateness_ms = 3600000\n\n\
                      [tiering]\nparquet_mirror = true\n";

/// Rows of `query` run by DuckDB, as JSON (dates and numbers as strings).
fn duckdb(query: &str) -> serde_json::Value {
    let script = "import duckdb, json, sys\n\
                  con = duckdb.connect()\n\
                  con.sql(\"SET TimeZone = 'UTC'\")\n\
                  rows = con.sql(sys.argv[1]).fetchall()\n\
                  print(json.dumps([[str(v) for v in r] for r in rows]))";
    let out = Command::new("python3")
        .args(["-c", script, query])
        .output()
        .expect("python3 with duckdb (pip install duckdb; scripts/test installs it)");
    assert!(out.status.success(), "duckdb failed on {query}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The mirror's days in the catalog, with the keys of their parts.
fn mirrored(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).expect("catalog")).expect("json");
    serde_json::from_value(catalog["catalog"]["mirrored"].clone()).unwrap_or_default()
}

/// Waits until `done` holds of the mirrored days.
fn wait_mirrored(dir: &Path, what: &str, done: impl Fn(&BTreeMap<String, Vec<String>>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(&mirrored(dir)) {
        assert!(Instant::now() < deadline, "{what}: {:?}", mirrored(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `.parquet` file under `dir`, relative to `root`.
fn files(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let path: PathBuf = e.path();
        if path.is_dir() {
            out.extend(files(root, &path));
        } else if path.extension().is_some_and(|x| x == "parquet") {
            out.push(path.strip_prefix(root).expect("under root").to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// Impressions and clicks per day from the mirror's events and from the
/// hour and day rows of the `campaign` rollup, all as DuckDB reads them.
fn mirror_numbers(objects: &Path) -> [serde_json::Value; 3] {
    let glob = |table: &str| {
        format!("read_parquet('{}/parquet/{table}/*/*.parquet', hive_partitioning = true)", objects.display())
    };
    let events = duckdb(&format!(
        "SELECT CAST(day AS VARCHAR), count(*) FILTER (type = 'impression'), count(*) FILTER (type = 'click') \
         FROM {} GROUP BY ALL ORDER BY ALL",
        glob("events")
    ));
    let rollup = |level: &str| {
        duckdb(&format!(
            "SELECT CAST(day AS VARCHAR), sum(impressions), sum(clicks) FROM {} GROUP BY ALL ORDER BY ALL",
            glob(&format!("rollups/campaign/{level}"))
        ))
    };
    [events, rollup("hour"), rollup("day")]
}

#[test]
fn settled_days_are_mirrored_as_parquet_that_duckdb_reads_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start_env(&dir, Some(CONFIG), &[], &[]);
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    wait_mirrored(&dir, "every day mirrored", |m| m.len() == per_day.len());

    // What was sent, per day: impressions and clicks.
    let sent: Vec<[String; 3]> =
        per_day.iter().map(|(day, (imps, clicks))| [date(*day), imps.to_string(), clicks.to_string()]).collect();
    let sent = serde_json::to_value(&sent).expect("json");
    let objects = dir.join("objects");
    for (table, got) in ["events", "campaign hour", "campaign day"].iter().zip(mirror_numbers(&objects)) {
        assert_eq!(got, sent, "{table}");
    }
    // Every row in the partition of its own day, and the codes as names.
    let check = duckdb(&format!(
        "SELECT count(*) FILTER (CAST(ts AS DATE) <> day), count(*) FILTER (invalid_reason NOT IN ('', 'unattributed')), \
         count(DISTINCT type) FROM read_parquet('{}/parquet/events/*/*.parquet', hive_partitioning = true)",
        objects.display()
    ));
    assert_eq!(check, serde_json::json!([["0", "0", "2"]]));
    // The same numbers from adstore.
    let (status, r) = sql(
        &server,
        "SELECT date_trunc('day', ts), count(*) FILTER (WHERE type = 'impression'), \
         count(*) FILTER (WHERE type = 'click') FROM events GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(status, 200, "{r}");
    let ours: Vec<[String; 3]> = r["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let day = row[0].as_str().expect("day").chars().take(10).collect();
            [day, row[1].to_string(), row[2].to_string()]
        })
        .collect();
    assert_eq!(serde_json::to_value(&ours).expect("json"), sent);
    // On disk: exactly the parts the catalog names.
    let before = mirrored(&dir);
    let named: Vec<String> = {
        let mut all: Vec<String> = before.values().flatten().cloned().collect();
        all.sort();
        all
    };
    assert_eq!(files(&objects, &objects), named);

    // A reprocess of the first day re-seals it: its parts are written
    // again under the new segments' ids, the old ones removed.
    let first = before.keys().next().expect("a day").clone();
    // A part an interrupted attempt left behind: deleted with the old ones.
    let stray_dir = objects.join(format!("parquet/events/day={}", date(first.parse().expect("day ms"))));
    std::fs::write(stray_dir.join("part-00000000000fffff.parquet"), b"left by a crash").expect("stray part");
    let body = serde_json::json!({ "from": day0, "to": day0 + DAY_MS, "reason": "test" }).to_string();
    let (status, job) = server.post("/v1/reprocess", "application/json", None, body.as_bytes());
    assert_eq!(status, 202, "{job}");
    wait_mirrored(&dir, "the first day mirrored again", |m| m.get(&first).is_some_and(|k| *k != before[&first]));
    for (table, got) in ["events", "campaign hour", "campaign day"].iter().zip(mirror_numbers(&objects)) {
        assert_eq!(got, sent, "{table} after the reprocess");
    }
    let mut named: Vec<String> = mirrored(&dir).values().flatten().cloned().collect();
    named.sort();
    assert_eq!(files(&objects, &objects), named, "old parts removed");
    assert!(server.stop().success());
}
