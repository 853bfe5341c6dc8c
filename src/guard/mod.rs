//! The guard: strikes, bans (with expiry and a state file that survives
//! restarts), per-source rate limits, and the per-accept admit check.

use std::net::IpAddr;

use crate::config::{BanConfig, RateLimitConfig};
use crate::outcome::Outcome;

/// Built from config and shared (`Arc<Guard>`) by listeners and connections.
pub struct Guard {}

impl Guard {
    /// Builds the guard and loads the ban state file, if any.
    pub fn new(ban: &BanConfig, rate: &RateLimitConfig) -> anyhow::Result<Guard> {
        let _ = (ban, rate);
        Ok(Guard {})
    }

    /// Called right after accept, before any byte is read: `Err(Banned)` or
    /// `Err(RateLimited)` closes the connection at once.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Outcome> {
        let _ = ip;
        Ok(())
    }

    /// Called when a connection ends with `outcome`; strikes the source when
    /// the outcome is in `ban.strike_on`, and bans it after `max_retry` strikes.
    pub fn strike(&self, ip: IpAddr, outcome: Outcome) {
        let _ = (ip, outcome);
    }

    /// Applies a reloaded config; bans and strikes carry over.
    pub fn reconfigure(&self, ban: &BanConfig, rate: &RateLimitConfig) {
        let _ = (ban, rate);
    }
}
