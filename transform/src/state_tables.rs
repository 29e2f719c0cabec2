//! The state tables: one row per entity, its current state and key dates,
//! made from the folded states of [`crate::fold`].
//!
//! - `referrals`: one row per pathway ([`ReferralState`]).
//! - `appointments`: one row per appointment, GP and outpatient ([`AppointmentState`]).
//! - `followups`: one row per follow-up requirement ([`FollowupState`]).
//! - `advice`: one row per Advice & Guidance request ([`AdviceState`]).
//!
//! Types are those Delta Lake can hold: no unsigned integers, timestamps in
//! microseconds UTC, dates as `Date32` (UK civil dates), ids as text and codes
//! as their wire names (as in the bronze table; the treatment function's wire
//! name is its NHS code). A value not known yet (an entity with only late
//! facts) is null; only the entity id, the status and `as_of` are never null.
//!
//! Values that change with the calendar (a referral's wait so far, a
//! follow-up's overdue days) are computed "as of" a date, given to the batch
//! function and written in each row's `as_of` column.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, NaiveDate, Utc};

use crate::fold::{AdviceState, AppointmentState, FollowupState, ReferralState, Settlement};
use crate::rules;

/// Name of the referrals state table.
pub const REFERRALS_TABLE: &str = "referrals";
/// Name of the appointments state table.
pub const APPOINTMENTS_TABLE: &str = "appointments";
/// Name of the follow-ups state table.
pub const FOLLOWUPS_TABLE: &str = "followups";
/// Name of the A&G state table.
pub const ADVICE_TABLE: &str = "advice";

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn date(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Date32, nullable)
}

/// Days from 1970-01-01, as Arrow's `Date32` counts them.
fn date32(d: NaiveDate) -> i32 {
    // Every NaiveDate is within ±262143 years of the epoch: well inside i32 days.
    (d - NaiveDate::default()).num_days() as i32
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn dates<I: Iterator<Item = Option<NaiveDate>>>(it: I) -> ArrayRef {
    Arc::new(Date32Array::from_iter(it.map(|d| d.map(date32))))
}

fn timestamps<I: Iterator<Item = Option<DateTime<Utc>>>>(it: I) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(it.map(|t| t.map(micros))).with_timezone("UTC"))
}

fn strings<'a, I: Iterator<Item = Option<&'a str>>>(it: I) -> ArrayRef {
    Arc::new(StringArray::from_iter(it))
}

fn int64s<I: Iterator<Item = Option<i64>>>(it: I) -> ArrayRef {
    Arc::new(Int64Array::from_iter(it))
}

fn bools<I: Iterator<Item = Option<bool>>>(it: I) -> ArrayRef {
    Arc::new(BooleanArray::from_iter(it))
}

fn weeks_i32(w: u32) -> i32 {
    i32::try_from(w).unwrap_or(i32::MAX)
}

// ---- referrals ------------------------------------------------------------

/// The schema of `referrals`: one row per pathway.
///
/// - `pathway_id`, `patient_id`: pseudonyms.
/// - `practice`, `provider`: ODS codes of the referring practice and the
///   provider referred to.
/// - `treatment_function`: the specialty the pathway is in now (where triage
///   redirected it, else the one referred to); `referred_treatment_function`:
///   the one referred to.
/// - `priority`, `referral_source`: wire names.
/// - `received_date`: UK date the referral was received.
/// - `triage_date`, `triage_outcome`: the latest triage decision.
/// - `advice_id`: the A&G request the pathway came from (A&G origin).
/// - `clock_start_date`, `clock_start_reason`: the RTT clock in force.
/// - `clock_stop_date`, `clock_stop_reason`: its stop.
/// - `discharged_date`: discharge at or after the clock in force started.
/// - `first_attendance_date`: the first outpatient first attendance attended.
/// - `status`: `open`, `stopped` or `discharged`.
/// - `wait_end_date`: the earlier of the clock stop and discharge.
/// - `waiting`: on the RTT waiting list (an incomplete pathway) on `as_of`.
/// - `wait_days`, `wait_weeks`: while waiting, days and completed weeks
///   waited so far on `as_of`; for a completed pathway, the final wait from
///   clock start to clock stop; null otherwise (no clock, a nullified clock,
///   or a discharge without a stop: no completed RTT wait).
/// - `wait_final`: true when the wait is final, false when it is so far.
/// - `as_of`: the date the "so far" values are computed on.
pub fn referrals_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("pathway_id", false),
        text("patient_id", true),
        text("practice", true),
        text("provider", true),
        text("treatment_function", true),
        text("referred_treatment_function", true),
        text("priority", true),
        text("referral_source", true),
        date("received_date", true),
        date("triage_date", true),
        text("triage_outcome", true),
        text("advice_id", true),
        date("clock_start_date", true),
        text("clock_start_reason", true),
        date("clock_stop_date", true),
        text("clock_stop_reason", true),
        date("discharged_date", true),
        date("first_attendance_date", true),
        text("status", false),
        date("wait_end_date", true),
        Field::new("waiting", DataType::Boolean, false),
        Field::new("wait_days", DataType::Int64, true),
        Field::new("wait_weeks", DataType::Int32, true),
        Field::new("wait_final", DataType::Boolean, true),
        date("as_of", false),
    ]))
}

