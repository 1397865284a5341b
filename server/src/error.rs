//! The server's error type, and the one place errors become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use adstore_storage::StorageError as S;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "unsupported content type {0:?}; use application/x-ndjson, application/json or application/vnd.apache.arrow.stream"
    )]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}; use gzip, zstd or identity")]
    UnsupportedEncoding(String),
    #[error("request body is larger than the limit of {limit_bytes} bytes (server.max_body_bytes{after})")]
    PayloadTooLarge { limit_bytes: usize, after: &'static str },
    #[error("cannot decompress the {encoding} request body: {source}")]
    Decompress { encoding: &'static str, source: std::io::Error },
    /// A request the server cannot use, the message saying which part and why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request header whose value cannot be used.
    #[error("header {header}: {value:?} is not {expected}")]
    BadHeader { header: &'static str, value: String, expected: &'static str },
    #[error("not found: {0}")]
    NotFound(String),
    /// No token, or one that is not valid (`auth.rs`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A valid token whose role or scope does not allow the call.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A request the router or an extractor could not use (a body that is
    /// not the JSON expected, a bad path parameter or query string, a
    /// method a route does not take), with the status that says so.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    #[error("publisher {publisher_id:?} is over its ingest rate; retry after {retry_after_s} s")]
    RateLimited { publisher_id: String, retry_after_s: u64 },
    /// Admission control refused a statement (`admission.rs`).
    #[error("{0}")]
    Overloaded(crate::admission::Refusal),
    #[error(
        "memory full: the head, block cache, dedupe and attribution state hold {used} bytes of storage.memory_limit \
         {limit} ({part} the most, {part_bytes} bytes); retry when seals, spills and expiry free memory"
    )]
    MemoryFull { used: u64, limit: u64, part: &'static str, part_bytes: u64 },
    #[error("storage: {0}")]
    Storage(#[from] adstore_storage::StorageError),
    #[error("{0}")]
    Query(adstore_query::QueryError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("internal error: {0}")]
    Internal(String),
    /// A command-line argument that cannot be used (CLI only).
    #[error("invalid --{arg}: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    /// Reading or writing a local file (CLI only).
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// An input file that starts like an Arrow IPC stream but cannot be
    /// read as one (CLI only).
    #[error("{path}: not a readable Arrow IPC stream: {source}")]
    ArrowInput { path: String, source: arrow_schema::ArrowError },
    /// A request from the CLI to a server failed for good (CLI only).
    #[error("{url}: {message}")]
    Client { url: String, message: String },
}

/// A query that failed in the store is a store failure: answered as one
/// (`damaged_data` 503, `busy` 503, …), not as a generic query error.
impl From<adstore_query::QueryError> for ServerError {
    fn from(e: adstore_query::QueryError) -> Self {
        match e {
            adstore_query::QueryError::Storage(e) => ServerError::Storage(e),
            e => ServerError::Query(e),
        }
    }
}

impl ServerError {
    /// The message an API answers with, cut to a readable length.
    pub(crate) fn message(&self) -> String {
        cut(self.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServerError::Config(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            ServerError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ServerError::UnsupportedEncoding(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
            ServerError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ServerError::Decompress { .. } => (StatusCode::BAD_REQUEST, "bad_encoding"),
            ServerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServerError::BadHeader { .. } => (StatusCode::BAD_REQUEST, "bad_header"),
            ServerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServerError::Rejected { status, .. } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                let code = match status {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
                    StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                    _ => "bad_request",
                };
                (status, code)
            }
            ServerError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ServerError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ServerError::MemoryFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "memory_full"),
            ServerError::Storage(S::Busy(_)) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ServerError::Storage(S::Damaged { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "damaged_data"),
            ServerError::Storage(S::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ServerError::Storage(S::HeadFull { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "head_full"),
            ServerError::Storage(S::Schema(_)) => (StatusCode::BAD_REQUEST, "bad_batch"),
            ServerError::Storage(S::Expired(_)) => (StatusCode::BAD_REQUEST, "retention_expired"),
            ServerError::Storage(S::LookupTooLarge { .. }) => (StatusCode::BAD_REQUEST, "too_many_matches"),
            ServerError::Storage(S::ObjectStore { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "object_store_unavailable")
            }
            ServerError::Storage(e) if e.is_disk_full() => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            ServerError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            ServerError::Query(e @ adstore_query::QueryError::Timeout { .. }) => {
                (StatusCode::REQUEST_TIMEOUT, e.code())
            }
            ServerError::Query(e) if e.is_user_error() => (StatusCode::BAD_REQUEST, e.code()),
            ServerError::Query(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.code()),
            ServerError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ServerError::Bind { .. }
            | ServerError::Internal(_)
            | ServerError::Io { .. }
            | ServerError::ArrowInput { .. }
            | ServerError::Client { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Seconds after which the same request may succeed, for `Retry-After`.
    fn retry_after_s(&self) -> Option<u64> {
        match self {
            ServerError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            ServerError::Overloaded(_) | ServerError::MemoryFull { .. } => Some(1),
            ServerError::Storage(S::HeadFull { retry_after_s, .. }) => Some(*retry_after_s),
            ServerError::Storage(S::DiskLow { retry_after_s, .. }) => Some(*retry_after_s),
            ServerError::Storage(e) if e.is_disk_full() => Some(10),
            _ => None,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // A full head and a full query queue are backpressure, logged by the
        // store when they start and end or counted in /metrics, not once per
        // refused request.
        let backpressure = matches!(
            self,
            ServerError::Storage(S::HeadFull { .. } | S::DiskLow { .. })
                | ServerError::Overloaded(_)
                | ServerError::MemoryFull { .. }
        );
        if status.is_server_error() && !backpressure {
            tracing::error!(error = %self, "request failed");
        }
        let mut body = serde_json::json!({ "error": { "code": code, "message": self.message() } });
        if let ServerError::Query(q) = &self {
            body["error"]["position"] = q
                .position()
                .map_or(serde_json::Value::Null, |p| serde_json::json!({ "line": p.line, "column": p.column }));
        }
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(crate::metrics::ErrorCode(code));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if let Some(after_s) = self.retry_after_s()
            && let Ok(v) = axum::http::HeaderValue::from_str(&after_s.to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}

/// Longest error message answered, in characters: a message echoes parts
/// of the request (a SQL token, a header value), which may be megabytes.
const MAX_MESSAGE_CHARS: usize = 600;

/// `message` cut to [`MAX_MESSAGE_CHARS`], saying how much was left out.
fn cut(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}… ({} more bytes cut)", &message[..at], message.len() - at),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(cut("short".into()), "short");
        let long = format!("unknown column {}", "é".repeat(1_000_000));
        let out = cut(long.clone());
        assert!(out.chars().count() < MAX_MESSAGE_CHARS + 40, "{}", out.len());
        assert!(out.starts_with("unknown column éé") && out.ends_with("more bytes cut)"), "{out}");
    }

    #[test]
    fn statuses_of_query_limits() {
        let status = |e: adstore_query::QueryError| ServerError::Query(e).into_response().status();
        assert_eq!(status(adstore_query::QueryError::Timeout { timeout_ms: 1 }), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(status(adstore_query::QueryError::TooManyGroups { max_groups: 1 }), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(adstore_query::QueryError::TooComplex { message: "m".into(), position: None }),
            StatusCode::BAD_REQUEST
        );
    }
}
