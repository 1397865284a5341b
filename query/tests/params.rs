//! `$n` parameters (the PostgreSQL protocol's Bind) bind as literals of
//! their type: a statement with parameters answers as the same statement
//! with the values written in; `describe` types the result without
//! running it.

use adstore_query::{Param, QueryError, QueryOptions, describe, execute, execute_with};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig};
use arrow_schema::DataType;

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn store(dir: &std::path::Path) -> Store {
    let config = StoreConfig { fsync: false, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new()).expect("open");
    let events: Vec<Event> = (0..2_000)
        .map(|i| Event {
            event_id: format!("e{i}"),
            kind: if i % 4 == 0 { EventType::Click } else { EventType::Impression },
            ts: BASE + i as i64 * 60_000,
            publisher_id: "p".into(),
            advertiser_id: format!("a{}", i % 3),
            campaign_id: format!("c{}", i % 7),
            ad_id: "x".into(),
            cost_micros: i as i64,
            ..Event::default()
        })
        .collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store
}

fn rows(r: &adstore_query::QueryResult) -> String {
    r.to_csv()
}

#[test]
fn parameters_answer_like_the_literals_they_stand_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    let snapshot = store.snapshot();
    let with = "SELECT campaign_id, count(*) AS n, sum(cost_micros) AS cost FROM events \
                WHERE advertiser_id = $1 AND ts >= $2 AND cost_micros > $3 AND $4 \
                GROUP BY campaign_id ORDER BY campaign_id LIMIT $5";
    let literal = "SELECT campaign_id, count(*) AS n, sum(cost_micros) AS cost FROM events \
                   WHERE advertiser_id = 'a1' AND ts >= '2026-11-22T12:00:00+00' AND cost_micros > 10.5 AND true \
                   GROUP BY campaign_id ORDER BY campaign_id LIMIT 4";
    let expected = execute(&snapshot, literal, &opts).expect("literal");
    assert_eq!(expected.num_rows(), 4);
    for ts in [Param::Text("2026-11-22T12:00:00+00".into()), Param::Timestamp(BASE + 2 * 3_600_000)] {
        let params = [Param::Text("a1".into()), ts, Param::Float(10.5), Param::Bool(true), Param::Int(4)];
        let got = execute_with(&snapshot, with, &params, &opts).expect("with parameters");
        assert_eq!(rows(&got), rows(&expected));
    }

    // A parameter is a value, never SQL.
    let injected = [Param::Text("a1' OR '1' = '1".into())];
    let got = execute_with(&snapshot, "SELECT count(*) FROM events WHERE advertiser_id = $1", &injected, &opts)
        .expect("query");
    assert_eq!(rows(&got), "count(*)\n0\n");

    // Too few values, or a placeholder that is not $n, is an error naming it.
    let err = execute_with(&snapshot, "SELECT count(*) FROM events WHERE cost_micros > $2", &[Param::Int(1)], &opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("$2 has no value"), "{err}");
    let err = execute_with(&snapshot, "SELECT count(*) FROM events LIMIT $1", &[Param::Int(-1)], &opts);
    assert!(matches!(err, Err(QueryError::Invalid { .. })), "{err:?}");
}

#[test]
fn describe_types_a_statement_before_its_parameters_are_bound() {
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    let schema = describe(
        "SELECT campaign_id, count(*) AS n, avg(cost_micros) AS a, max(ts) AS t, $1 AS p FROM events \
         WHERE advertiser_id = $2 GROUP BY campaign_id LIMIT $3",
        &[],
        &opts,
    )
    .expect("describe");
    let types: Vec<(&str, &DataType)> = schema.fields().iter().map(|f| (f.name().as_str(), f.data_type())).collect();
    assert_eq!(types[0], ("campaign_id", &DataType::Utf8));
    assert_eq!(types[1], ("n", &DataType::Int64));
    assert_eq!(types[2], ("a", &DataType::Float64));
    assert!(matches!(types[3], ("t", DataType::Timestamp(..))));
    assert_eq!(types[4], ("p", &DataType::Null), "an unbound parameter describes as NULL");
    let explain = describe("EXPLAIN SELECT count(*) FROM events", &[], &opts).expect("explain");
    assert_eq!(explain.fields().len(), 2);
    assert!(describe("SELECT nope FROM events", &[], &opts).is_err());
}
