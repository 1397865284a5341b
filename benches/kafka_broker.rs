//! A Kafka broker for the Kafka suite (`benches/kafka.py --broker mock`):
//! librdkafka's mock cluster, a Kafka-protocol broker in C that keeps
//! partitions in memory and serves fetches without the per-record cost of
//! tansu's SQLite storage, so the suite measures the source rather than
//! the broker. It speaks the protocol over TCP on 127.0.0.1, consumer
//! groups included; it is a test broker (no replication, no durability),
//! used for figures only, never by the tests of record.
//!
//! The mock keeps only the last 5 MiB of each partition (librdkafka's
//! `rdkafka_mock.c`), so a backlog larger than that is lost: the suite
//! sends the events in steps while the consumer keeps up (`load`, then
//! `send` as the stored offsets follow), without keys so that the
//! partitions fill evenly.
//!
//! ```text
//!  cargo bench --bench kafka_broker -- PARTITIONS
//!  prints  bootstrap HOST:PORT
//!  stdin   load FILE       the file's NDJSON lines, kept in memory; prints "loaded N"
//!          send N          the next N of them, one message each, to topic `events`,
//!                          acknowledged; prints "sent TOTAL"
//!          (end of input)  the broker stops
//! ```

use std::io::{BufRead, Write};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Sends `lines` to `events`, without keys, and waits for the broker's
/// acknowledgements.
fn send(producer: &BaseProducer, lines: &[Vec<u8>]) -> Result<(), String> {
    for line in lines {
        loop {
            match producer.send(BaseRecord::<(), _>::to("events").payload(line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
    }
    producer.flush(Duration::from_secs(300)).map_err(|e| format!("flush: {e}"))
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
        // Each keyless message to a partition of its own choosing, not a
        // batch to one: the partitions fill evenly.
        .set("sticky.partitioning.linger.ms", "0")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "bootstrap {}", cluster.bootstrap_servers()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let (mut lines, mut next): (Vec<Vec<u8>>, usize) = (Vec::new(), 0);
    for command in std::io::stdin().lock().lines() {
        let command = command.map_err(|e| e.to_string())?;
        let reply = match command.split_once(' ') {
            Some(("load", path)) => {
                let text = std::fs::read(path.trim()).map_err(|e| format!("{path}: {e}"))?;
                lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
                next = 0;
                format!("loaded {}", lines.len())
            }
            Some(("send", n)) => {
                let n: usize = n.trim().parse().map_err(|_| format!("send {n:?}: not a count"))?;
                let end = (next + n).min(lines.len());
                send(&producer, &lines[next..end])?;
                next = end;
                format!("sent {next}")
            }
            _ => return Err(format!("unknown command {command:?}")),
        };
        writeln!(out, "{reply}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
