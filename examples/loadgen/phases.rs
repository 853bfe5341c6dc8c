//! The measured phases, each against one target (a proxy or the backend
//! itself), each returning figures with the proxy's CPU time over the phase.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::procfs;
use crate::sources::{self, Sources};
use crate::stream;
use crate::wire::{self, Command};

/// Bound on any single connection step: a proxy that stalls fails the phase
/// instead of hanging the run.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A banned source must be closed at once; if the close takes longer than
/// this, the source was not banned (the proxy is waiting for a hello).
const BANNED_CLOSE_WITHIN: Duration = Duration::from_secs(1);
/// Warm-up connections before a measured phase: first-use allocations and
/// lazy initialisation are not what is measured.
pub(crate) const WARMUP: usize = 200;
/// Concurrent connects while opening the idle connections.
const IDLE_OPEN_CONCURRENCY: usize = 64;
/// Time for the proxy to finish its own work (closing the warm-up
/// connections, freeing buffers) before its RSS is read.
const SETTLE: Duration = Duration::from_millis(300);
/// Source addresses for the routed phases: at 20,000 connections/s each sees
/// 5/s, well under sniroute's default rate limit of 20/s.
pub(crate) const ROUTED_SOURCES: u32 = 4000;
/// Source addresses for the reject phase.
const REJECT_SOURCES: u32 = 1000;
/// Source addresses struck once and then banned, for the banned phase.
const BANNED_SOURCES: u32 = 16;
const GIB: f64 = (1u64 << 30) as f64;

/// Where the load goes and whose CPU and memory are measured.
#[derive(Clone)]
pub struct Target {
    /// The proxy's listener (or the backend for the direct run).
    pub addr: SocketAddr,
    /// The proxy's processes (empty for the direct run).
    pub pids: Vec<u32>,
    /// The stand-in backend's process, if known: its CPU is not "other load".
    pub backend_pid: Option<u32>,
}

/// CPU time of the proxy, of the load generator and of the whole machine
/// over a phase.
pub(crate) struct Meter {
    started: Instant,
    proxy: Option<Duration>,
    own: Duration,
    backend: Duration,
    machine: Duration,
}

/// What a [`Meter`] read at the end.
pub(crate) struct Spent {
    pub(crate) wall: f64,
    /// Proxy CPU seconds, `None` without a proxy.
    pub(crate) proxy: Option<f64>,
    own: f64,
    /// CPU seconds used by anything but the proxy, the load generator and the
    /// backend (other jobs on the machine, kernel threads): noise.
    other: f64,
}

/// Phase figures shared by every kind: CPU of the load generator and of the
/// rest of the machine.
#[derive(Debug, Serialize, Deserialize)]
pub struct Context {
    pub loadgen_cpu_s: f64,
    /// CPU seconds used by other processes during the phase: should be ~0.
    pub other_cpu_s: f64,
}

impl Spent {
    pub(crate) fn context(&self) -> Context {
        Context {
            loadgen_cpu_s: self.own,
            other_cpu_s: self.other,
        }
    }
}

fn backend_cpu(target: &Target) -> io::Result<Duration> {
    match target.backend_pid {
        Some(pid) => procfs::cpu(&[pid]),
        None => Ok(Duration::ZERO),
    }
}

impl Meter {
    pub(crate) fn start(target: &Target) -> io::Result<Meter> {
        let proxy = if target.pids.is_empty() {
            None
        } else {
            Some(procfs::cpu(&target.pids)?)
        };
        Ok(Meter {
            started: Instant::now(),
            proxy,
            own: procfs::own_cpu()?,
            backend: backend_cpu(target)?,
            machine: procfs::machine_busy()?,
        })
    }

