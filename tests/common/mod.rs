//! Shared by the end-to-end tests and the benchmarks of the `pathflow`
//! package (benches include it with `#[path]`): a simulated ICB's events and
//! producing them to a broker.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::Path;
use std::time::Duration;

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
