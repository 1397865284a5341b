//! Minute rows against an oracle that shares no code with the builder:
//! row by row into ordered maps, with the measure definitions of
//! DESIGN.md §6 written out again here.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::{Array, BinaryArray, Int64Array, StringArray};
use proptest::prelude::*;

use super::*;
use crate::event::{Event, EventBatch, EventType, InvalidReason};
use crate::hll::{Hll, hash_bytes};
use crate::testutil::any_event;
use crate::time::floor_to;

pub(crate) type Key = (i64, Vec<Option<String>>);
/// A group's summed measures and its users sketch, as stored.
type Stored = ([i128; 10], Option<Vec<u8>>);

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Sums {
    /// impressions, clicks, conversions, invalid impressions, invalid
    /// clicks, billable impressions, billable clicks, attributed
    /// conversions, spend, conversion value (the order of Measure::ALL).
    pub(crate) values: [i128; 10],
    pub(crate) users: BTreeSet<String>,
}

fn dim(e: &Event, name: &str) -> Option<String> {
    match name {
        "publisher_id" => Some(e.publisher_id.clone()),
        "advertiser_id" => Some(e.advertiser_id.clone()),
        "campaign_id" => Some(e.campaign_id.clone()),
        "ad_group_id" => e.ad_group_id.clone(),
        "ad_id" => Some(e.ad_id.clone()),
        "device" => e.device.clone(),
        "os" => e.os.clone(),
        "country" => e.country.clone(),
        "region" => e.region.clone(),
        "placement" => e.placement.clone(),
        other => panic!("not a dimension: {other}"),
    }
}

pub(crate) fn oracle(dims: &[&str], width_ms: i64, events: &[Event]) -> BTreeMap<Key, Sums> {
    let mut out: BTreeMap<Key, Sums> = BTreeMap::new();
    for e in events {
        let minute = (e.ts as i128).div_euclid(i128::from(width_ms)) * i128::from(width_ms);
        let minute = i64::try_from(minute).unwrap_or(i64::MIN);
        let s = out.entry((minute, dims.iter().map(|d| dim(e, d)).collect())).or_default();
        let valid = e.invalid_reason == InvalidReason::Valid;
        let (imp, click, conv) =
            (e.kind == EventType::Impression, e.kind == EventType::Click, e.kind == EventType::Conversion);
        let add = [
            imp as i128,
            click as i128,
            conv as i128,
            (imp && !valid) as i128,
            (click && !valid) as i128,
            (imp && valid) as i128,
            (click && valid) as i128,
            (conv && e.attributed) as i128,
            if (imp || click) && valid { i128::from(e.cost_micros) } else { 0 },
            if conv && e.attributed { i128::from(e.value_micros) } else { 0 },
        ];
        for (v, a) in s.values.iter_mut().zip(add) {
            *v += a;
        }
        if let Some(u) = &e.user_key {
            s.users.insert(u.clone());
        }
    }
    out
}

/// The rows of a batch of `def.schema()`, in batch order.
fn rows_of(def: &RollupDef, batch: &arrow_array::RecordBatch) -> Vec<(Key, Stored)> {
    let col = |name: &str| batch.column(def.schema().position(name).expect("column")).clone();
    let ts = col("ts");
    let ts = ts.as_any().downcast_ref::<Int64Array>().expect("ts");
    let users = col("users");
    let users = users.as_any().downcast_ref::<BinaryArray>().expect("users");
    let dims: Vec<_> = def.dims().iter().map(|d| col(d.name())).collect();
    let sums: Vec<_> = crate::measure::Measure::sums().map(|m| col(m.name())).collect();
    (0..batch.num_rows())
        .map(|r| {
            let key = dims
                .iter()
                .map(|a| {
                    let a = a.as_any().downcast_ref::<StringArray>().expect("dim");
                    a.is_valid(r).then(|| a.value(r).to_string())
                })
                .collect();
            let mut values = [0i128; 10];
            for (v, a) in values.iter_mut().zip(&sums) {
                *v = i128::from(a.as_any().downcast_ref::<Int64Array>().expect("sum").value(r));
            }
            ((ts.value(r), key), (values, users.is_valid(r).then(|| users.value(r).to_vec())))
        })
        .collect()
}

fn built(def: &RollupDef, events: &[Event]) -> Option<BTreeMap<Key, Stored>> {
    let events = EventBatch::from_events(events);
    let batch = RollupInput::new(&events, std::slice::from_ref(def)).expect("input").rows(def).expect("build")?;
    let mut out = BTreeMap::new();
    for (key, stored) in rows_of(def, &batch) {
        assert!(out.insert(key, stored).is_none(), "one row per group");
    }
    Some(out)
}

