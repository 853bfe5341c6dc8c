//! Builds, starts, reloads and stops sniroute: binds the listeners, builds
//! the [`Shared`] state, runs the accept loops, the metrics endpoint, the
//! admin socket and the guard's housekeeping, and drains at shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arc_swap::ArcSwapOption;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::accesslog::AccessLog;
use crate::admin::AdminServer;
use crate::balance::Checks;
use crate::config::{self, Config};
use crate::conn::Protocol;
use crate::crowdsec::{self, Crowdsec};
use crate::firewall::Firewall;
use crate::guard::Guard;
use crate::guard::remote::RemoteUpdate;
use crate::lifecycle;
use crate::listener;
pub use crate::shared::Control;
use crate::shared::{Shared, Snapshot};

/// A bound, ready-to-run sniroute.
pub struct Server {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    /// Each with the configured address it stands for (which may say port
    /// 0) and what its clients speak.
    listeners: Vec<Bound>,
    /// Listeners handed over by systemd socket activation: a reload never
    /// adds or removes listeners then (systemd owns them).
    activated: bool,
}

/// A listening socket, the configured address it stands for, and what its
/// clients speak.
pub type Bound = (SocketAddr, Protocol, std::net::TcpListener);

/// Every listener `config` asks for: `listen` (TLS) and `[http] listen`.
fn wanted(config: &Config) -> Vec<(SocketAddr, Protocol)> {
    let tls = config.listen.iter().map(|&a| (a, Protocol::Tls));
    let http = config.http.listen.iter().map(|&a| (a, Protocol::Http));
    tls.chain(http).collect()
}

impl Server {
    /// Builds the server and binds every `listen` and `[http] listen`
    /// address of `config`. `config_path` is what a reload reads.
    pub fn bind(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for (addr, protocol) in wanted(&config) {
            match listener::bind(addr, config.defer_accept) {
                Ok(l) => listeners.push((addr, protocol, l)),
                Err(e) if listener::ipv6_unavailable(addr, &e) => {
                    tracing::warn!("not listening on {addr}: this host has no IPv6 ({e})");
                }
                Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
            }
        }
        if listeners.is_empty() {
            bail!("no listener could be bound (this host has no IPv6)");
        }
        Server::with_listeners(config, config_path, listeners)
    }

    /// Builds the server on listeners bound elsewhere (tests, socket activation).
    pub fn with_listeners(
        config: Config,
        config_path: Option<PathBuf>,
        listeners: Vec<Bound>,
    ) -> anyhow::Result<Server> {
        crate::metrics::install();
        let guard =
            Guard::new(&config.ban, &config.rate_limit).context("cannot start the guard")?;
        let log = AccessLog::open(&config.log).context("cannot open the access log")?;
        crate::metrics::limits(config.limits.max_connections);
        let shared = Arc::new(Shared::new(config, Arc::new(guard), log));
        Ok(Server {
            shared,
            config_path,
            listeners,
            activated: false,
        })
    }

