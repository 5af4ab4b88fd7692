//! `ghgate run`: bind, load, attach, serve.
//!
//! The order matters: listeners are bound before the new programs are attached, and the previous
//! generation's programs (if a gateway ran before) are only unpinned after the new ones are in
//! place, so a restart never opens a window in which connections bypass the gateway.
use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use gateway_common::{EGRESS_AUDIT, EGRESS_BLOCK, EGRESS_OFF, GatewayConfig, ON_DOWN_BYPASS, ON_DOWN_REFUSE};
use tracing::{error, info, warn};

use super::ConfigArg;
use crate::{
    assemble::{self, Assembled},
    config::{Config, OnGatewayDown},
    egress::{self, Egress, EgressMode},
    identity::ci::JobAttribution,
    listen, mask,
    record::model,
    redirect::{
        self, ClientTable, Maps, Pins, cgroup, events, exempt,
        live::{self, LiveSet},
        ranges,
        scopes::Scopes,
        watch::{self, HeldMaps, Watch},
    },
    resolve::{HostSet, Resolver},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    super::init_logging(config.log.format);
    raise_open_files_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    gather_logs(&mut runtime);
    runtime.build()?.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Below this many open files the gateway warns: each intercepted connection holds one (and
/// one more while its upstream connection is dialled or pooled).
const FEW_OPEN_FILES: u64 = 8192;

/// Raises the soft limit on open files to the hard limit, as servers that hold many sockets do:
/// a systemd service starts at 1,024 (of 524,288 allowed), which a runner's parallel clients, or
/// one process opening connections in a loop, would exhaust; every connection after that
/// waits in the listen queue until one closes.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(
                from = soft,
                to = hard,
                "raised the open files limit to the hard limit"
            ),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        }
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    if now < FEW_OPEN_FILES {
        warn!(
            open_files = now,
            "the gateway may open only this many files, one per intercepted connection: raise LimitNOFILE (systemd) or the hard limit"
        );
    }
}

/// Worker threads (the main runtime's and the shards') write their log lines in bursts, when
/// they run out of work.
fn gather_logs(runtime: &mut tokio::runtime::Builder) {
    runtime
        .on_thread_unpark(super::logbuf::gather_on_this_thread)
        .on_thread_park(super::logbuf::flush_this_thread)
        .on_thread_stop(super::logbuf::flush_this_thread);
}

