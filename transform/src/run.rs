//! `pathflow transform`: a consumer group over the event topics that commits
//! the bronze table on a size-or-latency trigger, exactly once (the offsets
//! ride in the table commit, [`crate::commit`]).
//!
//! The loop: read messages; skip any at or before the offset the table holds
//! for its partition (a restart, or a rebalance that hands over a partition
//! another instance already committed); add the rest to the open batch (a
//! message that is not an event still advances its partition, and is
//! counted); commit when the batch has `max_rows` rows or `max_latency_ms`
//! has passed since its first message. After a commit, Kafka's own offsets
//! are committed too, only so lag shows in the usual tools. When another
//! instance committed a partition first, the batch is dropped, the
//! partitions are re-read from the table and sought to where it ends.
//!
//! Beside the loop, on its own thread, a [`Deriver`] follows the bronze
//! table and commits the state and gold tables (`[derive]`): woken by each
//! bronze commit, and every `interval_ms` to pick up other instances'
//! commits. [`rebuild`] recomputes them from bronze alone.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

use rdkafka::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::bronze::{BronzeBatchBuilder, MessageRef};
use crate::commit::{BronzeConfig, BronzeWriter, CommitError, Offsets, ResumeAt, TopicPartition};
use crate::derive::{DeriveError, DeriveReport, Deriver};

/// The transform configuration (one TOML file; every key documented in
/// `deploy/transform.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Where to read from.
    pub kafka: KafkaSource,
    /// Where the tables live.
    pub tables: TablesConfig,
    /// When to commit.
    #[serde(default)]
    pub commit: CommitTrigger,
    /// Where `/metrics` is served, when wanted.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The state and gold tables.
    #[serde(default)]
    pub derive: DeriveConfig,
}

/// `[derive]`: the state and gold tables, folded from bronze.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveConfig {
    /// Derive in this instance. Every instance may (their commits never
    /// clash: each says which bronze version it reflects), but one is enough.
    #[serde(default = "default_derive_enabled")]
    pub enabled: bool,
    /// How often to look for bronze commits made by other instances.
    #[serde(default = "default_derive_interval_ms")]
    pub interval_ms: u64,
    /// A local directory for the deriver's scratch store of per-entity state
    /// (the system's temporary directory when not set).
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
}

impl DeriveConfig {
    /// Where the deriver's scratch store goes.
    pub fn scratch(&self) -> PathBuf {
        self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

fn default_derive_enabled() -> bool {
    true
}
fn default_derive_interval_ms() -> u64 {
    2_000
}

impl Default for DeriveConfig {
    fn default() -> Self {
        Self {
            enabled: default_derive_enabled(),
            interval_ms: default_derive_interval_ms(),
            scratch_dir: None,
        }
    }
}

/// The event topics and the consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Prefix of the event topics: `<prefix>.referral`, `.advice`, `.appointment`, `.followup`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// The consumer group; instances in one group share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How long the group waits for an instance that stopped without leaving
    /// before handing its partitions to the others (librdkafka's default).
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
}

fn default_session_timeout() -> u32 {
    45_000
}

fn default_prefix() -> String {
    "pathflow".into()
}
fn default_group() -> String {
    "pathflow-transform".into()
}

/// Where the tables live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// A directory, or an object-store URL; the bronze table is `<location>/events`.
    pub location: String,
}

/// The size-or-latency trigger of a commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitTrigger {
    /// Commit once the open batch has this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Commit once this long has passed since the open batch's first message.
    #[serde(default = "default_max_latency_ms")]
    pub max_latency_ms: u64,
}

fn default_max_rows() -> usize {
    50_000
}
fn default_max_latency_ms() -> u64 {
    3_000
}

impl Default for CommitTrigger {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            max_latency_ms: default_max_latency_ms(),
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `0.0.0.0:9465`.
    pub listen: SocketAddr,
}

