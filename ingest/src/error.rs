//! The one error type of adstore-ingest.
//!
//! Every variant is a *user* mistake in one line of an ingest request
//! (DESIGN.md §5): the line is rejected, the other lines of the request are
//! not. The parser pairs each error with its 1-based line number in a
//! [`crate::LineError`]; the field at fault is carried by the variant (see
//! [`IngestError::field`]) and is therefore not repeated in the message.

use adstore_storage::EventType;
use adstore_storage::time::format_timestamp;
use thiserror::Error;

/// Why one event line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IngestError {
    /// The line (or array element) is not valid JSON, or not a JSON object.
    #[error("malformed JSON: {message}")]
    MalformedJson { message: String },

    /// The line is longer than `ParseOptions::max_line_bytes`; it was not parsed.
    #[error("line is {len_bytes} bytes, over the limit of {max_bytes} bytes")]
    LineTooLong { len_bytes: usize, max_bytes: usize },

    /// A field that is not part of the event schema (DESIGN.md §1).
    #[error("unknown field")]
    UnknownField { field: String },

    /// The same field appears twice in one object.
    #[error("duplicate field")]
    DuplicateField { field: &'static str },

    /// A required field is absent.
    #[error("missing required field")]
    MissingField { field: &'static str },

    /// A required field is present but `null`.
    #[error("required field must not be null")]
    NullField { field: &'static str },

    /// A string field holds another JSON type.
    #[error("expected a string, found {found}")]
    ExpectedString { field: &'static str, found: &'static str },

    /// A required string field is `""`.
    #[error("must not be empty")]
    EmptyString { field: &'static str },

    /// A string value longer than its limit (128 bytes for `event_id`, 1024 otherwise).
    #[error("value is {len_bytes} bytes, over the limit of {max_bytes} bytes")]
    ValueTooLong { field: &'static str, len_bytes: usize, max_bytes: usize },

    /// `cost_micros` / `value_micros` is not a non-negative 64-bit integer.
    #[error("expected an integer >= 0, found {found}")]
    ExpectedNonNegativeInt { field: &'static str, found: String },

    /// `ts` is neither a string nor an integer.
    #[error("expected an RFC 3339 timestamp string or integer epoch milliseconds, found {found}")]
    ExpectedTimestamp { found: &'static str },

    /// `ts` is a string that is not an RFC 3339 date-time.
    #[error("invalid RFC 3339 timestamp: {detail}")]
    BadTimestamp { detail: &'static str },

    /// `type` is not one of the event types.
    #[error("expected one of impression, click, conversion, found {found:?}")]
    BadType { found: String },

    /// A typed endpoint received a line of another type.
    #[error("type {} does not match the endpoint's type {}", .found.as_str(), .expected.as_str())]
    TypeMismatch { found: EventType, expected: EventType },

    /// `country` is not an ISO 3166 alpha-2 code.
    #[error("expected an ISO 3166 alpha-2 code (2 uppercase ASCII letters), found {found:?}")]
    BadCountry { found: String },

    /// `device` is not one of the device classes.
    #[error("expected one of mobile, desktop, tablet, ctv, other, found {found:?}")]
    BadDevice { found: String },

    /// An Arrow column holds a data type this field cannot be read from.
    #[error("Arrow type {data_type} is not accepted for this field")]
    UnsupportedArrowType { field: &'static str, data_type: String },

    /// The Arrow IPC stream itself is broken; the rows before the break are kept.
    #[error("malformed Arrow IPC stream: {message}")]
    MalformedArrow { message: String },

    /// `ts` is further ahead of the server clock than the allowed skew.
    #[error(
        "future: ts {} is {} s ahead of the server clock ({}), more than ingest.max_future_skew_ms ({max_skew_ms} ms)",
        format_timestamp(*ts_ms), seconds(*ahead_ms), format_timestamp(ts_ms - ahead_ms)
    )]
    Future { ts_ms: i64, ahead_ms: i64, max_skew_ms: i64 },

    /// `ts` is older than the allowed lateness (and the request is not a backfill).
    #[error(
        "late: ts {} is before {}, the oldest time accepted (the newest event time less \
         ingest.allowed_lateness_ms); load history with mode=backfill",
        format_timestamp(*ts_ms), format_timestamp(*min_ts_ms)
    )]
    Late { ts_ms: i64, min_ts_ms: i64 },

    /// `publisher_id` is not one of the publishers the sender's token may
    /// send for (`ParseOptions::publishers`).
    #[error("publisher_not_allowed: the token may not send events of publisher {publisher_id:?}")]
    PublisherNotAllowed { publisher_id: String },
}

impl IngestError {
    /// The field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        use IngestError as E;
        match self {
            E::MalformedJson { .. } | E::LineTooLong { .. } | E::MalformedArrow { .. } => None,
            E::UnknownField { field } => Some(field),
            E::DuplicateField { field }
            | E::MissingField { field }
            | E::NullField { field }
            | E::ExpectedString { field, .. }
            | E::EmptyString { field }
            | E::ValueTooLong { field, .. }
            | E::ExpectedNonNegativeInt { field, .. }
            | E::UnsupportedArrowType { field, .. } => Some(field),
            E::ExpectedTimestamp { .. } | E::BadTimestamp { .. } | E::Future { .. } | E::Late { .. } => Some("ts"),
            E::BadType { .. } | E::TypeMismatch { .. } => Some("type"),
            E::BadCountry { .. } => Some("country"),
            E::BadDevice { .. } => Some("device"),
            E::PublisherNotAllowed { .. } => Some("publisher_id"),
        }
    }
}

/// Milliseconds as seconds for a message: `3600`, `0.25`.
fn seconds(ms: i64) -> String {
    if ms % 1000 == 0 { (ms / 1000).to_string() } else { format!("{:.3}", ms as f64 / 1000.0) }
}

/// At most 64 characters of a user value, for echoing it in a message.
pub(crate) fn snippet(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}
