use std::collections::BTreeMap;

use proptest::prelude::*;

use super::jobs::SealJob;
use super::*;
use crate::event::{ColumnId, Event, EventType, shard_of};
use crate::ids::Lsn;
use crate::manifest::SealWatermark;
use crate::scan::{DimFilter, PruneReason, ScanBatch, ScanRequest, TimeRange};
use crate::seal::SealKind;
use crate::segment::ColumnData;
use crate::testutil::any_event;

mod head_runs;
mod sealer;

fn small_config() -> StoreConfig {
    StoreConfig { shards: 3, block_rows: 128, wal_file_size_bytes: 8 * 1024, ..StoreConfig::default() }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, small_config(), SealPipeline::new()).expect("open store")
}

/// Every event in the store, as a sorted list (order is not part of the contract).
fn all_events(store: &Store) -> Vec<String> {
    let mut out: Vec<String> = store
        .snapshot()
        .read_events()
        .expect("read")
        .iter()
        .flat_map(|b| b.events())
        .map(|e| format!("{e:?}"))
        .collect();
    out.sort();
    out
}

fn sorted_debug(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    v.sort();
    v
}

fn event(n: u64, ts: i64, adv: &str) -> Event {
    Event {
        event_id: format!("e{n}"),
        kind: EventType::Impression,
        ts,
        publisher_id: "p".into(),
        advertiser_id: adv.into(),
        campaign_id: format!("c{}", n % 3),
        ad_id: format!("ad{}", n % 5),
        impression_id: Some(format!("i{n}")),
        device: if n.is_multiple_of(4) { None } else { Some(["mobile", "desktop", "ctv"][(n % 3) as usize].into()) },
        cost_micros: n as i64,
        ..Event::default()
    }
}

#[test]
fn appended_events_are_visible_sealed_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..500).map(|n| event(n, 1_000_000 + (n as i64) * 20_000, "a1")).collect();
    let store = open(dir.path());
    for chunk in events.chunks(37) {
        store.append(&EventBatch::from_events(chunk)).expect("append");
    }
    assert_eq!(store.snapshot().head_rows(), 500);
    assert_eq!(all_events(&store), sorted_debug(&events));

    let report = store.seal_all().expect("seal");
    assert_eq!(report.rows_in, 500);
    assert_eq!(report.rows_out, 500);
    let snap = store.snapshot();
    assert_eq!(snap.head_rows(), 0);
    assert_eq!(snap.segment_rows(), 500);
    assert_eq!(all_events(&store), sorted_debug(&events));
    store.close().expect("close");

    let store = open(dir.path());
    assert_eq!(store.snapshot().head_rows(), 0, "sealed events must not be replayed from the WAL");
    assert_eq!(all_events(&store), sorted_debug(&events));
}

/// Several batches in one append: a WAL record for each batch with rows
/// selected, the selected rows and no others visible, and all of them back
/// after a reopen.
#[test]
fn an_append_of_several_batches_writes_a_record_each_and_waits_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> =
        (0..90).map(|n| event(n, 1_000_000 + (n as i64) * 50_000, ["a1", "a2"][(n % 2) as usize])).collect();
    let batches: Vec<EventBatch> = events.chunks(30).map(EventBatch::from_events).collect();
    let every_third: Vec<u32> = (0..30).step_by(3).collect();
    // WAL files large enough that no rotation fsyncs between the records.
    let config = StoreConfig { wal_file_size_bytes: 1 << 20, ..small_config() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open store");
    let rows = [
        Rows { batch: &batches[0], keep: None },
        Rows { batch: &batches[1], keep: Some(&[]) },
        Rows { batch: &batches[2], keep: Some(&every_third) },
    ];
    let lsn = store.append_all(&rows).expect("append");
    let stats = store.stats();
    assert_eq!((stats.wal_appends, stats.appended_rows), (2, 40), "the batch with no rows selected writes nothing");
    assert_eq!(stats.wal_fsyncs, 1, "one fsync covers both records");
    assert_eq!(lsn, Lsn(2), "the LSN of the last record");
    let mut want: Vec<Event> = events[..30].to_vec();
    want.extend(every_third.iter().map(|&i| events[60 + i as usize].clone()));
    assert_eq!(all_events(&store), sorted_debug(&want));
    assert_eq!(store.append_all(&[Rows { batch: &batches[1], keep: Some(&[]) }]).expect("nothing"), Lsn(0));
    store.close().expect("close");
    assert_eq!(all_events(&open(dir.path())), sorted_debug(&want), "replayed from the WAL");
}

