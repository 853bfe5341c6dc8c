//! Operations, black-box against the real `sniroute` binary: the Grafana
//! dashboard's PromQL evaluated by a real Prometheus, `promtool check metrics`
//! on a busy scrape, the fail2ban filter run by `fail2ban-regex` on a log
//! sniroute wrote, sd_notify order, socket activation, reload under load, and
//! the systemd units checked by `systemd-analyze`. A test whose external tool
//! is missing says so and passes; `.ci/run` installs them all.

// clippy's allow-unwrap-in-tests covers #[test] functions only, not the
// helpers of an integration test crate; a failed unwrap here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ops_common::daemon::{BIN, Conf, Daemon, free_addr};
use ops_common::prometheus::Prometheus;
use ops_common::streams::Stream;
use ops_common::traffic::{
    NOT_TLS, expect_rejected, hello, hello_without_sni, loopback, routed_tag, tagged_echo_backend,
};
use ops_common::{WAIT, tool, wait_until};
use rustix::process::Signal;
use serde_json::Value;

/// The name every fixture hello asks for; the routed name in these tests.
const ROUTED: &str = "fixture.example";
/// A name no route has (15 bytes, like the fixture's, see `traffic::hello`).
const UNKNOWN: &str = "unknown.example";
/// The test's own address: in `ban.ignore`, never struck or rate-limited.
const ME: u8 = 1;

const OK_RELOADS: &str = "sniroute_config_reloads_total{result=\"ok\"}";
const ERROR_RELOADS: &str = "sniroute_config_reloads_total{result=\"error\"}";
const STRIKE_BANS: &str = "sniroute_bans_total{source=\"strike\"}";
const BANNED_CONNECTIONS: &str = "sniroute_connections_total{outcome=\"banned\"}";

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/sniroute.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every `expr` anywhere in the dashboard (panel targets).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// What Grafana would send for `expr`: its interval variables become
/// durations, the instance variable matches every instance.
fn as_sent_by_grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_is_importable_with_a_prometheus_datasource_variable() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10 schema"
    );
    assert_eq!(dash["uid"], "sniroute");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus datasource variable named `datasource`"
    );
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "unique panel ids"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() > 0);
        if panel["type"] == "row" {
            continue;
        }
        assert!(!panel["title"].as_str().unwrap().is_empty());
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    let all = exprs.join("\n");
    for wanted in [
        "increase(sniroute_bans_total{instance=~\"$instance\"}[1d])",
        "increase(sniroute_bans_total{instance=~\"$instance\"}[1h])",
        "sniroute_banned",
        "rate(sniroute_strikes_total",
        "sum by (outcome) (rate(sniroute_connections_total",
        "sniroute_active_connections",
        "sniroute_open_connections",
        "sniroute_backend_up",
        "sum by (route, direction) (rate(sniroute_bytes_total",
        "histogram_quantile(0.5, sum by (le) (rate(sniroute_client_hello_seconds_bucket",
        "histogram_quantile(0.9, sum by (le) (rate(sniroute_client_hello_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(sniroute_client_hello_seconds_bucket",
        "sum by (route, le) (rate(sniroute_backend_connect_seconds_bucket",
        "sum by (result) (increase(sniroute_config_reloads_total",
        "sniroute_build_info",
    ] {
        assert!(all.contains(wanted), "no panel queries {wanted}");
    }
}

