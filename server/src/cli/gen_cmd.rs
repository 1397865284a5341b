//! `adstore gen`: synthetic events as NDJSON (or an Arrow IPC stream), fast.
//!
//! ```text
//!  generator thread: Generator::write_ndjson_chunk ─► NDJSON buffers of CHUNK events
//!                                   │ (bounded channel; spent buffers come back for reuse)
//!  calling thread:                  ▼ write_all (large writes)
//! ```
//!
//! The generator writes NDJSON straight from its numbers, allocating
//! nothing per event, and the writes overlap with generation. The output is
//! deterministic by `--seed` and `--start`. `--format arrow` writes the same
//! events as one Arrow IPC stream of record batches (the input columns of
//! the event schema), for loaders that hold Arrow already.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use adstore_storage::EventBatchBuilder;
use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use super::ingest::input_columns;
use super::{parse_duration_ms, parse_instant_ms};
use crate::datagen::{GenConfig, Generator};
use crate::error::ServerError;
use crate::http::now_ms;

#[derive(clap::Args)]
pub struct GenArgs {
    /// Number of events (lines) to write.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Random seed: the same seed and --start give the same file.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Event time of the first event: RFC 3339 or epoch ms. Default: --span
    /// and two hours before now, on the hour (so the last clicks and
    /// conversions, which trail the stream, are not in the future).
    #[arg(long)]
    start: Option<String>,
    /// Event times cover this span: 1d, 6h, 30m, 90s, 250ms or ms.
    #[arg(long, default_value = "1d")]
    span: String,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    out: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GenFormat::Ndjson)]
    format: GenFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GenFormat {
    /// One JSON object per line.
    Ndjson,
    /// An Arrow IPC stream (application/vnd.apache.arrow.stream).
    Arrow,
}

/// Rows per record batch of `--format arrow`: a common batch size for Arrow
/// producers, and under `adstore ingest`'s default `--batch-size`, so the
/// file's batches go out as they are.
const ARROW_BATCH_ROWS: usize = 8 * 1024;

/// Events per chunk handed from the generator thread to the writer.
const CHUNK: usize = 16 * 1024;

