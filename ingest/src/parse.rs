//! Request bodies (NDJSON or a JSON array) to an [`EventBatch`] of valid events.
//!
//! ```text
//!  body ──split (iterator)──► chunks of 16,384 Item{range, line} ──par_bridge (rayon)──► per chunk:
//!                 fast::read_into, else serde (RawEvent, borrowed) ─► check ─► EventBatchBuilder
//!                                                                  │ reject
//!                                                                  ▼
//!                                                     counts + first `max_errors` LineErrors
//!  chunks, sorted back to body order ──EventBatch::concat──► ParseOutcome
//! ```
//!
//! Invariants:
//! - every non-blank line (array element) is either one row of
//!   `ParseOutcome::batch` or counted in `ParseOutcome::rejected`, never both;
//! - accepted rows keep the order of the body;
//! - `errors` lists the first `max_errors` rejections in body order, while the
//!   counts are exact;
//! - nothing is allocated per event beyond the copies of escaped strings (and
//!   the error of a rejected line); no JSON tree is built.
//!
//! Decisions where DESIGN.md is silent:
//! - one error per rejected line, the first found: malformed JSON, then
//!   unknown / duplicate keys, then `type`, then the fields in schema order,
//!   then the time window (so `rejected_late` / `rejected_future` count only
//!   events that were otherwise valid);
//! - an empty string in an optional field is stored as null (see `validate`);
//! - integer `ts` may be negative (pre-1970); only the lateness bound limits age;
//! - a JSON array body is judged element by element like NDJSON; a defect of
//!   the array itself (missing `[` or `]`, text after it) is one extra
//!   rejection, and the complete elements before it are kept;
//! - a leading UTF-8 byte order mark is ignored.

mod fast;
pub(crate) mod raw;
pub(crate) mod rfc3339;
mod split;
pub(crate) mod validate;

use adstore_storage::{EventBatch, EventBatchBuilder, EventType};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::IngestError;
use raw::RawEvent;
use split::Item;

/// How to parse and which events to accept.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// The type implied by a typed endpoint (`/v1/events/clicks:batch`): a
    /// line may omit `type`, and a line of another type is rejected.
    /// Default: `None`, every line names its type.
    pub expected_type: Option<EventType>,
    /// Longest accepted line (array element), in bytes; longer ones are
    /// rejected without being parsed. Default: 1 MiB.
    pub max_line_bytes: usize,
    /// The server clock, epoch ms UTC. Default: the system clock when the
    /// options are created.
    pub now_ms: i64,
    /// How far `ts` may be ahead of `now_ms`. Default: 5 minutes.
    pub max_future_skew_ms: i64,
    /// Events with `ts` below this are rejected as late; `None` accepts any
    /// age (backfill). Default: `None`.
    pub min_ts_ms: Option<i64>,
    /// How many rejections are listed in [`ParseOutcome::errors`]; the
    /// counts stay exact. Default: 100.
    pub max_errors: usize,
    /// Whether a body of several chunks is parsed on the rayon pool, in
    /// parallel, rather than on the calling thread. Default: `true`. The
    /// server parses on the pool only while no other request is being
    /// parsed: requests side by side keep the cores busy already, and
    /// handing chunks to the pool then only adds thread switches (checking
    /// the chunks of Arrow requests on the calling thread took 4-9% off
    /// the server's CPU in a 10M-event load with four requests in flight).
    pub parallel: bool,
    /// The publishers the sender may send events for (an `ingest` token's
    /// scope): a line of another publisher is rejected with
    /// [`IngestError::PublisherNotAllowed`]. Default: `None`, any publisher.
    pub publishers: Option<Vec<String>>,
}

impl Default for ParseOptions {
    fn default() -> ParseOptions {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        ParseOptions {
            expected_type: None,
            max_line_bytes: 1 << 20,
            now_ms,
            max_future_skew_ms: 5 * 60 * 1000,
            min_ts_ms: None,
            max_errors: 100,
            parallel: true,
            publishers: None,
        }
    }
}

/// What became of a request body.
#[derive(Debug, Clone)]
pub struct ParseOutcome {
    /// The valid events, in body order, in one or more batches: a large
    /// body is checked in parallel chunks, and each chunk's valid events
    /// stay a batch of their own rather than being copied into one (the
    /// store appends them together, see `ExactlyOnce::ingest_all`).
    pub batches: Vec<EventBatch>,
    /// Lines rejected for any reason, including late and future ones.
    pub rejected: usize,
    /// The first `max_errors` rejections, in body order.
    pub errors: Vec<LineError>,
    /// Of `rejected`, those rejected as late.
    pub rejected_late: usize,
    /// Of `rejected`, those rejected as too far in the future.
    pub rejected_future: usize,
}

