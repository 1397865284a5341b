//! The store configuration of the crash-test driver (`src/bin/adstore-torture.rs`),
//! shared with `tests/crash.rs`: partitioning decides WAL replay, so the test
//! must reopen the store exactly as the driver wrote it.

use adstore_storage::StoreConfig;

/// Small thresholds so that a short run rotates WAL files, seals often,
/// compacts (3 segments of a partition) and finalizes (buckets close an
/// hour after their end, in event time; the driver's events span 6 hours).
pub fn torture_config() -> StoreConfig {
    StoreConfig {
        shards: 3,
        seal_max_rows: 300,
        seal_max_age_ms: 20,
        seal_interval_ms: 5,
        block_rows: 128,
        wal_file_size_bytes: 16 * 1024,
        compact_min_segments: 3,
        allowed_lateness_ms: 3_600_000,
        min_free_bytes: 0,
        ..StoreConfig::default()
    }
}
