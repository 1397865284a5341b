//! The `adstore` command line.
//!
//! ```text
//!  adstore serve   ─► cli/serve.rs   the store and its HTTP API (optionally with demo data)
//!  adstore gen     ─► cli/gen.rs     synthetic events as NDJSON (datagen)
//!  adstore ingest  ─► cli/ingest.rs  a file to a server: parallel batches, retries, progress
//!  adstore sql     ─► cli/sql.rs     a query to a server: table, CSV or JSON
//!  adstore token   ─► cli/token.rs   access tokens, on a server or in a stopped server's data directory
//!  adstore trace   ─► cli/trace.rs   why one event counts as it does (GET /v1/trace)
//! ```
//!
//! Commands that call a server take `--url` and `--token` (`cli/remote.rs`).
//!
//! Every subcommand returns `Result<(), ServerError>`; `main` prints the
//! error and exits 1. Logs go to stderr (filter with `ADSTORE_LOG`), data to
//! stdout.

mod gen_cmd;
mod ingest;
mod reconcile;
mod remote;
mod retention;
mod serve;
mod sql;
mod token;
mod trace;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::ServerError;

#[derive(Parser)]
#[command(name = "adstore", version, about = "Columnar time-series store for advertising metrics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store: HTTP API on --listen, data in --data-dir.
    Serve(serve::ServeArgs),
    /// Write realistic synthetic events as NDJSON.
    Gen(gen_cmd::GenArgs),
    /// Send an NDJSON file (or stdin) to a server in parallel batches.
    Ingest(ingest::IngestArgs),
    /// Run a SQL query on a server and print the result.
    Sql(sql::SqlArgs),
    /// Compare a server's rollups and billing snapshots with its raw events.
    Reconcile(reconcile::ReconcileArgs),
    /// Show or change a server's retention policy.
    Retention(retention::RetentionArgs),
    /// Create, list or revoke access tokens (docs/security.md).
    Token(token::TokenArgs),
    /// Explain one event: where it is stored, its duplicates, attribution,
    /// invalid reason and what counts it (docs/trace.md).
    Trace(trace::TraceArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Gen(args) => gen_cmd::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Sql(args) => sql::run(args),
        Command::Reconcile(args) => reconcile::run(args),
        Command::Retention(args) => retention::run(args),
        Command::Token(args) => token::run(args),
        Command::Trace(args) => trace::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("adstore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A duration such as `1d`, `6h`, `30m`, `90s`, `250ms`, or plain milliseconds.
fn parse_duration_ms(arg: &'static str, s: &str) -> Result<i64, ServerError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || ServerError::InvalidArgument {
        arg,
        message: format!("{s:?} is not a duration like 1d, 6h, 30m, 90s, 250ms or milliseconds"),
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// An instant given as RFC 3339 or as epoch milliseconds.
fn parse_instant_ms(arg: &'static str, s: &str) -> Result<i64, ServerError> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    adstore_ingest::parse_rfc3339_ms(s.trim()).map_err(|detail| ServerError::InvalidArgument {
        arg,
        message: format!("{s:?} is neither epoch milliseconds nor RFC 3339 ({detail})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("span", "1d").expect("1d"), 86_400_000);
        assert_eq!(parse_duration_ms("span", "90s").expect("90s"), 90_000);
        assert_eq!(parse_duration_ms("span", "250ms").expect("ms"), 250);
        assert_eq!(parse_duration_ms("span", "1500").expect("plain"), 1500);
        assert!(parse_duration_ms("span", "1w").is_err());
        assert!(parse_duration_ms("span", "d").is_err());
    }

    #[test]
    fn instants() {
        assert_eq!(parse_instant_ms("start", "1000").expect("ms"), 1000);
        assert_eq!(parse_instant_ms("start", "1970-01-01T00:00:01Z").expect("rfc"), 1000);
        assert!(parse_instant_ms("start", "yesterday").is_err());
    }
}
