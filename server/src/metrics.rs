//! `/metrics` in the Prometheus text format: request latency per route and
//! errors per route and code (the `prometheus` crate's histograms and
//! counters, fed by the [`track`] middleware), the PostgreSQL protocol's
//! connections, statements and errors (fed by `pgwire/`), and the store's state read
//! at each scrape (one table, [`SERIES`], gives every series its type and
//! help).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::http::AppState;

/// The error code of a response, left by `ServerError::into_response` for
/// [`track`] to count.
#[derive(Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Latency and errors of HTTP requests.
pub struct HttpMetrics {
    registry: Registry,
    durations: HistogramVec,
    errors: IntCounterVec,
    /// PostgreSQL connections open now (bounded by `server.pg_max_connections`).
    pub(crate) pg_connections: IntGauge,
    /// PostgreSQL statements run, by kind (query, catalog, session, empty).
    pub(crate) pg_statements: IntCounterVec,
    /// PostgreSQL errors sent, by SQLSTATE.
    pub(crate) pg_errors: IntCounterVec,
    /// SQL statements running now (at most `query.max_running`; `admission.rs`).
    pub(crate) query_running: IntGauge,
    /// SQL statements waiting for a turn to run.
    pub(crate) query_queued: IntGauge,
    /// How long admitted statements waited for their turn.
    pub(crate) query_queue_wait: Histogram,
    /// Statements refused by admission control, by reason.
    pub(crate) query_rejected: IntCounterVec,
    /// Calls refused by access control, by reason (missing, invalid, forbidden).
    pub(crate) auth_failures: IntCounterVec,
}

