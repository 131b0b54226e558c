//! The clocks the engine runs on: the wall clock for production, and a manual one that tests move
//! by hand (the [`Clock`] trait itself is the core's).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Clock, Sleep, Timestamp};

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let wait = at.millis_since(Timestamp::now());
                if wait <= 0 {
                    return;
                }
                // Re-check after sleeping: the wall clock may have been stepped meanwhile.
                tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
            }
        })
    }
}

/// A clock that moves only when told to, so tests of leases and deadlines need no sleeps.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        let (moved, _) = watch::channel(start.millis());
        Self {
            now: AtomicI64::new(start.millis()),
            moved,
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let now = self.now.fetch_add(ms, Ordering::SeqCst) + ms;
        self.moved.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep<'_> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock, so this only ends when time reaches `at`.
            let _ = moved.wait_for(|now| *now >= at.millis()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_moved_past_their_instant() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        let sleep = clock.sleep_until(Timestamp::from_millis(5_000));
        tokio::pin!(sleep);
        clock.advance(Duration::from_millis(1_000));
        assert!(futures_poll_once(sleep.as_mut()).await.is_none());
        clock.advance(Duration::from_millis(3_000));
        sleep.await;
        assert_eq!(clock.now(), Timestamp::from_millis(5_000));
    }

    async fn futures_poll_once(f: Pin<&mut Sleep<'_>>) -> Option<()> {
        tokio::select! {
            biased;
            () = f => Some(()),
            () = std::future::ready(()) => None,
        }
    }
}
