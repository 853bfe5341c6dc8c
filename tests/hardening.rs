//! Hardening under hostile load and faults, against the real `sniroute run`
//! (so its memory, descriptors and CPU time can be read from /proc):
//! slowloris, an unknown-SNI flood from thousands of sources, descriptor
//! exhaustion, backend faults and client faults; plus the panic containment
//! the daemon relies on and the loopback default of the metrics endpoint.
//!
//! CI-sized: the whole file takes well under a minute. The sizes come from
//! the environment so `benches/hardening/flood.sh` can run the heavy variants
//! on demand (5,000 slowloris connections, a bigger flood) with the same code:
//! `SNIROUTE_SLOWLORIS`, `SNIROUTE_FLOOD_SOURCES`, `SNIROUTE_LEGIT`.
//! Every test prints its figures (run with `--nocapture` to see them).

// Helpers outside #[test] functions panic on purpose: they are test setup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "hardening/daemon.rs"]
mod daemon;
#[path = "../fuzz/checks/clienthello.rs"]
mod fuzz_clienthello;
#[path = "../fuzz/checks/config.rs"]
mod fuzz_config;
#[path = "../fuzz/checks/httphead.rs"]
mod fuzz_httphead;
#[path = "../fuzz/checks/proxyheader.rs"]
mod fuzz_proxyheader;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Pattern, WAIT, fixture, read_all, rustls_hello, spawn_backend, spawn_echo_backend};
use daemon::{Daemon, TICKS_PER_SECOND};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The route legitimate clients use: the name every captured fixture sends.
const LEGIT_SNI: &str = common::FIXTURE_SNI;

/// Pipes a single splice relay holds (one per direction), two fds each; the
/// idle pool keeps them for the next connection.
const PIPE_FDS_PER_RELAY: usize = 4;

/// A size from the environment (for the on-demand heavy runs), or `default`.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this test process's soft open-files limit to its hard one: the
/// load tests hold thousands of sockets.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn route(sni: &str, backend: SocketAddr) -> String {
    format!("[[route]]\nsni = [{sni:?}]\nbackend = \"{backend}\"\n")
}

/// One legitimate exchange through an echo backend: the hello, 4 KiB, a
/// half-close, and everything echoed back byte-exact before EOF.
async fn legit_round(addr: SocketAddr, hello: &[u8]) -> Result<(), String> {
    const PAYLOAD: u64 = 4096;
    let run = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut sent = hello.to_vec();
        sent.extend_from_slice(Pattern::new(7).slice(0, PAYLOAD as usize));
        s.write_all(&sent)
            .await
            .map_err(|e| format!("write: {e}"))?;
        s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if got != sent {
            return Err(format!("echoed {} of {} bytes", got.len(), sent.len()));
        }
        Ok(())
    };
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Legitimate clients, `parallel` at a time, until `stop` is set and at
/// least `min_rounds` are done. Returns (rounds, errors), printing the errors.
fn spawn_legit(
    addr: SocketAddr,
    hello: Arc<Vec<u8>>,
    parallel: usize,
    min_rounds: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let rounds = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut set = JoinSet::new();
        for _ in 0..parallel {
            let (hello, stop) = (hello.clone(), stop.clone());
            let (rounds, errors) = (rounds.clone(), errors.clone());
            set.spawn(async move {
                while !stop.load(Ordering::Relaxed)
                    || rounds.load(Ordering::Relaxed) < min_rounds as u64
                {
                    if let Err(e) = legit_round(addr, &hello).await {
                        eprintln!("legitimate client: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while set.join_next().await.is_some() {}
        (
            rounds.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        )
    })
}

/// Samples the daemon's RSS every 20 ms until `stop`; returns the peak, KiB.
fn spawn_rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    })
}

/// The warm-up every daemon test starts with: one legitimate round, its log
/// line, so the pipe pool and lazy allocations exist before the baseline.
async fn warm_up(d: &Daemon, hello: &[u8]) {
    legit_round(d.addr, hello).await.unwrap();
    d.wait_outcomes("routed", 1, WAIT).await;
}

// ---------------------------------------------------------------------------
// Slowloris

/// One slowloris client: sends the hello one byte a second; returns how long
/// after connecting the router closed it (without sending it a byte).
async fn slowloris(addr: SocketAddr, hello: Arc<Vec<u8>>) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // Never the whole hello: it must stay incomplete.
    for byte in hello.iter().take(hello.len() - 1) {
        let _ = s.write_all(std::slice::from_ref(byte)).await;
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => {} // a second passed: the next byte
            Ok(Ok(0) | Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(n)) => return Err(format!("got {n} bytes")),
        }
        if start.elapsed() > WAIT {
            break;
        }
    }
    Err("never closed".into())
}

