//! Reload in-process: listeners follow `listen` (added and removed) and
//! `defer_accept`, routes change at once, and an invalid config is refused
//! with its place while the old one keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sniroute::server::Control;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// A port that was free a moment ago (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `hello`, half-closes, and returns everything that came back.
async fn exchange(addr: SocketAddr, hello: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut s = connect(addr).await;
    let local = s.local_addr().unwrap();
    s.write_all(hello).await.unwrap();
    s.shutdown().await.unwrap();
    (local, read_all(&mut s).await)
}

async fn reload(router: &Router, text: &str) -> Result<String, String> {
    std::fs::write(&router.config_path, text).unwrap();
    let (tx, rx) = oneshot::channel();
    router.tx.send(Control::Reload(Some(tx))).await.unwrap();
    tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
}

fn config(listen: &[String], name: &str, backend: SocketAddr, log: &std::path::Path) -> String {
    let listen: Vec<String> = listen.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "listen = [{}]\n\n[[route]]\nsni = [{name:?}]\nbackend = \"{backend}\"\n\n\
         [ban]\nenabled = false\nstate_file = \"\"\n[rate_limit]\nper_ip = 0\n\
         [metrics]\nlisten = \"\"\n[admin]\nsocket = \"\"\n\
         [log]\naccess = {:?}\nformat = \"json\"\n",
        listen.join(", "),
        log.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_and_swaps_routes() {
    let backend = spawn_echo_backend().await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{backend}\"\n"
    ))
    .await;
    let hello = fixture("curl.bin");
    let first = router.addr;
    assert_eq!(exchange(first, &hello).await.1, hello);

    // Add a second listener; the first (configured as port 0) stays.
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let both = ["127.0.0.1:0".to_owned(), second.to_string()];
    let taken = reload(
        &router,
        &config(&both, FIXTURE_SNI, backend, &router.log_path),
    )
    .await;
    assert!(taken.as_ref().unwrap().contains("reloaded"), "{taken:?}");
    assert_eq!(exchange(second, &hello).await.1, hello);
    assert_eq!(exchange(first, &hello).await.1, hello);

    // Drop the first listener: it stops accepting, the second serves.
    let only_second = [second.to_string()];
    let cfg = config(&only_second, FIXTURE_SNI, backend, &router.log_path);
    reload(&router, &cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(first).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{first} still accepts"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(exchange(second, &hello).await.1, hello);

    // An invalid config is refused with its place; the old one keeps serving.
    let refused = reload(&router, "listen = [\"127.0.0.1:1\"]\nbogus = 1\n").await;
    let message = refused.unwrap_err();
    let path = router.config_path.display().to_string();
    assert!(message.contains(&format!("{path}:2:1:")), "{message}");
    assert_eq!(exchange(second, &hello).await.1, hello);

    // New connections follow the new routes at once.
    let cfg = config(&only_second, "other.test", backend, &router.log_path);
    reload(&router, &cfg).await.unwrap();
    let (client, got) = exchange(second, &hello).await;
    assert!(got.is_empty(), "an unknown name must get no byte");
    assert_eq!(router.wait_outcome(client).await["outcome"], "unknown_sni");
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_that_cannot_be_bound_refuses_the_whole_reload() {
    let backend = spawn_echo_backend().await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{backend}\"\n"
    ))
    .await;
    // Held by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let listen = ["127.0.0.1:0".to_owned(), busy.clone()];
    let cfg = config(&listen, "other.test", backend, &router.log_path);
    let refused = reload(&router, &cfg).await.unwrap_err();
    assert!(refused.contains(&busy), "{refused}");
    // Old routes still in force.
    let hello = fixture("curl.bin");
    let got = tokio::time::timeout(Duration::from_secs(10), exchange(router.addr, &hello)).await;
    assert_eq!(got.unwrap().1, hello);
    router.stop().await.unwrap();
}

/// Connects and sends nothing; returns how long until sniroute closed it.
async fn silent_client_closed_after(addr: SocketAddr) -> (SocketAddr, Duration) {
    let started = tokio::time::Instant::now();
    let mut s = connect(addr).await;
    let local = s.local_addr().unwrap();
    assert!(read_all(&mut s).await.is_empty());
    (local, started.elapsed())
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_turns_defer_accept_on_and_off() {
    let backend = spawn_echo_backend().await;
    let router = spawn_router(&format!(
        "[limits]\nclient_hello_timeout = \"300ms\"\n\n\
         [[route]]\nsni = [\"{FIXTURE_SNI}\"]\nbackend = \"{backend}\"\n"
    ))
    .await;
    let original = std::fs::read_to_string(&router.config_path).unwrap();
    let listen = "listen = [\"127.0.0.1:0\"]";
    assert!(original.contains(listen), "{original}");
    let off = original.replace(listen, &format!("{listen}\ndefer_accept = false"));

    // On by default: the kernel holds a silent client until the SYN-ACK
    // retransmission, about a second, then the hello timeout closes it.
    let (local, waited) = silent_client_closed_after(router.addr).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_eq!(router.wait_outcome(local).await["outcome"], "timeout");
    // A client that sends its hello is served at once all the same.
    let hello = fixture("curl.bin");
    let (local, echoed) = exchange(router.addr, &hello).await;
    assert_eq!(echoed, hello);
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");

    // Off: a silent client is accepted at once and closed by the hello timeout.
    let summary = reload(&router, &off).await.unwrap();
    assert!(summary.contains("reloaded"), "{summary}");
    let (local, waited) = silent_client_closed_after(router.addr).await;
    assert!(
        waited < Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_eq!(router.wait_outcome(local).await["outcome"], "timeout");

    // On again.
    reload(&router, &original).await.unwrap();
    let (_, waited) = silent_client_closed_after(router.addr).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}
