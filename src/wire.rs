//! `tunelake serve-sql`: the lake's tables over the PostgreSQL wire protocol, so psql,
//! DBeaver, Power BI (Npgsql) and any Postgres driver can query `gold.*` and `silver.*`. The
//! protocol and the `pg_catalog` that clients read on connect are datafusion-postgres's (on
//! pgwire); tunelake adds what a warehouse endpoint needs: read-only statements (a write is
//! refused with SQLSTATE 25006, never run), a password from `TUNELAKE_SQL_PASSWORD` (without one,
//! loopback only), TLS when a certificate is given, the query memory and time bounds of
//! `[settings]`, and tables kept at their latest versions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::Portal;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::{DfSessionService, QueryHook, ServerOptions};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::lake::Lake;

/// How often the tables are brought to their latest versions.
const REFRESH: Duration = Duration::from_secs(30);

/// How the endpoint is served.
pub struct Options {
    /// Where to listen, `host:port`.
    pub listen: String,
    /// The password every user must give; `None`: any user, loopback only.
    pub password: Option<String>,
    /// A PEM certificate and PKCS#8 key, for TLS.
    pub tls: Option<(String, String)>,
    /// Bytes a query's operators may hold.
    pub memory: usize,
    /// How long a statement may run, its rows sent included.
    pub time: Duration,
    /// Connections at once (0: no limit).
    pub max_connections: usize,
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(lake: Lake, options: Options) -> Result<()> {
    let bad = |message: String| Error::BadArgument {
        what: "serve-sql".to_string(),
        message,
    };
    let address: SocketAddr = options
        .listen
        .parse()
        .map_err(|e| bad(format!("--listen {:?}: {e}", options.listen)))?;
    if options.password.is_none() && !address.ip().is_loopback() {
        return Err(bad(format!(
            "--listen {address}: without TUNELAKE_SQL_PASSWORD the endpoint listens on loopback only"
        )));
    }
    // datafusion-postgres serves in clear when it cannot read the certificate: refuse to
    // start instead.
    if let Some((cert, key)) = &options.tls {
        for (file, marker) in [
            (cert, "-----BEGIN CERTIFICATE-----"),
            (key, "PRIVATE KEY-----"),
        ] {
            let text =
                std::fs::read_to_string(file).map_err(|e| bad(format!("TLS file {file}: {e}")))?;
            if !text.contains(marker) {
                return Err(bad(format!("TLS file {file} is not PEM (no {marker})")));
            }
        }
    }
    let ctx = Arc::new(crate::query::session_within(&lake, Some(options.memory)).await?);
    datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
        &ctx,
        "datafusion",
        datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
    )
    .map_err(|e| bad(format!("the pg_catalog could not be set up: {e}")))?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let session = Arc::new(Bounded {
        inner: Arc::new(DfSessionService::new_with_hooks(ctx.clone(), hooks)),
        time: options.time,
    });
    let connections = Arc::new(ConnectionManager::new());
    let server = ServerOptions::new()
        .with_host(address.ip().to_string())
        .with_port(address.port())
        .with_max_connections(options.max_connections)
        .with_tls_cert_path(options.tls.as_ref().map(|t| t.0.clone()))
        .with_tls_key_path(options.tls.as_ref().map(|t| t.1.clone()));
    let refresher = tokio::spawn(keep_current(lake, ctx));
    info!(%address, password = options.password.is_some(), tls = options.tls.is_some(), "serve-sql is listening.");
    let served = match options.password {
        Some(password) => {
            let startup = CleartextPasswordAuthStartupHandler::new(
                Secret(password),
                DefaultServerParameterProvider::default(),
            )
            .with_connection_manager(connections.clone());
            run(Handlers::new(session, startup, connections), &server).await
        }
        None => {
            let startup = Open(connections.clone());
            run(Handlers::new(session, startup, connections), &server).await
        }
    };
    refresher.abort();
    served
}

async fn run<S: StartupHandler + 'static>(
    handlers: Handlers<S>,
    server: &ServerOptions,
) -> Result<()> {
    let serving = datafusion_postgres::serve_with_handlers(Arc::new(handlers), server);
    tokio::select! {
        result = serving => result.map_err(|e| Error::io(format!("{}:{}", server.host(), server.port()), e)),
        _ = crate::functions::shutdown_signal() => Ok(()),
    }
}

