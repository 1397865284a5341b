//! The server's TOML configuration. Every field has a default, documented
//! here and in `docs/configuration.md`; an empty file is a valid config.

use std::path::Path;

use adstore_storage::StoreConfig;
use adstore_storage::rollup::{Granularity, RollupDef};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// Smallest `tiering.cache_bytes` other than 0.
const MIN_CACHE_BYTES: u64 = 16 << 20;
/// Largest `ingest.dedupe_expected_keys`: about 75 GB of table.
const MAX_EXPECTED_KEYS: usize = 4_000_000_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: HttpConfig,
    pub ingest: IngestConfig,
    pub storage: StoreConfig,
    pub query: QueryConfig,
    /// Attribution and invalid-traffic rules (DESIGN.md §3–§4). Rules set
    /// later through `PUT /v1/attribution` are persisted in the data
    /// directory and win over these.
    pub attribution: adstore_ingest::AttributionRules,
    /// `[[rollups]]`: the dimension sets `metrics` is pre-aggregated by.
    /// Absent: the default set (`RollupDef::defaults`); `rollups = []`:
    /// none.
    pub rollups: Option<Vec<RollupConfig>>,
    /// `[retention.raw]`, `[retention.minute]`, …: how long each level is
    /// kept. A policy set later through `PUT /v1/retention` is persisted in
    /// the data directory and wins over this one. Default: everything forever.
    pub retention: adstore_storage::retention::RetentionPolicy,
    /// `[tiering]`: where segments past their `hot` age go.
    pub tiering: TieringConfig,
    /// `[click]`: where the click redirect may send users (`click.rs`).
    pub click: crate::click::ClickConfig,
    /// `[[sources.kafka]]`: topics consumed as ingest (`kafka.rs`).
    pub sources: crate::kafka::SourcesConfig,
    /// The settings the memory budget would fill in that the file gave
    /// (set by [`Config::parse`]).
    #[serde(skip)]
    pub given: Given,
}

/// Which settings that the memory budget fills in when left out
/// (`memory.rs`) a configuration file gave: a value equal to the default
/// is the user's choice too, and is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Given {
    pub block_cache_bytes: bool,
    pub dedupe_spill_keys: bool,
}

/// `[tiering]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TieringConfig {
    /// `s3://bucket/prefix` (credentials, region and endpoint from the
    /// `AWS_*` environment variables, `AWS_ENDPOINT_URL` and
    /// `AWS_ALLOW_HTTP` included), or a local directory. Default:
    /// `{data_dir}/objects`.
    pub object_store: Option<String>,
    /// How long one object store call (retries included) may take before
    /// it fails: a query that needs cold data then gets 503
    /// `object_store_unavailable`. Default 30_000.
    pub timeout_ms: u64,
    /// Bytes of cold segments kept on local disk (`{data_dir}/cache`), in
    /// chunks of 256 KiB read by queries; 0 turns the cache off. Default
    /// 1_073_741_824 (1 GiB).
    pub cache_bytes: u64,
    /// Also write each settled day's raw events and rollup rows to the
    /// object store as Hive-partitioned Parquet (`parquet/events/day=…/`),
    /// for other engines. Default false.
    pub parquet_mirror: bool,
    /// Also commit the mirror's parts to Apache Iceberg tables (`events`,
    /// `{rollup}_hour`, `{rollup}_day`) that several nodes share (needs
    /// `parquet_mirror`). Default false.
    pub iceberg: bool,
    /// Where the Iceberg tables live: `s3://bucket/prefix` or a directory,
    /// the same for every node of a fleet. Default: `iceberg/` in
    /// `object_store`.
    pub iceberg_warehouse: Option<String>,
}

impl Default for TieringConfig {
    fn default() -> TieringConfig {
        TieringConfig {
            object_store: None,
            timeout_ms: 30_000,
            cache_bytes: 1 << 30,
            parquet_mirror: false,
            iceberg: false,
            iceberg_warehouse: None,
        }
    }
}

/// One `[[rollups]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    pub name: String,
    pub dimensions: Vec<String>,
    /// `minute` (default) or `hour`.
    pub granularity: Option<String>,
}

