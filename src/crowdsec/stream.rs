//! PURE: a `GET /v1/decisions/stream` body in, the ban decisions out.
//!
//! What the LAPI sends, as the official bouncers read it:
//! `{"deleted": [...] | null, "new": [...] | null}` (CrowdSec 1.4 sends
//! `null` for an empty list), each decision
//! `{"id", "origin", "scenario", "scope", "type", "value", "duration", ...}`.
//! Only `type = "ban"` counts (captcha and others are for HTTP bouncers);
//! only the scopes `Ip` and `Range` (case-insensitive, IPv4 and IPv6);
//! other scopes (`Country`, `AS`, ...) and unparsable values are skipped
//! and counted. `duration` is a Go duration string (`"167h59m20.89s"`,
//! `"-11.5ms"` for one that just ended) from now.
//!
//! A startup body with a community blocklist is ~15 MB; [`read`] takes it
//! as it arrives and hands over one decision at a time, so memory does not
//! grow with the body (the caller bounds what it keeps).

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::guard::remote::Decision;

/// Most bytes read for one decision (or between two): a real one is ~150
/// bytes; a string longer than this is an attack on memory, not a decision.
/// Checked on what the reader handed out, so the limit holds to within the
/// read-ahead below.
pub const MAX_DECISION_BYTES: u64 = 64 << 10;
/// Read-ahead between the body and the JSON parser (std's `BufReader`
/// default: a few system pages, small beside a chunk of the body).
const READ_AHEAD: usize = 8 << 10;

/// A parsed stream body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Nets whose ban ended: apply before `new`.
    pub deleted: Vec<IpNet>,
    /// Bans in force, with their end.
    pub new: Vec<Decision>,
    /// Decisions left out: other types or scopes, bad values or durations.
    pub skipped: usize,
}

/// One ban decision of a stream body, handed over as it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// From the `deleted` list: the net's ban ended.
    Deleted(IpNet),
    /// From the `new` list: a ban in force and its end.
    New(Decision),
}

/// The fields sniroute reads; the others (`id`, `origin`, `scenario`,
/// `uuid`, `until`, `simulated`...) are ignored.
#[derive(Deserialize)]
struct RawDecision {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

/// Parses a whole stream body held in memory (tests, tools); the daemon
/// reads the body as it arrives with [`read`].
pub fn parse(body: &[u8], now_millis: u64) -> Result<Stream, serde_json::Error> {
    let (mut deleted, mut new) = (Vec::new(), Vec::new());
    let skipped = read(body, now_millis, |item| {
        match item {
            Item::Deleted(net) => deleted.push(net),
            Item::New(d) => new.push(d),
        }
        Ok(())
    })?;
    Ok(Stream {
        deleted,
        new,
        skipped,
    })
}

/// Reads a stream body from `body` one decision at a time, handing each
/// ban decision to `sink` in the order of the body (the caller applies
/// `deleted` before `new`); `now_millis` (wall clock) turns durations into
/// ends. Memory does not grow with the body: one decision is held at a
/// time, and at most [`MAX_DECISION_BYTES`] are read for one. `sink`
/// returns an error to stop (it bounds how many it keeps). Returns how many
/// decisions were skipped (other types or scopes, bad values or durations).
pub fn read<F>(body: impl Read, now_millis: u64, mut sink: F) -> Result<usize, serde_json::Error>
where
    F: FnMut(Item) -> Result<(), String>,
{
    let taken = Cell::new(0);
    let mark = Cell::new(0);
    let reader = Budget {
        inner: body,
        taken: &taken,
        mark: &mark,
    };
    let mut de =
        serde_json::Deserializer::from_reader(BufReader::with_capacity(READ_AHEAD, reader));
    let mut lists = Lists {
        sink: &mut sink,
        now_millis,
        skipped: 0,
        taken: &taken,
        mark: &mark,
    };
    (&mut de).deserialize_map(BodyVisitor(&mut lists))?;
    de.end()?;
    Ok(lists.skipped)
}

/// The body's reader, counting what it hands out: more than
/// [`MAX_DECISION_BYTES`] since the last decision read is an error.
struct Budget<'a, R> {
    inner: R,
    taken: &'a Cell<u64>,
    mark: &'a Cell<u64>,
}

