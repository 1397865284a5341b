//! `adstore ingest FILE|-`: bulk-load NDJSON or an Arrow IPC stream into a
//! running server.
//!
//! ```text
//!  reader (calling thread): NDJSON: read 1 MiB chunks, cut at line boundaries
//!    into batches of --batch-size lines (in buffers reused once sent);
//!    Arrow IPC stream (detected by its first bytes): each record batch of
//!    at most --batch-size rows as read (schema + batch bytes); from the
//!    first one that is not, decode and slice into --batch-size rows
//!        ──► bounded queue ──► --concurrency workers:
//!        [NDJSON with --format arrow: parse client-side, encode Arrow IPC]
//!        [decoded Arrow slices: encode each as one IPC stream]
//!        POST /v1/events ─► 2xx/400/422: count accepted / duplicates / rejected
//!                        ─► 429, 5xx, connection error: retry the same bytes after a backoff
//!                        ─► other statuses: the batch fails, the run exits 1
//! ```
//!
//! A retried batch carries the same lines, so the same event ids: the
//! server's dedupe turns a retry of a batch that did land into duplicates,
//! which makes the load exactly-once. Progress goes to stderr (hidden when
//! stderr is not a terminal), the summary to stdout.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, IsTerminal, Read};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use adstore_ingest::{ParseOptions, parse_ndjson};
use adstore_storage::{ColumnId, EventBatch};
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memchr::memchr_iter;
use serde::Deserialize;

use crate::error::ServerError;
use crate::http::EXPECTED_EVENTS_HEADER;
use adstore_storage::{BufferPool, PooledBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// Send the lines as they are (application/x-ndjson).
    Ndjson,
    /// Parse client-side and send Arrow IPC streams (application/vnd.apache.arrow.stream).
    Arrow,
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// NDJSON file or Arrow IPC stream (as `adstore gen --format arrow`
    /// writes) to load, or - for stdin. An Arrow input is sent as Arrow IPC
    /// whatever --format says.
    input: String,
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Events per request: lines of an NDJSON input (default 10000), rows
    /// of an Arrow input (default 65536).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Wire format of the requests.
    #[arg(long, value_enum, default_value_t = WireFormat::Ndjson)]
    format: WireFormat,
    /// Accept events of any age (?mode=backfill), for loading history.
    #[arg(long)]
    backfill: bool,
    /// Attempts per batch before giving up on it.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// Seconds a batch may wait, in all, on a server that says when to come
    /// back (429 or 503 with Retry-After: a rate limit, a full head). Those
    /// waits do not count against --max-attempts.
    #[arg(long, default_value_t = 600)]
    max_wait: u64,
}

/// Default `--batch-size` of an NDJSON input, in lines.
const NDJSON_BATCH_LINES: usize = 10_000;
/// Default `--batch-size` of an Arrow input, in rows: eight of the 8,192-row
/// batches `adstore gen --format arrow` writes. Fewer, larger requests
/// cost fewer round trips and fsync waits (10M events from an Arrow file:
/// 2.69–2.90M events/s against 2.42–2.52M with one batch per request).
const ARROW_BATCH_ROWS: usize = 65_536;
/// Read-ahead of an Arrow input, for the frames of its messages; bodies
/// are read past it, straight into request buffers.
const ARROW_READ_BUFFER: usize = 64 << 10;
/// Bytes read from the input at a time.
const READ_CHUNK: usize = 1 << 20;
/// Batch buffers larger than this are freed after sending instead of reused.
const BATCH_BUFFER_MAX_KEPT_BYTES: usize = 256 << 20;
/// Per-line errors printed at the end.
const SHOWN_ERRORS: usize = 20;

/// The first bytes of an Arrow IPC stream: the continuation marker of its
/// schema message. No NDJSON text starts with 0xFF.
const ARROW_STREAM_START: [u8; 4] = [0xFF; 4];

/// A run of whole lines, or of rows, of the input.
struct Batch {
    /// 1-based line (NDJSON) or row (Arrow input) number of the first event.
    first_line: usize,
    /// Non-blank lines or rows, i.e. events.
    events: u64,
    body: Payload,
}

enum Payload {
    /// NDJSON lines as read; the buffer goes back to the reader once sent.
    Lines(PooledBuf),
    /// Rows of an Arrow input, encoded by the worker that sends them.
    Rows(RecordBatch),
    /// An Arrow IPC stream as read from the input, sent as it is.
    Ipc(PooledBuf),
}

/// Cuts a byte stream into batches of whole lines.
///
/// Batch buffers come from a pool and return to it when the worker drops
/// them after sending: megabytes of fresh memory per batch otherwise cost
/// the kernel mapping and zeroing pages each time.
struct Splitter<R> {
    input: R,
    pool: Arc<BufferPool>,
    pending: PooledBuf,
    /// Bytes of `pending` already searched for newlines, the newlines
    /// found there, how many of the lines they end are not blank, and where
    /// the line after the last of them starts.
    scanned: usize,
    newlines: usize,
    events: u64,
    line_start: usize,
    next_line: usize,
    eof: bool,
}

impl<R: Read> Splitter<R> {
    fn new(input: R, pool: Arc<BufferPool>) -> Splitter<R> {
        let pending = pool.take();
        Splitter { input, pool, pending, scanned: 0, newlines: 0, events: 0, line_start: 0, next_line: 1, eof: false }
    }

