//! Access tokens: created once and shown once, kept only as argon2 hashes
//! in `{data_dir}/tokens.json`.
//!
//! ```text
//!  token:   adst_<id>_<secret>       id: 16 hex digits, public; secret: 64 hex digits (256 random bits)
//!  file:    {"tokens": [{"id", "name", "role", "publishers", "advertisers", "hash", "created_ms", "revoked_ms"}]}
//!  verify:  id ─► record (unknown or revoked: refused, no hashing) ─► SHA-256 of the token seen before? ─► principal
//!                                                                   └─ else argon2 of the secret against the hash ─► remembered
//! ```
//!
//! The file is rewritten whole on every change (temporary file, fsync,
//! rename), readable by its owner only. Verified tokens are remembered by a
//! SHA-256 of the token (never the token), at most [`MAX_VERIFIED`]; a
//! revoke forgets them at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Principal, Role};
use crate::error::ServerError;

/// The file of tokens in the data directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// Every token starts so: easy to find in a leaked log or repository.
const PREFIX: &str = "adst_";

/// Verified tokens remembered; past this the memory is cleared and the next
/// request of each token is hashed again (bounded memory, one argon2 each).
const MAX_VERIFIED: usize = 4_096;

/// Most publishers or advertisers one token is scoped to.
const MAX_SCOPE_IDS: usize = 1_000;

/// Most tokens a data directory keeps (revoked ones stay listed).
const MAX_TOKENS: usize = 10_000;

/// One token as stored: everything but the secret, which is only hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// A label for people ("grafana", "ad server eu-1").
    #[serde(default)]
    pub name: Option<String>,
    pub role: Role,
    /// For `ingest`: the publishers it may send events for.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// For `query`: the advertisers whose rows it sees; `None` for all.
    #[serde(default)]
    pub advertisers: Option<Vec<String>>,
    /// The argon2id hash of the secret, as a PHC string.
    pub hash: String,
    pub created_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
}

impl TokenRecord {
    /// The record without its hash, as listed.
    pub fn listing(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "publishers": self.publishers,
            "advertisers": self.advertisers,
            "created_ms": self.created_ms,
            "revoked_ms": self.revoked_ms,
        })
    }

    fn principal(&self) -> Principal {
        Principal {
            token_id: Some(self.id.clone()),
            role: self.role,
            publishers: self.publishers.clone(),
            advertisers: self.advertisers.clone(),
        }
    }
}

/// What a new token may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub publishers: Vec<String>,
    /// For `query`: the advertisers it sees; absent or `null` with
    /// `all_advertisers: true` for every advertiser.
    #[serde(default)]
    pub advertisers: Vec<String>,
    #[serde(default)]
    pub all_advertisers: bool,
}