/// N slow clients are all closed at `client_hello_timeout` (outcome
/// `timeout`) while legitimate clients keep routing without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_hello_timeout() {
    raise_own_fd_limit();
    let n = size("SNIROUTE_SLOWLORIS", 500);
    let legit = size("SNIROUTE_LEGIT", 100);
    let hello_timeout = Duration::from_secs(2);
    /// RSS allowed per held slow connection: its task, socket state and the
    /// 2 KiB first allocation for its hello (measured: ~4 KiB).
    const RSS_PER_CONN_KIB: u64 = 8;
    /// Fixed slack: allocator arenas and the legitimate clients' relays.
    const RSS_SLACK_KIB: u64 = 8 * 1024;
    let echo = spawn_echo_backend().await;
    let d = daemon::spawn(
        &format!(
            "[limits]\nclient_hello_timeout = \"2s\"\nmax_connections = {}\n\n{}",
            n + 1000,
            route(LEGIT_SNI, echo)
        ),
        None,
    );
    let hello = Arc::new(fixture("curl.bin"));
    warm_up(&d, &hello).await;
    let rss_before = d.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_rss_sampler(d.pid(), stop.clone());
    let mut slow = JoinSet::new();
    for _ in 0..n {
        slow.spawn(slowloris(d.addr, hello.clone()));
    }
    let legit_task = spawn_legit(d.addr, hello.clone(), 4, legit, stop.clone());
    let (mut closed, mut earliest, mut latest) = (0, Duration::MAX, Duration::ZERO);
    while let Some(result) = slow.join_next().await {
        let elapsed = result
            .unwrap()
            .unwrap_or_else(|e| panic!("slowloris client: {e}"));
        closed += 1;
        earliest = earliest.min(elapsed);
        latest = latest.max(elapsed);
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, errors) = legit_task.await.unwrap();
    let peak = sampler.await.unwrap();
    d.wait_outcomes("timeout", n, WAIT).await;
    println!(
        "slowloris: {closed} connections closed after {earliest:?}..{latest:?} \
         (client_hello_timeout {hello_timeout:?}); {rounds} legitimate rounds, {errors} errors; \
         RSS {rss_before} KiB before, peak {peak} KiB (bound +{RSS_PER_CONN_KIB} KiB a connection \
         +{RSS_SLACK_KIB} KiB)"
    );
    assert_eq!(errors, 0, "legitimate clients saw errors");
    assert_eq!(closed, n);
    let bound = rss_before + n as u64 * RSS_PER_CONN_KIB + RSS_SLACK_KIB;
    assert!(peak <= bound, "RSS peaked at {peak} KiB, bound {bound} KiB");
    // Closed by the timeout, not before; the slack covers a loaded runner.
    assert!(
        earliest >= hello_timeout - Duration::from_millis(100),
        "{earliest:?}"
    );
    assert!(
        latest <= hello_timeout + Duration::from_secs(3),
        "{latest:?}"
    );
}

// ---------------------------------------------------------------------------
// Unknown-SNI flood

/// The `i`-th flooding source: 127.10.0.1, 127.10.0.2, ... (all of 127/8 is
/// loopback on Linux, so each is a distinct source the daemon sees).
fn flood_source(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap() + 1;
    Ipv4Addr::from(0x7f0a_0000 + i)
}

/// Connects from `source`, sends `bytes`, reads to the end: what came back.
async fn from_source(addr: SocketAddr, source: Ipv4Addr, bytes: &[u8]) -> Vec<u8> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let mut s = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .unwrap();
    let _ = s.write_all(bytes).await;
    read_all(&mut s).await
}

