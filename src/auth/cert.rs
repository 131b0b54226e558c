//! Reads who a client certificate names, once rustls has verified it against the configured
//! client CA: an organisation by exactly one URI subject alternative name `urn:ods:<ODS>`
//! (e.g. `urn:ods:RJ7`), or a trusted edge by `urn:labaid:edge:<id>`. The broker's gRPC API and
//! labaid-edge's FHIR listener both map certificates with this code.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::edge::{EDGE_URI_PREFIX, EdgeId};
use crate::domain::OdsCode;
use crate::error::Error;

/// The URI prefix that names an organisation in a certificate.
pub const ODS_URI_PREFIX: &str = "urn:ods:";

/// Whom a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// An organisation, by its ODS code.
    Org(OdsCode),
    /// A trusted edge, by its id.
    Edge(EdgeId),
}

fn bad(why: &str) -> Error {
    Error::Unauthenticated(format!("client certificate: {why}"))
}

/// Whom a DER-encoded certificate names. A certificate naming nobody, or more than one name
/// (two ODS codes, or an ODS code and an edge), identifies nobody: a CA that issued it made a
/// mistake, and we do not guess.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("cannot be parsed"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("malformed subject alternative name"))?
        .ok_or_else(|| bad("no subject alternative name naming an ODS code (urn:ods:<ODS>)"))?;
    let strip = |uri: &str, prefix: &str| {
        let (scheme, rest) = uri.split_at_checked(prefix.len())?;
        scheme
            .eq_ignore_ascii_case(prefix)
            .then(|| rest.to_string())
    };
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => strip(uri, ODS_URI_PREFIX)
            .map(|ods| (true, ods))
            .or_else(|| strip(uri, EDGE_URI_PREFIX).map(|id| (false, id))),
        _ => None,
    });
    let (is_org, name) = names
        .next()
        .ok_or_else(|| bad("no URI subject alternative name urn:ods:<ODS>"))?;
    if names.next().is_some() {
        return Err(bad("names more than one organisation or edge"));
    }
    if is_org {
        OdsCode::parse(&name)
            .map(CertIdentity::Org)
            .map_err(|_| bad("the urn:ods: name is not an ODS code"))
    } else {
        EdgeId::parse(&name)
            .map(CertIdentity::Edge)
            .map_err(|_| bad("the urn:labaid:edge: name is not an edge id"))
    }
}

/// The ODS code of a DER-encoded certificate: UNAUTHENTICATED unless it names exactly one
/// organisation (an edge's certificate names none).
pub fn ods_of(der: &[u8]) -> Result<OdsCode, Error> {
    match identity_of(der)? {
        CertIdentity::Org(ods) => Ok(ods),
        CertIdentity::Edge(_) => Err(bad("names an edge, not an organisation")),
    }
}
