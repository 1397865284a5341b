//! Exactly-once wiring: opening the store with the exactly-once seal stage,
//! the attribution rules API, and reprocessing jobs.
//!
//! ```text
//!  GET/PUT /v1/attribution      rules (validated, persisted to {data}/attribution.json)
//!  POST    /v1/reprocess        {"from","to","reason"} ─► job (background) ─► Store::reprocess
//!  GET     /v1/reprocess/{id}   job: range, rules version, status, totals before/after
//! ```
//!
//! Jobs are persisted under `{data}/reprocess/{id}.json`, so they survive a
//! restart (a job that was running when the process stopped is reported as
//! `interrupted`; its segments are all old or all new, as every re-seal
//! commits atomically).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adstore_ingest::{AttributionRules, DedupeConfig, DedupeIndex, ExactlyOnce};
use adstore_storage::measure::Measure;
use adstore_storage::{EventType, InvalidReason, SealPipeline, Store};
use axum::Json;
use axum::extract::State;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ServerError;
use crate::extract::{JsonBody, PathParams};
use crate::http::{AppState, now_ms};
use crate::memory::mem_total_bytes;

const RULES_FILE: &str = "attribution.json";
/// Where the dedupe index's runs of sealed keys go.
const DEDUPE_DIR: &str = "dedupe";
/// Where the attribution index's parts go.
const ATTRIBUTION_DIR: &str = "attribution";

/// Opens the store in `data_dir` with the exactly-once seal stage, using the
/// persisted attribution rules if any (they win over the config file's,
/// since they were set through the API later).
pub fn open_store(data_dir: &Path, config: &Config) -> Result<(Store, Arc<ExactlyOnce>), ServerError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServerError::Config(format!("cannot create {}: {e}", data_dir.display())))?;
    let rules = match std::fs::read(data_dir.join(RULES_FILE)) {
        Ok(bytes) => serde_json::from_slice::<AttributionRules>(&bytes)
            .map_err(|e| ServerError::Config(format!("{}: {e}", data_dir.join(RULES_FILE).display())))?,
        Err(_) => config.attribution.clone(),
    };
    rules.validate().map_err(ServerError::Config)?;
    let lateness = config.ingest.allowed_lateness_ms;
    let dedupe_config = DedupeConfig {
        window_ms: config.ingest.dedupe_window_ms,
        allowed_lateness_ms: lateness,
        expected_keys: config.ingest.dedupe_expected_keys,
    };
    let mem_total = mem_total_bytes();
    check_dedupe_fits(&dedupe_config, mem_total)?;
    let mut storage = config.storage.clone();
    let mut ingest = config.ingest.clone();
    crate::memory::apply_budget(&mut storage, &mut ingest, config.given, mem_total)?;
    let dedupe = match ingest.dedupe_spill_keys {
        0 => DedupeIndex::new(dedupe_config),
        keys => DedupeIndex::with_spill(dedupe_config, &data_dir.join(DEDUPE_DIR), keys),
    };
    let eo = ExactlyOnce::new(Arc::new(dedupe), rules, lateness);
    let eo = match config.ingest.attribution_spill_entries {
        0 => eo,
        entries => eo.with_attribution_spill(&data_dir.join(ATTRIBUTION_DIR), entries),
    };
    let eo = Arc::new(match config.ingest.duplicate_log_bytes {
        0 => eo,
        bytes => {
            let dir = data_dir.join(adstore_ingest::DUPLICATES_DIR);
            let log = adstore_ingest::DuplicateLog::open(&dir, bytes)
                .map_err(|e| ServerError::Config(format!("cannot open the duplicate log in {}: {e}", dir.display())))?;
            eo.with_duplicate_log(Arc::new(log))
        }
    });
    storage.allowed_lateness_ms = lateness;
    storage.rollups = config.rollup_defs()?;
    storage.retention = config.retention;
    storage.object_store = config.tiering.object_store.clone();
    storage.object_store_timeout_ms = config.tiering.timeout_ms;
    storage.object_cache_bytes = config.tiering.cache_bytes;
    storage.parquet_mirror = config.tiering.parquet_mirror;
    storage.iceberg = config.tiering.iceberg;
    storage.iceberg_warehouse = config.tiering.iceberg_warehouse.clone();
    let store = Store::open(data_dir, storage, SealPipeline::new().with_stage(eo.clone()))?;
    Ok((store, eo))
}

