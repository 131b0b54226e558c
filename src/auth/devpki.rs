//! A development PKI in one call: a CA, a server certificate for localhost and 127.0.0.1, and a
//! client certificate per organisation carrying its ODS code as the URI SAN `urn:ods:<ODS>`
//! (and, on request, one for a trusted edge, `urn:labaid:edge:<id>`).
//! For demos and tests only: the CA key is written beside the certificates.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{EDGE_URI_PREFIX, EdgeId, ODS_URI_PREFIX};
use crate::domain::OdsCode;
use crate::error::Error;

/// How long the development certificates are valid for, from a day before now.
const VALID_DAYS: i64 = 365;

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.pem`: the CA that the broker trusts for clients and the clients trust for the broker.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
    /// The organisations a client certificate was issued for (`<ODS>.pem`, `<ODS>.key`).
    pub orgs: Vec<OdsCode>,
}

impl DevPki {
    /// The certificate and key of `org`.
    pub fn client(&self, org: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{org}.pem")),
            self.dir.join(format!("{org}.key")),
        )
    }
}

/// The validity window of a certificate, in days relative to now (negative is in the past).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// First day of validity.
    pub from_days: i64,
    /// Last day of validity.
    pub until_days: i64,
}

impl Validity {
    /// From yesterday for [`VALID_DAYS`].
    pub const DEFAULT: Self = Self {
        from_days: -1,
        until_days: VALID_DAYS,
    };
}

fn pki_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("dev-certs: {what}: {e}"))
}

fn params(validity: Validity, cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    p.not_before = now + Duration::days(validity.from_days);
    p.not_after = now + Duration::days(validity.until_days);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "labaid development");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p
}

/// The CA's parameters; its name and key usages are all an [`Issuer`] needs, so the CA can be
/// rebuilt from `ca.key` to issue more certificates later.
fn ca_params() -> CertificateParams {
    let mut p = params(Validity::DEFAULT, "labaid development CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| pki_error(&format!("cannot write {}", path.display()), e))
}

/// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key` (for localhost and 127.0.0.1) and
/// `<ODS>.pem`, `<ODS>.key` for every organisation in `orgs` into `dir`, creating it.
pub fn generate(dir: &Path, orgs: impl IntoIterator<Item = OdsCode>) -> Result<DevPki, Error> {
    generate_for(dir, orgs, &[])
}

/// [`generate`], with the server certificate also naming `server_names` (DNS names or IP
/// addresses), e.g. a compose service or a Kubernetes Service name.
pub fn generate_for(
    dir: &Path,
    orgs: impl IntoIterator<Item = OdsCode>,
    server_names: &[String],
) -> Result<DevPki, Error> {
    fs::create_dir_all(dir)
        .map_err(|e| pki_error(&format!("cannot create {}", dir.display()), e))?;
    let ca_key = KeyPair::generate().map_err(|e| pki_error("CA key", e))?;
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .map_err(|e| pki_error("CA certificate", e))?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut server = params(Validity::DEFAULT, "localhost");
    server.subject_alt_names = vec![
        SanType::DnsName(
            "localhost"
                .try_into()
                .map_err(|e| pki_error("server name", e))?,
        ),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ];
    for name in server_names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e| pki_error(&format!("server name {name:?}"), e))?,
            ),
        };
        server.subject_alt_names.push(san);
    }
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_key = KeyPair::generate().map_err(|e| pki_error("server key", e))?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(|e| pki_error("server certificate", e))?;
    write(&dir.join("server.pem"), &server_cert.pem(), false)?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;

    let mut issued = Vec::new();
    for org in orgs {
        issue_with(&issuer, dir, org.as_str(), &org, Validity::DEFAULT)?;
        issued.push(org);
    }
    Ok(DevPki {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        orgs: issued,
    })
}

/// Issues one more client certificate for `ods` from the CA in `dir` (its `ca.key`), written as
/// `<name>.pem` and `<name>.key`; tests use it for expired certificates.
pub fn issue_client(
    dir: &Path,
    name: &str,
    ods: &OdsCode,
    validity: Validity,
) -> Result<(PathBuf, PathBuf), Error> {
    issue_with(&load_issuer(dir)?, dir, name, ods, validity)
}

/// Issues a client certificate for the trusted edge `id` (URI SAN `urn:labaid:edge:<id>`) from
/// the CA in `dir`, written as `edge-<id>.pem` and `edge-<id>.key`.
pub fn issue_edge(dir: &Path, id: &EdgeId) -> Result<(PathBuf, PathBuf), Error> {
    let issuer = load_issuer(dir)?;
    let name = format!("edge-{id}");
    issue_named(
        &issuer,
        dir,
        &name,
        id.as_str(),
        &format!("{EDGE_URI_PREFIX}{id}"),
        Validity::DEFAULT,
    )
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, Error> {
    let key_pem = fs::read_to_string(dir.join("ca.key"))
        .map_err(|e| pki_error(&format!("cannot read {}", dir.join("ca.key").display()), e))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| pki_error("CA key", e))?;
    Ok(Issuer::new(ca_params(), ca_key))
}

fn issue_with(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    ods: &OdsCode,
    validity: Validity,
) -> Result<(PathBuf, PathBuf), Error> {
    let uri = format!("{ODS_URI_PREFIX}{ods}");
    issue_named(issuer, dir, name, ods.as_str(), &uri, validity)
}

fn issue_named(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    unit: &str,
    uri: &str,
    validity: Validity,
) -> Result<(PathBuf, PathBuf), Error> {
    let mut p = params(validity, unit);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, unit);
    p.subject_alt_names = vec![SanType::URI(
        uri.to_string()
            .try_into()
            .map_err(|e| pki_error("client URI", e))?,
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(|e| pki_error("client key", e))?;
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| pki_error("client certificate", e))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_ods_code() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_for(
            dir.path(),
            [OdsCode::parse("RJ7").unwrap()],
            &["broker".to_string(), "10.0.0.7".to_string()],
        )
        .unwrap();
        let server = fs::read_to_string(dir.path().join("server.pem")).unwrap();
        let (_, server) = x509_parser::pem::parse_x509_pem(server.as_bytes()).unwrap();
        let server = server.parse_x509().unwrap();
        let sans = format!(
            "{:?}",
            server.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("broker") && sans.contains("localhost"),
            "{sans}"
        );
        let (cert, _) = pki.client("RJ7");
        let pem = fs::read_to_string(cert).unwrap();
        let der = pem_der(&pem);
        assert_eq!(super::super::ods_of(&der).unwrap().as_str(), "RJ7");
        let id = EdgeId::parse("gstt-fhir").unwrap();
        let (edge, _) = issue_edge(dir.path(), &id).unwrap();
        let der = pem_der(&fs::read_to_string(edge).unwrap());
        assert_eq!(
            super::super::identity_of(&der).unwrap(),
            super::super::CertIdentity::Edge(id)
        );
        assert!(
            super::super::ods_of(&der).is_err(),
            "an edge is no organisation"
        );
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
