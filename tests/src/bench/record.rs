//! `ghgate-bench record`: what session recording costs. One upstream, two gateways on two test
//! cgroups — identical but for `[record] enabled` — and the same clients through each, the cases
//! interleaved. Benchmarks report; they never assert.
use std::{net::SocketAddr, path::Path};

use crate::cpu::{GIB, Meter};
use anyhow::Context as _;
use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup,
    https::{TestCa, Upstream},
    loopback_v4,
};

use crate::proxy::{HttpClientArgs, NAME, Report, median, pct, run_client};

#[derive(clap::Args)]
pub struct RecordArgs {
    /// Sequential keep-alive GETs timed per case and round.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Connections in parallel for the requests/s figure.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Seconds of each requests/s run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes of each download run.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Rounds; each reported figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Both gateways record; the second also copies its store to a loopback S3 server (moto,
    /// from `cargo xtask setup`): what the record sink costs.
    #[arg(long)]
    pub sink: bool,
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// Waits until the gateway is idle (under 2 % of a CPU over 0.5 s): its recorder has written and
/// indexed what the previous measurement sent, so that backlog is not billed to the next one.
/// Returns how long that took.
fn wait_idle(gw: &Gateway) -> anyhow::Result<std::time::Duration> {
    let pid = gw.pid().context("gateway pid")?;
    let start = std::time::Instant::now();
    let mut last = crate::cpu::process_ticks(pid).context("gateway CPU time")?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = crate::cpu::process_ticks(pid).context("gateway CPU time")?;
        // 100 ticks per second: 1 tick in half a second is 2 %.
        if now - last <= 1 || start.elapsed() > std::time::Duration::from_secs(120) {
            return Ok(start.elapsed());
        }
        last = now;
    }
}

/// CPU-seconds per GiB of SHA-256 on this machine (the same implementation the recorder uses).
pub fn sha256_secs_per_gib() -> f64 {
    use sha2::Digest as _;
    let chunk = vec![0x5au8; 1 << 20];
    let mut h = sha2::Sha256::new();
    let start = std::time::Instant::now();
    for _ in 0..256 {
        h.update(&chunk);
    }
    std::hint::black_box(h.finalize());
    start.elapsed().as_secs_f64() * 4.0
}

