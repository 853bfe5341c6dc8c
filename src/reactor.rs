//! The one place with `unsafe`: registering a listener with tokio's reactor
//! by hand, so accept loops can accept with `accept4(2)` themselves and hand
//! out plain, unregistered sockets (see `listener.rs`). tokio marks the
//! registration `unsafe` only because an arbitrary `AsRawFd` could close or
//! swap its descriptor behind the reactor's back; a `TcpListener` owns its
//! descriptor and cannot.
#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;

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
