//! The ClientHello reader's properties, checked on one fuzz input. Shared by
//! the libFuzzer target (`fuzz_targets/clienthello.rs`) and the CI replay of
//! the seeds and regressions (`tests/hardening.rs`), so both check the same.
//!
//! The input stands for the bytes a client sends, read the way `peek` reads
//! them: in reads of any size, `clienthello::parse` called on every growing
//! prefix until its first verdict that is not `NeedMore`.
//!
//! Input layout: `[cap_hi, cap_lo, split_seed, stream...]`.
//! - `cap`: the `max_len` cap; 0 means the default 16384, any other value is
//!   taken as is. The config only allows 512..=65536, but `parse` judges the
//!   first `max_len` bytes alone, so its verdict is final for every cap, and
//!   caps of a few bytes reach the `TooLarge` paths inside a record header
//!   (see fuzz/README.md, Findings).
//! - `split_seed`: picks the read sizes (0 = one byte per read when the
//!   stream is short enough to afford it; else pseudo-random 1..=256).
//!
//! Checked, beyond "no panic, no hang, no huge allocation":
//! - finality: once a prefix gets a verdict, every longer prefix gets the same
//!   one (so no way of splitting the reads changes the answer);
//! - a hello is decided exactly at `len`: `len` bytes give it, `len - 1` bytes
//!   say `NeedMore`, `len <= cap`; a cap of exactly `len` still takes it and a
//!   cap of `len - 1` refuses it as `TooLarge`;
//! - the SNI is canonical (`HostName::parse` of it gives it back);
//! - a second reader agrees: `tls-parser`'s own extension parsers (lenient,
//!   which is why sniroute walks the extensions itself), on the same
//!   reassembled hello, find the same `host_name` and ALPN list whenever they
//!   read every extension.

use sniroute::clienthello::{ClientHello, Verdict, parse};
use sniroute::hostname::HostName;
use sniroute::outcome::Outcome;
use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};

/// The config default for `max_client_hello`.
const DEFAULT_CAP: usize = 16384;
/// One-byte reads cost a parse per byte (quadratic); only for short streams.
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
    let mut decided: Option<(usize, Verdict)> = None;
    for end in read_bounds(stream.len(), seed) {
        let verdict = parse(&stream[..end], cap);
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
        Some((at, Verdict::Hello(hello))) => check_hello(stream, cap, at, &hello),
        Some((_, Verdict::Reject(outcome))) => assert!(
            matches!(
                outcome,
                Outcome::NotTls | Outcome::TooLarge | Outcome::NoSni
            ),
            "unexpected reject {outcome:?}"
        ),
        Some((_, Verdict::NeedMore)) => unreachable!(),
        None => assert!(
            stream.len() < cap,
            "{} bytes >= cap {cap} and still NeedMore",
            stream.len()
        ),
    }
}

fn check_hello(stream: &[u8], cap: usize, at: usize, hello: &ClientHello) {
    let len = hello.len;
    assert!(
        len <= at && len <= cap && len > 0,
        "len {len}, decided at {at}, cap {cap}"
    );
    let whole = Verdict::Hello(hello.clone());
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
    if let Some(sni) = &hello.sni {
        assert_eq!(HostName::parse(sni.as_str().as_bytes()).as_ref(), Some(sni));
    }
    check_against_tls_parser(&stream[..len], hello);
}

/// tls-parser on the hello `parse` took (`records`: exactly its records).
fn check_against_tls_parser(records: &[u8], hello: &ClientHello) {
    let mut message = Vec::new();
    let mut rest = records;
    while let [_, _, _, hi, lo, after @ ..] = rest {
        let payload_len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some((payload, next)) = after.split_at_checked(payload_len) else {
            panic!("the hello's len ends inside a record");
        };
        message.extend_from_slice(payload);
        rest = next;
    }
    assert!(
        rest.is_empty(),
        "the hello's len ends inside a record header"
    );
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(theirs)))) =
        parse_tls_message_handshake(&message)
    else {
        panic!("tls-parser reads no ClientHello where parse took one");
    };
    let Ok((unread, extensions)) =
        parse_tls_client_hello_extensions(theirs.ext.unwrap_or_default())
    else {
        return;
    };
    if !unread.is_empty() {
        // It stopped at an extension it could not read (one sniroute does
        // not look inside): what it has is not the whole list.
        return;
    }
    let mut sni = None;
    let mut alpn = Vec::new();
    for extension in &extensions {
        match extension {
            TlsExtension::SNI(names) => {
                sni = names
                    .iter()
                    .find(|(kind, _)| *kind == SNIType::HostName)
                    .map(|(_, name)| HostName::parse(name));
            }
            TlsExtension::ALPN(names) => {
                alpn = names
                    .iter()
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect();
            }
            _ => {}
        }
    }
    assert_eq!(sni.flatten(), hello.sni, "tls-parser reads another SNI");
    assert_eq!(alpn, hello.alpn, "tls-parser reads another ALPN list");
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
