//! What a simulation run is asked for, with defaults calibrated to national
//! rates, and the calibration targets themselves (tests compare the output
//! files against them).

use std::path::PathBuf;

use chrono::{Datelike, NaiveDate, Weekday};
use pathflow_schemas::codes::TreatmentFunction;

/// National rates the generator is calibrated to.
pub mod targets {
    /// GP appointments (attended or DNA) per registered patient per month (GPAD).
    pub const GP_APPOINTMENTS_PER_PATIENT_MONTH: f64 = 0.5;
    /// Share of GP appointments the patient did not attend.
    pub const GP_DNA_RATE: f64 = 0.04;
    /// RTT clock starts (referrals received) per 1,000 registered patients per month.
    pub const CLOCK_STARTS_PER_1000_MONTH: f64 = 22.5;
    /// Follow-up attendances per first attendance (new:follow-up ≈ 1:2).
    pub const FOLLOWUPS_PER_FIRST: f64 = 2.0;
    /// Share of outpatient appointments (first and follow-up) not attended.
    pub const OP_DNA_RATE: f64 = 0.07;
    /// A&G requests as a share of referral demand (requests + referrals).
    pub const AG_SHARE: f64 = 0.125;
    /// Share of A&G requests converted into a referral.
    pub const AG_CONVERSION: f64 = 0.25;
    /// Share of follow-ups on patient-initiated follow-up.
    pub const PIFU_SHARE: f64 = 0.03;
    /// Average days per month, for per-month rates.
    pub const DAYS_PER_MONTH: f64 = 365.25 / 12.0;
}

/// One specialty offered by every provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Specialty {
    /// Its treatment function.
    pub tf: TreatmentFunction,
    /// Relative share of referral demand.
    pub share: f64,
    /// First-appointment capacity as a multiple of expected demand (below 1: the list grows).
    pub capacity: f64,
    /// Waiting list at the start of the run-in, in weeks of demand.
    pub backlog_weeks: f64,
    /// Share of its referrals that are two-week waits (suspected cancer).
    pub two_week_wait: f64,
}

/// A simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed: same seed and arguments, byte-identical output.
    pub seed: u64,
    /// Registered patients in the ICB.
    pub population: u32,
    /// Weeks in the extract period.
    pub weeks: u32,
    /// First day of the period (a Monday).
    pub start: NaiveDate,
    /// Weeks of hospital history simulated (and written) before `start`, so
    /// waiting lists and follow-up chains are in steady state when the period begins.
    pub run_in_weeks: u32,
    /// Acute providers; each offers every specialty.
    pub providers: u32,
    /// Share of practices whose appointment book comes as FHIR R4 Bundles instead of CSV.
    pub fhir_share: f64,
    /// Share of source rows replaced by a bad record.
    pub bad_record_rate: f64,
    /// Specialties and their demand and capacity.
    pub specialties: Vec<Specialty>,
    /// Output directory.
    pub out: PathBuf,
}

