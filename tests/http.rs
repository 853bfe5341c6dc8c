//! Plain HTTP on `[http]` listeners, end to end: real `curl` through sniroute
//! to a real nginx backend (started here on a loopback port, stopped on
//! drop) with the response intact; refusals (unknown Host, no Host, TLS
//! bytes, garbage, CONNECT) closed without a byte and struck; the PROXY
//! header and the head reach the backend untouched; reload follows
//! `[http] listen`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sniroute::server::Control;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Size of the file nginx serves for the "response intact" check: several
/// socket buffers, so the relay runs many rounds.
const BIG_FILE: usize = 3 * 1024 * 1024 + 17;
/// nginx start attempts: the port it gets was free a moment before (bound,
/// then released), so another process may take it in between.
const NGINX_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------
// nginx, the real HTTP backend

/// An nginx serving `www/` and `/hello` on 127.0.0.1, one process, killed on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    big: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(binary: &str) -> bool {
    Command::new(binary)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Nginx {
    /// Starts nginx; `None` (after a note) when it is not installed.
    fn start() -> Option<Nginx> {
        if !have("nginx") {
            eprintln!("NOTE: skipped: no nginx on this host (.ci/run installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // nginx may read as another user when started as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        let big = Pattern::new(13).slice(0, BIG_FILE).to_vec();
        std::fs::write(www.join("big.bin"), &big).unwrap();
        let mut last_error = String::new();
        for _ in 0..NGINX_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, nginx_conf(dir.path(), addr)).unwrap();
            let mut child = Command::new("nginx")
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Some(Nginx {
                        addr,
                        child,
                        big,
                        dir,
                    });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "nginx exited ({status}):\n{}",
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nginx did not listen on {addr} within {WAIT:?}"
                );
                std::thread::sleep(POLL);
            }
        }
        panic!("nginx would not start: {last_error}");
    }

    /// nginx's own access log: one line per request it answered.
    fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn nginx_conf(dir: &Path, addr: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           default_type application/octet-stream;\n\
           server {{\n    listen {addr};\n    root {d}/www;\n\
             location = /hello {{ default_type text/plain; \
               return 200 \"hello from nginx for $host over $server_protocol\\n\"; }}\n\
           }}\n}}\n"
    )
}

// ---------------------------------------------------------------------------
// Helpers

/// A router with an `[http]` listener on 127.0.0.1:0 and `body` (routes, ...).
async fn http_router(body: &str) -> Router {
    let router = spawn_router(&format!("[http]\nlisten = [\"127.0.0.1:0\"]\n\n{body}")).await;
    assert!(router.http_addr.is_some(), "no [http] listener");
    router
}

/// Runs curl with `args`; its exit status and stdout.
async fn curl(args: Vec<String>) -> (std::process::ExitStatus, Vec<u8>, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, out.stdout, stderr)
}

/// Connects to `to` from `src` (port chosen by the kernel).
async fn connect_from(src: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// From `src`: writes `bytes` and half-closes (errors ignored: the router
/// may close first), reads to the end. The client's address and what it got.
async fn probe(to: SocketAddr, src: IpAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut s = connect_from(src, to).await;
    let local = s.local_addr().unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    (local, read_all(&mut s).await)
}

/// [`probe`] from 127.0.0.1.
async fn exchange(to: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    probe(to, ip(1), bytes).await
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_nginx_through_sniroute_by_host() {
    let Some(nginx) = tokio::task::spawn_blocking(Nginx::start).await.unwrap() else {
        return;
    };
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\", \"*.wild.test\"]\nbackend = \"{}\"\nhttp_backends = [\"{}\", \"{}\"]\n",
        refusing_addr(),
        refusing_addr(),
        nginx.addr
    ))
    .await;
    let http = router.http_addr.unwrap();
    let port = http.port();

    // By name (--resolve), a 3 MiB file: the response arrives intact.
    let (status, body, err) = curl(vec![
        "--resolve".into(),
        format!("app.test:{port}:127.0.0.1"),
        format!("http://app.test:{port}/big.bin"),
    ])
    .await;
    assert!(status.success(), "curl: {status}: {err}");
    assert!(body == nginx.big, "the file differs ({} bytes)", body.len());

    // By Host header, HTTP/1.0, a wildcard name with a trailing dot, and two
    // requests on one kept-alive connection.
    let (status, body, err) = curl(vec![
        "-H".into(),
        "Host: A.B.Wild.Test.".into(),
        format!("http://127.0.0.1:{port}/hello"),
    ])
    .await;
    assert!(status.success(), "curl: {status}: {err}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello from nginx for a.b.wild.test over HTTP/1.1\n"
    );
    let (status, body, err) = curl(vec![
        "--http1.0".into(),
        "--resolve".into(),
        format!("app.test:{port}:127.0.0.1"),
        format!("http://app.test:{port}/hello"),
    ])
    .await;
    assert!(status.success(), "curl: {status}: {err}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello from nginx for app.test over HTTP/1.0\n"
    );
    let before = nginx.requests();
    let (status, body, err) = curl(vec![
        "--resolve".into(),
        format!("app.test:{port}:127.0.0.1"),
        format!("http://app.test:{port}/hello"),
        format!("http://app.test:{port}/hello"),
    ])
    .await;
    assert!(status.success(), "curl: {status}: {err}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello from nginx for app.test over HTTP/1.1\n".repeat(2)
    );
    assert!(
        err.is_empty(),
        "curl complained (connection not reused?): {err}"
    );
    assert_eq!(nginx.requests(), before + 2);

    // A line is written once both sides closed, maybe after curl returned.
    let deadline = tokio::time::Instant::now() + WAIT;
    let lines = loop {
        let lines = router.log_lines();
        if lines.len() >= 4 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(POLL).await;
    };
    let routed: Vec<_> = lines.iter().filter(|l| l["outcome"] == "routed").collect();
    assert_eq!(routed.len(), 4, "{lines:?}");
    assert!(routed.iter().any(|l| l["sni"] == "app.test"
        && l["route"] == "app.test"
        && l["backend"] == nginx.addr.to_string()));
    assert!(routed.iter().any(|l| l["sni"] == "a.b.wild.test"));
    router.stop().await.unwrap();
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_closed_without_a_byte_and_struck() {
    let (backend, mut recorded_rx) = spawn_recording_backend().await;
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nhttp_backends = [\"{backend}\"]\n\n\
         [[route]]\nsni = [\"tls-only.test\"]\nbackend = \"{backend}\"\n\n\
         [ban]\nenabled = true\nmax_retry = 1\nignore = []\nstate_file = \"\"\n"
    ))
    .await;
    let http = router.http_addr.unwrap();
    let hello = fixture("curl.bin");
    let cases: [(u8, &[u8], &str); 9] = [
        (
            2,
            b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n",
            "unknown_host",
        ),
        (
            3,
            b"GET / HTTP/1.1\r\nHost: tls-only.test\r\n\r\n",
            "unknown_host",
        ),
        (4, b"GET / HTTP/1.0\r\n\r\n", "no_host"),
        (5, b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", "no_host"),
        (6, &hello, "not_http"),
        (7, &garbage(300), "not_http"),
        (
            8,
            b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
            "not_http",
        ),
        (
            9,
            b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n",
            "not_http",
        ),
        (
            10,
            b"GET / HTTP/1.1\r\nHost: app.test\r\n evil.test\r\n\r\n",
            "not_http",
        ),
    ];
    for (last, bytes, outcome) in cases {
        let (local, got) = probe(http, ip(last), bytes).await;
        assert!(got.is_empty(), "{outcome}: got {got:?}");
        let line = router.wait_outcome(local).await;
        assert_eq!(line["outcome"], outcome, "{line}");
        // Struck and banned at the first strike: the next connection is closed at accept.
        let (local, got) = probe(http, ip(last), b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert!(got.is_empty());
        assert_eq!(router.wait_outcome(local).await["outcome"], "banned");
    }

    // curl with an unknown name: an empty reply, and a ban.
    let port = http.port();
    let (status, body, err) = curl(vec![
        "--interface".into(),
        "127.0.0.11".into(),
        "--resolve".into(),
        format!("nope.test:{port}:127.0.0.1"),
        format!("http://nope.test:{port}/"),
    ])
    .await;
    assert!(!status.success() && body.is_empty(), "{status}: {err}");
    assert!(err.contains("Empty reply"), "{err}");

    // Nothing reached the backend; a good request still does.
    assert!(recorded_rx.try_recv().is_err());
    let (local, _) = probe(http, ip(12), b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    assert_eq!(
        recorded(&mut recorded_rx).await,
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"
    );
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_reaches_the_backend_untouched_after_the_proxy_header() {
    let (backend, mut rx) = spawn_recording_backend().await;
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nhttp_backends = [\"{}\", \"{backend}\"]\nproxy_protocol = \"v1\"\n",
        refusing_addr()
    ))
    .await;
    let http = router.http_addr.unwrap();
    // A head dribbled in pieces, with a body and a second request after it.
    let head = b"POST /upload HTTP/1.1\r\nHOST: App.Test.:80\r\nContent-Length: 5\r\n\r\n";
    let rest = b"hello\x00GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
    let mut s = connect(http).await;
    let local = s.local_addr().unwrap();
    for piece in head.chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.write_all(rest).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(read_all(&mut s).await.is_empty());
    let got = recorded(&mut rx).await;
    let proxy = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        local.port(),
        http.port()
    );
    let mut want = proxy.into_bytes();
    want.extend_from_slice(head);
    want.extend_from_slice(rest);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed");
    assert_eq!(line["sni"], "app.test");
    assert_eq!(line["backend"], backend.to_string());
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_http_listeners_keep_to_their_protocol() {
    let tls_backend = spawn_echo_backend().await;
    let (http_backend, mut rx) = spawn_recording_backend().await;
    let router = http_router(&format!(
        "[[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{tls_backend}\"\nhttp_backends = [\"{http_backend}\"]\n"
    ))
    .await;
    let request = format!("GET / HTTP/1.1\r\nHost: {FIXTURE_SNI}\r\n\r\n");
    // HTTP on the TLS listener: not_tls; TLS on the HTTP listener: not_http.
    let (local, got) = exchange(router.addr, request.as_bytes()).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "not_tls");
    let (local, got) = exchange(router.http_addr.unwrap(), &fixture("curl.bin")).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "not_http");
    // Each its own backend.
    let hello = fixture("curl.bin");
    let mut s = connect(router.addr).await;
    s.write_all(&hello).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s).await, hello);
    let (local, _) = exchange(router.http_addr.unwrap(), request.as_bytes()).await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    assert_eq!(recorded(&mut rx).await, request.as_bytes());
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_endless_head_ends_as_timeout_or_too_large() {
    let (backend, _rx) = spawn_recording_backend().await;
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nhttp_backends = [\"{backend}\"]\n\n\
         [limits]\nclient_hello_timeout = \"300ms\"\nmax_client_hello = 1024\n"
    ))
    .await;
    let http = router.http_addr.unwrap();
    let (local, got) = exchange(http, b"GET / HTTP/1.1\r\nHost: app.test\r\n").await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "timeout");
    let mut long = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Fill: ".to_vec();
    long.resize(2000, b'a');
    let (local, got) = exchange(http, &long).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "too_large");
    router.stop().await.unwrap();
}

