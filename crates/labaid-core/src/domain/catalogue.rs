//! The test catalogue: codes, sample stability and turnaround that routing relies on.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::inline::InlineAscii;

/// A catalogue test code, e.g. `FBC`: 1 to 16 upper-case letters, digits or `-`, kept inline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestCode(InlineAscii<16>);

impl TestCode {
    /// Checks the shape of a code (not whether the catalogue has it).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let code = raw.trim().to_ascii_uppercase();
        let ok = !code.is_empty()
            && code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
        InlineAscii::new(&code)
            .filter(|_| ok)
            .map(Self)
            .ok_or_else(|| "must be a test code such as FBC".into())
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for TestCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One test in the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestDef {
    /// Catalogue code.
    pub code: TestCode,
    /// Human-readable name.
    pub name: String,
    /// Laboratory discipline.
    pub discipline: String,
    /// Specimen type.
    pub specimen: String,
    /// Time from collection to analysis that the sample survives, in minutes.
    pub stability_minutes: u32,
    /// Typical urgent turnaround in the lab, in minutes.
    pub turnaround_minutes: u32,
    /// UCUM unit of the main result.
    pub unit: Option<String>,
    /// Values at or below this are critical.
    pub critical_low: Option<f64>,
    /// Values at or above this are critical.
    pub critical_high: Option<f64>,
    /// LOINC code of the test (e.g. `2823-3`), for FHIR and other coded interfaces.
    #[serde(default)]
    pub loinc: Option<String>,
    /// SNOMED CT procedure code of the test, where one fits.
    #[serde(default)]
    pub snomed: Option<String>,
}

/// The tests the broker can route, by code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    tests: BTreeMap<TestCode, TestDef>,
}

impl Catalogue {
    /// Builds a catalogue; a code given twice is an error.
    pub fn new(tests: impl IntoIterator<Item = TestDef>) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for t in tests {
            if t.stability_minutes == 0 {
                return Err(format!("test {}: stability must be positive", t.code));
            }
            if let Some(dup) = map.insert(t.code.clone(), t) {
                return Err(format!("test {} is defined twice", dup.code));
            }
        }
        Ok(Self { tests: map })
    }

    /// The test with this code.
    pub fn get(&self, code: &TestCode) -> Option<&TestDef> {
        self.tests.get(code)
    }

    /// Every test, in code order.
    pub fn iter(&self) -> impl Iterator<Item = &TestDef> {
        self.tests.values()
    }

    /// Number of tests.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// True when the catalogue has no tests.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Potassium (4 h stability, critical below 2.5 or above 6.5) and U&E, for the domain's tests.
    pub(crate) fn potassium_and_ue() -> Catalogue {
        let def = |code: &str, stability_h: u32, tat: u32| TestDef {
            code: TestCode::parse(code).unwrap(),
            name: code.into(),
            discipline: "biochemistry".into(),
            specimen: "serum".into(),
            stability_minutes: stability_h * 60,
            turnaround_minutes: tat,
            unit: None,
            critical_low: Some(2.5),
            critical_high: Some(6.5),
            loinc: None,
            snomed: None,
        };
        Catalogue::new([def("K", 4, 45), def("UE", 24, 60)]).unwrap()
    }
}
