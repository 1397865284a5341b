//! The HTTP API end to end: the real `adstore serve` binary on an ephemeral
//! port, in a temporary data directory. Stored events are counted by opening
//! the data directory after the server has stopped, so a count covers the
//! WAL, the head and the sealed segments alike.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use adstore_ingest::{ParseOptions, parse_ndjson};
use adstore_storage::{ColumnId, EventBatch, StoreConfig};
use support::*;

const NDJSON: &str = "application/x-ndjson";
const ARROW: &str = "application/vnd.apache.arrow.stream";

fn accepted(v: &serde_json::Value) -> u64 {
    v["accepted"].as_u64().expect("accepted")
}

fn stored_ids(dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = stored_events(dir, StoreConfig::default())
        .iter()
        .flat_map(|b| b.str_column(ColumnId::EventId).iter().flatten().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    ids.sort();
    ids
}

#[test]
fn ndjson_and_arrow_batches_are_counted_back_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Seal quickly so the count spans sealed segments as well as the head.
    let server = Server::start(&dir, Some("[storage]\nseal_max_age_ms = 200\nseal_interval_ms = 50\n"));
    let body = ndjson(12_000, 1);
    let (status, r) = server.post("/v1/events", NDJSON, None, &body);
    assert_eq!((status, accepted(&r), r["rejected"].as_u64()), (200, 12_000, Some(0)), "{r}");

    let events = parse_ndjson(&ndjson(9_000, 2), &ParseOptions::default()).batch();
    let (status, r) = server.post("/v1/events", ARROW, None, &arrow_ipc(&events, 2_500));
    assert_eq!((status, accepted(&r)), (200, 9_000), "{r}");

    // Let the sealer write segments, then check the listing agrees.
    std::thread::sleep(Duration::from_millis(800));
    let listing = server.get("/v1/segments");
    let sealed: u64 =
        listing["segments"].as_array().expect("segments").iter().map(|s| s["rows"].as_u64().unwrap_or(0)).sum();
    let head = listing["head"]["rows"].as_u64().expect("head rows");
    assert_eq!(sealed + head, 21_000, "{listing}");

    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 21_000);
}

#[test]
fn arrow_rows_keep_their_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let sent = parse_ndjson(&ndjson(3_000, 3), &ParseOptions::default()).batch();
    let (status, r) = server.post("/v1/events", ARROW, Some("zstd"), &zstd(&arrow_ipc(&sent, 1_000)));
    assert_eq!((status, accepted(&r)), (200, 3_000), "{r}");
    assert!(server.stop().success());
    // What the producer sent comes back as sent; the derived columns
    // (attribution, invalid reason) are the store's, filled at ingest.
    let raw = |e: adstore_storage::Event| adstore_storage::Event {
        attributed: false,
        attributed_to: None,
        invalid_reason: adstore_storage::InvalidReason::Valid,
        ..e
    };
    let mut got: Vec<_> =
        stored_events(&dir, StoreConfig::default()).iter().flat_map(EventBatch::events).map(raw).collect();
    let mut want: Vec<_> = sent.events().into_iter().map(raw).collect();
    let key = |e: &adstore_storage::Event| (e.event_id.clone(), e.kind, e.ts);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
}

#[test]
fn malformed_lines_are_rejected_by_number_and_good_lines_land() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let ts = now_ms() - HOUR_MS;
    let good = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","type":"impression","ts":{ts},"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","impression_id":"{id}"}}"#
        )
    };
    let body = [
        good("ok-1"),
        r#"{"event_id":"bad-json","type":"impression""#.to_string(),
        good("ok-2"),
        r#"{"event_id":"no-ts","type":"click","publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","click_id":"k"}"#.to_string(),
        String::new(),
        good("ok-3"),
        r#"{"event_id":"x","type":"impression","ts":1,"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","impression_id":"i","colour":"red"}"#.to_string(),
    ]
    .join("\n");
    let (status, r) = server.post("/v1/events", NDJSON, None, body.as_bytes());
    assert_eq!(status, 200, "{r}");
    assert_eq!((accepted(&r), r["rejected"].as_u64(), r["duplicates"].as_u64()), (3, Some(3), Some(0)), "{r}");
    let errors = r["errors"].as_array().expect("errors");
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().expect("line")).collect();
    assert_eq!(lines, vec![2, 4, 7], "{r}");
    assert_eq!(errors[1]["field"], "ts");
    assert_eq!(errors[2]["field"], "colour");

    // A request whose every line is bad is a 400, and stores nothing.
    let (status, r) = server.post("/v1/events", NDJSON, None, b"{\"event_id\":1}\nnot json\n");
    assert_eq!((status, accepted(&r), r["rejected"].as_u64()), (400, 0, Some(2)), "{r}");

    assert!(server.stop().success());
    assert_eq!(stored_ids(&dir), vec!["ok-1", "ok-2", "ok-3"]);
}

