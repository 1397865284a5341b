//! Exactly-once counting at seal: dedupe, attribution and invalid traffic
//! (DESIGN.md §2–§4), as one seal stage.
//!
//! ```text
//!  partition events ─► exact dedupe (claim keys; drop repeats)
//!                   ─► sort by (ts, type, event_id)            deterministic order
//!                   ─► index impressions, then clicks           (AttributionIndex)
//!                   ─► clicks → impression (by id, else last touch by user_key+ad)
//!                   ─► conversions → click (by id, else last touch by user_key+advertiser)
//!                   ─► invalid traffic: bot_ua > click_flood > too_fast > unattributed
//!                   ─► events
//! ```
//!
//! The attribution index holds the impressions and clicks sealed within
//! their windows (plus the allowed lateness) so lookups across segments and
//! buckets never rescan data. At open it is rebuilt, with the dedupe
//! index, from the id columns of the segments inside those windows: the
//! state is stored once, in the segments, not again in sidecars.
//!
//! A first seal attributes with what is known then (provisional). When a
//! bucket closes the store re-seals it ([`SealKind::Final`]); this stage
//! then recomputes every derived column over the complete bucket, which is
//! what makes late impressions count. Reprocessing does the same under the
//! current rules. A bucket that closed before its first seal is sealed
//! final at once when every anchor it may need is in the index
//! ([`SealStage::first_seal_final`]).

use std::collections::{HashMap, HashSet};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use adstore_storage::{
    ColumnId, EventBatch, EventType, InvalidReason, Level, LiveSegment, Result as StorageResult, SealContext, SealKind,
    SealStage, SidecarReader, Snapshot, StageOutput, StorageError,
};
use arrow_array::{ArrayRef, BooleanArray, StringArray, UInt8Array};
use parking_lot::RwLock;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dedupe::{DedupeIndex, SpilledStats, batch_keys};
use crate::duplicates::{DuplicateLog, DuplicateLogStats, DuplicateStage};

mod index;
mod ingest;
mod parts;

pub use ingest::IngestSummary;

use index::{AnchorRef, AttributionIndex, Touches, h, last_touch_in, scoped, touch_key};
pub use parts::AttributionPartStats;
use parts::AttributionSpill;

/// Attribution and invalid-traffic rules: a named, versioned configuration.
/// A change of rules bumps `version`; reprocessing re-applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributionRules {
    /// Version recorded on every segment sealed under these rules. Default 1.
    pub version: u32,
    /// A click may follow its impression by at most this much. Default 3_600_000 (1 h).
    pub click_window_ms: i64,
    /// A conversion may follow its click by at most this much. Default 604_800_000 (7 d).
    pub conversion_window_ms: i64,
    /// `unattributed`: clicks without an attributable impression are invalid. Default true.
    pub unattributed: bool,
    /// `too_fast`: clicks less than this many ms after their impression are
    /// invalid; 0 turns the rule off. Default 1_000.
    pub too_fast_ms: i64,
    /// `click_flood`: clicks on one ad by one user_key (or ip_hash) beyond
    /// this many in one minute are invalid; 0 turns the rule off. Default 5.
    pub click_flood_per_minute: u32,
    /// `bot_ua`: events whose `ua_hash` is in this list are invalid. Default empty.
    pub bot_ua_hashes: Vec<String>,
}

impl Default for AttributionRules {
    fn default() -> AttributionRules {
        AttributionRules {
            version: 1,
            click_window_ms: 3_600_000,
            conversion_window_ms: 7 * 86_400_000,
            unattributed: true,
            too_fast_ms: 1_000,
            click_flood_per_minute: 5,
            bot_ua_hashes: Vec::new(),
        }
    }
}

impl AttributionRules {
    pub fn validate(&self) -> Result<(), String> {
        if self.click_window_ms <= 0 || self.click_window_ms > 30 * 86_400_000 {
            return Err("click_window_ms must be between 1 and 30 days in ms".into());
        }
        if self.conversion_window_ms <= 0 || self.conversion_window_ms > 90 * 86_400_000 {
            return Err("conversion_window_ms must be between 1 ms and 90 days".into());
        }
        if self.too_fast_ms < 0 {
            return Err("too_fast_ms must not be negative".into());
        }
        Ok(())
    }
}

/// Segments read at once while recovering: enough to keep the cores busy,
/// few enough that their decoded events stay a small part of memory.
const RECOVER_SEGMENTS_AT_ONCE: usize = 8;

/// How far event time moves between two expiries of the attribution index
/// (a few percent of the 25 h it holds at the defaults).
const EXPIRE_EVERY_MS: i64 = 15 * 60_000;