/// Refuses an `ingest.dedupe_expected_keys` whose table would take more
/// than half the machine's memory (`mem_total`, when known): allocating it
/// would abort the process or leave nothing for the head and queries.
fn check_dedupe_fits(config: &DedupeConfig, mem_total: Option<u64>) -> Result<(), ServerError> {
    let needs = config.expected_table_bytes();
    match mem_total {
        Some(total) if needs > total / 2 => Err(ServerError::Config(format!(
            "ingest.dedupe_expected_keys = {} needs {:.1} GB of dedupe table, more than half of this machine's {:.1} GB",
            config.expected_keys,
            needs as f64 / 1e9,
            total as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// The largest dedupe table a client's announcement of a bulk load may
/// size ahead of its keys: the table for `ingest.max_announced_events`,
/// and at most an eighth of `storage.memory_limit`. Keys that do arrive
/// still grow the table past it.
pub fn announced_table_limit(config: &Config) -> u64 {
    let events = DedupeConfig { expected_keys: config.ingest.max_announced_events, ..DedupeConfig::default() };
    // An eighth of the memory budget (storage.memory_limit).
    let memory = crate::memory::limit(&config.storage, mem_total_bytes()) / 8;
    events.expected_table_bytes().min(memory)
}

pub async fn get_rules(State(app): State<Arc<AppState>>) -> Json<AttributionRules> {
    Json((*app.exactly_once.rules()).clone())
}

/// Replaces the rules. The new version must be higher than the current one.
pub async fn put_rules(
    State(app): State<Arc<AppState>>,
    JsonBody(rules): JsonBody<AttributionRules>,
) -> Result<Json<AttributionRules>, ServerError> {
    let current = app.exactly_once.rules();
    if rules.version <= current.version {
        return Err(ServerError::BadRequest(format!(
            "attribution.version must increase: current {}, got {}",
            current.version, rules.version
        )));
    }
    rules.validate().map_err(ServerError::BadRequest)?;
    let bytes = serde_json::to_vec_pretty(&rules).map_err(|e| ServerError::Internal(e.to_string()))?;
    write_atomically(&app.data_dir.join(RULES_FILE), &bytes)?;
    app.exactly_once.set_rules(rules.clone()).map_err(ServerError::BadRequest)?;
    tracing::info!(version = rules.version, "attribution rules changed");
    Ok(Json(rules))
}

/// Measure totals of a time range, recorded before and after a reprocess.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub conversions: u64,
    pub billable_clicks: u64,
    pub attributed_clicks: u64,
    pub attributed_conversions: u64,
    pub invalid: BTreeMap<String, u64>,
    pub spend_micros: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReprocessJob {
    pub id: u64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub reason: String,
    pub rules_version: u32,
    /// `running`, `done`, `failed` or `interrupted`.
    pub status: String,
    pub error: Option<String>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub buckets: usize,
    pub segments_replaced: usize,
    pub totals_before: Option<Totals>,
    pub totals_after: Option<Totals>,
}

/// The job registry.
pub struct Jobs {
    dir: PathBuf,
    jobs: Mutex<BTreeMap<u64, ReprocessJob>>,
}

impl Jobs {
    pub fn open(data_dir: &Path) -> Result<Jobs, ServerError> {
        let dir = data_dir.join("reprocess");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServerError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| ServerError::Internal(e.to_string()))?.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            if let Ok(mut job) = serde_json::from_slice::<ReprocessJob>(&bytes) {
                if job.status == "running" {
                    job.status = "interrupted".into();
                }
                jobs.insert(job.id, job);
            }
        }
        Ok(Jobs { dir, jobs: Mutex::new(jobs) })
    }

    fn save(&self, job: &ReprocessJob) -> Result<(), ServerError> {
        self.jobs.lock().insert(job.id, job.clone());
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| ServerError::Internal(e.to_string()))?;
        write_atomically(&self.dir.join(format!("{}.json", job.id)), &bytes)
    }

    fn next_id(&self) -> u64 {
        self.jobs.lock().keys().next_back().map_or(1, |k| k + 1)
    }

    pub fn get(&self, id: u64) -> Option<ReprocessJob> {
        self.jobs.lock().get(&id).cloned()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprocessRequest {
    /// Start of the range (RFC 3339 or epoch ms), inclusive.
    from: serde_json::Value,
    /// End of the range (RFC 3339 or epoch ms), exclusive.
    to: serde_json::Value,
    reason: Option<String>,
}

fn parse_time(field: &str, v: &serde_json::Value) -> Result<i64, ServerError> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_i64().ok_or_else(|| ServerError::BadRequest(format!("{field}: expected epoch milliseconds")))
        }
        serde_json::Value::String(s) => adstore_ingest::parse_rfc3339_ms(s)
            .map_err(|e| ServerError::BadRequest(format!("{field}: not an RFC 3339 time: {e}"))),
        _ => Err(ServerError::BadRequest(format!("{field}: expected an RFC 3339 string or epoch ms"))),
    }
}

/// Starts a reprocessing job over `[from, to)`; returns it at once (202 semantics, status `running`).
pub async fn start_reprocess(
    State(app): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ReprocessRequest>,
) -> Result<(axum::http::StatusCode, Json<ReprocessJob>), ServerError> {
    let from_ms = parse_time("from", &req.from)?;
    let to_ms = parse_time("to", &req.to)?;
    if from_ms >= to_ms {
        return Err(ServerError::BadRequest("from must be before to".into()));
    }
    // The buckets that hold events: a range of any length, with nothing
    // left out (enumerating every bucket of the range once stopped at
    // 100,000 of them and reported `done`).
    let buckets = app.store.buckets_with_data(from_ms, to_ms);
    let job = ReprocessJob {
        id: app.jobs.next_id(),
        from_ms,
        to_ms,
        reason: req.reason.unwrap_or_default(),
        rules_version: app.exactly_once.rules().version,
        status: "running".into(),
        error: None,
        created_ms: now_ms(),
        finished_ms: None,
        buckets: buckets.len(),
        segments_replaced: 0,
        totals_before: None,
        totals_after: None,
    };
    app.jobs.save(&job)?;
    tracing::info!(id = job.id, from_ms, to_ms, reason = %job.reason, "reprocess job started");
    let worker = app.clone();
    let started = job.clone();
    tokio::task::spawn_blocking(move || run_job(&worker, started, &buckets));
    Ok((axum::http::StatusCode::ACCEPTED, Json(job)))
}

fn run_job(app: &AppState, mut job: ReprocessJob, buckets: &[i64]) {
    let run = || -> Result<(), ServerError> {
        // Totals cover whole buckets: the unit that is re-sealed.
        let width = app.store.config().bucket_width_ms;
        let (lo, hi) =
            (buckets.first().copied().unwrap_or(job.from_ms), buckets.last().map_or(job.to_ms, |b| b + width));
        job.totals_before = Some(totals(&app.store, lo, hi)?);
        app.jobs.save(&job)?;
        let report = app.store.reprocess(buckets, job.id)?;
        job.segments_replaced = report.replaced.len();
        job.totals_after = Some(totals(&app.store, lo, hi)?);
        Ok(())
    };
    // A bug that panics must still end the job as failed, not leave it
    // "running" until a restart.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(ServerError::Internal(format!("reprocess panicked: {}", what.unwrap_or_default())))
    });
    job.finished_ms = Some(now_ms());
    match result {
        Ok(()) => job.status = "done".into(),
        Err(e) => {
            tracing::error!(id = job.id, error = %e, "reprocess job failed");
            job.status = "failed".into();
            job.error = Some(e.to_string());
        }
    }
    if let Err(e) = app.jobs.save(&job) {
        tracing::error!(id = job.id, error = %e, "cannot record reprocess job");
    }
}

