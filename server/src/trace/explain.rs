//! One stored event explained: where it is, its duplicates, its
//! attribution (or why none), its invalid reason, and what counts it.
//!
//! Attribution is derived again here from the stored anchors by the rules
//! of DESIGN.md §3, as `ExactlyOnce` applies them at seal: a click by its
//! `impression_id` (same publisher and ad, `impression.ts <= click.ts <=
//! impression.ts + click_window`), else by last touch (the latest
//! impression with an id, of the same `user_key`, publisher and ad, in the
//! window; ties by id); a conversion likewise by `click_id`, else by last
//! touch on (`user_key`, publisher, advertiser) in the conversion window.

use adstore_ingest::idempotency_key;
use adstore_storage::billing::{BillingSnapshot, as_seen_by, day_name};
use adstore_storage::measure::Measure;
use adstore_storage::rollup::Granularity;
use adstore_storage::time::format_timestamp;
use adstore_storage::{
    ColumnId, DimFilter, Event, EventType, FoundEvent, InvalidReason, ScanSource, SegmentId, TimeRange,
};
use serde_json::{Value, json};

use super::Tracer;
use crate::error::ServerError;

/// Events listed as attributed to an anchor.
const MAX_LISTED: usize = 10;

/// The fields that identify an event, for lists.
pub(super) fn brief(e: &Event) -> Value {
    json!({
        "type": e.kind.as_str(),
        "event_id": e.event_id,
        "publisher_id": e.publisher_id,
        "ts": format_timestamp(e.ts),
        "ad_id": e.ad_id,
        "advertiser_id": e.advertiser_id,
        "user_key": e.user_key,
        "impression_id": e.impression_id,
        "click_id": e.click_id,
        "attributed_to": e.attributed_to,
        "invalid_reason": e.invalid_reason.as_str(),
    })
}

/// Every field of an event: [`brief`]'s and the rest.
fn full(e: &Event) -> Value {
    let mut out = brief(e);
    let rest = json!({
        "ts_ms": e.ts,
        "campaign_id": e.campaign_id,
        "ad_group_id": e.ad_group_id,
        "device": e.device,
        "os": e.os,
        "country": e.country,
        "region": e.region,
        "placement": e.placement,
        "cost_micros": e.cost_micros,
        "value_micros": e.value_micros,
        "ip_hash": e.ip_hash,
        "ua_hash": e.ua_hash,
        "attributed": e.attributed,
    });
    if let (Some(out), Value::Object(rest)) = (out.as_object_mut(), rest) {
        out.extend(rest);
    }
    out
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Where the event is stored and under which decisions.
struct Stored {
    json: Value,
    segment: Option<SegmentId>,
    is_final: bool,
    rules_version: u32,
}

fn stored(t: &Tracer<'_>, f: &FoundEvent) -> Stored {
    let width = t.snapshot.bucket_width_ms;
    let bucket = f.event.ts.saturating_sub(f.event.ts.rem_euclid(width));
    let final_after = format_timestamp(bucket.saturating_add(width).saturating_add(t.allowed_lateness_ms));
    let provisional = |state: &str| {
        format!(
            "{state}: its decisions are provisional until its bucket closes ({final_after} by event time, or earlier by the wall clock once events stop) and is re-sealed"
        )
    };
    match f.at {
        ScanSource::Head { lsn } => Stored {
            json: json!({
                "in": "head",
                "wal_lsn": lsn.0,
                "final": false,
                "rules_version": t.rules.version,
                "bucket": format_timestamp(bucket),
                "note": provisional("acknowledged and not sealed yet"),
            }),
            segment: None,
            is_final: false,
            rules_version: t.rules.version,
        },
        ScanSource::Segment { id, .. } => {
            let meta = t.snapshot.segment_meta(id);
            let is_final = meta.is_some_and(|m| m.is_final);
            let rules_version = meta.map_or(t.rules.version, |m| m.attribution_version);
            let mut json = json!({
                "in": "segment",
                "segment": id.to_string(),
                "tier": meta.map(|m| m.tier.as_str()),
                "final": is_final,
                "rules_version": rules_version,
                "sealed": meta.map(|m| format_timestamp(m.created_ms)),
                "bucket": format_timestamp(bucket),
            });
            if let Some(job) = meta.and_then(|m| m.reprocess_job) {
                json["reprocess_job"] = json!(job);
            }
            if !is_final {
                json["note"] = json!(provisional("sealed provisionally"));
            }
            Stored { json, segment: Some(id), is_final, rules_version }
        }
    }
}

/// An anchor the rules pick for an event, or why none.
struct Derived {
    method: &'static str,
    anchor: Option<Event>,
    why_not: Option<String>,
    window_ms: i64,
}

fn eq(col: ColumnId, v: &str) -> DimFilter {
    DimFilter::eq(col, v.to_string())
}

/// Which anchors an event looks for: (anchor type, id column, id the event
/// names, the dimension that must match, its value, window).
struct Rule<'e> {
    anchor: EventType,
    id_col: ColumnId,
    named: Option<&'e String>,
    same_col: ColumnId,
    same: &'e str,
    window_ms: i64,
}

