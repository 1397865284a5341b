//! Crash tests of the storage engine: a child process appends and seals,
//! and is aborted at a fail point or killed with SIGKILL; the reopened store
//! must hold every acknowledged event exactly once and no partial segment.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use adstore_storage::{ColumnId, SealPipeline, Store};

#[path = "../src/torture_config.rs"]
mod torture_config;
use torture_config::torture_config;

const TORTURE: &str = env!("CARGO_BIN_EXE_adstore-torture");

/// Runs the torture writer; returns the ids it acknowledged and whether it
/// exited cleanly.
fn run_child(
    dir: &Path,
    first: u64,
    batches: u64,
    size: u64,
    failpoint: Option<&str>,
    kill_after: Option<Duration>,
) -> (Vec<u64>, bool) {
    let mut cmd = Command::new(TORTURE);
    cmd.args([dir.to_str().expect("utf-8 path"), &first.to_string(), &batches.to_string(), &size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match failpoint {
        Some(fp) => cmd.env("ADSTORE_FAILPOINT", fp),
        None => cmd.env_remove("ADSTORE_FAILPOINT"),
    };
    let mut child = cmd.spawn().expect("spawn torture writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let killer = kill_after.map(|d| {
        let pid = child.id();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        })
    });
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("ack"), "unexpected output {line:?}");
        let first: u64 = parts.next().and_then(|s| s.parse().ok()).expect("first id");
        let count: u64 = parts.next().and_then(|s| s.parse().ok()).expect("count");
        acked.extend(first..first + count);
    }
    let status = child.wait().expect("wait");
    if let Some(k) = killer {
        let _ = k.join();
    }
    (acked, status.success())
}

/// Opens the store and counts every event id it holds.
fn stored_ids(dir: &Path) -> HashMap<u64, usize> {
    let store = Store::open(dir, torture_config(), SealPipeline::new()).expect("reopen after crash");
    assert!(store.damaged().is_empty(), "damaged segments after crash: {:?}", store.damaged());
    let mut counts = HashMap::new();
    for batch in store.snapshot().read_events().expect("read all") {
        let ids = batch.str_column(ColumnId::EventId);
        for i in 0..batch.num_rows() {
            let id: u64 = ids.value(i)[1..].parse().expect("numeric id");
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    // Every segment file on disk is named by the catalog, and every raw
    // segment has its rollup segments: they commit together.
    let catalog = store.catalog();
    let rollups = torture_config().rollups.len();
    for raw in catalog.segments_of(adstore_storage::Level::Raw) {
        let derived = catalog.segments.values().filter(|m| m.source == Some(raw.id)).count();
        assert_eq!(derived, rollups, "raw segment {} has {derived} rollup segments", raw.id);
    }
    for entry in std::fs::read_dir(dir.join("segments")).expect("segments dir") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        let id = u64::from_str_radix(name.trim_end_matches(".seg"), 16).expect("segment file name");
        assert!(catalog.segments.contains_key(&adstore_storage::SegmentId(id)), "orphan segment file {name}");
    }
    store.close().expect("close");
    counts
}

fn check_exactly_once(counts: &HashMap<u64, usize>, acked: &[u64]) {
    for (id, n) in counts {
        assert_eq!(*n, 1, "event e{id} stored {n} times");
    }
    let missing: Vec<u64> = acked.iter().copied().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn abort_at_each_failpoint_then_recover_and_continue() {
    let points = [
        "wal_after_write:7",
        "wal_after_fsync:9",
        "seal_after_segment_write:3",
        "seal_after_commit:2",
        // Between the rollup segments' write and the commit.
        "rollup_after_write:3",
        // Each kind of re-seal, killed between its write and its commit,
        // and after its commit.
        "compact_after_segment_write:1",
        "compact_after_commit:1",
        "final_after_segment_write:1",
        "final_after_commit:1",
        "reprocess_after_segment_write:1",
        "reprocess_after_commit:1",
        "catalog_before_fsync:4",
        "catalog_before_rename:5",
        "catalog_after_rename:3",
    ];
    for point in points {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut acked, clean) = run_child(dir.path(), 0, 40, 50, Some(point), None);
        assert!(!clean, "{point}: the writer should have aborted");
        let counts = stored_ids(dir.path());
        check_exactly_once(&counts, &acked);
        // The recovered store accepts more writes and keeps everything.
        let (more, clean) = run_child(dir.path(), 1_000_000, 12, 50, None, None);
        assert!(clean, "{point}: writer after recovery failed");
        acked.extend(more);
        let counts = stored_ids(dir.path());
        check_exactly_once(&counts, &acked);
    }
}

#[test]
fn sigkill_at_random_moments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..8u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 400);
        let (a, _) = run_child(dir.path(), round * 10_000_000, 100_000, 40, None, Some(delay));
        acked.extend(a);
        let counts = stored_ids(dir.path());
        check_exactly_once(&counts, &acked);
    }
    assert!(acked.len() > 100, "the writer acknowledged too little to test anything: {}", acked.len());
}
