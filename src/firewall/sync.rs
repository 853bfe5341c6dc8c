//! The task that keeps the kernel table in step with the guard: it listens
//! to the guard's ban events, sends the changes as one `nft` transaction per
//! [`BATCH_INTERVAL`] at most, probes every [`PROBE_INTERVAL`] that the
//! table is still there (re-creating it whole when `nft flush ruleset` or a
//! restart of nftables removed it), and replaces the whole table after a
//! failure or a missed event. It never stops the daemon: a failure is
//! logged once per episode, counted, and retried; the user-space check at
//! accept enforces every ban meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::model::Model;
use super::nft::{Nft, NftError, counter_packets, has_chain};
use super::render::{self, CHAIN, COUNTER};
use super::{Status, Target};
use crate::guard::Guard;
use crate::guard::clock::{Clock, SystemClock};
use crate::guard::events::BanEvent;

/// At most one `nft` transaction per this interval, whatever the ban rate:
/// a flood of new bans costs ten fork+execs a second, and a ban reaches
/// the kernel within a tenth of a second.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How often the table's presence is checked (`nft -j list chains`, which
/// reads no set elements, ~2 ms). With a whole-table load well under a
/// second, a table removed by `nft flush ruleset` is back within 10 s.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// First wait before retrying after a failed `nft` run; doubled per
/// failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Longest wait between retries: a lasting failure (no privilege, set
/// full) costs one `nft` run per 8 s, and a fixed one heals within 8 s.
const MAX_RETRY: Duration = Duration::from_secs(8);

/// Up to this many elements, the drop counter is read at every probe. Above,
/// nft loads every element to list one counter (~0.5 s of CPU for 100,000),
/// so it is read only every [`SLOW_COUNTER_PROBES`] probes.
const CHEAP_COUNTER_ELEMENTS: usize = 10_000;

/// Probes between two counter reads on a large table: once a minute.
const SLOW_COUNTER_PROBES: u64 = 12;

/// What the server asks of the task.
#[derive(Debug)]
pub enum Command {
    /// The config or the listeners changed.
    Reconfigure(Target),
    /// Delete the table and end; the reply says it is done.
    Stop(oneshot::Sender<()>),
}

/// The task's state.
pub struct Syncer {
    nft: Nft,
    target: Target,
    model: Model,
    guard: Arc<Guard>,
    status: Arc<Status>,
    clock: SystemClock,
    /// A whole-table replace is due (at start, after a failure, a missed
    /// event or a reload).
    whole: bool,
    /// A table by another name to delete with the next whole replace.
    old_table: Option<String>,
    /// When the next send may happen (batching and retry back-off).
    not_before: Instant,
    retry: Duration,
    /// Failed runs in the current error episode (0 = in sync).
    failures: u64,
    probes: u64,
    /// Dropped packets counted by tables replaced before (the kernel
    /// counter restarts with each new table), and the last reading.
    dropped_before: u64,
    dropped_last: u64,
}

impl Syncer {
    /// A task for `target`; `model` already holds the bans in force. With
    /// `in_sync`, the table was just loaded (by the start-up run).
    pub fn new(
        nft: Nft,
        target: Target,
        model: Model,
        guard: Arc<Guard>,
        status: Arc<Status>,
        in_sync: bool,
    ) -> Syncer {
        Syncer {
            nft,
            target,
            model,
            guard,
            status,
            clock: SystemClock::new(),
            whole: !in_sync,
            old_table: None,
            not_before: Instant::now(),
            retry: FIRST_RETRY,
            failures: 0,
            probes: 0,
            dropped_before: 0,
            dropped_last: 0,
        }
    }

    /// Loads the whole table once; `Err` is for start-up, where a failure is
    /// fatal.
    pub async fn load(&mut self) -> Result<(), NftError> {
        let elements = self.model.elements(self.clock.unix_millis());
        let text = render::replace_table(&self.target.layout, &elements);
        self.nft.apply(&text).await?;
        self.loaded();
        Ok(())
    }

