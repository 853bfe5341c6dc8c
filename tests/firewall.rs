//! Kernel bans (`[firewall] backend = "nftables"`) against the real `nft`,
//! each test in a network namespace of its own (see `firewall_common`):
//! a banned source's SYN is dropped while others route, element timeouts
//! follow the bans, IPv6 per /64, unbans, restarts, repair after `nft flush
//! ruleset`, clean stop, reload, `ban.ignore`, and a clear start-up error
//! without privilege.

// clippy's allow-unwrap-in-tests covers #[test] functions only, not the
// helpers of an integration test crate; a failed unwrap here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod firewall_common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use firewall_common::*;

const TABLE: &str = "sniroute";
const NFTABLES: &str = "backend = \"nftables\"\n";

#[test]
fn banned_source_cannot_even_connect_while_another_routes() {
    in_netns(
        "banned_source_cannot_even_connect_while_another_routes",
        || {
            let dir = tempfile::tempdir().unwrap();
            let listen = SocketAddr::new(lo4(1), free_port());
            let config = config(dir.path(), &[listen], echo_backend(), &[], NFTABLES);
            let daemon = Daemon::start(dir.path(), &config);
            assert!(table_exists(TABLE));
            let (scanner, user) = (lo4(2), lo4(3));

            send_unknown(scanner, listen);
            let element = wait_element(TABLE, "ban4", "127.0.0.2");
            assert_dropped(scanner, listen);
            assert!(routes(user, listen), "another source still routes");

            // The element lives as long as the ban has left, within 2 s.
            let ban_end = daemon.ban_expiry("127.0.0.2/32").unwrap();
            assert!(
                element.expires_at.abs_diff(ban_end) <= 2,
                "element expires at {}, the ban at {ban_end}",
                element.expires_at
            );
            let status = daemon.admin(&["status"]);
            assert!(
                status
                    .lines()
                    .any(|l| l == "Firewall: nftables inet sniroute, 1 element"),
                "{status}"
            );
            assert_eq!(daemon.metric("sniroute_firewall_elements"), Some(1.0));
            // The drop counter is read every 5 s.
            wait_until("dropped packets counted", WAIT, || {
                daemon
                    .metric("sniroute_firewall_dropped_packets_total")
                    .filter(|&n| n >= 1.0)
            });

            // An unban lets it connect again.
            daemon.admin(&["bans", "remove", "127.0.0.2"]);
            wait_no_element(TABLE, "ban4", "127.0.0.2");
            assert!(routes(scanner, listen), "unbanned source routes again");
            assert_eq!(daemon.metric("sniroute_firewall_errors_total"), Some(0.0));
            daemon.stop();
        },
    );
}

#[test]
fn ipv6_bans_cover_the_source_prefix_and_not_the_next_one() {
    in_netns(
        "ipv6_bans_cover_the_source_prefix_and_not_the_next_one",
        || {
            let server = add_v6("2001:db8:ffff::1");
            let scanner = add_v6("2001:db8:1:1::1");
            let same_prefix = add_v6("2001:db8:1:1::2");
            let neighbour = add_v6("2001:db8:1:2::1");
            let dir = tempfile::tempdir().unwrap();
            let listen = SocketAddr::new(server, free_port());
            let config = config(dir.path(), &[listen], echo_backend(), &[], NFTABLES);
            let daemon = Daemon::start(dir.path(), &config);

            send_unknown(scanner, listen);
            wait_element(TABLE, "ban6", "2001:db8:1:1::");
            assert_dropped(scanner, listen);
            assert_dropped(same_prefix, listen);
            assert!(routes(neighbour, listen), "the neighbouring /64 routes");

            // A hand-made ban of another length goes to the interval set.
            daemon.admin(&["bans", "add", "2001:db8:2::/48"]);
            wait_element(TABLE, "net6", "2001:db8:2::/48");
            let other = add_v6("2001:db8:2:77::1");
            assert_dropped(other, listen);
            daemon.stop();
        },
    );
}

