//! PURE: what the kernel's ban sets should hold, kept from the guard's ban
//! events, and the changes not yet sent. No I/O; the time is passed in.
//!
//! Only bans the kernel may enforce are kept: not those marked `kernel =
//! false` (a client seen through a trusted balancer), and not those that
//! overlap `ban.ignore` (an ignored address inside a banned range must stay
//! reachable; user space, where `ban.ignore` wins, enforces such a range).
//!
//! Hash-set changes are kept per network (add, replace, remove) so a batch
//! carries each network once, however often it changed. An interval set
//! refuses overlapping elements, so a change to one is sent as a refill of
//! its outermost networks ([`outermost`]); a nested ban that outlives the
//! range around it reaches the kernel when that range ends (the user-space
//! check covers it meanwhile).

use std::collections::HashMap;

use ipnet::IpNet;

use super::render::{Batch, HASH_SET_SIZE, INTERVAL_SET_SIZE, SetKind, clear_of};
use crate::guard::events::{BanEvent, InForce};
use crate::guard::source::canonical_net;

/// A hash-set change not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Not in the kernel yet.
    Add,
    /// In the kernel with another timeout: delete and add again.
    Replace,
    /// In the kernel (or expired there already): delete.
    Remove,
}

/// The wanted contents of the sets and the changes not yet sent.
#[derive(Debug)]
pub struct Model {
    ipv6_prefix: u8,
    ignore: Vec<IpNet>,
    /// Bans the kernel should hold: network -> end (unix seconds).
    wanted: HashMap<IpNet, u64>,
    pending: HashMap<IpNet, Change>,
    /// `net4`, `net6` changed since the last batch.
    dirty: [bool; 2],
    /// Elements in the kernel after the last batch: hash-set networks, and
    /// the outermost networks of each interval set.
    hash_count: usize,
    interval_count: [usize; 2],
    /// Wanted elements left out because their set is full, at the last render.
    overflow: usize,
}

impl Model {
    /// An empty model for `ban.ipv6_prefix` and `ban.ignore`.
    pub fn new(ipv6_prefix: u8, ignore: &[IpNet]) -> Model {
        Model {
            ipv6_prefix,
            ignore: ignore.iter().map(|n| canonical_net(*n)).collect(),
            wanted: HashMap::new(),
            pending: HashMap::new(),
            dirty: [false; 2],
            hash_count: 0,
            interval_count: [0; 2],
            overflow: 0,
        }
    }

    /// Starts over from the full list of bans in force (at start, after a
    /// missed event, after a reload): the next send must be a whole table.
    pub fn reset(&mut self, bans: &[InForce]) {
        self.wanted.clear();
        self.pending.clear();
        self.dirty = [false; 2];
        for ban in bans {
            if self.admissible(&ban.net, ban.kernel) {
                self.wanted.insert(canonical_net(ban.net), ban.expires_at);
            }
        }
        self.wanted.shrink_to_fit();
    }

    /// True when `net` may go into the kernel set.
    fn admissible(&self, net: &IpNet, kernel: bool) -> bool {
        kernel && clear_of(&canonical_net(*net), &self.ignore)
    }

    /// Takes one ban change into account.
    pub fn apply(&mut self, event: &BanEvent) {
        match *event {
            BanEvent::Added {
                net,
                expires_at,
                kernel,
                ..
            } => {
                if self.admissible(&net, kernel) {
                    self.added(canonical_net(net), expires_at);
                } else {
                    self.lifted(canonical_net(net));
                }
            }
            BanEvent::Lifted { net, .. } => self.lifted(canonical_net(net)),
            BanEvent::Expired { net, .. } => self.expired(canonical_net(net)),
        }
    }

    fn added(&mut self, net: IpNet, expires_at: u64) {
        let before = self.wanted.insert(net, expires_at);
        if let Some(dirty) = self.interval_flag(&net) {
            *dirty = true;
            return;
        }
        let change = match (before, self.pending.get(&net)) {
            (Some(old), _) if old == expires_at => return,
            (_, Some(Change::Add)) => Change::Add,
            (None, None) => Change::Add,
            _ => Change::Replace,
        };
        self.pending.insert(net, change);
    }

