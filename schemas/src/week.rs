//! ISO 8601 weeks (Monday to Sunday), the grain of every gold table. A week
//! belongs to the year that holds its Thursday, so 2024-12-30 is `2025-W01`.

use std::borrow::Cow;
use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, Weekday};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// An ISO week, written `2025-W07`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Week {
    year: i32,
    week: u32,
}

/// A string that is not an ISO week.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an ISO week such as 2025-W07 (the year has {max} weeks); got {input:?}")]
pub struct WeekError {
    input: String,
    max: u32,
}

impl Week {
    /// The week that contains `date`.
    pub fn of(date: NaiveDate) -> Self {
        let iso = date.iso_week();
        Week {
            year: iso.year(),
            week: iso.week(),
        }
    }

    /// The week `week` of ISO year `year`, if that year has such a week.
    pub fn new(year: i32, week: u32) -> Option<Self> {
        NaiveDate::from_isoywd_opt(year, week, Weekday::Mon).map(|_| Week { year, week })
    }

    /// ISO year (may differ from the calendar year of the week's Monday).
    pub fn year(self) -> i32 {
        self.year
    }

    /// Week number, 1 to 52 or 53.
    pub fn number(self) -> u32 {
        self.week
    }

    /// The Monday that starts the week.
    pub fn monday(self) -> NaiveDate {
        NaiveDate::from_isoywd_opt(self.year, self.week, Weekday::Mon)
            .expect("a Week is only built for existing weeks")
    }

    /// The Sunday that ends the week (the "week end" of waiting-list snapshots).
    pub fn sunday(self) -> NaiveDate {
        self.monday() + Duration::days(6)
    }

    /// The week `n` weeks later (or earlier, for negative `n`).
    pub fn plus(self, n: i64) -> Self {
        Week::of(self.monday() + Duration::weeks(n))
    }

    /// Parses `2025-W07` (also `2025W07`).
    pub fn parse(text: &str) -> Result<Self, WeekError> {
        let t = text.trim();
        let parsed = t
            .split_once("-W")
            .or_else(|| t.split_once('W'))
            .and_then(|(y, w)| Some((y.parse::<i32>().ok()?, w.parse::<u32>().ok()?)));
        let max = |y: i32| Week::of(NaiveDate::from_ymd_opt(y, 12, 28).unwrap_or_default()).week;
        match parsed {
            Some((y, w)) => Week::new(y, w).ok_or(WeekError {
                input: text.to_string(),
                max: max(y),
            }),
            None => Err(WeekError {
                input: text.to_string(),
                max: 52,
            }),
        }
    }
}

impl fmt::Display for Week {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-W{:02}", self.year, self.week)
    }
}

impl fmt::Debug for Week {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Week({self})")
    }
}

impl TryFrom<String> for Week {
    type Error = WeekError;
    fn try_from(s: String) -> Result<Self, WeekError> {
        Week::parse(&s)
    }
}

// Written through `Display`, without the `String` that
// `#[serde(into = "String")]` would allocate for every value serialised.
impl Serialize for Week {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<Week> for String {
    fn from(w: Week) -> String {
        w.to_string()
    }
}

impl JsonSchema for Week {
    fn schema_name() -> Cow<'static, str> {
        "Week".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{4}-W[0-9]{2}$",
            "description": "An ISO 8601 week, Monday to Sunday, e.g. 2025-W07.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn year_boundaries_follow_iso() {
        assert_eq!(Week::of(d(2024, 12, 30)).to_string(), "2025-W01");
        assert_eq!(Week::of(d(2021, 1, 3)).to_string(), "2020-W53");
        assert_eq!(Week::parse("2020-W53").unwrap().monday(), d(2020, 12, 28));
        assert_eq!(Week::parse("2025-W07").unwrap().sunday(), d(2025, 2, 16));
    }

    #[test]
    fn bad_weeks_say_what_is_expected() {
        let e = Week::parse("2025-W53").unwrap_err().to_string();
        assert!(e.contains("2025-W07") && e.contains("52 weeks"), "{e}");
        assert!(Week::parse("last week").is_err());
    }

    proptest! {
        #[test]
        fn every_day_lies_in_its_week_and_text_round_trips(days in 0i64..40_000) {
            let date = d(1970, 1, 1) + Duration::days(days);
            let w = Week::of(date);
            prop_assert!(w.monday() <= date && date <= w.sunday());
            prop_assert_eq!(Week::parse(&w.to_string()).unwrap(), w);
            prop_assert_eq!(w.plus(1).monday(), w.monday() + Duration::days(7));
        }
    }
}
