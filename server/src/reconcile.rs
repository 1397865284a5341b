//! `GET /v1/reconcile?from=&to=`: raw events of the range re-aggregated
//! and compared with the rollups and billing snapshots that hold them
//! (`Store::reconcile`); `adstore reconcile` prints it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use crate::error::ServerError;
use crate::extract::QueryParams;
use crate::http::AppState;
use adstore_storage::ReconcileReport;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileParams {
    from: Option<String>,
    to: Option<String>,
}

/// A time bound: epoch ms, a date (`2026-11-22`, its midnight UTC) or
/// RFC 3339.
pub fn parse_bound(field: &str, text: &str) -> Result<i64, ServerError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
    adstore_ingest::parse_rfc3339_ms(&full).map_err(|e| {
        ServerError::BadRequest(format!("{field}: {text:?} is not a date, an RFC 3339 time or epoch ms: {e}"))
    })
}

pub(crate) async fn reconcile(
    State(app): State<Arc<AppState>>,
    QueryParams(p): QueryParams<ReconcileParams>,
) -> Result<Json<ReconcileReport>, ServerError> {
    let required = |field: &str, v: Option<String>| {
        v.ok_or_else(|| ServerError::BadRequest(format!("{field}: required (a date, an RFC 3339 time or epoch ms)")))
    };
    let from = parse_bound("from", &required("from", p.from)?)?;
    let to = parse_bound("to", &required("to", p.to)?)?;
    if from >= to {
        return Err(ServerError::BadRequest("from must be before to".into()));
    }
    let store = app.store.clone();
    let report = tokio::task::spawn_blocking(move || store.reconcile(from, to))
        .await
        .map_err(|e| ServerError::Internal(format!("reconcile: {e}")))??;
    Ok(Json(report))
}
