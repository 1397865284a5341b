//! Reconciliation finds nothing on a store the tasks built, and finds a
//! rollup segment whose rows are another segment's.

use crate::event::{Event, EventBatch, EventType, InvalidReason};
use crate::rollup::{RollupDef, RollupInput};
use crate::seal::SealPipeline;
use crate::store::{Store, StoreConfig};

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY: i64 = 86_400_000;

fn event(i: i64, ts: i64) -> Event {
    Event {
        event_id: format!("e{i}"),
        kind: EventType::ALL[(i % 3) as usize],
        ts,
        publisher_id: format!("p{}", i % 3),
        advertiser_id: format!("a{}", i % 2),
        campaign_id: format!("c{}", i % 5),
        ad_id: format!("x{}", i % 4),
        user_key: (i % 5 != 0).then(|| format!("u{}", i % 13)),
        device: (i % 3 != 0).then(|| "mobile".into()),
        country: Some(["DE", "US"][(i % 2) as usize].into()),
        cost_micros: 1_000 + i,
        value_micros: 3 * i,
        attributed: i % 2 == 0,
        invalid_reason: InvalidReason::ALL[(i % 4) as usize],
        ..Event::default()
    }
}

#[test]
fn reconcile_agrees_with_a_built_store_and_names_a_wrong_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let events: Vec<Event> = (0..900).map(|i| event(i, BASE + i * 290_000)).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    store.finalize_closed().expect("finalize");
    for _ in 0..20 {
        store.roll_up().expect("roll up");
        store.snapshot_billing().expect("billing");
    }
    let catalog = store.catalog();
    assert!(catalog.segments.values().any(|m| !m.covers.is_empty()), "a day was merged");
    assert!(!catalog.billing.is_empty(), "a day has a billing snapshot");

    let report = store.reconcile(i64::MIN, i64::MAX).expect("reconcile");
    assert_eq!(report.differing, 0, "{:#?}", report.differences);
    assert_eq!(report.events, events.len() as u64);
    let rollups = store.snapshot().rollups.len();
    assert_eq!(report.checks.len(), rollups + catalog.billing.len(), "every rollup segment and snapshot checked");
    assert!(report.checks.iter().all(|c| c.groups > 0));

    // A range checks the raw segments it overlaps, and what holds them.
    let one_day = store.reconcile(BASE.div_euclid(DAY) * DAY + DAY, BASE.div_euclid(DAY) * DAY + 2 * DAY).expect("day");
    assert!(one_day.raw_segments > 0 && one_day.raw_segments < report.raw_segments);
    assert_eq!(one_day.differing, 0);

    // A campaign segment written at seal replaced by one with another raw
    // segment's rows: named, with the groups that differ.
    let snapshot = store.snapshot();
    let victim = snapshot
        .rollups
        .iter()
        .find(|s| s.meta.source.is_some() && s.meta.rollup.as_ref().is_some_and(|r| r.name == "campaign"))
        .expect("a campaign segment");
    let other = snapshot.segments.iter().find(|s| Some(s.meta.id) != victim.meta.source).expect("another raw");
    let def = RollupDef::defaults().into_iter().find(|d| d.name() == "campaign").expect("campaign");
    let other_events = other.reader.read_batch().expect("read");
    let rows = RollupInput::new(&other_events, std::slice::from_ref(&def))
        .expect("input")
        .rows(&def)
        .expect("rows")
        .expect("fits");
    let wrong = store
        .write_derived(&def.schema(), &rows, |id, summary| crate::manifest::SegmentMeta {
            id,
            rows: summary.rows,
            size_bytes: summary.size_bytes,
            ..(*victim.meta).clone()
        })
        .expect("write");
    let wrong_id = wrong.0.id;
    store.commit_derived(vec![wrong], vec![victim.meta.id]).expect("commit");
    let report = store.reconcile(i64::MIN, i64::MAX).expect("reconcile");
    assert!(report.differing > 0, "the wrong segment is found");
    let named = format!("segment {wrong_id}");
    assert!(report.checks.iter().filter(|c| c.differing > 0).all(|c| c.what.contains(&named)), "{:#?}", report.checks);
    assert!(report.differences.iter().all(|d| d.what.contains(&named) && !d.bucket.is_empty()));
}
