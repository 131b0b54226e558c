//! The gate each gRPC service sits behind: it authenticates the caller once, checks the role the
//! service is for, and hands the handlers the [`Principal`] in the request's extensions, so no
//! handler authenticates or authorises on its own.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::{Authenticator, Principal, Role};
use crate::error::Error;

/// A tonic interceptor: UNAUTHENTICATED without a valid credential, RESOURCE_EXHAUSTED over the
/// rate limit, PERMISSION_DENIED for the wrong role. The router clones its service for every
/// call, so the authenticator (its directory's sets) is shared, not copied.
#[derive(Debug, Clone)]
pub struct Gate {
    auth: Arc<Authenticator>,
    role: Option<Role>,
}

impl Gate {
    /// Lets in callers of `role` only.
    pub fn for_role(auth: Arc<Authenticator>, role: Role) -> Self {
        Self {
            auth,
            role: Some(role),
        }
    }

    /// Lets in every authenticated caller (the directory is for everyone).
    pub fn any_role(auth: Arc<Authenticator>) -> Self {
        Self { auth, role: None }
    }
}

impl Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let who = self.auth.authenticate(&request)?;
        if let Some(role) = self.role {
            who.require(role)?;
        }
        request.extensions_mut().insert(who);
        Ok(request)
    }
}

/// The caller its service's gate let in.
pub fn caller<T>(request: &Request<T>) -> Result<Principal, Error> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Internal("a service was registered without its gate".into()))
}
