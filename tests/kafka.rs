//! Kafka sources against a real Kafka-protocol broker (tansu, installed by
//! `scripts/test`) with kafka-python as the producer: a topic consumed
//! exactly once across SIGKILLs, checked against the independent oracle;
//! bad messages as dead letters; a full head pausing the source; two nodes
//! in one group handing partitions over.

mod oracle;
mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adstore_server::datagen::{BOT_UA_HASH, write_ndjson};
use support::{Server, sql};

/// One test at a time: each runs a broker, servers and a producer, and
/// under a loaded machine the broker's group coordinator answered
/// heartbeats late enough for sessions to time out.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tansu broker on a free 127.0.0.1 port, topics in a SQLite file under
/// `dir`; killed on drop. (Its `memory://` engine answers a fetch from the
/// middle of a producer's batch with the next batch, losing the rest of
/// that one for any consumer that resumes there; its SQL engines keep
/// records one by one.)
struct Broker {
    child: Child,
    bootstrap: String,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let port = support::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu opens a sqlite:// path relative to its working directory.
        let child = Command::new(tansu())
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu broker (cargo install tansu --features libsql; scripts/test installs it)");
        let broker = Broker { child, bootstrap: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.bootstrap).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", broker.bootstrap);
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    /// Sends `lines` to `topic` (created with `partitions`), one message
    /// each, keyed by advertiser, at most `per_second` a second (0: as fast
    /// as it goes), in the background.
    fn produce(&self, topic: &str, partitions: u32, lines: &Path, per_second: u32) -> Child {
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/produce.py"))
            .args([&self.bootstrap, topic, &partitions.to_string()])
            .arg(lines)
            .args(["--per-second", &per_second.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 tests/kafka/produce.py (pip install kafka-python; scripts/test installs it)")
    }
}

impl Broker {
    /// Sets `group`'s committed offsets of every partition of `topic` to
    /// `offset` (the group must have no members).
    fn rewind(&self, group: &str, topic: &str, offset: i64) {
        let status = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/rewind.py"))
            .args([&self.bootstrap, group, topic, &offset.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("python3 tests/kafka/rewind.py");
        assert!(status.success(), "rewind failed: {status}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("ADSTORE_TANSU") {
        return path.into();
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin/tansu"));
    cargo_bin.filter(|p| p.exists()).unwrap_or_else(|| "tansu".into())
}

fn wait_producer(mut producer: Child) {
    let status = producer.wait().expect("producer");
    assert!(status.success(), "the producer failed: {status}");
}

fn count(server: &Server, query: &str) -> u64 {
    let (status, body) = sql(server, query);
    assert_eq!(status, 200, "{body}");
    body["rows"][0][0].as_u64().unwrap_or_else(|| panic!("a count in {body}"))
}

/// Waits until `SELECT count(*) FROM events` reaches `n`.
fn wait_for_events(server: &Server, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let have = count(server, "SELECT count(*) FROM events");
        assert!(have <= n, "{have} events stored, more than the {n} sent");
        if have == n {
            return;
        }
        if Instant::now() > deadline {
            let metrics = server.get_text("/metrics");
            let kafka: Vec<&str> = metrics.lines().filter(|l| l.starts_with("adstore_kafka")).collect();
            let letters = std::fs::read_to_string(server.data_dir.join("dead-letters/ads.ndjson")).unwrap_or_default();
            panic!("{have} of {n} events stored after {timeout:?}\n{}\ndead letters:\n{letters}", kafka.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum of a labelled series over its labels.
fn metric_sum(server: &Server, name: &str) -> u64 {
    let text = server.get_text("/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn source_config(broker: &Broker, extra: &str) -> String {
    format!(
        "[storage]\nseal_max_age_ms = 100\nseal_interval_ms = 20\nshards = 3\n\n\
         [attribution]\nbot_ua_hashes = [\"{BOT_UA_HASH}\"]\n{extra}\n\
         [[sources.kafka]]\nname = \"ads\"\nbrokers = \"{}\"\ntopic = \"events\"\ngroup = \"adstore-test\"\n\
         max_batch_wait_ms = 20\nmax_batch_bytes = 65536\n",
        broker.bootstrap
    )
}

/// The bad messages sent among the events, with what the dead letter
/// must say of each.
const BAD: [(&str, &str); 3] = [
    (r#"{"event_id":"bad-1","type":"click"}"#, "ts"),
    ("this is not json", "JSON"),
    (
        r#"{"event_id":"bad-3","type":"impression","ts":"yesterday","publisher_id":"p","advertiser_id":"adv-001","campaign_id":"c","ad_id":"a"}"#,
        "ts",
    ),
];

/// The oracle's stream (duplicates, out-of-order clicks, a click flood)
/// through a 4-partition topic, the server SIGKILLed twice while it
/// consumes: every event stored once, the bad messages in the dead-letter
/// file, the numbers equal to the oracle's once final.
#[test]
fn a_topic_is_stored_exactly_once_across_sigkills_and_matches_the_oracle() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let data = dir.path().join("data");
    let sent = oracle::stream();
    let unique = oracle::dedupe(&sent);
    let mut lines = Vec::new();
    for (i, e) in sent.iter().enumerate() {
        if i % (sent.len() / BAD.len()) == 7
            && let Some((bad, _)) = BAD.get(i / (sent.len() / BAD.len()))
        {
            lines.extend_from_slice(bad.as_bytes());
            lines.push(b'\n');
        }
        write_ndjson(e, &mut lines);
    }
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, &lines).expect("write events");
    let producer = broker.produce("events", 4, &file, 4_000);
    // The partitions named, not assigned by the group: a restarted server
    // resumes at once. (Through the group, the killed server's session has
    // to time out first, and tansu 0.6's coordinator now and then left the
    // group without an assignment for minutes after a member was killed.)
    let config = format!("{}partitions = [0, 1, 2, 3]\n", source_config(&broker, ""));
    let mut server = Server::start(&data, Some(&config));
    for third in [1, 2] {
        let at = unique.len() as u64 * third / 3;
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(&server, "SELECT count(*) FROM events") < at {
            assert!(Instant::now() < deadline, "the source did not reach {at} events");
            std::thread::sleep(Duration::from_millis(20));
        }
        Command::new("kill").args(["-KILL", &server.pid().to_string()]).status().expect("kill");
        drop(server);
        server = Server::start(&data, Some(&config));
    }
    wait_producer(producer);
    wait_for_events(&server, unique.len() as u64, Duration::from_secs(120));
    // Nothing more comes: no message is read twice.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&server, "SELECT count(*) FROM events"), unique.len() as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_sum(&server, "adstore_kafka_lag_messages") > 0 {
        assert!(Instant::now() < deadline, "lag did not reach 0:\n{}", server.get_text("/metrics"));
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each bad message is a dead letter naming where it was and why.
    let letters = std::fs::read_to_string(data.join("dead-letters/ads.ndjson")).expect("dead letters");
    let mut seen = std::collections::BTreeSet::new();
    for line in letters.lines() {
        let l: serde_json::Value = serde_json::from_str(line).expect("a JSON dead letter");
        let (partition, offset) = (l["partition"].as_i64().expect("partition"), l["offset"].as_i64().expect("offset"));
        assert!(offset >= 0, "{l}");
        let (_, why) = BAD.iter().find(|(text, _)| l["value"] == *text).unwrap_or_else(|| panic!("unexpected {l}"));
        let said = format!("{} {}", l["field"], l["reason"]);
        assert!(said.contains(why), "{l} should say {why}");
        assert_eq!((l["source"].as_str(), l["topic"].as_str()), (Some("ads"), Some("events")));
        seen.insert((partition, offset, l["value"].to_string()));
    }
    // A crash between the dead letter's write and the record's may write
    // one twice (same partition and offset), never lose one.
    assert_eq!(seen.len(), BAD.len(), "{letters}");

    // The WAL, not the group, says where to resume: with the group's
    // offsets rewound to 0 while the server is down, a restart reads
    // nothing again.
    assert!(server.stop().success());
    broker.rewind("adstore-test", "events", 0);
    let server = Server::start(&data, Some(&config));
    wait_until("the partitions are assigned", Duration::from_secs(60), || {
        server.get_text("/metrics").lines().filter(|l| l.starts_with("adstore_kafka_stored_offset{")).count() == 4
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.metric("adstore_kafka_messages_total{source=\"ads\"}"), 0, "messages read again");
    assert_eq!(count(&server, "SELECT count(*) FROM events"), unique.len() as u64);
    assert!(server.stop().success());
    oracle::assert_finalized_store_matches(&data, &data.with_extension("toml"), &sent, BOT_UA_HASH);
}

/// `n` generated events (seed `seed`) written to `dir/events.ndjson`,
/// and their event ids in order.
fn events_file(dir: &Path, n: u64, seed: u64) -> (PathBuf, Vec<String>) {
    let lines = support::ndjson(n, seed);
    let ids = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("json")["event_id"].to_string())
        .map(|id| id.trim_matches('"').to_string())
        .collect();
    let file = dir.join("events.ndjson");
    std::fs::write(&file, &lines).expect("write events");
    (file, ids)
}

/// The partitions `server`'s source holds (those with a stored offset).
fn assigned(server: &Server) -> usize {
    server.get_text("/metrics").lines().filter(|l| l.starts_with("adstore_kafka_stored_offset{")).count()
}

/// Node a started on `data_a`, and once it has stored `a_first` events,
/// node b on `data_b` in the same group: returned once the group has
/// split the 4 partitions between them.
fn two_nodes(data_a: &Path, data_b: &Path, config: &str, a_first: u64) -> (Server, Server) {
    let a = Server::start(data_a, Some(config));
    wait_until("node a stores events", Duration::from_secs(60), || count(&a, "SELECT count(*) FROM events") >= a_first);
    let b = Server::start(data_b, Some(config));
    wait_until("the group splits the partitions", Duration::from_secs(60), || {
        assigned(&a) + assigned(&b) == 4 && assigned(&b) > 0
    });
    (a, b)
}

/// Event ids stored in a stopped node's data directory.
fn stored_ids(data: &Path) -> Vec<String> {
    let config = adstore_storage::StoreConfig { shards: 3, ..adstore_storage::StoreConfig::default() };
    support::stored_events(data, config).iter().flat_map(|b| b.events()).map(|e| e.event_id).collect()
}

/// Waits until `done` holds, polling.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes in one group split a topic: a node that joins takes
/// partitions over from the other (which stores what it holds and commits
/// first), and a node stopped with SIGTERM hands its partitions to the
/// other. Between them every event is stored, and none twice.
#[test]
fn two_nodes_in_one_group_split_the_topic_and_hand_partitions_over() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let (file, sent) = events_file(dir.path(), 20_000, 11);
    let producer = broker.produce("events", 4, &file, 3_000);
    let config = source_config(&broker, "");
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = two_nodes(&data_a, &data_b, &config, 3_000);
    let a_before = count(&a, "SELECT count(*) FROM events");
    wait_until("node b stores events", Duration::from_secs(60), || count(&b, "SELECT count(*) FROM events") >= 2_000);
    assert!(count(&a, "SELECT count(*) FROM events") >= a_before);
    // A clean stop hands a's partitions to b.
    assert!(a.stop().success());
    wait_producer(producer);
    let a_ids = stored_ids(&data_a);
    wait_until("node b stores the rest", Duration::from_secs(120), || {
        count(&b, "SELECT count(*) FROM events") as usize + a_ids.len() >= sent.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(b.stop().success());
    let b_ids = stored_ids(&data_b);
    let mut all: Vec<String> = a_ids.iter().chain(&b_ids).cloned().collect();
    all.sort();
    let stored_twice = all.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(stored_twice, 0, "events stored by both nodes");
    let mut sent = sent;
    sent.sort();
    assert_eq!(all, sent, "a: {}, b: {}", a_ids.len(), b_ids.len());
    assert!(!a_ids.is_empty() && !b_ids.is_empty(), "a: {}, b: {}", a_ids.len(), b_ids.len());
}

/// Two nodes in one group, one SIGKILLed mid-stream: the survivor takes
/// its partitions over once its session times out and resumes at the
/// group's offsets. Nothing is lost; what is stored on both nodes is only
/// what the killed node stored after its last group commit (at most about
/// a second of its messages: docs/scale-out.md, limits).
#[test]
fn a_node_killed_mid_stream_loses_nothing_and_doubles_at_most_its_last_second() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    const RATE: u32 = 2_000;
    let (file, sent) = events_file(dir.path(), 40_000, 17);
    let producer = broker.produce("events", 4, &file, RATE);
    // A short session: the killed node's partitions move after 6 s.
    let config = format!("{}options = {{ \"session.timeout.ms\" = \"6000\" }}\n", source_config(&broker, ""));
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = two_nodes(&data_a, &data_b, &config, 2_000);
    // Long enough that b's commits matter: without them, all it stored
    // would be stored again, far above the bound below.
    wait_until("node b stores events", Duration::from_secs(60), || count(&b, "SELECT count(*) FROM events") >= 6_000);
    let b_errors = b.metric("adstore_kafka_errors_total{source=\"ads\"}");
    Command::new("kill").args(["-KILL", &b.pid().to_string()]).status().expect("kill");
    drop(b);
    let b_ids = stored_ids(&data_b);
    wait_until("node a takes every partition", Duration::from_secs(90), || assigned(&a) == 4);
    wait_producer(producer);
    let mut wanted: Vec<String> = sent.clone();
    wanted.sort();
    wanted.dedup();
    let b_set: std::collections::HashSet<&String> = b_ids.iter().collect();
    wait_until("node a stores the rest", Duration::from_secs(120), || {
        let a_count = count(&a, "SELECT count(*) FROM events") as usize;
        a_count + b_ids.len() >= wanted.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.stop().success());
    let a_ids = stored_ids(&data_a);
    let mut union: Vec<String> = a_ids.iter().chain(&b_ids).cloned().collect();
    union.sort();
    union.dedup();
    assert_eq!(union, wanted, "every event stored on a node: a {}, b {}", a_ids.len(), b_ids.len());
    let a_set: std::collections::HashSet<&String> = a_ids.iter().collect();
    assert_eq!(a_set.len(), a_ids.len(), "node a stored an event twice");
    let both = a_ids.iter().filter(|id| b_set.contains(id)).count();
    // b's offsets reach the group once a second, asynchronously: what it
    // stored after its last commit landed is at most about that second
    // and the commit's round trip of its partitions' messages. Its
    // partitions may carry most of the topic (keys are skewed): the bound
    // is two seconds of the whole topic.
    assert!(
        both <= 2 * RATE as usize,
        "{both} events stored on both nodes, more than two seconds of the topic (b stored {}, client errors {b_errors})",
        b_ids.len()
    );
    eprintln!(
        "stored on both nodes after the SIGKILL: {both} of {} (b stored {}, client errors {b_errors})",
        wanted.len(),
        b_ids.len()
    );
}

/// A head too small for the rate pauses the source instead of refusing
/// or dropping: every event is stored once, the pauses are counted.
#[test]
fn a_full_head_pauses_the_source_and_loses_nothing() {
    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let lines = support::ndjson(20_000, 13);
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, &lines).expect("write events");
    let producer = broker.produce("events", 2, &file, 0);
    wait_producer(producer);
    let config =
        source_config(&broker, "").replace("[storage]\n", "[storage]\nmax_head_bytes = 262144\nseal_max_rows = 2000\n");
    let server = Server::start(&dir.path().join("data"), Some(&config));
    wait_for_events(&server, 20_000, Duration::from_secs(120));
    assert!(server.metric("adstore_kafka_pauses_total{source=\"ads\"}") > 0, "{}", server.get_text("/metrics"));
    assert_eq!(server.metric("adstore_kafka_events_duplicate_total{source=\"ads\"}"), 0);
}

/// One Arrow IPC stream of `record`'s rows `start..start + len`.
fn ipc_stream(record: &arrow_array::RecordBatch, start: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &record.schema()).expect("writer");
    w.write(&record.slice(start, len)).expect("write");
    w.finish().expect("finish");
    drop(w);
    out
}

/// `format = "arrow"`: each message an Arrow IPC stream of events. Every
/// good row is stored once; a message that is no Arrow stream and a row
/// without its advertiser are dead letters naming their offset and row,
/// written to a dead-letter topic (`dead_letter_topic`), and hold up
/// nothing behind them.
#[test]
fn arrow_messages_are_stored_and_their_bad_rows_are_dead_letters() {
    use adstore_ingest::{ParseOptions, parse_ndjson};
    use arrow_array::{ArrayRef, RecordBatch, StringArray};

    let _alone = one_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let events = parse_ndjson(&support::ndjson(3_000, 21), &ParseOptions::default()).batch();
    let input: Vec<usize> = (0..adstore_storage::ColumnId::Attributed.index()).collect();
    let record = events.record_batch().project(&input).expect("the input columns");
    let mut files = Vec::new();
    let mut write = |name: String, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("message file");
        files.push(path);
    };
    for (i, start) in (0..3_000).step_by(100).enumerate() {
        write(format!("m{i:03}.arrow"), ipc_stream(&record, start, 100));
        if i == 10 {
            write("garbage".into(), b"this is no Arrow stream".to_vec());
        }
        if i == 20 {
            let column = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
            let no_advertiser = RecordBatch::try_from_iter([
                ("event_id", column("orphan-1")),
                ("type", column("impression")),
                ("ts", column("2026-11-22T10:00:00Z")),
                ("publisher_id", column("p")),
                ("campaign_id", column("c")),
                ("ad_id", column("a")),
            ])
            .expect("batch");
            write("no-advertiser.arrow".into(), ipc_stream(&no_advertiser, 0, 1));
        }
    }
    let status = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/produce_files.py"))
        .args([&broker.bootstrap, "events", "2"])
        .args(&files)
        .stdout(Stdio::null())
        .status()
        .expect("python3 tests/kafka/produce_files.py");
    assert!(status.success(), "the producer failed: {status}");

    // The dead-letter topic is the operator's to create, as any topic.
    let created = Command::new("python3")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka"))
        .args(["-c", "import sys, topic; topic.create_topic(sys.argv[1], 'events-dead', 1)", &broker.bootstrap])
        .status()
        .expect("python3 tests/kafka/topic.py");
    assert!(created.success());
    let config = format!("{}format = \"arrow\"\ndead_letter_topic = \"events-dead\"\n", source_config(&broker, ""));
    let server = Server::start(&dir.path().join("data"), Some(&config));
    wait_for_events(&server, 3_000, Duration::from_secs(120));
    assert!(!server.data_dir.join("dead-letters").exists(), "no dead-letter file with a topic");
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/consume.py"))
        .args([&broker.bootstrap, "events-dead", "2"])
        .output()
        .expect("python3 tests/kafka/consume.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let letters: Vec<serde_json::Value> = read.iter().map(|m| m["value"].clone()).collect();
    assert_eq!(letters.len(), 2, "{read:?}");
    for m in &read {
        assert_eq!(m["key"].as_str().map(str::to_string), Some(m["value"]["partition"].to_string()), "{m}");
    }
    let garbage = letters.iter().find(|l| l["reason"].as_str().is_some_and(|r| r.contains("Arrow")));
    let orphan = letters.iter().find(|l| l["field"] == "advertiser_id");
    for letter in [garbage, orphan] {
        let letter = letter.unwrap_or_else(|| panic!("both faults among {letters:?}"));
        assert_eq!((letter["line"].as_u64(), &letter["value"]), (Some(1), &serde_json::Value::Null), "{letter}");
        assert!(letter["offset"].as_i64().is_some_and(|o| o >= 0), "{letter}");
    }
    assert_eq!(count(&server, "SELECT count(*) FROM events WHERE event_id = 'orphan-1'"), 0);
    assert_eq!(server.metric("adstore_kafka_dead_letters_total{source=\"ads\"}"), 2);
    assert_eq!(server.metric("adstore_kafka_messages_total{source=\"ads\"}"), 32);
}
