//! Access control against the real binary: tokens created with the CLI
//! (offline in a data directory, and through a running server), every
//! route's role matrix, publisher-scoped ingest, advertiser-scoped rows
//! over JSON, CSV, Arrow and the PostgreSQL protocol, revocation, the
//! loopback-only default, and no token in the logs.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use support::*;

/// `adstore token …` with `args`; (exit ok, stdout, stderr).
fn token_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(ADSTORE).arg("token").args(args).envs(env.iter().copied()).output().expect("adstore token");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a token offline in `dir` (the server stopped); returns it.
fn offline_token(dir: &std::path::Path, args: &[&str]) -> String {
    let dir = dir.to_str().expect("utf-8 path");
    let mut all = vec!["create", "--data-dir", dir];
    all.extend_from_slice(args);
    let (ok, token, err) = token_cli(&all, &[]);
    assert!(ok && token.starts_with("adst_"), "{token} {err}");
    token
}

/// A request with an optional bearer token; (status, body).
fn call(method: &str, url: &str, token: Option<&str>, body: Body<'_>) -> (u16, String) {
    let agent = agent();
    let mut response = match (method, body) {
        ("GET", _) => with_token(agent.get(url), token).call(),
        ("DELETE", _) => with_token(agent.delete(url), token).call(),
        ("POST", Some((ct, b))) => with_token(agent.post(url), token).header("content-type", ct).send(b),
        ("PUT", Some((ct, b))) => with_token(agent.put(url), token).header("content-type", ct).send(b),
        other => panic!("unknown request {other:?}"),
    }
    .expect("request");
    let status = response.status().as_u16();
    let mut text = String::new();
    let _ = response.body_mut().as_reader().read_to_string(&mut text);
    (status, text)
}

/// POSTs (or PUTs) `json` with a token; (status, body).
fn send_json(method: &str, url: &str, token: &str, json: &serde_json::Value) -> (u16, String) {
    call(method, url, Some(token), Some(("application/json", json.to_string().as_bytes())))
}

fn with_token<B>(request: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => request.header("authorization", format!("Bearer {t}")),
        None => request,
    }
}

/// A request body: content type and bytes.
type Body<'a> = Option<(&'a str, &'a [u8])>;

/// A row of the role matrix: method, path, body, and who may call it.
type Route<'a> = (&'a str, &'a str, Body<'a>, &'a str);

/// Who calls, in the matrix's column order.
const CALLERS: [&str; 6] = ["none", "bad", "revoked", "admin", "ingest", "query"];

