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
//!  queries: get_range of the footer once at open, then of each block read, widened to chunks
//!           kept on local disk (`cache.rs`; the memory BlockCache in front of both)
//! ```
//!
//! A file larger than `MULTIPART_ABOVE` is uploaded in parts of
//! `PART_BYTES`, read from the file one part at a time (memory stays
//! bounded); a failed upload is aborted, so no part is left behind.

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{IoContext, Result, StorageError};
use crate::ids::SegmentId;

mod cache;

pub use cache::{CHUNK_BYTES, ChunkCache, ChunkCacheStats};

/// Range requests a prefetch keeps in flight at once.
const PREFETCH_CONCURRENCY: usize = 16;
/// Bytes one prefetch request asks for at most.
const PREFETCH_RUN_BYTES: u64 = 8 * CHUNK_BYTES;

/// Files larger than this are uploaded in parts.
const MULTIPART_ABOVE: u64 = 16 << 20;
/// Bytes of one part of a multipart upload (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// What the object store was asked for, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectStoreStats {
    /// Range reads sent to the store.
    pub read_requests: u64,
    /// Bytes those reads fetched.
    pub read_bytes: u64,
    /// Bytes uploaded: segments, and the Parquet mirror.
    pub uploaded_bytes: u64,
    /// The local cache of cold chunks.
    pub cache: ChunkCacheStats,
}

