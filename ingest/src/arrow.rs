//! Arrow IPC stream bodies to an [`EventBatch`] of valid events.
//!
//! ```text
//!  body ──StreamDecoder──► RecordBatch, RecordBatch, …   (slices of <= SLICE_ROWS rows)
//!                              │ par_iter (rayon) when more than one, per slice:
//!                              ▼
//!     resolve columns by name ─► one pass per column, in schema order:
//!     convert to the event type and check every row still standing
//!     (the first fault of a row wins) ─► time window ─► filter out faulty rows
//!  slices, in order ──merge──► ParseOutcome
//! ```
//!
//! The producer sends any subset of the input fields of DESIGN.md §1, by
//! column name, in any order:
//! - string fields: `Utf8`, `LargeUtf8`, `Utf8View`, or a dictionary of those;
//! - `type`: the strings `impression|click|conversion`, or the `UInt8` code
//!   (0, 1, 2) the store uses;
//! - `ts`: `Int64` epoch milliseconds, `Timestamp(s|ms|us|ns)` (sub-millisecond
//!   parts are floored), or RFC 3339 strings;
//! - `cost_micros`, `value_micros`: any of `Int64`, `Int32`, `UInt64`,
//!   `UInt32`, `UInt8`;
//! - a column of Arrow type `Null`, or an absent column, is all nulls.
//!
//! Rows are judged with the rules of the JSON reader (the string checks,
//! required fields per type, the time window are the same functions of
//! `parse::validate`), and reported with their 1-based row number in the
//! stream as `line`. A column that is not an input field, or a repeated
//! column name, rejects every row of its batch, as the same key would reject
//! every JSON line carrying it.
//!
//! Invariants: every row of the stream is either one row of
//! `ParseOutcome::batch` or counted in `rejected`; accepted rows keep stream
//! order; valid string columns are moved, not copied, unless they need a
//! conversion (another string encoding, or `""` stored as null). Columns are
//! not copied out of the body either: the decoded arrays point into it.

use std::sync::Arc;

use adstore_storage::{COLUMNS, ColumnId, EventBatch, EventType, InvalidReason, event_schema};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt8Array, UInt32Array,
    UInt64Array, new_null_array,
};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_schema::{DataType, TimeUnit};
use arrow_select::filter::FilterBuilder;
use rayon::prelude::*;

use crate::error::{IngestError, snippet};
use crate::parse::raw::{INPUT_COLUMNS, INPUT_FIELDS, input_column};
use crate::parse::{ChunkOut, LineError, ParseOptions, ParseOutcome, merge, rfc3339, validate};

/// Largest slice of a record batch checked as one parallel task.
const SLICE_ROWS: usize = 64 * 1024;

/// Parses an Arrow IPC stream (`application/vnd.apache.arrow.stream`) of
/// record batches whose columns are a subset of the event's input fields.
/// A stream that breaks off (bad framing, a truncated message) is one more
/// rejection, at the row after the last complete batch; the rows of the
/// complete batches before it are kept, as for a JSON array.
///
/// The accepted columns share `body`'s memory where they need no
/// conversion: pass an owned buffer (a `Vec<u8>`, or
/// `PooledBuf::into_arrow`) to decode without a copy.
pub fn parse_arrow_ipc(body: impl Into<Buffer>, opts: &ParseOptions) -> ParseOutcome {
    let (batches, broken) = read_stream(body.into());
    let mut slices = Vec::new();
    let mut first_line = 1;
    for batch in &batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SLICE_ROWS.min(batch.num_rows() - offset);
            slices.push((first_line + offset, batch.slice(offset, len)));
            offset += len;
        }
        first_line += batch.num_rows();
    }
    // One slice is checked on the calling thread: handing it to the pool
    // and waiting for it cost two context switches per request.
    let chunks: Vec<ChunkOut> = match slices.as_slice() {
        [(line, batch)] => vec![check_batch(batch, *line, opts)],
        _ if !opts.parallel => slices.iter().map(|(line, batch)| check_batch(batch, *line, opts)).collect(),
        _ => slices.par_iter().map(|(line, batch)| check_batch(batch, *line, opts)).collect(),
    };
    let mut out = merge(chunks, opts);
    if let Some(message) = broken {
        out.rejected += 1;
        if out.errors.len() < opts.max_errors {
            out.errors.push(LineError::new(first_line, &IngestError::MalformedArrow { message }));
        }
    }
    out
}

