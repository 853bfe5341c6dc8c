//! Balancing and health checks over real sockets: round robin spreads
//! connections evenly, least connections picks the idler backend, a health
//! check takes a killed backend out (no client waits on it, none fails) and
//! puts it back once it answers again, and a reload stops the old checks.
//!
//! Metrics are read from the process-wide recorder; every test uses route
//! names of its own, so tests running in parallel do not mix their series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use sniroute::server::Control;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A backend that says its number first, then echoes; it counts the
/// connections it accepted (health checks included) and can be killed (its
/// listener closed) and started again on the same port.
struct Numbered {
    addr: SocketAddr,
    id: u8,
    accepted: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Numbered {
    async fn start(id: u8) -> Numbered {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut n = Numbered {
            addr: listener.local_addr().unwrap(),
            id,
            accepted: Arc::new(AtomicUsize::new(0)),
            task: None,
        };
        n.serve(listener);
        n
    }

    fn serve(&mut self, listener: TcpListener) {
        let (id, accepted) = (self.id, Arc::clone(&self.accepted));
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if tcp.write_all(&[id]).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        }));
    }

    /// Closes the listener: new connects are refused.
    fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens on the same port again.
    async fn restart(&mut self) {
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Numbered {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens a connection through the router, sends the hello and returns the
/// stream (held open) and the number of the backend that answered.
async fn open(router: &Router, hello: &[u8]) -> (TcpStream, u8) {
    let mut s = connect(router.addr).await;
    s.write_all(hello).await.unwrap();
    let mut id = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut id))
        .await
        .expect("no backend answered in time")
        .expect("closed without a backend");
    (s, id[0])
}

/// One whole connection: the backend's number, once the echo came back
/// and the router logged the end (so it no longer counts as open).
async fn once(router: &Router, hello: &[u8]) -> u8 {
    let (mut s, id) = open(router, hello).await;
    let local = s.local_addr().unwrap();
    s.shutdown().await.unwrap();
    let echo = read_all(&mut s).await;
    assert_eq!(echo, hello, "the hello was not relayed whole");
    assert_eq!(router.wait_outcome(local).await["outcome"], "routed");
    id
}

/// The value of the series `name{route="ROUTE",backend="ADDR"}` at a
/// scrape of the router now.
fn backend_metric(router: &Router, name: &str, route: &str, backend: SocketAddr) -> f64 {
    let text = router.scrape();
    let want = [
        format!("route=\"{route}\""),
        format!("backend=\"{backend}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| want.iter().all(|w| l.contains(w.as_str())))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {route}/{backend} in:\n{text}"))
}

/// Waits (bounded) until `sniroute_backend_up` for the backend is `want`;
/// returns how long that took.
async fn wait_up(router: &Router, route: &str, backend: SocketAddr, want: f64) -> Duration {
    wait_up_within(router, route, backend, want, WAIT).await
}

