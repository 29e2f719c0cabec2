//! The e-RS Advice & Guidance extract `ers/advice_and_guidance.csv` (see
//! `simulate/FORMATS.md`, e-RS): one row per A&G request, showing its state at
//! the extract date. A row becomes `advice.requested`, then
//! `advice.responded` once the specialist answered, then `advice.converted`
//! when the request became a referral. The conversion joins the referral's
//! events of [`super::pas_referrals`] on the pathway id, which both derive
//! from the UBRN the same way.
//!
//! Choices:
//!
//! - The A&G request id is a national e-RS reference (12 digits, like a
//!   UBRN), so its pseudonym has no scope, and it is the event-id record key.
//!   A response's key adds its time and outcome, a conversion's the UBRN:
//!   re-sending an extract repeats the ids, while a later extract in which
//!   the specialist answered again (more information, then advice) yields a
//!   new `advice.responded` instead of rewriting the old one.
//! - The extract does not say when a request was converted: the conversion is
//!   dated at the response that made it possible (`responded_at`), the last
//!   time the row knows of before it. The referral's own `referral.created`
//!   carries the date the provider received it.
//! - The National Data Opt-out is checked before any other field is read, so an
//!   opted-out patient's request is dropped even when something else in it is
//!   wrong, and leaves nothing in the dead letters or quarantine.
//! - The free-text `clinical_question` is read by nobody and dropped: free text
//!   about a patient can identify them.

use pathflow_schemas::codes::{AdviceOutcome, TreatmentFunction};
use pathflow_schemas::event::{AdviceConverted, AdviceRequested, AdviceResponded, Payload};

use super::{Context, CsvFormat, Mapped, Orgs};
use crate::pseudonymise::IdKind;
use crate::record::{FieldError, Row, not_before};

/// The e-RS Advice & Guidance extract: one row per A&G request.
pub struct AdviceAndGuidance;

impl CsvFormat for AdviceAndGuidance {
    const NAME: &'static str = "advice_and_guidance";
    // The response and conversion columns may be empty in a row, but a header
    // without them would drop every response and conversion of the file unseen.
    const REQUIRED: &'static [&'static str] = &[
        "ag_request_id",
        "nhs_number",
        "date_of_birth",
        "practice_code",
        "provider_code",
        "treatment_function_code",
        "requested_at",
        "responded_at",
        "outcome",
        "converted_ubrn",
    ];

    fn map(row: &Row<'_>, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        if cx.opted_out(row)? {
            return Ok(Mapped::OptedOut);
        }
        let request = row.digits("ag_request_id", 12)?;
        // The local date, not the UTC one: the age band is of the day the GP asked.
        let requested_day = row.date("requested_at")?;
        let Some(patient) = cx.patient(row, requested_day)? else {
            return Ok(Mapped::OptedOut);
        };
        let practice = row.ods("practice_code")?;
        let provider = row.ods("provider_code")?;
        let tf: TreatmentFunction = row.code("treatment_function_code")?;
        let requested_at = row.local_time("requested_at")?;
        let responded_at = row.optional_local_time("responded_at")?;
        let outcome = row.optional_code::<AdviceOutcome>("outcome")?;
        let converted = match row.optional("converted_ubrn") {
            Some(_) => Some(row.digits("converted_ubrn", 12)?),
            None => None,
        };

        not_before("responded_at", responded_at, "requested_at", requested_at)?;
        let response = match (responded_at, outcome) {
            (Some(at), Some(outcome)) => Some((at, outcome)),
            (None, None) => None,
            (at, _) => {
                return Err(FieldError::new(
                    if at.is_some() {
                        "outcome"
                    } else {
                        "responded_at"
                    },
                    "is empty while the other response field is set",
                    "responded_at and outcome are given together",
                ));
            }
        };
        if converted.is_some() && response.is_none() {
            return Err(FieldError::new(
                "converted_ubrn",
                "is set but the request has no response",
                "a request is converted to a referral only after responded_at",
            ));
        }

        let advice_id = cx.pseudonymiser.pseudonym(IdKind::Advice, "", request);
        let orgs = Orgs {
            practice: Some(practice),
            provider: Some(provider),
            treatment_function: Some(tf),
        };
        let mut events = vec![cx.event(
            request,
            requested_at,
            &orgs,
            Payload::AdviceRequested(AdviceRequested {
                advice_id: advice_id.clone(),
                patient,
            }),
        )];
        if let Some((at, outcome)) = response {
            events.push(cx.event(
                &format!("{request}|{at}|{}", outcome.code()),
                at,
                &orgs,
                Payload::AdviceResponded(AdviceResponded {
                    advice_id: advice_id.clone(),
                    outcome,
                }),
            ));
            if let Some(ubrn) = converted {
                events.push(cx.event(
                    &format!("{request}|{ubrn}"),
                    at,
                    &orgs,
                    Payload::AdviceConverted(AdviceConverted {
                        advice_id,
                        // Exactly as `pas_referrals` derives it, so the two join.
                        pathway_id: cx.pseudonymiser.pseudonym(IdKind::Pathway, "", ubrn),
                    }),
                ));
            }
        }
        Ok(Mapped::Events(events))
    }
}

