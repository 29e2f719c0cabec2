//! The PAS outpatient extracts (see `simulate/FORMATS.md`, Hospital): one row
//! per appointment ([`PasAppointments`]), per clinic slot ([`PasClinicSlots`])
//! and per follow-up requirement ([`PasFollowups`]), each showing its state at
//! the extract date. Appointments and slots become `appointment.*` events,
//! follow-ups `followup.*` events; they join [`super::pas_referrals`]' events
//! on the pathway id, which both derive from the UBRN the same way.
//!
//! Choices:
//!
//! - Appointment, slot and follow-up numbers are unique only within their
//!   provider, so their pseudonyms are scoped by the provider's ODS code, and
//!   event-id record keys start with it. A key also holds whatever
//!   distinguishes one fact from a later correction of it (a new start, a
//!   cancellation date and who cancelled, an outcome date and reason):
//!   re-reading an extract repeats its ids, a changed outcome gets a new one.
//! - The National Data Opt-out is checked before any other field is read, so
//!   an opted-out patient's record is dropped even when something else in it
//!   is wrong: it is neither dead-lettered nor quarantined (the quarantine
//!   would keep the raw line, NHS number and all). Only a record whose NHS
//!   number cannot be read is rejected without knowing.
//! - The extract does not say when an appointment was moved; see
//!   [`PasAppointments`] for the time given to `appointment.rescheduled`.
//! - `followup.booked` comes from the appointment extract, where the booking
//!   time is; the follow-up extract's `Booked` status adds nothing to it.
//! - Hospital numbers and clinic codes are read by nobody and dropped.

use pathflow_schemas::PseudoId;
use pathflow_schemas::codes::{
    AppointmentStatus, CancelledBy, ContactType, FollowupCancelReason, SlotWithdrawReason,
    TreatmentFunction,
};
use pathflow_schemas::event::{
    AppointmentAttended, AppointmentBooked, AppointmentCancelled, AppointmentDidNotAttend,
    AppointmentKind, AppointmentRescheduled, FollowupBooked, FollowupCancelled, FollowupCompleted,
    FollowupRequired, Payload, SlotKind, SlotPublished, SlotWithdrawn,
};
use pathflow_schemas::uk_time::start_of_day_utc;

use super::{Context, CsvFormat, Mapped, Orgs};
use crate::pseudonymise::IdKind;
use crate::record::{FieldError, Row, not_after, not_before};

/// The PAS outpatient appointment extract: one row per appointment.
///
/// A row becomes `appointment.booked` (at `booked_at`, with the start it was
/// booked for), `followup.booked` when it meets a follow-up, then
/// `appointment.rescheduled` when the hospital moved it, then its outcome:
/// attended or did not attend (at the start), or cancelled (on
/// `cancelled_at`). A booked appointment still in the future has no outcome.
///
/// The extract does not record when an appointment was moved, only the start
/// it was first booked for (`original_start`): the move lies somewhere between
/// `booked_at` and the earlier of the two starts. `appointment.rescheduled` is
/// given `booked_at`, the one end of that span that is an event time of its
/// own: it is never after the real move nor before the booking it amends
/// (same time, emitted after it on the appointment's key, so order holds).
/// The other end would put the move on the clinic day, which is rarely when
/// hospitals move appointments, and the read time would change on every read.
/// The cost: a state-as-of query between booking and move sees the new start early.
pub struct PasAppointments;

