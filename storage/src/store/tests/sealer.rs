//! The sealer's passes: what makes a head partition due (rows, age, a
//! closed bucket whose first segment is sealed as final at once, a full or
//! a quiet head), finalization and compaction, passes committed in groups,
//! and the threads they run on.

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

/// A store whose head limit is four times a 40-event batch, sealing a
/// quiet head after `quiet_ms`, with that batch appended: a quarter of the
/// limit, past the eighth that a quiet ingest seals, short of the half
/// that seals at once. Returns the batch's bytes too.
fn quiet_store(dir: &std::path::Path, quiet_ms: u64) -> (Store, u64) {
    let batch = EventBatch::from_events(&in_hour(0, 40, 10 * HOUR, "a1"));
    let bytes = batch.memory_bytes() as u64;
    let config = patient(StoreConfig { max_head_bytes: Some(bytes * 4), seal_idle_ms: quiet_ms, ..small_config() });
    let store = open_with(dir, config);
    store.append(&batch).expect("append");
    (store, bytes)
}

#[test]
fn a_large_head_is_sealed_whole_once_ingest_is_quiet_and_a_small_one_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet_ms = 300;
    let (store, bytes) = quiet_store(dir.path(), quiet_ms);
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
    let (store, _) = quiet_store(dir.path(), 1_000);
    // Another append before the quiet time is up starts it again.
    std::thread::sleep(Duration::from_millis(700));
    store.append(&EventBatch::from_events(&in_hour(100, 1, 10 * HOUR, "a1"))).expect("append");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "an event arrived half a second ago");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(store.seal_due().expect("seal").rows_in, 41, "quiet since the last append");
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = quiet_store(dir.path(), 0);
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
    store.seal_head(false, |p| *p == first).expect("seal one partition");
    let catalog = store.catalog();
    let raw: Vec<&SegmentMeta> = catalog.segments_of(Level::Raw).collect();
    assert!(raw.len() == 1 && raw[0].is_final, "{raw:?}");
    assert!(store.final_days(catalog.segments_of(Level::Raw)).is_empty(), "the day still has events in the head");

    assert_eq!(store.seal_due().expect("seal").partitions, of_day.len() - 1, "the rest, due at once");
    let catalog = store.catalog();
    let days: Vec<i64> = store.final_days(catalog.segments_of(Level::Raw)).into_iter().map(|(d, _)| d).collect();
    assert_eq!(days, vec![day]);
}

#[test]
fn finalization_leaves_a_partition_already_final_and_merges_the_provisional_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), patient(StoreConfig { seal_idle_ms: 0, ..small_config() }));
    let hour = 10 * HOUR;
    let mut events: Vec<Event> = Vec::new();
    for (i, adv) in ["a1", "a2", "a3", "a4", "a5", "a6"].iter().enumerate() {
        events.extend(in_hour(i as u64 * 10, 5, hour, adv));
    }
    store.append(&EventBatch::from_events(&events)).expect("append");
    let partitions: Vec<PartitionKey> = store.inner.visible.read().head.partition_keys().collect();
    assert!(partitions.len() >= 2, "{partitions:?}");
    // One partition is sealed while its bucket is open: provisional.
    let early = partitions[0];
    store.seal_head(false, |p| *p == early).expect("seal one partition");
    let provisional: Vec<SegmentMeta> = store.catalog().segments_of(Level::Raw).cloned().collect();
    assert!(provisional.len() == 1 && !provisional[0].is_final, "{provisional:?}");

    // An event a day and two hours later closes the bucket: the other
    // partitions' first seals are final.
    let closing = in_hour(100, 1, hour + 26 * HOUR, "a1");
    store.append(&EventBatch::from_events(&closing)).expect("append");
    events.extend(closing);
    assert_eq!(store.seal_due().expect("seal").partitions, partitions.len() - 1);
    let final_ids: Vec<SegmentId> = store
        .catalog()
        .segments_of(Level::Raw)
        .filter(|m| m.partition.bucket_start_ms == hour && m.is_final)
        .map(|m| m.id)
        .collect();
    assert_eq!(final_ids.len(), partitions.len() - 1);

    // Finalization re-seals the provisional partition alone.
    let report = store.finalize_closed().expect("finalize");
    assert_eq!(report.partitions, 1, "{report:?}");
    assert_eq!(report.replaced, vec![provisional[0].id]);
    let catalog = store.catalog();
    let of_hour: Vec<&SegmentMeta> =
        catalog.segments_of(Level::Raw).filter(|m| m.partition.bucket_start_ms == hour).collect();
    assert_eq!(of_hour.len(), partitions.len());
    assert!(of_hour.iter().all(|m| m.is_final), "{of_hour:?}");
    assert!(final_ids.iter().all(|id| of_hour.iter().any(|m| m.id == *id)), "the final segments stay as they were");
    assert!(store.closed_provisional_buckets().is_empty());
    assert_eq!(all_events(&store), sorted_debug(&events));
}

