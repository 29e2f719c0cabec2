//! Source formats: how a record of each source file becomes events. Every
//! format has one shape ([`CsvFormat`]): the columns it needs, and a `map`
//! from one [`Row`] to events (or an opt-out, or a [`FieldError`]). What all
//! formats share (the patient's attributes, envelopes, event ids) is here.
//!
//! - [`pas_referrals`]: the PAS referral (RTT pathway) extract.
//! - [`pas_outpatients`]: the PAS outpatient appointment, clinic slot and follow-up extracts.
//! - [`gp_appointments`]: the GP appointment-book extract (slots and appointments).
//! - [`advice`]: the e-RS Advice & Guidance extract.
//! - [`fhir`]: FHIR R4 Bundles, mapped onto the CSV formats' rows.
//! - [`ndjson`]: newline-delimited pathflow events.
//!
//! [`read`] picks the reader of a configured [`Format`]; the file and HTTP
//! connectors both go through it.

pub mod advice;
pub mod fhir;
pub mod gp_appointments;
pub mod ndjson;
pub mod pas_outpatients;
pub mod pas_referrals;

use chrono::{DateTime, NaiveDate, Utc};
use pathflow_schemas::codes::{Sex, TreatmentFunction};
use pathflow_schemas::event::{Envelope, Event, EventType, Payload, SCHEMA_VERSION};
use pathflow_schemas::{AgeBand, OdsCode, Patient, SourceName};

use crate::config::Format;
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
    CsvRecords::<F, R>::new(input, file, cx).collect()
}

/// The records of a CSV source of format `F`, read one at a time, so a file
/// of any size is read in bounded memory (see [`read_csv`] for the rules).
pub struct CsvRecords<'a, F, R: std::io::Read> {
    reader: csv::Reader<R>,
    /// The header's columns, or `None` once the header was rejected (or the end reached).
    columns: Option<Columns>,
    header_rejection: Option<(Location, Outcome)>,
    record: csv::StringRecord,
    file: &'a str,
    cx: &'a Context<'a>,
    format: std::marker::PhantomData<fn() -> F>,
}

impl<'a, F: CsvFormat, R: std::io::Read> CsvRecords<'a, F, R> {
    /// Reads the header of `input`.
    pub fn new(input: R, file: &'a str, cx: &'a Context<'a>) -> Self {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
        let header = reader.headers().map_err(|e| e.to_string()).and_then(|h| {
            Columns::new(h, F::REQUIRED).map_err(|e| format!("{}: {}", e.field, e.problem))
        });
        let (columns, header_rejection) = match header {
            Ok(c) => (Some(c), None),
            Err(problem) => {
                let rule = format!(
                    "a {} file starts with a header naming {}",
                    F::NAME,
                    F::REQUIRED.join(", ")
                );
                let error = FieldError::new("(header)", problem, rule);
                (None, Some(rejection(cx, file, 1, error)))
            }
        };
        CsvRecords {
            reader,
            columns,
            header_rejection,
            record: csv::StringRecord::new(),
            file,
            cx,
            format: std::marker::PhantomData,
        }
    }
}

impl<F: CsvFormat, R: std::io::Read> Iterator for CsvRecords<'_, F, R> {
    type Item = (Location, Outcome);

    fn next(&mut self) -> Option<Self::Item> {
        let Some(columns) = &self.columns else {
            return self.header_rejection.take();
        };
        // csv's positions count the line before a record's own (checked against
        // the generator's answer key in tests/pas_referrals.rs); add one for the
        // 1-based file line an editor shows.
        let before = self.reader.position().line() + 1;
        let result = self.reader.read_record(&mut self.record);
        let line = self.record.position().map_or(before, |p| p.line() + 1);
        let (file, cx) = (self.file, self.cx);
        match result {
            Ok(false) => {
                self.columns = None;
                None
            }
            Ok(true) => {
                let location = Location {
                    file: file.to_string(),
                    line,
                };
                let mapped = Row::new(columns, &self.record).and_then(|row| F::map(&row, cx));
                Some(match mapped {
                    Ok(Mapped::Events(events)) => (location, Outcome::Events(events)),
                    Ok(Mapped::OptedOut) => (location, Outcome::OptedOut),
                    Err(e) => rejection(cx, file, line, e),
                })
            }
            // The csv reader resynchronises at the next line, so one broken record costs one record.
            Err(e) => Some(rejection(
                cx,
                file,
                line,
                FieldError::new("(row)", csv_problem(&e), "UTF-8 CSV, fields quoted with \""),
            )),
        }
    }
}

/// The records of a source of `format` read from `input`, one at a time,
/// `file` naming it in locations. CSV is read as it streams; a FHIR Bundle or
/// NDJSON source is read whole first (a Bundle is one JSON document).
pub fn records<'a, R: std::io::Read + Send + 'a>(
    format: Format,
    mut input: R,
    file: &'a str,
    cx: &'a Context<'a>,
) -> Box<dyn Iterator<Item = (Location, Outcome)> + Send + 'a> {
    use pas_outpatients::{PasAppointments, PasClinicSlots, PasFollowups};
    fn csv<'a, F: CsvFormat + 'a, R: std::io::Read + Send + 'a>(
        input: R,
        file: &'a str,
        cx: &'a Context<'a>,
    ) -> Box<dyn Iterator<Item = (Location, Outcome)> + Send + 'a> {
        Box::new(CsvRecords::<F, R>::new(input, file, cx))
    }
    match format {
        Format::PasReferrals => csv::<pas_referrals::PasReferrals, R>(input, file, cx),
        Format::PasOutpatientAppointments => csv::<PasAppointments, R>(input, file, cx),
        Format::PasClinicSlots => csv::<PasClinicSlots, R>(input, file, cx),
        Format::PasFollowups => csv::<PasFollowups, R>(input, file, cx),
        Format::GpAppointments => csv::<gp_appointments::GpAppointments, R>(input, file, cx),
        Format::AdviceAndGuidance => csv::<advice::AdviceAndGuidance, R>(input, file, cx),
        Format::FhirBundle | Format::NdjsonEvents => {
            let mut bytes = Vec::new();
            if let Err(e) = input.read_to_end(&mut bytes) {
                let error = FieldError::new(
                    "(file)",
                    format!("cannot be read ({})", e.kind()),
                    "a readable file",
                );
                return Box::new(std::iter::once(rejection(cx, file, 0, error)));
            }
            Box::new(read(format, &bytes, file, cx).into_iter())
        }
    }
}