/// Like [`wait_up`], bounded by `bound`.
async fn wait_up_within(
    router: &Router,
    route: &str,
    backend: SocketAddr,
    want: f64,
    bound: Duration,
) -> Duration {
    let from = Instant::now();
    loop {
        if backend_metric(router, "sniroute_backend_up", route, backend) == want {
            return from.elapsed();
        }
        assert!(
            from.elapsed() < bound,
            "sniroute_backend_up{{{route},{backend}}} never became {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn outcomes(router: &Router, outcome: &str) -> usize {
    router
        .log_lines()
        .iter()
        .filter(|l| l["outcome"] == outcome)
        .count()
}

async fn reload(router: &Router, text: &str) -> Result<String, String> {
    std::fs::write(&router.config_path, text).unwrap();
    let (tx, rx) = oneshot::channel();
    router.tx.send(Control::Reload(Some(tx))).await.unwrap();
    tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_100_connections_evenly_over_3_backends() {
    let backends = [
        Numbered::start(0).await,
        Numbered::start(1).await,
        Numbered::start(2).await,
    ];
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"rr.test\"]\nbackends = [{}]\nbalance = \"round_robin\"\n",
        list.join(", ")
    ))
    .await;
    let hello = rustls_hello("rr.test").await;
    let mut counts = [0usize; 3];
    for _ in 0..100 {
        counts[once(&router, &hello).await as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        // 100 / 3 = 33.3, within ±10%.
        assert!((30..=37).contains(&c), "backend {i} got {c}: {counts:?}");
        let total = backend_metric(
            &router,
            "sniroute_backend_connections_total",
            "rr.test",
            backends[i].addr,
        );
        assert_eq!(total as usize, c, "the metric counts what the backend got");
    }
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_a_new_connection_to_the_idler_backend() {
    let a = Numbered::start(0).await;
    let b = Numbered::start(1).await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"lc.test\"]\nbackends = [\"{}\", \"{}\"]\nbalance = \"least_connections\"\n",
        a.addr, b.addr
    ))
    .await;
    let hello = rustls_hello("lc.test").await;
    // One long connection pins a backend; every next short one goes to the other.
    let (held, busy) = open(&router, &hello).await;
    for _ in 0..6 {
        assert_ne!(once(&router, &hello).await, busy);
    }
    // Two held on the idler side: now the first one is the idler.
    let (h1, other) = open(&router, &hello).await;
    assert_ne!(other, busy);
    let (h2, again) = open(&router, &hello).await;
    assert!(again == busy || again == other);
    let (h3, next) = open(&router, &hello).await;
    // The fourth went where fewer were: 2 and 2.
    let held_busy = [busy, other, again, next]
        .iter()
        .filter(|&&x| x == busy)
        .count();
    assert_eq!(held_busy, 2, "the 4 long connections are not 2 and 2");
    drop((held, h1, h2, h3));
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_takes_a_dead_backend_out_and_puts_it_back() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const FALL: u32 = 2;
    const RISE: u32 = 2;
    /// Scheduling noise allowed on a loaded 2-core runner, on top of the
    /// promise (one interval of phase + the check itself).
    const SLACK: Duration = Duration::from_millis(1500);
    let a = Numbered::start(0).await;
    let mut b = Numbered::start(1).await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"hc.test\"]\nbackends = [\"{}\", \"{}\"]\nbalance = \"round_robin\"\n\
         [route.health_check]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = {RISE}\n",
        a.addr,
        b.addr,
        INTERVAL.as_millis(),
        INTERVAL.as_millis(),
    ))
    .await;
    let hello = rustls_hello("hc.test").await;
    // Both serve, and the checks reach both.
    let mut seen = [false; 2];
    for _ in 0..4 {
        seen[once(&router, &hello).await as usize] = true;
    }
    assert_eq!(seen, [true, true]);
    let deadline = Instant::now() + WAIT;
    while b.accepted() < 4 + 1 {
        assert!(Instant::now() < deadline, "no health check reached b");
        tokio::time::sleep(POLL).await;
    }

    // Kill b without any client traffic: the checks alone take it out.
    b.kill();
    let took = wait_up(&router, "hc.test", b.addr, 0.0).await;
    eprintln!(
        "b taken out {took:?} after it died (fall x interval = {:?})",
        INTERVAL * FALL
    );
    assert!(took <= INTERVAL * (FALL + 1) + SLACK, "took {took:?}");
    let failures = backend_metric(
        &router,
        "sniroute_backend_connect_failures_total",
        "hc.test",
        b.addr,
    );
    assert_eq!(failures, 0.0, "no client tried b");
    let routed_b = backend_metric(
        &router,
        "sniroute_backend_connections_total",
        "hc.test",
        b.addr,
    );
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(once(&router, &hello).await, 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a client waited"
        );
    }
    assert_eq!(outcomes(&router, "backend_error"), 0);
    assert_eq!(
        backend_metric(
            &router,
            "sniroute_backend_connect_failures_total",
            "hc.test",
            b.addr
        ),
        0.0,
        "a client connect was attempted to the dead backend"
    );
    assert_eq!(
        backend_metric(
            &router,
            "sniroute_backend_connections_total",
            "hc.test",
            b.addr
        ),
        routed_b
    );

    // Start b again: back within rise x interval (plus the phase and noise).
    b.restart().await;
    let took = wait_up(&router, "hc.test", b.addr, 1.0).await;
    eprintln!(
        "b back {took:?} after it restarted (rise x interval = {:?})",
        INTERVAL * RISE
    );
    assert!(took <= INTERVAL * (RISE + 1) + SLACK, "took {took:?}");
    let mut back = false;
    for _ in 0..4 {
        back |= once(&router, &hello).await == 1;
    }
    assert!(back, "round robin never used b again");
    assert_eq!(outcomes(&router, "backend_error"), 0);
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_checked_down_fails_at_once_with_backend_error() {
    let mut a = Numbered::start(0).await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"down.test\"]\nbackend = \"{}\"\n\
         [route.health_check]\ninterval = \"100ms\"\nfall = 1\n",
        a.addr
    ))
    .await;
    a.kill();
    wait_up(&router, "down.test", a.addr, 0.0).await;
    let hello = rustls_hello("down.test").await;
    let started = Instant::now();
    let (local, got) = send_and_read_all(router.addr, &hello).await;
    assert!(got.is_empty());
    assert_eq!(router.wait_outcome(local).await["outcome"], "backend_error");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        backend_metric(
            &router,
            "sniroute_backend_connect_failures_total",
            "down.test",
            a.addr
        ),
        0.0,
        "no connect was tried"
    );
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_skipped_by_the_next_connections() {
    let a = Numbered::start(0).await;
    let dead = refusing_addr();
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"skip.test\"]\nbackends = [\"{dead}\", \"{}\"]\n",
        a.addr
    ))
    .await;
    let hello = rustls_hello("skip.test").await;
    for _ in 0..5 {
        assert_eq!(once(&router, &hello).await, 0);
    }
    assert_eq!(
        backend_metric(
            &router,
            "sniroute_backend_connect_failures_total",
            "skip.test",
            dead
        ),
        1.0,
        "only the first connection tried the refusing backend"
    );
    assert_eq!(
        backend_metric(&router, "sniroute_backend_up", "skip.test", dead),
        0.0
    );
    assert_eq!(outcomes(&router, "backend_error"), 0);
    router.stop().await.unwrap();
}

