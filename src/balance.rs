//! A route's backend pool: which backend a new connection tries first
//! (`balance`), which ones are in service (passive marks and active health
//! checks), and the per-backend metrics. The TLS path and the plain-HTTP path
//! both connect through a [`Pool`]; `forward` only knows how to dial one address.
//!
//! State per backend, read with a few relaxed atomic loads per connection
//! (no lock, no allocation, no timer):
//! - *checked down*: taken out by `fall` failed health checks in a row, put
//!   back by `rise` good ones. Never tried by a client while down, so no
//!   client waits on it; if every backend is checked down, a connection
//!   fails at once.
//! - *skipped*: it refused (or timed out) a client's connect, so the next
//!   connections skip it for [`PASSIVE_SKIP`] (nginx's `fail_timeout`), or
//!   until a health check or a later try succeeds. A skipped backend is still
//!   tried, last, when nothing in service answered.
//!
//! Health checks are TCP connects on the runtime, one task per backend,
//! owned by [`Checks`]: dropping it (at reload and stop) stops them. A
//! reload carries each backend's state over to the new pool of the same
//! route and address, so a dead backend stays out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Balance, HealthCheck, Route};
use crate::forward::{self, ConnectError};
use crate::metrics::BackendMetrics;

/// How long a backend that refused a client is skipped by the next ones
/// (unless a check or a later try succeeds first): nginx's `fail_timeout`
/// default. Long enough that a dead backend costs few failed tries (one
/// per ten seconds), short enough that one that comes back is used again
/// soon, also without health checks.
pub const PASSIVE_SKIP: Duration = Duration::from_secs(10);

/// One backend of a pool and its state.
pub struct Backend {
    addr: SocketAddr,
    /// Taken out by health checks.
    checked_down: AtomicBool,
    /// Skipped until this many ms after the pool's epoch; 0 = not skipped.
    skip_until: AtomicU64,
    /// Connections open to it through this pool (for `least_connections`).
    active: AtomicUsize,
    metrics: BackendMetrics,
}

impl Backend {
    /// The address, as written in the config.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is in service now: not checked down, not skipped.
    /// `now_ms` (the pool's clock) is only read when a skip is set.
    pub fn is_up(&self, now_ms: impl Fn() -> u64) -> bool {
        !self.checked_down.load(Ordering::Relaxed) && !self.skipped(now_ms)
    }

    /// Its state for `status`: `up`, `down` (health check) or `skipped`
    /// (refused a client connection less than [`PASSIVE_SKIP`] ago).
    pub fn state(&self, now_ms: impl Fn() -> u64) -> &'static str {
        if self.checked_down.load(Ordering::Relaxed) {
            "down"
        } else if self.skipped(now_ms) {
            "skipped"
        } else {
            "up"
        }
    }

    /// Connections open to it through this pool.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Its metric handles.
    pub fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }

    fn skipped(&self, now_ms: impl Fn() -> u64) -> bool {
        let until = self.skip_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// A connect (client try or check) succeeded: no longer skipped. A
    /// plain load first: the common case writes nothing.
    fn answered(&self) {
        if self.skip_until.load(Ordering::Relaxed) != 0 {
            self.skip_until.store(0, Ordering::Relaxed);
        }
    }

    /// A client's connect failed: skipped by the next ones.
    fn refused(&self, now_ms: u64, error: &std::io::Error, route: &str) {
        self.metrics.failures.increment(1);
        let until = now_ms.saturating_add(millis(PASSIVE_SKIP)).max(1);
        if self.skip_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(route, backend = %self.addr, "backend failed, skipped for {PASSIVE_SKIP:?}: {error}");
        }
    }

    /// A health check's verdict changed the backend's state.
    fn checked(&self, down: bool) {
        self.checked_down.store(down, Ordering::Relaxed);
    }
}

/// A connection's hold on its backend: counted in `least_connections` while
/// it lives.
pub struct Lease<'a> {
    backend: &'a Backend,
}