#[test]
fn restart_recreates_saved_bans_and_clean_stop_removes_the_table() {
    in_netns(
        "restart_recreates_saved_bans_and_clean_stop_removes_the_table",
        || {
            let dir = tempfile::tempdir().unwrap();
            let listen = SocketAddr::new(lo4(1), free_port());
            let backend = echo_backend();
            let config = config(dir.path(), &[listen], backend, &[], NFTABLES);
            let daemon = Daemon::start(dir.path(), &config);
            daemon.admin(&["bans", "add", "127.0.0.5", "--for", "2h"]);
            daemon.admin(&["bans", "add", "198.51.100.0/24"]);
            wait_element(TABLE, "ban4", "127.0.0.5");
            daemon.stop();
            assert!(!table_exists(TABLE), "a clean stop deletes the table");

            let daemon = Daemon::start(dir.path(), &config);
            let element = wait_element(TABLE, "ban4", "127.0.0.5");
            let ban_end = daemon.ban_expiry("127.0.0.5/32").unwrap();
            assert!(
                element.expires_at.abs_diff(ban_end) <= 2,
                "{element:?} vs a ban ending at {ban_end}"
            );
            wait_element(TABLE, "net4", "198.51.100.0/24");
            assert_dropped(lo4(5), listen);

            // After a crash the table stays; the next start replaces it (one
            // table, the same elements, no duplicate).
            daemon.crash();
            assert!(table_exists(TABLE));
            let daemon = Daemon::start(dir.path(), &config);
            let tables = run("nft", &["list", "tables"]);
            assert_eq!(tables.matches("table inet sniroute").count(), 1, "{tables}");
            assert_eq!(set_elements(TABLE, "ban4").unwrap().len(), 1);
            assert_eq!(daemon.metric("sniroute_firewall_syncs_total"), Some(1.0));
            daemon.stop();
            assert!(!table_exists(TABLE));
        },
    );
}

#[test]
fn a_flushed_ruleset_is_repaired_within_10_seconds() {
    in_netns("a_flushed_ruleset_is_repaired_within_10_seconds", || {
        let dir = tempfile::tempdir().unwrap();
        let listen = SocketAddr::new(lo4(1), free_port());
        let config = config(dir.path(), &[listen], echo_backend(), &[], NFTABLES);
        let daemon = Daemon::start(dir.path(), &config);
        send_unknown(lo4(2), listen);
        wait_element(TABLE, "ban4", "127.0.0.2");

        run("nft", &["flush", "ruleset"]);
        let flushed = Instant::now();
        assert!(!table_exists(TABLE));
        wait_element(TABLE, "ban4", "127.0.0.2");
        let took = flushed.elapsed();
        assert!(took <= Duration::from_secs(10), "repaired after {took:?}");
        assert_dropped(lo4(2), listen);
        assert_eq!(daemon.metric("sniroute_firewall_syncs_total"), Some(2.0));
        daemon.stop();
    });
}

#[test]
fn ignored_addresses_never_reach_the_kernel() {
    in_netns("ignored_addresses_never_reach_the_kernel", || {
        let dir = tempfile::tempdir().unwrap();
        // A ban saved before 127.0.0.9 was added to ban.ignore.
        let saved = format!(
            r#"{{"version":1,"bans":[{{"net":"127.0.0.9/32","reason":"unknown_sni","strikes":1,"banned_at":{0},"expires_at":{1}}}]}}"#,
            now(),
            now() + 3600
        );
        std::fs::write(dir.path().join("bans.json"), saved).unwrap();
        let listen = SocketAddr::new(lo4(1), free_port());
        let config = config(
            dir.path(),
            &[listen],
            echo_backend(),
            &["127.0.0.9"],
            NFTABLES,
        );
        let daemon = Daemon::start(dir.path(), &config);
        assert!(
            daemon.ban_expiry("127.0.0.9/32").is_some(),
            "the saved ban is in force"
        );
        // A range over an ignored address: enforced in user space only.
        daemon.admin(&["bans", "add", "127.0.0.0/24"]);
        daemon.admin(&["bans", "add", "127.0.1.7"]);
        wait_element(TABLE, "ban4", "127.0.1.7");
        let refused = daemon.cli(&["bans", "add", "127.0.0.9"]);
        assert!(!refused.status.success());

        let elements = all_elements(TABLE);
        assert_eq!(elements, vec!["127.0.1.7".to_string()]);
        assert!(routes(lo4(9), listen), "an ignored address routes");
        // The range still holds for others, in user space: accepted, closed.
        let mut stream = connect_from(lo4(7), listen, WAIT).expect("connect");
        let mut buf = [0u8; 8];
        let closed = std::io::Read::read(&mut stream, &mut buf);
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert_eq!(all_elements(TABLE), vec!["127.0.1.7".to_string()]);
        daemon.stop();
    });
}