/// A record that finds the disk full after another of the same append was
/// written: the one written stays stored (durable, in the head, and after a
/// reopen), the error says so, and the log goes on without a restart.
#[test]
fn an_append_that_runs_out_of_space_part_way_keeps_what_it_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> =
        (0..90).map(|n| event(n, 1_000_000 + (n as i64) * 50_000, ["a1", "a2"][(n % 2) as usize])).collect();
    let batches: Vec<EventBatch> = events.chunks(30).map(EventBatch::from_events).collect();
    let rows: Vec<Rows<'_>> = batches.iter().map(|batch| Rows { batch, keep: None }).collect();
    let config = StoreConfig { wal_file_size_bytes: 1 << 20, ..small_config() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open store");
    let io_errors = crate::io_errors_total();
    store.inner.wal.fail_nth_write.store(2, Ordering::SeqCst);
    let err = store.append_all(&rows).expect_err("the second record finds the disk full");
    assert_eq!(err.stored, 1, "{err:?}");
    assert!(err.error.is_disk_full(), "{err:?}");
    assert!(!store.stats().wal_poisoned, "running out of space does not poison the WAL");
    assert!(crate::io_errors_total() > io_errors, "the failed write is counted");
    assert_eq!(all_events(&store), sorted_debug(&events[..30]), "the first record is in the head");
    // A retry of the rest is stored, in the same log.
    store.append_all(&rows[1..]).expect("appends go on once space is back");
    assert_eq!(all_events(&store), sorted_debug(&events));
    store.close().expect("close");
    assert_eq!(all_events(&open(dir.path())), sorted_debug(&events), "replayed: the cut record is gone");
}

/// One open store per data directory: a second open fails, naming the
/// directory, until the first is closed.
#[test]
fn a_data_directory_is_opened_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    let err = Store::open(dir.path(), small_config(), SealPipeline::new()).err().expect("in use");
    assert!(matches!(err, StorageError::DataDirInUse { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    first.close().expect("close");
    let again = open(dir.path());
    again.close().expect("close");
}

/// Lines of /proc/self/maps that map a file under `dir`.
fn mappings_under(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let dir = dir.to_str().expect("utf-8 path");
    maps.lines().filter(|l| l.contains(dir)).count()
}

/// The rows of a large WAL record stay in the head as a mapping of the WAL
/// file, read back exactly, until they are sealed; small records keep their
/// rows in memory.
#[test]
fn the_head_maps_large_records_from_the_wal_until_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { wal_file_size_bytes: 64 << 20, ..small_config() };
    let store = Store::open(dir.path(), config.clone(), SealPipeline::new()).expect("open store");
    let small: Vec<Event> = (0..10).map(|n| event(n, 1_000_000 + n as i64, "a1")).collect();
    store.append(&EventBatch::from_events(&small)).expect("append");
    let wal_dir = dir.path().join("wal");
    assert_eq!(mappings_under(&wal_dir), 0, "a small record is not mapped");
    let large: Vec<Event> = (10..5_010)
        .map(|n| Event {
            ua_hash: Some(format!("{n:0>64}")),
            ..event(n, 1_000_000 + n as i64 * 700, ["a1", "a2"][n as usize % 2])
        })
        .collect();
    store.append(&EventBatch::from_events(&large)).expect("append");
    assert_eq!(mappings_under(&wal_dir), 1, "a large record is mapped");
    let mut all = small.clone();
    all.extend(large.iter().cloned());
    assert_eq!(all_events(&store), sorted_debug(&all));
    store.seal_all().expect("seal");
    assert_eq!(mappings_under(&wal_dir), 0, "sealed rows leave the head, and their mapping");
    assert_eq!(all_events(&store), sorted_debug(&all));
    store.close().expect("close");
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("reopen");
    assert_eq!(all_events(&store), sorted_debug(&all));
}

/// A large record with a few rows dropped is mapped from the WAL like any
/// other, and its dropped rows are in no read, before or after a reopen;
/// the head counts the whole record's bytes, as it keeps them all.
#[test]
fn a_large_record_with_rows_dropped_is_mapped_and_reads_without_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { wal_file_size_bytes: 64 << 20, ..small_config() };
    let store = Store::open(dir.path(), config.clone(), SealPipeline::new()).expect("open store");
    let events: Vec<Event> = (0..5_000)
        .map(|n| Event {
            ua_hash: Some(format!("{n:0>64}")),
            ..event(n, 1_000_000 + n as i64 * 700, ["a1", "a2"][n as usize % 2])
        })
        .collect();
    let keep: Vec<u32> = (0..5_000).filter(|i| i % 10 != 3).collect();
    let kept: Vec<Event> = keep.iter().map(|&i| events[i as usize].clone()).collect();
    let batch = EventBatch::from_events(&events);
    store.append_rows(&batch, Some(&keep)).expect("append");
    assert_eq!(mappings_under(&dir.path().join("wal")), 1, "a large record is mapped");
    assert_eq!(all_events(&store), sorted_debug(&kept));
    let (head, whole) = (store.stats().head_bytes, batch.memory_bytes() as u64);
    assert!(
        head.abs_diff(whole) <= 8,
        "the dropped rows' bytes are counted too: {head} in the head, {whole} in the batch"
    );
    store.close().expect("close");
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("reopen");
    assert_eq!(all_events(&store), sorted_debug(&kept));
    store.seal_all().expect("seal");
    assert_eq!(store.snapshot().segment_rows(), kept.len() as u64);
    assert_eq!(all_events(&store), sorted_debug(&kept));
}

