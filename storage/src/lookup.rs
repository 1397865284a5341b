//! Whole events found by id or by identity, with where each is stored: the
//! reads behind the event trace.
//!
//! ```text
//!  filters (event_id, click_id, user_key …) ─► Snapshot::plan_scan (id index, dictionaries,
//!      zone maps; head chunks) ─► every column of the matching rows ─► FoundEvent { event, at }
//! ```
//!
//! Raw segments that retention deleted are left out (their events cannot
//! be found, and [`Found::expired`] says which time they covered) instead
//! of refusing the lookup as a query over them is refused. Every column of
//! a matching row is read, so a lookup holds at most [`MAX_LOOKUP_EVENTS`].

use crate::error::{Result, StorageError};
use crate::event::{COLUMNS, ColumnId, Event, EventType, InvalidReason};
use crate::ids::SegmentId;
use crate::manifest::{Level, SegmentMeta, Tier};
use crate::scan::{DimFilter, ScanPlan, ScanRequest, ScanSource, TimeRange};
use crate::segment::ColumnData;
use crate::store::Snapshot;

/// One stored event and where it is.
#[derive(Debug, Clone)]
pub struct FoundEvent {
    pub event: Event,
    pub at: ScanSource,
}

/// What a lookup found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Matching events, by event time.
    pub events: Vec<FoundEvent>,
    /// The time `[from, to)` of raw events retention deleted inside the
    /// lookup's range, if any: matches there are gone.
    pub expired: Option<(i64, i64)>,
    /// More events matched than the lookup's limit.
    pub truncated: bool,
    /// How many matched (`events` holds the first `limit` of them).
    pub matched: usize,
}

/// Matching events a lookup may hold: every column of each is read, so a
/// lookup that matches more (a bot's `user_key` over a long range) is
/// refused instead of filling memory.
pub const MAX_LOOKUP_EVENTS: usize = 100_000;

/// Segments read at a time, between checks of [`MAX_LOOKUP_EVENTS`].
const SEGMENTS_AT_ONCE: usize = 4;

impl Snapshot {
    /// Up to `limit` stored events passing every filter in `range`, head
    /// and segments (local or cold) alike, earliest first.
    ///
    /// # Errors
    /// [`StorageError::LookupTooLarge`] when more than [`MAX_LOOKUP_EVENTS`]
    /// match; what the scan itself refuses (a damaged segment in range).
    pub fn find_events(&self, filters: Vec<DimFilter>, range: TimeRange, limit: usize) -> Result<Found> {
        let expired: Vec<&SegmentMeta> = self
            .catalog
            .segments
            .values()
            .filter(|m| m.level == Level::Raw && m.tier == Tier::Expired && range.overlaps(m.min_ts, m.max_ts))
            .collect();
        let gone: Vec<SegmentId> = expired.iter().map(|m| m.id).collect();
        let deleted = self.catalog.deleted_before.filter(|d| range.start_ms < *d);
        let mut kept = range;
        if let Some(d) = deleted {
            kept.start_ms = d;
        }
        let mut found = Found {
            expired: expired
                .iter()
                .map(|m| (m.partition.bucket_start_ms, m.partition.bucket_start_ms + m.bucket_width_ms))
                .chain(deleted.map(|d| (i64::MIN, d)))
                .reduce(|(a, b), (c, d)| (a.min(c), b.max(d))),
            ..Found::default()
        };
        if kept.start_ms >= kept.end_ms && kept.end_ms != i64::MAX {
            return Ok(found);
        }
        let req = ScanRequest { time_range: kept, filters, columns: COLUMNS.iter().map(|c| c.id).collect() };
        let plan = self.plan_scan_except(&req, |id| gone.contains(&id))?;
        // The head first, then the segments a few at a time, so that a
        // lookup matching too much stops before it holds it all.
        let head = ScanPlan { head: plan.head.clone(), ..ScanPlan::default() };
        let segments =
            plan.segments.chunks(SEGMENTS_AT_ONCE).map(|s| ScanPlan { segments: s.to_vec(), ..ScanPlan::default() });
        let parts = std::iter::once(head).chain(segments);
        for part in parts {
            for batch in &part.execute(&req)? {
                for row in 0..batch.rows {
                    found.events.push(FoundEvent { event: event_at(&batch.columns, row), at: batch.source });
                }
            }
            if found.events.len() > MAX_LOOKUP_EVENTS {
                return Err(StorageError::LookupTooLarge { limit: MAX_LOOKUP_EVENTS });
            }
        }
        found.events.sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
        found.matched = found.events.len();
        found.truncated = found.events.len() > limit;
        found.events.truncate(limit);
        Ok(found)
    }

    /// The catalog entry of the raw segment a found event is in.
    pub fn segment_meta(&self, id: SegmentId) -> Option<&SegmentMeta> {
        self.catalog.segments.get(&id)
    }
}

