//! Test codes both ways: a FHIR coding (LOINC, SNOMED CT or the labaid catalogue) to a catalogue
//! test, and a catalogue test to the codings a FHIR client reads. Built from the broker's own
//! catalogue (DirectoryService.ListTests), so the edge never disagrees with the broker; the
//! catalogue's own code system URI is the deployment's ([`DEFAULT_CATALOGUE_SYSTEM`] unless set).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::proto;

/// LOINC's FHIR system.
pub const LOINC: &str = "http://loinc.org";
/// SNOMED CT's FHIR system.
pub const SNOMED: &str = "http://snomed.info/sct";
/// The code system of the labaid catalogue's codes (`K`, `FBC`, ...) when the deployment sets
/// none: a URN, which no web host can come to own.
pub const DEFAULT_CATALOGUE_SYSTEM: &str = "urn:labaid:catalogue";

/// Checks a catalogue code system: an absolute URI (a scheme, a colon, then no spaces), without
/// `|` (FHIR token search writes `system|code`) or a fragment.
pub fn parse_system(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let scheme_ok = raw.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let chars_ok = raw
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '|' | '#'));
    if scheme_ok && chars_ok {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "{raw:?} is not a code system URI: give an absolute URI without spaces, '|' or '#', e.g. {DEFAULT_CATALOGUE_SYSTEM} or https://<a host you own>/CodeSystem/test"
        ))
    }
}

/// The systems labaid reads codings of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum System {
    Loinc,
    Snomed,
    Catalogue,
}

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
#[derive(Debug, Clone)]
pub struct Codes {
    system: Arc<str>,
    tests: BTreeMap<String, TestCodes>,
    by_coding: HashMap<(System, String), String>,
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
    /// No coding in a system labaid reads; it names the catalogue's system.
    #[error("no coding from LOINC ({LOINC}), SNOMED CT ({SNOMED}) or the labaid catalogue ({0})")]
    NoKnownSystem(String),
}

impl Codes {
    /// Indexes the broker's catalogue, whose own codes are of `system` (checked with
    /// [`parse_system`]).
    pub fn new(tests: &[proto::TestDefinition], system: &str) -> Self {
        let mut codes = Self {
            system: system.into(),
            tests: BTreeMap::new(),
            by_coding: HashMap::new(),
        };
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
                .insert((System::Catalogue, t.code.clone()), t.code.clone());
            if let Some(l) = &entry.loinc {
                codes
                    .by_coding
                    .insert((System::Loinc, l.clone()), t.code.clone());
            }
            if let Some(s) = &entry.snomed {
                codes
                    .by_coding
                    .insert((System::Snomed, s.clone()), t.code.clone());
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
            let known = if system == LOINC {
                System::Loinc
            } else if system == SNOMED {
                System::Snomed
            } else if system == &*self.system {
                System::Catalogue
            } else {
                continue;
            };
            // Catalogue codes are matched as the broker reads them, case-blind.
            let key = if known == System::Catalogue {
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
            return Err(CodeError::NoKnownSystem(self.system.to_string()));
        }
        Ok(found)
    }

    /// The codings of one test: the catalogue code, then LOINC and SNOMED CT where known.
    pub fn codings(&self, test: &str) -> Vec<Value> {
        let system = &*self.system;
        let Some(t) = self.tests.get(test) else {
            return vec![json!({ "system": system, "code": test })];
        };
        let mut out = vec![json!({ "system": system, "code": t.code, "display": t.name })];
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

    /// The catalogue's own code system.
    pub fn system(&self) -> &str {
        &self.system
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
        Codes::new(
            &[def("K", "2823-3", "59573005"), def("UE", "24362-6", "")],
            DEFAULT_CATALOGUE_SYSTEM,
        )
    }

    #[test]
    fn loinc_snomed_and_catalogue_codings_name_the_same_test_once() {
        let c = codes();
        let concept = json!({ "coding": [
            { "system": SNOMED, "code": "59573005" },
            { "system": "http://example.org/local", "code": "POT" },
            { "system": LOINC, "code": "2823-3" },
            { "system": DEFAULT_CATALOGUE_SYSTEM, "code": "ue" },
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
            CodeError::NoKnownSystem(DEFAULT_CATALOGUE_SYSTEM.into())
        );
    }

    #[test]
    fn the_deployment_catalogue_system_is_read_and_written_and_the_default_then_is_foreign() {
        let system = "https://pathology.example.nhs.uk/CodeSystem/labaid-test";
        let c = Codes::new(
            &[proto::TestDefinition {
                code: "K".into(),
                name: "Potassium".into(),
                ..Default::default()
            }],
            system,
        );
        assert_eq!(c.codings("K")[0]["system"], system);
        let ours = json!({ "coding": [{ "system": system, "code": "k" }] });
        assert_eq!(c.tests_of(&ours).unwrap(), ["K"]);
        let default = json!({ "coding": [{ "system": DEFAULT_CATALOGUE_SYSTEM, "code": "K" }] });
        assert_eq!(
            c.tests_of(&default).unwrap_err(),
            CodeError::NoKnownSystem(system.into())
        );
    }

    #[test]
    fn a_catalogue_system_must_be_an_absolute_uri() {
        for good in [
            DEFAULT_CATALOGUE_SYSTEM,
            "urn:oid:1.2.826.0.1",
            "https://a.nhs.uk/cs",
        ] {
            assert_eq!(parse_system(good).unwrap(), good);
        }
        for bad in [
            "",
            "catalogue",
            "urn:",
            "1x:y",
            "urn:labaid:a b",
            "urn:a|b",
            "http://a#b",
        ] {
            assert!(parse_system(bad).is_err(), "{bad:?}");
        }
    }
}
