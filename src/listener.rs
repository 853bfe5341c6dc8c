//! Accept loops: accept, admit (bans, rate limit), take a slot under
//! `max_connections`, spawn the connection. Nothing here waits on a client.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::accesslog::Entry;
use crate::conn;
use crate::outcome::Outcome;
use crate::server::Shared;

/// Listen backlog; the kernel caps it at `net.core.somaxconn` (4096 on
/// current Linux). A deep queue absorbs bursts of SYNs while workers are busy.
const BACKLOG: i32 = 4096;

/// Pause after an accept error caused by resource exhaustion (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): the pending connection stays queued and the
/// listener stays readable, so retrying at once would spin a core.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// Binds a listening socket the way a server should: SO_REUSEADDR, IPv6
/// listeners v6-only (so `[::]:443` can sit beside `0.0.0.0:443`), non-blocking.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts on `listener` until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Exhaustion is logged once per episode, not on every retry.
    let mut exhausted = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if std::mem::take(&mut exhausted) {
                    tracing::info!("accepting again");
                }
                admit(&shared, stream, peer);
            }
            Err(e) if is_exhaustion(&e) => {
                if !std::mem::replace(&mut exhausted, true) {
                    tracing::warn!("accept: {e}; retrying every {EXHAUSTED_BACKOFF:?}");
                }
                tokio::time::sleep(EXHAUSTED_BACKOFF).await;
            }
            // ECONNABORTED and friends: that one client is gone, carry on.
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

fn is_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    let errno = Errno::from_raw_os_error(code);
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno)
}

/// Decides at accept time; a refused connection is dropped before a byte is read.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let accepted = Instant::now();
    if let Err(outcome) = shared.guard.admit(peer.ip().to_canonical()) {
        drop(stream);
        conn::finish(shared, peer, outcome, &Entry::default(), accepted);
        return;
    }
    let snapshot = shared.snapshot();
    let Some(slot) = shared.take_slot(snapshot.config.limits.max_connections) else {
        drop(stream);
        conn::finish(
            shared,
            peer,
            Outcome::Overloaded,
            &Entry::default(),
            accepted,
        );
        return;
    };
    tokio::spawn(conn::handle(
        Arc::clone(shared),
        snapshot,
        stream,
        peer,
        accepted,
        slot,
    ));
}
