use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use adstore_storage::EventType;

const H: i64 = 3_600_000;

#[test]
fn keys_are_scoped_by_publisher_and_type() {
    let a = idempotency_key("p1", EventType::Click, "e1");
    assert_ne!(a, idempotency_key("p2", EventType::Click, "e1"));
    assert_ne!(a, idempotency_key("p1", EventType::Impression, "e1"));
    assert_ne!(idempotency_key("ab", EventType::Click, "c"), idempotency_key("a", EventType::Click, "bc"));
    assert_eq!(a, idempotency_key("p1", EventType::Click, "e1"));
}

/// Keys are stored in `.keys` sidecars: the hash must never change.
#[test]
fn keys_are_pinned() {
    let long = "x".repeat(300);
    let got = [
        idempotency_key("pub-07", EventType::Impression, "i-42-0"),
        idempotency_key("", EventType::Conversion, ""),
        idempotency_key(&long, EventType::Click, &long),
    ];
    let want: [u128; 3] = [
        275602801121435503353490969606958634940,
        252325976123243896022857265417502198020,
        42143490801585804183104089417562216373,
    ];
    assert_eq!(got, want);
}

/// A request is checked for lateness against the event time before it,
/// so its re-sends of events from just before a jump in event time
/// (a load that ends with conversions days after the rest) must still
/// be found: the regression file of issue 21 admitted five such
/// re-sends as new events. Then, with event time moved on, the old
/// keys expire.
#[test]
fn a_jump_in_event_time_keeps_the_keys_its_own_request_repeats() {
    for jump_h in [70, 24 * 400] {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let k = |id: &str, ts: i64| (idempotency_key("p", EventType::Impression, id), ts);
        let t0 = 40 * H;
        assert_eq!(idx.admit(&[k("a", t0), k("b", t0 + 1)]), vec![false, false]);
        let later = t0 + jump_h * H;
        let verdicts = idx.admit(&[k("a", t0), k("c", later), k("b", t0 + 1)]);
        assert_eq!(verdicts, vec![true, false, true], "re-sends in the request that jumps ({jump_h} h)");
        // Once the request is done, the keys older than the retention
        // behind the new time expire; the next request is checked for
        // lateness against that time.
        assert_eq!(idx.stats().keys, 1, "a and b expired after time moved {jump_h} h on");
        assert_eq!(idx.admit(&[k("c", later), k("d", later + 1)]), vec![true, false]);
    }
}

/// A request checked for lateness before another one jumped days ahead
/// still finds the keys of its re-sends, while it holds them.
#[test]
fn a_hold_keeps_the_keys_a_request_was_checked_against() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let k = |id: &str, ts: i64| (idempotency_key("p", EventType::Impression, id), ts);
    let t0 = 40 * H;
    assert_eq!(idx.admit(&[k("a", t0)]), vec![false]);
    let hold = idx.hold();
    hold.checked_against(t0);
    // Another request jumps 70 h ahead; its sweep runs after its pass.
    assert_eq!(idx.admit(&[k("far", t0 + 70 * H)]), vec![false]);
    assert_eq!(idx.expire(t0 + 70 * H), 0, "held keys stay");
    assert_eq!(idx.admit(&[k("a", t0)]), vec![true], "the held request's re-send is a duplicate");
    drop(hold);
    idx.expire(t0 + 71 * H);
    assert_eq!(idx.stats().keys, 1, "released, the old key expires");
}

#[test]
fn admit_claim_forget() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let k = |n: u64| (idempotency_key("p", EventType::Click, &n.to_string()), 10 * H);
    assert_eq!(idx.admit(&[k(1), k(2), k(1)]), vec![false, false, true]);
    assert_eq!(idx.admit(&[k(2), k(3)]), vec![true, false]);
    idx.forget(&[k(3)]);
    assert_eq!(idx.admit(&[k(3)]), vec![false], "a forgotten key may be admitted again");
    // Seal: first claim wins, a second claim of the same key is a duplicate.
    assert_eq!(idx.claim(&[k(1), k(2), k(2)]), vec![false, false, true]);
    assert_eq!(idx.claim(&[k(1)]), vec![true]);
    idx.unclaim(&[k(1)]);
    assert_eq!(idx.claim(&[k(1)]), vec![false]);
    // Sealed keys are still duplicates at ingest, and cannot be forgotten.
    idx.forget(&[k(1)]);
    assert_eq!(idx.admit(&[k(1)]), vec![true]);
}

