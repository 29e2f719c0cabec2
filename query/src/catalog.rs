//! The tables as the server sees them: one committed Delta version of each,
//! swapped for the next version when the transform commits.
//!
//! [`LiveTables`] holds, per table, an immutable [`Snapshot`] (a DataFusion
//! provider over one version's files). A reloader looks at every table's log
//! each `reload_interval_ms` and publishes the new version whole, so a query
//! sees either the old version or the new one, never a half-written commit.
//! A query resolves each table once, when it is planned (DataFusion looks up
//! every table reference of a statement once), so all its reads of one
//! table come from one version, and a query running across a commit keeps
//! reading the version it started with (the transform never deletes files a
//! live version names).
//!
//! What a principal may see is decided here too: [`PrincipalCatalog`] lists
//! only the tables its role reads, and for a clinical pair wraps each one in
//! a view whose plan filters to its scope before anything else in the query
//! runs. The unfiltered provider is never registered anywhere a query can
//! name, so joins, subqueries, UNIONs, CTEs and `information_schema` all
//! start from the scoped view.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, col, lit};
use deltalake::DeltaTable;
use pathflow_transform::derive::Derived;

use crate::auth::{Principal, Role, Scope};
use crate::scan::VersionFiles;

/// Which layer a table belongs to; roles are granted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Bronze,
    State,
    Gold,
}

/// Every table the transform writes, with its layer, in listing order.
pub fn known_tables() -> Vec<(&'static str, Layer)> {
    std::iter::once((pathflow_transform::BRONZE_TABLE, Layer::Bronze))
        .chain(Derived::all().into_iter().map(|d| {
            let layer = match d {
                Derived::Gold(_) => Layer::Gold,
                _ => Layer::State,
            };
            (d.name(), layer)
        }))
        .collect()
}

/// The columns a clinical pair's scope filters on; every table has both.
pub const PRACTICE_COLUMN: &str = "practice";
pub const TREATMENT_FUNCTION_COLUMN: &str = "treatment_function";

/// Whether `role` may read tables of `layer`.
pub fn role_reads(role: Role, layer: Layer) -> bool {
    match role {
        Role::Analyst | Role::ClinicalPair => true,
        Role::Commissioner => layer == Layer::Gold,
    }
}

/// One committed version of one table.
#[derive(Debug)]
pub struct Snapshot {
    pub name: &'static str,
    pub layer: Layer,
    pub version: u64,
    /// When that version was committed (the Delta commit's timestamp).
    pub committed_at: Option<DateTime<Utc>>,
    /// Rows in the version, from the Delta log's file statistics.
    pub rows: Option<u64>,
    pub provider: Arc<dyn TableProvider>,
    /// How the provider reads the version's files.
    pub reader: Reader,
}

/// Which provider serves a version: [`crate::scan::VersionFiles`] for the
/// tables pathflow writes, `deltalake`'s own for anything it cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// Plain Parquet over the version's live files, listed once.
    Files { files: usize },
    /// `deltalake`'s provider, and why the plain reader was not used.
    Delta { why: String },
}

impl Snapshot {
    pub fn schema(&self) -> SchemaRef {
        self.provider.schema()
    }
}

/// The newest loaded version of every table.
#[derive(Debug)]
pub struct LiveTables {
    location: String,
    storage_options: HashMap<String, String>,
    current: RwLock<BTreeMap<&'static str, Arc<Snapshot>>>,
    /// Shared by every query: each table's object store is registered here
    /// once, when the table is first opened.
    registrar: SessionState,
}

impl LiveTables {
    /// Tables under `location`; nothing is loaded until [`LiveTables::reload`].
    pub fn new(location: &str, storage_options: HashMap<String, String>) -> Arc<Self> {
        let registrar = SessionStateBuilder::new()
            .with_runtime_env(crate::engine::shared_runtime())
            .build();
        Arc::new(LiveTables {
            location: location.trim_end_matches('/').to_string(),
            storage_options,
            current: RwLock::new(BTreeMap::new()),
            registrar,
        })
    }

