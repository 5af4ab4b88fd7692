//! Typed access to the pinned maps, opened by path so the running gateway, `status` and tests
//! all read the same kernel state the same way.
//!
//! Nothing here decides policy: it reads and writes bytes the eBPF side defines.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use gateway_common::{
    AF_INET, AF_INET6, ClientKey, ConnRecord, GUARD_REFUSE, GatewayConfig, InterceptKeyV4, InterceptKeyV6,
    counter, map_names,
};
use ipnet::IpNet;

use super::{
    Pins,
    intercept::{
        Action, Desired, Entry, entry_v4, entry_v6, guard_key_v4, guard_key_v6, guard_v4, guard_v6, key_v4,
        key_v6,
    },
};

pub(crate) fn open(pins: &Pins, name: &str) -> anyhow::Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {} (is ghgate attached?)", path.display()))
}

/// The configuration, intercept, guard and counter maps.
pub struct Maps {
    pins: Pins,
    config: Array<MapData, GatewayConfig>,
    v4: LpmTrie<MapData, InterceptKeyV4, u32>,
    v6: LpmTrie<MapData, InterceptKeyV6, u32>,
    guard4: LpmTrie<MapData, u32, u32>,
    guard6: LpmTrie<MapData, [u32; 4], u32>,
    counters: PerCpuArray<MapData, u64>,
}

/// What one [`Maps::sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl Synced {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Maps {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        Ok(Self {
            pins: pins.clone(),
            config: Array::try_from(Map::Array(open(pins, map_names::CONFIG)?))?,
            v4: LpmTrie::try_from(Map::LpmTrie(open(pins, map_names::INTERCEPT_V4)?))?,
            v6: LpmTrie::try_from(Map::LpmTrie(open(pins, map_names::INTERCEPT_V6)?))?,
            guard4: LpmTrie::try_from(Map::LpmTrie(open(pins, map_names::GUARD_V4)?))?,
            guard6: LpmTrie::try_from(Map::LpmTrie(open(pins, map_names::GUARD_V6)?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(pins, map_names::COUNTERS)?))?,
        })
    }

    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_config(&mut self, cfg: &GatewayConfig) -> anyhow::Result<()> {
        self.config
            .set(0, cfg, 0)
            .context("cannot write the gateway config map")
    }

    /// The entries currently in the kernel's intercept tries, with their actions.
    pub fn entries(&self) -> anyhow::Result<BTreeMap<Entry, Action>> {
        let mut out = BTreeMap::new();
        for item in self.v4.iter() {
            let (key, value) = item?;
            if let (Some(e), Some(a)) = (entry_v4(key.prefix_len(), &key.data()), Action::from_value(value)) {
                out.insert(e, a);
            }
        }
        for item in self.v6.iter() {
            let (key, value) = item?;
            if let (Some(e), Some(a)) = (entry_v6(key.prefix_len(), &key.data()), Action::from_value(value)) {
                out.insert(e, a);
            }
        }
        Ok(out)
    }

    /// The prefixes currently in the kernel's guard tries.
    pub fn guards(&self) -> anyhow::Result<BTreeSet<IpNet>> {
        let mut out = BTreeSet::new();
        for item in self.guard4.iter() {
            let (key, _) = item?;
            out.extend(guard_v4(key.prefix_len(), key.data()));
        }
        for item in self.guard6.iter() {
            let (key, _) = item?;
            out.extend(guard_v6(key.prefix_len(), &key.data()));
        }
        Ok(out)
    }

    /// Makes the tries hold `desired`, one entry at a time, in the order that never lets a
    /// connection through that either the old or the new set would stop: intercept entries are
    /// added (or changed) first, then guards; stale guards are removed before stale entries. Stale
    /// intercept entries are removed only if `remove_stale` (names not yet resolved keep the
    /// previous run's entries); stale guards always are.
    pub fn sync(&mut self, desired: &Desired, remove_stale: bool) -> anyhow::Result<Synced> {
        let current = self.entries()?;
        let mut done = Synced::default();
        for (e, action) in &desired.entries {
            let before = current.get(e);
            if before == Some(action) {
                continue;
            }
            self.put_entry(e, *action)?;
            if before.is_some() {
                done.changed += 1;
            } else {
                done.added += 1;
            }
        }
        let guards = self.guards()?;
        for net in desired.guard.difference(&guards) {
            match *net {
                IpNet::V4(n) => {
                    let (plen, k) = guard_key_v4(n);
                    self.guard4.insert(&Key::new(plen, k), GUARD_REFUSE, 0)
                }
                IpNet::V6(n) => {
                    let (plen, k) = guard_key_v6(n);
                    self.guard6.insert(&Key::new(plen, k), GUARD_REFUSE, 0)
                }
            }
            .with_context(|| format!("cannot add {net} to the guarded ranges (more than the map holds?)"))?;
            done.added += 1;
        }
        for net in guards.difference(&desired.guard) {
            match *net {
                IpNet::V4(n) => {
                    let (plen, k) = guard_key_v4(n);
                    self.guard4.remove(&Key::new(plen, k))
                }
                IpNet::V6(n) => {
                    let (plen, k) = guard_key_v6(n);
                    self.guard6.remove(&Key::new(plen, k))
                }
            }
            .with_context(|| format!("cannot remove {net} from the guarded ranges"))?;
            done.removed += 1;
        }
        if remove_stale {
            for e in current.keys().filter(|e| !desired.entries.contains_key(e)) {
                match e.net {
                    IpNet::V4(n) => {
                        let (plen, k) = key_v4(n, e.port);
                        self.v4.remove(&Key::new(plen, k))
                    }
                    IpNet::V6(n) => {
                        let (plen, k) = key_v6(n, e.port);
                        self.v6.remove(&Key::new(plen, k))
                    }
                }
                .with_context(|| format!("cannot remove {e} from the intercept set"))?;
                done.removed += 1;
            }
        }
        Ok(done)
    }

    fn put_entry(&mut self, e: &Entry, action: Action) -> anyhow::Result<()> {
        match e.net {
            IpNet::V4(n) => {
                let (plen, k) = key_v4(n, e.port);
                self.v4.insert(&Key::new(plen, k), action.value(), 0)
            }
            IpNet::V6(n) => {
                let (plen, k) = key_v6(n, e.port);
                self.v6.insert(&Key::new(plen, k), action.value(), 0)
            }
        }
        .with_context(|| format!("cannot add {e} to the intercept set (more than the map holds?)"))
    }

    /// Connections the kernel currently tracks: (by socket cookie, awaiting accept by client
    /// address). Both drain to zero once connections close and are accepted.
    pub fn tracked(&self) -> anyhow::Result<(usize, usize)> {
        let by_cookie: HashMap<MapData, u64, ConnRecord> =
            HashMap::try_from(Map::LruHashMap(open(&self.pins, map_names::BY_COOKIE)?))?;
        let by_client: HashMap<MapData, ClientKey, ConnRecord> =
            HashMap::try_from(Map::LruHashMap(open(&self.pins, map_names::BY_CLIENT)?))?;
        Ok((by_cookie.keys().count(), by_client.keys().count()))
    }

    /// Counter totals over all CPUs, by name.
    pub fn counters(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        (0..counter::COUNT)
            .map(|i| {
                let values = self.counters.get(&i, 0)?;
                Ok((counter::NAMES[i as usize], values.iter().sum()))
            })
            .collect()
    }
}

