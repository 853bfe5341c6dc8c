//! Runs Debian's `nft` command: a text batch on stdin (`nft -f -`), or a
//! query (`nft -j list ...`) whose JSON comes back on stdout.
//!
//! Why a subprocess with text batches, not a library: `nft -f` applies a
//! whole batch as one netlink transaction (all or nothing, so a table is
//! replaced without a gap and never duplicated); the text is exactly what an
//! admin reads in `nft list table` and can replay by hand; it needs no C
//! bindings to libnftables (no `unsafe`, no link-time dependency, and a
//! crash in the parser cannot take the daemon down); and its cost — a
//! fork and exec of a few milliseconds — is paid at most ten times a second
//! because changes are batched. Kubernetes' kube-proxy (knftables) drives
//! nft the same way for the same reasons. JSON batches would work too but
//! are three times longer for 100,000 elements and harder to read in a log.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Where Debian's `nftables` package puts the command, tried after `PATH`
/// (systemd's default `PATH` has it, a login shell of a user may not).
const FALLBACK_PATHS: [&str; 2] = ["/usr/sbin/nft", "/sbin/nft"];

/// Longest an `nft` run may take before it is killed: 100,000 elements load
/// in ~0.4 s and a million in a few seconds; a minute means it is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest error text kept from nft's stderr (for the log and `status`).
const MAX_ERROR: usize = 600;

/// Why an `nft` run failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The command could not be started.
    #[error("cannot run {path}: {error}")]
    Spawn { path: PathBuf, error: io::Error },
    /// nft ran and refused: not allowed (no CAP_NET_ADMIN).
    #[error("not permitted (needs CAP_NET_ADMIN): {0}")]
    Denied(String),
    /// nft ran and refused for another reason (its stderr).
    #[error("{0}")]
    Failed(String),
    /// nft did not finish within [`RUN_TIMEOUT`].
    #[error("nft did not finish within {RUN_TIMEOUT:?}")]
    TimedOut,
}

/// The `nft` command.
#[derive(Debug, Clone)]
pub struct Nft {
    path: PathBuf,
}

/// The `nft` command on `PATH`, or in Debian's place; `None` if missing.
pub fn locate() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|dirs| {
        std::env::split_paths(&dirs)
            .map(|dir| dir.join("nft"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        FALLBACK_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

impl Nft {
    /// The command at `path`.
    pub fn new(path: PathBuf) -> Nft {
        Nft { path }
    }

    /// Where the command is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `batch` as one transaction (`nft -f -`).
    pub async fn apply(&self, batch: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(batch)).await.map(drop)
    }

    /// Runs a query like `-j list chains` and returns its stdout.
    pub async fn query(&self, args: &[&str]) -> Result<String, NftError> {
        self.run(args, None).await
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let spawn_error = |error| NftError::Spawn {
            path: self.path.clone(),
            error,
        };
        let mut child = Command::new(&self.path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let input = child.stdin.take();
        let feed = async move {
            if let (Some(mut pipe), Some(text)) = (input, stdin) {
                // A write error means nft exited early; its stderr says why.
                let _ = pipe.write_all(text.as_bytes()).await;
                let _ = pipe.shutdown().await;
            }
        };
        let run = async { tokio::join!(feed, child.wait_with_output()).1 };
        let output = tokio::time::timeout(RUN_TIMEOUT, run)
            .await
            .map_err(|_| NftError::TimedOut)?
            .map_err(spawn_error)?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut message: String = stderr.trim().chars().take(MAX_ERROR).collect();
        if message.is_empty() {
            message = format!("nft exited with {}", output.status);
        }
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            Err(NftError::Denied(message))
        } else {
            Err(NftError::Failed(message))
        }
    }
}

/// True when `chains` (the JSON of `nft -j list chains`) has chain `chain`
/// of table `inet <table>`.
pub fn has_chain(chains: &str, table: &str, chain: &str) -> bool {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(chains) else {
        return false;
    };
    let Some(items) = doc.get("nftables").and_then(|v| v.as_array()) else {
        return false;
    };
    items.iter().filter_map(|item| item.get("chain")).any(|c| {
        c.get("family").and_then(|v| v.as_str()) == Some("inet")
            && c.get("table").and_then(|v| v.as_str()) == Some(table)
            && c.get("name").and_then(|v| v.as_str()) == Some(chain)
    })
}

/// The packet count in `counter` (the JSON of `nft -j list counter ...`).
pub fn counter_packets(counter: &str) -> Option<u64> {
    let doc = serde_json::from_str::<serde_json::Value>(counter).ok()?;
    doc.get("nftables")?
        .as_array()?
        .iter()
        .find_map(|item| item.get("counter")?.get("packets")?.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_chain_in_the_listing() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "other", "name": "input", "handle": 1}},
            {"chain": {"family": "inet", "table": "sniroute", "name": "input", "handle": 5}}]}"#;
        assert!(has_chain(listing, "sniroute", "input"));
        assert!(!has_chain(listing, "sniroute", "output"));
        assert!(!has_chain(listing, "missing", "input"));
        assert!(!has_chain("not json", "sniroute", "input"));
        assert!(!has_chain(r#"{"nftables": []}"#, "sniroute", "input"));
    }

    #[test]
    fn reads_the_counter() {
        let listing = r#"{"nftables": [{"metainfo": {}}, {"counter": {"family": "inet",
            "name": "dropped", "table": "sniroute", "handle": 2, "packets": 42, "bytes": 2520}}]}"#;
        assert_eq!(counter_packets(listing), Some(42));
        assert_eq!(counter_packets("{}"), None);
    }
}
