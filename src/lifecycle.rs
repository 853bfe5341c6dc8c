//! Process lifecycle: signals become [`Control`] requests, and systemd hears
//! about it through `NOTIFY_SOCKET` (READY, RELOADING, STOPPING, WATCHDOG
//! pings). This is the only module that handles signals:
//!
//! | signal | effect |
//! |---|---|
//! | `SIGHUP` | reload the config ([`Control::Reload`]) |
//! | `SIGTERM`, `SIGINT`, `SIGQUIT` | stop, drain ([`Control::Stop`]); a second one ends the drain |
//! | `SIGUSR1` | reopen the access log, nothing else ([`Control::ReopenLogs`]), like nginx |
//! | `SIGUSR2`, `SIGALRM`, `SIGIO` | logged and ignored |
//! | `SIGPIPE` | ignored: a write to a closed peer fails with `EPIPE` instead |
//!
//! SIGQUIT is nginx's graceful stop; by default it would dump core.
//! SIGUSR2, SIGALRM and SIGIO would end the process by default (an operator
//! used to nginx sends SIGUSR2 for a binary upgrade): here they only leave a
//! warning in the log. SIGWINCH keeps its default (ignored, silently: a
//! terminal resize must not fill the log). SIGPIPE is set
//! to "ignore" by Rust's runtime before `main`; it is deliberately not
//! caught here, since a handler would run on every write to a closed socket.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::shared::Control;

/// Signals that would end (or mean something else to) a daemon by default
/// and that sniroute only logs: (kind, name).
const IGNORED: [(SignalKind, &str); 3] = [
    (SignalKind::user_defined2(), "SIGUSR2"),
    (SignalKind::alarm(), "SIGALRM"),
    (SignalKind::io(), "SIGIO"),
];

/// Turns signals into control requests until the receiver is gone.
pub fn spawn_signal_handler(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    for (kind, name) in IGNORED {
        spawn_ignored(signal(kind)?, name);
    }
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = hup.recv() => Control::Reload(None),
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = quit.recv() => Control::Stop,
                _ = usr1.recv() => Control::ReopenLogs,
            };
            // A second SIGTERM/SIGINT/SIGQUIT during the drain is passed on too: it
            // cuts the grace short, as an impatient operator expects.
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Logs each delivery of `name` and does nothing else.
fn spawn_ignored(mut stream: Signal, name: &'static str) {
    tokio::spawn(async move {
        while stream.recv().await.is_some() {
            tracing::warn!(
                "{name} received and ignored (SIGHUP reloads, SIGUSR1 reopens the access log, SIGTERM stops)"
            );
        }
    });
}

/// Sends one sd_notify message if `NOTIFY_SOCKET` is set; errors are logged,
/// never fatal (systemd may be gone during shutdown).
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract namespace socket (Linux).
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                return socket.send_to_addr(message.as_bytes(), &addr).map(|_| ());
            }
            #[cfg(not(target_os = "linux"))]
            return Err(std::io::Error::other(format!("abstract socket {name:?}")));
        }
        socket.send_to(message.as_bytes(), &path).map(|_| ())
    })();
    if let Err(e) = result {
        tracing::warn!("sd_notify {message:?}: {e}");
    }
}

/// The daemon is listening.
pub fn notify_ready() {
    notify("READY=1\nSTATUS=serving");
}

/// A reload started (READY=1 follows when it is done).
pub fn notify_reloading() {
    let usec = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = usec.tv_sec as u64 * 1_000_000 + usec.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// Shutdown started.
pub fn notify_stopping() {
    notify("STOPPING=1");
}

/// Pings the systemd watchdog at half of `WATCHDOG_USEC`, if it is set for us.
pub fn spawn_watchdog() {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    if !pid_ok || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + period;
        let mut tick = tokio::time::interval_at(start, period);
        loop {
            tick.tick().await;
            notify("WATCHDOG=1");
        }
    });
}
