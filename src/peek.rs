//! Reads the ClientHello off a fresh client socket: into a bounded buffer,
//! within the hello timeout, deciding only when the parser can. The bytes are
//! kept so the connection handler can replay them to the backend.
//!
//! Two steps: [`read_now`], one non-blocking read right after accept (the
//! hello is there with `defer_accept`, or when the accept queue was backed
//! up; otherwise it usually arrives a few microseconds after the handshake),
//! then, only if the parser needs more, [`read_client_hello`] waits for the
//! rest on the registered socket.
//!
//! No `MSG_PEEK`: peeking in a loop spins while the socket stays readable.

use std::io::{ErrorKind, Read};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clienthello::{self, ClientHello, Verdict};
use crate::outcome::Outcome;

/// First read of the hello: a typical hello (300-600 B, up to ~2 KB with a
/// post-quantum key share) lands in it whole.
const FIRST_READ: usize = 2048;

/// What the client has sent so far decided the connection, or not yet.
pub type Early = Option<Result<ClientHello, Outcome>>;

/// One non-blocking read of what the client has sent so far, into `buf`
/// (cleared first). `Some` when the parser could decide on it, `None` when
/// more must be read (nothing there yet, or part of a hello).
///
/// A client that already closed or reset ends as `Timeout` ("no full
/// ClientHello"), like one that stalls.
pub fn read_now(stream: &std::net::TcpStream, max_len: usize, buf: &mut Vec<u8>) -> Early {
    buf.clear();
    buf.resize(FIRST_READ.min(max_len + 1), 0);
    let read = loop {
        match (&mut &*stream).read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            read => break read,
        }
    };
    match read {
        Ok(0) => Some(Err(Outcome::Timeout)),
        Ok(n) => {
            buf.truncate(n);
            decide(buf, max_len)
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            buf.clear();
            None
        }
        Err(_) => Some(Err(Outcome::Timeout)),
    }
}

/// Reads on from what [`read_now`] left in `buf` until the parser decides,
/// at most `max_len` bytes, until `deadline`.
///
/// `buf` receives every byte read (the hello and anything the client sent
/// after it). A client that closes or resets before a whole hello arrived
/// ends as `Timeout` ("no full ClientHello"), like one that stalls.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    max_len: usize,
    deadline: Instant,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, Outcome> {
    match tokio::time::timeout_at(deadline, read_until_verdict(stream, max_len, buf)).await {
        Ok(verdict) => verdict,
        Err(_elapsed) => Err(Outcome::Timeout),
    }
}

async fn read_until_verdict(
    stream: &mut TcpStream,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, Outcome> {
    buf.reserve(FIRST_READ.min(max_len + 1).saturating_sub(buf.len()));
    loop {
        // One byte past the cap is enough to know the hello is too large.
        let room = (max_len + 1).saturating_sub(buf.len());
        if buf.capacity() == buf.len() {
            buf.reserve(room.min(buf.capacity()));
        }
        let want = room.min(buf.capacity() - buf.len());
        match (&mut *stream).take(want as u64).read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Outcome::Timeout),
            Ok(_) => {}
        }
        if let Some(verdict) = decide(buf, max_len) {
            return verdict;
        }
    }
}

/// The parser's verdict on `buf`, `None` while it needs more and the cap
/// still allows more.
fn decide(buf: &[u8], max_len: usize) -> Early {
    match clienthello::parse(buf, max_len) {
        Verdict::NeedMore if buf.len() > max_len => Some(Err(Outcome::TooLarge)),
        Verdict::NeedMore => None,
        Verdict::Hello(hello) => Some(Ok(hello)),
        Verdict::Reject(outcome) => Some(Err(outcome)),
    }
}
