//! Filtered aggregation through the scan API: `Snapshot::scan` with a
//! dimension filter (pruned by dictionaries and row indexes) over ~200k
//! sealed events, summing `cost_micros` from the returned column.
//!
//! ```sh
//! cargo bench -p adstore-storage --bench scan
//! ```

use std::hint::black_box;
use std::time::Duration;

use adstore_storage::{
    ColumnData, ColumnId, DimFilter, ScanRequest, SealPipeline, Snapshot, Store, StoreConfig, TimeRange,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/events.rs"]
mod events;

const EVENTS: usize = 200_000;

fn sum_cost(snapshot: &Snapshot, req: &ScanRequest) -> (i64, usize) {
    let mut sum = 0i64;
    let mut rows = 0usize;
    for b in snapshot.scan(req).expect("scan") {
        rows += b.rows;
        if let ColumnData::I64(v) = &b.columns[0] {
            sum += v.iter().sum::<i64>();
        }
    }
    (sum, rows)
}

fn bench_scan(c: &mut Criterion) {
    let batch = events::batch(EVENTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { seal_max_rows: usize::MAX, fsync: false, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    store.append(&batch).expect("append");
    store.seal_all().expect("seal");
    let snapshot = store.snapshot();
    assert!(snapshot.head.is_empty(), "every event is sealed");

    let cost = batch.i64_column(ColumnId::CostMicros);
    let cases = [
        ("advertiser_hot", ColumnId::AdvertiserId, "adv-000"),
        ("campaign_cold", ColumnId::CampaignId, "cmp-017-01"),
        ("device_mobile", ColumnId::Device, "mobile"),
    ];
    let mut group = c.benchmark_group("scan");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, column, value) in cases {
        let req = ScanRequest {
            time_range: TimeRange::ALL,
            filters: vec![DimFilter::eq(column, value)],
            columns: vec![ColumnId::CostMicros],
        };
        // Guard the numbers: the scan's sum is the naive one.
        let col = batch.str_column(column);
        let naive: i64 = (0..batch.num_rows())
            .filter(|&i| !arrow_array::Array::is_null(col, i) && col.value(i) == value)
            .map(|i| cost.value(i))
            .sum();
        let (sum, rows) = sum_cost(&snapshot, &req);
        assert_eq!(sum, naive, "{name}");
        assert!(rows > 0, "{name} matches some rows");
        group
            .bench_function(format!("sum_cost_where_{name}_200k"), |b| b.iter(|| sum_cost(&snapshot, black_box(&req))));
    }
    group.finish();
    drop(snapshot);
    store.close().expect("close");
}

criterion_group!(benches, bench_scan);
criterion_main!(benches);
