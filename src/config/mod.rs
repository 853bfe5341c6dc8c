//! The configuration: private serde types (`raw`) turned into typed values
//! (`Config`), with every problem reported as `PATH:LINE:COL: message`.
//! `sniroute check`, `sniroute run` and a reload all go through [`load`].
//! Never touches the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::cidr::CidrSet;
use crate::hostname::HostName;
use crate::outcome::Outcome;
pub use crowdsec::{ClientCert, CrowdsecConfig, PushConfig, Secret};

mod build;
mod check;
mod crowdsec;
mod keys;
mod raw;
pub mod reference;
#[cfg(test)]
mod reference_tests;
mod summary;

/// A fully checked configuration. Every field is a typed value with its default
/// applied; nothing is "optional now, checked later".
#[derive(Debug, Clone)]
pub struct Config {
    /// `listen` (required, one or more `IP:PORT`): addresses to accept client
    /// connections on (IPv6 listeners are v6-only). No duplicates.
    pub listen: Vec<SocketAddr>,
    /// `workers` (default 0): threads serving connections; 0 in the file becomes
    /// the number of CPU cores, so this is always >= 1.
    pub workers: usize,
    /// `splice` (default true): use splice(2) to relay on Linux; false forces a plain copy.
    pub splice: bool,
    /// `defer_accept` (default true): Linux's TCP_DEFER_ACCEPT on the
    /// listeners. The kernel hands over a connection only once its first
    /// bytes arrived (or, for a silent client, after about a second), so a
    /// refusal costs no wait for the hello. TLS and plain HTTP are both
    /// client-first, so no real client waits for it. A client that connects
    /// and closes without a byte within that second is never seen: no
    /// outcome, no log line.
    pub defer_accept: bool,
    /// `[limits]`.
    pub limits: Limits,
    /// `[tls]`.
    pub tls: TlsPolicy,
    /// `[http]`: plain HTTP/1.x listeners routed by the `Host` header.
    pub http: HttpConfig,
    /// `[[route]]` (at least one), in file order; route names are unique, an
    /// SNI pattern belongs to one route per ALPN id (or to one route without `alpn`).
    pub routes: Vec<Route>,
    /// `[unknown]`: where a valid hello with an unknown or missing SNI goes.
    /// `None` = `action = "reject"` (the default); `Some` = `action = "forward"`,
    /// a route named `unknown` with no SNI patterns.
    pub fallback: Option<Route>,
    /// `[ban]`.
    pub ban: BanConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[firewall]`: kernel bans.
    pub firewall: FirewallConfig,
    /// `[proxy_protocol]`: trusted balancers.
    pub proxy_protocol: ProxyProtocolConfig,
    /// `[crowdsec]`; `None` when `lapi_url` is unset or "" (off).
    pub crowdsec: Option<CrowdsecConfig>,
}

/// `[limits]`: time and size bounds on every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `client_hello_timeout` (default "5s", > 0): the whole ClientHello must arrive within this.
    pub client_hello_timeout: Duration,
    /// `max_client_hello` (default 16384, 512..=65536): bytes received before the
    /// decision, record headers included; more is outcome `too_large`.
    pub max_client_hello: usize,
    /// `connect_timeout` (default "3s", > 0): per backend connect attempt.
    pub connect_timeout: Duration,
    /// `idle_timeout` (default "15m", > 0): no bytes either way for this long closes.
    pub idle_timeout: Duration,
    /// `max_connections` (default 20000, >= 1): open client connections; beyond, outcome `overloaded`.
    pub max_connections: usize,
    /// `shutdown_grace` (default "30s", may be "0s"): how long open connections may finish at stop.
    pub shutdown_grace: Duration,
}

/// `[tls]`: what a ClientHello must offer to be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `min_version` (default "1.2"; "1.0", "1.1", "1.2" or "1.3") as its wire
    /// value 0x0301..=0x0304: a hello offering nothing at or above it is outcome `policy`.
    pub min_version: u16,
}

/// `[http]`: plain HTTP/1.x listeners, routed by the `Host` header of the
/// first request to the matching route's `http_backends`.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// `listen` (default empty: no plain-HTTP listener): addresses to accept
    /// plain HTTP clients on, like the top-level `listen`. No duplicates, and
    /// none of them in the top-level `listen` or `metrics.listen`.
    pub listen: Vec<SocketAddr>,
}

/// One entry of a route's `sni` list, canonical (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `myapp.example.org`
    Exact(HostName),
    /// `*.example.org`, stored as the suffix `example.org`; matches one or more labels before it.
    Wildcard(HostName),
}

impl std::fmt::Display for HostPattern {
    /// As written in `sni`, canonical: `myapp.example.org`, `*.example.org`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => write!(f, "{name}"),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// `proxy_protocol` of a route: how the backend learns the client's real address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `"none"` (the default): the raw stream only.
    None,
    /// `"v1"`: the text PROXY header.
    V1,
    /// `"v2"`: the binary PROXY header.
    V2,
}

/// `balance` of a route: which backend a new connection tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// `"first"` (the default): in the order written, the next on failure.
    First,
    /// `"round_robin"`: each new connection starts at the next backend.
    RoundRobin,
    /// `"least_connections"`: the backend with the fewest open connections
    /// through this route (ties in turn).
    LeastConnections,
}

/// `[route.health_check]`: active TCP connect checks of every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// `interval` (default "5s", > 0): time between two checks of a backend.
    pub interval: Duration,
    /// `timeout` (default "1s", > 0): a check that has not connected by then failed.
    pub timeout: Duration,
    /// `fall` (default 3, 1..=100): consecutive failed checks that take a backend out.
    pub fall: u32,
    /// `rise` (default 2, 1..=100): consecutive good checks that put it back.
    pub rise: u32,
}

/// A `[[route]]` (or the `[unknown]` forward fallback).
#[derive(Debug, Clone)]
pub struct Route {
    /// The first entry of `sni` in canonical text (`*.` kept for wildcards):
    /// the `route` label in logs and metrics. The fallback route is named `unknown`.
    pub name: String,
    /// `sni` (required, non-empty): exact names or `*.suffix` wildcards. Empty for the fallback.
    pub sni: Vec<HostPattern>,
    /// `backend = "IP:PORT"` or `backends = [...]` (exactly one of them, required):
    /// at least one address, tried in order when one refuses.
    pub backends: Vec<SocketAddr>,
    /// `proxy_protocol` (default "none"; "none", "v1" or "v2"): for TLS and
    /// plain HTTP alike.
    pub proxy_protocol: ProxyProtocol,
    /// `http_backends` (default empty; if given, at least one address): where
    /// plain HTTP requests for the route's names go from `[http]` listeners,
    /// tried in order like `backends`. Empty: on `[http]` listeners the
    /// route's names are unknown hosts. Always empty for the fallback.
    pub http_backends: Vec<SocketAddr>,
    /// `allow` (default: absent = every source): only sources inside these
    /// networks (addresses or CIDRs) may use the route; others end `denied`.
    pub allow: Option<CidrSet>,
    /// `alpn` (default empty): ALPN ids this route is for. Among routes for
    /// the same name, one whose list meets the hello's offer wins over the
    /// one without `alpn`. Non-empty ids, no spaces, at most 255 bytes.
    pub alpn: Vec<String>,
    /// `balance` (default "first").
    pub balance: Balance,
    /// `[route.health_check]` (default: none, passive only).
    pub health_check: Option<HealthCheck>,
}

impl Route {
    /// A route named `name` for `sni` to `backends`, every other key at its
    /// default (no PROXY header, every source, any ALPN, `first`, no checks).
    pub fn new(name: String, sni: Vec<HostPattern>, backends: Vec<SocketAddr>) -> Route {
        Route {
            name,
            sni,
            backends,
            proxy_protocol: ProxyProtocol::None,
            allow: None,
            alpn: Vec::new(),
            balance: Balance::First,
            health_check: None,
            http_backends: Vec::new(),
        }
    }
}

/// `[ban]`: fail2ban-style strikes and bans.
#[derive(Debug, Clone)]
pub struct BanConfig {
    /// `enabled` (default true): strike and ban at all.
    pub enabled: bool,
    /// `max_retry` (default 1, >= 1): strikes within `find_time` that earn a ban.
    pub max_retry: u32,
    /// `find_time` (default "1h", > 0): the window strikes are counted in.
    pub find_time: Duration,
    /// `ban_time` (default "365d", > 0): how long a ban lasts.
    pub ban_time: Duration,
    /// `ignore` (default `["127.0.0.0/8", "::1"]`, the machine itself; an
    /// explicit list replaces it): never struck, banned nor rate-limited; bare
    /// addresses become /32 or /128, host bits are cleared.
    pub ignore: Vec<IpNet>,
    /// `strike_on` (default unknown_sni, no_sni, not_tls, unknown_host,
    /// no_host, not_http; also possible: timeout, policy, too_large, denied):
    /// outcomes that count as a strike. No duplicates.
    pub strike_on: Vec<Outcome>,
    /// `ipv6_prefix` (default 64, 1..=128): IPv6 clients are struck and banned per this prefix.
    pub ipv6_prefix: u8,
    /// `state_file` (default "/var/lib/sniroute/bans.json"); `None` when
    /// `state_file = ""`: bans live in memory only.
    pub state_file: Option<PathBuf>,
}

/// `[rate_limit]`: a token bucket per source address (per `ipv6_prefix` for IPv6).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// `per_ip` (default 20): new connections per second per source; 0 disables the limit.
    pub per_ip: u32,
    /// `burst` (default 40; >= 1 when `per_ip` > 0): the bucket size.
    pub burst: u32,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `listen` (default "127.0.0.1:9151"); `None` when `listen = ""`: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[admin]`: the control socket.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `socket` (default "/run/sniroute/admin.sock"); `None` when `socket = ""`: no admin socket.
    pub socket: Option<PathBuf>,
}

