//! Bans shared through a real CrowdSec Local API: Debian's `crowdsec` as
//! LAPI only (SQLite in a temp dir, its own loopback port), machines and
//! bouncers added with `cscli`, and real `sniroute` daemons pulling and
//! pushing over real sockets. A test skips with a message when crowdsec is
//! not installed (and fails under `CI=true`: `.ci/run` installs it).

// clippy's allow-unwrap-in-tests covers #[test] functions only, not the
// helpers of an integration test crate; a failed unwrap here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crowdsec_common;
#[allow(dead_code)] // the helpers other test files use too
mod ops_common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crowdsec_common::{Lapi, TlsFiles, available, tail};
use ops_common::daemon::{BIN, Conf, Daemon};
use ops_common::traffic::{expect_rejected, hello, loopback, routed_tag, tagged_echo_backend};
use ops_common::{WAIT, wait_until};

/// The routed name (the fixture hello's, 15 bytes).
const ROUTED: &str = "fixture.example";
/// A name no route has: one connection with it earns a ban.
const UNKNOWN: &str = "unknown.example";
/// The scenario of pushed decisions (the default).
const SCENARIO: &str = "sniroute/unknown-sni";
/// `update_frequency` of the test gateways.
const UPDATE: Duration = Duration::from_secs(1);
/// What the issue allows between a ban at one gateway and its enforcement
/// at another: one pull period and two seconds.
const PROPAGATION: Duration = Duration::from_secs(3);

/// One sniroute daemon with its own dir (keys, state file, admin socket).
struct Gateway {
    daemon: Daemon,
    dir: tempfile::TempDir,
    conf: Conf,
}

impl Gateway {
    /// A gateway named `name` (its bouncer key and, with `push`, machine)
    /// routing ROUTED to `backend`, also on `[::1]` when `v6`.
    fn start(lapi: &Lapi, name: &str, push: bool, backend: SocketAddr, v6: bool) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let key = lapi.bouncer(name, dir.path());
        let mut crowdsec = format!(
            "lapi_url = \"{}\"\napi_key_file = \"{}\"\nupdate_frequency = \"1s\"\n",
            lapi.url(),
            key.display()
        );
        if push {
            let pass = lapi.machine(name, dir.path());
            crowdsec.push_str(&format!(
                "push = true\nmachine_id = \"{name}\"\npassword_file = \"{}\"\n",
                pass.display()
            ));
        }
        Gateway::with(dir, &crowdsec, backend, v6)
    }

    /// A gateway with its `[crowdsec]` section written by the caller.
    fn with(dir: tempfile::TempDir, crowdsec: &str, backend: SocketAddr, v6: bool) -> Gateway {
        let mut conf = Conf::new().route(ROUTED, backend);
        if v6 {
            conf.listen.push(free_v6());
        }
        conf.tail = Some(tail(dir.path(), conf.metrics, crowdsec));
        let daemon = Daemon::start(&conf);
        Gateway { daemon, dir, conf }
    }

    fn addr(&self) -> SocketAddr {
        self.conf.listen[0]
    }

    fn routes(&self, from: IpAddr) -> bool {
        let to = match from {
            IpAddr::V4(_) => self.conf.listen[0],
            IpAddr::V6(_) => self.conf.listen[1],
        };
        routed_tag(from, to, ROUTED).is_some()
    }

    /// Waits until connections from `from` are refused (banned).
    fn wait_refuses(&self, from: IpAddr) -> Duration {
        let start = Instant::now();
        wait_until(&format!("{from} refused"), WAIT, || {
            (!self.routes(from)).then_some(())
        });
        start.elapsed()
    }

    fn wait_routes(&self, from: IpAddr) {
        wait_until(&format!("{from} routed again"), WAIT, || {
            self.routes(from).then_some(())
        });
    }

    /// Earns a ban for `from` with one unknown SNI.
    fn strike(&self, from: IpAddr) {
        let to = match from {
            IpAddr::V4(_) => self.conf.listen[0],
            IpAddr::V6(_) => self.conf.listen[1],
        };
        expect_rejected(from, to, &hello(UNKNOWN));
    }

    /// `sniroute ARGS... -c CONFIG`: (success, stdout + stderr).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&self.daemon.config_path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn metric(&self, series: &str) -> f64 {
        self.daemon.metric(series).unwrap_or(0.0)
    }

    fn restart(self) -> Gateway {
        let Gateway { daemon, dir, conf } = self;
        assert!(daemon.stop().success());
        let daemon = Daemon::start(&conf);
        Gateway { daemon, dir, conf }
    }
}

