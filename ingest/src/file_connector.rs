//! The file connector: reads the files a config names, once, through the
//! pipeline (parse → validate → pseudonymise → opt-out → Kafka / dead letters).
//!
//! Checkpoints: after every message of a file is acknowledged, the file's
//! SHA-256 is recorded under `state_dir/checkpoints/`; a restart skips files
//! whose content is already recorded and reads changed ones again (their
//! unchanged records repeat their event ids, which downstream counts once).
//! A crash mid-file re-sends that file on restart: nothing is lost, and the
//! repeats carry ids already seen.
//!
//! Quarantine: rejected records' raw lines are kept in
//! `state_dir/quarantine/<source>/<file>` with a `.reasons.csv` beside it, so
//! they can be fixed and re-sent. That directory is inside the source's
//! boundary: it holds identifiers and never leaves the connector's machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::config::{ConnectorConfig, Format, IngestConfig};
use crate::kafka::{Counts, EventProducer, ProduceError, ensure_topics};
use crate::pseudonymise::{KeyError, Pseudonymiser};
use crate::record::Location;
use crate::reference::{DeprivationLookup, OptOutList, ReferenceError};
use crate::sources::advice::AdviceAndGuidance;
use crate::sources::gp_appointments::GpAppointments;
use crate::sources::pas_outpatients::{PasAppointments, PasClinicSlots, PasFollowups};
use crate::sources::{Context, Outcome, pas_referrals::PasReferrals, read_csv};

/// Why ingest could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The pseudonymisation key is missing or unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A reference file is missing or malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Kafka refused.
    #[error(transparent)]
    Produce(#[from] ProduceError),
    /// A source or state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The connector.
    pub source: String,
    /// The file.
    pub file: PathBuf,
    /// Its counts, or `None` when the checkpoint showed it was already sent.
    pub counts: Option<Counts>,
}

/// A running ingest: the key, reference data and producer, built once.
pub struct Ingest {
    cfg: IngestConfig,
    pseudonymiser: Pseudonymiser,
    opt_out: OptOutList,
    deprivation: DeprivationLookup,
    producer: EventProducer,
}

impl Ingest {
    /// Loads the key and reference files and creates the producer; any problem stops here.
    pub fn build(cfg: IngestConfig) -> Result<Self, IngestError> {
        let pseudonymiser = Pseudonymiser::load(
            &cfg.pseudonymisation.key,
            cfg.pseudonymisation.key_id.clone(),
        )?;
        let opt_out = OptOutList::load(&cfg.reference.opt_out)?;
        let deprivation = DeprivationLookup::load(&cfg.reference.postcode_deprivation)?;
        let producer = EventProducer::new(&cfg.kafka)?;
        Ok(Ingest {
            cfg,
            pseudonymiser,
            opt_out,
            deprivation,
            producer,
        })
    }

    /// Creates missing topics, then reads every connector's files once.
    pub async fn run_once(&self) -> Result<Vec<FileReport>, IngestError> {
        ensure_topics(&self.cfg.kafka).await?;
        let mut reports = Vec::new();
        for connector in &self.cfg.connectors {
            // One checkpoint file per connector: read once, rewritten after each file.
            let checkpoints = self
                .cfg
                .state_dir
                .join("checkpoints")
                .join(format!("{}.json", dir_name(connector)));
            let mut done = read_checkpoints(&checkpoints)?;
            for file in files_of(&connector.path)? {
                reports.push(self.file(connector, &file, &checkpoints, &mut done).await?);
            }
        }
        Ok(reports)
    }

    async fn file(
        &self,
        connector: &ConnectorConfig,
        path: &Path,
        checkpoints: &Path,
        done: &mut BTreeMap<String, String>,
    ) -> Result<FileReport, IngestError> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let digest = hex(&Sha256::digest(&bytes));
        let key = path.display().to_string();
        let report = |counts| FileReport {
            source: connector.name.to_string(),
            file: path.to_path_buf(),
            counts,
        };
        if done.get(&key) == Some(&digest) {
            return Ok(report(None));
        }
        let cx = Context {
            pseudonymiser: &self.pseudonymiser,
            opt_out: &self.opt_out,
            deprivation: &self.deprivation,
            source: connector.name.clone(),
            recorded_at: Utc::now(),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let outcomes = match connector.format {
            Format::PasReferrals => read_csv::<PasReferrals, _>(bytes.as_slice(), &name, &cx),
            Format::PasOutpatientAppointments => {
                read_csv::<PasAppointments, _>(bytes.as_slice(), &name, &cx)
            }
            Format::PasClinicSlots => read_csv::<PasClinicSlots, _>(bytes.as_slice(), &name, &cx),
            Format::PasFollowups => read_csv::<PasFollowups, _>(bytes.as_slice(), &name, &cx),
            Format::GpAppointments => read_csv::<GpAppointments, _>(bytes.as_slice(), &name, &cx),
            Format::AdviceAndGuidance => {
                read_csv::<AdviceAndGuidance, _>(bytes.as_slice(), &name, &cx)
            }
        };
        let counts = self.producer.produce(&outcomes).await?;
        self.quarantine(connector, &name, &bytes, &outcomes)?;
        done.insert(key, digest);
        write_checkpoints(checkpoints, done)?;
        Ok(report(Some(counts)))
    }

    fn quarantine(
        &self,
        connector: &ConnectorConfig,
        name: &str,
        bytes: &[u8],
        outcomes: &[(Location, Outcome)],
    ) -> Result<(), IngestError> {
        let rejected: Vec<_> = outcomes
            .iter()
            .filter_map(|(loc, o)| match o {
                Outcome::Rejected(r) => Some((loc.line, r)),
                _ => None,
            })
            .collect();
        if rejected.is_empty() {
            return Ok(());
        }
        let dir = self
            .cfg
            .state_dir
            .join("quarantine")
            .join(dir_name(connector));
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().collect();
        let raw = dir.join(name);
        let mut out = std::fs::File::create(&raw).map_err(io_error(&raw))?;
        let mut reasons = String::from("line,field,problem,rule\n");
        writeln!(out, "{}", lines.first().copied().unwrap_or_default()).map_err(io_error(&raw))?;
        for (line, r) in rejected {
            let raw_line = lines
                .get(line.saturating_sub(1) as usize)
                .copied()
                .unwrap_or_default();
            writeln!(out, "{raw_line}").map_err(io_error(&raw))?;
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            reasons.push_str(&format!(
                "{line},{},{},{}\n",
                quote(&r.error.field),
                quote(&r.error.problem),
                quote(&r.error.rule)
            ));
        }
        let reasons_path = dir.join(format!("{name}.reasons.csv"));
        std::fs::write(&reasons_path, reasons).map_err(io_error(&reasons_path))
    }
}

/// The files a connector reads: the file itself, or a directory's files sorted by name.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_error(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn dir_name(connector: &ConnectorConfig) -> String {
    connector.name.as_str().replace(':', "_")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_checkpoints(path: &Path) -> Result<BTreeMap<String, String>, IngestError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| IngestError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(IngestError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn write_checkpoints(path: &Path, done: &BTreeMap<String, String>) -> Result<(), IngestError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    // Write then rename, so a crash never leaves a half-written checkpoint.
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(done).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}
