//! The GP appointment-book extract `gp/appointments.csv` (see
//! `simulate/FORMATS.md`, GP): one row per slot of each CSV practice's book,
//! with the appointment booked into it, if any. Every row publishes its slot
//! (GP capacity, with its GPAD mapping); a booked row also books the
//! appointment and records its outcome. The FHIR practices' books are another
//! format; these events join nothing else, as GP appointments carry no pathway.
//!
//! Choices:
//!
//! - `appointment.slot_published` is given the slot's start as `occurred_at`.
//!   The extract does not say when a slot was published, and the start is the
//!   one time every row has that is the same in every extract: the read time
//!   would change on every read, and the booking time is missing for unbooked
//!   slots (and would date a slot by the patient who took it). So capacity is
//!   dated by when it is offered, as GPAD dates appointments, and a booked
//!   slot is "published" after its booking in event time: nothing downstream
//!   may expect `slot_published` before `booked` for GP slots.
//! - Slot and appointment numbers are unique only within their practice, so
//!   their pseudonyms are scoped by the practice's ODS code, and event-id
//!   record keys start with it: `practice|slot` for the slot, so two rows of a
//!   slot rebooked after a cancellation publish it once, and
//!   `practice|slot|appointment` for the booking. An outcome's key adds what
//!   distinguishes it from a later correction (the start for attended and did
//!   not attend, the cancellation time and who cancelled): re-reading an
//!   extract repeats its ids, a changed outcome gets a new one.
//! - The National Data Opt-out is checked before any other field of a row that
//!   names a patient, so an opted-out patient's row is dropped even when
//!   something else in it is wrong, and it yields nothing, not even its slot:
//!   the opt-out covers the whole record, and a slot dated to the minute would
//!   still say that someone was seen then. GP capacity therefore misses the
//!   opted-out share of booked slots.
//! - An `Available` row (an unbooked slot) reads only the slot's columns: it
//!   has no patient, booking or appointment number, and is not rejected for
//!   lacking them.
//! - Patient identifiers, postcode and date of birth become the [`Patient`]
//!   attributes and are dropped; the local numbers are only ever hashed.
//!
//! [`Patient`]: pathflow_schemas::Patient

use chrono::{DateTime, Utc};
use pathflow_schemas::codes::{AppointmentMode, CancelledBy, HcpType, NationalCategory};
use pathflow_schemas::event::{
    AppointmentAttended, AppointmentBooked, AppointmentCancelled, AppointmentDidNotAttend,
    AppointmentKind, Payload, SlotKind, SlotPublished,
};

use super::{Context, CsvFormat, Mapped, Orgs};
use crate::pseudonymise::IdKind;
use crate::record::{FieldError, Row};

/// The GP appointment-book extract: one row per slot, booked or not.
///
/// A row becomes `appointment.slot_published` (at the slot's start) and, when
/// booked, `appointment.booked` (at `booked_at`, for the slot's start) and its
/// outcome: `appointment.attended` or `appointment.did_not_attend` (at the
/// start), or `appointment.cancelled` (at `cancelled_at`, by the patient or
/// the practice).
pub struct GpAppointments;

