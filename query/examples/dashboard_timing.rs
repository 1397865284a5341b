//! Times the dashboard query suite over generated events (not the
//! benchmark harness; a quick check while developing the executor).
//!
//! `cargo run --release -p adstore-query --example dashboard_timing -- [events] [threads]`

use std::time::Instant;

use adstore_query::{QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, InvalidReason, SealPipeline, Store, StoreConfig};

const DAY0: i64 = 1_795_305_600_000; // 2026-11-22T00:00:00Z
const HOUR: i64 = 3_600_000;

/// CPU time of this process (user + system), in ms, from /proc (Linux).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    ticks * 10.0
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    let dir = tempfile::tempdir()?;
    let config = StoreConfig { fsync: false, seal_max_rows: 100_000_000, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new())?;
    let mut r = Rng(42);
    let devices = ["mobile", "desktop", "tablet", "ctv", "other"];
    let countries = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "IT"];
    let placements = ["feed", "banner", "video", "search", "native"];
    let t0 = Instant::now();
    let chunk = 500_000u64;
    let mut i = 0;
    while i < n {
        let m = chunk.min(n - i);
        let events: Vec<Event> = (0..m)
            .map(|k| {
                let adv = r.below(50);
                let camp = adv * 20 + r.below(20);
                let ad = camp * 10 + r.below(10);
                let roll = r.below(100);
                let kind = if roll < 90 {
                    EventType::Impression
                } else if roll < 98 {
                    EventType::Click
                } else {
                    EventType::Conversion
                };
                Event {
                    event_id: format!("e{}", i + k),
                    kind,
                    ts: DAY0 + (r.below(7 * 24 * HOUR as u64)) as i64,
                    publisher_id: format!("pub{}", r.below(200)),
                    advertiser_id: format!("adv{adv}"),
                    campaign_id: format!("camp{camp}"),
                    ad_group_id: Some(format!("grp{}", camp * 3 + r.below(3))),
                    ad_id: format!("ad{ad}"),
                    user_key: Some(format!("user{}", r.below(1_000_000))),
                    device: Some(devices[r.below(5) as usize].to_string()),
                    os: Some(["ios", "android", "windows"][r.below(3) as usize].to_string()),
                    country: Some(countries[r.below(10) as usize].to_string()),
                    region: None,
                    placement: Some(placements[r.below(5) as usize].to_string()),
                    cost_micros: if kind == EventType::Click { 200_000 } else { 2_000 },
                    value_micros: if kind == EventType::Conversion { 5_000_000 } else { 0 },
                    invalid_reason: if r.below(50) == 0 { InvalidReason::BotUa } else { InvalidReason::Valid },
                    attributed: kind != EventType::Impression,
                    ..Event::default()
                }
            })
            .collect();
        store.append(&EventBatch::from_events(&events))?;
        i += m;
    }
    store.seal_all()?;
    let snap = store.snapshot();
    eprintln!(
        "loaded {n} events in {:.1}s: {} segments, {} head rows",
        t0.elapsed().as_secs_f64(),
        snap.segments.len(),
        snap.head_rows()
    );
    let day1 = "ts >= '2026-11-24T00:00:00Z' AND ts < '2026-11-25T00:00:00Z'";
    let queries = [
        ("ctr by campaign", format!("SELECT campaign_id, sum(clicks) * 1.0 / nullif(sum(impressions), 0) AS ctr FROM metrics WHERE advertiser_id = 'adv7' AND {day1} GROUP BY campaign_id ORDER BY ctr DESC")),
        ("hourly one campaign", "SELECT date_trunc('hour', ts) AS h, sum(impressions), sum(clicks) FROM metrics WHERE campaign_id = 'camp142' AND ts >= '2026-11-24T00:00:00Z' AND ts < '2026-11-26T00:00:00Z' GROUP BY 1 ORDER BY 1".into()),
        ("top ads country+device", format!("SELECT ad_id, count(*) AS clicks FROM events WHERE type = 'click' AND country = 'US' AND device = 'mobile' AND {day1} GROUP BY ad_id ORDER BY clicks DESC LIMIT 10")),
        ("device x country", "SELECT device, country, sum(impressions), sum(clicks), sum(spend_micros) FROM metrics WHERE advertiser_id = 'adv3' GROUP BY 1, 2 ORDER BY 1, 2".into()),
        ("minute series last hour", "SELECT time_bucket(INTERVAL '1 minute', ts) AS m, count(*) FROM events WHERE ts >= now() - INTERVAL '1 hour' GROUP BY 1 ORDER BY 1".into()),
        ("top publisher x placement", "SELECT publisher_id, placement, sum(impressions) AS i FROM metrics GROUP BY 1, 2 ORDER BY i DESC LIMIT 10".into()),
        ("spend per advertiser per day", "SELECT advertiser_id, date_trunc('day', ts) AS d, sum(spend_micros) FROM metrics GROUP BY 1, 2 ORDER BY 1, 2".into()),
        ("calib: count(*)", "SELECT count(*) FROM events".into()),
        ("calib: sum(cost)", "SELECT sum(cost_micros) FROM events".into()),
        ("calib: group by publisher", "SELECT publisher_id, count(*) FROM events GROUP BY 1".into()),
        ("calib: group by pub, placement", "SELECT publisher_id, placement, count(*) FROM events GROUP BY 1, 2".into()),
        ("calib: sum(impressions)", "SELECT sum(impressions) FROM metrics".into()),
        ("approx users per campaign", format!("SELECT campaign_id, approx_count_distinct(user_key) FROM events WHERE {day1} GROUP BY 1 ORDER BY 1")),
    ];
    let opts = QueryOptions { now_ms: DAY0 + 7 * 24 * HOUR, ..QueryOptions::default() };
    // ONLY=<index> runs one query many times (for profiling).
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    for (qi, (name, sql)) in queries.iter().enumerate() {
        if only.is_some_and(|o| o != qi) {
            continue;
        }
        let mut best = f64::MAX;
        let mut rows = 0;
        let iters = if only.is_some() { 40 } else { 10 };
        let cpu0 = cpu_ms();
        for _ in 0..iters {
            let t = Instant::now();
            let res = execute(&snap, sql, &opts)?;
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            rows = res.num_rows();
        }
        let cpu = (cpu_ms() - cpu0) / f64::from(iters);
        println!("{name:32} {best:8.2} ms wall (best)  {cpu:8.1} ms cpu (mean)  ({rows} rows)");
    }
    Ok(())
}
