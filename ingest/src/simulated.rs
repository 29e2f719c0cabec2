//! The events of a simulated ICB, read in-process without Kafka: what the
//! connectors would produce from `pathflow simulate`'s files, for the tests
//! and benchmarks of the stages after ingest (transform, query).
//!
//! Pseudonyms are made with [`Pseudonymiser::for_tests`]: synthetic data only.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use pathflow_schemas::{Event, SourceName};

use crate::config::Format;
use crate::pseudonymise::Pseudonymiser;
use crate::reference::{DeprivationLookup, OptOutList};
use crate::sources::{Context, Outcome, records};

/// Every feed under a simulator output directory: the source name a
/// connector would have, its format, and the file (CSV feeds, then the FHIR
/// practices' weekly Bundles).
pub fn feeds(out: &Path) -> Vec<(String, Format, PathBuf)> {
    let mut feeds = vec![
        (
            "gp:appointments".to_string(),
            Format::GpAppointments,
            out.join("gp/appointments.csv"),
        ),
        (
            "ers:advice".to_string(),
            Format::AdviceAndGuidance,
            out.join("ers/advice_and_guidance.csv"),
        ),
    ];
    let mut providers: Vec<String> = std::fs::read_dir(out.join("pas"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    providers.sort();
    for p in providers {
        let lower = p.to_ascii_lowercase();
        for (feed, format) in [
            ("referrals", Format::PasReferrals),
            ("outpatient_appointments", Format::PasOutpatientAppointments),
            ("clinic_slots", Format::PasClinicSlots),
            ("followups", Format::PasFollowups),
        ] {
            feeds.push((
                format!("pas:{lower}:{feed}"),
                format,
                out.join(format!("pas/{p}/{feed}.csv")),
            ));
        }
    }
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(out.join("gp/fhir"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|practice| std::fs::read_dir(practice.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    bundles.sort();
    feeds.extend(
        bundles
            .into_iter()
            .map(|b| ("gp:fhir".to_string(), Format::FhirBundle, b)),
    );
    feeds
}

/// The events of every feed under `out` (bad records and opted-out
/// patients dropped, as a connector drops them), pseudonymised with the test
/// key `key`, recorded at `recorded_at`. In feed order, then file order.
pub fn events(
    out: &Path,
    key: &str,
    recorded_at: DateTime<Utc>,
) -> Result<Vec<Event>, std::io::Error> {
    let pseudonymiser = Pseudonymiser::for_tests(key);
    let reference = out.join("reference");
    let opt_out = OptOutList::load(&reference.join("national_data_opt_out.csv"))
        .map_err(std::io::Error::other)?;
    let deprivation = DeprivationLookup::load(&reference.join("postcode_deprivation.csv"))
        .map_err(std::io::Error::other)?;
    let mut all = Vec::new();
    for (source, format, path) in feeds(out) {
        let file = std::fs::File::open(&path)?;
        let cx = Context {
            pseudonymiser: &pseudonymiser,
            opt_out: &opt_out,
            deprivation: &deprivation,
            source: SourceName::parse(&source).map_err(std::io::Error::other)?,
            recorded_at,
        };
        let name = path.display().to_string();
        for (_, outcome) in records(format, std::io::BufReader::new(file), &name, &cx) {
            if let Outcome::Events(events) = outcome {
                all.extend(events);
            }
        }
    }
    Ok(all)
}
