//! Limits per organisation: a token bucket for calls (RESOURCE_EXHAUSTED when empty) and a cap on
//! open watch streams, so one noisy organisation cannot starve the others.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::Clock;
use crate::domain::OdsCode;
use crate::error::Error;

/// A token bucket per organisation, refilled from the broker's clock (so tests can drive it).
#[derive(Clone)]
pub struct RateLimiter {
    per_ms: f64,
    burst: f64,
    clock: Arc<dyn Clock>,
    buckets: Arc<DashMap<OdsCode, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &(self.per_ms * 1000.0))
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `per_second` calls sustained, up to `burst` at once, for each organisation.
    pub fn new(per_second: u32, burst: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            per_ms: f64::from(per_second) / 1000.0,
            burst: f64::from(burst.max(1)),
            clock,
            buckets: Arc::new(DashMap::new()),
        }
    }

    /// Takes one call from `org`'s bucket, or RESOURCE_EXHAUSTED.
    pub fn check(&self, org: &OdsCode) -> Result<(), Error> {
        let now = self.clock.now().millis();
        let mut bucket = self.buckets.entry(org.clone()).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now,
        });
        let elapsed = now.saturating_sub(bucket.at_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * self.per_ms).min(self.burst);
        bucket.at_ms = now.max(bucket.at_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Error::ResourceExhausted(format!(
                "{org} is over its rate limit; retry shortly"
            )))
        }
    }
}

/// Counts open watch streams per organisation.
#[derive(Clone)]
pub struct WatchLimiter {
    max: usize,
    open: Arc<DashMap<OdsCode, usize>>,
}

impl fmt::Debug for WatchLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchLimiter")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl WatchLimiter {
    /// At most `max` open watches per organisation.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(DashMap::new()),
        }
    }

    /// A slot for one more watch by `org`, released when dropped; RESOURCE_EXHAUSTED when full.
    pub fn acquire(&self, org: &OdsCode) -> Result<WatchSlot, Error> {
        let mut open = self.open.entry(org.clone()).or_insert(0);
        if *open >= self.max {
            return Err(Error::ResourceExhausted(format!(
                "{org} has {} watch streams open, the most allowed; close one first",
                self.max
            )));
        }
        *open += 1;
        Ok(WatchSlot {
            org: org.clone(),
            open: self.open.clone(),
        })
    }
}

/// One open watch; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchSlot {
    org: OdsCode,
    open: Arc<DashMap<OdsCode, usize>>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.open.get_mut(&self.org) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;
    use crate::engine::ManualClock;
    use std::time::Duration;

    #[test]
    fn the_bucket_empties_refills_and_is_per_organisation() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
        let l = RateLimiter::new(2, 3, clock.clone());
        let a = OdsCode::parse("RJ1").unwrap();
        let b = OdsCode::parse("RJZ").unwrap();
        for _ in 0..3 {
            l.check(&a).unwrap();
        }
        assert!(matches!(l.check(&a), Err(Error::ResourceExhausted(_))));
        l.check(&b).unwrap();
        clock.advance(Duration::from_millis(500));
        l.check(&a).unwrap();
        assert!(l.check(&a).is_err());
    }

    #[test]
    fn watch_slots_are_released_on_drop() {
        let w = WatchLimiter::new(1);
        let a = OdsCode::parse("RJ1").unwrap();
        let slot = w.acquire(&a).unwrap();
        assert!(w.acquire(&a).is_err());
        drop(slot);
        assert!(w.acquire(&a).is_ok());
    }
}
