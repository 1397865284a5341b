//! Errors as PostgreSQL `ErrorResponse`s: the HTTP API's message, a
//! SQLSTATE for its cause, and the position (`P`, a 1-based character index
//! into the statement) where the query names one.

use adstore_query::{Position, QueryError};
use adstore_storage::StorageError as S;
use pgwire::error::{ErrorInfo, PgWireError, SEVERITY_ERROR};

use crate::error::ServerError;

/// An error the client caused, with its SQLSTATE.
pub(super) fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(SEVERITY_ERROR.to_owned(), code.to_owned(), message)))
}

/// A failed statement: the same message as `/v1/sql` answers, the
/// SQLSTATE of its cause, and where in `sql` the problem is.
/// A statement admission control refused: `insufficient_resources`, as
/// PostgreSQL answers when it is out of a resource; retrying later is safe.
pub(super) fn overloaded(refusal: crate::admission::Refusal) -> PgWireError {
    user_error("53000", refusal.to_string())
}

pub(super) fn query_error(e: QueryError, sql: &str) -> PgWireError {
    let position = e.position().and_then(|p| char_index(sql, p));
    let code = sqlstate(&e);
    let message = ServerError::from(e).message();
    if code.starts_with("XX") || code.starts_with("58") {
        tracing::error!(error = %message, "pg query failed");
    }
    let mut info = ErrorInfo::new(SEVERITY_ERROR.to_owned(), code.to_owned(), message);
    info.position = position.map(|p| p.to_string());
    PgWireError::UserError(Box::new(info))
}

/// PostgreSQL's error code for a query error (Appendix A of its manual).
fn sqlstate(e: &QueryError) -> &'static str {
    match e {
        QueryError::Syntax { .. } => "42601",
        QueryError::Unsupported { .. } => "0A000",
        QueryError::UnknownTable { .. } => "42P01",
        QueryError::UnknownColumn { .. } => "42703",
        QueryError::UnknownFunction { .. } => "42883",
        QueryError::Type { .. } => "42804",
        QueryError::InvalidLiteral { .. } => "22007",
        QueryError::Invalid { .. } => "42000",
        QueryError::TooComplex { .. } => "54001",
        QueryError::Overflow { .. } => "22003",
        QueryError::Timeout { .. } | QueryError::Cancelled => "57014",
        QueryError::TooManyGroups { .. } | QueryError::ResultTooLarge { .. } => "54000",
        QueryError::MemoryLimit { .. } => "53200",
        QueryError::Storage(S::Expired(_)) => "22023",
        QueryError::Storage(S::Busy(_) | S::ShuttingDown | S::ObjectStore { .. }) => "57P03",
        QueryError::Storage(S::Damaged { .. }) => "XX001",
        QueryError::Storage(_) => "58000",
        QueryError::Arrow(_) | QueryError::Internal(_) => "XX000",
    }
}

/// The 1-based character index of a line:column position in `sql`.
fn char_index(sql: &str, p: Position) -> Option<u64> {
    let line = usize::try_from(p.line).ok()?.checked_sub(1)?;
    let before: usize = sql.split('\n').take(line).map(|l| l.chars().count() + 1).sum();
    Some(before as u64 + p.column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_across_lines() {
        let sql = "SELECT é,\n  nope FROM events";
        assert_eq!(char_index(sql, Position { line: 1, column: 8 }), Some(8));
        assert_eq!(char_index(sql, Position { line: 2, column: 3 }), Some(13));
        assert_eq!(sql.chars().nth(12), Some('n'));
    }
}
