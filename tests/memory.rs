//! The memory budget end to end: with `storage.memory_limit` just above
//! what a presized dedupe table takes, ingest fills the head until the
//! parts together reach the limit; requests are then refused with 503
//! `memory_full` and `Retry-After`, the parts are in `/metrics`, and once a
//! seal frees the head the same request goes through: every event stored
//! once.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn ingest_is_refused_at_the_memory_limit_and_accepted_again_once_seals_free_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let presized = "[ingest]\ndedupe_expected_keys = 4000000\n";
    // How much the presized table takes on this build.
    let server = Server::start(&dir, Some(presized));
    let table = server.metric("adstore_memory_used_bytes{part=\"dedupe\"}");
    assert!(server.stop().success());
    let limit = table + (12 << 20);
    assert!(limit >= 64 << 20, "table {table}");
    let config = format!(
        "[storage]\nmemory_limit = {limit}\nmax_head_bytes = {}\nblock_cache_bytes = 1048576\n\
         seal_max_age_ms = 1500\nseal_interval_ms = 100\n\n{presized}",
        limit - (2 << 20)
    );
    let server = Server::start(&dir, Some(&config));
    assert_eq!(server.metric("adstore_memory_limit_bytes"), limit);

    let mut stored = 0u64;
    let mut refused = None;
    for seed in 0..20 {
        let body = ndjson(20_000, 100 + seed);
        let resp = agent()
            .post(format!("{}/v1/events", server.url))
            .header("content-type", "application/x-ndjson")
            .send(&body[..])
            .expect("POST");
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let r: serde_json::Value =
            serde_json::from_str(&resp.into_body().read_to_string().expect("body")).expect("json");
        if status == 503 && r["error"]["code"] == "memory_full" {
            assert!(retry_after.as_deref().and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{r}");
            let message = r["error"]["message"].as_str().expect("message");
            assert!(message.contains(&format!("storage.memory_limit {limit}")), "{message}");
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "{r}");
        stored += r["accepted"].as_u64().expect("accepted");
    }
    let body = refused.expect("ingest reached the memory limit");
    assert!(server.metric("adstore_ingest_memory_full_total") >= 1);
    assert!(server.metric("adstore_memory_used_bytes{part=\"head\"}") > 0);

    // A seal (by age) frees the head: the same request is then accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, r) = server.post("/v1/events", "application/x-ndjson", None, &body);
        if status == 200 {
            stored += r["accepted"].as_u64().expect("accepted");
            break;
        }
        assert_eq!((status, r["error"]["code"].as_str()), (503, Some("memory_full")), "{r}");
        assert!(Instant::now() < deadline, "still refused: {r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(server.stop().success());
    assert_eq!(stored_count(&dir) as u64, stored, "every accepted event stored once");
}
