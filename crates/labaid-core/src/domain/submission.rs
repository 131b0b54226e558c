//! A trust's submission: the raw fields a client sends, and their validation, all at once, into a
//! [`NewRequest`] (patient, tests, priority, collection time).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::Date;
use time::macros::format_description;

use super::{
    BoundedText, Catalogue, MINUTE_MS, NhsNumber, OrderNumber, TestCode, Timestamp, Violations,
};

/// Clinical priority (FHIR R4 ServiceRequest.priority); the derived order is lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Routine.
    Routine,
    /// Urgent.
    Urgent,
    /// As soon as possible.
    Asap,
    /// Immediately.
    Stat,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [Self::Routine, Self::Urgent, Self::Asap, Self::Stat];

    /// The FHIR code, e.g. `stat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Urgent => "urgent",
            Self::Asap => "asap",
            Self::Stat => "stat",
        }
    }

    /// Parses a FHIR code, case-insensitively.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| "must be one of routine, urgent, asap, stat".into())
    }
}

/// The patient a sample came from. `Debug` is masked: patient data never reaches logs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Patient {
    /// NHS number.
    pub nhs_number: NhsNumber,
    /// Family name (may be empty).
    pub family_name: BoundedText,
    /// Given name (may be empty).
    pub given_name: BoundedText,
    /// Date of birth, YYYY-MM-DD (may be empty).
    pub birth_date: String,
}

impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Patient(***)")
    }
}

/// Checks a YYYY-MM-DD date of birth in 1900 to 2100; empty is allowed. The calendar (month
/// lengths, leap years) is the `time` crate's; the value is kept as the trust sent it.
fn parse_birth_date(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let err = || "must be a date as YYYY-MM-DD".to_string();
    // The format's year takes an optional sign, which a date of birth never has.
    if !raw.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(err());
    }
    let date = Date::parse(raw, format_description!("[year]-[month]-[day]")).map_err(|_| err())?;
    if !(1900..=2100).contains(&date.year()) {
        return Err(err());
    }
    Ok(raw.to_string())
}

/// The tests of one request: at least one, sorted, no duplicates, all in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestSet(Vec<TestCode>);

impl TestSet {
    /// Validates raw codes against the catalogue.
    pub fn parse(raw: &[String], catalogue: &Catalogue) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must name at least one test".into());
        }
        if raw.len() > 32 {
            return Err("must name at most 32 tests".into());
        }
        let mut codes = Vec::with_capacity(raw.len());
        for r in raw {
            let code = TestCode::parse(r)?;
            if catalogue.get(&code).is_none() {
                return Err(format!("{code} is not in the test catalogue"));
            }
            codes.push(code);
        }
        codes.sort();
        if let Some(w) = codes.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("{} is named more than once", w[0]));
        }
        Ok(Self(codes))
    }

    /// Builds a set from codes known to be valid (tests and the simulator).
    pub fn from_codes(mut codes: Vec<TestCode>) -> Self {
        codes.sort();
        codes.dedup();
        Self(codes)
    }

    /// The codes, sorted.
    pub fn codes(&self) -> &[TestCode] {
        &self.0
    }

    /// True when the set holds `code`.
    pub fn contains(&self, code: &TestCode) -> bool {
        self.0.binary_search(code).is_ok()
    }

    /// Shortest stability among the tests, in minutes.
    pub fn stability_minutes(&self, catalogue: &Catalogue) -> u32 {
        self.0
            .iter()
            .filter_map(|c| catalogue.get(c))
            .map(|t| t.stability_minutes)
            .min()
            .unwrap_or(0)
    }

    /// Longest turnaround among the tests, in minutes.
    pub fn turnaround_minutes(&self, catalogue: &Catalogue) -> u32 {
        self.0
            .iter()
            .filter_map(|c| catalogue.get(c))
            .map(|t| t.turnaround_minutes)
            .max()
            .unwrap_or(0)
    }
}

/// A submission as received, before validation (what a client or the CLI sends).
#[derive(Debug, Clone, Default)]
pub struct RawSubmission {
    /// The trust's order number.
    pub order_number: String,
    /// NHS number.
    pub nhs_number: String,
    /// Family name.
    pub family_name: String,
    /// Given name.
    pub given_name: String,
    /// Date of birth.
    pub birth_date: String,
    /// Test codes.
    pub tests: Vec<String>,
    /// Priority, if a known one was given.
    pub priority: Option<Priority>,
    /// Collection time, if given.
    pub collected_at: Option<Timestamp>,
    /// Clinical note.
    pub clinical_note: String,
}

/// Longest clinical note or reason text.
pub const MAX_NOTE_CHARS: usize = 500;
/// Longest name part.
pub(crate) const MAX_NAME_CHARS: usize = 100;
/// How far in the future a collection time may be, for clock skew between trust and broker.
const CLOCK_SKEW_MS: i64 = 2 * MINUTE_MS;

/// A validated submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRequest {
    /// The trust's order number.
    pub order_number: OrderNumber,
    /// The patient.
    pub patient: Patient,
    /// The tests.
    pub tests: TestSet,
    /// Clinical priority.
    pub priority: Priority,
    /// When the sample was collected.
    pub collected_at: Timestamp,
    /// Free text.
    pub clinical_note: BoundedText,
}

