//! `adstore gen`: synthetic events as NDJSON, fast.
//!
//! ```text
//!  generator thread: Generator::write_ndjson_chunk ─► NDJSON buffers of CHUNK events
//!                                   │ (bounded channel; spent buffers come back for reuse)
//!  calling thread:                  ▼ write_all (large writes)
//! ```
//!
//! The generator writes NDJSON straight from its numbers, allocating
//! nothing per event, and the writes overlap with generation. The output is
//! deterministic by `--seed` and `--start`.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

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
    /// Event time of the first event: RFC 3339 or epoch ms. Default: --span before now, on the hour.
    #[arg(long)]
    start: Option<String>,
    /// Event times cover this span: 1d, 6h, 30m, 90s, 250ms or ms.
    #[arg(long, default_value = "1d")]
    span: String,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    out: String,
}

/// Events per chunk handed from the generator thread to the writer.
const CHUNK: usize = 16 * 1024;

pub fn run(args: GenArgs) -> Result<ExitCode, ServerError> {
    let span_ms = parse_duration_ms("span", &args.span)?;
    if span_ms <= 0 {
        return Err(ServerError::InvalidArgument { arg: "span", message: "must be positive".into() });
    }
    let start_ms = match &args.start {
        Some(s) => parse_instant_ms("start", s)?,
        None => (now_ms() - span_ms).div_euclid(3_600_000) * 3_600_000,
    };
    let cfg = GenConfig { seed: args.seed, events: args.events, start_ms, span_ms, ..GenConfig::default() };
    let (mut out, path): (Box<dyn Write>, String) = if args.out == "-" {
        (Box::new(std::io::stdout().lock()), "<stdout>".into())
    } else {
        let f = File::create(&args.out).map_err(|source| ServerError::Io { path: args.out.clone(), source })?;
        (Box::new(f), args.out.clone())
    };
    let started = Instant::now();
    let written = generate(cfg, &mut out).map_err(|source| ServerError::Io { path: path.clone(), source })?;
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
}
