//! Micro benchmarks (criterion) of the per-connection work that is pure CPU:
//! ClientHello parsing, route lookup, the guard's accept-time check, and
//! reading a trusted balancer's PROXY header.
//!
//! Run with `cargo bench --bench micro`; one group with `cargo bench --bench
//! micro -- lookup`. Under callgrind (instruction counts, no timing noise):
//! `valgrind --tool=callgrind target/release/deps/micro-* --bench --profile-time 2 parse`.

#![allow(
    clippy::expect_used,
    reason = "a bench's set-up failing is a bug in the bench: stop loudly"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipnet::IpNet;
use sniroute::clienthello::{self, Verdict};
use sniroute::config::{BanConfig, HostPattern, RateLimitConfig, Route};
use sniroute::guard::Guard;
use sniroute::guard::remote::{Decision, RemoteUpdate};
use sniroute::hostname::HostName;
use sniroute::outcome::Outcome;
use sniroute::proxyheader::{self, Endpoints};
use sniroute::routes::RouteTable;

/// openssl s_client 3.0: 321 bytes, the small end of real hellos.
const OPENSSL: &[u8] = include_bytes!("../tests/fixtures/clienthello/openssl.bin");
/// curl 7.88: 517 bytes (padded to 512 + header), the common size.
const CURL: &[u8] = include_bytes!("../tests/fixtures/clienthello/curl.bin");
/// Chromium with an X25519MLKEM768 key share: 1987 bytes, the post-quantum size.
const CHROMIUM: &[u8] = include_bytes!("../tests/fixtures/clienthello/chromium.bin");

/// The default `limits.max_client_hello`.
const MAX_HELLO: usize = 16384;
/// TLS record header: type, version, length.
const RECORD_HEADER_LEN: usize = 5;

/// Re-frames a one-record hello into `records` records of about equal size,
/// like a client (or a middlebox) that fragments its hello.
fn fragment(hello: &[u8], records: usize) -> Vec<u8> {
    let (header, payload) = hello.split_at(RECORD_HEADER_LEN);
    let chunk = payload.len().div_ceil(records);
    let mut out = Vec::with_capacity(hello.len() + records * RECORD_HEADER_LEN);
    for part in payload.chunks(chunk) {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn parse(c: &mut Criterion) {
    let three_records = fragment(CURL, 3);
    let inputs: [(&str, &[u8]); 4] = [
        ("openssl_321B", OPENSSL),
        ("curl_517B", CURL),
        ("chromium_pq_1987B", CHROMIUM),
        ("curl_3_records", &three_records),
    ];
    let mut group = c.benchmark_group("parse");
    for (name, bytes) in inputs {
        // Every input must be a hello naming the fixture, or the bench measures a reject.
        match clienthello::parse(bytes, MAX_HELLO) {
            Verdict::Hello(hello) => assert_eq!(
                hello.sni.as_ref().map(HostName::as_str),
                Some("fixture.example")
            ),
            other => panic!("{name}: {other:?}"),
        }
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), bytes, |b, bytes| {
            b.iter(|| clienthello::parse(black_box(bytes), MAX_HELLO));
        });
    }
    group.finish();
}

fn host(name: &str) -> HostName {
    HostName::parse(name.as_bytes()).expect("valid bench host name")
}

/// Route `i`: one exact name and one wildcard, as a config with many sites
/// would have them.
fn route(i: usize) -> Route {
    Route::new(
        format!("host{i}.example.org"),
        vec![
            HostPattern::Exact(host(&format!("host{i}.example.org"))),
            HostPattern::Wildcard(host(&format!("w{i}.example.net"))),
        ],
        vec!["127.0.0.1:443".parse().expect("literal address")],
    )
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for size in [10, 1_000, 10_000] {
        let routes: Vec<Route> = (0..size).map(route).collect();
        let table = RouteTable::new(&routes, None);
        let mid = size / 2;
        let cases = [
            ("exact", host(&format!("host{mid}.example.org")), Some(mid)),
            (
                "wildcard",
                host(&format!("a.b.w{mid}.example.net")),
                Some(mid),
            ),
            ("miss", host("nomatch.deep.sub.example.org"), None),
        ];
        for (kind, name, expected) in cases {
            assert_eq!(table.lookup(&name), expected, "{kind} with {size} routes");
            group.bench_with_input(BenchmarkId::new(kind, size), &name, |b, name| {
                b.iter(|| table.lookup(black_box(name)));
            });
        }
    }
    group.finish();
}

/// The shipped `[ban]` defaults, in memory only.
fn ban_config() -> BanConfig {
    BanConfig {
        enabled: true,
        max_retry: 1,
        find_time: Duration::from_secs(3600),
        ban_time: Duration::from_secs(365 * 86_400),
        ignore: Vec::new(),
        strike_on: vec![Outcome::UnknownSni, Outcome::NoSni, Outcome::NotTls],
        ipv6_prefix: 64,
        state_file: None,
    }
}

