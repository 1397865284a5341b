//! Retention end to end on the real server: a policy from the TOML file,
//! changed with `PUT /v1/retention` (validated, persisted, winning over the
//! file after a restart) and with `adstore retention set`; three days of
//! events ten days old sealed, finalized, merged into day rows, then their
//! raw segments deleted by the retention task. `metrics` still answers the
//! days exactly (counted here from the events sent), `events` over them is
//! refused with `retention_expired`, the files are gone.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::*;

fn put_retention(server: &Server, json: &str) -> (u16, serde_json::Value) {
    let mut r = agent()
        .put(&format!("{}/v1/retention", server.url))
        .header("content-type", "application/json")
        .send(json.as_bytes())
        .expect("PUT");
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json"))
}

/// Seals quickly, closes buckets an hour after their end, deletes raw
/// events three days after.
const CONFIG: &str = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\n\n\
                      [ingest]\nallowed_lateness_ms = 3600000\n\n\
                      [retention.raw]\nttl = \"3d\"\n";

/// Waits until the raw segments of the three days starting at `day0` are
/// all expired; returns their days.
fn wait_for_expiry(server: &Server, day0: i64) -> std::collections::BTreeSet<i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listing = server.get("/v1/segments");
        let raws = listing["segments"].as_array().expect("segments").clone();
        let expired: Vec<i64> = raws
            .iter()
            .filter(|s| s["tier"] == "expired")
            .filter_map(|s| s["bucket_start_ms"].as_i64())
            .map(|b| b.div_euclid(DAY_MS) * DAY_MS)
            .collect();
        let days: std::collections::BTreeSet<i64> = expired.iter().copied().collect();
        let local_in_days = raws
            .iter()
            .filter(|s| s["tier"] == "local")
            .filter_map(|s| s["bucket_start_ms"].as_i64())
            .any(|b| b < day0 + 3 * DAY_MS);
        if days.len() == 3 && !local_in_days {
            return days;
        }
        assert!(Instant::now() < deadline, "raw segments did not expire: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `SELECT` of impressions and clicks per day over the three days.
fn daily(server: &Server, day0: i64) -> (u16, serde_json::Value) {
    sql(
        server,
        &format!(
            "SELECT date_trunc('day', ts) AS d, sum(impressions), sum(clicks) FROM metrics \
             WHERE ts >= {day0} AND ts < {} GROUP BY 1 ORDER BY 1",
            day0 + 3 * DAY_MS
        ),
    )
}

fn assert_daily(server: &Server, day0: i64, per_day: &BTreeMap<i64, (u64, u64)>) {
    let (status, r) = daily(server, day0);
    assert_eq!(status, 200, "{r}");
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{r}");
    for (row, (_, (imps, clicks))) in rows.iter().zip(per_day.iter()) {
        assert_eq!((row[1].as_u64(), row[2].as_u64()), (Some(*imps), Some(*clicks)), "{r}");
    }
}

#[test]
fn raw_events_past_their_ttl_are_deleted_and_metrics_keep_their_numbers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = CONFIG;
    let server = Server::start(&dir, Some(config));
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");

    // The three whole days become final, are merged, and their raw
    // segments expire (ten days old, ttl 3 days).
    let expired_days = wait_for_expiry(&server, day0);
    assert_eq!(expired_days.into_iter().collect::<Vec<_>>(), vec![day0, day0 + DAY_MS, day0 + 2 * DAY_MS]);
    let files = std::fs::read_dir(dir.join("segments")).expect("segments dir").count();
    let listing = server.get("/v1/segments");
    let local = listing["segments"].as_array().expect("segments").iter().filter(|s| s["tier"] == "local").count()
        + listing["rollups"].as_array().expect("rollups").len();
    assert!(files <= local * 3, "only live segments (and their sidecars) keep files: {files} files, {local} live");
    let metrics = server.get_text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("adstore_level_segments{level=\"raw\",tier=\"expired\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Whole days of metrics: exactly the events sent.
    assert_daily(&server, day0, &per_day);
    // Raw events of those days: refused, naming the range and what holds it.
    let (status, r) = sql(&server, &format!("SELECT count(*) FROM events WHERE ts < {}", day0 + DAY_MS));
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("retention_expired")), "{r}");
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.contains("deleted by retention") && message.contains("coarsest: day"), "{message}");
    // Events after them are still there.
    let (status, r) = sql(&server, &format!("SELECT count(*) FROM events WHERE ts >= {}", day0 + 3 * DAY_MS));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"][0][0].as_u64(), Some(2 * 40), "{r}");

    // The trace of an event of those days: not stored, and why.
    let r = server.get("/v1/trace?publisher_id=p1&type=impression&event_id=e0");
    assert_eq!(r["found"].as_u64(), Some(0), "{r}");
    assert!(r["expired"]["note"].as_str().is_some_and(|n| n.contains("retention")), "{r}");
    let to = r["expired"]["to"].as_str().expect("to");
    assert!(to >= adstore_storage::time::format_timestamp(day0 + 3 * DAY_MS).as_str(), "{r}");
    // An event after them is traced.
    let later = 3 * DAY_MS / 90_000 + 1;
    let r = server.get(&format!("/v1/trace?publisher_id=p1&type=impression&event_id=e{later}"));
    assert_eq!(r["found"].as_u64(), Some(1), "{r}");
    assert!(r.get("expired").is_none(), "{r}");

    // Reconciliation does not count deleted events as differences.
    let r = server.get(&format!("/v1/reconcile?from={day0}&to={}", day0 + 3 * DAY_MS));
    assert_eq!(r["differing"].as_u64(), Some(0), "{r}");
    assert!(r.to_string().contains("deleted by retention"), "{r}");
    // Billing snapshots of the days were taken before their events went.
    for day in [day0, day0 + DAY_MS, day0 + 2 * DAY_MS] {
        let date = &adstore_storage::time::format_timestamp(day)[..10];
        let r = server.get(&format!("/v1/billing/daily?day={date}"));
        assert!(r.to_string().contains("impressions"), "{date}: {r}");
    }

    // A refused policy changes nothing; an accepted one survives a restart
    // and wins over the file.
    let before = server.get("/v1/retention");
    assert_eq!(before["raw"]["ttl"], "3d", "{before}");
    let (status, r) = put_retention(&server, r#"{"minute": {"ttl": "2h"}}"#);
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("retention.minute.ttl")), "{r}");
    let (status, r) = put_retention(&server, r#"{"raw": {"ttl": "3x"}}"#);
    assert_eq!(status, 400, "{r}");
    assert_eq!(server.get("/v1/retention"), before);
    let (status, r) = put_retention(&server, r#"{"raw": {"ttl": "20d"}, "day": {"ttl": "730d"}}"#);
    assert_eq!((status, r["raw"]["ttl"].as_str(), r["day"]["ttl"].as_str()), (200, Some("20d"), Some("730d")), "{r}");
    let out = std::process::Command::new(ADSTORE)
        .args(["retention", "set", "--hour-ttl", "400d", "--url", &server.url])
        .output()
        .expect("adstore retention set");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("raw     hot never   ttl 20d") && shown.contains("hour    hot never   ttl 400d"), "{shown}");
    assert!(server.stop().success());
    let server = Server::start(&dir, Some(config));
    let after = server.get("/v1/retention");
    assert_eq!(
        (after["raw"]["ttl"].as_str(), after["hour"]["ttl"].as_str(), after["day"]["ttl"].as_str()),
        (Some("20d"), Some("400d"), Some("730d")),
        "{after}"
    );
    // The days keep their numbers across the restart.
    let (status, r) = sql(
        &server,
        &format!("SELECT sum(impressions) FROM metrics WHERE ts >= {day0} AND ts < {}", day0 + 3 * DAY_MS),
    );
    assert_eq!(status, 200, "{r}");
    let want: u64 = per_day.range(..day0 + 3 * DAY_MS).map(|(_, d)| d.0).sum();
    assert_eq!(r["rows"][0][0].as_u64(), Some(want), "{r}");
    assert!(server.stop().success());
}

/// A crash right after the retention task's catalog commit, before it
/// deletes files: the restarted server removes the files left behind and
/// answers the same numbers.
#[test]
fn a_crash_after_the_retention_commit_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = Server::start_env(&dir, Some(CONFIG), &[], &[("ADSTORE_FAILPOINT", "retention_after_commit")]);
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    let status = server.wait();
    assert!(!status.success(), "the failpoint aborts the server: {status}");
    let expired = segments_in_tier(&dir, "expired");
    assert!(!expired.is_empty(), "the commit expired raw segments");
    let files = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir.join("segments"))
            .expect("segments")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .collect()
    };
    assert!(files(&dir).iter().any(|f| expired.iter().any(|p| f.starts_with(p))), "files left behind by the crash");

    let server = Server::start(&dir, Some(CONFIG));
    wait_for_expiry(&server, day0);
    let left: Vec<String> = files(&dir).into_iter().filter(|f| expired.iter().any(|p| f.starts_with(p))).collect();
    assert!(left.is_empty(), "files of expired segments remain: {left:?}");
    assert_daily(&server, day0, &per_day);
    assert!(server.stop().success());
}
