//! One term of leadership, ended once by whoever notices first that it is over: the lease renewer
//! (another broker took the lease, or the session holding it was lost), its watchdog (renewals
//! stopped succeeding), or the broker when a journal write fails (fenced, or its outcome
//! unknown). Stepping down lets the lease lapse if it is still this term's, names the leader for
//! callers, and wakes the broker, which stops leading and goes back to being a standby; the
//! process carries on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::connect::{PgTarget, pg_error};
use super::lease;

/// Where a standby's or a deposed leader's callers are sent: the leader's address, or `None`.
pub type OnLeader = Arc<dyn Fn(Option<String>) + Send + Sync>;

/// A term of leadership at one epoch. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    target: PgTarget,
    epoch: i64,
    on_leader: OnLeader,
    /// Set as stepping down begins.
    ending: AtomicBool,
    /// Held while stepping down, so that a second caller returns only once it is done.
    stepped_down: Mutex<bool>,
    lost: watch::Sender<bool>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("epoch", &self.inner.epoch)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The term that holds the lease at `epoch`.
    pub(crate) fn new(target: PgTarget, epoch: i64, on_leader: OnLeader) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                epoch,
                on_leader,
                ending: AtomicBool::new(false),
                stepped_down: Mutex::new(false),
                lost: watch::Sender::new(false),
            }),
        }
    }

    /// The epoch this term holds.
    pub fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    /// Ends the term (the first call does; later ones wait for it to be done). Blocks for a few
    /// queries: the leader's address is known before anyone is told the term is over, so that
    /// the first caller refused already hears where to go.
    pub fn step_down(&self, why: &str) {
        let inner = &*self.inner;
        let mut stepped_down = inner.stepped_down.lock().unwrap_or_else(|e| e.into_inner());
        if *stepped_down {
            return;
        }
        inner.ending.store(true, Ordering::Release);
        tracing::error!(
            store.epoch = inner.epoch,
            reason = why,
            "leadership lost; stepping down to standby"
        );
        match self.release_and_read_leader() {
            Ok(leader) => (inner.on_leader)(leader),
            Err(e) => {
                tracing::warn!(store.epoch = inner.epoch, error = %e, "cannot read the lease while stepping down");
                (inner.on_leader)(None);
            }
        }
        inner.lost.send_replace(true);
        *stepped_down = true;
    }

    /// True from the moment stepping down begins: the renewer and its watchdog stop then.
    pub(crate) fn is_ending(&self) -> bool {
        self.inner.ending.load(Ordering::Acquire)
    }

    /// True once the term is over.
    pub fn is_lost(&self) -> bool {
        *self.inner.lost.borrow()
    }

    /// Turns true when the term is over.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.inner.lost.subscribe()
    }

    /// Lets the lease lapse now if this term still holds it (so a standby, or this broker again,
    /// takes over at once with state read back from the database), then reads who leads.
    fn release_and_read_leader(&self) -> Result<Option<String>, crate::store::StoreError> {
        let url = self.inner.target.url();
        let mut client = self.inner.target.connect()?;
        client
            .execute(
                "UPDATE labaid_lease SET expires = '-infinity' WHERE id = 1 AND epoch = $1",
                &[&self.inner.epoch],
            )
            .map_err(|e| pg_error(url, e))?;
        lease::leader(&mut client, url)
    }
}
