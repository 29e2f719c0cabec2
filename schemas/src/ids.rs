//! Validated string identifiers that may appear on events: pseudonyms, event
//! ids, ODS organisation codes, source and key names. Each checks its form on
//! the way in (including deserialisation), so a raw identifier cannot be
//! smuggled through one of them: none accepts a bare run of digits.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A value did not have the form its type requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be {rule}; got {shown}")]
pub struct IdError {
    kind: &'static str,
    rule: &'static str,
    shown: String,
}

/// Defines a validated string newtype with serde, JSON Schema and `FromStr`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, rule: $rule:literal, pattern: $pattern:literal,
     normalise: $norm:expr, valid: $valid:expr, echo: $echo:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        // Written as the string it holds. (Not `#[serde(into = "String")]`,
        // which clones the value, an allocation per id per event serialised.)
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Checks `text` and wraps it.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let norm: fn(&str) -> String = $norm;
                let value = norm(text);
                let valid: fn(&str) -> bool = $valid;
                if valid(&value) {
                    Ok(Self(value))
                } else {
                    // Only echo the input for kinds that cannot hold an identifier.
                    let shown = if $echo { format!("{text:?}") } else { "a value of another form".to_string() };
                    Err(IdError { kind: $kind, rule: $rule, shown })
                }
            }

            /// The text form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": concat!($kind, ": ", $rule, "."),
                })
            }
        }
    };
}

fn is_lower_hex_32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && s.len() <= 64
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b':')
        })
}

fn is_ods(s: &str) -> bool {
    (3..=6).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_uppercase())
}

string_id!(
    /// A keyed pseudonym (HMAC-SHA256 under the connector's secret, first 128 bits,
    /// lowercase hex). Stands for a patient, pathway, appointment, slot, advice
    /// request or follow-up without revealing the source identifier.
    PseudoId, "a pseudonymous id", rule: "32 lowercase hexadecimal characters",
    pattern: "^[0-9a-f]{32}$", normalise: |s| s.trim().to_string(), valid: is_lower_hex_32, echo: false
);

string_id!(
    /// A deterministic event id: the same source record always gives the same id,
    /// so a re-sent file creates no duplicates downstream.
    EventId, "an event id", rule: "32 lowercase hexadecimal characters",
    pattern: "^[0-9a-f]{32}$", normalise: |s| s.trim().to_string(), valid: is_lower_hex_32, echo: false
);

string_id!(
    /// An Organisation Data Service code: a practice (`A81001`), a trust (`RX1`),
    /// a site, PCN or ICB. Upper-cased on the way in.
    OdsCode, "an ODS code", rule: "3 to 6 letters and digits with at least one letter",
    pattern: "^(?=.*[A-Z])[A-Z0-9]{3,6}$", normalise: |s| s.trim().to_ascii_uppercase(), valid: is_ods, echo: true
);

string_id!(
    /// The connector and feed an event came from, e.g. `pas:rx1:referrals`.
    SourceName, "a source name", rule: "a lowercase letter then up to 63 of a-z 0-9 _ - . :",
    pattern: "^[a-z][a-z0-9_.:-]{0,63}$", normalise: |s| s.trim().to_string(), valid: is_name, echo: true
);

string_id!(
    /// Names the pseudonymisation key an event's pseudonyms were made with, so
    /// keys can be rotated (never the key itself).
    KeyId, "a key id", rule: "a lowercase letter then up to 63 of a-z 0-9 _ - . :",
    pattern: "^[a-z][a-z0-9_.:-]{0,63}$", normalise: |s| s.trim().to_string(), valid: is_name, echo: true
);

impl PseudoId {
    /// Wraps the first 16 bytes of a keyed digest as a pseudonym.
    pub fn from_digest(bytes: &[u8; 16]) -> Self {
        Self(hex(bytes))
    }
}

impl EventId {
    /// Wraps 16 bytes of a deterministic digest as an event id.
    pub fn from_digest(bytes: &[u8; 16]) -> Self {
        Self(hex(bytes))
    }
}

fn hex(bytes: &[u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_normalise_and_reject_digits_only() {
        assert_eq!(OdsCode::parse(" a81001 ").unwrap().as_str(), "A81001");
        assert!(OdsCode::parse("RX1").is_ok());
        let err = OdsCode::parse("9990000018").unwrap_err().to_string();
        assert!(err.contains("ODS code"), "{err}");
        assert!(OdsCode::parse("123456").is_err());
    }

    #[test]
    fn pseudo_ids_never_echo_rejected_input() {
        let err = PseudoId::parse("9990000018").unwrap_err().to_string();
        assert!(!err.contains("9990000018"), "{err}");
        assert!(err.contains("32 lowercase hexadecimal"), "{err}");
        let p = PseudoId::from_digest(&[0xab; 16]);
        assert_eq!(p.as_str(), "ab".repeat(16));
    }

    #[test]
    fn deserialisation_validates() {
        let ok: Result<OdsCode, _> = serde_json::from_str("\"Y01234\"");
        assert!(ok.is_ok());
        let bad: Result<PseudoId, _> = serde_json::from_str("\"not-hex\"");
        assert!(bad.is_err());
        let bad: Result<SourceName, _> = serde_json::from_str("\"9990000018\"");
        assert!(bad.is_err());
    }
}
