//! Crash-test driver for the storage engine (used by `tests/crash.rs`).
//!
//! Appends batches of uniquely-identified events to a store and prints one
//! line per acknowledged batch (`ack <first> <count>`), sealing every few
//! batches and reprocessing a bucket every few more, with a sealer thread
//! running concurrently (which also compacts and finalizes closed
//! buckets, see `torture_config`). Tests run it with
//! `ADSTORE_FAILPOINT=<point>[:<n>]` to abort at a precise step, or kill it
//! with SIGKILL at a random moment, then check that the reopened store holds
//! every acknowledged event exactly once.
//!
//! Usage: adstore-torture <data-dir> <first-id> <batches> <batch-size>

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use adstore_storage::{Event, EventBatch, EventType, SealKind, SealPipeline, Store};

#[path = "../torture_config.rs"]
mod torture_config;
use torture_config::torture_config;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| {
        let dir = PathBuf::from(args.get(1)?);
        let first: u64 = args.get(2)?.parse().ok()?;
        let batches: u64 = args.get(3)?.parse().ok()?;
        let size: u64 = args.get(4)?.parse().ok()?;
        Some((dir, first, batches, size))
    })();
    let Some((dir, first, batches, size)) = parsed else {
        eprintln!("usage: adstore-torture <data-dir> <first-id> <batches> <batch-size>");
        return ExitCode::from(2);
    };
    match run(dir, first, batches, size) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adstore-torture: {e}");
            ExitCode::FAILURE
        }
    }
}

/// 2026-11-01T00:00:00Z: the first of the six hourly buckets the events fall in.
const BASE_MS: i64 = 1_793_491_200_000;

fn run(dir: PathBuf, first: u64, batches: u64, size: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&dir, torture_config(), SealPipeline::new())?;
    store.start_sealer()?;
    let stdout = std::io::stdout();
    let mut id = first;
    for b in 0..batches {
        let events: Vec<Event> = (0..size)
            .map(|k| {
                let n = id + k;
                Event {
                    event_id: format!("e{n}"),
                    kind: EventType::ALL[(n % 3) as usize],
                    // Spread over 6 hourly buckets so seals touch many partitions.
                    ts: BASE_MS + ((n * 7_919) % 6) as i64 * 3_600_000 + n as i64,
                    publisher_id: format!("p{}", n % 2),
                    advertiser_id: format!("a{}", n % 5),
                    campaign_id: format!("c{}", n % 7),
                    ad_id: format!("ad{}", n % 11),
                    impression_id: Some(format!("i{n}")),
                    cost_micros: (n % 1000) as i64,
                    ..Event::default()
                }
            })
            .collect();
        store.append(&EventBatch::from_events(&events))?;
        writeln!(stdout.lock(), "ack {id} {size}")?;
        id += size;
        if b % 4 == 3 {
            store.seal_all()?;
        }
        if b % 6 == 5 {
            store.reseal_buckets(&[BASE_MS + (b as i64 % 6) * 3_600_000], SealKind::Reprocess)?;
        }
    }
    store.close()?;
    Ok(())
}
