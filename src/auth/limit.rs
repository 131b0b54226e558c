//! Limits per organisation: a token bucket for calls and one for the bytes its calls add to the
//! audit trail (RESOURCE_EXHAUSTED when empty), and a cap on open watch streams, so one noisy
//! organisation cannot starve the others or fill the disk.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::Clock;
use crate::domain::OdsCode;
use crate::error::Error;

/// Token buckets per organisation, refilled from the broker's clock (so tests can drive it): one
/// for calls and, when set, one for audit bytes.
#[derive(Clone)]
pub struct RateLimiter {
    calls: Buckets,
    audit: Option<Buckets>,
    clock: Arc<dyn Clock>,
}

/// One bucket per organisation, all refilled at one rate.
#[derive(Clone)]
struct Buckets {
    per_ms: f64,
    burst: f64,
    buckets: Arc<DashMap<OdsCode, Bucket>>,
}

impl Buckets {
    fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_ms: per_second / 1000.0,
            burst: burst.max(1.0),
            buckets: Arc::new(DashMap::new()),
        }
    }

    /// Takes `amount` from `org`'s bucket if it holds that much. An amount larger than the
    /// whole bucket takes a full one, so it is delayed, never refused for good.
    fn take(&self, org: &OdsCode, amount: f64, now: i64) -> bool {
        let amount = amount.min(self.burst);
        let mut bucket = self.buckets.entry(org.clone()).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now,
        });
        let elapsed = now.saturating_sub(bucket.at_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * self.per_ms).min(self.burst);
        bucket.at_ms = now.max(bucket.at_ms);
        if bucket.tokens >= amount {
            bucket.tokens -= amount;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &(self.calls.per_ms * 1000.0))
            .field("burst", &self.calls.burst)
            .field(
                "audit_bytes_per_second",
                &self.audit.as_ref().map(|a| a.per_ms * 1000.0),
            )
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `per_second` calls sustained, up to `burst` at once, for each organisation.
    pub fn new(per_second: u32, burst: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            calls: Buckets::new(f64::from(per_second), f64::from(burst)),
            audit: None,
            clock,
        }
    }

    /// Also `bytes_per_second` of audit entries sustained, up to `burst_bytes` at once, for each
    /// organisation.
    pub fn with_audit_budget(mut self, bytes_per_second: u64, burst_bytes: u64) -> Self {
        self.audit = Some(Buckets::new(bytes_per_second as f64, burst_bytes as f64));
        self
    }

    /// Takes one call from `org`'s bucket, or RESOURCE_EXHAUSTED.
    pub fn check(&self, org: &OdsCode) -> Result<(), Error> {
        if self.calls.take(org, 1.0, self.clock.now().millis()) {
            Ok(())
        } else {
            Err(Error::ResourceExhausted(format!(
                "{org} is over its rate limit; retry shortly"
            )))
        }
    }

    /// Takes `bytes` of audit entries from `org`'s audit bucket, or RESOURCE_EXHAUSTED; always
    /// Ok without an audit budget.
    pub fn charge_audit(&self, org: &OdsCode, bytes: u64) -> Result<(), Error> {
        match &self.audit {
            Some(audit) if !audit.take(org, bytes as f64, self.clock.now().millis()) => {
                Err(Error::ResourceExhausted(format!(
                    "{org} is over its audit volume limit (the bytes its reads and changes add \
                     to the audit trail); retry shortly, or ask for smaller pages"
                )))
            }
            _ => Ok(()),
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
    fn the_audit_budget_is_per_organisation_refills_and_is_apart_from_calls() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
        let l = RateLimiter::new(1000, 1000, clock.clone()).with_audit_budget(1000, 3000);
        let a = OdsCode::parse("RJ1").unwrap();
        let b = OdsCode::parse("RJZ").unwrap();
        l.charge_audit(&a, 2000).unwrap();
        assert!(matches!(
            l.charge_audit(&a, 1001),
            Err(Error::ResourceExhausted(_))
        ));
        l.check(&a).unwrap();
        l.charge_audit(&b, 3000).unwrap();
        clock.advance(Duration::from_millis(1));
        l.charge_audit(&a, 1001).unwrap();
        // More than the whole bucket waits for a full one rather than never passing.
        clock.advance(Duration::from_secs(10));
        l.charge_audit(&a, 1_000_000).unwrap();
        assert!(l.charge_audit(&a, 1).is_err());
        // Without a budget nothing is charged.
        let unlimited = RateLimiter::new(1, 1, clock);
        unlimited.charge_audit(&a, u64::MAX).unwrap();
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
