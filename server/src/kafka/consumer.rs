//! A source's consumer thread: poll, gather, store, commit; pause while the
//! store has no room; hand partitions over cleanly on a rebalance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adstore_ingest::ParseOptions;
use adstore_storage::{EventBatch, StorageError};
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::pending::{DeadLetter, DeadLetterFile, DeadLetterTopic, DeadLetters, Pending};
use super::{KafkaSourceConfig, PartitionStats, SourceStats};
use crate::error::ServerError;
use crate::http::{AppState, time_window};

/// How long a call to the group coordinator may take (committed offsets at
/// an assignment, the commit at a hand-over).
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the loop waits between looks while the store has no room or a
/// store failed.
const BACKOFF: Duration = Duration::from_millis(200);
/// Most messages one batch gathers (small messages would otherwise fill a
/// batch by count long before `max_batch_bytes`).
const MAX_PENDING_MESSAGES: usize = 100_000;
/// How often stored offsets are committed to the group (the WAL has them
/// at once): a commit per record was a write per record for the broker.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

type SourceConsumer = BaseConsumer<SourceContext>;

/// A source, ready to run on its own thread.
pub struct Source {
    consumer: SourceConsumer,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

/// What the loop and the rebalance callback (run inside `poll`, on the
/// same thread) share.
struct Shared {
    app: Arc<AppState>,
    config: KafkaSourceConfig,
    stream: String,
    stats: Arc<SourceStats>,
    pending: Mutex<Pending>,
    dead: Mutex<DeadLetters>,
    /// When the group's offsets were last committed, and whether more
    /// were stored since.
    last_commit: Mutex<(Instant, bool)>,
}

pub struct SourceContext {
    shared: Arc<Shared>,
}

/// Why a batch was not stored; it stays pending.
enum NotStored {
    /// The store has no room or is busy: wait and try again.
    Busy(String),
    /// The server is stopping.
    Stopping(String),
}

impl Source {
    pub fn connect(
        app: Arc<AppState>,
        config: KafkaSourceConfig,
        stats: Arc<SourceStats>,
        stop: Arc<AtomicBool>,
    ) -> Result<Source, ServerError> {
        let dead_path = config
            .dead_letter_file
            .clone()
            .unwrap_or_else(|| app.data_dir.join("dead-letters").join(format!("{}.ndjson", config.name)));
        let mut client = ClientConfig::new();
        for (key, value) in &config.options {
            client.set(key, value);
        }
        client.set("bootstrap.servers", &config.brokers).set("client.id", format!("adstore-{}", config.name));
        let dead = match &config.dead_letter_topic {
            Some(topic) => DeadLetters::Topic(DeadLetterTopic::new(client.clone(), topic.clone()).map_err(|e| {
                ServerError::Config(format!("sources.kafka {:?}: dead_letter_topic: {e}", config.name))
            })?),
            None => DeadLetters::File(DeadLetterFile::new(dead_path, config.dead_letter_max_bytes)),
        };
        client
            .set("group.id", &config.group)
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", config.start.as_str());
        let shared = Arc::new(Shared {
            stream: config.stream(),
            dead: Mutex::new(dead),
            pending: Mutex::new(Pending::default()),
            last_commit: Mutex::new((Instant::now(), false)),
            app,
            config,
            stats,
        });
        let consumer: SourceConsumer = client
            .create_with_context(SourceContext { shared: shared.clone() })
            .map_err(|e| ServerError::Config(format!("sources.kafka {:?}: {e}", shared.config.name)))?;
        let refused = |e: KafkaError| ServerError::Config(format!("sources.kafka {:?}: {e}", shared.config.name));
        match &shared.config.partitions {
            Some(list) => {
                let mut tpl = TopicPartitionList::new();
                for &p in list {
                    tpl.add_partition(&shared.config.topic, p);
                }
                shared.start_offsets(&consumer, &mut tpl);
                consumer.assign(&tpl).map_err(refused)?;
            }
            None => consumer.subscribe(&[shared.config.topic.as_str()]).map_err(refused)?,
        }
        Ok(Source { consumer, shared, stop })
    }

