//! Tiering end to end against a real S3-compatible server (moto): three
//! days of events ten days old, settled (final, billed, merged), moved to
//! the bucket by the tiering task once past their `hot` age; queries over
//! them read the bucket (by ranges) and give the numbers counted here from
//! the events sent, after a restart too; a partition (SIGSTOP) fails a
//! query on cold data with 503 `object_store_unavailable` within the
//! timeout while hot data is still answered; a crash right after the
//! tiering commit loses nothing; with the local cache of cold chunks, a
//! restarted server answers what queries read before even while the bucket
//! is unreachable.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::*;

const BUCKET: &str = "adstore-test";

/// The configuration of these tests, with `cache_bytes` of cold chunks
/// (and the Parquet mirror when there is a cache).
fn config(cache_bytes: u64) -> String {
    let mirror = cache_bytes > 0;
    format!(
        "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n\n\
         [ingest]\nallowed_lateness_ms = 3600000\n\n\
         [tiering]\nobject_store = \"s3://{BUCKET}/cold\"\ntimeout_ms = 3000\ncache_bytes = {cache_bytes}\nparquet_mirror = {mirror}\n\n\
         [retention.raw]\nhot = \"3d\"\n[retention.minute]\nhot = \"3d\"\n\
         [retention.hour]\nhot = \"3d\"\n[retention.day]\nhot = \"3d\"\n"
    )
}

fn start(dir: &std::path::Path, moto: &Moto, failpoint: Option<&str>) -> Server {
    start_cached(dir, moto, failpoint, 0)
}

fn start_cached(dir: &std::path::Path, moto: &Moto, failpoint: Option<&str>, cache_bytes: u64) -> Server {
    let env = moto.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Some(f) = failpoint {
        env.push(("ADSTORE_FAILPOINT", f));
    }
    Server::start_env(dir, Some(&config(cache_bytes)), &[], &env)
}

