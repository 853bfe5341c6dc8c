//! The real `sniroute run` as a child process, for the hardening tests: a
//! config in a temp dir (JSON access log and admin socket there too), its
//! listening address learnt from the start-up line, and what /proc tells
//! about it (resident memory, open descriptors by kind, CPU time).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sniroute::admin::{self, Request, Response, StatusReport};

use crate::common::{POLL, WAIT, learn_listen_addr};

const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

/// Linux reports CPU time in /proc/PID/stat in USER_HZ ticks, fixed at 100
/// per second by the proc ABI whatever the kernel's own HZ.
pub const TICKS_PER_SECOND: u64 = 100;

/// A running `sniroute run`; killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    pub admin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `sniroute run` on 127.0.0.1:0 with `body` (routes and sections; no
/// top-level keys). With `nofile`, both open-file limits are set to it first
/// (sniroute raises its soft limit to the hard one, so both must be low).
pub fn spawn(body: &str, nofile: Option<u32>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sniroute.toml");
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n\n{body}\n{}",
        crate::common::default_sections(
            body,
            &dir.path().join("access.log"),
            Some(&dir.path().join("admin.sock")),
        )
    );
    std::fs::write(&config, &text).unwrap();
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = command
        .args(["run", "-c"])
        .arg(&config)
        .env("SNIROUTE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _stderr) = learn_listen_addr(&mut child);
    Daemon {
        child,
        addr,
        log_path: dir.path().join("access.log"),
        admin: dir.path().join("admin.sock"),
        _dir: dir,
    }
}

/// Open descriptors of a process, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fds {
    pub sockets: usize,
    pub pipes: usize,
    pub other: usize,
}

impl Fds {
    pub fn total(&self) -> usize {
        self.sockets + self.pipes + self.other
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak resident set size since start, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// User + system CPU time so far, in [`TICKS_PER_SECOND`] ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Its open descriptors now.
    pub fn fds(&self) -> Fds {
        let mut fds = Fds {
            sockets: 0,
            pipes: 0,
            other: 0,
        };
        let dir = format!("/proc/{}/fd", self.pid());
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue; // closed while listing
            };
            let target = target.to_string_lossy();
            if target.starts_with("socket:") {
                fds.sockets += 1;
            } else if target.starts_with("pipe:") {
                fds.pipes += 1;
            } else {
                fds.other += 1;
            }
        }
        fds
    }

    /// Its open-files limit as the kernel sees it (soft).
    pub fn nofile_limit(&self) -> String {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().to_owned()
    }

    /// Every access-log line so far, parsed.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // Only whole lines: the writer may be mid-write on the last one.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many log lines have `outcome`.
    pub fn count_outcome(&self, outcome: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|v| v["outcome"] == outcome)
            .count()
    }

    /// Waits (bounded by `within`) until `outcome` has at least `n` lines.
    pub async fn wait_outcomes(&self, outcome: &str, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.count_outcome(outcome);
            if got >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{got} of {n} `{outcome}` log lines within {within:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded) for the log line of the connection whose client side
    /// was `client`, and returns its outcome word.
    pub async fn outcome_of(&self, client: SocketAddr) -> String {
        let want = client.to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|v| v["client"].as_str() == Some(want.as_str()))
            {
                return line["outcome"].as_str().unwrap().to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no access-log line for {want} within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded) until its sockets are back to `baseline.sockets` and
    /// its pipes within `max_pipes` (the idle pipe pool), and returns the count.
    pub async fn settled_fds(&self, baseline: Fds, max_pipes: usize) -> Fds {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.fds();
            if now.sockets == baseline.sockets
                && now.pipes <= max_pipes
                && now.other == baseline.other
            {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "descriptors leaked: {now:?}, baseline {baseline:?}, pipes allowed {max_pipes}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The daemon's status over its admin socket.
    pub async fn status(&self) -> StatusReport {
        match admin::request(&self.admin, &Request::Status).await.unwrap() {
            Response::Status(s) => s,
            other => panic!("status: {other:?}"),
        }
    }

    /// The networks banned now, over the admin socket.
    pub async fn banned_nets(&self) -> Vec<String> {
        match admin::request(&self.admin, &Request::BansList)
            .await
            .unwrap()
        {
            Response::Bans { bans } => bans.into_iter().map(|b| b.net).collect(),
            other => panic!("bans list: {other:?}"),
        }
    }
}
