//! A passthrough name may not front for an intercepted one.
//!
//! A relayed connection is never looked inside: what the client sends after its ClientHello
//! reaches the upstream unrecorded and unmasked. An edge that serves many names on one address
//! routes by the `Host` inside the TLS, so a client could send a passthrough name in its hello
//! and then ask for `Host: api.github.com` (domain fronting). Two checks run before a
//! passthrough connection is dialled, and either refuses it:
//!
//! - **The name's own address.** The client's destination must be an address the gateway itself
//!   resolves the passthrough name to (`[dns]`, overrides included). A client cannot take a
//!   passthrough name to the API's address.
//! - **No intercepted name there.** The gateway handshakes with that address for each
//!   intercepted name it knows exactly (the API's host, the exact names of `[tls] intercept`, the
//!   hosts of `[[intercept]]`, and `[tls] fronting_check`: GitHub's own API, git and Copilot
//!   hosts by default, which the shipped config's wildcards cover), verifying the certificate as
//!   it does for its own upstream connections. If the address proves it serves one of them,
//!   passthrough there could carry that name's requests unseen, and is refused. Verdicts are
//!   kept per address for [`VERDICT_TTL`]. An address that cannot be asked (no connection, or
//!   no answer within [`PROBE_TIMEOUT`]) is refused too, failing closed: a relay there could
//!   not have been checked (and a dead address's relay would fail anyway); that verdict is kept
//!   for [`UNASKED_TTL`].
//!
//! The list is fixed at start: names learned from traffic could be crowded out by a process
//! that makes up names under an intercepted wildcard. What neither check sees: an intercepted
//! name on no list that is served at the passthrough name's address, and an edge that would
//! route a `Host` it presents no certificate for.
use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use lru::LruCache;
use tokio::sync::OnceCell;

use super::upstream::{Proto, UpstreamError, UpstreamTls};
use crate::resolve::Resolver;

/// How long a verdict on an address stands.
pub const VERDICT_TTL: Duration = Duration::from_secs(600);
/// How long the handshakes with one address may take together.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a verdict that an address could not be asked stands.
pub const UNASKED_TTL: Duration = Duration::from_secs(10);
/// Addresses whose verdicts are kept.
const VERDICTS: usize = 4096;
/// Intercepted names asked of an address at most.
pub const MAX_NAMES: usize = 16;
/// New addresses asked a minute on average, and at most at once: a passthrough name whose DNS
/// a process controls (under a wildcard) could otherwise point at a new GitHub address with
/// every connection and have the gateway handshake with GitHub for each intercepted name each
/// time. Past it, a passthrough connection to an address not yet asked is refused.
pub const PROBES_PER_MINUTE: f64 = 30.0;
pub const PROBES_AT_ONCE: f64 = 30.0;
/// Of that budget, what one cgroup may spend a minute, and at once: a process that spends it
/// leaves the rest to the host's other cgroups (a runner's job, another service).
pub const PROBES_PER_CGROUP: f64 = 10.0;
/// Cgroups whose budgets are kept (the least recently seen is forgotten, and starts afresh).
const CGROUPS: usize = 1024;

/// Why a passthrough connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The destination is not an address of the passthrough name (or the name did not resolve).
    Elsewhere(String),
    /// The destination serves an intercepted name.
    Fronts(String),
}

/// What an address proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// It presented a valid certificate for this intercepted name.
    Serves(String),
    /// It presented none for any of them.
    Clean,
    /// It could not be asked (no connection, no answer in time): kept for [`UNASKED_TTL`].
    Unreachable(String),
    /// Not asked: too many new addresses lately, from the caller's cgroup
    /// ([`PROBES_PER_CGROUP`]) or from all ([`PROBES_PER_MINUTE`]); says which.
    Unasked(String),
}

impl Verdict {
    /// As `ghgate_passthrough_probes_total` names it.
    fn label(&self) -> &'static str {
        match self {
            Verdict::Serves(_) => "serves",
            Verdict::Clean => "clean",
            Verdict::Unreachable(_) => "unreachable",
            Verdict::Unasked(_) => "unasked",
        }
    }
}

/// A verdict and when it was reached.
type Slot = Arc<OnceCell<(Verdict, Instant)>>;

pub struct Fronting {
    resolver: Arc<Resolver>,
    tls: UpstreamTls,
    names: Vec<String>,
    verdicts: Mutex<LruCache<SocketAddr, Slot>>,
    probes: Mutex<crate::bucket::TokenBucket>,
    /// Each cgroup's share of `probes`.
    per_cgroup: Mutex<LruCache<u64, crate::bucket::TokenBucket>>,
}