impl Rule<'_> {
    fn anchor_id<'a>(&self, a: &'a Event) -> Option<&'a String> {
        if self.id_col == ColumnId::ImpressionId { a.impression_id.as_ref() } else { a.click_id.as_ref() }
    }

    fn same_of<'a>(&self, a: &'a Event) -> &'a str {
        if self.same_col == ColumnId::AdId { &a.ad_id } else { &a.advertiser_id }
    }

    /// "an impression" or "a click".
    fn an_anchor(&self) -> &'static str {
        if self.anchor == EventType::Impression { "an impression" } else { "a click" }
    }
}

fn derive(t: &Tracer<'_>, e: &Event) -> Result<Option<Derived>, ServerError> {
    let rule = match e.kind {
        EventType::Impression => return Ok(None),
        EventType::Click => Rule {
            anchor: EventType::Impression,
            id_col: ColumnId::ImpressionId,
            named: e.impression_id.as_ref(),
            same_col: ColumnId::AdId,
            same: &e.ad_id,
            window_ms: t.rules.click_window_ms,
        },
        EventType::Conversion => Rule {
            anchor: EventType::Click,
            id_col: ColumnId::ClickId,
            named: e.click_id.as_ref(),
            same_col: ColumnId::AdvertiserId,
            same: &e.advertiser_id,
            window_ms: t.rules.conversion_window_ms,
        },
    };
    let (anchor, id_name, same_name) = (rule.anchor.as_str(), rule.id_col.name(), rule.same_col.name());
    let a_anchor = rule.an_anchor();
    let window_s = seconds(rule.window_ms);
    let lo = e.ts.saturating_sub(rule.window_ms);
    let in_window = |a: &Event| rule.same_of(a) == rule.same && a.ts <= e.ts && a.ts >= lo;
    let base = vec![eq(ColumnId::Type, anchor), eq(ColumnId::PublisherId, &e.publisher_id)];
    if let Some(id) = rule.named {
        let mut filters = base;
        filters.push(eq(rule.id_col, id));
        let found = t.find(filters, TimeRange::ALL, MAX_LISTED)?.events;
        let chosen = found.iter().find(|a| in_window(&a.event)).map(|a| a.event.clone());
        let why_not = match (&chosen, found.first()) {
            (Some(_), _) => None,
            (None, None) => {
                Some(format!("no {anchor} with {id_name} {id:?} from publisher {:?} is stored", e.publisher_id))
            }
            (None, Some(a)) => Some(outside(&a.event, e, &rule, id)),
        };
        return Ok(Some(Derived { method: id_name, anchor: chosen, why_not, window_ms: rule.window_ms }));
    }
    let method = if rule.same_col == ColumnId::AdId {
        "last_touch (user_key, ad_id)"
    } else {
        "last_touch (user_key, advertiser_id)"
    };
    let Some(user) = &e.user_key else {
        return Ok(Some(Derived {
            method,
            anchor: None,
            why_not: Some(format!(
                "the {} names no {id_name} and has no user_key: nothing to attribute it by",
                e.kind.as_str()
            )),
            window_ms: rule.window_ms,
        }));
    };
    let mut filters = base;
    filters.push(eq(ColumnId::UserKey, user));
    filters.push(eq(rule.same_col, rule.same));
    // Touches up to an erasure of this user are not used (as at seal).
    let from = (t.erased_floor)(user).map_or(lo, |f| lo.max(f.saturating_add(1)));
    let touches = |start_ms: i64, end_ms: i64| -> Result<Vec<Event>, ServerError> {
        let found = t.find(filters.clone(), TimeRange { start_ms, end_ms }, usize::MAX)?;
        Ok(found.events.into_iter().map(|f| f.event).filter(|a| rule.anchor_id(a).is_some()).collect())
    };
    let latest = |a: &&Event, b: &&Event| (a.ts, rule.anchor_id(a)).cmp(&(b.ts, rule.anchor_id(b)));
    let inside = touches(from, e.ts.saturating_add(1))?;
    let chosen = inside.iter().filter(|a| in_window(a)).max_by(latest).cloned();
    let why_not = if chosen.is_some() {
        None
    } else if from > lo {
        Some(format!(
            "no {anchor} with {id_name} of user_key {user:?} on {same_name} {:?} in the window after {}: the user's touches up to then were erased on request and are not used",
            rule.same,
            format_timestamp(from - 1)
        ))
    } else if let Some(before) = touches(lo.saturating_sub(rule.window_ms), lo)?.iter().max_by(latest) {
        let id = rule.anchor_id(before).map_or("", String::as_str);
        Some(format!(
            "the latest {anchor} of user_key {user:?} on {same_name} {:?} before it, {id:?}, came {} s earlier: {} s outside the {window_s} s window",
            rule.same,
            seconds(e.ts - before.ts),
            seconds(lo - before.ts)
        ))
    } else if let Some(after) =
        touches(e.ts.saturating_add(1), e.ts.saturating_add(rule.window_ms).saturating_add(1))?.first()
    {
        let id = rule.anchor_id(after).map_or("", String::as_str);
        Some(format!(
            "the first {anchor} of user_key {user:?} on {same_name} {:?} near it, {id:?}, came {} s after it: {a_anchor} must come first",
            rule.same,
            seconds(after.ts - e.ts)
        ))
    } else {
        Some(format!(
            "no {anchor} with {id_name} of user_key {user:?} on {same_name} {:?} from publisher {:?} is stored within {window_s} s before or after it",
            rule.same, e.publisher_id
        ))
    };
    Ok(Some(Derived { method, anchor: chosen, why_not, window_ms: rule.window_ms }))
}

