//! Erasure of a user's identity (a deletion request): the rows it changes,
//! the events whose identity is gone, and the log of erasures done.
//! `store/erasure.rs` runs an erasure.
//!
//! ```text
//!  {data_dir}/erasure/
//!    {erasure:08}.{commit:04}.keys   the idempotency keys of the events one commit erased:
//!                                    "ADERASE1", count (u64 LE), keys (u128 LE, sorted), CRC32C of all before
//!    log.jsonl                       a line per erasure done: when, and what it rewrote (never the values)
//! ```
//!
//! A re-seal recomputes attribution and invalid traffic from the stored
//! columns, and an erased event has lost the ones last touch, click floods
//! and bot user agents are decided by: so a re-seal keeps the decisions it
//! had from them ([`ErasedEvents::keep_decisions`]), and counts stay as
//! they were; what an impression or click id decides is decided again.
//! The set is in memory (16 bytes an erased event) and grows only with
//! erasures, never with traffic.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, StringBuilder, UInt8Builder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use parking_lot::RwLock;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StorageError};
use crate::event::{ColumnId, EventBatch, EventType, InvalidReason, idempotency_key};
use crate::manifest::sync_dir;

/// The directory of the erasure log and of the erased events' keys.
pub const ERASURE_DIR: &str = "erasure";
/// The columns an erasure removes: what identifies a person.
pub const IDENTITY_COLUMNS: [ColumnId; 3] = [ColumnId::UserKey, ColumnId::IpHash, ColumnId::UaHash];
const LOG_FILE: &str = "log.jsonl";
const KEYS_MAGIC: &[u8; 8] = b"ADERASE1";

/// The events whose identity was erased, by idempotency key.
#[derive(Debug)]
pub struct ErasedEvents {
    dir: PathBuf,
    keys: RwLock<FxHashSet<u128>>,
}

impl ErasedEvents {
    /// Loads every keys file of `{data_dir}/erasure`.
    ///
    /// # Errors
    /// `Io` when the directory cannot be read; `ManifestCorrupt` for a keys
    /// file that fails its checksum (erased events would be re-decided).
    pub fn open(data_dir: &Path) -> Result<ErasedEvents> {
        let dir = data_dir.join(ERASURE_DIR);
        let mut keys = FxHashSet::default();
        for path in keys_files(&dir)? {
            let bytes = fs::read(&path).at(&path)?;
            keys.extend(decode_keys(&bytes).map_err(|reason| StorageError::ManifestCorrupt { path, reason })?);
        }
        Ok(ErasedEvents { dir, keys: RwLock::new(keys) })
    }

    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }

    pub fn contains(&self, key: u128) -> bool {
        self.keys.read().contains(&key)
    }

    /// The number the next erasure takes: one past every number its keys
    /// files and its log hold.
    pub(crate) fn next_erasure(&self) -> Result<u64> {
        let from_files = keys_files(&self.dir)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.split('.').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let from_log = read_log(&self.dir)?.iter().map(|r| r.id).max().unwrap_or(0);
        Ok(from_files.max(from_log) + 1)
    }

    /// Records, durably, that the events with `keys` are erased (before the
    /// commit that erases them: a crash between leaves them recorded and
    /// their identity in place, which a retry of the erasure removes).
    pub(crate) fn record(&self, erasure: u64, commit: u32, keys: &[u128]) -> Result<()> {
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut bytes = Vec::with_capacity(20 + sorted.len() * 16);
        bytes.extend_from_slice(KEYS_MAGIC);
        bytes.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
        for k in &sorted {
            bytes.extend_from_slice(&k.to_le_bytes());
        }
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        let path = self.dir.join(format!("{erasure:08}.{commit:04}.keys"));
        let tmp = path.with_extension("keys.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(&bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(&self.dir)?;
        self.keys.write().extend(sorted);
        Ok(())
    }

    /// `after` (a re-seal's output, row for row `before`) with what erased
    /// events had decided from their identity taken back from `before`:
    /// attribution by last touch (a click without `impression_id`, a
    /// conversion without `click_id`), and with it the invalid reason; a
    /// `bot_ua` or `click_flood` reason. What an id decides is decided again.
    ///
    /// # Errors
    /// `Arrow` if a column cannot be replaced.
    pub fn keep_decisions(&self, before: &EventBatch, after: EventBatch) -> Result<EventBatch> {
        if self.is_empty() {
            return Ok(after);
        }
        let n = before.num_rows();
        let (publisher, id, kind) = (
            before.str_column(ColumnId::PublisherId),
            before.str_column(ColumnId::EventId),
            before.u8_column(ColumnId::Type).values(),
        );
        let erased: Vec<bool> = {
            let keys = self.keys.read();
            (0..n)
                .map(|i| {
                    let k = EventType::from_code(kind[i]).unwrap_or_default();
                    keys.contains(&idempotency_key(publisher.value(i), k, id.value(i)))
                })
                .collect()
        };
        if !erased.contains(&true) {
            return Ok(after);
        }
        let (imp, click) = (before.str_column(ColumnId::ImpressionId), before.str_column(ColumnId::ClickId));
        let reason = before.u8_column(ColumnId::InvalidReason).values();
        let by_touch: Vec<bool> = (0..n)
            .map(|i| match EventType::from_code(kind[i]) {
                Some(EventType::Click) => imp.is_null(i),
                Some(EventType::Conversion) => click.is_null(i),
                _ => false,
            })
            .collect();
        let by_identity = [InvalidReason::BotUa as u8, InvalidReason::ClickFlood as u8];
        let keep_attribution = |i: usize| erased[i] && by_touch[i];
        let keep_reason = |i: usize| keep_attribution(i) || (erased[i] && by_identity.contains(&reason[i]));
        let from = |keep: bool| if keep { before } else { &after };
        let mut attributed = BooleanBuilder::with_capacity(n);
        let mut attributed_to = StringBuilder::new();
        let mut invalid = UInt8Builder::with_capacity(n);
        for i in 0..n {
            let src = from(keep_attribution(i));
            attributed.append_value(src.bool_column(ColumnId::Attributed).value(i));
            let to = src.str_column(ColumnId::AttributedTo);
            attributed_to.append_option(to.is_valid(i).then(|| to.value(i)));
            invalid.append_value(from(keep_reason(i)).u8_column(ColumnId::InvalidReason).value(i));
        }
        let columns: [(ColumnId, ArrayRef); 3] = [
            (ColumnId::Attributed, Arc::new(attributed.finish())),
            (ColumnId::AttributedTo, Arc::new(attributed_to.finish())),
            (ColumnId::InvalidReason, Arc::new(invalid.finish())),
        ];
        columns.into_iter().try_fold(after.clone(), |out, (col, array)| out.with_column(col, array))
    }
}