    fn next_batch(&mut self, lines: usize) -> std::io::Result<Option<Batch>> {
        loop {
            // Newlines and non-blank lines are counted in one pass (a second
            // pass over each batch to count events was a tenth of the
            // client's time).
            let mut cut = None;
            for pos in memchr_iter(b'\n', &self.pending[self.scanned..]) {
                let end = self.scanned + pos;
                self.events += u64::from(!is_blank(&self.pending[self.line_start..end]));
                self.line_start = end + 1;
                self.newlines += 1;
                if self.newlines == lines {
                    cut = Some(end + 1);
                    break;
                }
            }
            if let Some(cut) = cut {
                let mut rest = self.pool.take();
                rest.vec_mut().extend_from_slice(&self.pending[cut..]);
                self.pending.vec_mut().truncate(cut);
                let body = std::mem::replace(&mut self.pending, rest);
                return Ok(Some(self.batch(body, lines)));
            }
            self.scanned = self.pending.len();
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                // A last line without a newline.
                let unterminated = self.line_start < self.pending.len();
                if unterminated {
                    self.events += u64::from(!is_blank(&self.pending[self.line_start..]));
                }
                let body = std::mem::replace(&mut self.pending, self.pool.take());
                let lines = self.newlines + usize::from(unterminated);
                return Ok(Some(self.batch(body, lines)));
            }
            // Into spare capacity: `read_to_end` does not zero it first, and
            // retries reads that were interrupted.
            let pending = self.pending.vec_mut();
            pending.reserve(READ_CHUNK);
            if (&mut self.input).take(READ_CHUNK as u64).read_to_end(pending)? == 0 {
                self.eof = true;
            }
        }
    }

    fn batch(&mut self, body: PooledBuf, lines: usize) -> Batch {
        let first_line = self.next_line;
        self.next_line += lines;
        let events = std::mem::take(&mut self.events);
        self.scanned = 0;
        self.newlines = 0;
        self.line_start = 0;
        Batch { first_line, events, body: Payload::Lines(body) }
    }
}

/// Whether a line holds nothing but whitespace. (It stops at the first
/// other byte, the line's first for any event.)
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Queues an Arrow IPC stream. Record batches go out as they are: their
/// message bytes, behind the stream's schema message, are the request body,
/// with nothing decoded or re-encoded (decoding, checking and re-encoding
/// each batch was most of the client's time). Consecutive batches share a
/// request while together they hold at most `rows` rows and `max_bytes`
/// bytes ([`MAX_JOINED_REQUEST_BYTES`] in a load): fewer, larger requests
/// cost fewer round trips and fsync waits. At the first message that cannot
/// go out as it is (a batch larger than `rows`, a dictionary, bytes that are
/// not a message), the rest of the stream goes to [`queue_arrow_rows`],
/// which decodes it and reports any error.
fn queue_arrow_input(
    mut input: impl Read,
    path: &str,
    limits: (usize, usize),
    pool: &Arc<BufferPool>,
    tx: &mpsc::SyncSender<Batch>,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let (rows, max_bytes) = limits;
    let bad = |source| ServerError::Io { path: path.to_string(), source };
    let mut schema = Vec::new();
    let whole = match read_ipc_frame(&mut input, &mut schema).map_err(bad)? {
        IpcFrame::Message { kind: IpcKind::Schema, body_len } => {
            read_up_to(&mut input, &mut schema, body_len).map_err(bad)?
        }
        IpcFrame::Message { .. } | IpcFrame::End | IpcFrame::Unsupported => false,
    };
    // Anything else, or a schema the decoder cannot read, is left to the
    // decoder, to say why.
    if !whole || arrow_ipc::convert::try_schema_from_ipc_buffer(&schema).is_err() {
        return queue_arrow_rows(Cursor::new(schema).chain(input), path, rows, 1, tx, stop);
    }
    // The request being filled: the schema, then whole batch messages read
    // straight into it, so a batch's bytes are not copied again.
    let mut request = Request::new(&schema, pool);
    let mut frame = Vec::new();
    let leftover = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        frame.clear();
        match read_ipc_frame(&mut input, &mut frame).map_err(bad)? {
            // An empty batch adds nothing to a request: read past it.
            IpcFrame::Message { kind: IpcKind::RecordBatch(0), body_len } => {
                if !read_up_to(&mut input, &mut frame, body_len).map_err(bad)? {
                    break std::mem::take(&mut frame);
                }
            }
            IpcFrame::Message { kind: IpcKind::RecordBatch(n), body_len } if n <= rows => {
                let message_len = frame.len() + body_len;
                let fits = request.rows + n <= rows && request.bytes.len() + message_len <= max_bytes;
                if request.rows > 0 && !fits && !request.send(&schema, pool, tx) {
                    return Ok(());
                }
                if request.rows == 0 {
                    // Room for as many messages like this one as fit, and
                    // one more for messages a little larger, so the request
                    // is not copied as it grows (a pooled buffer has it).
                    let like = (rows / n).min(max_bytes / message_len.max(1)).max(1);
                    request.bytes.vec_mut().reserve(message_len.saturating_mul(like + 1) + IPC_END.len());
                }
                let bytes = request.bytes.vec_mut();
                let at = bytes.len();
                bytes.extend_from_slice(&frame);
                if !read_up_to(&mut input, bytes, body_len).map_err(bad)? {
                    // Cut short: the decoder reports it, after the whole batches before it.
                    break bytes.split_off(at);
                }
                request.rows += n;
            }
            IpcFrame::End if frame.is_empty() => break Vec::new(),
            IpcFrame::Message { .. } | IpcFrame::End | IpcFrame::Unsupported => break std::mem::take(&mut frame),
        }
    };
    let first_row = request.first_row + request.rows;
    if request.rows > 0 && !request.send(&schema, pool, tx) {
        return Ok(());
    }
    if leftover.is_empty() {
        return Ok(());
    }
    let rest = Cursor::new(schema).chain(Cursor::new(leftover)).chain(input);
    queue_arrow_rows(rest, path, rows, first_row, tx, stop)
}

