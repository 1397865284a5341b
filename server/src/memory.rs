//! The memory budget: one `[storage] memory_limit` (default half the
//! machine) that the head, the block cache, the dedupe keys and the
//! attribution anchors share.
//!
//! ```text
//!  memory_limit ─► settings left out: max_head_bytes = limit / 2
//!                                     block_cache_bytes ≤ limit / 8
//!                                     dedupe_spill_keys ≤ (limit / 16) / bytes per key
//!  each ingest request: head + block cache + dedupe + attribution ≥ limit, the head not empty
//!                       ─► 503 memory_full, Retry-After (seals free the head)
//!  /metrics: adstore_memory_limit_bytes, adstore_memory_used_bytes{part}
//! ```
//!
//! The head and the block cache keep within their own limits; what grows
//! with the traffic inside the windows is the dedupe and attribution state
//! on disk, whose filters and fences stay in memory. When the parts
//! together reach the limit, ingest is refused until they shrink, so the
//! process slows down instead of running out of memory. Queries have their
//! own limits (`[query] max_memory_bytes`, `max_running`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adstore_ingest::{DedupeConfig, ExactlyOnce};
use adstore_storage::{Store, StoreConfig};
use parking_lot::Mutex;

use crate::config::{Given, IngestConfig};
use crate::error::ServerError;

/// The smallest `memory_limit` accepted.
const MIN_LIMIT: u64 = 64 << 20;
/// How long a measured use stands before ingest measures again.
const MEASURE_EVERY: Duration = Duration::from_millis(100);

/// The memory the process may use, in bytes: `MemTotal` from
/// `/proc/meminfo`, or the cgroup's limit (`memory.max`, cgroup v2) when
/// that is lower, as in a container; `None` where neither is known.
pub fn mem_total_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok();
    let total = info.as_deref().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // "max" (no limit) does not parse, and leaves MemTotal.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|v| v.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// `storage.memory_limit`, or half of `mem_total` (8 GiB where the memory
/// is not known).
pub fn limit(storage: &StoreConfig, mem_total: Option<u64>) -> u64 {
    storage.memory_limit.unwrap_or_else(|| mem_total.map_or(8 << 30, |total| total / 2))
}

/// Fills in the settings the configuration leaves out (`given` says which
/// it gave) from its memory limit, and refuses a limit that is too small
/// or that the settings given exceed.
pub fn apply_budget(
    storage: &mut StoreConfig,
    ingest: &mut IngestConfig,
    given: Given,
    mem_total: Option<u64>,
) -> Result<u64, ServerError> {
    let limit = limit(storage, mem_total);
    if limit < MIN_LIMIT {
        return Err(ServerError::Config(format!(
            "storage.memory_limit = {limit} is below the smallest budget, {MIN_LIMIT} (64 MiB)"
        )));
    }
    let head = *storage.max_head_bytes.get_or_insert(limit / 2);
    if !given.block_cache_bytes {
        storage.block_cache_bytes = storage.block_cache_bytes.min(limit / 8);
    }
    if !given.dedupe_spill_keys {
        let per_key = DedupeConfig { expected_keys: 1 << 20, ..DedupeConfig::default() }.expected_table_bytes() >> 20;
        let fits = (limit / 16) / per_key.max(1);
        ingest.dedupe_spill_keys = ingest.dedupe_spill_keys.min(usize::try_from(fits).unwrap_or(usize::MAX).max(1));
    }
    if head.saturating_add(storage.block_cache_bytes) > limit {
        return Err(ServerError::Config(format!(
            "storage.max_head_bytes ({head}) and storage.block_cache_bytes ({}) add up to more than \
             storage.memory_limit ({limit}); lower them or raise the limit",
            storage.block_cache_bytes
        )));
    }
    // A presized dedupe table never shrinks: with the block cache it must
    // leave room for the head, or ingest would be refused for good.
    let table =
        DedupeConfig { expected_keys: ingest.dedupe_expected_keys, ..DedupeConfig::default() }.expected_table_bytes();
    if table.saturating_add(storage.block_cache_bytes) >= limit {
        return Err(ServerError::Config(format!(
            "ingest.dedupe_expected_keys ({}) presizes a {table}-byte dedupe table that, with storage.block_cache_bytes \
             ({}), leaves no room for the head within storage.memory_limit ({limit})",
            ingest.dedupe_expected_keys, storage.block_cache_bytes
        )));
    }
    Ok(limit)
}

/// The memory each part holds, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The unsealed events, and the dictionary codes scans built for them.
    pub head: u64,
    pub block_cache: u64,
    /// The dedupe table, and the filters and fences of its runs on disk.
    pub dedupe: u64,
    /// The attribution index in memory, and the filters and fences of its parts.
    pub attribution: u64,
}

impl MemoryUse {
    pub fn measure(store: &Store, exactly_once: &ExactlyOnce) -> MemoryUse {
        let eo = exactly_once.stats();
        MemoryUse {
            head: store.head_bytes() + store.head_codes_bytes(),
            block_cache: store.block_cache_bytes(),
            dedupe: eo.dedupe_table_bytes + eo.dedupe_spilled.memory_bytes,
            attribution: eo.attribution_memory_bytes + eo.attribution_parts.memory_bytes,
        }
    }

