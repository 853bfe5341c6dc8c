//! The guard and its admin socket end to end, in process: a real `Guard`, a
//! real `AdminServer` on a temp socket path, and the real client functions.
//! Plus the memory bound: a million distinct sources cannot grow the guard
//! without limit.

// Helpers outside #[test] functions panic on purpose: they are test setup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sniroute::admin::{self, AdminServer, Request, Response};
use sniroute::config::{BanConfig, RateLimitConfig};
use sniroute::guard::Guard;
use sniroute::guard::clock::FakeClock;
use sniroute::guard::strikes::STRIKE_CAP;
use sniroute::outcome::Outcome;
use sniroute::server::Control;
use tokio::sync::mpsc;

fn ban_config(max_retry: u32) -> BanConfig {
    BanConfig {
        enabled: true,
        max_retry,
        find_time: Duration::from_secs(3600),
        ban_time: Duration::from_secs(365 * 86_400),
        ignore: vec![
            "127.0.0.1/32".parse().unwrap(),
            "2001:db8::/48".parse().unwrap(),
        ],
        strike_on: vec![Outcome::UnknownSni, Outcome::NoSni, Outcome::NotTls],
        ipv6_prefix: 64,
        state_file: None,
    }
}

const RATE: RateLimitConfig = RateLimitConfig {
    per_ip: 20,
    burst: 40,
};

/// A running admin server on a fresh socket path; its reload channel answers
/// like the daemon's lifecycle loop would: "reloaded" or the config's errors.
struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    guard: Arc<Guard>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_daemon(reload_ok: bool) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/admin.sock");
    let guard = Arc::new(Guard::new(&ban_config(1), &RATE).unwrap());
    let server = AdminServer::bind(&socket).unwrap();
    let (tx, mut rx) = mpsc::channel::<Control>(1);
    tokio::spawn(async move {
        while let Some(Control::Reload(Some(reply))) = rx.recv().await {
            let outcome = if reload_ok {
                Ok("config reloaded: 2 routes".to_owned())
            } else {
                Err("sniroute.toml:3:1: unknown key `lisen`".to_owned())
            };
            let _ = reply.send(outcome);
        }
    });
    let task = tokio::spawn(server.serve(guard.clone(), Some(tx)));
    Daemon {
        _dir: dir,
        socket,
        guard,
        task,
    }
}

async fn ask(socket: &Path, req: Request) -> Response {
    admin::request(socket, &req).await.unwrap()
}

#[tokio::test]
async fn status_and_bans_over_the_admin_socket() {
    let d = spawn_daemon(true);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    d.guard
        .strike("192.0.2.1".parse().unwrap(), Outcome::Routed);
    let Response::Status(s) = ask(&d.socket, Request::Status).await else {
        panic!()
    };
    assert_eq!((s.currently_banned, s.total_banned), (0, 0));
    assert_eq!(s.connections["routed"], 1);
    assert_eq!(s.connections.len(), Outcome::ALL.len());

    let add = Request::BansAdd {
        addr: "203.0.113.7".into(),
        duration: Some("1h".into()),
        force: false,
    };
    let Response::Done { message, bans } = ask(&d.socket, add).await else {
        panic!()
    };
    assert!(
        message.starts_with("banned 203.0.113.7/32 until "),
        "{message}"
    );
    assert_eq!(bans[0].expires_at - bans[0].banned_at, 3600);
    let add = Request::BansAdd {
        addr: "10.0.0.0/8".into(),
        duration: None,
        force: false,
    };
    assert!(matches!(ask(&d.socket, add).await, Response::Done { .. }));
    assert_eq!(
        d.guard.admit("10.9.8.7".parse().unwrap()),
        Err(Outcome::Banned)
    );

    let list = ask(&d.socket, Request::BansList).await;
    let Response::Bans { bans } = &list else {
        panic!()
    };
    let nets: Vec<&str> = bans.iter().map(|b| b.net.as_str()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "203.0.113.7/32"]);
    assert!(bans.iter().all(|b| b.reason == "manual"));
    let table = list.human();
    assert!(
        table.starts_with("ADDRESS") && table.contains("203.0.113.7/32"),
        "{table}"
    );

    let status = ask(&d.socket, Request::Status).await;
    let text = status.human();
    assert!(text.lines().any(|l| l == "Currently banned: 2"), "{text}");
    assert!(text.lines().any(|l| l == "Total banned: 2"), "{text}");

    let remove = Request::BansRemove {
        addr: "203.0.113.7".into(),
    };
    let Response::Done { message, .. } = ask(&d.socket, remove.clone()).await else {
        panic!()
    };
    assert_eq!(message, "unbanned 203.0.113.7/32");
    assert!(ask(&d.socket, remove).await.is_refused());
    let Response::Status(s) = ask(&d.socket, Request::Status).await else {
        panic!()
    };
    assert_eq!((s.currently_banned, s.total_banned), (1, 2));
    d.task.abort();
}