impl CsvFormat for GpAppointments {
    const NAME: &'static str = "gp_appointments";
    // Columns whose values only some statuses need are required in the header
    // all the same: without, say, `cancelled_at` every cancelled row would be
    // rejected, and a header is checked once where rows fail one by one.
    const REQUIRED: &'static [&'static str] = &[
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
        "cancelled_at",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        // An unbooked slot has no NHS number; any row that has one is its patient's record.
        if row.optional("nhs_number").is_some() && cx.opted_out(row)? {
            return Ok(Mapped::OptedOut);
        }
        let practice = row.ods("practice_code")?;
        let slot = row.required("slot_id")?;
        let start = row.local_time("slot_start")?;
        let duration_minutes = row.minutes("duration_minutes")?;
        let mode: AppointmentMode = row.code("appointment_mode")?;
        let hcp_type: HcpType = row.code("hcp_type")?;
        let national_category: NationalCategory = row.code("national_category")?;
        let status = status(row, "status")?;

        let scope = practice.as_str();
        let slot_id = cx.pseudonymiser.pseudonym(IdKind::Slot, scope, slot);
        let orgs = Orgs {
            practice: Some(practice.clone()),
            provider: None,
            treatment_function: None,
        };
        let published = cx.event(
            &format!("{scope}|{slot}"),
            start,
            &orgs,
            Payload::SlotPublished(SlotPublished {
                slot_id: slot_id.clone(),
                start,
                duration_minutes,
                kind: SlotKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                },
            }),
        );
        if status == GpStatus::Available {
            return Ok(Mapped::Events(vec![published]));
        }

        let appointment = row.required("appointment_id")?;
        // The local date, not the UTC one: the age band is of the day the patient booked.
        let booked_day = row.date("booked_at")?;
        let Some(patient) = cx.patient(row, booked_day)? else {
            return Ok(Mapped::OptedOut);
        };
        let booked_at = row.local_time("booked_at")?;
        let cancelled_at = row.optional_local_time("cancelled_at")?;

        if booked_at > start {
            return Err(FieldError::new(
                "booked_at",
                "is after slot_start",
                "booked_at is on or before slot_start",
            ));
        }
        if cancelled_at.is_some_and(|at| at < booked_at) {
            return Err(FieldError::new(
                "cancelled_at",
                "is before booked_at",
                "cancelled_at is on or after booked_at",
            ));
        }

        let appointment_id = cx
            .pseudonymiser
            .pseudonym(IdKind::Appointment, scope, appointment);
        let key = format!("{scope}|{slot}|{appointment}");
        let cancelled = |at: DateTime<Utc>, by: CancelledBy| {
            cx.event(
                &format!("{key}|{at}|{}", by.code()),
                at,
                &orgs,
                Payload::AppointmentCancelled(AppointmentCancelled {
                    appointment_id: appointment_id.clone(),
                    by,
                }),
            )
        };
        let outcome = match (status, cancelled_at) {
            // Booked for the future (or not yet recorded): no outcome yet; a
            // later extract's row for the same appointment adds it.
            (GpStatus::Booked, None) => None,
            (GpStatus::Attended, None) => Some(cx.event(
                &format!("{key}|{start}"),
                start,
                &orgs,
                Payload::AppointmentAttended(AppointmentAttended {
                    appointment_id: appointment_id.clone(),
                }),
            )),
            (GpStatus::Dna, None) => Some(cx.event(
                &format!("{key}|{start}"),
                start,
                &orgs,
                Payload::AppointmentDidNotAttend(AppointmentDidNotAttend {
                    appointment_id: appointment_id.clone(),
                }),
            )),
            (GpStatus::CancelledByPatient, Some(at)) => Some(cancelled(at, CancelledBy::Patient)),
            (GpStatus::CancelledByPractice, Some(at)) => Some(cancelled(at, CancelledBy::Provider)),
            // A cancellation without its time, or another outcome with one
            // (Available rows returned with their slot above).
            (_, at) => {
                return Err(FieldError::new(
                    "cancelled_at",
                    if at.is_some() {
                        "is set but status is not a cancellation"
                    } else {
                        "is empty but status is a cancellation"
                    },
                    "cancelled_at is given exactly when status is Cancelled by Patient or Cancelled by Practice",
                ));
            }
        };
        let booked = cx.event(
            &key,
            booked_at,
            &orgs,
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id,
                slot_id: Some(slot_id),
                patient,
                start,
                kind: AppointmentKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                },
            }),
        );
        let mut events = vec![published, booked];
        events.extend(outcome);
        Ok(Mapped::Events(events))
    }
}

/// A slot's state in the extract, as the practice system words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GpStatus {
    Booked,
    Attended,
    Dna,
    CancelledByPatient,
    CancelledByPractice,
    Available,
}

/// The statuses of the extract, in the words it uses.
const STATUSES: &[(&str, GpStatus)] = &[
    ("Booked", GpStatus::Booked),
    ("Attended", GpStatus::Attended),
    ("DNA", GpStatus::Dna),
    ("Cancelled by Patient", GpStatus::CancelledByPatient),
    ("Cancelled by Practice", GpStatus::CancelledByPractice),
    ("Available", GpStatus::Available),
];

/// The row's status (any case).
fn status(row: &Row<'_>, field: &str) -> Result<GpStatus, FieldError> {
    row.one_of(field, STATUSES)
}

#[cfg(test)]
mod tests {
    use pathflow_schemas::event::Event;
    use pathflow_schemas::{EventType, uk_time};

    use super::*;
    use crate::sources::Outcome;
    use crate::sources::testing::{OPTED_OUT, events};

