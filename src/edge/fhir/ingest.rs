//! Orders in: a `transaction` Bundle (Patient, ServiceRequest, Specimen, Task) or a
//! ServiceRequest with its Patient and Specimen contained, checked element by element into a
//! labaid submission. Every refusal names the element by FHIRPath.

use serde_json::Value;

use super::codes::{CodeError, Codes};
use super::instant::parse_instant;
use super::outcome::Outcome;
use crate::domain::NhsNumber;
use crate::proto;

/// The NHS number's identifier system.
pub const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// HL7 v2 table 0203, whose `PLAC` marks the placer's identifier.
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// A JSON value and the FHIRPath it was found at.
#[derive(Debug, Clone, Copy)]
struct Node<'a> {
    value: &'a Value,
    path: &'a str,
}

/// Where each submission field came from, to name the element when the broker refuses it.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    patient: String,
    request: String,
    specimen: String,
}

impl Origins {
    /// The FHIRPath of the element a broker field came from.
    pub fn path_of(&self, field: &str) -> String {
        match field {
            "order_number" => format!("{}.identifier", self.request),
            "patient.nhs_number" => format!("{}.identifier", self.patient),
            "patient.family_name" => format!("{}.name.family", self.patient),
            "patient.given_name" => format!("{}.name.given", self.patient),
            "patient.birth_date" => format!("{}.birthDate", self.patient),
            "tests" => format!("{}.code", self.request),
            "priority" => format!("{}.priority", self.request),
            "collected_at" => format!("{}.collection.collectedDateTime", self.specimen),
            "clinical_note" => format!("{}.note", self.request),
            other => format!("{} ({other})", self.request),
        }
    }
}

/// A checked order.
#[derive(Debug)]
pub struct Order {
    /// What is sent to the broker.
    pub submit: proto::SubmitRequestRequest,
    /// Where its fields came from.
    pub origins: Origins,
}

/// Reads a transaction Bundle. Its entries are returned in order with their resource types, so
/// that the response can answer each one.
pub fn transaction(bundle: &Value, codes: &Codes) -> Result<(Order, Vec<String>), Outcome> {
    let root = Node {
        value: bundle,
        path: "Bundle",
    };
    match str_at(root, "resourceType") {
        Some("Bundle") => {}
        other => {
            return Err(Outcome::not_supported(format!(
                "POST / takes a Bundle of type transaction, not {}",
                other.unwrap_or("a resource without resourceType")
            ))
            .at("Bundle.resourceType"));
        }
    }
    match str_at(root, "type") {
        Some("transaction") => {}
        Some(other) => {
            return Err(Outcome::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid",
                format!("Bundle.type is {other:?}; labaid takes only \"transaction\""),
            )
            .at("Bundle.type"));
        }
        None => return Err(Outcome::required("Bundle.type", "Bundle.type is missing")),
    }
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| Outcome::required("Bundle.entry", "the Bundle has no entries"))?;
    let mut found: [Option<(usize, &Value)>; 4] = [None; 4];
    let kinds = ["Patient", "ServiceRequest", "Specimen", "Task"];
    let mut types = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let resource = entry.get("resource").ok_or_else(|| {
            Outcome::required(
                format!("Bundle.entry[{i}].resource"),
                "every entry needs a resource",
            )
        })?;
        let kind = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(slot) = kinds.iter().position(|k| *k == kind) else {
            return Err(Outcome::not_supported(format!(
                "a labaid order holds a Patient, a ServiceRequest, a Specimen and a Task, not {kind:?}"
            ))
            .at(format!("Bundle.entry[{i}].resource.resourceType")));
        };
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .unwrap_or("");
        if method != "POST" {
            return Err(Outcome::value(
                format!("Bundle.entry[{i}].request.method"),
                format!("entries are created with POST, not {method:?}"),
            ));
        }
        if found[slot].replace((i, resource)).is_some() {
            return Err(Outcome::value(
                format!("Bundle.entry[{i}]"),
                format!("the Bundle holds more than one {kind}; one order is one sample"),
            ));
        }
        types.push(kind.to_string());
    }
    let full_url = |i: usize| {
        entries[i]
            .get("fullUrl")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let [patient, request, specimen, task] = found;
    let (pi, patient) = patient
        .ok_or_else(|| Outcome::required("Bundle.entry", "the Bundle has no Patient entry"))?;
    let (ri, request) = request.ok_or_else(|| {
        Outcome::required("Bundle.entry", "the Bundle has no ServiceRequest entry")
    })?;
    let (si, specimen) = specimen
        .ok_or_else(|| Outcome::required("Bundle.entry", "the Bundle has no Specimen entry"))?;
    let paths = [pi, ri, si].map(|i| format!("Bundle.entry[{i}].resource"));
    let rp = Node {
        value: request,
        path: &paths[1],
    };
    expect_reference(rp, "subject", &full_url(pi), "the Patient entry's fullUrl")?;
    expect_specimen(rp, &full_url(si), "the Specimen entry's fullUrl")?;
    if let Some((ti, task)) = task {
        let path = format!("Bundle.entry[{ti}].resource");
        check_task(
            Node {
                value: task,
                path: &path,
            },
            &full_url(ri),
        )?;
    }
    let order = order(
        Node {
            value: patient,
            path: &paths[0],
        },
        rp,
        Node {
            value: specimen,
            path: &paths[2],
        },
        codes,
    )?;
    Ok((order, types))
}

