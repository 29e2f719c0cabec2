//! Pseudonymisation at the connector: source identifiers (NHS numbers, hospital
//! numbers, UBRNs) become keyed pseudonyms, and source records deterministic
//! event ids, before anything reaches Kafka. Connectors call it after parsing,
//! beside the opt-out check of [`crate::reference`].
//!
//! # The scheme
//!
//! One secret key per deployment, named by a [`KeyId`] that events carry so
//! keys can be rotated. With `‖` for concatenation and `0x1f` (the ASCII unit
//! separator) between fields:
//!
//! - pseudonym = first 16 bytes of HMAC-SHA256(key, `kind ‖ 0x1f ‖ scope ‖ 0x1f ‖ raw`),
//!   where `kind` is an [`IdKind`] label;
//! - event id = first 16 bytes of HMAC-SHA256(key, `"event" ‖ 0x1f ‖ source ‖ 0x1f ‖ record ‖ 0x1f ‖ event type`).
//!
//! The `kind_*_pins_the_scheme` tests break if any of this changes, because a
//! change silently splits every patient and pathway in the log in two.

use std::env::VarError;
use std::fmt;
use std::path::PathBuf;

use hmac::{Hmac, KeyInit, Mac};
use pathflow_schemas::{EventId, EventType, KeyId, NhsNumber, PseudoId, SourceName};
use serde::Deserialize;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// 256 bits: the HMAC-SHA256 output size; a shorter key weakens every pseudonym.
const MIN_KEY_BYTES: usize = 32;

/// Below this many characters a hex-looking key is taken as raw text, so a
/// short passphrase made only of the letters a–f is not halved by decoding.
const MIN_HEX_CHARS: usize = 2 * MIN_KEY_BYTES;

/// Between the fields of an HMAC message, so `("ab", "c")` and `("a", "bc")` differ.
const SEPARATOR: &[u8] = &[0x1f];

/// Domain label of event ids; not an [`IdKind`] label, so an event id can
/// never equal a pseudonym.
const EVENT_LABEL: &str = "event";

/// Where the connector reads its pseudonymisation key from.
///
/// There is deliberately no variant holding the key inline: config files are
/// committed, copied and logged, secrets are not. In TOML:
/// `key = { file = "/run/secrets/pathflow-key" }` or
/// `key = { env = "PATHFLOW_PSEUDO_KEY" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A file holding the key, such as a mounted Kubernetes or Docker secret.
    File(PathBuf),
    /// The name of an environment variable holding the key.
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Why the pseudonymisation key could not be loaded. Messages name where the
/// key was looked for and what to do, and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is missing or unreadable.
    #[error(
        "the pseudonymisation key file {} cannot be read ({error}); create it with at least 32 random bytes, e.g. `openssl rand -hex 32 > {}`, readable only by the connector",
        path.display(),
        path.display()
    )]
    FileUnreadable {
        /// The file named in the config.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        error: std::io::Error,
    },
    /// The environment variable is not set.
    #[error(
        "environment variable {var} is not set; set it to at least 32 random bytes, e.g. `{var}=$(openssl rand -hex 32)`, or read the key from a file with `key = {{ file = \"/run/secrets/pathflow-key\" }}`"
    )]
    EnvNotSet {
        /// The variable named in the config.
        var: String,
    },
    /// The environment variable holds bytes that are not UTF-8.
    #[error(
        "environment variable {var} is not valid UTF-8; put the key in it as hex, e.g. `{var}=$(openssl rand -hex 32)`"
    )]
    EnvNotUnicode {
        /// The variable named in the config.
        var: String,
    },
    /// The key is empty once trailing whitespace is removed.
    #[error(
        "the pseudonymisation key in {origin} is empty; put at least 32 random bytes there, e.g. the output of `openssl rand -hex 32`"
    )]
    Empty {
        /// Where the key was read from.
        origin: KeySource,
    },
    /// The key is shorter than 32 bytes after decoding.
    #[error(
        "the pseudonymisation key in {origin} is {len} bytes; it must be at least 32 (64 hex digits, e.g. from `openssl rand -hex 32`)"
    )]
    TooShort {
        /// Where the key was read from.
        origin: KeySource,
        /// Its length in bytes after decoding.
        len: usize,
    },
    /// The key is 64 or more hex digits but an odd number of them.
    #[error(
        "the pseudonymisation key in {origin} looks like hex but has an odd number of digits ({digits}); a hex key has two digits per byte, so check it was copied whole"
    )]
    OddHex {
        /// Where the key was read from.
        origin: KeySource,
        /// How many hex digits it has.
        digits: usize,
    },
    /// HMAC-SHA256 refused the key. The current implementation accepts keys of
    /// any length, so this only surfaces a change in that library as an error
    /// rather than a panic.
    #[error(
        "HMAC-SHA256 refused the pseudonymisation key in {origin}; generate a new one with `openssl rand -hex 32`"
    )]
    Rejected {
        /// Where the key was read from.
        origin: KeySource,
    },
}