impl CsvFormat for PasAppointments {
    const NAME: &'static str = "pas_outpatient_appointments";
    const REQUIRED: &'static [&'static str] = &[
        "appointment_id",
        "ubrn",
        "nhs_number",
        "date_of_birth",
        "provider_code",
        "treatment_function_code",
        "contact_type",
        "booked_at",
        "appointment_start",
        "attendance_status",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        if cx.opted_out(row)? {
            return Ok(Mapped::OptedOut);
        }
        // The local date, not the UTC one: the age band is of the day the patient booked.
        let booked_day = row.date("booked_at")?;
        let Some(patient) = cx.patient(row, booked_day)? else {
            return Ok(Mapped::OptedOut);
        };
        let provider = row.ods("provider_code")?;
        let tf: TreatmentFunction = row.code("treatment_function_code")?;
        let pathway_id = pathway(row, cx)?;
        let appointment = row.required("appointment_id")?;
        let slot = row.optional("slot_id");
        let contact: ContactType = row.code("contact_type")?;
        let followup = row.optional("followup_id");
        let booked_at = row.local_time("booked_at")?;
        let start = row.local_time("appointment_start")?;
        let original_start = row.optional_local_time("original_start")?;
        let status: AppointmentStatus = row.code("attendance_status")?;
        let cancelled = row.optional_date("cancelled_at")?;

        not_after("booked_at", booked_at, "appointment_start", start)?;
        if let Some(original) = original_start {
            not_after("booked_at", booked_at, "original_start", original)?;
        }
        not_before("cancelled_at", cancelled, "booked_at", booked_day)?;
        let cancelled_by = match status {
            AppointmentStatus::CancelledByPatient => Some(CancelledBy::Patient),
            AppointmentStatus::CancelledByProvider => Some(CancelledBy::Provider),
            _ => None,
        };
        if cancelled_by.is_some() != cancelled.is_some() {
            return Err(FieldError::new(
                "cancelled_at",
                if cancelled.is_some() {
                    "is set but attendance_status is not a cancellation"
                } else {
                    "is empty but attendance_status is a cancellation"
                },
                "cancelled_at is given exactly when attendance_status is 2 or 4",
            ));
        }

        let scope = provider.as_str();
        let appointment_id = cx
            .pseudonymiser
            .pseudonym(IdKind::Appointment, scope, appointment);
        let slot_id = slot.map(|s| cx.pseudonymiser.pseudonym(IdKind::Slot, scope, s));
        let followup_id = followup.map(|f| cx.pseudonymiser.pseudonym(IdKind::Followup, scope, f));
        let orgs = Orgs {
            practice: None,
            provider: Some(provider.clone()),
            treatment_function: Some(tf),
        };
        let key = format!("{scope}|{appointment}");

        let mut events = vec![cx.event(
            &key,
            booked_at,
            &orgs,
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id: appointment_id.clone(),
                // The row's slot is the one held at `appointment_start`; the
                // slot first booked is not in the extract.
                slot_id: if original_start.is_some() {
                    None
                } else {
                    slot_id.clone()
                },
                patient,
                start: original_start.unwrap_or(start),
                kind: AppointmentKind::Outpatient {
                    pathway_id: pathway_id.clone(),
                    contact,
                    followup_id: followup_id.clone(),
                },
            }),
        )];
        // Every row is a booking, whatever became of it, so a follow-up met by
        // an appointment since attended or cancelled was booked all the same.
        if let (Some(followup), Some(followup_id)) = (followup, followup_id) {
            events.push(cx.event(
                &format!("{scope}|{followup}|{appointment}"),
                booked_at,
                &orgs,
                Payload::FollowupBooked(FollowupBooked {
                    followup_id,
                    pathway_id,
                    appointment_id: appointment_id.clone(),
                }),
            ));
        }
        if original_start.is_some() {
            events.push(cx.event(
                &format!("{key}|{start}"),
                booked_at,
                &orgs,
                Payload::AppointmentRescheduled(AppointmentRescheduled {
                    appointment_id: appointment_id.clone(),
                    start,
                    slot_id,
                }),
            ));
        }
        match (status, cancelled, cancelled_by) {
            (AppointmentStatus::Attended, _, _) => events.push(cx.event(
                &format!("{key}|{start}"),
                start,
                &orgs,
                Payload::AppointmentAttended(AppointmentAttended { appointment_id }),
            )),
            (AppointmentStatus::DidNotAttend, _, _) => events.push(cx.event(
                &format!("{key}|{start}"),
                start,
                &orgs,
                Payload::AppointmentDidNotAttend(AppointmentDidNotAttend { appointment_id }),
            )),
            (_, Some(day), Some(by)) => events.push(cx.event(
                &format!("{key}|{day}|{}", by.code()),
                // `cancelled_at` is a date; on the booking's own day its
                // midnight would come before the booking it cancels.
                start_of_day_utc(day).max(booked_at),
                &orgs,
                Payload::AppointmentCancelled(AppointmentCancelled { appointment_id, by }),
            )),
            // Booked and still in the future (a cancellation always has its date, checked above).
            _ => {}
        }
        Ok(Mapped::Events(events))
    }
}

