//! PURE: bytes in, verdict out. Reads the PROXY protocol header (HAProxy's
//! spec, v1 text and v2 binary) a trusted balancer puts before its client's
//! bytes. No I/O, no allocation, no panic on any input.
//!
//! The caller hands [`parse`] every byte received so far, again after each
//! read, and stops at the first verdict that is not [`Verdict::NeedMore`].
//! So every strict prefix of a valid header answers `NeedMore`, and a reject
//! comes as soon as the bytes so far rule out every valid header. The bytes
//! after the header (the client's hello) are not looked at; [`Header::len`]
//! says where they start.
//!
//! Decisions, and why:
//! - **The first byte picks the version.** `P` starts v1 (`PROXY `), `\r`
//!   starts the v2 signature; anything else (a TLS hello sent without a
//!   header, HTTP, garbage) is refused at once.
//! - **v1** is one line of printable ASCII ending in CRLF, at most
//!   [`V1_MAX_LEN`] bytes (spec section 2.1): `PROXY TCP4|TCP6 SRC DST SPORT
//!   DPORT`. Addresses must be of the named family, ports decimal without a
//!   sign or leading zeros. `PROXY UNKNOWN` takes any printable rest of the
//!   line (the spec says to ignore it).
//! - **v2** is the 12-byte signature, version 2 with command LOCAL or PROXY,
//!   a family/transport byte, a 16-bit length and that many bytes. The whole
//!   header is at most [`MAX_LEN`] bytes, refused as soon as the length field
//!   says more. The address block must be as long as its family needs; the
//!   bytes after it are TLVs, each checked to lie within the header (their
//!   contents are not used, so CRC32C is not verified).
//! - **What the header names.** [`Endpoints::Tcp`] for TCP over IPv4/IPv6;
//!   [`Endpoints::Local`] for v2's LOCAL command (the balancer's own
//!   connection, such as a health check); [`Endpoints::Unknown`] for v1
//!   `UNKNOWN` and v2 AF_UNSPEC or AF_UNIX. For the last two the spec says
//!   to use the connection's real endpoints: the balancer speaks for itself.
//!   v2 over IPv4/IPv6 with a transport other than TCP (UDP, unspecified) is
//!   refused: a TCP connection cannot carry it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 signature, space included (spec section 2.1).
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included: `PROXY UNKNOWN` plus two full IPv6
/// addresses and ports is 107 bytes (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// The 12-byte signature that starts every v2 header (spec section 2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, 16-bit length.
const V2_FIXED_LEN: usize = 16;
/// Longest v2 header taken, fixed part included. HAProxy's own headers with
/// every `proxy-v2-options` TLV (SSL details, unique id up to 128 bytes,
/// authority) stay under 600 bytes, cloud balancers' (AWS's VPC endpoint id,
/// GCP's PSC id) under 100; 4 KiB is several times that and bounds what a
/// balancer can make sniroute buffer before the client's first byte.
pub const MAX_LEN: usize = 4096;
/// Command LOCAL (low nibble of byte 13): the balancer's own connection.
const CMD_LOCAL: u8 = 0;
/// Command PROXY: a relayed connection.
const CMD_PROXY: u8 = 1;
/// Address family nibbles (high nibble of byte 14).
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 1;
const AF_INET6: u8 = 2;
const AF_UNIX: u8 = 3;
/// Transport nibbles (low nibble of byte 14); only these three exist.
const TRANSPORT_STREAM: u8 = 1;
const TRANSPORT_MAX: u8 = 2;
/// Address block lengths: two addresses and two 16-bit ports (two 108-byte
/// paths for AF_UNIX).
const INET_LEN: usize = 4 + 4 + 2 + 2;
const INET6_LEN: usize = 16 + 16 + 2 + 2;
const UNIX_LEN: usize = 108 + 108;
/// A TLV's header: type (1 byte), length (2 bytes).
const TLV_HEADER_LEN: usize = 3;
/// Digits of the largest port, 65535.
const PORT_DIGITS: usize = 5;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// A relayed TCP connection: the client's address and the address it
    /// connected to (at the balancer).
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 command LOCAL: the balancer's own connection (a health check).
    Local,
    /// v1 `UNKNOWN`, or a v2 family without IP addresses: no client named.
    Unknown,
}

