//! The PostgreSQL wire protocol, for `psql`, Grafana's PostgreSQL data
//! source and BI tools. The password is a pathflow token (the user name is
//! free text); every query then runs through [`Engine`] as that token's
//! principal, so it meets the same refusals, scope, limits, audit log and
//! metrics as one sent over [`crate::http`].
//!
//! pgwire speaks the protocol; this module supplies what is pathflow's: a
//! startup handler that checks the presented password against the token
//! hashes, handlers for the simple and extended (Parse/Bind/Describe/
//! Execute) query protocols that hand SQL to the engine, and answers to the
//! session chatter clients send that is not a query (`SET`, `SHOW`,
//! `BEGIN`/`COMMIT`/`ROLLBACK`, `DISCARD`, ...). Those answers are made from
//! constants here and never executed; everything else, DDL, DML and `COPY`
//! included, goes to the engine, which refuses what is not a query. Results
//! are encoded by arrow-pg. There is no TLS: put a TLS proxy in front, or
//! keep the listener on a private network.
//!
//! psql's `\d` commands and clients' catalog browsers query `pg_catalog`:
//! such a query is first rewritten by `datafusion_pg_catalog`'s
//! compatibility parser (Postgres operators, casts and collations DataFusion
//! lacks), and its session gets a `pg_catalog` built over the principal's
//! own tables ([`Engine::session_for`]), so it lists nothing the principal
//! cannot query.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast::{Reset, Set, Statement as SqlStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser as SqlParser;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    METADATA_APPLICATION_NAME, METADATA_USER, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::{Authentication, ParameterStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;

use crate::auth::Principal;
use crate::engine::{Engine, Interface, QueryOutput};
use crate::error::QueryError;

/// What the server says it is. Clients read the leading number (libpq,
/// pgjdbc and pgx all accept a suffix, as Debian's own builds have one).
const SERVER_VERSION: &str = "16.6 (pathflow)";
const SERVER_VERSION_NUM: &str = "160006";

/// Serves the PostgreSQL wire protocol on `listener` until `shutdown`
/// completes; then stops accepting and closes open connections (a query
/// running on one is cancelled).
pub async fn serve_pg(engine: Arc<Engine>, listener: TcpListener, shutdown: impl Future) {
    let server = Arc::new(PgServer::new(engine));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let server = Arc::clone(&server);
                    connections.spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, server).await {
                            eprintln!("serve: postgres connection from {peer}: {e}");
                        }
                    });
                }
                // Out of file descriptors, say: wait rather than spin.
                Err(e) => {
                    eprintln!("serve: cannot accept a postgres connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    eprintln!("serve: a postgres connection ended abnormally: {e}");
                }
            }
        }
    }
    connections.shutdown().await;
}

