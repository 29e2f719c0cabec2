//! `pathflow serve`'s configuration: where the tables are, where to listen,
//! the limits every query runs under, and the tokens (as hashes).
//!
//! Every key is documented in `deploy/serve.example.toml`. A bad file gets a
//! message naming the key and what to put there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{Role, TokenHash};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub tables: TablesConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Tokens; `tokens_file` (a TOML file of `[[tokens]]`) adds more, so the
    /// list can live in a Kubernetes Secret apart from the rest.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Scheduled extracts (see [`crate::extract`]).
    #[serde(default)]
    pub extracts: Vec<crate::extract::ExtractConfig>,
    /// DataFusion session options every query runs with, by their full
    /// name (`datafusion.execution.…` or `datafusion.optimizer.…` only),
    /// for tuning a deployment without a rebuild.
    #[serde(default)]
    pub datafusion: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// The directory (or object-store URL) the transform writes to.
    pub location: String,
    /// How often each table's Delta log is looked at for new commits.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    500
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http(),
        }
    }
}

fn default_http() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `host:port` for the PostgreSQL wire protocol; empty turns it off.
    #[serde(default = "default_pg")]
    pub listen: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            listen: default_pg(),
        }
    }
}

fn default_pg() -> String {
    "127.0.0.1:5433".into()
}

/// What one query may use. A query over any limit is cancelled with an
/// error that names the limit; other queries carry on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time from planning to the last row.
    #[serde(default = "default_timeout_ms")]
    pub query_timeout_ms: u64,
    /// DataFusion memory pool per query (sorts, joins and aggregates).
    #[serde(default = "default_memory_mb")]
    pub query_memory_mb: usize,
    /// Rows in one result.
    #[serde(default = "default_max_rows")]
    pub max_result_rows: usize,
    /// Bytes (Arrow, in memory) in one result.
    #[serde(default = "default_max_bytes")]
    pub max_result_mb: usize,
    /// Queries running at once, over both interfaces; more wait their turn
    /// for up to `queue_timeout_ms`, then get a "busy" error.
    #[serde(default = "default_concurrent")]
    pub max_concurrent_queries: usize,
    #[serde(default = "default_queue_ms")]
    pub queue_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}
