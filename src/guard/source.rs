//! What the guard calls a "source": the key that strikes, bans and rate limits
//! are counted under. IPv4 is per address; IPv6 per `ban.ipv6_prefix` (one
//! host owns a whole /64); an IPv4-mapped IPv6 address is its IPv4 address.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The source key of `ip`: `a.b.c.d/32`, or the IPv6 network of `v6_prefix` bits.
pub fn source_of(ip: IpAddr, v6_prefix: u8) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => {
            // A prefix above 128 cannot come from a checked config; fall back to /128.
            let net = Ipv6Net::new(v6, v6_prefix.min(128)).unwrap_or_else(|_| Ipv6Net::from(v6));
            IpNet::V6(net.trunc())
        }
    }
}

pub use crate::cidr::canonical_net;

/// The `ban.ignore` networks, canonicalised once.
#[derive(Debug, Clone, Default)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
}

impl IgnoreList {
    /// Builds the list from config networks.
    pub fn new(nets: &[IpNet]) -> IgnoreList {
        IgnoreList {
            nets: nets.iter().map(|n| canonical_net(*n)).collect(),
        }
    }

    /// True when `ip` (already canonical) is in an ignored network. A linear
    /// scan: the list is a handful of the admin's own addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// True when `net` and an ignored network share an address.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.nets.iter().any(|n| n.contains(net) || net.contains(n))
    }

    /// The ignored network that wholly contains `net`, if any.
    pub fn covering(&self, net: &IpNet) -> Option<IpNet> {
        self.nets.iter().copied().find(|n| n.contains(net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_is_per_address_and_ipv6_per_prefix() {
        assert_eq!(source_of(ip("203.0.113.7"), 64), net("203.0.113.7/32"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1"), 64),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2:bbbb::9"), 64),
            source_of(ip("2001:db8:1:2:aaaa::1"), 64)
        );
        assert_eq!(source_of(ip("2001:db8::1"), 128), net("2001:db8::1/128"));
    }

    #[test]
    fn v4_mapped_is_ipv4() {
        assert_eq!(
            source_of(ip("::ffff:198.51.100.4"), 64),
            net("198.51.100.4/32")
        );
        assert_eq!(canonical_net(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(canonical_net(net("10.1.2.3/8")), net("10.0.0.0/8"));
    }

    #[test]
    fn ignore_list_matches_addresses_and_networks() {
        let ignore = IgnoreList::new(&[net("127.0.0.1/32"), net("2001:db8::/48")]);
        assert!(ignore.contains(ip("127.0.0.1")));
        assert!(ignore.contains(ip("2001:db8:0:5::1")));
        assert!(!ignore.contains(ip("127.0.0.2")));
        assert_eq!(
            ignore.covering(&net("2001:db8:0:5::/64")),
            Some(net("2001:db8::/48"))
        );
        assert_eq!(ignore.covering(&net("127.0.0.0/8")), None);
        assert!(ignore.overlaps(&net("127.0.0.0/8")));
        assert!(ignore.overlaps(&net("2001:db8:0:5::/64")));
        assert!(!ignore.overlaps(&net("10.0.0.0/8")));
    }
}
