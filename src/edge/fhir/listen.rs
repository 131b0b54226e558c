//! The FHIR listener: accepts connections (plain HTTP, or HTTPS with rustls, verifying client
//! certificates when given a client CA), serves each with HTTP/1.1, hands every request its
//! connection's verified certificate, and at shutdown stops accepting and lets calls in flight
//! finish.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{EdgeError, PeerCert};

/// How long a client may take to finish the TLS handshake or send its headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls in flight get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor for this certificate chain and key (PEM), speaking HTTP/1.1. With
/// `client_ca`, a client certificate is verified against it when one is presented (a caller may
/// still come with a bearer token instead).
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, EdgeError> {
    let tls = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        EdgeError::Tls(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = crate::edge::tls::roots(ca).map_err(EdgeError::Tls)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| EdgeError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `app` for one connection: every request carries the connection's verified certificate.
fn service(
    app: Router,
    peer: Option<PeerCert>,
) -> TowerToHyperService<
    impl tower::Service<
        http::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone,
> {
    TowerToHyperService::new(app.map_request(move |r: http::Request<Incoming>| {
        let mut r = r.map(Body::new);
        if let Some(peer) = &peer {
            r.extensions_mut().insert(peer.clone());
        }
        r
    }))
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub(super) async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "fhir.accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT);
        let watcher = graceful.watcher();
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service(app, None));
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // rustls has verified the chain against the client CA by now.
                            let peer = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(<[_]>::first)
                                .map(|leaf| PeerCert(Arc::new(leaf.clone().into_owned())));
                            let conn =
                                http.serve_connection(TokioIo::new(stream), service(app, peer));
                            let _ = watcher.watch(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "fhir.tls handshake failed"),
                        Err(_) => tracing::debug!("fhir.tls handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("fhir calls still running after the drain timeout; closing them");
        }
    }
}