impl Lease<'_> {
    /// The backend the connection went to.
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends of one route (or of one route's `http_backends`).
pub struct Pool {
    route: String,
    backends: Vec<Backend>,
    balance: Balance,
    health_check: Option<HealthCheck>,
    /// Where round robin (and the tie-break of least connections) starts next.
    cursor: AtomicUsize,
    /// Time zero of the `skip_until` marks.
    epoch: Instant,
}

impl Pool {
    /// The pool of `route`'s `backends`. State (checked down, skipped) is
    /// carried over from `previous` (the same route's pool before a reload)
    /// for every address it also had.
    pub fn new(route: &Route, previous: Option<&Pool>) -> Pool {
        Pool::of(
            &route.name,
            &route.backends,
            route.balance,
            route.health_check,
            previous,
        )
    }

    /// A pool of `addrs` labelled `route` in metrics and logs.
    pub fn of(
        route: &str,
        addrs: &[SocketAddr],
        balance: Balance,
        health_check: Option<HealthCheck>,
        previous: Option<&Pool>,
    ) -> Pool {
        let epoch = previous.map_or_else(Instant::now, |p| p.epoch);
        let backends = addrs
            .iter()
            .map(|&addr| {
                let old = previous.and_then(|p| p.backends.iter().find(|b| b.addr == addr));
                // Checks that no longer exist cannot put a backend back.
                let checked_down = health_check.is_some()
                    && old.is_some_and(|b| b.checked_down.load(Ordering::Relaxed));
                let skip_until = old.map_or(0, |b| b.skip_until.load(Ordering::Relaxed));
                Backend {
                    addr,
                    checked_down: AtomicBool::new(checked_down),
                    skip_until: AtomicU64::new(skip_until),
                    active: AtomicUsize::new(0),
                    // Its counters go on; a new address starts at zero.
                    metrics: old.map_or_else(BackendMetrics::new, |b| b.metrics.clone()),
                }
            })
            .collect();
        Pool {
            route: route.to_owned(),
            backends,
            balance,
            health_check,
            cursor: AtomicUsize::new(0),
            epoch,
        }
    }

    /// The backends, in config order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The route it belongs to (its label in metrics and logs).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Each backend with its state and open connections, for `status`.
    pub fn states(&self) -> impl Iterator<Item = (SocketAddr, &'static str, usize)> + '_ {
        self.backends
            .iter()
            .map(|b| (b.addr, b.state(|| self.now_ms()), b.active()))
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Connects to a backend: in service ones first, from where the policy
    /// says, each in turn on failure; then, as a last resort, those skipped
    /// after a refusal. Never one that health checks took out. Config
    /// validation keeps a pool at 64 backends at most (`tried` is a bit mask).
    pub async fn connect(&self, timeout: Duration) -> Result<(TcpStream, Lease<'_>), ConnectError> {
        let n = self.backends.len();
        let now = || self.now_ms();
        let start = self.start(now);
        let mut tried: u64 = 0;
        let mut last = None;
        for last_resort in [false, true] {
            for i in 0..n {
                let index = (start + i) % n;
                let bit = 1u64.checked_shl(index as u32).unwrap_or(0);
                let Some(backend) = self.backends.get(index) else {
                    continue;
                };
                if tried & bit != 0
                    || backend.checked_down.load(Ordering::Relaxed)
                    || (!last_resort && backend.skipped(now))
                {
                    continue;
                }
                tried |= bit;
                match forward::connect_one(backend.addr, timeout).await {
                    Ok(stream) => {
                        backend.answered();
                        backend.active.fetch_add(1, Ordering::Relaxed);
                        backend.metrics.connections.increment(1);
                        return Ok((stream, Lease { backend }));
                    }
                    Err(e) => {
                        backend.refused(self.now_ms(), &e, &self.route);
                        last = Some(e);
                    }
                }
            }
        }
        let last = last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "every backend is down (health checks)",
            )
        });
        Err(ConnectError { last })
    }

    /// The index the first try starts from.
    fn start(&self, now: impl Fn() -> u64 + Copy) -> usize {
        let n = self.backends.len();
        if n < 2 {
            return 0;
        }
        match self.balance {
            Balance::First => 0,
            Balance::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            Balance::LeastConnections => {
                // Ties go in turn, so equal backends share the load.
                let from = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|i| (from + i) % n)
                    .filter_map(|i| Some((i, self.backends.get(i)?)))
                    .filter(|(_, b)| b.is_up(now))
                    .min_by_key(|(_, b)| b.active.load(Ordering::Relaxed))
                    .map_or(from, |(i, _)| i)
            }
        }
    }
}