impl TransformConfig {
    /// Reads and checks `path`; a mistake names the key and what to write.
    pub fn load(path: &Path) -> Result<Self, TransformError> {
        let text = std::fs::read_to_string(path).map_err(|source| TransformError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML `text` (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, TransformError> {
        let cfg: TransformConfig = toml::from_str(text).map_err(|e| TransformError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if cfg.derive.interval_ms == 0 {
            return Err(TransformError::Config {
                path: path.to_path_buf(),
                message: "`derive.interval_ms` must be at least 1".into(),
            });
        }
        if cfg.commit.max_rows == 0 || cfg.commit.max_latency_ms == 0 {
            return Err(TransformError::Config {
                path: path.to_path_buf(),
                message: "`commit.max_rows` and `commit.max_latency_ms` must be at least 1".into(),
            });
        }
        Ok(cfg)
    }

    /// The event topics read.
    pub fn topics(&self) -> Vec<String> {
        pathflow_schemas::Family::ALL
            .iter()
            .map(|f| format!("{}.{}", self.kafka.topic_prefix, f.name()))
            .collect()
    }

    /// The bronze table's location.
    pub fn bronze_location(&self) -> String {
        format!(
            "{}/{}",
            self.tables.location.trim_end_matches('/'),
            crate::BRONZE_TABLE
        )
    }
}

/// Why the transform could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The config does not parse or has a wrong value.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read, or a port bound.
    #[error("{path}: {source}")]
    Io {
        /// The file or address.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Kafka refused.
    #[error("Kafka at {brokers}: {source}; check `kafka.brokers` and that the topics exist")]
    Kafka {
        /// The configured brokers.
        brokers: String,
        /// Why.
        source: rdkafka::error::KafkaError,
    },
    /// The table could not be written.
    #[error(transparent)]
    Commit(Box<CommitError>),
    /// The derived tables could not be made.
    #[error("deriving the state and gold tables: {0}")]
    Derive(Box<DeriveError>),
}

impl From<DeriveError> for TransformError {
    fn from(e: DeriveError) -> Self {
        TransformError::Derive(Box::new(e))
    }
}

impl From<CommitError> for TransformError {
    fn from(e: CommitError) -> Self {
        TransformError::Commit(Box::new(e))
    }
}

/// The transform's metrics, defined once.
#[derive(Clone)]
pub struct TransformMetrics {
    registry: Registry,
    lag: IntGaugeVec,
    commits: IntCounterVec,
    rows: IntCounterVec,
    rejected: IntCounter,
    skipped: IntCounter,
    conflicts: IntCounter,
    commit_seconds: Histogram,
    freshness: IntGaugeVec,
    derive_seconds: Histogram,
    derive_failures: IntCounter,
    derived_version: IntGaugeVec,
}

impl Default for TransformMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TransformMetrics {
    /// Every transform metric, in a registry of its own.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registering fresh metrics with distinct names in a fresh registry cannot fail.
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            let _ = r.register(Box::new(m.clone()));
            m
        }
        fn expect<T>(what: &'static str) -> impl FnOnce(prometheus::Error) -> T {
            move |e| unreachable!("{what}: {e}")
        }
        TransformMetrics {
            lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pathflow_transform_consumer_lag_messages",
                        "Messages in the partition after the last one committed to the tables.",
                    ),
                    &["topic", "partition"],
                )
                .unwrap_or_else(expect("lag")),
            ),
            commits: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pathflow_transform_commits_total",
                        "Table commits, by table (bronze: data and Kafka offsets together; \
                         derived: rows and the bronze version they reflect).",
                    ),
                    &["table"],
                )
                .unwrap_or_else(expect("commits")),
            ),
            rows: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pathflow_transform_rows_written_total",
                        "Rows written, by table.",
                    ),
                    &["table"],
                )
                .unwrap_or_else(expect("rows")),
            ),
            rejected: reg(
                &registry,
                IntCounter::new(
                    "pathflow_transform_rejected_messages_total",
                    "Messages on the event topics that are not events (their offsets still advance).",
                )
                .unwrap_or_else(expect("rejected")),
            ),
            skipped: reg(
                &registry,
                IntCounter::new(
                    "pathflow_transform_skipped_messages_total",
                    "Messages read again after a restart or rebalance and skipped: the table already holds them.",
                )
                .unwrap_or_else(expect("skipped")),
            ),
            conflicts: reg(
                &registry,
                IntCounter::new(
                    "pathflow_transform_commit_conflicts_total",
                    "Batches dropped because another instance committed their partitions first.",
                )
                .unwrap_or_else(expect("conflicts")),
            ),
            commit_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pathflow_transform_commit_duration_seconds",
                        "Time to write a batch's files and commit them with their offsets.",
                    )
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )
                .unwrap_or_else(expect("commit duration")),
            ),
            freshness: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pathflow_transform_newest_event_timestamp_seconds",
                        "occurred_at of the newest event committed, by table (freshness = time() - this).",
                    ),
                    &["table"],
                )
                .unwrap_or_else(expect("freshness")),
            ),
            derive_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pathflow_transform_derive_duration_seconds",
                        "Time to fold new bronze versions and commit the state and gold rows they change.",
                    )
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]),
                )
                .unwrap_or_else(expect("derive duration")),
            ),
            derive_failures: reg(
                &registry,
                IntCounter::new(
                    "pathflow_transform_derive_failures_total",
                    "Derivation steps that failed (each is retried from the bronze table).",
                )
                .unwrap_or_else(expect("derive failures")),
            ),
            derived_version: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pathflow_transform_table_version",
                        "Bronze version the tables reflect, by table (bronze: its own version).",
                    ),
                    &["table"],
                )
                .unwrap_or_else(expect("table version")),
            ),
            registry,
        }
    }

    /// Records one derivation step.
    fn derived(&self, report: &DeriveReport, newest_event: Option<i64>) {
        self.derive_seconds.observe(report.seconds);
        // A table is in `rows` when it was committed (if only its `txn`).
        for (table, rows) in &report.rows {
            self.rows.with_label_values(&[table]).inc_by(*rows as u64);
            self.commits.with_label_values(&[table]).inc();
        }
        let Some(version) = report.bronze_version else {
            return;
        };
        for d in crate::derive::Derived::all() {
            let v = i64::try_from(version).unwrap_or(i64::MAX);
            self.derived_version.with_label_values(&[d.name()]).set(v);
            if let Some(t) = newest_event {
                self.freshness.with_label_values(&[d.name()]).set(t);
            }
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The registry, to serve beside other stages' metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The open batch: rows, and the last offset read per partition.
struct OpenBatch {
    builder: BronzeBatchBuilder,
    offsets: Offsets,
    since: Option<Instant>,
}

impl OpenBatch {
    fn new() -> Self {
        OpenBatch {
            builder: BronzeBatchBuilder::new(),
            offsets: Offsets::new(),
            since: None,
        }
    }
}

/// Notes each rebalance, so partitions are looked up in the table again
/// (another instance may have committed them meanwhile).
#[derive(Clone, Default)]
struct Rebalances(Arc<AtomicBool>);

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        // Which partitions this instance holds is the first question when a
        // partition's lag grows while the others drain.
        match r {
            Rebalance::Assign(list) => {
                let names: Vec<String> = list
                    .elements()
                    .iter()
                    .map(|e| format!("{}:{}", e.topic(), e.partition()))
                    .collect();
                eprintln!("transform: assigned {}", names.join(", "));
            }
            Rebalance::Revoke(list) => {
                eprintln!("transform: {} partitions revoked", list.count());
            }
            Rebalance::Error(e) => eprintln!("transform: rebalance failed: {e}"),
        }
        self.0.store(true, Ordering::Release);
    }
}

