//! `pathflow simulate`: source-side files for a fictional Integrated Care
//! Board, written the way GP systems, hospital PAS and e-RS export them,
//! raw identifiers included, so the connectors have real work to do. The same
//! seed and arguments always give byte-identical files.
//!
//! - [`config`]: what a run is asked for, and the national rates it is calibrated to.
//! - [`population`]: practices in PCNs, providers, postcodes, patients and their identifiers.
//! - [`gp`]: the GP appointment book (GPAD modes, HCP types, categories, booking bands).
//! - [`hospital`]: the queue model per provider and specialty: referrals, triage,
//!   first and follow-up clinics, RTT clocks, Advice & Guidance.
//! - [`fhir`]: FHIR R4 Bundles for the practices whose systems export FHIR.
//! - [`csv`]: streaming CSV writing and the injection of realistic bad records.
//! - [`rng`]: the seeded random source.
//!
//! Output layout (under `--out`):
//!
//! | path | what |
//! |---|---|
//! | `gp/appointments.csv` | GP appointment books (CSV practices) |
//! | `gp/fhir/<practice>/<week>.json` | GP appointment books (FHIR practices) |
//! | `pas/<provider>/referrals.csv` | one row per referral (RTT pathway) |
//! | `pas/<provider>/outpatient_appointments.csv` | one row per outpatient appointment |
//! | `pas/<provider>/clinic_slots.csv` | one row per outpatient clinic slot |
//! | `pas/<provider>/followups.csv` | one row per follow-up requirement |
//! | `ers/advice_and_guidance.csv` | one row per A&G request |
//! | `reference/*.csv` | practices, providers, postcode deprivation deciles, National Data Opt-out list |
//! | `bad_records.csv` | every injected bad record: file, line, kind, field |
//! | `manifest.json` | the arguments, file counts, and weekly waiting lists per queue |

pub mod config;
pub mod csv;
pub mod fhir;
pub mod gp;
pub mod hospital;
pub mod population;
pub mod rng;

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Duration;
use pathflow_schemas::Week;
use serde_json::json;

pub use config::{ConfigError, SimConfig, Specialty};

use crate::csv::{BadRecord, CsvFile, FileSummary};
use crate::gp::{GpBook, GpWriter};
use crate::hospital::{Hospital, QueueStats};
use crate::population::Icb;
use crate::rng::Rng;

/// A run that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Every CSV file with its line and record counts.
    pub files: Vec<FileSummary>,
    /// FHIR Bundle files written.
    pub fhir_files: u64,
    /// GP appointment-book rows, both formats.
    pub gp_rows: u64,
    /// Practices.
    pub practices: usize,
    /// Providers.
    pub providers: usize,
    /// Weekly first-appointment waiting lists per provider and specialty.
    pub queues: Vec<QueueStats>,
}

impl Summary {
    /// Every injected bad record, by file and line.
    pub fn bad_records(&self) -> Vec<&BadRecord> {
        let mut all: Vec<&BadRecord> = self.files.iter().flat_map(|f| &f.bad).collect();
        all.sort();
        all
    }
}

