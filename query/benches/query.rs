//! The query benchmark (issue 5): the canonical dashboard queries of
//! `benches/queries.sql` over an ICB-sized set of tables, timed through
//! pathflow and, in the same run, through DuckDB over the same Parquet files
//! (`benches/duckdb_bench.py`).
//!
//! ```sh
//! python3 -m pip install --user duckdb "deltalake==1.6.6" pyarrow
//! CARGO_TARGET_DIR=~/.cache/pathflow/target-bench cargo bench -p pathflow-query --bench query
//! ```
//!
//! 1. **Dataset**, built once and cached: a simulated ICB
//!    (`PATHFLOW_BENCH_QUERY_POPULATION`, default 1,500,000 patients, ×
//!    `PATHFLOW_BENCH_QUERY_WEEKS`, default 52 weeks) read as the connectors
//!    would, committed to bronze in chunks as a consumer would, then derived
//!    into every state and gold table by the project's [`Deriver`]. It lives
//!    under `PATHFLOW_BENCH_QUERY_DATA` (default
//!    `~/.cache/pathflow/bench-query-data`), one directory per size, and is
//!    reused while its `dataset.json` (written last) is there.
//! 2. **pathflow**: each query run once to warm up, then
//!    `PATHFLOW_BENCH_QUERY_RUNS` (default 50) times; median and p99 (nearest
//!    rank) of the wall time from sending the SQL to holding the whole JSON
//!    response ([`http_latencies`]), over HTTP to the real `pathflow serve`
//!    started in this process over the dataset ([`BenchServer`]), or to a
//!    running one named by `PATHFLOW_BENCH_QUERY_URL` (and
//!    `PATHFLOW_BENCH_QUERY_TOKEN`). `PATHFLOW_BENCH_QUERY_DIRECT=1` times
//!    DataFusion called directly, with the session setup the server uses
//!    ([`sql_session`]), to a collected result.
//! 3. **DuckDB**, the same SQL text over exactly the tables' current Parquet
//!    files, the same warm-up and runs; then one table of both, with the ratio
//!    of medians (goal: ≤ 1.0).
//!
//! `PATHFLOW_BENCH_QUERY_ONLY=<name>[,<name>]` runs some queries only;
//! `PATHFLOW_BENCH_QUERY_EXPLAIN=1` prints each query's DataFusion `EXPLAIN
//! ANALYZE` first (through the server, or the direct session with
//! `PATHFLOW_BENCH_QUERY_DIRECT=1`); `PATHFLOW_BENCH_QUERY_PYTHON`
//! (default `python3`) is the interpreter with `duckdb` (and `deltalake`,
//! else the Delta log is read by hand).
//!
//! Memory: the deriver keeps its folded entities in its scratch store on
//! disk, so the build's memory does not grow with the dataset; the bench
//! reports its peak RSS.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use pathflow_ingest::pseudonymise::Pseudonymiser;
use pathflow_ingest::reference::{DeprivationLookup, OptOutList};
use pathflow_ingest::sources::{Context, Outcome, records};
use pathflow_schemas::{Event, SourceName};
use pathflow_transform::derive::{Derived, Deriver, sql_session};
use pathflow_transform::testing::Appender;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per bronze commit while the dataset is built: about what a
/// consumer commits under load, and a bounded amount in memory at once.
const CHUNK: usize = 1_000_000;

/// The generator's seed for the dataset (part of its identity).
const SEED: u64 = 1;

/// The made-up topic the dataset's bronze offsets belong to.
const TOPIC: &str = "bench.query";

type Error = Box<dyn std::error::Error>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- queries --------------------------------------------------------------

/// One named query of the query file.
#[derive(Debug, Clone)]
struct Query {
    name: String,
    sql: String,
}

/// The queries of a file of `-- name: <name>` sections (text before the first
/// one is a preamble; a trailing `;` is dropped).
fn parse_queries(text: &str) -> Vec<Query> {
    let mut out: Vec<Query> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("-- name:") {
            out.push(Query {
                name: name.trim().to_string(),
                sql: String::new(),
            });
        } else if let Some(q) = out.last_mut() {
            q.sql.push_str(line);
            q.sql.push('\n');
        }
    }
    for q in &mut out {
        q.sql = q.sql.trim().trim_end_matches(';').trim_end().to_string();
    }
    out
}

// ---- timings --------------------------------------------------------------

