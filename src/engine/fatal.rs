//! What stops the engine: a decided batch, or a snapshot of it, that cannot be made durable. On
//! the file store the broker aborts the process (recovery then replays only what is durable, and
//! no caller was answered for the rest); on PostgreSQL it ends its term as leader instead (the
//! write was fenced or its outcome is unknown, and the next term reads back what the database
//! holds); a test passes its own hook to watch it happen.

use std::sync::Arc;

use crate::audit::AuditFailed;
use crate::store::StoreError;

/// Why the engine cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// The journal did not make a batch durable.
    #[error("journal append failed: {0}")]
    Journal(#[source] StoreError),
    /// The audit trail did not make a batch's entries durable.
    #[error("audit write failed under a decided batch: {0}")]
    Audit(#[source] AuditFailed),
    /// A snapshot could not be taken.
    #[error("snapshot failed: {0}")]
    Snapshot(#[source] StoreError),
    /// The journal could not finish its background work at a stop.
    #[error("journal close failed: {0}")]
    Close(#[source] StoreError),
}

/// Called once, from the syncer, with what stopped it. The engine stops deciding either way; when
/// the hook returns, the engine closes and the callers still waiting hear UNAVAILABLE.
pub type OnFatal = Arc<dyn Fn(&Fatal) + Send + Sync>;

/// The broker's hook: stop the process at once. Never retry a failed sync (the kernel may have
/// dropped the dirty pages) and never answer the batch's callers.
pub fn abort_process() -> OnFatal {
    Arc::new(|_: &Fatal| std::process::abort())
}
