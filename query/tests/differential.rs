//! Differential test: the engine against a deliberately naive
//! row-at-a-time evaluator written here, on random events split between
//! sealed segments and the head, for random queries of the SQL subset.
//! Queries on `metrics` are also rendered as the equivalent query over
//! `events`, and all three answers must agree.
//!
//! Every query orders by all output columns, so the comparison is exact
//! (rows compared in order; floats with a relative tolerance).

mod naive;

use naive::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_naive_evaluator(
        events in prop::collection::vec(any_event(), 0..300),
        sealed_frac in 0.0f64..=1.0,
        queries in prop::collection::vec(any_query(Span::Hours), 10),
        rollups in any_rollups(),
    ) {
        check_queries(events, sealed_frac, &queries, rollups)?;
    }

    /// One hourly rollup with every dimension covers every `metrics`
    /// query's dimensions: only its time filters and groupings decide
    /// whether hourly rows may answer it.
    #[test]
    fn hourly_rollups_answer_only_whole_hours(
        events in prop::collection::vec(any_event(), 0..300),
        sealed_frac in 0.5f64..=1.0,
        queries in prop::collection::vec(any_query(Span::Hours), 10),
    ) {
        let all = [
            "publisher_id", "advertiser_id", "campaign_id", "ad_group_id", "ad_id",
            "device", "os", "country", "region", "placement",
        ];
        let hourly = RollupDef::new("all", &all).expect("rollup").with_granularity(Granularity::Hour);
        check_queries(events, sealed_frac, &queries, vec![hourly])?;
    }

    /// Three days of events: the first two become final and are merged
    /// into hour and day rows; queries filter and group by whole days,
    /// hours and anything else; a reprocess of one bucket may leave a day
    /// half rebuilt when the queries run.
    #[test]
    fn final_days_agree_with_naive_evaluator(
        mut events in prop::collection::vec(any_event(), 1..300),
        head_frac in 0.0f64..0.3,
        queries in prop::collection::vec(any_query(Span::Days), 10),
        rollups in any_rollups(),
        reprocess in prop::option::weighted(0.4, (0i64..72, any::<bool>())),
    ) {
        for e in &mut events {
            e.ts = BASE + (e.ts - BASE) * DAYS_STRETCH;
        }
        check_final_days(events, head_frac, &queries, rollups, reprocess)?;
    }


    #[test]
    fn dimension_counts_agree_with_naive_evaluator(
        events in prop::collection::vec(any_event(), 0..600),
        sealed_frac in 0.5f64..=1.0,
        queries in prop::collection::vec(count_query(), 10),
    ) {
        check_queries(events, sealed_frac, &queries, RollupDef::defaults())?;
    }
}

/// Seals all but the last `head_frac` of `events`, finalizes the closed
/// buckets and lets the rollup task merge the final days; then maybe
/// re-seals the bucket `hour` hours after the first (and lets the rollup
/// task finish or not); then checks every query against the naive answer.
fn check_final_days(
    mut events: Vec<Event>,
    head_frac: f64,
    queries: &[Query],
    rollups: Vec<RollupDef>,
    reprocess: Option<(i64, bool)>,
) -> Result<(), TestCaseError> {
    for (i, e) in events.iter_mut().enumerate() {
        e.event_id = format!("e{i:04}");
    }
    let sealed = events.len() - (events.len() as f64 * head_frac) as usize;
    let (_dir, store) = load(&events[..sealed], sealed, rollups.clone());
    let settle = |store: &Store| {
        for _ in 0..50 {
            if store.rollup_status().iter().all(|s| s.complete) {
                return;
            }
            store.roll_up().expect("roll up");
        }
        panic!("the rollup task does not finish");
    };
    store.finalize_closed().expect("finalize");
    settle(&store);
    let merged = store.catalog().segments.values().filter(|m| !m.covers.is_empty()).count();
    prop_assert!(rollups.is_empty() || store.rollup_status().iter().all(|s| s.days_merged == s.final_days));
    if merged > 0 {
        // Whole days of the final days are read from day rows.
        let day0 = BASE.div_euclid(DAY) * DAY;
        let sql = format!(
            "EXPLAIN SELECT date_trunc('day', ts), sum(impressions) FROM metrics WHERE ts < {} GROUP BY 1",
            day0 + 2 * DAY
        );
        let plan = run(&store, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        let reads = plan.iter().find(|r| matches!(&r[0], V::Str(k) if k == "reads")).map(|r| format!("{:?}", r[1]));
        let derived: Vec<String> = store
            .catalog()
            .segments
            .values()
            .filter_map(|m| {
                let r = m.rollup.as_ref()?;
                Some(format!(
                    "{} {} {:?} rows {} from {:?}",
                    r.name,
                    m.level.as_str(),
                    r.dimensions,
                    m.rows,
                    m.derived_from().collect::<Vec<_>>()
                ))
            })
            .collect();
        prop_assert!(reads.as_ref().is_some_and(|r| r.contains("day rollup")), "{sql}: {reads:?}\n{derived:#?}");
        // Each merged segment read is listed in place of its day's events segments.
        let listed =
            plan.iter().any(|r| matches!(&r[1], V::Str(v) if v.contains("merged from the final day, read instead of")));
        prop_assert!(listed, "{sql}: {plan:?}");
    }
    if let Some((hour, settled)) = reprocess {
        let bucket = BASE.div_euclid(3_600_000) * 3_600_000 + hour * 3_600_000;
        store.reseal_buckets(&[bucket], adstore_storage::SealKind::Reprocess).expect("reprocess");
        if settled {
            settle(&store);
        }
    }
    if sealed < events.len() {
        store.append(&EventBatch::from_events(&events[sealed..])).expect("append");
    }
    for q in queries {
        let Query::Agg(a) = q else { continue };
        let want = naive_agg(a, &events);
        let sql = agg_sql(a, a.metrics);
        let got = run(&store, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        check(&got, &want, &format!("{sql}\n({merged} merged segments)"))?;
    }
    Ok(())
}

/// Loads `events` (the first `sealed_frac` of them sealed into segments,
/// the rest in the head) and checks every query against the naive answer.
fn check_queries(
    mut events: Vec<Event>,
    sealed_frac: f64,
    queries: &[Query],
    rollups: Vec<RollupDef>,
) -> Result<(), TestCaseError> {
    for (i, e) in events.iter_mut().enumerate() {
        e.event_id = format!("e{i:04}");
    }
    let sealed = (events.len() as f64 * sealed_frac) as usize;
    let (_dir, store) = load(&events, sealed, rollups);
    for q in queries {
        match q {
            Query::Agg(a) => {
                let want = naive_agg(a, &events);
                let sql = agg_sql(a, a.metrics);
                let got = run(&store, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                check(&got, &want, &sql)?;
                if a.metrics {
                    let sql = agg_sql(a, false);
                    let got = run(&store, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                    check(&got, &want, &sql)?;
                }
            }
            Query::Rows(r) => {
                let want = naive_rows(r, &events);
                let mut sql = "SELECT event_id, ts, campaign_id, device, cost_micros, type FROM events".to_string();
                if let Some(f) = &r.filter {
                    sql += &format!(" WHERE {}", f.sql("ts"));
                }
                sql += &format!(" ORDER BY 1, 2, 3, 4, 5, 6 LIMIT {}", r.limit);
                let got = run(&store, &sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                check(&got, &want, &sql)?;
            }
        }
    }
    Ok(())
}
