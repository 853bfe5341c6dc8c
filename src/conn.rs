//! The story of one client connection, from accept to close, and its single
//! [`Outcome`]: (from a trusted balancer: read its PROXY header, admit the
//! client it names), read the head — the TLS ClientHello, or on `[http]`
//! listeners the HTTP request head — and pick the route from it, check its
//! `allow` list, connect, replay the head, relay. Only the head step knows
//! the listener's [`Protocol`]. Every early exit is an `Err(Outcome)`;
//! [`finish`] writes the one log line, the one metric update and the strike.
//!
//! Who the connection is from is its [`Source`]: the peer itself, or the
//! client a trusted balancer's header names, which then stands in for the
//! peer everywhere (admission, `allow`, strikes, log, the backend's PROXY
//! header). A balancer itself is never struck.
//!
//! The client socket reaches [`start`] unregistered: if its head is already
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
use crate::httphead::{self, Request};
use crate::outcome::Outcome;
use crate::peek::{self, Head};
use crate::proxyheader::Endpoints;
use crate::shared::{Shared, Slot, Snapshot};

/// What a listener's clients send first, so how a connection is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A TLS ClientHello, routed by its SNI to a route's `backends` (`listen`).
    Tls,
    /// A plain HTTP/1.x request, routed by its `Host` to a route's
    /// `http_backends` (`[http] listen`).
    Http,
}

/// Who a connection speaks for: decided at accept (a trusted balancer or
/// not), then by a balancer's PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client that connected itself.
    Direct(SocketAddr),
    /// A trusted balancer (`proxy_protocol.accept_from`) before its header,
    /// or speaking for itself (LOCAL, UNKNOWN, or naming a trusted address):
    /// never struck, banned nor rate-limited.
    Balancer(SocketAddr),
    /// The client a trusted balancer's header named, and the address it
    /// connected to at the balancer. Its bans stay out of the kernel set.
    Proxied { client: SocketAddr, to: SocketAddr },
}

impl Source {
    /// The address the connection is judged and logged under.
    pub fn addr(self) -> SocketAddr {
        match self {
            Source::Direct(addr) | Source::Balancer(addr) => addr,
            Source::Proxied { client, .. } => client,
        }
    }
}

/// The client socket, handed to the reactor only once it must wait.
enum Socket {
    Fresh(std::net::TcpStream),
    Registered(TcpStream),
}

impl Socket {
    /// Hands the client socket to the reactor (if not done yet). Fails only
    /// when the kernel is out of epoll watches or memory.
    fn register(self) -> Result<TcpStream, Outcome> {
        match self {
            Socket::Fresh(client) => TcpStream::from_std(client).map_err(|_| Outcome::Overloaded),
            Socket::Registered(client) => Ok(client),
        }
    }
}

/// Takes over an admitted connection (non-blocking, not yet registered with
/// the reactor). `slot` holds its place under `max_connections` until the end.
pub fn start(
    shared: &Arc<Shared>,
    snapshot: Arc<Snapshot>,
    protocol: Protocol,
    client: std::net::TcpStream,
    source: Source,
    accepted: Instant,
    slot: Slot,
) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut entry = Entry::default();
        let mut source = source;
        let served = serve(
            &shared,
            &snapshot,
            protocol,
            client,
            &mut source,
            accepted,
            &mut entry,
        )
        .await;
        let outcome = match served {
            Ok(()) => Outcome::Routed,
            Err(outcome) => outcome,
        };
        drop(slot);
        finish(&shared, source, outcome, &entry, accepted);
    });
}

/// Records how a connection ended: metric, strike, log line.
pub fn finish(shared: &Shared, source: Source, outcome: Outcome, entry: &Entry, accepted: Instant) {
    shared.metrics.ended(outcome);
    // Counts every outcome for `status`; strikes only those in `strike_on`,
    // and never a trusted balancer.
    match source {
        Source::Direct(peer) => shared.guard.strike(peer.ip().to_canonical(), outcome),
        Source::Proxied { client, .. } => shared.guard.strike_proxied(client.ip(), outcome),
        Source::Balancer(_) => shared.guard.count(outcome),
    }
    shared
        .log
        .write(source.addr(), outcome, entry, accepted.elapsed());
}

