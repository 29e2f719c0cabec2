//! The ingest pipeline benchmark: events/s from a GP appointment-book CSV
//! through parse → validate → pseudonymise → opt-out → a real broker, and,
//! in the same run against the same broker, the raw rate: the same number of
//! the same messages, serialised beforehand, produced by a bare rdkafka
//! producer with the same delivery guarantees (idempotent, acks=all).
//!
//! ```sh
//! source scripts/tansu.sh && tansu_start
//! PATHFLOW_BENCH_BROKERS=$PATHFLOW_TEST_BROKERS cargo bench -p pathflow-ingest --bench pipeline
//! ```
//!
//! `PATHFLOW_BENCH_POPULATION` (default 200000) and `PATHFLOW_BENCH_WEEKS`
//! (default 8) size the simulated ICB; `PATHFLOW_BENCH_ROUNDS` (default 2)
//! repeats both measurements, alternating, and the best of each is reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pathflow_ingest::config::IngestConfig;
use pathflow_ingest::file_connector::Ingest;
use pathflow_ingest::kafka::{KafkaConfig, ensure_topics, event_json};
use pathflow_ingest::pseudonymise::Pseudonymiser;
use pathflow_ingest::reference::{DeprivationLookup, OptOutList};
use pathflow_ingest::sources::gp_appointments::GpAppointments;
use pathflow_ingest::sources::{Context, Outcome, read_csv};
use pathflow_schemas::SourceName;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

// The allocator the `pathflow` binary runs with: the pipeline allocates
// small strings per event, and glibc's malloc was a fifth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY_VAR: &str = "PATHFLOW_BENCH_KEY";

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

/// Counts acknowledged messages.
struct Acks(Arc<AtomicU64>, Arc<AtomicU64>);