/// The PAS clinic slot extract: one row per outpatient slot (capacity).
///
/// A row becomes `appointment.slot_published` (on `published_at`) and, when
/// the slot was withdrawn, `appointment.slot_withdrawn` (on `withdrawn_at`;
/// a withdrawal without a reason is taken as a cancelled clinic, the usual
/// cause). Slots carry no patient. Whether a slot is booked shows in the
/// appointment extract, so `Booked` and `Available` give the same events.
pub struct PasClinicSlots;

impl CsvFormat for PasClinicSlots {
    const NAME: &'static str = "pas_clinic_slots";
    const REQUIRED: &'static [&'static str] = &[
        "slot_id",
        "provider_code",
        "treatment_function_code",
        "slot_start",
        "duration_minutes",
        "contact_type",
        "published_at",
        "status",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        let slot = row.required("slot_id")?;
        let provider = row.ods("provider_code")?;
        let tf: TreatmentFunction = row.code("treatment_function_code")?;
        let start = row.local_time("slot_start")?;
        let duration_minutes = row.minutes("duration_minutes")?;
        let contact: ContactType = row.code("contact_type")?;
        let published = row.date("published_at")?;
        let status = slot_status(row, "status")?;
        let withdrawn = row.optional_date("withdrawn_at")?;
        let reason = row
            .optional_code::<SlotWithdrawReason>("withdraw_reason")?
            .unwrap_or(SlotWithdrawReason::ClinicCancelled);

        not_before("withdrawn_at", withdrawn, "published_at", published)?;
        if (status == SlotStatus::Withdrawn) != withdrawn.is_some() {
            return Err(FieldError::new(
                "withdrawn_at",
                if withdrawn.is_some() {
                    "is set but status is not Withdrawn"
                } else {
                    "is empty but status is Withdrawn"
                },
                "withdrawn_at is given exactly when status is Withdrawn",
            ));
        }

        let scope = provider.as_str();
        let slot_id = cx.pseudonymiser.pseudonym(IdKind::Slot, scope, slot);
        let orgs = Orgs {
            practice: None,
            provider: Some(provider.clone()),
            treatment_function: Some(tf),
        };
        let key = format!("{scope}|{slot}");
        let mut events = vec![cx.event(
            &key,
            start_of_day_utc(published),
            &orgs,
            Payload::SlotPublished(SlotPublished {
                slot_id: slot_id.clone(),
                start,
                duration_minutes,
                kind: SlotKind::Outpatient { contact },
            }),
        )];
        if let Some(day) = withdrawn {
            events.push(cx.event(
                &format!("{key}|{day}|{}", reason.code()),
                start_of_day_utc(day),
                &orgs,
                Payload::SlotWithdrawn(SlotWithdrawn { slot_id, reason }),
            ));
        }
        Ok(Mapped::Events(events))
    }
}

/// The PAS follow-up extract: one row per follow-up requirement.
///
/// A row becomes `followup.required` (on `requested_date`, with the due date
/// and whether it is patient-initiated) and, once it is settled,
/// `followup.completed` or `followup.cancelled` (on `outcome_date`). A
/// `Waiting` or `Booked` follow-up has nothing more: its booking is reported
/// by [`PasAppointments`].
pub struct PasFollowups;