    /// The runtime (object stores, file caches) queries over these tables use.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        Arc::clone(self.registrar.runtime_env())
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The loaded version of `name`, if the table exists yet.
    pub fn get(&self, name: &str) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .expect("not poisoned")
            .get(name)
            .cloned()
    }

    /// Every loaded table, in [`known_tables`] order.
    pub fn all(&self) -> Vec<Arc<Snapshot>> {
        let current = self.current.read().expect("not poisoned");
        known_tables()
            .into_iter()
            .filter_map(|(name, _)| current.get(name).cloned())
            .collect()
    }

    /// Whether every table the transform writes has been loaded.
    pub fn complete(&self) -> bool {
        let current = self.current.read().expect("not poisoned");
        known_tables().iter().all(|(n, _)| current.contains_key(n))
    }

    /// Looks at every table's log once and publishes what moved. Returns
    /// the tables that could not be read (absent ones are not errors: the
    /// transform may not have created them yet).
    pub async fn reload(&self, open: &mut HashMap<&'static str, DeltaTable>) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, layer) in known_tables() {
            match self.reload_one(open, name, layer).await {
                Ok(()) => {}
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        problems
    }

    async fn reload_one(
        &self,
        open: &mut HashMap<&'static str, DeltaTable>,
        name: &'static str,
        layer: Layer,
    ) -> Result<(), deltalake::DeltaTableError> {
        let at = format!("{}/{name}", self.location);
        if !open.contains_key(name) {
            let url = deltalake::ensure_table_uri(&at)?;
            let mut table = deltalake::DeltaTableBuilder::from_url(url)?
                .with_storage_options(self.storage_options.clone())
                .build()?;
            if !table.verify_deltatable_existence().await? {
                return Ok(());
            }
            table.load().await?;
            table.update_datafusion_session(&self.registrar)?;
            open.insert(name, table);
        } else {
            open.get_mut(name).expect("present").update_state().await?;
        }
        let table = &open[name];
        let Some(version) = table.version() else {
            return Ok(());
        };
        if self.get(name).is_some_and(|s| s.version == version) {
            return Ok(());
        }
        let state = table.snapshot()?;
        let committed_at = state
            .version_timestamp(version)
            .and_then(DateTime::<Utc>::from_timestamp_millis);
        let delta: Arc<dyn TableProvider> = table
            .table_provider()
            .await
            .map_err(deltalake::DeltaTableError::from)?;
        let (provider, reader, rows) =
            match VersionFiles::try_new(table, delta.schema(), self.registrar.runtime_env()) {
                Ok(files) => {
                    let reader = Reader::Files {
                        files: files.file_count(),
                    };
                    let rows = files.rows();
                    (Arc::new(files) as Arc<dyn TableProvider>, reader, rows)
                }
                Err(why) => (delta, Reader::Delta { why }, row_count(state)),
            };
        let snapshot = Arc::new(Snapshot {
            name,
            layer,
            version,
            committed_at,
            rows,
            provider,
            reader,
        });
        self.current
            .write()
            .expect("not poisoned")
            .insert(name, snapshot);
        Ok(())
    }

    /// Loads now, then keeps reloading every `interval` until the returned
    /// handle is dropped or aborted. A table that cannot be read keeps its
    /// last good version and is reported once per change of message.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        on_problem: impl Fn(&str) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut open = HashMap::new();
            let mut last: Vec<String> = Vec::new();
            loop {
                let problems = me.reload(&mut open).await;
                if problems != last {
                    for p in &problems {
                        on_problem(p);
                    }
                    last = problems;
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// Sum of the files' `numRecords` statistics; `None` if any file lacks it.
fn row_count(state: &deltalake::table::state::DeltaTableState) -> Option<u64> {
    use arrow::array::{Array, Int64Array};
    let actions = state.add_actions_table(true).ok()?;
    let column = actions.column_by_name("num_records")?;
    let counts = column.as_any().downcast_ref::<Int64Array>()?;
    if counts.null_count() > 0 {
        return None;
    }
    Some(counts.values().iter().map(|&n| n.max(0) as u64).sum())
}

/// Tables resolved by one query, with the version each was read at.
pub type ReadLog = Arc<Mutex<BTreeMap<String, u64>>>;

/// The `datafusion` catalog as one principal sees it: a `public` schema of
/// the tables its role reads, each scoped for a clinical pair, and, for a
/// query that asks for it, `pg_catalog` describing those same tables.
#[derive(Debug)]
pub struct PrincipalCatalog {
    schema: Arc<PrincipalSchema>,
    pg_catalog: RwLock<Option<Arc<dyn SchemaProvider>>>,
}

impl PrincipalCatalog {
    pub fn new(tables: Arc<LiveTables>, principal: Principal, read: ReadLog) -> Self {
        PrincipalCatalog {
            schema: Arc::new(PrincipalSchema {
                tables,
                principal,
                read,
            }),
            pg_catalog: RwLock::new(None),
        }
    }

    fn pg_catalog(&self) -> Option<Arc<dyn SchemaProvider>> {
        self.pg_catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl CatalogProvider for PrincipalCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = vec![PUBLIC_SCHEMA.to_string()];
        if self.pg_catalog().is_some() {
            names.push(PG_CATALOG_SCHEMA.to_string());
        }
        names
    }
    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            PUBLIC_SCHEMA => Some(Arc::clone(&self.schema) as Arc<dyn SchemaProvider>),
            PG_CATALOG_SCHEMA => self.pg_catalog(),
            _ => None,
        }
    }
    /// Only `pg_catalog` may be added (by `datafusion_pg_catalog`'s set-up);
    /// it is built over this catalog, so it lists only what `public` shows.
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        if name != PG_CATALOG_SCHEMA {
            return Err(DataFusionError::Plan(format!(
                "schema `{name}` cannot be created: the tables are read-only"
            )));
        }
        let mut slot = self.pg_catalog.write().unwrap_or_else(|e| e.into_inner());
        Ok(slot.replace(schema))
    }
}

