//! PURE: bytes in, verdict out, for the head of the first HTTP/1.x request on
//! an `[http]` listener: which host it is for. No I/O, no allocation, no
//! panic on any input; the plain-HTTP twin of `clienthello`.
//!
//! [`parse`] judges every byte received so far, like `clienthello::parse`:
//! every strict prefix of a valid head answers `NeedMore`, and a reject comes
//! as soon as the bytes so far rule out every valid continuation. [`Reader`]
//! gives the same verdicts incrementally: fed the growing buffer after each
//! read, it looks at each byte once, so a client dribbling its head a byte
//! per packet costs linear time, not quadratic.
//!
//! Decisions, and why. The head goes to the backend untouched, so what counts
//! is that sniroute and the backend cannot read a different host out of it:
//! anything a server might read two ways is refused rather than guessed.
//! - **Request line**: `METHOD SP TARGET SP HTTP/1.d`, single spaces. The
//!   method is `[A-Z_-]`, at most [`MAX_METHOD`] bytes (nginx's rule), so TLS,
//!   SSLv2, a PROXY header and most garbage are `NotHttp` at the first
//!   bytes. HTTP/0.9 (no version), HTTP/2's preface (`PRI * HTTP/2.0`) and
//!   any other version are `NotHttp`. `CONNECT` is `NotHttp`: sniroute is no
//!   forward proxy.
//! - **Targets**: origin-form (`/path`), `*`, or absolute-form with scheme
//!   `http`/`https` (`http://name[:port]/...`). Absolute-form names the host
//!   the request is for (RFC 9112 §3.2.2: the server ignores `Host` then), so
//!   a `Host` naming another host is `NotHttp`, and so is user info
//!   (`http://a@b/`). Anything else is `NotHttp`.
//! - **Lines** end in CRLF or a bare LF (RFC 9112 §2.2 lets servers take
//!   both; nginx does, so a bare LF must split lines here too). A CR not
//!   followed by LF, NUL and other control bytes are `NotHttp`.
//! - **Header fields**: `NAME:VALUE`, the name a token with no space before
//!   the colon (RFC 9112 §5.1). A line starting with a space or tab (obs-fold,
//!   or whitespace before the first field) is `NotHttp`: backends unfold it
//!   differently or not at all.
//! - **Host**: the field name in any case; its value, spaces and tabs trimmed,
//!   is `name[:port]` with the port digits only (at most 65535) dropped and
//!   the name canonicalised by [`HostName::parse`] (trailing dot dropped, lower
//!   case). A value that is not a host name (an IP literal in brackets, spaces,
//!   commas, empty) is `NoHost`, like an SNI that is not a host name. A second
//!   `Host` field is `NotHttp` (RFC 9112 §3.2: a server must refuse it). No
//!   `Host` at all is `NoHost`, for HTTP/1.0 too, unless a 1.0 request names
//!   its host in an absolute-form target.
//! - **Size**: `max_len` counts every byte up to the empty line that ends
//!   the head. A buffer holding `max_len` bytes without a whole head is
//!   `TooLarge`; bytes past `max_len` are never looked at.
//!
//! Only the first request of a connection is read: later requests on a
//! kept-alive connection go to the same backend (as with sniproxy, and as
//! with TLS, where the name inside the encrypted stream is the backend's
//! business).

use crate::hostname::HostName;
use crate::outcome::Outcome;

/// Longest method taken: the longest registered method
/// (`UPDATEREDIRECTREF`, 17 bytes) with room to spare, short enough that a
/// run of capital letters that is not a method is refused early.
pub const MAX_METHOD: usize = 32;
/// What the request line must say after the target, before the minor digit.
const VERSION_PREFIX: &[u8] = b"HTTP/1.";
/// Longest port: 65535.
const MAX_PORT: u32 = 65_535;

/// What a complete request head told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The host the request is for, canonical: from `Host`, or from an
    /// absolute-form target (then `Host`, if any, names the same host).
    pub host: HostName,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Bytes of the head, up to and including the empty line that ends it.
    pub len: usize,
}