fn default_memory_mb() -> usize {
    1024
}
fn default_max_rows() -> usize {
    1_000_000
}
fn default_max_bytes() -> usize {
    256
}
fn default_concurrent() -> usize {
    8
}
fn default_queue_ms() -> u64 {
    5_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            query_timeout_ms: default_timeout_ms(),
            query_memory_mb: default_memory_mb(),
            max_result_rows: default_max_rows(),
            max_result_mb: default_max_bytes(),
            max_concurrent_queries: default_concurrent(),
            queue_timeout_ms: default_queue_ms(),
        }
    }
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
    pub fn max_result_bytes(&self) -> usize {
        self.max_result_mb.saturating_mul(1024 * 1024)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON lines, one per query, appended; none logs to standard error.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// One token: its name (who, in the audit log), the SHA-256 of the secret
/// and what it may see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// `sha256:<64 hex digits>`, from `pathflow serve hash-token`.
    pub hash: TokenHash,
    pub role: Role,
    /// clinical_pair only: practice ODS codes in scope (empty: any).
    #[serde(default)]
    pub practices: Vec<String>,
    /// clinical_pair only: treatment function codes in scope (empty: any).
    #[serde(default)]
    pub treatment_functions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

/// A configuration that cannot be used, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Reads the file, and the tokens file it names (relative to it).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: ServeConfig = read_toml(path)?;
        if let Some(file) = cfg.tokens_file.clone() {
            let file = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            let more: TokensFile = read_toml(&file)?;
            cfg.tokens.extend(more.tokens);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and checks TOML `text` without reading its `tokens_file`
    /// (`path` is only used in messages): for checking a config written for
    /// another machine, such as a container's.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: ServeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration for tests and the demo: tables at `location`, no tokens.
    pub fn new(location: impl Into<String>) -> Self {
        ServeConfig {
            tables: TablesConfig {
                location: location.into(),
                reload_interval_ms: default_reload_ms(),
            },
            http: HttpConfig::default(),
            postgres: PostgresConfig::default(),
            limits: Limits::default(),
            audit: AuditConfig::default(),
            tokens: Vec::new(),
            tokens_file: None,
            extracts: Vec::new(),
            datafusion: Default::default(),
        }
    }

    /// DataFusion's session options: DataFusion's defaults, then
    /// [`SERVE_DEFAULTS`], then `[datafusion]`. `Err` names the key that
    /// DataFusion or pathflow refuses, and why.
    pub fn session_options(&self) -> Result<datafusion::config::ConfigOptions, ConfigError> {
        let mut options = datafusion::config::ConfigOptions::new();
        for (key, value) in SERVE_DEFAULTS {
            options
                .set(key, value)
                .expect("pathflow's own defaults are valid DataFusion options");
        }
        for (key, value) in &self.datafusion {
            // Catalog, format and SQL-parser options change what a query
            // may reach or how it is read; only how it runs is tunable.
            if !(key.starts_with("datafusion.execution.")
                || key.starts_with("datafusion.optimizer."))
            {
                return Err(ConfigError::Invalid(format!(
                    "[datafusion] {key:?}: only `datafusion.execution.*` and \
                     `datafusion.optimizer.*` options can be set here"
                )));
            }
            options.set(key, value).map_err(|e| {
                ConfigError::Invalid(format!(
                    "[datafusion] {key:?} = {value:?}: {e} (see the option list of \
                     `SHOW ALL` or DataFusion's configuration page)"
                ))
            })?;
        }
        Ok(options)
    }

    /// Checks what serde cannot: names unique, scopes only on clinical
    /// pairs, limits above zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for t in &self.tokens {
            if !names.insert(&t.name) {
                return Err(ConfigError::Invalid(format!(
                    "two tokens are named {:?}: give each its own name (the audit log records it)",
                    t.name
                )));
            }
            let scoped = !t.practices.is_empty() || !t.treatment_functions.is_empty();
            match t.role {
                Role::ClinicalPair if !scoped => {
                    return Err(ConfigError::Invalid(format!(
                        "token {:?} is a clinical_pair with no scope: list its `practices` and/or \
                         `treatment_functions` (or make it an analyst)",
                        t.name
                    )));
                }
                Role::Analyst | Role::Commissioner if scoped => {
                    return Err(ConfigError::Invalid(format!(
                        "token {:?}: `practices` and `treatment_functions` apply to clinical_pair \
                         tokens only; remove them or change the role",
                        t.name
                    )));
                }
                _ => {}
            }
        }
        let mut extracts = std::collections::HashSet::new();
        for e in &self.extracts {
            if !extracts.insert(&e.name) {
                return Err(ConfigError::Invalid(format!(
                    "two [[extracts]] are named {:?}: each needs its own name (it names the files)",
                    e.name
                )));
            }
            e.validate().map_err(ConfigError::Invalid)?;
        }
        let l = &self.limits;
        for (key, value) in [
            ("query_timeout_ms", l.query_timeout_ms as usize),
            ("query_memory_mb", l.query_memory_mb),
            ("max_result_rows", l.max_result_rows),
            ("max_result_mb", l.max_result_mb),
            ("max_concurrent_queries", l.max_concurrent_queries),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "[limits] {key} is 0: every limit must be above zero"
                )));
            }
        }
        self.session_options()?;
        Ok(())
    }
}

