//! PURE: the nftables text sniroute hands to `nft -f -`. No I/O; every
//! function takes the layout and elements and returns the batch text, so the
//! exact ruleset is unit-tested and can be replayed by hand with `nft -f`.
//!
//! The table (`inet <table>`) holds four sets and one chain:
//!
//! - `ban4` (`ipv4_addr`, hash, `flags timeout`): banned IPv4 addresses (/32);
//! - `ban6` (`ipv6_addr`, hash, `flags timeout`): banned IPv6 networks of
//!   `ban.ipv6_prefix` bits, stored as their network address; the rule masks
//!   the source (`ip6 saddr & ffff:ffff:ffff:ffff::`) before the lookup, so a
//!   /64 costs one hash probe like an address. `flags interval` sets are
//!   slower to fill and have had kernel bugs, so the common case avoids them;
//! - `net4` / `net6` (`flags interval, timeout`): bans of any other prefix
//!   length (`bans add 198.51.100.0/24`, remote ranges). An interval set
//!   refuses overlapping elements, so only the outermost of nested networks
//!   is put there (see `super::model`);
//! - chain `input` (hook input, priority -10, before the usual filter
//!   chains at 0): four rules that drop a banned source's packets, to the
//!   listen ports (`scope = "listen"`) or to anything (`scope = "all"`),
//!   all counted by the named counter `dropped`.
//!
//! Every element carries `timeout` = the time its ban has left, so the
//! kernel forgets it when the ban ends: no unban timers, no rule per address.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::config::FirewallScope;

/// Elements per `add element` line: nft parses a line of any length, but
/// lines of ~30 KB keep a logged failure readable and the parser's buffers small.
const ELEMENTS_PER_LINE: usize = 1000;

/// Capacity of `ban4` and `ban6`: the guard refuses automatic bans beyond
/// its cap of 1,000,000 (`guard::bans::BAN_CAP`); 2^20 holds them all.
/// The kernel allocates per element, not per slot, so a large size is free.
pub const HASH_SET_SIZE: usize = 1 << 20;

/// Capacity of `net4` and `net6`: hand-made ranges and remote ranges are a
/// few, or a few thousand for a community blocklist; 65,536 is far beyond.
pub const INTERVAL_SET_SIZE: usize = 1 << 16;

/// The longest element timeout written: 36,525 days, just over the 100 years
/// a config duration may say. nft 1.0.6 takes up to ~40,000 days.
pub const MAX_TIMEOUT_SECS: u64 = 36_525 * 86_400;

/// The counter every drop rule adds to (`sniroute_firewall_dropped_packets_total`).
pub const COUNTER: &str = "dropped";

/// The chain that drops, checked for by the repair probe.
pub const CHAIN: &str = "input";

/// What the table looks like apart from its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The table's name (in family `inet`).
    pub table: String,
    /// `firewall.scope`.
    pub scope: FirewallScope,
    /// The TCP ports sniroute listens on, sorted, no duplicates.
    pub ports: Vec<u16>,
    /// `ban.ipv6_prefix`: the length of the networks in `ban6`.
    pub ipv6_prefix: u8,
}

/// The four sets of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// IPv4 /32.
    Ban4,
    /// IPv6 networks of exactly `ipv6_prefix` bits.
    Ban6,
    /// IPv4 networks of any other length.
    Net4,
    /// IPv6 networks of any other length.
    Net6,
}

impl SetKind {
    /// All four, in the order they are declared.
    pub const ALL: [SetKind; 4] = [SetKind::Ban4, SetKind::Ban6, SetKind::Net4, SetKind::Net6];

