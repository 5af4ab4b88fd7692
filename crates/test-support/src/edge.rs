//! A loopback fake of GitHub's edge, for the complete-mediation tests: a few loopback addresses
//! (declared to the gateway as GitHub's ranges), each with what GitHub's addresses answer on —
//! HTTPS on 443 answering by `Host`, an SSH-like banner on 22, plain listeners on 80, 9418 and a
//! random high port, UDP on 443 — and a fake of GitHub's meta API serving the ranges.
//!
//! Every listener keeps what reached it and, for TCP, which process opened the connection (the
//! peer socket's owner, found in /proc), so a test can say "nothing reached the edge except
//! through the gateway" from the kernel's facts, not from anything the gateway says.
//!
//! Nothing here ever talks to a real GitHub address: every address is loopback.
use std::{
    convert::Infallible,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{
    https::{EdgeRole, TestCa, Upstream},
    loopback_v4,
    servers::UdpEcho,
};

/// The banner the fake's port 22 sends, as GitHub's SSH endpoint (babeld) does.
pub const SSH_BANNER: &str = "SSH-2.0-babeld-fake\r\n";

/// Names the edge's certificate is for: what GitHub serves, plus a name a test may put on
/// `[tls] passthrough`.
pub const EDGE_NAMES: &[&str] = &[
    "github.com",
    "api.github.com",
    "codeload.github.com",
    "pinned.github.test",
];

/// One connection (or datagram) that reached the edge.
#[derive(Clone, Debug)]
pub struct Contact {
    pub addr: SocketAddr,
    pub proto: &'static str,
    pub peer: SocketAddr,
    /// The process that owns the peer socket (None when it was gone before it could be looked up).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The SNI of the ClientHello it sent first, if it sent one.
    pub sni: Option<String>,
    pub received: Vec<u8>,
}

impl Contact {
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Contacts shared between the listeners of one address (or one test's own listener).
pub type Contacts = Arc<Mutex<Vec<Contact>>>;

/// A TCP listener that keeps what each connection sent; optionally sends a banner first, or
/// holds each connection silent for a while before reading. Stopped on drop.
pub struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// What a [`Listener`] does with a connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Sent as soon as the connection is accepted.
    pub banner: Option<&'static str>,
    /// How long to wait, silent, before sending the banner and reading.
    pub hold: Option<Duration>,
}

impl Listener {
    pub fn start(bind: SocketAddr, behaviour: Behaviour, contacts: Contacts) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("edge: bind {bind}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((stream, peer)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let owner = peer_process(peer, addr);
                let index = {
                    let mut all = contacts.lock().unwrap();
                    all.push(Contact {
                        addr,
                        proto: "tcp",
                        peer,
                        pid: owner.as_ref().map(|o| o.0),
                        comm: owner.map(|o| o.1),
                        sni: None,
                        received: Vec::new(),
                    });
                    all.len() - 1
                };
                let contacts = contacts.clone();
                thread::spawn(move || serve(stream, behaviour, contacts, index));
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, contacts: Contacts, index: usize) {
    stream.set_nonblocking(false).ok();
    if let Some(hold) = behaviour.hold {
        thread::sleep(hold);
    }
    if let Some(banner) = behaviour.banner {
        let _ = stream.write_all(banner.as_bytes());
    }
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut buf = [0u8; 16384];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut all = contacts.lock().unwrap();
        let contact = &mut all[index];
        if contact.received.len() < 1 << 20 {
            contact.received.extend_from_slice(&buf[..n]);
        }
        if contact.sni.is_none() {
            contact.sni = sni_of(&contact.received);
        }
    }
}

/// The SNI of a ClientHello at the start of `bytes`, if there is a whole one: the exact bytes
/// sent (lossily as text) when the hello is one record, else as rustls reads it (lower case).
pub fn sni_of(bytes: &[u8]) -> Option<String> {
    if bytes.first() != Some(&0x16) {
        return None;
    }
    if let Some(hello) = crate::hello::ClientHello::parse(bytes) {
        return hello
            .server_names()
            .first()
            .map(|n| String::from_utf8_lossy(n).into_owned());
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        acceptor.read_tls(&mut rd).ok()?;
    }
    let accepted = acceptor.accept().ok()??;
    accepted.client_hello().server_name().map(str::to_owned)
}

/// The process owning the TCP socket whose local address is `peer` and remote is `local` (the
/// other end of a connection this process accepted): its tgid and comm, from /proc.
pub fn peer_process(peer: SocketAddr, local: SocketAddr) -> Option<(u32, String)> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (l, r) = (parse_proc_addr(f.get(1)?)?, parse_proc_addr(f.get(2)?)?);
            (same(l, peer) && same(r, local)).then(|| f.get(9)?.parse::<u64>().ok())?
        })
    })?;
    let target = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_owned()));
            }
        }
    }
    None
}

