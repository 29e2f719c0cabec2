//! One synthetic event of every type, for tests across the workspace (the
//! Kafka round trip, bronze conversion, table folds). Pseudonyms are made-up
//! hex; nothing here was derived from a real record.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

use crate::codes::*;
use crate::event::*;
use crate::ids::{EventId, KeyId, OdsCode, PseudoId, SourceName};
use crate::patient::{AgeBand, Decile, Patient};

fn pid(n: u8) -> PseudoId {
    PseudoId::from_digest(&[n; 16])
}

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 4, 7, 9, 0, 0)
        .single()
        .expect("valid time")
        + Duration::minutes(minutes)
}

fn ods(code: &str) -> OdsCode {
    OdsCode::parse(code).expect("valid sample ODS code")
}

/// One event of every [`EventType`], in [`EventType::ALL`] order.
pub fn one_of_each() -> Vec<Event> {
    let patient = Patient {
        id: pid(1),
        age_band: AgeBand::from_age(47),
        sex: Sex::Female,
        deprivation_decile: Some(Decile::new(3).expect("3 is a decile")),
    };
    let pathway = pid(2);
    let appointment = pid(3);
    let slot = pid(4);
    let advice = pid(5);
    let followup = pid(6);
    let op = |contact, followup_id| AppointmentKind::Outpatient {
        pathway_id: pathway.clone(),
        contact,
        followup_id,
    };
    let payloads = vec![
        Payload::ReferralCreated(ReferralCreated {
            pathway_id: pathway.clone(),
            patient: patient.clone(),
            priority: Priority::Urgent,
            referral_source: ReferralSource::Gp,
            from_advice: Some(advice.clone()),
        }),
        Payload::ReferralTriaged(ReferralTriaged {
            pathway_id: pathway.clone(),
            outcome: TriageOutcome::Redirected,
            redirected_to: Some(TreatmentFunction::Rheumatology),
        }),
        Payload::ClockStarted(ClockStarted {
            pathway_id: pathway.clone(),
            reason: ClockStartReason::FirstActivity,
        }),
        Payload::ClockStopped(ClockStopped {
            pathway_id: pathway.clone(),
            reason: ClockStopReason::FirstDefinitiveTreatment,
        }),
        Payload::ReferralDischarged(ReferralDischarged {
            pathway_id: pathway.clone(),
        }),
        Payload::AdviceRequested(AdviceRequested {
            advice_id: advice.clone(),
            patient: patient.clone(),
        }),
        Payload::AdviceResponded(AdviceResponded {
            advice_id: advice.clone(),
            outcome: AdviceOutcome::ReferralAdvised,
        }),
        Payload::AdviceConverted(AdviceConverted {
            advice_id: advice.clone(),
            pathway_id: pathway.clone(),
        }),
        Payload::SlotPublished(SlotPublished {
            slot_id: slot.clone(),
            start: at(60 * 24),
            duration_minutes: 10,
            kind: SlotKind::Gp {
                mode: AppointmentMode::Telephone,
                hcp_type: HcpType::Gp,
                national_category: NationalCategory::GeneralConsultationAcute,
            },
        }),
        Payload::SlotWithdrawn(SlotWithdrawn {
            slot_id: slot.clone(),
            reason: SlotWithdrawReason::StaffUnavailable,
        }),
        Payload::AppointmentBooked(AppointmentBooked {
            appointment_id: appointment.clone(),
            slot_id: Some(slot.clone()),
            patient: patient.clone(),
            start: at(60 * 24 * 14),
            kind: op(ContactType::First, None),
        }),
        Payload::AppointmentRescheduled(AppointmentRescheduled {
            appointment_id: appointment.clone(),
            start: at(60 * 24 * 21),
            slot_id: None,
        }),
        Payload::AppointmentCancelled(AppointmentCancelled {
            appointment_id: appointment.clone(),
            by: CancelledBy::Provider,
        }),
        Payload::AppointmentAttended(AppointmentAttended {
            appointment_id: appointment.clone(),
        }),
        Payload::AppointmentDidNotAttend(AppointmentDidNotAttend {
            appointment_id: appointment.clone(),
        }),
        Payload::FollowupRequired(FollowupRequired {
            followup_id: followup.clone(),
            pathway_id: pathway.clone(),
            patient,
            due_date: NaiveDate::from_ymd_opt(2025, 7, 1).expect("valid date"),
            pifu: true,
        }),
        Payload::FollowupBooked(FollowupBooked {
            followup_id: followup.clone(),
            pathway_id: pathway.clone(),
            appointment_id: appointment,
        }),
        Payload::FollowupCompleted(FollowupCompleted {
            followup_id: followup.clone(),
            pathway_id: pathway.clone(),
        }),
        Payload::FollowupCancelled(FollowupCancelled {
            followup_id: followup,
            pathway_id: pathway,
            reason: FollowupCancelReason::PifuPeriodEnded,
        }),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let gp = payload.event_type().family() == Family::Appointment && i == 8;
            Event {
                envelope: Envelope {
                    event_id: EventId::from_digest(&[0x10 + i as u8; 16]),
                    occurred_at: at(i as i64),
                    recorded_at: at(i as i64 + 1),
                    source: SourceName::parse("sample:one_of_each").expect("valid source"),
                    schema_version: SCHEMA_VERSION,
                    key_id: Some(KeyId::parse("k2025a").expect("valid key id")),
                    practice: Some(ods("Y01234")),
                    provider: if gp { None } else { Some(ods("RX1")) },
                    treatment_function: if gp {
                        None
                    } else {
                        Some(TreatmentFunction::TraumaAndOrthopaedics)
                    },
                },
                payload,
            }
        })
        .collect()
}