/// Runs the simulation, reporting progress through `progress`.
pub fn run(cfg: &SimConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Summary, SimError> {
    cfg.validate()?;
    let out = &cfg.out;
    let io_err = |path: &str| {
        let path = out.join(path).display().to_string();
        move |source| SimError::Io { path, source }
    };
    prepare_out_dir(out).map_err(io_err(""))?;
    let icb = Icb::new(
        cfg.seed,
        cfg.population,
        cfg.provider_count(),
        cfg.fhir_share,
        cfg.start,
    );
    progress(&format!(
        "simulating {} patients in {} practices, {} provider(s), {} weeks from {} (plus {} weeks of hospital history)",
        cfg.population,
        icb.practices.len(),
        icb.providers.len(),
        cfg.weeks,
        cfg.start,
        cfg.run_in_weeks
    ));
    let mut files = write_reference(cfg, &icb).map_err(io_err("reference"))?;

    // Three independent streams (GP CSV practices, GP FHIR practices, hospitals),
    // each with its own random streams, so the output does not depend on scheduling.
    let gp_done = AtomicU32::new(0);
    let (csv, fhir, hospital) = std::thread::scope(|scope| {
        let csv = scope.spawn(|| {
            let writer = GpWriter::csv(&cfg.out, cfg.bad_record_rate, Rng::new(cfg.seed, 0x4001))?;
            gp_book(cfg, &icb, writer, &gp_done, progress)
        });
        let fhir = scope.spawn(|| gp_book(cfg, &icb, GpWriter::fhir(&cfg.out), &gp_done, progress));
        let hospital = hospital_side(cfg, &icb, progress);
        let joined = |h: std::thread::ScopedJoinHandle<'_, io::Result<GpWriterDone>>| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a GP generator thread panicked")))
        };
        (joined(csv), joined(fhir), hospital)
    });
    let csv = csv.map_err(io_err("gp/appointments.csv"))?;
    let fhir = fhir.map_err(io_err("gp/fhir"))?;
    let (hospital_files, queues) = hospital.map_err(io_err("pas"))?;
    files.extend(csv.file);
    files.extend(hospital_files);
    let (fhir_files, gp_rows) = (fhir.fhir_files, csv.rows + fhir.rows);
    let summary = Summary {
        files,
        fhir_files,
        gp_rows,
        practices: icb.practices.len(),
        providers: icb.providers.len(),
        queues,
    };
    write_answer_key(cfg, &summary).map_err(io_err("manifest.json"))?;
    progress(&format!(
        "done: {} GP appointment-book rows ({} FHIR bundles), {} bad records injected; files under {}",
        summary.gp_rows,
        summary.fhir_files,
        summary.bad_records().len(),
        out.display()
    ));
    Ok(summary)
}

/// Refuses to write into a directory that holds something other than an
/// earlier run's output, and clears an earlier run's output.
fn prepare_out_dir(out: &Path) -> io::Result<()> {
    if out.exists() {
        let has_entries = std::fs::read_dir(out)?.next().is_some();
        if has_entries && !out.join("manifest.json").exists() {
            return Err(io::Error::other(format!(
                "{} is not empty and holds no earlier simulate output (no manifest.json); choose an empty or new directory",
                out.display()
            )));
        }
        for sub in ["gp", "pas", "ers", "reference"] {
            let p = out.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(p)?;
            }
        }
    }
    std::fs::create_dir_all(out)
}

fn write_reference(cfg: &SimConfig, icb: &Icb) -> io::Result<Vec<FileSummary>> {
    let root = &cfg.out;
    let mut practices = CsvFile::create(
        root,
        "reference/practices.csv",
        &[
            "practice_code",
            "practice_name",
            "pcn_code",
            "list_size",
            "deprivation_decile",
            "main_provider_code",
            "appointment_book_format",
        ],
    )?;
    for p in &icb.practices {
        practices
            .text(&p.code)
            .text(&p.name)
            .text(&p.pcn)
            .int(i64::from(p.list_size))
            .int(i64::from(p.decile))
            .text(&icb.providers[p.home_provider].code)
            .text(if p.fhir { "fhir" } else { "csv" });
        practices.finish_clean()?;
    }
    let mut providers = CsvFile::create(
        root,
        "reference/providers.csv",
        &["provider_code", "provider_name"],
    )?;
    for p in &icb.providers {
        providers.text(&p.code).text(&p.name);
        providers.finish_clean()?;
    }
    let mut postcodes = CsvFile::create(
        root,
        "reference/postcode_deprivation.csv",
        &["postcode", "imd_decile"],
    )?;
    for (code, decile) in icb.postcodes() {
        if let Some(d) = decile {
            postcodes.text(&code).int(i64::from(d));
            postcodes.finish_clean()?;
        }
    }
    let mut opt_out =
        CsvFile::create(root, "reference/national_data_opt_out.csv", &["nhs_number"])?;
    for i in 0..icb.population {
        let p = icb.patient(i);
        if p.opted_out {
            opt_out.text(&p.nhs_number.expose_digits());
            opt_out.finish_clean()?;
        }
    }
    [practices, providers, postcodes, opt_out]
        .into_iter()
        .map(CsvFile::close)
        .collect()
}

/// What one GP writer produced.
struct GpWriterDone {
    file: Option<FileSummary>,
    fhir_files: u64,
    rows: u64,
}

