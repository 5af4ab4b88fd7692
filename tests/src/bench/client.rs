//! The HTTPS client of `proxy`, `record` and `soak`: one process per measurement, run in the place
//! under test (inside the gateway's cgroup through `ghgate exec`, or outside for direct and
//! mitmproxy). It prints one JSON [`Report`]; it never judges what it measured.
//!
//! TLS client configurations are built once per process and shared by its connections, so a
//! client that reconnects resumes its TLS session where the server allows it (as git's and gh's
//! HTTP stacks do within one process); the `newproc` mode starts curl per request instead, a new
//! process with a full handshake.
use std::{
    io::BufRead as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::cpu::process_secs;

/// The name every request is for (the upstream's certificate, and one the gateway terminates).
pub const NAME: &str = "api.github.com";

#[derive(clap::Args, Clone)]
pub struct HttpClientArgs {
    /// latency | newconn | newproc | rps | rps2 | download | download2 | sse | idle | idle2 | soak
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
    /// `sse`: the completion's text, hex-encoded, and how many events carry it.
    #[arg(long, default_value = "")]
    pub text_hex: String,
    #[arg(long, default_value_t = 8)]
    pub pieces: u64,
    /// `soak`: requests per second over all held connections.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
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
            text_hex: String::new(),
            pieces: 8,
            rate: 50,
        }
    }
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Report {
    /// Per request (or per completion, for `sse`: time to the first body byte), in ns.
    pub ns: Vec<u64>,
    pub requests_per_s: f64,
    pub mb_per_s: f64,
    /// Requests completed (rps modes, soak).
    pub requests: u64,
    /// CPU-seconds this client process spent on the measured part.
    pub cpu_s: f64,
    /// `sse`: per completion, when each event had fully arrived (ns after the request was sent).
    pub events_ns: Vec<Vec<u64>>,
    /// `sse`: the bytes of each event of the last completion.
    pub event_bytes: Vec<u64>,
    /// `sse`: the last completion's body as received.
    pub body: String,
    /// `soak`: failed requests.
    pub errors: u64,
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// The TLS client configurations of this process, by (CA file, ALPN protocol).
type Configs = std::collections::HashMap<(PathBuf, Vec<u8>), Arc<rustls::ClientConfig>>;

/// One TLS client configuration per (CA, ALPN) for the whole process, so that sessions resume.
fn tls_config(ca: &Path, alpn: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static CONFIGS: std::sync::Mutex<Option<Configs>> = std::sync::Mutex::new(None);
    let mut configs = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (ca.to_path_buf(), alpn.to_vec());
    if let Some(c) = configs.get_or_insert_default().get(&key) {
        return Ok(c.clone());
    }
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let config = Arc::new(config);
    configs.get_or_insert_default().insert(key, config.clone());
    Ok(config)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn dial(a: &HttpClientArgs, alpn: &[u8]) -> anyhow::Result<Tls> {
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
    let name = rustls::pki_types::ServerName::try_from(NAME)?;
    Ok(tokio_rustls::TlsConnector::from(tls_config(&a.ca, alpn)?)
        .connect(name, tcp)
        .await?)
}

/// A connection speaking HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub enum Conn {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Empty<Bytes>>>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    pub async fn open(a: &HttpClientArgs, h2: bool) -> anyhow::Result<Self> {
        if h2 {
            let tls = dial(a, b"h2").await?;
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(tls))
                .await?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let tls = dial(a, b"http/1.1").await?;
            let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(Arc::new(tokio::sync::Mutex::new(send))))
        }
    }

    /// GET `path`, read the whole body through `each` (called per data frame with the time since
    /// the request was sent); returns the bytes read.
    pub async fn get_with(
        &self,
        path: &str,
        port: u16,
        mut each: impl FnMut(&[u8], Duration),
    ) -> anyhow::Result<u64> {
        let start = Instant::now();
        let resp = match self {
            Conn::H1(send) => {
                let mut send = send.lock().await;
                send.ready().await?;
                let req = http::Request::get(path)
                    .header("host", format!("{NAME}:{port}"))
                    .body(Empty::new())?;
                send.send_request(req).await?
            }
            Conn::H2(send) => {
                let mut send = send.clone();
                send.ready().await?;
                let req = http::Request::get(format!("https://{NAME}:{port}{path}")).body(Empty::new())?;
                send.send_request(req).await?
            }
        };
        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                n += d.len() as u64;
                each(d, start.elapsed());
            }
        }
        Ok(n)
    }

    pub async fn get(&self, path: &str, port: u16) -> anyhow::Result<u64> {
        self.get_with(path, port, |_, _| {}).await
    }
}