/// The verdict on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to decide yet; read more.
    NeedMore,
    /// A complete, well-formed request head naming a host.
    Request(Request),
    /// Rejected: `NotHttp`, `NoHost` or `TooLarge`.
    Reject(Outcome),
}

/// Judges `buf` (every byte received so far) against `max_len` (the cap on
/// the head's bytes).
pub fn parse(buf: &[u8], max_len: usize) -> Verdict {
    Reader::default().read(buf, max_len)
}

/// Where the reader is inside the current line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// In the request line's method.
    #[default]
    Method,
    /// In the request target (after the first space).
    Target,
    /// Matched this many bytes of `HTTP/1.` + digit (after the second space).
    Version(usize),
    /// At the start of a header line (or of the empty line ending the head).
    LineStart,
    /// In a header field name.
    Name,
    /// In a header field value (after the colon).
    Value,
    /// After a CR: only LF may follow.
    Cr,
}

/// The incremental form of [`parse`]: [`Reader::read`] takes the whole buffer
/// each time (it must begin with what it was given before) and looks only
/// at the bytes it has not seen. Its verdicts are those of [`parse`] on the
/// same bytes.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    /// Bytes looked at so far.
    at: usize,
    state: State,
    /// Where the current line starts.
    line_start: usize,
    /// Whether the current line is the request line.
    in_headers: bool,
    /// Where the target starts and ends (request line only).
    target: (usize, usize),
    /// Where the current header line's colon is.
    colon: usize,
    /// The minor version digit.
    minor: u8,
    /// The host named by an absolute-form target.
    uri_host: Option<HostName>,
    /// The `Host` field's host, once seen.
    host: Option<HostName>,
    /// A `Host` field was seen (its value was a host name, or it was refused).
    host_seen: bool,
    /// The verdict, once given: it never changes.
    done: Option<Verdict>,
}

impl Reader {
    /// Judges `buf` (every byte received so far, starting with every byte
    /// given before) against `max_len`.
    pub fn read(&mut self, buf: &[u8], max_len: usize) -> Verdict {
        if let Some(verdict) = &self.done {
            return verdict.clone();
        }
        let buf = buf.get(..max_len).unwrap_or(buf);
        while let Some(&byte) = buf.get(self.at) {
            let at = self.at;
            self.at += 1;
            if let Some(verdict) = self.step(buf, at, byte) {
                self.done = Some(verdict.clone());
                return verdict;
            }
        }
        if buf.len() >= max_len {
            let verdict = Verdict::Reject(Outcome::TooLarge);
            self.done = Some(verdict.clone());
            return verdict;
        }
        Verdict::NeedMore
    }

    /// Takes the byte at `at`; `Some` once the head is judged.
    fn step(&mut self, buf: &[u8], at: usize, byte: u8) -> Option<Verdict> {
        let refuse = Some(Verdict::Reject(Outcome::NotHttp));
        match (self.state, byte) {
            (State::Method, b'A'..=b'Z' | b'_' | b'-') if at - self.line_start < MAX_METHOD => {}
            (State::Method, b' ') if at > self.line_start => {
                if buf.get(self.line_start..at) == Some(b"CONNECT") {
                    return refuse;
                }
                self.target = (at + 1, at + 1);
                self.state = State::Target;
            }
            (State::Target, b' ') if at > self.target.0 => {
                self.target.1 = at;
                self.state = State::Version(0);
            }
            (State::Target, b'!'..=b'~' | 0x80..=0xff) => {}
            (State::Version(i), _) if VERSION_PREFIX.get(i) == Some(&byte) => {
                self.state = State::Version(i + 1);
            }
            (State::Version(i), b'0'..=b'9') if i == VERSION_PREFIX.len() => {
                self.minor = byte - b'0';
                self.state = State::Version(i + 1);
            }
            (State::Version(i), b'\r') if i > VERSION_PREFIX.len() => self.state = State::Cr,
            (State::Version(i), b'\n') if i > VERSION_PREFIX.len() => {
                return self.end_line(buf, at, at);
            }
            (State::LineStart, b'\r') => self.state = State::Cr,
            (State::LineStart, b'\n') => return self.end_line(buf, at, at),
            (State::LineStart | State::Name, b) if is_tchar(b) => self.state = State::Name,
            (State::Name, b':') => {
                self.colon = at;
                self.state = State::Value;
            }
            (State::Value, b'\t' | b' '..=b'~' | 0x80..=0xff) => {}
            (State::Value, b'\r') => self.state = State::Cr,
            (State::Value, b'\n') => return self.end_line(buf, at, at),
            (State::Cr, b'\n') => return self.end_line(buf, at - 1, at),
            _ => return refuse,
        }
        None
    }

