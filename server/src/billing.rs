//! `GET /v1/billing/daily?day=YYYY-MM-DD[&advertiser_id=][&version=][&format=json|csv]`:
//! a final day's billing snapshot (the latest version unless one is named),
//! per advertiser and campaign, with every version's lineage. A `query`
//! token gets only its advertisers' rows, and only the versions that
//! changed them, numbered as it sees them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::extract::QueryParams;
use crate::http::AppState;
use adstore_storage::billing::{BillingRow, BillingSnapshot, day_name};
use adstore_storage::measure::Measure;
use adstore_storage::time::format_timestamp;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillingParams {
    day: Option<String>,
    advertiser_id: Option<String>,
    version: Option<u32>,
    format: Option<String>,
}

/// `2026-11-22` as the epoch ms of its midnight (UTC).
fn parse_day(day: &str) -> Result<i64, ServerError> {
    let bad = || ServerError::BadRequest(format!("day: {day:?} is not a date like 2026-11-22"));
    if day.len() != 10 {
        return Err(bad());
    }
    adstore_ingest::parse_rfc3339_ms(&format!("{day}T00:00:00Z")).map_err(|_| bad())
}

/// A snapshot version's lineage (for a scoped caller, as it sees it: see
/// [`adstore_storage::billing::as_seen_by`]).
fn lineage(b: &BillingSnapshot) -> serde_json::Value {
    serde_json::json!({
        "version": b.version,
        "created": format_timestamp(b.created_ms),
        "cause": b.cause,
        "reprocess_job": b.reprocess_job,
        "rules_version": b.rules_version,
        "rows": b.rows,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

pub(crate) async fn billing_daily(
    State(app): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    QueryParams(p): QueryParams<BillingParams>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let day_text =
        p.day.as_deref().ok_or_else(|| ServerError::BadRequest("day: required (e.g. day=2026-11-22)".into()))?;
    let day = parse_day(day_text)?;
    let csv = match p.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => return Err(ServerError::BadRequest(format!("format: unknown {other:?}; use json or csv"))),
        None => headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv")),
    };
    let store = app.store.clone();
    let version = p.version;
    let scope = principal.row_scope();
    let scoped = scope.is_some();
    let (versions, found) = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let Some(advertisers) = scope else {
            return Ok((store.billing_versions(day), store.billing_rows(day, version)?));
        };
        let seen = store.billing_seen_by(day, &advertisers)?;
        let versions: Vec<BillingSnapshot> = seen.iter().map(|(e, _)| e.clone()).collect();
        let found = match version {
            Some(v) => seen.into_iter().find(|(e, _)| e.version == v),
            None => seen.into_iter().last(),
        };
        let found = match found {
            Some((entry, batch)) => Some((entry, adstore_storage::billing::rows_of(&batch)?)),
            None => None,
        };
        Ok((versions, found))
    })
    .await
    .map_err(|e| ServerError::Internal(format!("billing read: {e}")))??;
    let Some((entry, rows)) = found else {
        return Err(ServerError::NotFound(match (version, versions.last()) {
            // Not told apart for a scoped caller: whether others had events.
            (_, None) if scoped => format!(
                "no billing snapshot for {} holds rows of your advertisers: the day is not final yet, or they had no events",
                day_name(day)
            ),
            (_, None) => format!(
                "no billing snapshot for {}: the day is not final yet, or holds no events (snapshots hold final numbers only)",
                day_name(day)
            ),
            (Some(v), Some(last)) => {
                format!("{} has no snapshot version {v} (versions 1 to {})", day_name(day), last.version)
            }
            (None, Some(_)) => format!("no billing snapshot for {}", day_name(day)),
        }));
    };
    // A scoped caller's rows are its own already (billing_seen_by).
    let rows: Vec<BillingRow> =
        rows.into_iter().filter(|r| p.advertiser_id.as_ref().is_none_or(|a| *a == r.advertiser_id)).collect();
    if csv {
        // The header names every column even when no row follows.
        let mut out = String::from("day,advertiser_id,campaign_id,version");
        for m in Measure::sums() {
            out.push(',');
            out.push_str(m.name());
        }
        out.push_str(",users\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{}",
                day_name(day),
                csv_field(&r.advertiser_id),
                csv_field(&r.campaign_id),
                entry.version
            ));
            for (_, v) in &r.measures {
                out.push_str(&format!(",{v}"));
            }
            out.push_str(&format!(",{}\n", r.users));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut row = serde_json::Map::new();
            row.insert("advertiser_id".into(), r.advertiser_id.clone().into());
            row.insert("campaign_id".into(), r.campaign_id.clone().into());
            for (name, v) in &r.measures {
                row.insert((*name).into(), (*v).into());
            }
            row.insert("users".into(), r.users.into());
            serde_json::Value::Object(row)
        })
        .collect();
    let mut body = lineage(&entry);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("day".into(), day_name(day).into());
        obj.insert("latest_version".into(), versions.last().map_or(entry.version, |v| v.version).into());
        obj.insert("versions".into(), versions.iter().map(lineage).collect());
        obj.insert("rows".into(), json_rows.into());
    }
    Ok(axum::Json(body).into_response())
}
