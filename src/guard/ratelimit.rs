//! Per-source rate limit on new connections: a governor keyed limiter (GCRA)
//! with `per_ip` per second and a bucket of `burst`, keyed like bans.
//!
//! governor keeps a key forever unless `retain_recent()` is called; the
//! guard's housekeeping does, every second, so the key count stays near
//! "sources seen in the last `burst / per_ip` seconds". The limiter reads the
//! guard's monotonic clock, so tests drive it with a fake clock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use super::clock::Clock;

/// Adapts the guard's clock to governor's.
#[derive(Clone)]
pub struct LimiterClock(pub Arc<dyn Clock>);

impl GovernorClock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.monotonic()
    }
}

/// The keyed limiter and the settings it was built from.
pub struct SourceLimiter {
    per_ip: u32,
    burst: u32,
    limiter: RateLimiter<IpNet, DashMapStateStore<IpNet>, LimiterClock, NoOpMiddleware<Duration>>,
}

impl SourceLimiter {
    /// A limiter for `per_ip` new connections per second with a bucket of
    /// `burst`; `None` when `per_ip` is 0 (no limit). A `burst` of 0 is
    /// taken as 1 (a bucket must hold at least one connection).
    pub fn new(per_ip: u32, burst: u32, clock: Arc<dyn Clock>) -> Option<SourceLimiter> {
        let rate = NonZeroU32::new(per_ip)?;
        let bucket = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(bucket);
        Some(SourceLimiter {
            per_ip,
            burst,
            limiter: RateLimiter::dashmap_with_clock(quota, LimiterClock(clock)),
        })
    }

    /// True when built from exactly these settings (a reload keeps the buckets).
    pub fn same_settings(&self, per_ip: u32, burst: u32) -> bool {
        self.per_ip == per_ip && self.burst == burst
    }

    /// Takes one connection from `source`'s bucket; false when it is empty.
    pub fn check(&self, source: &IpNet) -> bool {
        self.limiter.check_key(source).is_ok()
    }

    /// Forgets sources whose bucket is full again; returns the keys left.
    pub fn retain_recent(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.len()
    }

    /// Releases map capacity left over from a past peak.
    pub fn shrink_to_fit(&self) {
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::clock::FakeClock;

    #[test]
    fn burst_then_refill_per_source() {
        let clock = FakeClock::new(1_700_000_000);
        let l = SourceLimiter::new(2, 5, Arc::new(clock.clone())).unwrap();
        let a: IpNet = "192.0.2.1/32".parse().unwrap();
        let b: IpNet = "192.0.2.2/32".parse().unwrap();
        for _ in 0..5 {
            assert!(l.check(&a));
        }
        assert!(!l.check(&a));
        assert!(l.check(&b));
        clock.advance(Duration::from_millis(500));
        assert!(l.check(&a));
        assert!(!l.check(&a));
        // After the whole bucket refilled, both keys are indistinguishable from new.
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.retain_recent(), 0);
    }

    #[test]
    fn zero_disables() {
        assert!(SourceLimiter::new(0, 40, Arc::new(FakeClock::new(0))).is_none());
    }
}
