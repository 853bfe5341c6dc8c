//! What the load generator and the stand-in backend say to each other through
//! the proxy: a real ClientHello (which the proxy routes on and the backend
//! skips) — or, against a plain-HTTP listener (`--http`), a curl-like request
//! head — then a fixed-size command telling the backend what to do.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// A real curl 7.88 ClientHello (517 bytes) naming `fixture.example`: the
/// common size, and what every proxy under test must route.
pub const HELLO: &[u8] = include_bytes!("../../tests/fixtures/clienthello/curl.bin");

/// The routed name inside [`HELLO`].
const ROUTED_NAME: &[u8] = b"fixture.example";
/// A name no proxy routes, of the same length so no length field changes.
const UNKNOWN_NAME: &[u8] = b"nomatch.example";

/// The request head curl sends for `http://fixture.example/` (plain-HTTP rows).
const HTTP_HEAD: &[u8] =
    b"GET / HTTP/1.1\r\nHost: fixture.example\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

/// Whether the opening is [`HTTP_HEAD`] instead of [`HELLO`] (`run --http`).
static HTTP: AtomicBool = AtomicBool::new(false);

/// Speak plain HTTP from now on: the opening is a request head naming the host.
pub fn use_http() {
    HTTP.store(true, Ordering::Relaxed);
}

/// What opens a connection: the hello, or in HTTP mode the request head.
fn first_bytes() -> &'static [u8] {
    if HTTP.load(Ordering::Relaxed) {
        HTTP_HEAD
    } else {
        HELLO
    }
}

/// The opening naming [`UNKNOWN_NAME`]: a valid hello (or request head)
/// every proxy must reject.
pub fn unknown_hello() -> io::Result<Vec<u8>> {
    let opening = first_bytes();
    let at = opening
        .windows(ROUTED_NAME.len())
        .position(|w| w == ROUTED_NAME)
        .ok_or_else(|| io::Error::other("fixture hello does not name fixture.example"))?;
    let mut hello = opening.to_vec();
    hello[at..at + UNKNOWN_NAME.len()].copy_from_slice(UNKNOWN_NAME);
    Ok(hello)
}

/// Command size on the wire: magic (4), mode (1), padding (3), count (8, LE).
pub const COMMAND_LEN: usize = 16;
/// Marks a command, so a proxy that mangles the stream is caught at once.
const MAGIC: &[u8; 4] = b"SRB1";

/// What the backend does after the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Write one byte, then close: one routed connection of the rate phase.
    Ping,
    /// Write one byte, then wait for the client to close: an idle connection.
    Hold,
    /// Send `n` bytes and receive `n` bytes at the same time, then send the
    /// received count (u64 LE) as a trailer and wait for the client to close.
    Bulk(u64),
}

impl Command {
    /// The 16 bytes to send after the hello.
    pub fn encode(self) -> [u8; COMMAND_LEN] {
        let (mode, n) = match self {
            Command::Ping => (b'P', 0),
            Command::Hold => (b'H', 0),
            Command::Bulk(n) => (b'B', n),
        };
        let mut out = [0u8; COMMAND_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = mode;
        out[8..].copy_from_slice(&u64::to_le_bytes(n));
        out
    }

    /// Reads a command back; anything else is an error.
    pub fn decode(bytes: &[u8]) -> io::Result<Command> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a loadgen command");
        let bytes: &[u8; COMMAND_LEN] = bytes.try_into().map_err(|_| bad())?;
        if &bytes[..4] != MAGIC {
            return Err(bad());
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[8..]);
        match bytes[4] {
            b'P' => Ok(Command::Ping),
            b'H' => Ok(Command::Hold),
            b'B' => Ok(Command::Bulk(u64::from_le_bytes(n))),
            _ => Err(bad()),
        }
    }
}

/// The hello and a command in one buffer, sent with one write (one segment).
pub fn opening(command: Command) -> Vec<u8> {
    let mut out = first_bytes().to_vec();
    out.extend_from_slice(&command.encode());
    out
}
