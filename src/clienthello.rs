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
    // Bytes past the cap can never change the verdict: judging only the
    // first `max_len` keeps the answer independent of how reads were split.
    let buf = buf.get(..max_len).unwrap_or(buf);
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
    /// Whether the first record holds all of it (parsed in place, no copy).
    one_record: bool,
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
                    one_record: pos == 0,
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
    if framing.one_record
        && let Some(msg) = first.get(..framing.msg_len)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The default `limits.max_client_hello`.
    const CAP: usize = 16384;

    struct Fixture {
        name: &'static str,
        bytes: &'static [u8],
        sni: Option<&'static str>,
        max_version: u16,
        alpn: &'static [&'static str],
    }

    const FIXTURES: [Fixture; 8] = [
        Fixture {
            name: "curl",
            bytes: include_bytes!("../tests/fixtures/clienthello/curl.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0304,
            alpn: &["h2", "http/1.1"],
        },
        Fixture {
            name: "openssl",
            bytes: include_bytes!("../tests/fixtures/clienthello/openssl.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0304,
            alpn: &[],
        },
        Fixture {
            name: "openssl-tls12",
            bytes: include_bytes!("../tests/fixtures/clienthello/openssl-tls12.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0303,
            alpn: &[],
        },
        Fixture {
            name: "tls10-only",
            bytes: include_bytes!("../tests/fixtures/clienthello/tls10-only.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0301,
            alpn: &[],
        },
        Fixture {
            name: "python",
            bytes: include_bytes!("../tests/fixtures/clienthello/python.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0304,
            alpn: &[],
        },
        Fixture {
            name: "java",
            bytes: include_bytes!("../tests/fixtures/clienthello/java.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0304,
            alpn: &[],
        },
        Fixture {
            name: "chromium",
            bytes: include_bytes!("../tests/fixtures/clienthello/chromium.bin"),
            sni: Some("fixture.example"),
            max_version: 0x0304,
            alpn: &["h2", "http/1.1"],
        },
        Fixture {
            name: "openssl-nosni",
            bytes: include_bytes!("../tests/fixtures/clienthello/openssl-nosni.bin"),
            sni: None,
            max_version: 0x0304,
            alpn: &[],
        },
    ];

    const CHROMIUM: &[u8] = FIXTURES[6].bytes;
    const CURL: &[u8] = FIXTURES[0].bytes;

    impl Fixture {
        fn expected(&self, len: usize) -> ClientHello {
            ClientHello {
                sni: self.sni.map(|s| HostName::parse(s.as_bytes()).unwrap()),
                alpn: self.alpn.iter().map(|s| s.to_string()).collect(),
                max_version: self.max_version,
                len,
            }
        }

        /// The handshake message (every fixture is one record, nothing after).
        fn message(&self) -> &'static [u8] {
            &self.bytes[RECORD_HEADER_LEN..]
        }
    }

    fn hello(buf: &[u8]) -> ClientHello {
        match parse(buf, CAP) {
            Verdict::Hello(hello) => hello,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    fn reject(buf: &[u8]) -> Outcome {
        match parse(buf, CAP) {
            Verdict::Reject(outcome) => outcome,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    /// One record of content type `kind` around `payload`.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 3, 1];
        out.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend(payload);
        out
    }

    /// Frames the handshake message `msg` into handshake records whose payload
    /// sizes are taken from `sizes` in turn, cycling; each is clamped to what is
    /// left and to 2^14, so `&[usize::MAX]` makes one record.
    fn reframe(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = msg;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.clamp(1, rest.len().min(MAX_FRAGMENT_LEN)));
            out.extend(record(CONTENT_HANDSHAKE, chunk));
            rest = tail;
        }
        out
    }

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(data.len()).unwrap()];
        out.extend(data);
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend(data);
        out
    }

    /// A ClientHello handshake message: TLS 1.2 legacy version, one cipher
    /// suite, null compression, and `extensions` (type, data) in order.
    fn build(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let block: Vec<u8> = extensions
            .iter()
            .flat_map(|(kind, data)| [kind.to_be_bytes().to_vec(), vec16(data)].concat())
            .collect();
        let mut body = vec![0x03, 0x03];
        body.extend([0x5a; 32]);
        body.extend(vec8(&[]));
        body.extend(vec16(&[0x13, 0x01]));
        body.extend(vec8(&[0]));
        body.extend(vec16(&block));
        handshake(&body)
    }

    /// Wraps a ClientHello body in its handshake header.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn sni_ext(entries: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let list: Vec<u8> = entries
            .iter()
            .flat_map(|&(kind, name)| [vec![kind], vec16(name)].concat())
            .collect();
        (EXT_SERVER_NAME, vec16(&list))
    }

    fn host(name: &[u8]) -> (u16, Vec<u8>) {
        sni_ext(&[(NAME_TYPE_HOST_NAME, name)])
    }

    fn versions_ext(versions: &[u16]) -> (u16, Vec<u8>) {
        let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
        (EXT_SUPPORTED_VERSIONS, vec8(&list))
    }

    fn alpn_ext(names: &[&[u8]]) -> (u16, Vec<u8>) {
        let list: Vec<u8> = names.iter().flat_map(|n| vec8(n)).collect();
        (EXT_ALPN, vec16(&list))
    }

    /// A one-record hello with `extensions`, judged with the default cap.
    fn judge(extensions: &[(u16, Vec<u8>)]) -> Verdict {
        parse(&reframe(&build(extensions), &[usize::MAX]), CAP)
    }

    fn sni_of(extensions: &[(u16, Vec<u8>)]) -> Result<Option<String>, Outcome> {
        match judge(extensions) {
            Verdict::Hello(h) => Ok(h.sni.map(|n| n.as_str().to_owned())),
            Verdict::Reject(outcome) => Err(outcome),
            Verdict::NeedMore => panic!("a whole hello needs more"),
        }
    }

    #[test]
    fn every_fixture_gives_its_hello() {
        for f in &FIXTURES {
            assert_eq!(hello(f.bytes), f.expected(f.bytes.len()), "{}", f.name);
        }
    }

    #[test]
    fn every_strict_prefix_of_every_fixture_needs_more() {
        for f in &FIXTURES {
            for end in 0..f.bytes.len() {
                assert_eq!(
                    parse(&f.bytes[..end], CAP),
                    Verdict::NeedMore,
                    "{} [..{end}]",
                    f.name
                );
            }
        }
    }

    #[test]
    fn reframed_fixtures_give_the_same_hello() {
        for f in &FIXTURES {
            let n = f.message().len();
            for sizes in [
                &[1][..],
                &[2],
                &[3],
                &[7, 1],
                &[100],
                &[n / 2],
                &[n / 3],
                &[n - 1],
            ] {
                let framed = reframe(f.message(), sizes);
                assert_eq!(
                    hello(&framed),
                    f.expected(framed.len()),
                    "{} {sizes:?}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn sni_in_the_last_record_or_split_across_records() {
        for f in FIXTURES.iter().filter(|f| f.sni.is_some()) {
            let msg = f.message();
            let at = msg
                .windows(15)
                .position(|w| w == b"fixture.example")
                .unwrap();
            // The extension header starts 9 bytes before the name; a split 3
            // bytes into the name cuts it in two.
            for split in [at - 9, at + 3] {
                let framed = reframe(msg, &[split, usize::MAX]);
                assert_eq!(
                    hello(&framed),
                    f.expected(framed.len()),
                    "{} at {split}",
                    f.name
                );
                for end in 0..framed.len() {
                    assert_eq!(parse(&framed[..end], CAP), Verdict::NeedMore);
                }
            }
        }
    }

    #[test]
    fn every_prefix_of_one_byte_records_needs_more() {
        let framed = reframe(FIXTURES[0].message(), &[1]);
        for end in 0..framed.len() {
            assert_eq!(parse(&framed[..end], CAP), Verdict::NeedMore, "[..{end}]");
        }
        assert_eq!(hello(&framed).len, framed.len());
    }

    #[test]
    fn one_record_is_read_in_place_and_many_are_gathered() {
        let message = |buf: &[u8]| {
            let framing = frame(buf, CAP).unwrap().unwrap();
            matches!(handshake_message(buf, &framing), Cow::Borrowed(_))
        };
        assert!(message(CURL));
        assert!(!message(&reframe(FIXTURES[0].message(), &[100])));
    }

    #[test]
    fn bytes_after_the_hello_are_left_alone() {
        let mut same_record = CURL[RECORD_HEADER_LEN..].to_vec();
        same_record.extend([0x14, 0, 0, 0]);
        let framed = record(CONTENT_HANDSHAKE, &same_record);
        assert_eq!(hello(&framed), FIXTURES[0].expected(framed.len()));

        let mut more_records = CURL.to_vec();
        more_records.extend(record(0x17, b"early data"));
        more_records.extend(b"GET");
        assert_eq!(hello(&more_records), FIXTURES[0].expected(CURL.len()));
    }

    #[test]
    fn the_first_byte_alone_refuses_what_is_not_a_handshake_record() {
        for first in [b'G', 0x80, 0x00, 0x15, 0x17, 0xff] {
            assert_eq!(reject(&[first]), Outcome::NotTls, "{first:#x}");
        }
        assert_eq!(
            reject(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Outcome::NotTls
        );
        // An SSLv2-framed hello: two-byte length with the high bit set.
        assert_eq!(
            reject(&[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]),
            Outcome::NotTls
        );
        assert_eq!(parse(&[CONTENT_HANDSHAKE], CAP), Verdict::NeedMore);
        assert_eq!(parse(&[], CAP), Verdict::NeedMore);
    }

    #[test]
    fn bad_record_framing_is_not_tls() {
        let refused: [&[u8]; 6] = [
            &[22, 2, 0],             // SSL 2 major version
            &[22, 3, 5],             // minor version past TLS 1.3
            &[22, 3, 1, 0, 0],       // empty handshake fragment
            &[22, 3, 1, 0x40, 0x01], // 2^14 + 1
            &[22, 3, 1, 0xff, 0xff], // far past 2^14
            &[22, 3, 1, 0, 4, 2],    // ServerHello, not ClientHello
        ];
        for bytes in refused {
            assert_eq!(reject(bytes), Outcome::NotTls, "{bytes:?}");
        }
        // Another record type before the hello is complete.
        let mut interleaved = reframe(&CURL[RECORD_HEADER_LEN..100], &[usize::MAX]);
        interleaved.extend(record(0x17, b"x"));
        assert_eq!(reject(&interleaved), Outcome::NotTls);
        // The handshake type in a second record, after an empty-looking start.
        let framed = reframe(&[2, 0, 0, 1, 0], &[1]);
        assert_eq!(reject(&framed), Outcome::NotTls);
    }

    #[test]
    fn a_huge_declared_length_is_too_large_after_nine_bytes() {
        let bytes = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        assert_eq!(parse(&bytes[..8], CAP), Verdict::NeedMore);
        assert_eq!(reject(&bytes), Outcome::TooLarge);
        // Also when the length arrives one byte per record.
        let framed = reframe(&[1, 0xff, 0xff, 0xff], &[1]);
        assert_eq!(parse(&framed[..framed.len() - 1], CAP), Verdict::NeedMore);
        assert_eq!(reject(&framed), Outcome::TooLarge);
    }

    #[test]
    fn the_cap_counts_every_byte_including_record_headers() {
        let len = CHROMIUM.len();
        assert_eq!(parse(CHROMIUM, 1000), Verdict::Reject(Outcome::TooLarge));
        assert_eq!(
            parse(&CHROMIUM[..5], 1000),
            Verdict::Reject(Outcome::TooLarge)
        );
        assert!(matches!(parse(CHROMIUM, len), Verdict::Hello(_)));
        assert_eq!(parse(CHROMIUM, len - 1), Verdict::Reject(Outcome::TooLarge));

        // 1982 one-byte records: 6 bytes each on the wire.
        let framed = reframe(FIXTURES[6].message(), &[1]);
        assert_eq!(framed.len(), 6 * (len - RECORD_HEADER_LEN));
        assert!(matches!(parse(&framed, framed.len()), Verdict::Hello(_)));
        assert_eq!(
            parse(&framed, framed.len() - 1),
            Verdict::Reject(Outcome::TooLarge)
        );
        // Once the handshake length is known (4 records in), the fewest bytes
        // that could still complete it are the 1978 missing ones in one more
        // record: 24 + 1978 + 5 = 2007. Below that, refused right there.
        assert_eq!(parse(&framed[..23], 2006), Verdict::NeedMore);
        assert_eq!(
            parse(&framed[..24], 2006),
            Verdict::Reject(Outcome::TooLarge)
        );
        assert_eq!(parse(&framed[..24], 2007), Verdict::NeedMore);
    }

    #[test]
    fn a_full_buffer_without_a_whole_hello_is_too_large() {
        let framed = reframe(FIXTURES[0].message(), &[1]);
        // Two one-byte records and half a header: the length is not known yet.
        assert_eq!(parse(&framed[..15], 16), Verdict::NeedMore);
        assert_eq!(parse(&framed[..15], 15), Verdict::Reject(Outcome::TooLarge));
        assert_eq!(parse(&[], 0), Verdict::Reject(Outcome::TooLarge));
    }

    #[test]
    fn sni_is_canonical() {
        assert_eq!(
            sni_of(&[host(b"MyApp.Example.ORG.")]),
            Ok(Some("myapp.example.org".into()))
        );
        assert_eq!(sni_of(&[host(b"a-b_c.d0")]), Ok(Some("a-b_c.d0".into())));
    }

    #[test]
    fn a_server_name_that_is_not_a_host_name_is_no_sni() {
        let bad: [&[u8]; 7] = [
            b"a\0b.example",
            b"a b.example",
            "é.example".as_bytes(),
            b"",
            b".",
            b"a..b",
            b"x\xff",
        ];
        for name in bad {
            assert_eq!(sni_of(&[host(name)]), Err(Outcome::NoSni), "{name:?}");
        }
    }

    #[test]
    fn server_name_without_a_host_name_entry_is_no_name() {
        assert_eq!(sni_of(&[]), Ok(None));
        assert_eq!(sni_of(&[sni_ext(&[])]), Ok(None));
        assert_eq!(sni_of(&[sni_ext(&[(1, b"other")])]), Ok(None));
        assert_eq!(
            sni_of(&[sni_ext(&[(1, b"other"), (0, b"a.example")])]),
            Ok(Some("a.example".into()))
        );
    }

    #[test]
    fn malformed_server_name_is_not_tls_never_a_missing_name() {
        let cases: [Vec<u8>; 6] = [
            vec![],                                 // no list at all
            vec![0, 10, 0, 0, 3, b'a', b'.', b'b'], // list longer than its data
            vec![0, 6, 0, 0, 9, b'a', b'.', b'b'],  // entry longer than the list
            vec![0, 2, 0, 0, 0xaa],                 // byte after the list
            vec![0, 1, 0],                          // entry cut in its length
            [
                vec![0, 12],
                [vec![0], vec16(b"a.b"), vec![0], vec16(b"c.d")].concat(),
            ]
            .concat()[..]
                .to_vec(), // two host names
        ];
        for data in cases {
            assert_eq!(
                sni_of(&[(EXT_SERVER_NAME, data.clone())]),
                Err(Outcome::NotTls),
                "{data:?}"
            );
        }
    }

    #[test]
    fn duplicate_extensions_are_not_tls() {
        assert_eq!(
            sni_of(&[host(b"a.example"), host(b"b.example")]),
            Err(Outcome::NotTls)
        );
        let alpn = alpn_ext(&[b"h2"]);
        assert_eq!(
            sni_of(&[alpn.clone(), host(b"a.example"), alpn]),
            Err(Outcome::NotTls)
        );
        let grease = (0x3a3a, vec![]);
        assert_eq!(sni_of(&[grease.clone(), grease]), Err(Outcome::NotTls));
        assert_eq!(sni_of(&[(0x3a3a, vec![]), (0x4a4a, vec![0])]), Ok(None));
    }

    #[test]
    fn max_version_skips_grease_and_drafts() {
        let version = |exts: &[(u16, Vec<u8>)]| match judge(exts) {
            Verdict::Hello(h) => h.max_version,
            other => panic!("{other:?}"),
        };
        assert_eq!(version(&[]), 0x0303);
        assert_eq!(version(&[versions_ext(&[0x0a0a, 0x0304, 0x0303])]), 0x0304);
        assert_eq!(version(&[versions_ext(&[0x0303, 0xfafa])]), 0x0303);
        assert_eq!(version(&[versions_ext(&[0x7f1c, 0x0303])]), 0x0303);
        assert_eq!(version(&[versions_ext(&[0x0a0a, 0x1a1a])]), 0);
        for bad in [
            vec![],
            vec![0],
            vec![2, 3],
            vec![3, 3, 4, 3],
            vec![2, 3, 4, 0],
        ] {
            assert_eq!(
                judge(&[(EXT_SUPPORTED_VERSIONS, bad)]),
                Verdict::Reject(Outcome::NotTls)
            );
        }
    }

    #[test]
    fn alpn_names_are_read_strictly() {
        let alpn = |exts: &[(u16, Vec<u8>)]| match judge(exts) {
            Verdict::Hello(h) => h.alpn,
            other => panic!("{other:?}"),
        };
        assert_eq!(alpn(&[alpn_ext(&[b"h2", b"\xffx"])]), ["h2", "\u{fffd}x"]);
        for bad in [
            vec![0, 0],
            vec![0, 1, 0],
            vec![0, 3, 2, b'h'],
            vec![0, 3, 2, b'h', b'2', 0],
        ] {
            assert_eq!(judge(&[(EXT_ALPN, bad)]), Verdict::Reject(Outcome::NotTls));
        }
        // A bad name in an otherwise broken hello is NotTls, not NoSni.
        assert_eq!(
            judge(&[host(b"a b"), (EXT_ALPN, vec![0, 0])]),
            Verdict::Reject(Outcome::NotTls)
        );
    }

    #[test]
    fn a_malformed_hello_body_is_not_tls() {
        let body = &build(&[host(b"a.example")])[HANDSHAKE_HEADER_LEN..];
        // A byte after the extension block.
        let trailing = handshake(&[body, &[0]].concat());
        // An extension whose data runs past the extension block.
        let mut long_block = body.to_vec();
        let at = long_block.len() - 2 - 14;
        long_block[at + 1] += 1;
        // Cut inside the extension block, length fixed up to match.
        let cut = handshake(&body[..body.len() - 3]);
        // Legacy version of another major.
        let mut major = body.to_vec();
        major[0] = 2;
        for msg in [
            trailing,
            handshake(&long_block),
            cut,
            major,
            handshake(&body[..20]),
        ] {
            assert_eq!(
                parse(&reframe(&msg, &[usize::MAX]), CAP),
                Verdict::Reject(Outcome::NotTls)
            );
        }
        // No extension block at all (SSL 3.0 style) is a hello without a name.
        let empty = build(&[]);
        let bare = handshake(&empty[HANDSHAKE_HEADER_LEN..empty.len() - 2]);
        let judged = hello(&reframe(&bare, &[usize::MAX]));
        assert_eq!((judged.sni, judged.max_version), (None, 0x0303));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_reframing_gives_the_same_hello_and_its_prefixes_need_more(
            which in 0..FIXTURES.len(),
            sizes in prop::collection::vec(1usize..700, 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let f = &FIXTURES[which];
            let framed = reframe(f.message(), &sizes);
            prop_assert_eq!(parse(&framed, CAP), Verdict::Hello(f.expected(framed.len())));
            let end = cut.index(framed.len());
            prop_assert_eq!(parse(&framed[..end], CAP), Verdict::NeedMore);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), cap in 0usize..20000) {
            let _ = parse(&bytes, cap);
            let mut framed = vec![22, 3, 1];
            framed.extend(&bytes);
            let _ = parse(&framed, cap);
        }

        #[test]
        fn a_mutated_fixture_never_panics(
            which in 0..FIXTURES.len(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            sizes in prop::collection::vec(1usize..300, 1..4),
        ) {
            let mut msg = FIXTURES[which].message().to_vec();
            let at = at.index(msg.len());
            msg[at] = byte;
            let _ = parse(&reframe(&msg, &sizes), CAP);
        }
    }

    #[test]
    fn the_verdict_does_not_depend_on_bytes_past_a_tiny_cap() {
        // Found by fuzzing: with a 3-byte cap the answer once depended on the split.
        assert_eq!(
            parse(b"\x16\x03\x01", 3),
            Verdict::Reject(Outcome::TooLarge)
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x99\x99", 3),
            Verdict::Reject(Outcome::TooLarge)
        );
    }
}
