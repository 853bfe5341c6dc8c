//! The file as written: TOML text -> private serde structs, with every
//! structural problem (syntax, unknown keys, wrong value types) located.
//!
//! The document is first parsed into toml's spanned tree, so every unknown key
//! of every table can be reported (serde's `deny_unknown_fields` alone stops at
//! the first). Each section is then deserialized on its own, so a type error in
//! `[limits]` does not hide one in `[ban]`. Values that need checking later are
//! kept as [`Spanned`] so `build` can point at them.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Diagnostic;
use super::keys::{fields_of, unknown_key};

/// A string value with its place in the file.
pub(super) type Text = Spanned<String>;
/// An integer value with its place; kept signed so `-1` gets our message, not serde's.
pub(super) type Int = Spanned<i64>;
/// An array of strings, each with its place, and the array's own place.
pub(super) type TextList = Spanned<Vec<Text>>;

/// Top-level scalar keys (the sections are listed in [`SECTIONS`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTop {
    /// `listen`: required, one or more `IP:PORT`.
    pub listen: Option<TextList>,
    /// `workers`: default 0 (one per CPU core).
    pub workers: Option<Int>,
    /// `splice`: default true.
    pub splice: Option<bool>,
    /// `defer_accept`: default true.
    pub defer_accept: Option<bool>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Default "5s".
    pub client_hello_timeout: Option<Text>,
    /// Default 16384.
    pub max_client_hello: Option<Int>,
    /// Default "3s".
    pub connect_timeout: Option<Text>,
    /// Default "15m".
    pub idle_timeout: Option<Text>,
    /// Default 20000.
    pub max_connections: Option<Int>,
    /// Default "30s".
    pub shutdown_grace: Option<Text>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// Default "1.2".
    pub min_version: Option<Text>,
}

/// One `[[route]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Required, non-empty.
    pub sni: Option<TextList>,
    /// Exactly one of `backend` and `backends`.
    pub backend: Option<Text>,
    /// Exactly one of `backend` and `backends`.
    pub backends: Option<TextList>,
    /// Default "none".
    pub proxy_protocol: Option<Text>,
    /// Default empty: no plain HTTP for this route.
    pub http_backends: Option<TextList>,
    /// Default absent (every source); addresses or CIDRs.
    pub allow: Option<TextList>,
    /// Default empty (the route for hellos whatever their ALPN).
    pub alpn: Option<TextList>,
    /// Default "first".
    pub balance: Option<Text>,
    /// `[route.health_check]`; default absent (no active checks). Parsed
    /// on its own (see `parse_routes`); listed here so the key is known.
    #[serde(default)]
    pub health_check: Option<Spanned<RawHealthCheck>>,
}

/// `[route.health_check]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    /// Default "5s".
    pub interval: Option<Text>,
    /// Default "1s".
    pub timeout: Option<Text>,
    /// Default 3.
    pub fall: Option<Int>,
    /// Default 2.
    pub rise: Option<Int>,
}

/// `[http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    /// Default empty: no plain-HTTP listener.
    pub listen: Option<TextList>,
}

/// `[unknown]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnknown {
    /// Default "reject".
    pub action: Option<Text>,
    /// Only with `action = "forward"`.
    pub backend: Option<Text>,
    /// Only with `action = "forward"`.
    pub backends: Option<TextList>,
    /// Only with `action = "forward"`; default "none".
    pub proxy_protocol: Option<Text>,
}

/// `[ban]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBan {
    /// Default true.
    pub enabled: Option<bool>,
    /// Default 1.
    pub max_retry: Option<Int>,
    /// Default "1h".
    pub find_time: Option<Text>,
    /// Default "365d".
    pub ban_time: Option<Text>,
    /// Default `["127.0.0.0/8", "::1"]`; an explicit list replaces it.
    pub ignore: Option<TextList>,
    /// Default `["unknown_sni", "no_sni", "not_tls", "unknown_host", "no_host", "not_http"]`.
    pub strike_on: Option<TextList>,
    /// Default 64.
    pub ipv6_prefix: Option<Int>,
    /// Default "/var/lib/sniroute/bans.json"; "" = memory only.
    pub state_file: Option<String>,
}

