//! Storage engine benchmark (release mode): seal throughput, bytes per
//! event on disk, and filtered-sum scan throughput, on generated ad events.
//!
//! ```sh
//! cargo bench --bench storage                      # 4M events
//! ADSTORE_BENCH_EVENTS=10000000 cargo bench --bench storage
//! ADSTORE_BENCH_SCAN_RUNS=200 ADSTORE_BENCH_SCAN=device cargo bench --bench storage   # for a profiler
//! ```
//!
//! Prints a markdown report; with `ADSTORE_BENCH_REPORT=path` also writes it
//! there (the committed one is `docs/bench/storage.md`).

use std::time::{Duration, Instant};

// The same allocator as the `adstore` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use adstore_ingest::{AttributionRules, DedupeConfig, DedupeIndex, ExactlyOnce};
use adstore_server::datagen::{BOT_UA_HASH, GenConfig, Generator};
use adstore_storage::{
    ColumnData, ColumnId, DimFilter, EventBatch, EventBatchBuilder, ScanRequest, SealPipeline, Snapshot, Store,
    StoreConfig, TimeRange,
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) of this process so far, from /proc/self/stat.
/// Unlike wall time it does not count time the hypervisor steals, which on
/// shared VMs can be half of it.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            // Fields after the command: state is index 0; utime 11, stime 12.
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Hypervisor steal as a share of all CPU time since `before` (from /proc/stat).
fn steal_share(before: &[u64]) -> f64 {
    let now = proc_stat();
    let d: Vec<u64> = now.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect();
    let total: u64 = d.iter().sum();
    if total == 0 { 0.0 } else { d.get(7).copied().unwrap_or(0) as f64 / total as f64 }
}

