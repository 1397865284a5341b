//! Realistic synthetic ad events, deterministic by seed.
//!
//! The stream imitates a day of a small ad network:
//! - advertisers own campaigns; campaign popularity is skewed (Zipf-like),
//!   with campaign 0 of advertiser 0 the hot one;
//! - about 8% of events are clicks: most carry the `impression_id` of a
//!   recent impression of the same ad and user, some only the `user_key`,
//!   a few point at impressions that never existed (orphans);
//! - about 0.3% are conversions, by `click_id` or by `user_key` only;
//! - about 2% of lines are exact re-sends of an earlier line (producer retries);
//! - about 1% arrive late (event time 1 to 6 hours behind the stream);
//! - one burst of bot clicks: one user hammering one ad with a bot user agent.
//!
//! Events come out in arrival order with event times spread evenly over
//! `[start_ms, start_ms + span_ms)`.

use std::io::Write;

use adstore_storage::{Event, EventType};

/// User agent hash the bot burst uses; a deny list can name it.
pub const BOT_UA_HASH: &str = "ua-bot-0000";

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub events: u64,
    pub start_ms: i64,
    pub span_ms: i64,
    pub advertisers: usize,
    pub users: u64,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            seed: 42,
            events: 1_000_000,
            // 2026-11-01T00:00:00Z
            start_ms: 1_793_491_200_000,
            span_ms: 86_400_000,
            advertisers: 40,
            users: 200_000,
        }
    }
}

const DEVICES: [(&str, &str, u32); 5] = [
    ("mobile", "android", 45),
    ("mobile", "ios", 20),
    ("desktop", "windows", 22),
    ("tablet", "ios", 8),
    ("ctv", "tizen", 5),
];
const COUNTRIES: [&str; 12] = ["US", "DE", "GB", "FR", "BR", "IN", "JP", "CA", "ES", "IT", "NL", "MX"];
const PLACEMENTS: [&str; 8] =
    ["feed", "banner_top", "banner_bottom", "interstitial", "video_pre", "video_mid", "native", "search"];

struct Campaign {
    advertiser: usize,
    campaign: usize,
    ads: usize,
}

#[derive(Clone)]
struct Recent {
    id: String,
    ad: String,
    user: u64,
    ts: i64,
    campaign: usize,
}

