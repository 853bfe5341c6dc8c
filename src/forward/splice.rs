//! One direction of a relay through a kernel pipe with splice(2): socket ->
//! pipe -> socket, the bytes never copied to userspace. The only place in the
//! crate that knows pipes; safe `rustix` wrappers only, no `unsafe`.
//!
//! Invariants:
//! - every splice runs inside `TcpStream::try_io` right after the matching
//!   `poll_read_ready`/`poll_write_ready`, so a WouldBlock clears tokio's
//!   readiness and the next poll waits for a real event instead of spinning;
//! - we splice from the socket only into an EMPTY pipe, so EAGAIN on that
//!   side always means "socket has nothing" and never "pipe full" (clearing
//!   the socket's readiness for a full pipe would lose the wake-up);
//! - EINTR is retried on the spot;
//! - on EOF (splice returns 0 into an empty pipe) the pipe is already empty,
//!   so everything read has been written: `shutdown(Write)` the destination
//!   and let the other direction go on (half-close);
//! - the pipe size is a soft wish (`fcntl_setpipe_size` may be refused under
//!   `pipe-user-pages-soft`/`pipe-max-size`): the real capacity is used;
//! - if no pipe can be had (EMFILE, ENFILE), [`Flow::NoPipe`] tells the caller
//!   to carry on with the plain copy; nothing is lost since the pipe was empty;
//! - pipes are reused: a direction takes one only while it has data in
//!   flight and gives it back as soon as it is empty, so an idle connection
//!   holds no pipe. At most [`POOL_CAP`] idle pipes are kept; a pipe given
//!   back to a full pool, still holding data, or after an error is closed.
//!   The idle pool therefore never grows with past peaks.
//!
//! SIGPIPE: splice into a socket whose peer is gone fails with EPIPE; the
//! Rust runtime ignores SIGPIPE, so that arrives here as an error value.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Meter;

/// Pipe size asked for: the unprivileged `pipe-max-size` (1 MiB). A bulk
/// stream then moves in a sixteenth of the splices of Linux's 64 KiB default;
/// against 256 KiB it measured 0.27 instead of 0.33 CPU-s per GiB on one
/// stream (BENCHMARKS.md). Only pages holding data cost memory, but the
/// kernel charges a pipe's full size to the user's `pipe-user-pages-soft`
/// budget (64 MiB): past it, new pipes get two pages and still work, just
/// with more splices. Idle connections hold no pipe.
const PIPE_SIZE: usize = 1024 * 1024;

/// Capacity assumed if the kernel will tell us neither way (its default).
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// Idle pipes kept for reuse. An idle pipe costs two file descriptors and is
/// charged its full size (see [`PIPE_SIZE`]); 16 covers the directions of a
/// home gateway that move data at the same moment (a pipe is only out of the
/// pool while a chunk is in flight, microseconds on a LAN) and keeps idle
/// pipes to a quarter of the unprivileged pipe budget, while a past burst of
/// thousands of transfers leaves no more than 32 descriptors behind.
pub const POOL_CAP: usize = 16;

/// Idle pipes, shared by every worker thread. The lock is held only for a
/// push or a pop, never across an `.await` or a syscall.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Every splice: do not block on the pipe (the sockets are non-blocking
/// already), and move pages rather than copy them where the kernel can.
const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// Idle pipes in the pool now.
pub fn idle_pipes() -> usize {
    pool().len()
}

fn pool() -> MutexGuard<'static, Vec<Pipe>> {
    // A panic while holding this lock cannot leave the Vec inconsistent.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pipe and what it can hold.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// One from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        let pooled = pool().pop();
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Pipe::create(),
        }
    }

    fn create() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| fcntl_getpipe_size(&write))
            .unwrap_or(DEFAULT_PIPE_SIZE);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Back to the pool; callers only give back an EMPTY pipe. Closed if the
    /// pool is full (after the lock is released).
    fn give_back(self) {
        let rejected = {
            let mut pool = pool();
            if pool.len() < POOL_CAP {
                pool.push(self);
                None
            } else {
                Some(self)
            }
        };
        drop(rejected);
    }
}

/// How a splice direction stopped, when it did not fail.
pub(super) enum Flow {
    /// EOF read and every byte written: the caller passes the FIN on.
    Done,
    /// No pipe to be had; nothing in flight: carry on with a plain copy.
    NoPipe(io::Error),
}

/// Splice state of one direction.
pub(super) struct SpliceHalf {
    /// Held only while `in_flight > 0`.
    pipe: Option<Pipe>,
    /// Bytes in the pipe, read from the source, not yet written.
    in_flight: usize,
    /// The source sent FIN.
    eof: bool,
}

impl SpliceHalf {
    pub(super) fn new() -> Self {
        SpliceHalf {
            pipe: None,
            in_flight: 0,
            eof: false,
        }
    }

    /// Moves bytes `from` -> `to` until nothing is ready (Pending), the
    /// direction is finished, a pipe is missing, or an error (the pipe, if
    /// any, is then closed with this half).
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        meter: &mut Meter<'_>,
    ) -> Poll<io::Result<Flow>> {
        loop {
            if self.in_flight > 0 {
                ready!(to.poll_write_ready(cx))?;
                self.drain(to, meter)?;
            } else if self.eof {
                return Poll::Ready(Ok(Flow::Done));
            } else {
                ready!(from.poll_read_ready(cx))?;
                let pipe = match Pipe::take() {
                    Ok(pipe) => pipe,
                    Err(e) => return Poll::Ready(Ok(Flow::NoPipe(e))),
                };
                let read = from.try_io(Interest::READABLE, || {
                    splice_retrying(from, &pipe.write, pipe.capacity)
                });
                match read {
                    Ok(0) => {
                        self.eof = true;
                        meter.touched();
                        pipe.give_back();
                    }
                    Ok(n) => {
                        self.in_flight = n;
                        self.pipe = Some(pipe);
                        meter.touched();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give_back(),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    /// One splice pipe -> `to`, after `to` was seen writable. Ok when it
    /// moved bytes or hit WouldBlock (the caller's loop polls again).
    fn drain(&mut self, to: &TcpStream, meter: &mut Meter<'_>) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_ref() else {
            return Err(io::Error::other("splice: bytes in flight, no pipe"));
        };
        let len = self.in_flight;
        match to.try_io(Interest::WRITABLE, || splice_retrying(&pipe.read, to, len)) {
            Ok(0) => {
                self.pipe = None;
                Err(io::ErrorKind::WriteZero.into())
            }
            Ok(n) => {
                self.in_flight = self.in_flight.saturating_sub(n);
                meter.moved(n);
                if self.in_flight == 0
                    && let Some(pipe) = self.pipe.take()
                {
                    pipe.give_back();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => {
                self.pipe = None;
                Err(e)
            }
        }
    }
}

/// splice(2) without offsets, EINTR retried; EAGAIN comes back as WouldBlock.
fn splice_retrying(
    from: impl std::os::fd::AsFd,
    to: impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    loop {
        match splice(&from, None, &to, None, len, FLAGS) {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}
