//! `ghgate-bench proxy`: what HTTPS interception costs, side by side on one loopback workload:
//! direct TLS to the test upstream, through ghgate (redirected, terminated, re-encrypted), and
//! through mitmproxy (regular proxy mode, installed from PyPI into target/ by the bench).
//!
//! Each client runs in its own process, in the right place: outside any test cgroup for direct
//! and mitmproxy, inside the gateway's cgroup (`ghgate exec`) for ghgate. Benchmarks report; they
//! never assert.
//!
//! The cases: "direct"; "one hop", the same TLS relayed untouched by a second ghgate (the name is
//! not one it terminates): what any process in the path costs on this host, before any TLS or
//! HTTP work; "ghgate, no record", the shipped defaults but for recording (masking on, the
//! example policy); "ghgate defaults", recording on as well; and mitmproxy. Only the request
//! rate limit is raised from its shipped 200/s, which would otherwise be the figure measured, and
//! the connections one process may hold (4,096 shipped; the soak's one client holds 10,000).
//! With client, upstream and proxy sharing few CPUs, the CPU table says what each side spent per
//! request.
use std::{
    io::BufRead as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cpu::{GIB, Meter, process_secs, thread_ns};
use anyhow::Context as _;
use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup, bin, fixtures,
    https::{TestCa, Upstream},
    loopback_v4, rss_kib,
};

pub use crate::client::{HttpClientArgs, NAME, Report};

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Sequential keep-alive GETs timed per case.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// New connections (TCP + TLS resumed + one GET) timed per case.
    #[arg(long, default_value_t = 200)]
    pub new_connections: u64,
    /// New processes (curl: TCP + full TLS handshake + one GET) timed per case.
    #[arg(long, default_value_t = 50)]
    pub new_processes: u64,
    /// HTTP/1.1 connections in parallel, and HTTP/2 streams on one connection, for requests/s.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u64,
    /// Seconds of each requests/s run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes of each download run.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Streamed completions timed per case, with and without a secret.
    #[arg(long, default_value_t = 10)]
    pub completions: u64,
    /// Idle keep-alive connections held through each gateway for the memory figure.
    #[arg(long, default_value_t = 2000)]
    pub idle: u64,
    /// Small counts and short runs, for iterating (the figures are noisier).
    #[arg(long)]
    pub quick: bool,
    /// `[listen] shards` of the bench's gateways (default: the gateway's own, one per CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Skip mitmproxy (no PyPI install).
    #[arg(long)]
    pub no_mitmproxy: bool,
    /// Measure one figure only, for iterating: `idle`, the RSS per idle keep-alive connection
    /// (HTTP/1.1 and HTTP/2) through the two ghgate cases; `newconn`, keep-alive GET, new
    /// connection and new process latency of every case; `ttfb`, a streamed completion's time
    /// to first byte, every case; `rps`, HTTP/1.1 requests/s and gateway CPU per request of the
    /// two ghgate cases (recording off and on), in alternating rounds; `download`, HTTP/1.1 and
    /// HTTP/2 downloads (`--bytes`) of every case in rounds, with the middle's CPU-s/GiB.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
}

/// The figures `--only` can pick.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Idle,
    Newconn,
    Ttfb,
    Rps,
    Download,
}