/// Counters for `/metrics` and tests.
#[derive(Debug, Default, Serialize, Clone)]
pub struct ExactlyOnceStats {
    pub duplicates_at_seal: u64,
    pub index_entries: u64,
    pub dedupe_keys: u64,
    pub dedupe_table_bytes: u64,
    /// Sealed keys written to disk, and what they cost (see `DedupeIndex::with_spill`).
    pub dedupe_spilled: SpilledStats,
    /// Anchors moved to parts on disk (see [`ExactlyOnce::with_attribution_spill`]).
    pub attribution_parts: AttributionPartStats,
    /// Bytes of memory the anchors held in memory take.
    pub attribution_memory_bytes: u64,
    /// The duplicate log's size and budget (all zero when it is off).
    pub duplicate_log: DuplicateLogStats,
}

/// The seal stage. Shared (`Arc`) between the store's pipeline and the
/// server, which uses [`ExactlyOnce::dedupe`] for the ingest-time check and
/// [`ExactlyOnce::set_rules`] to change rules.
pub struct ExactlyOnce {
    dedupe: Arc<DedupeIndex>,
    rules: RwLock<Arc<AttributionRules>>,
    index: RwLock<AttributionIndex>,
    /// Where anchors go once memory holds enough of them; `None` keeps all in memory.
    spill: Option<AttributionSpill>,
    /// Held (shared) by a request from its append until its anchors are
    /// indexed; a seal takes it (exclusive) for a moment before it
    /// attributes, so that every event in its snapshot has been indexed.
    indexing: RwLock<()>,
    /// The store's sidecars, from [`SealStage::recover`]: a re-seal of a
    /// bucket older than the index reads its anchors back from them.
    allowed_lateness_ms: i64,
    newest_ts: AtomicI64,
    /// `newest_ts` at the last expiry.
    expired_at_ts: AtomicI64,
    duplicates_at_seal: AtomicU64,
    /// Users whose events an erasure removed the identity of, by the hash
    /// the index keeps touches under, with the newest erased event time:
    /// last touch ignores their touches up to it (the index still holds
    /// them). Dropped once the windows pass it; a restart rebuilds the
    /// index from the segments, without them.
    erased_touches: RwLock<FxHashMap<u64, i64>>,
    /// When each duplicate arrived, for the event trace; `None`: not kept.
    duplicate_log: Option<Arc<DuplicateLog>>,
}

impl ExactlyOnce {
    pub fn new(dedupe: Arc<DedupeIndex>, rules: AttributionRules, allowed_lateness_ms: i64) -> ExactlyOnce {
        ExactlyOnce {
            dedupe,
            rules: RwLock::new(Arc::new(rules)),
            index: RwLock::new(AttributionIndex::default()),
            spill: None,
            indexing: RwLock::new(()),
            allowed_lateness_ms,
            newest_ts: AtomicI64::new(i64::MIN),
            expired_at_ts: AtomicI64::new(i64::MIN),
            duplicates_at_seal: AtomicU64::new(0),
            erased_touches: RwLock::new(FxHashMap::default()),
            duplicate_log: None,
        }
    }

    /// Logs every duplicate caught, at ingest or at seal, to `log`.
    pub fn with_duplicate_log(mut self, log: Arc<DuplicateLog>) -> ExactlyOnce {
        self.duplicate_log = Some(log);
        self
    }

    /// For a user whose identity was erased, the newest event time erased:
    /// last touch does not attribute to their touches up to it.
    pub fn erased_touch_floor(&self, user_key: &str) -> Option<i64> {
        self.erased_touches.read().get(&h(user_key)).copied()
    }

    pub fn duplicate_log(&self) -> Option<&Arc<DuplicateLog>> {
        self.duplicate_log.as_ref()
    }

