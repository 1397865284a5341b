//! Erasure end to end (`POST /v1/erasure`) against a real S3-compatible
//! server (moto): one user's events spread over three days moved to the
//! bucket (with the Parquet mirror and the local cache of cold chunks), and
//! over the head and the WAL. After the erasure no query finds them by
//! `user_key`, `ip_hash` or `ua_hash`; no file of the data directory and
//! no object of the bucket holds those values (read raw, and through every
//! zstd frame in it, where segment blocks and Parquet pages keep strings);
//! every number is what it was, after a reprocess and a restart too; the
//! counts the oracle here made from the events sent are unchanged. A
//! second user, never erased, is found by the same checks.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const BUCKET: &str = "adstore-erasure";
/// The user erased; their `ip_hash` and `ua_hash` contain it too.
const ERASED: &str = "erase-me-7f3a9";
/// A user never erased: what proves the checks can find a value.
const KEPT: &str = "keep-me-4c1d2";

fn config() -> String {
    format!(
        "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n\n\
         [ingest]\nallowed_lateness_ms = 3600000\n\n\
         [tiering]\nobject_store = \"s3://{BUCKET}/cold\"\ntimeout_ms = 3000\ncache_bytes = 67108864\nparquet_mirror = true\n\n\
         [retention.raw]\nhot = \"3d\"\n[retention.minute]\nhot = \"3d\"\n\
         [retention.hour]\nhot = \"3d\"\n[retention.day]\nhot = \"3d\"\n"
    )
}

/// Events every 150 s from `from` for `hours`, in runs of four of one user
/// (impression, impression, click by last touch, conversion by last touch):
/// the runs of `ERASED` and `KEPT` among seven others. Returns the NDJSON
/// and how many events of `ERASED` it holds.
fn events(from: i64, hours: i64, tag: &str) -> (String, u64) {
    let mut body = String::new();
    let mut erased = 0;
    let mut i = 0i64;
    while i * 150_000 < hours * HOUR_MS {
        let user = match (i / 4) % 9 {
            0 => ERASED.to_string(),
            5 => KEPT.to_string(),
            n => format!("user-{n}"),
        };
        let (kind, extra) = match i % 4 {
            0 | 1 => ("impression", format!(",\"impression_id\":\"{tag}i{i}\",\"cost_micros\":10")),
            2 => ("click", format!(",\"click_id\":\"{tag}k{i}\",\"cost_micros\":100")),
            _ => ("conversion", ",\"value_micros\":1000".to_string()),
        };
        erased += u64::from(user == ERASED);
        body.push_str(&format!(
            "{{\"event_id\":\"{tag}e{i}\",\"type\":\"{kind}\",\"ts\":{},\"publisher_id\":\"p1\",\"advertiser_id\":\"a1\",\
             \"campaign_id\":\"c1\",\"ad_id\":\"x1\",\"user_key\":\"{user}\",\"ip_hash\":\"iph-{user}\",\
             \"ua_hash\":\"uah-{user}\"{extra}}}\n",
            from + i * 150_000
        ));
        i += 1;
    }
    (body, erased)
}

/// Every number a dashboard or a bill reads, by day and decision.
fn numbers(server: &Server) -> serde_json::Value {
    let (status, events) = sql(
        server,
        "SELECT date_trunc('day', ts), type, attributed, invalid_reason, count(*), sum(cost_micros), \
         sum(value_micros) FROM events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    );
    assert_eq!(status, 200, "{events}");
    let (status, metrics) = sql(
        server,
        "SELECT date_trunc('day', ts), sum(impressions), sum(clicks), sum(conversions), sum(billable_clicks), \
         sum(attributed_conversions), sum(spend_micros), sum(conversion_value_micros) FROM metrics GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(status, 200, "{metrics}");
    serde_json::json!({ "events": events["rows"], "metrics": metrics["rows"] })
}

fn count_where(server: &Server, condition: &str) -> u64 {
    let (status, r) = sql(server, &format!("SELECT count(*) FROM events WHERE {condition}"));
    assert_eq!(status, 200, "{r}");
    r["rows"][0][0].as_u64().expect("a count")
}

/// Whether `needle` is in `bytes`, read raw or through any zstd frame
/// starting in it.
fn holds(bytes: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    if found(bytes) {
        return true;
    }
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    (0..bytes.len().saturating_sub(4)).filter(|&p| bytes[p..p + 4] == MAGIC).any(|p| {
        let mut out = Vec::new();
        if let Ok(d) = zstd::stream::read::Decoder::new(&bytes[p..]) {
            let _ = std::io::Read::read_to_end(&mut d.single_frame(), &mut out);
        }
        found(&out)
    })
}

/// The files under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.path().is_dir() {
                true => stack.push(e.path()),
                false => out.push(e.path()),
            }
        }
    }
    out
}