/// Thousands of sources each send one unknown-SNI hello while legitimate
/// clients route: no legitimate error, every source banned (a second try is
/// `banned`), memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_flood_bans_every_source_and_spares_legitimate_clients() {
    raise_own_fd_limit();
    let n = size("SNIROUTE_FLOOD_SOURCES", 2000);
    let legit = size("SNIROUTE_LEGIT", 100);
    /// Flooding connections in flight at once.
    const PARALLEL: usize = 64;
    /// RSS growth allowed over the flood: a ban costs ~200 bytes, a strike
    /// entry less; a few MiB of allocator slack on top.
    const RSS_BOUND_KIB: u64 = 24 * 1024;
    let echo = spawn_echo_backend().await;
    let state = tempfile::tempdir().unwrap();
    let d = daemon::spawn(
        &format!(
            "{}\n[ban]\nenabled = true\nmax_retry = 1\nignore = [\"127.0.0.1\"]\nstate_file = {:?}\n\n\
             [rate_limit]\nper_ip = 20\nburst = 40\n",
            route(LEGIT_SNI, echo),
            state.path().join("bans.json").display().to_string()
        ),
        None,
    );
    let hello = Arc::new(fixture("curl.bin"));
    let unknown = Arc::new(rustls_hello("nobody.flood.test").await);
    warm_up(&d, &hello).await;
    let rss_before = d.rss_kib();
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_rss_sampler(d.pid(), stop.clone());
    let legit_task = spawn_legit(d.addr, hello.clone(), 4, legit, stop.clone());
    let gate = Arc::new(Semaphore::new(PARALLEL));
    let mut flood = JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (addr, unknown) = (d.addr, unknown.clone());
        flood.spawn(async move {
            let got = from_source(addr, flood_source(i), &unknown).await;
            drop(permit);
            got.len()
        });
    }
    let mut answered = 0;
    while let Some(len) = flood.join_next().await {
        answered += usize::from(len.unwrap() > 0);
    }
    let flood_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (rounds, errors) = legit_task.await.unwrap();
    // Sampled every 20 ms, and the kernel's high-water mark to catch spikes.
    let peak = sampler.await.unwrap().max(d.peak_rss_kib());

    d.wait_outcomes("unknown_sni", n, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while d.status().await.currently_banned < n as u64 {
        assert!(Instant::now() < deadline, "{:?}", d.status().await);
        tokio::time::sleep(common::POLL).await;
    }
    let banned: std::collections::HashSet<String> = d.banned_nets().await.into_iter().collect();
    let missing: Vec<_> = (0..n)
        .map(|i| format!("{}/32", flood_source(i)))
        .filter(|net| !banned.contains(net))
        .collect();
    assert!(
        missing.is_empty(),
        "{} sources not banned: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // A second try from a banned source is closed at accept, without a byte.
    for i in (0..n).step_by((n / 20).max(1)) {
        assert!(
            from_source(d.addr, flood_source(i), &unknown)
                .await
                .is_empty()
        );
    }
    d.wait_outcomes("banned", n.div_ceil((n / 20).max(1)), WAIT)
        .await;
    let rss_after = d.rss_kib();
    println!(
        "flood: {n} sources x 1 unknown-SNI hello in {flood_time:?} ({PARALLEL} in flight), \
         {answered} answered with bytes; {} banned; {rounds} legitimate rounds, {errors} errors; \
         RSS {rss_before} KiB before, peak {peak} KiB, {rss_after} KiB after (bound +{RSS_BOUND_KIB} KiB)",
        banned.len()
    );
    assert_eq!(answered, 0, "a flooding client got bytes back");
    assert_eq!(errors, 0, "legitimate clients saw errors");
    assert!(
        peak.max(rss_after) <= rss_before + RSS_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );
}

// ---------------------------------------------------------------------------
// Descriptor exhaustion

/// With 64 descriptors and more clients than that, sniroute neither spins
/// nor dies, and serves again once the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_neither_spins_nor_kills_and_recovers() {
    raise_own_fd_limit();
    /// The daemon's open-files limit, soft and hard.
    const NOFILE: u32 = 64;
    /// Clients that connect and stay silent: well beyond the limit.
    const HOLDERS: usize = 150;
    /// CPU time allowed over the 2 s window: a spinning accept loop burns
    /// the whole window; backing off costs a few ms.
    const CPU_BOUND_TICKS: u64 = 30;
    let echo = spawn_echo_backend().await;
    let mut d = daemon::spawn(
        &format!(
            "workers = 1\n[limits]\nclient_hello_timeout = \"30s\"\n\n{}",
            route(LEGIT_SNI, echo)
        ),
        Some(NOFILE),
    );
    assert_eq!(d.nofile_limit(), NOFILE.to_string());
    let hello = fixture("curl.bin");
    warm_up(&d, &hello).await;

    let mut holders = Vec::new();
    for _ in 0..HOLDERS {
        // Connects complete in the kernel's backlog even when sniroute cannot accept.
        holders.push(common::connect(d.addr).await);
    }
    let deadline = Instant::now() + WAIT;
    while d.fds().total() < NOFILE as usize {
        assert!(Instant::now() < deadline, "never exhausted: {:?}", d.fds());
        tokio::time::sleep(common::POLL).await;
    }
    let window = Duration::from_secs(2);
    let before = d.cpu_ticks();
    tokio::time::sleep(window).await; // measuring CPU over a window, not waiting for an event
    let spent = d.cpu_ticks() - before;
    println!(
        "fd exhaustion: limit {NOFILE}, {HOLDERS} silent clients, {:?} open; \
         CPU {} ms over {window:?} (bound {} ms)",
        d.fds(),
        spent * 1000 / TICKS_PER_SECOND,
        CPU_BOUND_TICKS * 1000 / TICKS_PER_SECOND
    );
    assert!(d.alive(), "sniroute died at the descriptor limit");
    assert!(spent < CPU_BOUND_TICKS, "spun: {spent} ticks in {window:?}");

    drop(holders);
    legit_round(d.addr, &hello).await.unwrap();
    assert!(d.alive());
}

