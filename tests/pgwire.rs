//! The PostgreSQL wire protocol with real clients: psql (Debian's
//! `postgresql-client`, simple query protocol, text results) and Python's
//! psycopg 3 (`tests/pg/psycopg_client.py`: extended protocol, parameters,
//! prepared statements, binary results, cancel). Answers are checked
//! against `/v1/sql` over the same data: the same rows, typed as
//! PostgreSQL types.

mod support;

use std::process::Command;

use support::*;

/// `psql` with the given arguments against the server; (exit ok, stdout, stderr).
fn psql(server: &Server, args: &[&str]) -> (bool, String, String) {
    psql_url(&server.pg_url, args)
}

fn psql_url(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-v", "ON_ERROR_STOP=0", "--no-psqlrc"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql (Debian package postgresql-client; .ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// psql reading `input` as a script; its stdout.
fn psql_stdin(server: &Server, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("psql")
        .arg(&server.pg_url)
        .args(["-X", "-A", "-F", "|", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write to psql");
    let out = child.wait_with_output().expect("psql output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "psql {input}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unaligned, tuples-only psql output of one query: rows of `|`-separated fields.
fn psql_rows(server: &Server, query: &str) -> Vec<Vec<String>> {
    let (ok, out, err) = psql(server, &["-A", "-t", "-F", "|", "-c", query]);
    assert!(ok && err.is_empty(), "psql {query}: {err}");
    out.lines().map(|l| l.split('|').map(str::to_string).collect()).collect()
}

/// PostgreSQL's text form of an RFC 3339 UTC timestamp of the HTTP API:
/// `2026-11-01T06:00:00.120Z` is `2026-11-01 06:00:00.12+00`.
fn pg_timestamp(rfc3339: &str) -> String {
    let mut text = rfc3339.replace('T', " ").trim_end_matches('Z').to_string();
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    text + "+00"
}

#[test]
fn psql_reads_what_the_http_api_answers_with_postgresql_types() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "20000"]);

    // The same rows as /v1/sql, group for group.
    let query = "SELECT campaign_id, count(*) AS n, sum(cost_micros) AS cost, min(ts) AS first \
                 FROM events GROUP BY campaign_id ORDER BY campaign_id";
    let (status, http) = sql(&server, query);
    assert_eq!(status, 200, "{http}");
    let http_rows = http["rows"].as_array().expect("rows");
    let pg_rows = psql_rows(&server, query);
    assert!(http_rows.len() > 3, "{http}");
    assert_eq!(pg_rows.len(), http_rows.len());
    for (pg, http) in pg_rows.iter().zip(http_rows) {
        assert_eq!(pg[0], http[0].as_str().expect("campaign"));
        assert_eq!(pg[1], http[1].to_string());
        assert_eq!(pg[2], http[2].to_string());
        // PostgreSQL's text form of timestamptz: a space, a numeric offset.
        assert_eq!(pg[3], pg_timestamp(http[3].as_str().expect("ts")), "{pg:?}");
    }

    // `version` is a column of billing_daily, not the catalog's version().
    assert_eq!(psql_rows(&server, "SELECT count(*) FROM billing_daily WHERE version > 0"), vec![vec!["0".to_string()]]);

    // Column types as PostgreSQL names them (psql's \\gdesc describes the
    // statement without running it).
    let out = psql_stdin(
        &server,
        "SELECT count(*) AS n, avg(cost_micros) AS a, max(ts) AS t, campaign_id, count(*) > 0 AS b, NULL AS z \
         FROM events GROUP BY campaign_id LIMIT 1 \\gdesc\n",
    );
    for (column, ty) in [
        ("n", "bigint"),
        ("a", "double precision"),
        ("t", "timestamp with time zone"),
        ("campaign_id", "text"),
        ("b", "boolean"),
        ("z", "text"),
    ] {
        assert!(out.lines().any(|l| l.split('|').map(str::trim).eq([column, ty])), "{column} {ty} in {out}");
    }
}

#[test]
fn psql_errors_keep_the_connection_and_name_the_position() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "2000"]);

    // Several commands on one connection: an error in the middle, the
    // next command still answers.
    let (_, out, err) = psql(
        &server,
        &[
            "-A",
            "-t",
            "-c",
            "SELECT nope FROM events",
            "-c",
            "SELECT count(*) > 0 FROM events",
            "-c",
            "-- ping",
            "-c",
            ";",
        ],
    );
    assert!(err.contains("ERROR:  unknown column \"nope\" at 1:8"), "{err}");
    // psql draws the position it got as a caret under the statement.
    assert!(err.contains("LINE 1: SELECT nope FROM events\n               ^"), "{err}");
    assert_eq!(out.trim(), "t", "{out}");

    // Session statements are accepted; SHOW answers.
    let (ok, out, err) = psql(
        &server,
        &[
            "-A",
            "-t",
            "-c",
            "SET extra_float_digits = 3",
            "-c",
            "BEGIN",
            "-c",
            "SHOW server_version_num",
            "-c",
            "COMMIT",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("160006"), "{out}");
    let (ok, _, err) = psql(&server, &["-c", "SHOW nothing_like_this"]);
    assert!(!ok && err.contains("unrecognized configuration parameter \"nothing_like_this\""), "{err}");

    // Only the database "adstore" exists.
    let wrong = server.pg_url.replace("/adstore", "/postgres");
    let (ok, _, err) = psql_url(&wrong, &["-c", "SELECT 1"]);
    assert!(!ok && err.contains("database \"postgres\" does not exist"), "{err}");
}

