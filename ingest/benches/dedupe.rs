//! Dedupe lookups: admitting 10M fresh keys in requests of 10k, the way a
//! bulk load meets the index (one key per event, every key new), into an
//! index that grows as keys arrive and into one sized for them up front.

use std::hint::black_box;
use std::time::Duration;

use adstore_ingest::{DedupeConfig, DedupeIndex, idempotency_key};
use adstore_storage::EventType;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// The server's allocator: it backs the tables with huge pages, which the
/// system allocator on this VM does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: usize = 10_000_000;
/// Keys per request: an NDJSON request's 10,000 lines.
const REQUEST: usize = 10_000;
/// Keys per request of Arrow input: `adstore ingest`'s 65,536 rows.
const ARROW_REQUEST: usize = 65_536;
/// 2026-11-22T10:00:00Z
const START: i64 = 1_795_341_600_000;

fn keys_by_request(per_request: usize) -> Vec<Vec<(u128, i64)>> {
    let keys: Vec<(u128, i64)> = (0..KEYS)
        .map(|i| (idempotency_key("pub-07", EventType::Impression, &format!("i-42-{i}")), START + i as i64 * 17))
        .collect();
    keys.chunks(per_request).map(<[_]>::to_vec).collect()
}

fn admit_all(index: &DedupeIndex, requests: &[Vec<(u128, i64)>]) {
    for keys in requests {
        black_box(index.admit(keys));
    }
}

/// What the server does per request: admit with the keys kept in flight,
/// then settle them as stored once the WAL has them.
fn admit_durable_all(index: &DedupeIndex, requests: &[Vec<(u128, i64)>]) {
    for keys in requests {
        let Some((verdicts, flight)) = index.admit_durable(keys, Duration::from_secs(1)) else {
            panic!("nothing else is in flight");
        };
        let admitted: Vec<(u128, i64)> =
            keys.iter().zip(&verdicts).filter(|(_, dup)| !**dup).map(|(k, _)| *k).collect();
        index.settle(flight, &admitted, true);
        black_box(verdicts);
    }
}

fn bench(c: &mut Criterion) {
    let requests = keys_by_request(REQUEST);
    let mut g = c.benchmark_group("dedupe");
    g.sample_size(10);
    g.throughput(Throughput::Elements(KEYS as u64));
    for (name, expected_keys) in [("admit_10m_growing", 0), ("admit_10m_presized", KEYS)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || DedupeIndex::new(DedupeConfig { expected_keys, ..DedupeConfig::default() }),
                |index| admit_all(&index, &requests),
                BatchSize::PerIteration,
            )
        });
    }
    // The lookups alone: the table's memory already mapped (a first pass
    // admits and then forgets the keys), so no page is faulted in.
    g.bench_function("admit_10m_warm", |b| {
        b.iter_batched(
            || {
                let index = DedupeIndex::new(DedupeConfig { expected_keys: KEYS, ..DedupeConfig::default() });
                admit_all(&index, &requests);
                for keys in &requests {
                    index.forget(keys);
                }
                index
            },
            |index| admit_all(&index, &requests),
            BatchSize::PerIteration,
        )
    });
    // As the server admits: keys in flight until settled.
    g.bench_function("admit_durable_10m_presized", |b| {
        b.iter_batched(
            || DedupeIndex::new(DedupeConfig { expected_keys: KEYS, ..DedupeConfig::default() }),
            |index| admit_durable_all(&index, &requests),
            BatchSize::PerIteration,
        )
    });
    let arrow_requests = keys_by_request(ARROW_REQUEST);
    g.bench_function("admit_durable_10m_presized_arrow", |b| {
        b.iter_batched(
            || DedupeIndex::new(DedupeConfig { expected_keys: KEYS, ..DedupeConfig::default() }),
            |index| admit_durable_all(&index, &arrow_requests),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