/// Largest request that [`queue_arrow_input`] makes by joining record
/// batches: half the server's default `server.max_body_bytes`, so wide rows
/// do not turn a joined request into a 413. A single larger batch still goes
/// out alone, as it is.
const MAX_JOINED_REQUEST_BYTES: usize = 32 << 20;

/// A request of whole record batch messages being filled by
/// [`queue_arrow_input`], in a buffer from its pool: a fresh one per
/// request cost the kernel mapping and zeroing its pages each time.
struct Request {
    bytes: PooledBuf,
    rows: usize,
    /// 1-based row of the input of its first row.
    first_row: usize,
}

impl Request {
    fn new(schema: &[u8], pool: &Arc<BufferPool>) -> Request {
        Request { bytes: Request::buffer(schema, pool), rows: 0, first_row: 1 }
    }

    fn buffer(schema: &[u8], pool: &Arc<BufferPool>) -> PooledBuf {
        let mut bytes = pool.take();
        bytes.vec_mut().extend_from_slice(schema);
        bytes
    }

    /// Queues the request, ended as a stream, and starts the next one;
    /// `false` when the workers are gone.
    fn send(&mut self, schema: &[u8], pool: &Arc<BufferPool>, tx: &mpsc::SyncSender<Batch>) -> bool {
        let mut bytes = std::mem::replace(&mut self.bytes, Request::buffer(schema, pool));
        bytes.vec_mut().extend_from_slice(&IPC_END);
        let batch = Batch { first_line: self.first_row, events: self.rows as u64, body: Payload::Ipc(bytes) };
        self.first_row += self.rows;
        self.rows = 0;
        tx.send(batch).is_ok()
    }
}

/// The end-of-stream marker of the IPC stream format.
const IPC_END: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Largest message the pass-through reads whole; a longer one is left to
/// the decoder.
const MAX_IPC_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpcKind {
    Schema,
    /// A record batch of this many rows.
    RecordBatch(usize),
    Other,
}

/// What [`read_ipc_frame`] found.
enum IpcFrame {
    /// A message's framing and metadata; its body, `body_len` bytes, comes
    /// next in the input.
    Message { kind: IpcKind, body_len: usize },
    /// The end-of-stream marker, or the end of the input (the bytes hold
    /// what was read of a message cut short, if anything).
    End,
    /// Bytes that do not frame a message this reader understands.
    Unsupported,
}

/// Reads the frame of one message, appending what it reads to `bytes`:
/// `0xFFFFFFFF`, a little-endian `i32` metadata length, the metadata (a
/// flatbuffer `Message`, which gives the `bodyLength` of the body that
/// follows). The end-of-stream marker is not kept.
fn read_ipc_frame(input: &mut impl Read, bytes: &mut Vec<u8>) -> std::io::Result<IpcFrame> {
    let at = bytes.len();
    if !read_up_to(input, bytes, 8)? {
        return Ok(IpcFrame::End);
    }
    if bytes[at..at + 4] != [0xFF; 4] {
        return Ok(IpcFrame::Unsupported);
    }
    let meta_len = i32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
    if meta_len == 0 {
        bytes.truncate(at);
        return Ok(IpcFrame::End);
    }
    let Ok(meta_len) = usize::try_from(meta_len) else {
        return Ok(IpcFrame::Unsupported);
    };
    if meta_len > MAX_IPC_MESSAGE_BYTES {
        return Ok(IpcFrame::Unsupported);
    }
    if !read_up_to(input, bytes, meta_len)? {
        return Ok(IpcFrame::End);
    }
    let (kind, body_len) = match arrow_ipc::root_as_message(&bytes[at + 8..]) {
        Ok(m) => {
            let kind = match m.header_type() {
                arrow_ipc::MessageHeader::Schema => IpcKind::Schema,
                // A compressed body is left to the decoder, which says
                // whether it can read it.
                arrow_ipc::MessageHeader::RecordBatch => m
                    .header_as_record_batch()
                    .filter(|b| b.compression().is_none())
                    .and_then(|b| usize::try_from(b.length()).ok())
                    .map_or(IpcKind::Other, IpcKind::RecordBatch),
                _ => IpcKind::Other,
            };
            (kind, usize::try_from(m.bodyLength()).ok())
        }
        Err(_) => (IpcKind::Other, None),
    };
    match body_len.filter(|&n| n <= MAX_IPC_MESSAGE_BYTES && kind != IpcKind::Other) {
        Some(body_len) => Ok(IpcFrame::Message { kind, body_len }),
        None => Ok(IpcFrame::Unsupported),
    }
}

