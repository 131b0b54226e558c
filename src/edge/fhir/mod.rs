//! The FHIR R4 facade of labaid-edge: a trust's system orders with a transaction Bundle (or a
//! ServiceRequest), follows the Task, and reads the DiagnosticReport, over plain FHIR REST. Each
//! call is made to the broker with the caller's own bearer token, so the broker decides what the
//! caller may see exactly as it does for gRPC.

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
use axum::http::HeaderMap;
use axum::routing::{get, post};
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
}

/// Why the facade could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The HTTPS certificate or key cannot be used.
    #[error("tls: {0}")]
    Tls(String),
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
    callers: Mutex<HashMap<[u8; 32], Client>>,
    codes: Mutex<Option<(Instant, Arc<Codes>)>>,
    base: String,
}

type State = Arc<Edge>;

impl Edge {
    /// The broker client carrying this caller's bearer token; 401 without one.
    fn caller(&self, headers: &HeaderMap) -> Result<Client, Outcome> {
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
                    "send the organisation's labaid token as Authorization: Bearer <token>",
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
        let codes = Arc::new(Codes::new(&tests));
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
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let state = Arc::new(Edge {
        broker: Client::connect_lazy(&config.broker)?,
        callers: Mutex::new(HashMap::new()),
        codes: Mutex::new(None),
        base,
    });
    tracing::info!(fhir.listen = %addr, fhir.tls = tls.is_some(), broker.addr = %config.broker.addr, "FHIR facade serving");
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