#[test]
fn typed_endpoint_rejects_a_mismatched_type() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let ts = now_ms() - HOUR_MS;
    let body = format!(
        "{{\"event_id\":\"i1\",\"type\":\"impression\",\"ts\":{ts},\"publisher_id\":\"p\",\"advertiser_id\":\"a\",\"campaign_id\":\"c\",\"ad_id\":\"d\",\"impression_id\":\"i1\"}}\n\
         {{\"event_id\":\"k1\",\"ts\":{ts},\"publisher_id\":\"p\",\"advertiser_id\":\"a\",\"campaign_id\":\"c\",\"ad_id\":\"d\",\"click_id\":\"k1\"}}\n"
    );
    let (status, r) = server.post("/v1/events/clicks:batch", NDJSON, None, body.as_bytes());
    assert_eq!((status, accepted(&r)), (200, 1), "{r}");
    assert_eq!(r["errors"][0]["line"], 1);
    assert_eq!(r["errors"][0]["field"], "type");
    assert_eq!(r["errors"][0]["reason"], "type impression does not match the endpoint's type click");
    assert!(server.stop().success());
    assert_eq!(stored_ids(&dir), vec!["k1"]);
}

#[test]
fn gzip_and_zstd_bodies_are_decompressed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let a = ndjson(5_000, 4);
    let b = ndjson(4_000, 5);
    let (status, r) = server.post("/v1/events", NDJSON, Some("gzip"), &gzip(&a));
    assert_eq!((status, accepted(&r)), (200, 5_000), "{r}");
    let (status, r) = server.post("/v1/events", "application/json", Some("zstd"), &zstd(&b));
    assert_eq!((status, accepted(&r)), (200, 4_000), "{r}");
    let (status, r) = server.post("/v1/events", NDJSON, Some("gzip"), b"this is not gzip");
    assert_eq!((status, &r["error"]["code"]), (400, &serde_json::json!("bad_encoding")), "{r}");
    let (status, r) = server.post("/v1/events", NDJSON, Some("br"), &a);
    assert_eq!((status, &r["error"]["code"]), (415, &serde_json::json!("unsupported_encoding")), "{r}");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 9_000);
}

#[test]
fn oversize_bodies_get_413_with_a_json_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, Some("[server]\nmax_body_bytes = 65536\n"));
    let body = ndjson(1_000, 6);
    assert!(body.len() > 65_536 && body.len() < 1 << 20, "{}", body.len());
    // curl, like real producers, copes with a server that answers 413
    // before the whole body is sent (a bare client may see EPIPE instead).
    let file = tmp.path().join("big.ndjson");
    std::fs::write(&file, &body).expect("write body");
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H", "content-type: application/x-ndjson", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/v1/events", server.url))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (json, code) = text.rsplit_once('\n').expect("status line");
    assert_eq!(code, "413", "{text}");
    let r: serde_json::Value = serde_json::from_str(json).expect("JSON error body");
    assert_eq!(r["error"]["code"], "payload_too_large", "{r}");
    // Small on the wire, too large once decompressed.
    let packed = zstd(&body);
    assert!(packed.len() < 65_536);
    let (status, r) = server.post("/v1/events", NDJSON, Some("zstd"), &packed);
    assert_eq!((status, &r["error"]["code"]), (413, &serde_json::json!("payload_too_large")), "{r}");
    // Under the limit is fine.
    let (status, r) = server.post("/v1/events", NDJSON, None, &ndjson(100, 7));
    assert_eq!((status, accepted(&r)), (200, 100), "{r}");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 100);
}

