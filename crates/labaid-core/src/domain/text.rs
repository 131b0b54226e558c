//! Free text bounded in length and free of control characters: names, notes and reasons.

use serde::{Deserialize, Serialize};

/// Free text of at most a given number of characters, without control characters other than
/// newlines and tabs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoundedText(String);

impl BoundedText {
    /// Checks `raw` against the bound.
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, String> {
        if raw.chars().count() > max_chars {
            return Err(format!("must be at most {max_chars} characters"));
        }
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("must not contain control characters".into());
        }
        Ok(Self(raw.to_string()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
