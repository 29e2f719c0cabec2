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
    pathflow_query::testing::simulated_events(dir, population, weeks, seed)
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

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves no server behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `POST /v1/sql` to a local `pathflow serve`: status and body.
pub fn http_sql(port: u16, token: &str, sql: &str, accept: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/sql"))
        .bearer_auth(token)
        .header("accept", accept)
        .body(sql.to_string())
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// `sql` through psql (Debian's postgresql-client) with `token` as the
/// password: unaligned rows, fields joined by `,`, or psql's error output.
pub fn psql(port: u16, token: &str, sql: &str) -> Result<Vec<String>, String> {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=analyst dbname=pathflow sslmode=disable connect_timeout=5"
        ))
        .args(["-X", "-A", "-t", "-F", ",", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", token)
        .output()
        .expect("psql runs (postgresql-client is installed by .ci/run)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Whether `tool`, from Debian's `prometheus` package, runs here. On CI
/// (`CI` set) it must, since .ci/run installs it; elsewhere a missing tool
/// skips the check that needs it, saying so.
pub fn tool_or_skip(tool: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing; .ci/run installs Debian's prometheus package"
    );
    eprintln!("skipping: {tool} is not installed (apt install prometheus)");
    false
}