async fn reload(router: &Router, text: &str) -> Result<String, String> {
    std::fs::write(&router.config_path, text).unwrap();
    let (tx, rx) = oneshot::channel();
    router.tx.send(Control::Reload(Some(tx))).await.unwrap();
    tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_follows_http_listen_and_moves_an_address_between_protocols() {
    let tls_backend = spawn_echo_backend().await;
    let (http_backend, mut rx) = spawn_recording_backend().await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{tls_backend}\"\nhttp_backends = [\"{http_backend}\"]\n"
    ))
    .await;
    assert!(router.http_addr.is_none());
    let original = std::fs::read_to_string(&router.config_path).unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {FIXTURE_SNI}\r\n\r\n");

    // Add an [http] listener on a fixed (free) port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moving = SocketAddr::from(([127, 0, 0, 1], port));
    let with_http = format!("{original}\n[http]\nlisten = [\"{moving}\"]\n");
    let summary = reload(&router, &with_http).await.unwrap();
    assert!(summary.contains("1 plain-HTTP listeners"), "{summary}");
    let (local, _) = exchange(moving, request.as_bytes()).await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    assert_eq!(recorded(&mut rx).await, request.as_bytes());

    // The same address moves to the TLS listen list: now it wants TLS.
    let listen = "listen = [\"127.0.0.1:0\"]";
    assert!(original.contains(listen));
    let moved = original.replace(listen, &format!("listen = [\"127.0.0.1:0\", \"{moving}\"]"));
    reload(&router, &moved).await.unwrap();
    let (local, got) = exchange(moving, request.as_bytes()).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "not_tls");

    // And back; then [http] goes away and the port stops accepting.
    reload(&router, &with_http).await.unwrap();
    let (local, _) = exchange(moving, request.as_bytes()).await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    reload(&router, &original).await.unwrap();
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if TcpStream::connect(moving).await.is_err() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "{moving} still accepts");
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backends_share_the_routes_balance_policy() {
    let (a, mut rx_a) = spawn_recording_backend().await;
    let (b, mut rx_b) = spawn_recording_backend().await;
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{}\"\nhttp_backends = [\"{a}\", \"{b}\"]\nbalance = \"round_robin\"\n",
        refusing_addr()
    ))
    .await;
    let http = router.http_addr.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    for _ in 0..10 {
        let (local, _) = exchange(http, request).await;
        assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    }
    let (mut to_a, mut to_b) = (0, 0);
    while let Ok(got) = rx_a.try_recv() {
        assert_eq!(got, request);
        to_a += 1;
    }
    while let Ok(got) = rx_b.try_recv() {
        assert_eq!(got, request);
        to_b += 1;
    }
    assert_eq!((to_a, to_b), (5, 5));
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail2ban_filter_finds_exactly_the_http_offenders() {
    if Command::new("fail2ban-regex")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("NOTE: skipped: no fail2ban-regex on this host (.ci/run installs fail2ban)");
        return;
    }
    let (backend, _rx) = spawn_recording_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let router = http_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nhttp_backends = [\"{backend}\"]\n\n\
         [log]\naccess = {:?}\nformat = \"text\"\n",
        log.display().to_string()
    ))
    .await;
    let http = router.http_addr.unwrap();
    probe(http, ip(2), b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n").await;
    probe(http, ip(3), b"GET / HTTP/1.0\r\n\r\n").await;
    probe(http, ip(4), &garbage(100)).await;
    for _ in 0..3 {
        probe(http, ip(9), b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches('\n').count() >= 6 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log so far:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    };
    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fail2ban/filter.d/sniroute.conf");
    let out = Command::new("fail2ban-regex")
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
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "one match per offence, no routed client; log:\n{text}"
    );
    router.stop().await.unwrap();
}