#[test]
fn every_route_answers_by_role() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let admin = offline_token(&dir, &["--role", "admin", "--name", "ops"]);
    let ingest = offline_token(&dir, &["--role", "ingest", "--publisher", "pub-01"]);
    let query = offline_token(&dir, &["--role", "query", "--advertiser", "adv-001"]);
    let revoked = offline_token(&dir, &["--role", "admin"]);
    let revoked_id = &revoked[5..21];
    let (ok, _, err) = token_cli(&["revoke", "--data-dir", dir.to_str().expect("path"), revoked_id], &[]);
    assert!(ok, "{err}");
    let server = Server::start(&dir, None);
    let bad = "adst_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000";
    let tokens =
        [None, Some(bad), Some(revoked.as_str()), Some(admin.as_str()), Some(ingest.as_str()), Some(query.as_str())];

    // (method, path, body, who may call it): A admin, I ingest, Q query, * anyone.
    let json = "application/json";
    let ndjson = "application/x-ndjson";
    let routes: &[Route] = &[
        ("GET", "/health", None, "*"),
        ("GET", "/", None, "*"),
        ("GET", "/c?publisher_id=p", None, "*"),
        ("GET", "/metrics", None, "A"),
        ("GET", "/v1/segments", None, "A"),
        ("GET", "/v1/rollups", None, "A"),
        ("GET", "/v1/reconcile?from=2026-01-01&to=2026-01-02", None, "A"),
        ("GET", "/v1/attribution", None, "A"),
        ("PUT", "/v1/attribution", Some((json, b"not json")), "A"),
        ("GET", "/v1/retention", None, "A"),
        ("PUT", "/v1/retention", Some((json, b"{\"raw\": 1}")), "A"),
        ("POST", "/v1/reprocess", Some((json, b"not json")), "A"),
        ("GET", "/v1/reprocess/nope", None, "A"),
        ("GET", "/v1/tokens", None, "A"),
        ("POST", "/v1/tokens", Some((json, b"{\"role\": \"nobody\"}")), "A"),
        ("DELETE", "/v1/tokens/0000000000000000", None, "A"),
        ("PUT", "/v1/publishers/pub-09/signing-key", Some((json, b"{\"secret\": \"short\"}")), "A"),
        ("DELETE", "/v1/publishers/pub-09/signing-key", None, "A"),
        ("GET", "/v1/signing-keys", None, "A"),
        ("POST", "/v1/events/validate-signature", Some((json, b"not json")), "AI"),
        ("POST", "/v1/events", Some((ndjson, b"{}")), "AI"),
        ("POST", "/v1/events/impressions:batch", Some((ndjson, b"{}")), "AI"),
        ("POST", "/v1/events/clicks:batch", Some((ndjson, b"{}")), "AI"),
        ("POST", "/v1/events/conversions:batch", Some((ndjson, b"{}")), "AI"),
        ("GET", "/v1/sql?q=SELECT%201", None, "AQ"),
        ("POST", "/v1/sql", Some(("text/plain", b"SELECT 1")), "AQ"),
        ("GET", "/v1/billing/daily?day=2026-01-01", None, "AQ"),
        ("GET", "/v1/trace?click_id=c-1", None, "AQ"),
    ];
    for (method, path, body, who) in routes {
        for (caller, token) in CALLERS.iter().zip(tokens) {
            let (status, text) = call(method, &format!("{}{path}", server.url), token, *body);
            let allowed = *who == "*"
                || match *caller {
                    "admin" => who.contains('A'),
                    "ingest" => who.contains('I'),
                    "query" => who.contains('Q'),
                    _ => false,
                };
            let want = if allowed {
                None
            } else if ["none", "bad", "revoked"].contains(caller) {
                Some(401)
            } else {
                Some(403)
            };
            match want {
                None => assert!(![401, 403].contains(&status), "{caller} {method} {path}: {status} {text}"),
                Some(code) => {
                    assert_eq!(status, code, "{caller} {method} {path}: {text}");
                    let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON error");
                    let expected = if code == 401 { "unauthorized" } else { "forbidden" };
                    assert_eq!(body["error"]["code"], expected, "{text}");
                }
            }
        }
    }
    let (_, text) = call("GET", &format!("{}/v1/segments", server.url), None, None);
    assert!(text.contains("Authorization: Bearer"), "{text}");
    let (_, text) = call("GET", &format!("{}/v1/segments", server.url), Some(revoked.as_str()), None);
    assert!(text.contains("revoked"), "{text}");
    let (_, metrics) = call("GET", &format!("{}/metrics", server.url), Some(admin.as_str()), None);
    for reason in ["missing", "invalid", "forbidden"] {
        let line = format!("adstore_auth_failures_total{{reason=\"{reason}\"}}");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in {metrics}"));
        assert!(n > 0, "{line}");
    }
}

