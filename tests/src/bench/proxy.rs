//! `ghgate-bench proxy`: what HTTPS interception costs, side by side on one loopback workload:
//! direct TLS to the test upstream, through ghgate (redirected, terminated, re-encrypted), and
//! through mitmproxy (regular proxy mode, installed from PyPI into target/ by the bench).
//!
//! Each client runs in its own process, in the right place: outside any test cgroup for direct
//! and mitmproxy, inside the gateway's cgroup (`ghgate exec`) for ghgate. Benchmarks report; they
//! never assert.
//!
//! A fourth case, "one hop", sends the same TLS through a second ghgate that relays it untouched
//! (the name is not one it terminates): what any process in the path costs on this host, before
//! any TLS or HTTP work. With client, upstream and proxy sharing few CPUs, the CPU table says how
//! busy the host was and what the proxy itself spent per request and per GiB.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::cpu::{GIB, Meter};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup, bin,
    https::{TestCa, Upstream},
    loopback_v4, rss_kib,
};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

pub const NAME: &str = "api.github.com";

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Sequential keep-alive GETs timed per case.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// New connections (TCP + TLS + one GET) timed per case.
    #[arg(long, default_value_t = 200)]
    pub new_connections: u64,
    /// Connections in parallel for the requests/s figure.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Seconds of the requests/s run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes of the download run.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Skip mitmproxy (no PyPI install).
    #[arg(long)]
    pub no_mitmproxy: bool,
}

#[derive(clap::Args, Clone)]
pub struct HttpClientArgs {
    /// latency | newconn | rps | download
    pub mode: String,
    pub target: SocketAddr,
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub proxy: Option<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
}

