//! Egress control: what the governed cgroups may reach besides GitHub (which the redirect always
//! mediates) and the gateway.
//!
//! The kernel decides (`gateway-ebpf`: seen events in audit mode, EPERM for what the allow tries
//! do not hold in block mode); this module keeps the allow tries current and names destinations
//! for the records. DNS from the governed cgroups is sent by the kernel to the gateway's own
//! resolver ([`dns`]), whatever server the caller named: it asks the configured servers and,
//! *before* the caller gets the answer, puts the addresses of allowed names into the allow tries
//! and remembers which name each address was looked up by ([`names`]). So a client never
//! connects to a just-resolved allowed address before the kernel allows it, and a job cannot
//! learn addresses from a resolver of its own choosing.
//!
//! Why a resolver of our own rather than snooping the host resolver's answers: a snooped answer
//! reaches the caller at the same moment it reaches us, so in block mode the caller's connect()
//! would race the map update and often lose; and a job could simply ask another resolver (or the
//! same one over TCP) that the snooping program does not parse.
//!
//! Must never: allow an address because a map operation failed (a full trie means refused), or
//! let the allow-list decide anything about GitHub's addresses.
pub mod config;
pub mod dns;
pub mod names;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use gateway_common::{ALLOW_PASS, InterceptKeyV4, InterceptKeyV6, map_names};
use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{info, warn};

pub use self::config::{EgressConfig, EgressMode};
use self::names::NameCache;
use crate::{
    redirect::{
        Pins,
        intercept::{Entry, key_v4, key_v6, unmap},
        maps,
    },
    resolve::Failing,
};

/// How often learned addresses past their time are taken out of the kernel.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A name is kept (for naming records) at least this long after its answer.
const NAME_KEEP: Duration = Duration::from_secs(3600);

/// The kernel's allow tries.
pub struct AllowMaps {
    v4: LpmTrie<MapData, InterceptKeyV4, u32>,
    v6: LpmTrie<MapData, InterceptKeyV6, u32>,
}

impl AllowMaps {
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        Ok(Self {
            v4: LpmTrie::try_from(Map::LpmTrie(maps::open(pins, map_names::ALLOW_V4)?))?,
            v6: LpmTrie::try_from(Map::LpmTrie(maps::open(pins, map_names::ALLOW_V6)?))?,
        })
    }

    /// What the tries hold now (entries of a previous gateway included).
    fn entries(&self) -> anyhow::Result<BTreeSet<Entry>> {
        let mut out = BTreeSet::new();
        for item in self.v4.iter() {
            let (key, _) = item?;
            out.extend(crate::redirect::intercept::entry_v4(
                key.prefix_len(),
                &key.data(),
            ));
        }
        for item in self.v6.iter() {
            let (key, _) = item?;
            out.extend(crate::redirect::intercept::entry_v6(
                key.prefix_len(),
                &key.data(),
            ));
        }
        Ok(out)
    }

    fn insert(&mut self, e: Entry) -> anyhow::Result<()> {
        match e.net {
            IpNet::V4(n) => {
                let (len, key) = key_v4(n, e.port);
                self.v4.insert(&Key::new(len, key), ALLOW_PASS, 0)
            }
            IpNet::V6(n) => {
                let (len, key) = key_v6(n, e.port);
                self.v6.insert(&Key::new(len, key), ALLOW_PASS, 0)
            }
        }
        .with_context(|| format!("cannot allow {e} in the kernel"))
    }

    fn remove(&mut self, e: Entry) -> anyhow::Result<()> {
        match e.net {
            IpNet::V4(n) => {
                let (len, key) = key_v4(n, e.port);
                self.v4.remove(&Key::new(len, key))
            }
            IpNet::V6(n) => {
                let (len, key) = key_v6(n, e.port);
                self.v6.remove(&Key::new(len, key))
            }
        }
        .with_context(|| format!("cannot remove {e} from the kernel's allow-list"))
    }
}

/// An answer of the gateway's resolver: the name asked, and the addresses with their TTLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addrs: Vec<(IpAddr, Duration)>,
}

/// The egress state of a running gateway.
pub struct Egress {
    config: EgressConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    /// None in tests without a kernel.
    maps: Option<AllowMaps>,
    names: NameCache,
    /// (address, port or 0) learned from answers for allowed names, with when each lapses.
    learned: BTreeMap<Entry, Instant>,
    /// What the kernel holds, as this gateway put it there.
    in_kernel: BTreeSet<Entry>,
    /// A failing insert (a full trie) is logged once, until one succeeds again.
    failing: Failing<()>,
}