    /// The set's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            SetKind::Ban4 => "ban4",
            SetKind::Ban6 => "ban6",
            SetKind::Net4 => "net4",
            SetKind::Net6 => "net6",
        }
    }

    /// The set `net` (canonical) belongs in.
    pub fn of(net: &IpNet, ipv6_prefix: u8) -> SetKind {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => SetKind::Ban4,
            IpNet::V4(_) => SetKind::Net4,
            IpNet::V6(n) if n.prefix_len() == ipv6_prefix => SetKind::Ban6,
            IpNet::V6(_) => SetKind::Net6,
        }
    }

    /// True for the interval sets (`net4`, `net6`).
    pub fn is_interval(self) -> bool {
        matches!(self, SetKind::Net4 | SetKind::Net6)
    }

    fn declaration(self) -> String {
        let (kind, flags, size) = match self {
            SetKind::Ban4 => ("ipv4_addr", "timeout", HASH_SET_SIZE),
            SetKind::Ban6 => ("ipv6_addr", "timeout", HASH_SET_SIZE),
            SetKind::Net4 => ("ipv4_addr", "interval, timeout", INTERVAL_SET_SIZE),
            SetKind::Net6 => ("ipv6_addr", "interval, timeout", INTERVAL_SET_SIZE),
        };
        format!(
            "  set {} {{ type {kind}; flags {flags}; size {size}; }}\n",
            self.name()
        )
    }
}

/// An element as the set holds it: an address for the hash sets (the
/// network address for `ban6`), `ADDR/LEN` for the interval sets.
fn element(net: &IpNet, kind: SetKind) -> String {
    if kind.is_interval() {
        net.trunc().to_string()
    } else {
        net.network().to_string()
    }
}

/// `1d2h3m4s`: nft's own notation. A plain count of seconds above 10^8 is
/// refused by nft 1.0.6 ("value too large") while the same time in days is
/// taken, so the units are always spelled out. At least 1s, at most
/// [`MAX_TIMEOUT_SECS`].
pub fn timeout(secs: u64) -> String {
    let mut left = secs.clamp(1, MAX_TIMEOUT_SECS);
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= size {
            let _ = write!(out, "{}{unit}", left / size);
            left %= size;
        }
    }
    out
}

/// The mask of an IPv6 prefix length, as nft writes it (`ffff:ffff:ffff:ffff::`).
fn ipv6_mask(len: u8) -> String {
    let bits = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    std::net::Ipv6Addr::from(bits).to_string()
}

/// The whole table, replacing whatever table of that name exists, in one
/// transaction: `nft -f` applies a file atomically, so packets see the old
/// table or the new one, never none (and never two, after a crash).
/// `elements` are `(net, seconds left)`; interval-set networks must not overlap.
pub fn replace_table(layout: &Layout, elements: &[(IpNet, u64)]) -> String {
    let table = &layout.table;
    let mut out = String::with_capacity(1024 + elements.len() * 32);
    // `table` creates it if missing, so the delete never fails.
    let _ = writeln!(out, "table inet {table} {{}}");
    let _ = writeln!(out, "delete table inet {table}");
    let _ = writeln!(out, "table inet {table} {{");
    for kind in SetKind::ALL {
        out.push_str(&kind.declaration());
    }
    let _ = writeln!(out, "  counter {COUNTER} {{ }}");
    let _ = writeln!(out, "  chain {CHAIN} {{");
    out.push_str("    type filter hook input priority -10; policy accept;\n");
    for rule in rules(layout) {
        let _ = writeln!(out, "    {rule}");
    }
    out.push_str("  }\n}\n");
    for kind in SetKind::ALL {
        let of_kind: Vec<(IpNet, u64)> = elements
            .iter()
            .filter(|(net, _)| SetKind::of(net, layout.ipv6_prefix) == kind)
            .copied()
            .collect();
        add_elements(&mut out, table, kind, &of_kind);
    }
    out
}

