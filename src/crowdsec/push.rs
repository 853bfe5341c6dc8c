//! The machine: reports this gateway's own bans (strikes and `bans add`) to
//! the LAPI as alerts carrying their decision, and deletes the decision
//! again on `bans remove`.
//!
//! It listens to the guard's ban events (never on the accept path: the
//! guard's broadcast never waits), gathers what to send for
//! [`BATCH_WINDOW`], sends up to [`MAX_BATCH`] alerts per request, and on
//! failure keeps everything and retries with a doubling backoff
//! ([`MIN_BACKOFF`]..[`MAX_BACKOFF`]). The JWT is renewed before it expires
//! and again on a 401 (a restarted LAPI with a new JWT secret refuses the old
//! one). What was pushed, and deletions not yet done, are remembered in a
//! small state file beside `ban.state_file`, so a restart neither loses a
//! ban nor pushes all of them again: at start (and after falling behind the
//! event stream) the pusher compares the bans in force with that memory.
//!
//! Remote decisions are never pushed back: only `Strike` and `Manual` origins
//! are heard. Deletions always name the scenario, so community or other
//! decisions covering the same address stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::Status;
use super::lapi::{Lapi, LapiError, Token};
use super::stream::go_duration_string;
use crate::config::PushConfig;
use crate::guard::Guard;
use crate::guard::events::{BanEvent, Origin};

/// How long the first change waits for others to join its request: bans
/// come in bursts (a scanner's sweep), a request per ban would be wasteful,
/// and a ban still reaches the LAPI well within a pull period.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Alerts per request: a few hundred KiB of JSON, quick for the LAPI to store.
const MAX_BATCH: usize = 500;
/// First retry delay after a failure.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay: a LAPI back from a restart hears from us within a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Format version of the push state file.
const STATE_VERSION: u32 = 1;

/// What was pushed and what must still be deleted (the state file's content).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Memory {
    version: u32,
    /// Pushed decisions: net -> end (unix seconds).
    pushed: BTreeMap<IpNet, u64>,
    /// Nets whose pushed decision must be deleted at the LAPI.
    deleting: BTreeSet<IpNet>,
}

/// The pusher task's state.
pub struct Pusher {
    lapi: Lapi,
    config: PushConfig,
    guard: Arc<Guard>,
    status: Arc<Status>,
    state_path: Option<PathBuf>,
    memory: Memory,
    /// Local bans to push: net -> end.
    queue: BTreeMap<IpNet, u64>,
    token: Option<Token>,
    backoff: Duration,
    /// When to send next; `None` = nothing to send.
    next_try: Option<Instant>,
}

impl Pusher {
    /// A pusher remembering in `state_path` (`None`: memory only).
    pub fn new(
        lapi: Lapi,
        config: PushConfig,
        guard: Arc<Guard>,
        status: Arc<Status>,
        state_path: Option<PathBuf>,
    ) -> Pusher {
        let memory = state_path.as_deref().map(load).unwrap_or_default();
        Pusher {
            lapi,
            config,
            guard,
            status,
            state_path,
            memory,
            queue: BTreeMap::new(),
            token: None,
            backoff: MIN_BACKOFF,
            next_try: None,
        }
    }

