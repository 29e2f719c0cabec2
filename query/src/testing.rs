//! Helpers for the query server's tests and benchmarks: tables of a
//! simulated ICB written the way the transform writes them (no broker), and
//! an engine over them with tokens made up for the test.
//!
//! # Panics
//! Everything here panics on failure: it is for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pathflow_schemas::Event;

use crate::auth::{Role, TokenHash};
use crate::catalog::LiveTables;
use crate::config::{ServeConfig, TokenConfig};
use crate::engine::Engine;
use crate::metrics::QueryMetrics;

/// The events of a simulated ICB of `population` over `weeks`, in the order
/// they occurred, pseudonymised with a test key.
pub fn simulated_events(scratch: &Path, population: u32, weeks: u32, seed: u64) -> Vec<Event> {
    let out = scratch.join(format!("sim-{population}-{weeks}-{seed}"));
    let mut cfg = pathflow_simulate::SimConfig::new(out.clone());
    cfg.population = population;
    cfg.weeks = weeks;
    cfg.run_in_weeks = weeks.min(52);
    cfg.seed = seed;
    pathflow_simulate::run(&cfg, &|_| {}).expect("simulate");
    let recorded_at: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().expect("a time");
    let mut events =
        pathflow_ingest::simulated::events(&out, "pathflow-test", recorded_at).expect("events");
    let _ = std::fs::remove_dir_all(&out);
    events.sort_by_key(|e| e.envelope.occurred_at);
    events
}

/// Commits `events` to bronze under `location` and derives every state and
/// gold table from it, as the transform would.
pub async fn write_tables(location: &Path, events: &[Event]) {
    pathflow_transform::testing::commit_events(location, "pathflow.test", events).await;
    derive(location).await;
}

/// Brings the derived tables up to the bronze table.
pub async fn derive(location: &Path) {
    let mut deriver = pathflow_transform::derive::Deriver::open(
        location.to_str().expect("a UTF-8 path"),
        &Default::default(),
    )
    .await
    .expect("open the deriver");
    deriver.catch_up().await.expect("derive");
}

/// Tables of a small simulated ICB in a fresh directory (kept while the
/// returned guard lives).
pub async fn simulated_tables(population: u32, weeks: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let events = simulated_events(dir.path(), population, weeks, 3);
    let location = dir.path().join("tables");
    write_tables(&location, &events).await;
    (dir, location)
}

/// Tables of a simulated ICB built once per test binary, for the tests that
/// only read: `cell` is the binary's own `static`. They are built on a
/// thread with its own runtime, so they outlive any one test's runtime.
pub fn tables_once(
    cell: &'static std::sync::OnceLock<(tempfile::TempDir, PathBuf)>,
    population: u32,
    weeks: u32,
) -> &'static Path {
    &cell
        .get_or_init(|| {
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .expect("a runtime")
                    .block_on(simulated_tables(population, weeks))
            })
            .join()
            .expect("the tables are built")
        })
        .1
}

/// A token with `secret` (a placeholder made up by the test).
pub fn token(
    name: &str,
    secret: &str,
    role: Role,
    practices: &[&str],
    tfs: &[&str],
) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        hash: TokenHash::of(secret),
        role,
        practices: practices.iter().map(|s| s.to_string()).collect(),
        treatment_functions: tfs.iter().map(|s| s.to_string()).collect(),
    }
}

/// An engine over the tables at `location` with `tokens`, loaded, its
/// reloader running every 100 ms (abort the handle to stop it).
pub async fn engine(
    location: &Path,
    tokens: Vec<TokenConfig>,
    adjust: impl FnOnce(&mut ServeConfig),
) -> (Arc<Engine>, tokio::task::JoinHandle<()>) {
    let mut cfg = ServeConfig::new(location.to_str().expect("a UTF-8 path"));
    cfg.tokens = tokens;
    cfg.tables.reload_interval_ms = 100;
    adjust(&mut cfg);
    cfg.validate().expect("a valid test configuration");
    let tables = LiveTables::new(&cfg.tables.location, Default::default());
    let problems = tables.reload(&mut Default::default()).await;
    assert!(problems.is_empty(), "{problems:?}");
    let reloader = tables
        .spawn_reloader(Duration::from_millis(cfg.tables.reload_interval_ms), |p| {
            eprintln!("reload: {p}")
        });
    let engine = Engine::new(&cfg, tables, QueryMetrics::new()).expect("an engine");
    (engine, reloader)
}

/// A result's rows, each as its values joined by `|` (nulls empty), sorted.
pub fn rows(out: &crate::QueryOutput) -> Vec<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("");
    let mut rows = Vec::new();
    for batch in &out.batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formattable"))
            .collect();
        for r in 0..batch.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

/// Every file under `dir`, with its size, for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((path, len));
            }
        }
    }
    out.sort();
    out
}

/// `promtool check metrics` (Debian's prometheus package) on the exposition
/// `text`: whether it passed, and everything it said (empty when clean).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    promtool
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the metrics");
    let out = promtool.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}
