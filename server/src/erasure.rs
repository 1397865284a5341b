//! `POST /v1/erasure` (admin): a user's identity removed from every stored
//! event, local or in the object store; `GET /v1/erasure`: the erasures
//! done. The procedure is in docs/operations.md, the storage side in
//! `adstore_storage::erasure`.
//!
//! ```text
//!  POST {"user_key": "u-123"} ─► checked (non-empty, at most MAX_STR_BYTES)
//!    ─► Store::erase on the blocking pool (seconds to minutes: it rewrites segments)
//!    ─► 200 {id, requested_ms, finished_ms, by, segments_rewritten, remote_segments, rows, mirror_days, wal_files_deleted}
//! ```
//!
//! An erasure that fails part way (503, the object store down, say) keeps
//! what it committed; the same request again finishes it.

use std::sync::Arc;

use adstore_ingest::MAX_STR_BYTES;
use adstore_storage::erasure::ErasureRecord;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::extract::JsonBody;
use crate::http::AppState;

/// The body of `POST /v1/erasure`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// The `user_key` whose events lose their identity columns.
    pub user_key: String,
}

pub async fn erase(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    JsonBody(req): JsonBody<ErasureRequest>,
) -> Result<Json<ErasureRecord>, ServerError> {
    if req.user_key.is_empty() {
        return Err(ServerError::BadRequest("user_key: must not be empty".into()));
    }
    if req.user_key.len() > MAX_STR_BYTES {
        return Err(ServerError::BadRequest(format!(
            "user_key: {} bytes, longer than any stored value can be ({MAX_STR_BYTES})",
            req.user_key.len()
        )));
    }
    let requested_ms = crate::http::now_ms();
    let store = app.store.clone();
    let by = principal.token_id.clone();
    tracing::info!(by = by.as_deref().unwrap_or("-"), "erasure requested");
    let record = tokio::task::spawn_blocking(move || store.erase(&req.user_key, by, requested_ms))
        .await
        .map_err(|e| ServerError::Internal(format!("erasure: {e}")))??;
    Ok(Json(record))
}

pub async fn list(State(app): State<Arc<AppState>>) -> Result<Json<Vec<ErasureRecord>>, ServerError> {
    Ok(Json(app.store.erasures()?))
}