pub fn run(args: GenArgs) -> Result<ExitCode, ServerError> {
    let span_ms = parse_duration_ms("span", &args.span)?;
    if span_ms <= 0 {
        return Err(ServerError::InvalidArgument { arg: "span", message: "must be positive".into() });
    }
    let start_ms = match &args.start {
        Some(s) => parse_instant_ms("start", s)?,
        None => (now_ms() - span_ms - crate::datagen::MAX_TRAIL_MS).div_euclid(3_600_000) * 3_600_000,
    };
    let cfg = GenConfig { seed: args.seed, events: args.events, start_ms, span_ms, ..GenConfig::default() };
    let (mut out, path): (Box<dyn Write>, String) = if args.out == "-" {
        (Box::new(std::io::stdout().lock()), "<stdout>".into())
    } else {
        let f = File::create(&args.out).map_err(|source| ServerError::Io { path: args.out.clone(), source })?;
        (Box::new(f), args.out.clone())
    };
    let started = Instant::now();
    let written = match args.format {
        GenFormat::Ndjson => {
            generate(cfg, &mut out).map_err(|source| ServerError::Io { path: path.clone(), source })?
        }
        GenFormat::Arrow => generate_arrow(cfg, &mut out).map_err(|e| match e {
            ArrowError::IoError(_, source) => ServerError::Io { path: path.clone(), source },
            other => ServerError::Internal(format!("encoding Arrow IPC: {other}")),
        })?,
    };
    let secs = started.elapsed().as_secs_f64();
    if args.out != "-" {
        eprintln!(
            "wrote {} events ({:.1} MB) to {path} in {secs:.2} s ({:.0} events/s)",
            args.events,
            written as f64 / 1e6,
            args.events as f64 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every event of `cfg` as NDJSON to `out`; returns the bytes written.
pub fn generate(cfg: GenConfig, out: &mut dyn Write) -> std::io::Result<u64> {
    let (tx, rx) = sync_channel::<Vec<u8>>(2);
    let (back_tx, back_rx) = sync_channel::<Vec<u8>>(4);
    let producer = std::thread::Builder::new().name("adstore-gen".into()).spawn(move || {
        let mut generator = Generator::new(cfg);
        loop {
            let mut buf = back_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK * 400));
            buf.clear();
            if generator.write_ndjson_chunk(CHUNK, &mut buf) == 0 || tx.send(buf).is_err() {
                break;
            }
        }
    })?;
    let mut written = 0u64;
    let mut result = Ok(());
    for buf in rx {
        if let Err(e) = out.write_all(&buf) {
            // Dropping the receiver stops the producer.
            result = Err(e);
            break;
        }
        written += buf.len() as u64;
        let _ = back_tx.try_send(buf);
    }
    let _ = producer.join();
    result?;
    out.flush()?;
    Ok(written)
}

/// Writes every event of `cfg` to `out` as one Arrow IPC stream of the
/// event schema's input columns; returns the bytes written.
pub fn generate_arrow(cfg: GenConfig, out: &mut dyn Write) -> Result<u64, ArrowError> {
    let mut generator = Generator::new(cfg).peekable();
    // The next record batch of input columns; `None` once the events run out.
    let mut next_record = || -> Result<Option<RecordBatch>, ArrowError> {
        if generator.peek().is_none() {
            return Ok(None);
        }
        let mut builder = EventBatchBuilder::with_capacity(ARROW_BATCH_ROWS);
        for e in generator.by_ref().take(ARROW_BATCH_ROWS) {
            builder.push(&e);
        }
        input_columns(&builder.finish()).map(Some)
    };
    let mut counted = CountingWrite { inner: out, written: 0 };
    let first = next_record()?;
    // No events: a stream of the schema alone.
    let schema = match &first {
        Some(r) => r.schema(),
        None => input_columns(&EventBatchBuilder::with_capacity(0).finish())?.schema(),
    };
    let mut writer = StreamWriter::try_new(&mut counted, &schema)?;
    let mut record = first;
    while let Some(r) = record {
        writer.write(&r)?;
        record = next_record()?;
    }
    writer.finish()?;
    drop(writer);
    counted.flush()?;
    Ok(counted.written)
}

/// Counts the bytes written through it.
struct CountingWrite<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for CountingWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let cfg = GenConfig { events: 40_000, ..GenConfig::default() };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(cfg.clone(), &mut a).expect("gen");
        generate(cfg.clone(), &mut b).expect("gen");
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 40_000);
        let mut serial = Vec::new();
        use crate::datagen::write_ndjson;
        Generator::new(cfg).for_each(|e| write_ndjson(&e, &mut serial));
        assert_eq!(a, serial, "the two-thread pipeline writes what the generator yields, in order");
    }

    #[test]
    fn arrow_holds_the_events_of_the_ndjson() {
        use adstore_ingest::{ParseOptions, parse_ndjson};
        // More than one record batch, the last one short.
        let cfg = GenConfig { events: ARROW_BATCH_ROWS as u64 + 1000, ..GenConfig::default() };
        let mut ndjson = Vec::new();
        generate(cfg.clone(), &mut ndjson).expect("gen");
        let mut arrow = Vec::new();
        let written = generate_arrow(cfg, &mut arrow).expect("gen arrow");
        assert_eq!(written, arrow.len() as u64);
        let opts = ParseOptions { max_future_skew_ms: i64::MAX, min_ts_ms: None, ..ParseOptions::default() };
        let parsed = parse_ndjson(&ndjson, &opts);
        assert_eq!(parsed.rejected, 0);
        let want = input_columns(&parsed.batch()).expect("project");
        let reader = arrow_ipc::reader::StreamReader::try_new(&arrow[..], None).expect("an IPC stream");
        let mut row = 0;
        let mut batches = 0;
        for record in reader {
            let record = record.expect("a record batch");
            assert_eq!(record, want.slice(row, record.num_rows()), "rows from {row}");
            row += record.num_rows();
            batches += 1;
        }
        assert_eq!((row, batches), (want.num_rows(), 2));
    }
}
