//! HTTP routes (axum).
//!
//! ```text
//!  POST /v1/events[/{type}s:batch] ─► parse (blocking pool) ─► Store::append (fsync) ─► 200 {accepted,…}
//!  GET  /v1/segments               ─► catalog listing
//!  GET  /health                    ─► liveness + damaged segments
//!  GET  /metrics                   ─► Prometheus text
//! ```
//!
//! Handlers never block the async runtime: parsing and the fsync-bound
//! append run on tokio's blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use adstore_ingest::{ParseOptions, ParseOutcome, parse_json_array, parse_ndjson};
use adstore_storage::{EventType, Store};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ServerError;

/// State shared by all handlers.
pub struct AppState {
    pub store: Store,
    pub config: Config,
    /// Newest event time accepted so far; the lateness bound hangs off it.
    pub newest_ts_ms: AtomicI64,
    pub counters: HttpCounters,
}

#[derive(Default)]
pub struct HttpCounters {
    pub ingest_requests: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/segments", get(segments))
        .route("/v1/events", post(ingest_mixed))
        .route("/v1/sql", get(crate::sql::sql_get).post(crate::sql::sql_post))
        .route("/v1/events/impressions:batch", post(ingest_impressions))
        .route("/v1/events/clicks:batch", post(ingest_clicks))
        .route("/v1/events/conversions:batch", post(ingest_conversions))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let damaged = app.store.damaged();
    let status = if damaged.is_empty() { "ok" } else { "degraded" };
    Json(serde_json::json!({
        "status": status,
        "damaged_segments": damaged.iter().map(|d| serde_json::json!({
            "id": d.meta.id.to_string(), "error": d.error,
        })).collect::<Vec<_>>(),
    }))
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let s = app.store.stats();
    let c = &app.counters;
    let text = format!(
        "# TYPE adstore_ingest_requests_total counter\nadstore_ingest_requests_total {}\n\
         # TYPE adstore_events_accepted_total counter\nadstore_events_accepted_total {}\n\
         # TYPE adstore_events_rejected_total counter\nadstore_events_rejected_total {}\n\
         # TYPE adstore_head_rows gauge\nadstore_head_rows {}\n\
         # TYPE adstore_segments gauge\nadstore_segments {}\n\
         # TYPE adstore_sealed_rows_total counter\nadstore_sealed_rows_total {}\n\
         # TYPE adstore_seal_errors_total counter\nadstore_seal_errors_total {}\n\
         # TYPE adstore_wal_fsyncs_total counter\nadstore_wal_fsyncs_total {}\n\
         # TYPE adstore_wal_appends_total counter\nadstore_wal_appends_total {}\n",
        c.ingest_requests.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.rejected.load(Ordering::Relaxed),
        s.head_rows,
        s.segments,
        s.sealed_rows,
        s.seal_errors,
        s.wal_fsyncs,
        s.wal_appends,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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
}

async fn segments(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let catalog = app.store.catalog();
    let rows: Vec<SegmentRow> = catalog
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
        })
        .collect();
    let stats = app.store.stats();
    Json(serde_json::json!({
        "catalog_version": catalog.version,
        "segments": rows,
        "head": { "rows": stats.head_rows, "partitions": stats.head_partitions },
    }))
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

async fn ingest_mixed(
    State(app): State<Arc<AppState>>,
    Query(p): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServerError> {
    ingest(app, p, headers, body, None).await
}

async fn ingest_impressions(
    State(app): State<Arc<AppState>>,
    Query(p): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServerError> {
    ingest(app, p, headers, body, Some(EventType::Impression)).await
}

async fn ingest_clicks(
    State(app): State<Arc<AppState>>,
    Query(p): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServerError> {
    ingest(app, p, headers, body, Some(EventType::Click)).await
}

async fn ingest_conversions(
    State(app): State<Arc<AppState>>,
    Query(p): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServerError> {
    ingest(app, p, headers, body, Some(EventType::Conversion)).await
}

#[derive(Clone, Copy)]
enum BodyFormat {
    Ndjson,
    Json,
}

fn body_format(headers: &HeaderMap, body: &[u8]) -> Result<BodyFormat, ServerError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/x-ndjson");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "text/plain" | "" => {
            Ok(BodyFormat::Ndjson)
        }
        "application/json" => {
            // A JSON body is either an array of events or NDJSON sent with a
            // generic type; the first non-blank byte tells which.
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            Ok(if first == Some(&b'[') { BodyFormat::Json } else { BodyFormat::Ndjson })
        }
        other => Err(ServerError::UnsupportedMediaType(other.to_string())),
    }
}

async fn ingest(
    app: Arc<AppState>,
    params: IngestParams,
    headers: HeaderMap,
    body: Bytes,
    expected_type: Option<EventType>,
) -> Result<Response, ServerError> {
    app.counters.ingest_requests.fetch_add(1, Ordering::Relaxed);
    let backfill = match params.mode.as_deref() {
        None | Some("live") => false,
        Some("backfill") => true,
        Some(other) => return Err(ServerError::BadRequest(format!("unknown mode {other:?}; use live or backfill"))),
    };
    let format = body_format(&headers, &body)?;
    let now = now_ms();
    let newest = app.newest_ts_ms.load(Ordering::Relaxed);
    let opts = ParseOptions {
        expected_type,
        now_ms: now,
        max_future_skew_ms: app.config.ingest.max_future_skew_ms,
        min_ts_ms: if backfill || newest == i64::MIN {
            None
        } else {
            Some(newest.saturating_sub(app.config.ingest.allowed_lateness_ms))
        },
        max_errors: app.config.ingest.max_errors,
        ..ParseOptions::default()
    };
    let worker = app.clone();
    let outcome: ParseOutcome = tokio::task::spawn_blocking(move || {
        let outcome = match format {
            BodyFormat::Ndjson => parse_ndjson(&body, &opts),
            BodyFormat::Json => parse_json_array(&body, &opts),
        };
        if !outcome.batch.is_empty() {
            worker.store.append(&outcome.batch)?;
        }
        Ok::<_, ServerError>(outcome)
    })
    .await
    .map_err(|e| ServerError::Internal(format!("ingest task failed: {e}")))??;

    let accepted = outcome.batch.num_rows();
    if let Some(max) = outcome.batch.ts().iter().max() {
        app.newest_ts_ms.fetch_max(*max, Ordering::Relaxed);
    }
    app.counters.accepted.fetch_add(accepted as u64, Ordering::Relaxed);
    app.counters.rejected.fetch_add(outcome.rejected as u64, Ordering::Relaxed);
    let status = if accepted == 0 && outcome.rejected > 0 {
        if outcome.rejected_late + outcome.rejected_future == outcome.rejected {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        }
    } else {
        StatusCode::OK
    };
    let body = IngestResponse { accepted, duplicates: 0, rejected: outcome.rejected, errors: outcome.errors };
    Ok((status, Json(body)).into_response())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