/// A pathway's wait on `as_of`: (days, completed weeks, final?). So far while
/// waiting; the final wait (clock start to stop) once completed.
fn referral_wait(r: &ReferralState, as_of: NaiveDate) -> Option<(i64, u32, bool)> {
    let (start, _) = r.clock_start()?;
    if r.waiting_at(as_of) {
        let days = rules::days_waited(start, as_of)?;
        return Some((days, r.wait_weeks_at(as_of)?, false));
    }
    let weeks = r.final_wait_weeks()?;
    let (stop, _) = r.clock_stop()?;
    Some((rules::days_waited(start, stop)?, weeks, true))
}

/// The `referrals` rows of `states`, with waits as of `as_of`.
pub fn referrals_batch<'a>(
    states: impl IntoIterator<Item = &'a ReferralState>,
    as_of: NaiveDate,
) -> Result<RecordBatch, ArrowError> {
    let s: Vec<&ReferralState> = states.into_iter().collect();
    let waits: Vec<Option<(i64, u32, bool)>> = s.iter().map(|r| referral_wait(r, as_of)).collect();
    let columns: Vec<ArrayRef> = vec![
        strings(s.iter().map(|r| Some(r.pathway_id().as_str()))),
        strings(s.iter().map(|r| r.patient_id().map(|p| p.as_str()))),
        strings(s.iter().map(|r| r.practice().map(|o| o.as_str()))),
        strings(s.iter().map(|r| r.provider().map(|o| o.as_str()))),
        strings(
            s.iter()
                .map(|r| r.treatment_function().map(|t| t.wire_name())),
        ),
        strings(
            s.iter()
                .map(|r| r.referred_treatment_function().map(|t| t.wire_name())),
        ),
        strings(s.iter().map(|r| r.priority().map(|p| p.wire_name()))),
        strings(s.iter().map(|r| r.referral_source().map(|p| p.wire_name()))),
        dates(s.iter().map(|r| r.received_date())),
        dates(s.iter().map(|r| r.triage().map(|t| t.0))),
        strings(
            s.iter()
                .map(|r| r.triage().map(|t| t.1.outcome.wire_name())),
        ),
        strings(s.iter().map(|r| r.advice_origin().map(|a| a.as_str()))),
        dates(s.iter().map(|r| r.clock_start().map(|c| c.0))),
        strings(s.iter().map(|r| r.clock_start().map(|c| c.1.wire_name()))),
        dates(s.iter().map(|r| r.clock_stop().map(|c| c.0))),
        strings(s.iter().map(|r| r.clock_stop().map(|c| c.1.wire_name()))),
        dates(s.iter().map(|r| r.discharged())),
        dates(s.iter().map(|r| r.first_attendance())),
        strings(s.iter().map(|r| Some(r.status().name()))),
        dates(s.iter().map(|r| r.wait_end())),
        bools(s.iter().map(|r| Some(r.waiting_at(as_of)))),
        int64s(waits.iter().map(|w| w.map(|w| w.0))),
        Arc::new(Int32Array::from_iter(
            waits.iter().map(|w| w.map(|w| weeks_i32(w.1))),
        )),
        bools(waits.iter().map(|w| w.map(|w| w.2))),
        dates(s.iter().map(|_| Some(as_of))),
    ];
    RecordBatch::try_new(referrals_schema(), columns)
}

// ---- appointments ---------------------------------------------------------

