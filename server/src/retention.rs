//! `GET /v1/retention` and `PUT /v1/retention`: the retention policy in
//! force, and replacing it at run time (validated, persisted in the data
//! directory, applied by the store's retention task at its next pass).
//!
//! ```text
//!  PUT {"raw": {"hot": null, "ttl": "30d"}, "minute": {...}, "hour": {...}, "day": {...}}
//!    ─► RetentionPolicy (a bad duration or field: 400 naming it)
//!    ─► Store::set_retention (a policy that would delete data no coarser level holds yet: 400; old policy unchanged)
//! ```
//!
//! A PUT replaces the whole policy: a level or field left out is `null`
//! (kept forever). `adstore retention set` changes single fields.

use std::sync::Arc;

use adstore_storage::retention::RetentionPolicy;
use adstore_storage::{Catalog, Level, StorageError, Tier};
use axum::Json;
use axum::extract::State;

use crate::error::ServerError;
use crate::extract::BodyBytes;
use crate::http::AppState;

pub async fn get_retention(State(app): State<Arc<AppState>>) -> Json<RetentionPolicy> {
    Json(app.store.retention())
}

pub async fn put_retention(
    State(app): State<Arc<AppState>>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<RetentionPolicy>, ServerError> {
    // A policy that does not parse is refused like one that does not
    // validate: 400, naming the field.
    let mut json = serde_json::Deserializer::from_slice(&body);
    let policy: RetentionPolicy = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        ServerError::BadRequest(format!("retention.{path}: {}", e.into_inner()))
    })?;
    match app.store.set_retention(policy) {
        Ok(()) => Ok(Json(app.store.retention())),
        Err(StorageError::Config(reason)) => Err(ServerError::BadRequest(reason)),
        Err(e) => Err(e.into()),
    }
}

/// Segments and bytes of each (level, tier) in `catalog`, for `/metrics`.
pub fn by_level_and_tier(catalog: &Catalog) -> Vec<(Level, Tier, u64, u64)> {
    let mut out = Vec::new();
    for level in [Level::Raw, Level::Minute, Level::Hour, Level::Day] {
        for tier in [Tier::Local, Tier::Remote, Tier::Expired] {
            let of = catalog.segments_of(level).filter(|m| m.tier == tier);
            let (n, bytes) =
                of.fold((0u64, 0u64), |(n, b), m| (n + 1, b + if tier == Tier::Expired { 0 } else { m.size_bytes }));
            out.push((level, tier, n, bytes));
        }
    }
    out
}
