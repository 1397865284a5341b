//! adstore-query: SQL over the store.
//!
//! ```text
//!  SQL ──bind (sqlparser → typed logical plan)──► planner (source, time range,
//!      pushed dimension filters, needed columns) ──► executor (rayon over blocks
//!      and head chunks, vectorized on dictionary codes, partial aggregates merged)
//!      ──► Arrow RecordBatch ──► JSON / CSV / Arrow IPC
//! ```
//!
//! The SQL subset, types, measures of `metrics` and errors are described in
//! `docs/sql.md`. Entry point: [`execute`].
//!
//! Dependency rule: this crate depends on `adstore-storage` only, and only
//! through its public scan API; the server depends on it.

mod bind;
mod error;
mod exec;
mod expr;
mod limits;
mod output;
mod plan;
mod planner;
mod source;
mod time;
mod types;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adstore_storage::Snapshot;

pub use error::{Position, QueryError, Result};
pub use limits::{MAX_NESTING, MAX_OPERATORS, QUERY_STACK_BYTES};
pub use output::{Cell, QueryResult, QueryStats, sql_type_name};
pub use source::Source;

/// Per-query settings. Every field has a default.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// What `now()` means, epoch ms. Default: the wall clock at `default()`.
    pub now_ms: i64,
    /// The query fails with [`QueryError::Timeout`] after this long. Default 30 s.
    pub timeout: Duration,
    /// The most groups an aggregation may produce. Default 1_000_000.
    pub max_groups: usize,
    /// Approximate memory for aggregation state and buffered rows. Default 1 GiB.
    pub max_memory_bytes: usize,
    /// The most rows a result may hold (before it is serialised whole for
    /// the client). Default 1_000_000.
    pub max_result_rows: usize,
    /// The most operators one statement may hold. Default [`MAX_OPERATORS`].
    pub max_operators: usize,
    /// How deep parentheses and `CASE … END` may nest. Default [`MAX_NESTING`].
    pub max_nesting: usize,
    /// Set to true (by another thread) to stop the query: it fails with
    /// [`QueryError::Cancelled`] before its next block. Default: none.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The advertisers whose rows the statement may see (a `query` token's
    /// scope); `None`, the default, sees every row. The restriction is a
    /// filter storage applies before anything of the statement reads a
    /// row, so no predicate, aggregate, error or EXPLAIN of the statement
    /// can depend on another advertiser's rows; scan counts in the stats
    /// and EXPLAIN's storage rows, which describe all data, are left out.
    pub advertisers: Option<Vec<String>>,
}

impl Default for QueryOptions {
    fn default() -> QueryOptions {
        QueryOptions {
            now_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            timeout: Duration::from_secs(30),
            max_groups: 1_000_000,
            max_memory_bytes: 1 << 30,
            max_result_rows: 1_000_000,
            max_operators: MAX_OPERATORS,
            max_nesting: MAX_NESTING,
            cancel: None,
            advertisers: None,
        }
    }
}

/// Parses, plans and runs one SQL statement (`SELECT …` or
/// `EXPLAIN SELECT …`) against a snapshot of the store.
///
/// # Errors
/// [`QueryError::is_user_error`] tells a bad query (syntax, unsupported
/// construct with its position, unknown names, limits, timeout) from a
/// failure of the store.
pub fn execute(snapshot: &Snapshot, sql: &str, opts: &QueryOptions) -> Result<QueryResult> {
    execute_with(snapshot, sql, &[], opts)
}

/// [`execute`] of a statement with parameters: `$1` is `params[0]`, and so
/// on. A parameter is a value, never SQL text: it binds like a literal of
/// its type (a [`Param::Text`] compared with `ts` is read as a timestamp,
/// as a string literal is).
///
/// # Errors
/// As [`execute`]; also a `$n` with no parameter n.
pub fn execute_with(snapshot: &Snapshot, sql: &str, params: &[Param], opts: &QueryOptions) -> Result<QueryResult> {
    limits::check(sql, opts.max_operators, opts.max_nesting)?;
    // On a stack of known size, whatever thread calls: the statement's
    // depth is bounded by the limits just checked.
    stacker::grow(QUERY_STACK_BYTES, || execute_checked(snapshot, sql, params, opts))
}

/// The result schema `execute_with` would return, without running the
/// statement (the PostgreSQL protocol's Describe). Parameters not given
/// (`params` shorter than the statement needs) bind as NULL: a column that
/// is only a parameter is then typed `Null`.
///
/// # Errors
/// As [`execute`], for everything found before execution.
pub fn describe(sql: &str, params: &[Param], opts: &QueryOptions) -> Result<arrow_schema::SchemaRef> {
    limits::check(sql, opts.max_operators, opts.max_nesting)?;
    stacker::grow(QUERY_STACK_BYTES, || {
        let logical = bind::bind_sql(sql, opts.now_ms, opts.max_nesting, bind::Params::Lenient(params))?;
        Ok(if logical.explain { exec::explain_schema() } else { exec::schema_of(&logical) })
    })
}

/// A value for a `$n` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Text; read as a timestamp where one is expected, like a string literal.
    Text(String),
    /// Epoch milliseconds, UTC.
    Timestamp(i64),
}

fn execute_checked(snapshot: &Snapshot, sql: &str, params: &[Param], opts: &QueryOptions) -> Result<QueryResult> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let logical = bind::bind_sql(sql, opts.now_ms, opts.max_nesting, bind::Params::Strict(params))?;
    let explain = logical.explain;
    let physical = planner::plan(logical, opts.advertisers.as_deref());
    let source = physical.source.source.name().to_string();
    let (schema, batches, stats) = if physical.logical.no_from {
        let (schema, batches) = exec::constant_row(&physical.logical)?;
        (schema, batches, exec::ExecStats::default())
    } else if explain {
        let (schema, batches) = exec::explain(snapshot, &physical)?;
        (schema, batches, exec::ExecStats::default())
    } else {
        exec::execute(snapshot, &physical, opts, deadline)?
    };
    let rows: usize = batches.iter().map(arrow_array::RecordBatch::num_rows).sum();
    if rows > opts.max_result_rows {
        return Err(QueryError::ResultTooLarge { max_rows: opts.max_result_rows });
    }
    // Scan counts measure every advertiser's rows in the blocks read: a
    // scoped statement does not see them.
    let counts = if opts.advertisers.is_some() { exec::ExecStats::default() } else { stats.clone() };
    Ok(QueryResult {
        schema,
        batches,
        stats: QueryStats {
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            rows_scanned: counts.rows_scanned,
            segments_scanned: counts.segments_scanned,
            segments_pruned: counts.segments_pruned,
            blocks_scanned: counts.blocks_scanned,
            blocks_pruned: counts.blocks_pruned,
            source: if stats.source.is_empty() { source } else { stats.source },
            provisional: stats.provisional,
        },
    })
}