/// The health-check tasks of a set of pools; dropping it stops them all.
#[derive(Default)]
pub struct Checks {
    tasks: Vec<AbortHandle>,
}

impl Checks {
    /// Starts one check task per backend of every pool that has a
    /// `health_check` (on the current runtime).
    pub fn start<'a>(pools: impl IntoIterator<Item = &'a Arc<Pool>>) -> Checks {
        let mut tasks = Vec::new();
        for pool in pools {
            let Some(hc) = pool.health_check else {
                continue;
            };
            for index in 0..pool.backends.len() {
                let task = tokio::spawn(check_loop(Arc::clone(pool), index, hc));
                tasks.push(task.abort_handle());
            }
        }
        Checks { tasks }
    }

    /// How many backends are being checked.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no backend is being checked.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Checks backend `index` of `pool` every `interval`, forever (until aborted):
/// `fall` failures in a row take it out, `rise` successes put it back; a
/// success also ends a skip after a client's failed try.
async fn check_loop(pool: Arc<Pool>, index: usize, hc: HealthCheck) {
    let Some(backend) = pool.backends.get(index) else {
        return;
    };
    let mut ticks = tokio::time::interval(hc.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut fails, mut oks) = (0u32, 0u32);
    loop {
        ticks.tick().await;
        let result = forward::connect_one(backend.addr, hc.timeout).await;
        let down = backend.checked_down.load(Ordering::Relaxed);
        match result {
            Ok(stream) => {
                drop(stream);
                fails = 0;
                oks = oks.saturating_add(1);
                backend.answered();
                if down && oks >= hc.rise {
                    tracing::info!(route = %pool.route, backend = %backend.addr, "backend is back ({oks} good checks)");
                    backend.checked(false);
                }
            }
            Err(e) => {
                oks = 0;
                fails = fails.saturating_add(1);
                if !down && fails >= hc.fall {
                    tracing::warn!(route = %pool.route, backend = %backend.addr, "backend taken out after {fails} failed checks: {e}");
                    backend.checked(true);
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addrs: &[&str], balance: Balance) -> Pool {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        Pool::of("t", &addrs, balance, None, None)
    }

    #[test]
    fn start_follows_the_policy() {
        let p = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            Balance::First,
        );
        let zero = || 0;
        assert_eq!((p.start(zero), p.start(zero)), (0, 0));
        let p = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            Balance::RoundRobin,
        );
        let starts: Vec<usize> = (0..6).map(|_| p.start(zero)).collect();
        assert_eq!(starts, [0, 1, 2, 0, 1, 2]);
        let p = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            Balance::LeastConnections,
        );
        p.backends[0].active.store(2, Ordering::Relaxed);
        p.backends[1].active.store(1, Ordering::Relaxed);
        p.backends[2].active.store(3, Ordering::Relaxed);
        assert_eq!(p.start(zero), 1);
        p.backends[1].checked_down.store(true, Ordering::Relaxed);
        assert_eq!(p.start(zero), 0, "a down backend is not the idlest");
        p.backends[2].active.store(2, Ordering::Relaxed);
        let ties: Vec<usize> = (0..4).map(|_| p.start(zero)).collect();
        assert!(ties.contains(&0) && ties.contains(&2), "{ties:?}");
    }

    #[test]
    fn skips_end_and_carry_over_a_reload() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"], Balance::First);
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        p.backends[0].refused(1_000, &e, "t");
        assert!(!p.backends[0].is_up(|| 1_000));
        assert!(p.backends[0].is_up(|| 1_000 + millis(PASSIVE_SKIP)));
        let addrs: Vec<SocketAddr> = [
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        ]
        .into();
        let after = Pool::of("t", &addrs, Balance::First, None, Some(&p));
        assert!(
            !after.backends[0].is_up(|| 1_000),
            "the skip was carried over"
        );
        // The counters too: the kept backend's go on, a new one starts at 0.
        after.backends[0].metrics.failures.increment(1);
        p.backends[0].metrics.failures.increment(1);
        assert_eq!(
            after.backends[0].metrics.failures_so_far(),
            3,
            "the same counter"
        );
        assert_eq!(after.backends[1].metrics.failures_so_far(), 0);
        after.backends[0].answered();
        assert!(after.backends[0].is_up(|| 1_000));
    }
}
