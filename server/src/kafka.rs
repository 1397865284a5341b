//! Kafka sources (`[[sources.kafka]]`): events consumed from a topic
//! instead of sent over HTTP, exactly once.
//!
//! ```text
//!  topic ──poll──► pending (per partition: message values, offsets)
//!                    │ every max_batch_wait_ms or max_batch_bytes
//!                    ▼
//!   parse + validate (as HTTP ingest) ──bad lines──► dead letters (file)
//!                    │
//!   ExactlyOnce::ingest_from: dedupe, then one WAL record with the events
//!   and the partitions' next offsets ──► commit the offsets to Kafka
//! ```
//!
//! The WAL, not Kafka, says where a partition resumes: the offsets are
//! written in the same record as the events they carried
//! (`adstore_storage::offsets`), so after a crash the consumer starts at
//! the first message not durably stored, whatever Kafka's committed offset
//! says. Kafka's committed offset moves after the WAL's, for lag tools and
//! for another node that takes the partition over; a node resumes from the
//! larger of the two. A full head pauses the partitions instead of refusing.
//! See `docs/scale-out.md`.

mod consumer;
mod pending;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;
use crate::http::AppState;

/// librdkafka properties the source sets itself.
const OWN_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "client.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "statistics.interval.ms",
];

/// `[sources]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[[sources.kafka]]`: topics to consume.
    pub kafka: Vec<KafkaSourceConfig>,
}

/// One `[[sources.kafka]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Names the source in offsets, metrics and dead letters: letters,
    /// digits, `-` and `_`.
    pub name: String,
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group: nodes in one group split the partitions.
    /// Default `adstore`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Read exactly these partitions, without the group's assignment (no
    /// rebalances; after a restart the source resumes at once instead of
    /// waiting for its old session to time out). Offsets are still
    /// committed to `group`. Default: the group assigns them.
    #[serde(default)]
    pub partitions: Option<Vec<i32>>,
    /// `ndjson` (default): each message holds one or more NDJSON lines;
    /// `arrow`: each message is an Arrow IPC stream of event rows.
    #[serde(default)]
    pub format: SourceFormat,
    /// Where a partition neither the WAL nor the group has an offset for
    /// starts: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: StartAt,
    /// Partition number → the one `publisher_id` its events may carry;
    /// others are dead letters. Default: any publisher on any partition.
    #[serde(default)]
    pub publishers: BTreeMap<String, String>,
    /// Where rejected messages go, one JSON line each. Default
    /// `{data_dir}/dead-letters/{name}.ndjson`.
    #[serde(default)]
    pub dead_letter_file: Option<PathBuf>,
    /// Write dead letters to this topic of the same brokers instead of
    /// the file, one message each (the JSON object the file would hold),
    /// keyed by the partition they came from. Default: the file.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// The dead-letter file is moved to `….1` (replacing the last one)
    /// past this size. Default 64 MiB.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
    /// Message bytes gathered before they are stored as one WAL record.
    /// Default 4 MiB.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Longest a message waits for others before it is stored. Default 100.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// More librdkafka properties (`security.protocol`, `sasl.*`, …).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// One or more NDJSON lines per message, as `POST /v1/events` takes them.
    #[default]
    Ndjson,
    /// An Arrow IPC stream per message, as `POST /v1/events` takes it
    /// (`application/vnd.apache.arrow.stream`).
    Arrow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Earliest,
    Latest,
}

impl StartAt {
    fn as_str(self) -> &'static str {
        match self {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        }
    }
}

fn default_group() -> String {
    "adstore".into()
}

fn default_dead_letter_max_bytes() -> u64 {
    64 << 20
}

fn default_max_batch_bytes() -> usize {
    4 << 20
}

fn default_max_batch_wait_ms() -> u64 {
    100
}

impl SourcesConfig {
    pub fn validate(&self, max_body_bytes: usize) -> Result<(), ServerError> {
        let bad = |name: &str, what: String| ServerError::Config(format!("sources.kafka {name:?}: {what}"));
        for (i, s) in self.kafka.iter().enumerate() {
            let name = s.name.as_str();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(bad(name, "name must be letters, digits, '-' and '_'".into()));
            }
            if self.kafka[..i].iter().any(|o| o.name == s.name) {
                return Err(bad(name, "the name is used twice".into()));
            }
            if s.brokers.trim().is_empty() || s.topic.trim().is_empty() || s.group.trim().is_empty() {
                return Err(bad(name, "brokers, topic and group must not be empty".into()));
            }
            if s.max_batch_bytes < 1024 || s.max_batch_bytes > max_body_bytes {
                return Err(bad(
                    name,
                    format!("max_batch_bytes must be between 1024 and server.max_body_bytes ({max_body_bytes})"),
                ));
            }
            if s.max_batch_wait_ms == 0 || s.max_batch_wait_ms > 60_000 {
                return Err(bad(name, "max_batch_wait_ms must be between 1 and 60000".into()));
            }
            if let Some(list) = &s.partitions {
                let mut sorted = list.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if list.is_empty() || sorted.len() != list.len() || sorted[0] < 0 {
                    return Err(bad(name, "partitions must list partition numbers, each once".into()));
                }
            }
            if s.stream().len() > adstore_storage::offsets::MAX_STREAM_NAME_BYTES {
                return Err(bad(name, "name and topic are too long together".into()));
            }
            // Written as the partition prints ("3", not "03"): the lookup is by that text.
            let canonical = |p: &String| p.parse::<i32>().is_ok_and(|n| n >= 0 && n.to_string() == *p);
            if let Some(p) = s.publishers.keys().find(|p| !canonical(p)) {
                return Err(bad(name, format!("publishers: {p:?} is not a partition number")));
            }
            match &s.dead_letter_topic {
                Some(t) if t.trim().is_empty() || *t == s.topic => {
                    return Err(bad(name, "dead_letter_topic must be a topic other than the source's".into()));
                }
                Some(_) if s.dead_letter_file.is_some() => {
                    return Err(bad(name, "dead_letter_topic and dead_letter_file are exclusive".into()));
                }
                _ => {}
            }
            if let Some(key) = s.options.keys().find(|k| OWN_PROPERTIES.contains(&k.as_str())) {
                return Err(bad(name, format!("options: {key} is set by the source itself; use its own field")));
            }
        }
        Ok(())
    }
}