    /// Appends the keys of `dup` to the duplicate log, if kept. A failure
    /// costs the trace those records, never the request or the seal.
    fn log_duplicates(&self, keys: &[(u128, i64)], dup: &[bool], stage: DuplicateStage) {
        let Some(log) = &self.duplicate_log else {
            return;
        };
        let caught: Vec<(u128, i64)> = keys.iter().zip(dup).filter(|(_, d)| **d).map(|(k, _)| *k).collect();
        if caught.is_empty() {
            return;
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if let Err(e) = log.append(&caught, stage, now) {
            tracing::warn!(error = %e, "duplicates could not be written to the duplicate log");
        }
    }

    /// Keeps at most about `entries` impressions and clicks indexed in
    /// memory: past that, a committed seal moves them to parts on disk in
    /// `dir` (sorted by id and by user, mapped, see `parts.rs`). Nothing is
    /// read or written there until recovery empties it or the first spill.
    pub fn with_attribution_spill(mut self, dir: &std::path::Path, entries: usize) -> ExactlyOnce {
        self.spill = Some(AttributionSpill::new(dir, entries));
        self
    }

    /// Moves anchors to disk if due; an error leaves them in memory.
    fn spill_anchors(&self) -> std::io::Result<()> {
        self.spill.as_ref().map_or(Ok(()), |s| s.spill_if_due(&self.index))
    }

    pub fn dedupe(&self) -> &Arc<DedupeIndex> {
        &self.dedupe
    }

    pub fn rules(&self) -> Arc<AttributionRules> {
        self.rules.read().clone()
    }

    /// Replaces the rules. They apply to seals from now on; already sealed
    /// buckets change only when re-sealed (finalization or reprocessing).
    pub fn set_rules(&self, rules: AttributionRules) -> Result<(), String> {
        rules.validate()?;
        *self.rules.write() = Arc::new(rules);
        Ok(())
    }

    pub fn stats(&self) -> ExactlyOnceStats {
        let d = self.dedupe.stats();
        let index = self.index.read();
        ExactlyOnceStats {
            duplicates_at_seal: self.duplicates_at_seal.load(Ordering::Relaxed),
            index_entries: index.entries() as u64,
            dedupe_keys: d.keys,
            dedupe_table_bytes: d.table_bytes,
            dedupe_spilled: self.dedupe.spilled_stats(),
            attribution_parts: self.spill.as_ref().map(|s| s.stats(&index)).unwrap_or_default(),
            attribution_memory_bytes: index.live.memory_bytes() as u64,
            duplicate_log: self.duplicate_log.as_ref().map(|l| l.stats()).unwrap_or_default(),
        }
    }

    /// Drops index entries and dedupe keys that no future event can need:
    /// anchors older than their window behind both the oldest event time
    /// still accepted (newest less the allowed lateness) and `keep_from`,
    /// the start of the oldest bucket that is not final yet (its final
    /// seal attributes its first events to anchors a window before it).
    /// Dropping anchors by event time alone lost the impressions of the
    /// hour before a bucket by the time it closed, and final numbers left
    /// those clicks unattributed (issue 21).
    pub fn expire(&self, keep_from: Option<i64>) {
        let newest = self.newest_ts.load(Ordering::Acquire);
        // Expiry walks the whole index, under its write lock: do it when
        // event time moved `EXPIRE_EVERY_MS` (every minute took 4% of the
        // sealer's time in a backfill, where event time runs fast). Anchors
        // kept a little longer change no attribution: lookups check windows.
        let last = self.expired_at_ts.load(Ordering::Acquire);
        if newest == i64::MIN || (last != i64::MIN && newest - last < EXPIRE_EVERY_MS) {
            return;
        }
        self.expired_at_ts.store(newest, Ordering::Release);
        let (imp_floor, click_floor) = self.anchor_floors(newest, keep_from);
        self.index.write().expire(imp_floor, click_floor);
        self.erased_touches.write().retain(|_, max_ts| *max_ts >= imp_floor.min(click_floor));
        self.dedupe.expire(newest);
    }

    /// The oldest impression and the oldest click that an event still to
    /// come, or a re-seal of a bucket from `keep_from` on, can be
    /// attributed to (see [`ExactlyOnce::expire`]).
    fn anchor_floors(&self, newest: i64, keep_from: Option<i64>) -> (i64, i64) {
        let rules = self.rules();
        let oldest = keep_from.unwrap_or(i64::MAX).min(newest.saturating_sub(self.allowed_lateness_ms));
        (oldest.saturating_sub(rules.click_window_ms), oldest.saturating_sub(rules.conversion_window_ms))
    }

    /// The oldest impression and the oldest click that the events of the
    /// bucket starting at `bucket_start` can be attributed to.
    fn anchors_needed(&self, bucket_start: i64) -> (i64, i64) {
        let rules = self.rules();
        (bucket_start.saturating_sub(rules.click_window_ms), bucket_start.saturating_sub(rules.conversion_window_ms))
    }

    /// Whether expiry has dropped none of the anchors that the events of
    /// the bucket starting at `bucket_start` can be attributed to.
    fn anchors_at_hand(&self, bucket_start: i64) -> bool {
        let (need_imp, need_click) = self.anchors_needed(bucket_start);
        let index = self.index.read();
        need_imp >= index.imp_floor && need_click >= index.click_floor
    }

    /// Makes sure the index holds every anchor that the events of a
    /// re-sealed bucket starting at `bucket_start` may be attributed to:
    /// what expiry dropped (a reprocess, or a backfill that re-opened an
    /// old bucket) is read back from the segments of that time, and stays
    /// until the next expiry.
    fn ensure_anchors(&self, snapshot: &Snapshot, bucket_start: i64) -> StorageResult<()> {
        if self.anchors_at_hand(bucket_start) {
            return Ok(());
        }
        let (need_imp, need_click) = self.anchors_needed(bucket_start);
        let mut index = self.index.write();
        // Another partition of the same pass may have loaded them meanwhile.
        let (imp_floor, click_floor) = (index.imp_floor, index.click_floor);
        if need_imp >= imp_floor && need_click >= click_floor {
            return Ok(());
        }
        let wanted = |kind: EventType, ts: i64| match kind {
            EventType::Impression => (need_imp..imp_floor).contains(&ts),
            EventType::Click => (need_click..click_floor).contains(&ts),
            EventType::Conversion => false,
        };
        let lo = need_imp.min(need_click);
        let hi = imp_floor.max(click_floor);
        let raw: Vec<&LiveSegment> = snapshot
            .segments
            .iter()
            .filter(|s| s.meta.level == Level::Raw && s.meta.max_ts >= lo && s.meta.min_ts < hi)
            .collect();
        let mut loaded = 0usize;
        let mut take = |anchors: Vec<AnchorRef<'_>>| {
            let anchors: Vec<AnchorRef<'_>> = anchors.into_iter().filter(|a| wanted(a.kind, a.ts)).collect();
            loaded += anchors.len();
            index.insert_all(anchors);
        };
        for seg in &raw {
            take(anchor_refs(&seg.reader.read_batch()?));
        }
        for (_, chunk) in &snapshot.head {
            take(anchor_refs(&chunk.batch()?));
        }
        index.imp_floor = index.imp_floor.min(need_imp);
        index.click_floor = index.click_floor.min(need_click);
        tracing::info!(bucket_start, loaded, "attribution anchors read back for a re-seal of an old bucket");
        Ok(())
    }

