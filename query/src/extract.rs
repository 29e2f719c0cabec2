//! Extracts: files for commissioners, from one SQL query, with disclosure
//! control. Each `[[extracts]]` entry of `pathflow serve`'s config is an
//! [`ExtractConfig`]; [`run`] runs it once through the [`Engine`], applies
//! [`crate::disclosure`], encodes CSV, Parquet or XLSX and delivers it.
//! [`crate::schedule`] decides when.
//!
//! Delivery is atomic: the file and then its manifest are each written
//! under a temporary name (a leading `.`) and renamed when complete, so a
//! reader never sees a partial file, and a manifest means its file is
//! whole. Files are named `<extract>-<slot>.<ext>`, the slot in UTC as
//! `YYYYMMDDTHHMMSSZ`; the manifest is `<extract>-<slot>.manifest.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, SecondsFormat, Utc};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::disclosure::{
    self, DisclosureReport, DisclosureSpec, RateColumn, TotalColumn, TotalRows,
};
use crate::engine::{Engine, Interface};
use crate::error::QueryError;
use crate::schedule::Schedule;

/// One `[[extracts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// Letters, digits, `-` and `_`: it names the files.
    pub name: String,
    /// Cron: `sec min hour day-of-month month day-of-week`, or five fields
    /// without the seconds (e.g. `0 7 * * MON`: Mondays at 07:00).
    pub schedule: String,
    /// The zone the schedule is read in.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The query; it runs with the commissioner role (gold tables only).
    pub sql: String,
    pub format: Format,
    /// A directory, or an object-store URL (`file:///srv/out`; `s3://` and
    /// the like once their object_store feature is built in).
    pub destination: String,
    /// Where the scheduler records the slots it has run; by default
    /// `.pathflow/` in a local destination (required for a remote one).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Disclosure control (the OpenSAFELY rule); on unless set to false.
    #[serde(default = "default_true")]
    pub disclosure: bool,
    /// Columns holding counts; required when `disclosure` is on.
    #[serde(default)]
    pub count_columns: Vec<String>,
    /// Rates and percentages, recomputed from the rounded counts.
    #[serde(default)]
    pub rate_columns: Vec<RateColumn>,
    /// Count columns that total others in their row.
    #[serde(default)]
    pub total_columns: Vec<TotalColumn>,
    /// Rows that total others.
    #[serde(default)]
    pub total_rows: Option<TotalRows>,
}

fn default_time_zone() -> String {
    "Europe/London".into()
}

fn default_true() -> bool {
    true
}

/// The file format of an extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
    Xlsx,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Xlsx => "xlsx",
        }
    }
}

impl ExtractConfig {
    /// The disclosure declaration of this extract.
    pub fn spec(&self) -> DisclosureSpec {
        DisclosureSpec {
            count_columns: self.count_columns.clone(),
            rate_columns: self.rate_columns.clone(),
            total_columns: self.total_columns.clone(),
            total_rows: self.total_rows.clone(),
        }
    }

    /// The parsed schedule.
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.schedule, &self.time_zone)
    }

    /// Checks what serde cannot, naming the extract and the key.
    pub fn validate(&self) -> Result<(), String> {
        let named = |m: String| format!("[[extracts]] {:?}: {m}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(named(
                "`name` must be letters, digits, `-` and `_` (it names the files)".into(),
            ));
        }
        self.schedule().map_err(&named)?;
        if self.disclosure {
            if self.count_columns.is_empty() {
                return Err(named(
                    "disclosure control is on but `count_columns` is empty: list the columns \
                     that hold counts, or set `disclosure = false` for a file with no counts"
                        .into(),
                ));
            }
            self.spec().validate().map_err(|e| named(e.to_string()))?;
        }
        let destination = Destination::parse(&self.destination).map_err(named)?;
        if self.state_dir.is_none() && destination.local_dir().is_none() {
            return Err(named(format!(
                "destination {:?} is not a local directory: set `state_dir` to a local \
                 directory for the scheduler's records",
                self.destination
            )));
        }
        Ok(())
    }

    /// The directory holding the scheduler's records for this extract.
    pub fn state_dir(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        Destination::parse(&self.destination)?
            .local_dir()
            .map(|d| d.join(".pathflow"))
            .ok_or_else(|| format!("extract {:?}: set `state_dir`", self.name))
    }
}

/// Where files go: a URL the object store understands.
#[derive(Debug, Clone)]
pub struct Destination {
    url: url::Url,
}