pub fn run(args: &RecordArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[NAME]);
    let upstream_ca = ca.write_pem(dir.path());
    let port = upstream.addr.port();
    let s3 = args.sink.then(|| {
        let s3 = ghgate_e2e::s3::S3Server::start();
        s3.create_bucket("bench-evidence", false);
        s3
    });
    let creds = dir.path().join("s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            ghgate_e2e::s3::ACCESS_KEY,
            ghgate_e2e::s3::SECRET_KEY
        ),
    )?;
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let spec = |on: bool| {
        // Without --sink: recording off vs on. With it: recording on, sink off vs on.
        let record = on || args.sink;
        let mut toml = format!(
            "[http]\nmax_requests_per_second = 1000000\nmax_connections_per_process = 1000000\nmax_connections_per_cgroup = 1000000\nmax_connections = 1000000\n[record]\nenabled = {record}\n"
        );
        if args.sink {
            // Segments small enough to seal under the load, for the upload lag (both gateways).
            toml += "segment_bytes = 4194304\n";
        }
        if let (true, Some(s3)) = (on, &s3) {
            toml += &format!(
                "[record.sink]\nurl = \"{}\"\nbucket = \"bench-evidence\"\nprefix = \"bench\"\ncredentials_file = \"{}\"\ninterval_ms = 1000\n",
                s3.url(),
                creds.display()
            );
        }
        GatewaySpec {
            intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
            tls_ports: vec![port],
            upstream_extra_roots: vec![upstream_ca.clone()],
            extra_toml: toml,
            ..Default::default()
        }
    };
    let what = if args.sink { "the record sink" } else { "recording" };
    let (cg_off, cg_on) = (TestCgroup::new(), TestCgroup::new());
    let off = Gateway::start(&cg_off, &spec(false));
    let on = Gateway::start(&cg_on, &spec(true));
    let record_dir = on.state_dir.join("record");
    let base = HttpClientArgs::base(
        upstream.addr,
        &upstream_ca,
        args.requests,
        args.concurrency,
        args.seconds,
        args.bytes,
    );
    // [off, on] × rounds
    let (mut p50, mut rps, mut mbs) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    // Per download: the host's busy fraction and CPU-seconds, and the gateway's CPU-seconds.
    let (mut dl_busy, mut dl_host, mut dl_gw) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    let mut recorded_exchanges = 0u64;
    let mut recorded_secs = 0.0;
    let mut disk_for_rps = 0u64;
    let mut catch_up = Vec::new();
    for round in 0..args.rounds {
        for k in 0..2 {
            let which = (round as usize + k) % 2;
            let gw = if which == 1 { &on } else { &off };
            let mk = |mode: &str| HttpClientArgs {
                mode: mode.into(),
                ca: gw.ca_file(),
                ..base.clone()
            };
            eprintln!(
                "round {}/{}: {what} {}: latency, requests/s, download…",
                round + 1,
                args.rounds,
                if which == 1 { "on" } else { "off" }
            );
            wait_idle(gw)?;
            let lat: Report = run_client(Some(gw), &mk("latency"))?;
            p50[which].push(pct(&lat.ns, 0.5));
            wait_idle(gw)?;
            let disk_before = dir_bytes(&record_dir);
            let r = run_client(Some(gw), &mk("rps"))?;
            let drained = wait_idle(gw)?;
            if which == 1 {
                recorded_exchanges += (r.requests_per_s * args.seconds as f64) as u64;
                recorded_secs += args.seconds as f64;
                disk_for_rps += dir_bytes(&record_dir).saturating_sub(disk_before);
                catch_up.push(drained.as_secs_f64());
            }
            rps[which].push(r.requests_per_s);
            let gw_pid = gw.pid().context("gateway pid")?;
            let meter = Meter::start(Some(gw_pid));
            let dl = run_client(Some(gw), &mk("download"))?;
            let (host, gw_secs) = meter.stop();
            let gib = args.bytes as f64 / GIB;
            dl_busy[which].push(host.fraction);
            dl_host[which].push(host.cpu_secs / gib);
            dl_gw[which].push(gw_secs.unwrap_or(0.0) / gib);
            mbs[which].push(dl.mb_per_s);
        }
    }
    let segments = record_dir.join("segments");
    let total_disk = dir_bytes(&record_dir);
    anyhow::ensure!(segments.is_dir(), "the recording gateway wrote no segments");
    let verify = on.ghgate(&["sessions", "verify", "--all"]);
    let verified = String::from_utf8_lossy(&verify.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();

    let (p_off, p_on) = (median(p50[0].clone()), median(p50[1].clone()));
    let (r_off, r_on) = (median(rps[0].clone()), median(rps[1].clone()));
    let (m_off, m_on) = (median(mbs[0].clone()), median(mbs[1].clone()));
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!(
        "\nghgate-bench record (loopback, HTTP/1.1 keep-alive GETs of ~80-byte bodies; {} B download; {} rounds, medians)",
        args.bytes, args.rounds
    );
    println!(
        "{:<16} {:>12} {:>14} {:>14}",
        "", "GET p50 µs", "requests/s", "download MB/s"
    );
    let (label_off, label_on) = if args.sink {
        ("sink off", "sink on")
    } else {
        ("recording off", "recording on")
    };
    println!("{label_off:<16} {p_off:>12.1} {r_off:>14.0} {m_off:>14.0}");
    println!("{label_on:<16} {p_on:>12.1} {r_on:>14.0} {m_on:>14.0}");
    println!("\n{what} on vs off, measured in this run:");
    println!(
        "added GET p50 {:+.1} µs {} target ≤ 50 µs",
        p_on - p_off,
        verdict(p_on - p_off <= 50.0)
    );
    let loss = 1.0 - m_on / m_off;
    println!(
        "download throughput {:.2}× ({:.1} % lost) {} target ≤ 10 %",
        m_on / m_off,
        loss * 100.0,
        verdict(loss <= 0.10)
    );
    println!("requests/s {:.2}×", r_on / r_off);
    let sha = sha256_secs_per_gib();
    let (host_off, host_on) = (median(dl_host[0].clone()), median(dl_host[1].clone()));
    println!(
        "download CPU (medians): host busy {:.0} % off, {:.0} % on; host CPU-s/GiB {host_off:.2} off, {host_on:.2} on; gateway CPU-s/GiB {:.2} off, {:.2} on",
        median(dl_busy[0].clone()) * 100.0,
        median(dl_busy[1].clone()) * 100.0,
        median(dl_gw[0].clone()),
        median(dl_gw[1].clone()),
    );
    println!(
        "SHA-256 of a whole body (required past the body cap) costs {sha:.2} CPU-s/GiB on this CPU (one thread, measured now): with the host's CPUs already busy {:.0} % without recording, that alone bounds recording-on download at about {:.2}× of off",
        median(dl_busy[0].clone()) * 100.0,
        host_off / (host_off + sha)
    );
    println!(
        "exchanges recorded per second (requests/s runs): {:.0}",
        recorded_exchanges as f64 / recorded_secs.max(1.0)
    );
    println!(
        "bytes on disk per small exchange (segments + index, requests/s runs): {:.0}",
        disk_for_rps as f64 / recorded_exchanges.max(1) as f64
    );
    println!(
        "the recorder caught up {:.1} s (median) after each {} s requests/s run; every figure is measured from an idle gateway",
        median(catch_up),
        args.seconds
    );
    println!("store size at the end: {total_disk} B; `sessions verify --all`: {verified}");
    if let Some(s3) = &s3 {
        // Exchanges/s of the two recording gateways: the sink's cost on the recorder.
        println!(
            "exchanges recorded per second, sink on vs off: {:.2}× {} target ≥ 0.95×; objects in the bucket: {}",
            r_on / r_off,
            verdict(r_on / r_off >= 0.95),
            s3.keys("bench-evidence", "bench/").len()
        );
        // From a segment's seal (its file's last write) to its remote copy read back and
        // confirmed, as the gateway logged each, under this run's load.
        let mut lags: Vec<f64> = on
            .logs()
            .iter()
            .filter(|l| l["message"] == "record segment copied to the sink and confirmed")
            .filter_map(|l| l["lag_ms"].as_f64())
            .collect();
        lags.sort_by(f64::total_cmp);
        match lags.last() {
            Some(max) => println!(
                "upload lag, seal to confirmed remote copy (interval_ms = 1000): p50 {:.0} ms, max {max:.0} ms over {} sealed segments of 4 MiB",
                median(lags.clone()),
                lags.len()
            ),
            None => println!("upload lag: no segment sealed during the run (raise --seconds or --rounds)"),
        }
    }
    let _ = on.pid().context("gateway pid")?;
    Ok(())
}