/// Why the anchor `a` an event names by id does not attribute it.
fn outside(a: &Event, e: &Event, rule: &Rule<'_>, id: &str) -> String {
    let (anchor, same_name, kind) = (rule.anchor.as_str(), rule.same_col.name(), e.kind.as_str());
    if rule.same_of(a) != rule.same {
        format!(
            "{anchor} {id:?} is for {same_name} {:?}, the {kind} for {:?}: attribution needs the same {same_name}",
            rule.same_of(a),
            rule.same
        )
    } else if a.ts > e.ts {
        format!(
            "{anchor} {id:?} came {} s after the {kind}: {} must come first",
            seconds(a.ts - e.ts),
            rule.an_anchor()
        )
    } else {
        format!(
            "{anchor} {id:?} came {} s before the {kind}: {} s outside the {} s window",
            seconds(e.ts - a.ts),
            seconds(e.ts - a.ts - rule.window_ms),
            seconds(rule.window_ms)
        )
    }
}

fn attribution(
    t: &Tracer<'_>,
    e: &Event,
    where_: &Stored,
    erased: bool,
) -> Result<(Value, Option<Event>), ServerError> {
    let (mut out, anchor) = if erased && e.kind != EventType::Impression {
        let out = json!({
            "attributed": e.attributed,
            "attributed_to": e.attributed_to,
            "rules_version": where_.rules_version,
            "method": "not derived again: the event's identity was erased on request, and its decision was kept from before the erasure",
        });
        (out, None)
    } else {
        match derive(t, e)? {
            None => (json!({"method": "none: impressions are what clicks are attributed to"}), None),
            Some(d) => decision(t, e, where_, d),
        }
    };
    attributed_to_it(t, e, &mut out)?;
    Ok((out, anchor))
}

