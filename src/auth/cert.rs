//! Reads the organisation from a client certificate that rustls has already verified against the
//! configured client CA: the ODS code is carried in exactly one URI subject alternative name,
//! `urn:ods:<ODS>` (e.g. `urn:ods:RJ7`).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::OdsCode;
use crate::error::Error;

/// The URI prefix that names an organisation in a certificate.
pub const ODS_URI_PREFIX: &str = "urn:ods:";

/// The ODS code of a DER-encoded certificate. A certificate with no `urn:ods:` URI, or with more
/// than one, identifies nobody: a CA that issued it made a mistake, and we do not guess.
pub fn ods_of(der: &[u8]) -> Result<OdsCode, Error> {
    let bad = |why: &str| Error::Unauthenticated(format!("client certificate: {why}"));
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("cannot be parsed"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("malformed subject alternative name"))?
        .ok_or_else(|| bad("no subject alternative name naming an ODS code (urn:ods:<ODS>)"))?;
    let mut codes = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => {
            let (scheme, rest) = uri.split_at_checked(ODS_URI_PREFIX.len())?;
            scheme.eq_ignore_ascii_case(ODS_URI_PREFIX).then_some(rest)
        }
        _ => None,
    });
    let first = codes
        .next()
        .ok_or_else(|| bad("no URI subject alternative name urn:ods:<ODS>"))?;
    if codes.next().is_some() {
        return Err(bad("names more than one ODS code"));
    }
    OdsCode::parse(first).map_err(|_| bad("the urn:ods: name is not an ODS code"))
}
