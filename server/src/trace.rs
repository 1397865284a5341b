//! `GET /v1/trace`: one event, explained — "why was this click not billed?"
//! (docs/trace.md).
//!
//! ```text
//!  ?publisher_id=&type=&event_id=   or ?click_id=[&publisher_id=]   or ?impression_id=[&publisher_id=]
//!    [&user_key=&ad_id=&ts=]        hints for an event that is not stored
//!   ─► Snapshot::find_events (id index, head and segments, local or cold; a query token's advertisers only)
//!   ─► per stored event (trace/explain.rs):
//!        where it is stored (head / segment, tier, provisional or final, rules version)
//!        its duplicates (the duplicate log)
//!        its attribution (anchor by id or by last touch, or why none), re-derived from stored anchors
//!        its invalid reason and the rule that set it
//!        what counts it: measures, rollup buckets (rollup segments of its segment), billing versions
//!   ─► none stored: why that can be, and the nearest candidates
//!        (events naming the id; the same user and ad near the hinted time)
//! ```
//!
//! The explanation is derived from what is stored now with the current
//! rules; the stored decision is the one counted. Where the two differ the
//! answer says why (provisional bucket not yet re-sealed, other rules).

mod explain;

use std::sync::Arc;

use adstore_ingest::{AttributionRules, DuplicateLog, idempotency_key};
use adstore_storage::time::format_timestamp;
use adstore_storage::{ColumnId, DimFilter, EventType, Found, Snapshot, TimeRange};
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ServerError;
use crate::extract::QueryParams;
use crate::http::AppState;

/// Stored events one trace explains (an id sent again after its dedupe
/// window is stored again).
const MAX_TRACED: usize = 10;
/// Candidates listed for an event that is not stored.
const MAX_CANDIDATES: usize = 10;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TraceParams {
    publisher_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    event_id: Option<String>,
    click_id: Option<String>,
    impression_id: Option<String>,
    /// Hints for an event that is not stored: its user, ad and time.
    user_key: Option<String>,
    ad_id: Option<String>,
    ts: Option<String>,
}

/// What the caller asked for, checked.
struct Lookup {
    filters: Vec<DimFilter>,
    /// The dedupe key, when the lookup names one event exactly.
    key: Option<u128>,
    kind: Option<EventType>,
    publisher: Option<String>,
    /// `(column, value)` of an anchor id looked up: events naming it are candidates.
    anchor: Option<(ColumnId, String)>,
    hints: Hints,
}

#[derive(Default)]
struct Hints {
    user_key: Option<String>,
    ad_id: Option<String>,
    ts: Option<i64>,
}

fn checked(name: &str, v: Option<String>) -> Result<Option<String>, ServerError> {
    match v {
        Some(s) if s.is_empty() => Err(ServerError::BadRequest(format!("{name}: must not be empty"))),
        Some(s) if s.len() > adstore_ingest::MAX_STR_BYTES => Err(ServerError::BadRequest(format!(
            "{name}: {} bytes, longer than any stored value can be ({})",
            s.len(),
            adstore_ingest::MAX_STR_BYTES
        ))),
        other => Ok(other),
    }
}

