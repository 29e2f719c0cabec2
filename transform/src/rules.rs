//! The domain rules every state and gold table is computed with, one small
//! pure function each: RTT waits and the waiting list (NHS England's RTT
//! Rules Suite and RTT statistics), GPAD booking-to-appointment bands,
//! outpatient DNA rate and new-to-follow-up ratio, overdue follow-ups, and
//! Advice & Guidance response time and conversion. [`crate::fold`] derives
//! entity state with them; the gold tables aggregate with them.
//!
//! Dates are UK civil dates ([`uk_date`]): source systems and the NHS
//! definitions count days on the calendar people in England see, while
//! events carry UTC (a date-only source field becomes local midnight, which
//! is 23:00 UTC the day before in summer).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use pathflow_schemas::Week;
use pathflow_schemas::codes::{BookingBand, ClockStopReason};

// ---- UK dates -------------------------------------------------------------

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let first_of_next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    let last = first_of_next.unwrap_or(NaiveDate::MIN) - Duration::days(1);
    last - Duration::days(i64::from(last.weekday().num_days_from_sunday()))
}

fn at_one_utc(date: NaiveDate) -> NaiveDateTime {
    date.and_time(NaiveTime::MIN) + Duration::hours(1)
}

/// The UK civil date of an instant. British Summer Time (UTC+1) runs from
/// 01:00 UTC on the last Sunday of March to 01:00 UTC on the last Sunday of
/// October (the inverse of `pathflow_schemas::uk_time::to_utc`).
pub fn uk_date(at: DateTime<Utc>) -> NaiveDate {
    let utc = at.naive_utc();
    let year = utc.year();
    let bst = utc >= at_one_utc(last_sunday(year, 3)) && utc < at_one_utc(last_sunday(year, 10));
    if bst {
        (utc + Duration::hours(1)).date()
    } else {
        utc.date()
    }
}

/// The week end of an ISO week: its Sunday, the day waiting-list and
/// follow-up snapshots are taken on.
pub fn week_end(week: Week) -> NaiveDate {
    week.sunday()
}

// ---- RTT ------------------------------------------------------------------

/// The RTT operational standard: patients should wait less than 18 weeks.
pub const RTT_STANDARD_WEEKS: u32 = 18;

/// Waits of this many completed weeks or more are "over 52 weeks" long waits.
pub const LONG_WAIT_WEEKS: u32 = 52;

/// Days waited from the clock start to `date`, the start day being day 0
/// (RTT Rules Suite: the clock starts on the day the referral is received).
/// `None` when `date` is before the start.
pub fn days_waited(clock_start: NaiveDate, date: NaiveDate) -> Option<i64> {
    let days = (date - clock_start).num_days();
    (days >= 0).then_some(days)
}

/// Completed weeks waited, as RTT waits are reported: `floor(days / 7)` with
/// days from [`days_waited`]. Day 6 is 0 weeks, day 7 is 1 week.
pub fn weeks_waited(clock_start: NaiveDate, date: NaiveDate) -> Option<u32> {
    days_waited(clock_start, date).map(|d| u32::try_from(d / 7).unwrap_or(u32::MAX))
}

/// "Within 18 weeks": fewer than 18 completed weeks (day 125 is within,
/// day 126 is not).
pub fn within_18_weeks(weeks: u32) -> bool {
    weeks < RTT_STANDARD_WEEKS
}

/// "Over 52 weeks": 52 completed weeks or more.
pub fn over_52_weeks(weeks: u32) -> bool {
    weeks >= LONG_WAIT_WEEKS
}

/// An incomplete pathway on `date` (RTT statistics: patients still waiting at
/// the end of the period): the clock started on or before `date` and the
/// pathway did not end (clock stop, or removal such as discharge) on or
/// before it. A pathway that ends on the snapshot day is no longer waiting.
pub fn is_incomplete_at(clock_start: NaiveDate, ended: Option<NaiveDate>, date: NaiveDate) -> bool {
    clock_start <= date && ended.is_none_or(|end| end > date)
}

/// [`is_incomplete_at`] at the end (Sunday) of an ISO week.
pub fn is_incomplete_at_week_end(
    clock_start: NaiveDate,
    ended: Option<NaiveDate>,
    week: Week,
) -> bool {
    is_incomplete_at(clock_start, ended, week_end(week))
}

