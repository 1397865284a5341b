//! The PostgreSQL wire protocol, so that psql, Grafana's PostgreSQL data
//! source, BI tools and drivers talk to the store as they would to
//! PostgreSQL. The protocol itself (startup, `SSLRequest` answered `N`,
//! simple and extended queries, portals, cancel requests) is the `pgwire`
//! crate's; this module decides what each statement means.
//!
//! ```text
//!  TCP on [server] pg_listen (127.0.0.1:5433) ─► pgwire: startup, database "adstore",
//!     │   one permit of [server] pg_max_connections per connection
//!     ▼
//!  statement.rs: what kind of statement (one tokenizer pass)
//!     ├─ empty (`;`, `-- ping`)                  ─► EmptyQueryResponse
//!     ├─ SET / BEGIN / COMMIT / SHOW …            ─► catalog.rs (session: nothing to change)
//!     ├─ catalog probes (information_schema, current_setting(), version() …)
//!     │                                           ─► catalog.rs (answered from the schema)
//!     └─ everything else ─► blocking pool: adstore_query::execute_with ($n bound as values)
//!                           ─► values.rs: Arrow → RowDescription + DataRow (text or binary)
//! ```
//!
//! Errors carry the HTTP API's message, a SQLSTATE and the position
//! (`error.rs`); the connection stays usable after one. A cancel request,
//! or a client that goes away, sets the running query's cancel flag and it
//! stops before its next block.

mod catalog;
mod error;
mod session;
mod statement;
mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::error::ServerError;
use crate::http::AppState;

/// What `pg_listen` names to turn the protocol off.
pub const PG_LISTEN_OFF: &str = "off";

/// The database name clients connect to.
pub const DATABASE: &str = "adstore";

/// A bound PostgreSQL listener, not yet serving.
pub struct PgListener {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl PgListener {
    /// Binds `addr` (`host:port`; port 0 picks a free one).
    pub async fn bind(addr: &str) -> Result<PgListener, ServerError> {
        let bind_error = |source: std::io::Error| ServerError::Bind {
            addr: format!("{addr} for the PostgreSQL protocol (--pg-listen ADDR, or --pg-listen off)"),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(PgListener { listener, addr })
    }

    /// Serves connections until `shutdown` resolves; connections still open
    /// then end with the runtime.
    pub async fn serve(self, app: Arc<AppState>, shutdown: impl Future<Output = ()>) {
        let handlers = Arc::new(session::Factory::new(app));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = handlers.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(error = %e, "pg connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors, or a connection reset before it
                // was accepted: wait a little rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "pg accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
