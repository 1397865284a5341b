//! Parse throughput: 100k realistic NDJSON events (about 330 bytes each, all
//! three types, RFC 3339 and epoch timestamps, a few escaped strings).

use std::hint::black_box;
use std::time::Duration;

use adstore_ingest::{ParseOptions, parse_json_array, parse_ndjson};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 100_000;
/// 2026-11-22T10:00:00Z
const NOW: i64 = 1_795_341_600_000;

/// A small deterministic generator (SplitMix64), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event_lines() -> Vec<String> {
    const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "ctv", "other"];
    const COUNTRIES: [&str; 6] = ["US", "DE", "FR", "GB", "JP", "BR"];
    const OS: [&str; 4] = ["ios", "android", "windows", "macos"];
    let mut rng = Rng(42);
    (0..EVENTS)
        .map(|i| {
            let ts_ms = NOW - rng.below(3_600_000) as i64;
            let ts = if i % 2 == 0 {
                ts_ms.to_string()
            } else {
                let s = ts_ms / 1000 % 86_400;
                format!("\"2026-11-22T{:02}:{:02}:{:02}.{:03}Z\"", s / 3600, s / 60 % 60, s % 60, ts_ms % 1000)
            };
            let (kind, anchor) = match i % 10 {
                0..=6 => ("impression", format!(r#","impression_id":"imp-{i:012}""#)),
                7 | 8 => ("click", format!(r#","impression_id":"imp-{:012}","click_id":"clk-{i:012}""#, i - 7)),
                _ => {
                    ("conversion", format!(r#","click_id":"clk-{:012}","value_micros":{}"#, i - 1, rng.below(1 << 30)))
                }
            };
            let placement = if i % 50 == 0 { r#""feed \"top\" \u00e9""# } else { r#""feed_top""# };
            format!(
                concat!(
                    r#"{{"event_id":"{:016x}","type":"{}","ts":{},"publisher_id":"pub-{}","advertiser_id":"adv-{}","#,
                    r#""campaign_id":"camp-{}","ad_group_id":"ag-{}","ad_id":"ad-{}"{},"user_key":"u-{:x}","#,
                    r#""device":"{}","os":"{}","country":"{}","placement":{},"cost_micros":{},"ip_hash":"{:x}"}}"#
                ),
                rng.next(),
                kind,
                ts,
                rng.below(20),
                rng.below(200),
                rng.below(2000),
                rng.below(5000),
                rng.below(20_000),
                anchor,
                rng.below(1 << 40),
                DEVICES[rng.below(5) as usize],
                OS[rng.below(4) as usize],
                COUNTRIES[rng.below(6) as usize],
                placement,
                rng.below(5_000),
                rng.next(),
            )
        })
        .collect()
}

fn bench_parse(c: &mut Criterion) {
    let lines = event_lines();
    let ndjson = lines.join("\n");
    let array = format!("[{}]", lines.join(",\n"));
    let opts = ParseOptions { now_ms: NOW, ..ParseOptions::default() };
    // Guard the numbers: every generated event must be accepted.
    let check = parse_ndjson(ndjson.as_bytes(), &opts);
    assert_eq!((check.batch().num_rows(), check.rejected), (EVENTS, 0), "{:?}", check.errors.first());

    let mut group = c.benchmark_group("parse");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("ndjson_100k", |b| b.iter(|| parse_ndjson(black_box(ndjson.as_bytes()), &opts)));
    group.bench_function("json_array_100k", |b| b.iter(|| parse_json_array(black_box(array.as_bytes()), &opts)));
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