    /// A line ended: its text is `line_start..end`, its LF at `lf`.
    fn end_line(&mut self, buf: &[u8], end: usize, lf: usize) -> Option<Verdict> {
        let line = buf.get(self.line_start..end).unwrap_or_default();
        let verdict = if !self.in_headers {
            self.in_headers = true;
            let target = buf.get(self.target.0..self.target.1).unwrap_or_default();
            self.request_target(target)
        } else if line.is_empty() {
            return Some(self.finish(lf + 1));
        } else {
            self.field(line)
        };
        self.line_start = lf + 1;
        self.state = State::LineStart;
        verdict
    }

    /// Checks the request target; notes the host of an absolute-form one.
    fn request_target(&mut self, target: &[u8]) -> Option<Verdict> {
        if target.first() == Some(&b'/') || target == b"*" {
            return None;
        }
        let refuse = Some(Verdict::Reject(Outcome::NotHttp));
        let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
            return refuse;
        };
        let scheme = target.get(..scheme_end).unwrap_or_default();
        if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
            return refuse;
        }
        let rest = target.get(scheme_end + 3..).unwrap_or_default();
        let authority = rest
            .split(|&b| matches!(b, b'/' | b'?' | b'#'))
            .next()
            .unwrap_or_default();
        if authority.contains(&b'@') {
            return refuse;
        }
        match host_of(authority) {
            Some(host) => self.uri_host = Some(host),
            None => return Some(Verdict::Reject(Outcome::NoHost)),
        }
        None
    }

    /// Checks a header field line (`NAME:VALUE`, already checked bytewise).
    fn field(&mut self, line: &[u8]) -> Option<Verdict> {
        let colon = self.colon.checked_sub(self.line_start)?;
        let (name, value) = (line.get(..colon)?, line.get(colon + 1..)?);
        if !name.eq_ignore_ascii_case(b"host") {
            return None;
        }
        if std::mem::replace(&mut self.host_seen, true) {
            return Some(Verdict::Reject(Outcome::NotHttp));
        }
        match host_of(value.trim_ascii()) {
            Some(host) => {
                self.host = Some(host);
                None
            }
            None => Some(Verdict::Reject(Outcome::NoHost)),
        }
    }

    /// The head is whole (`len` bytes): the host it is for, or why not.
    fn finish(&mut self, len: usize) -> Verdict {
        let host = match (self.uri_host.take(), self.host.take()) {
            (Some(uri), Some(field)) if uri != field => return Verdict::Reject(Outcome::NotHttp),
            (Some(uri), _) if self.minor == 0 || self.host_seen => uri,
            (None, Some(field)) => field,
            _ => return Verdict::Reject(Outcome::NoHost),
        };
        Verdict::Request(Request {
            host,
            minor: self.minor,
            len,
        })
    }
}

/// `name[:port]` -> the canonical name; `None` if it is not one (an IP
/// literal in brackets, a bad port, anything [`HostName::parse`] refuses).
fn host_of(value: &[u8]) -> Option<HostName> {
    let (name, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (value.get(..colon)?, value.get(colon + 1..)?),
        None => (value, &b""[..]),
    };
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= MAX_PORT;
    if !port_ok {
        return None;
    }
    HostName::parse(name)
}

