//! Crash safety of `pathflow transform` against a real Kafka-protocol broker
//! (tansu in CI): a simulated ICB's events (1,000,000 by default,
//! `PATHFLOW_CRASH_EVENTS` to change) are produced to the family topics, the
//! transform is killed with SIGKILL at random moments ten times and
//! restarted each time, and at the end the bronze table holds every Kafka
//! offset exactly once while every state and gold table equals the tables
//! an uninterrupted derivation of the same events gives.
//!
//! Runs when `PATHFLOW_TEST_BROKERS` is set (`scripts/test` sets it), on a
//! tansu of its own with SQLite storage (see `common::OwnBroker`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, Int64Array};
use pathflow_ingest::kafka::{KafkaConfig, ensure_topics};
use pathflow_schemas::Event;
use pathflow_transform::derive::Deriver;
use pathflow_transform::testing::{Appender, assert_same_tables, derived_rows};

const KILLS: usize = 10;

fn brokers() -> Option<String> {
    match std::env::var("PATHFLOW_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "PATHFLOW_TEST_BROKERS is not set; on CI the Kafka tests must run: use scripts/test"
            )
        }
        _ => None,
    }
}

mod common;

/// `n` events of a simulated ICB: its first `n` in time, so every feed and
/// event family is in them.
fn simulated(n: usize, dir: &Path) -> Vec<Event> {
    let mut population = 20_000;
    loop {
        let mut events = common::simulated(dir, population, 26, 7);
        if events.len() >= n {
            events.truncate(n);
            return events;
        }
        // Grow the population in proportion, with a margin.
        population = (population as f64 * n as f64 / events.len() as f64 * 1.1) as u32 + 1;
    }
}

/// A tiny deterministic generator for the kill times (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Rows in the bronze table under `location` (0 before it exists), from
/// the row counts its log records for each file: cheap enough to poll.
async fn bronze_rows(location: &Path) -> usize {
    let bronze = location.join(pathflow_transform::BRONZE_TABLE);
    let Ok(url) = deltalake::ensure_table_uri(bronze.to_str().unwrap()) else {
        return 0;
    };
    let Ok(table) = deltalake::open_table(url).await else {
        return 0;
    };
    table.snapshot().map_or(0, |s| {
        s.log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0))
            .sum()
    })
}

/// Rows in the bronze table under `location`, and distinct Kafka coordinates among them.
async fn bronze_counts(location: &Path) -> (i64, i64) {
    let ctx =
        pathflow_transform::derive::sql_session(location.to_str().unwrap(), &Default::default())
            .await
            .unwrap();
    let sql = "SELECT (SELECT count(*) FROM events) AS all_rows, count(*) AS coordinates FROM \
               (SELECT DISTINCT kafka_topic, kafka_partition, kafka_offset FROM events)";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let value = |c: usize| {
        batches[0]
            .column(c)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    (value(0), value(1))
}

/// The derived tables of an uninterrupted, in-process derivation of `events`.
async fn uninterrupted(location: &Path, events: &[Event]) -> BTreeMap<&'static str, Vec<String>> {
    let mut deriver = Deriver::open(location.to_str().unwrap(), &Default::default())
        .await
        .unwrap();
    let mut bronze = Appender::open(location, "reference").await;
    for part in events.chunks(100_000) {
        bronze.append(part).await;
        deriver.catch_up().await.unwrap();
    }
    derived_rows(location).await
}

fn start(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .args(["transform", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_ten_times_the_tables_equal_an_uninterrupted_run() {
    // The shared broker's address only says the Kafka tests are wanted.
    let Some(_shared) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let n: usize = std::env::var("PATHFLOW_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = common::OwnBroker::start(dir.path()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is not installed; .ci/run installs it"
        );
        println!("skipped: tansu is not installed");
        return;
    };
    let brokers = broker.address();
    let clock = Instant::now();
    let events = simulated(n, dir.path());
    eprintln!(
        "crash test: {} events simulated in {:.0?}",
        events.len(),
        clock.elapsed()
    );

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("crash{nanos}");
    let mut kafka = KafkaConfig::new(&brokers);
    kafka.topic_prefix = prefix.clone();
    kafka.partitions = 2;
    kafka.replication = 1;
    ensure_topics(&kafka).await.unwrap();
    let clock = Instant::now();
    // In the producer's usual batches: a restart resumes inside one, which
    // the broker must serve (hence SQLite storage, see `OwnBroker`).
    common::produce(&kafka, &events);
    eprintln!("crash test: produced in {:.0?}", clock.elapsed());

    // The reference, while the broker is quiet.
    let clock = Instant::now();
    let expected = uninterrupted(&dir.path().join("reference"), &events).await;
    eprintln!(
        "crash test: uninterrupted derivation in {:.0?}",
        clock.elapsed()
    );

    let location = dir.path().join("tables");
    let config = dir.path().join("transform.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\ngroup_id = \"crash-{nanos}\"\nsession_timeout_ms = 3000\n[tables]\nlocation = \"{}\"\n[commit]\nmax_rows = 20000\nmax_latency_ms = 500\n[derive]\ninterval_ms = 500\n",
            location.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("transform.log");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let clock = Instant::now();
    for kill in 0..KILLS {
        let mut child = start(&config, &log);
        // A random moment after the group has handed it the partitions: a
        // member killed without leaving holds them until its session times
        // out (3 s here), and a join takes a few seconds more with tansu.
        let wait = 5_000 + rng.below(7_000);
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let rows = bronze_rows(&location).await;
        eprintln!(
            "crash test: kill {} after {wait} ms; bronze has {rows} rows",
            kill + 1
        );
    }
    // The last run goes to the end, then stops cleanly (its final derive step included).
    let mut child = start(&config, &log);
    let final_run = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        let rows = bronze_rows(&location).await;
        // Also past its start-up, so the SIGINT below reaches its handler
        // (bronze may be complete already when the kills went far).
        if rows >= events.len() && final_run.elapsed() >= Duration::from_secs(10) {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the transform did not finish: bronze has {rows} of {} rows; its log: {}",
            events.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "crash test: {KILLS} kills and the final run in {:.0?}",
        clock.elapsed()
    );

    let (rows, distinct) = bronze_counts(&location).await;
    assert_eq!(rows as usize, events.len(), "every offset in bronze");
    assert_eq!(distinct, rows, "no offset twice in bronze");
    let got = derived_rows(&location).await;
    for (table, rows) in &expected {
        assert!(!rows.is_empty(), "{table} is empty");
    }
    assert_same_tables(&expected, &got, "after the kills");
}