/// `[rate_limit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// Default 20; 0 disables.
    pub per_ip: Option<Int>,
    /// Default 40.
    pub burst: Option<Int>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// Default "127.0.0.1:9151"; "" = no endpoint.
    pub listen: Option<Text>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Default "/run/sniroute/admin.sock"; "" = no socket.
    pub socket: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// Default "stdout".
    pub access: Option<Text>,
    /// Default "text".
    pub format: Option<Text>,
}

/// `[firewall]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirewall {
    /// Default "none".
    pub backend: Option<Text>,
    /// Default "sniroute".
    pub table: Option<Text>,
    /// Default "listen".
    pub scope: Option<Text>,
}

/// `[proxy_protocol]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyProtocol {
    /// Default empty: no trusted balancers.
    pub accept_from: Option<TextList>,
}

/// The whole file. A section that failed to deserialize is left at its default
/// and flagged, so `build` does not add follow-up errors about it.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub top: RawTop,
    /// The top-level scalars had a type error (so "missing listen" would be noise).
    pub top_failed: bool,
    pub limits: RawLimits,
    pub tls: RawTls,
    pub http: RawHttp,
    /// Routes that deserialized, with the span of their `[[route]]` header, and
    /// their 1-based position among all routes of the file.
    pub routes: Vec<(usize, Spanned<RawRoute>)>,
    /// A `route` key was written (even one that failed to deserialize).
    pub routes_written: bool,
    pub unknown: RawUnknown,
    pub ban: RawBan,
    pub rate_limit: RawRateLimit,
    pub metrics: RawMetrics,
    pub admin: RawAdmin,
    pub log: RawLog,
    pub firewall: RawFirewall,
    pub proxy_protocol: RawProxyProtocol,
    pub crowdsec: super::crowdsec::RawCrowdsec,
}

/// The top-level keys that hold a table (`route` an array of tables).
pub(super) const SECTIONS: [&str; 13] = [
    "limits",
    "tls",
    "http",
    "route",
    "unknown",
    "ban",
    "rate_limit",
    "metrics",
    "admin",
    "log",
    "firewall",
    "proxy_protocol",
    "crowdsec",
];

/// The config text with its line starts, to turn byte spans into `line:col`.
pub(super) struct Source<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        let line_starts = std::iter::once(0).chain(newlines).collect();
        Source { text, line_starts }
    }

    /// A diagnostic at the start of `span`: 1-based line, column in characters.
    pub(super) fn diag(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let mut offset = span.start.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let col = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        Diagnostic {
            line,
            col,
            message: message.into(),
        }
    }
}

/// Parses the text into raw sections. Syntax errors stop here (`None`, the
/// first one reported: later ones are usually echoes of it); unknown keys and
/// type errors are all reported and parsing goes on.
pub(super) fn parse(src: &Source<'_>, diags: &mut Vec<Diagnostic>) -> Option<RawConfig> {
    let root = match DeTable::parse(src.text) {
        Ok(root) => root.into_inner(),
        Err(e) => {
            diags.push(syntax_error(src, &e));
            return None;
        }
    };
    let mut raw = RawConfig::default();
    let mut top = DeTable::new();
    let top_fields: Vec<&str> = fields_of::<RawTop>()
        .iter()
        .chain(&SECTIONS)
        .copied()
        .collect();
    for (key, value) in root {
        if !top_fields.contains(&key.get_ref().as_ref()) {
            diags.push(src.diag(
                key.span(),
                unknown_key(key.get_ref(), "at top level", &top_fields),
            ));
            continue;
        }
        let section = Section::new(src, key.get_ref().to_string());
        match key.get_ref().as_ref() {
            "limits" => raw.limits = section.parse(value, diags).unwrap_or_default(),
            "tls" => raw.tls = section.parse(value, diags).unwrap_or_default(),
            "http" => raw.http = section.parse(value, diags).unwrap_or_default(),
            "route" => parse_routes(src, value, &mut raw, diags),
            "unknown" => raw.unknown = section.parse(value, diags).unwrap_or_default(),
            "ban" => raw.ban = section.parse(value, diags).unwrap_or_default(),
            "rate_limit" => raw.rate_limit = section.parse(value, diags).unwrap_or_default(),
            "metrics" => raw.metrics = section.parse(value, diags).unwrap_or_default(),
            "admin" => raw.admin = section.parse(value, diags).unwrap_or_default(),
            "log" => raw.log = section.parse(value, diags).unwrap_or_default(),
            "firewall" => raw.firewall = section.parse(value, diags).unwrap_or_default(),
            "proxy_protocol" => {
                raw.proxy_protocol = section.parse(value, diags).unwrap_or_default()
            }
            "crowdsec" => raw.crowdsec = section.parse(value, diags).unwrap_or_default(),
            _ => {
                top.insert(key, value);
            }
        }
    }
    let section = Section {
        src,
        path: String::new(),
        label: "at top level".into(),
    };
    match section.parse(Spanned::new(0..0, DeValue::Table(top)), diags) {
        Some(t) => raw.top = t,
        None => raw.top_failed = true,
    }
    Some(raw)
}

