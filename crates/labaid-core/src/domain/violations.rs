//! Field-level validation failures, reported together (google.rpc.BadRequest at the edge).

use std::fmt;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request message, e.g. `patient.nhs_number`.
    pub field: String,
    /// What is wrong with it, for a person to read. Never echoes patient data.
    pub description: String,
}

/// Every field violation found in one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the value of a check, or records its error against `field`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A single violation.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::default();
        v.add(field, description);
        v
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}
