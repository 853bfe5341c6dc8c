//! The configuration: private serde types (`raw`) turned into typed values
//! (`Config`), with every problem reported as `PATH:LINE:COL: message`.
//! `sniroute check`, `sniroute run` and a reload all go through [`load`].
//! Never touches the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::hostname::HostName;
use crate::outcome::Outcome;

/// A fully checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to accept client connections on (IPv6 listeners are v6-only).
    pub listen: Vec<SocketAddr>,
    /// Threads serving connections; 0 in the file becomes the number of CPU cores.
    pub workers: usize,
    /// Use splice(2) to relay on Linux (`splice = true`, the default); false forces a plain copy.
    pub splice: bool,
    pub limits: Limits,
    pub tls: TlsPolicy,
    /// Routes in file order; route names are unique, SNI patterns are unique across routes.
    pub routes: Vec<Route>,
    /// Where a valid hello with an unknown or missing SNI goes: `None` = reject.
    pub fallback: Option<Route>,
    pub ban: BanConfig,
    pub rate_limit: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub client_hello_timeout: Duration,
    pub max_client_hello: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Minimum TLS version as its wire value: 0x0301 (1.0) .. 0x0304 (1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPolicy {
    pub min_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `myapp.example.org`
    Exact(HostName),
    /// `*.example.org`, stored as the suffix `example.org`; matches one or more labels before it.
    Wildcard(HostName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// The first entry of `sni` as written (canonical, `*.` kept for wildcards):
    /// the `route` label in logs and metrics. The fallback route is named `unknown`.
    pub name: String,
    pub sni: Vec<HostPattern>,
    /// At least one; tried in order when one refuses.
    pub backends: Vec<SocketAddr>,
    pub proxy_protocol: ProxyProtocol,
}

#[derive(Debug, Clone)]
pub struct BanConfig {
    pub enabled: bool,
    pub max_retry: u32,
    pub find_time: Duration,
    pub ban_time: Duration,
    pub ignore: Vec<IpNet>,
    pub strike_on: Vec<Outcome>,
    pub ipv6_prefix: u8,
    /// `None` when `state_file = ""`: bans live in memory only.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// New connections per second per source; 0 disables the limit.
    pub per_ip: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `None` when `listen = ""`: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `socket = ""`: no admin socket.
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: AccessLog,
    pub format: LogFormat,
}

/// One problem in a config file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
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

/// Parses and checks config text, collecting every problem it can find.
pub fn parse_str(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let _ = text;
    Err(vec![Diagnostic {
        line: 1,
        col: 1,
        message: "not implemented".into(),
    }])
}

impl Config {
    /// A short human summary for `sniroute check`: listeners, routes, ban policy.
    pub fn summary(&self) -> String {
        String::new()
    }
}
