//! Retention and tiering against the naive evaluator: final days whose raw
//! events (and maybe minute or hour rows) retention deleted, or moved to
//! the object store, are answered exactly from what remains, or refused
//! when something was deleted.

mod naive;

use naive::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn retention_answers_exactly_or_refuses(
        mut events in prop::collection::vec(any_event(), 1..300),
        queries in prop::collection::vec(any_query(Span::Days), 10),
        rollups in any_rollups(),
        policy in prop::sample::select(vec![
            r#"{"raw": {"ttl": "3d"}}"#,
            r#"{"raw": {"ttl": "3d"}, "minute": {"ttl": "3d"}}"#,
            r#"{"raw": {"ttl": "3d"}, "minute": {"ttl": "4d"}, "hour": {"ttl": "1h"}}"#,
            r#"{"raw": {"hot": "1h"}, "minute": {"hot": "1h"}, "hour": {"hot": "1h"}, "day": {"hot": "1h"}}"#,
            r#"{"raw": {"hot": "1h", "ttl": "3d"}, "hour": {"hot": "2h"}}"#,
        ]),
    ) {
        for e in &mut events {
            e.ts = BASE + (e.ts - BASE) * DAYS_STRETCH;
        }
        check_retention(events, &queries, rollups, policy)?;
    }
}

/// Seals `events`, finalizes the closed buckets, lets the rollup task
/// merge the final days, then applies `policy` (ttls deleting raw events
/// and maybe minute or hour rows; hot ages moving segments to the object
/// store, a local directory here) at a wall clock well past every bucket:
/// every query gives the naive answer over all the events or (only when
/// something was deleted) is refused as deleted by retention, never a
/// number short of the deleted events.
fn check_retention(
    mut events: Vec<Event>,
    queries: &[Query],
    rollups: Vec<RollupDef>,
    policy: &str,
) -> Result<(), TestCaseError> {
    for (i, e) in events.iter_mut().enumerate() {
        e.event_id = format!("e{i:04}");
    }
    let (dir, store) = load(&events, events.len(), rollups.clone());
    store.finalize_closed().expect("finalize");
    for _ in 0..50 {
        if store.rollup_status().iter().all(|s| s.complete) {
            break;
        }
        store.roll_up().expect("roll up");
    }
    for _ in 0..10 {
        if store.billing_snapshots_pending() == 0 {
            break;
        }
        store.snapshot_billing().expect("billing");
    }
    // Raw segments of merged (final, billed) days: settled, the policy acts on them.
    let settled: std::collections::HashSet<_> =
        store.catalog().segments.values().flat_map(|m| m.covers.iter().copied()).collect();
    let policy: adstore_storage::retention::RetentionPolicy = serde_json::from_str(policy).expect("policy");
    store.set_retention(policy).expect("policy accepted");
    let now = BASE + 30 * DAY;
    for _ in 0..100 {
        if store.apply_tiering_at(now).expect("tiering").segments.is_empty() {
            break;
        }
    }
    store.apply_retention_at(now).expect("retention");
    store.apply_retention_at(now).expect("a second pass changes nothing");
    let catalog = store.catalog();
    let expired: Vec<_> = catalog.segments.values().filter(|m| m.tier == adstore_storage::Tier::Expired).collect();
    let gone: Vec<_> = catalog.segments.values().filter(|m| m.tier != adstore_storage::Tier::Local).collect();
    for m in &gone {
        prop_assert!(!dir.path().join("segments").join(m.id.file_name()).exists(), "{} deleted", m.id);
    }
    let deletes = [policy.raw, policy.minute, policy.hour, policy.day].iter().any(|l| l.ttl.is_some());
    let moves = [policy.raw, policy.minute, policy.hour, policy.day].iter().any(|l| l.hot.is_some());
    if moves || policy.raw.ttl.is_some() {
        let still_local: Vec<_> = settled
            .iter()
            .filter(|id| catalog.segments.get(id).is_some_and(|m| m.tier == adstore_storage::Tier::Local))
            .collect();
        prop_assert!(still_local.is_empty(), "settled raw segments left local: {still_local:?}");
    }
    let deleted = "deleted by retention";
    let (mut answered, mut refused) = (0, 0);
    for q in queries {
        let Query::Agg(a) = q else { continue };
        let want = naive_agg(a, &events);
        for metrics in [a.metrics, false] {
            let sql = agg_sql(a, metrics);
            match run(&store, &sql) {
                Ok(got) => {
                    check(&got, &want, &format!("{sql}\n({} raw segments expired)", expired.len()))?;
                    answered += 1;
                }
                Err(e) if e.contains(deleted) && deletes => refused += 1,
                Err(e) => prop_assert!(false, "{sql}: {e}"),
            }
        }
    }
    prop_assert!(answered + refused > 0);
    if !expired.is_empty() {
        // Whole days of metrics are still answered from day rows.
        let sql = "SELECT date_trunc('day', ts), sum(impressions) FROM metrics GROUP BY 1 ORDER BY 1";
        let got = run(&store, sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        let mut want: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
        for e in &events {
            *want.entry(e.ts.div_euclid(DAY) * DAY).or_default() += i64::from(e.kind == EventType::Impression);
        }
        let got: Vec<(i64, i64)> = got
            .iter()
            .map(|r| match (&r[0], &r[1]) {
                (V::Ts(d), V::Int(n)) => Ok((*d, *n)),
                other => Err(TestCaseError::fail(format!("{other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        let want: Vec<(i64, i64)> = want.into_iter().collect();
        prop_assert_eq!(got, want, "{}", sql);
        let sql = "SELECT count(*) FROM events";
        let e = run(&store, sql).expect_err("events retention deleted are not counted");
        prop_assert!(e.contains(deleted), "{sql}: {e}");
    }
    Ok(())
}
