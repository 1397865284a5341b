//! The admin API of tokens (admin role):
//!
//! ```text
//!  POST   /v1/tokens        {"role", "name", "publishers", "advertisers", "all_advertisers"}
//!                           ─► 201 {"token": "adst_…" (shown this once), "id", "role", …}
//!  GET    /v1/tokens        ─► {"tokens": [{"id", "name", "role", "publishers", "advertisers", "created_ms", "revoked_ms"}]}
//!  DELETE /v1/tokens/{id}   ─► the revoked token's listing; its next request is refused
//!  PUT    /v1/publishers/{id}/signing-key  {"secret"} ─► clicks of that publisher must carry signed ids
//!  DELETE /v1/publishers/{id}/signing-key             ─► no longer checked
//!  GET    /v1/signing-keys                            ─► {"publishers": [...]}
//!  POST   /v1/events/validate-signature  {"publisher_id", "impression_id"} (ingest or admin) ─► {"verdict", "valid", "billable"}
//! ```

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::tokens::NewToken;
use crate::error::ServerError;
use crate::extract::{BodyBytes, PathParams};
use crate::http::{AppState, now_ms};

pub async fn create(
    State(app): State<Arc<AppState>>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    // Every caller is admin here: a token made now would be checked by
    // nothing until a restart, then lock everyone else out.
    if app.auth.insecure() {
        return Err(ServerError::Forbidden(
            "this server runs with --insecure-no-auth and checks no token: restart it without that flag, \
             or create tokens with the server stopped (adstore token create --data-dir DIR)"
                .into(),
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(&body);
    let new: NewToken = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        ServerError::BadRequest(format!("token.{path}: {}", e.into_inner()))
    })?;
    let worker = app.clone();
    // Hashing takes tens of milliseconds: off the async runtime.
    let (token, record) = tokio::task::spawn_blocking(move || worker.auth.tokens.create(&new, now_ms()))
        .await
        .map_err(|e| ServerError::Internal(format!("token creation failed: {e}")))??;
    tracing::info!(id = %record.id, role = record.role.name(), "token created");
    let mut listing = record.listing();
    listing["token"] = token.into();
    Ok((StatusCode::CREATED, Json(listing)))
}

pub async fn list(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let tokens: Vec<serde_json::Value> = app.auth.tokens.list().iter().map(|r| r.listing()).collect();
    Json(serde_json::json!({ "tokens": tokens }))
}

pub async fn revoke(
    State(app): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let record = app.auth.tokens.revoke(&id, now_ms())?;
    tracing::info!(id = %record.id, "token revoked");
    Ok(Json(record.listing()))
}

/// `PUT /v1/publishers/{id}/signing-key` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyBody {
    secret: String,
}

/// `PUT /v1/publishers/{id}/signing-key` `{"secret": "…"}`: from now on
/// the publisher's clicks must carry impression ids signed with it.
pub async fn put_signing_key(
    State(app): State<Arc<AppState>>,
    PathParams(publisher_id): PathParams<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<serde_json::Value>, ServerError> {
    let body: SigningKeyBody = serde_json::from_slice(&body)
        .map_err(|e| ServerError::BadRequest(format!("the request body: expected {{\"secret\": \"…\"}}: {e}")))?;
    app.auth.signing.set(&publisher_id, &body.secret)?;
    tracing::info!(publisher_id = %publisher_id, "signing secret set");
    Ok(Json(serde_json::json!({ "publisher_id": publisher_id, "signed": true })))
}

/// `DELETE /v1/publishers/{id}/signing-key`: the publisher's ids are no
/// longer checked.
pub async fn delete_signing_key(
    State(app): State<Arc<AppState>>,
    PathParams(publisher_id): PathParams<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    app.auth.signing.remove(&publisher_id)?;
    tracing::info!(publisher_id = %publisher_id, "signing secret removed");
    Ok(Json(serde_json::json!({ "publisher_id": publisher_id, "signed": false })))
}

/// `GET /v1/signing-keys`: the publishers whose ids are checked (never the secrets).
pub async fn list_signing_keys(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "publishers": app.auth.signing.publishers() }))
}

/// `POST /v1/events/validate-signature` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    publisher_id: String,
    impression_id: String,
}

/// `POST /v1/events/validate-signature` `{"publisher_id", "impression_id"}`:
/// whether a click on that id would be billable as far as its signature
/// goes (`verdict`: valid, mismatch, malformed, not_checked).
pub async fn validate_signature(
    State(app): State<Arc<AppState>>,
    axum::Extension(principal): axum::Extension<super::Principal>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<serde_json::Value>, ServerError> {
    let body: ValidateBody = serde_json::from_slice(&body).map_err(|e| {
        ServerError::BadRequest(format!(
            "the request body: expected {{\"publisher_id\": \"…\", \"impression_id\": \"…\"}}: {e}"
        ))
    })?;
    if principal.publisher_scope().is_some_and(|p| !p.contains(&body.publisher_id)) {
        return Err(ServerError::Forbidden(format!("the token may not act for publisher {:?}", body.publisher_id)));
    }
    let verdict = app.auth.signing.verify(&body.publisher_id, &body.impression_id);
    Ok(Json(serde_json::json!({
        "publisher_id": body.publisher_id,
        "impression_id": body.impression_id,
        "verdict": verdict,
        // `valid`: the signature verified. `billable`: a click on this id
        // would not be marked bad_signature (also when nothing is checked).
        "valid": verdict == super::signing::Verdict::Valid,
        "billable": matches!(verdict, super::signing::Verdict::Valid | super::signing::Verdict::NotChecked),
    })))
}