#[test]
fn prometheus_evaluates_every_dashboard_query() {
    let test = "prometheus_evaluates_every_dashboard_query";
    let Some(binary) = tool(test, "/usr/bin/prometheus", "prometheus") else {
        return;
    };
    let backend = tagged_echo_backend(b'A');
    let conf = Conf::new().route(ROUTED, backend);
    let daemon = Daemon::start(&conf);
    let prometheus = Prometheus::start(&binary, conf.metrics);
    // A scrape of the all-zero start-up state first, so increase() and
    // rate() see the traffic as a change.
    prometheus.wait_at_least("sum(sniroute_build_info)", 1.0);

    let listen = conf.listen[0];
    for _ in 0..5 {
        assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(b'A'));
    }
    expect_rejected(loopback(2), listen, &hello(UNKNOWN));
    expect_rejected(loopback(3), listen, &hello_without_sni());
    expect_rejected(loopback(4), listen, NOT_TLS);
    expect_rejected(loopback(2), listen, &hello(ROUTED)); // banned now
    daemon.wait_metric_at_least(STRIKE_BANS, 3.0);
    prometheus.wait_at_least(STRIKE_BANS, 3.0);

    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard(), &mut exprs);
    let mut problems = Vec::new();
    for expr in &exprs {
        let sent = as_sent_by_grafana(expr);
        match prometheus.query(&sent) {
            Err(e) => problems.push(format!("{sent}: {e}")),
            Ok(result) => {
                // Remote (CrowdSec) bans need a LAPI: tests/crowdsec.rs.
                let key = (sent.contains("sniroute_bans_total")
                    && !sent.contains("source=\"crowdsec\""))
                    || sent.contains("sniroute_connections_total");
                let max = Prometheus::max_value(&result);
                eprintln!("{sent} -> {} series, max {max:?}", result.len());
                if key && !max.is_some_and(|v| v > 0.0) {
                    problems.push(format!("{sent}: no data above 0: {result:?}"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard queries:\n{}",
        problems.join("\n")
    );
    assert!(exprs.len() >= 13, "every panel was evaluated");
}

#[test]
fn promtool_finds_nothing_to_say_about_a_busy_scrape() {
    let test = "promtool_finds_nothing_to_say_about_a_busy_scrape";
    let Some(promtool) = tool(test, "/usr/bin/promtool", "prometheus") else {
        return;
    };
    let backend = tagged_echo_backend(b'A');
    let conf = Conf::new()
        .route(ROUTED, backend)
        .route("second.example", backend);
    let daemon = Daemon::start(&conf);
    let listen = conf.listen[0];
    for _ in 0..3 {
        routed_tag(loopback(ME), listen, ROUTED).unwrap();
    }
    expect_rejected(loopback(2), listen, &hello(UNKNOWN));
    expect_rejected(loopback(2), listen, NOT_TLS);
    daemon.wait_metric_at_least(BANNED_CONNECTIONS, 1.0);

    let scrape = daemon.scrape();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}\non:\n{scrape}",
        out.status
    );
}

#[test]
fn fail2ban_regex_finds_exactly_the_offenders() {
    let test = "fail2ban_regex_finds_exactly_the_offenders";
    let Some(fail2ban_regex) = tool(test, "fail2ban-regex", "fail2ban") else {
        return;
    };
    let backend = tagged_echo_backend(b'A');
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let mut conf = Conf::new().route(ROUTED, backend);
    conf.access_log = Some(log.clone());
    let daemon = Daemon::start(&conf);
    let listen = conf.listen[0];

    expect_rejected(loopback(2), listen, &hello(UNKNOWN));
    expect_rejected(loopback(3), listen, &hello_without_sni());
    expect_rejected(loopback(4), listen, NOT_TLS);
    expect_rejected(loopback(5), listen, &hello(UNKNOWN));
    expect_rejected(loopback(2), listen, &hello(ROUTED)); // banned: not a new offence
    for _ in 0..3 {
        assert_eq!(routed_tag(loopback(9), listen, ROUTED), Some(b'A'));
    }
    let lines = 8;
    let text = wait_until(&format!("{lines} access log lines"), WAIT, || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches('\n').count() >= lines).then_some(text)
    });
    assert!(
        text.contains(" 127.0.0.9:"),
        "routed lines are logged:\n{text}"
    );

    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fail2ban/filter.d/sniroute.conf");
    let out = Command::new(fail2ban_regex)
        .args(["-o", "ip"])
        .arg(&log)
        .arg(&filter)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
        "one match per offence, no routed client; log:\n{text}"
    );
    drop(daemon);
}

/// Receives sd_notify messages into `log` until one has the line `line`.
fn receive_until(socket: &UnixDatagram, log: &mut Vec<String>, line: &str) {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {line}: {e}; so far {log:?}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = message.lines().any(|l| l == line);
        log.push(message);
        if found {
            return;
        }
    }
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let backend = tagged_echo_backend(b'A');
    let conf = Conf::new().route(ROUTED, backend);
    // 200 ms: the daemon pings every 100 ms, so the test sees pings quickly.
    let env = [
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let daemon = Daemon::spawn(&conf, &[], &env);
    let mut log = Vec::new();

    receive_until(&socket, &mut log, "READY=1");
    TcpStream::connect(conf.listen[0]).expect("listening once READY=1 is sent");
    daemon.signal(Signal::HUP);
    receive_until(&socket, &mut log, "RELOADING=1");
    receive_until(&socket, &mut log, "READY=1");
    if !log.iter().any(|m| m == "WATCHDOG=1") {
        receive_until(&socket, &mut log, "WATCHDOG=1");
    }
    let status = daemon.stop();
    receive_until(&socket, &mut log, "STOPPING=1");
    assert!(status.success(), "clean exit: {status}");

    let states: Vec<&String> = log.iter().filter(|m| *m != "WATCHDOG=1").collect();
    let keys: Vec<&str> = states
        .iter()
        .map(|m| m.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{log:?}"
    );
    assert!(
        states[1].lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC: {:?}",
        states[1]
    );
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let test = "socket_activation_serves_on_the_passed_socket";
    let Some(activate) = tool(test, "systemd-socket-activate", "systemd") else {
        return;
    };
    let backend = tagged_echo_backend(b'A');
    let conf = Conf::new().route(ROUTED, backend);
    let passed = free_addr();
    // systemd-socket-activate binds `passed`, waits for the first connection
    // (as systemd does), then execs sniroute with LISTEN_FDS=1 and LISTEN_PID
    // = its own pid, the socket as fd 3.
    let wrapper = [activate.to_str().unwrap(), "-l", &passed.to_string()];
    let mut daemon = Daemon::spawn(&conf, &wrapper, &[]);
    let first = wait_until("systemd-socket-activate to listen", WAIT, || {
        TcpStream::connect(passed).ok()
    });
    drop(first); // queued in the passed socket's backlog, and it started sniroute
    daemon.wait_serving();

    assert_eq!(routed_tag(loopback(ME), passed, ROUTED), Some(b'A'));
    assert!(
        TcpStream::connect(conf.listen[0]).is_err(),
        "the config's `listen` is not bound when systemd passes sockets"
    );
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 1.0);
    assert_eq!(
        routed_tag(loopback(ME), passed, ROUTED),
        Some(b'A'),
        "after a reload too"
    );
    daemon.assert_running();
    let status = daemon.stop();
    assert!(status.success(), "clean exit: {status}");
}

