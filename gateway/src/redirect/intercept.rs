//! The intercept set: from config rules, resolved names and GitHub's ranges to the kernel's trie
//! entries.
//!
//! Pure data transformation, no I/O: what userspace wants in the tries is computed here, and
//! `maps` applies the difference in place.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use gateway_common::{ACTION_PASS, ACTION_REDIRECT, InterceptKeyV4, InterceptKeyV6, PORT_PREFIX_BITS};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::InterceptRule;

/// One (prefix, port) the kernel redirects or lets pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub net: IpNet,
    pub port: u16,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpNet::V4(n) => write!(f, "{n}:{}", self.port),
            IpNet::V6(n) => write!(f, "[{n}]:{}", self.port),
        }
    }
}

/// What the kernel does with a TCP connect that an entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// To the gateway.
    Redirect,
    /// Straight to the destination (an allowed port of a guarded address).
    Pass,
}

impl Action {
    pub fn value(self) -> u32 {
        match self {
            Action::Redirect => ACTION_REDIRECT,
            Action::Pass => ACTION_PASS,
        }
    }

    pub fn from_value(v: u32) -> Option<Self> {
        match v {
            ACTION_REDIRECT => Some(Action::Redirect),
            ACTION_PASS => Some(Action::Pass),
            _ => None,
        }
    }
}

/// Addresses each host name currently resolves to (`None`: never resolved yet).
pub type Resolved = BTreeMap<String, Option<Vec<IpAddr>>>;

/// Everything the kernel should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// (prefix, port) → action, in the intercept tries.
    pub entries: BTreeMap<Entry, Action>,
    /// Prefixes every other connection to is refused (GitHub's ranges), in the guard tries.
    pub guard: BTreeSet<IpNet>,
}

/// What the guarded ranges mean for ports: TLS ports are intercepted, allowed ports pass, every
/// other port (and every non-TCP socket) is refused.
#[derive(Debug, Clone, Copy)]
pub struct RangePorts<'a> {
    pub tls: &'a [u16],
    pub allowed: &'a [u16],
}