#[test]
fn clients_behind_a_trusted_balancer_stay_out_of_the_kernel() {
    in_netns(
        "clients_behind_a_trusted_balancer_stay_out_of_the_kernel",
        || {
            let dir = tempfile::tempdir().unwrap();
            let listen = SocketAddr::new(lo4(1), free_port());
            let text = config(dir.path(), &[listen], echo_backend(), &[], NFTABLES)
                + "\n[proxy_protocol]\naccept_from = [\"127.0.0.50\"]\n";
            let daemon = Daemon::start(dir.path(), &text);
            // The balancer names a client asking for an unknown name: the client
            // is banned, in user space only (the kernel only sees the balancer).
            let mut stream = connect_from(lo4(50), listen, WAIT).expect("connect");
            let mut bytes = format!(
                "PROXY TCP4 127.0.0.60 {} 40000 {}\r\n",
                listen.ip(),
                listen.port()
            )
            .into_bytes();
            bytes.extend(hello(UNKNOWN));
            std::io::Write::write_all(&mut stream, &bytes).unwrap();
            let mut buf = [0u8; 8];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            wait_until("the client behind the balancer to be banned", WAIT, || {
                daemon.ban_expiry("127.0.0.60/32")
            });
            // A direct offender still goes to the kernel, after the first ban.
            send_unknown(lo4(2), listen);
            wait_element(TABLE, "ban4", "127.0.0.2");
            assert_eq!(all_elements(TABLE), vec!["127.0.0.2".to_string()]);
            daemon.stop();
        },
    );
}

#[test]
fn reload_re_renders_the_chain_for_new_ports_and_scope() {
    in_netns(
        "reload_re_renders_the_chain_for_new_ports_and_scope",
        || {
            let dir = tempfile::tempdir().unwrap();
            let first = SocketAddr::new(lo4(1), free_port());
            let second = SocketAddr::new(lo4(1), free_port());
            let backend = echo_backend();
            let daemon = Daemon::start(
                dir.path(),
                &config(dir.path(), &[first], backend, &[], NFTABLES),
            );
            daemon.admin(&["bans", "add", "127.0.0.2"]);
            wait_element(TABLE, "ban4", "127.0.0.2");
            let chain = || run("nft", &["list", "chain", "inet", TABLE, "input"]);
            assert!(chain().contains(&format!("tcp dport {} ", first.port())));

            // A new listen port: the chain drops on both.
            let text = config(dir.path(), &[first, second], backend, &[], NFTABLES);
            std::fs::write(&daemon.config, text).unwrap();
            daemon.admin(&["reload"]);
            let (low, high) = if first.port() < second.port() {
                (first.port(), second.port())
            } else {
                (second.port(), first.port())
            };
            let both = format!("tcp dport {{ {low}, {high} }} ");
            wait_until("the chain to name both ports", WAIT, || {
                chain().contains(&both).then_some(())
            });
            assert_dropped(lo4(2), second);
            assert_eq!(set_elements(TABLE, "ban4").unwrap().len(), 1);

            // scope = "all": no port match at all.
            let all = format!("{NFTABLES}scope = \"all\"\n");
            let text = config(dir.path(), &[first, second], backend, &[], &all);
            std::fs::write(&daemon.config, text).unwrap();
            daemon.admin(&["reload"]);
            wait_until("the chain to drop every port", WAIT, || {
                (!chain().contains("dport")).then_some(())
            });

            // Another table name: the old table goes, the new one holds the bans.
            let renamed = format!("{NFTABLES}table = \"sniroute2\"\n");
            let text = config(dir.path(), &[first, second], backend, &[], &renamed);
            std::fs::write(&daemon.config, text).unwrap();
            daemon.admin(&["reload"]);
            wait_element("sniroute2", "ban4", "127.0.0.2");
            wait_until("the old table to go", WAIT, || {
                (!table_exists(TABLE)).then_some(())
            });

            // backend = "none": the table goes, bans stay in user space.
            let text = config(dir.path(), &[first, second], backend, &[], "");
            std::fs::write(&daemon.config, text).unwrap();
            daemon.admin(&["reload"]);
            wait_until("the table to go", WAIT, || {
                (!table_exists("sniroute2")).then_some(())
            });
            let status = daemon.admin(&["status"]);
            assert!(status.lines().any(|l| l == "Firewall: none"), "{status}");
            daemon.stop();
        },
    );
}