#[test]
fn window_and_expiry() {
    let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
    let idx = DedupeIndex::new(cfg);
    let key = idempotency_key("p", EventType::Impression, "x");
    assert_eq!(idx.admit(&[(key, 0)]), vec![false]);
    assert_eq!(idx.admit(&[(key, 20 * H)]), vec![true], "inside the window");
    assert_eq!(idx.stats().keys, 1);
    assert_eq!(idx.expire(30 * H), 0, "kept for window + lateness");
    assert_eq!(idx.expire(50 * H), 1);
    assert_eq!(idx.stats().keys, 0);
    assert_eq!(idx.admit(&[(key, 50 * H)]), vec![false]);
}

#[test]
fn steady_ingest_over_many_tag_wraps_keeps_verdicts_and_bounds_the_table() {
    // No sealer: only ingest's own sweeps keep tags unambiguous.
    let cfg = DedupeConfig::default();
    let epoch = cfg.epoch_ms();
    let idx = DedupeIndex::new(cfg);
    let key = |e: i64| idempotency_key("p", EventType::Impression, &e.to_string());
    for e in 0..400i64 {
        assert_eq!(idx.admit(&[(key(e), e * epoch)]), vec![false], "epoch {e} is new");
        if e >= 30 {
            // A re-send 30 epochs (24 h) later, inside the window.
            assert_eq!(idx.admit(&[(key(e - 30), (e - 30) * epoch)]), vec![true], "re-send at epoch {e}");
        }
        if e >= 130 {
            // Long expired: new again, never mistaken for a recent key.
            assert_eq!(idx.admit(&[(key(e - 130), (e - 130) * epoch)]), vec![false], "old re-send at epoch {e}");
            idx.forget(&[(key(e - 130), (e - 130) * epoch)]);
        }
        // Live keys span 61 epochs, plus up to 16 epochs between sweeps.
        assert!(idx.stats().keys <= 80, "{} keys at epoch {e}", idx.stats().keys);
    }
}

#[test]
fn keys_newer_than_the_last_expiry_time_are_kept() {
    // The sealer may expire with an older "newest" than ingest has seen.
    let idx = DedupeIndex::new(DedupeConfig::default());
    let key = idempotency_key("p", EventType::Impression, "late-sealer");
    assert_eq!(idx.admit(&[(key, 100 * H)]), vec![false]);
    assert_eq!(idx.expire(10 * H), 0);
    assert_eq!(idx.admit(&[(key, 100 * H)]), vec![true]);
    // Long idle, then far newer traffic: old keys never alias as recent.
    let key2 = idempotency_key("p", EventType::Impression, "ancient");
    assert_eq!(idx.admit(&[(key2, 101 * H)]), vec![false]);
    let fresh = idempotency_key("p", EventType::Impression, "fresh");
    assert_eq!(idx.admit(&[(fresh, 101 * H + 200 * 24 * H)]), vec![false]);
    assert_eq!(idx.admit(&[(key2, 101 * H + 200 * 24 * H)]), vec![false], "an expired key is new again");
}

#[test]
fn memory_per_key_stays_under_budget() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let mut worst: f64 = 0.0;
    for batch in 0..40u64 {
        let keys: Vec<(u128, i64)> =
            (0..5_000).map(|i| (idempotency_key("p", EventType::Impression, &format!("{batch}-{i}")), 0)).collect();
        idx.admit(&keys);
        worst = worst.max(idx.stats().bytes_per_key());
    }
    assert_eq!(idx.stats().keys, 200_000);
    assert!(worst <= 24.0, "bytes per key peaked at {worst}");
}

#[test]
fn expected_keys_are_room_from_the_start_and_a_floor() {
    const EXPECTED: usize = 100_000;
    let cfg = DedupeConfig { expected_keys: EXPECTED, ..DedupeConfig::default() };
    let idx = DedupeIndex::new(cfg);
    let sized = idx.stats().table_bytes;
    assert!(sized as f64 >= EXPECTED as f64 * 16.0 / PRESIZED_LOAD, "table of {sized} bytes");
    assert_eq!(cfg.expected_table_bytes(), sized);
    let keys = |from: usize, n: usize, ts: i64| -> Vec<(u128, i64)> {
        (from..from + n).map(|i| (idempotency_key("p", EventType::Impression, &i.to_string()), ts)).collect()
    };
    for batch in 0..10 {
        let verdicts = idx.admit(&keys(batch * EXPECTED / 10, EXPECTED / 10, 0));
        assert!(verdicts.iter().all(|dup| !dup), "fresh keys are not duplicates");
        assert_eq!(idx.stats().table_bytes, sized, "the table grew before the expected keys were in");
    }
    assert_eq!(idx.stats().keys, EXPECTED as u64);
    assert!(idx.admit(&keys(0, 10, 0)).iter().all(|dup| *dup), "the keys are remembered");
    // Expiring every key keeps the table at its expected size.
    let far = 10 * (cfg.window_ms + cfg.allowed_lateness_ms);
    assert_eq!(idx.expire(far), EXPECTED as u64);
    assert_eq!(idx.stats().keys, 0);
    assert_eq!(idx.stats().table_bytes, sized, "the sweep shrank the table below its floor");
    // More keys than expected: it grows as usual.
    idx.admit(&keys(0, 2 * EXPECTED, far));
    assert!(idx.stats().table_bytes > sized);
    assert_eq!(idx.stats().keys, 2 * EXPECTED as u64);
}

