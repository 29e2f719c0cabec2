//! The only patient attributes an event may carry (DESIGN.md, principle 2):
//! a pseudonymous id, a 5-year age band, sex, and a deprivation decile.
//! Dates of birth and postcodes are turned into these at the connector.

use std::borrow::Cow;
use std::fmt;

use chrono::{Datelike, NaiveDate};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::codes::Sex;
use crate::ids::PseudoId;

/// What an event may say about a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Patient {
    /// Keyed pseudonym of the NHS number.
    pub id: PseudoId,
    /// Age at the event date, in 5-year bands.
    pub age_band: AgeBand,
    /// Person stated gender.
    pub sex: Sex,
    /// Index of Multiple Deprivation decile of the home postcode (1 = most deprived), when known.
    pub deprivation_decile: Option<Decile>,
}

/// A 5-year age band `0-4` … `85-89`, then `90+` (older ages are pooled so
/// that very old patients are not singled out).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct AgeBand(u8);

/// The top band; everyone this age or older shares it.
const TOP_BAND: u8 = 90;

impl AgeBand {
    /// The band for an age in whole years.
    pub fn from_age(years: u32) -> Self {
        AgeBand((years.min(u32::from(TOP_BAND)) / 5 * 5) as u8)
    }

    /// The band of someone born on `dob` on `date`, or `None` if `date` is before birth.
    pub fn at(dob: NaiveDate, date: NaiveDate) -> Option<Self> {
        let mut years = date.year() - dob.year();
        if (date.month(), date.day()) < (dob.month(), dob.day()) {
            years -= 1;
        }
        u32::try_from(years).ok().map(AgeBand::from_age)
    }

    /// The youngest age in the band.
    pub fn lower(self) -> u8 {
        self.0
    }
}

impl fmt::Display for AgeBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= TOP_BAND {
            write!(f, "{TOP_BAND}+")
        } else {
            write!(f, "{}-{}", self.0, self.0 + 4)
        }
    }
}

impl fmt::Debug for AgeBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeBand({self})")
    }
}

/// Text that is not an age band.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a 5-year age band such as \"35-39\" or \"90+\"; got {0:?}")]
pub struct AgeBandError(String);

impl TryFrom<String> for AgeBand {
    type Error = AgeBandError;
    fn try_from(s: String) -> Result<Self, AgeBandError> {
        let band = s
            .split_once('-')
            .and_then(|(lo, _)| lo.parse::<u8>().ok())
            .or_else(|| s.strip_suffix('+').and_then(|lo| lo.parse::<u8>().ok()))
            .map(|lo| AgeBand::from_age(u32::from(lo)));
        match band {
            Some(b) if b.to_string() == s => Ok(b),
            _ => Err(AgeBandError(s)),
        }
    }
}

// Written through `Display`, without the `String` that
// `#[serde(into = "String")]` would allocate for every value serialised.
impl Serialize for AgeBand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<AgeBand> for String {
    fn from(b: AgeBand) -> String {
        b.to_string()
    }
}

impl JsonSchema for AgeBand {
    fn schema_name() -> Cow<'static, str> {
        "AgeBand".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]{1,2}-[0-9]{1,2}|90\\+)$",
            "description": "Age at the event date in 5-year bands: 0-4, 5-9, ..., 85-89, 90+.",
        })
    }
}

/// An Index of Multiple Deprivation decile, 1 (most deprived) to 10 (least).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Decile(u8);

/// A number outside 1 to 10.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a deprivation decile is a whole number from 1 (most deprived) to 10; got {0}")]
pub struct DecileError(u8);

impl Decile {
    /// The decile `n`, if it is 1 to 10.
    pub fn new(n: u8) -> Result<Self, DecileError> {
        if (1..=10).contains(&n) {
            Ok(Decile(n))
        } else {
            Err(DecileError(n))
        }
    }

    /// The decile as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Decile {
    type Error = DecileError;
    fn try_from(n: u8) -> Result<Self, DecileError> {
        Decile::new(n)
    }
}

impl From<Decile> for u8 {
    fn from(d: Decile) -> u8 {
        d.0
    }
}

impl JsonSchema for Decile {
    fn schema_name() -> Cow<'static, str> {
        "Decile".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": 1,
            "maximum": 10,
            "description": "Index of Multiple Deprivation decile: 1 most deprived, 10 least.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_from_dates_of_birth() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(
            AgeBand::at(d(1980, 6, 15), d(2025, 6, 14))
                .unwrap()
                .to_string(),
            "40-44"
        );
        assert_eq!(
            AgeBand::at(d(1980, 6, 15), d(2025, 6, 15))
                .unwrap()
                .to_string(),
            "45-49"
        );
        assert_eq!(
            AgeBand::at(d(1920, 1, 1), d(2025, 1, 1))
                .unwrap()
                .to_string(),
            "90+"
        );
        assert_eq!(AgeBand::at(d(2025, 1, 2), d(2025, 1, 1)), None);
    }

    #[test]
    fn band_text_round_trips_and_rejects_misaligned_bands() {
        for age in 0..110 {
            let b = AgeBand::from_age(age);
            assert_eq!(AgeBand::try_from(b.to_string()).unwrap(), b);
        }
        assert!(AgeBand::try_from("36-40".to_string()).is_err());
        assert!(AgeBand::try_from("old".to_string()).is_err());
    }

    #[test]
    fn deciles_are_one_to_ten() {
        assert!(Decile::new(0).is_err());
        assert!(Decile::new(11).is_err());
        assert_eq!(
            serde_json::to_string(&Decile::new(3).unwrap()).unwrap(),
            "3"
        );
        assert!(serde_json::from_str::<Decile>("12").is_err());
    }
}
