//! What kind of statement a client sent, from one pass of the SQL
//! tokenizer (no parse): empty, a session statement, a catalog probe, or a
//! query for the engine; and how many `$n` placeholders it has.

use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A statement as the extended protocol stores it between Parse and
/// Execute.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub sql: Arc<str>,
    pub kind: Kind,
    /// The highest `$n` in the text (the parameters it takes).
    pub placeholders: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Only whitespace, comments and semicolons (pgx's `-- ping`).
    Empty,
    /// `SET`, `RESET`, `BEGIN`, `COMMIT`, `SHOW` …: about the session.
    Session,
    /// Reads the PostgreSQL catalog (`information_schema`, `pg_catalog`,
    /// `current_setting()` …), which the store answers from its schema.
    Catalog,
    /// Everything else: the SQL subset over `events`, `metrics`, `billing_daily`.
    Query,
}

/// Words that open a session statement.
const SESSION_WORDS: &[&str] =
    &["set", "reset", "begin", "start", "commit", "end", "rollback", "abort", "show", "discard", "deallocate"];

/// Schemas, and functions written without parentheses, only the catalog
/// answers.
const CATALOG_NAMES: &[&str] = &["information_schema", "pg_catalog", "current_user", "session_user"];

/// Functions only the catalog answers: they count when called, so that a
/// column named `version` (in `billing_daily`) stays a column.
const CATALOG_FUNCTIONS: &[&str] = &[
    "current_setting",
    "current_database",
    "current_schema",
    "current_schemas",
    "version",
    "has_table_privilege",
    "has_schema_privilege",
    "quote_ident",
    "format_type",
];

impl Kind {
    /// Its label in `/metrics`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Empty => "empty",
            Kind::Session => "session",
            Kind::Catalog => "catalog",
            Kind::Query => "query",
        }
    }
}

impl Statement {
    pub(super) fn new(sql: &str) -> Statement {
        let dialect = PostgreSqlDialect {};
        // A text the tokenizer refuses (an unterminated string) goes to the
        // engine, which reports where.
        let tokens = Tokenizer::new(&dialect, sql).tokenize().unwrap_or_default();
        let mut first: Option<String> = None;
        let mut catalog = false;
        let mut placeholders = 0;
        let mut meaningful = false;
        let significant: Vec<&Token> =
            tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon)).collect();
        for (i, token) in significant.iter().enumerate() {
            match token {
                Token::Word(w) => {
                    meaningful = true;
                    let word = w.value.to_ascii_lowercase();
                    let called = matches!(significant.get(i + 1), Some(Token::LParen));
                    catalog |= w.quote_style.is_none()
                        && (CATALOG_NAMES.contains(&word.as_str())
                            || word.starts_with("pg_")
                            || (called && CATALOG_FUNCTIONS.contains(&word.as_str())));
                    first.get_or_insert(word);
                }
                Token::Placeholder(p) => {
                    meaningful = true;
                    if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                        placeholders = placeholders.max(n);
                    }
                }
                _ => meaningful = true,
            }
        }
        let kind = if tokens.is_empty() && !only_blank(sql) {
            Kind::Query
        } else if !meaningful {
            Kind::Empty
        } else if first.as_deref().is_some_and(|w| SESSION_WORDS.contains(&w)) {
            Kind::Session
        } else if catalog {
            Kind::Catalog
        } else {
            Kind::Query
        };
        Statement { sql: Arc::from(sql), kind, placeholders }
    }
}

fn only_blank(sql: &str) -> bool {
    sql.chars().all(|c| c.is_whitespace() || c == ';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |s: &str| Statement::new(s).kind;
        assert_eq!(kind("-- ping"), Kind::Empty);
        assert_eq!(kind(";"), Kind::Empty);
        assert_eq!(kind("  /* nothing */ ; "), Kind::Empty);
        assert_eq!(kind("SET extra_float_digits = 3"), Kind::Session);
        assert_eq!(kind("begin"), Kind::Session);
        assert_eq!(kind("SHOW server_version"), Kind::Session);
        assert_eq!(kind("SELECT current_setting('server_version_num')::int/100 as version"), Kind::Catalog);
        assert_eq!(kind("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"), Kind::Catalog);
        assert_eq!(kind("select table_name from information_schema.tables"), Kind::Catalog);
        assert_eq!(kind("SELECT count(*) FROM events"), Kind::Query);
        assert_eq!(kind("SELECT day, version FROM billing_daily"), Kind::Query, "a column named version");
        assert_eq!(kind("SELECT version()"), Kind::Catalog);
        assert_eq!(kind("SELECT 'pg_x' FROM events"), Kind::Query, "words inside strings do not count");
        assert_eq!(kind("SELECT 'unterminated"), Kind::Query);
        assert_eq!(Statement::new("SELECT $1, $3 FROM events").placeholders, 3);
    }
}