#[test]
fn an_announcement_leaves_a_table_its_keys_grew_when_they_fit() {
    // Grown by its keys alone, a table is 0.68-0.85 full. An
    // announcement of a few more keys fits within the maximum load, so
    // it must not copy the table (sized ahead, a table targets a lower
    // load; growing to that at every announcement copied the whole
    // table for each 5% of keys).
    let idx = DedupeIndex::new(DedupeConfig::default());
    for from in (0..3_000_000).step_by(10_000) {
        let keys: Vec<(u128, i64)> =
            (from..from + 10_000).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect();
        idx.admit(&keys);
    }
    let resize = idx.reserve_announced(1_000, 1 << 40);
    assert_eq!(resize.from_bytes, resize.to_bytes, "{resize:?} for 1,000 more keys on {:?}", idx.stats());
}

#[test]
fn an_announced_load_grows_the_table_once_and_within_its_limit() {
    const LOAD: usize = 200_000;
    const REQUEST: usize = 5_000;
    let keys = |from: usize| -> Vec<(u128, i64)> {
        (from..from + REQUEST).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect()
    };
    let no_limit = 1 << 40;
    let idx = DedupeIndex::new(DedupeConfig::default());
    // Each request announces the events still to come, its own included.
    let first = idx.reserve_announced(LOAD, no_limit);
    assert_eq!(first.from_bytes, 0);
    let sized = first.to_bytes;
    assert!(sized as f64 >= LOAD as f64 * 16.0 / PRESIZED_LOAD, "room for the whole load: {sized} bytes");
    for from in (0..LOAD).step_by(REQUEST) {
        let resize = idx.reserve_announced(LOAD - from, no_limit);
        assert_eq!(resize, TableResize { from_bytes: sized, to_bytes: sized }, "announcing the rest grew the table");
        assert!(idx.admit(&keys(from)).iter().all(|dup| !dup));
    }
    assert_eq!(idx.stats(), DedupeStats { keys: LOAD as u64, table_bytes: sized });
    assert!(idx.admit(&keys(0)).iter().all(|dup| *dup), "the keys are remembered");

    // Requests of one load arrive out of order, so announcements
    // overshoot by a few requests: that alone does not copy the table,
    // nor does any announcement the table holds within the maximum
    // load (it is sized for less); one past that grows it.
    let other = DedupeIndex::new(DedupeConfig::default());
    let sized = other.reserve_announced(LOAD, no_limit).to_bytes;
    assert_eq!(other.reserve_announced(LOAD + LOAD / 50, no_limit).to_bytes, sized);
    assert_eq!(other.reserve_announced(LOAD + LOAD / 10, no_limit).to_bytes, sized);
    assert!(other.reserve_announced(LOAD + LOAD / 2, no_limit).to_bytes > sized);
}

#[test]
fn an_announcement_never_sizes_the_table_past_its_limit() {
    const REQUEST: usize = 5_000;
    let keys = |from: usize| -> Vec<(u128, i64)> {
        (from..from + REQUEST).map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 0)).collect()
    };
    let limit: u64 = 1 << 20;
    // From empty: up to the limit and no further.
    let empty = DedupeIndex::new(DedupeConfig::default());
    let resize = empty.reserve_announced(1_000_000_000, limit);
    assert!(resize.to_bytes <= limit && resize.to_bytes * 10 >= limit * 9, "{resize:?} for a limit of {limit}");
    // From a table that grew by itself to just under the limit: an
    // announcement does not take it over (a 1.25x step would).
    let grown = DedupeIndex::new(DedupeConfig::default());
    let mut from = 0;
    while grown.stats().table_bytes * 5 < limit * 4 {
        assert!(grown.admit(&keys(from)).iter().all(|dup| !dup));
        from += REQUEST;
    }
    let resize = grown.reserve_announced(1_000_000_000, limit);
    assert!(resize.to_bytes <= limit, "{resize:?} for a limit of {limit}");
    // Keys that do arrive still grow it, within the usual bytes per key.
    for _ in 0..20 {
        assert!(grown.admit(&keys(from)).iter().all(|dup| !dup));
        from += REQUEST;
    }
    assert!(grown.stats().table_bytes > limit);
    assert!(grown.stats().bytes_per_key() <= 24.0, "{:?}", grown.stats());
}