/// Latencies of one query.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    median_ms: f64,
    p99_ms: f64,
    rows: Option<usize>,
    /// Median of the time to a physical plan (parse, plan, optimise, list
    /// and prune the tables' files), where it is known.
    plan_ms: Option<f64>,
}

impl Timing {
    /// Median and nearest-rank 99th percentile of `samples` (seconds).
    fn of(mut samples: Vec<f64>, rows: Option<usize>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Timing {
            median_ms: median * 1e3,
            p99_ms: samples[rank - 1] * 1e3,
            rows,
            plan_ms: None,
        }
    }
}

/// Each query through the DataFusion session `pathflow serve` reads the
/// tables with: planning, execution and the collected batches. With
/// `explain`, each query's `EXPLAIN ANALYZE` goes to stderr first.
fn datafusion_latencies(
    runtime: &tokio::runtime::Runtime,
    location: &Path,
    queries: &[Query],
    runs: usize,
    explain: bool,
) -> Result<Vec<Timing>, Error> {
    let location = location
        .to_str()
        .ok_or("the tables location is not UTF-8")?;
    let ctx = runtime.block_on(sql_session(location, &HashMap::new()))?;
    // `PATHFLOW_BENCH_QUERY_SET="key=value;key=value"`: DataFusion options to
    // try (e.g. `datafusion.execution.parquet.cache_metadata=true`).
    if let Ok(settings) = std::env::var("PATHFLOW_BENCH_QUERY_SET") {
        for setting in settings.split(';').filter(|s| !s.trim().is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or("PATHFLOW_BENCH_QUERY_SET: key=value")?;
            let sql = format!("SET {} = '{}'", key.trim(), value.trim());
            runtime.block_on(async { ctx.sql(&sql).await?.collect().await })?;
            eprintln!("query bench: datafusion {sql}");
        }
    }
    let mut out = Vec::new();
    for q in queries {
        if explain {
            let sql = format!("EXPLAIN ANALYZE {}", q.sql);
            let batches = runtime.block_on(async { ctx.sql(&sql).await?.collect().await })?;
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
            eprintln!("query bench: {}\n{text}", q.name);
        }
        // (rows, seconds to a physical plan, seconds in all)
        let run = || -> Result<(usize, f64, f64), Error> {
            let started = Instant::now();
            let (batches, planned) = runtime.block_on(async {
                let frame = ctx.sql(&q.sql).await?;
                let task = Arc::new(frame.task_ctx());
                let plan = frame.create_physical_plan().await?;
                let planned = started.elapsed().as_secs_f64();
                let batches = datafusion::physical_plan::collect(plan, task).await?;
                Ok::<_, datafusion::error::DataFusionError>((batches, planned))
            })?;
            let secs = started.elapsed().as_secs_f64();
            Ok((batches.iter().map(|b| b.num_rows()).sum(), planned, secs))
        };
        let (rows, _, _) = run().map_err(|e| format!("query {}: {e}", q.name))?;
        let mut samples = Vec::with_capacity(runs);
        let mut plans = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (_, planned, secs) = run()?;
            samples.push(secs);
            plans.push(planned);
        }
        let mut t = Timing::of(samples, Some(rows));
        t.plan_ms = Some(Timing::of(plans, None).median_ms);
        eprintln!(
            "query bench: datafusion {:<36} median {:8.2} ms (planning {:.2}), p99 {:8.2} ms, {} rows",
            q.name,
            t.median_ms,
            t.plan_ms.unwrap_or(f64::NAN),
            t.p99_ms,
            rows
        );
        out.push(t);
    }
    Ok(out)
}

// ==== HTTP: switch on when `pathflow serve` lands ============================
//
// `PATHFLOW_BENCH_QUERY_URL=http://127.0.0.1:PORT` (and
// `PATHFLOW_BENCH_QUERY_TOKEN`) make the bench time the server instead of the
// in-process session; start the server over this run's tables location (the
// bench prints it). The latency is the client's: from sending the request to
// the whole response body read.

