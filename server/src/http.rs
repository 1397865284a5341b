//! HTTP routes (axum).
//!
//! ```text
//!  POST /v1/events[/{type}s:batch] ─► decompress + parse (blocking pool) ─► Store::append (fsync) ─► 200 {accepted,…}
//!        bodies: NDJSON, JSON array, Arrow IPC stream; Content-Encoding gzip | zstd
//!  GET  /v1/segments               ─► catalog listing
//!  GET  /v1/rollups                ─► configured rollups, how far each is built
//!  GET  /v1/trace                  ─► one event explained (trace.rs)
//!  GET  /health                    ─► liveness + damaged segments
//!  GET  /metrics                   ─► Prometheus text
//! ```
//!
//! Handlers never block the async runtime: decompression, parsing and the
//! fsync-bound append run on tokio's blocking pool. The response is sent
//! only after the WAL fsync that covers the request's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use adstore_ingest::{IngestSummary, ParseOptions, ParseOutcome, parse_arrow_ipc, parse_json_array, parse_ndjson};
use adstore_storage::{EventType, Store};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::{Deserialize, Serialize};

use crate::body::{self, Encoding};
use crate::config::Config;
use crate::error::ServerError;
use crate::extract::QueryParams;

/// State shared by all handlers.
pub struct AppState {
    pub store: Store,
    pub config: Config,
    pub data_dir: std::path::PathBuf,
    /// Dedupe, attribution and invalid-traffic state (shared with the seal pipeline).
    pub exactly_once: Arc<adstore_ingest::ExactlyOnce>,
    pub jobs: crate::exactly::Jobs,
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// Newest event time accepted so far; the lateness bound hangs off it.
    pub newest_ts_ms: AtomicI64,
    pub counters: HttpCounters,
    /// Request latency and errors, for `/metrics`.
    pub metrics: crate::metrics::HttpMetrics,
    /// Buffers for ingest bodies, reused between requests.
    pub body_buffers: Arc<adstore_storage::BufferPool>,
    /// The largest dedupe table that an `adstore-expected-events`
    /// announcement may size ahead of the keys.
    pub dedupe_announced_max_bytes: u64,
    /// Ingest requests being parsed now (see [`ParseOptions::parallel`]).
    pub parsing: AtomicUsize,
    /// Which SQL statements run now and which wait.
    pub admission: crate::admission::Admission,
    /// Tokens, and whether calls need one.
    pub auth: Arc<crate::auth::Auth>,
    /// Refuses ingest while memory is at `storage.memory_limit` (`memory.rs`).
    pub memory: crate::memory::MemoryGuard,
    /// The click writer's queue (`click.rs`), set once the state exists.
    pub clicks: std::sync::OnceLock<std::sync::mpsc::Sender<crate::click::Pending>>,
    /// The Kafka sources' threads and counters (`kafka.rs`).
    pub kafka: crate::kafka::Sources,
}

/// One request's parse, counted in [`AppState::parsing`] while it lives.
struct Parsing<'a> {
    count: &'a AtomicUsize,
    /// Whether no other request was being parsed when this one started.
    alone: bool,
}

impl Parsing<'_> {
    fn start(count: &AtomicUsize) -> Parsing<'_> {
        let others = count.fetch_add(1, Ordering::AcqRel);
        Parsing { count, alone: others == 0 }
    }
}

impl Drop for Parsing<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
pub struct HttpCounters {
    pub ingest_requests: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
}

