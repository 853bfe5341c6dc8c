//! Trusted balancers (`[proxy_protocol] accept_from`) over real sockets: a
//! real HAProxy (`mode tcp`, `send-proxy-v2` and `send-proxy`) in front of an
//! in-process sniroute, clients at 127.0.0.2, 127.0.0.3 and 127.0.0.4 behind
//! it, HAProxy itself at 127.0.0.9; and a hand-made balancer at 127.0.0.9
//! sending every kind of header (and garbage) straight to sniroute; and a
//! reload that changes who is trusted.
//!
//! The client named in a trusted balancer's header is the source for
//! everything: it is struck and banned (never the balancer, and never in the
//! kernel set), rate-limited, logged, and named in the PROXY header sniroute
//! sends its backend. A trusted address without a valid header ends
//! `proxy_error`; anyone else's PROXY header is `not_tls`.
//!
//! HAProxy gets its listening socket already bound (`bind fd@0`, as its
//! stdin), so the test picks no fixed port; it is killed when the test ends,
//! also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Router, WAIT, read_all, rustls_hello, spawn_backend, spawn_router};
use rustls::pki_types::ServerName;
use serde_json::Value;
use sniroute::admin::{Request, Response, request};
use sniroute::config::ProxyProtocol;
use sniroute::forward::proxy_header;
use sniroute::guard::bans::Ban;
use sniroute::proxyheader::{self, Endpoints, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// Where HAProxy (and the hand-made balancer) connect to sniroute from.
const BALANCER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
/// Clients behind HAProxy; 127.0.0.4 is sent on with PROXY v1.
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const CLIENT_V1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The name routed to the backend that reads a PROXY v2 header.
const ROUTED: &str = "app.test";
/// A name no route serves.
const UNKNOWN: &str = "nope.test";

// ---------------------------------------------------------------------------
// HAProxy

/// A running HAProxy; killed on drop.
struct Haproxy {
    child: Child,
    /// Where clients connect (127.0.0.1, port chosen by the kernel).
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// What HAProxy said so far (for failure messages).
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts HAProxy in front of `sniroute`: clients from [`CLIENT_V1`] are sent
/// on with `send-proxy` (v1), every other with `send-proxy-v2`, both from
/// [`BALANCER`].
fn spawn_haproxy(sniroute: SocketAddr) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = format!(
        "global\n    nbthread 1\n    maxconn 256\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend clients\n    bind fd@0\n    use_backend v1 if {{ src {CLIENT_V1} }}\n    default_backend v2\n\n\
         backend v2\n    server sniroute {sniroute} send-proxy-v2 source {BALANCER}\n\n\
         backend v1\n    server sniroute {sniroute} send-proxy source {BALANCER}\n"
    );
    let config_path = dir.path().join("haproxy.cfg");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("haproxy.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config_path)
        // The listening socket: `bind fd@0`.
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("cannot start haproxy (install it: apt-get install haproxy)");
    Haproxy {
        child,
        addr,
        log,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------
// Backends and the router

/// A backend that reads the PROXY header sniroute sends, reports what it
/// names, then speaks TLS (greeting, then echo) with the test PKI.
async fn spawn_proxied_tls_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Endpoints>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::server_config(false));
    let addr = spawn_backend(move |mut tcp| {
        let (tx, acceptor) = (tx.clone(), acceptor.clone());
        async move {
            // Byte by byte, so nothing of the hello is read with the header.
            let mut head = Vec::new();
            let endpoints = loop {
                let Ok(byte) = tcp.read_u8().await else {
                    return;
                };
                head.push(byte);
                match proxyheader::parse(&head) {
                    Verdict::NeedMore => continue,
                    Verdict::Header(h) => break h.endpoints,
                    Verdict::Invalid(why) => panic!("the backend got a bad PROXY header: {why}"),
                }
            };
            let _ = tx.send(endpoints);
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = tls.write_all(common::GREETING).await;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = tls.read(&mut buf).await {
                if tls.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = tls.shutdown().await;
        }
    })
    .await;
    (addr, rx)
}

/// The config body: [`ROUTED`] to `backend` with a PROXY v2 header, strikes
/// on unknown_sni/no_sni/not_tls banning at once, nobody ignored, HAProxy's
/// address trusted, the admin socket in `dir`, plus `extra` sections.
fn body(backend: SocketAddr, dir: &Path, extra: &str) -> String {
    format!(
        "[[route]]\nsni = [\"{ROUTED}\"]\nbackend = \"{backend}\"\nproxy_protocol = \"v2\"\n\n\
         [ban]\nenabled = true\nmax_retry = 1\nignore = []\nstate_file = \"\"\n\
         strike_on = [\"unknown_sni\", \"no_sni\", \"not_tls\"]\n\n\
         [proxy_protocol]\naccept_from = [\"{BALANCER}\"]\n\n\
         [admin]\nsocket = {:?}\n\n{extra}",
        dir.join("admin.sock").display().to_string()
    )
}

/// Bans in force, from the admin socket.
async fn bans(dir: &Path) -> Vec<Ban> {
    match request(&dir.join("admin.sock"), &Request::BansList)
        .await
        .unwrap()
    {
        Response::Bans { bans } => bans,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Connections ended with `outcome` so far, from the admin socket.
async fn count(dir: &Path, outcome: &str) -> u64 {
    match request(&dir.join("admin.sock"), &Request::Status)
        .await
        .unwrap()
    {
        Response::Status(report) => report.connections[outcome],
        other => panic!("unexpected answer {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Clients

/// A TCP connection to `to` from `src`.
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// From `src` to `to`: writes `bytes` (in `chunk`-byte writes), half-closes,
/// reads to the end. Returns the client's address and what it got.
async fn probe(to: SocketAddr, src: Ipv4Addr, bytes: &[u8], chunk: usize) -> (SocketAddr, Vec<u8>) {
    let mut s = connect_from(src, to).await;
    let local = s.local_addr().unwrap();
    for part in bytes.chunks(chunk.max(1)) {
        // The router may close first: ignore errors.
        if s.write_all(part).await.is_err() {
            break;
        }
    }
    let _ = s.shutdown().await;
    (local, read_all(&mut s).await)
}

/// A full TLS exchange for [`ROUTED`] from `src` through `to`: the greeting,
/// then an echo. Returns the client's address.
async fn tls_exchange(to: SocketAddr, src: Ipv4Addr) -> SocketAddr {
    let tcp = connect_from(src, to).await;
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from(ROUTED).unwrap();
    let mut tls = TlsConnector::from(common::client_config(false))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS from {src} through {to}: {e}"));
    let mut greeting = vec![0u8; common::GREETING.len()];
    tls.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, common::GREETING);
    tls.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    local
}

/// The endpoints the backend's next PROXY header names.
async fn named(rx: &mut mpsc::UnboundedReceiver<Endpoints>) -> Endpoints {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the backend got no connection in time")
        .expect("backend gone")
}

/// Asserts the access log line of `client` has `outcome`; returns it.
async fn expect_outcome(r: &Router, client: SocketAddr, outcome: &str) -> Value {
    let line = r.wait_outcome(client).await;
    assert_eq!(line["outcome"], outcome, "{client}: {line}");
    line
}

fn tcp(source: SocketAddr, destination: SocketAddr) -> Endpoints {
    Endpoints::Tcp {
        source,
        destination,
    }
}

// ---------------------------------------------------------------------------
// Through a real HAProxy

#[tokio::test]
async fn behind_haproxy_the_client_is_banned_never_the_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut seen) = spawn_proxied_tls_backend().await;
    let router = spawn_router(&body(backend, dir.path(), "")).await;
    let haproxy = spawn_haproxy(router.addr);
    let unknown = rustls_hello(UNKNOWN).await;

    // A real TLS session from A through HAProxy: the backend's header names A.
    let a = tls_exchange(haproxy.addr, CLIENT_A).await;
    expect_outcome(&router, a, "routed").await;
    assert_eq!(
        named(&mut seen).await,
        tcp(a, haproxy.addr),
        "{}",
        haproxy.output()
    );

    // An unknown name from A: A is banned, outside the kernel set.
    let (a, got) = probe(haproxy.addr, CLIENT_A, &unknown, usize::MAX).await;
    assert!(got.is_empty());
    let line = expect_outcome(&router, a, "unknown_sni").await;
    assert_eq!(line["sni"], UNKNOWN);
    let banned = bans(dir.path()).await;
    assert_eq!(banned.len(), 1, "{banned:?}");
    assert_eq!(banned[0].net, format!("{CLIENT_A}/32"));
    assert!(
        !banned[0].kernel,
        "a client behind a balancer went to the kernel set"
    );

    // A is refused from now on, through HAProxy and directly.
    let (a, _) = probe(
        haproxy.addr,
        CLIENT_A,
        &rustls_hello(ROUTED).await,
        usize::MAX,
    )
    .await;
    expect_outcome(&router, a, "banned").await;
    let (a, _) = probe(router.addr, CLIENT_A, &unknown, usize::MAX).await;
    expect_outcome(&router, a, "banned").await;

    // B, behind the same HAProxy, still routes; HAProxy is not banned.
    let b = tls_exchange(haproxy.addr, CLIENT_B).await;
    expect_outcome(&router, b, "routed").await;
    assert_eq!(named(&mut seen).await, tcp(b, haproxy.addr));
    assert_eq!(bans(dir.path()).await.len(), 1);

    // PROXY v1 from HAProxy (`send-proxy`) works the same.
    let v1 = tls_exchange(haproxy.addr, CLIENT_V1).await;
    expect_outcome(&router, v1, "routed").await;
    assert_eq!(named(&mut seen).await, tcp(v1, haproxy.addr));
    let (v1, got) = probe(haproxy.addr, CLIENT_V1, &unknown, usize::MAX).await;
    assert!(got.is_empty());
    expect_outcome(&router, v1, "unknown_sni").await;
    let nets: Vec<String> = bans(dir.path()).await.into_iter().map(|b| b.net).collect();
    assert_eq!(nets, [format!("{CLIENT_A}/32"), format!("{CLIENT_V1}/32")]);
    assert!(
        router
            .log_lines()
            .iter()
            .all(|l| !l["client"].as_str().unwrap().starts_with("127.0.0.9:")),
        "HAProxy's own address was logged as a client"
    );
    drop(haproxy);
    router.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// A hand-made balancer at 127.0.0.9

/// The PROXY header of `kind` naming `client` (connected to `to`).
fn header(kind: ProxyProtocol, client: &str, to: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    proxy_header(kind, client.parse().unwrap(), to, &mut out);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v2 LOCAL header (a health check): no addresses.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

#[tokio::test]
async fn a_trusted_balancer_must_send_a_valid_header_and_is_never_struck() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut seen) = spawn_proxied_tls_backend().await;
    let limits = "[limits]\nclient_hello_timeout = \"1s\"\n";
    let router = spawn_router(&body(backend, dir.path(), limits)).await;
    let to = router.addr;
    let routed = rustls_hello(ROUTED).await;
    let unknown = rustls_hello(UNKNOWN).await;
    let v1 = |client| header(ProxyProtocol::V1, client, to);
    let v2 = |client| header(ProxyProtocol::V2, client, to);

    // Garbage, a TLS hello without a header, HTTP, an oversized v2 header, a
    // v1 line that never ends, and part of a header then silence: closed
    // without a byte, proxy_error, the balancer not struck.
    let mut oversized = v2("198.51.100.1:1");
    oversized[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut cases = vec![
        (common::garbage(64), "proxy_error"),
        (routed.clone(), "proxy_error"),
        (
            b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec(),
            "proxy_error",
        ),
        (oversized, "proxy_error"),
        (
            format!("PROXY UNKNOWN {}", "x".repeat(200)).into_bytes(),
            "proxy_error",
        ),
        (b"PROXY TCP4 198.51.100.1".to_vec(), "proxy_error"),
        // Nothing at all (a health check that connects and hangs up).
        (Vec::new(), "timeout"),
    ];
    for (bytes, outcome) in cases.drain(..) {
        let (local, got) = probe(to, BALANCER, &bytes, usize::MAX).await;
        assert!(got.is_empty(), "{outcome}: got {} bytes", got.len());
        let line = expect_outcome(&router, local, outcome).await;
        assert!(line["sni"].is_null(), "{line}");
    }
    assert_eq!(count(dir.path(), "proxy_error").await, 6);
    assert!(bans(dir.path()).await.is_empty());

    // v1 and v2, sent whole or a byte at a time: routed, the backend's
    // header names the client, the log shows it.
    for (i, kind) in [ProxyProtocol::V1, ProxyProtocol::V2]
        .into_iter()
        .enumerate()
    {
        for chunk in [usize::MAX, 1] {
            let client = format!("198.51.100.{}:{}", 10 + i, 40000 + chunk.min(7));
            let bytes = cat(&[&header(kind, &client, to), &routed]);
            let (_, got) = probe(to, BALANCER, &bytes, chunk).await;
            // The backend stops at the hello it cannot finish: no TLS reply.
            assert!(got.is_empty() || got.starts_with(&[0x15]) || got.starts_with(&[0x16]));
            expect_outcome(&router, client.parse().unwrap(), "routed").await;
            assert_eq!(named(&mut seen).await, tcp(client.parse().unwrap(), to));
        }
    }

    // LOCAL and UNKNOWN: the balancer speaks for itself, and is not struck
    // even for an unknown name.
    for head in [V2_LOCAL, b"PROXY UNKNOWN\r\n"] {
        let (local, _) = probe(to, BALANCER, &cat(&[head, &routed]), usize::MAX).await;
        expect_outcome(&router, local, "routed").await;
        assert_eq!(named(&mut seen).await, tcp(local, to));
        let (local, _) = probe(to, BALANCER, &cat(&[head, &unknown]), usize::MAX).await;
        expect_outcome(&router, local, "unknown_sni").await;
    }
    assert!(bans(dir.path()).await.is_empty());

    // A named IPv6 client is banned per /64, outside the kernel set; the
    // header's bytes are never taken for the hello.
    let (_, got) = probe(
        to,
        BALANCER,
        &cat(&[&v2("[2001:db8:1:2::7]:5000"), &unknown]),
        3,
    )
    .await;
    assert!(got.is_empty());
    let line = expect_outcome(
        &router,
        "[2001:db8:1:2::7]:5000".parse().unwrap(),
        "unknown_sni",
    )
    .await;
    assert_eq!(line["sni"], UNKNOWN);
    let banned = bans(dir.path()).await;
    assert_eq!(banned.len(), 1);
    assert_eq!(
        (banned[0].net.as_str(), banned[0].kernel),
        ("2001:db8:1:2::/64", false)
    );
    // That client is refused right after its header; others still route.
    let (_, got) = probe(
        to,
        BALANCER,
        &cat(&[&v1("[2001:db8:1:2::99]:1"), &routed]),
        usize::MAX,
    )
    .await;
    assert!(got.is_empty());
    let line = expect_outcome(&router, "[2001:db8:1:2::99]:1".parse().unwrap(), "banned").await;
    assert!(line["sni"].is_null(), "{line}");
    probe(
        to,
        BALANCER,
        &cat(&[&v1("198.51.100.20:1"), &routed]),
        usize::MAX,
    )
    .await;
    expect_outcome(&router, "198.51.100.20:1".parse().unwrap(), "routed").await;

    // A PROXY header from anyone not trusted is not TLS, and strikes them.
    let (local, got) = probe(
        to,
        Ipv4Addr::LOCALHOST,
        &cat(&[&v2("198.51.100.30:1"), &routed]),
        usize::MAX,
    )
    .await;
    assert!(got.is_empty());
    expect_outcome(&router, local, "not_tls").await;
    let nets: Vec<String> = bans(dir.path()).await.into_iter().map(|b| b.net).collect();
    assert!(nets.contains(&"127.0.0.1/32".to_string()), "{nets:?}");
    assert!(!nets.iter().any(|n| n.starts_with("127.0.0.9")), "{nets:?}");
    router.stop().await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_counts_each_named_client_never_the_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let backend = common::spawn_echo_backend().await;
    let body = body(backend, dir.path(), "[rate_limit]\nper_ip = 1\nburst = 2\n")
        .replace("proxy_protocol = \"v2\"\n", "");
    let router = spawn_router(&body).await;
    let to = router.addr;
    let routed = rustls_hello(ROUTED).await;
    let from = |client: &str| cat(&[&header(ProxyProtocol::V2, client, to), &routed]);

    // Burst 2 per client: of four connections of 198.51.100.7 sent at once,
    // some are refused (two, unless a second passes and refills a token).
    let mut open = Vec::new();
    for port in 1..=4 {
        let mut s = connect_from(BALANCER, to).await;
        s.write_all(&from(&format!("198.51.100.7:{port}")))
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        open.push(s);
    }
    let mut outcomes = Vec::new();
    for (port, mut s) in (1..=4).zip(open) {
        let got = read_all(&mut s).await;
        let client: SocketAddr = format!("198.51.100.7:{port}").parse().unwrap();
        let line = router.wait_outcome(client).await;
        let outcome = line["outcome"].as_str().unwrap().to_owned();
        match outcome.as_str() {
            "routed" => assert_eq!(got, routed, "the echo backend returns the hello"),
            "rate_limited" => assert!(got.is_empty() && line["sni"].is_null(), "{line}"),
            _ => panic!("{line}"),
        }
        outcomes.push(outcome);
    }
    let limited = outcomes.iter().filter(|o| *o == "rate_limited").count();
    assert!((1..=2).contains(&limited), "{outcomes:?}");

    // The balancer carried all of them and is not limited: another client
    // behind it still routes, twice.
    for port in 1..=2 {
        let client = format!("198.51.100.8:{port}");
        let (_, got) = probe(to, BALANCER, &from(&client), usize::MAX).await;
        assert_eq!(got, routed);
        expect_outcome(&router, client.parse().unwrap(), "routed").await;
    }
    router.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_changes_who_is_trusted_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let backend = common::spawn_echo_backend().await;
    let trusting = body(backend, dir.path(), "")
        .replace("proxy_protocol = \"v2\"\n", "")
        .replace("enabled = true\n", "enabled = false\n");
    let untrusting = trusting.replace(&format!("[\"{BALANCER}\"]"), "[]");
    let router = spawn_router(&untrusting).await;
    let to = router.addr;
    let routed = rustls_hello(ROUTED).await;
    let bytes = cat(&[&header(ProxyProtocol::V1, "198.51.100.5:7", to), &routed]);
    let reload = |body: &str| {
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\n\n{body}\n{}",
            common::default_sections(body, &router.log_path, None)
        );
        std::fs::write(&router.config_path, text).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let control = router.tx.clone();
        async move {
            control
                .send(sniroute::server::Control::Reload(Some(tx)))
                .await
                .unwrap();
            tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
        }
    };

    let (local, _) = probe(to, BALANCER, &bytes, usize::MAX).await;
    expect_outcome(&router, local, "not_tls").await;

    reload(&trusting).await.unwrap();
    let (_, got) = probe(to, BALANCER, &bytes, usize::MAX).await;
    assert_eq!(got, routed);
    expect_outcome(&router, "198.51.100.5:7".parse().unwrap(), "routed").await;

    reload(&untrusting).await.unwrap();
    let (local, got) = probe(to, BALANCER, &bytes, usize::MAX).await;
    assert!(got.is_empty());
    expect_outcome(&router, local, "not_tls").await;
    router.stop().await.unwrap();
}
