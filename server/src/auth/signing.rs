//! Signed impression ids: per publisher, an optional secret with which the
//! ad server signs each `impression_id` (HMAC-SHA256), so that clicks on
//! made-up impressions are not billed.
//!
//! ```text
//!  signed id:  <id>.<hex of HMAC-SHA256(key = secret as UTF-8, message = id as UTF-8)>   (64 lowercase hex digits)
//!  ingest:     a click of a publisher with a secret whose impression_id does not verify
//!                ─► invalid_reason = bad_signature (kept through attribution and reprocessing)
//!  file:       {data_dir}/signing_keys.json  {"keys": {"pub-01": "secret", …}}  owner-readable only
//! ```
//!
//! Impressions are not checked: the ad server writes them itself with the
//! id it signed. Test vectors are in docs/security.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adstore_storage::{ColumnId, EventBatch, EventType, InvalidReason};
use arrow_array::{Array, ArrayRef, UInt8Array};
use hmac::{Hmac, KeyInit, Mac};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ServerError;

/// The file of signing secrets in the data directory.
pub const SIGNING_KEYS_FILE: &str = "signing_keys.json";

/// Shortest secret accepted: 32 bytes, as many as the hash's.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    keys: BTreeMap<String, String>,
}

/// Whether an impression id is signed right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The publisher has no secret: ids are not checked.
    NotChecked,
    Valid,
    /// No `.signature` suffix, or not 64 lowercase hex digits.
    Malformed,
    /// A signature that does not match.
    Mismatch,
}

/// The publishers' signing secrets.
pub struct SigningKeys {
    path: PathBuf,
    keys: RwLock<BTreeMap<String, String>>,
}

impl SigningKeys {
    /// The secrets stored in `data_dir` (none if the file does not exist).
    pub fn open(data_dir: &Path) -> Result<SigningKeys, ServerError> {
        let path = data_dir.join(SIGNING_KEYS_FILE);
        let file: KeyFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ServerError::Config(format!("{}: not a signing key file: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile::default(),
            Err(source) => return Err(ServerError::Io { path: path.display().to_string(), source }),
        };
        Ok(SigningKeys { path, keys: RwLock::new(file.keys) })
    }

    /// The publishers that have a secret.
    pub fn publishers(&self) -> Vec<String> {
        self.keys.read().keys().cloned().collect()
    }

    /// Sets (or replaces) `publisher_id`'s secret.
    ///
    /// # Errors
    /// `BadRequest` for a secret shorter than [`MIN_SECRET_BYTES`]; `Io` if
    /// the file cannot be written (nothing changed then).
    pub fn set(&self, publisher_id: &str, secret: &str) -> Result<(), ServerError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ServerError::BadRequest(format!(
                "secret: {} bytes; a signing secret needs at least {MIN_SECRET_BYTES}",
                secret.len()
            )));
        }
        if publisher_id.is_empty() || publisher_id.len() > 1024 {
            return Err(ServerError::BadRequest("publisher_id: 1 to 1024 bytes".into()));
        }
        let mut keys = self.keys.write();
        let mut next = keys.clone();
        next.insert(publisher_id.to_string(), secret.to_string());
        self.write(&next)?;
        *keys = next;
        Ok(())
    }

    /// Removes `publisher_id`'s secret; its ids are not checked any more.
    ///
    /// # Errors
    /// `NotFound` if it has none; `Io` if the file cannot be written.
    pub fn remove(&self, publisher_id: &str) -> Result<(), ServerError> {
        let mut keys = self.keys.write();
        let mut next = keys.clone();
        if next.remove(publisher_id).is_none() {
            return Err(ServerError::NotFound(format!("publisher {publisher_id:?} has no signing secret")));
        }
        self.write(&next)?;
        *keys = next;
        Ok(())
    }

    /// Whether `impression_id` is signed with `publisher_id`'s secret.
    pub fn verify(&self, publisher_id: &str, impression_id: &str) -> Verdict {
        match self.keys.read().get(publisher_id) {
            None => Verdict::NotChecked,
            Some(secret) => verify(secret, impression_id),
        }
    }

    /// `batches` with `invalid_reason = bad_signature` on every click whose
    /// impression id does not verify (a click without one included).
    ///
    /// # Errors
    /// A batch whose columns cannot be replaced (a bug).
    pub fn mark(&self, batches: Vec<EventBatch>) -> Result<Vec<EventBatch>, ServerError> {
        if self.keys.read().is_empty() {
            return Ok(batches);
        }
        batches
            .into_iter()
            .map(|batch| {
                let kinds = batch.u8_column(ColumnId::Type).values();
                let publishers = batch.str_column(ColumnId::PublisherId);
                let impressions = batch.str_column(ColumnId::ImpressionId);
                let reasons = batch.u8_column(ColumnId::InvalidReason).values();
                let mut marked: Option<Vec<u8>> = None;
                for row in 0..batch.num_rows() {
                    if kinds[row] != EventType::Click as u8 {
                        continue;
                    }
                    let id = if impressions.is_null(row) { "" } else { impressions.value(row) };
                    if matches!(self.verify(publishers.value(row), id), Verdict::Malformed | Verdict::Mismatch) {
                        marked.get_or_insert_with(|| reasons.to_vec())[row] = InvalidReason::BadSignature as u8;
                    }
                }
                match marked {
                    None => Ok(batch),
                    Some(reasons) => batch
                        .with_column(ColumnId::InvalidReason, Arc::new(UInt8Array::from(reasons)) as ArrayRef)
                        .map_err(ServerError::Storage),
                }
            })
            .collect()
    }

    fn write(&self, keys: &BTreeMap<String, String>) -> Result<(), ServerError> {
        let json = serde_json::to_vec_pretty(&KeyFile { keys: keys.clone() })
            .map_err(|e| ServerError::Internal(format!("cannot encode the signing keys: {e}")))?;
        super::write_private(&self.path, &json)
    }
}