fn free_v6() -> SocketAddr {
    let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

/// How many active decisions the LAPI holds on `value` with `scenario`.
fn count(lapi: &Lapi, value: &str, scenario: &str) -> usize {
    lapi.decisions()
        .iter()
        .filter(|(_, v, s)| v == value && s == scenario)
        .count()
}

fn wait_decision(lapi: &Lapi, scope: &str, value: &str) {
    wait_until(
        &format!("a {scope}:{value} decision at the LAPI"),
        WAIT,
        || {
            lapi.decisions()
                .iter()
                .any(|(sc, v, s)| sc == scope && v == value && s == SCENARIO)
                .then_some(())
        },
    );
}

#[test]
fn an_unknown_sni_at_one_gateway_bans_the_source_at_the_other() {
    if !available("an_unknown_sni_at_one_gateway_bans_the_source_at_the_other") {
        return;
    }
    let lapi = Lapi::start();
    let backend = tagged_echo_backend(1);
    let gw1 = Gateway::start(&lapi, "gw1", true, backend, false);
    let gw2 = Gateway::start(&lapi, "gw2", true, backend, false);
    let scanner = loopback(21);
    assert!(gw1.routes(scanner) && gw2.routes(scanner));

    gw1.strike(scanner);
    let took = gw2.wait_refuses(scanner);
    assert!(
        took <= PROPAGATION,
        "the ban reached gw2 after {took:?} (update_frequency {UPDATE:?} + 2s allowed)"
    );
    assert_eq!(
        count(&lapi, "127.0.0.21", SCENARIO),
        1,
        "{:?}",
        lapi.decisions()
    );
    assert!(gw2.metric("sniroute_bans_total{source=\"crowdsec\"}") >= 1.0);
    assert!(gw2.metric("sniroute_crowdsec_decisions") >= 1.0);
    assert!(gw2.metric("sniroute_crowdsec_pulls_total{result=\"ok\"}") >= 1.0);
    assert!(gw1.metric("sniroute_crowdsec_pushes_total{result=\"ok\"}") >= 1.0);
    // Remote bans never reach the state file; gw2 did not push the echo.
    let state = std::fs::read_to_string(gw2.dir.path().join("bans.json")).unwrap_or_default();
    assert!(!state.contains("127.0.0.21"), "{state}");
    let (_, status) = gw2.cli(&["status"]);
    assert!(status.contains("CrowdSec LAPI: http://"), "{status}");
    assert!(status.contains("Remote decisions: 1"), "{status}");

    // A range from another source covers the scanner too.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "127.0.0.16/28",
        "--duration",
        "1h",
    ]);
    // `bans remove` at gw1 deletes its pushed decision, only that one.
    let (ok, said) = gw1.cli(&["bans", "remove", "127.0.0.21"]);
    assert!(ok, "{said}");
    wait_until("the pushed decision deleted", WAIT, || {
        (count(&lapi, "127.0.0.21", SCENARIO) == 0).then_some(())
    });
    assert!(
        lapi.decisions()
            .iter()
            .any(|(_, v, _)| v == "127.0.0.16/28"),
        "the covering range stays: {:?}",
        lapi.decisions()
    );
    // The range holds at both gateways until it is deleted.
    gw1.wait_refuses(scanner);
    gw2.wait_refuses(scanner);
    lapi.cscli(&["decisions", "delete", "--range", "127.0.0.16/28"]);
    gw1.wait_routes(scanner);
    gw2.wait_routes(scanner);
}

