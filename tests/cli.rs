//! The real `adstore` binary end to end: `gen` a file, `serve`, `ingest` the
//! file (NDJSON, Arrow IPC built client-side, an Arrow IPC file), and check
//! the numbers the summary reports against what the store holds.
//!
//! Until exactly-once dedupe lands, the ~2% exact re-sends of the generated
//! file are stored twice, so the check is stored == accepted == lines - rejected.

mod support;

use std::process::{Command, Output};

use support::*;

fn adstore(args: &[&str]) -> Output {
    let out = Command::new(ADSTORE).args(args).env("ADSTORE_LOG", "warn").output().expect("run adstore");
    assert!(out.status.success(), "adstore {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `key  value` from the ingest summary.
fn summary_value(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in summary:\n{stdout}"))
}

/// The generated file with one malformed line inserted mid-way, and that line's number.
fn gen_file(dir: &std::path::Path, events: u64) -> (std::path::PathBuf, Vec<u8>, usize) {
    let file = dir.join("events.ndjson");
    let start = (now_ms() - 20 * HOUR_MS).to_string();
    let file_arg = file.to_str().expect("utf-8 path");
    adstore(&[
        "gen",
        "--events",
        &events.to_string(),
        "--seed",
        "7",
        "--start",
        &start,
        "--span",
        "18h",
        "--out",
        file_arg,
    ]);
    let mut bytes = std::fs::read(&file).expect("read generated file");
    // One malformed line in the middle, to see it rejected and counted.
    let mid = bytes.len() / 2;
    let nl = mid + bytes[mid..].iter().position(|&b| b == b'\n').expect("newline");
    let bad_line = bytes[..=nl].iter().filter(|&&b| b == b'\n').count() + 1;
    bytes.splice(nl + 1..nl + 1, b"{\"event_id\":\"broken\"\n".iter().copied());
    std::fs::write(&file, &bytes).expect("write");
    (file, bytes, bad_line)
}

fn ingest_and_check(format: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (file, bytes, bad_line) = gen_file(tmp.path(), 70_000);
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(lines, 70_001);

    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    let out = adstore(&[
        "ingest",
        file.to_str().expect("utf-8 path"),
        "--url",
        &server.url,
        "--batch-size",
        "3000",
        "--concurrency",
        "3",
        "--format",
        format,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(summary_value(&stdout, "sent"), lines, "{stdout}");
    let accepted = summary_value(&stdout, "accepted");
    let rejected = summary_value(&stdout, "rejected");
    assert_eq!(rejected, 1, "{stdout}\n{stderr}");
    // The generator re-sends ~2% of events exactly: those are acknowledged
    // as duplicates and stored once.
    let distinct = distinct_events(&bytes);
    assert_eq!(accepted, distinct, "{stdout}");
    assert_eq!(summary_value(&stdout, "duplicates"), lines - rejected - distinct, "{stdout}");
    assert!(stderr.contains(&format!("line {bad_line}: malformed JSON")), "the bad line is reported: {stderr}");
    // Every row back through `adstore sql`: an export larger than an HTTP
    // client's default body limit (10 MiB) streams to stdout whole.
    let out = adstore(&["sql", "--url", &server.url, "--format", "csv", "SELECT * FROM events"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.len() > 10 << 20, "{} bytes", out.stdout.len());
    assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count() as u64, accepted + 1);
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, accepted);
}

#[test]
fn gen_serve_ingest_ndjson() {
    ingest_and_check("ndjson");
}

#[test]
fn gen_serve_ingest_arrow() {
    ingest_and_check("arrow");
}

/// An Arrow IPC stream from `gen --format arrow` is sent in slices,
/// without parsing, and counts like the same events as NDJSON.
#[test]
fn gen_serve_ingest_arrow_file_in_slices() {
    ingest_arrow_file("7000");
}

/// Record batches no larger than --batch-size go out as they are read.
#[test]
fn gen_serve_ingest_arrow_file_batches_as_they_are() {
    ingest_arrow_file("40000");
}

fn ingest_arrow_file(batch_size: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = (now_ms() - 20 * HOUR_MS).to_string();
    let gen_args = ["gen", "--events", "30000", "--seed", "7", "--start", &start, "--span", "18h"];
    let ndjson = adstore(&gen_args).stdout;
    let file = tmp.path().join("events.arrows");
    let file_arg = file.to_str().expect("utf-8 path");
    adstore(&[&gen_args[..], &["--format", "arrow", "--out", file_arg]].concat());
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, None);
    // --format says ndjson (the default): an Arrow input is sent as Arrow anyway.
    let out = adstore(&["ingest", file_arg, "--url", &server.url, "--batch-size", batch_size, "--concurrency", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let distinct = distinct_events(&ndjson);
    assert_eq!(summary_value(&stdout, "sent"), 30_000, "{stdout}");
    assert_eq!(summary_value(&stdout, "rejected"), 0, "{stdout}");
    assert_eq!(summary_value(&stdout, "accepted"), distinct, "{stdout}");
    assert_eq!(summary_value(&stdout, "duplicates"), 30_000 - distinct, "{stdout}");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, distinct);
}

#[test]
fn ingest_refuses_a_broken_arrow_stream_before_sending() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("broken.arrows");
    std::fs::write(&file, [0xFF, 0xFF, 0xFF, 0xFF, 0x10, 0, 0, 0, 1, 2, 3]).expect("write");
    // Nothing listens on port 9: a request would fail differently.
    let out = Command::new(ADSTORE)
        .args(["ingest", file.to_str().expect("path"), "--url", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.arrows: not a readable Arrow IPC stream"), "{stderr}");
}

#[test]
fn gen_is_deterministic_by_seed_and_start() {
    let run = |seed: &str| {
        adstore(&["gen", "--events", "2000", "--seed", seed, "--start", "2026-11-01T00:00:00Z", "--span", "1h"]).stdout
    };
    let a = run("1");
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));
    assert_eq!(a.iter().filter(|&&b| b == b'\n').count(), 2000);
}

#[test]
fn ingest_reports_a_server_that_is_not_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("one.ndjson");
    std::fs::write(&file, b"{}\n").expect("write");
    // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
    let out = Command::new(ADSTORE)
        .args(["ingest", file.to_str().expect("path"), "--url", "http://127.0.0.1:9", "--max-attempts", "2"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up after 2 attempts"), "{stderr}");
}

/// A server whose head fills up answers 503 with Retry-After; the client
/// waits as told, without spending attempts, and every event lands once.
#[test]
fn ingest_waits_out_a_full_head_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = (now_ms() - 20 * HOUR_MS).to_string();
    let ndjson = adstore(&["gen", "--events", "12000", "--seed", "5", "--start", &start, "--span", "18h"]).stdout;
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, &ndjson).expect("write");
    let file_arg = file.to_str().expect("utf-8 path");
    let dir = tmp.path().join("data");
    // 128 KiB of head: less than one 2000-event request, so most requests
    // find the head full until the sealer (pressed, every 200 ms) empties it.
    let config = "[storage]\nmax_head_bytes = 131072\nseal_max_age_ms = 3600000\nseal_interval_ms = 200\n";
    let server = Server::start(&dir, Some(config));
    let url = server.url.clone();
    let args = ["ingest", file_arg, "--url", &url, "--batch-size", "2000", "--concurrency", "3"];
    let out = adstore(&[&args[..], &["--max-attempts", "1"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let distinct = distinct_events(&ndjson);
    assert_eq!(summary_value(&stdout, "sent"), 12_000, "{stdout}");
    assert_eq!(summary_value(&stdout, "accepted"), distinct, "{stdout}");
    assert_eq!(summary_value(&stdout, "duplicates"), 12_000 - distinct, "{stdout}");
    assert!(summary_value(&stdout, "retries") > 0, "the head was full at least once: {stdout}");
    assert!(server.metric("adstore_ingest_head_full_total") > 0);

    assert!(server.stop().success());

    // A client that may not wait gives up on a full head, and says why.
    // The sealer passes once at start and then not for an hour: once the
    // first requests fill the head, the others are refused.
    let config = "[storage]\nmax_head_bytes = 131072\nseal_max_age_ms = 3600000\nseal_interval_ms = 3600000\n";
    let server = Server::start(&dir, Some(config));
    let url = server.url.clone();
    let again = tmp.path().join("again.ndjson");
    let more = adstore(&["gen", "--events", "12000", "--seed", "6", "--start", &start, "--span", "18h"]).stdout;
    std::fs::write(&again, &more).expect("write");
    let mut args = args;
    args[1] = again.to_str().expect("utf-8 path");
    args[3] = &url;
    let out = Command::new(ADSTORE).args(args).args(["--max-wait", "0"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up after waiting 0 s in all for the server: HTTP 503"), "{stderr}");
    assert!(stderr.contains("storage.max_head_bytes"), "{stderr}");
    let accepted_again = summary_value(&String::from_utf8_lossy(&out.stdout), "accepted");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, distinct + accepted_again);
}

#[test]
fn serve_demo_loads_an_empty_data_dir_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start_with(&dir, None, &["--demo", "--demo-events", "5000"]);
    let head = server.get("/v1/segments")["head"]["rows"].as_u64().expect("head rows");
    // 5000 generated lines, of which exact re-sends are stored once.
    let distinct = demo_distinct_events(5000);
    assert!(distinct < 5000 && distinct > 4800, "{distinct}");
    assert_eq!(head, distinct);
    assert!(server.stop().success());
    // Not empty any more: --demo adds nothing.
    let server = Server::start_with(&dir, None, &["--demo", "--demo-events", "5000"]);
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, distinct);
}

#[test]
fn serve_demo_loads_more_than_the_head_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Three demo chunks of 50,000 events, each over 1 MB of head.
    let config = "[storage]\nmax_head_bytes = 1000000\n";
    let server = Server::start_with(&dir, Some(config), &["--demo", "--demo-events", "120000"]);
    let distinct = demo_distinct_events(120_000);
    assert!(server.metric("adstore_sealed_rows_total") > 0, "the demo load sealed as it went");
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, distinct);
}

/// Distinct events among the first `events` that `serve --demo` generates
/// (which events does not depend on when they start).
fn demo_distinct_events(events: u64) -> u64 {
    let mut body = Vec::new();
    let cfg = adstore_server::datagen::GenConfig { events, ..Default::default() };
    for e in adstore_server::datagen::Generator::new(cfg) {
        adstore_server::datagen::write_ndjson(&e, &mut body);
    }
    distinct_events(&body)
}

/// Distinct (publisher_id, type, event_id) among the valid JSON lines.
fn distinct_events(ndjson: &[u8]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    for line in ndjson.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        seen.insert((v["publisher_id"].to_string(), v["type"].to_string(), v["event_id"].to_string()));
    }
    seen.len() as u64
}
