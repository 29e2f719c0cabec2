//! Running one query for one principal, under the limits, audited and
//! measured. HTTP and the Postgres wire protocol both come through here, so
//! both get the same refusals, scopes, limits, audit lines and metrics.
//!
//! Each query gets its own DataFusion session (cheap: the function registry
//! and caches are shared) with a catalog of what its principal may read and
//! its own memory pool, so one query's memory cannot starve another's.
//! Spilling to disk is off: nothing a query does writes a file.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProviderList, SchemaProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::{Principal, Tokens};
use crate::catalog::{
    CATALOG, LiveTables, PG_CATALOG_SCHEMA, PUBLIC_SCHEMA, PrincipalCatalog, ReadLog,
};
use crate::config::{Limits, ServeConfig};
use crate::error::QueryError;
use crate::guard;
use crate::metrics::QueryMetrics;
use crate::rewrite::ConditionalAggregates;

/// Which door a query came in by, for metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Http,
    Postgres,
    /// The server's own queries (extracts, the demo).
    Internal,
}

impl Interface {
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Http => "http",
            Interface::Postgres => "postgres",
            Interface::Internal => "internal",
        }
    }
}

/// A complete result, within the limits.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Each table the query read, with the Delta version it read.
    pub tables: BTreeMap<String, u64>,
}

/// A session for one query: planning resolves each table once, and the
/// versions it resolved are recorded in `read`.
pub struct QuerySession {
    pub ctx: SessionContext,
    pub read: ReadLog,
    /// Whether `pg_catalog` was set up (see [`Engine::session_for`]).
    pg_catalog: bool,
}

/// The shared state of the query server.
pub struct Engine {
    tables: Arc<LiveTables>,
    tokens: Tokens,
    limits: Limits,
    permits: Semaphore,
    base: SessionState,
    audit: AuditLog,
    metrics: QueryMetrics,
    /// Each principal's `pg_catalog`, kept so the OIDs it hands out stay the
    /// same from one query to the next (psql's `\d` looks a table's OID up
    /// in one query and uses it in the next).
    pg_catalogs: Mutex<HashMap<String, Arc<dyn SchemaProvider>>>,
    /// See [`Engine::pg_base`].
    pg_base: OnceLock<SessionState>,
    pg_static: OnceLock<Arc<PgCatalogStaticTables>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("location", &self.tables.location())
            .finish_non_exhaustive()
    }
}

/// The runtime every query shares: object stores and file caches, and a
/// disk manager that refuses to spill.
pub fn shared_runtime() -> Arc<RuntimeEnv> {
    RuntimeEnvBuilder::new()
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .expect("a runtime without a disk manager builds")
}

