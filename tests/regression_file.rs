//! The regression file of issue 21 (`tests/data/dedupe-regression.ndjson.zst`:
//! 222,660 lines, 218,231 distinct keys, three days of events with re-sends,
//! late arrivals, orphan and last-touch clicks, a click flood, and a last
//! batch that jumps days ahead with conversions), loaded in batches of
//! 10,000 lines as `adstore ingest` sends them, with seals and
//! finalization interleaved as the sealer runs them. Checked against the
//! independent oracle in `tests/oracle/`:
//!
//! - fresh: after every batch, the store holds each key once (no duplicate
//!   is ever counted, not even before a seal);
//! - provisional: every click or conversion whose anchor (by id) was
//!   acknowledged in an earlier request is attributed if the oracle says
//!   it is, in the head as in provisional segments;
//! - final: once every bucket has closed, every measure equals the oracle.

mod oracle;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use adstore_ingest::{AttributionRules, DedupeConfig, DedupeIndex, ExactlyOnce, ParseOptions, parse_ndjson};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig};

const LATENESS_MS: i64 = 86_400_000;
const BATCH_LINES: usize = 10_000;

fn file_batches() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dedupe-regression.ndjson.zst");
    let mut text = Vec::new();
    zstd::Decoder::new(std::fs::File::open(path).expect("open the regression file"))
        .expect("zstd")
        .read_to_end(&mut text)
        .expect("read the regression file");
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.chunks(BATCH_LINES).map(|c| c.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()).collect()
}

fn stored(store: &Store) -> Vec<Event> {
    store.snapshot().read_events().expect("read").iter().flat_map(|b| b.events()).collect()
}

type Key = (String, EventType, String);

fn key(e: &Event) -> Key {
    (e.publisher_id.clone(), e.kind, e.event_id.clone())
}

/// The batch (request) each event, impression id and click id first came in.
#[derive(Default)]
struct Arrivals {
    events: HashMap<Key, usize>,
    impressions: HashMap<String, usize>,
    clicks: HashMap<String, usize>,
}

impl Arrivals {
    fn note(&mut self, events: &[Event], request: usize) {
        for e in events {
            self.events.entry(key(e)).or_insert(request);
            match e.kind {
                EventType::Impression => e.impression_id.as_ref().map(|id| self.impressions.entry(id.clone())),
                EventType::Click => e.click_id.as_ref().map(|id| self.clicks.entry(id.clone())),
                EventType::Conversion => None,
            }
            .map(|entry| entry.or_insert(request));
        }
    }

    /// Whether the anchor `e` names by id came in a request before `e` did.
    fn anchor_came_first(&self, e: &Event) -> bool {
        let Some(&request) = self.events.get(&key(e)) else { return false };
        let came = match e.kind {
            EventType::Click => e.impression_id.as_ref().and_then(|id| self.impressions.get(id)),
            EventType::Conversion => e.click_id.as_ref().and_then(|id| self.clicks.get(id)),
            EventType::Impression => None,
        };
        came.is_some_and(|r| *r < request)
    }
}

/// Every stored click or conversion that the oracle attributes, and whose
/// anchor came (by id) in a request before its own, is attributed.
fn check_provisional(store: &Store, oracle: &HashMap<Key, bool>, arrivals: &Arrivals) {
    let mut missed = Vec::new();
    for e in stored(store) {
        let Some(&want) = oracle.get(&key(&e)) else { continue };
        if want && !e.attributed && arrivals.anchor_came_first(&e) {
            missed.push(format!("{}/{}/{}", e.publisher_id, e.kind.as_str(), e.event_id));
        }
    }
    assert!(missed.is_empty(), "{} events not attributed to anchors acknowledged before them: {:?}", missed.len(), {
        missed.truncate(10);
        missed
    });
}