/// The schema of `appointments`: one row per appointment, GP and outpatient.
///
/// - `appointment_id`, `patient_id`: pseudonyms; `setting`: `gp` or `outpatient`.
/// - `practice`, `provider`, `treatment_function`: the booking's codes (GP
///   appointments have a practice only).
/// - `pathway_id`, `contact` (first or follow-up), `followup_id`: outpatient
///   appointments only.
/// - `slot_id`: the current slot, when known.
/// - `booked_at`, `start`: when it was booked and when it is (UTC);
///   `appointment_date`: the UK date of `start`.
/// - `status`: the latest status (booked, attended, did not attend,
///   cancelled by patient or provider); `outcome_date`: its UK date for an
///   outcome; `cancelled_by`.
/// - `booking_lead_days`: UK calendar days from booking to the current start
///   ([`rules::booking_lead_days`]); `booking_band`: its GPAD band (null when
///   the start is before the booking).
/// - `gpad_mode`, `gpad_hcp_type`, `gpad_national_category`: GP appointments only.
pub fn appointments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("appointment_id", false),
        text("patient_id", true),
        text("setting", true),
        text("practice", true),
        text("provider", true),
        text("treatment_function", true),
        text("pathway_id", true),
        text("contact", true),
        text("followup_id", true),
        text("slot_id", true),
        Field::new("booked_at", utc(), true),
        Field::new("start", utc(), true),
        date("appointment_date", true),
        text("status", false),
        date("outcome_date", true),
        text("cancelled_by", true),
        Field::new("booking_lead_days", DataType::Int64, true),
        text("booking_band", true),
        text("gpad_mode", true),
        text("gpad_hcp_type", true),
        text("gpad_national_category", true),
    ]))
}

/// The `appointments` rows of `states`.
pub fn appointments_batch<'a>(
    states: impl IntoIterator<Item = &'a AppointmentState>,
) -> Result<RecordBatch, ArrowError> {
    let s: Vec<&AppointmentState> = states.into_iter().collect();
    let columns: Vec<ArrayRef> = vec![
        strings(s.iter().map(|a| Some(a.appointment_id().as_str()))),
        strings(s.iter().map(|a| a.patient_id().map(|p| p.as_str()))),
        strings(s.iter().map(|a| a.setting().map(|x| x.wire_name()))),
        strings(s.iter().map(|a| a.practice().map(|o| o.as_str()))),
        strings(s.iter().map(|a| a.provider().map(|o| o.as_str()))),
        strings(
            s.iter()
                .map(|a| a.treatment_function().map(|t| t.wire_name())),
        ),
        strings(s.iter().map(|a| a.pathway_id().map(|p| p.as_str()))),
        strings(s.iter().map(|a| a.contact().map(|c| c.wire_name()))),
        strings(s.iter().map(|a| a.followup_id().map(|p| p.as_str()))),
        strings(s.iter().map(|a| a.slot_id().map(|p| p.as_str()))),
        timestamps(s.iter().map(|a| a.booked_at())),
        timestamps(s.iter().map(|a| a.start())),
        dates(s.iter().map(|a| a.start().map(rules::uk_date))),
        strings(s.iter().map(|a| Some(a.status().wire_name()))),
        dates(s.iter().map(|a| a.outcome_date())),
        strings(s.iter().map(|a| a.cancelled_by().map(|c| c.wire_name()))),
        int64s(s.iter().map(|a| a.booking_lead_days())),
        strings(s.iter().map(|a| a.booking_band().map(|b| b.wire_name()))),
        strings(s.iter().map(|a| a.gpad().map(|g| g.0.wire_name()))),
        strings(s.iter().map(|a| a.gpad().map(|g| g.1.wire_name()))),
        strings(s.iter().map(|a| a.gpad().map(|g| g.2.wire_name()))),
    ];
    RecordBatch::try_new(appointments_schema(), columns)
}

// ---- follow-ups -----------------------------------------------------------