/// The files under `dir` that hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let holding = files(dir).into_iter().filter(|p| std::fs::read(p).is_ok_and(|b| holds(&b, needle)));
    holding.map(|p| p.display().to_string()).collect()
}

/// A copy of every object in the bucket, under their keys (boto3, which
/// comes with moto, signs the requests). An object listed and deleted
/// before its download (the mirror task replacing a part) is left out.
fn bucket_copy(moto: &Moto) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    let script = "import boto3, botocore, os, sys\n\
        s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', \
        aws_secret_access_key='test', region_name='us-east-1')\n\
        for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2]):\n\
        \x20   for o in page.get('Contents', []):\n\
        \x20       path = os.path.join(sys.argv[3], o['Key'])\n\
        \x20       os.makedirs(os.path.dirname(path), exist_ok=True)\n\
        \x20       try:\n\
        \x20           s3.download_file(sys.argv[2], o['Key'], path)\n\
        \x20       except botocore.exceptions.ClientError as e:\n\
        \x20           if e.response['Error']['Code'] not in ('404', 'NoSuchKey'):\n\
        \x20               raise\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script, &moto.endpoint, BUCKET, &to.path().to_string_lossy()])
        .status()
        .expect("python3");
    assert!(status.success(), "the bucket could not be copied");
    to
}

/// The keys of the objects in the bucket that hold `needle`.
fn objects_holding(moto: &Moto, needle: &str) -> Vec<String> {
    let copy = bucket_copy(moto);
    let root = format!("{}/", copy.path().display());
    files_holding(copy.path(), needle).into_iter().map(|p| p.replacen(&root, "", 1)).collect()
}

/// The keys of every object in the bucket.
fn objects(moto: &Moto) -> Vec<String> {
    let copy = bucket_copy(moto);
    files(copy.path()).iter().filter_map(|p| Some(p.strip_prefix(copy.path()).ok()?.display().to_string())).collect()
}

/// Waits until no raw segment of the days before `until` is local.
fn wait_until_tiered(server: &Server, until: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let listing = server.get("/v1/segments");
        let raws = listing["segments"].as_array().expect("segments");
        let old = raws.iter().filter(|s| s["bucket_start_ms"].as_i64().is_some_and(|b| b < until));
        let (remote, local) = old.fold((0, 0), |(r, l), s| if s["tier"] == "remote" { (r + 1, l) } else { (r, l + 1) });
        if remote > 0 && local == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "raw segments did not move: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn erase(server: &Server, body: &str) -> (u16, serde_json::Value) {
    post(&format!("{}/v1/erasure", server.url), "application/json", None, body.as_bytes())
}

