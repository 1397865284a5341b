//! Exactly-once counting against an independent oracle (tests/oracle):
//! duplicates, retries across restarts, out-of-order and late events, orphan
//! clicks, user_key-only clicks, conversions, a bot burst and a click flood.

mod oracle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use adstore_ingest::{AttributionRules, DedupeConfig, DedupeIndex, ExactlyOnce};
use adstore_server::datagen::BOT_UA_HASH;
use adstore_storage::{Event, EventBatch, EventType, InvalidReason, SealKind, SealPipeline, Store, StoreConfig};

fn rules() -> AttributionRules {
    AttributionRules { bot_ua_hashes: vec![BOT_UA_HASH.to_string()], ..AttributionRules::default() }
}

fn oracle_rules(r: &AttributionRules) -> oracle::Rules {
    oracle::Rules {
        click_window_ms: r.click_window_ms,
        conversion_window_ms: r.conversion_window_ms,
        too_fast_ms: r.too_fast_ms,
        flood_per_minute: r.click_flood_per_minute as usize,
        bot_ua: r.bot_ua_hashes.clone(),
    }
}

/// Sealed keys go to runs on disk every few dozen keys, as the server's do
/// every million: every test here also checks the runs' answers.
const SPILL_KEYS: usize = 40;
/// Impressions and clicks go to parts on disk every few dozen, likewise.
const SPILL_ANCHORS: usize = 30;

fn exactly_once(dir: &std::path::Path, rules: AttributionRules) -> Arc<ExactlyOnce> {
    let dedupe = DedupeIndex::with_spill(DedupeConfig::default(), &dir.join("dedupe"), SPILL_KEYS);
    let eo = ExactlyOnce::new(Arc::new(dedupe), rules, 86_400_000);
    Arc::new(eo.with_attribution_spill(&dir.join("attribution"), SPILL_ANCHORS))
}

fn open(dir: &std::path::Path, rules: AttributionRules) -> (Store, Arc<ExactlyOnce>) {
    let eo = exactly_once(dir, rules);
    let config = StoreConfig { shards: 3, block_rows: 1024, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new().with_stage(eo.clone())).expect("open store");
    (store, eo)
}

fn all_buckets(store: &Store) -> Vec<i64> {
    let mut b: Vec<i64> = store.catalog().segments.values().map(|m| m.partition.bucket_start_ms).collect();
    b.sort_unstable();
    b.dedup();
    b
}

fn attributed_in_range(s: &Store, range: &[i64]) -> i64 {
    s.snapshot()
        .read_events()
        .expect("read")
        .iter()
        .flat_map(|b| b.events())
        .filter(|e| {
            e.kind == EventType::Click && e.attributed && range.contains(&(e.ts.div_euclid(3_600_000) * 3_600_000))
        })
        .count() as i64
}

/// An impression of user `u` on ad `x`, with `id` as event and impression id.
fn user_impression(id: &str, ts: i64) -> Event {
    Event {
        event_id: id.into(),
        kind: EventType::Impression,
        ts,
        publisher_id: "p".into(),
        advertiser_id: "a".into(),
        campaign_id: "c".into(),
        ad_id: "x".into(),
        impression_id: Some(id.into()),
        user_key: Some("u".into()),
        ..Event::default()
    }
}

fn stored_report(store: &Store) -> oracle::Report {
    oracle::report(&oracle::stored_outcomes(&store.snapshot().read_events().expect("read events")))
}

#[test]
fn counts_match_the_oracle_through_retries_restarts_and_finalization() {
    retries_restarts_and_finalization(false);
}

/// The exactly-once state is stored once, in the segments: a restart that
/// finds every retried event sealed rebuilds it from their id columns. The
/// retries are still duplicates, and clicks after the restart are still
/// attributed to impressions sealed before it.
#[test]
fn counts_match_the_oracle_when_a_restart_finds_the_retried_events_sealed() {
    retries_restarts_and_finalization(true);
}

