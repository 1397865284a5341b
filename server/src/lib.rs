//! adstore-server: the HTTP API, configuration and the `adstore` CLI.
//!
//! Dependency rule: this crate sits on top; it uses `adstore-storage`,
//! `adstore-ingest` and `adstore-query`, and nothing depends on it but the
//! `adstore` binary.

mod admission;
mod auth;
mod billing;
mod body;
pub mod cli;
mod click;
mod config;
mod console;
pub mod datagen;
mod erasure;
mod error;
mod exactly;
mod extract;
mod http;
mod kafka;
mod memory;
mod metrics;
mod pgwire;
mod ratelimit;
mod reconcile;
mod retention;
mod sql;
mod trace;

pub use config::{Config, HttpConfig, IngestConfig};
pub use error::ServerError;
pub use exactly::{ReprocessJob, Totals, open_store};
pub use http::{AppState, router};
