//! The story of one client connection, from accept to close, and its single
//! [`Outcome`]: read the hello, check the policy, pick the route, check its
//! `allow` list, connect,
//! replay the hello, relay. Every early exit is an `Err(Outcome)`; [`finish`]
//! writes the one log line, the one metric update and the strike.
//!
//! The client socket reaches [`start`] unregistered: if its hello is already
//! there (always with `defer_accept`), a refusal costs accept + read + close,
//! with no registration with the reactor and no timer.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::accesslog::Entry;
use crate::clienthello::ClientHello;
use crate::config::{ProxyProtocol, Route};
use crate::forward::{self, RelayOptions};
use crate::outcome::Outcome;
use crate::peek;
use crate::shared::{Shared, Slot, Snapshot};

/// Takes over an admitted connection (non-blocking, not yet registered with
/// the reactor). `slot` holds its place under `max_connections` until the end.
pub fn start(
    shared: &Arc<Shared>,
    snapshot: Arc<Snapshot>,
    client: std::net::TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    slot: Slot,
) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut entry = Entry::default();
        let served = serve(&shared, &snapshot, client, peer, accepted, &mut entry).await;
        let outcome = match served {
            Ok(()) => Outcome::Routed,
            Err(outcome) => outcome,
        };
        drop(slot);
        finish(&shared, peer, outcome, &entry, accepted);
    });
}

/// Records how a connection ended: metric, strike, log line.
pub fn finish(
    shared: &Shared,
    peer: SocketAddr,
    outcome: Outcome,
    entry: &Entry,
    accepted: Instant,
) {
    shared.metrics.ended(outcome);
    // Counts every outcome for `status`; strikes only those in `strike_on`.
    shared.guard.strike(peer.ip().to_canonical(), outcome);
    shared.log.write(peer, outcome, entry, accepted.elapsed());
}

async fn serve(
    shared: &Shared,
    snapshot: &Snapshot,
    client: std::net::TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    entry: &mut Entry,
) -> Result<(), Outcome> {
    let config = &snapshot.config;
    let limits = &config.limits;
    let max_len = limits.max_client_hello;

    // When the hello is already here (always with `defer_accept`; otherwise
    // only when the accept queue was backed up: it usually arrives a few
    // microseconds after the handshake), a refusal costs no registration
    // with the reactor and no timer. Else the socket waits in the reactor.
    let mut hello_bytes = Vec::new();
    let (index, client) = match peek::read_now(&client, max_len, &mut hello_bytes) {
        Some(verdict) => {
            hello_seconds(shared, accepted);
            (choose(snapshot, verdict?, entry)?, register(client)?)
        }
        None => {
            let mut client = register(client)?;
            let deadline = accepted + limits.client_hello_timeout;
            let hello =
                peek::read_client_hello(&mut client, max_len, deadline, &mut hello_bytes).await;
            hello_seconds(shared, accepted);
            (choose(snapshot, hello?, entry)?, client)
        }
    };
    let (route, meters) = snapshot.route(index).ok_or(Outcome::UnknownSni)?;
    entry.route = Some(route.name.clone());
    allowed(route, peer)?;

    let pool = snapshot.pool(index).ok_or(Outcome::UnknownSni)?;
    let started = Instant::now();
    let (mut backend, lease) = pool.connect(limits.connect_timeout).await.map_err(|e| {
        tracing::warn!(route = %route.name, "no backend reachable: {}", e.last);
        meters.backend_errors.increment(1);
        Outcome::BackendError
    })?;
    meters
        .connect_seconds
        .record(started.elapsed().as_secs_f64());
    let backend_addr = lease.addr();
    entry.backend = Some(backend_addr);

    // The PROXY header (if any) and the hello go out in one write.
    let client_bytes = hello_bytes.len() as u64;
    let preamble = match route.proxy_protocol {
        ProxyProtocol::None => hello_bytes,
        kind => {
            let local = client.local_addr().map_err(|_| Outcome::BackendError)?;
            // A PROXY header is at most 107 bytes (v1; v2 is at most 52).
            let mut preamble = Vec::with_capacity(hello_bytes.len() + 107);
            forward::proxy_header(kind, peer, local, &mut preamble);
            preamble.extend_from_slice(&hello_bytes);
            preamble
        }
    };
    if let Err(e) = backend.write_all(&preamble).await {
        tracing::warn!(route = %route.name, %backend_addr, "backend closed before the hello: {e}");
        meters.backend_errors.increment(1);
        return Err(Outcome::BackendError);
    }
    drop(preamble);

    // Routed from here on: small TLS records must not wait for Nagle.
    let _ = client.set_nodelay(true);
    meters.routed.increment(1);
    meters.bytes.up.increment(client_bytes);
    let _active = Active::enter(&meters.active);
    let opts = RelayOptions {
        idle_timeout: limits.idle_timeout,
        splice: config.splice,
    };
    let end = forward::relay(client, backend, opts, &meters.bytes).await;
    entry.up = client_bytes + end.up;
    entry.down = end.down;
    if let Err(e) = end.result {
        tracing::debug!(%peer, route = %route.name, "relay ended: {e}");
    }
    Ok(())
}

/// Hands the client socket to the reactor. Fails only when the kernel is out
/// of epoll watches or memory.
fn register(client: std::net::TcpStream) -> Result<TcpStream, Outcome> {
    TcpStream::from_std(client).map_err(|_| Outcome::Overloaded)
}

/// The route for `hello`, after the version policy; notes the SNI and the
/// first ALPN id offered in `entry`.
fn choose(snapshot: &Snapshot, hello: ClientHello, entry: &mut Entry) -> Result<usize, Outcome> {
    entry.sni = hello.sni.as_ref().map(|name| name.as_str().to_owned());
    let picked = if hello.max_version < snapshot.config.tls.min_version {
        Err(Outcome::Policy)
    } else {
        snapshot.routes.pick(hello.sni.as_ref(), &hello.alpn)
    };
    entry.alpn = hello.alpn.into_iter().next();
    picked
}

/// The route's `allow` list: a source outside it ends `denied`.
fn allowed(route: &Route, peer: SocketAddr) -> Result<(), Outcome> {
    match &route.allow {
        Some(allow) if !allow.contains(peer.ip()) => Err(Outcome::Denied),
        _ => Ok(()),
    }
}

/// Time from accept to the hello's verdict.
fn hello_seconds(shared: &Shared, accepted: Instant) {
    shared
        .metrics
        .client_hello_seconds
        .record(accepted.elapsed().as_secs_f64());
}

/// Counts a routed connection in `sniroute_active_connections` while it
/// lives; dropping it (also when a task is cancelled at shutdown or unwinds)
/// counts it out.
struct Active<'a>(&'a metrics::Gauge);

impl<'a> Active<'a> {
    fn enter(gauge: &'a metrics::Gauge) -> Active<'a> {
        gauge.increment(1.0);
        Active(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
