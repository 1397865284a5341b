//! The click redirect `GET /c` against the real binary: where it may send
//! users (no open redirect), a double click inside a second is one click,
//! and under load a SIGKILL loses no click that was answered 302 and
//! stores none twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

const CONFIG: &str = r#"
[click.destinations]
"adv-001" = ["shop.example.com", "*.example.org"]

[click.landing_pages]
"cmp-001" = "https://shop.example.com/sale"
"#;

fn no_redirects() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// `GET /c` with `params`; (status, Location, body).
fn click(agent: &ureq::Agent, url: &str, params: &[(&str, &str)]) -> Result<(u16, String, String), ureq::Error> {
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let mut r = agent.get(&format!("{url}/c?{}", query.join("&"))).header("user-agent", "test-browser/1.0").call()?;
    let status = r.status().as_u16();
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    Ok((status, location, body))
}

const AD: [(&str, &str); 4] =
    [("publisher_id", "pub-01"), ("advertiser_id", "adv-001"), ("campaign_id", "cmp-001"), ("ad_id", "ad-1")];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    AD.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn a_click_is_recorded_once_and_sent_only_to_the_advertisers_pages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start(&tmp.path().join("data"), Some(CONFIG));
    let agent = no_redirects();
    let go = |params: &[(&str, &str)]| click(&agent, &server.url, params).expect("GET /c");

    let (status, location, _) = go(&with(&[("impression_id", "imp-1"), ("dest", "https://a.example.org/p?x=1")]));
    assert_eq!((status, location.as_str()), (302, "https://a.example.org/p?x=1"));
    let (status, location, _) = go(&with(&[("impression_id", "imp-2")]));
    assert_eq!((status, location.as_str()), (302, "https://shop.example.com/sale"), "the campaign's landing page");

    for (dest, why) in [
        ("https://evil.net/", "is not one of advertiser"),
        ("https://shop.example.com@evil.net/", "user information"),
        ("javascript:alert(1)", "not an http or https URL"),
        ("//evil.net/x", "not an http or https URL"),
    ] {
        let (status, location, body) = go(&with(&[("dest", dest)]));
        assert_eq!(status, 400, "{dest}: {body}");
        assert!(location.is_empty() && body.contains(why), "{dest}: {body}");
    }
    let (status, _, body) = go(&[("publisher_id", "pub-01"), ("advertiser_id", "adv-001"), ("ad_id", "ad-1")]);
    assert!(status == 400 && body.contains("campaign_id: required"), "{body}");
    let other = [("publisher_id", "pub-01"), ("advertiser_id", "adv-002"), ("campaign_id", "cmp-001"), ("ad_id", "a")];
    let (status, _, body) = go(&other);
    assert!(status == 400 && body.contains("has no allowed destinations"), "{body}");

    // A double click: the second inside the same second is the same click.
    let (a, _, _) = go(&with(&[("impression_id", "imp-double")]));
    let (b, _, _) = go(&with(&[("impression_id", "imp-double")]));
    assert_eq!((a, b), (302, 302));
    let (status, body) = sql(&server, "SELECT ts FROM events WHERE impression_id = 'imp-double' ORDER BY ts");
    assert_eq!(status, 200, "{body}");
    let seconds: BTreeSet<String> =
        body["rows"].as_array().expect("rows").iter().map(|r| r[0].as_str().expect("ts")[..19].to_string()).collect();
    let stored = body["rows"].as_array().map_or(0, Vec::len);
    // One click, unless the two requests fell on either side of a second.
    assert!(stored == 1 || (stored == 2 && seconds.len() == 2), "{body}");

    let (status, body) = sql(
        &server,
        "SELECT impression_id, click_id, ip_hash IS NOT NULL AS ip, ua_hash IS NOT NULL AS ua FROM events \
         WHERE impression_id IN ('imp-1', 'imp-2') ORDER BY 1",
    );
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{body}");
    for r in rows {
        assert!(r[1].as_str().is_some_and(|c| c.starts_with("clk-")), "a click id: {body}");
        assert_eq!((&r[2], &r[3]), (&serde_json::json!(true), &serde_json::json!(true)), "{body}");
    }

    // Clicks on two campaigns' ads in one second are two clicks.
    for campaign in ["cmp-001", "cmp-002"] {
        let params = [
            ("publisher_id", "pub-01"),
            ("advertiser_id", "adv-001"),
            ("campaign_id", campaign),
            ("ad_id", "ad-same"),
            ("dest", "https://shop.example.com/"),
        ];
        assert_eq!(go(&params).0, 302);
    }
    let (_, body) = sql(&server, "SELECT count(DISTINCT click_id) AS n FROM events WHERE ad_id = 'ad-same'");
    assert_eq!(body["rows"], serde_json::json!([[2]]), "{body}");

    // A HEAD (a link checker, a preloader) is answered and records nothing.
    let query: Vec<String> =
        with(&[("impression_id", "imp-head")]).iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let r = agent.head(&format!("{}/c?{}", server.url, query.join("&"))).call().expect("HEAD /c");
    assert_eq!(r.status().as_u16(), 302);
    let (_, body) = sql(&server, "SELECT count(*) AS n FROM events WHERE impression_id = 'imp-head'");
    assert_eq!(body["rows"], serde_json::json!([[0]]), "{body}");
}

