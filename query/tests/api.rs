//! Limits, output formats and error classification through the public API.

use std::time::Duration;

use adstore_query::{QueryError, QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig};

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn store(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { block_rows: 128, fsync: false, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let events: Vec<Event> = (0..n)
        .map(|i| Event {
            event_id: format!("e{i}"),
            kind: if i % 4 == 0 { EventType::Click } else { EventType::Impression },
            ts: BASE + i as i64 * 1000,
            publisher_id: "p".into(),
            advertiser_id: format!("a{}", i % 3),
            campaign_id: "c, \"quoted\"".into(),
            ad_id: "x".into(),
            device: (i % 5 != 0).then(|| "mobile".to_string()),
            cost_micros: i as i64,
            ..Event::default()
        })
        .collect();
    store.append(&EventBatch::from_events(&events[..n / 2])).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(&events[n / 2..])).expect("append");
    (dir, store)
}

fn opts() -> QueryOptions {
    QueryOptions { now_ms: BASE, ..QueryOptions::default() }
}

#[test]
fn limits_fail_cleanly() {
    let (_d, s) = store(1000);
    let snap = s.snapshot();
    let err =
        execute(&snap, "SELECT event_id, count(*) FROM events GROUP BY 1", &QueryOptions { max_groups: 10, ..opts() })
            .expect_err("too many groups");
    assert!(matches!(err, QueryError::TooManyGroups { max_groups: 10 }), "{err}");
    assert_eq!(err.code(), "too_many_groups");
    assert!(err.is_user_error());

    let err = execute(&snap, "SELECT count(*) FROM events", &QueryOptions { timeout: Duration::ZERO, ..opts() })
        .expect_err("timeout");
    assert_eq!(err.code(), "timeout");

    let err = execute(&snap, "SELECT event_id FROM events LIMIT 99999999999999999999", &opts()).expect_err("huge");
    assert!(err.to_string().contains("larger than 18446744073709551615"), "{err}");

    let few = QueryOptions { max_result_rows: 10, ..opts() };
    let err = execute(&snap, "SELECT event_id FROM events", &few).expect_err("too many rows");
    assert!(matches!(err, QueryError::ResultTooLarge { max_rows: 10 }), "{err}");
    assert_eq!(err.code(), "result_too_large");
    assert!(err.is_user_error());
    let err = execute(&snap, "SELECT event_id, count(*) FROM events GROUP BY 1", &few).expect_err("too many groups");
    assert_eq!(err.code(), "result_too_large");
    let limited = execute(&snap, "SELECT event_id FROM events ORDER BY ts LIMIT 10", &few).expect("a LIMIT within");
    assert_eq!(limited.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    let err = execute(&snap, "SELECT event_id FROM events LIMIT 11", &few).expect_err("a LIMIT past it");
    assert_eq!(err.code(), "result_too_large");

    let err = execute(&snap, "SELECT event_id FROM events", &QueryOptions { max_memory_bytes: 1000, ..opts() })
        .expect_err("memory");
    assert_eq!(err.code(), "memory_limit");
    let err = execute(
        &snap,
        "SELECT event_id, count(DISTINCT ts) FROM events GROUP BY 1",
        &QueryOptions { max_memory_bytes: 1000, ..opts() },
    )
    .expect_err("memory");
    assert_eq!(err.code(), "memory_limit");

    // The same queries pass with the default limits.
    let ok = execute(&snap, "SELECT event_id, count(*) FROM events GROUP BY 1", &opts()).expect("query");
    assert_eq!(ok.num_rows(), 1000);
}

#[test]
fn errors_carry_positions() {
    let (_d, s) = store(10);
    let err = execute(&s.snapshot(), "SELECT count(*)\nFROM events\nWHERE nope = 1", &opts()).expect_err("unknown");
    assert_eq!(err.code(), "unknown_column");
    let p = err.position().expect("position");
    assert_eq!((p.line, p.column), (3, 7));
    let err = execute(&s.snapshot(), "SELECT a.x FROM events a JOIN metrics b ON true", &opts()).expect_err("join");
    assert_eq!(err.code(), "unsupported");
    assert!(err.to_string().contains("JOIN"), "{err}");
}

#[test]
fn output_formats() {
    let (_d, s) = store(100);
    let r = execute(
        &s.snapshot(),
        "SELECT campaign_id, date_trunc('minute', ts) AS m, count(device) AS n, avg(cost_micros) AS a \
         FROM events GROUP BY 1, 2 ORDER BY m LIMIT 2",
        &opts(),
    )
    .expect("query");
    assert!(r.stats.provisional, "head rows were read");
    assert_eq!(r.stats.source, "events");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
    assert_eq!(json["columns"][1], serde_json::json!({"name": "m", "type": "timestamp"}));
    assert_eq!(json["rows"][0], serde_json::json!(["c, \"quoted\"", "2026-11-22T10:00:00Z", 48, 29.5]));
    assert_eq!(json["stats"]["source"], "events");
    // Values of every type, written as JSON the way serde_json writes them.
    let r = execute(
        &s.snapshot(),
        "SELECT 2.0 * 1.0 AS two, 0.1 AS tenth, 1e300 * 10.0 AS big, 0.0 / 0.0 AS nan, true AS t,          NULL AS n, 'a\"b\\c\n' AS s, -9223372036854775807 - 1 AS min FROM events LIMIT 1",
        &opts(),
    )
    .expect("query");
    let text = r.to_json();
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let want = serde_json::json!([2.0, 0.1, 1e301, null, true, null, "a\"b\\c\n", i64::MIN]);
    assert_eq!(json["rows"][0], want, "{text}");
    assert!(text.contains(&want.to_string()), "the same text as serde_json writes: {text}");
    let r = execute(
        &s.snapshot(),
        "SELECT campaign_id, date_trunc('minute', ts) AS m, count(device) AS n, avg(cost_micros) AS a \
         FROM events GROUP BY 1, 2 ORDER BY m LIMIT 2",
        &opts(),
    )
    .expect("query");
    let csv = r.to_csv();
    assert_eq!(
        csv,
        "campaign_id,m,n,a\n\"c, \"\"quoted\"\"\",2026-11-22T10:00:00Z,48,29.5\n\"c, \"\"quoted\"\"\",2026-11-22T10:01:00Z,32,79.5\n"
    );
    let ipc = r.to_arrow_ipc().expect("ipc");
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).expect("reader");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema(), r.schema);
}
