//! Raw sections -> typed [`Config`]: applies the defaults and checks every
//! value, collecting every problem at the place it was written. On a bad value
//! the default is used so checking can go on; the caller fails if any
//! diagnostic was pushed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::check::{Checker, or_list};
use super::keys;
use super::raw::{self, RawConfig, Source, Text, TextList};
use super::{
    AccessLog, AdminConfig, Balance, BanConfig, Config, Diagnostic, FirewallBackend,
    FirewallConfig, FirewallScope, HealthCheck, HostPattern, HttpConfig, Limits, LogConfig,
    LogFormat, MetricsConfig, ProxyProtocol, ProxyProtocolConfig, RateLimitConfig, Route,
    TlsPolicy,
};
use crate::cidr::CidrSet;
use crate::outcome::Outcome;

/// `max_client_hello` lower bound: a real ClientHello with SNI and today's
/// extensions is 250-600 bytes (curl ~ 520), so less would refuse real clients.
const MIN_CLIENT_HELLO: i64 = 512;
/// `max_client_hello` upper bound: post-quantum hellos are ~1.8 KiB, no real
/// client sends 64 KiB; each pending connection may hold this much memory.
const MAX_CLIENT_HELLO: i64 = 65_536;
/// `workers` upper bound: a typo guard, far above any machine's core count.
const MAX_WORKERS: i64 = 1024;
/// What `workers = 0` becomes when the core count cannot be read.
const FALLBACK_WORKERS: usize = 1;
/// Longest `firewall.table`: nftables takes up to 255 bytes, but a table
/// name is typed in `nft list table inet NAME` and in the systemd drop-in;
/// 64 is plenty and keeps messages short.
const MAX_TABLE_NAME: usize = 64;
/// Most backends of one route: the balancer keeps which ones a connection
/// tried in a 64-bit mask (no allocation per connection); far above any
/// real pool behind one name.
pub(crate) const MAX_BACKENDS: usize = 64;
/// Longest ALPN id: RFC 7301 gives it a one-byte length.
const MAX_ALPN_ID: usize = 255;
/// The route name used for `[unknown] action = "forward"`.
const FALLBACK_NAME: &str = "unknown";

/// Checks every raw value and builds the typed config, pushing each problem.
pub(super) fn build(src: &Source<'_>, raw: RawConfig, diags: &mut Vec<Diagnostic>) -> Config {
    let mut c = Checker { src, diags };
    let listen = c.listen(&raw);
    let workers = c.int(
        "workers",
        raw.top.workers.as_ref(),
        0,
        0..=MAX_WORKERS,
        "0 = one per CPU core",
    );
    let workers = match usize::try_from(workers) {
        Ok(0) | Err(_) => {
            std::thread::available_parallelism().map_or(FALLBACK_WORKERS, |n| n.get())
        }
        Ok(n) => n,
    };
    let fallback = c.fallback(&raw.unknown);
    let routes = c.routes(&raw, fallback.is_some());
    let metrics = c.metrics(&raw, &listen);
    let http = c.http(&raw, &listen, metrics.listen);
    Config {
        listen,
        workers,
        splice: raw.top.splice.unwrap_or(true),
        defer_accept: raw.top.defer_accept.unwrap_or(true),
        limits: c.limits(&raw.limits),
        tls: c.tls(&raw.tls),
        http,
        routes,
        fallback,
        ban: c.ban(&raw.ban),
        rate_limit: c.rate_limit(&raw.rate_limit),
        metrics,
        admin: AdminConfig {
            socket: path_or_none(raw.admin.socket.as_deref(), "/run/sniroute/admin.sock"),
        },
        log: c.log(&raw.log),
        firewall: c.firewall(&raw.firewall),
        proxy_protocol: c.proxy_protocol_section(&raw.proxy_protocol),
        crowdsec: c.crowdsec(&raw.crowdsec),
    }
}