#[test]
fn cscli_decisions_hold_at_every_gateway_and_ban_ignore_wins() {
    if !available("cscli_decisions_hold_at_every_gateway_and_ban_ignore_wins") {
        return;
    }
    let lapi = Lapi::start();
    let backend = tagged_echo_backend(2);
    let gw1 = Gateway::start(&lapi, "gw1", false, backend, false);
    let gw2 = Gateway::start(&lapi, "gw2", false, backend, false);
    let (ip, in_range, captcha, me) = (loopback(31), loopback(42), loopback(50), loopback(1));
    for from in [ip, in_range, captcha, me] {
        assert!(gw1.routes(from) && gw2.routes(from));
    }
    // Captcha is for HTTP bouncers: not a ban here (added first, so it is
    // pulled by the time the bans are).
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "127.0.0.50",
        "--type",
        "captcha",
    ]);
    lapi.cscli(&["decisions", "add", "--ip", "127.0.0.31", "--duration", "1h"]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "127.0.0.40/29",
        "--duration",
        "1h",
    ]);
    for gw in [&gw1, &gw2] {
        gw.wait_refuses(ip);
        gw.wait_refuses(in_range);
        assert!(gw.routes(captcha));
    }
    // 127.0.0.1 is in ban.ignore: never banned, whatever the LAPI says.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "127.0.0.0/24",
        "--reason",
        "too wide",
    ]);
    for gw in [&gw1, &gw2] {
        gw.wait_refuses(captcha);
        assert!(gw.routes(me), "ban.ignore beats a remote decision");
    }
    lapi.cscli(&["decisions", "delete", "--range", "127.0.0.0/24"]);
    gw1.wait_routes(captcha);
    gw2.wait_routes(captcha);
    // A remote ban is the LAPI's to lift: `bans remove` says how.
    let (ok, said) = gw1.cli(&["bans", "remove", "127.0.0.31"]);
    assert!(!ok && said.contains("CrowdSec"), "{said}");
    assert!(!gw1.routes(ip));

    lapi.cscli(&["decisions", "delete", "--ip", "127.0.0.31"]);
    lapi.cscli(&["decisions", "delete", "--range", "127.0.0.40/29"]);
    for gw in [&gw1, &gw2] {
        gw.wait_routes(ip);
        gw.wait_routes(in_range);
    }
}

#[test]
fn an_ipv6_prefix_ban_travels_as_a_range() {
    if !available("an_ipv6_prefix_ban_travels_as_a_range") {
        return;
    }
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        eprintln!("SKIPPED an_ipv6_prefix_ban_travels_as_a_range: no IPv6 loopback");
        return;
    }
    let lapi = Lapi::start();
    let backend = tagged_echo_backend(3);
    let gw1 = Gateway::start(&lapi, "gw1", true, backend, true);
    let gw2 = Gateway::start(&lapi, "gw2", false, backend, true);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert!(gw2.routes(v6));
    // ::1 is banned per /64 (ban.ipv6_prefix), so ::/64 goes out as a Range.
    gw1.strike(v6);
    wait_decision(&lapi, "Range", "::/64");
    gw2.wait_refuses(v6);
    // A manual prefix ban goes out as a Range as well.
    let (ok, said) = gw1.cli(&["bans", "add", "2001:db8:7::/48"]);
    assert!(ok, "{said}");
    wait_decision(&lapi, "Range", "2001:db8:7::/48");
}

#[test]
fn the_lapi_down_at_start_does_not_stop_routing_and_is_caught_up_with() {
    if !available("the_lapi_down_at_start_does_not_stop_routing_and_is_caught_up_with") {
        return;
    }
    let mut lapi = Lapi::configure();
    let backend = tagged_echo_backend(4);
    let gw = Gateway::start(&lapi, "gw1", true, backend, false);
    let (early, later) = (loopback(61), loopback(62));
    // Routing goes on while the LAPI is unreachable.
    assert!(gw.routes(later));
    gw.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"error\"}", 1.0);
    // A ban made meanwhile is pushed once the LAPI is there.
    gw.strike(early);
    assert!(gw.routes(later));
    lapi.run();
    lapi.cscli(&["decisions", "add", "--ip", "127.0.0.62", "--duration", "1h"]);
    gw.wait_refuses(later);
    wait_decision(&lapi, "Ip", "127.0.0.61");
}

