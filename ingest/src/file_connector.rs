//! The file connector: reads the files a config names, once, through the
//! pipeline (parse → validate → pseudonymise → opt-out → Kafka / dead letters).
//!
//! Checkpoints: after every message of a file is acknowledged, the file's
//! SHA-256 is recorded under `state_dir/checkpoints/`; a restart skips files
//! whose content is already recorded and reads changed ones again (their
//! unchanged records repeat their event ids, which downstream counts once).
//! Within a file, every `checkpoint_every_records` records the connector
//! marks its place, and once the broker has acknowledged every message up to
//! a mark (checked as it goes, never waited for), records how many records
//! that covers: a restart after a crash mid-file resumes after them, so it
//! neither skips a record nor re-sends an acknowledged one (only messages
//! sent after the last recorded mark can go twice, with the ids they had).
//!
//! Quarantine: rejected records' raw lines are kept in
//! `state_dir/quarantine/<source>/<file>` with a `.reasons.csv` beside it, so
//! they can be fixed and re-sent (a FHIR Bundle is kept whole, its reasons
//! naming entries). That directory is inside the source's boundary: it holds
//! identifiers and never leaves the connector's machine.
//!
//! Watching: a connector with `watch = true` looks at its path every
//! `poll_seconds` and sends new and changed files. A file is read once its
//! size and modification time are the same at two looks in a row, so a file
//! still being copied in is not read half-written; names starting with `.`
//! or ending in `.tmp` or `.part` are never read (write-then-rename is the
//! safest way to deliver). A file unchanged since it was last handled costs
//! one `stat`, not a read and a hash. The HTTP push connector hands request
//! bodies to [`Ingest::ingest`], which shares the readers, producer,
//! quarantine and metrics with the files.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pathflow_schemas::SourceName;
use sha2::{Digest, Sha256};