fn lookup_of(p: TraceParams) -> Result<Lookup, ServerError> {
    let publisher = checked("publisher_id", p.publisher_id)?;
    let event_id = checked("event_id", p.event_id)?;
    let click_id = checked("click_id", p.click_id)?;
    let impression_id = checked("impression_id", p.impression_id)?;
    let kind = match p.kind.as_deref() {
        None => None,
        Some(k) => Some(EventType::parse(k).ok_or_else(|| {
            ServerError::BadRequest(format!("type: {k:?} is not an event type; use impression, click or conversion"))
        })?),
    };
    let ts = match p.ts.as_deref() {
        None => None,
        Some(t) => Some(match t.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => adstore_ingest::parse_rfc3339_ms(t).map_err(|e| {
                ServerError::BadRequest(format!("ts: {t:?} is neither epoch milliseconds nor RFC 3339 ({e})"))
            })?,
        }),
    };
    let hints = Hints { user_key: checked("user_key", p.user_key)?, ad_id: checked("ad_id", p.ad_id)?, ts };
    let given = [event_id.is_some(), click_id.is_some(), impression_id.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(ServerError::BadRequest(
            "give exactly one of event_id (with publisher_id and type), click_id or impression_id".into(),
        ));
    }
    let mut filters = Vec::new();
    if let Some(p) = &publisher {
        filters.push(DimFilter::eq(ColumnId::PublisherId, p.clone()));
    }
    let mut lookup = Lookup { filters, key: None, kind, publisher: publisher.clone(), anchor: None, hints };
    if let Some(id) = event_id {
        if id.len() > adstore_ingest::MAX_EVENT_ID_BYTES {
            return Err(ServerError::BadRequest(format!(
                "event_id: {} bytes; an event id has at most {}",
                id.len(),
                adstore_ingest::MAX_EVENT_ID_BYTES
            )));
        }
        let (Some(publisher), Some(kind)) = (&publisher, kind) else {
            return Err(ServerError::BadRequest(
                "event_id: give publisher_id and type too (an event id is unique per publisher and type)".into(),
            ));
        };
        lookup.key = Some(idempotency_key(publisher, kind, &id));
        lookup.filters.push(DimFilter::eq(ColumnId::EventId, id));
    } else {
        let (col, id, anchor_kind) = match (click_id, impression_id) {
            (Some(id), _) => (ColumnId::ClickId, id, EventType::Click),
            (None, Some(id)) => (ColumnId::ImpressionId, id, EventType::Impression),
            (None, None) => return Err(ServerError::Internal("a lookup without an id".into())),
        };
        if kind.is_some_and(|k| k != anchor_kind) {
            return Err(ServerError::BadRequest(format!(
                "type: a lookup by {} finds {}s; leave type out",
                col.name(),
                anchor_kind.as_str()
            )));
        }
        lookup.kind = Some(anchor_kind);
        lookup.filters.push(DimFilter::eq(col, id.clone()));
        lookup.anchor = Some((col, id));
    }
    if let Some(k) = lookup.kind {
        lookup.filters.push(DimFilter::eq(ColumnId::Type, k.as_str()));
    }
    Ok(lookup)
}

/// What a trace reads: the snapshot, the rules, the duplicate log, and the
/// caller's scope (applied to every lookup, anchors included).
pub(crate) struct Tracer<'a> {
    pub snapshot: &'a Snapshot,
    pub rules: &'a AttributionRules,
    pub duplicates: Option<&'a DuplicateLog>,
    pub advertisers: Option<Vec<String>>,
    pub allowed_lateness_ms: i64,
    /// For a user whose identity was erased, the newest event time erased
    /// (`ExactlyOnce::erased_touch_floor`).
    pub erased_floor: &'a dyn Fn(&str) -> Option<i64>,
}