/// Appends `n` bytes of `input` to `out`; `false` if the input ended first
/// (what was read stays in `out`).
fn read_up_to(input: &mut impl Read, out: &mut Vec<u8>, n: usize) -> std::io::Result<bool> {
    let got = input.take(n as u64).read_to_end(out)?;
    Ok(got == n)
}

/// Reads an Arrow IPC stream and queues its rows in slices of `rows`,
/// numbering them from `first_row`. Stops early when `stop` is set or the
/// workers are gone.
fn queue_arrow_rows(
    input: impl Read,
    path: &str,
    rows: usize,
    first_row: usize,
    tx: &mpsc::SyncSender<Batch>,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let bad = |source| ServerError::ArrowInput { path: path.to_string(), source };
    let reader = StreamReader::try_new(input, None).map_err(bad)?;
    let mut next_row = first_row;
    for record in reader {
        let record = record.map_err(bad)?;
        let mut offset = 0;
        while offset < record.num_rows() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let len = (record.num_rows() - offset).min(rows);
            let batch =
                Batch { first_line: next_row, events: len as u64, body: Payload::Rows(record.slice(offset, len)) };
            if tx.send(batch).is_err() {
                return Ok(());
            }
            next_row += len;
            offset += len;
        }
    }
    Ok(())
}

/// The server's answer to an ingest request (`{"accepted",…}`).
#[derive(Deserialize)]
struct IngestReply {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    #[serde(default)]
    errors: Vec<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    line: usize,
    field: Option<String>,
    reason: String,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    failed_batches: AtomicU64,
    bytes_done: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Totals {
    fn note_error(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < SHOWN_ERRORS
        {
            errors.push(message);
        }
    }
}

pub fn run(args: IngestArgs) -> Result<ExitCode, ServerError> {
    if args.batch_size == Some(0) || args.concurrency == 0 || args.max_attempts == 0 {
        return Err(ServerError::InvalidArgument {
            arg: "batch-size",
            message: "--batch-size, --concurrency and --max-attempts must be positive".into(),
        });
    }
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = if args.input == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(&args.input).map_err(|source| ServerError::Io { path: args.input.clone(), source })?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut input = BufReader::with_capacity(READ_CHUNK, input);
    let arrow_input = input
        .fill_buf()
        .map(|start| start.starts_with(&ARROW_STREAM_START))
        .map_err(|source| ServerError::Io { path: args.input.clone(), source })?;
    let endpoint =
        format!("{}/v1/events{}", args.url.trim_end_matches('/'), if args.backfill { "?mode=backfill" } else { "" });
    let progress = progress_bar(total_bytes);
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Batch>(args.concurrency * 2);
    let rx = Arc::new(Mutex::new(rx));
    let stop = Arc::new(AtomicBool::new(false));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .max_idle_connections_per_host(args.concurrency)
        .build()
        .into();

    let load_events = Arc::new(OnceLock::new());
    let mut workers = Vec::new();
    for i in 0..args.concurrency {
        let worker = Worker {
            agent: agent.clone(),
            endpoint: endpoint.clone(),
            format: if arrow_input { Sent::ArrowRows } else { Sent::from(args.format) },
            max_attempts: args.max_attempts,
            max_wait: Duration::from_secs(args.max_wait),
            totals: totals.clone(),
            progress: progress.clone(),
            started,
            stop: stop.clone(),
            input_bytes: total_bytes,
            load_events: load_events.clone(),
        };
        let rx = rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("adstore-ingest-{i}"))
            .spawn(move || {
                loop {
                    let next = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(batch) = next else { break };
                    worker.send(batch);
                }
            })
            .map_err(|e| ServerError::Internal(format!("cannot start a worker thread: {e}")))?;
        workers.push(handle);
    }

    // Every batch in flight, queued or being filled holds a buffer.
    let pool = BufferPool::new(args.concurrency * 3 + 2, BATCH_BUFFER_MAX_KEPT_BYTES);
    let mut read_error = None;
    if arrow_input {
        let limits = (args.batch_size.unwrap_or(ARROW_BATCH_ROWS), MAX_JOINED_REQUEST_BYTES);
        // Small reads of message frames buffer ahead; a buffer as large as
        // for NDJSON copied most of each batch once more on its way.
        let peeked = Cursor::new(input.buffer().to_vec());
        let input = BufReader::with_capacity(ARROW_READ_BUFFER, peeked.chain(input.into_inner()));
        read_error = queue_arrow_input(input, &args.input, limits, &pool, &tx, &stop).err();
    } else {
        // The splitter reads into its batch buffers itself: through the
        // `BufReader`, every byte was copied once more.
        let peeked = Cursor::new(input.buffer().to_vec());
        let mut splitter = Splitter::new(peeked.chain(input.into_inner()), pool);
        while !stop.load(Ordering::Relaxed) {
            match splitter.next_batch(args.batch_size.unwrap_or(NDJSON_BATCH_LINES)) {
                Ok(Some(batch)) => {
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    read_error = Some(ServerError::Io { path: args.input.clone(), source });
                    break;
                }
            }
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    progress.finish_and_clear();
    print_summary(&totals, started.elapsed());
    if let Some(e) = read_error {
        return Err(e);
    }
    let failed = totals.failed_batches.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("adstore: {failed} batch(es) could not be delivered");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = match total_bytes {
        Some(len) => {
            let pb = ProgressBar::with_draw_target(Some(len), target);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes}  {msg}  ETA {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = ProgressBar::with_draw_target(None, target);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {bytes}  {msg}") {
                pb.set_style(style);
            }
            pb
        }
    };
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// What the workers send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// NDJSON lines as they are.
    Lines,
    /// NDJSON lines parsed client-side into Arrow IPC.
    ParsedLines,
    /// The rows of an Arrow input.
    ArrowRows,
}

impl From<WireFormat> for Sent {
    fn from(f: WireFormat) -> Sent {
        match f {
            WireFormat::Ndjson => Sent::Lines,
            WireFormat::Arrow => Sent::ParsedLines,
        }
    }
}

/// A request body: as read (NDJSON lines, Arrow record batches), or
/// encoded by the worker.
enum Wire {
    Pooled(PooledBuf),
    Encoded(Vec<u8>),
}

impl std::ops::Deref for Wire {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Wire::Pooled(b) => b,
            Wire::Encoded(b) => b,
        }
    }
}

