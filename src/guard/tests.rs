//! Guard behaviour on a fake clock: strike windows, bans, expiry, ignore,
//! IPv6 grouping, manual CIDR bans, rate limits, persistence, reload.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::clock::FakeClock;
use super::*;

/// 2023-11-14T22:13:20Z: any fixed wall-clock start will do.
const START: u64 = 1_700_000_000;

fn ban_config(max_retry: u32) -> BanConfig {
    BanConfig {
        enabled: true,
        max_retry,
        find_time: Duration::from_secs(3600),
        ban_time: Duration::from_secs(86_400),
        ignore: vec![
            "127.0.0.1/32".parse().unwrap(),
            "2001:db8::/48".parse().unwrap(),
        ],
        strike_on: vec![Outcome::UnknownSni, Outcome::NoSni, Outcome::NotTls],
        ipv6_prefix: 64,
        state_file: None,
    }
}

const NO_LIMIT: RateLimitConfig = RateLimitConfig {
    per_ip: 0,
    burst: 0,
};

fn guard(ban: &BanConfig, rate: &RateLimitConfig) -> (Guard, FakeClock) {
    let clock = FakeClock::new(START);
    (
        Guard::with_clock(ban, rate, Arc::new(clock.clone())).unwrap(),
        clock,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn three_strikes_within_find_time_ban_and_the_ban_ends_after_ban_time() {
    let (g, clock) = guard(&ban_config(3), &NO_LIMIT);
    let a = ip("203.0.113.7");
    g.strike(a, Outcome::UnknownSni);
    g.strike(a, Outcome::NoSni);
    assert_eq!(g.admit(a), Ok(()));
    g.strike(a, Outcome::Routed); // not in strike_on
    assert_eq!(g.admit(a), Ok(()));
    g.strike(a, Outcome::NotTls);
    assert_eq!(g.admit(a), Err(Outcome::Banned));
    assert_eq!((g.currently_banned(), g.total_banned()), (1, 1));
    let bans = g.bans();
    assert_eq!(bans[0].net, "203.0.113.7/32");
    assert_eq!((bans[0].reason.as_str(), bans[0].strikes), ("not_tls", 3));
    assert_eq!(bans[0].expires_at, START + 86_400);

    clock.advance(Duration::from_secs(86_399));
    assert_eq!(g.admit(a), Err(Outcome::Banned));
    clock.advance(Duration::from_secs(1));
    // Expired before housekeeping ran: already admitted.
    assert_eq!(g.admit(a), Ok(()));
    g.housekeeping();
    assert_eq!((g.currently_banned(), g.total_banned()), (0, 1));
    assert!(g.bans.is_empty());
}

#[test]
fn strikes_older_than_find_time_do_not_count() {
    let (g, clock) = guard(&ban_config(3), &NO_LIMIT);
    let a = ip("198.51.100.4");
    g.strike(a, Outcome::UnknownSni);
    g.strike(a, Outcome::UnknownSni);
    clock.advance(Duration::from_secs(3600));
    g.strike(a, Outcome::UnknownSni);
    assert_eq!(g.admit(a), Ok(()));
    g.strike(a, Outcome::UnknownSni);
    assert_eq!(g.admit(a), Ok(()));
    g.strike(a, Outcome::UnknownSni);
    assert_eq!(g.admit(a), Err(Outcome::Banned));
}

#[test]
fn housekeeping_forgets_stale_strikes() {
    let (g, clock) = guard(&ban_config(3), &NO_LIMIT);
    g.strike(ip("198.51.100.4"), Outcome::UnknownSni);
    assert_eq!(g.strike_sources(), 1);
    // Forgotten within two find_times (one generation rotation each).
    clock.advance(Duration::from_secs(3600));
    g.housekeeping();
    clock.advance(Duration::from_secs(3600));
    g.housekeeping();
    assert_eq!(g.strike_sources(), 0);
}

#[test]
fn outcomes_are_counted_for_status() {
    let (g, _) = guard(&ban_config(3), &NO_LIMIT);
    g.strike(ip("192.0.2.1"), Outcome::Routed);
    g.strike(ip("192.0.2.1"), Outcome::Routed);
    g.strike(ip("192.0.2.1"), Outcome::Banned);
    let counts = g.outcome_counts();
    assert_eq!(counts[Outcome::Routed.index()], (Outcome::Routed, 2));
    assert_eq!(counts[Outcome::Banned.index()], (Outcome::Banned, 1));
    assert_eq!(counts[Outcome::NoSni.index()], (Outcome::NoSni, 0));
}

#[test]
fn ignored_addresses_are_never_struck_banned_or_limited() {
    let rate = RateLimitConfig {
        per_ip: 1,
        burst: 1,
    };
    let (g, _) = guard(&ban_config(1), &rate);
    for addr in ["127.0.0.1", "2001:db8:0:1::5", "::ffff:127.0.0.1"] {
        g.strike(ip(addr), Outcome::UnknownSni);
        for _ in 0..5 {
            assert_eq!(g.admit(ip(addr)), Ok(()), "{addr}");
        }
        assert!(g.ban_manual(addr, None).unwrap_err().contains("ban.ignore"));
    }
    assert_eq!(g.total_banned(), 0);
    // A prefix that merely contains an ignored address is accepted; the
    // ignored address inside stays allowed.
    g.ban_manual("127.0.0.0/8", None).unwrap();
    assert_eq!(g.admit(ip("127.0.0.2")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("127.0.0.1")), Ok(()));
}

#[test]
fn disabled_means_no_strikes_but_manual_bans_hold() {
    let mut cfg = ban_config(1);
    cfg.enabled = false;
    let (g, _) = guard(&cfg, &NO_LIMIT);
    g.strike(ip("203.0.113.9"), Outcome::UnknownSni);
    assert_eq!(g.admit(ip("203.0.113.9")), Ok(()));
    g.ban_manual("203.0.113.9", None).unwrap();
    assert_eq!(g.admit(ip("203.0.113.9")), Err(Outcome::Banned));
}

#[test]
fn ipv6_is_banned_per_64_and_v4_mapped_as_ipv4() {
    let (g, _) = guard(&ban_config(2), &NO_LIMIT);
    g.strike(ip("2001:db9:1:2::1"), Outcome::UnknownSni);
    g.strike(ip("2001:db9:1:2:ffff::77"), Outcome::UnknownSni);
    assert_eq!(g.admit(ip("2001:db9:1:2:abcd::1")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("2001:db9:1:3::1")), Ok(()));
    assert_eq!(g.bans()[0].net, "2001:db9:1:2::/64");

    g.strike(ip("::ffff:198.51.100.4"), Outcome::NotTls);
    g.strike(ip("198.51.100.4"), Outcome::NotTls);
    assert_eq!(g.admit(ip("198.51.100.4")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("::ffff:198.51.100.4")), Err(Outcome::Banned));
    assert!(g.bans().iter().any(|b| b.net == "198.51.100.4/32"));
}

#[test]
fn manual_cidr_bans_cover_their_addresses_and_can_be_removed() {
    let (g, clock) = guard(&ban_config(1), &NO_LIMIT);
    let ban = g
        .ban_manual("10.0.0.0/8", Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        (ban.net.as_str(), ban.reason.as_str()),
        ("10.0.0.0/8", "manual")
    );
    g.ban_manual("2001:db9:ff00::/40", None).unwrap();
    g.ban_manual("2001:db9:1:2::99", None).unwrap(); // bare IPv6: its /64
    assert_eq!(g.admit(ip("10.20.30.40")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("::ffff:10.1.1.1")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("11.0.0.1")), Ok(()));
    assert_eq!(g.admit(ip("2001:db9:ff12::1")), Err(Outcome::Banned));
    assert_eq!(g.admit(ip("2001:db9:1:2::1")), Err(Outcome::Banned));
    assert_eq!(g.total_banned(), 3);

    // Removing by a bare address lifts every ban covering it.
    let removed = g.unban_manual("2001:db9:ff12::1").unwrap();
    assert_eq!(removed[0].net, "2001:db9:ff00::/40");
    assert_eq!(g.admit(ip("2001:db9:ff12::1")), Ok(()));
    assert!(
        g.unban_manual("2001:db9:ff12::1")
            .unwrap_err()
            .contains("not banned")
    );
    assert!(g.unban_manual("10.0.0.0/9").is_err()); // exact prefix only
    assert!(
        g.unban_manual("nonsense")
            .unwrap_err()
            .contains("not an address")
    );
    assert!(
        g.ban_manual("nonsense", None)
            .unwrap_err()
            .contains("not an address")
    );

    clock.advance(Duration::from_secs(60));
    assert_eq!(g.admit(ip("10.20.30.40")), Ok(()));
}

#[test]
fn rate_limit_cuts_one_source_after_its_burst_only() {
    let rate = RateLimitConfig {
        per_ip: 20,
        burst: 40,
    };
    let (g, clock) = guard(&ban_config(1), &rate);
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for _ in 0..40 {
        assert_eq!(g.admit(a), Ok(()));
    }
    assert_eq!(g.admit(a), Err(Outcome::RateLimited));
    assert_eq!(g.admit(b), Ok(()));
    // Refilled at per_ip per second.
    clock.advance(Duration::from_millis(50));
    assert_eq!(g.admit(a), Ok(()));
    assert_eq!(g.admit(a), Err(Outcome::RateLimited));
    // IPv6 sources share a bucket per /64.
    for i in 0..40 {
        assert_eq!(g.admit(ip(&format!("2001:db9::{i:x}"))), Ok(()));
    }
    assert_eq!(g.admit(ip("2001:db9::ffff")), Err(Outcome::RateLimited));
    assert_eq!(g.rate_limit_keys(), 3);
    clock.advance(Duration::from_secs(5));
    g.housekeeping();
    assert_eq!(g.rate_limit_keys(), 0);
}

#[test]
fn reload_keeps_bans_strikes_and_unchanged_buckets() {
    let rate = RateLimitConfig {
        per_ip: 1,
        burst: 2,
    };
    let (g, _) = guard(&ban_config(2), &rate);
    g.strike(ip("203.0.113.1"), Outcome::UnknownSni);
    g.ban_manual("203.0.113.2", None).unwrap();
    assert_eq!(g.admit(ip("192.0.2.1")), Ok(()));
    assert_eq!(g.admit(ip("192.0.2.1")), Ok(()));
    g.reconfigure(&ban_config(2), &rate);
    assert_eq!(g.admit(ip("192.0.2.1")), Err(Outcome::RateLimited));
    assert_eq!(g.admit(ip("203.0.113.2")), Err(Outcome::Banned));
    g.strike(ip("203.0.113.1"), Outcome::UnknownSni);
    assert_eq!(g.admit(ip("203.0.113.1")), Err(Outcome::Banned));
    // New rate settings: fresh buckets; per_ip = 0: no limit.
    g.reconfigure(&ban_config(2), &NO_LIMIT);
    for _ in 0..10 {
        assert_eq!(g.admit(ip("192.0.2.1")), Ok(()));
    }
}

fn with_state(path: &Path) -> BanConfig {
    BanConfig {
        state_file: Some(path.to_path_buf()),
        ..ban_config(1)
    }
}

#[test]
fn bans_and_unbans_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bans.json");
    let (g, clock) = guard(&with_state(&path), &NO_LIMIT);
    g.strike(ip("203.0.113.7"), Outcome::UnknownSni);
    g.ban_manual("10.0.0.0/8", None).unwrap();
    g.ban_manual("192.0.2.99", Some(Duration::from_secs(10)))
        .unwrap();
    g.ban_manual("198.51.100.1", None).unwrap();
    g.unban_manual("198.51.100.1").unwrap();
    assert!(g.is_dirty());
    g.persist().unwrap();
    assert!(!g.is_dirty());

    clock.advance(Duration::from_secs(10));
    let g2 = Guard::with_clock(&with_state(&path), &NO_LIMIT, Arc::new(clock.clone())).unwrap();
    let nets: Vec<String> = g2.bans().into_iter().map(|b| b.net).collect();
    assert_eq!(nets, vec!["10.0.0.0/8", "203.0.113.7/32"]);
    assert_eq!(g2.admit(ip("10.1.2.3")), Err(Outcome::Banned));
    assert_eq!(g2.admit(ip("198.51.100.1")), Ok(()));
    assert_eq!((g2.currently_banned(), g2.total_banned()), (2, 2));
    // The expired ban that was dropped on load is written out next time.
    assert!(g2.is_dirty());
}

#[test]
fn corrupt_state_file_is_kept_aside_and_the_guard_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bans.json");
    std::fs::write(&path, "{ not json").unwrap();
    let (g, _) = guard(&with_state(&path), &NO_LIMIT);
    assert!(g.bans().is_empty());
    assert!(
        dir.path()
            .join(format!("bans.json{}", super::state::aside_suffix(START)))
            .exists()
    );
    g.ban_manual("203.0.113.7", None).unwrap();
    g.persist().unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("203.0.113.7/32")
    );
}