impl Tracer<'_> {
    /// Stored events passing `filters` (and the caller's scope).
    fn find(&self, mut filters: Vec<DimFilter>, range: TimeRange, limit: usize) -> Result<Found, ServerError> {
        if let Some(advertisers) = &self.advertisers {
            filters.push(DimFilter { column: ColumnId::AdvertiserId, values: advertisers.clone(), negated: false });
        }
        Ok(self.snapshot.find_events(filters, range, limit)?)
    }

    /// The duplicate log's record of `key` (the copies whose event time
    /// passes `keep`), as JSON.
    fn duplicates_of(&self, key: u128, keep: impl Fn(i64) -> bool) -> Result<Value, ServerError> {
        let Some(log) = self.duplicates else {
            return Ok(json!({"kept": false, "note": "the duplicate log is off (ingest.duplicate_log_bytes = 0)"}));
        };
        let found = log
            .lookup_where(key, keep)
            .map_err(|e| ServerError::Internal(format!("reading the duplicate log: {e}")))?;
        let stats = log.stats();
        Ok(json!({
            "kept": true,
            "count": found.count,
            "arrivals": found.arrivals.iter().map(|a| json!({
                "received": format_timestamp(a.received_ms),
                "ts": format_timestamp(a.ts),
                "stage": a.stage,
            })).collect::<Vec<_>>(),
            "log_since": stats.oldest_ms.map(format_timestamp),
        }))
    }

    fn trace(&self, lookup: &Lookup) -> Result<Value, ServerError> {
        let found = self.find(lookup.filters.clone(), TimeRange::ALL, MAX_TRACED)?;
        let mut traces = Vec::new();
        for f in &found.events {
            // An id stored again past its dedupe window: each copy gets the
            // duplicates nearest to it in event time.
            let e = &f.event;
            let copies: Vec<i64> = found
                .events
                .iter()
                .map(|g| &g.event)
                .filter(|g| g.publisher_id == e.publisher_id && g.kind == e.kind && g.event_id == e.event_id)
                .map(|g| g.ts)
                .collect();
            traces.push(explain::explain(self, f, &copies)?);
        }
        let mut answer = json!({
            "found": found.matched,
            "traced": traces.len(),
            "more": found.truncated,
            "traces": traces,
        });
        if let Some((from, to)) = found.expired.filter(|_| found.events.is_empty()) {
            answer["expired"] = json!({
                "from": (from > i64::MIN).then(|| format_timestamp(from)),
                "to": format_timestamp(to),
                "note": "raw events of this time were deleted by retention (retention.raw.ttl): an event there cannot be traced",
            });
        }
        if found.events.is_empty() {
            answer["not_found"] = self.not_found(lookup)?;
        }
        Ok(answer)
    }

    /// Why an event may be missing, and the stored events nearest to it.
    fn not_found(&self, lookup: &Lookup) -> Result<Value, ServerError> {
        let mut out = json!({
            "why": "no stored event matches: it was never received, was rejected at ingest (the ingest response named its line and reason), or retention deleted it",
        });
        // Duplicates of a key whose first copy is not stored are only shown
        // to callers who see every advertiser.
        if let (Some(key), None) = (lookup.key, &self.advertisers) {
            out["duplicates"] = self.duplicates_of(key, |_| true)?;
        }
        // Events that name the missing anchor: conversions naming a click, clicks naming an impression.
        if let Some((col, id)) = &lookup.anchor {
            let naming = if *col == ColumnId::ClickId { EventType::Conversion } else { EventType::Click };
            let mut filters = vec![DimFilter::eq(*col, id.clone()), DimFilter::eq(ColumnId::Type, naming.as_str())];
            if let Some(p) = &lookup.publisher {
                filters.push(DimFilter::eq(ColumnId::PublisherId, p.clone()));
            }
            let named = self.find(filters, TimeRange::ALL, MAX_CANDIDATES)?;
            out["named_by"] = Value::Array(named.events.iter().map(|f| explain::brief(&f.event)).collect());
        }
        let (Some(user), Some(ad), Some(ts)) = (&lookup.hints.user_key, &lookup.hints.ad_id, lookup.hints.ts) else {
            out["candidates_hint"] =
                json!("give user_key, ad_id and ts to list the stored events of that user and ad nearest to it");
            return Ok(out);
        };
        let mut filters =
            vec![DimFilter::eq(ColumnId::UserKey, user.clone()), DimFilter::eq(ColumnId::AdId, ad.clone())];
        if let Some(p) = &lookup.publisher {
            filters.push(DimFilter::eq(ColumnId::PublisherId, p.clone()));
        }
        let window = match lookup.kind {
            Some(EventType::Conversion) => self.rules.conversion_window_ms,
            _ => self.rules.click_window_ms,
        };
        let range =
            TimeRange { start_ms: ts.saturating_sub(window), end_ms: ts.saturating_add(window).saturating_add(1) };
        let mut near = self.find(filters, range, usize::MAX)?.events;
        near.sort_by_key(|f| (f.event.ts.abs_diff(ts), f.event.ts));
        out["candidates"] = Value::Array(
            near.iter()
                .take(MAX_CANDIDATES)
                .map(|f| {
                    let mut b = explain::brief(&f.event);
                    b["seconds_from_ts"] = json!((f.event.ts - ts) as f64 / 1000.0);
                    b
                })
                .collect(),
        );
        let publisher = lookup.publisher.as_ref().map_or(String::new(), |p| format!("publisher {p:?}, "));
        out["candidates_window"] = json!(format!(
            "{publisher}same user_key and ad_id, {} to {} (ts ± the {} window)",
            format_timestamp(range.start_ms),
            format_timestamp(range.end_ms - 1),
            if lookup.kind == Some(EventType::Conversion) { "conversion" } else { "click" }
        ));
        Ok(out)
    }
}

pub(crate) async fn trace(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    QueryParams(p): QueryParams<TraceParams>,
) -> Result<Json<Value>, ServerError> {
    let lookup = lookup_of(p)?;
    let advertisers = principal.row_scope();
    let turn = app.admission.admit(&app.metrics).await?;
    let answer = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let snapshot = app.store.snapshot();
        let rules = app.exactly_once.rules();
        let erased_floor = |user: &str| app.exactly_once.erased_touch_floor(user);
        let tracer = Tracer {
            erased_floor: &erased_floor,
            snapshot: &snapshot,
            rules: &rules,
            duplicates: app.exactly_once.duplicate_log().map(|l| l.as_ref()),
            advertisers,
            allowed_lateness_ms: app.config.ingest.allowed_lateness_ms,
        };
        tracer.trace(&lookup)
    })
    .await
    .map_err(|e| ServerError::Internal(format!("trace task failed: {e}")))??;
    Ok(Json(answer))
}
