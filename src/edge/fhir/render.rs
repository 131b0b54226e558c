//! Requests out: one labaid request as the FHIR resources a trust reads (Task, ServiceRequest,
//! Patient, Specimen, and once resulted a DiagnosticReport with its Observations). Every resource
//! of a request shares the request's id; the version is the request's last change.

use serde_json::{Map, Value, json};

use super::codes::Codes;
use super::ingest::{NHS_NUMBER, V2_0203};
use super::instant::{format_instant, millis};
use crate::proto::{self, ObservationFlag, RequestState};

/// ODS codes as a FHIR identifier system.
pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// labaid's own request states, carried in Task.businessStatus: a URN, as labaid owns no web
/// host to name them under.
pub const STATE_SYSTEM: &str = "urn:labaid:request-state";
/// The trust's order numbers, as labaid holds them (with the trust as assigner).
pub const ORDER_NUMBER: &str = "urn:labaid:order-number";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const UCUM: &str = "http://unitsofmeasure.org";

/// The Task status of a request state.
pub fn task_status(state: RequestState) -> &'static str {
    match state {
        RequestState::Unspecified | RequestState::Queued | RequestState::Offered => "requested",
        RequestState::Accepted => "accepted",
        RequestState::Received => "in-progress",
        RequestState::Resulted => "completed",
        RequestState::Failed | RequestState::Expired => "failed",
        RequestState::Cancelled => "cancelled",
    }
}

/// The request states a Task status stands for (search), or None when it is not one labaid uses.
pub fn states_of_task_status(status: &str) -> Option<&'static [RequestState]> {
    Some(match status {
        "requested" => &[RequestState::Queued, RequestState::Offered],
        "accepted" => &[RequestState::Accepted],
        "in-progress" => &[RequestState::Received],
        "completed" => &[RequestState::Resulted],
        "failed" => &[RequestState::Failed, RequestState::Expired],
        "cancelled" => &[RequestState::Cancelled],
        _ => return None,
    })
}

fn state_of(r: &proto::Request) -> RequestState {
    RequestState::try_from(r.state).unwrap_or(RequestState::Unspecified)
}

fn state_name(state: RequestState) -> &'static str {
    match state {
        RequestState::Unspecified => "unknown",
        RequestState::Queued => "queued",
        RequestState::Offered => "offered",
        RequestState::Accepted => "accepted",
        RequestState::Received => "received",
        RequestState::Resulted => "resulted",
        RequestState::Failed => "failed",
        RequestState::Expired => "expired",
        RequestState::Cancelled => "cancelled",
    }
}

fn priority(r: &proto::Request) -> &'static str {
    match proto::Priority::try_from(r.priority).unwrap_or(proto::Priority::Routine) {
        proto::Priority::Stat => "stat",
        proto::Priority::Asap => "asap",
        proto::Priority::Urgent => "urgent",
        proto::Priority::Routine | proto::Priority::Unspecified => "routine",
    }
}

/// The version of every resource of a request: the millisecond of its last change.
pub fn version(r: &proto::Request) -> String {
    r.updated_at.as_ref().map_or(0, millis).to_string()
}

/// When the request last changed, as a FHIR instant.
pub fn last_updated(r: &proto::Request) -> String {
    instant(r.updated_at.as_ref())
}

fn instant(t: Option<&prost_types::Timestamp>) -> String {
    t.map(format_instant).unwrap_or_default()
}

fn meta(r: &proto::Request) -> Value {
    json!({ "versionId": version(r), "lastUpdated": last_updated(r) })
}

fn org(ods: &str) -> Value {
    json!({ "identifier": { "system": ODS, "value": ods }, "display": ods })
}

fn reference(kind: &str, id: &str) -> Value {
    json!({ "reference": format!("{kind}/{id}") })
}

/// The order number as the ServiceRequest's placer identifier.
fn placer(r: &proto::Request) -> Value {
    json!({
        "type": { "coding": [{ "system": V2_0203, "code": "PLAC", "display": "Placer Identifier" }] },
        "system": ORDER_NUMBER,
        "value": r.order_number,
        "assigner": org(&r.trust),
    })
}

/// The Patient of a request.
pub fn patient(r: &proto::Request) -> Value {
    let p = r.patient.clone().unwrap_or_default();
    let mut out = json!({
        "resourceType": "Patient",
        "id": r.id,
        "meta": meta(r),
        "identifier": [{ "system": NHS_NUMBER, "value": p.nhs_number }],
    });
    let mut name = Map::new();
    if !p.family_name.is_empty() {
        name.insert("family".into(), json!(p.family_name));
    }
    if !p.given_name.is_empty() {
        name.insert("given".into(), json!([p.given_name]));
    }
    if !name.is_empty() {
        out["name"] = json!([name]);
    }
    if !p.birth_date.is_empty() {
        out["birthDate"] = json!(p.birth_date);
    }
    out
}