// ---------------------------------------------------------------------------
// Backend faults

/// A backend that reads the hello (`hello_len` bytes), sends `reply` bytes
/// of pattern 11, then resets the connection (SO_LINGER 0).
async fn spawn_resetting_backend(hello_len: usize, reply: u64) -> SocketAddr {
    spawn_backend(move |mut tcp| async move {
        let mut hello = vec![0u8; hello_len];
        if tcp.read_exact(&mut hello).await.is_err() {
            return;
        }
        let _ = Pattern::new(11).write(&mut tcp, reply).await;
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    })
    .await
}

/// A backend that reads the hello and `upload` bytes, sends `reply` bytes
/// of pattern 11 and closes, half-way through the client's upload.
async fn spawn_closing_backend(hello_len: usize, upload: usize, reply: u64) -> SocketAddr {
    spawn_backend(move |mut tcp| async move {
        let mut got = vec![0u8; hello_len + upload];
        if tcp.read_exact(&mut got).await.is_err() {
            return;
        }
        let _ = Pattern::new(11).write(&mut tcp, reply).await;
        let _ = tcp.shutdown().await;
    })
    .await
}

/// Connects, sends `hello` then `upload` bytes of pattern 12 (ignoring write
/// errors), and reads to the end: (client address, bytes received, whether
/// it ended with EOF rather than a reset).
async fn faulty_exchange(
    addr: SocketAddr,
    hello: &[u8],
    upload: u64,
) -> (SocketAddr, Vec<u8>, bool) {
    let s = common::connect(addr).await;
    let local = s.local_addr().unwrap();
    let (mut r, mut w) = s.into_split();
    let hello = hello.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&hello).await;
        let _ = Pattern::new(12).write(&mut w, upload).await;
        w
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let eof = tokio::time::timeout(WAIT, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the client connection did not end in time");
    let _ = tokio::time::timeout(WAIT, writer).await;
    (local, got, eof)
}

