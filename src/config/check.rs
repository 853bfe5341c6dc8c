//! The value checks shared by every section: addresses, CIDRs, durations,
//! bounded integers, fixed words and SNI patterns. Each takes the key path for
//! its message and the spanned raw value; on a problem it records a
//! [`Diagnostic`] at the value and returns a default or `None`, so checking
//! goes on and every problem of the file is reported at once.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{Int, Source, Text, TextList};
use super::{Diagnostic, HostPattern};
use crate::hostname::HostName;

/// Longest duration accepted anywhere: 100 years. "Forever" bans fit, and
/// `Instant + duration` and the JSON ban timestamps stay far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);
/// Ranges up to this bound are spelled out whole in messages; beyond, only the
/// side that was crossed ("at least 1" reads better than "1 to 4294967295").
const SHOW_WHOLE_RANGE: i64 = 65_536;
/// The help appended to every bad address.
const ADDR_HELP: &str =
    "expected IP:PORT, IPv6 in brackets, like \"10.0.0.5:443\" or \"[::1]:443\"";

/// Collects the diagnostics of one config text.
pub(super) struct Checker<'c, 'a> {
    /// The text, to place spans.
    pub src: &'c Source<'a>,
    /// Every problem found so far.
    pub diags: &'c mut Vec<Diagnostic>,
}

impl Checker<'_, '_> {
    pub(super) fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(self.src.diag(span, message));
    }

    /// Every address of a list, each checked; a repeated one is an error at its second place.
    pub(super) fn addr_list(&mut self, path: &str, list: &TextList) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        for item in list.get_ref() {
            let Some(addr) = self.addr(path, item) else {
                continue;
            };
            if addrs.contains(&addr) {
                self.err(item.span(), format!("{path}: {addr} is listed twice"));
            } else {
                addrs.push(addr);
            }
        }
        addrs
    }

    pub(super) fn addr(&mut self, path: &str, raw: &Text) -> Option<SocketAddr> {
        let text = raw.get_ref().trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(addr);
        }
        let (host, port) = text.rsplit_once(':').unwrap_or((text, ""));
        let host_is_ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok();
        let why = if text.parse::<IpAddr>().is_ok() {
            format!("missing :PORT; {ADDR_HELP}")
        } else if host_is_ip && host.contains(':') && !host.starts_with('[') {
            format!("IPv6 needs brackets; {ADDR_HELP}")
        } else if host_is_ip {
            format!("bad port {port:?}, expected 0 to 65535; {ADDR_HELP}")
        } else if !port.is_empty() && HostName::parse(host.as_bytes()).is_some() {
            format!("host names are not resolved; {ADDR_HELP}")
        } else {
            ADDR_HELP.to_string()
        };
        self.err(
            raw.span(),
            format!("{path}: invalid address {:?} ({why})", raw.get_ref()),
        );
        None
    }

    /// An integer in `range` (default when absent); out of range -> error, default.
    pub(super) fn int(
        &mut self,
        path: &str,
        raw: Option<&Int>,
        default: i64,
        range: RangeInclusive<i64>,
        note: &str,
    ) -> i64 {
        let Some(raw) = raw else { return default };
        let value = *raw.get_ref();
        if range.contains(&value) {
            return value;
        }
        let (lo, hi) = (range.start(), range.end());
        let bounds = match value < *lo {
            _ if *hi <= SHOW_WHOLE_RANGE => format!("from {lo} to {hi}"),
            true => format!("at least {lo}"),
            false => format!("at most {hi}"),
        };
        let note = if note.is_empty() {
            String::new()
        } else {
            format!("; {note}")
        };
        self.err(
            raw.span(),
            format!("{path}: {value} is out of range (expected {bounds}{note})"),
        );
        default
    }

    /// A duration string; `zero_ok` = false refuses "0s" (a zero timeout would
    /// close every connection at once).
    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: Option<&Text>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        let text = raw.get_ref();
        let msg = match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                format!("{path}: must be longer than zero (got {text:?})")
            }
            Ok(d) if d > MAX_DURATION => {
                format!("{path}: {text:?} is longer than the maximum of 100 years")
            }
            Ok(d) => return d,
            Err(e) => format!(
                "{path}: invalid duration {text:?}: {e} (expected a number and a unit, like \"500ms\", \"5s\", \"10m\", \"1h\", \"365d\", \"1h30m\")"
            ),
        };
        self.err(raw.span(), msg);
        default
    }

    /// One of a fixed set of words (default when absent).
    pub(super) fn word<T: Copy>(
        &mut self,
        path: &str,
        raw: Option<&Text>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(raw) = raw else { return default };
        if let Some((_, value)) = choices.iter().find(|(w, _)| *w == raw.get_ref()) {
            return *value;
        }
        let words: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
        let msg = format!(
            "{path}: unknown value {:?} (expected {})",
            raw.get_ref(),
            or_list(&words)
        );
        self.err(raw.span(), msg);
        default
    }

    pub(super) fn cidr(&mut self, path: &str, raw: &Text) -> Option<IpNet> {
        let text = raw.get_ref().trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(net.trunc());
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Some(IpNet::from(addr));
        }
        let msg = format!(
            "{path}: invalid address or CIDR {:?} (expected ADDR/LEN or a bare address, like \"192.0.2.10\", \"10.0.0.0/8\" or \"2001:db8::/48\")",
            raw.get_ref()
        );
        self.err(raw.span(), msg);
        None
    }

    /// A route's `sni` entry: `name` or `*.suffix`; IP addresses never appear as SNI.
    pub(super) fn pattern(&mut self, path: &str, raw: &Text) -> Option<HostPattern> {
        let text = raw.get_ref();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, text.as_str()),
        };
        let why = if name.contains('*') {
            "a wildcard is only allowed as the whole first label, like \"*.example.org\""
        } else if name.trim_end_matches('.').parse::<IpAddr>().is_ok() {
            "an IP address is never sent as SNI, so this would never match"
        } else if let Some(host) = HostName::parse(name.as_bytes()) {
            return Some(if wildcard {
                HostPattern::Wildcard(host)
            } else {
                HostPattern::Exact(host)
            });
        } else {
            "expected a host name (letters, digits, '-', '_' in dot-separated labels), or \"*.\" and one"
        };
        self.err(raw.span(), format!("{path}: invalid name {text:?} ({why})"));
        None
    }
}