impl ProxyArgs {
    fn effective(&self) -> Self {
        let q = self.quick;
        Self {
            requests: if q { 300 } else { self.requests },
            new_connections: if q { 50 } else { self.new_connections },
            new_processes: if q { 10 } else { self.new_processes },
            concurrency: self.concurrency,
            seconds: if q { 2 } else { self.seconds },
            bytes: if q { 256 << 20 } else { self.bytes },
            completions: if q { 3 } else { self.completions },
            idle: if q { 500 } else { self.idle },
            quick: q,
            shards: self.shards,
            no_mitmproxy: self.no_mitmproxy || self.only.is_some(),
            only: self.only,
        }
    }
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
    let out = client_command(via_gateway, a)?.output()?;
    anyhow::ensure!(
        out.status.success(),
        "client {} failed: {}",
        a.mode,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The client process for `a`, in the gateway's cgroup when one is given.
pub fn client_command(via_gateway: Option<&Gateway>, a: &HttpClientArgs) -> anyhow::Result<Command> {
    let mut cmd = match via_gateway {
        Some(gw) => gw.exec(std::env::current_exe()?),
        None => Command::new(std::env::current_exe()?),
    };
    cmd.args(["client-http", &a.mode, &a.target.to_string(), "--ca"])
        .arg(&a.ca);
    if let Some(p) = a.proxy {
        cmd.args(["--proxy", &p.to_string()]);
    }
    cmd.args(["--count", &a.count.to_string()])
        .args(["--concurrency", &a.concurrency.to_string()])
        .args(["--seconds", &a.seconds.to_string()])
        .args(["--bytes", &a.bytes.to_string()])
        .args(["--pieces", &a.pieces.to_string()])
        .args(["--rate", &a.rate.to_string()]);
    if !a.text_hex.is_empty() {
        cmd.args(["--text-hex", &a.text_hex]);
    }
    Ok(cmd)
}

/// The median of the figures of several runs (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

pub fn pct(ns: &[u64], p: f64) -> f64 {
    let mut v = ns.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Open file descriptors of a process.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A client process holding connections (modes `idle` and `soak`): started, and returned once it
/// says how many it holds. Closing its stdin ends an `idle` client.
pub struct Holder {
    child: Option<Child>,
    pub held: u64,
}

impl Holder {
    pub fn start(via: Option<&Gateway>, a: &HttpClientArgs) -> anyhow::Result<Self> {
        let mut child = client_command(via, a)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the holding client")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().context("client stdout")?).read_line(&mut line)?;
        let held = line
            .trim()
            .parse()
            .with_context(|| format!("the holding client failed (said {line:?})"))?;
        Ok(Self {
            child: Some(child),
            held,
        })
    }

    /// Lets the client go and reads its report.
    pub fn finish(mut self) -> anyhow::Result<Report> {
        let mut child = self.child.take().context("finished twice")?;
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "the holding client failed ({})", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(text.lines().last().unwrap_or("{}"))?)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Everything measured for one case; NaN (printed "-") where the case could not measure it.
#[derive(Default)]
struct Row {
    label: &'static str,
    p50: f64,
    p99: f64,
    newconn: f64,
    newproc: f64,
    rps1: f64,
    rps2: f64,
    dl1: f64,
    dl2: f64,
    ttfb: f64,
    ttfb_secret: f64,
    /// Per event index, the median arrival (µs) of the completion without and with a secret.
    events: Vec<f64>,
    events_secret: Vec<f64>,
    event_bytes_secret: Vec<u64>,
    secret_masked: Option<bool>,
    /// CPU µs per keep-alive GET of the latency runs (one request at a time): the middle
    /// process's threads that a request's work runs on, and its other threads.
    get_cpu_path: f64,
    get_cpu_other: f64,
    /// CPU µs per request of the h1 requests/s run: the middle process, the client, the upstream.
    cpu_mid: f64,
    cpu_client: f64,
    cpu_upstream: f64,
    cpu_mid_h2: f64,
    cpu_cu_h2: f64,
    busy: f64,
    /// TLS connections the upstream accepted per 1,000 requests of the h1 requests/s run (the
    /// clients' own connections included).
    upstream_handshakes: f64,
    /// Gateway CPU-s per GiB of the HTTP/1.1 and HTTP/2 downloads.
    gib_cpu1: f64,
    gib_cpu2: f64,
    /// CPU-s per GiB of the same downloads spent by client, upstream and middle together (not
    /// the host's: other work on a busy host is not the download's).
    host_gib1: f64,
    host_gib2: f64,
    /// Idle connections, HTTP/1.1 and HTTP/2.
    idle: Option<Idle>,
    idle2: Option<Idle>,
}

/// Idle keep-alive connections held through a gateway: how many, KiB of RSS each, open files
/// before and while held.
#[derive(Clone, Copy)]
struct Idle {
    held: u64,
    /// How many of them the figure is of (the second half).
    measured: u64,
    kib: f64,
    files_before: usize,
    files: usize,
}

/// Holds `a.count` idle connections (mode `idle` or `idle2`) through `via` and measures what the
/// gateway `pid` holds for each: the RSS the second half of them adds, while the first half is
/// still held: what one more idle connection costs a gateway that has been serving.
///
/// First, 2 s of requests on 32 connections at once fill what a gateway grows to a bound
/// whatever its connections, but grows with the requests it sees until then (the index's page
/// cache, 2 MB, gains a page every few exchanges; the masker's lazy DFA caches): without it the
/// 2,000 exchanges of the held connections charged each about 3 KiB of it (heaptrack, recording
/// on). Memory that leaves free goes to the first half.
fn idle_figure(via: Option<&Gateway>, pid: u32, a: &HttpClientArgs) -> anyhow::Result<Idle> {
    run_client(
        via,
        &HttpClientArgs {
            mode: "rps".into(),
            concurrency: 32,
            seconds: 2,
            ..a.clone()
        },
    )?;
    // Connections an earlier holder left may still be closing: wait until they are (at most 5 s).
    let settle = Instant::now() + Duration::from_secs(5);
    let mut files = open_files(pid);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
        let now = open_files(pid);
        if now == files {
            break;
        }
        files = now;
    }
    let files_before = open_files(pid);
    let half = |count: u64| HttpClientArgs {
        concurrency: 32,
        count,
        ..a.clone()
    };
    let first = Holder::start(via, &half(a.count / 2))?;
    std::thread::sleep(Duration::from_secs(1));
    let (before, _) = rss_kib(pid);
    let second = Holder::start(via, &half(a.count - a.count / 2))?;
    std::thread::sleep(Duration::from_secs(1));
    let (during, _) = rss_kib(pid);
    let files = open_files(pid);
    let held = second.held;
    let all = first.held + held;
    second.finish()?;
    first.finish()?;
    Ok(Idle {
        held: all,
        measured: held,
        kib: during.saturating_sub(before) as f64 / held.max(1) as f64,
        files_before,
        files,
    })
}

/// The median, per event index, of when events arrived (µs).
fn event_medians(runs: &[Vec<u64>]) -> Vec<f64> {
    let n = runs.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| {
            let v: Vec<u64> = runs.iter().map(|r| r[i]).collect();
            pct(&v, 0.5)
        })
        .collect()
}

/// One measurement that may fail for one case without ending the bench (mitmproxy and HTTP/2).
fn attempt<T>(label: &str, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Option<T> {
    match f() {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("{label}: {what} failed: {e:#}");
            None
        }
    }
}

/// The example policy shipped with ghgate.
pub const EXAMPLE_POLICY: &str = include_str!("../../../gateway/config/examples/policy.toml");

/// The config a bench gateway adds to the shipped defaults: the example policy (written to
/// DIR/policy.toml by the caller), recording on or off, the rate limit raised so that it is not
/// what requests/s measures, and approvals on a socket of its own, DIR/SOCKET.sock (the shipped
/// path may be another gateway's on this host).
pub fn shipped_defaults(dir: &Path, record: bool, socket: &str) -> String {
    format!(
        "[http]\nmax_requests_per_second = 1000000\nmax_connections_per_process = 1000000\nmax_connections_per_cgroup = 1000000\nmax_connections = 1000000\n[record]\nenabled = {record}\n[policy]\nfile = \"{}\"\n[approvals]\nsocket = \"{}\"\n",
        dir.join("policy.toml").display(),
        dir.join(format!("{socket}.sock")).display()
    )
}

/// Rounds of the keep-alive latency figure; each visits every case.
const LATENCY_ROUNDS: u64 = 5;

pub fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    let args = &args.effective();
    let started = Instant::now();
    let load_at_start = load_average();
    crate::client::raise_nofile()?;
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &[NAME]);
    let upstream_ca = ca.write_pem(dir.path());
    let (cg, cg_def, cg_hop) = (TestCgroup::new(), TestCgroup::new(), TestCgroup::new());
    let port = upstream.addr.port();
    std::fs::write(dir.path().join("policy.toml"), EXAMPLE_POLICY)?;
    let defaults = |record: bool| shipped_defaults(dir.path(), record, &format!("control-{record}"));
    let spec = GatewaySpec {
        intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
        tls_ports: vec![port],
        upstream_extra_roots: vec![upstream_ca.clone()],
        extra_toml: defaults(false),
        shards: args.shards,
        ..Default::default()
    };
    let gw = Gateway::start(&cg, &spec);
    let gw_def = Gateway::start(
        &cg_def,
        &GatewaySpec {
            extra_toml: defaults(true),
            ..spec.clone()
        },
    );
    // Terminates another name only and lists this one for passthrough, so it relays this one's
    // TLS untouched (splice).
    let hop = Gateway::start(
        &cg_hop,
        &GatewaySpec {
            tls_intercept: Some(vec!["elsewhere.invalid".into()]),
            tls_passthrough: vec![NAME.into()],
            // A passthrough name is relayed only to an address it resolves to.
            overrides: vec![(NAME.into(), vec![upstream.addr.ip().to_string()])],
            extra_toml: shipped_defaults(dir.path(), false, "control-hop"),
            ..spec.clone()
        },
    );
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
    let token = fixtures::github_token("BenchSplitSecret0123456789abcd");
    let plain_text =
        "Here is the code you asked for: it reads the file, parses every line and returns the total.";
    let secret_text = format!("Use this token: {token} and keep it out of the logs, please.");
    let cases: Vec<Case> = {
        let mut v = vec![
            ("direct", None, upstream_ca.clone(), None, None, false),
            ("one hop", Some(&hop), upstream_ca.clone(), None, hop.pid(), false),
            ("ghgate, no record", Some(&gw), gw.ca_file(), None, gw.pid(), true),
            (
                "ghgate defaults",
                Some(&gw_def),
                gw_def.ca_file(),
                None,
                gw_def.pid(),
                true,
            ),
        ];
        if let Some(m) = &mitm {
            v.push((
                "mitmproxy",
                None,
                m.ca.clone(),
                Some(m.addr),
                Some(m.child.id()),
                false,
            ));
        }
        v
    };
    // Keep-alive latency is taken in rounds that visit every case in turn, so that the host's
    // drift (another process waking, a CPU's frequency) falls on all of them alike: the figures
    // are differences between cases, and "recording adds" swung from -69 to +92 µs between runs
    // when each case was measured in one stretch.
    // New connections and new processes likewise.
    let mut latency: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
    let mut newconn: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
    // And new processes, and the time to the first byte of a streamed completion (measured
    // once per case after its downloads, it read +489 µs in one full run of a build that read
    // +856 µs in rounds).
    let mut newproc: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
    let mut ttfb: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
    // Per case, the CPU the process in the middle spent during the keep-alive latency runs, on
    // the threads a request's work runs on and on its others (ns), and the GETs it served.
    let mut get_cpu: Vec<(u64, u64, u64)> = vec![(0, 0, 0); cases.len()];
    if args.only == Some(Only::Rps) {
        return only_rps(&[("ghgate, no record", &gw), ("ghgate defaults", &gw_def)], &base);
    }
    if args.only == Some(Only::Download) {
        return only_download(&cases, &base);
    }
    if args.only != Some(Only::Idle) {
        eprintln!(
            "keep-alive latency, new connections, new processes and completions' first bytes, every case in turn, {LATENCY_ROUNDS} rounds…"
        );
        for _ in 0..LATENCY_ROUNDS {
            for (i, ((_, via, trust, proxy, pid, _), (((ns, nc), np), tt))) in cases
                .iter()
                .zip(
                    latency
                        .iter_mut()
                        .zip(&mut newconn)
                        .zip(&mut newproc)
                        .zip(&mut ttfb),
                )
                .enumerate()
            {
                let a = |mode: &str, count: u64| HttpClientArgs {
                    mode: mode.into(),
                    ca: trust.clone(),
                    proxy: *proxy,
                    count: (count / LATENCY_ROUNDS).max(1),
                    ..base.clone()
                };
                let completions = HttpClientArgs {
                    text_hex: hex(plain_text),
                    pieces: 8,
                    ..a("sse", args.completions)
                };
                tt.extend(run_client(*via, &completions)?.ns);
                if args.only == Some(Only::Ttfb) {
                    continue;
                }
                let before = pid.and_then(|p| thread_ns(p, SHARD_THREADS));
                let got = run_client(*via, &a("latency", args.requests))?.ns;
                if let (Some(b), Some(a)) = (before, pid.and_then(|p| thread_ns(p, SHARD_THREADS))) {
                    let c = &mut get_cpu[i];
                    (c.0, c.1, c.2) = (c.0 + a.0 - b.0, c.1 + a.1 - b.1, c.2 + got.len() as u64);
                }
                ns.extend(got);
                nc.extend(run_client(*via, &a("newconn", args.new_connections))?.ns);
                // curl is told about no proxy: mitmproxy's case is left out.
                if proxy.is_none() {
                    np.extend(run_client(*via, &a("newproc", args.new_processes))?.ns);
                }
            }
        }
    }
    if args.only == Some(Only::Ttfb) {
        println!("\n{:<18} {:>12} {:>12}", "", "TTFB p50 µs", "vs direct");
        let direct = pct(&ttfb[0], 0.5);
        for ((label, ..), tt) in cases.iter().zip(&ttfb) {
            let t = pct(tt, 0.5);
            println!("{label:<18} {t:>12.0} {:>+12.0}", t - direct);
        }
        return Ok(());
    }
    if args.only == Some(Only::Newconn) {
        print_newconn(
            &cases.iter().map(|c| c.0).collect::<Vec<_>>(),
            &latency,
            &newconn,
            &newproc,
            &get_cpu,
        );
        return Ok(());
    }
    let nan = f64::NAN;
    let mut rows = Vec::new();
    for (((label, via, trust, proxy, middle, terminating), (((lat, nc), np), tt)), cpu) in cases
        .iter()
        .zip(latency.iter().zip(&newconn).zip(&newproc).zip(&ttfb))
        .zip(&get_cpu)
    {
        let (label, via, middle) = (*label, *via, *middle);
        let mk = |mode: &str, count: u64| HttpClientArgs {
            mode: mode.into(),
            ca: trust.clone(),
            proxy: *proxy,
            count,
            ..base.clone()
        };
        let (get_cpu_path, get_cpu_other) = per_get(cpu);
        let mut row = Row {
            label,
            get_cpu_path,
            get_cpu_other,
            ..Row::default()
        };
        // Each idle figure on a fresh gateway of its own (the same settings as this case's): on
        // the case's gateway, memory the other figures' work left free would be reused by the
        // held connections and not show as RSS.
        let idle = |row: &mut Row| -> anyhow::Result<()> {
            let record = label == "ghgate defaults";
            let figure = |mode: &str, proto: &str| -> anyhow::Result<Idle> {
                let cg = TestCgroup::new();
                let fresh = Gateway::start(
                    &cg,
                    &GatewaySpec {
                        extra_toml: shipped_defaults(dir.path(), record, &format!("control-{mode}-{record}")),
                        ..spec.clone()
                    },
                );
                eprintln!(
                    "{label} (a fresh gateway): {} idle connections ({proto})…",
                    args.idle
                );
                idle_figure(
                    Some(&fresh),
                    fresh.pid().context("gateway pid")?,
                    &HttpClientArgs {
                        ca: fresh.ca_file(),
                        ..mk(mode, args.idle)
                    },
                )
            };
            row.idle = Some(figure("idle", "HTTP/1.1")?);
            row.idle2 = attempt(label, "HTTP/2 idle connections", || figure("idle2", "HTTP/2"));
            Ok(())
        };
        if args.only == Some(Only::Idle) {
            if *terminating {
                idle(&mut row)?;
                rows.push(row);
            }
            continue;
        }
        (row.p50, row.p99) = (pct(lat, 0.5), pct(lat, 0.99));
        row.newconn = pct(nc, 0.5);
        row.newproc = pct(np, 0.5);
        eprintln!("{label}: requests/s (HTTP/1.1, HTTP/2), downloads (HTTP/1.1, HTTP/2)…");
        // The process in the middle, the client and the upstream (this process), per request.
        let measured = |mode: &str| -> anyhow::Result<(Report, f64, f64, f64, f64)> {
            let meter = Meter::start(middle);
            let upstream_before = process_secs(std::process::id()).unwrap_or(0.0);
            let report = run_client(via, &mk(mode, 0))?;
            let upstream_cpu = process_secs(std::process::id()).unwrap_or(0.0) - upstream_before;
            let (host, spent) = meter.stop();
            let all = report.cpu_s + upstream_cpu + spent.unwrap_or(0.0);
            Ok((report, host.fraction, spent.unwrap_or(nan), upstream_cpu, all))
        };
        let conns_before = upstream.connections();
        let (r1, busy, mid, up, _) = measured("rps")?;
        row.upstream_handshakes =
            (upstream.connections() - conns_before) as f64 * 1000.0 / r1.requests.max(1) as f64;
        let per_req = |s: f64, r: &Report| s / r.requests.max(1) as f64 * 1e6;
        row.rps1 = r1.requests_per_s;
        row.busy = busy;
        (row.cpu_mid, row.cpu_client, row.cpu_upstream) =
            (per_req(mid, &r1), per_req(r1.cpu_s, &r1), per_req(up, &r1));
        if let Some((r2, _, mid2, up2, _)) = attempt(label, "HTTP/2 requests/s", || measured("rps2")) {
            row.rps2 = r2.requests_per_s;
            row.cpu_mid_h2 = per_req(mid2, &r2);
            row.cpu_cu_h2 = per_req(r2.cpu_s + up2, &r2);
        } else {
            (row.rps2, row.cpu_mid_h2, row.cpu_cu_h2) = (nan, nan, nan);
        }
        let gib = args.bytes as f64 / GIB;
        let (d1, _, mid_dl1, _, host_dl1) = measured("download")?;
        (row.dl1, row.gib_cpu1, row.host_gib1) = (d1.mb_per_s, mid_dl1 / gib, host_dl1 / gib);
        (row.dl2, row.gib_cpu2, row.host_gib2) = attempt(label, "HTTP/2 download", || measured("download2"))
            .map_or((nan, nan, nan), |(d2, _, mid, _, host)| {
                (d2.mb_per_s, mid / gib, host / gib)
            });
        eprintln!("{label}: streamed completions, without and with a secret split across events…");
        let completion = |text: &str| HttpClientArgs {
            text_hex: hex(text),
            pieces: 8,
            ..mk("sse", args.completions)
        };
        let plain = run_client(via, &completion(plain_text))?;
        let secret = run_client(via, &completion(&secret_text))?;
        (row.ttfb, row.ttfb_secret) = (pct(tt, 0.5), pct(&secret.ns, 0.5));
        row.events = event_medians(&plain.events_ns);
        row.events_secret = event_medians(&secret.events_ns);
        row.event_bytes_secret = secret.event_bytes.clone();
        row.secret_masked = Some(!secret.body.contains(&token) && secret.body.contains("[MASKED:"));
        if *terminating {
            idle(&mut row)?;
        }
        rows.push(row);
    }
    let gateways = [("ghgate, no record", &gw), ("ghgate defaults", &gw_def)];
    if args.only == Some(Only::Idle) {
        print_idle(&rows);
    } else {
        print_report(args, &rows, &gateways);
    }
    println!(
        "\nthis run took {:.0} s{}; load average {load_at_start} at start, {} at end (figures taken on a busy host are noisy)",
        started.elapsed().as_secs_f64(),
        if args.quick { " (--quick)" } else { "" },
        load_average()
    );
    Ok(())
}

