//! The ban table: which sources and prefixes are banned, why, and until when.
//!
//! `find` runs on every accept, so it takes no global lock and allocates
//! nothing: bans sit in a sharded map keyed by their (truncated) network, and
//! two bitsets record which prefix lengths are present, so a lookup probes only
//! those lengths — one probe in the common case (only per-address /32 and
//! per-/64 bans), a few more when manual CIDR bans of other lengths exist.
//! Writers (strike bans, manual changes, expiry) are rare and serialised by a
//! small mutex, which also keeps the bitsets exact.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::source::canonical_net;
use crate::outcome::Outcome;

/// How many bans the table holds before it refuses new automatic ones. The
/// story behind the project sees ~6.5 bans a day (~2,400 a year); a million
/// is 400 times that, costs roughly 120 MB at ~120 bytes per ban (measured
/// in tests/guard.rs; the state file holds ~110 bytes per ban), and cannot
/// be pushed out by an attacker: bans are never evicted to make room. Manual
/// bans are always accepted.
pub const BAN_CAP: usize = 1_000_000;

/// One ban, as listed, persisted and sent over the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned network: `a.b.c.d/32`, `2001:db8:1:2::/64`, `10.0.0.0/8`...
    pub net: String,
    /// The outcome word of the strike that earned the ban, or `manual`.
    pub reason: String,
    /// Strikes counted when the ban was made (0 for manual bans).
    pub strikes: u32,
    /// Wall-clock unix seconds when the ban was made.
    pub banned_at: u64,
    /// Wall-clock unix seconds when the ban ends.
    pub expires_at: u64,
    /// False for a client seen only through a trusted balancer: enforced at
    /// accept, never put in the kernel set. Written only when false, so
    /// state files from before it read as true.
    #[serde(default = "in_kernel", skip_serializing_if = "is_in_kernel")]
    pub kernel: bool,
}

/// The default of [`Ban::kernel`].
fn in_kernel() -> bool {
    true
}

fn is_in_kernel(kernel: &bool) -> bool {
    *kernel
}

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// Earned by strikes; the outcome of the last one.
    Strike(Outcome),
    /// Added by hand over the admin socket.
    Manual,
}

impl BanReason {
    /// `manual`, or the outcome word.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Strike(o) => o.as_str(),
            BanReason::Manual => "manual",
        }
    }

    /// Parses [`BanReason::as_str`].
    pub fn from_word(word: &str) -> Option<BanReason> {
        match word {
            "manual" => Some(BanReason::Manual),
            _ => Outcome::from_word(word).map(BanReason::Strike),
        }
    }
}

/// A ban as stored in memory (24 bytes; the key holds the network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanEntry {
    /// Why.
    pub reason: BanReason,
    /// Strikes counted when the ban was made (0 for manual bans).
    pub strikes: u32,
    /// Wall-clock unix seconds when the ban was made.
    pub banned_at: u64,
    /// Wall-clock unix seconds when the ban ends.
    pub expires_at: u64,
    /// False for a client seen only through a trusted balancer (see [`Ban::kernel`]).
    pub kernel: bool,
}

impl BanEntry {
    /// The listed/persisted form of this ban on `net`.
    pub fn to_ban(self, net: &IpNet) -> Ban {
        Ban {
            net: net.to_string(),
            reason: self.reason.as_str().to_owned(),
            strikes: self.strikes,
            banned_at: self.banned_at,
            expires_at: self.expires_at,
            kernel: self.kernel,
        }
    }
}

impl Ban {
    /// Parses the persisted form back into a canonical key and an entry.
    pub fn parse(&self) -> Option<(IpNet, BanEntry)> {
        let net: IpNet = self.net.parse().ok()?;
        let entry = BanEntry {
            reason: BanReason::from_word(&self.reason)?,
            strikes: self.strikes,
            banned_at: self.banned_at,
            expires_at: self.expires_at,
            kernel: self.kernel,
        };
        Some((canonical_net(net), entry))
    }
}

/// What a table entry must tell: when it ends.
pub trait Expiring: Copy {
    /// Wall-clock unix seconds when it ends.
    fn expires_at(&self) -> u64;
}

impl Expiring for BanEntry {
    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Prefix lengths present in the table, per family (bit `n` = length `n`).
#[derive(Debug, Default)]
struct Lengths {
    v4: AtomicU64,
    /// 129 possible lengths (0..=128) in three words.
    v6: [AtomicU64; 3],
}

impl Lengths {
    fn set(&self, net: &IpNet) {
        let len = usize::from(net.prefix_len());
        match net {
            IpNet::V4(_) => self.v4.fetch_or(1 << len, Ordering::SeqCst),
            IpNet::V6(_) => match self.v6.get(len / 64) {
                Some(word) => word.fetch_or(1 << (len % 64), Ordering::SeqCst),
                None => 0,
            },
        };
    }

