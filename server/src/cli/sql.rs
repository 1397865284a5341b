//! `adstore sql "SELECT …"`: run a query on a server and print the result.
//!
//! ```text
//!  POST {url}/v1/sql  {"sql": "...", "format": "json" | "csv"}
//!    2xx, --format table: {"columns":[{"name","type"}],"rows":[[…]],"stats":{…}} ─► aligned table
//!    2xx, --format csv | json: the body as the server sent it
//!    otherwise: {"error":{"code","message","position"}} ─► message (and a caret under the
//!               query at `position`) on stderr, exit 1
//! ```
//!
//! Without `--format`: a table on a terminal, CSV when stdout is piped.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ServerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table, for people.
    Table,
    /// CSV with a header line.
    Csv,
    /// The server's JSON response.
    Json,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    /// The query.
    query: String,
    #[command(flatten)]
    remote: super::remote::Remote,
    /// Output format. Default: table on a terminal, csv when piped.
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
}

/// The JSON result of `/v1/sql`.
#[derive(Debug, Deserialize)]
pub struct QueryResult {
    pub columns: Vec<ResultColumn>,
    pub rows: Vec<Vec<Value>>,
    #[serde(default)]
    pub stats: Value,
}

#[derive(Debug, Deserialize)]
pub struct ResultColumn {
    pub name: String,
    #[serde(default, rename = "type")]
    pub data_type: String,
}

