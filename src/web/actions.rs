//! The page's actions, for a signed-in coordinator only: mark a lab online, draining or offline,
//! and reassign an accepted job whose sample has not arrived. Each needs the session's CSRF token
//! in `X-CSRF-Token` and a reason, and runs the same audited command as the gRPC call.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Web;
use super::pages::error_response;
use super::session::{Session, same_token};
use crate::api::{reassign_job, set_lab_status};
use crate::domain::{LabStatus, MAX_NOTE_CHARS, RequestId, RequestState};
use crate::error::Error;

/// The header that carries the CSRF token.
const CSRF_HEADER: &str = "x-csrf-token";

/// The session, if the request is signed in and carries its CSRF token.
fn authorised(web: &Web, headers: &HeaderMap) -> Result<Session, Error> {
    let session = web.session(headers).ok_or_else(|| {
        Error::Unauthenticated("not signed in, or the session has ended: sign in again".into())
    })?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_token(&session.csrf, sent) {
        return Err(Error::PermissionDenied(
            "the action's CSRF token is missing or does not match the session; reload the page"
                .into(),
        ));
    }
    web.ctx.auth.charge(&session.who.org)?;
    Ok(session)
}

/// A reason is required: the people who pick up the work need to know why.
fn reason(raw: &str) -> Result<&str, Error> {
    let r = raw.trim();
    if r.is_empty() {
        return Err(Error::invalid("reason", "is required: say why"));
    }
    if r.chars().count() > MAX_NOTE_CHARS {
        return Err(Error::invalid(
            "reason",
            format!("is longer than {MAX_NOTE_CHARS} characters"),
        ));
    }
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub(super) struct SetStatus {
    status: String,
    #[serde(default)]
    reason: String,
}

/// `POST /api/labs/{lab}/status` with `{"status": "offline", "reason": "..."}`.
pub(super) async fn set_status(
    State(web): State<Web>,
    Path(lab): Path<String>,
    headers: HeaderMap,
    Json(body): Json<SetStatus>,
) -> Response {
    let run = async {
        let session = authorised(&web, &headers)?;
        let status = LabStatus::parse(&body.status).map_err(|e| Error::invalid("status", e))?;
        let why = reason(&body.reason)?;
        let (lab, status, withdrawn) =
            set_lab_status(&web.ctx, &session.who, &lab, status, why).await?;
        Ok::<_, Error>(Json(serde_json::json!({
            "lab": lab.to_string(),
            "status": status.as_str(),
            "offers_withdrawn": withdrawn,
        })))
    };
    match run.await {
        Ok(ok) => ok.into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Reassign {
    #[serde(default)]
    reason: String,
}

/// `POST /api/jobs/{id}/reassign` with `{"reason": "..."}`.
pub(super) async fn reassign(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Reassign>,
) -> Response {
    let run = async {
        let session = authorised(&web, &headers)?;
        let id = RequestId::parse(&id).map_err(|e| Error::invalid("id", e))?;
        let why = reason(&body.reason)?;
        let r = reassign_job(&web.ctx, &session.who, id, why).await?;
        Ok::<_, Error>(Json(serde_json::json!({
            "id": id.to_string(),
            "state": r.state.as_str(),
            "lab": r.lab.as_ref().filter(|_| r.state == RequestState::Offered).map(ToString::to_string),
        })))
    };
    match run.await {
        Ok(ok) => ok.into_response(),
        Err(e) => error_response(&e),
    }
}