/// One case of the bench: its label, the gateway the client is redirected to, the CA it trusts,
/// the proxy it is told about, the pid of the process in the middle, and whether that is a
/// terminating ghgate.
type Case<'a> = (
    &'static str,
    Option<&'a Gateway>,
    PathBuf,
    Option<SocketAddr>,
    Option<u32>,
    bool,
);

/// Rounds of `--only rps` (each visits both ghgate cases) and of `--only download` (each
/// visits every case).
const RPS_ROUNDS: usize = 3;

/// `--only rps`: HTTP/1.1 requests/s through each gateway and its CPU per request, in rounds
/// that alternate the gateways (the host's drift falls on both alike); medians, and the ratio
/// of the second to the first.
fn only_rps(gateways: &[(&str, &Gateway); 2], base: &HttpClientArgs) -> anyhow::Result<()> {
    let mut runs: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=RPS_ROUNDS {
        for ((label, gw), runs) in gateways.iter().zip(&mut runs) {
            eprintln!("round {round}/{RPS_ROUNDS}: {label} requests/s…");
            let meter = Meter::start(gw.pid());
            let report = run_client(
                Some(gw),
                &HttpClientArgs {
                    mode: "rps".into(),
                    ca: gw.ca_file(),
                    count: 0,
                    ..base.clone()
                },
            )?;
            let (host, spent) = meter.stop();
            let per_req = spent.unwrap_or(f64::NAN) / report.requests.max(1) as f64 * 1e6;
            runs.push((report.requests_per_s, per_req, host.fraction * 100.0));
        }
    }
    println!(
        "\n{:<18} {:>12} {:>18} {:>14}",
        "", "requests/s", "gateway CPU µs/req", "host busy %"
    );
    let mut medians = Vec::new();
    for ((label, _), runs) in gateways.iter().zip(&runs) {
        let rps = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        let busy = median(runs.iter().map(|r| r.2).collect());
        println!("{label:<18} {rps:>12.0} {cpu:>18.1} {busy:>14.0}");
        medians.push((rps, cpu, busy));
    }
    println!(
        "{} / {}: {:.2}× requests/s, {:+.1} µs CPU per request (target ≥ 0.80×)",
        gateways[1].0,
        gateways[0].0,
        medians[1].0 / medians[0].0,
        medians[1].1 - medians[0].1
    );
    crate::store_path::explain(
        &gateways[1].1.state_dir.join("record"),
        medians[0].2 / 100.0 * crate::cpu::cpus() as f64 / medians[0].0 * 1e6,
        medians[1].1 - medians[0].1,
    );
    Ok(())
}

