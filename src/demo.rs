//! `pathflow demo`: the whole pipeline on one machine, in one command. It
//! simulates a small ICB, starts librdkafka's in-process mock cluster (or
//! uses `--brokers`), ingests the files, transforms them into the tables and
//! serves SQL over HTTP and the Postgres wire protocol, then prints how to
//! ask it questions. Every stage is the library code the other subcommands
//! run; this module only writes their configs (kept in `--dir`, so each
//! stage can be run again by hand) and waits for one stage to catch up with
//! the one before it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pathflow_ingest::config::{Format, IngestConfig};
use pathflow_ingest::file_connector::Ingest;
use pathflow_query::ServeConfig;
use pathflow_query::auth::TokenHash;
use pathflow_transform::run::{TransformConfig, TransformMetrics};
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;

/// `pathflow demo`'s arguments.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for everything it writes: the simulated files, ingest state,
    /// the key, the configs and the tables. An earlier demo there is replaced.
    #[arg(long, default_value = "out/demo")]
    dir: PathBuf,
    /// Use these Kafka brokers (host:port,...) instead of the in-process mock cluster.
    #[arg(long)]
    brokers: Option<String>,
    /// Where to serve SQL over HTTP, and `/metrics` for every stage.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Where to serve the Postgres wire protocol.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pg: String,
    /// Registered patients in the simulated ICB (at least 2000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2000..))]
    population: u32,
    /// Weeks in the simulated period.
    #[arg(long, default_value_t = 12)]
    weeks: u32,
    /// Exit (0) after one full cycle, once one HTTP query has been answered,
    /// instead of serving until Ctrl-C (for CI).
    #[arg(long)]
    exit_after_cycle: bool,
}

/// The Kafka topic families plus dead letters, as the connectors write them.
const TOPIC_PREFIX: &str = "pathflow";
/// Partitions of each demo topic: the mock cluster keeps 5 MB of each, so several.
const PARTITIONS: i32 = 8;
const GROUP: &str = "pathflow-demo";

/// Runs the demo until Ctrl-C (or after one cycle with `--exit-after-cycle`).
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating --dir {}", args.dir.display()))?;
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving --dir {}", args.dir.display()))?;
    // The tables hold the Kafka offsets they were built from: a fresh log
    // (the mock cluster starts empty) needs fresh tables and checkpoints.
    for stale in ["tables", "ingest", "simulate"] {
        let path = dir.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the earlier demo's {}", path.display()))?;
        }
    }
    progress(&format!("writing everything under {}", dir.display()));

    // 1. A small ICB's source files.
    let sim_out = dir.join("simulate");
    let mut sim = pathflow_simulate::SimConfig::new(sim_out.clone());
    sim.population = args.population;
    sim.weeks = args.weeks;
    let summary =
        pathflow_simulate::run(&sim, &|line: &str| progress(&format!("simulate: {line}")))
            .context("simulating the ICB")?;
    let pair = clinical_pair(&sim_out, &summary)?;

    // 2. Kafka: the mock cluster, or the brokers given.
    let mock;
    let (brokers, prefix) = match &args.brokers {
        Some(b) => {
            // A prefix of its own, so an earlier run's messages are not read again.
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            progress(&format!("using the Kafka brokers at {b}"));
            (b.clone(), format!("{TOPIC_PREFIX}-demo-{secs}"))
        }
        None => {
            mock = MockCluster::new(1).context("starting librdkafka's mock Kafka cluster")?;
            let kafka = pathflow_ingest::kafka::KafkaConfig::new(&mock.bootstrap_servers());
            // The mock cluster has no CreateTopics API: make them on it directly.
            for topic in kafka.topics() {
                mock.create_topic(&topic, PARTITIONS, 1)
                    .with_context(|| format!("creating topic {topic} on the mock cluster"))?;
            }
            progress(&format!(
                "started an in-process mock Kafka cluster at {} (topics {TOPIC_PREFIX}.*)",
                mock.bootstrap_servers()
            ));
            (mock.bootstrap_servers(), TOPIC_PREFIX.to_string())
        }
    };

    // 3. Secrets: a fresh random pseudonymisation key and two tokens.
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let key_file = secrets.join("pseudonymisation.key");
    write_private(&key_file, &format!("{}\n", random_hex(32)?))?;
    let analyst_token = random_hex(24)?;
    let pair_token = random_hex(24)?;

    // 4. The configs, written out so each stage can be rerun by hand.
    let tables = dir.join("tables");
    let ingest_cfg = ingest_config(&dir, &sim_out, &key_file, &brokers, &prefix)?;
    let transform_cfg = transform_config(&dir, &tables, &brokers, &prefix)?;
    let serve_path = serve_config(&dir, &tables, &args, &analyst_token, &pair_token, &pair)?;
    let serve_cfg = ServeConfig::load(&serve_path)?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(pipeline(
        &args,
        started,
        ingest_cfg,
        transform_cfg,
        serve_cfg,
        Ready {
            dir: &dir,
            key_file: &key_file,
            analyst_token: &analyst_token,
            pair_token: &pair_token,
            pair: &pair,
        },
    ));
    // Producer and consumer are gone by now; the mock cluster may go.
    drop(runtime);
    result
}

