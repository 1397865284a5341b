//! The write path of a request: the ingest-time dedupe check, a
//! provisional classification of its rows against the anchors
//! acknowledged before (and its own), then the durable append; the anchors
//! it brings are indexed once they are durable.

use adstore_storage::offsets::SourceOffsets;
use adstore_storage::{
    ColumnId, EventBatch, EventType, PartlyStored, Result as StorageResult, Rows, StorageError, Store,
};
use rustc_hash::FxHashSet;
use serde::Serialize;

use super::index::{AnchorRef, AttributionIndex, h, scoped};
use super::{AttributionColumns, ExactlyOnce, attribute, for_each_anchor, opt_str};
use crate::dedupe::{DedupeIndex, Flight, batch_keys};
use crate::duplicates::DuplicateStage;

/// What [`ExactlyOnce::ingest`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestSummary {
    pub accepted: usize,
    pub duplicates: usize,
}

impl ExactlyOnce {
    /// The write path of a request: the ingest-time dedupe check, then a
    /// durable append of the new events. Duplicates are acknowledged but not
    /// stored. If the append fails, the keys are forgotten so a retry is
    /// accepted; an event is never answered `duplicate` before the first
    /// copy is durable (see [`DedupeIndex::admit_durable`]).
    pub fn ingest(&self, store: &Store, batch: &EventBatch) -> StorageResult<IngestSummary> {
        self.ingest_all(store, std::slice::from_ref(batch))
    }

    /// [`ExactlyOnce::ingest`] for a request whose events come as several
    /// batches: one dedupe pass over all their keys (an id repeated across
    /// batches is a duplicate like one repeated within a batch), then
    /// [`Store::append_all`]: a WAL record per batch, one wait for the fsync
    /// that covers them.
    pub fn ingest_all(&self, store: &Store, batches: &[EventBatch]) -> StorageResult<IngestSummary> {
        self.ingest_batches(store, batches, None)
    }

    /// [`ExactlyOnce::ingest`] for the events of an outside stream's
    /// messages: one WAL record holds the new rows of `batch` and `offsets`,
    /// how far into the stream they were read ([`Store::append_from`]), so
    /// the stream resumes exactly after what is durable. A batch with no
    /// new rows (empty, or duplicates only) still writes its offsets.
    pub fn ingest_from(
        &self,
        store: &Store,
        batch: &EventBatch,
        offsets: &SourceOffsets,
    ) -> StorageResult<IngestSummary> {
        self.ingest_batches(store, std::slice::from_ref(batch), Some(offsets))
    }

    fn ingest_batches(
        &self,
        store: &Store,
        batches: &[EventBatch],
        offsets: Option<&SourceOffsets>,
    ) -> StorageResult<IngestSummary> {
        let total: usize = batches.iter().map(EventBatch::num_rows).sum();
        if total == 0 {
            if let Some(offsets) = offsets {
                store.append_from(Rows { batch: &EventBatch::empty(), keep: None }, offsets)?;
            }
            return Ok(IngestSummary::default());
        }
        let mut keys = Vec::with_capacity(total);
        for batch in batches {
            keys.extend(batch_keys(batch));
        }
        let Some((dup, flight)) = self.dedupe.admit_durable(&keys, std::time::Duration::from_secs(30)) else {
            return Err(StorageError::Busy("an earlier request with the same event ids is still being stored".into()));
        };
        self.log_duplicates(&keys, &dup, DuplicateStage::Ingest);
        // Each batch's new rows, by index into the batch.
        let mut fresh: Vec<Vec<u32>> = Vec::with_capacity(batches.len());
        let mut admitted = Vec::with_capacity(total);
        let mut first = 0;
        for batch in batches {
            let dup = &dup[first..first + batch.num_rows()];
            let rows: Vec<u32> = (0..batch.num_rows() as u32).filter(|&i| !dup[i as usize]).collect();
            admitted.extend(rows.iter().map(|&i| (first + i as usize, keys[first + i as usize])));
            fresh.push(rows);
            first += batch.num_rows();
        }
        let landing = Landing { dedupe: &self.dedupe, flight: Some(flight), admitted };
        let accepted = landing.admitted.len();
        // Provisional classification, so that the head's rows show what
        // is known now: attributed against everything acknowledged before
        // (the index) and the request's own anchors that its clicks and
        // conversions point at; the seal confirms.
        let wanted = Wanted::by(batches);
        let mut own = AttributionIndex::default();
        if !wanted.is_empty() {
            let mut anchors = Vec::new();
            for (batch, rows) in batches.iter().zip(&fresh) {
                for_each_anchor(batch, Some(rows), |a| {
                    if wanted.wants(a) {
                        anchors.push(a);
                    }
                });
            }
            own.insert_all(anchors);
        }
        let classified = match self.classify(batches, &own) {
            Ok(classified) => classified,
            Err(e) => {
                landing.settle(0);
                return Err(e);
            }
        };
        let rows: Vec<Rows<'_>> = classified
            .iter()
            .zip(&fresh)
            .map(|(batch, rows)| Rows { batch, keep: (rows.len() < batch.num_rows()).then_some(&rows[..]) })
            .collect();
        // From the append (rows visible to seals) until the anchors are indexed.
        let indexing = self.indexing.read();
        let appended = match (offsets, rows.as_slice()) {
            (None, _) => store.append_all(&rows).map(|_| ()),
            (Some(offsets), [rows]) => {
                store.append_from(*rows, offsets).map(|_| ()).map_err(|error| PartlyStored { stored: 0, error })
            }
            (Some(_), _) => Err(PartlyStored {
                stored: 0,
                error: StorageError::Internal("a stream's events are appended as one batch".into()),
            }),
        };
        let (stored, result) = match appended {
            Ok(()) => (batches.len(), Ok(())),
            Err(e) => (e.stored, Err(e.error)),
        };
        // Durable: from now on every later event is attributed with them.
        let mut anchors = Vec::new();
        for (batch, rows) in batches.iter().zip(&fresh).take(stored) {
            for_each_anchor(batch, Some(rows), |a| anchors.push(a));
        }
        if !anchors.is_empty() {
            self.index.write().insert_all(anchors);
        }
        drop(indexing);
        let stored_before = batches.iter().take(stored).map(EventBatch::num_rows).sum();
        landing.settle(stored_before);
        result?;
        Ok(IngestSummary { accepted, duplicates: total - accepted })
    }

