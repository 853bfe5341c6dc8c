//! PURE: bytes in, verdict out. Reassembles the first TLS handshake message from
//! one or more records and reads SNI, ALPN and the highest offered version.
//! No I/O, no allocation from an unchecked length, no panic on any input.
//!
//! The caller hands [`parse`] every byte received so far, again after each read,
//! and stops at the first verdict that is not [`Verdict::NeedMore`]. So every
//! strict prefix of a valid hello answers `NeedMore`, and a reject is given as
//! soon as the bytes so far rule out every valid continuation.
//!
//! Decisions, and why:
//! - **The first byte alone decides "not TLS".** A ClientHello record starts
//!   with 22 (handshake); HTTP, SSLv2 (high bit set) and garbage do not, so they
//!   are turned away before the client sends more. Record headers are checked
//!   byte by byte as they arrive: major version 3, minor 0..=4, length 1..=2^14
//!   (RFC 8446 §5.1 forbids empty handshake fragments and larger plaintext).
//!   Any other record type before the hello is complete is `NotTls` too.
//! - **`TooLarge` as soon as it is certain.** `max_len` counts every byte up to
//!   the end of the record that completes the hello, record headers included.
//!   Each record header and the hello's 3-byte length give a lower bound on that
//!   total (with the fewest further record headers that could carry the rest);
//!   once it exceeds `max_len` the answer is `TooLarge`, so a declared length of
//!   16 MiB is refused after 9 bytes, and nothing is ever sized from it.
//!   A buffer already holding `max_len` bytes without a complete hello is
//!   `TooLarge` too: completing it would need more.
//! - **A hello that does not parse is `NotTls`, never "a hello without SNI".**
//!   tls-parser reads the ClientHello body; the bytes after it inside the
//!   handshake message must be none. Its extension parsers are lenient (a
//!   truncated server_name list reads as an empty one, trailing bytes are
//!   dropped), which would turn a malformed hello into one without SNI, so the
//!   extension block and the three extensions used here are read with exact
//!   length checks. Duplicate extensions are `NotTls` (RFC 8446 §4.2).
//! - **SNI.** The one `host_name` entry of server_name, canonicalised by
//!   [`HostName::parse`]; one that is not a host name (NUL, space, non-ASCII,
//!   empty) is `Reject(NoSni)`. No server_name, an empty list or a list without
//!   a `host_name` entry gives `sni: None` (the caller's `no_sni`). Two
//!   `host_name` entries are `NotTls` (RFC 6066 §3: "MUST NOT"); a backend
//!   might pick the other one.
//! - **Versions.** `max_version` is the highest supported_versions entry of the
//!   form 0x03xx, or `legacy_version` when that extension is absent. Other values
//!   (GREASE 0x?a?a, TLS 1.3 drafts 0x7fxx) are ignored, so a list without any
//!   real version gives 0 and the caller's policy check refuses it.
//! - **No copy for one record.** A hello inside one record is parsed in place;
//!   one spread over records is copied into a buffer of its declared length,
//!   already checked against `max_len`. `NeedMore` never allocates.

use std::borrow::Cow;

use tls_parser::parse_tls_handshake_client_hello;

use crate::hostname::HostName;
use crate::outcome::Outcome;