/// One practice and one treatment function present in the data: the clinical
/// pair whose token the demo prints.
struct Pair {
    practice: String,
    treatment_function: String,
}

fn clinical_pair(sim_out: &Path, summary: &pathflow_simulate::Summary) -> anyhow::Result<Pair> {
    let practices = sim_out.join("reference/practices.csv");
    let text = std::fs::read_to_string(&practices)
        .with_context(|| format!("reading {}", practices.display()))?;
    let practice = text
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .filter(|p| !p.is_empty())
        .with_context(|| format!("{} lists no practice", practices.display()))?
        .to_string();
    // The specialty with the longest waiting list at the end: the most to talk about.
    let treatment_function = summary
        .queues
        .iter()
        .max_by_key(|q| q.waiting_first.last().copied().unwrap_or_default())
        .map(|q| q.treatment_function.to_string())
        .context("the simulation has no hospital specialty")?;
    Ok(Pair {
        practice,
        treatment_function,
    })
}

/// What the "ready" message needs.
struct Ready<'a> {
    dir: &'a Path,
    key_file: &'a Path,
    analyst_token: &'a str,
    pair_token: &'a str,
    pair: &'a Pair,
}

async fn pipeline(
    args: &DemoArgs,
    started: Instant,
    ingest_cfg: IngestConfig,
    transform_cfg: TransformConfig,
    serve_cfg: ServeConfig,
    ready: Ready<'_>,
) -> anyhow::Result<()> {
    let (interrupt_tx, interrupt) = watch::channel(false);
    tokio::spawn(async move {
        let signal = crate::stop_signal().await;
        eprintln!("demo: {signal}, stopping");
        let _ = interrupt_tx.send(true);
    });

    // Served with the query metrics and the ingest's, on one `/metrics`
    // (from when the server starts: until then the progress lines say it).
    let metrics = TransformMetrics::new();
    let (stop_transform, transform_stop) = watch::channel(false);
    let transform = pathflow_transform::run::run(&transform_cfg, &metrics, async move {
        wait_true(transform_stop).await;
    });
    tokio::pin!(transform);

    let rest = async {
        progress("transform: joining the consumer group (the mock cluster takes a few seconds)");
        let Some((events, ingest_metrics)) = ingest(
            ingest_cfg,
            args.brokers.is_some(),
            &metrics,
            interrupt.clone(),
        )
        .await?
        else {
            return Ok(());
        };
        progress(&format!("ingest: done, {events} events in Kafka"));
        if !caught_up(&transform_cfg, &metrics, events, interrupt.clone()).await? {
            return Ok(());
        }
        let cycle = started.elapsed();
        let every_stage = pathflow_query::metrics::QueryMetrics::new()
            .beside(metrics.registry().clone())
            .beside(ingest_metrics);
        let bound = pathflow_query::serve::bind(&serve_cfg, every_stage).await?;
        let (http, pg) = (
            bound.http_addr().to_string(),
            bound
                .postgres_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        let (stop_serving, serving_stop) = watch::channel(false);
        let server = tokio::spawn(pathflow_query::serve::serve(bound, wait_true(serving_stop)));
        print_ready(&ready, &http, &pg, cycle);
        if args.exit_after_cycle {
            let sql = "SELECT count(*) AS rows FROM waits_weekly";
            let answer = http_query(&http, ready.analyst_token, sql).await;
            let _ = stop_serving.send(true);
            let _ = server.await;
            let answer = answer?;
            println!("HTTP query `{sql}` answered:\n{}", answer.trim_end());
            println!("one cycle done; exiting (--exit-after-cycle)");
        } else {
            println!("Serving until Ctrl-C.");
            let _ = std::io::stdout().flush();
            wait_true(interrupt.clone()).await;
            let _ = stop_serving.send(true);
            server.await??;
        }
        Ok::<(), anyhow::Error>(())
    };
    let result = tokio::select! {
        r = &mut transform => return match r {
            Ok(()) => Err(anyhow::anyhow!("the transform stopped before the demo")),
            Err(e) => Err(e).context("transform"),
        },
        r = rest => r,
    };
    // Commits the open batch (if any) and takes a last derive step.
    let _ = stop_transform.send(true);
    transform.await.context("transform")?;
    if result.is_ok() {
        progress(&format!(
            "stopped; the tables stay in {} for `pathflow serve --config {}`",
            ready.dir.join("tables").display(),
            ready.dir.join("serve.toml").display()
        ));
    }
    result
}

/// Sends every simulated file once, as `pathflow ingest` would, and returns
/// the number of events produced and the ingest's metrics (`None`:
/// interrupted first).
///
/// Each file goes through [`Ingest::ingest`] rather than [`Ingest::run`]:
/// `run` first creates the topics with the admin API, which the mock
/// cluster lacks (they are made on it directly instead). Checkpoints are not
/// needed: every demo starts from an empty log and no ingest state.
async fn ingest(
    cfg: IngestConfig,
    real_brokers: bool,
    metrics: &TransformMetrics,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<Option<(u64, prometheus::Registry)>> {
    if real_brokers {
        pathflow_ingest::kafka::ensure_topics(&cfg.kafka).await?;
    }
    let ingest = Ingest::build(cfg)?;
    let mut events = 0;
    for connector in &ingest.config().connectors {
        let files: Vec<PathBuf> = if connector.path.is_dir() {
            let mut files: Vec<PathBuf> = Vec::new();
            for practice in std::fs::read_dir(&connector.path)? {
                for file in std::fs::read_dir(practice?.path())? {
                    files.push(file?.path());
                }
            }
            files.sort();
            files
        } else {
            vec![connector.path.clone()]
        };
        let mut counts = pathflow_ingest::kafka::Counts::default();
        for file in &files {
            if *interrupt.borrow() {
                return Ok(None);
            }
            let name = file
                .strip_prefix(&connector.path)
                .ok()
                .filter(|n| !n.as_os_str().is_empty())
                .or(file.file_name().map(Path::new))
                .unwrap_or(file)
                .display()
                .to_string();
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let batch = ingest
                .ingest(&connector.name, connector.format, &name, &bytes)
                .await?;
            counts.accepted += batch.counts.accepted;
            counts.rejected += batch.counts.rejected;
            counts.opted_out += batch.counts.opted_out;
            counts.events += batch.counts.events;
            counts.duplicates += batch.counts.duplicates;
        }
        let first = events == 0 && counts.events > 0;
        events += counts.events;
        let report = pathflow_ingest::file_connector::FileReport {
            source: connector.name.to_string(),
            file: connector.path.clone(),
            counts: Some(counts),
        };
        progress(&format!("ingest: {report}"));
        // The mock cluster keeps only the newest 5 MB of each partition: wait
        // until the consumer group has joined and reads before sending the rest.
        if first && !bronze_holds(metrics, events, interrupt.clone()).await? {
            return Ok(None);
        }
    }
    Ok(Some((events, ingest.metrics().registry().clone())))
}

/// Waits until the bronze table holds every event produced and every state
/// and gold table reflects that bronze version. `false`: interrupted first.
async fn caught_up(
    cfg: &TransformConfig,
    metrics: &TransformMetrics,
    events: u64,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    if !bronze_holds(metrics, events, interrupt.clone()).await? {
        return Ok(false);
    }
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(250);
    let bronze = pathflow_transform::commit::BronzeWriter::open(
        &pathflow_transform::commit::BronzeConfig::new(cfg.bronze_location(), GROUP),
    )
    .await?
    .version();
    progress(&format!(
        "transform: all {events} events in bronze (version {bronze}); deriving state and gold tables"
    ));
    loop {
        if *interrupt.borrow() {
            return Ok(false);
        }
        let text = metrics.render();
        let behind: Vec<&str> = pathflow_transform::derive::Derived::all()
            .into_iter()
            .map(|d| d.name())
            .filter(|name| {
                let key = format!("pathflow_transform_table_version{{table=\"{name}\"}}");
                metric(&text, &key) < bronze as u64
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            progress(&format!("derive: waiting for {}", behind.join(", ")));
            last_report = Instant::now();
        }
        tokio::time::sleep(tick).await;
    }
    let rows: Vec<String> = pathflow_transform::gold::GoldTable::ALL
        .iter()
        .map(|g| {
            let key = format!(
                "pathflow_transform_rows_written_total{{table=\"{}\"}}",
                g.name()
            );
            format!("{} {}", g.name(), metric(&metrics.render(), &key))
        })
        .collect();
    progress(&format!(
        "derive: caught up; gold rows written: {}",
        rows.join(", ")
    ));
    Ok(true)
}

/// Waits until the bronze table holds `events` events. `false`: interrupted first.
async fn bronze_holds(
    metrics: &TransformMetrics,
    events: u64,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let (mut last_report, mut last_change) = (Instant::now(), Instant::now());
    let mut last = 0;
    loop {
        if *interrupt.borrow() {
            return Ok(false);
        }
        let text = metrics.render();
        // Messages that are not events still advance; none are expected.
        let read = metric(
            &text,
            "pathflow_transform_rows_written_total{table=\"events\"}",
        ) + metric(&text, "pathflow_transform_rejected_messages_total");
        if read >= events {
            return Ok(true);
        }
        if read != last {
            (last, last_change) = (read, Instant::now());
        } else if read > 0 && last_change.elapsed() > Duration::from_secs(60) {
            bail!(
                "the transform has read {read} of the {events} events and nothing more for a minute; \
                 the mock Kafka cluster keeps only the newest 5 MB of each partition, so with a large \
                 --population use a real broker (--brokers)"
            );
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            progress(&format!("transform: {read} of {events} events in bronze"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of the sample named `key` (name and labels, exactly as
/// rendered) in Prometheus' text format; 0 when absent.
fn metric(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .next()
        .unwrap_or(0)
}

fn print_ready(r: &Ready<'_>, http: &str, pg: &str, cycle: Duration) {
    let (pg_host, pg_port) = pg.rsplit_once(':').unwrap_or((pg, "5433"));
    let p = r.pair;
    let mut out = String::new();
    out.push_str(&format!(
        "\npathflow demo is ready (one full cycle took {:.1} s)\n\n",
        cycle.as_secs_f64()
    ));
    out.push_str(&format!(
        "  SQL over HTTP:  http://{http}/v1/sql  (tables: http://{http}/v1/tables)\n"
    ));
    out.push_str(&format!("  Postgres wire:  {pg}\n"));
    out.push_str(&format!(
        "  Metrics:        http://{http}/metrics (ingest, transform, queries and the domain gauges)\n\n"
    ));
    out.push_str("Tokens, for you only (their hashes are in tokens.toml; new ones each run):\n");
    out.push_str(&format!("  export ANALYST_TOKEN={}\n", r.analyst_token));
    out.push_str(&format!(
        "  export PAIR_TOKEN={}   # clinical pair: practice {}, treatment function {}\n\n",
        r.pair_token, p.practice, p.treatment_function
    ));
    out.push_str(&format!(
        "  psql: PGPASSWORD=$ANALYST_TOKEN psql \"host={pg_host} port={pg_port} user=analyst dbname=pathflow\"\n"
    ));
    out.push_str(&format!(
        "  curl: curl -H \"Authorization: Bearer $ANALYST_TOKEN\" --data 'SELECT * FROM waits_weekly LIMIT 5' http://{http}/v1/sql\n\n"
    ));
    out.push_str(&format!(
        "Three questions the clinical pair for practice {} and treatment function {} might ask\n\
         (with PAIR_TOKEN they see only their own rows):\n",
        p.practice, p.treatment_function
    ));
    for (question, sql) in example_queries() {
        out.push_str(&format!("  -- {question}\n  {sql};\n"));
    }
    out.push_str(&format!(
        "\nThe pseudonymisation key was generated at random into {} (synthetic data only).\n\
         Configs for each stage: {}/{{ingest,transform,serve}}.toml; the tables stay in {} after Ctrl-C.\n",
        r.key_file.display(),
        r.dir.display(),
        r.dir.join("tables").display()
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// A clinical pair's first questions, as SQL over the gold tables.
pub fn example_queries() -> [(&'static str, &'static str); 3] {
    [
        (
            "How long are our patients waiting, week by week?",
            "SELECT week_id, waiting_list, median_wait_weeks, p92_wait_weeks, pct_within_18_weeks, over_52_weeks \
             FROM waits_weekly WHERE scope = 'practice_specialty' ORDER BY week_id",
        ),
        (
            "How many referrals and A&G requests do we send, and how many A&G requests become referrals?",
            "SELECT week_id, sum(referrals_received) AS referrals, sum(referrals_returned) AS returned, \
             sum(advice_requests) AS advice_requests, sum(advice_converted) AS advice_converted \
             FROM demand_weekly GROUP BY week_id ORDER BY week_id",
        ),
        (
            "How many follow-ups are overdue, and for how long?",
            "SELECT week_id, sum(due) AS due, sum(due_pifu) AS pifu, sum(overdue) AS overdue, \
             sum(overdue_more_than_6_weeks) AS overdue_over_6_weeks \
             FROM followups_weekly GROUP BY week_id ORDER BY week_id",
        ),
    ]
}

/// POSTs `sql` to the server's `/v1/sql` as CSV, over a plain HTTP/1.0
/// connection (the binary has no HTTP client crate; 1.0 keeps the body unchunked).
async fn http_query(addr: &str, token: &str, sql: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!(
        "POST /v1/sql HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/csv\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .context("the HTTP query took over 60 s")??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("a malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("the HTTP query was answered {status}: {body}");
    }
    Ok(body.to_string())
}

fn ingest_config(
    dir: &Path,
    sim_out: &Path,
    key_file: &Path,
    brokers: &str,
    prefix: &str,
) -> anyhow::Result<IngestConfig> {
    let mut text = format!(
        "# Written by `pathflow demo`; see deploy/ingest.example.toml for every key.\n\
         state_dir = {}\n\n[kafka]\nbrokers = {}\ntopic_prefix = {}\npartitions = {PARTITIONS}\nreplication = 1\n\n\
         [pseudonymisation]\nkey = {{ file = {} }}\nkey_id = \"demo\"\n\n\
         [reference]\nopt_out = {}\npostcode_deprivation = {}\n",
        quoted(&dir.join("ingest").display().to_string()),
        quoted(brokers),
        quoted(prefix),
        quoted(&key_file.display().to_string()),
        quoted(
            &sim_out
                .join("reference/national_data_opt_out.csv")
                .display()
                .to_string()
        ),
        quoted(
            &sim_out
                .join("reference/postcode_deprivation.csv")
                .display()
                .to_string()
        ),
    );
    let mut fhir = false;
    for (name, format, path) in pathflow_ingest::simulated::feeds(sim_out) {
        if format == Format::FhirBundle {
            // One connector for the whole directory of Bundles.
            fhir = true;
            continue;
        }
        if path.is_file() {
            text.push_str(&connector(&name, format_name(format), &path));
        }
    }
    if fhir {
        text.push_str(&connector(
            "gp:fhir",
            "fhir_bundle",
            &sim_out.join("gp/fhir"),
        ));
    }
    let path = dir.join("ingest.toml");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok(IngestConfig::parse(&text, &path)?)
}

fn connector(name: &str, format: &str, path: &Path) -> String {
    format!(
        "\n[[connector]]\nname = {}\nformat = \"{format}\"\npath = {}\n",
        quoted(name),
        quoted(&path.display().to_string())
    )
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::PasReferrals => "pas_referrals",
        Format::PasOutpatientAppointments => "pas_outpatient_appointments",
        Format::PasClinicSlots => "pas_clinic_slots",
        Format::PasFollowups => "pas_followups",
        Format::GpAppointments => "gp_appointments",
        Format::AdviceAndGuidance => "advice_and_guidance",
        Format::FhirBundle => "fhir_bundle",
        Format::NdjsonEvents => "ndjson_events",
    }
}

fn transform_config(
    dir: &Path,
    tables: &Path,
    brokers: &str,
    prefix: &str,
) -> anyhow::Result<TransformConfig> {
    let text = format!(
        "# Written by `pathflow demo`; see deploy/transform.example.toml for every key.\n\
         [kafka]\nbrokers = {}\ntopic_prefix = {}\ngroup_id = \"{GROUP}\"\n\n\
         [tables]\nlocation = {}\n\n[commit]\nmax_rows = 50000\nmax_latency_ms = 1000\n\n\
         [derive]\nenabled = true\ninterval_ms = 1000\n\n\
         # The demo serves these on its --http /metrics; this is for running the stage by hand.\n\
         [metrics]\nlisten = \"127.0.0.1:9465\"\n",
        quoted(brokers),
        quoted(prefix),
        quoted(&tables.display().to_string()),
    );
    let path = dir.join("transform.toml");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok(TransformConfig::parse(&text, &path)?)
}

/// Writes `serve.toml` and `tokens.toml` (hashes only) and returns the former's path.
fn serve_config(
    dir: &Path,
    tables: &Path,
    args: &DemoArgs,
    analyst_token: &str,
    pair_token: &str,
    pair: &Pair,
) -> anyhow::Result<PathBuf> {
    let tokens = format!(
        "# Written by `pathflow demo`: hashes of the tokens it printed.\n\
         [[tokens]]\nname = \"demo-analyst\"\nhash = \"{}\"\nrole = \"analyst\"\n\n\
         [[tokens]]\nname = \"demo-clinical-pair\"\nhash = \"{}\"\nrole = \"clinical_pair\"\n\
         practices = [{}]\ntreatment_functions = [{}]\n",
        TokenHash::of(analyst_token),
        TokenHash::of(pair_token),
        quoted(&pair.practice),
        quoted(&pair.treatment_function),
    );
    write_private(&dir.join("tokens.toml"), &tokens)?;
    let text = format!(
        "# Written by `pathflow demo`; see deploy/serve.example.toml for every key.\n\
         tokens_file = \"tokens.toml\"\n\n[tables]\nlocation = {}\nreload_interval_ms = 500\n\n\
         [http]\nlisten = {}\n\n[postgres]\nlisten = {}\n\n[audit]\npath = {}\n",
        quoted(&tables.display().to_string()),
        quoted(&args.http),
        quoted(&args.pg),
        quoted(&dir.join("audit.jsonl").display().to_string()),
    );
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bytes` random bytes from the operating system, as hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading random bytes from /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn progress(line: &str) {
    eprintln!("demo: {line}");
}
