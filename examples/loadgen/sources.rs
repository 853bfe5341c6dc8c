//! Client source addresses. Every loopback address in 127/8 is local on Linux,
//! so spreading connections over many of them keeps each address's ephemeral
//! ports (and TIME_WAIT 4-tuples) far from exhaustion, and keeps each address
//! under sniroute's default per-address rate limit (20/s, burst 40).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fixed set of addresses `127.A.B.C`, handed out round-robin; shared by
/// the tasks of a phase.
pub struct Sources {
    second: u8,
    count: u32,
    next: AtomicU32,
}

/// Hosts per /24 used (1..=250): avoids .0 and .255, which look odd in logs.
const HOSTS_PER_24: u32 = 250;

impl Sources {
    /// `count` addresses under `127.second.0.0/16`, from `127.second.1.1`.
    pub fn new(second: u8, count: u32) -> Sources {
        Sources {
            second,
            count: count.max(1),
            next: AtomicU32::new(0),
        }
    }

    /// The next address.
    pub fn next_ip(&self) -> IpAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        let third = 1 + i / HOSTS_PER_24;
        let fourth = 1 + i % HOSTS_PER_24;
        IpAddr::V4(Ipv4Addr::new(
            127,
            self.second,
            u8::try_from(third).unwrap_or(u8::MAX),
            u8::try_from(fourth).unwrap_or(u8::MAX),
        ))
    }
}

/// Second octet of the routed phases' sources (not ignored by sniroute: the
/// rate limiter runs on them, as on real clients).
pub const ROUTED: u8 = 0;
/// Second octet of the reject phase's sources: sniroute's benchmark config
/// lists `127.2.0.0/16` in `ban.ignore`, so rejects do not turn into bans
/// (the peers do not ban either).
pub const REJECT: u8 = 2;
/// Second octet of the banned phase's sources (struck once, then banned).
pub const BANNED: u8 = 1;
/// Second octet of the kernel-bans phase's sources (struck once, then
/// dropped by the kernel's ban set).
pub const KERNEL: u8 = 3;
