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

/// Rows of a [`ROWS`] statement (day, advertiser, campaign, version,
/// impressions, billable_clicks, spend_micros) keyed like `expected`.
fn keyed(rows: &[Vec<Cell>]) -> Table {
    rows.iter()
        .map(|r| {
            let Cell::Timestamp(day) = r[0] else { panic!("day is a timestamp: {r:?}") };
            ((day, text(&r[1]), text(&r[2])), (int(&r[3]), int(&r[4]), int(&r[5]), int(&r[6])))
        })
        .collect()
}

fn table(store: &Store, sql: &str) -> Table {
    keyed(&run(store, sql))
}

/// A table's numbers without their versions, as `expected` adds them up.
fn numbers(table: &Table) -> BTreeMap<(i64, String, String), (i64, i64, i64)> {
    table.iter().map(|(k, v)| (k.clone(), (v.1, v.2, v.3))).collect()
}

const ROWS: &str =
    "SELECT day, advertiser_id, campaign_id, version, impressions, billable_clicks, spend_micros FROM billing_daily";

#[test]
fn billing_daily_answers_from_the_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let day0 = BASE.div_euclid(DAY) * DAY;
    // Four days; the last one's events close the first two (their
    // buckets' first seals are final already, but no billing snapshot has
    // been taken).
    let mut events: Vec<Event> = (0..700).map(|i| event(i, BASE + i * 400_000)).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    assert!(run(&store, ROWS).is_empty(), "no snapshot yet");
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
    let got = keyed(&rows(&format!("{ROWS} WHERE advertiser_id = 'a0' OR true"), &scoped));
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

/// A snapshot version covers the whole day: a scoped caller sees only the
/// versions that changed its own rows, numbered in its own order, and no
/// day where only others had events; counted here from the events.
#[test]
fn a_scoped_caller_sees_only_the_versions_that_changed_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let day0 = BASE.div_euclid(DAY) * DAY;
    let of = |advertiser: &str, from: i64, n: i64, start: i64, step: i64| -> Vec<Event> {
        (0..n).map(|i| Event { advertiser_id: advertiser.into(), ..event(from + i, start + i * step) }).collect()
    };
    // Day 0: a0 and a1. Day 1: a0 only. Day 3's events close days 0 and 1.
    let mut events = of("a0", 0, 60, day0 + 3_600_000, 600_000);
    events.extend(of("a1", 100, 40, day0 + 3_600_000, 900_000));
    events.extend(of("a0", 200, 50, day0 + DAY + 3_600_000, 600_000));
    events.extend(of("a0", 300, 5, day0 + 3 * DAY, 60_000));
    let settle = |store: &Store, batch: &[Event]| {
        store.append(&EventBatch::from_events(batch)).expect("append");
        store.seal_all().expect("seal");
        store.finalize_closed().expect("finalize");
        store.snapshot_billing().expect("billing");
    };
    settle(&store, &events);
    // Late events of a0 only: day 0 gets version 2, a1's rows unchanged.
    let late_a0 = of("a0", 400, 10, day0 + 20 * 3_600_000, 1_000);
    settle(&store, &late_a0);
    events.extend(late_a0);

    let scoped = |advertiser: &str| QueryOptions {
        now_ms: BASE,
        advertisers: Some(vec![advertiser.into()]),
        ..QueryOptions::default()
    };
    let answer = |sql: &str, opts: &QueryOptions| execute(&store.snapshot(), sql, opts).expect(sql);
    let versions = |advertiser: &str| -> BTreeMap<i64, Vec<i64>> {
        let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        let sql = "SELECT day, version FROM billing_daily WHERE version >= 1 GROUP BY 1, 2 ORDER BY 1, 2";
        for r in answer(sql, &scoped(advertiser)).rows() {
            let Cell::Timestamp(day) = r[0] else { panic!("day: {r:?}") };
            out.entry(day).or_default().push(int(&r[1]));
        }
        out
    };
    assert_eq!(versions("a1"), BTreeMap::from([(day0, vec![1])]), "a1: day 0 once, not day 1");
    assert_eq!(versions("a0"), BTreeMap::from([(day0, vec![1, 2]), (day0 + DAY, vec![1])]));

    // a1's rows once, with its numbers; the stats count only what it sees.
    let final_days = |adv: &str, events: &[Event]| -> BTreeMap<(i64, String, String), (i64, i64, i64)> {
        let mine: Vec<Event> =
            events.iter().filter(|e| e.advertiser_id == adv && e.ts < day0 + 2 * DAY).cloned().collect();
        expected(&mine)
    };
    let all = answer(&format!("{ROWS} WHERE version >= 1"), &scoped("a1"));
    let got = keyed(&all.rows());
    assert_eq!(all.rows().len(), got.len(), "no row repeated across versions");
    assert_eq!(numbers(&got), final_days("a1", &events));
    assert_eq!(all.stats.source, "billing snapshots (1 day, 1 version)");

    // Late events of a1 now: its second version is the day's third.
    let late_a1 = of("a1", 500, 6, day0 + 21 * 3_600_000, 1_000);
    settle(&store, &late_a1);
    events.extend(late_a1);
    assert_eq!(versions("a1"), BTreeMap::from([(day0, vec![1, 2])]));
    assert_eq!(versions("a0"), BTreeMap::from([(day0, vec![1, 2]), (day0 + DAY, vec![1])]), "a0 unchanged");
    let got = keyed(&answer(&format!("{ROWS} WHERE day < {}", day0 + DAY), &scoped("a1")).rows());
    assert!(got.values().all(|v| v.0 == 2), "a1's latest version is its second: {got:?}");
    assert_eq!(numbers(&got), final_days("a1", &events));
    let unscoped = run(&store, "SELECT max(version) FROM billing_daily WHERE version >= 1");
    assert_eq!(int(&unscoped[0][0]), 3, "the day itself has three versions");
}
