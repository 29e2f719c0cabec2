//! The transform benchmarks (issue 4), against a real broker:
//!
//! 1. **Throughput**: events/s from the broker into every table (bronze,
//!    state, gold) by the `pathflow transform` binary, against a bare rdkafka
//!    consumer draining the same topics in the same run. The binary's peak
//!    RSS (`VmHWM`) is sampled while it runs.
//! 2. **Commit duration against history**: the time to commit a small batch
//!    of new events to bronze and derive it, with 1× and with 10× the weeks
//!    of history already in the tables (in-process, no broker).
//!
//! ```sh
//! source scripts/tansu.sh && tansu_start
//! PATHFLOW_BENCH_BROKERS=$PATHFLOW_TEST_BROKERS cargo bench --bench transform
//! ```
//!
//! `PATHFLOW_BENCH_POPULATION` (default 60000) and `PATHFLOW_BENCH_WEEKS`
//! (default 26) size the throughput run's ICB; `PATHFLOW_BENCH_HISTORY_WEEKS`
//! (default 26) is the 1× history of the commit-duration run (10× is ten times
//! as many weeks of the same population, `PATHFLOW_BENCH_HISTORY_POPULATION`,
//! default 10000), measured over `PATHFLOW_BENCH_PROBES` commits of 200 events
//! on each (default 30), the two histories' probes alternating. Each history
//! starts after as many weeks of hospital run-in (at most 52), so the 1×
//! tables already hold a waiting list in steady state: what grows from 1× to
//! 10× is the history, not the workload of a commit. (Until 2026-12-04 the
//! defaults were 20,000 patients and 6 weeks, whose waiting list was still
//! filling.) `PATHFLOW_BENCH_ONLY=history` runs the second part alone,
//! `PATHFLOW_BENCH_ONLY=throughput` the first.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pathflow_ingest::kafka::{KafkaConfig, ensure_topics};
use pathflow_schemas::Event;
use pathflow_transform::derive::Deriver;
use pathflow_transform::testing::Appender;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{produce, simulated};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{label}{nanos}")
}

