//! Ingest metrics, in one place: every counter is bumped by one method per
//! thing that happens (a record read and its outcome, a batch produced, a
//! push request answered), so the names and labels are defined once here and
//! logs and metrics cannot drift apart. [`serve`] answers `GET /metrics` in
//! Prometheus' text format.
//!
//! Labels never carry a value from a record: `source` is the configured
//! connector name, `field` a column or FHIR element name from the format's
//! own list, `topic` a configured topic. So no identifier can reach a metric.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde::Deserialize;

use crate::record::Location;
use crate::sources::Outcome;

/// Where `/metrics` is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `0.0.0.0:9464`.
    pub listen: SocketAddr,
}

/// The ingest metrics and the registry that holds them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    read: IntCounterVec,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    opted_out: IntCounterVec,
    bytes_read: IntCounterVec,
    events: IntCounterVec,
    duplicates: IntCounterVec,
    bytes_produced: IntCounterVec,
    dead_letters: IntCounter,
    produce_latency: Histogram,
    in_flight: IntGauge,
    files: IntCounterVec,
    http_requests: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// Registering a freshly made metric in a fresh registry only fails on a
// duplicate name, which the names below rule out; the fallbacks keep the
// connector running (unregistered) rather than panicking should that change.
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Every ingest metric, registered in a registry of its own.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "pathflow_ingest_produce_latency_seconds",
                "Time from handing a message to the producer to the broker's acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("produce latency histogram: {e}"));
        let _ = registry.register(Box::new(produce_latency.clone()));
        let in_flight = IntGauge::new(
            "pathflow_ingest_in_flight_messages",
            "Messages handed to the producer and not yet acknowledged by the broker.",
        )
        .unwrap_or_else(|e| unreachable!("in-flight gauge: {e}"));
        let _ = registry.register(Box::new(in_flight.clone()));
        let dead_letters = IntCounter::new(
            "pathflow_ingest_dead_letters_total",
            "Rejections delivered to the dead-letter topic.",
        )
        .unwrap_or_else(|e| unreachable!("dead letters counter: {e}"));
        let _ = registry.register(Box::new(dead_letters.clone()));
        Metrics {
            read: counter_vec(
                r,
                "pathflow_ingest_records_read_total",
                "Source records read (accepted + rejected + opted out).",
                &["source"],
            ),
            accepted: counter_vec(
                r,
                "pathflow_ingest_records_accepted_total",
                "Source records that became events.",
                &["source"],
            ),
            rejected: counter_vec(
                r,
                "pathflow_ingest_records_rejected_total",
                "Source records rejected to the dead-letter topic, by the field at fault.",
                &["source", "field"],
            ),
            opted_out: counter_vec(
                r,
                "pathflow_ingest_records_opted_out_total",
                "Source records dropped because the patient is on the National Data Opt-out list.",
                &["source"],
            ),
            bytes_read: counter_vec(
                r,
                "pathflow_ingest_source_bytes_total",
                "Bytes of source files and push requests read.",
                &["source"],
            ),
            events: counter_vec(
                r,
                "pathflow_ingest_events_produced_total",
                "Events acknowledged by the broker, by topic.",
                &["topic"],
            ),
            duplicates: counter_vec(
                r,
                "pathflow_ingest_duplicate_events_total",
                "Events not sent again because an event with the same id was already in the batch.",
                &["source"],
            ),
            bytes_produced: counter_vec(
                r,
                "pathflow_ingest_produced_bytes_total",
                "Bytes of message payload acknowledged by the broker, by topic.",
                &["topic"],
            ),
            files: counter_vec(
                r,
                "pathflow_ingest_files_total",
                "Source files looked at, by outcome (sent, or skipped by its checkpoint).",
                &["source", "outcome"],
            ),
            http_requests: counter_vec(
                r,
                "pathflow_ingest_http_requests_total",
                "Push requests answered, by HTTP status code.",
                &["status"],
            ),
            dead_letters,
            produce_latency,
            in_flight,
            registry,
        }
    }

    /// The registry, for other stages to serve these metrics beside their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One batch of records from `source` (a chunk of a file, or a request) was read.
    pub fn records(&self, source: &str, outcomes: &[(Location, Outcome)]) {
        let (mut accepted, mut opted_out) = (0, 0);
        for (_, outcome) in outcomes {
            match outcome {
                Outcome::Events(_) => accepted += 1,
                Outcome::OptedOut => opted_out += 1,
                Outcome::Rejected(r) => self
                    .rejected
                    .with_label_values(&[source, r.error.field.as_str()])
                    .inc(),
            }
        }
        self.read
            .with_label_values(&[source])
            .inc_by(outcomes.len() as u64);
        self.accepted.with_label_values(&[source]).inc_by(accepted);
        self.opted_out
            .with_label_values(&[source])
            .inc_by(opted_out);
    }

    /// `bytes` of source were read from `source`.
    pub fn source_bytes(&self, source: &str, bytes: u64) {
        self.bytes_read.with_label_values(&[source]).inc_by(bytes);
    }

    /// `n` events of a batch from `source` repeated an id already sent.
    pub fn duplicates(&self, source: &str, n: u64) {
        self.duplicates.with_label_values(&[source]).inc_by(n);
    }

    /// A file was sent (`sent`), or skipped because its checkpoint shows it was.
    pub fn file(&self, source: &str, sent: bool) {
        let outcome = if sent { "sent" } else { "skipped" };
        self.files.with_label_values(&[source, outcome]).inc();
    }

    /// A message was handed to the producer.
    pub fn enqueued(&self) {
        self.in_flight.inc();
    }

    /// The broker acknowledged a message of `bytes` on `topic` after `latency`.
    pub fn delivered(&self, topic: &str, bytes: usize, latency: Duration, dead_letter: bool) {
        self.in_flight.dec();
        self.produce_latency.observe(latency.as_secs_f64());
        self.bytes_produced
            .with_label_values(&[topic])
            .inc_by(bytes as u64);
        if dead_letter {
            self.dead_letters.inc();
        } else {
            self.events.with_label_values(&[topic]).inc();
        }
    }

    /// A message failed for good (the batch fails and is read again later).
    pub fn failed(&self) {
        self.in_flight.dec();
    }

    /// A push request was answered with `status`.
    pub fn http_request(&self, status: u16) {
        self.http_requests
            .with_label_values(&[&status.to_string()])
            .inc();
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding in-memory metric families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
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
    use crate::record::{FieldError, Rejection};
    use pathflow_schemas::SourceName;

    #[test]
    fn outcomes_are_counted_by_kind_and_rejections_by_field() {
        let m = Metrics::new();
        let loc = Location {
            file: "f.csv".into(),
            line: 2,
        };
        let rejection = Rejection {
            source: SourceName::parse("pas:x").unwrap(),
            location: loc.clone(),
            error: FieldError::new("nhs_number", "bad check digit", "Modulus 11"),
            rejected_at: chrono::Utc::now(),
        };
        let outcomes = vec![
            (loc.clone(), Outcome::Events(vec![])),
            (loc.clone(), Outcome::OptedOut),
            (loc.clone(), Outcome::Rejected(rejection)),
            (loc, Outcome::Events(vec![])),
        ];
        m.records("pas:x", &outcomes);
        m.source_bytes("pas:x", 100);
        let text = m.render();
        for line in [
            "pathflow_ingest_records_read_total{source=\"pas:x\"} 4",
            "pathflow_ingest_records_accepted_total{source=\"pas:x\"} 2",
            "pathflow_ingest_records_opted_out_total{source=\"pas:x\"} 1",
            "pathflow_ingest_records_rejected_total{field=\"nhs_number\",source=\"pas:x\"} 1",
            "pathflow_ingest_source_bytes_total{source=\"pas:x\"} 100",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