#[test]
fn an_erased_user_is_gone_from_every_file_object_and_query_and_counts_stay() {
    let moto = Moto::start(BUCKET);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_env(&dir, Some(&config()), &[], &env);
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    // Three days ten days old (plus two hours, so the third day closes),
    // then an hour of today: sealed or still in the head and the WAL.
    let (old, erased_old) = events(day0, 74, "o");
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, old.as_bytes());
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    wait_until_tiered(&server, day0 + 4 * DAY_MS);
    let (fresh, erased_fresh) = events(now_ms() - HOUR_MS, 1, "f");
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, fresh.as_bytes());
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");

    let before = numbers(&server);
    let user = format!("user_key = '{ERASED}'");
    assert_eq!(count_where(&server, &user), erased_old + erased_fresh, "the oracle's count of the user's events");
    assert!(count_where(&server, &format!("{user} AND attributed")) > 0, "last touch by user_key attributed some");
    let kept = count_where(&server, &format!("user_key = '{KEPT}'"));
    assert!(kept > 0);
    assert!(!files_holding(&dir, ERASED).is_empty(), "the user is on local disk before");
    assert!(!objects_holding(&moto, ERASED).is_empty(), "and in the bucket");

    // Bad requests change nothing.
    for bad in ["{}", r#"{"user_key": ""}"#, r#"{"user_key": "u", "extra": 1}"#, "not json"] {
        let (status, r) = erase(&server, bad);
        assert!(matches!(status, 400 | 422), "{bad}: {status} {r}");
        assert!(r["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }

    let (status, record) = erase(&server, &serde_json::json!({ "user_key": ERASED }).to_string());
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["rows"].as_u64(), Some(erased_old + erased_fresh), "{record}");
    assert!(record["remote_segments"].as_u64().is_some_and(|n| n >= 3), "one a day at least: {record}");
    assert!(record["mirror_days"].as_u64().is_some_and(|n| n >= 3), "{record}");
    assert!(!record.to_string().contains(ERASED), "the log never holds the value: {record}");

    let gone = |server: &Server| {
        for column in ["user_key", "ip_hash", "ua_hash"] {
            let prefix = match column {
                "user_key" => "",
                "ip_hash" => "iph-",
                _ => "uah-",
            };
            let condition = format!("{column} = '{prefix}{ERASED}'");
            assert_eq!(count_where(server, &condition), 0, "{condition}");
            assert_eq!(count_where(server, &format!("{column} IN ('{prefix}{ERASED}', 'x')")), 0, "{condition}");
        }
        assert_eq!(count_where(server, &format!("user_key = '{KEPT}'")), kept, "the other user is untouched");
        assert_eq!(numbers(server), before, "every number as it was");
    };
    gone(&server);
    let local = files_holding(&dir, ERASED);
    assert!(local.is_empty(), "files of the data directory hold the erased values: {local:?}");
    let kept_files = files_holding(&dir, KEPT);
    assert!(kept_files.iter().any(|f| f.ends_with(".seg")), "the check finds a value in a segment: {kept_files:?}");
    let remote = objects_holding(&moto, ERASED);
    assert!(remote.is_empty(), "objects hold the erased values: {remote:?}");

    // The rewritten segments settle and move again; the mirror is written again.
    wait_until_tiered(&server, day0 + 4 * DAY_MS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !objects(&moto).iter().any(|k| k.contains("parquet/events/")) {
        assert!(Instant::now() < deadline, "the mirror's events were not written again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let remote = objects_holding(&moto, ERASED);
    assert!(remote.is_empty(), "objects hold the erased values: {remote:?}");
    let kept_objects = objects_holding(&moto, KEPT);
    assert!(kept_objects.iter().any(|k| k.contains("parquet/events/")), "{kept_objects:?}");
    assert!(kept_objects.iter().any(|k| k.ends_with(".seg")), "{kept_objects:?}");

    // A reprocess re-decides attribution from the stored columns: erased
    // events keep theirs, so nothing moves.
    let (status, job) = post(
        &format!("{}/v1/reprocess", server.url),
        "application/json",
        None,
        serde_json::json!({"from": day0, "to": now_ms() + HOUR_MS, "reason": "after an erasure"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().expect("job id");
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.get(&format!("/v1/reprocess/{id}"))["status"] == "running" {
        assert!(Instant::now() < deadline, "reprocess did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.get(&format!("/v1/reprocess/{id}"))["status"], "done");
    gone(&server);
    let report = server.get(&format!("/v1/reconcile?from={day0}&to={}", now_ms() + HOUR_MS));
    assert_eq!(report["differing"].as_u64(), Some(0), "{report}");

    // Restarted: the erased events are still known, the log lists the erasure.
    assert!(server.stop().success());
    let server = Server::start_env(&dir, Some(&config()), &[], &env);
    gone(&server);
    assert_eq!(server.metric("adstore_erased_events"), erased_old + erased_fresh);
    let log = server.get("/v1/erasure");
    assert_eq!(log.as_array().map(Vec::len), Some(1), "{log}");
    assert_eq!(log[0]["rows"], record["rows"], "{log}");
    assert!(files_holding(&dir, ERASED).is_empty());
    assert!(server.stop().success());
}

/// A server killed inside an erasure (before its first commit, and after
/// its second) comes back with every event counted once, and the same
/// request finishes the erasure.
#[test]
fn a_crash_in_an_erasure_loses_nothing_and_the_same_request_finishes_it() {
    let config = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n";
    let request = serde_json::json!({ "user_key": ERASED }).to_string();
    for failpoint in ["erasure_before_commit", "erasure_after_commit:2"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let server = Server::start(&dir, Some(config));
        let (body, erased) = events(now_ms() - 30 * HOUR_MS, 24, "c");
        let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
        assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/v1/segments")["head"]["rows"].as_u64() != Some(0) {
            assert!(Instant::now() < deadline, "not sealed");
            std::thread::sleep(Duration::from_millis(50));
        }
        let before = numbers(&server);
        assert!(server.stop().success());

        let mut server = Server::start_env(&dir, Some(config), &[], &[("ADSTORE_FAILPOINT", failpoint)]);
        let sent = agent()
            .post(&format!("{}/v1/erasure", server.url))
            .header("content-type", "application/json")
            .send(request.as_bytes());
        assert!(sent.is_err(), "{failpoint}: the server died in the erasure");
        assert!(!server.wait().success(), "{failpoint}");

        let server = Server::start(&dir, Some(config));
        assert_eq!(numbers(&server), before, "{failpoint}: nothing lost or counted twice");
        let (status, record) = erase(&server, &request);
        assert_eq!(status, 200, "{failpoint}: {record}");
        assert_eq!(count_where(&server, &format!("user_key = '{ERASED}'")), 0, "{failpoint}");
        assert_eq!(count_where(&server, "user_key IS NULL"), erased, "{failpoint}: every event of the user, once");
        assert_eq!(numbers(&server), before, "{failpoint}");
        assert!(files_holding(&dir, ERASED).is_empty(), "{failpoint}");
        assert!(server.stop().success());
    }
}
