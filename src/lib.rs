//! sniroute: a TLS SNI passthrough router that never terminates TLS.
//!
//! Module map (one owner per concern):
//! - `cli`: the command line (also the source of the man page and completions);
//! - `config`: file -> typed [`config::Config`], every error with its place;
//! - `clienthello`: PURE bytes -> verdict; `httphead`: the same for a plain
//!   HTTP/1.x request head (`[http]` listeners); `peek`: read either off a socket;
//! - `routes`: name (+ ALPN) -> route; `cidr`: a route's `allow` set;
//!   `balance`: a route's backend pool (policy, health, checks);
//! - `guard`: strikes, bans, rate limits, and the remote (CrowdSec) decisions;
//! - `crowdsec`: the LAPI bouncer (pull) and machine (push), at the edge;
//! - `listener`: accept loops; `conn`: one connection, start to end;
//! - `forward`: backend connect and the two-way relay (splice on Linux);
//! - `shared`: the state below listeners, connections and the admin socket;
//! - `firewall`: kernel bans (an nftables set fed by the guard's ban events);
//! - `accesslog`, `metrics`, `admin`, `lifecycle` (the only signal handler),
//!   `logging` (stderr, plain or journald-native); `server` builds, starts,
//!   reloads and stops;
//! - `sys`: the only `unsafe` (listener registration, TCP_DEFER_ACCEPT).

// Input must never reach a panicking index: data-path code uses `get()`.
#![deny(clippy::indexing_slicing)]

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod cidr;
pub mod cli;
pub mod clienthello;
pub mod config;
pub mod conn;
pub mod crowdsec;
pub mod firewall;
pub mod forward;
pub mod guard;
pub mod hostname;
pub mod httphead;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod peek;
pub mod proxyheader;
pub mod routes;
pub mod server;
pub mod shared;
mod sys;
