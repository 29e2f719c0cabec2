//! The GP appointment book: every slot of every practice, week by week,
//! booked or not, with GPAD's mode, HCP type and national category, the
//! booking date and the outcome. Most practices export CSV
//! (`gp/appointments.csv`); the FHIR share exports R4 Bundles
//! (`gp/fhir/<practice>/<week>.json`, see [`crate::fhir`]).

use std::io;
use std::path::Path;

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use pathflow_schemas::Week;
use pathflow_schemas::codes::{AppointmentMode, BookingBand, HcpType, NationalCategory};

use crate::config::targets;
use crate::csv::{CsvFile, Faults};
use crate::fhir;
use crate::population::Icb;
use crate::rng::Rng;

/// Status of a row in the GP appointment book, as GP systems write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpStatus {
    /// Seen.
    Attended,
    /// Did not attend.
    Dna,
    /// Cancelled by the patient.
    CancelledByPatient,
    /// Cancelled by the practice.
    CancelledByPractice,
    /// Slot never booked.
    Available,
}

impl GpStatus {
    /// The text in the extract.
    pub fn text(self) -> &'static str {
        match self {
            GpStatus::Attended => "Attended",
            GpStatus::Dna => "DNA",
            GpStatus::CancelledByPatient => "Cancelled by Patient",
            GpStatus::CancelledByPractice => "Cancelled by Practice",
            GpStatus::Available => "Available",
        }
    }
}

/// One row of the appointment book.
#[derive(Debug, Clone)]
pub struct GpAppointment {
    /// Practice-local number of the slot, and of the appointment when booked
    /// (written `<practice>-S0000123` and `<practice>-A0000123`).
    pub seq: u32,
    /// Slot start (local time).
    pub start: NaiveDateTime,
    /// Minutes.
    pub duration: u16,
    /// When it was booked (local time), for booked rows.
    pub booked_at: Option<NaiveDateTime>,
    /// Outcome.
    pub status: GpStatus,
    /// GPAD mode.
    pub mode: AppointmentMode,
    /// GPAD HCP type.
    pub hcp: HcpType,
    /// GPAD national category.
    pub category: NationalCategory,
    /// Patient index, for booked rows.
    pub patient: Option<u32>,
    /// When it was cancelled, for cancelled rows.
    pub cancelled_at: Option<NaiveDateTime>,
}

/// Header of `gp/appointments.csv`.
pub const HEADER: [&str; 15] = [
    "practice_code",
    "appointment_id",
    "slot_id",
    "slot_start",
    "duration_minutes",
    "booked_at",
    "status",
    "appointment_mode",
    "hcp_type",
    "national_category",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "cancelled_at",
];

const FAULTS: Faults = Faults {
    nhs_number: Some(10),
    code: (7, "Carrier Pigeon"),
    required: 3,
    date: 5,
    text: 9,
};

/// Shares of appointments by booking band (GPAD, national) and the relative DNA risk of each.
const BANDS: [(BookingBand, f64, f64); 7] = [
    (BookingBand::SameDay, 0.43, 0.4),
    (BookingBand::OneDay, 0.08, 0.8),
    (BookingBand::TwoToSevenDays, 0.21, 1.1),
    (BookingBand::EightToFourteenDays, 0.13, 1.4),
    (BookingBand::FifteenToTwentyOneDays, 0.07, 1.6),
    (BookingBand::TwentyTwoToTwentyEightDays, 0.04, 1.8),
    (BookingBand::MoreThanTwentyEightDays, 0.04, 1.9),
];

const MODES: [(AppointmentMode, f64); 5] = [
    (AppointmentMode::FaceToFace, 0.66),
    (AppointmentMode::Telephone, 0.28),
    (AppointmentMode::VideoOnline, 0.01),
    (AppointmentMode::HomeVisit, 0.01),
    (AppointmentMode::Unknown, 0.04),
];

const HCPS: [(HcpType, f64); 3] = [
    (HcpType::Gp, 0.44),
    (HcpType::OtherPracticeStaff, 0.53),
    (HcpType::Unknown, 0.03),
];

const CATEGORIES: [(NationalCategory, f64); 14] = [
    (NationalCategory::GeneralConsultationAcute, 0.31),
    (NationalCategory::GeneralConsultationRoutine, 0.26),
    (NationalCategory::PlannedClinics, 0.12),
    (NationalCategory::ClinicalTriage, 0.08),
    (NationalCategory::PlannedClinicalProcedure, 0.08),
    (NationalCategory::UnplannedClinicalActivity, 0.04),
    (NationalCategory::StructuredMedicationReview, 0.02),
    (NationalCategory::HomeVisit, 0.01),
    (NationalCategory::CareHomeVisit, 0.01),
    (NationalCategory::SocialPrescribing, 0.01),
    (NationalCategory::WalkIn, 0.005),
    (NationalCategory::ExternalService, 0.01),
    (NationalCategory::InconsistentMapping, 0.015),
    (NationalCategory::Unmapped, 0.02),
];