impl HttpMetrics {
    pub fn new() -> prometheus::Result<HttpMetrics> {
        let registry = Registry::new();
        // 0.5 ms to about 33 s: an ingest fsync to a slow dashboard query.
        let buckets = prometheus::exponential_buckets(0.000_5, 2.0, 17)?;
        let durations = HistogramVec::new(
            HistogramOpts::new("adstore_http_request_duration_seconds", "Time to answer an HTTP request, by route.")
                .buckets(buckets),
            &["route", "method"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("adstore_http_errors_total", "HTTP requests answered with an error, by route and error code."),
            &["route", "code"],
        )?;
        let pg_connections = IntGauge::new(
            "adstore_pg_connections",
            "PostgreSQL protocol connections open (at most server.pg_max_connections).",
        )?;
        let pg_statements = IntCounterVec::new(
            Opts::new(
                "adstore_pg_statements_total",
                "Statements received over the PostgreSQL protocol, by kind (query, catalog, session, empty).",
            ),
            &["kind"],
        )?;
        let pg_errors = IntCounterVec::new(
            Opts::new("adstore_pg_errors_total", "Errors sent over the PostgreSQL protocol, by SQLSTATE."),
            &["sqlstate"],
        )?;
        let query_running = IntGauge::new(
            "adstore_query_running",
            "SQL statements running now, over HTTP and PostgreSQL (at most query.max_running).",
        )?;
        let query_queued = IntGauge::new(
            "adstore_query_queued",
            "SQL statements waiting for a turn to run (at most query.max_queued).",
        )?;
        let query_queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "adstore_query_queue_wait_seconds",
                "Time admitted SQL statements waited for a turn to run (not counted in query.timeout_ms).",
            )
            .buckets(prometheus::exponential_buckets(0.000_5, 2.0, 17)?),
        )?;
        let query_rejected = IntCounterVec::new(
            Opts::new(
                "adstore_query_rejected_total",
                "SQL statements refused as overloaded, by reason (queue_full, queue_timeout).",
            ),
            &["reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "adstore_auth_failures_total",
                "Calls refused by access control, by reason: missing (no token), invalid (unknown, malformed or revoked token), forbidden (the role does not allow the call).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(pg_connections.clone()))?;
        registry.register(Box::new(pg_statements.clone()))?;
        registry.register(Box::new(pg_errors.clone()))?;
        registry.register(Box::new(query_running.clone()))?;
        registry.register(Box::new(query_queued.clone()))?;
        registry.register(Box::new(query_queue_wait.clone()))?;
        registry.register(Box::new(query_rejected.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(HttpMetrics {
            registry,
            durations,
            errors,
            pg_connections,
            pg_statements,
            pg_errors,
            query_running,
            query_queued,
            query_queue_wait,
            query_rejected,
            auth_failures,
        })
    }
}

/// Middleware: times every request and counts its error, by matched route.
pub async fn track(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.durations.with_label_values(&[route.as_str(), method.as_str()]).observe(started.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        m.errors.with_label_values(&[route.as_str(), code]).inc();
    }
    response
}

/// What a series is, for its `# TYPE` line.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A series read from the store's state at each scrape.
struct Series {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&Scrape) -> f64,
}

/// A series per background maintenance task, labelled `task`.
struct TaskSeries {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&adstore_storage::TaskStats) -> f64,
}

const TASK_SERIES: &[TaskSeries] = &[
    TaskSeries {
        name: "adstore_maintenance_runs_total",
        kind: Kind::Counter,
        help: "Runs of each background maintenance task (seal, compact, finalize).",
        value: |t| t.runs as f64,
    },
    TaskSeries {
        name: "adstore_maintenance_failures_total",
        kind: Kind::Counter,
        help: "Failed runs of each background maintenance task; the next pass retries.",
        value: |t| t.failures as f64,
    },
    TaskSeries {
        name: "adstore_maintenance_seconds_total",
        kind: Kind::Counter,
        help: "Time spent in each background maintenance task.",
        value: |t| t.busy_seconds,
    },
];

/// Everything a scrape reads, once.
struct Scrape {
    store: adstore_storage::StoreStats,
    /// Zero (but the cache's capacity) until the object store is first used.
    object: adstore_storage::tier::ObjectStoreStats,
    eo: adstore_ingest::ExactlyOnceStats,
    ingest_requests: u64,
    accepted: u64,
    rejected: u64,
    duplicates: u64,
    rss_bytes: u64,
    erased_events: u64,
}

const SERIES: &[Series] = &[
    Series {
        name: "adstore_ingest_requests_total",
        kind: Kind::Counter,
        help: "Ingest requests received.",
        value: |s| s.ingest_requests as f64,
    },
    Series {
        name: "adstore_events_accepted_total",
        kind: Kind::Counter,
        help: "Events accepted (stored).",
        value: |s| s.accepted as f64,
    },
    Series {
        name: "adstore_events_rejected_total",
        kind: Kind::Counter,
        help: "Events rejected (malformed, late, future).",
        value: |s| s.rejected as f64,
    },
    Series {
        name: "adstore_events_duplicate_total",
        kind: Kind::Counter,
        help: "Events acknowledged as duplicates at ingest, not stored.",
        value: |s| s.duplicates as f64,
    },
    Series {
        name: "adstore_head_rows",
        kind: Kind::Gauge,
        help: "Events acknowledged and not yet sealed.",
        value: |s| s.store.head_rows as f64,
    },
    Series {
        name: "adstore_head_bytes",
        kind: Kind::Gauge,
        help: "Arrow bytes of the unsealed events.",
        value: |s| s.store.head_bytes as f64,
    },
    Series {
        name: "adstore_head_codes_bytes",
        kind: Kind::Gauge,
        help: "Dictionary codes of the unsealed events' dimension columns, built by the scans that read them.",
        value: |s| s.store.head_codes_bytes as f64,
    },
    Series {
        name: "adstore_segment_metadata_bytes",
        kind: Kind::Gauge,
        help: "Block metadata and zone maps the open segments keep in memory (their dictionaries are in the block cache).",
        value: |s| s.store.segment_metadata_bytes as f64,
    },
    Series {
        name: "adstore_head_limit_bytes",
        kind: Kind::Gauge,
        help: "storage.max_head_bytes (0: no limit).",
        value: |s| s.store.head_limit_bytes as f64,
    },
    Series {
        name: "adstore_ingest_head_full_total",
        kind: Kind::Counter,
        help: "Appends refused because the head was full.",
        value: |s| s.store.head_full_refusals as f64,
    },
    Series {
        name: "adstore_disk_free_bytes",
        kind: Kind::Gauge,
        help: "Free bytes on the data directory's file system.",
        value: |s| s.store.disk_free_bytes as f64,
    },
    Series {
        name: "adstore_disk_min_free_bytes",
        kind: Kind::Gauge,
        help: "storage.min_free_bytes: appends are refused below it.",
        value: |s| s.store.disk_min_free_bytes as f64,
    },
    Series {
        name: "adstore_ingest_disk_low_total",
        kind: Kind::Counter,
        help: "Appends refused for want of disk space.",
        value: |s| s.store.disk_low_refusals as f64,
    },
    Series {
        name: "adstore_wal_poisoned",
        kind: Kind::Gauge,
        help: "1 when the WAL failed and accepts no appends until a restart.",
        value: |s| f64::from(u8::from(s.store.wal_poisoned)),
    },
    Series {
        name: "adstore_io_errors_total",
        kind: Kind::Counter,
        help: "I/O errors the storage layer met (reads, writes, fsyncs; a full disk included).",
        value: |s| s.store.io_errors as f64,
    },
    Series {
        name: "adstore_segments",
        kind: Kind::Gauge,
        help: "Raw events segments served.",
        value: |s| s.store.segments as f64,
    },
    Series {
        name: "adstore_rollup_segments",
        kind: Kind::Gauge,
        help: "Rollup segments served (seal-time rows of each configured rollup, and hour and day rows merged from final days).",
        value: |s| s.store.rollup_segments as f64,
    },
    Series {
        name: "adstore_rollup_bytes",
        kind: Kind::Gauge,
        help: "Bytes of the rollup segments served.",
        value: |s| s.store.rollup_bytes as f64,
    },
    Series {
        name: "adstore_rollup_backfill_pending",
        kind: Kind::Gauge,
        help: "Raw segments still to get a configured rollup's rows, plus final days still to merge (once per rollup); the rollup task builds them.",
        value: |s| s.store.rollup_backfill_pending as f64,
    },
    Series {
        name: "adstore_billing_snapshots",
        kind: Kind::Gauge,
        help: "Billing snapshot versions kept (every version of every final day).",
        value: |s| s.store.billing_snapshots as f64,
    },
    Series {
        name: "adstore_billing_snapshots_pending",
        kind: Kind::Gauge,
        help: "Final days whose billing snapshot is missing or was computed from segments since replaced; the billing task writes or checks them.",
        value: |s| s.store.billing_snapshots_pending as f64,
    },
    Series {
        name: "adstore_sealed_rows_total",
        kind: Kind::Counter,
        help: "Rows written into segments by seals.",
        value: |s| s.store.sealed_rows as f64,
    },
    Series {
        name: "adstore_seal_errors_total",
        kind: Kind::Counter,
        help: "Sealer passes that failed.",
        value: |s| s.store.seal_errors as f64,
    },
    Series {
        name: "adstore_wal_fsyncs_total",
        kind: Kind::Counter,
        help: "WAL fsyncs (one covers every request waiting on it).",
        value: |s| s.store.wal_fsyncs as f64,
    },
    Series {
        name: "adstore_wal_appends_total",
        kind: Kind::Counter,
        help: "WAL records written.",
        value: |s| s.store.wal_appends as f64,
    },
    Series {
        name: "adstore_seal_duplicates_dropped_total",
        kind: Kind::Counter,
        help: "Duplicates dropped by the exact check at seal.",
        value: |s| s.eo.duplicates_at_seal as f64,
    },
    Series {
        name: "adstore_dedupe_keys",
        kind: Kind::Gauge,
        help: "Idempotency keys in the dedupe table in memory: pending ones, and sealed ones not yet written to disk.",
        value: |s| s.eo.dedupe_keys as f64,
    },
    Series {
        name: "adstore_dedupe_table_bytes",
        kind: Kind::Gauge,
        help: "Bytes of the dedupe table.",
        value: |s| s.eo.dedupe_table_bytes as f64,
    },
    Series {
        name: "adstore_dedupe_spilled_keys",
        kind: Kind::Gauge,
        help: "Sealed idempotency keys in runs on disk (a key spilled twice counts twice until a merge).",
        value: |s| s.eo.dedupe_spilled.keys as f64,
    },
    Series {
        name: "adstore_dedupe_spilled_keys_total",
        kind: Kind::Counter,
        help: "Sealed idempotency keys written to runs on disk.",
        value: |s| s.eo.dedupe_spilled.written as f64,
    },
    Series {
        name: "adstore_dedupe_runs",
        kind: Kind::Gauge,
        help: "Runs of sealed keys on disk.",
        value: |s| s.eo.dedupe_spilled.runs as f64,
    },
    Series {
        name: "adstore_dedupe_memory_bytes",
        kind: Kind::Gauge,
        help: "Memory of the dedupe index: the table, and the filters and fences of the runs on disk.",
        value: |s| (s.eo.dedupe_table_bytes + s.eo.dedupe_spilled.memory_bytes) as f64,
    },
    Series {
        name: "adstore_dedupe_disk_bytes",
        kind: Kind::Gauge,
        help: "Bytes of the runs of sealed keys on disk.",
        value: |s| s.eo.dedupe_spilled.disk_bytes as f64,
    },
    Series {
        name: "adstore_attribution_index_entries",
        kind: Kind::Gauge,
        help: "Impressions and clicks held for attribution, in memory and on disk (one in two parts until they merge counts twice).",
        value: |s| s.eo.index_entries as f64,
    },
    Series {
        name: "adstore_attribution_parts",
        kind: Kind::Gauge,
        help: "Parts of the attribution index on disk (or being written).",
        value: |s| s.eo.attribution_parts.parts as f64,
    },
    Series {
        name: "adstore_attribution_spilled_entries_total",
        kind: Kind::Counter,
        help: "Impressions and clicks moved from memory to parts on disk.",
        value: |s| s.eo.attribution_parts.written as f64,
    },
    Series {
        name: "adstore_attribution_memory_bytes",
        kind: Kind::Gauge,
        help: "Memory of the attribution index: its maps and runs, and the filters and fences of its parts on disk.",
        value: |s| (s.eo.attribution_memory_bytes + s.eo.attribution_parts.memory_bytes) as f64,
    },
    Series {
        name: "adstore_attribution_disk_bytes",
        kind: Kind::Gauge,
        help: "Bytes of the attribution index's parts on disk.",
        value: |s| s.eo.attribution_parts.disk_bytes as f64,
    },
    Series {
        name: "adstore_duplicate_log_bytes",
        kind: Kind::Gauge,
        help: "Bytes of the duplicate log on disk (when each duplicate arrived, for GET /v1/trace).",
        value: |s| s.eo.duplicate_log.bytes as f64,
    },
    Series {
        name: "adstore_duplicate_log_budget_bytes",
        kind: Kind::Gauge,
        help: "The most the duplicate log holds (ingest.duplicate_log_bytes); past it the oldest records go.",
        value: |s| s.eo.duplicate_log.budget_bytes as f64,
    },
    Series {
        name: "adstore_duplicate_log_records",
        kind: Kind::Gauge,
        help: "Duplicate arrivals the duplicate log holds.",
        value: |s| s.eo.duplicate_log.records as f64,
    },
    Series {
        name: "adstore_block_cache_bytes",
        kind: Kind::Gauge,
        help: "Bytes of segment blocks cached for queries.",
        value: |s| s.store.block_cache_bytes as f64,
    },
    Series {
        name: "adstore_object_store_read_requests_total",
        kind: Kind::Counter,
        help: "Range reads of cold segments sent to the object store.",
        value: |s| s.object.read_requests as f64,
    },
    Series {
        name: "adstore_object_store_read_bytes_total",
        kind: Kind::Counter,
        help: "Bytes fetched from the object store by range reads.",
        value: |s| s.object.read_bytes as f64,
    },
    Series {
        name: "adstore_object_store_uploaded_bytes_total",
        kind: Kind::Counter,
        help: "Bytes uploaded to the object store: segments moved by the tiering task, and the Parquet mirror.",
        value: |s| s.object.uploaded_bytes as f64,
    },
    Series {
        name: "adstore_erased_events",
        kind: Kind::Gauge,
        help: "Events whose identity an erasure removed, kept in memory (16 bytes each) so re-seals keep their decisions.",
        value: |s| s.erased_events as f64,
    },
    Series {
        name: "adstore_object_cache_bytes",
        kind: Kind::Gauge,
        help: "Bytes of cold segment chunks kept on local disk ([tiering] cache_bytes).",
        value: |s| s.object.cache.bytes as f64,
    },
    Series {
        name: "adstore_object_cache_capacity_bytes",
        kind: Kind::Gauge,
        help: "Bytes the local cache of cold segment chunks may hold (0: no cache).",
        value: |s| s.object.cache.capacity_bytes as f64,
    },
    Series {
        name: "adstore_object_cache_hits_total",
        kind: Kind::Counter,
        help: "Chunks of cold segments read from the local cache.",
        value: |s| s.object.cache.hits as f64,
    },
    Series {
        name: "adstore_object_cache_misses_total",
        kind: Kind::Counter,
        help: "Chunks of cold segments not in the local cache, fetched from the object store.",
        value: |s| s.object.cache.misses as f64,
    },
    Series {
        name: "adstore_process_resident_memory_bytes",
        kind: Kind::Gauge,
        help: "Resident memory of the server process.",
        value: |s| s.rss_bytes as f64,
    },
];

/// Series by level and tier: (name, help, value from segments and bytes).
type LevelSeries = (&'static str, &'static str, fn(u64, u64) -> u64);

const LEVEL_SERIES: [LevelSeries; 2] = [
    (
        "adstore_level_segments",
        "Segments in the catalog by level (raw, minute, hour, day) and tier (local; remote: in the object store; expired: raw events retention deleted, kept as an entry while rollups derive from them).",
        |segments, _| segments,
    ),
    ("adstore_level_bytes", "Bytes of the segments by level and tier (0 for expired).", |_, bytes| bytes),
];

/// The `/metrics` handler.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let c = &app.counters;
    let scrape = Scrape {
        store: app.store.stats(),
        object: app.store.object_store_stats().unwrap_or_else(|| {
            // Not used yet: nothing fetched, the cache as configured.
            let cache = adstore_storage::tier::ChunkCacheStats {
                capacity_bytes: app.store.config().object_cache_bytes,
                ..Default::default()
            };
            adstore_storage::tier::ObjectStoreStats { cache, ..Default::default() }
        }),
        eo: app.exactly_once.stats(),
        erased_events: app.store.erased_events() as u64,
        ingest_requests: c.ingest_requests.load(Ordering::Relaxed),
        accepted: c.accepted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        rss_bytes: rss_bytes(),
    };
    let mut text = String::new();
    for s in SERIES {
        header(&mut text, s.name, s.kind, s.help);
        let _ = writeln!(text, "{} {}", s.name, (s.value)(&scrape));
    }
    for s in TASK_SERIES {
        header(&mut text, s.name, s.kind, s.help);
        for t in &scrape.store.tasks {
            let _ = writeln!(text, "{}{{task=\"{}\"}} {}", s.name, t.task, (s.value)(t));
        }
    }
    header(&mut text, "adstore_memory_limit_bytes", Kind::Gauge, "storage.memory_limit: what the parts below share.");
    let _ = writeln!(text, "adstore_memory_limit_bytes {}", app.memory.limit());
    header(
        &mut text,
        "adstore_memory_used_bytes",
        Kind::Gauge,
        "Memory of each part of the budget: head, block_cache, dedupe (table, filters and fences of runs), attribution (index, filters and fences of parts).",
    );
    for (part, bytes) in crate::memory::MemoryUse::measure(&app.store, &app.exactly_once).parts() {
        let _ = writeln!(text, "adstore_memory_used_bytes{{part=\"{part}\"}} {bytes}");
    }
    header(
        &mut text,
        "adstore_ingest_memory_full_total",
        Kind::Counter,
        "Ingest requests refused (503 memory_full) while the budget's parts held storage.memory_limit.",
    );
    let _ = writeln!(text, "adstore_ingest_memory_full_total {}", app.memory.refusals());
    let tiering = app.store.tiering_status();
    header(&mut text, "adstore_tiering_due_segments", Kind::Gauge, "Segments past their hot age still on local disk.");
    let _ = writeln!(text, "adstore_tiering_due_segments {}", tiering.due);
    header(
        &mut text,
        "adstore_tiering_lag_seconds",
        Kind::Gauge,
        "How long the oldest segment due for the object store has waited.",
    );
    let _ = writeln!(text, "adstore_tiering_lag_seconds {}", tiering.lag_ms as f64 / 1000.0);
    header(
        &mut text,
        "adstore_iceberg_commits_due",
        Kind::Gauge,
        "Days of the Parquet mirror not yet committed to the Iceberg tables as they are now (a commit each).",
    );
    let _ = writeln!(text, "adstore_iceberg_commits_due {}", app.store.iceberg_days_due());
    let by_level = crate::retention::by_level_and_tier(&app.store.catalog());
    for (name, help, pick) in LEVEL_SERIES {
        header(&mut text, name, Kind::Gauge, help);
        for &(level, tier, segments, bytes) in &by_level {
            let v = pick(segments, bytes);
            let _ = writeln!(text, "{name}{{level=\"{}\",tier=\"{}\"}} {v}", level.as_str(), tier.as_str());
        }
    }
    kafka_series(&mut text, &app.kafka.stats());
    let mut http = Vec::new();
    if TextEncoder::new().encode(&app.metrics.registry.gather(), &mut http).is_ok() {
        text.push_str(&String::from_utf8_lossy(&http));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The Kafka sources' series, labelled `source` (and `partition`).
fn kafka_series(text: &mut String, sources: &[Arc<crate::kafka::SourceStats>]) {
    use crate::kafka::{PartitionStats, SourceStats};
    type OfSource<'a> = &'a dyn Fn(&SourceStats) -> u64;
    type OfPartition = fn(&PartitionStats) -> Option<i64>;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let per_source: [(&str, Kind, &str, OfSource); 9] = [
        ("adstore_kafka_messages_total", Kind::Counter, "Messages polled from the source's topic.", &|s| {
            count(&s.messages)
        }),
        ("adstore_kafka_events_accepted_total", Kind::Counter, "Events of the source stored.", &|s| count(&s.accepted)),
        ("adstore_kafka_events_duplicate_total", Kind::Counter, "Events of the source that were duplicates.", &|s| {
            count(&s.duplicates)
        }),
        (
            "adstore_kafka_dead_letters_total",
            Kind::Counter,
            "Lines of the source's messages rejected to its dead-letter file.",
            &|s| count(&s.dead_letters),
        ),
        (
            "adstore_kafka_records_total",
            Kind::Counter,
            "WAL records the source wrote (events with their offsets).",
            &|s| count(&s.records),
        ),
        ("adstore_kafka_errors_total", Kind::Counter, "Client and store errors the source met (it retries).", &|s| {
            count(&s.errors)
        }),
        (
            "adstore_kafka_skipped_total",
            Kind::Counter,
            "Messages below the stored offset that came anyway, skipped (stored already).",
            &|s| count(&s.skipped),
        ),
        (
            "adstore_kafka_pauses_total",
            Kind::Counter,
            "Times the source paused its partitions because the store had no room.",
            &|s| count(&s.pauses),
        ),
        ("adstore_kafka_paused", Kind::Gauge, "1 while the source is paused because the store has no room.", &|s| {
            u64::from(s.paused.load(Ordering::Relaxed))
        }),
    ];
    for (name, kind, help, value) in per_source {
        header(text, name, kind, help);
        for s in sources {
            let _ = writeln!(text, "{name}{{source=\"{}\"}} {}", s.name, value(s));
        }
    }
    let per_partition: [(&str, &str, OfPartition); 2] = [
        (
            "adstore_kafka_stored_offset",
            "Per assigned partition, the next offset not yet stored (the WAL holds every message before it).",
            |p| Some(p.stored),
        ),
        (
            "adstore_kafka_lag_messages",
            "Per assigned partition, messages between the broker's high watermark (as last reported) and the stored offset.",
            PartitionStats::lag,
        ),
    ];
    for (name, help, value) in per_partition {
        header(text, name, Kind::Gauge, help);
        for s in sources {
            for (p, stats) in s.partitions.lock().iter() {
                if let Some(v) = value(stats) {
                    let _ = writeln!(text, "{name}{{source=\"{}\",partition=\"{p}\"}} {v}", s.name);
                }
            }
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a series.
fn header(text: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Resident set size from `/proc/self/statm` (0 where there is none).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}
