//! Connecting to a backend and relaying bytes both ways, untouched, with
//! half-close and an idle timeout. `splice.rs` is the only place that knows pipes.
//!
//! - `connect.rs`: backends in turn, a timeout per attempt, NODELAY + keepalive;
//! - `proxy_protocol.rs`: the PROXY v1/v2 header the caller writes first;
//! - [`relay`] (here): both directions polled by ONE task, no spawn per
//!   direction, each direction a small state machine: `splice.rs` (Linux,
//!   socket -> pipe -> socket) or `copy.rs` (a lazily allocated buffer).
//!
//! Relay invariants (both paths):
//! - every syscall is a `try_*`/`try_io` right after `poll_*_ready` said
//!   ready, so WouldBlock clears tokio's readiness; EINTR is retried;
//! - a direction that reads EOF first writes out everything it holds (drains
//!   its pipe or buffer), then `shutdown(Write)`s its destination, and the
//!   other direction keeps flowing; the relay is Ok once both are done (the
//!   second FIN goes out with the close, no shutdown needed);
//! - any error (reset, EPIPE) ends the relay at once and both sockets close
//!   when they are dropped; no I/O error panics;
//! - `idle_timeout` without a byte read or written either way ends it with
//!   `TimedOut`; the timer is re-armed lazily (once per expiry, not per chunk);
//! - splice: pipe size is a soft wish; no pipe (EMFILE...) -> that direction
//!   goes on with the plain copy; pipes are pooled, at most
//!   [`PIPE_POOL_CAP`] idle, held by a direction only while bytes are in flight.

mod connect;
mod copy;
mod proxy_protocol;
#[cfg(target_os = "linux")]
mod splice;

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use connect::{ConnectError, connect, connect_one};
pub use proxy_protocol::proxy_header;

/// Most idle pipes kept for reuse by the splice path (0 where there is none).
#[cfg(target_os = "linux")]
pub const PIPE_POOL_CAP: usize = splice::POOL_CAP;
/// Most idle pipes kept for reuse by the splice path (0 where there is none).
#[cfg(not(target_os = "linux"))]
pub const PIPE_POOL_CAP: usize = 0;

/// Idle splice pipes held in the pool right now (for tests and metrics);
/// always at most [`PIPE_POOL_CAP`].
pub fn idle_pipes() -> usize {
    #[cfg(target_os = "linux")]
    return splice::idle_pipes();
    #[cfg(not(target_os = "linux"))]
    return 0;
}

/// How to relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// No bytes either way for this long: close both sides.
    pub idle_timeout: Duration,
    /// Try splice(2) (Linux); false = plain copy.
    pub splice: bool,
}

/// Live byte counters (metrics handles); incremented as bytes move.
#[derive(Clone)]
pub struct ByteCounters {
    /// Client -> backend bytes.
    pub up: metrics::Counter,
    /// Backend -> client bytes.
    pub down: metrics::Counter,
}

/// How a relay ended.
#[derive(Debug)]
pub struct RelayEnd {
    /// Bytes client -> backend.
    pub up: u64,
    /// Bytes backend -> client.
    pub down: u64,
    /// Ok when both directions finished with EOF; the error otherwise
    /// (`TimedOut` for the idle timeout).
    pub result: io::Result<()>,
}

/// Relays both ways until both directions are done (EOF passed on as a
/// half-close), an error, or the idle timeout. Both streams are closed on
/// return. Bytes are counted when written to their destination.
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOptions,
    counters: &ByteCounters,
) -> RelayEnd {
    let mut up = Meter::new(&counters.up);
    let mut down = Meter::new(&counters.down);
    let mut up_half = Half::new(opts.splice);
    let mut down_half = Half::new(opts.splice);
    let mut last_active = Instant::now();
    let mut idle = pin!(tokio::time::sleep_until(deadline(
        last_active,
        opts.idle_timeout
    )));

    let result = poll_fn(|cx| {
        let up_poll = up_half.poll(cx, &client, &backend, &mut up, down_half.is_done());
        let down_poll = down_half.poll(cx, &backend, &client, &mut down, up_half.is_done());
        match (up_poll, down_poll) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Ok(())),
            _ => {}
        }
        if up.take_active() | down.take_active() {
            last_active = Instant::now();
        }
        loop {
            ready!(idle.as_mut().poll(cx));
            let due = deadline(last_active, opts.idle_timeout);
            if due <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no bytes either way for {:?}", opts.idle_timeout),
                )));
            }
            idle.as_mut().reset(due);
        }
    })
    .await;

    RelayEnd {
        up: up.total,
        down: down.total,
        result,
    }
}

/// `from + idle`, saturating far in the future instead of overflowing.
fn deadline(from: Instant, idle: Duration) -> Instant {
    /// About 30 years: "never" for a connection, and safe to add to now.
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    from.checked_add(idle)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// One direction: its byte count, its metrics counter, and whether it moved
/// anything since the relay last looked.
struct Meter<'a> {
    counter: &'a metrics::Counter,
    total: u64,
    active: bool,
}

impl<'a> Meter<'a> {
    fn new(counter: &'a metrics::Counter) -> Self {
        Meter {
            counter,
            total: 0,
            active: false,
        }
    }

    /// `n` bytes reached the destination (one chunk, one counter update).
    fn moved(&mut self, n: usize) {
        let n = n as u64;
        self.total = self.total.saturating_add(n);
        self.counter.increment(n);
        self.active = true;
    }

    /// Bytes (or EOF) arrived from the source.
    fn touched(&mut self) {
        self.active = true;
    }

    fn take_active(&mut self) -> bool {
        std::mem::take(&mut self.active)
    }
}

/// The state of one direction.
enum Half {
    Copy(copy::CopyHalf),
    #[cfg(target_os = "linux")]
    Splice(splice::SpliceHalf),
    /// EOF passed on.
    Done,
}

impl Half {
    fn new(splice: bool) -> Half {
        #[cfg(target_os = "linux")]
        if splice {
            return Half::Splice(splice::SpliceHalf::new());
        }
        let _ = splice;
        Half::Copy(copy::CopyHalf::new())
    }

    fn is_done(&self) -> bool {
        matches!(self, Half::Done)
    }

    /// Ready(Ok) once this direction is done (and stays so). On EOF the FIN
    /// is passed on with `shutdown(Write)`, unless the other direction is
    /// already done (`other_done`): the relay then ends and closing the
    /// socket sends the FIN, one syscall fewer.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        meter: &mut Meter<'_>,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            match self {
                Half::Done => return Poll::Ready(Ok(())),
                Half::Copy(half) => {
                    ready!(half.poll(cx, from, to, meter))?;
                    pass_fin(to, other_done)?;
                    *self = Half::Done;
                }
                #[cfg(target_os = "linux")]
                Half::Splice(half) => match ready!(half.poll(cx, from, to, meter))? {
                    splice::Flow::Done => {
                        pass_fin(to, other_done)?;
                        *self = Half::Done;
                    }
                    splice::Flow::NoPipe(e) => {
                        tracing::debug!(error = %e, "no pipe for splice; plain copy instead");
                        *self = Half::Copy(copy::CopyHalf::new());
                    }
                },
            }
        }
    }
}

/// Passes a FIN on to `to` (no more bytes will be written to it), unless
/// the relay is about to close it anyway.
fn pass_fin(to: &TcpStream, other_done: bool) -> io::Result<()> {
    if other_done {
        return Ok(());
    }
    SockRef::from(to).shutdown(std::net::Shutdown::Write)
}
