//! The gRPC services, one file each. Handlers are thin: authenticate, authorise, validate into
//! domain types, hand the command to the engine, map the error.

mod coordinator;
mod directory;
mod labs;
mod requests;
mod watch;
mod work;

use std::sync::Arc;

use tokio::sync::watch as signal;

use crate::audit::AuditLog;
use crate::auth::{Authenticator, WatchLimiter};
use crate::domain::{Priority, RequestId, RequestState};
use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ops::Presence;

pub use coordinator::CoordinatorApi;
pub(crate) use coordinator::{reassign_job, set_lab_status};
pub use directory::DirectoryApi;
pub use labs::LabApi;
#[cfg(feature = "fuzzing")]
pub(crate) use labs::{MAX_OBSERVATIONS, validate_observations};
pub use requests::RequestApi;
pub use watch::EventStream;
pub use work::WorkStream;

/// What every service shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// The engine.
    pub engine: Engine,
    /// Credentials to principals.
    pub auth: Authenticator,
    /// Becomes true when the broker begins to shut down; watch streams end then.
    pub shutdown: signal::Receiver<bool>,
    /// The audit trail of patient-data reads and state changes.
    pub audit: AuditLog,
    /// Open watch streams per organisation.
    pub watches: WatchLimiter,
    /// When each lab was last heard from (heartbeats).
    pub presence: Arc<Presence>,
    /// The broker's metrics.
    pub metrics: Arc<Metrics>,
}

/// Largest page a list call returns.
const MAX_PAGE: u32 = 1000;
/// Page size when none is asked for.
const DEFAULT_PAGE: u32 = 100;

/// Parses a request or job id, and names it on the RPC's span.
pub(crate) fn parse_id(raw: &str) -> Result<RequestId, Error> {
    let id = RequestId::parse(raw).map_err(|e| Error::invalid("id", e))?;
    tracing::Span::current().record("request.id", tracing::field::display(id));
    Ok(id)
}

/// The state and priority filters of a list call.
pub(crate) fn list_filters(
    states: &[i32],
    priorities: &[i32],
) -> Result<(Vec<RequestState>, Vec<Priority>), Error> {
    let states = states
        .iter()
        .map(|s| {
            crate::wire::state_from(*s)
                .ok_or_else(|| Error::invalid("states", "has an unknown state"))
        })
        .collect::<Result<_, _>>()?;
    let priorities = priorities
        .iter()
        .map(|p| {
            crate::wire::priority_from(*p)
                .ok_or_else(|| Error::invalid("priorities", "has an unknown priority"))
        })
        .collect::<Result<_, _>>()?;
    Ok((states, priorities))
}

pub(crate) fn page_size(raw: u32) -> Result<usize, Error> {
    match raw {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        _ => Err(Error::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE}"),
        )),
    }
}

pub(crate) fn page_token(raw: &str) -> Result<Option<u64>, Error> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| Error::invalid("page_token", "is not a token from a previous response"))
}
