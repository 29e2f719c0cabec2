//! `NhsNumber`: a validated NHS number that can be checked and pseudonymised
//! but never printed or serialised. Connectors hold one only long enough to
//! key a pseudonym; no event type has a field that could carry it.

use std::fmt;

/// A 10-digit NHS number whose Modulus 11 check digit is valid.
///
/// Deliberately not `Serialize` and not printable: `Debug` and `Display`
/// show a redacted placeholder. The digits are reachable only through
/// [`NhsNumber::expose_digits`], whose name makes every use easy to audit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber([u8; 10]);

/// Why a string is not a valid NHS number. Messages never repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Wrong number of digits once spaces and dashes are removed.
    #[error(
        "an NHS number has 10 digits (spaces or dashes allowed between them); this value has {0}"
    )]
    WrongLength(usize),
    /// A character other than a digit, space or dash.
    #[error("an NHS number may contain only digits, spaces and dashes")]
    NotDigits,
    /// The tenth digit does not match the Modulus 11 check of the first nine.
    #[error(
        "the check digit does not match (Modulus 11 rule): the number is mistyped or not an NHS number"
    )]
    BadCheckDigit,
}

impl NhsNumber {
    /// Parses `9990001234`, `999 000 1234` or `999-000-1234`, checking the Modulus 11 digit.
    pub fn parse(text: &str) -> Result<Self, NhsNumberError> {
        let mut digits = [0u8; 10];
        let mut n = 0usize;
        for c in text.trim().chars() {
            match c {
                '0'..='9' => {
                    if n < 10 {
                        digits[n] = c as u8 - b'0';
                    }
                    n += 1;
                }
                ' ' | '-' => {}
                _ => return Err(NhsNumberError::NotDigits),
            }
        }
        if n != 10 {
            return Err(NhsNumberError::WrongLength(n));
        }
        let first9: [u8; 9] = digits[..9].try_into().expect("slice of 9");
        match check_digit(&first9) {
            Some(c) if c == digits[9] => Ok(NhsNumber(digits)),
            _ => Err(NhsNumberError::BadCheckDigit),
        }
    }

    /// Builds the number whose first nine digits are `first9` (0..=999_999_999),
    /// or `None` when no check digit exists for them (Modulus 11 gives 10).
    pub fn from_first_nine(first9: u32) -> Option<Self> {
        if first9 > 999_999_999 {
            return None;
        }
        let mut digits = [0u8; 10];
        let mut rest = first9;
        for i in (0..9).rev() {
            digits[i] = (rest % 10) as u8;
            rest /= 10;
        }
        let head: [u8; 9] = digits[..9].try_into().expect("slice of 9");
        digits[9] = check_digit(&head)?;
        Some(NhsNumber(digits))
    }

    /// The ten digits as text, for keying a pseudonym or writing a synthetic
    /// source file. Every call site is a place where an identifier is handled.
    pub fn expose_digits(&self) -> String {
        self.0.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// True for the 999 range that the NHS reserves for testing.
    pub fn is_test_range(&self) -> bool {
        self.0[..3] == [9, 9, 9]
    }
}

/// The Modulus 11 check digit for nine digits, or `None` when the rule gives 10
/// (such numbers are never issued).
pub fn check_digit(first9: &[u8; 9]) -> Option<u8> {
    let sum: u32 = first9
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(*d) * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted NHS number>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_numbers_parse() {
        // Published examples of valid test numbers.
        for s in ["9434765919", "943 476 5919", "943-476-5919", "9990000018"] {
            assert!(NhsNumber::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn errors_explain_without_echoing() {
        let e = NhsNumber::parse("999000001").unwrap_err();
        assert_eq!(e, NhsNumberError::WrongLength(9));
        let e = NhsNumber::parse("9990000019").unwrap_err();
        assert_eq!(e, NhsNumberError::BadCheckDigit);
        assert!(!e.to_string().contains("9990000019"));
        assert_eq!(
            NhsNumber::parse("99900O0018").unwrap_err(),
            NhsNumberError::NotDigits
        );
    }

    #[test]
    fn debug_and_display_redact() {
        let n = NhsNumber::parse("9990000018").unwrap();
        for shown in [format!("{n:?}"), format!("{n}"), format!("{n:#?}")] {
            assert!(!shown.contains("999"), "{shown}");
            assert!(!shown.contains("0018"), "{shown}");
        }
        assert_eq!(n.expose_digits(), "9990000018");
        assert!(n.is_test_range());
    }

    proptest! {
        #[test]
        fn every_constructed_number_validates_and_any_one_digit_change_breaks_it(
            base in 0u32..1_000_000, pos in 0usize..10, delta in 1u8..10,
        ) {
            let Some(n) = NhsNumber::from_first_nine(999_000_000 + base) else { return Ok(()) };
            let digits = n.expose_digits();
            prop_assert!(NhsNumber::parse(&digits).is_ok());
            let mut changed: Vec<u8> = digits.bytes().collect();
            changed[pos] = b'0' + (changed[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(changed).unwrap();
            prop_assert_eq!(NhsNumber::parse(&changed).unwrap_err(), NhsNumberError::BadCheckDigit);
        }
    }
}