    fn lifted(&mut self, net: IpNet) {
        if self.wanted.remove(&net).is_none() {
            return;
        }
        if let Some(dirty) = self.interval_flag(&net) {
            *dirty = true;
            return;
        }
        match self.pending.get(&net) {
            Some(Change::Add) => {
                self.pending.remove(&net);
            }
            _ => {
                self.pending.insert(net, Change::Remove);
            }
        }
    }

    /// The ban ended: the kernel drops the element at the same moment (its
    /// timeout was the time the ban had left), so nothing is sent, unless
    /// a change not yet sent would leave an element with another timeout.
    fn expired(&mut self, net: IpNet) {
        if self.wanted.remove(&net).is_none() {
            return;
        }
        if let Some(dirty) = self.interval_flag(&net) {
            *dirty = true;
            return;
        }
        match self.pending.remove(&net) {
            Some(Change::Replace | Change::Remove) => {
                self.pending.insert(net, Change::Remove);
            }
            Some(Change::Add) | None => {}
        }
    }

    /// The dirty flag of `net`'s interval set, or `None` for a hash set.
    fn interval_flag(&mut self, net: &IpNet) -> Option<&mut bool> {
        match SetKind::of(net, self.ipv6_prefix) {
            SetKind::Net4 => self.dirty.get_mut(0),
            SetKind::Net6 => self.dirty.get_mut(1),
            SetKind::Ban4 | SetKind::Ban6 => None,
        }
    }

    /// True when changes wait to be sent.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty() || self.dirty.iter().any(|d| *d)
    }

    /// The changes since the last batch, as one batch for `table`, given
    /// the wall clock in unix milliseconds; they count as sent.
    pub fn take_batch(&mut self, table: &str, now_ms: u64) -> Batch {
        let mut batch = Batch::new();
        for (net, change) in self.pending.drain() {
            let kind = SetKind::of(&net, self.ipv6_prefix);
            let left = self
                .wanted
                .get(&net)
                .map_or(0, |&end| seconds_left(end, now_ms));
            match change {
                Change::Add if left > 0 => batch.add(table, kind, &net, left),
                Change::Replace if left > 0 => batch.replace(table, kind, &net, left),
                Change::Add => {}
                Change::Replace | Change::Remove => batch.remove(table, kind, &net),
            }
        }
        for (i, kind) in [SetKind::Net4, SetKind::Net6].into_iter().enumerate() {
            if self.dirty.get(i) == Some(&true) {
                let elements = self.outermost(kind, now_ms);
                if let Some(count) = self.interval_count.get_mut(i) {
                    *count = elements.len();
                }
                batch.refill(table, kind, &elements);
            }
        }
        self.dirty = [false; 2];
        self.hash_count = self.hash_len();
        batch
    }

    /// Every element the kernel should hold now, `(network, seconds left)`,
    /// for a whole-table render; pending changes count as sent. Each set
    /// gets at most its size (the rest is counted in [`Model::overflow`]).
    pub fn elements(&mut self, now_ms: u64) -> Vec<(IpNet, u64)> {
        self.pending.clear();
        self.dirty = [false; 2];
        let mut out = Vec::with_capacity(self.wanted.len());
        let (mut v4, mut v6) = (0usize, 0usize);
        let mut overflow = 0;
        for (net, &end) in &self.wanted {
            let left = seconds_left(end, now_ms);
            let count = match SetKind::of(net, self.ipv6_prefix) {
                SetKind::Ban4 => &mut v4,
                SetKind::Ban6 => &mut v6,
                SetKind::Net4 | SetKind::Net6 => continue,
            };
            if left == 0 {
                continue;
            }
            if *count >= HASH_SET_SIZE {
                overflow += 1;
                continue;
            }
            *count += 1;
            out.push((*net, left));
        }
        self.hash_count = v4 + v6;
        for (i, kind) in [SetKind::Net4, SetKind::Net6].into_iter().enumerate() {
            let mut elements = self.outermost(kind, now_ms);
            if elements.len() > INTERVAL_SET_SIZE {
                overflow += elements.len() - INTERVAL_SET_SIZE;
                elements.truncate(INTERVAL_SET_SIZE);
            }
            if let Some(count) = self.interval_count.get_mut(i) {
                *count = elements.len();
            }
            out.extend(elements);
        }
        self.overflow = overflow;
        out
    }

    /// Hash-set networks wanted now.
    fn hash_len(&self) -> usize {
        self.wanted
            .keys()
            .filter(|n| !SetKind::of(n, self.ipv6_prefix).is_interval())
            .count()
            .min(2 * HASH_SET_SIZE)
    }

    /// The wanted networks of interval set `kind` that no other wanted
    /// network contains, with their seconds left: sorted by address, then
    /// by length, a network is covered exactly when the last one kept
    /// contains it (kept networks are disjoint), so one pass finds them.
    fn outermost(&self, kind: SetKind, now_ms: u64) -> Vec<(IpNet, u64)> {
        let mut nets: Vec<(IpNet, u64)> = self
            .wanted
            .iter()
            .filter(|(net, _)| SetKind::of(net, self.ipv6_prefix) == kind)
            .map(|(net, &end)| (*net, seconds_left(end, now_ms)))
            .filter(|&(_, left)| left > 0)
            .collect();
        nets.sort_by_key(|(net, _)| (net.network(), net.prefix_len()));
        let mut kept: Vec<(IpNet, u64)> = Vec::with_capacity(nets.len());
        for (net, left) in nets {
            if kept.last().is_none_or(|(outer, _)| !outer.contains(&net)) {
                kept.push((net, left));
            }
        }
        kept
    }

    /// Elements in the kernel after the last send.
    pub fn element_count(&self) -> usize {
        self.hash_count + self.interval_count.iter().sum::<usize>()
    }

    /// Wanted elements left out of the last whole-table render (sets full).
    pub fn overflow(&self) -> usize {
        self.overflow
    }

    /// Wanted networks (for tests and the status line).
    pub fn wanted_len(&self) -> usize {
        self.wanted.len()
    }
}