#[test]
fn restart_keeps_every_acknowledged_event_and_sigterm_exits_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = "[storage]\nseal_max_age_ms = 300\nseal_interval_ms = 50\n";
    let server = Server::start(&dir, Some(config));
    let url = format!("{}/v1/events", server.url);
    // Concurrent producers; every acknowledged count must survive.
    let acked: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    (0..3)
                        .map(|j| {
                            let (status, r) = post(&url, NDJSON, None, &ndjson(2_000, 100 + i * 10 + j));
                            assert_eq!(status, 200, "{r}");
                            accepted(&r)
                        })
                        .sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("producer")).sum()
    });
    assert_eq!(acked, 24_000);
    std::thread::sleep(Duration::from_millis(500)); // some of it sealed, some still in the head
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0: {status:?}");

    let server = Server::start(&dir, Some(config));
    let (status, r) = server.post("/v1/events", NDJSON, None, &ndjson(1_000, 999));
    assert_eq!((status, accepted(&r)), (200, 1_000), "{r}");
    let listing = server.get("/v1/segments");
    let sealed: u64 =
        listing["segments"].as_array().expect("segments").iter().map(|s| s["rows"].as_u64().unwrap_or(0)).sum();
    assert!(sealed > 0, "expected sealed segments: {listing}");
    // A query over the sealed segments leaves their blocks in the block cache.
    let (status, r) = server.post("/v1/sql", "text/plain", None, b"SELECT sum(cost_micros) AS c FROM events");
    assert_eq!(status, 200, "{r}");
    let cached = server.metric("adstore_block_cache_bytes");
    assert!(cached > 0, "{cached} bytes in the block cache");
    assert_eq!(server.stop().code(), Some(0));
    assert_eq!(stored_count(&dir), 25_000);
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir, None);
    let body = ndjson(500, 8);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let half = body.len() / 2;
    conn.write_all(head.as_bytes()).expect("send head");
    conn.write_all(&body[..half]).expect("send half");
    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once shutdown began…
    assert!(TcpStream::connect(&addr).is_err(), "listener still accepting after SIGTERM");
    // …but the request already under way completes.
    conn.write_all(&body[half..]).expect("send rest");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"accepted\":500"), "{response}");
    assert_eq!(server.wait().code(), Some(0));
    assert_eq!(stored_count(&dir), 500);
}

#[test]
fn the_same_batch_sent_twice_counts_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let body = ndjson(3_000, 11);
    let (status, first) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["accepted"], 3_000);
    assert_eq!(first["duplicates"], 0);
    // A producer retry of the whole batch: acknowledged, counted nowhere.
    let (status, second) = server.post("/v1/events", "application/x-ndjson", None, &body);
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["accepted"], 0, "{second}");
    assert_eq!(second["duplicates"], 3_000, "{second}");
    let metrics = server.get_text("/metrics");
    assert!(metrics.contains("adstore_events_duplicate_total 3000"), "{metrics}");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 3_000);
}

#[test]
fn a_publisher_over_its_rate_gets_429_with_retry_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, Some("[ingest]\nmax_events_per_second_per_publisher = 1000\n"));
    let line = |i: u32| {
        format!(
            "{{\"event_id\":\"e{i}\",\"type\":\"impression\",\"ts\":{},\"publisher_id\":\"pub-x\",\"advertiser_id\":\"a\",\
             \"campaign_id\":\"c\",\"ad_id\":\"ad\",\"impression_id\":\"i{i}\"}}\n",
            now_ms() - HOUR_MS
        )
    };
    let body: String = (0..800).map(line).collect();
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!((status, accepted(&r)), (200, 800), "{r}");
    // 800 more within the same second: over 1000/s for pub-x.
    let body: String = (800..1600).map(line).collect();
    let resp = agent()
        .post(format!("{}/v1/events", server.url))
        .header("content-type", "application/x-ndjson")
        .send(body.as_bytes())
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{retry_after:?}");
    // After waiting, the same request goes through.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!((status, accepted(&r)), (200, 800), "{r}");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 1_600);
}

