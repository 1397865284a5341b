//! One handler for every connection: startup (database check, connection
//! permit, cancel registration), the simple and extended query protocols,
//! and the route of each statement (see the module doc).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use adstore_query::Param;
use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    ServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, ErrorHandler, METADATA_DATABASE,
    PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{overloaded, query_error, user_error};
use super::statement::{Kind, Statement};
use super::{DATABASE, catalog, values};
use crate::auth::{Principal, Role};
use crate::http::{AppState, now_ms};

/// The handlers `pgwire` calls, shared by every connection.
struct Handlers {
    app: Arc<AppState>,
    connections: Arc<Semaphore>,
    manager: Arc<ConnectionManager>,
    pids: RandomPidSecretKeyGenerator,
    parser: Arc<Parser>,
}

impl Handlers {
    fn new(app: Arc<AppState>) -> Handlers {
        let connections = Arc::new(Semaphore::new(app.config.server.pg_max_connections));
        Handlers {
            app,
            connections,
            manager: Arc::new(ConnectionManager::new()),
            pids: RandomPidSecretKeyGenerator::default(),
            parser: Arc::new(Parser),
        }
    }

    /// Runs `statement` with `params`, its columns in `format`.
    async fn run(
        &self,
        principal: &Principal,
        statement: &Statement,
        params: Vec<Param>,
        format: &Format,
    ) -> PgWireResult<Response> {
        self.app.metrics.pg_statements.with_label_values(&[statement.kind.as_str()]).inc();
        match statement.kind {
            Kind::Empty => Ok(Response::EmptyQuery),
            Kind::Session => catalog::session(&statement.sql),
            Kind::Catalog => {
                let result = catalog::query(&self.app, &statement.sql)?;
                let fields = values::fields(&result.schema, format);
                let rows = values::rows(result, fields.clone());
                Ok(Response::Query(QueryResponse::new(fields, futures::stream::iter(rows))))
            }
            Kind::Query => {
                let cancel = Arc::new(AtomicBool::new(false));
                // A cancel request drops this future (pgwire selects on it):
                // the guard then tells the blocking query to stop.
                let _stop_on_drop = CancelOnDrop(cancel.clone());
                let app = self.app.clone();
                let turn = app.admission.admit(&app.metrics).await.map_err(overloaded)?;
                let sql = statement.sql.clone();
                let advertisers = principal.row_scope();
                let result = tokio::task::spawn_blocking(move || {
                    // Held until the statement ends, even after a cancel.
                    let _turn = turn;
                    let snapshot = app.store.snapshot();
                    let opts = adstore_query::QueryOptions {
                        cancel: Some(cancel),
                        advertisers,
                        ..app.config.query.options(now_ms())
                    };
                    adstore_query::execute_with(&snapshot, &sql, &params, &opts)
                })
                .await
                .map_err(|e| PgWireError::ApiError(format!("query task failed: {e}").into()))?
                .map_err(|e| query_error(e, &statement.sql))?;
                let fields = values::fields(&result.schema, format);
                let rows = values::rows(result, fields.clone());
                Ok(Response::Query(QueryResponse::new(fields, futures::stream::iter(rows))))
            }
        }
    }

    /// The columns `statement` answers with, bound to `params` if given.
    fn describe(&self, statement: &Statement, params: &[Param], format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        match statement.kind {
            Kind::Empty | Kind::Session => Ok(catalog::session_columns(&statement.sql, format)),
            Kind::Catalog => {
                let result = catalog::query(&self.app, &statement.sql)?;
                Ok(values::fields(&result.schema, format).to_vec())
            }
            Kind::Query => {
                let opts = self.app.config.query.options(now_ms());
                let schema = adstore_query::describe(&statement.sql, params, &opts)
                    .map_err(|e| query_error(e, &statement.sql))?;
                Ok(values::fields(&schema, format).to_vec())
            }
        }
    }
}