/// Runs the transform until `shutdown` resolves (the open batch is then
/// committed first), or until an error it cannot ride out.
pub async fn run(
    cfg: &TransformConfig,
    metrics: &TransformMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TransformError> {
    let kafka = |source| TransformError::Kafka {
        brokers: cfg.kafka.brokers.clone(),
        source,
    };
    let rebalanced = Rebalances::default();
    let consumer: StreamConsumer<Rebalances> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka pre-fetches up to 64 MB by default; a commit holds at
        // most `max_rows` rows, so 16 MB ahead keeps the consumer fed at a
        // quarter of the memory.
        .set("queued.max.messages.kbytes", "16384")
        .set(
            "session.timeout.ms",
            cfg.kafka.session_timeout_ms.to_string(),
        )
        // Three heartbeats a session, as Kafka advises: librdkafka's fixed
        // 3 s default would let a short session lapse between beats and
        // rebalance the group over and over, each time restarting every
        // partition's fetch from its committed offset.
        .set(
            "heartbeat.interval.ms",
            (cfg.kafka.session_timeout_ms / 3).max(1).to_string(),
        )
        .create_with_context(rebalanced.clone())
        .map_err(kafka)?;
    let topics = cfg.topics();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(kafka)?;
    let mut writer = BronzeWriter::open(&BronzeConfig::new(
        cfg.bronze_location(),
        &cfg.kafka.group_id,
    ))
    .await?;
    let deriving = if cfg.derive.enabled {
        Some(DeriveTask::start(
            cfg.tables.location.clone(),
            cfg.derive.scratch(),
            Duration::from_millis(cfg.derive.interval_ms),
            metrics.clone(),
        )?)
    } else {
        None
    };
    let max_latency = Duration::from_millis(cfg.commit.max_latency_ms);
    let mut batch = OpenBatch::new();
    let mut tracked: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let wait = batch
            .since
            .map_or(max_latency, |t| max_latency.saturating_sub(t.elapsed()));
        let message = tokio::select! {
            () = &mut shutdown => {
                flush(&mut writer, &consumer, &mut batch, metrics).await?;
                if let Some(task) = deriving {
                    // One last step, so the derived tables include the final batch.
                    task.finish();
                }
                return Ok(());
            }
            m = tokio::time::timeout(wait, consumer.recv()) => m,
        };
        if rebalanced.0.swap(false, Ordering::AcqRel) {
            tracked.clear();
        }
        match message {
            Ok(Ok(m)) => {
                let tp = (m.topic().to_string(), m.partition());
                if !tracked.contains_key(&tp) {
                    // First message of a partition since start-up or a rebalance:
                    // where does the table say it ends?
                    let at = writer.track([tp.clone()]).await?;
                    let next = match at.get(&tp) {
                        Some(ResumeAt::Offset(o)) => *o,
                        _ => 0,
                    };
                    tracked.insert(tp.clone(), next);
                }
                if m.offset() < tracked[&tp] {
                    metrics.skipped.inc();
                } else {
                    let msg = MessageRef {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload(),
                    };
                    if batch.builder.push_message(&msg).is_err() {
                        metrics.rejected.inc();
                    }
                    batch.offsets.insert(tp.clone(), m.offset());
                    batch.since.get_or_insert_with(Instant::now);
                    tracked.insert(tp, m.offset() + 1);
                }
            }
            // A consumer error (a broker down, a rebalance) is ridden out: librdkafka retries.
            Ok(Err(e)) => {
                eprintln!("transform: consumer: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {}
        }
        let due = batch.builder.len() >= cfg.commit.max_rows
            || batch.since.is_some_and(|t| t.elapsed() >= max_latency);
        if due {
            match flush(&mut writer, &consumer, &mut batch, metrics).await {
                Ok(()) => {
                    if let Some(task) = &deriving {
                        task.wake();
                    }
                }
                Err(TransformError::Commit(e))
                    if matches!(
                        *e,
                        CommitError::Conflict { .. }
                            | CommitError::AlreadyCommitted { .. }
                            | CommitError::RowOutsideOffsets { .. }
                    ) =>
                {
                    // Another instance got there first: start these partitions
                    // again from where the table now says they end.
                    metrics.conflicts.inc();
                    let partitions: Vec<TopicPartition> = batch.offsets.keys().cloned().collect();
                    batch = OpenBatch::new();
                    let at = writer.track(partitions).await?;
                    for (tp, resume) in at {
                        let next = match resume {
                            ResumeAt::Offset(o) => o,
                            ResumeAt::Beginning => 0,
                        };
                        let _ = consumer.seek(
                            &tp.0,
                            tp.1,
                            Offset::Offset(next),
                            Duration::from_secs(5),
                        );
                        tracked.insert(tp, next);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Recomputes every state and gold table from the bronze table alone
/// (`pathflow transform --rebuild`), replacing what they hold.
pub async fn rebuild(cfg: &TransformConfig) -> Result<DeriveReport, TransformError> {
    let mut deriver =
        Deriver::open_with_scratch(&cfg.tables.location, &HashMap::new(), &cfg.derive.scratch())
            .await?;
    Ok(deriver.rebuild().await?)
}

/// The deriver's thread: it has a runtime of its own so folding (CPU work)
/// never stalls the consumer, and runs on the other core.
struct DeriveTask {
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl DeriveTask {
    fn start(
        location: String,
        scratch: PathBuf,
        interval: Duration,
        metrics: TransformMetrics,
    ) -> Result<Self, TransformError> {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (w, st) = (wake.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pathflow-derive".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(derive_loop(location, scratch, interval, metrics, w, st)),
                    Err(e) => eprintln!("transform: cannot start the derive runtime: {e}"),
                }
            })
            .map_err(|source| TransformError::Io {
                path: PathBuf::from("(derive thread)"),
                source,
            })?;
        Ok(Self { wake, stop, thread })
    }

    /// Asks for a step now (a bronze commit just landed).
    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes one last step and stops.
    fn finish(self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        let _ = self.thread.join();
    }
}

async fn derive_step(
    deriver: &mut Option<Deriver>,
    location: &str,
    scratch: &Path,
) -> Result<(DeriveReport, Option<i64>), DeriveError> {
    if deriver.is_none() {
        *deriver = Some(Deriver::open_with_scratch(location, &HashMap::new(), scratch).await?);
    }
    let Some(d) = deriver.as_mut() else {
        unreachable!("opened above");
    };
    let report = d.catch_up().await?;
    Ok((report, d.newest_event_seconds()))
}

async fn derive_loop(
    location: String,
    scratch: PathBuf,
    interval: Duration,
    metrics: TransformMetrics,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
) {
    let mut deriver: Option<Deriver> = None;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        match derive_step(&mut deriver, &location, &scratch).await {
            Ok((report, newest)) => metrics.derived(&report, newest),
            Err(e) => {
                metrics.derive_failures.inc();
                eprintln!("transform: {e}; starting again from the bronze table");
                // Its memory may be half a step ahead of the tables: fold again from bronze.
                deriver = None;
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Commits the open batch (if it read anything) and then Kafka's offsets.
async fn flush(
    writer: &mut BronzeWriter,
    consumer: &StreamConsumer<Rebalances>,
    batch: &mut OpenBatch,
    metrics: &TransformMetrics,
) -> Result<(), TransformError> {
    if batch.offsets.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let rows: RecordBatch = batch.builder.finish().map_err(|e| TransformError::Io {
        path: PathBuf::from("(bronze batch)"),
        source: std::io::Error::other(e),
    })?;
    let newest = newest_event(&rows);
    let offsets = std::mem::take(&mut batch.offsets);
    batch.since = None;
    let info = writer.commit(vec![rows], &offsets).await?;
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics
        .commits
        .with_label_values(&[crate::BRONZE_TABLE])
        .inc();
    metrics
        .rows
        .with_label_values(&[crate::BRONZE_TABLE])
        .inc_by(info.rows as u64);
    if let Some(t) = newest {
        metrics
            .freshness
            .with_label_values(&[crate::BRONZE_TABLE])
            .set(t);
    }
    // Kafka's committed offsets follow the table's, for lag monitoring only.
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in &offsets {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(offset + 1));
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(2))
        {
            metrics
                .lag
                .with_label_values(&[topic, &partition.to_string()])
                .set((high - offset - 1).max(0));
        }
    }
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        eprintln!("transform: committing Kafka offsets for lag monitoring: {e}");
    }
    Ok(())
}

/// The newest `occurred_at` in a bronze batch, in seconds since the epoch.
fn newest_event(batch: &RecordBatch) -> Option<i64> {
    let column = batch.column_by_name("occurred_at")?;
    let times = column
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()?;
    let newest = (0..times.len())
        .filter(|&i| times.is_valid(i))
        .map(|i| times.value(i))
        .max()?;
    Some(newest / 1_000_000)
}

/// Serves `GET /metrics` on `listener`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: TransformMetrics,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/transform.example.toml");
        let cfg = TransformConfig::load(&path).unwrap();
        assert_eq!(cfg.commit.max_rows, 50_000);
        assert_eq!(cfg.bronze_location(), "/var/lib/pathflow/tables/events");
        assert_eq!(cfg.topics()[0], "pathflow.referral");
        assert!(cfg.metrics.is_some());
        assert_eq!(cfg.derive.scratch(), Path::new("/var/lib/pathflow/scratch"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = TransformConfig::parse(
            "[kafka]\nbrokers = \"b:9092\"\n[tables]\nlocation = \"/t\"\n[commit]\nmax_rows = 0\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("commit.max_rows") && e.starts_with("t.toml"),
            "{e}"
        );
        let e = TransformConfig::parse(
            "[kafka]\nbroker = \"b:9092\"\n[tables]\nlocation = \"/t\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("broker"), "{e}");
    }
}