    fn observe(&self, batch: &EventBatch) {
        if let Some(max) = batch.ts().iter().max() {
            self.newest_ts.fetch_max(*max, Ordering::AcqRel);
        }
    }
}

fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
    use arrow_array::Array;
    if a.is_null(i) { None } else { Some(a.value(i)) }
}

/// The columns of a batch that attribution reads: what an event is, the
/// ids it carries or names, and the scopes those ids live in.
struct AttributionColumns<'a> {
    kind: &'a [u8],
    imp: &'a StringArray,
    click: &'a StringArray,
    ad: &'a StringArray,
    adv: &'a StringArray,
    user: &'a StringArray,
    publisher: &'a StringArray,
}

impl<'a> AttributionColumns<'a> {
    fn of(batch: &'a EventBatch) -> Self {
        AttributionColumns {
            kind: batch.u8_column(ColumnId::Type).values(),
            imp: batch.str_column(ColumnId::ImpressionId),
            click: batch.str_column(ColumnId::ClickId),
            ad: batch.str_column(ColumnId::AdId),
            adv: batch.str_column(ColumnId::AdvertiserId),
            user: batch.str_column(ColumnId::UserKey),
            publisher: batch.str_column(ColumnId::PublisherId),
        }
    }
}

/// Calls `f` with each impression (that has an `impression_id`) and click
/// (that has a `click_id`) among `rows` of `batch` (all rows when `None`),
/// read straight from its columns.
fn for_each_anchor<'a>(batch: &'a EventBatch, rows: Option<&[u32]>, mut f: impl FnMut(AnchorRef<'a>)) {
    let AttributionColumns { kind, imp, click, ad, adv, user, publisher } = AttributionColumns::of(batch);
    let ts = batch.ts();
    let mut one = |i: usize| {
        let Some(kind) = EventType::from_code(kind[i]) else { return };
        let (id, scope) = match kind {
            EventType::Impression => (opt_str(imp, i), ad.value(i)),
            EventType::Click => (opt_str(click, i), adv.value(i)),
            EventType::Conversion => return,
        };
        if let Some(id) = id {
            let (p, user_key) = (publisher.value(i), opt_str(user, i));
            f(AnchorRef { kind, ts: ts[i], id, key: scoped(p, id), scope: scoped(p, scope), user_key });
        }
    };
    match rows {
        Some(rows) => rows.iter().for_each(|&i| one(i as usize)),
        None => (0..batch.num_rows()).for_each(one),
    }
}

fn anchor_refs(batch: &EventBatch) -> Vec<AnchorRef<'_>> {
    let mut out = Vec::new();
    for_each_anchor(batch, None, |a| out.push(a));
    out
}

impl SealStage for ExactlyOnce {
    fn name(&self) -> &str {
        "exactly_once"
    }

    fn erased(&self, user_key: &str, max_ts: i64) {
        let mut erased = self.erased_touches.write();
        let floor = erased.entry(h(user_key)).or_insert(max_ts);
        *floor = (*floor).max(max_ts);
    }

    fn rules_version(&self) -> u32 {
        self.rules.read().version
    }

