//! `GET /metadata`: the CapabilityStatement, listing exactly the interactions, search
//! parameters and includes this facade serves, and nothing it does not.

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::State;
use super::handlers::fhir;

fn resource(kind: &str, interactions: &[&str], params: &[(&str, &str, &str)]) -> Value {
    let mut out = json!({
        "type": kind,
        "interaction": interactions.iter().map(|i| json!({ "code": i })).collect::<Vec<_>>(),
        "versioning": "versioned",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
    });
    if !params.is_empty() {
        out["searchParam"] = params
            .iter()
            .map(|(name, kind, doc)| json!({ "name": name, "type": kind, "documentation": doc }))
            .collect();
    }
    out
}

/// The CapabilityStatement of a facade at `base` whose catalogue codes are of
/// `catalogue_system`, taking client certificates when `certificates` is set.
pub(super) fn statement(base: &str, catalogue_system: &str, certificates: bool) -> Value {
    let mut task = resource(
        "Task",
        &["read", "patch", "search-type"],
        &[
            (
                "status",
                "token",
                "requested, accepted, in-progress, completed, failed, cancelled; comma for any of several",
            ),
            (
                "_lastUpdated",
                "date",
                "gt, ge, lt or le with an instant or a date; repeat for a range",
            ),
            (
                "_count",
                "number",
                "page size, 1 to 1000 (default 50); follow the next link for more",
            ),
        ],
    );
    task["documentation"] = json!(
        "One Task per labaid request. PATCH takes only a JSON Patch setting /status to cancelled (optionally /statusReason), with If-Match for a conditional cancel."
    );
    let mut report = resource(
        "DiagnosticReport",
        &["read", "search-type"],
        &[(
            "based-on",
            "reference",
            "ServiceRequest/{id}: the report of that order, once resulted",
        )],
    );
    report["searchInclude"] = json!(["DiagnosticReport:result"]);
    let mut service_request = resource("ServiceRequest", &["read", "create"], &[]);
    service_request["documentation"] = json!(format!(
        "create takes a ServiceRequest with its Patient and Specimen contained; the placer identifier is the order number, so posting it again returns the original. code.coding: LOINC (http://loinc.org), SNOMED CT (http://snomed.info/sct) or the labaid catalogue's own codes, system {catalogue_system}, which answers also use."
    ));
    let mut security = json!({
        "cors": false,
        "description": "Send the organisation's labaid bearer token (Authorization: Bearer ...); the broker checks it and shows each trust only its own requests.",
    });
    if certificates {
        security["service"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "Certificates",
            }],
        }]);
        security["description"] = json!(
            "Present the organisation's client certificate (URI SAN urn:ods:<ODS>, from the CA this facade trusts), or send its labaid bearer token (Authorization: Bearer ...), not both. The broker checks the caller and shows each trust only its own requests."
        );
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-06",
        "publisher": "labaid",
        "kind": "instance",
        "software": { "name": "labaid-edge", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "labaid FHIR R4 facade: order blood tests for mutual aid and read their results",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": [
                task,
                service_request,
                resource("Patient", &["read"], &[]),
                resource("Specimen", &["read"], &[]),
                report,
                resource("Observation", &["read"], &[]),
            ],
            "interaction": [{
                "code": "transaction",
                "documentation": "One order: a Patient, a ServiceRequest, a Specimen and a Task, each POSTed.",
            }],
        }],
    })
}

/// `GET /metadata`, open to every caller as FHIR expects.
pub(super) async fn metadata(AxState(edge): AxState<State>) -> Response {
    fhir(
        StatusCode::OK,
        &statement(&edge.base, &edge.catalogue_system, edge.on_behalf.is_some()),
    )
}