impl rdkafka::ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.1.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Produces pre-serialised `messages` with a bare producer; the seconds until every ack.
fn raw_rate(brokers: &str, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) -> f64 {
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create_with_context(Acks(acked.clone(), failed.clone()))
        .expect("a producer");
    let started = Instant::now();
    for (key, payload) in messages {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("raw producer: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(acked.load(Ordering::Relaxed), messages.len() as u64);
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    secs
}

fn config(brokers: &str, prefix: &str, out: &Path, state: &Path) -> IngestConfig {
    let text = format!(
        r#"state_dir = "{state}"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1
replication = 1
[pseudonymisation]
key = {{ env = "{KEY_VAR}" }}
key_id = "bench"
[reference]
opt_out = "{out}/reference/national_data_opt_out.csv"
postcode_deprivation = "{out}/reference/postcode_deprivation.csv"
[[connector]]
name = "gp:appointments"
format = "gp_appointments"
path = "{out}/gp/appointments.csv"
"#,
        state = state.display(),
        out = out.display()
    );
    IngestConfig::parse(&text, Path::new("bench.toml")).expect("bench config")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful.
    let Ok(brokers) = std::env::var("PATHFLOW_BENCH_BROKERS") else {
        eprintln!("pipeline bench: set PATHFLOW_BENCH_BROKERS=host:port (see the doc comment)");
        return;
    };
    let population = env_or("PATHFLOW_BENCH_POPULATION", 200_000);
    let weeks = env_or("PATHFLOW_BENCH_WEEKS", 8);
    let rounds = env_or("PATHFLOW_BENCH_ROUNDS", 2);
    // A made-up key for synthetic data.
    // SAFETY: single-threaded at this point.
    unsafe {
        std::env::set_var(
            KEY_VAR,
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        )
    };

    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("out");
    let mut sim = pathflow_simulate::SimConfig::new(out.clone());
    sim.population = population;
    sim.weeks = weeks;
    sim.run_in_weeks = weeks;
    pathflow_simulate::run(&sim, &|_| {}).expect("simulate");
    let csv = out.join("gp/appointments.csv");
    let csv_bytes = std::fs::metadata(&csv).map(|m| m.len()).unwrap_or_default();

    // The same events, serialised beforehand, for the raw producer.
    let pseudonymiser = Pseudonymiser::for_tests("bench");
    let opt_out = OptOutList::load(&out.join("reference/national_data_opt_out.csv")).unwrap();
    let deprivation =
        DeprivationLookup::load(&out.join("reference/postcode_deprivation.csv")).unwrap();
    let cx = Context {
        pseudonymiser: &pseudonymiser,
        opt_out: &opt_out,
        deprivation: &deprivation,
        source: SourceName::parse("gp:appointments").unwrap(),
        recorded_at: chrono::Utc::now(),
    };
    // Parse, validate and pseudonymise alone (no JSON), for where the time goes.
    let parsed = Instant::now();
    let records = read_csv::<GpAppointments, _>(std::fs::File::open(&csv).unwrap(), "b", &cx).len();
    eprintln!(
        "pipeline bench: parse, validate, pseudonymise alone: {records} records in {:.2} s",
        parsed.elapsed().as_secs_f64()
    );
    // Timed too: the connector's own work (parse, validate, pseudonymise,
    // serialise) on one core, without a broker.
    let prepared = Instant::now();
    let mut messages = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, outcome) in read_csv::<GpAppointments, _>(std::fs::File::open(&csv).unwrap(), "b", &cx)
    {
        if let Outcome::Events(events) = outcome {
            for e in events {
                if seen.insert(e.envelope.event_id.clone()) {
                    messages.push((e.payload.key().as_str().as_bytes().to_vec(), event_json(&e)));
                }
            }
        }
    }
    let prepare = prepared.elapsed().as_secs_f64();
    let payload_bytes: usize = messages.iter().map(|(k, p)| k.len() + p.len()).sum();
    eprintln!(
        "pipeline bench: {population} patients x {weeks} weeks: GP book {:.0} MB, {} events ({:.0} MB of messages); preparing them (parse, validate, pseudonymise, serialise into owned buffers, one thread): {:.0} events/s ({prepare:.2} s)",
        csv_bytes as f64 / 1e6,
        messages.len(),
        payload_bytes as f64 / 1e6,
        messages.len() as f64 / prepare
    );

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (mut best_raw, mut best_pipeline) = (f64::MAX, f64::MAX);
    for round in 1..=rounds {
        let mut kafka = KafkaConfig::new(&brokers);
        kafka.topic_prefix = unique("benchraw");
        kafka.partitions = 1;
        kafka.replication = 1;
        runtime.block_on(ensure_topics(&kafka)).expect("topics");
        let raw = raw_rate(
            &brokers,
            &kafka.topic(pathflow_schemas::Family::Appointment),
            &messages,
        );
        best_raw = best_raw.min(raw);

        let prefix = unique("benchpipe");
        let state = dir.path().join(format!("state{round}"));
        let ingest = Ingest::build(config(&brokers, &prefix, &out, &state)).expect("ingest");
        let started = Instant::now();
        let reports = runtime.block_on(ingest.run_once()).expect("ingest run");
        let pipeline = started.elapsed().as_secs_f64();
        let counts = reports[0].counts.expect("sent");
        assert_eq!(counts.events as usize, messages.len());
        best_pipeline = best_pipeline.min(pipeline);
        eprintln!(
            "round {round}: raw producer {:.0} events/s ({raw:.2} s); pipeline {:.0} events/s ({pipeline:.2} s, {} records)",
            messages.len() as f64 / raw,
            messages.len() as f64 / pipeline,
            counts.accepted + counts.rejected + counts.opted_out
        );
    }
    let n = messages.len() as f64;
    println!(
        "pipeline bench: raw {:.0} events/s, pipeline {:.0} events/s, ratio {:.2}",
        n / best_raw,
        n / best_pipeline,
        best_raw / best_pipeline
    );
}