    fn store(&self, v4: u64, v6: [u64; 3]) {
        self.v4.store(v4, Ordering::SeqCst);
        for (slot, bits) in self.v6.iter().zip(v6) {
            slot.store(bits, Ordering::SeqCst);
        }
    }
}

/// What [`BanTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new ban (none was in force on that network).
    New,
    /// A ban in force on that network was replaced (its end moved).
    Renewed,
    /// The table is full; nothing was added.
    Full,
}

/// All current bans of one kind: local bans ([`BanEntry`], the default) or
/// remote decisions ([`super::remote::RemoteEntry`]).
#[derive(Debug)]
pub struct BanTable<E = BanEntry> {
    map: DashMap<IpNet, E>,
    lengths: Lengths,
    /// Serialises writers so a bitset rebuild never races an insert.
    write: Mutex<()>,
    /// Earliest `expires_at` of any ban (u64::MAX when none), so expiry only
    /// walks the table when something is due.
    next_expiry: AtomicU64,
}

impl<E: Expiring> Default for BanTable<E> {
    fn default() -> Self {
        BanTable {
            map: DashMap::new(),
            lengths: Lengths::default(),
            write: Mutex::new(()),
            next_expiry: AtomicU64::new(u64::MAX),
        }
    }
}

impl BanTable<BanEntry> {
    /// An empty table.
    pub fn new() -> BanTable {
        BanTable::default()
    }

    /// Adds or replaces the ban on `net` (canonical). With `capped`, nothing
    /// is added once the table holds [`BAN_CAP`] bans.
    pub fn insert(&self, net: IpNet, ban: BanEntry, capped: bool) -> Inserted {
        self.put(net, ban, ban.banned_at, capped)
    }

    /// Removes the bans whose keys are in `nets`; returns the removed bans.
    pub fn remove(&self, nets: &[IpNet]) -> Vec<Ban> {
        let removed = self.remove_keys(nets);
        removed.into_iter().map(|(k, e)| e.to_ban(&k)).collect()
    }

    /// Removes every ban that ended at or before `now`; returns them.
    pub fn expire(&self, now: u64) -> Vec<Ban> {
        let expired = self.expire_entries(now);
        expired.into_iter().map(|(k, e)| e.to_ban(&k)).collect()
    }

    /// Every ban in force at `now`, sorted by network.
    pub fn snapshot(&self, now: u64) -> Vec<Ban> {
        let mut bans = self.in_force(now);
        bans.sort_by_key(|b| b.0);
        bans.into_iter().map(|(k, e)| e.to_ban(&k)).collect()
    }
}

impl<E: Expiring> BanTable<E> {
    /// The ban covering `ip` (canonical) that is still in force at `now()`
    /// unix seconds, if any. `now` is only called when a ban is found.
    pub fn find(&self, ip: IpAddr, now: impl Fn() -> u64) -> Option<IpNet> {
        match ip {
            IpAddr::V4(_) => self.probe(ip, 0, self.lengths.v4.load(Ordering::Relaxed), &now),
            IpAddr::V6(_) => self.lengths.v6.iter().enumerate().find_map(|(word, bits)| {
                self.probe(ip, word * 64, bits.load(Ordering::Relaxed), &now)
            }),
        }
    }

    fn probe(
        &self,
        ip: IpAddr,
        base: usize,
        mut bits: u64,
        now: &impl Fn() -> u64,
    ) -> Option<IpNet> {
        while bits != 0 {
            let len = base + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Ok(len) = u8::try_from(len) else { continue };
            let Ok(net) = IpNet::new(ip, len) else {
                continue;
            };
            let net = net.trunc();
            if let Some(entry) = self.map.get(&net)
                && entry.expires_at() > now()
            {
                return Some(net);
            }
        }
        None
    }

    /// Adds or replaces the entry on `net` (canonical); an entry in force at
    /// `now` makes it a renewal. With `capped`, nothing is added once the
    /// table holds [`BAN_CAP`] entries.
    pub fn put(&self, net: IpNet, entry: E, now: u64, capped: bool) -> Inserted {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let active = self.map.get(&net).map(|e| e.expires_at() > now);
        if capped && active.is_none() && self.map.len() >= BAN_CAP {
            return Inserted::Full;
        }
        self.next_expiry
            .fetch_min(entry.expires_at(), Ordering::SeqCst);
        self.map.insert(net, entry);
        self.lengths.set(&net);
        if active == Some(true) {
            Inserted::Renewed
        } else {
            Inserted::New
        }
    }

    /// The entry on exactly `net`, expired or not.
    pub fn get(&self, net: &IpNet) -> Option<E> {
        self.map.get(net).map(|e| *e)
    }