/// Distinct sources the "many clients" case cycles through: at ~100 ns per
/// admit a round takes ~0.1 s, so each source sees ~10 connections/s, under
/// the default 20/s, and the limiter keeps admitting.
const SOURCES: u32 = 1 << 20;

fn admit(c: &mut Criterion) {
    let mut group = c.benchmark_group("admit");
    let ban = ban_config();

    // One returning client with room in its bucket: the steady-state check
    // (ban lookup + one GCRA step). A huge quota keeps it always admitted.
    let generous = RateLimitConfig {
        per_ip: 1_000_000_000,
        burst: 1_000_000_000,
    };
    let guard = Guard::new(&ban, &generous).expect("guard");
    let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    assert_eq!(guard.admit(ip), Ok(()));
    group.bench_function("clean_ip_rate_limit_on", |b| {
        b.iter(|| guard.admit(black_box(ip)));
    });

    // Many clients, the default limit (20/s, burst 40): a keyed-map probe per
    // accept over a million-entry limiter.
    let default_rate = RateLimitConfig {
        per_ip: 20,
        burst: 40,
    };
    let guard = Guard::new(&ban, &default_rate).expect("guard");
    let mut next = 0u32;
    group.bench_function("many_clean_ips_default_limit", |b| {
        b.iter(|| {
            next = (next + 1) % SOURCES;
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | next));
            guard.admit(black_box(ip))
        });
    });

    // A banned source: what every connection of a banned scanner costs.
    let guard = Guard::new(&ban, &default_rate).expect("guard");
    let banned = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    guard.strike(banned, Outcome::UnknownSni);
    let verdict = guard.admit(banned);
    group.bench_function("banned_ip", |b| {
        b.iter(|| guard.admit(black_box(banned)));
    });
    if verdict != Err(Outcome::Banned) {
        eprintln!("note: admit(banned) gave {verdict:?}; is the guard implemented?");
    }

    // A community blocklist pulled from CrowdSec: 100,000 remote decisions
    // (/32s and a thousand IPv6 /64 ranges) beside the local table.
    let guard = Guard::new(&ban, &no_limit()).expect("guard");
    guard.apply_remote(RemoteUpdate::Full(blocklist(guard.unix_millis() / 1000)));
    let clean = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let listed = IpAddr::V4(Ipv4Addr::new(10, 0, 150, 7));
    group.bench_function("clean_ip_100k_remote_decisions", |b| {
        b.iter(|| guard.admit(black_box(clean)));
    });
    group.bench_function("remote_banned_ip_100k_remote_decisions", |b| {
        b.iter(|| guard.admit(black_box(listed)));
    });
    group.finish();
}

/// No rate limit: the ban lookups alone.
fn no_limit() -> RateLimitConfig {
    RateLimitConfig {
        per_ip: 0,
        burst: 0,
    }
}

/// 100,000 decisions ending in a day: 99,000 IPv4 addresses in 10/8 and
/// 1,000 IPv6 /64 ranges, the shape of CrowdSec's community blocklist.
fn blocklist(now: u64) -> Vec<Decision> {
    (0..100_000u32)
        .map(|i| {
            let net = if i < 99_000 {
                IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)))
            } else {
                let addr =
                    std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 64));
                IpNet::new(IpAddr::V6(addr), 64).expect("a /64")
            };
            Decision {
                net,
                expires_at: now + 86_400,
            }
        })
        .collect()
}

/// `proxyheader::parse` on what HAProxy sends (`send-proxy` and
/// `send-proxy-v2`), IPv4 and IPv6, followed by a hello it must not read.
fn proxy(c: &mut Criterion) {
    let v2_tcp4 = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&[203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 0x01, 0xbb]);
        h
    };
    let v2_tcp6 = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0xc8, 0x22, 0x01, 0xbb]);
        h
    };
    let inputs: [(&str, Vec<u8>); 4] = [
        (
            "v1_tcp4",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n".to_vec(),
        ),
        (
            "v1_tcp6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n".to_vec(),
        ),
        ("v2_tcp4", v2_tcp4),
        ("v2_tcp6", v2_tcp6),
    ];
    let mut group = c.benchmark_group("proxy_header");
    for (name, header) in inputs {
        let stream = [header.as_slice(), CURL].concat();
        match proxyheader::parse(&stream) {
            proxyheader::Verdict::Header(h) if matches!(h.endpoints, Endpoints::Tcp { .. }) => {
                assert_eq!(h.len, header.len(), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        group.bench_with_input(BenchmarkId::from_parameter(name), &stream, |b, stream| {
            b.iter(|| proxyheader::parse(black_box(stream)));
        });
    }
    group.finish();
}

/// Short runs: these functions take nanoseconds to microseconds, so two
/// seconds give millions of samples; the whole suite stays near a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, lookup, admit, proxy
}
criterion_main!(benches);
