//! The NHS number: ten digits with a modulus 11 check digit.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::inline::InlineAscii;

/// A valid NHS number. Its `Debug` form is masked so that it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NhsNumber(InlineAscii<10>);

impl NhsNumber {
    /// Parses ten digits (spaces allowed, as printed on NHS cards) and checks the check digit.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits: Vec<u32> = raw
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_digit(10).ok_or(()))
            .collect::<Result<_, _>>()
            .map_err(|()| "must contain only digits".to_string())?;
        if digits.len() != 10 {
            return Err("must have exactly 10 digits".into());
        }
        let sum: u32 = digits[..9]
            .iter()
            .zip((2..=10).rev())
            .map(|(d, w)| d * w)
            .sum();
        let check = match 11 - (sum % 11) {
            11 => 0,
            10 => return Err("is not a valid NHS number (check digit)".into()),
            c => c,
        };
        if check != digits[9] {
            return Err("is not a valid NHS number (check digit)".into());
        }
        let text: String = digits
            .iter()
            .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
            .collect();
        InlineAscii::new(&text)
            .map(Self)
            .ok_or_else(|| "must have exactly 10 digits".into())
    }

    /// The ten digits.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_examples_are_valid() {
        assert!(NhsNumber::parse("9434765919").is_ok());
        assert!(NhsNumber::parse("6541003238").is_ok());
        assert!(NhsNumber::parse("943 476 5919").is_ok());
    }

    #[test]
    fn wrong_check_digit_is_rejected() {
        assert!(NhsNumber::parse("9434765918").is_err());
    }

    #[test]
    fn check_value_of_ten_is_never_valid() {
        // 000000001x: sum = 1*2 = 2, 11 - 2 = 9; find a prefix whose check would be 10.
        // 0000000060: sum = 6*2 = 12, 12 mod 11 = 1, 11 - 1 = 10 -> invalid whatever the last digit.
        for last in 0..10 {
            assert!(NhsNumber::parse(&format!("000000006{last}")).is_err());
        }
    }

    #[test]
    fn wrong_length_and_letters_are_rejected() {
        assert!(NhsNumber::parse("943476591").is_err());
        assert!(NhsNumber::parse("94347659190").is_err());
        assert!(NhsNumber::parse("94347659A9").is_err());
        assert!(NhsNumber::parse("").is_err());
    }

    #[test]
    fn debug_form_hides_the_number() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert!(!format!("{n:?}").contains("9434765919"));
    }
}