impl HttpClientArgs {
    /// The settings every case of a run shares; each case fills in `mode` (and `ca`, `proxy`).
    pub fn base(
        target: SocketAddr,
        ca: &Path,
        count: u64,
        concurrency: u64,
        seconds: u64,
        bytes: u64,
    ) -> Self {
        Self {
            mode: String::new(),
            target,
            ca: ca.to_path_buf(),
            proxy: None,
            count,
            concurrency,
            seconds,
            bytes,
        }
    }
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Report {
    pub ns: Vec<u64>,
    pub requests_per_s: f64,
    pub mb_per_s: f64,
}

// ---------------------------------------------------------------------------------------------
// The client.

async fn connect(a: &HttpClientArgs) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(a.proxy.unwrap_or(a.target)).await?;
    tcp.set_nodelay(true)?;
    if a.proxy.is_some() {
        let req = format!("CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n", a.target, a.target);
        tcp.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 {
                bail!("the proxy closed during CONNECT");
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
            bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    for c in CertificateDer::pem_file_iter(&a.ca)? {
        roots.add(c?)?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME)?, tcp)
        .await?;
    let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn get(send: &mut http1::SendRequest<Empty<Bytes>>, path: &str, port: u16) -> anyhow::Result<u64> {
    send.ready().await?;
    let req = http::Request::get(path)
        .header("host", format!("{NAME}:{port}"))
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        n += frame?.data_ref().map(|d| d.len() as u64).unwrap_or(0);
    }
    Ok(n)
}

pub fn client(a: &HttpClientArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let port = a.target.port();
        let mut r = Report::default();
        match a.mode.as_str() {
            "latency" => {
                let mut send = connect(a).await?;
                for _ in 0..50 {
                    get(&mut send, "/warm", port).await?;
                }
                for _ in 0..a.count {
                    let t = Instant::now();
                    get(&mut send, "/x", port).await?;
                    r.ns.push(t.elapsed().as_nanos() as u64);
                }
            }
            "newconn" => {
                for _ in 0..a.count {
                    let t = Instant::now();
                    let mut send = connect(a).await?;
                    get(&mut send, "/x", port).await?;
                    r.ns.push(t.elapsed().as_nanos() as u64);
                }
            }
            "rps" => {
                let done = Arc::new(AtomicU64::new(0));
                let deadline = Instant::now() + Duration::from_secs(a.seconds);
                let mut tasks = Vec::new();
                for _ in 0..a.concurrency {
                    let (a, done) = (a.clone(), done.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut send = connect(&a).await?;
                        while Instant::now() < deadline {
                            get(&mut send, "/x", a.target.port()).await?;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        anyhow::Ok(())
                    }));
                }
                let start = Instant::now();
                for t in tasks {
                    t.await??;
                }
                r.requests_per_s = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            }
            "download" => {
                let mut send = connect(a).await?;
                let t = Instant::now();
                let n = get(&mut send, &format!("/bytes?n={}", a.bytes), port).await?;
                anyhow::ensure!(n == a.bytes, "downloaded {n} of {} bytes", a.bytes);
                r.mb_per_s = n as f64 / 1e6 / t.elapsed().as_secs_f64();
            }
            other => bail!("unknown mode {other}"),
        }
        anyhow::Ok(r)
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// mitmproxy, installed into target/ and run on loopback.

struct Mitm {
    child: Child,
    addr: SocketAddr,
    ca: PathBuf,
}

impl Drop for Mitm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mitm(target_dir: &Path, upstream_ca: &Path, dir: &Path) -> anyhow::Result<Mitm> {
    let exe = crate::pypi::tool(target_dir, "mitmproxy-venv", "mitmproxy", "mitmdump")?;
    let port = ghgate_e2e::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let confdir = dir.join("mitmproxy");
    let child = Command::new(exe)
        .args([
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
            "-q",
        ])
        .arg("--set")
        .arg(format!("confdir={}", confdir.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            upstream_ca.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mitmdump")?;
    let ca = confdir.join("mitmproxy-ca-cert.pem");
    let mitm = Mitm { child, addr, ca };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(mitm.ca.exists() && std::net::TcpStream::connect(addr).is_ok()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "mitmdump did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(mitm)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

pub fn run_client(via_gateway: Option<&Gateway>, a: &HttpClientArgs) -> anyhow::Result<Report> {
    let mut cmd = match via_gateway {
        Some(gw) => gw.exec(std::env::current_exe()?),
        None => Command::new(std::env::current_exe()?),
    };
    cmd.args(["client-http", &a.mode, &a.target.to_string(), "--ca"])
        .arg(&a.ca);
    if let Some(p) = a.proxy {
        cmd.args(["--proxy", &p.to_string()]);
    }
    cmd.args([
        "--count",
        &a.count.to_string(),
        "--concurrency",
        &a.concurrency.to_string(),
    ])
    .args([
        "--seconds",
        &a.seconds.to_string(),
        "--bytes",
        &a.bytes.to_string(),
    ]);
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "client {} failed: {}",
        a.mode,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn pct(ns: &[u64], p: f64) -> f64 {
    let mut v = ns.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

pub fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[NAME]);
    let upstream_ca = ca.write_pem(dir.path());
    let (cg, cg_hop) = (TestCgroup::new(), TestCgroup::new());
    let port = upstream.addr.port();
    let spec = GatewaySpec {
        intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
        tls_ports: vec![port],
        upstream_extra_roots: vec![upstream_ca.clone()],
        // The proxy alone: recording has its own benchmark (`record`).
        extra_toml: "[http]\nmax_requests_per_second = 1000000\n[record]\nenabled = false\n".into(),
        ..Default::default()
    };
    let gw = Gateway::start(&cg, &spec);
    // Terminates another name only, so it relays this one's TLS untouched (splice).
    let hop = Gateway::start(
        &cg_hop,
        &GatewaySpec {
            tls_intercept: Some(vec!["elsewhere.invalid".into()]),
            ..spec.clone()
        },
    );
    let gw_ca = gw.ca_file();
    let target_dir = bin("ghgate")
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("target dir")?;
    let mitm = if args.no_mitmproxy {
        None
    } else {
        Some(start_mitm(&target_dir, &upstream_ca, dir.path())?)
    };

    let base = HttpClientArgs::base(
        upstream.addr,
        &upstream_ca,
        args.requests,
        args.concurrency,
        args.seconds,
        args.bytes,
    );
    let pid = gw.pid().context("gateway pid")?;
    let hop_pid = hop.pid().context("relaying gateway pid")?;
    // label, the gateway the client is redirected to, the CA it trusts, the proxy it is told
    // about, the pid of the process in the middle.
    #[allow(
        clippy::type_complexity,
        reason = "a one-off tuple of the bench's own channels, named nowhere else"
    )]
    let cases: Vec<(&str, Option<&Gateway>, PathBuf, Option<SocketAddr>, Option<u32>)> = {
        let mut v = vec![
            ("direct", None, upstream_ca.clone(), None, None),
            ("one hop", Some(&hop), upstream_ca.clone(), None, Some(hop_pid)),
            ("ghgate", Some(&gw), gw_ca.clone(), None, Some(pid)),
        ];
        if let Some(m) = &mitm {
            v.push(("mitmproxy", None, m.ca.clone(), Some(m.addr), Some(m.child.id())));
        }
        v
    };
    let (rss_start, _) = rss_kib(pid);
    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    for (label, via, trust, proxy, middle) in &cases {
        let mk = |mode: &str, count: u64| HttpClientArgs {
            mode: mode.into(),
            ca: trust.clone(),
            proxy: *proxy,
            count,
            ..base.clone()
        };
        eprintln!("{label}: keep-alive latency, new connections, requests/s, download…");
        let lat = run_client(*via, &mk("latency", args.requests))?;
        let newc = run_client(*via, &mk("newconn", args.new_connections))?;
        // Host busy fraction, and the middle process's CPU-seconds, over one client run.
        let measured = |mode: &str| -> anyhow::Result<(Report, f64, Option<f64>)> {
            let meter = Meter::start(*middle);
            let report = run_client(*via, &mk(mode, 0))?;
            let (host, spent) = meter.stop();
            Ok((report, host.fraction, spent))
        };
        let (rps, rps_busy, rps_cpu) = measured("rps")?;
        let (dl, dl_busy, dl_cpu) = measured("download")?;
        let requests = rps.requests_per_s * args.seconds as f64;
        cpu_rows.push((
            *label,
            rps_busy,
            rps_cpu.map(|s| s / requests.max(1.0) * 1e6),
            dl_busy,
            dl_cpu.map(|s| s / (args.bytes as f64 / GIB)),
        ));
        rows.push((
            *label,
            pct(&lat.ns, 0.5),
            pct(&lat.ns, 0.99),
            pct(&newc.ns, 0.5),
            rps.requests_per_s,
            dl.mb_per_s,
        ));
    }
    let (rss_end, peak) = rss_kib(pid);

    println!(
        "\nghgate-bench proxy (loopback, HTTP/1.1 keep-alive GETs of ~80-byte bodies; {} B download)",
        args.bytes
    );
    println!(
        "{:<10} {:>14} {:>14} {:>16} {:>14} {:>14}",
        "", "GET p50 µs", "GET p99 µs", "new conn p50 µs", "requests/s", "download MB/s"
    );
    for (label, p50, p99, nc, rps, mbs) in &rows {
        println!("{label:<10} {p50:>14.1} {p99:>14.1} {nc:>16.1} {rps:>14.0} {mbs:>14.0}");
    }
    println!(
        "\nCPU, {} CPUs shared by client, upstream and proxy (busy: the whole host during the run):",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<10} {:>14} {:>20} {:>16} {:>18}",
        "", "requests/s busy", "proxy CPU µs/request", "download busy", "proxy CPU s/GiB"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for (label, rps_busy, per_req, dl_busy, per_gib) in &cpu_rows {
        println!(
            "{label:<10} {:>13.0} % {:>20} {:>14.0} % {:>18}",
            rps_busy * 100.0,
            opt(*per_req, 1),
            dl_busy * 100.0,
            opt(*per_gib, 2)
        );
    }
    let d = &rows[0];
    println!("\nagainst direct, measured in this run:");
    for (label, p50, p99, nc, rps, mbs) in &rows[1..] {
        let added = p50 - d.1;
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        let ghgate = *label == "ghgate";
        println!(
            "{label:<10} added p50 {added:+.1} µs (p99 {:+.1}){}; new connection {:+.1} µs; requests/s {:.2}×{}; download {:.2}×{}",
            p99 - d.2,
            if ghgate {
                format!(" {} target ≤ 100 µs", verdict(added <= 100.0))
            } else {
                String::new()
            },
            nc - d.3,
            rps / d.4,
            if ghgate {
                format!(" {} target ≥ 0.5×", verdict(rps / d.4 >= 0.5))
            } else {
                String::new()
            },
            mbs / d.5,
            if ghgate {
                format!(" {} target ≥ 0.8×", verdict(mbs / d.5 >= 0.8))
            } else {
                String::new()
            },
        );
    }
    println!(
        "(one hop: the same TLS relayed untouched by a second ghgate; what a process in the path costs here before any TLS or HTTP work)"
    );
    println!(
        "gateway RSS: {} KiB at start of the cases, {} KiB at the end, peak {} KiB",
        rss_start, rss_end, peak
    );
    Ok(())
}
