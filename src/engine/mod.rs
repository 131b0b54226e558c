//! The sequencer and its syncer: one thread owns every mutation. It batches commands, decides
//! each with the pure core and hands the batch to the syncer thread, which appends every batch
//! that queued up with one journal sync, then updates the read views, publishes events, and only
//! then replies. Between batches the sequencer hands the syncer a snapshot of the state when the
//! journal asks for one.

mod clock;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::domain::Timestamp;
use crate::error::Error;
use crate::routing::{Command, Outcome, Reply, Router, State};
use crate::store::{Entry, Journal, Snapshot};

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use views::{Changes, EventLog, Views};

/// Most commands decided between two journal syncs.
const MAX_BATCH: usize = 512;
/// Commands waiting for the sequencer before callers are held back.
const QUEUE_DEPTH: usize = 8192;
/// Decided batches waiting for their journal sync before the sequencer is held back.
const SYNC_QUEUE: usize = 64;

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

/// A caller waiting for its command's answer.
type Pending = (oneshot::Sender<Result<Reply, Error>>, Result<Reply, Error>);

/// What the sequencer hands the syncer, in decision order.
enum ToSync {
    /// A decided batch: journal it, show it to readers, then answer its callers.
    Batch {
        entries: Vec<Entry>,
        replies: Vec<Pending>,
        changes: Changes,
    },
    /// The state after every batch sent so far, for a snapshot.
    Snapshot(Box<State>),
    /// The sequencer stopped; the state after its last batch, for a closing snapshot.
    Close(Box<State>),
}

/// Decides batches of commands and hands each to the syncer, without waiting for its journal
/// sync: the next batch is decided while the previous one is being made durable.
async fn run(
    mut router: Router,
    journal: Box<dyn Journal>,
    views: Arc<Views>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::Receiver<Envelope>,
    close: Arc<tokio::sync::Notify>,
) {
    let (to_sync, from_sequencer) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
    let snapshot_wanted = Arc::new(AtomicBool::new(false));
    let syncer = {
        let views = views.clone();
        let snapshot_wanted = snapshot_wanted.clone();
        thread::Builder::new()
            .name("labaid-syncer".into())
            .spawn(move || sync(journal, &views, &from_sequencer, &snapshot_wanted))
    };
    let syncer = match syncer {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the journal syncer; stopping");
            std::process::abort();
        }
    };
    let mut batch: Vec<Envelope> = Vec::with_capacity(MAX_BATCH);
    let mut outcome = Outcome::default();
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
        let mut entries = Vec::with_capacity(batch.len() + 1);
        let mut replies = Vec::with_capacity(batch.len());
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
        // Even a batch that changed nothing goes through the syncer: its answers may depend on
        // an earlier batch (an idempotent resubmission) that is not durable yet.
        let changes = Changes::capture(&router, &mut outcome);
        send(
            &to_sync,
            ToSync::Batch {
                entries,
                replies,
                changes,
            },
        );
        if snapshot_wanted.swap(false, Ordering::AcqRel) {
            send(&to_sync, ToSync::Snapshot(Box::new(router.state().clone())));
        }
    }
    send(&to_sync, ToSync::Close(Box::new(router.state().clone())));
    drop(to_sync);
    if syncer.join().is_err() {
        tracing::error!("journal syncer panicked; stopping");
        std::process::abort();
    }
    tracing::debug!("sequencer stopped");
}

fn send(to_sync: &std::sync::mpsc::SyncSender<ToSync>, message: ToSync) {
    // The syncer only goes away by aborting the process, so a closed channel means a bug.
    if to_sync.send(message).is_err() {
        tracing::error!("journal syncer gone; stopping");
        std::process::abort();
    }
}

/// Makes decided batches durable in order, one journal sync for every batch that queued up
/// while the previous sync ran (group commit sized by load), then updates the read views and
/// answers the callers.
fn sync(
    mut journal: Box<dyn Journal>,
    views: &Views,
    from_sequencer: &std::sync::mpsc::Receiver<ToSync>,
    snapshot_wanted: &AtomicBool,
) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut done: Vec<(Vec<Pending>, Changes)> = Vec::new();
    let mut closing = None;
    while closing.is_none() {
        let Ok(first) = from_sequencer.recv() else {
            break;
        };
        // What queued up while the last sync ran, bounded so that a sequencer that never pauses
        // cannot postpone the sync forever.
        let queued = std::iter::from_fn(|| from_sequencer.try_recv().ok()).take(SYNC_QUEUE);
        for message in std::iter::once(first).chain(queued) {
            match message {
                ToSync::Batch {
                    entries: batch,
                    replies,
                    changes,
                } => {
                    entries.extend(batch);
                    done.push((replies, changes));
                }
                ToSync::Snapshot(state) => {
                    make_durable(&mut *journal, views, &mut entries, &mut done);
                    if journal.snapshot_due(false) {
                        snapshot(*state, views, &mut *journal);
                    }
                }
                ToSync::Close(state) => {
                    closing = Some(state);
                    break;
                }
            }
        }
        make_durable(&mut *journal, views, &mut entries, &mut done);
        if journal.snapshot_due(false) {
            snapshot_wanted.store(true, Ordering::Release);
        }
    }
    // A snapshot at a clean stop makes the next start read it instead of replaying the journal.
    if let Some(state) = closing
        && journal.snapshot_due(true)
    {
        snapshot(*state, views, &mut *journal);
    }
    if let Err(err) = journal.close() {
        tracing::error!(error = %err, "journal close failed; stopping");
        std::process::abort();
    }
}

/// Appends `entries` with one sync, then shows each batch to readers and answers its callers.
fn make_durable(
    journal: &mut dyn Journal,
    views: &Views,
    entries: &mut Vec<Entry>,
    done: &mut Vec<(Vec<Pending>, Changes)>,
) {
    if !entries.is_empty() {
        let started = std::time::Instant::now();
        let appended = journal.append(entries);
        let metrics = views.metrics();
        metrics.store_sync.observe(started.elapsed().as_secs_f64());
        metrics.store_batch.observe(entries.len() as f64);
        if let Err(err) = appended {
            // Never retry a failed sync: the kernel may have dropped the dirty pages. Stop, and
            // let recovery replay what is durable.
            tracing::error!(error = %err, "journal append failed; stopping");
            std::process::abort();
        }
        entries.clear();
    }
    for (replies, changes) in done.drain(..) {
        views.apply(changes);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}

/// Hands the journal the state after the last durable batch. Cloning shares the requests (they
/// are `Arc`s), so the sequencer pauses for a copy of the indexes, not for encoding or I/O.
fn snapshot(state: State, views: &Views, journal: &mut dyn Journal) {
    let snapshot = Snapshot {
        state,
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
