//! `adstore serve`: open the store, optionally load demo data, serve HTTP
//! until SIGINT/SIGTERM.
//!
//! Shutdown order: the signal stops the listener; in-flight requests run to
//! completion (each returns only after its WAL fsync); then the store stops
//! its sealer and fsyncs the WAL, and the process exits 0. Events still in
//! the head are replayed from the WAL at the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::time::Instant;

use adstore_ingest::ExactlyOnce;
use adstore_ingest::{ParseOptions, parse_ndjson};
use adstore_storage::{StorageError, Store};

use crate::config::Config;
use crate::datagen::{GenConfig, Generator};
use crate::error::ServerError;
use crate::http::{AppState, HttpCounters, now_ms, router};
use crate::pgwire::{PG_LISTEN_OFF, PgListener};

/// Ingest body buffers kept between requests: enough for a few requests in
/// flight, raw and decompressed, each up to 16 MiB (about 40,000 NDJSON
/// events). At most 128 MiB sit idle.
const BODY_BUFFERS_KEPT: usize = 8;
const BODY_BUFFER_MAX_KEPT_BYTES: usize = 16 << 20;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, default_value = "./adstore-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the "listening on" line says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where the PostgreSQL wire protocol listens, or `off` (default:
    /// `[server] pg_listen`, 127.0.0.1:5433).
    #[arg(long)]
    pg_listen: Option<String>,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// If the data directory is empty, first load a day of synthetic events ending now.
    #[arg(long)]
    demo: bool,
    /// Number of events --demo loads.
    #[arg(long, default_value_t = 500_000, requires = "demo")]
    demo_events: u64,
    /// Check no tokens, even if some exist, and allow listening beyond
    /// loopback without any (for a network you trust; see docs/security.md).
    #[arg(long)]
    insecure_no_auth: bool,
}

pub fn run(args: ServeArgs) -> Result<ExitCode, ServerError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(pg_listen) = &args.pg_listen {
        config.server.pg_listen.clone_from(pg_listen);
    }
    let auth = crate::auth::Auth::new(
        crate::auth::tokens::TokenStore::open(&args.data_dir)?,
        crate::auth::signing::SigningKeys::open(&args.data_dir)?,
        args.insecure_no_auth,
    );
    let mut listens = vec![("--listen", args.listen.as_str())];
    if config.server.pg_listen != PG_LISTEN_OFF {
        listens.push(("pg_listen", config.server.pg_listen.as_str()));
    }
    crate::auth::check_listen(&auth, &listens)?;
    if args.insecure_no_auth {
        tracing::warn!(
            "--insecure-no-auth: no call is checked, existing tokens included (a query token sees every \
             advertiser); anyone who can reach the ports can do everything"
        );
    } else if !auth.enforced() {
        tracing::warn!(
            "no access token exists: the server listens on loopback only and anyone on this machine can do \
             everything; create tokens with `adstore token create` (docs/security.md)"
        );
    }
    let was_empty = dir_is_empty(&args.data_dir)?;
    let (store, exactly_once) = crate::exactly::open_store(&args.data_dir, &config)?;
    if args.demo {
        if was_empty {
            load_demo(&store, &exactly_once, args.demo_events)?;
        } else {
            tracing::info!(data_dir = %args.data_dir.display(), "--demo: data directory is not empty, loading nothing");
        }
    }
    store.start_sealer()?;
    let snapshot = store.snapshot();
    let newest = snapshot
        .segments
        .iter()
        .map(|s| s.meta.max_ts)
        .chain(snapshot.head.iter().flat_map(|(_, c)| c.ts()))
        .max()
        .unwrap_or(i64::MIN);
    drop(snapshot);
    let rate_limiter = crate::ratelimit::RateLimiter::new(config.ingest.max_events_per_second_per_publisher);
    let dedupe_announced_max_bytes = crate::exactly::announced_table_limit(&config);
    let admission = config.query.admission();
    let memory =
        crate::memory::MemoryGuard::new(crate::memory::limit(&config.storage, crate::memory::mem_total_bytes()));
    let state = Arc::new(AppState {
        store: store.clone(),
        config,
        data_dir: args.data_dir.clone(),
        exactly_once,
        jobs: crate::exactly::Jobs::open(&args.data_dir)?,
        rate_limiter,
        newest_ts_ms: AtomicI64::new(newest),
        counters: HttpCounters::default(),
        metrics: crate::metrics::HttpMetrics::new()
            .map_err(|e| ServerError::Internal(format!("cannot define the HTTP metrics: {e}")))?,
        body_buffers: adstore_storage::BufferPool::new(BODY_BUFFERS_KEPT, BODY_BUFFER_MAX_KEPT_BYTES),
        dedupe_announced_max_bytes,
        parsing: AtomicUsize::new(0),
        admission,
        auth: Arc::new(auth),
        memory,
        clicks: std::sync::OnceLock::new(),
        kafka: crate::kafka::Sources::default(),
    });
    let _ = state.clicks.set(crate::click::start_writer(Arc::downgrade(&state))?);
    crate::kafka::Sources::start(&state)?;
    let sources = state.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Internal(format!("cannot start the async runtime: {e}")))?;
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let pg = match state.config.server.pg_listen.as_str() {
            PG_LISTEN_OFF => None,
            addr => Some(PgListener::bind(addr).await?),
        };
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: args.listen.clone(), source })?;
        let local: SocketAddr =
            listener.local_addr().map_err(|source| ServerError::Bind { addr: args.listen.clone(), source })?;
        tracing::info!(addr = %local, data_dir = %args.data_dir.display(), "adstore listening");
        // Tests and scripts read these lines to find ephemeral ports.
        println!("listening on http://{local}");
        let (stop_pg, pg_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(pg) = pg {
            tracing::info!(addr = %pg.addr, "PostgreSQL protocol listening");
            println!("listening on postgresql://{}/{}", pg.addr, crate::pgwire::DATABASE);
            tokio::spawn(pg.serve(state.clone(), async {
                let _ = pg_stopped.await;
            }));
        }
        // The peer address is the click redirect's `ip_hash`.
        let served = axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServerError::Internal(format!("server error: {e}")));
        let _ = stop_pg.send(());
        served
    });
    tracing::info!("shutting down: in-flight requests finished, syncing the WAL");
    // They store what they hold before the store closes.
    sources.kafka.stop();
    drop(sources);
    // Close even if serving failed, so the WAL is synced either way.
    let closed = store.close();
    served?;
    closed?;
    tracing::info!("shutdown complete");
    Ok(ExitCode::SUCCESS)
}