#[test]
fn partial_seal_then_crash_replays_only_unsealed_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // One record spanning two buckets; seal only one bucket's partition by
    // hand through the head's due list.
    let events: Vec<Event> = (0..40).map(|n| event(n, if n % 2 == 0 { 0 } else { 3_600_000 }, "a1")).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    let candidates = store.inner.visible.read().head.due(Instant::now(), usize::MAX, Duration::MAX, |_| true);
    assert_eq!(candidates.len(), 2);
    let snapshot = store.snapshot();
    let job = SealJob {
        partition: candidates[0].partition,
        kind: SealKind::Seal,
        is_final: false,
        head: candidates[0].clone(),
        replaces: vec![],
        reprocess_job: None,
    };
    let prepared = store.prepare(job, &snapshot).expect("prepare");
    let (meta, _) = prepared.segment.expect("segment");
    store
        .inner
        .manifest
        .commit(&CatalogEdit {
            add: vec![meta],
            sealed: vec![SealWatermark { partition: candidates[0].partition, lsn: candidates[0].max_lsn() }],
            ..CatalogEdit::default()
        })
        .expect("commit");
    // "Crash": drop without updating the head, then reopen.
    drop(snapshot);
    drop(store);
    let store = open(dir.path());
    let snap = store.snapshot();
    assert_eq!(snap.segment_rows(), 20);
    assert_eq!(snap.head_rows(), 20);
    assert_eq!(all_events(&store), sorted_debug(&events));
}

#[test]
fn wal_files_are_deleted_once_sealed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for n in 0..200 {
        store.append(&EventBatch::from_events(&[event(n, 5_000, "a2")])).expect("append");
    }
    let wal_files = || std::fs::read_dir(dir.path().join("wal")).expect("wal dir").count();
    let before = wal_files();
    assert!(before > 2, "small WAL files should have rotated: {before}");
    store.seal_all().expect("seal");
    assert_eq!(wal_files(), 1, "only the active WAL file remains after sealing everything");
    store.close().expect("close");
    let store = open(dir.path());
    assert_eq!(store.snapshot().segment_rows(), 200);
    assert_eq!(store.snapshot().head_rows(), 0);
}

