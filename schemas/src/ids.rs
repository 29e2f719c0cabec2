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

/// How an id holds its text.
trait Storage: Sized {
    /// Holds `text`, already checked; `None` if it cannot.
    fn store(text: String) -> Option<Self>;
    fn text(&self) -> &str;
    fn into_string(self) -> String;
}

impl Storage for String {
    fn store(text: String) -> Option<Self> {
        Some(text)
    }
    fn text(&self) -> &str {
        self
    }
    fn into_string(self) -> String {
        self
    }
}

/// ASCII text of at most `N` bytes held in place. The transform keeps
/// millions of ids (every fact of every entity names its event, every
/// entity its pseudonym): in place, an id is one copy of `N + 1` bytes,
/// where a `String` is 24 bytes plus an allocation of its own. Ordered as
/// its text: the zero padding sorts before every character an id may hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Inline<const N: usize> {
    bytes: [u8; N],
    len: u8,
}

impl<const N: usize> Inline<N> {
    fn from_ascii(text: &[u8]) -> Option<Self> {
        if text.len() > N || !text.is_ascii() || text.contains(&0) {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..text.len()].copy_from_slice(text);
        Some(Inline {
            bytes,
            len: u8::try_from(text.len()).ok()?,
        })
    }
}

impl<const N: usize> Storage for Inline<N> {
    fn store(text: String) -> Option<Self> {
        Self::from_ascii(text.as_bytes())
    }
    fn text(&self) -> &str {
        // Only ever filled from ASCII, which is UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
    fn into_string(self) -> String {
        self.text().to_string()
    }
}

/// Defines a validated string newtype with serde, JSON Schema and `FromStr`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, rule: $rule:literal, pattern: $pattern:literal,
     normalise: $norm:expr, valid: $valid:expr, echo: $echo:literal, storage: $storage:ty) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name($storage);

        // Written as the string it holds. (Not `#[serde(into = "String")]`,
        // which clones the value, an allocation per id per event serialised.)
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.0.text())
            }
        }

        impl $name {
            /// Checks `text` and wraps it.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let norm: fn(&str) -> String = $norm;
                let value = norm(text);
                let valid: fn(&str) -> bool = $valid;
                let stored = if valid(&value) { <$storage as Storage>::store(value) } else { None };
                if let Some(stored) = stored {
                    Ok(Self(stored))
                } else {
                    // Only echo the input for kinds that cannot hold an identifier.
                    let shown = if $echo { format!("{text:?}") } else { "a value of another form".to_string() };
                    Err(IdError { kind: $kind, rule: $rule, shown })
                }
            }

            /// The text form.
            pub fn as_str(&self) -> &str {
                self.0.text()
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
                v.0.into_string()
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
                f.write_str(self.0.text())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0.text())
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
    pattern: "^[0-9a-f]{32}$", normalise: |s| s.trim().to_string(), valid: is_lower_hex_32, echo: false,
    storage: Inline<32>
);

string_id!(
    /// A deterministic event id: the same source record always gives the same id,
    /// so a re-sent file creates no duplicates downstream.
    EventId, "an event id", rule: "32 lowercase hexadecimal characters",
    pattern: "^[0-9a-f]{32}$", normalise: |s| s.trim().to_string(), valid: is_lower_hex_32, echo: false,
    storage: Inline<32>
);

string_id!(
    /// An Organisation Data Service code: a practice (`A81001`), a trust (`RX1`),
    /// a site, PCN or ICB. Upper-cased on the way in.
    OdsCode, "an ODS code", rule: "3 to 6 letters and digits with at least one letter",
    pattern: "^(?=.*[A-Z])[A-Z0-9]{3,6}$", normalise: |s| s.trim().to_ascii_uppercase(), valid: is_ods, echo: true,
    storage: Inline<6>
);

string_id!(
    /// The connector and feed an event came from, e.g. `pas:rx1:referrals`.
    SourceName, "a source name", rule: "a lowercase letter then up to 63 of a-z 0-9 _ - . :",
    pattern: "^[a-z][a-z0-9_.:-]{0,63}$", normalise: |s| s.trim().to_string(), valid: is_name, echo: true,
    storage: String
);

string_id!(
    /// Names the pseudonymisation key an event's pseudonyms were made with, so
    /// keys can be rotated (never the key itself).
    KeyId, "a key id", rule: "a lowercase letter then up to 63 of a-z 0-9 _ - . :",
    pattern: "^[a-z][a-z0-9_.:-]{0,63}$", normalise: |s| s.trim().to_string(), valid: is_name, echo: true,
    storage: String
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

/// Lowercase hex of 16 bytes, in place.
fn hex(bytes: &[u8; 16]) -> Inline<32> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 32];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    Inline {
        bytes: out,
        len: 32,
    }
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
    fn ids_held_in_place_order_and_print_as_their_text() {
        let codes = ["RX10", "RX1", "Y00001", "A81001", "RX1A", "Y0000"];
        let mut by_id: Vec<OdsCode> = codes.iter().map(|c| OdsCode::parse(c).unwrap()).collect();
        by_id.sort();
        let mut by_text = codes.to_vec();
        by_text.sort();
        let sorted: Vec<&str> = by_id.iter().map(OdsCode::as_str).collect();
        assert_eq!(sorted, by_text);
        let a = PseudoId::from_digest(&[0x0f; 16]);
        let b = PseudoId::parse(&"f0".repeat(16)).unwrap();
        assert!(a < b && a.as_str() < b.as_str());
        assert_eq!(format!("{a}"), "0f".repeat(16));
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            format!("\"{}\"", "f0".repeat(16))
        );
        assert_eq!(String::from(b.clone()), "f0".repeat(16));
        assert!(
            std::mem::size_of::<PseudoId>() <= 33,
            "{}",
            std::mem::size_of::<PseudoId>()
        );
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