fn proc_stat() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect()))
        .unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sum_cost(snapshot: &Snapshot, req: &ScanRequest) -> (i64, usize) {
    let batches = snapshot.scan(req).expect("scan");
    let mut sum = 0i64;
    let mut rows = 0usize;
    for b in batches {
        rows += b.rows;
        if let ColumnData::I64(v) = &b.columns[0] {
            sum += v.iter().sum::<i64>();
        }
    }
    (sum, rows)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful. Either way run the whole thing: it is the benchmark.
    let events = env_u64("ADSTORE_BENCH_EVENTS", 4_000_000);
    let stat0 = proc_stat();
    let threads = rayon::current_num_threads();
    eprintln!("generating {events} events…");
    let cfg = GenConfig { events, ..GenConfig::default() };
    let mut batches = Vec::new();
    let mut builder = EventBatchBuilder::with_capacity(50_000);
    for e in Generator::new(cfg) {
        builder.push(&e);
        if builder.len() == 50_000 {
            batches.push(std::mem::replace(&mut builder, EventBatchBuilder::with_capacity(50_000)).finish());
        }
    }
    if !builder.is_empty() {
        batches.push(builder.finish());
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let zstd_level = env_u64("ADSTORE_BENCH_ZSTD", StoreConfig::default().zstd_level as u64) as i32;
    let config = StoreConfig { seal_max_rows: usize::MAX, fsync: false, zstd_level, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config.clone(), SealPipeline::new()).expect("open");
    // The same events into a store with no rollups: what they cost a seal.
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let bare_config = StoreConfig { rollups: Vec::new(), ..config.clone() };
    let bare = Store::open(bare_dir.path(), bare_config, SealPipeline::new()).expect("open");
    eprintln!("appending…");
    for b in &batches {
        store.append(b).expect("append");
        bare.append(b).expect("append");
    }
    // The same events through the exactly-once path: ingest-time dedupe,
    // then seal with dedupe, attribution and invalid-traffic rules on.
    let eo_dir = tempfile::tempdir().expect("tempdir");
    let eo = Arc::new(ExactlyOnce::new(
        Arc::new(DedupeIndex::new(DedupeConfig::default())),
        AttributionRules { bot_ua_hashes: vec![BOT_UA_HASH.to_string()], ..AttributionRules::default() },
        86_400_000,
    ));
    let eo_store =
        Store::open(eo_dir.path(), config.clone(), SealPipeline::new().with_stage(eo.clone())).expect("open");
    let mut eo_accepted = 0usize;
    for b in &batches {
        eo_accepted += eo.ingest(&eo_store, b).expect("ingest").accepted;
    }
    drop(batches);
    let dedupe_after_ingest = eo.dedupe().stats();
    eprintln!("sealing with exactly-once…");
    let t = Instant::now();
    let c = cpu_time();
    let eo_report = eo_store.seal_all().expect("seal");
    let eo_seal_time = t.elapsed();
    let eo_seal_cpu = cpu_time() - c;
    assert_eq!(eo_report.rows_out, eo_accepted);
    let dedupe_stats = eo.dedupe().stats();
    eo_store.close().expect("close");
    drop(eo_store);
    drop(eo_dir);
    eprintln!("sealing without rollups…");
    let t = Instant::now();
    let c = cpu_time();
    bare.seal_all().expect("seal");
    let bare_seal_time = t.elapsed();
    let bare_seal_cpu = cpu_time() - c;
    bare.close().expect("close");
    drop((bare, bare_dir));
    eprintln!("sealing…");
    let t = Instant::now();
    let c = cpu_time();
    let report = store.seal_all().expect("seal");
    let seal_time = t.elapsed();
    let seal_cpu = cpu_time() - c;
    assert_eq!(report.rows_out as u64, events);
    let snapshot = store.snapshot();
    let bytes: u64 = snapshot.segments.iter().map(|s| s.meta.size_bytes).sum();
    let rollup_bytes: u64 = snapshot.rollups.iter().map(|s| s.meta.size_bytes).sum();
    let rollup_rows: u64 = snapshot.rollups.iter().map(|s| s.meta.rows).sum();
    let total_rows = snapshot.segment_rows();

    // Filtered sum on the hot advertiser (selective, contiguous rows) and on
    // a scattered dimension (device), both summing cost_micros.
    let cases = [
        ("advertiser_id = 'adv-000', sum(cost_micros)", DimFilter::eq(ColumnId::AdvertiserId, "adv-000")),
        ("device = 'mobile', sum(cost_micros)", DimFilter::eq(ColumnId::Device, "mobile")),
        (
            "country IN ('DE','FR'), sum(cost_micros)",
            DimFilter { column: ColumnId::Country, values: vec!["DE".into(), "FR".into()], negated: false },
        ),
    ];
    let scan_runs = env_u64("ADSTORE_BENCH_SCAN_RUNS", 15).max(1) as u32;
    eprintln!("scanning…");
    let mut scan_lines = Vec::new();
    // ADSTORE_BENCH_SCAN=device: only the cases whose name contains it (for a profiler).
    let only = std::env::var("ADSTORE_BENCH_SCAN").unwrap_or_default();
    for (name, filter) in cases.into_iter().filter(|(name, _)| name.contains(only.as_str())) {
        let req = ScanRequest {
            time_range: TimeRange::ALL,
            filters: vec![filter.clone()],
            columns: vec![ColumnId::CostMicros],
        };
        let (expected, matched) = sum_cost(&snapshot, &req);
        // Independent check against a full decode.
        let mut naive = 0i64;
        for s in snapshot.segments.iter() {
            let b: EventBatch = s.reader.read_batch().expect("decode");
            let col = b.str_column(filter.column);
            let cost = b.i64_column(ColumnId::CostMicros);
            for i in 0..b.num_rows() {
                if !arrow_array::Array::is_null(col, i) && filter.values.iter().any(|v| v == col.value(i)) {
                    naive += cost.value(i);
                }
            }
        }
        assert_eq!(expected, naive, "{name}: scan disagrees with a full decode");
        let mut times = Vec::new();
        let c = cpu_time();
        for _ in 0..scan_runs {
            let t = Instant::now();
            let (sum, _) = sum_cost(&snapshot, &req);
            times.push(t.elapsed());
            assert_eq!(sum, expected);
        }
        let cpu_per_run = (cpu_time() - c) / scan_runs;
        let m = median(times);
        scan_lines.push(format!(
            "| {name} | {matched} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} |",
            m.as_secs_f64() * 1e3,
            total_rows as f64 / m.as_secs_f64() / 1e6,
            matched as f64 / m.as_secs_f64() / 1e6,
            cpu_per_run.as_secs_f64() * 1e3,
            2.0 * total_rows as f64 / cpu_per_run.as_secs_f64().max(1e-9) / 1e6,
        ));
    }

    // The day becomes final: reopened with wall-clock closing at once, the
    // store finalizes it, merges each rollup's rows of the day into hour and
    // day rows, and writes its billing snapshot.
    drop(snapshot);
    store.close().expect("close");
    drop(store);
    let final_config = StoreConfig { close_idle_ms: 1, ..config.clone() };
    let store = Store::open(dir.path(), final_config, SealPipeline::new()).expect("reopen");
    std::thread::sleep(Duration::from_millis(20));
    eprintln!("finalizing…");
    let c = cpu_time();
    let finalized = store.finalize_closed().expect("finalize");
    let finalize_cpu = cpu_time() - c;
    assert!(finalized.rows_out as u64 == events, "the whole day is finalized");
    eprintln!("merging the final day…");
    let c = cpu_time();
    let mut passes = 0;
    while store.rollup_status().iter().any(|r| !r.complete) {
        store.roll_up().expect("roll up");
        passes += 1;
        assert!(passes < 100, "the rollup task does not finish");
    }
    let merge_cpu = cpu_time() - c;
    let c = cpu_time();
    store.snapshot_billing().expect("billing");
    let billing_cpu = cpu_time() - c;
    let settled = store.snapshot();
    let settled_bytes: u64 = settled.segments.iter().map(|s| s.meta.size_bytes).sum();
    let by_kind = |merged: bool| -> (u64, u64) {
        settled
            .rollups
            .iter()
            .filter(|s| s.meta.covers.is_empty() != merged)
            .fold((0, 0), |(r, b), s| (r + s.meta.rows, b + s.meta.size_bytes))
    };
    let (seal_rows_after, seal_bytes_after) = by_kind(false);
    let (merged_rows, merged_bytes) = by_kind(true);
    let settled_rollup_bytes = seal_bytes_after + merged_bytes;
    let billing_bytes: u64 = settled.catalog.billing.iter().map(|b| b.size_bytes).sum();
    drop(settled);

    let report = format!(
        "# Storage benchmark\n\n\
         Command: `ADSTORE_BENCH_EVENTS={events} cargo bench --bench storage` (release), \
         {threads} rayon threads, `nproc` = {cpus}.\n\n\
         Data: {events} events from `adstore_server::datagen` (seed 42, one day, skewed campaigns, ~8% clicks).\n\n\
         ## Seal\n\n\
         | metric | value |\n|---|---|\n\
         | events sealed | {events} |\n\
         | partitions (hour bucket x shard) | {parts} |\n\
         | seal time | {seal_ms:.0} ms |\n\
         | seal throughput (wall) | {seal_rate:.2} M events/s |\n\
         | seal CPU time | {seal_cpu_ms:.0} ms ({seal_cpu_rate:.2} M events/s with 2 cores fully ours) |\n\
         | bytes on disk (events segments) | {bytes} |\n\
         | bytes per event | {bpe:.1} |\n\
         | zstd level | {zstd_level} |\n\n\
         ## Rollups at seal (the default set: advertiser, supply, campaign)\n\n\
         | metric | value |\n|---|---|\n\
         | seal time without / with rollups | {bare_seal_ms:.0} ms / {seal_ms:.0} ms ({seal_over:+.1}%) |\n\
         | seal CPU time without / with rollups | {bare_seal_cpu_ms:.0} ms / {seal_cpu_ms:.0} ms ({cpu_over:+.1}%) |\n\
         | rollup rows (all three) | {rollup_rows} ({rollup_row_share:.1}% of the events) |\n\
         | rollup bytes | {rollup_bytes} ({rollup_share:.1}% of the events segments' bytes) |\n\n\
         ## The day final (finalized, rollups merged into hour and day rows, billing snapshot)\n\n\
         | metric | value |\n|---|---|\n\
         | finalize CPU time (re-seal of every partition) | {finalize_cpu_ms:.0} ms |\n\
         | merge CPU time (hour and day rows of the three rollups, {passes} passes) | {merge_cpu_ms:.0} ms |\n\
         | billing snapshot CPU time (from the day's raw events) | {billing_cpu_ms:.0} ms |\n\
         | seal-time rollup rows / bytes kept (minute rows of campaign) | {seal_rows_after} / {seal_bytes_after} |\n\
         | merged rows / bytes (hour and day rows of the three) | {merged_rows} / {merged_bytes} |\n\
         | rollup bytes in all | {settled_rollup_bytes} ({settled_share:.1}% of the events segments' {settled_bytes} bytes) |\n\
         | billing snapshot bytes | {billing_bytes} |\n\n\
         ## Seal with exactly-once (dedupe, attribution, invalid traffic)\n\n\
         | metric | value |\n|---|---|\n\
         | events sent / accepted (exact re-sends answered as duplicates) | {events} / {eo_accepted} |\n\
         | seal time | {eo_seal_ms:.0} ms |\n\
         | seal throughput (wall) | {eo_seal_rate:.2} M events/s |\n\
         | seal CPU time | {eo_seal_cpu_ms:.0} ms ({eo_seal_cpu_rate:.2} M events/s with 2 cores fully ours) |\n\
         | dedupe keys held | {dedupe_keys} |\n\
         | dedupe table RAM | {dedupe_bytes} bytes ({dedupe_bpk:.1} bytes/key; {ingest_bpk:.1} bytes/key right after ingest) |\n\n\
         ## Filtered-sum scan (median of {scan_runs}, all segments sealed)\n\n\
         Rows/s counts every row of the store the scan answers for (pruned or read); \
         matched rows/s counts only rows that passed the filter.\n\n\
         | query | matched rows | median ms | M rows/s (store) | M matched rows/s | CPU ms per run | M rows/s (store) with 2 cores fully ours |\n|---|---|---|---|---|---|---|\n{scans}\n\n\
         Hypervisor steal during the run: {steal:.0}% of all CPU time (from /proc/stat). The \"2 cores fully \
         ours\" columns divide the work by the CPU time the process actually got, times two cores.\n",
        parts = report.partitions,
        finalize_cpu_ms = finalize_cpu.as_secs_f64() * 1e3,
        merge_cpu_ms = merge_cpu.as_secs_f64() * 1e3,
        billing_cpu_ms = billing_cpu.as_secs_f64() * 1e3,
        settled_share = settled_rollup_bytes as f64 * 100.0 / settled_bytes.max(1) as f64,
        bare_seal_ms = bare_seal_time.as_secs_f64() * 1e3,
        bare_seal_cpu_ms = bare_seal_cpu.as_secs_f64() * 1e3,
        seal_over = (seal_time.as_secs_f64() / bare_seal_time.as_secs_f64().max(1e-9) - 1.0) * 100.0,
        cpu_over = (seal_cpu.as_secs_f64() / bare_seal_cpu.as_secs_f64().max(1e-9) - 1.0) * 100.0,
        rollup_row_share = rollup_rows as f64 * 100.0 / events as f64,
        rollup_share = rollup_bytes as f64 * 100.0 / bytes.max(1) as f64,
        seal_cpu_ms = seal_cpu.as_secs_f64() * 1e3,
        seal_cpu_rate = 2.0 * events as f64 / seal_cpu.as_secs_f64().max(1e-9) / 1e6,
        eo_seal_cpu_ms = eo_seal_cpu.as_secs_f64() * 1e3,
        eo_seal_cpu_rate = 2.0 * eo_accepted as f64 / eo_seal_cpu.as_secs_f64().max(1e-9) / 1e6,
        steal = steal_share(&stat0) * 100.0,
        eo_seal_ms = eo_seal_time.as_secs_f64() * 1e3,
        eo_seal_rate = eo_accepted as f64 / eo_seal_time.as_secs_f64() / 1e6,
        dedupe_keys = dedupe_stats.keys,
        dedupe_bytes = dedupe_stats.table_bytes,
        dedupe_bpk = dedupe_stats.bytes_per_key(),
        ingest_bpk = dedupe_after_ingest.bytes_per_key(),
        cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        seal_ms = seal_time.as_secs_f64() * 1e3,
        seal_rate = events as f64 / seal_time.as_secs_f64() / 1e6,
        bpe = bytes as f64 / events as f64,
        scans = scan_lines.join("\n"),
    );
    println!("{report}");
    if let Ok(path) = std::env::var("ADSTORE_BENCH_REPORT") {
        std::fs::write(&path, &report).expect("write report");
        eprintln!("report written to {path}");
    }
    store.close().expect("close");
}
