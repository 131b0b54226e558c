//! TLS for the edge's own sockets (the MLLP listener and the results connection), from PEM files,
//! with rustls (the same library tonic uses for the broker connection).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

pub(crate) fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("the CA in {} is not usable: {e}", ca.display()))?;
    }
    Ok(roots)
}

/// A TLS acceptor for the MLLP listener; with `client_ca`, senders must show a certificate it
/// issued (mutual TLS).
pub fn acceptor(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| format!("client CA {}: {e}", ca.display()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| {
            format!(
                "the certificate {} and its key do not fit: {e}",
                cert.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How the results connection is secured.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts `ca`, presents `cert`/`key` when given, and checks the server's certificate
    /// against `server_name`.
    pub fn new(
        ca: &Path,
        cert: Option<&Path>,
        key_path: Option<&Path>,
        server_name: &str,
    ) -> Result<Self, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca)?);
        let config = match (cert, key_path) {
            (Some(c), Some(k)) => {
                builder
                    .with_client_auth_cert(certs(c)?, key(k)?)
                    .map_err(|e| {
                        format!(
                            "the certificate {} and its key do not fit: {e}",
                            c.display()
                        )
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("give the results certificate and its key together".into()),
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("{server_name:?} is not a server name: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// Wraps a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<Box<dyn Io>> {
        Ok(Box::new(
            self.connector.connect(self.name.clone(), tcp).await?,
        ))
    }
}