/// `"a", "b" or "c"`.
pub(super) fn or_list(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one check on `value` (as if written at the start of a file).
    fn run<T>(
        value: &str,
        check: impl FnOnce(&mut Checker<'_, '_>, &Text) -> T,
    ) -> (T, Vec<Diagnostic>) {
        let src = Source::new(value);
        let mut diags = Vec::new();
        let text = Text::new(0..value.len(), value.to_string());
        let out = check(
            &mut Checker {
                src: &src,
                diags: &mut diags,
            },
            &text,
        );
        (out, diags)
    }

    #[test]
    fn patterns() {
        let ok = |s: &str| run(s, |c, t| c.pattern("sni", t)).0.map(|p| p.to_string());
        assert_eq!(ok("*.Example.ORG."), Some("*.example.org".into()));
        assert_eq!(ok("x.example.org"), Some("x.example.org".into()));
        assert_eq!(ok("*.org"), Some("*.org".into()));
        for bad in [
            "*", "*.", "a.*.b", "*foo.b", "**.b", "*.*.b", "a b", "", "10.0.0.1", "[::1]", "a:443",
        ] {
            let (p, d) = run(bad, |c, t| c.pattern("sni", t));
            assert!(p.is_none() && d.len() == 1, "{bad:?}");
        }
    }

    #[test]
    fn address_messages_name_the_mistake() {
        let why = |s: &str| run(s, |c, t| c.addr("a", t)).1.pop().map(|d| d.message);
        assert_eq!(why("[::1]:443"), None);
        assert_eq!(why(" 10.0.0.5:443 "), None);
        let msg = |s: &str| why(s).unwrap_or_default();
        assert!(msg("10.0.0.5").contains("missing :PORT"));
        assert!(msg("::1").contains("missing :PORT"));
        assert!(
            msg("2001:db8::1:443").contains("missing :PORT"),
            "valid IPv6, ambiguous"
        );
        assert!(msg("fe80::1%eth0:443").starts_with("a: invalid address"));
        assert!(msg("10.0.0.5:99999").contains("bad port \"99999\""));
        assert!(msg("[::1]:http").contains("bad port \"http\""));
        assert!(msg("example.org:443").contains("host names are not resolved"));
        assert!(msg("").starts_with("a: invalid address \"\" (expected IP:PORT"));
    }

    #[test]
    fn cidrs_are_normalised() {
        let net = |s: &str| run(s, |c, t| c.cidr("ignore", t)).0.map(|n| n.to_string());
        assert_eq!(net("192.0.2.10"), Some("192.0.2.10/32".into()));
        assert_eq!(net("2001:db8::1"), Some("2001:db8::1/128".into()));
        assert_eq!(net("10.9.8.7/8"), Some("10.0.0.0/8".into()));
        assert_eq!(net("2001:db8:1:2::/48"), Some("2001:db8:1::/48".into()));
        assert_eq!(net("10.0.0.0/33"), None);
        assert_eq!(net("example.org"), None);
    }

    #[test]
    fn durations() {
        let dur =
            |s: &str, zero_ok| run(s, |c, t| c.duration("d", Some(t), Duration::MAX, zero_ok));
        assert_eq!(dur("1h30m", false).0, Duration::from_secs(5400));
        assert_eq!(dur("365d", false).0, Duration::from_secs(365 * 86_400));
        assert_eq!(dur("0s", true).0, Duration::ZERO);
        for bad in ["0s", "5", "", "-1s", "1000y", "soon"] {
            let (d, diags) = dur(bad, false);
            assert!(d == Duration::MAX && diags.len() == 1, "{bad:?}");
        }
    }

    #[test]
    fn lists_read_naturally() {
        let words = |w: &[&str]| or_list(&w.iter().map(ToString::to_string).collect::<Vec<_>>());
        assert_eq!(words(&["a"]), "a");
        assert_eq!(words(&["a", "b"]), "a or b");
        assert_eq!(words(&["a", "b", "c"]), "a, b or c");
    }
}