#[tokio::test]
async fn banning_an_ignored_address_is_refused_with_a_reason() {
    let d = spawn_daemon(true);
    for addr in ["127.0.0.1", "2001:db8:0:7::1", "2001:db8::/56"] {
        let add = Request::BansAdd {
            addr: addr.into(),
            duration: None,
            force: false,
        };
        let Response::Refused { message } = ask(&d.socket, add).await else {
            panic!("{addr}")
        };
        assert!(message.contains("ban.ignore"), "{message}");
    }
    let bad = Request::BansAdd {
        addr: "example.org".into(),
        duration: None,
        force: false,
    };
    assert!(ask(&d.socket, bad).await.is_refused());
    let bad = Request::BansAdd {
        addr: "192.0.2.1".into(),
        duration: Some("soon".into()),
        force: false,
    };
    assert!(ask(&d.socket, bad).await.is_refused());
    assert_eq!(d.guard.total_banned(), 0);
    d.task.abort();
}

#[tokio::test]
async fn reload_returns_the_daemons_answer() {
    let ok = spawn_daemon(true);
    let Response::Done { message, .. } = ask(&ok.socket, Request::Reload).await else {
        panic!()
    };
    assert_eq!(message, "config reloaded: 2 routes");
    let refused = spawn_daemon(false);
    let Response::Refused { message } = ask(&refused.socket, Request::Reload).await else {
        panic!()
    };
    assert!(message.contains("unknown key"), "{message}");
}

#[tokio::test]
async fn a_bad_request_line_gets_a_refusal() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d = spawn_daemon(true);
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(b"{\"cmd\":\"format_disk\"}\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    let resp: Response = serde_json::from_str(&line).unwrap();
    assert!(resp.is_refused(), "{line}");
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // A crashed daemon leaves its socket file behind, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let err = admin::request(&socket, &Request::Status).await.unwrap_err();
    assert!(err.to_string().contains("Connection refused"), "{err}");

    let server = AdminServer::bind(&socket).unwrap();
    let guard = Arc::new(Guard::new(&ban_config(1), &RATE).unwrap());
    let task = tokio::spawn(server.serve(guard, None));
    assert!(matches!(
        ask(&socket, Request::Status).await,
        Response::Status(_)
    ));
    assert!(ask(&socket, Request::Reload).await.is_refused());

    let err = AdminServer::bind(&socket).err().unwrap().to_string();
    assert!(err.contains("already running"), "{err}");
    // A regular file is never removed.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let err = AdminServer::bind(&file).err().unwrap().to_string();
    assert!(err.contains("not a socket"), "{err}");

    // Stopping the server removes its socket file.
    task.abort();
    let _ = task.await;
    assert!(!socket.exists());
}

#[tokio::test]
async fn client_error_is_clear_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let err = admin::request(&socket, &Request::Status).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach sniroute at {}: No such file or directory (is the daemon running?)",
            socket.display()
        )
    );
    assert!(
        admin::run_command(&socket, &Request::Status, false)
            .await
            .is_err()
    );
}

/// Resident set size of this process, from /proc/self/status, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
}

/// A million distinct sources each strike once and open one connection: the
/// strike table stays at its cap and the rate limiter forgets them all once
/// their buckets are full again. Then the ban table is filled to a million.
/// Prints the cost per entry; bounds are twice the measured figures.
#[test]
fn a_million_sources_do_not_grow_memory_without_bound() {
    const SOURCES: u32 = 1_000_000;
    let clock = FakeClock::new(1_700_000_000);
    let guard = Guard::with_clock(&ban_config(3), &RATE, Arc::new(clock.clone())).unwrap();

    let before = rss();
    for i in 0..SOURCES {
        guard.strike(v4(i), Outcome::UnknownSni);
    }
    let strikes = rss().saturating_sub(before);
    let held = guard.strike_sources();
    assert!(
        (STRIKE_CAP / 2..=STRIKE_CAP).contains(&held),
        "{held} sources held"
    );
    println!(
        "strike table: {held} sources held (cap {STRIKE_CAP}), RSS +{} KiB = {} bytes per source at the cap",
        strikes / 1024,
        strikes / STRIKE_CAP as u64
    );
    assert!(
        strikes < 64 << 20,
        "strike table grew RSS by {strikes} bytes"
    );

    let before = rss();
    for i in 0..SOURCES {
        assert_eq!(guard.admit(v4(i)), Ok(()));
    }
    let limiter = rss().saturating_sub(before);
    println!(
        "rate limiter: {} keys, RSS +{} KiB = {} bytes per key before retain_recent",
        guard.rate_limit_keys(),
        limiter / 1024,
        limiter / u64::from(SOURCES)
    );
    clock.advance(Duration::from_secs(3));
    guard.housekeeping();
    assert_eq!(guard.rate_limit_keys(), 0);

    let before = rss();
    for i in 0..SOURCES {
        let ip = Ipv6Addr::from((0x2001_0db9_u128 << 96) | (u128::from(i) << 64));
        guard.ban_manual(&ip.to_string(), None).unwrap();
    }
    let bans = rss().saturating_sub(before);
    assert_eq!(guard.currently_banned(), u64::from(SOURCES));
    println!(
        "ban table: {} bans, RSS +{} KiB = {} bytes per ban",
        SOURCES,
        bans / 1024,
        bans / u64::from(SOURCES)
    );
    assert!(bans < 256 << 20, "ban table grew RSS by {bans} bytes");
}
