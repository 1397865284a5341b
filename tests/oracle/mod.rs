//! An independent oracle for exactly-once counting (DESIGN.md §2–§4):
//! deliberately simple, row-at-a-time code over the raw list of events a
//! producer sent, in arrival order. It shares nothing with the engine but
//! the `Event` struct.

use std::collections::{BTreeMap, HashMap};

use adstore_server::datagen::{GenConfig, Generator};
use adstore_storage::{Event, EventType};

pub struct Rules {
    pub click_window_ms: i64,
    pub conversion_window_ms: i64,
    pub too_fast_ms: i64,
    pub flood_per_minute: usize,
    pub bot_ua: Vec<String>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            click_window_ms: 3_600_000,
            conversion_window_ms: 7 * 86_400_000,
            too_fast_ms: 1_000,
            flood_per_minute: 5,
            bot_ua: vec![],
        }
    }
}

/// Measures of one (campaign, hour).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Measures {
    pub impressions: i64,
    pub clicks: i64,
    pub conversions: i64,
    pub billable_impressions: i64,
    pub billable_clicks: i64,
    pub attributed_conversions: i64,
    pub invalid: BTreeMap<String, i64>,
    pub spend_micros: i64,
    pub conversion_value_micros: i64,
}

pub type Report = BTreeMap<(String, i64), Measures>;

/// One stored event's derived fields.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event: Event,
    pub attributed: bool,
    pub reason: &'static str,
}

/// First copy of each (publisher, type, event_id) wins; the rest are duplicates.
pub fn dedupe(sent: &[Event]) -> Vec<Event> {
    let mut seen = std::collections::HashSet::new();
    sent.iter().filter(|e| seen.insert((e.publisher_id.clone(), e.kind, e.event_id.clone()))).cloned().collect()
}