impl<R: Read> Read for Budget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken.get() - self.mark.get() > MAX_DECISION_BYTES {
            return Err(io::Error::other(format!(
                "a decision longer than {MAX_DECISION_BYTES} bytes"
            )));
        }
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n as u64);
        Ok(n)
    }
}

/// What the visitors share while reading one body.
struct Lists<'a, F> {
    sink: &'a mut F,
    now_millis: u64,
    skipped: usize,
    taken: &'a Cell<u64>,
    mark: &'a Cell<u64>,
}

/// The top-level keys sniroute reads.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Deleted,
    New,
    #[serde(other)]
    Other,
}

/// `{"deleted": LIST, "new": LIST, ...}`, in any order.
struct BodyVisitor<'l, 'a, F>(&'l mut Lists<'a, F>);

impl<'de, F: FnMut(Item) -> Result<(), String>> Visitor<'de> for BodyVisitor<'_, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decision stream object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Deleted => map.next_value_seed(List {
                    lists: &mut *self.0,
                    deleted: true,
                })?,
                Key::New => map.next_value_seed(List {
                    lists: &mut *self.0,
                    deleted: false,
                })?,
                Key::Other => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        Ok(())
    }
}

/// One list of decisions, or `null`.
struct List<'l, 'a, F> {
    lists: &'l mut Lists<'a, F>,
    deleted: bool,
}

impl<'de, F: FnMut(Item) -> Result<(), String>> DeserializeSeed<'de> for List<'_, '_, F> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, F: FnMut(Item) -> Result<(), String>> Visitor<'de> for List<'_, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of decisions or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let lists = self.lists;
        while let Some(raw) = seq.next_element::<RawDecision>()? {
            lists.mark.set(lists.taken.get());
            let item = if self.deleted {
                raw.ban_net().map(Item::Deleted)
            } else {
                raw.ban(lists.now_millis).map(Item::New)
            };
            match item {
                Some(item) => (lists.sink)(item).map_err(de::Error::custom)?,
                None => lists.skipped += 1,
            }
        }
        Ok(())
    }
}

impl RawDecision {
    /// The ban in force this decision makes, if it is one with a valid end.
    fn ban(&self, now_millis: u64) -> Option<Decision> {
        let left = go_duration(self.duration.as_deref()?)?;
        // Whole milliseconds, rounded up (a ban never ends early).
        let ms = left.div_euclid(1_000_000) + i128::from(left.rem_euclid(1_000_000) != 0);
        let left = i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX });
        let expires_at = now_millis.saturating_add_signed(left).div_ceil(1000);
        Some(Decision {
            net: self.ban_net()?,
            expires_at,
        })
    }

    /// The banned network, if this is a ban on an `Ip` or a `Range`.
    fn ban_net(&self) -> Option<IpNet> {
        if !self.kind.as_deref()?.eq_ignore_ascii_case("ban") {
            return None;
        }
        let value = self.value.as_deref()?.trim();
        let scope = self.scope.as_deref()?;
        if scope.eq_ignore_ascii_case("ip") {
            // An address; some sources write it with a full-length prefix.
            return match value.parse::<IpAddr>() {
                Ok(ip) => Some(IpNet::from(ip)),
                Err(_) => value
                    .parse::<IpNet>()
                    .ok()
                    .filter(|n| n.prefix_len() == n.max_prefix_len()),
            };
        }
        if scope.eq_ignore_ascii_case("range") {
            return value.parse::<IpNet>().ok().map(|n| n.trunc());
        }
        None
    }
}

/// A Go `time.Duration` string in signed nanoseconds: an optional sign,
/// then one or more decimal numbers (fractions allowed), each with a unit
/// `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m` or `h`; `"0"` alone is zero.
/// `None` when it is not one (or overflows).
pub fn go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, text.get(1..)?),
        Some(b'+') => (false, text.get(1..)?),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(scaled(number, scale)?)?;
        rest = after;
    }
    Some(if negative { -total } else { total })
}