    pub(crate) fn stop(self, target: &Target) -> io::Result<Spent> {
        let wall = self.started.elapsed().as_secs_f64();
        let proxy = match self.proxy {
            Some(before) => Some(procfs::cpu(&target.pids)?.saturating_sub(before)),
            None => None,
        };
        let own = procfs::own_cpu()?.saturating_sub(self.own);
        let backend = backend_cpu(target)?.saturating_sub(self.backend);
        let machine = procfs::machine_busy()?.saturating_sub(self.machine);
        let ours = own + backend + proxy.unwrap_or_default();
        Ok(Spent {
            wall,
            proxy: proxy.map(|p| p.as_secs_f64()),
            own: own.as_secs_f64(),
            other: machine.saturating_sub(ours).as_secs_f64(),
        })
    }
}

pub(crate) async fn step<T>(what: &str, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no progress in {STEP_TIMEOUT:?}"),
        )),
    }
}

/// Bulk transfer figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bulk {
    pub conns: usize,
    /// Bytes sent each way on each connection.
    pub bytes_each_way: u64,
    pub secs: f64,
    /// Payload relayed (both directions, all connections) per second, GiB.
    pub gib_per_s: f64,
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU seconds per GiB relayed (both directions counted).
    pub cpu_s_per_gib: Option<f64>,
    pub context: Context,
}

/// Moves `n` bytes each way on each of `conns` connections at once and
/// checks every count: the client receives exactly `n` bytes then the
/// backend's trailer, which must say it received exactly `n`.
pub async fn bulk(target: &Target, conns: usize, n: u64) -> anyhow::Result<Bulk> {
    let source = Sources::new(sources::ROUTED, ROUTED_SOURCES);
    let meter = Meter::start(target)?;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let ip = source.next_ip();
        let addr = target.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = step("connect", stream::connect(ip, addr)).await?;
            conn.write_all(&wire::opening(Command::Bulk(n))).await?;
            let (mut r, mut w) = conn.split();
            let receive = async {
                stream::read_n(&mut r, n).await?;
                let mut trailer = [0u8; 8];
                r.read_exact(&mut trailer).await?;
                Ok::<u64, io::Error>(u64::from_le_bytes(trailer))
            };
            let (received_by_backend, ()) = tokio::try_join!(receive, stream::write_n(&mut w, n))?;
            if received_by_backend != n {
                return Err(io::Error::other(format!(
                    "backend received {received_by_backend} bytes, {n} were sent"
                )));
            }
            Ok::<(), io::Error>(())
        }));
    }
    for task in tasks {
        task.await?.context("bulk connection")?;
    }
    let spent = meter.stop(target)?;
    let gib = (2 * n * conns as u64) as f64 / GIB;
    Ok(Bulk {
        conns,
        bytes_each_way: n,
        secs: spent.wall,
        gib_per_s: gib / spent.wall,
        proxy_cpu_s: spent.proxy,
        cpu_s_per_gib: spent.proxy.map(|cpu| cpu / gib),
        context: spent.context(),
    })
}

/// One routed connection: connect, hello + ping, first byte (the latency),
/// then the backend's close.
pub(crate) async fn ping(source: &Sources, addr: SocketAddr) -> io::Result<Duration> {
    let started = Instant::now();
    let mut conn = stream::connect(source.next_ip(), addr).await?;
    conn.write_all(&wire::opening(Command::Ping)).await?;
    let mut byte = [0u8; 1];
    if conn.read(&mut byte).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the backend's byte",
        ));
    }
    let latency = started.elapsed();
    stream::drain(&mut conn).await;
    Ok(latency)
}

/// Runs `one` from `concurrency` tasks until `secs` are over; returns each
/// success's value and the error count.
pub(crate) async fn closed_loop<T, F, Fut>(concurrency: usize, secs: f64, one: F) -> (Vec<T>, usize)
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<T>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let one = Arc::new(one);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let one = Arc::clone(&one);
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            while Instant::now() < deadline {
                match step("connection", one()).await {
                    Ok(value) => values.push(value),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (values, errors, first_error)
        }));
    }
    let mut values = Vec::new();
    let mut errors = 0;
    let mut reported = false;
    for task in tasks {
        if let Ok((v, e, first)) = task.await {
            values.extend(v);
            errors += e;
            if let (Some(first), false) = (first, reported) {
                eprintln!("loadgen: first error: {first}");
                reported = true;
            }
        }
    }
    (values, errors)
}