/// Equal addresses, a v4-mapped one counting as its IPv4 address.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(s.ip(), IpAddr::V4),
        ip => ip,
    };
    a.port() == b.port() && canon(a) == canon(b)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as /proc/net/tcp{,6} print them:
/// each 32-bit word in host order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip: IpAddr = match bytes.len() {
        4 => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One address of the edge and everything listening on it.
pub struct EdgeNode {
    pub ip: Ipv4Addr,
    /// HTTPS on 443: answers by `Host` (see [`crate::https`]'s edge role).
    pub https: Upstream,
    /// TCP listeners: 22 (SSH banner), 80, 9418, and one random high port.
    pub tcp: Vec<Listener>,
    /// UDP on 443 (QUIC's port).
    pub udp: UdpEcho,
    contacts: Contacts,
}

impl EdgeNode {
    /// `ip:port`.
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.into(), port)
    }

    /// The random high port's number.
    pub fn high_port(&self) -> u16 {
        self.tcp.last().expect("listeners").addr.port()
    }

    /// Every TCP connection that reached this address, in order, and every UDP datagram.
    pub fn contacts(&self) -> Vec<Contact> {
        let mut all = self.contacts.lock().unwrap().clone();
        all.extend(self.udp.received().into_iter().map(|(peer, received)| Contact {
            addr: self.udp.addr,
            proto: "udp",
            peer,
            pid: None,
            comm: None,
            sni: None,
            received,
        }));
        all
    }

    /// The `/32` of this address, as the ranges list it.
    pub fn cidr(&self) -> String {
        format!("{}/32", self.ip)
    }
}

/// Several edge addresses under one CA (the gateway trusts it as `upstream_extra_roots`).
pub struct Edge {
    pub nodes: Vec<EdgeNode>,
    pub ca: TestCa,
    /// The edge CA's certificate file.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// How an [`Edge`] is built: `Edge::builder().nodes(3).git_root(root).start()`.
#[derive(Default)]
pub struct EdgeBuilder {
    nodes: usize,
    git_root: Option<PathBuf>,
    /// Nodes that present a certificate for these names only, instead of [`EDGE_NAMES`].
    serving: Vec<(usize, Vec<String>)>,
    /// Nodes that hold a connection for this name silent for a while before its handshake.
    holding: Vec<(usize, String, Duration)>,
}

impl EdgeBuilder {
    /// How many edge addresses (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Node `i` presents a certificate for `names` only (as a separate site on the same
    /// network would), instead of every name of [`EDGE_NAMES`]. It still answers by `Host`.
    pub fn serving(mut self, i: usize, names: &[&str]) -> Self {
        self.serving
            .push((i, names.iter().map(|n| n.to_string()).collect()));
        self
    }

    /// Node `i` holds each connection whose hello names `name` silent for `hold` before its
    /// handshake (an upstream slow to answer); connections for other names are answered at
    /// once.
    pub fn holding(mut self, i: usize, name: &str, hold: Duration) -> Self {
        self.holding.push((i, name.to_owned(), hold));
        self
    }

    /// Repositories `github.com` serves over smart HTTP on every node.
    pub fn git_root(mut self, root: PathBuf) -> Self {
        self.git_root = Some(root);
        self
    }

    pub fn start(self) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ca_file = ca.write_pem(dir.path());
        let nodes = (0..self.nodes.max(1))
            .map(|i| {
                let names = self
                    .serving
                    .iter()
                    .find(|(n, _)| *n == i)
                    .map(|(_, names)| names.clone())
                    .unwrap_or_else(|| EDGE_NAMES.iter().map(|n| n.to_string()).collect());
                let hold = self
                    .holding
                    .iter()
                    .find(|(n, ..)| *n == i)
                    .map(|(_, name, hold)| (name.clone(), *hold));
                start_node(&ca, self.git_root.clone(), &names, hold)
            })
            .collect();
        Edge {
            nodes,
            ca,
            ca_file,
            _dir: dir,
        }
    }
}

fn start_node(
    ca: &TestCa,
    git_root: Option<PathBuf>,
    names: &[String],
    hold: Option<(String, Duration)>,
) -> EdgeNode {
    let ip = loopback_v4();
    let contacts: Contacts = Arc::default();
    let kept = contacts.clone();
    let https_addr = SocketAddr::new(ip.into(), 443);
    let role = EdgeRole {
        on_accept: Arc::new(move |peer, first: &[u8]| {
            let owner = peer_process(peer, https_addr);
            kept.lock().unwrap().push(Contact {
                addr: https_addr,
                proto: "tcp",
                peer,
                pid: owner.as_ref().map(|o| o.0),
                comm: owner.map(|o| o.1),
                sni: sni_of(first),
                received: first.to_vec(),
            });
        }),
        hold,
    };
    let ip_name = ip.to_string();
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.push(&ip_name);
    let https = Upstream::builder(ca, &names)
        .bind(https_addr)
        .git(git_root)
        .edge(role)
        .start();
    let ssh = Behaviour {
        banner: Some(SSH_BANNER),
        hold: None,
    };
    let tcp = [
        (22, ssh),
        (80, Behaviour::default()),
        (9418, Behaviour::default()),
        (0, Behaviour::default()),
    ]
    .into_iter()
    .map(|(port, b)| Listener::start(SocketAddr::new(ip.into(), port), b, contacts.clone()))
    .collect();
    let udp = UdpEcho::start(SocketAddr::new(ip.into(), 443));
    EdgeNode {
        ip,
        https,
        tcp,
        udp,
        contacts,
    }
}