/// `number` (digits, at most one '.') times `scale`, truncated to whole nanoseconds.
fn scaled(number: &str, scale: i128) -> Option<i128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    let mut unit = scale;
    for digit in fraction.bytes() {
        unit /= 10;
        if unit == 0 {
            break;
        }
        value = value.checked_add(i128::from(digit - b'0') * unit)?;
    }
    Some(value)
}

/// `d` as a Go duration the LAPI parses, in hours at most (Go has no day
/// unit): `8760h0m0s`, `59m59s`, `0s`. Whole seconds, rounded up.
pub fn go_duration_string(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn go_durations_as_the_lapi_writes_them() {
        let h = 3_600_000_000_000i128;
        assert_eq!(
            go_duration("167h59m20.89s"),
            Some(167 * h + 3_560_890_000_000)
        );
        assert_eq!(go_duration("4h"), Some(4 * h));
        assert_eq!(go_duration("1.5h"), Some(h * 3 / 2));
        assert_eq!(go_duration("-11.590193ms"), Some(-11_590_193));
        assert_eq!(go_duration("59m59.38372564s"), Some(3_599_383_725_640));
        assert_eq!(go_duration("300ms"), Some(300_000_000));
        assert_eq!(go_duration("2us"), Some(2_000));
        assert_eq!(go_duration("2µs"), Some(2_000));
        assert_eq!(go_duration("7ns"), Some(7));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("0s"), Some(0));
        assert_eq!(go_duration(".5s"), Some(500_000_000));
        for bad in ["", "-", "5", "5d", "1h-5m", "1..5s", "s", "1.2.3s", "h1"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
        assert_eq!(go_duration("99999999999999999999999999999999999999h"), None);
    }

    #[test]
    fn durations_go_out_in_hours() {
        assert_eq!(
            go_duration_string(Duration::from_secs(365 * 86_400)),
            "8760h0m0s"
        );
        assert_eq!(go_duration_string(Duration::from_secs(3599)), "59m59s");
        assert_eq!(go_duration_string(Duration::from_millis(1500)), "2s");
        assert_eq!(go_duration_string(Duration::ZERO), "0s");
        for secs in [1, 59, 61, 3600, 86_400 * 400 + 7] {
            let text = go_duration_string(Duration::from_secs(secs));
            assert_eq!(go_duration(&text), Some(i128::from(secs) * 1_000_000_000));
        }
    }

    #[test]
    fn a_startup_body_of_crowdsec_1_4() {
        let body = br#"{"deleted":null,"new":[
            {"duration":"29m59.572530571s","id":2,"origin":"cscli","scenario":"manual 'ban' from 'cli'","scope":"Range","type":"ban","value":"10.0.0.0/8"},
            {"duration":"1h59m59.5s","id":3,"origin":"cscli","scenario":"other","scope":"Ip","type":"ban","value":"1.2.3.4"},
            {"duration":"1h","id":4,"origin":"CAPI","scenario":"x","scope":"Range","type":"ban","value":"2001:db8:1::/48"},
            {"duration":"1h","id":5,"origin":"cscli","scenario":"x","scope":"Ip","type":"captcha","value":"1.2.3.5"},
            {"duration":"1h","id":6,"origin":"cscli","scenario":"x","scope":"Country","type":"ban","value":"FR"},
            {"duration":"1h","id":7,"origin":"cscli","scenario":"x","scope":"ip","type":"Ban","value":"2001:db8::7"},
            {"duration":"1h","id":8,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"not an ip"},
            {"duration":"forever","id":9,"origin":"cscli","scenario":"x","scope":"Ip","type":"ban","value":"1.2.3.9"}
        ]}"#;
        let s = parse(body, NOW).unwrap();
        assert!(s.deleted.is_empty());
        let got: Vec<(IpNet, u64)> = s.new.iter().map(|d| (d.net, d.expires_at)).collect();
        let at = |secs: u64| NOW / 1000 + secs;
        assert_eq!(
            got,
            [
                (net("10.0.0.0/8"), at(1800)),
                (net("1.2.3.4/32"), at(7200)),
                (net("2001:db8:1::/48"), at(3600)),
                (net("2001:db8::7/128"), at(3600)),
            ]
        );
        assert_eq!(s.skipped, 4);
    }

    #[test]
    fn a_delta_with_deletions_and_empty_or_missing_lists() {
        let body = br#"{"deleted":[{"duration":"-11.590193ms","id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"1.2.3.4"}],"new":null}"#;
        let s = parse(body, NOW).unwrap();
        assert_eq!(s.deleted, [net("1.2.3.4/32")]);
        assert!(s.new.is_empty());
        assert_eq!(
            parse(br#"{"deleted":null,"new":null}"#, NOW).unwrap(),
            Stream::default()
        );
        assert_eq!(
            parse(br#"{"deleted":[],"new":[]}"#, NOW).unwrap(),
            Stream::default()
        );
        assert_eq!(parse(b"{}", NOW).unwrap(), Stream::default());
        assert!(parse(b"<html>", NOW).is_err());
        assert!(parse(br#"{"new":"x"}"#, NOW).is_err());
    }

    #[test]
    fn escaped_strings_are_read_too() {
        let body =
            br#"{"new":[{"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.\u0034"}]}"#;
        assert_eq!(parse(body, NOW).unwrap().new[0].net, net("1.2.3.4/32"));
    }

    /// A reader handing out `step` bytes at a time, as a slow network would.
    struct Trickle<'a> {
        body: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.body.len());
            let (piece, rest) = self.body.split_at(n);
            buf[..n].copy_from_slice(piece);
            self.body = rest;
            Ok(n)
        }
    }

    fn items(body: &[u8], step: usize) -> Result<(Vec<Item>, usize), serde_json::Error> {
        let mut got = Vec::new();
        let skipped = read(Trickle { body, step }, NOW, |item| {
            got.push(item);
            Ok(())
        })?;
        Ok((got, skipped))
    }

    #[test]
    fn a_body_read_in_pieces_gives_its_decisions_in_order() {
        let body = br#"{"new":[{"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.4","id":1,"extra":{"a":[1,2,{"b":null}]}},
            {"duration":"1h","scope":"Ip","type":"captcha","value":"1.2.3.5"}],
            "other":{"x":[1,"2"]},
            "deleted":[{"duration":"-1s","scope":"Range","type":"ban","value":"10.1.2.3/8"}]}"#;
        let want = vec![
            Item::New(Decision {
                net: net("1.2.3.4/32"),
                expires_at: NOW / 1000 + 3600,
            }),
            Item::Deleted(net("10.0.0.0/8")),
        ];
        for step in [1, 2, 7, 64, 100_000] {
            assert_eq!(items(body, step).unwrap(), (want.clone(), 1), "step {step}");
        }
        // Cut anywhere, it is an error, never a partial success.
        for cut in 1..body.len() - 1 {
            assert!(items(&body[..cut], 3).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_decision_too_long_or_a_full_sink_stops_the_read() {
        let long = "9".repeat(MAX_DECISION_BYTES as usize + READ_AHEAD + 10);
        let body =
            format!(r#"{{"new":[{{"scope":"Ip","type":"ban","value":"1.2.3.4","x":"{long}"}}]}}"#);
        let e = items(body.as_bytes(), 4096).unwrap_err().to_string();
        assert!(e.contains("a decision longer than 65536 bytes"), "{e}");
        // A long body of short decisions is fine.
        let one = r#"{"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.4"}"#;
        let many = vec![one; 2000].join(",");
        let body = format!(r#"{{"deleted":null,"new":[{many}]}}"#);
        assert_eq!(items(body.as_bytes(), 4096).unwrap().0.len(), 2000);
        // The sink bounds what it keeps.
        let mut kept = 0;
        let e = read(body.as_bytes(), NOW, |_| {
            kept += 1;
            if kept > 10 {
                Err("too many".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("too many"), "{e}");
        assert_eq!(kept, 11);
    }

    #[test]
    fn a_failing_reader_fails_the_read() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection reset"))
            }
        }
        let e = read(Broken, NOW, |_| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "connection reset");
    }
}
