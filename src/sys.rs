//! The one module with `unsafe`: two calls that have no safe wrapper yet.
//!
//! - registering a listener with tokio's reactor by hand, so accept loops can
//!   accept with `accept4(2)` themselves and hand out plain, unregistered
//!   sockets (see `listener.rs`). tokio marks this `unsafe` only because an
//!   arbitrary `AsRawFd` could close or swap its descriptor behind the
//!   reactor's back; a `TcpListener` owns its descriptor and cannot;
//! - `TCP_DEFER_ACCEPT` (Linux), which neither std (unstable) nor rustix nor
//!   socket2 offers.
#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `listener` (non-blocking) for read readiness. Must be called
/// within a tokio runtime.
pub fn register_listener(listener: TcpListener) -> io::Result<AsyncFd<TcpListener>> {
    listener.set_nonblocking(true)?;
    // SAFETY: the `AsyncFd` takes ownership of the `TcpListener`, which owns
    // its descriptor (an `OwnedFd` inside) and returns that same descriptor
    // from every `as_raw_fd` call. Nothing can close it while registered:
    // `AsyncFd` only lends `&TcpListener`, through which it cannot be closed,
    // and gives it back (deregistered first) only by `into_inner` or drop.
    let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    registered.map_err(|e| e.into_parts().1)
}

/// Seconds given to `TCP_DEFER_ACCEPT`: the kernel turns them into SYN-ACK
/// retransmissions, and 1 means a silent client is handed over at the first
/// one, about a second after its handshake (nginx's `deferred` and HAProxy's
/// `defer-accept` use the same value).
#[cfg(target_os = "linux")]
const DEFER_SECS: libc::c_int = 1;

/// Turns Linux's `TCP_DEFER_ACCEPT` on or off for a listening socket.
#[cfg(target_os = "linux")]
pub fn set_defer_accept(listener: &impl AsFd, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = if on { DEFER_SECS } else { 0 };
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&value))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the whole call (`listener` owns it
    // and is borrowed); the option value points to a live `c_int` on the
    // stack and `len` is its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `TCP_DEFER_ACCEPT` is Linux only; elsewhere `defer_accept = true` fails.
#[cfg(not(target_os = "linux"))]
pub fn set_defer_accept(_listener: &impl AsFd, on: bool) -> io::Result<()> {
    if on {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "defer_accept needs Linux (TCP_DEFER_ACCEPT)",
        ))
    } else {
        Ok(())
    }
}