#[test]
fn reseal_replaces_segments_atomically_and_finalizes_closed_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { allowed_lateness_ms: 3_600_000, ..small_config() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let mut events: Vec<Event> = Vec::new();
    // Bucket 0 gets three seals (three segments per partition).
    for round in 0..3u64 {
        let chunk: Vec<Event> = (0..100).map(|n| event(round * 100 + n, (n as i64) * 1000, "a1")).collect();
        store.append(&EventBatch::from_events(&chunk)).expect("append");
        store.seal_all().expect("seal");
        events.extend(chunk);
    }
    let raw_before = store.catalog().segments_of(Level::Raw).count();
    assert!(raw_before >= 3);
    assert!(!store.bucket_closed(0), "bucket 0 is open: no newer events yet");
    assert_eq!(store.finalize_closed().expect("finalize").partitions, 0);

    // An event two hours later closes bucket 0 (lateness 1 h).
    let late = event(10_000, 2 * 3_600_000 + 1, "a1");
    store.append(&EventBatch::from_events(std::slice::from_ref(&late))).expect("append");
    assert!(store.bucket_closed(0));
    // Concurrent readers must always see all rows exactly once.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut checks = 0;
            loop {
                let n: usize = store.snapshot().read_events().expect("read").iter().map(|b| b.num_rows()).sum();
                assert_eq!(n, 301, "a snapshot saw a mix of old and new segments");
                checks += 1;
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
            checks
        })
    };
    let report = store.finalize_closed().expect("finalize");
    stop.store(true, Ordering::Release);
    let checks = reader.join().expect("reader thread");
    assert!(checks > 0);
    assert_eq!(report.replaced.len(), raw_before);
    let catalog = store.catalog();
    let bucket0: Vec<&SegmentMeta> = catalog.segments.values().filter(|m| m.partition.bucket_start_ms == 0).collect();
    assert!(bucket0.iter().any(|m| m.level == Level::Minute), "minute rollups re-sealed with their raw segments");
    assert!(bucket0.iter().all(|m| m.is_final), "closed bucket re-sealed as final");
    let partitions: std::collections::BTreeSet<_> = bucket0.iter().map(|m| m.partition).collect();
    let rollups = StoreConfig::default().rollups.len();
    assert_eq!(bucket0.len(), partitions.len() * (1 + rollups), "one final segment per partition, and its minutes");
    events.push(late);
    assert_eq!(all_events(&store), sorted_debug(&events));
    // Old files are gone; the store reopens to the same state.
    let files = std::fs::read_dir(dir.path().join("segments")).expect("dir").count();
    assert_eq!(files, catalog.segments.len());
    store.close().expect("close");
    drop(store);
    let store = open(dir.path());
    assert_eq!(all_events(&store), sorted_debug(&events));
    // Nothing left to finalize.
    assert_eq!(store.finalize_closed().expect("finalize").partitions, 0);
}

/// When traffic stops, buckets past their lateness on the wall clock
/// close too: the last day of a quiet store becomes final. While events
/// are appended, only event time closes buckets.
#[test]
fn buckets_close_on_the_wall_clock_once_appends_stop() {
    let idle = Duration::from_millis(300);
    for close_idle_ms in [0, idle.as_millis() as u64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig { close_idle_ms, ..small_config() };
        let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
        // Events of 1970: far behind the wall clock, and nothing newer.
        let events: Vec<Event> = (0..50).map(|n| event(n, (n as i64) * 60_000, "a1")).collect();
        store.append(&EventBatch::from_events(&events)).expect("append");
        store.seal_all().expect("seal");
        assert!(!store.bucket_closed(0), "appends just happened: event time alone decides");
        std::thread::sleep(idle + Duration::from_millis(50));
        assert_eq!(store.bucket_closed(0), close_idle_ms > 0, "close_idle_ms {close_idle_ms}");
        let report = store.finalize_closed().expect("finalize");
        let catalog = store.catalog();
        let finals = catalog.segments.values().filter(|m| m.is_final).count();
        if close_idle_ms > 0 {
            assert!(report.partitions > 0);
            assert_eq!(finals, catalog.segments.len(), "every bucket final once quiet");
        } else {
            assert_eq!(finals, 0, "wall-clock closing is off");
        }
        // An append makes the store busy again: no closing by the clock.
        store.append(&EventBatch::from_events(&[event(99, 10, "a1")])).expect("append");
        assert!(!store.bucket_closed(0));
        assert_eq!(all_events(&store).len(), 51);
    }
}

