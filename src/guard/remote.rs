//! Remote bans: decisions from CrowdSec's Local API, in a table of their own.
//!
//! They enter through one door, [`Guard::apply_remote`]: a delta (deleted
//! before new, as the LAPI stream is meant to be read) or a full picture that
//! replaces the table atomically (one pointer swap: an accept sees the old
//! table or the new one, never a half-built one). They are enforced by the
//! same lookup at accept as local bans ([`Guard::admit`]: outcome `banned`,
//! one probe per prefix length present; `ban.ignore` is checked first, so it
//! wins), told to the listeners with [`Origin::Remote`], and never written to
//! the state file nor pushed back to the LAPI (the pusher only hears local
//! origins).
//!
//! A net may be banned locally and remotely at once (a gateway pulls back
//! the decision it pushed). When one side ends, the other is told again
//! ([`Guard::retell`]) so a listener that keeps one element per net, like
//! the kernel set, keeps it while any side holds it.
//!
//! Memory: a decision costs a key (18 bytes), a 4-byte end and hash-map
//! overhead: about 33 bytes a slot, 30-60 bytes a decision depending on how
//! full the map is (measured in `tests/guard.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;

use super::bans::{BAN_CAP, BanTable, Expiring, Inserted};
use super::events::{BanEvent, InForce, Origin};
use super::source::canonical_net;
use super::{Guard, lock};

/// A remote decision as stored: only its end (the key holds the network).
/// Unix seconds in 32 bits last until 2106 and keep the slot at 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEntry {
    expires_at: u32,
}

impl RemoteEntry {
    fn new(expires_at: u64) -> RemoteEntry {
        RemoteEntry {
            expires_at: u32::try_from(expires_at).unwrap_or(u32::MAX),
        }
    }
}

impl Expiring for RemoteEntry {
    fn expires_at(&self) -> u64 {
        u64::from(self.expires_at)
    }
}

/// The remote table.
pub(super) type RemoteTable = BanTable<RemoteEntry>;

/// One ban decision: a network and when it ends (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub net: IpNet,
    pub expires_at: u64,
}

/// What a pull brought.
#[derive(Debug)]
pub enum RemoteUpdate {
    /// Changes since the last pull: `deleted` is applied before `new`.
    Delta {
        deleted: Vec<IpNet>,
        new: Vec<Decision>,
    },
    /// Every decision in force: replaces the table.
    Full(Vec<Decision>),
    /// The same, built aside as the decisions arrived ([`Guard::remote_set`]):
    /// a startup pull streams them in without holding a list of them.
    Built(RemoteSet),
}

/// A full picture of the remote decisions, built aside from the table in
/// force; [`RemoteUpdate::Built`] puts it in force in one swap.
#[derive(Debug)]
pub struct RemoteSet {
    table: RemoteTable,
    now: u64,
    full: bool,
}

impl RemoteSet {
    /// Adds one decision (an ended one is left out; two on one net: the
    /// later end holds). Beyond [`BAN_CAP`] nets, the rest is left out and
    /// a warning logged when the set is put in force.
    pub fn insert(&mut self, d: Decision) {
        if self.full || d.expires_at <= self.now {
            return;
        }
        let net = canonical_net(d.net);
        let longer = self
            .table
            .get(&net)
            .is_none_or(|e| e.expires_at() < d.expires_at);
        if longer
            && self
                .table
                .put(net, RemoteEntry::new(d.expires_at), self.now, true)
                == Inserted::Full
        {
            self.full = true;
        }
    }

    /// Nets in the set.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the set holds no net.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// What [`Guard::apply_remote`] did, for the logs and the puller's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Nets newly banned.
    pub added: usize,
    /// Nets no longer banned.
    pub lifted: usize,
    /// Remote nets in the table afterwards.
    pub total: usize,
}

impl Guard {
    /// The one entry point of remote decisions (see the module doc). The
    /// caller (one puller) is serialised anyway; a second one would wait.
    pub fn apply_remote(&self, update: RemoteUpdate) -> Applied {
        let _one_writer = lock(&self.remote_write);
        self.apply_remote_locked(update)
    }

