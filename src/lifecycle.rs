//! Process lifecycle: signals become [`Control`] requests (SIGHUP reload,
//! SIGTERM/SIGINT stop), and systemd hears about it through `NOTIFY_SOCKET`
//! (READY, RELOADING, STOPPING, WATCHDOG pings).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::shared::Control;

/// Turns signals into control requests until the receiver is gone.
pub fn spawn_signal_handler(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = hup.recv() => Control::Reload(None),
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
            };
            // A second SIGTERM/SIGINT during the drain is passed on too: it
            // cuts the grace short, as an impatient operator expects.
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(())
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
