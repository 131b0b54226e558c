//! Results: an observation as a lab posts it, and its validation against the job's tests and the
//! catalogue's critical limits.

use serde::{Deserialize, Serialize};

use super::{BoundedText, Catalogue, TestCode, TestSet, Violations};

/// How a result compares with its reference range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObservationFlag {
    /// Within range.
    Normal,
    /// Below range.
    Low,
    /// Above range.
    High,
    /// Abnormal (non-numeric).
    Abnormal,
    /// Critically low.
    CriticalLow,
    /// Critically high.
    CriticalHigh,
}

impl ObservationFlag {
    /// True for the critical flags.
    pub fn is_critical(self) -> bool {
        matches!(self, Self::CriticalLow | Self::CriticalHigh)
    }
}

/// An observation as received, before validation.
#[derive(Debug, Clone, Copy)]
pub struct RawObservation<'a> {
    /// Test code.
    pub test: &'a str,
    /// Analyte.
    pub analyte: &'a str,
    /// Value.
    pub value: &'a str,
    /// UCUM unit.
    pub unit: &'a str,
    /// Reference range.
    pub reference_range: &'a str,
    /// Flag, if a known one was given.
    pub flag: Option<ObservationFlag>,
}

/// One result value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The requested test it belongs to.
    pub test: TestCode,
    /// Analyte within the test; empty when the test has one.
    pub analyte: String,
    /// The value as text.
    pub value: String,
    /// UCUM unit.
    pub unit: String,
    /// Reference range as printed.
    pub reference_range: String,
    /// Comparison with the reference range (raised to critical by the catalogue's limits).
    pub flag: ObservationFlag,
}

impl Observation {
    /// Validates an observation against the job's tests and the catalogue, and raises its flag to
    /// critical when the catalogue's limits say so.
    pub fn validate(
        field: &str,
        raw: &RawObservation<'_>,
        tests: &TestSet,
        catalogue: &Catalogue,
        violations: &mut Violations,
    ) -> Option<Self> {
        let RawObservation {
            test,
            analyte,
            value,
            unit,
            reference_range,
            flag,
        } = *raw;
        let test = violations.check(
            &format!("{field}.test"),
            TestCode::parse(test).and_then(|t| {
                if tests.contains(&t) {
                    Ok(t)
                } else {
                    Err("is not one of the job's tests".into())
                }
            }),
        );
        let analyte =
            violations.check(&format!("{field}.analyte"), BoundedText::parse(analyte, 32));
        let value_ok = if value.trim().is_empty() {
            Err("is required".to_string())
        } else {
            BoundedText::parse(value, 64)
        };
        let value = violations.check(&format!("{field}.value"), value_ok);
        let unit = violations.check(&format!("{field}.unit"), BoundedText::parse(unit, 32));
        let range = violations.check(
            &format!("{field}.reference_range"),
            BoundedText::parse(reference_range, 64),
        );
        let (test, analyte, value, unit, range) = (test?, analyte?, value?, unit?, range?);
        let mut flag = flag.unwrap_or(ObservationFlag::Normal);
        if let (Some(def), Ok(v)) = (catalogue.get(&test), value.as_str().trim().parse::<f64>()) {
            if def.critical_low.is_some_and(|low| v <= low) {
                flag = ObservationFlag::CriticalLow;
            } else if def.critical_high.is_some_and(|high| v >= high) {
                flag = ObservationFlag::CriticalHigh;
            }
        }
        Some(Self {
            test,
            analyte: analyte.as_str().to_string(),
            value: value.as_str().to_string(),
            unit: unit.as_str().to_string(),
            reference_range: range.as_str().to_string(),
            flag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::catalogue::tests::potassium_and_ue as catalogue;

    #[test]
    fn potassium_above_the_critical_limit_is_flagged_critical() {
        let cat = catalogue();
        let tests = TestSet::parse(&["K".into()], &cat).unwrap();
        let mut v = Violations::default();
        let raw = RawObservation {
            test: "K",
            analyte: "",
            value: "6.8",
            unit: "mmol/L",
            reference_range: "3.5-5.3",
            flag: None,
        };
        let obs = Observation::validate("observations[0]", &raw, &tests, &cat, &mut v).unwrap();
        assert_eq!(obs.flag, ObservationFlag::CriticalHigh);
    }
}