/// A complete, valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// What it names.
    pub endpoints: Endpoints,
    /// Its length in bytes: the client's own bytes start here.
    pub len: usize,
}

/// The verdict on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A strict prefix of a valid header (or nothing yet): read more.
    NeedMore,
    /// A complete, valid header.
    Header(Header),
    /// Not a valid header, whatever follows; says why (for the debug log).
    Invalid(&'static str),
}

/// Judges `buf`, every byte received so far.
pub fn parse(buf: &[u8]) -> Verdict {
    match buf.first() {
        None => Verdict::NeedMore,
        Some(b'P') => v1(buf),
        Some(b'\r') => v2(buf),
        Some(_) => Verdict::Invalid("no PROXY header"),
    }
}

/// `PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n`.
fn v1(buf: &[u8]) -> Verdict {
    let signature = buf.get(..V1_PREFIX.len()).unwrap_or(buf);
    if !V1_PREFIX.starts_with(signature) {
        return Verdict::Invalid("no PROXY header");
    }
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR may only be the last byte so far, waiting for its LF.
        let (last, body) = window.split_last().unwrap_or((&0, &[]));
        if !body.iter().all(|&b| printable(b)) || !(printable(*last) || *last == b'\r') {
            return Verdict::Invalid("v1: not a line of printable ASCII");
        }
        if window.len() == V1_MAX_LEN {
            return Verdict::Invalid("v1: longer than 107 bytes");
        }
        return Verdict::NeedMore;
    };
    let line = window.get(..lf).unwrap_or_default();
    let Some(line) = line.strip_suffix(b"\r") else {
        return Verdict::Invalid("v1: line ends without CR LF");
    };
    if !line.iter().all(|&b| printable(b)) {
        return Verdict::Invalid("v1: not a line of printable ASCII");
    }
    let rest = line.get(V1_PREFIX.len()..).unwrap_or_default();
    let endpoints = match v1_endpoints(rest) {
        Ok(endpoints) => endpoints,
        Err(why) => return Verdict::Invalid(why),
    };
    Verdict::Header(Header {
        version: 1,
        endpoints,
        len: lf + 1,
    })
}

/// Printable ASCII, space included.
fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

/// The fields after `PROXY `.
fn v1_endpoints(rest: &[u8]) -> Result<Endpoints, &'static str> {
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(Endpoints::Unknown);
    }
    let text = std::str::from_utf8(rest).map_err(|_| "v1: not ASCII")?;
    let mut fields = text.split(' ');
    let (Some(family), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err("v1: expected TCP4|TCP6 SRC DST SPORT DPORT");
    };
    let (src, dst) = match family {
        "TCP4" => (
            IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| "v1: bad IPv4 source")?),
            IpAddr::V4(
                dst.parse::<Ipv4Addr>()
                    .map_err(|_| "v1: bad IPv4 destination")?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| "v1: bad IPv6 source")?),
            IpAddr::V6(
                dst.parse::<Ipv6Addr>()
                    .map_err(|_| "v1: bad IPv6 destination")?,
            ),
        ),
        _ => return Err("v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)"),
    };
    Ok(Endpoints::Tcp {
        source: SocketAddr::new(src, port(sport).ok_or("v1: bad source port")?),
        destination: SocketAddr::new(dst, port(dport).ok_or("v1: bad destination port")?),
    })
}

/// A decimal port: 1 to 5 digits, no sign, no leading zero (but `0`).
fn port(text: &str) -> Option<u16> {
    let plain = !text.is_empty()
        && text.len() <= PORT_DIGITS
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if plain { text.parse().ok() } else { None }
}