impl NewToken {
    /// The scope as stored, or why it cannot be one.
    fn scope(&self) -> Result<(Vec<String>, Option<Vec<String>>), String> {
        let clean = |ids: &[String], what: &str| -> Result<Vec<String>, String> {
            if ids.len() > MAX_SCOPE_IDS {
                return Err(format!("{what}: {} ids, over the limit of {MAX_SCOPE_IDS}", ids.len()));
            }
            let mut out: Vec<String> = ids.iter().map(|s| s.trim().to_string()).collect();
            if let Some(bad) = out.iter().find(|s| s.is_empty() || s.len() > 1024 || s.chars().any(char::is_control)) {
                return Err(format!("{what}: {bad:?} is not an id (1 to 1024 bytes, no control characters)"));
            }
            out.sort();
            out.dedup();
            Ok(out)
        };
        match self.role {
            Role::Admin => {
                if !self.publishers.is_empty() || !self.advertisers.is_empty() || self.all_advertisers {
                    return Err("an admin token has no scope: leave out publishers and advertisers".into());
                }
                Ok((Vec::new(), None))
            }
            Role::Ingest => {
                if !self.advertisers.is_empty() || self.all_advertisers {
                    return Err("an ingest token is scoped to publishers, not advertisers".into());
                }
                let publishers = clean(&self.publishers, "publishers")?;
                if publishers.is_empty() {
                    return Err("an ingest token needs at least one publisher (publishers)".into());
                }
                Ok((publishers, None))
            }
            Role::Query => {
                if !self.publishers.is_empty() {
                    return Err("a query token is scoped to advertisers, not publishers".into());
                }
                let advertisers = clean(&self.advertisers, "advertisers")?;
                match (advertisers.is_empty(), self.all_advertisers) {
                    (true, true) => Ok((Vec::new(), None)),
                    (false, false) => Ok((Vec::new(), Some(advertisers))),
                    (true, false) => Err(
                        "a query token needs its advertisers (advertisers), or all_advertisers: true to see every row"
                            .into(),
                    ),
                    (false, true) => Err("give either advertisers or all_advertisers, not both".into()),
                }
            }
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// The tokens of one data directory.
pub struct TokenStore {
    path: PathBuf,
    records: RwLock<Vec<TokenRecord>>,
    /// SHA-256 of a verified token ─► its id.
    verified: Mutex<HashMap<[u8; 32], String>>,
    /// Token id ─► (start of its window, wrong secrets in it): a known id
    /// guessed at costs at most [`MAX_MISSES`] argon2 hashes a window.
    misses: Mutex<HashMap<String, (std::time::Instant, u32)>>,
}

/// Wrong secrets hashed per token id per [`MISS_WINDOW`]; beyond that a
/// secret not already verified is refused without hashing.
const MAX_MISSES: u32 = 20;
const MISS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not of the `adst_<id>_<secret>` form.
    Malformed,
    /// No token has that id, or its secret does not match.
    Unknown,
    /// The token was revoked.
    Revoked,
}

impl TokenStore {
    /// The tokens stored in `data_dir` (none if the file does not exist).
    pub fn open(data_dir: &Path) -> Result<TokenStore, ServerError> {
        let path = data_dir.join(TOKENS_FILE);
        let file: TokenFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ServerError::Config(format!("{}: not a token file: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(source) => return Err(ServerError::Io { path: path.display().to_string(), source }),
        };
        Ok(TokenStore {
            path,
            records: RwLock::new(file.tokens),
            verified: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
        })
    }

    /// Whether any token was ever created here (revoked ones count): the
    /// first token switches authentication on for good.
    pub fn any(&self) -> bool {
        !self.records.read().is_empty()
    }

    /// Whether an admin token that is not revoked exists.
    pub fn has_admin(&self) -> bool {
        self.records.read().iter().any(|r| r.role == Role::Admin && r.revoked_ms.is_none())
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.records.read().clone()
    }

    /// Creates a token; returns it (the only time it is seen) and its record.
    ///
    /// # Errors
    /// `BadRequest` for a scope that does not fit the role; `Io` if the
    /// file cannot be written (nothing changed then).
    pub fn create(&self, new: &NewToken, now_ms: i64) -> Result<(String, TokenRecord), ServerError> {
        let (publishers, advertisers) = new.scope().map_err(ServerError::BadRequest)?;
        if let Some(name) = &new.name
            && (name.len() > 200 || name.chars().any(char::is_control))
        {
            return Err(ServerError::BadRequest("name: at most 200 bytes, no control characters".into()));
        }
        let id = hex(&random::<8>()?);
        let secret = hex(&random::<32>()?);
        let hash = hash_secret(&secret)?;
        let record = TokenRecord {
            id: id.clone(),
            name: new.name.clone(),
            role: new.role,
            publishers,
            advertisers,
            hash,
            created_ms: now_ms,
            revoked_ms: None,
        };
        let mut records = self.records.write();
        if records.len() >= MAX_TOKENS {
            return Err(ServerError::BadRequest(format!(
                "this data directory holds {MAX_TOKENS} tokens, revoked ones included: the most it keeps"
            )));
        }
        let mut next = records.clone();
        next.push(record.clone());
        self.write(&next)?;
        *records = next;
        Ok((format!("{PREFIX}{id}_{secret}"), record))
    }

    /// Revokes token `id` (by its id, or the whole token); revoking twice
    /// is the same as once.
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `Io` if the file cannot be written.
    pub fn revoke(&self, id: &str, now_ms: i64) -> Result<TokenRecord, ServerError> {
        let id = parse(id).map_or(id, |(id, _)| id);
        let mut records = self.records.write();
        let mut next = records.clone();
        let record = next
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| ServerError::NotFound(format!("no token with id {id:?}")))?;
        record.revoked_ms.get_or_insert(now_ms);
        let revoked = record.clone();
        self.write(&next)?;
        *records = next;
        self.verified.lock().retain(|_, v| v != id);
        Ok(revoked)
    }

    /// The principal of a presented token. Costs one argon2 hash the first
    /// time a token is seen (tens of milliseconds: call it off the async
    /// runtime), a hash-map lookup after.
    pub fn verify(&self, token: &str) -> Result<Principal, Rejected> {
        let (id, secret) = parse(token).ok_or(Rejected::Malformed)?;
        let record = {
            let records = self.records.read();
            let record = records.iter().find(|r| r.id == id).ok_or(Rejected::Unknown)?;
            if record.revoked_ms.is_some() {
                return Err(Rejected::Revoked);
            }
            record.clone()
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.verified.lock().get(&digest).is_some_and(|v| *v == record.id) {
            return Ok(record.principal());
        }
        let throttled = self
            .misses
            .lock()
            .get(&record.id)
            .is_some_and(|(since, n)| *n >= MAX_MISSES && since.elapsed() < MISS_WINDOW);
        if throttled {
            return Err(Rejected::Unknown);
        }
        if !secret_matches(secret, &record.hash) {
            let mut misses = self.misses.lock();
            // Ids are only those of stored tokens: bounded by MAX_TOKENS.
            let entry = misses.entry(record.id.clone()).or_insert((std::time::Instant::now(), 0));
            if entry.0.elapsed() >= MISS_WINDOW {
                *entry = (std::time::Instant::now(), 0);
            }
            entry.1 += 1;
            return Err(Rejected::Unknown);
        }
        let mut verified = self.verified.lock();
        // Revoked while the hash was computed: not remembered.
        if self.records.read().iter().any(|r| r.id == record.id && r.revoked_ms.is_some()) {
            return Err(Rejected::Revoked);
        }
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(digest, record.id.clone());
        Ok(record.principal())
    }

    fn write(&self, records: &[TokenRecord]) -> Result<(), ServerError> {
        let json = serde_json::to_vec_pretty(&TokenFile { tokens: records.to_vec() })
            .map_err(|e| ServerError::Internal(format!("cannot encode the tokens: {e}")))?;
        super::write_private(&self.path, &json)
    }
}

/// `adst_<id>_<secret>` split into id and secret.
fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

fn random<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Internal(format!("no random numbers: {e}")))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_secret(secret: &str) -> Result<String, ServerError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ServerError::Internal(format!("cannot hash the token: {e}")))
}