fn check(dims: &[&str], events: &[Event]) {
    check_at(dims, Granularity::Minute, events);
    check_at(dims, Granularity::Hour, events);
}

fn check_at(dims: &[&str], granularity: Granularity, events: &[Event]) {
    let def = RollupDef::new("t", dims).expect("def").with_granularity(granularity);
    let want = oracle(dims, granularity.width_ms(), events);
    let fits = want.values().all(|s| s.values.iter().all(|&v| i64::try_from(v).is_ok()));
    let Some(got) = built(&def, events) else {
        assert!(!fits, "no rows although every sum fits an i64");
        return;
    };
    assert!(fits, "rows although a sum overflows an i64");
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, (values, sketch)) in &got {
        let w = &want[key];
        assert_eq!(values, &w.values, "{key:?}");
        let mut users = Hll::default();
        for u in &w.users {
            users.insert_hash(hash_bytes(u.as_bytes()));
        }
        assert_eq!(sketch.clone(), (!w.users.is_empty()).then(|| users.to_bytes()), "{key:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn rollup_rows_match_the_oracle(events in prop::collection::vec(any_event(), 0..200)) {
        check(&["advertiser_id", "campaign_id", "ad_group_id", "ad_id", "device", "country"], &events);
        check(&["publisher_id", "placement", "country", "device"], &events);
        check(&[], &events);
    }

    #[test]
    fn rollup_rows_of_ordinary_costs_match_the_oracle(
        mut events in prop::collection::vec(any_event(), 1..300),
        spread in 1i64..10_000_000,
    ) {
        // Costs and times as traffic has them, so that sums fit and rows
        // group: minutes crossed, groups repeated.
        for (i, e) in events.iter_mut().enumerate() {
            e.cost_micros = (i as i64 * 7_919) % 100_000;
            e.value_micros = (i as i64 * 104_729) % 1_000_000;
            e.ts = 1_795_341_600_000 + (i as i64 * 7_717) % spread;
        }
        check(&["advertiser_id", "campaign_id"], &events);
        check(&["region", "os", "ad_id"], &events);
    }

    #[test]
    fn merged_hour_and_day_rows_match_the_oracle(
        mut events in prop::collection::vec(any_event(), 1..300),
        spread in 1i64..(3 * 86_400_000),
        cuts in prop::collection::vec(0usize..300, 0..5),
    ) {
        // Seal-time rows of several partitions (any split of the events),
        // merged into hours and days across day edges.
        for (i, e) in events.iter_mut().enumerate() {
            e.cost_micros = (i as i64 * 7_919) % 100_000;
            e.value_micros = (i as i64 * 104_729) % 1_000_000;
            e.ts = 1_795_341_600_000 + (i as i64 * 7_717_717) % spread;
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % events.len()).chain([0, events.len()]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        for dims in [&["advertiser_id", "campaign_id"][..], &["device", "country", "ad_id"][..]] {
            for seal in [Granularity::Minute, Granularity::Hour] {
                let def = RollupDef::new("t", dims).expect("def").with_granularity(seal);
                let parts: Vec<arrow_array::RecordBatch> = cuts
                    .windows(2)
                    .map(|w| {
                        let batch = EventBatch::from_events(&events[w[0]..w[1]]);
                        RollupInput::new(&batch, std::slice::from_ref(&def)).expect("input").rows(&def).expect("rows").expect("fits")
                    })
                    .collect();
                let hour = def.clone().with_granularity(Granularity::Hour);
                let hours = merge(&hour, &parts).expect("merge").expect("fits");
                check_rows(&hour, &hours, &events);
                let day = def.clone().with_granularity(Granularity::Day);
                let days = merge(&day, std::slice::from_ref(&hours)).expect("merge").expect("fits");
                check_rows(&day, &days, &events);
            }
        }
    }
}

/// `batch` (rows of `def`) against the oracle over `events`: one row per
/// group, every sum and sketch.
fn check_rows(def: &RollupDef, batch: &arrow_array::RecordBatch, events: &[Event]) {
    let dims: Vec<&str> = def.dims().iter().map(|d| d.name()).collect();
    let want = oracle(&dims, def.granularity().width_ms(), events);
    let mut got = BTreeMap::new();
    for (key, stored) in rows_of(def, batch) {
        assert!(got.insert(key, stored).is_none(), "one row per group");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, (values, sketch)) in &got {
        let w = &want[key];
        assert_eq!(values, &w.values, "{key:?}");
        let mut users = Hll::default();
        for u in &w.users {
            users.insert_hash(hash_bytes(u.as_bytes()));
        }
        assert_eq!(sketch.clone(), (!w.users.is_empty()).then(|| users.to_bytes()), "{key:?}");
    }
}

#[test]
fn definitions_are_checked_by_name() {
    assert!(RollupDef::new("Bad-Name", &["ad_id"]).expect_err("refused").contains("lowercase"));
    assert!(RollupDef::new("r", &["ts"]).expect_err("refused").contains("\"ts\" is not a dimension"));
    assert!(RollupDef::new("r", &["user_key"]).expect_err("refused").contains("not a dimension"));
    assert!(RollupDef::new("r", &["ad_id", "ad_id"]).expect_err("refused").contains("ad_id appears twice"));
    let defaults = RollupDef::defaults();
    assert_eq!(defaults.iter().map(RollupDef::name).collect::<Vec<_>>(), ["campaign", "advertiser", "supply"]);
    for d in &defaults {
        assert_eq!(RollupDef::from_ref(&d.to_ref()).as_ref(), Ok(d));
    }
}

// ------------------------------------------------------------ in the store

/// `segments` (rows of `def`) summed per group: what a query over them
/// would add up.
fn summed<'a>(
    def: &RollupDef,
    segments: impl Iterator<Item = &'a crate::store::LiveSegment>,
) -> BTreeMap<Key, ([i128; 10], Vec<u8>)> {
    let mut out: BTreeMap<Key, ([i128; 10], Hll)> = BTreeMap::new();
    for s in segments {
        let batch = s.reader.read_record_batch().expect("read rollup");
        for (key, (values, sketch)) in rows_of(def, &batch) {
            let entry = out.entry(key).or_default();
            for (v, x) in entry.0.iter_mut().zip(values) {
                *v += x;
            }
            if let Some(sketch) = sketch {
                entry.1.merge(&Hll::from_bytes(&sketch).expect("sketch"));
            }
        }
    }
    out.into_iter().map(|(k, (v, h))| (k, (v, h.to_bytes()))).collect()
}