impl Config {
    /// The rollups this configuration asks for, checked.
    pub fn rollup_defs(&self) -> Result<Vec<RollupDef>, ServerError> {
        let Some(list) = &self.rollups else { return Ok(RollupDef::defaults()) };
        let mut defs: Vec<RollupDef> = Vec::with_capacity(list.len());
        for r in list {
            let dims: Vec<&str> = r.dimensions.iter().map(String::as_str).collect();
            let def = RollupDef::new(&r.name, &dims).map_err(|e| ServerError::Config(format!("rollups: {e}")))?;
            let granularity = match r.granularity.as_deref() {
                None => Granularity::Minute,
                Some(g) => Granularity::parse(g).ok_or_else(|| {
                    ServerError::Config(format!("rollups: {}: granularity {g:?} is not \"minute\" or \"hour\"", r.name))
                })?,
            };
            let def = def.with_granularity(granularity);
            if defs.iter().any(|d| d.name() == def.name()) {
                return Err(ServerError::Config(format!("rollups: the name {} is used twice", def.name())));
            }
            defs.push(def);
        }
        Ok(defs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes (after decompression for
    /// compressed bodies). Default 64 MiB. Larger requests get 413.
    pub max_body_bytes: usize,
    /// Where the PostgreSQL wire protocol listens (`host:port`), or `off`.
    /// Default `127.0.0.1:5433` (5432 is usually a real PostgreSQL).
    /// `adstore serve --pg-listen` wins over this.
    pub pg_listen: String,
    /// The most PostgreSQL connections open at once; one more is refused
    /// with SQLSTATE 53300. Default 256.
    pub pg_max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig { max_body_bytes: 64 << 20, pg_listen: "127.0.0.1:5433".into(), pg_max_connections: 256 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Events more than this far ahead of the server clock are rejected
    /// (`future`). Default 300_000 (5 minutes).
    pub max_future_skew_ms: i64,
    /// Events older than this behind the newest accepted event time are
    /// rejected (`late`) unless the request says `?mode=backfill`.
    /// Default 86_400_000 (24 hours).
    pub allowed_lateness_ms: i64,
    /// Per-line errors listed in an ingest response (counts stay exact).
    /// Default 100.
    pub max_errors: usize,
    /// Two events with the same (publisher_id, type, event_id) whose event
    /// times are within this window are one event. Default 86_400_000 (24 h).
    pub dedupe_window_ms: i64,
    /// Keys (events within dedupe window + lateness) the dedupe index is
    /// sized for at startup and never shrinks below. Default 0: start empty
    /// and grow as keys arrive.
    pub dedupe_expected_keys: usize,
    /// The dedupe index writes its sealed keys to sorted runs on disk
    /// (`dedupe/` in the data directory) each time this many have been
    /// sealed since the last time, so memory holds the head's keys and
    /// about this many more, plus about 2.4 bytes of filter and fences per key on disk.
    /// 0 keeps every key in memory. Default 1_000_000.
    pub dedupe_spill_keys: usize,
    /// The attribution index moves its impressions and clicks to parts on
    /// disk (`attribution/` in the data directory, sorted by id and by
    /// user, read through mmap) each time memory holds this many, so
    /// memory holds about this many plus about 2.4 bytes of filter and
    /// fences per anchor on disk. 0 keeps every anchor in memory.
    /// Default 1_000_000.
    pub attribution_spill_entries: usize,
    /// The duplicate log (`duplicates/` in the data directory) records when
    /// each duplicate arrived, for the event trace, in at most this many
    /// bytes (40 a duplicate); past it the oldest records go. 0 keeps no
    /// log. Default 67_108_864 (64 MiB, about 1.7 million duplicates).
    pub duplicate_log_bytes: u64,
    /// An `adstore-expected-events` announcement never sizes the dedupe
    /// index past the table for this many keys (nor past an eighth of the
    /// memory). 0: announcements are ignored. Default 20_000_000 (about
    /// 430 MB of table).
    pub max_announced_events: usize,
    /// Events per second one publisher may send; a request beyond it gets
    /// 429 with `Retry-After`, and nothing of it is stored. Default 0
    /// (unlimited).
    pub max_events_per_second_per_publisher: u64,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            max_future_skew_ms: 300_000,
            allowed_lateness_ms: 86_400_000,
            max_errors: 100,
            dedupe_window_ms: 86_400_000,
            dedupe_expected_keys: 0,
            dedupe_spill_keys: 1_000_000,
            attribution_spill_entries: 1_000_000,
            duplicate_log_bytes: 64 << 20,
            max_announced_events: 20_000_000,
            max_events_per_second_per_publisher: 0,
        }
    }
}

/// What one SQL statement may take (docs/sql.md, "Limits").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A statement running longer fails with `timeout` (408). Default 30_000.
    pub timeout_ms: u64,
    /// Most groups an aggregation may produce (`too_many_groups`). Default 1_000_000.
    pub max_groups: usize,
    /// Approximate memory for aggregation state and buffered rows
    /// (`memory_limit`). Default 1 GiB.
    pub max_memory_bytes: usize,
    /// Most rows a result may hold (`result_too_large`). Default 1_000_000.
    pub max_result_rows: usize,
    /// Most operators in one statement (`query_too_complex`). Default and
    /// maximum 4_096: every statement runs on a stack sized for it.
    pub max_operators: usize,
    /// How deep parentheses and `CASE … END` may nest (`query_too_complex`).
    /// Default and maximum 64.
    pub max_nesting: usize,
    /// Most statements running at once, over HTTP and PostgreSQL together;
    /// the rest wait in arrival order. Default twice the cores, at least 4.
    pub max_running: usize,
    /// Most statements waiting for a turn; one more is refused
    /// (`overloaded`). Default 1_024.
    pub max_queued: usize,
    /// Longest wait for a turn before a statement is refused (`overloaded`);
    /// `timeout_ms` starts when the statement runs. Default 30_000.
    pub queue_timeout_ms: u64,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        let d = adstore_query::QueryOptions::default();
        QueryConfig {
            timeout_ms: u64::try_from(d.timeout.as_millis()).unwrap_or(u64::MAX),
            max_groups: d.max_groups,
            max_memory_bytes: d.max_memory_bytes,
            max_result_rows: d.max_result_rows,
            max_operators: d.max_operators,
            max_nesting: d.max_nesting,
            max_running: std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4)),
            max_queued: 1_024,
            queue_timeout_ms: 30_000,
        }
    }
}