/// Relative activity Monday to Friday.
const WEEKDAY_WEIGHTS: [f64; 5] = [1.2, 1.0, 1.0, 0.95, 0.85];
/// Unbooked slots per booked appointment.
const UNUSED_SLOT_SHARE: f64 = 0.08;
/// Booked appointments later cancelled, per attended-or-DNA appointment.
const CANCELLED_SHARE: f64 = 0.03;

/// Generates one practice's appointment book for one week.
pub struct GpBook {
    band_weights: Vec<f64>,
    dna_by_band: Vec<f64>,
    mode_w: Vec<f64>,
    hcp_w: Vec<f64>,
    cat_w: Vec<f64>,
    seq: Vec<u32>,
}

impl GpBook {
    /// Ready for `practices` practices.
    pub fn new(practices: usize) -> Self {
        // Scale relative DNA risks so the overall rate is the national one.
        let mean_risk: f64 = BANDS.iter().map(|(_, share, risk)| share * risk).sum();
        GpBook {
            band_weights: BANDS.iter().map(|b| b.1).collect(),
            dna_by_band: BANDS
                .iter()
                .map(|b| b.2 / mean_risk * targets::GP_DNA_RATE)
                .collect(),
            mode_w: MODES.iter().map(|m| m.1).collect(),
            hcp_w: HCPS.iter().map(|m| m.1).collect(),
            cat_w: CATEGORIES.iter().map(|m| m.1).collect(),
            seq: vec![0; practices],
        }
    }

    /// The rows of `practice` for `week`, in slot order.
    pub fn week(
        &mut self,
        icb: &Icb,
        practice: usize,
        week: Week,
        rng: &mut Rng,
    ) -> Vec<GpAppointment> {
        let p = &icb.practices[practice];
        let per_week = f64::from(p.list_size) * targets::GP_APPOINTMENTS_PER_PATIENT_MONTH * 7.0
            / targets::DAYS_PER_MONTH;
        let day_total: f64 = WEEKDAY_WEIGHTS.iter().sum();
        let mut rows = Vec::with_capacity((per_week * 1.15) as usize);
        for (d, w) in WEEKDAY_WEIGHTS.iter().enumerate() {
            let day = week.monday() + Duration::days(d as i64);
            let mean = per_week * w / day_total;
            let booked = rng.poisson(mean);
            let cancelled = rng.poisson(mean * CANCELLED_SHARE);
            let unused = rng.poisson(mean * UNUSED_SLOT_SHARE);
            for kind in 0..booked + cancelled + unused {
                let status_hint = if kind < booked {
                    0
                } else if kind < booked + cancelled {
                    1
                } else {
                    2
                };
                rows.push(self.row(icb, practice, day, status_hint, rng));
            }
        }
        rows.sort_by_key(|r| (r.start, r.seq));
        rows
    }

    fn row(
        &mut self,
        icb: &Icb,
        practice: usize,
        day: NaiveDate,
        status_hint: u8,
        rng: &mut Rng,
    ) -> GpAppointment {
        self.seq[practice] += 1;
        let seq = self.seq[practice];
        let start =
            day.and_time(NaiveTime::MIN) + Duration::minutes(8 * 60 + 10 * rng.range(0, 59));
        let mode = MODES[rng.weighted(&self.mode_w)].0;
        let hcp = HCPS[rng.weighted(&self.hcp_w)].0;
        let category = match mode {
            AppointmentMode::HomeVisit => NationalCategory::HomeVisit,
            _ => CATEGORIES[rng.weighted(&self.cat_w)].0,
        };
        let duration = if hcp == HcpType::Gp { 10 } else { 15 };
        if status_hint == 2 {
            return GpAppointment {
                seq,
                start,
                duration,
                booked_at: None,
                status: GpStatus::Available,
                mode,
                hcp,
                category,
                patient: None,
                cancelled_at: None,
            };
        }
        let band = rng.weighted(&self.band_weights);
        let lead_days = match BANDS[band].0 {
            BookingBand::SameDay => 0,
            BookingBand::OneDay => 1,
            BookingBand::TwoToSevenDays => rng.range(2, 7),
            BookingBand::EightToFourteenDays => rng.range(8, 14),
            BookingBand::FifteenToTwentyOneDays => rng.range(15, 21),
            BookingBand::TwentyTwoToTwentyEightDays => rng.range(22, 28),
            BookingBand::MoreThanTwentyEightDays => rng.range(29, 60),
        };
        let booked_at = if lead_days == 0 {
            start - Duration::minutes(rng.range(5, 180))
        } else {
            (start.date() - Duration::days(lead_days)).and_time(NaiveTime::MIN)
                + Duration::minutes(rng.range(8 * 60, 18 * 60))
        };
        let (status, cancelled_at) = if status_hint == 1 {
            let by_patient = rng.chance(0.7);
            let status = if by_patient {
                GpStatus::CancelledByPatient
            } else {
                GpStatus::CancelledByPractice
            };
            let at = booked_at + (start - booked_at) / 2;
            (status, Some(at))
        } else if rng.chance(self.dna_by_band[band]) {
            (GpStatus::Dna, None)
        } else {
            (GpStatus::Attended, None)
        };
        GpAppointment {
            seq,
            start,
            duration,
            booked_at: Some(booked_at),
            status,
            mode,
            hcp,
            category,
            patient: Some(icb.draw_patient(practice, rng, false)),
            cancelled_at,
        }
    }
}

