//! The object store that cold segments live in: a local directory by
//! default, any S3-compatible bucket by URL, through the `object_store`
//! crate. Calls block the caller (storage is synchronous) on a small
//! runtime of its own, each with a timeout, so an unreachable store is an
//! error after `timeout`, never a hang.
//!
//! ```text
//!  [tiering] object_store = "s3://bucket/prefix" ─► AmazonS3Builder::from_env() (AWS_* variables,
//!                                                   AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) ─┐
//!                         = "/path" or "file:///path" (default {data_dir}/objects) ─► LocalFileSystem ─┤
//!                                                                                                       ▼
//!  tiering task: put segments/{id}.seg, head (size) ─► catalog commit (tier remote) ─► local file deleted
//!  queries: get_range of the footer once at open, then of each block read (BlockCache in front)
//! ```

use std::fmt;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Result, StorageError};
use crate::ids::SegmentId;

/// A connection to the object store, shared by the tiering task and the
/// readers of cold segments.
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    /// Prefix of every key (the URL's path).
    prefix: Path,
    /// Where it is, for messages (`s3://bucket/prefix`, a directory).
    url: String,
    runtime: tokio::runtime::Runtime,
    /// How long one call may take, retries included, before it fails.
    timeout: Duration,
}

impl fmt::Debug for ObjectTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectTier({})", self.url)
    }
}

impl ObjectTier {
    /// The store at `url`: `s3://bucket/prefix` (credentials, region and
    /// endpoint from the `AWS_*` environment variables), or a directory
    /// (`/path`, `file:///path`), created if missing.
    pub fn open(url: &str, timeout: Duration) -> Result<ObjectTier> {
        let bad = |e: String| StorageError::Config(format!("tiering.object_store = {url:?}: {e}"));
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if url.starts_with("s3://") || url.starts_with("s3a://") {
            // Client options set here replace those `from_env` read:
            // AWS_ALLOW_HTTP is read again.
            let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_allow_http(allow_http)
                        .with_timeout(timeout)
                        .with_connect_timeout(timeout.min(Duration::from_secs(5))),
                )
                .with_retry(object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: timeout,
                    ..object_store::RetryConfig::default()
                })
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let key_prefix = url.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map_or("", |(_, p)| p);
            (Arc::new(s3), Path::from(key_prefix))
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(bad("only s3:// URLs and local directories are supported".into()));
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(FsPath::new(dir))
                .map_err(|e| bad(e.to_string()))?;
            (Arc::new(local), Path::default())
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adstore-tier")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start the object store runtime: {e}")))?;
        Ok(ObjectTier { store, prefix, url: url.to_string(), runtime, timeout })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of a segment's file.
    pub fn key(&self, id: SegmentId) -> Path {
        self.prefix.clone().join("segments").join(id.file_name())
    }

    /// Runs `call` on the runtime and waits for it at most `timeout`
    /// (works from any thread, a Tokio worker of the server's included).
    fn block<T: Send + 'static>(
        &self,
        what: String,
        call: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(call.await);
        });
        let failed = |reason: String| StorageError::ObjectStore { what: what.clone(), reason };
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// Uploads the local file `path` as segment `id`, then checks that the
    /// store holds it whole (its size).
    pub fn upload(&self, id: SegmentId, path: &FsPath) -> Result<u64> {
        let bytes = std::fs::read(path).map_err(|source| StorageError::Io { path: path.to_path_buf(), source })?;
        let len = bytes.len() as u64;
        let (store, key) = (self.store.clone(), self.key(id));
        let what = format!("upload of {} to {}", id.file_name(), self.url);
        self.block(what.clone(), async move { store.put(&key, PutPayload::from(bytes)).await })?;
        let stored = self.size(id)?;
        if stored != len {
            return Err(StorageError::ObjectStore { what, reason: format!("stored {stored} bytes of {len}") });
        }
        Ok(len)
    }

    /// The size of segment `id` in the store.
    pub fn size(&self, id: SegmentId) -> Result<u64> {
        let (store, key) = (self.store.clone(), self.key(id));
        let meta =
            self.block(format!("size of {} in {}", id.file_name(), self.url), async move { store.head(&key).await })?;
        Ok(meta.size)
    }

    /// Bytes `range` of segment `id`.
    pub fn read(&self, id: SegmentId, range: Range<u64>) -> Result<Vec<u8>> {
        let (store, key) = (self.store.clone(), self.key(id));
        let what = format!("read of {} bytes {}..{} from {}", id.file_name(), range.start, range.end, self.url);
        let bytes = self.block(what, async move { store.get_range(&key, range).await })?;
        Ok(bytes.to_vec())
    }

    /// The segments the store holds (by their `segments/{id}.seg` keys).
    pub fn list(&self) -> Result<Vec<SegmentId>> {
        let (store, dir) = (self.store.clone(), self.prefix.clone().join("segments"));
        let listed =
            self.block(format!("listing of {}", self.url), async move { store.list_with_delimiter(Some(&dir)).await })?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".seg").map(str::to_owned))
            .filter_map(|hex| u64::from_str_radix(&hex, 16).ok().map(SegmentId))
            .collect())
    }

    /// Deletes segment `id` from the store (absent already is fine).
    pub fn delete(&self, id: SegmentId) -> Result<()> {
        let (store, key) = (self.store.clone(), self.key(id));
        let what = format!("delete of {} from {}", id.file_name(), self.url);
        match self.block(what, async move { store.delete(&key).await }) {
            Err(StorageError::ObjectStore { reason, .. }) if reason.contains("not found") => Ok(()),
            other => other,
        }
    }
}