/// `--only download`: HTTP/1.1 and HTTP/2 downloads through every case, in rounds that visit
/// the cases in turn; median MB/s, the middle process's CPU-s/GiB, and each rate against
/// direct and the defaults against the unrecorded gateway.
fn only_download(cases: &[Case], base: &HttpClientArgs) -> anyhow::Result<()> {
    let gib = base.bytes as f64 / GIB;
    // Per case, per protocol: (MB/s, middle CPU-s/GiB) of each round.
    let mut runs = vec![[Vec::new(), Vec::new()]; cases.len()];
    for round in 1..=RPS_ROUNDS {
        for ((label, via, trust, proxy, pid, _), runs) in cases.iter().zip(&mut runs) {
            eprintln!("round {round}/{RPS_ROUNDS}: {label} downloads…");
            for (mode, runs) in ["download", "download2"].into_iter().zip(runs.iter_mut()) {
                let meter = Meter::start(*pid);
                let report = run_client(
                    *via,
                    &HttpClientArgs {
                        mode: mode.into(),
                        ca: trust.clone(),
                        proxy: *proxy,
                        count: 0,
                        ..base.clone()
                    },
                )?;
                let (_, spent) = meter.stop();
                runs.push((report.mb_per_s, spent.map_or(f64::NAN, |s| s / gib)));
            }
        }
    }
    let medians: Vec<[(f64, f64); 2]> = runs
        .iter()
        .map(|per| {
            per.clone().map(|r| {
                (
                    median(r.iter().map(|x| x.0).collect()),
                    median(r.iter().map(|x| x.1).collect()),
                )
            })
        })
        .collect();
    println!(
        "\n{:<18} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "", "dl h1", "dl h2", "mid h1", "mid h2", "h1 vs", "h2 vs"
    );
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "", "MB/s", "MB/s", "CPU-s/GiB", "CPU-s/GiB", "direct", "direct"
    );
    for ((label, ..), m) in cases.iter().zip(&medians) {
        println!(
            "{label:<18} {:>10.0} {:>10.0} {:>12.2} {:>12.2} {:>9.2}× {:>9.2}×",
            m[0].0,
            m[1].0,
            m[0].1,
            m[1].1,
            m[0].0 / medians[0][0].0,
            m[1].0 / medians[0][1].0
        );
    }
    let find = |name: &str| cases.iter().position(|c| c.0 == name);
    if let (Some(unrec), Some(def)) = (find("ghgate, no record"), find("ghgate defaults")) {
        let (u, d) = (medians[unrec], medians[def]);
        println!(
            "ghgate defaults / ghgate, no record: recording costs {:.1} % (h1) and {:.1} % (h2) of download throughput (target ≤ 10 %); HTTP/2 {:.2}× HTTP/1.1 (target ≥ 1×)",
            (1.0 - d[0].0 / u[0].0) * 100.0,
            (1.0 - d[1].0 / u[1].0) * 100.0,
            d[1].0 / d[0].0
        );
    }
    Ok(())
}