    /// [`Guard::apply_remote`] for a puller that may have been stopped: `None`
    /// (nothing applied) once `stopped` is set. Read under the writer lock,
    /// so a pull finishing late can never land after what its stopper
    /// applied (the "drop the remote decisions" of a reload turning
    /// `[crowdsec]` off, or a restarted puller's full resync).
    pub fn apply_remote_unless(
        &self,
        update: RemoteUpdate,
        stopped: &AtomicBool,
    ) -> Option<Applied> {
        let _one_writer = lock(&self.remote_write);
        if stopped.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.apply_remote_locked(update))
    }

    fn apply_remote_locked(&self, update: RemoteUpdate) -> Applied {
        let mut applied = match update {
            RemoteUpdate::Delta { deleted, new } => self.remote_delta(&deleted, &new),
            RemoteUpdate::Full(all) => {
                let mut set = self.remote_set();
                all.into_iter().for_each(|d| set.insert(d));
                self.remote_replace(set)
            }
            RemoteUpdate::Built(set) => self.remote_replace(set),
        };
        applied.total = self.remote.load().len();
        self.remote_gauge();
        applied
    }

    fn remote_delta(&self, deleted: &[IpNet], new: &[Decision]) -> Applied {
        let table = self.remote.load_full();
        let keys: Vec<IpNet> = deleted.iter().map(|n| canonical_net(*n)).collect();
        let lifted = table.remove_keys(&keys);
        for (net, _) in &lifted {
            self.emit(BanEvent::Lifted {
                net: *net,
                origin: Origin::Remote,
            });
            self.retell(*net);
        }
        let mut added = 0;
        for d in new {
            if self.remote_put(&table, d) {
                added += 1;
            }
        }
        Applied {
            added,
            lifted: lifted.len(),
            total: 0,
        }
    }

    /// Adds or lengthens one decision; true when the net is newly banned.
    fn remote_put(&self, table: &RemoteTable, d: &Decision) -> bool {
        let now = self.clock.unix_secs();
        let net = canonical_net(d.net);
        if d.expires_at <= now {
            return false;
        }
        // Two decisions on one net: the later end holds.
        let current = table.get(&net).map(|e| e.expires_at()).filter(|&e| e > now);
        if current.is_some_and(|end| end >= d.expires_at) {
            return false;
        }
        match table.put(net, RemoteEntry::new(d.expires_at), now, true) {
            Inserted::Full => {
                self.table_full();
                false
            }
            inserted => {
                self.emit(self.remote_added(net, d.expires_at));
                let new = inserted == Inserted::New;
                if new {
                    metrics::counter!("sniroute_bans_total", "source" => "crowdsec").increment(1);
                }
                new
            }
        }
    }

    /// An empty [`RemoteSet`] to build a full picture in, as of now.
    pub fn remote_set(&self) -> RemoteSet {
        RemoteSet {
            table: RemoteTable::default(),
            now: self.clock.unix_secs(),
            full: false,
        }
    }

    fn remote_replace(&self, set: RemoteSet) -> Applied {
        let now = self.clock.unix_secs();
        let RemoteSet { table, full, .. } = set;
        if full {
            self.table_full();
        }
        let old = self.remote.swap(Arc::new(table));
        let table = self.remote.load();
        let mut applied = Applied::default();
        // Visited in place, not listed: a list of 100,000 would outlive
        // the pull as memory the allocator keeps. Safe to hold a shard
        // while telling: every writer of the remote table holds
        // `remote_write`, as this does, and the old table is ours alone.
        old.for_each_in_force(now, |net, _| {
            if table.get(&net).is_none() {
                applied.lifted += 1;
                self.emit(BanEvent::Lifted {
                    net,
                    origin: Origin::Remote,
                });
                self.retell(net);
            }
        });
        table.for_each_in_force(now, |net, entry| {
            let before = old.get(&net).map(|e| e.expires_at()).filter(|&e| e > now);
            if before != Some(entry.expires_at()) {
                self.emit(self.remote_added(net, entry.expires_at()));
            }
            if before.is_none() {
                applied.added += 1;
                metrics::counter!("sniroute_bans_total", "source" => "crowdsec").increment(1);
            }
        });
        applied
    }

    /// The `Added` of a remote decision. When a local ban on the same net
    /// ends later, its end is told instead: a listener keeping one element
    /// per net (the kernel set) must not shorten it.
    fn remote_added(&self, net: IpNet, expires_at: u64) -> BanEvent {
        let local_end = self.bans.get(&net).map_or(0, |e| e.expires_at);
        BanEvent::Added {
            net,
            expires_at: expires_at.max(local_end),
            origin: Origin::Remote,
            kernel: self.kernel_may_enforce(&net),
        }
    }

    /// False when `net` overlaps `ban.ignore`: the kernel would drop the
    /// ignored addresses too, so only the accept check (which lets ignored
    /// addresses through) enforces such a decision.
    fn kernel_may_enforce(&self, net: &IpNet) -> bool {
        !self.policy.load().ignore.overlaps(net)
    }

    /// Remote decisions in force, as [`Guard::bans_in_force`] lists them.
    pub(super) fn remote_in_force(&self, now: u64) -> Vec<InForce> {
        self.remote
            .load()
            .in_force(now)
            .into_iter()
            .map(|(net, e)| InForce {
                net,
                expires_at: e.expires_at(),
                origin: Origin::Remote,
                kernel: self.kernel_may_enforce(&net),
            })
            .collect()
    }

    /// The guard's wall clock in unix milliseconds (fake in tests).
    pub fn unix_millis(&self) -> u64 {
        self.clock.unix_millis()
    }

    /// Remote decisions in the table (expired ones not yet swept included).
    pub fn remote_decisions(&self) -> usize {
        self.remote.load().len()
    }

    /// Lifts the remote entries on exactly `nets` (a local ban on the same
    /// net was lifted by hand: its echo from the LAPI goes with it).
    pub(super) fn lift_remote_echo(&self, nets: &[IpNet]) {
        let _one_writer = lock(&self.remote_write);
        for (net, _) in self.remote.load().remove_keys(nets) {
            self.emit(BanEvent::Lifted {
                net,
                origin: Origin::Remote,
            });
        }
        self.remote_gauge();
    }

    /// Sweeps remote decisions that reached their end (housekeeping).
    pub(super) fn expire_remote(&self, now: u64) {
        let _one_writer = lock(&self.remote_write);
        let expired = self.remote.load().expire_entries(now);
        for (net, _) in &expired {
            self.emit(BanEvent::Expired {
                net: *net,
                origin: Origin::Remote,
            });
            self.retell(*net);
        }
        if !expired.is_empty() {
            self.remote_gauge();
        }
    }

    /// After a ban on `net` ended on one side, tells again the other side's
    /// ban on the same net, if one is in force.
    pub(super) fn retell(&self, net: IpNet) {
        let now = self.clock.unix_secs();
        if let Some(entry) = self.bans.get(&net).filter(|e| e.expires_at > now) {
            self.added(net, &entry);
        }
        if let Some(entry) = self
            .remote
            .load()
            .get(&net)
            .filter(|e| e.expires_at() > now)
        {
            self.emit(self.remote_added(net, entry.expires_at()));
        }
    }

    fn remote_gauge(&self) {
        let n = self.remote.load().len().min(BAN_CAP);
        metrics::gauge!("sniroute_crowdsec_decisions").set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::{BanConfig, RateLimitConfig};
    use crate::guard::clock::FakeClock;
    use crate::outcome::Outcome;

    const START: u64 = 1_700_000_000;

    fn guard() -> (Guard, FakeClock) {
        let ban = BanConfig {
            enabled: true,
            max_retry: 1,
            find_time: Duration::from_secs(3600),
            ban_time: Duration::from_secs(86_400),
            ignore: vec!["10.9.9.9/32".parse().unwrap()],
            strike_on: vec![Outcome::UnknownSni],
            ipv6_prefix: 64,
            state_file: None,
        };
        let rate = RateLimitConfig {
            per_ip: 0,
            burst: 0,
        };
        let clock = FakeClock::new(START);
        let g = Guard::with_clock(&ban, &rate, Arc::new(clock.clone())).unwrap();
        (g, clock)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn d(s: &str, secs: u64) -> Decision {
        Decision {
            net: net(s),
            expires_at: START + secs,
        }
    }

    fn delta(deleted: &[&str], new: Vec<Decision>) -> RemoteUpdate {
        RemoteUpdate::Delta {
            deleted: deleted.iter().map(|s| net(s)).collect(),
            new,
        }
    }

    #[test]
    fn remote_decisions_ban_at_accept_and_deltas_delete_before_adding() {
        let (g, _) = guard();
        let applied = g.apply_remote(RemoteUpdate::Full(vec![
            d("203.0.113.7/32", 60),
            d("10.0.0.0/8", 60),
            d("2001:db8:1::/48", 60),
        ]));
        assert_eq!((applied.added, applied.total), (3, 3));
        assert_eq!(g.admit(ip("203.0.113.7")), Err(Outcome::Banned));
        assert_eq!(g.admit(ip("10.1.2.3")), Err(Outcome::Banned));
        assert_eq!(g.admit(ip("2001:db8:1:5::1")), Err(Outcome::Banned));
        assert_eq!(g.admit(ip("203.0.113.8")), Ok(()));
        // ban.ignore wins over a covering remote decision.
        assert_eq!(g.admit(ip("10.9.9.9")), Ok(()));
        // Deleted then re-added in the same delta: it stays.
        g.apply_remote(delta(&["203.0.113.7/32"], vec![d("203.0.113.7/32", 30)]));
        assert_eq!(g.admit(ip("203.0.113.7")), Err(Outcome::Banned));
        g.apply_remote(delta(&["10.0.0.0/8"], vec![]));
        assert_eq!(g.admit(ip("10.1.2.3")), Ok(()));
        // Never in the state-file view of local bans.
        assert!(g.bans().is_empty());
        assert_eq!(g.remote_decisions(), 2);
    }

    #[test]
    fn a_full_resync_replaces_the_table_and_tells_only_the_difference() {
        let (g, _) = guard();
        g.apply_remote(RemoteUpdate::Full(vec![
            d("192.0.2.1/32", 60),
            d("192.0.2.2/32", 60),
        ]));
        let mut events = g.subscribe();
        let applied = g.apply_remote(RemoteUpdate::Full(vec![
            d("192.0.2.2/32", 60),
            d("192.0.2.3/32", 60),
        ]));
        assert_eq!((applied.added, applied.lifted, applied.total), (1, 1, 2));
        assert_eq!(
            events.try_recv().unwrap(),
            BanEvent::Lifted {
                net: net("192.0.2.1/32"),
                origin: Origin::Remote
            }
        );
        assert_eq!(
            events.try_recv().unwrap(),
            BanEvent::Added {
                net: net("192.0.2.3/32"),
                expires_at: START + 60,
                origin: Origin::Remote,
                kernel: true
            }
        );
        assert!(events.try_recv().is_err());
        assert_eq!(g.admit(ip("192.0.2.1")), Ok(()));
        assert_eq!(g.admit(ip("192.0.2.3")), Err(Outcome::Banned));
    }

    #[test]
    fn the_later_end_holds_and_remote_decisions_expire() {
        let (g, clock) = guard();
        g.apply_remote(delta(
            &[],
            vec![d("198.51.100.0/24", 100), d("198.51.100.0/24", 50)],
        ));
        let listed = g.bans_in_force();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].expires_at, START + 100);
        assert_eq!(listed[0].origin, Origin::Remote);
        let mut events = g.subscribe();
        clock.advance(Duration::from_secs(100));
        assert_eq!(g.admit(ip("198.51.100.4")), Ok(()));
        g.housekeeping();
        assert_eq!(
            events.try_recv().unwrap(),
            BanEvent::Expired {
                net: net("198.51.100.0/24"),
                origin: Origin::Remote
            }
        );
        assert_eq!(g.remote_decisions(), 0);
        // An already ended decision is not taken.
        g.apply_remote(delta(&[], vec![d("198.51.100.0/24", 0)]));
        assert_eq!(g.remote_decisions(), 0);
    }

    #[test]
    fn a_decision_overlapping_ban_ignore_is_kept_out_of_the_kernel() {
        let (g, _) = guard();
        let mut events = g.subscribe();
        g.apply_remote(delta(&[], vec![d("10.0.0.0/8", 60)]));
        assert!(matches!(
            events.try_recv().unwrap(),
            BanEvent::Added { kernel: false, .. }
        ));
    }

    #[test]
    fn lifting_a_local_ban_by_hand_lifts_its_echo_and_a_lone_remote_ban_is_the_lapis() {
        let (g, _) = guard();
        g.strike(ip("203.0.113.7"), Outcome::UnknownSni);
        g.apply_remote(delta(
            &[],
            vec![d("203.0.113.7/32", 600), d("198.51.100.1/32", 600)],
        ));
        g.unban_manual("203.0.113.7").unwrap();
        assert_eq!(g.admit(ip("203.0.113.7")), Ok(()));
        let refused = g.unban_manual("198.51.100.1").unwrap_err();
        assert!(refused.contains("CrowdSec"), "{refused}");
        assert_eq!(g.admit(ip("198.51.100.1")), Err(Outcome::Banned));
    }

    #[test]
    fn when_one_side_ends_the_other_is_told_again() {
        let (g, _) = guard();
        g.ban_manual("192.0.2.9", Some(Duration::from_secs(3600)))
            .unwrap();
        g.apply_remote(delta(&[], vec![d("192.0.2.9/32", 60)]));
        let mut events = g.subscribe();
        g.apply_remote(delta(&["192.0.2.9/32"], vec![]));
        assert!(matches!(
            events.try_recv().unwrap(),
            BanEvent::Lifted {
                origin: Origin::Remote,
                ..
            }
        ));
        assert_eq!(
            events.try_recv().unwrap(),
            BanEvent::Added {
                net: net("192.0.2.9/32"),
                expires_at: START + 3600,
                origin: Origin::Manual,
                kernel: true
            }
        );
        assert_eq!(g.admit(ip("192.0.2.9")), Err(Outcome::Banned));
    }

    #[test]
    fn a_stopped_puller_applies_nothing() {
        let (g, _clock) = guard();
        let stopped = std::sync::atomic::AtomicBool::new(false);
        let applied =
            g.apply_remote_unless(RemoteUpdate::Full(vec![d("10.0.0.1/32", 60)]), &stopped);
        assert_eq!(applied.map(|a| a.total), Some(1));
        stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let late = g.apply_remote_unless(RemoteUpdate::Full(vec![d("10.0.0.2/32", 60)]), &stopped);
        assert_eq!(late, None);
        assert_eq!(g.admit(ip("10.0.0.2")), Ok(()));
        assert_eq!(g.remote_decisions(), 1);
    }
}