/// What the kernel recorded about a redirected connection, keyed by the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirected {
    pub orig_dst: SocketAddr,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
}

/// A destination the kernel wrote (family, address words, network-order port) as a socket address.
pub fn kernel_addr(family: u32, addr: &[u32; 4], port: u32) -> anyhow::Result<SocketAddr> {
    let port = u16::from_be(port as u16);
    let ip = match family {
        f if f == u32::from(AF_INET) => IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes())),
        f if f == u32::from(AF_INET6) => IpAddr::V6(words_to_v6(addr)),
        f => return Err(anyhow!("record with unknown address family {f}")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A kernel `comm` (NUL-padded) as text.
pub fn comm(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

impl TryFrom<&ConnRecord> for Redirected {
    type Error = anyhow::Error;
    fn try_from(r: &ConnRecord) -> anyhow::Result<Self> {
        Ok(Self {
            orig_dst: kernel_addr(r.family, &r.orig_addr, r.orig_port)?,
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            comm: comm(&r.comm),
        })
    }
}

fn words_to_v6(words: &[u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// The kernel's key for a client address seen on accept (v4-mapped peers count as IPv4).
pub fn client_key(peer: SocketAddr) -> ClientKey {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => ClientKey {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            port: u32::from(peer.port()),
            family: u32::from(AF_INET),
        },
        IpAddr::V6(v6) => ClientKey {
            addr: super::intercept::words(v6),
            port: u32::from(peer.port()),
            family: u32::from(AF_INET6),
        },
    }
}

/// The client-address → record map, consumed by the listener on accept.
pub struct ClientTable {
    map: Mutex<HashMap<MapData, ClientKey, ConnRecord>>,
}

impl ClientTable {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let map = HashMap::try_from(Map::LruHashMap(open(pins, map_names::BY_CLIENT)?))?;
        Ok(Self { map: Mutex::new(map) })
    }

    /// Takes the record for a connection accepted from `peer`, removing it from the kernel map.
    pub fn take(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = client_key(peer);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_decodes_v4_and_v6() {
        let mut r = ConnRecord {
            orig_addr: [u32::from_ne_bytes([140, 82, 112, 3]), 0, 0, 0],
            orig_port: u32::from(443u16.to_be()),
            family: u32::from(AF_INET),
            tgid: 42,
            comm: *b"git-remote-http\0",
            ..Default::default()
        };
        let d = Redirected::try_from(&r).unwrap();
        assert_eq!(d.orig_dst, "140.82.112.3:443".parse().unwrap());
        assert_eq!(d.comm, "git-remote-http");
        r.family = u32::from(AF_INET6);
        r.orig_addr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        assert_eq!(
            Redirected::try_from(&r).unwrap().orig_dst,
            "[::1]:443".parse().unwrap()
        );
    }

    #[test]
    fn mapped_peers_key_as_v4() {
        let a = client_key("[::ffff:127.0.0.1]:5000".parse().unwrap());
        let b = client_key("127.0.0.1:5000".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.port, 5000);
    }
}
