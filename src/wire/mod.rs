//! Conversions between the domain and the labaid.v1 messages, in one place that the server and
//! the client share, including what each side may see.

pub mod codec;
pub mod frames;

use crate::domain::{
    FailureReason, LabStatus, Observation, ObservationFlag, Priority, RawSubmission, Request,
    RequestState, TestDef, Timestamp,
};
use crate::error::Error;
use crate::proto;
use crate::routing::{Event, EventKind, JobEventKind, LabState, TrustEventKind};

/// A domain instant as a protobuf timestamp.
pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.millis().div_euclid(1000),
        nanos: (t.millis().rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as a domain instant (sub-millisecond precision is dropped).
pub fn from_ts(t: &prost_types::Timestamp) -> Timestamp {
    Timestamp::from_millis(
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000),
    )
}

pub fn priority_from(p: i32) -> Option<Priority> {
    match proto::Priority::try_from(p).ok()? {
        proto::Priority::Routine => Some(Priority::Routine),
        proto::Priority::Urgent => Some(Priority::Urgent),
        proto::Priority::Asap => Some(Priority::Asap),
        proto::Priority::Stat => Some(Priority::Stat),
        proto::Priority::Unspecified => None,
    }
}

pub fn priority_to(p: Priority) -> proto::Priority {
    match p {
        Priority::Routine => proto::Priority::Routine,
        Priority::Urgent => proto::Priority::Urgent,
        Priority::Asap => proto::Priority::Asap,
        Priority::Stat => proto::Priority::Stat,
    }
}

pub fn state_from(s: i32) -> Option<RequestState> {
    Some(match proto::RequestState::try_from(s).ok()? {
        proto::RequestState::Queued => RequestState::Queued,
        proto::RequestState::Offered => RequestState::Offered,
        proto::RequestState::Accepted => RequestState::Accepted,
        proto::RequestState::Received => RequestState::Received,
        proto::RequestState::Resulted => RequestState::Resulted,
        proto::RequestState::Failed => RequestState::Failed,
        proto::RequestState::Expired => RequestState::Expired,
        proto::RequestState::Cancelled => RequestState::Cancelled,
        proto::RequestState::Unspecified => return None,
    })
}

pub fn state_to(s: RequestState) -> proto::RequestState {
    match s {
        RequestState::Queued => proto::RequestState::Queued,
        RequestState::Offered => proto::RequestState::Offered,
        RequestState::Accepted => proto::RequestState::Accepted,
        RequestState::Received => proto::RequestState::Received,
        RequestState::Resulted => proto::RequestState::Resulted,
        RequestState::Failed => proto::RequestState::Failed,
        RequestState::Expired => proto::RequestState::Expired,
        RequestState::Cancelled => proto::RequestState::Cancelled,
    }
}

pub fn failure_from(r: i32) -> Option<FailureReason> {
    Some(match proto::FailureReason::try_from(r).ok()? {
        proto::FailureReason::Haemolysed => FailureReason::Haemolysed,
        proto::FailureReason::Insufficient => FailureReason::Insufficient,
        proto::FailureReason::Unlabelled => FailureReason::Unlabelled,
        proto::FailureReason::Other => FailureReason::Other,
        proto::FailureReason::Unspecified => return None,
    })
}

fn failure_to(r: Option<FailureReason>) -> i32 {
    (match r {
        None => proto::FailureReason::Unspecified,
        Some(FailureReason::Haemolysed) => proto::FailureReason::Haemolysed,
        Some(FailureReason::Insufficient) => proto::FailureReason::Insufficient,
        Some(FailureReason::Unlabelled) => proto::FailureReason::Unlabelled,
        Some(FailureReason::Other) => proto::FailureReason::Other,
    }) as i32
}

pub fn status_from(s: i32) -> Option<LabStatus> {
    Some(match proto::LabStatus::try_from(s).ok()? {
        proto::LabStatus::Online => LabStatus::Online,
        proto::LabStatus::Draining => LabStatus::Draining,
        proto::LabStatus::Offline => LabStatus::Offline,
        proto::LabStatus::Unspecified => return None,
    })
}

pub fn status_to(s: LabStatus) -> proto::LabStatus {
    match s {
        LabStatus::Online => proto::LabStatus::Online,
        LabStatus::Draining => proto::LabStatus::Draining,
        LabStatus::Offline => proto::LabStatus::Offline,
    }
}

pub fn flag_from(f: i32) -> Option<ObservationFlag> {
    Some(match proto::ObservationFlag::try_from(f).ok()? {
        proto::ObservationFlag::Normal => ObservationFlag::Normal,
        proto::ObservationFlag::Low => ObservationFlag::Low,
        proto::ObservationFlag::High => ObservationFlag::High,
        proto::ObservationFlag::Abnormal => ObservationFlag::Abnormal,
        proto::ObservationFlag::CriticalLow => ObservationFlag::CriticalLow,
        proto::ObservationFlag::CriticalHigh => ObservationFlag::CriticalHigh,
        proto::ObservationFlag::Unspecified => return None,
    })
}