    /// Rebuilds the dedupe and attribution state from the segments whose
    /// events can still matter (keys within the dedupe window and allowed
    /// lateness of the newest event, anchors within their windows before
    /// the oldest bucket not yet final), read a few at a time in parallel,
    /// then from the replayed head.
    fn recover(&self, snapshot: &Snapshot, _sidecars: &SidecarReader) -> StorageResult<()> {
        // The store holds the data directory's lock by now.
        self.dedupe.clear_stale_runs().map_err(|source| StorageError::Io { path: "dedupe".into(), source })?;
        if let Some(spill) = &self.spill {
            spill.clear_stale().map_err(|source| StorageError::Io { path: "attribution".into(), source })?;
        }
        let head: Vec<EventBatch> = snapshot.head.iter().map(|(_, c)| c.batch()).collect::<StorageResult<_>>()?;
        let raw: Vec<&LiveSegment> = snapshot.segments.iter().filter(|s| s.meta.level == Level::Raw).collect();
        let newest = raw
            .iter()
            .map(|s| s.meta.max_ts)
            .chain(head.iter().filter_map(|b| b.ts().iter().max().copied()))
            .max()
            .unwrap_or(i64::MIN);
        let key_floor = if newest == i64::MIN { i64::MIN } else { self.dedupe.config().kept_from(newest) };
        let (imp_floor, click_floor) = self.anchor_floors(newest, oldest_open_bucket(snapshot));
        let needed: Vec<&LiveSegment> =
            raw.iter().copied().filter(|s| s.meta.max_ts >= key_floor.min(imp_floor).min(click_floor)).collect();
        let key_rows: u64 = needed.iter().filter(|s| s.meta.max_ts >= key_floor).map(|s| s.meta.rows).sum();
        self.dedupe.reserve(usize::try_from(key_rows).unwrap_or(usize::MAX));
        let (mut keys_loaded, mut anchors_loaded) = (0usize, 0usize);
        for group in needed.chunks(RECOVER_SEGMENTS_AT_ONCE) {
            let batches: Vec<EventBatch> =
                group.par_iter().map(|s| s.reader.read_batch()).collect::<StorageResult<_>>()?;
            for (seg, batch) in group.iter().zip(&batches) {
                if seg.meta.max_ts >= key_floor {
                    let keys = batch_keys(batch);
                    keys_loaded += keys.len();
                    self.dedupe.insert_sealed(&keys);
                    self.dedupe.spill_if_due().map_err(|source| StorageError::Io { path: "dedupe".into(), source })?;
                }
                let anchors: Vec<AnchorRef<'_>> = anchor_refs(batch)
                    .into_iter()
                    .filter(|a| a.ts >= if a.kind == EventType::Impression { imp_floor } else { click_floor })
                    .collect();
                anchors_loaded += anchors.len();
                self.index.write().insert_all(anchors);
            }
            self.spill_anchors().map_err(|source| StorageError::Io { path: "attribution".into(), source })?;
        }
        if newest != i64::MIN {
            self.index.write().expire(imp_floor, click_floor);
        }
        for seg in &raw {
            self.newest_ts.fetch_max(seg.meta.max_ts, Ordering::AcqRel);
        }
        // Replayed head events are accepted but not sealed: pending keys,
        // and anchors that later events are attributed to.
        for batch in &head {
            self.dedupe.admit(&batch_keys(batch));
            self.index.write().insert_all(anchor_refs(batch));
            self.observe(batch);
        }
        self.expire(oldest_open_bucket(snapshot));
        let (segments_read, segments) = (needed.len(), raw.len());
        tracing::info!(keys_loaded, anchors_loaded, segments_read, segments, "exactly-once state recovered");
        Ok(())
    }

    /// Only with every anchor the bucket can need in the index: reading
    /// them back from older segments (perhaps in the object store, under
    /// the index's write lock) is finalization's work, which retries on its
    /// own, not a seal's, which the head waits on.
    fn first_seal_final(&self, bucket_start_ms: i64) -> bool {
        self.anchors_at_hand(bucket_start_ms)
    }

    fn apply(&self, ctx: &SealContext<'_>, events: EventBatch) -> StorageResult<StageOutput> {
        self.observe(&events);
        let keys = batch_keys(&events);
        let claimed = ctx.kind == SealKind::Seal;
        match self.apply_claimed(ctx, events, &keys) {
            Ok(out) => Ok(out),
            Err(e) => {
                // No `aborted` follows a stage's own failure: give the keys
                // back here, or the events still in the head would be taken
                // for duplicates of themselves at the next seal.
                if claimed {
                    self.dedupe.unclaim(&keys);
                    self.dedupe.claim_done();
                }
                Err(e)
            }
        }
    }