/// Each query as `POST {base_url}/v1/sql` (body: the SQL; `Authorization:
/// Bearer {token}`; JSON response), warmed up once, then `runs` times.
fn http_latencies(
    base_url: &str,
    token: &str,
    queries: &[Query],
    runs: usize,
) -> Result<Vec<Timing>, Error> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let url = format!("{}/v1/sql", base_url.trim_end_matches('/'));
    let mut out = Vec::new();
    for q in queries {
        let run = || -> Result<(Vec<u8>, f64), Error> {
            let started = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/sql")
                .body(q.sql.clone())
                .send()?;
            let status = response.status();
            let body = response.bytes()?.to_vec();
            let secs = started.elapsed().as_secs_f64();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(format!("query {}: HTTP {status}: {text}", q.name).into());
            }
            Ok((body, secs))
        };
        let (body, _) = run()?;
        let rows = json_rows(&body);
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(run()?.1);
        }
        let t = Timing::of(samples, rows);
        eprintln!(
            "query bench: http {:<40} median {:8.2} ms, p99 {:8.2} ms, {rows:?} rows",
            q.name, t.median_ms, t.p99_ms
        );
        out.push(t);
    }
    Ok(out)
}

/// Each query's `EXPLAIN ANALYZE` through the server, to stderr: the plan
/// the server runs (its own table providers and session), not the direct
/// session's.
fn http_explain(base_url: &str, token: &str, queries: &[Query]) -> Result<(), Error> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let url = format!("{}/v1/sql", base_url.trim_end_matches('/'));
    for q in queries {
        // Once first, so the plan shows warm caches as the timed runs see them.
        client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/sql")
            .body(q.sql.clone())
            .send()?
            .bytes()?;
        let response = client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/sql")
            .body(format!("EXPLAIN ANALYZE {}", q.sql))
            .send()?;
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes()?)?;
        if !status.is_success() {
            return Err(format!("explain {}: HTTP {status}: {body}", q.name).into());
        }
        let rows = match &body {
            Value::Array(rows) => rows.clone(),
            Value::Object(o) => o
                .get("rows")
                .or_else(|| o.get("data"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        eprintln!("query bench: explain {}", q.name);
        for row in rows {
            eprintln!("{}", row["plan"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// The rows of a JSON response, whichever of the usual shapes it has: an
/// array of rows, `{"rows": [...]}` or `{"data": [...]}`, or one object per line.
fn json_rows(body: &[u8]) -> Option<usize> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(rows)) => Some(rows.len()),
        Ok(Value::Object(o)) => ["rows", "data"]
            .iter()
            .find_map(|k| o.get(*k)?.as_array().map(Vec::len)),
        Ok(_) => None,
        Err(_) => {
            let lines = body.split(|b| *b == b'\n');
            let rows: Option<Vec<Value>> = lines
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).ok())
                .collect();
            rows.map(|r| r.len())
        }
    }
}

/// `pathflow serve` over the dataset, in this process: HTTP on a free
/// loopback port, no Postgres listener, one analyst token made up for this
/// run, default limits, the audit log in the dataset's directory.
struct BenchServer {
    url: String,
    secret: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), pathflow_query::serve::ServeError>>,
}

impl BenchServer {
    fn start(runtime: &tokio::runtime::Runtime, tables: &Path, dir: &Path) -> Result<Self, Error> {
        use pathflow_query::auth::TokenHash;
        use pathflow_query::config::TokenConfig;
        let location = tables.to_str().ok_or("the tables location is not UTF-8")?;
        let mut cfg = pathflow_query::ServeConfig::new(location);
        cfg.http.listen = "127.0.0.1:0".into();
        cfg.postgres.listen = String::new();
        cfg.audit.path = Some(dir.join("bench-audit.jsonl"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let secret = format!("bench-only-{}-{nanos}", std::process::id());
        cfg.tokens = vec![TokenConfig {
            name: "query-bench".into(),
            hash: TokenHash::of(&secret),
            role: pathflow_query::Role::Analyst,
            practices: Vec::new(),
            treatment_functions: Vec::new(),
        }];
        // `PATHFLOW_BENCH_QUERY_SET="key=value;key=value"`: the server's
        // `[datafusion]` options to try.
        if let Ok(settings) = std::env::var("PATHFLOW_BENCH_QUERY_SET") {
            for setting in settings.split(';').filter(|s| !s.trim().is_empty()) {
                let (key, value) = setting
                    .split_once('=')
                    .ok_or("PATHFLOW_BENCH_QUERY_SET: key=value")?;
                eprintln!(
                    "query bench: [datafusion] {} = {}",
                    key.trim(),
                    value.trim()
                );
                cfg.datafusion
                    .insert(key.trim().into(), value.trim().into());
            }
        }
        cfg.validate()?;
        let bound = runtime.block_on(pathflow_query::serve::bind(
            &cfg,
            pathflow_query::metrics::QueryMetrics::new(),
        ))?;
        let url = format!("http://{}", bound.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn(pathflow_query::serve::serve(bound, async move {
            let _ = stopped.await;
        }));
        eprintln!("query bench: pathflow serve listening at {url}");
        Ok(BenchServer {
            url,
            secret,
            stop,
            served,
        })
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        match runtime.block_on(self.served) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("query bench: the server stopped with an error: {e}"),
            Err(e) => eprintln!("query bench: the server task failed: {e}"),
        }
    }
}

// ==== end of HTTP ===========================================================

/// Each query through DuckDB over the same Parquet files, by name.
fn duckdb_latencies(
    location: &Path,
    queries_file: &Path,
    only: Option<&str>,
    runs: usize,
) -> Result<BTreeMap<String, Timing>, Error> {
    let python = std::env::var("PATHFLOW_BENCH_QUERY_PYTHON").unwrap_or("python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_bench.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(location)
        .arg(queries_file)
        .args(["--runs", &runs.to_string()]);
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{python} {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status).into());
    }
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout)?;
    let mut timings = BTreeMap::new();
    for (name, v) in parsed {
        let get = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let rows = v.get("rows").and_then(Value::as_u64).map(|r| r as usize);
        timings.insert(
            name,
            Timing {
                median_ms: get("median_ms"),
                p99_ms: get("p99_ms"),
                rows,
                plan_ms: None,
            },
        );
    }
    Ok(timings)
}