pub fn flag_to(f: ObservationFlag) -> proto::ObservationFlag {
    match f {
        ObservationFlag::Normal => proto::ObservationFlag::Normal,
        ObservationFlag::Low => proto::ObservationFlag::Low,
        ObservationFlag::High => proto::ObservationFlag::High,
        ObservationFlag::Abnormal => proto::ObservationFlag::Abnormal,
        ObservationFlag::CriticalLow => proto::ObservationFlag::CriticalLow,
        ObservationFlag::CriticalHigh => proto::ObservationFlag::CriticalHigh,
    }
}

fn observation_to(o: &Observation) -> proto::Observation {
    proto::Observation {
        test: o.test.to_string(),
        analyte: o.analyte.clone(),
        value: o.value.clone(),
        unit: o.unit.clone(),
        reference_range: o.reference_range.clone(),
        flag: flag_to(o.flag) as i32,
    }
}

/// A timestamp a client sent, refused when it is not one protobuf allows: `nanos` must lie in
/// `0..1_000_000_000` and `seconds` between 0001-01-01 and 9999-12-31 (google.protobuf.Timestamp).
pub fn checked_ts(t: &prost_types::Timestamp, field: &str) -> Result<Timestamp, Error> {
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            &format!("{field}.nanos"),
            "must be from 0 to 999,999,999",
        ));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(Error::invalid(
            &format!("{field}.seconds"),
            "must be between 0001-01-01 and 9999-12-31",
        ));
    }
    Ok(from_ts(t))
}

/// A submission message as raw domain input; the domain validates its content, and a
/// timestamp protobuf itself does not allow is refused here.
pub fn raw_submission(m: proto::SubmitRequestRequest) -> Result<RawSubmission, Error> {
    let collected_at = match &m.collected_at {
        Some(t) => Some(checked_ts(t, "collected_at")?),
        None => None,
    };
    let patient = m.patient.unwrap_or_default();
    Ok(RawSubmission {
        order_number: m.order_number,
        nhs_number: patient.nhs_number,
        family_name: patient.family_name,
        given_name: patient.given_name,
        birth_date: patient.birth_date,
        tests: m.tests,
        priority: priority_from(m.priority),
        collected_at,
        clinical_note: m.clinical_note,
    })
}

fn patient_to(r: &Request) -> proto::Patient {
    let p = &r.submission.patient;
    proto::Patient {
        nhs_number: p.nhs_number.as_str().to_string(),
        family_name: p.family_name.as_str().to_string(),
        given_name: p.given_name.as_str().to_string(),
        birth_date: p.birth_date.clone(),
    }
}