#[test]
fn pushes_resume_after_a_lapi_restart_and_survive_a_gateway_restart() {
    if !available("pushes_resume_after_a_lapi_restart_and_survive_a_gateway_restart") {
        return;
    }
    let mut lapi = Lapi::start();
    let backend = tagged_echo_backend(5);
    let gw = Gateway::start(&lapi, "gw1", true, backend, false);
    let (a, b, c) = (loopback(71), loopback(72), loopback(73));
    gw.strike(a);
    wait_decision(&lapi, "Ip", "127.0.0.71");

    // A restarted LAPI has a new JWT secret: the old token is refused,
    // sniroute logs in again and pushes go on.
    lapi.kill();
    lapi.run();
    gw.strike(b);
    wait_decision(&lapi, "Ip", "127.0.0.72");

    // A ban the LAPI could not take is not lost when the gateway restarts;
    // what was pushed already is not pushed twice.
    lapi.kill();
    gw.strike(c);
    let gw = gw.restart();
    lapi.run();
    wait_decision(&lapi, "Ip", "127.0.0.73");
    assert!(!gw.routes(c));
    // Give a second push time to happen if it were going to.
    gw.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"ok\"}", 2.0);
    assert_eq!(
        count(&lapi, "127.0.0.71", SCENARIO),
        1,
        "{:?}",
        lapi.decisions()
    );
    assert_eq!(
        count(&lapi, "127.0.0.72", SCENARIO),
        1,
        "{:?}",
        lapi.decisions()
    );
    let memory = std::fs::read_to_string(gw.dir.path().join("bans.crowdsec.json")).unwrap();
    assert!(memory.contains("127.0.0.73/32"), "{memory}");
    let _ = gw.addr();
}

#[test]
fn a_reload_turns_crowdsec_off_and_on_again() {
    if !available("a_reload_turns_crowdsec_off_and_on_again") {
        return;
    }
    let lapi = Lapi::start();
    let gw = Gateway::start(&lapi, "gw1", false, tagged_echo_backend(7), false);
    let listed = loopback(81);
    lapi.cscli(&["decisions", "add", "--ip", "127.0.0.81", "--duration", "1h"]);
    gw.wait_refuses(listed);
    // Off: the remote decisions go with it.
    let mut off = gw.conf.clone();
    off.tail = Some(tail(gw.dir.path(), off.metrics, "lapi_url = \"\"\n"));
    gw.daemon.write_config(&off.toml());
    gw.daemon.signal(rustix::process::Signal::HUP);
    gw.wait_routes(listed);
    assert_eq!(gw.metric("sniroute_crowdsec_decisions"), 0.0);
    // On again: a full pull brings them back.
    gw.daemon.write_config(&gw.conf.toml());
    gw.daemon.signal(rustix::process::Signal::HUP);
    gw.wait_refuses(listed);
}

