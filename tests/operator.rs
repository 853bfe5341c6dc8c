//! Operator habits, black-box against the real `sniroute` binary: SIGUSR1
//! reopens the access log and does nothing else (like nginx), stray signals
//! are never fatal, stderr speaks journald's stream protocol when
//! `JOURNAL_STREAM` says it is the journal, the shipped logrotate snippet
//! rotates a live log, and the shipped Prometheus alert rules pass
//! `promtool check rules` and their own `promtool test rules`.
//!
//! A missing external tool (logrotate, promtool) skips its test with a
//! message, except under `CI=true`, where `.ci/run` installs them and the
//! test fails instead.

// clippy's allow-unwrap-in-tests covers #[test] functions only, not the
// helpers of an integration test crate; a failed unwrap here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Shared with tests/ops.rs, which uses parts this file does not.
#[allow(dead_code)]
mod ops_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use ops_common::daemon::{Conf, Daemon, free_addr, http_get, sample};
use ops_common::prometheus::Prometheus;
use ops_common::traffic::{
    connect_from, expect_rejected, hello, loopback, open_routed, routed_tag, tagged_echo_backend,
};
use ops_common::{WAIT, needed_tool, wait_until};
use rustix::process::Signal;

/// The name every fixture hello asks for; the routed name in these tests.
const ROUTED: &str = "fixture.example";
/// The test's own address: in `ban.ignore`, never struck or rate-limited.
const ME: u8 = 1;

const OK_RELOADS: &str = "sniroute_config_reloads_total{result=\"ok\"}";
const ERROR_RELOADS: &str = "sniroute_config_reloads_total{result=\"error\"}";
const BACKEND_ERRORS: &str = "sniroute_connections_total{outcome=\"backend_error\"}";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Lines in `path` (0 if it does not exist).
fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// Waits until `path` has at least `want` lines.
fn wait_lines(path: &Path, want: usize) {
    wait_until(&format!("{want} lines in {}", path.display()), WAIT, || {
        (line_count(path) >= want).then_some(())
    });
}

#[test]
fn sigusr1_reopens_the_access_log_and_reloads_nothing() {
    let a = tagged_echo_backend(b'A');
    let b = tagged_echo_backend(b'B');
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let rotated = logs.path().join("access.log.1");
    let mut conf = Conf::new().route(ROUTED, a);
    conf.access_log = Some(log.clone());
    let mut daemon = Daemon::start(&conf);
    let listen = conf.listen[0];

    for _ in 0..2 {
        assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(b'A'));
    }
    wait_lines(&log, 2);
    std::fs::rename(&log, &rotated).unwrap();
    // A config that moves the route sits on disk: SIGUSR1 must not load it.
    let mut moved = conf.clone();
    moved.routes = vec![(ROUTED.to_owned(), b)];
    daemon.write_config(&moved.toml());

    daemon.signal(Signal::USR1);
    wait_until("the daemon to open a new access log", WAIT, || {
        log.exists().then_some(())
    });
    for _ in 0..3 {
        assert_eq!(
            routed_tag(loopback(ME), listen, ROUTED),
            Some(b'A'),
            "SIGUSR1 loaded no config"
        );
    }
    wait_lines(&log, 3);
    assert_eq!(line_count(&log), 3, "the new file has the new lines");
    assert_eq!(
        line_count(&rotated),
        2,
        "no line went to the renamed file after SIGUSR1"
    );
    assert_eq!(daemon.metric(OK_RELOADS), Some(0.0), "no reload counted");
    assert_eq!(daemon.metric(ERROR_RELOADS), Some(0.0), "no reload counted");
    assert!(
        daemon.stderr().contains("access log reopened"),
        "{}",
        daemon.stderr()
    );
    daemon.assert_running();

    // The moved config was loadable all along: SIGHUP loads it.
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 1.0);
    assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(b'B'));
    let status = daemon.stop();
    assert!(status.success(), "clean exit: {status}");
}

