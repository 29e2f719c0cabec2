//! UK civil time. Source systems write local times without an offset; events
//! carry UTC. British Summer Time runs from 01:00 UTC on the last Sunday of
//! March to 01:00 UTC on the last Sunday of October.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let first_of_next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    let last = first_of_next.unwrap_or(NaiveDate::MIN) - Duration::days(1);
    last - Duration::days(i64::from(last.weekday().num_days_from_sunday()))
}

/// True when UK local wall-clock time `local` falls in British Summer Time.
/// Times in the hour the clocks skip or repeat are read as GMT.
pub fn is_bst(local: NaiveDateTime) -> bool {
    let year = local.year();
    let starts = last_sunday(year, 3)
        .and_hms_opt(2, 0, 0)
        .unwrap_or_default();
    let ends = last_sunday(year, 10)
        .and_hms_opt(1, 0, 0)
        .unwrap_or_default();
    local >= starts && local < ends
}

/// The offset of UK local time `local`, as `+01:00` or `+00:00`.
pub fn offset_text(local: NaiveDateTime) -> &'static str {
    if is_bst(local) { "+01:00" } else { "+00:00" }
}

/// Converts UK local wall-clock time to UTC.
pub fn to_utc(local: NaiveDateTime) -> DateTime<Utc> {
    let utc = if is_bst(local) {
        local - Duration::hours(1)
    } else {
        local
    };
    Utc.from_utc_datetime(&utc)
}

/// Midnight UK time at the start of `date`, in UTC (for date-only source fields).
pub fn start_of_day_utc(date: NaiveDate) -> DateTime<Utc> {
    to_utc(date.and_time(chrono::NaiveTime::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(m: u32, d: u32, h: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, m, d)
            .unwrap()
            .and_hms_opt(h, 30, 0)
            .unwrap()
    }

    #[test]
    fn summer_and_winter_times() {
        assert_eq!(to_utc(t(1, 6, 9)).to_rfc3339(), "2025-01-06T09:30:00+00:00");
        assert_eq!(to_utc(t(7, 1, 9)).to_rfc3339(), "2025-07-01T08:30:00+00:00");
        assert_eq!(offset_text(t(3, 29, 12)), "+00:00");
        assert_eq!(offset_text(t(3, 30, 12)), "+01:00");
        assert_eq!(offset_text(t(10, 26, 0)), "+01:00");
        assert_eq!(offset_text(t(10, 26, 12)), "+00:00");
        assert_eq!(
            start_of_day_utc(NaiveDate::from_ymd_opt(2025, 6, 2).unwrap()).to_rfc3339(),
            "2025-06-01T23:00:00+00:00"
        );
    }
}
