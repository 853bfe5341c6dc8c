//! The bouncer: pulls decisions from the LAPI's stream and hands them to the
//! guard's one entry point for remote decisions.
//!
//! Like go-cs-bouncer's stream bouncer: the first pull asks for everything
//! (`startup=true`) and replaces the remote table; later pulls, one every
//! `update_frequency`, bring the delta. After ANY failed pull (LAPI down,
//! refused key, bad body) the next one is a `startup=true` full resync again,
//! since a lost delta cannot be told from an empty one. The daemon routes
//! meanwhile: nothing here is on the accept path, and a LAPI that is down at
//! start only delays the first decisions.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::Status;
use super::lapi::Lapi;
use super::stream::{self, Item};
use crate::config::Secret;
use crate::guard::Guard;
use crate::guard::bans::BAN_CAP;
use crate::guard::remote::{Applied, RemoteUpdate};

/// Pulls until the task is dropped.
/// Without a key (`None`), the client certificate is the credential.
pub async fn run(
    lapi: Lapi,
    key: Option<Secret>,
    every: Duration,
    guard: Arc<Guard>,
    status: Arc<Status>,
    stopped: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut startup = true;
    let mut failing = false;
    loop {
        ticks.tick().await;
        match pull(&lapi, key.as_ref(), startup, &guard, &stopped).await {
            Ok(applied) => {
                metrics::counter!("sniroute_crowdsec_pulls_total", "result" => "ok").increment(1);
                status.pulled(Ok(applied.total));
                if failing {
                    status.back.notify_waiters();
                }
                if failing || startup {
                    tracing::info!(
                        decisions = applied.total,
                        "crowdsec: decisions pulled from the LAPI (full)"
                    );
                } else if applied.added + applied.lifted > 0 {
                    tracing::info!(
                        added = applied.added,
                        lifted = applied.lifted,
                        decisions = applied.total,
                        "crowdsec: decisions changed"
                    );
                }
                startup = false;
                failing = false;
            }
            Err(e) => {
                metrics::counter!("sniroute_crowdsec_pulls_total", "result" => "error")
                    .increment(1);
                status.pulled(Err(e.clone()));
                if failing {
                    tracing::debug!(error = %e, "crowdsec: pull failed again");
                } else {
                    tracing::warn!(error = %e, "crowdsec: pull failed; the next pull is a full resync");
                }
                startup = true;
                failing = true;
            }
        }
    }
}

/// Pieces of a body in flight between the download and the parser: the
/// download waits while the parser is behind, so at most this many pieces
/// (hyper's reads: a few KiB, at most ~400 KiB each) are held at once.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Most decisions one delta may bring: as many as the table holds. More is
/// not a delta but a flood; refused (and the next pull, a full resync,
/// keeps at most that many).
const MAX_DELTA: usize = BAN_CAP;

/// One pull: fetch, parse and apply. The body is parsed as it arrives, off
/// the async threads (a startup body of 100,000 decisions takes tens of
/// milliseconds), and never held whole.
async fn pull(
    lapi: &Lapi,
    key: Option<&Secret>,
    startup: bool,
    guard: &Arc<Guard>,
    stopped: &Arc<AtomicBool>,
) -> Result<Applied, String> {
    let mut body = lapi
        .stream(key.map(Secret::expose), startup)
        .await
        .map_err(|e| e.to_string())?;
    let (pieces, arriving) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let parser = {
        let (guard, stopped) = (Arc::clone(guard), Arc::clone(stopped));
        tokio::task::spawn_blocking(move || {
            apply(Arriving::new(arriving), startup, &guard, &stopped)
        })
    };
    loop {
        let piece = match body.chunk().await {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => break,
            // Told to the parser, which stops with it.
            Err(e) => Err(e.to_string()),
        };
        let failed = piece.is_err();
        // A send fails when the parser stopped early (a bad body): the
        // rest is not read, and the connection is dropped.
        if pieces.send(piece).await.is_err() || failed {
            break;
        }
    }
    drop(pieces);
    parser
        .await
        .map_err(|e| format!("decision parser stopped: {e}"))?
}

/// Reads a body and applies it. A startup body is built aside in a
/// [`RemoteSet`](crate::guard::remote::RemoteSet) and swapped in (its
/// `deleted` list means nothing then); a delta is collected, at most
/// [`MAX_DELTA`] decisions, and applied `deleted` first. On any error, or
/// once the puller is `stopped`, nothing is applied.
fn apply(
    body: impl Read,
    startup: bool,
    guard: &Guard,
    stopped: &AtomicBool,
) -> Result<Applied, String> {
    let now = guard.unix_millis();
    let (update, skipped) = if startup {
        let mut set = guard.remote_set();
        let skipped = stream::read(body, now, |item| {
            if let Item::New(d) = item {
                set.insert(d);
            }
            Ok(())
        });
        (RemoteUpdate::Built(set), skipped)
    } else {
        let (mut deleted, mut new) = (Vec::new(), Vec::new());
        let skipped = stream::read(body, now, |item| {
            if deleted.len() + new.len() >= MAX_DELTA {
                return Err(format!("a delta of more than {MAX_DELTA} decisions"));
            }
            match item {
                Item::Deleted(net) => deleted.push(net),
                Item::New(d) => new.push(d),
            }
            Ok(())
        });
        (RemoteUpdate::Delta { deleted, new }, skipped)
    };
    let skipped = skipped.map_err(|e| format!("bad decision stream: {e}"))?;
    if skipped > 0 {
        tracing::debug!(
            skipped,
            "crowdsec: decisions not for sniroute (type, scope or value)"
        );
    }
    guard
        .apply_remote_unless(update, stopped)
        .ok_or_else(|| "stopped".to_owned())
}

/// The body as the parser reads it: the pieces the download hands over.
struct Arriving {
    pieces: mpsc::Receiver<Result<Bytes, String>>,
    piece: Bytes,
}

impl Arriving {
    fn new(pieces: mpsc::Receiver<Result<Bytes, String>>) -> Arriving {
        Arriving {
            pieces,
            piece: Bytes::new(),
        }
    }
}

impl Read for Arriving {
    /// Waits (on the blocking thread) for the next piece; a download error
    /// is this read's error; the end of the pieces is the end of the body.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.pieces.blocking_recv() {
                Some(Ok(piece)) => self.piece = piece,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        if let Some(buf) = buf.get_mut(..n) {
            self.piece.copy_to_slice(buf);
        }
        Ok(n)
    }
}
