//! Every string column of `events` filtered with `=`, `<>`, `IN`,
//! `NOT IN`, `LIKE` and `IS [NOT] NULL`, over a store whose rows lie in
//! first seals, compacted segments, re-sealed (final) segments and the
//! head, against a naive row-at-a-time evaluation written here.
//!
//! Id columns (`event_id`, `impression_id`, `click_id`, `user_key`,
//! `ip_hash`, `ua_hash`, `attributed_to`) are not indexed, but a segment
//! that holds few distinct values of one stores it dictionary-encoded:
//! a filter on such a column once failed with "has no index" (issue 21).

use adstore_query::{Cell, QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, SealKind, SealPipeline, Store, StoreConfig};
use proptest::prelude::*;

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const HOUR: i64 = 3_600_000;

/// The string columns of `events`, by SQL name.
const COLUMNS: &[&str] = &[
    "event_id",
    "publisher_id",
    "advertiser_id",
    "campaign_id",
    "ad_group_id",
    "ad_id",
    "impression_id",
    "click_id",
    "user_key",
    "device",
    "os",
    "country",
    "region",
    "placement",
    "ip_hash",
    "ua_hash",
    "attributed_to",
];

fn get<'a>(e: &'a Event, column: &str) -> Option<&'a str> {
    match column {
        "event_id" => Some(&e.event_id),
        "publisher_id" => Some(&e.publisher_id),
        "advertiser_id" => Some(&e.advertiser_id),
        "campaign_id" => Some(&e.campaign_id),
        "ad_group_id" => e.ad_group_id.as_deref(),
        "ad_id" => Some(&e.ad_id),
        "impression_id" => e.impression_id.as_deref(),
        "click_id" => e.click_id.as_deref(),
        "user_key" => e.user_key.as_deref(),
        "device" => e.device.as_deref(),
        "os" => e.os.as_deref(),
        "country" => e.country.as_deref(),
        "region" => e.region.as_deref(),
        "placement" => e.placement.as_deref(),
        "ip_hash" => e.ip_hash.as_deref(),
        "ua_hash" => e.ua_hash.as_deref(),
        "attributed_to" => e.attributed_to.as_deref(),
        other => panic!("no column {other}"),
    }
}

/// A value of the pool `prefix-0 .. prefix-{n-1}`, or NULL one time in five.
fn value(prefix: &'static str, n: u32) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(0.8, (0..n).prop_map(move |k| format!("{prefix}-{k}")))
}

/// Events whose id columns hold few distinct values (`few`: a segment
/// stores them dictionary-encoded) or many (stored plain).
fn any_event(few: bool) -> impl Strategy<Value = Event> {
    let ids = if few { 3 } else { 100_000 };
    (
        (0u8..3, 0..3 * HOUR, 0..2u32, 0..3u32, 0..4u32, value("g", 2), 0..3u32),
        (value("imp", ids), value("clk", ids), value("u", ids), value("dev", 3), value("os", 2)),
        (value("cc", 3), value("r", 2), value("plc", 3), value("ip", ids), value("ua", ids), value("to", ids)),
    )
        .prop_map(|(a, b, c)| Event {
            event_id: String::new(),
            kind: EventType::from_code(a.0).unwrap_or_default(),
            ts: BASE + a.1,
            publisher_id: format!("p-{}", a.2),
            advertiser_id: format!("a-{}", a.3),
            campaign_id: format!("c-{}", a.4),
            ad_group_id: a.5,
            ad_id: format!("x-{}", a.6),
            impression_id: b.0,
            click_id: b.1,
            user_key: b.2,
            device: b.3,
            os: b.4,
            country: c.0,
            region: c.1,
            placement: c.2,
            ip_hash: c.3,
            ua_hash: c.4,
            attributed_to: c.5,
            cost_micros: 1,
            ..Event::default()
        })
}

#[derive(Debug, Clone)]
enum Filter {
    Eq(String),
    Ne(String),
    In(Vec<String>, bool),
    Like(String),
    IsNull(bool),
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Filter {
    fn sql(&self, column: &str) -> String {
        match self {
            Filter::Eq(v) => format!("{column} = {}", quote(v)),
            Filter::Ne(v) => format!("{column} <> {}", quote(v)),
            Filter::In(vs, negated) => format!(
                "{column} {}IN ({})",
                if *negated { "NOT " } else { "" },
                vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
            ),
            Filter::Like(p) => format!("{column} LIKE {}", quote(p)),
            Filter::IsNull(negated) => format!("{column} IS {}NULL", if *negated { "NOT " } else { "" }),
        }
    }

    /// Whether the row is kept (NULL compares to nothing).
    fn keeps(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (Filter::IsNull(negated), v) => v.is_none() != *negated,
            (_, None) => false,
            (Filter::Eq(x), Some(v)) => v == x,
            (Filter::Ne(x), Some(v)) => v != x,
            (Filter::In(xs, negated), Some(v)) => xs.iter().any(|x| x == v) != *negated,
            // Only 'prefix%' patterns are generated.
            (Filter::Like(p), Some(v)) => v.starts_with(p.trim_end_matches('%')),
        }
    }
}