/// Row `i` of `columns`, read in [`COLUMNS`] order.
fn event_at(columns: &[ColumnData], i: usize) -> Event {
    let col = |c: ColumnId| columns.get(c.index());
    let text = |c: ColumnId| col(c).and_then(|d| str_at(d, i));
    let int = |c: ColumnId| match col(c) {
        Some(ColumnData::I64(v)) => v.get(i).copied().unwrap_or(0),
        _ => 0,
    };
    let code = |c: ColumnId| match col(c) {
        Some(ColumnData::U8(v)) => v.get(i).copied().unwrap_or(0),
        _ => 0,
    };
    Event {
        event_id: text(ColumnId::EventId).unwrap_or_default(),
        kind: EventType::from_code(code(ColumnId::Type)).unwrap_or(EventType::Impression),
        ts: int(ColumnId::Ts),
        publisher_id: text(ColumnId::PublisherId).unwrap_or_default(),
        advertiser_id: text(ColumnId::AdvertiserId).unwrap_or_default(),
        campaign_id: text(ColumnId::CampaignId).unwrap_or_default(),
        ad_group_id: text(ColumnId::AdGroupId),
        ad_id: text(ColumnId::AdId).unwrap_or_default(),
        impression_id: text(ColumnId::ImpressionId),
        click_id: text(ColumnId::ClickId),
        user_key: text(ColumnId::UserKey),
        device: text(ColumnId::Device),
        os: text(ColumnId::Os),
        country: text(ColumnId::Country),
        region: text(ColumnId::Region),
        placement: text(ColumnId::Placement),
        cost_micros: int(ColumnId::CostMicros),
        value_micros: int(ColumnId::ValueMicros),
        ip_hash: text(ColumnId::IpHash),
        ua_hash: text(ColumnId::UaHash),
        attributed: matches!(col(ColumnId::Attributed), Some(ColumnData::Bool(v)) if v.get(i) == Some(&true)),
        attributed_to: text(ColumnId::AttributedTo),
        invalid_reason: InvalidReason::from_code(code(ColumnId::InvalidReason)).unwrap_or_default(),
    }
}

fn str_at(data: &ColumnData, i: usize) -> Option<String> {
    use arrow_array::Array;
    match data {
        ColumnData::Dict { codes, dict } => codes.get(i).and_then(|&c| dict.value(c)).map(str::to_string),
        ColumnData::Str(a) => (i < a.len() && !a.is_null(i)).then(|| a.value(i).to_string()),
        ColumnData::Bytes(a) => {
            (i < a.len() && !a.is_null(i)).then(|| String::from_utf8_lossy(a.value(i)).into_owned())
        }
        ColumnData::I64(_) | ColumnData::U8(_) | ColumnData::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::EventBatch;
    use crate::seal::SealPipeline;
    use crate::store::{Store, StoreConfig};
    use crate::testutil::any_event;

    /// Event `n` at `ts` of user `user` (of one publisher, advertiser and ad).
    fn of_user(n: i64, ts: i64, user: &str) -> Event {
        Event {
            event_id: format!("e{n}"),
            ts,
            publisher_id: "p".into(),
            advertiser_id: "a".into(),
            campaign_id: "c".into(),
            ad_id: "ad".into(),
            user_key: Some(user.into()),
            ..Event::default()
        }
    }

    fn debug_sorted(events: impl Iterator<Item = Event>) -> Vec<String> {
        let mut v: Vec<String> = events.map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Looking events up by an id or a user finds exactly the stored
        /// events with it, every field intact, from the head and again
        /// once sealed, and says where each is.
        #[test]
        fn lookups_find_whole_events_in_the_head_and_in_segments(
            events in proptest::collection::vec(any_event(), 1..300),
            pick in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = StoreConfig { shards: 2, block_rows: 128, ..StoreConfig::default() };
            let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
            store.append(&EventBatch::from_events(&events)).expect("append");
            let chosen = &events[pick.index(events.len())];
            let lookups = [
                (ColumnId::EventId, Some(chosen.event_id.clone())),
                (ColumnId::UserKey, chosen.user_key.clone()),
                (ColumnId::ClickId, chosen.click_id.clone()),
            ];
            for sealed in [false, true] {
                if sealed {
                    store.seal_all().expect("seal");
                }
                let snap = store.snapshot();
                for (col, value) in &lookups {
                    let Some(value) = value else { continue };
                    let want = debug_sorted(events.iter().filter(|e| {
                        let field = match col {
                            ColumnId::EventId => Some(&e.event_id),
                            ColumnId::UserKey => e.user_key.as_ref(),
                            _ => e.click_id.as_ref(),
                        };
                        field == Some(value)
                    }).cloned());
                    let found = snap.find_events(vec![DimFilter::eq(*col, value.clone())], TimeRange::ALL, usize::MAX).expect("find");
                    prop_assert_eq!(debug_sorted(found.events.iter().map(|f| f.event.clone())), want);
                    for f in &found.events {
                        let in_segment = matches!(f.at, ScanSource::Segment { .. });
                        prop_assert_eq!(in_segment, sealed);
                    }
                    prop_assert!(found.expired.is_none());
                }
            }
        }
    }

    #[test]
    fn a_lookup_matching_more_than_it_may_hold_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default(), SealPipeline::new()).expect("open");
        let events: Vec<Event> = (0..=MAX_LOOKUP_EVENTS as i64).map(|n| of_user(n, n, "bot")).collect();
        store.append(&EventBatch::from_events(&events)).expect("append");
        let snap = store.snapshot();
        let by_user = |range| snap.find_events(vec![DimFilter::eq(ColumnId::UserKey, "bot")], range, 10);
        assert!(matches!(by_user(TimeRange::ALL), Err(StorageError::LookupTooLarge { .. })));
        let found = by_user(TimeRange { start_ms: 0, end_ms: 1_000 }).expect("a narrower lookup");
        assert_eq!((found.events.len(), found.truncated), (10, true));
    }

    #[test]
    fn a_limit_keeps_the_earliest_and_says_more_matched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default(), SealPipeline::new()).expect("open");
        let events: Vec<Event> = (0..5).map(|n| of_user(n, 1_000 * (5 - n), "u")).collect();
        store.append(&EventBatch::from_events(&events)).expect("append");
        let found =
            store.snapshot().find_events(vec![DimFilter::eq(ColumnId::UserKey, "u")], TimeRange::ALL, 2).expect("find");
        assert!(found.truncated);
        assert_eq!(found.events.iter().map(|f| f.event.ts).collect::<Vec<_>>(), vec![1_000, 2_000]);
    }
}
