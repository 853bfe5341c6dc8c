//! `sniroute::config` on real files and texts: the example config loads, the
//! defaults are the SPEC's, and every kind of mistake is reported at its
//! `line:col` with a message that says what is expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sniroute::config::{
    self, AccessLog, Config, Diagnostic, FirewallBackend, FirewallScope, HostPattern, LoadError,
    LogFormat, ProxyProtocol,
};
use sniroute::hostname::HostName;
use sniroute::outcome::Outcome;

/// The smallest valid config.
const MINIMAL: &str = "listen = [\"0.0.0.0:443\"]\n[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n";

fn parse(text: &str) -> Config {
    match config::parse_str(text) {
        Ok(c) => c,
        Err(d) => panic!("expected a valid config, got {d:#?}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match config::parse_str(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d,
    }
}

/// The only error of `text`, as `(line, col, message)`.
fn only_error(text: &str) -> (usize, usize, String) {
    let d = errors(text);
    assert_eq!(d.len(), 1, "expected one error, got {d:#?}");
    (d[0].line, d[0].col, d[0].message.clone())
}

/// MINIMAL followed by `extra` (which starts on line 5).
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

/// Top-level keys `extra` (starting on line 1) followed by MINIMAL.
fn top(extra: &str) -> String {
    format!("{extra}{MINIMAL}")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn host(s: &str) -> HostName {
    HostName::parse(s.as_bytes()).unwrap_or_else(|| panic!("{s:?} is not a host name"))
}

#[test]
fn the_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sniroute.toml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, [addr("127.0.0.1:8443"), addr("[::1]:8443")]);
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].name, "localhost");
    assert_eq!(
        c.routes[0].sni,
        [
            HostPattern::Exact(host("localhost")),
            HostPattern::Wildcard(host("localhost"))
        ]
    );
    assert_eq!(c.routes[0].backends, [addr("127.0.0.1:9443")]);
    assert!(c.ban.enabled);
    let ignore: Vec<String> = c.ban.ignore.iter().map(ToString::to_string).collect();
    assert_eq!(ignore, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(c.ban.state_file, Some(PathBuf::from("sniroute-bans.json")));
    assert_eq!(
        c.admin.socket,
        Some(PathBuf::from("/tmp/sniroute-admin.sock"))
    );
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9151")));
    let summary = c.summary();
    assert!(
        summary.contains("localhost (+1 name) -> 127.0.0.1:9443"),
        "{summary}"
    );
}

#[test]
fn the_example_config_states_every_default() {
    // Apart from the loopback choices, the example shows the defaults: the
    // same file without its key lines must give the same values.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sniroute.toml");
    let example = config::load(&path).unwrap();
    let minimal = parse(MINIMAL);
    assert_eq!(
        format!("{:?}", example.limits),
        format!("{:?}", minimal.limits)
    );
    assert_eq!(example.tls, minimal.tls);
    assert_eq!(example.splice, minimal.splice);
    assert_eq!(example.defer_accept, minimal.defer_accept);
    assert_eq!(example.workers, minimal.workers);
    assert_eq!(example.ban.strike_on, minimal.ban.strike_on);
    assert_eq!(example.ban.ignore, minimal.ban.ignore);
    assert_eq!(
        (
            example.ban.max_retry,
            example.ban.find_time,
            example.ban.ban_time,
            example.ban.ipv6_prefix
        ),
        (
            minimal.ban.max_retry,
            minimal.ban.find_time,
            minimal.ban.ban_time,
            minimal.ban.ipv6_prefix
        )
    );
    assert_eq!(
        format!("{:?}", example.rate_limit),
        format!("{:?}", minimal.rate_limit)
    );
    assert_eq!(format!("{:?}", example.log), format!("{:?}", minimal.log));
    assert_eq!(example.firewall, minimal.firewall);
}