#[test]
fn damaged_segment_is_reported_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let events: Vec<Event> = (0..300).map(|n| event(n, 10_000 + n as i64, "a3")).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    let seg = store.snapshot().segments[0].clone();
    store.close().expect("close");
    drop(store);

    // Flip one byte in the middle of the file (a data block).
    let path = dir.path().join("segments").join(seg.meta.id.file_name());
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");

    let store = open(dir.path());
    let req = ScanRequest { time_range: TimeRange::ALL, filters: vec![], columns: vec![ColumnId::CostMicros] };
    // Either the open already found it (footer) or verification does (block).
    store.verify_segments();
    let damaged = store.damaged();
    assert_eq!(damaged.len(), 1, "the flipped byte must be detected");
    assert!(damaged[0].error.contains(&seg.meta.id.file_name()), "error names the file: {}", damaged[0].error);
    let err = store.snapshot().scan(&req).expect_err("a scan over the damaged range must fail");
    assert!(err.to_string().contains(&seg.meta.id.to_string()), "{err}");
    // Data outside the damaged segment's range is still served.
    let outside = ScanRequest { time_range: TimeRange { start_ms: 1_000_000, end_ms: 2_000_000 }, ..req };
    assert!(store.snapshot().scan(&outside).expect("scan elsewhere").is_empty());
}

#[test]
fn corrupt_wal_record_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for n in 0..30 {
        store.append(&EventBatch::from_events(&[event(n, 5_000, "a4")])).expect("append");
    }
    store.close().expect("close");
    drop(store);
    let mut files: Vec<_> =
        std::fs::read_dir(dir.path().join("wal")).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let first = &files[0];
    let mut bytes = std::fs::read(first).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(first, &bytes).expect("write");
    let err = Store::open(dir.path(), small_config(), SealPipeline::new()).err().expect("must refuse");
    assert!(err.to_string().contains(&first.display().to_string()), "{err}");
}

/// A naive row-at-a-time evaluation of a scan request, for differential tests.
fn naive_scan(events: &[Event], req: &ScanRequest) -> Vec<i64> {
    let field = |e: &Event, c: ColumnId| -> Option<String> {
        match c {
            ColumnId::AdvertiserId => Some(e.advertiser_id.clone()),
            ColumnId::CampaignId => Some(e.campaign_id.clone()),
            ColumnId::Device => e.device.clone(),
            ColumnId::AdId => Some(e.ad_id.clone()),
            ColumnId::Type => Some(e.kind.as_str().to_string()),
            _ => None,
        }
    };
    let mut out: Vec<i64> = events
        .iter()
        .filter(|e| req.time_range.contains(e.ts))
        .filter(|e| {
            req.filters.iter().all(|f| match field(e, f.column) {
                None => false,
                Some(v) => f.values.contains(&v) != f.negated,
            })
        })
        .map(|e| e.cost_micros)
        .collect();
    out.sort();
    out
}

/// The costs the scan returns (sorted), after checking that the other
/// columns of each returned row (a plain string, a dictionary string, a
/// U8) belong to the same event as its cost: `event(n, ..)` has cost `n`.
fn scanned_costs(store: &Store, req: &ScanRequest) -> Vec<i64> {
    let req = ScanRequest {
        columns: vec![ColumnId::CostMicros, ColumnId::EventId, ColumnId::Device, ColumnId::Type],
        ..req.clone()
    };
    let mut out = Vec::new();
    for b in store.snapshot().scan(&req).expect("scan") {
        assert_eq!(b.columns.len(), 4);
        assert!(b.columns.iter().all(|c| c.len() == b.rows), "every column holds the batch's rows");
        let ColumnData::I64(v) = &b.columns[0] else { panic!("cost_micros must be I64") };
        // Segments give dimensions as dictionary codes, other strings plain or
        // as codes; head chunks read one by one (lookups) give strings.
        let str_at = |c: &ColumnData, i: usize| match c {
            ColumnData::Str(a) => (!arrow_array::Array::is_null(a, i)).then(|| a.value(i).to_string()),
            ColumnData::Dict { codes, dict } => dict.value(codes[i]).map(str::to_string),
            other => panic!("a string column decoded as {other:?}"),
        };
        for (i, &cost) in v.iter().enumerate() {
            let want = event(cost as u64, 0, "");
            assert_eq!(str_at(&b.columns[1], i), Some(want.event_id), "row {i} of {:?}", b.source);
            assert_eq!(str_at(&b.columns[2], i), want.device, "row {i} of {:?}", b.source);
            let ColumnData::U8(t) = &b.columns[3] else { panic!("type must be U8") };
            assert_eq!(t[i], 0, "impression");
        }
        out.extend_from_slice(v);
    }
    out.sort();
    out
}

