//! `GET /c`: the click redirect. A user's click on an ad lands here; the
//! click is recorded durably and the browser is sent on to the
//! advertiser's page.
//!
//! ```text
//!  GET /c?publisher_id=&advertiser_id=&campaign_id=&ad_id=[&impression_id=][&ad_group_id=][&placement=][&user_key=][&dest=]
//!    ─► destination: dest, else [click.landing_pages] of the campaign; an http(s) URL whose host
//!       is one of the advertiser's [click.destinations] (no open redirect), else 400
//!    ─► a click event: ts now, event_id and click_id from (publisher, impression, user or IP,
//!       user agent, advertiser, campaign, ad, second) so a double click inside one second
//!       is one click
//!    ─► the click writer: one thread takes every click waiting (up to 4,096) as one batch
//!       ─► signing check (auth/signing.rs) ─► dedupe + attribution + WAL fsync (the ingest path)
//!    ─► 302 Location: destination (a HEAD request is answered the same, and records nothing)
//! ```
//!
//! Clicks come one per request, thousands a second: written one by one,
//! each paid a thread hand-off, an Arrow batch and a WAL record of its
//! own. The writer groups the clicks that arrive while the previous group
//! is being written, so the cost per click falls as the rate rises.
//!
//! The route is public: the user's browser has no token. It answers only
//! after the WAL fsync that covers the click, like `POST /v1/events`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use adstore_storage::{Event, EventBatch, EventType};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ServerError;
use crate::extract::QueryParams;
use crate::http::{AppState, now_ms};

/// `[click]`: where click redirects may send users.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickConfig {
    /// Advertiser id ─► the hosts its destinations may point at: a host
    /// (`shop.example.com`), or `*.example.com` for its subdomains.
    pub destinations: BTreeMap<String, Vec<String>>,
    /// Campaign id ─► the page a click without `dest` goes to.
    pub landing_pages: BTreeMap<String, String>,
}

impl ClickConfig {
    /// Whether `url` is an `http(s)` URL `advertiser_id` may send users to.
    ///
    /// # Errors
    /// Why not, for a 400 answer.
    pub fn allowed(&self, advertiser_id: &str, url: &str) -> Result<(), String> {
        let uri: Uri = url.parse().map_err(|_| format!("dest: {url:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("dest: {url:?} is not an http or https URL"));
        }
        let authority = uri.authority().ok_or_else(|| format!("dest: {url:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("dest: {url:?} has user information before its host"));
        }
        let host = authority.host().to_ascii_lowercase();
        let hosts = self.destinations.get(advertiser_id).ok_or_else(|| {
            format!("advertiser {advertiser_id:?} has no allowed destinations ([click.destinations])")
        })?;
        let fits = |pattern: &String| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => host == pattern,
            }
        };
        if hosts.iter().any(fits) {
            Ok(())
        } else {
            Err(format!("dest: host {host:?} is not one of advertiser {advertiser_id:?}'s destinations"))
        }
    }

    /// Checks every destination pattern is a plain ASCII host name (IDN
    /// hosts in their `xn--` form) and every `*.` pattern names a domain
    /// of at least two labels, and every landing page is an http(s) URL
    /// whose host some advertiser's destinations allow.
    ///
    /// # Errors
    /// `Config` naming the advertiser or campaign.
    pub fn validate(&self) -> Result<(), ServerError> {
        for (advertiser, hosts) in &self.destinations {
            for pattern in hosts {
                check_pattern(pattern).map_err(|why| {
                    ServerError::Config(format!("click.destinations.{advertiser}: {pattern:?} {why}"))
                })?;
            }
        }
        for (campaign, url) in &self.landing_pages {
            let ok = url.parse::<Uri>().is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !ok {
                return Err(ServerError::Config(format!(
                    "click.landing_pages.{campaign}: {url:?} is not an http or https URL"
                )));
            }
            if !self.destinations.keys().any(|advertiser| self.allowed(advertiser, url).is_ok()) {
                return Err(ServerError::Config(format!(
                    "click.landing_pages.{campaign}: the host of {url:?} is not in any advertiser's \
                     [click.destinations]"
                )));
            }
        }
        Ok(())
    }
}

