//! Who is calling: every RPC turns its credential into a [`Principal`] here, and nowhere else.

use std::collections::BTreeSet;
use std::fmt;

use tonic::metadata::MetadataMap;

use crate::domain::OdsCode;
use crate::error::Error;

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
}

impl Principal {
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

/// The ODS code of NHS England, used as the organisation of the demo coordinator.
pub const COORDINATOR_ORG: &str = "X24";

/// Turns credentials into principals.
#[derive(Clone)]
pub struct Authenticator {
    trusts: BTreeSet<OdsCode>,
    labs: BTreeSet<OdsCode>,
    demo_tokens: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("trusts", &self.trusts.len())
            .field("labs", &self.labs.len())
            .field("demo_tokens", &self.demo_tokens)
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
            demo_tokens,
        }
    }

    /// The caller of a request, or UNAUTHENTICATED. Names the organisation on the RPC's span.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Error> {
        let principal = self.identify(metadata)?;
        tracing::Span::current().record("org", tracing::field::display(&principal.org));
        Ok(principal)
    }

    fn identify(&self, metadata: &MetadataMap) -> Result<Principal, Error> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| {
                Error::Unauthenticated("no credential: send an authorization header".into())
            })?
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
            return self.principal_for(org);
        }
        Err(Error::Unauthenticated("unknown or revoked token".into()))
    }

    fn principal_for(&self, org: &str) -> Result<Principal, Error> {
        if org.eq_ignore_ascii_case("coordinator") {
            let org = OdsCode::parse(COORDINATOR_ORG).map_err(Error::Internal)?;
            return Ok(Principal {
                org,
                role: Role::Coordinator,
            });
        }
        let ods = OdsCode::parse(org)
            .map_err(|_| Error::Unauthenticated("the token names no organisation".into()))?;
        let role = if self.trusts.contains(&ods) {
            Role::Trust
        } else if self.labs.contains(&ods) {
            Role::Lab
        } else {
            return Err(Error::Unauthenticated(format!(
                "{ods} is not an organisation in the directory"
            )));
        };
        Ok(Principal { org: ods, role })
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
            a.authenticate(&md("Bearer demo:RJ1")).unwrap().role,
            Role::Trust
        );
        assert_eq!(
            a.authenticate(&md("Bearer demo:RJ7")).unwrap().role,
            Role::Lab
        );
        assert_eq!(
            a.authenticate(&md("Bearer demo:coordinator")).unwrap().role,
            Role::Coordinator
        );
    }

    #[test]
    fn missing_unknown_and_disabled_demo_tokens_are_unauthenticated() {
        let a = auth(true);
        assert!(matches!(
            a.authenticate(&MetadataMap::new()),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate(&md("Bearer demo:RXX")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authenticate(&md("Basic abc")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth(false).authenticate(&md("Bearer demo:RJ1")),
            Err(Error::Unauthenticated(_))
        ));
    }
}
