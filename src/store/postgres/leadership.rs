//! One term of leadership, ended once by whoever notices first that it is over: the lease renewer
//! (another broker took the lease, or the session holding it was lost), its watchdog (renewals
//! stopped succeeding), or the broker when a journal write fails (fenced, or its outcome
//! unknown). Stepping down lets the lease lapse if it is still this term's, names the leader for
//! callers, and wakes the broker, which stops leading and goes back to being a standby; the
//! process carries on. It never waits on the database for more than a twentieth of the lease's
//! lifetime: the database may be the thing that stopped answering.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::connect::{PgTarget, pg_error, within};
use super::lease;
use crate::store::StoreError;

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
    /// How long stepping down waits to learn the leader before it ends the term without.
    wait: Duration,
    /// How long the release may go on after that, on a thread of its own.
    release_within: Duration,
    /// Set as stepping down begins.
    ending: AtomicBool,
    stepping: Mutex<Stepping>,
    changed: Condvar,
    lost: watch::Sender<bool>,
}

/// How far stepping down has got.
#[derive(Default)]
struct Stepping {
    /// The release has answered (or failed) and the leader hint is set from it.
    named: bool,
    /// The term is over: `lost` was sent.
    over: bool,
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
    /// The term that holds the lease at `epoch`, which lasts `lifetime` from each renewal.
    pub(crate) fn new(
        target: PgTarget,
        epoch: i64,
        on_leader: OnLeader,
        lifetime: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                epoch,
                on_leader,
                // The watchdog steps down at 0.8 of a lifetime: this keeps the end well inside it.
                wait: lifetime / 20,
                release_within: lifetime,
                ending: AtomicBool::new(false),
                stepping: Mutex::new(Stepping::default()),
                changed: Condvar::new(),
                lost: watch::Sender::new(false),
            }),
        }
    }

    /// The epoch this term holds.
    pub fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    /// Ends the term (the first call does; later ones return once it is over). Waits a
    /// twentieth of the lease's lifetime at most for the database to release the lease and name
    /// the leader, so that the first caller refused already hears where to go when the database
    /// answers; when it does not, callers hear no leader until the release answers (it goes
    /// on, bounded, on a thread of its own) or the broker, a standby again, reads the lease.
    pub fn step_down(&self, why: &str) {
        let inner = &*self.inner;
        let started = Instant::now();
        let first = !inner.ending.swap(true, Ordering::AcqRel);
        if first {
            tracing::error!(
                store.epoch = inner.epoch,
                reason = why,
                "leadership lost; stepping down to standby"
            );
            self.start_release();
        }
        let stepping = inner.stepping.lock().unwrap_or_else(|e| e.into_inner());
        let (mut stepping, _) = inner
            .changed
            .wait_timeout_while(stepping, inner.wait, |s| !s.named)
            .unwrap_or_else(|e| e.into_inner());
        if first {
            if !stepping.named {
                // Not this broker, at least: callers are no longer sent here.
                (inner.on_leader)(None);
                tracing::warn!(
                    store.epoch = inner.epoch,
                    ms = started.elapsed().as_millis() as u64,
                    "the database did not name the leader in time; the term ends without"
                );
            }
            inner.lost.send_replace(true);
            stepping.over = true;
            inner.changed.notify_all();
        } else {
            // The first caller ends the term within its own wait.
            drop(
                inner
                    .changed
                    .wait_while(stepping, |s| !s.over)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
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

    /// Releases the lease and reads the leader on a thread of its own, then sets the leader hint
    /// from what it read (or to none if that failed): even after the term has ended without it,
    /// it is the newest word on who leads.
    fn start_release(&self) {
        let term = self.clone();
        let spawned = thread::Builder::new()
            .name("labaid-step-down".into())
            .spawn(move || {
                let inner = &*term.inner;
                let leader = term.release_and_read_leader();
                let mut stepping = inner.stepping.lock().unwrap_or_else(|e| e.into_inner());
                match leader {
                    Ok(leader) => (inner.on_leader)(leader),
                    Err(e) => {
                        tracing::warn!(store.epoch = inner.epoch, error = %e, "cannot read the lease while stepping down");
                        (inner.on_leader)(None);
                    }
                }
                stepping.named = true;
                inner.changed.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(store.epoch = self.inner.epoch, error = %e, "cannot start the lease release; it lapses on its own");
            let mut stepping = self
                .inner
                .stepping
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            (self.inner.on_leader)(None);
            stepping.named = true;
        }
    }

    /// Lets the lease lapse now if this term still holds it (so a standby, or this broker again,
    /// takes over at once with state read back from the database), then reads who leads. Gives
    /// up after a lifetime: by then the lease has lapsed anyway.
    fn release_and_read_leader(&self) -> Result<Option<String>, StoreError> {
        let inner = &*self.inner;
        let url = inner.target.url();
        within(inner.release_within, "releasing the lease", async {
            let session = inner.target.session().await?;
            session
                .client
                .execute(lease::RELEASE, &[&inner.epoch])
                .await
                .map_err(|e| pg_error(url, e))?;
            let row = session
                .client
                .query_opt(lease::LEADER, &[])
                .await
                .map_err(|e| pg_error(url, e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }
}
