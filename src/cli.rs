//! The command line, as clap sees it: the one definition `main.rs` parses,
//! and `build.rs` turns into the man page `sniroute(8)` and the bash, zsh and
//! fish completions (it includes this file, so it uses nothing but clap and std).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where `run` and the admin commands look for the config by default.
pub const DEFAULT_CONFIG: &str = "/etc/sniroute/sniroute.toml";

/// TLS SNI passthrough router: routes by the ClientHello's server name without
/// terminating TLS, closes unknown names without a byte, bans the sources.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Connections by outcome and ban counts, from the running daemon.
    Status(AdminArgs),
    /// List, add or remove bans in the running daemon.
    Bans {
        #[command(subcommand)]
        command: BansCommand,
    },
    /// Ask the running daemon to reload its config (like SIGHUP).
    Reload(AdminArgs),
}

#[derive(Subcommand)]
pub enum BansCommand {
    /// Addresses and prefixes banned now, with reason, strikes and expiry.
    List(AdminArgs),
    /// Ban an address or CIDR prefix by hand.
    Add {
        /// Address (`203.0.113.7`, `2001:db8::1`) or prefix (`203.0.113.0/24`).
        addr: String,
        /// How long (`1h`, `30d`); default `ban.ban_time`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Allow a prefix wider than /8 (IPv4) or /32 (IPv6).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift the bans covering an address, or exactly one prefix.
    Remove {
        /// Address or prefix.
        addr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the admin commands find the daemon.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// Config file (read only to find `admin.socket`).
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}