#[cfg(test)]
mod tests {
    use pathflow_schemas::event::{Event, Payload};
    use pathflow_schemas::{EventType, uk_time};

    use super::*;
    use crate::sources::Outcome;
    use crate::sources::pas_referrals::PasReferrals;
    use crate::sources::testing::{OPTED_OUT, events};

    /// The outcome of each data row, read with the shared unit-test fixture.
    fn read<F: CsvFormat>(header: &str, rows: &[&str]) -> Vec<Outcome> {
        crate::sources::testing::read_rows::<F>(
            "advice-unit",
            "ers:advice",
            "unit.csv",
            header,
            rows,
        )
    }

    const HEADER: &str = "ag_request_id,nhs_number,date_of_birth,sex,postcode,practice_code,provider_code,treatment_function_code,requested_at,responded_at,outcome,converted_ubrn,clinical_question";

    /// A request of patient `nhs`, with its response time, outcome and converted UBRN.
    fn request(nhs: &str, responded: &str, outcome: &str, ubrn: &str) -> String {
        format!(
            "759256315995,{nhs},1982-02-06,Male,QX1 0AA,Y90001,R9A,502,2025-03-14T15:27:00,{responded},{outcome},{ubrn},\"Query re 9990000018, seen 1982-02-06\""
        )
    }

    fn types(events: &[Event]) -> Vec<EventType> {
        events.iter().map(Event::event_type).collect()
    }

