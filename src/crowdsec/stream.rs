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

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::guard::remote::Decision;

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

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default, borrow)]
    deleted: Option<Vec<RawDecision<'a>>>,
    #[serde(default, borrow)]
    new: Option<Vec<RawDecision<'a>>>,
}

/// The fields sniroute reads; the others (`id`, `origin`, `scenario`,
/// `uuid`, `until`, `simulated`...) are ignored.
#[derive(Deserialize)]
struct RawDecision<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    scope: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    duration: Option<Cow<'a, str>>,
}

/// Parses a stream body; `now_millis` (wall clock) turns durations into ends.
pub fn parse(body: &[u8], now_millis: u64) -> Result<Stream, serde_json::Error> {
    let body: Body<'_> = serde_json::from_slice(body)?;
    let mut out = Stream::default();
    for d in body.deleted.into_iter().flatten() {
        match d.ban_net() {
            Some(net) => out.deleted.push(net),
            None => out.skipped += 1,
        }
    }
    for d in body.new.into_iter().flatten() {
        let end = d.duration.as_deref().and_then(go_duration).map(|left| {
            // Whole milliseconds, rounded up (a ban never ends early).
            let ms = left.div_euclid(1_000_000) + i128::from(left.rem_euclid(1_000_000) != 0);
            let left = i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX });
            now_millis.saturating_add_signed(left).div_ceil(1000)
        });
        match (d.ban_net(), end) {
            (Some(net), Some(expires_at)) => out.new.push(Decision { net, expires_at }),
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

impl RawDecision<'_> {
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
}