pub fn outcomes(sent: &[Event], rules: &Rules) -> Vec<Outcome> {
    let mut events = dedupe(sent);
    events.sort_by(|a, b| (a.ts, a.kind, &a.event_id).cmp(&(b.ts, b.kind, &b.event_id)));
    let impressions: Vec<&Event> = events.iter().filter(|e| e.kind == EventType::Impression).collect();
    let clicks: Vec<&Event> = events.iter().filter(|e| e.kind == EventType::Click).collect();
    // Plain lookup tables (only to keep the oracle fast enough; filters below
    // still spell out every rule).
    let mut imp_by_id: HashMap<&str, Vec<&Event>> = HashMap::new();
    let mut imp_by_user: HashMap<&str, Vec<&Event>> = HashMap::new();
    for i in &impressions {
        if let Some(id) = &i.impression_id {
            imp_by_id.entry(id).or_default().push(i);
        }
        if let Some(u) = &i.user_key {
            imp_by_user.entry(u).or_default().push(i);
        }
    }
    let mut click_by_id: HashMap<&str, Vec<&Event>> = HashMap::new();
    let mut click_by_user: HashMap<&str, Vec<&Event>> = HashMap::new();
    for c in &clicks {
        if let Some(id) = &c.click_id {
            click_by_id.entry(id).or_default().push(c);
        }
        if let Some(u) = &c.user_key {
            click_by_user.entry(u).or_default().push(c);
        }
    }
    let none: Vec<&Event> = Vec::new();

    // Click flood: position of each click within its (publisher, ad,
    // user-or-ip, minute) group, keyed by (publisher, event_id).
    let mut flood_rank: HashMap<(String, String), usize> = HashMap::new();
    let mut groups: HashMap<(String, String, String, i64), usize> = HashMap::new();
    for c in &clicks {
        let who = c.user_key.clone().or_else(|| c.ip_hash.clone());
        if let Some(who) = who {
            let group = (c.publisher_id.clone(), c.ad_id.clone(), who, c.ts.div_euclid(60_000));
            let n = groups.entry(group).or_insert(0);
            *n += 1;
            flood_rank.insert((c.publisher_id.clone(), c.event_id.clone()), *n);
        }
    }

    // Each event's verdict, then the events moved into their outcomes
    // (not copied: a 10M-event oracle run holds one copy of the events).
    let verdicts: Vec<(bool, &'static str)> = events
        .iter()
        .map(|e| {
            let bot = e.ua_hash.as_ref().is_some_and(|u| rules.bot_ua.contains(u));
            match e.kind {
                EventType::Impression => (false, if bot { "bot_ua" } else { "" }),
                EventType::Click => {
                    // Attribution never crosses publishers.
                    let in_window = |i: &&&Event| {
                        i.publisher_id == e.publisher_id
                            && i.ad_id == e.ad_id
                            && i.ts <= e.ts
                            && i.ts >= e.ts - rules.click_window_ms
                    };
                    let imp: Option<&Event> = match &e.impression_id {
                        Some(id) => imp_by_id
                            .get(id.as_str())
                            .unwrap_or(&none)
                            .iter()
                            .filter(|i| i.impression_id.as_ref() == Some(id))
                            .rfind(in_window)
                            .copied(),
                        None => imp_by_user
                            .get(e.user_key.as_deref().unwrap_or(""))
                            .unwrap_or(&none)
                            .iter()
                            .filter(|i| e.user_key.is_some() && i.user_key == e.user_key)
                            .filter(in_window)
                            .max_by(|a, b| (a.ts, &a.impression_id).cmp(&(b.ts, &b.impression_id)))
                            .copied(),
                    };
                    let flooded = flood_rank
                        .get(&(e.publisher_id.clone(), e.event_id.clone()))
                        .is_some_and(|r| *r > rules.flood_per_minute);
                    let too_fast = imp.is_some_and(|i| e.ts - i.ts < rules.too_fast_ms);
                    let reason = if bot {
                        "bot_ua"
                    } else if flooded {
                        "click_flood"
                    } else if too_fast {
                        "too_fast"
                    } else if imp.is_none() {
                        "unattributed"
                    } else {
                        ""
                    };
                    (imp.is_some(), reason)
                }
                EventType::Conversion => {
                    let in_window = |c: &&&Event| {
                        c.publisher_id == e.publisher_id
                            && c.advertiser_id == e.advertiser_id
                            && c.ts <= e.ts
                            && c.ts >= e.ts - rules.conversion_window_ms
                    };
                    let click = match &e.click_id {
                        Some(id) => {
                            click_by_id
                                .get(id.as_str())
                                .unwrap_or(&none)
                                .iter()
                                .filter(|c| c.click_id.as_ref() == Some(id))
                                .filter(in_window)
                                .count()
                                > 0
                        }
                        None => {
                            click_by_user
                                .get(e.user_key.as_deref().unwrap_or(""))
                                .unwrap_or(&none)
                                .iter()
                                .filter(|c| e.user_key.is_some() && c.user_key == e.user_key)
                                .filter(in_window)
                                .count()
                                > 0
                        }
                    };
                    (click, if bot { "bot_ua" } else { "" })
                }
            }
        })
        .collect();
    events
        .into_iter()
        .zip(verdicts)
        .map(|(event, (attributed, reason))| Outcome { event, attributed, reason })
        .collect()
}

/// Aggregates outcomes (from the oracle or from the store) by campaign and hour.
pub fn report(outcomes: &[Outcome]) -> Report {
    let mut out = Report::new();
    for o in outcomes {
        let e = &o.event;
        let m = out.entry((e.campaign_id.clone(), e.ts.div_euclid(3_600_000))).or_default();
        let valid = o.reason.is_empty();
        if !valid {
            *m.invalid.entry(o.reason.to_string()).or_default() += 1;
        }
        match e.kind {
            EventType::Impression => {
                m.impressions += 1;
                if valid {
                    m.billable_impressions += 1;
                    m.spend_micros += e.cost_micros;
                }
            }
            EventType::Click => {
                m.clicks += 1;
                if valid {
                    m.billable_clicks += 1;
                    m.spend_micros += e.cost_micros;
                }
            }
            EventType::Conversion => {
                m.conversions += 1;
                if o.attributed {
                    m.attributed_conversions += 1;
                    m.conversion_value_micros += e.value_micros;
                }
            }
        }
    }
    out
}

/// The store's events, as outcomes, for [`report`].
pub fn stored_outcomes(batches: &[adstore_storage::EventBatch]) -> Vec<Outcome> {
    batches
        .iter()
        .flat_map(|b| b.events())
        .map(|e| Outcome { attributed: e.attributed, reason: e.invalid_reason.as_str(), event: e })
        .collect()
}

/// Panics with the first differences if the two reports differ.
pub fn assert_same(expected: &Report, actual: &Report) {
    let mut diffs = Vec::new();
    for (k, want) in expected {
        match actual.get(k) {
            Some(got) if got == want => {}
            got => diffs.push(format!("{k:?}: expected {want:?}, got {got:?}")),
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("{k:?}: unexpected {:?}", actual[k]));
    }
    assert!(
        diffs.is_empty(),
        "{} (campaign, hour) cells differ:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(10)].join("\n")
    );
}

/// Opens a stopped server's data directory with its configuration file,
/// seals and finalizes every bucket, and checks that it holds each event
/// of `sent` once and the numbers the oracle gives them (the bot rule on
/// `bot_ua`).
#[allow(dead_code)] // not every test binary that includes the oracle uses it
pub fn assert_finalized_store_matches(data: &std::path::Path, config: &std::path::Path, sent: &[Event], bot_ua: &str) {
    let cfg = adstore_server::Config::load(config).expect("config");
    let (store, _eo) = adstore_server::open_store(data, &cfg).expect("open store");
    store.seal_all().expect("seal");
    let mut buckets: Vec<i64> = store.catalog().segments.values().map(|m| m.partition.bucket_start_ms).collect();
    buckets.sort_unstable();
    buckets.dedup();
    store.reseal_buckets(&buckets, adstore_storage::SealKind::Final).expect("finalize");
    let rules = Rules { bot_ua: vec![bot_ua.to_string()], ..Rules::default() };
    let expected = report(&outcomes(sent, &rules));
    let stored = store.snapshot().read_events().expect("read");
    let rows: usize = stored.iter().map(|b| b.events().len()).sum();
    assert_eq!(rows, dedupe(sent).len(), "every event stored exactly once");
    assert_same(&expected, &report(&stored_outcomes(&stored)));
}

/// The generated day plus a click flood by one ordinary user, and clicks
/// that arrive before their impressions (out of order across batches).
#[allow(dead_code)] // not every test binary that includes the oracle uses it
pub fn stream() -> Vec<Event> {
    let cfg = GenConfig { events: 40_000, span_ms: 6 * 3_600_000, ..GenConfig::default() };
    let mut events: Vec<Event> = Generator::new(cfg.clone()).collect();
    let base = cfg.start_ms + 2 * 3_600_000;
    let imp = Event {
        event_id: "flood-imp".into(),
        kind: EventType::Impression,
        ts: base,
        publisher_id: "pub-00".into(),
        advertiser_id: "adv-001".into(),
        campaign_id: "cmp-001-00".into(),
        ad_id: "ad-001-00-0".into(),
        impression_id: Some("flood-imp".into()),
        user_key: Some("flooder".into()),
        cost_micros: 1000,
        ..Event::default()
    };
    for k in 0..12 {
        events.push(Event {
            event_id: format!("flood-click-{k}"),
            kind: EventType::Click,
            ts: base + 2_000 + k * 3_000,
            click_id: Some(format!("flood-click-{k}")),
            impression_id: Some("flood-imp".into()),
            cost_micros: 300_000,
            ..imp.clone()
        });
    }
    // The impression arrives after its clicks.
    events.push(imp);
    events
}