#[test]
fn stray_signals_leave_it_running_and_routing() {
    let backend = tagged_echo_backend(b'A');
    let conf = Conf::new().route(ROUTED, backend);
    let mut daemon = Daemon::start(&conf);
    let listen = conf.listen[0];

    // SIGPIPE and SIGWINCH are ignored by disposition (discarded when sent);
    // the others are caught and logged, each of them once.
    let logged = [
        (Signal::USR2, "SIGUSR2"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::IO, "SIGIO"),
    ];
    for signal in [Signal::PIPE, Signal::WINCH, Signal::PIPE] {
        daemon.signal(signal);
        assert_eq!(
            routed_tag(loopback(ME), listen, ROUTED),
            Some(b'A'),
            "{signal:?}"
        );
        daemon.assert_running();
    }
    for (signal, name) in logged {
        daemon.signal(signal);
        let line = format!("{name} received and ignored");
        wait_until(&format!("`{line}` on stderr"), WAIT, || {
            daemon.stderr().contains(&line).then_some(())
        });
        assert_eq!(
            routed_tag(loopback(ME), listen, ROUTED),
            Some(b'A'),
            "{name}"
        );
        daemon.assert_running();
    }
    assert_eq!(daemon.metric(OK_RELOADS), Some(0.0));
    let status = daemon.stop();
    assert!(status.success(), "clean exit: {status}");
}

/// SIGQUIT is nginx's graceful stop: here it drains and exits like SIGTERM,
/// where its default would kill the process with a core dump.
#[test]
fn sigquit_stops_gracefully_like_nginx() {
    let conf = Conf::new().route(ROUTED, tagged_echo_backend(b'A'));
    let daemon = Daemon::start(&conf);
    assert_eq!(routed_tag(loopback(ME), conf.listen[0], ROUTED), Some(b'A'));
    let status = daemon.stop_by(Signal::QUIT);
    assert!(status.success(), "a clean exit after SIGQUIT: {status}");
}

/// `YYYY-MM-DDT` anywhere in `line`: the start of an RFC 3339 timestamp.
fn has_timestamp(line: &str) -> bool {
    line.as_bytes().windows(11).any(|w| {
        w.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            _ => c.is_ascii_digit(),
        })
    })
}

/// The `N` of a line that starts with `<N>`.
fn priority(line: &str) -> Option<u8> {
    let rest = line.strip_prefix('<')?;
    let (n, _) = rest.split_once('>')?;
    n.parse().ok().filter(|&n| n <= 7)
}

/// Drives what the journal tests look at: a backend error (warning), a
/// refused reload (a multi-line error), a stray signal (warning).
fn make_noise(daemon: &Daemon) {
    let listen = daemon.conf.listen[0];
    expect_rejected(loopback(ME), listen, &hello(ROUTED));
    daemon.wait_metric_at_least(BACKEND_ERRORS, 1.0);
    daemon.write_config("listen = [\n");
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(ERROR_RELOADS, 1.0);
    daemon.signal(Signal::USR2);
    wait_until("SIGUSR2 to be logged", WAIT, || {
        daemon.stderr().contains("SIGUSR2").then_some(())
    });
}

#[test]
fn journal_stream_lines_carry_priorities_and_no_timestamp() {
    // Nobody listens on the route's backend: every connection is refused.
    let mut conf = Conf::new().route(ROUTED, free_addr());
    // `log.access = "stdout"`: the access log shares the journal stream.
    conf.access_log = Some(PathBuf::from("stdout"));
    let daemon = Daemon::start_journal(&conf);
    make_noise(&daemon);
    let (status, text) = daemon.stop_with_stderr();
    assert!(status.success(), "clean exit: {status}\n{text}");

    assert!(text.lines().count() >= 7, "{text}");
    for line in text.lines() {
        assert!(priority(line).is_some(), "no <N> prefix: {line:?}\n{text}");
        // Access log lines keep their format (fail2ban reads it), at info.
        if line.contains(" outcome=") {
            assert_eq!(priority(line), Some(6), "{line}");
        } else {
            assert!(!has_timestamp(line), "a timestamp: {line:?}\n{text}");
        }
    }
    assert!(text.contains(" outcome=backend_error "), "{text}");
    let find = |what: &str| {
        text.lines()
            .filter(|l| l.contains(what))
            .map(|l| priority(l).unwrap())
            .collect::<Vec<u8>>()
    };
    let backend = find("no backend reachable");
    assert!(
        !backend.is_empty() && backend.iter().all(|&p| p == 3 || p == 4),
        "an unreachable backend is an error or a warning:\n{text}"
    );
    // Both lines of the multi-line reload error are errors.
    assert_eq!(find("config reload refused"), [3], "{text}");
    assert_eq!(find("invalid TOML"), [3], "{text}");
    assert_eq!(find("SIGUSR2"), [4], "{text}");
    assert_eq!(find("listening on"), [6], "{text}");
}