/// Postgres' own catalog, for psql's `\d` commands and clients' browsers.
pub const PG_CATALOG_SCHEMA: &str = "pg_catalog";

pub const PUBLIC_SCHEMA: &str = "public";
pub const CATALOG: &str = "datafusion";

#[derive(Debug)]
struct PrincipalSchema {
    tables: Arc<LiveTables>,
    principal: Principal,
    read: ReadLog,
}

impl PrincipalSchema {
    fn visible(&self, snapshot: &Snapshot) -> bool {
        visible(&self.principal, snapshot)
    }
}

/// Whether `who` may read `snapshot` at all: its role reads the table's
/// layer and, for a scoped principal, the table has both scope columns
/// (fail closed: a table that cannot be filtered is not shown).
pub fn visible(who: &Principal, snapshot: &Snapshot) -> bool {
    role_reads(who.role, snapshot.layer) && (who.scope.is_none() || scopable(snapshot))
}

/// Whether the table has the columns a clinical pair's scope filters on.
pub fn scopable(snapshot: &Snapshot) -> bool {
    let schema = snapshot.schema();
    schema.column_with_name(PRACTICE_COLUMN).is_some()
        && schema.column_with_name(TREATMENT_FUNCTION_COLUMN).is_some()
}

#[async_trait]
impl SchemaProvider for PrincipalSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables
            .all()
            .iter()
            .filter(|s| self.visible(s))
            .map(|s| s.name.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(snapshot) = self.tables.get(name).filter(|s| self.visible(s)) else {
            return Ok(None);
        };
        self.read
            .lock()
            .expect("not poisoned")
            .insert(snapshot.name.to_string(), snapshot.version);
        match &self.principal.scope {
            None => Ok(Some(Arc::clone(&snapshot.provider))),
            Some(scope) => Ok(Some(scoped_view(&snapshot, scope)?)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.get(name).is_some_and(|s| self.visible(&s))
    }
}

/// `SELECT * FROM <table> WHERE <scope>` as a view over the one version.
fn scoped_view(snapshot: &Snapshot, scope: &Scope) -> DfResult<Arc<dyn TableProvider>> {
    let predicate = scope_predicate(scope)
        .ok_or_else(|| DataFusionError::Internal("a clinical pair's scope lists nothing".into()))?;
    let plan = LogicalPlanBuilder::scan(
        snapshot.name,
        provider_as_source(Arc::clone(&snapshot.provider)),
        None,
    )?
    .filter(predicate)?
    .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// `practice IN (..) AND treatment_function IN (..)`, each part only when
/// the scope lists values for it. NULLs fail `IN`, so rows without a
/// practice or treatment function stay out.
pub fn scope_predicate(scope: &Scope) -> Option<Expr> {
    let part = |column: &str, values: &[String]| {
        (!values.is_empty())
            .then(|| col(column).in_list(values.iter().map(|v| lit(v.clone())).collect(), false))
    };
    let parts: Vec<Expr> = [
        part(PRACTICE_COLUMN, &scope.practices),
        part(TREATMENT_FUNCTION_COLUMN, &scope.treatment_functions),
    ]
    .into_iter()
    .flatten()
    .collect();
    parts.into_iter().reduce(Expr::and)
}
