//! Source formats: how a record of each source file becomes events. Every
//! format has one shape ([`CsvFormat`]): the columns it needs, and a `map`
//! from one [`Row`] to events (or an opt-out, or a [`FieldError`]). What all
//! formats share (the patient's attributes, envelopes, event ids) is here.
//!
//! - [`pas_referrals`]: the PAS referral (RTT pathway) extract.
//! - [`pas_outpatients`]: the PAS outpatient appointment, clinic slot and follow-up extracts.
//! - [`gp_appointments`]: the GP appointment-book extract (slots and appointments).
//! - [`advice`]: the e-RS Advice & Guidance extract.

pub mod advice;
pub mod gp_appointments;
pub mod pas_outpatients;
pub mod pas_referrals;

use chrono::{DateTime, NaiveDate, Utc};
use pathflow_schemas::codes::{Sex, TreatmentFunction};
use pathflow_schemas::event::{Envelope, Event, EventType, Payload, SCHEMA_VERSION};
use pathflow_schemas::{AgeBand, OdsCode, Patient, SourceName};

use crate::pseudonymise::Pseudonymiser;
use crate::record::{Columns, FieldError, Location, Rejection, Row};
use crate::reference::{DeprivationLookup, OptOutList};

/// What a connector needs to turn records into events.
pub struct Context<'a> {
    /// Keyed pseudonyms and event ids.
    pub pseudonymiser: &'a Pseudonymiser,
    /// Patients whose records are dropped.
    pub opt_out: &'a OptOutList,
    /// Postcode → deprivation decile.
    pub deprivation: &'a DeprivationLookup,
    /// The connector and feed, on every envelope.
    pub source: SourceName,
    /// When the records are being read.
    pub recorded_at: DateTime<Utc>,
}

/// What one record yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Its events (possibly none, e.g. an unbooked slot that is not yet published).
    Events(Vec<Event>),
    /// The patient is on the National Data Opt-out list: nothing is written anywhere.
    OptedOut,
}

/// The organisations an event concerns.
#[derive(Debug, Clone, Default)]
pub struct Orgs {
    /// GP practice.
    pub practice: Option<OdsCode>,
    /// Hospital provider.
    pub provider: Option<OdsCode>,
    /// Specialty.
    pub treatment_function: Option<TreatmentFunction>,
}

impl Context<'_> {
    /// True when the record's patient is on the National Data Opt-out list.
    /// Formats ask this first, so an opted-out patient's record is dropped even
    /// when something else in it is wrong (rather than quarantined with their identifiers).
    pub fn opted_out(&self, row: &Row<'_>) -> Result<bool, FieldError> {
        Ok(self.opt_out.contains(&row.nhs_number("nhs_number")?))
    }

    /// The patient attributes of a record, or `None` when they opted out.
    /// Reads `nhs_number`, `date_of_birth`, `sex` and `postcode`; the age band is
    /// taken at `on`, the event date, and the postcode is dropped once its decile is known.
    pub fn patient(&self, row: &Row<'_>, on: NaiveDate) -> Result<Option<Patient>, FieldError> {
        let nhs = row.nhs_number("nhs_number")?;
        if self.opt_out.contains(&nhs) {
            return Ok(None);
        }
        let dob = row.date("date_of_birth")?;
        let age_band = AgeBand::at(dob, on).ok_or_else(|| {
            FieldError::new(
                "date_of_birth",
                "is after the event date",
                "a date of birth on or before the event",
            )
        })?;
        let sex = row.optional_code::<Sex>("sex")?.unwrap_or(Sex::NotKnown);
        let deprivation_decile = row
            .optional("postcode")
            .and_then(|p| self.deprivation.decile(p));
        Ok(Some(Patient {
            id: self.pseudonymiser.patient(&nhs),
            age_band,
            sex,
            deprivation_decile,
        }))
    }

    /// An event of `payload`'s type about `record` (the record key within this
    /// source, from which the event id is derived), at `occurred_at`.
    pub fn event(
        &self,
        record: &str,
        occurred_at: DateTime<Utc>,
        orgs: &Orgs,
        payload: Payload,
    ) -> Event {
        let event_type: EventType = payload.event_type();
        Event {
            envelope: Envelope {
                event_id: self
                    .pseudonymiser
                    .event_id(&self.source, record, event_type),
                occurred_at,
                recorded_at: self.recorded_at,
                source: self.source.clone(),
                schema_version: SCHEMA_VERSION,
                key_id: Some(self.pseudonymiser.key_id().clone()),
                practice: orgs.practice.clone(),
                provider: orgs.provider.clone(),
                treatment_function: orgs.treatment_function,
            },
            payload,
        }
    }
}

