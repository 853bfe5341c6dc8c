//! The kernel-bans phase, for sniroute with `firewall.backend = "nftables"`
//! (run by `benches/compare.sh` in a network namespace of its own, so the
//! host's ruleset is never touched): [`KERNEL_SOURCES`] sources are struck
//! once and banned; from then on the kernel drops their SYNs. Then:
//!
//! 1. the banned sources flood alone: proxy CPU per banned attempt (each
//!    attempt is one SYN the kernel drops; nothing reaches sniroute);
//! 2. [`PAIRS`] pairs of windows of `secs` each, alternating: routed
//!    connections alone, then routed connections during the flood. The
//!    figure is the median of the pairs' ratios: on a shared machine the
//!    load of other processes drifts over seconds, and neighbouring windows
//!    see nearly the same drift, where one quiet window against one flood
//!    window minutes apart does not.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::phases::{
    Context, Meter, ROUTED_SOURCES, STEP_TIMEOUT, Target, WARMUP, closed_after, closed_loop, ping,
    step,
};
use crate::report::median;
use crate::sources::{self, Sources};
use crate::wire;

/// Banned sources hammering the listen port (the issue asks for 1,000+).
pub const KERNEL_SOURCES: u32 = 1000;

/// How long one attempt waits for an answer: shorter than the first SYN
/// retransmission (1 s), so each attempt is exactly one dropped SYN.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// Attempts in flight: with [`ATTEMPT_TIMEOUT`], about 2,000 SYNs a second
/// from the banned sources, round-robin.
const FLOOD_TASKS: usize = 200;

/// The flood-only window is this many times `secs`.
const FLOOD_ONLY_WINDOWS: f64 = 4.0;

/// Quiet/flood window pairs behind the routed-during-flood ratio (odd, so
/// the median is one pair's).
const PAIRS: usize = 5;

/// How long the bans may take to reach the kernel (batched every 100 ms).
const BANS_IN_KERNEL_WITHIN: Duration = Duration::from_secs(10);

/// The kernel-bans figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct KernelBans {
    pub sources: u32,
    /// Seconds from the first strike until every source's SYN was dropped.
    pub ban_secs: f64,
    /// Routed connections per second without the flood (median of the
    /// quiet windows).
    pub routed_quiet_per_s: f64,
    /// The flood-only window: SYNs sent by banned sources, and how many were answered
    /// (should be 0).
    pub attempts: u64,
    pub attempts_per_s: f64,
    pub answered: u64,
    pub flood_proxy_cpu_s: Option<f64>,
    /// Proxy CPU per banned attempt, µs.
    pub cpu_us_per_attempt: Option<f64>,
    /// Routed connections per second during the flood (median of the
    /// flood windows).
    pub routed_flood_per_s: f64,
    pub routed_flood_errors: usize,
    /// Per pair, flood window / quiet window; the figure is their median.
    #[serde(default)]
    pub routed_ratios: Vec<f64>,
    pub context: Context,
}

/// One banned attempt from `ip`: `Ok(true)` when answered (not dropped).
async fn attempt(ip: IpAddr, addr: SocketAddr) -> std::io::Result<bool> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, socket.connect(addr)).await {
        Err(_) => Ok(false),
        Ok(Ok(_)) => Ok(true),
        // Refused is an answer too: the SYN got through.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
        Ok(Err(e)) => Err(e),
    }
}

/// The flood: [`FLOOD_TASKS`] tasks attempting from `ips` until `secs` are over.
async fn flood(ips: Arc<Vec<IpAddr>>, addr: SocketAddr, secs: f64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FLOOD_TASKS {
        let (ips, next) = (Arc::clone(&ips), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut answered) = (0u64, 0u64);
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % ips.len();
                match attempt(ips[i], addr).await {
                    Ok(true) => answered += 1,
                    Ok(false) => {}
                    // Out of ports or the like: count nothing, go on.
                    Err(_) => continue,
                }
                sent += 1;
            }
            (sent, answered)
        }));
    }
    let (mut sent, mut answered) = (0, 0);
    for task in tasks {
        if let Ok((s, a)) = task.await {
            sent += s;
            answered += a;
        }
    }
    (sent, answered)
}

