//! One direction of a relay through a userspace buffer: the portable path,
//! used when splice is off, not on Linux, or no pipe could be had.
//!
//! Same contract as the splice path: read, write all of it, repeat; on EOF
//! `shutdown(Write)` the destination once everything read was written. Every
//! read and write is a `try_*` after the matching `poll_*_ready`, so
//! WouldBlock clears tokio's readiness and the next poll waits for an event.

use std::io;
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

use super::Meter;

/// 16 KiB: the largest TLS record (16 KiB of payload plus a few hundred bytes
/// of overhead) moves in one or two reads, and a few thousand active
/// connections cost tens of MiB at most. Allocated when bytes are ready and
/// released when the direction waits again, so an idle connection holds none.
const BUF_SIZE: usize = 16 * 1024;

/// Copy state of one direction.
pub(super) struct CopyHalf {
    /// `BUF_SIZE` long while bytes move, empty while the direction waits.
    buf: Vec<u8>,
    /// `buf[start..end]` was read and is not written yet.
    start: usize,
    end: usize,
    /// The source sent FIN.
    eof: bool,
}

impl CopyHalf {
    pub(super) fn new() -> Self {
        CopyHalf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Moves bytes `from` -> `to` until nothing is ready (Pending), the
    /// direction is finished (EOF read and every byte written: Ready(Ok); the
    /// caller passes the FIN on) or an error.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        meter: &mut Meter<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.start < self.end {
                ready!(to.poll_write_ready(cx))?;
                let pending = self.buf.get(self.start..self.end).unwrap_or_default();
                match to.try_write(pending) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.start += n;
                        meter.moved(n);
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            } else if self.eof {
                return Poll::Ready(Ok(()));
            } else {
                if from.poll_read_ready(cx)?.is_pending() {
                    // Nothing in flight and nothing to read: a direction that
                    // waits holds no buffer, so idle connections stay small.
                    self.buf = Vec::new();
                    return Poll::Pending;
                }
                if self.buf.is_empty() {
                    self.buf = vec![0; BUF_SIZE];
                }
                match from.try_read(&mut self.buf) {
                    Ok(0) => {
                        self.eof = true;
                        meter.touched();
                    }
                    Ok(n) => {
                        self.start = 0;
                        self.end = n;
                        meter.touched();
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }
}

/// WouldBlock (readiness now cleared: the next poll waits) or EINTR.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
