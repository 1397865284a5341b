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

/// Clicks trail their impressions by up to 50 minutes and conversions their
/// clicks by up to an hour: a stream's last events lie up to this much
/// past its span. A stream meant to end by now starts this much earlier.
pub const MAX_TRAIL_MS: i64 = 2 * 3_600_000;

/// A recent impression or click, for later events to point at.
#[derive(Clone, Copy)]
struct Recent {
    /// Sequence number of the event (its id is `i-{seed}-{n}` / `c-{seed}-{n}`).
    n: u64,
    ad: u32,
    user: u64,
    ts: i64,
    campaign: usize,
    /// Clicks and conversions come through the publisher of their anchor
    /// (attribution never crosses publishers).
    publisher: u32,
}

/// Another event an event refers to, by sequence number.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ref {
    None,
    /// `i-{seed}-{n}`
    Impression(u64),
    /// `c-{seed}-{n}`
    Click(u64),
    /// `i-missing-{n}`: an impression that never existed.
    MissingImpression(u64),
}

/// One generated event as numbers only: building it allocates nothing.
/// [`Generator::next`] turns it into an [`Event`]; [`Generator::write_ndjson_chunk`]
/// writes it straight to NDJSON, byte for byte what [`write_ndjson`] writes
/// for that `Event` (a unit test holds the two together).
#[derive(Clone, Copy)]
struct Spec {
    kind: EventType,
    /// Sequence number: the event id is `{i|c|v}-{seed}-{n}`.
    n: u64,
    ts: i64,
    campaign: usize,
    ad: u32,
    user: u64,
    publisher: u32,
    /// Index into DEVICES; `None` for ("other", "other").
    device: Option<usize>,
    placement: usize,
    cost_micros: i64,
    value_micros: i64,
    impression: Ref,
    click: Ref,
    bot: bool,
}

/// An iterator of generated events.
pub struct Generator {
    cfg: GenConfig,
    rng: fastrand::Rng,
    campaigns: Vec<Campaign>,
    /// Cumulative campaign weights for skewed picks.
    weights: Vec<f64>,
    /// Events produced so far (re-sends included).
    n: u64,
    recent_impressions: Vec<Option<Recent>>,
    recent_clicks: Vec<Option<Recent>>,
    resend: Option<Spec>,
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

    /// Writes up to `max` more events as NDJSON lines to `out`, without
    /// building an [`Event`]; returns how many it wrote (0 at the end).
    pub fn write_ndjson_chunk(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let mut written = 0;
        while written < max {
            let Some(spec) = self.next_spec() else { break };
            self.write_spec(&spec, out);
            written += 1;
        }
        written
    }

    fn pick_campaign(&mut self) -> usize {
        // Invariant: weights is non-empty (at least one advertiser with two campaigns).
        let total = *self.weights.last().expect("campaigns exist");
        let x = self.rng.f64() * total;
        self.weights.partition_point(|w| *w < x).min(self.campaigns.len() - 1)
    }

    fn base(&mut self, kind: EventType, n: u64, campaign: usize, ad: u32, user: u64, ts: i64) -> Spec {
        let roll = self.rng.u32(0..100);
        let mut acc = 0;
        let device = DEVICES.iter().position(|(_, _, w)| {
            acc += w;
            roll < acc
        });
        let publisher = self.rng.u32(0..20);
        let placement = self.rng.usize(0..PLACEMENTS.len());
        Spec {
            kind,
            n,
            ts,
            campaign,
            ad,
            user,
            publisher,
            device,
            placement,
            cost_micros: 0,
            value_micros: 0,
            impression: Ref::None,
            click: Ref::None,
            bot: false,
        }
    }