#[test]
fn a_full_head_gets_503_with_retry_after_and_stores_the_request_once_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // 64 KiB of head, far less than one 1000-event request; partitions
    // never age into a seal, so only the limit makes the sealer take them.
    let server = Server::start(&dir, Some("[storage]\nmax_head_bytes = 65536\nseal_max_age_ms = 3600000\n"));
    assert_eq!(server.metric("adstore_head_limit_bytes"), 65_536);
    let send = |body: &[u8]| {
        agent().post(format!("{}/v1/events", server.url)).header("content-type", NDJSON).send(body).expect("POST")
    };
    let mut stored = 0;
    let mut refused = None;
    // An empty head takes any request; the next one finds it full unless
    // the sealer (once a second) emptied it in between.
    for seed in 0..20 {
        let body = ndjson(1_000, 300 + seed);
        let mut resp = send(&body);
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = resp.body_mut().read_to_string().expect("reply");
        let reply: serde_json::Value = serde_json::from_str(&text).expect("json reply");
        if status == 503 {
            refused = Some((body, retry_after, reply));
            break;
        }
        assert_eq!((status, accepted(&reply)), (200, 1_000), "{reply}");
        stored += 1_000;
    }
    let (body, retry_after, reply) = refused.expect("a request finds the head full");
    assert_eq!(reply["error"]["code"], "head_full", "{reply}");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(message.contains("storage.max_head_bytes") && message.contains("65536"), "{message}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(server.metric("adstore_ingest_head_full_total") >= 1);
    // The sealer takes every partition, however young, and the same
    // request then lands whole: nothing of the refused one was kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let retried = loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (status, r) = server.post("/v1/events", NDJSON, None, &body);
        if status == 200 {
            break r;
        }
        assert_eq!((status, &r["error"]["code"]), (503, &serde_json::json!("head_full")), "{r}");
        assert!(std::time::Instant::now() < deadline, "the head never got room back");
    };
    assert_eq!((accepted(&retried), retried["duplicates"].as_u64()), (1_000, Some(0)), "{retried}");
    stored += 1_000;
    assert!(server.metric("adstore_sealed_rows_total") > 0);
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), stored);
}

fn dedupe_table_bytes(server: &Server) -> u64 {
    server.metric("adstore_dedupe_table_bytes")
}

fn post_announcing(server: &Server, body: &[u8], events: &str) -> (u16, serde_json::Value) {
    let headers = [("content-type", NDJSON), ("adstore-expected-events", events)];
    post_with_headers(&format!("{}/v1/events", server.url), &headers, body)
}

#[test]
fn an_announced_load_sizes_the_dedupe_index_once_and_a_bad_announcement_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, Some("[ingest]\nmax_announced_events = 500000\n"));
    let (status, r) = post_announcing(&server, &ndjson(1_000, 21), "200000");
    assert_eq!((status, accepted(&r)), (200, 1_000), "{r}");
    // 16-byte slots, sized for a load of 0.75.
    let sized = dedupe_table_bytes(&server);
    assert!(sized as f64 >= 200_000.0 * 16.0 / 0.75, "{sized} bytes of table for 200,000 announced events");
    // The rest of the load announces what is left: the table stays as it is.
    let (status, r) = post_announcing(&server, &ndjson(1_000, 22), "199000");
    assert_eq!((status, accepted(&r)), (200, 1_000), "{r}");
    assert_eq!(dedupe_table_bytes(&server), sized);

    // Not a count: 400 naming the header and the value, and nothing of the
    // batch stored.
    for bad in ["lots", "-1", "", "18446744073709551616", "1e6"] {
        let (status, r) = post_announcing(&server, &ndjson(1_000, 23), bad);
        assert_eq!(status, 400, "{bad:?}: {r}");
        assert_eq!(r["error"]["code"], "bad_header", "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("adstore-expected-events") && message.contains(&format!("{bad:?}")), "{r}");
    }
    // An announcement past `ingest.max_announced_events` is taken only up
    // to it.
    let (status, r) = post_announcing(&server, &ndjson(1_000, 24), "1000000000000");
    assert_eq!((status, accepted(&r)), (200, 1_000), "{r}");
    let capped = dedupe_table_bytes(&server);
    assert!(capped > sized && (capped as f64) < 500_000.0 * 21.4 * 1.1, "{capped} bytes of table");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir), 3_000);
}