#[test]
fn psycopg_uses_parameters_prepared_statements_binary_results_and_cancel() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Small blocks and many of them, so that a heavy query runs long
    // enough to be cancelled.
    let config = "[storage]\nblock_rows = 128\n\n[query]\ntimeout_ms = 120000\n";
    let server = Server::start_with(&tmp.path().join("data"), Some(config), &["--demo", "--demo-events", "30000"]);
    let (status, http) = sql(
        &server,
        "SELECT campaign_id, count(*) AS n FROM events WHERE type = 'click' GROUP BY campaign_id ORDER BY n DESC, campaign_id LIMIT 3",
    );
    assert_eq!(status, 200, "{http}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg/psycopg_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&server.pg_url)
        .arg(http["rows"].to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn connections_are_bounded_counted_and_released() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start(&tmp.path().join("data"), Some("[server]\npg_max_connections = 2\n"));
    // Two psql sessions that stay connected while their stdin is open.
    let hold = || {
        let mut child = Command::new("psql")
            .arg(&server.pg_url)
            .args(["-X", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().expect("stdin");
        (child, stdin)
    };
    let wait_for = |open: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.metric("adstore_pg_connections") != open {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections open, not {open}",
                server.metric("adstore_pg_connections")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let (mut first, first_stdin) = hold();
    let (mut second, second_stdin) = hold();
    wait_for(2);
    let (ok, _, err) = psql(&server, &["-c", "SELECT count(*) FROM events"]);
    assert!(!ok && err.contains("too many connections: all 2 are in use (server.pg_max_connections)"), "{err}");
    drop(first_stdin);
    first.wait().expect("first psql");
    wait_for(1);
    let (ok, out, err) = psql(&server, &["-A", "-t", "-c", "SELECT count(*) FROM events"]);
    assert!(ok && out.trim() == "0", "{out} {err}");
    drop(second_stdin);
    second.wait().expect("second psql");
    wait_for(0);
    let metrics = server.get_text("/metrics");
    assert!(metrics.contains("adstore_pg_errors_total{sqlstate=\"53300\"} 1"), "{metrics}");
    assert!(metrics.contains("adstore_pg_statements_total{kind=\"query\"}"), "{metrics}");
}

/// Grafana's PostgreSQL data source, as it sends its SQL (pgx's simple
/// query protocol, as psql -c does): each `tests/pg/grafana/*.sql` verbatim
/// (the config editor's version and TimescaleDB probes, the health check's
/// `-- ping`, the query builder's table, schema and column listings) and
/// psql's answer in the `.out` beside it. Regenerate after an intended
/// change with `ADSTORE_REGENERATE_GOLDEN=1 cargo test --test pgwire`.
#[test]
fn grafana_catalog_queries_answer_as_recorded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start(&tmp.path().join("data"), None);
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg/grafana"));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/pg/grafana")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    let regenerate = std::env::var_os("ADSTORE_REGENERATE_GOLDEN").is_some();
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("read sql");
        let (ok, out, err) = psql(&server, &["-A", "-c", &sql]);
        let answer = format!("{out}{err}");
        assert!(ok, "{}: {answer}", file.display());
        let golden = file.with_extension("out");
        if regenerate {
            std::fs::write(&golden, &answer).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(answer, expected, "{} (regenerate with ADSTORE_REGENERATE_GOLDEN=1)", file.display());
    }
}

/// A Grafana time-series panel as it arrives after macro expansion
/// (`$__timeGroupAlias(ts,'5m')`, `$__timeFilter(ts)`,
/// `$__unixEpochFilter(ts)`), over psql's simple protocol: a `time`
/// column in epoch seconds (`float8`), rows in time order, the same counts
/// as `time_bucket` over HTTP.
#[test]
fn grafana_panel_queries_answer_like_time_bucket() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "20000"]);
    let (_, bounds) = sql(&server, "SELECT extract(epoch FROM min(ts)), extract(epoch FROM max(ts)) FROM events");
    let seconds = |v: &serde_json::Value| v.as_f64().expect("epoch seconds") as i64;
    let (lo, hi) = (seconds(&bounds["rows"][0][0]) + 3_600, seconds(&bounds["rows"][0][1]) - 3_600);
    // As Grafana's $__timeFilter writes them: RFC 3339, fraction trimmed.
    let rfc3339 = |s: i64| adstore_storage::time::format_timestamp(s * 1000).replace('Z', ".5Z");
    let (from, to) = (rfc3339(lo), rfc3339(hi));
    let (status, http) = sql(
        &server,
        &format!(
            "SELECT extract(epoch FROM time_bucket(INTERVAL '5 minutes', ts)) AS t, count(*) AS n FROM events \
             WHERE ts BETWEEN '{from}' AND '{to}' GROUP BY 1 ORDER BY 1"
        ),
    );
    assert_eq!(status, 200, "{http}");
    let expected: Vec<(i64, String)> =
        http["rows"].as_array().expect("rows").iter().map(|r| (seconds(&r[0]), r[1].to_string())).collect();
    assert!(expected.len() > 100, "{http}");

    let panel = format!(
        "SELECT floor(extract(epoch from ts)/300)*300 AS \"time\", count(*) AS n FROM events \
         WHERE ts BETWEEN '{from}' AND '{to}' GROUP BY 1 ORDER BY 1"
    );
    let rows = psql_rows(&server, &panel);
    let got: Vec<(i64, String)> =
        rows.iter().map(|r| (r[0].parse::<f64>().expect("epoch seconds") as i64, r[1].clone())).collect();
    assert_eq!(got, expected);
    // The column is float8 named "time", as Grafana's time column.
    let out = psql_stdin(&server, &format!("{panel} \\gdesc\n"));
    assert!(out.lines().any(|l| l == "time|double precision"), "{out}");

    // $__unixEpochFilter(ts): epoch seconds.
    let by_seconds = psql_rows(&server, &format!("SELECT count(*) FROM events WHERE ts >= {lo} AND ts <= {hi}"));
    let (from, to) = (rfc3339(lo).replace(".5Z", "Z"), rfc3339(hi).replace(".5Z", "Z"));
    let (status, exact) = sql(&server, &format!("SELECT count(*) FROM events WHERE ts >= '{from}' AND ts <= '{to}'"));
    assert_eq!(status, 200, "{exact}");
    assert_eq!(by_seconds[0][0], exact["rows"][0][0].to_string());
}