/// The oracle over the events of the raw segments `raws` of `snapshot`
/// (all of them when `None`), at `granularity`.
fn oracle_of_sealed(
    snapshot: &crate::store::Snapshot,
    def: &RollupDef,
    granularity: Granularity,
    raws: Option<&[crate::ids::SegmentId]>,
) -> BTreeMap<Key, ([i128; 10], Vec<u8>)> {
    let mut events = Vec::new();
    for s in snapshot.segments.iter().filter(|s| raws.is_none_or(|r| r.contains(&s.meta.id))) {
        events.extend(s.reader.read_batch().expect("raw").events());
    }
    let dims: Vec<&str> = def.dims().iter().map(|d| d.name()).collect();
    oracle(&dims, granularity.width_ms(), &events)
        .into_iter()
        .map(|(k, s)| {
            let mut users = Hll::default();
            for u in &s.users {
                users.insert_hash(hash_bytes(u.as_bytes()));
            }
            (k, (s.values, users.to_bytes()))
        })
        .collect()
}

fn check_store(store: &crate::store::Store, when: &str) {
    check_store_with(store, &RollupDef::defaults(), when);
}

/// Every rollup's segments against the oracle over the sealed events:
/// - the rows at the rollup's own granularity (seal-time segments, and for
///   an hourly rollup the hour segments merged from final days, which take
///   their place) hold every raw segment's events exactly once;
/// - every merged segment holds exactly the events of the raw segments it
///   covers, at its granularity, and no two merged segments of a rollup and
///   granularity cover the same raw segment.
fn check_store_with(store: &crate::store::Store, defs: &[RollupDef], when: &str) {
    let snapshot = store.snapshot();
    let mut raw: Vec<_> = snapshot.segments.iter().map(|s| s.meta.id).collect();
    raw.sort();
    for def in defs {
        let name = def.name();
        let mine: Vec<_> =
            snapshot.rollups.iter().filter(|s| s.meta.rollup.as_ref().is_some_and(|r| r.name == name)).collect();
        let own: Vec<_> = mine
            .iter()
            .copied()
            .filter(|s| {
                s.meta.source.is_some() || s.meta.rollup.as_ref().is_some_and(|r| r.granularity == def.granularity())
            })
            .collect();
        let mut covered: Vec<_> = own.iter().flat_map(|s| s.meta.derived_from()).collect();
        covered.sort();
        assert_eq!(covered, raw, "{when}: rollup {name} holds every raw segment once at its granularity");
        assert_eq!(
            summed(def, own.iter().copied()),
            oracle_of_sealed(&snapshot, def, def.granularity(), None),
            "{when}: rollup {name}"
        );
        for g in [Granularity::Hour, Granularity::Day] {
            let merged: Vec<_> = mine
                .iter()
                .copied()
                .filter(|s| !s.meta.covers.is_empty() && s.meta.rollup.as_ref().is_some_and(|r| r.granularity == g))
                .collect();
            let mut all: Vec<_> = merged.iter().flat_map(|s| s.meta.covers.iter().copied()).collect();
            let n = all.len();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), n, "{when}: {name} {g:?} segments overlap");
            let at = def.clone().with_granularity(g);
            for m in merged {
                assert!(m.meta.is_final, "{when}: merged segments are final");
                assert_eq!(
                    summed(&at, std::iter::once(m)),
                    oracle_of_sealed(&snapshot, def, g, Some(&m.meta.covers)),
                    "{when}: {name} {g:?} segment {}",
                    m.meta.id
                );
            }
        }
    }
}

