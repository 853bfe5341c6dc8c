use proptest::prelude::*;

use super::*;

/// v2 header: signature, version/command, family/transport, body.
fn v2_header(version_command: u8, family_transport: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family_transport);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The address block of TCP over IPv4, as HAProxy's `send-proxy-v2` writes it.
fn inet_body() -> Vec<u8> {
    let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1];
    body.extend_from_slice(&51234u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body
}

fn inet6_body() -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut body = src.octets().to_vec();
    body.extend_from_slice(&dst.octets());
    body.extend_from_slice(&[0xc8, 0x22, 0x01, 0xbb]);
    body
}

/// A TLV: type, 16-bit length, value.
fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn tcp(source: &str, destination: &str) -> Endpoints {
    Endpoints::Tcp {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

/// Every valid header of the tests, with what it must give.
fn valid() -> Vec<(Vec<u8>, u8, Endpoints)> {
    let v4 = tcp("203.0.113.7:51234", "192.0.2.1:443");
    let v6 = tcp("[2001:db8::7]:51234", "[2001:db8::1]:443");
    let mut with_tlvs = inet_body();
    // PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, an AWS VPC endpoint id (0xEA), NOOP, empty.
    with_tlvs.extend(tlv(0x01, b"h2"));
    with_tlvs.extend(tlv(0x02, b"app.example.org"));
    with_tlvs.extend(tlv(0xea, b"\x01vpce-08d2bf15fac5001c9"));
    with_tlvs.extend(tlv(0x04, &[0; 7]));
    with_tlvs.extend(tlv(0x05, b""));
    let longest_v1 = format!(
        "PROXY TCP6 {m} {m} 65535 65535\r\n",
        m = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    let longest_unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 16));
    let at_cap = {
        let mut body = inet_body();
        body.extend(tlv(0x04, &vec![0; MAX_LEN - V2_FIXED_LEN - INET_LEN - 3]));
        body
    };
    vec![
        (
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n".to_vec(),
            1,
            v4,
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n".to_vec(),
            1,
            v6,
        ),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
            1,
            tcp("0.0.0.0:0", "255.255.255.255:65535"),
        ),
        (
            b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n".to_vec(),
            1,
            tcp("[::ffff:203.0.113.7]:1", "[::1]:2"),
        ),
        (
            longest_v1.into_bytes(),
            1,
            tcp(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), 1, Endpoints::Unknown),
        (
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
            1,
            Endpoints::Unknown,
        ),
        (longest_unknown.into_bytes(), 1, Endpoints::Unknown),
        (v2_header(0x21, 0x11, &inet_body()), 2, v4),
        (v2_header(0x21, 0x21, &inet6_body()), 2, v6),
        (v2_header(0x21, 0x11, &with_tlvs), 2, v4),
        (v2_header(0x21, 0x11, &at_cap), 2, v4),
        // LOCAL: whatever the family and block, the balancer's own connection.
        (v2_header(0x20, 0x00, b""), 2, Endpoints::Local),
        (v2_header(0x20, 0x11, &inet_body()), 2, Endpoints::Local),
        (v2_header(0x20, 0x12, b"\x01\x02"), 2, Endpoints::Local),
        // AF_UNSPEC and AF_UNIX name no IP client.
        (v2_header(0x21, 0x00, b""), 2, Endpoints::Unknown),
        (v2_header(0x21, 0x00, b"ignored"), 2, Endpoints::Unknown),
        (
            v2_header(0x21, 0x31, &[b'/'; UNIX_LEN]),
            2,
            Endpoints::Unknown,
        ),
    ]
}

#[test]
fn every_valid_header_gives_its_endpoints_and_length() {
    for (bytes, version, endpoints) in valid() {
        let want = Verdict::Header(Header {
            version,
            endpoints,
            len: bytes.len(),
        });
        assert_eq!(parse(&bytes), want, "{bytes:?}");
    }
}

#[test]
fn every_strict_prefix_of_every_valid_header_needs_more() {
    for (bytes, ..) in valid() {
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Verdict::NeedMore, "{n} of {bytes:?}");
        }
    }
}

#[test]
fn the_bytes_after_the_header_are_left_alone() {
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, b'\n', b'\r'];
    for (bytes, ..) in valid() {
        let mut stream = bytes.clone();
        stream.extend_from_slice(&hello);
        let Verdict::Header(header) = parse(&stream) else {
            panic!("{stream:?}");
        };
        assert_eq!(header.len, bytes.len());
        assert_eq!(&stream[header.len..], &hello);
    }
}