#[test]
fn scoped_tokens_send_and_see_only_their_own() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let admin = offline_token(&dir, &["--role", "admin"]);
    // Logs at debug level go to a file, to check no token is ever in them.
    let log_path = tmp.path().join("server.log");
    let (url, pg_url, _server) = spawn(&dir, &["--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0"], &log_path);
    let admin_env = [("ADSTORE_URL", url.as_str()), ("ADSTORE_TOKEN", admin.as_str())];

    // Tokens created through the running server with the CLI.
    let (ok, ingest, err) =
        token_cli(&["create", "--role", "ingest", "--publisher", "pub-01", "--name", "ad server"], &admin_env);
    assert!(ok && ingest.starts_with("adst_"), "{err}");
    let (ok, query, err) =
        token_cli(&["create", "--role", "query", "--advertiser", "adv-001", "--advertiser", "adv-002"], &admin_env);
    assert!(ok && query.starts_with("adst_"), "{err}");
    let (ok, list, err) = token_cli(&["list"], &admin_env);
    assert!(
        ok && list.contains("ad server") && list.contains("reads the rows of advertisers adv-001, adv-002"),
        "{list} {err}"
    );
    let (ok, _, err) = token_cli(&["create", "--role", "admin", "--data-dir", dir.to_str().expect("path")], &[]);
    assert!(!ok && err.contains("in use by a running server"), "{err}");

    // Ingest: lines of other publishers are rejected one by one, the rest stored.
    let body = ndjson(3_000, 11);
    let text = String::from_utf8(body.clone()).expect("utf-8");
    let total = text.lines().count();
    let own = text.lines().filter(|l| l.contains("\"publisher_id\":\"pub-01\"")).count();
    assert!(own > 0 && own < total, "{own} of {total}");
    let (status, answer) =
        call("POST", &format!("{url}/v1/events"), Some(ingest.as_str()), Some(("application/x-ndjson", &body)));
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["accepted"].as_u64(), Some(own as u64), "{answer}");
    assert_eq!(answer["rejected"].as_u64(), Some((total - own) as u64), "{answer}");
    let first = &answer["errors"][0];
    assert_eq!(first["field"], "publisher_id", "{answer}");
    assert!(first["reason"].as_str().expect("reason").starts_with("publisher_not_allowed"), "{answer}");

    // The same events through an Arrow body: the same split.
    let arrow = {
        let events: Vec<adstore_storage::Event> = text
            .lines()
            .take(500)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("line");
                adstore_storage::Event {
                    event_id: format!("arrow-{}", v["event_id"].as_str().unwrap_or("?")),
                    publisher_id: v["publisher_id"].as_str().unwrap_or("?").to_string(),
                    advertiser_id: v["advertiser_id"].as_str().unwrap_or("?").to_string(),
                    campaign_id: "cmp".into(),
                    ad_id: "ad".into(),
                    kind: adstore_storage::EventType::Impression,
                    impression_id: Some(format!("arrow-imp-{}", v["event_id"].as_str().unwrap_or("?"))),
                    ts: now_ms() - HOUR_MS,
                    ..adstore_storage::Event::default()
                }
            })
            .collect();
        let own = events.iter().filter(|e| e.publisher_id == "pub-01").count();
        (arrow_ipc(&adstore_storage::EventBatch::from_events(&events), events.len()), own, events.len())
    };
    let (status, answer) = call(
        "POST",
        &format!("{url}/v1/events"),
        Some(ingest.as_str()),
        Some(("application/vnd.apache.arrow.stream", &arrow.0)),
    );
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(arrow.1 as u64), Some((arrow.2 - arrow.1) as u64)),
        "{answer}"
    );

    // Only pub-01's events are stored.
    let sql_as = |token: &str, q: &str, format: &str| {
        let body = serde_json::json!({ "sql": q, "format": format }).to_string();
        call("POST", &format!("{url}/v1/sql"), Some(token), Some(("application/json", body.as_bytes())))
    };
    let (status, all) = sql_as(&admin, "SELECT publisher_id, count(*) AS n FROM events GROUP BY publisher_id", "json");
    assert_eq!(status, 200, "{all}");
    let all: serde_json::Value = serde_json::from_str(&all).expect("json");
    assert_eq!(all["rows"], serde_json::json!([["pub-01", own + arrow.1]]), "{all}");

    // Query: whatever the SQL says, only adv-001 and adv-002.
    let (_, by_adv) = sql_as(&admin, "SELECT advertiser_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1", "json");
    let by_adv: serde_json::Value = serde_json::from_str(&by_adv).expect("json");
    let theirs: Vec<serde_json::Value> = by_adv["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| ["adv-001", "adv-002"].contains(&r[0].as_str().unwrap_or("")))
        .cloned()
        .collect();
    assert!(theirs.len() == 2 && by_adv["rows"].as_array().map_or(0, Vec::len) > 2, "{by_adv}");
    for q in [
        "SELECT advertiser_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
        "SELECT advertiser_id, count(*) AS n FROM events WHERE advertiser_id = 'adv-003' OR true GROUP BY 1 ORDER BY 1",
        "SELECT advertiser_id, count(*) AS n FROM events WHERE advertiser_id NOT IN ('adv-009') GROUP BY 1 ORDER BY 1",
        "SELECT advertiser_id, count(*) AS n FROM events WHERE advertiser_id LIKE 'adv%' GROUP BY 1 ORDER BY 1",
    ] {
        let (status, got) = sql_as(&query, q, "json");
        assert_eq!(status, 200, "{got}");
        let got: serde_json::Value = serde_json::from_str(&got).expect("json");
        assert_eq!(got["rows"], serde_json::Value::Array(theirs.clone()), "{q}");
    }
    // The event trace: a query token finds only its advertisers' events.
    let stored_impression = |theirs: bool| {
        text.lines()
            .take(500)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                let adv = v["advertiser_id"].as_str().unwrap_or("");
                v["publisher_id"] == "pub-01" && ["adv-001", "adv-002"].contains(&adv) == theirs
            })
            .map(|v| format!("arrow-imp-{}", v["event_id"].as_str().unwrap_or("?")))
            .expect("an impression sent through Arrow")
    };
    for (theirs, query_finds) in [(true, 1), (false, 0)] {
        let path = format!("{url}/v1/trace?impression_id={}", stored_impression(theirs));
        let found = |token: &str| {
            let (status, answer) = call("GET", &path, Some(token), None);
            assert_eq!(status, 200, "{answer}");
            let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
            answer["found"].as_u64().expect("found")
        };
        assert_eq!((found(&admin), found(&query)), (1, query_finds), "{path}");
    }
    let (_, distinct) = sql_as(&query, "SELECT count(DISTINCT advertiser_id) AS n FROM events", "json");
    assert!(distinct.contains("\"rows\":[[2]]"), "{distinct}");
    let (_, csv) = sql_as(&query, "SELECT advertiser_id FROM events ORDER BY 1", "csv");
    let csv_ids: std::collections::BTreeSet<&str> = csv.lines().skip(1).collect();
    assert_eq!(csv_ids, ["adv-001", "adv-002"].into_iter().collect(), "{csv}");
    let body = serde_json::json!({ "sql": "SELECT advertiser_id FROM events", "format": "arrow" }).to_string();
    let mut response = agent()
        .post(&format!("{url}/v1/sql"))
        .header("authorization", format!("Bearer {query}"))
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .expect("arrow");
    let bytes = response.body_mut().read_to_vec().expect("body");
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).expect("arrow stream");
    let mut ids = std::collections::BTreeSet::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let column = batch.column(0).as_any().downcast_ref::<arrow_array::StringArray>().expect("strings");
        ids.extend(column.iter().flatten().map(str::to_string));
    }
    assert_eq!(ids, ["adv-001".to_string(), "adv-002".to_string()].into_iter().collect());
    let (_, explain) = sql_as(&query, "EXPLAIN SELECT count(*) FROM events", "json");
    assert!(
        explain.contains("advertiser_id IN ('adv-001', 'adv-002')") && !explain.contains("\"segments\""),
        "{explain}"
    );

    // The PostgreSQL protocol: the token is the password; same rows.
    let psql = |password: &str, q: &str| {
        let out = Command::new("psql")
            .arg(&pg_url)
            .args(["-X", "-A", "-t", "-F", "|", "-c", q])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql");
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (out, err) = psql(&query, "SELECT advertiser_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1");
    let expected: String = theirs.iter().map(|r| format!("{}|{}\n", r[0].as_str().unwrap_or(""), r[1])).collect();
    assert_eq!(out, expected, "{err}");
    let (_, err) = psql("adst_nope", "SELECT 1");
    assert!(err.contains("password authentication failed"), "{err}");
    let (_, err) = psql(&ingest, "SELECT 1");
    assert!(err.contains("an ingest token cannot query"), "{err}");

    // Revoked through the CLI: refused at once, over HTTP and PostgreSQL.
    let (ok, _, err) = token_cli(&["revoke", &query[5..21]], &admin_env);
    assert!(ok, "{err}");
    let (status, _) = sql_as(&query, "SELECT 1", "json");
    assert_eq!(status, 401);
    let (_, err) = psql(&query, "SELECT 1");
    assert!(err.contains("revoked"), "{err}");
    // `adstore sql` with a token.
    let out = Command::new(ADSTORE)
        .args(["sql", "--format", "csv", "SELECT count(*) AS n FROM events"])
        .envs(admin_env)
        .output()
        .expect("adstore sql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // No token anywhere in the logs, even at debug level.
    let log = std::fs::read_to_string(&log_path).expect("log");
    for token in [&admin, &ingest, &query] {
        assert!(!log.contains(&token[22..]), "a token's secret is in the log");
    }
    assert!(log.contains(&format!("token={}", &admin[5..21])), "the log names the acting token's id");
    let stored = std::fs::read_to_string(dir.join("tokens.json")).expect("tokens.json");
    for token in [&admin, &ingest, &query] {
        assert!(!stored.contains(&token[22..]), "a token's secret is stored");
    }
}

/// `adstore serve --data-dir DIR ARGS` logging at debug level to `log`;
/// its HTTP URL, PostgreSQL URL, and the process (killed on drop).
fn spawn(dir: &std::path::Path, args: &[&str], log: &std::path::Path) -> (String, String, KillOnDrop) {
    let mut child = Command::new(ADSTORE)
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("ADSTORE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("serve");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("stdout")));
    let mut address = || lines.next().expect("a line").expect("utf-8").trim_start_matches("listening on ").to_string();
    let url = address();
    let pg_url = if args.contains(&"off") { String::new() } else { address() };
    (url, pg_url, KillOnDrop(child))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_tokens_only_loopback_is_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let out = Command::new(ADSTORE)
        .args(["serve", "--listen", "0.0.0.0:0", "--pg-listen", "off", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing to listen on 0.0.0.0:0 (--listen) with no access token"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing was created");
    let out = Command::new(ADSTORE)
        .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("serve");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(pg_listen)"));
    // With a token it serves any address, and checks it.
    let admin = offline_token(&dir, &["--role", "admin"]);
    let (url, _, _server) =
        spawn(&dir, &["--listen", "0.0.0.0:0", "--pg-listen", "off"], &tmp.path().join("server.log"));
    let port = url.rsplit(':').next().expect("port");
    let (status, _) = call("GET", &format!("http://127.0.0.1:{port}/v1/segments"), None, None);
    assert_eq!(status, 401);
    let (status, _) = call("GET", &format!("http://127.0.0.1:{port}/v1/segments"), Some(admin.as_str()), None);
    assert_eq!(status, 200);
}

/// Signed impression ids: with a publisher's secret set, its clicks on ids
/// it did not sign are stored as `bad_signature` (not billable), fresh and
/// after the seal; `validate-signature` answers for one id. The vector is
/// docs/security.md's, computed with Python's `hmac`.
#[test]
fn clicks_on_unsigned_impression_ids_are_not_billable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let admin = offline_token(&dir, &["--role", "admin"]);
    let ingest = offline_token(&dir, &["--role", "ingest", "--publisher", "pub-01"]);
    let config = "[storage]\nseal_max_age_ms = 200\nseal_interval_ms = 50\nclose_idle_ms = 0\n";
    let server = Server::start(&dir, Some(config));
    let secret = "s3cret-key-for-pub-01-0123456789ab";
    let signed = "imp-42.ac44de7c5d5709cd235e8ff31f80d1e54a1120ff4bdf262306f326ed06a9d696";
    let url = |path: &str| format!("{}{path}", server.url);
    let (status, text) =
        send_json("PUT", &url("/v1/publishers/pub-01/signing-key"), &admin, &serde_json::json!({ "secret": secret }));
    assert_eq!(status, 200, "{text}");
    let (_, text) = call("GET", &format!("{}/v1/signing-keys", server.url), Some(admin.as_str()), None);
    assert_eq!(text, "{\"publishers\":[\"pub-01\"]}");
    let stored = std::fs::read_to_string(dir.join("signing_keys.json")).expect("keys file");
    assert!(stored.contains(secret));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("signing_keys.json")).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "readable by its owner only");

    let validate = |id: &str| {
        let json = serde_json::json!({ "publisher_id": "pub-01", "impression_id": id });
        let (status, text) = send_json("POST", &url("/v1/events/validate-signature"), &ingest, &json);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["verdict"]
            .as_str()
            .expect("verdict")
            .to_string()
    };
    assert_eq!(validate(signed), "valid");
    assert_eq!(validate("imp-42"), "malformed");
    assert_eq!(validate(&signed.replace("imp-42", "imp-43")), "mismatch");

    let ts = now_ms() - HOUR_MS;
    let event = |kind: &str, id: &str, imp: &str, t: i64| {
        serde_json::json!({
            "event_id": id, "type": kind, "ts": t, "publisher_id": "pub-01", "advertiser_id": "adv-001",
            "campaign_id": "cmp", "ad_id": "ad", "impression_id": imp, "cost_micros": 1000,
            "click_id": if kind == "click" { Some(format!("k-{id}")) } else { None },
        })
        .to_string()
    };
    let lines = [
        event("impression", "i1", signed, ts),
        event("click", "c1", signed, ts + 5_000),
        event("click", "c2", "imp-42", ts + 6_000),
        event("click", "c3", &signed.replace("imp-42", "imp-43"), ts + 7_000),
    ]
    .join("\n");
    let (status, text) = call(
        "POST",
        &format!("{}/v1/events", server.url),
        Some(ingest.as_str()),
        Some(("application/x-ndjson", lines.as_bytes())),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"accepted\":4"), "{text}");
    let rows_of = |sql: &str| {
        let (_, text) =
            send_json("POST", &url("/v1/sql"), &admin, &serde_json::json!({ "sql": sql, "format": "json" }));
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["rows"].clone()
    };
    let reasons = || rows_of("SELECT event_id, invalid_reason FROM events WHERE type = 'click' ORDER BY event_id");
    let want = serde_json::json!([["c1", ""], ["c2", "bad_signature"], ["c3", "bad_signature"]]);
    assert_eq!(reasons(), want, "fresh, from the head");
    wait_until_sealed(&server.url, &admin);
    assert_eq!(reasons(), want, "sealed");
    let sums = rows_of("SELECT sum(billable_clicks) AS b, sum(invalid_clicks) AS i FROM metrics");
    assert_eq!(sums, serde_json::json!([[1, 2]]), "one billable click, two invalid");
}