/// A connection to the object store, shared by the tiering task and the
/// readers of cold segments.
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    /// Prefix of every key (the URL's path).
    prefix: Path,
    /// Where it is, for messages (`s3://bucket/prefix`, a directory).
    url: String,
    /// The URL other engines name its objects by, without a trailing
    /// slash: `s3://bucket/prefix`, `file:///absolute/dir`.
    root: String,
    runtime: tokio::runtime::Runtime,
    /// How long one call may take, retries included, before it fails.
    timeout: Duration,
    /// Chunks of cold segments on local disk (`None`: every read is a request).
    cache: Option<Arc<ChunkCache>>,
    read_requests: AtomicU64,
    read_bytes: AtomicU64,
    uploaded_bytes: AtomicU64,
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
        let (store, prefix, root): (Arc<dyn ObjectStore>, Path, String) = if url.starts_with("s3://")
            || url.starts_with("s3a://")
        {
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
            (Arc::new(s3), Path::from(key_prefix), url.trim_end_matches('/').replacen("s3a://", "s3://", 1))
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(bad("only s3:// URLs and local directories are supported".into()));
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let absolute = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
            let local =
                object_store::local::LocalFileSystem::new_with_prefix(&absolute).map_err(|e| bad(e.to_string()))?;
            (Arc::new(local), Path::default(), format!("file://{}", absolute.display()))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adstore-tier")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Internal(format!("cannot start the object store runtime: {e}")))?;
        Ok(ObjectTier {
            store,
            prefix,
            url: url.to_string(),
            root,
            runtime,
            timeout,
            cache: None,
            read_requests: 0.into(),
            read_bytes: 0.into(),
            uploaded_bytes: 0.into(),
        })
    }

    /// This connection, reading cold segments through `cache`.
    pub fn with_cache(mut self, cache: ChunkCache) -> ObjectTier {
        self.cache = Some(Arc::new(cache));
        self
    }

    pub fn stats(&self) -> ObjectStoreStats {
        ObjectStoreStats {
            read_requests: self.read_requests.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Ordering::Relaxed),
            cache: self.cache.as_ref().map(|c| c.stats()).unwrap_or_default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `relative` (a key under the store's prefix) as other
    /// engines name it: `s3://bucket/prefix/{relative}`,
    /// `file:///dir/{relative}`.
    pub fn location(&self, relative: &str) -> String {
        format!("{}/{relative}", self.root)
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
        self.block_for(what, call, self.timeout)
    }

    /// Like `block`, waiting at most `timeout`.
    fn block_for<T: Send + 'static>(
        &self,
        what: String,
        call: impl Future<Output = object_store::Result<T>> + Send + 'static,
        timeout: Duration,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(call.await);
        });
        let failed = |reason: String| StorageError::ObjectStore { what: what.clone(), reason };
        match rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }

    /// Uploads the local file `path` as segment `id` (in parts above
    /// `MULTIPART_ABOVE`), then checks that the store holds it whole (its
    /// size).
    pub fn upload(&self, id: SegmentId, path: &FsPath) -> Result<u64> {
        self.put_file(self.key(id), path)
    }

    /// Uploads the local file `path` as `relative` (a key under the
    /// store's prefix, like `parquet/events/day=2026-11-02/part-1.parquet`),
    /// then checks its size.
    pub fn put(&self, relative: &str, path: &FsPath) -> Result<u64> {
        self.put_file(self.relative(relative), path)
    }

    /// Deletes `relative` (absent already is fine).
    pub fn remove(&self, relative: &str) -> Result<()> {
        self.delete_key(self.relative(relative))
    }

    /// Deletes `key` (absent already is fine).
    fn delete_key(&self, key: Path) -> Result<()> {
        let (store, what) = (self.store.clone(), format!("delete of {key} from {}", self.url));
        match self.block(what, async move { store.delete(&key).await }) {
            Err(StorageError::ObjectStore { reason, .. }) if reason.contains("not found") => Ok(()),
            other => other,
        }
    }

    fn relative(&self, relative: &str) -> Path {
        relative.split('/').fold(self.prefix.clone(), |key, part| key.join(part))
    }

    fn put_file(&self, key: Path, path: &FsPath) -> Result<u64> {
        let len = std::fs::metadata(path).at(path)?.len();
        let what = format!("upload of {key} to {}", self.url);
        let store = self.store.clone();
        if len > MULTIPART_ABOVE {
            let file = std::fs::File::open(path).at(path)?;
            let upload = upload_parts(store.clone(), key.clone(), file);
            self.block_for(what.clone(), upload, self.timeout.saturating_mul(parts(len)))?;
        } else {
            let bytes = std::fs::read(path).at(path)?;
            let key = key.clone();
            self.block(what.clone(), async move { store.put(&key, PutPayload::from(bytes)).await })?;
        }
        let store = self.store.clone();
        let meta = self.block(format!("size of {key} in {}", self.url), async move { store.head(&key).await })?;
        if meta.size != len {
            return Err(StorageError::ObjectStore { what, reason: format!("stored {} bytes of {len}", meta.size) });
        }
        self.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(len)
    }

    /// Writes `bytes` as `relative`; with `create_only`, only if nothing
    /// is there yet (an atomic check on S3 and on local disk). Returns
    /// whether it was written: `false` when `create_only` found an object.
    pub fn put_bytes(&self, relative: &str, bytes: Vec<u8>, create_only: bool) -> Result<bool> {
        let (store, key) = (self.store.clone(), self.relative(relative));
        let what = format!("upload of {key} to {}", self.url);
        let mode = match create_only {
            true => object_store::PutMode::Create,
            false => object_store::PutMode::Overwrite,
        };
        let len = bytes.len() as u64;
        let put = async move {
            match store.put_opts(&key, PutPayload::from(bytes), mode.into()).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let written = self.block(what, put)?;
        if written {
            self.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// The size of object `relative` in bytes.
    pub fn size(&self, relative: &str) -> Result<u64> {
        let (store, key) = (self.store.clone(), self.relative(relative));
        let what = format!("size of {key} in {}", self.url);
        Ok(self.block(what, async move { store.head(&key).await })?.size)
    }

    /// Bytes `range` of object `relative`.
    pub fn get_range(&self, relative: &str, range: Range<u64>) -> Result<bytes::Bytes> {
        let (store, key) = (self.store.clone(), self.relative(relative));
        let what = format!("read of {key} from {}", self.url);
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = self.block(what, async move { store.get_range(&key, range).await })?;
        self.read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Bytes `range` of segment `id`, a file of `len` bytes: from the
    /// local cache, or fetched (and cached).
    pub fn read(&self, id: SegmentId, range: Range<u64>, len: u64) -> Result<Vec<u8>> {
        match &self.cache {
            Some(cache) => cache.read(id, len, range, |r| self.fetch(id, r)),
            None => self.fetch(id, range),
        }
    }

    /// Fetches, in parallel (`PREFETCH_CONCURRENCY` requests in flight,
    /// each at most `PREFETCH_RUN_BYTES`), the chunks of `wants` (segment,
    /// file length, byte ranges) the cache does not hold, up to a quarter
    /// of the cache, so that the reads that follow find them there. Each
    /// answer goes to the cache as it arrives: memory holds at most the
    /// requests in flight. A failure is only logged: the read that needs
    /// the bytes fetches them again and reports it.
    pub fn prefetch(&self, wants: &[(SegmentId, u64, Vec<Range<u64>>)]) {
        use futures::StreamExt;
        let Some(cache) = &self.cache else { return };
        let budget = cache.stats().capacity_bytes / 4;
        let mut runs: Vec<(SegmentId, Range<u64>)> = Vec::new();
        let mut planned = 0u64;
        'wants: for (id, len, ranges) in wants {
            for run in cache.missing(*id, *len, ranges) {
                let mut start = run.start;
                while start < run.end {
                    let end = (start + PREFETCH_RUN_BYTES).min(run.end);
                    if planned + (end - start) > budget {
                        break 'wants;
                    }
                    planned += end - start;
                    runs.push((*id, start..end));
                    start = end;
                }
            }
        }
        if runs.is_empty() {
            return;
        }
        let requests = runs.len();
        let fetches: Vec<_> = runs
            .into_iter()
            .map(|(id, range)| {
                let (store, key, cache) = (self.store.clone(), self.key(id), cache.clone());
                async move {
                    let bytes = store.get_range(&key, range.clone()).await?;
                    cache.store(id, range.start, &bytes);
                    Ok::<u64, object_store::Error>(bytes.len() as u64)
                }
            })
            .collect();
        let all = async move {
            Ok(futures::stream::iter(fetches).buffer_unordered(PREFETCH_CONCURRENCY).collect::<Vec<_>>().await)
        };
        let fetched = match self.block(format!("prefetch of {requests} ranges from {}", self.url), all) {
            Ok(fetched) => fetched,
            Err(e) => return tracing::debug!(error = %e, "prefetch failed; reads fetch what they need"),
        };
        for answer in fetched {
            self.read_requests.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok(bytes) => drop(self.read_bytes.fetch_add(bytes, Ordering::Relaxed)),
                Err(e) => tracing::debug!(error = %e, "prefetch of a range failed"),
            }
        }
    }

    /// Bytes `range` of segment `id`, from the store.
    fn fetch(&self, id: SegmentId, range: Range<u64>) -> Result<Vec<u8>> {
        let (store, key) = (self.store.clone(), self.key(id));
        let what = format!("read of {} bytes {}..{} from {}", id.file_name(), range.start, range.end, self.url);
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = self.block(what, async move { store.get_range(&key, range).await })?;
        self.read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes.to_vec())
    }

    /// The whole object `relative` (a part of the Parquet mirror).
    pub fn get(&self, relative: &str) -> Result<bytes::Bytes> {
        let (store, key) = (self.store.clone(), self.relative(relative));
        let what = format!("read of {key} from {}", self.url);
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = self.block(what, async move { store.get(&key).await?.bytes().await })?;
        self.read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// The segments the store holds (by their `segments/{id}.seg` keys).
    pub fn list(&self) -> Result<Vec<SegmentId>> {
        Ok(self
            .list_dir("segments")?
            .iter()
            .filter_map(|key| key.strip_prefix("segments/")?.strip_suffix(".seg"))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok().map(SegmentId))
            .collect())
    }

    /// The keys (relative, like `put`'s) of the objects directly under the
    /// relative directory `dir`.
    pub fn list_dir(&self, dir: &str) -> Result<Vec<String>> {
        let (store, path) = (self.store.clone(), self.relative(dir));
        let what = format!("listing of {dir} in {}", self.url);
        let listed = self.block(what, async move { store.list_with_delimiter(Some(&path)).await })?;
        let prefix = self.prefix.as_ref();
        Ok(listed
            .objects
            .iter()
            .map(|o| o.location.as_ref())
            .map(|key| key.strip_prefix(prefix).map_or(key, |k| k.trim_start_matches('/')).to_string())
            .collect())
    }

    /// Deletes segment `id` from the store and the cache (absent already
    /// is fine).
    pub fn delete(&self, id: SegmentId) -> Result<()> {
        // The object first: a read racing the deletion fetches nothing
        // after it, and the cache stores nothing of it once forgotten.
        self.delete_key(self.key(id))?;
        if let Some(cache) = &self.cache {
            cache.forget(id);
        }
        Ok(())
    }

    /// Drops the cached chunks of every segment not in `remote`.
    pub fn keep_cached(&self, remote: &std::collections::HashSet<SegmentId>) {
        if let Some(cache) = &self.cache {
            cache.keep_only(remote);
        }
    }
}