/// Every complete batch of the stream, and the error that ended it early, if one did.
fn read_stream(body: Buffer) -> (Vec<RecordBatch>, Option<String>) {
    // Arrow's decoder panics on a message whose buffers lie outside its
    // body (found by tests/fuzz.rs) instead of failing: such a message, and
    // what follows it, is not handed to it.
    let (sound, broken) = sound_prefix(&body);
    let (batches, error) = decode_stream(body.slice_with_length(0, sound));
    // The first fault in the stream is the one to report: a cut before a
    // bad message also makes the decoder find the stream unfinished.
    (batches, broken.or(error))
}

/// The fewest bytes of its message a valid event row can take.
const MIN_ROW_BYTES: u64 = 4;

/// How many leading bytes of an IPC stream hold whole messages whose
/// buffers all lie within their bodies, and what is wrong with the next
/// message when one is. A cut message ends the prefix without an error:
/// the decoder reports it.
fn sound_prefix(body: &[u8]) -> (usize, Option<String>) {
    let word = |at: usize| body.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut at = 0;
    loop {
        let start = at;
        let Some(mut len) = word(at) else { return (body.len(), None) };
        at += 4;
        if len == u32::MAX {
            let Some(l) = word(at) else { return (body.len(), None) };
            len = l;
            at += 4;
        }
        if len == 0 {
            return (body.len(), None);
        }
        let Ok(meta_len) = usize::try_from(i32::from_le_bytes(len.to_le_bytes())) else {
            return (start, Some(format!("message at byte {start}: a negative metadata length")));
        };
        let Some(meta) = body.get(at..at.saturating_add(meta_len)) else { return (body.len(), None) };
        let message = match arrow_ipc::root_as_message(meta) {
            Ok(m) => m,
            Err(e) => return (start, Some(format!("message at byte {start}: {e}"))),
        };
        let Ok(body_len) = u64::try_from(message.bodyLength()) else {
            return (start, Some(format!("message at byte {start}: a negative body length")));
        };
        let batch =
            message.header_as_record_batch().or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(batch) = batch {
            // Columns without buffers (type Null) let a batch declare any
            // number of rows in a few bytes, and checking them costs memory
            // by the row. No valid event takes less than 4 bytes of its
            // message (`ts` alone takes 8).
            let rows = u64::try_from(batch.length()).unwrap_or(u64::MAX);
            if rows > body_len / MIN_ROW_BYTES {
                return (
                    start,
                    Some(format!("message at byte {start}: declares {rows} rows in a body of {body_len} bytes")),
                );
            }
            let outside = batch.buffers().into_iter().flatten().any(|b| {
                let (offset, length) = (u64::try_from(b.offset()), u64::try_from(b.length()));
                // Within the body, at a multiple of 8 as the format asks.
                !matches!((offset, length), (Ok(o), Ok(l))
                    if o.is_multiple_of(8) && o.checked_add(l).is_some_and(|end| end <= body_len))
            });
            if outside {
                return (
                    start,
                    Some(format!(
                        "message at byte {start}: a buffer lies outside the message body or is not 8-byte aligned"
                    )),
                );
            }
        }
        at = match usize::try_from(body_len).ok().and_then(|l| (at + meta_len).checked_add(l)) {
            Some(end) if end <= body.len() => end,
            _ => return (body.len(), None),
        };
    }
}

/// The batches of a stream, and why it ends early if it does.
fn decode_stream(mut body: Buffer) -> (Vec<RecordBatch>, Option<String>) {
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !body.is_empty() {
        // A panic of the decoder on another malformed message is caught:
        // such a stream is broken like any other, from that message on.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(&mut body)));
        match step {
            Ok(Ok(Some(batch))) => batches.push(batch),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return (batches, Some(e.to_string())),
            Err(panic) => {
                return (batches, Some(format!("a message the Arrow reader cannot decode ({})", panic_text(&panic))));
            }
        }
    }
    if decoder.schema().is_none() {
        return (batches, Some("the stream has no schema message".into()));
    }
    (batches, decoder.finish().err().map(|e| e.to_string()))
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied());
    crate::error::snippet(text.unwrap_or("no message"))
}

/// One producer column, resolved once per batch to what the checks read.
enum Col {
    Missing,
    /// Arrow type `Null`: every value is null.
    Nulls,
    Str(StringArray),
    U8(UInt8Array),
    I64(Int64Array),
    I32(Int32Array),
    U64(UInt64Array),
    U32(UInt32Array),
    /// A `Timestamp` column's raw values.
    Ts(Int64Array, TimeUnit),
    Unsupported(DataType),
}