#[test]
fn the_first_byte_refuses_what_is_not_a_proxy_header() {
    let tls = [0x16, 0x03, 0x01, 0x02, 0x00];
    for bytes in [&tls[..], b"GET / HTTP/1.1\r\n", b"\0", b"\n", b"proxy tcp4"] {
        assert!(matches!(parse(bytes), Verdict::Invalid(_)), "{bytes:?}");
        assert!(matches!(parse(&bytes[..1]), Verdict::Invalid(_)));
    }
}

#[test]
fn a_wrong_signature_is_refused_at_its_first_wrong_byte() {
    assert!(matches!(parse(b"PROX "), Verdict::Invalid(_)));
    assert!(matches!(parse(b"PROXYX"), Verdict::Invalid(_)));
    assert!(matches!(parse(b"\r\n\r\n\0\r\nQUIX"), Verdict::Invalid(_)));
    assert!(matches!(parse(b"\r\r"), Verdict::Invalid(_)));
}

fn invalid(bytes: &[u8]) -> bool {
    matches!(parse(bytes), Verdict::Invalid(_))
}

#[test]
fn malformed_v1_lines_are_refused() {
    let bad: [&[u8]; 20] = [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443 7\r\n",
        b"PROXY TCP4  203.0.113.7 192.0.2.1 51234 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443 \r\n",
        b"PROXY TCP5 203.0.113.7 192.0.2.1 51234 443\r\n",
        b"PROXY tcp4 203.0.113.7 192.0.2.1 51234 443\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 51234 443\r\n",
        b"PROXY TCP6 203.0.113.7 2001:db8::1 51234 443\r\n",
        b"PROXY TCP4 203.0.113.07 192.0.2.1 51234 443\r\n",
        b"PROXY TCP4 203.0.113 192.0.2.1 51234 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 051234 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 +5123 443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5123 0443\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 443\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\x00\n",
    ];
    for bytes in bad {
        assert!(invalid(bytes), "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn a_v1_line_with_a_control_byte_is_refused_at_that_byte() {
    assert!(invalid(b"PROXY TCP4 \x00"));
    assert!(invalid(b"PROXY TCP4 \xff"));
    assert!(invalid(b"PROXY TCP4\t"));
    // A CR must be followed by LF.
    assert_eq!(parse(b"PROXY UNKNOWN\r"), Verdict::NeedMore);
    assert!(invalid(b"PROXY UNKNOWN\rx"));
}

#[test]
fn a_v1_line_without_an_end_within_107_bytes_is_refused_at_byte_107() {
    let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
    let long = long.as_bytes();
    assert_eq!(parse(&long[..V1_MAX_LEN - 1]), Verdict::NeedMore);
    assert!(invalid(&long[..V1_MAX_LEN]));
    assert!(invalid(long));
    // 108 bytes with CRLF: one too many.
    let line = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
    assert_eq!(line.len(), V1_MAX_LEN + 1);
    assert!(invalid(line.as_bytes()));
}

#[test]
fn v2_version_command_family_and_transport_are_checked_as_they_arrive() {
    let prefix = |vc: u8, ft: u8| {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[vc, ft]);
        out
    };
    assert!(invalid(&prefix(0x11, 0x11)[..13]), "version 1 in binary");
    assert!(invalid(&prefix(0x31, 0x11)[..13]), "version 3");
    assert!(invalid(&prefix(0x22, 0x11)[..13]), "command 2");
    assert!(invalid(&prefix(0x2f, 0x11)[..13]), "command 15");
    assert!(invalid(&prefix(0x21, 0x41)), "family 4");
    assert!(invalid(&prefix(0x21, 0x13)), "transport 3");
    assert_eq!(parse(&prefix(0x21, 0x11)), Verdict::NeedMore);
}

#[test]
fn a_v2_header_over_the_cap_is_refused_from_its_length_field() {
    let mut head = V2_SIGNATURE.to_vec();
    head.extend_from_slice(&[0x21, 0x11]);
    head.extend_from_slice(
        &u16::try_from(MAX_LEN - V2_FIXED_LEN + 1)
            .unwrap()
            .to_be_bytes(),
    );
    assert!(invalid(&head));
    head[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(invalid(&head));
    head[14..16].copy_from_slice(&u16::try_from(MAX_LEN - V2_FIXED_LEN).unwrap().to_be_bytes());
    assert_eq!(parse(&head), Verdict::NeedMore);
}

#[test]
fn a_v2_address_block_too_short_for_its_family_is_refused() {
    assert!(invalid(&v2_header(0x21, 0x11, &inet_body()[..11])));
    assert!(invalid(&v2_header(0x21, 0x21, &inet6_body()[..35])));
    assert!(invalid(&v2_header(0x21, 0x21, &inet_body())));
    assert!(invalid(&v2_header(0x21, 0x31, &[0; UNIX_LEN - 1])));
    // Known from the length field alone, before the body arrives.
    assert!(invalid(&v2_header(0x21, 0x11, &inet_body()[..11])[..16]));
}

#[test]
fn v2_over_ip_but_not_tcp_is_refused() {
    assert!(invalid(&v2_header(0x21, 0x12, &inet_body())), "UDP");
    assert!(
        invalid(&v2_header(0x21, 0x10, &inet_body())),
        "no transport"
    );
    assert!(invalid(&v2_header(0x21, 0x22, &inet6_body())), "UDP6");
}

#[test]
fn v2_tlvs_must_lie_within_the_header() {
    let mut body = inet_body();
    body.push(0x04);
    assert!(invalid(&v2_header(0x21, 0x11, &body)), "one byte of a TLV");
    let mut body = inet_body();
    body.extend_from_slice(&[0x04, 0x00]);
    assert!(invalid(&v2_header(0x21, 0x11, &body)), "two bytes of a TLV");
    let mut body = inet_body();
    body.extend(tlv(0x04, b"abcd"));
    body.pop();
    assert!(invalid(&v2_header(0x21, 0x11, &body)), "a TLV past the end");
    let mut body = inet_body();
    body.extend(tlv(0x02, b"x"));
    body.extend(tlv(0x20, &[0; 5]));
    let Verdict::Header(h) = parse(&v2_header(0x21, 0x11, &body)) else {
        panic!("TLVs that tile the rest are fine");
    };
    assert_eq!(h.len, 16 + body.len());
}

/// The verdict's variant, to compare verdicts whose messages may differ.
fn kind(v: Verdict) -> Result<Option<Header>, ()> {
    match v {
        Verdict::NeedMore => Ok(None),
        Verdict::Header(h) => Ok(Some(h)),
        Verdict::Invalid(_) => Err(()),
    }
}

/// Once a prefix gets a verdict, every longer one gets the same.
fn check_final(bytes: &[u8]) {
    let mut decided = None;
    for n in 0..=bytes.len() {
        let v = kind(parse(&bytes[..n]));
        match decided {
            None if v != Ok(None) => decided = Some(v),
            Some(d) => assert_eq!(v, d, "{n} bytes of {bytes:?}"),
            None => {}
        }
    }
}

#[test]
fn verdicts_are_final_for_every_valid_header_with_anything_after_it() {
    for (mut bytes, ..) in valid() {
        bytes.extend_from_slice(b"\r\n\0garbage\n");
        check_final(&bytes);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_verdicts_are_final(
        bytes in prop::collection::vec(any::<u8>(), 0..300)
    ) {
        check_final(&bytes);
    }

    #[test]
    fn mutated_headers_never_panic_and_verdicts_are_final(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let all = valid();
        let mut bytes = all[pick.index(all.len())].0.clone();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        check_final(&bytes);
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

proptest! {
    #[test]
    fn what_sniroute_writes_to_backends_reads_back_the_same(
        src in any::<SocketAddr>(),
        dst in any::<SocketAddr>(),
        v2 in any::<bool>(),
    ) {
        use crate::config::ProxyProtocol;
        let kind = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
        let mut out = Vec::new();
        crate::forward::proxy_header(kind, src, dst, &mut out);
        let Verdict::Header(h) = parse(&out) else {
            panic!("{out:?}");
        };
        prop_assert_eq!(h.len, out.len());
        let Endpoints::Tcp { source, destination } = h.endpoints else {
            panic!("{h:?}");
        };
        prop_assert_eq!(canonical(source), canonical(src));
        prop_assert_eq!(canonical(destination), canonical(dst));
    }
}
