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

mod input;
mod send;
#[cfg(test)]
mod tests;

use input::*;
pub use send::input_columns;
use send::*;

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
    #[command(flatten)]
    remote: super::remote::Remote,
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
    let endpoint = args.remote.endpoint(if args.backfill { "/v1/events?mode=backfill" } else { "/v1/events" });
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
            authorization: args.remote.authorization(),
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
