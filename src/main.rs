//! The `pathflow` command: a thin CLI that wires the crates together.
//! Each subcommand parses its arguments, builds the crate's config and runs it;
//! the work itself lives in the member crates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand};

mod demo;

// The connectors allocate small strings for every event; mimalloc is
// measurably quicker at that than glibc's malloc (BENCHMARKS.md, ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Demand, capacity and waits across the GP / hospital boundary.
#[derive(Parser)]
#[command(name = "pathflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on this machine: simulate, an in-process Kafka, ingest, transform, serve SQL; prints how to query it.
    Demo(demo::DemoArgs),
    /// Write source-side files (GP, PAS, e-RS, FHIR) for a fictional ICB, with synthetic identifiers.
    Simulate(SimulateArgs),
    /// Run the connectors a config names: files read once or watched, HTTP push; events into Kafka (pseudonymised; bad records to the dead-letter topic).
    Ingest {
        /// The TOML config (see deploy/ingest.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Consume the event topics into the tables (bronze, state, gold), exactly once; runs until Ctrl-C.
    Transform {
        /// The TOML config (see deploy/transform.example.toml).
        #[arg(long)]
        config: PathBuf,
        /// Recompute every state and gold table from the bronze table, then exit.
        #[arg(long)]
        rebuild: bool,
    },
    /// Answer SQL over the tables (HTTP and the Postgres wire protocol), with scoped tokens; runs until Ctrl-C.
    Serve(ServeArgs),
    /// Commissioners' extracts from the serve config's [[extracts]]: run one now, or list them with their next run times.
    Extract {
        #[command(subcommand)]
        action: ExtractAction,
    },
    /// Write the JSON Schema of every event type into a directory.
    Schemas {
        /// Directory to write `*.schema.json` into (stale ones are removed).
        #[arg(long, default_value = "schemas/json")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ServeArgs {
    /// The TOML config (see deploy/serve.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<ServeAction>,
}

#[derive(Subcommand)]
enum ServeAction {
    /// Read a token from standard input and print the hash to put in the config's [[tokens]].
    HashToken,
}

#[derive(Subcommand)]
enum ExtractAction {
    /// Run one extract now (outside its schedule), writing its file and manifest.
    Run {
        /// The extract's `name` in the config.
        name: String,
        /// The serve config (see deploy/serve.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// List the extracts with their schedules and next run times.
    List {
        /// The serve config (see deploy/serve.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
}

fn extract(action: ExtractAction) -> anyhow::Result<()> {
    use pathflow_query::extract;
    match action {
        ExtractAction::List { config } => {
            let cfg = pathflow_query::ServeConfig::load(&config)?;
            for line in pathflow_query::schedule::list(&cfg.extracts, chrono::Utc::now()) {
                println!("{line}");
            }
            Ok(())
        }
        ExtractAction::Run { name, config } => {
            let cfg = pathflow_query::ServeConfig::load(&config)?;
            let ex = extract::find(&cfg, &name)
                .map_err(anyhow::Error::msg)?
                .clone();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let delivered = runtime.block_on(async {
                let engine = extract::open_engine(&cfg)
                    .await
                    .context("opening the audit log")?;
                let slot = extract::Slot::Manual(chrono::Utc::now());
                anyhow::Ok(extract::run(&engine, &ex, slot).await?)
            })?;
            eprintln!(
                "extract {name}: {} rows to {} in {} (manifest {})",
                delivered.manifest.rows, ex.destination, delivered.file, delivered.manifest_file
            );
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Output directory (created; an earlier simulate output there is replaced).
    #[arg(long, default_value = "out/simulate")]
    out: PathBuf,
    /// Seed: the same seed and arguments give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Registered patients in the ICB.
    #[arg(long, default_value_t = 250_000)]
    population: u32,
    /// Weeks in the extract period.
    #[arg(long, default_value_t = 52)]
    weeks: u32,
    /// First day of the period (a Monday).
    #[arg(long, default_value = "2025-04-07")]
    start: NaiveDate,
    /// Weeks of hospital history before the period, so lists are in steady state.
    #[arg(long, default_value_t = 52)]
    run_in_weeks: u32,
    /// Acute providers (0: one per 600,000 patients).
    #[arg(long, default_value_t = 0)]
    providers: u32,
    /// Share of practices exporting FHIR R4 Bundles instead of CSV.
    #[arg(long, default_value_t = 0.1)]
    fhir_share: f64,
    /// Share of source rows replaced by a realistic bad record (0 for none).
    #[arg(long, default_value_t = 0.002)]
    bad_record_rate: f64,
    /// First-appointment capacity per specialty as a multiple of demand, e.g. `110=0.8,330=1.2`.
    #[arg(long)]
    capacity: Option<String>,
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let mut cfg = pathflow_simulate::SimConfig::new(args.out);
    cfg.seed = args.seed;
    cfg.population = args.population;
    cfg.weeks = args.weeks;
    cfg.start = args.start;
    cfg.run_in_weeks = args.run_in_weeks;
    cfg.providers = args.providers;
    cfg.fhir_share = args.fhir_share;
    cfg.bad_record_rate = args.bad_record_rate;
    if let Some(spec) = &args.capacity {
        cfg.set_capacities(spec)?;
    }
    pathflow_simulate::run(&cfg, &|line: &str| eprintln!("simulate: {line}"))?;
    Ok(())
}

fn ingest(config: PathBuf) -> anyhow::Result<()> {
    let cfg = pathflow_ingest::config::IngestConfig::load(&config)?;
    let ingest = std::sync::Arc::new(pathflow_ingest::file_connector::Ingest::build(cfg)?);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let shutdown = async {
        // Ctrl-C (or SIGTERM from a supervisor) stops between batches: a batch
        // in progress is abandoned unacknowledged and re-sent on restart.
        let signal = stop_signal().await;
        eprintln!("ingest: {signal}, stopping");
    };
    runtime.block_on(ingest.run(shutdown, |r| eprintln!("ingest: {r}")))?;
    Ok(())
}

fn transform(config: PathBuf, rebuild: bool) -> anyhow::Result<()> {
    use pathflow_transform::run::{TransformConfig, TransformMetrics, run, serve_metrics};
    let cfg = TransformConfig::load(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if rebuild {
        let report = runtime.block_on(pathflow_transform::run::rebuild(&cfg))?;
        let rows: Vec<String> = report
            .rows
            .iter()
            .map(|(table, n)| format!("{table} {n}"))
            .collect();
        eprintln!(
            "transform: rebuilt from bronze version {}: {} events folded in {:.1} s; rows: {}",
            report
                .bronze_version
                .map_or("(none)".to_string(), |v| v.to_string()),
            report.events,
            report.seconds,
            rows.join(", ")
        );
        return Ok(());
    }
    runtime.block_on(async {
        let metrics = TransformMetrics::new();
        if let Some(m) = &cfg.metrics {
            let listener = tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("binding metrics.listen {}", m.listen))?;
            tokio::spawn(serve_metrics(listener, metrics.clone()));
        }
        eprintln!(
            "transform: {} -> {} (group {})",
            cfg.topics().join(", "),
            cfg.bronze_location(),
            cfg.kafka.group_id
        );
        let shutdown = async {
            // Ctrl-C or SIGTERM commits the open batch, then stops.
            let signal = stop_signal().await;
            eprintln!("transform: {signal}, committing the open batch and stopping");
        };
        run(&cfg, &metrics, shutdown).await?;
        Ok(())
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(ServeAction::HashToken) = args.action {
        let mut token = String::new();
        std::io::stdin()
            .read_line(&mut token)
            .context("reading the token from standard input")?;
        let token = token.trim();
        anyhow::ensure!(
            token.len() >= 16,
            "a token needs at least 16 characters; make one with e.g. `head -c 32 /dev/urandom | base64`"
        );
        println!("{}", pathflow_query::auth::TokenHash::of(token));
        return Ok(());
    }
    let config = args.config.context(
        "`pathflow serve` needs --config FILE (see deploy/serve.example.toml), \
         or `pathflow serve hash-token`",
    )?;
    let cfg = pathflow_query::ServeConfig::load(&config)?;
    if cfg.tokens.is_empty() {
        eprintln!(
            "serve: no [[tokens]] are configured, so every request will be refused; \
             add one (see deploy/serve.example.toml)"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let metrics = pathflow_query::metrics::QueryMetrics::new();
        let bound = pathflow_query::serve::bind(&cfg, metrics).await?;
        eprintln!(
            "serve: {} on http://{}{}",
            cfg.tables.location,
            bound.http_addr(),
            bound
                .postgres_addr()
                .map(|a| format!(" and postgres://{a}"))
                .unwrap_or_default()
        );
        pathflow_query::serve::serve(bound, async {
            let signal = stop_signal().await;
            eprintln!("serve: {signal}, finishing the queries running and stopping");
        })
        .await?;
        Ok(())
    })
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM, the signal `docker stop` and
/// Kubernetes send, and names it: every long-running subcommand stops
/// cleanly on either.
pub(crate) async fn stop_signal() -> &'static str {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                s = interrupt => s,
                _ = term.recv() => "terminated",
            },
            Err(_) => interrupt.await,
        }
    }
    #[cfg(not(unix))]
    interrupt.await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Simulate(args) => simulate(args),
        Command::Ingest { config } => ingest(config),
        Command::Transform { config, rebuild } => transform(config, rebuild),
        Command::Serve(args) => serve(args),
        Command::Extract { action } => extract(action),
        Command::Schemas { out } => pathflow_schemas::json_schema::write_schema_files(&out)
            .with_context(|| format!("writing JSON Schemas to {}", out.display()))
            .map(|n| eprintln!("wrote {n} schema files to {}", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pathflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
