//! The event trace end to end (`GET /v1/trace`, `adstore trace`): a day
//! of hand-made clicks and conversions, one per way attribution can go
//! (by id, by last touch, too fast, another ad, outside the window, an
//! impression never received, no user, a flood), sent ten days back so
//! the day seals, becomes final and gets its rollups and billing
//! snapshot. Each trace is checked against what the rules of DESIGN.md
//! §3–§4 say for that event, written here by hand; duplicates against the
//! copies sent; an event never received against the candidates it must
//! list; and a fresh event in the head.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const CONFIG: &str = "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nclose_idle_ms = 500\n\n\
     [ingest]\nallowed_lateness_ms = 3600000\n";

/// One event as NDJSON: `extra` holds its optional fields.
fn line(id: &str, kind: &str, ts: i64, ad: &str, extra: &str) -> String {
    format!(
        "{{\"event_id\":\"{id}\",\"type\":\"{kind}\",\"ts\":{ts},\"publisher_id\":\"p1\",\"advertiser_id\":\"a1\",\
         \"campaign_id\":\"c1\",\"ad_id\":\"{ad}\",\"cost_micros\":10{extra}}}\n"
    )
}

fn trace(server: &Server, query: &str) -> (u16, Value) {
    let mut r = agent().get(&format!("{}/v1/trace?{query}", server.url)).call().expect("GET");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The one trace of an event found by `query`.
fn one(server: &Server, query: &str) -> Value {
    let (status, r) = trace(server, query);
    assert_eq!(status, 200, "{query}: {r}");
    assert_eq!(r["found"], 1, "{query}: {r}");
    r["traces"][0].clone()
}

fn click(server: &Server, id: &str) -> Value {
    one(server, &format!("publisher_id=p1&type=click&event_id={id}"))
}

fn date_ms(ms: i64) -> String {
    adstore_storage::time::format_timestamp(ms)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn every_attribution_outcome_is_explained_and_duplicates_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), Some(CONFIG));
    let day0 = (now_ms() / DAY_MS - 10) * DAY_MS;
    let t0 = day0 + 10 * HOUR_MS;
    let minute_3h = t0 + 3 * HOUR_MS;
    let mut body = String::new();
    body += &line("imp1", "impression", t0, "x1", ",\"impression_id\":\"i1\",\"user_key\":\"u1\"");
    body +=
        &line("k-ok", "click", t0 + 5_000, "x1", ",\"impression_id\":\"i1\",\"click_id\":\"c-ok\",\"user_key\":\"u1\"");
    body += &line(
        "k-fast",
        "click",
        t0 + 500,
        "x1",
        ",\"impression_id\":\"i1\",\"click_id\":\"c-fast\",\"user_key\":\"u2\"",
    );
    body += &line(
        "k-ad",
        "click",
        t0 + 10_000,
        "x2",
        ",\"impression_id\":\"i1\",\"click_id\":\"c-ad\",\"user_key\":\"u3\"",
    );
    body += &line(
        "k-late",
        "click",
        t0 + 2 * HOUR_MS,
        "x1",
        ",\"impression_id\":\"i1\",\"click_id\":\"c-late\",\"user_key\":\"u4\"",
    );
    body += &line(
        "k-none",
        "click",
        t0 + 20_000,
        "x1",
        ",\"impression_id\":\"i404\",\"click_id\":\"c-none\",\"user_key\":\"u5\"",
    );
    body += &line("k-lt", "click", t0 + 20 * 60_000, "x1", ",\"click_id\":\"c-lt\",\"user_key\":\"u1\"");
    body += &line("k-anon", "click", t0 + 30_000, "x1", ",\"click_id\":\"c-anon\"");
    body += &line("imp9", "impression", minute_3h - 10_000, "x3", ",\"impression_id\":\"i9\",\"user_key\":\"u9\"");
    for n in 1..=7 {
        let extra = format!(",\"impression_id\":\"i9\",\"click_id\":\"c-f{n}\",\"user_key\":\"u9\"");
        body += &line(&format!("k-f{n}"), "click", minute_3h + 1_000 + n * 1_000, "x3", &extra);
    }
    // The window's edge: a click exactly click_window after its impression.
    body += &line(
        "k-edge",
        "click",
        t0 + HOUR_MS,
        "x1",
        ",\"impression_id\":\"i1\",\"click_id\":\"c-edge\",\"user_key\":\"u10\"",
    );
    // A last-touch tie: two impressions at one time; the larger id wins.
    for id in ["i-a", "i-b"] {
        let extra = format!(",\"impression_id\":\"{id}\",\"user_key\":\"u6\"");
        body += &line(&format!("imp-{id}"), "impression", t0 + 30 * 60_000, "x5", &extra);
    }
    body += &line("k-tie", "click", t0 + 31 * 60_000, "x5", ",\"click_id\":\"c-tie\",\"user_key\":\"u6\"");
    // A flood by ip_hash: seven clicks without a user_key, and one with a
    // user_key from the same ip_hash, which the rule counts apart.
    let minute_4h = t0 + 4 * HOUR_MS;
    body += &line("imp7", "impression", minute_4h - 10_000, "x6", ",\"impression_id\":\"i7\"");
    for n in 1..=7 {
        let extra = format!(",\"impression_id\":\"i7\",\"click_id\":\"c-p{n}\",\"ip_hash\":\"ip7\"");
        body += &line(&format!("k-p{n}"), "click", minute_4h + n * 1_000, "x6", &extra);
    }
    body += &line(
        "k-pu",
        "click",
        minute_4h + 500,
        "x6",
        ",\"impression_id\":\"i7\",\"click_id\":\"c-pu\",\"ip_hash\":\"ip7\",\"user_key\":\"u8\"",
    );
    body += &line("cv-id", "conversion", t0 + HOUR_MS, "x1", ",\"click_id\":\"c-ok\",\"user_key\":\"u7\"");
    body += &line("cv-lt", "conversion", t0 + 2 * HOUR_MS, "x9", ",\"user_key\":\"u1\"");
    body += &line("cv-lost", "conversion", t0 + 4 * HOUR_MS, "x1", ",\"click_id\":\"c-never\"");
    // The next day's second hour, so that day0 closes by event time too.
    let next = day0 + DAY_MS + HOUR_MS;
    body += &line("imp-next", "impression", next, "x1", ",\"impression_id\":\"i-next\"");
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!((status, r["rejected"].as_u64()), (200, Some(0)), "{r}");
    // The impression twice more (a producer's retries, late: a backfill),
    // once alone and once beside a new event.
    let again = line("imp1", "impression", t0, "x1", ",\"impression_id\":\"i1\",\"user_key\":\"u1\"");
    for extra in ["", &line("imp2", "impression", next + 1, "x1", ",\"impression_id\":\"i2\"")] {
        let body = format!("{again}{extra}");
        let (status, r) = server.post("/v1/events?mode=backfill", "application/x-ndjson", None, body.as_bytes());
        let fresh = u64::from(!extra.is_empty());
        assert_eq!((status, r["duplicates"].as_u64(), r["accepted"].as_u64()), (200, Some(1), Some(fresh)), "{r}");
    }

    // Wait for day0 to be final, rolled up and billed.
    let deadline = Instant::now() + Duration::from_secs(180);
    let imp = loop {
        let t = one(&server, "publisher_id=p1&type=impression&event_id=imp1");
        let billed = t["counted_in"]["billing"]["versions"].as_array().is_some_and(|v| !v.is_empty());
        if t["stored"]["final"] == true && billed {
            break t;
        }
        assert!(Instant::now() < deadline, "day0 did not become final and billed: {t}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // The impression: where it is, its duplicates, what it counts in.
    assert_eq!(imp["stored"]["in"], "segment", "{imp}");
    assert_eq!(imp["stored"]["rules_version"], 1);
    assert_eq!(imp["event"]["user_key"], "u1");
    assert_eq!(imp["duplicates"]["count"], 2, "{imp}");
    let arrivals = imp["duplicates"]["arrivals"].as_array().expect("arrivals");
    assert!(arrivals.iter().all(|a| a["stage"] == "ingest" && a["ts"] == date_ms(t0)), "{imp}");
    let attributed: Vec<&str> = imp["attribution"]["attributed_clicks"]
        .as_array()
        .expect("clicks")
        .iter()
        .map(|c| text(&c["event_id"]))
        .collect();
    assert_eq!(attributed, ["k-fast", "k-ok", "k-lt", "k-edge"], "by id and by its user's last touch: {imp}");
    let measures = &imp["counted_in"]["measures"];
    assert_eq!((measures["impressions"].as_i64(), measures["billable_impressions"].as_i64()), (Some(1), Some(1)));
    assert_eq!(measures["spend_micros"], 10);
    assert!(measures.get("clicks").is_none(), "only what it adds: {measures}");
    let rollups = imp["counted_in"]["rollups"].as_array().expect("rollups");
    assert!(
        rollups.iter().any(|r| r["granularity"] == "minute" && r["bucket"] == date_ms(t0)),
        "a minute bucket at its minute: {imp}"
    );
    assert!(rollups.iter().any(|r| r["granularity"] == "day" && r["bucket"] == date_ms(day0)), "{imp}");
    let billing = &imp["counted_in"]["billing"];
    assert_eq!(billing["row"]["day"], date(day0));
    assert_eq!(
        (billing["row"]["advertiser_id"].as_str(), billing["row"]["campaign_id"].as_str()),
        (Some("a1"), Some("c1"))
    );
    assert_eq!(billing["versions"][0]["version"], 1);
    assert_eq!(billing["versions"][0]["cause"], "final");

    // By impression id, and by last touch.
    let ok = click(&server, "k-ok");
    assert_eq!(
        (ok["attribution"]["method"].as_str(), ok["attribution"]["attributed_to"].as_str()),
        (Some("impression_id"), Some("i1"))
    );
    assert_eq!(ok["attribution"]["agrees"], true, "{ok}");
    assert_eq!(ok["attribution"]["derived_now"]["anchor"]["seconds_before"], 5.0);
    assert_eq!(ok["invalid"]["reason"], "");
    assert_eq!(ok["counted_in"]["measures"]["billable_clicks"], 1);
    let convs: Vec<&str> = ok["attribution"]["attributed_conversions"]
        .as_array()
        .expect("convs")
        .iter()
        .map(|c| text(&c["event_id"]))
        .collect();
    assert_eq!(convs, ["cv-id"]);
    let lt = click(&server, "k-lt");
    assert_eq!(text(&lt["attribution"]["method"]), "last_touch (user_key, ad_id)");
    assert_eq!(
        (lt["attribution"]["attributed_to"].as_str(), lt["attribution"]["agrees"].as_bool()),
        (Some("i1"), Some(true)),
        "{lt}"
    );

    // Too fast: attributed, invalid, the gap named.
    let fast = click(&server, "k-fast");
    assert_eq!(fast["attribution"]["attributed"], true);
    assert_eq!(
        (fast["invalid"]["reason"].as_str(), fast["invalid"]["rule"].as_str()),
        (Some("too_fast"), Some("too_fast_ms"))
    );
    let detail = text(&fast["invalid"]["detail"]);
    assert!(detail.contains("500 ms after impression \"i1\"; clicks sooner than 1000 ms"), "{fast}");
    assert_eq!(
        (
            fast["counted_in"]["measures"]["invalid_clicks"].as_i64(),
            fast["counted_in"]["measures"].get("billable_clicks")
        ),
        (Some(1), None)
    );

    // Not attributed, each for its reason.
    for (id, why) in [
        ("k-ad", "impression \"i1\" is for ad_id \"x1\", the click for \"x2\""),
        ("k-late", "impression \"i1\" came 7200 s before the click: 3600 s outside the 3600 s window"),
        ("k-none", "no impression with impression_id \"i404\" from publisher \"p1\" is stored"),
        ("k-anon", "names no impression_id and has no user_key"),
    ] {
        let t = click(&server, id);
        assert_eq!(t["attribution"]["attributed"], false, "{t}");
        assert_eq!(t["attribution"]["agrees"], true, "{t}");
        let got = text(&t["attribution"]["derived_now"]["why_not"]);
        assert!(got.contains(why), "{id}: {got}");
        assert_eq!(t["invalid"]["reason"], "unattributed", "{t}");
    }

    // Floods by user_key and by ip_hash: the sixth and seventh clicks.
    for (prefix, ad, who) in [("k-f", "x3", "user_key \"u9\""), ("k-p", "x6", "ip_hash \"ip7\"")] {
        for n in 1..=7 {
            let t = click(&server, &format!("{prefix}{n}"));
            let want = if n > 5 { "click_flood" } else { "" };
            assert_eq!(t["invalid"]["reason"], want, "{t}");
            if n > 5 {
                let detail = text(&t["invalid"]["detail"]);
                assert!(detail.starts_with(&format!("click {n} of 7 on ad \"{ad}\" by {who}")), "{detail}");
            }
        }
    }
    assert_eq!(click(&server, "k-pu")["invalid"]["reason"], "", "counted by its user_key");

    // The window's edge is inside it; a tie goes to the larger id.
    let edge = click(&server, "k-edge");
    assert_eq!(
        (edge["attribution"]["attributed_to"].as_str(), edge["attribution"]["agrees"].as_bool()),
        (Some("i1"), Some(true)),
        "{edge}"
    );
    let tie = click(&server, "k-tie");
    assert_eq!(
        (tie["attribution"]["attributed_to"].as_str(), tie["attribution"]["agrees"].as_bool()),
        (Some("i-b"), Some(true)),
        "{tie}"
    );

    // Conversions by click id and by last touch (the latest click of u1 on a1).
    let cv = one(&server, "publisher_id=p1&type=conversion&event_id=cv-id");
    assert_eq!(
        (cv["attribution"]["method"].as_str(), cv["attribution"]["attributed_to"].as_str()),
        (Some("click_id"), Some("c-ok"))
    );
    let cv = one(&server, "publisher_id=p1&type=conversion&event_id=cv-lt");
    assert_eq!(text(&cv["attribution"]["method"]), "last_touch (user_key, advertiser_id)");
    assert_eq!(cv["attribution"]["attributed_to"], "c-lt", "{cv}");
    assert_eq!(cv["counted_in"]["measures"]["attributed_conversions"], 1);

    // By click id: the same click.
    let by_click = one(&server, "click_id=c-fast");
    assert_eq!(by_click["event"]["event_id"], "k-fast");

    // Never received: why, and what is near it.
    let q = format!("publisher_id=p1&type=click&event_id=k-lost&user_key=u1&ad_id=x1&ts={}", t0 + 60_000);
    let (status, r) = trace(&server, &q);
    assert_eq!((status, r["found"].as_u64()), (200, Some(0)), "{r}");
    assert_eq!(r["not_found"]["duplicates"]["count"], 0);
    let near: Vec<&str> =
        r["not_found"]["candidates"].as_array().expect("candidates").iter().map(|c| text(&c["event_id"])).collect();
    assert_eq!(near, ["k-ok", "imp1", "k-lt"], "nearest first, same user and ad, in the click window: {r}");
    let (status, r) = trace(&server, "click_id=c-never&publisher_id=p1");
    assert_eq!((status, r["found"].as_u64()), (200, Some(0)), "{r}");
    let named: Vec<&str> =
        r["not_found"]["named_by"].as_array().expect("named_by").iter().map(|c| text(&c["event_id"])).collect();
    assert_eq!(named, ["cv-lost"], "{r}");
    assert!(r["not_found"]["candidates_hint"].is_string(), "{r}");

    // The CLI prints the same trace.
    let out = std::process::Command::new(ADSTORE)
        .args(["trace", "--url", &server.url, "--publisher-id", "p1", "--type", "click", "--event-id", "k-ad"])
        .output()
        .expect("adstore trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("not attributed") && stdout.contains("is for ad_id \"x1\""), "{stdout}");
    assert!(stdout.contains("invalid: unattributed"), "{stdout}");
    let out = std::process::Command::new(ADSTORE)
        .args(["trace", "--url", &server.url, "--click-id", "c-never", "--json"])
        .output()
        .expect("adstore trace --json");
    let json: Value = serde_json::from_slice(&out.stdout).expect("--json prints the answer");
    assert_eq!(json["found"], 0);
}

