//! The access log: one line per connection, written when it ends, in text or
//! JSON, to stdout, a file, or nowhere. Lines are formatted by the connection
//! and handed to one writer thread, so no connection waits on the disk.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessLog as Target, LogConfig, LogFormat};
use crate::outcome::Outcome;

/// Lines queued for the writer at most. A flood that outruns the disk loses
/// lines (counted) rather than stalling connections or growing memory.
const QUEUE: usize = 65_536;

/// What the log line says about one connection.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub sni: Option<String>,
    pub route: Option<String>,
    pub backend: Option<SocketAddr>,
    pub up: u64,
    pub down: u64,
    /// The first ALPN id the hello offered (as sent: client-chosen bytes).
    pub alpn: Option<String>,
}

enum Message {
    Line(String),
    /// Wakes the writer to look at the reopen flag (after log rotation:
    /// SIGUSR1 or a reload).
    Reopen,
}

/// Cheap to clone; every clone feeds the same writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
    /// Set by [`AccessLog::reopen`], taken by the writer: a reopen asked for
    /// while the queue is full is not lost with the wake-up message.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens the target (the file is created, appended to) and starts the writer.
    pub fn open(config: &LogConfig) -> io::Result<AccessLog> {
        let sink = match &config.access {
            Target::Off => None,
            Target::Stdout => Some(Sink::Stdout {
                journal: crate::logging::is_journal_stream(&io::stdout()),
            }),
            Target::File(path) => Some(Sink::File(path.clone(), open_append(path)?)),
        };
        let reopen = Arc::new(AtomicBool::new(false));
        let tx = match sink {
            None => None,
            Some(sink) => {
                let (tx, rx) = sync_channel(QUEUE);
                let flag = Arc::clone(&reopen);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || write_lines(rx, sink, &flag))?;
                Some(tx)
            }
        };
        Ok(AccessLog {
            tx,
            format: config.format,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen,
        })
    }

    /// Logs one connection.
    pub fn write(&self, peer: SocketAddr, outcome: Outcome, entry: &Entry, elapsed: Duration) {
        let Some(tx) = &self.tx else { return };
        let line = format_line(
            self.format,
            SystemTime::now(),
            peer,
            outcome,
            entry,
            elapsed,
        );
        if tx.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the writer to reopen its file by name (log rotation): from the
    /// next line it writes on, lines go to the file now at that path
    /// (created if missing), none to the renamed one.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            self.reopen.store(true, Ordering::Release);
            // A full queue already wakes the writer, which sees the flag.
            let _ = tx.try_send(Message::Reopen);
        }
    }

    /// Lines lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Sink {
    /// `journal`: stdout is systemd's journal stream, so each line starts
    /// with journald's `<6>` (info) prefix, which the journal strips.
    Stdout {
        journal: bool,
    },
    File(PathBuf, File),
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes lines as they come and flushes whenever the queue runs dry, so a
/// line is visible at once when traffic is light and batched when it is heavy.
fn write_lines(rx: Receiver<Message>, sink: Sink, reopen: &AtomicBool) {
    let prefix: &[u8] = if matches!(sink, Sink::Stdout { journal: true }) {
        b"<6>"
    } else {
        b""
    };
    let (mut out, path): (BufWriter<Box<dyn Write + Send>>, Option<PathBuf>) = match sink {
        Sink::Stdout { .. } => (BufWriter::new(Box::new(io::stdout())), None),
        Sink::File(path, file) => (BufWriter::new(Box::new(file)), Some(path)),
    };
    loop {
        let message = match rx.try_recv() {
            Ok(message) => message,
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                match rx.recv() {
                    Ok(message) => message,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if reopen.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            if let Some(path) = &path {
                match open_append(path) {
                    Ok(file) => {
                        out = BufWriter::new(Box::new(file));
                        tracing::info!("access log reopened: {}", path.display());
                    }
                    Err(e) => {
                        tracing::error!("cannot reopen access log {}: {e}", path.display())
                    }
                }
            }
        }
        if let Message::Line(line) = message {
            let _ = out.write_all(prefix);
            let _ = out.write_all(line.as_bytes());
        }
    }
    let _ = out.flush();
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: String,
    outcome: &'a str,
    sni: Option<&'a str>,
    route: Option<&'a str>,
    backend: Option<String>,
    up: u64,
    down: u64,
    ms: u128,
    alpn: Option<&'a str>,
}

/// One line, newline included. The client address is the second text field
/// so the fail2ban filter `^\S+ <HOST>:\d+ outcome=...` matches; fields
/// added later (`alpn=`) go at the end so existing parsers keep working.
pub fn format_line(
    format: LogFormat,
    now: SystemTime,
    peer: SocketAddr,
    outcome: Outcome,
    entry: &Entry,
    elapsed: Duration,
) -> String {
    let time = humantime::format_rfc3339_millis(now).to_string();
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let ms = elapsed.as_millis();
    match format {
        LogFormat::Text => {
            let mut line = String::with_capacity(160);
            let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
            let backend = entry
                .backend
                .map_or_else(|| "-".to_owned(), |b| b.to_string());
            let _ = writeln!(
                line,
                "{time} {peer} outcome={outcome} sni={} route={} backend={backend} up={} down={} ms={ms} alpn={}",
                dash(entry.sni.as_deref()),
                dash(entry.route.as_deref()),
                entry.up,
                entry.down,
                entry.alpn.as_deref().map_or_else(|| "-".to_owned(), escape),
            );
            line
        }
        LogFormat::Json => {
            let json = JsonLine {
                time: &time,
                client: peer.to_string(),
                outcome: outcome.as_str(),
                sni: entry.sni.as_deref(),
                route: entry.route.as_deref(),
                backend: entry.backend.map(|b| b.to_string()),
                up: entry.up,
                down: entry.down,
                ms,
                alpn: entry.alpn.as_deref(),
            };
            let mut line = serde_json::to_string(&json).unwrap_or_default();
            line.push('\n');
            line
        }
    }
}

/// A client-chosen word made safe for a space-separated line: bytes outside
/// printable ASCII, spaces and backslashes become `\xNN`, and `-` alone
/// (which reads as "none") becomes `\x2d`.
fn escape(word: &str) -> String {
    if word == "-" {
        return "\\x2d".to_owned();
    }
    let mut out = String::with_capacity(word.len());
    for &b in word.as_bytes() {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_matches_the_contract() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_633_881_336_123);
        let entry = Entry {
            sni: Some("dumb.example.org".into()),
            ..Entry::default()
        };
        let line = format_line(
            LogFormat::Text,
            now,
            "203.0.113.7:51234".parse().unwrap(),
            Outcome::UnknownSni,
            &entry,
            Duration::from_millis(3),
        );
        assert_eq!(
            line,
            "2021-10-10T15:55:36.123Z 203.0.113.7:51234 outcome=unknown_sni sni=dumb.example.org route=- backend=- up=0 down=0 ms=3 alpn=-\n"
        );
    }

    #[test]
    fn alpn_is_last_and_escaped() {
        let entry = Entry {
            alpn: Some("h2 x=\\\n\u{e9}".into()),
            ..Entry::default()
        };
        let line = |entry: &Entry| {
            format_line(
                LogFormat::Text,
                SystemTime::UNIX_EPOCH,
                "192.0.2.1:1".parse().unwrap(),
                Outcome::Denied,
                entry,
                Duration::ZERO,
            )
        };
        assert!(
            line(&entry).ends_with(" ms=0 alpn=h2\\x20x=\\x5c\\x0a\\xc3\\xa9\n"),
            "{}",
            line(&entry)
        );
        let entry = Entry {
            alpn: Some("acme-tls/1".into()),
            ..Entry::default()
        };
        assert!(line(&entry).ends_with(
            "outcome=denied sni=- route=- backend=- up=0 down=0 ms=0 alpn=acme-tls/1\n"
        ));
    }

    #[test]
    fn json_line_has_the_same_fields() {
        let entry = Entry {
            sni: Some("myapp.example.org".into()),
            route: Some("myapp.example.org".into()),
            backend: Some("10.0.0.5:443".parse().unwrap()),
            up: 5230,
            down: 88213,
            alpn: Some("h2".into()),
        };
        let line = format_line(
            LogFormat::Json,
            SystemTime::UNIX_EPOCH,
            "[::ffff:198.51.100.4]:40022".parse().unwrap(),
            Outcome::Routed,
            &entry,
            Duration::from_millis(61234),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], "198.51.100.4:40022");
        assert_eq!(v["outcome"], "routed");
        assert_eq!(v["backend"], "10.0.0.5:443");
        assert_eq!(v["up"], 5230);
        assert_eq!(v["ms"], 61234);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["alpn"], "h2");
    }
}