/// Sets the flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The connection's permit of `pg_max_connections`, released (and the
/// connection gauge lowered) when the connection ends.
struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl ConnectionPermit {
    fn new(permit: OwnedSemaphorePermit, gauge: &prometheus::IntGauge) -> ConnectionPermit {
        gauge.inc();
        ConnectionPermit { _permit: permit, gauge: gauge.clone() }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[async_trait]
impl StartupHandler for Handlers {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let database = client.metadata().get(METADATA_DATABASE).cloned().unwrap_or_default();
                if database != DATABASE {
                    return Err(fatal(
                        "3D000",
                        format!("database {database:?} does not exist; the database is {DATABASE:?}"),
                    ));
                }
                let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                    return Err(fatal(
                        "53300",
                        format!(
                            "too many connections: all {} are in use (server.pg_max_connections)",
                            self.app.config.server.pg_max_connections
                        ),
                    ));
                };
                client
                    .session_extensions()
                    .insert(Arc::new(ConnectionPermit::new(permit, &self.app.metrics.pg_connections)));
                if !self.app.auth.enforced() {
                    return self.admit(client, Principal::open()).await;
                }
                // The password is the token (docs/security.md).
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                if !matches!(client.state(), PgWireConnectionState::AuthenticationInProgress) {
                    return Err(fatal("08P01", "a password message outside authentication".into()));
                }
                let token = message.into_password()?.password;
                let principal = match self.app.auth.authenticate(Some(token)).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.app.metrics.auth_failures.with_label_values(&["invalid"]).inc();
                        let reason = match e {
                            crate::error::ServerError::Unauthorized(reason) => reason,
                            other => other.message(),
                        };
                        return Err(fatal("28P01", format!("password authentication failed: {reason}")));
                    }
                };
                if principal.role == Role::Ingest {
                    self.app.metrics.auth_failures.with_label_values(&["forbidden"]).inc();
                    return Err(fatal(
                        "28000",
                        "an ingest token cannot query: connect with a query or admin token".into(),
                    ));
                }
                self.admit(client, principal).await
            }
            _ => Ok(()),
        }
    }
}

impl Handlers {
    /// Ends the startup of an authenticated connection: its principal, its
    /// cancel key, and ready for queries.
    async fn admit<C>(&self, client: &mut C, principal: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.session_extensions().insert(principal);
        let (pid, secret_key) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret_key.clone());
        let (handle, guard) = self.manager.register(pid, secret_key);
        client.session_extensions().insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert(Arc::new(guard));
        finish_authentication(client, &Parameters).await
    }
}

/// The principal a connection authenticated as (none before startup ends:
/// then nothing is allowed).
fn principal_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Principal>> {
    client
        .session_extensions()
        .get::<Principal>()
        .ok_or_else(|| fatal("28000", "the connection is not authenticated".into()))
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".to_owned(), code.to_owned(), message)))
}

/// The `ParameterStatus` values sent at startup.
struct Parameters;

impl ServerParameterProvider for Parameters {
    fn server_parameters<C: ClientInfo>(&self, _client: &C) -> Option<HashMap<String, String>> {
        Some(catalog::STARTUP_PARAMETERS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = Statement::new(query);
        if statement.placeholders > 0 {
            return Err(user_error(
                "08P01",
                format!(
                    "the statement has ${} placeholders but the simple query protocol sends no values",
                    statement.placeholders
                ),
            ));
        }
        let principal = principal_of(client)?;
        Ok(vec![self.run(&principal, &statement, Vec::new(), &Format::UnifiedText).await?])
    }
}

/// Parse: classifies the statement (it is bound and checked at Describe
/// or Execute, when its parameters are known).
pub(super) struct Parser;

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statement = Statement::new(sql);
        Ok((statement.kind != Kind::Empty).then_some(statement))
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(vec![Type::UNKNOWN; statement.placeholders])
    }

    fn get_result_schema(&self, _statement: &Statement, _format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        // Describe is answered by `do_describe_*` below, which know the store.
        Ok(Vec::new())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Statement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = values::params(portal)?;
        let principal = principal_of(client)?;
        self.run(&principal, &portal.statement.statement, params, &portal.result_column_format).await
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &target.statement;
        let count = statement.placeholders.max(target.parameter_types.len());
        let types =
            (0..count).map(|i| target.parameter_types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN)).collect();
        // Before Bind the parameters have no values: they describe as NULL.
        let fields = self.describe(statement, &[], &Format::UnifiedBinary)?;
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = values::params(portal)?;
        let fields = self.describe(&portal.statement.statement, &params, &portal.result_column_format)?;
        Ok(DescribePortalResponse::new(fields))
    }
}

/// What `pgwire` asks each connection's handlers of.
pub(super) struct Factory {
    handlers: Arc<Handlers>,
    cancel: Arc<DefaultCancelHandler>,
    errors: Arc<Errors>,
}

impl Factory {
    pub(super) fn new(app: Arc<AppState>) -> Factory {
        let errors = Arc::new(Errors(app.clone()));
        let handlers = Arc::new(Handlers::new(app));
        let cancel = Arc::new(DefaultCancelHandler::new(handlers.manager.clone()));
        Factory { handlers, cancel, errors }
    }
}

/// Counts every error sent, by SQLSTATE.
struct Errors(Arc<AppState>);

impl ErrorHandler for Errors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        let code = match error {
            PgWireError::UserError(info) => info.code.as_str(),
            PgWireError::QueryCanceled => "57014",
            _ => "other",
        };
        self.0.metrics.pg_errors.with_label_values(&[code]).inc();
    }
}

impl PgWireServerHandlers for Factory {
    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        self.errors.clone()
    }

    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handlers.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handlers.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handlers.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}
