//! Who is calling: every RPC turns its credential into a [`Principal`] here, and nowhere else.

mod cert;
pub mod devpki;
mod edge;
mod gate;
mod limit;
mod token;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use tonic::Request;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::CertificateDer;

use crate::domain::OdsCode;
use crate::error::Error;

pub use cert::{CertIdentity, ODS_URI_PREFIX, identity_of, ods_of};
pub use edge::{EDGE_URI_PREFIX, EdgeGrant, EdgeId, ON_BEHALF_OF};
pub use gate::{Gate, caller};
pub use limit::{RateLimiter, WatchLimiter, WatchSlot};
pub use token::{
    NewToken, TOKEN_PREFIX, TokenHash, create as create_token, create_edge as create_edge_token,
    digest as token_digest,
};

/// What an organisation may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A requesting trust.
    Trust,
    /// A performing lab.
    Lab,
    /// An incident coordinator (admin).
    Coordinator,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trust => "trust",
            Self::Lab => "lab",
            Self::Coordinator => "coordinator",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The calling organisation.
    pub org: OdsCode,
    /// Its role.
    pub role: Role,
    /// The trusted edge that made the call on the organisation's behalf, if one did.
    pub via: Option<EdgeId>,
}

/// Whom a credential names, before any [`ON_BEHALF_OF`] is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Org(Principal),
    Edge(EdgeId),
}

impl Principal {
    /// `org` calling as `role` with its own credential.
    pub fn new(org: OdsCode, role: Role) -> Self {
        Self {
            org,
            role,
            via: None,
        }
    }