impl Col {
    fn resolve(array: &ArrayRef) -> Col {
        match array.data_type() {
            DataType::Null => Col::Nulls,
            DataType::Utf8 => Col::Str(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Col::Str(array.as_string::<i64>().iter().collect()),
            DataType::Utf8View => Col::Str(array.as_string_view().iter().collect()),
            DataType::Dictionary(_, values)
                if matches!(values.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
            {
                let dict = array.as_any_dictionary();
                match arrow_select::take::take(dict.values().as_ref(), dict.keys(), None) {
                    Ok(flat) => Col::resolve(&flat),
                    Err(_) => Col::Unsupported(array.data_type().clone()),
                }
            }
            DataType::UInt8 => Col::U8(array.as_primitive::<UInt8Type>().clone()),
            DataType::Int64 => Col::I64(array.as_primitive::<Int64Type>().clone()),
            DataType::Int32 => Col::I32(array.as_primitive::<Int32Type>().clone()),
            DataType::UInt64 => Col::U64(array.as_primitive::<UInt64Type>().clone()),
            DataType::UInt32 => Col::U32(array.as_primitive::<UInt32Type>().clone()),
            DataType::Timestamp(unit, _) => {
                let (values, nulls) = match unit {
                    TimeUnit::Second => parts(array.as_primitive::<TimestampSecondType>()),
                    TimeUnit::Millisecond => parts(array.as_primitive::<TimestampMillisecondType>()),
                    TimeUnit::Microsecond => parts(array.as_primitive::<TimestampMicrosecondType>()),
                    TimeUnit::Nanosecond => parts(array.as_primitive::<TimestampNanosecondType>()),
                };
                Col::Ts(Int64Array::new(values, nulls), *unit)
            }
            other => Col::Unsupported(other.clone()),
        }
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Col::Missing | Col::Nulls => true,
            Col::Str(a) => a.is_null(row),
            Col::U8(a) => a.is_null(row),
            Col::I64(a) | Col::Ts(a, _) => a.is_null(row),
            Col::I32(a) => a.is_null(row),
            Col::U64(a) => a.is_null(row),
            Col::U32(a) => a.is_null(row),
            Col::Unsupported(_) => false,
        }
    }

    fn unsupported(&self, column: ColumnId) -> IngestError {
        let data_type = match self {
            Col::Unsupported(dt) => dt.to_string(),
            Col::Str(_) => "Utf8".into(),
            Col::U8(_) => "UInt8".into(),
            Col::I64(_) => "Int64".into(),
            Col::I32(_) => "Int32".into(),
            Col::U64(_) => "UInt64".into(),
            Col::U32(_) => "UInt32".into(),
            Col::Ts(_, unit) => format!("Timestamp({unit:?})"),
            Col::Missing | Col::Nulls => "Null".into(),
        };
        IngestError::UnsupportedArrowType { field: column.name(), data_type }
    }
}

fn parts<T: arrow_array::ArrowPrimitiveType<Native = i64>>(
    a: &arrow_array::PrimitiveArray<T>,
) -> (arrow_buffer::ScalarBuffer<i64>, Option<arrow_buffer::NullBuffer>) {
    (a.values().clone(), a.nulls().cloned())
}

/// The type of a row; `expected` stands in for an absent or null value.
fn type_cell(col: &Col, row: usize, expected: Option<EventType>) -> Result<EventType, IngestError> {
    let field = ColumnId::Type.name();
    if col.is_null(row) {
        return match (expected, col) {
            (Some(t), _) => Ok(t),
            (None, Col::Missing) => Err(IngestError::MissingField { field }),
            (None, _) => Err(IngestError::NullField { field }),
        };
    }
    let found = match col {
        Col::Str(a) => {
            let s = a.value(row);
            EventType::parse(s).ok_or_else(|| IngestError::BadType { found: snippet(s) })?
        }
        Col::U8(a) => {
            let code = a.value(row);
            EventType::from_code(code).ok_or_else(|| IngestError::BadType { found: format!("code {code}") })?
        }
        other => return Err(other.unsupported(ColumnId::Type)),
    };
    validate::type_value(found, expected)
}

/// `ts` of a row, in epoch milliseconds.
fn ts_cell(col: &Col, row: usize) -> Result<i64, IngestError> {
    let field = ColumnId::Ts.name();
    match col {
        Col::Missing => Err(IngestError::MissingField { field }),
        c if c.is_null(row) => Err(IngestError::NullField { field }),
        Col::I64(a) => Ok(a.value(row)),
        Col::Ts(a, unit) => {
            let v = a.value(row);
            match unit {
                TimeUnit::Second => v.checked_mul(1000).ok_or(IngestError::BadTimestamp { detail: "out of range" }),
                TimeUnit::Millisecond => Ok(v),
                TimeUnit::Microsecond => Ok(v.div_euclid(1_000)),
                TimeUnit::Nanosecond => Ok(v.div_euclid(1_000_000)),
            }
        }
        Col::Str(a) => rfc3339::parse_ms(a.value(row)).map_err(|detail| IngestError::BadTimestamp { detail }),
        other => Err(other.unsupported(ColumnId::Ts)),
    }
}

/// `cost_micros` / `value_micros` of a row: an integer >= 0, 0 when absent or null.
fn micros_cell(col: &Col, column: ColumnId, row: usize) -> Result<i64, IngestError> {
    let field = column.name();
    if col.is_null(row) {
        return Ok(0);
    }
    let negative = |v: i64| IngestError::ExpectedNonNegativeInt { field, found: v.to_string() };
    match col {
        Col::I64(a) => Some(a.value(row)).filter(|v| *v >= 0).ok_or_else(|| negative(a.value(row))),
        Col::I32(a) => {
            let v = i64::from(a.value(row));
            if v >= 0 { Ok(v) } else { Err(negative(v)) }
        }
        Col::U64(a) => i64::try_from(a.value(row)).map_err(|_| IngestError::ExpectedNonNegativeInt {
            field,
            found: format!("{}, which exceeds i64", a.value(row)),
        }),
        Col::U32(a) => Ok(i64::from(a.value(row))),
        Col::U8(a) => Ok(i64::from(a.value(row))),
        other => Err(other.unsupported(column)),
    }
}

/// A string field of a row: `None` when absent, null or (optional) empty.
fn str_cell(col: &Col, column: ColumnId, kind: EventType, row: usize) -> Result<Option<&str>, IngestError> {
    let required = validate::is_required(column, kind);
    let field = column.name();
    match col {
        Col::Missing if required => Err(IngestError::MissingField { field }),
        Col::Str(a) if !a.is_null(row) => validate::str_value(column, required, a.value(row)),
        Col::Missing | Col::Nulls | Col::Str(_) if required => Err(IngestError::NullField { field }),
        Col::Missing | Col::Nulls | Col::Str(_) => Ok(None),
        other => Err(other.unsupported(column)),
    }
}

/// Whether every cell of `a` passes [`str_cell`] as it is, for the event
/// type of its row (`kinds`, as codes): a value neither empty nor too long
/// (nor, for `country` and `device`, outside their formats), or a null
/// where the row's type does not require the field. Such a column (most of
/// them) needs no look row by row: the per-cell checks were a twentieth of
/// Arrow ingest. Checking the columns with nulls as whole columns too took
/// the row checks from 4.8-5.4% of the server's samples to 3.8-4.1%.
fn all_plain(a: &StringArray, column: ColumnId, kinds: &[u8]) -> bool {
    let values = a.values().as_slice();
    let value = |w: &[i32]| values.get(w[0] as usize..w[1] as usize).unwrap_or_default();
    match column {
        // Their formats, checked value by value but without the row-by-row
        // path (which was 3% of an Arrow load for these two columns).
        ColumnId::Country => all_cells(a, column, kinds, |w| {
            let v = value(w);
            v.len() == 2 && v.iter().all(u8::is_ascii_uppercase)
        }),
        ColumnId::Device => all_cells(a, column, kinds, |w| validate::is_device(value(w))),
        _ => {
            let max = if column == ColumnId::EventId { validate::MAX_EVENT_ID_BYTES } else { validate::MAX_STR_BYTES };
            all_cells(a, column, kinds, |w| (1..=max).contains(&((w[1] - w[0]) as usize)))
        }
    }
}

/// Whether every cell of `a` is one that `fits` (given the cell's two
/// offsets) or a null where the row's type does not require `column`.
fn all_cells(a: &StringArray, column: ColumnId, kinds: &[u8], fits: impl Fn(&[i32]) -> bool) -> bool {
    let Some(nulls) = a.nulls() else {
        return a.offsets().windows(2).all(fits);
    };
    // By type code; a code outside them takes the row-by-row path.
    let null_ok = EventType::ALL.map(|t| !validate::is_required(column, t));
    a.offsets().windows(2).zip(kinds).enumerate().all(|(row, (w, &k))| {
        if nulls.is_null(row) { null_ok.get(usize::from(k)).copied().unwrap_or(false) } else { fits(w) }
    })
}

/// `fault[row]` values: 0 is a valid row; otherwise the first check it
/// failed: `1 + i` for the column `INPUT_COLUMNS[i]`, then the time window,
/// then the publisher scope.
const FAULT_NONE: u8 = 0;
const fn fault_column(i: usize) -> u8 {
    1 + i as u8
}
const FAULT_WINDOW: u8 = fault_column(INPUT_FIELDS);
/// A valid row of a publisher the sender may not send for.
const FAULT_PUBLISHER: u8 = fault_column(INPUT_FIELDS + 1);

/// The columns of a batch by input field, or the schema-level fault that rejects every row.
fn resolve_columns(batch: &RecordBatch) -> Result<Vec<Col>, IngestError> {
    let mut cols: Vec<Col> = (0..INPUT_FIELDS).map(|_| Col::Missing).collect();
    let mut duplicate = None;
    let schema = batch.schema();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let Some(column) = input_column(field.name()) else {
            return Err(IngestError::UnknownField { field: snippet(field.name()) });
        };
        let slot = &mut cols[column.index()];
        if matches!(slot, Col::Missing) {
            *slot = Col::resolve(array);
        } else {
            duplicate.get_or_insert(column);
        }
    }
    match duplicate {
        Some(column) => Err(IngestError::DuplicateField { field: column.name() }),
        None => Ok(cols),
    }
}