    fn utc(local: &str) -> chrono::DateTime<chrono::Utc> {
        uk_time::to_utc(chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S").unwrap())
    }

    #[test]
    fn a_request_is_answered_then_converted() {
        let out = read::<AdviceAndGuidance>(
            HEADER,
            &[
                &request("9990000018", "", "", ""),
                &request("9990000018", "2025-03-16T15:55:00", "AG", ""),
                &request("9990000018", "2025-03-16T15:55:00", "RF", "073415581354"),
            ],
        );
        assert_eq!(types(events(&out[0])), [EventType::AdviceRequested]);
        assert_eq!(
            types(events(&out[1])),
            [EventType::AdviceRequested, EventType::AdviceResponded]
        );
        let converted = events(&out[2]);
        assert_eq!(
            types(converted),
            [
                EventType::AdviceRequested,
                EventType::AdviceResponded,
                EventType::AdviceConverted
            ]
        );
        assert_eq!(
            converted[0].envelope.occurred_at,
            utc("2025-03-14T15:27:00")
        );
        for e in &converted[1..] {
            assert_eq!(e.envelope.occurred_at, utc("2025-03-16T15:55:00"));
        }
        for e in converted {
            assert_eq!(e.envelope.practice.as_ref().unwrap().as_str(), "Y90001");
            assert_eq!(e.envelope.provider.as_ref().unwrap().as_str(), "R9A");
            assert_eq!(
                e.envelope.treatment_function,
                Some(TreatmentFunction::Gynaecology)
            );
        }
        let Payload::AdviceResponded(r) = &converted[1].payload else {
            panic!("{:?}", converted[1].payload)
        };
        assert_eq!(r.outcome, AdviceOutcome::ReferralAdvised);
        // The free text (and what it quotes) is nowhere in the events.
        let json = serde_json::to_string(converted).unwrap();
        for text in ["Query", "9990000018", "1982-02-06", "759256315995"] {
            assert!(!json.contains(text), "{text} in {json}");
        }
    }

    #[test]
    fn a_conversion_joins_the_referral_it_became() {
        let advice = read::<AdviceAndGuidance>(
            HEADER,
            &[&request(
                "9990000018",
                "2025-03-16T15:55:00",
                "RF",
                "073415581354",
            )],
        );
        let referral = read::<PasReferrals>(
            "ubrn,nhs_number,date_of_birth,practice_code,provider_code,treatment_function_code,priority,received_date,ag_request_id",
            &["073415581354,9990000018,1982-02-06,Y90001,R9A,502,1,2025-03-18,759256315995"],
        );
        let Payload::AdviceConverted(c) = &events(&advice[0])[2].payload else {
            panic!("{:?}", advice[0])
        };
        let Payload::ReferralCreated(r) = &events(&referral[0])[0].payload else {
            panic!("{:?}", referral[0])
        };
        assert_eq!(c.pathway_id, r.pathway_id);
        assert_eq!(r.from_advice.as_ref(), Some(&c.advice_id));
    }

    #[test]
    fn ids_repeat_on_rereading_and_a_new_answer_gets_a_new_id() {
        let more_info = request("9990000018", "2025-03-15T09:00:00", "MI", "");
        let advice = request("9990000018", "2025-03-18T09:00:00", "AG", "");
        let ids = |o: &Outcome| -> Vec<String> {
            events(o)
                .iter()
                .map(|e| e.envelope.event_id.to_string())
                .collect()
        };
        let out = read::<AdviceAndGuidance>(HEADER, &[&more_info, &more_info, &advice]);
        assert_eq!(ids(&out[0]), ids(&out[1]));
        assert_eq!(ids(&out[0])[0], ids(&out[2])[0], "the same request");
        assert_ne!(ids(&out[0])[1], ids(&out[2])[1], "a new answer");
    }

    #[test]
    fn opted_out_requests_vanish_and_broken_ones_name_the_field() {
        let out = read::<AdviceAndGuidance>(
            HEADER,
            &[
                &request(OPTED_OUT, "2025-03-16T15:55:00", "RF", "0734"),
                &request("9990000018", "2025-03-16T15:55:00", "", ""),
                &request("9990000018", "", "AG", ""),
                &request("9990000018", "", "", "073415581354"),
                &request("9990000018", "2025-03-13T15:55:00", "AG", ""),
                &request("9990000018", "2025-03-16T15:55:00", "XX", ""),
                &request("9990000018", "2025-03-16T15:55:00", "RF", "0734"),
                &request("9990000018", "", "", "").replace("759256315995", "75925631599"),
            ],
        );
        assert_eq!(out[0], Outcome::OptedOut);
        let fields: Vec<&str> = out[1..]
            .iter()
            .map(|o| match o {
                Outcome::Rejected(r) => {
                    assert!(!format!("{r:?}").contains("0734"), "{r:?}");
                    r.error.field.as_str()
                }
                other => panic!("expected a rejection, got {other:?}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "outcome",
                "responded_at",
                "converted_ubrn",
                "responded_at",
                "outcome",
                "converted_ubrn",
                "ag_request_id"
            ]
        );
    }
}