/// One CSV source format.
pub trait CsvFormat {
    /// Its name in configuration, e.g. `pas_referrals`.
    const NAME: &'static str;
    /// Columns the header must have.
    const REQUIRED: &'static [&'static str];
    /// The events of one row.
    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError>;
}

/// The outcome of one record of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Events to produce.
    Events(Vec<Event>),
    /// Dropped: the patient opted out.
    OptedOut,
    /// Rejected: to the dead-letter topic (and the raw line to quarantine).
    Rejected(Rejection),
}

/// Reads a whole CSV source with format `F`, yielding each record's location and
/// outcome. A bad record never stops the rest of the file; a bad header rejects
/// the file as a whole (one rejection at line 1).
pub fn read_csv<F: CsvFormat, R: std::io::Read>(
    input: R,
    file: &str,
    cx: &Context<'_>,
) -> Vec<(Location, Outcome)> {
    let reject = |line: u64, error: FieldError| {
        let location = Location {
            file: file.to_string(),
            line,
        };
        let rejection = Rejection {
            source: cx.source.clone(),
            location: location.clone(),
            error,
            rejected_at: cx.recorded_at,
        };
        (location, Outcome::Rejected(rejection))
    };
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let columns = match reader.headers().map_err(|e| e.to_string()).and_then(|h| {
        Columns::new(h, F::REQUIRED).map_err(|e| format!("{}: {}", e.field, e.problem))
    }) {
        Ok(c) => c,
        Err(problem) => {
            let rule = format!(
                "a {} file starts with a header naming {}",
                F::NAME,
                F::REQUIRED.join(", ")
            );
            return vec![reject(1, FieldError::new("(header)", problem, rule))];
        }
    };
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        // csv's positions count the line before a record's own (checked against
        // the generator's answer key in tests/pas_referrals.rs); add one for the
        // 1-based file line an editor shows.
        let before = reader.position().line() + 1;
        let result = reader.read_record(&mut record);
        let line = record.position().map_or(before, |p| p.line() + 1);
        match result {
            Ok(false) => break,
            Ok(true) => {
                let location = Location {
                    file: file.to_string(),
                    line,
                };
                let mapped = Row::new(&columns, &record).and_then(|row| F::map(&row, cx));
                out.push(match mapped {
                    Ok(Mapped::Events(events)) => (location, Outcome::Events(events)),
                    Ok(Mapped::OptedOut) => (location, Outcome::OptedOut),
                    Err(e) => reject(line, e),
                });
            }
            // The csv reader resynchronises at the next line, so one broken record costs one record.
            Err(e) => out.push(reject(
                line,
                FieldError::new("(row)", csv_problem(&e), "UTF-8 CSV, fields quoted with \""),
            )),
        }
    }
    out
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_string(),
        csv::ErrorKind::UnequalLengths { .. } => {
            "has a different number of fields from the header".to_string()
        }
        _ => "cannot be read as CSV".to_string(),
    }
}

/// The fixture every format's unit tests share: rows read under a test key,
/// with one patient opted out and one postcode in the deprivation lookup.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::NaiveDate;
    use pathflow_schemas::{Decile, Event, NhsNumber, SourceName, uk_time};

    use super::{Context, CsvFormat, Outcome, read_csv};
    use crate::pseudonymise::Pseudonymiser;
    use crate::reference::{DeprivationLookup, OptOutList};

    /// A valid NHS number that is on the opt-out list in unit tests.
    pub const OPTED_OUT: &str = "9434765919";

    /// The outcome of each data row of `rows` under `header`, read as format `F`
    /// by source `source` with the test key `key` (formats that must agree share a key).
    pub fn read_rows<F: CsvFormat>(
        key: &str,
        source: &str,
        file: &str,
        header: &str,
        rows: &[&str],
    ) -> Vec<Outcome> {
        let pseudonymiser = Pseudonymiser::for_tests(key);
        let opt_out: OptOutList = [NhsNumber::parse(OPTED_OUT).unwrap()].into_iter().collect();
        let deprivation: DeprivationLookup =
            [("QX1 0AA", Decile::new(3).unwrap())].into_iter().collect();
        let cx = Context {
            pseudonymiser: &pseudonymiser,
            opt_out: &opt_out,
            deprivation: &deprivation,
            source: SourceName::parse(source).unwrap(),
            recorded_at: uk_time::start_of_day_utc(NaiveDate::from_ymd_opt(2025, 5, 1).unwrap()),
        };
        let text = format!("{header}\n{}\n", rows.join("\n"));
        read_csv::<F, _>(text.as_bytes(), file, &cx)
            .into_iter()
            .map(|(_, outcome)| outcome)
            .collect()
    }

    /// The events of an outcome that must have some.
    pub fn events(outcome: &Outcome) -> &[Event] {
        match outcome {
            Outcome::Events(events) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }
}