    /// What its `/metrics` endpoint answers now: the process-wide series,
    /// then this server's routes, backends and open connections (for
    /// in-process embedders and tests, which may run several servers).
    pub fn scraper(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            let live = |out: &mut String| shared.write_live_metrics(out);
            crate::metrics::install()
                .map(|handle| crate::metrics::scrape(handle, &live))
                .unwrap_or_default()
        }
    }

    /// Builds the server on sockets passed by systemd (`LISTEN_FDS`); the
    /// config's `listen` and `[http] listen` then only say which sockets
    /// serve plain HTTP (those bound to an `[http] listen` address; the rest
    /// serve TLS), and no reload adds or removes a listener.
    pub fn activated(
        config: Config,
        config_path: Option<PathBuf>,
        listeners: Vec<std::net::TcpListener>,
    ) -> anyhow::Result<Server> {
        let listeners = listeners
            .into_iter()
            .map(|l| {
                l.set_nonblocking(true)?;
                crate::sys::set_defer_accept(&l, config.defer_accept)?;
                let addr = l.local_addr()?;
                let protocol = if config.http.listen.contains(&addr) {
                    Protocol::Http
                } else {
                    Protocol::Tls
                };
                Ok((addr, protocol, l))
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("unusable socket from systemd")?;
        let mut server = Server::with_listeners(config, config_path, listeners)?;
        server.activated = true;
        Ok(server)
    }

    /// The TLS listeners' addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs_of(Protocol::Tls)
    }

    /// The addresses actually bound (port 0 resolved) of the listeners
    /// whose clients speak `protocol`.
    pub fn local_addrs_of(&self, protocol: Protocol) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, p, _)| *p == protocol)
            .filter_map(|(_, _, l)| l.local_addr().ok())
            .collect()
    }

    /// The shared state (guard, snapshot), e.g. for the admin socket.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `Control::Stop` (or the channel closes), then drains.
    pub async fn run(self, mut control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        let shared = self.shared;
        // Kernel bans are in place before the first connection is accepted,
        // on the TLS and the plain-HTTP ports alike.
        let bound: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter_map(|(_, _, l)| l.local_addr().ok())
            .collect();
        let mut firewall =
            Firewall::start(&shared.snapshot().config, &bound, Arc::clone(&shared.guard)).await?;
        let mut accepting = Accepting::default();
        for (addr, protocol, l) in self.listeners {
            let listener = crate::sys::register_listener(l)
                .with_context(|| format!("cannot register listener {addr}"))?;
            accepting.start(addr, protocol, Arc::new(listener), &shared);
        }
        let metrics_task = start_metrics(&shared).await?;
        let mut crowdsec = CrowdsecSlot::default();
        crowdsec.follow(&shared)?;
        let housekeeping = shared
            .guard
            .spawn_housekeeping()
            .context("cannot start the guard's housekeeping")?;
        // Admin `reload` requests join the signal-fed control channel here.
        let (admin_tx, mut admin_rx) = mpsc::channel(8);
        let admin_task = match &shared.snapshot().config.admin.socket {
            Some(path) => {
                let admin = AdminServer::bind(path)?
                    .with_crowdsec(Arc::clone(&crowdsec.status))
                    .with_firewall(firewall.status())
                    .with_backends(Arc::clone(&shared));
                Some(tokio::spawn(
                    admin.serve(Arc::clone(&shared.guard), Some(admin_tx)),
                ))
            }
            None => None,
        };
        // Health checks of the routes in force; replaced on reload (the old
        // ones stop when dropped), stopped at the end.
        let mut checks = Checks::start(shared.snapshot().all_pools());
        lifecycle::notify_ready();

        loop {
            let request = tokio::select! {
                request = control.recv() => request,
                Some(request) = admin_rx.recv() => Some(request),
            };
            match request {
                Some(Control::Reload(reply)) => {
                    let result = reload(
                        &shared,
                        self.config_path.as_ref(),
                        &mut accepting,
                        !self.activated,
                        &mut firewall,
                    );
                    if result.is_ok() {
                        // The new routes' checks start; the old ones stop.
                        checks = Checks::start(shared.snapshot().all_pools());
                        if let Err(e) = crowdsec.follow(&shared) {
                            tracing::error!(
                                "crowdsec: cannot restart with the reloaded config: {e:#}"
                            );
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Some(Control::ReopenLogs) => shared.log.reopen(),
                Some(Control::Stop) | None => break,
            }
        }

        drop(checks);
        lifecycle::notify_stopping();
        tracing::info!("stopping: no new connections");
        accepting.stop_all();
        let grace = shared.snapshot().config.limits.shutdown_grace;
        let open = shared.open_connections();
        if open > 0 {
            tracing::info!("waiting up to {grace:?} for {open} open connections");
        }
        let drained = tokio::select! {
            drained = tokio::time::timeout(grace, shared.wait_drained()) => drained.is_ok(),
            () = second_stop(&mut control, &shared.log) => false,
        };
        if !drained {
            tracing::warn!("closing {} open connections now", shared.open_connections());
        }
        drop(crowdsec);
        for task in [metrics_task, admin_task].into_iter().flatten() {
            task.abort();
        }
        firewall.stop().await;
        // Writes pending ban changes (fsync) before returning.
        let _ = tokio::task::spawn_blocking(move || housekeeping.stop()).await;
        Ok(())
    }
}

/// Resolves on a second `Stop` (a repeated SIGTERM/SIGINT) during the drain;
/// reloads are ignored then (the access log is still reopened on request).
/// Never resolves once the channel is closed.
async fn second_stop(control: &mut mpsc::Receiver<Control>, log: &AccessLog) {
    while let Some(request) = control.recv().await {
        match request {
            Control::Stop => return,
            Control::ReopenLogs => log.reopen(),
            Control::Reload(Some(reply)) => {
                let _ = reply.send(Err("shutting down".into()));
            }
            Control::Reload(None) => {}
        }
    }
    std::future::pending::<()>().await;
}

async fn start_metrics(shared: &Arc<Shared>) -> anyhow::Result<Option<JoinHandle<()>>> {
    let listen = shared.snapshot().config.metrics.listen;
    let (Some(addr), Some(handle)) = (listen, crate::metrics::install()) else {
        return Ok(None);
    };
    let listener = crate::metrics::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let shared = Arc::clone(shared);
    let live: crate::metrics::Collect = Arc::new(move |out| shared.write_live_metrics(out));
    Ok(Some(tokio::spawn(crate::metrics::serve(
        listener, handle, live,
    ))))
}

/// The running CrowdSec puller/pusher, if `[crowdsec]` is on, and the status
/// slot the admin socket reads.
#[derive(Default)]
struct CrowdsecSlot {
    running: Option<Crowdsec>,
    status: Arc<ArcSwapOption<crowdsec::Status>>,
}

impl CrowdsecSlot {
    /// Starts, stops or restarts CrowdSec to match the current config; a
    /// section unchanged by a reload keeps running untouched.
    fn follow(&mut self, shared: &Shared) -> anyhow::Result<()> {
        let snapshot = shared.snapshot();
        let wanted = snapshot.config.crowdsec.as_ref();
        if self.running.as_ref().map(|c| &c.config) == wanted {
            return Ok(());
        }
        let was_running = self.running.take().is_some();
        self.status.store(None);
        if was_running && wanted.is_none() {
            // [crowdsec] is off now: its decisions go with it.
            let lifted = shared.guard.apply_remote(RemoteUpdate::Full(Vec::new()));
            tracing::info!(
                lifted = lifted.lifted,
                "crowdsec: off; remote decisions dropped"
            );
        }
        if let Some(config) = wanted {
            let state = snapshot.config.ban.state_file.as_deref();
            let started = crowdsec::start(config, &shared.guard, state)?;
            self.status.store(Some(Arc::clone(&started.status)));
            self.running = Some(started);
        }
        Ok(())
    }
}

/// Accept loops by configured address and protocol (port 0 may be
/// configured for both).
#[derive(Default)]
struct Accepting {
    loops: HashMap<(SocketAddr, Protocol), AcceptLoop>,
}

struct AcceptLoop {
    listener: Arc<AsyncFd<std::net::TcpListener>>,
    stop: watch::Sender<bool>,
    _task: JoinHandle<()>,
}

impl Accepting {
    /// Starts accepting `protocol` clients on `listener` (registered with
    /// the reactor).
    fn start(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        listener: Arc<AsyncFd<std::net::TcpListener>>,
        shared: &Arc<Shared>,
    ) {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(listener::accept_loop(
            Arc::clone(&listener),
            Arc::clone(shared),
            protocol,
            stopped,
        ));
        let accept_loop = AcceptLoop {
            listener,
            stop,
            _task: task,
        };
        if let Some(old) = self.loops.insert((addr, protocol), accept_loop) {
            let _ = old.stop.send(true);
        }
    }

    fn stop(&mut self, key: &(SocketAddr, Protocol)) {
        if let Some(accept_loop) = self.loops.remove(key) {
            let _ = accept_loop.stop.send(true);
        }
    }

    /// The addresses the accept loops listen on (port 0 resolved).
    fn bound(&self) -> Vec<SocketAddr> {
        self.loops
            .values()
            .filter_map(|l| l.listener.get_ref().local_addr().ok())
            .collect()
    }

    /// Applies `defer_accept` to every listener (new ones have it already).
    fn set_defer_accept(&self, on: bool) -> Result<(), String> {
        for ((addr, _), accept_loop) in &self.loops {
            crate::sys::set_defer_accept(accept_loop.listener.get_ref(), on)
                .map_err(|e| format!("cannot set defer_accept on {addr}: {e}"))?;
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        let keys: Vec<_> = self.loops.keys().copied().collect();
        for key in keys {
            self.stop(&key);
        }
    }
}

/// One reload as systemd, the metrics and the journal see it: RELOADING=1,
/// the reload, its count and log line, READY=1.
fn reload(
    shared: &Arc<Shared>,
    path: Option<&PathBuf>,
    accepting: &mut Accepting,
    follow_listen: bool,
    firewall: &mut Firewall,
) -> Result<String, String> {
    lifecycle::notify_reloading();
    let result = apply_config(shared, path, accepting, follow_listen, firewall);
    crate::metrics::reload_result(result.is_ok());
    match &result {
        Ok(summary) => tracing::info!("{summary}"),
        Err(e) => tracing::error!("config reload refused, keeping the old one:\n{e}"),
    }
    lifecycle::notify_ready();
    result
}

/// Loads the config file with the same code as `check`; on success swaps the
/// snapshot, reconfigures the guard, reopens the log and adjusts listeners
/// (which ones listen only when `follow_listen`: not with socket activation),
/// and the kernel bans' table.
fn apply_config(
    shared: &Arc<Shared>,
    path: Option<&PathBuf>,
    accepting: &mut Accepting,
    follow_listen: bool,
    firewall: &mut Firewall,
) -> Result<String, String> {
    let path = path.ok_or("no config file to reload from")?;
    let config = config::load(path).map_err(|e| e.to_string())?;
    if follow_listen {
        accepting.follow(&wanted(&config), config.defer_accept, shared)?;
    }
    accepting.set_defer_accept(config.defer_accept)?;
    shared.guard.reconfigure(&config.ban, &config.rate_limit);
    shared.log.reopen();
    firewall.reconfigure(&config, &accepting.bound());
    let summary = format!(
        "config reloaded: {} listeners, {} plain-HTTP listeners, {} routes",
        config.listen.len(),
        config.http.listen.len(),
        config.routes.len()
    );
    crate::metrics::limits(config.limits.max_connections);
    shared.swap(Snapshot::after(config, Some(&shared.snapshot())));
    Ok(summary)
}

impl Accepting {
    /// Starts and stops accept loops so they match `listen` (each address
    /// with what its clients speak). New addresses are bound and registered
    /// first, so one that cannot be refuses the reload untouched. An address
    /// that moves between `listen` and `[http] listen` keeps its socket (no
    /// connection in its queue is lost) under a new loop.
    fn follow(
        &mut self,
        listen: &[(SocketAddr, Protocol)],
        defer_accept: bool,
        shared: &Arc<Shared>,
    ) -> Result<(), String> {
        let mut new_loops = Vec::new();
        for &(addr, protocol) in listen {
            if self.loops.contains_key(&(addr, protocol)) {
                continue;
            }
            let other = match protocol {
                Protocol::Tls => Protocol::Http,
                Protocol::Http => Protocol::Tls,
            };
            let moved = self
                .loops
                .get(&(addr, other))
                .filter(|_| addr.port() != 0)
                .map(|l| Arc::clone(&l.listener));
            let l = match moved {
                Some(l) => l,
                None => {
                    let l = match listener::bind(addr, defer_accept) {
                        Ok(l) => l,
                        Err(e) if listener::ipv6_unavailable(addr, &e) => {
                            tracing::warn!("not listening on {addr}: this host has no IPv6 ({e})");
                            continue;
                        }
                        Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
                    };
                    let l = crate::sys::register_listener(l)
                        .map_err(|e| format!("cannot register listener {addr}: {e}"))?;
                    Arc::new(l)
                }
            };
            new_loops.push((addr, protocol, l));
        }
        let gone: Vec<(SocketAddr, Protocol)> = self
            .loops
            .keys()
            .filter(|key| !listen.contains(key))
            .copied()
            .collect();
        for key in &gone {
            self.stop(key);
        }
        for (addr, protocol, l) in new_loops {
            self.start(addr, protocol, l, shared);
        }
        Ok(())
    }
}
