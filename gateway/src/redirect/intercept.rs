//! The intercept set: from config rules and resolved names to the kernel's trie entries.
//!
//! Pure data transformation, no I/O: what userspace wants in the tries is computed here, and
//! `maps` applies the difference in place.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use gateway_common::{InterceptKeyV4, InterceptKeyV6, PORT_PREFIX_BITS};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::InterceptRule;

/// One (prefix, port) the kernel redirects.
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

/// Addresses each host name currently resolves to (`None`: never resolved yet).
pub type Resolved = BTreeMap<String, Option<Vec<IpAddr>>>;

/// The entries the kernel should hold for `rules`, given what the names resolved to.
pub fn desired(rules: &[InterceptRule], resolved: &Resolved) -> BTreeSet<Entry> {
    let mut out = BTreeSet::new();
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
                out.insert(Entry { net, port });
            }
        }
    }
    out
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 prefix `a.b.c.d/(n-96)`: the kernel looks v4-mapped
/// destinations up in the v4 trie.
fn unmap(net: IpNet) -> IpNet {
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
    let o = net.addr().octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    (
        PORT_PREFIX_BITS + u32::from(net.prefix_len()),
        InterceptKeyV6 {
            port: u32::from(port.to_be()),
            addr: [word(0), word(4), word(8), word(12)],
        },
    )
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
    let mut o = [0u8; 16];
    for (i, w) in key.addr.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let addr = std::net::Ipv6Addr::from(o);
    let net = Ipv6Net::new(
        addr,
        u8::try_from(prefix_len.checked_sub(PORT_PREFIX_BITS)?).ok()?,
    )
    .ok()?;
    Some(Entry {
        net: IpNet::V6(net),
        port: u16::from_be(key.port as u16),
    })
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

    #[test]
    fn hosts_and_cidrs_times_ports() {
        let mut resolved = Resolved::new();
        resolved.insert(
            "a.test".into(),
            Some(vec!["127.0.0.5".parse().unwrap(), "::1".parse().unwrap()]),
        );
        resolved.insert("b.test".into(), None);
        let rules = [rule(&["a.test", "b.test"], &["10.1.2.3/16"], &[443, 80])];
        let got: Vec<String> = desired(&rules, &resolved).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.1.0.0/16:80",
                "10.1.0.0/16:443",
                "127.0.0.5/32:80",
                "127.0.0.5/32:443",
                "[::1/128]:80",
                "[::1/128]:443"
            ]
        );
    }

    #[test]
    fn v4_mapped_prefixes_go_to_the_v4_trie() {
        let rules = [rule(&[], &["::ffff:140.82.112.0/116"], &[443])];
        let got = desired(&rules, &Resolved::new());
        assert_eq!(got.iter().next().unwrap().to_string(), "140.82.112.0/20:443");
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
    }
}