/// The Specimen of a request: its collection time.
pub fn specimen(r: &proto::Request) -> Value {
    json!({
        "resourceType": "Specimen",
        "id": r.id,
        "meta": meta(r),
        "status": "available",
        "subject": reference("Patient", &r.id),
        "request": [reference("ServiceRequest", &r.id)],
        "collection": { "collectedDateTime": instant(r.collected_at.as_ref()) },
    })
}

/// The ServiceRequest of a request.
pub fn service_request(r: &proto::Request, codes: &Codes) -> Value {
    let status = match state_of(r) {
        RequestState::Resulted => "completed",
        RequestState::Cancelled | RequestState::Failed | RequestState::Expired => "revoked",
        _ => "active",
    };
    let mut out = json!({
        "resourceType": "ServiceRequest",
        "id": r.id,
        "meta": meta(r),
        "identifier": [placer(r)],
        "status": status,
        "intent": "order",
        "category": [{ "coding": [{
            "system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"
        }]}],
        "priority": priority(r),
        "code": codes.concept(&r.tests),
        "subject": reference("Patient", &r.id),
        "specimen": [reference("Specimen", &r.id)],
        "authoredOn": instant(r.submitted_at.as_ref()),
        "requester": org(&r.trust),
    });
    if !r.lab.is_empty() {
        out["performer"] = json!([org(&r.lab)]);
    }
    if !r.clinical_note.is_empty() {
        out["note"] = json!([{ "text": r.clinical_note }]);
    }
    out
}

/// Why a request is where it is, for Task.statusReason.
fn status_reason(r: &proto::Request) -> Option<String> {
    let detail = (!r.status_detail.is_empty()).then_some(r.status_detail.as_str());
    let reason = match state_of(r) {
        RequestState::Expired => "expired: recollect".to_string(),
        RequestState::Failed => {
            let why = proto::FailureReason::try_from(r.failure_reason)
                .map(|f| {
                    f.as_str_name()
                        .trim_start_matches("FAILURE_REASON_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| "other".into());
            format!("failed ({why}): recollect")
        }
        _ => return detail.map(str::to_string),
    };
    Some(match detail {
        Some(d) => format!("{reason}; {d}"),
        None => reason,
    })
}

/// The Task of a request: its life cycle.
pub fn task(r: &proto::Request) -> Value {
    let state = state_of(r);
    let mut out = json!({
        "resourceType": "Task",
        "id": r.id,
        "meta": meta(r),
        "identifier": [placer(r)],
        "status": task_status(state),
        "businessStatus": {
            "coding": [{ "system": STATE_SYSTEM, "code": state_name(state) }],
            "text": state_name(state),
        },
        "intent": "order",
        "priority": priority(r),
        "focus": reference("ServiceRequest", &r.id),
        "for": reference("Patient", &r.id),
        "authoredOn": instant(r.submitted_at.as_ref()),
        "lastModified": last_updated(r),
        "requester": org(&r.trust),
        "restriction": { "period": { "end": instant(r.sample_deadline.as_ref()) } },
    });
    if let Some(reason) = status_reason(r) {
        out["statusReason"] = json!({ "text": reason });
    }
    if !r.lab.is_empty() {
        out["owner"] = org(&r.lab);
    }
    if state == RequestState::Resulted {
        out["output"] = json!([{
            "type": { "text": "DiagnosticReport" },
            "valueReference": reference("DiagnosticReport", &r.id),
        }]);
    }
    out
}

/// The DiagnosticReport of a resulted request, or None before results.
pub fn diagnostic_report(r: &proto::Request, codes: &Codes) -> Option<Value> {
    if state_of(r) != RequestState::Resulted {
        return None;
    }
    let results: Vec<Value> = (1..=r.results.len())
        .map(|n| reference("Observation", &observation_id(&r.id, n)))
        .collect();
    let mut out = json!({
        "resourceType": "DiagnosticReport",
        "id": r.id,
        "meta": meta(r),
        "basedOn": [reference("ServiceRequest", &r.id)],
        "status": "final",
        "category": [lab_category()],
        "code": codes.concept(&r.tests),
        "subject": reference("Patient", &r.id),
        "effectiveDateTime": instant(r.collected_at.as_ref()),
        "issued": last_updated(r),
        "specimen": [reference("Specimen", &r.id)],
        "result": results,
    });
    if !r.lab.is_empty() {
        out["performer"] = json!([org(&r.lab)]);
    }
    Some(out)
}

fn lab_category() -> Value {
    json!({ "coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "laboratory",
    }]})
}

/// The id of a request's `n`th observation (from 1).
pub fn observation_id(request: &str, n: usize) -> String {
    format!("{request}-{n}")
}

/// The Observations of a resulted request.
pub fn observations(r: &proto::Request, codes: &Codes) -> Vec<Value> {
    if state_of(r) != RequestState::Resulted {
        return Vec::new();
    }
    r.results
        .iter()
        .enumerate()
        .map(|(i, o)| observation(r, i + 1, o, codes))
        .collect()
}

fn observation(r: &proto::Request, n: usize, o: &proto::Observation, codes: &Codes) -> Value {
    let mut code = json!({ "coding": codes.codings(&o.test) });
    code["text"] = json!(if o.analyte.is_empty() {
        o.test.clone()
    } else {
        format!("{} {}", o.test, o.analyte)
    });
    let mut out = json!({
        "resourceType": "Observation",
        "id": observation_id(&r.id, n),
        "meta": meta(r),
        "basedOn": [reference("ServiceRequest", &r.id)],
        "status": "final",
        "category": [lab_category()],
        "code": code,
        "subject": reference("Patient", &r.id),
        "effectiveDateTime": instant(r.collected_at.as_ref()),
        "issued": last_updated(r),
        "specimen": reference("Specimen", &r.id),
    });
    match o.value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => {
            let mut q = json!({ "value": v });
            if !o.unit.is_empty() {
                q["unit"] = json!(o.unit);
                q["system"] = json!(UCUM);
                q["code"] = json!(o.unit);
            }
            out["valueQuantity"] = q;
        }
        _ => out["valueString"] = json!(o.value),
    }
    if !o.reference_range.is_empty() {
        out["referenceRange"] = json!([reference_range(&o.reference_range, &o.unit)]);
    }
    let flag = ObservationFlag::try_from(o.flag).unwrap_or(ObservationFlag::Unspecified);
    if let Some((code, display)) = interpretation(flag) {
        out["interpretation"] = json!([{
            "coding": [{ "system": INTERPRETATION, "code": code, "display": display }]
        }]);
    }
    out
}

