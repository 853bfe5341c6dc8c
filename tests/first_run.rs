//! A first run that cannot lock its user out, over real sockets: with the
//! default `ban.ignore` a no-SNI or unknown-SNI connection from 127.0.0.1 or
//! ::1 is closed and counted but never banned, while 127.0.0.2 with an
//! explicit `ignore = []` is; `bans add` of a huge prefix needs `--force`;
//! and no raw epoch appears anywhere a person reads (the daemon's log,
//! `status`, `bans list`, `bans add`, the access log).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;
use sniroute::admin::{self, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

/// One connection from `src` to `to`: writes `bytes`, half-closes, reads to
/// the end. Returns the client's address (to find its log line) and what came back.
async fn probe(to: SocketAddr, src: IpAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let socket = match src {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let mut s = tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect {src} -> {to} timed out"))
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    let local = s.local_addr().unwrap();
    // A banned source is closed before a byte is read: ignore write errors.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    (local, read_all(&mut s).await)
}

/// `[ban]` on, as configured by `ban` (nothing else), in memory; an admin
/// socket in `dir`; one route to an echo backend.
fn body(echo: SocketAddr, dir: &Path, ban: &str) -> String {
    format!(
        "[[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{echo}\"\n\n\
         [ban]\nenabled = true\nstate_file = \"\"\n{ban}\n\n\
         [admin]\nsocket = {:?}\n",
        dir.join("admin.sock").display().to_string()
    )
}

async fn ask(socket: &Path, request: Request) -> Response {
    admin::request(socket, &request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_never_banned_by_default_and_is_with_an_empty_ignore() {
    let echo = spawn_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // No `ignore` key: the default list is in force.
    let body = body(echo, dir.path(), "max_retry = 1");
    let (router, sources) = match spawn_router_v6(&body).await {
        Some(r) => (
            r,
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        ),
        None => (
            spawn_router(&body).await,
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ),
    };
    let no_sni = fixture("openssl-nosni.bin");
    let unknown = rustls_hello("unknown.test").await;
    for &src in &sources {
        let to = match src {
            IpAddr::V4(_) => router.addr,
            IpAddr::V6(_) => router.addr6.unwrap(),
        };
        for round in 0..2 {
            for (hello, outcome) in [(&no_sni, "no_sni"), (&unknown, "unknown_sni")] {
                let (local, got) = probe(to, src, hello).await;
                assert!(got.is_empty(), "{src} {outcome}: got {} bytes", got.len());
                let line = router.wait_outcome(local).await;
                assert_eq!(line["outcome"], outcome, "{src} round {round}: {line}");
            }
        }
        // Still routed afterwards: never banned.
        let hello = fixture("curl.bin");
        let (local, got) = probe(to, src, &hello).await;
        assert_eq!(got, hello, "{src} is served after its refusals");
        assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    }
    let Response::Status(status) = ask(&socket, Request::Status).await else {
        panic!("no status")
    };
    let n = u64::try_from(2 * sources.len()).unwrap();
    assert_eq!(status.connections["no_sni"], n, "counted");
    assert_eq!(status.connections["unknown_sni"], n, "counted");
    assert_eq!(status.connections["banned"], 0);
    assert_eq!((status.currently_banned, status.total_banned), (0, 0));
    assert_eq!(status.sources_with_strikes, 0, "not even struck");
    let Response::Bans { bans } = ask(&socket, Request::BansList).await else {
        panic!("no list")
    };
    assert!(bans.is_empty(), "{bans:?}");
    router.stop().await.unwrap();

    // The same from 127.0.0.2 with an explicit empty list: banned.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let router = spawn_router(&body_with_empty_ignore(echo, dir.path())).await;
    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let (local, _) = probe(router.addr, src, &unknown).await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "unknown_sni");
    let (local, got) = probe(router.addr, src, &fixture("curl.bin")).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "banned");
    let Response::Bans { bans } = ask(&socket, Request::BansList).await else {
        panic!("no list")
    };
    let nets: Vec<&str> = bans.iter().map(|b| b.net.as_str()).collect();
    assert_eq!(nets, ["127.0.0.2/32"]);
    router.stop().await.unwrap();
}

fn body_with_empty_ignore(echo: SocketAddr, dir: &Path) -> String {
    body(echo, dir, "max_retry = 1\nignore = []")
}

fn sniroute(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_prefix_needs_force() {
    // Refused before anything else, even with no daemon to ask.
    for wide in ["0.0.0.0/0", "::/0"] {
        let out = sniroute(&["bans", "add", wide, "-c", "/nonexistent/sniroute.toml"]);
        assert_eq!(out.status.code(), Some(1), "{wide}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(wide) && err.contains("--force"), "{err}");
    }
    // With a daemon: refused without --force (also by the daemon itself),
    // taken with it.
    let echo = spawn_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let router = spawn_router(&body_with_empty_ignore(echo, dir.path())).await;
    let config = router.config_path.display().to_string();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || sniroute(&["bans", "add", "0.0.0.0/0", "-c", &config])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let add = Request::BansAdd {
        addr: "0.0.0.0/0".into(),
        duration: None,
        force: false,
    };
    let Response::Refused { message } = ask(&socket, add).await else {
        panic!("the daemon took 0.0.0.0/0 without force")
    };
    assert!(message.contains("--force"), "{message}");
    let out = tokio::task::spawn_blocking(move || {
        sniroute(&["bans", "add", "10.0.0.0/7", "--force", "-c", &config])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains("banned 10.0.0.0/7 until 2"),
        "{out:?}"
    );
    router.stop().await.unwrap();
}

/// Runs of ten or more digits in `text`: a unix time in seconds (or more
/// digits: milliseconds) where a person reads.
fn epochs(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= 10 {
                    found.push(&text[s..i]);
                }
                start = None;
            }
            _ => {}
        }
    }
    found
}

#[test]
fn the_epoch_finder_finds_epochs() {
    assert_eq!(epochs("until=1827594397 x"), ["1827594397"]);
    assert_eq!(epochs("1633881336123"), ["1633881336123"]);
    assert!(epochs("2021-10-10T15:55:36.123Z 127.0.0.1:51234 up=517 ms=3").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_epoch_where_a_person_reads() {
    let echo = spawn_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let state = dir.path().join("bans.json");
    let config = dir.path().join("sniroute.toml");
    // A corrupt state file: its "kept aside" line names a time too.
    std::fs::write(&state, "{ not json").unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\n\
             [[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{echo}\"\n\n\
             [ban]\nmax_retry = 1\nignore = []\nstate_file = {:?}\n\n\
             [rate_limit]\nper_ip = 0\n\n[metrics]\nlisten = \"\"\n\n\
             [admin]\nsocket = {:?}\n\n[log]\naccess = {:?}\nformat = \"text\"\n",
            state.display().to_string(),
            dir.path().join("admin.sock").display().to_string(),
            access.display().to_string(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("SNIROUTE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = KillOnDrop(&mut child);
    let (addr, log) = learn_listen_addr(&mut *daemon.0);

    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    probe(addr, src, &rustls_hello("unknown.test").await).await;
    probe(addr, src, &fixture("curl.bin")).await;
    let ok = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    probe(addr, ok, &fixture("curl.bin")).await;

    let config = config.display().to_string();
    let (status, list, add) = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["-c", &config]);
            let out = sniroute(&all);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
            format!("$ sniroute {}\n{}", args.join(" "), text(&out.stdout))
        };
        let add = cli(&["bans", "add", "203.0.113.7", "--for", "1h"]);
        (cli(&["status"]), cli(&["bans", "list"]), add)
    })
    .await
    .unwrap();
    let shown = format!("{status}{list}{add}");
    assert!(list.contains("127.0.0.3/32"), "{list}");

    // Wait (bounded) until the log and the access log hold what was done.
    let deadline = Instant::now() + WAIT;
    let (daemon_log, access_log) = loop {
        let daemon_log = log.lock().unwrap().clone();
        let access_log = std::fs::read_to_string(&access).unwrap_or_default();
        let logged = daemon_log.contains("banned by hand")
            && daemon_log.contains("kept aside")
            && access_log.lines().count() >= 3;
        if logged {
            break (daemon_log, access_log);
        }
        assert!(
            Instant::now() < deadline,
            "log:\n{daemon_log}\naccess log:\n{access_log}"
        );
        std::thread::sleep(POLL);
    };
    assert!(daemon_log.contains("until="), "{daemon_log}");
    drop(daemon);
    for (what, text) in [
        ("daemon log", &daemon_log),
        ("admin commands", &shown),
        ("access log", &access_log),
    ] {
        assert!(epochs(text).is_empty(), "raw epoch in the {what}:\n{text}");
    }
}

/// Kills the daemon when the test ends, even on failure.
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The /etc/sniroute/sniroute.toml the package installs (build.rs makes it
/// from the example config).
const PACKAGED: &str = include_str!(concat!(env!("OUT_DIR"), "/sniroute.toml"));

#[test]
fn the_packaged_config_is_safe_to_start_as_is() {
    let c = sniroute::config::parse_str(PACKAGED).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!c.listen.is_empty());
    assert!(
        c.listen.iter().all(|a| a.ip().is_loopback()),
        "loopback only: {:?}",
        c.listen
    );
    assert!(
        c.http.listen.iter().all(|a| a.ip().is_loopback()),
        "loopback only: {:?}",
        c.http.listen
    );
    // 8080 is where CrowdSec's Local API listens by default, on loopback too.
    assert!(
        c.listen
            .iter()
            .chain(&c.http.listen)
            .all(|a| a.port() != 8080),
        "no port shared with CrowdSec's LAPI"
    );
    assert_eq!(c.routes.len(), 1, "one example route");
    for ip in ["127.0.0.1", "127.0.0.2", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(c.ban.ignore.iter().any(|n| n.contains(&ip)), "{ip} ignored");
    }
    // The defaults, in the directories the systemd unit makes.
    assert_eq!(
        c.ban.state_file.as_deref(),
        Some(Path::new("/var/lib/sniroute/bans.json"))
    );
    assert_eq!(
        c.admin.socket.as_deref(),
        Some(Path::new("/run/sniroute/admin.sock"))
    );
    assert!(c.metrics.listen.is_none_or(|a| a.ip().is_loopback()));
    assert!(PACKAGED.starts_with("# /etc/sniroute/sniroute.toml"));
}

#[test]
fn version_names_the_git_revision_when_built_from_git() {
    let out = sniroute(&["--version"]);
    let version = text(&out.stdout);
    assert!(
        version.starts_with(concat!("sniroute ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git");
    let git = Command::new("git").arg("--version").output();
    if checkout.exists() && git.is_ok_and(|o| o.status.success()) {
        assert!(version.contains("(git "), "{version}");
    }
}
