//! SQL over HTTP.
//!
//! ```text
//!  POST /v1/sql   body: SQL as text/plain, or JSON {"sql": "...", "format": "json|csv|arrow"}
//!  GET  /v1/sql?q=<sql>&format=json|csv|arrow
//!       ──► admission (a turn to run) ──► blocking pool: store.snapshot() ─► adstore_query::execute ─► JSON | CSV | Arrow IPC stream
//! ```
//!
//! The format comes from the JSON body, else `?format=`, else the `Accept`
//! header (`text/csv`, `application/vnd.apache.arrow.stream`), else JSON.
//! Query errors become `400 {"error":{"code","message","position"}}` for
//! mistakes in the query and 500 for failures of the store (`error.rs`);
//! a `query` token's statements see only its advertisers' rows (`auth.rs`);
//! 503 `overloaded` when no turn to run came in time (`admission.rs`).

use std::sync::Arc;

use adstore_query::QueryResult;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::extract::{BodyBytes, QueryParams};
use crate::http::{AppState, now_ms};

#[derive(Deserialize, Default)]
pub(crate) struct SqlParams {
    q: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    format: Option<String>,
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv,
    Arrow,
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn format_of(explicit: Option<&str>, headers: &HeaderMap) -> Result<Format, ServerError> {
    match explicit.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => return Ok(Format::Json),
        Some("csv") => return Ok(Format::Csv),
        Some("arrow") => return Ok(Format::Arrow),
        Some(other) => {
            return Err(ServerError::BadRequest(format!("unknown format {other:?}; use json, csv or arrow")));
        }
        None => {}
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Ok(if accept.contains("text/csv") {
        Format::Csv
    } else if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else {
        Format::Json
    })
}

pub(crate) async fn sql_get(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    QueryParams(p): QueryParams<SqlParams>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let sql = p.q.ok_or_else(|| ServerError::BadRequest("missing query parameter q".into()))?;
    let format = format_of(p.format.as_deref(), &headers)?;
    run(app, &principal, sql, format).await
}

pub(crate) async fn sql_post(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    QueryParams(p): QueryParams<SqlParams>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ServerError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("text/plain");
    let is_json = ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    let (sql, format) = if is_json {
        let b: SqlBody = serde_json::from_slice(&body).map_err(|e| {
            ServerError::BadRequest(format!(
                "the request body: expected {{\"sql\": \"...\", \"format\": \"json\"}}: {e}"
            ))
        })?;
        (b.sql, b.format.or(p.format))
    } else {
        let sql = String::from_utf8(body.to_vec())
            .map_err(|_| ServerError::BadRequest("the SQL in the request body must be UTF-8".into()))?;
        (sql, p.format)
    };
    let format = format_of(format.as_deref(), &headers)?;
    run(app, &principal, sql, format).await
}

async fn run(app: Arc<AppState>, principal: &Principal, sql: String, format: Format) -> Result<Response, ServerError> {
    let advertisers = principal.row_scope();
    let turn = app.admission.admit(&app.metrics).await?;
    let result: QueryResult = tokio::task::spawn_blocking(move || {
        // Held until the statement ends, even if the client goes away.
        let _turn = turn;
        let snapshot = app.store.snapshot();
        let opts = adstore_query::QueryOptions { advertisers, ..app.config.query.options(now_ms()) };
        adstore_query::execute(&snapshot, &sql, &opts)
    })
    .await
    .map_err(|e| ServerError::Internal(format!("query task failed: {e}")))??;
    Ok(match format {
        Format::Json => ([(header::CONTENT_TYPE, "application/json")], result.to_json()).into_response(),
        Format::Csv => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], result.to_csv()).into_response(),
        Format::Arrow => ([(header::CONTENT_TYPE, ARROW_STREAM)], result.to_arrow_ipc()?).into_response(),
    })
}
