//! The `sniroute` command: CLI parsing, tracing set-up, exit codes. Everything
//! else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sniroute::config::{self, LoadError};
use sniroute::server::{Control, Server};
use tokio::sync::mpsc;

/// Where `run` and the admin commands look for the config by default.
const DEFAULT_CONFIG: &str = "/etc/sniroute/sniroute.toml";

/// TLS SNI passthrough router: routes by the ClientHello's server name without
/// terminating TLS, closes unknown names without a byte, bans the sources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (systemd's way).
    Run {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file like `nginx -t`: exit 0 valid, 1 invalid, 2 unreadable.
    Check {
        /// Config file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { path } => check(&path),
        Command::Run { config } => run(config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!("{}: configuration is valid", path.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e @ LoadError::Unreadable { .. }) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e @ LoadError::Invalid { .. }) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNIROUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(path: PathBuf) -> ExitCode {
    init_tracing();
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let server = Server::bind(config, Some(path))?;
        let addrs = server.local_addrs();
        let (tx, rx) = mpsc::channel(8);
        sniroute::lifecycle::spawn_signal_handler(tx)?;
        sniroute::lifecycle::spawn_watchdog();
        tracing::info!(
            "sniroute {} listening on {addrs:?}",
            env!("CARGO_PKG_VERSION")
        );
        server.run(rx).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sniroute: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(dead_code)]
fn _unused(_: Control) {}
