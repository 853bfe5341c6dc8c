//! Socket helpers shared by the client phases and the backend: connecting from
//! a chosen loopback source, and moving counted bulk bytes.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Read and write chunk of the bulk phases: large enough that syscall count
/// is not what is measured (the proxies move 16-64 KiB per call themselves).
pub const CHUNK: usize = 256 * 1024;

/// Listen backlog for the backend: absorbs a burst of connections from a
/// proxy while the backend's single thread is busy (somaxconn caps it).
const BACKLOG: i32 = 4096;

/// Tries on a source-port clash (EADDRINUSE/EADDRNOTAVAIL: the kernel picked
/// a port whose 4-tuple is still in TIME_WAIT); the next bind picks another.
const CONNECT_TRIES: usize = 4;

/// Binds a listening socket with a deep backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `target` from `source` (any free port), with NODELAY.
pub async fn connect(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let mut last = None;
    for _ in 0..CONNECT_TRIES {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_nodelay(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) if matches!(e.raw_os_error(), Some(98 | 99)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("connect: no attempt made")))
}

/// Writes `n` bytes from a static pattern.
pub async fn write_n<W: AsyncWrite + Unpin>(w: &mut W, n: u64) -> io::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = n;
    while left > 0 {
        let len = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        w.write_all(&chunk[..len]).await?;
        left -= len as u64;
    }
    Ok(())
}

/// Reads exactly `n` bytes (discarding them); EOF before that is an error.
pub async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let len = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        match r.read(&mut buf[..len]).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {left} of {n} bytes missing"),
                ));
            }
            got => left -= got as u64,
        }
    }
    Ok(())
}

/// Reads until EOF or an error (a reset is a close too); returns the bytes seen.
pub async fn drain<R: AsyncRead + Unpin>(r: &mut R) -> u64 {
    let mut buf = [0u8; 1024];
    let mut seen = 0;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen += n as u64,
        }
    }
}