/// The schema of `followups`: one row per follow-up requirement.
///
/// - `followup_id`, `pathway_id`, `patient_id`: pseudonyms.
/// - `practice`: the requirement event's practice (null until it arrives);
///   `provider`, `treatment_function`: the follow-up's.
/// - `required_date`: UK date it became required; `due_date`: due by;
///   `pifu`: patient-initiated follow-up.
/// - `status`: `waiting`, `booked`, `completed` or `cancelled`;
///   `booked_appointment_id`: the latest appointment booked for it.
/// - `outcome`: `completed` or `cancelled` once settled; `settled_date`: its
///   UK date; `cancel_reason`: for cancelled ones.
/// - `overdue_days`: days overdue on `as_of` ([`rules::followup_overdue_days`]:
///   past due and not settled on `as_of`; PIFU never); null when not overdue.
/// - `as_of`: the date `overdue_days` is computed on.
pub fn followups_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("followup_id", false),
        text("pathway_id", true),
        text("patient_id", true),
        text("practice", true),
        text("provider", true),
        text("treatment_function", true),
        date("required_date", true),
        date("due_date", true),
        Field::new("pifu", DataType::Boolean, true),
        text("status", false),
        text("booked_appointment_id", true),
        text("outcome", true),
        date("settled_date", true),
        text("cancel_reason", true),
        Field::new("overdue_days", DataType::Int64, true),
        date("as_of", false),
    ]))
}

/// The `followups` rows of `states`, overdue days as of `as_of`.
pub fn followups_batch<'a>(
    states: impl IntoIterator<Item = &'a FollowupState>,
    as_of: NaiveDate,
) -> Result<RecordBatch, ArrowError> {
    let s: Vec<&FollowupState> = states.into_iter().collect();
    let outcome = |f: &FollowupState| {
        f.settled().map(|(_, how)| match how {
            Settlement::Completed => "completed",
            Settlement::Cancelled(_) => "cancelled",
        })
    };
    let cancel_reason = |f: &FollowupState| match f.settled() {
        Some((_, Settlement::Cancelled(reason))) => Some(reason.wire_name()),
        _ => None,
    };
    let columns: Vec<ArrayRef> = vec![
        strings(s.iter().map(|f| Some(f.followup_id().as_str()))),
        strings(s.iter().map(|f| f.pathway_id().map(|p| p.as_str()))),
        strings(
            s.iter()
                .map(|f| f.requirement().map(|r| r.patient_id.as_str())),
        ),
        strings(s.iter().map(|f| {
            f.requirement()
                .and_then(|r| r.orgs.practice.as_ref())
                .map(|o| o.as_str())
        })),
        strings(s.iter().map(|f| f.provider().map(|o| o.as_str()))),
        strings(
            s.iter()
                .map(|f| f.treatment_function().map(|t| t.wire_name())),
        ),
        dates(s.iter().map(|f| f.required_date())),
        dates(s.iter().map(|f| f.due_date())),
        bools(s.iter().map(|f| f.pifu())),
        strings(s.iter().map(|f| Some(f.status().name()))),
        strings(s.iter().map(|f| f.booked_appointment().map(|p| p.as_str()))),
        strings(s.iter().map(|f| outcome(f))),
        dates(s.iter().map(|f| f.settled().map(|x| x.0))),
        strings(s.iter().map(|f| cancel_reason(f))),
        int64s(s.iter().map(|f| f.overdue_days_at(as_of))),
        dates(s.iter().map(|_| Some(as_of))),
    ];
    RecordBatch::try_new(followups_schema(), columns)
}

// ---- advice & guidance ----------------------------------------------------

/// The schema of `advice`: one row per A&G request.
///
/// - `advice_id`, `patient_id`: pseudonyms.
/// - `practice` (asking), `provider`, `treatment_function` (asked).
/// - `requested_at`, `responded_at` (first response), UTC; `requested_date`:
///   UK date of the request.
/// - `response_seconds`: request to first response
///   ([`rules::advice_response_time`]); `response_days`: the same in UK
///   calendar days (0 = same day); null until answered.
/// - `outcome`: the latest response's wire name.
/// - `converted`: turned into a referral; `converted_pathway_id`: which.
pub fn advice_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("advice_id", false),
        text("patient_id", true),
        text("practice", true),
        text("provider", true),
        text("treatment_function", true),
        Field::new("requested_at", utc(), true),
        date("requested_date", true),
        Field::new("responded_at", utc(), true),
        Field::new("response_seconds", DataType::Int64, true),
        Field::new("response_days", DataType::Int64, true),
        text("outcome", true),
        Field::new("converted", DataType::Boolean, false),
        text("converted_pathway_id", true),
    ]))
}

