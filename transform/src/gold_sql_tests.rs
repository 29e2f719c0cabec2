//! Acceptance tests of the gold tables through SQL: small hand-made event
//! sets go through the whole path (bronze commit, [`Deriver`], Delta tables)
//! and are read back with [`sql_session`] as an analyst would, each query
//! beside the numbers worked out by hand from the definitions on
//! [`crate::gold::GoldTable`] and in [`crate::rules`].
//!
//! Calendar: day 0 is Monday 5 May 2025, the first day of ISO week
//! 2025-W19; days 7k to 7k + 6 are week W19 + k, so W20 runs from day 7 to
//! its week end, Sunday day 13. Events come from [`crate::fold::testing`]:
//! practice Y01234, provider RX1, specialty 110 (trauma and orthopaedics)
//! unless a test moves them; GP events carry a practice only. `as_of` is the
//! UK date of the newest event (the earlier of occurred and recorded), and
//! snapshot measures (waiting list, overdue follow-ups) are counted only up
//! to its week.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use pathflow_schemas::Event;
use pathflow_schemas::Payload;
use pathflow_schemas::codes::{
    AppointmentMode, AppointmentStatus, ClockStopReason, ContactType, FollowupCancelReason,
    HcpType, Priority, TreatmentFunction, TriageOutcome,
};
use pathflow_schemas::event::{FollowupCancelled, SlotKind};
use tempfile::TempDir;

use crate::derive::{Deriver, sql_session};
use crate::fold::testing::*;
use crate::rules;

// ---- running SQL over derived tables ----------------------------------------

/// The tables derived from some events, and a SQL session over them.
struct Tables {
    ctx: SessionContext,
    /// Holds the tables; removed when the test ends.
    _dir: TempDir,
}

/// Commits `events` to a fresh bronze table, derives the state and gold
/// tables from it, and opens a SQL session over all of them.
async fn derive(events: &[Event]) -> Tables {
    let dir = tempfile::tempdir().unwrap();
    crate::testing::commit_events(dir.path(), "t", events).await;
    let location = dir.path().to_str().unwrap();
    let report = Deriver::open(location, &Default::default())
        .await
        .unwrap()
        .catch_up()
        .await
        .unwrap();
    assert_eq!(report.events, events.len());
    let ctx = sql_session(location, &Default::default()).await.unwrap();
    Tables { ctx, _dir: dir }
}

impl Tables {
    async fn batches(&self, sql: &str) -> Vec<RecordBatch> {
        let frame = self
            .ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        frame
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first row of `sql`'s result.
    async fn row(&self, sql: &str) -> Row {
        let batches = self.batches(sql).await;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .unwrap_or_else(|| panic!("no rows: {sql}"));
        Row(batch.slice(0, 1))
    }

    /// Every row of `sql`'s result, its values joined by `|` (nulls empty).
    async fn rows(&self, sql: &str) -> Vec<String> {
        crate::testing::query_rows(&self.ctx, sql).await
    }
}

/// One result row; its values by column name.
struct Row(RecordBatch);

impl Row {
    fn column(&self, name: &str, want: &DataType) -> &dyn Array {
        let c = self
            .0
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.0.schema()));
        assert_eq!(c.data_type(), want, "column {name}");
        c.as_ref()
    }

    fn int(&self, name: &str) -> Option<i64> {
        let c = self
            .column(name, &DataType::Int64)
            .as_primitive::<Int64Type>();
        c.is_valid(0).then(|| c.value(0))
    }

    fn float(&self, name: &str) -> Option<f64> {
        let c = self
            .column(name, &DataType::Float64)
            .as_primitive::<Float64Type>();
        c.is_valid(0).then(|| c.value(0))
    }

    /// Text, whether DataFusion reads it back as `Utf8` or `Utf8View`.
    fn text(&self, name: &str) -> Option<String> {
        let view = self.0.column_by_name(name).map(|c| c.data_type()) == Some(&DataType::Utf8View);
        if view {
            let c = self.column(name, &DataType::Utf8View).as_string_view();
            return c.is_valid(0).then(|| c.value(0).to_string());
        }
        let c = self.column(name, &DataType::Utf8).as_string::<i32>();
        c.is_valid(0).then(|| c.value(0).to_string())
    }
}