#[test]
fn the_spec_example_parses() {
    let spec = r#"
listen = ["0.0.0.0:443", "[::]:443"]       # one or more
workers = 0                                 # threads serving connections; 0 = one per CPU core

[limits]
client_hello_timeout = "5s"    # the whole ClientHello must arrive within this
max_client_hello = 16384       # bytes; larger is refused (outcome too_large)
connect_timeout = "3s"         # to the backend
idle_timeout = "15m"           # no bytes either way for this long: close
max_connections = 20000        # open client connections; beyond: refuse new ones
shutdown_grace = "30s"

[tls]
min_version = "1.2"            # a ClientHello offering nothing at or above this is refused (outcome policy)

[[route]]
sni = ["myapp.example.org"]    # exact names, or "*.example.org" (one or more labels); case-insensitive, trailing dot ignored
backend = "10.0.0.5:443"       # or: backends = ["a:443", "b:443"], tried in turn when one refuses
proxy_protocol = "v2"          # "none" (default), "v1" or "v2": tell the backend the client's real address

[[route]]
sni = ["*.apps.example.org"]
backends = ["10.0.0.6:443", "10.0.0.7:443"]

[unknown]                      # what a valid ClientHello gets when no route matches its SNI, or it has no SNI
action = "reject"              # "reject": close without sending a byte (nginx's 444), and strike
# action = "forward"           # alternative: forward to `backend` instead (no strike):
# backend = "10.0.0.9:443"     #   a catch-all service. A hello that fails to
                               # parse, is too large, too slow or below min_version is always rejected.

[ban]
enabled = true
max_retry = 1                  # strikes within find_time that earn a ban
find_time = "1h"
ban_time = "365d"
ignore = ["127.0.0.1", "192.0.2.10", "2001:db8::/48"]   # never struck, never banned, never rate-limited
strike_on = ["unknown_sni", "no_sni", "not_tls", "unknown_host", "no_host", "not_http"]   # also possible: "timeout", "policy", "too_large"
ipv6_prefix = 64               # IPv6 clients are struck and banned per /64 (one host owns a whole /64)
state_file = "/var/lib/sniroute/bans.json"   # bans survive restarts and crashes; "" = keep in memory only

[rate_limit]
per_ip = 20                    # new connections per second per address (per ipv6_prefix for IPv6)
burst = 40                     # beyond this the connection is closed at once (outcome rate_limited)

[metrics]
listen = "127.0.0.1:9151"      # Prometheus scrape endpoint: GET /metrics

[admin]
socket = "/run/sniroute/admin.sock"   # for `sniroute status` and `sniroute bans`; mode 0600

[log]
access = "stdout"              # "stdout", "off", or a file path
format = "text"                # "text" or "json"
"#;
    let c = parse(spec);
    assert_eq!(c.listen, [addr("0.0.0.0:443"), addr("[::]:443")]);
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["myapp.example.org", "*.apps.example.org"]);
    assert_eq!(c.routes[0].proxy_protocol, ProxyProtocol::V2);
    assert_eq!(
        c.routes[1].sni,
        [HostPattern::Wildcard(host("apps.example.org"))]
    );
    assert_eq!(
        c.routes[1].backends,
        [addr("10.0.0.6:443"), addr("10.0.0.7:443")]
    );
    let ignore: Vec<String> = c.ban.ignore.iter().map(ToString::to_string).collect();
    assert_eq!(ignore, ["127.0.0.1/32", "192.0.2.10/32", "2001:db8::/48"]);
    assert!(c.fallback.is_none());
    let summary = c.summary();
    for needle in [
        "listen: 0.0.0.0:443, [::]:443",
        "2 routes:",
        "  myapp.example.org -> 10.0.0.5:443 (proxy_protocol v2)",
        "  *.apps.example.org -> 10.0.0.6:443, 10.0.0.7:443",
        "unknown or missing SNI: reject",
        "ban: 1 strike within 1h -> banned for 365d",
        "ban.ignore: 127.0.0.1/32, 192.0.2.10/32, 2001:db8::/48 (never struck",
        "rate limit: 20 new connections/s per address, burst 40",
        "metrics: http://127.0.0.1:9151/metrics",
        "admin socket: /run/sniroute/admin.sock",
        "access log: stdout (text)",
    ] {
        assert!(summary.contains(needle), "{needle:?} not in:\n{summary}");
    }
}

#[test]
fn a_minimal_config_gets_the_spec_defaults() {
    let c = parse(MINIMAL);
    assert!(c.workers >= 1, "workers = 0 becomes the core count");
    assert!(c.splice);
    assert!(c.defer_accept);
    assert_eq!(c.limits.client_hello_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_client_hello, 16384);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(15 * 60));
    assert_eq!(c.limits.max_connections, 20000);
    assert_eq!(c.limits.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.tls.min_version, 0x0303);
    assert_eq!(c.routes[0].name, "a.example.org");
    assert_eq!(c.routes[0].proxy_protocol, ProxyProtocol::None);
    assert!(c.fallback.is_none());
    assert!(c.ban.enabled);
    assert_eq!(c.ban.max_retry, 1);
    assert_eq!(c.ban.find_time, Duration::from_secs(3600));
    assert_eq!(c.ban.ban_time, Duration::from_secs(365 * 86400));
    let ignore: Vec<String> = c.ban.ignore.iter().map(ToString::to_string).collect();
    assert_eq!(
        ignore,
        ["127.0.0.0/8", "::1/128"],
        "loopback is ignored by default"
    );
    assert!(
        c.summary().contains("ban.ignore: 127.0.0.0/8, ::1/128 "),
        "check prints the effective list:\n{}",
        c.summary()
    );
    assert_eq!(
        c.ban.strike_on,
        [
            Outcome::UnknownSni,
            Outcome::NoSni,
            Outcome::NotTls,
            Outcome::UnknownHost,
            Outcome::NoHost,
            Outcome::NotHttp
        ]
    );
    assert!(c.http.listen.is_empty());
    assert!(c.routes[0].http_backends.is_empty());
    assert_eq!(c.ban.ipv6_prefix, 64);
    assert_eq!(
        c.ban.state_file,
        Some(PathBuf::from("/var/lib/sniroute/bans.json"))
    );
    assert_eq!((c.rate_limit.per_ip, c.rate_limit.burst), (20, 40));
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9151")));
    assert_eq!(
        c.admin.socket,
        Some(PathBuf::from("/run/sniroute/admin.sock"))
    );
    assert_eq!(c.log.access, AccessLog::Stdout);
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn empty_strings_turn_features_off() {
    let c = parse(&with(
        "[ban]\nstate_file = \"\"\n[metrics]\nlisten = \"\"\n[admin]\nsocket = \"\"\n[log]\naccess = \"off\"\nformat = \"json\"\n",
    ));
    assert_eq!(c.ban.state_file, None);
    assert_eq!(c.metrics.listen, None);
    assert_eq!(c.admin.socket, None);
    assert_eq!(c.log.access, AccessLog::Off);
    assert_eq!(c.log.format, LogFormat::Json);
    let summary = c.summary();
    assert!(
        summary.contains("metrics: off") && summary.contains("admin socket: off"),
        "{summary}"
    );
    let c = parse(&with("[log]\naccess = \"/var/log/sniroute/access.log\"\n"));
    assert_eq!(
        c.log.access,
        AccessLog::File("/var/log/sniroute/access.log".into())
    );
}

