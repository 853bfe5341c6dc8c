//! Connecting to a route's backends: each in turn, one timeout per attempt,
//! with the socket options a relayed stream wants.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
use socket2::{Socket, TcpKeepalive};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Idle time before the first keepalive probe. Sixty seconds keeps NAT and
/// firewall state between gateway and backend alive (home routers drop idle
/// TCP mappings after a few minutes) and notices a backend host that vanished
/// (power loss, cable) within about a minute and a half, instead of Linux's
/// default of two hours or the route's much longer `idle_timeout`, which
/// keepalive probes do not reset because they carry no payload.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes; with the kernel's default 9 retries a dead
/// peer is declared after 60 + 9 * 10 = 150 s at most.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Why no backend could be reached.
#[derive(Debug)]
pub struct ConnectError {
    /// The last error seen (refused, timed out, ...).
    pub last: io::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no backend reachable: {}", self.last)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// Connects to the first backend of `backends` that accepts within `timeout`
/// each, trying the next one when one refuses or times out (or fails any
/// other way: unreachable, no route). Sets TCP_NODELAY and keepalive on the
/// new socket. Returns the stream and the address used.
pub async fn connect(
    backends: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "route has no backend");
    for &addr in backends {
        match connect_one(addr, timeout).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = e,
        }
    }
    Err(ConnectError { last })
}

/// Connects to `addr` within `timeout`, with NODELAY and keepalive set.
pub async fn connect_one(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, Some(ipproto::TCP))?;
    let socket = Socket::from(fd);
    set_options(&socket)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    // Over loopback the handshake has usually completed inside connect():
    // then there is nothing to wait for and no timer to arm.
    match established(&stream) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        done => return done.map(|()| stream),
    }
    let wait = async {
        loop {
            stream.writable().await?;
            match stream.try_io(Interest::WRITABLE, || established(&stream)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return done,
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(done) => done.map(|()| stream),
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}

/// Nagle would hold back the small records of a TLS handshake waiting for an
/// ACK the peer delays: bytes are relayed as they arrive instead.
fn set_options(socket: &Socket) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&keepalive())
}

/// Whether a non-blocking connect has finished: Ok once connected, the
/// connect's error if it failed, WouldBlock while the handshake is under way.
fn established(stream: &TcpStream) -> io::Result<()> {
    match stream.peer_addr() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => match stream.take_error()? {
            Some(e) => Err(e),
            None => Err(io::ErrorKind::WouldBlock.into()),
        },
        Err(e) => Err(e),
    }
}

fn keepalive() -> TcpKeepalive {
    let params = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let params = params.with_interval(KEEPALIVE_INTERVAL);
    params
}