fn retries_restarts_and_finalization(sealed_before_restart: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sent = oracle::stream();
    let batches: Vec<&[Event]> = sent.chunks(1_000).collect();
    let (mut store, mut eo) = open(dir.path(), rules());
    let (mut accepted, mut duplicates) = (0usize, 0usize);
    let mut resent = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let s = eo.ingest(&store, &EventBatch::from_events(batch)).expect("ingest");
        accepted += s.accepted;
        duplicates += s.duplicates;
        if i % 7 == 3 {
            store.seal_all().expect("seal");
        }
        if i == batches.len() / 2 {
            // Restart, then the producer retries its last three batches.
            if sealed_before_restart {
                // The batches about to be retried are then only in
                // segments: their keys must be read back from them.
                store.seal_all().expect("seal");
            }
            store.close().expect("close");
            drop(store);
            (store, eo) = open(dir.path(), rules());
            if sealed_before_restart {
                assert!(eo.stats().dedupe_spilled.keys > 0, "recovery wrote the sealed keys to runs");
            }
            for retry in &batches[i - 2..=i] {
                let s = eo.ingest(&store, &EventBatch::from_events(retry)).expect("retry");
                assert_eq!(s.accepted, 0, "a retried batch must be all duplicates");
                duplicates += s.duplicates;
                resent.extend_from_slice(retry);
            }
        }
    }
    let unique = oracle::dedupe(&sent);
    assert_eq!(accepted, unique.len(), "accepted events");
    assert_eq!(duplicates, sent.len() + resent.len() - unique.len(), "duplicates answered");

    store.seal_all().expect("seal");
    assert!(eo.stats().dedupe_spilled.runs > 0, "sealed keys went to runs on disk");
    assert!(eo.stats().attribution_parts.written > 0, "anchors went to parts on disk");
    // Provisional data already holds every event exactly once.
    let stored: usize = store.snapshot().read_events().expect("read").iter().map(|b| b.num_rows()).sum();
    assert_eq!(stored, unique.len(), "provisional segments hold each event once");
    store.reseal_buckets(&all_buckets(&store), SealKind::Final).expect("finalize");
    let expected = oracle::report(&oracle::outcomes(&sent, &oracle_rules(&rules())));
    oracle::assert_same(&expected, &stored_report(&store));
    // The flood and the bot burst were both seen.
    let invalid: std::collections::BTreeMap<String, i64> =
        expected.values().flat_map(|m| m.invalid.clone()).fold(Default::default(), |mut acc, (k, v)| {
            *acc.entry(k).or_default() += v;
            acc
        });
    for reason in ["click_flood", "bot_ua", "unattributed", "too_fast"] {
        assert!(invalid.get(reason).copied().unwrap_or(0) > 0, "the stream should exercise {reason}: {invalid:?}");
    }

    // The final state survives a restart unchanged.
    store.close().expect("close");
    drop(store);
    let (store, _eo) = open(dir.path(), rules());
    oracle::assert_same(&expected, &stored_report(&store));
}

/// Requests that carry several batches (as a joined Arrow request does)
/// count like the same events sent one batch at a time: an id repeated in
/// two batches of one request is a duplicate, and a request retried after
/// a restart is all duplicates.
#[test]
fn requests_of_several_batches_count_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sent = oracle::stream();
    let batches: Vec<EventBatch> = sent.chunks(700).map(EventBatch::from_events).collect();
    let (mut store, mut eo) = open(dir.path(), rules());
    let (mut accepted, mut duplicates, mut copies) = (0usize, 0usize, 0usize);
    for (i, request) in batches.chunks(3).enumerate() {
        let mut request = request.to_vec();
        if i % 4 == 1 {
            // The request's first batch once more, as its last.
            request.push(request[0].clone());
        }
        let s = eo.ingest_all(&store, &request).expect("ingest");
        accepted += s.accepted;
        duplicates += s.duplicates;
        copies += request.iter().map(EventBatch::num_rows).sum::<usize>();
        if i % 5 == 2 {
            store.seal_all().expect("seal");
        }
        if i == 6 {
            store.close().expect("close");
            drop(store);
            (store, eo) = open(dir.path(), rules());
            let s = eo.ingest_all(&store, &request).expect("retry");
            assert_eq!(s.accepted, 0, "a retried request must be all duplicates");
            duplicates += s.duplicates;
            copies += s.duplicates;
        }
    }
    let unique = oracle::dedupe(&sent);
    assert_eq!(accepted, unique.len(), "accepted events");
    assert_eq!(duplicates, copies - unique.len(), "duplicates answered");
    store.seal_all().expect("seal");
    store.reseal_buckets(&all_buckets(&store), SealKind::Final).expect("finalize");
    let expected = oracle::report(&oracle::outcomes(&sent, &oracle_rules(&rules())));
    oracle::assert_same(&expected, &stored_report(&store));
}

