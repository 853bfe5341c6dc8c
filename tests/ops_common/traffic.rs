//! Traffic for the daemon under test: real ClientHellos (captured fixtures with
//! the server name swapped), connections from chosen loopback addresses
//! (127.0.0.2, 127.0.0.3, ... so each offender is its own source), and
//! tagged echo backends that tell which backend a connection reached.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The server name in every SNI fixture (see tests/fixtures/clienthello/README.md).
const FIXTURE_NAME: &str = "fixture.example";

/// Longest a test read may block: the daemon answers (or closes) within
/// milliseconds; a hang is a failure, reported instead of waited out.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clienthello")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A real ClientHello (openssl s_client 3.0) asking for `name`, which must have
/// as many bytes as `fixture.example` so every length field stays right.
pub fn hello(name: &str) -> Vec<u8> {
    assert_eq!(
        name.len(),
        FIXTURE_NAME.len(),
        "{name}: must be 15 bytes long"
    );
    let mut bytes = fixture("openssl.bin");
    let at = bytes
        .windows(FIXTURE_NAME.len())
        .position(|w| w == FIXTURE_NAME.as_bytes())
        .expect("fixture names fixture.example");
    bytes[at..at + name.len()].copy_from_slice(name.as_bytes());
    bytes
}

/// A real ClientHello without a server name.
pub fn hello_without_sni() -> Vec<u8> {
    fixture("openssl-nosni.bin")
}

/// What a scanner speaking plain HTTP sends.
pub const NOT_TLS: &[u8] = b"GET / HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n";

/// `127.0.0.N`: the whole 127/8 is loopback on Linux, so each offender of a
/// test can be a different source address.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Connects to `to` from `from` (port chosen by the kernel).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket =
        Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket
        .bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .expect("bind source");
    socket.connect(&SockAddr::from(to)).expect("connect");
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream
}

/// Sends `bytes` from `from` and checks the daemon closes without sending a
/// single byte (a reset is fine too: unread bytes turn the close into one).
pub fn expect_rejected(from: IpAddr, to: SocketAddr, bytes: &[u8]) {
    let mut stream = connect_from(from, to);
    // The daemon may close before all is written (a banned source is closed
    // right after accept), so a failed write is part of a rejection.
    let _ = stream.write_all(bytes);
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "rejected connection from {from} got {n} bytes: {:?}",
            &buf[..n]
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("rejected connection from {from}: {e}"),
    }
}

/// Opens a routed connection for `name` from `from`: sends the hello, reads
/// the backend's tag and the echoed hello. `None` if the daemon closed the
/// connection instead (no route).
pub fn open_routed(from: IpAddr, to: SocketAddr, name: &str) -> Option<(TcpStream, u8)> {
    let mut stream = connect_from(from, to);
    let hello = hello(name);
    stream.write_all(&hello).expect("send hello");
    let mut tag = [0u8; 1];
    match stream.read(&mut tag) {
        Ok(0) => return None,
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("routed connection for {name}: {e}"),
    }
    let mut echoed = vec![0u8; hello.len()];
    stream.read_exact(&mut echoed).expect("echoed hello");
    assert_eq!(echoed, hello, "the backend got the hello byte for byte");
    Some((stream, tag[0]))
}

/// A routed round trip that ends cleanly: the tag of the backend reached, or
/// `None` if there was no route.
pub fn routed_tag(from: IpAddr, to: SocketAddr, name: &str) -> Option<u8> {
    let (mut stream, tag) = open_routed(from, to, name)?;
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to end");
    assert!(rest.is_empty(), "nothing after the echo");
    Some(tag)
}

/// A TCP backend that greets every connection with its one-byte tag, then
/// echoes everything until the client's FIN, then closes its side. It serves
/// on its own threads until the test process ends.
pub fn tagged_echo_backend(tag: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || echo(stream, tag));
        }
    });
    addr
}

fn echo(mut stream: TcpStream, tag: u8) {
    if stream.write_all(&[tag]).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}
