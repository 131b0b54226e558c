//! A trust's request for blood tests: its validated submission and the record the broker keeps.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    Catalogue, MINUTE_MS, NhsNumber, OdsCode, OrderNumber, RequestId, TestCode, Timestamp,
    Violations,
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

/// Where a request is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RequestState {
    /// Waiting for an eligible lab.
    Queued,
    /// Offered to one lab under a lease.
    Offered,
    /// Accepted by the lab.
    Accepted,
    /// The sample arrived at the lab.
    Received,
    /// Final: results posted.
    Resulted,
    /// Final: the sample could not be used.
    Failed,
    /// Final: no lab could finish before the sample deadline.
    Expired,
    /// Final: cancelled by the trust.
    Cancelled,
}

impl RequestState {
    /// Every state, in life-cycle order.
    pub const ALL: [RequestState; 8] = [
        Self::Queued,
        Self::Offered,
        Self::Accepted,
        Self::Received,
        Self::Resulted,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    /// True for QUEUED and OFFERED: no lab has taken the sample on, so it may still expire.
    pub fn can_expire(self) -> bool {
        matches!(self, Self::Queued | Self::Offered)
    }

    /// True for RESULTED, FAILED, EXPIRED and CANCELLED.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Resulted | Self::Failed | Self::Expired | Self::Cancelled
        )
    }

    /// Lower-case name, e.g. `offered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Offered => "offered",
            Self::Accepted => "accepted",
            Self::Received => "received",
            Self::Resulted => "resulted",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| {
                "must be one of queued, offered, accepted, received, resulted, failed, expired, cancelled".into()
            })
    }
}

/// Why a lab could not use a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// Haemolysed.
    Haemolysed,
    /// Too little sample.
    Insufficient,
    /// Unlabelled or mislabelled.
    Unlabelled,
    /// Another reason, explained in the detail.
    Other,
}

impl FailureReason {
    /// Lower-case name, e.g. `haemolysed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Haemolysed => "haemolysed",
            Self::Insufficient => "insufficient",
            Self::Unlabelled => "unlabelled",
            Self::Other => "other",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        [
            Self::Haemolysed,
            Self::Insufficient,
            Self::Unlabelled,
            Self::Other,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| "must be one of haemolysed, insufficient, unlabelled, other".into())
    }
}

/// Whether a lab takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabStatus {
    /// Takes new offers.
    Online,
    /// Keeps its work, takes no new offers.
    Draining,
    /// Takes no new offers; open offers are withdrawn.
    Offline,
}

impl LabStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Draining => "draining",
            Self::Offline => "offline",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        [Self::Online, Self::Draining, Self::Offline]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| "must be one of online, draining, offline".into())
    }
}

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

/// Checks a YYYY-MM-DD date of birth; empty is allowed.
fn parse_birth_date(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let err = || "must be a date as YYYY-MM-DD".to_string();
    let parts: Vec<&str> = raw.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(err());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(err());
    }
    let (y, m, d): (u32, u32, u32) = (
        y.parse().map_err(|_| err())?,
        m.parse().map_err(|_| err())?,
        d.parse().map_err(|_| err())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(err()),
    };
    if !(1900..=2100).contains(&y) || d == 0 || d > days {
        return Err(err());
    }
    Ok(raw.to_string())
}

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

/// Why a lab will not be offered a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExclusionReason {
    /// The lab declined.
    Declined,
    /// The lease ran out.
    LeaseExpired,
    /// A coordinator took the job away (the lab went offline before the sample arrived).
    Reassigned,
}

/// A lab that will not be offered this request again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// The lab.
    pub lab: OdsCode,
    /// Why.
    pub reason: ExclusionReason,
    /// When.
    pub at: Timestamp,
}

/// The broker's record of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Broker-assigned id.
    pub id: RequestId,
    /// Order of submission across the broker; used for listing and tie-breaks.
    pub ordinal: u64,
    /// Requesting trust.
    pub trust: OdsCode,
    /// What the trust submitted.
    pub submission: NewRequest,
    /// When the sample spoils.
    pub deadline: Timestamp,
    /// The latest moment some capable lab could still finish in time; past it the request expires.
    pub expire_at: Timestamp,
    /// Current state.
    pub state: RequestState,
    /// The lab that holds (or last held) the request.
    pub lab: Option<OdsCode>,
    /// When the broker accepted the submission.
    pub submitted_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// While OFFERED: when the lease runs out.
    pub lease_expires_at: Option<Timestamp>,
    /// Predicted result time at the holding lab.
    pub predicted_result_at: Option<Timestamp>,
    /// Courier minutes from the trust to the holding lab.
    pub transport_minutes: u32,
    /// Results once RESULTED.
    pub results: Vec<Observation>,
    /// Reason once FAILED.
    pub failure: Option<FailureReason>,
    /// Last explanation of a change.
    pub status_detail: String,
    /// Labs that will not be offered this request again.
    pub excluded: Vec<Exclusion>,
    /// When the holding lab accepted it.
    pub accepted_at: Option<Timestamp>,
    /// How many offers have been made for it.
    pub offers: u32,
}

impl Request {
    /// True when `lab` was excluded for this request.
    pub fn excludes(&self, lab: &OdsCode) -> bool {
        self.excluded.iter().any(|e| &e.lab == lab)
    }

    /// Whether `lab` may see this request as a job: it holds (or last held) it.
    pub fn is_job_of(&self, lab: &OdsCode) -> bool {
        self.lab.as_ref() == Some(lab)
    }

    /// Whether the lab that holds the job may see patient identifiers: only once it has accepted.
    pub fn patient_visible_to_lab(&self) -> bool {
        self.accepted_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        let def = |code: &str, stability_h: u32, tat: u32| super::super::TestDef {
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
    }

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
