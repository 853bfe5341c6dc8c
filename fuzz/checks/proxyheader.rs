//! The PROXY header reader's properties, checked on one fuzz input. Shared by
//! the libFuzzer target (`fuzz_targets/proxyheader.rs`) and the CI replay of
//! the seeds and regressions (`tests/hardening.rs`), so both check the same.
//!
//! The input stands for the bytes a trusted balancer sends, read the way
//! `peek` reads them: in reads of any size, `proxyheader::parse` called on
//! every growing prefix until its first verdict that is not `NeedMore`.
//!
//! Input layout: `[split_seed, stream...]`; `split_seed` picks the read sizes
//! (0 = one byte per read; else pseudo-random 1..=64).
//!
//! Checked, beyond "no panic, no hang, no allocation":
//! - finality: once a prefix gets a verdict, every longer prefix gets the
//!   same kind (header or invalid), and the same header;
//! - a header is decided exactly at its `len`: `len` bytes give it,
//!   `len - 1` bytes say `NeedMore`, and `len` is within the caps (107 bytes
//!   for v1, `MAX_LEN` for v2);
//! - the addresses of a TCP header survive a round trip through the PROXY
//!   header sniroute writes to its backends (v1 and v2).

use std::net::SocketAddr;

use sniroute::config::ProxyProtocol;
use sniroute::forward::proxy_header;
use sniroute::proxyheader::{Endpoints, Header, MAX_LEN, V1_MAX_LEN, Verdict, parse};

/// Largest pseudo-random read.
const MAX_READ: u64 = 64;

/// Checks one fuzz input; panics on a broken property.
pub fn check_input(data: &[u8]) {
    let [seed, stream @ ..] = data else {
        return;
    };
    check(stream, *seed);
}

/// The verdict's kind, to compare verdicts whose messages may differ.
fn kind(v: Verdict) -> Result<Option<Header>, ()> {
    match v {
        Verdict::NeedMore => Ok(None),
        Verdict::Header(h) => Ok(Some(h)),
        Verdict::Invalid(_) => Err(()),
    }
}

fn check(stream: &[u8], seed: u8) {
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut end = 0;
    let mut decided = None;
    while end < stream.len() {
        let step = if seed == 0 {
            1
        } else {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % MAX_READ + 1).unwrap_or(1)
        };
        end = (end + step).min(stream.len());
        let verdict = kind(parse(&stream[..end]));
        match decided {
            None if verdict != Ok(None) => decided = Some(verdict),
            Some(d) => assert_eq!(verdict, d, "the verdict changed at {end} bytes"),
            None => {}
        }
    }
    if let Some(Ok(Some(header))) = decided {
        check_header(stream, header);
    }
}

fn check_header(stream: &[u8], header: Header) {
    let len = header.len;
    assert!(len >= 1 && len <= stream.len());
    let cap = if header.version == 1 {
        V1_MAX_LEN
    } else {
        MAX_LEN
    };
    assert!(len <= cap, "a v{} header of {len} bytes", header.version);
    assert_eq!(parse(&stream[..len]), Verdict::Header(header));
    assert_eq!(parse(&stream[..len - 1]), Verdict::NeedMore);
    if let Endpoints::Tcp {
        source,
        destination,
    } = header.endpoints
    {
        for kind in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut out = Vec::new();
            proxy_header(kind, source, destination, &mut out);
            let Verdict::Header(back) = parse(&out) else {
                panic!("sniroute's own {kind:?} header does not parse: {out:?}");
            };
            assert_eq!(back.len, out.len());
            let Endpoints::Tcp {
                source: s,
                destination: d,
            } = back.endpoints
            else {
                panic!("sniroute's own {kind:?} header names no client");
            };
            assert_eq!(canonical(s), canonical(source));
            assert_eq!(canonical(d), canonical(destination));
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