/// Every route, grouped by who may call it (`auth.rs`).
pub fn router(state: Arc<AppState>) -> Router {
    use crate::auth::Need;
    let limit = state.config.server.max_body_bytes;
    let gate = |need: Need| axum::middleware::from_fn_with_state((state.clone(), need), crate::auth::require);
    let public = Router::new()
        .merge(crate::console::routes())
        .route("/health", get(health))
        .route("/c", get(crate::click::click));
    let admin = Router::new()
        .route("/metrics", get(crate::metrics::metrics))
        .route("/v1/segments", get(segments))
        .route("/v1/rollups", get(rollups))
        .route("/v1/reconcile", get(crate::reconcile::reconcile))
        .route("/v1/attribution", get(crate::exactly::get_rules).put(crate::exactly::put_rules))
        .route("/v1/retention", get(crate::retention::get_retention).put(crate::retention::put_retention))
        .route("/v1/reprocess", post(crate::exactly::start_reprocess))
        .route("/v1/reprocess/{id}", get(crate::exactly::get_reprocess))
        .route("/v1/erasure", get(crate::erasure::list).post(crate::erasure::erase))
        .route("/v1/tokens", get(crate::auth::api::list).post(crate::auth::api::create))
        .route("/v1/tokens/{id}", axum::routing::delete(crate::auth::api::revoke))
        .route(
            "/v1/publishers/{id}/signing-key",
            axum::routing::put(crate::auth::api::put_signing_key).delete(crate::auth::api::delete_signing_key),
        )
        .route("/v1/signing-keys", get(crate::auth::api::list_signing_keys))
        .route_layer(gate(Need::Admin));
    let ingest = Router::new()
        .route("/v1/events", ingest_route(None))
        .route("/v1/events/impressions:batch", ingest_route(Some(EventType::Impression)))
        .route("/v1/events/clicks:batch", ingest_route(Some(EventType::Click)))
        .route("/v1/events/conversions:batch", ingest_route(Some(EventType::Conversion)))
        .route("/v1/events/validate-signature", post(crate::auth::api::validate_signature))
        .route_layer(gate(Need::Ingest));
    let query = Router::new()
        .route("/v1/sql", get(crate::sql::sql_get).post(crate::sql::sql_post))
        .route("/v1/billing/daily", get(crate::billing::billing_daily))
        .route("/v1/trace", get(crate::trace::trace))
        .route_layer(gate(Need::Query));
    public
        .merge(admin)
        .merge(ingest)
        .merge(query)
        .fallback(crate::extract::no_route)
        .method_not_allowed_fallback(crate::extract::no_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let damaged = app.store.damaged();
    let problems = app.store.health_problems();
    let status = if problems.is_empty() { "ok" } else { "degraded" };
    Json(serde_json::json!({
        "status": status,
        "problems": problems,
        "damaged_segments": damaged.iter().map(|d| serde_json::json!({
            "id": d.meta.id.to_string(), "error": d.error,
        })).collect::<Vec<_>>(),
    }))
}

#[derive(Serialize)]
struct SegmentRow {
    id: String,
    level: &'static str,
    bucket_start_ms: i64,
    shard: u32,
    min_ts: i64,
    max_ts: i64,
    rows: u64,
    size_bytes: u64,
    tier: adstore_storage::Tier,
    is_final: bool,
    /// For a rollup segment: its rollup and the raw segment it summarizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// For a rollup segment merged from a final day: the raw segments it
    /// stands for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    covers: Vec<String>,
}

async fn segments(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let catalog = app.store.catalog();
    let (rows, rollups): (Vec<SegmentRow>, Vec<SegmentRow>) = catalog
        .segments
        .values()
        .map(|m| SegmentRow {
            id: m.id.to_string(),
            level: m.level.as_str(),
            bucket_start_ms: m.partition.bucket_start_ms,
            shard: m.partition.shard,
            min_ts: m.min_ts,
            max_ts: m.max_ts,
            rows: m.rows,
            size_bytes: m.size_bytes,
            tier: m.tier,
            is_final: m.is_final,
            rollup: m.rollup.as_ref().map(|r| r.name.clone()),
            source: m.source.map(|s| s.to_string()),
            covers: m.covers.iter().map(|s| s.to_string()).collect(),
        })
        .partition(|r| r.level == adstore_storage::Level::Raw.as_str());
    let stats = app.store.stats();
    Json(serde_json::json!({
        "catalog_version": catalog.version,
        "segments": rows,
        "rollups": rollups,
        "head": {
            "rows": stats.head_rows,
            "partitions": stats.head_partitions,
            "bytes": stats.head_bytes,
            "limit_bytes": stats.head_limit_bytes,
        },
        // Closed buckets the sealer has yet to re-seal as final.
        "finalize_pending_buckets": app.store.closed_provisional_buckets().len(),
    }))
}

/// Each configured rollup: how many raw segments and final days it covers.
async fn rollups(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "rollups": app.store.rollup_status() }))
}

#[derive(Deserialize, Default)]
struct IngestParams {
    mode: Option<String>,
}