/// Names of the gateway's threads that run a connection's work (and so a request's path).
const SHARD_THREADS: &str = "ghgate-shard";

/// CPU µs per GET on the path's threads and on the others, from the latency runs' sums.
fn per_get(&(path, other, gets): &(u64, u64, u64)) -> (f64, f64) {
    if gets == 0 {
        return (f64::NAN, f64::NAN);
    }
    (path as f64 / gets as f64 / 1e3, other as f64 / gets as f64 / 1e3)
}

/// `--only newconn`: keep-alive GET, new-connection and new-process p50 of every case, and
/// each against direct, and the middle's CPU per GET.
fn print_newconn(
    labels: &[&str],
    latency: &[Vec<u64>],
    newconn: &[Vec<u64>],
    newproc: &[Vec<u64>],
    get_cpu: &[(u64, u64, u64)],
) {
    println!(
        "\n{:<18} {:>12} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "", "GET p50 µs", "new conn µs", "new proc µs", "GET vs dir", "new conn vs dir", "new proc / dir"
    );
    let (d_get, d_new, d_proc) = (
        pct(&latency[0], 0.5),
        pct(&newconn[0], 0.5),
        pct(&newproc[0], 0.5),
    );
    for (((label, lat), nc), np) in labels.iter().zip(latency).zip(newconn).zip(newproc) {
        let (get, new, proc_) = (pct(lat, 0.5), pct(nc, 0.5), pct(np, 0.5));
        println!(
            "{label:<18} {get:>12.1} {new:>14.0} {proc_:>14.0} {:>+12.1} {:>+14.0} {:>13.2}×",
            get - d_get,
            new - d_new,
            proc_ / d_proc
        );
    }
    println!("(CPU per keep-alive GET of the process in the middle, one request at a time:)");
    for (label, cpu) in labels.iter().zip(get_cpu) {
        let (path, other) = per_get(cpu);
        if !path.is_nan() {
            println!(
                "{label:<18} {path:>8.1} µs on its shards (the request's path), {other:>6.1} µs on its other threads"
            );
        }
    }
}