/// `log.access`: where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// `"stdout"` (the default).
    Stdout,
    /// `"off"`.
    Off,
    /// Any other string: a file path, appended to.
    File(PathBuf),
}

/// `log.format`: how access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `"text"` (the default): the fail2ban-friendly line of the SPEC.
    Text,
    /// `"json"`: the same fields as keys.
    Json,
}

/// `[log]`: the access log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `access` (default "stdout"; "stdout", "off" or a path).
    pub access: AccessLog,
    /// `format` (default "text"; "text" or "json").
    pub format: LogFormat,
}

/// `firewall.backend`: who else enforces the bans in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallBackend {
    /// `"none"` (the default): bans are enforced in user space only, right
    /// after `accept`.
    None,
    /// `"nftables"`: every ban in force is also an element of a set in an
    /// nftables table owned by sniroute, so the kernel drops the source's
    /// packets (SYNs included); the user-space check stays as the fallback.
    Nftables,
}

/// `firewall.scope`: which packets of a banned source the kernel drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallScope {
    /// `"listen"` (the default): TCP packets to sniroute's listen ports.
    Listen,
    /// `"all"`: every packet, to any port and of any protocol.
    All,
}

/// `[firewall]`: kernel bans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// `backend` (default "none"; "none" or "nftables").
    pub backend: FirewallBackend,
    /// `table` (default "sniroute"): the nftables table `inet <table>`,
    /// created whole at start, replaced on repair, deleted at a clean stop.
    /// A letter, then letters, digits or `_`, at most 64 characters.
    pub table: String,
    /// `scope` (default "listen"; "listen" or "all").
    pub scope: FirewallScope,
}