/// Issue 25: a 1-event request announcing 2^64 - 1 events grew the
/// dedupe index to its whole limit (430 MB at the defaults). An
/// announcement now counts for at most 2,000 events per event sent.
#[test]
fn a_one_event_request_cannot_announce_a_large_table() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), None);
    let (status, r) = post_announcing(&server, &ndjson(1, 31), "18446744073709551615");
    assert_eq!((status, accepted(&r)), (200, 1), "{r}");
    let bytes = dedupe_table_bytes(&server);
    assert!(bytes < 1 << 20, "{bytes} bytes of table for one event (430 MB before)");

    // `max_announced_events = 0`: announcements are read, and ignored.
    let dir = tmp.path().join("ignored");
    let server = Server::start(&dir, Some("[ingest]\nmax_announced_events = 0\n"));
    let (status, r) = post_announcing(&server, &ndjson(1_000, 25), "200000");
    assert_eq!((status, accepted(&r)), (200, 1_000), "{r}");
    let table = dedupe_table_bytes(&server);
    assert!((table as f64) < 200_000.0 * 16.0 / 0.85, "{table} bytes of table");
    assert!(server.stop().success());
}

/// Issue 25: one SQL request with an expression thousands of terms long
/// ended the whole server (stack overflow). Now it answers, a longer one
/// is a 400 naming the limit, and the server keeps taking events.
#[test]
fn a_query_thousands_of_terms_long_never_ends_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), None);
    let (status, _) = server.post("/v1/events", "application/x-ndjson", None, &ndjson(100, 1));
    assert_eq!(status, 200);
    let terms = |n: usize| vec!["1"; n].join(" + ");
    let sql = format!("SELECT count(*) AS n FROM events WHERE cost_micros + {} > 0", terms(1000));
    let (status, r) = server.post("/v1/sql", "text/plain", None, sql.as_bytes());
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"][0][0], 100, "{r}");
    let sql = format!("SELECT count(*) FROM events WHERE cost_micros + {} > 0", terms(50_000));
    let (status, r) = server.post("/v1/sql", "text/plain", None, sql.as_bytes());
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["code"], "query_too_complex", "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("max_operators")), "{r}");
    let (status, _) = server.post("/v1/events", "application/x-ndjson", None, &ndjson(10, 2));
    assert_eq!(status, 200, "the server is still up");
}

/// Issue 25: every error is a JSON error with a code, also those of
/// axum's extractors and router (once plain text, or an empty body).
#[test]
fn every_error_is_a_json_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), None);
    let send = |method: &str, path: &str, content_type: Option<&str>, body: &str| -> (u16, serde_json::Value) {
        let url = format!("{}{path}", server.url);
        let mut r = match (method, content_type) {
            ("GET", _) => agent().get(&url).call(),
            ("DELETE", _) => agent().delete(&url).call(),
            ("PUT", Some(ct)) => agent().put(&url).header("content-type", ct).send(body),
            ("POST", Some(ct)) => agent().post(&url).header("content-type", ct).send(body),
            other => panic!("no request {other:?}"),
        }
        .expect("request");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().expect("body");
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
        assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{method} {path}: {json}");
        (status, json)
    };
    let json = Some("application/json");
    let (status, r) = send("POST", "/v1/reprocess", json, "{}");
    assert_eq!(status, 422, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("from")), "{r}");
    let (status, r) = send("POST", "/v1/reprocess", Some("text/plain"), "{}");
    assert_eq!((status, r["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{r}");
    let (status, r) = send("POST", "/v1/reprocess", json, "{not json");
    assert_eq!(status, 400, "{r}");
    let (status, r) = send("GET", "/v1/reprocess/abc", None, "");
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("path")), "{r}");
    let (status, r) = send("PUT", "/v1/attribution", json, r#"{"version": 2, "click_window": 5}"#);
    assert_eq!(status, 422, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("click_window")), "{r}");
    let (status, r) = send("GET", "/v1/nothing-here", None, "");
    assert_eq!((status, r["error"]["code"].as_str()), (404, Some("not_found")), "{r}");
    let (status, r) = send("DELETE", "/v1/sql", None, "");
    assert_eq!((status, r["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{r}");
    let (status, r) = send("POST", "/v1/events?mode=a&mode=b", Some(NDJSON), "");
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("query string")), "{r}");
}