/// A hostile (or broken) LAPI: its first decision stream is a string
/// without end. The pull fails within a bounded read — the daemon's memory
/// stays small, the failure is counted and shown — the daemon routes
/// meanwhile, and the next pull is a full resync (`startup=true`) that
/// brings the decision a sane answer holds.
#[test]
fn a_hostile_lapi_costs_a_failed_pull_not_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lapi = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&requests);
    // Serves until the test process ends (a pull a second).
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut head = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = head.read_line(&mut line);
            seen.lock().unwrap().push(line.trim().to_owned());
            loop {
                let mut header = String::new();
                if head.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n";
            if n == 0 {
                // Up to 1 GiB of one string, until the daemon hangs up.
                let _ = conn.write_all(
                    format!("{ok}\r\n{{\"new\":[{{\"scope\":\"Ip\",\"type\":\"ban\",\"value\":\"")
                        .as_bytes(),
                );
                let junk = vec![b'A'; 64 << 10];
                for _ in 0..(1 << 14) {
                    if conn.write_all(&junk).is_err() {
                        break;
                    }
                }
            } else {
                let body = if line.contains("startup=true") {
                    r#"{"deleted":null,"new":[{"duration":"1h","scope":"Ip","type":"ban","value":"127.0.0.5","id":1}]}"#
                } else {
                    r#"{"deleted":null,"new":null}"#
                };
                let _ = conn.write_all(
                    format!("{ok}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                );
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k").unwrap();
    let crowdsec = format!(
        "lapi_url = \"http://{lapi}\"\napi_key_file = \"{}\"\nupdate_frequency = \"1s\"\n",
        key.display()
    );
    let gw = Gateway::with(dir, &crowdsec, tagged_echo_backend(9), false);
    gw.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"error\"}", 1.0);
    assert!(gw.routes(loopback(4)));
    let rss = rss_kib(gw.daemon.pid());
    assert!(rss < 64 << 10, "daemon RSS {rss} KiB after a hostile pull");
    gw.wait_refuses(loopback(5));
    let log = gw.daemon.stderr();
    assert!(log.contains("a decision longer than 65536 bytes"), "{log}");
    let requests = requests.lock().unwrap().clone();
    assert!(requests.len() >= 2, "{requests:?}");
    for (n, line) in requests.iter().take(2).enumerate() {
        assert!(
            line.starts_with("GET /v1/decisions/stream?startup=true "),
            "request {n}: {line}"
        );
    }
}

/// An https LAPI with a private CA, as the official bouncers meet it:
/// gw1 trusts the CA (`ca_cert_file`) and logs in with a client
/// certificate (no key, no password: CrowdSec's TLS auth names it after
/// the certificate), pulls and pushes; gw2 trusts the CA and pulls with a
/// bouncer key; gw3 does not trust the CA: its pulls fail (counted, said
/// clearly) while it routes.
#[test]
fn an_https_lapi_with_a_private_ca_and_client_certificates() {
    if !available("an_https_lapi_with_a_private_ca_and_client_certificates") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let tls = TlsFiles::make(pki.path());
    let lapi = Lapi::start_tls(&tls);
    let backend = tagged_echo_backend(10);
    let url = lapi.https_url();
    let ca = tls.ca.display();
    let gw1 = Gateway::with(
        tempfile::tempdir().unwrap(),
        &format!(
            "lapi_url = \"{url}\"\nca_cert_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             update_frequency = \"1s\"\npush = true\n",
            tls.client_cert.display(),
            tls.client_key.display()
        ),
        backend,
        false,
    );
    let gw2_dir = tempfile::tempdir().unwrap();
    let key = lapi.bouncer("gw2", gw2_dir.path());
    let keyed = format!(
        "lapi_url = \"{url}\"\napi_key_file = \"{}\"\nupdate_frequency = \"1s\"\n",
        key.display()
    );
    let gw2 = Gateway::with(
        gw2_dir,
        &format!("{keyed}ca_cert_file = \"{ca}\"\n"),
        backend,
        false,
    );
    let gw3_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&key, gw3_dir.path().join("gw2.key")).unwrap();
    let gw3 = Gateway::with(gw3_dir, &keyed, backend, false);

    let out = Command::new(BIN)
        .arg("check")
        .arg(&gw1.daemon.config_path)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}");
    assert!(
        summary.contains("trusts 1 CA certificate from") && summary.contains("client certificate"),
        "{summary}"
    );
    gw1.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"ok\"}", 1.0);
    gw2.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"ok\"}", 1.0);
    let scanner = loopback(31);
    gw1.strike(scanner);
    let took = gw2.wait_refuses(scanner);
    assert!(took <= PROPAGATION, "the ban reached gw2 after {took:?}");
    assert!(gw1.metric("sniroute_crowdsec_pushes_total{result=\"ok\"}") >= 1.0);
    // The LAPI made the bouncer and the machine from the certificate.
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "raw"]);
    assert!(bouncers.contains("sniroute-tls@127.0.0.1"), "{bouncers}");
    let machines = lapi.cscli(&["machines", "list", "-o", "raw"]);
    assert!(machines.contains("sniroute-tls@127.0.0.1"), "{machines}");

    // gw3 does not know the CA: every pull fails, it routes, and says why.
    gw3.daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"error\"}", 2.0);
    assert_eq!(
        gw3.metric("sniroute_crowdsec_pulls_total{result=\"ok\"}"),
        0.0
    );
    assert!(gw3.routes(scanner));
    let (_, status) = gw3.cli(&["status"]);
    assert!(
        status.contains("invalid peer certificate") && status.contains("UnknownIssuer"),
        "{status}"
    );
}