/// Expands Grafana's PostgreSQL macros as its backend does
/// (`pkg/tsdb/grafana-postgresql-datasource/macros.go`), after the browser
/// has replaced `$__interval` with `interval`: `$__timeGroupAlias(c, 5m)`
/// → `floor(extract(epoch from c)/300)*300 AS "time"`, `$__timeFilter(c)`
/// → `c BETWEEN '<from>' AND '<to>'` (RFC 3339, UTC).
fn grafana_expand(sql: &str, from: &str, to: &str, interval: &str) -> String {
    let sql = sql.replace("$__interval", interval);
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let (name, tail) = after.split_at(name_len);
        let close = tail.find(')').expect("macro arguments");
        let args: Vec<&str> = tail[1..close].split(',').map(str::trim).collect();
        rest = &tail[close + 1..];
        let seconds = |text: &str| {
            let text = text.trim_matches('\'');
            let split = text.find(|c: char| c.is_ascii_alphabetic()).expect("unit");
            let n: i64 = text[..split].parse().expect("interval number");
            n * match &text[split..] {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                other => panic!("interval unit {other}"),
            }
        };
        out.push_str(&match name {
            "__timeGroupAlias" => {
                let s = seconds(args[1]);
                format!("floor(extract(epoch from {})/{s})*{s} AS \"time\"", args[0])
            }
            "__timeGroup" => {
                let s = seconds(args[1]);
                format!("floor(extract(epoch from {})/{s})*{s}", args[0])
            }
            "__timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            other => panic!("macro {other} is not expanded by this test"),
        });
    }
    out.push_str(rest);
    out
}