    fn next_spec(&mut self) -> Option<Spec> {
        if self.n >= self.cfg.events {
            return None;
        }
        let n = self.n;
        self.n += 1;
        let step = self.cfg.span_ms as f64 / self.cfg.events.max(1) as f64;
        let mut ts = self.cfg.start_ms + (n as f64 * step) as i64;

        // Exact re-send of the previous event (a producer retry).
        if self.rng.u32(0..1000) < 20
            && let Some(e) = self.resend.take()
        {
            return Some(e);
        }
        // The bot burst: 600 clicks from one user on the hot ad in a minute.
        if (self.bot_start..self.bot_start + 600).contains(&n) && self.rng.bool() {
            let mut e = self.base(EventType::Click, n, 0, 0, 7, ts);
            e.click = Ref::Click(n);
            e.bot = true;
            e.cost_micros = 250_000;
            return Some(e);
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
        self.resend = Some(e);
        Some(e)
    }

    fn impression(&mut self, n: u64, ts: i64) -> Spec {
        let campaign = self.pick_campaign();
        let ad = self.rng.u32(0..self.campaigns[campaign].ads as u32);
        let user = self.user();
        let mut e = self.base(EventType::Impression, n, campaign, ad, user, ts);
        e.impression = Ref::Impression(n);
        e.cost_micros = self.rng.i64(500..5_000);
        let slot = self.rng.usize(0..self.recent_impressions.len());
        self.recent_impressions[slot] = Some(Recent { n, ad, user, ts, campaign, publisher: e.publisher });
        e
    }

    fn click(&mut self, n: u64, ts_now: i64) -> Spec {
        let slot = self.rng.usize(0..self.recent_impressions.len());
        let Some(imp) = self.recent_impressions[slot] else { return self.impression(n, ts_now) };
        // Clicks mostly follow their impression by 0.5 s to 10 min; some take
        // up to 50 min, a few come suspiciously fast (under 1 s).
        let delay = match self.rng.u32(0..100) {
            0..3 => self.rng.i64(50..900),
            3..23 => self.rng.i64(600_000..3_000_000),
            _ => self.rng.i64(500..600_000),
        };
        let ts = imp.ts + delay;
        let mut e = self.base(EventType::Click, n, imp.campaign, imp.ad, imp.user, ts);
        e.publisher = imp.publisher;
        e.click = Ref::Click(n);
        e.cost_micros = self.rng.i64(100_000..1_000_000);
        e.impression = match self.rng.u32(0..100) {
            0..85 => Ref::Impression(imp.n),
            85..97 => Ref::None,            // user_key only: last-touch attribution
            _ => Ref::MissingImpression(n), // orphan
        };
        let cslot = self.rng.usize(0..self.recent_clicks.len());
        self.recent_clicks[cslot] = Some(Recent { n, ts, ..imp });
        e
    }

    fn conversion(&mut self, n: u64, ts: i64) -> Spec {
        let slot = self.rng.usize(0..self.recent_clicks.len());
        let Some(click) = self.recent_clicks[slot] else { return self.impression(n, ts) };
        let ts = click.ts + self.rng.i64(1_000..3_600_000);
        let mut e = self.base(EventType::Conversion, n, click.campaign, click.ad, click.user, ts);
        e.publisher = click.publisher;
        if self.rng.u32(0..100) < 70 {
            e.click = Ref::Click(click.n);
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

    fn id(&self, r: Ref) -> Option<String> {
        let seed = self.cfg.seed;
        match r {
            Ref::None => None,
            Ref::Impression(n) => Some(format!("i-{seed}-{n}")),
            Ref::Click(n) => Some(format!("c-{seed}-{n}")),
            Ref::MissingImpression(n) => Some(format!("i-missing-{n}")),
        }
    }

    fn to_event(&self, s: &Spec) -> Event {
        let c = &self.campaigns[s.campaign];
        let (a, k) = (c.advertiser, c.campaign);
        let (device, os) = s.device.map_or(("other", "other"), |i| (DEVICES[i].0, DEVICES[i].1));
        let country = COUNTRIES[(s.user % COUNTRIES.len() as u64) as usize];
        let prefix = match s.kind {
            EventType::Impression => 'i',
            EventType::Click => 'c',
            EventType::Conversion => 'v',
        };
        Event {
            event_id: format!("{prefix}-{}-{}", self.cfg.seed, s.n),
            kind: s.kind,
            ts: s.ts,
            publisher_id: format!("pub-{:02}", s.publisher),
            advertiser_id: format!("adv-{a:03}"),
            campaign_id: format!("cmp-{a:03}-{k:02}"),
            ad_group_id: Some(format!("grp-{a:03}-{k:02}-{}", s.user % 2)),
            ad_id: format!("ad-{a:03}-{k:02}-{}", s.ad),
            impression_id: self.id(s.impression),
            click_id: self.id(s.click),
            user_key: Some(format!("u{:07}", s.user)),
            device: Some(device.to_string()),
            os: Some(os.to_string()),
            country: Some(country.to_string()),
            region: (country == "US").then(|| format!("US-{}", REGIONS[(s.user % 4) as usize])),
            placement: Some(PLACEMENTS[s.placement].to_string()),
            cost_micros: s.cost_micros,
            value_micros: s.value_micros,
            ip_hash: Some(if s.bot { "ip-bot".into() } else { format!("ip{:06}", s.user % 150_000) }),
            ua_hash: Some(if s.bot { BOT_UA_HASH.into() } else { format!("ua{:03}", s.user % 300) }),
            ..Event::default()
        }
    }

    /// `write_ndjson(&self.to_event(s))`, without the allocations.
    fn write_spec(&self, s: &Spec, out: &mut Vec<u8>) {
        let c = &self.campaigns[s.campaign];
        let (a, k) = (c.advertiser as u64, c.campaign as u64);
        let seed = self.cfg.seed;
        let id = |out: &mut Vec<u8>, key: &[u8], r: Ref| {
            let (prefix, n): (&[u8], u64) = match r {
                Ref::None => return,
                Ref::Impression(n) => (b"i-", n),
                Ref::Click(n) => (b"c-", n),
                Ref::MissingImpression(n) => (b"i-missing-", n),
            };
            out.extend_from_slice(key);
            out.extend_from_slice(prefix);
            if !matches!(r, Ref::MissingImpression(_)) {
                num(out, seed, 1);
                out.push(b'-');
            }
            num(out, n, 1);
            out.push(b'"');
        };
        let prefix: &[u8] = match s.kind {
            EventType::Impression => b"{\"event_id\":\"i-",
            EventType::Click => b"{\"event_id\":\"c-",
            EventType::Conversion => b"{\"event_id\":\"v-",
        };
        out.extend_from_slice(prefix);
        num(out, seed, 1);
        out.push(b'-');
        num(out, s.n, 1);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(s.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"ts\":");
        int(out, s.ts);
        out.extend_from_slice(b",\"publisher_id\":\"pub-");
        num(out, u64::from(s.publisher), 2);
        out.extend_from_slice(b"\",\"advertiser_id\":\"adv-");
        num(out, a, 3);
        out.extend_from_slice(b"\",\"campaign_id\":\"cmp-");
        num(out, a, 3);
        out.push(b'-');
        num(out, k, 2);
        out.extend_from_slice(b"\",\"ad_group_id\":\"grp-");
        num(out, a, 3);
        out.push(b'-');
        num(out, k, 2);
        out.push(b'-');
        num(out, s.user % 2, 1);
        out.extend_from_slice(b"\",\"ad_id\":\"ad-");
        num(out, a, 3);
        out.push(b'-');
        num(out, k, 2);
        out.push(b'-');
        num(out, u64::from(s.ad), 1);
        out.push(b'"');
        id(out, b",\"impression_id\":\"", s.impression);
        id(out, b",\"click_id\":\"", s.click);
        out.extend_from_slice(b",\"user_key\":\"u");
        num(out, s.user, 7);
        let (device, os) = s.device.map_or(("other", "other"), |i| (DEVICES[i].0, DEVICES[i].1));
        out.extend_from_slice(b"\",\"device\":\"");
        out.extend_from_slice(device.as_bytes());
        out.extend_from_slice(b"\",\"os\":\"");
        out.extend_from_slice(os.as_bytes());
        let country = COUNTRIES[(s.user % COUNTRIES.len() as u64) as usize];
        out.extend_from_slice(b"\",\"country\":\"");
        out.extend_from_slice(country.as_bytes());
        if country == "US" {
            out.extend_from_slice(b"\",\"region\":\"US-");
            out.extend_from_slice(REGIONS[(s.user % 4) as usize].as_bytes());
        }
        out.extend_from_slice(b"\",\"placement\":\"");
        out.extend_from_slice(PLACEMENTS[s.placement].as_bytes());
        out.push(b'"');
        if s.cost_micros != 0 {
            out.extend_from_slice(b",\"cost_micros\":");
            int(out, s.cost_micros);
        }
        if s.value_micros != 0 {
            out.extend_from_slice(b",\"value_micros\":");
            int(out, s.value_micros);
        }
        if s.bot {
            out.extend_from_slice(b",\"ip_hash\":\"ip-bot\",\"ua_hash\":\"");
            out.extend_from_slice(BOT_UA_HASH.as_bytes());
        } else {
            out.extend_from_slice(b",\"ip_hash\":\"ip");
            num(out, s.user % 150_000, 6);
            out.extend_from_slice(b"\",\"ua_hash\":\"ua");
            num(out, s.user % 300, 3);
        }
        out.extend_from_slice(b"\"}\n");
    }
}

const REGIONS: [&str; 4] = ["CA", "NY", "TX", "WA"];

/// `v` in decimal, zero-padded to at least `width` digits.
fn num(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[start..]);
}

/// A signed integer in decimal.
fn int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    num(out, v.unsigned_abs(), 1);
}

impl Iterator for Generator {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        let spec = self.next_spec()?;
        Some(self.to_event(&spec))
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
    fn direct_writer_matches_write_ndjson() {
        let cfg = GenConfig { events: 50_000, ..GenConfig::default() };
        let mut via_events = Vec::new();
        Generator::new(cfg.clone()).for_each(|e| write_ndjson(&e, &mut via_events));
        let mut direct = Vec::new();
        let mut g = Generator::new(cfg);
        while g.write_ndjson_chunk(7_000, &mut direct) > 0 {}
        assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&via_events));
    }

    #[test]
    fn numbers_are_padded() {
        let mut out = Vec::new();
        num(&mut out, 7, 3);
        out.push(b' ');
        num(&mut out, 12345, 2);
        out.push(b' ');
        int(&mut out, -42);
        out.push(b' ');
        num(&mut out, u64::MAX, 1);
        assert_eq!(String::from_utf8_lossy(&out), format!("007 12345 -42 {}", u64::MAX));
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