impl CsvFormat for PasFollowups {
    const NAME: &'static str = "pas_followups";
    const REQUIRED: &'static [&'static str] = &[
        "followup_id",
        "ubrn",
        "nhs_number",
        "date_of_birth",
        "provider_code",
        "treatment_function_code",
        "requested_date",
        "due_date",
        "pifu",
        "status",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        if cx.opted_out(row)? {
            return Ok(Mapped::OptedOut);
        }
        let requested = row.date("requested_date")?;
        let Some(patient) = cx.patient(row, requested)? else {
            return Ok(Mapped::OptedOut);
        };
        let provider = row.ods("provider_code")?;
        let tf: TreatmentFunction = row.code("treatment_function_code")?;
        let pathway_id = pathway(row, cx)?;
        let followup = row.required("followup_id")?;
        let due_date = row.date("due_date")?;
        let pifu = row.yes_no("pifu")?;
        let status = followup_status(row, "status")?;
        let outcome = row.optional_date("outcome_date")?;
        let reason = row.optional_code::<FollowupCancelReason>("cancel_reason")?;

        not_before("due_date", Some(due_date), "requested_date", requested)?;
        not_before("outcome_date", outcome, "requested_date", requested)?;
        let settled = matches!(
            status,
            FollowupStatus::Completed | FollowupStatus::Cancelled
        );
        if settled != outcome.is_some() {
            return Err(FieldError::new(
                "outcome_date",
                if settled {
                    "is empty but status is Completed or Cancelled"
                } else {
                    "is set but status is Waiting or Booked"
                },
                "outcome_date is given exactly when status is Completed or Cancelled",
            ));
        }
        if (status == FollowupStatus::Cancelled) != reason.is_some() {
            return Err(FieldError::new(
                "cancel_reason",
                if reason.is_some() {
                    "is set but status is not Cancelled"
                } else {
                    "is empty but status is Cancelled"
                },
                "cancel_reason is given exactly when status is Cancelled",
            ));
        }

        let scope = provider.as_str();
        let followup_id = cx
            .pseudonymiser
            .pseudonym(IdKind::Followup, scope, followup);
        let orgs = Orgs {
            practice: None,
            provider: Some(provider.clone()),
            treatment_function: Some(tf),
        };
        let key = format!("{scope}|{followup}");
        // A later extract may move the due date or put the follow-up on PIFU:
        // that is a new fact with its own id, not a silent rewrite of the old one.
        let mut events = vec![cx.event(
            &format!("{key}|{due_date}|{}", if pifu { "pifu" } else { "booked" }),
            start_of_day_utc(requested),
            &orgs,
            Payload::FollowupRequired(FollowupRequired {
                followup_id: followup_id.clone(),
                pathway_id: pathway_id.clone(),
                patient,
                due_date,
                pifu,
            }),
        )];
        match (status, outcome, reason) {
            (FollowupStatus::Completed, Some(day), _) => events.push(cx.event(
                &format!("{key}|{day}"),
                start_of_day_utc(day),
                &orgs,
                Payload::FollowupCompleted(FollowupCompleted {
                    followup_id,
                    pathway_id,
                }),
            )),
            (FollowupStatus::Cancelled, Some(day), Some(reason)) => events.push(cx.event(
                &format!("{key}|{day}|{}", reason.code()),
                start_of_day_utc(day),
                &orgs,
                Payload::FollowupCancelled(FollowupCancelled {
                    followup_id,
                    pathway_id,
                    reason,
                }),
            )),
            // Waiting or Booked (a settled follow-up always has its date and reason, checked above).
            _ => {}
        }
        Ok(Mapped::Events(events))
    }
}

/// The pathway of the record's UBRN, derived exactly as [`super::pas_referrals`]
/// derives it, so appointments and follow-ups join their referral.
fn pathway(row: &Row<'_>, cx: &Context<'_>) -> Result<PseudoId, FieldError> {
    let ubrn = row.digits("ubrn", 12)?;
    Ok(cx.pseudonymiser.pseudonym(IdKind::Pathway, "", ubrn))
}

/// A clinic slot's state in the extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotStatus {
    Booked,
    Available,
    Withdrawn,
}

fn slot_status(row: &Row<'_>, field: &str) -> Result<SlotStatus, FieldError> {
    row.one_of(
        field,
        &[
            ("Booked", SlotStatus::Booked),
            ("Available", SlotStatus::Available),
            ("Withdrawn", SlotStatus::Withdrawn),
        ],
    )
}

/// A follow-up requirement's state in the extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowupStatus {
    Waiting,
    Booked,
    Completed,
    Cancelled,
}

