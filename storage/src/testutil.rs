//! Shared proptest strategies and set-up for the storage crate's tests.

use proptest::prelude::*;

use crate::event::{Event, EventType, InvalidReason};

pub(crate) fn pool() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "a", "b", "ä", "日本", "a\u{0}b", "zz", "🦀"]).prop_map(str::to_owned)
}

pub(crate) fn any_str() -> impl Strategy<Value = String> {
    prop_oneof![pool(), "\\PC{0,6}"]
}

pub(crate) fn opt(s: impl Strategy<Value = String>) -> impl Strategy<Value = Option<String>> {
    prop::option::of(s)
}

pub(crate) fn any_ts() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MIN + 1),
        any::<i64>(),
        1_700_000_000_000i64..1_700_000_010_000,
    ]
}

pub(crate) fn any_event() -> impl Strategy<Value = Event> {
    let ids =
        (any_str(), 0u8..3, any_ts(), pool(), pool(), pool(), opt(pool()), pool(), opt(any_str()), opt(any_str()));
    let rest = (
        (opt(any_str()), opt(pool()), opt(pool()), opt(pool()), opt(pool()), opt(pool())),
        (prop_oneof![any::<i64>(), 0i64..1000], any::<i64>(), opt(any_str()), opt(any_str())),
        (any::<bool>(), opt(any_str()), 0u8..5),
    );
    (ids, rest).prop_map(|(a, (b, c, d))| Event {
        event_id: a.0,
        kind: EventType::from_code(a.1).unwrap_or_default(),
        ts: a.2,
        publisher_id: a.3,
        advertiser_id: a.4,
        campaign_id: a.5,
        ad_group_id: a.6,
        ad_id: a.7,
        impression_id: a.8,
        click_id: a.9,
        user_key: b.0,
        device: b.1,
        os: b.2,
        country: b.3,
        region: b.4,
        placement: b.5,
        cost_micros: c.0,
        value_micros: c.1,
        ip_hash: c.2,
        ua_hash: c.3,
        attributed: d.0,
        attributed_to: d.1,
        invalid_reason: InvalidReason::from_code(d.2).unwrap_or_default(),
    })
}

/// Runs the sealer's day-settling tasks (finalize, roll up, bill, mirror)
/// until a store of a few days has settled every closed day.
pub(crate) fn settle(store: &crate::store::Store) {
    for _ in 0..60 {
        store.finalize_closed().expect("finalize");
        store.roll_up().expect("roll up");
        store.snapshot_billing().expect("billing");
        store.mirror_parquet().expect("mirror");
        store.commit_iceberg().expect("iceberg");
    }
}