#[test]
fn small_provisional_segments_are_compacted_without_changing_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { shards: 1, compact_min_segments: 4, ..small_config() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let mut events = Vec::new();
    for round in 0..6u64 {
        let chunk: Vec<Event> = (0..50).map(|n| event(round * 50 + n, 1_000 + n as i64, "a1")).collect();
        store.append(&EventBatch::from_events(&chunk)).expect("append");
        store.seal_all().expect("seal");
        events.extend(chunk);
    }
    assert_eq!(store.catalog().segments_of(Level::Raw).count(), 6);
    let report = store.compact_small().expect("compact");
    assert_eq!(report.replaced.len(), 6);
    let catalog = store.catalog();
    assert_eq!(catalog.segments_of(Level::Raw).count(), 1);
    assert_eq!(catalog.segments.len(), 1 + StoreConfig::default().rollups.len(), "one minute segment per rollup");
    assert!(catalog.segments.values().all(|m| !m.is_final), "compaction keeps data provisional");
    assert_eq!(all_events(&store), sorted_debug(&events));
    // Below the threshold: nothing to do.
    assert_eq!(store.compact_small().expect("compact").partitions, 0);
    store.close().expect("close");
    drop(store);
    assert_eq!(all_events(&open_with(dir.path(), StoreConfig { shards: 1, ..small_config() })), sorted_debug(&events));
}

#[test]
fn a_full_head_refuses_appends_until_seals_free_it_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch_of =
        |from: u64| -> Vec<Event> { (from..from + 50).map(|n| event(n, 1_000_000 + n as i64, "a1")).collect() };
    let bytes_of = |from: u64| EventBatch::from_events(&batch_of(from)).memory_bytes() as u64;
    let one_batch = bytes_of(0);
    // Room for two batches and a half; partitions never age or fill, so
    // only the head limit makes the sealer take them.
    let config = StoreConfig {
        max_head_bytes: Some(one_batch * 5 / 2),
        seal_max_age_ms: 3_600_000,
        seal_max_rows: usize::MAX,
        seal_idle_ms: 0,
        ..small_config()
    };
    let store = open_with(dir.path(), config.clone());
    let mut stored: Vec<Event> = Vec::new();
    for from in [0, 50, 100] {
        store.append(&EventBatch::from_events(&batch_of(from))).expect("room in the head");
        stored.extend(batch_of(from));
    }
    let stats = store.stats();
    let three = bytes_of(0) + bytes_of(50) + bytes_of(100);
    assert_eq!(stats.head_bytes, three, "the head counts the bytes of its rows");
    let refused = store.append(&EventBatch::from_events(&batch_of(150))).expect_err("the head is full");
    assert!(
        matches!(refused, StorageError::HeadFull { head_bytes, limit_bytes, retry_after_s: 1 } if head_bytes == three && limit_bytes == one_batch * 5 / 2),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("storage.max_head_bytes"), "{refused}");
    assert_eq!(store.stats().head_full_refusals, 1);
    assert_eq!(all_events(&store), sorted_debug(&stored), "a refused append stores nothing");

    // Young partitions below max_rows are sealed because the head is past
    // half its limit; then appends are taken again.
    let report = store.seal_due().expect("seal");
    assert_eq!(report.rows_in, 150);
    assert_eq!(store.stats().head_bytes, 0, "sealing gives the bytes back");
    store.check_head_room().expect("room again");
    store.append(&EventBatch::from_events(&batch_of(150))).expect("room after the seal");
    stored.extend(batch_of(150));
    // Below half the limit, young partitions wait as before.
    assert_eq!(store.seal_due().expect("seal").rows_in, 0);
    assert_eq!(all_events(&store), sorted_debug(&stored));
    store.close().expect("close");

    // Replay brings back what the head held, limit or not.
    let store = open_with(dir.path(), config);
    assert_eq!(store.stats().head_bytes, bytes_of(150));
    assert_eq!(all_events(&store), sorted_debug(&stored));
}