    /// Each part by its name in `/metrics`.
    pub fn parts(&self) -> [(&'static str, u64); 4] {
        [
            ("head", self.head),
            ("block_cache", self.block_cache),
            ("dedupe", self.dedupe),
            ("attribution", self.attribution),
        ]
    }

    pub fn total(&self) -> u64 {
        self.parts().iter().map(|(_, b)| b).sum()
    }
}

/// Refuses ingest while the parts together hold the limit or more and the
/// head is not empty.
#[derive(Debug)]
pub struct MemoryGuard {
    limit: u64,
    last: Mutex<Option<(Instant, MemoryUse)>>,
    over: AtomicBool,
    refusals: AtomicU64,
}

impl MemoryGuard {
    pub fn new(limit: u64) -> MemoryGuard {
        MemoryGuard { limit, last: Mutex::new(None), over: AtomicBool::new(false), refusals: AtomicU64::new(0) }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Ingest requests refused since the start.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// `Err(MemoryFull)` while the parts hold `limit` or more (measured at
    /// most every `MEASURE_EVERY`).
    pub fn check(&self, store: &Store, exactly_once: &ExactlyOnce) -> Result<(), ServerError> {
        let used = {
            let mut last = self.last.lock();
            match *last {
                Some((at, used)) if at.elapsed() < MEASURE_EVERY => used,
                _ => {
                    let used = MemoryUse::measure(store, exactly_once);
                    *last = Some((Instant::now(), used));
                    used
                }
            }
        };
        // Refusing helps only while the head holds something a seal frees:
        // with an empty head the rest (filters, fences, the cache) shrinks
        // only as new events move the windows on.
        let over = used.total() >= self.limit && used.head > 0;
        if over != self.over.swap(over, Ordering::AcqRel) {
            match over {
                true => {
                    tracing::warn!(?used, limit = self.limit, "memory limit reached: ingest refused until it frees")
                }
                false => tracing::info!(?used, limit = self.limit, "memory below its limit again: ingest accepted"),
            }
        }
        if !over {
            return Ok(());
        }
        self.refusals.fetch_add(1, Ordering::Relaxed);
        let (part, bytes) = used.parts().into_iter().max_by_key(|(_, b)| *b).unwrap_or(("head", 0));
        Err(ServerError::MemoryFull { used: used.total(), limit: self.limit, part, part_bytes: bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn budget(toml: &str, mem_total: Option<u64>) -> Result<(u64, StoreConfig, IngestConfig), ServerError> {
        let config = Config::parse(toml).expect("config");
        let (mut storage, mut ingest) = (config.storage, config.ingest);
        let limit = apply_budget(&mut storage, &mut ingest, config.given, mem_total)?;
        Ok((limit, storage, ingest))
    }

    #[test]
    fn the_settings_left_out_come_from_the_limit() {
        let gib = 1u64 << 30;
        let (limit, storage, ingest) = budget("", Some(16 * gib)).expect("default");
        assert_eq!((limit, storage.max_head_bytes, storage.block_cache_bytes), (8 * gib, Some(4 * gib), 256 << 20));
        assert_eq!(ingest.dedupe_spill_keys, IngestConfig::default().dedupe_spill_keys);

        let (limit, storage, ingest) = budget("[storage]\nmemory_limit = 268435456\n", Some(16 * gib)).expect("small");
        assert_eq!((limit, storage.max_head_bytes, storage.block_cache_bytes), (256 << 20, Some(128 << 20), 32 << 20));
        assert!(ingest.dedupe_spill_keys < IngestConfig::default().dedupe_spill_keys, "{}", ingest.dedupe_spill_keys);

        let (_, storage, _) = budget(
            "[storage]\nmemory_limit = 1073741824\nmax_head_bytes = 100000000\nblock_cache_bytes = 5000\n",
            None,
        )
        .expect("explicit");
        assert_eq!((storage.max_head_bytes, storage.block_cache_bytes), (Some(100_000_000), 5000));
        assert_eq!(budget("", None).expect("unknown memory").0, 8 * gib);

        // A setting given equal to its default is kept, not budgeted down.
        let defaults = (StoreConfig::default().block_cache_bytes, IngestConfig::default().dedupe_spill_keys);
        let text = format!(
            "[storage]\nmemory_limit = 1073741824\nblock_cache_bytes = {}\n\n[ingest]\ndedupe_spill_keys = {}\n",
            defaults.0, defaults.1
        );
        let (_, storage, ingest) = budget(&text, None).expect("explicit defaults");
        assert_eq!((storage.block_cache_bytes, ingest.dedupe_spill_keys), defaults);
        let (_, storage, ingest) = budget("[storage]\nmemory_limit = 1073741824\n", None).expect("left out");
        assert!(storage.block_cache_bytes < defaults.0 || ingest.dedupe_spill_keys < defaults.1);
    }

    #[test]
    fn a_limit_too_small_or_exceeded_by_the_settings_is_refused() {
        let err = budget("[storage]\nmemory_limit = 1000\n", None).expect_err("tiny").to_string();
        assert!(err.contains("storage.memory_limit = 1000 is below"), "{err}");
        let err = budget("[storage]\nmemory_limit = 134217728\nmax_head_bytes = 134217728\n", None)
            .expect_err("head alone fills it")
            .to_string();
        assert!(err.contains("storage.max_head_bytes (134217728) and storage.block_cache_bytes"), "{err}");
        let err = budget("[storage]\nmemory_limit = 134217728\n\n[ingest]\ndedupe_expected_keys = 10000000\n", None)
            .expect_err("the table alone fills it")
            .to_string();
        assert!(err.contains("ingest.dedupe_expected_keys (10000000) presizes a"), "{err}");
    }
}
