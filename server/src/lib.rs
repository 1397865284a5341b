//! adstore-server: the HTTP API, configuration and the `adstore` CLI.
//!
//! Dependency rule: this crate sits on top; it uses `adstore-storage`,
//! `adstore-ingest` and `adstore-query`, and nothing depends on it but the
//! `adstore` binary.

pub mod cli;
mod config;
pub mod datagen;
mod error;
mod http;
mod sql;

pub use config::{Config, HttpConfig, IngestConfig};
pub use error::ServerError;
pub use http::{AppState, router};