#[test]
fn values_are_canonicalised() {
    let c = parse(&top("workers = 3\nsplice = false\ndefer_accept = true\n"));
    assert_eq!((c.workers, c.splice, c.defer_accept), (3, false, true));
    assert!(
        c.summary()
            .contains("(3 workers, relay by plain copy, deferred accept)"),
        "{}",
        c.summary()
    );
    let c = parse(&with(
        "\n[[route]]\nsni = [\"B.Example.ORG.\", \"*.Apps.Example.org\"]\nbackends = [\"[2001:db8::7]:8443\"]\nproxy_protocol = \"v1\"\n\n[ban]\nignore = [\"10.1.2.3/8\", \"::1\"]\nstrike_on = [\"timeout\", \"timeout\", \"too_large\"]\nfind_time = \"1h30m\"\n",
    ));
    let r = &c.routes[1];
    assert_eq!(r.name, "b.example.org");
    assert_eq!(
        r.sni,
        [
            HostPattern::Exact(host("b.example.org")),
            HostPattern::Wildcard(host("apps.example.org"))
        ]
    );
    assert_eq!(r.backends, [addr("[2001:db8::7]:8443")]);
    assert_eq!(r.proxy_protocol, ProxyProtocol::V1);
    let ignore: Vec<String> = c.ban.ignore.iter().map(ToString::to_string).collect();
    assert_eq!(ignore, ["10.0.0.0/8", "::1/128"]);
    assert_eq!(c.ban.strike_on, [Outcome::Timeout, Outcome::TooLarge]);
    assert_eq!(c.ban.find_time, Duration::from_secs(5400));
}

#[test]
fn unknown_forward_becomes_the_fallback_route() {
    let c = parse(&with(
        "[unknown]\naction = \"forward\"\nbackend = \"10.0.0.9:443\"\nproxy_protocol = \"v2\"\n",
    ));
    let f = c.fallback.as_ref().unwrap();
    assert_eq!(f.name, "unknown");
    assert!(f.sni.is_empty());
    assert_eq!(f.backends, [addr("10.0.0.9:443")]);
    assert_eq!(f.proxy_protocol, ProxyProtocol::V2);
    assert!(
        c.summary().contains(
            "unknown or missing SNI: forward, unknown -> 10.0.0.9:443 (proxy_protocol v2)"
        )
    );
}

#[test]
fn required_keys() {
    let (line, col, msg) =
        only_error("[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n");
    assert_eq!((line, col), (1, 1));
    assert!(msg.starts_with("missing required key \"listen\""), "{msg}");
    let (line, col, msg) = only_error("listen = [\"0.0.0.0:443\"]\n");
    assert_eq!((line, col), (1, 1));
    assert!(msg.starts_with("no [[route]] defined"), "{msg}");
    let (line, col, msg) = only_error(
        "listen = []\n[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!((line, col), (1, 10));
    assert!(msg.starts_with("listen: empty"), "{msg}");
}

#[test]
fn bad_address_points_at_the_value() {
    let text = with("[[route]]\nsni = [\"b.example.org\"]\nbackend = \"10.0.0.5\"\n");
    let (line, col, msg) = only_error(&text);
    assert_eq!((line, col), (7, 11));
    assert_eq!(
        msg,
        "route[2].backend: invalid address \"10.0.0.5\" (missing :PORT; expected IP:PORT, IPv6 in brackets, like \"10.0.0.5:443\" or \"[::1]:443\")"
    );
    let (_, _, msg) = only_error(&with("[metrics]\nlisten = \"localhost:9151\"\n"));
    assert!(msg.contains("host names are not resolved"), "{msg}");
    let (line, col, msg) = only_error(
        "listen = [\"0.0.0.0:443\", \"::1:443\"]\n[[route]]\nsni = [\"a\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!((line, col), (1, 26));
    assert!(
        msg.starts_with("listen: invalid address \"::1:443\""),
        "{msg}"
    );
}

#[test]
fn unknown_keys_everywhere_are_all_reported_with_suggestions() {
    let text = "listen = [\"0.0.0.0:443\"]\nlisten_on = 1\n[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\nbakend = \"x\"\n[ban]\nmaxretry = 3\nbantime = \"1d\"\n";
    let d = errors(text);
    let got: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                2,
                1,
                "unknown key \"listen_on\" at top level; expected one of: listen, workers, splice, defer_accept, limits, tls, http, route, unknown, ban, rate_limit, metrics, admin, log, firewall, proxy_protocol, crowdsec"
            ),
            (
                6,
                1,
                "unknown key \"bakend\" in [[route]] #1 (did you mean \"backend\"?)"
            ),
            (
                8,
                1,
                "unknown key \"maxretry\" in [ban] (did you mean \"max_retry\"?)"
            ),
            (
                9,
                1,
                "unknown key \"bantime\" in [ban] (did you mean \"ban_time\"?)"
            ),
        ]
    );
    let (_, _, msg) = only_error(&top("per_ip = 5\n"));
    assert_eq!(
        msg,
        "unknown key \"per_ip\" at top level (\"per_ip\" belongs in [rate_limit])"
    );
    // The classic: a top-level key written after a table lands in that table.
    let (line, col, msg) = only_error(&with("workers = 2\n"));
    assert_eq!((line, col), (5, 1));
    assert!(
        msg.starts_with(
            "unknown key \"workers\" in [[route]] #1 (\"workers\" is a top-level key: move it above"
        ),
        "{msg}"
    );
    let (line, col, msg) = only_error(&with("[bans]\nenabled = false\n"));
    assert_eq!((line, col), (5, 2));
    assert!(msg.contains("(did you mean \"ban\"?)"), "{msg}");
}

