//! Billing snapshots against the rollup oracle (which shares no code with
//! the builder) through finalization, an unchanged reprocess, late events
//! and a reopen.

use std::collections::BTreeMap;

use crate::event::{Event, EventBatch, EventType, InvalidReason};
use crate::rollup::tests::oracle;
use crate::seal::SealPipeline;
use crate::store::{Store, StoreConfig};

use super::*;

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY: i64 = 86_400_000;

fn event(i: i64, ts: i64) -> Event {
    Event {
        event_id: format!("e{i}"),
        kind: EventType::ALL[(i % 3) as usize],
        ts,
        publisher_id: format!("p{}", i % 2),
        advertiser_id: format!("a{}", i % 2),
        campaign_id: format!("c{}", i % 3),
        ad_id: format!("x{}", i % 4),
        user_key: (i % 5 != 0).then(|| format!("u{}", i % 9)),
        cost_micros: 1_000 + i,
        value_micros: 7 * i,
        attributed: i % 2 == 0,
        invalid_reason: InvalidReason::ALL[(i % 4) as usize],
        ..Event::default()
    }
}

/// A snapshot row: advertiser, campaign, measures in order, estimated users.
type Row = (String, String, Vec<i64>, i64);

/// The oracle's numbers of `day` per (advertiser, campaign).
fn expected(events: &[Event], day: i64) -> Vec<Row> {
    let day_events: Vec<Event> = events.iter().filter(|e| e.ts.div_euclid(DAY) * DAY == day).cloned().collect();
    let mut out: BTreeMap<(String, String), (Vec<i64>, i64)> = BTreeMap::new();
    for ((_, key), sums) in oracle(&["advertiser_id", "campaign_id"], DAY, &day_events) {
        let mut users = crate::hll::Hll::default();
        for u in &sums.users {
            users.insert_hash(crate::hll::hash_bytes(u.as_bytes()));
        }
        let values = sums.values.iter().map(|&v| i64::try_from(v).expect("fits")).collect();
        let (a, c) = (key[0].clone().expect("advertiser"), key[1].clone().expect("campaign"));
        out.insert((a, c), (values, users.estimate()));
    }
    out.into_iter().map(|((a, c), (v, u))| (a, c, v, u)).collect()
}

fn got(store: &Store, day: i64, version: Option<u32>) -> (BillingSnapshot, Vec<Row>) {
    let (entry, rows) = store.billing_rows(day, version).expect("read").expect("a snapshot");
    let rows = rows
        .into_iter()
        .map(|r| (r.advertiser_id, r.campaign_id, r.measures.iter().map(|(_, v)| *v).collect(), r.users))
        .collect();
    (entry, rows)
}

#[test]
fn final_days_get_versioned_snapshots_of_their_final_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let open = || Store::open(dir.path(), config(), SealPipeline::new()).expect("open");
    let store = open();
    let day0 = BASE.div_euclid(DAY) * DAY;
    // Three days, crossing midnights; the first day's events are sealed
    // before the later ones close it.
    let mut events: Vec<Event> = (0..600).map(|i| event(i, BASE + i * 431_000)).collect();
    events.extend((0..20).map(|i| event(1_000 + i, day0 + 2 * DAY + 12 * 3_600_000 + i)));
    let (first_day, later): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| e.ts < day0 + DAY);
    store.append(&EventBatch::from_events(&first_day)).expect("append");
    store.seal_all().expect("seal");
    assert_eq!(store.snapshot_billing().expect("billing").partitions, 0, "nothing is final yet");
    // The later events close the first day (re-sealed as final below) and
    // part of the second, whose partitions are sealed as final at once.
    store.append(&EventBatch::from_events(&later)).expect("append");
    store.seal_all().expect("seal");
    store.finalize_closed().expect("finalize");
    store.snapshot_billing().expect("billing");
    for day in [day0, day0 + DAY] {
        let versions = store.billing_versions(day);
        assert_eq!(versions.len(), 1, "one version of {}", day_name(day));
        assert_eq!(versions[0].cause, Cause::Final);
        assert_eq!(got(&store, day, None).1, expected(&events, day), "{}", day_name(day));
    }
    assert!(store.billing_versions(day0 + 2 * DAY).is_empty(), "the last day is not final: no snapshot");
    assert_eq!(store.snapshot_billing().expect("billing").partitions, 0, "nothing new");

    // A reprocess that changes nothing keeps the version.
    store.reprocess(&[BASE.div_euclid(3_600_000) * 3_600_000], 7).expect("reprocess");
    store.snapshot_billing().expect("billing");
    let versions = store.billing_versions(day0);
    assert_eq!(versions.len(), 1, "same numbers, same version");
    let raws: Vec<_> = store
        .catalog()
        .segments_of(crate::manifest::Level::Raw)
        .filter(|m| m.partition.bucket_start_ms < day0 + DAY)
        .map(|m| m.id)
        .collect();
    assert_eq!(
        versions[0].basis.iter().collect::<std::collections::BTreeSet<_>>(),
        raws.iter().collect(),
        "checked against the new segments"
    );

    // Late events into the first day change its numbers: version 2, and
    // version 1 keeps the old ones.
    let late: Vec<Event> = (0..10).map(|i| event(2_000 + i, day0 + 23 * 3_600_000 + i * 1_000)).collect();
    let before = expected(&events, day0);
    store.append(&EventBatch::from_events(&late)).expect("append");
    store.seal_all().expect("seal");
    store.snapshot_billing().expect("billing");
    assert_eq!(store.billing_versions(day0).len(), 1, "a day with provisional segments is not snapshotted");
    store.finalize_closed().expect("finalize");
    store.snapshot_billing().expect("billing");
    events.extend(late);
    let versions = store.billing_versions(day0);
    assert_eq!(
        versions.iter().map(|v| (v.version, v.cause)).collect::<Vec<_>>(),
        [(1, Cause::Final), (2, Cause::LateEvents)]
    );
    assert_eq!(got(&store, day0, None).1, expected(&events, day0));
    assert_eq!(got(&store, day0, Some(1)).1, before, "version 1 is unchanged");
    assert!(store.billing_rows(day0, Some(3)).expect("read").is_none());

    // A reopen keeps every version; a file no entry names (a pass that
    // stopped before its commit) is removed.
    store.close().expect("close");
    drop(store);
    let stray = file_path(dir.path(), day0 + 2 * DAY, 1);
    std::fs::write(&stray, b"partial").expect("stray");
    let store = open();
    assert!(!stray.exists(), "the stray snapshot file is removed at open");
    assert_eq!(got(&store, day0, Some(1)).1, before);
    assert_eq!(got(&store, day0, None).1, expected(&events, day0));
    assert_eq!(got(&store, day0 + DAY, None).1, expected(&events, day0 + DAY));
}
