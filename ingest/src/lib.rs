//! pathflow ingest: the connectors that run next to GP and hospital systems.
//!
//! Every connector has one shape (a documented config → `build` → a running
//! task) and one pipeline: parse → validate → pseudonymise → drop National
//! Data Opt-outs → produce to Kafka, or to the dead-letter topic with the
//! file, line, field and reason. Nothing identifiable leaves this crate: the
//! event types of `pathflow-schemas` cannot hold a raw identifier.
//!
//! The connectors themselves arrive with the ingest issue; the crate exists
//! now so the workspace layout and the dependency set (rdkafka, prometheus,
//! tokio) are fixed and built by CI from the start.

/// The topic each event family is produced to unless configured otherwise.
pub fn default_topics() -> Vec<String> {
    pathflow_schemas::Family::ALL
        .iter()
        .map(|f| f.default_topic())
        .collect()
}
