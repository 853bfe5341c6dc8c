//! The guard: fail2ban built into the data path. Strikes per source, bans
//! (with expiry and a state file that survives restarts), per-source rate
//! limits, and the per-accept [`Guard::admit`] check.
//!
//! A *source* is an IPv4 address or an IPv6 `/ipv6_prefix` network (see
//! [`source`]). Bans and strikes live here, outside the config snapshot, so a
//! reload ([`Guard::reconfigure`]) only changes the policy and keeps them.
//! `ban.enabled = false` stops strikes and automatic bans, but bans already
//! made and manual bans are still enforced until they expire or are removed:
//! turning the automatic part off must not silently unban a year of scanners.
//!
//! Memory is bounded: the strike table holds [`strikes::STRIKE_CAP`] sources
//! and evicts the oldest; bans are never evicted, and automatic bans stop at
//! [`bans::BAN_CAP`]; the rate limiter forgets idle sources every second.

pub mod bans;
pub mod clock;
pub mod events;
mod housekeeping;
pub mod ratelimit;
pub mod remote;
pub mod source;
pub mod state;
pub mod strikes;

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;

use crate::config::{BanConfig, RateLimitConfig};
use crate::outcome::Outcome;
use bans::{Ban, BanEntry, BanReason, BanTable, Inserted};
use clock::{Clock, SystemClock};
use events::{BanEvent, InForce, Origin};
pub use housekeeping::Housekeeping;
use ratelimit::SourceLimiter;
use remote::RemoteTable;
use source::{IgnoreList, canonical_net, source_of};
use state::StateFile;
use strikes::StrikeTable;
use tokio::sync::broadcast;

/// The ban policy in force; swapped whole on reload.
#[derive(Debug)]
struct Policy {
    enabled: bool,
    max_retry: u32,
    find_time: Duration,
    ban_time: Duration,
    ignore: IgnoreList,
    /// Indexed by [`Outcome::index`].
    strike_on: [bool; Outcome::ALL.len()],
    ipv6_prefix: u8,
}

impl Policy {
    fn new(ban: &BanConfig) -> Policy {
        let mut strike_on = [false; Outcome::ALL.len()];
        for o in &ban.strike_on {
            if let Some(flag) = strike_on.get_mut(o.index()) {
                *flag = true;
            }
        }
        Policy {
            enabled: ban.enabled,
            max_retry: ban.max_retry.max(1),
            find_time: ban.find_time,
            ban_time: ban.ban_time,
            ignore: IgnoreList::new(&ban.ignore),
            strike_on,
            ipv6_prefix: ban.ipv6_prefix,
        }
    }
}

/// Built from config and shared (`Arc<Guard>`) by listeners, connections,
/// the admin socket and the housekeeping thread.
pub struct Guard {
    clock: Arc<dyn Clock>,
    policy: ArcSwap<Policy>,
    bans: BanTable,
    strikes: Mutex<StrikeTable>,
    limiter: ArcSwapOption<SourceLimiter>,
    /// Connections ended per outcome, as reported to [`Guard::strike`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// `sniroute_strikes_total{reason}` per outcome, registered once so a
    /// strike records without a registry lookup.
    /// `None` for outcomes that can never strike.
    strike_counters: [Option<metrics::Counter>; Outcome::ALL.len()],
    /// Bans made or restored since start (fail2ban's "Total banned").
    total_banned: AtomicU64,
    state: Option<StateFile>,
    /// Bans changed since the state file was last written.
    dirty: AtomicBool,
    /// One state file writer at a time (housekeeping thread, final flush).
    persisting: Mutex<()>,
    /// Wakes the housekeeping thread to persist a change promptly.
    wake: OnceLock<SyncSender<()>>,
    /// Warn only once when the ban table is full.
    cap_warned: AtomicBool,
    /// Housekeeping passes run, to shrink maps now and then.
    ticks: AtomicU64,
    /// Ban changes for the listeners at the edge (see [`events`]).
    events: broadcast::Sender<BanEvent>,
    /// Remote (CrowdSec) decisions, swapped whole on a full resync (see [`remote`]).
    remote: ArcSwap<RemoteTable>,
    /// One writer of the remote table at a time.
    remote_write: Mutex<()>,
}

