//! The FHIR R4 facade of labaid-edge: a trust's system orders with a transaction Bundle (or a
//! ServiceRequest), follows the Task, and reads the DiagnosticReport, over plain FHIR REST. A
//! caller with a bearer token has each call made to the broker with that token; a caller with a
//! client certificate (HTTPS with `--fhir-client-ca`) has it made with the edge's own credential
//! naming the certificate's organisation on behalf of which it calls. Either way the broker
//! decides what the caller may see exactly as it does for gRPC.

mod capability;
pub mod codes;
mod handlers;
pub mod ingest;
pub mod instant;
mod listen;
pub mod outcome;
pub mod render;
mod search;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError, ConnectOptions};
use crate::proto;
pub use codes::Codes;
pub use listen::tls_acceptor;
use outcome::Outcome;

/// The media type of every answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// The listener's default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// The largest body read; a bigger one is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long the catalogue's codes are kept before being read from the broker again.
const CODES_TTL: Duration = Duration::from_secs(300);
/// Most callers' clients kept; past it the cache starts again (each is cheap to make).
const MAX_CALLERS: usize = 10_000;

/// What the FHIR facade needs.
#[derive(Debug, Clone)]
pub struct FhirConfig {
    /// Where the broker is, and the TLS to reach it. Its token is not used: every call carries
    /// its own caller's token.
    pub broker: ConnectOptions,
    /// HTTPS: the certificate chain and key (PEM). Without them the listener speaks plain HTTP,
    /// which the binary allows on loopback only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The base URL clients reach the facade at, for `fullUrl`s and paging links; default
    /// `http(s)://<listen address>`.
    pub base_url: Option<String>,
    /// The CA (PEM) whose client certificates identify callers; needs `tls` and `edge`.
    pub client_ca: Option<PathBuf>,
    /// The edge's own connection to the broker (its token or client certificate), for calls on
    /// behalf of certificate callers: the broker must list it as an `[[edge]]`.
    pub edge: Option<ConnectOptions>,
    /// The code system of the catalogue's own codes, read and written
    /// ([`codes::DEFAULT_CATALOGUE_SYSTEM`] by default).
    pub catalogue_system: String,
}

/// Why the facade could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The HTTPS certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The settings do not fit together.
    #[error("{0}")]
    Config(String),
    /// The broker's address or TLS files are unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Shared by every handler.
#[derive(Debug)]
struct Edge {
    broker: Client,
    /// The edge's own credential, for certificate callers.
    on_behalf: Option<Client>,
    callers: Mutex<HashMap<[u8; 32], Client>>,
    codes: Mutex<Option<(Instant, Arc<Codes>)>>,
    catalogue_system: String,
    base: String,
}

type State = Arc<Edge>;

/// The verified client certificate (the leaf) of the connection a request came on.
#[derive(Debug, Clone)]
pub(super) struct PeerCert(pub(super) Arc<CertificateDer<'static>>);

/// The broker client a handler calls with, for the request's caller: 401 without a credential.
pub(super) struct Caller(pub(super) Client);

impl FromRequestParts<State> for Caller {
    type Rejection = Outcome;

    async fn from_request_parts(parts: &mut Parts, edge: &State) -> Result<Self, Outcome> {
        edge.caller(&parts.headers, parts.extensions.get::<PeerCert>())
            .map(Caller)
    }
}

impl Edge {
    /// The broker client for this caller: its bearer token forwarded, or, for a verified client
    /// certificate, the edge's own credential naming the certificate's organisation. 401 with
    /// neither, with both (the edge cannot tell that they name the same caller), or for a
    /// certificate that names no organisation.
    fn caller(&self, headers: &HeaderMap, cert: Option<&PeerCert>) -> Result<Client, Outcome> {
        let Some(cert) = cert else {
            return self.token_caller(headers);
        };
        if headers.contains_key(http::header::AUTHORIZATION) {
            return Err(Outcome::login(
                "present a client certificate or a bearer token, not both",
            ));
        }
        let org =
            crate::auth::ods_of(cert.0.as_ref()).map_err(|e| Outcome::login(e.to_string()))?;
        let edge = self.on_behalf.as_ref().ok_or_else(|| {
            Outcome::login("this edge has no credential of its own for certificate callers")
        })?;
        Ok(edge.on_behalf_of(&org))
    }

    /// The broker client carrying this caller's bearer token; 401 without one.
    fn token_caller(&self, headers: &HeaderMap) -> Result<Client, Outcome> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Outcome::login(
                    "send the organisation's labaid token as Authorization: Bearer <token>, or present its client certificate",
                )
            })?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = callers.get(&key) {
            return Ok(client.clone());
        }
        let client = self.broker.with_token(token).map_err(|_| {
            Outcome::login("the bearer token contains characters that cannot be sent")
        })?;
        if callers.len() >= MAX_CALLERS {
            callers.clear();
        }
        callers.insert(key, client.clone());
        Ok(client)
    }

    /// The catalogue's codes, read from the broker with this caller's credential when stale.
    async fn codes(&self, client: &Client) -> Result<Arc<Codes>, Outcome> {
        {
            let cached = self.codes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, codes)) = cached.as_ref()
                && at.elapsed() < CODES_TTL
            {
                return Ok(codes.clone());
            }
        }
        let tests = client
            .directory()
            .list_tests(proto::ListTestsRequest {})
            .await
            .map_err(|s| Outcome::from_status(&s, &|f| f.to_string()))?
            .into_inner()
            .tests;
        let codes = Arc::new(Codes::new(&tests, &self.catalogue_system));
        *self.codes.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), codes.clone()));
        Ok(codes)
    }
}

/// Serves the FHIR facade on `listener` until `shutdown` resolves, then lets calls in flight
/// finish (up to ten seconds).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: FhirConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EdgeError> {
    let addr = listener.local_addr()?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key, config.client_ca.as_deref())?),
        None if config.client_ca.is_some() => {
            return Err(EdgeError::Tls(
                "client certificates need HTTPS: give the listener a certificate".into(),
            ));
        }
        None => None,
    };
    let catalogue_system =
        codes::parse_system(&config.catalogue_system).map_err(EdgeError::Config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let on_behalf = match (&config.client_ca, &config.edge) {
        (Some(_), Some(edge)) => Some(Client::connect_lazy(edge)?),
        (Some(_), None) => {
            return Err(EdgeError::Config(
                "client certificates need the edge's own credential for the broker".into(),
            ));
        }
        (None, _) => None,
    };
    let state = Arc::new(Edge {
        broker: Client::connect_lazy(&config.broker)?,
        on_behalf,
        callers: Mutex::new(HashMap::new()),
        codes: Mutex::new(None),
        catalogue_system,
        base,
    });
    tracing::info!(
        fhir.listen = %addr,
        fhir.tls = tls.is_some(),
        fhir.client_certificates = state.on_behalf.is_some(),
        broker.addr = %config.broker.addr,
        "FHIR facade serving"
    );
    listen::run(listener, tls, router(state), shutdown).await;
    tracing::info!("FHIR facade stopped");
    Ok(())
}

fn router(state: State) -> Router {
    Router::new()
        .route("/", post(handlers::transaction))
        .route("/metadata", get(capability::metadata))
        .route("/ServiceRequest", post(handlers::create_service_request))
        .route("/Task", get(search::tasks))
        .route("/DiagnosticReport", get(search::reports))
        .route(
            "/Task/{id}",
            get(handlers::read_task).patch(handlers::patch_task),
        )
        .route("/{kind}/{id}", get(handlers::read))
        .fallback(handlers::unknown)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn(handlers::log))
        .with_state(state)
}