/// Refused, blackholed, resetting and half-way-closing backends: the client
/// sees a clean end with the right outcome, and no descriptor is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_faults_end_cleanly_and_leak_nothing() {
    raise_own_fd_limit();
    const REPLY: u64 = 100 * 1024;
    const UPLOAD: usize = 256 * 1024;
    let echo = spawn_echo_backend().await;
    let names = [
        "refuse.test",
        "blackhole.test",
        "reset.test",
        "halfway.test",
    ];
    let mut hellos = Vec::new();
    for name in names {
        hellos.push(rustls_hello(name).await);
    }
    let blackhole = common::blackhole();
    let blackhole_addr = blackhole
        .as_ref()
        .map_or_else(common::refusing_addr, |b| b.addr);
    let routes = [
        route(names[0], common::refusing_addr()),
        route(names[1], blackhole_addr),
        route(
            names[2],
            spawn_resetting_backend(hellos[2].len(), REPLY).await,
        ),
        route(
            names[3],
            spawn_closing_backend(hellos[3].len(), UPLOAD, REPLY).await,
        ),
        route(LEGIT_SNI, echo),
    ];
    let d = daemon::spawn(
        &format!("[limits]\nconnect_timeout = \"1s\"\n\n{}", routes.concat()),
        None,
    );
    let legit = fixture("curl.bin");
    warm_up(&d, &legit).await;
    let baseline = d.fds();

    let (client, got, eof) = faulty_exchange(d.addr, &hellos[0], 0).await;
    assert!(
        got.is_empty() && eof,
        "refused: {} bytes, eof {eof}",
        got.len()
    );
    assert_eq!(d.outcome_of(client).await, "backend_error");
    d.settled_fds(baseline, baseline.pipes).await;

    if blackhole.is_some() {
        let started = Instant::now();
        let (client, got, eof) = faulty_exchange(d.addr, &hellos[1], 0).await;
        assert!(
            got.is_empty() && eof,
            "blackhole: {} bytes, eof {eof}",
            got.len()
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(d.outcome_of(client).await, "backend_error");
        d.settled_fds(baseline, baseline.pipes).await;
    } else {
        eprintln!("NOTE: this kernel does not drop SYNs to a full queue; blackhole case skipped");
    }

    // Reset mid-stream: what arrived before the reset is passed on intact.
    let (client, got, eof) = faulty_exchange(d.addr, &hellos[2], 0).await;
    assert!(Pattern::new(11).matches(0, &got) && got.len() as u64 <= REPLY);
    assert_eq!(d.outcome_of(client).await, "routed");
    d.settled_fds(baseline, baseline.pipes.max(PIPE_FDS_PER_RELAY))
        .await;
    let reset_report = format!(
        "{} of {REPLY} bytes then {}",
        got.len(),
        if eof { "EOF" } else { "reset" }
    );

    // Closed half-way: the backend stops reading after UPLOAD bytes of a
    // bigger upload, answers and closes; the client gets the answer and an end.
    let (client, got, eof) = faulty_exchange(d.addr, &hellos[3], 4 * UPLOAD as u64).await;
    assert!(Pattern::new(11).matches(0, &got) && got.len() as u64 <= REPLY);
    assert_eq!(d.outcome_of(client).await, "routed");
    let after = d
        .settled_fds(baseline, baseline.pipes.max(PIPE_FDS_PER_RELAY))
        .await;
    println!(
        "backend faults: refused and blackholed -> backend_error, no byte, EOF; \
         reset -> routed, {reset_report}; closed half-way -> routed, {} of {REPLY} bytes then {}; \
         fds {baseline:?} before, {after:?} after",
        got.len(),
        if eof { "EOF" } else { "reset" }
    );
}

