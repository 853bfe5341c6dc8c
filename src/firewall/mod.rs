//! Kernel bans: with `firewall.backend = "nftables"`, every ban in force is
//! also an element of a set in an nftables table that sniroute owns
//! (`inet <firewall.table>`), so the kernel drops a banned source's packets,
//! SYNs included, before any handshake: a banned scanner never learns that
//! something listens. The guard stays the one place where bans are decided;
//! this adapter only listens to its ban events ([`crate::guard::events`]) and
//! never looks inside it. The user-space check at accept stays as the
//! fallback for whatever the kernel does not hold (nft failing, sets full,
//! no CAP_NET_ADMIN, bans over `ban.ignore` addresses, balancer clients).
//!
//! - [`render`]: PURE, the nftables text (table, sets, chain, elements);
//! - [`model`]: PURE, what the sets should hold and the changes not yet sent;
//! - [`nft`]: runs the `nft` command (why a subprocess: see there);
//! - `sync`: the task between them: batches, probes, repairs, retries.
//!
//! Life cycle: at start, one `nft -f -` transaction replaces the whole table
//! (a table left by a crash is replaced, never duplicated); a missing `nft`
//! or a refusal is then a start-up error, like a port that cannot be bound.
//! After start nothing here is fatal. A reload re-renders the table when the
//! listen ports, `scope`, `table`, `ban.ipv6_prefix` or `ban.ignore` change.
//! A clean stop deletes the table.

pub mod model;
pub mod nft;
pub mod render;
mod sync;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, FirewallBackend};
use crate::guard::Guard;
use crate::guard::source::canonical_net;
use model::Model;
use nft::{Nft, NftError};
use render::Layout;
use sync::{Command, Syncer};

/// Longest a clean stop waits for the table to be deleted: one `nft` run,
/// normally a few milliseconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the table must enforce: its layout and the addresses kept out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub layout: Layout,
    /// `ban.ignore`, canonical: no element overlaps one of these.
    pub ignore: Vec<IpNet>,
}

impl Target {
    /// The target for `config`, with sniroute listening on `listeners`.
    pub fn new(config: &Config, listeners: &[SocketAddr]) -> Target {
        let mut ports: Vec<u16> = listeners.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        Target {
            layout: Layout {
                table: config.firewall.table.clone(),
                scope: config.firewall.scope,
                ports,
                ipv6_prefix: config.ban.ipv6_prefix,
            },
            ignore: config
                .ban
                .ignore
                .iter()
                .map(|n| canonical_net(*n))
                .collect(),
        }
    }
}

/// What `sniroute status` says about the firewall.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// The table in use; `None` with `backend = "none"`.
    table: Option<String>,
    elements: usize,
    /// The last error of an episode not over yet.
    error: Option<String>,
}

impl Status {
    fn set(&self, table: Option<&str>, elements: usize, error: Option<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner = StatusInner {
            table: table.map(str::to_owned),
            elements,
            error,
        };
    }

    /// `nftables inet sniroute, 3 elements` or `none`, and the error of a
    /// failure not over yet.
    pub fn line(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(table) = &inner.table else {
            return "none".to_owned();
        };
        let n = inner.elements;
        let plural = if n == 1 { "" } else { "s" };
        let mut line = format!("nftables inet {table}, {n} element{plural}");
        if let Some(error) = &inner.error {
            let first = error.lines().next().unwrap_or_default();
            line.push_str(&format!(
                " (out of sync, bans enforced in user space; last error: {first})"
            ));
        }
        line
    }
}

/// The running task, when `backend = "nftables"`.
struct Running {
    commands: mpsc::UnboundedSender<Command>,
}

/// The kernel-ban adapter as the server holds it.
pub struct Firewall {
    guard: Arc<Guard>,
    status: Arc<Status>,
    running: Option<Running>,
    /// Set while a task stopped by a reload deletes its table: the next
    /// task waits for it.
    stopping: Option<oneshot::Receiver<()>>,
}