impl Egress {
    pub fn new(config: EgressConfig, maps: Option<AllowMaps>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                maps,
                names: NameCache::new(config.name_cache),
                learned: BTreeMap::new(),
                in_kernel: BTreeSet::new(),
                failing: Failing::default(),
            }),
            config,
        }
    }

    pub fn config(&self) -> &EgressConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured CIDRs, on their ports (0: every port).
    fn fixed(&self) -> BTreeSet<Entry> {
        let mut out = BTreeSet::new();
        for rule in &self.config.allow {
            for &net in &rule.cidrs {
                let net = unmap(net).trunc();
                if rule.ports.is_empty() {
                    out.insert(Entry { net, port: 0 });
                }
                for &port in &rule.ports {
                    out.insert(Entry { net, port });
                }
            }
        }
        out
    }

    /// What the kernel should hold now.
    fn desired(&self, inner: &Inner, now: Instant) -> BTreeSet<Entry> {
        let mut out = self.fixed();
        out.extend(inner.learned.iter().filter(|(_, t)| **t > now).map(|(e, _)| *e));
        out
    }

    /// Makes the kernel hold exactly the configured CIDRs and the live learned addresses
    /// (removing what a previous gateway left). Adds before it removes.
    pub fn sync(&self) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.learned.retain(|_, t| *t > now);
        let desired = self.desired(&inner, now);
        let Inner { maps, in_kernel, .. } = &mut *inner;
        let Some(maps) = maps else {
            *in_kernel = desired;
            return Ok(());
        };
        let current = maps.entries()?;
        for e in desired.difference(&current) {
            maps.insert(*e)?;
        }
        for e in current.difference(&desired) {
            maps.remove(*e)?;
        }
        *in_kernel = desired;
        Ok(())
    }

    /// Learns an answer of the gateway's resolver: names its addresses and, if the name is
    /// allowed, allows them in the kernel before returning (the caller gets the answer after).
    pub fn learn(&self, answer: &Answer) {
        let now = Instant::now();
        let name = config::normalize(&answer.name);
        let ports = self.config.ports_for(&name);
        let min = Duration::from_secs(self.config.learned_min_secs);
        let mut inner = self.lock();
        for &(addr, ttl) in &answer.addrs {
            let addr = addr.to_canonical();
            inner.names.insert(addr, &name, ttl.max(NAME_KEEP), now);
            let Some(ports) = &ports else { continue };
            let until = now + ttl.max(min);
            let ports: Vec<u16> = if ports.is_empty() { vec![0] } else { ports.clone() };
            for port in ports {
                let entry = Entry {
                    net: IpNet::from(addr),
                    port,
                };
                let slot = inner.learned.entry(entry).or_insert(until);
                *slot = (*slot).max(until);
                if inner.in_kernel.contains(&entry) {
                    continue;
                }
                let result = match inner.maps.as_mut() {
                    Some(m) => m.insert(entry),
                    None => Ok(()),
                };
                match result {
                    Ok(()) => {
                        inner.in_kernel.insert(entry);
                        if inner.failing.worked(&()) {
                            info!("egress allow-list accepts entries again");
                        }
                    }
                    Err(e) => {
                        // Not in the kernel means refused: block mode fails closed.
                        if inner.failing.failed(()) {
                            warn!(error = %format!("{e:#}"), name = %name,
                                  "cannot allow a learned address (allow-list full?); connections to it are refused (logged again when inserts succeed)");
                        }
                    }
                }
            }
        }
    }

    /// The name `addr` was last looked up by through the gateway's resolver.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.lock().names.get(addr, Instant::now()).map(str::to_owned)
    }

    /// Is `entry` (an address, a port or 0) allowed now, as far as this gateway has put it in
    /// the kernel? For tests and status.
    pub fn holds(&self, entry: &Entry) -> bool {
        self.lock().in_kernel.contains(entry)
    }
}

/// Takes lapsed learned addresses out of the kernel, forever.
pub async fn sweep_forever(egress: Arc<Egress>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = Failing::default();
    loop {
        tick.tick().await;
        match egress.sync() {
            Ok(()) => {
                if failing.worked(&()) {
                    info!("egress allow-list in sync again");
                }
            }
            Err(e) => {
                if failing.failed(()) {
                    warn!(error = %format!("{e:#}"), "cannot sync the egress allow-list (logged again when it recovers)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(toml_text: &str) -> Egress {
        #[derive(serde::Deserialize)]
        struct Wrap {
            egress: EgressConfig,
        }
        Egress::new(toml::from_str::<Wrap>(toml_text).unwrap().egress, None)
    }

    fn entry(s: &str, port: u16) -> Entry {
        Entry {
            net: IpNet::from(s.parse::<IpAddr>().unwrap()),
            port,
        }
    }

    #[test]
    fn answers_for_allowed_names_are_allowed_others_only_named() {
        let e = egress(
            "[egress]\nmode = \"block\"\nlearned_min_secs = 60\n[[egress.allow]]\nhosts = [\"*.ok.test\"]\nports = [443]\n[[egress.allow]]\ncidrs = [\"10.9.0.0/16\"]\n",
        );
        e.sync().unwrap();
        assert!(e.holds(&Entry {
            net: "10.9.0.0/16".parse().unwrap(),
            port: 0
        }));
        e.learn(&Answer {
            name: "Pkg.OK.test.".into(),
            addrs: vec![
                ("192.0.2.1".parse().unwrap(), Duration::from_secs(5)),
                ("::ffff:192.0.2.2".parse().unwrap(), Duration::from_secs(5)),
            ],
        });
        e.learn(&Answer {
            name: "evil.test".into(),
            addrs: vec![("198.51.100.7".parse().unwrap(), Duration::from_secs(5))],
        });
        assert!(e.holds(&entry("192.0.2.1", 443)));
        assert!(
            e.holds(&entry("192.0.2.2", 443)),
            "v4-mapped answers are the v4 address"
        );
        assert!(!e.holds(&entry("192.0.2.1", 0)), "only the allowed port");
        assert!(!e.holds(&entry("198.51.100.7", 0)));
        assert!(!e.holds(&entry("198.51.100.7", 443)));
        assert_eq!(
            e.name_of("192.0.2.1".parse().unwrap()).as_deref(),
            Some("pkg.ok.test")
        );
        assert_eq!(
            e.name_of("198.51.100.7".parse().unwrap()).as_deref(),
            Some("evil.test")
        );
        assert_eq!(e.name_of("203.0.113.1".parse().unwrap()), None);
    }
}