/// What a pseudonym stands for. Its label is hashed in, so one raw value used
/// as two kinds of identifier gives two unrelated pseudonyms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// A patient (from an NHS number, or a hospital number scoped to its trust).
    Patient,
    /// A referral-to-treatment pathway (e.g. from a UBRN or a PAS pathway id).
    Pathway,
    /// An appointment, GP or outpatient.
    Appointment,
    /// A bookable slot (capacity).
    Slot,
    /// An Advice & Guidance request.
    Advice,
    /// A follow-up.
    Followup,
}

impl IdKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [IdKind; 6] = [
        IdKind::Patient,
        IdKind::Pathway,
        IdKind::Appointment,
        IdKind::Slot,
        IdKind::Advice,
        IdKind::Followup,
    ];

    /// The domain label hashed into the pseudonym. Stable: changing one
    /// re-keys every pseudonym of that kind.
    pub fn label(self) -> &'static str {
        match self {
            IdKind::Patient => "patient",
            IdKind::Pathway => "pathway",
            IdKind::Appointment => "appointment",
            IdKind::Slot => "slot",
            IdKind::Advice => "advice",
            IdKind::Followup => "followup",
        }
    }
}

/// Makes keyed pseudonyms and event ids under one secret key.
///
/// Holds the key already absorbed into HMAC state (so each pseudonym costs no
/// re-keying) and the key's id. `Debug` shows only the key id.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: HmacSha256,
    key_id: KeyId,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    /// Reads the key from `source`; there is never a default key.
    ///
    /// Trailing whitespace (such as the newline `echo` or `openssl` writes) is
    /// not part of the key. An even number of at least 64 hex digits (either
    /// case) is decoded to bytes; anything else is used as its raw bytes (a
    /// file need not be UTF-8). The result must be at least 32 bytes.
    pub fn load(source: &KeySource, key_id: KeyId) -> Result<Self, KeyError> {
        let text = match source {
            KeySource::File(path) => {
                std::fs::read(path).map_err(|error| KeyError::FileUnreadable {
                    path: path.clone(),
                    error,
                })?
            }
            KeySource::Env(var) => match std::env::var(var) {
                Ok(value) => value.into_bytes(),
                Err(VarError::NotPresent) => return Err(KeyError::EnvNotSet { var: var.clone() }),
                Err(VarError::NotUnicode(_)) => {
                    return Err(KeyError::EnvNotUnicode { var: var.clone() });
                }
            },
        };
        let key = decode_key(text.trim_ascii_end(), source)?;
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| KeyError::Rejected {
            origin: source.clone(),
        })?;
        Ok(Self { mac, key_id })
    }

    /// A pseudonymiser with a key derived from `seed` and key id `test`, so
    /// tests across the workspace agree on pseudonyms.
    ///
    /// Never use it in a deployment: anyone who knows the seed can reverse
    /// every pseudonym by trying all NHS numbers.
    #[doc(hidden)]
    pub fn for_tests(seed: &str) -> Self {
        let key = Sha256::new()
            .chain_update(b"pathflow test key")
            .chain_update(SEPARATOR)
            .chain_update(seed.as_bytes())
            .finalize();
        Self {
            // Neither value comes from input: a 32-byte key and a constant id.
            mac: HmacSha256::new_from_slice(&key).expect("HMAC accepts a 32-byte key"),
            key_id: KeyId::parse("test").expect("\"test\" is a valid key id"),
        }
    }

    /// The pseudonym of identifier `raw` of this `kind`, issued by `scope`.
    ///
    /// `scope` is the organisation within which `raw` is unique (the trust's
    /// ODS code for a hospital number, the practice's for a local appointment
    /// number) and `""` for national identifiers (NHS numbers, UBRNs); it must
    /// not contain U+001F, which ODS codes cannot. `raw` is hashed byte for
    /// byte, so normalise it first (trim, case, spacing) or one identifier
    /// written two ways gets two pseudonyms.
    pub fn pseudonym(&self, kind: IdKind, scope: &str, raw: &str) -> PseudoId {
        PseudoId::from_digest(&self.digest(&[
            kind.label().as_bytes(),
            scope.as_bytes(),
            raw.as_bytes(),
        ]))
    }

    /// The patient pseudonym of an NHS number (national, so no scope).
    pub fn patient(&self, nhs: &NhsNumber) -> PseudoId {
        self.pseudonym(IdKind::Patient, "", &nhs.expose_digits())
    }

    /// The deterministic id of the event of `event_type` made from `record`
    /// (the source record's key) in feed `source`: a re-sent file gives the
    /// same ids, so downstream drops the duplicates.
    pub fn event_id(&self, source: &SourceName, record: &str, event_type: EventType) -> EventId {
        // Keyed rather than a plain hash: record keys are often raw identifiers
        // (a UBRN, a PAS appointment number) drawn from a space small enough to
        // enumerate, so a plain SHA-256 of them could be reversed by hashing
        // every candidate — and event ids are published on every event.
        EventId::from_digest(&self.digest(&[
            EVENT_LABEL.as_bytes(),
            source.as_str().as_bytes(),
            record.as_bytes(),
            event_type.name().as_bytes(),
        ]))
    }

    /// The id of the key in use, to stamp on events.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The first 16 bytes of HMAC-SHA256 over `parts` joined by [`SEPARATOR`].
    fn digest(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(SEPARATOR);
            }
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut truncated = [0u8; 16];
        truncated.copy_from_slice(&full[..16]);
        truncated
    }
}