// ---- the dataset ----------------------------------------------------------

/// The peak resident set of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The resident set of this process now, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Reads every feed of the simulator's output as the connectors would (bad
/// records and opt-outs dropped) and sends the events in chunks of [`CHUNK`].
fn read_feeds(sim: &Path, chunks: SyncSender<Vec<Event>>) -> Result<usize, Error> {
    let pseudonymiser = Pseudonymiser::for_tests("pathflow-bench");
    let reference = sim.join("reference");
    let opt_out = OptOutList::load(&reference.join("national_data_opt_out.csv"))?;
    let deprivation = DeprivationLookup::load(&reference.join("postcode_deprivation.csv"))?;
    let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")?.to_utc();
    let mut total = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    for (source, format, path) in pathflow_ingest::simulated::feeds(sim) {
        let cx = Context {
            pseudonymiser: &pseudonymiser,
            opt_out: &opt_out,
            deprivation: &deprivation,
            source: SourceName::parse(&source)?,
            recorded_at,
        };
        let name = path.display().to_string();
        let file = BufReader::new(std::fs::File::open(&path)?);
        for (_, outcome) in records(format, file, &name, &cx) {
            if let Outcome::Events(events) = outcome {
                total += events.len();
                chunk.extend(events);
                if chunk.len() >= CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    chunks.send(full)?;
                }
            }
        }
    }
    if !chunk.is_empty() {
        chunks.send(chunk)?;
    }
    Ok(total)
}