/// One publisher's token cannot touch another publisher's numbers: a click
/// on another publisher's impression id (or its last touch) is not
/// attributed, clicks through one publisher do not make another's a
/// flood, and a backfill (which re-opens final days) needs an admin.
/// Checked fresh from the head and again once sealed.
#[test]
fn one_publisher_cannot_borrow_or_disturb_anothers_attribution() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let admin = offline_token(&dir, &["--role", "admin"]);
    let pub1 = offline_token(&dir, &["--role", "ingest", "--publisher", "pub-01"]);
    let pub2 = offline_token(&dir, &["--role", "ingest", "--publisher", "pub-02"]);
    let config = "[storage]\nseal_max_age_ms = 200\nseal_interval_ms = 50\nclose_idle_ms = 0\n";
    let server = Server::start(&dir, Some(config));
    let url = |path: &str| format!("{}{path}", server.url);
    // A whole minute, 30 s into it, an hour back: every click below shares it.
    let ts = (now_ms() - HOUR_MS).div_euclid(60_000) * 60_000 + 30_000;
    let event = |kind: &str, id: &str, publisher: &str, user: &str, imp: Option<&str>, t: i64| {
        serde_json::json!({
            "event_id": id, "type": kind, "ts": t, "publisher_id": publisher, "advertiser_id": "adv-001",
            "campaign_id": "cmp", "ad_id": "ad", "impression_id": imp, "user_key": user, "cost_micros": 1000,
            "click_id": if kind == "click" { Some(format!("k-{id}")) } else { None },
        })
        .to_string()
    };
    let send = |token: &str, lines: &[String], mode: &str| {
        let body = lines.join("\n");
        call("POST", &url(&format!("/v1/events{mode}")), Some(token), Some(("application/x-ndjson", body.as_bytes())))
    };
    // pub-02's impressions, for users u1 and u2.
    let lines = [
        event("impression", "i1", "pub-02", "u1", Some("imp-1"), ts - 20_000),
        event("impression", "i2", "pub-02", "u2", Some("imp-2"), ts - 20_000),
    ];
    assert_eq!(send(&pub2, &lines, "").0, 200);
    // pub-01 clicks on them: by id, by last touch, and six times on u2 to
    // flood the minute.
    let mut lines = vec![
        event("click", "a-by-id", "pub-01", "u1", Some("imp-1"), ts),
        event("click", "a-last-touch", "pub-01", "u1", None, ts + 1_000),
    ];
    lines.extend((0..6).map(|k| event("click", &format!("a-flood-{k}"), "pub-01", "u2", None, ts + 2_000 + k)));
    let (status, text) = send(&pub1, &lines, "");
    assert_eq!(status, 200, "{text}");
    // pub-02's own clicks on its impressions, in the same minute.
    let lines = [
        event("click", "b-by-id", "pub-02", "u1", Some("imp-1"), ts + 3_000),
        event("click", "b-u2", "pub-02", "u2", Some("imp-2"), ts + 4_000),
    ];
    assert_eq!(send(&pub2, &lines, "").0, 200);

    let rows_of = |sql: &str| {
        let (_, text) =
            send_json("POST", &url("/v1/sql"), &admin, &serde_json::json!({ "sql": sql, "format": "json" }));
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["rows"].clone()
    };
    let verdicts = || {
        rows_of(
            "SELECT event_id, attributed, attributed_to, invalid_reason FROM events \
             WHERE type = 'click' AND event_id NOT LIKE 'a-flood-%' ORDER BY event_id",
        )
    };
    let want = serde_json::json!([
        ["a-by-id", false, null, "unattributed"],
        ["a-last-touch", false, null, "unattributed"],
        ["b-by-id", true, "imp-1", ""],
        ["b-u2", true, "imp-2", ""],
    ]);
    assert_eq!(verdicts(), want, "fresh, from the head");
    let floods = || rows_of("SELECT count(*) FROM events WHERE invalid_reason = 'click_flood'");
    assert_eq!(floods(), serde_json::json!([[1]]), "pub-01's sixth click only");
    wait_until_sealed(&server.url, &admin);
    assert_eq!(verdicts(), want, "sealed");
    assert_eq!(floods(), serde_json::json!([[1]]), "sealed");

    // A backfill re-opens final days: an admin's call only.
    let old = [event("impression", "old", "pub-01", "u9", Some("imp-old"), now_ms() - 3 * 24 * HOUR_MS)];
    let (status, text) = send(&pub1, &old, "?mode=backfill");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("needs an admin token"), "{text}");
    let (status, text) = send(&admin, &old, "?mode=backfill");
    assert_eq!(status, 200, "{text}");
}

/// `--insecure-no-auth` checks no token, so it makes none: a token created
/// then would be checked by nothing until a restart.
#[test]
fn an_insecure_server_refuses_to_create_tokens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let (url, _, _server) =
        spawn(&dir, &["--listen", "127.0.0.1:0", "--pg-listen", "off", "--insecure-no-auth"], &tmp.path().join("log"));
    let (status, text) =
        send_json("POST", &format!("{url}/v1/tokens"), "", &serde_json::json!({ "role": "admin", "name": "x" }));
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("--insecure-no-auth"), "{text}");
    assert!(!dir.join("tokens.json").exists(), "no token stored");
    let (ok, _, err) = token_cli(&["list", "--data-dir", tmp.path().join("typo").to_str().expect("path")], &[]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    assert!(!tmp.path().join("typo").exists(), "a mistyped directory is not created");
}

/// Waits (up to a minute) until the head of the server at `url` is empty.
fn wait_until_sealed(url: &str, admin: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, text) = call("GET", &format!("{url}/v1/segments"), Some(admin), None);
        let listing: serde_json::Value = serde_json::from_str(&text).expect("json");
        if listing["head"]["rows"].as_u64() == Some(0) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not sealed: {listing}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