/// A filter on `column` with values taken from the events (so that they
/// match) or absent from them.
fn any_filter(events: &[Event]) -> impl Strategy<Value = (String, Filter)> + use<> {
    let seen: Vec<String> =
        events.iter().flat_map(|e| COLUMNS.iter().filter_map(|c| get(e, c).map(str::to_owned))).collect();
    let values = if seen.is_empty() { vec!["none".to_string()] } else { seen };
    let value = prop_oneof![4 => prop::sample::select(values), 1 => Just("absent".to_string())];
    let column = prop::sample::select(COLUMNS).prop_map(str::to_owned);
    let filter = prop_oneof![
        value.clone().prop_map(Filter::Eq),
        value.clone().prop_map(Filter::Ne),
        (prop::collection::vec(value.clone(), 1..4), any::<bool>()).prop_map(|(v, n)| Filter::In(v, n)),
        value.prop_map(|v| Filter::Like(format!("{}%", &v[..v.len().min(3)]))),
        any::<bool>().prop_map(Filter::IsNull),
    ];
    (column, filter)
}

/// Loads the events in four parts: two seals compacted into one segment,
/// a seal re-sealed as final, a plain seal, and the head.
fn load(events: &[Event]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        StoreConfig { shards: 2, block_rows: 128, fsync: false, compact_min_segments: 2, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let parts: Vec<&[Event]> = events.chunks(events.len().div_ceil(5).max(1)).collect();
    for (i, part) in parts.iter().enumerate() {
        store.append(&EventBatch::from_events(part)).expect("append");
        match i {
            0 => store.seal_all().map(|_| ()),
            1 => store.seal_all().and_then(|_| store.compact_small()).map(|_| ()),
            2 => store.seal_all().and_then(|_| store.reseal_buckets(&[BASE + 2 * HOUR], SealKind::Final)).map(|_| ()),
            3 => store.seal_all().map(|_| ()),
            _ => Ok(()),
        }
        .expect("seal");
    }
    (dir, store)
}

fn count(store: &Store, sql: &str) -> Result<i64, String> {
    let r = execute(&store.snapshot(), sql, &QueryOptions::default()).map_err(|e| format!("{sql}: {e}"))?;
    match r.rows().first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => Ok(*n),
        other => Err(format!("{sql}: count(*) gave {other:?}")),
    }
}

fn events_and_filters() -> impl Strategy<Value = (Vec<Event>, Vec<(String, Filter)>)> {
    any::<bool>()
        .prop_flat_map(|few| prop::collection::vec(any_event(few), 1..400))
        .prop_map(|mut events| {
            for (i, e) in events.iter_mut().enumerate() {
                e.event_id = format!("e-{i}");
            }
            events
        })
        .prop_flat_map(|events| {
            let filters = prop::collection::vec(any_filter(&events), 12);
            (Just(events), filters)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_column_filters_like_a_naive_evaluation((events, filters) in events_and_filters()) {
        let (_dir, store) = load(&events);
        for (column, filter) in &filters {
            let sql = format!("SELECT count(*) FROM events WHERE {}", filter.sql(column));
            let want = events.iter().filter(|e| filter.keeps(get(e, column))).count() as i64;
            let got = count(&store, &sql).map_err(TestCaseError::fail)?;
            prop_assert_eq!(got, want, "{}", sql);
        }
    }
}

/// The query of issue 21, on a segment that stores `click_id` with a
/// dictionary (few distinct values) and no index.
#[test]
fn an_id_filter_on_a_dictionary_encoded_segment_column() {
    let events: Vec<Event> = (0..200)
        .map(|i| Event {
            event_id: format!("e-{i}"),
            kind: EventType::Click,
            ts: BASE + i,
            publisher_id: "p".into(),
            advertiser_id: "a".into(),
            campaign_id: "c".into(),
            ad_id: "x".into(),
            click_id: Some(format!("clk-{}", i % 4)),
            ..Event::default()
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig { fsync: false, ..StoreConfig::default() }, SealPipeline::new())
        .expect("open");
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    assert_eq!(count(&store, "SELECT count(*) FROM events WHERE click_id = 'clk-1'"), Ok(50));
    assert_eq!(count(&store, "SELECT count(*) FROM events WHERE click_id IN ('clk-1', 'clk-2', 'nope')"), Ok(100));
}