/// One sending thread's view of the run.
struct Worker {
    agent: ureq::Agent,
    endpoint: String,
    format: Sent,
    max_attempts: u32,
    max_wait: Duration,
    totals: Arc<Totals>,
    progress: ProgressBar,
    started: Instant,
    stop: Arc<AtomicBool>,
    /// Size of the input file; `None` for standard input.
    input_bytes: Option<u64>,
    /// The events of the whole input, estimated once, from the first batch
    /// sent; `None` for standard input.
    load_events: Arc<OnceLock<Option<u64>>>,
}

/// What one attempt to deliver a batch came to.
enum Attempt {
    Done(IngestReply),
    /// Worth another try, after at least this long.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The server is up but asks to come back after this long
    /// (backpressure, not a failure).
    Wait {
        after: Duration,
        why: String,
    },
    Fatal(String),
}

impl Worker {
    fn send(&self, batch: Batch) {
        let t = &self.totals;
        let sent_before = t.sent.fetch_add(batch.events, Ordering::Relaxed);
        const ARROW: &str = "application/vnd.apache.arrow.stream";
        const NDJSON: &str = "application/x-ndjson";
        let encoded = match (self.format, batch.body) {
            (Sent::Lines, Payload::Lines(lines)) => Ok((lines.len() as u64, Some(Wire::Pooled(lines)), NDJSON, 0)),
            (Sent::ParsedLines, Payload::Lines(lines)) => to_arrow(&lines, batch.first_line, t)
                .map(|(body, rejected)| (lines.len() as u64, body.map(Wire::Encoded), ARROW, rejected)),
            (_, Payload::Rows(record)) => {
                encode_record_batch(&record).map(|body| (body.len() as u64, Some(Wire::Encoded(body)), ARROW, 0))
            }
            (_, Payload::Ipc(body)) => Ok((body.len() as u64, Some(Wire::Pooled(body)), ARROW, 0)),
            (Sent::ArrowRows, Payload::Lines(_)) => {
                Err(ArrowError::InvalidArgumentError("lines from an Arrow input".into()))
            }
        };
        let (raw_len, body, content_type, client_rejected) = match encoded {
            Ok(e) => e,
            Err(e) => {
                self.fail(format!("{} {}..: cannot encode Arrow IPC: {e}", self.unit(), batch.first_line));
                return;
            }
        };
        t.rejected.fetch_add(client_rejected, Ordering::Relaxed);
        let mut attempt = 1;
        let mut waited = Duration::ZERO;
        // Nothing valid to send (every line rejected client-side).
        let Some(body) = body else {
            self.advance(raw_len);
            return;
        };
        // Announced to the server: the events still to come, this batch's
        // included. Estimated once, so that the announcements only shrink.
        let load = *self.load_events.get_or_init(|| load_events(self.input_bytes, raw_len, batch.events));
        let to_come = load.map(|load| load.saturating_sub(sent_before).max(batch.events));
        loop {
            match self.post(&body, content_type, to_come) {
                Attempt::Done(reply) => {
                    t.accepted.fetch_add(reply.accepted, Ordering::Relaxed);
                    t.duplicates.fetch_add(reply.duplicates, Ordering::Relaxed);
                    t.rejected.fetch_add(reply.rejected, Ordering::Relaxed);
                    for e in reply.errors {
                        let at = match self.format {
                            Sent::Lines => format!("line {}", batch.first_line + e.line - 1),
                            Sent::ParsedLines => {
                                format!("row {} of the batch from line {}", e.line, batch.first_line)
                            }
                            Sent::ArrowRows => format!("row {}", batch.first_line + e.line - 1),
                        };
                        let field = e.field.map(|f| format!(" {f}:")).unwrap_or_default();
                        t.note_error(format!("{at}:{field} {}", e.reason));
                    }
                    break;
                }
                Attempt::Retry { after, why } if attempt < self.max_attempts && !self.stop.load(Ordering::Relaxed) => {
                    t.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff = backoff(attempt).max(after.unwrap_or_default());
                    self.progress.suspend(|| {
                        tracing::warn!(first_line = batch.first_line, attempt, error = %why, "retrying batch");
                    });
                    self.sleep_unless_stopped(backoff);
                    attempt += 1;
                }
                Attempt::Wait { .. } if self.stop.load(Ordering::Relaxed) => {
                    // Another batch failed for good and the run is ending;
                    // that failure is the one to report.
                    break;
                }
                Attempt::Wait { after, why } if after <= self.max_wait.saturating_sub(waited) => {
                    t.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(first_line = batch.first_line, after_s = after.as_secs(), error = %why,
                        "server asks to wait");
                    self.sleep_unless_stopped(after);
                    waited += after;
                }
                Attempt::Wait { why, .. } => {
                    self.fail(format!(
                        "{} {}..: gave up after waiting {} s in all for the server: {why}",
                        self.unit(),
                        batch.first_line,
                        waited.as_secs()
                    ));
                    break;
                }
                Attempt::Retry { why, .. } => {
                    self.fail(format!(
                        "{} {}..: gave up after {attempt} attempts: {why}",
                        self.unit(),
                        batch.first_line
                    ));
                    break;
                }
                Attempt::Fatal(why) => {
                    self.fail(format!("{} {}..: {why}", self.unit(), batch.first_line));
                    break;
                }
            }
        }
        self.advance(raw_len);
    }

