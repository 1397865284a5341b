//! Messages polled and not yet stored: each partition's values as one
//! NDJSON body, which message each line came from, and the offsets the
//! batch will carry. Arrow messages are kept the same way and parsed one
//! by one (each is a stream of its own).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use adstore_ingest::{LineError, ParseOptions, ParseOutcome, parse_arrow_ipc, parse_ndjson};
use adstore_storage::offsets::SourceOffsets;
use serde::Serialize;

use super::SourceFormat;

/// One message's place in its partition's body.
#[derive(Debug, Clone, Copy)]
struct Placed {
    offset: i64,
    /// Its first line in the body (1-based), and how many it has.
    first_line: usize,
    lines: usize,
    /// Its bytes in the body.
    start: usize,
    end: usize,
}

#[derive(Debug, Default)]
struct PartitionBody {
    bytes: Vec<u8>,
    lines: usize,
    /// The messages with lines.
    messages: Vec<Placed>,
    /// Every message taken, those without a value included.
    taken: usize,
}

impl PartitionBody {
    /// The message that holds line `line` of the body.
    fn message_of(&self, line: usize) -> Option<&Placed> {
        let at = self.messages.partition_point(|m| m.first_line <= line);
        at.checked_sub(1).map(|i| &self.messages[i]).filter(|m| line < m.first_line + m.lines.max(1))
    }

    fn value_of(&self, m: &Placed) -> &[u8] {
        self.bytes.get(m.start..m.end).unwrap_or_default()
    }
}

/// Messages gathered for the next WAL record.
#[derive(Debug, Default)]
pub struct Pending {
    partitions: BTreeMap<i32, PartitionBody>,
    /// The next offset of every partition a message was taken from.
    pub offsets: SourceOffsets,
    bytes: usize,
    messages: usize,
    since: Option<Instant>,
    /// Whether this batch's dead letters are written already (a store
    /// that failed after writing them is retried without writing them
    /// again).
    pub letters_written: bool,
}

/// A rejected line, as written to the dead-letter file.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub source: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The line (NDJSON) or row (Arrow) within the message (1-based).
    pub line: usize,
    pub field: Option<String>,
    pub reason: String,
    /// The message's value (lossy UTF-8); `null` for an Arrow message,
    /// which stays in the topic at `offset`.
    pub value: Option<String>,
}