fn any_filter() -> impl Strategy<Value = DimFilter> {
    let col = prop::sample::select(vec![
        ColumnId::AdvertiserId,
        ColumnId::CampaignId,
        ColumnId::Device,
        ColumnId::AdId,
        ColumnId::Type,
    ]);
    let vals = prop::collection::vec(
        prop::sample::select(vec!["a1", "a2", "a9", "c0", "c1", "mobile", "ctv", "ad3", "zz", "impression", "click"])
            .prop_map(String::from),
        1..3,
    );
    (col, vals, any::<bool>()).prop_map(|(column, values, negated)| DimFilter { column, values, negated })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random batches go through WAL, head and segments unchanged.
    #[test]
    fn events_round_trip_through_wal_head_and_segments(
        batches in prop::collection::vec(prop::collection::vec(any_event(), 0..40), 1..5),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let all: Vec<Event> = batches.iter().flatten().cloned().collect();
        let store = open(dir.path());
        for b in &batches {
            store.append(&EventBatch::from_events(b)).expect("append");
        }
        prop_assert_eq!(all_events(&store), sorted_debug(&all), "head");
        store.close().expect("close");
        drop(store);
        let store = open(dir.path());
        prop_assert_eq!(all_events(&store), sorted_debug(&all), "after WAL replay");
        store.seal_all().expect("seal");
        prop_assert_eq!(store.snapshot().head_rows(), 0);
        prop_assert_eq!(all_events(&store), sorted_debug(&all), "segments");
        store.close().expect("close");
        drop(store);
        let store = open(dir.path());
        prop_assert_eq!(all_events(&store), sorted_debug(&all), "segments after reopen");
    }

    /// Rows an append drops, a few (left in place in the WAL record) or
    /// many (filtered out), are in no read: not in the head, not after
    /// replay, not in segments, not in scans, not in the latest event time.
    #[test]
    fn rows_dropped_at_append_never_come_back(
        masks in prop::collection::vec(
            (prop::sample::select(vec![0.03, 0.1, 0.5]), 1usize..100)
                .prop_flat_map(|(p, n)| prop::collection::vec(prop::bool::weighted(p), n)),
            1..4,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(dir.path());
        let mut kept = Vec::new();
        let mut k = 0u64;
        for mask in &masks {
            let events: Vec<Event> = mask
                .iter()
                .map(|_| {
                    k += 1;
                    event(k, (k as i64 * 7_919) % 7_200_000, ["a1", "a2", "a3"][(k % 3) as usize])
                })
                .collect();
            let keep: Vec<u32> = (0..mask.len() as u32).filter(|&i| !mask[i as usize]).collect();
            store.append_rows(&EventBatch::from_events(&events), Some(&keep)).expect("append");
            kept.extend(keep.iter().map(|&i| events[i as usize].clone()));
        }
        let req = ScanRequest {
            time_range: TimeRange { start_ms: 0, end_ms: 7_200_000 },
            filters: vec![],
            columns: vec![ColumnId::CostMicros],
        };
        prop_assert_eq!(store.stats().appended_rows, kept.len() as u64);
        prop_assert_eq!(store.max_event_ts(), kept.iter().map(|e| e.ts).max().unwrap_or(i64::MIN));
        for step in ["head", "after WAL replay", "segments", "segments after reopen"] {
            prop_assert_eq!(all_events(&store), sorted_debug(&kept), "{}", step);
            prop_assert_eq!(scanned_costs(&store, &req), naive_scan(&kept, &req), "{}", step);
            if step == "after WAL replay" {
                store.seal_all().expect("seal");
                prop_assert_eq!(store.snapshot().segment_rows(), kept.len() as u64);
            } else {
                store.close().expect("close");
                store = open(dir.path());
                prop_assert_eq!(store.max_event_ts(), kept.iter().map(|e| e.ts).max().unwrap_or(i64::MIN));
            }
        }
    }

    /// The pruning scan returns exactly what a naive filter over all events returns,
    /// with data split between segments and the head.
    #[test]
    fn scan_matches_naive_filter(
        n in 1u64..700,
        start in 0i64..8_000_000,
        len in 0i64..8_000_000,
        filters in prop::collection::vec(any_filter(), 0..3),
        seal_first in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let events: Vec<Event> =
            (0..n).map(|k| event(k, (k as i64 * 7_919) % 7_200_000, ["a1", "a2", "a3"][(k % 3) as usize])).collect();
        let (first, second) = events.split_at(events.len() / 2);
        store.append(&EventBatch::from_events(first)).expect("append");
        if seal_first {
            store.seal_all().expect("seal");
        }
        store.append(&EventBatch::from_events(second)).expect("append");
        let req = ScanRequest {
            time_range: TimeRange { start_ms: start, end_ms: start + len },
            filters,
            columns: vec![ColumnId::CostMicros],
        };
        prop_assert_eq!(scanned_costs(&store, &req), naive_scan(&events, &req));
        store.seal_all().expect("seal");
        prop_assert_eq!(scanned_costs(&store, &req), naive_scan(&events, &req));
    }
}

#[test]
fn scan_prunes_by_time_and_dictionary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut events = Vec::new();
    for h in 0..4i64 {
        for n in 0..200u64 {
            events.push(event(h as u64 * 1000 + n, h * 3_600_000 + n as i64 * 1000, if h == 0 { "a1" } else { "a2" }));
        }
    }
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    let snap = store.snapshot();
    let mut per_bucket: BTreeMap<i64, usize> = BTreeMap::new();
    for s in snap.segments.iter() {
        *per_bucket.entry(s.meta.partition.bucket_start_ms).or_default() += 1;
    }
    assert_eq!(per_bucket.len(), 4);

    let req = ScanRequest {
        time_range: TimeRange { start_ms: 3_600_000, end_ms: 7_200_000 },
        filters: vec![],
        columns: vec![ColumnId::CostMicros],
    };
    let plan = snap.plan_scan(&req).expect("plan");
    assert!(plan.segments.iter().all(|s| s.segment.meta.partition.bucket_start_ms == 3_600_000));
    assert!(plan.pruned.iter().any(|(_, why)| *why == PruneReason::TimeRange));

    let req =
        ScanRequest { filters: vec![DimFilter::eq(ColumnId::AdvertiserId, "a1")], time_range: TimeRange::ALL, ..req };
    let plan = snap.plan_scan(&req).expect("plan");
    assert!(plan.segments.iter().all(|s| s.segment.meta.partition.bucket_start_ms == 0));
    // a2's segments: pruned by their shard, or by their dictionary where a1 hashes to the same one.
    let why = if shard_of("a1", snap.shards) == shard_of("a2", snap.shards) {
        PruneReason::Dictionary(ColumnId::AdvertiserId)
    } else {
        PruneReason::Shard
    };
    assert!(plan.pruned.iter().any(|(_, w)| *w == why), "{:?}", plan.pruned);
    assert_eq!(scanned_costs(&store, &req).len(), 200);
}