/// Writes GP appointment books in one of the two export formats.
pub struct GpWriter {
    /// The CSV extract, or `None` when this writer handles the FHIR practices.
    csv: Option<CsvFile>,
    root: std::path::PathBuf,
    /// FHIR Bundle files written.
    pub fhir_files: u64,
    /// Rows (slots) written.
    pub rows: u64,
}

impl GpWriter {
    /// A writer of `gp/appointments.csv` for the CSV practices.
    pub fn csv(root: &Path, bad_rate: f64, rng: Rng) -> io::Result<Self> {
        let csv = CsvFile::create(root, "gp/appointments.csv", &HEADER)?
            .with_faults(FAULTS, bad_rate, rng);
        Ok(GpWriter {
            csv: Some(csv),
            root: root.to_path_buf(),
            fhir_files: 0,
            rows: 0,
        })
    }

    /// A writer of `gp/fhir/<practice>/<week>.json` Bundles for the FHIR practices.
    pub fn fhir(root: &Path) -> Self {
        GpWriter {
            csv: None,
            root: root.to_path_buf(),
            fhir_files: 0,
            rows: 0,
        }
    }

    /// True when this writer takes `practice`'s appointment book.
    pub fn takes(&self, icb: &Icb, practice: usize) -> bool {
        icb.practices[practice].fhir == self.csv.is_none()
    }

    /// Writes one practice-week.
    pub fn write(
        &mut self,
        icb: &Icb,
        practice: usize,
        week: Week,
        rows: &[GpAppointment],
    ) -> io::Result<()> {
        self.rows += rows.len() as u64;
        let p = &icb.practices[practice];
        let Some(f) = &mut self.csv else {
            let rel = format!("gp/fhir/{}/{}.json", p.code, week);
            fhir::write_gp_bundle(&self.root.join(rel), icb, practice, week, rows)?;
            self.fhir_files += 1;
            return Ok(());
        };
        for r in rows {
            f.text(&p.code);
            if r.patient.is_some() {
                f.id(&appointment_prefix(&p.code), u64::from(r.seq), 7);
            } else {
                f.opt_text(None);
            }
            f.id(&slot_prefix(&p.code), u64::from(r.seq), 7)
                .datetime(r.start)
                .int(i64::from(r.duration));
            match r.booked_at {
                Some(t) => f.datetime(t),
                None => f.opt_text(None),
            };
            f.text(r.status.text())
                .text(r.mode.code())
                .text(r.hcp.code())
                .text(r.category.code());
            match r.patient {
                Some(i) => {
                    f.patient(&icb.patient(i));
                }
                None => {
                    f.opt_text(None)
                        .opt_text(None)
                        .opt_text(None)
                        .opt_text(None);
                }
            }
            match r.cancelled_at {
                Some(t) => f.datetime(t),
                None => f.opt_text(None),
            };
            if r.patient.is_some() {
                f.finish()?;
            } else {
                // An unbooked slot has no patient fields to corrupt.
                f.finish_clean()?;
            }
        }
        Ok(())
    }

    /// Closes the CSV file, if this writer has one.
    pub fn close(self) -> io::Result<Option<crate::csv::FileSummary>> {
        self.csv.map(CsvFile::close).transpose()
    }
}

/// `<practice>-A`, the prefix of a practice's appointment numbers.
pub fn appointment_prefix(practice: &str) -> String {
    format!("{practice}-A")
}

/// `<practice>-S`, the prefix of a practice's slot numbers.
pub fn slot_prefix(practice: &str) -> String {
    format!("{practice}-S")
}

/// The text of a practice-local identifier, e.g. `Y90001-A0000123`.
pub fn local_id(prefix: &str, seq: u32) -> String {
    format!("{prefix}{seq:07}")
}