/// The request's test codes as text.
pub fn test_codes(r: &Request) -> Vec<String> {
    r.submission
        .tests
        .codes()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A request as its trust sees it: everything.
pub fn request_to(r: &Request) -> proto::Request {
    proto::Request {
        id: r.id.to_string(),
        order_number: r.submission.order_number.as_str().to_string(),
        trust: r.trust.to_string(),
        patient: Some(patient_to(r)),
        tests: test_codes(r),
        priority: priority_to(r.submission.priority) as i32,
        collected_at: Some(ts(r.submission.collected_at)),
        sample_deadline: Some(ts(r.deadline)),
        state: state_to(r.state) as i32,
        lab: r.lab.as_ref().map(ToString::to_string).unwrap_or_default(),
        submitted_at: Some(ts(r.submitted_at)),
        updated_at: Some(ts(r.updated_at)),
        predicted_result_at: r.predicted_result_at.map(ts),
        results: r.results.iter().map(observation_to).collect(),
        failure_reason: failure_to(r.failure),
        clinical_note: r.submission.clinical_note.as_str().to_string(),
        status_detail: r.status_detail.clone(),
    }
}

/// A request as the lab holding it sees it: patient identifiers only once it has accepted.
pub fn job_to(r: &Request) -> proto::Job {
    let visible = r.patient_visible_to_lab();
    proto::Job {
        id: r.id.to_string(),
        trust: r.trust.to_string(),
        order_number: r.submission.order_number.as_str().to_string(),
        patient: visible.then(|| patient_to(r)),
        tests: test_codes(r),
        priority: priority_to(r.submission.priority) as i32,
        collected_at: Some(ts(r.submission.collected_at)),
        sample_deadline: Some(ts(r.deadline)),
        state: state_to(r.state) as i32,
        lease_expires_at: r.lease_expires_at.map(ts),
        predicted_result_at: r.predicted_result_at.map(ts),
        transport_minutes: r.transport_minutes,
        results: r.results.iter().map(observation_to).collect(),
        failure_reason: failure_to(r.failure),
        clinical_note: if visible {
            r.submission.clinical_note.as_str().to_string()
        } else {
            String::new()
        },
        status_detail: r.status_detail.clone(),
    }
}

/// A trust's event of a kind in `kinds`, or `None` (for a lab's event too).
pub fn request_event_to(e: &Event, kinds: KindFilter) -> Option<proto::RequestEvent> {
    let EventKind::Trust(kind) = e.kind else {
        return None;
    };
    let kind = match kind {
        TrustEventKind::StateChanged => proto::RequestEventKind::StateChanged,
        TrustEventKind::Resulted => proto::RequestEventKind::Resulted,
        TrustEventKind::CriticalResult => proto::RequestEventKind::CriticalResult,
        TrustEventKind::Expired => proto::RequestEventKind::Expired,
        TrustEventKind::LabOffline => proto::RequestEventKind::LabOffline,
        TrustEventKind::Failed => proto::RequestEventKind::Failed,
    };
    // Checked before rendering: a left-out event costs no copy of its request.
    if !kinds.admits(kind as i32) {
        return None;
    }
    Some(proto::RequestEvent {
        sequence: e.sequence,
        time: Some(ts(e.time)),
        kind: kind as i32,
        request: Some(request_to(&e.request)),
    })
}

/// A lab's event of a kind in `kinds`, or `None` (for a trust's event too).
pub fn job_event_to(e: &Event, kinds: KindFilter) -> Option<proto::JobEvent> {
    let EventKind::Lab(kind) = e.kind else {
        return None;
    };
    let kind = match kind {
        JobEventKind::Offered => proto::JobEventKind::Offered,
        JobEventKind::Accepted => proto::JobEventKind::Accepted,
        JobEventKind::Declined => proto::JobEventKind::Declined,
        JobEventKind::LeaseExpired => proto::JobEventKind::LeaseExpired,
        JobEventKind::Withdrawn => proto::JobEventKind::Withdrawn,
        JobEventKind::Cancelled => proto::JobEventKind::Cancelled,
        JobEventKind::Received => proto::JobEventKind::Received,
        JobEventKind::Resulted => proto::JobEventKind::Resulted,
        JobEventKind::Failed => proto::JobEventKind::Failed,
    };
    if !kinds.admits(kind as i32) {
        return None;
    }
    Some(proto::JobEvent {
        sequence: e.sequence,
        time: Some(ts(e.time)),
        kind: kind as i32,
        job: Some(job_to(&e.request)),
    })
}

/// The event kinds a watcher asked for, as a set of proto enum values; empty asks for every kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindFilter(u32);

impl KindFilter {
    /// Validates a `WatchRequestEventsRequest.kinds`.
    pub fn request_kinds(values: &[i32]) -> Result<Self, Error> {
        Self::parse(values, |v| proto::RequestEventKind::try_from(v).is_ok())
    }

    /// Validates a `WatchOffersRequest.kinds`.
    pub fn job_kinds(values: &[i32]) -> Result<Self, Error> {
        Self::parse(values, |v| proto::JobEventKind::try_from(v).is_ok())
    }

    fn parse(values: &[i32], named: impl Fn(i32) -> bool) -> Result<Self, Error> {
        values.iter().try_fold(Self(0), |set, &v| {
            // 0 is UNSPECIFIED, never sent, so asking for it is a mistake, not "every kind".
            if (1..32).contains(&v) && named(v) {
                Ok(Self(set.0 | 1 << v))
            } else {
                Err(Error::invalid("kinds", format!("{v} is not an event kind")))
            }
        })
    }

    fn admits(self, kind: i32) -> bool {
        self.0 == 0 || self.0 & (1 << kind) != 0
    }
}

/// Capacity rows of a lab, in test-code order.
pub fn capacity_to(lab: &LabState) -> Vec<proto::TestCapacity> {
    lab.slots
        .iter()
        .map(|(test, slot)| proto::TestCapacity {
            test: test.to_string(),
            capacity: slot.capacity,
            in_flight: slot.in_flight,
        })
        .collect()
}

/// A lab as the directory shows it.
pub fn lab_to(lab: &LabState) -> proto::Lab {
    proto::Lab {
        ods: lab.config.ods.to_string(),
        name: lab.config.name.clone(),
        status: status_to(lab.status) as i32,
        tests: capacity_to(lab),
        agreements: lab
            .config
            .agreements
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// A catalogue entry.
pub fn test_to(t: &TestDef) -> proto::TestDefinition {
    proto::TestDefinition {
        code: t.code.to_string(),
        name: t.name.clone(),
        discipline: t.discipline.clone(),
        specimen: t.specimen.clone(),
        stability_minutes: t.stability_minutes,
        turnaround_minutes: t.turnaround_minutes,
        unit: t.unit.clone().unwrap_or_default(),
        critical_low: t.critical_low,
        critical_high: t.critical_high,
        loinc: t.loinc.clone().unwrap_or_default(),
        snomed: t.snomed.clone().unwrap_or_default(),
    }
}