#[derive(Serialize)]
struct IngestResponse {
    accepted: usize,
    duplicates: usize,
    rejected: usize,
    errors: Vec<adstore_ingest::LineError>,
}

/// `POST` handler for an ingest endpoint; `kind` is the type a typed
/// `:batch` endpoint implies (`None` for the mixed endpoint).
fn ingest_route(kind: Option<EventType>) -> MethodRouter<Arc<AppState>> {
    post(
        move |State(app): State<Arc<AppState>>,
              axum::Extension(principal): axum::Extension<crate::auth::Principal>,
              QueryParams(p): QueryParams<IngestParams>,
              headers: HeaderMap,
              body: Body| async move { ingest(app, principal, p, headers, body, kind).await },
    )
}

#[derive(Clone, Copy)]
enum BodyFormat {
    Ndjson,
    Json,
    Arrow,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ServerError> {
    let ct = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => "application/x-ndjson",
        Some(Ok(ct)) => ct,
        Some(Err(_)) => return Err(ServerError::UnsupportedMediaType("a Content-Type that is not ASCII".into())),
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "text/plain" | "" => {
            Ok(BodyFormat::Ndjson)
        }
        // Array or NDJSON: decided after decompression, see `sniff_json`.
        "application/json" => Ok(BodyFormat::Json),
        "application/vnd.apache.arrow.stream" => Ok(BodyFormat::Arrow),
        other => Err(ServerError::UnsupportedMediaType(other.to_string())),
    }
}

/// The `adstore-expected-events` header: how many events the bulk load
/// this request belongs to still has to send, its own included. The server
/// sizes its dedupe index for them at once instead of growing it step by
/// step (see docs/ingest.md). Optional; `adstore ingest` sends it.
pub const EXPECTED_EVENTS_HEADER: &str = "adstore-expected-events";

/// An announcement counts for at most this many events per event the
/// request carries: a load's first request of 10,000 events may size the
/// index for 20M, while a 1-event request announcing 2^64 grows nothing
/// that a 2,000-event load would not.
pub const ANNOUNCED_PER_EVENT: usize = 2_000;

fn announced_events(headers: &HeaderMap) -> Result<Option<usize>, ServerError> {
    let Some(value) = headers.get(EXPECTED_EVENTS_HEADER) else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    match text.trim().parse::<u64>() {
        Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Err(_) => Err(ServerError::BadHeader {
            header: EXPECTED_EVENTS_HEADER,
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            expected: "a count of events (a decimal integer from 0 to 18446744073709551615)",
        }),
    }
}

/// A JSON body is either an array of events or NDJSON sent with a generic
/// content type; the first non-blank byte tells which.
fn sniff_json(body: &[u8]) -> BodyFormat {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') { BodyFormat::Json } else { BodyFormat::Ndjson }
}