impl ParseOutcome {
    /// Number of accepted events.
    pub fn accepted(&self) -> usize {
        self.batches.iter().map(EventBatch::num_rows).sum()
    }

    /// The valid events as one batch: a copy when there are several.
    pub fn batch(&self) -> EventBatch {
        match self.batches.as_slice() {
            [] => EventBatch::empty(),
            [one] => one.clone(),
            // Invariant: every batch is an event batch, so all share the event schema.
            many => EventBatch::concat(many).expect("batches share the event schema"),
        }
    }

    /// The latest event time of the valid events.
    pub fn max_ts(&self) -> Option<i64> {
        self.batches.iter().filter_map(|b| b.ts().iter().max().copied()).max()
    }
}

/// One rejected line, as returned to the producer: `{"line","field","reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line of the body (for a JSON array, the line where the element starts).
    pub line: usize,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub reason: String,
}

impl LineError {
    pub(crate) fn new(line: usize, error: &IngestError) -> LineError {
        LineError { line, field: error.field().map(str::to_owned), reason: error.to_string() }
    }
}

/// Parses an NDJSON body: one event object per line. Blank lines are
/// skipped; `\r\n` line endings are fine.
pub fn parse_ndjson(body: &[u8], opts: &ParseOptions) -> ParseOutcome {
    let body = strip_bom(body);
    parse_items(body, split::NdjsonItems::new(body), opts, CHUNK_ITEMS)
}

/// Parses a body holding one JSON array of event objects. Each element is
/// judged on its own, like an NDJSON line, and reported at the line where
/// it starts. A defect in the array itself (no `[`, no closing `]`, text
/// after it) is one more rejection, after those of the elements read.
pub fn parse_json_array(body: &[u8], opts: &ParseOptions) -> ParseOutcome {
    let body = strip_bom(body);
    let mut items = split::ArrayItems::new(body);
    let mut out = parse_items(body, &mut items, opts, CHUNK_ITEMS);
    if let Some(e) = items.error {
        out.rejected += 1;
        if out.errors.len() < opts.max_errors {
            let error = IngestError::MalformedJson { message: e.message };
            out.errors.push(LineError::new(e.line, &error));
        }
    }
    out
}

/// A UTF-8 byte order mark is not JSON, but some producers write one.
fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Events per parse task; a body of at most this many is parsed on the
/// calling thread. Bulk loaders keep several requests in flight, which
/// already fills the cores; splitting a 10,000-event request as well cost
/// a concatenation of the chunks and more builder growth (NDJSON ingest of
/// 10M events: server CPU 16.4-18.6 s against 17.9-21.7 s with chunks of
/// 4,096). Only the chunks being parsed have their items in memory.
const CHUNK_ITEMS: usize = 16384;

/// The result of one chunk, before merging.
pub(crate) struct ChunkOut {
    pub(crate) batch: EventBatch,
    pub(crate) rejected: usize,
    pub(crate) rejected_late: usize,
    pub(crate) rejected_future: usize,
    /// The chunk's first `max_errors` rejections, in body order.
    pub(crate) errors: Vec<LineError>,
}

/// Parses the items `split` yields, `chunk_items` at a time, in parallel
/// unless `opts.parallel` is off; results keep body order.
fn parse_items(
    body: &[u8],
    split: impl Iterator<Item = Item> + Send,
    opts: &ParseOptions,
    chunk_items: usize,
) -> ParseOutcome {
    let chunk_items = chunk_items.max(1);
    let mut chunks = Chunks { items: split, size: chunk_items }.enumerate().peekable();
    let Some((_, first)) = chunks.next() else { return merge(Vec::new(), opts) };
    if chunks.peek().is_none() || !opts.parallel {
        let rest = chunks.map(|(_, items)| parse_chunk(body, &items, opts));
        return merge(std::iter::once(parse_chunk(body, &first, opts)).chain(rest).collect(), opts);
    }
    let mut parsed: Vec<(usize, ChunkOut)> = std::iter::once((0, first))
        .chain(chunks)
        .par_bridge()
        .map(|(i, items)| (i, parse_chunk(body, &items, opts)))
        .collect();
    parsed.sort_unstable_by_key(|(i, _)| *i);
    merge(parsed.into_iter().map(|(_, c)| c).collect(), opts)
}

/// Items taken `size` at a time.
struct Chunks<I> {
    items: I,
    size: usize,
}

impl<I: Iterator<Item = Item>> Iterator for Chunks<I> {
    type Item = Vec<Item>;