/// Where `pathflow serve` departs from DataFusion's defaults, for the
/// tables pathflow writes: one small file per week partition, one page
/// per column chunk, no bloom filters. Loading and evaluating a file's
/// page index then prunes nothing and costs every file it opens: the query
/// bench measured the 52-file gold queries about a third faster without
/// it (`referrals_weekly_by_specialty` 19.9 → 12.9 ms). Asking for bloom
/// filters the writer never wrote is skipped too. `[datafusion]` can set
/// either back.
pub const SERVE_DEFAULTS: [(&str, &str); 2] = [
    ("datafusion.execution.parquet.enable_page_index", "false"),
    ("datafusion.execution.parquet.bloom_filter_on_read", "false"),
];

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, String> {
        let cfg: ServeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_clinical_pair_needs_a_scope_and_others_may_not_have_one() {
        let e = parse(&format!(
            "[tables]\nlocation='x'\n[[tokens]]\nname='gp'\nhash='{HASH}'\nrole='clinical_pair'\n"
        ))
        .unwrap_err();
        assert!(e.contains("no scope"), "{e}");
        let e = parse(&format!(
            "[tables]\nlocation='x'\n[[tokens]]\nname='a'\nhash='{HASH}'\nrole='analyst'\npractices=['Y01234']\n"
        ))
        .unwrap_err();
        assert!(e.contains("clinical_pair tokens only"), "{e}");
    }

    #[test]
    fn a_plain_text_token_is_refused_with_the_way_to_hash_it() {
        let e =
            parse("[tables]\nlocation='x'\n[[tokens]]\nname='a'\nhash='letmein'\nrole='analyst'\n")
                .unwrap_err();
        assert!(e.contains("pathflow serve hash-token"), "{e}");
    }

    #[test]
    fn the_example_config_loads_with_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/serve.example.toml");
        let cfg = ServeConfig::load(&path).unwrap();
        // Three inline, one from tokens_file.
        assert_eq!(cfg.tokens.len(), 4);
        assert_eq!(cfg.tokens[3].name, "reporting-placeholder");
        assert_eq!(cfg.tokens[1].treatment_functions, ["110"]);
        assert!(cfg.audit.path.is_some());
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let cfg = parse("[tables]\nlocation='x'\n").unwrap();
        assert_eq!(cfg.limits.max_concurrent_queries, 8);
        assert_eq!(cfg.http.listen, "127.0.0.1:8080");
        let e = parse("[tables]\nlocation='x'\n[limits]\nquery_timeout_ms=0\n").unwrap_err();
        assert!(e.contains("query_timeout_ms is 0"), "{e}");
        let e = parse("[tables]\nlocation='x'\nlisten='y'\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn datafusion_options_are_checked_by_name_value_and_kind() {
        let cfg = parse(
            "[tables]\nlocation='x'\n[datafusion]\n\
             'datafusion.execution.parquet.bloom_filter_on_read'='false'\n",
        )
        .unwrap();
        let options = cfg.session_options().unwrap();
        assert!(!options.execution.parquet.bloom_filter_on_read);
        // pathflow's defaults, and a setting back to DataFusion's.
        let defaults = parse("[tables]\nlocation='x'\n")
            .unwrap()
            .session_options()
            .unwrap();
        assert!(!defaults.execution.parquet.enable_page_index);
        assert!(!defaults.execution.parquet.bloom_filter_on_read);
        let back = parse(
            "[tables]\nlocation='x'\n[datafusion]\n\
             'datafusion.execution.parquet.enable_page_index'='true'\n",
        )
        .unwrap();
        assert!(
            back.session_options()
                .unwrap()
                .execution
                .parquet
                .enable_page_index
        );
        let e = parse(
            "[tables]\nlocation='x'\n[datafusion]\n'datafusion.execution.batch_size'='many'\n",
        )
        .unwrap_err();
        assert!(
            e.contains("datafusion.execution.batch_size") && e.contains("many"),
            "{e}"
        );
        let e = parse("[tables]\nlocation='x'\n[datafusion]\n'datafusion.execution.no_such'='1'\n")
            .unwrap_err();
        assert!(e.contains("no_such"), "{e}");
        let e = parse(
            "[tables]\nlocation='x'\n[datafusion]\n'datafusion.catalog.information_schema'='false'\n",
        )
        .unwrap_err();
        assert!(e.contains("only `datafusion.execution.*`"), "{e}");
    }
}