/// The handlers every connection shares; per-connection state (the
/// principal, settings, prepared statements) lives on the connection.
struct PgServer {
    startup: Arc<TokenStartup>,
    queries: Arc<PgQueries>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgServer {
    fn new(engine: Arc<Engine>) -> Self {
        let connections = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_string();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        PgServer {
            startup: Arc::new(TokenStartup {
                engine: Arc::clone(&engine),
                parameters,
                connections: Arc::clone(&connections),
                pids: RandomPidSecretKeyGenerator::default(),
            }),
            queries: Arc::new(PgQueries {
                engine: Arc::clone(&engine),
                parser: Arc::new(PgParser { engine }),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for PgServer {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// The principal a connection authenticated as, kept on the connection.
struct Authenticated(Principal);

/// Cleartext password authentication against the token hashes.
///
/// pgwire's own cleartext handler compares with a password an `AuthSource`
/// returns, which would need the token itself; only its hash is configured,
/// so the presented password is verified instead. The message flow is the
/// same: `AuthenticationCleartextPassword`, then `AuthenticationOk`, the
/// server parameters, `BackendKeyData` and `ReadyForQuery`.
struct TokenStartup {
    engine: Arc<Engine>,
    parameters: DefaultServerParameterProvider,
    connections: Arc<ConnectionManager>,
    pids: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let password = message.into_password()?.password;
                let user = client.metadata().get(METADATA_USER).cloned();
                let principal = self
                    .engine
                    .authenticate(&password, Interface::Postgres)
                    .ok_or_else(|| bad_password(user.as_deref()))?;
                client.session_extensions().insert(Authenticated(principal));
                // Registered so a CancelRequest (psql's Ctrl-C) can find
                // the connection's running query.
                let (pid, secret_key) = self.pids.generate(&*client);
                client.set_pid_and_secret_key(pid, secret_key.clone());
                let (handle, guard) = self.connections.register(pid, secret_key);
                client
                    .session_extensions()
                    .insert::<Arc<ConnectionHandle>>(handle);
                client.session_extensions().insert::<ConnectionGuard>(guard);
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// FATAL, so pgwire closes the connection after sending it.
fn bad_password(user: Option<&str>) -> PgWireError {
    let mut info = ErrorInfo::new(
        "FATAL".into(),
        "28P01".into(),
        format!(
            "password authentication failed for user \"{}\": use a pathflow token as the \
             password",
            user.unwrap_or("")
        ),
    );
    info.hint = Some(
        "the password is the same secret as the HTTP API's bearer token; the user name can be \
         anything"
            .into(),
    );
    PgWireError::UserError(Box::new(info))
}

fn principal<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Principal> {
    // Fail closed: pgwire routes messages by connection state, and a
    // connection without a principal never gets to run anything.
    client
        .session_extensions()
        .get::<Authenticated>()
        .map(|a| a.0.clone())
        .ok_or_else(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the connection has not authenticated: use a pathflow token as the password".into(),
            )))
        })
}

/// Statements clients send that are not queries, answered from constants
/// here. None of them reads or changes anything but the connection's own
/// display settings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shortcut {
    /// Accepted; the named display setting is kept for the connection, any
    /// other setting is ignored (the server's limits are not the client's
    /// to change).
    Set(Option<(String, String)>),
    /// The lower-case name, words joined by one space.
    Show(String),
    Begin,
    Commit,
    Rollback,
    /// Forget kept settings: one, or all.
    Reset(Option<String>),
    /// Drop a prepared statement: one, or (`None`) all.
    Deallocate(Option<String>),
    /// Accepted and answered with this command tag, nothing else.
    Tag(String),
}

/// The display settings a connection may change (they steer arrow-pg's
/// text encoding), and `application_name`.
const KEPT_SETTINGS: [&str; 5] = [
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "bytea_output",
    "application_name",
];

/// How `sql` is answered. A parse failure is the engine's to report.
#[derive(Debug, PartialEq, Eq)]
enum Classified {
    /// Only comments or semicolons.
    Empty,
    Shortcuts(Vec<Shortcut>),
    /// Anything else, as a whole (several statements are the engine's to
    /// refuse, even if some are shortcuts).
    Query,
}

/// `sql` as DataFusion can plan it: a query naming `pg_catalog` (psql's
/// `\d`, catalog browsers) through the compatibility parser's rewrites;
/// any other query as sent.
fn compatible(sql: &str) -> Cow<'_, str> {
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
    if !crate::guard::mentions_pg_catalog(sql) {
        return Cow::Borrowed(sql);
    }
    static PARSER: OnceLock<PostgresCompatibilityParser> = OnceLock::new();
    match PARSER
        .get_or_init(PostgresCompatibilityParser::new)
        .parse(sql)
    {
        Ok(statements) if statements.len() == 1 => Cow::Owned(statements[0].to_string()),
        // The engine reports what is wrong with it.
        _ => Cow::Borrowed(sql),
    }
}

fn classify(sql: &str) -> Classified {
    match SqlParser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) if statements.is_empty() => Classified::Empty,
        Ok(statements) => statements
            .iter()
            .map(shortcut)
            .collect::<Option<Vec<_>>>()
            .map_or(Classified::Query, Classified::Shortcuts),
        Err(_) => Classified::Query,
    }
}