    /// Ok when the caller has `role`, else PERMISSION_DENIED.
    pub fn require(&self, role: Role) -> Result<&Self, Error> {
        if self.role == role {
            Ok(self)
        } else {
            Err(Error::PermissionDenied(format!(
                "{} is a {}; this call is for a {}",
                self.org,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }
}

/// The ODS code of NHS England, used as the organisation of the demo coordinator and the default
/// coordinator organisation for certificates.
pub const COORDINATOR_ORG: &str = "X24";

impl Role {
    /// Parses `trust`, `lab` or `coordinator`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "trust" => Ok(Self::Trust),
            "lab" => Ok(Self::Lab),
            "coordinator" => Ok(Self::Coordinator),
            other => Err(format!(
                "role {other:?} is not one of trust, lab, coordinator"
            )),
        }
    }
}

/// Turns credentials into principals: a verified client certificate, a configured bearer token,
/// or (demo on loopback only) a demo token; then charges the caller's rate limit.
#[derive(Clone)]
pub struct Authenticator {
    trusts: BTreeSet<OdsCode>,
    labs: BTreeSet<OdsCode>,
    coordinators: BTreeSet<OdsCode>,
    tokens: Arc<token::TokenIndex>,
    edges: Arc<edge::Edges>,
    demo_tokens: bool,
    limiter: Option<RateLimiter>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("trusts", &self.trusts.len())
            .field("labs", &self.labs.len())
            .field("coordinators", &self.coordinators.len())
            .field("tokens", &self.tokens.len())
            .field("edges", &self.edges.len())
            .field("demo_tokens", &self.demo_tokens)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for this directory. Demo tokens (`Bearer demo:<ODS>`) are honoured only
    /// when `demo_tokens` is set, which the server does only for the demo on a loopback listener.
    pub fn new(
        trusts: impl IntoIterator<Item = OdsCode>,
        labs: impl IntoIterator<Item = OdsCode>,
        demo_tokens: bool,
    ) -> Self {
        Self {
            trusts: trusts.into_iter().collect(),
            labs: labs.into_iter().collect(),
            coordinators: BTreeSet::new(),
            tokens: Arc::default(),
            edges: Arc::default(),
            demo_tokens,
            limiter: None,
        }
    }

    /// Organisations whose certificates act as coordinators.
    pub fn with_coordinators(mut self, orgs: impl IntoIterator<Item = OdsCode>) -> Self {
        self.coordinators = orgs.into_iter().collect();
        self
    }

    /// The configured bearer tokens (hashes only).
    pub fn with_tokens(mut self, tokens: impl IntoIterator<Item = TokenHash>) -> Self {
        self.tokens = Arc::new(token::TokenIndex::new(tokens));
        self
    }

    /// The trusted edges, which may call on behalf of the organisations each is granted.
    pub fn with_edges(mut self, edges: impl IntoIterator<Item = EdgeGrant>) -> Self {
        self.edges = Arc::new(edge::Edges::new(edges));
        self
    }

    /// Charges every authenticated call to its organisation's bucket.
    pub fn with_rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The caller of a request: UNAUTHENTICATED without a valid credential, RESOURCE_EXHAUSTED
    /// when its organisation is over its rate limit.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let peer = request
            .extensions()
            .get::<crate::accept::PeerInfo>()
            .and_then(|p| p.certs.clone());
        self.authenticate_parts(request.metadata(), peer.as_deref().map(Vec::as_slice))
    }

    /// [`Self::authenticate`] from the parts: the metadata and the verified TLS client chain.
    /// A trusted edge's credential stands for the organisation its [`ON_BEHALF_OF`] names, if
    /// its grant allows; from anyone else that header is PERMISSION_DENIED.
    pub fn authenticate_parts(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Principal, Error> {
        let from_cert = match peer_certs.and_then(<[_]>::first) {
            Some(leaf) => Some(self.credential_for_cert(leaf)?),
            None => None,
        };
        let from_token = match metadata.get("authorization") {
            Some(value) => Some(self.credential_for_header(value)?),
            None => None,
        };
        let credential = match (from_cert, from_token) {
            // Both are allowed (a proxy may add a token) but they must agree.
            (Some(cert), Some(token)) if cert != token => {
                return Err(Error::Unauthenticated(
                    "the bearer token and the client certificate name different callers".into(),
                ));
            }
            (Some(c), _) | (None, Some(c)) => c,
            (None, None) => {
                return Err(Error::Unauthenticated(
                    "no credential: present a client certificate or send an authorization header"
                        .into(),
                ));
            }
        };
        let on_behalf = metadata.get(ON_BEHALF_OF);
        let principal = match credential {
            Credential::Org(p) if on_behalf.is_some() => {
                return Err(Error::PermissionDenied(format!(
                    "{} may not send {ON_BEHALF_OF}: only a configured edge calls on behalf of an organisation",
                    p.org
                )));
            }
            Credential::Org(p) => p,
            Credential::Edge(id) => {
                let named = on_behalf.map(|v| v.to_str().unwrap_or(""));
                let org = self.edges.speaks_for(&id, named)?;
                let role = self.directory_role(&org).ok_or_else(|| {
                    Error::PermissionDenied(format!("{org} is not a trust or lab in the directory"))
                })?;
                Principal {
                    org,
                    role,
                    via: Some(id),
                }
            }
        };
        let span = tracing::Span::current();
        span.record("org", tracing::field::display(&principal.org));
        if let Some(edge) = &principal.via {
            span.record("edge", tracing::field::display(edge));
        }
        self.charge(&principal.org)?;
        Ok(principal)
    }

    /// Charges one call to `org`'s rate limit: RESOURCE_EXHAUSTED when it is used up. An action
    /// on a stream is charged as the call it stands for.
    pub fn charge(&self, org: &OdsCode) -> Result<(), Error> {
        match &self.limiter {
            Some(limiter) => limiter.check(org),
            None => Ok(()),
        }
    }

    /// A trust's or lab's role from the directory.
    fn directory_role(&self, org: &OdsCode) -> Option<Role> {
        if self.trusts.contains(org) {
            Some(Role::Trust)
        } else if self.labs.contains(org) {
            Some(Role::Lab)
        } else {
            None
        }
    }

    fn credential_for_cert(&self, leaf: &CertificateDer<'static>) -> Result<Credential, Error> {
        let ods = match cert::identity_of(leaf.as_ref())? {
            CertIdentity::Org(ods) => ods,
            CertIdentity::Edge(id) => return self.edges.by_cert(&id).map(Credential::Edge),
        };
        let role = match self.directory_role(&ods) {
            Some(role) => role,
            None if self.coordinators.contains(&ods) => Role::Coordinator,
            None => {
                return Err(Error::Unauthenticated(format!(
                    "the client certificate names {ods}, which is not in the directory"
                )));
            }
        };
        Ok(Credential::Org(Principal::new(ods, role)))
    }

    fn credential_for_header(&self, value: &MetadataValue<Ascii>) -> Result<Credential, Error> {
        let header = value
            .to_str()
            .map_err(|_| Error::Unauthenticated("the authorization header is not text".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization header must be 'Bearer <token>'".into())
            })?
            .trim();
        if let Some(org) = token.strip_prefix("demo:") {
            if !self.demo_tokens {
                return Err(Error::Unauthenticated(
                    "demo tokens are accepted only by the demo broker on loopback".into(),
                ));
            }
            return self.principal_for_demo(org).map(Credential::Org);
        }
        if let Some(id) = self.edges.by_token(token) {
            return Ok(Credential::Edge(id.clone()));
        }
        self.tokens
            .find(token)
            .map(|t| Credential::Org(Principal::new(t.org.clone(), t.role)))
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))
    }