/// `3.5-5.3` as low and high quantities; anything else as text.
fn reference_range(raw: &str, unit: &str) -> Value {
    let quantity = |v: f64| {
        let mut q = json!({ "value": v });
        if !unit.is_empty() {
            q["unit"] = json!(unit);
            q["system"] = json!(UCUM);
            q["code"] = json!(unit);
        }
        q
    };
    let bounds = raw.trim().split_once('-').and_then(|(lo, hi)| {
        Some((
            lo.trim().parse::<f64>().ok()?,
            hi.trim().parse::<f64>().ok()?,
        ))
    });
    match bounds {
        Some((low, high)) => json!({ "low": quantity(low), "high": quantity(high), "text": raw }),
        None => json!({ "text": raw }),
    }
}

fn interpretation(flag: ObservationFlag) -> Option<(&'static str, &'static str)> {
    Some(match flag {
        ObservationFlag::Unspecified => return None,
        ObservationFlag::Normal => ("N", "Normal"),
        ObservationFlag::Low => ("L", "Low"),
        ObservationFlag::High => ("H", "High"),
        ObservationFlag::Abnormal => ("A", "Abnormal"),
        ObservationFlag::CriticalLow => ("LL", "Critical low"),
        ObservationFlag::CriticalHigh => ("HH", "Critical high"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_status_searches_back_to_its_states() {
        for state in [
            RequestState::Queued,
            RequestState::Offered,
            RequestState::Accepted,
            RequestState::Received,
            RequestState::Resulted,
            RequestState::Failed,
            RequestState::Expired,
            RequestState::Cancelled,
        ] {
            let states = states_of_task_status(task_status(state)).expect("a searchable status");
            assert!(states.contains(&state), "{state:?}");
        }
    }

    #[test]
    fn a_critical_potassium_reads_as_a_quantity_with_its_range_and_hh() {
        let r = proto::Request {
            id: "r1".into(),
            state: RequestState::Resulted as i32,
            tests: vec!["K".into()],
            results: vec![proto::Observation {
                test: "K".into(),
                value: "7.1".into(),
                unit: "mmol/L".into(),
                reference_range: "3.5-5.3".into(),
                flag: ObservationFlag::CriticalHigh as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let obs = observations(
            &r,
            &Codes::new(&[], crate::edge::fhir::codes::DEFAULT_CATALOGUE_SYSTEM),
        );
        assert_eq!(obs[0]["valueQuantity"]["value"], 7.1);
        assert_eq!(obs[0]["valueQuantity"]["code"], "mmol/L");
        assert_eq!(obs[0]["referenceRange"][0]["high"]["value"], 5.3);
        assert_eq!(obs[0]["interpretation"][0]["coding"][0]["code"], "HH");
        let report = diagnostic_report(
            &r,
            &Codes::new(&[], crate::edge::fhir::codes::DEFAULT_CATALOGUE_SYSTEM),
        )
        .unwrap();
        assert_eq!(report["result"][0]["reference"], "Observation/r1-1");
    }
}