fn shortcut(statement: &SqlStatement) -> Option<Shortcut> {
    Some(match statement {
        SqlStatement::Set(set) => Shortcut::Set(kept_setting(set)),
        SqlStatement::ShowVariable { variable } => Shortcut::Show(
            variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        // A BEGIN ... END block holds statements: not a shortcut.
        SqlStatement::StartTransaction {
            statements,
            exception,
            has_end_keyword,
            ..
        } if statements.is_empty() && exception.is_none() && !has_end_keyword => Shortcut::Begin,
        SqlStatement::Commit { .. } => Shortcut::Commit,
        SqlStatement::Rollback {
            savepoint: None, ..
        } => Shortcut::Rollback,
        SqlStatement::Rollback {
            savepoint: Some(_), ..
        } => Shortcut::Tag("ROLLBACK".into()),
        SqlStatement::Savepoint { .. } => Shortcut::Tag("SAVEPOINT".into()),
        SqlStatement::ReleaseSavepoint { .. } => Shortcut::Tag("RELEASE".into()),
        SqlStatement::Discard { object_type } => Shortcut::Tag(format!("DISCARD {object_type}")),
        SqlStatement::Reset(reset) => Shortcut::Reset(match &reset.reset {
            Reset::ALL => None,
            Reset::ConfigurationParameter(name) => Some(name.to_string().to_ascii_lowercase()),
        }),
        SqlStatement::Deallocate { name, .. } => Shortcut::Deallocate(
            (!name.value.eq_ignore_ascii_case("all")).then(|| name.value.clone()),
        ),
        _ => return None,
    })
}

/// `SET <kept setting> = value`, as (name, value); `DEFAULT` as an empty
/// value, which forgets the setting.
fn kept_setting(set: &Set) -> Option<(String, String)> {
    let Set::SingleAssignment {
        variable, values, ..
    } = set
    else {
        return None;
    };
    let name = variable.to_string().to_ascii_lowercase();
    if !KEPT_SETTINGS.contains(&name.as_str()) {
        return None;
    }
    let value = values
        .iter()
        .map(|v| match v {
            datafusion::sql::sqlparser::ast::Expr::Value(v) => {
                v.clone().into_string().unwrap_or_else(|| v.to_string())
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let value = if value.eq_ignore_ascii_case("default") {
        String::new()
    } else {
        value
    };
    Some((name, value))
}

/// The settings `SHOW` answers, as (name, value, description).
fn settings<C: ClientInfo + ?Sized>(
    client: &C,
    engine: &Engine,
) -> Vec<(&'static str, String, &'static str)> {
    let format = FormatOptions::from_client_metadata(client.metadata());
    let application_name = client
        .metadata()
        .get(METADATA_APPLICATION_NAME)
        .cloned()
        .unwrap_or_default();
    let timeout_ms = engine.limits().timeout().as_millis();
    vec![
        (
            "server_version",
            SERVER_VERSION.into(),
            "pathflow's version of the PostgreSQL protocol",
        ),
        (
            "server_version_num",
            SERVER_VERSION_NUM.into(),
            "the same, as a number",
        ),
        (
            "server_encoding",
            "UTF8".into(),
            "the server's character set",
        ),
        (
            "client_encoding",
            "UTF8".into(),
            "the client's character set",
        ),
        (
            "DateStyle",
            format.date_style,
            "how dates and times are written",
        ),
        (
            "IntervalStyle",
            format.interval_style,
            "how intervals are written",
        ),
        (
            "TimeZone",
            format.time_zone,
            "timestamps are written in UTC",
        ),
        (
            "extra_float_digits",
            format.extra_float_digits.to_string(),
            "digits of floats",
        ),
        (
            "bytea_output",
            format.bytea_output,
            "how binary values are written",
        ),
        (
            "application_name",
            application_name,
            "the client's name for itself",
        ),
        (
            "search_path",
            "public".into(),
            "pathflow's tables are in public",
        ),
        (
            "standard_conforming_strings",
            "on".into(),
            "backslashes are literal in strings",
        ),
        ("integer_datetimes", "on".into(), "times are integers"),
        ("is_superuser", "off".into(), "no connection is a superuser"),
        (
            "transaction_isolation",
            "read committed".into(),
            "each query reads one committed version of each table",
        ),
        (
            "default_transaction_isolation",
            "read committed".into(),
            "the same, for new transactions",
        ),
        (
            "transaction_read_only",
            "on".into(),
            "the server only reads",
        ),
        (
            "default_transaction_read_only",
            "on".into(),
            "the server only reads",
        ),
        ("max_identifier_length", "63".into(), "the longest name"),
        (
            "statement_timeout",
            format!("{timeout_ms}ms"),
            "limits.query_timeout_ms, set by the server",
        ),
    ]
}

/// The canonical name of a setting asked for by `SHOW`, if it is one.
fn setting_name(asked: &str) -> &str {
    match asked {
        "time zone" => "timezone",
        "transaction isolation level" => "transaction_isolation",
        other => other,
    }
}

/// The SQL and what was learnt from it at Parse, kept by pgwire as the
/// prepared statement.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    kind: PreparedKind,
}

#[derive(Debug, Clone)]
enum PreparedKind {
    /// A query the engine planned; the plan itself is not kept (it would
    /// pin the table versions it resolved), only its parameters' types
    /// (`$1` first; `None` where nothing says) and its result's schema.
    Query {
        parameters: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
    Shortcut(Shortcut),
}

/// Plans at Parse, through the engine's guard, so Describe can say the
/// parameter and result types; a refusal shows at Parse.
struct PgParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let who = principal(client)?;
        let rewritten = compatible(sql);
        let kind = match classify(sql) {
            Classified::Empty => return Ok(None),
            Classified::Shortcuts(mut shortcuts) if shortcuts.len() == 1 => {
                PreparedKind::Shortcut(shortcuts.remove(0))
            }
            Classified::Shortcuts(_) | Classified::Query => {
                let started = Instant::now();
                let sql = &*rewritten;
                let session = self.engine.session_for(&who, sql);
                let planned = self
                    .engine
                    .plan(&session, &who, sql)
                    .await
                    .and_then(|plan| Ok((parameter_types(&plan)?, plan)));
                match planned {
                    Ok((parameters, plan)) => PreparedKind::Query {
                        parameters,
                        schema: Arc::new(plan.schema().as_arrow().clone()),
                    },
                    Err(e) => {
                        self.engine.record_failure(
                            &who,
                            sql,
                            Interface::Postgres,
                            started.elapsed(),
                            &e,
                        );
                        return Err(query_error(&e, sql));
                    }
                }
            }
        };
        Ok(Some(Prepared {
            sql: rewritten.into_owned(),
            kind,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match &statement.kind {
            PreparedKind::Query { parameters, .. } => parameters
                .iter()
                .map(|t| {
                    t.as_ref()
                        .and_then(|t| into_pg_type(t).ok())
                        .unwrap_or(Type::UNKNOWN)
                })
                .collect(),
            PreparedKind::Shortcut(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match &statement.kind {
            PreparedKind::Query { schema, .. } => {
                check_formats(format, schema.fields().len())?;
                arrow_schema_to_pg_fields(schema, format, None)
            }
            PreparedKind::Shortcut(Shortcut::Show(name)) => {
                let names: &[&str] = if name == "all" {
                    &["name", "setting", "description"]
                } else {
                    &[name.as_str()]
                };
                check_formats(format, names.len())?;
                Ok(text_fields(names, format))
            }
            PreparedKind::Shortcut(_) => Ok(Vec::new()),
        }
    }
}

/// `$1`, `$2`, ... in order, each with the type DataFusion inferred for it
/// or, failing that, the type it is cast to (`$1::int`).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>, QueryError> {
    let mut types = plan
        .get_parameter_types()
        .map_err(QueryError::from_datafusion)?;
    let mut casts: HashMap<String, DataType> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(cast) = e
                    && let Expr::Placeholder(p) = cast.expr.as_ref()
                {
                    casts
                        .entry(p.id.clone())
                        .or_insert_with(|| cast.field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .map_err(QueryError::from_datafusion)?;
    for (id, t) in types.iter_mut() {
        if t.is_none() {
            *t = casts.get(id).cloned();
        }
    }
    let position = |id: &str| id.strip_prefix('$')?.parse::<usize>().ok();
    let count = types
        .keys()
        .filter_map(|id| position(id))
        .max()
        .unwrap_or(0);
    Ok((1..=count)
        .map(|n| types.get(&format!("${n}")).cloned().flatten())
        .collect())
}

/// pgwire indexes per-column format codes without checking their number.
fn check_formats(format: &Format, columns: usize) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != columns => {
            Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "08P01".into(),
                format!(
                    "bind message has {} result formats but query has {columns} columns",
                    codes.len()
                ),
            ))))
        }
        _ => Ok(()),
    }
}

fn text_fields(names: &[&str], format: &Format) -> Vec<FieldInfo> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            FieldInfo::new(
                name.to_string(),
                None,
                None,
                Type::TEXT,
                format.format_for(i),
            )
        })
        .collect()
}

