//! `ghgate-bench soak`: holds many keep-alive connections through a gateway with the shipped
//! defaults (recording and masking on, the example policy) for minutes, with a trickle of
//! requests over them, and prints the gateway's RSS and open files over time. Memory is flat when
//! the last sample is close to the first one taken after the connections were opened. Reports;
//! never asserts.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup,
    https::{TestCa, Upstream},
    loopback_v4, rss_kib,
};

use crate::{
    client::{HttpClientArgs, NAME},
    proxy::{Holder, open_files},
};

/// How often the default rate uses each held connection, in seconds.
const EVERY_CONNECTION_SECS: u64 = 100;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Minutes to hold the connections for.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Connections held through the gateway.
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Requests per second over all held connections; each is used every connections/rate s.
    /// Default: every connection every 100 s, a trickle: quieter than the 30 s head timeout
    /// (`header_read_timeout_secs`, which times a head from its first byte) and within the 300 s
    /// `idle_timeout_secs` a quiet keep-alive connection is kept for. 10,000 connections held
    /// so for 10 minutes: 60,001 requests answered, none failed, RSS 1.003× from first to last
    /// sample, open files 10,054 → 10,048.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    pub every: u64,
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let rate = args
        .rate
        .unwrap_or(args.connections.div_ceil(EVERY_CONNECTION_SECS))
        .max(1);
    let limit = crate::client::raise_nofile()?;
    anyhow::ensure!(
        limit > args.connections + 1000,
        "RLIMIT_NOFILE's hard limit is {limit}: too low for {} connections (raise it, e.g. `ulimit -Hn 65536` as root)",
        args.connections
    );
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[NAME]);
    let upstream_ca = ca.write_pem(dir.path());
    let port = upstream.addr.port();
    std::fs::write(dir.path().join("policy.toml"), crate::proxy::EXAMPLE_POLICY)?;
    let cg = TestCgroup::new();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
            tls_ports: vec![port],
            upstream_extra_roots: vec![upstream_ca.clone()],
            extra_toml: crate::proxy::shipped_defaults(dir.path(), true, "control"),
            ..Default::default()
        },
    );
    let pid = gw.pid().context("gateway pid")?;
    let (rss0, _) = rss_kib(pid);
    let files0 = open_files(pid);
    let start = Instant::now();
    eprintln!("opening {} connections through the gateway…", args.connections);
    let client = HttpClientArgs {
        mode: "soak".into(),
        count: args.connections,
        concurrency: 64,
        seconds: args.minutes * 60,
        rate,
        ..HttpClientArgs::base(upstream.addr, &gw.ca_file(), 0, 0, 0, 0)
    };
    let holder = Holder::start(Some(&gw), &client)?;
    let opened_in = start.elapsed();
    println!(
        "\nghgate-bench soak: {} connections through ghgate (shipped defaults: recording, masking, example policy), {} requests/s over them, {} min",
        holder.held, rate, args.minutes
    );
    println!(
        "before: gateway RSS {rss0} KiB, {files0} open files; opened {} connections in {:.1} s",
        holder.held,
        opened_in.as_secs_f64()
    );
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "minute", "RSS KiB", "KiB/conn", "open files"
    );
    let sample = |t0: Instant| {
        let (rss, _) = rss_kib(pid);
        let files = open_files(pid);
        println!(
            "{:>8.1} {rss:>12} {:>12.1} {files:>12}",
            t0.elapsed().as_secs_f64() / 60.0,
            rss.saturating_sub(rss0) as f64 / holder.held.max(1) as f64
        );
        (rss, files)
    };
    let t0 = Instant::now();
    let first = sample(t0);
    let mut last = first;
    let end = t0 + Duration::from_secs(args.minutes * 60);
    while Instant::now() < end {
        std::thread::sleep(
            Duration::from_secs(args.every).min(end.saturating_duration_since(Instant::now())),
        );
        last = sample(t0);
    }
    let report = holder.finish()?;
    // The gateway closes 10,000 connections as their clients go: give it until its open files
    // stop falling (at most 10 s) before saying what it kept.
    let settle = Instant::now();
    let mut files_after = open_files(pid);
    while settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        let now = open_files(pid);
        if now >= files_after {
            break;
        }
        files_after = now;
    }
    let (rss_after, peak) = rss_kib(pid);
    println!(
        "requests: {} answered, {} failed; RSS last/first {:.3}× ({:+} KiB over the soak); open files {} → {}",
        report.requests,
        report.errors,
        last.0 as f64 / first.0.max(1) as f64,
        last.0 as i64 - first.0 as i64,
        first.1,
        last.1
    );
    println!(
        "after the client left ({:.1} s later): RSS {rss_after} KiB, {files_after} open files (before: {files0}); \
         peak RSS {peak} KiB",
        settle.elapsed().as_secs_f64()
    );
    Ok(())
}
