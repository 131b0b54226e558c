//! systemd readiness (`sd_notify`, for `Type=notify` units): READY=1 once the broker serves
//! (its store recovered and its listeners bound), STOPPING=1 when it starts to drain, and
//! WATCHDOG=1 at half the interval the unit asks for with `WatchdogSec=`. Without a
//! `NOTIFY_SOCKET` (not started by systemd) every notification is a no-op.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::oneshot;

/// Shortest watchdog ping interval, whatever the unit asks for.
const MIN_PING: Duration = Duration::from_millis(10);

/// Waits for the broker to serve, tells systemd it is ready, then pings the watchdog (if the unit
/// has one) for as long as the runtime runs. A ping comes from a runtime timer, so a wedged
/// runtime stops them and systemd restarts the broker.
pub async fn notify_when_ready(ready: oneshot::Receiver<()>, listen: SocketAddr) {
    // Dropped unsent: the broker stopped before serving; systemd sees the process exit.
    if ready.await.is_err() {
        return;
    }
    let status = format!("STATUS=serving gRPC on {listen}");
    send(&[NotifyState::Ready, NotifyState::Custom(&status)]);
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(MIN_PING);
    tracing::info!(
        watchdog_ms = interval.as_millis() as u64,
        "pinging the systemd watchdog"
    );
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// Resolves when `shutdown` does, having told systemd that the broker is stopping (draining its
/// calls and syncing its journal), so that the unit shows "deactivating" meanwhile.
pub async fn stopping_after(shutdown: impl Future<Output = ()>) {
    shutdown.await;
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