/// Destinations that could never match, or match too much, and landing
/// pages no destination allows, stop `serve` with the field named.
#[test]
fn bad_destinations_are_refused_at_start() {
    for (toml, want) in [
        ("[click.destinations]\n\"adv-1\" = [\"bücher.example\"]\n", "xn-- form"),
        ("[click.destinations]\n\"adv-1\" = [\"*.co\"]\n", "too broad"),
        ("[click.destinations]\n\"adv-1\" = [\"https://shop.example.com/\"]\n", "is not a host name"),
        (
            "[click.destinations]\n\"adv-1\" = [\"shop.example.com\"]\n[click.landing_pages]\n\"c\" = \"https://evil.net/\"\n",
            "not in any advertiser's",
        ),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = tmp.path().join("adstore.toml");
        std::fs::write(&config, toml).expect("config");
        let out = std::process::Command::new(ADSTORE)
            .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .expect("serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("click.") && err.contains(want), "{toml}: {err}");
    }
}

#[test]
fn clicks_answered_before_a_sigkill_are_all_there_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, Some(CONFIG));
    let stop = AtomicBool::new(false);
    let answered: Vec<Vec<String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (url, stop) = (server.url.clone(), &stop);
                s.spawn(move || {
                    let agent = no_redirects();
                    let mut ok = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let imp = format!("imp-{w}-{n}");
                        match click(&agent, &url, &with(&[("impression_id", &imp), ("user_key", &imp)])) {
                            Ok((302, _, _)) => ok.push(imp),
                            Ok((status, _, body)) => panic!("{status} {body}"),
                            Err(_) => break, // the server is gone
                        }
                    }
                    ok
                })
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = std::process::Command::new("kill").args(["-KILL", &server.pid().to_string()]).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -KILL");
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().expect("worker")).collect()
    });
    drop(server);
    let answered: BTreeSet<String> = answered.into_iter().flatten().collect();
    assert!(answered.len() > 100, "only {} clicks answered", answered.len());

    let server = Server::start(&dir, Some(CONFIG));
    let (status, body) =
        sql(&server, "SELECT impression_id, count(*) AS n FROM events WHERE type = 'click' GROUP BY 1");
    assert_eq!(status, 200, "{body}");
    let stored: BTreeMap<String, u64> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r[0].as_str().expect("id").to_string(), r[1].as_u64().expect("n")))
        .collect();
    for id in &answered {
        assert_eq!(stored.get(id), Some(&1), "click {id} was answered 302: stored once");
    }
    assert!(stored.values().all(|n| *n == 1), "no click twice");
    assert!(stored.len() <= answered.len() + 8, "at most one unanswered click per worker: {}", stored.len());
}