async fn ingest(
    app: Arc<AppState>,
    principal: crate::auth::Principal,
    params: IngestParams,
    headers: HeaderMap,
    body: Body,
    expected_type: Option<EventType>,
) -> Result<Response, ServerError> {
    app.counters.ingest_requests.fetch_add(1, Ordering::Relaxed);
    let limit_bytes = app.config.server.max_body_bytes;
    let body = body::read(body, &headers, limit_bytes, &app.body_buffers).await?;
    // Refused before the parse: the head has no room until seals catch up.
    // (After reading the body: a reply to a request whose body is not read
    // can reach the client as a reset connection instead of a 503.)
    app.store.check_disk_space()?;
    app.store.check_head_room()?;
    app.memory.check(&app.store, &app.exactly_once)?;
    let backfill = match params.mode.as_deref() {
        None | Some("live") => false,
        Some("backfill") => true,
        Some(other) => return Err(ServerError::BadRequest(format!("unknown mode {other:?}; use live or backfill"))),
    };
    // A backfill re-opens closed days and so changes billed numbers (new
    // billing_daily versions): an admin's call, not a publisher's.
    if backfill && principal.role != crate::auth::Role::Admin {
        return Err(ServerError::Forbidden(
            "mode=backfill re-opens closed days and changes billing snapshots: it needs an admin token".into(),
        ));
    }
    let format = body_format(&headers)?;
    let encoding = Encoding::from_headers(&headers)?;
    let announced = announced_events(&headers)?;
    let worker = app.clone();
    let (outcome, summary): (ParseOutcome, IngestSummary) = tokio::task::spawn_blocking(move || {
        // Held from before the lateness check until the admit: the keys
        // that check relies on are not swept meanwhile.
        let hold = worker.exactly_once.dedupe().hold();
        let newest = worker.newest_ts_ms.load(Ordering::Acquire);
        hold.checked_against(newest);
        let opts = ParseOptions {
            expected_type,
            max_errors: worker.config.ingest.max_errors,
            publishers: principal.publisher_scope(),
            ..time_window(&worker.config.ingest, newest, backfill)
        };
        let body = body::decode(body, encoding, limit_bytes, &worker.body_buffers)?;
        let parsing = Parsing::start(&worker.parsing);
        let opts = ParseOptions { parallel: parsing.alone, ..opts };
        let outcome = match format {
            BodyFormat::Ndjson => parse_ndjson(&body, &opts),
            BodyFormat::Json => match sniff_json(&body) {
                BodyFormat::Json => parse_json_array(&body, &opts),
                _ => parse_ndjson(&body, &opts),
            },
            // The columns stay in the body's buffer until the append copies
            // them into the head; the buffer then goes back to the pool.
            BodyFormat::Arrow => parse_arrow_ipc(body.into_arrow(), &opts),
        };
        drop(parsing);
        // Clicks on impression ids their publisher did not sign are kept,
        // marked invalid (`auth/signing.rs`).
        let outcome = ParseOutcome { batches: worker.auth.signing.mark(outcome.batches)?, ..outcome };
        worker
            .rate_limiter
            .admit(principal.token_id.as_deref().unwrap_or(""), &outcome.batches)
            .map_err(|l| ServerError::RateLimited { publisher_id: l.publisher_id, retry_after_s: l.retry_after_s })?;
        let limit = worker.dedupe_announced_max_bytes;
        let announced = announced.map(|n| n.min(outcome.accepted().saturating_mul(ANNOUNCED_PER_EVENT)));
        if let Some(events) = announced.filter(|_| limit > 0 && outcome.accepted() > 0) {
            let resize = worker.exactly_once.dedupe().reserve_announced(events, limit);
            if resize.to_bytes > resize.from_bytes {
                tracing::info!(
                    announced_events = events,
                    from_bytes = resize.from_bytes,
                    to_bytes = resize.to_bytes,
                    "dedupe index sized for an announced load"
                );
            }
        }
        // Dedupe, then the durable append: the answer comes after the fsync.
        let summary = worker.exactly_once.ingest_all(&worker.store, &outcome.batches)?;
        // The new time is published before the hold goes: a request that
        // was checked against the old time still holds its own keys.
        if let Some(max) = outcome.max_ts() {
            worker.newest_ts_ms.fetch_max(max, Ordering::Release);
        }
        drop(hold);
        Ok::<_, ServerError>((outcome, summary))
    })
    .await
    .map_err(|e| ServerError::Internal(format!("ingest task failed: {e}")))??;

    let accepted = summary.accepted;
    app.counters.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
    app.counters.accepted.fetch_add(accepted as u64, Ordering::Relaxed);
    app.counters.rejected.fetch_add(outcome.rejected as u64, Ordering::Relaxed);
    let status = if accepted == 0 && summary.duplicates == 0 && outcome.rejected > 0 {
        if outcome.rejected_late + outcome.rejected_future == outcome.rejected {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        }
    } else {
        StatusCode::OK
    };
    let body =
        IngestResponse { accepted, duplicates: summary.duplicates, rejected: outcome.rejected, errors: outcome.errors };
    Ok((status, Json(body)).into_response())
}

/// Parse options with the ingest time window: no later than
/// `max_future_skew_ms` from now, no earlier than `allowed_lateness_ms`
/// before `newest` (the newest event time accepted), unless `backfill`.
pub fn time_window(ingest: &crate::config::IngestConfig, newest: i64, backfill: bool) -> ParseOptions {
    ParseOptions {
        now_ms: now_ms(),
        max_future_skew_ms: ingest.max_future_skew_ms,
        min_ts_ms: (!backfill && newest != i64::MIN).then(|| newest.saturating_sub(ingest.allowed_lateness_ms)),
        ..ParseOptions::default()
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