    fn committed(&self, ctx: &SealContext<'_>, _events: &EventBatch) {
        if ctx.kind == SealKind::Seal {
            self.dedupe.claim_done();
        }
        if let Err(e) = self.dedupe.spill_if_due() {
            // The keys stay in memory, and a later seal tries again.
            tracing::warn!(error = %e, "dedupe keys could not be written to disk");
        }
        if let Err(e) = self.spill_anchors() {
            // The anchors stay in memory (a frozen part) until they expire.
            tracing::warn!(error = %e, "attribution anchors could not be written to disk");
        }
        self.expire(oldest_open_bucket(ctx.snapshot));
    }

    fn aborted(&self, ctx: &SealContext<'_>, events: &EventBatch) {
        if ctx.kind == SealKind::Seal {
            // The claimed keys go back to pending: the events are still in the head.
            self.dedupe.unclaim(&batch_keys(events));
            self.dedupe.claim_done();
        }
    }
}

impl ExactlyOnce {
    /// [`SealStage::apply`] after the keys are read: the exact check (a
    /// claim on a first seal), then attribution.
    fn apply_claimed(
        &self,
        ctx: &SealContext<'_>,
        events: EventBatch,
        keys: &[(u128, i64)],
    ) -> StorageResult<StageOutput> {
        // Exact dedupe. A first seal claims keys against everything sealed;
        // a re-seal only drops repeats within the events it rewrites.
        let dup: Vec<bool> = match ctx.kind {
            SealKind::Seal => self.dedupe.claim(keys),
            SealKind::Final | SealKind::Reprocess | SealKind::Compact => {
                let mut seen = HashSet::with_capacity(keys.len());
                keys.iter().map(|(k, _)| !seen.insert(*k)).collect()
            }
        };
        let drops = dup.iter().filter(|d| **d).count();
        self.duplicates_at_seal.fetch_add(drops as u64, Ordering::Relaxed);
        if drops > 0 && ctx.kind == SealKind::Seal {
            self.log_duplicates(keys, &dup, DuplicateStage::Seal);
        }
        let mut order: Vec<u32> = (0..events.num_rows() as u32).filter(|&i| !dup[i as usize]).collect();
        // Deterministic processing order: (ts, type, event_id).
        {
            let ts = events.ts();
            let kind = events.u8_column(ColumnId::Type).values();
            let id = events.str_column(ColumnId::EventId);
            order.sort_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                (ts[a], kind[a], id.value(a)).cmp(&(ts[b], kind[b], id.value(b)))
            });
        }
        let events = events.take(&order)?;
        // A re-seal may need anchors older than the index holds (a
        // reprocess, a backfill into an old bucket). A first seal straight
        // to final was asked for only with them at hand
        // (`first_seal_final`); should expiry have run since, it reads them
        // back too rather than seal final numbers without them.
        if ctx.kind != SealKind::Seal || ctx.is_final {
            self.ensure_anchors(ctx.snapshot, ctx.partition.bucket_start_ms)?;
        }
        let rules = self.rules();
        // Every event of this seal's snapshot came through `ingest_all` (or
        // replay, at recover), which indexes its anchors once its append
        // returns: wait for the requests between their append and that
        // insert, and the index holds every anchor acknowledged before this
        // seal. (Indexing the partition and the head's earlier buckets
        // again here took a sixth of the seal threads' time.)
        drop(self.indexing.write());
        let decided = {
            let index = self.index.read();
            attribute(&events, &rules, &[&index], &self.erased_touches.read())?
        };
        // An erased event lost what its decisions were made from: a re-seal
        // keeps them, so counts do not change.
        let decided = match ctx.kind {
            SealKind::Seal => decided,
            _ => ctx.snapshot.erased.keep_decisions(&events, decided)?,
        };
        Ok(StageOutput { events: decided, sidecars: Vec::new() })
    }
}

/// The start of the oldest bucket that is not final: of a provisional raw
/// segment, or of a head partition.
fn oldest_open_bucket(snapshot: &Snapshot) -> Option<i64> {
    let segments =
        snapshot.segments.iter().filter(|s| s.meta.level == Level::Raw && !s.meta.is_final).map(|s| &s.meta.partition);
    segments.chain(snapshot.head.iter().map(|(p, _)| p)).map(|p| p.bucket_start_ms).min()
}

/// The impression with id hash `id`, from the first index that has it.
fn impression_in(indexes: &[&AttributionIndex], id: u64) -> Option<(i64, u64)> {
    indexes.iter().find_map(|x| x.impression(id))
}

/// The click with id hash `id`, from the first index that has it.
fn click_in(indexes: &[&AttributionIndex], id: u64) -> Option<(i64, u64)> {
    indexes.iter().find_map(|x| x.click(id))
}

