//! Helpers for the tests that run the real `adstore` binary: a server on an
//! ephemeral port in a temporary data directory, killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use adstore_server::datagen::{GenConfig, Generator, write_ndjson};
use adstore_storage::{EventBatch, SealPipeline, Store, StoreConfig};

pub const ADSTORE: &str = env!("CARGO_BIN_EXE_adstore");
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// A running `adstore serve`; killed (SIGKILL) if still running when dropped.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    /// `postgresql://127.0.0.1:PORT/adstore`: the PostgreSQL protocol.
    pub pg_url: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `adstore serve --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0
    /// --data-dir DIR [--config FILE]` and waits for its "listening on" lines.
    pub fn start(data_dir: &Path, config_toml: Option<&str>) -> Server {
        Server::start_with(data_dir, config_toml, &[])
    }

    pub fn start_with(data_dir: &Path, config_toml: Option<&str>, extra: &[&str]) -> Server {
        Server::start_env(data_dir, config_toml, extra, &[])
    }

    /// [`Server::start_with`] with environment variables set, e.g. a failpoint.
    pub fn start_env(data_dir: &Path, config_toml: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(ADSTORE);
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if let Some(toml) = config_toml {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, toml).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(extra)
            .env("ADSTORE_LOG", std::env::var("ADSTORE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn adstore serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut address = || match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("adstore serve did not report its addresses");
            }
        };
        let (url, pg_url) = (address(), address());
        Server { child: Some(child), url, pg_url, data_dir: data_dir.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then waits (at most 60 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.sigterm();
        self.wait()
    }

    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("adstore serve did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        encoding: Option<&str>,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        post(&format!("{}{path}", self.url), content_type, encoding, body)
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        let mut r = agent().get(&format!("{}{path}", self.url)).call().expect("GET");
        serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json")
    }

    pub fn get_text(&self, path: &str) -> String {
        let mut r = agent().get(&format!("{}{path}", self.url)).call().expect("GET");
        r.body_mut().read_to_string().expect("body")
    }

    /// The value of the metric `name` in `/metrics` (with its labels if
    /// it has any, e.g. `adstore_memory_used_bytes{part="head"}`).
    pub fn metric(&self, name: &str) -> u64 {
        let metrics = self.get_text("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs `body`; returns the status and the JSON response.
pub fn post(url: &str, content_type: &str, encoding: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
    let encoding = encoding.map(|e| ("content-encoding", e));
    post_with_headers(url, &[("content-type", content_type)].into_iter().chain(encoding).collect::<Vec<_>>(), body)
}

/// POSTs `body` with `headers`; returns the status and the JSON response.
pub fn post_with_headers(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, serde_json::Value) {
    let mut req = agent().post(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut r = req.send(body).expect("POST");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// Every event stored in `dir` (the server must be stopped): opens the store.
pub fn stored_events(dir: &Path, config: StoreConfig) -> Vec<EventBatch> {
    let store = Store::open(dir, config, SealPipeline::new()).expect("open store");
    let events = store.snapshot().read_events().expect("read");
    store.close().expect("close");
    events
}

pub fn stored_count(dir: &Path) -> usize {
    stored_events(dir, StoreConfig::default()).iter().map(EventBatch::num_rows).sum()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// `n` distinct generated events over the last 12 hours, as NDJSON. The
/// generator's exact re-sends are left out, so every line is stored.
pub fn ndjson(n: u64, seed: u64) -> Vec<u8> {
    let cfg = GenConfig {
        seed,
        events: n + n / 10 + 10,
        // Clicks and conversions trail the stream by up to two hours: keep
        // them all in the past.
        start_ms: now_ms() - 14 * HOUR_MS,
        span_ms: 11 * HOUR_MS,
        ..GenConfig::default()
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    Generator::new(cfg)
        .filter(|e| seen.insert((e.publisher_id.clone(), e.kind, e.event_id.clone())))
        .take(n as usize)
        .for_each(|e| write_ndjson(&e, &mut out));
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// The input columns of `batch` as an Arrow IPC stream, cut into record batches of `rows`.
pub fn arrow_ipc(batch: &EventBatch, rows: usize) -> Vec<u8> {
    let input: Vec<usize> = (0..adstore_storage::ColumnId::Attributed.index()).collect();
    let record = batch.record_batch().project(&input).expect("project");
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &record.schema()).expect("writer");
    let mut offset = 0;
    while offset < record.num_rows() {
        let len = rows.min(record.num_rows() - offset);
        w.write(&record.slice(offset, len)).expect("write");
        offset += len;
    }
    w.finish().expect("finish");
    drop(w);
    out
}

/// NDJSON of three days of events starting at `day0`, with impressions
/// and clicks per day (counted here, the oracle), and two hours more (so the
/// third day's last bucket closes too): an impression every 90 s and a
/// click on every fourth.
pub fn three_days(day0: i64) -> (Vec<u8>, std::collections::BTreeMap<i64, (u64, u64)>) {
    let mut body = String::new();
    let mut per_day: std::collections::BTreeMap<i64, (u64, u64)> = std::collections::BTreeMap::new();
    let mut ts = day0;
    let mut i = 0u64;
    while ts < day0 + 3 * DAY_MS + 2 * HOUR_MS {
        let kind = if i % 4 == 3 { "click" } else { "impression" };
        let click_id = if kind == "click" { format!(",\"click_id\":\"k{i}\"") } else { String::new() };
        body.push_str(&format!(
            "{{\"event_id\":\"e{i}\",\"type\":\"{kind}\",\"ts\":{ts},\"publisher_id\":\"p1\",\"advertiser_id\":\"a{}\",\
             \"campaign_id\":\"c1\",\"ad_id\":\"x1\",\"impression_id\":\"imp{}\"{click_id},\"cost_micros\":10}}\n",
            i % 3,
            i - i % 4
        ));
        let day = ts.div_euclid(DAY_MS) * DAY_MS;
        let d = per_day.entry(day).or_default();
        if kind == "impression" {
            d.0 += 1;
        } else {
            d.1 += 1;
        }
        ts += 90_000;
        i += 1;
    }
    (body.into_bytes(), per_day)
}

/// `YYYY-MM-DD` of the UTC day starting at `ms` (days from civil, H. Hinnant).
pub fn date(ms: i64) -> String {
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A moto S3 server (`python3 -m moto.server`, installed by `.ci/run`) on a
/// free 127.0.0.1 port with one bucket; killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// A port free on 127.0.0.1 a moment ago, for a server started next.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Moto {
    pub fn start(bucket: &str) -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]'; .ci/run installs it)");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = agent().put(&format!("{}/{bucket}", moto.endpoint)).send_empty()
                && r.status().is_success()
            {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto did not start on {}", moto.endpoint);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The environment a server needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// SIGSTOP or SIGCONT: a network partition and its end.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /v1/sql` of `query` as JSON.
pub fn sql(server: &Server, query: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "sql": query, "format": "json" }).to_string();
    post(&format!("{}/v1/sql", server.url), "application/json", None, body.as_bytes())
}

/// The file-name prefixes (`{id:016x}.`) of the segments whose tier in
/// the data directory's catalog is `tier`.
pub fn segments_in_tier(dir: &Path, tier: &str) -> Vec<String> {
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).expect("catalog")).expect("json");
    catalog["catalog"]["segments"]
        .as_object()
        .expect("segments")
        .values()
        .filter(|m| m["tier"] == tier)
        .filter_map(|m| m["id"].as_u64().map(|id| format!("{id:016x}.")))
        .collect()
}