#[test]
fn without_privilege_start_fails_with_what_is_needed() {
    in_netns("without_privilege_start_fails_with_what_is_needed", || {
        let dir = tempfile::tempdir().unwrap();
        // Readable by the unprivileged user the daemon runs as.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let listen = SocketAddr::new(lo4(1), free_port());
        let config = config(dir.path(), &[listen], echo_backend(), &[], NFTABLES)
            .replace(&dir.path().join("bans.json").display().to_string(), "")
            .replace(&dir.path().join("admin.sock").display().to_string(), "");
        let wrapper = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ];
        let mut daemon = Daemon::spawn_as(dir.path(), &config, &wrapper);
        let status = daemon.wait_exit();
        assert!(!status.success());
        let stderr = daemon.stderr();
        assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
        assert!(!table_exists(TABLE));
    });
}

/// The most exposure `systemd-analyze security` may rate the unit at with
/// the kernel-ban drop-in (the issue's bound).
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn the_systemd_drop_in_verifies_and_keeps_exposure_low() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    let nft = Path::new("/usr/sbin/nft");
    if !analyze.is_file() || !nft.is_file() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI installs systemd and nftables"
        );
        eprintln!("SKIPPED: systemd-analyze or nft is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let unit = std::fs::read_to_string(root.join("sniroute.service")).unwrap();
    let drop_in = std::fs::read_to_string(root.join("sniroute.service.d/nftables.conf")).unwrap();
    assert!(drop_in.contains("AmbientCapabilities=CAP_NET_ADMIN"));
    assert!(drop_in.contains("CapabilityBoundingSet=CAP_NET_ADMIN"));
    assert!(drop_in.contains("RestrictAddressFamilies=AF_NETLINK"));
    assert!(drop_in.contains("ExecStopPost=-/usr/sbin/nft delete table inet sniroute"));
    // A drop-in's [Service] lines add to the unit's, exactly as a second
    // [Service] section in the same file does (offline analysis reads one file).
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("sniroute.service");
    let unit = unit
        .replace("/usr/local/bin/sniroute", firewall_common::BIN)
        .replace("/usr/bin/sniroute", firewall_common::BIN);
    std::fs::write(&merged, format!("{unit}\n{drop_in}")).unwrap();

    let verify = Command::new(analyze)
        .arg("verify")
        .arg(&merged)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");

    let security = Command::new(analyze)
        .args(["security", "--offline=true"])
        .arg(&merged)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        report.contains("CapabilityBoundingSet=~CAP_NET_ADMIN"),
        "the drop-in's capability is seen:\n{report}"
    );
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for sniroute.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{report}"));
    eprintln!("systemd-analyze security with the drop-in: exposure {exposure}");
    assert!(exposure <= MAX_EXPOSURE, "exposure {exposure}:\n{report}");
}

/// Not about kernel bans, but it needs a namespace of its own too: on a host
/// without IPv6 (here: IPv6 switched off in the namespace), a config that
/// listens on both loopbacks, like the shipped one, starts on the IPv4 one
/// and says why it skipped the other; with only IPv6 listeners it refuses
/// to start.
#[test]
fn without_ipv6_a_dual_stack_config_starts_on_ipv4() {
    in_netns("without_ipv6_a_dual_stack_config_starts_on_ipv4", || {
        for conf in ["all", "default", "lo"] {
            let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
            std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let v4 = SocketAddr::new(lo4(1), port);
        let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        let none = "backend = \"none\"\n";
        let both = config(dir.path(), &[v4, v6], echo_backend(), &[], none);
        let daemon = Daemon::start(dir.path(), &both);
        assert!(routes(lo4(3), v4), "the IPv4 listener routes");
        let said = format!("not listening on {v6}: this host has no IPv6");
        assert!(daemon.stderr().contains(&said), "{}", daemon.stderr());
        daemon.stop();

        let only_v6 = tempfile::tempdir().unwrap();
        let v6_only = config(only_v6.path(), &[v6], echo_backend(), &[], none);
        let mut daemon = Daemon::spawn(only_v6.path(), &v6_only);
        assert!(
            !daemon.wait_exit().success(),
            "no listener at all is an error"
        );
        assert!(
            daemon.stderr().contains("no listener could be bound"),
            "{}",
            daemon.stderr()
        );
    });
}