    /// The outcome of each data row.
    fn read(rows: &[&str]) -> Vec<Outcome> {
        crate::sources::testing::read_rows::<GpAppointments>(
            "gp-appointments-unit",
            "gp:y90001:appointments",
            "gp/appointments.csv",
            HEADER,
            rows,
        )
    }

    const HEADER: &str = "practice_code,appointment_id,slot_id,slot_start,duration_minutes,booked_at,status,appointment_mode,hcp_type,national_category,nhs_number,date_of_birth,sex,postcode,cancelled_at";
    const AVAILABLE: &str = "Y90001,,Y90001-S0000409,2025-04-07T08:00:00,10,,Available,Telephone,GP,General Consultation Acute,,,,,";

    /// A booked row of patient `nhs` with `status` and `cancelled_at`.
    fn booked(nhs: &str, status: &str, cancelled: &str) -> String {
        format!(
            "Y90001,Y90001-A0000375,Y90001-S0000375,2025-04-07T08:30:00,10,2025-04-04T16:46:00,{status},Face-to-Face,GP,General Consultation Acute,{nhs},1977-09-24,Male,QX1 0AA,{cancelled}"
        )
    }

    fn rejected(outcome: &Outcome) -> (&str, &str) {
        match outcome {
            Outcome::Rejected(r) => (&r.error.field, &r.error.problem),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn types(events: &[Event]) -> Vec<EventType> {
        events.iter().map(Event::event_type).collect()
    }

    fn utc(local: &str) -> DateTime<Utc> {
        uk_time::to_utc(chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S").unwrap())
    }

    #[test]
    fn an_unbooked_slot_is_published_at_its_start_without_a_patient() {
        let out = read(&[AVAILABLE]);
        let events = events(&out[0]);
        assert_eq!(types(events), [EventType::SlotPublished]);
        assert_eq!(events[0].envelope.occurred_at, utc("2025-04-07T08:00:00"));
        assert_eq!(
            events[0].envelope.practice.as_ref().unwrap().as_str(),
            "Y90001"
        );
        assert_eq!(events[0].envelope.provider, None);
        assert_eq!(events[0].envelope.treatment_function, None);
        let Payload::SlotPublished(slot) = &events[0].payload else {
            panic!("{:?}", events[0].payload)
        };
        assert_eq!(slot.duration_minutes, 10);
        assert_eq!(
            slot.kind,
            SlotKind::Gp {
                mode: AppointmentMode::Telephone,
                hcp_type: HcpType::Gp,
                national_category: NationalCategory::GeneralConsultationAcute,
            }
        );
    }

    #[test]
    fn a_future_booking_is_booked_with_no_outcome_yet_and_keeps_its_ids() {
        let out = read(&[
            &booked("9990000018", "Booked", ""),
            &booked("9990000018", "Attended", ""),
        ]);
        let (future, later) = (events(&out[0]), events(&out[1]));
        assert_eq!(
            types(future),
            [EventType::SlotPublished, EventType::AppointmentBooked]
        );
        // The later extract's row repeats the slot and booking and adds the outcome.
        assert_eq!(&later[..2], future);
        assert_eq!(later[2].event_type(), EventType::AppointmentAttended);
        let cancelled = read(&[&booked("9990000018", "Booked", "2025-04-06T00:38:00")]);
        assert_eq!(rejected(&cancelled[0]).0, "cancelled_at");
    }

    #[test]
    fn a_booked_slot_gives_its_booking_and_outcome() {
        let out = read(&[
            &booked("9990000018", "Attended", ""),
            &booked("9990000018", "DNA", ""),
            &booked("9990000018", "Cancelled by Patient", "2025-04-06T00:38:00"),
            &booked("9990000018", "cancelled by practice", "2025-04-06T00:38:00"),
        ]);
        let expected = [
            EventType::AppointmentAttended,
            EventType::AppointmentDidNotAttend,
            EventType::AppointmentCancelled,
            EventType::AppointmentCancelled,
        ];
        for (outcome, last) in out.iter().zip(expected) {
            let events = events(outcome);
            assert_eq!(
                types(events),
                [EventType::SlotPublished, EventType::AppointmentBooked, last]
            );
            assert_eq!(events[1].envelope.occurred_at, utc("2025-04-04T16:46:00"));
            let Payload::AppointmentBooked(b) = &events[1].payload else {
                panic!("{:?}", events[1].payload)
            };
            let Payload::SlotPublished(s) = &events[0].payload else {
                panic!("{:?}", events[0].payload)
            };
            assert_eq!(b.slot_id.as_ref(), Some(&s.slot_id));
            assert_eq!(b.start, utc("2025-04-07T08:30:00"));
            assert_eq!(b.patient.id.as_str().len(), 32);
        }
        assert_eq!(
            events(&out[1])[2].envelope.occurred_at,
            utc("2025-04-07T08:30:00")
        );
        let cancelled = &events(&out[2])[2];
        assert_eq!(cancelled.envelope.occurred_at, utc("2025-04-06T00:38:00"));
        let by = |o: &Outcome| match &events(o)[2].payload {
            Payload::AppointmentCancelled(c) => c.by,
            other => panic!("{other:?}"),
        };
        assert_eq!(by(&out[2]), CancelledBy::Patient);
        assert_eq!(by(&out[3]), CancelledBy::Provider);
    }

    #[test]
    fn ids_repeat_on_rereading_and_change_with_the_outcome() {
        let attended = booked("9990000018", "Attended", "");
        let dna = booked("9990000018", "DNA", "");
        let early = booked("9990000018", "Cancelled by Patient", "2025-04-05T10:00:00");
        let late = booked("9990000018", "Cancelled by Patient", "2025-04-06T10:00:00");
        let ids = |o: &Outcome| -> Vec<String> {
            events(o)
                .iter()
                .map(|e| e.envelope.event_id.to_string())
                .collect()
        };
        let out = read(&[&attended, &attended, &dna, &early, &late, AVAILABLE]);
        let [a1, a2, d, c1, c2, free] = [0, 1, 2, 3, 4, 5].map(|i| ids(&out[i]));
        assert_eq!(a1, a2);
        // The slot and the booking are the same facts; the outcome is not.
        assert_eq!(a1[..2], d[..2]);
        assert_ne!(a1[2], d[2]);
        assert_eq!(c1[..2], c2[..2]);
        assert_ne!(c1[2], c2[2]);
        assert_ne!(free[0], a1[0], "another slot");
    }

    #[test]
    fn an_opted_out_patient_leaves_nothing_not_even_a_broken_row() {
        let out = read(&[
            &booked(OPTED_OUT, "Attended", ""),
            &booked(OPTED_OUT, "Seen", ""),
            &booked(OPTED_OUT, "Attended", "")
                .replace("2025-04-04T16:46:00", "2025-02-30T16:46:00"),
        ]);
        assert!(out.iter().all(|o| *o == Outcome::OptedOut), "{out:?}");
    }

    #[test]
    fn broken_rows_are_rejected_naming_the_field_but_not_the_value() {
        let cases = [
            (booked("9990000018", "Seen by nurse", ""), "status"),
            (
                booked("9990000018", "Cancelled by Patient", ""),
                "cancelled_at",
            ),
            (
                booked("9990000018", "Attended", "2025-04-06T00:38:00"),
                "cancelled_at",
            ),
            (
                booked("9990000018", "Cancelled by Practice", "2025-04-03T00:38:00"),
                "cancelled_at",
            ),
            (
                booked("9990000018", "Attended", "")
                    .replace("2025-04-04T16:46:00", "2025-04-07T09:00:00"),
                "booked_at",
            ),
            (
                booked("9990000018", "Attended", "").replace(",Face-to-Face,", ",Carrier Pigeon,"),
                "appointment_mode",
            ),
            (
                booked("9990000018", "Attended", "").replace(",10,", ",0,"),
                "duration_minutes",
            ),
            (booked("", "Attended", ""), "nhs_number"),
            (
                booked("9990000018", "Attended", "").replace("Y90001-A0000375", ""),
                "appointment_id",
            ),
        ];
        let rows: Vec<&str> = cases.iter().map(|(row, _)| row.as_str()).collect();
        for (outcome, (_, field)) in read(&rows).iter().zip(&cases) {
            let (got, problem) = rejected(outcome);
            assert_eq!(got, *field, "{problem}");
        }
        let Outcome::Rejected(r) = &read(&[&booked("9990000018", "Seen by nurse", "")])[0] else {
            panic!("not rejected")
        };
        assert_eq!(
            r.error.rule,
            "one of Booked, Attended, DNA, Cancelled by Patient, Cancelled by Practice, Available"
        );
        assert!(!format!("{r:?}").contains("Seen by nurse"), "{r:?}");
    }
}