#[test]
fn without_journal_stream_lines_are_plain() {
    // No JOURNAL_STREAM, then one that names another file (a child of a
    // service inherits the variable, not necessarily the stream).
    for env in [&[][..], &[("JOURNAL_STREAM", "1:1")][..]] {
        let conf = Conf::new().route(ROUTED, free_addr());
        let mut daemon = Daemon::spawn(&conf, &[], env);
        daemon.wait_serving();
        make_noise(&daemon);
        let (status, text) = daemon.stop_with_stderr();
        assert!(status.success(), "clean exit: {status}\n{text}");
        let backend = text
            .lines()
            .find(|l| l.contains("no backend reachable"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(backend.contains("WARN"), "{backend}");
        // Every event starts with its timestamp; the second line of the
        // multi-line reload error is a bare continuation, as ever.
        for line in text.lines().filter(|l| !l.contains("invalid TOML")) {
            assert!(
                has_timestamp(line) && line.as_bytes()[0].is_ascii_digit(),
                "{env:?}: {line:?}\n{text}"
            );
            assert!(priority(line).is_none(), "{line:?}");
        }
    }
}

/// Runs `logrotate ARGS` and returns its output; panics if it fails or
/// reports an error.
fn logrotate(binary: &Path, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(binary).args(args).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("error"),
        "logrotate {args:?} ({}):\n{said}",
        out.status
    );
    said
}

#[test]
fn logrotate_accepts_the_snippet_and_the_daemon_follows_a_rotation() {
    let test = "logrotate_accepts_the_snippet_and_the_daemon_follows_a_rotation";
    let Some(binary) = needed_tool(test, "/usr/sbin/logrotate", "logrotate") else {
        return;
    };
    let snippet = std::fs::read_to_string(repo("config/logrotate/sniroute")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("logrotate.state");

    // As shipped, in debug mode (nothing is changed).
    let shipped = dir.path().join("sniroute");
    std::fs::write(&shipped, &snippet).unwrap();
    let said = logrotate(
        &binary,
        &[
            "-d".as_ref(),
            "-s".as_ref(),
            state.as_os_str(),
            shipped.as_os_str(),
        ],
    );
    assert!(said.contains("/var/log/sniroute/*.log"), "{said}");
    for wanted in ["daily", "rotate 14", "compress", "missingok", "notifempty"] {
        assert!(snippet.contains(wanted), "{wanted}");
    }
    assert!(snippet.contains("systemctl kill --kill-whom=main -s USR1 sniroute.service"));

    // For real, on a live daemon's log: the test's directory instead of
    // /var/log/sniroute, and SIGUSR1 to this daemon instead of the service.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let log = logs.join("access.log");
    let mut conf = Conf::new().route(ROUTED, tagged_echo_backend(b'A'));
    conf.access_log = Some(log.clone());
    let mut daemon = Daemon::start(&conf);
    let listen = conf.listen[0];
    let start = snippet.find("    postrotate\n").unwrap() + "    postrotate\n".len();
    let end = snippet.find("    endscript").unwrap();
    let live = format!(
        "{}        kill -USR1 {}\n{}",
        &snippet[..start],
        daemon.pid(),
        &snippet[end..]
    )
    .replace("/var/log/sniroute/", &format!("{}/", logs.display()));
    let live_path = dir.path().join("sniroute-live");
    std::fs::write(&live_path, live).unwrap();
    let rotate = || {
        logrotate(
            &binary,
            &[
                "-f".as_ref(),
                "-s".as_ref(),
                state.as_os_str(),
                live_path.as_os_str(),
            ],
        )
    };

    for _ in 0..2 {
        assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(b'A'));
    }
    wait_lines(&log, 2);
    rotate();
    let first = logs.join("access.log.1");
    assert_eq!(line_count(&first), 2, "delaycompress: .1 stays plain text");
    wait_until("the daemon to create access.log again", WAIT, || {
        log.exists().then_some(())
    });
    assert_eq!(routed_tag(loopback(ME), listen, ROUTED), Some(b'A'));
    wait_lines(&log, 1);
    assert_eq!(line_count(&first), 2, "nothing more went to access.log.1");

    rotate();
    assert!(
        logs.join("access.log.2.gz").is_file(),
        "the older one is compressed"
    );
    assert_eq!(line_count(&first), 1);
    daemon.assert_running();
    assert_eq!(
        daemon.metric(OK_RELOADS),
        Some(0.0),
        "a rotation is no reload"
    );
}

const RULES: &str = "config/prometheus/sniroute-alerts.yml";
const RULE_TESTS: [&str; 2] = [
    "config/prometheus/sniroute-alerts.test.yml",
    "config/prometheus/sniroute-alerts.week.test.yml",
];

#[test]
fn promtool_checks_the_alert_rules_and_runs_their_tests() {
    let test = "promtool_checks_the_alert_rules_and_runs_their_tests";
    let Some(promtool) = needed_tool(test, "/usr/bin/promtool", "prometheus") else {
        return;
    };
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo(RULES))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && said.contains("SUCCESS"),
        "promtool check rules:\n{said}"
    );
    let run = Command::new(&promtool)
        .args(["test", "rules"])
        .args(RULE_TESTS.map(repo))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "promtool test rules:\n{said}");
}

