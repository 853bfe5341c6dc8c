//! The admin control socket: `sniroute status`, `sniroute bans list|add|remove`
//! and `sniroute reload` talk to the running daemon over a Unix socket.
//!
//! Protocol: the client connects, writes one JSON [`Request`] on one line, and
//! reads one JSON [`Response`] line; then both close. The socket is mode 0600
//! from the moment it appears at its path: it is bound inside a fresh 0700
//! directory, chmodded, then renamed into place, so no umask and no race ever
//! expose a wider mode. A stale socket file left by a crash (connect gets
//! ECONNREFUSED) is replaced; a live daemon on it is a start-up error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::firewall;
use arc_swap::ArcSwapOption;

use crate::crowdsec;
use crate::guard::Guard;
use crate::guard::bans::Ban;
use crate::guard::clock::rfc3339 as time;
use crate::outcome::Outcome;
use crate::shared::{Control, Shared, Snapshot};

/// Longest request line accepted; a real request is under 200 bytes.
const MAX_REQUEST: u64 = 4096;

/// Longest response line the client reads: 1M bans (the table's cap) at
/// ~120 bytes each fit.
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

/// How long a client may take to send its request: a stuck client must not
/// hold a task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the client waits for the answer; a reload reads and checks the
/// config, which is quick, but a slow disk must not make this fail early.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest IPv4 prefix `bans add` takes without `--force`: a /8 is
/// already 16.7 million addresses; anything wider (`0.0.0.0/0` from a slip
/// of the keyboard) would shut out a good part of the internet, or everyone.
pub const WIDEST_V4_PREFIX: u8 = 8;

/// The shortest IPv6 prefix `bans add` takes without `--force`: a /32 is a
/// whole provider's allocation (RIRs hand out /32s to ISPs).
pub const WIDEST_V6_PREFIX: u8 = 32;

/// Why `target` is too wide to ban without `--force`, or `None` when it is
/// an address, a narrow enough prefix, or not a prefix at all (the guard
/// reports those).
pub fn too_wide(target: &str) -> Option<String> {
    let net: ipnet::IpNet = target.trim().parse().ok()?;
    let (widest, family) = match net {
        ipnet::IpNet::V4(_) => (WIDEST_V4_PREFIX, "IPv4"),
        ipnet::IpNet::V6(_) => (WIDEST_V6_PREFIX, "IPv6"),
    };
    (net.prefix_len() < widest).then(|| {
        format!(
            "{net} is wider than /{widest} ({family}): it would ban a huge part of the \
             internet (/0 is everyone); add --force if you really mean it"
        )
    })
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Connections by outcome, currently and total banned.
    Status,
    /// Bans in force.
    BansList,
    /// Ban an address or prefix by hand, for `duration` (`"1h"`, `"30d"`...;
    /// default `ban.ban_time`).
    BansAdd {
        addr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
        /// Needed for a prefix wider than [`WIDEST_V4_PREFIX`] /
        /// [`WIDEST_V6_PREFIX`] (see [`too_wide`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Lift a ban.
    BansRemove { addr: String },
    /// Reload the config, like SIGHUP.
    Reload,
}

/// One admin response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(StatusReport),
    /// The answer to [`Request::BansList`].
    Bans {
        #[serde(serialize_with = "bans_with_times")]
        bans: Vec<Ban>,
    },
    /// A change was made: what, and the bans it added or removed.
    Done {
        message: String,
        #[serde(default, serialize_with = "bans_with_times")]
        bans: Vec<Ban>,
    },
    /// The request was refused or failed; why.
    Refused { message: String },
}

/// What `sniroute status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Connections ended since start, per outcome word (every outcome present).
    pub connections: BTreeMap<String, u64>,
    /// Bans in force now.
    pub currently_banned: u64,
    /// Bans made (or restored) since start.
    pub total_banned: u64,
    /// Sources with strikes but no ban yet.
    pub sources_with_strikes: u64,
    /// Sources the rate limiter is tracking.
    pub rate_limit_keys: u64,
    /// Kernel bans: `nftables inet sniroute, N elements` or `none`.
    #[serde(default = "no_firewall")]
    pub firewall: String,
    /// The CrowdSec LAPI's state, when `[crowdsec]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<crowdsec::Report>,
    /// Every route's backends (`backends`, then `http_backends`), in config order.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
}

/// One backend of one route in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub route: String,
    /// `tls` (the route's `backends`) or `http` (its `http_backends`).
    pub kind: String,
    pub backend: String,
    /// `up`, `down` (taken out by the health check) or `skipped` (refused a
    /// client connection less than 10 s ago).
    pub state: String,
    /// Connections open to it now.
    pub active: u64,
}

