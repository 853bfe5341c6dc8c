//! The daemon's own log (not the access log): tracing events on stderr.
//!
//! Plain, as a terminal or a log file wants it: `TIME LEVEL target: message`.
//! Journal, when systemd connects stderr to the journal (it says so in
//! `JOURNAL_STREAM`, the `DEVICE:INODE` of that stream, and stderr still is
//! it): no timestamp, since journald stamps each entry, and every line starts
//! with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//! debug and trace), which journald strips and stores, so `journalctl -p
//! warning -u sniroute` finds sniroute's problems. A multi-line message gets
//! the prefix on every line, since journald makes an entry of each.
//!
//! The formatting is tracing-subscriber's own (`without_time`); only the
//! prefix is added here, around it. The access log, when it goes to stdout
//! and stdout is the journal too, gets `<6>` before each line (and keeps its
//! own format, timestamp included: it is a contract for fail2ban).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::registry::LookupSpan;

/// Variable that sets the log filter (`info`, `debug`, `sniroute=debug`, …).
pub const FILTER_VAR: &str = "SNIROUTE_LOG";

/// How stderr lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// With a timestamp (and colours on a terminal).
    Plain,
    /// journald's stream protocol: `<N>` first, no timestamp.
    Journal,
}

impl Style {
    /// Journal if `JOURNAL_STREAM` names the file stderr is open on now.
    /// (A child started by a service inherits the variable, not necessarily
    /// the stream: hence the comparison.)
    pub fn detect() -> Style {
        if is_journal_stream(&std::io::stderr()) {
            Style::Journal
        } else {
            Style::Plain
        }
    }

    /// Writes a message that is not a tracing event (start-up failures in
    /// `main`) to stderr, each line with the error priority in journal style.
    pub fn eprint_error(self, message: &str) {
        match self {
            Style::Plain => eprintln!("{message}"),
            Style::Journal => eprint!("{}", prefix_lines(priority(&Level::ERROR), message)),
        }
    }
}

/// Whether `fd` is the stream `JOURNAL_STREAM` names: systemd's journal.
/// (The access log asks this of stdout, the daemon's log of stderr.)
pub fn is_journal_stream(fd: &impl AsFd) -> bool {
    let Some(wanted) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    rustix::fs::fstat(fd).is_ok_and(|stat| (stat.st_dev, stat.st_ino) == wanted)
}

/// `DEVICE:INODE`, both decimal, as systemd writes `JOURNAL_STREAM`.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority of a tracing level (sd-daemon(3)'s `SD_ERR` …
/// `SD_DEBUG`); trace has no level of its own below debug.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `text` with `<priority>` before each line, each line ending in `\n`.
fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.lines() {
        let _ = writeln!(out, "<{priority}>{line}");
    }
    out
}

/// Installs the global subscriber on stderr in `style`, filtered by
/// `SNIROUTE_LOG` (default `info`).
pub fn init(style: Style) {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match style {
        Style::Plain => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Style::Journal => builder
            .with_ansi(false)
            .event_format(JournalFormat(format().without_time().with_ansi(false)))
            .init(),
    }
}

/// Wraps a tracing-subscriber event format: the same text, each line
/// prefixed with the event's syslog priority.
struct JournalFormat<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        writer.write_str(&prefix_lines(priority(event.metadata().level()), &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234567"), Some((8, 1_234_567)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(":1"), None);
    }

    #[test]
    fn every_line_gets_the_prefix() {
        assert_eq!(
            prefix_lines(3, "config reload refused:\nsniroute.toml:1:1: bad\n"),
            "<3>config reload refused:\n<3>sniroute.toml:1:1: bad\n"
        );
        assert_eq!(prefix_lines(6, "one"), "<6>one\n");
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_format_prefixes_each_line_and_drops_the_time() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JournalFormat(format().without_time().with_ansi(false)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("config reload refused:\nsniroute.toml:1:1: bad");
            tracing::warn!(route = "app.example", "no backend reachable");
            tracing::info!("listening");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(lines[0].ends_with("config reload refused:"), "{text}");
        assert_eq!(lines[1], "<3>sniroute.toml:1:1: bad");
        assert!(lines[2].starts_with("<4> WARN "), "{text}");
        assert!(lines[2].contains("route=\"app.example\""), "{text}");
        assert!(lines[3].starts_with("<6> INFO "), "{text}");
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let got = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .map(|l| priority(&l));
        assert_eq!(got, [3, 4, 6, 7, 7]);
    }
}
