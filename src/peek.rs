//! Reads the first bytes off a fresh client socket — the TLS ClientHello, or
//! on `[http]` listeners the HTTP request head — into a bounded buffer,
//! within the hello timeout, deciding only when the parser ([`Head`]) can.
//! The bytes are kept so the connection handler can replay them to the
//! backend.
//!
//! Two steps: [`read_now`], one non-blocking read right after accept (the
//! hello is there with `defer_accept`, or when the accept queue was backed
//! up; otherwise it usually arrives a few microseconds after the handshake),
//! then, only if the parser needs more, [`read_head`] waits for the rest on
//! the registered socket.
//!
//! No `MSG_PEEK`: peeking in a loop spins while the socket stays readable.

use std::io::{ErrorKind, Read};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clienthello::{self, ClientHello};
use crate::httphead;
use crate::outcome::Outcome;

/// First read of the hello: a typical hello (300-600 B, up to ~2 KB with a
/// post-quantum key share) lands in it whole.
const FIRST_READ: usize = 2048;

/// What the client has sent so far decided the connection, or not yet.
pub type Early<T> = Option<Result<T, Outcome>>;

/// A parser of the first bytes a client sends: given every byte so far
/// (each time starting with the bytes it was given before), its verdict, or
/// `None` while it needs more.
pub trait Head {
    /// What a complete head tells.
    type Parsed;
    /// Judges `buf` against the cap `max_len`.
    fn judge(&mut self, buf: &[u8], max_len: usize) -> Early<Self::Parsed>;
}

/// The TLS ClientHello ([`clienthello::parse`]; it keeps no state).
pub struct Tls;

impl Head for Tls {
    type Parsed = ClientHello;
    fn judge(&mut self, buf: &[u8], max_len: usize) -> Early<ClientHello> {
        match clienthello::parse(buf, max_len) {
            clienthello::Verdict::NeedMore => None,
            clienthello::Verdict::Hello(hello) => Some(Ok(hello)),
            clienthello::Verdict::Reject(outcome) => Some(Err(outcome)),
        }
    }
}

/// The HTTP/1.x request head, read incrementally ([`httphead::Reader`]).
impl Head for httphead::Reader {
    type Parsed = httphead::Request;
    fn judge(&mut self, buf: &[u8], max_len: usize) -> Early<httphead::Request> {
        match self.read(buf, max_len) {
            httphead::Verdict::NeedMore => None,
            httphead::Verdict::Request(request) => Some(Ok(request)),
            httphead::Verdict::Reject(outcome) => Some(Err(outcome)),
        }
    }
}

/// One non-blocking read of what the client has sent so far, into `buf`
/// (cleared first). `Some` when the parser could decide on it, `None` when
/// more must be read (nothing there yet, or part of a hello).
///
/// A client that already closed or reset ends as `Timeout` ("no full
/// ClientHello"), like one that stalls.
pub fn read_now<H: Head>(
    stream: &std::net::TcpStream,
    max_len: usize,
    buf: &mut Vec<u8>,
    head: &mut H,
) -> Early<H::Parsed> {
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
            decide(head, buf, max_len)
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
/// `buf` receives every byte read (the head and anything the client sent
/// after it). A client that closes or resets before a whole head arrived
/// ends as `Timeout` ("no full ClientHello"), like one that stalls.
pub async fn read_head<H: Head>(
    stream: &mut TcpStream,
    max_len: usize,
    deadline: Instant,
    buf: &mut Vec<u8>,
    head: &mut H,
) -> Result<H::Parsed, Outcome> {
    let read = read_until_verdict(stream, max_len, buf, head);
    match tokio::time::timeout_at(deadline, read).await {
        Ok(verdict) => verdict,
        Err(_elapsed) => Err(Outcome::Timeout),
    }
}

async fn read_until_verdict<H: Head>(
    stream: &mut TcpStream,
    max_len: usize,
    buf: &mut Vec<u8>,
    head: &mut H,
) -> Result<H::Parsed, Outcome> {
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
        if let Some(verdict) = decide(head, buf, max_len) {
            return verdict;
        }
    }
}

/// The parser's verdict on `buf`, `None` while it needs more and the cap
/// still allows more.
fn decide<H: Head>(head: &mut H, buf: &[u8], max_len: usize) -> Early<H::Parsed> {
    match head.judge(buf, max_len) {
        None if buf.len() > max_len => Some(Err(Outcome::TooLarge)),
        verdict => verdict,
    }
}