#[test]
fn reprocessing_moves_numbers_exactly_as_the_oracle_says_and_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sent = oracle::stream();
    let (store, eo) = open(dir.path(), rules());
    for batch in sent.chunks(2_000) {
        eo.ingest(&store, &EventBatch::from_events(batch)).expect("ingest");
    }
    store.seal_all().expect("seal");
    let buckets = all_buckets(&store);
    store.reseal_buckets(&buckets, SealKind::Final).expect("finalize");
    let before = stored_report(&store);

    // New rules: a 5-minute click window, version 2.
    let new_rules = AttributionRules { version: 2, click_window_ms: 300_000, ..rules() };
    eo.set_rules(new_rules.clone()).expect("valid rules");
    let range: Vec<i64> = buckets[1..3].to_vec();
    let in_range = |hour: i64| range.contains(&(hour * 3_600_000));

    // A concurrent reader must see the range's attributed clicks either all
    // old or all new, never a mix.
    let old_value = attributed_in_range(&store, &range);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let stop = stop.clone();
        let range = range.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            loop {
                seen.insert(attributed_in_range(&store, &range));
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
            seen
        })
    };
    let report = store.reseal_buckets(&range, SealKind::Reprocess).expect("reprocess");
    assert!(report.partitions > 0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::Release);
    let seen = reader.join().expect("reader");
    let new_value = attributed_in_range(&store, &range);
    assert!(new_value < old_value, "a shorter click window attributes fewer clicks ({new_value} vs {old_value})");
    assert!(seen.iter().all(|v| *v == old_value || *v == new_value), "a reader saw a mix: {seen:?}");

    let after = stored_report(&store);
    let expected_new = oracle::report(&oracle::outcomes(&sent, &oracle_rules(&new_rules)));
    for ((campaign, hour), m) in &after {
        let key = (campaign.clone(), *hour);
        if in_range(*hour) {
            assert_eq!(Some(m), expected_new.get(&key), "{key:?} under the new rules");
        } else {
            assert_eq!(Some(m), before.get(&key), "{key:?} outside the range must not move");
        }
    }
    assert_eq!(after.len(), before.len());
    let versions: std::collections::BTreeSet<u32> = store
        .catalog()
        .segments
        .values()
        .filter(|m| range.contains(&m.partition.bucket_start_ms))
        .map(|m| m.attribution_version)
        .collect();
    assert_eq!(versions, [2].into_iter().collect(), "reprocessed segments carry the new rules version");
}

/// Regression: with the sealer running during ingest, a re-send right after
/// a batch boundary was once admitted again (its key had been expired by a
/// sealer that had seen only older event times).
#[test]
fn a_concurrent_sealer_never_lets_a_duplicate_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eo = exactly_once(dir.path(), rules());
    let config = StoreConfig { seal_max_age_ms: 20, seal_interval_ms: 10, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(eo.clone())).expect("open");
    store.start_sealer().expect("sealer");
    let sent = oracle::stream();
    let mut accepted = 0;
    for batch in sent.chunks(1_000) {
        accepted += eo.ingest(&store, &EventBatch::from_events(batch)).expect("ingest").accepted;
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    let unique = oracle::dedupe(&sent).len();
    assert_eq!(accepted, unique, "ingest-time dedupe");
    store.seal_all().expect("seal");
    let stored: usize = store.snapshot().read_events().expect("read").iter().map(|b| b.num_rows()).sum();
    assert_eq!(stored, unique, "stored once each");
    store.close().expect("close");
}

/// A batch the store refuses because its head is full, after the
/// ingest-time dedupe check admitted its keys, is not remembered: sent
/// again once seals made room, it counts once, and the totals match the
/// oracle's.
#[test]
fn a_batch_refused_for_a_full_head_counts_once_when_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eo = exactly_once(dir.path(), rules());
    // Room for about one batch of 1,000 events.
    let config = StoreConfig { max_head_bytes: Some(100_000), ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(eo.clone())).expect("open");
    let sent = oracle::stream();
    let (mut accepted, mut duplicates, mut refusals) = (0, 0, 0);
    for batch in sent.chunks(1_000) {
        let batch = EventBatch::from_events(batch);
        let summary = match eo.ingest(&store, &batch) {
            Err(adstore_storage::StorageError::HeadFull { .. }) => {
                refusals += 1;
                store.seal_due().expect("seal under pressure");
                eo.ingest(&store, &batch).expect("room after the seal")
            }
            other => other.expect("ingest"),
        };
        accepted += summary.accepted;
        duplicates += summary.duplicates;
    }
    assert!(refusals > 0, "the head was full at least once");
    let unique = oracle::dedupe(&sent).len();
    assert_eq!((accepted, duplicates), (unique, sent.len() - unique), "refused batches left no keys behind");
    store.seal_all().expect("seal");
    let stored: usize = store.snapshot().read_events().expect("read").iter().map(|b| b.num_rows()).sum();
    assert_eq!(stored, unique);
    store.close().expect("close");
}

