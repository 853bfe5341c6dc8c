//! Accept loops: accept, admit (bans, rate limit), take a slot under
//! `max_connections`, hand the socket to [`conn::start`] with the listener's
//! [`Protocol`] (TLS, or plain HTTP). Nothing here waits
//! on a client.
//!
//! Accepted sockets are plain non-blocking `std` sockets, not yet registered
//! with the reactor: a banned address is closed, and a hello that arrived
//! with the handshake is decided, without an `epoll_ctl` or a timer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::accesslog::Entry;
use crate::conn::{self, Protocol, Source};
use crate::outcome::Outcome;
use crate::shared::Shared;

/// Listen backlog; the kernel caps it at `net.core.somaxconn` (4096 on
/// current Linux). A deep queue absorbs bursts of SYNs while workers are busy.
const BACKLOG: i32 = 4096;

/// Pause after an accept error caused by resource exhaustion (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): the pending connection stays queued and the
/// listener stays readable, so retrying at once would spin a core.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted in a row before the loop lets the connections it
/// started run: a flood of SYNs must not starve the relays.
const ACCEPT_BATCH: usize = 64;

/// Binds a listening socket the way a server should: SO_REUSEADDR, IPv6
/// listeners v6-only (so `[::]:443` can sit beside `0.0.0.0:443`), non-blocking,
/// and `defer_accept` set before the first connection can arrive.
pub fn bind(addr: SocketAddr, defer_accept: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    crate::sys::set_defer_accept(&socket, defer_accept)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether binding `addr` failed only because this host runs without IPv6
/// (booted with `ipv6.disable=1`, or `disable_ipv6` set everywhere): the
/// caller skips that listener with a warning, so a config listening on both
/// `127.0.0.1` and `[::1]` (the shipped one) still starts on such a host.
/// An IPv6 address missing on a host that has IPv6 stays an error.
pub fn ipv6_unavailable(addr: SocketAddr, error: &io::Error) -> bool {
    use rustix::io::Errno;
    let errno = error.raw_os_error().map(Errno::from_raw_os_error);
    addr.is_ipv6()
        && matches!(errno, Some(Errno::AFNOSUPPORT | Errno::ADDRNOTAVAIL))
        && std::fs::read_to_string("/proc/net/if_inet6").map_or(true, |s| s.trim().is_empty())
}

/// Accepts on `listener` until `stop` turns true; its clients speak `protocol`.
pub async fn accept_loop(
    listener: Arc<AsyncFd<std::net::TcpListener>>,
    shared: Arc<Shared>,
    protocol: Protocol,
    mut stop: watch::Receiver<bool>,
) {
    // Exhaustion is logged once per episode, not on every retry.
    let mut exhausted = false;
    loop {
        let mut ready = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                // Only when the runtime itself is shutting down.
                Err(_) => return,
            },
        };
        let mut backoff = false;
        let mut batch_full = true;
        for _ in 0..ACCEPT_BATCH {
            let Ok(accepted) = ready.try_io(|listener| accept(listener.get_ref())) else {
                // WouldBlock: the queue is empty and readiness is cleared.
                batch_full = false;
                break;
            };
            match accepted {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut exhausted) {
                        tracing::info!("accepting again");
                    }
                    admit(&shared, stream, peer, protocol);
                }
                Err(e) if is_exhaustion(&e) => {
                    if !std::mem::replace(&mut exhausted, true) {
                        tracing::warn!("accept: {e}; retrying every {EXHAUSTED_BACKOFF:?}");
                    }
                    backoff = true;
                    break;
                }
                // ECONNABORTED and friends: that one client is gone, carry on.
                Err(e) => tracing::debug!("accept: {e}"),
            }
        }
        drop(ready);
        if backoff {
            tokio::time::sleep(EXHAUSTED_BACKOFF).await;
        } else if batch_full {
            tokio::task::yield_now().await;
        }
    }
}

/// One accept4(2): the new socket comes non-blocking and close-on-exec.
fn accept(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (fd, addr) =
        rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = addr
        .and_then(|addr| SocketAddr::try_from(addr).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address"))?;
    Ok((std::net::TcpStream::from(fd), peer))
}

fn is_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    let errno = Errno::from_raw_os_error(code);
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno)
}

/// Decides at accept time; a refused connection is closed before a byte is
/// read. A trusted balancer is not checked against bans and rate limits: the
/// client its PROXY header names is, in `conn`.
fn admit(shared: &Arc<Shared>, stream: std::net::TcpStream, peer: SocketAddr, protocol: Protocol) {
    let accepted = Instant::now();
    let source = if shared.trusts(peer.ip()) {
        Source::Balancer(peer)
    } else {
        Source::Direct(peer)
    };
    if let Source::Direct(_) = source
        && let Err(outcome) = shared.guard.admit(peer.ip().to_canonical())
    {
        drop(stream);
        conn::finish(shared, source, outcome, &Entry::default(), accepted);
        return;
    }
    let snapshot = shared.snapshot();
    let Some(slot) = shared.take_slot(snapshot.config.limits.max_connections) else {
        drop(stream);
        conn::finish(
            shared,
            source,
            Outcome::Overloaded,
            &Entry::default(),
            accepted,
        );
        return;
    };
    conn::start(shared, snapshot, protocol, stream, source, accepted, slot);
}