/// The `advice` rows of `states`.
pub fn advice_batch<'a>(
    states: impl IntoIterator<Item = &'a AdviceState>,
) -> Result<RecordBatch, ArrowError> {
    let s: Vec<&AdviceState> = states.into_iter().collect();
    let columns: Vec<ArrayRef> = vec![
        strings(s.iter().map(|a| Some(a.advice_id().as_str()))),
        strings(s.iter().map(|a| a.request().map(|r| r.patient_id.as_str()))),
        strings(s.iter().map(|a| a.practice().map(|o| o.as_str()))),
        strings(s.iter().map(|a| {
            a.request()
                .and_then(|r| r.orgs.provider.as_ref())
                .map(|o| o.as_str())
        })),
        strings(
            s.iter()
                .map(|a| a.treatment_function().map(|t| t.wire_name())),
        ),
        timestamps(s.iter().map(|a| a.requested_at())),
        dates(s.iter().map(|a| a.requested_at().map(rules::uk_date))),
        timestamps(s.iter().map(|a| a.responded_at())),
        int64s(s.iter().map(|a| a.response_time().map(|d| d.num_seconds()))),
        int64s(s.iter().map(|a| a.response_days())),
        strings(s.iter().map(|a| a.outcome().map(|o| o.wire_name()))),
        bools(s.iter().map(|a| Some(a.converted_to().is_some()))),
        strings(s.iter().map(|a| a.converted_to().map(|p| p.as_str()))),
    ];
    RecordBatch::try_new(advice_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::testing::{date, day, event, id, patient, time};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Date32Type, Int32Type, Int64Type};
    use chrono::Duration;
    use pathflow_schemas::codes::{
        AdviceOutcome, AppointmentMode, ClockStartReason, ClockStopReason, ContactType, HcpType,
        NationalCategory, Priority, ReferralSource,
    };
    use pathflow_schemas::event::*;
    use pathflow_schemas::{Payload, PseudoId};

    use crate::fold::Fold;

    /// Events with fresh ids; GP events carry a practice only.
    #[derive(Default)]
    struct Log {
        n: u32,
        fold: Fold,
    }

    impl Log {
        fn at(&mut self, at: DateTime<Utc>, payload: Payload) {
            self.n += 1;
            let event = event(self.n, at, at + Duration::days(1), "test:state", payload);
            self.fold.apply(&event);
        }
    }

    /// Two pathways (one waiting, one completed), a GP and an outpatient
    /// appointment, an overdue and a PIFU follow-up, a converted A&G request.
    fn folded() -> Fold {
        let (p1, p2) = (id(1, 1), id(1, 2));
        let (gp, op) = (id(2, 1), id(2, 2));
        let (f1, f2) = (id(3, 1), id(3, 2));
        let adv = id(4, 1);
        let mut log = Log::default();
        for (p, n) in [(&p1, 1), (&p2, 2)] {
            log.at(
                day(0),
                Payload::ReferralCreated(ReferralCreated {
                    pathway_id: p.clone(),
                    patient: patient(n),
                    priority: Priority::Routine,
                    referral_source: ReferralSource::Gp,
                    from_advice: (n == 1).then(|| adv.clone()),
                }),
            );
            log.at(
                day(0),
                Payload::ClockStarted(ClockStarted {
                    pathway_id: p.clone(),
                    reason: ClockStartReason::FirstActivity,
                }),
            );
        }
        log.at(
            day(60),
            Payload::ClockStopped(ClockStopped {
                pathway_id: p2.clone(),
                reason: ClockStopReason::FirstDefinitiveTreatment,
            }),
        );
        // A GP appointment booked at 23:00 for 08:00 two days later.
        log.at(
            time(10, 23),
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id: gp.clone(),
                slot_id: None,
                patient: patient(3),
                start: time(12, 8),
                kind: AppointmentKind::Gp {
                    mode: AppointmentMode::Telephone,
                    hcp_type: HcpType::Gp,
                    national_category: NationalCategory::ClinicalTriage,
                },
            }),
        );
        log.at(
            time(12, 8),
            Payload::AppointmentAttended(AppointmentAttended {
                appointment_id: gp.clone(),
            }),
        );
        // An outpatient first attendance on p1, booked 20 days ahead, not attended.
        log.at(
            time(5, 9),
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id: op.clone(),
                slot_id: None,
                patient: patient(1),
                start: time(25, 10),
                kind: AppointmentKind::Outpatient {
                    pathway_id: p1.clone(),
                    contact: ContactType::First,
                    followup_id: None,
                },
            }),
        );
        log.at(
            time(25, 10),
            Payload::AppointmentDidNotAttend(AppointmentDidNotAttend {
                appointment_id: op.clone(),
            }),
        );
        for (f, pifu) in [(&f1, false), (&f2, true)] {
            log.at(
                day(30),
                Payload::FollowupRequired(FollowupRequired {
                    followup_id: f.clone(),
                    pathway_id: p2.clone(),
                    patient: patient(2),
                    due_date: date(40),
                    pifu,
                }),
            );
        }
        log.at(
            time(-5, 9),
            Payload::AdviceRequested(AdviceRequested {
                advice_id: adv.clone(),
                patient: patient(1),
            }),
        );
        log.at(
            time(-3, 15),
            Payload::AdviceResponded(AdviceResponded {
                advice_id: adv.clone(),
                outcome: AdviceOutcome::ReferralAdvised,
            }),
        );
        log.at(
            day(0),
            Payload::AdviceConverted(AdviceConverted {
                advice_id: adv,
                pathway_id: p1,
            }),
        );
        log.fold
    }

    fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    /// The row of the entity `id` (first column).
    fn row(batch: &RecordBatch, id: &PseudoId) -> usize {
        let ids = batch.column(0).as_string::<i32>();
        (0..ids.len())
            .find(|&i| ids.value(i) == id.as_str())
            .expect("row present")
    }

    fn str_at<'a>(batch: &'a RecordBatch, name: &str, i: usize) -> Option<&'a str> {
        let c = column(batch, name).as_string::<i32>();
        c.is_valid(i).then(|| c.value(i))
    }

    fn i64_at(batch: &RecordBatch, name: &str, i: usize) -> Option<i64> {
        let c = column(batch, name).as_primitive::<Int64Type>();
        c.is_valid(i).then(|| c.value(i))
    }

    #[test]
    fn referrals_rows_carry_status_and_wait_as_of_a_date() {
        let fold = folded();
        let as_of = date(100);
        let batch = referrals_batch(&fold.referrals(), as_of).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let weeks = column(&batch, "wait_weeks").as_primitive::<Int32Type>();
        let received = column(&batch, "received_date").as_primitive::<Date32Type>();

        let open = row(&batch, &id(1, 1));
        assert_eq!(str_at(&batch, "status", open), Some("open"));
        assert_eq!(i64_at(&batch, "wait_days", open), Some(100));
        assert_eq!(weeks.value(open), 14);
        assert!(!column(&batch, "wait_final").as_boolean().value(open));
        assert!(column(&batch, "waiting").as_boolean().value(open));
        assert_eq!(str_at(&batch, "practice", open), Some("Y01234"));
        assert_eq!(str_at(&batch, "provider", open), Some("RX1"));
        assert_eq!(str_at(&batch, "treatment_function", open), Some("110"));
        assert_eq!(str_at(&batch, "priority", open), Some("routine"));
        assert_eq!(str_at(&batch, "advice_id", open), Some(id(4, 1).as_str()));
        assert_eq!(received.value(open), date32(date(0)));

        let stopped = row(&batch, &id(1, 2));
        assert_eq!(str_at(&batch, "status", stopped), Some("stopped"));
        assert_eq!(i64_at(&batch, "wait_days", stopped), Some(60));
        assert_eq!(weeks.value(stopped), 8);
        assert!(column(&batch, "wait_final").as_boolean().value(stopped));
        assert!(!column(&batch, "waiting").as_boolean().value(stopped));
        assert_eq!(
            str_at(&batch, "clock_stop_reason", stopped),
            Some(ClockStopReason::FirstDefinitiveTreatment.wire_name())
        );
        assert_eq!(str_at(&batch, "advice_id", stopped), None);
    }

    #[test]
    fn appointments_rows_carry_status_lead_time_and_gpad() {
        let fold = folded();
        let batch = appointments_batch(&fold.appointments()).unwrap();
        assert_eq!(batch.num_rows(), 2);

        let gp = row(&batch, &id(2, 1));
        assert_eq!(str_at(&batch, "setting", gp), Some("gp"));
        assert_eq!(str_at(&batch, "status", gp), Some("attended"));
        // Booked 23:00 on day 10 for 08:00 on day 12: two UK calendar days.
        assert_eq!(i64_at(&batch, "booking_lead_days", gp), Some(2));
        assert_eq!(
            str_at(&batch, "booking_band", gp),
            Some(pathflow_schemas::codes::BookingBand::TwoToSevenDays.wire_name())
        );
        assert_eq!(str_at(&batch, "gpad_mode", gp), Some("telephone"));
        assert_eq!(str_at(&batch, "gpad_hcp_type", gp), Some("gp"));
        assert_eq!(
            str_at(&batch, "gpad_national_category", gp),
            Some("clinical_triage")
        );
        assert_eq!(str_at(&batch, "practice", gp), Some("Y01234"));
        assert_eq!(str_at(&batch, "provider", gp), None);
        assert_eq!(str_at(&batch, "contact", gp), None);

        let op = row(&batch, &id(2, 2));
        assert_eq!(str_at(&batch, "status", op), Some("did_not_attend"));
        assert_eq!(i64_at(&batch, "booking_lead_days", op), Some(20));
        assert_eq!(str_at(&batch, "contact", op), Some("first"));
        assert_eq!(str_at(&batch, "pathway_id", op), Some(id(1, 1).as_str()));
        assert_eq!(str_at(&batch, "gpad_mode", op), None);
        let starts =
            column(&batch, "start").as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(starts.value(op), time(25, 10).timestamp_micros());
        let on = column(&batch, "appointment_date").as_primitive::<Date32Type>();
        assert_eq!(on.value(op), date32(date(25)));
    }

    #[test]
    fn followups_rows_carry_overdue_days_as_of_a_date() {
        let fold = folded();
        let batch = followups_batch(&fold.followups(), date(50)).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let overdue = row(&batch, &id(3, 1));
        assert_eq!(str_at(&batch, "status", overdue), Some("waiting"));
        assert_eq!(i64_at(&batch, "overdue_days", overdue), Some(10));
        assert!(!column(&batch, "pifu").as_boolean().value(overdue));
        assert_eq!(str_at(&batch, "provider", overdue), Some("RX1"));
        assert_eq!(str_at(&batch, "practice", overdue), Some("Y01234"));
        // PIFU is never overdue.
        let pifu = row(&batch, &id(3, 2));
        assert_eq!(i64_at(&batch, "overdue_days", pifu), None);
        // Before the due date, not overdue.
        let early = followups_batch(&fold.followups(), date(39)).unwrap();
        assert_eq!(i64_at(&early, "overdue_days", row(&early, &id(3, 1))), None);
    }

    #[test]
    fn advice_rows_carry_response_time_and_conversion() {
        let fold = folded();
        let batch = advice_batch(&fold.advice_requests()).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(i64_at(&batch, "response_days", 0), Some(2));
        assert_eq!(
            i64_at(&batch, "response_seconds", 0),
            Some((2 * 24 + 6) * 3600)
        );
        assert_eq!(str_at(&batch, "outcome", 0), Some("referral_advised"));
        assert!(column(&batch, "converted").as_boolean().value(0));
        assert_eq!(
            str_at(&batch, "converted_pathway_id", 0),
            Some(id(1, 1).as_str())
        );
        assert_eq!(str_at(&batch, "practice", 0), Some("Y01234"));
    }

    #[test]
    fn empty_states_give_empty_batches() {
        let fold = Fold::new();
        assert_eq!(
            referrals_batch(&fold.referrals(), date(0))
                .unwrap()
                .num_rows(),
            0
        );
        assert_eq!(
            appointments_batch(&fold.appointments()).unwrap().num_rows(),
            0
        );
        assert_eq!(
            followups_batch(&fold.followups(), date(0))
                .unwrap()
                .num_rows(),
            0
        );
        assert_eq!(advice_batch(&fold.advice_requests()).unwrap().num_rows(), 0);
    }

    #[test]
    fn schemas_hold_only_delta_types() {
        for schema in [
            referrals_schema(),
            appointments_schema(),
            followups_schema(),
            advice_schema(),
        ] {
            for field in schema.fields() {
                let t = field.data_type();
                assert!(
                    !matches!(
                        t,
                        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
                    ),
                    "{} is unsigned",
                    field.name()
                );
                if let DataType::Timestamp(unit, tz) = t {
                    assert_eq!(*unit, TimeUnit::Microsecond);
                    assert_eq!(tz.as_deref(), Some("UTC"));
                }
                assert!(
                    matches!(
                        t,
                        DataType::Utf8
                            | DataType::Date32
                            | DataType::Int32
                            | DataType::Int64
                            | DataType::Boolean
                            | DataType::Timestamp(..)
                    ),
                    "{}: {t}",
                    field.name()
                );
            }
        }
    }
}