/// The parser and scenario shipped in `config/crowdsec/` run in a real
/// CrowdSec agent: sniroute writes its access log (an unknown SNI from one
/// address, a routed connection from another), `crowdsec -dsn file://...
/// -type sniroute` reads it as the acquisition snippet says, and the LAPI
/// then holds a ban of the scanner by `sniroute/unknown-sni`, not of the
/// other client.
#[test]
fn crowdsecs_agent_reads_the_access_log_with_the_shipped_parser_and_scenario() {
    if !available("crowdsecs_agent_reads_the_access_log_with_the_shipped_parser_and_scenario") {
        return;
    }
    let lapi = Lapi::start();
    let d = lapi.dir.path();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/crowdsec");
    for (from, to) in [
        ("parsers/s01-parse/sniroute-logs.yaml", "parsers/s01-parse"),
        ("scenarios/sniroute-unknown-sni.yaml", "scenarios"),
    ] {
        std::fs::create_dir_all(d.join(to)).unwrap();
        let name = Path::new(from).file_name().unwrap();
        std::fs::copy(shipped.join(from), d.join(to).join(name)).unwrap();
    }
    // What the hub's crowdsecurity/non-syslog and dateparse-enrich do (the
    // README has users install those; Debian's offline hub lacks the first).
    std::fs::create_dir_all(d.join("parsers/s00-raw")).unwrap();
    std::fs::write(
        d.join("parsers/s00-raw/file-logs.yaml"),
        "filter: \"evt.Line.Labels.type != 'syslog'\"\nonsuccess: next_stage\nname: test/file-logs\n\
         statics:\n  - parsed: message\n    expression: evt.Line.Raw\n\
         \x20 - parsed: program\n    expression: evt.Line.Labels.type\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("parsers/s02-enrich")).unwrap();
    std::fs::write(
        d.join("parsers/s02-enrich/dates.yaml"),
        "filter: \"evt.StrTime != ''\"\nname: test/dates\nstatics:\n  - method: ParseDate\n    expression: evt.StrTime\n\
         \x20 - target: MarshaledTime\n    expression: evt.Enriched.MarshaledTime\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/crowdsec/patterns", d.join("patterns")).unwrap();
    // An empty hub index: every item here is a local one.
    std::fs::write(
        d.join("hub/.index.json"),
        r#"{"parsers":{},"postoverflows":{},"scenarios":{},"collections":{}}"#,
    )
    .unwrap();

    // A real access log.
    let log = d.join("access.log");
    let mut conf = Conf::new().route(ROUTED, tagged_echo_backend(11));
    conf.access_log = Some(log.clone());
    let daemon = Daemon::start(&conf);
    let (scanner, client) = (loopback(42), loopback(43));
    expect_rejected(scanner, conf.listen[0], &hello(UNKNOWN));
    assert!(routed_tag(client, conf.listen[0], ROUTED).is_some());
    wait_until("two access log lines", WAIT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    });
    drop(daemon);

    // The shipped acquisition snippet names the file (read here with
    // -dsn, the one-shot form of the same file source and type).
    let acquis = std::fs::read_to_string(shipped.join("acquis.d/sniroute.yaml")).unwrap();
    assert!(acquis.contains("type: sniroute"), "{acquis}");
    let acquis = acquis.replace("/var/log/sniroute/access.log", &log.display().to_string());
    std::fs::write(d.join("acquis.yaml"), acquis).unwrap();
    let config = d.join("config.yaml");
    let out = Command::new(crowdsec_common::CROWDSEC)
        .arg("-c")
        .arg(&config)
        .args(["-no-api", "-dsn"])
        .arg(format!("file://{}", log.display()))
        .args(["-type", "sniroute"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crowdsec agent: {said}");
    wait_until("the scanner banned by the agent's alert", WAIT, || {
        (count(&lapi, "127.0.0.42", SCENARIO) == 1).then_some(())
    });
    assert_eq!(count(&lapi, "127.0.0.43", SCENARIO), 0, "{said}");
}

/// Resident set size of this process, in bytes.
fn own_rss() -> u64 {
    u64::try_from(rss_kib(std::process::id())).unwrap() * 1024
}

/// The community-blocklist case in process: 100,000 decisions (99,000
/// addresses, 1,000 IPv6 ranges) parsed from a stream body and put in force
/// with one full resync. Each costs at most ~100 bytes, and the accept-time
/// check stays one probe per prefix length present (timed against an empty
/// table; printed for BENCHMARKS.md, bounded loosely against a loaded CI).
#[test]
fn a_blocklist_of_100k_decisions_is_small_and_keeps_accept_cheap() {
    use ipnet::IpNet;
    use sniroute::config::{BanConfig, RateLimitConfig};
    use sniroute::guard::Guard;
    use sniroute::guard::remote::{Decision, RemoteUpdate};
    use sniroute::outcome::Outcome;
    const N: u32 = 100_000;
    let ban = BanConfig {
        enabled: true,
        max_retry: 1,
        find_time: Duration::from_secs(3600),
        ban_time: Duration::from_secs(86_400),
        ignore: Vec::new(),
        strike_on: vec![Outcome::UnknownSni],
        ipv6_prefix: 64,
        state_file: None,
    };
    let rate = RateLimitConfig {
        per_ip: 0,
        burst: 0,
    };
    let guard = Guard::new(&ban, &rate).unwrap();
    let clean: IpAddr = "192.0.2.1".parse().unwrap();
    let time_admit = |ip: IpAddr, n: u32| {
        let start = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(guard.admit(std::hint::black_box(ip)));
        }
        start.elapsed() / n
    };
    let empty = time_admit(clean, 200_000);

    let value = |i: u32| {
        if i < N - 1000 {
            let [_, b, c, d] = (0x0a00_0000 | i).to_be_bytes();
            ("Ip", format!("10.{b}.{c}.{d}"))
        } else {
            ("Range", format!("2001:db8:{:x}::/64", i - (N - 1000)))
        }
    };
    let now = guard.unix_millis();
    // Memory first, from decisions built directly: nothing big was freed
    // before, so the table's pages are new ones and RSS sees them all.
    let decisions: Vec<Decision> = (0..N)
        .map(|i| Decision {
            net: match value(i) {
                ("Ip", v) => IpNet::from(v.parse::<IpAddr>().unwrap()),
                (_, v) => v.parse::<IpNet>().unwrap(),
            },
            expires_at: now / 1000 + 86_400,
        })
        .collect();
    let before = own_rss();
    let started = Instant::now();
    let applied = guard.apply_remote(RemoteUpdate::Full(decisions.clone()));
    let applied_in = started.elapsed();
    let grown = own_rss().saturating_sub(before);
    assert_eq!(applied.total, N as usize);
    let per = grown / u64::from(N);
    drop(decisions);

    // Then the stream body as the LAPI sends it, parsed and put in force
    // by a full resync that replaces the table.
    let mut body = String::from("{\"deleted\":null,\"new\":[");
    for i in 0..N {
        if i > 0 {
            body.push(',');
        }
        let (scope, value) = value(i);
        body.push_str(&format!(
            "{{\"duration\":\"23h59m{}.5s\",\"id\":{i},\"origin\":\"lists\",\"scenario\":\"crowdsecurity/community-blocklist\",\"scope\":\"{scope}\",\"type\":\"ban\",\"value\":\"{value}\"}}",
            i % 60
        ));
    }
    body.push_str("]}");
    let started = Instant::now();
    let stream = sniroute::crowdsec::stream::parse(body.as_bytes(), now).unwrap();
    let parsed_in = started.elapsed();
    assert_eq!(stream.new.len(), N as usize);
    let started = Instant::now();
    let replaced = guard.apply_remote(RemoteUpdate::Full(stream.new));
    let replaced_in = started.elapsed();
    assert_eq!((replaced.total, replaced.added), (N as usize, 0));
    let banned: IpAddr = "10.0.150.7".parse().unwrap();
    assert_eq!(guard.admit(banned), Err(Outcome::Banned));
    assert_eq!(guard.admit("2001:db8:ffff::7".parse().unwrap()), Ok(()));
    assert_eq!(
        guard.admit("2001:db8:3e7::9".parse().unwrap()),
        Err(Outcome::Banned)
    );
    let full_clean = time_admit(clean, 200_000);
    let full_banned = time_admit(banned, 200_000);
    println!(
        "100,000 decisions: applied in {applied_in:?}; body parsed in {parsed_in:?}, full resync in {replaced_in:?}; \
         RSS +{} KiB = {per} bytes per decision; admit (clean) {empty:?} empty -> {full_clean:?}, \
         admit (banned by a decision) {full_banned:?}",
        grown / 1024
    );
    assert!(per <= 100, "{per} bytes per decision");
    assert!(
        full_clean < empty * 4 + Duration::from_micros(2),
        "admit went from {empty:?} to {full_clean:?}"
    );
}

/// Not a check but a measurement (run with `--ignored --nocapture`):
/// 100,000 decisions imported into the LAPI, pulled by one gateway; its
/// memory before and after, and the time of a banned accept.
#[test]
#[ignore = "measurement: run by hand for BENCHMARKS.md"]
fn measure_100k_decisions() {
    if !available("measure_100k_decisions") {
        return;
    }
    let lapi = Lapi::start();
    let backend = tagged_echo_backend(6);
    // The same gateway without decisions, for the baseline, gone before the
    // import (SQLite: a pull's write would lock the import out).
    let empty = Gateway::start(&lapi, "gw0", false, backend, false);
    empty
        .daemon
        .wait_metric_at_least("sniroute_crowdsec_pulls_total{result=\"ok\"}", 2.0);
    let before = rss_kib(empty.daemon.pid());
    drop(empty);
    let csv = lapi.dir.path().join("decisions.csv");
    let mut text = String::from("duration,scope,value,type\n");
    for i in 0..100_000u32 {
        let [_, b, c, d] = (0x0a00_0000 | i).to_be_bytes();
        text.push_str(&format!("24h,ip,10.{b}.{c}.{d},ban\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let started = Instant::now();
    lapi.cscli(&["decisions", "import", "-i", &csv.display().to_string()]);
    eprintln!("import: {:?}", started.elapsed());
    let started = Instant::now();
    let gw = Gateway::start(&lapi, "gw1", false, backend, false);
    wait_until("100,000 decisions pulled", Duration::from_secs(300), || {
        (gw.metric("sniroute_crowdsec_decisions") >= 100_000.0).then_some(())
    });
    eprintln!("started and pulled within {:?}", started.elapsed());
    let after = rss_kib(gw.daemon.pid());
    eprintln!(
        "RSS {before} KiB (no decisions) -> {after} KiB (100,000): {} bytes per decision",
        (after - before) * 1024 / 100_000
    );
    let banned = loopback(2);
    lapi.cscli(&["decisions", "add", "--ip", "127.0.0.2", "--duration", "1h"]);
    gw.wait_refuses(banned);
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        expect_rejected(banned, gw.addr(), b"x");
    }
    eprintln!("banned connect+close: {:?} each", started.elapsed() / n);
}

fn rss_kib(pid: u32) -> i64 {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}
