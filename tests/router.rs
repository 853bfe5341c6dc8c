//! End to end over real sockets: a real TLS client, the router, a real
//! backend. Proves passthrough (the client sees the backend's certificate and
//! its mTLS refusal), routing by SNI (exact, wildcard, fragmented hellos),
//! silent rejection (zero bytes to the client, the outcome in the log),
//! byte-exact relaying with half-close both ways, PROXY headers, backend
//! failover and graceful stop.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use sniroute::server::Control;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn route(sni: &str, backend: SocketAddr) -> String {
    format!("[[route]]\nsni = [{sni:?}]\nbackend = \"{backend}\"\n")
}

fn assert_routed(line: &serde_json::Value, route: &str, backend: SocketAddr) {
    assert_eq!(line["outcome"], "routed", "{line}");
    assert_eq!(line["route"], route, "{line}");
    assert_eq!(line["backend"], backend.to_string(), "{line}");
}

// ---------------------------------------------------------------------------
// 1. mTLS passthrough

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_passthrough_shows_the_backends_certificate_and_data_flows() {
    let backend = spawn_tls_backend(true).await;
    let router = spawn_router(&route("app.test", backend)).await;

    let mut tls = tls_connect(router.addr, "app.test", true)
        .await
        .expect("TLS handshake through sniroute");
    let local = tls.get_ref().0.local_addr().unwrap();
    let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(seen, pki().server_der, "the client saw another certificate");

    let mut greeting = vec![0u8; GREETING.len()];
    tls.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, GREETING);
    let message = b"ping through the router\n";
    tls.write_all(message).await.unwrap();
    let mut echo = vec![0u8; message.len()];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, message);
    tls.shutdown().await.unwrap();
    assert!(read_all(&mut tls).await.is_empty());

    let line = router.wait_outcome(local).await;
    assert_routed(&line, "app.test", backend);
    assert_eq!(line["sni"], "app.test");
    assert!(line["up"].as_u64().unwrap() > 0, "{line}");
    assert!(line["down"].as_u64().unwrap() > 0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusal_by_the_backend_reaches_the_client() {
    let backend = spawn_tls_backend(true).await;
    let router = spawn_router(&route("app.test", backend)).await;

    // TLS 1.3: the client finishes its side of the handshake (so it got the
    // backend's ServerHello and certificate), then the backend, missing a
    // client certificate, answers with the certificate_required alert.
    let result = tls_connect(router.addr, "app.test", false).await;
    let (local, error) = match result {
        Ok(mut tls) => {
            let local = tls.get_ref().0.local_addr().unwrap();
            let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(seen, pki().server_der);
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .unwrap();
            (
                local,
                read.expect_err("the backend accepted a client without a certificate"),
            )
        }
        Err(e) => panic!("the handshake itself failed, not the backend's refusal: {e}"),
    };
    let text = format!("{error:?}");
    assert!(
        text.contains("CertificateRequired") || text.contains("HandshakeFailure"),
        "the client did not get the backend's alert: {text}"
    );
    let line = router.wait_outcome(local).await;
    assert_routed(&line, "app.test", backend);
    assert!(line["down"].as_u64().unwrap() > 0, "{line}");
}

// ---------------------------------------------------------------------------
// 2. Wildcards

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_route_matches_one_or_more_labels() {
    let backend = spawn_tls_backend(false).await;
    let router = spawn_router(&route("*.wild.test", backend)).await;

    for name in ["x.wild.test", "a.b.wild.test", "A.B.WILD.TEST"] {
        let mut tls = tls_connect(router.addr, name, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let local = tls.get_ref().0.local_addr().unwrap();
        let mut greeting = vec![0u8; GREETING.len()];
        tls.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting, GREETING);
        tls.shutdown().await.unwrap();
        read_all(&mut tls).await;
        let line = router.wait_outcome(local).await;
        assert_routed(&line, "*.wild.test", backend);
        assert_eq!(line["sni"], name.to_ascii_lowercase());
    }

    // The bare suffix is not covered by the wildcard.
    let (local, got) = send_and_read_all(router.addr, &rustls_hello("wild.test").await).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "unknown_sni");
}