// ---------------------------------------------------------------------------------------------
// The modes.

/// Raises this process's open-file limit to its hard limit (held connections are files), with
/// util-linux's `prlimit` (no unsafe code here); returns the limit now in force.
pub fn raise_nofile() -> anyhow::Result<u64> {
    let pid = std::process::id().to_string();
    let limits = || -> anyhow::Result<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/self/limits")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .context("no open-file limit in /proc/self/limits")?;
        let v: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        anyhow::ensure!(v.len() >= 2, "unreadable open-file limit: {line}");
        Ok((v[0], v[1]))
    };
    let (soft, hard) = limits()?;
    if soft < hard {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status()
            .context("running prlimit to raise RLIMIT_NOFILE")?;
        anyhow::ensure!(
            status.success(),
            "prlimit could not raise RLIMIT_NOFILE to {hard}"
        );
    }
    Ok(limits()?.0)
}

fn own_cpu() -> f64 {
    process_secs(std::process::id()).unwrap_or(0.0)
}

/// Requests in a loop on `conns` (each shared by `per_conn` tasks) until `seconds` pass.
async fn rps(a: &HttpClientArgs, conns: Vec<Conn>, per_conn: u64) -> anyhow::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let cpu = own_cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in conns {
        for _ in 0..per_conn {
            let (conn, done, port) = (conn.clone(), done.clone(), a.target.port());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    conn.get("/x", port).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let requests = done.load(Ordering::Relaxed);
    Ok(Report {
        requests,
        requests_per_s: requests as f64 / start.elapsed().as_secs_f64(),
        cpu_s: own_cpu() - cpu,
        ..Report::default()
    })
}

/// One GET of `path` per completion, `count` times, recording when each SSE event arrived.
async fn sse(a: &HttpClientArgs) -> anyhow::Result<Report> {
    let conn = Conn::open(a, false).await?;
    let port = a.target.port();
    let path = format!("/completion?text={}&pieces={}", a.text_hex, a.pieces);
    conn.get("/warm", port).await?;
    let mut r = Report::default();
    for _ in 0..a.count {
        let mut first = None;
        let mut body = Vec::new();
        let mut arrivals = Vec::new();
        let mut sizes = Vec::new();
        let mut last_end = 0usize;
        conn.get_with(&path, port, |data, at| {
            first.get_or_insert(at);
            body.extend_from_slice(data);
            // Every event completed by this frame arrived now.
            while let Some(end) = find(&body[last_end..], b"\n\n") {
                let end = last_end + end + 2;
                arrivals.push(at.as_nanos() as u64);
                sizes.push((end - last_end) as u64);
                last_end = end;
            }
        })
        .await?;
        r.ns.push(first.context("an empty completion")?.as_nanos() as u64);
        r.events_ns.push(arrivals);
        r.event_bytes = sizes;
        r.body = String::from_utf8_lossy(&body).into_owned();
    }
    Ok(r)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `count` connections, `concurrency` opening at a time, each with one GET done; HTTP/2 in mode
/// `idle2`, HTTP/1.1 otherwise.
async fn hold(a: &HttpClientArgs) -> anyhow::Result<Vec<Conn>> {
    let h2 = a.mode == "idle2";
    let port = a.target.port();
    let mut conns = Vec::with_capacity(a.count as usize);
    let mut opening = tokio::task::JoinSet::new();
    let mut left = a.count;
    while left > 0 || !opening.is_empty() {
        while left > 0 && (opening.len() as u64) < a.concurrency.max(1) {
            left -= 1;
            let a = a.clone();
            opening.spawn(async move {
                let conn = Conn::open(&a, h2).await?;
                conn.get("/x", port).await?;
                anyhow::Ok(conn)
            });
        }
        if let Some(done) = opening.join_next().await {
            conns.push(done??);
        }
    }
    Ok(conns)
}

/// Waits until stdin closes (or says anything), so the bench measures while the connections are
/// held.
fn wait_for_stdin() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

pub fn client(a: &HttpClientArgs) -> anyhow::Result<()> {
    raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let port = a.target.port();
        let mut r = Report::default();
        match a.mode.as_str() {
            "latency" => {
                let conn = Conn::open(a, false).await?;
                for _ in 0..50 {
                    conn.get("/warm", port).await?;
                }
                for _ in 0..a.count {
                    let t = Instant::now();
                    conn.get("/x", port).await?;
                    r.ns.push(t.elapsed().as_nanos() as u64);
                }
            }
            "newconn" => {
                // The first connection is a full handshake; the others resume its session.
                Conn::open(a, false).await?.get("/warm", port).await?;
                for _ in 0..a.count {
                    let t = Instant::now();
                    Conn::open(a, false).await?.get("/x", port).await?;
                    r.ns.push(t.elapsed().as_nanos() as u64);
                }
            }
            "newproc" => {
                for i in 0..a.count + 1 {
                    let mut curl = std::process::Command::new("curl");
                    curl.args(["-sS", "-o", "/dev/null", "--fail", "--cacert"])
                        .arg(&a.ca)
                        .arg("--resolve")
                        .arg(format!("{NAME}:{port}:{}", a.target.ip()))
                        .arg(format!("https://{NAME}:{port}/x"));
                    let t = Instant::now();
                    let out = curl.output().context("running curl")?;
                    let took = t.elapsed();
                    anyhow::ensure!(
                        out.status.success(),
                        "curl failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    // The first run loads curl's libraries into the page cache.
                    if i > 0 {
                        r.ns.push(took.as_nanos() as u64);
                    }
                }
            }
            "rps" => {
                let mut conns = Vec::new();
                for _ in 0..a.concurrency {
                    conns.push(Conn::open(a, false).await?);
                }
                r = rps(a, conns, 1).await?;
            }
            "rps2" => {
                let conn = Conn::open(a, true).await?;
                r = rps(a, vec![conn], a.concurrency).await?;
            }
            "download" | "download2" => {
                let conn = Conn::open(a, a.mode == "download2").await?;
                let cpu = own_cpu();
                let t = Instant::now();
                let n = conn.get(&format!("/bytes?n={}", a.bytes), port).await?;
                anyhow::ensure!(n == a.bytes, "downloaded {n} of {} bytes", a.bytes);
                r.mb_per_s = n as f64 / 1e6 / t.elapsed().as_secs_f64();
                r.cpu_s = own_cpu() - cpu;
            }
            "sse" => r = sse(a).await?,
            "idle" | "idle2" => {
                let conns = hold(a).await?;
                println!("{}", conns.len());
                tokio::task::spawn_blocking(wait_for_stdin).await?;
                drop(conns);
            }
            "soak" => {
                let conns = hold(a).await?;
                println!("{}", conns.len());
                let interval = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
                let deadline = Instant::now() + Duration::from_secs(a.seconds);
                let mut tick = tokio::time::interval(interval);
                let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                let mut i = 0usize;
                while Instant::now() < deadline {
                    tick.tick().await;
                    // A stride through the held connections: each is used every count/rate s.
                    let conn = conns[i % conns.len()].clone();
                    i += 1;
                    let (done, errors) = (done.clone(), errors.clone());
                    tokio::spawn(async move {
                        match conn.get("/x", port).await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                r.requests = done.load(Ordering::Relaxed);
                r.errors = errors.load(Ordering::Relaxed);
            }
            other => bail!("unknown mode {other}"),
        }
        anyhow::Ok(r)
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
