//! Connecting to a backend and relaying bytes both ways, untouched, with
//! half-close and an idle timeout. `splice.rs` is the only place that knows pipes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::ProxyProtocol;

/// Why no backend could be reached.
#[derive(Debug)]
pub struct ConnectError {
    /// The last error seen (refused, timed out, ...).
    pub last: io::Error,
}

/// Connects to the first backend of `backends` that accepts within `timeout`
/// each, trying the next one when one refuses or times out. Sets TCP_NODELAY
/// and keepalive on the new socket. Returns the stream and the address used.
pub async fn connect(
    backends: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let _ = (backends, timeout);
    Err(ConnectError {
        last: io::Error::other("not implemented"),
    })
}

/// Appends the PROXY protocol header (`kind` v1 or v2; nothing for `None`) that
/// tells the backend the client is `client` and it connected to `local`.
pub fn proxy_header(kind: ProxyProtocol, client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    let _ = (kind, client, local, out);
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
    pub up: metrics::Counter,
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
/// half-close), an error, or the idle timeout.
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOptions,
    counters: &ByteCounters,
) -> RelayEnd {
    let _ = (client, backend, opts, counters);
    RelayEnd {
        up: 0,
        down: 0,
        result: Err(io::Error::other("not implemented")),
    }
}