fn secret_matches(secret: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::password_hash::phc::PasswordHash::new(hash)
        .is_ok_and(|h| argon2::Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(advertisers: &[&str]) -> NewToken {
        NewToken {
            role: Role::Query,
            name: Some("dash".into()),
            publishers: Vec::new(),
            advertisers: advertisers.iter().map(|s| s.to_string()).collect(),
            all_advertisers: false,
        }
    }

    #[test]
    fn a_token_is_verified_by_its_hash_survives_reopening_and_dies_revoked() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TokenStore::open(dir.path()).expect("open");
        assert!(!store.any());
        let (token, record) = store.create(&query(&["a2", "a1", "a1"]), 7).expect("create");
        assert!(token.starts_with("adst_") && token.len() == 5 + 16 + 1 + 64, "{token}");
        assert_eq!(record.advertisers, Some(vec!["a1".to_string(), "a2".to_string()]));
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("file");
        assert!(!file.contains(&token[22..]), "the secret is not stored");
        assert!(file.contains("$argon2id$"), "{file}");

        let reopened = TokenStore::open(dir.path()).expect("reopen");
        let principal = reopened.verify(&token).expect("verified");
        assert_eq!((principal.role, principal.advertisers.clone()), (Role::Query, record.advertisers.clone()));
        assert!(reopened.verify(&token).is_ok(), "remembered");
        let mut wrong = token.clone();
        wrong.replace_range(30..31, if &token[30..31] == "0" { "1" } else { "0" });
        assert_eq!(reopened.verify(&wrong).err(), Some(Rejected::Unknown));
        assert_eq!(reopened.verify("Bearer nonsense").err(), Some(Rejected::Malformed));

        reopened.revoke(&record.id, 9).expect("revoke");
        assert_eq!(reopened.verify(&token).err(), Some(Rejected::Revoked));
        assert_eq!(TokenStore::open(dir.path()).expect("again").verify(&token).err(), Some(Rejected::Revoked));
        assert!(reopened.any(), "a revoked token still counts: authentication stays on");
    }

    #[test]
    fn scopes_must_fit_the_role() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TokenStore::open(dir.path()).expect("open");
        let refused = |new: NewToken| match store.create(&new, 0) {
            Err(ServerError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(refused(query(&[])).contains("all_advertisers"));
        assert!(refused(query(&[" "])).contains("not an id"));
        let ingest = NewToken { role: Role::Ingest, ..query(&[]) };
        assert!(refused(ingest).contains("at least one publisher"));
        let admin = NewToken { role: Role::Admin, ..query(&["a1"]) };
        assert!(refused(admin).contains("no scope"));
        let all = NewToken { all_advertisers: true, ..query(&[]) };
        assert_eq!(store.create(&all, 0).expect("all").1.advertisers, None);
        assert!(!store.has_admin());
        assert!(refused(query(&["adv\u{1b}[2J"])).contains("control characters"));
        let named = NewToken { name: Some("ops\nroot".into()), ..query(&["a1"]) };
        assert!(refused(named).contains("control characters"));
        let many: Vec<String> = (0..=MAX_SCOPE_IDS).map(|i| format!("adv-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(query(&many)).contains("over the limit"));
    }

    /// Guessing at a known id costs at most MAX_MISSES argon2 hashes a
    /// window; a token verified before keeps working meanwhile.
    #[test]
    fn wrong_secrets_for_one_id_are_throttled() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = TokenStore::open(dir.path()).expect("open");
        let (token, _) = store.create(&query(&["a1"]), 0).expect("create");
        let (other, _) = store.create(&query(&["a2"]), 0).expect("create");
        assert!(store.verify(&token).is_ok());
        let wrong = |k: u32| format!("{}{:064x}", &token[..22], k);
        for k in 0..MAX_MISSES {
            assert_eq!(store.verify(&wrong(k)).err(), Some(Rejected::Unknown));
        }
        let started = std::time::Instant::now();
        for k in 0..50 {
            assert_eq!(store.verify(&wrong(1000 + k)).err(), Some(Rejected::Unknown));
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(200), "refused without hashing");
        assert!(store.verify(&token).is_ok(), "verified before: still accepted");
        assert!(store.verify(&other).is_ok(), "another id is not throttled");
    }
}