    /// Each batch with `attributed`, `attributed_to` and `invalid_reason`
    /// filled from the index and `own` (click floods counted within the
    /// request only, until the seal counts them over the partition).
    fn classify(&self, batches: &[EventBatch], own: &AttributionIndex) -> StorageResult<Vec<EventBatch>> {
        let rules = self.rules();
        let index = self.index.read();
        batches
            .iter()
            .map(|b| {
                // A batch of impressions alone, with no bot rule, keeps the
                // derived columns as parsed: not attributed, valid.
                let only_impressions =
                    b.u8_column(ColumnId::Type).values().iter().all(|&k| k == EventType::Impression as u8);
                if only_impressions && rules.bot_ua_hashes.is_empty() {
                    Ok(b.clone())
                } else {
                    attribute(b, &rules, &[&index, own], &self.erased_touches.read())
                }
            })
            .collect()
    }
}

/// A request's flight until its append returns. Dropped unsettled (a panic
/// in the append), it settles as not stored: otherwise the keys would stay
/// in flight for good and every retry would wait out its timeout. If the
/// events did land after all, the seal's exact check drops the retry's copy.
pub(super) struct Landing<'a> {
    pub(super) dedupe: &'a DedupeIndex,
    pub(super) flight: Option<Flight>,
    /// Its keys answered new, each with its index among the request's keys.
    pub(super) admitted: Vec<(usize, (u128, i64))>,
}

impl Landing<'_> {
    /// Settles the flight with the request's keys before `stored_before` durable.
    pub(super) fn settle(mut self, stored_before: usize) {
        if let Some(flight) = self.flight.take() {
            self.dedupe.settle_stored(flight, &self.admitted, stored_before);
        }
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.dedupe.settle_stored(flight, &self.admitted, 0);
        }
    }
}

/// What the clicks and conversions of a request look up: the request's
/// own anchors are indexed for its classification only if wanted here.
#[derive(Default)]
struct Wanted {
    /// Impression ids named by clicks, and (user_key, ad_id) of clicks without one.
    impressions: FxHashSet<u64>,
    impressions_by_user: FxHashSet<(u64, u64)>,
    /// Click ids named by conversions, and (user_key, advertiser_id) of conversions without one.
    clicks: FxHashSet<u64>,
    clicks_by_user: FxHashSet<(u64, u64)>,
}

impl Wanted {
    fn by(batches: &[EventBatch]) -> Wanted {
        let mut w = Wanted::default();
        for batch in batches {
            let AttributionColumns { kind, imp, click, ad, adv, user, publisher } = AttributionColumns::of(batch);
            for (i, &k) in kind.iter().enumerate() {
                let (ids, by_user, id, scope) = match EventType::from_code(k) {
                    Some(EventType::Click) => (&mut w.impressions, &mut w.impressions_by_user, imp, ad),
                    Some(EventType::Conversion) => (&mut w.clicks, &mut w.clicks_by_user, click, adv),
                    _ => continue,
                };
                match (opt_str(id, i), opt_str(user, i)) {
                    (Some(id), _) => {
                        ids.insert(scoped(publisher.value(i), id));
                    }
                    (None, Some(u)) => {
                        by_user.insert((h(u), scoped(publisher.value(i), scope.value(i))));
                    }
                    (None, None) => {}
                }
            }
        }
        w
    }

    fn is_empty(&self) -> bool {
        self.impressions.is_empty()
            && self.impressions_by_user.is_empty()
            && self.clicks.is_empty()
            && self.clicks_by_user.is_empty()
    }

    fn wants(&self, a: AnchorRef<'_>) -> bool {
        let (ids, by_user) = match a.kind {
            EventType::Impression => (&self.impressions, &self.impressions_by_user),
            EventType::Click => (&self.clicks, &self.clicks_by_user),
            EventType::Conversion => return false,
        };
        ids.contains(&a.key) || a.user_key.is_some_and(|u| by_user.contains(&(h(u), a.scope)))
    }
}
