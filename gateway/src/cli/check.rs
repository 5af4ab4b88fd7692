//! `ghgate check`: validate a config and print the intercept set it resolves to; with
//! `--kernel`, load every program into this kernel (verifier included) without attaching.
use std::{process::ExitCode, time::Duration};

use gateway_common::prog_names;

use super::ConfigArg;
use crate::{
    redirect::{self, Pins},
    resolve::{HostSet, Resolver},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Load the eBPF programs into this kernel (nothing is attached) and report the verifier's
    /// verdict. Needs root.
    #[arg(long)]
    kernel: bool,
    /// With --kernel: skip the config check.
    #[arg(long, requires = "kernel")]
    kernel_only: bool,
    /// Fail (exit 1) on an enforcement gap that lost mediation (programs detached, or traffic let
    /// through in bypass mode) and ended at or after this time: RFC 3339 or an age ("24h", "7d").
    #[arg(long, default_value = "24h")]
    gaps_since: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut healthy = true;
    if !args.kernel_only {
        check_config(&args.config)?;
        healthy &= check_gaps(&args.config, &args.gaps_since)?;
    }
    if args.kernel {
        check_kernel()?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reports enforcement gaps from the gateway's state file; false when one lost mediation.
fn check_gaps(arg: &ConfigArg, since: &str) -> anyhow::Result<bool> {
    use crate::redirect::watch;
    let config = arg.load()?;
    let since = super::sessions::parse_when(since)?;
    let Some(state) = watch::load(&config.state_dir) else {
        println!("enforcement: no gateway has run with this state_dir yet");
        return Ok(true);
    };
    let mut healthy = true;
    for gap in state.gaps.iter().filter(|g| g.until >= since) {
        let lost = watch::lost_mediation(gap);
        healthy &= !lost;
        println!(
            "enforcement gap: {:?} from {} to {} ({}){}: {}",
            gap.kind,
            crate::record::model::rfc3339(gap.since),
            crate::record::model::rfc3339(gap.until),
            watch::span(gap),
            if lost { ", mediation LOST" } else { "" },
            gap.detail
        );
    }
    if healthy {
        println!("enforcement: no gap that lost mediation");
    }
    Ok(healthy)
}

fn check_config(arg: &ConfigArg) -> anyhow::Result<()> {
    let config = arg.load()?;
    println!("config {}: ok", arg.config.display());
    println!("cgroup: {}", config.redirect.cgroup);
    println!("listen: {} {}", config.listen.ipv4, config.listen.ipv6);
    println!("on_gateway_down: {:?}", config.redirect.on_gateway_down);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hosts = runtime.block_on(async {
        let resolver = Resolver::new(&config.dns, &config.dns_servers())?;
        let mut hosts = HostSet::new(&config.intercept, Duration::from_secs(config.dns.retry_secs));
        hosts.refresh_due(&resolver).await;
        anyhow::Ok(hosts)
    })?;
    for (host, addrs) in hosts.resolved() {
        match addrs {
            Some(a) => println!(
                "host {host}: {}",
                a.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(" ")
            ),
            None => println!("host {host}: unresolved (the gateway would keep retrying)"),
        }
    }
    let ranges = crate::redirect::ranges::initial(&config.github, &config.state_dir)?;
    if config.github.enabled() {
        println!(
            "github ranges: {} prefixes from the {}{} (refreshed from {} every {} s once running)",
            ranges.prefixes.len(),
            ranges.source,
            ranges
                .as_of
                .as_deref()
                .map(|d| format!(" of {d}"))
                .unwrap_or_default(),
            config.github.meta_url,
            config.github.refresh_secs
        );
    } else {
        println!("github ranges: off (only the names and CIDRs of [[intercept]])");
    }
    let desired = crate::redirect::intercept::desired(
        &config.intercept_rules(),
        hosts.resolved(),
        &ranges.prefixes,
        crate::redirect::intercept::RangePorts {
            tls: &config.tls.ports,
            allowed: &config.github.allow_ports,
        },
    );
    println!("intercept set:");
    for (entry, action) in &desired.entries {
        match action {
            crate::redirect::intercept::Action::Redirect => println!("  {entry}"),
            crate::redirect::intercept::Action::Pass => {
                println!("  {entry} (allowed port: passes untouched)")
            }
        }
    }
    println!(
        "guarded (every other port and protocol refused): {} prefixes",
        desired.guard.len()
    );
    Ok(())
}

fn check_kernel() -> anyhow::Result<()> {
    redirect::check_privileges("ghgate check --kernel")?;
    // Maps need a bpffs home while loading; a private one, removed again whatever happens.
    let pins = Pins::new(format!("/sys/fs/bpf/ghgate-check-{}", std::process::id()));
    redirect::ensure_bpffs(pins.root())?;
    let loaded = redirect::load(&pins);
    let cleanup = redirect::detach(&pins);
    let _ebpf = loaded?;
    cleanup?;
    for name in prog_names::ALL {
        println!("program {name}: accepted by the verifier");
    }
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned());
    println!("kernel {}: ok", release.unwrap_or_else(|_| "?".into()));
    Ok(())
}