/// A backend that reads 1 KiB every 10 ms for a while cannot make sniroute
/// buffer what the client pushes: its RSS stays flat, and every byte of
/// the 200 MiB arrives in order once the backend reads at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_reader_does_not_grow_memory() {
    raise_own_fd_limit();
    const UPLOAD: u64 = 200 << 20;
    /// How long the backend dribbles before reading at full speed.
    const SLOW_PHASE: Duration = Duration::from_secs(2);
    /// RSS growth allowed: the relay's fixed buffers; the pushed bytes stay
    /// in kernel socket and pipe buffers, which RSS does not count.
    const RSS_BOUND_KIB: u64 = 8 * 1024;
    let hello = rustls_hello("slow.test").await;
    let hello_len = hello.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = spawn_backend(move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut got_hello = vec![0u8; hello_len];
            tcp.read_exact(&mut got_hello).await.unwrap();
            let pattern = Pattern::new(13);
            let mut at = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            let slow_until = Instant::now() + SLOW_PHASE;
            while Instant::now() < slow_until {
                let n = tcp.read(&mut buf[..1024]).await.unwrap();
                assert!(pattern.matches(at, &buf[..n]));
                at += n as u64;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let slow_bytes = at;
            loop {
                let n = tcp.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                assert!(pattern.matches(at, &buf[..n]), "data differs near {at}");
                at += n as u64;
            }
            let _ = tx.send((slow_bytes, at));
        }
    })
    .await;
    let d = daemon::spawn(&route("slow.test", slow), None);
    let rss_before = d.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_rss_sampler(d.pid(), stop.clone());
    let mut s = common::connect(d.addr).await;
    let client = s.local_addr().unwrap();
    let started = Instant::now();
    s.write_all(&hello).await.unwrap();
    Pattern::new(13).write(&mut s, UPLOAD).await.unwrap();
    s.shutdown().await.unwrap();
    let (slow_bytes, total) = tokio::time::timeout(WAIT + SLOW_PHASE, rx.recv())
        .await
        .expect("the backend did not finish in time")
        .unwrap();
    assert!(read_all(&mut s).await.is_empty());
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert_eq!(d.outcome_of(client).await, "routed");
    println!(
        "slow reader: {UPLOAD} bytes pushed; backend read {slow_bytes} in the {SLOW_PHASE:?} slow phase, \
         {total} in all, in {:?}; sniroute RSS {rss_before} KiB before, peak {peak} KiB (bound +{RSS_BOUND_KIB} KiB)",
        started.elapsed()
    );
    assert_eq!(total, UPLOAD);
    assert!(
        peak <= rss_before + RSS_BOUND_KIB,
        "RSS grew from {rss_before} to {peak} KiB"
    );
}

// ---------------------------------------------------------------------------
// Client faults

/// A backend that reads (and with `echo`, echoes) until EOF or reset, then
/// reports how many bytes it received.
async fn spawn_reporting_backend(echo: bool) -> (SocketAddr, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = spawn_backend(move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut n = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(k @ 1..) = tcp.read(&mut buf).await {
                n += k as u64;
                if echo && tcp.write_all(&buf[..k]).await.is_err() {
                    break;
                }
            }
            let _ = tx.send(n);
        }
    })
    .await;
    (addr, rx)
}

