//! `billing_daily` in SQL against numbers added up here from the events:
//! the latest version of each final day, every version when WHERE names
//! `version`, aggregates and filters over it, its errors and EXPLAIN.

use std::collections::BTreeMap;

use adstore_query::{Cell, QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, InvalidReason, SealPipeline, Store, StoreConfig};

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY: i64 = 86_400_000;

fn event(i: i64, ts: i64) -> Event {
    Event {
        event_id: format!("e{i}"),
        kind: EventType::ALL[(i % 3) as usize],
        ts,
        publisher_id: "p".into(),
        advertiser_id: format!("a{}", i % 2),
        campaign_id: format!("c{}", i % 3),
        ad_id: "x".into(),
        user_key: Some(format!("u{}", i % 7)),
        cost_micros: 100 + i,
        attributed: i % 2 == 0,
        invalid_reason: if i % 5 == 0 { InvalidReason::ALL[1] } else { InvalidReason::Valid },
        ..Event::default()
    }
}

/// (day, advertiser, campaign) → (impressions, billable clicks, spend), added up here.
fn expected(events: &[Event]) -> BTreeMap<(i64, String, String), (i64, i64, i64)> {
    let mut out: BTreeMap<(i64, String, String), (i64, i64, i64)> = BTreeMap::new();
    for e in events {
        let key = (e.ts.div_euclid(DAY) * DAY, e.advertiser_id.clone(), e.campaign_id.clone());
        let m = out.entry(key).or_default();
        let valid = e.invalid_reason == InvalidReason::Valid;
        m.0 += i64::from(e.kind == EventType::Impression);
        m.1 += i64::from(e.kind == EventType::Click && valid);
        if valid && e.kind != EventType::Conversion {
            m.2 += e.cost_micros;
        }
    }
    out
}

fn run(store: &Store, sql: &str) -> Vec<Vec<Cell>> {
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    execute(&store.snapshot(), sql, &opts).unwrap_or_else(|e| panic!("{sql}: {e}")).rows()
}

fn int(c: &Cell) -> i64 {
    match c {
        Cell::Int(x) => *x,
        other => panic!("not an integer: {other:?}"),
    }
}

