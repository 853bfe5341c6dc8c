//! The ban state file: bans survive restarts, crashes and `kill -9`.
//!
//! Written atomically: a temp file in the same directory is written and
//! fsynced, renamed over the old file, and the directory is fsynced, so the
//! file on disk is always either the old or the new complete document. A
//! file that cannot be read or parsed is logged and renamed aside
//! (`bans.json.corrupt-<UTC time>`, like `bans.json.corrupt-20211010T155536Z`) so nothing is lost silently, and the
//! daemon starts without it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::bans::Ban;

/// Format version written in the file, bumped if the layout ever changes.
const FORMAT_VERSION: u32 = 1;

/// The document stored in the state file (written by [`render`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    version: u32,
    bans: Vec<Ban>,
}

/// Where bans are persisted.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A state file at `path`; creates its directory if missing.
    pub fn new(path: &Path) -> anyhow::Result<StateFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create ban state directory {}", dir.display()))?;
        }
        Ok(StateFile {
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the bans. A missing file is an empty list. An unreadable or
    /// corrupt file is reported, moved aside to `<path>.corrupt-<UTC time>`,
    /// and read as an empty list.
    pub fn load(&self, now_unix: u64) -> Vec<Ban> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read ban state file");
                self.move_aside(now_unix);
                return Vec::new();
            }
        };
        match parse(&text) {
            Ok(bans) => bans,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "corrupt ban state file");
                self.move_aside(now_unix);
                Vec::new()
            }
        }
    }

    /// Renames the current file to `<path>.corrupt-<UTC time>` (see [`aside_suffix`]).
    fn move_aside(&self, now_unix: u64) {
        let mut aside = self.path.clone().into_os_string();
        aside.push(aside_suffix(now_unix));
        let aside = PathBuf::from(aside);
        match fs::rename(&self.path, &aside) {
            Ok(()) => {
                tracing::error!(kept = %aside.display(), "the unreadable ban state was kept aside; starting without those bans")
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot move the unreadable ban state aside")
            }
        }
    }

    /// Replaces the file with `bans`, atomically and durably.
    pub fn save(&self, bans: &[Ban]) -> io::Result<()> {
        let bytes = render(bans)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = self.path.clone().into_os_string();
        // A fixed name: a temp file left by a crash is simply overwritten by
        // the next write (one daemon owns one state file).
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = write_synced(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(&dir)?.sync_all()
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The document, one ban per line: readable with `less`, diffable, and
/// compact (about 130 bytes per ban).
fn render(bans: &[Ban]) -> io::Result<Vec<u8>> {
    let mut out = format!("{{\"version\":{FORMAT_VERSION},\"bans\":[").into_bytes();
    for (i, ban) in bans.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, ban).map_err(io::Error::other)?;
    }
    out.extend_from_slice(b"\n]}\n");
    Ok(out)
}

fn parse(text: &[u8]) -> Result<Vec<Ban>, String> {
    let doc: StateDoc = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if doc.version != FORMAT_VERSION {
        return Err(format!("unknown format version {}", doc.version));
    }
    if let Some(bad) = doc.bans.iter().find(|b| b.parse().is_none()) {
        return Err(format!(
            "invalid ban entry for {:?} ({:?})",
            bad.net, bad.reason
        ));
    }
    Ok(doc.bans)
}

/// `.corrupt-20211010T155536Z`: the time in RFC 3339's basic form (no `:`,
/// which some tools mistake for a host or drive separator in file names).
pub fn aside_suffix(now_unix: u64) -> String {
    let time: String = super::clock::rfc3339(now_unix)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!(".corrupt-{time}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str) -> Ban {
        Ban {
            net: net.into(),
            reason: "unknown_sni".into(),
            strikes: 1,
            banned_at: 1_700_000_000,
            expires_at: 1_800_000_000,
            kernel: true,
        }
    }

    #[test]
    fn round_trip_and_no_temp_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bans.json");
        let state = StateFile::new(&path).unwrap();
        assert!(state.load(0).is_empty());
        let bans = vec![ban("203.0.113.7/32"), ban("2001:db8:1:2::/64")];
        state.save(&bans).unwrap();
        assert_eq!(state.load(0), bans);
        state.save(&bans[..1]).unwrap();
        assert_eq!(state.load(0), bans[..1]);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bans.json")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let state = StateFile::new(&path).unwrap();
        state.save(&[ban("203.0.113.7/32")]).unwrap();
        let before = fs::read(&path).unwrap();
        // The temp file cannot be created: the save fails before touching bans.json.
        let tmp = dir.path().join("bans.json.tmp");
        fs::create_dir(&tmp).unwrap();
        assert!(state.save(&[ban("198.51.100.1/32")]).is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(state.load(0), vec![ban("203.0.113.7/32")]);
    }

    #[test]
    fn the_file_is_one_ban_per_line() {
        let text =
            String::from_utf8(render(&[ban("10.0.0.0/8"), ban("10.0.0.1/32")]).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(parse(text.as_bytes()).unwrap().len(), 2);
        assert_eq!(parse(&render(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        fs::write(&path, b"{\"version\":1,\"bans\":[{\"net\":\"203.0.113").unwrap();
        let state = StateFile::new(&path).unwrap();
        assert!(state.load(1_633_881_336).is_empty());
        assert!(!path.exists());
        let aside = dir.path().join("bans.json.corrupt-20211010T155536Z");
        assert!(fs::read(aside).unwrap().starts_with(b"{\"version\""));
    }

    #[test]
    fn invalid_entry_counts_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        fs::write(&path, render(&[ban("not-an-address")]).unwrap()).unwrap();
        assert!(StateFile::new(&path).unwrap().load(5).is_empty());
        assert!(
            dir.path()
                .join("bans.json.corrupt-19700101T000005Z")
                .exists()
        );
    }
}