/// Fills `attributed`, `attributed_to` and `invalid_reason` for events
/// already in processing order, looking anchors up in `indexes`; a user
/// in `erased` is not attributed by last touch to a touch up to its time.
fn attribute(
    events: &EventBatch,
    rules: &AttributionRules,
    indexes: &[&AttributionIndex],
    erased: &FxHashMap<u64, i64>,
) -> StorageResult<EventBatch> {
    let n = events.num_rows();
    let kind = events.u8_column(ColumnId::Type).values();
    let ts = events.ts();
    let imp_id = events.str_column(ColumnId::ImpressionId);
    let click_id = events.str_column(ColumnId::ClickId);
    let ad = events.str_column(ColumnId::AdId);
    let adv = events.str_column(ColumnId::AdvertiserId);
    let user = events.str_column(ColumnId::UserKey);
    let ip = events.str_column(ColumnId::IpHash);
    let ua = events.str_column(ColumnId::UaHash);
    let publisher = events.str_column(ColumnId::PublisherId);
    let bots: HashSet<&str> = rules.bot_ua_hashes.iter().map(String::as_str).collect();
    // Decided at ingest, from the publisher's signing secret: no rule
    // re-derives it, so it stays through seals and reprocessing.
    let received = events.u8_column(ColumnId::InvalidReason).values();
    let bad_signature = |i: usize| received.get(i) == Some(&(InvalidReason::BadSignature as u8));

    let mut attributed = vec![false; n];
    let mut attributed_to: Vec<Option<String>> = vec![None; n];
    let mut reason = vec![InvalidReason::Valid; n];
    // Clicks per (publisher and ad, user_key or ip_hash, minute), in
    // processing order.
    let mut flood: HashMap<(u64, u64, i64), u32> = HashMap::new();
    for i in 0..n {
        let Some(k) = EventType::from_code(kind[i]) else {
            return Err(StorageError::Internal(format!("bad event type code {}", kind[i])));
        };
        let is_bot = opt_str(ua, i).is_some_and(|u| bots.contains(u));
        match k {
            EventType::Impression => {}
            EventType::Click => {
                let ad_h = scoped(publisher.value(i), ad.value(i));
                let lo = ts[i].saturating_sub(rules.click_window_ms);
                let found: Option<(i64, String)> = match opt_str(imp_id, i) {
                    Some(id) => impression_in(indexes, scoped(publisher.value(i), id))
                        .filter(|(t, a)| *a == ad_h && *t <= ts[i] && *t >= lo)
                        .map(|(t, _)| (t, id.to_string())),
                    None => opt_str(user, i)
                        .and_then(|u| {
                            let lo = erased.get(&h(u)).map_or(lo, |t| lo.max(t.saturating_add(1)));
                            last_touch_in(indexes, Touches::Impressions, touch_key(h(u), ad_h), lo, ts[i])
                        })
                        .map(|t| (t.ts, t.id.to_string())),
                };
                let who = opt_str(user, i).or_else(|| opt_str(ip, i)).map(h);
                let flooded = match who {
                    Some(w) if rules.click_flood_per_minute > 0 => {
                        let c = flood.entry((ad_h, w, ts[i].div_euclid(60_000))).or_insert(0);
                        *c += 1;
                        *c > rules.click_flood_per_minute
                    }
                    _ => false,
                };
                let too_fast =
                    found.as_ref().is_some_and(|(t, _)| rules.too_fast_ms > 0 && ts[i] - t < rules.too_fast_ms);
                reason[i] = if bad_signature(i) {
                    InvalidReason::BadSignature
                } else if is_bot {
                    InvalidReason::BotUa
                } else if flooded {
                    InvalidReason::ClickFlood
                } else if too_fast {
                    InvalidReason::TooFast
                } else if found.is_none() && rules.unattributed {
                    InvalidReason::Unattributed
                } else {
                    InvalidReason::Valid
                };
                if let Some((_, id)) = found {
                    attributed[i] = true;
                    attributed_to[i] = Some(id);
                }
                continue;
            }
            EventType::Conversion => {
                let lo = ts[i].saturating_sub(rules.conversion_window_ms);
                let adv_h = scoped(publisher.value(i), adv.value(i));
                let found: Option<String> = match opt_str(click_id, i) {
                    Some(id) => click_in(indexes, scoped(publisher.value(i), id))
                        .filter(|(t, a)| *a == adv_h && *t <= ts[i] && *t >= lo)
                        .map(|_| id.to_string()),
                    None => opt_str(user, i)
                        .and_then(|u| {
                            let lo = erased.get(&h(u)).map_or(lo, |t| lo.max(t.saturating_add(1)));
                            last_touch_in(indexes, Touches::Clicks, touch_key(h(u), adv_h), lo, ts[i])
                        })
                        .map(|t| t.id.to_string()),
                };
                if let Some(id) = found {
                    attributed[i] = true;
                    attributed_to[i] = Some(id);
                }
            }
        }
        if is_bot {
            reason[i] = InvalidReason::BotUa;
        }
    }
    let out = events.with_column(ColumnId::Attributed, Arc::new(BooleanArray::from(attributed)) as ArrayRef)?;
    let out = out.with_column(ColumnId::AttributedTo, Arc::new(StringArray::from(attributed_to)) as ArrayRef)?;
    out.with_column(
        ColumnId::InvalidReason,
        Arc::new(UInt8Array::from(reason.iter().map(|r| *r as u8).collect::<Vec<u8>>())) as ArrayRef,
    )
}

