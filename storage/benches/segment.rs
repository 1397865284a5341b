//! Segment encode and decode: `write_segment` of ~200k generated events
//! (dictionaries, zone maps, indexes, zstd blocks) and `read_column` of every
//! block of a dimension column and of a measure column.
//!
//! ```sh
//! cargo bench -p adstore-storage --bench segment
//! ```

use std::hint::black_box;
use std::time::Duration;

use adstore_storage::{ColumnId, SegmentId, SegmentReader, SegmentWriteOptions, write_segment};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/events.rs"]
mod events;

const EVENTS: usize = 200_000;

fn bench_segment(c: &mut Criterion) {
    let batch = events::batch(EVENTS);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SegmentWriteOptions::default();
    let path = dir.path().join("bench.seg");

    let mut group = c.benchmark_group("segment");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("write_200k", |b| {
        b.iter(|| write_segment(black_box(&path), black_box(&batch), &opts).expect("write"))
    });

    write_segment(&path, &batch, &opts).expect("write");
    let reader = SegmentReader::open(SegmentId(1), &path).expect("open");
    let blocks = reader.num_blocks();
    // Guard the numbers: the columns decode to every row.
    for col in [ColumnId::CampaignId, ColumnId::CostMicros, ColumnId::Ts] {
        let rows: usize = (0..blocks).map(|k| reader.read_column(col, k).expect("read").len()).sum();
        assert_eq!(rows, EVENTS, "{col:?}");
    }
    for (name, col) in [
        ("read_column_campaign_id_200k", ColumnId::CampaignId),
        ("read_column_cost_micros_200k", ColumnId::CostMicros),
        ("read_column_ts_200k", ColumnId::Ts),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for k in 0..blocks {
                    black_box(reader.read_column(col, k).expect("read"));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_segment);
criterion_main!(benches);