/// A last-touch click (no impression id) sealed while its impression, in
/// the bucket before, is still in the head is attributed: ingest indexes
/// impressions by id only, and the seal reads the head's earlier buckets
/// for impressions by user, so it sees every impression acknowledged
/// before the click, sealed or not.
#[test]
fn a_last_touch_click_sealed_before_its_impression_is_attributed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, eo) = open(dir.path(), rules());
    let edge = 10 * 3_600_000;
    let imp = user_impression("i1", edge - 10_000);
    let click = Event {
        event_id: "c1".into(),
        kind: EventType::Click,
        ts: edge + 10_000,
        impression_id: None,
        click_id: Some("c1".into()),
        ..imp.clone()
    };
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&imp))).expect("ingest");
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&click))).expect("ingest");
    // Seals the click's bucket alone (then re-seals it): the impression stays in the head.
    store.reseal_buckets(&[edge], SealKind::Reprocess).expect("seal the click's bucket");
    let snapshot = store.snapshot();
    assert_eq!(snapshot.head_rows(), 1, "the impression is still in the head");
    let sealed: Vec<Event> =
        snapshot.segments.iter().flat_map(|s| s.reader.read_batch().expect("read").events()).collect();
    assert_eq!(sealed.len(), 1);
    assert!(sealed[0].attributed, "{:?}", sealed[0]);
    assert_eq!(sealed[0].attributed_to.as_deref(), Some("i1"));
}

/// Issue 21, fault 3: a last-touch click (no `impression_id`) is
/// classified at ingest against every impression acknowledged before it,
/// also one of an earlier request still in the head, in another bucket.
#[test]
fn a_last_touch_click_sees_an_earlier_requests_head_impression_at_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, eo) = open(dir.path(), rules());
    let edge = 10 * 3_600_000;
    let imp = user_impression;
    let click = Event {
        event_id: "c1".into(),
        kind: EventType::Click,
        ts: edge + 10_000,
        impression_id: None,
        click_id: Some("c1".into()),
        ..imp("c1", 0)
    };
    // Two requests of impressions (the later one the last touch), then the click.
    eo.ingest(&store, &EventBatch::from_events(&[imp("i1", edge - 20_000)])).expect("ingest");
    eo.ingest(&store, &EventBatch::from_events(&[imp("i2", edge - 10_000)])).expect("ingest");
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&click))).expect("ingest");
    let snapshot = store.snapshot();
    assert_eq!(snapshot.head_rows(), 3, "nothing is sealed yet");
    let head: Vec<Event> =
        snapshot.head.iter().flat_map(|(_, chunk)| chunk.batch().expect("head chunk").events()).collect();
    let fresh = head.iter().find(|e| e.event_id == "c1").expect("the click is in the head");
    assert!(fresh.attributed, "{fresh:?}");
    assert_eq!(fresh.attributed_to.as_deref(), Some("i2"));
    assert_eq!(fresh.invalid_reason, InvalidReason::Valid);
}

/// The duplicate log (what the event trace reads) holds one record per
/// copy the oracle counts as a duplicate: caught at ingest, or, for copies
/// that reached the head past the ingest check (appended directly here, as
/// a replay after a crash may), by the exact check at seal.
#[test]
fn the_duplicate_log_holds_every_copy_caught_at_ingest_or_at_seal() {
    use adstore_ingest::{DuplicateLog, DuplicateStage, idempotency_key};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(DuplicateLog::open(&dir.path().join("duplicates"), 1 << 30).expect("log"));
    let dedupe = DedupeIndex::new(DedupeConfig::default());
    let eo = Arc::new(ExactlyOnce::new(Arc::new(dedupe), rules(), 86_400_000).with_duplicate_log(log.clone()));
    let config = StoreConfig { shards: 3, block_rows: 1024, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(eo.clone())).expect("open");
    let sent = oracle::stream();
    for batch in sent.chunks(997) {
        eo.ingest(&store, &EventBatch::from_events(batch)).expect("ingest");
    }
    // Copies of every 50th event straight into the head.
    let bypass: Vec<Event> = sent.iter().step_by(50).cloned().collect();
    store.append(&EventBatch::from_events(&bypass)).expect("append");
    store.seal_all().expect("seal");

    let key = |e: &Event| idempotency_key(&e.publisher_id, e.kind, &e.event_id);
    let mut copies: std::collections::HashMap<u128, (usize, usize)> = std::collections::HashMap::new();
    for e in &sent {
        copies.entry(key(e)).or_default().0 += 1;
    }
    for e in &bypass {
        copies.entry(key(e)).or_default().1 += 1;
    }
    let unique = oracle::dedupe(&sent).len();
    let at_ingest: usize = copies.values().map(|(sent, _)| sent - 1).sum();
    assert_eq!(at_ingest, sent.len() - unique, "every repeat in the stream is within the dedupe window");
    assert!(at_ingest > 0);
    for (k, (sent_copies, bypassed)) in &copies {
        let found = log.lookup(*k).expect("lookup");
        let stages = |s: DuplicateStage| found.arrivals.iter().filter(|a| a.stage == s).count();
        assert_eq!(
            (stages(DuplicateStage::Ingest), stages(DuplicateStage::Seal)),
            (sent_copies - 1, *bypassed),
            "key {k:x}"
        );
    }
    assert_eq!(log.stats().records as usize, at_ingest + bypass.len());
    store.close().expect("close");
}

