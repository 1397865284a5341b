//! Access control: who may call what, and which rows they see.
//!
//! ```text
//!  request ─► route group's need (admin, ingest, query; public routes pass no gate; see http::router)
//!          ─► no token was ever created (and loopback only)? ─► open: acts as admin
//!          ─► Authorization: Bearer adst_… ─► tokens.rs verify ─► 401 missing / bad / revoked
//!          ─► role allows the need? ─► 403 ─► handler, with the Principal as a request extension
//!  handlers: /v1/sql, billing ─► QueryOptions::advertisers (rows of other advertisers never read)
//!            ingest           ─► ParseOptions::publishers (lines of other publishers rejected)
//!  PostgreSQL: the password is the token (pgwire/session.rs), same principal, same scope.
//! ```
//!
//! Roles: `admin` may do everything; `ingest` sends events for its
//! publishers; `query` reads the rows of its advertisers (or all). The
//! first token created switches authentication on; until then the server
//! listens on loopback only (`check_listen`). docs/security.md is the
//! user's account of this model.

pub mod api;
pub mod signing;
pub mod tokens;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;
use crate::http::AppState;
use tokens::{Rejected, TokenStore};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: rules, reprocess, retention, tokens, every row.
    Admin,
    /// Send events for its publishers.
    Ingest,
    /// Read the rows of its advertisers (or all of them).
    Query,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Ingest => "ingest",
            Role::Query => "query",
        }
    }
}

/// What a route needs of its caller (public routes, `/health`, the
/// console's assets, need nothing and pass no gate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An `admin` token.
    Admin,
    /// An `ingest` (or `admin`) token.
    Ingest,
    /// A `query` (or `admin`) token.
    Query,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Admin => role == Role::Admin,
            Need::Ingest => matches!(role, Role::Admin | Role::Ingest),
            Need::Query => matches!(role, Role::Admin | Role::Query),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Admin => "an admin token",
            Need::Ingest => "an ingest or admin token",
            Need::Query => "a query or admin token",
        }
    }
}

/// Who is calling, as a request extension for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `None` when authentication is off.
    pub token_id: Option<String>,
    pub role: Role,
    /// For `ingest`: the publishers it may send for.
    pub publishers: Vec<String>,
    /// For `query`: the advertisers it sees; `None` for all.
    pub advertisers: Option<Vec<String>>,
}

impl Principal {
    /// The caller when no token was ever created: everything is allowed.
    pub fn open() -> Principal {
        Principal { token_id: None, role: Role::Admin, publishers: Vec::new(), advertisers: None }
    }

    /// The advertisers whose rows a statement of this caller may see
    /// (`QueryOptions::advertisers`): `None` for all.
    pub fn row_scope(&self) -> Option<Vec<String>> {
        match self.role {
            Role::Admin => None,
            Role::Query => self.advertisers.clone(),
            // An ingest token reads nothing; routes refuse it before this.
            Role::Ingest => Some(Vec::new()),
        }
    }

    /// The publishers this caller may send events for (`ParseOptions::publishers`).
    pub fn publisher_scope(&self) -> Option<Vec<String>> {
        match self.role {
            Role::Ingest => Some(self.publishers.clone()),
            Role::Admin => None,
            Role::Query => Some(Vec::new()),
        }
    }
}

/// The server's access control: its tokens, and whether it checks them.
pub struct Auth {
    pub tokens: TokenStore,
    /// Publishers' secrets for signed impression ids (`signing.rs`).
    pub signing: signing::SigningKeys,
    /// `--insecure-no-auth`: never check, even with tokens.
    insecure: bool,
}

impl Auth {
    pub fn new(tokens: TokenStore, signing: signing::SigningKeys, insecure: bool) -> Auth {
        Auth { tokens, signing, insecure }
    }

    /// `--insecure-no-auth`: tokens exist or not, none is checked.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// Whether calls need a token: once one was created, unless disabled.
    pub fn enforced(&self) -> bool {
        !self.insecure && self.tokens.any()
    }

    /// The principal of `token`, hashing off the async runtime when needed.
    pub async fn authenticate(self: &Arc<Self>, token: Option<String>) -> Result<Principal, ServerError> {
        if !self.enforced() {
            return Ok(Principal::open());
        }
        let token = token.ok_or_else(|| {
            ServerError::Unauthorized("this server needs a token: send Authorization: Bearer <token>".into())
        })?;
        let auth = self.clone();
        let verified = tokio::task::spawn_blocking(move || auth.tokens.verify(&token))
            .await
            .map_err(|e| ServerError::Internal(format!("token check failed: {e}")))?;
        verified.map_err(|r| {
            ServerError::Unauthorized(
                match r {
                    Rejected::Malformed => "the token is not an adstore token (adst_…)",
                    Rejected::Unknown => "the token is not valid",
                    Rejected::Revoked => "the token was revoked",
                }
                .into(),
            )
        })
    }
}