impl Destination {
    /// A directory path or an object-store URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = if text.contains("://") {
            url::Url::parse(text).map_err(|e| format!("destination {text:?} is not a URL: {e}"))?
        } else {
            let path = Path::new(text);
            let absolute = if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| format!("destination {text:?}: {e}"))?
                    .join(path)
            };
            url::Url::from_directory_path(&absolute)
                .map_err(|_| format!("destination {text:?} is not a usable directory path"))?
        };
        Ok(Destination { url })
    }

    /// The local directory, for `file://` destinations.
    pub fn local_dir(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    fn open(&self) -> Result<(Box<dyn ObjectStore>, StorePath), String> {
        if let Some(dir) = self.local_dir() {
            // The local store writes files but wants the root to exist.
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        object_store::parse_url(&self.url).map_err(|e| format!("{}: {e}", self.url))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

/// Which run this is: a scheduled slot, or `pathflow extract run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Scheduled(DateTime<Utc>),
    Manual(DateTime<Utc>),
}

impl Slot {
    pub fn at(self) -> DateTime<Utc> {
        match self {
            Slot::Scheduled(t) | Slot::Manual(t) => t,
        }
    }

    /// The slot as it appears in file names.
    pub fn stamp(self) -> String {
        self.at().format("%Y%m%dT%H%M%SZ").to_string()
    }
}

/// The manifest written beside each file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub extract: String,
    /// The scheduled slot (RFC 3339, UTC); for a manual run, when it was asked for.
    pub scheduled_slot: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub generated_at: String,
    pub sql: String,
    /// Each table read, with the Delta version read.
    pub tables: BTreeMap<String, u64>,
    pub rows: usize,
    pub file: String,
    pub format: Format,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub disclosure: DisclosureApplied,
}

/// The disclosure rules a file went through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DisclosureApplied {
    pub applied: bool,
    pub rules: Vec<String>,
    pub count_columns: Vec<String>,
    pub redacted_small: usize,
    pub redacted_secondary: usize,
    pub rounded: usize,
}

/// A file delivered.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub file: String,
    pub manifest_file: String,
    pub manifest: Manifest,
}

/// Why an extract failed, by stage.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the query failed: {0}")]
    Query(#[from] QueryError),
    #[error("{0}")]
    Disclosure(#[from] disclosure::DisclosureError),
    #[error("cannot encode the {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("cannot deliver to {destination}: {message}")]
    Deliver {
        destination: String,
        message: String,
    },
}

impl ExtractError {
    /// A short label for metrics.
    pub fn stage(&self) -> &'static str {
        match self {
            ExtractError::Query(_) => "query",
            ExtractError::Disclosure(_) => "disclosure",
            ExtractError::Encode { .. } => "encode",
            ExtractError::Deliver { .. } => "deliver",
        }
    }
}

/// The principal an extract queries as: the commissioner role, so an
/// extract reads gold tables only; the audit log names the extract.
pub fn principal(name: &str) -> Principal {
    Principal {
        name: format!("extract:{name}"),
        role: Role::Commissioner,
        scope: None,
    }
}

/// The rows of an extract as it would be written: the query's result after
/// disclosure control (when on).
pub async fn result(
    engine: &Engine,
    cfg: &ExtractConfig,
) -> Result<(RecordBatch, BTreeMap<String, u64>, Option<DisclosureReport>), ExtractError> {
    let out = engine
        .run(&principal(&cfg.name), &cfg.sql, Interface::Internal)
        .await?;
    if cfg.disclosure {
        let (batch, report) = disclosure::apply(&cfg.spec(), &out.schema, &out.batches)?;
        Ok((batch, out.tables, Some(report)))
    } else {
        let batch = arrow::compute::concat_batches(&out.schema, &out.batches).map_err(|e| {
            ExtractError::Encode {
                format: "result",
                message: e.to_string(),
            }
        })?;
        Ok((batch, out.tables, None))
    }
}