#[test]
fn a_large_seal_commits_in_groups_of_at_most_seal_max_rows_and_seals_the_same_events() {
    // Three advertisers over two buckets: several partitions.
    let events = over_two_buckets(240);
    let batch = EventBatch::from_events(&events);
    let sizes = partition_rows(&batch);
    let partitions = sizes.len();
    assert!(partitions >= 3, "{sizes:?}");
    let sealed_with = |seal_max_rows: usize| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_with(dir.path(), StoreConfig { seal_max_rows, ..small_config() });
        store.append(&batch).expect("append");
        let before = store.catalog().version;
        let report = store.seal_all().expect("seal");
        let commits = store.catalog().version - before;
        assert_eq!((report.rows_in, report.rows_out, store.snapshot().head_rows()), (240, 240, 0));
        assert_eq!(report.segments.len(), partitions);
        (commits, all_events(&store))
    };
    let (commits, whole) = sealed_with(1_000);
    assert_eq!(commits, 1, "everything fits one group");
    assert_eq!(sealed_with(1).0 as usize, partitions, "each partition alone");
    // The model: partitions in key order, a new group when the next would
    // take the group past the bound.
    let bound = 120;
    let mut groups = 0;
    let mut rows = 0;
    for &n in sizes.values() {
        if rows > 0 && rows + n > bound {
            rows = 0;
        }
        if rows == 0 {
            groups += 1;
        }
        rows += n;
    }
    assert!(groups > 1 && groups < partitions, "{sizes:?}");
    let (commits, grouped) = sealed_with(bound);
    assert_eq!(commits as usize, groups);
    assert_eq!(grouped, whole);
    assert_eq!(whole, sorted_debug(&events));
}

/// Closing buckets re-seals every partition of them: in groups of at
/// most `seal_max_rows` rows, so a day's worth of buckets closing at once
/// is not held in memory whole. A reprocess stays one commit.
#[test]
fn finalization_commits_in_groups_and_a_reprocess_in_one() {
    let events = over_two_buckets(240);
    let batch = EventBatch::from_events(&events);
    let partitions = partition_rows(&batch).len();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), StoreConfig { seal_max_rows: 1, ..small_config() });
    store.append(&batch).expect("append");
    store.seal_all().expect("seal");
    let buckets = [0, 3_600_000];
    for (kind, want) in [(SealKind::Final, partitions), (SealKind::Reprocess, 1)] {
        let before = store.catalog().version;
        let report = store.reseal_buckets(&buckets, kind).expect("reseal");
        assert_eq!(report.partitions, partitions, "{kind:?}");
        assert_eq!(store.catalog().version - before, want as u64, "{kind:?}: commits");
        assert_eq!(all_events(&store), sorted_debug(&events), "{kind:?}");
    }
}

/// The threads that ran the seals of `store`'s first pass over 90 events.
fn seal_threads(config: StoreConfig) -> Vec<(String, i32)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = Arc::new(ThreadNames(Mutex::new(Vec::new())));
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(names.clone())).expect("open");
    let events: Vec<Event> = (0..90).map(|n| event(n, 1_000_000, ["a1", "a2", "a3"][(n % 3) as usize])).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    names.0.lock().clone()
}

#[test]
#[cfg(target_os = "linux")]
fn seals_run_on_their_own_threads_below_the_priority_of_queries() {
    let ours = super::priority::this_thread_nice();
    let threads = seal_threads(small_config());
    assert!(!threads.is_empty());
    let lowered = (ours + i32::from(StoreConfig::default().background_nice)).min(19);
    for (name, nice) in &threads {
        assert!(name.starts_with("adstore-seal-"), "{threads:?}");
        assert_eq!(*nice, lowered, "{name}: nice {nice}, this thread {ours}");
    }
    let level = StoreConfig { background_nice: 0, ..small_config() };
    assert!(seal_threads(level).iter().all(|(_, nice)| *nice == ours), "background_nice = 0 leaves them level");
    assert_eq!(super::priority::this_thread_nice(), ours, "the caller's own priority is untouched");
}

#[test]
fn a_failed_group_leaves_the_groups_before_it_committed_and_its_own_in_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = over_two_buckets(240);
    let batch = EventBatch::from_events(&events);
    let keys: Vec<PartitionKey> = partition_rows(&batch).into_keys().collect();
    let last = *keys.last().expect("partitions");
    // One partition a group; the last one fails.
    let config = StoreConfig { seal_max_rows: 1, ..small_config() };
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(Arc::new(FailOn(last)))).expect("open");
    store.append(&batch).expect("append");
    let err = store.seal_all().expect_err("the last group fails");
    assert!(err.to_string().contains("injected seal failure"), "{err}");
    let snap = store.snapshot();
    let committed: Vec<PartitionKey> = snap.catalog.segments_of(Level::Raw).map(|m| m.partition).collect();
    assert_eq!(committed.len(), keys.len() - 1);
    assert!(!committed.contains(&last));
    assert!(snap.head.iter().all(|(k, _)| *k == last), "only the failed partition stays in the head");
    let head_bytes: u64 = snap.head.iter().map(|(_, c)| c.bytes).sum();
    assert_eq!(store.stats().head_bytes, head_bytes);
    assert_eq!(all_events(&store), sorted_debug(&events), "nothing lost or doubled");
}