    /// Removes the entries whose keys are in `nets`; returns them.
    pub fn remove_keys(&self, nets: &[IpNet]) -> Vec<(IpNet, E)> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let removed: Vec<(IpNet, E)> = nets.iter().filter_map(|n| self.map.remove(n)).collect();
        if !removed.is_empty() {
            self.rebuild();
        }
        removed
    }

    /// Every ban key covering `ip`, expired or not (for `bans remove ADDR`).
    pub fn covering(&self, ip: IpAddr) -> Vec<IpNet> {
        let mut found = Vec::new();
        for len in 0..=128u8 {
            if let Ok(net) = IpNet::new(ip, len)
                && self.map.contains_key(&net.trunc())
            {
                found.push(net.trunc());
            }
        }
        found
    }

    /// Removes every entry that ended at or before `now`; returns them.
    pub fn expire_entries(&self, now: u64) -> Vec<(IpNet, E)> {
        if self.next_expiry.load(Ordering::SeqCst) > now {
            return Vec::new();
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut expired = Vec::new();
        self.map.retain(|k, e| {
            let keep = e.expires_at() > now;
            if !keep {
                expired.push((*k, *e));
            }
            keep
        });
        self.rebuild();
        expired
    }

    /// Recomputes the length bitsets and the next expiry from the map.
    /// Callers hold `self.write`.
    fn rebuild(&self) {
        let (mut v4, mut v6, mut next) = (0u64, [0u64; 3], u64::MAX);
        for entry in self.map.iter() {
            let len = usize::from(entry.key().prefix_len());
            match entry.key() {
                IpNet::V4(_) => v4 |= 1 << len,
                IpNet::V6(_) => {
                    if let Some(word) = v6.get_mut(len / 64) {
                        *word |= 1 << (len % 64);
                    }
                }
            }
            next = next.min(entry.expires_at());
        }
        self.lengths.store(v4, v6);
        self.next_expiry.store(next, Ordering::SeqCst);
    }

    /// Bans in force at `now`.
    pub fn active_count(&self, now: u64) -> usize {
        self.map.iter().filter(|e| e.expires_at() > now).count()
    }

    /// Every ban in force at `now`, as keys and entries, unsorted.
    pub fn in_force(&self, now: u64) -> Vec<(IpNet, E)> {
        self.map
            .iter()
            .filter(|e| e.expires_at() > now)
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }

    /// Calls `f` with every entry in force at `now`, one shard read-locked
    /// at a time: `f` must not write this table.
    pub fn for_each_in_force(&self, now: u64, mut f: impl FnMut(IpNet, E)) {
        for e in self.map.iter().filter(|e| e.expires_at() > now) {
            f(*e.key(), *e.value());
        }
    }

    /// Number of entries, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no ban is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: &BanTable, net: &str, expires_at: u64) {
        let key: IpNet = net.parse().unwrap();
        let entry = BanEntry {
            reason: BanReason::Manual,
            strikes: 0,
            banned_at: 0,
            expires_at,
            kernel: true,
        };
        assert_eq!(t.insert(key.trunc(), entry, true), Inserted::New);
    }

    #[test]
    fn finds_exact_and_covering_prefixes() {
        let t = BanTable::new();
        add(&t, "203.0.113.7/32", 100);
        add(&t, "10.0.0.0/8", 100);
        add(&t, "2001:db8:1:2::/64", 100);
        add(&t, "2001:db8:ff00::/40", 100);
        let now = || 50;
        assert_eq!(
            t.find("203.0.113.7".parse().unwrap(), now),
            Some("203.0.113.7/32".parse().unwrap())
        );
        assert_eq!(
            t.find("10.200.3.4".parse().unwrap(), now),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(t.find("11.0.0.1".parse().unwrap(), now), None);
        assert!(
            t.find("2001:db8:1:2:dead::1".parse().unwrap(), now)
                .is_some()
        );
        assert!(t.find("2001:db8:ff00:7::1".parse().unwrap(), now).is_some());
        assert_eq!(t.find("2001:db8:1:3::1".parse().unwrap(), now), None);
    }

    #[test]
    fn expired_bans_are_not_found_before_and_gone_after_expiry() {
        let t = BanTable::new();
        add(&t, "10.0.0.0/8", 100);
        add(&t, "192.0.2.1/32", 200);
        assert!(t.find("10.1.1.1".parse().unwrap(), || 100).is_none());
        assert_eq!(t.expire(99).len(), 0);
        assert_eq!(t.expire(150).len(), 1);
        assert_eq!(t.len(), 1);
        // The /8 length bit is gone after the sweep.
        assert_eq!(t.lengths.v4.load(Ordering::SeqCst), 1 << 32);
    }

    #[test]
    fn remove_clears_the_length_bit() {
        let t = BanTable::new();
        add(&t, "10.0.0.0/8", 100);
        let key: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(t.covering("10.9.9.9".parse().unwrap()), vec![key]);
        assert_eq!(t.remove(&[key]).len(), 1);
        assert_eq!(t.lengths.v4.load(Ordering::SeqCst), 0);
        assert!(t.find("10.9.9.9".parse().unwrap(), || 0).is_none());
    }
}