/// Runs queries through the engine, and answers shortcuts.
struct PgQueries {
    engine: Arc<Engine>,
    parser: Arc<PgParser>,
}

#[async_trait]
impl SimpleQueryHandler for PgQueries {
    async fn do_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let who = principal(client)?;
        match classify(sql) {
            Classified::Empty => Ok(vec![Response::EmptyQuery]),
            Classified::Shortcuts(shortcuts) => {
                let mut responses = Vec::with_capacity(shortcuts.len());
                for shortcut in &shortcuts {
                    responses.push(self.answer(client, shortcut, &Format::UnifiedText).await?);
                }
                Ok(responses)
            }
            Classified::Query => {
                let rewritten = compatible(sql);
                let sql = &*rewritten;
                let out = self
                    .engine
                    .run(&who, sql, Interface::Postgres)
                    .await
                    .map_err(|e| query_error(&e, sql))?;
                Ok(vec![Response::Query(encode(
                    client,
                    out,
                    &Format::UnifiedText,
                )?)])
            }
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgQueries {
    type Statement = Prepared;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let who = principal(client)?;
        let prepared = &portal.statement.statement;
        let format = &portal.result_column_format;
        match &prepared.kind {
            PreparedKind::Shortcut(shortcut) => self.answer(client, shortcut, format).await,
            PreparedKind::Query { parameters, schema } => {
                check_formats(format, schema.fields().len())?;
                let inferred: Vec<Option<&DataType>> =
                    parameters.iter().map(Option::as_ref).collect();
                let values = deserialize_parameters(portal, &inferred)?;
                // arrow-pg drops a NULL it cannot type instead of keeping
                // its place, which would shift every later parameter.
                if let ParamValues::List(list) = &values
                    && list.len() != portal.parameter_len()
                {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".into(),
                        "42P18".into(),
                        "a NULL parameter has no type the server can tell: cast it in the \
                         query (for example $1::text)"
                            .into(),
                    ))));
                }
                let bind = move |plan: LogicalPlan| {
                    plan.replace_params_with_values(&values)
                        .map_err(QueryError::from_datafusion)
                };
                let out = self
                    .engine
                    .run_bound(&who, &prepared.sql, Interface::Postgres, bind)
                    .await
                    .map_err(|e| query_error(&e, &prepared.sql))?;
                check_formats(format, out.schema.fields().len())?;
                Ok(Response::Query(encode(client, out, format)?))
            }
        }
    }
}

