//! Resolves the intercept set's host names: at start, and again as each answer's TTL runs out
//! (`redirect::live` applies the answers to the kernel).
//!
//! A failed lookup keeps the last good answer (interception never silently shrinks because DNS
//! hiccupped) and is retried. This module never decides what to intercept beyond the config.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{
    config::{DnsConfig, InterceptRule},
    redirect::intercept::Resolved,
};

/// Looks names up through the configured servers (or the system's), honouring overrides.
pub struct Resolver {
    dns: Option<TokioResolver>,
    overrides: BTreeMap<String, Vec<IpAddr>>,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Resolver {
    pub fn new(config: &DnsConfig, servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut opts = ResolverOpts::default();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let dns = if servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => Some(b.with_options(opts).build()),
                Err(e) => {
                    // Still useful with overrides and CIDRs only; names will fail loudly.
                    warn!(error = %e, "cannot read the system's DNS configuration");
                    None
                }
            }
        } else {
            let mut rc = ResolverConfig::new();
            for &addr in servers {
                rc.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                rc.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            Some(
                TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
                    .with_options(opts)
                    .build(),
            )
        };
        Ok(Self {
            dns,
            overrides: config.overrides.clone(),
            min_ttl: Duration::from_secs(config.min_ttl_secs),
            max_ttl: Duration::from_secs(config.max_ttl_secs),
        })
    }

    /// Addresses of `host` and how long they may be used.
    pub async fn lookup(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        if let Some(addrs) = self.overrides.get(host) {
            return Ok((addrs.clone(), self.max_ttl));
        }
        let dns = self.dns.as_ref().ok_or("no DNS configuration")?;
        // A trailing dot makes the name absolute: no search-domain guesses.
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let answer = dns.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
        let mut addrs: Vec<IpAddr> = answer.iter().collect();
        addrs.sort();
        addrs.dedup();
        let ttl = answer
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok((addrs, ttl.clamp(self.min_ttl, self.max_ttl)))
    }
}

/// What is failing now, so that a failure is logged when it starts and when it ends, never at
/// every retry in between (logs stay quiet while nothing changes).
#[derive(Debug)]
pub struct Failing<K: Ord> {
    now: std::collections::BTreeSet<K>,
}

impl<K: Ord> Default for Failing<K> {
    fn default() -> Self {
        Self {
            now: Default::default(),
        }
    }
}

impl<K: Ord> Failing<K> {
    /// `key` failed: true if it was not failing already (log it).
    pub fn failed(&mut self, key: K) -> bool {
        self.now.insert(key)
    }

    /// `key` worked: true if it was failing (log the recovery).
    pub fn worked(&mut self, key: &K) -> bool {
        self.now.remove(key)
    }

    pub fn is_failing(&self, key: &K) -> bool {
        self.now.contains(key)
    }

    /// How many keys are failing now.
    pub fn len(&self) -> usize {
        self.now.len()
    }

    pub fn is_empty(&self) -> bool {
        self.now.is_empty()
    }
}

/// The host names of the intercept set, their current answers and when each is due again.
pub struct HostSet {
    resolved: Resolved,
    due: BTreeMap<String, Instant>,
    retry: Duration,
    /// Names whose last lookup failed.
    failing: Failing<String>,
    /// When each name last had a good answer (µs since the epoch), for the metrics' ages.
    answered_at: BTreeMap<String, u64>,
}