/// The stored decision beside the one derived now, and why they differ.
fn decision(t: &Tracer<'_>, e: &Event, where_: &Stored, d: Derived) -> (Value, Option<Event>) {
    let derived_to = d
        .anchor
        .as_ref()
        .and_then(|a| if e.kind == EventType::Click { a.impression_id.clone() } else { a.click_id.clone() });
    let agrees = e.attributed == derived_to.is_some() && (!e.attributed || e.attributed_to == derived_to);
    let mut out = json!({
        "attributed": e.attributed,
        "attributed_to": e.attributed_to,
        "method": d.method,
        "window_s": seconds(d.window_ms),
        "rules_version": where_.rules_version,
        "derived_now": {
            "attributed_to": derived_to,
            "anchor": d.anchor.as_ref().map(|a| {
                let mut b = brief(a);
                b["seconds_before"] = json!(seconds(e.ts - a.ts));
                b
            }),
            "why_not": d.why_not,
        },
        "agrees": agrees,
    });
    if !agrees {
        out["note"] = json!(if !where_.is_final {
            "the stored decision is provisional: it was made with the anchors known then; the final re-seal of its bucket decides again with everything arrived by then".to_string()
        } else if where_.rules_version != t.rules.version {
            format!(
                "decided under rules version {} (derived now under version {}): a reprocess applies the current rules",
                where_.rules_version, t.rules.version
            )
        } else {
            "decided when its bucket became final; the anchors stored now decide otherwise (events loaded later by backfill, or anchors older than the attribution index reached at seal)".to_string()
        });
    }
    (out, d.anchor)
}

/// The events attributed to an impression or a click, in `out`: those
/// naming it by id, and those of its user (by last touch), both found by
/// the id index, in the attribution window after it.
fn attributed_to_it(t: &Tracer<'_>, e: &Event, out: &mut Value) -> Result<(), ServerError> {
    let (own_id, kind, id_col, window) = match e.kind {
        EventType::Impression => (&e.impression_id, EventType::Click, ColumnId::ImpressionId, t.rules.click_window_ms),
        EventType::Click => (&e.click_id, EventType::Conversion, ColumnId::ClickId, t.rules.conversion_window_ms),
        EventType::Conversion => return Ok(()),
    };
    let Some(id) = own_id else { return Ok(()) };
    let range = TimeRange { start_ms: e.ts, end_ms: e.ts.saturating_add(window).saturating_add(1) };
    let base = vec![
        eq(ColumnId::AttributedTo, id),
        eq(ColumnId::Type, kind.as_str()),
        eq(ColumnId::PublisherId, &e.publisher_id),
    ];
    let mut by_id = base.clone();
    by_id.push(eq(id_col, id));
    let mut found: Vec<Event> = t.find(by_id, range, MAX_LISTED)?.events.into_iter().map(|f| f.event).collect();
    if let Some(user) = &e.user_key {
        let mut by_user = base;
        by_user.push(eq(ColumnId::UserKey, user));
        found.extend(t.find(by_user, range, MAX_LISTED)?.events.into_iter().map(|f| f.event));
    }
    found.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    found.dedup_by(|a, b| a.ts == b.ts && a.event_id == b.event_id);
    found.truncate(MAX_LISTED);
    out[format!("attributed_{}s", kind.as_str())] = Value::Array(found.iter().map(brief).collect());
    Ok(())
}