fn followup_status(row: &Row<'_>, field: &str) -> Result<FollowupStatus, FieldError> {
    row.one_of(
        field,
        &[
            ("Waiting", FollowupStatus::Waiting),
            ("Booked", FollowupStatus::Booked),
            ("Completed", FollowupStatus::Completed),
            ("Cancelled", FollowupStatus::Cancelled),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use pathflow_schemas::event::{Event, Payload};
    use pathflow_schemas::{EventType, uk_time};

    use super::*;
    use crate::sources::Outcome;
    use crate::sources::testing::{OPTED_OUT, events};

    /// The outcome of each data row, read with the shared unit-test fixture.
    fn read<F: CsvFormat>(header: &str, rows: &[&str]) -> Vec<Outcome> {
        crate::sources::testing::read_rows::<F>(
            "pas-outpatients-unit",
            "pas:r9a:unit",
            "unit.csv",
            header,
            rows,
        )
    }

    const APPOINTMENT_HEADER: &str = "appointment_id,ubrn,nhs_number,date_of_birth,sex,postcode,provider_code,treatment_function_code,slot_id,contact_type,followup_id,booked_at,appointment_start,original_start,attendance_status,cancelled_at";
    const FOLLOWUP_HEADER: &str = "followup_id,ubrn,nhs_number,date_of_birth,sex,postcode,provider_code,treatment_function_code,requested_date,due_date,pifu,status,appointment_id,outcome_date,cancel_reason";
    const SLOT_HEADER: &str = "slot_id,provider_code,treatment_function_code,slot_start,duration_minutes,contact_type,published_at,status,withdrawn_at,withdraw_reason";

    fn rejected_field(outcome: &Outcome) -> &str {
        match outcome {
            Outcome::Rejected(r) => &r.error.field,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn types(events: &[Event]) -> Vec<EventType> {
        events.iter().map(Event::event_type).collect()
    }

    fn utc(local: &str) -> chrono::DateTime<chrono::Utc> {
        uk_time::to_utc(chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S").unwrap())
    }

    /// An appointment row: `status`, `cancelled_at`, `original_start`, `followup_id` vary.
    fn appointment(status: &str, cancelled: &str, original: &str, followup: &str) -> String {
        format!(
            "OPA100001,123456789012,9990000018,1960-05-01,Female,QX1 0AA,R9A,110,S200001,{contact},{followup},2025-03-10T15:00:00,2025-03-24T09:00:00,{original},{status},{cancelled}",
            contact = if followup.is_empty() { 1 } else { 2 },
        )
    }

    #[test]
    fn a_moved_appointment_is_booked_for_its_first_start_then_rescheduled() {
        let out = read::<PasAppointments>(
            APPOINTMENT_HEADER,
            &[&appointment("5", "", "2025-03-19T09:00:00", "")],
        );
        let events = events(&out[0]);
        assert_eq!(
            types(events),
            [
                EventType::AppointmentBooked,
                EventType::AppointmentRescheduled,
                EventType::AppointmentAttended
            ]
        );
        let booked_at = utc("2025-03-10T15:00:00");
        let (Payload::AppointmentBooked(b), Payload::AppointmentRescheduled(r)) =
            (&events[0].payload, &events[1].payload)
        else {
            panic!("{events:?}");
        };
        assert_eq!(b.start, utc("2025-03-19T09:00:00"));
        assert_eq!(b.slot_id, None, "the first slot is not in the extract");
        assert_eq!(r.start, utc("2025-03-24T09:00:00"));
        assert!(r.slot_id.is_some());
        assert_eq!(events[0].envelope.occurred_at, booked_at);
        assert_eq!(events[1].envelope.occurred_at, booked_at);
        assert_eq!(events[2].envelope.occurred_at, utc("2025-03-24T09:00:00"));
    }

    #[test]
    fn a_cancellation_is_not_before_its_booking_and_a_new_outcome_is_a_new_event() {
        let out = read::<PasAppointments>(
            APPOINTMENT_HEADER,
            &[
                &appointment("2", "2025-03-10", "", ""),
                &appointment("4", "2025-03-10", "", ""),
                &appointment("2", "2025-03-12", "", ""),
                &appointment("0", "", "", ""),
            ],
        );
        let cancelled: Vec<&Event> = out.iter().take(3).map(|o| &events(o)[1]).collect();
        let Payload::AppointmentCancelled(c) = &cancelled[0].payload else {
            panic!("{cancelled:?}");
        };
        assert_eq!(c.by, CancelledBy::Patient);
        // Cancelled on the day it was booked: at the booking, not at midnight before it.
        assert_eq!(
            cancelled[0].envelope.occurred_at,
            utc("2025-03-10T15:00:00")
        );
        assert_eq!(
            cancelled[2].envelope.occurred_at,
            utc("2025-03-12T00:00:00")
        );
        let ids: HashSet<_> = cancelled.iter().map(|e| &e.envelope.event_id).collect();
        assert_eq!(ids.len(), 3);
        // The booking itself is the same fact in every extract.
        assert_eq!(
            events(&out[0])[0].envelope.event_id,
            events(&out[3])[0].envelope.event_id
        );
        assert_eq!(types(events(&out[3])), [EventType::AppointmentBooked]);
    }

    #[test]
    fn a_followup_booking_names_the_followup_its_extract_requires() {
        let appointments =
            read::<PasAppointments>(APPOINTMENT_HEADER, &[&appointment("0", "", "", "FU300001")]);
        let followups = read::<PasFollowups>(
            FOLLOWUP_HEADER,
            &[
                "FU300001,123456789012,9990000018,1960-05-01,Female,QX1 0AA,R9A,110,2025-03-01,2025-03-29,N,Booked,OPA100001,,",
            ],
        );
        let booked = events(&appointments[0]);
        assert_eq!(
            types(booked),
            [EventType::AppointmentBooked, EventType::FollowupBooked]
        );
        let required = events(&followups[0]);
        assert_eq!(types(required), [EventType::FollowupRequired]);
        let (Payload::FollowupBooked(b), Payload::FollowupRequired(r)) =
            (&booked[1].payload, &required[0].payload)
        else {
            panic!("{booked:?} {required:?}");
        };
        assert_eq!(b.followup_id, r.followup_id);
        assert_eq!(b.pathway_id, r.pathway_id);
        assert!(!r.pifu);
    }

    #[test]
    fn settled_followups_are_completed_or_cancelled_with_their_reason() {
        let row = |status: &str, outcome: &str, reason: &str| {
            format!(
                "FU300002,123456789012,9990000018,1960-05-01,Female,QX1 0AA,R9A,110,2025-03-01,2025-03-29,Y,{status},,{outcome},{reason}"
            )
        };
        let out = read::<PasFollowups>(
            FOLLOWUP_HEADER,
            &[
                &row("Completed", "2025-03-20", ""),
                &row("Cancelled", "2025-04-02", "PE"),
            ],
        );
        assert_eq!(
            types(events(&out[0])),
            [EventType::FollowupRequired, EventType::FollowupCompleted]
        );
        let Payload::FollowupCancelled(c) = &events(&out[1])[1].payload else {
            panic!("{:?}", out[1]);
        };
        assert_eq!(c.reason, FollowupCancelReason::PifuPeriodEnded);
    }

    #[test]
    fn a_moved_due_date_is_a_new_requirement_and_a_resent_row_is_not() {
        let row = |due: &str, pifu: &str| {
            format!(
                "FU300003,123456789012,9990000018,1960-05-01,Female,QX1 0AA,R9A,110,2025-03-01,{due},{pifu},Waiting,,,"
            )
        };
        let out = read::<PasFollowups>(
            FOLLOWUP_HEADER,
            &[
                &row("2025-03-29", "N"),
                &row("2025-03-29", "N"),
                &row("2025-04-26", "N"),
                &row("2025-04-26", "Y"),
            ],
        );
        let id = |o: &Outcome| events(o)[0].envelope.event_id.clone();
        assert_eq!(id(&out[0]), id(&out[1]), "the same row repeats its id");
        assert_ne!(id(&out[0]), id(&out[2]), "a moved due date is a new fact");
        assert_ne!(id(&out[2]), id(&out[3]), "a move to PIFU is a new fact");
    }

    #[test]
    fn a_withdrawn_slot_without_a_reason_was_a_cancelled_clinic() {
        let out = read::<PasClinicSlots>(
            SLOT_HEADER,
            &[
                "S200001,R9A,110,2025-03-24T09:00:00,20,1,2025-02-10,Withdrawn,2025-03-20,",
                "S200002,R9A,110,2025-03-24T09:20:00,20,1,2025-02-10,Withdrawn,2025-03-20,Staff unavailable",
                "S200003,R9A,110,2025-03-24T09:40:00,20,1,2025-02-10,Available,,",
            ],
        );
        let reason = |o: &Outcome| match &events(o)[1].payload {
            Payload::SlotWithdrawn(w) => w.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&out[0]), SlotWithdrawReason::ClinicCancelled);
        assert_eq!(reason(&out[1]), SlotWithdrawReason::StaffUnavailable);
        assert_eq!(types(events(&out[2])), [EventType::SlotPublished]);
        assert_eq!(
            events(&out[2])[0].envelope.occurred_at,
            utc("2025-02-10T00:00:00")
        );
    }

    #[test]
    fn contradictory_rows_are_rejected_naming_the_field() {
        let appointments = read::<PasAppointments>(
            APPOINTMENT_HEADER,
            &[
                &appointment("2", "", "", ""),
                &appointment("5", "2025-03-12", "", ""),
                &appointment("4", "2025-03-09", "", ""),
                &appointment("5", "", "2025-03-09T09:00:00", ""),
                &appointment("5", "", "", "").replace("2025-03-24T09:00:00", "2025-03-10T14:00:00"),
            ],
        );
        let fields: Vec<&str> = appointments.iter().map(rejected_field).collect();
        assert_eq!(
            fields,
            [
                "cancelled_at",
                "cancelled_at",
                "cancelled_at",
                "booked_at",
                "booked_at"
            ]
        );

        let followup = |pifu: &str, due: &str, status: &str| {
            format!(
                "FU300003,123456789012,9990000018,1960-05-01,Female,QX1 0AA,R9A,110,2025-03-01,{due},{pifu},{status},,,"
            )
        };
        let followups = read::<PasFollowups>(
            FOLLOWUP_HEADER,
            &[
                &followup("yes", "2025-03-29", "Waiting"),
                &followup("N", "2025-02-28", "Waiting"),
                &followup("N", "2025-03-29", "Completed"),
                &followup("N", "2025-03-29", "Lost"),
            ],
        );
        let fields: Vec<&str> = followups.iter().map(rejected_field).collect();
        assert_eq!(fields, ["pifu", "due_date", "outcome_date", "status"]);

        let slots = read::<PasClinicSlots>(
            SLOT_HEADER,
            &[
                "S200004,R9A,110,2025-03-24T09:00:00,20,1,2025-02-10,Withdrawn,,",
                "S200005,R9A,110,2025-03-24T09:00:00,20,1,2025-02-10,Open,,",
                "S200006,R9A,110,2025-03-24T09:00:00,0,1,2025-02-10,Available,,",
                "S200007,R9A,110,2025-03-24T09:00:00,20,1,2025-02-10,Withdrawn,2025-02-01,",
            ],
        );
        let fields: Vec<&str> = slots.iter().map(rejected_field).collect();
        assert_eq!(
            fields,
            ["withdrawn_at", "status", "duration_minutes", "withdrawn_at"]
        );
    }

    #[test]
    fn an_opted_out_patient_is_dropped_whatever_else_is_wrong() {
        let row = appointment("8", "", "", "").replace("9990000018", OPTED_OUT);
        let out = read::<PasAppointments>(APPOINTMENT_HEADER, &[&row]);
        assert_eq!(out, [Outcome::OptedOut]);
        // A broken NHS number cannot be looked up, so the record is rejected.
        let row = appointment("5", "", "", "").replace("9990000018", "9990000019");
        let out = read::<PasAppointments>(APPOINTMENT_HEADER, &[&row]);
        assert_eq!(rejected_field(&out[0]), "nhs_number");
    }
}
