//! The `sniroute` command: CLI parsing, tracing set-up, exit codes. Everything
//! else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use sniroute::admin::Request;
use sniroute::cli::{AdminArgs, BansCommand, Cli, Command};
use sniroute::config::{self, LoadError};
use sniroute::server::Server;
use tokio::sync::mpsc;

/// `0.1.0 (git 1a2b3c4d5e6f)` when built from a git checkout, `0.1.0` from a
/// tarball (the revision comes from build.rs).
const VERSION: &str = match option_env!("SNIROUTE_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

fn main() -> ExitCode {
    let matches = Cli::command().version(VERSION).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Check { path } => check(&path),
        Command::Run { config } => run(config),
        Command::Status(args) => admin(&args, Request::Status),
        Command::Reload(args) => admin(&args, Request::Reload),
        Command::Bans { command } => match command {
            BansCommand::List(args) => admin(&args, Request::BansList),
            BansCommand::Add {
                addr,
                duration,
                force,
                admin: args,
            } => {
                // Refused here too, so the slip is caught even with no daemon.
                if let Some(reason) = sniroute::admin::too_wide(&addr).filter(|_| !force) {
                    eprintln!("refused: {reason}");
                    return ExitCode::from(1);
                }
                let request = Request::BansAdd {
                    addr,
                    duration,
                    force,
                };
                admin(&args, request)
            }
            BansCommand::Remove { addr, admin: args } => admin(&args, Request::BansRemove { addr }),
        },
    }
}

/// Sends one admin request; exit 0 done, 1 refused, 2 daemon not reachable
/// (or no admin socket configured).
fn admin(args: &AdminArgs, request: Request) -> ExitCode {
    let socket = match config::load(&args.config) {
        Ok(config) => config.admin.socket,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(socket) = socket else {
        eprintln!(
            "{}: admin.socket is \"\": the admin socket is disabled",
            args.config.display()
        );
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(sniroute::admin::run_command(&socket, &request, args.json)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            let text = format!(
                "{}: configuration is valid\n{}\n",
                path.display(),
                config.summary()
            );
            sniroute::admin::print_out(&text);
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

fn run(path: PathBuf) -> ExitCode {
    let log_style = sniroute::logging::Style::detect();
    sniroute::logging::init(log_style);
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            log_style.eprint_error(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    raise_fd_limit();
    // One worker: a current-thread runtime skips the cross-thread wake-ups.
    let runtime = if config.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            log_style.eprint_error(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Signals first: a SIGUSR1 from logrotate during start-up waits in
        // the channel instead of ending the process.
        let (tx, rx) = mpsc::channel(8);
        sniroute::lifecycle::spawn_signal_handler(tx)?;
        let server = match systemd_listeners()? {
            Some(listeners) => Server::activated(config, Some(path), listeners)?,
            None => Server::bind(config, Some(path))?,
        };
        let addrs = server.local_addrs();
        sniroute::lifecycle::spawn_watchdog();
        tracing::info!("sniroute {VERSION} listening on {addrs:?}");
        let http = server.local_addrs_of(sniroute::conn::Protocol::Http);
        if !http.is_empty() {
            tracing::info!("plain HTTP (routed by Host) on {http:?}");
        }
        server.run(rx).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => {
            tracing::info!("sniroute stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log_style.eprint_error(&format!("sniroute: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard one: every connection costs
/// two descriptors, and the usual soft default of 1024 would cap sniroute near
/// 500 connections, far below `max_connections`.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
    }
}

/// Listening sockets passed by systemd socket activation (`LISTEN_FDS`), if any.
fn systemd_listeners() -> anyhow::Result<Option<Vec<std::net::TcpListener>>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::new();
    for index in 0..fds.len() {
        match fds.take_tcp_listener(index)? {
            Some(listener) => listeners.push(listener),
            None => anyhow::bail!("LISTEN_FDS: fd {} is not a TCP listener", 3 + index),
        }
    }
    Ok(Some(listeners))
}