#[test]
fn a_retry_waits_for_the_first_request_to_settle() {
    let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
    let key = [(idempotency_key("p", EventType::Click, "e"), 0i64)];
    let (verdicts, first) = idx.admit_durable(&key, std::time::Duration::from_secs(1)).expect("admitted");
    assert_eq!(verdicts, vec![false]);
    // While in flight, a retry cannot get an answer.
    assert!(idx.admit_durable(&key, std::time::Duration::from_millis(20)).is_none());
    let waiter = {
        let idx = idx.clone();
        std::thread::spawn(move || idx.admit_durable(&key, std::time::Duration::from_secs(10)))
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The first append failed: the retry is admitted as new.
    idx.settle(first, &key, false);
    let (verdicts, retry) = waiter.join().expect("thread").expect("admitted after the settle");
    assert_eq!(verdicts, vec![false]);
    idx.settle(retry, &key, true);
    assert_eq!(idx.admit_durable(&key, std::time::Duration::from_secs(1)).map(|(v, _)| v), Some(vec![true]));
}

#[test]
fn a_waiting_request_holds_none_of_its_keys() {
    let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
    let long = std::time::Duration::from_secs(10);
    let key = |id: &str| (idempotency_key("p", EventType::Click, id), 0i64);
    let (a, b) = (key("a"), key("b"));
    let (_, first) = idx.admit_durable(&[a], long).expect("a admitted");
    let waiter = {
        let idx = idx.clone();
        std::thread::spawn(move || {
            let (verdicts, flight) = idx.admit_durable(&[b, a], long).expect("admitted in the end");
            idx.settle(flight, &[], true);
            verdicts
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The waiter holds neither b nor a: b goes to another request at once.
    let (verdicts, third) = idx.admit_durable(&[b], std::time::Duration::from_millis(100)).expect("b is free");
    assert_eq!(verdicts, vec![false]);
    idx.settle(first, &[a], true);
    std::thread::sleep(std::time::Duration::from_millis(20));
    idx.settle(third, &[b], true);
    assert_eq!(waiter.join().expect("thread"), vec![true, true], "both stored by the others");
}

/// How long a test lets a request wait for another's keys.
pub(crate) const SHORT: std::time::Duration = std::time::Duration::from_millis(20);

/// An index holding one key, admitted and sealed at time 0.
fn index_with_a_sealed_key() -> (DedupeIndex, u128) {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let k = idempotency_key("p", EventType::Click, "k");
    assert_eq!(idx.admit(&[(k, 0)]), vec![false]);
    assert_eq!(idx.claim(&[(k, 0)]), vec![false], "a seal claims it");
    (idx, k)
}

#[test]
fn a_sealed_key_taken_again_after_the_window_is_in_flight_like_any_other() {
    let (idx, k) = index_with_a_sealed_key();
    // The same id 30 h later is a new event, in flight until settled:
    // its retry waits instead of being told it is a duplicate.
    let later = [(k, 30 * H)];
    let (verdicts, first) = idx.admit_durable(&later, SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false]);
    assert!(idx.admit_durable(&later, SHORT).is_none(), "the retry waits");
    idx.settle(first, &later, true);
    assert_eq!(idx.admit_durable(&later, SHORT).map(|(v, _)| v), Some(vec![true]));
}

#[test]
fn a_blocked_request_changes_nothing_it_found() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    // Ids whose shards put the key in flight last in the pass, so a pass
    // that wrote as it went would have written the two found keys.
    let find_key = |name: &str, fits: &dyn Fn(usize) -> bool| {
        (0..)
            .map(|i| idempotency_key("p", EventType::Click, &format!("{name}{i}")))
            .find(|k| fits(idx.shard_of(*k)))
            .expect("some id fits")
    };
    let pending = find_key("pending", &|s| s < SHARDS / 4);
    let sealed = find_key("sealed", &|s| s < SHARDS / 4);
    let busy = find_key("busy", &|s| s > SHARDS / 2);
    assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![false, false]);
    assert_eq!(idx.claim(&[(sealed, 0)]), vec![false]);
    let (_, other) = idx.admit_durable(&[(busy, 0)], SHORT).expect("admitted");
    // Both found keys 30 h on (outside the window), behind a key in flight.
    let request = [(pending, 30 * H), (sealed, 30 * H), (busy, 0)];
    assert!(idx.admit_durable(&request, SHORT).is_none());
    // Nothing it found was touched: the first copies are still duplicates.
    let first_copies = [(pending, 0), (sealed, 0)];
    assert_eq!(idx.admit_durable(&first_copies, SHORT).map(|(v, _)| v), Some(vec![true, true]));
    idx.settle(other, &[(busy, 0)], true);
    let (verdicts, _) = idx.admit_durable(&request, SHORT).expect("admitted once the other settled");
    assert_eq!(verdicts, vec![false, false, true], "new, new, and a duplicate of the settled request");
}

#[test]
fn a_failed_request_gives_back_what_it_found() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let key = |id: &str| idempotency_key("p", EventType::Click, id);
    let (pending, sealed, twice) = (key("pending"), key("sealed"), key("twice"));
    assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![false, false]);
    assert_eq!(idx.claim(&[(sealed, 0)]), vec![false]);
    // 30 h on: new events with the same ids, and one id twice, 30 h apart.
    let request = [(pending, 30 * H), (sealed, 30 * H), (twice, 0), (twice, 30 * H)];
    let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false; 4]);
    idx.settle(flight, &request, false);
    // The append failed: the first copies are still duplicates, and
    // every event of the request is new again.
    assert_eq!(idx.admit(&[(pending, 0), (sealed, 0)]), vec![true, true]);
    let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false; 4], "a retry of the failed request is new");
    idx.settle(flight, &request, true);
}