#[test]
fn housekeeping_thread_persists_a_ban_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bans.json");
    let g = Arc::new(Guard::new(&with_state(&path), &NO_LIMIT).unwrap());
    let hk = g.spawn_housekeeping().unwrap();
    assert!(g.spawn_housekeeping().is_err());
    let start = std::time::Instant::now();
    g.ban_manual("203.0.113.7", None).unwrap();
    while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("203.0.113.7/32")) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not persisted within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    g.unban_manual("203.0.113.7").unwrap();
    hk.stop();
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("203.0.113.7")
    );
}

#[test]
fn sub_second_windows_and_bans_are_not_rounded_away() {
    let mut ban = ban_config(2);
    ban.find_time = Duration::from_millis(500);
    ban.ban_time = Duration::from_millis(1500);
    let (g, clock) = guard(&ban, &NO_LIMIT);
    let a = ip("203.0.113.8");
    // Strikes 20 ms apart across a second boundary count together.
    clock.advance(Duration::from_millis(990));
    g.strike(a, Outcome::UnknownSni);
    clock.advance(Duration::from_millis(20));
    g.strike(a, Outcome::UnknownSni);
    assert_eq!(g.admit(a), Err(Outcome::Banned));
    // The ban lasts at least ban_time, and not much more.
    clock.advance(Duration::from_millis(1490));
    g.housekeeping();
    assert_eq!(g.admit(a), Err(Outcome::Banned));
    clock.advance(Duration::from_millis(1000));
    g.housekeeping();
    assert_eq!(g.admit(a), Ok(()));

    // Strikes 600 ms apart fall outside a 500 ms window.
    let b = ip("203.0.113.9");
    g.strike(b, Outcome::UnknownSni);
    clock.advance(Duration::from_millis(600));
    g.strike(b, Outcome::UnknownSni);
    assert_eq!(g.admit(b), Ok(()));
}

