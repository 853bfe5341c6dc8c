//! A set of IP networks (a route's `allow` list) whose membership test
//! costs one hash probe per distinct prefix length in the set, whatever
//! the number of networks: `10.0.0.0/8` and a thousand `/24`s are two probes.
//! Built once from the config; never changes; no I/O.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Networks, canonical (host bits cleared, IPv4-mapped IPv6 as IPv4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    nets: HashSet<IpNet>,
    /// The prefix lengths present, longest first, per family.
    v4_lengths: Vec<u8>,
    v6_lengths: Vec<u8>,
    /// As written (canonical), for the summary and messages.
    listed: Vec<IpNet>,
}

impl CidrSet {
    /// The set of `nets` (duplicates and overlaps are harmless).
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut set = CidrSet::default();
        for &net in nets {
            let net = canonical_net(net);
            let lengths = match net {
                IpNet::V4(_) => &mut set.v4_lengths,
                IpNet::V6(_) => &mut set.v6_lengths,
            };
            if !lengths.contains(&net.prefix_len()) {
                lengths.push(net.prefix_len());
            }
            if set.nets.insert(net) {
                set.listed.push(net);
            }
        }
        set.v4_lengths.sort_unstable_by(|a, b| b.cmp(a));
        set.v6_lengths.sort_unstable_by(|a, b| b.cmp(a));
        set
    }

    /// Whether a network of the set holds `ip` (an IPv4-mapped IPv6
    /// address is its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let lengths = match ip {
            IpAddr::V4(_) => &self.v4_lengths,
            IpAddr::V6(_) => &self.v6_lengths,
        };
        lengths
            .iter()
            .any(|&len| IpNet::new(ip, len).is_ok_and(|net| self.nets.contains(&net.trunc())))
    }

    /// The networks, in the order first written.
    pub fn nets(&self) -> &[IpNet] {
        &self.listed
    }
}

/// Canonical form of a network for use as a map key: host bits cleared and an
/// IPv4-mapped IPv6 network (`::ffff:0:0/96` and longer) turned into IPv4.
pub fn canonical_net(net: IpNet) -> IpNet {
    /// `::ffff:0:0/96` has 96 bits before the embedded IPv4 address.
    const MAPPED_PREFIX_BITS: u8 = 96;
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= MAPPED_PREFIX_BITS
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX_BITS)
    {
        return IpNet::V4(v4net.trunc());
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> CidrSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        CidrSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_networks_of_both_families() {
        let s = set(&[
            "198.51.100.0/24",
            "10.1.2.3/8",
            "192.0.2.7/32",
            "2001:db8:1::/48",
            "::1/128",
        ]);
        assert!(s.contains(ip("198.51.100.200")));
        assert!(s.contains(ip("10.255.0.1")), "host bits were cleared");
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(!s.contains(ip("198.51.101.1")));
        assert!(s.contains(ip("2001:db8:1:ffff::9")));
        assert!(!s.contains(ip("2001:db8:2::1")));
        assert!(s.contains(ip("::1")));
        assert!(s.contains(ip("::ffff:198.51.100.4")), "v4-mapped is IPv4");
        assert!(!set(&[]).contains(ip("127.0.0.1")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("203.0.113.1")));
        assert!(!set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
    }

    #[test]
    fn mapped_networks_are_ipv4_and_probes_follow_lengths() {
        let s = set(&["::ffff:127.0.0.0/104", "127.0.0.2/32"]);
        assert!(s.contains(ip("127.9.9.9")));
        assert_eq!(s.v4_lengths, vec![32, 8]);
        assert!(s.v6_lengths.is_empty());
        let many: Vec<String> = (0..1000)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = set(&many);
        assert_eq!(s.v4_lengths, vec![24], "one probe for a thousand /24s");
        assert!(s.contains(ip("10.3.231.77")));
        assert!(!s.contains(ip("10.4.0.1")));
    }
}