impl Engine {
    /// An engine over `tables` (whose reloader the caller runs), with the
    /// configuration's tokens, limits and audit log.
    pub fn new(
        cfg: &ServeConfig,
        tables: Arc<LiveTables>,
        metrics: QueryMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let options = cfg
            .session_options()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let config = SessionConfig::from(options)
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, PUBLIC_SCHEMA);
        let base = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(tables.runtime())
            .with_default_features()
            .build();
        let mut rules = base.physical_optimizers().to_vec();
        rules.push(Arc::new(YieldInJoins));
        let logical = ConditionalAggregates::placed_in(base.optimizers().to_vec());
        let base = SessionStateBuilder::new_from_existing(base)
            .with_physical_optimizer_rules(rules)
            .with_optimizer_rules(logical)
            .build();
        Ok(Arc::new(Engine {
            tokens: Tokens::new(&cfg.tokens),
            limits: cfg.limits.clone(),
            permits: Semaphore::new(cfg.limits.max_concurrent_queries),
            base,
            audit: AuditLog::open(cfg.audit.path.as_deref())?,
            metrics,
            tables,
            pg_catalogs: Mutex::new(HashMap::new()),
            pg_base: OnceLock::new(),
            pg_static: OnceLock::new(),
        }))
    }

    pub fn tables(&self) -> &Arc<LiveTables> {
        &self.tables
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &QueryMetrics {
        &self.metrics
    }

    /// The principal a token belongs to; counted when there is none.
    pub fn authenticate(&self, secret: &str, interface: Interface) -> Option<Principal> {
        let found = self.tokens.verify(secret);
        if found.is_none() {
            self.count_unauthorized(interface);
        }
        found
    }

    /// Counts a request that came without a usable token.
    pub fn count_unauthorized(&self, interface: Interface) {
        self.metrics
            .unauthorized
            .with_label_values(&[interface.as_str()])
            .inc();
    }

    /// A fresh session for one query by `who`, with its own memory pool.
    pub fn session(&self, who: &Principal) -> QuerySession {
        self.session_on(&self.base, who)
    }

    /// A session for `sql`: as [`Engine::session`], with Postgres' catalog
    /// (`pg_catalog` and its functions, over this principal's tables only)
    /// when `sql` names it, as psql's `\d` commands and clients' schema
    /// browsers do. Other queries go without.
    pub fn session_for(&self, who: &Principal, sql: &str) -> QuerySession {
        if !guard::mentions_pg_catalog(sql) {
            return self.session(who);
        }
        self.session_with_pg_catalog(who).unwrap_or_else(|e| {
            // The guard then says there is no such schema.
            eprintln!("serve: pg_catalog could not be set up: {e}");
            self.session(who)
        })
    }

    fn session_with_pg_catalog(&self, who: &Principal) -> Result<QuerySession, DataFusionError> {
        let mut session = self.session_on(self.pg_base()?, who);
        let catalog = session
            .ctx
            .catalog(CATALOG)
            .ok_or_else(|| DataFusionError::Internal("the session has no catalog".into()))?;
        catalog.register_schema(PG_CATALOG_SCHEMA, self.pg_catalog(who)?)?;
        session.pg_catalog = true;
        Ok(session)
    }

    /// A session for `who` from `base` (the plain one, or [`Engine::pg_base`]).
    fn session_on(&self, base: &SessionState, who: &Principal) -> QuerySession {
        let read: ReadLog = Arc::new(Mutex::new(BTreeMap::new()));
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.limits.query_memory_mb.saturating_mul(1024 * 1024)),
            NonZeroUsize::new(3).expect("non-zero"),
        );
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env())
            .with_memory_pool(Arc::new(pool))
            .build_arc()
            .expect("a runtime from a working one builds");
        let state = SessionStateBuilder::new_from_existing(base.clone())
            .with_catalog_list(self.catalogs(who, Arc::clone(&read)))
            .with_runtime_env(runtime)
            .build();
        QuerySession {
            ctx: SessionContext::new_with_state(state),
            read,
            pg_catalog: false,
        }
    }

    /// The one `datafusion` catalog, as `who` sees it.
    fn catalogs(&self, who: &Principal, read: ReadLog) -> Arc<MemoryCatalogProviderList> {
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let catalog: Arc<dyn CatalogProvider> = Arc::new(PrincipalCatalog::new(
            Arc::clone(&self.tables),
            who.clone(),
            read,
        ));
        datafusion::catalog::CatalogProviderList::register_catalog(
            catalogs.as_ref(),
            CATALOG.to_string(),
            catalog,
        );
        catalogs
    }

    /// The base state with Postgres' functions, type names and table
    /// functions registered: made once, on the first query that needs it
    /// (the set-up decodes Postgres' static catalog tables).
    fn pg_base(&self) -> Result<&SessionState, DataFusionError> {
        use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
        if let Some(state) = self.pg_base.get() {
            return Ok(state);
        }
        let ctx = SessionContext::new_with_state(
            SessionStateBuilder::new_from_existing(self.base.clone())
                .with_catalog_list(self.catalogs(&Principal::internal(), ReadLog::default()))
                .build(),
        );
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider).map_err(|e| *e)?;
        Ok(self.pg_base.get_or_init(|| ctx.state()))
    }

    /// `who`'s `pg_catalog`, over a catalog of the tables `who` reads (as
    /// each query's is), made on first use.
    fn pg_catalog(&self, who: &Principal) -> Result<Arc<dyn SchemaProvider>, DataFusionError> {
        use datafusion_postgres::datafusion_pg_catalog::pg_catalog::PgCatalogSchemaProvider;
        let mut cache = self.pg_catalogs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(provider) = cache.get(&who.name) {
            return Ok(Arc::clone(provider));
        }
        let list: Arc<dyn datafusion::catalog::CatalogProviderList> =
            self.catalogs(who, ReadLog::default());
        let provider: Arc<dyn SchemaProvider> = Arc::new(PgCatalogSchemaProvider::try_new(
            list,
            self.pg_static_tables()?,
            EmptyContextProvider,
        )?);
        cache.insert(who.name.clone(), Arc::clone(&provider));
        Ok(provider)
    }

    /// Postgres' fixed catalog rows (types, functions, ...), decoded once.
    fn pg_static_tables(&self) -> Result<Arc<PgCatalogStaticTables>, DataFusionError> {
        if let Some(tables) = self.pg_static.get() {
            return Ok(Arc::clone(tables));
        }
        let tables = Arc::new(PgCatalogStaticTables::try_new()?);
        Ok(Arc::clone(self.pg_static.get_or_init(|| tables)))
    }

    /// Checks and plans `sql` in `session`: refused statements never reach
    /// the planner, and the plan is checked again by DataFusion.
    pub async fn plan(
        &self,
        session: &QuerySession,
        who: &Principal,
        sql: &str,
    ) -> Result<LogicalPlan, QueryError> {
        let statement = guard::check(sql)?;
        self.plan_statement(session, who, statement).await
    }

    /// As [`Engine::plan`], for a statement already parsed and checked.
    pub async fn plan_statement(
        &self,
        session: &QuerySession,
        who: &Principal,
        statement: DfStatement,
    ) -> Result<LogicalPlan, QueryError> {
        let state = session.ctx.state();
        let references = state
            .resolve_table_references(&statement)
            .map_err(QueryError::from_datafusion)?;
        let extra: &[&str] = if session.pg_catalog {
            &[PG_CATALOG_SCHEMA]
        } else {
            &[]
        };
        guard::check_tables(who, &references, extra)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(QueryError::from_datafusion)?;
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| {
                QueryError::refused(crate::error::Refusal::Statement, e.find_root().to_string())
            })?;
        Ok(plan)
    }

    /// Runs `sql` for `who`: the whole path, audited and measured.
    pub async fn run(
        &self,
        who: &Principal,
        sql: &str,
        interface: Interface,
    ) -> Result<QueryOutput, QueryError> {
        self.run_bound(who, sql, interface, Ok).await
    }

    /// As [`Engine::run`], with `bind` applied to the plan before it runs
    /// (the Postgres extended protocol binds parameters there).
    pub async fn run_bound(
        &self,
        who: &Principal,
        sql: &str,
        interface: Interface,
        bind: impl FnOnce(LogicalPlan) -> Result<LogicalPlan, QueryError>,
    ) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        // A client that goes away (Postgres cancel, HTTP disconnect) drops
        // this future: the guard still writes the audit line.
        let unfinished = scopeguard(|| {
            self.record(
                who,
                sql,
                interface,
                started.elapsed(),
                Err(&QueryError::Cancelled),
            )
        });
        let result = self.run_inner(who, sql, bind).await;
        unfinished.disarm();
        self.record(who, sql, interface, started.elapsed(), result.as_ref());
        result
    }

    /// Audits and counts, as [`Engine::run`] would, a query that failed
    /// before it could run: the Postgres extended protocol plans at Parse,
    /// where a refusal or a syntax error first shows.
    pub fn record_failure(
        &self,
        who: &Principal,
        sql: &str,
        interface: Interface,
        took: Duration,
        error: &QueryError,
    ) {
        self.record(who, sql, interface, took, Err(error));
    }

    async fn run_inner(
        &self,
        who: &Principal,
        sql: &str,
        bind: impl FnOnce(LogicalPlan) -> Result<LogicalPlan, QueryError>,
    ) -> Result<QueryOutput, QueryError> {
        let _permit = tokio::time::timeout(self.limits.queue_timeout(), self.permits.acquire())
            .await
            .map_err(|_| QueryError::Busy(self.limits.max_concurrent_queries))?
            .map_err(|_| QueryError::Internal("the server is shutting down".into()))?;
        self.metrics.in_flight.inc();
        let _in_flight = scopeguard(|| self.metrics.in_flight.dec());
        let timeout = self.limits.timeout();
        match tokio::time::timeout(timeout, self.execute(who, sql, bind)).await {
            Ok(result) => result,
            // Dropping the future drops the stream, which cancels every
            // task DataFusion started for it.
            Err(_) => Err(QueryError::Timeout(timeout)),
        }
    }

    async fn execute(
        &self,
        who: &Principal,
        sql: &str,
        bind: impl FnOnce(LogicalPlan) -> Result<LogicalPlan, QueryError>,
    ) -> Result<QueryOutput, QueryError> {
        let session = self.session_for(who, sql);
        let plan = bind(self.plan(&session, who, sql).await?)?;
        let memory_mb = self.limits.query_memory_mb;
        let frame = session
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(QueryError::from_datafusion)?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| QueryError::from_execution(e, memory_mb))?;
        let (max_rows, max_bytes) = (self.limits.max_result_rows, self.limits.max_result_bytes());
        let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| QueryError::from_execution(e, memory_mb))?;
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            if rows > max_rows {
                return Err(QueryError::TooLarge {
                    key: "max_result_rows",
                    limit: format!("{max_rows} rows"),
                });
            }
            if bytes > max_bytes {
                return Err(QueryError::TooLarge {
                    key: "max_result_mb",
                    limit: format!("{} MiB", self.limits.max_result_mb),
                });
            }
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
        let tables = session.read.lock().expect("not poisoned").clone();
        Ok(QueryOutput {
            schema,
            batches,
            rows,
            tables,
        })
    }

    fn record(
        &self,
        who: &Principal,
        sql: &str,
        interface: Interface,
        took: Duration,
        result: Result<&QueryOutput, &QueryError>,
    ) {
        let (outcome, rows, error) = match result {
            Ok(out) => ("ok", out.rows, None),
            Err(e) => (e.outcome(), 0, Some(e.to_string())),
        };
        let role = who.role.as_str();
        self.metrics
            .duration
            .with_label_values(&[interface.as_str(), role, outcome])
            .observe(took.as_secs_f64());
        self.metrics
            .rows
            .with_label_values(&[interface.as_str(), role])
            .inc_by(rows as u64);
        if let Err(e) = result
            && let Some(refusal) = e.refusal()
        {
            self.metrics
                .refusals
                .with_label_values(&[refusal.as_str()])
                .inc();
        }
        self.audit.write(&AuditRecord {
            at: Utc::now(),
            who: &who.name,
            role,
            interface: interface.as_str(),
            sql,
            outcome,
            rows,
            duration_ms: took.as_secs_f64() * 1000.0,
            error,
        });
    }
}

/// Makes joins give the thread back now and then.
///
/// DataFusion yields to tokio where it reads files, but a join can emit
/// millions of batches per batch it reads (a cross join, say), and its
/// parent consumes them in one poll, so a timeout never gets to fire and
/// dropping the query does not stop it. Wrapping each join's output in
/// DataFusion's [`CooperativeExec`] spends tokio's task budget per batch,
/// so the task yields every so often: the timeout fires, the query's tasks
/// are dropped at that yield, and other queries get the thread.
#[derive(Debug)]
struct YieldInJoins;

impl PhysicalOptimizerRule for YieldInJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let name = node.name();
            if name.contains("Join") || name == "UnnestExec" {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "pathflow_yield_in_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Runs `f` when dropped, however the scope is left (including
/// cancellation), unless disarmed first.
fn scopeguard<F: FnOnce()>(f: F) -> Guard<F> {
    Guard(Some(f))
}

struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Guard<F> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
