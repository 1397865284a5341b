use super::*;
use crate::event::{Event, InvalidReason};
use crate::manifest::{Level, Tier};
use crate::retention::RetentionPolicy;
use crate::seal::SealPipeline;
use crate::store::{Store, StoreConfig};
use std::fs::File;

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
const DAY: i64 = 86_400_000;

/// Event `i`: users "u-erase" and "u-keep" in turn, with an ip and a user agent of their own.
fn event(i: i64, ts: i64) -> Event {
    let user = if i % 2 == 0 { "u-erase" } else { "u-keep" };
    Event {
        event_id: format!("e{i}"),
        kind: match (i % 3, i % 5) {
            (2, _) => EventType::Click,
            (_, 4) => EventType::Conversion,
            _ => EventType::Impression,
        },
        ts,
        publisher_id: "p".into(),
        advertiser_id: format!("a{}", i % 2),
        campaign_id: "c".into(),
        ad_id: "x".into(),
        // Every fourth click by last touch: no impression id.
        impression_id: (!(i % 3 == 2 && i % 4 == 0)).then(|| format!("i{i}")),
        // Every fourth conversion by last touch: no click id.
        click_id: (!(i % 5 == 4 && i % 4 == 0)).then(|| format!("k{i}")),
        user_key: Some(user.into()),
        ip_hash: Some(format!("ip-{user}")),
        ua_hash: Some(format!("ua-{user}")),
        attributed: i % 5 == 0,
        attributed_to: (i % 5 == 0).then(|| format!("i{}", i - 1)),
        invalid_reason: match (i % 7, i % 11) {
            (0, _) => InvalidReason::BotUa,
            (_, 0) => InvalidReason::ClickFlood,
            _ => InvalidReason::Valid,
        },
        ..Event::default()
    }
}

fn batch(range: std::ops::Range<i64>) -> EventBatch {
    EventBatch::from_events(&range.map(|i| event(i, BASE + i * 60_000)).collect::<Vec<_>>())
}

#[test]
fn erase_identity_removes_the_users_identity_and_nothing_else() {
    let events = batch(0..20);
    let (erased, keys) = erase_identity(&events, "u-erase").expect("erase").expect("the user has rows");
    assert_eq!(keys.len(), 10);
    assert_eq!(erased.num_rows(), events.num_rows());
    for (i, (was, now)) in events.events().iter().zip(erased.events()).enumerate() {
        match was.user_key.as_deref() {
            Some("u-erase") => {
                assert_eq!((&now.user_key, &now.ip_hash, &now.ua_hash), (&None, &None, &None), "row {i}");
                assert!(keys.contains(&idempotency_key("p", was.kind, &was.event_id)));
                let identity = Event { user_key: None, ip_hash: None, ua_hash: None, ..was.clone() };
                assert_eq!(now, identity, "row {i}: only the identity goes");
            }
            _ => assert_eq!(&now, was, "row {i}: another user's row is untouched"),
        }
    }
    assert!(erase_identity(&events, "nobody").expect("erase").is_none());
}

#[test]
fn keys_are_durable_and_a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = ErasedEvents::open(dir.path()).expect("open");
    assert_eq!(set.next_erasure().expect("next"), 1);
    set.record(1, 1, &[3, 1, 2, 3]).expect("record");
    set.record(1, 2, &[9]).expect("record");
    assert_eq!(set.len(), 4);
    let again = ErasedEvents::open(dir.path()).expect("reopen");
    assert!([1, 2, 3, 9].iter().all(|k| again.contains(*k)) && !again.contains(4));
    assert_eq!(again.next_erasure().expect("next"), 2, "numbers follow the keys files");
    append_log(dir.path(), &ErasureRecord { id: 7, ..record() }).expect("log");
    assert_eq!(again.next_erasure().expect("next"), 8, "and the log");
    assert_eq!(read_log(&dir.path().join(ERASURE_DIR)).expect("read"), vec![ErasureRecord { id: 7, ..record() }]);

    let file = dir.path().join(ERASURE_DIR).join("00000001.0001.keys");
    let mut bytes = fs::read(&file).expect("read");
    bytes[20] ^= 1;
    fs::write(&file, &bytes).expect("write");
    let err = ErasedEvents::open(dir.path()).expect_err("a damaged keys file");
    assert!(err.to_string().contains("checksum"), "{err}");
}

fn record() -> ErasureRecord {
    ErasureRecord {
        id: 1,
        requested_ms: 1,
        finished_ms: 2,
        by: None,
        segments_rewritten: 0,
        remote_segments: 0,
        rows: 0,
        mirror_days: 0,
        wal_files_deleted: 0,
    }
}