/// Issue 25: a request head too long for the HTTP layer gets the status
/// hyper writes (414, 431, with no body: docs/ingest.md), and the server
/// keeps answering.
#[test]
fn request_heads_too_long_for_the_http_layer_are_refused_and_the_server_stays_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), None);
    let addr = server.url.trim_start_matches("http://").to_string();
    // Raw: a client may stop writing once the server answers and closes.
    let status = |path: &str, header: Option<&str>| {
        let mut conn = TcpStream::connect(&addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let padding = header.map(|v| format!("x-padding: {v}\r\n")).unwrap_or_default();
        let _ = conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{padding}\r\n").as_bytes());
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
    };
    let long_query = format!("/v1/sql?q={}", "x".repeat(70_000));
    assert_eq!(status(&long_query, None), 414);
    assert_eq!(status("/health", Some(&"y".repeat(500_000))), 431);
    let (code, r) = server.post("/v1/sql", "text/plain", None, b"SELECT count(*) FROM events");
    assert_eq!(code, 200, "{r}");
}

/// Issue 23: configured rollups are built at seal, listed with their
/// coverage, counted in /metrics, and `metrics` reads through them.
#[test]
fn configured_rollups_are_built_listed_and_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 50\n\
                  [[rollups]]\nname = \"by_device\"\ndimensions = [\"device\"]\n";
    let server = Server::start(&tmp.path().join("data"), Some(config));
    let (status, r) = server.post("/v1/events", NDJSON, None, &ndjson(5_000, 3));
    assert_eq!((status, accepted(&r)), (200, 5_000), "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let r = server.get("/v1/rollups");
        if server.get("/v1/segments")["head"]["rows"].as_u64() == Some(0) && r["rollups"][0]["complete"] == true {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "not sealed: {r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let by_device = &status["rollups"][0];
    assert_eq!(by_device["name"], "by_device", "{status}");
    assert_eq!(by_device["covered"], by_device["raw_segments"], "{status}");
    let listing = server.get("/v1/segments");
    let rollups = listing["rollups"].as_array().expect("rollups");
    assert!(!rollups.is_empty() && rollups.iter().all(|s| s["rollup"] == "by_device" && s["level"] == "minute"));
    assert!(server.metric("adstore_rollup_segments") > 0);
    assert_eq!(server.metric("adstore_rollup_backfill_pending"), 0);
    let sql = "SELECT device, sum(impressions) FROM metrics GROUP BY device";
    let (code, r) = server.post("/v1/sql", "text/plain", None, sql.as_bytes());
    assert_eq!(code, 200, "{r}");
    assert!(r["stats"]["source"].as_str().is_some_and(|s| s.contains("minute rollup by_device")), "{r}");
    assert!(server.stop().success());
}

/// Issue 25: the query limits are settings (`[query]`).
#[test]
fn query_limits_come_from_the_configuration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), Some("[query]\nmax_operators = 3\nmax_nesting = 2\n"));
    let sql = |q: &str| server.post("/v1/sql", "text/plain", None, q.as_bytes());
    let (status, r) = sql("SELECT count(*) FROM events WHERE cost_micros + 1 > 2");
    assert_eq!(status, 200, "{r}");
    let (status, r) = sql("SELECT count(*) FROM events WHERE cost_micros + 1 + 1 + 1 > 2");
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("query_too_complex")), "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("more than 3 operators")), "{r}");
    let (status, r) = sql("SELECT count(*) FROM events WHERE (((cost_micros))) > 2");
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("query_too_complex")), "{r}");
}

