//! pathflow query: one DataFusion session over every table, served over HTTP
//! and the PostgreSQL wire protocol, with scoped tokens and limits.
//!
//! - [`config`]: `pathflow serve`'s configuration (tables, listeners,
//!   limits, audit log, tokens as hashes).
//! - [`auth`]: tokens, roles (`analyst`, `clinical_pair`, `commissioner`)
//!   and a clinical pair's scope.
//! - [`catalog`]: [`catalog::LiveTables`], one committed version of each
//!   Delta table, swapped when the transform commits; the catalog one
//!   principal sees, scoped in the plan.
//! - [`scan`]: [`scan::VersionFiles`], the provider each version is read
//!   through: plain Parquet over the version's file list, listed once per
//!   version, partition filters pruned exactly.
//! - [`rewrite`]: plan rewrites added to DataFusion's optimizer
//!   (conditional sums and counts as `FILTER`).
//! - [`guard`]: read-only: the statements that may run at all.
//! - [`engine`]: [`engine::Engine`] runs one query for one principal under
//!   the limits (timeout, memory, result size, concurrency), audited and
//!   measured; both interfaces go through it.
//! - [`error`]: [`error::QueryError`], with its HTTP status and SQLSTATE.
//! - [`serve`]: `pathflow serve`: bind, keep the tables fresh, serve both
//!   interfaces until shut down.
//! - [`audit`], [`metrics`]: the audit log and the Prometheus metrics.
//! - [`domain`]: domain gauges for Grafana (waits, DNAs, follow-ups, A&G,
//!   referrals) from the gold tables, refreshed on each commit.
//! - [`http`]: the HTTP API (`POST /v1/sql` in JSON, CSV, Arrow IPC or
//!   Parquet; `/v1/tables`; health, readiness and metrics).
//! - [`extract`], [`schedule`], [`disclosure`]: scheduled files for
//!   commissioners (CSV, Parquet, XLSX, with a manifest), run once per cron
//!   slot, counts suppressed and rounded by the OpenSAFELY rule.
//! - [`pg`]: the PostgreSQL wire protocol (`psql`, Grafana, BI tools), a
//!   pathflow token as the password.
//! - [`testing`]: simulated tables and an engine over them, for tests.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod disclosure;
pub mod domain;
pub mod engine;
pub mod error;
pub mod extract;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod rewrite;
pub mod scan;
pub mod schedule;
pub mod serve;
pub mod testing;

pub use auth::{Principal, Role, Scope};
pub use config::ServeConfig;
pub use engine::{Engine, Interface, QueryOutput};
pub use error::QueryError;