#[test]
fn an_advertiser_filter_reads_only_its_shards_segments_and_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let advertisers = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"];
    let events: Vec<Event> =
        (0..400u64).map(|n| event(n, (n as i64 % 100) * 1000, advertisers[n as usize % advertisers.len()])).collect();
    let (sealed, fresh) = events.split_at(200);
    store.append(&EventBatch::from_events(sealed)).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(fresh)).expect("append");
    let snap = store.snapshot();
    let shards = snap.shards;
    let shards_held: std::collections::BTreeSet<u32> = advertisers.iter().map(|a| shard_of(a, shards)).collect();
    assert!(shards_held.len() > 1, "the advertisers span several shards");

    for wanted in [vec!["a1"], vec!["a1", "a2"], vec!["a3", "zz"]] {
        let filter = DimFilter {
            column: ColumnId::AdvertiserId,
            values: wanted.iter().map(|v| v.to_string()).collect(),
            negated: false,
        };
        let req =
            ScanRequest { time_range: TimeRange::ALL, filters: vec![filter], columns: vec![ColumnId::CostMicros] };
        let own: Vec<u32> = wanted.iter().map(|a| shard_of(a, shards)).collect();
        let plan = snap.plan_scan(&req).expect("plan");
        assert!(plan.segments.iter().all(|s| own.contains(&s.segment.meta.partition.shard)), "{wanted:?}");
        assert!(plan.head.iter().all(|h| own.contains(&h.partition.shard)), "{wanted:?}: head of other shards");
        let others = snap.segments.iter().filter(|s| !own.contains(&s.meta.partition.shard)).count();
        assert!(others > 0);
        assert_eq!(plan.pruned.iter().filter(|(_, why)| *why == PruneReason::Shard).count(), others, "{wanted:?}");
        assert_eq!(scanned_costs(&store, &req), naive_scan(&events, &req), "{wanted:?}");
    }
    // Two filters on advertiser_id: the shards both allow.
    let req = ScanRequest {
        time_range: TimeRange::ALL,
        filters: vec![DimFilter::eq(ColumnId::AdvertiserId, "a1"), DimFilter::eq(ColumnId::AdvertiserId, "a2")],
        columns: vec![ColumnId::CostMicros],
    };
    assert_eq!(scanned_costs(&store, &req), naive_scan(&events, &req));
    // NOT IN says nothing of the shards.
    let req = ScanRequest {
        time_range: TimeRange::ALL,
        filters: vec![DimFilter { column: ColumnId::AdvertiserId, values: vec!["a1".into()], negated: true }],
        columns: vec![ColumnId::CostMicros],
    };
    assert!(snap.plan_scan(&req).expect("plan").pruned.is_empty());
    assert_eq!(scanned_costs(&store, &req), naive_scan(&events, &req));
}

