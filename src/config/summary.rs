//! The short human summary `sniroute check` prints for a valid config, like
//! `nginx -t`: listeners, routes, what unknown names get, ban and rate policy.

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    AccessLog, Balance, Config, FirewallBackend, FirewallScope, LogFormat, ProxyProtocol, Route,
};

impl Config {
    /// A short human summary for `sniroute check`: listeners, routes, ban policy.
    /// One fact per line, no trailing newline.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        let splice = if self.splice {
            "relay by splice"
        } else {
            "relay by plain copy"
        };
        let defer = if self.defer_accept {
            ", deferred accept"
        } else {
            ""
        };
        lines.push(format!(
            "listen: {} ({} workers, {splice}{defer})",
            listen.join(", "),
            self.workers
        ));
        if let Some(line) = self.http_line() {
            lines.push(line);
        }
        let l = &self.limits;
        lines.push(format!(
            "limits: hello within {} and {} bytes, connect {}, idle {}, {} connections, grace {}",
            human(l.client_hello_timeout),
            l.max_client_hello,
            human(l.connect_timeout),
            human(l.idle_timeout),
            l.max_connections,
            human(l.shutdown_grace),
        ));
        let minor = self.tls.min_version.saturating_sub(0x0301);
        lines.push(format!("tls: min_version 1.{minor}"));
        let plural = if self.routes.len() == 1 { "" } else { "s" };
        lines.push(format!("{} route{plural}:", self.routes.len()));
        for route in &self.routes {
            lines.push(format!("  {}", route_line(route)));
        }
        lines.push(match &self.fallback {
            None => "unknown or missing SNI: reject (close without a byte)".to_string(),
            Some(route) => format!("unknown or missing SNI: forward, {}", route_line(route)),
        });
        lines.push(self.ban_line());
        lines.push(self.ignore_line());
        let r = &self.rate_limit;
        lines.push(match r.per_ip {
            0 => "rate limit: off".to_string(),
            n => format!(
                "rate limit: {n} new connections/s per address, burst {}",
                r.burst
            ),
        });
        lines.push(self.proxy_line());
        lines.push(match &self.metrics.listen {
            Some(addr) => format!("metrics: http://{addr}/metrics"),
            None => "metrics: off".to_string(),
        });
        lines.push(match &self.admin.socket {
            Some(path) => format!("admin socket: {}", path.display()),
            None => "admin socket: off".to_string(),
        });
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        lines.push(match &self.log.access {
            AccessLog::Stdout => format!("access log: stdout ({format})"),
            AccessLog::Off => "access log: off".to_string(),
            AccessLog::File(path) => format!("access log: {} ({format})", path.display()),
        });
        lines.push(self.firewall_line());
        lines.push(self.crowdsec_line());
        lines.join("\n")
    }

    /// `http listen: ...` when there are plain-HTTP listeners, or routes
    /// with `http_backends` and none to use them.
    fn http_line(&self) -> Option<String> {
        let http_routes = self
            .routes
            .iter()
            .filter(|r| !r.http_backends.is_empty())
            .count();
        let listen: Vec<String> = self.http.listen.iter().map(ToString::to_string).collect();
        match (listen.is_empty(), http_routes) {
            (true, 0) => None,
            (true, n) => Some(format!(
                "http listen: none ([http] listen is empty, so the http_backends of {n} route{} are unused)",
                if n == 1 { "" } else { "s" }
            )),
            (false, 0) => Some(format!(
                "http listen: {} (plain HTTP by Host; no route has http_backends: every request is unknown_host)",
                listen.join(", ")
            )),
            (false, n) => Some(format!(
                "http listen: {} (plain HTTP by Host, {n} route{} with http_backends)",
                listen.join(", "),
                if n == 1 { "" } else { "s" }
            )),
        }
    }

    /// What the kernel bans do, and what they will need at start.
    fn firewall_line(&self) -> String {
        let f = &self.firewall;
        if f.backend == FirewallBackend::None {
            return "firewall: none (bans enforced in user space, right after accept)".to_string();
        }
        let scope = match f.scope {
            FirewallScope::Listen => "packets to the listen ports",
            FirewallScope::All => "all packets",
        };
        let nft = match crate::firewall::nft::locate() {
            Some(path) => format!("nft ({})", path.display()),
            None => "nft (NOT FOUND: install the Debian package nftables)".to_string(),
        };
        format!(
            "firewall: nftables table inet {}, banned sources' {scope} dropped by the kernel; \
             needs {nft} and CAP_NET_ADMIN (root, or config/sniroute.service.d/nftables.conf)",
            f.table
        )
    }

    /// `trusted balancers: 10.0.0.0/8 (PROXY v1/v2 header required; ...)`.
    fn proxy_line(&self) -> String {
        let from = self.proxy_protocol.accept_from.nets();
        if from.is_empty() {
            return "trusted balancers: none (a PROXY header from anyone is not_tls)".to_string();
        }
        let nets: Vec<String> = from.iter().map(ToString::to_string).collect();
        format!(
            "trusted balancers: {} (PROXY v1/v2 header required; the client it names is struck, banned and logged)",
            nets.join(", ")
        )
    }

    fn crowdsec_line(&self) -> String {
        let Some(c) = &self.crowdsec else {
            return "crowdsec: off".to_string();
        };
        let push = match &c.push {
            Some(p) if p.password.is_none() => format!(
                "push bans as the client certificate's machine (scenario {})",
                p.scenario
            ),
            Some(p) => format!(
                "push bans as machine {} (scenario {})",
                p.machine_id.as_deref().unwrap_or(""),
                p.scenario
            ),
            None => "no push".to_string(),
        };
        let mut tls = String::new();
        if let Some(ca) = &c.ca_cert_file {
            let n = c.ca_certs.len();
            let s = if n == 1 { "" } else { "s" };
            tls.push_str(&format!(
                "; trusts {n} CA certificate{s} from {} besides the system's",
                ca.display()
            ));
        }
        if let Some(cert) = &c.client_cert {
            tls.push_str(&format!(
                "; authenticates with the client certificate {}",
                cert.cert_file.display()
            ));
        }
        format!(
            "crowdsec: pull decisions from {} every {}; {push}{tls}",
            c.lapi_url,
            human(c.update_frequency)
        )
    }

    fn ban_line(&self) -> String {
        let b = &self.ban;
        if !b.enabled {
            return "ban: off".to_string();
        }
        let strikes: Vec<&str> = b.strike_on.iter().map(|o| o.as_str()).collect();
        let state = match &b.state_file {
            Some(path) => path.display().to_string(),
            None => "memory only".to_string(),
        };
        format!(
            "ban: {} strike{} within {} -> banned for {}; strike on {}; IPv6 per /{}; state {state}",
            b.max_retry,
            if b.max_retry == 1 { "" } else { "s" },
            human(b.find_time),
            human(b.ban_time),
            if strikes.is_empty() {
                "nothing (manual bans only)".to_string()
            } else {
                strikes.join(", ")
            },
            b.ipv6_prefix,
        )
    }

    /// The effective `ban.ignore` list (the default one when the key is
    /// absent), in full: whoever reads it learns who can never be banned.
    fn ignore_line(&self) -> String {
        let nets: Vec<String> = self.ban.ignore.iter().map(ToString::to_string).collect();
        match nets.is_empty() {
            true => "ban.ignore: none (every source can be struck, banned and rate-limited)".into(),
            false => format!(
                "ban.ignore: {} (never struck, banned or rate-limited)",
                nets.join(", ")
            ),
        }
    }
}