impl QueryConfig {
    /// The options of one statement run now.
    pub fn options(&self, now_ms: i64) -> adstore_query::QueryOptions {
        adstore_query::QueryOptions {
            now_ms,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            max_groups: self.max_groups,
            max_memory_bytes: self.max_memory_bytes,
            max_result_rows: self.max_result_rows,
            max_operators: self.max_operators,
            max_nesting: self.max_nesting,
            cancel: None,
            advertisers: None,
        }
    }

    /// The gate that admits statements to run (`admission.rs`).
    pub(crate) fn admission(&self) -> crate::admission::Admission {
        crate::admission::Admission::new(
            self.max_running,
            self.max_queued,
            std::time::Duration::from_millis(self.queue_timeout_ms),
        )
    }

    fn validate(&self) -> Result<(), ServerError> {
        let (ops, nesting) = (adstore_query::MAX_OPERATORS, adstore_query::MAX_NESTING);
        if self.max_running == 0 || self.queue_timeout_ms == 0 {
            return Err(ServerError::Config("query.max_running and query.queue_timeout_ms must be positive".into()));
        }
        // tokio's semaphore holds at most this many permits.
        if self.max_running > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ServerError::Config(format!(
                "query.max_running must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            )));
        }
        if self.timeout_ms == 0 || self.max_groups == 0 || self.max_memory_bytes == 0 || self.max_result_rows == 0 {
            return Err(ServerError::Config(
                "query.timeout_ms, query.max_groups, query.max_memory_bytes and query.max_result_rows must be positive"
                    .into(),
            ));
        }
        if !(1..=ops).contains(&self.max_operators) {
            return Err(ServerError::Config(format!(
                "query.max_operators must be between 1 and {ops} (the query stack is sized for {ops})"
            )));
        }
        if !(1..=nesting).contains(&self.max_nesting) {
            return Err(ServerError::Config(format!(
                "query.max_nesting must be between 1 and {nesting} (the query stack is sized for {nesting})"
            )));
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        let config = Config::parse(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration from TOML text, noting which budgeted settings it
    /// gives. Not validated.
    ///
    /// # Errors
    /// The TOML parser's message: a syntax error, an unknown key, a wrong type.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        let mut config: Config = toml::from_str(text)?;
        let table: toml::Table = toml::from_str(text)?;
        let gives = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).is_some();
        config.given = Given {
            block_cache_bytes: gives("storage", "block_cache_bytes"),
            dedupe_spill_keys: gives("ingest", "dedupe_spill_keys"),
        };
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ServerError> {
        self.storage.validate().map_err(|e| match e {
            adstore_storage::StorageError::Config(message) => ServerError::Config(message),
            other => ServerError::Config(other.to_string()),
        })?;
        if self.tiering.iceberg && !self.tiering.parquet_mirror {
            return Err(ServerError::Config(
                "tiering.iceberg = true needs tiering.parquet_mirror = true: the tables' data files are the mirror's parts"
                    .into(),
            ));
        }
        if self.tiering.iceberg_warehouse.is_some() && !self.tiering.iceberg {
            return Err(ServerError::Config("tiering.iceberg_warehouse is set but tiering.iceberg is not true".into()));
        }
        // The store closes buckets by the ingest lateness; a different value
        // under [storage] would be silently replaced by it.
        let lateness = self.storage.allowed_lateness_ms;
        if lateness != StoreConfig::default().allowed_lateness_ms && lateness != self.ingest.allowed_lateness_ms {
            return Err(ServerError::Config(
                "storage.allowed_lateness_ms is taken from ingest.allowed_lateness_ms; set that instead".into(),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ServerError::Config("server.max_body_bytes must be at least 1024".into()));
        }
        self.sources.validate(self.server.max_body_bytes)?;
        if self.server.pg_max_connections == 0 {
            return Err(ServerError::Config(
                "server.pg_max_connections must be positive (turn the protocol off with server.pg_listen = \"off\")"
                    .into(),
            ));
        }
        if self.ingest.max_future_skew_ms < 0 || self.ingest.allowed_lateness_ms < 0 {
            return Err(ServerError::Config("ingest windows must not be negative".into()));
        }
        if self.ingest.dedupe_window_ms <= 0 {
            return Err(ServerError::Config("ingest.dedupe_window_ms must be positive".into()));
        }
        if self.ingest.dedupe_expected_keys > MAX_EXPECTED_KEYS {
            return Err(ServerError::Config(format!(
                "ingest.dedupe_expected_keys must be at most {MAX_EXPECTED_KEYS} (about 21 bytes of memory each)"
            )));
        }
        if self.ingest.max_announced_events > MAX_EXPECTED_KEYS {
            return Err(ServerError::Config(format!(
                "ingest.max_announced_events must be at most {MAX_EXPECTED_KEYS} (about 21 bytes of memory each)"
            )));
        }
        if self.tiering.cache_bytes != 0 && self.tiering.cache_bytes < MIN_CACHE_BYTES {
            return Err(ServerError::Config(format!(
                "tiering.cache_bytes must be 0 (no cache) or at least {MIN_CACHE_BYTES} (16 MiB): a chunk is 256 KiB"
            )));
        }
        self.attribution.validate().map_err(|e| ServerError::Config(format!("attribution: {e}")))?;
        self.query.validate()?;
        self.click.validate()?;
        self.rollup_defs()?;
        self.retention.validate(self.ingest.allowed_lateness_ms).map_err(ServerError::Config)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c: Config = toml::from_str("").expect("parse");
        assert_eq!(c.storage.shards, 4);
        assert_eq!(c.server.max_body_bytes, 64 << 20);
    }

    #[test]
    fn dedupe_expected_keys_is_read_and_bounded() {
        let c: Config = toml::from_str("[ingest]\ndedupe_expected_keys = 50000000\n").expect("parse");
        assert_eq!(c.ingest.dedupe_expected_keys, 50_000_000);
        c.validate().expect("valid");
        let huge = format!("[ingest]\ndedupe_expected_keys = {}\n", MAX_EXPECTED_KEYS + 1);
        let c: Config = toml::from_str(&huge).expect("parse");
        let err = c.validate().expect_err("too many");
        assert!(err.to_string().contains("ingest.dedupe_expected_keys must be at most"), "{err}");
    }

    #[test]
    fn messages_say_invalid_configuration_once_and_lateness_is_set_once() {
        let c: Config = toml::from_str("[storage]\nshards = 0\n").expect("parse");
        let err = c.validate().expect_err("no shards").to_string();
        assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");
        let c: Config = toml::from_str("[storage]\nallowed_lateness_ms = 5\n").expect("parse");
        let err = c.validate().expect_err("set where it is not read").to_string();
        assert!(err.contains("ingest.allowed_lateness_ms"), "{err}");
    }

    #[test]
    fn iceberg_needs_the_mirror_and_a_warehouse_needs_iceberg() {
        let ok = "[tiering]\nparquet_mirror = true\niceberg = true\niceberg_warehouse = \"s3://b/w\"\n";
        toml::from_str::<Config>(ok).expect("parse").validate().expect("valid");
        let c: Config = toml::from_str("[tiering]\niceberg = true\n").expect("parse");
        let err = c.validate().expect_err("no mirror").to_string();
        assert!(err.contains("tiering.iceberg = true needs tiering.parquet_mirror = true"), "{err}");
        let c: Config = toml::from_str("[tiering]\niceberg_warehouse = \"/w\"\n").expect("parse");
        let err = c.validate().expect_err("iceberg off").to_string();
        assert!(err.contains("tiering.iceberg_warehouse is set but tiering.iceberg is not true"), "{err}");
    }

    #[test]
    fn rollups_are_read_checked_and_default_to_the_dashboard_set() {
        let c: Config = toml::from_str("").expect("parse");
        assert_eq!(c.rollup_defs().expect("defaults"), RollupDef::defaults());
        let c: Config = toml::from_str("rollups = []\n").expect("parse");
        assert!(c.rollup_defs().expect("none").is_empty());
        let text = "[[rollups]]\nname = \"by_ad\"\ndimensions = [\"advertiser_id\", \"ad_id\"]\n";
        let c: Config = toml::from_str(text).expect("parse");
        let defs = c.rollup_defs().expect("one");
        assert_eq!((defs.len(), defs[0].name(), defs[0].dims().len()), (1, "by_ad", 2));
        let twice = format!("{text}{text}");
        let err = toml::from_str::<Config>(&twice).expect("parse").validate().expect_err("twice");
        assert!(err.to_string().contains("by_ad is used twice"), "{err}");
        let bad = "[[rollups]]\nname = \"r\"\ndimensions = [\"user_key\"]\n";
        let err = toml::from_str::<Config>(bad).expect("parse").validate().expect_err("not a dimension");
        assert!(err.to_string().contains("\"user_key\" is not a dimension of metrics"), "{err}");
        let hourly = "[[rollups]]\nname = \"r\"\ndimensions = [\"ad_id\"]\ngranularity = \"hour\"\n";
        let defs = toml::from_str::<Config>(hourly).expect("parse").rollup_defs().expect("hourly");
        assert_eq!(defs[0].granularity(), Granularity::Hour);
        let bad = "[[rollups]]\nname = \"r\"\ndimensions = []\ngranularity = \"week\"\n";
        let err = toml::from_str::<Config>(bad).expect("parse").validate().expect_err("week");
        assert!(err.to_string().contains("granularity \"week\""), "{err}");
        let unknown = "[[rollups]]\nname = \"r\"\ndims = []\n";
        assert!(toml::from_str::<Config>(unknown).is_err());
    }

    #[test]
    fn background_nice_is_read_and_bounded() {
        let c: Config = toml::from_str("[storage]\nbackground_nice = 0\n").expect("parse");
        c.validate().expect("0 runs the background level");
        assert_eq!((c.storage.background_nice, Config::default().storage.background_nice), (0, 10));
        let c: Config = toml::from_str("[storage]\nbackground_nice = 20\n").expect("parse");
        let err = c.validate().expect_err("past 19").to_string();
        assert!(err.contains("storage.background_nice must be between 0 and 19"), "{err}");
        assert!(toml::from_str::<Config>("[storage]\nbackground_nice = -1\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[storage]\nshard = 3\n").expect_err("must fail");
        assert!(err.to_string().contains("shard"), "{err}");
    }

    #[test]
    fn query_limits_are_read_and_bounded() {
        let c: Config = toml::from_str("[query]\ntimeout_ms = 5000\nmax_operators = 100\n").expect("parse");
        c.validate().expect("valid");
        let opts = c.query.options(7);
        assert_eq!((opts.timeout.as_millis(), opts.max_operators, opts.max_nesting), (5_000, 100, 64));
        let c: Config = toml::from_str("[query]\nmax_operators = 5000\n").expect("parse");
        let err = c.validate().expect_err("past the stack's size");
        assert!(err.to_string().contains("query.max_operators must be between 1 and 4096"), "{err}");
        let c: Config = toml::from_str("[query]\ntimeout_ms = 0\n").expect("parse");
        assert!(c.validate().is_err());
    }
}
