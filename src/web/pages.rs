//! The page's reading side: sign-in and sign-out, the embedded assets, the session's CSRF token,
//! the snapshot and its live feed (server-sent events), and the security headers on every answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures_core::Stream;
use serde::Deserialize;
use tonic::metadata::MetadataMap;

use super::Web;
use super::session::{Session, clear_cookie, same_token, set_cookie};
use super::tls::PeerCerts;
use crate::auth::Role;
use crate::error::Error;

const INDEX: &str = include_str!("assets/index.html");
const SIGNIN: &str = include_str!("assets/signin.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// How long the browser waits before reconnecting a dropped feed.
const RETRY: Duration = Duration::from_secs(1);

impl Web {
    /// The signed-in coordinator of this request, if any.
    pub(super) fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.sessions.find(headers, self.ctx.engine.now())
    }
}

/// Answers of the page's JSON API that carry an error: the status and one line.
pub(super) fn error_response(err: &Error) -> Response {
    let status = match err {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::FailedPrecondition(_) | Error::Aborted(_) | Error::AlreadyExists(_) => {
            StatusCode::CONFLICT
        }
        Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match err {
        Error::Internal(cause) => {
            tracing::error!(error = %cause, "coordinator page: internal error");
            "internal error".to_string()
        }
        other => other.to_string(),
    };
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn signed_out() -> Response {
    error_response(&Error::Unauthenticated(
        "not signed in, or the session has ended: sign in again".into(),
    ))
}

/// `/`: the page for a signed-in coordinator, else the way to sign in.
pub(super) async fn index(State(web): State<Web>, headers: HeaderMap) -> Response {
    match web.session(&headers) {
        Some(_) => Html(INDEX).into_response(),
        None => Redirect::to("/signin").into_response(),
    }
}

/// The sign-in page, with `message` (already plain text) shown as an alert when given.
fn signin_page(status: StatusCode, message: Option<&str>) -> Response {
    let alert = message.map_or(String::new(), |m| {
        format!(
            "<p class=\"alert\" role=\"alert\" id=\"signin-error\">{}</p>",
            escape(m)
        )
    });
    (status, Html(SIGNIN.replace("<!--alert-->", &alert))).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /signin`.
pub(super) async fn signin_form() -> Response {
    signin_page(StatusCode::OK, None)
}

#[derive(Debug, Deserialize)]
pub(super) struct SignIn {
    #[serde(default)]
    token: String,
}

/// `POST /signin`: a coordinator's token, or (leaving it empty under mutual TLS) the client
/// certificate the browser presented. Anything else is refused and opens no session.
pub(super) async fn signin(
    State(web): State<Web>,
    peer: Option<Extension<ConnectInfo<PeerCerts>>>,
    Form(form): Form<SignIn>,
) -> Response {
    let token = form.token.trim();
    let mut metadata = MetadataMap::new();
    if !token.is_empty() {
        match format!("Bearer {token}").parse() {
            Ok(v) => {
                metadata.insert("authorization", v);
            }
            Err(_) => {
                return signin_page(
                    StatusCode::UNAUTHORIZED,
                    Some("That token is not valid text: check it and sign in again."),
                );
            }
        }
    }
    let certs = peer.and_then(|Extension(ConnectInfo(p))| p.0);
    let who = match web
        .ctx
        .auth
        .authenticate_parts(&metadata, certs.as_deref().map(Vec::as_slice))
    {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(reason = %e, "coordinator page: sign-in refused");
            return signin_page(
                StatusCode::UNAUTHORIZED,
                Some(&format!("Sign-in refused: {e}.")),
            );
        }
    };
    if who.role != Role::Coordinator {
        tracing::info!(org = %who.org, role = who.role.as_str(), "coordinator page: sign-in by a non-coordinator refused");
        return signin_page(
            StatusCode::FORBIDDEN,
            Some(&format!(
                "{} signs in as a {}: this page is for coordinators only.",
                who.org,
                who.role.as_str()
            )),
        );
    }
    let id = match web.sessions.open(who.clone(), web.ctx.engine.now()) {
        Ok(id) => id,
        Err(e) => return error_response(&Error::Internal(format!("session id: {e}"))),
    };
    tracing::info!(org = %who.org, "coordinator page: signed in");
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&id, web.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Deserialize)]
pub(super) struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// `POST /signout`, with the session's CSRF token.
pub(super) async fn signout(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<SignOut>,
) -> Response {
    let Some(s) = web.session(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    if !same_token(&s.csrf, &form.csrf) {
        return error_response(&Error::PermissionDenied(
            "the form's CSRF token does not match the session".into(),
        ));
    }
    web.sessions.close(&headers);
    let mut response = Redirect::to("/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&clear_cookie(web.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub(super) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub(super) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// `GET /api/session`: who is signed in and the CSRF token the page's actions send back.
pub(super) async fn session(State(web): State<Web>, headers: HeaderMap) -> Response {
    match web.session(&headers) {
        Some(s) => axum::Json(serde_json::json!({
            "org": s.who.org.to_string(),
            "role": s.who.role.as_str(),
            "csrf": s.csrf,
        }))
        .into_response(),
        None => signed_out(),
    }
}

/// `GET /api/snapshot`: the current snapshot, once. With no page open this starts the feed for
/// as long as it takes to build one.
pub(super) async fn snapshot(State(web): State<Web>, headers: HeaderMap) -> Response {
    if web.session(&headers).is_none() {
        return signed_out();
    }
    let mut viewer = web.feed.join();
    let mut stopping = web.ctx.shutdown.clone();
    let json = tokio::select! {
        json = viewer.current() => json,
        _ = stopping.wait_for(|s| *s) => None,
    };
    match json {
        Some(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response(),
        None => error_response(&Error::Unavailable("the broker is stopping".into())),
    }
}

/// `GET /events`: every new snapshot as a server-sent event, the first at once; ends when the
/// session does (the page then finds it signed out) or the broker stops.
pub(super) async fn events(State(web): State<Web>, headers: HeaderMap) -> Response {
    if web.session(&headers).is_none() {
        return signed_out();
    }
    Sse::new(snapshots(web, headers))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn snapshots(web: Web, headers: HeaderMap) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut stopping = web.ctx.shutdown.clone();
    async_stream(move |tx| async move {
        // A viewer for as long as the browser holds the stream open.
        let mut viewer = web.feed.join();
        let feed = viewer.snapshots();
        feed.mark_changed();
        loop {
            tokio::select! {
                changed = feed.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
                () = tx.closed() => return,
            }
            if web.session(&headers).is_none() {
                return;
            }
            let json: Arc<str> = feed.borrow_and_update().clone();
            if json.is_empty() {
                continue;
            }
            let event = Event::default()
                .event("snapshot")
                .retry(RETRY)
                .data(json.as_ref());
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    })
}

/// A stream fed by a task through a small channel: the task ends when the client goes away.
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Headers on every answer: no framing, no sniffing, scripts and styles from this origin only,
/// nothing cached (the page shows live clinical work).
pub(super) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_in_alert_is_escaped() {
        assert_eq!(escape("<b>\"x\" & y"), "&lt;b&gt;&quot;x&quot; &amp; y");
    }

    #[test]
    fn the_session_cookie_name_is_the_one_the_page_sets() {
        assert!(set_cookie("x", false).starts_with(super::super::session::COOKIE_NAME));
    }
}