/// `myapp.example.org (+1 name) -> 10.0.0.5:443; plain HTTP -> 10.0.0.5:80 (proxy_protocol v2)`.
fn route_line(route: &Route) -> String {
    let mut line = match route.sni.first() {
        Some(first) => first.to_string(),
        None => route.name.clone(),
    };
    match route.sni.len() {
        0 | 1 => {}
        2 => line.push_str(" (+1 name)"),
        n => {
            let _ = write!(line, " (+{} names)", n - 1);
        }
    }
    let backends: Vec<String> = route.backends.iter().map(ToString::to_string).collect();
    let _ = write!(line, " -> {}", backends.join(", "));
    if !route.http_backends.is_empty() {
        let http: Vec<String> = route
            .http_backends
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = write!(line, "; plain HTTP -> {}", http.join(", "));
    }
    match route.proxy_protocol {
        ProxyProtocol::None => {}
        ProxyProtocol::V1 => line.push_str(" (proxy_protocol v1)"),
        ProxyProtocol::V2 => line.push_str(" (proxy_protocol v2)"),
    }
    if !route.alpn.is_empty() {
        let _ = write!(line, "; alpn {}", route.alpn.join(", "));
    }
    if let Some(allow) = &route.allow {
        let n = allow.nets().len();
        let _ = write!(line, "; allow {n} network{}", if n == 1 { "" } else { "s" });
    }
    match route.balance {
        Balance::First => {}
        Balance::RoundRobin => line.push_str("; balance round_robin"),
        Balance::LeastConnections => line.push_str("; balance least_connections"),
    }
    if let Some(hc) = &route.health_check {
        let _ = write!(
            line,
            "; health check every {} (timeout {}, out after {} failures, back after {} successes)",
            human(hc.interval),
            human(hc.timeout),
            hc.fall,
            hc.rise
        );
    }
    line
}

/// A duration in the config's own notation, largest units first: `1h30m`, `365d`, `500ms`.
pub(super) fn human(d: Duration) -> String {
    /// Units from the largest; days are the largest so "365d" stays "365d".
    const UNITS: [(&str, u128); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".to_string()
        } else {
            format!("{}ns", d.as_nanos())
        };
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        if ms >= size {
            let _ = write!(out, "{}{unit}", ms / size);
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
        assert_eq!(human(Duration::from_millis(500)), "500ms");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_nanos(5)), "5ns");
    }
}