impl PgQueries {
    async fn answer<C>(
        &self,
        client: &mut C,
        shortcut: &Shortcut,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(match shortcut {
            Shortcut::Set(kept) => {
                if let Some((name, value)) = kept {
                    if value.is_empty() {
                        client.metadata_mut().remove(name);
                    } else {
                        client.metadata_mut().insert(name.clone(), value.clone());
                    }
                    // Postgres reports these when they change.
                    let reported = match name.as_str() {
                        "datestyle" => Some("DateStyle"),
                        "intervalstyle" => Some("IntervalStyle"),
                        "application_name" => Some("application_name"),
                        _ => None,
                    };
                    if let Some(reported) = reported {
                        let current = settings(client, &self.engine)
                            .into_iter()
                            .find(|(n, ..)| *n == reported)
                            .map(|(_, v, _)| v)
                            .unwrap_or_default();
                        client
                            .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                                reported.to_string(),
                                current,
                            )))
                            .await?;
                    }
                }
                Response::Execution(Tag::new("SET"))
            }
            Shortcut::Show(asked) => Response::Query(self.show(client, asked, format)?),
            Shortcut::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            // As Postgres: COMMIT of a failed transaction rolls it back.
            Shortcut::Commit if client.transaction_status() == TransactionStatus::Error => {
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            Shortcut::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Shortcut::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Shortcut::Reset(name) => {
                match name {
                    Some(name) => {
                        client.metadata_mut().remove(name);
                    }
                    None => {
                        for name in KEPT_SETTINGS {
                            client.metadata_mut().remove(name);
                        }
                    }
                }
                Response::Execution(Tag::new("RESET"))
            }
            Shortcut::Deallocate(name) => {
                // pgwire's store cannot list its statements: after
                // DEALLOCATE ALL they go when the connection does.
                if let Some(name) = name {
                    client.portal_store().rm_statement(name);
                }
                Response::Execution(Tag::new(if name.is_some() {
                    "DEALLOCATE"
                } else {
                    "DEALLOCATE ALL"
                }))
            }
            Shortcut::Tag(tag) => Response::Execution(Tag::new(tag)),
        })
    }

    fn show<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        asked: &str,
        format: &Format,
    ) -> PgWireResult<QueryResponse> {
        let all = settings(client, &self.engine);
        let (names, rows): (Vec<&str>, Vec<Vec<String>>) = if asked == "all" {
            (
                vec!["name", "setting", "description"],
                all.into_iter()
                    .map(|(n, v, d)| vec![n.to_string(), v, d.to_string()])
                    .collect(),
            )
        } else {
            let wanted = setting_name(asked);
            let Some((name, value, _)) = all
                .into_iter()
                .find(|(n, ..)| n.eq_ignore_ascii_case(wanted))
            else {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "42704".into(),
                    format!("unrecognized configuration parameter \"{asked}\""),
                ))));
            };
            (vec![name], vec![vec![value]])
        };
        check_formats(format, names.len())?;
        let fields = Arc::new(text_fields(&names, format));
        let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
        let rows = rows
            .into_iter()
            .map(|row| {
                for value in &row {
                    encoder.encode_field(&Some(value.as_str()))?;
                }
                Ok(encoder.take_row())
            })
            .collect::<Vec<_>>();
        Ok(QueryResponse::new(fields, futures::stream::iter(rows)))
    }
}