/// Housekeeping passes between two attempts to give map capacity left by a
/// past peak back to the allocator (shrinking rehashes, so not every second).
const SHRINK_EVERY_TICKS: u64 = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds in `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `(banned_at, expires_at)` for a ban made now for `d`, in whole unix
/// seconds. The end is rounded up, so a ban lasts at least `d` (and at least
/// a second) and at most a second more; the start is the end less `d`
/// rounded up, so a ban for whole seconds shows exactly that span.
fn ban_span(clock: &dyn Clock, d: Duration) -> (u64, u64) {
    let span = millis(d).div_ceil(1000).max(1);
    let end = clock
        .unix_millis()
        .saturating_add(millis(d).max(1))
        .div_ceil(1000);
    (end.saturating_sub(span), end)
}

impl Guard {
    /// Builds the guard on the system clock and loads the ban state file, if
    /// any. Fails only when the state file's directory cannot be created; a
    /// corrupt state file is logged, moved aside, and the guard starts empty.
    pub fn new(ban: &BanConfig, rate: &RateLimitConfig) -> anyhow::Result<Guard> {
        Guard::with_clock(ban, rate, Arc::new(SystemClock::new()))
    }

    /// [`Guard::new`] on the given clock (tests use [`clock::FakeClock`]).
    pub fn with_clock(
        ban: &BanConfig,
        rate: &RateLimitConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Guard> {
        let state = ban.state_file.as_deref().map(StateFile::new).transpose()?;
        let guard = Guard {
            limiter: ArcSwapOption::new(
                SourceLimiter::new(rate.per_ip, rate.burst, clock.clone()).map(Arc::new),
            ),
            clock,
            policy: ArcSwap::from_pointee(Policy::new(ban)),
            bans: BanTable::new(),
            strikes: Mutex::new(StrikeTable::new(strikes::STRIKE_CAP)),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            strike_counters: Outcome::ALL.map(|o| {
                Outcome::STRIKABLE
                    .contains(&o)
                    .then(|| metrics::counter!("sniroute_strikes_total", "reason" => o.as_str()))
            }),
            total_banned: AtomicU64::new(0),
            state,
            dirty: AtomicBool::new(false),
            persisting: Mutex::new(()),
            wake: OnceLock::new(),
            cap_warned: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            events: broadcast::Sender::new(events::CAPACITY),
            remote: ArcSwap::from_pointee(RemoteTable::default()),
            remote_write: Mutex::new(()),
        };
        guard.restore();
        Ok(guard)
    }

    /// Loads the state file into the ban table.
    fn restore(&self) {
        let Some(state) = &self.state else { return };
        let now = self.clock.unix_secs();
        let saved = state.load(now);
        let mut restored = 0u64;
        for (net, entry) in saved.iter().filter_map(Ban::parse) {
            if entry.expires_at > now {
                self.bans.insert(net, entry, false);
                restored += 1;
            }
        }
        if restored != u64::try_from(saved.len()).unwrap_or(u64::MAX) {
            self.dirty.store(true, Ordering::SeqCst);
        }
        self.total_banned.store(restored, Ordering::Relaxed);
        self.banned_gauge();
        tracing::info!(path = %state.path().display(), bans = restored, "ban state restored");
    }

    /// Called right after accept, before any byte is read: `Err(Banned)` or
    /// `Err(RateLimited)` closes the connection at once. No global lock and
    /// no allocation (a first-seen source gets its rate-limit bucket).
    pub fn admit(&self, ip: IpAddr) -> Result<(), Outcome> {
        let ip = ip.to_canonical();
        let policy = self.policy.load();
        if policy.ignore.contains(ip) {
            return Ok(());
        }
        if self.bans.find(ip, || self.clock.unix_secs()).is_some()
            || self
                .remote
                .load()
                .find(ip, || self.clock.unix_secs())
                .is_some()
        {
            return Err(Outcome::Banned);
        }
        if let Some(limiter) = &*self.limiter.load()
            && !limiter.check(&source_of(ip, policy.ipv6_prefix))
        {
            return Err(Outcome::RateLimited);
        }
        Ok(())
    }

    /// Called once for EVERY connection when it ends, whatever its outcome
    /// (including `banned`, `rate_limited` and `overloaded` closes at accept):
    /// counts it for `sniroute status`, and strikes the source when the outcome
    /// is in `ban.strike_on`, banning it after `max_retry` strikes within
    /// `find_time`.
    pub fn strike(&self, ip: IpAddr, outcome: Outcome) {
        self.count(outcome);
        self.strike_source(ip, outcome, true);
    }

    /// [`Guard::strike`] for a client seen through a trusted balancer (the
    /// address its PROXY header named): a ban it earns is enforced at
    /// accept only, never in the kernel set, which sees only the balancer.
    pub fn strike_proxied(&self, ip: IpAddr, outcome: Outcome) {
        self.count(outcome);
        self.strike_source(ip, outcome, false);
    }

    /// Counts a connection that ended with `outcome` for `sniroute status`,
    /// without striking anyone: a trusted balancer's own connection.
    pub fn count(&self, outcome: Outcome) {
        if let Some(count) = self.outcomes.get(outcome.index()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Strikes `ip`'s source if `outcome` is in `ban.strike_on`; `kernel`
    /// says whether a ban it earns may go into the kernel set.
    fn strike_source(&self, ip: IpAddr, outcome: Outcome, kernel: bool) {
        let policy = self.policy.load();
        let strikes_on_it = policy.strike_on.get(outcome.index()).copied();
        if !policy.enabled || strikes_on_it != Some(true) {
            return;
        }
        let ip = ip.to_canonical();
        if policy.ignore.contains(ip) || self.bans.find(ip, || self.clock.unix_secs()).is_some() {
            return;
        }
        if let Some(Some(counter)) = self.strike_counters.get(outcome.index()) {
            counter.increment(1);
        }
        let source = source_of(ip, policy.ipv6_prefix);
        let strikes = if policy.max_retry <= 1 {
            1
        } else {
            let (now, find) = (self.mono_millis(), millis(policy.find_time));
            let mut table = lock(&self.strikes);
            let n = table.strike(source, now, find, policy.max_retry);
            if n >= policy.max_retry {
                table.forget(&source);
            }
            n
        };
        if strikes < policy.max_retry {
            tracing::debug!(%source, reason = outcome.as_str(), strikes, "strike");
            return;
        }
        self.ban_struck(source, outcome, strikes, policy.ban_time, kernel);
    }

    /// Bans `source` after its `strikes`-th strike, the last for `outcome`;
    /// `kernel` as in [`BanEntry::kernel`].
    fn ban_struck(
        &self,
        source: IpNet,
        outcome: Outcome,
        strikes: u32,
        ban_time: Duration,
        kernel: bool,
    ) {
        let (banned_at, expires_at) = ban_span(&*self.clock, ban_time);
        let entry = BanEntry {
            reason: BanReason::Strike(outcome),
            strikes,
            banned_at,
            expires_at,
            kernel,
        };
        match self.bans.insert(source, entry, true) {
            Inserted::New => {}
            // A concurrent connection from the same source banned it first.
            Inserted::Renewed => {
                self.added(source, &entry);
                return self.changed();
            }
            Inserted::Full => return self.table_full(),
        }
        self.added(source, &entry);
        self.total_banned.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sniroute_bans_total", "source" => "strike").increment(1);
        tracing::info!(%source, reason = outcome.as_str(), strikes, until = %clock::rfc3339(entry.expires_at), kernel, "banned");
        self.changed();
    }

    /// Applies a reloaded config; bans and strikes carry over. Rate-limit
    /// buckets carry over unless `per_ip` or `burst` changed. `state_file`
    /// is only read at start: a new path takes effect at the next restart.
    pub fn reconfigure(&self, ban: &BanConfig, rate: &RateLimitConfig) {
        self.policy.store(Arc::new(Policy::new(ban)));
        let current = self.limiter.load();
        let keep = match &*current {
            Some(l) => l.same_settings(rate.per_ip, rate.burst),
            None => rate.per_ip == 0,
        };
        if !keep {
            let limiter = SourceLimiter::new(rate.per_ip, rate.burst, self.clock.clone());
            self.limiter.store(limiter.map(Arc::new));
        }
        if self.state.as_ref().map(StateFile::path) != ban.state_file.as_deref() {
            tracing::warn!("ban.state_file changed: the new path is used after a restart");
        }
    }

    /// Bans `target` by hand for `duration` (default `ban.ban_time`). A bare
    /// address bans its source (the address, or its IPv6 `/ipv6_prefix`); a
    /// prefix `ADDR/LEN` bans exactly that network. Refused (`Err(reason)`)
    /// when the target is not an address, lies inside `ban.ignore`, or the
    /// duration is zero.
    pub fn ban_manual(&self, target: &str, duration: Option<Duration>) -> Result<Ban, String> {
        let policy = self.policy.load();
        let net = parse_target(target, policy.ipv6_prefix)?;
        if let Some(ignored) = policy.ignore.covering(&net) {
            return Err(format!("{net} is in ban.ignore ({ignored}): never banned"));
        }
        let duration = duration.unwrap_or(policy.ban_time);
        if duration.is_zero() {
            return Err("a ban must last longer than 0s".into());
        }
        let (banned_at, expires_at) = ban_span(&*self.clock, duration);
        let entry = BanEntry {
            reason: BanReason::Manual,
            strikes: 0,
            banned_at,
            expires_at,
            kernel: true,
        };
        let inserted = self.bans.insert(net, entry, false);
        lock(&self.strikes).forget(&net);
        if inserted == Inserted::New {
            self.total_banned.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sniroute_bans_total", "source" => "manual").increment(1);
        }
        tracing::info!(source = %net, until = %clock::rfc3339(entry.expires_at), "banned by hand");
        self.added(net, &entry);
        self.changed();
        Ok(entry.to_ban(&net))
    }

    /// Lifts bans by hand: for `ADDR/LEN` the ban on exactly that network, for
    /// a bare address every ban covering it. `Err` when nothing was banned.
    /// A remote decision on the same net as a lifted ban (the echo of a
    /// pushed ban) is lifted with it; one standing alone is the LAPI's to
    /// lift (`Err` says how).
    pub fn unban_manual(&self, target: &str) -> Result<Vec<Ban>, String> {
        let keys = if target.contains('/') {
            let net: IpNet = target
                .parse()
                .map_err(|_| format!("not an address or prefix: {target:?}"))?;
            vec![canonical_net(net)]
        } else {
            let ip: IpAddr = target
                .parse()
                .map_err(|_| format!("not an address or prefix: {target:?}"))?;
            self.bans.covering(ip.to_canonical())
        };
        let removed = self.bans.remove(&keys);
        if removed.is_empty() {
            return Err(self.not_banned_here(target));
        }
        let lifted: Vec<IpNet> = removed
            .iter()
            .filter_map(|b| b.parse())
            .map(|(n, _)| n)
            .collect();
        for ban in &removed {
            metrics::counter!("sniroute_unbans_total", "reason" => "manual").increment(1);
            tracing::info!(source = %ban.net, "unbanned by hand");
            if let Some((net, entry)) = ban.parse() {
                self.emit(BanEvent::Lifted {
                    net,
                    origin: origin_of(entry.reason),
                });
            }
        }
        self.lift_remote_echo(&lifted);
        self.changed();
        Ok(removed)
    }

    /// Why `bans remove TARGET` found no local ban.
    fn not_banned_here(&self, target: &str) -> String {
        let ip = target
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok());
        match ip.and_then(|ip| {
            self.remote
                .load()
                .find(ip.to_canonical(), || self.clock.unix_secs())
        }) {
            Some(net) => format!(
                "{target} is banned by a CrowdSec decision on {net}, not by this gateway: \
                 lift it at the LAPI (cscli decisions delete --ip/--range ...)"
            ),
            None => format!("{target} is not banned"),
        }
    }

    /// Bans in force now, sorted by network.
    pub fn bans(&self) -> Vec<Ban> {
        self.bans.snapshot(self.clock.unix_secs())
    }

    /// Ban changes from now on; take [`Guard::bans_in_force`] after
    /// subscribing to know where they start from (see [`events`]).
    pub fn subscribe(&self) -> broadcast::Receiver<BanEvent> {
        self.events.subscribe()
    }

    /// Every ban in force now, whatever its origin (remote decisions
    /// included; a net may appear once per origin), unsorted.
    pub fn bans_in_force(&self) -> Vec<InForce> {
        let now = self.clock.unix_secs();
        let mut all: Vec<InForce> = self
            .bans
            .in_force(now)
            .into_iter()
            .map(|(net, entry)| InForce {
                net,
                expires_at: entry.expires_at,
                origin: origin_of(entry.reason),
                kernel: entry.kernel,
            })
            .collect();
        all.extend(self.remote_in_force(now));
        all
    }

    /// Bans in force now (fail2ban's "Currently banned").
    pub fn currently_banned(&self) -> u64 {
        let n = self.bans.active_count(self.clock.unix_secs());
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Bans made since start, restored ones included (fail2ban's "Total banned").
    pub fn total_banned(&self) -> u64 {
        self.total_banned.load(Ordering::Relaxed)
    }

    /// Connections ended per outcome since start, in [`Outcome::ALL`] order.
    pub fn outcome_counts(&self) -> [(Outcome, u64); Outcome::ALL.len()] {
        let count = |o: Outcome| {
            self.outcomes
                .get(o.index())
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        Outcome::ALL.map(|o| (o, count(o)))
    }

    /// Sources that have strikes but no ban yet.
    pub fn strike_sources(&self) -> usize {
        lock(&self.strikes).len()
    }

    /// Sources held by the rate limiter (0 when rate limiting is off).
    pub fn rate_limit_keys(&self) -> usize {
        self.limiter.load().as_ref().map_or(0, |l| l.len())
    }

    /// One housekeeping pass, run every second by [`Guard::spawn_housekeeping`]:
    /// lifts expired bans, forgets strikes older than `find_time`, lets the
    /// rate limiter forget idle sources, and updates the size gauges.
    pub fn housekeeping(&self) {
        let now = self.clock.unix_secs();
        let expired = self.bans.expire(now);
        for ban in &expired {
            metrics::counter!("sniroute_unbans_total", "reason" => "expired").increment(1);
            tracing::info!(source = %ban.net, reason = %ban.reason, "ban expired");
            if let Some((net, entry)) = ban.parse() {
                self.emit(BanEvent::Expired {
                    net,
                    origin: origin_of(entry.reason),
                });
                self.retell(net);
            }
        }
        self.expire_remote(now);
        if !expired.is_empty() {
            self.changed();
        }
        let policy = self.policy.load();
        let (now, find) = (self.mono_millis(), millis(policy.find_time));
        let shrink = self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SHRINK_EVERY_TICKS);
        let strike_sources = {
            let mut strikes = lock(&self.strikes);
            strikes.prune(now, find);
            if shrink {
                strikes.shrink_to_fit();
            }
            strikes.len()
        };
        let limiter_keys = match &*self.limiter.load() {
            Some(limiter) => {
                let keys = limiter.retain_recent();
                if shrink {
                    limiter.shrink_to_fit();
                }
                keys
            }
            None => 0,
        };
        metrics::gauge!("sniroute_strike_sources").set(strike_sources as f64);
        metrics::gauge!("sniroute_rate_limit_keys").set(limiter_keys as f64);
        tracing::trace!(strike_sources, limiter_keys, "guard housekeeping");
    }

    /// Writes the bans to the state file if they changed since the last write.
    /// Called by the housekeeping thread; call it once more at shutdown if
    /// that thread is not stopped through [`Housekeeping::stop`].
    pub fn persist(&self) -> io::Result<()> {
        let Some(state) = &self.state else {
            self.dirty.store(false, Ordering::SeqCst);
            return Ok(());
        };
        let _one_writer = lock(&self.persisting);
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let bans = self.bans.snapshot(self.clock.unix_secs());
        state
            .save(&bans)
            .inspect_err(|_| self.dirty.store(true, Ordering::SeqCst))
    }

    /// True when a ban change has not reached the state file yet.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Starts the housekeeping thread: a pass every second, and the state
    /// file written within a second of every change. Stop it with
    /// [`Housekeeping::stop`] (which writes pending changes). Only one per guard.
    pub fn spawn_housekeeping(self: &Arc<Self>) -> io::Result<Housekeeping> {
        housekeeping::spawn(self.clone())
    }

    /// Refused an automatic ban: the table is full (warned once).
    fn table_full(&self) {
        if !self.cap_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cap = bans::BAN_CAP,
                "ban table full: new automatic bans are refused until some expire"
            );
        }
    }

    /// Monotonic milliseconds, the strike table's time unit.
    fn mono_millis(&self) -> u64 {
        millis(self.clock.monotonic())
    }

    /// Marks the bans changed: state file to write, gauge to update.
    fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if let Some(wake) = self.wake.get() {
            // Full means a wake-up is already pending: the change is batched with it.
            let _ = wake.try_send(());
        }
        self.banned_gauge();
    }

    /// Tells the listeners that `entry` on `net` is in force.
    fn added(&self, net: IpNet, entry: &BanEntry) {
        self.emit(BanEvent::Added {
            net,
            expires_at: entry.expires_at,
            origin: origin_of(entry.reason),
            kernel: entry.kernel,
        });
    }

    fn emit(&self, event: BanEvent) {
        // Err only when nobody listens: nothing to tell.
        let _ = self.events.send(event);
    }

    fn banned_gauge(&self) {
        metrics::gauge!("sniroute_banned").set(self.bans.len() as f64);
    }
}

/// The origin of a local ban.
fn origin_of(reason: BanReason) -> Origin {
    match reason {
        BanReason::Strike(_) => Origin::Strike,
        BanReason::Manual => Origin::Manual,
    }
}

/// A manual ban target: `ADDR/LEN` as written (canonical), or a bare address's source.
fn parse_target(target: &str, v6_prefix: u8) -> Result<IpNet, String> {
    let target = target.trim();
    if let Ok(net) = target.parse::<IpNet>() {
        return Ok(canonical_net(net));
    }
    match target.parse::<IpAddr>() {
        Ok(ip) => Ok(source_of(ip, v6_prefix)),
        Err(_) => Err(format!("not an address or prefix: {target:?}")),
    }
}

#[cfg(test)]
mod tests;
