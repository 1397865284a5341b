//! The store configuration of the crash-test driver (`src/bin/adstore-torture.rs`),
//! shared with `tests/crash.rs`: partitioning decides WAL replay, so the test
//! must reopen the store exactly as the driver wrote it.

use adstore_storage::StoreConfig;

/// Small thresholds so that a short run rotates WAL files and seals often.
pub fn torture_config() -> StoreConfig {
    StoreConfig {
        shards: 3,
        seal_max_rows: 300,
        seal_max_age_ms: 20,
        seal_interval_ms: 5,
        block_rows: 128,
        wal_file_size_bytes: 16 * 1024,
        ..StoreConfig::default()
    }
}