/// `[[route]]` entries: an array of tables, each deserialized on its own.
fn parse_routes(
    src: &Source<'_>,
    value: Spanned<DeValue<'_>>,
    raw: &mut RawConfig,
    diags: &mut Vec<Diagnostic>,
) {
    let span = value.span();
    raw.routes_written = true;
    let DeValue::Array(entries) = value.into_inner() else {
        let msg = "route: expected [[route]] tables (double brackets: one [[route]] per route)";
        diags.push(src.diag(span, msg));
        return;
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let n = i + 1;
        let span = entry.span();
        let section = Section {
            src,
            path: format!("route[{n}]"),
            label: format!("in [[route]] #{n}"),
        };
        // The nested table is taken out and parsed as a section of its own,
        // so its unknown keys and type errors are all reported at their key.
        let (entry, health_check) = take_table(entry, "health_check");
        let health_check = health_check.and_then(|table| {
            let span = table.span();
            let section = Section {
                src,
                path: format!("route[{n}].health_check"),
                label: format!("in [route.health_check] of [[route]] #{n}"),
            };
            let parsed = section.parse::<RawHealthCheck>(table, diags)?;
            Some(Spanned::new(span, parsed))
        });
        if let Some(mut route) = section.parse::<RawRoute>(entry, diags) {
            route.health_check = health_check;
            raw.routes.push((n, Spanned::new(span, route)));
        }
    }
}

/// `value` without its key `key` (if it is a table holding one), and that key's value.
fn take_table<'a>(
    value: Spanned<DeValue<'a>>,
    key: &str,
) -> (Spanned<DeValue<'a>>, Option<Spanned<DeValue<'a>>>) {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(mut table) => {
            let taken = table.remove(key);
            (Spanned::new(span, DeValue::Table(table)), taken)
        }
        other => (Spanned::new(span, other), None),
    }
}

/// One table being deserialized: where it is and how to name it in messages.
struct Section<'s, 'a> {
    src: &'s Source<'a>,
    /// Prefix for key paths in messages: `limits`, `route[2]`, or empty at top level.
    path: String,
    /// How unknown-key messages place the table: `in [ban]`, `in [[route]] #2`.
    label: String,
}

impl<'s, 'a> Section<'s, 'a> {
    fn new(src: &'s Source<'a>, name: String) -> Self {
        let label = format!("in [{name}]");
        Section {
            src,
            path: name,
            label,
        }
    }

    /// Reports and drops unknown keys, then deserializes the rest into `T`.
    /// `None` (after a reported error) if it is not a table or a value has the wrong type.
    fn parse<T: Deserialize<'a>>(
        &self,
        value: Spanned<DeValue<'a>>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            diags.push(self.src.diag(
                span,
                format!("{}: expected a table [{}]", self.path, self.path),
            ));
            return None;
        };
        let fields = fields_of::<T>();
        let unknown: Vec<_> = table
            .keys()
            .filter(|k| !fields.contains(&k.get_ref().as_ref()))
            .cloned()
            .collect();
        for key in unknown {
            let msg = unknown_key(key.get_ref(), &self.label, fields);
            diags.push(self.src.diag(key.span(), msg));
            table.remove(key.get_ref().as_ref());
        }
        let places: Vec<(String, Range<usize>)> = table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        let de = ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(table)));
        T::deserialize(de)
            .map_err(|e| {
                let at = e.span().unwrap_or(span);
                let key = places
                    .iter()
                    .find(|(_, s)| s.contains(&at.start) || *s == at)
                    .map(|(k, _)| k.as_str());
                diags.push(self.src.diag(at, self.type_error(key, e.message())));
            })
            .ok()
    }

    /// `limits.connect_timeout: expected a duration like "5s" (quoted), found integer `5``.
    fn type_error(&self, key: Option<&str>, message: &str) -> String {
        let path = match (self.path.as_str(), key) {
            ("", Some(k)) => k.to_string(),
            (p, Some(k)) => format!("{p}.{k}"),
            (p, None) => p.to_string(),
        };
        let key_kind = match path.as_str() {
            "metrics.listen" => "backend",
            "http.listen" => "http.listen",
            "firewall.backend" => "firewall.backend",
            _ => key.unwrap_or(""),
        };
        let found_expected = message
            .strip_prefix("invalid type: ")
            .or_else(|| message.strip_prefix("invalid value: "))
            .and_then(|rest| rest.split_once(", expected "));
        match found_expected {
            Some((found, expected)) => {
                let expected = expectation(key_kind).unwrap_or_else(|| plain_type(expected));
                format!("{path}: expected {expected}, found {found}")
            }
            None => format!("{path}: {message}"),
        }
    }
}