/// Signature, `0x2?` version/command, family/transport, length, body.
fn v2(buf: &[u8]) -> Verdict {
    let signature = buf.get(..V2_SIGNATURE.len()).unwrap_or(buf);
    if !V2_SIGNATURE.starts_with(signature) {
        return Verdict::Invalid("no PROXY header");
    }
    let Some(&version_command) = buf.get(12) else {
        return Verdict::NeedMore;
    };
    let command = version_command & 0x0f;
    if version_command >> 4 != 2 {
        return Verdict::Invalid("v2: version is not 2");
    }
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Verdict::Invalid("v2: unknown command");
    }
    let Some(&family_transport) = buf.get(13) else {
        return Verdict::NeedMore;
    };
    let (family, transport) = (family_transport >> 4, family_transport & 0x0f);
    if family > AF_UNIX || transport > TRANSPORT_MAX {
        return Verdict::Invalid("v2: unknown address family or transport");
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Verdict::NeedMore;
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED_LEN + body_len;
    if len > MAX_LEN {
        return Verdict::Invalid("v2: longer than the 4096 bytes taken");
    }
    if command == CMD_PROXY {
        let needed = match family {
            AF_INET => INET_LEN,
            AF_INET6 => INET6_LEN,
            AF_UNIX => UNIX_LEN,
            _ => 0,
        };
        if body_len < needed {
            return Verdict::Invalid("v2: address block shorter than its family needs");
        }
    }
    let Some(body) = buf.get(V2_FIXED_LEN..len) else {
        return Verdict::NeedMore;
    };
    let endpoints = if command == CMD_LOCAL {
        // The spec: "discard the protocol block including the family".
        Endpoints::Local
    } else {
        match v2_endpoints(family, transport, body) {
            Ok(endpoints) => endpoints,
            Err(why) => return Verdict::Invalid(why),
        }
    };
    Verdict::Header(Header {
        version: 2,
        endpoints,
        len,
    })
}

/// The addresses of a PROXY command's body, and its TLVs checked.
fn v2_endpoints(family: u8, transport: u8, body: &[u8]) -> Result<Endpoints, &'static str> {
    let (endpoints, addr_len) = match family {
        AF_INET | AF_INET6 if transport != TRANSPORT_STREAM => {
            return Err("v2: not a TCP connection");
        }
        AF_INET => {
            let a = |i: usize| body.get(i).copied().unwrap_or(0);
            let src = Ipv4Addr::new(a(0), a(1), a(2), a(3));
            let dst = Ipv4Addr::new(a(4), a(5), a(6), a(7));
            let ports = [a(8), a(9), a(10), a(11)];
            (tcp(src.into(), dst.into(), ports), INET_LEN)
        }
        AF_INET6 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            let mut ports = [0u8; 4];
            src.copy_from_slice(body.get(..16).ok_or("v2: short address")?);
            dst.copy_from_slice(body.get(16..32).ok_or("v2: short address")?);
            ports.copy_from_slice(body.get(32..36).ok_or("v2: short address")?);
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            (tcp(src.into(), dst.into(), ports), INET6_LEN)
        }
        AF_UNIX => (Endpoints::Unknown, UNIX_LEN),
        _ => (Endpoints::Unknown, 0),
    };
    if family != AF_UNSPEC {
        check_tlvs(body.get(addr_len..).unwrap_or_default())?;
    }
    Ok(endpoints)
}

fn tcp(src: IpAddr, dst: IpAddr, [s0, s1, d0, d1]: [u8; 4]) -> Endpoints {
    Endpoints::Tcp {
        source: SocketAddr::new(src, u16::from_be_bytes([s0, s1])),
        destination: SocketAddr::new(dst, u16::from_be_bytes([d0, d1])),
    }
}

/// Every TLV (type, 16-bit length, value) lies wholly inside `tlvs`.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), &'static str> {
    while !tlvs.is_empty() {
        let (Some(&hi), Some(&lo)) = (tlvs.get(1), tlvs.get(2)) else {
            return Err("v2: truncated TLV");
        };
        let end = TLV_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs.get(end..).ok_or("v2: TLV longer than the header")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