/// An iterator of generated events.
pub struct Generator {
    cfg: GenConfig,
    rng: fastrand::Rng,
    campaigns: Vec<Campaign>,
    /// Cumulative campaign weights for skewed picks.
    weights: Vec<f64>,
    n: u64,
    recent_impressions: Vec<Option<Recent>>,
    recent_clicks: Vec<Option<Recent>>,
    resend: Option<Event>,
    bot_start: u64,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let mut campaigns = Vec::new();
        for a in 0..cfg.advertisers.max(1) {
            for c in 0..rng.usize(2..=8) {
                campaigns.push(Campaign { advertiser: a, campaign: c, ads: rng.usize(2..=6) });
            }
        }
        let mut acc = 0.0;
        let weights = (0..campaigns.len())
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(1.1);
                acc
            })
            .collect();
        let bot_start = cfg.events / 2;
        Generator {
            cfg,
            rng,
            campaigns,
            weights,
            n: 0,
            recent_impressions: vec![None; 4096],
            recent_clicks: vec![None; 1024],
            resend: None,
            bot_start,
        }
    }

    fn pick_campaign(&mut self) -> usize {
        // Invariant: weights is non-empty (at least one advertiser with two campaigns).
        let total = *self.weights.last().expect("campaigns exist");
        let x = self.rng.f64() * total;
        self.weights.partition_point(|w| *w < x).min(self.campaigns.len() - 1)
    }

    fn base(&mut self, kind: EventType, campaign: usize, ad: String, user: u64, ts: i64) -> Event {
        let c = &self.campaigns[campaign];
        let (advertiser, camp) = (c.advertiser, c.campaign);
        let roll = self.rng.u32(0..100);
        let mut acc = 0;
        let (device, os) = DEVICES
            .iter()
            .find(|(_, _, w)| {
                acc += w;
                roll < acc
            })
            .map(|(d, o, _)| (*d, *o))
            .unwrap_or(("other", "other"));
        let country = COUNTRIES[(user % COUNTRIES.len() as u64) as usize];
        let publisher = self.rng.usize(0..20);
        Event {
            event_id: String::new(),
            kind,
            ts,
            publisher_id: format!("pub-{publisher:02}"),
            advertiser_id: format!("adv-{advertiser:03}"),
            campaign_id: format!("cmp-{advertiser:03}-{camp:02}"),
            ad_group_id: Some(format!("grp-{advertiser:03}-{camp:02}-{}", user % 2)),
            ad_id: ad,
            user_key: Some(format!("u{user:07}")),
            device: Some(device.to_string()),
            os: Some(os.to_string()),
            country: Some(country.to_string()),
            region: if country == "US" {
                Some(format!("US-{}", ["CA", "NY", "TX", "WA"][(user % 4) as usize]))
            } else {
                None
            },
            placement: Some(PLACEMENTS[self.rng.usize(0..PLACEMENTS.len())].to_string()),
            ip_hash: Some(format!("ip{:06}", user % 150_000)),
            ua_hash: Some(format!("ua{:03}", user % 300)),
            ..Event::default()
        }
    }

    fn next_event(&mut self) -> Event {
        let n = self.n;
        self.n += 1;
        let step = self.cfg.span_ms as f64 / self.cfg.events.max(1) as f64;
        let mut ts = self.cfg.start_ms + (n as f64 * step) as i64;
        let seed = self.cfg.seed;

        // Exact re-send of the previous event (a producer retry).
        if self.rng.u32(0..1000) < 20
            && let Some(e) = self.resend.take()
        {
            return e;
        }
        // The bot burst: 600 clicks from one user on the hot ad in a minute.
        if (self.bot_start..self.bot_start + 600).contains(&n) && self.rng.bool() {
            let mut e = self.base(EventType::Click, 0, "ad-000-00-0".into(), 7, ts);
            e.event_id = format!("c-{seed}-{n}");
            e.click_id = Some(e.event_id.clone());
            e.ua_hash = Some(BOT_UA_HASH.into());
            e.ip_hash = Some("ip-bot".into());
            e.cost_micros = 250_000;
            return e;
        }
        // A late arrival: event time hours behind the stream.
        if self.rng.u32(0..100) == 0 {
            ts -= self.rng.i64(3_600_000..6 * 3_600_000);
            ts = ts.max(self.cfg.start_ms);
        }
        let roll = self.rng.u32(0..10_000);
        let e = if roll < 30 {
            self.conversion(n, ts)
        } else if roll < 830 {
            self.click(n, ts)
        } else {
            self.impression(n, ts)
        };
        self.resend = Some(e.clone());
        e
    }

    fn impression(&mut self, n: u64, ts: i64) -> Event {
        let campaign = self.pick_campaign();
        let c = &self.campaigns[campaign];
        let ad = format!("ad-{:03}-{:02}-{}", c.advertiser, c.campaign, self.rng.usize(0..c.ads));
        let user = self.user();
        let mut e = self.base(EventType::Impression, campaign, ad.clone(), user, ts);
        e.event_id = format!("i-{}-{n}", self.cfg.seed);
        e.impression_id = Some(e.event_id.clone());
        e.cost_micros = self.rng.i64(500..5_000);
        let slot = self.rng.usize(0..self.recent_impressions.len());
        self.recent_impressions[slot] = Some(Recent { id: e.event_id.clone(), ad, user, ts, campaign });
        e
    }

    fn click(&mut self, n: u64, ts_now: i64) -> Event {
        let slot = self.rng.usize(0..self.recent_impressions.len());
        let Some(imp) = self.recent_impressions[slot].clone() else { return self.impression(n, ts_now) };
        // Clicks mostly follow their impression by 0.5 s to 10 min; some take
        // up to 50 min, a few come suspiciously fast (under 1 s).
        let delay = match self.rng.u32(0..100) {
            0..3 => self.rng.i64(50..900),
            3..23 => self.rng.i64(600_000..3_000_000),
            _ => self.rng.i64(500..600_000),
        };
        let ts = imp.ts + delay;
        let mut e = self.base(EventType::Click, imp.campaign, imp.ad.clone(), imp.user, ts);
        e.event_id = format!("c-{}-{n}", self.cfg.seed);
        e.click_id = Some(e.event_id.clone());
        e.cost_micros = self.rng.i64(100_000..1_000_000);
        match self.rng.u32(0..100) {
            0..85 => e.impression_id = Some(imp.id.clone()),
            85..97 => {}                                           // user_key only: last-touch attribution
            _ => e.impression_id = Some(format!("i-missing-{n}")), // orphan
        }
        let cslot = self.rng.usize(0..self.recent_clicks.len());
        self.recent_clicks[cslot] = Some(Recent { id: e.event_id.clone(), ts, ..imp });
        e
    }

    fn conversion(&mut self, n: u64, ts: i64) -> Event {
        let slot = self.rng.usize(0..self.recent_clicks.len());
        let Some(click) = self.recent_clicks[slot].clone() else { return self.impression(n, ts) };
        let ts = click.ts + self.rng.i64(1_000..3_600_000);
        let mut e = self.base(EventType::Conversion, click.campaign, click.ad.clone(), click.user, ts);
        e.event_id = format!("v-{}-{n}", self.cfg.seed);
        if self.rng.u32(0..100) < 70 {
            e.click_id = Some(click.id.clone());
        }
        e.value_micros = self.rng.i64(1_000_000..200_000_000);
        e
    }

    fn user(&mut self) -> u64 {
        // Skewed: a quarter of traffic from 1% of users.
        if self.rng.u32(0..4) == 0 {
            self.rng.u64(0..self.cfg.users / 100 + 1)
        } else {
            self.rng.u64(0..self.cfg.users)
        }
    }
}