/// Clock restart (RTT Rules Suite, DNAs: when a patient does not attend their
/// first appointment the clock is nullified, and a new clock starts when the
/// patient contacts the provider to rebook). Of a pathway's clock starts the
/// latest is in force; a clock stop (or discharge) ends that clock only when
/// it happened at or after that start. Earlier stops, such as the "did not
/// attend first appointment" nullification, belong to the clock it replaced.
pub fn ends_current_clock(current_start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    end >= current_start
}

/// A stop that nullifies the clock rather than completing the pathway (RTT
/// status 33, did not attend the first appointment): the period counts
/// neither as a completed pathway nor, once stopped, as waiting.
pub fn is_nullified(reason: ClockStopReason) -> bool {
    reason == ClockStopReason::DidNotAttendFirst
}

/// Counts of waits per completed-week band: `bands[k]` is the number of
/// pathways that have waited `k` completed weeks (RTT statistics publish
/// counts in such weekly bands).
pub fn wait_bands(weeks: impl IntoIterator<Item = u32>) -> Vec<u64> {
    let mut bands: Vec<u64> = Vec::new();
    for w in weeks {
        let k = w as usize;
        if bands.len() <= k {
            bands.resize(k + 1, 0);
        }
        bands[k] += 1;
    }
    bands
}

/// The `p`-th quantile (0 < p ≤ 1) of waits in weeks, as NHS England's RTT
/// statistics estimate medians and 92nd percentiles from weekly band counts:
/// patients are assumed spread evenly within their band (band `k` spans `k`
/// to `k + 1` weeks) and the value is interpolated linearly inside it.
///
/// With `n_k = bands[k]`, `N = Σ n_k`, cumulative `C_k = n_0 + … + n_k`
/// (`C_{-1} = 0`) and target rank `P = p × N`, take the first band `k` with
/// `C_k ≥ P`; then
///
/// ```text
/// wait_p = k + (P − C_{k−1}) / n_k      (weeks)
/// ```
///
/// Example: bands `[4, 3, 2, 1]` (N = 10). Median: P = 5, C_0 = 4 < 5 ≤ C_1 = 7,
/// so 1 + (5 − 4) / 3 = 1.33 weeks. 92nd percentile: P = 9.2, C_2 = 9 < 9.2 ≤
/// C_3 = 10, so 3 + (9.2 − 9) / 1 = 3.2 weeks. `None` for no patients or `p`
/// outside (0, 1].
pub fn percentile_wait_weeks(bands: &[u64], p: f64) -> Option<f64> {
    if !(p > 0.0 && p <= 1.0) {
        return None;
    }
    let total: u64 = bands.iter().sum();
    if total == 0 {
        return None;
    }
    let target = p * total as f64;
    let mut below = 0u64;
    for (k, &n) in bands.iter().enumerate() {
        let through = below + n;
        // P > 0 and C_{k-1} < P here, so a band that reaches P has n > 0.
        if n > 0 && through as f64 >= target {
            return Some(k as f64 + (target - below as f64) / n as f64);
        }
        below = through;
    }
    // Rounding can leave P a hair above N: the top of the last non-empty band.
    bands.iter().rposition(|&n| n > 0).map(|k| k as f64 + 1.0)
}

/// Median wait in weeks: [`percentile_wait_weeks`] at p = 0.5.
pub fn median_wait_weeks(bands: &[u64]) -> Option<f64> {
    percentile_wait_weeks(bands, 0.5)
}

/// 92nd percentile wait in weeks: [`percentile_wait_weeks`] at p = 0.92 (the
/// RTT standard is that 92% of the waiting list waits under 18 weeks).
pub fn p92_wait_weeks(bands: &[u64]) -> Option<f64> {
    percentile_wait_weeks(bands, 0.92)
}

/// Percentage of the waits in `bands` that are [`within_18_weeks`]:
/// `100 × Σ_{k<18} n_k / N`; `None` for no patients.
pub fn percent_within_18_weeks(bands: &[u64]) -> Option<f64> {
    let within: u64 = bands.iter().take(RTT_STANDARD_WEEKS as usize).sum();
    ratio(within, bands.iter().sum()).map(|r| 100.0 * r)
}

// ---- GPAD -----------------------------------------------------------------

/// Days from booking to appointment as GPAD counts them
/// (TIME_BETWEEN_BOOK_AND_APPT): UK calendar date of the appointment start
/// minus UK calendar date of the booking, so a booking at 23:50 for 08:00
/// next morning is "1 Day" and one made that morning "Same Day".
pub fn booking_lead_days(booked_at: DateTime<Utc>, start: DateTime<Utc>) -> i64 {
    (uk_date(start) - uk_date(booked_at)).num_days()
}

