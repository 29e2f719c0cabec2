//! pathflow ingest: the connectors that run next to GP and hospital systems.
//!
//! Every record goes one way: parse → validate → pseudonymise → drop National
//! Data Opt-outs → produce to Kafka, or to the dead-letter topic with the
//! file, line, field and reason. Nothing identifiable leaves this crate: the
//! event types of `pathflow-schemas` cannot hold a raw identifier.
//!
//! - [`pseudonymise`]: the keyed pseudonymiser (HMAC-SHA256 under a key read
//!   from a file or the environment; never a default key) and event ids.
//! - [`reference`](mod@reference): the National Data Opt-out list and the postcode →
//!   deprivation decile lookup.
//! - [`record`]: typed access to a source record, and rejections that name
//!   file, line, field, problem and rule without repeating the value.
//! - [`sources`]: one module per source format, each turning a record into events.
//! - [`config`]: the TOML configuration, checked at start-up.
//! - [`file_connector`]: the running [`file_connector::Ingest`]: reads
//!   configured files once or watches directories (streaming, with checkpoints
//!   and quarantine), and takes request bodies from the push connector through
//!   [`file_connector::Ingest::ingest`]; both use one reader per format, one
//!   producer, one quarantine and one set of metrics.
//! - [`http_connector`]: the HTTP push connector (FHIR Bundles, NDJSON).
//! - [`kafka`]: topic creation and the idempotent producer of events and dead letters.
//! - [`metrics`]: every ingest metric, and the `/metrics` endpoint.
//! - [`simulated`]: a simulated ICB's events read in-process, for the tests
//!   and benchmarks of later stages.

pub mod config;
pub mod file_connector;
pub mod http_connector;
pub mod kafka;
pub mod metrics;
pub mod pseudonymise;
pub mod record;
pub mod reference;
pub mod simulated;
pub mod sources;

/// The topic each event family is produced to unless configured otherwise.
pub fn default_topics() -> Vec<String> {
    pathflow_schemas::Family::ALL
        .iter()
        .map(|f| f.default_topic())
        .collect()
}
