//! PURE: bytes in, verdict out. Reassembles the first TLS handshake message from
//! one or more records and reads SNI, ALPN and the highest offered version.
//! No I/O, no allocation from an unchecked length.

use crate::hostname::HostName;
use crate::outcome::Outcome;

/// What a complete ClientHello told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host_name from server_name, canonical; `None` when the extension is absent.
    pub sni: Option<HostName>,
    /// ALPN protocol names offered, in order (lossy UTF-8).
    pub alpn: Vec<String>,
    /// Highest non-GREASE version offered: from supported_versions when present,
    /// else legacy_version. Wire value (0x0303 = TLS 1.2).
    pub max_version: u16,
    /// Bytes of the input that made up the hello, record headers included.
    pub len: usize,
}

/// The verdict on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to decide yet; read more.
    NeedMore,
    /// A complete, well-formed ClientHello.
    Hello(ClientHello),
    /// Rejected: `NotTls`, `TooLarge` or `NoSni` (a server_name that is not a host name).
    Reject(Outcome),
}

/// Judges `buf` (every byte received so far) against `max_len` (the cap on the
/// bytes before a decision, record headers included).
pub fn parse(buf: &[u8], max_len: usize) -> Verdict {
    let _ = (buf, max_len);
    Verdict::NeedMore
}