/// A click backfilled into an old bucket that has closed, whose impression
/// expiry has dropped from the attribution index: its bucket's first seal
/// is not final at once (that would read the impression back from older
/// segments, which may be in the object store, while the head waits), so
/// it waits for its age as before, is sealed provisional, and finalization
/// reads the impression back and attributes the click. A click into a closed bucket whose anchors are
/// all in the index is sealed final at once.
#[test]
fn a_click_backfilled_into_a_closed_bucket_is_attributed_to_an_expired_impression_at_finalization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, eo) = open(dir.path(), rules());
    let hour = 3_600_000;
    let edge = 10 * hour;
    let imp = user_impression("i1", edge - 10_000);
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&imp))).expect("ingest");
    store.seal_all().expect("seal");
    // Ten days later: the impression's bucket closes and is finalized, and
    // expiry drops the impression from the index.
    let later = Event { event_id: "i2".into(), ts: edge + 240 * hour, impression_id: Some("i2".into()), ..imp.clone() };
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&later))).expect("ingest");
    store.seal_all().expect("seal");
    store.finalize_closed().expect("finalize");
    // A seal after the finalization expires what only the closed bucket needed.
    let last = Event { event_id: "i3".into(), ts: edge + 264 * hour, impression_id: Some("i3".into()), ..imp.clone() };
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&last))).expect("ingest");
    store.seal_all().expect("seal");

    let click = Event {
        event_id: "c1".into(),
        kind: EventType::Click,
        ts: edge + 10_000,
        click_id: Some("c1".into()),
        ..imp.clone()
    };
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&click))).expect("ingest");
    let click_segment = |store: &Store| {
        let snapshot = store.snapshot();
        let segment =
            snapshot.segments.iter().find(|s| s.meta.partition.bucket_start_ms == edge).expect("the click's segment");
        let stored: Vec<Event> = segment.reader.read_batch().expect("read").events();
        assert_eq!(stored.len(), 1);
        (segment.meta.is_final, stored[0].clone())
    };
    assert_eq!(store.seal_due().expect("seal").rows_in, 0, "not due at once: its first seal cannot be final");
    store.seal_all().expect("seal");
    let (is_final, _) = click_segment(&store);
    assert!(!is_final, "its impression left the index: the first seal is provisional");
    store.finalize_closed().expect("finalize");
    let (is_final, stored) = click_segment(&store);
    assert!(is_final);
    assert!(stored.attributed, "{stored:?}");
    assert_eq!(stored.attributed_to.as_deref(), Some("i1"));

    // A click ten seconds after a new impression, and an event a day later
    // that closes both their buckets, which have no segment yet: their
    // anchors are in the index, so each first seal is final at once, and
    // the click is attributed.
    let i4 = user_impression("i4", edge + 250 * hour - 10_000);
    let c2 = Event {
        event_id: "c2".into(),
        kind: EventType::Click,
        ts: edge + 250 * hour + 10_000,
        click_id: Some("c2".into()),
        impression_id: Some("i4".into()),
        ..i4.clone()
    };
    let closer = user_impression("i5", edge + 280 * hour);
    eo.ingest(&store, &EventBatch::from_events(&[i4, c2.clone(), closer])).expect("ingest");
    assert_eq!(store.seal_due().expect("seal").rows_in, 2, "the impression and the click, due at once");
    let snapshot = store.snapshot();
    let segment = snapshot
        .segments
        .iter()
        .find(|s| s.meta.partition.bucket_start_ms == edge + 250 * hour)
        .expect("the second click's segment");
    assert!(segment.meta.is_final, "anchors at hand: final at once");
    let stored = segment.reader.read_batch().expect("read").events();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].attributed_to.as_deref(), Some("i4"));
}