/// Routed connection figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Rate {
    pub conns: usize,
    pub errors: usize,
    pub concurrency: usize,
    pub secs: f64,
    pub per_s: f64,
    /// Connect -> first backend byte, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub proxy_cpu_s: Option<f64>,
    pub cpu_us_per_conn: Option<f64>,
    pub context: Context,
}

/// Routed connections per second, closed loop with `concurrency` in flight.
pub async fn rate(target: &Target, concurrency: usize, secs: f64) -> anyhow::Result<Rate> {
    let source = Arc::new(Sources::new(sources::ROUTED, ROUTED_SOURCES));
    let addr = target.addr;
    for _ in 0..WARMUP {
        step("warm-up", ping(&source, addr)).await?;
    }
    let meter = Meter::start(target)?;
    let (mut latencies, errors) = closed_loop(concurrency, secs, move || {
        let source = Arc::clone(&source);
        async move { ping(&source, addr).await }
    })
    .await;
    let spent = meter.stop(target)?;
    ensure!(!latencies.is_empty(), "no routed connection succeeded");
    latencies.sort_unstable();
    let pick = |pct: usize| latencies[(latencies.len() * pct / 100).min(latencies.len() - 1)];
    let conns = latencies.len();
    Ok(Rate {
        conns,
        errors,
        concurrency,
        secs: spent.wall,
        per_s: conns as f64 / spent.wall,
        p50_us: pick(50).as_secs_f64() * 1e6,
        p99_us: pick(99).as_secs_f64() * 1e6,
        proxy_cpu_s: spent.proxy,
        cpu_us_per_conn: spent.proxy.map(|cpu| cpu * 1e6 / conns as f64),
        context: spent.context(),
    })
}

/// Closed-connection figures (rejects, banned closes).
#[derive(Debug, Serialize, Deserialize)]
pub struct Closes {
    pub closes: usize,
    pub errors: usize,
    pub concurrency: usize,
    pub secs: f64,
    pub per_s: f64,
    /// Bytes the proxy sent before closing, over all connections (0 unless
    /// the proxy answers, e.g. with a TLS alert).
    pub bytes_received: u64,
    pub proxy_cpu_s: Option<f64>,
    pub cpu_us_per_close: Option<f64>,
    pub context: Context,
}

/// Sends `hello` (if any) from the next source and waits for the close;
/// returns the bytes received. Slower than `within` is an error.
pub(crate) async fn closed_after(
    source: &Sources,
    addr: SocketAddr,
    hello: Option<&[u8]>,
    within: Duration,
) -> io::Result<u64> {
    let mut conn = stream::connect(source.next_ip(), addr).await?;
    if let Some(hello) = hello {
        conn.write_all(hello).await?;
    }
    tokio::time::timeout(within, stream::drain(&mut conn))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "not closed in time"))
}