/// True if `dir` is missing or has no entries.
fn dir_is_empty(dir: &Path) -> Result<bool, ServerError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(ServerError::Io { path: dir.display().to_string(), source }),
    }
}

/// Loads `events` generated events spread over the day before now, through
/// the same parser as HTTP ingest, in backfill mode.
fn load_demo(store: &Store, exactly_once: &ExactlyOnce, events: u64) -> Result<(), ServerError> {
    const CHUNK: usize = 50_000;
    let started = Instant::now();
    let span_ms = 86_400_000;
    let now = now_ms();
    // End the stream that far back that its trailing clicks and
    // conversions land before now, not in the future.
    let start_ms = now - span_ms - crate::datagen::MAX_TRAIL_MS;
    let cfg = GenConfig { events, start_ms, span_ms, ..GenConfig::default() };
    let opts = ParseOptions { now_ms: now, ..ParseOptions::default() };
    let mut generator = Generator::new(cfg);
    let mut body = Vec::with_capacity(CHUNK * 400);
    let mut loaded = 0;
    loop {
        body.clear();
        if generator.write_ndjson_chunk(CHUNK, &mut body) == 0 {
            break;
        }
        let outcome = parse_ndjson(&body, &opts);
        if let Some(e) = outcome.errors.first() {
            return Err(ServerError::Internal(format!("demo data rejected at line {}: {}", e.line, e.reason)));
        }
        // The sealer is not running yet: seal here when the head is full.
        loaded += match exactly_once.ingest_all(store, &outcome.batches) {
            Err(StorageError::HeadFull { .. }) => {
                store.seal_all()?;
                exactly_once.ingest_all(store, &outcome.batches)?.accepted
            }
            other => other?.accepted,
        };
    }
    tracing::info!(events = loaded, elapsed_ms = started.elapsed().as_millis() as u64, "demo data loaded");
    Ok(())
}

/// Installs the SIGINT/SIGTERM handlers now (so a signal that comes right
/// after the "listening on" line is not lost to the default action, which
/// would kill the process) and returns the future that resolves on one.
/// Must be called inside the runtime.
fn shutdown_signal() -> Result<impl Future<Output = ()>, ServerError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| ServerError::Internal(format!("cannot install a signal handler: {e}")))
        };
        let mut term = install(SignalKind::terminate())?;
        let mut int = install(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("signal received: no longer accepting connections");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("signal received: no longer accepting connections");
        })
    }
}
