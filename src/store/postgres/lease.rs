//! Leadership: one lease row with an epoch and an expiry set by the database's own clock (it
//! survives a database failover and a holder that died mid-query, unlike a session advisory
//! lock). The leader renews it well inside its lifetime on one session, opened as the term
//! begins; losing that session ends the term, since a new one could reach another database (a
//! promoted standby holds the same lease row at the same epoch). A watchdog on this process's
//! monotonic clock, on a thread that never touches the database, steps the broker down when
//! renewals have not succeeded for most of a lifetime, so a paused leader stops leading as soon as
//! it runs again and one whose database stopped answering stops before its lease lapses. Journal
//! writes check the epoch themselves (see `journal`), so nothing it writes after a takeover
//! commits.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use super::connect::{PgTarget, pg_error, within};
use super::leadership::Leadership;
use crate::store::StoreError;

/// Extends the lease held at epoch `$1` by `$2` seconds, unless it has lapsed or was released: a
/// renewal sent before a step-down and run after it (by a database that was paused) must not
/// take the lease back.
const RENEW: &str = "UPDATE labaid_lease SET expires = clock_timestamp() + make_interval(secs => $2) \
                     WHERE id = 1 AND epoch = $1 AND expires > clock_timestamp()";

/// Lets the lease held at epoch `$1` lapse now.
pub(crate) const RELEASE: &str =
    "UPDATE labaid_lease SET expires = '-infinity' WHERE id = 1 AND epoch = $1";

/// The address of the broker holding an unexpired lease.
pub(crate) const LEADER: &str =
    "SELECT address FROM labaid_lease WHERE id = 1 AND expires >= clock_timestamp()";

/// How long a lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// From the last renewal until a standby may take over.
    pub lifetime: Duration,
    /// Between renewals (a sixth of the lifetime by default: five may fail before it lapses).
    pub renew_every: Duration,
    /// Between a standby's attempts (and its reads of the journal).
    pub poll_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_millis(2_000),
            renew_every: Duration::from_millis(330),
            poll_every: Duration::from_millis(100),
        }
    }
}

/// Takes the lease if it has lapsed (by the database's clock), with the next epoch.
pub(crate) fn try_acquire(
    client: &mut Client,
    url: &str,
    holder: &str,
    address: &str,
    lifetime: Duration,
) -> Result<Option<i64>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE labaid_lease SET epoch = epoch + 1, holder = $1, address = $2, \
             expires = clock_timestamp() + make_interval(secs => $3) \
             WHERE id = 1 AND expires < clock_timestamp() RETURNING epoch",
            &[&holder, &address, &lifetime.as_secs_f64()],
        )
        .map_err(|e| pg_error(url, e))?;
    Ok(row.map(|r| r.get(0)))
}

