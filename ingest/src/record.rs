//! Source records and what goes wrong with them. A [`Row`] reads typed fields
//! from one CSV line; every failure is a [`FieldError`] naming the field, the
//! problem and the rule, never the value (it may be an identifier). With the
//! record's [`Location`] it becomes a [`Rejection`], which the connector sends
//! to the dead-letter topic while the raw line stays in local quarantine.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use pathflow_schemas::codes::Code;
use pathflow_schemas::{NhsNumber, OdsCode, SourceName, uk_time};
use serde::Serialize;

/// Where a source record is: a file and line, or a bundle entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// File name (relative to the connector's directory) or request id.
    pub file: String,
    /// 1-based line number (the header is line 1), or bundle entry index.
    pub line: u64,
}

/// One field of one record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The column (or FHIR element) at fault; `(row)` for the record as a whole.
    pub field: String,
    /// What is wrong, in words that never repeat the value.
    pub problem: String,
    /// The rule the value breaks.
    pub rule: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: &str, problem: impl Into<String>, rule: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            problem: problem.into(),
            rule: rule.into(),
        }
    }
}

/// A record that produced no events: what the dead-letter topic receives.
/// It carries the location and the reason, and no identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The connector and feed.
    pub source: SourceName,
    /// Where the record is.
    #[serde(flatten)]
    pub location: Location,
    /// What is wrong.
    #[serde(flatten)]
    pub error: FieldError,
    /// When the connector rejected it.
    #[serde(serialize_with = "pathflow_schemas::uk_time::serialize_utc")]
    pub rejected_at: DateTime<Utc>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: field {}: {} (rule: {})",
            self.location.file,
            self.location.line,
            self.error.field,
            self.error.problem,
            self.error.rule
        )
    }
}

/// Column positions of a CSV file, by header name.
#[derive(Debug, Clone)]
pub struct Columns {
    index: HashMap<String, usize>,
    count: usize,
}

impl Columns {
    /// Reads the header; names are trimmed, lower-cased, and a UTF-8 BOM is ignored.
    /// Fails naming the first of `required` that is missing.
    pub fn new(header: &csv::StringRecord, required: &[&str]) -> Result<Self, FieldError> {
        let index: HashMap<String, usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase(),
                    i,
                )
            })
            .collect();
        if let Some(missing) = required.iter().find(|r| !index.contains_key(**r)) {
            return Err(FieldError::new(
                missing,
                "the header has no such column",
                format!("the header must name the columns {}", required.join(", ")),
            ));
        }
        Ok(Columns {
            index,
            count: header.len(),
        })
    }
}

/// One CSV record with typed accessors.
pub struct Row<'a> {
    columns: &'a Columns,
    record: &'a csv::StringRecord,
}

/// Parses a date `YYYY-MM-DD` (a time part after it is ignored).
fn parse_date(text: &str) -> Option<NaiveDate> {
    let head = text.get(..10)?;
    fixed_date(head.as_bytes()).or_else(|| NaiveDate::parse_from_str(head, "%Y-%m-%d").ok())
}

/// `YYYY-MM-DD` read digit by digit: the form every extract writes, millions
/// of times a file, where chrono's format-string parser was a measurable
/// share of the connector's time. Anything else is left to chrono.
fn fixed_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(n(0..4)? as i32, n(5..7)?, n(8..10)?)
}

/// `YYYY-MM-DDTHH:MM:SS` (or with a space), read as [`fixed_date`] is.
fn fixed_date_time(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if b.len() != 19 || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    fixed_date(&b[..10])?.and_hms_opt(n(11..13)?, n(14..16)?, n(17..19)?)
}