/// Waits until every raw segment of the three days is in the bucket.
fn wait_for_remote(server: &Server, day0: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listing = server.get("/v1/segments");
        let raws = listing["segments"].as_array().expect("segments");
        let of_days = raws.iter().filter(|s| s["bucket_start_ms"].as_i64().is_some_and(|b| b < day0 + 3 * DAY_MS));
        let (remote, local) =
            of_days.fold((0, 0), |(r, l), s| if s["tier"] == "remote" { (r + 1, l) } else { (r, l + 1) });
        if remote > 0 && local == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "raw segments did not move: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Impressions and clicks per day, and events, over the three days.
fn check_numbers(server: &Server, day0: i64, per_day: &BTreeMap<i64, (u64, u64)>) {
    let end = day0 + 3 * DAY_MS;
    let (status, r) = sql(
        server,
        &format!(
            "SELECT date_trunc('day', ts), sum(impressions), sum(clicks) FROM metrics \
             WHERE ts >= {day0} AND ts < {end} GROUP BY 1 ORDER BY 1"
        ),
    );
    assert_eq!(status, 200, "{r}");
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{r}");
    for (row, (_, (imps, clicks))) in rows.iter().zip(per_day) {
        assert_eq!((row[1].as_u64(), row[2].as_u64()), (Some(*imps), Some(*clicks)), "{r}");
    }
    // Raw events read from the bucket.
    let (status, r) = sql(
        server,
        &format!("SELECT type, count(*) FROM events WHERE ts >= {day0} AND ts < {end} GROUP BY 1 ORDER BY 1"),
    );
    assert_eq!(status, 200, "{r}");
    let (imps, clicks) = per_day.range(..end).fold((0, 0), |(i, c), (_, d)| (i + d.0, c + d.1));
    assert_eq!(r["rows"], serde_json::json!([["click", clicks], ["impression", imps]]), "{r}");
    // Filtered by a dimension: event i is of advertiser a{i % 3}, a click when i % 4 == 3.
    let n = (imps + clicks) as i64;
    let want = |adv: i64, click: bool| (0..n).filter(|i| i % 3 == adv && (i % 4 == 3) == click).count() as u64;
    let (status, r) = sql(
        server,
        &format!(
            "SELECT type, count(*) FROM events WHERE advertiser_id IN ('a1') AND ts >= {day0} AND ts < {end} \
             GROUP BY 1 ORDER BY 1"
        ),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"], serde_json::json!([["click", want(1, true)], ["impression", want(1, false)]]), "{r}");
}

fn local_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("segments")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn settled_segments_move_to_s3_and_are_still_queried() {
    let moto = Moto::start(BUCKET);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = start(&dir, &moto, None);
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    wait_for_remote(&server, day0);
    check_numbers(&server, day0, &per_day);
    // Id lookups read the cold segments' id index (from the bucket, by
    // ranges): click k1003 is the 1004th event, day0 + 1003 × 90 s.
    let (_, r) = sql(&server, "SELECT event_id, ts FROM events WHERE click_id IN ('k1003', 'k1')");
    assert_eq!(r["rows"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["rows"][0][0], "e1003", "{r}");
    let (_, explain) = sql(&server, "EXPLAIN SELECT event_id FROM events WHERE click_id = 'k1003'");
    assert!(explain.to_string().contains("id index on click_id"), "{explain}");
    // The event trace reads it there too, and says where it is.
    let r = server.get("/v1/trace?click_id=k1003");
    assert_eq!(r["found"].as_u64(), Some(1), "{r}");
    let t = &r["traces"][0];
    assert_eq!((t["stored"]["tier"].as_str(), t["stored"]["final"].as_bool()), (Some("remote"), Some(true)), "{t}");
    assert_eq!(t["event"]["event_id"], "e1003");
    assert_eq!(t["attribution"]["attributed_to"], "imp1000", "{t}");
    let metrics = server.get_text("/metrics");
    let remote_raw = metrics
        .lines()
        .find_map(|l| l.strip_prefix("adstore_level_segments{level=\"raw\",tier=\"remote\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(remote_raw.is_some_and(|n| n > 0), "{metrics}");
    assert!(metrics.contains("adstore_tiering_lag_seconds"), "{metrics}");
    let listing = server.get("/v1/segments");
    let local = listing["segments"].as_array().expect("segments").iter().filter(|s| s["tier"] == "local").count()
        + listing["rollups"].as_array().expect("rollups").iter().filter(|s| s["tier"] == "local").count();
    assert!(local_files(&dir) <= 3 * local, "only local segments keep files: {} files", local_files(&dir));

    // A partition: cold data fails fast and clearly, hot data is answered.
    moto.signal("-STOP");
    let started = Instant::now();
    let (status, r) =
        sql(&server, &format!("SELECT sum(cost_micros), max(impression_id) FROM events WHERE ts < {}", day0 + DAY_MS));
    // (Columns no query read before: not in the block cache.)
    assert_eq!((status, r["error"]["code"].as_str()), (503, Some("object_store_unavailable")), "{r}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered within the timeout: {:?}", started.elapsed());
    let (status, r) = sql(&server, &format!("SELECT count(*) FROM events WHERE ts >= {}", day0 + 3 * DAY_MS));
    assert_eq!((status, r["rows"][0][0].as_u64()), (200, Some(80)), "{r}");
    // Ingest and seals go on: the object store's tasks back off on a
    // thread of their own.
    std::thread::sleep(Duration::from_secs(8)); // the tiering thread has failed a few passes by now
    // Three rounds, each sealed within a second: a sealer blocked by the
    // store's 3 s timeout would miss at least one.
    for round in 0..3 {
        let fresh: String = (0..50)
            .map(|i| {
                format!(
                    "{{\"event_id\":\"f{round}-{i}\",\"type\":\"impression\",\"ts\":{},\"publisher_id\":\"p1\",\
                     \"advertiser_id\":\"a1\",\"campaign_id\":\"c1\",\"ad_id\":\"x1\",\"impression_id\":\"f{round}-{i}\"}}\n",
                    now_ms() - 3_600_000
                )
            })
            .collect();
        let (status, r) = server.post("/v1/events", "application/x-ndjson", None, fresh.as_bytes());
        assert_eq!((status, r["accepted"].as_u64()), (200, Some(50)), "{r}");
        let sealed_by = Instant::now() + Duration::from_secs(1);
        while server.get("/v1/segments")["head"]["rows"].as_u64() != Some(0) {
            assert!(Instant::now() < sealed_by, "seals held up by the unreachable object store (round {round})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    moto.signal("-CONT");
    check_numbers(&server, day0, &per_day);

    // Restarted, the server opens the cold segments from the bucket.
    assert!(server.stop().success());
    let server = start(&dir, &moto, None);
    check_numbers(&server, day0, &per_day);
    assert!(server.stop().success());
}

#[test]
fn a_crash_after_the_tiering_commit_loses_nothing() {
    let moto = Moto::start(BUCKET);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = start(&dir, &moto, Some("tiering_after_commit"));
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    let status = server.wait();
    assert!(!status.success(), "the failpoint aborts the server: {status}");
    let server = start(&dir, &moto, None);
    wait_for_remote(&server, day0);
    check_numbers(&server, day0, &per_day);
    let remote = segments_in_tier(&dir, "remote");
    let left: Vec<String> = std::fs::read_dir(dir.join("segments"))
        .expect("segments")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|f| remote.iter().any(|p| f.starts_with(p)))
        .collect();
    assert!(left.is_empty(), "local files of segments in the bucket: {left:?}");
    assert!(server.stop().success());
}

#[test]
fn cold_chunks_cached_on_local_disk_answer_while_the_bucket_is_unreachable() {
    let moto = Moto::start(BUCKET);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = start_cached(&dir, &moto, None, 64 << 20);
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let (body, per_day) = three_days(day0);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    wait_for_remote(&server, day0);
    // Everything moved (no more footers read by the tiering task).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listing = server.get("/v1/segments");
        let all = |k: &str| listing[k].as_array().expect("list").iter().all(|s| s["tier"] != "local");
        if all("segments") && all("rollups") {
            break;
        }
        assert!(Instant::now() < deadline, "not everything moved: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
    check_numbers(&server, day0, &per_day);
    let (requests, misses) =
        (server.metric("adstore_object_store_read_requests_total"), server.metric("adstore_object_cache_misses_total"));
    assert!(requests > 0 && misses > 0, "the first reads went to the bucket");
    let cached = server.metric("adstore_object_cache_bytes");
    assert!(cached > 0 && cached <= 64 << 20, "{cached}");
    // Asked again: the block cache or the chunk cache answers, no request.
    check_numbers(&server, day0, &per_day);
    assert_eq!(server.metric("adstore_object_store_read_requests_total"), requests);
    // The Parquet mirror of the settled days is in the bucket too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let url = format!("{}/{BUCKET}?list-type=2&prefix=cold/parquet/events/", moto.endpoint);
        let listing = agent().get(&url).call().expect("list").body_mut().read_to_string().expect("body");
        if (0..3).all(|d| listing.contains(&format!("day={}", date(day0 + d * DAY_MS)))) {
            break listing;
        }
        assert!(Instant::now() < deadline, "the mirror of three days is not in the bucket: {listing}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(listing.contains(".parquet"), "{listing}");
    assert!(server.stop().success());
    let chunks = std::fs::read_dir(dir.join("cache")).expect("cache dir").count();
    assert!(chunks > 0, "chunks kept on disk");

    // The bucket unreachable: a restarted server opens the cold segments
    // and answers the same queries from its disk cache alone.
    moto.signal("-STOP");
    let server = start_cached(&dir, &moto, None, 64 << 20);
    check_numbers(&server, day0, &per_day);
    assert_eq!(server.metric("adstore_object_store_read_requests_total"), 0);
    assert!(server.metric("adstore_object_cache_hits_total") > 0);
    moto.signal("-CONT");
    assert!(server.stop().success());
}
