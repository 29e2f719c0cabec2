//! Shared by the end-to-end tests and the benchmarks of the `pathflow`
//! package (benches include it with `#[path]`): a simulated ICB's events and
//! producing them to a broker.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pathflow_ingest::kafka::{KafkaConfig, event_json};
use pathflow_schemas::Event;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// A simulated ICB's events (what the connectors would produce from its
/// files, without Kafka), oldest first; `dir` holds the files meanwhile.
pub fn simulated(dir: &Path, population: u32, weeks: u32, seed: u64) -> Vec<Event> {
    let out = dir.join(format!("sim-{population}-{weeks}-{seed}"));
    let mut cfg = pathflow_simulate::SimConfig::new(out.clone());
    cfg.population = population;
    cfg.weeks = weeks;
    cfg.run_in_weeks = weeks.min(52);
    cfg.seed = seed;
    pathflow_simulate::run(&cfg, &|_| {}).expect("simulate");
    let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .expect("a date")
        .to_utc();
    let mut events =
        pathflow_ingest::simulated::events(&out, "pathflow-test", recorded_at).expect("events");
    let _ = std::fs::remove_dir_all(&out);
    events.sort_by_key(|e| e.envelope.occurred_at);
    events
}

/// Produces `events` to their family topics, keyed by entity, idempotently,
/// and waits for every acknowledgement.
pub fn produce(kafka: &KafkaConfig, events: &[Event]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("a producer");
    for e in events {
        let topic = kafka.topic(e.family());
        let payload = event_json(e);
        let mut record = BaseRecord::to(&topic)
            .key(e.payload.key().as_str())
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(900)).expect("flush");
}

/// A tansu broker of this test's own, on SQLite storage in `dir`, stopped
/// when dropped. SQLite, because tansu's memory engine (the shared test
/// broker's) cannot serve a fetch that starts inside a record batch, which is
/// where a restarted consumer resumes; its own, because tansu's SQLite engine
/// has been seen to fail after other tests' traffic (a panic in its offset
/// lookup), and this test should not depend on what ran before it.
pub struct OwnBroker {
    child: Child,
    port: u16,
}

impl OwnBroker {
    /// Starts it, or `None` when tansu is not installed (never on CI).
    pub fn start(dir: &Path) -> Option<Self> {
        let bin = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
            .map(|d| d.join("tansu"))
            .find(|b| b.is_file())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("a log file");
        let child = Command::new(bin)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self { child, port })
    }

    /// Its bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