impl Edge {
    pub fn builder() -> EdgeBuilder {
        EdgeBuilder {
            nodes: 3,
            ..Default::default()
        }
    }

    pub fn node(&self, i: usize) -> &EdgeNode {
        &self.nodes[i]
    }

    /// Every contact of every node.
    pub fn contacts(&self) -> Vec<Contact> {
        self.nodes.iter().flat_map(EdgeNode::contacts).collect()
    }

    /// Contacts that did not come from the process `gateway_pid`: direct traffic that went
    /// around the gateway (UDP datagrams always count: the gateway never sends any).
    pub fn contacts_not_from(&self, gateway_pid: u32) -> Vec<Contact> {
        self.contacts()
            .into_iter()
            .filter(|c| c.pid != Some(gateway_pid))
            .collect()
    }

    /// The invariant of complete mediation: whatever reached the edge came from the gateway.
    pub fn assert_only_reached_through(&self, gateway_pid: u32) {
        let around = self.contacts_not_from(gateway_pid);
        assert!(
            around.is_empty(),
            "these reached GitHub's edge without the gateway (pid {gateway_pid}):\n{}",
            around.iter().map(|c| format!("  {c:?}\n")).collect::<String>()
        );
    }
}

/// A document in the format of GitHub's meta API (`GET https://api.github.com/meta`): the lists
/// given, every other list GitHub publishes empty, and the non-list fields it also carries.
pub fn meta_document(lists: &[(&str, Vec<String>)]) -> String {
    let mut doc = serde_json::json!({
        "verifiable_password_authentication": false,
        "ssh_key_fingerprints": {"SHA256_ED25519": "+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"},
        "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"],
        "hooks": [], "web": [], "api": [], "git": [], "github_enterprise_importer": [],
        "packages": [], "pages": [], "importer": [], "actions": [], "actions_macos": [],
        "codespaces": [], "dependabot": [], "copilot": [],
        "domains": {"website": ["*.github.com", "*.github.dev"], "copilot": ["*.githubcopilot.com"]},
    });
    for (list, cidrs) in lists {
        doc[*list] = serde_json::json!(cidrs);
    }
    doc.to_string()
}

/// What the meta fake answers.
#[derive(Clone, Debug)]
pub enum MetaAnswer {
    /// 200 with this body (`application/json`).
    Json(String),
    /// This status, with a GitHub-like error body.
    Status(u16),
    /// 200 with bytes that are not JSON.
    Garbage,
}

/// A fake of GitHub's meta API on loopback HTTPS (`GET /meta`), signed by a CA the test chooses,
/// answering what the test says; it counts connections and requests.
pub struct MetaServer {
    /// `https://<ip>:<port>/meta`.
    pub url: String,
    answer: Arc<Mutex<MetaAnswer>>,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl MetaServer {
    pub fn start(ca: &TestCa, answer: MetaAnswer) -> Self {
        let ip = loopback_v4();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (chain, key) = ca.leaf(&[&ip.to_string()]);
        let config =
            rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::new(ip.into(), 0)))
            .unwrap();
        let url = format!("https://{}/meta", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (ans, conns, reqs) = (answer.clone(), connections.clone(), requests.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, ans, reqs) = (acceptor.clone(), ans.clone(), reqs.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let answer = ans.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(meta_response(req.uri().path(), answer)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            url,
            answer,
            connections,
            requests,
            _runtime: runtime,
        }
    }

    pub fn set(&self, answer: MetaAnswer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// TCP connections accepted (a client that rejects the certificate still counts).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn meta_response(path: &str, answer: MetaAnswer) -> Response<Full<Bytes>> {
    let (status, body, json) = match (path, answer) {
        ("/meta", MetaAnswer::Json(body)) => (200, body, true),
        ("/meta", MetaAnswer::Status(code)) => (
            code,
            r#"{"message":"Server Error","documentation_url":"https://docs.github.com/rest"}"#.to_owned(),
            true,
        ),
        ("/meta", MetaAnswer::Garbage) => (200, "<html>\u{0}\u{1}not json at all".to_owned(), false),
        _ => (404, r#"{"message":"Not Found"}"#.to_owned(), true),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if json {
        r.headers_mut()
            .insert("content-type", "application/json; charset=utf-8".parse().unwrap());
    }
    r
}

/// Writes `doc` (a meta document) to `dir/name` and returns the path.
pub fn write_snapshot(dir: &Path, name: &str, doc: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, doc).unwrap();
    path
}
