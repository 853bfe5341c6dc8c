//! Ban changes, told to whoever enforces or records bans outside the guard
//! (the kernel set, the CrowdSec pusher, tests): the guard is the only writer
//! of the ban table and the one place where a ban in force is decided; the
//! others listen.
//!
//! A listener subscribes with [`super::Guard::subscribe`], takes the full
//! picture once with [`super::Guard::bans_in_force`], then applies events.
//! Events go out on a bounded broadcast channel: the accept path never waits
//! on a listener. One that falls more than [`CAPACITY`] events behind gets
//! `RecvError::Lagged` and must resynchronise from `bans_in_force` again.

use ipnet::IpNet;

/// Events buffered per listener before a slow one must resynchronise: a
/// second of a flood at 4,096 bans/s, far beyond the ~6.5 bans a day the
/// project's story sees, and small (64 KiB at 16 bytes an event, shared).
pub const CAPACITY: usize = 4096;

/// Where a ban in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Earned by strikes at this gateway.
    Strike,
    /// Added by hand (`sniroute bans add`).
    Manual,
    /// A decision from a remote source (CrowdSec's Local API).
    Remote,
}

impl Origin {
    /// `strike`, `manual` or `crowdsec`: the `source` label of `sniroute_bans_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Strike => "strike",
            Origin::Manual => "manual",
            Origin::Remote => "crowdsec",
        }
    }
}

/// One change to the bans in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanEvent {
    /// A ban came into force on `net`, or its end moved to `expires_at`
    /// (wall-clock unix seconds). `kernel` is false for a ban the kernel
    /// cannot enforce (a client seen only through a trusted balancer).
    Added {
        net: IpNet,
        expires_at: u64,
        origin: Origin,
        kernel: bool,
    },
    /// The ban on `net` was lifted before its end (by hand, or by its remote
    /// source).
    Lifted { net: IpNet, origin: Origin },
    /// The ban on `net` reached its end and was swept from the table.
    Expired { net: IpNet, origin: Origin },
}

/// A ban in force, as [`super::Guard::bans_in_force`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InForce {
    pub net: IpNet,
    /// Wall-clock unix seconds when it ends.
    pub expires_at: u64,
    pub origin: Origin,
    /// False for a ban the kernel cannot enforce (see [`BanEvent::Added`]).
    pub kernel: bool,
}
