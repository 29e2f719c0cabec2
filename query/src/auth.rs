//! Tokens, roles and scopes.
//!
//! A token is a random secret the operator hands to a person or tool; the
//! configuration holds only its SHA-256 (`pathflow serve hash-token` prints
//! it), so the file can be read without granting access. The same secret is
//! an HTTP bearer token and a Postgres password.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::config::TokenConfig;

/// What a token may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every table, every row.
    Analyst,
    /// Every table, only the rows of its practices and treatment functions.
    ClinicalPair,
    /// The gold tables only.
    Commissioner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::ClinicalPair => "clinical_pair",
            Role::Commissioner => "commissioner",
        }
    }
}

/// Rows a clinical pair may see: a row is in scope when its `practice` is
/// one of `practices` (if any are listed) and its `treatment_function` one
/// of `treatment_functions` (if any are listed). A row with no practice (or
/// no treatment function) is out of a scope that lists them: it could be
/// anyone's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    pub practices: Vec<String>,
    pub treatment_functions: Vec<String>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The token's name, as the audit log records it.
    pub name: String,
    pub role: Role,
    /// Set for clinical pairs only.
    pub scope: Option<Scope>,
}

impl Principal {
    /// Everything, for the server's own use (the demo, tests, extracts).
    pub fn internal() -> Self {
        Principal {
            name: "pathflow".into(),
            role: Role::Analyst,
            scope: None,
        }
    }
}

/// `sha256:<hex>` as the configuration writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a secret.
    pub fn of(secret: &str) -> Self {
        TokenHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Compares in time independent of where the bytes differ.
    fn matches(&self, other: &TokenHash) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for TokenHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256:").unwrap_or("");
        let bytes = hex.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "a token hash is `sha256:` and 64 hex digits, not {:?}: never put the token \
                 itself in the file; print its hash with `pathflow serve hash-token` (reads the \
                 token from standard input)",
                if s.len() > 12 { &s[..12] } else { s }
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
            out[i] = u8::from_str_radix(text, 16).expect("checked hex digits");
        }
        Ok(TokenHash(out))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<(TokenHash, Principal)>>,
}

impl Tokens {
    pub fn new(configured: &[TokenConfig]) -> Self {
        let entries = configured
            .iter()
            .map(|t| {
                let scope = (t.role == Role::ClinicalPair).then(|| Scope {
                    practices: t.practices.clone(),
                    treatment_functions: t.treatment_functions.clone(),
                });
                (
                    t.hash.clone(),
                    Principal {
                        name: t.name.clone(),
                        role: t.role,
                        scope,
                    },
                )
            })
            .collect();
        Tokens {
            entries: Arc::new(entries),
        }
    }

    /// The principal a presented secret belongs to. Every entry is compared,
    /// so the time taken does not say which (if any) nearly matched.
    pub fn verify(&self, secret: &str) -> Option<Principal> {
        let presented = TokenHash::of(secret.trim());
        let mut found = None;
        for (hash, principal) in self.entries.iter() {
            if hash.matches(&presented) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_round_trips_and_verifies_only_its_secret() {
        let hash = TokenHash::of("placeholder-token");
        let text = hash.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71);
        assert_eq!(text.parse::<TokenHash>().unwrap(), hash);
        let tokens = Tokens::new(&[TokenConfig {
            name: "gp".into(),
            hash,
            role: Role::ClinicalPair,
            practices: vec!["Y01234".into()],
            treatment_functions: vec![],
        }]);
        let p = tokens.verify("placeholder-token").unwrap();
        assert_eq!(p.name, "gp");
        assert_eq!(p.scope.unwrap().practices, ["Y01234"]);
        assert!(tokens.verify("placeholder-tokeN").is_none());
        assert!(tokens.verify("").is_none());
    }
}
