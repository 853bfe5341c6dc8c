//! The guard's housekeeping thread: a pass every second (ban expiry, strike
//! pruning, rate-limiter `retain_recent`) and the state file writer.
//!
//! A plain thread, not a tokio task, because writing the state file fsyncs.
//! A ban change wakes it at once (a bounded channel of one coalesces bursts),
//! so a change reaches the file well within the second the SPEC allows, and
//! under a ban flood the file is rewritten at most every [`MIN_WRITE_GAP`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Guard;

/// Housekeeping period: bans are lifted within a second of their expiry.
const TICK: Duration = Duration::from_secs(1);

/// Least time between two state file writes, so a flood of bans costs at
/// most five fsynced rewrites a second while each still lands within 1 s.
const MIN_WRITE_GAP: Duration = Duration::from_millis(200);

/// Handle on the running housekeeping thread.
pub struct Housekeeping {
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    thread: Option<JoinHandle<()>>,
}

pub(super) fn spawn(guard: Arc<Guard>) -> io::Result<Housekeeping> {
    let (wake, rx) = sync_channel(1);
    if guard.wake.set(wake.clone()).is_err() {
        return Err(io::Error::other("guard housekeeping is already running"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = thread::Builder::new()
        .name("sniroute-guard".into())
        .spawn(move || run(&guard, &rx, &stopping))?;
    Ok(Housekeeping {
        stop,
        wake,
        thread: Some(thread),
    })
}

impl Housekeeping {
    /// Stops the thread after it writes any pending ban change. Blocks for
    /// that write (an fsync): call it from a blocking context at shutdown.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("guard housekeeping thread panicked");
        }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(guard: &Guard, wake: &Receiver<()>, stop: &AtomicBool) {
    let mut next_pass = Instant::now() + TICK;
    let mut next_write = Instant::now();
    loop {
        let now = Instant::now();
        let until = if guard.is_dirty() {
            next_pass.min(next_write)
        } else {
            next_pass
        };
        match wake.recv_timeout(until.saturating_duration_since(now)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        if now >= next_pass {
            guard.housekeeping();
            next_pass = now + TICK;
        }
        if guard.is_dirty() && Instant::now() >= next_write {
            next_write = Instant::now() + MIN_WRITE_GAP;
            if let Err(e) = guard.persist() {
                tracing::error!(error = %e, "cannot write the ban state file; retrying");
                next_write = Instant::now() + TICK;
            }
        }
    }
    if let Err(e) = guard.persist() {
        tracing::error!(error = %e, "cannot write the ban state file at shutdown");
    }
}