impl Fronting {
    /// `names`: the intercepted names to ask each address about (deduplicated, first
    /// [`MAX_NAMES`] kept).
    pub fn new(resolver: Arc<Resolver>, tls: UpstreamTls, names: impl IntoIterator<Item = String>) -> Self {
        let mut kept: Vec<String> = Vec::new();
        for n in names {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if !n.is_empty() && !n.contains('*') && !kept.contains(&n) && kept.len() < MAX_NAMES {
                kept.push(n);
            }
        }
        Self {
            resolver,
            tls,
            names: kept,
            verdicts: Mutex::new(LruCache::new(NonZeroUsize::new(VERDICTS).expect("non-zero"))),
            probes: Mutex::new(crate::bucket::TokenBucket::new(
                PROBES_PER_MINUTE / 60.0,
                PROBES_AT_ONCE,
            )),
            per_cgroup: Mutex::new(LruCache::new(NonZeroUsize::new(CGROUPS).expect("non-zero"))),
        }
    }

    /// The intercepted names each address is asked about.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// May a connection for passthrough `name` go to `dst`, from a process in `cgroup`?
    pub async fn check(&self, cgroup: u64, name: &str, dst: SocketAddr) -> Result<(), Refused> {
        let ip = dst.ip().to_canonical();
        // As the passthrough list compares it: without case and one trailing dot.
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let (addrs, _ttl) = self.resolver.lookup(&name).await.map_err(|e| {
            Refused::Elsewhere(format!(
                "the gateway cannot resolve the passthrough name to check the destination: {e}"
            ))
        })?;
        if !addrs.iter().any(|a| a.to_canonical() == ip) {
            return Err(Refused::Elsewhere(format!(
                "{ip} is not an address of {name} (the gateway resolves it to {})",
                list(&addrs)
            )));
        }
        let dst = SocketAddr::new(ip, dst.port());
        match self.verdict(cgroup, dst).await {
            Verdict::Serves(other) => Err(Refused::Fronts(format!(
                "{dst} also serves {other}, which is intercepted: a passthrough connection there could carry its requests unseen"
            ))),
            Verdict::Unasked(why) => Err(Refused::Fronts(format!(
                "{dst} was not checked for intercepted names: {why}"
            ))),
            Verdict::Unreachable(why) => Err(Refused::Fronts(format!(
                "{dst} could not be checked for intercepted names ({why})"
            ))),
            Verdict::Clean => Ok(()),
        }
    }

    /// Whether a new address may be asked about for `cgroup`: its share first, then the whole
    /// budget; or why not.
    fn may_ask(&self, cgroup: u64) -> Result<(), String> {
        let mine = self
            .per_cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_mut(cgroup, || {
                crate::bucket::TokenBucket::new(PROBES_PER_CGROUP / 60.0, PROBES_PER_CGROUP)
            })
            .take();
        if !mine {
            return Err(format!(
                "this cgroup asked for more than {PROBES_PER_CGROUP} new passthrough addresses a minute"
            ));
        }
        if !self.probes.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(format!(
                "more than {PROBES_PER_MINUTE} new passthrough addresses a minute in all"
            ));
        }
        Ok(())
    }

    /// The kept verdict on `dst`, or a new one (concurrent callers share one probe).
    async fn verdict(&self, cgroup: u64, dst: SocketAddr) -> Verdict {
        let slot = {
            let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
            let stale = v.get(&dst).and_then(|s| s.get()).is_some_and(|(v, at)| {
                at.elapsed()
                    >= match v {
                        Verdict::Unreachable(_) => UNASKED_TTL,
                        _ => VERDICT_TTL,
                    }
            });
            if stale {
                v.pop(&dst);
            }
            match v.get(&dst) {
                Some(slot) => slot.clone(),
                None => {
                    if let Err(why) = self.may_ask(cgroup) {
                        let unasked = Verdict::Unasked(why);
                        crate::telemetry::metrics().passthrough_probe(unasked.label());
                        return unasked;
                    }
                    v.get_or_insert(dst, Slot::default).clone()
                }
            }
        };
        let (verdict, _) = slot
            .get_or_init(|| async {
                let verdict = self.probe(dst).await;
                crate::telemetry::metrics().passthrough_probe(verdict.label());
                (verdict, Instant::now())
            })
            .await
            .clone();
        verdict
    }

    /// Handshakes with `dst` for each intercepted name at once.
    async fn probe(&self, dst: SocketAddr) -> Verdict {
        let asks = self.names.iter().map(|name| async move {
            let r = self.tls.connect(dst, name, &[Proto::Http1], PROBE_TIMEOUT).await;
            (name, r.map(drop))
        });
        let mut unreachable = None;
        for (name, r) in join_all(asks).await {
            match r {
                Ok(()) => return Verdict::Serves(name.clone()),
                Err(e @ (UpstreamError::Connect { .. } | UpstreamError::Timeout { .. })) => {
                    unreachable = Some(e.to_string())
                }
                Err(_) => {}
            }
        }
        match unreachable {
            Some(why) => Verdict::Unreachable(why),
            None => Verdict::Clean,
        }
    }
}

fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "no address".into();
    }
    addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use ghgate_test_support::{
        https::{TestCa, Upstream},
        loopback_v4,
    };

    use super::*;
    use crate::config::DnsConfig;

    const SITE: &str = "pinned.site.test";
    const API: &str = "api.github.com";
    /// The cgroup the tests' connections come from.
    const CG: u64 = 1;

    /// The API's edge (presenting a certificate for `API` and `SITE`, as an edge that serves
    /// many names does), a separate site (for `SITE` only), and a checker trusting their CA,
    /// with `SITE` resolved to `site_ips`.
    struct World {
        edge: Upstream,
        site: Upstream,
        fronting: Fronting,
        _dir: tempfile::TempDir,
    }

    fn world(site_ips: impl FnOnce(&Upstream, &Upstream) -> Vec<IpAddr>) -> World {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let edge = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[API, SITE]);
        let site = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[SITE]);
        let dns = DnsConfig {
            overrides: [(SITE.to_owned(), site_ips(&edge, &site))].into(),
            ..DnsConfig::default()
        };
        let tls = UpstreamTls::new(&[ca.write_pem(dir.path())]).unwrap();
        let resolver = Arc::new(Resolver::new(&dns, &[]).unwrap());
        let fronting = Fronting::new(
            resolver,
            tls,
            [API.to_owned(), "*.github.com".to_owned(), API.to_owned()],
        );
        World {
            edge,
            site,
            fronting,
            _dir: dir,
        }
    }

    /// The fakes run runtimes of their own: each test's world is made outside its runtime.
    fn run<F: std::future::Future<Output = ()>>(f: F) {
        tokio::runtime::Runtime::new().unwrap().block_on(f)
    }

    #[test]
    fn a_passthrough_name_goes_only_to_its_own_address_where_nothing_intercepted_is_served() {
        let w = world(|_, site| vec![site.addr.ip()]);
        run(async {
            assert_eq!(w.fronting.names(), [API], "exact names, once each");
            // At its own address, which presents no certificate for the API: relayed.
            assert_eq!(w.fronting.check(CG, SITE, w.site.addr).await, Ok(()));
            // The verdict is kept (the site completes no handshake: its certificate is not
            // the API's).
            let kept = w.fronting.verdicts.lock().unwrap().peek(&w.site.addr).cloned();
            assert_eq!(
                kept.and_then(|s| s.get().map(|(v, _)| v.clone())),
                Some(Verdict::Clean)
            );
            assert_eq!(w.site.connections(), 0);
            // The name as the passthrough list reads it: without case or a trailing dot.
            assert_eq!(
                w.fronting.check(CG, "PINNED.Site.test.", w.site.addr).await,
                Ok(())
            );
            // Spelled as a v4-mapped address, the same address.
            let ip = match w.site.addr.ip() {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            };
            assert_eq!(
                w.fronting
                    .check(CG, SITE, SocketAddr::new(ip, w.site.addr.port()))
                    .await,
                Ok(())
            );

            // Taken to the API's address instead: refused, and nothing is dialled there.
            let r = w.fronting.check(CG, SITE, w.edge.addr).await;
            assert!(
                matches!(&r, Err(Refused::Elsewhere(d)) if d.contains(&w.site.addr.ip().to_string())),
                "{r:?}"
            );
            assert!(
                w.fronting.verdicts.lock().unwrap().peek(&w.edge.addr).is_none(),
                "the API's address was never asked"
            );
            // Another name's spelling of the same site: the name must resolve.
            let r = w.fronting.check(CG, "unknown.site.test", w.site.addr).await;
            assert!(matches!(&r, Err(Refused::Elsewhere(_))), "{r:?}");
        });
    }

    #[test]
    fn a_passthrough_name_that_lives_where_the_api_is_served_is_refused() {
        // The site's name resolves to the API's edge: what a client sends inside the relayed
        // TLS could be `Host: api.github.com`.
        let w = world(|edge, _| vec![edge.addr.ip()]);
        run(async {
            // A flood of connections at once shares one probe: one handshake in all.
            let all = join_all((0..32).map(|_| w.fronting.check(CG, SITE, w.edge.addr))).await;
            for r in &all {
                assert!(matches!(r, Err(Refused::Fronts(d)) if d.contains(API)), "{r:?}");
            }
            // The edge counts a handshake once the client's last flight arrives: after the
            // probe has its answer.
            for _ in 0..100 {
                if w.edge.connections() > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let asked = w.edge.connections();
            assert_eq!(asked, 1, "one probe for 32 connections");
            // Kept: refused again without asking.
            assert!(matches!(
                w.fronting.check(CG, SITE, w.edge.addr).await,
                Err(Refused::Fronts(_))
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(w.edge.connections(), asked);
        });
    }

    /// What `cgroup`'s connections for `SITE` to port 9 of `ips` got: asked (nothing listens
    /// there, so each one asked is refused as one that could not be checked), refused for the
    /// cgroup's share, refused for the whole budget.
    async fn tally(f: &Fronting, cgroup: u64, ips: &[IpAddr]) -> (usize, usize, usize) {
        let mut seen = (0, 0, 0);
        for ip in ips {
            match f.check(cgroup, SITE, SocketAddr::new(*ip, 9)).await {
                Err(Refused::Fronts(d)) if d.contains("could not be checked") => seen.0 += 1,
                Err(Refused::Fronts(d)) if d.contains("this cgroup asked") => seen.1 += 1,
                Err(Refused::Fronts(d)) if d.contains("in all") => seen.2 += 1,
                other => panic!("{other:?}"),
            }
        }
        seen
    }

    /// A passthrough name whose DNS a process controls, pointed at a new address each time:
    /// the gateway asks at most `PROBES_PER_CGROUP` new addresses at once for the process's
    /// cgroup and `PROBES_AT_ONCE` for all, then refuses the connections it could not check.
    #[test]
    fn new_addresses_are_asked_within_a_budget_that_one_cgroup_cannot_spend_alone() {
        let (share, all) = (PROBES_PER_CGROUP as usize, PROBES_AT_ONCE as usize);
        // The last is kept for a cgroup that comes after the budget is spent.
        let ips: Vec<IpAddr> = (0..all + share + 1).map(|_| IpAddr::V4(loopback_v4())).collect();
        let w = world(|_, _| ips.clone());
        run(async {
            let (ips, fresh) = (&ips[..all + share], ips[all + share]);
            // One cgroup tries them all: its share is asked, the rest refused as its own doing.
            assert_eq!(tally(&w.fronting, 7, ips).await, (share, all, 0));
            // Other cgroups are still asked, each its share, until the whole budget is spent.
            let mut asked = share;
            for (cgroup, part) in (8..).zip(ips[share..].chunks(share)) {
                let (a, mine, in_all) = tally(&w.fronting, cgroup, part).await;
                assert_eq!(mine, 0);
                assert_eq!(a + in_all, part.len());
                asked += a;
            }
            assert_eq!(asked, all);
            // Spent: a cgroup that has asked nothing yet is refused for the whole budget.
            let r = w.fronting.check(99, SITE, SocketAddr::new(fresh, 9)).await;
            assert!(
                matches!(&r, Err(Refused::Fronts(d)) if d.contains("in all")),
                "{r:?}"
            );
        });
    }

    /// An address that cannot be asked (here nothing listens) is refused, failing closed, and
    /// the verdict stands a while: connecting again does not spend the budget again.
    #[test]
    fn an_address_that_cannot_be_asked_is_refused_for_a_while() {
        let closed = TcpListener::bind((loopback_v4(), 0)).unwrap();
        let ip = closed.local_addr().unwrap().ip();
        let at = closed.local_addr().unwrap();
        drop(closed);
        let w = world(|_, _| vec![ip]);
        run(async {
            for _ in 0..3 {
                let r = w.fronting.check(CG, SITE, at).await;
                assert!(
                    matches!(&r, Err(Refused::Fronts(d)) if d.contains("could not be checked") && d.contains("connect")),
                    "{r:?}"
                );
            }
        });
        let kept = w.fronting.verdicts.lock().unwrap().peek(&at).cloned();
        assert!(
            matches!(
                kept.and_then(|s| s.get().cloned()),
                Some((Verdict::Unreachable(_), _))
            ),
            "kept"
        );
        // One ask was spent for the three connections.
        let mut probes = w.fronting.probes.lock().unwrap();
        let left = (0..100).take_while(|_| probes.take()).count();
        assert_eq!(left, PROBES_AT_ONCE as usize - 1);
    }

    /// An address that accepts and never answers (a hostile process would like the probe to
    /// time out and the relay to pass): refused once the probe gives up.
    #[test]
    fn an_address_that_does_not_answer_in_time_is_refused() {
        let silent = TcpListener::bind((loopback_v4(), 0)).unwrap();
        let at = silent.local_addr().unwrap();
        let w = world(|_, _| vec![at.ip()]);
        run(async {
            let r = w.fronting.check(CG, SITE, at).await;
            assert!(
                matches!(&r, Err(Refused::Fronts(d)) if d.contains("could not be checked") && d.contains("within")),
                "{r:?}"
            );
        });
        drop(silent);
    }
}