pub async fn get_reprocess(
    State(app): State<Arc<AppState>>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<ReprocessJob>, ServerError> {
    app.jobs.get(id).map(Json).ok_or_else(|| ServerError::NotFound(format!("no reprocess job {id}")))
}

/// Measure totals over `[from, to)`, from one consistent snapshot.
pub fn totals(store: &Store, from: i64, to: i64) -> Result<Totals, ServerError> {
    let mut t = Totals::default();
    for batch in store.snapshot().read_events()? {
        for e in batch.events() {
            if e.ts < from || e.ts >= to {
                continue;
            }
            t.events += 1;
            if e.invalid_reason != InvalidReason::Valid {
                *t.invalid.entry(e.invalid_reason.as_str().to_string()).or_default() += 1;
            }
            let sum = |m: Measure| m.of(&e).unwrap_or(0);
            t.impressions += sum(Measure::Impressions) as u64;
            t.clicks += sum(Measure::Clicks) as u64;
            t.conversions += sum(Measure::Conversions) as u64;
            t.billable_clicks += sum(Measure::BillableClicks) as u64;
            t.attributed_conversions += sum(Measure::AttributedConversions) as u64;
            t.spend_micros = t.spend_micros.checked_add(sum(Measure::SpendMicros)).ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "the spend of {} .. {} overflows a 64-bit integer of micros (an event's cost_micros is out of any real range)",
                    adstore_storage::time::format_timestamp(from),
                    adstore_storage::time::format_timestamp(to)
                ))
            })?;
            t.attributed_clicks += u64::from(e.kind == EventType::Click && e.attributed);
        }
    }
    Ok(t)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| ServerError::Internal(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expected_key_count_beyond_half_the_memory_is_refused() {
        let config = |expected_keys| DedupeConfig { expected_keys, ..DedupeConfig::default() };
        let gib = 1u64 << 30;
        // 10M keys take about 213 MB.
        assert!(check_dedupe_fits(&config(10_000_000), Some(gib)).is_ok());
        assert!(check_dedupe_fits(&config(0), Some(1)).is_ok(), "no table up front");
        assert!(check_dedupe_fits(&config(1_000_000_000), None).is_ok(), "unknown memory is not checked");
        let err = check_dedupe_fits(&config(100_000_000), Some(2 * gib)).expect_err("2.1 GB of 2 GiB");
        let text = err.to_string();
        assert!(text.contains("ingest.dedupe_expected_keys = 100000000 needs 2.1 GB"), "{text}");
        assert!(text.contains("2.1 GB"), "{text}");
        assert!(mem_total_bytes().is_some_and(|b| b > gib / 8), "MemTotal read from /proc/meminfo");
    }

    #[test]
    fn the_head_limit_is_a_quarter_of_the_memory_unless_configured() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let limit_of = |toml: &str, dir: &str| {
            let config: Config = toml::from_str(toml).expect("config");
            let (store, _) = open_store(&tmp.path().join(dir), &config).expect("open");
            store.stats().head_limit_bytes
        };
        let memory = mem_total_bytes().expect("MemTotal");
        assert_eq!(limit_of("", "default"), memory / 4);
        assert_eq!(limit_of("[storage]\nmax_head_bytes = 1000000\n", "set"), 1_000_000);
        assert_eq!(limit_of("[storage]\nmax_head_bytes = 0\n", "off"), 0, "0: no limit");
    }
}