/// The GPAD band ("Same Day", "1 Day", "2 to 7 Days", "8 to 14 Days",
/// "15 to 21 Days", "22 to 28 Days", "More than 28 Days") of
/// [`booking_lead_days`]; `None` when the start is before the booking
/// (GPAD's "Unknown / Data Quality").
pub fn booking_band(booked_at: DateTime<Utc>, start: DateTime<Utc>) -> Option<BookingBand> {
    BookingBand::from_days(booking_lead_days(booked_at, start))
}

// ---- outpatient activity --------------------------------------------------

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// DNA rate (NHS outpatient statistics): `DNAs / (attendances + DNAs)`.
/// Cancelled appointments are in neither count. `None` with no appointments
/// that fell due.
pub fn dna_rate(attended: u64, did_not_attend: u64) -> Option<f64> {
    ratio(did_not_attend, attended + did_not_attend)
}

/// New-to-follow-up ratio (NHS outpatient statistics, "follow-ups per new"):
/// `follow-up attendances / first attendances`. `None` with no first
/// attendances.
pub fn new_to_followup_ratio(first_attendances: u64, followup_attendances: u64) -> Option<f64> {
    ratio(followup_attendances, first_attendances)
}

/// Follow-ups overdue by more than this many days are "overdue by more than
/// 6 weeks".
pub const FOLLOWUP_LONG_OVERDUE_DAYS: i64 = 42;

/// Days a follow-up is overdue on `date` (the waiting list minimum dataset's
/// "past its due date"): its due date is before `date` and it was neither
/// completed nor cancelled on or before `date`; overdue days = `date − due`.
/// Patient-initiated follow-ups (PIFU) are never overdue: they are booked
/// only when the patient asks, and their due date ends the PIFU period.
/// `None` when not overdue.
pub fn followup_overdue_days(
    due: NaiveDate,
    settled: Option<NaiveDate>,
    pifu: bool,
    date: NaiveDate,
) -> Option<i64> {
    let open = settled.is_none_or(|s| s > date);
    (!pifu && due < date && open).then(|| (date - due).num_days())
}

/// Overdue by more than 6 weeks: more than [`FOLLOWUP_LONG_OVERDUE_DAYS`] days.
pub fn overdue_more_than_6_weeks(overdue_days: i64) -> bool {
    overdue_days > FOLLOWUP_LONG_OVERDUE_DAYS
}

// ---- Advice & Guidance ----------------------------------------------------

/// A&G response time: from the request to the specialist's (first) response.
/// `None` when the response is recorded before the request.
pub fn advice_response_time(
    requested_at: DateTime<Utc>,
    responded_at: DateTime<Utc>,
) -> Option<Duration> {
    let t = responded_at - requested_at;
    (t >= Duration::zero()).then_some(t)
}

/// A&G response time in UK calendar days (0 = answered the same day).
pub fn advice_response_days(
    requested_at: DateTime<Utc>,
    responded_at: DateTime<Utc>,
) -> Option<i64> {
    advice_response_time(requested_at, responded_at)
        .map(|_| (uk_date(responded_at) - uk_date(requested_at)).num_days())
}

