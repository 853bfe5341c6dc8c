//! Reads the first bytes off a fresh client socket: the head — the
//! ClientHello, or on `[http]` listeners the HTTP request head, each judged
//! by its parser ([`Head`]) — and before it the PROXY header of a trusted
//! balancer. Into a bounded buffer, within the hello timeout, deciding only
//! when the parser can. The bytes are kept so the connection handler can
//! replay them to the backend.
//!
//! Two steps for each: one non-blocking read right after accept
//! ([`read_now`], [`read_header_now`]: the bytes are there with
//! `defer_accept`, or when the accept queue was backed up; otherwise they
//! usually arrive a few microseconds after the handshake), then, only if the
//! parser needs more, [`read_head`] / [`read_proxy_header`] wait for
//! the rest on the registered socket. Every function appends to the buffer
//! it is given and decides on all of it, so the bytes a balancer sent after
//! its header are the start of the hello.
//!
//! No `MSG_PEEK`: peeking in a loop spins while the socket stays readable.

use std::io::{ErrorKind, Read};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::clienthello::{self, ClientHello};
use crate::httphead;
use crate::outcome::Outcome;
use crate::proxyheader::{self, Header};

/// First read of the hello: a typical hello (300-600 B, up to ~2 KB with a
/// post-quantum key share) lands in it whole.
const FIRST_READ: usize = 2048;

/// What the client has sent so far decided the connection, or not yet.
pub type Early<T> = Option<Result<T, Outcome>>;

/// A parser of the head a client sends first: given every byte so far
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

/// What a trusted balancer has sent so far decided its header, or not yet.
pub type EarlyHeader = Option<Result<Header, Outcome>>;

/// The end of one read.
enum Read1 {
    /// Bytes arrived.
    Bytes,
    /// Nothing there yet (non-blocking read only).
    Nothing,
    /// The peer closed or reset.
    Closed,
}

/// One non-blocking read of what the client has sent so far, appended to
/// `buf`. `Some` when the parser could decide on `buf`, `None` when more must
/// be read (nothing there yet, or part of a hello).
///
/// A client that already closed or reset ends as `Timeout` ("no full
/// ClientHello"), like one that stalls.
pub fn read_now<H: Head>(
    stream: &std::net::TcpStream,
    max_len: usize,
    buf: &mut Vec<u8>,
    head: &mut H,
) -> Early<H::Parsed> {
    if let Some(verdict) = decide(head, buf, max_len) {
        return Some(verdict);
    }
    let limit = (buf.len() + FIRST_READ).min(max_len + 1);
    match read_some_now(stream, limit, buf) {
        Read1::Bytes => decide(head, buf, max_len),
        Read1::Nothing => None,
        Read1::Closed => Some(Err(Outcome::Timeout)),
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
    let judge = |buf: &[u8]| decide(head, buf, max_len);
    let read = read_until(stream, max_len + 1, buf, judge);
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Some(verdict)) => verdict,
        Ok(None) | Err(_) => Err(Outcome::Timeout),
    }
}

/// The parser's verdict on `buf`, `None` while it needs more and the cap
/// still allows more. For bytes already read (after a PROXY header).
pub fn decide<H: Head>(head: &mut H, buf: &[u8], max_len: usize) -> Early<H::Parsed> {
    if buf.is_empty() {
        return None;
    }
    match head.judge(buf, max_len) {
        None if buf.len() > max_len => Some(Err(Outcome::TooLarge)),
        verdict => verdict,
    }
}

/// One non-blocking read of a trusted balancer's PROXY header into `buf`
/// (empty), like [`read_now`]. The header's bytes stay at the start of
/// `buf`; what follows them is the client's.
pub fn read_header_now(stream: &std::net::TcpStream, buf: &mut Vec<u8>) -> EarlyHeader {
    match read_some_now(stream, proxyheader::MAX_LEN, buf) {
        Read1::Bytes => decide_header(buf),
        Read1::Nothing => None,
        Read1::Closed => Some(Err(closed_before_header(buf))),
    }
}

/// Reads on from what [`read_header_now`] left in `buf` until the header is
/// decided, until `deadline`. Not a valid header: `ProxyError`; nothing at
/// all before a close or the deadline: `Timeout` (a health check that
/// connects and hangs up); part of one: `ProxyError`.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    deadline: Instant,
    buf: &mut Vec<u8>,
) -> Result<Header, Outcome> {
    let read = read_until(stream, proxyheader::MAX_LEN, buf, decide_header);
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Some(verdict)) => verdict,
        Ok(None) | Err(_) => Err(closed_before_header(buf)),
    }
}

/// The header parser's verdict on `buf`. `MAX_LEN` bytes always decide.
fn decide_header(buf: &[u8]) -> EarlyHeader {
    match proxyheader::parse(buf) {
        proxyheader::Verdict::NeedMore => None,
        proxyheader::Verdict::Header(header) => Some(Ok(header)),
        proxyheader::Verdict::Invalid(why) => {
            tracing::debug!("invalid PROXY header from a trusted balancer: {why}");
            Some(Err(Outcome::ProxyError))
        }
    }
}

/// The outcome of a balancer that closed or stalled before a whole header.
fn closed_before_header(buf: &[u8]) -> Outcome {
    if buf.is_empty() {
        Outcome::Timeout
    } else {
        Outcome::ProxyError
    }
}

/// One non-blocking read appended to `buf`, which then holds at most `limit`
/// bytes (`limit` is above `buf.len()`).
fn read_some_now(stream: &std::net::TcpStream, limit: usize, buf: &mut Vec<u8>) -> Read1 {
    let start = buf.len();
    buf.resize(limit.max(start + 1), 0);
    let read = loop {
        let room = buf.get_mut(start..).unwrap_or_default();
        match (&mut &*stream).read(room) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            read => break read,
        }
    };
    match read {
        Ok(0) => {
            buf.truncate(start);
            Read1::Closed
        }
        Ok(n) => {
            buf.truncate(start + n);
            Read1::Bytes
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            buf.truncate(start);
            Read1::Nothing
        }
        Err(_) => {
            buf.truncate(start);
            Read1::Closed
        }
    }
}

/// Reads into `buf` (at most `limit` bytes in all) until `judge` decides;
/// `None` when the peer closes or resets first.
async fn read_until<T>(
    stream: &mut TcpStream,
    limit: usize,
    buf: &mut Vec<u8>,
    mut judge: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    buf.reserve(FIRST_READ.min(limit).saturating_sub(buf.len()));
    loop {
        let room = limit.saturating_sub(buf.len());
        if buf.capacity() == buf.len() {
            buf.reserve(room.min(buf.capacity()));
        }
        let want = room.min(buf.capacity() - buf.len());
        match (&mut *stream).take(want as u64).read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if let Some(verdict) = judge(buf) {
            return Some(verdict);
        }
    }
}
