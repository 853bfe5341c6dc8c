//! The strike table: recent strike times per source, bounded in size.
//!
//! A source is banned once it has `max_retry` strikes inside `find_time`, so
//! the table keeps at most `max_retry` timestamps per source. Millions of
//! sources striking once must not grow memory without bound, so the table is
//! two generations of at most [`STRIKE_CAP`]` / 2` sources each: new strikes
//! go to the current one (a source found in the previous one moves up), and
//! when the current one is full, or older than `find_time`, the previous one
//! is dropped whole and the current one becomes previous. That evicts the
//! sources struck least recently, in O(1) amortised time, with no queue; a
//! source is forgotten at most `2 * find_time` after its last strike.
//! Not on the accept path: one mutex around it is enough for these events.

use std::collections::{HashMap, VecDeque};

use ipnet::IpNet;

/// Sources the table remembers. To evade a ban by eviction, an attacker
/// must strike from more than `STRIKE_CAP / 2` distinct sources (IPv4
/// addresses or IPv6 /64s) between two of its own strikes: 50k sources
/// inside `find_time` is a botnet, not a scanner. Costs about 13 MB at the
/// cap, ~130 bytes per source (measured in tests/guard.rs).
pub const STRIKE_CAP: usize = 100_000;

/// Strike times of one source, monotonic milliseconds, oldest first.
type Times = VecDeque<u64>;

/// Strike history per source.
#[derive(Debug)]
pub struct StrikeTable {
    /// Most sources per generation.
    half: usize,
    current: HashMap<IpNet, Times>,
    previous: HashMap<IpNet, Times>,
    /// When the current generation began, monotonic milliseconds.
    current_since: u64,
}

impl StrikeTable {
    /// An empty table holding at most `cap` sources.
    pub fn new(cap: usize) -> StrikeTable {
        StrikeTable {
            half: (cap / 2).max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
            current_since: 0,
        }
    }

    /// Records a strike on `source` at `now` (monotonic milliseconds); returns
    /// how many strikes it has within the last `find` milliseconds, this one
    /// included (never more than `max_retry`).
    pub fn strike(&mut self, source: IpNet, now: u64, find: u64, max_retry: u32) -> u32 {
        self.prune(now, find);
        let keep = usize::try_from(max_retry.max(1)).unwrap_or(usize::MAX);
        if !self.current.contains_key(&source) {
            let moved = self.previous.remove(&source).unwrap_or_default();
            if self.current.len() >= self.half {
                self.rotate(now);
            }
            self.current.insert(source, moved);
        }
        let Some(times) = self.current.get_mut(&source) else {
            return 1;
        };
        times.retain(|&t| now.saturating_sub(t) < find);
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
        u32::try_from(times.len()).unwrap_or(u32::MAX)
    }

    /// Forgets `source` (it was banned).
    pub fn forget(&mut self, source: &IpNet) {
        self.current.remove(source);
        self.previous.remove(source);
    }

    /// Starts a new generation once the current one is `find` ms old:
    /// every source left in the previous one was last struck before that.
    pub fn prune(&mut self, now: u64, find: u64) {
        if now.saturating_sub(self.current_since) >= find {
            self.rotate(now);
        }
    }

    /// Drops the previous generation; the current one becomes previous.
    /// Reuses the dropped map's allocation for the new current generation.
    fn rotate(&mut self, now: u64) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.current_since = now;
    }

    /// Gives back map capacity left by a past peak.
    pub fn shrink_to_fit(&mut self) {
        self.current.shrink_to_fit();
        self.previous.shrink_to_fit();
    }

    /// Sources with strikes now.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when no source has strikes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: u32) -> IpNet {
        IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(i)))
    }

    fn knows(t: &StrikeTable, i: u32) -> bool {
        t.current.contains_key(&net(i)) || t.previous.contains_key(&net(i))
    }

    #[test]
    fn counts_only_strikes_inside_the_window() {
        let mut t = StrikeTable::new(10);
        assert_eq!(t.strike(net(1), 0, 1000, 3), 1);
        assert_eq!(t.strike(net(1), 500, 1000, 3), 2);
        assert_eq!(t.strike(net(1), 1200, 1000, 3), 2); // the one at 0 fell out
        assert_eq!(t.strike(net(1), 1300, 1000, 3), 3);
        assert_eq!(t.strike(net(1), 1301, 1000, 3), 3); // capped at max_retry
    }

    #[test]
    fn evicts_the_least_recently_struck_when_full() {
        let mut t = StrikeTable::new(4);
        for i in 0..4 {
            t.strike(net(i), u64::from(i), 1000, 3);
        }
        t.strike(net(0), 5, 1000, 3); // 0 moves up; 1 is now the stalest
        t.strike(net(9), 6, 1000, 3);
        assert!(t.len() <= 4);
        assert!(knows(&t, 0) && knows(&t, 9));
        assert!(!knows(&t, 1));
        assert_eq!(t.strike(net(0), 7, 1000, 3), 3); // its history came along
    }

    #[test]
    fn stays_within_the_cap_under_a_flood() {
        let mut t = StrikeTable::new(100);
        for i in 0..100_000 {
            t.strike(net(i), 0, 1000, 3);
            assert!(t.len() <= 100);
        }
        assert!(t.len() >= 50);
    }

    #[test]
    fn prune_forgets_sources_two_windows_after_their_strike() {
        let mut t = StrikeTable::new(10);
        t.strike(net(1), 10, 100, 3);
        t.prune(100, 100);
        assert_eq!(t.len(), 1); // rotated into previous: its strike may still count
        t.prune(200, 100);
        assert!(t.is_empty());
    }
}
