//! The FHIR interactions other than search: transaction, create, read and the Task patch that
//! cancels. Each one authenticates the caller, checks the input, makes one broker call and
//! renders the answer; a failure at any step is an OperationOutcome.

use axum::body::Body;
use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use super::outcome::Outcome;
use super::render::{self, version};
use super::{Caller, FHIR_JSON, MAX_BODY_BYTES, State, ingest};
use crate::proto;

/// Bodies past the limit are still read (and dropped) up to this, so that the client, which
/// sends its whole body before reading, gets the 413 rather than a reset connection.
const DRAIN_LIMIT: usize = 32 * 1024 * 1024;

/// A FHIR JSON answer.
pub(super) fn fhir(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        body.to_string(),
    )
        .into_response()
}

/// A resource answer with its version as an ETag.
fn versioned(status: StatusCode, body: &Value, version: &str) -> Response {
    let mut response = fhir(status, body);
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Logs each call by method, route and status: never a body, a query value or a patient field.
pub(super) async fn log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // Only a known resource type is logged: the path is the client's text, which could be anything.
    let first = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next();
    let kind = match first.unwrap_or("") {
        k @ ("" | "metadata" | "Task" | "ServiceRequest" | "Patient" | "Specimen"
        | "DiagnosticReport" | "Observation") => k.to_string(),
        _ => "other".to_string(),
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        fhir.method = %method,
        fhir.resource = %kind,
        http.status = response.status().as_u16(),
        fhir.elapsed_ms = started.elapsed().as_millis() as u64,
        "fhir call"
    );
    response
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`], sent as FHIR JSON (or plain JSON).
async fn json_body(headers: &HeaderMap, body: Body, media: &[&str]) -> Result<Value, Outcome> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !media.iter().any(|m| essence.eq_ignore_ascii_case(m)) {
        return Err(Outcome::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!(
                "send the body as {} (got {content_type:?})",
                media.join(" or ")
            ),
        ));
    }
    let too_large = || {
        Outcome::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Outcome::structure("the body could not be read"))?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= MAX_BODY_BYTES {
                bytes.extend_from_slice(data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Outcome::structure(format!(
            "the body is not valid JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            e.classify_label()
        ))
    })
}

trait Label {
    fn classify_label(&self) -> &'static str;
}

impl Label for serde_json::Error {
    fn classify_label(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

const FHIR_MEDIA: &[&str] = &["application/fhir+json", "application/json"];

/// `POST /`: a transaction Bundle holding one order.
pub(super) async fn transaction(
    AxState(edge): AxState<State>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Outcome> {
    let bundle = json_body(&headers, body, FHIR_MEDIA).await?;
    let codes = edge.codes(&client).await?;
    let (order, kinds) = ingest::transaction(&bundle, &codes)?;
    let (request, replayed) = submit(&client, order).await?;
    let status = if replayed { "200 OK" } else { "201 Created" };
    let entries: Vec<Value> = kinds
        .iter()
        .map(|kind| {
            let resource = match kind.as_str() {
                "Patient" => render::patient(&request),
                "ServiceRequest" => render::service_request(&request, &codes),
                "Specimen" => render::specimen(&request),
                _ => render::task(&request),
            };
            json!({
                "fullUrl": format!("{}/{kind}/{}", edge.base, request.id),
                "resource": resource,
                "response": {
                    "status": status,
                    "location": format!("{kind}/{}/_history/{}", request.id, version(&request)),
                    "etag": format!("W/\"{}\"", version(&request)),
                    "lastModified": render::last_updated(&request),
                },
            })
        })
        .collect();
    let answer = json!({
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": entries,
    });
    Ok(fhir(StatusCode::OK, &answer))
}

/// `POST /ServiceRequest`: one order, its Patient and Specimen contained.
pub(super) async fn create_service_request(
    AxState(edge): AxState<State>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Outcome> {
    let resource = json_body(&headers, body, FHIR_MEDIA).await?;
    let codes = edge.codes(&client).await?;
    let order = ingest::service_request(&resource, &codes)?;
    let (request, replayed) = submit(&client, order).await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = versioned(
        status,
        &render::service_request(&request, &codes),
        &version(&request),
    );
    let location = format!(
        "{}/ServiceRequest/{}/_history/{}",
        edge.base,
        request.id,
        version(&request)
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn submit(
    client: &crate::client::Client,
    order: ingest::Order,
) -> Result<(proto::Request, bool), Outcome> {
    let answer = client
        .requests()
        .submit_request(order.submit)
        .await
        .map_err(|s| Outcome::from_status(&s, &|f| order.origins.path_of(f)))?
        .into_inner();
    let request = answer.request.ok_or_else(|| {
        Outcome::from_status(&tonic::Status::internal("no request"), &|f| f.into())
    })?;
    tracing::info!(request.id = %request.id, request.replayed = answer.replayed, "fhir order submitted");
    Ok((request, answer.replayed))
}

/// One of the caller's requests; ids that are not labaid's answer 404 like unknown ones.
pub(super) async fn fetch(
    client: &crate::client::Client,
    kind: &str,
    id: &str,
) -> Result<proto::Request, Outcome> {
    let not_found = || Outcome::not_found(format!("{kind}/{id} is not known"));
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(not_found());
    }
    client
        .requests()
        .get_request(proto::GetRequestRequest { id: id.into() })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| match s.code() {
            tonic::Code::NotFound | tonic::Code::InvalidArgument => not_found(),
            _ => Outcome::from_status(&s, &|f| f.into()),
        })
}

/// `GET /Task/{id}`.
pub(super) async fn read_task(
    edge: AxState<State>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Outcome> {
    read(edge, caller, Path(("Task".into(), id))).await
}

/// `GET /{kind}/{id}` for every resource a request is shown as.
pub(super) async fn read(
    AxState(edge): AxState<State>,
    Caller(client): Caller,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, Outcome> {
    let kinds = [
        "Task",
        "ServiceRequest",
        "Patient",
        "Specimen",
        "DiagnosticReport",
        "Observation",
    ];
    if !kinds.contains(&kind.as_str()) {
        return Err(unsupported_kind(&kind));
    }
    // An Observation's id is its request's id and its place in the results.
    let (request_id, nth) = match kind.as_str() {
        "Observation" => match id
            .rsplit_once('-')
            .and_then(|(r, n)| Some((r, n.parse::<usize>().ok()?)))
        {
            Some((r, n)) if n > 0 => (r.to_string(), Some(n)),
            _ => return Err(Outcome::not_found(format!("Observation/{id} is not known"))),
        },
        _ => (id.clone(), None),
    };
    let request = fetch(&client, &kind, &request_id).await?;
    let gone = || Outcome::not_found(format!("{kind}/{id} is not known"));
    let resource = match kind.as_str() {
        "Task" => render::task(&request),
        "Patient" => render::patient(&request),
        "Specimen" => render::specimen(&request),
        "ServiceRequest" => render::service_request(&request, &*edge.codes(&client).await?),
        "DiagnosticReport" => {
            render::diagnostic_report(&request, &*edge.codes(&client).await?).ok_or_else(gone)?
        }
        _ => {
            let codes = edge.codes(&client).await?;
            render::observations(&request, &codes)
                .into_iter()
                .nth(nth.unwrap_or(1) - 1)
                .ok_or_else(gone)?
        }
    };
    Ok(versioned(StatusCode::OK, &resource, &version(&request)))
}

fn unsupported_kind(kind: &str) -> Outcome {
    Outcome::new(
        StatusCode::NOT_FOUND,
        "not-supported",
        format!("labaid-edge does not serve {kind} resources; GET /metadata lists what it does"),
    )
}

/// `PATCH /Task/{id}` with a JSON Patch setting `status` to `cancelled`: cancels the request.
/// `If-Match` with the Task's ETag makes it conditional (412 when the Task changed since).
pub(super) async fn patch_task(
    Caller(client): Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Outcome> {
    let patch = json_body(&headers, body, &["application/json-patch+json"]).await?;
    let reason = cancel_patch(&patch)?;
    let current = fetch(&client, "Task", &id).await?;
    if let Some(expected) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let expected = expected.trim().trim_start_matches("W/").trim_matches('"');
        if expected != version(&current) {
            return Err(Outcome::new(
                StatusCode::PRECONDITION_FAILED,
                "conflict",
                format!(
                    "Task/{id} is at version {}, not {expected}: read it again",
                    version(&current)
                ),
            ));
        }
    }
    let cancelled = client
        .requests()
        .cancel_request(proto::CancelRequestRequest {
            id: id.clone(),
            reason,
        })
        .await
        .map_err(|s| Outcome::from_status(&s, &|_| "Task.statusReason".into()))?
        .into_inner();
    tracing::info!(request.id = %id, "fhir task cancelled");
    Ok(versioned(
        StatusCode::OK,
        &render::task(&cancelled),
        &version(&cancelled),
    ))
}

/// The cancel reason from a JSON Patch that sets `/status` to `cancelled` (and optionally
/// `/statusReason`); any other patch is refused.
fn cancel_patch(patch: &Value) -> Result<String, Outcome> {
    let refuse = |path: String, why: &str| {
        Outcome::value(
            path,
            format!(
                "{why}: labaid takes one patch of a Task, [{{\"op\": \"replace\", \"path\": \"/status\", \"value\": \"cancelled\"}}], optionally with /statusReason"
            ),
        )
    };
    let ops = patch
        .as_array()
        .ok_or_else(|| refuse("Task".into(), "the body is not a JSON Patch array"))?;
    let mut cancelled = false;
    let mut reason = String::new();
    for (i, op) in ops.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "replace" | "add") {
            return Err(refuse(
                format!("Task (patch operation {i})"),
                "unsupported operation",
            ));
        }
        match path {
            "/status" if op.get("value").and_then(Value::as_str) == Some("cancelled") => {
                cancelled = true;
            }
            "/status" => {
                return Err(refuse(
                    "Task.status".into(),
                    "a Task can only be set to cancelled",
                ));
            }
            "/statusReason" => {
                reason = op
                    .pointer("/value/text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
            }
            "/statusReason/text" => {
                reason = op
                    .get("value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
            }
            other => {
                return Err(refuse(
                    format!("Task (patch path {other})"),
                    "this element cannot be changed",
                ));
            }
        }
    }
    if !cancelled {
        return Err(refuse(
            "Task.status".into(),
            "the patch does not cancel the Task",
        ));
    }
    Ok(reason)
}

/// Any other path.
pub(super) async fn unknown(method: Method, uri: axum::http::Uri) -> Outcome {
    let kind = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if kind.is_empty() {
        return Outcome::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("{method} / is not supported; POST a transaction Bundle"),
        );
    }
    unsupported_kind(kind)
}

/// A known path with a method it does not take.
pub(super) async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Outcome {
    Outcome::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        format!(
            "{method} {} is not supported; GET /metadata lists the interactions",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_patch_that_cancels_is_taken() {
        let ok = json!([
            { "op": "replace", "path": "/status", "value": "cancelled" },
            { "op": "add", "path": "/statusReason", "value": { "text": "patient discharged" } },
        ]);
        assert_eq!(cancel_patch(&ok).unwrap(), "patient discharged");
        let completed = json!([{ "op": "replace", "path": "/status", "value": "completed" }]);
        assert_eq!(
            cancel_patch(&completed).unwrap_err().expression,
            ["Task.status"]
        );
        let owner = json!([{ "op": "replace", "path": "/owner", "value": {} }]);
        assert!(cancel_patch(&owner).is_err());
        assert!(cancel_patch(&json!({})).is_err());
    }
}
