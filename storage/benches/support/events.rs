//! Generated ad events for the storage micro-benchmarks: deterministic,
//! skewed like real traffic (a hot advertiser, Zipf-ish campaigns, 8% clicks),
//! spread over one day. The storage crate cannot use the server's generator
//! (dependencies point server -> storage), so this is a small stand-in.

use adstore_storage::{Event, EventBatch, EventBatchBuilder, EventType};

/// 2026-11-01T00:00:00Z
pub const START_MS: i64 = 1_793_491_200_000;
pub const DAY_MS: i64 = 86_400_000;
pub const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "ctv", "other"];
const COUNTRIES: [&str; 12] = ["US", "DE", "GB", "FR", "BR", "IN", "JP", "CA", "ES", "IT", "NL", "MX"];
const PLACEMENTS: [&str; 8] =
    ["feed", "banner_top", "banner_bottom", "interstitial", "video_pre", "video_mid", "native", "search"];

/// SplitMix64: small, fast, deterministic.
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

    /// Skewed pick in 0..n: index i with weight about 1/(i+1).
    fn skewed(&mut self, n: u64) -> u64 {
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (((n as f64 + 1.0).powf(x) - 1.0) as u64).min(n - 1)
    }
}

/// `events` events in time order over one day, as one batch.
pub fn batch(events: usize) -> EventBatch {
    let mut rng = Rng(42);
    let mut b = EventBatchBuilder::with_capacity(events);
    let step = DAY_MS / events.max(1) as i64;
    for n in 0..events {
        let adv = rng.skewed(40);
        let camp = rng.skewed(6);
        let user = rng.below(200_000);
        let kind = match rng.below(1000) {
            0..3 => EventType::Conversion,
            3..83 => EventType::Click,
            _ => EventType::Impression,
        };
        let id = format!("e-{n}");
        let e = Event {
            event_id: id.clone(),
            kind,
            ts: START_MS + n as i64 * step,
            publisher_id: format!("pub-{:02}", rng.below(20)),
            advertiser_id: format!("adv-{adv:03}"),
            campaign_id: format!("cmp-{adv:03}-{camp:02}"),
            ad_group_id: Some(format!("grp-{adv:03}-{camp:02}-{}", user % 2)),
            ad_id: format!("ad-{adv:03}-{camp:02}-{}", rng.below(4)),
            impression_id: (kind == EventType::Impression).then(|| id.clone()),
            click_id: (kind == EventType::Click).then(|| id.clone()),
            user_key: Some(format!("u{user:07}")),
            device: Some(DEVICES[rng.skewed(5) as usize].to_string()),
            os: Some(["android", "ios", "windows"][rng.below(3) as usize].to_string()),
            country: Some(COUNTRIES[(user % 12) as usize].to_string()),
            region: None,
            placement: Some(PLACEMENTS[rng.below(8) as usize].to_string()),
            cost_micros: match kind {
                EventType::Click => 100_000 + rng.below(900_000) as i64,
                EventType::Impression => 500 + rng.below(4_500) as i64,
                EventType::Conversion => 0,
            },
            value_micros: if kind == EventType::Conversion { rng.below(100_000_000) as i64 } else { 0 },
            ip_hash: Some(format!("ip{:06}", user % 150_000)),
            ua_hash: Some(format!("ua{:03}", user % 300)),
            ..Event::default()
        };
        b.push(&e);
    }
    b.finish()
}