#[test]
fn every_ban_change_is_told_to_subscribers_and_bans_in_force_lists_them() {
    let (g, clock) = guard(&ban_config(1), &NO_LIMIT);
    let mut events = g.subscribe();
    let net = |s: &str| s.parse::<IpNet>().unwrap();

    g.strike(ip("203.0.113.7"), Outcome::UnknownSni);
    g.strike(ip("2001:db8:ff:1::9"), Outcome::NoSni);
    g.ban_manual("198.51.100.0/24", Some(Duration::from_secs(60)))
        .unwrap();
    let expires = START + 86_400;
    let added = |n: &str, expires_at, origin| BanEvent::Added {
        net: net(n),
        expires_at,
        origin,
        kernel: true,
    };
    assert_eq!(
        events.try_recv().unwrap(),
        added("203.0.113.7/32", expires, Origin::Strike)
    );
    assert_eq!(
        events.try_recv().unwrap(),
        added("2001:db8:ff:1::/64", expires, Origin::Strike)
    );
    assert_eq!(
        events.try_recv().unwrap(),
        added("198.51.100.0/24", START + 60, Origin::Manual)
    );
    let mut listed: Vec<_> = g.bans_in_force().iter().map(|b| b.net).collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            net("198.51.100.0/24"),
            net("203.0.113.7/32"),
            net("2001:db8:ff:1::/64")
        ]
    );

    g.unban_manual("203.0.113.7").unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        BanEvent::Lifted {
            net: net("203.0.113.7/32"),
            origin: Origin::Strike
        }
    );
    clock.advance(Duration::from_secs(61));
    g.housekeeping();
    assert_eq!(
        events.try_recv().unwrap(),
        BanEvent::Expired {
            net: net("198.51.100.0/24"),
            origin: Origin::Manual
        }
    );
    assert!(events.try_recv().is_err());
    assert_eq!(g.bans_in_force().len(), 1);
}