/// The invalid reason, the rule that set it and the facts it saw. A
/// threshold is quoted only from the rules that decided the event: the
/// current rules are the only ones kept, so under other rules the answer
/// gives the facts and says what the current rules set.
fn invalid(t: &Tracer<'_>, e: &Event, anchor: Option<&Event>, where_: &Stored) -> Result<Value, ServerError> {
    let r = &t.rules;
    let same_rules = where_.rules_version == r.version;
    let (rule, detail) = match e.invalid_reason {
        InvalidReason::Valid => {
            let detail = match e.kind {
                EventType::Conversion if e.attributed => "valid: counted in attributed_conversions",
                EventType::Conversion => {
                    "valid, but not attributed: counted in conversions, not attributed_conversions"
                }
                _ => "valid: counted in the billable measures",
            };
            let mut out = json!({"reason": "", "detail": detail});
            if !where_.is_final {
                out["note"] = json!(
                    "provisional: the final re-seal of its bucket decides again (a click flood may be counted only then)"
                );
            }
            return Ok(out);
        }
        InvalidReason::Unattributed => (
            "unattributed".to_string(),
            "a click with no attributable impression (see attribution) is stored and counted as a click, never billed"
                .to_string(),
        ),
        InvalidReason::TooFast => {
            let gap = match anchor {
                Some(a) => format!(
                    "the click came {} ms after impression {:?}",
                    e.ts - a.ts,
                    a.impression_id.as_deref().unwrap_or("")
                ),
                None => "the click came too soon after its impression".to_string(),
            };
            (
                "too_fast_ms".to_string(),
                if same_rules {
                    format!("{gap}; clicks sooner than {} ms after their impression are invalid", r.too_fast_ms)
                } else {
                    format!("{gap}; the current rules (version {}) set too_fast_ms = {}", r.version, r.too_fast_ms)
                },
            )
        }
        InvalidReason::ClickFlood => {
            let seen = flood(t, e)?;
            (
                "click_flood_per_minute".to_string(),
                if same_rules {
                    format!("{seen}; clicks past the {}th in a minute are invalid", r.click_flood_per_minute)
                } else {
                    format!(
                        "{seen}; the current rules (version {}) set click_flood_per_minute = {}",
                        r.version, r.click_flood_per_minute
                    )
                },
            )
        }
        InvalidReason::BotUa => (
            "bot_ua_hashes".to_string(),
            match &e.ua_hash {
                Some(ua) if r.bot_ua_hashes.contains(ua) => format!("ua_hash {ua:?} is in the rules' bot_ua_hashes"),
                Some(ua) => format!(
                    "ua_hash {ua:?} was in bot_ua_hashes when the event was decided (it is not in the current rules)"
                ),
                None => {
                    "its ua_hash was in bot_ua_hashes when the event was decided (the ua_hash has been erased since)"
                        .to_string()
                }
            },
        ),
        InvalidReason::BadSignature => (
            "publisher signing key".to_string(),
            format!(
                "the click's signed impression id did not verify with publisher {:?}'s signing key (checked at ingest)",
                e.publisher_id
            ),
        ),
    };
    let mut out = json!({
        "reason": e.invalid_reason.as_str(),
        "rule": rule,
        "rules_version": where_.rules_version,
        "detail": detail,
    });
    if !where_.is_final {
        out["note"] = json!("provisional: the final re-seal of its bucket decides again");
    }
    Ok(out)
}

/// The click's place among the clicks on its ad by its user (or ip) in its minute.
fn flood(t: &Tracer<'_>, e: &Event) -> Result<String, ServerError> {
    // Clicks are counted by user_key, or by ip_hash for those without one.
    let (col, who, by_ip) = match (&e.user_key, &e.ip_hash) {
        (Some(u), _) => (ColumnId::UserKey, u, false),
        (None, Some(ip)) => (ColumnId::IpHash, ip, true),
        (None, None) => return Ok("its user_key and ip_hash have been erased since it was decided".to_string()),
    };
    let minute = e.ts.saturating_sub(e.ts.rem_euclid(60_000));
    // A seal counts within its time bucket: the minute's part in it.
    let width = t.snapshot.bucket_width_ms;
    let bucket = e.ts.saturating_sub(e.ts.rem_euclid(width));
    let filters = vec![
        eq(ColumnId::Type, EventType::Click.as_str()),
        eq(ColumnId::PublisherId, &e.publisher_id),
        eq(ColumnId::AdId, &e.ad_id),
        eq(col, who),
    ];
    let range = TimeRange {
        start_ms: minute.max(bucket),
        end_ms: minute.saturating_add(60_000).min(bucket.saturating_add(width)),
    };
    let mut clicks: Vec<Event> = t.find(filters, range, usize::MAX)?.events.into_iter().map(|f| f.event).collect();
    clicks.retain(|c| !by_ip || c.user_key.is_none());
    clicks.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    let place = clicks.iter().position(|c| c.event_id == e.event_id).map_or(0, |p| p + 1);
    Ok(format!(
        "click {place} of {} on ad {:?} by {} {who:?} in the minute from {}",
        clicks.len(),
        e.ad_id,
        col.name(),
        format_timestamp(minute)
    ))
}

