//! Row isolation (`QueryOptions::advertisers`): a statement run for some
//! advertisers answers exactly what the naive evaluator (`naive/`, no code
//! shared with the engine) answers over those advertisers' events alone,
//! and what the engine answers unscoped over a store holding only them;
//! for random queries on `events` and `metrics`, rollups, sealed segments
//! and the head. EXPLAIN and the stats say nothing about other rows.

mod naive;

use naive::*;

fn run_scoped(store: &Store, sql: &str, advertisers: &[&str]) -> Result<Vec<Vec<V>>, String> {
    let opts = QueryOptions {
        now_ms: BASE,
        advertisers: Some(advertisers.iter().map(|a| a.to_string()).collect()),
        ..QueryOptions::default()
    };
    let r = execute(&store.snapshot(), sql, &opts).map_err(|e| format!("{e}"))?;
    Ok(r.rows().iter().map(|row| row.iter().map(from_cell).collect()).collect())
}

fn statements(q: &Query) -> Vec<String> {
    match q {
        Query::Agg(a) if a.metrics => vec![agg_sql(a, true), agg_sql(a, false)],
        Query::Agg(a) => vec![agg_sql(a, false)],
        Query::Rows(r) => {
            let mut sql = "SELECT event_id, ts, campaign_id, device, cost_micros, type FROM events".to_string();
            if let Some(f) = &r.filter {
                sql += &format!(" WHERE {}", f.sql("ts"));
            }
            sql += &format!(" ORDER BY 1, 2, 3, 4, 5, 6 LIMIT {}", r.limit);
            vec![sql]
        }
    }
}

fn naive_answer(q: &Query, events: &[Event]) -> Vec<Vec<V>> {
    match q {
        Query::Agg(a) => naive_agg(a, events),
        Query::Rows(r) => naive_rows(r, events),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_scoped_statement_answers_as_if_only_its_advertisers_existed(
        mut events in prop::collection::vec(any_event(), 0..300),
        sealed_frac in 0.0f64..=1.0,
        queries in prop::collection::vec(any_query(Span::Hours), 8),
        rollups in any_rollups(),
        scope in prop::sample::subsequence(ADVS.to_vec(), 0..=2),
    ) {
        for (i, e) in events.iter_mut().enumerate() {
            e.event_id = format!("e{i:04}");
        }
        let sealed = (events.len() as f64 * sealed_frac) as usize;
        let (_dir, store) = load(&events, sealed, rollups.clone());
        let theirs: Vec<Event> =
            events.iter().filter(|e| scope.contains(&e.advertiser_id.as_str())).cloned().collect();
        let (_own_dir, own) = load(&theirs, (theirs.len() as f64 * sealed_frac) as usize, rollups);
        for q in &queries {
            let want = naive_answer(q, &theirs);
            for sql in statements(q) {
                let got = run_scoped(&store, &sql, &scope).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                check(&got, &want, &sql)?;
                let alone = run(&own, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                check(&got, &alone, &sql)?;
            }
        }
    }
}

/// Predicates that would reach other rows (`OR`, `NOT`, `IN`, `LIKE`,
/// naming another advertiser, `count(DISTINCT advertiser_id)`) stay
/// inside the scope; EXPLAIN shows the scope as the first pushed filter
/// and no storage counts; the stats count nothing.
#[test]
fn no_statement_reaches_past_its_scope() {
    let events: Vec<Event> = (0..200)
        .map(|i| Event {
            event_id: format!("e{i}"),
            ts: BASE + i * MINUTE,
            advertiser_id: ADVS[(i % 3) as usize].to_string(),
            campaign_id: CAMPS[(i % 4) as usize].to_string(),
            cost_micros: 1_000 + i,
            ..Event::default()
        })
        .collect();
    let (_dir, store) = load(&events, 120, Vec::new());
    let a1 = events.iter().filter(|e| e.advertiser_id == "a1").count() as i64;
    for sql in [
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM events WHERE advertiser_id = 'a2' OR true",
        "SELECT count(*) FROM events WHERE NOT (advertiser_id = 'a1')",
        "SELECT count(*) FROM events WHERE advertiser_id IN ('a1', 'a2', 'a3')",
        "SELECT count(*) FROM events WHERE advertiser_id LIKE 'a%'",
        "SELECT count(DISTINCT advertiser_id) FROM events",
        "SELECT sum(impressions) FROM metrics",
    ] {
        let got = run_scoped(&store, sql, &["a1"]).expect(sql);
        let want = match sql {
            s if s.contains("NOT") => 0,
            s if s.contains("DISTINCT") => 1,
            _ => a1,
        };
        assert!(
            matches!(got.as_slice(), [row] if matches!(row.as_slice(), [V::Int(n)] if *n == want)),
            "{sql}: {got:?}"
        );
    }
    let none = run_scoped(&store, "SELECT count(*) FROM events", &[]).expect("empty scope");
    assert!(matches!(none.as_slice(), [row] if matches!(row.as_slice(), [V::Int(0)])), "{none:?}");

    let opts = QueryOptions { now_ms: BASE, advertisers: Some(vec!["a1".into()]), ..QueryOptions::default() };
    let explain = execute(&store.snapshot(), "EXPLAIN SELECT sum(clicks) FROM metrics WHERE campaign_id = 'c1'", &opts)
        .expect("explain");
    let rows: Vec<(String, String)> =
        explain.rows().iter().map(|r| (format!("{}", r[0]), format!("{}", r[1]))).collect();
    let pushed: Vec<&str> = rows.iter().filter(|r| r.0 == "pushed_filter").map(|r| r.1.as_str()).collect();
    assert_eq!(pushed, ["advertiser_id IN ('a1')", "campaign_id IN ('c1')"], "{rows:?}");
    assert!(rows.iter().any(|r| r.0 == "storage"), "{rows:?}");
    for hidden in ["segments", "head", "reads", "parallelism"] {
        assert!(!rows.iter().any(|r| r.0 == hidden || r.0.starts_with("segment ")), "{hidden} shown: {rows:?}");
    }
    let r = execute(&store.snapshot(), "SELECT count(*) FROM events", &opts).expect("count");
    let s = &r.stats;
    assert_eq!(
        (s.rows_scanned, s.segments_scanned, s.segments_pruned, s.blocks_scanned, s.blocks_pruned),
        (0, 0, 0, 0, 0)
    );
}