#[test]
fn a_client_seen_through_a_balancer_is_banned_outside_the_kernel_and_stays_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bans.json");
    let (g, clock) = guard(&with_state(&path), &NO_LIMIT);
    let mut events = g.subscribe();
    let net = |s: &str| s.parse::<IpNet>().unwrap();

    // A trusted balancer's own connections are counted, never struck.
    g.count(Outcome::NotTls);
    assert_eq!(g.strike_sources(), 0);
    assert!(events.try_recv().is_err());
    assert_eq!(g.outcome_counts()[Outcome::NotTls.index()].1, 1);

    g.strike_proxied(ip("203.0.113.7"), Outcome::UnknownSni);
    g.strike(ip("198.51.100.4"), Outcome::UnknownSni);
    assert_eq!(g.outcome_counts()[Outcome::UnknownSni.index()].1, 2);
    let added = |n: &str, kernel| BanEvent::Added {
        net: net(n),
        expires_at: START + 86_400,
        origin: Origin::Strike,
        kernel,
    };
    assert_eq!(events.try_recv().unwrap(), added("203.0.113.7/32", false));
    assert_eq!(events.try_recv().unwrap(), added("198.51.100.4/32", true));
    assert_eq!(g.admit(ip("203.0.113.7")), Err(Outcome::Banned));
    let kernel_of = |g: &Guard| {
        let mut in_force: Vec<_> = g
            .bans_in_force()
            .iter()
            .map(|b| (b.net.to_string(), b.kernel))
            .collect();
        in_force.sort();
        in_force
    };
    let want = vec![
        ("198.51.100.4/32".to_string(), true),
        ("203.0.113.7/32".to_string(), false),
    ];
    assert_eq!(kernel_of(&g), want);
    let listed: Vec<bool> = g.bans().iter().map(|b| b.kernel).collect();
    assert_eq!(listed, [true, false]);

    // The flag survives a restart; only the exception is written.
    g.persist().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("\"kernel\":false").count(), 1, "{text}");
    assert!(!text.contains("\"kernel\":true"), "{text}");
    let g2 = Guard::with_clock(&with_state(&path), &NO_LIMIT, Arc::new(clock.clone())).unwrap();
    assert_eq!(kernel_of(&g2), want);

    // A manual ban of the same address is the admin's word: in the kernel.
    g2.ban_manual("203.0.113.7", None).unwrap();
    assert!(g2.bans_in_force().iter().all(|b| b.kernel));
}

#[test]
fn a_state_file_from_before_the_kernel_flag_reads_as_kernel_bans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bans.json");
    let old = format!(
        "{{\"version\":1,\"bans\":[\n{{\"net\":\"203.0.113.7/32\",\"reason\":\"unknown_sni\",\"strikes\":1,\"banned_at\":{START},\"expires_at\":{}}}\n]}}\n",
        START + 60
    );
    std::fs::write(&path, old).unwrap();
    let (g, _clock) = guard(&with_state(&path), &NO_LIMIT);
    let in_force = g.bans_in_force();
    assert_eq!(in_force.len(), 1);
    assert!(in_force[0].kernel);
}
