//! The query crate's error type. User mistakes (bad SQL, unknown names,
//! unsupported constructs, limits) are kept apart from failures of the store
//! and from bugs, so the server can answer 400 for the former and 500 for
//! the latter; see [`QueryError::is_user_error`].

use std::fmt;

use adstore_storage::StorageError;

/// A place in the SQL text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// `" at line:col"`, or nothing when the position is unknown.
pub(crate) struct At(pub Option<Position>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at {p}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("syntax error{}: {message}", At(*position))]
    Syntax { message: String, position: Option<Position> },
    #[error("unsupported{}: {construct}", At(*position))]
    Unsupported { construct: String, position: Option<Position> },
    #[error("unknown table {name:?}{}; tables are events and metrics", At(*position))]
    UnknownTable { name: String, position: Option<Position> },
    #[error("unknown column {name:?}{}{hint}", At(*position))]
    UnknownColumn { name: String, position: Option<Position>, hint: String },
    #[error("unknown function {name}(){}", At(*position))]
    UnknownFunction { name: String, position: Option<Position> },
    #[error("type error{}: {message}", At(*position))]
    Type { message: String, position: Option<Position> },
    #[error("invalid literal{}: {message}", At(*position))]
    InvalidLiteral { message: String, position: Option<Position> },
    #[error("invalid query{}: {message}", At(*position))]
    Invalid { message: String, position: Option<Position> },
    #[error("query too complex{}: {message}", At(*position))]
    TooComplex { message: String, position: Option<Position> },
    #[error("integer overflow in {what}")]
    Overflow { what: &'static str },
    #[error("query timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The client asked to stop the query (a PostgreSQL cancel request, or
    /// the connection closed).
    #[error("query cancelled at the client's request")]
    Cancelled,
    #[error("query produces more than {max_groups} groups; narrow the time range or the GROUP BY")]
    TooManyGroups { max_groups: usize },
    #[error("query needs more than {max_bytes} bytes of memory; narrow the time range, add a LIMIT or filters")]
    MemoryLimit { max_bytes: usize },
    #[error("query result has more than {max_rows} rows; add a LIMIT, filters or a GROUP BY")]
    ResultTooLarge { max_rows: usize },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("internal error (a bug): {0}")]
    Internal(String),
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

impl QueryError {
    /// A short machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Syntax { .. } => "syntax",
            QueryError::Unsupported { .. } => "unsupported",
            QueryError::UnknownTable { .. } => "unknown_table",
            QueryError::UnknownColumn { .. } => "unknown_column",
            QueryError::UnknownFunction { .. } => "unknown_function",
            QueryError::Type { .. } => "type_mismatch",
            QueryError::InvalidLiteral { .. } => "invalid_literal",
            QueryError::Invalid { .. } => "invalid_query",
            QueryError::TooComplex { .. } => "query_too_complex",
            QueryError::Overflow { .. } => "overflow",
            QueryError::Timeout { .. } => "timeout",
            QueryError::Cancelled => "cancelled",
            QueryError::TooManyGroups { .. } => "too_many_groups",
            QueryError::MemoryLimit { .. } => "memory_limit",
            QueryError::ResultTooLarge { .. } => "result_too_large",
            QueryError::Storage(StorageError::Expired(_)) => "retention_expired",
            QueryError::Storage(_) => "storage",
            QueryError::Arrow(_) => "internal",
            QueryError::Internal(_) => "internal",
        }
    }

    /// Whether the query (not the store or the engine) is at fault: the
    /// server answers these with 400 (timeouts and limits included, since
    /// a narrower query succeeds).
    pub fn is_user_error(&self) -> bool {
        // A range retention deleted is the query's to narrow.
        matches!(self, QueryError::Storage(StorageError::Expired(_)))
            || !matches!(self, QueryError::Storage(_) | QueryError::Arrow(_) | QueryError::Internal(_))
    }

    /// Where in the SQL text the problem is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            QueryError::Syntax { position, .. }
            | QueryError::Unsupported { position, .. }
            | QueryError::UnknownTable { position, .. }
            | QueryError::UnknownColumn { position, .. }
            | QueryError::UnknownFunction { position, .. }
            | QueryError::Type { position, .. }
            | QueryError::InvalidLiteral { position, .. }
            | QueryError::Invalid { position, .. }
            | QueryError::TooComplex { position, .. } => *position,
            _ => None,
        }
    }
}
