//! The one way a client connection ends. The same value feeds the access log,
//! the `sniroute_connections_total{outcome}` metric and the strike decision.

use std::fmt;

/// How a client connection ended. Every outcome but `Routed` closes the client
/// without sending it a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Forwarded to a backend; bytes flowed until both sides were done.
    Routed,
    /// A valid ClientHello whose SNI matches no route.
    UnknownSni,
    /// A valid ClientHello without a usable server_name.
    NoSni,
    /// The first bytes are not a TLS handshake (HTTP, SSLv2, garbage, bad framing).
    NotTls,
    /// `[http]` listeners: a valid request head whose host matches no route
    /// with `http_backends`.
    UnknownHost,
    /// `[http]` listeners: a request head without a usable `Host` (none,
    /// also for HTTP/1.0, or one that is not a host name).
    NoHost,
    /// `[http]` listeners: the first bytes are not an HTTP/1.x request head
    /// sniroute serves (TLS, garbage, `CONNECT`, header tricks).
    NotHttp,
    /// No complete ClientHello within `limits.client_hello_timeout`.
    Timeout,
    /// The ClientHello is larger than `limits.max_client_hello`.
    TooLarge,
    /// The ClientHello offers no TLS version at or above `tls.min_version`.
    Policy,
    /// The source is banned; closed right after accept.
    Banned,
    /// The source opened new connections faster than `rate_limit` allows.
    RateLimited,
    /// `limits.max_connections` are already open.
    Overloaded,
    /// No backend of the route accepted the connection.
    BackendError,
    /// The route's `allow` list does not hold the source address.
    Denied,
    /// A trusted balancer (`proxy_protocol.accept_from`) sent bytes that are
    /// not a valid PROXY header. Never a strike: the balancer is not the client.
    ProxyError,
}

impl Outcome {
    /// Every outcome, in a fixed order (for pre-registered metrics).
    pub const ALL: [Outcome; 16] = [
        Outcome::Routed,
        Outcome::UnknownSni,
        Outcome::NoSni,
        Outcome::NotTls,
        Outcome::UnknownHost,
        Outcome::NoHost,
        Outcome::NotHttp,
        Outcome::Timeout,
        Outcome::TooLarge,
        Outcome::Policy,
        Outcome::Banned,
        Outcome::RateLimited,
        Outcome::Overloaded,
        Outcome::BackendError,
        Outcome::Denied,
        Outcome::ProxyError,
    ];

    /// The outcomes `ban.strike_on` accepts: ones a client causes before
    /// routing (also the `reason` labels of `sniroute_strikes_total`).
    pub const STRIKABLE: [Outcome; 10] = [
        Outcome::UnknownSni,
        Outcome::NoSni,
        Outcome::NotTls,
        Outcome::UnknownHost,
        Outcome::NoHost,
        Outcome::NotHttp,
        Outcome::Timeout,
        Outcome::Policy,
        Outcome::TooLarge,
        Outcome::Denied,
    ];

    /// The word used in logs, metrics and config (`ban.strike_on`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::UnknownSni => "unknown_sni",
            Outcome::NoSni => "no_sni",
            Outcome::NotTls => "not_tls",
            Outcome::UnknownHost => "unknown_host",
            Outcome::NoHost => "no_host",
            Outcome::NotHttp => "not_http",
            Outcome::Timeout => "timeout",
            Outcome::TooLarge => "too_large",
            Outcome::Policy => "policy",
            Outcome::Banned => "banned",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
            Outcome::BackendError => "backend_error",
            Outcome::Denied => "denied",
            Outcome::ProxyError => "proxy_error",
        }
    }

    /// Parses the word written by [`Outcome::as_str`].
    pub fn from_word(word: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == word)
    }

    /// Index into [`Outcome::ALL`], for arrays of per-outcome handles.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_index_matches_all() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(Outcome::from_word(o.as_str()), Some(o));
            assert_eq!(o.index(), i);
        }
        assert_eq!(Outcome::from_word("nope"), None);
    }
}
