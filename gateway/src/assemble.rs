//! From a config to the parts of a running gateway that need no kernel: the recorder, the
//! maskers, the interception CA, the upstream pool, the credential broker, the policy enforcer
//! and the pipeline, put together as the proxy that accepted connections enter. `ghgate run`
//! serves it behind the kernel's redirect; in-process tests serve it behind a fixed original
//! destination (`listen::FixedOrigDst`), with no root.
//!
//! This module only builds; it never binds, attaches or serves.
use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    config::Config,
    credentials::Broker,
    enforce::{Enforcer, SecretScan},
    http::{Limits, Settings, pool::Pools},
    identity::oidc::OidcValidator,
    mask::{self, policy::MaskSet},
    outbound::Outbound,
    pipeline::Pipeline,
    proxy::Proxy,
    record::Recorder,
    relay::Relay,
    resolve::Resolver,
    tls::{
        ca::{self, Ca},
        fronting::Fronting,
        leaf::LeafCache,
        upstream::UpstreamTls,
    },
};

/// What [`assemble`] made.
pub struct Assembled {
    pub proxy: Proxy<Pipeline>,
    /// `None` when `[record] enabled = false`.
    pub recorder: Option<Arc<Recorder>>,
    /// The gateway's own HTTPS client, for the tasks beside the proxy (the ranges' refresh).
    pub outbound: Outbound,
}

/// Builds the proxy and what it needs from `config`, creating the CA, the mask key and the record
/// store on first use. Must run inside a tokio runtime (the pool's sweeper is a task).
pub fn assemble(config: &Config) -> anyhow::Result<Assembled> {
    let recorder = if config.record.enabled {
        Some(Recorder::start(config)?)
    } else {
        warn!("[record] enabled = false: exchanges are NOT recorded");
        None
    };
    let key = mask::key::load_or_create(&config.state_dir)?;
    let mask = MaskSet::new(&config.mask, key).context("cannot compile the [mask] rules")?;
    let seen = Arc::new(mask::seen::SeenSecrets::default());
    if let Some(r) = &recorder {
        match seen.rebuild(&config.record_dir()) {
            Ok(n) => info!(
                fingerprints = seen.len(),
                unreadable = n.unreadable,
                "fingerprints of secrets seen in responses, from the record"
            ),
            Err(e) => {
                warn!(error = %e, "cannot rebuild the secrets seen in responses from the record index; starting empty")
            }
        }
        r.set_seen(seen.clone());
    }
    let upstream_tls = UpstreamTls::new(&config.tls.upstream_extra_roots)?;
    let outbound = outbound(config, upstream_tls.clone())?;
    let proxy = proxy(
        config,
        load_or_create_ca(config)?,
        recorder.clone(),
        (mask, seen),
        outbound.clone(),
        upstream_tls,
    )?;
    Ok(Assembled {
        proxy,
        recorder,
        outbound,
    })
}

/// The intercepted names a passthrough destination is asked about (`tls::fronting`): the API's
/// host, then the exact names of `[tls] intercept`, the hosts of `[[intercept]]` and `[tls]
/// fronting_check`, those that are terminated.
fn intercepted_names(config: &Config, github: &ghgate_policy::classify::GitHub) -> Vec<String> {
    let tls = &config.tls;
    std::iter::once(github.api_host().to_owned())
        .chain(tls.intercept.iter().cloned())
        .chain(config.intercept.iter().flat_map(|r| r.hosts.iter().cloned()))
        .chain(tls.fronting_check.iter().cloned())
        .filter(|n| tls.terminates(n))
        .collect()
}

/// The interception CA, created on first start.
fn load_or_create_ca(config: &Config) -> anyhow::Result<Ca> {
    let dir = ca::dir(&config.state_dir);
    if dir.join(ca::KEY_FILE).exists() {
        return Ca::load(&dir);
    }
    let created = Ca::init(&dir, &config.tls.intercept, false)?;
    info!(dir = %dir.display(), "created the interception CA; clients must trust it (`ghgate ca export`)");
    Ok(created)
}