#[test]
fn a_failed_request_keeps_a_key_it_found_whose_top_bits_match_one_it_added() {
    // `a` and `b` share bits 96..128: their fingerprints differed only
    // there when flight tables held 32-bit fingerprints, and the failed
    // request then took `b`, found pending from an earlier request, for
    // a key of its own and forgot it (found by a review).
    let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
    let idx = DedupeIndex::new(cfg);
    let top: u128 = 0x9E37_79B9 << 96;
    let a = top | 0x1111_2222_3333_4444_5555_6600;
    let b = top | 0x7777_8888_9999_AAAA_BBBB_CC00;
    assert_eq!(idx.admit(&[(b, 0)]), vec![false]);
    let request = [(a, 40 * H), (b, 40 * H)];
    let (verdicts, flight) = idx.admit_durable(&request, SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false, false]);
    idx.settle(flight, &request, false);
    assert_eq!(idx.stats().keys, 1, "b stays in the index");
    assert_eq!(idx.admit(&[(b, 0)]), vec![true], "b's first event is still a duplicate");
}

#[test]
fn a_sweep_passes_over_shards_with_nothing_expired_and_still_drops_every_expired_key() {
    let cfg = DedupeConfig { window_ms: 24 * H, allowed_lateness_ms: 24 * H, expected_keys: 0 };
    let idx = DedupeIndex::new(cfg);
    let fillers: Vec<(u128, i64)> =
        (0..2000).map(|i| (idempotency_key("p", EventType::Click, &format!("f{i}")), 0)).collect();
    let old = idempotency_key("p", EventType::Click, "old");
    assert!(idx.admit(&fillers).iter().all(|dup| !dup));
    assert_eq!(idx.admit(&[(old, 0)]), vec![false]);
    // Within retention every shard is passed over, and nothing dropped.
    assert_eq!(idx.expire(40 * H), 0);
    // A re-send outside the window, in flight while a sweep at 60 h
    // drops the fillers (one in every shard) and keeps it at 50 h.
    let (verdicts, flight) = idx.admit_durable(&[(old, 50 * H)], SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false]);
    assert_eq!(idx.expire(60 * H), 2000);
    // Its append fails: the key gets back its time of 0 h, long expired,
    // and the next sweep drops it although its shard noted only 50 h.
    idx.settle(flight, &[(old, 50 * H)], false);
    assert_eq!(idx.expire(62 * H), 1);
    assert_eq!(idx.stats().keys, 0);
    assert_eq!(idx.admit(&[(old, 62 * H)]), vec![false]);
}

#[test]
fn an_undo_keeps_what_a_seal_did_meanwhile() {
    let (idx, k) = index_with_a_sealed_key();
    let later = [(k, 30 * H)];
    let (_, flight) = idx.admit_durable(&later, SHORT).expect("admitted");
    // The seal aborts (its claim undone), then the later request fails.
    idx.unclaim(&[(k, 0)]);
    idx.settle(flight, &later, false);
    // The first event is pending again, at its own time: a re-send is a
    // duplicate, and the next seal claims it.
    assert_eq!(idx.admit(&[(k, 0)]), vec![true]);
    assert_eq!(idx.claim(&[(k, 0)]), vec![false]);
}

