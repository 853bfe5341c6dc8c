//! sniroute's load generator and stand-in backend, for `benches/compare.sh`.
//!
//! - `loadgen backend ADDR`: the backend every proxy routes `fixture.example` to.
//! - `loadgen floor ADDR`: the cheapest possible reject (blocking accept, one
//!   read, close; no event loop, no parsing): the kernel's share of a reject.
//! - `loadgen wait ADDR`: returns once ADDR accepts connections.
//! - `loadgen run --name N --target ADDR --pid PID... --out FILE`: runs the
//!   phases against one proxy (or the backend itself: the direct ceiling),
//!   reading the proxy's CPU time and RSS from /proc, and writes JSON.
//! - `loadgen report FILE...`: the comparison table, with ratios to the best
//!   peer and to direct, and sniroute's figures against the targets.
//!
//! Everything runs on one thread (a current-thread runtime): the generator
//! shares the machine with the proxy and the backend, so it should cost little
//! and predictably.

mod backend;
mod kernel;
mod phases;
mod procfs;
mod report;
mod sources;
mod stream;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::phases::Target;
use crate::report::Results;

/// Load generator and stand-in backend for sniroute's comparison benchmark.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve as the stand-in backend on ADDR.
    Backend { addr: SocketAddr },
    /// Refuse every connection on ADDR as cheaply as a process can: accept,
    /// one read, close, one connection at a time. The `floor` row.
    Floor { addr: SocketAddr },
    /// Wait until ADDR accepts a TCP connection.
    Wait {
        addr: SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// Wait until the machine is quiet: other processes (builds, tests) would
    /// steal CPU from the proxy under test and skew every figure.
    Quiet {
        /// Busy share of one core (all CPUs together) that counts as quiet.
        #[arg(long, default_value_t = 0.15)]
        below: f64,
        /// Give up (and go on, noisy) after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        secs: f64,
    },
    /// Run the phases against one target and write the figures as JSON.
    Run(RunArgs),
    /// Print the comparison table from `run` result files.
    Report { files: Vec<PathBuf> },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Row name: `direct`, `sniroute...` (ours), anything else is a peer.
    #[arg(long)]
    name: String,
    /// Where to connect (the proxy's listener, or the backend for `direct`).
    #[arg(long)]
    target: SocketAddr,
    /// Processes whose CPU time and RSS are the proxy's (repeat for several).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// The stand-in backend's process (its CPU is not counted as other load).
    #[arg(long)]
    backend_pid: Option<u32>,
    /// Phases to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,bulk1,bulk8,rate,reject"
    )]
    phases: Vec<Phase>,
    /// Bytes each way for the one-connection bulk phase.
    #[arg(long, default_value_t = 1 << 30)]
    bulk1_bytes: u64,
    /// Bytes each way per connection for the eight-connection bulk phase.
    #[arg(long, default_value_t = 256 << 20)]
    bulk8_bytes: u64,
    /// Seconds of each connection-rate phase.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Connections in flight in the connection-rate phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Idle routed connections for the memory phase.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Result file (JSON), rewritten after each phase.
    #[arg(long)]
    out: PathBuf,
    /// Open connections with a plain HTTP request head for the routed host
    /// (a plain-HTTP listener) instead of the ClientHello.
    #[arg(long)]
    http: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Phase {
    Idle,
    Bulk1,
    Bulk8,
    Rate,
    Reject,
    Banned,
    /// sniroute with `firewall.backend = "nftables"`: banned sources flood
    /// while legitimate clients route (see `kernel.rs`).
    Kernel,
}

/// How often `wait` retries a refused connect.
const WAIT_RETRY: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Floor { addr } = cli.command {
        return match floor(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen: floor: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Backend { addr } => backend::serve(addr).await,
            Command::Floor { .. } => Ok(()),
            Command::Wait { addr, secs } => wait(addr, secs).await,
            Command::Quiet { below, secs } => quiet(below, secs).await,
            Command::Run(args) => run(args).await,
            Command::Report { files } => report::print(&files),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The reject floor: what the kernel charges a process for accepting a
/// connection, reading its hello and closing it, with blocking calls and
/// nothing else (no readiness events, no registration, no timers, no
/// parsing). No proxy can refuse for less.
fn floor(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.read(&mut buf);
    }
}

async fn wait(addr: SocketAddr, secs: f64) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= give_up => {
                return Err(e).with_context(|| format!("{addr} not accepting after {secs}s"));
            }
            Err(_) => tokio::time::sleep(WAIT_RETRY).await,
        }
    }
}

/// Window over which the machine's load is sampled by `quiet`.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

async fn quiet(below: f64, secs: f64) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let before = procfs::machine_busy()?;
        tokio::time::sleep(QUIET_WINDOW).await;
        let busy = procfs::machine_busy()?.saturating_sub(before).as_secs_f64()
            / QUIET_WINDOW.as_secs_f64();
        if busy < below {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            eprintln!(
                "loadgen: machine still busy ({:.0}% of a core); going on",
                busy * 100.0
            );
            return Ok(());
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.http {
        wire::use_http();
    }
    let target = Target {
        addr: args.target,
        pids: args.pids.clone(),
        backend_pid: args.backend_pid,
    };
    let mut results = Results {
        name: args.name.clone(),
        ..Results::default()
    };
    for phase in &args.phases {
        eprintln!("loadgen: {}: {phase:?}", args.name);
        let outcome = match phase {
            Phase::Idle => phases::idle(&target, args.idle)
                .await
                .map(|r| results.idle = Some(r)),
            Phase::Bulk1 => phases::bulk(&target, 1, args.bulk1_bytes)
                .await
                .map(|r| results.bulk1 = Some(r)),
            Phase::Bulk8 => phases::bulk(&target, 8, args.bulk8_bytes)
                .await
                .map(|r| results.bulk8 = Some(r)),
            Phase::Rate => phases::rate(&target, args.concurrency, args.secs)
                .await
                .map(|r| results.rate = Some(r)),
            Phase::Reject => phases::reject(&target, args.concurrency, args.secs)
                .await
                .map(|r| results.reject = Some(r)),
            Phase::Banned => phases::banned(&target, args.concurrency, args.secs)
                .await
                .map(|r| results.banned = Some(r)),
            Phase::Kernel => kernel::kernel_bans(&target, args.concurrency, args.secs)
                .await
                .map(|r| results.kernel = Some(r)),
        };
        if let Err(e) = outcome {
            eprintln!("loadgen: {}: {phase:?} failed: {e:#}", args.name);
            results.failed.push(format!("{phase:?}: {e:#}"));
        }
        let json = serde_json::to_string_pretty(&results)?;
        std::fs::write(&args.out, json)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    }
    Ok(())
}