/// `events` with the identity columns of every row whose `user_key` is
/// `user_key` removed (NULL), and the keys of those rows; `None` when no
/// row is that user's.
///
/// # Errors
/// `Arrow` if a column cannot be replaced.
pub fn erase_identity(events: &EventBatch, user_key: &str) -> Result<Option<(EventBatch, Vec<u128>)>> {
    let Some((batch, hit)) = erase_rows(events.record_batch(), user_key)? else { return Ok(None) };
    let (publisher, id, kind) = (
        events.str_column(ColumnId::PublisherId),
        events.str_column(ColumnId::EventId),
        events.u8_column(ColumnId::Type).values(),
    );
    let keys: Vec<u128> = (0..events.num_rows())
        .filter(|&i| hit[i])
        .map(|i| idempotency_key(publisher.value(i), EventType::from_code(kind[i]).unwrap_or_default(), id.value(i)))
        .collect();
    Ok(Some((EventBatch::try_new(batch)?, keys)))
}

/// `batch` (events, in any schema that names the identity columns) with
/// the identity columns of the rows whose `user_key` is `user_key` set
/// NULL, and which rows those are; `None` when there is none.
///
/// # Errors
/// `Arrow` if the batch cannot be rebuilt.
pub fn erase_rows(batch: &RecordBatch, user_key: &str) -> Result<Option<(RecordBatch, Vec<bool>)>> {
    let users = batch.column_by_name(ColumnId::UserKey.name()).and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let Some(users) = users else { return Ok(None) };
    let hit: Vec<bool> = users.iter().map(|v| v == Some(user_key)).collect();
    if !hit.contains(&true) {
        return Ok(None);
    }
    let schema = batch.schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            let identity = IDENTITY_COLUMNS.iter().any(|c| c.name() == field.name());
            match column.as_any().downcast_ref::<StringArray>() {
                Some(a) if identity => {
                    Arc::new(a.iter().zip(&hit).map(|(v, h)| if *h { None } else { v }).collect::<StringArray>())
                        as ArrayRef
                }
                _ => column.clone(),
            }
        })
        .collect();
    Ok(Some((RecordBatch::try_new(schema, columns)?, hit)))
}

/// One erasure done, as its log records it: never the values erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    /// 1, 2, … in the order erasures were requested.
    pub id: u64,
    /// When it was asked for and when it was done, epoch ms.
    pub requested_ms: i64,
    pub finished_ms: i64,
    /// Who asked (the token's name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Raw segments rewritten, of which in the object store.
    pub segments_rewritten: usize,
    pub remote_segments: usize,
    /// Events whose identity columns were removed.
    pub rows: u64,
    /// Days whose Parquet mirror of events was deleted, to be written again.
    pub mirror_days: usize,
    /// WAL files deleted once everything before the erasure was sealed.
    pub wal_files_deleted: usize,
}

/// Appends `record` to the log (fsynced).
pub(crate) fn append_log(data_dir: &Path, record: &ErasureRecord) -> Result<()> {
    let dir = data_dir.join(ERASURE_DIR);
    fs::create_dir_all(&dir).at(&dir)?;
    let path = dir.join(LOG_FILE);
    let mut line = serde_json::to_vec(record).map_err(|e| StorageError::Internal(format!("erasure record: {e}")))?;
    line.push(b'\n');
    let mut f = OpenOptions::new().create(true).append(true).open(&path).at(&path)?;
    f.write_all(&line).at(&path)?;
    f.sync_all().at(&path)?;
    sync_dir(&dir)
}

/// Every erasure done, oldest first. A torn last line (a crash while it
/// was written) is skipped.
pub fn read_log(dir: &Path) -> Result<Vec<ErasureRecord>> {
    let path = dir.join(LOG_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&path),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The keys files of `dir`, by name.
fn keys_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "keys")).collect();
    files.sort();
    Ok(files)
}

fn decode_keys(bytes: &[u8]) -> std::result::Result<Vec<u128>, String> {
    let body_len = bytes.len().checked_sub(4).ok_or("shorter than its checksum")?;
    let (body, crc) = bytes.split_at(body_len);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "no checksum")?);
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let rest = body.strip_prefix(KEYS_MAGIC.as_slice()).ok_or("not an erasure keys file")?;
    let (count, keys) = rest.split_at_checked(8).ok_or("no count")?;
    let count = u64::from_le_bytes(count.try_into().map_err(|_| "no count")?);
    if keys.len() as u64 != count.saturating_mul(16) {
        return Err(format!("{count} keys announced, {} bytes hold them", keys.len()));
    }
    Ok(keys.chunks_exact(16).map(|k| u128::from_le_bytes(k.try_into().unwrap_or_default())).collect())
}

#[cfg(test)]
mod tests;