/// The drop rules of the chain. With `scope = "listen"` and no listen port
/// (every listener gone), nothing is dropped.
fn rules(layout: &Layout) -> Vec<String> {
    let ports = match layout.scope {
        FirewallScope::All => String::new(),
        FirewallScope::Listen if layout.ports.is_empty() => return Vec::new(),
        FirewallScope::Listen => {
            let list: Vec<String> = layout.ports.iter().map(u16::to_string).collect();
            format!("tcp dport {{ {} }} ", list.join(", "))
        }
    };
    let mask = ipv6_mask(layout.ipv6_prefix);
    [
        format!("ip saddr @{}", SetKind::Ban4.name()),
        format!("ip saddr @{}", SetKind::Net4.name()),
        format!("ip6 saddr & {mask} @{}", SetKind::Ban6.name()),
        format!("ip6 saddr @{}", SetKind::Net6.name()),
    ]
    .into_iter()
    .map(|matcher| format!("{ports}{matcher} counter name \"{COUNTER}\" drop"))
    .collect()
}

/// `add element` lines for `elements` (all of `kind`).
fn add_elements(out: &mut String, table: &str, kind: SetKind, elements: &[(IpNet, u64)]) {
    for chunk in elements.chunks(ELEMENTS_PER_LINE) {
        let list: Vec<String> = chunk
            .iter()
            .map(|(net, secs)| format!("{} timeout {}", element(net, kind), timeout(*secs)))
            .collect();
        let _ = writeln!(
            out,
            "add element inet {table} {} {{ {} }}",
            kind.name(),
            list.join(", ")
        );
    }
}