/// Every panel of the ready dashboard (`docs/grafana/dashboards/adstore.json`)
/// answers, its macros expanded as Grafana expands them, over psql's
/// simple protocol: time series with a `time` column in ascending order.
#[test]
fn the_grafana_dashboard_panels_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "20000"]);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/dashboards/adstore.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("dashboard JSON");
    let to_ms = now_ms();
    let from = adstore_storage::time::format_timestamp(to_ms - DAY_MS);
    let to = adstore_storage::time::format_timestamp(to_ms);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let raw = target["rawSql"].as_str().expect("rawSql");
            let sql = grafana_expand(raw, &from, &to, "5m");
            let (ok, out, err) = psql(&server, &["-A", "-F", "|", "-c", &sql]);
            assert!(ok && err.is_empty(), "panel {}: {sql}\n{err}", panel["title"]);
            let mut lines = out.lines();
            let header = lines.next().unwrap_or_default();
            let rows: Vec<&str> = lines.filter(|l| !l.starts_with('(')).collect();
            assert!(!rows.is_empty(), "panel {} has no rows: {sql}\n{out}", panel["title"]);
            if target["format"] == "time_series" {
                assert!(header.starts_with("time|"), "panel {}: {header}", panel["title"]);
                let times: Vec<f64> =
                    rows.iter().map(|r| r.split('|').next().unwrap_or_default().parse().expect("time")).collect();
                assert!(times.windows(2).all(|w| w[0] < w[1]), "panel {}: not in time order", panel["title"]);
            }
        }
    }
}

/// Admission control (`[query] max_running`, `max_queued`,
/// `queue_timeout_ms`) over both protocols: while one statement runs,
/// the next waits its turn; past the queue's length or its wait the
/// statement is refused as `overloaded` (HTTP 503 with `Retry-After`,
/// SQLSTATE 53000) and nothing else changes; and many clients at once all
/// get their answers, one turn after another.
#[test]
fn statements_wait_their_turn_and_an_overloaded_server_says_so() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = "[storage]\nblock_rows = 128\n\n[query]\ntimeout_ms = 120000\nmax_running = 1\nmax_queued = 1\nqueue_timeout_ms = 300\n";
    let server = Server::start_with(&tmp.path().join("data"), Some(config), &["--demo", "--demo-events", "50000"]);
    let wait_for = |name: &str, value: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.metric(name) != value {
            assert!(std::time::Instant::now() < deadline, "{name} is {}, not {value}", server.metric(name));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let (status, before) = sql(&server, "SELECT count(*) AS n FROM events");
    assert_eq!(status, 200, "{before}");
    // A statement that runs for seconds holds the only turn.
    let heavy = format!(
        "SELECT count(*) AS n FROM events WHERE {}",
        (0..900).map(|i| format!("(cost_micros + {i}) % 7 <> 99")).collect::<Vec<_>>().join(" AND ")
    );
    std::thread::scope(|s| {
        let running = s.spawn(|| sql(&server, &heavy));
        wait_for("adstore_query_running", 1);
        // The next one waits; it is refused when its wait passes 300 ms.
        let waiting = s.spawn(|| {
            let started = std::time::Instant::now();
            let answer = sql(&server, "SELECT count(*) AS n FROM events");
            (answer, started.elapsed())
        });
        wait_for("adstore_query_queued", 1);
        // One more finds the queue full: refused at once, over HTTP …
        let mut r = agent()
            .post(&format!("{}/v1/sql", server.url))
            .header("content-type", "text/plain")
            .send("SELECT 1 AS one")
            .expect("POST");
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let body: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("1 statements are already waiting to run (query.max_queued)"), "{message}");
        // … and over PostgreSQL, with its SQLSTATE; the connection stays usable.
        let (_, out, err) = psql_url(
            &server.pg_url,
            &["-v", "VERBOSITY=verbose", "-A", "-t", "-c", "SELECT count(*) FROM events", "-c", "SHOW server_version"],
        );
        assert!(err.contains("53000: the server is overloaded"), "{err}");
        assert!(out.trim().starts_with(|c: char| c.is_ascii_digit()), "the session answers after: {out} {err}");

        let ((status, body), waited) = waiting.join().expect("waiting");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains("waited 300 ms for a turn to run (query.queue_timeout_ms)"), "{message}");
        assert!(waited >= std::time::Duration::from_millis(300), "{waited:?}");

        let (status, body) = running.join().expect("running");
        assert_eq!(status, 200, "the running statement is untouched: {body}");
    });
    wait_for("adstore_query_running", 0);
    wait_for("adstore_query_queued", 0);
    let metrics = server.get_text("/metrics");
    for series in [
        "adstore_query_rejected_total{reason=\"queue_full\"} 2",
        "adstore_query_rejected_total{reason=\"queue_timeout\"} 1",
        "adstore_pg_errors_total{sqlstate=\"53000\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    let (status, after) = sql(&server, "SELECT count(*) AS n FROM events");
    assert_eq!((status, &after["rows"]), (200, &before["rows"]), "{after}");
}

