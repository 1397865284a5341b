//! The exactly-once oracle over real HTTP, with the server killed by
//! SIGKILL in the middle of ingest and restarted while the producer retries.

mod oracle;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use adstore_server::datagen::{BOT_UA_HASH, write_ndjson};
use adstore_storage::Event;

const ADSTORE: &str = env!("CARGO_BIN_EXE_adstore");

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, config: &Path) -> Server {
    let mut child = Command::new(ADSTORE)
        .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--data-dir"])
        .arg(dir)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start adstore serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read listening line");
    let url = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
    Server { child, url }
}

#[derive(Debug)]
struct Reply {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
}

/// One POST; `None` when the server is unreachable or answers 5xx.
fn post(agent: &ureq::Agent, url: &str, events: &[Event]) -> Option<Reply> {
    let mut body = Vec::new();
    for e in events {
        write_ndjson(e, &mut body);
    }
    let mut r =
        agent.post(format!("{url}/v1/events")).header("content-type", "application/x-ndjson").send(&body[..]).ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).map(|n| n as usize);
    Some(Reply { accepted: n("accepted")?, duplicates: n("duplicates")?, rejected: n("rejected")? })
}

#[test]
fn sigkill_mid_ingest_with_retrying_producer_matches_the_oracle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("adstore.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nshards = 3\n\n\
             [ingest]\ndedupe_spill_keys = {SPILL_KEYS}\nattribution_spill_entries = {SPILL_ANCHORS}\n\n\
             [attribution]\nbot_ua_hashes = [\"{BOT_UA_HASH}\"]\n"
        ),
    )
    .expect("config");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();

    let sent = oracle::stream();
    let batches: Vec<&[Event]> = sent.chunks(500).collect();
    let mut server = start(&data, &config);
    let (mut accepted, mut duplicates) = (0usize, 0usize);
    let kill_at = [batches.len() / 3, 2 * batches.len() / 3];
    let mut i = 0;
    let mut kills = 0;
    // New events in in-flight batches whose reply never came: the server may
    // have made them durable before it died, and then the retry rightly calls
    // them duplicates, so the replies alone cannot count them.
    let mut unanswered_new = 0usize;
    while i < batches.len() {
        if kill_at.contains(&i) && kills < kill_at.iter().filter(|k| **k <= i).count() {
            // Kill the server while a request is in flight: the producer does
            // not know whether it landed and will retry it.
            let pid = server.child.id().to_string();
            let in_flight = {
                let agent = agent.clone();
                let url = server.url.clone();
                let batch = batches[i].to_vec();
                std::thread::spawn(move || post(&agent, &url, &batch))
            };
            std::thread::sleep(Duration::from_millis(5));
            Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
            let _ = server.child.wait();
            match in_flight.join().expect("thread") {
                Some(r) => {
                    accepted += r.accepted;
                    duplicates += r.duplicates;
                }
                None => {
                    let before = oracle::dedupe(&sent[..i * 500]).len();
                    unanswered_new += oracle::dedupe(&sent[..(i + 1) * 500]).len() - before;
                }
            }
            kills += 1;
            server = start(&data, &config);
            // The producer retries the uncertain batch and, being at-least-once,
            // the one before it too.
            for retry in [i - 1, i] {
                let r = post(&agent, &server.url, batches[retry]).expect("retry after restart");
                assert_eq!(r.rejected, 0);
                accepted += r.accepted;
                duplicates += r.duplicates;
            }
            i += 1;
            continue;
        }
        let r = loop {
            match post(&agent, &server.url, batches[i]) {
                Some(r) => break r,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        assert_eq!(r.rejected, 0, "batch {i}");
        accepted += r.accepted;
        duplicates += r.duplicates;
        i += 1;
    }
    assert_eq!(kills, 2);
    let unique = oracle::dedupe(&sent);
    // No event is acknowledged as accepted twice, and every event is
    // acknowledged unless its only reply was lost with the killed server. The
    // exact count is checked against the store below.
    assert!(accepted <= unique.len(), "accepted {accepted} of {} unique events", unique.len());
    assert!(
        accepted + unanswered_new >= unique.len(),
        "accepted {accepted} + {unanswered_new} unanswered < {} unique events",
        unique.len()
    );
    assert!(duplicates >= sent.len() - unique.len());

    // Sealed keys went to runs and anchors to parts on disk, and a retry of
    // the whole stream finds every key (in the table or a run): nothing is
    // stored again.
    wait_for_runs(&agent, &server.url);
    let resend: usize = batches.iter().map(|b| post(&agent, &server.url, b).expect("resend").accepted).sum();
    assert_eq!(resend, 0, "a resent stream stores nothing");
    // A second server on the same data directory is refused by the lock
    // and leaves the running server's runs and parts alone.
    // The running server is stopped meanwhile (it keeps its lock): its own
    // merges and expiry of runs and parts must not pass for the refused
    // server's deletions.
    let running = server.child.id().to_string();
    Command::new("kill").args(["-STOP", &running]).status().expect("kill -STOP");
    let runs_before = [files(&data.join("dedupe"), "keys"), files(&data.join("attribution"), "attr")].concat();
    assert!(runs_before.iter().any(|p| p.extension().is_some_and(|e| e == "attr")), "attribution parts");
    assert!(runs_before.iter().any(|p| p.extension().is_some_and(|e| e == "keys")), "dedupe runs");
    let second = Command::new(ADSTORE)
        .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("second serve");
    let deleted: Vec<&std::path::PathBuf> = runs_before.iter().filter(|p| !p.exists()).collect();
    Command::new("kill").args(["-CONT", &running]).status().expect("kill -CONT");
    assert!(!second.success(), "a second server on a locked data directory must not start");
    assert!(deleted.is_empty(), "the refused server deleted runs or parts of the running one: {deleted:?}");
    let resend: usize = batches.iter().map(|b| post(&agent, &server.url, b).expect("resend").accepted).sum();
    assert_eq!(resend, 0, "a resent stream stores nothing after the refused start");

    // Stop cleanly, then finalize every bucket and compare with the oracle.
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("term");
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    oracle::assert_finalized_store_matches(&data, &config, &sent, BOT_UA_HASH);
}

/// Sealed keys the server writes to a run each time its table gains this
/// many: small, so that runs are written, merged and read back many times.
const SPILL_KEYS: usize = 400;
/// Impressions and clicks go to parts on disk every this many, likewise.
const SPILL_ANCHORS: usize = 300;

/// Waits until `/metrics` shows spilled keys in at least one run and
/// anchors in at least one attribution part.
fn wait_for_runs(agent: &ureq::Agent, url: &str) {
    let gauge = |text: &str, name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    for _ in 0..200 {
        let text = agent
            .get(format!("{url}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let runs = gauge(&text, "adstore_dedupe_runs") > 0.0 && gauge(&text, "adstore_dedupe_spilled_keys") > 0.0;
        if runs && gauge(&text, "adstore_attribution_parts") > 0.0 {
            assert!(gauge(&text, "adstore_dedupe_disk_bytes") > 0.0, "runs take disk:\n{text}");
            assert!(gauge(&text, "adstore_attribution_disk_bytes") > 0.0, "parts take disk:\n{text}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no dedupe runs or attribution parts after 10 s");
}

/// The files of `dir` with extension `ext`.
fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == ext)).collect()
}

fn json(agent: &ureq::Agent, method: &str, url: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", Some(b)) => agent.post(url).header("content-type", "application/json").send(b.to_string().as_bytes()),
        ("PUT", Some(b)) => agent.put(url).header("content-type", "application/json").send(b.to_string().as_bytes()),
        _ => panic!("bad request spec"),
    };
    let mut resp = resp.expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[test]
fn rules_change_and_reprocess_job_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("adstore.toml");
    std::fs::write(&config, "[storage]\nseal_max_age_ms = 50\nseal_interval_ms = 20\n").expect("config");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let server = start(&data, &config);
    let sent = oracle::stream();
    for batch in sent.chunks(2_000) {
        assert!(post(&agent, &server.url, batch).is_some());
    }

    let (status, rules) = json(&agent, "GET", &format!("{}/v1/attribution", server.url), None);
    assert_eq!(status, 200);
    assert_eq!(rules["version"], 1);
    // The version must increase, and bad rules are refused with a message.
    let mut same = rules.clone();
    same["click_window_ms"] = 300_000.into();
    let (status, body) = json(&agent, "PUT", &format!("{}/v1/attribution", server.url), Some(same.clone()));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("version"), "{body}");
    same["version"] = 2.into();
    let (status, body) = json(&agent, "PUT", &format!("{}/v1/attribution", server.url), Some(same));
    assert_eq!(status, 200, "{body}");

    let (status, job) = json(
        &agent,
        "POST",
        &format!("{}/v1/reprocess", server.url),
        Some(
            serde_json::json!({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T06:00:00Z", "reason": "shorter click window"}),
        ),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().expect("job id");
    let job = loop {
        let (status, job) = json(&agent, "GET", &format!("{}/v1/reprocess/{id}", server.url), None);
        assert_eq!(status, 200);
        if job["status"] != "running" {
            break job;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["rules_version"], 2);
    assert_eq!(job["reason"], "shorter click window");
    let before = &job["totals_before"];
    let after = &job["totals_after"];
    assert_eq!(before["events"], after["events"], "reprocessing never adds or loses events");
    assert!(
        after["attributed_clicks"].as_u64() < before["attributed_clicks"].as_u64(),
        "a shorter window attributes fewer clicks: {before} -> {after}"
    );
    let (status, _) = json(&agent, "GET", &format!("{}/v1/reprocess/999", server.url), None);
    assert_eq!(status, 404);
    let (status, body) = json(
        &agent,
        "POST",
        &format!("{}/v1/reprocess", server.url),
        Some(serde_json::json!({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"})),
    );
    assert_eq!(status, 400, "{body}");
    // Issue 25: a range of 130 years (over a million hourly buckets) once
    // stopped at 100,000 buckets and reported `done` with 0 events.
    let (status, job) = json(
        &agent,
        "POST",
        &format!("{}/v1/reprocess", server.url),
        Some(serde_json::json!({"from": "1970-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().expect("job id");
    let job = loop {
        let (_, job) = json(&agent, "GET", &format!("{}/v1/reprocess/{id}", server.url), None);
        if job["status"] != "running" {
            break job;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(job["status"], "done", "{job}");
    let distinct = oracle::dedupe(&sent).len() as u64;
    assert_eq!(job["totals_after"]["events"].as_u64(), Some(distinct), "{job}");
    assert_eq!(job["totals_before"]["events"], job["totals_after"]["events"], "{job}");
}

/// The oracle's billing numbers of 2026-11-01 per (advertiser, campaign),
/// named as the snapshot names them.
fn billing_oracle(
    sent: &[Event],
    rules: &oracle::Rules,
) -> std::collections::BTreeMap<(String, String), serde_json::Value> {
    let mut out: std::collections::BTreeMap<(String, String), [i64; 10]> = std::collections::BTreeMap::new();
    for o in oracle::outcomes(sent, rules) {
        let e = &o.event;
        let m = out.entry((e.advertiser_id.clone(), e.campaign_id.clone())).or_default();
        let valid = o.reason.is_empty();
        match e.kind {
            adstore_storage::EventType::Impression => {
                m[0] += 1;
                m[3] += i64::from(!valid);
                m[5] += i64::from(valid);
                m[8] += if valid { e.cost_micros } else { 0 };
            }
            adstore_storage::EventType::Click => {
                m[1] += 1;
                m[4] += i64::from(!valid);
                m[6] += i64::from(valid);
                m[8] += if valid { e.cost_micros } else { 0 };
            }
            adstore_storage::EventType::Conversion => {
                m[2] += 1;
                m[7] += i64::from(o.attributed);
                m[9] += if o.attributed { e.value_micros } else { 0 };
            }
        }
    }
    let names = [
        "impressions",
        "clicks",
        "conversions",
        "invalid_impressions",
        "invalid_clicks",
        "billable_impressions",
        "billable_clicks",
        "attributed_conversions",
        "spend_micros",
        "conversion_value_micros",
    ];
    out.into_iter()
        .map(|(k, m)| (k, names.iter().zip(m).map(|(n, v)| (n.to_string(), serde_json::Value::from(v))).collect()))
        .collect()
}

/// The snapshot's rows without `users` (an estimate), by (advertiser, campaign).
fn billing_rows(body: &serde_json::Value) -> std::collections::BTreeMap<(String, String), serde_json::Value> {
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let obj = r.as_object_mut().expect("row");
            obj.remove("users");
            let a = obj.remove("advertiser_id").and_then(|v| v.as_str().map(str::to_string)).expect("advertiser");
            let c = obj.remove("campaign_id").and_then(|v| v.as_str().map(str::to_string)).expect("campaign");
            ((a, c), r)
        })
        .collect()
}

/// A final day gets a billing snapshot of the oracle's numbers; a rules
/// change and a reprocess write version 2 with its lineage, version 1
/// stays readable; JSON, CSV and the advertiser filter; bad requests.
#[test]
fn billing_snapshots_over_http_follow_finalization_and_reprocessing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("adstore.toml");
    // Idle for half a second: every bucket closes by the wall clock.
    std::fs::write(&config, "[storage]\nseal_max_age_ms = 50\nseal_interval_ms = 20\nclose_idle_ms = 500\n")
        .expect("config");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let server = start(&data, &config);
    let sent = oracle::stream();
    for batch in sent.chunks(2_000) {
        assert!(post(&agent, &server.url, batch).is_some());
    }
    let url = |q: &str| format!("{}/v1/billing/daily?{q}", server.url);
    let wait_for = |version: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = json(&agent, "GET", &url("day=2026-11-01"), None);
            if status == 200 && body["version"].as_u64() == Some(version) {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "no snapshot version {version}: {status} {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let v1 = wait_for(1);
    assert_eq!(v1["cause"], "final", "{v1}");
    assert_eq!(v1["rules_version"], 1);
    let first = billing_oracle(&sent, &oracle::Rules::default());
    assert_eq!(billing_rows(&v1), first, "version 1 is the oracle's final numbers");

    // The advertiser filter and CSV.
    let (a, _) = first.keys().next().expect("a row").clone();
    let (status, one) = json(&agent, "GET", &url(&format!("day=2026-11-01&advertiser_id={a}")), None);
    assert_eq!(status, 200);
    assert!(
        one["rows"].as_array().is_some_and(|r| !r.is_empty() && r.iter().all(|x| x["advertiser_id"] == a.as_str()))
    );
    let mut resp = agent.get(url("day=2026-11-01&format=csv")).call().expect("csv");
    assert_eq!(resp.status().as_u16(), 200);
    let csv = resp.body_mut().read_to_string().expect("csv body");
    let mut lines = csv.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("day,advertiser_id,campaign_id,version,impressions,")), "{csv}");
    assert_eq!(lines.count(), first.len());
    let mut resp = agent.get(url("day=2026-11-01&format=csv&advertiser_id=nobody")).call().expect("csv");
    let empty = resp.body_mut().read_to_string().expect("csv body");
    assert_eq!(empty.lines().count(), 1, "{empty}");
    assert!(
        empty.starts_with("day,advertiser_id,campaign_id,version,impressions,"),
        "every column without rows: {empty}"
    );

    // Bad requests and days without a snapshot.
    for (q, status) in [
        ("day=2026-11-31", 400),
        ("day=yesterday", 400),
        ("", 400),
        ("day=2026-10-01", 404),
        ("day=2026-11-01&version=9", 404),
        ("day=2026-11-01&format=xml", 400),
    ] {
        let (got, body) = json(&agent, "GET", &url(q), None);
        assert_eq!(got, status, "{q}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{q}: {body}");
    }

    // A shorter click window, reprocessed: version 2 names the job.
    let (_, mut rules) = json(&agent, "GET", &format!("{}/v1/attribution", server.url), None);
    rules["click_window_ms"] = 300_000.into();
    rules["version"] = 2.into();
    let (status, body) = json(&agent, "PUT", &format!("{}/v1/attribution", server.url), Some(rules));
    assert_eq!(status, 200, "{body}");
    let (status, job) = json(
        &agent,
        "POST",
        &format!("{}/v1/reprocess", server.url),
        Some(serde_json::json!({"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z", "reason": "window"})),
    );
    assert_eq!(status, 202, "{job}");
    let v2 = wait_for(2);
    assert_eq!(v2["cause"], "reprocess", "{v2}");
    assert_eq!(v2["reprocess_job"], job["id"], "{v2}");
    assert_eq!(v2["rules_version"], 2, "{v2}");
    let rules2 = oracle::Rules { click_window_ms: 300_000, ..oracle::Rules::default() };
    assert_eq!(billing_rows(&v2), billing_oracle(&sent, &rules2), "version 2 is the new rules' numbers");
    assert_ne!(billing_rows(&v2), first, "the window changed the numbers");
    let (status, old) = json(&agent, "GET", &url("day=2026-11-01&version=1"), None);
    assert_eq!(status, 200);
    assert_eq!(billing_rows(&old), first, "version 1 keeps its numbers");
    assert_eq!(old["latest_version"], 2);
    assert_eq!(old["versions"].as_array().map(Vec::len), Some(2));
    let metrics = agent
        .get(format!("{}/metrics", server.url))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(metrics.lines().any(|l| l == "adstore_billing_snapshots 2"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("adstore_billing_snapshots_pending ")), "{metrics}");

    // Reconciliation: the rollups and the snapshot agree with the events,
    // through the endpoint and the CLI.
    let settled = std::time::Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (status, report) =
            json(&agent, "GET", &format!("{}/v1/reconcile?from=2026-11-01&to=2026-11-02", server.url), None);
        assert_eq!(status, 200, "{report}");
        let pending = report["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["what"].as_str().is_some_and(|w| w.contains("pending"))));
        if !pending || std::time::Instant::now() > settled {
            break report;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["differing"], 0, "{report}");
    assert!(report["checks"].as_array().is_some_and(|c| c.len() > 3), "{report}");
    let out = Command::new(ADSTORE)
        .args(["reconcile", "--from", "2026-11-01", "--to", "2026-11-02T00:00:00Z", "--url", &server.url])
        .output()
        .expect("adstore reconcile");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("reconcile 2026-11-01T00:00:00Z .. 2026-11-02T00:00:00Z: "), "{text}");
    assert!(text.ends_with("OK: every group matches its raw events\n"), "{text}");
    let (status, body) =
        json(&agent, "GET", &format!("{}/v1/reconcile?from=2026-11-02&to=2026-11-01", server.url), None);
    assert_eq!(status, 400, "{body}");
    let (status, body) = json(&agent, "GET", &format!("{}/v1/reconcile?from=soon&to=2026-11-01", server.url), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("from")), "{body}");
}