#[test]
fn config_is_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = StoreConfig { shards: 0, ..StoreConfig::default() };
    let err = Store::open(dir.path(), bad, SealPipeline::new()).err().expect("must fail");
    assert!(err.to_string().contains("shards"), "{err}");
    let bad = StoreConfig { bucket_width_ms: 7 * 60_000, ..StoreConfig::default() };
    assert!(Store::open(dir.path(), bad, SealPipeline::new()).is_err());
}

#[test]
fn partitioning_is_fixed_for_the_life_of_a_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.append(&EventBatch::from_events(&[event(1, 5, "a1")])).expect("append");
    store.close().expect("close");
    drop(store);
    let other = StoreConfig { shards: 5, ..small_config() };
    let err = Store::open(dir.path(), other, SealPipeline::new()).err().expect("must refuse");
    assert!(err.to_string().contains("shards = 3") && err.to_string().contains("shards = 5"), "{err}");
    // The original configuration still opens it, with the event.
    assert_eq!(all_events(&open(dir.path())).len(), 1);
}

fn open_with(dir: &Path, config: StoreConfig) -> Store {
    Store::open(dir, config, SealPipeline::new()).expect("open store")
}

#[test]
fn head_bytes_count_each_row_once_however_the_batch_is_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // Three advertisers over two buckets: one batch becomes several
    // partitions' slices of one buffer.
    let events = over_two_buckets(300);
    let batch = EventBatch::from_events(&events);
    store.append(&batch).expect("append");
    let parts = partition_rows(&batch);
    assert!(parts.len() > 1, "the batch spans partitions");
    // Each slice of a partition adds at most one offset (4 bytes) and one
    // byte of validity bitmap per column to the rows it holds.
    const SLICE_SLACK_BYTES: u64 = 23 * 8;
    let slack = parts.len() as u64 * SLICE_SLACK_BYTES;
    let whole = batch.memory_bytes() as u64;
    let head = store.stats().head_bytes;
    assert!(head.abs_diff(whole) <= slack, "each row counted once: {head} bytes in the head, {whole} in the batch");
    store.seal_all().expect("seal");
    assert_eq!(store.stats().head_bytes, 0);
}

/// Records the thread each seal runs on, and its nice value.
struct ThreadNames(Mutex<Vec<(String, i32)>>);

impl crate::seal::SealStage for ThreadNames {
    fn name(&self) -> &str {
        "thread-names"
    }

    fn apply(&self, _ctx: &crate::seal::SealContext<'_>, events: EventBatch) -> Result<crate::seal::StageOutput> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.0.lock().push((name, super::priority::this_thread_nice()));
        Ok(crate::seal::StageOutput { events, sidecars: vec![] })
    }
}

#[test]
fn open_segments_count_the_metadata_they_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert_eq!(store.stats().segment_metadata_bytes, 0, "no segment, nothing kept");
    let events: Vec<Event> = (0..300).map(|n| event(n, 1_000_000, ["a1", "a2", "a3"][(n % 3) as usize])).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    store.seal_all().expect("seal");
    let kept = store.stats().segment_metadata_bytes;
    // Three shards' segments of 100 rows: a block per column each, a few KB.
    assert!((1_000..100_000).contains(&kept), "{kept} bytes");
}

