//! Test codes both ways: a FHIR coding (LOINC, SNOMED CT or the labaid catalogue) to a catalogue
//! test, and a catalogue test to the codings a FHIR client reads. Built from the broker's own
//! catalogue (DirectoryService.ListTests), so the edge never disagrees with the broker.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::proto;

/// LOINC's FHIR system.
pub const LOINC: &str = "http://loinc.org";
/// SNOMED CT's FHIR system.
pub const SNOMED: &str = "http://snomed.info/sct";
/// The labaid catalogue's codes (`K`, `FBC`, ...) as a FHIR system.
pub const CATALOGUE: &str = "https://fhir.labaid.example/CodeSystem/test";

/// What FHIR needs to know of one catalogue test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCodes {
    /// Catalogue code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// LOINC code, when the catalogue gives one.
    pub loinc: Option<String>,
    /// SNOMED CT code, when the catalogue gives one.
    pub snomed: Option<String>,
}

/// The catalogue's codes, indexed for both directions.
#[derive(Debug, Clone, Default)]
pub struct Codes {
    tests: BTreeMap<String, TestCodes>,
    by_coding: HashMap<(&'static str, String), String>,
}

/// Why a CodeableConcept names no test.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// A coding of a known system with a code the catalogue lacks.
    #[error("unknown test code {system}|{code}: not in the labaid catalogue")]
    Unknown {
        /// Index of the coding.
        index: usize,
        /// Its system.
        system: String,
        /// Its code.
        code: String,
    },
    /// No coding in a system labaid reads.
    #[error(
        "no coding from LOINC ({LOINC}), SNOMED CT ({SNOMED}) or the labaid catalogue ({CATALOGUE})"
    )]
    NoKnownSystem,
}

impl Codes {
    /// Indexes the broker's catalogue.
    pub fn new(tests: &[proto::TestDefinition]) -> Self {
        let mut codes = Self::default();
        for t in tests {
            let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
            let entry = TestCodes {
                code: t.code.clone(),
                name: t.name.clone(),
                loinc: some(&t.loinc),
                snomed: some(&t.snomed),
            };
            codes
                .by_coding
                .insert((CATALOGUE, t.code.clone()), t.code.clone());
            if let Some(l) = &entry.loinc {
                codes.by_coding.insert((LOINC, l.clone()), t.code.clone());
            }
            if let Some(s) = &entry.snomed {
                codes.by_coding.insert((SNOMED, s.clone()), t.code.clone());
            }
            codes.tests.insert(t.code.clone(), entry);
        }
        codes
    }

    /// The catalogue tests a CodeableConcept's codings name, in order, each once. Codings of
    /// other systems are passed over; a known system with an unknown code is refused.
    pub fn tests_of(&self, concept: &Value) -> Result<Vec<String>, CodeError> {
        let mut found: Vec<String> = Vec::new();
        let codings = concept
            .get("coding")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (index, coding) in codings.iter().enumerate() {
            let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
            let code = coding.get("code").and_then(Value::as_str).unwrap_or("");
            let Some(known) = [LOINC, SNOMED, CATALOGUE]
                .into_iter()
                .find(|s| *s == system)
            else {
                continue;
            };
            // Catalogue codes are matched as the broker reads them, case-blind.
            let key = if known == CATALOGUE {
                code.trim().to_ascii_uppercase()
            } else {
                code.trim().to_string()
            };
            match self.by_coding.get(&(known, key)) {
                Some(test) if !found.contains(test) => found.push(test.clone()),
                Some(_) => {}
                None => {
                    return Err(CodeError::Unknown {
                        index,
                        system: system.to_string(),
                        code: code.to_string(),
                    });
                }
            }
        }
        if found.is_empty() {
            return Err(CodeError::NoKnownSystem);
        }
        Ok(found)
    }

    /// The codings of one test: the catalogue code, then LOINC and SNOMED CT where known.
    pub fn codings(&self, test: &str) -> Vec<Value> {
        let Some(t) = self.tests.get(test) else {
            return vec![json!({ "system": CATALOGUE, "code": test })];
        };
        let mut out = vec![json!({ "system": CATALOGUE, "code": t.code, "display": t.name })];
        if let Some(l) = &t.loinc {
            out.push(json!({ "system": LOINC, "code": l }));
        }
        if let Some(s) = &t.snomed {
            out.push(json!({ "system": SNOMED, "code": s }));
        }
        out
    }

    /// A CodeableConcept naming these tests.
    pub fn concept(&self, tests: &[String]) -> Value {
        let coding: Vec<Value> = tests.iter().flat_map(|t| self.codings(t)).collect();
        let text: Vec<&str> = tests
            .iter()
            .map(|t| self.tests.get(t).map_or(t.as_str(), |d| d.name.as_str()))
            .collect();
        json!({ "coding": coding, "text": text.join(", ") })
    }

    /// True when the catalogue is empty (not yet fetched).
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes() -> Codes {
        let def = |code: &str, loinc: &str, snomed: &str| proto::TestDefinition {
            code: code.into(),
            name: code.into(),
            loinc: loinc.into(),
            snomed: snomed.into(),
            ..Default::default()
        };
        Codes::new(&[def("K", "2823-3", "59573005"), def("UE", "24362-6", "")])
    }

    #[test]
    fn loinc_snomed_and_catalogue_codings_name_the_same_test_once() {
        let c = codes();
        let concept = json!({ "coding": [
            { "system": SNOMED, "code": "59573005" },
            { "system": "http://example.org/local", "code": "POT" },
            { "system": LOINC, "code": "2823-3" },
            { "system": CATALOGUE, "code": "ue" },
        ]});
        assert_eq!(c.tests_of(&concept).unwrap(), ["K", "UE"]);
        // Both directions agree.
        assert_eq!(
            c.tests_of(&c.concept(&["K".into(), "UE".into()])).unwrap(),
            ["K", "UE"]
        );
    }

    #[test]
    fn an_unknown_code_is_refused_by_name() {
        let concept = json!({ "coding": [{ "system": LOINC, "code": "9999-9" }] });
        let err = codes().tests_of(&concept).unwrap_err();
        assert!(err.to_string().contains("http://loinc.org|9999-9"), "{err}");
        let none = json!({ "coding": [{ "system": "http://example.org", "code": "K" }] });
        assert_eq!(
            codes().tests_of(&none).unwrap_err(),
            CodeError::NoKnownSystem
        );
    }
}
