//! The PROXY protocol header (HAProxy spec, v1 text and v2 binary) that tells
//! a backend the real client address. Pure: addresses in, bytes out.
//!
//! Address families: an IPv4-mapped IPv6 address is the IPv4 address it maps,
//! so a pair that is IPv4 after that mapping is written as TCP4 / AF_INET; a
//! mixed pair (one IPv4, one real IPv6) is written as IPv6 on both sides, the
//! IPv4 one as `::ffff:a.b.c.d`, since the header has one family for both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ProxyProtocol;

/// The 12-byte signature that starts every v2 header (spec section 2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 (high nibble) and command PROXY (low nibble 1).
const V2_VERSION_PROXY: u8 = 0x21;
/// AF_INET (high nibble 1) + SOCK_STREAM (low nibble 1).
const V2_TCP4: u8 = 0x11;
/// AF_INET6 (high nibble 2) + SOCK_STREAM (low nibble 1).
const V2_TCP6: u8 = 0x21;
/// Address block length for TCP over IPv4: 4 + 4 bytes of addresses, 2 + 2 of ports.
const V2_TCP4_LEN: u16 = 12;
/// Address block length for TCP over IPv6: 16 + 16 bytes of addresses, 2 + 2 of ports.
const V2_TCP6_LEN: u16 = 36;

/// The pair of endpoints, in one address family.
enum Pair {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Pair {
    fn of(client: IpAddr, local: IpAddr) -> Pair {
        match (client.to_canonical(), local.to_canonical()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Pair::V4 { src, dst },
            (src, dst) => Pair::V6 {
                src: as_v6(src),
                dst: as_v6(dst),
            },
        }
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends the PROXY protocol header (`kind` v1 or v2; nothing for `None`) that
/// tells the backend the client is `client` and it connected to `local`.
pub fn proxy_header(kind: ProxyProtocol, client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    let pair = Pair::of(client.ip(), local.ip());
    let (sport, dport) = (client.port(), local.port());
    match kind {
        ProxyProtocol::None => {}
        ProxyProtocol::V1 => v1(&pair, sport, dport, out),
        ProxyProtocol::V2 => v2(&pair, sport, dport, out),
    }
}

/// `PROXY TCP4 src dst sport dport\r\n` (at most 104 bytes, spec section 2.1).
fn v1(pair: &Pair, sport: u16, dport: u16, out: &mut Vec<u8>) {
    let line = match pair {
        Pair::V4 { src, dst } => format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n"),
        Pair::V6 { src, dst } => format!("PROXY TCP6 {src} {dst} {sport} {dport}\r\n"),
    };
    out.extend_from_slice(line.as_bytes());
}

/// Signature, version/command, family/protocol, length, addresses, ports.
fn v2(pair: &Pair, sport: u16, dport: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    match pair {
        Pair::V4 { src, dst } => {
            out.push(V2_TCP4);
            out.extend_from_slice(&V2_TCP4_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        Pair::V6 { src, dst } => {
            out.push(V2_TCP6);
            out.extend_from_slice(&V2_TCP6_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
    }
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: ProxyProtocol, client: &str, local: &str) -> Vec<u8> {
        let mut out = b"keep".to_vec();
        proxy_header(
            kind,
            client.parse().unwrap(),
            local.parse().unwrap(),
            &mut out,
        );
        assert_eq!(&out[..4], b"keep", "appends, never overwrites");
        out.split_off(4)
    }

    #[test]
    fn none_writes_nothing() {
        assert!(header(ProxyProtocol::None, "1.2.3.4:5", "6.7.8.9:443").is_empty());
    }

    #[test]
    fn v1_tcp4() {
        assert_eq!(
            header(ProxyProtocol::V1, "203.0.113.7:51234", "192.0.2.1:443"),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
        );
    }

    #[test]
    fn v1_tcp6() {
        assert_eq!(
            header(
                ProxyProtocol::V1,
                "[2001:db8::7]:51234",
                "[2001:db8::1]:443"
            ),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"
        );
    }

    #[test]
    fn v1_mapped_pair_is_tcp4() {
        assert_eq!(
            header(
                ProxyProtocol::V1,
                "[::ffff:203.0.113.7]:51234",
                "[::ffff:192.0.2.1]:443"
            ),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
        );
    }

    #[test]
    fn v1_mixed_is_tcp6() {
        assert_eq!(
            header(ProxyProtocol::V1, "203.0.113.7:51234", "[2001:db8::1]:443"),
            b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 51234 443\r\n"
        );
    }

    #[test]
    fn v1_longest_fits_spec_limit() {
        let longest = header(
            ProxyProtocol::V1,
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        );
        assert_eq!(longest.len(), 104);
    }

    #[test]
    fn v2_tcp4() {
        let mut want = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[203, 0, 113, 7, 192, 0, 2, 1]);
        want.extend_from_slice(&[0xC8, 0x22, 0x01, 0xBB]); // 51234, 443
        assert_eq!(
            header(ProxyProtocol::V2, "203.0.113.7:51234", "192.0.2.1:443"),
            want
        );
    }

    #[test]
    fn v2_mapped_pair_is_tcp4() {
        assert_eq!(
            header(
                ProxyProtocol::V2,
                "[::ffff:203.0.113.7]:51234",
                "192.0.2.1:443"
            ),
            header(ProxyProtocol::V2, "203.0.113.7:51234", "192.0.2.1:443"),
        );
    }

    #[test]
    fn v2_tcp6() {
        let mut want = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0xC8, 0x22, 0x01, 0xBB]);
        assert_eq!(
            header(
                ProxyProtocol::V2,
                "[2001:db8::7]:51234",
                "[2001:db8::1]:443"
            ),
            want
        );
    }

    #[test]
    fn v2_mixed_maps_v4_to_v6() {
        let got = header(ProxyProtocol::V2, "203.0.113.7:1", "[2001:db8::1]:2");
        assert_eq!(got.len(), 16 + 36);
        assert_eq!(&got[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &got[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7]
        );
        assert_eq!(&got[48..52], &[0, 1, 0, 2]);
    }
}