use crate::config::{ConnectorConfig, Format, IngestConfig};
use crate::kafka::{Counts, EventProducer, Prepared, ProduceError, ensure_topics};
use crate::metrics::Metrics;
use crate::pseudonymise::{KeyError, Pseudonymiser};
use crate::record::{FieldError, Location};
use crate::reference::{DeprivationLookup, OptOutList, ReferenceError};
use crate::sources::{Context, Outcome};

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
    /// The HTTP push connector's bearer token is missing or unusable.
    #[error(transparent)]
    Token(#[from] crate::http_connector::TokenError),
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

impl std::fmt::Display for FileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.file.display();
        match &self.counts {
            None => write!(
                f,
                "{} {file}: already sent (checkpoint), skipped",
                self.source
            ),
            Some(c) => {
                write!(
                    f,
                    "{} {file}: {} records read, {} accepted ({} events), {} rejected to dead letters, {} opted out",
                    self.source,
                    c.accepted + c.rejected + c.opted_out,
                    c.accepted,
                    c.events,
                    c.rejected,
                    c.opted_out
                )?;
                if c.resumed > 0 {
                    write!(
                        f,
                        "; {} already acknowledged before a restart, not sent again",
                        c.resumed
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// A running ingest: the key, reference data, producer and metrics, built once.
pub struct Ingest {
    cfg: IngestConfig,
    /// What records are read with, shared with the threads that parse files.
    refs: Arc<References>,
    producer: EventProducer,
    metrics: Metrics,
    /// The push connector's bearer token (as a digest), when `[http]` is configured.
    push_token: Option<crate::http_connector::BearerToken>,
    /// What each file looked like at the last look, and whether it was handled then.
    looks: std::sync::Mutex<HashMap<PathBuf, Look>>,
}

/// What a connector's checkpoint file says of one file (by path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Checkpoint {
    /// Every record of the content with this SHA-256 is acknowledged.
    Sent(String),
    /// The first `records` records of the content with this SHA-256 are acknowledged.
    Partial {
        /// The content's SHA-256.
        sha256: String,
        /// Records acknowledged, from the first.
        records: u64,
    },
}

/// Where a file's in-progress checkpoint goes, and where it resumes.
struct Progress<'a> {
    checkpoints: &'a Path,
    key: String,
    sha256: String,
    /// Records acknowledged before a restart: read again but not sent.
    resume_from: u64,
}

/// The key and reference data every record is read with.
struct References {
    pseudonymiser: Pseudonymiser,
    opt_out: OptOutList,
    deprivation: DeprivationLookup,
}

impl References {
    fn context(&self, source: &SourceName) -> Context<'_> {
        Context {
            pseudonymiser: &self.pseudonymiser,
            opt_out: &self.opt_out,
            deprivation: &self.deprivation,
            source: source.clone(),
            recorded_at: Utc::now(),
        }
    }
}

/// A file's size and modification time at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    len: u64,
    modified: Option<std::time::SystemTime>,
    handled: bool,
}

/// What one source (a file or a request body) produced.
#[derive(Debug)]
pub struct Batch {
    /// Its counts, once every message is acknowledged.
    pub counts: Counts,
    /// Each record's location and outcome.
    pub outcomes: Vec<(Location, Outcome)>,
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
        let push_token = cfg.http.as_ref().map(|h| h.load_token()).transpose()?;
        let metrics = Metrics::new();
        let producer = EventProducer::new(&cfg.kafka, &metrics)?;
        Ok(Ingest {
            cfg,
            refs: Arc::new(References {
                pseudonymiser,
                opt_out,
                deprivation,
            }),
            producer,
            metrics,
            push_token,
            looks: Default::default(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Creates missing topics, then reads every connector's files once.
    pub async fn run_once(&self) -> Result<Vec<FileReport>, IngestError> {
        ensure_topics(&self.cfg.kafka).await?;
        let mut reports = Vec::new();
        for connector in &self.cfg.connectors {
            reports.extend(self.connector_pass(connector).await?);
        }
        Ok(reports)
    }

    /// Runs every connector: creates missing topics, serves `/metrics` and the
    /// HTTP push connector when configured, reads the files once, and keeps
    /// watching the paths marked `watch` (and serving) until `shutdown`
    /// resolves. Without anything to watch or serve it returns after one pass.
    /// Each file's report goes to `report` as it completes.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
        report: impl Fn(&FileReport),
    ) -> Result<(), IngestError> {
        ensure_topics(&self.cfg.kafka).await?;
        let mut servers = tokio::task::JoinSet::new();
        if let Some(m) = &self.cfg.metrics {
            let listener = bind(m.listen).await?;
            servers.spawn(crate::metrics::serve(listener, self.metrics.clone()));
        }
        if let (Some(h), Some(token)) = (&self.cfg.http, &self.push_token) {
            let listener = bind(h.listen).await?;
            servers.spawn(crate::http_connector::serve_with_token(
                listener,
                self.clone(),
                token.clone(),
            ));
        }
        let watching = self.cfg.connectors.iter().any(|c| c.watch);
        let work = async {
            // When each connector is next looked at: a watched one again after
            // its own interval, the others never (`None`) after the first pass.
            let start = tokio::time::Instant::now();
            let mut next: Vec<Option<tokio::time::Instant>> =
                vec![Some(start); self.cfg.connectors.len()];
            loop {
                for (connector, next) in self.cfg.connectors.iter().zip(next.iter_mut()) {
                    if next.is_none_or(|t| tokio::time::Instant::now() < t) {
                        continue;
                    }
                    for r in self.connector_pass(connector).await? {
                        report(&r);
                    }
                    *next = connector.watch.then(|| {
                        tokio::time::Instant::now() + Duration::from_secs(connector.poll_seconds)
                    });
                }
                if !watching {
                    return Ok::<(), IngestError>(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let serving = !servers.is_empty();
        let files = async {
            work.await?;
            if serving {
                // The files are done; the servers go on until shutdown.
                std::future::pending::<()>().await;
            }
            Ok::<(), IngestError>(())
        };
        let server_stopped = async {
            // A server that stops (its listener failed) ends the run, rather
            // than leaving a connector that silently no longer answers.
            let error = |source| IngestError::Io {
                path: PathBuf::from("(http server)"),
                source,
            };
            match servers.join_next().await {
                Some(Ok(Err(e))) => Err(error(e)),
                Some(Err(e)) => Err(error(std::io::Error::other(e))),
                Some(Ok(Ok(()))) => Err(error(std::io::Error::other("stopped"))),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = files => result,
            result = server_stopped => result,
            () = shutdown => Ok(()),
        }
    }

    /// One look at a connector's path: every file not yet sent is sent.
    async fn connector_pass(
        &self,
        connector: &ConnectorConfig,
    ) -> Result<Vec<FileReport>, IngestError> {
        // One checkpoint file per connector: read once, rewritten after each file.
        let checkpoints = self
            .cfg
            .state_dir
            .join("checkpoints")
            .join(format!("{}.json", dir_name(&connector.name)));
        let mut done = read_checkpoints(&checkpoints)?;
        let mut reports = Vec::new();
        for file in files_of(&connector.path)? {
            if let Some(r) = self.file(connector, &file, &checkpoints, &mut done).await? {
                reports.push(r);
            }
        }
        Ok(reports)
    }

    /// Reads `bytes` (a file or a request body named `name`) of `format` from
    /// `source`: produces its events and dead letters, waits for the broker's
    /// acknowledgement of every one, keeps rejected raw records in quarantine,
    /// and counts it all in the metrics.
    pub async fn ingest(
        &self,
        source: &SourceName,
        format: Format,
        name: &str,
        bytes: &[u8],
    ) -> Result<Batch, IngestError> {
        let cx = self.context(source);
        let outcomes = crate::sources::read(format, bytes, name, &cx);
        self.metrics.records(source.as_str(), &outcomes);
        self.metrics
            .source_bytes(source.as_str(), bytes.len() as u64);
        let rejected: Vec<(u64, FieldError)> = outcomes
            .iter()
            .filter_map(|(loc, o)| match o {
                Outcome::Rejected(r) => Some((loc.line, r.error.clone())),
                _ => None,
            })
            .collect();
        // Quarantine first: should producing fail, the raw records are kept all the same.
        self.quarantine(source, format, name, Raw::Bytes(bytes), &rejected)?;
        let counts = self.producer.produce(&outcomes).await?;
        self.metrics.duplicates(source.as_str(), counts.duplicates);
        Ok(Batch { counts, outcomes })
    }

    async fn file(
        &self,
        connector: &ConnectorConfig,
        path: &Path,
        checkpoints: &Path,
        done: &mut BTreeMap<String, Checkpoint>,
    ) -> Result<Option<FileReport>, IngestError> {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        let now = Look {
            len: meta.len(),
            modified: meta.modified().ok(),
            handled: false,
        };
        let before = self.look(path, now);
        match before {
            // Unchanged since it was handled: nothing to say.
            Some(b) if b.handled && b.len == now.len && b.modified == now.modified => {
                self.look(path, b);
                return Ok(None);
            }
            // A watched file is read once it has settled: unchanged since the last look.
            Some(b) if connector.watch && (b.len, b.modified) == (now.len, now.modified) => {}
            _ if connector.watch => return Ok(None),
            _ => {}
        }
        let digest = file_digest(path)?;
        let key = path.display().to_string();
        let report = |counts| FileReport {
            source: connector.name.to_string(),
            file: path.to_path_buf(),
            counts,
        };
        let resume_from = match done.get(&key) {
            Some(Checkpoint::Sent(d)) if *d == digest => None,
            Some(Checkpoint::Partial { sha256, records }) if *sha256 == digest => Some(*records),
            _ => Some(0),
        };
        let Some(resume_from) = resume_from else {
            self.metrics.file(connector.name.as_str(), false);
            self.look(
                path,
                Look {
                    handled: true,
                    ..now
                },
            );
            return Ok(Some(report(None)));
        };
        let name = relative_name(&connector.path, path);
        let progress = Progress {
            checkpoints,
            key: key.clone(),
            sha256: digest.clone(),
            resume_from,
        };
        let counts = self
            .stream_file(connector, path, &name, progress, done)
            .await?;
        done.insert(key, Checkpoint::Sent(digest));
        write_checkpoints(checkpoints, done)?;
        self.metrics.file(connector.name.as_str(), true);
        self.look(
            path,
            Look {
                handled: true,
                ..now
            },
        );
        Ok(Some(report(Some(counts))))
    }

    /// Sends one file, reading it as it goes: memory is bounded by a few
    /// chunks of records and the producer's queue, not by the file's size.
    /// A thread of its own parses, validates and pseudonymises while this task
    /// serialises and hands messages to the producer, so the two overlap.
    async fn stream_file(
        &self,
        connector: &ConnectorConfig,
        path: &Path,
        name: &str,
        progress: Progress<'_>,
        done: &mut BTreeMap<String, Checkpoint>,
    ) -> Result<Counts, IngestError> {
        /// Records parsed and handed over at a time, and chunks in the channel.
        const CHUNK: usize = 2048;
        const CHUNKS: usize = 4;
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or_default();
        let source = connector.name.as_str();
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Vec<(Location, Outcome)>, Prepared)>(CHUNKS);
        let parser = {
            let (refs, format, name, source) = (
                self.refs.clone(),
                connector.format,
                name.to_string(),
                connector.name.clone(),
            );
            std::thread::Builder::new()
                .name("pathflow-parse".into())
                .spawn(move || {
                    let cx = refs.context(&source);
                    let input = std::io::BufReader::with_capacity(1 << 20, file);
                    let mut records = crate::sources::records(format, input, &name, &cx);
                    loop {
                        let chunk: Vec<_> = records.by_ref().take(CHUNK).collect();
                        if chunk.is_empty() {
                            break;
                        }
                        // The JSON is written here too, so the sending task only produces.
                        let prepared = Prepared::of(&chunk);
                        // A closed channel means sending failed: stop.
                        if tx.blocking_send((chunk, prepared)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(io_error(path))?
        };
        let mut sending = self.producer.sending();
        let mut rejected: Vec<(u64, FieldError)> = Vec::new();
        let every = self.cfg.checkpoint_every_records.max(1);
        let mut read = 0u64;
        let mut sent: Result<(), IngestError> = Ok(());
        'chunks: while let Some((chunk, prepared)) = rx.recv().await {
            // Handing a message to librdkafka rarely waits, so without this a
            // large file would hold the runtime thread (and ignore shutdown)
            // until its end.
            tokio::task::yield_now().await;
            self.metrics.records(source, &chunk);
            for (index, (location, outcome)) in chunk.iter().enumerate() {
                // Quarantine keeps every rejected record of the file, resumed or not.
                if let Outcome::Rejected(r) = outcome {
                    rejected.push((location.line, r.error.clone()));
                }
                read += 1;
                if read <= progress.resume_from {
                    sending.skip(outcome);
                    continue;
                }
                if let Err(e) = sending.send_prepared(outcome, &prepared, index).await {
                    sent = Err(e.into());
                    break 'chunks;
                }
                if read.is_multiple_of(every) {
                    // Once everything up to a mark is acknowledged, a restart
                    // resumes after it. Marks are checked, not waited for.
                    sending.mark(read);
                    let checkpointed = record_progress(&mut sending, &progress, done);
                    if let Err(e) = checkpointed {
                        sent = Err(e);
                        break 'chunks;
                    }
                }
            }
        }
        drop(rx);
        // The parser stops at its next chunk once the channel is closed.
        let parsed = parser.join();
        sent?;
        if parsed.is_err() {
            return Err(IngestError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("the parser thread panicked"),
            });
        }
        self.metrics.source_bytes(source, bytes);
        // Quarantine before waiting for the broker: should producing fail, the
        // raw records are kept all the same.
        self.quarantine(
            &connector.name,
            connector.format,
            name,
            Raw::File(path),
            &rejected,
        )?;
        let counts = sending.finish().await?;
        self.metrics.duplicates(source, counts.duplicates);
        Ok(counts)
    }

    fn context(&self, source: &SourceName) -> Context<'_> {
        self.refs.context(source)
    }

    /// Records `now` as the latest look at `path`, returning the one before.
    fn look(&self, path: &Path, now: Look) -> Option<Look> {
        let mut looks = self.looks.lock().unwrap_or_else(|e| e.into_inner());
        looks.insert(path.to_path_buf(), now)
    }

    /// Keeps the raw records of `rejected` (line or entry, reason) in local quarantine.
    fn quarantine(
        &self,
        source: &SourceName,
        format: Format,
        name: &str,
        raw: Raw<'_>,
        rejected: &[(u64, FieldError)],
    ) -> Result<(), IngestError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let dir = self.cfg.state_dir.join("quarantine").join(dir_name(source));
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let unit = if format == Format::FhirBundle {
            "entry"
        } else {
            "line"
        };
        let mut reasons = format!("{unit},field,problem,rule\n");
        for (line, e) in rejected {
            reasons.push_str(&format!(
                "{line},{},{},{}\n",
                quote(&e.field),
                quote(&e.problem),
                quote(&e.rule)
            ));
        }
        let input: Box<dyn std::io::Read> = match raw {
            Raw::Bytes(b) => Box::new(b),
            Raw::File(p) => Box::new(std::fs::File::open(p).map_err(io_error(p))?),
        };
        let mut input = std::io::BufReader::new(input);
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(io_error(&path))?);
        if format == Format::FhirBundle {
            // A Bundle's entries refer to each other (an Appointment to its
            // Patient and Slot): keep it whole, the reasons naming the entries.
            std::io::copy(&mut input, &mut out).map_err(io_error(&path))?;
        } else {
            // The header (for CSV, so the fixed file can be re-sent as it is),
            // then each rejected line, read in one pass.
            let wanted: std::collections::BTreeSet<u64> = rejected.iter().map(|r| r.0).collect();
            let keep_header = format != Format::NdjsonEvents;
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                line.clear();
                let n = std::io::BufRead::read_until(&mut input, b'\n', &mut line)
                    .map_err(io_error(&path))?;
                if n == 0 {
                    break;
                }
                number += 1;
                if (keep_header && number == 1) || wanted.contains(&number) {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    out.write_all(&line).map_err(io_error(&path))?;
                }
            }
        }
        out.flush().map_err(io_error(&path))?;
        let reasons_path = dir.join(format!("{name}.reasons.csv"));
        std::fs::write(&reasons_path, reasons).map_err(io_error(&reasons_path))
    }
}

/// Once the broker has acknowledged every message up to a mark, records in
/// the connector's checkpoints how many of the file's records that covers.
fn record_progress(
    sending: &mut crate::kafka::Sending<'_>,
    progress: &Progress<'_>,
    done: &mut BTreeMap<String, Checkpoint>,
) -> Result<(), IngestError> {
    if let Some(records) = sending.acknowledged()? {
        let partial = Checkpoint::Partial {
            sha256: progress.sha256.clone(),
            records,
        };
        done.insert(progress.key.clone(), partial);
        write_checkpoints(progress.checkpoints, done)?;
    }
    Ok(())
}

/// Where quarantine finds the raw records: a request body, or a file read again.
enum Raw<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// The SHA-256 of a file's content, read in blocks.
fn file_digest(path: &Path) -> Result<String, IngestError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut block).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, IngestError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Io {
            path: PathBuf::from(addr.to_string()),
            source,
        })
}

/// The files a connector reads: the file itself, or every file under a
/// directory (its subdirectories too, as FHIR exports keep one per practice),
/// sorted by path.
fn files_of(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let p = entry.map_err(io_error(&dir))?.path();
            if in_progress(&p) {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// How a file is named in locations and quarantine: its path under the
/// connector's directory, or its own name when the connector names a file.
fn relative_name(root: &Path, file: &Path) -> String {
    match file.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Names of files still being written, by the usual conventions.
fn in_progress(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

fn dir_name(source: &SourceName) -> String {
    source.as_str().replace(':', "_")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_checkpoints(path: &Path) -> Result<BTreeMap<String, Checkpoint>, IngestError> {
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

fn write_checkpoints(path: &Path, done: &BTreeMap<String, Checkpoint>) -> Result<(), IngestError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    // Write then rename, so a crash never leaves a half-written checkpoint.
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(done).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}