    /// Consumes until the server stops, then stores what it holds, commits
    /// and leaves the group.
    pub fn run(self) {
        let Source { consumer, shared, stop } = self;
        let wait = Duration::from_millis(shared.config.max_batch_wait_ms);
        let mut paused = false;
        while !stop.load(Ordering::Acquire) {
            let room = shared.room();
            if room.is_err() != paused {
                paused = room.is_err();
                shared.pause(&consumer, paused);
            }
            if paused {
                // Still polled: the group's heartbeats and rebalances go on.
                shared.take(consumer.poll(BACKOFF));
                continue;
            }
            shared.take(consumer.poll(wait.min(Duration::from_millis(50))));
            // Everything already fetched, without waiting.
            while shared.wants_more() {
                match consumer.poll(Duration::ZERO) {
                    None => break,
                    message => shared.take(message),
                }
            }
            if shared.is_due()
                && let Err(NotStored::Busy(why)) = shared.store(&consumer)
            {
                tracing::debug!(source = %shared.config.name, why, "batch not stored yet; retrying");
                shared.take(consumer.poll(BACKOFF));
            }
            shared.commit_if_due(&consumer);
        }
        if let Err(NotStored::Busy(why) | NotStored::Stopping(why)) = shared.store(&consumer) {
            tracing::warn!(source = %shared.config.name, why,
                "stopping with messages not stored; they are read again at the next start");
        }
        let stored = shared.stored_offsets(None);
        if stored.count() > 0
            && let Err(e) = consumer.commit(&stored, CommitMode::Sync)
        {
            tracing::warn!(source = %shared.config.name, error = %e, "cannot commit offsets to the group at stop");
        }
        consumer.unsubscribe();
        tracing::info!(source = %shared.config.name, "Kafka source stopped");
    }
}

impl Shared {
    /// `Err` while the store would refuse an append: head or memory full,
    /// disk low.
    fn room(&self) -> Result<(), ServerError> {
        self.app.store.check_disk_space()?;
        self.app.store.check_head_room()?;
        self.app.memory.check(&self.app.store, &self.app.exactly_once)
    }

    fn pause(&self, consumer: &SourceConsumer, pause: bool) {
        self.stats.paused.store(pause, Ordering::Relaxed);
        if pause {
            self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(assigned) = consumer.assignment() else { return };
        let result = if pause { consumer.pause(&assigned) } else { consumer.resume(&assigned) };
        if let Err(e) = result {
            tracing::warn!(source = %self.config.name, error = %e, pause, "cannot pause or resume the partitions");
        }
        tracing::info!(source = %self.config.name, pause, "Kafka source {}", if pause {
            "paused: the store has no room until seals catch up"
        } else {
            "resumed"
        });
    }

    /// Whether more already fetched messages should join the batch before
    /// it is stored (one lock per message, on the drain loop).
    fn wants_more(&self) -> bool {
        let pending = self.pending.lock();
        pending.messages() < MAX_PENDING_MESSAGES
            && !pending.is_due(self.config.max_batch_bytes, self.config.max_batch_wait_ms)
    }

    fn is_due(&self) -> bool {
        let pending = self.pending.lock();
        !pending.is_empty() && pending.is_due(self.config.max_batch_bytes, self.config.max_batch_wait_ms)
    }

    /// Adds a polled message to the pending batch, unless the WAL already
    /// holds it.
    fn take<M: Message>(&self, polled: Option<Result<M, KafkaError>>) {
        match polled {
            None => {}
            Some(Err(e)) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %self.config.name, error = %e, "Kafka consumer error");
            }
            Some(Ok(m)) => {
                let stored = self
                    .stats
                    .partitions
                    .lock()
                    .entry(m.partition())
                    .or_insert(PartitionStats { stored: m.offset(), high: None })
                    .stored;
                if m.offset() < stored {
                    // Below what the WAL holds: stored already.
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                self.pending.lock().push(&self.stream, m.partition(), m.offset(), m.payload());
            }
        }
    }

