//! The PAS referral extract: one row per referral (RTT pathway), showing its
//! state at the extract date (see `simulate/FORMATS.md`). A row becomes up to
//! five events: created, triaged, clock started, clock stopped, discharged.
//!
//! Event ids come from the UBRN plus the facts of each event (date, outcome),
//! so re-sending the same extract repeats the same ids, while a later extract
//! in which, say, the clock restarted after a DNA yields a new
//! `referral.clock_started` event rather than silently rewriting an old one.
//! The hospital number and the free-text reason are read by nobody and dropped.

use pathflow_schemas::codes::{
    ClockStartReason, ClockStopReason, Priority, ReferralSource, TreatmentFunction, TriageOutcome,
};
use pathflow_schemas::event::{
    ClockStarted, ClockStopped, Payload, ReferralCreated, ReferralDischarged, ReferralTriaged,
};
use pathflow_schemas::uk_time::start_of_day_utc;

use super::{Context, CsvFormat, Mapped, Orgs};
use crate::pseudonymise::IdKind;
use crate::record::{FieldError, Row, not_before};

/// The PAS referral extract.
pub struct PasReferrals;

impl CsvFormat for PasReferrals {
    const NAME: &'static str = "pas_referrals";
    const REQUIRED: &'static [&'static str] = &[
        "ubrn",
        "nhs_number",
        "date_of_birth",
        "practice_code",
        "provider_code",
        "treatment_function_code",
        "priority",
        "received_date",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        if cx.opted_out(row)? {
            return Ok(Mapped::OptedOut);
        }
        let ubrn = row.digits("ubrn", 12)?;
        let received = row.date("received_date")?;
        let Some(patient) = cx.patient(row, received)? else {
            return Ok(Mapped::OptedOut);
        };
        let practice = row.ods("practice_code")?;
        let provider = row.ods("provider_code")?;
        let tf: TreatmentFunction = row.code("treatment_function_code")?;
        let priority: Priority = row.code("priority")?;
        let referral_source = row
            .optional_code::<ReferralSource>("referral_source")?
            .unwrap_or(ReferralSource::Gp);
        let triage = row.optional_date("triage_date")?;
        let outcome = row.optional_code::<TriageOutcome>("triage_outcome")?;
        let redirected_to = row.optional_code::<TreatmentFunction>("redirected_to")?;
        let clock_start = row.optional_date("clock_start_date")?;
        let clock_stop = row.optional_date("clock_stop_date")?;
        let stop_reason = row.optional_code::<ClockStopReason>("clock_stop_reason")?;
        let discharged = row.optional_date("discharge_date")?;

        not_before("triage_date", triage, "received_date", received)?;
        not_before("clock_start_date", clock_start, "received_date", received)?;
        not_before("discharge_date", discharged, "received_date", received)?;
        if let Some(start) = clock_start {
            not_before("clock_stop_date", clock_stop, "clock_start_date", start)?;
        }
        if triage.is_some() != outcome.is_some() {
            return Err(FieldError::new(
                if triage.is_some() {
                    "triage_outcome"
                } else {
                    "triage_date"
                },
                "is empty while the other triage field is set",
                "triage_date and triage_outcome are given together",
            ));
        }
        if clock_stop.is_some() != stop_reason.is_some() {
            return Err(FieldError::new(
                if clock_stop.is_some() {
                    "clock_stop_reason"
                } else {
                    "clock_stop_date"
                },
                "is empty while the other clock-stop field is set",
                "clock_stop_date and clock_stop_reason are given together",
            ));
        }

        let pathway_id = cx.pseudonymiser.pseudonym(IdKind::Pathway, "", ubrn);
        let from_advice = row
            .optional("ag_request_id")
            .map(|id| cx.pseudonymiser.pseudonym(IdKind::Advice, "", id));
        let referred = Orgs {
            practice: Some(practice.clone()),
            provider: Some(provider.clone()),
            treatment_function: Some(tf),
        };
        // After a redirection the pathway continues in the new service.
        let service = Orgs {
            treatment_function: Some(redirected_to.unwrap_or(tf)),
            ..referred.clone()
        };

        let mut events = vec![cx.event(
            ubrn,
            start_of_day_utc(received),
            &referred,
            Payload::ReferralCreated(ReferralCreated {
                pathway_id: pathway_id.clone(),
                patient,
                priority,
                referral_source,
                from_advice,
            }),
        )];
        if let (Some(day), Some(outcome)) = (triage, outcome) {
            events.push(cx.event(
                &format!("{ubrn}|{day}|{}", outcome.code()),
                start_of_day_utc(day),
                &referred,
                Payload::ReferralTriaged(ReferralTriaged {
                    pathway_id: pathway_id.clone(),
                    outcome,
                    redirected_to,
                }),
            ));
        }
        if let Some(day) = clock_start {
            events.push(cx.event(
                &format!("{ubrn}|{day}"),
                start_of_day_utc(day),
                &service,
                Payload::ClockStarted(ClockStarted {
                    pathway_id: pathway_id.clone(),
                    reason: ClockStartReason::FirstActivity,
                }),
            ));
        }
        if let (Some(day), Some(reason)) = (clock_stop, stop_reason) {
            events.push(cx.event(
                &format!("{ubrn}|{day}|{}", reason.code()),
                start_of_day_utc(day),
                &service,
                Payload::ClockStopped(ClockStopped {
                    pathway_id: pathway_id.clone(),
                    reason,
                }),
            ));
        }
        if let Some(day) = discharged {
            events.push(cx.event(
                &format!("{ubrn}|{day}"),
                start_of_day_utc(day),
                &service,
                Payload::ReferralDischarged(ReferralDischarged { pathway_id }),
            ));
        }
        Ok(Mapped::Events(events))
    }
}