#[test]
fn route_written_with_single_brackets() {
    let (line, col, msg) = only_error(
        "listen = [\"0.0.0.0:443\"]\n[route]\nsni = [\"a\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!((line, col), (2, 1));
    assert!(
        msg.contains("expected [[route]] tables (double brackets"),
        "{msg}"
    );
}

#[test]
fn type_errors_say_what_is_expected() {
    let (line, col, msg) = only_error(&with("[limits]\nconnect_timeout = 5\n"));
    assert_eq!((line, col), (6, 19));
    assert_eq!(
        msg,
        "limits.connect_timeout: expected a quoted duration like \"500ms\", \"5s\", \"10m\", \"1h\", \"365d\", found integer `5`"
    );
    let (_, _, msg) = only_error(&with("[tls]\nmin_version = 1.3\n"));
    assert!(
        msg.starts_with("tls.min_version: expected a quoted version"),
        "{msg}"
    );
    let (_, _, msg) = only_error(&with("[ban]\nenabled = \"yes\"\n"));
    assert_eq!(
        msg,
        "ban.enabled: expected true or false, found string \"yes\""
    );
    // A type error in one section does not hide one in another, nor a bad value.
    let d = errors(&with(
        "[limits]\nmax_connections = \"many\"\n[rate_limit]\nburst = true\n[log]\nformat = \"xml\"\n",
    ));
    let at: Vec<(usize, usize)> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(at, [(6, 19), (8, 9), (10, 10)], "{d:#?}");
}

#[test]
fn syntax_errors_point_at_the_problem() {
    let (line, col, msg) = only_error("listen = [\"0.0.0.0:443\"]\nworkers = four\n");
    assert_eq!((line, col), (2, 11));
    assert!(msg.starts_with("invalid TOML: "), "{msg}");
    let (line, col, msg) =
        only_error("listen = [\"0.0.0.0:443\"]\n[ban]\nmax_retry = 1\nmax_retry = 2\n");
    assert_eq!((line, col), (4, 1));
    assert!(msg.starts_with("duplicate key \"max_retry\""), "{msg}");
}

#[test]
fn durations() {
    let (line, col, msg) = only_error(&with("[limits]\nclient_hello_timeout = \"0s\"\n"));
    assert_eq!((line, col), (6, 24));
    assert_eq!(
        msg,
        "limits.client_hello_timeout: must be longer than zero (got \"0s\")"
    );
    let (_, _, msg) = only_error(&with("[ban]\nfind_time = \"5\"\n"));
    assert!(
        msg.starts_with("ban.find_time: invalid duration \"5\""),
        "{msg}"
    );
    assert!(msg.contains("\"365d\""), "{msg}");
    let (_, _, msg) = only_error(&with("[ban]\nban_time = \"1000y\"\n"));
    assert!(
        msg.contains("longer than the maximum of 100 years"),
        "{msg}"
    );
    let c = parse(&with(
        "[limits]\nshutdown_grace = \"0s\"\nidle_timeout = \"500ms\"\n[ban]\nban_time = \"100y\"\n",
    ));
    assert_eq!(c.limits.shutdown_grace, Duration::ZERO);
    assert_eq!(c.limits.idle_timeout, Duration::from_millis(500));
}

#[test]
fn numbers_out_of_range() {
    let cases = [
        (
            "[limits]\nmax_client_hello = 100\n",
            "limits.max_client_hello: 100 is out of range (expected from 512 to 65536;",
        ),
        (
            "[limits]\nmax_client_hello = 65537\n",
            "limits.max_client_hello: 65537 is out of range",
        ),
        (
            "[limits]\nmax_connections = 0\n",
            "limits.max_connections: 0 is out of range (expected at least 1)",
        ),
        (
            "[ban]\nmax_retry = 0\n",
            "ban.max_retry: 0 is out of range (expected at least 1; 1 = ban at the first strike)",
        ),
        (
            "[ban]\nipv6_prefix = 129\n",
            "ban.ipv6_prefix: 129 is out of range (expected from 1 to 128",
        ),
        (
            "[rate_limit]\nburst = 0\n",
            "rate_limit.burst: must be at least 1 when per_ip > 0",
        ),
    ];
    for (extra, want) in cases {
        let (_, _, msg) = only_error(&with(extra));
        assert!(msg.starts_with(want), "{extra:?}: {msg}");
    }
    let (line, col, msg) = only_error(&top("workers = -1\n"));
    assert_eq!((line, col), (1, 11));
    assert_eq!(
        msg,
        "workers: -1 is out of range (expected from 0 to 1024; 0 = one per CPU core)"
    );
    let c = parse(&with("[rate_limit]\nper_ip = 0\nburst = 0\n"));
    assert_eq!(c.rate_limit.per_ip, 0);
    assert!(c.summary().contains("rate limit: off"));
    let c = parse(&with(
        "[limits]\nmax_client_hello = 512\n[ban]\nipv6_prefix = 128\n",
    ));
    assert_eq!((c.limits.max_client_hello, c.ban.ipv6_prefix), (512, 128));
}

#[test]
fn words() {
    let cases = [
        (
            "[tls]\nmin_version = \"1.4\"\n",
            "tls.min_version: unknown value \"1.4\" (expected \"1.0\", \"1.1\", \"1.2\" or \"1.3\")",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            "log.format: unknown value \"xml\" (expected \"text\" or \"json\")",
        ),
        (
            "[log]\naccess = \"\"\n",
            "log.access: empty (expected \"stdout\", \"off\", or a file path)",
        ),
        (
            "[unknown]\naction = \"drop\"\n",
            "unknown.action: unknown value \"drop\" (expected \"reject\" or \"forward\")",
        ),
        (
            "[ban]\nstrike_on = [\"unknwon_sni\"]\n",
            "ban.strike_on: unknown outcome \"unknwon_sni\" (did you mean \"unknown_sni\"?)",
        ),
    ];
    for (extra, want) in cases {
        let (_, _, msg) = only_error(&with(extra));
        assert_eq!(msg, want);
    }
    let (line, col, msg) = only_error(&with("[ban]\nstrike_on = [\"no_sni\", \"banned\"]\n"));
    assert_eq!((line, col), (6, 24));
    assert!(
        msg.starts_with("ban.strike_on: \"banned\" is not a reason to strike (expected some of"),
        "{msg}"
    );
    let (_, _, msg) = only_error(&with(
        "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nproxy_protocol = \"v3\"\n",
    ));
    assert_eq!(
        msg,
        "route[2].proxy_protocol: unknown value \"v3\" (expected \"none\", \"v1\" or \"v2\")"
    );
}

#[test]
fn bad_routes() {
    let cases = [
        (
            "[[route]]\nbackend = \"10.0.0.6:443\"\n",
            (5, 1),
            "route[2]: missing \"sni\"",
        ),
        (
            "[[route]]\nsni = []\nbackend = \"10.0.0.6:443\"\n",
            (6, 7),
            "route[2].sni: empty",
        ),
        (
            "[[route]]\nsni = [\"b\"]\n",
            (5, 1),
            "route[2]: missing \"backend\"",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nbackends = [\"10.0.0.7:443\"]\n",
            (8, 12),
            "route[2]: has both \"backend\" and \"backends\"",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackends = []\n",
            (7, 12),
            "route[2].backends: empty",
        ),
        (
            "[[route]]\nsni = [\"a.*.b\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: invalid name \"a.*.b\" (a wildcard is only",
        ),
        (
            "[[route]]\nsni = [\"*\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: invalid name \"*\"",
        ),
        (
            "[[route]]\nsni = [\"*foo.b\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: invalid name \"*foo.b\"",
        ),
        (
            "[[route]]\nsni = [\"b c\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: invalid name \"b c\" (expected a host name",
        ),
        (
            "[[route]]\nsni = [\"10.0.0.1\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: invalid name \"10.0.0.1\" (an IP address",
        ),
        (
            "[[route]]\nsni = [\"A.Example.org.\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 8),
            "route[2].sni: \"a.example.org\" is already served by route[1]",
        ),
        (
            "[[route]]\nsni = [\"*.b\", \"c\", \"*.B\"]\nbackend = \"10.0.0.6:443\"\n",
            (6, 20),
            "route[2].sni: \"*.b\" is listed twice",
        ),
    ];
    for (extra, at, want) in cases {
        let (line, col, msg) = only_error(&with(extra));
        assert!(msg.starts_with(want), "{extra:?}: {msg}");
        assert_eq!((line, col), at, "{extra:?}: {msg}");
    }
}

#[test]
fn unknown_action_needs_consistent_keys() {
    let (line, col, msg) = only_error(&with("[unknown]\naction = \"forward\"\n"));
    assert_eq!((line, col), (6, 10));
    assert!(msg.starts_with("unknown: missing \"backend\""), "{msg}");
    let (line, col, msg) = only_error(&with("[unknown]\nbackend = \"10.0.0.9:443\"\n"));
    assert_eq!((line, col), (6, 11));
    assert_eq!(
        msg,
        "unknown.backend: only used with action = \"forward\", but the action is \"reject\""
    );
    let (_, _, msg) = only_error(&with(
        "[unknown]\naction = \"forward\"\nbackend = \"10.0.0.9:443\"\n[[route]]\nsni = [\"unknown\"]\nbackend = \"10.0.0.6:443\"\n",
    ));
    assert!(msg.contains("the route name \"unknown\" is taken"), "{msg}");
    let (_, _, msg) = only_error(&with(
        "[unknown]\naction = \"Forward\"\nbackend = \"10.0.0.9:443\"\n",
    ));
    assert_eq!(
        msg,
        "unknown.action: unknown value \"Forward\" (expected \"reject\" or \"forward\")"
    );
}

#[test]
fn more_address_checks() {
    let (line, col, msg) = only_error(&with("[ban]\nignore = [\"10.0.0.0/33\"]\n"));
    assert_eq!((line, col), (6, 11));
    assert!(
        msg.starts_with("ban.ignore: invalid address or CIDR \"10.0.0.0/33\""),
        "{msg}"
    );
    let (_, _, msg) = only_error(
        "listen = [\"0.0.0.0:443\", \"0.0.0.0:443\"]\n[[route]]\nsni = [\"a\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!(msg, "listen: 0.0.0.0:443 is listed twice");
    let (line, col, msg) = only_error(
        "listen = [\"127.0.0.1:9151\"]\n[[route]]\nsni = [\"a\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!((line, col), (1, 10));
    assert!(
        msg.starts_with("listen: 127.0.0.1:9151 is also the default metrics endpoint"),
        "{msg}"
    );
    let (_, _, msg) = only_error(&with("[metrics]\nlisten = \"0.0.0.0:443\"\n"));
    assert_eq!(
        msg,
        "metrics.listen: 0.0.0.0:443 is also in listen; use another port"
    );
}

#[test]
fn every_error_is_reported_sorted_by_position() {
    let text = "\
listen = [\"0.0.0.0:443\", \"nope\"]
workers = 5000

[limits]
idle_timeout = \"0s\"
max_client_hello = 10

[[route]]
sni = [\"a.*.example.org\"]
backend = \"10.0.0.5\"

[[route]]
sni = [\"b.example.org\"]

[ban]
max_retry = 0
strike_on = [\"routed\"]
colour = \"red\"

[rate_limit]
burst = 0
";
    let d = errors(text);
    let at: Vec<(usize, usize)> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        at,
        [
            (1, 26),
            (2, 11),
            (5, 16),
            (6, 20),
            (9, 8),
            (10, 11),
            (12, 1),
            (16, 13),
            (17, 14),
            (18, 1),
            (21, 9)
        ],
        "{d:#?}"
    );
}

#[test]
fn load_error_display_is_path_line_col_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = [\"0.0.0.0:443\"]\n[[route]]\nsni = [\"a\"]\nbackend = \"x\"\n[ban]\nmaxretry = 1\n").unwrap();
    let err = config::load(&path).unwrap_err();
    assert!(matches!(err, LoadError::Invalid { ref diagnostics, .. } if diagnostics.len() == 2));
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{p}:4:11: route[1].backend: invalid address \"x\" (expected IP:PORT, IPv6 in brackets, like \"10.0.0.5:443\" or \"[::1]:443\")\n\
             {p}:6:1: unknown key \"maxretry\" in [ban] (did you mean \"max_retry\"?)"
        )
    );
}

#[test]
fn an_unreadable_path_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = config::load(&path).unwrap_err();
    assert!(matches!(err, LoadError::Unreadable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", path.display())),
        "{err}"
    );
    // A directory is unreadable too, not a crash.
    assert!(matches!(
        config::load(dir.path()),
        Err(LoadError::Unreadable { .. })
    ));
}

#[test]
fn garbage_never_panics() {
    for text in [
        "",
        "\u{feff}",
        "é = 1",
        "[[route]]\n[[route]]\n",
        "route = [1, 2]",
        "listen = [[1]]",
        "ban = 3",
        "\0",
    ] {
        let _ = config::parse_str(text);
    }
}

#[test]
fn firewall_defaults_to_none_and_takes_nftables() {
    let c = parse(MINIMAL);
    assert_eq!(c.firewall.backend, FirewallBackend::None);
    assert_eq!(c.firewall.table, "sniroute");
    assert_eq!(c.firewall.scope, FirewallScope::Listen);
    assert!(c.summary().contains("firewall: none"), "{}", c.summary());

    let c = parse(&with(
        "[firewall]\nbackend = \"nftables\"\ntable = \"edge_bans\"\nscope = \"all\"\n",
    ));
    assert_eq!(c.firewall.backend, FirewallBackend::Nftables);
    assert_eq!(c.firewall.table, "edge_bans");
    assert_eq!(c.firewall.scope, FirewallScope::All);
    let summary = c.summary();
    assert!(
        summary.contains("firewall: nftables table inet edge_bans, banned sources' all packets dropped by the kernel; needs nft"),
        "{summary}"
    );
    assert!(summary.contains("CAP_NET_ADMIN"), "{summary}");
}

#[test]
fn firewall_mistakes_are_placed() {
    let text = with(
        "[firewall]\nbackend = \"iptables\"\ntable = \"1bad-name\"\nscope = \"every\"\nports = 1\n",
    );
    let d = errors(&text);
    let got: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(
        got[0],
        (
            6,
            11,
            "firewall.backend: unknown value \"iptables\" (expected \"none\" or \"nftables\")"
        )
    );
    assert_eq!((got[1].0, got[1].1), (7, 9));
    assert!(
        got[1]
            .2
            .starts_with("firewall.table: invalid table name \"1bad-name\""),
        "{}",
        got[1].2
    );
    assert_eq!(
        got[2],
        (
            8,
            9,
            "firewall.scope: unknown value \"every\" (expected \"listen\" or \"all\")"
        )
    );
    assert_eq!((got[3].0, got[3].1), (9, 1));
    assert!(
        got[3].2.starts_with("unknown key \"ports\" in [firewall]"),
        "{}",
        got[3].2
    );

    let (line, col, msg) = only_error(&with("[firewall]\nbackend = true\n"));
    assert_eq!((line, col), (6, 11));
    assert_eq!(
        msg,
        "firewall.backend: expected \"none\" or \"nftables\", found boolean `true`"
    );
}

#[test]
fn proxy_protocol_accept_from() {
    assert!(parse(MINIMAL).proxy_protocol.accept_from.nets().is_empty());
    assert!(parse(MINIMAL).summary().contains("trusted balancers: none"));
    let c = parse(&with(
        "[proxy_protocol]\naccept_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::1/48\"]\n",
    ));
    let nets: Vec<String> = c
        .proxy_protocol
        .accept_from
        .nets()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/48"]);
    assert!(
        c.summary()
            .contains("trusted balancers: 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/48 (PROXY v1/v2"),
        "{}",
        c.summary()
    );
    let (line, col, msg) = only_error(&with(
        "[proxy_protocol]\naccept_from = [\"10.0.0.0/8\", \"10.0.0.300\"]\n",
    ));
    assert_eq!((line, col), (6, 30));
    assert!(
        msg.starts_with("proxy_protocol.accept_from: invalid address or CIDR \"10.0.0.300\""),
        "{msg}"
    );
    let (line, col, msg) = only_error(&with(
        "[proxy_protocol]\naccept_from = [\"10.0.0.1/8\", \"10.0.0.0/8\"]\n",
    ));
    assert_eq!((line, col), (6, 30));
    assert_eq!(
        msg,
        "proxy_protocol.accept_from: 10.0.0.0/8 is listed twice"
    );
    let (line, col, msg) = only_error(&with("[proxy_protocol]\naccept_from = \"10.0.0.0/8\"\n"));
    assert_eq!((line, col), (6, 15));
    assert!(
        msg.contains("expected an array of balancer addresses or CIDRs"),
        "{msg}"
    );
    let (line, col, msg) = only_error(&with("[proxy_protocol]\nacept_from = []\n"));
    assert_eq!((line, col), (6, 1));
    assert!(msg.contains("did you mean \"accept_from\""), "{msg}");
    let (_, _, msg) = only_error(&with("[ban]\naccept_from = []\n"));
    assert!(msg.contains("belongs in [proxy_protocol]"), "{msg}");
}

#[test]
fn route_policy_keys_are_typed() {
    let c = parse(&with(
        "[[route]]\nsni = [\"a.example.org\"]\nalpn = [\"acme-tls/1\"]\nbackends = [\"10.0.0.6:443\", \"10.0.0.7:443\"]\n\
         allow = [\"198.51.100.7/24\", \"2001:db8:1::/48\", \"192.0.2.1\"]\nbalance = \"round_robin\"\n\
         [route.health_check]\ninterval = \"2s\"\nfall = 4\n",
    ));
    let plain = &c.routes[0];
    assert!(plain.allow.is_none() && plain.alpn.is_empty() && plain.health_check.is_none());
    assert_eq!(plain.balance, config::Balance::First);
    let r = &c.routes[1];
    assert_eq!(r.name, "a.example.org[acme-tls/1]");
    assert_eq!(r.alpn, ["acme-tls/1"]);
    let allow = r.allow.as_ref().unwrap();
    assert_eq!(allow.nets().len(), 3);
    assert!(allow.contains("198.51.100.200".parse().unwrap()));
    assert!(!allow.contains("198.51.101.1".parse().unwrap()));
    assert_eq!(r.balance, config::Balance::RoundRobin);
    let hc = r.health_check.unwrap();
    assert_eq!(
        (hc.interval, hc.timeout, hc.fall, hc.rise),
        (Duration::from_secs(2), Duration::from_secs(1), 4, 2)
    );
    let summary = c.summary();
    assert!(summary.contains("alpn acme-tls/1"), "{summary}");
    assert!(summary.contains("allow 3 networks"), "{summary}");
    assert!(summary.contains("round_robin"), "{summary}");
    assert!(summary.contains("health check every 2s"), "{summary}");
    // The default `balance` and an empty health-check table.
    let c = parse(&with(
        "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nbalance = \"least_connections\"\n[route.health_check]\n",
    ));
    assert_eq!(c.routes[1].balance, config::Balance::LeastConnections);
    let hc = c.routes[1].health_check.unwrap();
    assert_eq!(
        (hc.interval, hc.timeout, hc.fall, hc.rise),
        (Duration::from_secs(5), Duration::from_secs(1), 3, 2)
    );
}

#[test]
fn bad_route_policy_keys_point_at_the_value() {
    let cases = [
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nallow = [\"10.0.0.0/33\"]\n",
            (8, 10),
            "route[2].allow: invalid address or CIDR \"10.0.0.0/33\"",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nallow = []\n",
            (8, 9),
            "route[2].allow: empty",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nbalance = \"random\"\n",
            (8, 11),
            "route[2].balance: unknown value \"random\" (expected \"first\", \"round_robin\" or \"least_connections\")",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nalpn = [\"h2\", \"a b\"]\n",
            (8, 15),
            "route[2].alpn: invalid ALPN id \"a b\"",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\nalpn = []\n",
            (8, 8),
            "route[2].alpn: empty",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\n[route.health_check]\nfall = 0\n",
            (9, 8),
            "route[2].health_check.fall: 0 is out of range (expected from 1 to 100)",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\n[route.health_check]\ninterval = \"0s\"\n",
            (9, 12),
            "route[2].health_check.interval: must be longer than zero",
        ),
        (
            "[[route]]\nsni = [\"b\"]\nbackend = \"10.0.0.6:443\"\n[route.health_check]\nintervall = \"1s\"\n",
            (9, 1),
            "unknown key \"intervall\" in [route.health_check] of [[route]] #2 (did you mean \"interval\"?)",
        ),
        // The same name twice needs different ALPN lists.
        (
            "[[route]]\nsni = [\"a.example.org\"]\nalpn = [\"h2\"]\nbackend = \"10.0.0.6:443\"\n\
             [[route]]\nsni = [\"a.example.org\"]\nalpn = [\"http/1.1\", \"h2\"]\nbackend = \"10.0.0.6:443\"\n",
            (10, 8),
            "route[3].sni: \"a.example.org\" with ALPN \"h2\" is already served by route[2]",
        ),
    ];
    for (extra, at, want) in cases {
        let (line, col, msg) = only_error(&with(extra));
        assert!(msg.starts_with(want), "{extra:?}: {msg}");
        assert_eq!((line, col), at, "{extra:?}: {msg}");
    }
    let too_many: Vec<String> = (1..=65).map(|p| format!("\"10.0.0.1:{p}\"")).collect();
    let (_, _, msg) = only_error(&with(&format!(
        "[[route]]\nsni = [\"b\"]\nbackends = [{}]\n",
        too_many.join(", ")
    )));
    assert!(msg.contains("at most 64"), "{msg}");
    assert!(Outcome::STRIKABLE.contains(&Outcome::Denied));
    assert!(!parse(MINIMAL).ban.strike_on.contains(&Outcome::Denied));
}

#[test]
fn http_listen_and_http_backends_are_typed() {
    let c = parse(
        "listen = [\"0.0.0.0:443\"]\n[http]\nlisten = [\"0.0.0.0:80\", \"[::]:80\"]\n\
         [[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\nhttp_backends = [\"10.0.0.5:80\", \"[2001:db8::5]:80\"]\n\
         [[route]]\nsni = [\"b.example.org\"]\nbackend = \"10.0.0.6:443\"\n",
    );
    assert_eq!(c.http.listen, [addr("0.0.0.0:80"), addr("[::]:80")]);
    assert_eq!(
        c.routes[0].http_backends,
        [addr("10.0.0.5:80"), addr("[2001:db8::5]:80")]
    );
    assert!(c.routes[1].http_backends.is_empty());
    let summary = c.summary();
    assert!(
        summary.contains(
            "http listen: 0.0.0.0:80, [::]:80 (plain HTTP by Host, 1 route with http_backends)"
        ),
        "{summary}"
    );
    assert!(
        summary
            .contains("a.example.org -> 10.0.0.5:443; plain HTTP -> 10.0.0.5:80, [2001:db8::5]:80"),
        "{summary}"
    );
    // Port 0 in both lists is two kernel-chosen ports, not a clash.
    let c = parse(
        "listen = [\"127.0.0.1:0\"]\n[http]\nlisten = [\"127.0.0.1:0\"]\n[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n",
    );
    assert_eq!(c.http.listen, [addr("127.0.0.1:0")]);
}

#[test]
fn http_mistakes_are_reported_at_their_place() {
    for (extra, line, col, message) in [
        (
            "[http]\nlisten = [\"0.0.0.0:443\"]\n",
            6,
            11,
            "http.listen: 0.0.0.0:443 is also the top-level listen (TLS); a listener serves one protocol; use another port",
        ),
        (
            "[http]\nlisten = [\"127.0.0.1:9151\"]\n",
            6,
            11,
            "http.listen: 127.0.0.1:9151 is also the metrics endpoint (metrics.listen, default 127.0.0.1:9151); use another port",
        ),
        (
            "[http]\nlisten = [\"0.0.0.0:80\", \"0.0.0.0:80\"]\n",
            6,
            25,
            "http.listen: 0.0.0.0:80 is listed twice",
        ),
        (
            "[http]\nlisten = \"0.0.0.0:80\"\n",
            6,
            10,
            "http.listen: expected an array of addresses like [\"0.0.0.0:80\", \"[::]:80\"], found string \"0.0.0.0:80\"",
        ),
        (
            "[http]\nlisen = [\"0.0.0.0:80\"]\n",
            6,
            1,
            "unknown key \"lisen\" in [http] (did you mean \"listen\"?)",
        ),
    ] {
        let (l, c, m) = only_error(&with(extra));
        assert_eq!((l, c, m.as_str()), (line, col, message), "{extra}");
    }
    let route = |keys: &str| {
        format!(
            "listen = [\"0.0.0.0:443\"]\n[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n{keys}"
        )
    };
    let (l, c, m) = only_error(&route("http_backends = []\n"));
    assert_eq!((l, c), (5, 17));
    assert!(m.starts_with("route[1].http_backends: empty"), "{m}");
    let (l, c, m) = only_error(&route("http_backends = [\"10.0.0.5\"]\n"));
    assert_eq!((l, c), (5, 18));
    assert!(m.starts_with("route[1].http_backends: "), "{m}");
    let (_, _, m) = only_error(&route(
        "alpn = [\"h2\"]\nhttp_backends = [\"10.0.0.5:80\"]\n",
    ));
    assert!(
        m.starts_with("route[1].http_backends: plain HTTP has no ALPN"),
        "{m}"
    );
}