/// The alerts of the rules file, each with the text of its rule.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(RULES)).unwrap();
    text.split("      - alert: ")
        .skip(1)
        .map(|rule| {
            let (name, body) = rule.split_once('\n').unwrap();
            (name.trim().to_owned(), body.to_owned())
        })
        .collect()
}

#[test]
fn every_alert_explains_itself_and_is_tested_both_ways() {
    let tests: String = RULE_TESTS
        .map(|p| std::fs::read_to_string(repo(p)).unwrap())
        .concat();
    let alerts = alerts();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for (name, rule) in &alerts {
        for annotation in ["summary:", "description:", "runbook:"] {
            assert!(rule.contains(annotation), "{name}: no {annotation}");
        }
        assert!(rule.contains("severity: "), "{name}: no severity");
        assert!(
            tests.contains(&format!("alertname: {name}, exp_alerts: []}}")),
            "{name}: no test where it stays quiet"
        );
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "{name}: no test where it fires"
        );
    }
    // What the alerts watch.
    let all: String = alerts.iter().map(|(_, rule)| rule.as_str()).collect();
    for wanted in [
        "up{job=\"sniroute\"} == 0",
        "sniroute_config_reloads_total{result=\"error\"}",
        "sniroute_backend_errors_total",
        "sniroute_backend_up == 0",
        "sniroute_bans_total",
        "sniroute_firewall_errors_total",
        "sniroute_crowdsec_pulls_total{result=\"error\"}",
        "sniroute_open_connections",
        "sniroute_max_connections",
        "sniroute_backend_connect_failures_total",
    ] {
        assert!(all.contains(wanted), "no alert reads {wanted}");
    }
}

/// Series that exist only where their feature is configured: kernel bans,
/// CrowdSec. (Each backend of the config has its `sniroute_backend_*`
/// series, health checks or not.)
const FEATURE_SERIES: [&str; 2] = [
    "sniroute_firewall_errors_total",
    "sniroute_crowdsec_pulls_total",
];

#[test]
fn every_series_an_alert_reads_is_exported() {
    let conf = Conf::new().route(ROUTED, tagged_echo_backend(b'A'));
    let daemon = Daemon::start(&conf);
    let scrape = daemon.scrape();
    let all: String = alerts().into_iter().map(|(_, rule)| rule).collect();
    let mut names: Vec<&str> = all
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sniroute_") && !w.starts_with("sniroute_alerts"))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if FEATURE_SERIES.contains(&name) {
            continue;
        }
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name} is not in the scrape:\n{scrape}"
        );
    }
    assert_eq!(daemon.metric("sniroute_max_connections"), Some(20_000.0));
    assert_eq!(
        daemon.metric("sniroute_config_last_reload_successful"),
        Some(1.0)
    );
}

