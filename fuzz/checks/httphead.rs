//! The HTTP request-head reader's properties, checked on one fuzz input.
//! Shared by the libFuzzer target (`fuzz_targets/httphead.rs`) and the CI
//! replay of the seeds and regressions (`tests/hardening.rs`).
//!
//! The input stands for the bytes a client sends on an `[http]` listener,
//! read the way `peek` reads them: in reads of any size, an
//! `httphead::Reader` fed every growing prefix until its first verdict that
//! is not `NeedMore`.
//!
//! Input layout: `[cap_hi, cap_lo, split_seed, stream...]`, as for the
//! clienthello target: `cap` 0 means the default 16384, any other value is
//! taken as is (the config allows 512..=65536; the reader never looks past
//! `max_len`, so small caps are as final as large ones and reach `TooLarge`
//! inside the request line); `split_seed` 0 means one byte per read on short
//! streams, else pseudo-random reads of 1..=256 bytes.
//!
//! Checked, beyond "no panic, no hang, no huge allocation":
//! - the incremental reader and a fresh `parse` of the same prefix agree on
//!   every prefix (so the reader's saved state is never stale);
//! - finality: once a prefix gets a verdict, every longer prefix gets the
//!   same one (so no way of splitting the reads changes the answer);
//! - a request is decided exactly at its `len` (the end of the empty line):
//!   `len - 1` bytes say `NeedMore`, `len <= cap`, a cap of `len` takes it
//!   and a cap of `len - 1` refuses it as `TooLarge`;
//! - the host is canonical (`HostName::parse` of it gives it back) and no
//!   reject is other than `NotHttp`, `NoHost` or `TooLarge`;
//! - a backend cannot read the head another way: `httparse` (the parser of
//!   hyper and most Rust servers), when it takes the head at all, ends it at
//!   the same byte and finds the same host (in the one `Host` field, or in an
//!   absolute-form target), and never sees a whole head where `httphead`
//!   still waits for more. Where `httparse` refuses a head `httphead` took
//!   (an HTTP/1.2 version, say), the backend answers 400: no confusion.

use sniroute::hostname::HostName;
use sniroute::httphead::{Reader, Request, Verdict, parse};
use sniroute::outcome::Outcome;

/// The config default for `max_client_hello`.
const DEFAULT_CAP: usize = 16384;
/// One-byte reads cost a fresh parse per byte (quadratic); only for short streams.
const BYTEWISE_MAX: usize = 600;
/// Largest pseudo-random read.
const MAX_READ: u64 = 256;

/// Checks one fuzz input; panics on a broken property.
pub fn check_input(data: &[u8]) {
    let [cap_hi, cap_lo, seed, stream @ ..] = data else {
        return;
    };
    let cap = match usize::from(u16::from_be_bytes([*cap_hi, *cap_lo])) {
        0 => DEFAULT_CAP,
        n => n,
    };
    check(stream, cap, *seed);
}

fn check(stream: &[u8], cap: usize, seed: u8) {
    let mut reader = Reader::default();
    let mut decided: Option<(usize, Verdict)> = None;
    for end in read_bounds(stream.len(), seed) {
        let verdict = reader.read(&stream[..end], cap);
        assert_eq!(
            verdict,
            parse(&stream[..end], cap),
            "the reader and parse disagree at {end} bytes"
        );
        match &decided {
            None if verdict == Verdict::NeedMore => {}
            None => decided = Some((end, verdict)),
            Some((at, first)) => assert_eq!(
                &verdict, first,
                "verdict changed after it was given at {at} bytes (now {end})"
            ),
        }
    }
    match decided {
        Some((at, Verdict::Request(request))) => {
            check_request(stream, cap, at, &request);
            check_against_httparse(&stream[..request.len], &request);
        }
        Some((_, Verdict::Reject(outcome))) => assert!(
            matches!(
                outcome,
                Outcome::NotHttp | Outcome::NoHost | Outcome::TooLarge
            ),
            "unexpected reject {outcome:?}"
        ),
        Some((_, Verdict::NeedMore)) => unreachable!(),
        None => {
            assert!(
                stream.len() < cap,
                "{} bytes >= cap {cap} and still NeedMore",
                stream.len()
            );
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let theirs = httparse::Request::new(&mut headers).parse(stream);
            assert!(
                !matches!(theirs, Ok(httparse::Status::Complete(_))),
                "httparse reads a whole head where httphead needs more"
            );
        }
    }
}

/// Header fields `httparse` is given room for; a head with more is not
/// compared (`TooManyHeaders`).
const MAX_HEADERS: usize = 128;

/// `httparse` on the head `httphead` took: the same end, the same host.
fn check_against_httparse(head: &[u8], request: &Request) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut theirs = httparse::Request::new(&mut headers);
    let end = match theirs.parse(head) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => {
            panic!("httparse needs more where httphead saw the whole head")
        }
        // Refused by the backend too (or more fields than compared).
        Err(_) => return,
    };
    assert_eq!(end, request.len, "httparse ends the head elsewhere");
    let target = theirs.path.unwrap_or_default().as_bytes();
    let named = if target.starts_with(b"/") || target == b"*" {
        let mut hosts = theirs
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"));
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            panic!("httphead took a head without exactly one Host field");
        };
        host.value
    } else {
        let scheme_end = target.windows(3).position(|w| w == b"://");
        let rest = scheme_end.map_or(target, |at| &target[at + 3..]);
        rest.split(|&b| matches!(b, b'/' | b'?' | b'#'))
            .next()
            .unwrap_or_default()
    };
    let named = named.trim_ascii();
    let name = named.split(|&b| b == b':').next().unwrap_or_default();
    assert_eq!(
        HostName::parse(name).as_ref(),
        Some(&request.host),
        "httparse reads another host: {:?}",
        String::from_utf8_lossy(named)
    );
}

fn check_request(stream: &[u8], cap: usize, at: usize, request: &Request) {
    let len = request.len;
    assert!(
        len <= at && len <= cap && len > 0,
        "len {len}, decided at {at}, cap {cap}"
    );
    let whole = Verdict::Request(request.clone());
    assert_eq!(
        parse(&stream[..len], cap),
        whole,
        "not decided at its own len"
    );
    assert_eq!(
        parse(&stream[..len - 1], cap),
        Verdict::NeedMore,
        "decided before its len"
    );
    assert_eq!(
        parse(&stream[..len], len),
        whole,
        "a cap of exactly len refused it"
    );
    assert_eq!(
        parse(&stream[..len], len - 1),
        Verdict::Reject(Outcome::TooLarge),
        "a cap below len took it"
    );
    let host = &request.host;
    assert_eq!(
        HostName::parse(host.as_str().as_bytes()).as_ref(),
        Some(host)
    );
}

/// The end offsets of the reads, ascending, the last one the whole stream.
fn read_bounds(len: usize, seed: u8) -> Vec<usize> {
    if seed == 0 && len <= BYTEWISE_MAX {
        return (1..=len).collect();
    }
    let mut x = u64::from(seed) | 0x9e37_79b9_7f4a_7c00;
    let mut bounds = Vec::new();
    let mut at = 0;
    while at < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at = (at + 1 + (x % MAX_READ) as usize).min(len);
        bounds.push(at);
    }
    bounds
}