/// Runs `cfg` once for `slot`: query, disclosure control, encode, deliver.
pub async fn run(
    engine: &Engine,
    cfg: &ExtractConfig,
    slot: Slot,
) -> Result<Delivered, ExtractError> {
    let (batch, tables, report) = result(engine, cfg).await?;
    let spec = cfg.spec();
    let rules = if cfg.disclosure {
        spec.describe()
    } else {
        vec!["Disclosure control is off for this extract: counts are as computed.".into()]
    };
    let bytes = encode(cfg.format, &batch, &rules)?;
    let file = format!("{}-{}.{}", cfg.name, slot.stamp(), cfg.format.extension());
    let manifest_file = format!("{}-{}.manifest.json", cfg.name, slot.stamp());
    let report = report.unwrap_or_default();
    let manifest = Manifest {
        extract: cfg.name.clone(),
        scheduled_slot: slot.at().to_rfc3339_opts(SecondsFormat::Secs, true),
        trigger: match slot {
            Slot::Scheduled(_) => "schedule".into(),
            Slot::Manual(_) => "manual".into(),
        },
        generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        sql: cfg.sql.clone(),
        tables,
        rows: batch.num_rows(),
        file: file.clone(),
        format: cfg.format,
        sha256: hex(&Sha256::digest(&bytes)),
        disclosure: DisclosureApplied {
            applied: cfg.disclosure,
            rules,
            count_columns: if cfg.disclosure {
                cfg.count_columns.clone()
            } else {
                Vec::new()
            },
            redacted_small: report.redacted_small,
            redacted_secondary: report.redacted_secondary,
            rounded: report.rounded,
        },
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ExtractError::Encode {
            format: "manifest",
            message: e.to_string(),
        })?;
    let destination =
        Destination::parse(&cfg.destination).map_err(|message| ExtractError::Deliver {
            destination: cfg.destination.clone(),
            message,
        })?;
    deliver(&destination, &file, bytes).await?;
    deliver(&destination, &manifest_file, manifest_bytes).await?;
    Ok(Delivered {
        file,
        manifest_file,
        manifest,
    })
}

/// Writes `bytes` as `name` under the destination: to a temporary name
/// first, then renamed (atomic on a local file system; object stores make
/// each put atomic anyway).
async fn deliver(
    destination: &Destination,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), ExtractError> {
    let failed = |message: String| ExtractError::Deliver {
        destination: destination.to_string(),
        message,
    };
    let (store, prefix) = destination.open().map_err(failed)?;
    let temporary = prefix
        .clone()
        .join(format!(".{name}.{}.partial", std::process::id()));
    let target = prefix.join(name);
    store
        .put(&temporary, PutPayload::from(bytes))
        .await
        .map_err(|e| failed(e.to_string()))?;
    if let Err(e) = store.rename(&temporary, &target).await {
        let _ = store.delete(&temporary).await;
        return Err(failed(e.to_string()));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's bytes in `format`; `notes` go on the XLSX's notes sheet.
pub fn encode(
    format: Format,
    batch: &RecordBatch,
    notes: &[String],
) -> Result<Vec<u8>, ExtractError> {
    let failed = |message: String| ExtractError::Encode {
        format: format.extension(),
        message,
    };
    match format {
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                w.write(batch).map_err(|e| failed(e.to_string()))?;
            }
            Ok(out)
        }
        Format::Parquet => {
            let mut out = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)
                .map_err(|e| failed(e.to_string()))?;
            w.write(batch).map_err(|e| failed(e.to_string()))?;
            w.close().map_err(|e| failed(e.to_string()))?;
            Ok(out)
        }
        Format::Xlsx => xlsx(batch, notes).map_err(failed),
    }
}

/// Days from Excel's epoch (1899-12-30) to 1970-01-01.
const EXCEL_UNIX_EPOCH: f64 = 25_569.0;