/// Record content type `handshake` (RFC 8446 §5.1).
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello` (RFC 8446 §4).
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Record header: content type (1), version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake header: message type (1), length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record payload: 2^14 (RFC 8446 §5.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Major byte of SSL 3.0 and every TLS version on the wire (0x0300..=0x0304).
const TLS_MAJOR: u8 = 3;
/// Highest record-layer minor version taken: TLS 1.3's 0x0304. Clients send
/// 0x0301 or 0x0303; the rest of SSL 3.0..TLS 1.3 is tolerated.
const MAX_RECORD_MINOR: u8 = 4;
/// Extension `server_name` (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 16;
/// Extension `supported_versions` (RFC 8446 §4.2.1).
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// server_name entry type `host_name` (RFC 6066 §3).
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What a complete ClientHello told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host_name from server_name, canonical; `None` when the extension is
    /// absent or names no host.
    pub sni: Option<HostName>,
    /// ALPN protocol names offered, in order (lossy UTF-8).
    pub alpn: Vec<String>,
    /// Highest version offered: the highest 0x03xx entry of supported_versions
    /// when present (GREASE and drafts ignored; 0 if none is left), else
    /// legacy_version. Wire value (0x0303 = TLS 1.2).
    pub max_version: u16,
    /// Bytes of the input that made up the hello, record headers included: up
    /// to the end of the record that completed it.
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
    let framing = match frame(buf, max_len) {
        Ok(Some(framing)) => framing,
        Ok(None) => return Verdict::NeedMore,
        Err(outcome) => return Verdict::Reject(outcome),
    };
    match read_hello(&handshake_message(buf, &framing), framing.len) {
        Ok(hello) => Verdict::Hello(hello),
        Err(outcome) => Verdict::Reject(outcome),
    }
}

/// Where the complete first handshake message lies in the input.
struct Framing {
    /// Handshake message length, header included.
    msg_len: usize,
    /// End of the record that completed it.
    len: usize,
}

/// Walks the records: `Ok(None)` while the first handshake message is
/// incomplete, its framing once complete, or why the input is refused.
fn frame(buf: &[u8], max_len: usize) -> Result<Option<Framing>, Outcome> {
    let mut pos = 0;
    let mut head = [0u8; HANDSHAKE_HEADER_LEN];
    let mut head_len = 0;
    // Handshake bytes announced by the record headers read so far.
    let mut announced = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(payload_len) = record_payload_len(rest)? else {
            return need_more(buf, max_len);
        };
        let record_end = pos + RECORD_HEADER_LEN + payload_len;
        if record_end > max_len {
            return Err(Outcome::TooLarge);
        }
        let payload = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let payload = payload.get(..payload_len).unwrap_or(payload);
        for (slot, &byte) in head.iter_mut().skip(head_len).zip(payload) {
            if head_len == 0 && byte != HANDSHAKE_CLIENT_HELLO {
                return Err(Outcome::NotTls);
            }
            *slot = byte;
            head_len += 1;
        }
        announced += payload_len;
        if head_len == HANDSHAKE_HEADER_LEN {
            let [_, l0, l1, l2] = head;
            let msg_len = HANDSHAKE_HEADER_LEN + u32::from_be_bytes([0, l0, l1, l2]) as usize;
            let missing = msg_len.saturating_sub(announced);
            let fewest_headers = missing.div_ceil(MAX_FRAGMENT_LEN) * RECORD_HEADER_LEN;
            if record_end + missing + fewest_headers > max_len {
                return Err(Outcome::TooLarge);
            }
            if missing == 0 && buf.len() >= record_end {
                return Ok(Some(Framing {
                    msg_len,
                    len: record_end,
                }));
            }
        }
        if buf.len() < record_end {
            return need_more(buf, max_len);
        }
        pos = record_end;
    }
}

/// `NeedMore`, unless the cap is already reached: completing would exceed it.
fn need_more(buf: &[u8], max_len: usize) -> Result<Option<Framing>, Outcome> {
    if buf.len() >= max_len {
        Err(Outcome::TooLarge)
    } else {
        Ok(None)
    }
}

/// Checks the record header at the start of `rest`, as much of it as has
/// arrived, and returns its payload length once the header is whole.
fn record_payload_len(rest: &[u8]) -> Result<Option<usize>, Outcome> {
    let header = rest.get(..RECORD_HEADER_LEN).unwrap_or(rest);
    let kind_ok = header.first().is_none_or(|&b| b == CONTENT_HANDSHAKE);
    let major_ok = header.get(1).is_none_or(|&b| b == TLS_MAJOR);
    let minor_ok = header.get(2).is_none_or(|&b| b <= MAX_RECORD_MINOR);
    if !(kind_ok && major_ok && minor_ok) {
        return Err(Outcome::NotTls);
    }
    let &[_, _, _, hi, lo] = header else {
        return Ok(None);
    };
    match usize::from(u16::from_be_bytes([hi, lo])) {
        len @ 1..=MAX_FRAGMENT_LEN => Ok(Some(len)),
        _ => Err(Outcome::NotTls),
    }
}

/// The handshake message bytes: borrowed when one record holds them all,
/// else gathered from the records (`msg_len` is already within the cap).
fn handshake_message<'a>(buf: &'a [u8], framing: &Framing) -> Cow<'a, [u8]> {
    let first = buf.get(RECORD_HEADER_LEN..).unwrap_or_default();
    if let Some(msg) = first.get(..framing.msg_len)
        && first_payload_len(buf) >= framing.msg_len
    {
        return Cow::Borrowed(msg);
    }
    let mut msg = Vec::with_capacity(framing.msg_len);
    let mut rest = buf.get(..framing.len).unwrap_or(buf);
    while msg.len() < framing.msg_len {
        let Ok(Some(payload_len)) = record_payload_len(rest) else {
            break;
        };
        let record = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let (payload, next) = record
            .split_at_checked(payload_len)
            .unwrap_or((record, &[]));
        let want = framing.msg_len - msg.len();
        msg.extend_from_slice(payload.get(..want).unwrap_or(payload));
        rest = next;
    }
    Cow::Owned(msg)
}

/// Payload length of the first record (framing already checked it).
fn first_payload_len(buf: &[u8]) -> usize {
    match record_payload_len(buf) {
        Ok(Some(len)) => len,
        _ => 0,
    }
}

/// Reads a complete ClientHello handshake message (header included).
fn read_hello(msg: &[u8], len: usize) -> Result<ClientHello, Outcome> {
    let body = msg.get(HANDSHAKE_HEADER_LEN..).ok_or(Outcome::NotTls)?;
    let Ok((rest, hello)) = parse_tls_handshake_client_hello(body) else {
        return Err(Outcome::NotTls);
    };
    let legacy_version = hello.version.0;
    if !rest.is_empty() || legacy_version >> 8 != u16::from(TLS_MAJOR) {
        return Err(Outcome::NotTls);
    }
    let ext = Extensions::split(hello.ext.unwrap_or_default())?;
    let alpn = ext.alpn.map(alpn_names).transpose()?.unwrap_or_default();
    let max_version = match ext.supported_versions {
        Some(data) => highest_version(data)?,
        None => legacy_version,
    };
    // Last, so a bad name is NoSni only in an otherwise well-formed hello.
    let sni = ext.server_name.map(host_name).transpose()?.flatten();
    Ok(ClientHello {
        sni,
        alpn,
        max_version,
        len,
    })
}

/// The data of the extensions read here, from an extension block whose
/// framing and uniqueness are checked.
#[derive(Default)]
struct Extensions<'a> {
    server_name: Option<&'a [u8]>,
    alpn: Option<&'a [u8]>,
    supported_versions: Option<&'a [u8]>,
}

impl<'a> Extensions<'a> {
    fn split(block: &'a [u8]) -> Result<Self, Outcome> {
        let mut found = Extensions::default();
        let mut kinds = Vec::new();
        let mut r = Reader(block);
        while !r.is_empty() {
            let kind = r.u16()?;
            let data = r.vec16()?;
            kinds.push(kind);
            match kind {
                EXT_SERVER_NAME => found.server_name = Some(data),
                EXT_ALPN => found.alpn = Some(data),
                EXT_SUPPORTED_VERSIONS => found.supported_versions = Some(data),
                _ => {}
            }
        }
        kinds.sort_unstable();
        if kinds.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
            return Err(Outcome::NotTls);
        }
        Ok(found)
    }
}

/// server_name: the canonical `host_name`, `None` when the list names none.
fn host_name(data: &[u8]) -> Result<Option<HostName>, Outcome> {
    let mut list = Reader(Reader(data).whole(Reader::vec16)?);
    let mut name = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let entry = list.vec16()?;
        if name_type == NAME_TYPE_HOST_NAME {
            if name.is_some() {
                return Err(Outcome::NotTls);
            }
            name = Some(entry);
        }
    }
    name.map(|raw| HostName::parse(raw).ok_or(Outcome::NoSni))
        .transpose()
}

/// ALPN: the protocol names (RFC 7301: a non-empty list of non-empty names).
fn alpn_names(data: &[u8]) -> Result<Vec<String>, Outcome> {
    let mut list = Reader(Reader(data).whole(Reader::vec16)?);
    if list.is_empty() {
        return Err(Outcome::NotTls);
    }
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8()?;
        if name.is_empty() {
            return Err(Outcome::NotTls);
        }
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(names)
}

/// supported_versions: the highest 0x03xx entry, 0 when there is none.
fn highest_version(data: &[u8]) -> Result<u16, Outcome> {
    let list = Reader(data).whole(Reader::vec8)?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(Outcome::NotTls);
    }
    let highest = list
        .chunks_exact(2)
        .filter_map(|pair| match *pair {
            [TLS_MAJOR, minor] => Some(u16::from_be_bytes([TLS_MAJOR, minor])),
            _ => None,
        })
        .max();
    Ok(highest.unwrap_or(0))
}

/// A cursor over TLS vectors; every shortfall is `NotTls`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Outcome> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(Outcome::NotTls)?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Outcome> {
        match *self.take(1)? {
            [b] => Ok(b),
            _ => Err(Outcome::NotTls),
        }
    }

    fn u16(&mut self) -> Result<u16, Outcome> {
        match *self.take(2)? {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(Outcome::NotTls),
        }
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], Outcome> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], Outcome> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Reads one item with `read` that must use up every byte.
    fn whole<T>(mut self, read: fn(&mut Self) -> Result<T, Outcome>) -> Result<T, Outcome> {
        let item = read(&mut self)?;
        if self.is_empty() {
            Ok(item)
        } else {
            Err(Outcome::NotTls)
        }
    }
}
