//! A store of many small blocks, for the tests whose timing depends on the
//! executor's tasks (fairness, cancel): each test file is its own binary,
//! so none shares the thread pool with another test.

use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig};

pub const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

pub fn store(dir: &std::path::Path, n: usize) -> Store {
    // Small blocks: many tasks, as a long time range over big segments has.
    let config = StoreConfig { block_rows: 128, fsync: false, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new()).expect("open");
    let events: Vec<Event> = (0..n)
        .map(|i| Event {
            event_id: format!("e{i}"),
            kind: if i % 4 == 0 { EventType::Click } else { EventType::Impression },
            ts: BASE + i as i64 * 100,
            publisher_id: "p".into(),
            advertiser_id: format!("a{}", i % 3),
            campaign_id: "c".into(),
            ad_id: "x".into(),
            cost_micros: i as i64,
            ..Event::default()
        })
        .collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    store
}