/// Routed connections per second over `secs`, closed loop.
async fn routed(addr: SocketAddr, concurrency: usize, secs: f64) -> (f64, usize) {
    let source = Arc::new(Sources::new(sources::ROUTED, ROUTED_SOURCES));
    let started = Instant::now();
    let (done, errors) = closed_loop(concurrency, secs, move || {
        let source = Arc::clone(&source);
        async move { ping(&source, addr).await }
    })
    .await;
    (done.len() as f64 / started.elapsed().as_secs_f64(), errors)
}

pub async fn kernel_bans(
    target: &Target,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<KernelBans> {
    let addr = target.addr;
    let hello = wire::unknown_hello()?;
    let strike = Sources::new(sources::KERNEL, KERNEL_SOURCES);
    let ips: Vec<IpAddr> = (0..KERNEL_SOURCES).map(|_| strike.next_ip()).collect();
    let started = Instant::now();
    for _ in 0..KERNEL_SOURCES {
        step(
            "strike",
            closed_after(&strike, addr, Some(&hello), STEP_TIMEOUT),
        )
        .await?;
    }
    // Every source at once (a dropped attempt waits its whole timeout);
    // those still answered are tried again.
    let give_up = Instant::now() + BANS_IN_KERNEL_WITHIN;
    let mut pending = ips.clone();
    while !pending.is_empty() {
        let tries: Vec<_> = pending
            .iter()
            .map(|&ip| tokio::spawn(async move { (ip, attempt(ip, addr).await) }))
            .collect();
        let mut answered = Vec::new();
        for task in tries {
            let (ip, result) = task.await?;
            if result? {
                answered.push(ip);
            }
        }
        if let Some(ip) = answered.first()
            && Instant::now() > give_up
        {
            bail!("{ip} is still answered {BANS_IN_KERNEL_WITHIN:?} after its strike");
        }
        pending = answered;
    }
    let ban_secs = started.elapsed().as_secs_f64();
    let routed_source = Sources::new(sources::ROUTED, ROUTED_SOURCES);
    for _ in 0..WARMUP {
        step("warm-up", ping(&routed_source, addr)).await?;
    }

    let ips = Arc::new(ips);
    let meter = Meter::start(target)?;
    let (attempts, answered) = flood(Arc::clone(&ips), addr, FLOOD_ONLY_WINDOWS * secs).await;
    let spent = meter.stop(target)?;
    ensure!(attempts > 0, "no banned attempt was made");

    let (mut quiet, mut flooded, mut routed_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut routed_flood_errors = 0;
    for _ in 0..PAIRS {
        let (alone, _) = routed(addr, concurrency, secs).await;
        let flooding = tokio::spawn(flood(Arc::clone(&ips), addr, secs));
        let (during, errors) = routed(addr, concurrency, secs).await;
        let _ = flooding.await;
        quiet.push(alone);
        flooded.push(during);
        routed_ratios.push(during / alone);
        routed_flood_errors += errors;
    }

    Ok(KernelBans {
        sources: KERNEL_SOURCES,
        ban_secs,
        routed_quiet_per_s: median(quiet).unwrap_or(0.0),
        attempts,
        attempts_per_s: attempts as f64 / spent.wall,
        answered,
        flood_proxy_cpu_s: spent.proxy,
        cpu_us_per_attempt: spent.proxy.map(|cpu| cpu * 1e6 / attempts as f64),
        routed_flood_per_s: median(flooded).unwrap_or(0.0),
        routed_flood_errors,
        routed_ratios: {
            let mut sorted = routed_ratios.clone();
            sorted.sort_by(f64::total_cmp);
            sorted
        },
        context: spent.context(),
    })
}
