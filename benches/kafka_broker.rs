//! A Kafka broker for the Kafka suite (`benches/kafka.py --broker mock`):
//! librdkafka's mock cluster, a Kafka-protocol broker in C that keeps
//! partitions in memory and serves fetches without the per-record cost of
//! tansu's SQLite storage, so the suite measures the source rather than
//! the broker. It speaks the protocol over TCP on 127.0.0.1, consumer
//! groups included; it is a test broker (no replication, no durability),
//! used for figures only, never by the tests of record.
//!
//! ```text
//!  cargo bench --bench kafka_broker -- PARTITIONS
//!  prints  bootstrap HOST:PORT
//!  stdin   produce FILE    one message per NDJSON line, keyed by advertiser_id,
//!                          to topic `events`; prints "produced N SECONDS"
//!          (end of input)  the broker stops
//! ```

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// The advertiser of an NDJSON event line, its message key.
fn advertiser(line: &[u8]) -> Option<&[u8]> {
    const FIELD: &[u8] = b"\"advertiser_id\":\"";
    let at = line.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let len = line[at..].iter().position(|&b| b == b'"')?;
    Some(&line[at..at + len])
}

/// Sends every line of `path` to `events`; returns the messages sent.
fn produce(producer: &BaseProducer, path: &str) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut sent = 0u64;
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        if line.is_empty() {
            continue;
        }
        let key = advertiser(&line).unwrap_or_default();
        loop {
            match producer.send(BaseRecord::to("events").key(key).payload(&line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(300)).map_err(|e| format!("flush: {e}"))?;
    Ok(sent)
}

fn main() -> Result<(), String> {
    // `cargo bench` passes `--bench` to a harness-less bench.
    let partitions: i32 =
        std::env::args().skip(1).find(|a| !a.starts_with("--")).and_then(|a| a.parse().ok()).unwrap_or(4);
    let cluster = MockCluster::new(1).map_err(|e| format!("mock cluster: {e}"))?;
    cluster.create_topic("events", partitions, 1).map_err(|e| format!("topic: {e}"))?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "bootstrap {}", cluster.bootstrap_servers()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for command in std::io::stdin().lock().lines() {
        let command = command.map_err(|e| e.to_string())?;
        let Some(path) = command.strip_prefix("produce ") else {
            return Err(format!("unknown command {command:?}"));
        };
        let started = Instant::now();
        let sent = produce(&producer, path.trim())?;
        writeln!(out, "produced {sent} {:.3}", started.elapsed().as_secs_f64()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
