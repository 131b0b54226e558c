//! Trusted edges: labaid-edge processes that authenticate as themselves (a client certificate
//! naming `urn:labaid:edge:<id>`, or a token of their own) and may then call on behalf of the
//! organisations the broker's config lets them speak for, one organisation named per call in
//! [`ON_BEHALF_OF`]. An edge never acts as itself, and the header lifts nobody else.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use super::token::digest;
use crate::domain::OdsCode;
use crate::error::Error;

/// The metadata key an edge names the organisation it verified in.
pub const ON_BEHALF_OF: &str = "x-labaid-on-behalf-of";
/// The URI prefix that names an edge in its client certificate.
pub const EDGE_URI_PREFIX: &str = "urn:labaid:edge:";
/// The longest edge id.
const MAX_ID: usize = 64;

/// An edge's name: lower-case letters, digits and hyphens, starting with a letter or digit
/// (1 to 64 characters), so it is safe in a certificate URI and an audit entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeId(Arc<str>);

impl EdgeId {
    /// Parses an edge id.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_ID
            && !raw.starts_with('-')
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(raw.into()))
        } else {
            Err(format!(
                "edge id {raw:?} must be 1 to {MAX_ID} lower-case letters, digits or hyphens, not starting with a hyphen"
            ))
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EdgeId({})", self.0)
    }
}

/// One configured edge: whom it may speak for, and the hash of its token if it has one (without
/// one it authenticates only by certificate).
#[derive(Clone, PartialEq, Eq)]
pub struct EdgeGrant {
    /// Its id.
    pub id: EdgeId,
    /// The organisations it may call on behalf of (trusts or labs of the directory).
    pub speaks_for: BTreeSet<OdsCode>,
    /// SHA-256 of its token.
    pub sha256: Option<[u8; 32]>,
}

impl fmt::Debug for EdgeGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeGrant")
            .field("id", &self.id)
            .field("speaks_for", &self.speaks_for)
            .field("token", &self.sha256.is_some())
            .finish()
    }
}

/// The configured edges, by id and by token hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edges {
    by_id: HashMap<EdgeId, BTreeSet<OdsCode>>,
    by_digest: HashMap<[u8; 32], EdgeId>,
}

impl Edges {
    pub(crate) fn new(grants: impl IntoIterator<Item = EdgeGrant>) -> Self {
        let mut edges = Self::default();
        for g in grants {
            if let Some(sha) = g.sha256 {
                edges.by_digest.insert(sha, g.id.clone());
            }
            edges.by_id.insert(g.id, g.speaks_for);
        }
        edges
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The edge whose token this is.
    pub(crate) fn by_token(&self, token: &str) -> Option<&EdgeId> {
        self.by_digest.get(&digest(token))
    }

    /// The configured edge a certificate names: UNAUTHENTICATED when none is configured so.
    pub(crate) fn by_cert(&self, id: &EdgeId) -> Result<EdgeId, Error> {
        if self.by_id.contains_key(id) {
            Ok(id.clone())
        } else {
            Err(Error::Unauthenticated(format!(
                "the client certificate names edge {id}, which is not configured"
            )))
        }
    }

    /// The organisation `edge` may call for, as named by the header's value: PERMISSION_DENIED
    /// without one, or for one outside its grant.
    pub(crate) fn speaks_for(&self, edge: &EdgeId, named: Option<&str>) -> Result<OdsCode, Error> {
        let denied = Error::PermissionDenied;
        let named = named.ok_or_else(|| {
            denied(format!(
                "edge {edge} calls only on behalf of an organisation: name it in {ON_BEHALF_OF}"
            ))
        })?;
        let org = OdsCode::parse(named.trim())
            .map_err(|_| denied(format!("{ON_BEHALF_OF} does not name an ODS code")))?;
        if self.by_id.get(edge).is_some_and(|orgs| orgs.contains(&org)) {
            Ok(org)
        } else {
            Err(denied(format!("edge {edge} may not speak for {org}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_plain_lower_case_names() {
        assert!(EdgeId::parse("gstt-fhir-1").is_ok());
        for bad in ["", "-x", "GSTT", "a b", "a:b", &"a".repeat(65)] {
            assert!(EdgeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_edge_speaks_only_for_its_organisations_and_only_when_it_names_one() {
        let id = EdgeId::parse("gstt").unwrap();
        let edges = Edges::new([EdgeGrant {
            id: id.clone(),
            speaks_for: [OdsCode::parse("RJ1").unwrap()].into(),
            sha256: Some(digest("edge-secret")),
        }]);
        assert_eq!(edges.by_token("edge-secret"), Some(&id));
        assert!(edges.by_token("other").is_none());
        assert_eq!(edges.speaks_for(&id, Some("rj1")).unwrap().as_str(), "RJ1");
        for named in [None, Some("RJZ"), Some("not an ods code")] {
            assert!(
                matches!(
                    edges.speaks_for(&id, named),
                    Err(Error::PermissionDenied(_))
                ),
                "{named:?}"
            );
        }
        let stranger = EdgeId::parse("stranger").unwrap();
        assert!(matches!(
            edges.by_cert(&stranger),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            edges.speaks_for(&stranger, Some("RJ1")),
            Err(Error::PermissionDenied(_))
        ));
    }
}