    fn principal_for_demo(&self, org: &str) -> Result<Principal, Error> {
        if org.eq_ignore_ascii_case("coordinator") {
            let org = OdsCode::parse(COORDINATOR_ORG).map_err(Error::Internal)?;
            return Ok(Principal::new(org, Role::Coordinator));
        }
        let ods = OdsCode::parse(org)
            .map_err(|_| Error::Unauthenticated("the token names no organisation".into()))?;
        let role = self.directory_role(&ods).ok_or_else(|| {
            Error::Unauthenticated(format!("{ods} is not an organisation in the directory"))
        })?;
        Ok(Principal::new(ods, role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(demo: bool) -> Authenticator {
        Authenticator::new(
            [OdsCode::parse("RJ1").unwrap()],
            [OdsCode::parse("RJ7").unwrap()],
            demo,
        )
    }

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn demo_tokens_map_to_the_directory_role() {
        let a = auth(true);
        assert_eq!(
            a.authenticate_parts(&md("Bearer demo:RJ1"), None)
                .unwrap()
                .role,
            Role::Trust
        );
        assert_eq!(
            a.authenticate_parts(&md("Bearer demo:RJ7"), None)
                .unwrap()
                .role,
            Role::Lab
        );
        assert_eq!(
            a.authenticate_parts(&md("Bearer demo:coordinator"), None)
                .unwrap()
                .role,
            Role::Coordinator
        );
    }

    #[test]
    fn missing_unknown_and_disabled_demo_tokens_are_unauthenticated() {
        let a = auth(true);
        assert!(matches!(
            a.authenticate_parts(&MetadataMap::new(), None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate_parts(&md("Bearer demo:RXX"), None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate_parts(&md("Basic abc"), None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth(false).authenticate_parts(&md("Bearer demo:RJ1"), None),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn on_behalf_of_is_honoured_from_a_granted_edge_only_and_never_lifts_anyone_else() {
        let rj1 = OdsCode::parse("RJ1").unwrap();
        let edge = EdgeId::parse("gstt-fhir").unwrap();
        let a = auth(false)
            .with_tokens([TokenHash {
                org: rj1.clone(),
                role: Role::Trust,
                sha256: token_digest("rj1-token"),
            }])
            .with_edges([EdgeGrant {
                id: edge.clone(),
                speaks_for: [rj1.clone(), OdsCode::parse("RJ7").unwrap()].into(),
                sha256: Some(token_digest("edge-token")),
            }]);
        let with = |token: &str, org: Option<&str>| {
            let mut m = md(&format!("Bearer {token}"));
            if let Some(org) = org {
                m.insert(ON_BEHALF_OF, org.parse().unwrap());
            }
            a.authenticate_parts(&m, None)
        };
        let p = with("edge-token", Some("RJ1")).unwrap();
        assert_eq!(
            (p.org.as_str(), p.role, p.via),
            ("RJ1", Role::Trust, Some(edge.clone()))
        );
        assert_eq!(with("edge-token", Some("RJ7")).unwrap().role, Role::Lab);
        // RJZ is a trust the edge is not granted; the edge alone is nobody.
        for org in [Some("RJZ"), None, Some("X24")] {
            assert!(
                matches!(with("edge-token", org), Err(Error::PermissionDenied(_))),
                "{org:?}"
            );
        }
        // An organisation's own token with the header is refused, even naming itself.
        for org in ["RJ7", "RJ1"] {
            assert!(matches!(
                with("rj1-token", Some(org)),
                Err(Error::PermissionDenied(_))
            ));
        }
        assert_eq!(
            with("rj1-token", None).unwrap(),
            Principal::new(rj1, Role::Trust)
        );
    }
}