impl Iterator for Generator {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        (self.n < self.cfg.events).then(|| self.next_event())
    }
}

/// Writes one event as an NDJSON line (with the trailing newline).
pub fn write_ndjson(e: &Event, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, key: &str, v: &str) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    }
    fn opt(out: &mut Vec<u8>, key: &str, v: &Option<String>) {
        if let Some(v) = v {
            s(out, key, v);
        }
    }
    out.extend_from_slice(b"{\"event_id\":");
    let _ = serde_json::to_writer(&mut *out, &e.event_id);
    s(out, "type", e.kind.as_str());
    let _ = write!(out, ",\"ts\":{}", e.ts);
    s(out, "publisher_id", &e.publisher_id);
    s(out, "advertiser_id", &e.advertiser_id);
    s(out, "campaign_id", &e.campaign_id);
    opt(out, "ad_group_id", &e.ad_group_id);
    s(out, "ad_id", &e.ad_id);
    opt(out, "impression_id", &e.impression_id);
    opt(out, "click_id", &e.click_id);
    opt(out, "user_key", &e.user_key);
    opt(out, "device", &e.device);
    opt(out, "os", &e.os);
    opt(out, "country", &e.country);
    opt(out, "region", &e.region);
    opt(out, "placement", &e.placement);
    if e.cost_micros != 0 {
        let _ = write!(out, ",\"cost_micros\":{}", e.cost_micros);
    }
    if e.value_micros != 0 {
        let _ = write!(out, ",\"value_micros\":{}", e.value_micros);
    }
    opt(out, "ip_hash", &e.ip_hash);
    opt(out, "ua_hash", &e.ua_hash);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_by_seed() {
        let cfg = GenConfig { events: 2_000, ..GenConfig::default() };
        let a: Vec<Event> = Generator::new(cfg.clone()).collect();
        let b: Vec<Event> = Generator::new(cfg.clone()).collect();
        assert_eq!(a, b);
        let c: Vec<Event> = Generator::new(GenConfig { seed: 7, ..cfg }).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn mix_is_realistic() {
        let cfg = GenConfig { events: 100_000, ..GenConfig::default() };
        let events: Vec<Event> = Generator::new(cfg).collect();
        let clicks = events.iter().filter(|e| e.kind == EventType::Click).count() as f64;
        let convs = events.iter().filter(|e| e.kind == EventType::Conversion).count() as f64;
        let n = events.len() as f64;
        assert!((0.06..0.11).contains(&(clicks / n)), "click share {}", clicks / n);
        assert!((0.001..0.006).contains(&(convs / n)), "conversion share {}", convs / n);
        let mut ids: Vec<(&str, EventType)> = events.iter().map(|e| (e.event_id.as_str(), e.kind)).collect();
        ids.sort();
        ids.dedup();
        let resend_share = 1.0 - ids.len() as f64 / n;
        assert!((0.01..0.03).contains(&resend_share), "re-send share {resend_share}");
        // Clicks with impression_id point at an impression with the same ad, or are orphans.
        let hot = events.iter().filter(|e| e.campaign_id == "cmp-000-00").count() as f64;
        assert!(hot / n > 0.05, "hot campaign share {}", hot / n);
        assert!(events.iter().any(|e| e.ua_hash.as_deref() == Some(BOT_UA_HASH)));
    }

    #[test]
    fn ndjson_lines_are_json() {
        let cfg = GenConfig { events: 100, ..GenConfig::default() };
        let mut buf = Vec::new();
        for e in Generator::new(cfg) {
            write_ndjson(&e, &mut buf);
        }
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("valid json");
            assert!(v.get("event_id").is_some());
        }
    }
}