/// A token character (RFC 9110 §5.6.2): what field names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 16_384;

    /// What real clients send: curl, a browser, wget, HTTP/1.0, absolute-form.
    const CURL: &[u8] =
        b"GET / HTTP/1.1\r\nHost: app.test:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    const FIREFOX: &[u8] = b"GET /index.html?q=1 HTTP/1.1\r\nHost: App.Test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\n\r\n";
    const HTTP10: &[u8] = b"GET / HTTP/1.0\r\nhost: app.test.\r\n\r\n";
    const BARE_LF: &[u8] = b"HEAD / HTTP/1.1\nHOST:app.test\n\n";
    const ABSOLUTE: &[u8] = b"GET http://app.test:80/x HTTP/1.1\r\nHost: app.test\r\n\r\n";
    const ABSOLUTE10: &[u8] = b"GET HTTP://APP.test/ HTTP/1.0\r\n\r\n";
    const OPTIONS: &[u8] = b"OPTIONS * HTTP/1.1\r\nHost:\tapp.test\t \r\n\r\n";

    const VALID: [&[u8]; 7] = [
        CURL, FIREFOX, HTTP10, BARE_LF, ABSOLUTE, ABSOLUTE10, OPTIONS,
    ];

    fn request(buf: &[u8]) -> Request {
        match parse(buf, CAP) {
            Verdict::Request(r) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn reject(buf: &[u8]) -> Outcome {
        match parse(buf, CAP) {
            Verdict::Reject(o) => o,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// A head with these header lines after `GET / HTTP/1.1`.
    fn with_fields(fields: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\n{fields}\r\n\r\n").into_bytes()
    }

    #[test]
    fn real_requests_name_their_host() {
        for head in VALID {
            let r = request(head);
            assert_eq!(r.host.as_str(), "app.test");
            assert_eq!(r.len, head.len());
        }
        assert_eq!(request(CURL).minor, 1);
        assert_eq!(request(HTTP10).minor, 0);
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        for head in VALID {
            for end in 0..head.len() {
                assert_eq!(parse(&head[..end], CAP), Verdict::NeedMore, "{end}");
            }
        }
    }

    #[test]
    fn the_reader_fed_byte_by_byte_agrees_with_parse() {
        let mut inputs: Vec<Vec<u8>> = VALID.iter().map(|h| h.to_vec()).collect();
        inputs.push(with_fields("Host: a\r\nHost: a"));
        inputs.push(b"\x16\x03\x01\x02\x00".to_vec());
        inputs.push(with_fields("Host: [::1]:80"));
        for input in inputs {
            let mut reader = Reader::default();
            for end in 0..=input.len() {
                assert_eq!(reader.read(&input[..end], CAP), parse(&input[..end], CAP));
            }
        }
    }

    #[test]
    fn bytes_after_the_head_are_left_alone() {
        let mut with_body = CURL.to_vec();
        with_body.extend(b"POST / HTTP/1.1\r\nHost: other.test\r\n\r\n\x00\x01");
        assert_eq!(request(&with_body).len, CURL.len());
        assert_eq!(request(&with_body).host.as_str(), "app.test");
    }

    #[test]
    fn the_first_bytes_refuse_what_is_not_http() {
        for first in [0x16u8, 0x80, 0x00, b'g', b' ', b'\r', b'\n', b'1', 0xff] {
            assert_eq!(reject(&[first]), Outcome::NotHttp, "{first:#x}");
        }
        for bad in [
            &b"G\x00"[..],
            b"GET  /",
            b"GET /\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET / HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / http/1.1\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET /a b HTTP/1.1\r\n",
            b"GET /\x7f HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ] {
            assert_eq!(
                reject(bad),
                Outcome::NotHttp,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_method = [b'A'; MAX_METHOD + 1];
        assert_eq!(reject(&long_method), Outcome::NotHttp);
        assert_eq!(parse(&long_method[..MAX_METHOD], CAP), Verdict::NeedMore);
    }

    #[test]
    fn connect_and_foreign_targets_are_refused() {
        for bad in [
            &b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n"[..],
            b"CONNECT ",
            b"GET app.test HTTP/1.1\r\n",
            b"GET ftp://app.test/ HTTP/1.1\r\n",
            b"GET http://user@app.test/ HTTP/1.1\r\n",
            b"GET http://evil.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
            b"GET http://app.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        ] {
            assert_eq!(
                reject(bad),
                Outcome::NotHttp,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Same host, other case, port or trailing dot: the same name.
        let same = b"GET https://APP.test.:8443/ HTTP/1.1\r\nHost: app.test\r\n\r\n";
        assert_eq!(request(same).host.as_str(), "app.test");
        assert_eq!(
            reject(b"GET http://[::1]/ HTTP/1.1\r\nHost: app.test\r\n\r\n"),
            Outcome::NoHost
        );
        assert_eq!(reject(b"GET http:///x HTTP/1.1\r\n"), Outcome::NoHost);
    }

    #[test]
    fn no_host_is_no_host_for_every_version() {
        assert_eq!(reject(b"GET / HTTP/1.0\r\n\r\n"), Outcome::NoHost);
        assert_eq!(reject(b"GET / HTTP/1.1\r\n\r\n"), Outcome::NoHost);
        assert_eq!(reject(&with_fields("Accept: */*")), Outcome::NoHost);
        // HTTP/1.1 must send Host even with an absolute-form target.
        assert_eq!(
            reject(b"GET http://app.test/ HTTP/1.1\r\n\r\n"),
            Outcome::NoHost
        );
        for bad in [
            "Host:",
            "Host:   ",
            "Host: [::1]:80",
            "Host: 127.0.0.1:80:80",
            "Host: app.test:http",
            "Host: app.test:65536",
            "Host: app.test:123456",
            "Host: a pp.test",
            "Host: app.test, evil.test",
            "Host: app.test/x",
            "Host: app..test",
            "Host: user@app.test",
            "Host: app.test\u{ff}",
        ] {
            assert_eq!(reject(&with_fields(bad)), Outcome::NoHost, "{bad:?}");
        }
    }

    #[test]
    fn host_is_canonical() {
        for (field, host) in [
            ("Host: APP.Test", "app.test"),
            ("hOsT: app.test.:443", "app.test"),
            ("Host: app.test:", "app.test"),
            ("Host: app.test:65535", "app.test"),
            ("Host: 203.0.113.7:80", "203.0.113.7"),
            (
                "X-Host: evil.test\r\nHost: app.test\r\nX-Forwarded-Host: evil.test",
                "app.test",
            ),
        ] {
            assert_eq!(
                request(&with_fields(field)).host.as_str(),
                host,
                "{field:?}"
            );
        }
    }

    #[test]
    fn header_tricks_are_refused() {
        for bad in [
            "Host: app.test\r\nHost: app.test",
            "Host: app.test\r\nhost: evil.test",
            "Host: app.test\nHost: evil.test",
            "Host : app.test",
            "Host\t: app.test",
            " Host: app.test",
            "Host: app.test\r\n evil.test",
            "Host: app.test\r\n\tevil.test",
            "X: y\r\n Host: evil.test",
            "Host: app\rtest",
            "Host: app.test\r",
            "Host: app.test\x00",
            "Ho\x00st: app.test",
            "Ho(st: app.test",
            ": app.test",
            "no colon here",
            "X: \x01",
            "X: \x7f",
        ] {
            let head = with_fields(bad);
            assert_eq!(reject(&head), Outcome::NotHttp, "{bad:?}");
        }
    }

    #[test]
    fn the_cap_counts_the_whole_head() {
        let len = CURL.len();
        assert_eq!(parse(CURL, len), Verdict::Request(request(CURL)));
        assert_eq!(parse(CURL, len - 1), Verdict::Reject(Outcome::TooLarge));
        assert_eq!(parse(&CURL[..20], 20), Verdict::Reject(Outcome::TooLarge));
        assert_eq!(parse(&CURL[..19], 20), Verdict::NeedMore);
        // A refusal inside the cap wins; bytes past the cap are never read.
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\x00", 17),
            Verdict::Reject(Outcome::NotHttp)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\x00", 16),
            Verdict::Reject(Outcome::TooLarge)
        );
        let mut huge = b"GET /".to_vec();
        huge.resize(CAP * 2, b'a');
        assert_eq!(reject(&huge), Outcome::TooLarge);
    }
}