/// Reads a whole source (a file's bytes or a request body) of `format`,
/// `file` naming it in locations: each record's location and outcome.
pub fn read(
    format: Format,
    bytes: &[u8],
    file: &str,
    cx: &Context<'_>,
) -> Vec<(Location, Outcome)> {
    match format {
        Format::FhirBundle => fhir::read_bundle(bytes, file, cx),
        Format::NdjsonEvents => ndjson::read_ndjson(bytes, file, cx),
        _ => records(format, bytes, file, cx).collect(),
    }
}

/// A rejection of the record at `file`:`line` by `cx`'s source.
pub fn rejection(
    cx: &Context<'_>,
    file: &str,
    line: u64,
    error: FieldError,
) -> (Location, Outcome) {
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

    /// Runs `read` with the unit tests' context: source `source`, the test key
    /// `key` (formats that must agree share a key), [`OPTED_OUT`] on the
    /// opt-out list and `QX1 0AA` in decile 3.
    pub fn with_context<T>(key: &str, source: &str, read: impl FnOnce(&Context<'_>) -> T) -> T {
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
        read(&cx)
    }

    /// The outcome of each data row of `rows` under `header`, read as format `F`
    /// by source `source` with the test key `key`.
    pub fn read_rows<F: CsvFormat>(
        key: &str,
        source: &str,
        file: &str,
        header: &str,
        rows: &[&str],
    ) -> Vec<Outcome> {
        let text = format!("{header}\n{}\n", rows.join("\n"));
        with_context(key, source, |cx| {
            read_csv::<F, _>(text.as_bytes(), file, cx)
                .into_iter()
                .map(|(_, outcome)| outcome)
                .collect()
        })
    }

    /// The events of an outcome that must have some.
    pub fn events(outcome: &Outcome) -> &[Event] {
        match outcome {
            Outcome::Events(events) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }
}

/// Every CSV format survives arbitrary input: bytes of any kind, and rows of
/// plausible-looking fields under the format's own header (with a BOM, CRLF,
/// quotes and extra columns mixed in). Each record is an outcome, never a panic.
#[cfg(test)]
mod robustness {
    use proptest::prelude::*;

    use super::testing::read_rows;
    use super::*;
    use pas_outpatients::{PasAppointments, PasClinicSlots, PasFollowups};

    fn all_formats(header_and_rows: &str) {
        let (header, rows) = header_and_rows
            .split_once('\n')
            .unwrap_or((header_and_rows, ""));
        let rows: Vec<&str> = rows.split('\n').collect();
        let key = "robustness";
        let file = "fuzz.csv";
        let n = read_rows::<pas_referrals::PasReferrals>(key, "pas:x", file, header, &rows).len()
            + read_rows::<PasAppointments>(key, "pas:x", file, header, &rows).len()
            + read_rows::<PasClinicSlots>(key, "pas:x", file, header, &rows).len()
            + read_rows::<PasFollowups>(key, "pas:x", file, header, &rows).len()
            + read_rows::<gp_appointments::GpAppointments>(key, "gp:x", file, header, &rows).len()
            + read_rows::<advice::AdviceAndGuidance>(key, "ers:x", file, header, &rows).len();
        assert!(
            n > 0,
            "every source yields at least one outcome or rejection"
        );
    }

    /// Field values that exercise the typed accessors: NHS numbers good and bad,
    /// dates real and impossible, codes, flags, quotes, separators, non-ASCII.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("9434765919".to_string()),
            Just("9990000018".to_string()),
            Just("2025-02-30".to_string()),
            Just("2025-04-07".to_string()),
            Just("2025-04-07T09:00:00".to_string()),
            Just("1980-01-01".to_string()),
            Just("110".to_string()),
            Just("Y".to_string()),
            Just("Attended".to_string()),
            Just("\"a,b\"".to_string()),
            Just("\"".to_string()),
            Just("\u{feff}".to_string()),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ]
    }

    fn header_of(columns: &'static [&'static str]) -> String {
        let mut h = columns.join(",");
        h.push_str(",sex,postcode,extra");
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            all_formats(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn plausible_rows_never_panic(
            which in 0usize..6,
            rows in proptest::collection::vec(proptest::collection::vec(field(), 0..20), 0..8),
            crlf in any::<bool>(),
            bom in any::<bool>(),
        ) {
            let columns: &[&[&str]] = &[
                pas_referrals::PasReferrals::REQUIRED,
                PasAppointments::REQUIRED,
                PasClinicSlots::REQUIRED,
                PasFollowups::REQUIRED,
                gp_appointments::GpAppointments::REQUIRED,
                advice::AdviceAndGuidance::REQUIRED,
            ];
            let mut text = if bom { "\u{feff}".to_string() } else { String::new() };
            text.push_str(&header_of(columns[which]));
            let end = if crlf { "\r\n" } else { "\n" };
            for row in rows {
                text.push_str(end);
                text.push_str(&row.join(","));
            }
            all_formats(&text);
        }
    }
}