/// Reads a ServiceRequest whose Patient and Specimen are contained (`#id` references).
pub fn service_request(request: &Value, codes: &Codes) -> Result<Order, Outcome> {
    let rp = Node {
        value: request,
        path: "ServiceRequest",
    };
    if str_at(rp, "resourceType") != Some("ServiceRequest") {
        return Err(
            Outcome::not_supported("POST /ServiceRequest takes a ServiceRequest resource")
                .at("ServiceRequest.resourceType"),
        );
    }
    let contained = request
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let find = |kind: &str| {
        contained
            .iter()
            .enumerate()
            .find(|(_, r)| r.get("resourceType").and_then(Value::as_str) == Some(kind))
    };
    let (pi, patient) = find("Patient").ok_or_else(|| {
        Outcome::required(
            "ServiceRequest.contained",
            "contain the Patient (and the Specimen) in the ServiceRequest",
        )
    })?;
    let (si, specimen) = find("Specimen").ok_or_else(|| {
        Outcome::required(
            "ServiceRequest.contained",
            "contain the Specimen (with its collection time) in the ServiceRequest",
        )
    })?;
    let local = |r: &Value| format!("#{}", r.get("id").and_then(Value::as_str).unwrap_or(""));
    expect_reference(rp, "subject", &local(patient), "the contained Patient")?;
    expect_specimen(rp, &local(specimen), "the contained Specimen")?;
    let (pp, sp) = (
        format!("ServiceRequest.contained[{pi}]"),
        format!("ServiceRequest.contained[{si}]"),
    );
    order(
        Node {
            value: patient,
            path: &pp,
        },
        rp,
        Node {
            value: specimen,
            path: &sp,
        },
        codes,
    )
}