impl Firewall {
    /// Loads the table for `config` (sniroute listening on `listeners`) from
    /// the bans in force, and keeps it in step from then on. With
    /// `backend = "none"` does nothing. `Err` (fatal at start, with what is
    /// needed) when `nft` is missing or refuses. Call inside the runtime.
    pub async fn start(
        config: &Config,
        listeners: &[SocketAddr],
        guard: Arc<Guard>,
    ) -> anyhow::Result<Firewall> {
        let mut firewall = Firewall {
            guard,
            status: Arc::new(Status::default()),
            running: None,
            stopping: None,
        };
        if config.firewall.backend == FirewallBackend::None {
            return Ok(firewall);
        }
        let target = Target::new(config, listeners);
        let table = target.layout.table.clone();
        let path = nft::locate().ok_or_else(|| {
            anyhow!(
                "firewall.backend = \"nftables\" needs the nft command (Debian package \
                 nftables), found neither on PATH nor in /usr/sbin"
            )
        })?;
        let events = firewall.guard.subscribe();
        let mut syncer = firewall.syncer(Nft::new(path), target, true);
        syncer.load().await.map_err(|e| match e {
            NftError::Denied(_) => anyhow!(
                "firewall.backend = \"nftables\": nft may not change the ruleset: sniroute \
                 needs CAP_NET_ADMIN (run it as root, or with the systemd drop-in \
                 sniroute.service.d/nftables.conf): {e}"
            ),
            e => anyhow!("firewall.backend = \"nftables\": cannot load table inet {table}: {e}"),
        })?;
        tracing::info!(
            "firewall: table inet {table} loaded: {}",
            firewall.status.line()
        );
        firewall.spawn(syncer, events);
        Ok(firewall)
    }

    fn syncer(&self, nft: Nft, target: Target, in_sync: bool) -> Syncer {
        let mut model = Model::new(target.layout.ipv6_prefix, &target.ignore);
        model.reset(&self.guard.bans_in_force());
        Syncer::new(
            nft,
            target,
            model,
            Arc::clone(&self.guard),
            Arc::clone(&self.status),
            in_sync,
        )
    }

    fn spawn(
        &mut self,
        syncer: Syncer,
        events: tokio::sync::broadcast::Receiver<crate::guard::events::BanEvent>,
    ) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let after = self.stopping.take();
        tokio::spawn(async move {
            if let Some(previous) = after {
                let _ = previous.await;
            }
            syncer.run(events, receiver).await;
        });
        self.running = Some(Running { commands });
    }

    /// What `sniroute status` shows.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }

    /// Applies a reloaded config (and the listeners after it). Never fails:
    /// turning `nftables` on without a usable `nft` is logged and counted,
    /// and bans stay enforced in user space.
    pub fn reconfigure(&mut self, config: &Config, listeners: &[SocketAddr]) {
        let target = Target::new(config, listeners);
        match (config.firewall.backend, &self.running) {
            (FirewallBackend::Nftables, Some(running)) => {
                let _ = running.commands.send(Command::Reconfigure(target));
            }
            (FirewallBackend::Nftables, None) => {
                let Some(path) = nft::locate() else {
                    metrics::counter!("sniroute_firewall_errors_total").increment(1);
                    tracing::error!(
                        "firewall.backend = \"nftables\" needs the nft command (Debian package \
                         nftables); bans stay enforced in user space only"
                    );
                    return;
                };
                let events = self.guard.subscribe();
                let syncer = self.syncer(Nft::new(path), target, false);
                self.spawn(syncer, events);
            }
            (FirewallBackend::None, Some(_)) => {
                if let Some(running) = self.running.take() {
                    let (done, stopped) = oneshot::channel();
                    let _ = running.commands.send(Command::Stop(done));
                    self.stopping = Some(stopped);
                }
            }
            (FirewallBackend::None, None) => {}
        }
    }

    /// Clean stop: deletes the table (waits at most [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) {
        let Some(running) = self.running.take() else {
            if let Some(stopping) = self.stopping.take() {
                let _ = tokio::time::timeout(STOP_TIMEOUT, stopping).await;
            }
            return;
        };
        let (done, stopped) = oneshot::channel();
        if running.commands.send(Command::Stop(done)).is_ok() {
            let _ = tokio::time::timeout(STOP_TIMEOUT, stopped).await;
        }
    }
}