/// The host's 1-minute load average, as /proc/loadavg says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn print_report(args: &ProxyArgs, rows: &[Row], gateways: &[(&str, &Gateway)]) {
    let f = |v: f64, prec: usize| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.prec$}")
        }
    };
    println!(
        "\nghgate-bench proxy (loopback test upstream; keep-alive GETs of ~80-byte bodies; {} B downloads; {} HTTP/1.1 connections or {} HTTP/2 streams on one connection for requests/s)",
        args.bytes, args.concurrency, args.concurrency
    );
    println!(
        "{:<18} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "",
        "GET p50",
        "GET p99",
        "new conn",
        "new proc",
        "req/s h1",
        "req/s h2",
        "dl h1",
        "dl h2",
        "TTFB",
        "TTFB sec"
    );
    println!(
        "{:<18} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "", "µs", "µs", "p50 µs", "p50 µs", "", "", "MB/s", "MB/s", "p50 µs", "p50 µs"
    );
    for r in rows {
        println!(
            "{:<18} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
            r.label,
            f(r.p50, 1),
            f(r.p99, 1),
            f(r.newconn, 0),
            f(r.newproc, 0),
            f(r.rps1, 0),
            f(r.rps2, 0),
            f(r.dl1, 0),
            f(r.dl2, 0),
            f(r.ttfb, 0),
            f(r.ttfb_secret, 0),
        );
    }
    println!(
        "(new conn: TCP + TLS resuming the client's session + one GET, in one client process; new proc: curl per"
    );
    println!(
        " request, full handshake; TTFB: a streamed chat completion's first body byte, without / with a secret)"
    );
    println!(
        "\nCPU per request (HTTP/1.1 requests/s run; {} CPUs shared by everything):",
        crate::cpu::cpus()
    );
    println!(
        "{:<18} {:>8} {:>12} {:>12} {:>14} {:>10} {:>14} {:>14} {:>12} {:>12} {:>10}",
        "",
        "busy",
        "middle µs",
        "client µs",
        "upstream µs",
        "middle /",
        "h2 middle µs",
        "h2 client+up",
        "dl h1 mid",
        "dl h2 mid",
        "up TLS"
    );
    println!(
        "{:<18} {:>8} {:>12} {:>12} {:>14} {:>10} {:>14} {:>14} {:>12} {:>12} {:>10}",
        "", "", "", "", "", "cl+up", "", "µs", "CPU-s/GiB", "CPU-s/GiB", "/1k req"
    );
    for r in rows {
        println!(
            "{:<18} {:>7.0}% {:>12} {:>12} {:>14} {:>9}× {:>14} {:>14} {:>12} {:>12} {:>10}",
            r.label,
            r.busy * 100.0,
            f(r.cpu_mid, 1),
            f(r.cpu_client, 1),
            f(r.cpu_upstream, 1),
            f(r.cpu_mid / (r.cpu_client + r.cpu_upstream), 2),
            f(r.cpu_mid_h2, 1),
            f(r.cpu_cu_h2, 1),
            f(r.gib_cpu1, 2),
            f(r.gib_cpu2, 2),
            f(r.upstream_handshakes, 2),
        );
    }
    println!("(CPU from /proc, 10 ms ticks; the upstream is this bench process, the client its own process;");
    println!(" up TLS: connections the upstream accepted per 1,000 requests, the clients' own included)");

    let d = &rows[0];
    println!("\nagainst direct, measured in this run:");
    for r in &rows[1..] {
        println!(
            "{:<18} p50 {:+.1} µs; new conn {:+.0} µs; new proc {}×; req/s h1 {:.2}×, h2 {}×; download h1 {:.2}×, h2 {}×; TTFB {:+.0} µs",
            r.label,
            r.p50 - d.p50,
            r.newconn - d.newconn,
            f(r.newproc / d.newproc, 2),
            r.rps1 / d.rps1,
            f(r.rps2 / d.rps2, 2),
            r.dl1 / d.dl1,
            f(r.dl2 / d.dl2, 2),
            r.ttfb - d.ttfb,
        );
    }
    println!(
        "(one hop: the same TLS relayed untouched by a second ghgate; what a process in the path costs here before any TLS or HTTP work)"
    );

    // The masker's hold: how much later each event of the completion with a secret arrived than
    // through direct, beyond what every event is late by (the first event's lateness).
    println!(
        "\nmasking a secret split across events (completion of {} events, 50 ms apart upstream):",
        d.events_secret.len()
    );
    for r in &rows[1..] {
        let late: Vec<f64> = r
            .events_secret
            .iter()
            .zip(&d.events_secret)
            .map(|(v, d)| v - d)
            .collect();
        let floor = late.first().copied().unwrap_or(0.0);
        let held: Vec<usize> = (0..late.len()).filter(|&i| late[i] - floor > 5_000.0).collect();
        let held_bytes: u64 = held.iter().filter_map(|&i| r.event_bytes_secret.get(i)).sum();
        let longest = late.iter().map(|l| l - floor).fold(0.0, f64::max);
        println!(
            "{:<18} held {} of {} events ({held_bytes} B) for up to {:.1} ms; secret masked: {}",
            r.label,
            held.len(),
            late.len(),
            longest / 1000.0,
            match r.secret_masked {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
        );
    }

    println!("\ntargets (issue 20), ghgate with the shipped defaults unless said; baselines from this run:");
    let (Some(norec), Some(def)) = (
        rows.iter().find(|r| r.label == "ghgate, no record"),
        rows.iter().find(|r| r.label == "ghgate defaults"),
    ) else {
        return;
    };
    let line =
        |ok: bool, what: String, target: &str| println!("  {} {what:<62} target {target}", verdict(ok));
    line(
        def.rps1 / norec.rps1 >= 0.8,
        format!("recorded req/s {:.2}× unrecorded (h1)", def.rps1 / norec.rps1),
        "≥ 0.8×",
    );
    if let Some((_, gw)) = gateways.iter().find(|(label, _)| *label == "ghgate defaults") {
        crate::store_path::explain(
            &gw.state_dir.join("record"),
            norec.busy * crate::cpu::cpus() as f64 / norec.rps1 * 1e6,
            def.cpu_mid - norec.cpu_mid,
        );
    }
    line(
        1.0 - def.dl1 / norec.dl1 <= 0.10,
        format!(
            "recording costs {:.1} % of download throughput (h1)",
            (1.0 - def.dl1 / norec.dl1) * 100.0
        ),
        "≤ 10 %",
    );
    println!(
        "    (recording's share on CPUs the three processes share: {} CPU-s/GiB recorded vs {} unrecorded \
         for client, upstream and gateway, so at least {} % slower when CPU-bound; every body byte is \
         hashed with SHA-256 for the record)",
        f(def.host_gib1, 2),
        f(norec.host_gib1, 2),
        f((1.0 - norec.host_gib1 / def.host_gib1) * 100.0, 1)
    );
    // The hash alone, added to the unrecorded download's CPU, bounds what recording can cost.
    let sha = crate::record::sha256_secs_per_gib();
    println!(
        "    (SHA-256 alone takes {} CPU-s/GiB here: added to the unrecorded {}, {} % slower when CPU-bound \
         before anything else recording does, which here is {} CPU-s/GiB more; the hash runs on a thread \
         of its own, so a CPU to spare, or a hash that costs less per byte, is what would reach 10 %)",
        f(sha, 2),
        f(norec.host_gib1, 2),
        f(sha / (norec.host_gib1 + sha) * 100.0, 1),
        f(def.host_gib1 - norec.host_gib1 - sha, 2)
    );
    line(
        def.p50 - norec.p50 <= 30.0,
        format!("recording adds {:+.1} µs GET p50", def.p50 - norec.p50),
        "≤ 30 µs",
    );
    if !def.get_cpu_path.is_nan() && !norec.get_cpu_path.is_nan() {
        println!(
            "    (one GET at a time, recording added {:+.1} µs of CPU on the gateway's shards, where the request waits for it, and {:+.1} µs on its other threads)",
            def.get_cpu_path - norec.get_cpu_path,
            def.get_cpu_other - norec.get_cpu_other
        );
    }
    line(
        def.dl2 >= def.dl1,
        format!(
            "HTTP/2 download {} MB/s vs HTTP/1.1 {:.0} MB/s",
            f(def.dl2, 0),
            def.dl1
        ),
        "h2 ≥ h1",
    );
    // Which side the difference is on: the gateway's CPU per GiB, or the client's and upstream's
    // (this bench's own hyper stacks), which share the same CPUs.
    println!(
        "    (per GiB, the gateway spent {} CPU-s on HTTP/2 and {} on HTTP/1.1; the client and upstream \
         {} and {}, and {} and {} direct)",
        f(def.gib_cpu2, 2),
        f(def.gib_cpu1, 2),
        f(def.host_gib2 - def.gib_cpu2, 2),
        f(def.host_gib1 - def.gib_cpu1, 2),
        f(d.host_gib2, 2),
        f(d.host_gib1, 2),
    );
    line(
        def.dl1 / d.dl1 >= 0.8,
        format!("HTTP/1.1 download {:.2}× direct", def.dl1 / d.dl1),
        "≥ 0.8×",
    );
    line(
        def.dl2 / d.dl2 >= 0.8,
        format!("HTTP/2 download {}× direct", f(def.dl2 / d.dl2, 2)),
        "≥ 0.8×",
    );
    // On a host whose CPUs all three processes share, a download is CPU-bound: its rate is at
    // most the host's CPUs over the CPU-seconds each GiB costs the host, so the ratio to direct
    // cannot pass the ratio of their costs per GiB, however the gateway spends its share.
    for (what, direct, via, gw, gw_norec) in [
        (
            "HTTP/1.1",
            d.host_gib1,
            def.host_gib1,
            def.gib_cpu1,
            norec.gib_cpu1,
        ),
        ("HTTP/2", d.host_gib2, def.host_gib2, def.gib_cpu2, norec.gib_cpu2),
    ] {
        println!(
            "    ({what} download: client, upstream and gateway spent {} CPU-s/GiB direct and {} through ghgate defaults \
             (the gateway {}, {} unrecorded): {} CPUs allow at most {}× direct at these costs)",
            f(direct, 2),
            f(via, 2),
            f(gw, 2),
            f(gw_norec, 2),
            crate::cpu::cpus(),
            f(direct / via, 2)
        );
    }
    line(
        def.rps2 / d.rps2 >= def.rps1 / d.rps1,
        format!(
            "HTTP/2 req/s {}× direct vs HTTP/1.1 {:.2}×",
            f(def.rps2 / d.rps2, 2),
            def.rps1 / d.rps1
        ),
        "h2 ratio ≥ h1's",
    );
    line(
        def.newconn - d.newconn <= 150.0,
        format!(
            "new connection (TLS resumed) adds {:+.0} µs p50",
            def.newconn - d.newconn
        ),
        "≤ 150 µs",
    );
    if let Some(hop) = rows.iter().find(|r| r.label == "one hop") {
        // What a process in the path costs before any TLS or HTTP work: the bound's share.
        println!(
            "    (one hop, the same connection relayed untouched by a second ghgate with no TLS or HTTP \
             work, adds {:+.0} µs here: {:.0} % of the budget before the gateway terminates anything)",
            hop.newconn - d.newconn,
            (hop.newconn - d.newconn) / 150.0 * 100.0
        );
    }
    line(
        def.newproc / d.newproc <= 1.10,
        format!(
            "new process (curl, full handshake) {}× direct",
            f(def.newproc / d.newproc, 2)
        ),
        "≤ 1.10×",
    );
    line(
        def.cpu_mid <= def.cpu_client + def.cpu_upstream,
        format!(
            "gateway CPU {:.1} µs/request vs client+upstream {:.1} ({:.2}×)",
            def.cpu_mid,
            def.cpu_client + def.cpu_upstream,
            def.cpu_mid / (def.cpu_client + def.cpu_upstream)
        ),
        "≤ 1×",
    );
    // The gateway is the client's TLS server and HTTP server and the upstream's TLS client and
    // HTTP client: both ends' work per request, so its floor is the two together.
    println!(
        "    (the gateway is server to the client and client to the upstream, both ends' work in one \
         process: unrecorded it spends {}× what the two ends spend together ({} vs {} µs), a relay \
         alone {} µs, and recording adds {} µs)",
        f(norec.cpu_mid / (norec.cpu_client + norec.cpu_upstream), 2),
        f(norec.cpu_mid, 1),
        f(norec.cpu_client + norec.cpu_upstream, 1),
        rows.iter()
            .find(|r| r.label == "one hop")
            .map_or("-".into(), |h| f(h.cpu_mid, 1)),
        f(def.cpu_mid - norec.cpu_mid, 1)
    );
    line(
        def.ttfb - d.ttfb <= 1000.0,
        format!(
            "streamed completion TTFB adds {:+.0} µs (no secret)",
            def.ttfb - d.ttfb
        ),
        "≤ 1 ms",
    );
    idle_lines(def, norec);
    line(
        def.p50 - d.p50 <= 100.0,
        format!("keep-alive GET p50 adds {:+.1} µs", def.p50 - d.p50),
        "≤ 100 µs",
    );
    line(
        def.rps1 / d.rps1 >= 0.5,
        format!("HTTP/1.1 req/s {:.2}× direct", def.rps1 / d.rps1),
        "≥ 0.5×",
    );
    gateway_rss(gateways);
    println!("(10,000 connections held for minutes: `cargo xtask bench soak -- --minutes N`)");
}

