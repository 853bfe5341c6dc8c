//! The guard's two clocks behind one trait, so strike windows, ban expiry and
//! rate limits are tested with a [`FakeClock`] instead of sleeps.
//!
//! Monotonic time drives what never leaves the process (strike windows, rate
//! limit buckets): a wall-clock step must not ban or rate-limit everyone.
//! Wall-clock unix seconds date bans, because bans are persisted and an
//! `Instant` means nothing after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock unix seconds as people read them: RFC 3339 UTC, whole
/// seconds (`2021-10-10T15:55:36Z`). Every time sniroute prints goes through
/// this or the access log's millisecond form, never as raw epoch seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// A time source for the guard.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin fixed when the clock was made.
    fn monotonic(&self) -> Duration;
    /// Wall-clock milliseconds since the unix epoch.
    fn unix_millis(&self) -> u64;
    /// Wall-clock whole seconds since the unix epoch.
    fn unix_secs(&self) -> u64 {
        self.unix_millis() / 1000
    }
}

/// The real clocks: `Instant` and `SystemTime`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn unix_millis(&self) -> u64 {
        // A system clock before 1970 is a broken host; treat it as the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to; both of its times advance together.
/// Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
    unix_start: u64,
}

impl FakeClock {
    /// A fake clock at monotonic zero whose wall clock reads `unix_start`.
    pub fn new(unix_start: u64) -> FakeClock {
        FakeClock {
            nanos: Arc::new(AtomicU64::new(0)),
            unix_start,
        }
    }

    /// Moves both times forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix_millis(&self) -> u64 {
        let elapsed = u64::try_from(self.monotonic().as_millis()).unwrap_or(u64::MAX);
        self.unix_start.saturating_mul(1000).saturating_add(elapsed)
    }
}