    /// Sleeps for `duration`, or less if the run is stopped meanwhile.
    fn sleep_unless_stopped(&self, duration: Duration) {
        const SLICE: Duration = Duration::from_millis(100);
        let deadline = Instant::now() + duration;
        while !self.stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }

    /// What the input is counted in, for messages.
    fn unit(&self) -> &'static str {
        if self.format == Sent::ArrowRows { "rows" } else { "lines" }
    }

    /// Moves the progress bar past a finished batch of `raw_len` input bytes.
    fn advance(&self, raw_len: u64) {
        let t = &self.totals;
        let done = t.bytes_done.fetch_add(raw_len, Ordering::Relaxed) + raw_len;
        self.progress.set_position(done);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let acked = t.accepted.load(Ordering::Relaxed) + t.duplicates.load(Ordering::Relaxed);
        self.progress.set_message(format!("{acked} events, {:.0} events/s", acked as f64 / secs));
    }

    fn fail(&self, message: String) {
        self.totals.failed_batches.fetch_add(1, Ordering::Relaxed);
        self.totals.note_error(message);
        // A batch the server refuses outright (413, 415, 404) will not go
        // better for the next one: stop reading.
        self.stop.store(true, Ordering::Relaxed);
    }

    fn post(&self, body: &[u8], content_type: &str, events_to_come: Option<u64>) -> Attempt {
        let mut request = self.agent.post(&self.endpoint).header("content-type", content_type);
        if let Some(n) = events_to_come {
            request = request.header(EXPECTED_EVENTS_HEADER, n.to_string());
        }
        let response = request.send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Retry { after: None, why: e.to_string() },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Attempt::Retry { after: None, why: format!("reading the response: {e}") },
        };
        match status {
            200..=299 | 400 | 422 => match serde_json::from_str::<IngestReply>(&text) {
                Ok(reply) => Attempt::Done(reply),
                Err(_) => Attempt::Fatal(format!("HTTP {status}: {}", error_message(&text))),
            },
            429 | 500..=599 => {
                let why = format!("HTTP {status}: {}", error_message(&text));
                match retry_after {
                    Some(after) if status == 429 || status == 503 => {
                        Attempt::Wait { after: after.max(Duration::from_millis(100)), why }
                    }
                    _ => Attempt::Retry { after: retry_after, why },
                }
            }
            413 => Attempt::Fatal(format!("HTTP 413: {}; use a smaller --batch-size", error_message(&text))),
            _ => Attempt::Fatal(format!("HTTP {status}: {}", error_message(&text))),
        }
    }
}

/// The events of the whole input, estimated from its size at the bytes
/// per event of one batch; `None` for an input of unknown size. Each
/// request announces this less the events sent before it in the
/// `adstore-expected-events` header, so that the server sizes its dedupe
/// index for the whole load at once.
fn load_events(input_bytes: Option<u64>, batch_bytes: u64, batch_events: u64) -> Option<u64> {
    if batch_bytes == 0 || batch_events == 0 {
        return None;
    }
    let estimate = (u128::from(input_bytes?) * u128::from(batch_events)).div_ceil(u128::from(batch_bytes));
    Some(u64::try_from(estimate).unwrap_or(u64::MAX))
}

/// 100 ms, 200 ms, 400 ms, … capped at 10 s, with up to 25% jitter so
/// retrying workers do not march in step.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(7)).min(10_000);
    Duration::from_millis(base + fastrand::u64(0..=base / 4))
}

/// The `message` of a JSON error body, or the body itself.
fn error_message(text: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_str::<Wrapper>(text) {
        Ok(w) => w.error.message,
        Err(_) => text.chars().take(200).collect(),
    }
}

/// Parses NDJSON lines client-side and encodes the valid events as one Arrow
/// IPC stream of the input columns. Lines the parser rejects are reported
/// here and not sent; the server still applies its own checks (time window).
fn to_arrow(body: &[u8], first_line: usize, totals: &Totals) -> Result<(Option<Vec<u8>>, u64), ArrowError> {
    let opts = ParseOptions {
        max_future_skew_ms: i64::MAX,
        min_ts_ms: None,
        max_errors: SHOWN_ERRORS,
        ..ParseOptions::default()
    };
    let outcome = parse_ndjson(body, &opts);
    for e in &outcome.errors {
        let field = e.field.as_deref().map(|f| format!(" {f}:")).unwrap_or_default();
        totals.note_error(format!("line {}:{field} {}", first_line + e.line - 1, e.reason));
    }
    let encoded = if outcome.accepted() == 0 { None } else { Some(encode_arrow_ipc(&outcome.batch())?) };
    Ok((encoded, outcome.rejected as u64))
}