/// Issue 25: `/metrics` follows the Prometheus exposition conventions
/// (`promtool check metrics`, run when installed: `.ci/run` installs it),
/// every series has HELP and TYPE, and requests are timed and errors
/// counted by route and code.
#[test]
fn metrics_follow_the_exposition_conventions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), None);
    let (status, _) = server.post("/v1/events", NDJSON, None, &ndjson(10, 5));
    assert_eq!(status, 200);
    let (status, _) = server.post("/v1/sql", "text/plain", None, b"SELEC");
    assert_eq!(status, 400);
    // The cold-data cache as configured, though no segment is cold yet.
    assert_eq!(server.metric("adstore_object_cache_capacity_bytes"), 1 << 30);
    let text = server.get_text("/metrics");
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &names {
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        let family = if text.contains(&format!("# TYPE {name} ")) { *name } else { family };
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {name}");
        assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {name}");
    }
    assert!(text.contains("adstore_http_errors_total{code=\"syntax\",route=\"/v1/sql\"} 1"), "{text}");
    assert!(
        text.contains("adstore_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/events\"} 1"),
        "{text}"
    );
    assert!(server.metric("adstore_process_resident_memory_bytes") > 1 << 20);
    // Each maintenance task is counted, once the sealer's first pass is done.
    let runs = |text: &str, task: &str| -> u64 {
        let line = format!("adstore_maintenance_runs_total{{task=\"{task}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)?.trim().parse().ok()).unwrap_or_else(|| panic!("no {line}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for task in ["seal", "compact", "finalize"] {
        while runs(&server.get_text("/metrics"), task) == 0 {
            assert!(std::time::Instant::now() < deadline, "the sealer never ran {task}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(text.contains(&format!("adstore_maintenance_failures_total{{task=\"{task}\"}} 0")), "{text}");
    }
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => eprintln!("promtool check skipped: {e} (install the prometheus package; .ci/run does)"),
    }
}

/// An error echoes parts of the request (a SQL token, a header value); a
/// huge one is cut, so the answer stays small (issue 25).
#[test]
fn errors_do_not_echo_huge_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), None);
    let huge = "x".repeat(1 << 20);
    for sql in [
        format!("SELECT 1 FROM events WHERE {huge} = 1"),
        format!("SELECT 1 FROM {huge}"),
        format!("SELECT count(*) FROM events WHERE device = 'a' '{huge}'"),
    ] {
        let mut r = agent()
            .post(&format!("{}/v1/sql", server.url))
            .header("content-type", "text/plain")
            .send(sql.as_bytes())
            .expect("POST");
        assert_eq!(r.status().as_u16(), 400);
        let text = r.body_mut().read_to_string().expect("body");
        assert!(text.len() < 2_000, "an answer of {} bytes", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("more bytes cut")), "{v}");
    }
}