/// Checks one slice of a record batch; `first_line` is the stream row number of its first row.
fn check_batch(batch: &RecordBatch, first_line: usize, opts: &ParseOptions) -> ChunkOut {
    let n = batch.num_rows();
    let mut out =
        ChunkOut { batch: EventBatch::empty(), rejected: 0, rejected_late: 0, rejected_future: 0, errors: Vec::new() };
    let cols = match resolve_columns(batch) {
        Ok(cols) => cols,
        Err(error) => {
            out.rejected = n;
            out.errors = (0..n.min(opts.max_errors)).map(|row| LineError::new(first_line + row, &error)).collect();
            return out;
        }
    };
    let col = |c: ColumnId| &cols[c.index()];
    let mut fault = vec![FAULT_NONE; n];

    // Columns of the types the store keeps, without nulls and with every
    // value valid, are taken whole: looking at each cell was 2-3% of an
    // Arrow load.
    let mut kinds = vec![0u8; n];
    let type_ok = |code: u8| EventType::from_code(code).is_some_and(|t| opts.expected_type.is_none_or(|e| e == t));
    match col(ColumnId::Type) {
        Col::U8(a) if a.null_count() == 0 && a.values().iter().all(|&c| type_ok(c)) => {
            kinds.copy_from_slice(a.values())
        }
        source => {
            let type_fault = fault_column(ColumnId::Type.index());
            for (row, k) in kinds.iter_mut().enumerate() {
                match type_cell(source, row, opts.expected_type) {
                    Ok(t) => *k = t as u8,
                    Err(_) => fault[row] = type_fault,
                }
            }
        }
    }
    let kind_of = |row: usize| EventType::from_code(kinds[row]).unwrap_or_default();

    let mut columns: Vec<Option<ArrayRef>> = vec![None; COLUMNS.len()];
    let mut ts = vec![0i64; n];
    for column in INPUT_COLUMNS {
        let code = fault_column(column.index());
        let source = col(column);
        let array: ArrayRef = match column {
            ColumnId::Type => continue,
            ColumnId::Ts => {
                if let Col::I64(a) = source
                    && a.null_count() == 0
                {
                    ts.copy_from_slice(a.values());
                    continue;
                }
                for (row, v) in ts.iter_mut().enumerate() {
                    if fault[row] == FAULT_NONE {
                        match ts_cell(source, row) {
                            Ok(t) => *v = t,
                            Err(_) => fault[row] = code,
                        }
                    }
                }
                continue;
            }
            ColumnId::CostMicros | ColumnId::ValueMicros => {
                if let Col::I64(a) = source
                    && a.null_count() == 0
                    && a.values().iter().all(|v| *v >= 0)
                {
                    columns[column.index()] = Some(Arc::new(a.clone()));
                    continue;
                }
                let mut values = vec![0i64; n];
                for (row, v) in values.iter_mut().enumerate() {
                    if fault[row] == FAULT_NONE {
                        match micros_cell(source, column, row) {
                            Ok(m) => *v = m,
                            Err(_) => fault[row] = code,
                        }
                    }
                }
                Arc::new(Int64Array::from(values))
            }
            _ => {
                let mut empty_to_null = false;
                let plain = matches!(source, Col::Str(a) if all_plain(a, column, &kinds));
                if !plain {
                    for (row, f) in fault.iter_mut().enumerate().filter(|(_, f)| **f == FAULT_NONE) {
                        match str_cell(source, column, kind_of(row), row) {
                            Ok(None) => empty_to_null |= !source.is_null(row),
                            Ok(Some(_)) => {}
                            Err(_) => *f = code,
                        }
                    }
                }
                match source {
                    Col::Str(a) if empty_to_null => {
                        Arc::new(a.iter().map(|v| v.filter(|s| !s.is_empty())).collect::<StringArray>())
                    }
                    Col::Str(a) => Arc::new(a.clone()),
                    _ => new_null_array(&DataType::Utf8, n),
                }
            }
        };
        columns[column.index()] = Some(array);
    }

    for (row, f) in fault.iter_mut().enumerate() {
        if *f == FAULT_NONE
            && let Err(e) = validate::time_window(ts[row], opts)
        {
            *f = FAULT_WINDOW;
            match e {
                IngestError::Late { .. } => out.rejected_late += 1,
                _ => out.rejected_future += 1,
            }
        }
    }

    let publisher_ids = columns[ColumnId::PublisherId.index()]
        .as_ref()
        .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        .filter(|_| opts.publishers.is_some());
    if let Some(ids) = publisher_ids {
        for (row, f) in fault.iter_mut().enumerate() {
            if *f == FAULT_NONE && validate::publisher_allowed(ids.value(row), opts).is_err() {
                *f = FAULT_PUBLISHER;
            }
        }
    }

    // Errors in row order; each is found again by the check that failed the
    // row, so the detailed error is built only for the rows listed.
    for (row, &f) in fault.iter().enumerate().filter(|(_, f)| **f != FAULT_NONE) {
        out.rejected += 1;
        if out.errors.len() >= opts.max_errors {
            continue;
        }
        let error = match f {
            FAULT_WINDOW => validate::time_window(ts[row], opts).err(),
            FAULT_PUBLISHER => publisher_ids.and_then(|ids| validate::publisher_allowed(ids.value(row), opts).err()),
            _ => {
                let column = INPUT_COLUMNS[usize::from(f - fault_column(0))];
                let source = col(column);
                match column {
                    ColumnId::Type => type_cell(source, row, opts.expected_type).err(),
                    ColumnId::Ts => ts_cell(source, row).err(),
                    ColumnId::CostMicros | ColumnId::ValueMicros => micros_cell(source, column, row).err(),
                    _ => str_cell(source, column, kind_of(row), row).err(),
                }
            }
        };
        if let Some(error) = error {
            out.errors.push(LineError::new(first_line + row, &error));
        }
    }

    columns[ColumnId::Type.index()] = Some(Arc::new(UInt8Array::from(kinds)));
    columns[ColumnId::Ts.index()] = Some(Arc::new(Int64Array::from(ts)));
    let mut columns: Vec<ArrayRef> = columns.into_iter().take(INPUT_FIELDS).flatten().collect();
    if out.rejected > 0 {
        let mask: BooleanArray = fault.iter().map(|f| Some(*f == FAULT_NONE)).collect();
        let predicate = FilterBuilder::new(&mask).optimize().build();
        // Invariant: filtering arrays of equal length by a mask of that length cannot fail.
        columns = columns.iter().map(|c| predicate.filter(c.as_ref()).expect("mask matches the batch")).collect();
    }
    let rows = n - out.rejected;
    columns.push(Arc::new(BooleanArray::from(vec![false; rows])));
    columns.push(new_null_array(&DataType::Utf8, rows));
    columns.push(Arc::new(UInt8Array::from(vec![InvalidReason::Valid as u8; rows])));
    // Invariant: one array per column of the event schema, of its type, and
    // every row with a null in a required column was filtered out above.
    let record = RecordBatch::try_new(event_schema(), columns).expect("columns follow the event schema");
    out.batch = EventBatch::try_new(record).expect("rows passed validation");
    out
}

#[cfg(test)]
mod tests;
