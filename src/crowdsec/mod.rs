//! CrowdSec: bans shared through the Local API (LAPI), CrowdSec's own
//! distributed engine, instead of a home-made protocol.
//!
//! - [`pull`]: sniroute as a bouncer: decisions in, through the guard's one
//!   entry point for remote bans ([`crate::guard::Guard::apply_remote`]);
//! - [`push`]: sniroute as a machine: its own bans out, as alerts;
//! - [`lapi`]: the HTTP endpoints; [`stream`]: PURE decision parsing.
//!
//! Both run as tasks beside the accept loops and never sit on the accept
//! path; a LAPI that is down only delays them. [`Status`] is what
//! `sniroute status` shows of them.

pub mod lapi;
pub mod pull;
pub mod push;
pub mod stream;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::config::CrowdsecConfig;
use crate::guard::Guard;

/// What the puller and the pusher last did (for `sniroute status`).
#[derive(Debug)]
pub struct Status {
    lapi_url: String,
    push: bool,
    inner: Mutex<Report>,
    /// Told when a pull succeeds after failures: the LAPI is back, so a
    /// pusher waiting out its backoff may try at once.
    pub(crate) back: tokio::sync::Notify,
}

/// `sniroute status`'s CrowdSec part (also in `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The LAPI's base URL.
    pub lapi_url: String,
    /// Unix seconds of the last successful pull (0 = none yet).
    pub last_pull: u64,
    /// The last pull's error, if it failed.
    pub pull_error: Option<String>,
    /// Remote decisions held now.
    pub decisions: u64,
    /// Whether own bans are pushed.
    pub push: bool,
    /// Unix seconds of the last successful push request (0 = none yet).
    pub last_push: u64,
    /// The last push's error, if it failed.
    pub push_error: Option<String>,
    /// Pushes and deletions waiting to be sent.
    pub push_pending: u64,
}

impl Status {
    fn new(config: &CrowdsecConfig) -> Status {
        Status {
            lapi_url: config.lapi_url.to_string(),
            push: config.push.is_some(),
            inner: Mutex::new(Report::default()),
            back: tokio::sync::Notify::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Report) -> T) -> T {
        let mut report = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut report)
    }

    pub(crate) fn pulled(&self, result: Result<usize, String>) {
        let now = unix_now();
        self.with(|r| match result {
            Ok(total) => {
                r.last_pull = now;
                r.pull_error = None;
                r.decisions = u64::try_from(total).unwrap_or(u64::MAX);
            }
            Err(e) => r.pull_error = Some(e),
        });
    }

    pub(crate) fn pushed(&self, result: Result<(), String>) {
        let now = unix_now();
        self.with(|r| match result {
            Ok(()) => {
                r.last_push = now;
                r.push_error = None;
            }
            Err(e) => r.push_error = Some(e),
        });
    }

    pub(crate) fn set_push_pending(&self, n: usize) {
        self.with(|r| r.push_pending = u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A copy of the report, with the decisions held by `guard` now.
    pub fn report(&self, guard: &Guard) -> Report {
        let mut report = self.with(|r| r.clone());
        report.lapi_url.clone_from(&self.lapi_url);
        report.push = self.push;
        report.decisions = u64::try_from(guard.remote_decisions()).unwrap_or(u64::MAX);
        report
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The running puller and pusher; dropping it stops both.
pub struct Crowdsec {
    pub status: Arc<Status>,
    tasks: Vec<JoinHandle<()>>,
    /// Set when dropped: a pull still parsing on a blocking thread (not
    /// cancelled by the abort) then applies nothing.
    stopped: Arc<AtomicBool>,
    /// The config they run with (a reload restarts them when it changes).
    pub config: CrowdsecConfig,
}

impl Drop for Crowdsec {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the puller (and the pusher with `push`). `ban_state` is
/// `ban.state_file`, beside which the pusher remembers what it pushed.
/// Call inside a tokio runtime.
pub fn start(
    config: &CrowdsecConfig,
    guard: &Arc<Guard>,
    ban_state: Option<&Path>,
) -> anyhow::Result<Crowdsec> {
    let lapi = lapi::Lapi::new(config)?;
    let status = Arc::new(Status::new(config));
    let mut tasks = Vec::new();
    if let Some(push) = &config.push {
        // Subscribe before the pusher reads the bans in force: nothing falls between.
        let events = guard.subscribe();
        let pusher = push::Pusher::new(
            lapi.clone(),
            push.clone(),
            Arc::clone(guard),
            Arc::clone(&status),
            ban_state.map(push::state_path),
        );
        tasks.push(tokio::spawn(pusher.run(events)));
    }
    let stopped = Arc::new(AtomicBool::new(false));
    tasks.push(tokio::spawn(pull::run(
        lapi,
        config.api_key.clone(),
        config.update_frequency,
        Arc::clone(guard),
        Arc::clone(&status),
        Arc::clone(&stopped),
    )));
    tracing::info!(
        lapi = %config.lapi_url,
        every = ?config.update_frequency,
        push = config.push.is_some(),
        "crowdsec: started"
    );
    Ok(Crowdsec {
        status,
        tasks,
        stopped,
        config: config.clone(),
    })
}