/// Deletes the table if it exists (never fails on a missing one).
pub fn delete_table(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

/// One transaction of changes to the sets of a table that exists.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds `net` to a hash set with `secs` left.
    pub fn add(&mut self, table: &str, kind: SetKind, net: &IpNet, secs: u64) {
        add_elements(&mut self.text, table, kind, &[(*net, secs)]);
    }

    /// Removes `net` from a hash set, whether or not the kernel still holds
    /// it: the element is added first (a no-op when present), then deleted,
    /// so a delete never fails with ENOENT on an element the kernel already
    /// expired, which would abort the whole transaction. (`destroy element`
    /// does this in one word but needs nft 1.0.8 and Linux 6.3.)
    pub fn remove(&mut self, table: &str, kind: SetKind, net: &IpNet) {
        let el = element(net, kind);
        let set = kind.name();
        let _ = writeln!(self.text, "add element inet {table} {set} {{ {el} }}");
        let _ = writeln!(self.text, "delete element inet {table} {set} {{ {el} }}");
    }

    /// Replaces the timeout of `net` in a hash set: delete and add again
    /// (re-adding alone does not refresh a timeout before Linux 6.12).
    pub fn replace(&mut self, table: &str, kind: SetKind, net: &IpNet, secs: u64) {
        self.remove(table, kind, net);
        self.add(table, kind, net, secs);
    }

    /// Empties an interval set and fills it with `elements` (which must not
    /// overlap), in the same transaction: no window without them.
    pub fn refill(&mut self, table: &str, kind: SetKind, elements: &[(IpNet, u64)]) {
        let _ = writeln!(self.text, "flush set inet {table} {}", kind.name());
        add_elements(&mut self.text, table, kind, elements);
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The batch text for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Whether `net` can go into the kernel set at all: never when it overlaps
/// `ignore` (an ignored address inside a banned range stays reachable; user
/// space, where `ban.ignore` wins, enforces such a range alone). A mapped
/// IPv4 network is compared as IPv4; both lists must be canonical.
pub fn clear_of(net: &IpNet, ignore: &[IpNet]) -> bool {
    !ignore.iter().any(|i| i.contains(net) || net.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn layout(scope: FirewallScope) -> Layout {
        Layout {
            table: "sniroute".into(),
            scope,
            ports: vec![443, 8443],
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn timeouts_spell_out_units() {
        assert_eq!(timeout(0), "1s");
        assert_eq!(timeout(59), "59s");
        assert_eq!(timeout(3600), "1h");
        assert_eq!(timeout(93_784), "1d2h3m4s");
        assert_eq!(timeout(365 * 86_400), "365d");
        assert_eq!(timeout(u64::MAX), "36525d");
    }

    #[test]
    fn masks() {
        assert_eq!(ipv6_mask(64), "ffff:ffff:ffff:ffff::");
        assert_eq!(ipv6_mask(48), "ffff:ffff:ffff::");
        assert_eq!(ipv6_mask(128), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(ipv6_mask(0), "::");
    }

    #[test]
    fn sets_by_prefix_length() {
        assert_eq!(SetKind::of(&net("192.0.2.1/32"), 64), SetKind::Ban4);
        assert_eq!(SetKind::of(&net("192.0.2.0/24"), 64), SetKind::Net4);
        assert_eq!(SetKind::of(&net("2001:db8:1:2::/64"), 64), SetKind::Ban6);
        assert_eq!(SetKind::of(&net("2001:db8:1::/48"), 64), SetKind::Net6);
        assert_eq!(SetKind::of(&net("2001:db8:1::/48"), 48), SetKind::Ban6);
        assert_eq!(SetKind::of(&net("2001:db8::1/128"), 64), SetKind::Net6);
    }

    #[test]
    fn the_whole_table_replaces_the_old_one_in_one_file() {
        let text = replace_table(
            &layout(FirewallScope::Listen),
            &[
                (net("192.0.2.7/32"), 3600),
                (net("2001:db8:1:2::/64"), 60),
                (net("198.51.100.0/24"), 93_784),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table inet sniroute {}");
        assert_eq!(lines[1], "delete table inet sniroute");
        assert!(text.contains(
            "    tcp dport { 443, 8443 } ip6 saddr & ffff:ffff:ffff:ffff:: @ban6 counter name \"dropped\" drop\n"
        ));
        assert!(text.contains("add element inet sniroute ban4 { 192.0.2.7 timeout 1h }\n"));
        assert!(text.contains("add element inet sniroute ban6 { 2001:db8:1:2:: timeout 1m }\n"));
        assert!(
            text.contains("add element inet sniroute net4 { 198.51.100.0/24 timeout 1d2h3m4s }\n")
        );
        assert!(
            !text.contains("add element inet sniroute net6"),
            "no empty element list"
        );
    }

    #[test]
    fn scope_all_drops_every_packet_and_no_port_drops_nothing() {
        let all = replace_table(&layout(FirewallScope::All), &[]);
        assert!(all.contains("    ip saddr @ban4 counter name \"dropped\" drop\n"));
        assert!(!all.contains("dport"));
        let mut none = layout(FirewallScope::Listen);
        none.ports.clear();
        assert!(!replace_table(&none, &[]).contains(" drop\n"));
    }

    #[test]
    fn long_lists_are_split_into_lines() {
        let elements: Vec<(IpNet, u64)> = (0..2500u32)
            .map(|i| (IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(i))), 60))
            .collect();
        let text = replace_table(&layout(FirewallScope::Listen), &elements);
        assert_eq!(text.matches("add element").count(), 3);
    }

    #[test]
    fn batch_changes() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.replace("t", SetKind::Ban4, &net("192.0.2.7/32"), 10);
        b.refill("t", SetKind::Net4, &[(net("10.0.0.0/8"), 5)]);
        assert_eq!(
            b.text(),
            "add element inet t ban4 { 192.0.2.7 }\n\
             delete element inet t ban4 { 192.0.2.7 }\n\
             add element inet t ban4 { 192.0.2.7 timeout 10s }\n\
             flush set inet t net4\n\
             add element inet t net4 { 10.0.0.0/8 timeout 5s }\n"
        );
        assert_eq!(delete_table("t"), "table inet t {}\ndelete table inet t\n");
    }

    #[test]
    fn ranges_over_ignored_addresses_stay_out() {
        let ignore = [net("127.0.0.1/32"), net("192.0.2.0/28")];
        assert!(clear_of(&net("203.0.113.7/32"), &ignore));
        assert!(!clear_of(&net("127.0.0.0/8"), &ignore));
        assert!(!clear_of(&net("192.0.2.5/32"), &ignore));
        assert!(!clear_of(&net("192.0.0.0/16"), &ignore));
        assert!(clear_of(&net("192.0.2.16/28"), &ignore));
        assert!(clear_of(&net("::/0"), &ignore));
    }
}