/// Why a `[click.destinations]` entry can never match safely, if it cannot.
fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    let (wildcard, host) = match pattern.strip_prefix("*.") {
        Some(domain) => (true, domain),
        None => (false, pattern),
    };
    if !host.is_ascii() {
        return Err("is not ASCII: write an internationalized host in its xn-- form");
    }
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("is not a host name (letters, digits, '-' and dots; no scheme, port or path)");
    }
    if wildcard && host.split('.').count() < 2 {
        return Err("is too broad: a wildcard needs a domain of two labels or more (*.example.com)");
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClickParams {
    publisher_id: Option<String>,
    advertiser_id: Option<String>,
    campaign_id: Option<String>,
    ad_id: Option<String>,
    impression_id: Option<String>,
    ad_group_id: Option<String>,
    placement: Option<String>,
    user_key: Option<String>,
    dest: Option<String>,
}

/// Longest value of a parameter, as for ingested string fields.
const MAX_VALUE_BYTES: usize = 1024;

fn required(name: &'static str, value: Option<String>) -> Result<String, ServerError> {
    match value {
        Some(v) if !v.is_empty() && v.len() <= MAX_VALUE_BYTES => Ok(v),
        Some(v) if !v.is_empty() => {
            Err(ServerError::BadRequest(format!("{name}: {} bytes, over the limit of {MAX_VALUE_BYTES}", v.len())))
        }
        _ => Err(ServerError::BadRequest(format!("{name}: required"))),
    }
}

fn optional(name: &'static str, value: Option<String>) -> Result<Option<String>, ServerError> {
    value.filter(|v| !v.is_empty()).map(|v| required(name, Some(v))).transpose()
}

/// The first 16 bytes of SHA-256 of `parts`, separated, as hex.
fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(p.as_bytes());
        hash.update([0u8]);
    }
    hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn click(
    State(app): State<Arc<AppState>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    method: Method,
    headers: HeaderMap,
    QueryParams(p): QueryParams<ClickParams>,
) -> Result<Response, ServerError> {
    let publisher_id = required("publisher_id", p.publisher_id)?;
    let advertiser_id = required("advertiser_id", p.advertiser_id)?;
    let campaign_id = required("campaign_id", p.campaign_id)?;
    let ad_id = required("ad_id", p.ad_id)?;
    let impression_id = optional("impression_id", p.impression_id)?;
    let user_key = optional("user_key", p.user_key)?;
    let dest = match optional("dest", p.dest)? {
        Some(d) => d,
        None => app.config.click.landing_pages.get(&campaign_id).cloned().ok_or_else(|| {
            ServerError::BadRequest(format!(
                "dest: required, since campaign {campaign_id:?} has no landing page ([click.landing_pages])"
            ))
        })?,
    };
    app.config.click.allowed(&advertiser_id, &dest).map_err(ServerError::BadRequest)?;
    let location = header::HeaderValue::from_str(&dest)
        .map_err(|_| ServerError::BadRequest(format!("dest: {dest:?} cannot be a Location header")))?;
    let no_store = header::HeaderValue::from_static("no-store");
    // A link checker or preloader asks with HEAD: no one clicked.
    if method == Method::HEAD {
        return Ok(
            (StatusCode::FOUND, [(header::LOCATION, location), (header::CACHE_CONTROL, no_store)]).into_response()
        );
    }

    let ts = now_ms();
    let ip_hash = peer.map(|axum::Extension(ConnectInfo(addr))| digest(&[&addr.ip().to_string()]));
    let ua_hash = headers.get(header::USER_AGENT).map(|ua| digest(&[&String::from_utf8_lossy(ua.as_bytes())]));
    let who = user_key.as_deref().or(ip_hash.as_deref()).unwrap_or("");
    let second = ts.div_euclid(1_000).to_string();
    let id = format!(
        "clk-{}",
        digest(&[
            &publisher_id,
            impression_id.as_deref().unwrap_or(""),
            who,
            ua_hash.as_deref().unwrap_or(""),
            &advertiser_id,
            &campaign_id,
            &ad_id,
            &second,
        ])
    );
    let event = Event {
        event_id: id.clone(),
        kind: EventType::Click,
        ts,
        publisher_id,
        advertiser_id,
        campaign_id,
        ad_group_id: optional("ad_group_id", p.ad_group_id)?,
        ad_id,
        impression_id,
        click_id: Some(id),
        user_key,
        placement: optional("placement", p.placement)?,
        ip_hash,
        ua_hash,
        ..Event::default()
    };

    app.store.check_disk_space()?;
    app.store.check_head_room()?;
    app.memory.check(&app.store, &app.exactly_once)?;
    let (done, written) = tokio::sync::oneshot::channel();
    app.clicks
        .get()
        .ok_or_else(|| ServerError::Internal("the click writer has not started".into()))?
        .send(Pending { event, done })
        .map_err(|_| ServerError::Internal("the click writer has stopped".into()))?;
    written.await.map_err(|_| ServerError::Internal("the click writer has stopped".into()))??;
    Ok((StatusCode::FOUND, [(header::LOCATION, location), (header::CACHE_CONTROL, no_store)]).into_response())
}