/// `None` for `""`, the default when absent, else the path.
/// `ban.ignore` when the key is absent: the machine itself, like fail2ban's
/// `ignoreip = 127.0.0.1/8 ::1`, so a user testing from the same host (curl
/// without SNI, a typo in a name) never bans themselves. An explicit list,
/// even `[]`, replaces it.
const DEFAULT_IGNORE: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// [`DEFAULT_IGNORE`] as networks.
fn default_ignore() -> Vec<ipnet::IpNet> {
    DEFAULT_IGNORE
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn path_or_none(raw: Option<&str>, default: &str) -> Option<PathBuf> {
    match raw.unwrap_or(default) {
        "" => None,
        path => Some(PathBuf::from(path)),
    }
}

impl Checker<'_, '_> {
    fn listen(&mut self, raw: &RawConfig) -> Vec<SocketAddr> {
        let Some(list) = &raw.top.listen else {
            if !raw.top_failed {
                let msg = "missing required key \"listen\": the addresses to accept clients on, \
                           like listen = [\"0.0.0.0:443\", \"[::]:443\"]";
                self.err(0..0, msg);
            }
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.err(
                list.span(),
                "listen: empty; give at least one address, like [\"0.0.0.0:443\"]",
            );
        }
        self.addr_list("listen", list)
    }

    fn limits(&mut self, raw: &raw::RawLimits) -> Limits {
        let hello = "fewer bytes refuse real clients, more is more than any client sends";
        let max_client_hello = self.int(
            "limits.max_client_hello",
            raw.max_client_hello.as_ref(),
            16_384,
            MIN_CLIENT_HELLO..=MAX_CLIENT_HELLO,
            hello,
        );
        let max_connections = self.int(
            "limits.max_connections",
            raw.max_connections.as_ref(),
            20_000,
            1..=i64::MAX,
            "",
        );
        Limits {
            client_hello_timeout: self.duration(
                "limits.client_hello_timeout",
                raw.client_hello_timeout.as_ref(),
                Duration::from_secs(5),
                false,
            ),
            max_client_hello: usize::try_from(max_client_hello).unwrap_or(16_384),
            connect_timeout: self.duration(
                "limits.connect_timeout",
                raw.connect_timeout.as_ref(),
                Duration::from_secs(3),
                false,
            ),
            idle_timeout: self.duration(
                "limits.idle_timeout",
                raw.idle_timeout.as_ref(),
                Duration::from_secs(900),
                false,
            ),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            shutdown_grace: self.duration(
                "limits.shutdown_grace",
                raw.shutdown_grace.as_ref(),
                Duration::from_secs(30),
                true,
            ),
        }
    }

    fn tls(&mut self, raw: &raw::RawTls) -> TlsPolicy {
        let versions = [
            ("1.0", 0x0301),
            ("1.1", 0x0302),
            ("1.2", 0x0303),
            ("1.3", 0x0304),
        ];
        TlsPolicy {
            min_version: self.word(
                "tls.min_version",
                raw.min_version.as_ref(),
                0x0303,
                &versions,
            ),
        }
    }

    /// Every `[[route]]`; `forwarding` = `[unknown]` forwards, so its name `unknown` is taken.
    fn routes(&mut self, raw: &RawConfig, forwarding: bool) -> Vec<Route> {
        if !raw.routes_written {
            let msg = "no [[route]] defined: at least one is required, like\n  [[route]]\n  \
                       sni = [\"myapp.example.org\"]\n  backend = \"10.0.0.5:443\"";
            self.err(0..0, msg);
        }
        let mut owners = HashMap::new();
        let mut routes = Vec::new();
        for (n, route) in &raw.routes {
            let path = format!("route[{n}]");
            let header = route.span();
            let route = route.get_ref();
            let alpn = self.alpn(&path, route.alpn.as_ref());
            let sni = self.sni(
                &path,
                header.clone(),
                route.sni.as_ref(),
                (*n, &alpn),
                &mut owners,
            );
            let backends = self.backends(
                &path,
                header.clone(),
                route.backend.as_ref(),
                route.backends.as_ref(),
            );
            let proxy_protocol = self.proxy_protocol(
                &format!("{path}.proxy_protocol"),
                route.proxy_protocol.as_ref(),
            );
            let http_backends = self.http_backends(&path, route.http_backends.as_ref());
            if let Some(list) = route.http_backends.as_ref().filter(|_| !alpn.is_empty()) {
                let msg = format!(
                    "{path}.http_backends: plain HTTP has no ALPN, so it goes to the route \
                     without \"alpn\" for these names; set http_backends there"
                );
                self.err(list.span(), msg);
            }
            let allow = route.allow.as_ref().map(|list| {
                let nets: Vec<_> = list
                    .get_ref()
                    .iter()
                    .filter_map(|item| self.cidr(&format!("{path}.allow"), item))
                    .collect();
                if list.get_ref().is_empty() {
                    let msg = format!(
                        "{path}.allow: empty, which would refuse every client; \
                         remove the key to allow every source"
                    );
                    self.err(list.span(), msg);
                }
                CidrSet::new(&nets)
            });
            let balance = self.balance(&format!("{path}.balance"), route.balance.as_ref());
            let health_check = route
                .health_check
                .as_ref()
                .map(|raw| self.health_check(&format!("{path}.health_check"), raw.get_ref()));
            let (Some(first), Some(backends)) = (sni.first(), backends) else {
                continue;
            };
            if backends.len() > MAX_BACKENDS {
                let at = route
                    .backends
                    .as_ref()
                    .map_or(header.clone(), Spanned::span);
                let msg = format!(
                    "{path}.backends: {} addresses; a route holds at most {MAX_BACKENDS}",
                    backends.len()
                );
                self.err(at, msg);
            }
            // Routes sharing a name differ by ALPN; the label says which.
            let name = match alpn.first() {
                None => first.to_string(),
                Some(id) => format!("{first}[{id}]"),
            };
            if forwarding && name == FALLBACK_NAME {
                let msg = format!(
                    "{path}: the route name \"unknown\" is taken by [unknown] action = \"forward\""
                );
                self.err(header, msg);
            }
            routes.push(Route {
                name,
                sni,
                backends,
                proxy_protocol,
                http_backends,
                allow,
                alpn,
                balance,
                health_check,
            });
        }
        routes
    }

    /// A route's `sni` list: required, non-empty, each pattern owned by one
    /// route only per ALPN id (`owners`: (pattern, ALPN id or none) -> route
    /// number; `route` = this route's number and ALPN list); a repeat is an
    /// error at its second place.
    fn sni(
        &mut self,
        path: &str,
        header: Range<usize>,
        raw: Option<&TextList>,
        route: (usize, &[String]),
        owners: &mut HashMap<(HostPattern, Option<String>), usize>,
    ) -> Vec<HostPattern> {
        let (n, alpn) = route;
        let Some(list) = raw else {
            let msg = format!(
                "{path}: missing \"sni\": the names this route serves, like sni = [\"myapp.example.org\"]"
            );
            self.err(header, msg);
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.err(
                list.span(),
                format!("{path}.sni: empty; give at least one name"),
            );
        }
        let keys: Vec<Option<String>> = if alpn.is_empty() {
            vec![None]
        } else {
            alpn.iter().cloned().map(Some).collect()
        };
        let mut patterns = Vec::new();
        for item in list.get_ref() {
            let Some(pattern) = self.pattern(&format!("{path}.sni"), item) else {
                continue;
            };
            let text = pattern.to_string();
            let taken = keys.iter().find_map(|key| {
                let owner = *owners.get(&(pattern.clone(), key.clone()))?;
                Some((owner, key))
            });
            match taken {
                Some((m, _)) if m == n => {
                    self.err(item.span(), format!("{path}.sni: {text:?} is listed twice"))
                }
                Some((m, key)) => {
                    let with = key
                        .as_ref()
                        .map_or_else(String::new, |id| format!(" with ALPN {id:?}"));
                    let msg = format!(
                        "{path}.sni: {text:?}{with} is already served by route[{m}] \
                         (routes may share a name only with different alpn lists)"
                    );
                    self.err(item.span(), msg);
                }
                None => {
                    for key in &keys {
                        owners.insert((pattern.clone(), key.clone()), n);
                    }
                    patterns.push(pattern);
                }
            }
        }
        patterns
    }

    /// A route's `alpn` list: ids as a client sends them, no repeats.
    fn alpn(&mut self, path: &str, raw: Option<&TextList>) -> Vec<String> {
        let Some(list) = raw else {
            return Vec::new();
        };
        let path = format!("{path}.alpn");
        if list.get_ref().is_empty() {
            let msg = format!("{path}: empty; remove the key for a route whatever the ALPN");
            self.err(list.span(), msg);
        }
        let mut ids: Vec<String> = Vec::new();
        for item in list.get_ref() {
            let id = item.get_ref();
            let printable = id.bytes().all(|b| b.is_ascii_graphic());
            if id.is_empty() || id.len() > MAX_ALPN_ID || !printable {
                let msg = format!(
                    "{path}: invalid ALPN id {id:?} (expected 1 to {MAX_ALPN_ID} printable \
                     characters without spaces, like \"h2\", \"http/1.1\" or \"acme-tls/1\")"
                );
                self.err(item.span(), msg);
            } else if ids.contains(id) {
                self.err(item.span(), format!("{path}: {id:?} is listed twice"));
            } else {
                ids.push(id.clone());
            }
        }
        ids
    }

    fn balance(&mut self, path: &str, raw: Option<&Text>) -> Balance {
        let choices = [
            ("first", Balance::First),
            ("round_robin", Balance::RoundRobin),
            ("least_connections", Balance::LeastConnections),
        ];
        self.word(path, raw, Balance::First, &choices)
    }

    fn health_check(&mut self, path: &str, raw: &raw::RawHealthCheck) -> HealthCheck {
        let count = |c: &mut Self, key: &str, value: Option<&raw::Int>, default: u32| {
            let n = c.int(&format!("{path}.{key}"), value, default.into(), 1..=100, "");
            u32::try_from(n).unwrap_or(default)
        };
        let fall = count(self, "fall", raw.fall.as_ref(), 3);
        let rise = count(self, "rise", raw.rise.as_ref(), 2);
        HealthCheck {
            interval: self.duration(
                &format!("{path}.interval"),
                raw.interval.as_ref(),
                Duration::from_secs(5),
                false,
            ),
            timeout: self.duration(
                &format!("{path}.timeout"),
                raw.timeout.as_ref(),
                Duration::from_secs(1),
                false,
            ),
            fall,
            rise,
        }
    }

    fn proxy_protocol(&mut self, path: &str, raw: Option<&Text>) -> ProxyProtocol {
        let choices = [
            ("none", ProxyProtocol::None),
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
        ];
        self.word(path, raw, ProxyProtocol::None, &choices)
    }

    /// Exactly one of `backend` / `backends` (non-empty), every address valid.
    fn backends(
        &mut self,
        path: &str,
        header: Range<usize>,
        backend: Option<&Text>,
        backends: Option<&TextList>,
    ) -> Option<Vec<SocketAddr>> {
        match (backend, backends) {
            (Some(_), Some(list)) => {
                let msg = format!("{path}: has both \"backend\" and \"backends\"; keep one");
                self.err(list.span(), msg);
                None
            }
            (None, None) => {
                let msg = format!(
                    "{path}: missing \"backend\": where to send the connections, like backend = \"10.0.0.5:443\" \
                     (or backends = [\"10.0.0.6:443\", \"10.0.0.7:443\"])"
                );
                self.err(header, msg);
                None
            }
            (Some(one), None) => self.addr(&format!("{path}.backend"), one).map(|a| vec![a]),
            (None, Some(list)) if list.get_ref().is_empty() => {
                self.err(
                    list.span(),
                    format!("{path}.backends: empty; give at least one address"),
                );
                None
            }
            (None, Some(list)) => {
                let addrs = self.addr_list(&format!("{path}.backends"), list);
                (addrs.len() == list.get_ref().len()).then_some(addrs)
            }
        }
    }

    /// A route's `http_backends`: absent means none; if given, non-empty and
    /// every address valid.
    fn http_backends(&mut self, path: &str, raw: Option<&TextList>) -> Vec<SocketAddr> {
        let Some(list) = raw else {
            return Vec::new();
        };
        let path = format!("{path}.http_backends");
        if list.get_ref().is_empty() {
            let msg = format!(
                "{path}: empty; give at least one address like [\"10.0.0.5:80\"], \
                 or leave the key out (no plain HTTP for this route)"
            );
            self.err(list.span(), msg);
        }
        let addrs = self.addr_list(&path, list);
        if addrs.len() > MAX_BACKENDS {
            let msg = format!(
                "{path}: {} addresses; a route holds at most {MAX_BACKENDS}",
                addrs.len()
            );
            self.err(list.span(), msg);
        }
        addrs
    }

    /// `[http]`: its `listen` addresses, none of them also a TLS listener
    /// or the metrics endpoint.
    fn http(
        &mut self,
        raw: &RawConfig,
        tls_listen: &[SocketAddr],
        metrics: Option<SocketAddr>,
    ) -> HttpConfig {
        let Some(list) = &raw.http.listen else {
            return HttpConfig::default();
        };
        let listen = self.addr_list("http.listen", list);
        for item in list.get_ref() {
            // Port 0 asks the kernel for a free port: no clash.
            let Some(addr) = item
                .get_ref()
                .trim()
                .parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
            else {
                continue;
            };
            let clash = if tls_listen.contains(&addr) {
                "the top-level listen (TLS); a listener serves one protocol"
            } else if metrics == Some(addr) {
                "the metrics endpoint (metrics.listen, default 127.0.0.1:9151)"
            } else {
                continue;
            };
            let msg = format!("http.listen: {addr} is also {clash}; use another port");
            self.err(item.span(), msg);
        }
        HttpConfig { listen }
    }

    fn fallback(&mut self, raw: &raw::RawUnknown) -> Option<Route> {
        #[derive(Clone, Copy, PartialEq)]
        enum Action {
            Reject,
            Forward,
        }
        let choices = [("reject", Action::Reject), ("forward", Action::Forward)];
        let action = self.word(
            "unknown.action",
            raw.action.as_ref(),
            Action::Reject,
            &choices,
        );
        let proxy_protocol =
            self.proxy_protocol("unknown.proxy_protocol", raw.proxy_protocol.as_ref());
        if action == Action::Forward {
            let at = raw.action.as_ref().map_or(0..0, Spanned::span);
            let backends =
                self.backends("unknown", at, raw.backend.as_ref(), raw.backends.as_ref())?;
            return Some(Route {
                proxy_protocol,
                ..Route::new(FALLBACK_NAME.to_string(), Vec::new(), backends)
            });
        }
        let forward_only = [
            ("backend", raw.backend.as_ref().map(Spanned::span)),
            ("backends", raw.backends.as_ref().map(Spanned::span)),
            (
                "proxy_protocol",
                raw.proxy_protocol.as_ref().map(Spanned::span),
            ),
        ];
        // After a misspelt action, "but the action is reject" would mislead.
        let said_reject = raw.action.as_ref().is_none_or(|a| a.get_ref() == "reject");
        for (key, span) in forward_only {
            if let Some(span) = span.filter(|_| said_reject) {
                let msg = format!(
                    "unknown.{key}: only used with action = \"forward\", but the action is \"reject\""
                );
                self.err(span, msg);
            }
        }
        None
    }

    fn ban(&mut self, raw: &raw::RawBan) -> BanConfig {
        let max_retry = self.int(
            "ban.max_retry",
            raw.max_retry.as_ref(),
            1,
            1..=u32::MAX.into(),
            "1 = ban at the first strike",
        );
        let ipv6_prefix = self.int(
            "ban.ipv6_prefix",
            raw.ipv6_prefix.as_ref(),
            64,
            1..=128,
            "64 = one home network",
        );
        let ignore = raw.ignore.as_ref().map_or_else(default_ignore, |list| {
            list.get_ref()
                .iter()
                .filter_map(|item| self.cidr("ban.ignore", item))
                .collect()
        });
        let strike_on = match &raw.strike_on {
            None => vec![
                Outcome::UnknownSni,
                Outcome::NoSni,
                Outcome::NotTls,
                Outcome::UnknownHost,
                Outcome::NoHost,
                Outcome::NotHttp,
            ],
            Some(list) => {
                let mut outcomes = Vec::new();
                for item in list.get_ref() {
                    if let Some(o) = self.strike(item)
                        && !outcomes.contains(&o)
                    {
                        outcomes.push(o);
                    }
                }
                outcomes
            }
        };
        BanConfig {
            enabled: raw.enabled.unwrap_or(true),
            max_retry: u32::try_from(max_retry).unwrap_or(1),
            find_time: self.duration(
                "ban.find_time",
                raw.find_time.as_ref(),
                Duration::from_secs(3600),
                false,
            ),
            ban_time: self.duration(
                "ban.ban_time",
                raw.ban_time.as_ref(),
                Duration::from_secs(365 * 86_400),
                false,
            ),
            ignore,
            strike_on,
            ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(64),
            state_file: path_or_none(raw.state_file.as_deref(), "/var/lib/sniroute/bans.json"),
        }
    }

    fn strike(&mut self, raw: &Text) -> Option<Outcome> {
        let word = raw.get_ref().as_str();
        let words: Vec<String> = Outcome::STRIKABLE
            .iter()
            .map(|o| format!("{:?}", o.as_str()))
            .collect();
        let expected = format!("expected some of {}", or_list(&words));
        let msg = match Outcome::from_word(word) {
            Some(o) if Outcome::STRIKABLE.contains(&o) => return Some(o),
            Some(_) => format!("ban.strike_on: {word:?} is not a reason to strike ({expected})"),
            None => match Outcome::STRIKABLE
                .iter()
                .find(|o| keys::edit_distance(word, o.as_str()) <= 2)
            {
                Some(near) => format!(
                    "ban.strike_on: unknown outcome {word:?} (did you mean {:?}?)",
                    near.as_str()
                ),
                None => format!("ban.strike_on: unknown outcome {word:?} ({expected})"),
            },
        };
        self.err(raw.span(), msg);
        None
    }

    fn rate_limit(&mut self, raw: &raw::RawRateLimit) -> RateLimitConfig {
        let per_ip = self.int(
            "rate_limit.per_ip",
            raw.per_ip.as_ref(),
            20,
            0..=u32::MAX.into(),
            "0 = no rate limit",
        );
        let burst = self.int(
            "rate_limit.burst",
            raw.burst.as_ref(),
            40,
            0..=u32::MAX.into(),
            "",
        );
        if per_ip > 0 && burst == 0 {
            let span = raw.burst.as_ref().map_or(0..0, Spanned::span);
            let msg = "rate_limit.burst: must be at least 1 when per_ip > 0 (a bucket of 0 refuses every connection; \
                       to turn rate limiting off, set per_ip = 0)";
            self.err(span, msg);
        }
        RateLimitConfig {
            per_ip: u32::try_from(per_ip).unwrap_or(20),
            burst: u32::try_from(burst).unwrap_or(40),
        }
    }

    fn metrics(&mut self, raw: &RawConfig, listen: &[SocketAddr]) -> MetricsConfig {
        let Some(text) = &raw.metrics.listen else {
            let default = SocketAddr::from(([127, 0, 0, 1], 9151));
            if listen.contains(&default) {
                let at = raw.top.listen.as_ref().map_or(0..0, Spanned::span);
                let msg = format!(
                    "listen: {default} is also the default metrics endpoint; use another port, \
                     or set listen in [metrics]"
                );
                self.err(at, msg);
            }
            return MetricsConfig {
                listen: Some(default),
            };
        };
        if text.get_ref().is_empty() {
            return MetricsConfig { listen: None };
        }
        let addr = self.addr("metrics.listen", text);
        if let Some(addr) = addr.filter(|a| listen.contains(a)) {
            self.err(
                text.span(),
                format!("metrics.listen: {addr} is also in listen; use another port"),
            );
        }
        MetricsConfig { listen: addr }
    }

    /// `[proxy_protocol]`: every `accept_from` entry a CIDR, none twice.
    fn proxy_protocol_section(&mut self, raw: &raw::RawProxyProtocol) -> ProxyProtocolConfig {
        let path = "proxy_protocol.accept_from";
        let mut accept_from = Vec::new();
        for item in raw.accept_from.as_ref().map_or(&[][..], |l| l.get_ref()) {
            let Some(net) = self.cidr(path, item) else {
                continue;
            };
            if accept_from.contains(&net) {
                self.err(item.span(), format!("{path}: {net} is listed twice"));
            } else {
                accept_from.push(net);
            }
        }
        ProxyProtocolConfig {
            accept_from: CidrSet::new(&accept_from),
        }
    }

    fn log(&mut self, raw: &raw::RawLog) -> LogConfig {
        let access = match raw.access.as_ref().map(|t| (t, t.get_ref().as_str())) {
            None | Some((_, "stdout")) => AccessLog::Stdout,
            Some((_, "off")) => AccessLog::Off,
            Some((t, "")) => {
                self.err(
                    t.span(),
                    "log.access: empty (expected \"stdout\", \"off\", or a file path)",
                );
                AccessLog::Stdout
            }
            Some((_, path)) => AccessLog::File(PathBuf::from(path)),
        };
        let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
        LogConfig {
            access,
            format: self.word("log.format", raw.format.as_ref(), LogFormat::Text, &formats),
        }
    }

    fn firewall(&mut self, raw: &raw::RawFirewall) -> FirewallConfig {
        let backends = [
            ("none", FirewallBackend::None),
            ("nftables", FirewallBackend::Nftables),
        ];
        let scopes = [
            ("listen", FirewallScope::Listen),
            ("all", FirewallScope::All),
        ];
        let table = match &raw.table {
            None => "sniroute".to_string(),
            Some(text) => {
                let name = text.get_ref();
                let mut chars = name.chars();
                let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && name.len() <= MAX_TABLE_NAME;
                if !well_formed {
                    let msg = format!(
                        "firewall.table: invalid table name {name:?} (expected a letter, then letters, \
                         digits or '_', at most {MAX_TABLE_NAME} characters, like \"sniroute\")"
                    );
                    self.err(text.span(), msg);
                }
                name.clone()
            }
        };
        FirewallConfig {
            backend: self.word(
                "firewall.backend",
                raw.backend.as_ref(),
                FirewallBackend::None,
                &backends,
            ),
            table,
            scope: self.word(
                "firewall.scope",
                raw.scope.as_ref(),
                FirewallScope::Listen,
                &scopes,
            ),
        }
    }
}