fn mac(secret: &str, id: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(id.as_bytes());
    Some(mac)
}

/// `id` signed with `secret`: `id.<64 hex digits>` (what the ad server
/// does; here for the tests).
#[cfg(test)]
pub fn sign(secret: &str, id: &str) -> String {
    let tag = mac(secret, id).map(|m| m.finalize().into_bytes().to_vec()).unwrap_or_default();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{id}.{hex}")
}

/// Whether `signed` (`id.<hex>`) carries `secret`'s signature of its id,
/// compared in constant time.
pub fn verify(secret: &str, signed: &str) -> Verdict {
    let Some((id, hex)) = signed.rsplit_once('.') else { return Verdict::Malformed };
    // Lowercase only: the signed id is matched to its impression as a
    // string, so an uppercase copy would verify and yet never attribute.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Verdict::Malformed;
    }
    let tag: Option<Vec<u8>> =
        (0..32).map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    let Some(tag) = tag else { return Verdict::Malformed };
    match mac(secret, id).map(|m| m.verify_slice(&tag)) {
        Some(Ok(())) => Verdict::Valid,
        _ => Verdict::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with Python's `hmac` (docs/security.md shows them).
    const VECTORS: [(&str, &str, &str); 2] = [
        (
            "s3cret-key-for-pub-01-0123456789ab",
            "imp-42",
            "imp-42.ac44de7c5d5709cd235e8ff31f80d1e54a1120ff4bdf262306f326ed06a9d696",
        ),
        (
            "another secret of 32+ bytes, pub-02!",
            "i-7-20261206",
            "i-7-20261206.b54406153e22829526c7815026463516faacd39048a77cb4e055de8df13fd45b",
        ),
    ];

    #[test]
    fn the_test_vectors_sign_and_verify() {
        for (secret, id, signed) in VECTORS {
            assert_eq!(sign(secret, id), signed);
            assert_eq!(verify(secret, signed), Verdict::Valid);
            let upper = format!("{id}.{}", signed[id.len() + 1..].to_uppercase());
            assert_eq!(verify(secret, &upper), Verdict::Malformed, "lowercase hex digits only");
            assert_eq!(verify("some other secret of enough bytes!!", signed), Verdict::Mismatch);
            assert_eq!(verify(secret, id), Verdict::Malformed);
            assert_eq!(verify(secret, &format!("{id}.zz{}", &signed[signed.len() - 62..])), Verdict::Malformed);
            let tampered = signed.replacen(id, "imp-43", 1);
            assert_eq!(verify(secret, &tampered), Verdict::Mismatch);
        }
    }

    #[test]
    fn clicks_of_publishers_with_a_secret_are_marked_and_the_secret_persists() {
        let dir = tempfile::tempdir().expect("tmp");
        let keys = SigningKeys::open(dir.path()).expect("open");
        let (secret, _, signed) = VECTORS[0];
        assert!(matches!(keys.set("pub-01", "short"), Err(ServerError::BadRequest(_))));
        keys.set("pub-01", secret).expect("set");
        let reopened = SigningKeys::open(dir.path()).expect("reopen");
        assert_eq!(reopened.publishers(), ["pub-01"]);
        let click = |publisher: &str, imp: &str| adstore_storage::Event {
            kind: EventType::Click,
            publisher_id: publisher.into(),
            impression_id: Some(imp.into()),
            ..adstore_storage::Event::default()
        };
        let events = [
            click("pub-01", signed),
            click("pub-01", "imp-42"),
            click("pub-01", &signed.replacen("imp-42", "imp-9", 1)),
            click("pub-02", "imp-42"),
            adstore_storage::Event { kind: EventType::Impression, ..click("pub-01", "imp-42") },
        ];
        let out = reopened.mark(vec![EventBatch::from_events(&events)]).expect("mark");
        let reasons: Vec<InvalidReason> = out[0].events().iter().map(|e| e.invalid_reason).collect();
        use InvalidReason::{BadSignature as Bad, Valid};
        assert_eq!(reasons, [Valid, Bad, Bad, Valid, Valid]);
        reopened.remove("pub-01").expect("remove");
        assert!(SigningKeys::open(dir.path()).expect("again").publishers().is_empty());
    }
}