impl<'a> Row<'a> {
    /// Wraps `record`; fails when its field count differs from the header's.
    /// (Extra columns are welcome when the header names them; a row with a
    /// field too many has a stray separator that shifts every later field.)
    pub fn new(columns: &'a Columns, record: &'a csv::StringRecord) -> Result<Self, FieldError> {
        if record.len() != columns.count {
            return Err(FieldError::new(
                "(row)",
                format!(
                    "the row has {} fields; the header has {}",
                    record.len(),
                    columns.count
                ),
                "every row has the header's columns (check for an unquoted separator or a truncated line)",
            ));
        }
        Ok(Row { columns, record })
    }

    fn raw(&self, field: &str) -> &'a str {
        self.columns
            .index
            .get(field)
            .and_then(|&i| self.record.get(i))
            .map(str::trim)
            .unwrap_or("")
    }

    /// The field's text, or `None` when empty.
    pub fn optional(&self, field: &str) -> Option<&'a str> {
        Some(self.raw(field)).filter(|v| !v.is_empty())
    }

    /// The field's text; empty is an error.
    pub fn required(&self, field: &str) -> Result<&'a str, FieldError> {
        self.optional(field)
            .ok_or_else(|| FieldError::new(field, "is empty", "required"))
    }

    /// A required field that must be a run of `digits` digits (UBRNs and the like).
    pub fn digits(&self, field: &str, digits: usize) -> Result<&'a str, FieldError> {
        let v = self.required(field)?;
        if v.len() == digits && v.bytes().all(|b| b.is_ascii_digit()) {
            Ok(v)
        } else {
            Err(FieldError::new(
                field,
                format!("is not {digits} digits"),
                format!("{digits} digits"),
            ))
        }
    }

    /// A valid NHS number (Modulus 11).
    pub fn nhs_number(&self, field: &str) -> Result<NhsNumber, FieldError> {
        NhsNumber::parse(self.required(field)?).map_err(|e| {
            FieldError::new(
                field,
                e.to_string(),
                "a 10-digit NHS number with a valid Modulus 11 check digit",
            )
        })
    }

    /// An ODS organisation code.
    pub fn ods(&self, field: &str) -> Result<OdsCode, FieldError> {
        OdsCode::parse(self.required(field)?).map_err(|_| {
            FieldError::new(
                field,
                "is not an ODS code",
                "3 to 6 letters and digits with at least one letter",
            )
        })
    }

    /// A required code of type `T` (wire name, NHS code or label).
    pub fn code<T: Code>(&self, field: &str) -> Result<T, FieldError> {
        self.optional_code(field)?
            .ok_or_else(|| FieldError::new(field, "is empty", "required"))
    }

    /// An optional code of type `T`.
    pub fn optional_code<T: Code>(&self, field: &str) -> Result<Option<T>, FieldError> {
        match self.optional(field) {
            None => Ok(None),
            // The value is not quoted: a mis-mapped column could hold an identifier.
            // The raw line stays in the connector's quarantine for whoever fixes it.
            Some(v) => T::parse_text(v).map(Some).ok_or_else(|| {
                let known: Vec<&str> = T::all().iter().take(12).map(|c| c.nhs_code()).collect();
                FieldError::new(
                    field,
                    format!("is not a known {} code", T::KIND),
                    format!(
                        "one of {}{}",
                        known.join(", "),
                        if T::all().len() > 12 { ", …" } else { "" }
                    ),
                )
            }),
        }
    }

    /// A slot length in whole minutes, more than none and at most a day.
    pub fn minutes(&self, field: &str) -> Result<u16, FieldError> {
        self.required(field)?
            .parse::<u16>()
            .ok()
            .filter(|m| (1..=24 * 60).contains(m))
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    "is not a whole number of minutes from 1 to 1440",
                    "a whole number of minutes from 1 to 1440",
                )
            })
    }

    /// A `Y`/`N` flag (either case).
    pub fn yes_no(&self, field: &str) -> Result<bool, FieldError> {
        self.one_of(field, &[("Y", true), ("N", false)])
            .map_err(|_| FieldError::new(field, "is neither Y nor N", "Y or N"))
    }

    /// A required field that must be one of `known`'s words (any case), such
    /// as a source system's status. Like codes, the value is never quoted.
    pub fn one_of<T: Copy>(&self, field: &str, known: &[(&str, T)]) -> Result<T, FieldError> {
        let value = self.required(field)?;
        known
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(value))
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                let words: Vec<&str> = known.iter().map(|&(w, _)| w).collect();
                FieldError::new(
                    field,
                    "is not a known status",
                    format!("one of {}", words.join(", ")),
                )
            })
    }

    /// A required date `YYYY-MM-DD`.
    pub fn date(&self, field: &str) -> Result<NaiveDate, FieldError> {
        self.optional_date(field)?
            .ok_or_else(|| FieldError::new(field, "is empty", "required"))
    }

    /// An optional date `YYYY-MM-DD`.
    pub fn optional_date(&self, field: &str) -> Result<Option<NaiveDate>, FieldError> {
        match self.optional(field) {
            None => Ok(None),
            Some(v) => parse_date(v).map(Some).ok_or_else(|| {
                FieldError::new(
                    field,
                    "is not a calendar date",
                    "a date YYYY-MM-DD that exists",
                )
            }),
        }
    }

    /// An optional UK local date-time `YYYY-MM-DDTHH:MM:SS` (or with a space), as UTC.
    /// An RFC 3339 instant with an explicit offset or `Z` (as FHIR writes them)
    /// is taken as the instant it names.
    pub fn optional_local_time(&self, field: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
        match self.optional(field) {
            None => Ok(None),
            Some(v) => {
                let parsed = fixed_date_time(v)
                    .ok_or(())
                    .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
                    .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S"))
                    .map(uk_time::to_utc)
                    .or_else(|_| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)));
                parsed.map(Some).map_err(|_| {
                    FieldError::new(
                        field,
                        "is not a date-time that exists",
                        "YYYY-MM-DDTHH:MM:SS in UK local time",
                    )
                })
            }
        }
    }

    /// A required UK local date-time, as UTC.
    pub fn local_time(&self, field: &str) -> Result<DateTime<Utc>, FieldError> {
        self.optional_local_time(field)?
            .ok_or_else(|| FieldError::new(field, "is empty", "required"))
    }
}

