//! The server's error type, and the one place errors become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("unsupported content type {0:?}; use application/x-ndjson, application/json")]
    UnsupportedMediaType(String),
    #[error("request body is not valid: {0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Storage(#[from] adstore_storage::StorageError),
    #[error("{0}")]
    Query(#[from] adstore_query::QueryError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use adstore_storage::StorageError as S;
        match self {
            ServerError::Config(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            ServerError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ServerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServerError::Storage(S::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ServerError::Storage(S::Schema(_)) => (StatusCode::BAD_REQUEST, "bad_batch"),
            ServerError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            ServerError::Query(e) if e.is_user_error() => (StatusCode::BAD_REQUEST, e.code()),
            ServerError::Query(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.code()),
            ServerError::Bind { .. } | ServerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        if let ServerError::Query(q) = &self {
            body["error"]["position"] = q
                .position()
                .map_or(serde_json::Value::Null, |p| serde_json::json!({ "line": p.line, "column": p.column }));
        }
        (status, Json(body)).into_response()
    }
}
