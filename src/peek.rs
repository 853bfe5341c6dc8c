//! Reads the ClientHello off a fresh client socket: into a bounded buffer,
//! within the hello timeout, deciding only when the parser can. The bytes are
//! kept so the connection handler can replay them to the backend.
//!
//! No `MSG_PEEK`: peeking in a loop spins while the socket stays readable.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::clienthello::{self, ClientHello, Verdict};
use crate::outcome::Outcome;

/// First allocation for the hello: one read of a typical hello (300-600 B,
/// up to ~2 KB with a post-quantum key share) lands in it without regrowing.
const INITIAL_CAPACITY: usize = 2048;

/// Reads until the parser decides, at most `max_len` bytes, within `timeout`.
///
/// `buf` receives every byte read (the hello and anything the client sent
/// after it). A client that closes or resets before a whole hello arrived
/// ends as `Timeout` ("no full ClientHello"), like one that stalls.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    max_len: usize,
    timeout: Duration,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, Outcome> {
    match tokio::time::timeout(timeout, read_until_verdict(stream, max_len, buf)).await {
        Ok(verdict) => verdict,
        Err(_elapsed) => Err(Outcome::Timeout),
    }
}

async fn read_until_verdict(
    stream: &mut TcpStream,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, Outcome> {
    buf.clear();
    buf.reserve(INITIAL_CAPACITY.min(max_len));
    loop {
        // One byte past the cap is enough to know the hello is too large.
        let room = (max_len + 1).saturating_sub(buf.len());
        if buf.capacity() == buf.len() {
            buf.reserve(room.min(buf.capacity()));
        }
        let want = room.min(buf.capacity() - buf.len());
        let n = match (&mut *stream).take(want as u64).read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Outcome::Timeout),
            Ok(n) => n,
        };
        debug_assert!(n > 0);
        match clienthello::parse(buf, max_len) {
            Verdict::NeedMore if buf.len() > max_len => return Err(Outcome::TooLarge),
            Verdict::NeedMore => continue,
            Verdict::Hello(hello) => return Ok(hello),
            Verdict::Reject(outcome) => return Err(outcome),
        }
    }
}