/// Checks that `later` (when present) is not before `earlier` (dates or date-times).
pub fn not_before<T: PartialOrd>(
    later_field: &str,
    later: Option<T>,
    earlier_field: &str,
    earlier: T,
) -> Result<(), FieldError> {
    match later {
        Some(l) if l < earlier => Err(FieldError::new(
            later_field,
            format!("is before {earlier_field}"),
            format!("{later_field} is on or after {earlier_field}"),
        )),
        _ => Ok(()),
    }
}

/// Checks that `earlier` is not after `later`, blaming the earlier field.
pub fn not_after<T: PartialOrd>(
    earlier_field: &str,
    earlier: T,
    later_field: &str,
    later: T,
) -> Result<(), FieldError> {
    if earlier > later {
        return Err(FieldError::new(
            earlier_field,
            format!("is after {later_field}"),
            format!("{earlier_field} is on or before {later_field}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathflow_schemas::codes::{Priority, TreatmentFunction};

    fn row_of(header: &[&str], fields: &[&str], f: impl FnOnce(Row<'_>)) {
        let columns = Columns::new(&csv::StringRecord::from(header.to_vec()), &[]).unwrap();
        let record = csv::StringRecord::from(fields.to_vec());
        f(Row::new(&columns, &record).unwrap());
    }

    #[test]
    fn typed_fields_and_errors_that_never_echo_identifiers() {
        row_of(
            &["\u{feff}NHS_Number", "tfc", "priority", "d", "t"],
            &[
                "9990000019",
                "110",
                "Two Week Wait",
                "2025-02-30",
                "2025-07-01T09:00:00",
            ],
            |row| {
                let e = row.nhs_number("nhs_number").unwrap_err();
                assert_eq!(e.field, "nhs_number");
                assert!(!format!("{e:?}").contains("9990000019"), "{e:?}");
                assert_eq!(
                    row.code::<TreatmentFunction>("tfc").unwrap(),
                    TreatmentFunction::TraumaAndOrthopaedics
                );
                assert_eq!(
                    row.code::<Priority>("priority").unwrap(),
                    Priority::TwoWeekWait
                );
                assert_eq!(
                    row.date("d").unwrap_err().rule,
                    "a date YYYY-MM-DD that exists"
                );
                assert_eq!(
                    row.local_time("t").unwrap().to_rfc3339(),
                    "2025-07-01T08:00:00+00:00"
                );
                assert_eq!(row.required("missing").unwrap_err().problem, "is empty");
            },
        );
    }

    #[test]
    fn instants_with_an_offset_are_taken_as_they_are() {
        row_of(
            &["bst", "z", "gmt", "local", "none", "bad"],
            &[
                "2025-07-01T09:00:00+01:00",
                "2025-07-01T08:00:00Z",
                "2025-01-06T09:05:07+00:00",
                "2025-07-01T09:00:00",
                "",
                "2025-07-01T09:00:00+25:00",
            ],
            |row| {
                let utc = |f: &str| row.local_time(f).unwrap().to_rfc3339();
                assert_eq!(utc("bst"), "2025-07-01T08:00:00+00:00");
                assert_eq!(utc("z"), "2025-07-01T08:00:00+00:00");
                assert_eq!(utc("local"), "2025-07-01T08:00:00+00:00");
                assert_eq!(utc("gmt"), "2025-01-06T09:05:07+00:00");
                assert_eq!(row.optional_local_time("none").unwrap(), None);
                let e = row.local_time("bad").unwrap_err();
                assert_eq!(e.field, "bad");
                assert_eq!(e.problem, "is not a date-time that exists");
            },
        );
    }

    #[test]
    fn the_fixed_forms_read_as_chrono_reads_them() {
        for text in [
            "2025-04-07",
            "2024-02-29",
            "2025-02-29",
            "2025-13-01",
            "2025-4-07",
            "20250407",
            "2025-04-07T09:05:07",
            "2025-04-07 23:59:59",
            "2025-04-07T24:00:00",
            "2025-04-07T09:60:00",
            "2025-04-07X09:05:07",
            "+2025-04-07",
        ] {
            let chrono_date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok();
            if text.len() == 10 {
                assert_eq!(fixed_date(text.as_bytes()), chrono_date, "{text}");
            }
            let chrono_time = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
                .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
                .ok();
            if let Some(t) = fixed_date_time(text) {
                assert_eq!(Some(t), chrono_time, "{text}");
            } else if text.len() == 19 && text.as_bytes()[10] != b'X' {
                assert_eq!(chrono_time, None, "{text}");
            }
        }
    }

    #[test]
    fn unknown_codes_list_what_is_allowed() {
        row_of(&["tfc"], &["999"], |row| {
            let e = row.code::<TreatmentFunction>("tfc").unwrap_err();
            assert!(
                e.problem.contains("not a known TreatmentFunction code"),
                "{e:?}"
            );
            assert!(e.rule.starts_with("one of 100, 101"), "{e:?}");
        });
    }

    #[test]
    fn short_rows_and_missing_columns_are_reported() {
        let columns = Columns::new(&csv::StringRecord::from(vec!["a", "b", "c"]), &["a"]).unwrap();
        for fields in [vec!["1", "2"], vec!["1", "2", "3", "4"]] {
            let e = Row::new(&columns, &csv::StringRecord::from(fields))
                .err()
                .unwrap();
            assert_eq!(e.field, "(row)");
        }
        let e = Columns::new(&csv::StringRecord::from(vec!["a"]), &["a", "ubrn"]).unwrap_err();
        assert_eq!(e.field, "ubrn");
    }
}