/// A configuration that cannot be run; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl SimConfig {
    /// Defaults: a small ICB of 250,000 patients over 52 weeks from 2025-04-07.
    pub fn new(out: PathBuf) -> Self {
        SimConfig {
            seed: 42,
            population: 250_000,
            weeks: 52,
            start: NaiveDate::from_ymd_opt(2025, 4, 7).expect("valid date"),
            run_in_weeks: 52,
            providers: 0,
            fhir_share: 0.1,
            bad_record_rate: 0.002,
            specialties: default_specialties(),
            out,
        }
    }

    /// Providers to simulate: as configured, or one per 600,000 patients.
    pub fn provider_count(&self) -> u32 {
        if self.providers > 0 {
            self.providers
        } else {
            (self.population / 600_000 + 1).min(6)
        }
    }

    /// Checks the configuration before any file is written.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.population < 2_000 {
            return err(format!(
                "--population must be at least 2000 (one practice); got {}",
                self.population
            ));
        }
        if self.weeks == 0 || self.weeks > 520 {
            return err(format!("--weeks must be 1 to 520; got {}", self.weeks));
        }
        if self.start.weekday() != Weekday::Mon {
            return err(format!(
                "--start must be a Monday (periods are whole ISO weeks); {} is a {}",
                self.start,
                self.start.weekday()
            ));
        }
        if !(0.0..=0.5).contains(&self.bad_record_rate) {
            return err(format!(
                "--bad-record-rate must be between 0 and 0.5; got {}",
                self.bad_record_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.fhir_share) {
            return err(format!(
                "--fhir-share must be between 0 and 1; got {}",
                self.fhir_share
            ));
        }
        if self.specialties.is_empty() {
            return err("at least one specialty is needed".into());
        }
        for s in &self.specialties {
            if !(0.05..=5.0).contains(&s.capacity) {
                return err(format!(
                    "capacity for treatment function {} must be 0.05 to 5 times demand; got {}",
                    s.tf.code(),
                    s.capacity
                ));
            }
        }
        Ok(())
    }

    /// Sets the capacity of specialties from `"110=0.8,330=1.2"`.
    pub fn set_capacities(&mut self, spec: &str) -> Result<(), ConfigError> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, factor) = part.split_once('=').ok_or_else(|| {
                ConfigError(format!(
                    "--capacity takes TFC=FACTOR pairs such as 110=0.8,330=1.2; got {part:?}"
                ))
            })?;
            let tf = TreatmentFunction::from_text(code)
                .ok_or_else(|| ConfigError(format!("--capacity: {code:?} is not a known treatment function code (e.g. 110 for Trauma and Orthopaedics)")))?;
            let factor: f64 = factor
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("--capacity: {factor:?} for {code} is not a number; use e.g. 0.8 for 80% of demand")))?;
            match self.specialties.iter_mut().find(|s| s.tf == tf) {
                Some(s) => s.capacity = factor,
                None => {
                    return Err(ConfigError(format!(
                        "--capacity: treatment function {code} is not simulated; simulated are {}",
                        self.specialties
                            .iter()
                            .map(|s| s.tf.code())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Specialties with shares of referral demand close to national RTT clock starts.
pub fn default_specialties() -> Vec<Specialty> {
    use TreatmentFunction::*;
    let s = |tf, share, capacity, backlog_weeks, two_week_wait| Specialty {
        tf,
        share,
        capacity,
        backlog_weeks,
        two_week_wait,
    };
    vec![
        s(TraumaAndOrthopaedics, 11.0, 0.97, 20.0, 0.0),
        s(Ophthalmology, 9.0, 1.0, 14.0, 0.0),
        s(GeneralSurgery, 7.0, 1.0, 12.0, 0.05),
        s(Dermatology, 8.0, 0.99, 16.0, 0.25),
        s(EarNoseAndThroat, 7.0, 0.99, 16.0, 0.08),
        s(Gynaecology, 8.0, 0.98, 18.0, 0.15),
        s(Urology, 6.0, 1.0, 12.0, 0.25),
        s(Gastroenterology, 6.0, 1.0, 14.0, 0.10),
        s(Cardiology, 6.0, 1.02, 10.0, 0.0),
        s(BreastSurgery, 3.0, 1.05, 3.0, 0.45),
        s(ColorectalSurgery, 3.0, 1.02, 8.0, 0.30),
        s(RespiratoryMedicine, 3.0, 1.02, 10.0, 0.05),
        s(Neurology, 3.0, 0.99, 18.0, 0.0),
        s(Rheumatology, 3.0, 1.0, 14.0, 0.0),
        s(OralSurgery, 3.0, 1.0, 16.0, 0.0),
        s(PlasticSurgery, 2.0, 1.0, 14.0, 0.0),
        s(GeneralInternalMedicine, 3.0, 1.05, 6.0, 0.0),
        s(Endocrinology, 2.0, 1.02, 10.0, 0.0),
        s(ElderlyMedicine, 1.5, 1.05, 4.0, 0.0),
        s(Paediatrics, 3.0, 1.02, 10.0, 0.0),
        s(PainManagement, 1.5, 0.98, 16.0, 0.0),
        s(VascularSurgery, 1.0, 1.02, 8.0, 0.0),
    ]
}