/// Runs the rollup task until nothing is pending.
fn settle(store: &crate::store::Store) {
    for _ in 0..20 {
        if store.rollup_status().iter().all(|s| s.complete) {
            return;
        }
        store.roll_up().expect("roll up");
    }
    panic!("the rollup task does not finish: {:?}", store.rollup_status());
}

/// Seals interleaved with appends that cross minute and bucket edges,
/// repeat groups across batches, arrive late, then compaction,
/// finalization and a reopen: the minute segments always add up to the
/// sealed events, and go with them.
#[test]
fn minute_segments_follow_their_events_through_every_reseal() {
    use crate::store::{Store, StoreConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || StoreConfig { fsync: false, compact_min_segments: 3, close_idle_ms: 0, ..StoreConfig::default() };
    let open = || Store::open(dir.path(), config(), crate::seal::SealPipeline::new()).expect("open");
    let store = open();
    let base = 1_795_341_600_000i64; // 2026-11-22T10:00:00Z
    let event = |i: i64, ts: i64| Event {
        event_id: format!("e{i}"),
        kind: EventType::ALL[(i % 3) as usize],
        ts,
        publisher_id: format!("p{}", i % 2),
        advertiser_id: format!("a{}", i % 3),
        campaign_id: format!("c{}", i % 5),
        ad_group_id: (i % 4 != 0).then(|| format!("g{}", i % 2)),
        ad_id: format!("x{}", i % 7),
        user_key: (i % 6 != 0).then(|| format!("u{}", i % 11)),
        device: (i % 5 != 0).then(|| ["mobile", "desktop"][(i % 2) as usize].to_string()),
        country: Some(["DE", "FR", "US"][(i % 3) as usize].to_string()),
        placement: (i % 3 != 0).then(|| "feed".to_string()),
        cost_micros: i * 1_000,
        value_micros: i * 7,
        attributed: i % 2 == 0,
        invalid_reason: InvalidReason::ALL[(i % 5) as usize],
        ..Event::default()
    };
    let mut i = 0i64;
    for round in 0..5i64 {
        // Across three hours, on and around minute edges.
        let batch: Vec<Event> = (0..120)
            .map(|k| {
                i += 1;
                event(i, base + round * 59_999 + k * 89_997 % (3 * 3_600_000))
            })
            .collect();
        store.append(&EventBatch::from_events(&batch)).expect("append");
        store.seal_all().expect("seal");
        check_store(&store, &format!("after seal {round}"));
    }
    // Late events into the first bucket.
    let late: Vec<Event> = (0..40).map(|k| event(10_000 + k, base + k * 61_000)).collect();
    store.append(&EventBatch::from_events(&late)).expect("append");
    store.seal_all().expect("seal");
    check_store(&store, "after late events");
    store.compact_small().expect("compact");
    check_store(&store, "after compaction");
    // Events two days later close the first buckets: they are re-sealed final.
    let later: Vec<Event> = (0..10).map(|k| event(20_000 + k, base + 2 * 86_400_000 + k)).collect();
    store.append(&EventBatch::from_events(&later)).expect("append");
    store.seal_all().expect("seal");
    let report = store.finalize_closed().expect("finalize");
    assert!(!report.replaced.is_empty(), "buckets were finalized");
    check_store(&store, "after finalization");
    assert!(store.snapshot().rollups.iter().any(|s| s.meta.is_final), "final rollup rows");
    // The first day is final: merged into hour and day rows.
    settle(&store);
    let merged = |level| store.catalog().segments.values().filter(|m| m.level == level && !m.covers.is_empty()).count();
    assert_eq!(merged(crate::manifest::Level::Day), 3, "a day segment per rollup");
    assert_eq!(merged(crate::manifest::Level::Hour), 3, "an hour segment per rollup");
    check_store(&store, "after the day merge");
    // A reprocess of one bucket of that day takes the merged rows with it;
    // the rollup task rebuilds what the day lacks and merges it again.
    store.reseal_buckets(&[floor_to(base, 3_600_000)], crate::seal::SealKind::Reprocess).expect("reprocess");
    assert_eq!(merged(crate::manifest::Level::Day), 0, "the merged rows went with the day's segment");
    assert!(store.rollup_status().iter().any(|s| !s.complete), "the hourly rollups lack the day");
    settle(&store);
    assert_eq!(merged(crate::manifest::Level::Day), 3, "merged again");
    check_store(&store, "after the merge that follows a reprocess");
    store.close().expect("close");
    drop(store);
    let store = open();
    check_store(&store, "after reopen");
    // Only catalog files remain in the directory: replaced minutes are gone.
    let files = std::fs::read_dir(dir.path().join("segments")).expect("dir").count();
    assert_eq!(files, store.catalog().segments.len());
}

/// A rollup added to the configuration is built for the segments sealed
/// before it, a pass at a time; one removed (or whose dimensions changed)
/// is dropped; the status says how far it is.
#[test]
fn the_rollup_task_backfills_added_rollups_and_drops_removed_ones() {
    use crate::store::{Store, StoreConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let first = vec![RollupDef::new("by_ad", &["advertiser_id", "ad_id"]).expect("def")];
    let open = |rollups: Vec<RollupDef>| {
        let config = StoreConfig { fsync: false, rollups, ..StoreConfig::default() };
        Store::open(dir.path(), config, crate::seal::SealPipeline::new()).expect("open")
    };
    let store = open(first.clone());
    let base = 1_795_341_600_000i64;
    // More raw segments than one backfill pass takes.
    for round in 0..12i64 {
        let batch: Vec<Event> = (0..50)
            .map(|k| Event {
                event_id: format!("e{round}-{k}"),
                kind: EventType::ALL[(k % 3) as usize],
                ts: base + round * 1_000 + k * 61_000,
                publisher_id: format!("p{}", k % 2),
                advertiser_id: format!("a{}", k % 3),
                campaign_id: format!("c{}", k % 4),
                ad_id: format!("x{}", k % 5),
                user_key: Some(format!("u{}", k % 7)),
                device: (k % 2 == 0).then(|| "mobile".into()),
                cost_micros: k,
                ..Event::default()
            })
            .collect();
        store.append(&EventBatch::from_events(&batch)).expect("append");
        store.seal_all().expect("seal");
    }
    check_store_with(&store, &first, "before the change");
    store.close().expect("close");
    drop(store);

    // by_ad changes its dimensions, by_device is new.
    let second = vec![
        RollupDef::new("by_ad", &["advertiser_id", "ad_id", "publisher_id"]).expect("def"),
        RollupDef::new("by_device", &["device"]).expect("def"),
    ];
    let store = open(second.clone());
    let status = store.rollup_status();
    assert!(status.iter().all(|s| s.segments == 0 && s.raw_segments > 8 && !s.complete), "{status:?}");
    let mut passes = 0;
    while store.rollup_status().iter().any(|s| !s.complete) {
        let report = store.roll_up().expect("roll up");
        passes += 1;
        assert!(report.partitions <= 8, "a pass reads at most 8 raw segments");
        assert!(passes < 10, "the backfill does not finish");
    }
    assert!(passes >= 2, "the raw segments take more than one pass");
    check_store_with(&store, &second, "after the backfill");
    let stale = store
        .snapshot()
        .rollups
        .iter()
        .filter(|s| s.meta.rollup.as_ref().is_some_and(|r| r.dimensions.len() == 2))
        .count();
    assert_eq!(stale, 0, "the old by_ad segments are gone");
    assert_eq!(store.roll_up().expect("idle").segments.len(), 0, "nothing left to do");
    let files = std::fs::read_dir(dir.path().join("segments")).expect("dir").count();
    assert_eq!(files, store.catalog().segments.len());
}