    /// Pushes until the task is dropped. `events` must have been subscribed
    /// before the guard's bans were last read (the caller subscribes first).
    pub async fn run(mut self, mut events: broadcast::Receiver<BanEvent>) {
        self.reconcile();
        loop {
            let wake = self.next_try;
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => self.heard(event),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "crowdsec push: fell behind the ban events; comparing again");
                        self.reconcile();
                    }
                    Err(RecvError::Closed) => return,
                },
                () = sleep_until(wake), if wake.is_some() => self.flush().await,
                () = self.status.back.notified(), if wake.is_some() => {
                    self.backoff = MIN_BACKOFF;
                    self.flush().await;
                }
            }
        }
    }

    /// Compares the local bans in force with what was pushed: pushes what is
    /// missing or was lengthened, deletes what is gone.
    fn reconcile(&mut self) {
        let now = self.guard.unix_millis() / 1000;
        let local: BTreeMap<IpNet, u64> = self
            .guard
            .bans_in_force()
            .into_iter()
            .filter(|b| b.origin != Origin::Remote)
            .map(|b| (b.net, b.expires_at))
            .collect();
        self.memory.pushed.retain(|_, end| *end > now);
        for (net, end) in &local {
            if self
                .memory
                .pushed
                .get(net)
                .is_none_or(|pushed| pushed < end)
            {
                self.queue.insert(*net, *end);
            }
            self.memory.deleting.remove(net);
        }
        let gone: Vec<IpNet> = self
            .memory
            .pushed
            .keys()
            .filter(|n| !local.contains_key(n))
            .copied()
            .collect();
        self.memory.deleting.extend(gone);
        self.queue.retain(|net, _| local.contains_key(net));
        self.schedule();
    }

    fn heard(&mut self, event: BanEvent) {
        match event {
            BanEvent::Added {
                net,
                expires_at,
                origin: Origin::Strike | Origin::Manual,
                ..
            } => {
                self.queue.insert(net, expires_at);
                self.memory.deleting.remove(&net);
            }
            BanEvent::Lifted {
                net,
                origin: Origin::Strike | Origin::Manual,
            } => {
                self.queue.remove(&net);
                if self.memory.pushed.contains_key(&net) {
                    self.memory.deleting.insert(net);
                }
            }
            BanEvent::Expired {
                net,
                origin: Origin::Strike | Origin::Manual,
            } => {
                // The LAPI's decision ends by itself at the same time.
                self.queue.remove(&net);
                self.memory.pushed.remove(&net);
            }
            _ => {}
        }
        self.schedule();
    }

    /// Sets the next send: a batch window from now, but not before a backoff.
    fn schedule(&mut self) {
        self.status
            .set_push_pending(self.queue.len() + self.memory.deleting.len());
        if self.queue.is_empty() && self.memory.deleting.is_empty() {
            self.next_try = None;
            return;
        }
        if self.next_try.is_none() {
            self.next_try = Some(Instant::now() + BATCH_WINDOW);
        }
    }

    /// Sends deletions, then pushes; on failure keeps the rest for later.
    async fn flush(&mut self) {
        self.next_try = None;
        match self.send_all().await {
            Ok(()) => self.backoff = MIN_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?self.backoff, "crowdsec push failed");
                self.status.pushed(Err(e.to_string()));
                self.next_try = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        // What was sent before a failure is remembered too.
        self.save().await;
        self.schedule();
    }

    async fn send_all(&mut self) -> Result<(), LapiError> {
        let deleting: Vec<IpNet> = self.memory.deleting.iter().copied().collect();
        for net in deleting {
            let deleted = self
                .authorized(|lapi, token, config| {
                    let (key, value) = filter(&net);
                    async move {
                        lapi.delete_decisions(&token, (key, &value), &config.scenario)
                            .await
                    }
                })
                .await?;
            tracing::info!(%net, deleted, "crowdsec: pushed decision deleted");
            self.memory.deleting.remove(&net);
            self.memory.pushed.remove(&net);
        }
        while !self.queue.is_empty() {
            let batch: Vec<(IpNet, u64)> = self
                .queue
                .iter()
                .take(MAX_BATCH)
                .map(|(n, e)| (*n, *e))
                .collect();
            let now = self.guard.unix_millis() / 1000;
            let alerts = Value::Array(
                batch
                    .iter()
                    .filter(|(_, end)| *end > now)
                    .map(|(net, end)| alert(&self.config, *net, end - now))
                    .collect(),
            );
            if alerts.as_array().is_some_and(|a| !a.is_empty()) {
                self.authorized(|lapi, token, _| {
                    let alerts = alerts.clone();
                    async move { lapi.post_alerts(&token, &alerts).await }
                })
                .await?;
                tracing::info!(alerts = batch.len(), "crowdsec: bans pushed");
            }
            for (net, end) in batch {
                self.queue.remove(&net);
                if end > now {
                    self.memory.pushed.insert(net, end);
                }
            }
        }
        Ok(())
    }

    /// Runs `request` with a valid token: logs in when there is none or it
    /// is due for renewal, and once more on a 401 (a new JWT secret).
    async fn authorized<T, F, Fut>(&mut self, request: F) -> Result<T, LapiError>
    where
        F: Fn(Lapi, Token, PushConfig) -> Fut,
        Fut: std::future::Future<Output = Result<T, LapiError>>,
    {
        for attempt in 0..2 {
            let token = match self.token.clone() {
                Some(t) if t.renew_at > SystemTime::now() => t,
                _ => {
                    let t = self.lapi.login(&self.config).await?;
                    self.token = Some(t.clone());
                    t
                }
            };
            let result = request(self.lapi.clone(), token, self.config.clone()).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("sniroute_crowdsec_pushes_total", "result" => label).increment(1);
            match result {
                Err(e) if e.is_unauthorized() && attempt == 0 => {
                    tracing::info!("crowdsec: token refused; logging in again");
                    self.token = None;
                }
                Ok(v) => {
                    self.status.pushed(Ok(()));
                    return Ok(v);
                }
                Err(e) => return Err(e),
            }
        }
        Err(LapiError::Body("token refused twice".into()))
    }

    async fn save(&self) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let memory = Memory {
            version: STATE_VERSION,
            ..self.memory.clone()
        };
        let written = tokio::task::spawn_blocking(move || save(&path, &memory)).await;
        if let Ok(Err(e)) = written {
            tracing::error!(error = %e, "crowdsec: cannot write the push state file");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `("ip", "203.0.113.7")` for one address, `("range", "2001:db8::/64")` else.
fn filter(net: &IpNet) -> (&'static str, String) {
    if net.prefix_len() == net.max_prefix_len() {
        ("ip", net.addr().to_string())
    } else {
        ("range", net.to_string())
    }
}

/// One alert with its ban decision on `net` for `secs` seconds, shaped like
/// the ones `cscli decisions add` sends (the LAPI keeps given decisions as
/// they are, without running its profiles).
fn alert(config: &PushConfig, net: IpNet, secs: u64) -> Value {
    let (scope, value) = match filter(&net) {
        ("ip", v) => ("Ip", v),
        (_, v) => ("Range", v),
    };
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let duration = go_duration_string(Duration::from_secs(secs));
    let machine = config.machine_id.as_deref().unwrap_or("sniroute");
    let message = format!("{machine}: {value} banned for {duration}");
    let source = if scope == "Ip" {
        json!({ "scope": scope, "value": value, "ip": value })
    } else {
        json!({ "scope": scope, "value": value, "range": value })
    };
    json!({
        "scenario": config.scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": message,
        "events_count": 1,
        "events": [],
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "start_at": now,
        "stop_at": now,
        "source": source,
        "decisions": [{
            "duration": duration,
            "origin": "crowdsec",
            "scenario": config.scenario,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}

/// The push state file beside `ban.state_file`: `bans.json` -> `bans.crowdsec.json`.
pub fn state_path(ban_state: &std::path::Path) -> PathBuf {
    ban_state.with_extension("crowdsec.json")
}

fn load(path: &std::path::Path) -> Memory {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Memory::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "crowdsec: cannot read the push state; pushing every ban again");
            return Memory::default();
        }
    };
    match serde_json::from_slice::<Memory>(&text) {
        Ok(m) if m.version == STATE_VERSION => m,
        _ => {
            tracing::error!(path = %path.display(), "crowdsec: unreadable push state; pushing every ban again");
            Memory::default()
        }
    }
}

/// Writes atomically: temp file, fsync, rename (a crash leaves the old or the new).
fn save(path: &std::path::Path, memory: &Memory) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(memory).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_config() -> PushConfig {
        crate::config::PushConfig {
            machine_id: Some("gw1".into()),
            password_file: "/dev/null".into(),
            password: Some(crate::config::Secret::new("pw")),
            scenario: "sniroute/unknown-sni".into(),
        }
    }

    #[test]
    fn an_address_is_an_ip_and_a_prefix_a_range() {
        let a = alert(&push_config(), "203.0.113.7/32".parse().unwrap(), 3600);
        assert_eq!(a["decisions"][0]["scope"], "Ip");
        assert_eq!(a["decisions"][0]["value"], "203.0.113.7");
        assert_eq!(a["decisions"][0]["duration"], "1h0m0s");
        assert_eq!(a["source"]["ip"], "203.0.113.7");
        assert_eq!(a["scenario"], "sniroute/unknown-sni");
        let a = alert(&push_config(), "2001:db8:1:2::/64".parse().unwrap(), 59);
        assert_eq!(a["decisions"][0]["scope"], "Range");
        assert_eq!(a["decisions"][0]["value"], "2001:db8:1:2::/64");
        assert_eq!(a["source"]["range"], "2001:db8:1:2::/64");
        assert_eq!(
            filter(&"2001:db8::1/128".parse().unwrap()),
            ("ip", "2001:db8::1".to_owned())
        );
    }

    #[test]
    fn the_memory_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("bans.json"));
        assert!(path.ends_with("bans.crowdsec.json"));
        assert_eq!(load(&path), Memory::default());
        let mut m = Memory {
            version: STATE_VERSION,
            ..Memory::default()
        };
        m.pushed
            .insert("203.0.113.7/32".parse().unwrap(), 1_800_000_000);
        m.deleting.insert("2001:db8::/64".parse().unwrap());
        save(&path, &m).unwrap();
        assert_eq!(load(&path), m);
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(load(&path), Memory::default());
    }
}
