//! The ingest configuration: one TOML file (every key documented in
//! `deploy/ingest.example.toml`). [`IngestConfig::load`] reads and checks it,
//! so a mistake is reported at start-up naming the key and the expected form,
//! before anything is read or produced.

use std::path::{Path, PathBuf};

use pathflow_schemas::{KeyId, SourceName};
use serde::Deserialize;

use crate::http_connector::HttpConfig;
use crate::kafka::KafkaConfig;
use crate::metrics::MetricsConfig;
use crate::pseudonymise::KeySource;

/// The whole ingest configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Where connectors keep checkpoints and quarantined records (inside the source's boundary).
    pub state_dir: PathBuf,
    /// Brokers and topics.
    pub kafka: KafkaConfig,
    /// The pseudonymisation key.
    pub pseudonymisation: PseudonymisationConfig,
    /// Reference files the connectors need.
    pub reference: ReferenceConfig,
    /// The file connectors to run.
    #[serde(default, rename = "connector")]
    pub connectors: Vec<ConnectorConfig>,
    /// The HTTP push connector, when wanted.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Where `/metrics` is served, when wanted.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Records of a file between in-progress checkpoints (each waits for the
    /// broker's acknowledgement of everything sent so far).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every_records: u64,
}

fn default_checkpoint_every() -> u64 {
    50_000
}

/// Where the key comes from and what it is called.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymisationConfig {
    /// `{ file = "…" }` or `{ env = "…" }`; there is no default key.
    pub key: KeySource,
    /// A name for the key, recorded on every event so keys can be rotated.
    pub key_id: KeyId,
}

/// Reference files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// The National Data Opt-out list (CSV, header `nhs_number`).
    pub opt_out: PathBuf,
    /// Postcode → IMD decile (CSV, header `postcode,imd_decile`).
    pub postcode_deprivation: PathBuf,
}

/// One connector: a source of records in one format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Source name on every event, e.g. `pas:rx1:referrals`.
    pub name: SourceName,
    /// The record format.
    pub format: Format,
    /// A file, or a directory whose files (sorted by name) are read.
    pub path: PathBuf,
    /// Keep watching `path` for new and changed files (polled every
    /// `poll_seconds`) instead of reading it once and stopping.
    #[serde(default)]
    pub watch: bool,
    /// Seconds between looks at a watched path.
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
}

fn default_poll_seconds() -> u64 {
    5
}

/// The source formats a file connector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The PAS referral (RTT pathway) extract.
    PasReferrals,
    /// The PAS outpatient appointment extract.
    PasOutpatientAppointments,
    /// The PAS clinic slot (capacity) extract.
    PasClinicSlots,
    /// The PAS follow-up extract.
    PasFollowups,
    /// The GP appointment book (CSV).
    GpAppointments,
    /// The e-RS Advice & Guidance extract.
    AdviceAndGuidance,
    /// FHIR R4 Bundles (Slot, Appointment, Patient, Encounter, ServiceRequest), one per file.
    FhirBundle,
    /// Newline-delimited JSON, one pathflow event (envelope and data) per line.
    NdjsonEvents,
}

/// A configuration that cannot be used; the message names the key and what to write.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has a wrong key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser says, with line and column.
        message: String,
    },
    /// A value has the wrong form.
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

impl IngestConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML `text` (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: IngestConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        if cfg.kafka.partitions < 1 || cfg.kafka.replication < 1 {
            return Err(invalid(
                "kafka.partitions / kafka.replication".into(),
                "must be at least 1".into(),
            ));
        }
        if cfg.connectors.is_empty() && cfg.http.is_none() {
            return Err(invalid(
                "connector".into(),
                "is missing: add at least one [[connector]] table with name, format and path, or an [http] table"
                    .into(),
            ));
        }
        if let Some(c) = cfg
            .connectors
            .iter()
            .find(|c| c.watch && c.poll_seconds == 0)
        {
            return Err(invalid(
                format!("connector `{}`: poll_seconds", c.name),
                "must be at least 1 for a watched path".into(),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/var/lib/pathflow"
[kafka]
brokers = "localhost:9092"
[pseudonymisation]
key = { env = "PATHFLOW_PSEUDO_KEY" }
key_id = "k2025a"
[reference]
opt_out = "ref/opt_out.csv"
postcode_deprivation = "ref/postcodes.csv"
[[connector]]
name = "pas:rx1:referrals"
format = "pas_referrals"
path = "/data/pas/referrals.csv"
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let cfg = IngestConfig::parse(GOOD, Path::new("ingest.toml")).unwrap();
        assert_eq!(cfg.kafka.topic_prefix, "pathflow");
        assert_eq!(cfg.connectors[0].format, Format::PasReferrals);
        assert_eq!(cfg.pseudonymisation.key_id.as_str(), "k2025a");
    }

    #[test]
    fn mistakes_name_the_key_and_the_expected_form() {
        let cases = [
            (
                GOOD.replace("format = \"pas_referrals\"", "format = \"pas_referalls\""),
                "pas_referalls",
            ),
            (
                GOOD.replace("key_id = \"k2025a\"", "key_id = \"K 1\""),
                "a key id must be",
            ),
            (
                GOOD.replace("name = \"pas:rx1:referrals\"", "name = \"Pas RX1\""),
                "a source name must be",
            ),
            (GOOD.replace("brokers", "broker"), "broker"),
            (
                GOOD.replace(
                    "key = { env = \"PATHFLOW_PSEUDO_KEY\" }",
                    "key = \"secret\"",
                ),
                "key",
            ),
        ];
        for (text, expected) in cases {
            let e = IngestConfig::parse(&text, Path::new("ingest.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(expected) && e.starts_with("ingest.toml"),
                "expected {expected:?} in: {e}"
            );
        }
        let no_connector = GOOD.split("[[connector]]").next().unwrap();
        let e = IngestConfig::parse(no_connector, Path::new("ingest.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("add at least one [[connector]]"), "{e}");
    }
}

#[cfg(test)]
mod example {
    /// The documented example under deploy/ must always load.
    #[test]
    fn the_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ingest.example.toml");
        let cfg = super::IngestConfig::load(&path).unwrap();
        assert_eq!(cfg.connectors.len(), 2);
        assert!(cfg.http.is_some() && cfg.metrics.is_some());
    }
}
