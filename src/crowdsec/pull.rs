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

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::Status;
use super::lapi::Lapi;
use super::stream;
use crate::config::Secret;
use crate::guard::Guard;
use crate::guard::remote::{Applied, RemoteUpdate};

/// Pulls until the task is dropped.
pub async fn run(lapi: Lapi, key: Secret, every: Duration, guard: Arc<Guard>, status: Arc<Status>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut startup = true;
    let mut failing = false;
    loop {
        ticks.tick().await;
        match pull(&lapi, &key, startup, &guard).await {
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

/// One pull: fetch, parse and apply (off the async threads: a startup body
/// of 100,000 decisions takes tens of milliseconds to parse).
async fn pull(
    lapi: &Lapi,
    key: &Secret,
    startup: bool,
    guard: &Arc<Guard>,
) -> Result<Applied, String> {
    let body = lapi
        .stream(key.expose(), startup)
        .await
        .map_err(|e| e.to_string())?;
    let guard = Arc::clone(guard);
    tokio::task::spawn_blocking(move || {
        let parsed = stream::parse(&body, guard.unix_millis()).map_err(|e| e.to_string())?;
        if parsed.skipped > 0 {
            tracing::debug!(
                skipped = parsed.skipped,
                "crowdsec: decisions not for sniroute (type, scope or value)"
            );
        }
        let update = if startup {
            RemoteUpdate::Full(parsed.new)
        } else {
            RemoteUpdate::Delta {
                deleted: parsed.deleted,
                new: parsed.new,
            }
        };
        Ok(guard.apply_remote(update))
    })
    .await
    .map_err(|e| format!("decision parser stopped: {e}"))?
}