/// The kernel's view of the gateway, from the config.
pub fn kernel_config(config: &Config) -> GatewayConfig {
    let v4 = match config.listen.ipv4.ip() {
        std::net::IpAddr::V4(ip) => u32::from_ne_bytes(ip.octets()),
        std::net::IpAddr::V6(_) => 0, // rejected by validate()
    };
    let v6 = match config.listen.ipv6.ip() {
        std::net::IpAddr::V6(ip) => {
            let o = ip.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
        std::net::IpAddr::V4(_) => [0; 4],
    };
    GatewayConfig {
        listen_v4_addr: v4,
        listen_v4_port: u32::from(config.listen.ipv4.port().to_be()),
        listen_v6_addr: v6,
        listen_v6_port: u32::from(config.listen.ipv6.port().to_be()),
        listener_mark: config.redirect.listener_mark,
        on_gateway_down: match config.redirect.on_gateway_down {
            OnGatewayDown::Refuse => ON_DOWN_REFUSE,
            OnGatewayDown::Bypass => ON_DOWN_BYPASS,
        },
        enabled: 1,
        egress_mode: match config.egress.mode {
            EgressMode::Off => EGRESS_OFF,
            EgressMode::Audit => EGRESS_AUDIT,
            EgressMode::Block => EGRESS_BLOCK,
        },
        dns_port: if config.egress.enabled() {
            u32::from(config.egress.dns_port.to_be())
        } else {
            0
        },
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    redirect::check_privileges("ghgate run")?;
    let pins = Pins::new(&config.redirect.pin_dir);
    redirect::ensure_bpffs(pins.root())?;
    let cgroup_dir = cgroup::ensure(&config.redirect.cgroup)?;
    let takeover = pins.attached();
    let previous = watch::load(&config.state_dir);
    // Everything that can fail on bad files fails here, before anything is attached.
    let ranges = ranges::initial(&config.github, &config.state_dir)?;
    let Assembled {
        proxy,
        recorder,
        outbound,
    } = assemble::assemble(&config)?;
    let proxy = Arc::new(proxy);

    if let Some(e) = &proxy.phases.enforcer {
        e.serve(&config).await?;
    }
    let approvals = proxy.phases.enforcer.as_ref().map(|e| e.approvals.clone());
    crate::telemetry::start(&config, recorder.as_ref(), approvals).await?;

    let shard_count = config.listen.shard_count();
    let mark = Some(config.redirect.listener_mark);
    let listeners_v4 = listen::bind(config.listen.ipv4, mark, shard_count)?;
    let listeners_v6 = listen::bind(config.listen.ipv6, mark, shard_count)?;
    let dns_listeners = if config.egress.enabled() {
        Some(egress::dns::bind(&config.egress_resolver_addrs())?)
    } else {
        None
    };

    let mut ebpf = redirect::load(&pins)?;
    // From here on the gateway's own connections are exempt from the programs.
    exempt::install(&pins)?;
    let mut maps = Maps::open(&pins)?;
    // What the kernel counted while no gateway ran (the maps outlive it while pinned).
    let (refused_down, bypassed_down) = watch::down_counters(&maps);
    // The allow-list is in place before block mode is switched on (a running generation reads
    // the same config map).
    let egress = if config.egress.enabled() {
        let e = Arc::new(Egress::new(
            config.egress.clone(),
            Some(egress::AllowMaps::open(&pins)?),
        ));
        e.sync().context("cannot fill the egress allow-list")?;
        Some(e)
    } else {
        None
    };
    maps.set_config(&kernel_config(&config))?;
    let ranges_source = ranges.source;
    let live = Arc::new(LiveSet::new(maps, &config, ranges));

    let resolver = Resolver::new(&config.dns, &config.dns_servers())?;
    let mut hosts = HostSet::new(&config.intercept, Duration::from_secs(config.dns.retry_secs));
    hosts.refresh_due(&resolver).await;
    let synced = live
        .set_names(hosts.resolved(), hosts.complete())
        .context("cannot fill the intercept set")?;

    redirect::attach(&mut ebpf, &cgroup_dir, &pins)?;
    // The pinned links hold the programs now. Holding their fds too would keep them loaded after
    // `ghgate detach`, so that detaching would depend on this process exiting.
    drop(ebpf);
    // Container scopes that exist already are attached before "ready"; new ones as they appear.
    let scopes = if config.redirect.containers.enabled {
        let scopes = Scopes {
            pins: pins.clone(),
            mount: cgroup::cgroup2_mount()?,
            config: config.redirect.containers.clone(),
        };
        let synced = scopes.sync().context("cannot attach to the container scopes")?;
        for rel in &synced.attached {
            info!(scope = %rel.display(), "attached to a container scope");
        }
        Some(scopes)
    } else {
        None
    };

    let now = model::now_micros();
    let boot_id = crate::identity::boot_id().to_owned();
    let gap = watch::gap_at_start(
        previous.as_ref(),
        watch::Kernel {
            boot_id: &boot_id,
            still_attached: takeover,
            refused_down,
            bypassed_down,
        },
        now,
    );
    let mut state = watch::State {
        pid: std::process::id(),
        boot_id,
        started_at: now,
        alive_at: now,
        stopped_at: None,
        detached_at: None,
        on_gateway_down: match config.redirect.on_gateway_down {
            OnGatewayDown::Refuse => "refuse".into(),
            OnGatewayDown::Bypass => "bypass".into(),
        },
        refused_down,
        bypassed_down,
        gaps: previous.map(|p| p.gaps).unwrap_or_default(),
    };
    if let Some(gap) = gap {
        warn!(kind = ?gap.kind, since = %model::rfc3339(gap.since), span = %watch::span(&gap), refused = gap.refused,
              bypassed = gap.bypassed, detail = %gap.detail, "enforcement gap before this start");
        if let Some(r) = &recorder {
            r.enforcement_gap(gap.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot record the enforcement gap before this start: {e}"))?;
        }
        state.push_gap(gap);
    }
    watch::save(&config.state_dir, &state).context("cannot write the enforcement state file")?;
    let state = Arc::new(std::sync::Mutex::new(state));

    // Before "ready": a SIGTERM right after must be an orderly stop, not the default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    info!(
        cgroup = %cgroup_dir.display(),
        listen_v4 = %config.listen.ipv4,
        listen_v6 = %config.listen.ipv6,
        on_gateway_down = ?config.redirect.on_gateway_down,
        egress = config.egress.mode.as_str(),
        intercept_entries = live.entries()?,
        github_ranges = live.ranges().prefixes.len(),
        github_ranges_from = %ranges_source,
        added = synced.added,
        removed = synced.removed,
        took_over = takeover,
        pid = std::process::id(),
        "gateway ready"
    );
    crate::notify::ready();

    if let Some(scopes) = scopes {
        tokio::spawn(scopes.run_forever());
    }
    let clients = Arc::new(ClientTable::open(&pins)?);
    tokio::spawn(events::record_forever(
        events::open(&pins)?,
        recorder.clone(),
        egress.clone(),
    ));
    if let (Some(egress), Some(listeners)) = (&egress, dns_listeners) {
        let upstreams = egress::dns::upstreams(&config.dns_servers(), &config.egress_resolver_addrs());
        info!(upstreams = ?upstreams, addrs = ?config.egress_resolver_addrs(), "egress resolver serving");
        tokio::spawn(egress::dns::serve(listeners, upstreams, egress.clone()));
        tokio::spawn(egress::sweep_forever(egress.clone()));
    }
    tokio::spawn(live::names_forever(hosts, resolver, live.clone()));
    tokio::spawn(live::refresh_forever(
        live.clone(),
        outbound,
        config.github.clone(),
        config.state_dir.clone(),
    ));
    tokio::spawn(
        Watch {
            pins: pins.clone(),
            cgroup_dir: cgroup_dir.clone(),
            state_dir: config.state_dir.clone(),
            recorder: recorder.clone(),
            held: HeldMaps::open(&pins)?,
            maps: Maps::open(&pins)?,
            state: state.clone(),
        }
        .run_forever(),
    );
    let metrics_path = config.state_dir.join(METRICS_FILE);
    tokio::spawn(write_metrics_forever(metrics_path.clone(), live.clone()));
    let jobs = config.redirect.containers.enabled.then(|| {
        Arc::new(JobAttribution {
            mount: cgroup::cgroup2_mount().unwrap_or_default(),
            governed: cgroup_dir.clone(),
            containers: config.redirect.containers.clone(),
        })
    });
    let listeners = listeners_v4
        .into_iter()
        .zip(listeners_v6)
        .map(|(v4, v6)| vec![v4, v6])
        .collect();
    let mut shards = listen::Shards::start(listeners, clients, proxy, jobs, &gather_logs)?;
    info!(
        shards = shards.count(),
        "serving connections on one thread per CPU"
    );

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
        (shard, e) = shards.stopped() => { error!(shard, error = %e, "a shard's listener stopped"); }
    }
    // Accepting ends; the connections in flight get `drain_secs` to end (a second signal cuts
    // them at once), so their exchanges are recorded whole before the store is sealed.
    listen::drain::begin();
    let grace = Duration::from_secs(config.listen.drain_secs);
    let open = listen::drain::live();
    if open > 0 {
        info!(
            connections = open,
            drain_secs = grace.as_secs(),
            "stopping: no new connections; waiting for those in flight"
        );
    }
    let cut = tokio::select! {
        left = listen::drain::until_drained(grace) => left,
        _ = interrupt.recv() => listen::drain::live(),
        _ = term.recv() => listen::drain::live(),
    };
    if cut > 0 {
        warn!(
            connections = cut,
            "stopping with connections still open: they are cut"
        );
    } else if open > 0 {
        info!(connections = open, "every connection in flight ended");
    }
    let while_down = match config.redirect.on_gateway_down {
        OnGatewayDown::Refuse => "intercepted connections are refused",
        OnGatewayDown::Bypass => "intercepted connections go direct (bypass mode)",
    };
    write_metrics(&metrics_path, &live);
    if let Some(r) = &recorder {
        if let Err(e) = r.flush().await {
            warn!(error = %e, "could not write every queued record before stopping");
        }
        r.stop();
    }
    if let Err(e) = watch::update(&state, &config.state_dir, |s| {
        s.stopped_at = Some(model::now_micros())
    }) {
        warn!(error = %e, "cannot write the enforcement state file");
    }
    info!(
        pin_dir = %pins.root().display(),
        "stopping; the redirect stays attached and {while_down} until ghgate runs again (`ghgate detach` removes it)"
    );
    Ok(())
}

/// Where the running gateway's counters are written (`ghgate status` reads them).
pub const METRICS_FILE: &str = "metrics.json";

/// The counters as `ghgate status` shows them.
fn metrics_json(live: &LiveSet) -> serde_json::Value {
    let masked: Vec<serde_json::Value> = mask::metrics::counts()
        .into_iter()
        .map(|(rule, place, count)| serde_json::json!({ "rule": rule, "place": place, "count": count }))
        .collect();
    serde_json::json!({
        "pid": std::process::id(),
        "written_at": model::now_micros(),
        "masked": masked,
        "github_ranges": live.summary(),
        "names": live.names_summary(),
    })
}

fn write_metrics(path: &std::path::Path, live: &LiveSet) {
    let tmp = path.with_extension("json.tmp");
    let text = metrics_json(live).to_string();
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        warn!(path = %path.display(), error = %e, "cannot write the metrics file");
    }
}

async fn write_metrics_forever(path: std::path::PathBuf, live: Arc<LiveSet>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        write_metrics(&path, &live);
    }
}
