//! Host names in their one canonical form: lower case, no trailing dot, only the
//! characters a DNS host name can hold, bounded length. Both the config parser
//! (route names) and the ClientHello parser (SNI from the wire) build them here,
//! so later code never sees raw bytes.

use std::fmt;

/// Longest host name DNS allows in presentation form (RFC 1035: 255 octets on
/// the wire, so at most 253 characters without the trailing dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label DNS allows (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// A canonical host name: `[a-z0-9_-]` labels separated by single dots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// Canonicalises raw bytes (from the wire or a config file): lower-cases
    /// ASCII, strips one trailing dot, and refuses anything that cannot be a host
    /// name (empty labels, bytes outside `[A-Za-z0-9_-]`, over-long names).
    /// `_` is allowed because real deployments use it in internal names.
    pub fn parse(raw: &[u8]) -> Option<HostName> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() || raw.len() > MAX_NAME_LEN {
            return None;
        }
        for label in raw.split(|&b| b == b'.') {
            let ok_chars = label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if label.is_empty() || label.len() > MAX_LABEL_LEN || !ok_chars {
                return None;
            }
        }
        let mut name = String::with_capacity(raw.len());
        name.extend(raw.iter().map(|&b| char::from(b.to_ascii_lowercase())));
        Some(HostName(name))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Option<String> {
        HostName::parse(s.as_bytes()).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canon("MyApp.Example.ORG."),
            Some("myapp.example.org".into())
        );
        assert_eq!(canon("a-b_c.d0"), Some("a-b_c.d0".into()));
        assert_eq!(canon("localhost"), Some("localhost".into()));
    }

    #[test]
    fn refuses_what_cannot_be_a_host_name() {
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a\0b",
            "a/b",
            "a:443",
            "é.example",
            "a..",
            "*.x",
        ] {
            assert_eq!(canon(bad), None, "{bad:?}");
        }
        assert_eq!(canon(&"a".repeat(64)), None);
        assert!(canon(&"a".repeat(63)).is_some());
        let long = vec!["abcdefg"; 40].join(".");
        assert_eq!(canon(&long), None);
    }
}