/// Simulates the ICB and builds every table under `dir/tables`; returns the
/// manifest (also written to `dir/dataset.json`, last).
fn build_dataset(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    population: u32,
    weeks: u32,
) -> Result<Value, Error> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let sim = dir.join("sim");
    let tables = dir.join("tables");
    let started = Instant::now();

    let mut cfg = pathflow_simulate::SimConfig::new(sim.clone());
    cfg.population = population;
    cfg.weeks = weeks;
    cfg.run_in_weeks = weeks.min(52);
    cfg.seed = SEED;
    pathflow_simulate::run(&cfg, &|_| {})?;
    let simulate_s = started.elapsed().as_secs_f64();
    eprintln!("query bench: simulated {population} patients x {weeks} weeks in {simulate_s:.1} s");

    // The connectors' work on one thread, bronze commits on this one.
    let bronze_started = Instant::now();
    let (tx, rx) = sync_channel::<Vec<Event>>(1);
    let reader = {
        let sim = sim.clone();
        std::thread::spawn(move || read_feeds(&sim, tx).map_err(|e| e.to_string()))
    };
    let commits = runtime.block_on(async {
        let mut bronze = Appender::open(&tables, TOPIC).await;
        let mut commits = 0;
        let mut events = 0;
        for chunk in rx {
            bronze.append(&chunk).await;
            commits += 1;
            events += chunk.len();
            eprintln!(
                "query bench: bronze commit {commits}: {events} events, {:.0} s, peak RSS {:.0} MiB",
                bronze_started.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        commits
    });
    let events = reader.join().map_err(|_| "the feed reader panicked")??;
    let bronze_s = bronze_started.elapsed().as_secs_f64();
    let bronze_rss = peak_rss_mib();
    std::fs::remove_dir_all(&sim)?;

    reset_peak_rss();
    let derive_started = Instant::now();
    let location = tables.to_str().ok_or("the tables location is not UTF-8")?;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(5) {
                    eprintln!(
                        "query bench: deriving, {:.0} s: RSS {:.0} MiB",
                        derive_started.elapsed().as_secs_f64(),
                        rss_mib()
                    );
                    last = Instant::now();
                }
            }
        })
    };
    let report = runtime.block_on(async {
        let mut deriver = Deriver::open(location, &HashMap::new()).await?;
        deriver.catch_up().await
    });
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let report = report?;
    let derive_s = derive_started.elapsed().as_secs_f64();
    let derive_rss = peak_rss_mib();
    eprintln!(
        "query bench: derived {} events in {derive_s:.1} s, peak RSS {derive_rss:.0} MiB",
        report.events
    );

    let manifest = json!({
        "population": population,
        "weeks": weeks,
        "run_in_weeks": cfg.run_in_weeks,
        "seed": SEED,
        "events": events,
        "bronze_commits": commits,
        "simulate_s": simulate_s,
        "bronze_s": bronze_s,
        "bronze_peak_rss_mib": bronze_rss,
        "derive_s": derive_s,
        "derive_peak_rss_mib": derive_rss,
        "total_s": started.elapsed().as_secs_f64(),
    });
    let mut f = std::fs::File::create(dir.join("dataset.json"))?;
    f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(manifest)
}

/// Rows, current data files and their bytes of one table (from its Delta
/// log), and every byte under its directory (removed files and the log too).
struct TableSize {
    rows: usize,
    files: usize,
    bytes: u64,
    on_disk: u64,
}