fn text(c: &Cell) -> String {
    match c {
        Cell::Str(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// (version, impressions, billable clicks, spend) by (day, advertiser, campaign).
type Table = BTreeMap<(i64, String, String), (i64, i64, i64, i64)>;

/// The table's rows of `sql` (day, advertiser, campaign, version, impressions,
/// billable_clicks, spend_micros) keyed like `expected`.
fn table(store: &Store, sql: &str) -> Table {
    run(store, sql)
        .iter()
        .map(|r| {
            let Cell::Timestamp(day) = r[0] else { panic!("day is a timestamp: {r:?}") };
            ((day, text(&r[1]), text(&r[2])), (int(&r[3]), int(&r[4]), int(&r[5]), int(&r[6])))
        })
        .collect()
}

const ROWS: &str =
    "SELECT day, advertiser_id, campaign_id, version, impressions, billable_clicks, spend_micros FROM billing_daily";

#[test]
fn billing_daily_answers_from_the_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let day0 = BASE.div_euclid(DAY) * DAY;
    // Four days; the last one's events close the first two.
    let mut events: Vec<Event> = (0..700).map(|i| event(i, BASE + i * 400_000)).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    assert!(run(&store, ROWS).is_empty(), "no day is final yet");
    store.finalize_closed().expect("finalize");
    store.snapshot_billing().expect("billing");
    let final_days: Vec<Event> = events.iter().filter(|e| e.ts < day0 + 2 * DAY).cloned().collect();
    let want: BTreeMap<_, _> = expected(&final_days).into_iter().map(|(k, (a, b, c))| (k, (1, a, b, c))).collect();
    assert_eq!(table(&store, ROWS), want, "version 1 of the final days");

    // Late events into the first day: version 2 replaces it in the default view.
    let late: Vec<Event> = (0..30).map(|i| event(1_000 + i, day0 + 20 * 3_600_000 + i * 1_000)).collect();
    store.append(&EventBatch::from_events(&late)).expect("append");
    store.seal_all().expect("seal");
    store.finalize_closed().expect("finalize");
    store.snapshot_billing().expect("billing");
    events.extend(late);
    let final_days: Vec<Event> = events.iter().filter(|e| e.ts < day0 + 2 * DAY).cloned().collect();
    let latest: BTreeMap<_, _> = expected(&final_days)
        .into_iter()
        .map(|(k, (a, b, c))| {
            let version = if k.0 == day0 { 2 } else { 1 };
            (k, (version, a, b, c))
        })
        .collect();
    assert_eq!(table(&store, ROWS), latest, "the latest version of each day");
    let v1 = table(&store, &format!("{ROWS} WHERE version = 1"));
    assert_eq!(v1, want, "version 1 is still there");
    let every = run(&store, "SELECT count(*) FROM billing_daily WHERE version >= 1");
    assert_eq!(int(&every[0][0]) as usize, want.len() + latest.keys().filter(|k| k.0 == day0).count());

    // Aggregates and filters over it.
    let rows = run(
        &store,
        &format!(
            "SELECT advertiser_id, sum(spend_micros), count(*) FROM billing_daily \
             WHERE day >= TIMESTAMP '2026-11-22T00:00:00Z' AND day < {} AND campaign_id <> 'c1' \
             GROUP BY 1 ORDER BY 1",
            day0 + 2 * DAY
        ),
    );
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for ((_, a, c), (_, _, _, spend)) in &latest {
        if c != "c1" {
            let s = sums.entry(a.clone()).or_default();
            s.0 += spend;
            s.1 += 1;
        }
    }
    let got: BTreeMap<String, (i64, i64)> = rows.iter().map(|r| (text(&r[0]), (int(&r[1]), int(&r[2])))).collect();
    assert_eq!(got, sums);
    let star = run(&store, "SELECT * FROM billing_daily LIMIT 1");
    assert_eq!(star[0].len(), 4 + 10 + 1, "day, advertiser, campaign, version, 10 measures, users");
    assert!(int(&star[0][14]) > 0, "users is an estimate of distinct users");

    // Scoped to advertiser a1: only its rows, whatever the statement says.
    let scoped = QueryOptions { now_ms: BASE, advertisers: Some(vec!["a1".into()]), ..QueryOptions::default() };
    let rows = |sql: &str, opts: &QueryOptions| execute(&store.snapshot(), sql, opts).expect(sql).rows();
    let a1: Table = latest.iter().filter(|(k, _)| k.1 == "a1").map(|(k, v)| (k.clone(), *v)).collect();
    let got: Table = rows(&format!("{ROWS} WHERE advertiser_id = 'a0' OR true"), &scoped)
        .iter()
        .map(|r| {
            let Cell::Timestamp(day) = r[0] else { panic!("day is a timestamp: {r:?}") };
            ((day, text(&r[1]), text(&r[2])), (int(&r[3]), int(&r[4]), int(&r[5]), int(&r[6])))
        })
        .collect();
    assert!(!a1.is_empty());
    assert_eq!(got, a1, "only a1's billing rows");
    let distinct = rows("SELECT count(DISTINCT advertiser_id) FROM billing_daily WHERE version > 0", &scoped);
    assert_eq!(int(&distinct[0][0]), 1);

    // Errors and EXPLAIN.
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    let err = execute(&store.snapshot(), "SELECT ts FROM billing_daily", &opts).expect_err("no ts");
    assert!(err.to_string().contains("billing_daily (day, advertiser_id, campaign_id, version"), "{err}");
    let explain = run(&store, "EXPLAIN SELECT sum(spend_micros) FROM billing_daily");
    let reads = explain.iter().find(|r| text(&r[0]) == "reads").map(|r| text(&r[1]));
    assert_eq!(reads.as_deref(), Some("billing snapshots (2 days, 2 versions)"));
    let explain = run(&store, "EXPLAIN SELECT sum(spend_micros) FROM billing_daily WHERE version > 0");
    let reads = explain.iter().find(|r| text(&r[0]) == "reads").map(|r| text(&r[1]));
    assert_eq!(reads.as_deref(), Some("billing snapshots (2 days, 3 versions)"));
}
