//! Identifiers: request ids, ODS organisation codes and trust order numbers.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::inline::InlineAscii;

/// The broker's id of a request (and of the job a lab sees for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub Uuid);

/// One word to hash instead of a length and sixteen bytes: the low half's last 32 bits are random,
/// so both halves folded together spread well, and the maps keyed by id (millions of entries) hash
/// half as much.
impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (high, low) = self.0.as_u64_pair();
        state.write_u64(high ^ low);
    }
}

impl RequestId {
    /// A fresh id: a version 7 UUID, the time in milliseconds, then a counter and random bits.
    /// Ids made later sort later, so the core's ordered indexes keyed by id (a lab's open jobs,
    /// timers due at the same instant) take each new one at their end rather than at a random
    /// place among millions; and ties go first come, first served. Who may see a request is
    /// checked by organisation, never by how hard its id is to guess.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the canonical text form.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| "must be a request id (a UUID)".to_string())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An ODS organisation code, e.g. `RJ1` or `R1H`: 3 to 6 upper-case letters and digits, kept
/// inline (every request, event and index entry holds one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OdsCode(InlineAscii<6>);

impl OdsCode {
    /// Parses an ODS code; lower case is accepted and upper-cased.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let code = raw.trim().to_ascii_uppercase();
        let ok = (3..=6).contains(&code.len())
            && code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && code.starts_with(|c: char| c.is_ascii_uppercase() || c.is_ascii_digit());
        match InlineAscii::new(&code).filter(|_| ok) {
            Some(code) => Ok(Self(code)),
            None => Err("must be an ODS code: 3 to 6 letters and digits, e.g. RJ1".into()),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trust's own order number: 1 to 64 printable ASCII characters without spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderNumber(String);

impl OrderNumber {
    /// Parses an order number.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        if raw.len() > 64 {
            return Err("must be at most 64 characters".into());
        }
        if !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(Self(raw.to_string()))
    }

    /// The order number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_of_the_demo_parse() {
        for code in ["RJ1", "RJZ", "R1H", "RAL", "rj7"] {
            assert!(OdsCode::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn malformed_ods_codes_are_rejected() {
        for code in ["", "R1", "RJ1-X", "ABCDEFG", "R J1"] {
            assert!(OdsCode::parse(code).is_err(), "{code}");
        }
    }

    #[test]
    fn order_numbers_are_bounded() {
        assert!(OrderNumber::parse("ORD-1").is_ok());
        assert!(OrderNumber::parse("").is_err());
        assert!(OrderNumber::parse("has space").is_err());
        assert!(OrderNumber::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn ids_made_later_sort_later_and_do_not_repeat() {
        let ids: Vec<RequestId> = (0..10_000).map(|_| RequestId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        assert_eq!(ids[0].0.get_version_num(), 7);
        let text = ids[0].to_string();
        assert_eq!(RequestId::parse(&text), Ok(ids[0]));
    }
}
