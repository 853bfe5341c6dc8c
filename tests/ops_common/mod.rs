//! Helpers for the operations tests (`tests/ops.rs`): run the real `sniroute`
//! binary on a temp config ([`daemon`]), drive routed and rejected traffic
//! from chosen loopback addresses ([`traffic`]) and as long streams
//! ([`streams`]), run a real Prometheus ([`prometheus`]), and find the
//! external tools (Prometheus, promtool, fail2ban-regex, systemd) or skip with
//! a message.

pub mod daemon;
pub mod prometheus;
pub mod streams;
pub mod traffic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits for: generous for a loaded CI
/// machine, while every wait normally ends within milliseconds.
pub const WAIT: Duration = Duration::from_secs(15);

/// Polling period of [`wait_until`]: short against the events awaited (a
/// scrape every second, a reload in milliseconds), long enough not to spin.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some`, for at most `limit`; panics with
/// `what` if it never does.
pub fn wait_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The path of an external tool, or `None` after printing why the calling
/// test skips (CI installs every tool, so a skip there is a CI bug).
pub fn tool(test: &str, path: &str, package: &str) -> Option<PathBuf> {
    let found = if path.contains('/') {
        Some(PathBuf::from(path)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|dir| dir.join(path))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: {path} is not installed (Debian package `{package}`; .ci/run installs it)"
        );
    }
    found
}

/// Like [`tool`], but under `CI=true` a missing tool fails the test instead
/// of skipping it: `.ci/run` installs it, so its absence there is a bug.
#[allow(dead_code)] // tests/operator.rs, not tests/ops.rs
pub fn needed_tool(test: &str, path: &str, package: &str) -> Option<PathBuf> {
    let found = tool(test, path, package);
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {path} (Debian package `{package}`) is missing under CI=true");
    }
    found
}