/// The collected batches as Postgres rows, in `format`, written as the
/// connection's display settings say.
fn encode<C: ClientInfo + ?Sized>(
    client: &C,
    out: QueryOutput,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &out.schema,
        format,
        Some(options),
    )?);
    let for_rows = Arc::clone(&fields);
    let rows = out
        .batches
        .into_iter()
        .flat_map(move |batch| encode_recordbatch(Arc::clone(&for_rows), batch));
    Ok(QueryResponse::new(fields, futures::stream::iter(rows)))
}

/// An engine error as an ErrorResponse: its SQLSTATE and message, and where
/// in the query a syntax error is.
fn query_error(e: &QueryError, sql: &str) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string());
    if let QueryError::Sql {
        position: Some(at), ..
    } = e
    {
        info.position = character_position(sql, *at).map(|p| p.to_string());
    }
    PgWireError::UserError(Box::new(info))
}

/// (line, column), both 1-based, as Postgres's 1-based character index.
fn character_position(sql: &str, (line, column): (u64, u64)) -> Option<usize> {
    let mut before = 0usize;
    for (n, text) in sql.split('\n').enumerate() {
        if n as u64 + 1 == line {
            let column = usize::try_from(column).ok()?;
            return (column >= 1 && column <= text.chars().count() + 1).then_some(before + column);
        }
        before += text.chars().count() + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_chatter_is_a_shortcut() {
        assert_eq!(classify(""), Classified::Empty);
        assert_eq!(classify("-- nothing"), Classified::Empty);
        assert_eq!(
            classify("SET application_name = 'grafana'"),
            Classified::Shortcuts(vec![Shortcut::Set(Some((
                "application_name".into(),
                "grafana".into()
            )))])
        );
        assert_eq!(
            classify("SET datafusion.execution.batch_size = 1"),
            Classified::Shortcuts(vec![Shortcut::Set(None)])
        );
        assert_eq!(
            classify("SHOW TRANSACTION ISOLATION LEVEL"),
            Classified::Shortcuts(vec![Shortcut::Show("transaction isolation level".into())])
        );
        assert_eq!(
            classify("BEGIN; COMMIT"),
            Classified::Shortcuts(vec![Shortcut::Begin, Shortcut::Commit])
        );
        for sql in [
            "SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM referrals",
            "DROP TABLE referrals",
            "CREATE TABLE t AS SELECT 1",
            "INSERT INTO referrals VALUES (1)",
            "COPY referrals TO '/tmp/x'",
            "SET x = 1; DROP TABLE referrals",
            "BEGIN; DELETE FROM referrals; COMMIT",
            "not sql at all",
        ] {
            assert_eq!(classify(sql), Classified::Query, "{sql}");
        }
    }

    #[test]
    fn a_syntax_error_position_counts_characters_across_lines() {
        assert_eq!(character_position("SELECT * FORM t", (1, 10)), Some(10));
        assert_eq!(character_position("SELECT 'é'\nFORM t", (2, 1)), Some(12));
        assert_eq!(character_position("SELECT 1", (3, 1)), None);
    }
}
