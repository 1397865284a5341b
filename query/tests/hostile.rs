//! Hostile queries (issue 25): expressions thousands of terms long or
//! nested deep once overflowed the stack of the thread running them and
//! ended the whole server. Every one must now either answer or be refused
//! with a user error that names the limit, on a thread with the default
//! stack size of a test (2 MiB), in a debug build.

use adstore_query::{Cell, QueryError, QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig};

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn store(dir: &std::path::Path) -> Store {
    let store =
        Store::open(dir, StoreConfig { fsync: false, ..StoreConfig::default() }, SealPipeline::new()).expect("open");
    let events: Vec<Event> = (0..20)
        .map(|i| Event {
            event_id: format!("e{i}"),
            kind: if i % 4 == 0 { EventType::Click } else { EventType::Impression },
            ts: BASE + i * 1_000,
            publisher_id: "p".into(),
            advertiser_id: "a".into(),
            campaign_id: "c".into(),
            ad_id: "x".into(),
            cost_micros: i,
            ..Event::default()
        })
        .collect();
    store.append(&EventBatch::from_events(&events[..10])).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(&events[10..])).expect("append");
    store
}

fn count(store: &Store, sql: &str) -> Result<i64, QueryError> {
    let r = execute(&store.snapshot(), sql, &QueryOptions::default())?;
    match r.rows().first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => Ok(*n),
        other => panic!("expected a count, got {other:?}"),
    }
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

fn nested_case(depth: usize) -> String {
    let mut e = "1".to_string();
    for _ in 0..depth {
        e = format!("CASE WHEN cost_micros > 0 THEN {e} ELSE 0 END");
    }
    e
}

#[test]
fn long_expressions_of_the_issue_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    // The queries of issue 25, each of which ended the server.
    let plus = format!("SELECT count(*) FROM events WHERE cost_micros + {} > 0", chain("1", " + ", 1000));
    assert_eq!(count(&s, &plus).map_err(|e| e.to_string()), Ok(20));
    let ors = format!("SELECT count(*) FROM events WHERE {}", chain("cost_micros = 3", " OR ", 1000));
    assert_eq!(count(&s, &ors).map_err(|e| e.to_string()), Ok(1));
    let ands = format!("SELECT count(*) FROM events WHERE {}", chain("cost_micros >= 0", " AND ", 2000));
    assert_eq!(count(&s, &ands).map_err(|e| e.to_string()), Ok(20));
    let having = format!(
        "SELECT count(*) FROM (SELECT type, count(*) AS n FROM events GROUP BY type HAVING {})",
        chain("count(*) > 0", " OR ", 1500)
    );
    // A subquery is not in the SQL subset: refused, not a crash.
    assert!(count(&s, &having).is_err());
    let having =
        format!("SELECT type, count(*) FROM events GROUP BY type HAVING {}", chain("count(*) > 0", " OR ", 1500));
    let r = execute(&s.snapshot(), &having, &QueryOptions::default()).expect("HAVING with 1,500 ORs");
    assert_eq!(r.num_rows(), 2);
    let filter = format!("SELECT count(*) FILTER (WHERE {}) FROM events", chain("type = 'click'", " OR ", 1500));
    assert_eq!(count(&s, &filter).map_err(|e| e.to_string()), Ok(5));
    // At the limits: a chain of operators just under max_operators, and
    // nesting at max_nesting.
    let longest = format!(
        "SELECT count(*) FROM events WHERE cost_micros + {} > 0",
        chain("1", " + ", adstore_query::MAX_OPERATORS - 10)
    );
    assert_eq!(count(&s, &longest).map_err(|e| e.to_string()), Ok(20));
    let deepest = format!(
        "SELECT count(*) FROM events WHERE {}cost_micros{} > 0",
        "(".repeat(adstore_query::MAX_NESTING - 1),
        ")".repeat(adstore_query::MAX_NESTING - 1)
    );
    assert_eq!(count(&s, &deepest).map_err(|e| e.to_string()), Ok(19));
    let case = format!("SELECT sum({}) FROM events", nested_case(60));
    assert_eq!(count(&s, &case).map_err(|e| e.to_string()), Ok(19));
}

#[test]
fn expressions_past_the_limits_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let too_long = format!("SELECT count(*) FROM events WHERE cost_micros + {} > 0", chain("1", " + ", 100_000));
    let e = count(&s, &too_long).expect_err("100,000 terms");
    assert!(e.is_user_error(), "{e}");
    assert_eq!(e.code(), "query_too_complex", "{e}");
    assert!(e.to_string().contains("operators"), "{e}");
    let deep = format!("SELECT count(*) FROM events WHERE {}cost_micros{} > 0", "(".repeat(5000), ")".repeat(5000));
    let e = count(&s, &deep).expect_err("5,000 parentheses");
    assert_eq!(e.code(), "query_too_complex", "{e}");
    assert!(e.to_string().contains("nested"), "{e}");
    assert!(e.position().is_some(), "{e}");
    let e = count(&s, &format!("SELECT sum({}) FROM events", nested_case(500))).expect_err("500 nested CASE");
    assert_eq!(e.code(), "query_too_complex", "{e}");
    // Queries within the limits still answer after refusals.
    assert_eq!(count(&s, "SELECT count(*) FROM events").map_err(|e| e.to_string()), Ok(20));
}