#[cfg(test)]
mod tests {
    use super::ingest::Landing;
    use super::*;

    #[test]
    fn a_request_dropped_mid_append_leaves_nothing_in_flight() {
        use crate::dedupe::tests::SHORT;
        let dedupe = DedupeIndex::new(crate::dedupe::DedupeConfig::default());
        let keys = [(crate::dedupe::idempotency_key("p", EventType::Click, "e"), 0i64)];
        let (_, flight) = dedupe.admit_durable(&keys, SHORT).expect("admitted");
        let admitted: Vec<(usize, (u128, i64))> = keys.iter().copied().enumerate().collect();
        drop(Landing { dedupe: &dedupe, flight: Some(flight), admitted: admitted.clone() });
        // Not stored as far as anyone knows: the retry is admitted, at once.
        let (verdicts, flight) = dedupe.admit_durable(&keys, SHORT).expect("not left in flight");
        assert_eq!(verdicts, vec![false]);
        Landing { dedupe: &dedupe, flight: Some(flight), admitted }.settle(keys.len());
        assert_eq!(dedupe.admit_durable(&keys, SHORT).map(|(v, _)| v), Some(vec![true]));
    }

    #[test]
    fn an_erased_user_is_not_attributed_by_last_touch_to_touches_before_the_erasure() {
        use adstore_storage::Event;
        let event = |id: &str, kind: EventType, ts: i64, imp: Option<&str>| Event {
            event_id: id.into(),
            kind,
            ts,
            publisher_id: "p".into(),
            advertiser_id: "a".into(),
            campaign_id: "c".into(),
            ad_id: "x".into(),
            impression_id: imp.map(str::to_string),
            click_id: (kind == EventType::Click).then(|| format!("k-{id}")),
            user_key: Some("u".into()),
            ..Event::default()
        };
        let anchors = EventBatch::from_events(&[
            event("i1", EventType::Impression, 1_000, Some("imp-1")),
            event("i2", EventType::Impression, 5_000, Some("imp-2")),
        ]);
        let mut index = AttributionIndex::default();
        let mut refs = Vec::new();
        for_each_anchor(&anchors, None, |a| refs.push(a));
        index.insert_all(refs);
        let click = EventBatch::from_events(&[event("c1", EventType::Click, 9_000, None)]);
        let rules = AttributionRules::default();
        let to = |erased: &FxHashMap<u64, i64>| {
            let out = attribute(&click, &rules, &[&index], erased).expect("attribute");
            let to = out.str_column(ColumnId::AttributedTo);
            arrow_array::Array::is_valid(to, 0).then(|| to.value(0).to_string())
        };
        assert_eq!(to(&FxHashMap::default()).as_deref(), Some("imp-2"), "the latest touch");
        let erased_up_to = |ts: i64| [(h("u"), ts)].into_iter().collect::<FxHashMap<u64, i64>>();
        assert_eq!(to(&erased_up_to(1_000)).as_deref(), Some("imp-2"), "a touch after the erasure counts");
        assert_eq!(to(&erased_up_to(5_000)), None, "touches up to the erased events' time do not");

        // Conversions by last touch look clicks up the same way.
        let clicks = EventBatch::from_events(&[
            event("k1", EventType::Click, 2_000, Some("imp-1")),
            event("k2", EventType::Click, 6_000, Some("imp-2")),
        ]);
        let mut refs = Vec::new();
        for_each_anchor(&clicks, None, |a| refs.push(a));
        index.insert_all(refs);
        let conversion = EventBatch::from_events(&[event("v1", EventType::Conversion, 9_500, None)]);
        let to = |erased: &FxHashMap<u64, i64>| {
            let out = attribute(&conversion, &rules, &[&index], erased).expect("attribute");
            let to = out.str_column(ColumnId::AttributedTo);
            arrow_array::Array::is_valid(to, 0).then(|| to.value(0).to_string())
        };
        assert_eq!(to(&FxHashMap::default()).as_deref(), Some("k-k2"), "the latest click");
        assert_eq!(to(&erased_up_to(2_000)).as_deref(), Some("k-k2"), "a click after the erasure counts");
        assert_eq!(to(&erased_up_to(6_000)), None, "clicks up to the erased events' time do not");
    }

    #[test]
    fn rules_validate() {
        assert!(AttributionRules::default().validate().is_ok());
        assert!(AttributionRules { click_window_ms: 0, ..AttributionRules::default() }.validate().is_err());
    }
}
