//! The sequencer: one task owns every mutation. It batches commands, decides each with the pure
//! core, appends the batch to the journal (one sync per batch), then updates the read views,
//! publishes events, and only then replies. Between batches it hands the journal a snapshot of
//! the state when the journal asks for one.

mod clock;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::domain::Timestamp;
use crate::error::Error;
use crate::routing::{Command, Outcome, Reply, Router};
use crate::store::{Entry, Journal, Snapshot};

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use views::{EventLog, Views};

/// Most commands decided between two journal syncs.
const MAX_BATCH: usize = 512;
/// Commands waiting for the sequencer before callers are held back.
const QUEUE_DEPTH: usize = 8192;

struct Envelope {
    command: Command,
    reply: oneshot::Sender<Result<Reply, Error>>,
}

/// A handle to the running sequencer and its read views. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    tx: mpsc::Sender<Envelope>,
    views: Arc<Views>,
    clock: Arc<dyn Clock>,
    stopping: Arc<AtomicBool>,
    close: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the sequencer on its own thread, so that journal syncs never block the runtime that
    /// serves gRPC. The returned handle joins when every `Engine` clone is dropped.
    pub fn start(
        router: Router,
        journal: Box<dyn Journal>,
        views: Arc<Views>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, thread::JoinHandle<()>), Error> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let seq_views = views.clone();
        let seq_clock = clock.clone();
        let close = Arc::new(tokio::sync::Notify::new());
        let seq_close = close.clone();
        let handle = thread::Builder::new()
            .name("labaid-sequencer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        tracing::error!(error = %err, "sequencer runtime failed to start");
                        return;
                    }
                };
                rt.block_on(run(router, journal, seq_views, seq_clock, rx, seq_close));
            })
            .map_err(|e| Error::Internal(format!("cannot start the sequencer thread: {e}")))?;
        Ok((
            Self {
                tx,
                views,
                clock,
                stopping: Arc::new(AtomicBool::new(false)),
                close,
            },
            handle,
        ))
    }

    /// Sends a command to the sequencer and waits until it is decided and durable.
    pub async fn execute(&self, command: Command) -> Result<Reply, Error> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(
                "the broker is shutting down; retry on its replacement".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Envelope { command, reply })
            .await
            .map_err(|_| Error::Unavailable("the broker is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the broker is shutting down".into()))?
    }

    /// Tells the sequencer to finish the commands it has been sent and stop, even while handles
    /// remain (a connection cut off at shutdown may still hold one).
    pub fn close(&self) {
        self.stop_accepting();
        self.close.notify_one();
    }

    /// Refuses new commands from now on (graceful shutdown).
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The read views.
    pub fn views(&self) -> &Arc<Views> {
        &self.views
    }

    /// The current time on the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

async fn run(
    mut router: Router,
    mut journal: Box<dyn Journal>,
    views: Arc<Views>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Envelope>,
    close: Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(MAX_BATCH);
    let mut entries: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    loop {
        let next_timer = router.next_timer();
        tokio::select! {
            biased;
            received = rx.recv() => match received {
                Some(envelope) => batch.push(envelope),
                None => break,
            },
            // Closing refuses new sends; what is already queued is still decided and replied
            // to, then `recv` returns None.
            () = close.notified() => rx.close(),
            () = sleep_until(&*clock, next_timer) => {}
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        let now = clock.now();
        let mut outcome = Outcome::default();
        // Timers first: an offer whose lease ran out cannot be accepted in the same batch.
        if router.next_timer().is_some_and(|t| t <= now) {
            let _ = router.apply(&Command::Tick, now, &mut outcome);
            if outcome.changed {
                entries.push(Entry {
                    time: now,
                    command: Command::Tick,
                });
            }
        }
        for envelope in batch.drain(..) {
            outcome.changed = false;
            let result = router.apply(&envelope.command, now, &mut outcome);
            if outcome.changed {
                entries.push(Entry {
                    time: now,
                    command: envelope.command,
                });
            }
            replies.push((envelope.reply, result));
        }
        if !entries.is_empty() {
            let started = std::time::Instant::now();
            let appended = journal.append(&entries);
            let metrics = views.metrics();
            metrics.store_sync.observe(started.elapsed().as_secs_f64());
            metrics.store_batch.observe(entries.len() as f64);
            if let Err(err) = appended {
                // Never retry a failed sync: the kernel may have dropped the dirty pages. Stop,
                // and let recovery replay what is durable.
                tracing::error!(error = %err, "journal append failed; stopping");
                std::process::abort();
            }
            entries.clear();
        }
        views.apply(&router, &outcome);
        for (reply, result) in replies.drain(..) {
            let _ = reply.send(result);
        }
        if journal.snapshot_due(false) {
            snapshot(&router, &views, &mut *journal);
        }
    }
    // A snapshot at a clean stop makes the next start read it instead of replaying the journal.
    if journal.snapshot_due(true) {
        snapshot(&router, &views, &mut *journal);
    }
    if let Err(err) = journal.close() {
        tracing::error!(error = %err, "journal close failed; stopping");
        std::process::abort();
    }
    tracing::debug!("sequencer stopped");
}

/// Hands the journal the state after the last batch. Cloning shares the requests (they are
/// `Arc`s), so the sequencer pauses for a copy of the indexes, not for encoding or I/O.
fn snapshot(router: &Router, views: &Views, journal: &mut dyn Journal) {
    let snapshot = Snapshot {
        state: router.state().clone(),
        events: views.all_events().into_values().flatten().collect(),
    };
    if let Err(err) = journal.snapshot(snapshot) {
        tracing::error!(error = %err, "snapshot failed; stopping");
        std::process::abort();
    }
}

async fn sleep_until(clock: &dyn Clock, at: Option<Timestamp>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}