/// Seconds a bare consumer in its own group takes to read `n` messages of the topics.
fn raw_consume(brokers: &str, topics: &[String], n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("benchraw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("a consumer");
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let started = Instant::now();
    consumer.subscribe(&refs).expect("subscribe");
    let mut seen = 0;
    let mut bytes = 0usize;
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "raw consumer stalled at {seen}"
        );
    }
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64()
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn peak_rss_kib(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Runs the binary until every event is in bronze and the derived tables
/// reflect it; (seconds, peak RSS in KiB).
fn pipeline(brokers: &str, prefix: &str, dir: &Path, n: usize) -> (f64, u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let config = dir.join(unique("transform")).with_extension("toml");
    let tables = dir.join(unique("tables"));
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\ngroup_id = \"{}\"\nsession_timeout_ms = 6000\n[tables]\nlocation = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            unique("benchpipe"),
            tables.display()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .args(["transform", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pathflow transform");
    let mut rss = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        rss = rss.max(peak_rss_kib(&child));
        let text = scrape(port);
        let bronze = metric(
            &text,
            "pathflow_transform_rows_written_total{table=\"events\"}",
        );
        let bronze_version = metric(&text, "pathflow_transform_commits_total{table=\"events\"}");
        let derived = metric(
            &text,
            "pathflow_transform_table_version{table=\"waits_weekly\"}",
        );
        // Every event in bronze, and the deriver at bronze's last version
        // (bronze versions start at 1 after the create: commits = version).
        if bronze as usize >= n && derived >= bronze_version && bronze_version > 0.0 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "pathflow transform exited"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1_800),
            "pipeline stalled"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    rss = rss.max(peak_rss_kib(&child));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&tables);
    (secs, rss)
}

/// The median of `values` (the upper one of an even count).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// One history's tables, with the writer and deriver kept open across probes
/// as `pathflow transform` keeps them.
struct History {
    location: std::path::PathBuf,
    bronze: Appender,
    deriver: Deriver,
    /// Seconds of each probe: the bronze commit, and the whole commit + derive.
    appends: Vec<f64>,
    times: Vec<f64>,
    reports: Vec<pathflow_transform::derive::DeriveReport>,
}

impl History {
    /// Commits `history` to bronze (in commits of 50,000) and derives it.
    async fn build(dir: &Path, history: &[Event]) -> History {
        let location = dir.join(unique("history"));
        let mut deriver = Deriver::open(location.to_str().unwrap(), &Default::default())
            .await
            .expect("deriver");
        let mut bronze = Appender::open(&location, "history").await;
        for part in history.chunks(50_000) {
            bronze.append(part).await;
            deriver.catch_up().await.expect("derive");
        }
        History {
            location,
            bronze,
            deriver,
            appends: Vec::new(),
            times: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Commits one probe to bronze and derives it, timing both.
    async fn probe(&mut self, probe: &[Event]) {
        let started = Instant::now();
        self.bronze.append(probe).await;
        self.appends.push(started.elapsed().as_secs_f64());
        let report = self.deriver.catch_up().await.expect("derive");
        self.times.push(started.elapsed().as_secs_f64());
        self.reports.push(report);
    }

    /// Where a probe's time goes (medians).
    fn breakdown(&self) -> String {
        let ms = |values: Vec<f64>| median(values) * 1e3;
        let reports = &self.reports;
        let mut tables: Vec<String> = Vec::new();
        for d in pathflow_transform::derive::Derived::all() {
            let name = d.name();
            let secs = reports
                .iter()
                .map(|r| r.table_seconds.get(name).copied().unwrap_or(0.0));
            let parts = reports
                .iter()
                .map(|r| r.partitions.get(name).copied().unwrap_or(0) as f64);
            let rows = reports
                .iter()
                .map(|r| r.rows.get(name).copied().unwrap_or(0) as f64);
            let reused = reports
                .iter()
                .map(|r| r.reused.get(name).copied().unwrap_or(0) as f64);
            tables.push(format!(
                "{name} {:.1} ms/{:.0}p/{:.0} rows ({:.0} from files)",
                ms(secs.collect()),
                median(parts),
                median(rows),
                median(reused)
            ));
        }
        format!(
            "bronze commit {:.1} ms, fold {:.1} ms, tables {:.1} ms ({})",
            ms(self.appends.clone()),
            ms(reports.iter().map(|r| r.fold_seconds).collect()),
            ms(reports
                .iter()
                .map(|r| r.table_seconds.values().sum::<f64>())
                .collect()),
            tables.join(", ")
        )
    }
}

fn main() {
    let Ok(brokers) = std::env::var("PATHFLOW_BENCH_BROKERS") else {
        eprintln!("transform bench: set PATHFLOW_BENCH_BROKERS=host:port (see the doc comment)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");

    // 1. Throughput and memory (`PATHFLOW_BENCH_ONLY=history` skips it).
    if std::env::var("PATHFLOW_BENCH_ONLY").as_deref() != Ok("history") {
        let population = env_or("PATHFLOW_BENCH_POPULATION", 60_000);
        let weeks = env_or("PATHFLOW_BENCH_WEEKS", 26);
        let events = simulated(dir.path(), population, weeks, 1);
        let n = events.len();
        let mut kafka = KafkaConfig::new(&brokers);
        kafka.topic_prefix = unique("benchtr");
        kafka.partitions = 2;
        kafka.replication = 1;
        runtime.block_on(ensure_topics(&kafka)).expect("topics");
        produce(&kafka, &events);
        drop(events);
        let topics: Vec<String> = pathflow_schemas::Family::ALL
            .iter()
            .map(|f| kafka.topic(*f))
            .collect();
        let raw = raw_consume(&brokers, &topics, n);
        let (piped, rss) = pipeline(&brokers, &kafka.topic_prefix, dir.path(), n);
        let raw_again = raw_consume(&brokers, &topics, n);
        let raw = raw.min(raw_again);
        println!(
            "transform bench: {population} patients x {weeks} weeks, {n} events: raw consumer {:.0} events/s; \
             pathflow transform into every table {:.0} events/s ({piped:.1} s); ratio {:.2}; peak RSS {} MiB",
            n as f64 / raw,
            n as f64 / piped,
            raw / piped,
            rss / 1024
        );
    }

    // 2. Commit duration with 1x and 10x history (`PATHFLOW_BENCH_ONLY=throughput` skips it).
    if std::env::var("PATHFLOW_BENCH_ONLY").as_deref() == Ok("throughput") {
        return;
    }
    let population = env_or("PATHFLOW_BENCH_HISTORY_POPULATION", 10_000);
    let weeks = env_or("PATHFLOW_BENCH_HISTORY_WEEKS", 26);
    let probes = env_or("PATHFLOW_BENCH_PROBES", 30) as usize;
    let factors = [1, 10];
    let mut histories = Vec::new();
    let mut probe_sets = Vec::new();
    for factor in factors {
        let mut events = simulated(dir.path(), population, weeks * factor, 2);
        // The newest events, in commits of 200 (within the newest days).
        probe_sets.push(events.split_off(events.len() - 200 * probes));
        let history = runtime.block_on(History::build(dir.path(), &events));
        println!(
            "transform bench: {factor}x history: {population} patients, {} weeks (and {} weeks of \
             hospital run-in), {} events in the tables",
            weeks * factor,
            (weeks * factor).min(52),
            events.len()
        );
        histories.push(history);
    }
    // The probes of the two histories alternate, so a slow spell of the
    // machine falls on both alike.
    for i in 0..probes {
        for (history, set) in histories.iter_mut().zip(&probe_sets) {
            runtime.block_on(history.probe(&set[i * 200..(i + 1) * 200]));
        }
    }
    let mut medians = Vec::new();
    for (factor, history) in factors.iter().zip(&histories) {
        let shown: Vec<String> = history
            .times
            .iter()
            .map(|t| format!("{:.0}", t * 1e3))
            .collect();
        let median = median(history.times.iter().copied());
        println!(
            "transform bench: {factor}x history: commit+derive of 200 new events, median {:.0} ms \
             (each: {} ms)\n  medians: {}",
            median * 1e3,
            shown.join(", "),
            history.breakdown()
        );
        medians.push(median);
        let _ = std::fs::remove_dir_all(&history.location);
    }
    println!(
        "transform bench: commit duration growth from 1x to 10x history: {:.2}x",
        medians[1] / medians[0]
    );
}
