//! What makes a head partition due: a closed bucket (sealed as final at
//! once when it is the bucket's first segment) and a quiet ingest.

use super::*;

const HOUR: i64 = 3_600_000;

/// Events of advertiser `adv` in the hour starting at `hour`, numbered from `from`.
fn in_hour(from: u64, count: u64, hour: i64, adv: &str) -> Vec<Event> {
    (from..from + count).map(|n| event(n, hour + (n - from) as i64 * 1_000, adv)).collect()
}

/// Partitions never age or fill here: only a closed bucket or a quiet
/// ingest makes one due.
fn patient(config: StoreConfig) -> StoreConfig {
    StoreConfig { seal_max_age_ms: 3_600_000, seal_max_rows: usize::MAX, close_idle_ms: 0, ..config }
}

#[test]
fn a_closed_buckets_first_seal_is_final_and_a_later_one_is_merged_by_finalization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), patient(StoreConfig { shards: 1, seal_idle_ms: 0, ..small_config() }));
    let old = 10 * HOUR;
    let mut stored = in_hour(0, 20, old, "a1");
    store.append(&EventBatch::from_events(&stored)).expect("append");
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "an open bucket waits");

    // An event a day and two hours later closes the old bucket (its end
    // plus the 24 h of lateness), not its own.
    let new = in_hour(100, 5, old + 26 * HOUR, "a1");
    store.append(&EventBatch::from_events(&new)).expect("append");
    stored.extend(new);
    let report = store.seal_due().expect("seal");
    assert_eq!(report.rows_in, 20, "the closed bucket alone is due");
    let raw: Vec<SegmentMeta> = store.catalog().segments_of(Level::Raw).cloned().collect();
    assert_eq!(raw.len(), 1);
    assert!(raw[0].is_final, "a closed bucket's first seal is final: {:?}", raw[0]);
    assert_eq!(raw[0].partition.bucket_start_ms, old);
    assert!(store.closed_provisional_buckets().is_empty(), "nothing for finalization to do");
    assert_eq!(store.finalize_closed().expect("finalize").partitions, 0);

    // A late event into the closed bucket: its partition has a segment, so
    // it waits for its age (each seal of it makes finalization re-seal the
    // bucket), is sealed provisional, and finalization merges the two.
    let late = in_hour(200, 3, old + 30 * 60_000, "a1");
    store.append(&EventBatch::from_events(&late)).expect("append");
    stored.extend(late);
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "not due at once: its partition has a segment");
    assert_eq!(store.seal_all().expect("seal").rows_in, 8);
    assert_eq!(store.snapshot().head_rows(), 0);
    assert_eq!(store.closed_provisional_buckets(), vec![old]);
    let report = store.finalize_closed().expect("finalize");
    assert_eq!(report.replaced.len(), 2, "the final segment and the late one");
    let raw: Vec<SegmentMeta> =
        store.catalog().segments_of(Level::Raw).filter(|m| m.partition.bucket_start_ms == old).cloned().collect();
    assert_eq!(raw.len(), 1);
    assert!(raw[0].is_final);
    assert_eq!(raw[0].rows, 23);
    assert_eq!(all_events(&store), sorted_debug(&stored));
}

#[test]
fn a_large_head_is_sealed_whole_once_ingest_is_quiet_and_a_small_one_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = in_hour(0, 40, 10 * HOUR, "a1");
    let bytes = EventBatch::from_events(&batch).memory_bytes() as u64;
    // The batch is a quarter of the limit: past the eighth that a quiet
    // ingest seals, short of the half that seals at once.
    let quiet_ms = 300;
    let config = patient(StoreConfig { max_head_bytes: Some(bytes * 4), seal_idle_ms: quiet_ms, ..small_config() });
    let store = open_with(dir.path(), config);
    store.append(&EventBatch::from_events(&batch)).expect("append");
    std::thread::sleep(Duration::from_millis(quiet_ms + 100));
    let report = store.seal_due().expect("seal");
    assert_eq!(report.rows_in, 40, "quiet for {quiet_ms} ms: the whole head is sealed");
    assert_eq!(store.snapshot().head_rows(), 0);

    // A head under an eighth of the limit waits for its partitions' age.
    let small = in_hour(100, 2, 10 * HOUR, "a1");
    assert!((EventBatch::from_events(&small).memory_bytes() as u64) < bytes / 2);
    store.append(&EventBatch::from_events(&small)).expect("append");
    std::thread::sleep(Duration::from_millis(quiet_ms + 100));
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "a small head waits");
    assert_eq!(store.snapshot().head_rows(), 2);
}

#[test]
fn a_large_head_waits_while_events_arrive_and_with_the_quiet_seal_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = in_hour(0, 40, 10 * HOUR, "a1");
    let bytes = EventBatch::from_events(&batch).memory_bytes() as u64;
    let quiet_ms = 1_000;
    let config = patient(StoreConfig { max_head_bytes: Some(bytes * 4), seal_idle_ms: quiet_ms, ..small_config() });
    let store = open_with(dir.path(), config);
    store.append(&EventBatch::from_events(&batch)).expect("append");
    // Another append before the quiet time is up starts it again.
    std::thread::sleep(Duration::from_millis(700));
    store.append(&EventBatch::from_events(&in_hour(100, 1, 10 * HOUR, "a1"))).expect("append");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "an event arrived half a second ago");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(store.seal_due().expect("seal").rows_in, 41, "quiet since the last append");
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = patient(StoreConfig { max_head_bytes: Some(bytes * 4), seal_idle_ms: 0, ..small_config() });
    let store = open_with(dir.path(), config);
    store.append(&EventBatch::from_events(&batch)).expect("append");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "seal_idle_ms = 0 turns it off");
}

#[test]
fn a_day_with_events_in_the_head_is_not_final_while_its_segments_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), patient(StoreConfig { seal_idle_ms: 0, ..small_config() }));
    let day = 10 * 24 * HOUR;
    // Events of several advertisers (so several shards) over the day, and
    // one two days later that closes every bucket of it.
    let mut events: Vec<Event> = Vec::new();
    for (i, adv) in ["a1", "a2", "a3", "a4", "a5", "a6"].iter().enumerate() {
        events.extend(in_hour(i as u64 * 10, 5, day + i as i64 * 4 * HOUR, adv));
    }
    events.extend(in_hour(100, 1, day + 2 * 24 * HOUR + 12 * HOUR, "a1"));
    store.append(&EventBatch::from_events(&events)).expect("append");
    let of_day: Vec<PartitionKey> = store
        .inner
        .visible
        .read()
        .head
        .partition_keys()
        .filter(|p| p.bucket_start_ms >= day && p.bucket_start_ms < day + 24 * HOUR)
        .collect();
    assert!(of_day.len() >= 2, "{of_day:?}");

    // One of the day's partitions is sealed (final: its bucket has
    // closed), the rest still in the head.
    let first = of_day[0];
    store.seal_head(|p| *p == first).expect("seal one partition");
    let catalog = store.catalog();
    let raw: Vec<&SegmentMeta> = catalog.segments_of(Level::Raw).collect();
    assert!(raw.len() == 1 && raw[0].is_final, "{raw:?}");
    assert!(store.final_days(catalog.segments_of(Level::Raw)).is_empty(), "the day still has events in the head");

    assert_eq!(store.seal_due().expect("seal").partitions, of_day.len() - 1, "the rest, due at once");
    let catalog = store.catalog();
    let days: Vec<i64> = store.final_days(catalog.segments_of(Level::Raw)).into_iter().map(|(d, _)| d).collect();
    assert_eq!(days, vec![day]);
}