/// Fails the seal of one partition.
struct FailOn(PartitionKey);

impl crate::seal::SealStage for FailOn {
    fn name(&self) -> &str {
        "fail-on"
    }

    fn apply(&self, ctx: &crate::seal::SealContext<'_>, events: EventBatch) -> Result<crate::seal::StageOutput> {
        if ctx.partition == self.0 {
            return Err(StorageError::Internal("injected seal failure".into()));
        }
        Ok(crate::seal::StageOutput { events, sidecars: vec![] })
    }
}

/// `n` events of three advertisers over two one-hour buckets: several
/// partitions under `small_config`.
fn over_two_buckets(n: u64) -> Vec<Event> {
    (0..n).map(|n| event(n, (n as i64 % 2) * 3_600_000, ["a1", "a2", "a3"][(n % 3) as usize])).collect()
}

/// Rows of `batch` per partition under `small_config`, in key order.
fn partition_rows(batch: &EventBatch) -> BTreeMap<PartitionKey, usize> {
    let mut rows: BTreeMap<PartitionKey, usize> = BTreeMap::new();
    for (key, part) in small_config().partitioning().split(batch).expect("split") {
        *rows.entry(key).or_default() += part.num_rows();
    }
    rows
}

/// Issue 25: replayed events started their seal age again at every open,
/// so a server restarted more often than every `seal_max_age_ms` never
/// sealed them. The WAL now notes when events arrived, and replay keeps
/// their age.
#[test]
fn replayed_events_keep_their_seal_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { seal_max_age_ms: 1_000, ..small_config() };
    {
        let store = Store::open(dir.path(), config.clone(), SealPipeline::new()).expect("open");
        let events: Vec<Event> = (0..20).map(|n| event(n, (n as i64) * 60_000, "a1")).collect();
        store.append(&EventBatch::from_events(&events)).expect("append");
        // Dropped without closing: a crash, the events stay in the WAL.
    }
    std::thread::sleep(Duration::from_millis(600));
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("reopen");
    assert_eq!(store.snapshot().head_rows(), 20, "replayed into the head");
    assert_eq!(store.seal_due().expect("seal").partitions, 0, "600 ms old: not due yet");
    std::thread::sleep(Duration::from_millis(500));
    // 1.1 s since they arrived, 0.5 s since this open.
    assert!(store.seal_due().expect("seal").partitions > 0, "due by the age they arrived with");
    assert_eq!(store.snapshot().head_rows(), 0);
    assert_eq!(all_events(&store).len(), 20);
}

/// Source offsets come back after a restart from the WAL records that
/// carry them, and from the catalog once those records' files are
/// deleted; an append without rows still moves them.
#[test]
fn source_offsets_survive_restarts_and_wal_deletion() {
    use crate::offsets::SourceOffsets;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut expected = SourceOffsets::default();
    for n in 0..200u64 {
        let mut offsets = SourceOffsets::default();
        offsets.advance("kafka/events", (n % 4) as i32, n as i64 + 1);
        expected.merge(&offsets);
        let batch = EventBatch::from_events(&[event(n, 5_000, "a2")]);
        store.append_from(Rows { batch: &batch, keep: None }, &offsets).expect("append");
    }
    let mut duplicates_only = SourceOffsets::default();
    duplicates_only.advance("kafka/events", 0, 1_000);
    let batch = EventBatch::from_events(&[event(7, 5_000, "a2")]);
    store.append_from(Rows { batch: &batch, keep: Some(&[]) }, &duplicates_only).expect("append no rows");
    expected.merge(&duplicates_only);
    assert_eq!(store.source_offsets(), expected);
    store.close().expect("close");

    let store = open(dir.path());
    assert_eq!(store.source_offsets(), expected, "replayed from the WAL");
    assert_eq!(store.snapshot().head_rows(), 200, "the record without rows adds none");
    store.seal_all().expect("seal");
    assert_eq!(std::fs::read_dir(dir.path().join("wal")).expect("wal dir").count(), 1, "sealed files deleted");
    assert_eq!(store.snapshot().catalog.source_offsets, expected, "kept in the catalog before the deletion");
    store.close().expect("close");

    let store = open(dir.path());
    assert_eq!(store.source_offsets(), expected, "from the catalog");
    assert_eq!(store.snapshot().segment_rows(), 200);
}