fn xlsx(batch: &RecordBatch, notes: &[String]) -> Result<Vec<u8>, String> {
    use rust_xlsxwriter::{Format as Cell, Workbook};
    let e = |e: rust_xlsxwriter::XlsxError| e.to_string();
    let mut book = Workbook::new();
    let bold = Cell::new().set_bold();
    let date = Cell::new().set_num_format("yyyy-mm-dd");
    let datetime = Cell::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let sheet = book.add_worksheet();
    sheet.set_name("data").map_err(e)?;
    let schema: SchemaRef = batch.schema();
    let options = FormatOptions::default();
    for (c, field) in schema.fields().iter().enumerate() {
        let col = u16::try_from(c).map_err(|_| "more than 65,535 columns".to_string())?;
        sheet
            .write_string_with_format(0, col, field.name(), &bold)
            .map_err(e)?;
        let array = batch.column(c);
        let cast_f64 = |a: &dyn Array| {
            arrow::compute::cast(a, &DataType::Float64).map_err(|err| err.to_string())
        };
        for r in 0..batch.num_rows() {
            let row = u32::try_from(r + 1).map_err(|_| "too many rows".to_string())?;
            if array.is_null(r) {
                continue;
            }
            match array.data_type() {
                t if t.is_numeric() => {
                    let v = cast_f64(array.slice(r, 1).as_ref())?;
                    let v = v.as_primitive::<arrow::datatypes::Float64Type>().value(0);
                    sheet.write_number(row, col, v).map_err(e)?;
                }
                DataType::Boolean => {
                    sheet
                        .write_boolean(row, col, array.as_boolean().value(r))
                        .map_err(e)?;
                }
                DataType::Date32 => {
                    let days = array
                        .as_primitive::<arrow::datatypes::Date32Type>()
                        .value(r);
                    sheet
                        .write_number_with_format(row, col, days as f64 + EXCEL_UNIX_EPOCH, &date)
                        .map_err(e)?;
                }
                DataType::Timestamp(unit, _) => {
                    let per_second = match unit {
                        TimeUnit::Second => 1.0,
                        TimeUnit::Millisecond => 1e3,
                        TimeUnit::Microsecond => 1e6,
                        TimeUnit::Nanosecond => 1e9,
                    };
                    let raw = arrow::compute::cast(array.slice(r, 1).as_ref(), &DataType::Int64)
                        .map_err(|err| err.to_string())?;
                    let raw = raw.as_primitive::<arrow::datatypes::Int64Type>().value(0);
                    let days = raw as f64 / per_second / 86_400.0 + EXCEL_UNIX_EPOCH;
                    sheet
                        .write_number_with_format(row, col, days, &datetime)
                        .map_err(e)?;
                }
                _ => {
                    let f = ArrayFormatter::try_new(array.as_ref(), &options)
                        .map_err(|err| err.to_string())?;
                    sheet
                        .write_string(row, col, f.value(r).to_string())
                        .map_err(e)?;
                }
            }
        }
    }
    let notes_sheet = book.add_worksheet();
    notes_sheet.set_name("notes").map_err(e)?;
    notes_sheet
        .write_string_with_format(0, 0, "How this file was made", &bold)
        .map_err(e)?;
    for (i, line) in notes.iter().enumerate() {
        let row = u32::try_from(i + 1).map_err(|_| "too many notes".to_string())?;
        notes_sheet.write_string(row, 0, line).map_err(e)?;
    }
    book.save_to_buffer().map_err(e)
}

/// An engine over the tables of `cfg`, loaded once (no reloader), for
/// `pathflow extract run` outside a server.
pub async fn open_engine(cfg: &crate::ServeConfig) -> std::io::Result<Arc<Engine>> {
    let tables = crate::catalog::LiveTables::new(&cfg.tables.location, Default::default());
    for problem in tables.reload(&mut Default::default()).await {
        eprintln!("extract: {problem}");
    }
    Engine::new(cfg, tables, crate::metrics::QueryMetrics::new())
}

/// Finds the extract called `name`, or says which there are.
pub fn find<'a>(cfg: &'a crate::ServeConfig, name: &str) -> Result<&'a ExtractConfig, String> {
    cfg.extracts.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = cfg.extracts.iter().map(|e| e.name.as_str()).collect();
        format!(
            "no extract is named {name:?}; the config has: {}",
            if names.is_empty() {
                "none (add [[extracts]])".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ExtractConfig, String> {
        let cfg: ExtractConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn disclosure_is_on_by_default_and_needs_count_columns() {
        let e = parse(
            "name='w'\nschedule='0 7 * * MON'\nsql='select 1'\nformat='csv'\ndestination='/tmp/x'\n",
        )
        .unwrap_err();
        assert!(e.contains("count_columns"), "{e}");
        let cfg = parse(
            "name='w'\nschedule='0 7 * * MON'\nsql='select 1'\nformat='xlsx'\ndestination='/tmp/x'\ncount_columns=['n']\n",
        )
        .unwrap();
        assert!(cfg.disclosure);
        assert_eq!(cfg.time_zone, "Europe/London");
        assert_eq!(cfg.state_dir().unwrap(), Path::new("/tmp/x/.pathflow"));
    }

    #[test]
    fn bad_names_schedules_and_remote_state_are_refused_with_the_key() {
        let base = "sql='select 1'\nformat='csv'\ndisclosure=false\n";
        let e = parse(&format!(
            "name='a b'\nschedule='* * * * *'\ndestination='/tmp/x'\n{base}"
        ))
        .unwrap_err();
        assert!(e.contains("`name`"), "{e}");
        let e = parse(&format!(
            "name='a'\nschedule='61 * * * *'\ndestination='/tmp/x'\n{base}"
        ))
        .unwrap_err();
        assert!(e.contains("minute"), "{e}");
        let e = parse(&format!(
            "name='a'\nschedule='* * * * *'\ndestination='s3://bucket/x'\n{base}"
        ))
        .unwrap_err();
        assert!(e.contains("state_dir"), "{e}");
    }
}