#[test]
fn a_fresh_event_is_traced_from_the_head_and_bad_requests_are_refused() {
    // (Also: a provisional decision the stored anchors now contradict, and
    // an erased event.)
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), Some("[storage]\nseal_max_age_ms = 600000\n"));
    let now = now_ms();
    let body = line("fresh", "impression", now - 1_000, "x1", ",\"impression_id\":\"if\",\"user_key\":\"uf\"");
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(1)), "{r}");
    let t = one(&server, "impression_id=if");
    assert_eq!((t["stored"]["in"].as_str(), t["stored"]["final"].as_bool()), (Some("head"), Some(false)), "{t}");
    assert!(text(&t["stored"]["note"]).contains("provisional"), "{t}");
    assert_eq!(t["counted_in"]["rollups"], serde_json::json!([]));
    assert!(text(&t["counted_in"]["rollups_note"]).contains("head"), "{t}");
    assert_eq!(t["duplicates"]["count"], 0);
    assert!(server.metric("adstore_duplicate_log_budget_bytes") > 0);

    // A click whose impression arrives after it: decided at ingest without
    // it, so the trace shows the stored decision beside the one the
    // anchors now give, and why they differ.
    let click_line = line(
        "late-k",
        "click",
        now - 60_000,
        "x1",
        ",\"impression_id\":\"i-late\",\"click_id\":\"c-late\",\"user_key\":\"uL\"",
    );
    let imp_line =
        line("late-i", "impression", now - 120_000, "x1", ",\"impression_id\":\"i-late\",\"user_key\":\"uL\"");
    for body in [click_line, imp_line] {
        let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
        assert_eq!((status, r["accepted"].as_u64()), (200, Some(1)), "{r}");
    }
    let t = one(&server, "click_id=c-late");
    let a = &t["attribution"];
    assert_eq!(
        (a["attributed"].as_bool(), a["derived_now"]["attributed_to"].as_str()),
        (Some(false), Some("i-late")),
        "{t}"
    );
    assert_eq!(a["agrees"], false, "{t}");
    assert!(text(&a["note"]).contains("provisional"), "{t}");

    // One impression id from twelve publishers: all counted, ten traced.
    let body: String = (0..12)
        .map(|n| {
            line(&format!("m{n}"), "impression", now - 5_000, "x1", ",\"impression_id\":\"imany\"")
                .replace("\"p1\"", &format!("\"p{n}\""))
        })
        .collect();
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, body.as_bytes());
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(12)), "{r}");
    let (status, r) = trace(&server, "impression_id=imany");
    assert_eq!(
        (status, r["found"].as_u64(), r["traced"].as_u64(), r["more"].as_bool()),
        (200, Some(12), Some(10), Some(true))
    );

    // An id stored twice (the second copy past the dedupe window, by
    // backfill), the second sent twice: each copy has its own duplicates.
    let old = line("twice", "impression", now - 30 * HOUR_MS, "x1", ",\"impression_id\":\"i-tw1\"");
    let (status, r) = server.post("/v1/events?mode=backfill", "application/x-ndjson", None, old.as_bytes());
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(1)), "{r}");
    let new = line("twice", "impression", now - 2_000, "x1", ",\"impression_id\":\"i-tw2\"");
    let (status, r) = server.post("/v1/events", "application/x-ndjson", None, format!("{new}{new}").as_bytes());
    assert_eq!((status, r["accepted"].as_u64(), r["duplicates"].as_u64()), (200, Some(1), Some(1)), "{r}");
    let (status, r) = trace(&server, "publisher_id=p1&type=impression&event_id=twice");
    assert_eq!((status, r["found"].as_u64()), (200, Some(2)), "{r}");
    let counts: Vec<u64> = r["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .map(|t| t["duplicates"]["count"].as_u64().expect("count"))
        .collect();
    assert_eq!(counts, [0, 1], "the older copy had none: {r}");

    // The CLI's exit status: 0 stored, 1 not stored, 2 refused or unreachable.
    let status_of = |args: &[&str]| {
        let out = std::process::Command::new(ADSTORE).arg("trace").args(args).output().expect("adstore trace");
        out.status.code()
    };
    assert_eq!(status_of(&["--url", &server.url, "--impression-id", "if"]), Some(0));
    assert_eq!(status_of(&["--url", &server.url, "--impression-id", "nowhere"]), Some(1));
    assert_eq!(status_of(&["--url", &server.url, "--click-id", ""]), Some(2));
    assert_eq!(status_of(&["--url", "http://127.0.0.1:9", "--click-id", "x"]), Some(2));

    // Erased: the identity is gone and the decision is not derived again.
    let (status, r) = post(&format!("{}/v1/erasure", server.url), "application/json", None, br#"{"user_key": "uL"}"#);
    assert_eq!(status, 200, "{r}");
    let t = one(&server, "click_id=c-late");
    assert!(t["event"]["user_key"].is_null() && t["erased"].is_string(), "{t}");
    assert!(text(&t["attribution"]["method"]).starts_with("not derived again"), "{t}");

    for (query, names) in [
        ("", "exactly one of"),
        ("event_id=fresh", "publisher_id and type"),
        ("event_id=fresh&publisher_id=p1&type=bogus", "type"),
        ("click_id=x&impression_id=y", "exactly one of"),
        ("click_id=", "click_id"),
        ("click_id=x&type=impression", "type"),
        ("click_id=x&ts=yesterday", "ts"),
        ("click_id=x&color=red", "color"),
        ("click_id=x&user_key=u&ad_id=a&ts=1e3", "ts"),
        (&format!("publisher_id=p1&type=click&event_id={}", "e".repeat(129)), "event_id"),
    ] {
        let (status, r) = trace(&server, query);
        assert_eq!(status, 400, "{query}: {r}");
        let message = text(&r["error"]["message"]);
        assert!(message.contains(names), "{query}: {message}");
    }
}