    fn next(&mut self) -> Option<Vec<Item>> {
        let chunk: Vec<Item> = self.items.by_ref().take(self.size).collect();
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// Joins chunk results, in body order, into one outcome.
pub(crate) fn merge(chunks: Vec<ChunkOut>, opts: &ParseOptions) -> ParseOutcome {
    let mut out =
        ParseOutcome { batches: Vec::new(), rejected: 0, errors: Vec::new(), rejected_late: 0, rejected_future: 0 };
    for chunk in chunks {
        out.rejected += chunk.rejected;
        out.rejected_late += chunk.rejected_late;
        out.rejected_future += chunk.rejected_future;
        let room = opts.max_errors.saturating_sub(out.errors.len());
        out.errors.extend(chunk.errors.into_iter().take(room));
        if !chunk.batch.is_empty() {
            out.batches.push(chunk.batch);
        }
    }
    out
}

/// Fewer bytes than any valid event line takes: its seven required fields'
/// names alone are longer.
const MIN_EVENT_BYTES: usize = 64;

fn parse_chunk(body: &[u8], items: &[Item], opts: &ParseOptions) -> ChunkOut {
    // Room for as many events as the chunk's bytes can hold, not one per
    // line: a body of millions of tiny lines (`{}`) is all rejections.
    let bytes = items.last().map_or(0, |l| l.end) - items.first().map_or(0, |f| f.start);
    let mut builder = EventBatchBuilder::with_capacity(items.len().min(bytes / MIN_EVENT_BYTES + 1));
    let mut out =
        ChunkOut { batch: EventBatch::empty(), rejected: 0, rejected_late: 0, rejected_future: 0, errors: Vec::new() };
    // One UTF-8 check for the whole chunk lets serde skip it for every string
    // (`from_str`), which is most of its per-string cost. Item bounds sit
    // next to ASCII bytes, so they are char boundaries of a valid chunk.
    let base = items.first().map_or(0, |i| i.start);
    let text = items.last().and_then(|last| std::str::from_utf8(&body[base..last.end]).ok());
    let mut raw = RawEvent::empty();
    let mut keys = fast::KeyOrder::default();
    for item in items {
        let line = match text.and_then(|t| t.get(item.start - base..item.end - base)) {
            Some(s) => Line::Text(s),
            None => Line::Bytes(&body[item.start..item.end]),
        };
        raw.clear();
        let Err(error) = parse_one(&mut builder, &mut raw, &mut keys, line, item, opts) else {
            continue;
        };
        out.rejected += 1;
        match error {
            IngestError::Late { .. } => out.rejected_late += 1,
            IngestError::Future { .. } => out.rejected_future += 1,
            _ => {}
        }
        if out.errors.len() < opts.max_errors {
            out.errors.push(LineError::new(item.line, &error));
        }
    }
    out.batch = builder.finish();
    out
}

/// One item's bytes, already known to be UTF-8 or not.
#[derive(Clone, Copy)]
enum Line<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Parses, checks and appends one event; on error nothing is appended.
/// `raw` is empty scratch space for the event as read.
fn parse_one<'a>(
    builder: &mut EventBatchBuilder,
    raw: &mut RawEvent<'a>,
    keys: &mut fast::KeyOrder,
    line: Line<'a>,
    item: &Item,
    opts: &ParseOptions,
) -> Result<(), IngestError> {
    let len_bytes = match line {
        Line::Text(s) => s.len(),
        Line::Bytes(b) => b.len(),
    };
    if len_bytes > opts.max_line_bytes {
        return Err(IngestError::LineTooLong { len_bytes, max_bytes: opts.max_line_bytes });
    }
    if len_bytes == 0 {
        let message = format!("empty array element at column {}", item.col);
        return Err(IngestError::MalformedJson { message });
    }
    match line {
        Line::Text(s) if fast::read_into(s, raw, keys) => {}
        Line::Text(s) => *raw = serde_json::from_str(s).map_err(|e| malformed(&e, item))?,
        Line::Bytes(b) => *raw = serde_json::from_slice(b).map_err(|e| malformed(&e, item))?,
    }
    let event = validate::check(raw, opts)?;
    validate::push(builder, &event);
    Ok(())
}

/// serde's message with its position made absolute in the body.
fn malformed(e: &serde_json::Error, item: &Item) -> IngestError {
    let full = e.to_string();
    let message = if e.line() == 0 {
        full
    } else {
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let text = full.strip_suffix(&suffix).unwrap_or(&full);
        let line = item.line + e.line() - 1;
        let col = if e.line() == 1 { item.col + e.column().saturating_sub(1) } else { e.column() };
        if line == item.line {
            format!("{text} at column {col}")
        } else {
            format!("{text} at line {line} column {col}")
        }
    };
    IngestError::MalformedJson { message }
}

#[cfg(test)]
mod tests;