fn du(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn table_sizes(
    runtime: &tokio::runtime::Runtime,
    location: &Path,
) -> Result<Vec<(&'static str, TableSize)>, Error> {
    let names = std::iter::once(pathflow_transform::BRONZE_TABLE)
        .chain(Derived::all().into_iter().map(Derived::name));
    let mut out = Vec::new();
    for name in names {
        let at = location.join(name);
        let url = deltalake::ensure_table_uri(at.to_str().ok_or("not UTF-8")?)?;
        let table = runtime.block_on(deltalake::DeltaTableBuilder::from_url(url)?.load())?;
        let snapshot = table.snapshot()?;
        let mut size = TableSize {
            rows: 0,
            files: 0,
            bytes: 0,
            on_disk: du(&at),
        };
        for f in snapshot.log_data().iter() {
            size.rows += f.num_records().unwrap_or(0);
            size.files += 1;
            size.bytes += u64::try_from(f.size()).unwrap_or(0);
        }
        out.push((name, size));
    }
    Ok(out)
}

fn planning(t: &Timing) -> String {
    t.plan_ms.map_or("–".to_string(), |p| format!("{p:.2}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---- main -----------------------------------------------------------------

fn main() -> Result<(), Error> {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let population: u32 = env_or("PATHFLOW_BENCH_QUERY_POPULATION", 1_500_000);
    let weeks: u32 = env_or("PATHFLOW_BENCH_QUERY_WEEKS", 52);
    let runs: usize = env_or("PATHFLOW_BENCH_QUERY_RUNS", 50).max(1);
    let only = std::env::var("PATHFLOW_BENCH_QUERY_ONLY").ok();
    let explain = std::env::var_os("PATHFLOW_BENCH_QUERY_EXPLAIN").is_some();
    let root = std::env::var_os("PATHFLOW_BENCH_QUERY_DATA")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/pathflow/bench-query-data"))
        })
        .ok_or("set PATHFLOW_BENCH_QUERY_DATA or HOME")?;
    let dir = root.join(format!("p{population}-w{weeks}-s{SEED}"));
    let tables = dir.join("tables");
    let runtime = tokio::runtime::Runtime::new()?;

    let manifest = match std::fs::read(dir.join("dataset.json")) {
        Ok(bytes) => {
            eprintln!("query bench: reusing the dataset at {}", dir.display());
            serde_json::from_slice(&bytes)?
        }
        Err(_) => {
            eprintln!("query bench: building the dataset at {}", dir.display());
            build_dataset(&runtime, &dir, population, weeks)?
        }
    };
    println!(
        "query bench: dataset {population} patients x {weeks} weeks (+{} weeks of hospital run-in), \
         {} events; built in {:.0} s (simulate {:.0} s, connectors + bronze {:.0} s in {} commits, \
         derive {:.0} s at peak RSS {:.0} MiB); tables at {}",
        manifest["run_in_weeks"],
        manifest["events"],
        manifest["total_s"].as_f64().unwrap_or(f64::NAN),
        manifest["simulate_s"].as_f64().unwrap_or(f64::NAN),
        manifest["bronze_s"].as_f64().unwrap_or(f64::NAN),
        manifest["bronze_commits"],
        manifest["derive_s"].as_f64().unwrap_or(f64::NAN),
        manifest["derive_peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        tables.display()
    );
    println!();
    println!(
        "| table | rows | current files | current MiB | MiB on disk |\n|---|---:|---:|---:|---:|"
    );
    for (name, s) in table_sizes(&runtime, &tables)? {
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} |",
            s.rows,
            s.files,
            mib(s.bytes),
            mib(s.on_disk)
        );
    }
    println!();

    let queries_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/queries.sql");
    let mut text = String::new();
    std::fs::File::open(&queries_file)?.read_to_string(&mut text)?;
    let mut queries = parse_queries(&text);
    if let Some(only) = &only {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        queries.retain(|q| wanted.contains(&q.name.as_str()));
    }

    // Over HTTP by default, as an analyst's script would reach the tables:
    // the real server, started here over the dataset, unless
    // `PATHFLOW_BENCH_QUERY_URL` names one already running or
    // `PATHFLOW_BENCH_QUERY_DIRECT=1` asks for DataFusion called directly.
    let direct = std::env::var_os("PATHFLOW_BENCH_QUERY_DIRECT").is_some();
    let (label, ours) = match std::env::var("PATHFLOW_BENCH_QUERY_URL") {
        Ok(url) => {
            let token = std::env::var("PATHFLOW_BENCH_QUERY_TOKEN").unwrap_or_default();
            (
                "pathflow HTTP",
                http_latencies(&url, &token, &queries, runs)?,
            )
        }
        Err(_) if direct => (
            "DataFusion direct",
            datafusion_latencies(&runtime, &tables, &queries, runs, explain)?,
        ),
        Err(_) => {
            let server = BenchServer::start(&runtime, &tables, &dir)?;
            let explained = match explain {
                true => http_explain(&server.url, &server.secret, &queries),
                false => Ok(()),
            };
            let timings = explained
                .and_then(|()| http_latencies(&server.url, &server.secret, &queries, runs));
            server.stop(&runtime);
            ("pathflow HTTP", timings?)
        }
    };
    let duck = duckdb_latencies(&tables, &queries_file, only.as_deref(), runs)?;

    println!(
        "query bench: {label} against DuckDB (Python), {runs} warm runs each (ms; p99 nearest rank)"
    );
    println!();
    println!(
        "| query | {label} median | p99 | of which planning | DuckDB median | p99 | ratio | rows |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut ratios = Vec::new();
    for (q, t) in queries.iter().zip(&ours) {
        let Some(d) = duck.get(&q.name) else {
            println!(
                "| {} | {:.2} | {:.2} | {} | – | – | – | |",
                q.name,
                t.median_ms,
                t.p99_ms,
                planning(t)
            );
            continue;
        };
        let ratio = t.median_ms / d.median_ms;
        ratios.push(ratio);
        let rows = match (t.rows, d.rows) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (a, b) => format!("**{a:?} vs {b:?}**"),
        };
        println!(
            "| {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {ratio:.2} | {rows} |",
            q.name,
            t.median_ms,
            t.p99_ms,
            planning(t),
            d.median_ms,
            d.p99_ms
        );
    }
    if !ratios.is_empty() {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let within = ratios.iter().filter(|r| **r <= 1.0).count();
        println!();
        println!(
            "query bench: ratio of medians: geometric mean {geo:.2}, median {:.2}, worst {:.2}; \
             {within} of {} queries at or under 1.0x DuckDB",
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            ratios.len()
        );
    }
    Ok(())
}