/// The memory target's lines: idle HTTP/1.1 and HTTP/2 connections through the defaults
/// gateway, and the unrecorded gateway's figures beside them.
fn idle_lines(def: &Row, norec: &Row) {
    for (idle, proto) in [(def.idle, "HTTP/1.1"), (def.idle2, "HTTP/2")] {
        if let Some(Idle {
            held,
            measured,
            kib,
            files_before,
            files,
        }) = idle
        {
            println!(
                "  {} {:<62} target ≤ 32 KiB",
                verdict(kib <= 32.0),
                format!(
                    "{kib:.1} KiB RSS per idle {proto} connection (the second {measured} of {held} held; files {files_before} → {files})"
                )
            );
        }
    }
    if let (Some(h1), Some(h2)) = (&def.idle, &def.idle2)
        && h2.kib > 32.0
    {
        println!(
            "    (HTTP/2 holds {:.1} KiB more per idle connection than HTTP/1.1 here. The h2 crate allocates its codec's buffers when a connection is made and keeps them for its life: 16 KiB to write, 8 KiB to read, 4 KiB for HPACK strings; its per-stream slabs keep about 2.5 KiB more once a stream has been used. Only their pages that were written are resident, so what makes them resident is what else touched those pages first; no setting of hyper or h2 shrinks them)",
            h2.kib - h1.kib
        );
    }
    for (idle, proto) in [(norec.idle, "HTTP/1.1"), (norec.idle2, "HTTP/2")] {
        if let Some(Idle { held, kib, .. }) = idle {
            println!("  (recording off: {kib:.1} KiB RSS per idle {proto} connection, {held} held)");
        }
    }
}

fn gateway_rss(gateways: &[(&str, &Gateway)]) {
    for (label, gw) in gateways {
        if let Some(pid) = gw.pid() {
            let (rss, peak) = rss_kib(pid);
            println!("gateway RSS ({label}): {rss} KiB at the end, peak {peak} KiB");
        }
    }
}

/// `--only idle`: the memory figure alone (each on a fresh gateway, as in the full run).
fn print_idle(rows: &[Row]) {
    let (Some(norec), Some(def)) = (
        rows.iter().find(|r| r.label == "ghgate, no record"),
        rows.iter().find(|r| r.label == "ghgate defaults"),
    ) else {
        return;
    };
    println!("\nghgate-bench proxy --only idle (fresh gateways; target of issue 20):");
    idle_lines(def, norec);
}