async fn serve(
    shared: &Shared,
    snapshot: &Snapshot,
    protocol: Protocol,
    client: std::net::TcpStream,
    source: &mut Source,
    accepted: Instant,
    entry: &mut Entry,
) -> Result<(), Outcome> {
    let config = &snapshot.config;
    let limits = &config.limits;
    let deadline = accepted + limits.client_hello_timeout;
    let mut head = Vec::new();

    // A trusted balancer speaks first: its PROXY header names the client,
    // who is then admitted (bans, rate limit) as if it had connected itself.
    // The bytes after the header are the start of the head.
    let client = match *source {
        Source::Balancer(balancer) => {
            let (client, named) =
                read_proxy_header(snapshot, client, balancer, deadline, &mut head).await?;
            *source = named;
            if let Source::Proxied { client, .. } = named {
                shared.guard.admit(client.ip())?;
            }
            client
        }
        Source::Direct(_) | Source::Proxied { .. } => Socket::Fresh(client),
    };
    let peer = source.addr();

    // Read the head (kept, to replay it) and pick the route from it.
    let (index, client) = match protocol {
        Protocol::Tls => {
            let choose = |hello| choose(snapshot, hello, entry);
            read_head(
                shared,
                snapshot,
                client,
                accepted,
                &mut head,
                peek::Tls,
                choose,
            )
            .await?
        }
        Protocol::Http => {
            let choose = |request| choose_http(snapshot, request, entry);
            let reader = httphead::Reader::default();
            read_head(
                shared, snapshot, client, accepted, &mut head, reader, choose,
            )
            .await?
        }
    };
    let (route, meters) = snapshot.route(index).ok_or(Outcome::UnknownSni)?;
    entry.route = Some(route.name.clone());
    allowed(route, peer)?;

    let pool = match protocol {
        Protocol::Tls => snapshot.pool(index).ok_or(Outcome::UnknownSni)?,
        Protocol::Http => snapshot.http_pool(index).ok_or(Outcome::UnknownHost)?,
    };
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

    // The PROXY header (if any) and the head go out in one write.
    let client_bytes = head.len() as u64;
    let preamble = match route.proxy_protocol {
        ProxyProtocol::None => head,
        kind => {
            let local = match *source {
                Source::Proxied { to, .. } => to,
                Source::Direct(_) | Source::Balancer(_) => {
                    client.local_addr().map_err(|_| Outcome::BackendError)?
                }
            };
            // A PROXY header is at most 107 bytes (v1; v2 is at most 52).
            let mut preamble = Vec::with_capacity(head.len() + 107);
            forward::proxy_header(kind, peer, local, &mut preamble);
            preamble.extend_from_slice(&head);
            preamble
        }
    };
    if let Err(e) = backend.write_all(&preamble).await {
        tracing::warn!(route = %route.name, %backend_addr, "backend closed before the head: {e}");
        meters.backend_errors.increment(1);
        return Err(Outcome::BackendError);
    }
    drop(preamble);

    // Routed from here on: small records and responses must not wait for Nagle.
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

/// Reads the head with `parser` (after what `buf` already holds) and picks
/// its route with `choose`. When the head is already here (always with
/// `defer_accept`; otherwise only when the accept queue was backed up: it
/// usually arrives a few microseconds after the handshake), a refusal costs
/// no registration with the reactor and no timer. Else the socket waits in
/// the reactor, until the hello timeout.
async fn read_head<H: Head>(
    shared: &Shared,
    snapshot: &Snapshot,
    client: Socket,
    accepted: Instant,
    buf: &mut Vec<u8>,
    mut parser: H,
    choose: impl FnOnce(H::Parsed) -> Result<usize, Outcome>,
) -> Result<(usize, TcpStream), Outcome> {
    let limits = &snapshot.config.limits;
    let max_len = limits.max_client_hello;
    let early = match &client {
        Socket::Fresh(client) => peek::read_now(client, max_len, buf, &mut parser),
        Socket::Registered(_) => peek::decide(&mut parser, buf, max_len),
    };
    match early {
        Some(verdict) => {
            hello_seconds(shared, accepted);
            Ok((choose(verdict?)?, client.register()?))
        }
        None => {
            let mut client = client.register()?;
            let deadline = accepted + limits.client_hello_timeout;
            let verdict = peek::read_head(&mut client, max_len, deadline, buf, &mut parser).await;
            hello_seconds(shared, accepted);
            Ok((choose(verdict?)?, client))
        }
    }
}

/// Reads a trusted balancer's PROXY header into `buf` and leaves there only
/// the bytes after it; says whom it names. LOCAL, UNKNOWN and a header naming
/// a trusted address leave the balancer speaking for itself (the spec: use
/// the connection's own endpoints).
async fn read_proxy_header(
    snapshot: &Snapshot,
    client: std::net::TcpStream,
    balancer: SocketAddr,
    deadline: Instant,
    buf: &mut Vec<u8>,
) -> Result<(Socket, Source), Outcome> {
    let (header, client) = match peek::read_header_now(&client, buf) {
        Some(header) => (header?, Socket::Fresh(client)),
        None => {
            let mut client = Socket::Fresh(client).register()?;
            let header = peek::read_proxy_header(&mut client, deadline, buf).await?;
            (header, Socket::Registered(client))
        }
    };
    buf.drain(..header.len.min(buf.len()));
    let trusted = &snapshot.config.proxy_protocol.accept_from;
    let source = match header.endpoints {
        Endpoints::Tcp {
            source,
            destination,
        } if !trusted.contains(source.ip()) => Source::Proxied {
            client: source,
            to: destination,
        },
        Endpoints::Tcp { .. } | Endpoints::Local | Endpoints::Unknown => Source::Balancer(balancer),
    };
    Ok((client, source))
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

/// The route for an HTTP request's host (the one a hello without ALPN
/// would get), if it has `http_backends`; notes the host in `entry` (the
/// log's `sni` field).
fn choose_http(snapshot: &Snapshot, request: Request, entry: &mut Entry) -> Result<usize, Outcome> {
    entry.sni = Some(request.host.as_str().to_owned());
    snapshot
        .routes
        .lookup(&request.host)
        .filter(|&index| snapshot.http_pool(index).is_some())
        .ok_or(Outcome::UnknownHost)
}

/// The route's `allow` list: a source outside it ends `denied`.
fn allowed(route: &Route, peer: SocketAddr) -> Result<(), Outcome> {
    match &route.allow {
        Some(allow) if !allow.contains(peer.ip()) => Err(Outcome::Denied),
        _ => Ok(()),
    }
}

/// Time from accept to the head's verdict.
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