/// Streams open through the reloads.
const STREAMS: u64 = 50;
/// Reloads while they stream.
const RELOADS: usize = 20;

#[test]
fn reloads_under_load_cut_nothing_and_change_routes() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let extra = "extra00.example";
    let second_listener = free_addr();
    let conf = Conf::new().route(ROUTED, a);
    let daemon = Daemon::start(&conf);
    let listen = conf.listen[0];

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<Stream> = (0..STREAMS)
        .map(|id| Stream::start(id, loopback(ME), listen, ROUTED, &stop))
        .collect();
    // Every stream moved more bytes than `before` (so none is stuck).
    let all_moved = |when: &str, before: Vec<u64>| {
        wait_until(&format!("every stream to move ({when})"), WAIT, || {
            streams
                .iter()
                .zip(&before)
                .all(|(s, &b)| s.progress.load(Ordering::Relaxed) > b)
                .then_some(())
        })
    };
    all_moved("start", vec![0; streams.len()]);
    expect_rejected(loopback(2), listen, &hello(UNKNOWN)); // banned from now on
    daemon.wait_metric_at_least(STRIKE_BANS, 1.0);

    for round in 1..=RELOADS {
        // Odd rounds: the route moves to B, a second route and a second
        // listener appear; even rounds: back to A, both gone.
        let odd = round % 2 == 1;
        let mut next = conf.clone();
        next.routes = vec![(ROUTED.to_owned(), if odd { b } else { a })];
        if odd {
            next = next.route(extra, a);
            next.listen.push(second_listener);
        }
        let before: Vec<u64> = streams
            .iter()
            .map(|s| s.progress.load(Ordering::Relaxed))
            .collect();
        daemon.write_config(&next.toml());
        daemon.signal(Signal::HUP);
        daemon.wait_metric_at_least(OK_RELOADS, round as f64);

        let want = if odd { b'B' } else { b'A' };
        assert_eq!(
            routed_tag(loopback(ME), listen, ROUTED),
            Some(want),
            "round {round}"
        );
        assert_eq!(
            routed_tag(loopback(ME), listen, extra),
            odd.then_some(b'A'),
            "round {round}"
        );
        let second_up = wait_until("the second listener to follow `listen`", WAIT, || {
            let up = TcpStream::connect(second_listener).is_ok();
            (up == odd).then_some(up)
        });
        if second_up {
            assert_eq!(
                routed_tag(loopback(ME), second_listener, ROUTED),
                Some(want)
            );
        }
        all_moved(&format!("round {round}"), before);
    }

    // An invalid config is refused, counted, and the old one keeps serving.
    let last = if RELOADS % 2 == 1 { b'B' } else { b'A' };
    daemon.write_config("listen = [\"not an address\"]\n[[route]]\nsni = []\n");
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(ERROR_RELOADS, 1.0);
    assert_eq!(daemon.metric(OK_RELOADS), Some(RELOADS as f64));
    assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(last));

    // The ban outlived every reload: a routed name from 127.0.0.2 is refused.
    expect_rejected(loopback(2), listen, &hello(ROUTED));
    daemon.wait_metric_at_least(BANNED_CONNECTIONS, 1.0);

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for stream in streams {
        let report = stream.finish().expect("stream intact");
        assert_eq!(report.tag, b'A', "an open stream stays on its backend");
        assert_eq!(
            report.read, report.written,
            "every byte came back: {report:?}"
        );
        total += report.read;
    }
    eprintln!("{STREAMS} streams moved {total} bytes each way through {RELOADS} reloads");
    let status = daemon.stop();
    assert!(status.success(), "clean exit: {status}");
}

/// The systemd units with the binary path pointing at the binary under test
/// (`systemd-analyze verify` checks that it exists).
fn units_for_test(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let copy = |name: &str| {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text.replace("/usr/bin/sniroute", BIN)).unwrap();
        path
    };
    (copy("sniroute.service"), copy("sniroute.socket"))
}

/// The most exposure `systemd-analyze security` may rate the service at.
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn systemd_units_verify_clean_and_expose_little() {
    let test = "systemd_units_verify_clean_and_expose_little";
    let Some(analyze) = tool(test, "systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (service, socket) = units_for_test(dir.path());

    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&service)
        .arg(&socket)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    let security = Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(&service)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for sniroute.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
    );
}