impl NewRequest {
    /// Validates every field at once, so the caller hears of all its mistakes in one reply.
    pub fn validate(
        raw: &RawSubmission,
        catalogue: &Catalogue,
        now: Timestamp,
    ) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let order_number = v.check("order_number", OrderNumber::parse(&raw.order_number));
        let nhs = v.check("patient.nhs_number", NhsNumber::parse(&raw.nhs_number));
        let family = v.check(
            "patient.family_name",
            BoundedText::parse(&raw.family_name, MAX_NAME_CHARS),
        );
        let given = v.check(
            "patient.given_name",
            BoundedText::parse(&raw.given_name, MAX_NAME_CHARS),
        );
        let birth = v.check("patient.birth_date", parse_birth_date(&raw.birth_date));
        let tests = v.check("tests", TestSet::parse(&raw.tests, catalogue));
        let priority = v.check(
            "priority",
            raw.priority
                .ok_or_else(|| "must be one of routine, urgent, asap, stat".to_string()),
        );
        let collected = v.check(
            "collected_at",
            match raw.collected_at {
                None => Err("is required".to_string()),
                Some(t) if t.millis_since(now) > CLOCK_SKEW_MS => {
                    Err("must not be in the future".to_string())
                }
                Some(t) => Ok(t),
            },
        );
        if let (Some(tests), Some(collected)) = (&tests, collected) {
            let deadline = collected.plus_minutes(i64::from(tests.stability_minutes(catalogue)));
            if deadline <= now {
                v.add(
                    "collected_at",
                    "the sample is already past its stability for these tests: recollect",
                );
            }
        }
        let note = v.check(
            "clinical_note",
            BoundedText::parse(&raw.clinical_note, MAX_NOTE_CHARS),
        );
        if !v.is_empty() {
            return Err(v);
        }
        match (
            order_number,
            nhs,
            family,
            given,
            birth,
            tests,
            priority,
            collected,
            note,
        ) {
            (
                Some(order_number),
                Some(nhs_number),
                Some(family_name),
                Some(given_name),
                Some(birth_date),
                Some(tests),
                Some(priority),
                Some(collected_at),
                Some(clinical_note),
            ) => Ok(Self {
                order_number,
                patient: Patient {
                    nhs_number,
                    family_name,
                    given_name,
                    birth_date,
                },
                tests,
                priority,
                collected_at,
                clinical_note,
            }),
            _ => Err(v),
        }
    }

    /// When the sample spoils.
    pub fn deadline(&self, catalogue: &Catalogue) -> Timestamp {
        self.collected_at
            .plus_minutes(i64::from(self.tests.stability_minutes(catalogue)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::catalogue::tests::potassium_and_ue as catalogue;

    fn raw(now: Timestamp) -> RawSubmission {
        RawSubmission {
            order_number: "ORD-1".into(),
            nhs_number: "9434765919".into(),
            tests: vec!["K".into(), "UE".into()],
            priority: Some(Priority::Stat),
            collected_at: Some(now.plus_minutes(-20)),
            ..RawSubmission::default()
        }
    }

    #[test]
    fn a_good_submission_validates_with_the_shortest_stability_as_deadline() {
        let now = Timestamp::from_millis(1_000_000_000_000);
        let req = NewRequest::validate(&raw(now), &catalogue(), now).unwrap();
        assert_eq!(req.deadline(&catalogue()), now.plus_minutes(-20 + 240));
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let now = Timestamp::from_millis(1_000_000_000_000);
        let mut r = raw(now);
        r.nhs_number = "9434765918".into();
        r.tests = vec!["K".into(), "K".into()];
        r.priority = None;
        r.clinical_note = "x".repeat(501);
        let err = NewRequest::validate(&r, &catalogue(), now).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["patient.nhs_number", "tests", "priority", "clinical_note"]
        );
    }

    #[test]
    fn collection_in_the_future_or_past_stability_is_rejected() {
        let now = Timestamp::from_millis(1_000_000_000_000);
        let mut r = raw(now);
        r.collected_at = Some(now.plus_minutes(10));
        assert_eq!(
            NewRequest::validate(&r, &catalogue(), now).unwrap_err().0[0].field,
            "collected_at"
        );
        r.collected_at = Some(now.plus_minutes(-5 * 60));
        assert_eq!(
            NewRequest::validate(&r, &catalogue(), now).unwrap_err().0[0].field,
            "collected_at"
        );
    }

    #[test]
    fn unknown_and_empty_tests_are_rejected() {
        let now = Timestamp::from_millis(1_000_000_000_000);
        let mut r = raw(now);
        r.tests = vec![];
        assert!(NewRequest::validate(&r, &catalogue(), now).is_err());
        r.tests = vec!["NOPE".into()];
        assert!(NewRequest::validate(&r, &catalogue(), now).is_err());
    }

    #[test]
    fn birth_dates_are_checked() {
        assert!(parse_birth_date("1981-02-29").is_err());
        assert!(parse_birth_date("1984-02-29").is_ok());
        assert!(parse_birth_date("84-02-29").is_err());
        assert!(parse_birth_date("").is_ok());
        // The old hand-written checks' edges, kept.
        for good in ["2000-02-29", "1900-01-01", "2100-12-31", "1970-12-31"] {
            assert!(parse_birth_date(good).is_ok(), "{good}");
        }
        for bad in [
            "1900-02-29",
            "1899-12-31",
            "2101-01-01",
            "1984-04-31",
            "1984-13-01",
            "1984-00-10",
            "1984-01-00",
            "1984-2-29",
            "1984-02-9",
            "01984-02-29",
            "+1984-02-29",
            "1984/02/29",
            "1984-02-29T00:00",
            "19840229",
            " 1984-02-29",
        ] {
            assert!(parse_birth_date(bad).is_err(), "{bad}");
        }
    }
}
