//! Failures as FHIR expects them: an OperationOutcome with the HTTP status and issue code that
//! fit, the bad element named by FHIRPath, and never an internal cause or patient data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use super::FHIR_JSON;

/// One failed call: what the client is told.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {diagnostics}")]
pub struct Outcome {
    /// The HTTP status.
    pub status: StatusCode,
    /// The FHIR IssueType code (`invalid`, `required`, `not-found`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub diagnostics: String,
    /// The elements at fault, as FHIRPath.
    pub expression: Vec<String>,
    /// Further issues (several bad fields in one input).
    pub more: Vec<(String, String)>,
}

impl Outcome {
    /// An outcome without an element.
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
            more: Vec::new(),
        }
    }

    /// Names the element at fault.
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.expression.push(path.into());
        self
    }

    /// The body could not be read as FHIR JSON (400, `structure`).
    pub fn structure(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "structure", diagnostics)
    }

    /// A required element is missing (422, `required`).
    pub fn required(path: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "required", diagnostics).at(path)
    }

    /// An element has a value labaid cannot take (422, `value`).
    pub fn value(path: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "value", diagnostics).at(path)
    }

    /// A code labaid does not know (422, `code-invalid`).
    pub fn code_invalid(path: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "code-invalid",
            diagnostics,
        )
        .at(path)
    }

    /// A request that asks for something this server does not do (400, `not-supported`).
    pub fn not_supported(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not-supported", diagnostics)
    }

    /// No such resource for this caller (404).
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", what)
    }

    /// No bearer token (401).
    pub fn login(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "login", diagnostics)
    }

    /// The broker's answer to a failed call, with its field violations named by `field` (the
    /// broker's field name to the FHIRPath of the element it came from).
    pub fn from_status(status: &tonic::Status, field: &dyn Fn(&str) -> String) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => {
                let violations = status
                    .get_error_details()
                    .bad_request()
                    .map(|b| b.field_violations.clone())
                    .unwrap_or_default();
                let mut out = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
                for (i, v) in violations.into_iter().enumerate() {
                    let path = field(&v.field);
                    if i == 0 {
                        out.diagnostics = format!("{path}: {}", v.description);
                        out.expression.push(path);
                    } else {
                        out.more.push((path, v.description));
                    }
                }
                out
            }
            Code::NotFound => Self::not_found(message),
            Code::AlreadyExists => Self::new(StatusCode::CONFLICT, "duplicate", message),
            Code::FailedPrecondition => Self::new(StatusCode::CONFLICT, "business-rule", message),
            Code::Aborted => Self::new(StatusCode::CONFLICT, "conflict", message),
            Code::ResourceExhausted => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message)
            }
            Code::Unauthenticated => Self::login(message),
            Code::PermissionDenied => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                tracing::warn!(grpc.code = ?status.code(), "broker unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "the labaid broker is unavailable; try again shortly",
                )
            }
            code => {
                tracing::error!(grpc.code = ?code, "broker call failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "internal error; labaid-edge logged the cause",
                )
            }
        }
    }

    /// The OperationOutcome resource.
    pub fn resource(&self) -> Value {
        let severity = if self.status.is_server_error() {
            "fatal"
        } else {
            "error"
        };
        let mut issues = vec![issue(
            severity,
            self.code,
            &self.diagnostics,
            &self.expression,
        )];
        for (path, text) in &self.more {
            issues.push(issue(
                severity,
                self.code,
                &format!("{path}: {text}"),
                std::slice::from_ref(path),
            ));
        }
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

fn issue(severity: &str, code: &str, diagnostics: &str, expression: &[String]) -> Value {
    let mut issue = json!({ "severity": severity, "code": code, "diagnostics": diagnostics });
    if !expression.is_empty() {
        issue["expression"] = json!(expression);
    }
    issue
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
            self.resource().to_string(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"labaid\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_field_violations_become_issues_named_by_fhirpath() {
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("patient.nhs_number", "bad check digit");
        details.add_bad_request_violation("tests", "unknown test XYZ");
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "invalid", details);
        let out = Outcome::from_status(&status, &|f| format!("P.{f}"));
        assert_eq!(out.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body = out.resource();
        assert_eq!(body["issue"][0]["expression"][0], "P.patient.nhs_number");
        assert_eq!(body["issue"][1]["expression"][0], "P.tests");
    }

    #[test]
    fn broker_statuses_map_to_http() {
        let f = |_: &str| String::new();
        let cases = [
            (tonic::Status::not_found("x"), 404),
            (tonic::Status::already_exists("x"), 409),
            (tonic::Status::unauthenticated("x"), 401),
            (tonic::Status::permission_denied("x"), 403),
            (tonic::Status::unavailable("x"), 503),
            (tonic::Status::internal("secret cause"), 500),
        ];
        for (status, http) in cases {
            let out = Outcome::from_status(&status, &f);
            assert_eq!(out.status.as_u16(), http, "{status:?}");
            assert!(!out.diagnostics.contains("secret"));
        }
    }
}