fn counted_in(t: &Tracer<'_>, e: &Event, where_: &Stored) -> Result<Value, ServerError> {
    let mut measures = serde_json::Map::new();
    for m in Measure::sums() {
        if let Some(v) = m.of(e).filter(|v| *v != 0) {
            measures.insert(m.name().to_string(), json!(v));
        }
    }
    if e.user_key.is_some() {
        measures.insert(Measure::Users.name().to_string(), json!("its user_key is in the users sketch"));
    }
    let Some(segment) = where_.segment else {
        return Ok(json!({
            "measures": measures,
            "rollups": [],
            "rollups_note": "in the head: metrics counts it from the head at query time; its rollup rows are written when its bucket seals",
        }));
    };
    let mut rollups = Vec::new();
    for m in t.snapshot.catalog.segments.values() {
        let Some(r) = &m.rollup else { continue };
        if !(m.source == Some(segment) || m.covers.contains(&segment)) {
            continue;
        }
        let Some(g) =
            [Granularity::Minute, Granularity::Hour, Granularity::Day].into_iter().find(|g| g.level() == m.level)
        else {
            continue;
        };
        let width = g.width_ms();
        rollups.push(json!({
            "rollup": r.name,
            "granularity": g.name(),
            "bucket": format_timestamp(e.ts.saturating_sub(e.ts.rem_euclid(width))),
            "segment": m.id.to_string(),
            "final": m.is_final,
        }));
    }
    let none = rollups.is_empty();
    let mut out = json!({"measures": measures, "rollups": rollups});
    if none {
        out["rollups_note"] =
            json!("no rollup segment derives from its segment: no [[rollups]] are configured, or they are being built");
    }
    out["billing"] = billing(t, e, where_, segment)?;
    Ok(out)
}

fn billing(t: &Tracer<'_>, e: &Event, where_: &Stored, segment: SegmentId) -> Result<Value, ServerError> {
    let day = e.ts.saturating_sub(e.ts.rem_euclid(Granularity::Day.width_ms()));
    let key = json!({"day": day_name(day), "advertiser_id": e.advertiser_id, "campaign_id": e.campaign_id});
    if !where_.is_final {
        return Ok(
            json!({"row": key, "versions": [], "note": "billing snapshots hold final days only: this event's bucket is not final yet"}),
        );
    }
    let day_entries: Vec<BillingSnapshot> =
        t.snapshot.catalog.billing.iter().filter(|b| b.day_ms == day).cloned().collect();
    let seen: Vec<BillingSnapshot> = match &t.advertisers {
        None => day_entries,
        Some(advertisers) => as_seen_by(&day_entries, |b| t.snapshot.billing_batch(b), advertisers)?
            .into_iter()
            .map(|(b, _)| b)
            .collect(),
    };
    let versions: Vec<Value> = seen
        .iter()
        .map(|b| {
            json!({
                "version": b.version,
                "cause": b.cause,
                "rules_version": b.rules_version,
                "reprocess_job": b.reprocess_job,
                "created": format_timestamp(b.created_ms),
                // A scoped caller's versions are renumbered: their basis is not theirs.
                "checked_against_its_segment": t.advertisers.is_none().then(|| b.basis.contains(&segment)),
            })
        })
        .collect();
    let mut out = json!({"row": key, "versions": versions});
    if seen.is_empty() {
        out["note"] = json!("no snapshot of this day yet: one is written once every bucket of the day is final");
    }
    Ok(out)
}

/// The whole trace of one stored event.
/// `copies`: the event times of every stored copy of its id (more than one
/// when it was sent again past its dedupe window).
pub(super) fn explain(t: &Tracer<'_>, f: &FoundEvent, copies: &[i64]) -> Result<Value, ServerError> {
    let e = &f.event;
    let key = idempotency_key(&e.publisher_id, e.kind, &e.event_id);
    let erased = t.snapshot.erased.contains(key);
    let where_ = stored(t, f);
    let (attribution, anchor) = attribution(t, e, &where_, erased)?;
    let mut out = json!({
        "event": full(e),
        "stored": where_.json,
        "duplicates": t.duplicates_of(key, |ts| {
            // This copy's: the duplicates nearer to it than to any other copy.
            let nearest = copies.iter().min_by_key(|c| (c.abs_diff(ts), **c)).copied();
            nearest.is_none_or(|c| c == e.ts)
        })?,
        "attribution": attribution,
        "invalid": invalid(t, e, anchor.as_ref(), &where_)?,
        "counted_in": counted_in(t, e, &where_)?,
    });
    if where_.rules_version != t.rules.version {
        out["rules_note"] = json!(format!(
            "decided under rules version {}; explained with the current rules, version {}",
            where_.rules_version, t.rules.version
        ));
    }
    if erased {
        out["erased"] = json!("its user_key, ip_hash and ua_hash were erased on request (GET /v1/erasure)");
    }
    Ok(out)
}
