//! Route policy over real sockets: who may reach a name (`allow`, outcome
//! `denied`, a strike only when asked) and which route an ALPN offer picks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// The loopback source 127.0.0.`y`.
fn lo(y: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, y))
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

/// One connection from `src`: writes `bytes`, half-closes, reads to the end.
async fn probe(to: SocketAddr, src: IpAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut s = connect_from(src, to).await;
    let local = s.local_addr().unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    (local, read_all(&mut s).await)
}

/// The ClientHello rustls sends for `sni` offering `alpn`.
async fn hello_with_alpn(sni: &str, alpn: &[&str]) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut config = (*client_config(false)).clone();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _ = TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await;
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await.unwrap();
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut hello = header.to_vec();
    hello.resize(5 + len, 0);
    s.read_exact(&mut hello[5..]).await.unwrap();
    drop(s);
    client.abort();
    hello
}

// ---------------------------------------------------------------------------
// allow

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lets_listed_sources_through_and_closes_others_with_denied() {
    let backend = spawn_tls_backend(false).await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\n\
         allow = [\"127.0.0.2\", \"10.0.0.0/8\", \"2001:db8::/32\"]\n"
    ))
    .await;

    // 127.0.0.2: a real TLS client reaches the backend.
    let tcp = connect_from(lo(2), router.addr).await;
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from("app.test").unwrap();
    let mut tls = TlsConnector::from(client_config(false))
        .connect(name, tcp)
        .await
        .expect("TLS through sniroute from an allowed source");
    let mut greeting = vec![0u8; GREETING.len()];
    tls.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, GREETING);
    drop(tls);
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed", "{line}");

    // 127.0.0.3: closed without a byte, outcome denied, route named.
    let hello = rustls_hello("app.test").await;
    let (local, got) = probe(router.addr, lo(3), &hello).await;
    assert!(got.is_empty(), "a denied client got {} bytes", got.len());
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "denied", "{line}");
    assert_eq!(line["route"], "app.test", "{line}");
    assert_eq!(line["backend"], serde_json::Value::Null, "{line}");

    // Not struck by default: 127.0.0.3 is denied again, not banned.
    let router = {
        router.stop().await.unwrap();
        spawn_router(&format!(
            "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nallow = [\"127.0.0.2/32\"]\n\n\
             [ban]\nenabled = true\nstate_file = \"\"\nignore = []\n"
        ))
        .await
    };
    for _ in 0..2 {
        let (local, got) = probe(router.addr, lo(3), &hello).await;
        assert!(got.is_empty());
        assert_eq!(router.wait_outcome(local).await["outcome"], "denied");
    }
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_strikes_only_when_listed_in_strike_on() {
    let backend = spawn_echo_backend().await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{backend}\"\nallow = [\"127.0.0.2\"]\n\n\
         [ban]\nenabled = true\nstate_file = \"\"\nignore = []\nstrike_on = [\"denied\"]\n"
    ))
    .await;
    let hello = rustls_hello("app.test").await;
    let (local, _) = probe(router.addr, lo(4), &hello).await;
    assert_eq!(router.wait_outcome(local).await["outcome"], "denied");
    let (local, got) = probe(router.addr, lo(4), &hello).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "banned");
    // The allowed source still routes (the echo backend returns the hello).
    let (_, got) = probe(router.addr, lo(2), &hello).await;
    assert_eq!(got, hello);
    router.stop().await.unwrap();
}

// ---------------------------------------------------------------------------
// alpn

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alpn_route_catches_acme_tls_while_h2_goes_to_the_plain_route() {
    let (plain, mut plain_rx) = spawn_recording_backend().await;
    let (acme, mut acme_rx) = spawn_recording_backend().await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"app.test\"]\nbackend = \"{plain}\"\n\n\
         [[route]]\nsni = [\"app.test\"]\nalpn = [\"acme-tls/1\"]\nbackend = \"{acme}\"\n"
    ))
    .await;

    let acme_hello = hello_with_alpn("app.test", &["acme-tls/1"]).await;
    let (local, got) = probe(router.addr, lo(1), &acme_hello).await;
    assert!(got.is_empty());
    assert_eq!(recorded(&mut acme_rx).await, acme_hello);
    let line = router.wait_outcome(local).await;
    assert_eq!(line["outcome"], "routed", "{line}");
    assert_eq!(line["route"], "app.test[acme-tls/1]", "{line}");
    assert_eq!(line["backend"], acme.to_string(), "{line}");
    assert_eq!(line["alpn"], "acme-tls/1", "{line}");

    let h2_hello = hello_with_alpn("app.test", &["h2", "http/1.1"]).await;
    let (local, _) = probe(router.addr, lo(1), &h2_hello).await;
    assert_eq!(recorded(&mut plain_rx).await, h2_hello);
    let line = router.wait_outcome(local).await;
    assert_eq!(line["route"], "app.test", "{line}");
    assert_eq!(line["backend"], plain.to_string(), "{line}");
    assert_eq!(line["alpn"], "h2", "{line}");

    // No ALPN at all: the plain route, and `alpn` is null in JSON.
    let bare = rustls_hello("app.test").await;
    let (local, _) = probe(router.addr, lo(1), &bare).await;
    assert_eq!(recorded(&mut plain_rx).await, bare);
    let line = router.wait_outcome(local).await;
    assert_eq!(line["route"], "app.test", "{line}");
    assert_eq!(line["alpn"], serde_json::Value::Null, "{line}");
    assert!(
        acme_rx.try_recv().is_err(),
        "the ALPN route got a stray connection"
    );
    router.stop().await.unwrap();
}