    /// Stores the pending batch: parsed as HTTP ingest parses a body, its
    /// bad lines written as dead letters, then its events and offsets in
    /// one WAL record; then the offsets are committed to the group.
    fn store(&self, consumer: &SourceConsumer) -> Result<(), NotStored> {
        let mut pending = self.pending.lock();
        if pending.is_empty() {
            return Ok(());
        }
        self.room().map_err(|e| NotStored::Busy(e.to_string()))?;
        let app = &self.app;
        // Held from before the lateness check until the admit, as HTTP
        // ingest holds it.
        let hold = app.exactly_once.dedupe().hold();
        let newest = app.newest_ts_ms.load(Ordering::Acquire);
        hold.checked_against(newest);
        let base = time_window(&app.config.ingest, newest, false);
        let (name, topic) = (self.config.name.as_str(), self.config.topic.as_str());
        let mut letters = Vec::new();
        let outcomes = pending.parse(
            self.config.format,
            |partition| ParseOptions {
                publishers: self.config.publisher_of(partition).map(|p| vec![p.to_string()]),
                ..base.clone()
            },
            |partition, offset, line, e, value| {
                letters.push(DeadLetter {
                    source: name,
                    topic,
                    partition,
                    offset,
                    line,
                    field: e.field.clone(),
                    reason: e.reason.clone(),
                    value: value.map(|v| String::from_utf8_lossy(v).into_owned()),
                })
            },
        );
        let batches: Vec<EventBatch> = outcomes.iter().flat_map(|o| o.batches.iter().cloned()).collect();
        let batches = app.auth.signing.mark(batches).map_err(|e| NotStored::Busy(e.to_string()))?;
        let batch = match batches.as_slice() {
            [one] => one.clone(),
            [] => EventBatch::empty(),
            many => EventBatch::concat(many).map_err(|e| NotStored::Busy(e.to_string()))?,
        };
        // Before the offsets past them are durable: a crash in between
        // writes them again, never loses them. A batch retried after a
        // failure below does not write them twice.
        if !pending.letters_written {
            let mut dead = self.dead.lock();
            if let Err(e) = dead.write(&letters) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let to = dead.describe();
                return Err(NotStored::Busy(format!("cannot write the dead letters to {to}: {e}")));
            }
            pending.letters_written = true;
        }
        let summary = match app.exactly_once.ingest_from(&app.store, &batch, &pending.offsets) {
            Ok(summary) => summary,
            Err(StorageError::ShuttingDown) => return Err(NotStored::Stopping("the store is closing".into())),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(NotStored::Busy(e.to_string()));
            }
        };
        if let Some(max) = outcomes.iter().filter_map(|o| o.max_ts()).max() {
            app.newest_ts_ms.fetch_max(max, Ordering::Release);
        }
        drop(hold);
        let stats = &self.stats;
        stats.records.fetch_add(1, Ordering::Relaxed);
        stats.accepted.fetch_add(summary.accepted as u64, Ordering::Relaxed);
        stats.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
        stats.dead_letters.fetch_add(letters.len() as u64, Ordering::Relaxed);
        app.counters.accepted.fetch_add(summary.accepted as u64, Ordering::Relaxed);
        app.counters.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
        app.counters.rejected.fetch_add(letters.len() as u64, Ordering::Relaxed);
        let offsets = std::mem::take(&mut *pending).offsets;
        drop(pending);
        let mut partitions = stats.partitions.lock();
        for (stream, partition, next) in offsets.iter() {
            if stream == self.stream {
                partitions.entry(partition).or_default().stored = next;
            }
        }
        drop(partitions);
        self.last_commit.lock().1 = true;
        self.commit_if_due(consumer);
        Ok(())
    }

    /// The WAL holds the stored offsets; the group's follow, at most once
    /// per GROUP_COMMIT_INTERVAL, for lag tools and for a node that takes a
    /// partition over (a hand-over commits at once).
    fn commit_if_due(&self, consumer: &SourceConsumer) {
        let mut last = self.last_commit.lock();
        if !last.1 || last.0.elapsed() < GROUP_COMMIT_INTERVAL {
            return;
        }
        *last = (Instant::now(), false);
        if let Err(e) = consumer.commit(&self.stored_offsets(None), CommitMode::Async) {
            last.1 = true;
            tracing::debug!(source = %self.config.name, error = %e, "offset commit to the group failed; retried");
        }
    }

    /// What this node stored of each assigned partition (of `only`, if
    /// given), as offsets to commit.
    fn stored_offsets(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let partitions = self.stats.partitions.lock();
        for (&partition, p) in partitions.iter() {
            if only.is_none_or(|o| o.find_partition(&self.config.topic, partition).is_some()) {
                let _ = tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(p.stored));
            }
        }
        tpl
    }

    /// Where each newly assigned partition starts: after what the WAL
    /// holds, or after what the group committed if another node has read
    /// further since.
    fn start_offsets(&self, consumer: &SourceConsumer, assigned: &mut TopicPartitionList) {
        let mut committed = consumer.committed_offsets(assigned.clone(), COORDINATOR_TIMEOUT);
        for _ in 0..2 {
            if committed.is_ok() {
                break;
            }
            committed = consumer.committed_offsets(assigned.clone(), COORDINATOR_TIMEOUT);
        }
        let committed = committed.unwrap_or_else(|e| {
            tracing::warn!(source = %self.config.name, error = %e,
                "cannot read the group's committed offsets: starting at the WAL's");
            TopicPartitionList::new()
        });
        let stored = self.app.store.source_offsets();
        let mut starts = Vec::new();
        for elem in assigned.elements() {
            let partition = elem.partition();
            let group = committed.find_partition(elem.topic(), partition).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let wal = stored.next(&self.stream, partition);
            let start = wal.max(group);
            if let Some(start) = start {
                starts.push((elem.topic().to_string(), partition, start));
            }
            let mut partitions = self.stats.partitions.lock();
            match start {
                Some(start) => partitions.entry(partition).or_default().stored = start,
                // Known from its first message.
                None => _ = partitions.remove(&partition),
            }
            tracing::info!(source = %self.config.name, partition, wal, group, start, "partition assigned");
        }
        for (topic, partition, start) in starts {
            let _ = assigned.set_partition_offset(&topic, partition, Offset::Offset(start));
        }
    }

    /// Before partitions go to another node: what is pending is stored
    /// and its offsets committed, so the next owner starts after it. What
    /// cannot be stored is dropped here, uncommitted, for the next owner.
    fn hand_over(&self, consumer: &SourceConsumer, revoked: &TopicPartitionList) {
        if let Err(NotStored::Busy(why) | NotStored::Stopping(why)) = self.store(consumer) {
            tracing::warn!(source = %self.config.name, why, "partitions handed over with messages not stored here");
            // Only the revoked partitions' messages: the others stay.
            let mut pending = self.pending.lock();
            for elem in revoked.elements() {
                pending.forget(&self.stream, elem.partition());
            }
        }
        // What this node stored (`stored` moves only once a record is
        // durable), for the next owner.
        let tpl = self.stored_offsets(Some(revoked));
        let mut partitions = self.stats.partitions.lock();
        for elem in revoked.elements() {
            partitions.remove(&elem.partition());
        }
        drop(partitions);
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(source = %self.config.name, error = %e, "cannot commit offsets at a hand-over");
        }
        tracing::info!(source = %self.config.name, partitions = revoked.count(), "partitions handed over");
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.config.topic) else { return };
        let mut partitions = self.shared.stats.partitions.lock();
        for (id, p) in &topic.partitions {
            if let Some(stats) = partitions.get_mut(id)
                && p.hi_offset >= 0
            {
                stats.high = Some(p.hi_offset);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = %self.shared.config.name, error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &SourceConsumer, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.start_offsets(consumer, tpl);
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                // A pause outlives an assignment in librdkafka: new partitions
                // follow the source's state, not whatever they had before.
                let paused = self.shared.stats.paused.load(Ordering::Relaxed);
                assigned.and_then(|()| if paused { consumer.pause(tpl) } else { consumer.resume(tpl) })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.hand_over(consumer, tpl);
                if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() }
            }
            other => {
                tracing::warn!(source = %self.shared.config.name, error = ?other, "rebalance failed");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(source = %self.shared.config.name, error = %e, "cannot change the assignment");
        }
    }

    /// An asynchronous commit that failed is sent again at the next store
    /// (the group's offsets would otherwise stay behind the WAL until then,
    /// and a node taking a partition over would read more of it again).
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.shared.last_commit.lock().1 = true;
            tracing::debug!(source = %self.shared.config.name, error = %e, "offset commit to the group failed; retried");
        }
    }
}
