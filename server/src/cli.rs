//! The `adstore` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use adstore_storage::{SealPipeline, Store};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::error::ServerError;
use crate::http::{AppState, HttpCounters, router};

#[derive(Parser)]
#[command(name = "adstore", version, about = "Columnar time-series store for advertising metrics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store: HTTP API on --listen, data in --data-dir.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, default_value = "./adstore-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adstore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn serve(args: ServeArgs) -> Result<(), ServerError> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let store = Store::open(&args.data_dir, config.storage.clone(), SealPipeline::new())?;
    store.start_sealer()?;
    let snapshot = store.snapshot();
    let newest = snapshot
        .segments
        .iter()
        .map(|s| s.meta.max_ts)
        .chain(snapshot.head.iter().flat_map(|(_, c)| c.batch.ts().iter().copied()))
        .max()
        .unwrap_or(i64::MIN);
    drop(snapshot);
    let state = Arc::new(AppState {
        store: store.clone(),
        config,
        newest_ts_ms: AtomicI64::new(newest),
        counters: HttpCounters::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: args.listen.clone(), source })?;
        let local: SocketAddr =
            listener.local_addr().map_err(|source| ServerError::Bind { addr: args.listen.clone(), source })?;
        tracing::info!(addr = %local, data_dir = %args.data_dir.display(), "adstore listening");
        // Tests and scripts read this line to find an ephemeral port.
        println!("listening on http://{local}");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| ServerError::Internal(format!("server error: {e}")))
    })?;
    tracing::info!("shutting down: finishing in-flight requests and syncing the WAL");
    store.close()?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
