//! TLS for the coordinator page, from the broker's own TLS settings: its certificate and key, and
//! (for mutual TLS) the client CA, with a certificate optional so that a coordinator may sign in
//! with a token instead. Handshakes run in their own tasks with a time limit, so that a slow or
//! silent client never holds up the others. The rustls configuration is built here for the gRPC
//! listener as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::config::TlsPaths;
use crate::error::Error;

/// Longest a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The page's TLS acceptor.
#[derive(Clone)]
pub struct WebTls(TlsAcceptor);

impl std::fmt::Debug for WebTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebTls")
    }
}

impl WebTls {
    /// TLS from the broker's certificate, key and optional client CA.
    pub fn from_paths(paths: &TlsPaths) -> Result<Self, Error> {
        let mut config = server_config(paths, true, "web tls")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(TlsAcceptor::from(Arc::new(config))))
    }
}

/// A rustls server configuration from the broker's certificate, key and optional client CA (the
/// gRPC listener's too): with a client CA, a client certificate is verified against it, and
/// required unless `client_cert_optional`. `what` prefixes error messages.
pub(crate) fn server_config(
    paths: &TlsPaths,
    client_cert_optional: bool,
    what: &str,
) -> Result<ServerConfig, Error> {
    let bad = |file: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::FailedPrecondition(format!(
            "{what}: cannot read the {file} {}: {e}",
            path.display()
        ))
    };
    let chain = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| bad("certificate", &paths.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &paths.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| bad("key", &paths.key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::FailedPrecondition(format!("{what}: {e}")))?;
    let builder = match &paths.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("client CA", ca, &e))? {
                roots
                    .add(cert.map_err(|e| bad("client CA", ca, &e))?)
                    .map_err(|e| bad("client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| Error::FailedPrecondition(format!("{what}: client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::FailedPrecondition(format!("{what}: {e}")))
}

/// The verified client certificate chain of a connection, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Option<Arc<Vec<CertificateDer<'static>>>>);

/// Accepts TCP connections and hands over those whose handshake completed.
#[derive(Debug)]
pub(crate) struct TlsListener {
    local: std::io::Result<SocketAddr>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, tls: WebTls) -> Self {
        let local = listener.local_addr();
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "web: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (tls.0.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "web: TLS handshake failed"),
                        Err(_) => tracing::debug!("web: TLS handshake timed out"),
                    }
                });
            }
        });
        Self { local, ready }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(a) => a,
            // The accept task ends only with the runtime; wait for the shutdown that ends us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerCerts {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        Self(
            conn.peer_certificates()
                .map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())),
        )
    }
}