// ---------------------------------------------------------------------------
// 3. Rejections: the outcome in the log, zero bytes to the client

async fn expect_rejected(router: &Router, bytes: &[u8], outcome: &str) -> serde_json::Value {
    let (local, got) = send_and_read_all(router.addr, bytes).await;
    assert!(
        got.is_empty(),
        "{outcome}: the client received {} bytes",
        got.len()
    );
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], outcome, "{line}");
    assert_eq!(line["down"], 0, "{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_send_nothing_and_log_the_outcome() {
    let (backend, _rx) = spawn_recording_backend().await;
    let body = format!(
        "{}{}",
        route("app.test", backend),
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;

    let line = expect_rejected(&router, &rustls_hello("nope.test").await, "unknown_sni").await;
    assert_eq!(line["sni"], "nope.test");
    assert!(line["route"].is_null(), "{line}");

    let line = expect_rejected(&router, &fixture("openssl-nosni.bin"), "no_sni").await;
    assert!(line["sni"].is_null(), "{line}");

    let http = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    expect_rejected(&router, http, "not_tls").await;
    expect_rejected(&router, &sslv2_hello(), "not_tls").await;
    expect_rejected(&router, &garbage(256), "not_tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_slow_and_old_hellos_are_rejected() {
    let (backend, _rx) = spawn_recording_backend().await;
    let body = format!(
        "[limits]\nmax_client_hello = 1024\nclient_hello_timeout = \"300ms\"\n\n[tls]\nmin_version = \"1.2\"\n\n{}",
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;

    let chromium = fixture("chromium.bin");
    assert_eq!(chromium.len(), 1987);
    expect_rejected(&router, &chromium, "too_large").await;

    expect_rejected(&router, &fixture("tls10-only.bin"), "policy").await;

    // Half a hello, then silence: closed after the hello timeout.
    let hello = fixture("openssl.bin");
    let mut s = connect(router.addr).await;
    let local = s.local_addr().unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(read_all(&mut s).await.is_empty());
    let waited = started.elapsed();
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "timeout", "{line}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}, expected about 300ms"
    );
}

// ---------------------------------------------------------------------------
// 4. Fragmented hellos are routed and replayed byte-exact

/// Sends `bytes` (in `chunks` writes with a yield in between), half-closes,
/// and checks the backend got exactly those bytes and the log says routed.
async fn expect_replayed(
    router: &Router,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    bytes: &[u8],
    chunk: usize,
) -> serde_json::Value {
    let mut s = connect(router.addr).await;
    let local = s.local_addr().unwrap();
    for piece in bytes.chunks(chunk) {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
        if chunk < bytes.len() {
            // Let each write leave as its own segment.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    s.shutdown().await.unwrap();
    let got = recorded(rx).await;
    assert!(
        got == bytes,
        "the backend got {} bytes, not the {} sent",
        got.len(),
        bytes.len()
    );
    assert!(read_all(&mut s).await.is_empty());
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed", "{line}");
    assert_eq!(line["up"], bytes.len() as u64, "{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_hellos_are_routed_byte_exact() {
    let (backend, mut rx) = spawn_recording_backend().await;
    let body = format!(
        "{}{}",
        route("app.test", backend),
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;
    let hello = rustls_hello("app.test").await;

    // One byte per write.
    let line = expect_replayed(&router, &mut rx, &hello, 1).await;
    assert_eq!(line["sni"], "app.test");

    // Three records.
    let three = reframe(&hello, &[100, 50]);
    expect_replayed(&router, &mut rx, &three, three.len()).await;

    // Three records, the server_name extension wholly in the last one.
    let sni_at = sni_extension_offset(&hello);
    let first = sni_at / 2;
    let late = reframe(&hello, &[first, sni_at - first]);
    let line = expect_replayed(&router, &mut rx, &late, late.len()).await;
    assert_eq!(line["sni"], "app.test");

    // The big post-quantum browser hello, whole and in records of 512 bytes.
    let chromium = fixture("chromium.bin");
    let line = expect_replayed(&router, &mut rx, &chromium, chromium.len()).await;
    assert_eq!(line["sni"], FIXTURE_SNI);
    let sizes = vec![512; chromium.len() / 512 - 1];
    let framed = reframe(&chromium, &sizes);
    expect_replayed(&router, &mut rx, &framed, 700).await;

    // More than the first read takes, in one write: a hello past 2 KiB (in
    // records of 64 bytes) with the client's next bytes right behind it.
    let sizes = vec![64; chromium.len() / 64 - 1];
    let mut long = reframe(&chromium, &sizes);
    assert!(long.len() > 2048, "{}", long.len());
    long.extend_from_slice(&garbage(3000));
    let line = expect_replayed(&router, &mut rx, &long, long.len()).await;
    assert_eq!(line["sni"], FIXTURE_SNI);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_captured_client_hello_is_routed() {
    let (backend, mut rx) = spawn_recording_backend().await;
    let router = spawn_router(&route(FIXTURE_SNI, backend)).await;
    for name in [
        "curl.bin",
        "openssl.bin",
        "openssl-tls12.bin",
        "python.bin",
        "java.bin",
        "chromium.bin",
    ] {
        let hello = fixture(name);
        let line = expect_replayed(&router, &mut rx, &hello, hello.len()).await;
        assert_eq!(line["sni"], FIXTURE_SNI, "{name}: {line}");
    }
}

// ---------------------------------------------------------------------------
// 5 and 6. Bulk, byte-exact, with half-close in both orders

/// Which side finishes sending first.
#[derive(Clone, Copy)]
enum FirstFin {
    /// The client half-closes while the backend is still sending.
    Client,
    /// The backend half-closes while the client is still sending.
    Backend,
}

const UP_SEED: u64 = 0x5eed_0001;
const DOWN_SEED: u64 = 0x5eed_0002;

/// A backend that checks the replayed hello, then exchanges `len` pattern
/// bytes each way, finishing its sending before or after the client.
async fn spawn_bulk_backend(hello: Vec<u8>, len: u64, first: FirstFin) -> SocketAddr {
    let up = Pattern::new(UP_SEED);
    let down = Pattern::new(DOWN_SEED);
    spawn_backend(move |tcp| {
        let (hello, up, down) = (hello.clone(), up.clone(), down.clone());
        async move {
            let (mut r, mut w) = tcp.into_split();
            let mut got = vec![0u8; hello.len()];
            r.read_exact(&mut got).await.unwrap();
            assert!(got == hello, "the hello was not replayed exactly");
            match first {
                FirstFin::Client => {
                    // Send half, see the client's whole stream and its FIN,
                    // then send the rest: data flows down after the FIN up.
                    let reader = async {
                        up.expect(&mut r, len).await;
                        expect_eof(&mut r).await;
                    };
                    let writer = down.write_range(&mut w, 0, len / 2);
                    let ((), sent) = tokio::join!(reader, writer);
                    sent.unwrap();
                    down.write_range(&mut w, len / 2, len).await.unwrap();
                    w.shutdown().await.unwrap();
                }
                FirstFin::Backend => {
                    let writer = async {
                        down.write(&mut w, len).await.unwrap();
                        w.shutdown().await.unwrap();
                    };
                    let reader = async {
                        up.expect(&mut r, len).await;
                        expect_eof(&mut r).await;
                    };
                    tokio::join!(writer, reader);
                }
            }
        }
    })
    .await
}

/// The client side of a bulk exchange; returns its local address.
async fn bulk_client(router: SocketAddr, hello: &[u8], len: u64, first: FirstFin) -> SocketAddr {
    let up = Pattern::new(UP_SEED);
    let down = Pattern::new(DOWN_SEED);
    let tcp = connect(router).await;
    let local = tcp.local_addr().unwrap();
    let (mut r, mut w) = tcp.into_split();
    w.write_all(hello).await.unwrap();
    match first {
        FirstFin::Client => {
            let writer = async {
                up.write(&mut w, len).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let reader = async {
                down.expect(&mut r, len).await;
                expect_eof(&mut r).await;
            };
            tokio::join!(writer, reader);
        }
        FirstFin::Backend => {
            // Send half, see the backend's whole stream and its FIN, then
            // send the rest: data flows up after the FIN down.
            let reader = async {
                down.expect(&mut r, len).await;
                expect_eof(&mut r).await;
            };
            let writer = up.write_range(&mut w, 0, len / 2);
            let ((), sent) = tokio::join!(reader, writer);
            sent.unwrap();
            up.write_range(&mut w, len / 2, len).await.unwrap();
            w.shutdown().await.unwrap();
        }
    }
    local
}

/// 64 MiB: large enough to cycle any pipe or buffer many times over.
const BULK: u64 = 64 * 1024 * 1024;

/// One 64 MiB exchange each way; `splice` picks the relay (splice(2) or the
/// plain copy), both of which must be byte-exact.
async fn bulk_one_connection(first: FirstFin, splice: bool) {
    let hello = fixture("openssl.bin");
    let backend = spawn_bulk_backend(hello.clone(), BULK, first).await;
    let body = format!("splice = {splice}\n\n{}", route(FIXTURE_SNI, backend));
    let router = spawn_router(&body).await;
    let local = tokio::time::timeout(
        Duration::from_secs(30),
        bulk_client(router.addr, &hello, BULK, first),
    )
    .await
    .expect("64 MiB each way took over 30 s");
    let line = router.wait_outcome(local).await;
    assert_routed(&line, FIXTURE_SNI, backend);
    assert_eq!(line["up"], hello.len() as u64 + BULK, "{line}");
    assert_eq!(line["down"], BULK, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64mib_each_way_client_finishes_first() {
    bulk_one_connection(FirstFin::Client, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64mib_each_way_backend_finishes_first() {
    bulk_one_connection(FirstFin::Backend, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64mib_each_way_by_plain_copy_client_finishes_first() {
    bulk_one_connection(FirstFin::Client, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64mib_each_way_by_plain_copy_backend_finishes_first() {
    bulk_one_connection(FirstFin::Backend, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections_each_byte_exact() {
    const CONNS: usize = 100;
    const EACH: u64 = 256 * 1024;
    let hello = fixture("curl.bin");
    let backend = spawn_bulk_backend(hello.clone(), EACH, FirstFin::Client).await;
    let router = spawn_router(&route(FIXTURE_SNI, backend)).await;
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            let hello = hello.clone();
            let addr = router.addr;
            tokio::spawn(async move { bulk_client(addr, &hello, EACH, FirstFin::Client).await })
        })
        .collect();
    let mut locals = Vec::new();
    for c in clients {
        locals.push(
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .expect("concurrent exchanges took over 30 s")
                .unwrap(),
        );
    }
    for local in locals {
        let line = router.wait_outcome(local).await;
        assert_routed(&line, FIXTURE_SNI, backend);
        assert_eq!(line["up"], hello.len() as u64 + EACH, "{line}");
        assert_eq!(line["down"], EACH, "{line}");
    }
}

// ---------------------------------------------------------------------------
// 7. PROXY protocol

/// Splits a PROXY v1 header off `got`: (source, destination, rest).
fn parse_v1(got: &[u8]) -> (SocketAddr, SocketAddr, &[u8]) {
    let end = got.windows(2).position(|w| w == b"\r\n").expect("no CRLF") + 2;
    let line = std::str::from_utf8(&got[..end - 2]).unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 6, "{line:?}");
    assert_eq!(f[0], "PROXY");
    let src: IpAddr = f[2].parse().unwrap();
    let dst: IpAddr = f[3].parse().unwrap();
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    assert_eq!(f[1], family, "{line:?}");
    let src = SocketAddr::new(src, f[4].parse().unwrap());
    let dst = SocketAddr::new(dst, f[5].parse().unwrap());
    (src, dst, &got[end..])
}

/// Splits a PROXY v2 header off `got`: (source, destination, rest).
fn parse_v2(got: &[u8]) -> (SocketAddr, SocketAddr, &[u8]) {
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n", "no v2 signature");
    assert_eq!(got[12], 0x21, "not version 2 / PROXY");
    let len = u16::from_be_bytes([got[14], got[15]]) as usize;
    let a = &got[16..16 + len];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let (src, dst) = match got[13] {
        0x11 => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&a[at..at + 4]).unwrap());
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&a[at..at + 16]).unwrap());
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        other => panic!("unexpected family/protocol byte {other:#04x}"),
    };
    (src, dst, &got[16 + len..])
}

async fn proxy_protocol_carries_the_client(version: &str) {
    let (backend, mut rx) = spawn_recording_backend().await;
    let body = format!(
        "[[route]]\nsni = [{FIXTURE_SNI:?}]\nbackend = \"{backend}\"\nproxy_protocol = \"{version}\"\n"
    );
    let Some(router) = spawn_router_v6(&body).await else {
        return;
    };
    let hello = fixture("openssl.bin");
    for listener in [router.addr, router.addr6.unwrap()] {
        let mut s = connect(listener).await;
        let local = s.local_addr().unwrap();
        s.write_all(&hello).await.unwrap();
        s.shutdown().await.unwrap();
        let got = recorded(&mut rx).await;
        let (src, dst, rest) = if version == "v1" {
            parse_v1(&got)
        } else {
            parse_v2(&got)
        };
        assert_eq!(src, local, "{version} via {listener}: wrong client");
        assert_eq!(dst, listener, "{version} via {listener}: wrong destination");
        assert!(
            rest == hello,
            "{version} via {listener}: hello not replayed after the header"
        );
        assert!(read_all(&mut s).await.is_empty());
        let line = router.wait_outcome(local).await;
        assert_eq!(line["outcome"], "routed", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_carries_the_client_address() {
    proxy_protocol_carries_the_client("v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_carries_the_client_address() {
    proxy_protocol_carries_the_client("v2").await;
}

// ---------------------------------------------------------------------------
// 8. Backends down

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_fails_over_then_backend_error() {
    let (working, mut rx) = spawn_recording_backend().await;
    let refusing = refusing_addr();
    let refusing2 = refusing_addr();
    let body = format!(
        "[[route]]\nsni = [{FIXTURE_SNI:?}]\nbackends = [\"{refusing}\", \"{working}\"]\n\n\
         [[route]]\nsni = [\"app.test\"]\nbackends = [\"{refusing}\", \"{refusing2}\"]\n"
    );
    let router = spawn_router(&body).await;

    let hello = fixture("openssl.bin");
    let line = expect_replayed(&router, &mut rx, &hello, hello.len()).await;
    assert_eq!(line["backend"], working.to_string(), "{line}");

    let line = expect_rejected(&router, &rustls_hello("app.test").await, "backend_error").await;
    assert_eq!(line["route"], "app.test", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_backend_times_out_as_backend_error() {
    let Some(hole) = tokio::task::spawn_blocking(blackhole).await.unwrap() else {
        eprintln!(
            "NOTE: skipped: this kernel does not drop SYNs to a full listen queue on loopback"
        );
        return;
    };
    let body = format!(
        "[limits]\nconnect_timeout = \"500ms\"\n\n{}",
        route(FIXTURE_SNI, hole.addr)
    );
    let router = spawn_router(&body).await;
    let started = tokio::time::Instant::now();
    let line = expect_rejected(&router, &fixture("openssl.bin"), "backend_error").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "gave up after {waited:?}, expected about connect_timeout = 500ms"
    );
    assert!(line["ms"].as_u64().unwrap() >= 450, "{line}");
}

// ---------------------------------------------------------------------------
// 9. Graceful stop

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_refuses_new_connections_and_lets_open_ones_finish() {
    let backend = spawn_echo_backend().await;
    let body = format!(
        "[limits]\nshutdown_grace = \"10s\"\n\n{}",
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;
    let hello = fixture("openssl.bin");

    let mut open = connect(router.addr).await;
    let local = open.local_addr().unwrap();
    open.write_all(&hello).await.unwrap();
    let mut echo = vec![0u8; hello.len()];
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, hello);

    router.tx.send(Control::Stop).await.unwrap();

    // New connections are refused once the accept loop has stopped.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpStream::connect(router.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Accepted by the kernel just before the listener closed, then
            // reset with it: the stop is still under way, try again.
            Ok(_) | Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepting {WAIT:?} after stop"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
    assert!(
        !router.task.is_finished(),
        "the server returned with a connection still open"
    );

    // The open connection still flows both ways.
    let more = b"still here after stop";
    open.write_all(more).await.unwrap();
    let mut echo = vec![0u8; more.len()];
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, more);
    open.shutdown().await.unwrap();
    assert!(read_all(&mut open).await.is_empty());

    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed", "{line}");
    assert_eq!(line["down"], (hello.len() + more.len()) as u64, "{line}");
    let result = tokio::time::timeout(Duration::from_secs(5), router.task)
        .await
        .expect("the server did not return once its last connection ended")
        .unwrap();
    result.unwrap();
}

// ---------------------------------------------------------------------------
// Extras from the contract: idle timeout, the catch-all backend

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_idle_timeout() {
    let backend = spawn_echo_backend().await;
    let body = format!(
        "[limits]\nidle_timeout = \"300ms\"\n\n{}",
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;
    let hello = fixture("openssl.bin");
    let mut s = connect(router.addr).await;
    let local = s.local_addr().unwrap();
    s.write_all(&hello).await.unwrap();
    let mut echo = vec![0u8; hello.len()];
    s.read_exact(&mut echo).await.unwrap();
    let idle_from = tokio::time::Instant::now();
    assert!(read_all(&mut s).await.is_empty());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle, expected about 300ms"
    );
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_action_forward_sends_unknown_and_missing_sni_to_the_catch_all() {
    let (catch_all, mut rx) = spawn_recording_backend().await;
    let (known, _known_rx) = spawn_recording_backend().await;
    let body = format!(
        "{}\n[unknown]\naction = \"forward\"\nbackend = \"{catch_all}\"\n",
        route("app.test", known)
    );
    let router = spawn_router(&body).await;
    for hello in [
        rustls_hello("nope.test").await,
        fixture("openssl-nosni.bin"),
    ] {
        let line = expect_replayed(&router, &mut rx, &hello, hello.len()).await;
        assert_eq!(line["route"], "unknown", "{line}");
        assert_eq!(line["backend"], catch_all.to_string(), "{line}");
    }
}

// ---------------------------------------------------------------------------
// defer_accept: the kernel hands over a connection once its hello arrived

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defer_accept_holds_silent_clients_in_the_kernel() {
    let (backend, mut rx) = spawn_recording_backend().await;
    // One connection at a time: a silent client that had been handed over
    // would hold the only slot, and the next client would be `overloaded`.
    let body = format!(
        "defer_accept = true\n\n[limits]\nmax_connections = 1\nclient_hello_timeout = \"300ms\"\n\n{}",
        route(FIXTURE_SNI, backend)
    );
    let router = spawn_router(&body).await;

    let silent_started = tokio::time::Instant::now();
    let mut silent = connect(router.addr).await;
    let silent_local = silent.local_addr().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let hello = fixture("openssl.bin");
    let line = expect_replayed(&router, &mut rx, &hello, hello.len()).await;
    assert_eq!(line["sni"], FIXTURE_SNI);

    // The silent one is handed over with the SYN-ACK retransmission (about a
    // second after its handshake), then its hello timeout runs.
    assert!(read_all(&mut silent).await.is_empty());
    let waited = silent_started.elapsed();
    let line = router.wait_outcome(silent_local).await;
    assert_eq!(line["outcome"], "timeout", "{line}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}: the silent client was not deferred"
    );
}
