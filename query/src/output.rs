//! Result formats: JSON (`{"columns":[…],"rows":[[…]],"stats":{…}}`), CSV
//! with a header row, and Arrow IPC stream bytes.
//!
//! Timestamps are Arrow `Timestamp(ms, "UTC")`; JSON and CSV render them as
//! RFC 3339 strings (`2026-11-22T10:00:00Z`). Non-finite floats are `null`
//! in JSON. NULL is `null` in JSON and an empty field in CSV.

use std::fmt::Write as _;

use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::{DataType as ArrowType, SchemaRef};
use serde_json::{Value, json};

use crate::error::{QueryError, Result};
use crate::time::format_timestamp;

/// Counters and facts about one query run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryStats {
    pub elapsed_ms: f64,
    /// Rows read from storage after pushed-down filters.
    pub rows_scanned: u64,
    pub segments_scanned: usize,
    pub segments_pruned: usize,
    pub blocks_scanned: usize,
    pub blocks_pruned: usize,
    /// The source the planner chose (`events`; rollups later).
    pub source: String,
    /// True when provisional data was read: a segment not yet final, or
    /// events still in the head.
    pub provisional: bool,
}

/// A query's answer: Arrow batches plus stats.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub stats: QueryStats,
}

/// One value, for text formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Epoch milliseconds, UTC.
    Timestamp(i64),
}

impl std::fmt::Display for Cell {
    /// The CSV / text rendering (NULL is empty).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => Ok(()),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Int(i) => write!(f, "{i}"),
            Cell::Float(x) => write!(f, "{x}"),
            Cell::Str(s) => f.write_str(s),
            Cell::Timestamp(t) => f.write_str(&format_timestamp(*t)),
        }
    }
}

/// The SQL type name of an Arrow column type.
pub fn sql_type_name(t: &ArrowType) -> &'static str {
    match t {
        ArrowType::Int64 => "bigint",
        ArrowType::Float64 => "double",
        ArrowType::Utf8 => "varchar",
        ArrowType::Boolean => "boolean",
        ArrowType::Timestamp(..) => "timestamp",
        _ => "null",
    }
}

fn cell(a: &ArrayRef, i: usize) -> Cell {
    if a.is_null(i) {
        return Cell::Null;
    }
    let any = a.as_any();
    match a.data_type() {
        ArrowType::Int64 => {
            any.downcast_ref::<PrimitiveArray<Int64Type>>().map_or(Cell::Null, |x| Cell::Int(x.value(i)))
        }
        ArrowType::Float64 => {
            any.downcast_ref::<PrimitiveArray<Float64Type>>().map_or(Cell::Null, |x| Cell::Float(x.value(i)))
        }
        ArrowType::Timestamp(..) => any
            .downcast_ref::<PrimitiveArray<TimestampMillisecondType>>()
            .map_or(Cell::Null, |x| Cell::Timestamp(x.value(i))),
        ArrowType::Utf8 => any.downcast_ref::<StringArray>().map_or(Cell::Null, |x| Cell::Str(x.value(i).to_string())),
        ArrowType::Boolean => any.downcast_ref::<BooleanArray>().map_or(Cell::Null, |x| Cell::Bool(x.value(i))),
        _ => Cell::Null,
    }
}

/// One value as JSON: numbers, booleans, strings (escaped), timestamps as
/// RFC 3339 strings, NaN and infinities as `null`.
fn json_cell(a: &ArrayRef, i: usize, out: &mut String) {
    let string = |s: &str, out: &mut String| {
        // Invariant: serializing a str into JSON cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".into()));
    };
    if a.is_null(i) {
        out.push_str("null");
        return;
    }
    let any = a.as_any();
    match a.data_type() {
        ArrowType::Int64 => match any.downcast_ref::<PrimitiveArray<Int64Type>>() {
            Some(x) => {
                let _ = write!(out, "{}", x.value(i));
            }
            None => out.push_str("null"),
        },
        ArrowType::Float64 => match any.downcast_ref::<PrimitiveArray<Float64Type>>().map(|x| x.value(i)) {
            Some(f) => match serde_json::Number::from_f64(f) {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push_str("null"),
            },
            None => out.push_str("null"),
        },
        ArrowType::Timestamp(..) => match any.downcast_ref::<PrimitiveArray<TimestampMillisecondType>>() {
            Some(x) => string(&format_timestamp(x.value(i)), out),
            None => out.push_str("null"),
        },
        ArrowType::Utf8 => match any.downcast_ref::<StringArray>() {
            Some(x) => string(x.value(i), out),
            None => out.push_str("null"),
        },
        ArrowType::Boolean => match any.downcast_ref::<BooleanArray>() {
            Some(x) => out.push_str(if x.value(i) { "true" } else { "false" }),
            None => out.push_str("null"),
        },
        _ => out.push_str("null"),
    }
}

fn csv_field(s: &str, out: &mut String) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Column names and SQL type names.
    pub fn columns(&self) -> Vec<(String, &'static str)> {
        self.schema.fields().iter().map(|f| (f.name().clone(), sql_type_name(f.data_type()))).collect()
    }

    /// Every row as cells.
    pub fn rows(&self) -> Vec<Vec<Cell>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for b in &self.batches {
            for i in 0..b.num_rows() {
                out.push(b.columns().iter().map(|a| cell(a, i)).collect());
            }
        }
        out
    }

    /// The JSON document: columns, rows (arrays of values) and stats.
    /// Rows are written straight from the Arrow columns (a result of many
    /// rows would otherwise build a JSON tree first).
    pub fn to_json(&self) -> String {
        let columns: Vec<Value> = self.columns().into_iter().map(|(n, t)| json!({"name": n, "type": t})).collect();
        let s = &self.stats;
        let stats = json!({
            "elapsed_ms": s.elapsed_ms,
            "rows_scanned": s.rows_scanned,
            "segments_scanned": s.segments_scanned,
            "segments_pruned": s.segments_pruned,
            "blocks_scanned": s.blocks_scanned,
            "blocks_pruned": s.blocks_pruned,
            "source": s.source,
            "provisional": s.provisional,
        });
        let mut out = String::with_capacity(64 + self.num_rows() * 16 * self.schema.fields().len());
        out.push_str("{\"columns\":");
        out.push_str(&Value::Array(columns).to_string());
        out.push_str(",\"rows\":[");
        let mut first = true;
        for b in &self.batches {
            for i in 0..b.num_rows() {
                out.push_str(if first { "[" } else { ",[" });
                first = false;
                for (j, a) in b.columns().iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    json_cell(a, i, &mut out);
                }
                out.push(']');
            }
        }
        out.push_str("],\"stats\":");
        out.push_str(&stats.to_string());
        out.push('}');
        out
    }

    /// CSV (RFC 4180) with a header row.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.schema.fields().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(f.name(), &mut out);
        }
        out.push('\n');
        let mut buf = String::new();
        for row in self.rows() {
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                buf.clear();
                let _ = write!(buf, "{c}");
                csv_field(&buf, &mut out);
            }
            out.push('\n');
        }
        out
    }

    /// The batches as an Arrow IPC stream.
    pub fn to_arrow_ipc(&self) -> Result<Vec<u8>> {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)?;
        for b in &self.batches {
            w.write(b)?;
        }
        w.finish()?;
        w.into_inner().map_err(QueryError::from)
    }
}