impl HostSet {
    pub fn new(rules: &[InterceptRule], retry: Duration) -> Self {
        let now = Instant::now();
        let mut resolved = Resolved::new();
        let mut due = BTreeMap::new();
        for host in rules.iter().flat_map(|r| r.hosts.iter()) {
            resolved.insert(host.clone(), None);
            due.insert(host.clone(), now);
        }
        Self {
            resolved,
            due,
            retry,
            failing: Default::default(),
            answered_at: BTreeMap::new(),
        }
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// True once every name has had at least one good answer.
    pub fn complete(&self) -> bool {
        self.resolved.values().all(Option::is_some)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Resolves every name that is due, concurrently. Returns whether any answer changed.
    pub async fn refresh_due(&mut self, resolver: &Resolver) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(h, _)| h.clone())
            .collect();
        let answers = futures_util::future::join_all(due.iter().map(|h| resolver.lookup(h))).await;
        let mut changed = false;
        for (host, answer) in due.into_iter().zip(answers) {
            match answer {
                Ok((addrs, ttl)) => {
                    if self.failing.worked(&host) {
                        info!(host = %host, "resolves again");
                    }
                    let slot = self.resolved.get_mut(&host).expect("host from the set");
                    if slot.as_ref() != Some(&addrs) {
                        info!(host = %host, addresses = ?addrs, ttl_s = ttl.as_secs(), "resolved");
                        *slot = Some(addrs);
                        changed = true;
                    }
                    self.answered_at
                        .insert(host.clone(), crate::record::model::now_micros());
                    self.due.insert(host, Instant::now() + ttl);
                }
                Err(e) => {
                    let keeping = self
                        .resolved
                        .get(&host)
                        .and_then(|a| a.as_ref())
                        .map(|a| a.len())
                        .unwrap_or(0);
                    if self.failing.failed(host.clone()) {
                        warn!(host = %host, error = %e, retry_s = self.retry.as_secs(), kept_addresses = keeping,
                              "cannot resolve; keeping the last good answer and retrying (logged again when it resolves)");
                    }
                    self.due.insert(host, Instant::now() + self.retry);
                }
            }
        }
        // The oldest answer in force counts only once every name has one.
        let oldest = self
            .complete()
            .then(|| self.answered_at.values().min().copied())
            .flatten();
        crate::telemetry::metrics().names(oldest, self.failing.len());
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use ghgate_test_support::dns::DnsServer;

    use super::*;

    #[test]
    fn failing_reports_only_the_transitions() {
        let mut f = Failing::default();
        assert!(f.failed("a"), "starts failing: log");
        assert!(!f.failed("a"), "still failing: quiet");
        assert!(f.failed("b"), "another key is its own failure");
        assert!(f.is_failing(&"a"));
        assert!(f.worked(&"a"), "recovers: log");
        assert!(!f.worked(&"a"), "still fine: quiet");
        assert!(f.failed("a"), "fails again: log again");
    }

    /// Log lines, as a subscriber on this thread writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn take(&self) -> Vec<String> {
            let text = String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_name_that_keeps_failing_is_one_warning_and_its_recovery_one_line() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let server = DnsServer::start("flaky.test", vec!["192.0.2.7".parse().unwrap()], 1);
        // A loopback port nobody answers on: every lookup fails at once (refused).
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let config = DnsConfig {
            min_ttl_secs: 0,
            ..Default::default()
        };
        let failing = Resolver::new(&config, &[dead_addr]).unwrap();
        let working = Resolver::new(&config, &[server.addr]).unwrap();
        let rule = InterceptRule {
            hosts: vec!["flaky.test".into(), "other.test".into()],
            cidrs: vec![],
            ports: vec![443],
        };
        // Retry at once: every call finds both names due.
        let mut hosts = HostSet::new(std::slice::from_ref(&rule), Duration::ZERO);

        for _ in 0..4 {
            hosts.refresh_due(&failing).await;
        }
        let logged = lines.take();
        let warnings: Vec<&String> = logged.iter().filter(|l| l.contains("cannot resolve")).collect();
        assert_eq!(
            warnings.len(),
            2,
            "one warning per failing name, not per retry: {logged:#?}"
        );
        assert!(warnings.iter().any(|l| l.contains("flaky.test")));
        assert!(warnings.iter().any(|l| l.contains("other.test")));
        assert_eq!(logged.len(), 2, "nothing else: {logged:#?}");

        // flaky.test resolves again (other.test is NXDOMAIN there: still failing, still quiet).
        for _ in 0..3 {
            hosts.refresh_due(&working).await;
        }
        let logged = lines.take();
        let again: Vec<&String> = logged.iter().filter(|l| l.contains("resolves again")).collect();
        assert_eq!(again.len(), 1, "one line when it recovers: {logged:#?}");
        assert!(again[0].contains("flaky.test"));
        assert_eq!(
            logged.iter().filter(|l| l.contains("resolved")).count(),
            1,
            "its new answer once, not at every refresh: {logged:#?}"
        );
        assert!(
            !logged.iter().any(|l| l.contains("other.test")),
            "a name still failing stays quiet: {logged:#?}"
        );
        assert_eq!(
            hosts.resolved().get("flaky.test"),
            Some(&Some(vec!["192.0.2.7".parse().unwrap()]))
        );
    }
}
