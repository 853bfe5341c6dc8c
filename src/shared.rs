//! The state every listener, connection and the admin socket share: the
//! config snapshot (swapped whole on reload), the guard, the access log,
//! the connection metrics and the count of open connections; and the
//! [`Control`] requests that reach the running server.
//!
//! It sits below `listener`, `conn`, `admin` and `server`, and imports none
//! of them: `server` builds it, the others use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, oneshot};

use crate::accesslog::AccessLog;
use crate::balance::Pool;
use crate::config::{Config, Route};
use crate::guard::Guard;
use crate::metrics::{ConnMetrics, Live, LiveBackend, RouteMetrics};
use crate::routes::RouteTable;

/// What a connection needs of the config, swapped whole on reload. Each
/// connection keeps the snapshot it started with.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// Parallel to `routes.routes()`.
    pub route_metrics: Vec<RouteMetrics>,
    /// Each route's backend pool, parallel to `routes.routes()`.
    pub pools: Vec<Arc<Pool>>,
    /// Each route's pool of `http_backends` (`None` without), parallel to
    /// `routes.routes()`: same `balance` and `health_check` as `backends`.
    pub http_pools: Vec<Option<Arc<Pool>>>,
}

impl Snapshot {
    pub fn new(config: Config) -> Snapshot {
        Snapshot::after(config, None)
    }

    /// The snapshot of `config` replacing `previous` (on reload): backend
    /// health and the metrics of routes and backends carry over to the
    /// route of the same name.
    pub fn after(config: Config, previous: Option<&Snapshot>) -> Snapshot {
        let routes = RouteTable::new(&config.routes, config.fallback.as_ref());
        let route_metrics = routes
            .routes()
            .iter()
            .map(|r| {
                previous
                    .and_then(|p| p.route_metrics_named(&r.name))
                    .map_or_else(RouteMetrics::new, RouteMetrics::clone)
            })
            .collect();
        let pools = routes
            .routes()
            .iter()
            .map(|r| Arc::new(Pool::new(r, previous.and_then(|p| p.pool_named(&r.name)))))
            .collect();
        let http_pools = routes
            .routes()
            .iter()
            .map(|r| {
                (!r.http_backends.is_empty()).then(|| {
                    let previous = previous.and_then(|p| p.http_pool_named(&r.name));
                    let (balance, check) = (r.balance, r.health_check);
                    Arc::new(Pool::of(
                        &r.name,
                        &r.http_backends,
                        balance,
                        check,
                        previous,
                    ))
                })
            })
            .collect();
        Snapshot {
            config,
            routes,
            route_metrics,
            pools,
            http_pools,
        }
    }

    /// The route at `index` and its metric handles.
    pub fn route(&self, index: usize) -> Option<(&Route, &RouteMetrics)> {
        Some((self.routes.get(index)?, self.route_metrics.get(index)?))
    }

    /// The backend pool of the route at `index`.
    pub fn pool(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index).map(|p| &**p)
    }

    /// The pool of the `http_backends` of the route at `index`, if it has any.
    pub fn http_pool(&self, index: usize) -> Option<&Pool> {
        self.http_pools.get(index)?.as_deref()
    }

    /// Every pool, `backends` and `http_backends` (for the health checks).
    pub fn all_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter().chain(self.http_pools.iter().flatten())
    }

    /// The series a scrape reports for this config: its routes and the
    /// backends of their pools (state read now), and `open_connections`.
    pub fn live(&self, open_connections: usize) -> Live<'_> {
        let routes = self
            .routes
            .routes()
            .iter()
            .zip(&self.route_metrics)
            .map(|(r, m)| (r.name.as_str(), m))
            .collect();
        let backends = self
            .all_pools()
            .flat_map(|pool| {
                pool.backends()
                    .iter()
                    .zip(pool.states())
                    .map(|(b, (addr, state, _))| LiveBackend {
                        route: pool.route(),
                        addr,
                        up: state == "up",
                        metrics: b.metrics(),
                    })
            })
            .collect();
        Live {
            open_connections,
            routes,
            backends,
        }
    }

    fn route_metrics_named(&self, name: &str) -> Option<&RouteMetrics> {
        let index = self.routes.routes().iter().position(|r| r.name == name)?;
        self.route_metrics.get(index)
    }

    fn pool_named(&self, name: &str) -> Option<&Pool> {
        let index = self.routes.routes().iter().position(|r| r.name == name)?;
        self.pool(index)
    }

    fn http_pool_named(&self, name: &str) -> Option<&Pool> {
        let index = self.routes.routes().iter().position(|r| r.name == name)?;
        self.http_pool(index)
    }
}

/// State shared by every listener and connection.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub guard: Arc<Guard>,
    pub log: AccessLog,
    pub metrics: ConnMetrics,
    open: AtomicUsize,
    drained: Notify,
}

/// A place under `max_connections`; released on drop.
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Shared {
    /// Shared state serving `config` with `guard` and `log`.
    pub fn new(config: Config, guard: Arc<Guard>, log: AccessLog) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            guard,
            log,
            metrics: ConnMetrics::new(),
            open: AtomicUsize::new(0),
            drained: Notify::new(),
        }
    }

    /// Puts `snapshot` in force for connections accepted from now on.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether `ip` is a trusted balancer (`proxy_protocol.accept_from`) of
    /// the config in force. No reference count taken: called on every accept.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.snapshot
            .load()
            .config
            .proxy_protocol
            .accept_from
            .contains(ip)
    }

    /// Takes a slot if fewer than `max` connections are open.
    pub fn take_slot(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(self));
        (before < max).then_some(slot)
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Appends to a scrape the series computed from the config in force
    /// now (see [`crate::metrics::Live`]).
    pub fn write_live_metrics(&self, out: &mut String) {
        self.snapshot().live(self.open_connections()).write(out);
    }

    /// Resolves once no client connection is open.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A request to the running server.
#[derive(Debug)]
pub enum Control {
    /// Reload the config file; the reply says whether it was taken, or why not.
    Reload(Option<oneshot::Sender<Result<String, String>>>),
    /// Stop accepting, drain for up to `shutdown_grace`, return.
    Stop,
    /// Reopen the access log file (after log rotation), nothing else: no
    /// config is read, no reload is counted.
    ReopenLogs,
}
