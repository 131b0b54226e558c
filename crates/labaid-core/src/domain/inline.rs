//! Short ASCII codes kept inline (ODS codes, test codes, NHS numbers): no heap allocation per
//! copy, which matters when a million live requests each hold several of them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Up to `N` ASCII bytes, padded with NUL. Codes never contain NUL, so the derived order is the
/// order of the strings ("AB" < "ABC" because the padding sorts first), and serde sees a string,
/// so the encoded form is the same as a `String`'s.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct InlineAscii<const N: usize>([u8; N]);

impl<const N: usize> InlineAscii<N> {
    /// The code, if it is ASCII without NUL and at most `N` bytes.
    pub(crate) fn new(s: &str) -> Option<Self> {
        if s.len() > N || !s.bytes().all(|b| b.is_ascii() && b != 0) {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Self(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(N);
        // Only ASCII is ever stored (see `new`), so this never falls back.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Debug for InlineAscii<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> Serialize for InlineAscii<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for InlineAscii<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<const N: usize>;
        impl<const N: usize> serde::de::Visitor<'_> for Visitor<N> {
            type Value = InlineAscii<N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an ASCII code of at most {N} characters")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                InlineAscii::new(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(Visitor::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_the_order_of_the_strings() {
        let mut codes = ["RJZ", "R1H", "RJ1", "RJ", "RJ11", "A", "ABCDEF"];
        let mut inline: Vec<InlineAscii<6>> =
            codes.iter().filter_map(|c| InlineAscii::new(c)).collect();
        codes.sort_unstable();
        inline.sort();
        let back: Vec<&str> = inline.iter().map(InlineAscii::as_str).collect();
        assert_eq!(back, codes);
    }

    #[test]
    fn encodes_as_a_string_does() {
        let code = InlineAscii::<6>::new("RJ1").unwrap();
        let bytes = postcard::to_stdvec(&code).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&"RJ1".to_string()).unwrap());
        assert_eq!(
            postcard::from_bytes::<InlineAscii<6>>(&bytes).unwrap(),
            code
        );
        let long = postcard::to_stdvec(&"ABCDEFG".to_string()).unwrap();
        assert!(postcard::from_bytes::<InlineAscii<6>>(&long).is_err());
    }

    #[test]
    fn longer_or_non_ascii_codes_are_refused() {
        assert!(InlineAscii::<3>::new("ABCD").is_none());
        assert!(InlineAscii::<6>::new("É").is_none());
        assert!(InlineAscii::<6>::new("A\0B").is_none());
        assert_eq!(InlineAscii::<3>::new("").unwrap().as_str(), "");
    }
}
