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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.kernel_only {
        check_config(&args.config)?;
    }
    if args.kernel {
        check_kernel()?;
    }
    Ok(ExitCode::SUCCESS)
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
    println!("intercept set:");
    for entry in hosts.desired() {
        println!("  {entry}");
    }
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