/// Whole seconds from `now_ms` to `end` (unix seconds), rounded up: the
/// kernel element lives at least as long as the ban, at most a second more.
fn seconds_left(end: u64, now_ms: u64) -> u64 {
    end.saturating_mul(1000)
        .saturating_sub(now_ms)
        .div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::events::Origin;

    const NOW_MS: u64 = 1_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn added(s: &str, expires_at: u64) -> BanEvent {
        BanEvent::Added {
            net: net(s),
            expires_at,
            origin: Origin::Strike,
            kernel: true,
        }
    }

    fn batch(m: &mut Model) -> String {
        m.take_batch("t", NOW_MS).text().to_owned()
    }

    #[test]
    fn a_ban_is_added_once_with_the_time_it_has_left() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("192.0.2.7/32", NOW + 3600));
        m.apply(&added("192.0.2.7/32", NOW + 3600));
        assert!(m.has_changes());
        assert_eq!(
            batch(&mut m),
            "add element inet t ban4 { 192.0.2.7 timeout 1h }\n"
        );
        assert!(!m.has_changes());
        assert_eq!(m.element_count(), 1);
    }

    #[test]
    fn an_extended_ban_is_deleted_and_added_again() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("192.0.2.7/32", NOW + 60));
        batch(&mut m);
        m.apply(&added("192.0.2.7/32", NOW + 120));
        assert_eq!(
            batch(&mut m),
            "add element inet t ban4 { 192.0.2.7 }\n\
             delete element inet t ban4 { 192.0.2.7 }\n\
             add element inet t ban4 { 192.0.2.7 timeout 2m }\n"
        );
    }

    #[test]
    fn lifted_bans_are_deleted_and_expired_ones_left_to_the_kernel() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("192.0.2.7/32", NOW + 60));
        m.apply(&added("192.0.2.8/32", NOW + 60));
        batch(&mut m);
        m.apply(&BanEvent::Lifted {
            net: net("192.0.2.7/32"),
            origin: Origin::Manual,
        });
        m.apply(&BanEvent::Expired {
            net: net("192.0.2.8/32"),
            origin: Origin::Strike,
        });
        assert_eq!(
            batch(&mut m),
            "add element inet t ban4 { 192.0.2.7 }\ndelete element inet t ban4 { 192.0.2.7 }\n"
        );
        assert_eq!(m.element_count(), 0);
    }

    #[test]
    fn a_ban_added_and_lifted_between_batches_sends_nothing() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("192.0.2.7/32", NOW + 60));
        m.apply(&BanEvent::Lifted {
            net: net("192.0.2.7/32"),
            origin: Origin::Manual,
        });
        assert!(!m.has_changes());
    }

    #[test]
    fn ignored_and_balancer_clients_never_reach_the_kernel() {
        let mut m = Model::new(64, &[net("192.0.2.9/32"), net("2001:db8:9::/48")]);
        m.apply(&added("192.0.2.9/32", NOW + 60));
        m.apply(&added("192.0.2.0/24", NOW + 60));
        m.apply(&added("2001:db8:9:1::/64", NOW + 60));
        m.apply(&BanEvent::Added {
            net: net("203.0.113.7/32"),
            expires_at: NOW + 60,
            origin: Origin::Strike,
            kernel: false,
        });
        assert!(!m.has_changes());
        m.reset(&[InForce {
            net: net("192.0.0.0/16"),
            expires_at: NOW + 60,
            origin: Origin::Remote,
            kernel: true,
        }]);
        assert_eq!(m.wanted_len(), 0);
        assert!(m.elements(NOW_MS).is_empty());
    }

    #[test]
    fn ipv6_sources_go_to_the_masked_set_and_other_lengths_to_intervals() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("2001:db8:1:2::/64", NOW + 60));
        m.apply(&added("2001:db8:7::/48", NOW + 60));
        let text = batch(&mut m);
        assert!(text.contains("add element inet t ban6 { 2001:db8:1:2:: timeout 1m }\n"));
        assert!(text.contains(
            "flush set inet t net6\nadd element inet t net6 { 2001:db8:7::/48 timeout 1m }\n"
        ));
        assert_eq!(m.element_count(), 2);
    }

    #[test]
    fn nested_ranges_keep_only_the_outermost() {
        let mut m = Model::new(64, &[]);
        m.apply(&added("10.0.0.0/8", NOW + 60));
        m.apply(&added("10.1.0.0/16", NOW + 600));
        m.apply(&added("10.1.2.0/24", NOW + 600));
        m.apply(&added("11.0.0.0/24", NOW + 60));
        let text = batch(&mut m);
        assert!(
            text.ends_with(
                "add element inet t net4 { 10.0.0.0/8 timeout 1m, 11.0.0.0/24 timeout 1m }\n"
            ),
            "{text}"
        );
        // The /8 ends: the /16 it hid goes in.
        m.apply(&BanEvent::Expired {
            net: net("10.0.0.0/8"),
            origin: Origin::Manual,
        });
        let text = batch(&mut m);
        assert!(
            text.ends_with(
                "add element inet t net4 { 10.1.0.0/16 timeout 10m, 11.0.0.0/24 timeout 1m }\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn whole_table_elements_skip_ended_bans() {
        let mut m = Model::new(64, &[]);
        m.reset(&[
            InForce {
                net: net("192.0.2.7/32"),
                expires_at: NOW + 10,
                origin: Origin::Strike,
                kernel: true,
            },
            InForce {
                net: net("192.0.2.8/32"),
                expires_at: NOW,
                origin: Origin::Strike,
                kernel: true,
            },
        ]);
        assert_eq!(m.elements(NOW_MS), vec![(net("192.0.2.7/32"), 10)]);
        assert_eq!(m.element_count(), 1);
        assert_eq!(m.overflow(), 0);
    }

    #[test]
    fn seconds_left_round_up() {
        assert_eq!(seconds_left(NOW + 10, NOW_MS), 10);
        assert_eq!(seconds_left(NOW + 10, NOW_MS + 1), 10);
        assert_eq!(seconds_left(NOW + 10, NOW_MS - 1), 11);
        assert_eq!(seconds_left(NOW, NOW_MS + 5), 0);
    }
}