/// The bound admin socket. Dropping it removes the socket file (if it is
/// still the one it bound).
pub struct AdminServer {
    listener: UnixListener,
    /// What `status` shows of CrowdSec, when it runs.
    crowdsec: Arc<ArcSwapOption<crowdsec::Status>>,
    path: PathBuf,
    inode: (u64, u64),
    /// The kernel bans' state, for `status`; `None` reads as `none`.
    firewall: Option<Arc<firewall::Status>>,
    /// The routes in force, for the backends in `status`.
    shared: Option<Arc<Shared>>,
}

impl AdminServer {
    /// Binds the admin socket at `path` with mode 0600, replacing a stale
    /// socket file. Fails when a live daemon answers there, or when `path`
    /// exists and is not a socket. Call inside a tokio runtime.
    pub fn bind(path: &Path) -> anyhow::Result<AdminServer> {
        clear_stale(path)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).with_context(|| {
            format!("cannot create admin socket directory {}", parent.display())
        })?;
        let listener = bind_private(path, parent)
            .with_context(|| format!("cannot bind admin socket {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)?;
        listener.set_nonblocking(true)?;
        Ok(AdminServer {
            listener: UnixListener::from_std(listener)?,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            firewall: None,
            crowdsec: Arc::default(),
            shared: None,
        })
    }

    /// Reports `firewall` in `status` (the line `Firewall: ...`).
    pub fn with_firewall(mut self, firewall: Arc<firewall::Status>) -> AdminServer {
        self.firewall = Some(firewall);
        self
    }

    /// Shows the backends of the routes in force (at each request) in `status`.
    pub fn with_backends(mut self, shared: Arc<Shared>) -> AdminServer {
        self.shared = Some(shared);
        self
    }

    /// Shows CrowdSec's state (whatever `slot` holds at each request) in `status`.
    pub fn with_crowdsec(mut self, slot: Arc<ArcSwapOption<crowdsec::Status>>) -> AdminServer {
        self.crowdsec = slot;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers admin requests until the future is dropped (abort the task or
    /// `select!` it against shutdown). A reload request is sent on `control`
    /// as `Control::Reload(Some(reply))`, the same channel SIGHUP feeds, and
    /// its reply (`Ok(summary)` taken, `Err(reason)` refused) is returned to
    /// the client; with `None` reloads are answered "not available".
    pub async fn serve(self, guard: Arc<Guard>, control: Option<mpsc::Sender<Control>>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let (guard, control) = (guard.clone(), control.clone());
                    let crowdsec = self.crowdsec.load_full();
                    let firewall = self.firewall.clone();
                    let snapshot = self.shared.as_ref().map(|s| s.snapshot());
                    tokio::spawn(async move {
                        let status = Ctx {
                            guard: &guard,
                            crowdsec: crowdsec.as_deref(),
                            firewall: firewall.as_deref(),
                            snapshot: snapshot.as_deref(),
                        };
                        if let Err(e) = answer(stream, status, control.as_ref()).await {
                            tracing::debug!(error = %e, "admin connection failed");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file left by a crashed daemon; refuses a live one.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "admin socket path {} exists and is not a socket",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another sniroute is already running with admin socket {}",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale admin socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale admin socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot check admin socket {}", path.display())),
    }
}

/// Binds in a fresh 0700 directory beside `path`, sets 0600, and renames the
/// socket into place: it is never reachable with a wider mode.
fn bind_private(path: &Path, parent: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let private = parent.join(format!(".sniroute-admin-{}", std::process::id()));
    if std::fs::symlink_metadata(&private).is_ok() {
        // Left by an earlier process with our pid: never reuse, recreate.
        std::fs::remove_dir_all(&private)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Reads one request, writes one response.
async fn answer(
    stream: UnixStream,
    ctx: Ctx<'_>,
    control: Option<&mpsc::Sender<Control>>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, ctx, control).await,
        Err(e) => Response::Refused {
            message: format!("bad request: {e}"),
        },
    };
    let mut bytes = serde_json::to_vec(&response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Carries out one request.
async fn handle(
    request: Request,
    ctx: Ctx<'_>,
    control: Option<&mpsc::Sender<Control>>,
) -> Response {
    let guard = ctx.guard;
    match request {
        Request::Status => Response::Status(status(ctx)),
        Request::BansList => Response::Bans { bans: guard.bans() },
        Request::BansAdd {
            addr,
            duration,
            force,
        } => {
            if let Some(reason) = too_wide(&addr).filter(|_| !force) {
                return refused(reason);
            }
            let duration = match duration
                .as_deref()
                .map(humantime::parse_duration)
                .transpose()
            {
                Ok(d) => d,
                Err(e) => return refused(format!("bad duration: {e}")),
            };
            match guard.ban_manual(&addr, duration) {
                Ok(ban) => Response::Done {
                    message: format!("banned {} until {}", ban.net, time(ban.expires_at)),
                    bans: vec![ban],
                },
                Err(reason) => refused(reason),
            }
        }
        Request::BansRemove { addr } => match guard.unban_manual(&addr) {
            Ok(bans) => {
                let nets: Vec<&str> = bans.iter().map(|b| b.net.as_str()).collect();
                Response::Done {
                    message: format!("unbanned {}", nets.join(", ")),
                    bans,
                }
            }
            Err(reason) => refused(reason),
        },
        Request::Reload => reload_via(control).await,
    }
}

fn refused(message: String) -> Response {
    Response::Refused { message }
}

/// What a request may look at.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    guard: &'a Guard,
    crowdsec: Option<&'a crowdsec::Status>,
    firewall: Option<&'a firewall::Status>,
    snapshot: Option<&'a Snapshot>,
}

fn status(ctx: Ctx<'_>) -> StatusReport {
    let guard = ctx.guard;
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    StatusReport {
        crowdsec: ctx.crowdsec.map(|c| c.report(guard)),
        connections: guard
            .outcome_counts()
            .into_iter()
            .map(|(o, n)| (o.as_str().to_owned(), n))
            .collect(),
        currently_banned: guard.currently_banned(),
        total_banned: guard.total_banned(),
        sources_with_strikes: count(guard.strike_sources()),
        rate_limit_keys: count(guard.rate_limit_keys()),
        firewall: ctx
            .firewall
            .map_or_else(no_firewall, firewall::Status::line),
        backends: ctx.snapshot.map(backends).unwrap_or_default(),
    }
}

/// The backends of every route in `snapshot`, for `status`.
fn backends(snapshot: &Snapshot) -> Vec<BackendStatus> {
    let tls = snapshot.pools.iter().map(|p| ("tls", &**p));
    let http = snapshot.http_pools.iter().flatten().map(|p| ("http", &**p));
    tls.chain(http)
        .flat_map(|(kind, pool)| {
            pool.states()
                .map(move |(addr, state, active)| BackendStatus {
                    route: pool.route().to_owned(),
                    kind: kind.to_owned(),
                    backend: addr.to_string(),
                    state: state.to_owned(),
                    active: u64::try_from(active).unwrap_or(u64::MAX),
                })
        })
        .collect()
}

/// What `status` says without kernel bans.
fn no_firewall() -> String {
    "none".to_owned()
}

async fn reload_via(control: Option<&mpsc::Sender<Control>>) -> Response {
    let Some(control) = control else {
        return refused("reload is not available".into());
    };
    let (reply, answer) = oneshot::channel();
    if control.send(Control::Reload(Some(reply))).await.is_err() {
        return refused("the daemon is shutting down".into());
    }
    match answer.await {
        Ok(Ok(message)) => Response::Done {
            message,
            bans: Vec::new(),
        },
        Ok(Err(reason)) => refused(reason),
        Err(_) => refused("the reload was abandoned".into()),
    }
}

/// Sends `request` to the daemon at `socket` and returns its answer. When the
/// daemon cannot be reached the error reads like
/// `cannot reach sniroute at /run/sniroute/admin.sock: No such file or directory (is the daemon running?)`.
pub async fn request(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).await.map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => {
                " (the socket is mode 0600: run as the daemon's user)"
            }
            _ => " (is the daemon running?)",
        };
        anyhow::anyhow!(
            "cannot reach sniroute at {}: {}{hint}",
            socket.display(),
            plain_error(&e)
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let exchange = async {
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(&mut stream)
            .take(MAX_RESPONSE)
            .read_line(&mut answer)
            .await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("sniroute at {} did not answer in time", socket.display()))?
        .with_context(|| format!("talking to sniroute at {}", socket.display()))?;
    if answer.is_empty() {
        bail!(
            "sniroute at {} closed the connection without an answer",
            socket.display()
        );
    }
    serde_json::from_str(&answer)
        .with_context(|| format!("bad answer from sniroute at {}", socket.display()))
}

/// An I/O error's message without the " (os error N)" suffix.
fn plain_error(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Writes `text` to stdout. A reader that went away (`sniroute bans list |
/// head`) is not an error worth a panic: the rest is dropped quietly.
pub fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Sends `request`, prints the answer (one JSON document with `json`,
/// human text otherwise) and returns the exit status: 0 done, 1 refused.
/// `Err` when the daemon cannot be reached (print it, exit 2).
pub async fn run_command(socket: &Path, request: &Request, json: bool) -> anyhow::Result<u8> {
    let response = self::request(socket, request).await?;
    if json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&response)?));
    } else {
        print_out(&response.human());
    }
    Ok(if response.is_refused() { 1 } else { 0 })
}

impl Response {
    /// True for [`Response::Refused`].
    pub fn is_refused(&self) -> bool {
        matches!(self, Response::Refused { .. })
    }

    /// The text `sniroute` prints for humans, ending with a newline.
    pub fn human(&self) -> String {
        match self {
            Response::Status(s) => s.human(),
            Response::Bans { bans } => bans_table(bans),
            Response::Done { message, .. } => format!("{message}\n"),
            Response::Refused { message } => format!("refused: {message}\n"),
        }
    }
}

impl StatusReport {
    /// Like `fail2ban-client status`, including the lines
    /// `Currently banned: N` and `Total banned: N`.
    pub fn human(&self) -> String {
        let mut out = String::from("Connections by outcome:\n");
        for outcome in Outcome::ALL {
            let n = self.connections.get(outcome.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "  {:<14} {n}", outcome.as_str());
        }
        let _ = writeln!(out, "Sources with strikes: {}", self.sources_with_strikes);
        let _ = writeln!(
            out,
            "Rate-limited sources tracked: {}",
            self.rate_limit_keys
        );
        let _ = writeln!(out, "Currently banned: {}", self.currently_banned);
        let _ = writeln!(out, "Total banned: {}", self.total_banned);
        let _ = writeln!(out, "Firewall: {}", self.firewall);
        if let Some(c) = &self.crowdsec {
            out.push_str(&crowdsec_lines(c));
        }
        if !self.backends.is_empty() {
            out.push_str(&backend_lines(&self.backends));
        }
        out
    }
}

/// The backends part of `status`, aligned like `bans list`:
/// `  vault  tls  10.0.0.5:443  up  3 open`.
fn backend_lines(backends: &[BackendStatus]) -> String {
    let width = |f: fn(&BackendStatus) -> usize| backends.iter().map(f).max().unwrap_or(0);
    let (route_w, addr_w) = (width(|b| b.route.len()), width(|b| b.backend.len()));
    let mut out = String::from("Backends:\n");
    for b in backends {
        let _ = writeln!(
            out,
            "  {:<route_w$}  {:<4}  {:<addr_w$}  {:<7}  {} open",
            b.route, b.kind, b.backend, b.state, b.active
        );
    }
    out
}

/// The CrowdSec part of `status`.
fn crowdsec_lines(c: &crowdsec::Report) -> String {
    let mut out = format!("CrowdSec LAPI: {}\n", c.lapi_url);
    let last = match c.last_pull {
        0 => "never".to_string(),
        t => time(t),
    };
    let _ = writeln!(out, "  Last pull: {last}");
    if let Some(e) = &c.pull_error {
        let _ = writeln!(out, "  Pull failing: {e}");
    }
    let _ = writeln!(out, "  Remote decisions: {}", c.decisions);
    if c.push {
        let last = match c.last_push {
            0 => "never".to_string(),
            t => time(t),
        };
        let _ = writeln!(out, "  Last push: {last}; waiting: {}", c.push_pending);
        if let Some(e) = &c.push_error {
            let _ = writeln!(out, "  Push failing: {e}");
        }
    }
    out
}

/// `bans list` as a table.
fn bans_table(bans: &[Ban]) -> String {
    if bans.is_empty() {
        return "No bans.\n".into();
    }
    let width = bans
        .iter()
        .map(|b| b.net.len())
        .max()
        .unwrap_or(0)
        .max("ADDRESS".len());
    let mut out = format!(
        "{:<width$}  {:<13}  {:>7}  {:<20}  {}\n",
        "ADDRESS", "REASON", "STRIKES", "BANNED AT", "EXPIRES"
    );
    for b in bans {
        let _ = writeln!(
            out,
            "{:<width$}  {:<13}  {:>7}  {:<20}  {}{}",
            b.net,
            b.reason,
            b.strikes,
            time(b.banned_at),
            time(b.expires_at),
            if b.kernel {
                ""
            } else {
                "  (behind a balancer)"
            },
        );
    }
    out
}

/// Bans as JSON with their times twice: unix seconds (`banned_at`,
/// `expires_at`, for arithmetic in scripts) and RFC 3339 UTC
/// (`banned_at_utc`, `expires_at_utc`, for whoever reads the JSON).
fn bans_with_times<S: serde::Serializer>(bans: &[Ban], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Timed<'a> {
        #[serde(flatten)]
        ban: &'a Ban,
        banned_at_utc: String,
        expires_at_utc: String,
    }
    s.collect_seq(bans.iter().map(|ban| Timed {
        ban,
        banned_at_utc: time(ban.banned_at),
        expires_at_utc: time(ban.expires_at),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let req = Request::BansAdd {
            addr: "10.0.0.0/8".into(),
            duration: Some("1h".into()),
            force: false,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"bans_add","addr":"10.0.0.0/8","duration":"1h"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let forced = r#"{"cmd":"bans_add","addr":"0.0.0.0/0","force":true}"#;
        let req: Request = serde_json::from_str(forced).unwrap();
        assert_eq!(serde_json::to_string(&req).unwrap(), forced);
    }

    #[test]
    fn wide_prefixes_need_force() {
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001:db8::/31"] {
            let why = too_wide(wide).unwrap();
            assert!(why.contains("--force"), "{why}");
        }
        for fine in [
            "10.0.0.0/8",
            "2001:db8::/32",
            "203.0.113.7",
            "::1",
            "nonsense",
        ] {
            assert_eq!(too_wide(fine), None, "{fine}");
        }
    }

    #[test]
    fn status_text_has_the_fail2ban_lines() {
        let report = StatusReport {
            connections: BTreeMap::from([("routed".to_owned(), 7)]),
            currently_banned: 2,
            total_banned: 5,
            sources_with_strikes: 1,
            rate_limit_keys: 3,
            firewall: "nftables inet sniroute, 2 elements".to_owned(),
            crowdsec: None,
            backends: vec![
                BackendStatus {
                    route: "vault".to_owned(),
                    kind: "tls".to_owned(),
                    backend: "10.0.0.5:443".to_owned(),
                    state: "up".to_owned(),
                    active: 3,
                },
                BackendStatus {
                    route: "git.example.org".to_owned(),
                    kind: "http".to_owned(),
                    backend: "[2001:db8::6]:80".to_owned(),
                    state: "down".to_owned(),
                    active: 0,
                },
            ],
        };
        let text = report.human();
        assert!(
            text.contains(
                "Backends:\n\
             \x20 vault            tls   10.0.0.5:443      up       3 open\n\
             \x20 git.example.org  http  [2001:db8::6]:80  down     0 open\n"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "Firewall: nftables inet sniroute, 2 elements")
        );
        assert!(text.lines().any(|l| l == "Currently banned: 2"));
        assert!(text.lines().any(|l| l == "Total banned: 5"));
        assert!(text.contains("  routed         7\n"));
        assert!(text.contains("  unknown_sni    0\n"));
    }

    #[test]
    fn plain_error_drops_the_os_error_suffix() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(plain_error(&e), "No such file or directory");
    }

    #[test]
    fn bans_table_has_a_row_per_ban() {
        let ban = Ban {
            net: "203.0.113.7/32".into(),
            reason: "unknown_sni".into(),
            strikes: 1,
            banned_at: 1_633_881_336,
            expires_at: 1_665_417_336,
            kernel: true,
        };
        let text = bans_table(&[ban]);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("ADDRESS"));
        let row = lines.next().unwrap();
        assert!(
            row.contains("203.0.113.7/32") && row.contains("2021-10-10T15:55:36Z"),
            "{row}"
        );
        assert_eq!(bans_table(&[]), "No bans.\n");
    }

    #[test]
    fn json_bans_carry_both_time_forms() {
        let ban = Ban {
            net: "203.0.113.7/32".into(),
            reason: "manual".into(),
            strikes: 0,
            banned_at: 1_633_881_336,
            expires_at: 1_665_417_336,
            kernel: true,
        };
        let response = Response::Bans { bans: vec![ban] };
        let json: serde_json::Value = serde_json::to_value(&response).unwrap();
        let listed = &json["bans"][0];
        assert_eq!(listed["expires_at"], 1_665_417_336);
        assert_eq!(listed["banned_at_utc"], "2021-10-10T15:55:36Z");
        assert_eq!(listed["expires_at_utc"], "2022-10-10T15:55:36Z");
        let back: Response = serde_json::from_value(json).unwrap();
        assert_eq!(back, response);
    }
}