/// Turns the trimmed key text into key bytes, checking its length.
fn decode_key(text: &[u8], origin: &KeySource) -> Result<Vec<u8>, KeyError> {
    if text.is_empty() {
        return Err(KeyError::Empty {
            origin: origin.clone(),
        });
    }
    let key = if text.len() >= MIN_HEX_CHARS && text.iter().all(u8::is_ascii_hexdigit) {
        if text.len() % 2 == 1 {
            return Err(KeyError::OddHex {
                origin: origin.clone(),
                digits: text.len(),
            });
        }
        text.chunks_exact(2)
            .map(|pair| (hex_value(pair[0]) << 4) | hex_value(pair[1]))
            .collect()
    } else {
        text.to_vec()
    };
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort {
            origin: origin.clone(),
            len: key.len(),
        });
    }
    Ok(key)
}

/// The value of one hex digit; only called on bytes checked with `is_ascii_hexdigit`.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    /// `000102…1f`: the key the known-answer values below were computed with
    /// (Python's `hmac` module, independently of this code).
    const KAT_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn key_id() -> KeyId {
        KeyId::parse("k2025").unwrap()
    }

    /// Writes `contents` to a fresh key file; the directory lives as long as the guard.
    fn key_file(contents: &[u8]) -> (tempfile::TempDir, KeySource) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pathflow-key");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        (dir, KeySource::File(path))
    }

    fn load_error(source: &KeySource) -> String {
        Pseudonymiser::load(source, key_id())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn kind_patient_pins_the_scheme() {
        let (_dir, source) = key_file(format!("{KAT_KEY_HEX}\n").as_bytes());
        let p = Pseudonymiser::load(&source, key_id()).unwrap();
        let nhs = NhsNumber::parse("999 000 0018").unwrap();
        assert_eq!(p.patient(&nhs).as_str(), "9bf3a529521399f99ece7cea93420e61");
        assert_eq!(
            p.pseudonym(IdKind::Appointment, "Y90001", "12345").as_str(),
            "04a2e4cf14fbe1f438401478cc1f7fef"
        );
    }

    #[test]
    fn kind_event_pins_the_scheme() {
        let (_dir, source) = key_file(KAT_KEY_HEX.as_bytes());
        let p = Pseudonymiser::load(&source, key_id()).unwrap();
        let feed = SourceName::parse("pas:r9a:referrals").unwrap();
        let id = p.event_id(&feed, "UBRN-000123", EventType::ReferralCreated);
        assert_eq!(id.as_str(), "a3ae6e6a5fb754a06ac00cea3ec9323a");
    }

    #[test]
    fn same_input_gives_same_pseudonym_and_event_id() {
        let a = Pseudonymiser::for_tests("seed");
        let b = Pseudonymiser::for_tests("seed");
        let nhs = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(a.patient(&nhs), b.patient(&nhs));
        assert_eq!(a.patient(&nhs), a.patient(&nhs));
        let feed = SourceName::parse("gp:y90001:appointments").unwrap();
        assert_eq!(
            a.event_id(&feed, "row-7", EventType::AppointmentBooked),
            b.event_id(&feed, "row-7", EventType::AppointmentBooked)
        );
        assert_eq!(a.key_id().as_str(), "test");
    }

    #[test]
    fn kinds_scopes_keys_and_event_types_separate_domains() {
        let p = Pseudonymiser::for_tests("seed");
        let by_kind: HashSet<PseudoId> = IdKind::ALL
            .iter()
            .map(|&kind| p.pseudonym(kind, "RX1", "000123"))
            .collect();
        assert_eq!(by_kind.len(), IdKind::ALL.len());
        let labels: HashSet<&str> = IdKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), IdKind::ALL.len());
        assert!(!labels.contains(EVENT_LABEL));

        // The same hospital number at two trusts is two patients.
        assert_ne!(
            p.pseudonym(IdKind::Patient, "RX1", "000123"),
            p.pseudonym(IdKind::Patient, "RX2", "000123")
        );
        // The separator keeps scope and value apart.
        assert_ne!(
            p.pseudonym(IdKind::Slot, "AB", "C"),
            p.pseudonym(IdKind::Slot, "A", "BC")
        );
        assert_ne!(
            p.pseudonym(IdKind::Pathway, "", "000123"),
            Pseudonymiser::for_tests("other").pseudonym(IdKind::Pathway, "", "000123")
        );

        let feed = SourceName::parse("ers:referrals").unwrap();
        assert_ne!(
            p.event_id(&feed, "000123", EventType::ReferralCreated),
            p.event_id(&feed, "000123", EventType::ReferralTriaged)
        );
        assert_ne!(
            p.event_id(&feed, "000123", EventType::ReferralCreated),
            Pseudonymiser::for_tests("other").event_id(&feed, "000123", EventType::ReferralCreated)
        );
        let other_feed = SourceName::parse("ers:advice").unwrap();
        assert_ne!(
            p.event_id(&feed, "000123", EventType::ReferralCreated),
            p.event_id(&other_feed, "000123", EventType::ReferralCreated)
        );
    }

    #[test]
    fn output_is_32_lowercase_hex() {
        let p = Pseudonymiser::for_tests("seed");
        let nhs = NhsNumber::parse("9990000018").unwrap();
        let feed = SourceName::parse("pas:rx1").unwrap();
        for text in [
            p.patient(&nhs).as_str().to_string(),
            p.event_id(&feed, "1", EventType::AppointmentAttended)
                .as_str()
                .to_string(),
        ] {
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
            assert!(!text.contains("9990000018"));
        }
    }

    #[test]
    fn hex_and_raw_keys_both_load() {
        // 64 hex digits of 0x41 decode to 32 bytes of b'A'; the raw key is the same bytes.
        let (_d1, hex_lower) = key_file(format!("{}\n", "41".repeat(32)).as_bytes());
        let (_d2, hex_upper) = key_file("41".repeat(32).to_uppercase().as_bytes());
        let (_d3, raw) = key_file(format!("{}\r\n\t ", "A".repeat(32)).as_bytes());
        let nhs = NhsNumber::parse("9990000018").unwrap();
        let ids: Vec<PseudoId> = [hex_lower, hex_upper, raw]
            .iter()
            .map(|s| Pseudonymiser::load(s, key_id()).unwrap().patient(&nhs))
            .collect();
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[2]);

        // A passphrase that is not hex is used as its bytes, as is a binary file.
        let (_d4, phrase) = key_file(b"correct horse battery staple, and then some more words");
        assert!(Pseudonymiser::load(&phrase, key_id()).is_ok());
        let (_d5, binary) = key_file(&[0xff; 40]);
        assert!(Pseudonymiser::load(&binary, key_id()).is_ok());
    }

    #[test]
    fn missing_key_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-key");
        let message = load_error(&KeySource::File(path.clone()));
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("openssl rand -hex 32"), "{message}");
    }

    #[test]
    fn short_key_file_is_an_error_without_the_key() {
        let secret = "only-a-short-secret";
        let (_dir, source) = key_file(format!("{secret}\n").as_bytes());
        let message = load_error(&source);
        assert!(message.contains("is 19 bytes"), "{message}");
        assert!(message.contains("at least 32"), "{message}");
        assert!(message.contains(&source.to_string()), "{message}");
        assert!(!message.contains(secret), "{message}");

        // 62 hex digits are below the hex threshold, so they count as 62 raw
        // bytes and load; 65 hex digits are a truncated or mangled hex key.
        let (_d2, odd) = key_file("a".repeat(65).as_bytes());
        let message = load_error(&odd);
        assert!(message.contains("odd number of digits (65)"), "{message}");
        assert!(!message.contains(&"a".repeat(65)), "{message}");

        let (_d3, blank) = key_file(b" \n\n");
        assert!(load_error(&blank).contains("is empty"));
    }

    #[test]
    fn unset_or_short_env_var_is_an_error_naming_the_var() {
        let unset = "PATHFLOW_TEST_PSEUDONYMISE_UNSET_KEY_5C1D";
        let message = load_error(&KeySource::Env(unset.to_string()));
        assert!(
            message.contains(&format!("environment variable {unset} is not set")),
            "{message}"
        );

        let short = "PATHFLOW_TEST_PSEUDONYMISE_SHORT_KEY_5C1D";
        let secret = "tiny-env-secret";
        // SAFETY: the variable name is unique to this test, and no test reads
        // or writes the environment concurrently under this name.
        unsafe { std::env::set_var(short, secret) };
        let message = load_error(&KeySource::Env(short.to_string()));
        assert!(message.contains(short), "{message}");
        assert!(message.contains("at least 32"), "{message}");
        assert!(!message.contains(secret), "{message}");

        let empty = "PATHFLOW_TEST_PSEUDONYMISE_EMPTY_KEY_5C1D";
        // SAFETY: as above, a name no other test uses.
        unsafe { std::env::set_var(empty, "") };
        let message = load_error(&KeySource::Env(empty.to_string()));
        assert!(
            message.contains(empty) && message.contains("is empty"),
            "{message}"
        );
    }

    #[test]
    fn env_key_loads_and_matches_the_same_key_in_a_file() {
        let var = "PATHFLOW_TEST_PSEUDONYMISE_GOOD_KEY_5C1D";
        // SAFETY: a name no other test uses.
        unsafe { std::env::set_var(var, KAT_KEY_HEX) };
        let from_env = Pseudonymiser::load(&KeySource::Env(var.to_string()), key_id()).unwrap();
        let (_dir, file) = key_file(KAT_KEY_HEX.as_bytes());
        let from_file = Pseudonymiser::load(&file, key_id()).unwrap();
        assert_eq!(
            from_env.pseudonym(IdKind::Advice, "", "A1"),
            from_file.pseudonym(IdKind::Advice, "", "A1")
        );
        assert_eq!(from_env.key_id(), &key_id());
    }

    #[test]
    fn debug_shows_the_key_id_but_not_the_key() {
        let secret = "this-is-the-secret-key-material-0123456789";
        let (_dir, source) = key_file(secret.as_bytes());
        let p = Pseudonymiser::load(&source, key_id()).unwrap();
        for shown in [format!("{p:?}"), format!("{p:#?}")] {
            assert!(shown.contains("k2025"), "{shown}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("secret-key"), "{shown}");
        }
    }

    #[test]
    fn key_source_reads_from_toml() {
        #[derive(Deserialize)]
        struct Config {
            key: KeySource,
        }
        let file: Config =
            toml::from_str(r#"key = { file = "/run/secrets/pathflow-key" }"#).unwrap();
        assert_eq!(
            file.key,
            KeySource::File("/run/secrets/pathflow-key".into())
        );
        let env: Config = toml::from_str(r#"key = { env = "PATHFLOW_PSEUDO_KEY" }"#).unwrap();
        assert_eq!(env.key, KeySource::Env("PATHFLOW_PSEUDO_KEY".into()));
        assert!(toml::from_str::<Config>(r#"key = { inline = "abc" }"#).is_err());
    }

    proptest! {
        #[test]
        fn distinct_raw_values_get_distinct_pseudonyms(
            values in prop::collection::hash_set(any::<u64>(), 1..300),
            kind in prop::sample::select(IdKind::ALL.to_vec()),
        ) {
            let p = Pseudonymiser::for_tests("proptest");
            let pseudonyms: HashSet<PseudoId> = values
                .iter()
                .map(|v| p.pseudonym(kind, "Y90001", &v.to_string()))
                .collect();
            prop_assert_eq!(pseudonyms.len(), values.len());
        }
    }
}