#[test]
fn the_regression_file_counts_once_fresh_provisional_and_final() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eo = Arc::new(ExactlyOnce::new(
        Arc::new(DedupeIndex::new(DedupeConfig::default())),
        AttributionRules::default(),
        LATENESS_MS,
    ));
    let config = StoreConfig { fsync: false, allowed_lateness_ms: LATENESS_MS, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new().with_stage(eo.clone())).expect("open");

    let mut sent: Vec<Event> = Vec::new();
    let mut arrivals = Arrivals::default();
    let mut accepted = 0;
    let mut newest = i64::MIN;
    let batches = file_batches();
    for (i, body) in batches.iter().enumerate() {
        let opts = ParseOptions {
            now_ms: i64::MAX / 2,
            min_ts_ms: (newest != i64::MIN).then(|| newest - LATENESS_MS),
            ..ParseOptions::default()
        };
        let outcome = parse_ndjson(body, &opts);
        assert_eq!(outcome.rejected, 0, "batch {i}: {:?}", outcome.errors);
        let events: Vec<Event> = outcome.batches.iter().flat_map(|b| b.events()).collect();
        newest = newest.max(events.iter().map(|e| e.ts).max().unwrap_or(i64::MIN));
        arrivals.note(&events, i);
        sent.extend(events);
        accepted += eo.ingest_all(&store, &outcome.batches).expect("ingest").accepted;
        // Fresh: what is stored (head and segments) is every key once.
        let distinct = oracle::dedupe(&sent).len();
        assert_eq!(accepted, distinct, "batch {i}: accepted vs distinct keys so far");
        if i % 4 == 3 || i + 1 == batches.len() {
            assert_eq!(stored(&store).len(), distinct, "batch {i}: stored rows vs distinct keys so far");
        }
        // The sealer's work, interleaved: some passes seal, some finalize.
        if i % 3 == 1 {
            store.seal_all().expect("seal");
        }
        if i % 5 == 2 {
            store.finalize_closed().expect("finalize");
        }
    }
    assert_eq!(accepted, 218_231, "the file holds 218,231 distinct keys");

    let oracle_outcomes = oracle::outcomes(&sent, &oracle::Rules::default());
    let attributed: HashMap<Key, bool> = oracle_outcomes.iter().map(|o| (key(&o.event), o.attributed)).collect();
    // Provisional, in the head and then sealed.
    check_provisional(&store, &attributed, &arrivals);
    store.seal_all().expect("seal");
    check_provisional(&store, &attributed, &arrivals);

    // Final: one event two days newer closes every bucket of the file.
    let closer = Event {
        event_id: "closer".into(),
        kind: EventType::Impression,
        ts: newest + 2 * LATENESS_MS,
        publisher_id: "pub-closer".into(),
        advertiser_id: "adv-closer".into(),
        campaign_id: "cmp-closer".into(),
        ad_id: "ad-closer".into(),
        impression_id: Some("closer".into()),
        ..Event::default()
    };
    eo.ingest(&store, &EventBatch::from_events(std::slice::from_ref(&closer))).expect("ingest");
    sent.push(closer);
    store.seal_all().expect("seal");
    store.finalize_closed().expect("finalize");
    let outcomes = oracle::outcomes(&sent, &oracle::Rules::default());
    let count = |kind: EventType, pass: &dyn Fn(&oracle::Outcome) -> bool| {
        outcomes.iter().filter(|o| o.event.kind == kind && pass(o)).count()
    };
    eprintln!(
        "oracle: clicks {} attributed {} valid {}; conversions {} attributed {}",
        count(EventType::Click, &|_| true),
        count(EventType::Click, &|o| o.attributed),
        count(EventType::Click, &|o| o.reason.is_empty()),
        count(EventType::Conversion, &|_| true),
        count(EventType::Conversion, &|o| o.attributed),
    );
    let expected = oracle::report(&outcomes);
    let actual = oracle::report(&oracle::stored_outcomes(&store.snapshot().read_events().expect("read")));
    oracle::assert_same(&expected, &actual);
}