fn order(
    patient: Node<'_>,
    request: Node<'_>,
    specimen: Node<'_>,
    codes: &Codes,
) -> Result<Order, Outcome> {
    let nhs_number = nhs_number(patient)?;
    let name = patient.value.pointer("/name/0");
    let family = name
        .and_then(|n| n.get("family"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let given = name
        .and_then(|n| n.pointer("/given/0"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let birth_date = str_at(patient, "birthDate").unwrap_or("").to_string();

    match str_at(request, "status") {
        Some("active") => {}
        Some(other) => {
            return Err(Outcome::value(
                format!("{}.status", request.path),
                format!("a new order is \"active\", not {other:?}"),
            ));
        }
        None => {
            return Err(Outcome::required(
                format!("{}.status", request.path),
                "ServiceRequest.status is missing",
            ));
        }
    }
    match str_at(request, "intent") {
        Some("order" | "original-order") => {}
        other => {
            return Err(Outcome::value(
                format!("{}.intent", request.path),
                format!("labaid takes orders (intent \"order\"), not {other:?}"),
            ));
        }
    }
    let order_number = placer_identifier(request)?;
    let priority = match str_at(request, "priority") {
        None | Some("routine") => proto::Priority::Routine,
        Some("urgent") => proto::Priority::Urgent,
        Some("asap") => proto::Priority::Asap,
        Some("stat") => proto::Priority::Stat,
        Some(other) => {
            return Err(Outcome::code_invalid(
                format!("{}.priority", request.path),
                format!("priority {other:?} is not one of routine, urgent, asap, stat"),
            ));
        }
    };
    let code_path = format!("{}.code", request.path);
    let code = request
        .value
        .get("code")
        .ok_or_else(|| Outcome::required(&code_path, "ServiceRequest.code names no tests"))?;
    let tests = codes.tests_of(code).map_err(|e| match &e {
        CodeError::Unknown { index, .. } => {
            Outcome::code_invalid(format!("{code_path}.coding[{index}]"), e.to_string())
        }
        CodeError::NoKnownSystem(_) => Outcome::code_invalid(code_path.clone(), e.to_string()),
    })?;
    let collected_path = format!("{}.collection.collectedDateTime", specimen.path);
    let collected = specimen
        .value
        .pointer("/collection/collectedDateTime")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Outcome::required(&collected_path, "the Specimen's collection time is missing")
        })?;
    let collected_at = parse_instant(collected).map_err(|e| Outcome::value(&collected_path, e))?;
    let note: Vec<&str> = request
        .value
        .get("note")
        .and_then(Value::as_array)
        .map(|notes| {
            notes
                .iter()
                .filter_map(|n| n.get("text")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    Ok(Order {
        submit: proto::SubmitRequestRequest {
            order_number,
            patient: Some(proto::Patient {
                nhs_number,
                family_name: family,
                given_name: given,
                birth_date,
            }),
            tests,
            priority: priority as i32,
            collected_at: Some(collected_at),
            clinical_note: note.join("\n"),
        },
        origins: Origins {
            patient: patient.path.to_string(),
            request: request.path.to_string(),
            specimen: specimen.path.to_string(),
        },
    })
}

/// The NHS number: the identifier of system [`NHS_NUMBER`], with a valid check digit.
fn nhs_number(patient: Node<'_>) -> Result<String, Outcome> {
    let path = format!("{}.identifier", patient.path);
    let ids = patient
        .value
        .get("identifier")
        .and_then(Value::as_array)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| {
            Outcome::required(
                &path,
                format!("the Patient needs an identifier of system {NHS_NUMBER}"),
            )
        })?;
    let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, id)| id.get("system").and_then(Value::as_str) == Some(NHS_NUMBER))
    else {
        let systems: Vec<&str> = ids
            .iter()
            .filter_map(|id| id.get("system")?.as_str())
            .collect();
        return Err(Outcome::value(
            &path,
            format!(
                "no identifier of system {NHS_NUMBER} (found {})",
                if systems.is_empty() {
                    "none with a system".to_string()
                } else {
                    systems.join(", ")
                }
            ),
        ));
    };
    let value_path = format!("{path}[{i}].value");
    let raw = id
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| Outcome::required(&value_path, "the NHS number identifier has no value"))?;
    // The number itself never goes into the message: it is patient data.
    NhsNumber::parse(raw)
        .map(|n| n.as_str().to_string())
        .map_err(|e| Outcome::value(&value_path, format!("the NHS number {e}")))
}

/// The order number: the identifier typed `PLAC`, else the only identifier.
fn placer_identifier(request: Node<'_>) -> Result<String, Outcome> {
    let path = format!("{}.identifier", request.path);
    let ids = request
        .value
        .get("identifier")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_placer = |id: &Value| {
        id.pointer("/type/coding")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.get("code").and_then(Value::as_str) == Some("PLAC")
                        && c.get("system").and_then(Value::as_str) == Some(V2_0203)
                })
            })
    };
    let chosen = match ids.iter().position(is_placer) {
        Some(i) => Some(i),
        None if ids.len() == 1 => Some(0),
        None => None,
    };
    let i = chosen.ok_or_else(|| {
        Outcome::required(
            &path,
            "the ServiceRequest needs its placer identifier (the order number), typed PLAC when it has several",
        )
    })?;
    ids[i]
        .get("value")
        .and_then(Value::as_str)
        .filter(|v| !v.trim().is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Outcome::required(
                format!("{path}[{i}].value"),
                "the placer identifier has no value",
            )
        })
}

fn check_task(task: Node<'_>, request_url: &str) -> Result<(), Outcome> {
    if str_at(task, "intent") != Some("order") {
        return Err(Outcome::value(
            format!("{}.intent", task.path),
            "the Task's intent must be \"order\"",
        ));
    }
    match str_at(task, "status") {
        Some("requested") => {}
        other => {
            return Err(Outcome::value(
                format!("{}.status", task.path),
                format!("a new Task is \"requested\", not {other:?}"),
            ));
        }
    }
    expect_reference(
        task,
        "focus",
        request_url,
        "the ServiceRequest entry's fullUrl",
    )
}

fn expect_reference(
    node: Node<'_>,
    element: &str,
    target: &str,
    what: &str,
) -> Result<(), Outcome> {
    let path = format!("{}.{element}", node.path);
    let reference = node
        .value
        .get(element)
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .ok_or_else(|| Outcome::required(&path, format!("{path} must refer to {what}")))?;
    if target.is_empty() || reference != target {
        return Err(Outcome::value(
            format!("{path}.reference"),
            format!("{path} must refer to {what}"),
        ));
    }
    Ok(())
}

fn expect_specimen(request: Node<'_>, target: &str, what: &str) -> Result<(), Outcome> {
    let path = format!("{}.specimen", request.path);
    let refs = request
        .value
        .get("specimen")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match refs {
        [one]
            if !target.is_empty()
                && one.get("reference").and_then(Value::as_str) == Some(target) =>
        {
            Ok(())
        }
        [] => Err(Outcome::required(
            &path,
            format!("{path} must refer to {what}"),
        )),
        _ => Err(Outcome::value(
            &path,
            format!("{path} must refer to {what}, once"),
        )),
    }
}

fn str_at<'a>(node: Node<'a>, element: &str) -> Option<&'a str> {
    node.value.get(element).and_then(Value::as_str)
}