/// Brings every table to its latest version now and then, so a long-lived endpoint serves
/// what the pipeline wrote since it started.
async fn keep_current(lake: Lake, ctx: Arc<SessionContext>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        if let Err(e) = crate::query::refresh(&lake, &ctx).await {
            warn!(error = %e, "The tables could not be refreshed; serving the versions loaded before.");
        }
    }
}

/// The handlers of one server: datafusion-postgres's query handling within the time bound,
/// our startup.
struct Handlers<S> {
    session: Arc<Bounded>,
    startup: Arc<S>,
    cancel: Arc<DefaultCancelHandler>,
}

impl<S> Handlers<S> {
    fn new(session: Arc<Bounded>, startup: S, connections: Arc<ConnectionManager>) -> Self {
        Handlers {
            session,
            startup: Arc::new(startup),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

/// datafusion-postgres's query handling, each statement stopped once it has run for `time`
/// (planning and every row sent), with SQLSTATE 57014 as Postgres's `statement_timeout` does.
struct Bounded {
    inner: Arc<DfSessionService>,
    time: Duration,
}

fn timed_out(time: Duration) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        "57014".to_string(),
        format!(
            "canceling statement after {} s (settings.query_timeout_seconds)",
            time.as_secs()
        ),
    )))
}

impl Bounded {
    /// The response with its rows cut off at `deadline`.
    fn until(&self, response: Response, deadline: tokio::time::Instant) -> Response {
        use futures::StreamExt;
        let Response::Query(mut query) = response else {
            return response;
        };
        let time = self.time;
        let rows = std::mem::replace(query.data_rows(), Box::pin(futures::stream::empty()));
        let bounded = futures::stream::unfold((rows, false), move |(mut rows, over)| async move {
            if over {
                return None;
            }
            match tokio::time::timeout_at(deadline, rows.next()).await {
                Ok(Some(row)) => Some((row, (rows, false))),
                Ok(None) => None,
                Err(_) => Some((Err(timed_out(time)), (rows, true))),
            }
        });
        *query.data_rows() = Box::pin(bounded);
        Response::Query(query)
    }
}

#[async_trait]
impl SimpleQueryHandler for Bounded {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.time;
        let planned = SimpleQueryHandler::do_query(self.inner.as_ref(), client, query);
        let responses = tokio::time::timeout_at(deadline, planned)
            .await
            .map_err(|_| timed_out(self.time))??;
        Ok(responses
            .into_iter()
            .map(|r| self.until(r, deadline))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Bounded {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let deadline = tokio::time::Instant::now() + self.time;
        let planned = ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows);
        let response = tokio::time::timeout_at(deadline, planned)
            .await
            .map_err(|_| timed_out(self.time))??;
        Ok(self.until(response, deadline))
    }
}

impl<S: StartupHandler + 'static> PgWireServerHandlers for Handlers<S> {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// No password: any user (loopback only, see [`serve`]).
struct Open(Arc<ConnectionManager>);

#[async_trait]
impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.0.clone())
    }
}

/// The one password, whatever the user.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[async_trait]
impl AuthSource for Secret {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(None, self.0.as_bytes().to_vec()))
    }
}

/// Refuses every statement that would write, before it is planned.
struct ReadOnly;

impl ReadOnly {
    fn refusal(statement: &Statement) -> Option<PgWireError> {
        let writes = matches!(
            statement,
            Statement::Insert(_)
                | Statement::Update { .. }
                | Statement::Delete(_)
                | Statement::Merge { .. }
                | Statement::CreateTable(_)
                | Statement::CreateView { .. }
                | Statement::CreateSchema { .. }
                | Statement::CreateDatabase { .. }
                | Statement::CreateIndex(_)
                | Statement::CreateVirtualTable { .. }
                | Statement::CreateFunction(_)
                | Statement::AlterTable { .. }
                | Statement::Drop { .. }
                | Statement::Truncate { .. }
                | Statement::Copy { .. }
                | Statement::Grant { .. }
                | Statement::Revoke { .. }
        );
        writes.then(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_string(),
                "25006".to_string(),
                "tunelake serve-sql is read-only: only queries run (the pipeline writes the lake)"
                    .to_string(),
            )))
        })
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::refusal(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        Self::refusal(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::refusal(statement).map(Err)
    }
}