/// The bearer token of a request, if it sends one.
fn bearer(request: &Request) -> Option<String> {
    // Not UTF-8: still a token sent (and refused as malformed), not none.
    let value = String::from_utf8_lossy(request.headers().get(header::AUTHORIZATION)?.as_bytes()).into_owned();
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// Middleware of a route group: the caller's token must allow `need`.
pub async fn require(State((app, need)): State<(Arc<AppState>, Need)>, mut request: Request, next: Next) -> Response {
    let principal = match app.auth.authenticate(bearer(&request)).await {
        Ok(p) => p,
        Err(e) => {
            app.metrics
                .auth_failures
                .with_label_values(&[if bearer(&request).is_some() { "invalid" } else { "missing" }])
                .inc();
            return e.into_response();
        }
    };
    if !need.allows(principal.role) {
        app.metrics.auth_failures.with_label_values(&["forbidden"]).inc();
        return ServerError::Forbidden(format!(
            "this call needs {}; the token's role is {}",
            need.describe(),
            principal.role.name()
        ))
        .into_response();
    }
    // Whatever the call logs names the token that made it (its public id,
    // never the secret).
    let span = match &principal.token_id {
        Some(id) => tracing::info_span!("call", token = %id, role = principal.role.name()),
        None => tracing::Span::none(),
    };
    request.extensions_mut().insert(principal);
    tracing::Instrument::instrument(next.run(request), span).await
}

/// Replaces `path` with `bytes`, readable by its owner only: a temporary
/// file, fsync, rename, fsync of the directory. A crash leaves the old
/// file or the new one.
///
/// # Errors
/// `Io` naming the file.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source: std::io::Error| ServerError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Refuses to listen beyond this machine while no token exists: a new
/// server must not be open to the network by accident.
///
/// # Errors
/// `Config` naming the address and how to go on.
pub fn check_listen(auth: &Auth, addrs: &[(&str, &str)]) -> Result<(), ServerError> {
    if auth.insecure || auth.tokens.any() {
        return Ok(());
    }
    for (setting, addr) in addrs {
        if !is_loopback(addr) {
            return Err(ServerError::Config(format!(
                "refusing to listen on {addr} ({setting}) with no access token: anyone who can reach it could read \
                 and change everything. Create an admin token first (adstore token create --role admin --data-dir \
                 <dir>, with the server stopped), listen on 127.0.0.1, or pass --insecure-no-auth"
            )));
        }
    }
    Ok(())
}

/// Whether `addr` (`host:port`) names only loopback addresses.
fn is_loopback(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr.to_socket_addrs().is_ok_and(|mut all| all.all(|a| a.ip().is_loopback())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_their_needs() {
        let table = [
            (Need::Admin, [true, false, false]),
            (Need::Ingest, [true, true, false]),
            (Need::Query, [true, false, true]),
        ];
        for (need, allowed) in table {
            for (role, want) in [Role::Admin, Role::Ingest, Role::Query].into_iter().zip(allowed) {
                assert_eq!(need.allows(role), want, "{need:?} {role:?}");
            }
        }
    }

    #[test]
    fn only_loopback_is_open_without_tokens() {
        let dir = tempfile::tempdir().expect("tmp");
        let open =
            || (TokenStore::open(dir.path()).expect("tokens"), signing::SigningKeys::open(dir.path()).expect("keys"));
        let (tokens, keys) = open();
        let auth = Auth::new(tokens, keys, false);
        assert!(check_listen(&auth, &[("--listen", "127.0.0.1:8080"), ("pg_listen", "[::1]:5433")]).is_ok());
        assert!(check_listen(&auth, &[("--listen", "localhost:8080")]).is_ok());
        let err = check_listen(&auth, &[("--listen", "0.0.0.0:8080")]).expect_err("open to the network");
        assert!(err.to_string().contains("0.0.0.0:8080 (--listen)") && err.to_string().contains("--insecure-no-auth"));
        let (tokens, keys) = open();
        let insecure = Auth::new(tokens, keys, true);
        assert!(check_listen(&insecure, &[("--listen", "0.0.0.0:8080")]).is_ok());
    }
}