/// The input columns of `batch` (all but the seal-time ones) as an Arrow IPC stream.
pub fn encode_arrow_ipc(batch: &EventBatch) -> Result<Vec<u8>, ArrowError> {
    encode_record_batch(&input_columns(batch)?)
}

/// The input columns of `batch`: all but the seal-time ones.
pub fn input_columns(batch: &EventBatch) -> Result<RecordBatch, ArrowError> {
    // Invariant: the seal-time columns (`attributed`, `attributed_to`,
    // `invalid_reason`) are the last ones of the event schema.
    let input: Vec<usize> = (0..ColumnId::Attributed.index()).collect();
    batch.record_batch().project(&input)
}

/// One record batch as an Arrow IPC stream (schema, batch, end marker).
fn encode_record_batch(record: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::with_capacity(record.get_array_memory_size() + 4096);
    let mut writer = StreamWriter::try_new(&mut out, &record.schema())?;
    writer.write(record)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn print_summary(t: &Totals, elapsed: Duration) {
    if let Ok(errors) = t.errors.lock() {
        for e in errors.iter() {
            eprintln!("  {e}");
        }
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let sent = load(&t.sent);
    println!(
        "{}",
        summary_text(sent, load(&t.accepted), load(&t.duplicates), load(&t.rejected), load(&t.retries), secs)
    );
}

fn summary_text(sent: u64, accepted: u64, duplicates: u64, rejected: u64, retries: u64, secs: f64) -> String {
    format!(
        "sent        {sent}\naccepted    {accepted}\nduplicates  {duplicates}\nrejected    {rejected}\n\
         retries     {retries}\nelapsed     {secs:.2} s\nrate        {:.0} events/s",
        sent as f64 / secs.max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(input: &[u8], lines: usize, chunk_reads: usize) -> Vec<(usize, u64, Vec<u8>)> {
        // A reader that returns at most `chunk_reads` bytes per read, to cut lines across reads.
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(self.1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut s = Splitter::new(Dribble(input, chunk_reads), BufferPool::new(4, 1 << 20));
        let mut out = Vec::new();
        while let Some(b) = s.next_batch(lines).expect("read") {
            let Payload::Lines(body) = b.body else { panic!("the splitter cuts lines") };
            out.push((b.first_line, b.events, body.to_vec()));
        }
        out
    }

    /// What `queue_arrow_input` queued: (first row, events, sent as read?,
    /// the request's record batches).
    fn queued_arrow(input: &[u8], rows: usize, max_bytes: usize) -> Result<Vec<Queued>, ServerError> {
        let (tx, rx) = mpsc::sync_channel(1024);
        queue_arrow_input(
            input,
            "in.arrows",
            (rows, max_bytes),
            &BufferPool::new(4, 1 << 20),
            &tx,
            &AtomicBool::new(false),
        )?;
        drop(tx);
        Ok(rx
            .into_iter()
            .map(|b| {
                let (as_read, records) = match b.body {
                    Payload::Ipc(bytes) => {
                        let reader = StreamReader::try_new(&bytes[..], None).expect("a whole IPC stream");
                        (true, reader.collect::<Result<Vec<_>, _>>().expect("valid"))
                    }
                    Payload::Rows(record) => (false, vec![record]),
                    Payload::Lines(_) => panic!("lines from an Arrow input"),
                };
                (b.first_line, b.events, as_read, records)
            })
            .collect())
    }

    type Queued = (usize, u64, bool, Vec<RecordBatch>);

    /// (first row, events, sent as read?, rows of each batch) of each request.
    fn shapes(got: &[Queued]) -> Vec<(usize, u64, bool, Vec<usize>)> {
        got.iter().map(|(l, n, r, b)| (*l, *n, *r, b.iter().map(RecordBatch::num_rows).collect())).collect()
    }

    /// Every row queued, in order, is the input's row of the same number.
    fn assert_rows_in_order(got: &[Queued], total: i64) {
        let mut row = 0;
        for (first, .., records) in got {
            assert_eq!(*first as i64, row + 1);
            for record in records {
                assert_eq!(record, &numbers(row, record.num_rows()), "rows from {row}");
                row += record.num_rows() as i64;
            }
        }
        assert_eq!(row, total);
    }

    fn arrow_stream(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batches[0].schema()).expect("writer");
        for b in batches {
            w.write(b).expect("write");
        }
        w.finish().expect("finish");
        drop(w);
        out
    }

    fn numbers(from: i64, n: usize) -> RecordBatch {
        let ts = arrow_array::Int64Array::from_iter_values(from..from + n as i64);
        let id = arrow_array::StringArray::from_iter_values((from..from + n as i64).map(|i| format!("e{i}")));
        RecordBatch::try_from_iter([("ts", Arc::new(ts) as _), ("event_id", Arc::new(id) as _)]).expect("batch")
    }

    #[test]
    fn small_arrow_batches_go_out_as_read_and_joined() {
        let batches = [numbers(0, 3), numbers(3, 5), numbers(8, 0), numbers(8, 2), numbers(10, 1), numbers(11, 4)];
        let got = queued_arrow(&arrow_stream(&batches), 5, usize::MAX).expect("queue");
        let want = [(1, 3, true, vec![3]), (4, 5, true, vec![5]), (9, 3, true, vec![2, 1]), (12, 4, true, vec![4])];
        assert_eq!(shapes(&got), want);
        assert_rows_in_order(&got, 15);
    }

    #[test]
    fn joined_requests_stay_under_the_byte_limit() {
        let batches: Vec<RecordBatch> = (0..6).map(|i| numbers(i * 100, 100)).collect();
        let stream = arrow_stream(&batches);
        // Room for the schema and two batches' messages (the end marker is
        // not counted), not three. Later batches have longer ids.
        let two = arrow_stream(&batches[4..]).len() - IPC_END.len();
        let got = queued_arrow(&stream, 1_000, two).expect("queue");
        assert_eq!(shapes(&got).iter().map(|s| s.3.clone()).collect::<Vec<_>>(), vec![vec![100, 100]; 3]);
        assert_rows_in_order(&got, 600);
        // A batch larger than the limit still goes out, alone.
        let got = queued_arrow(&stream, 1_000, 10).expect("queue");
        assert_eq!(got.len(), 6);
        assert_rows_in_order(&got, 600);
    }

    #[test]
    fn a_larger_arrow_batch_hands_the_rest_to_the_decoder() {
        let batches = [numbers(0, 3), numbers(3, 12), numbers(15, 2)];
        let got = queued_arrow(&arrow_stream(&batches), 5, usize::MAX).expect("queue");
        let want = [
            (1, 3, true, vec![3]),
            (4, 5, false, vec![5]),
            (9, 5, false, vec![5]),
            (14, 2, false, vec![2]),
            (16, 2, false, vec![2]),
        ];
        assert_eq!(shapes(&got), want);
        assert_rows_in_order(&got, 17);
    }

    #[test]
    fn dictionaries_and_broken_streams_go_to_the_decoder() {
        let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
        let values = arrow_array::StringArray::from(vec!["a", "b"]);
        let dict = arrow_array::DictionaryArray::try_new(keys, Arc::new(values)).expect("dictionary");
        let batch = RecordBatch::try_from_iter([("device", Arc::new(dict) as _)]).expect("batch");
        let got = queued_arrow(&arrow_stream(std::slice::from_ref(&batch)), 5, usize::MAX).expect("queue");
        assert_eq!(got.len(), 1);
        assert!(!got[0].2, "a dictionary batch is decoded, not passed through");
        assert_eq!(got[0].3, [batch]);
        // Cut short inside the third batch: the two before it go out, joined,
        // then the decoder reports the damage.
        let bytes = arrow_stream(&[numbers(0, 2), numbers(2, 2), numbers(4, 1)]);
        let (tx, rx) = mpsc::sync_channel(16);
        let pool = BufferPool::new(4, 1 << 20);
        let Err(err) = queue_arrow_input(
            &bytes[..bytes.len() - 20],
            "in.arrows",
            (5, usize::MAX),
            &pool,
            &tx,
            &AtomicBool::new(false),
        ) else {
            panic!("truncated")
        };
        assert!(matches!(err, ServerError::ArrowInput { .. }), "{err}");
        drop(tx);
        let sent: Vec<(usize, u64)> = rx.into_iter().map(|b| (b.first_line, b.events)).collect();
        assert_eq!(sent, [(1, 4)]);
    }

    #[test]
    fn splitter_cuts_at_line_boundaries() {
        let input = b"a\nb\n\nc\nd\ne";
        for chunk in [1, 2, 3, 100] {
            let got = batches(input, 2, chunk);
            assert_eq!(
                got,
                vec![(1, 2, b"a\nb\n".to_vec()), (3, 1, b"\nc\n".to_vec()), (5, 2, b"d\ne".to_vec()),],
                "chunk {chunk}"
            );
        }
        assert!(batches(b"", 10, 5).is_empty());
        assert_eq!(batches(b"x\n", 10, 5), vec![(1, 1, b"x\n".to_vec())]);
        // Whitespace-only lines, cut across reads, are not events; nor is a
        // blank last line without a newline, though it is sent.
        for chunk in [1, 2, 100] {
            let input = b"a\n \t\nb\n \r\n\nc\n  ";
            let got = batches(input, 3, chunk);
            let want = vec![(1, 2, b"a\n \t\nb\n".to_vec()), (4, 1, b" \r\n\nc\n".to_vec()), (7, 0, b"  ".to_vec())];
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn the_events_of_a_load_are_estimated_from_the_input_size() {
        // 1,000 bytes of 100-byte events.
        assert_eq!(load_events(Some(1_000), 200, 2), Some(10));
        assert_eq!(load_events(Some(1_000), 150, 1), Some(7), "rounded up");
        assert_eq!(load_events(Some(u64::MAX), 1, u64::MAX), Some(u64::MAX), "saturates");
        assert_eq!(load_events(None, 200, 2), None, "standard input");
        assert_eq!(load_events(Some(1_000), 0, 0), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(125));
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_millis(12_500));
    }

    #[test]
    fn error_messages_are_unwrapped() {
        assert_eq!(error_message(r#"{"error":{"code":"x","message":"too big"}}"#), "too big");
        assert_eq!(error_message("plain"), "plain");
    }
}