impl KafkaSourceConfig {
    /// The stream name of the source's offsets in the WAL.
    fn stream(&self) -> String {
        format!("{}/{}", self.name, self.topic)
    }

    /// The publisher partition `partition`'s events must carry, if one is set.
    fn publisher_of(&self, partition: i32) -> Option<&str> {
        self.publishers.get(&partition.to_string()).map(String::as_str)
    }
}

/// What one partition of a source has done, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionStats {
    /// The next offset not yet stored.
    pub stored: i64,
    /// The partition's high watermark, as last reported by the broker.
    pub high: Option<i64>,
}

impl PartitionStats {
    pub fn lag(&self) -> Option<i64> {
        self.high.map(|h| (h - self.stored).max(0))
    }
}

/// One source's counters, shared by its thread and `/metrics`.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub name: String,
    pub topic: String,
    pub messages: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_letters: AtomicU64,
    pub records: AtomicU64,
    pub paused: AtomicBool,
    pub pauses: AtomicU64,
    pub errors: AtomicU64,
    /// Messages below the stored offset, which came anyway.
    pub skipped: AtomicU64,
    pub partitions: Mutex<BTreeMap<i32, PartitionStats>>,
}

/// The running sources of a server.
#[derive(Default)]
pub struct Sources {
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Mutex<Vec<Arc<SourceStats>>>,
}

impl Sources {
    /// Starts a consumer thread for each configured source. A source whose
    /// client cannot be created (a bad librdkafka option) stops the start;
    /// a broker that cannot be reached is retried by the client.
    pub fn start(app: &Arc<AppState>) -> Result<(), ServerError> {
        for config in &app.config.sources.kafka {
            let stats = Arc::new(SourceStats {
                name: config.name.clone(),
                topic: config.topic.clone(),
                ..SourceStats::default()
            });
            let source = consumer::Source::connect(app.clone(), config.clone(), stats.clone(), app.kafka.stop.clone())?;
            let thread = std::thread::Builder::new()
                .name(format!("adstore-kafka-{}", config.name))
                .spawn(move || source.run())
                .map_err(|e| ServerError::Internal(format!("cannot start the Kafka source thread: {e}")))?;
            app.kafka.threads.lock().push(thread);
            app.kafka.stats.lock().push(stats);
            tracing::info!(source = %config.name, topic = %config.topic, brokers = %config.brokers,
                group = %config.group, "Kafka source started");
        }
        Ok(())
    }

    /// Stops every source: each stores what it holds, commits its offsets
    /// and leaves its group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }

    pub fn stats(&self) -> Vec<Arc<SourceStats>> {
        self.stats.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    fn source(toml: &str) -> Result<(), String> {
        let text = format!("[[sources.kafka]]\nname = \"ads\"\nbrokers = \"b:9092\"\ntopic = \"t\"\n{toml}");
        let config = crate::config::Config::parse(&text).map_err(|e| e.to_string())?;
        config.sources.validate(64 << 20).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bad_source_is_refused_naming_the_field() {
        assert_eq!(source(""), Ok(()));
        let refused = |toml: &str, says: &str| {
            let e = source(toml).expect_err(toml);
            assert!(e.contains(says), "{toml}: {e}");
        };
        refused("max_batch_bytes = 10", "max_batch_bytes");
        refused("max_batch_wait_ms = 0", "max_batch_wait_ms");
        refused("publishers = { \"x\" = \"pub-1\" }", "not a partition number");
        refused("publishers = { \"03\" = \"pub-1\" }", "not a partition number");
        refused("options = { \"auto.offset.reset\" = \"latest\" }", "its own field");
        refused("options = { \"group.id\" = \"other\" }", "group.id is set by the source itself");
        refused("format = \"avro\"", "unknown variant");
        refused("start = \"middle\"", "unknown variant");
        refused("colour = 1", "unknown field");
        refused("partitions = []", "each once");
        refused("partitions = [0, 0]", "each once");
        refused("partitions = [-1]", "each once");
        refused("dead_letter_topic = \"t\"", "a topic other than the source's");
        refused("dead_letter_topic = \"d\"\ndead_letter_file = \"/x\"", "exclusive");
        assert_eq!(source("dead_letter_topic = \"t-dead\""), Ok(()));
        assert_eq!(source("partitions = [0, 2]"), Ok(()));
        let twice = "[[sources.kafka]]\nname = \"ads\"\nbrokers = \"b:9092\"\ntopic = \"u\"\n";
        refused(twice, "used twice");
        let bad_name =
            crate::config::Config::parse("[[sources.kafka]]\nname = \"a b\"\nbrokers = \"b\"\ntopic = \"t\"\n")
                .expect("parse");
        let e = bad_name.sources.validate(64 << 20).expect_err("a name with a space");
        assert!(e.to_string().contains("letters, digits"), "{e}");
    }
}