/// Many clients at once, more than may run: each waits its turn and every
/// one gets the right answer (the 100-connection target of
/// `benches/pgwire.py`, small).
#[test]
fn many_clients_at_once_all_get_their_answers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = "[query]\nmax_running = 2\n";
    let server = Server::start_with(&tmp.path().join("data"), Some(config), &["--demo", "--demo-events", "20000"]);
    let query = "SELECT campaign_id, count(*) AS n FROM events GROUP BY campaign_id ORDER BY campaign_id";
    let (status, expected) = sql(&server, query);
    assert_eq!(status, 200, "{expected}");
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..24)
            .map(|i| {
                let (server, expected) = (&server, &expected);
                s.spawn(move || {
                    for _ in 0..4 {
                        if i % 2 == 0 {
                            let (status, body) = sql(server, query);
                            assert_eq!(status, 200, "{body}");
                            assert_eq!(body["rows"], expected["rows"]);
                        } else {
                            let rows = psql_rows(server, query);
                            assert_eq!(rows.len(), expected["rows"].as_array().map_or(0, Vec::len));
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
    });
    let metrics = server.get_text("/metrics");
    assert!(!metrics.contains("adstore_query_rejected_total{"), "{metrics}");
    assert!(metrics.contains("adstore_query_queue_wait_seconds_count"), "{metrics}");
}

/// A third driver family: Go's database/sql with lib/pq (Grafana's backend
/// is Go; Debian's `golang-go` and `golang-github-lib-pq-dev`, which
/// `.ci/run` installs), through a server with access control, the token as
/// the password: typed rows, a parameter, an error's SQLSTATE and
/// position (`tests/pg/libpq_client.go`).
#[test]
fn go_lib_pq_reads_the_same_rows_with_a_token_as_password() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "20000"]);
    // The first token, created through the open server, switches checking on.
    let out = Command::new(ADSTORE)
        .args(["token", "create", "--role", "query", "--all-advertisers", "--url", &server.url])
        .output()
        .expect("adstore token create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (_, out, _) = psql(&server, &["-c", "SELECT 1"]);
    assert!(out.is_empty(), "psql without the token is refused");
    let query = "SELECT campaign_id, count(*) AS n, sum(cost_micros) AS cost, min(ts) AS first \
                 FROM events GROUP BY campaign_id ORDER BY campaign_id";
    let body = serde_json::json!({ "sql": query, "format": "json" }).to_string();
    let (status, http) = post_with_headers(
        &format!("{}/v1/sql", server.url),
        &[("content-type", "application/json"), ("authorization", &format!("Bearer {token}"))],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{http}");
    let url = server.pg_url.replace("postgresql://", &format!("postgresql://grafana:{token}@")) + "?sslmode=disable";
    let out = Command::new("go")
        .args(["run", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg/libpq_client.go")])
        .arg(&url)
        .arg(http["rows"].to_string())
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build"))
        .output()
        .expect("run go (Debian packages golang-go and golang-github-lib-pq-dev; .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "lib/pq client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