#[test]
fn a_reseal_keeps_the_decisions_of_erased_events_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = ErasedEvents::open(dir.path()).expect("open");
    let before = batch(0..60);
    // A re-seal that decided every row anew: nothing attributed, all valid.
    let redecided = before
        .with_column(ColumnId::Attributed, Arc::new(arrow_array::BooleanArray::from(vec![false; 60])) as ArrayRef)
        .and_then(|b| b.with_column(ColumnId::AttributedTo, Arc::new(StringArray::from(vec![None::<&str>; 60]))))
        .and_then(|b| b.with_column(ColumnId::InvalidReason, Arc::new(arrow_array::UInt8Array::from(vec![0u8; 60]))))
        .expect("columns");
    let same = set.keep_decisions(&before, redecided.clone()).expect("keep");
    assert_eq!(same.events(), redecided.events(), "no erasure: the re-seal's decisions");
    let (_, keys) = erase_identity(&before, "u-erase").expect("erase").expect("rows");
    set.record(1, 1, &keys).expect("record");
    let kept = set.keep_decisions(&before, redecided.clone()).expect("keep");
    let mut touched = 0;
    for ((was, new), now) in before.events().iter().zip(redecided.events()).zip(kept.events()) {
        let erased = was.user_key.as_deref() == Some("u-erase");
        let by_touch = erased
            && match was.kind {
                EventType::Click => was.impression_id.is_none(),
                EventType::Conversion => was.click_id.is_none(),
                EventType::Impression => false,
            };
        let identity_reason = [InvalidReason::BotUa, InvalidReason::ClickFlood].contains(&was.invalid_reason);
        let by_identity = by_touch || (erased && identity_reason);
        touched += usize::from(by_touch);
        let attribution = if by_touch { was } else { &new };
        let reason = if by_identity { was } else { &new };
        assert_eq!(
            (now.attributed, &now.attributed_to, now.invalid_reason),
            (attribution.attributed, &attribution.attributed_to, reason.invalid_reason),
            "{}",
            was.event_id
        );
    }
    assert!(touched > 1, "the batch has erased clicks and conversions by last touch");
}

/// Events 0..2000 (two days, half of them "u-erase"'s) and four two days
/// later that close them, sealed, finalized, rolled up, billed and (with
/// the mirror on) mirrored; returns the first day.
fn two_settled_days(store: &Store) -> i64 {
    let day0 = BASE.div_euclid(DAY) * DAY;
    store.append(&batch(0..2_000)).expect("append");
    let far = EventBatch::from_events(&(3_000..3_004).map(|i| event(i, day0 + 3 * DAY + i)).collect::<Vec<_>>());
    store.append(&far).expect("append");
    store.seal_all().expect("seal");
    crate::testutil::settle(store);
    day0
}