pub fn run(args: SqlArgs) -> Result<ExitCode, ServerError> {
    let format =
        args.format.unwrap_or(if std::io::stdout().is_terminal() { OutputFormat::Table } else { OutputFormat::Csv });
    let url = args.remote.endpoint("/v1/sql");
    let wire = if format == OutputFormat::Csv { "csv" } else { "json" };
    let request = serde_json::json!({ "sql": args.query, "format": wire });
    let agent: ureq::Agent = super::remote::agent(Duration::from_secs(600));
    let client_error = |message: String| ServerError::Client { url: url.clone(), message };
    let mut response = args
        .remote
        .authorize(agent.post(&url))
        .header("content-type", "application/json")
        .send(request.to_string().as_bytes())
        .map_err(|e| client_error(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body =
            response.body_mut().read_to_string().map_err(|e| client_error(format!("reading the response: {e}")))?;
        eprintln!("{}", render_error(status.as_u16(), &body, &args.query));
        return Ok(ExitCode::FAILURE);
    }
    let mut out = std::io::stdout().lock();
    let written = match format {
        // Streamed: an export may be far larger than memory should hold.
        OutputFormat::Csv | OutputFormat::Json => {
            let mut reader = response.body_mut().as_reader();
            let last = copy_noting_last(&mut reader, &mut out)
                .map_err(|e| client_error(format!("reading the response: {e}")))?;
            last.and_then(|last| if last == Some(b'\n') { Ok(()) } else { out.write_all(b"\n") })
        }
        OutputFormat::Table => {
            let body = response
                .body_mut()
                .with_config()
                .read_to_string()
                .map_err(|e| client_error(format!("reading the response: {e}")))?;
            let result: QueryResult = serde_json::from_str(&body)
                .map_err(|e| client_error(format!("the server's result is not the expected JSON: {e}")))?;
            let text = render_table(&result);
            out.write_all(text.as_bytes())
                .and_then(|()| if text.ends_with('\n') { Ok(()) } else { out.write_all(b"\n") })
        }
    };
    match written {
        // `adstore sql … | head` closes the pipe early; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(source) => Err(ServerError::Io { path: "<stdout>".into(), source }),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Copies `from` to `to`. A read error is the outer error; a write error
/// (stdout closed) the inner one, with the last byte copied otherwise.
fn copy_noting_last(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<std::io::Result<Option<u8>>> {
    let mut buf = vec![0u8; 64 << 10];
    let mut last = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(Ok(last)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            return Ok(Err(e));
        }
        last = buf[..n].last().copied();
    }
}

/// The character offset of 1-based `line` and `column` in `chars`; a
/// column past the end of its line (the end of input) stays on that line.
fn offset_of(chars: &[char], line: usize, column: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += chars[start..].iter().position(|&c| c == '\n')? + 1;
    }
    let len = chars[start..].iter().position(|&c| c == '\n').unwrap_or(chars.len() - start);
    Some(start + column.saturating_sub(1).min(len))
}

/// An error response as a message for people: `error[code]: message`, and
/// when the server gives a character `position`, the query with a caret.
pub fn render_error(status: u16, body: &str, query: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: ErrorBody,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        code: Option<String>,
        message: String,
        #[serde(default)]
        position: Option<Value>,
    }
    let Ok(Wrapper { error }) = serde_json::from_str::<Wrapper>(body) else {
        return format!("error: HTTP {status}: {}", body.trim());
    };
    let mut out = match &error.code {
        Some(code) => format!("error[{code}]: {}", error.message),
        None => format!("error: {}", error.message),
    };
    // The server gives `{"line", "column"}` (1-based, columns in
    // characters); a bare number is a character offset.
    let chars: Vec<char> = query.chars().collect();
    let offset = match &error.position {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
        Some(Value::Object(o)) => {
            match (o.get("line").and_then(Value::as_u64), o.get("column").and_then(Value::as_u64)) {
                (Some(line), Some(column)) => offset_of(&chars, line as usize, column as usize),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(offset) = offset {
        // Show the line of the query holding the position, and a caret under it.
        let offset = offset.min(chars.len());
        let line_start = chars[..offset].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1);
        let line_end = chars[offset..].iter().position(|&c| c == '\n').map_or(chars.len(), |i| offset + i);
        let line: String = chars[line_start..line_end].iter().collect();
        let line_no = chars[..offset].iter().filter(|&&c| c == '\n').count() + 1;
        out.push_str(&format!(
            "\n  at line {line_no}, column {}\n  {line}\n  {}^",
            offset - line_start + 1,
            " ".repeat(offset - line_start)
        ));
    } else if let Some(p) = error.position.filter(|p| !p.is_null()) {
        out.push_str(&format!("\n  at {p}"));
    }
    out
}

/// Whether a column type (Arrow or SQL spelling) holds numbers.
fn is_numeric_type(t: &str) -> bool {
    let t = t.to_ascii_lowercase();
    ["int", "float", "double", "decimal", "numeric", "real"].iter().any(|k| t.contains(k))
}

/// An aligned table: numbers right-aligned, text left-aligned, null as `NULL`.
pub fn render_table(result: &QueryResult) -> String {
    let cells: Vec<Vec<(String, bool)>> = result
        .rows
        .iter()
        .map(|row| {
            (0..result.columns.len())
                .map(|i| match row.get(i).unwrap_or(&Value::Null) {
                    Value::Null => ("NULL".to_string(), false),
                    // Decimals and 64-bit integers may travel as strings.
                    Value::String(s) => (s.replace('\n', "\\n"), is_numeric_type(&result.columns[i].data_type)),
                    Value::Number(n) => (n.to_string(), true),
                    Value::Bool(b) => (b.to_string(), false),
                    other => (other.to_string(), false),
                })
                .collect()
        })
        .collect();
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = result
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| width(&r[i].0)).chain([width(&c.name)]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let header: Vec<String> =
        result.columns.iter().zip(&widths).map(|(c, w)| format!(" {:<w$} ", c.name, w = *w)).collect();
    out.push_str(header.join("|").trim_end());
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push_str(&rule.join("+"));
    out.push('\n');
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|((text, numeric), w)| {
                let pad = w - width(text);
                if *numeric { format!(" {}{text} ", " ".repeat(pad)) } else { format!(" {text}{} ", " ".repeat(pad)) }
            })
            .collect();
        out.push_str(line.join("|").trim_end());
        out.push('\n');
    }
    let n = result.rows.len();
    let elapsed = ["elapsed_ms", "duration_ms", "time_ms"].iter().find_map(|k| result.stats.get(*k)?.as_f64());
    match elapsed {
        Some(ms) => out.push_str(&format!("({n} row{}, {ms:.1} ms)\n", if n == 1 { "" } else { "s" })),
        None => out.push_str(&format!("({n} row{})\n", if n == 1 { "" } else { "s" })),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_numbers_right_and_text_left() {
        let result: QueryResult = serde_json::from_str(
            r#"{"columns":[{"name":"campaign_id","type":"Utf8"},{"name":"clicks","type":"Int64"},{"name":"ctr","type":"Float64"}],
                "rows":[["cmp-000-00",12345,0.081],["c2",7,null]],
                "stats":{"elapsed_ms":3.25}}"#,
        )
        .expect("json");
        let expected = [
            " campaign_id | clicks | ctr",
            "-------------+--------+-------",
            " cmp-000-00  |  12345 | 0.081",
            " c2          |      7 | NULL",
            "(2 rows, 3.2 ms)",
            "",
        ]
        .join("\n");
        assert_eq!(render_table(&result), expected);
    }

    #[test]
    fn empty_result_still_has_a_header() {
        let result: QueryResult =
            serde_json::from_str(r#"{"columns":[{"name":"n","type":"Int64"}],"rows":[]}"#).expect("json");
        assert_eq!(render_table(&result), " n\n---\n(0 rows)\n");
    }

    #[test]
    fn errors_point_at_the_position() {
        // What the server sends: line and column, 1-based.
        let body = r#"{"error":{"code":"unknown_column","message":"unknown column \"clickz\" at 1:8","position":{"line":1,"column":8}}}"#;
        let got = render_error(400, body, "SELECT clickz FROM events");
        assert_eq!(
            got,
            "error[unknown_column]: unknown column \"clickz\" at 1:8\n  at line 1, column 8\n  SELECT clickz FROM events\n         ^"
        );
        let body = r#"{"error":{"code":"syntax","message":"m","position":{"line":2,"column":7}}}"#;
        let multi = render_error(400, body, "SELECT count(*)\nFROM events WHERE");
        assert!(multi.ends_with("at line 2, column 7\n  FROM events WHERE\n        ^"), "{multi}");
        // Past the end of the text (a syntax error at end of input): at its end.
        let body = r#"{"error":{"code":"syntax","message":"m","position":{"line":1,"column":99}}}"#;
        assert!(render_error(400, body, "SELECT").ends_with("column 7\n  SELECT\n        ^"));
        // A character offset.
        let body = r#"{"error":{"code":"x","message":"m","position":7}}"#;
        assert!(render_error(400, body, "SELECT\nclickz").ends_with("at line 2, column 1\n  clickz\n  ^"));
        assert_eq!(render_error(502, "bad gateway", "q"), "error: HTTP 502: bad gateway");
    }
}