/// The parts of a multipart upload of `len` bytes.
fn parts(len: u64) -> u32 {
    u32::try_from(len.div_ceil(PART_BYTES as u64)).unwrap_or(u32::MAX).max(1)
}

/// Uploads `file` as `key` in parts of `PART_BYTES`, aborting the upload
/// if any step fails.
async fn upload_parts(store: Arc<dyn ObjectStore>, key: Path, mut file: std::fs::File) -> object_store::Result<()> {
    let mut upload = store.put_multipart(&key).await?;
    let sent: object_store::Result<()> = async {
        loop {
            let mut part = Vec::with_capacity(PART_BYTES);
            (&mut file)
                .take(PART_BYTES as u64)
                .read_to_end(&mut part)
                .map_err(|e| object_store::Error::Generic { store: "local file", source: Box::new(e) })?;
            if part.is_empty() {
                return Ok(());
            }
            upload.put_part(PutPayload::from(part)).await?;
        }
    }
    .await;
    match sent {
        Ok(()) => upload.complete().await.map(|_| ()),
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_file_goes_up_in_parts_and_reads_back_through_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let len = MULTIPART_ABOVE as usize + PART_BYTES + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ (i >> 16) as u8).collect();
        let file = dir.path().join("big.seg");
        std::fs::write(&file, &data).expect("write");
        let store = dir.path().join("objects");
        let tier = ObjectTier::open(store.to_str().expect("utf-8"), Duration::from_secs(30))
            .expect("open")
            .with_cache(ChunkCache::open(&dir.path().join("cache"), 64 << 20).expect("cache"));
        let id = SegmentId(42);
        assert_eq!(tier.upload(id, &file).expect("upload"), len as u64);
        assert_eq!(tier.list().expect("list"), vec![id]);
        let len = len as u64;
        for range in [0..10, len - 100..len, PART_BYTES as u64 - 5..PART_BYTES as u64 + 5, 0..len] {
            let got = tier.read(id, range.clone(), len).expect("read");
            assert_eq!(got, &data[range.start as usize..range.end as usize]);
        }
        let stats = tier.stats();
        assert_eq!(stats.uploaded_bytes, len);
        // The last read fetched only the chunks the first three had not.
        assert_eq!(stats.read_bytes, len, "{stats:?}");
        assert!(stats.cache.hits >= 3, "{stats:?}");
        // A prefetch of another copy fetches every run at once; reads
        // after it cost no request.
        let other = SegmentId(43);
        assert_eq!(tier.upload(other, &file).expect("upload"), len);
        let wants = [(other, len, vec![0..10, len - 100..len, 3 * CHUNK_BYTES..5 * CHUNK_BYTES + 1])];
        tier.prefetch(&wants);
        let requests = tier.stats().read_requests;
        for range in &wants[0].2 {
            let got = tier.read(other, range.clone(), len).expect("read");
            assert_eq!(got, &data[range.start as usize..range.end as usize]);
        }
        assert_eq!(tier.stats().read_requests, requests, "{:?}", tier.stats());
        tier.delete(other).expect("delete");
        tier.delete(id).expect("delete");
        assert!(tier.list().expect("list").is_empty());
        assert_eq!(tier.stats().cache.bytes, 0);
    }
}
