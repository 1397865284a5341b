//! The click redirect under load: `GET /c` at a fixed rate (open loop:
//! each request has its scheduled time, and its latency counts from then,
//! so a stalled server cannot hide its queue), against a release server.
//!
//! ```text
//! cargo bench --bench click -- --bin target/release/adstore --rate 5000 --seconds 30 --write docs/bench/click.md
//! ```
//!
//! Every click is distinct (its own impression id and user), so every one
//! is a WAL append; the run ends by counting the stored clicks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    bin: String,
    rate: f64,
    seconds: f64,
    threads: usize,
    write: Option<String>,
}

fn args() -> Args {
    let mut a = Args { bin: "target/release/adstore".into(), rate: 5000.0, seconds: 30.0, threads: 64, write: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bin" => a.bin = value(),
            "--rate" => a.rate = value().parse().expect("--rate"),
            "--seconds" => a.seconds = value().parse().expect("--seconds"),
            "--threads" => a.threads = value().parse().expect("--threads"),
            "--write" => a.write = Some(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("adstore.toml");
    std::fs::write(&config, "[click.destinations]\n\"adv-001\" = [\"shop.example.com\"]\n").expect("config");
    let mut server = Command::new(&a.bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("ADSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server (--bin)");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let url = lines.next().expect("a line").expect("utf-8").trim_start_matches("listening on ").to_string();

    let started = Instant::now() + Duration::from_millis(200);
    let per_thread = a.rate / a.threads as f64;
    let total_per_thread = (per_thread * a.seconds) as u64;
    let results: Vec<(Vec<Duration>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let url = url.clone();
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .max_redirects(0)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .build()
                        .into();
                    let mut latencies = Vec::with_capacity(total_per_thread as usize);
                    let mut errors = 0u64;
                    let offset = Duration::from_secs_f64(t as f64 / a.rate);
                    for n in 0..total_per_thread {
                        let scheduled = started + offset + Duration::from_secs_f64(n as f64 / per_thread);
                        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let target = format!(
                            "{url}/c?publisher_id=pub-01&advertiser_id=adv-001&campaign_id=cmp-001&ad_id=ad-1\
                             &impression_id=imp-{t}-{n}&user_key=u-{t}-{n}&dest=https%3A%2F%2Fshop.example.com%2Fsale"
                        );
                        match agent.get(&target).call() {
                            Ok(r) if r.status().as_u16() == 302 => latencies.push(scheduled.elapsed()),
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    let mut all: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    all.sort();

    let body = serde_json::json!({ "sql": "SELECT count(*) FROM events WHERE type = 'click'", "format": "json" });
    let text = ureq::post(&format!("{url}/v1/sql"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("count")
        .body_mut()
        .read_to_string()
        .expect("body");
    let stored: serde_json::Value = serde_json::from_str(&text).expect("json");
    let _ = server.kill();
    let _ = server.wait();

    let line = format!(
        "{} clicks in {elapsed:.1} s ({:.0}/s, target {:.0}/s), {errors} errors; latency from the scheduled time: \
         p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; clicks stored: {}",
        all.len(),
        all.len() as f64 / elapsed,
        a.rate,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        stored["rows"][0][0]
    );
    println!("{line}");
    if let Some(path) = a.write {
        let doc = format!(
            "# The click redirect under load\n\n`cargo bench --bench click -- --bin {} --rate {} --seconds {} \
             --threads {}` on this machine ({} cores): `GET /c` answered `302` after the click's WAL fsync, \
             each click distinct, at a fixed rate from {} client threads (open loop) on the same machine.\n\n{line}\n",
            a.bin,
            a.rate,
            a.seconds,
            a.threads,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            a.threads
        );
        std::fs::write(path, doc).expect("write the report");
    }
}