/// Spend that overflows 64 bits (one event with a cost of i64::MAX micros
/// beside another) fails a reprocess job with a message, rather than a
/// panic that left the job "running" until a restart.
#[test]
fn a_reprocess_whose_totals_overflow_fails_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), None);
    let now = now_ms();
    let line = |id: &str, cost: i64| {
        format!(
            "{{\"event_id\":\"{id}\",\"type\":\"impression\",\"ts\":{},\"publisher_id\":\"p\",\"advertiser_id\":\"a\",\
             \"campaign_id\":\"c\",\"ad_id\":\"x\",\"impression_id\":\"{id}\",\"cost_micros\":{cost}}}\n",
            now - 60_000
        )
    };
    let body = line("i1", i64::MAX) + &line("i2", 5);
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!(status, 200, "{r}");
    let spec = serde_json::json!({"from": now - 3_600_000, "to": now + 3_600_000, "reason": "overflow"});
    let (status, job) = server.post("/v1/reprocess", "application/json", None, spec.to_string().as_bytes());
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().expect("job id");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let job = loop {
        let job = server.get(&format!("/v1/reprocess/{id}"));
        if job["status"] != "running" {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "the job never ended: {job}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().is_some_and(|e| e.contains("overflows")), "{job}");
}

/// Equality and `IN` on the id columns read the final segments' id index
/// and find every stored row holding the id, counted here from the events
/// sent: ids that repeat across rows and columns, ids nobody sent, and ids
/// also in a bucket still open (provisional, without an index).
#[test]
fn id_filters_read_the_id_index_and_find_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 300\n\n\
                  [ingest]\nallowed_lateness_ms = 60000\n";
    let server = Server::start(dir.path(), Some(config));
    let mut body = ndjson(20_000, 29);
    let first: serde_json::Value =
        serde_json::from_slice(body.split(|&b| b == b'\n').next().expect("a line")).expect("generated json");
    // Three events of the first event's user, now: their bucket stays open.
    for i in 0..3 {
        let fresh = serde_json::json!({
            "event_id": format!("fresh-{i}"), "type": "impression", "ts": now_ms(), "publisher_id": "pub-fresh",
            "advertiser_id": "adv-fresh", "campaign_id": "cmp-fresh", "ad_id": "ad-fresh",
            "impression_id": format!("fresh-{i}"), "user_key": first["user_key"], "ip_hash": first["ip_hash"],
        });
        body.extend_from_slice(format!("{fresh}\n").as_bytes());
    }
    let sent: Vec<serde_json::Value> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("generated json"))
        .collect();
    let (status, r) = server.post("/v1/events", NDJSON, None, &body);
    assert_eq!((status, accepted(&r)), (200, 20_003), "{r}");
    // Sealed, and every closed bucket re-sealed as final: only the fresh
    // events' bucket (or, across an hour's turn, the one before) is open.
    let open_from = (now_ms() / HOUR_MS - 1) * HOUR_MS;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let listing = server.get("/v1/segments");
        let raws = listing["segments"].as_array().expect("segments");
        let closed_provisional =
            raws.iter().any(|s| s["is_final"] == false && s["bucket_start_ms"].as_i64() < Some(open_from));
        if listing["head"]["rows"] == 0 && !closed_provisional && raws.iter().any(|s| s["is_final"] == true) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not settled: {listing}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let count = |query: &str| -> u64 {
        let (status, r) = sql(&server, query);
        assert_eq!(status, 200, "{query}: {r}");
        r["rows"][0][0].as_u64().unwrap_or_else(|| panic!("{query}: {r}"))
    };
    for column in ["event_id", "impression_id", "click_id", "user_key", "ip_hash"] {
        let holding: Vec<String> = sent.iter().filter_map(|e| e[column].as_str().map(str::to_owned)).collect();
        assert!(holding.len() > 100, "{column}: too few events hold one");
        let mut values: Vec<String> =
            [0, 77, holding.len() / 2, holding.len() - 1].map(|i| holding[i].clone()).to_vec();
        values.push("never-sent".into());
        for v in &values {
            let want = sent.iter().filter(|e| e[column].as_str() == Some(v.as_str())).count() as u64;
            assert_eq!(count(&format!("SELECT count(*) FROM events WHERE {column} = '{v}'")), want, "{column} = {v}");
        }
        let (a, b) = (&values[0], &values[values.len() - 2]);
        let want = sent.iter().filter(|e| e[column].as_str().is_some_and(|x| x == a || x == b)).count() as u64;
        assert_eq!(count(&format!("SELECT count(*) FROM events WHERE {column} IN ('{a}', '{b}')")), want);
    }
    let user = first["user_key"].as_str().expect("user_key");
    assert!(
        count(&format!("SELECT count(*) FROM events WHERE user_key = '{user}' AND publisher_id = 'pub-fresh'")) == 3
    );
    let id = sent[777]["event_id"].as_str().expect("event_id");
    let (_, explain) = sql(&server, &format!("EXPLAIN SELECT * FROM events WHERE event_id = '{id}'"));
    let explain = explain.to_string();
    assert!(explain.contains("id index on event_id"), "{explain}");
    assert!(explain.contains("no matching event_id in the id index"), "{explain}");
}