/// The gateway's own HTTPS client (JWKS, GitHub App tokens), its names resolved like the
/// intercept set's (`[dns]`, overrides included).
/// Shares the upstream pool's root store: loading the system's roots again would slow every
/// (re)start, and a restart must be quick (connections are refused meanwhile).
fn outbound(config: &Config, tls: UpstreamTls) -> anyhow::Result<Outbound> {
    let resolver = Arc::new(Resolver::new(&config.dns, &config.dns_servers())?);
    Ok(Outbound::new(
        tls,
        resolver,
        Duration::from_secs(config.relay.connect_timeout_secs),
    ))
}

fn proxy(
    config: &Config,
    ca: Ca,
    recorder: Option<Arc<Recorder>>,
    (mask, seen): (MaskSet, Arc<mask::seen::SeenSecrets>),
    outbound: Outbound,
    upstream_tls: UpstreamTls,
) -> anyhow::Result<Proxy<Pipeline>> {
    let broker = Arc::new(Broker::load(&config.credentials, &outbound)?);
    let github = Arc::new(config.github_hosts());
    let scan = SecretScan {
        masker: mask.records.clone(),
        seen,
    };
    let fronting = Arc::new(Fronting::new(
        outbound.resolver(),
        upstream_tls.clone(),
        intercepted_names(config, &github),
    ));
    if !config.tls.passthrough.is_empty() {
        info!(names = ?fronting.names(), "a passthrough destination that serves one of these intercepted names is refused (domain fronting)");
    }
    let enforcer = Enforcer::start(config, outbound.clone(), recorder.clone(), scan)?;
    let oidc =
        (!config.oidc.issuers.is_empty()).then(|| Arc::new(OidcValidator::new(&config.oidc, outbound)));
    let capacity = NonZeroUsize::new(config.tls.leaf_cache_size).context("tls.leaf_cache_size is zero")?;
    let connect_timeout = Duration::from_secs(config.relay.connect_timeout_secs);
    Ok(Proxy {
        relay: Relay {
            connect_timeout,
            recorder: recorder.clone(),
        },
        tls: config.tls.clone(),
        leaves: Arc::new(LeafCache::new(ca, capacity)),
        tickets: rustls::crypto::ring::Ticketer::new().context("cannot make TLS session ticket keys")?,
        caps: crate::listen::caps::Caps::new(crate::listen::caps::limits(
            config.http.max_connections_per_process,
            config.http.max_connections_per_cgroup,
            config.http.max_connections,
        )),
        fronting,
        pool: {
            let pools = Pools::new(config.listen.shard_count(), upstream_tls, connect_timeout);
            pools.spawn_sweepers();
            pools
        },
        phases: Arc::new({
            let pipeline = Pipeline::new(recorder, mask, broker, oidc, enforcer, github.clone());
            mask::set_log_masker(pipeline.mask.logs.clone());
            pipeline
        }),
        settings: Settings {
            limits: Limits::from(&config.http),
            github: github.clone(),
        },
        configs: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The names a passthrough destination is asked about: every exact name the gateway
    /// terminates, from each place a config names one, once each; never a passthrough name, a
    /// name it does not terminate, or a wildcard.
    #[test]
    fn passthrough_destinations_are_asked_about_every_exact_intercepted_name() {
        let text = r#"
            [redirect]
            cgroup = "ghgate.clients"
            [[intercept]]
            hosts = ["github.com", "ghe.example.com", "pinned.github.com"]
            ports = [443]
            [tls]
            passthrough = ["pinned.github.com"]
            fronting_check = ["api.githubcopilot.com", "api.github.com"]
        "#;
        let config = Config::parse(text, Path::new("test.toml")).unwrap();
        let names = intercepted_names(&config, &config.github_hosts());
        let fronting = Fronting::new(
            Arc::new(Resolver::new(&config.dns, &[]).unwrap()),
            UpstreamTls::new(&[]).unwrap(),
            names,
        );
        assert_eq!(
            fronting.names(),
            ["api.github.com", "github.com", "api.githubcopilot.com"],
            "the API's host, the exact intercept names and [[intercept]] hosts that are \
             terminated, then fronting_check"
        );
    }
}