impl Pending {
    /// Takes a message's value (`None`: a message without one, which still
    /// moves the offset).
    pub fn push(&mut self, stream: &str, partition: i32, offset: i64, value: Option<&[u8]>) {
        let body = self.partitions.entry(partition).or_default();
        let value = value.unwrap_or_default();
        let lines = value.iter().filter(|&&b| b == b'\n').count() + usize::from(!value.ends_with(b"\n"));
        let lines = if value.is_empty() { 0 } else { lines };
        if lines > 0 {
            let start = body.bytes.len();
            body.messages.push(Placed { offset, first_line: body.lines + 1, lines, start, end: start + value.len() });
            body.bytes.extend_from_slice(value);
            if !value.ends_with(b"\n") {
                body.bytes.push(b'\n');
            }
            body.lines += lines;
        }
        body.taken += 1;
        self.offsets.advance(stream, partition, offset + 1);
        self.bytes += value.len();
        self.messages += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Drops the messages of `partition` (revoked, and not stored here: its
    /// next owner reads them).
    pub fn forget(&mut self, stream: &str, partition: i32) {
        if let Some(body) = self.partitions.remove(&partition) {
            self.messages -= body.taken.min(self.messages);
            self.bytes -= body.bytes.len().min(self.bytes);
        }
        self.offsets.forget(stream, partition);
        if self.offsets.is_empty() {
            *self = Pending::default();
        }
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Whether the batch should be stored now.
    pub fn is_due(&self, max_bytes: usize, max_wait_ms: u64) -> bool {
        self.bytes >= max_bytes || self.since.is_some_and(|t| t.elapsed().as_millis() as u64 >= max_wait_ms)
    }

    /// Parses each partition's body (as `format`) with the options
    /// `opts_for` gives it, calling `reject` for every bad line or row with
    /// the message it came in (its value: `None` for Arrow).
    pub fn parse(
        &self,
        format: SourceFormat,
        opts_for: impl Fn(i32) -> ParseOptions,
        mut reject: impl FnMut(i32, i64, usize, &LineError, Option<&[u8]>),
    ) -> Vec<ParseOutcome> {
        let mut outcomes = Vec::with_capacity(self.partitions.len());
        for (&partition, body) in &self.partitions {
            if body.bytes.is_empty() {
                continue;
            }
            let opts = ParseOptions { max_errors: usize::MAX, ..opts_for(partition) };
            if format == SourceFormat::Arrow {
                for m in &body.messages {
                    let outcome = parse_arrow_ipc(body.value_of(m).to_vec(), &opts);
                    for e in &outcome.errors {
                        reject(partition, m.offset, e.line, e, None);
                    }
                    outcomes.push(outcome);
                }
                continue;
            }
            let outcome = parse_ndjson(&body.bytes, &opts);
            for e in &outcome.errors {
                match body.message_of(e.line) {
                    Some(m) => reject(partition, m.offset, e.line + 1 - m.first_line, e, Some(body.value_of(m))),
                    // Not expected: every line is some message's.
                    None => reject(partition, -1, e.line, e, None),
                }
            }
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// Where a source's dead letters go: a file, or a topic.
pub enum DeadLetters {
    File(DeadLetterFile),
    Topic(DeadLetterTopic),
}

impl DeadLetters {
    /// Where they go, for messages.
    pub fn describe(&self) -> String {
        match self {
            DeadLetters::File(f) => f.path.display().to_string(),
            DeadLetters::Topic(t) => format!("topic {}", t.topic),
        }
    }

    /// Writes `letters` durably (synced, or acknowledged by the brokers)
    /// before the offsets past them are stored.
    pub fn write(&mut self, letters: &[DeadLetter<'_>]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match self {
            DeadLetters::File(f) => f.write(letters),
            DeadLetters::Topic(t) => t.write(letters),
        }
    }
}

/// A dead-letter topic: each letter one message, keyed by the partition
/// it came from, acknowledged by every in-sync replica before `write`
/// returns.
pub struct DeadLetterTopic {
    producer: rdkafka::producer::BaseProducer,
    topic: String,
}

/// How long the brokers may take to acknowledge a batch's dead letters.
const DEAD_LETTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl DeadLetterTopic {
    /// A producer to `topic` with the client settings `client` (the
    /// source's brokers and options).
    pub fn new(mut client: rdkafka::ClientConfig, topic: String) -> rdkafka::error::KafkaResult<DeadLetterTopic> {
        let producer = client.set("acks", "all").set("enable.idempotence", "true").create()?;
        Ok(DeadLetterTopic { producer, topic })
    }

    fn write(&mut self, letters: &[DeadLetter<'_>]) -> std::io::Result<()> {
        use rdkafka::producer::{BaseRecord, Producer};
        for l in letters {
            let value = serde_json::to_vec(l).map_err(std::io::Error::other)?;
            let key = l.partition.to_string();
            let mut record = BaseRecord::to(&self.topic).key(&key).payload(&value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        self.producer.poll(std::time::Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(std::io::Error::other(e)),
                }
            }
        }
        self.producer.flush(DEAD_LETTER_TIMEOUT).map_err(std::io::Error::other)
    }
}

/// The dead-letter file of a source, rotated past its size.
pub struct DeadLetterFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    written: u64,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> DeadLetterFile {
        DeadLetterFile { path, max_bytes, file: None, written: 0 }
    }

    /// Appends `letters`, one JSON line each, and syncs the file: they are
    /// on disk before the offsets past them are.
    fn write(&mut self, letters: &[DeadLetter<'_>]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for l in letters {
            serde_json::to_writer(&mut text, l).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        if self.file.is_some() && self.written + text.len() as u64 > self.max_bytes {
            self.file = None;
            let mut previous = self.path.clone().into_os_string();
            previous.push(".1");
            std::fs::rename(&self.path, previous)?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
                self.written = f.metadata()?.len();
                self.file.insert(f)
            }
        };
        file.write_all(&text)?;
        file.sync_data()?;
        self.written += text.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_name_the_message_and_line_they_came_in() {
        let good = br#"{"event_id":"i-1","type":"impression","ts":"2026-11-22T10:00:00Z","publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","impression_id":"i-1"}"#;
        let mut pending = Pending::default();
        pending.push("s/t", 0, 10, Some(good));
        let mut two = good.to_vec();
        two.extend_from_slice(b"\n{\"event_id\":\"x\"}\n");
        pending.push("s/t", 0, 11, Some(&two));
        pending.push("s/t", 0, 12, None);
        pending.push("s/t", 1, 7, Some(b"not json"));
        assert_eq!(pending.messages(), 4);
        assert_eq!((pending.offsets.next("s/t", 0), pending.offsets.next("s/t", 1)), (Some(13), Some(8)));
        let mut rejected = Vec::new();
        let outcomes = pending.parse(
            SourceFormat::Ndjson,
            |_| ParseOptions::default(),
            |p, offset, line, _, value| {
                rejected.push((p, offset, line, String::from_utf8_lossy(value.unwrap_or_default()).into_owned()))
            },
        );
        assert_eq!(outcomes.iter().map(|o| o.accepted()).sum::<usize>(), 2);
        assert_eq!(
            rejected,
            vec![(0, 11, 2, String::from_utf8_lossy(&two).into_owned()), (1, 7, 1, "not json".to_string())]
        );
    }
}