/// A click waiting to be written, and who waits for it.
pub struct Pending {
    event: Event,
    done: tokio::sync::oneshot::Sender<Result<(), ServerError>>,
}

/// Most clicks written as one batch.
const MAX_GROUP: usize = 4_096;

/// Starts the thread that writes clicks; the sender is `AppState::clicks`.
/// The thread ends when every sender is dropped.
///
/// # Errors
/// `Internal` if the thread cannot be started.
pub fn start_writer(app: std::sync::Weak<AppState>) -> Result<std::sync::mpsc::Sender<Pending>, ServerError> {
    let (tx, rx) = std::sync::mpsc::channel::<Pending>();
    std::thread::Builder::new()
        .name("click-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let Some(app) = app.upgrade() else { return };
                let (events, waiters): (Vec<Event>, Vec<_>) = group.into_iter().map(|p| (p.event, p.done)).unzip();
                let outcome = write(&app, &events);
                for done in waiters {
                    let _ = done.send(outcome.as_ref().map(|_| ()).map_err(|e| ServerError::Internal(e.clone())));
                }
                if let Ok((accepted, duplicates)) = outcome {
                    app.counters.accepted.fetch_add(accepted, Ordering::Relaxed);
                    app.counters.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| ServerError::Internal(format!("cannot start the click writer: {e}")))?;
    Ok(tx)
}

/// Writes one group of clicks as one request would: (accepted, duplicates),
/// or why it failed (every click of the group then fails: none is stored).
fn write(app: &AppState, events: &[Event]) -> Result<(u64, u64), String> {
    let batches = app.auth.signing.mark(vec![EventBatch::from_events(events)]).map_err(|e| e.to_string())?;
    let hold = app.exactly_once.dedupe().hold();
    hold.checked_against(app.newest_ts_ms.load(Ordering::Acquire));
    let summary = app.exactly_once.ingest_all(&app.store, &batches).map_err(|e| e.to_string())?;
    if let Some(max) = events.iter().map(|e| e.ts).max() {
        app.newest_ts_ms.fetch_max(max, Ordering::Release);
    }
    drop(hold);
    Ok((summary.accepted as u64, summary.duplicates as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_the_advertisers_hosts_only() {
        let mut config = ClickConfig::default();
        config.destinations.insert("adv-1".into(), vec!["shop.example.com".into(), "*.example.org".into()]);
        let ok = |url: &str| config.allowed("adv-1", url);
        assert!(ok("https://shop.example.com/sale?x=1").is_ok());
        assert!(ok("http://SHOP.example.com").is_ok());
        assert!(ok("https://a.b.example.org/").is_ok());
        for bad in [
            "https://example.org/",
            "https://evilexample.org/",
            "https://shop.example.com.evil.net/",
            "https://shop.example.com@evil.net/",
            "javascript:alert(1)",
            "//evil.net/",
            "ftp://shop.example.com/",
            "not a url",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(config.allowed("adv-2", "https://shop.example.com/").is_err(), "another advertiser's host");
    }
}