/// The entries the kernel should hold for `rules` (given what the names resolved to) and for
/// GitHub's `ranges`. An explicit rule wins over an allowed port of a range.
pub fn desired(
    rules: &[InterceptRule],
    resolved: &Resolved,
    ranges: &BTreeSet<IpNet>,
    ports: RangePorts,
) -> Desired {
    let mut out = Desired::default();
    for &net in ranges {
        let net = unmap(net).trunc();
        out.guard.insert(net);
        for &port in ports.tls {
            out.entries.insert(Entry { net, port }, Action::Redirect);
        }
        for &port in ports.allowed {
            out.entries.entry(Entry { net, port }).or_insert(Action::Pass);
        }
    }
    for rule in rules {
        let nets = rule.cidrs.iter().copied().chain(rule.hosts.iter().flat_map(|h| {
            resolved
                .get(h)
                .and_then(|a| a.as_ref())
                .into_iter()
                .flatten()
                .map(|ip| IpNet::from(*ip))
        }));
        for net in nets {
            let net = unmap(net).trunc();
            for &port in &rule.ports {
                out.entries.insert(Entry { net, port }, Action::Redirect);
            }
        }
    }
    out
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 prefix `a.b.c.d/(n-96)`: the kernel looks v4-mapped
/// destinations up in the v4 trie.
pub fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// The kernel's key for a v4 entry; see gateway-common for the layout.
pub fn key_v4(net: Ipv4Net, port: u16) -> (u32, InterceptKeyV4) {
    (
        PORT_PREFIX_BITS + u32::from(net.prefix_len()),
        InterceptKeyV4 {
            port: u32::from(port.to_be()),
            addr: u32::from_ne_bytes(net.addr().octets()),
        },
    )
}

pub fn key_v6(net: Ipv6Net, port: u16) -> (u32, InterceptKeyV6) {
    (
        PORT_PREFIX_BITS + u32::from(net.prefix_len()),
        InterceptKeyV6 {
            port: u32::from(port.to_be()),
            addr: words(net.addr()),
        },
    )
}

/// An IPv6 address as the kernel's four network-order words.
pub fn words(addr: std::net::Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

fn from_words(words: &[u32; 4]) -> std::net::Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    std::net::Ipv6Addr::from(o)
}

/// Back from a kernel key to an entry (for status and for removing stale entries).
pub fn entry_v4(prefix_len: u32, key: &InterceptKeyV4) -> Option<Entry> {
    let addr = std::net::Ipv4Addr::from(key.addr.to_ne_bytes());
    let net = Ipv4Net::new(
        addr,
        u8::try_from(prefix_len.checked_sub(PORT_PREFIX_BITS)?).ok()?,
    )
    .ok()?;
    Some(Entry {
        net: IpNet::V4(net),
        port: u16::from_be(key.port as u16),
    })
}

pub fn entry_v6(prefix_len: u32, key: &InterceptKeyV6) -> Option<Entry> {
    let net = Ipv6Net::new(
        from_words(&key.addr),
        u8::try_from(prefix_len.checked_sub(PORT_PREFIX_BITS)?).ok()?,
    )
    .ok()?;
    Some(Entry {
        net: IpNet::V6(net),
        port: u16::from_be(key.port as u16),
    })
}

/// The guard tries' keys: the address alone, the prefix length as is.
pub fn guard_key_v4(net: Ipv4Net) -> (u32, u32) {
    (
        u32::from(net.prefix_len()),
        u32::from_ne_bytes(net.addr().octets()),
    )
}

pub fn guard_key_v6(net: Ipv6Net) -> (u32, [u32; 4]) {
    (u32::from(net.prefix_len()), words(net.addr()))
}

pub fn guard_v4(prefix_len: u32, addr: u32) -> Option<IpNet> {
    Ipv4Net::new(
        std::net::Ipv4Addr::from(addr.to_ne_bytes()),
        u8::try_from(prefix_len).ok()?,
    )
    .ok()
    .map(IpNet::V4)
}

pub fn guard_v6(prefix_len: u32, addr: &[u32; 4]) -> Option<IpNet> {
    Ipv6Net::new(from_words(addr), u8::try_from(prefix_len).ok()?)
        .ok()
        .map(IpNet::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(hosts: &[&str], cidrs: &[&str], ports: &[u16]) -> InterceptRule {
        InterceptRule {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            ports: ports.to_vec(),
        }
    }

    const NO_RANGES: RangePorts<'static> = RangePorts {
        tls: &[443],
        allowed: &[],
    };

    fn shown(d: &Desired) -> Vec<String> {
        d.entries.iter().map(|(e, a)| format!("{e} {a:?}")).collect()
    }

    #[test]
    fn hosts_and_cidrs_times_ports() {
        let mut resolved = Resolved::new();
        resolved.insert(
            "a.test".into(),
            Some(vec!["127.0.0.5".parse().unwrap(), "::1".parse().unwrap()]),
        );
        resolved.insert("b.test".into(), None);
        let rules = [rule(&["a.test", "b.test"], &["10.1.2.3/16"], &[443, 80])];
        let got = desired(&rules, &resolved, &BTreeSet::new(), NO_RANGES);
        assert_eq!(
            shown(&got),
            [
                "10.1.0.0/16:80 Redirect",
                "10.1.0.0/16:443 Redirect",
                "127.0.0.5/32:80 Redirect",
                "127.0.0.5/32:443 Redirect",
                "[::1/128]:80 Redirect",
                "[::1/128]:443 Redirect"
            ]
        );
        assert!(got.guard.is_empty());
    }

    #[test]
    fn ranges_are_guarded_intercepted_on_tls_ports_and_pass_on_allowed_ones() {
        let ranges: BTreeSet<IpNet> = [
            "140.82.112.0/20".parse().unwrap(),
            "2a0a:a440::/29".parse().unwrap(),
        ]
        .into();
        let rules = [rule(&[], &["140.82.112.0/20"], &[22])];
        let got = desired(
            &rules,
            &Resolved::new(),
            &ranges,
            RangePorts {
                tls: &[443],
                allowed: &[22, 9418],
            },
        );
        assert_eq!(
            shown(&got),
            [
                // The explicit rule for port 22 wins over the allowed port.
                "140.82.112.0/20:22 Redirect",
                "140.82.112.0/20:443 Redirect",
                "140.82.112.0/20:9418 Pass",
                "[2a0a:a440::/29]:22 Pass",
                "[2a0a:a440::/29]:443 Redirect",
                "[2a0a:a440::/29]:9418 Pass",
            ]
        );
        let guards: Vec<String> = got.guard.iter().map(|n| n.to_string()).collect();
        assert_eq!(guards, ["140.82.112.0/20", "2a0a:a440::/29"]);
    }

    #[test]
    fn v4_mapped_prefixes_go_to_the_v4_trie() {
        let rules = [rule(&[], &["::ffff:140.82.112.0/116"], &[443])];
        let got = desired(&rules, &Resolved::new(), &BTreeSet::new(), NO_RANGES);
        assert_eq!(
            got.entries.keys().next().unwrap().to_string(),
            "140.82.112.0/20:443"
        );
        let ranges: BTreeSet<IpNet> = ["::ffff:192.30.252.0/118".parse().unwrap()].into();
        let got = desired(&[], &Resolved::new(), &ranges, NO_RANGES);
        assert_eq!(got.guard.iter().next().unwrap().to_string(), "192.30.252.0/22");
    }

    #[test]
    fn keys_are_network_order_and_round_trip() {
        let net: Ipv4Net = "140.82.112.0/20".parse().unwrap();
        let (plen, key) = key_v4(net, 443);
        assert_eq!(plen, 52);
        // In memory the kernel sees the port and address bytes in network order.
        assert_eq!(key.port.to_ne_bytes(), [0x01, 0xbb, 0, 0]);
        assert_eq!(key.addr.to_ne_bytes(), [140, 82, 112, 0]);
        assert_eq!(entry_v4(plen, &key).unwrap().to_string(), "140.82.112.0/20:443");

        let net6: Ipv6Net = "2606:50c0::/32".parse().unwrap();
        let (plen6, key6) = key_v6(net6, 8443);
        assert_eq!(plen6, 64);
        assert_eq!(
            entry_v6(plen6, &key6).unwrap().to_string(),
            "[2606:50c0::/32]:8443"
        );

        let (glen, gkey) = guard_key_v4(net);
        assert_eq!((glen, gkey.to_ne_bytes()), (20, [140, 82, 112, 0]));
        assert_eq!(guard_v4(glen, gkey), Some(IpNet::V4(net)));
        let (glen6, gkey6) = guard_key_v6(net6);
        assert_eq!(guard_v6(glen6, &gkey6), Some(IpNet::V6(net6)));
    }
}