/// Requests over a few shared keys, from several threads, some of whose
/// appends fail: every key ends up stored by exactly one request that
/// saw it as new, and never by two.
#[test]
fn concurrent_requests_store_each_key_once_whatever_fails() {
    let idx = std::sync::Arc::new(DedupeIndex::new(DedupeConfig::default()));
    let stored = std::sync::Arc::new(Mutex::new(HashMap::<u128, usize>::new()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (idx, stored) = (idx.clone(), stored.clone());
            std::thread::spawn(move || {
                let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for _ in 0..300 {
                    let keys: Vec<(u128, i64)> = (0..1 + next() % 8)
                        .map(|_| (idempotency_key("p", EventType::Impression, &(next() % 40).to_string()), 0))
                        .collect();
                    let (dup, flight) =
                        idx.admit_durable(&keys, std::time::Duration::from_secs(20)).expect("no deadlock");
                    let fresh: Vec<(u128, i64)> =
                        keys.iter().zip(&dup).filter(|(_, d)| !**d).map(|(k, _)| *k).collect();
                    let ok = next() % 4 != 0;
                    // In flight for a moment, as an append is.
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    if ok {
                        let mut s = stored.lock();
                        for (k, _) in &fresh {
                            *s.entry(*k).or_default() += 1;
                        }
                    }
                    idx.settle(flight, &fresh, ok);
                    // A duplicate answer is only given for a key already
                    // stored, or repeated earlier in the same request.
                    let s = stored.lock();
                    for (i, ((k, _), d)) in keys.iter().zip(&dup).enumerate() {
                        let repeat = keys[..i].iter().any(|(e, _)| e == k);
                        assert!(!d || repeat || s.contains_key(k), "duplicate of a key never stored");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let stored = stored.lock();
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    assert_eq!(stored.len(), 40, "every key was stored in the end");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The table behaves like a set under random admits, forgets and expiry-free use.
    #[test]
    fn table_matches_a_hash_set(ops in prop::collection::vec((0u8..3, 0u64..300), 1..2000)) {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let mut model: HashMap<u128, bool> = HashMap::new(); // key -> sealed
        for (op, n) in ops {
            let key = (idempotency_key("p", EventType::Click, &n.to_string()), 5 * H);
            match op {
                0 => {
                    let dup = idx.admit(&[key])[0];
                    prop_assert_eq!(dup, model.contains_key(&key.0));
                    model.entry(key.0).or_insert(false);
                }
                1 => {
                    idx.forget(&[key]);
                    if model.get(&key.0) == Some(&false) {
                        model.remove(&key.0);
                    }
                }
                _ => {
                    let dup = idx.claim(&[key])[0];
                    prop_assert_eq!(dup, model.get(&key.0) == Some(&true));
                    model.insert(key.0, true);
                }
            }
            prop_assert_eq!(idx.stats().keys, model.len() as u64);
        }
    }

    /// A flight table holds the keys put in it, and a reused one holds
    /// none of its earlier keys; tables of several sizes share a spare
    /// list. A key not put in is held only if its fingerprint is that
    /// of a key put in.
    #[test]
    fn flight_tables_hold_their_keys_and_forget_them_when_reused(
        rounds in prop::collection::vec((1usize..3000, 0u64..4), 1..8)
    ) {
        let mut spare = Vec::new();
        for (n, seed) in rounds {
            let keys: Vec<u128> = (0..n as u64)
                .map(|i| idempotency_key("p", EventType::Click, &(seed * 10_000 + i).to_string()))
                .collect();
            let (put, other) = keys.split_at(n / 2);
            let mut table = FlightKeys::for_keys(n, &mut spare);
            for &k in put {
                table.insert(k);
            }
            let prints: HashSet<u64> = put.iter().map(|&k| table.place(k).0).collect();
            for &k in put {
                prop_assert!(table.may_hold(k));
            }
            for &k in other {
                prop_assert_eq!(table.may_hold(k), prints.contains(&table.place(k).0));
            }
            spare.push(table);
        }
    }

    /// Whole batches (keys spread over every shard, repeats within a
    /// batch) get the verdicts of taking their keys one by one.
    #[test]
    fn batches_match_a_hash_set(
        batches in prop::collection::vec((any::<bool>(), prop::collection::vec(0u64..400, 0..300)), 1..20),
    ) {
        let idx = DedupeIndex::new(DedupeConfig::default());
        let mut model: HashMap<u128, bool> = HashMap::new(); // key -> sealed
        for (claim, ns) in batches {
            let keys: Vec<(u128, i64)> =
                ns.iter().map(|n| (idempotency_key("p", EventType::Click, &n.to_string()), 5 * H)).collect();
            let got = if claim { idx.claim(&keys) } else { idx.admit(&keys) };
            let mut seen_here = std::collections::HashSet::new();
            let want: Vec<bool> = keys
                .iter()
                .map(|(k, _)| {
                    let first = seen_here.insert(*k);
                    if claim {
                        let dup = !first || model.get(k) == Some(&true);
                        model.insert(*k, true);
                        dup
                    } else {
                        let dup = model.contains_key(k);
                        model.entry(*k).or_insert(false);
                        dup
                    }
                })
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(idx.stats().keys, model.len() as u64);
        }
    }
}

/// An id reused more than the window after its first copy was sealed is a
/// new event: admitted at ingest and kept by the seal's claim, not dropped
/// as a duplicate of the sealed copy (which would lose an acknowledged event).
#[test]
fn a_key_reused_outside_the_window_of_a_sealed_copy_is_kept_by_the_seal() {
    let (idx, k) = index_with_a_sealed_key();
    assert_eq!(idx.admit(&[(k, 30 * H)]), vec![false], "outside the 24 h window: new");
    assert_eq!(idx.claim(&[(k, 30 * H)]), vec![false], "the seal keeps it");
    assert_eq!(idx.admit(&[(k, 30 * H + 1)]), vec![true], "and a re-send of it is a duplicate");
}

/// A request whose append stored only its first entries: a key both in a
/// stored entry and in a lost one (re-used outside the window) keeps the
/// stored entry's time, so a retry of the whole request repeats the stored
/// entry and admits the lost one.
#[test]
fn a_part_stored_request_undoes_only_what_its_lost_entries_did() {
    let idx = DedupeIndex::new(DedupeConfig::default());
    let k = idempotency_key("p", EventType::Click, "k");
    let other = idempotency_key("p", EventType::Click, "other");
    let keys = [(k, 0), (other, 0), (k, 30 * H)];
    let (verdicts, flight) = idx.admit_durable(&keys, SHORT).expect("admitted");
    assert_eq!(verdicts, vec![false, false, false]);
    let admitted: Vec<(usize, (u128, i64))> = keys.iter().copied().enumerate().collect();
    // Entries 0 and 1 stored, entry 2 lost.
    idx.settle_stored(flight, &admitted, 2);
    let (verdicts, flight) = idx.admit_durable(&keys, SHORT).expect("retry admitted");
    assert_eq!(verdicts, vec![true, true, false], "the stored entries repeat, the lost one is new");
    idx.settle(flight, &[(k, 30 * H)], true);
}

/// `kept_from` is where expiry stops: a key at it survives a sweep at
/// `newest`, a key one epoch before it does not.
#[test]
fn kept_from_matches_what_expiry_keeps() {
    let config = DedupeConfig::default();
    let newest = 48 * H + 30 * 60_000;
    let floor = config.kept_from(newest);
    assert!(floor <= newest - config.window_ms - config.allowed_lateness_ms);
    let idx = DedupeIndex::new(config);
    let at = |id: &str| idempotency_key("p", EventType::Click, id);
    idx.admit(&[(at("kept"), floor), (at("gone"), floor - 48 * 60_000)]);
    idx.admit(&[(at("newest"), newest)]);
    idx.expire(newest);
    assert_eq!(idx.admit(&[(at("kept"), floor)]), vec![true], "kept at the floor");
    assert_eq!(idx.admit(&[(at("gone"), floor - 48 * 60_000)]), vec![false], "expired before it");
}

/// What a test does to two indexes at once.
#[derive(Debug, Clone)]
enum Op {
    /// Events (id, event time in 10-minute steps from the newest so far).
    Admit(Vec<(u16, i64)>),
    /// A seal of the oldest `take` pending events, committed or aborted.
    Seal {
        take: usize,
        commit: bool,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0u16..400, -144i64..6), 1..30).prop_map(Op::Admit),
        2 => (1usize..60, prop::bool::weighted(0.8)).prop_map(|(take, commit)| Op::Seal { take, commit }),
        1 => Just(Op::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// An index that writes its sealed keys to runs on disk every few keys
    /// gives every answer an index holding every key in memory gives:
    /// admits and claims over days of event time with late events, seals
    /// that abort, expiry, and runs merged on the way.
    #[test]
    fn a_spilling_index_answers_like_one_in_memory(ops in prop::collection::vec(op(), 1..120), spill_keys in 1usize..40) {
        let dir = tempfile::tempdir().expect("dir");
        let memory = DedupeIndex::new(DedupeConfig::default());
        let spilling = DedupeIndex::with_spill(DedupeConfig::default(), dir.path(), spill_keys);
        const STEP: i64 = 600_000;
        let mut now = 1_000i64;
        let mut pending: Vec<(u128, i64)> = Vec::new();
        for op in ops {
            match op {
                Op::Admit(events) => {
                    let keys: Vec<(u128, i64)> = events
                        .iter()
                        .map(|&(id, d)| {
                            now = now.max(now + d);
                            let ts = (now + d.min(0)) * STEP;
                            (idempotency_key("p", EventType::Click, &id.to_string()), ts)
                        })
                        .collect();
                    let want = memory.admit(&keys);
                    prop_assert_eq!(&spilling.admit(&keys), &want, "admit {:?}", keys);
                    pending.extend(keys.iter().zip(&want).filter(|(_, d)| !**d).map(|(k, _)| *k));
                }
                Op::Seal { take, commit } => {
                    let sealed: Vec<(u128, i64)> = pending.drain(..take.min(pending.len())).collect();
                    let want = memory.claim(&sealed);
                    prop_assert_eq!(&spilling.claim(&sealed), &want, "claim");
                    if commit {
                        for idx in [&memory, &spilling] {
                            idx.claim_done();
                            idx.spill_if_due().expect("spill");
                        }
                    } else {
                        let claimed: Vec<(u128, i64)> =
                            sealed.iter().zip(&want).filter(|(_, d)| !**d).map(|(k, _)| *k).collect();
                        for idx in [&memory, &spilling] {
                            idx.unclaim(&claimed);
                            idx.claim_done();
                        }
                        pending.splice(0..0, claimed);
                    }
                }
                Op::Expire => {
                    memory.expire(now * STEP);
                    spilling.expire(now * STEP);
                }
            }
        }
        // Every key held in memory by one is in the other's memory or runs.
        let s = spilling.stats();
        prop_assert!(s.keys <= memory.stats().keys);
    }
}

/// Once sealed keys are written to runs, memory holds a few bytes per
/// key, and the runs still find every duplicate.
#[test]
fn spilled_keys_cost_little_memory_and_are_still_found() {
    let dir = tempfile::tempdir().expect("dir");
    let idx = DedupeIndex::with_spill(DedupeConfig::default(), dir.path(), 100_000);
    let keys: Vec<(u128, i64)> = (0..1_000_000u32)
        .map(|i| (idempotency_key("p", EventType::Impression, &i.to_string()), 40 * H + i64::from(i)))
        .collect();
    for chunk in keys.chunks(50_000) {
        assert!(idx.admit(chunk).iter().all(|d| !d));
        assert!(idx.claim(chunk).iter().all(|d| !d));
        idx.claim_done();
        idx.spill_if_due().expect("spill");
    }
    let (table, runs) = (idx.stats(), idx.spilled_stats());
    assert!(runs.keys >= 900_000, "{runs:?}");
    assert!(runs.runs <= 6, "runs merge: {runs:?}");
    let per_key = (table.table_bytes + runs.memory_bytes) as f64 / 1_000_000.0;
    assert!(per_key <= 4.0, "{per_key} bytes of memory per key: {table:?} {runs:?}");
    assert!(idx.admit(&keys).iter().all(|d| *d), "every re-send is a duplicate");
    assert!(idx.claim(&keys).iter().all(|d| *d), "and the seal's check drops it");
    idx.claim_done();
    // A seal that aborts leaves nothing on disk: its keys stay pending.
    let late = [(idempotency_key("p", EventType::Impression, "new"), 41 * H)];
    assert_eq!(idx.admit(&late), vec![false]);
    assert_eq!(idx.claim(&late), vec![false]);
    idx.unclaim(&late);
    idx.claim_done();
    assert_eq!(idx.claim(&late), vec![false], "still pending, claimed again");
    idx.claim_done();
}

/// A load acknowledged ahead of its seals (a full head of pending keys,
/// sealed later in place) still leaves memory: spills count sealed keys,
/// not the table's growth, which stops once the load ends.
#[test]
fn keys_sealed_after_the_load_ends_still_go_to_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let idx = DedupeIndex::with_spill(DedupeConfig::default(), dir.path(), 1_000);
    let keys: Vec<(u128, i64)> = (0..20_000u32)
        .map(|i| (idempotency_key("p", EventType::Click, &i.to_string()), 40 * H + i64::from(i)))
        .collect();
    assert!(idx.admit(&keys).iter().all(|d| !d), "the whole load is acknowledged first");
    for chunk in keys.chunks(500) {
        assert!(idx.claim(chunk).iter().all(|d| !d));
        idx.claim_done();
        idx.spill_if_due().expect("spill");
    }
    let (table, runs) = (idx.stats(), idx.spilled_stats());
    assert!(table.keys <= 1_000, "at most a spill's worth of sealed keys stays in memory: {table:?} {runs:?}");
    assert!(runs.keys >= 19_000, "{runs:?}");
    assert!(idx.admit(&keys).iter().all(|d| *d), "every re-send is a duplicate");
}