/// The address of the broker holding an unexpired lease, if any.
pub(crate) fn leader(client: &mut Client, url: &str) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(LEADER, &[])
        .map_err(|e| pg_error(url, e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Keeps a held lease: a renewer thread and a watchdog, which end the term when it is lost.
/// Dropping it (or `release`) stops both.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    epoch: i64,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    target: PgTarget,
    timing: LeaseTiming,
}

impl LeaseKeeper {
    /// Starts renewing the lease `term` holds.
    pub(crate) fn start(
        target: PgTarget,
        term: &Leadership,
        timing: LeaseTiming,
    ) -> Result<Self, StoreError> {
        let epoch = term.epoch();
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        // Milliseconds since `origin` at the last successful renewal (or the acquisition).
        let renewed = Arc::new(AtomicU64::new(0));
        let renewer = {
            let (stop, renewed, target, term) =
                (stop.clone(), renewed.clone(), target.clone(), term.clone());
            thread::Builder::new()
                .name("labaid-lease".into())
                .spawn(move || renew(&target, &term, timing, origin, &renewed, &stop))?
        };
        let watchdog = {
            let (stop, renewed, term) = (stop.clone(), renewed.clone(), term.clone());
            thread::Builder::new()
                .name("labaid-lease-watchdog".into())
                .spawn(move || watch(&term, timing, origin, &renewed, &stop))?
        };
        Ok(Self {
            epoch,
            stop,
            threads: vec![renewer, watchdog],
            target,
            timing,
        })
    }

    /// The epoch held.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Stops renewing and lets the lease lapse now, so a standby takes over at once (a clean stop).
    /// Gives up after a lifetime, when the lease has lapsed anyway.
    pub(crate) fn release(mut self) -> Result<(), StoreError> {
        self.stop_threads();
        let (target, epoch) = (&self.target, self.epoch);
        let released = within(self.timing.lifetime, "releasing the lease", async {
            let session = target.session().await?;
            session
                .client
                .execute(RELEASE, &[&epoch])
                .await
                .map_err(|e| pg_error(target.url(), e))
        })?;
        if released == 1 {
            tracing::info!(store.epoch = self.epoch, "lease released");
        }
        Ok(())
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// The renewer thread: renews on a runtime of its own until the term ends, then steps down if it
/// was what ended it.
fn renew(
    target: &PgTarget,
    term: &Leadership,
    timing: LeaseTiming,
    origin: Instant,
    renewed: &AtomicU64,
    stop: &AtomicBool,
) {
    let over = || stop.load(Ordering::Acquire) || term.is_ending();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            term.step_down(&format!("cannot start the lease renewer: {e}"));
            return;
        }
    };
    let ended = runtime.block_on(keep(target, term.epoch(), timing, origin, renewed, &over));
    // Closes the session first: stepping down must not wait behind it.
    drop(runtime);
    if let Some(why) = ended {
        term.step_down(&why);
    }
}

/// Renews on one session until the term is over (`None`) or must end (`Some(why)`). Every wait
/// gives way to the end of the term, so a database that stopped answering holds nothing here.
async fn keep(
    target: &PgTarget,
    epoch: i64,
    timing: LeaseTiming,
    origin: Instant,
    renewed: &AtomicU64,
    over: &dyn Fn() -> bool,
) -> Option<String> {
    let tick = tick(timing);
    let session = match until_over(target.session(), over, tick).await? {
        Ok(session) => session,
        Err(e) => {
            return Some(format!(
                "cannot open the session that renews the lease: {e}"
            ));
        }
    };
    let lifetime = timing.lifetime.as_secs_f64();
    loop {
        until_over(tokio::time::sleep(timing.renew_every), over, tick).await?;
        let started = origin.elapsed();
        match until_over(
            session.client.execute(RENEW, &[&epoch, &lifetime]),
            over,
            tick,
        )
        .await?
        {
            // Counted from before the statement was sent: the database set the expiry later.
            Ok(1) => renewed.store(started.as_millis() as u64, Ordering::Release),
            Ok(_) => return Some("the lease lapsed or another broker took it".into()),
            // Never renewed on a new session: after a failover the multi-host URL leads it to the
            // promoted standby, where this epoch's lease row is too, and the term would go on
            // there with its journal's session on the dead primary.
            Err(e) if session.lost(&e) => {
                return Some(format!(
                    "lost the database session that holds the lease: {e}"
                ));
            }
            Err(e) => tracing::warn!(store.epoch = epoch, error = %e, "lease renewal failed"),
        }
    }
}

/// `work`'s output, or `None` (with `work` dropped) once the term is over, checked every `tick`.
async fn until_over<T>(
    work: impl Future<Output = T>,
    over: &dyn Fn() -> bool,
    tick: Duration,
) -> Option<T> {
    let ended = async {
        while !over() {
            tokio::time::sleep(tick).await;
        }
    };
    tokio::select! {
        out = work => Some(out),
        () = ended => None,
    }
}

/// How often the watchdog, and the renewer's waits, look at the clock and the term.
fn tick(timing: LeaseTiming) -> Duration {
    (timing.renew_every / 4).max(Duration::from_millis(10))
}

/// The watchdog thread: only atomics and sleeps, so nothing the database does can hold it.
fn watch(
    term: &Leadership,
    timing: LeaseTiming,
    origin: Instant,
    renewed: &AtomicU64,
    stop: &AtomicBool,
) {
    // A margin for clock rate differences and the time a renewal takes to reach the database.
    let limit = timing.lifetime.mul_f64(0.8).as_millis() as u64;
    let tick = tick(timing);
    let over = || stop.load(Ordering::Acquire) || term.is_ending();
    while !over() {
        let since =
            (origin.elapsed().as_millis() as u64).saturating_sub(renewed.load(Ordering::Acquire));
        if since > limit && !over() {
            tracing::warn!(
                store.epoch = term.epoch(),
                lease.unrenewed_ms = since,
                lease.limit_ms = limit,
                lease.lifetime_ms = timing.lifetime.as_millis() as u64,
                "lease watchdog: no renewal has succeeded for most of the lease's lifetime"
            );
            term.step_down("the lease was not renewed within its lifetime");
            return;
        }
        thread::sleep(tick);
    }
}