/// A&G conversion rate: `requests converted to a referral / requests
/// responded to`. `None` with no responses.
pub fn advice_conversion_rate(converted: u64, responded: u64) -> Option<f64> {
    ratio(converted, responded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn utc(y: i32, m: u32, day: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, day, h, min, 0).unwrap()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn uk_dates_follow_british_summer_time() {
        // Local midnight of 2 June is 23:00 UTC on 1 June.
        assert_eq!(uk_date(utc(2025, 6, 1, 23, 0)), d(2025, 6, 2));
        assert_eq!(uk_date(utc(2025, 6, 1, 22, 59)), d(2025, 6, 1));
        assert_eq!(uk_date(utc(2025, 1, 6, 23, 30)), d(2025, 1, 6));
        // BST starts 01:00 UTC 30 March 2025 and ends 01:00 UTC 26 October 2025.
        assert_eq!(uk_date(utc(2025, 3, 30, 23, 30)), d(2025, 3, 31));
        assert_eq!(uk_date(utc(2025, 3, 29, 23, 30)), d(2025, 3, 29));
        assert_eq!(uk_date(utc(2025, 10, 25, 23, 30)), d(2025, 10, 26));
        assert_eq!(uk_date(utc(2025, 10, 26, 23, 30)), d(2025, 10, 26));
        let local = d(2025, 7, 14).and_hms_opt(0, 0, 0).unwrap();
        assert_eq!(
            uk_date(pathflow_schemas::uk_time::to_utc(local)),
            d(2025, 7, 14)
        );
    }

    #[test]
    fn week_end_is_the_iso_sunday() {
        assert_eq!(week_end(Week::of(d(2024, 12, 30))), d(2025, 1, 5));
        assert_eq!(week_end(Week::parse("2025-W07").unwrap()), d(2025, 2, 16));
    }

    #[test]
    fn weeks_waited_are_completed_weeks() {
        let start = d(2025, 1, 6);
        assert_eq!(days_waited(start, start), Some(0));
        assert_eq!(weeks_waited(start, d(2025, 1, 12)), Some(0));
        assert_eq!(weeks_waited(start, d(2025, 1, 13)), Some(1));
        assert_eq!(weeks_waited(start, start + Duration::days(125)), Some(17));
        assert_eq!(weeks_waited(start, start + Duration::days(126)), Some(18));
        assert_eq!(weeks_waited(start, d(2025, 1, 5)), None);
    }

    #[test]
    fn within_18_and_over_52_weeks() {
        assert!(within_18_weeks(17));
        assert!(!within_18_weeks(18));
        assert!(!over_52_weeks(51));
        assert!(over_52_weeks(52));
    }

    #[test]
    fn incomplete_pathways_at_week_end() {
        let week = Week::parse("2025-W10").unwrap(); // Sunday 9 March
        let sunday = d(2025, 3, 9);
        assert!(is_incomplete_at_week_end(sunday, None, week));
        assert!(!is_incomplete_at_week_end(
            sunday + Duration::days(1),
            None,
            week
        ));
        assert!(!is_incomplete_at_week_end(
            d(2025, 1, 1),
            Some(sunday),
            week
        ));
        assert!(is_incomplete_at_week_end(
            d(2025, 1, 1),
            Some(sunday + Duration::days(1)),
            week
        ));
        assert!(!is_incomplete_at(
            d(2025, 1, 1),
            Some(d(2025, 2, 1)),
            sunday
        ));
    }

    #[test]
    fn a_restarted_clock_is_not_ended_by_the_earlier_dna_stop() {
        let first_start = utc(2025, 1, 6, 0, 0);
        let dna_stop = utc(2025, 2, 10, 0, 0);
        let restart = utc(2025, 2, 14, 0, 0);
        assert!(ends_current_clock(first_start, dna_stop));
        assert!(!ends_current_clock(restart, dna_stop));
        assert!(ends_current_clock(restart, restart));
        assert!(is_nullified(ClockStopReason::DidNotAttendFirst));
        assert!(!is_nullified(ClockStopReason::FirstDefinitiveTreatment));
    }

    #[test]
    fn wait_bands_count_per_completed_week() {
        assert_eq!(wait_bands([0, 0, 3, 1]), vec![2, 1, 0, 1]);
        assert!(wait_bands([]).is_empty());
    }

    #[test]
    fn median_and_92nd_percentile_interpolate_within_weekly_bands() {
        // The worked example in the doc.
        let bands = [4, 3, 2, 1];
        assert!(close(median_wait_weeks(&bands), 1.0 + 1.0 / 3.0));
        assert!(close(p92_wait_weeks(&bands), 3.2));
        // By hand: 20 patients, waits in weeks 0, 2 and 30 (bands between empty).
        // Median P = 10: C_0 = 5, C_2 = 15 ≥ 10 → 2 + (10 − 5) / 10 = 2.5.
        // 92nd P = 18.4: C_2 = 15, C_30 = 20 ≥ 18.4 → 30 + (18.4 − 15) / 5 = 30.68.
        let mut bands = vec![0u64; 31];
        bands[0] = 5;
        bands[2] = 10;
        bands[30] = 5;
        assert!(close(median_wait_weeks(&bands), 2.5));
        assert!(close(p92_wait_weeks(&bands), 30.68));
        // A rank exactly at a band's top gives the top of that band.
        assert!(close(median_wait_weeks(&[2, 0, 2]), 1.0));
        assert!(close(percentile_wait_weeks(&[0, 3], 1.0), 2.0));
        assert_eq!(median_wait_weeks(&[]), None);
        assert_eq!(median_wait_weeks(&[0, 0]), None);
        assert_eq!(percentile_wait_weeks(&[1], 0.0), None);
        assert_eq!(percentile_wait_weeks(&[1], 1.5), None);
    }

    #[test]
    fn percent_within_18_weeks_counts_bands_below_18() {
        let mut bands = vec![0u64; 19];
        bands[0] = 6;
        bands[17] = 1;
        bands[18] = 3;
        assert!(close(percent_within_18_weeks(&bands), 70.0));
        assert_eq!(percent_within_18_weeks(&[]), None);
    }

    #[test]
    fn gpad_bands_use_uk_calendar_dates() {
        let band = |b, s| booking_band(b, s).map(BookingBand::code);
        // 00:30 BST on 2 June, appointment 09:00 BST the same day.
        assert_eq!(
            band(utc(2025, 6, 1, 23, 30), utc(2025, 6, 2, 8, 0)),
            Some("Same Day")
        );
        assert_eq!(
            band(utc(2025, 6, 1, 22, 50), utc(2025, 6, 2, 8, 0)),
            Some("1 Day")
        );
        assert_eq!(
            band(utc(2025, 1, 6, 9, 0), utc(2025, 1, 13, 9, 0)),
            Some("2 to 7 Days")
        );
        assert_eq!(
            band(utc(2025, 1, 6, 9, 0), utc(2025, 1, 14, 9, 0)),
            Some("8  to 14 Days")
        );
        assert_eq!(
            band(utc(2025, 1, 6, 9, 0), utc(2025, 1, 27, 9, 0)),
            Some("15  to 21 Days")
        );
        assert_eq!(
            band(utc(2025, 1, 6, 9, 0), utc(2025, 2, 3, 9, 0)),
            Some("22  to 28 Days")
        );
        assert_eq!(
            band(utc(2025, 1, 6, 9, 0), utc(2025, 2, 4, 9, 0)),
            Some("More than 28 Days")
        );
        assert_eq!(band(utc(2025, 1, 6, 9, 0), utc(2025, 1, 5, 9, 0)), None);
        assert_eq!(
            booking_lead_days(utc(2025, 1, 6, 9, 0), utc(2025, 1, 8, 8, 0)),
            2
        );
    }

    #[test]
    fn dna_rate_is_dnas_over_attended_plus_dnas() {
        assert!(close(dna_rate(92, 8), 0.08));
        assert!(close(dna_rate(0, 3), 1.0));
        assert_eq!(dna_rate(0, 0), None);
    }

    #[test]
    fn new_to_followup_ratio_is_followups_per_first() {
        assert!(close(new_to_followup_ratio(40, 90), 2.25));
        assert_eq!(new_to_followup_ratio(0, 5), None);
    }

    #[test]
    fn followups_are_overdue_after_their_due_date_until_settled() {
        let due = d(2025, 3, 1);
        let sunday = d(2025, 3, 9);
        assert_eq!(followup_overdue_days(due, None, false, sunday), Some(8));
        assert_eq!(followup_overdue_days(sunday, None, false, sunday), None);
        assert_eq!(
            followup_overdue_days(due, Some(sunday), false, sunday),
            None
        );
        assert_eq!(
            followup_overdue_days(due, Some(d(2025, 3, 10)), false, sunday),
            Some(8)
        );
        assert_eq!(followup_overdue_days(due, None, true, sunday), None);
        let late = followup_overdue_days(due, None, false, due + Duration::days(43));
        assert_eq!(late, Some(43));
        assert!(overdue_more_than_6_weeks(43));
        assert!(!overdue_more_than_6_weeks(42));
    }

    #[test]
    fn advice_response_time_and_conversion() {
        let asked = utc(2025, 3, 14, 16, 0);
        let answered = utc(2025, 3, 17, 10, 30);
        assert_eq!(
            advice_response_time(asked, answered),
            Some(Duration::minutes(66 * 60 + 30))
        );
        assert_eq!(advice_response_days(asked, answered), Some(3));
        assert_eq!(advice_response_time(answered, asked), None);
        assert_eq!(advice_response_days(answered, asked), None);
        assert!(close(advice_conversion_rate(3, 12), 0.25));
        assert_eq!(advice_conversion_rate(0, 0), None);
    }
}