/// A client reset mid-stream, a client half-close, and a client idle past
/// `idle_timeout`: each ends cleanly on the backend side with outcome
/// `routed`, and no descriptor is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_end_cleanly_and_leak_nothing() {
    raise_own_fd_limit();
    let idle_timeout = Duration::from_secs(2);
    let hello = fixture("curl.bin");
    let silent_hello = rustls_hello("silent.test").await;
    let echo_hello = rustls_hello("echo.test").await;
    let (silent, mut silent_ended) = spawn_reporting_backend(false).await;
    let (echoing, mut echo_ended) = spawn_reporting_backend(true).await;
    let echo = spawn_echo_backend().await;
    let d = daemon::spawn(
        &format!(
            "[limits]\nidle_timeout = \"2s\"\n\n{}{}{}",
            route(LEGIT_SNI, echo),
            route("silent.test", silent),
            route("echo.test", echoing)
        ),
        None,
    );
    warm_up(&d, &hello).await;
    let baseline = d.fds();
    let pipes = baseline.pipes.max(PIPE_FDS_PER_RELAY);

    // RST mid-stream, once the echo shows data flowing: the backend's side ends too.
    /// Far more than loopback socket and pipe buffers hold, so the reset
    /// lands with the upload unfinished.
    const UPLOAD: u64 = 64 << 20;
    const BEFORE_RESET: usize = 64 * 1024;
    let s = common::connect(d.addr).await;
    let client = s.local_addr().unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(&echo_hello).await.unwrap();
    let writer = tokio::spawn(async move {
        let _ = Pattern::new(14).write(&mut w, UPLOAD).await;
        w
    });
    let mut echoed = vec![0u8; echo_hello.len() + BEFORE_RESET];
    tokio::time::timeout(WAIT, r.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    // Both directions are mid-stream now: reset, with the upload unfinished.
    socket2::SockRef::from(r.as_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    writer.abort();
    let _ = writer.await;
    drop(r);
    let got = tokio::time::timeout(WAIT, echo_ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(got >= echoed.len() as u64 && got < echo_hello.len() as u64 + UPLOAD);
    assert_eq!(d.outcome_of(client).await, "routed");
    d.settled_fds(baseline, pipes).await;

    // Half-close: the answer still flows back after the client's FIN.
    legit_round(d.addr, &hello).await.unwrap();
    d.settled_fds(baseline, pipes).await;

    // Idle: no byte either way for idle_timeout closes both sides.
    let mut s = common::connect(d.addr).await;
    let client = s.local_addr().unwrap();
    s.write_all(&silent_hello).await.unwrap();
    let started = Instant::now();
    assert!(read_all(&mut s).await.is_empty());
    let idle = started.elapsed();
    let silent_got = tokio::time::timeout(WAIT, silent_ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(silent_got, silent_hello.len() as u64);
    assert_eq!(d.outcome_of(client).await, "routed");
    let after = d.settled_fds(baseline, pipes).await;
    println!(
        "client faults: reset after {} echoed -> backend saw the end after {got} bytes; half-close echoed; \
         idle closed after {idle:?} (idle_timeout {idle_timeout:?}); fds {baseline:?} before, {after:?} after",
        echoed.len()
    );
    assert!(
        idle >= idle_timeout - Duration::from_millis(100),
        "{idle:?}"
    );
    assert!(idle <= idle_timeout + Duration::from_secs(3), "{idle:?}");
}

// ---------------------------------------------------------------------------
// Fuzz inputs

/// Every committed fuzz seed and regression input, through the same checks
/// the fuzz targets run: a crash found by fuzzing stays fixed once its input
/// is in `fuzz/regressions/TARGET/`.
#[test]
fn fuzz_seeds_and_regressions_pass_the_fuzz_checks() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    /// A fuzz target's name and its checks.
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 4] = [
        ("clienthello", fuzz_clienthello::check_input),
        ("config", fuzz_config::check_input),
        ("httphead", fuzz_httphead::check_input),
        ("proxyheader", fuzz_proxyheader::check_input),
    ];
    for (target, check) in targets {
        let mut inputs = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| check(&data));
                assert!(
                    result.is_ok(),
                    "{} fails the {target} fuzz checks",
                    path.display()
                );
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no {target} seeds");
    }
}

// ---------------------------------------------------------------------------
// Panics and privileges

/// A panic inside one connection's task cannot take the daemon down: tokio
/// catches a spawned task's panic (the `JoinHandle` reports it, nobody
/// awaits it in `listener::admit`), the accept loop is another task, and the
/// process only aborts on panic if the profile says `panic = "abort"`, which
/// this checks it does not. Shown on both runtime flavours `main` builds.
#[test]
fn a_panicking_connection_task_leaves_the_accept_loop_running() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        !manifest
            .lines()
            .any(|l| l.replace(' ', "").starts_with("panic=\"abort\"")),
        "panic = \"abort\" would turn one connection's panic into the daemon's death"
    );
    for multi_thread in [false, true] {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        runtime.block_on(async {
            // An accept-loop stand-in spawning "connections", one of which panics.
            let accept_loop = tokio::spawn(async {
                let mut served = 0;
                for i in 0..10 {
                    let conn = tokio::spawn(async move {
                        assert_ne!(i, 3, "connection 3 hits a bug");
                        i
                    });
                    tokio::task::yield_now().await;
                    if conn.await.is_ok() {
                        served += 1;
                    }
                }
                served
            });
            assert_eq!(accept_loop.await.unwrap(), 9);
        });
    }
}

/// The metrics endpoint binds loopback unless told otherwise. (The admin
/// socket's mode 0600 is checked in tests/guard.rs.)
#[test]
fn metrics_listen_defaults_to_loopback() {
    let config = sniroute::config::parse_str(
        "listen = [\"0.0.0.0:443\"]\n[[route]]\nsni = [\"a.example\"]\nbackend = \"10.0.0.1:443\"\n",
    )
    .unwrap();
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9151".parse().unwrap())
    );
}