fn gp_book(
    cfg: &SimConfig,
    icb: &Icb,
    mut writer: GpWriter,
    done: &AtomicU32,
    progress: &(dyn Fn(&str) + Sync),
) -> io::Result<GpWriterDone> {
    let mut book = GpBook::new(icb.practices.len());
    let practices: Vec<usize> = (0..icb.practices.len())
        .filter(|p| writer.takes(icb, *p))
        .collect();
    let first = Week::of(cfg.start);
    for w in 0..cfg.weeks {
        let week = first.plus(i64::from(w));
        for &practice in &practices {
            // One stream per practice-week: output does not depend on thread scheduling.
            let mut rng = Rng::new(
                cfg.seed,
                0x5000_0000 + u64::from(w) * 100_000 + practice as u64,
            );
            let rows = book.week(icb, practice, week, &mut rng);
            writer.write(icb, practice, week, &rows)?;
        }
        // Two writers count weeks here: the CSV practices' and the FHIR practices'.
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        let total = 2 * cfg.weeks;
        if n.is_multiple_of((total / 4).max(1)) || n == total {
            progress(&format!(
                "GP appointment books: {}% written",
                n * 100 / total
            ));
        }
    }
    let (fhir_files, rows) = (writer.fhir_files, writer.rows);
    Ok(GpWriterDone {
        file: writer.close()?,
        fhir_files,
        rows,
    })
}

fn hospital_side(
    cfg: &SimConfig,
    icb: &Icb,
    progress: &(dyn Fn(&str) + Sync),
) -> io::Result<(Vec<FileSummary>, Vec<QueueStats>)> {
    let mut hospital = Hospital::new(cfg, icb)?;
    let total = (cfg.run_in_weeks + cfg.weeks) as usize;
    for k in 0..total {
        hospital.week(k)?;
        if (k + 1).is_multiple_of((total / 4).max(1)) || k + 1 == total {
            let date = cfg.start - Duration::weeks(i64::from(cfg.run_in_weeks))
                + Duration::weeks(k as i64 + 1);
            progress(&format!(
                "hospital queues: week {}/{total} (to {date})",
                k + 1
            ));
        }
    }
    hospital.finish()
}

fn write_answer_key(cfg: &SimConfig, summary: &Summary) -> io::Result<()> {
    let out = &cfg.out;
    let mut bad = CsvFile::create(out, "bad_records.csv", &["file", "line", "kind", "field"])?;
    for b in summary.bad_records() {
        bad.text(&b.file)
            .int(b.line as i64)
            .text(b.kind.name())
            .text(&b.field);
        bad.finish_clean()?;
    }
    bad.close()?;
    let manifest = json!({
        "generator": "pathflow simulate",
        "arguments": {
            "seed": cfg.seed,
            "population": cfg.population,
            "weeks": cfg.weeks,
            "start": cfg.start.to_string(),
            "run_in_weeks": cfg.run_in_weeks,
            "providers": summary.providers,
            "fhir_share": cfg.fhir_share,
            "bad_record_rate": cfg.bad_record_rate,
            "specialties": cfg.specialties.iter().map(|s| json!({
                "treatment_function": s.tf.code(), "share": s.share, "capacity": s.capacity,
                "backlog_weeks": s.backlog_weeks, "two_week_wait": s.two_week_wait,
            })).collect::<Vec<_>>(),
        },
        "period": {
            "first_day": cfg.start.to_string(),
            "extract_date": (cfg.start + Duration::weeks(i64::from(cfg.weeks)) - Duration::days(1)).to_string(),
            "history_from": (cfg.start - Duration::weeks(i64::from(cfg.run_in_weeks))).to_string(),
        },
        "practices": summary.practices,
        "fhir_bundles": summary.fhir_files,
        "gp_rows": summary.gp_rows,
        "files": summary.files.iter().map(|f| json!({
            "file": f.file, "lines": f.lines, "records": f.records, "bad_records": f.bad.len(),
        })).collect::<Vec<_>>(),
        "waiting_for_first_appointment": summary.queues.iter().map(|q| json!({
            "provider": q.provider, "treatment_function": q.treatment_function, "capacity": q.capacity,
            "weekly": q.waiting_first,
        })).collect::<Vec<_>>(),
    });
    let mut f = io::BufWriter::new(std::fs::File::create(out.join("manifest.json"))?);
    serde_json::to_writer_pretty(&mut f, &manifest)?;
    f.write_all(b"\n")?;
    f.flush()
}