#[track_caller]
fn assert_close(got: Option<f64>, want: f64) {
    assert!(
        got.is_some_and(|g| (g - want).abs() < 1e-9),
        "got {got:?}, want {want}"
    );
}

// ---- waits ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn waiting_list_median_p92_and_long_waits_at_the_week_end() {
    let mut log = Log::default();
    // Thirteen pathways in specialty 110, by clock start day and the
    // completed weeks waited at the W20 week end, floor((13 − start) / 7).
    let pathways = [
        (10, 0),    // 3 days
        (6, 1),     // 7 days
        (3, 1),     // 10 days
        (-1, 2),    // 14 days
        (-8, 3),    // 21 days
        (-9, 3),    // 22 days
        (-14, 3),   // 27 days
        (-22, 5),   // 35 days
        (-47, 8),   // 60 days
        (-112, 17), // 125 days: the last day within 18 weeks
        (-113, 18), // 126 days: 18 weeks, no longer within
        (-119, 18), // 132 days
        (-351, 52), // 364 days
    ];
    for (n, (start, weeks)) in (1u32..).zip(pathways) {
        assert_eq!(rules::weeks_waited(date(start), date(13)), Some(weeks));
        log.pathway(&id(1, n), n, start, None);
    }
    // Another specialty's long wait, which the specialty filter leaves out.
    let other = id(1, 99);
    log.at(day(-200), created(&other, 99, None))
        .envelope
        .treatment_function = Some(TreatmentFunction::Rheumatology);
    log.at(day(-200), started(&other))
        .envelope
        .treatment_function = Some(TreatmentFunction::Rheumatology);
    // The newest event is the clock start on day 10: as_of is in W20.
    let t = derive(&log.events).await;

    let r = t
        .row(
            "SELECT waiting_list, median_wait_weeks, p92_wait_weeks, over_18_weeks, \
             over_52_weeks, pct_within_18_weeks FROM waits_weekly \
             WHERE scope = 'specialty' AND treatment_function = '110' AND week_id = '2025-W20'",
        )
        .await;
    // Bands of completed weeks: n_0 = 1, n_1 = 2, n_2 = 1, n_3 = 3, n_5 = 1,
    // n_8 = 1, n_17 = 1, n_18 = 2, n_52 = 1; N = 13. Cumulative C_0 = 1,
    // C_1 = 3, C_2 = 4, C_3 = 7, C_5 = 8, C_8 = 9, C_17 = 10, C_18 = 12, C_52 = 13.
    assert_eq!(r.int("waiting_list"), Some(13));
    // Median: P = 0.5 × 13 = 6.5; C_2 = 4 < 6.5 ≤ C_3 = 7, so 3 + (6.5 − 4) / 3.
    assert_close(r.float("median_wait_weeks"), 3.0 + (6.5 - 4.0) / 3.0);
    // 92nd: P = 0.92 × 13 = 11.96; C_17 = 10 < 11.96 ≤ C_18 = 12, so
    // 18 + (11.96 − 10) / 2 = 18.98.
    assert_close(r.float("p92_wait_weeks"), 18.0 + (11.96 - 10.0) / 2.0);
    // 18 weeks or more: the two 18s and the 52; 52 or more: one.
    assert_eq!(r.int("over_18_weeks"), Some(3));
    assert_eq!(r.int("over_52_weeks"), Some(1));
    // Within 18 weeks: 10 of 13.
    assert_close(r.float("pct_within_18_weeks"), 100.0 * 10.0 / 13.0);

    // The whole list holds the other specialty too: 14.
    let r = t
        .row("SELECT waiting_list FROM waits_weekly WHERE scope = 'all' AND week_id = '2025-W20'")
        .await;
    assert_eq!(r.int("waiting_list"), Some(14));
    // No snapshot after the as_of week.
    let r = t
        .row("SELECT count(*) AS n FROM waits_weekly WHERE week_id > '2025-W20'")
        .await;
    assert_eq!(r.int("n"), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stop_takes_the_pathway_off_the_list_from_its_week_on() {
    let mut log = Log::default();
    let (p1, p2, p3) = (id(1, 1), id(1, 2), id(1, 3));
    log.pathway(&p1, 1, 0, None);
    log.pathway(&p2, 2, 0, None);
    log.pathway(&p3, 3, 2, None);
    // p2 stops on Wednesday of W20; p3 on Sunday day 13, the W20 week end
    // itself (a pathway that ends on the snapshot day is not waiting).
    let treated = ClockStopReason::FirstDefinitiveTreatment;
    log.at(day(10), stopped(&p2, treated));
    log.at(day(13), stopped(&p3, treated));
    // A late event moves as_of to day 16, in W21.
    log.at(day(16), triaged(&p1, TriageOutcome::Accepted));
    let t = derive(&log.events).await;

    // W19 (ends day 6): all three wait. W20 (ends day 13): only p1; both
    // stops count there. W21: p1. Nothing after the as_of week.
    assert_eq!(
        t.rows(
            "SELECT week_id, waiting_list, clock_stops FROM waits_weekly \
             WHERE scope = 'specialty' AND treatment_function = '110' ORDER BY week_id"
        )
        .await,
        ["2025-W19|3|0", "2025-W20|1|2", "2025-W21|1|0"]
    );
    // Final waits: p2 10 days, p3 11 days, both 1 completed week: bands
    // n_1 = 2, median P = 1, so 1 + (1 − 0) / 2 = 1.5.
    let r = t
        .row(
            "SELECT median_completed_wait_weeks FROM waits_weekly \
             WHERE scope = 'all' AND week_id = '2025-W20'",
        )
        .await;
    assert_close(r.float("median_completed_wait_weeks"), 1.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_referrals_state_table_agrees_with_the_waiting_list_at_as_of() {
    let mut log = Log::default();
    // Waiting at the W20 end (day 13): five ordinary clocks and a long wait
    // (start −130: 143 days, 20 weeks).
    for (n, start) in (1u32..).zip([-30, -20, -10, 0, 5, -130]) {
        log.pathway(&id(1, n), n, start, None);
    }
    // Not waiting: stopped on day 8; discharged on day 9 without a stop;
    // clock nullified by a first DNA on day 6; referred with no clock start.
    let (stopped_p, discharged_p, nullified) = (id(1, 11), id(1, 12), id(1, 13));
    log.pathway(&stopped_p, 11, -40, None);
    log.at(
        day(8),
        stopped(&stopped_p, ClockStopReason::FirstDefinitiveTreatment),
    );
    log.pathway(&discharged_p, 12, -15, None);
    log.at(day(9), discharged(&discharged_p));
    log.pathway(&nullified, 13, -5, None);
    log.at(
        day(6),
        stopped(&nullified, ClockStopReason::DidNotAttendFirst),
    );
    log.at(day(2), created(&id(1, 14), 14, None));
    // Waiting again: nullified on day −3 and restarted on day 1.
    let restarted = id(1, 15);
    log.pathway(&restarted, 15, -25, None);
    log.at(
        day(-3),
        stopped(&restarted, ClockStopReason::DidNotAttendFirst),
    );
    log.at(day(1), started(&restarted));
    // Not waiting either: stopped on day 13, the as_of week's end itself,
    // the newest event (as_of in W20).
    let on_sunday = id(1, 16);
    log.pathway(&on_sunday, 16, -50, None);
    log.at(
        day(13),
        stopped(&on_sunday, ClockStopReason::FirstDefinitiveTreatment),
    );
    let t = derive(&log.events).await;

    // 6 + the restarted clock = 7 waiting, 1 of them 18 weeks or more.
    let r = t
        .row(
            "SELECT (SELECT count(*) FROM referrals WHERE waiting) AS state_waiting, \
             (SELECT count(*) FROM referrals WHERE waiting AND wait_weeks >= 18) AS state_over_18, \
             waiting_list, over_18_weeks FROM waits_weekly \
             WHERE scope = 'all' AND week_id = '2025-W20'",
        )
        .await;
    assert_eq!(r.int("state_waiting"), Some(7));
    assert_eq!(r.int("waiting_list"), Some(7));
    assert_eq!(r.int("state_over_18"), Some(1));
    assert_eq!(r.int("over_18_weeks"), Some(1));
}

// ---- capacity and follow-ups ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn outpatient_dna_rate_and_unused_slots_in_capacity() {
    let mut log = Log::default();
    let p = id(1, 1);
    let first = SlotKind::Outpatient {
        contact: ContactType::First,
    };
    // Eight first-appointment slots in W20 (days 7 to 10), one withdrawn.
    for k in 0..8 {
        let start = time(7 + i64::from(k % 4), 9 + k);
        log.at(time(-7, 9), slot(&id(7, k), start, first.clone()));
    }
    log.at(time(-2, 9), withdrawn(&id(7, 7)));
    // Seven first appointments in W20: four attended, one DNA, one cancelled
    // by the provider, one not held yet. Two follow-ups: attended and DNA.
    let appointments = [
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::DidNotAttend),
        (ContactType::First, AppointmentStatus::CancelledByProvider),
        (ContactType::First, AppointmentStatus::Booked),
        (ContactType::FollowUp, AppointmentStatus::Attended),
        (ContactType::FollowUp, AppointmentStatus::DidNotAttend),
    ];
    for (k, (contact, status)) in (0u32..).zip(appointments) {
        let (a, start) = (id(2, k), time(8, 9 + k));
        log.at(time(0, 9), op_booked(&a, &p, start, contact));
        if let Some(payload) = outcome(&a, status) {
            log.at(start, payload);
        }
    }
    let t = derive(&log.events).await;

    let r = t
        .row(
            "SELECT slots_offered, slots_withdrawn, appointments_booked, attended, \
             did_not_attend, cancelled_by_provider, slots_unused, dna_rate FROM capacity_weekly \
             WHERE setting = 'outpatient' AND contact = 'first' AND week_id = '2025-W20'",
        )
        .await;
    // 8 published − 1 withdrawn = 7 offered; booked: all but the cancelled = 6.
    assert_eq!(r.int("slots_offered"), Some(7));
    assert_eq!(r.int("slots_withdrawn"), Some(1));
    assert_eq!(r.int("appointments_booked"), Some(6));
    assert_eq!(r.int("attended"), Some(4));
    assert_eq!(r.int("did_not_attend"), Some(1));
    assert_eq!(r.int("cancelled_by_provider"), Some(1));
    // Unused: 7 − 6 = 1. DNA rate: 1 / (4 + 1) = 0.2.
    assert_eq!(r.int("slots_unused"), Some(1));
    assert_close(r.float("dna_rate"), 0.2);

    // Follow-ups: no slots, 2 booked, so none unused; DNA rate 1 / (1 + 1).
    let r = t
        .row(
            "SELECT slots_unused, dna_rate FROM capacity_weekly \
             WHERE setting = 'outpatient' AND contact = 'follow_up' AND week_id = '2025-W20'",
        )
        .await;
    assert_eq!(r.int("slots_unused"), Some(0));
    assert_close(r.float("dna_rate"), 0.5);

    // Rates are not summed across rows: the week's rate is recomputed from
    // the counts, 2 DNAs / (5 attended + 2 DNAs).
    let r = t
        .row(
            "SELECT CAST(SUM(did_not_attend) AS DOUBLE) / SUM(attended + did_not_attend) AS rate \
             FROM capacity_weekly WHERE setting = 'outpatient' AND week_id = '2025-W20'",
        )
        .await;
    assert_close(r.float("rate"), 2.0 / 7.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_to_followup_ratio_in_followups() {
    let mut log = Log::default();
    let p = id(1, 1);
    // In specialty 110 in W20: 2 first attendances (a DNA'd first does not
    // count), 5 follow-up attendances (a DNA and a cancellation do not).
    let mut appointments = vec![
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::Attended),
        (ContactType::First, AppointmentStatus::DidNotAttend),
        (ContactType::FollowUp, AppointmentStatus::DidNotAttend),
        (ContactType::FollowUp, AppointmentStatus::CancelledByPatient),
    ];
    appointments.extend([(ContactType::FollowUp, AppointmentStatus::Attended); 5]);
    for (k, (contact, status)) in (0u32..).zip(appointments) {
        let (a, start) = (id(2, k), time(9, 8 + k));
        log.at(time(0, 9), op_booked(&a, &p, start, contact));
        log.at(start, outcome(&a, status).unwrap());
    }
    // In rheumatology: one first, one follow-up attended.
    for (k, contact) in [(20, ContactType::First), (21, ContactType::FollowUp)] {
        let (a, start) = (id(2, k), time(10, 10));
        log.at(time(0, 9), op_booked(&a, &p, start, contact))
            .envelope
            .treatment_function = Some(TreatmentFunction::Rheumatology);
        log.at(start, outcome(&a, AppointmentStatus::Attended).unwrap());
    }
    let t = derive(&log.events).await;

    // Follow-ups per first: 5 / 2 = 2.5 in 110, 1 / 1 in 410.
    assert_eq!(
        t.rows(
            "SELECT treatment_function, first_attendances, followup_attendances, \
             new_to_followup_ratio FROM followups_weekly WHERE week_id = '2025-W20' \
             ORDER BY treatment_function"
        )
        .await,
        ["110|2|5|2.5", "410|1|1|1.0"]
    );
    // Across specialties, from the counts: (5 + 1) / (2 + 1) = 2.
    let r = t
        .row(
            "SELECT CAST(SUM(followup_attendances) AS DOUBLE) / SUM(first_attendances) AS ratio \
             FROM followups_weekly WHERE week_id = '2025-W20'",
        )
        .await;
    assert_close(r.float("ratio"), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn overdue_followups_at_the_week_end_and_pifu_never_overdue() {
    let mut log = Log::default();
    let p = id(1, 1);
    // Follow-ups by due day (none booked; every requirement made on day −70).
    let f: Vec<_> = (1..=7).map(|k| id(4, k)).collect();
    for (fu, due, pifu) in [
        (&f[0], 5, false),   // 8 days overdue at the W20 end (day 13)
        (&f[1], -40, false), // 53 days: more than 6 weeks
        (&f[2], -29, false), // 42 days: overdue, but not by more than 6 weeks
        (&f[3], -60, true),  // PIFU: never overdue (73 days past due)
        (&f[4], 2, false),   // completed on day 9
        (&f[5], 13, false),  // due on the week end itself: not yet overdue
        (&f[6], 0, false),   // cancelled on day 13, the week end
    ] {
        log.at(day(-70), required(fu, &p, due, pifu));
    }
    log.at(day(9), completed(&f[4], &p));
    // The newest event (as_of day 13, in W20).
    log.at(
        day(13),
        Payload::FollowupCancelled(FollowupCancelled {
            followup_id: f[6].clone(),
            pathway_id: p.clone(),
            reason: FollowupCancelReason::NoLongerRequired,
        }),
    );
    let t = derive(&log.events).await;

    // At the W20 end: f1, f2, f3 overdue (f5 completed, f7 cancelled on or
    // before the day, f6 not past due, f4 PIFU); more than 42 days: f2.
    // Due in W20: f6; completed in W20: f5.
    let r = t
        .row(
            "SELECT due, overdue, overdue_more_than_6_weeks, completed FROM followups_weekly \
             WHERE week_id = '2025-W20'",
        )
        .await;
    assert_eq!(r.int("overdue"), Some(3));
    assert_eq!(r.int("overdue_more_than_6_weeks"), Some(1));
    assert_eq!(r.int("due"), Some(1));
    assert_eq!(r.int("completed"), Some(1));
    // At the W19 end (day 6): f1 1 day, f2 46, f3 35, f5 4, f7 6: five, one
    // over 42 days. Due in W19: f1, f5, f7.
    let r = t
        .row(
            "SELECT due, overdue, overdue_more_than_6_weeks FROM followups_weekly \
             WHERE week_id = '2025-W19'",
        )
        .await;
    assert_eq!(r.int("overdue"), Some(5));
    assert_eq!(r.int("overdue_more_than_6_weeks"), Some(1));
    assert_eq!(r.int("due"), Some(3));
    // f4 was due on day −60, in W10: due and PIFU, never overdue, there or since.
    let r = t
        .row("SELECT due, due_pifu, overdue FROM followups_weekly WHERE week_id = '2025-W10'")
        .await;
    assert_eq!(r.int("due"), Some(1));
    assert_eq!(r.int("due_pifu"), Some(1));
    assert_eq!(r.int("overdue"), Some(0));
    // The state table, as of the W20 end, agrees.
    let r = t
        .row("SELECT count(*) AS n FROM followups WHERE overdue_days IS NOT NULL")
        .await;
    assert_eq!(r.int("n"), Some(3));
}

// ---- demand -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn advice_requests_responses_conversions_and_mean_response_days() {
    let mut log = Log::default();
    let a: Vec<_> = (1..=6).map(|k| id(5, k)).collect();
    // a1: day 0 09:00 → day 2 15:00, 2 days, converted.
    log.at(time(0, 9), advice_requested(&a[0]));
    log.at(time(2, 15), advice_responded(&a[0]));
    log.at(time(3, 9), advice_converted(&a[0], &id(1, 1)));
    // a2: 00:30 UK on day 1 (23:30 UTC on day 0) → 17:00 day 1: 0 UK
    // calendar days (a UTC date would say 1).
    let just_after_midnight = time(1, 0) + chrono::Duration::minutes(30);
    log.at(just_after_midnight, advice_requested(&a[1]));
    log.at(time(1, 17), advice_responded(&a[1]));
    // a3: day 2 → day 6, 4 days, converted.
    log.at(time(2, 9), advice_requested(&a[2]));
    log.at(time(6, 10), advice_responded(&a[2]));
    log.at(time(6, 11), advice_converted(&a[2], &id(1, 3)));
    // a4: day 3 → day 9 (W20), 6 days.
    log.at(time(3, 9), advice_requested(&a[3]));
    log.at(time(9, 9), advice_responded(&a[3]));
    // a5: not answered. a6: answered before its request (a data error): no
    // response time, so not among the responded.
    log.at(time(4, 9), advice_requested(&a[4]));
    log.at(time(5, 12), advice_requested(&a[5]));
    log.at(time(5, 9), advice_responded(&a[5]));
    let t = derive(&log.events).await;

    let sql = |week: &str| {
        format!(
            "SELECT provider, treatment_function, advice_requests, advice_responded, \
             advice_converted, advice_response_days_total, \
             CAST(advice_response_days_total AS DOUBLE) / advice_responded AS mean_response_days \
             FROM demand_weekly WHERE priority IS NULL AND week_id = '{week}'"
        )
    };
    // W19: 6 requests; answered a1, a2, a3 (2 + 0 + 4 = 6 days, mean 2);
    // converted a1 and a3.
    let r = t.row(&sql("2025-W19")).await;
    assert_eq!(r.text("provider").as_deref(), Some("RX1"));
    assert_eq!(r.text("treatment_function").as_deref(), Some("110"));
    assert_eq!(r.int("advice_requests"), Some(6));
    assert_eq!(r.int("advice_responded"), Some(3));
    assert_eq!(r.int("advice_converted"), Some(2));
    assert_eq!(r.int("advice_response_days_total"), Some(6));
    assert_close(r.float("mean_response_days"), 6.0 / 3.0);
    // W20: a4 answered after 6 days, not converted.
    let r = t.row(&sql("2025-W20")).await;
    assert_eq!(r.int("advice_requests"), Some(0));
    assert_eq!(r.int("advice_responded"), Some(1));
    assert_eq!(r.int("advice_converted"), Some(0));
    assert_close(r.float("mean_response_days"), 6.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn referrals_by_priority_and_returned_referrals() {
    let mut log = Log::default();
    let referral = |log: &mut Log, n: u32, priority, received: i64| {
        log.at(day(received), referred(&id(1, n), n, priority, None));
    };
    let triage = |log: &mut Log, n: u32, outcome, on: i64| {
        log.at(day(on), triaged(&id(1, n), outcome));
    };
    // Received in W20 (days 7 to 13): three routine, two urgent, one two-week wait.
    referral(&mut log, 1, Priority::Routine, 7);
    triage(&mut log, 1, TriageOutcome::ReturnedWithAdvice, 9); // returned
    referral(&mut log, 2, Priority::Routine, 8);
    triage(&mut log, 2, TriageOutcome::Accepted, 9);
    referral(&mut log, 3, Priority::Routine, 9);
    triage(&mut log, 3, TriageOutcome::Redirected, 10); // moved to 410, not returned
    referral(&mut log, 4, Priority::Urgent, 7);
    triage(&mut log, 4, TriageOutcome::Rejected, 8); // returned
    referral(&mut log, 5, Priority::Urgent, 10);
    triage(&mut log, 5, TriageOutcome::Rejected, 11);
    triage(&mut log, 5, TriageOutcome::Accepted, 12); // the latest decision stands
    referral(&mut log, 6, Priority::TwoWeekWait, 11);
    // Received in W19, returned in W20: returned counts in the decision's week.
    referral(&mut log, 7, Priority::Routine, 3);
    triage(&mut log, 7, TriageOutcome::Rejected, 8);
    let t = derive(&log.events).await;

    // Routine: received 1, 2, 3; returned 1 and 7. Urgent: received 4, 5;
    // returned 4. Two-week wait: received 6.
    assert_eq!(
        t.rows(
            "SELECT priority, SUM(referrals_received), SUM(referrals_returned) \
             FROM demand_weekly WHERE week_id = '2025-W20' AND priority IS NOT NULL \
             GROUP BY priority ORDER BY priority"
        )
        .await,
        ["routine|3|2", "two_week_wait|1|0", "urgent|2|1"]
    );
    // The redirected referral counts in the specialty it is in now.
    assert_eq!(
        t.rows(
            "SELECT treatment_function, referrals_received FROM demand_weekly \
             WHERE week_id = '2025-W20' AND priority = 'routine' ORDER BY treatment_function"
        )
        .await,
        ["110|2", "410|1"]
    );
    // Referral 7 was received in W19.
    assert_eq!(
        t.rows(
            "SELECT priority, referrals_received, referrals_returned FROM demand_weekly \
             WHERE week_id = '2025-W19'"
        )
        .await,
        ["routine|1|0"]
    );
}

// ---- GP appointments ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn gp_booking_to_appointment_bands_by_practice() {
    let mut log = Log::default();
    fn book(log: &mut Log, n: u32, booked: DateTime<Utc>, start: DateTime<Utc>) -> &mut Event {
        let payload = gp_booked(&id(6, n), start, AppointmentMode::FaceToFace, HcpType::Gp);
        log.at(booked, payload)
    }
    // GP appointments at Y01234 starting in W20, by UK calendar days from
    // booking to start.
    // Booked 00:30 UK (23:30 UTC the day before) for 11:00: same day
    // (UTC dates would say 1 day).
    let early = time(8, 0) + chrono::Duration::minutes(30);
    book(&mut log, 1, early, time(8, 11));
    // Booked 23:30 UK (22:30 UTC) for 08:00 next morning: 1 day.
    book(
        &mut log,
        2,
        time(7, 23) + chrono::Duration::minutes(30),
        time(8, 8),
    );
    book(&mut log, 3, time(5, 10), time(12, 9)); // 7: 2 to 7 days
    book(&mut log, 4, time(6, 10), time(10, 9)); // 4: 2 to 7 days
    book(&mut log, 5, time(3, 10), time(11, 9)); // 8: 8 to 14 days
    book(&mut log, 6, time(-10, 10), time(11, 9)); // 21: 15 to 21 days
    book(&mut log, 7, time(-15, 10), time(13, 9)); // 28: 22 to 28 days
    book(&mut log, 8, time(-20, 10), time(9, 9)); // 29: more than 28 days
    book(&mut log, 9, time(6, 10), time(10, 10)); // cancelled below: in no band
    // Another practice's same-day appointment.
    book(&mut log, 10, time(9, 8), time(9, 15))
        .envelope
        .practice = Some(ods("Y05678"));
    log.at(
        time(7, 9),
        outcome(&id(6, 9), AppointmentStatus::CancelledByPatient).unwrap(),
    );
    let t = derive(&log.events).await;

    let r = t
        .row(
            "SELECT gp_same_day, gp_one_day, gp_two_to_seven_days, gp_eight_to_fourteen_days, \
             gp_fifteen_to_twenty_one_days, gp_twenty_two_to_twenty_eight_days, \
             gp_more_than_twenty_eight_days, waiting_list FROM waits_weekly \
             WHERE scope = 'practice' AND practice = 'Y01234' AND week_id = '2025-W20'",
        )
        .await;
    assert_eq!(r.int("gp_same_day"), Some(1));
    assert_eq!(r.int("gp_one_day"), Some(1));
    assert_eq!(r.int("gp_two_to_seven_days"), Some(2));
    assert_eq!(r.int("gp_eight_to_fourteen_days"), Some(1));
    assert_eq!(r.int("gp_fifteen_to_twenty_one_days"), Some(1));
    assert_eq!(r.int("gp_twenty_two_to_twenty_eight_days"), Some(1));
    assert_eq!(r.int("gp_more_than_twenty_eight_days"), Some(1));
    assert_eq!(r.int("waiting_list"), Some(0));
    // Every practice: the other practice's same-day one too.
    let r = t
        .row(
            "SELECT gp_same_day, gp_two_to_seven_days FROM waits_weekly \
             WHERE scope = 'all' AND week_id = '2025-W20'",
        )
        .await;
    assert_eq!(r.int("gp_same_day"), Some(2));
    assert_eq!(r.int("gp_two_to_seven_days"), Some(2));
}