    /// Runs until stopped (or the server's handle is gone: then the table
    /// stays, as after a crash, and the next start replaces it).
    pub async fn run(
        mut self,
        mut events: broadcast::Receiver<BanEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut probe = tokio::time::interval_at(Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let due = self.whole || self.model.has_changes();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reconfigure(target)) => self.reconfigure(target),
                    Some(Command::Stop(done)) => {
                        self.delete().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                event = events.recv() => match event {
                    Ok(event) => self.model.apply(&event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "firewall: ban events missed, reloading the table");
                        self.resync();
                    }
                    // The guard is gone: the server is shutting down.
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep_until(self.not_before), if due => self.send().await,
                _ = probe.tick() => self.probe().await,
            }
        }
    }

    /// Sends what is due: the whole table, or the changes.
    async fn send(&mut self) {
        let result = if self.whole {
            let elements = self.model.elements(self.clock.unix_millis());
            let mut text = match self.old_table.as_deref() {
                Some(old) => render::delete_table(old),
                None => String::new(),
            };
            text.push_str(&render::replace_table(&self.target.layout, &elements));
            self.nft.apply(&text).await.map(|()| {
                self.old_table = None;
                self.whole = false;
                self.loaded();
            })
        } else {
            let batch = self
                .model
                .take_batch(&self.target.layout.table, self.clock.unix_millis());
            self.nft.apply(batch.text()).await.map(|()| self.in_sync())
        };
        match result {
            Ok(()) => self.not_before = Instant::now() + BATCH_INTERVAL,
            Err(e) => {
                self.failed(&e);
                // The kernel may hold anything now: start over from the guard.
                self.resync();
            }
        }
    }

    /// A whole table was loaded.
    fn loaded(&mut self) {
        metrics::counter!("sniroute_firewall_syncs_total").increment(1);
        self.dropped_before += self.dropped_last;
        self.dropped_last = 0;
        let overflow = self.model.overflow();
        if overflow > 0 {
            tracing::warn!(
                overflow,
                "firewall: kernel sets full; {overflow} bans are enforced in user space only"
            );
        }
        self.in_sync();
    }

    /// The kernel holds what the model says.
    fn in_sync(&mut self) {
        let elements = self.model.element_count();
        metrics::gauge!("sniroute_firewall_elements").set(elements as f64);
        self.status
            .set(Some(&self.target.layout.table), elements, None);
        if self.failures > 0 {
            tracing::info!(
                failures = self.failures,
                "firewall: table inet {} in sync again",
                self.target.layout.table
            );
        }
        self.failures = 0;
        self.retry = FIRST_RETRY;
    }

    /// Counts a failed run; logs the first of an episode (the rest at debug).
    fn failed(&mut self, error: &NftError) {
        metrics::counter!("sniroute_firewall_errors_total").increment(1);
        if self.failures == 0 {
            tracing::warn!(
                "firewall: nft failed, bans are enforced in user space until it works again \
                 (retrying): {error}"
            );
        } else {
            tracing::debug!(
                failures = self.failures,
                "firewall: nft failed again: {error}"
            );
        }
        self.failures += 1;
        let elements = self.model.element_count();
        self.status.set(
            Some(&self.target.layout.table),
            elements,
            Some(error.to_string()),
        );
        self.not_before = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// Starts over from the guard's full list; a whole table goes next.
    fn resync(&mut self) {
        self.model.reset(&self.guard.bans_in_force());
        self.whole = true;
    }

    fn reconfigure(&mut self, target: Target) {
        if target == self.target {
            return;
        }
        if target.layout.table != self.target.layout.table && self.old_table.is_none() {
            self.old_table = Some(self.target.layout.table.clone());
        }
        self.model = Model::new(target.layout.ipv6_prefix, &target.ignore);
        self.target = target;
        self.resync();
        self.not_before = Instant::now();
    }

    /// Checks that the table is there; re-creates it at once when it is not.
    async fn probe(&mut self) {
        self.probes += 1;
        if self.whole {
            return;
        }
        let table = self.target.layout.table.clone();
        match self.nft.query(&["-j", "list", "chains"]).await {
            Ok(chains) if has_chain(&chains, &table, CHAIN) => {}
            Ok(_) => {
                tracing::warn!(
                    "firewall: table inet {table} is gone (nft flush ruleset, or nftables \
                     restarted?); re-creating it"
                );
                self.resync();
                self.not_before = Instant::now();
                return;
            }
            Err(e) => {
                self.failed(&e);
                return;
            }
        }
        let cheap = self.model.element_count() <= CHEAP_COUNTER_ELEMENTS;
        if cheap || self.probes.is_multiple_of(SLOW_COUNTER_PROBES) {
            self.read_counter(&table).await;
        }
    }

    /// Reads the drop counter into `sniroute_firewall_dropped_packets_total`.
    async fn read_counter(&mut self, table: &str) {
        let args = ["-j", "list", "counter", "inet", table, COUNTER];
        if let Ok(listing) = self.nft.query(&args).await
            && let Some(packets) = counter_packets(&listing)
        {
            self.dropped_last = packets;
            metrics::counter!("sniroute_firewall_dropped_packets_total")
                .absolute(self.dropped_before + packets);
        }
    }

    /// Deletes the table (clean stop, or `backend = "none"` after a reload).
    async fn delete(&mut self) {
        let table = &self.target.layout.table;
        match self.nft.apply(&render::delete_table(table)).await {
            Ok(()) => tracing::info!("firewall: table inet {table} deleted"),
            Err(e) => {
                metrics::counter!("sniroute_firewall_errors_total").increment(1);
                tracing::warn!("firewall: cannot delete table inet {table}: {e}");
            }
        }
        metrics::gauge!("sniroute_firewall_elements").set(0.0);
        self.status.set(None, 0, None);
    }
}
