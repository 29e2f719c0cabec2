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

/// Serialises a UTC instant exactly as chrono's `Serialize` does (RFC 3339,
/// `Z`, fractional seconds only when there are some, in 3, 6 or 9 digits),
/// but without going through `core::fmt`: it is written for every event, and
/// was a measurable share of the connector's time. Use with
/// `#[serde(serialize_with = "crate::uk_time::serialize_utc")]`.
pub fn serialize_utc<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        // Years chrono writes with a sign, and leap seconds: as chrono does.
        return serde::Serialize::serialize(t, s);
    }
    /// Writes `value` as `width` decimal digits at `buf[at..]`, returning the end.
    fn digits(buf: &mut [u8; 30], at: usize, value: u32, width: usize) -> usize {
        let mut v = value;
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at + width
    }
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    digits(&mut buf, 0, year as u32, 4);
    digits(&mut buf, 5, t.month(), 2);
    digits(&mut buf, 8, t.day(), 2);
    digits(&mut buf, 11, t.hour(), 2);
    digits(&mut buf, 14, t.minute(), 2);
    let mut n = digits(&mut buf, 17, t.second(), 2);
    if nanos > 0 {
        buf[n] = b'.';
        n = if nanos % 1_000_000 == 0 {
            digits(&mut buf, n + 1, nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            digits(&mut buf, n + 1, nanos / 1_000, 6)
        } else {
            digits(&mut buf, n + 1, nanos, 9)
        };
    }
    buf[n] = b'Z';
    n += 1;
    // Only ASCII digits and separators were written.
    s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

#[cfg(test)]
mod serialize_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn instants_are_written_as_chrono_writes_them() {
        let base = Utc.with_ymd_and_hms(2025, 4, 7, 9, 5, 3).unwrap();
        for t in [
            base,
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            base + chrono::Duration::milliseconds(120),
            base + chrono::Duration::microseconds(1),
            base + chrono::Duration::nanoseconds(7),
            base + chrono::Duration::nanoseconds(123_456_789),
            Utc.with_ymd_and_hms(12025, 1, 1, 0, 0, 0).unwrap(),
        ] {
            #[derive(serde::Serialize)]
            struct Wrapped(#[serde(serialize_with = "serialize_utc")] DateTime<Utc>);
            assert_eq!(
                serde_json::to_string(&Wrapped(t)).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
    }
}