#[test]
fn a_store_erasure_rewrites_local_and_cold_segments_and_keeps_what_derives_from_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config.clone(), SealPipeline::new()).expect("open");
    // Two days, settled; then a few events of a later day left in the head.
    let day0 = two_settled_days(&store);
    let policy: RetentionPolicy = serde_json::from_str(r#"{"raw": {"hot": "1d"}}"#).expect("policy");
    store.set_retention(policy).expect("set");
    for _ in 0..10 {
        store.apply_tiering_at(day0 + 30 * DAY).expect("tiering");
    }
    let late = EventBatch::from_events(&(5_000..5_010).map(|i| event(i, day0 + 5 * DAY + i)).collect::<Vec<_>>());
    store.append(&late).expect("append");
    let catalog = store.catalog();
    assert!(catalog.segments_of(Level::Raw).any(|m| m.tier == Tier::Remote), "some raw segments are cold");
    let billing: Vec<(i64, u32)> = catalog.billing.iter().map(|b| (b.day_ms, b.version)).collect();
    let derived: Vec<_> = catalog.segments.values().filter(|m| m.level != Level::Raw).map(|m| m.id).collect();
    assert!(!billing.is_empty() && !derived.is_empty());

    let record = store.erase("u-erase", Some("ops".into()), 1).expect("erase");
    assert_eq!(record.rows, 1_007, "every row of the user, the head's included");
    assert!(record.remote_segments > 0 && record.segments_rewritten > record.remote_segments, "{record:?}");
    assert_eq!(store.snapshot().head_rows(), 0, "the head was sealed first");

    let snapshot = store.snapshot();
    let mut users: std::collections::BTreeMap<Option<String>, usize> = Default::default();
    for s in snapshot.segments.iter() {
        for e in s.reader.read_batch().expect("read").events() {
            assert!(e.ip_hash.as_deref() != Some("ip-u-erase") && e.ua_hash.as_deref() != Some("ua-u-erase"));
            *users.entry(e.user_key).or_default() += 1;
        }
    }
    assert_eq!(users.get(&Some("u-keep".into())), Some(&1_007));
    assert_eq!(users.get(&None), Some(&1_007));
    assert_eq!(users.len(), 2, "{users:?}");
    let catalog = store.catalog();
    assert_eq!(catalog.billing.iter().map(|b| (b.day_ms, b.version)).collect::<Vec<_>>(), billing, "no new version");
    let now: Vec<_> = catalog.segments.values().filter(|m| m.level != Level::Raw).map(|m| m.id).collect();
    assert!(derived.iter().all(|id| now.contains(id)), "rollup segments kept, renamed to the new raw segments");
    assert_eq!(catalog.segments_of(Level::Raw).map(|m| m.erased_rows).sum::<u64>(), 1_007, "the catalog counts them");
    assert_eq!(store.reconcile(i64::MIN, i64::MAX).expect("reconcile").differing, 0);
    let objects = dir.path().join("objects");
    let cold: Vec<_> = catalog.segments_of(Level::Raw).filter(|m| m.tier == Tier::Remote).collect();
    assert!(!cold.is_empty(), "the cold segments without the user stay where they were");
    assert_eq!(files_under(&objects), cold.len(), "the old objects are deleted");

    // Nothing left to erase; reopened, the erased events are known.
    assert_eq!(store.erase("u-erase", None, 2).expect("again").rows, 0);
    store.close().expect("close");
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("reopen");
    assert_eq!(store.erased_events(), 1_007);
    assert_eq!(store.erasures().expect("log").iter().map(|r| r.rows).collect::<Vec<_>>(), vec![1_007, 0]);
}

fn files_under(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
        .sum()
}

/// The `user_key` values of every events part of the mirror under `objects`.
fn mirrored_users(objects: &Path) -> Vec<Option<String>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut users = Vec::new();
    let mut stack = vec![objects.join(crate::mirror::EVENTS_PREFIX)];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
                continue;
            }
            let file = File::open(e.path()).expect("part");
            for batch in ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader") {
                let batch = batch.expect("batch");
                let column = batch.column_by_name("user_key").expect("user_key");
                let a = column.as_any().downcast_ref::<StringArray>().expect("strings");
                users.extend(a.iter().map(|v| v.map(str::to_string)));
            }
        }
    }
    users
}

#[test]
fn the_mirror_of_days_whose_raw_events_expired_is_rewritten_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { fsync: false, close_idle_ms: 0, parquet_mirror: true, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let day0 = two_settled_days(&store);
    assert_eq!(store.catalog().mirrored.len(), 2, "the two settled days are in the mirror");
    // Every level past its ttl: the rollups go, and with them the catalog
    // entries of the expired raw segments; the archive stays.
    let policy: RetentionPolicy = serde_json::from_str(
        r#"{"raw": {"ttl": "2d"}, "minute": {"ttl": "2d"}, "hour": {"ttl": "2d"}, "day": {"ttl": "2d"}}"#,
    )
    .expect("policy");
    store.set_retention(policy).expect("set");
    for _ in 0..4 {
        store.apply_retention_at(day0 + 30 * DAY).expect("retention");
    }
    let catalog = store.catalog();
    assert!(!catalog.segments_of(Level::Raw).any(|m| m.partition.bucket_start_ms < day0 + 2 * DAY), "raw entries gone");
    let objects = dir.path().join("objects");
    let before = mirrored_users(&objects);
    assert_eq!(before.iter().filter(|u| u.as_deref() == Some("u-erase")).count(), 1_000);

    let record = store.erase("u-erase", None, 1).expect("erase");
    assert_eq!(record.mirror_days, 2, "{record:?}");
    let after = mirrored_users(&objects);
    assert_eq!(after.len(), before.len(), "every archived event is still there");
    assert!(!after.iter().any(|u| u.as_deref() == Some("u-erase")), "the archive holds no row of the user");
    assert_eq!(after.iter().filter(|u| u.is_none()).count(), 1_000);
    assert_eq!(after.iter().filter(|u| u.as_deref() == Some("u-keep")).count(), 1_000);
    assert_eq!(store.catalog().mirrored.len(), 2, "no day of the archive is lost");
}