/// What a key's value looks like, for type errors (by key name: the same name
/// means the same kind of value in every section; `metrics.listen` is asked as
/// `backend`, `http.listen` by its path).
fn expectation(key: &str) -> Option<&'static str> {
    Some(match key {
        "client_hello_timeout"
        | "connect_timeout"
        | "idle_timeout"
        | "shutdown_grace"
        | "find_time"
        | "ban_time"
        | "interval"
        | "timeout" => "a quoted duration like \"500ms\", \"5s\", \"10m\", \"1h\", \"365d\"",
        "listen" => "an array of addresses like [\"0.0.0.0:443\", \"[::]:443\"]",
        "http.listen" => "an array of addresses like [\"0.0.0.0:80\", \"[::]:80\"]",
        "backend" => "a quoted address \"IP:PORT\" (IPv6 in brackets)",
        "backends" => "an array of addresses like [\"10.0.0.6:443\", \"10.0.0.7:443\"]",
        "http_backends" => "an array of addresses like [\"10.0.0.6:80\", \"10.0.0.7:80\"]",
        "sni" => "an array of host names like [\"myapp.example.org\", \"*.example.org\"]",
        "ignore" | "allow" => {
            "an array of addresses or CIDRs like [\"192.0.2.10\", \"2001:db8::/48\"]"
        }
        "alpn" => "an array of ALPN ids like [\"acme-tls/1\"] or [\"h2\", \"http/1.1\"]",
        "balance" => "a quoted policy: \"first\", \"round_robin\" or \"least_connections\"",
        "accept_from" => "an array of balancer addresses or CIDRs like [\"10.0.0.0/8\"]",
        "strike_on" => "an array of outcomes like [\"unknown_sni\", \"no_sni\", \"not_tls\"]",
        "min_version" => "a quoted version: \"1.0\", \"1.1\", \"1.2\" or \"1.3\"",
        "enabled" | "splice" | "defer_accept" => "true or false",
        "state_file" | "socket" | "access" | "api_key_file" | "password_file" => "a quoted path",
        "update_frequency" => "a quoted duration like \"10s\"",
        "lapi_url" => "a quoted URL like \"http://127.0.0.1:8080\"",
        "push" => "true or false",
        "firewall.backend" => "\"none\" or \"nftables\"",
        "table" => "a quoted nftables table name like \"sniroute\"",
        "scope" => "\"listen\" or \"all\"",
        _ => return None,
    })
}

/// serde's type words in plain English.
fn plain_type(serde_word: &str) -> &str {
    match serde_word {
        "i64" => "an integer",
        "a sequence" => "an array",
        "a boolean" => "true or false",
        other => other,
    }
}

fn syntax_error(src: &Source<'_>, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let message = match e.message() {
        "duplicate key" => {
            let key = src.text.get(span.clone()).unwrap_or("");
            format!("duplicate key {key:?} (each key may appear only once in a table)")
        }
        m => format!("invalid TOML: {m}"),
    };
    src.diag(span, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = Source::new("a = 1\nbé = \"x\"\n");
        let d = src.diag(0..1, "m");
        assert_eq!((d.line, d.col), (1, 1));
        let at = "a = 1\nbé = ".len();
        let d = src.diag(at..at + 1, "m");
        assert_eq!((d.line, d.col), (2, 6));
        let d = src.diag(999..999, "m");
        assert_eq!((d.line, d.col), (3, 1));
    }
}