/// The gauge is read when scraped: once the passive skip has ended, a
/// backend that answers again reads 1 with no client having tried it
/// (with `balance = "first"` nothing tries the first backend's standby
/// twin, so an event-driven gauge would stay 0 and alert forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_up_again_reads_1_once_its_skip_has_ended_without_traffic() {
    let mut a = Numbered::start(0).await;
    let b = Numbered::start(1).await;
    a.kill();
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"back.test\"]\nbackends = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ))
    .await;
    assert_eq!(
        backend_metric(&router, "sniroute_backend_up", "back.test", a.addr),
        1.0,
        "in service before anything failed"
    );
    let hello = rustls_hello("back.test").await;
    let refused_at = Instant::now();
    assert_eq!(once(&router, &hello).await, 1, "a refused, b took it");
    assert_eq!(
        backend_metric(&router, "sniroute_backend_up", "back.test", a.addr),
        0.0,
        "skipped after refusing"
    );
    a.restart().await;
    let skip = sniroute::balance::PASSIVE_SKIP;
    wait_up_within(&router, "back.test", a.addr, 1.0, skip + WAIT).await;
    let took = refused_at.elapsed();
    eprintln!("a read 1 again {took:?} after it refused (skip = {skip:?})");
    assert!(took >= skip, "up again before the skip ended: {took:?}");
    assert_eq!(a.accepted(), 0, "no client (and no check) tried a again");
    assert_eq!(
        backend_metric(&router, "sniroute_backend_up", "back.test", b.addr),
        1.0
    );
    // And it is used again: the first in order.
    assert_eq!(once(&router, &hello).await, 0);
    router.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_backends_stops_the_old_checks() {
    const INTERVAL_MS: u64 = 100;
    let old = Numbered::start(0).await;
    let new = Numbered::start(1).await;
    let router = spawn_router(&format!(
        "[[route]]\nsni = [\"reload.test\"]\nbackend = \"{}\"\n\
         [route.health_check]\ninterval = \"{INTERVAL_MS}ms\"\n",
        old.addr
    ))
    .await;
    let deadline = Instant::now() + WAIT;
    while old.accepted() < 2 {
        assert!(
            Instant::now() < deadline,
            "the old backend was never checked"
        );
        tokio::time::sleep(POLL).await;
    }
    let text = std::fs::read_to_string(&router.config_path).unwrap();
    let taken = reload(
        &router,
        &text.replace(&old.addr.to_string(), &new.addr.to_string()),
    )
    .await;
    assert!(taken.is_ok(), "{taken:?}");
    while new.accepted() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new backend was never checked"
        );
        tokio::time::sleep(POLL).await;
    }
    let before = old.accepted();
    // Proving a negative takes time: ten check intervals without a check.
    tokio::time::sleep(Duration::from_millis(10 * INTERVAL_MS)).await;
    assert!(
        old.accepted() <= before + 1,
        "the old backend is still checked: {} -> {}",
        before,
        old.accepted()
    );
    assert!(new.accepted() >= 5, "the new checks stopped too");
    let hello = rustls_hello("reload.test").await;
    assert_eq!(once(&router, &hello).await, 1);
    router.stop().await.unwrap();
}
