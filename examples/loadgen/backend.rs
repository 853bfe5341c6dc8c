//! The stand-in backend: skips the ClientHello or, in the plain-HTTP rows,
//! the request head (it parses them with sniroute's own parsers, so it knows
//! where they end whatever the framing), reads the command, and pings, holds
//! or moves bulk bytes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use sniroute::clienthello::{self, Verdict};
use sniroute::httphead;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream;
use crate::wire::{COMMAND_LEN, Command};

/// Largest hello the backend accepts (sniroute's default cap).
const MAX_HELLO: usize = 16384;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves forever on `addr`.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = stream::listen(addr)?;
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = handle(conn).await {
                        eprintln!("backend: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("backend: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn handle(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let hello_len = loop {
        if conn.read_buf(&mut buf).await? == 0 {
            return Ok(()); // a probe (readiness check) or a reject the proxy let through
        }
        // A handshake record starts with 22; anything else is an HTTP head.
        if buf.first() != Some(&22) {
            match httphead::parse(&buf, MAX_HELLO) {
                httphead::Verdict::NeedMore => continue,
                httphead::Verdict::Request(request) => break request.len,
                httphead::Verdict::Reject(outcome) => {
                    return Err(io::Error::other(format!("not a request: {outcome:?}")));
                }
            }
        }
        match clienthello::parse(&buf, MAX_HELLO) {
            Verdict::NeedMore => {}
            Verdict::Hello(hello) => break hello.len,
            Verdict::Reject(outcome) => {
                return Err(io::Error::other(format!("not a hello: {outcome:?}")));
            }
        }
    };
    while buf.len() < hello_len + COMMAND_LEN {
        if conn.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF before the command",
            ));
        }
    }
    let command = Command::decode(&buf[hello_len..hello_len + COMMAND_LEN])?;
    let early = (buf.len() - hello_len - COMMAND_LEN) as u64;
    drop(buf);
    match command {
        Command::Ping => conn.write_all(b"!").await,
        Command::Hold => {
            conn.write_all(b"!").await?;
            stream::drain(&mut conn).await;
            Ok(())
        }
        Command::Bulk(n) => bulk(conn, n, early).await,
    }
}

/// Both ways at once; the trailer tells the client how many bytes arrived.
async fn bulk(mut conn: TcpStream, n: u64, early: u64) -> io::Result<()> {
    let (mut r, mut w) = conn.split();
    let receive = stream::read_n(&mut r, n.saturating_sub(early));
    let send = stream::write_n(&mut w, n);
    tokio::try_join!(receive, send)?;
    let received = n.max(early);
    conn.write_all(&received.to_le_bytes()).await?;
    stream::drain(&mut conn).await;
    Ok(())
}