/// `[proxy_protocol]`: the balancers whose connections name their client
/// in a PROXY header.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocolConfig {
    /// `accept_from` (default empty): addresses or CIDRs of trusted balancers
    /// (bare addresses become /32 or /128, host bits are cleared). A
    /// connection from one must start with a PROXY v1 or v2 header within
    /// `limits.client_hello_timeout`; the client it names is the source for
    /// admission, strikes, bans, the rate limit, the access log and the PROXY
    /// header sent on to backends. Such an address is itself never struck,
    /// banned nor rate-limited. Everyone else's PROXY header is `not_tls`.
    pub accept_from: CidrSet,
}

/// One problem in a config file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong and what is expected, key path first (`route[2].backend: ...`).
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read (exit status 2 for `check`).
    Unreadable { path: String, error: std::io::Error },
    /// The file was read but is not a valid config (exit status 1 for `check`).
    Invalid {
        path: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl std::fmt::Display for LoadError {
    /// One line per problem: `PATH:LINE:COL: message`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unreadable { path, error } => write!(f, "{path}: cannot read: {error}"),
            LoadError::Invalid { path, diagnostics } => {
                for (i, d) in diagnostics.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{path}:{}:{}: {}", d.line, d.col, d.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and checks the config at `path`; `path` is echoed as given in messages.
pub fn load(path: &std::path::Path) -> Result<Config, LoadError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Unreadable {
        path: label.clone(),
        error,
    })?;
    parse_str(&text).map_err(|diagnostics| LoadError::Invalid {
        path: label,
        diagnostics,
    })
}

/// Parses and checks config text, collecting every problem it can find,
/// sorted by position. A TOML syntax error stops at the first one; unknown
/// keys, wrong types and bad values are all reported together.
pub fn parse_str(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let src = raw::Source::new(text);
    let mut diagnostics = Vec::new();
    let config =
        raw::parse(&src, &mut diagnostics).map(|raw| build::build(&src, raw, &mut diagnostics));
    match config {
        Some(config) if diagnostics.is_empty() => Ok(config),
        _ => {
            diagnostics.sort_by_key(|d| (d.line, d.col));
            diagnostics.dedup();
            Err(diagnostics)
        }
    }
}