#[test]
fn max_connections_and_the_last_reload_follow_reloads() {
    let conf = Conf::new().route(ROUTED, tagged_echo_backend(b'A'));
    let daemon = Daemon::start(&conf);
    let text = conf
        .toml()
        .replace("[limits]\n", "[limits]\nmax_connections = 123\n");
    daemon.write_config(&text);
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 1.0);
    assert_eq!(daemon.metric("sniroute_max_connections"), Some(123.0));

    daemon.write_config("listen = [\n");
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(ERROR_RELOADS, 1.0);
    assert_eq!(
        daemon.metric("sniroute_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(daemon.metric("sniroute_max_connections"), Some(123.0));

    daemon.write_config(&conf.toml());
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 2.0);
    assert_eq!(
        daemon.metric("sniroute_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(daemon.metric("sniroute_max_connections"), Some(20_000.0));
}

/// Every line of a scrape that names `label="value"`.
fn series_with<'a>(scrape: &'a str, label: &str, value: &str) -> Vec<&'a str> {
    let want = format!("{label}=\"{value}\"");
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&want))
        .collect()
}

#[test]
fn a_reload_drops_the_series_of_removed_backends_and_routes() {
    const OTHER: &str = "other.example";
    let (a, b, c) = (
        tagged_echo_backend(b'A'),
        tagged_echo_backend(b'B'),
        tagged_echo_backend(b'C'),
    );
    let conf = Conf::new().route(ROUTED, a).route(OTHER, b);
    let daemon = Daemon::start(&conf);
    let up = |route: &str, backend| {
        format!("sniroute_backend_up{{route=\"{route}\",backend=\"{backend}\"}}")
    };
    let routed = format!("sniroute_routed_connections_total{{route=\"{ROUTED}\"}}");
    assert_eq!(daemon.metric(&up(ROUTED, a)), Some(1.0));
    assert_eq!(daemon.metric(&up(OTHER, b)), Some(1.0));
    assert_eq!(routed_tag(loopback(ME), conf.listen[0], ROUTED), Some(b'A'));
    assert_eq!(daemon.metric(&routed), Some(1.0));

    // ROUTED moves from a to c; OTHER goes away.
    let text = conf
        .toml()
        .replace(&format!("backend = \"{a}\""), &format!("backend = \"{c}\""))
        .replace(
            &format!("\n[[route]]\nsni = [\"{OTHER}\"]\nbackend = \"{b}\"\n"),
            "",
        );
    assert!(!text.contains(OTHER), "{text}");
    daemon.write_config(&text);
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 1.0);

    let scrape = daemon.scrape();
    assert_eq!(
        series_with(&scrape, "backend", &a.to_string()),
        Vec::<&str>::new()
    );
    assert_eq!(series_with(&scrape, "route", OTHER), Vec::<&str>::new());
    assert_eq!(sample(&scrape, &up(ROUTED, c)), Some(1.0), "{scrape}");
    assert_eq!(
        sample(&scrape, &routed),
        Some(1.0),
        "a kept route's counters go on:\n{scrape}"
    );
    assert_eq!(routed_tag(loopback(ME), conf.listen[0], ROUTED), Some(b'C'));
    assert_eq!(
        daemon.metric(&format!(
            "sniroute_backend_connections_total{{route=\"{ROUTED}\",backend=\"{c}\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(daemon.metric(&routed), Some(2.0));
}

#[test]
fn open_connections_counts_clients_still_waiting_for_their_hello() {
    const OPEN: &str = "sniroute_open_connections";
    let conf = Conf::new().route(ROUTED, tagged_echo_backend(b'A'));
    // No TCP_DEFER_ACCEPT, so a silent client is accepted (and held) at
    // once; a hello timeout no loaded runner reaches.
    let text = conf
        .toml()
        .replace("workers = 2\n", "workers = 2\ndefer_accept = false\n")
        .replace(
            "client_hello_timeout = \"2s\"",
            "client_hello_timeout = \"60s\"",
        );
    let daemon = Daemon::start(&conf);
    daemon.write_config(&text);
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(OK_RELOADS, 1.0);
    assert_eq!(daemon.metric(OPEN), Some(0.0));

    let to = conf.listen[0];
    let silent = connect_from(loopback(ME), to);
    let mut partial = connect_from(loopback(ME), to);
    partial.write_all(&hello(ROUTED)[..10]).unwrap();
    let (routed, tag) = open_routed(loopback(ME), to, ROUTED).unwrap();
    assert_eq!(tag, b'A');
    daemon.wait_metric_at_least(OPEN, 3.0);
    assert_eq!(daemon.metric(OPEN), Some(3.0));
    assert_eq!(
        daemon.metric(&format!(
            "sniroute_active_connections{{route=\"{ROUTED}\"}}"
        )),
        Some(1.0),
        "only one of them is routed"
    );
    drop((silent, partial, routed));
    wait_until("the open connections to close", WAIT, || {
        (daemon.metric(OPEN) == Some(0.0)).then_some(())
    });
}

#[test]
fn the_dashboard_has_an_alerts_row() {
    let path = repo("dashboards/sniroute.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let row = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == "Alerts")
        .expect("a row titled Alerts");
    let below: Vec<&serde_json::Value> = panels[row + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .collect();
    let exprs: Vec<&str> = below
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("ALERTS{alertname=~\"Sniroute.+\", alertstate=\"firing\"")),
        "{exprs:?}"
    );
    assert!(
        exprs.iter().any(|e| e.contains("sniroute_max_connections")),
        "{exprs:?}"
    );
}

/// Every rule's `health` from Prometheus's `/api/v1/rules`, once each rule
/// has been evaluated at least once: `(name, health, lastError)`.
fn rule_health(prometheus: &Prometheus) -> Vec<(String, String, String)> {
    wait_until("every rule to be evaluated", WAIT, || {
        let (_, body) = http_get(prometheus.web, "/api/v1/rules").ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<(String, String, String)> = json["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
                (text("name"), text("health"), text("lastError"))
            })
            .collect();
        (!rules.is_empty() && rules.iter().all(|(_, health, _)| health != "unknown"))
            .then_some(rules)
    })
}

#[test]
fn a_real_prometheus_fires_the_alerts_a_live_daemon_deserves() {
    let test = "a_real_prometheus_fires_the_alerts_a_live_daemon_deserves";
    let Some(binary) = needed_tool(test, "/usr/bin/prometheus", "prometheus") else {
        return;
    };
    // Nobody listens on the route's backend: every connection is refused.
    let conf = Conf::new().route(ROUTED, free_addr());
    let daemon = Daemon::start(&conf);
    let prometheus = Prometheus::start_with_rules(&binary, conf.metrics, &[&repo(RULES)]);
    // The all-zero start-up state first, so increase() sees the errors.
    prometheus.wait_at_least("sum(sniroute_build_info)", 1.0);
    let healthy = rule_health(&prometheus);
    assert!(healthy.len() >= 9, "{healthy:?}");
    assert!(
        prometheus
            .query("ALERTS{alertstate=\"firing\"}")
            .unwrap()
            .is_empty(),
        "a healthy daemon raises nothing"
    );

    let listen = conf.listen[0];
    for _ in 0..8 {
        expect_rejected(loopback(ME), listen, &hello(ROUTED));
    }
    daemon.wait_metric_at_least(BACKEND_ERRORS, 8.0);
    daemon.write_config("listen = [\n");
    daemon.signal(Signal::HUP);
    daemon.wait_metric_at_least(ERROR_RELOADS, 1.0);

    let mut expected = ["SnirouteBackendErrors", "SnirouteReloadFailed"];
    for alert in expected {
        prometheus.wait_at_least(
            &format!("count(ALERTS{{alertname=\"{alert}\", alertstate=\"firing\"}})"),
            1.0,
        );
    }
    let mut firing: Vec<String> = prometheus
        .query("ALERTS{alertstate=\"firing\"}")
        .unwrap()
        .iter()
        .map(|s| s["metric"]["alertname"].as_str().unwrap().to_owned())
        .collect();
    firing.sort();
    expected.sort();
    assert_eq!(firing, expected, "nothing else fires");
    for (name, health, error) in rule_health(&prometheus) {
        assert_eq!(health, "ok", "{name}: {error}");
    }
}