async fn closes(
    target: &Target,
    source: Sources,
    hello: Option<Vec<u8>>,
    within: Duration,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<Closes> {
    let source = Arc::new(source);
    let hello: Option<Arc<[u8]>> = hello.map(Arc::from);
    let addr = target.addr;
    let meter = Meter::start(target)?;
    let (received, errors) = closed_loop(concurrency, secs, move || {
        let source = Arc::clone(&source);
        let hello = hello.clone();
        async move { closed_after(&source, addr, hello.as_deref(), within).await }
    })
    .await;
    let spent = meter.stop(target)?;
    let count = received.len();
    ensure!(count > 0, "no connection was closed");
    Ok(Closes {
        closes: count,
        errors,
        concurrency,
        secs: spent.wall,
        per_s: count as f64 / spent.wall,
        bytes_received: received.iter().sum(),
        proxy_cpu_s: spent.proxy,
        cpu_us_per_close: spent.proxy.map(|cpu| cpu * 1e6 / count as f64),
        context: spent.context(),
    })
}

/// Unknown-SNI rejects per second: a valid hello naming an unrouted host,
/// then the wait for the proxy's close.
pub async fn reject(target: &Target, concurrency: usize, secs: f64) -> anyhow::Result<Closes> {
    let hello = wire::unknown_hello()?;
    let warm = Sources::new(sources::REJECT, REJECT_SOURCES);
    for _ in 0..WARMUP {
        step(
            "warm-up",
            closed_after(&warm, target.addr, Some(&hello), STEP_TIMEOUT),
        )
        .await?;
    }
    let source = Sources::new(sources::REJECT, REJECT_SOURCES);
    closes(target, source, Some(hello), STEP_TIMEOUT, concurrency, secs).await
}

/// Closes per second of banned sources (sniroute only): each source is first
/// struck with one unknown-SNI hello (`max_retry = 1` bans it), then every
/// connection from it must be closed at once, before a byte is sent.
pub async fn banned(target: &Target, concurrency: usize, secs: f64) -> anyhow::Result<Closes> {
    let hello = wire::unknown_hello()?;
    let strike = Sources::new(sources::BANNED, BANNED_SOURCES);
    for _ in 0..BANNED_SOURCES {
        step(
            "strike",
            closed_after(&strike, target.addr, Some(&hello), STEP_TIMEOUT),
        )
        .await?;
    }
    // The ban takes effect within a second (SPEC); wait until every source is closed at once.
    let check = Sources::new(sources::BANNED, BANNED_SOURCES);
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut banned = 0;
    while banned < BANNED_SOURCES {
        match closed_after(&check, target.addr, None, BANNED_CLOSE_WITHIN).await {
            Ok(_) => banned += 1,
            Err(_) if Instant::now() < give_up => banned = 0,
            Err(e) => bail!("sources struck once are not banned: {e}"),
        }
    }
    let source = Sources::new(sources::BANNED, BANNED_SOURCES);
    closes(target, source, None, BANNED_CLOSE_WITHIN, concurrency, secs).await
}

/// Idle-memory figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Idle {
    pub conns: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_conn: f64,
}

/// RSS growth of the proxy per idle routed connection: `count` connections
/// routed end to end (the backend's byte arrived), then left idle.
pub async fn idle(target: &Target, count: usize) -> anyhow::Result<Idle> {
    ensure!(!target.pids.is_empty(), "the idle phase needs a proxy pid");
    let source = Arc::new(Sources::new(sources::ROUTED, ROUTED_SOURCES));
    for _ in 0..WARMUP {
        step("warm-up", ping(&source, target.addr)).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let before = procfs::rss_kib(&target.pids)?;
    let mut open = Vec::with_capacity(count);
    let mut batch = Vec::new();
    while open.len() < count {
        let n = IDLE_OPEN_CONCURRENCY.min(count - open.len());
        for _ in 0..n {
            let ip = source.next_ip();
            let addr = target.addr;
            batch.push(tokio::spawn(async move {
                let mut conn = stream::connect(ip, addr).await?;
                conn.write_all(&wire::opening(Command::Hold)).await?;
                let mut byte = [0u8; 1];
                conn.read_exact(&mut byte).await?;
                Ok::<_, io::Error>(conn)
            }));
        }
        for task in batch.drain(..) {
            open.push(step("idle connection", async { task.await? }).await?);
        }
    }
    tokio::time::sleep(SETTLE).await;
    let after = procfs::rss_kib(&target.pids)?;
    drop(open);
    tokio::time::sleep(SETTLE).await;
    Ok(Idle {
        conns: count,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_conn: after.saturating_sub(before) as f64 / count as f64,
    })
}
