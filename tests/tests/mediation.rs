//! Complete mediation (issue 16), from the attacker's side: a process in the intercepted cgroup
//! tries every way it can think of to talk to GitHub unrecorded, unmasked or around the policy,
//! and each attempt must be refused (and the refusal logged and recorded) or go through the
//! gateway. GitHub's edge is a loopback fake ([`ghgate_e2e::edge`]) whose addresses the gateway is
//! told are GitHub's ranges; every listener of the fake keeps what reached it and which process
//! sent it, so "nothing reached the edge around the gateway" is the kernel's fact.
//!
//! Every test runs real kernel programs on its own child cgroup and loopback servers; each needs
//! root (under CI=true its absence fails the test). Nothing is ever sent to a real GitHub address.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use ghgate_e2e::{
    AS_NOBODY, Gateway, GatewaySpec, GithubSpec, TestCgroup, bin,
    edge::{Contact, Edge, EdgeNode, MetaAnswer, MetaServer, SSH_BANNER, meta_document},
    eventually,
    fixtures::SmallDisk,
    https::TestCa,
    lines_of, loopback_v4, privileged, probe_outside,
};
use serde_json::{Value, json};

/// The names the gateway is configured with; they resolve to the edge's first address.
const NAMES: &[&str] = &["github.com", "api.github.com", "codeload.github.com"];
const PASSTHROUGH: &str = "pinned.github.test";

/// The edge node that presents a certificate for `PASSTHROUGH` only, as a separate site would.
const SITE: usize = 1;

/// GitHub's node (every name) and the site's.
fn pinned_site_edge() -> Edge {
    Edge::builder().nodes(2).serving(SITE, &[PASSTHROUGH]).start()
}

/// The gateway resolves `PASSTHROUGH` to `ips`, and their port 443 is intercepted.
fn resolve_pinned(spec: &mut GatewaySpec, ips: &[Ipv4Addr]) {
    let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    spec.intercept.push((
        vec![],
        ips.iter().map(|ip| format!("{ip}/32")).collect(),
        vec![443],
    ));
    spec.overrides.push((PASSTHROUGH.into(), ips));
}

/// The connections that reached `node` for `PASSTHROUGH` (the gateway's fronting probes, which
/// ask for intercepted names, are left out).
fn relayed_to(node: &EdgeNode) -> Vec<Contact> {
    node.contacts()
        .into_iter()
        .filter(|c| c.sni.as_deref() == Some(PASSTHROUGH))
        .collect()
}

fn one(mut v: Vec<Value>) -> Value {
    assert_eq!(v.len(), 1, "expected one probe result: {v:?}");
    v.remove(0)
}

/// `[::ffff:a.b.c.d]:port`.
fn mapped(at: SocketAddr) -> SocketAddr {
    match at.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), at.port()),
        _ => at,
    }
}

/// `[64:ff9b::a.b.c.d]:port`, the NAT64 well-known prefix's spelling of an IPv4 address.
fn nat64(at: SocketAddr) -> SocketAddr {
    match at.ip() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let ip = Ipv6Addr::new(
                0x64,
                0xff9b,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            );
            SocketAddr::new(ip.into(), at.port())
        }
        _ => at,
    }
}

/// A gateway with the edge's first address behind `NAMES`, trusting the edge's CA upstream.
/// Fields drop in order: the gateway (detached) before the edge and the cgroup.
struct Mediated {
    gw: Gateway,
    /// ghgate's CA, for clients.
    ca: PathBuf,
    edge: Edge,
    cg: TestCgroup,
}

impl Mediated {
    fn start(edge: Edge, github: Option<GithubSpec>, tweak: impl FnOnce(&mut GatewaySpec)) -> Self {
        let cg = TestCgroup::new();
        let a = edge.node(0).ip.to_string();
        let mut spec = GatewaySpec {
            intercept: vec![(NAMES.iter().map(|n| n.to_string()).collect(), vec![], vec![443])],
            overrides: NAMES.iter().map(|n| (n.to_string(), vec![a.clone()])).collect(),
            upstream_extra_roots: vec![edge.ca_file.clone()],
            github,
            ..Default::default()
        };
        tweak(&mut spec);
        let gw = Gateway::start(&cg, &spec);
        let ca = gw.ca_file();
        Self { gw, ca, edge, cg }
    }

    /// GitHub's ranges are every address of the edge.
    fn with_ranges(edge: Edge, github: impl FnOnce(&[String]) -> GithubSpec) -> Self {
        let cidrs: Vec<String> = edge.nodes.iter().map(EdgeNode::cidr).collect();
        Self::start(edge, Some(github(&cidrs)), |_| {})
    }

    fn node(&self, i: usize) -> &EdgeNode {
        self.edge.node(i)
    }

    fn probe(&self, args: &[&str]) -> Value {
        one(self.gw.probe(args))
    }

    /// An HTTPS GET of `path` at `at` for `name`, trusting only ghgate's CA (what a client under
    /// interception does), plus `extra` probe arguments.
    fn fetch(&self, at: SocketAddr, name: &str, path: &str, extra: &[&str]) -> Value {
        let ca = self.ca.display().to_string();
        let at = at.to_string();
        let mut args = vec!["fetch", &at, name, "--ca", &ca, "--path", path];
        args.extend_from_slice(extra);
        self.probe(&args)
    }

    /// The probe's arguments to fetch `/user` at `at` with `PASSTHROUGH` in its hello and `host`
    /// in its request, trusting the edge's own CA (what a relayed connection meets).
    fn passthrough_fetch_args(&self, at: SocketAddr, host: &str) -> Vec<String> {
        let (at, ca) = (at.to_string(), self.edge.ca_file.display().to_string());
        [
            "fetch",
            &at,
            PASSTHROUGH,
            "--ca",
            &ca,
            "--host",
            host,
            "--path",
            "/user",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// That fetch, from a process in the intercepted cgroup.
    fn fetch_passthrough(&self, at: SocketAddr, host: &str) -> Value {
        let args = self.passthrough_fetch_args(at, host);
        self.probe(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The invariant: whatever reached the edge came from the gateway.
    fn assert_mediated(&self) {
        self.edge
            .assert_only_reached_through(self.gw.pid().expect("the gateway is running"));
    }

    /// Every recorded session, shown: what an auditor reads.
    fn recorded(&self) -> String {
        self.gw
            .ghgate_ok(&["sessions", "list", "--json"])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|s| {
                self.gw
                    .ghgate_ok(&["sessions", "show", s["id"].as_str().unwrap_or_default()])
            })
            .collect()
    }

    /// A kernel refusal at connect(): EPERM in the probe's result, and the refusal logged and
    /// recorded with the caller and the destination.
    fn assert_refused_by_kernel(&self, r: &Value, reason: &str, orig_dst: Option<SocketAddr>) {
        assert_eq!(
            (&r["ok"], &r["errno"]),
            (&json!(false), &json!(libc::EPERM)),
            "expected EPERM: {r}"
        );
        let mut want = json!({"layer": "kernel", "reason": reason, "tgid": r["pid"], "uid": r["uid"], "comm": "ghgate-probe"});
        if let Some(dst) = orig_dst {
            want["orig_dst"] = dst.to_string().into();
        }
        self.gw.expect_refusal(&want);
    }
}

/// The fake and every probe move work on their own, outside any interception: if this fails,
/// every other test here proves nothing.
#[test]
fn the_edge_fake_and_the_probe_moves_work_outside_interception() {
    if !privileged() {
        return;
    }
    let edge = Edge::builder().nodes(1).start();
    let n = edge.node(0);
    let ca = edge.ca_file.display().to_string();

    let r = one(probe_outside(&[
        "fetch",
        &n.at(443).to_string(),
        "api.github.com",
        "--ca",
        &ca,
        "--path",
        "/zen",
    ]));
    assert_eq!(r["status"], 200, "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["edge"], n.at(443).to_string(), "{body}");
    let r = one(probe_outside(&[
        "fetch",
        &n.at(443).to_string(),
        "api.github.com",
        "--ca",
        "any",
        "--host",
        "elsewhere.example",
    ]));
    assert_eq!(r["status"], 421, "an unknown host: {r}");
    let r = one(probe_outside(&[
        "fetch",
        &n.at(443).to_string(),
        &n.ip.to_string(),
        "--ca",
        &ca,
        "--host",
        "api.github.com",
    ]));
    assert_eq!(r["status"], 200, "no SNI: {r}");
    let r = one(probe_outside(&[
        "fetch",
        &n.at(443).to_string(),
        "api.github.com",
        "--ca",
        &ca,
        "--dribble-ms",
        "1",
    ]));
    assert_eq!(r["status"], 200, "a hello in 1-byte segments: {r}");

    let ssh = one(probe_outside(&[
        "talk",
        &n.at(22).to_string(),
        "--send",
        r"SSH-2.0-probe\r\n",
    ]));
    assert_eq!(ssh["received"], SSH_BANNER, "{ssh}");
    for port in [80, 9418, n.high_port()] {
        let r = one(probe_outside(&[
            "talk",
            &n.at(port).to_string(),
            "--send",
            "hello",
            "--wait-ms",
            "300",
        ]));
        assert_eq!(r["ok"], true, "{r}");
    }
    let tfo = one(probe_outside(&[
        "talk",
        &n.at(22).to_string(),
        "--dial",
        "tfo",
        "--send",
        "tfo-bytes",
    ]));
    assert_eq!(tfo["received"], SSH_BANNER, "TCP Fast Open: {tfo}");
    let mptcp = one(probe_outside(&["talk", &n.at(22).to_string(), "--dial", "mptcp"]));
    assert!(
        mptcp["received"] == SSH_BANNER || mptcp["unsupported"] == true,
        "MPTCP: {mptcp}"
    );
    let sctp = one(probe_outside(&["sctp", &n.at(22).to_string()]));
    assert!(
        sctp["unsupported"] == true || sctp["errno"] != 0,
        "no SCTP listener: {sctp}"
    );
    let udp = one(probe_outside(&[
        "udp-send",
        &n.at(443).to_string(),
        "--send",
        "quic",
    ]));
    assert_eq!(udp["from"], n.at(443).to_string(), "{udp}");
    let udp = one(probe_outside(&[
        "udp-send",
        &mapped(n.at(443)).to_string(),
        "--connect",
        "--send",
        "quic-v6",
    ]));
    assert_eq!(udp["ok"], true, "{udp}");
    let raw = one(probe_outside(&[
        "raw-udp",
        &n.at(443).to_string(),
        "--send",
        "raw-datagram",
    ]));
    assert_eq!(raw["ok"], true, "{raw}");
    let hello = one(probe_outside(&[
        "hello",
        &n.at(443).to_string(),
        "--sni",
        "API.GITHUB.COM.",
        "--wait-ms",
        "500",
    ]));
    assert_eq!(hello["answer"], "handshake", "{hello}");

    let contacts = eventually("the edge's records", Duration::from_secs(5), || {
        let c = n.contacts();
        c.iter()
            .any(|c| c.received_text().ends_with("raw-datagram"))
            .then_some(c)
    });
    let own = std::process::id();
    let at = |port: u16, proto: &str| {
        contacts
            .iter()
            .filter(|c| c.addr.port() == port && c.proto == proto)
            .count()
    };
    assert!(at(443, "tcp") >= 5 && at(22, "tcp") >= 2 && at(80, "tcp") == 1 && at(9418, "tcp") == 1);
    assert!(at(443, "udp") >= 3, "{contacts:?}");
    let tcp: Vec<_> = contacts.iter().filter(|c| c.proto == "tcp").collect();
    assert!(
        tcp.iter()
            .all(|c| c.comm.as_deref() == Some("ghgate-probe") && c.pid != Some(own)),
        "each connection is attributed to the probe that made it: {tcp:?}"
    );
    assert!(
        tcp.iter().any(|c| c.sni.as_deref() == Some("API.GITHUB.COM.")),
        "the crafted hello arrived with its exact SNI: {tcp:?}"
    );
    assert!(
        contacts.iter().any(|c| c.received_text() == "tfo-bytes"),
        "the Fast Open payload: {contacts:?}"
    );
    assert!(
        edge.contacts_not_from(0).len() == edge.contacts().len(),
        "nothing is the gateway's here"
    );

    let meta = MetaServer::start(
        &edge.ca,
        MetaAnswer::Json(meta_document(&[("api", vec![n.cidr()])])),
    );
    let url = meta
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/meta")
        .to_owned();
    let ip = url.rsplit_once(':').unwrap().0.to_owned();
    let r = one(probe_outside(&[
        "fetch", &url, &ip, "--ca", &ca, "--path", "/meta",
    ]));
    assert_eq!(r["status"], 200, "{r}");
    let doc: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(doc["api"], json!([n.cidr()]));
    meta.set(MetaAnswer::Status(500));
    let r = one(probe_outside(&[
        "fetch", &url, &ip, "--ca", &ca, "--path", "/meta",
    ]));
    assert_eq!(r["status"], 500, "{r}");
    assert_eq!(meta.requests(), 2);
}

/// The names resolve to address A; the attacker dials B and C, other addresses of GitHub's
/// edge that answer for the same names. Both are intercepted and recorded as A would be, and
/// the gateway reaches the address the client dialled.
#[test]
fn another_edge_address_than_the_names_resolve_to_is_intercepted_and_recorded() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, _, first) = ghgate_e2e::fixtures::served_repo(tmp.path());
    let m = Mediated::with_ranges(
        Edge::builder().nodes(3).git_root(root).start(),
        GithubSpec::ranges,
    );
    for (i, path) in [(1, "/mediation/via-b"), (2, "/mediation/via-c")] {
        let at = m.node(i).at(443);
        let r = m.fetch(at, "api.github.com", path, &[]);
        assert_eq!(r["handshake"], "ok", "the gateway terminated TLS at {at}: {r}");
        assert_eq!(r["status"], 200, "{r}");
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body["edge"],
            at.to_string(),
            "the gateway dialled where the client did: {body}"
        );
    }
    // A real git, told (as a DNS-over-HTTPS client could be) that github.com is at C.
    let c = m.node(2).ip;
    let out =
        m.gw.exec("git")
            .arg("-c")
            .arg(format!("http.sslCAInfo={}", m.ca.display()))
            .arg("-c")
            .arg(format!("http.curloptResolve=github.com:443:{c}"))
            .args(["ls-remote", "https://github.com/o/r.git"])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_SSL_CAINFO")
            .env_remove("GIT_SSL_CAPATH")
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "git through C: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&first));

    let shown = eventually("the exchanges recorded", Duration::from_secs(10), || {
        let text = m.recorded();
        (text.contains("/mediation/via-b")
            && text.contains("/mediation/via-c")
            && text.contains("git-upload-pack"))
        .then_some(text)
    });
    for i in [1, 2] {
        assert!(
            shown.contains(&m.node(i).at(443).to_string()),
            "the original destination is recorded:\n{shown}"
        );
    }
    m.assert_mediated();
}

/// Every port of GitHub's addresses but the TLS ones (SSH, plain HTTP, git://, anything) is
/// refused at connect() with EPERM: nothing reaches the edge, and each refusal is logged and
/// recorded with who tried and where.
#[test]
fn other_ports_of_githubs_addresses_are_refused_at_connect() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(2).start(), GithubSpec::ranges);
    for i in [0, 1] {
        let node = m.node(i);
        for port in [22, 80, 9418, node.high_port()] {
            let started = Instant::now();
            let r = m.probe(&[
                "talk",
                &node.at(port).to_string(),
                "--send",
                r"SSH-2.0-OpenSSH_9.6\r\n",
            ]);
            assert!(started.elapsed() < Duration::from_secs(3), "refused at once: {r}");
            m.assert_refused_by_kernel(&r, "port_not_allowed", Some(node.at(port)));
        }
    }
    // An unprivileged caller is refused alike, and recorded as itself.
    let r = one(m.gw.probe_as(AS_NOBODY, &["talk", &m.node(0).at(22).to_string()]));
    assert_eq!(r["uid"], 65534);
    m.assert_refused_by_kernel(&r, "port_not_allowed", Some(m.node(0).at(22)));
    // A process in a cgroup nested below the intercepted one (as a container's would be).
    let nested = m.cg.child("nested");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&nested)
        .arg(bin("ghgate-probe"))
        .args(["talk", &m.node(1).at(9418).to_string()])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).expect("probe json");
    m.assert_refused_by_kernel(&r, "port_not_allowed", Some(m.node(1).at(9418)));
    // A second connect() on a fresh socket right after a refusal is refused again.
    let again = m.probe(&["talk", &m.node(0).at(22).to_string()]);
    assert_eq!(again["errno"], libc::EPERM, "{again}");
    assert!(m.edge.contacts().is_empty(), "{:?}", m.edge.contacts());
}

/// `allow_ports = [22]` lets SSH to GitHub's addresses through, untouched (no gateway in the
/// way), and nothing else.
#[test]
fn allow_ports_lets_only_the_listed_port_through_untouched() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(1).start(), |c| {
        GithubSpec::ranges(c).allow_ports(&[22])
    });
    let ssh = m.probe(&[
        "talk",
        &m.node(0).at(22).to_string(),
        "--send",
        r"SSH-2.0-OpenSSH_9.6\r\n",
    ]);
    assert_eq!(ssh["received"], SSH_BANNER, "{ssh}");
    assert_eq!(ssh["peer"], m.node(0).at(22).to_string());
    let contacts = m.node(0).contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(
        contacts[0].pid,
        ssh["pid"].as_u64().map(|p| p as u32),
        "direct, from the probe"
    );
    assert_eq!(contacts[0].received_text(), "SSH-2.0-OpenSSH_9.6\r\n");
    let http = m.probe(&["talk", &m.node(0).at(80).to_string()]);
    m.assert_refused_by_kernel(&http, "port_not_allowed", Some(m.node(0).at(80)));
    assert!(
        !m.gw
            .refusal_logs()
            .iter()
            .any(|l| l["orig_dst"] == m.node(0).at(22).to_string()),
        "an allowed port is not a refusal"
    );
}

/// UDP (QUIC's port and any other, sendto or connect, from a v4 or a v6 socket, after
/// connecting elsewhere first), UDP-Lite and SCTP to GitHub's addresses: refused with EPERM.
#[test]
fn udp_and_other_protocols_to_githubs_addresses_are_refused() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(1).start(), GithubSpec::ranges);
    let n = m.node(0);
    let decoy = ghgate_e2e::servers::UdpEcho::start(SocketAddr::new(loopback_v4().into(), 0));
    let quic = n.at(443).to_string();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "udp-send".into(),
            quic.clone(),
            "--send".into(),
            "quic-initial".into(),
        ],
        vec!["udp-send".into(), quic.clone(), "--connect".into()],
        vec!["udp-send".into(), n.at(53).to_string()],
        vec!["udp-send".into(), n.at(n.high_port()).to_string()],
        vec!["udp-send".into(), mapped(n.at(443)).to_string()],
        vec![
            "udp-send".into(),
            mapped(n.at(443)).to_string(),
            "--connect".into(),
        ],
        vec![
            "udp-send".into(),
            quic.clone(),
            "--decoy".into(),
            decoy.addr.to_string(),
        ],
        vec!["udp-send".into(), quic.clone(), "--lite".into()],
        vec!["sctp".into(), n.at(22).to_string()],
        vec!["sctp".into(), n.at(443).to_string()],
    ];
    let mut unsupported = Vec::new();
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = m.probe(&args);
        if r["unsupported"] == true {
            unsupported.push(args.join(" "));
            continue;
        }
        assert_eq!(r["errno"], libc::EPERM, "{args:?}: {r}");
        m.assert_refused_by_kernel(&r, "not_tcp", None);
    }
    eprintln!("protocols this kernel lacks (not tested): {unsupported:?}");
    assert!(decoy.received().is_empty(), "the decoy connect sends nothing");
    assert!(n.udp.received().is_empty(), "{:?}", n.udp.received());
    let r = one(m.gw.probe_as(AS_NOBODY, &["udp-send", &quic]));
    assert_eq!(r["uid"], 65534);
    m.assert_refused_by_kernel(&r, "not_tcp", Some(n.at(443)));
}

/// TCP Fast Open (sendto with MSG_FASTOPEN, no connect()) and MPTCP take the same checks as a
/// plain connect: refused on other ports, redirected to the gateway on TLS ports.
#[test]
fn tcp_fast_open_and_mptcp_take_the_same_checks_as_connect() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(2).start(), GithubSpec::ranges);
    let ssh = m.node(0).at(22);
    let r = m.probe(&[
        "talk",
        &ssh.to_string(),
        "--dial",
        "tfo",
        "--send",
        r"SSH-2.0-OpenSSH_9.6\r\n",
    ]);
    m.assert_refused_by_kernel(&r, "port_not_allowed", Some(ssh));
    let r = m.probe(&["talk", &ssh.to_string(), "--dial", "mptcp"]);
    let mptcp = r["unsupported"] != true;
    if mptcp {
        m.assert_refused_by_kernel(&r, "port_not_allowed", Some(ssh));
    }
    let b = m.node(1).at(443);
    for dial in ["tfo", "mptcp"] {
        if dial == "mptcp" && !mptcp {
            continue;
        }
        let r = m.fetch(
            b,
            "api.github.com",
            &format!("/mediation/{dial}"),
            &["--dial", dial],
        );
        assert_eq!(r["handshake"], "ok", "{dial}: {r}");
        assert_eq!(r["status"], 200, "{dial}: {r}");
        // As for TCP, the client sees its original peer, not the gateway's listener. Not for
        // MPTCP: the kernel keys the redirect by the TCP subflow's cookie, while getpeername runs
        // on the MPTCP socket above it, which the programs cannot relate to its subflow. The
        // connection is mediated all the same; only the peer it reports differs.
        if dial != "mptcp" {
            assert_eq!(
                r["peer"],
                b.to_string(),
                "{dial}: getpeername gives the gateway away: {r}"
            );
        }
    }
    m.assert_mediated();
}

/// `::ffff:a.b.c.d` and `64:ff9b::a.b.c.d` are the address itself: refused on other ports
/// (even with a zone id), intercepted on TLS ports.
#[test]
fn v4_mapped_and_nat64_spellings_are_the_address_itself() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(2).start(), GithubSpec::ranges);
    let b = m.node(1);
    let r = m.probe(&["talk", &mapped(b.at(22)).to_string()]);
    m.assert_refused_by_kernel(&r, "port_not_allowed", Some(b.at(22)));
    let r = m.probe(&["talk", &mapped(b.at(22)).to_string(), "--scope-id", "1"]);
    assert_eq!(r["errno"], libc::EPERM, "a zone id changes nothing: {r}");
    let r = m.fetch(mapped(b.at(443)), "api.github.com", "/mediation/mapped", &[]);
    assert_eq!(r["status"], 200, "{r}");

    // No NAT64 gateway exists here, so a connection that went around ghgate would fail with
    // ENETUNREACH: EPERM and a terminated handshake are ghgate's own answers.
    let r = m.probe(&["talk", &nat64(b.at(22)).to_string()]);
    m.assert_refused_by_kernel(&r, "port_not_allowed", None);
    let r = m.probe(&["udp-send", &nat64(b.at(443)).to_string()]);
    m.assert_refused_by_kernel(&r, "not_tcp", None);
    let r = m.fetch(nat64(b.at(443)), "api.github.com", "/mediation/nat64", &[]);
    assert_eq!(r["handshake"], "ok", "ghgate terminated it: {r}");
    m.assert_mediated();
}

/// One crafted first flight to a TLS port of GitHub's address, and what must become of it.
struct HelloCase {
    what: &'static str,
    args: Vec<String>,
    /// The refusal's reason (None: any reason of `alternatives`).
    reason: &'static str,
    /// Reasons equally right for this case.
    alternatives: &'static [&'static str],
    sni: Option<&'static str>,
}

/// On a TLS port the gateway decides by the ClientHello, and everything it cannot attribute to
/// an intercepted (or passthrough) name is refused: it never dials the upstream, the client gets
/// an alert or a close, and the refusal is logged and recorded with its reason.
#[test]
fn tls_peek_refuses_every_hello_it_cannot_attribute() {
    if !privileged() {
        return;
    }
    let m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let a = m.node(0);
    let at = a.at(443).to_string();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let hello = |extra: &[&str]| {
        let mut v = s(&["hello", &at, "--wait-ms", "2000"]);
        v.extend(s(extra));
        v
    };
    let cases = vec![
        HelloCase {
            what: "a foreign SNI carrying the real Host inside",
            args: s(&[
                "fetch",
                &at,
                "evil.example",
                "--ca",
                "any",
                "--host",
                "api.github.com",
                "--path",
                "/smuggled",
            ]),
            reason: "foreign_sni",
            alternatives: &[],
            sni: Some("evil.example"),
        },
        HelloCase {
            what: "no SNI (an IP address as the TLS name), to the address the names resolve to",
            args: s(&[
                "fetch",
                &at,
                &a.ip.to_string(),
                "--ca",
                "any",
                "--host",
                "api.github.com",
            ]),
            reason: "no_sni",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "a hello with no SNI extension at all",
            args: hello(&["--no-sni"]),
            reason: "no_sni",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "a foreign name with an Encrypted Client Hello extension (the real name hidden)",
            args: hello(&["--sni", "public.example", "--ech"]),
            reason: "ech",
            alternatives: &[],
            sni: Some("public.example"),
        },
        HelloCase {
            what: "a handshake record header followed by garbage",
            args: hello(&["--garbage"]),
            reason: "malformed_hello",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "two host names in one SNI list (the first intercepted)",
            args: hello(&["--sni", "api.github.com", "--sni", "evil.example"]),
            reason: "malformed_hello",
            alternatives: &["foreign_sni"],
            sni: None,
        },
        HelloCase {
            what: "an SNI with an embedded NUL",
            args: hello(&["--sni", r"api.github.com\0.evil.example"]),
            reason: "malformed_hello",
            alternatives: &["foreign_sni"],
            sni: None,
        },
        HelloCase {
            what: "a homograph SNI in raw UTF-8 (Cyrillic а)",
            args: hello(&["--sni", "\u{430}pi.github.com"]),
            reason: "foreign_sni",
            // Not a DNS name at all: TLS stacks read it as no name.
            alternatives: &["malformed_hello", "no_sni"],
            sni: None,
        },
        HelloCase {
            // (xn--pi-6kc.github.com would be a name under github.com, GitHub's to answer: it is
            // terminated like any other.)
            what: "a punycode homograph of github.com itself",
            args: hello(&["--sni", "xn--gthub-n4a.com"]),
            reason: "foreign_sni",
            alternatives: &[],
            sni: Some("xn--gthub-n4a.com"),
        },
        HelloCase {
            what: "an intercepted name as a prefix of a foreign one",
            args: hello(&["--sni", "api.github.com.evil.example"]),
            reason: "foreign_sni",
            alternatives: &[],
            sni: Some("api.github.com.evil.example"),
        },
        HelloCase {
            what: "a foreign SNI in a hello fragmented over 16-byte TLS records",
            args: hello(&["--sni", "evil.example", "--fragment", "16"]),
            reason: "foreign_sni",
            alternatives: &["malformed_hello"],
            sni: None,
        },
        HelloCase {
            what: "an SSH client's banner on 443",
            args: s(&["talk", &at, "--send", r"SSH-2.0-OpenSSH_9.6\r\n"]),
            reason: "not_tls",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "plain HTTP on 443",
            args: s(&[
                "talk",
                &at,
                "--send",
                r"GET /zen HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
            ]),
            reason: "not_tls",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "a foreign SNI placed after 64 KiB of padding extensions",
            args: hello(&["--sni", "evil.example", "--pad", "70000", "--wait-ms", "3000"]),
            reason: "foreign_sni",
            alternatives: &["malformed_hello", "no_sni"],
            sni: None,
        },
        HelloCase {
            what: "two trailing dots",
            args: hello(&["--sni", "api.github.com.."]),
            reason: "foreign_sni",
            // Not a valid DNS name: TLS stacks read it as no name.
            alternatives: &["malformed_hello", "no_sni"],
            sni: None,
        },
        HelloCase {
            what: "HTTP/2 with prior knowledge (the connection preface) on 443",
            args: s(&["talk", &at, "--send", r"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
            reason: "not_tls",
            alternatives: &[],
            sni: None,
        },
        HelloCase {
            what: "an SSLv2-format ClientHello",
            args: hello(&[
                "--raw",
                r"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10\x07\x00\xc0\x05\x00\x80\x03\x00\x80\x01\x00\x80\x08\x00\x80\x06\x00\x40\x04\x00\x80\x02\x00\x80\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0",
            ]),
            reason: "not_tls",
            alternatives: &["malformed_hello"],
            sni: None,
        },
    ];
    let mut problems = Vec::new();
    for case in &cases {
        let before = a.contacts().len();
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let r = m.probe(&args);
        let mut trouble = Vec::new();
        if r["handshake"] == "ok" || r["answer"] == "handshake" || r["status"].as_u64().is_some_and(|s| s > 0)
        {
            trouble.push(format!("the client got a TLS server's answer: {r}"));
        }
        if r["received"].as_str().is_some_and(|t| !t.is_empty()) {
            trouble.push(format!("the client got bytes back: {r}"));
        }
        std::thread::sleep(Duration::from_millis(200));
        let reached: Vec<_> = a.contacts().into_iter().skip(before).collect();
        if !reached.is_empty() {
            trouble.push(format!("the edge was dialled: {reached:?}"));
        }
        let reasons: Vec<&str> = std::iter::once(case.reason)
            .chain(case.alternatives.iter().copied())
            .collect();
        // The first reason is the expected one; any of the alternatives is as right.
        let mut misses = Vec::new();
        for reason in &reasons {
            let mut want = json!({"layer": "gateway", "reason": reason, "orig_dst": at, "tgid": r["pid"]});
            if let Some(sni) = case.sni.filter(|_| reason == &case.reason) {
                want["sni"] = sni.into();
            }
            let wait = Duration::from_secs(if reason == &case.reason { 3 } else { 1 });
            match m.gw.try_refusal(&want, wait) {
                Ok(_) => {
                    misses.clear();
                    break;
                }
                Err(e) => misses.push(e),
            }
        }
        if let Some(e) = misses.into_iter().next() {
            trouble.push(e);
        }
        if !trouble.is_empty() {
            problems.push(format!("{}:\n    {}", case.what, trouble.join("\n    ")));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} hostile first flights were not refused as they must be:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );

    // An intercepted name offering ECH (Chromium sends GREASE ECH on every connection) is
    // terminated: ghgate is the TLS server, so whatever the ECH part hides never reaches anyone.
    let before = a.contacts().len();
    let args = hello(&["--sni", "api.github.com", "--ech"]);
    let r = m.probe(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r["answer"], "handshake", "terminated by the gateway: {r}");
    std::thread::sleep(Duration::from_millis(200));
    for c in a.contacts().into_iter().skip(before) {
        assert_eq!(c.pid, m.gw.pid(), "only the gateway dials the edge: {c:?}");
    }
}

/// Names are matched as DNS matches them, and a hello that arrives in pieces is read whole: an
/// upper-case name, a trailing dot, a hello in 1-byte segments, a slow one and one fragmented
/// over TLS records are all terminated (never refused, never relayed around the gateway).
#[test]
fn tls_names_match_as_dns_does_and_hellos_in_pieces_are_read_whole() {
    if !privileged() {
        return;
    }
    let m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let at = m.node(0).at(443);
    let r = m.fetch(
        at,
        "API.GITHUB.COM",
        "/mediation/upper",
        &["--host", "api.github.com"],
    );
    assert_eq!(r["status"], 200, "upper case: {r}");
    let r = m.fetch(
        at,
        "api.github.com",
        "/mediation/dribbled",
        &["--dribble-ms", "2"],
    );
    assert_eq!(r["status"], 200, "a hello in 1-byte segments: {r}");
    let hellos: &[(&str, &[&str])] = &[
        ("a trailing dot, in upper case", &["--sni", "API.GITHUB.COM."]),
        ("a trailing dot", &["--sni", "api.github.com."]),
        (
            "a hello fragmented over 32-byte records",
            &["--sni", "api.github.com", "--fragment", "32"],
        ),
        (
            "the record header, 3 s of silence, then the rest",
            &["--sni", "api.github.com", "--stall-ms", "3000"],
        ),
    ];
    let at_text = at.to_string();
    for (what, extra) in hellos {
        let mut args = vec!["hello", at_text.as_str(), "--wait-ms", "2000"];
        args.extend_from_slice(extra);
        let r = m.probe(&args);
        // The gateway answers the hello itself (its ServerHello) only when it terminates.
        assert_eq!(r["answer"], "handshake", "{what}: {r}");
        assert_eq!(r["handshake_type"], 2, "{what}: a ServerHello: {r}");
    }
    assert!(m.gw.refusal_logs().is_empty(), "{:?}", m.gw.refusal_logs());
    let crafted: Vec<_> = m
        .node(0)
        .contacts()
        .into_iter()
        .filter(|c| c.sni.as_deref().is_some_and(|s| s.ends_with('.')))
        .collect();
    assert!(
        crafted.is_empty(),
        "a crafted hello reached the edge as sent: {crafted:?}"
    );
    m.assert_mediated();
}

/// A hello that never finishes holds nothing open for long and forwards nothing.
#[test]
fn a_hello_that_never_finishes_is_closed_and_nothing_is_forwarded() {
    if !privileged() {
        return;
    }
    let m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let at = m.node(0).at(443).to_string();
    let started = Instant::now();
    let r = m.probe(&[
        "hello",
        &at,
        "--sni",
        "api.github.com",
        "--stall-ms",
        "20000",
        "--wait-ms",
        "5000",
    ]);
    assert_ne!(r["answer"], "handshake", "{r}");
    assert!(started.elapsed() < Duration::from_secs(30), "{r}");
    assert!(m.node(0).contacts().is_empty(), "{:?}", m.node(0).contacts());
}

/// A name on `[tls] passthrough` is relayed untouched (the client sees the edge's own
/// certificate) and recorded; the record exists while the upstream is still being dialled, so
/// a relayed connection is never unrecorded.
#[test]
fn a_passthrough_name_is_relayed_untouched_and_recorded_before_the_dial() {
    if !privileged() {
        return;
    }
    // A second site node holds the passthrough name's connections silent before answering
    // (the gateway's fronting probes, for other names, are answered at once).
    const HOLDER: usize = 2;
    let hold = Duration::from_secs(5);
    let edge = Edge::builder()
        .nodes(3)
        .serving(SITE, &[PASSTHROUGH])
        .serving(HOLDER, &[PASSTHROUGH])
        .holding(HOLDER, PASSTHROUGH, hold)
        .start();
    let (site_ip, holder_ip) = (edge.node(SITE).ip, edge.node(HOLDER).ip);
    let m = Mediated::start(edge, None, |spec| {
        spec.tls_passthrough = vec![PASSTHROUGH.into()];
        resolve_pinned(spec, &[site_ip, holder_ip]);
    });
    let a = m.node(SITE).at(443);
    let edge_ca = m.edge.ca_file.display().to_string();
    let r = m.probe(&[
        "fetch",
        &a.to_string(),
        PASSTHROUGH,
        "--ca",
        &edge_ca,
        "--path",
        "/pinned",
    ]);
    assert_eq!(
        r["handshake"], "ok",
        "the edge's own certificate reached the client: {r}"
    );
    assert_eq!(r["status"], 200, "{r}");
    let contacts = relayed_to(m.node(SITE));
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    m.assert_mediated();

    // Now an upstream that accepts and then holds the connection silent: the record must be
    // there while it does.
    let held_at = m.node(HOLDER).at(443).to_string();
    let (client, results) =
        m.gw.probe_in_background(&["hello", &held_at, "--sni", PASSTHROUGH, "--wait-ms", "8000"]);
    let contact = eventually(
        "the gateway to dial the held upstream",
        Duration::from_secs(10),
        || relayed_to(m.node(HOLDER)).first().cloned(),
    );
    let dialled = Instant::now();
    let shown = eventually(
        "the passthrough connection to be recorded while its upstream is still held",
        hold - Duration::from_millis(500),
        || {
            let text = m.recorded();
            text.contains(&held_at).then_some(text)
        },
    );
    assert!(
        dialled.elapsed() < hold,
        "recorded only after the hold ended:\n{shown}"
    );
    assert!(shown.contains(PASSTHROUGH), "{shown}");
    let mut client = client;
    client.wait().unwrap();
    let r = one(results.join().unwrap());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(contact.pid, m.gw.pid(), "dialled by the gateway: {contact:?}");
}

/// While the store cannot write, a passthrough connection is refused before its upstream is
/// dialled (it could not be recorded), and relayed again once space returns.
#[test]
fn a_passthrough_name_is_refused_while_the_store_cannot_write() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(tmp.path(), "8m");
    let record_dir = disk.dir.join("record");
    let edge = pinned_site_edge();
    let site_ip = edge.node(SITE).ip;
    let m = Mediated::start(edge, None, |spec| {
        spec.tls_passthrough = vec![PASSTHROUGH.into()];
        spec.extra_toml = format!("[record]\ndir = \"{}\"\n", record_dir.display());
        resolve_pinned(spec, &[site_ip]);
    });
    let at = m.node(SITE).at(443).to_string();
    let attempt = || {
        let before = relayed_to(m.node(SITE)).len();
        let r = m.probe(&["hello", &at, "--sni", PASSTHROUGH, "--wait-ms", "500"]);
        std::thread::sleep(Duration::from_millis(100));
        (r, relayed_to(m.node(SITE)).len() > before)
    };
    let (r, dialled) = attempt();
    assert!(
        dialled && r["answer"] == "handshake",
        "relayed while the store writes: {r}"
    );

    let filler = disk.fill();
    // The segment's last, partly used page may take a record or two: try until one is refused,
    // checking that each attempt was either relayed or refused without a dial.
    let mut refused = None;
    for _ in 0..30 {
        let (r, dialled) = attempt();
        if !dialled {
            assert_ne!(
                r["answer"], "handshake",
                "an upstream answered without a dial?: {r}"
            );
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a passthrough connection is refused once the store's disk is full");
    let logs =
        m.gw.wait_log("the refusal's log line", Duration::from_secs(10), |l| {
            l.iter().any(|l| {
                l["message"] == "connection refused"
                    && l["reason"] == "store_unavailable"
                    && l["tgid"] == r["pid"]
            })
        });
    let line = logs
        .iter()
        .find(|l| l["message"] == "connection refused" && l["reason"] == "store_unavailable")
        .unwrap();
    assert_eq!(line["sni"], PASSTHROUGH, "{line}");
    assert_eq!(line["layer"], "gateway", "{line}");

    std::fs::remove_file(&filler).unwrap();
    eventually(
        "passthrough to resume once space returns",
        Duration::from_secs(10),
        || {
            let (r, dialled) = attempt();
            (dialled && r["answer"] == "handshake").then_some(())
        },
    );
    m.assert_mediated();
}

/// A process that dials the gateway's listener itself (v4, v6, v4-mapped; plain HTTP or a
/// ClientHello for an intercepted name) has no original destination: it is closed and nothing
/// is forwarded anywhere.
#[test]
fn dialling_the_gateways_listener_directly_forwards_nothing() {
    if !privileged() {
        return;
    }
    let m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let l = m.gw.listen_port;
    let request = r"GET /zen HTTP/1.1\r\nHost: api.github.com\r\n\r\n";
    let v4 = format!("127.0.0.1:{l}");
    let v6 = format!("[::1]:{l}");
    let v4m = format!("[::ffff:127.0.0.1]:{l}");
    for target in [&v4, &v6, &v4m] {
        let r = m.probe(&["talk", target, "--send", request]);
        assert_eq!(r["received"], "", "{target}: {r}");
        assert_ne!(r["ended"], "silence", "closed, not left hanging: {r}");
        let r = m.probe(&["hello", target, "--sni", "api.github.com"]);
        assert_ne!(r["answer"], "handshake", "{target}: {r}");
    }
    let r = one(m.gw.probe_as(
        AS_NOBODY,
        &[
            "fetch",
            &v4,
            "api.github.com",
            "--ca",
            &m.ca.display().to_string(),
        ],
    ));
    assert_ne!(r["handshake"], "ok", "{r}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.edge.contacts().is_empty(), "{:?}", m.edge.contacts());
    assert!(m.gw.relayed().is_empty(), "{:?}", m.gw.relayed());
}

/// The impostor: while the gateway is stopped, a process binds its port to receive what
/// processes meant for GitHub. Redirected connects are refused instead (EPERM: the kernel finds
/// a listener without the gateway's mark), the impostor accepts nothing, and the refusal is
/// recorded once the gateway is back.
#[test]
fn an_impostor_on_the_gateways_port_receives_nothing_while_the_gateway_is_down() {
    if !privileged() {
        return;
    }
    let mut m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let port = format!("127.0.0.1:{}", m.gw.listen_port);
    let r = one(m
        .gw
        .probe_as(AS_NOBODY, &["bind", &port, "--reuseport", "--hold-ms", "0"]));
    assert_eq!(
        r["errno"],
        libc::EADDRINUSE,
        "the port is not shared while the gateway holds it: {r}"
    );

    m.gw.terminate();
    let mut impostor =
        m.gw.exec("setpriv")
            .args(AS_NOBODY)
            .arg(bin("ghgate-probe"))
            .args(["bind", &port, "--hold-ms", "4000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut lines = lines_of(&mut impostor);
    let bound: Value = serde_json::from_str(&lines.next().expect("the impostor's first line")).unwrap();
    assert_eq!(
        bound["bound"], true,
        "an unprivileged process can bind the free port: {bound}"
    );

    let a = m.node(0).at(443).to_string();
    let r = m.probe(&["talk", &a, "--send", "meant for GitHub"]);
    assert_eq!(
        (&r["ok"], &r["errno"]),
        (&json!(false), &json!(libc::EPERM)),
        "refused, not handed to the impostor: {r}"
    );
    let tls = m.fetch(m.node(0).at(443), "api.github.com", "/mediation/impostor", &[]);
    assert_eq!(tls["errno"], libc::EPERM, "{tls}");
    assert!(impostor.wait().unwrap().success());
    let got: Value = serde_json::from_str(&lines.next().expect("the impostor's report")).unwrap();
    assert_eq!(got["accepted"], 0, "the impostor received connections: {got}");

    // A root impostor (the gateway's own uid) calling itself ghgate is no more the gateway
    // than nobody is.
    let (mut impostor, got) =
        m.gw.probe_in_background(&["bind", &port, "--hold-ms", "3000", "--comm", "ghgate"]);
    std::thread::sleep(Duration::from_millis(500));
    let root_try = m.probe(&["talk", &a, "--send", "meant for GitHub"]);
    assert_eq!(root_try["errno"], libc::EPERM, "{root_try}");
    assert!(impostor.wait().unwrap().success());
    let got = got.join().unwrap();
    assert_eq!(got[0]["bound"], true, "{got:?}");
    assert_eq!(
        got[1]["accepted"], 0,
        "the root impostor received connections: {got:?}"
    );

    m.gw.spawn();
    m.gw.expect_refusal(
        &json!({"layer": "kernel", "reason": "foreign_listener", "orig_dst": a, "tgid": r["pid"]}),
    );
    m.gw.expect_refusal(
        &json!({"layer": "kernel", "reason": "foreign_listener", "orig_dst": a, "tgid": root_try["pid"]}),
    );
    assert!(m.edge.contacts().is_empty());
}

/// In `on_gateway_down = "bypass"` mode the kernel lets connections through when the gateway's
/// listener is gone; an impostor listening on its port must not count as the gateway.
#[test]
fn in_bypass_mode_an_impostor_listener_still_receives_nothing() {
    if !privileged() {
        return;
    }
    let mut m = Mediated::start(Edge::builder().nodes(1).start(), None, |spec| {
        spec.on_gateway_down = "bypass"
    });
    m.gw.kill9();
    let port = format!("127.0.0.1:{}", m.gw.listen_port);
    let mut impostor =
        m.gw.exec("setpriv")
            .args(AS_NOBODY)
            .arg(bin("ghgate-probe"))
            .args(["bind", &port, "--hold-ms", "3000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut lines = lines_of(&mut impostor);
    let bound: Value = serde_json::from_str(&lines.next().unwrap()).unwrap();
    assert_eq!(bound["bound"], true, "{bound}");
    let r = m.probe(&[
        "talk",
        &m.node(0).at(443).to_string(),
        "--send",
        "meant for GitHub",
    ]);
    assert!(impostor.wait().unwrap().success());
    let got: Value = serde_json::from_str(&lines.next().unwrap()).unwrap();
    assert_eq!(
        got["accepted"], 0,
        "the impostor received a connection meant for GitHub ({r}): {got}"
    );
}

/// The kernel keeps refusing while the gateway is stopped, and those refusals are recorded when
/// it comes back.
#[test]
fn kernel_refusals_while_the_gateway_is_down_are_recorded_when_it_returns() {
    if !privileged() {
        return;
    }
    let mut m = Mediated::with_ranges(Edge::builder().nodes(1).start(), GithubSpec::ranges);
    m.gw.terminate();
    let ssh = m.node(0).at(22);
    let tcp = m.probe(&["talk", &ssh.to_string()]);
    assert_eq!(tcp["errno"], libc::EPERM, "{tcp}");
    let udp = m.probe(&["udp-send", &m.node(0).at(443).to_string()]);
    assert_eq!(udp["errno"], libc::EPERM, "{udp}");
    m.gw.spawn();
    m.assert_refused_by_kernel(&tcp, "port_not_allowed", Some(ssh));
    m.assert_refused_by_kernel(&udp, "not_tcp", Some(m.node(0).at(443)));
    assert!(m.edge.contacts().is_empty());
}

/// How many prefixes `ghgate status` says are in force (a count or a list).
fn prefixes(status: &Value) -> Option<u64> {
    let p = &status["github_ranges"]["prefixes"];
    p.as_u64().or_else(|| p.as_array().map(|a| a.len() as u64))
}

/// A refresh from the meta URL adds a newly listed address without a restart; an answer that is
/// garbage, an error status, empty lists or an invalid prefix leaves the last good set in force.
#[test]
fn a_refresh_of_githubs_ranges_takes_effect_and_a_bad_one_changes_nothing() {
    if !privileged() {
        return;
    }
    let edge = Edge::builder().nodes(2).start();
    let meta = MetaServer::start(&edge.ca, MetaAnswer::Status(500));
    let (a, b) = (edge.node(0).cidr(), edge.node(1).cidr());
    let m = Mediated::start(
        edge,
        Some(GithubSpec::ranges(std::slice::from_ref(&a)).refreshed_from(&meta.url, 1)),
        |_| {},
    );
    let status = m.gw.status();
    assert_eq!(status["github_ranges"]["source"], "snapshot", "{status}");
    assert_eq!(prefixes(&status), Some(1), "{status}");
    let r = m.probe(&["talk", &m.node(0).at(22).to_string()]);
    assert_eq!(r["errno"], libc::EPERM, "A is GitHub's: {r}");
    let r = m.probe(&["talk", &m.node(1).at(22).to_string()]);
    assert_eq!(r["ok"], true, "B is not GitHub's yet: {r}");
    eventually("a refresh attempt", Duration::from_secs(10), || {
        (meta.requests() >= 1).then_some(())
    });
    assert_eq!(
        m.gw.status()["github_ranges"]["source"],
        "snapshot",
        "a 500 changed nothing"
    );

    let pid = m.gw.pid();
    meta.set(MetaAnswer::Json(meta_document(&[
        ("api", vec![a.clone()]),
        ("git", vec![b.clone()]),
    ])));
    let status = eventually("the refreshed set", Duration::from_secs(15), || {
        let s = m.gw.status();
        (s["github_ranges"]["source"] == "refreshed" && prefixes(&s) == Some(2)).then_some(s)
    });
    assert!(!status["github_ranges"]["fetched_at"].is_null(), "{status}");
    let r = m.probe(&["talk", &m.node(1).at(22).to_string()]);
    assert_eq!(r["errno"], libc::EPERM, "B is GitHub's now: {r}");
    let r = m.fetch(m.node(1).at(443), "api.github.com", "/mediation/refreshed", &[]);
    assert_eq!(r["status"], 200, "B's TLS port goes through the gateway: {r}");
    assert_eq!(m.gw.pid(), pid, "no restart");

    let bad = [
        ("garbage", MetaAnswer::Garbage),
        ("a 500", MetaAnswer::Status(500)),
        ("a 404", MetaAnswer::Status(404)),
        ("empty lists", MetaAnswer::Json(meta_document(&[]))),
        ("an empty object", MetaAnswer::Json("{}".into())),
        (
            "an invalid prefix",
            MetaAnswer::Json(meta_document(&[("api", vec!["300.1.2.3/33".into()])])),
        ),
        (
            "lists of the wrong type",
            MetaAnswer::Json(r#"{"api": "140.82.112.0/20", "git": 7}"#.into()),
        ),
    ];
    for (what, answer) in bad {
        let before = meta.requests();
        meta.set(answer);
        eventually(
            &format!("two refreshes answered with {what}"),
            Duration::from_secs(15),
            || (meta.requests() >= before + 2).then_some(()),
        );
        let r = m.probe(&["talk", &m.node(1).at(22).to_string()]);
        assert_eq!(r["errno"], libc::EPERM, "after {what}, B is still GitHub's: {r}");
        let r = m.probe(&["talk", &m.node(0).at(22).to_string()]);
        assert_eq!(r["errno"], libc::EPERM, "after {what}, A is still GitHub's: {r}");
        assert_eq!(prefixes(&m.gw.status()), Some(2), "after {what}");
    }
    // Only B's first, direct contact (before it was GitHub's) went around the gateway.
    let around = m.edge.contacts_not_from(m.gw.pid().unwrap());
    assert_eq!(around.len(), 1, "{around:?}");
    assert_eq!(around[0].addr, m.node(1).at(22));
}

/// A meta answer from a server the gateway cannot verify (a forged list that would drop GitHub's
/// real ranges) is never believed.
#[test]
fn a_meta_answer_from_an_unverified_server_is_never_believed() {
    if !privileged() {
        return;
    }
    let edge = Edge::builder().nodes(2).start();
    let forger = TestCa::new();
    let forged = MetaServer::start(
        &forger,
        MetaAnswer::Json(meta_document(&[("api", vec![edge.node(1).cidr()])])),
    );
    let a = edge.node(0).cidr();
    let m = Mediated::start(
        edge,
        Some(GithubSpec::ranges(&[a]).refreshed_from(&forged.url, 1)),
        |_| {},
    );
    eventually("two refresh attempts", Duration::from_secs(15), || {
        (forged.connections() >= 2).then_some(())
    });
    assert_eq!(
        forged.requests(),
        0,
        "the gateway sent a request over unverified TLS"
    );
    let r = m.probe(&["talk", &m.node(0).at(22).to_string()]);
    assert_eq!(r["errno"], libc::EPERM, "A is still GitHub's: {r}");
    assert_eq!(m.gw.status()["github_ranges"]["source"], "snapshot");
}

/// Only the lists named in `meta_lists` are mediated (by default api, git, web and copilot):
/// an address GitHub lists only for Actions runners is left alone.
#[test]
fn only_the_configured_meta_lists_are_mediated() {
    if !privileged() {
        return;
    }
    let edge = Edge::builder().nodes(2).start();
    let doc = meta_document(&[
        ("copilot", vec![edge.node(0).cidr()]),
        ("actions", vec![edge.node(1).cidr()]),
    ]);
    let m = Mediated::start(edge, Some(GithubSpec::snapshot(doc)), |_| {});
    let r = m.probe(&["talk", &m.node(0).at(22).to_string()]);
    assert_eq!(r["errno"], libc::EPERM, "copilot's addresses are GitHub's: {r}");
    let r = m.probe(&["talk", &m.node(1).at(22).to_string(), "--send", r"SSH-2.0-x\r\n"]);
    assert_eq!(
        r["received"], SSH_BANNER,
        "actions' addresses are not mediated: {r}"
    );
}

/// Hundreds of connections at once — held open without a hello on the TLS port, refused on
/// others — exhaust nothing that lets a connection around the gateway, and it serves again.
#[test]
fn a_flood_of_connections_lets_nothing_around_the_gateway() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(2).start(), GithubSpec::ranges);
    let a = m.node(0).at(443).to_string();
    let (mut held, results) =
        m.gw.probe_in_background(&["flood", &a, "--count", "600", "--hold-ms", "3000"]);
    let refused = m.probe(&["flood", &m.node(1).at(22).to_string(), "--count", "300"]);
    assert_eq!(
        refused["errnos"],
        json!({libc::EPERM.to_string(): 300}),
        "{refused}"
    );
    let r = m.probe(&["talk", &m.node(1).at(80).to_string()]);
    assert_eq!(r["errno"], libc::EPERM, "during the flood: {r}");
    // A flood of refusals cannot hide the one that matters: every one is counted and recorded
    // (identical ones merged into records with a count, so a flood cannot flood the store).
    let noise = m.probe(&["flood", &m.node(1).at(22).to_string(), "--count", "5000"]);
    assert_eq!(noise["errnos"], json!({libc::EPERM.to_string(): 5000}), "{noise}");
    let needle = m.probe(&["talk", &m.node(1).at(9418).to_string()]);
    m.assert_refused_by_kernel(&needle, "port_not_allowed", Some(m.node(1).at(9418)));
    let recorded = eventually("the flood's refusals recorded", Duration::from_secs(30), || {
        let records: Vec<Value> =
            m.gw.refusals()
                .into_iter()
                .filter(|r| r["tgid"] == noise["pid"])
                .collect();
        let n: u64 = records.iter().map(|r| r["count"].as_u64().unwrap_or(0)).sum();
        (n >= 5000).then_some((n, records.len()))
    });
    assert_eq!(recorded.0, 5000, "every refusal counted");
    assert!(
        recorded.1 < 500,
        "merged, not one record each: {} records",
        recorded.1
    );
    assert!(held.wait().unwrap().success());
    let flood = one(results.join().unwrap());
    assert_eq!(
        flood["connected"], 600,
        "every held connection went to the gateway: {flood}"
    );
    let r = m.fetch(m.node(0).at(443), "api.github.com", "/mediation/after-flood", &[]);
    assert_eq!(r["status"], 200, "the gateway serves after the flood: {r}");
    m.assert_mediated();
}

/// A raw IP socket needs no UDP socket and so meets no UDP hook: a process with CAP_NET_RAW
/// (root, or any container's default set) can still hand-build UDP to GitHub's QUIC port.
#[test]
fn raw_sockets_cannot_carry_datagrams_to_githubs_addresses() {
    if !privileged() {
        return;
    }
    let m = Mediated::with_ranges(Edge::builder().nodes(1).start(), GithubSpec::ranges);
    let at = m.node(0).at(443).to_string();
    let net_raw = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+net_raw",
        "--ambient-caps=+net_raw",
    ];
    // The same move outside interception gets through: the capability is really there, so an
    // EPERM inside is the gateway's doing.
    let outside = std::process::Command::new("setpriv")
        .args(net_raw)
        .arg(bin("ghgate-probe"))
        .args(["raw-udp", &at, "--send", "raw-quic-from-outside"])
        .output()
        .unwrap();
    let outside: Value = serde_json::from_slice(&outside.stdout).expect("probe json");
    assert_eq!(
        outside["ok"], true,
        "nobody with CAP_NET_RAW sends raw datagrams: {outside}"
    );
    eventually("the outside datagram", Duration::from_secs(5), || {
        (m.node(0).udp.received().len() == 1).then_some(())
    });
    let with_cap = one(m
        .gw
        .probe_as(&net_raw, &["raw-udp", &at, "--send", "raw-quic-from-nobody"]));
    let as_root = m.probe(&["raw-udp", &at, "--send", "raw-quic-from-root"]);
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<_> = m
        .node(0)
        .udp
        .received()
        .into_iter()
        .filter(|(_, d)| !d.ends_with(b"outside"))
        .collect();
    assert!(
        got.is_empty(),
        "hand-built UDP reached GitHub's QUIC port (nobody+CAP_NET_RAW: {with_cap}; root: {as_root}): {got:?}"
    );
    for r in [&with_cap, &as_root] {
        assert_eq!(r["errno"], libc::EPERM, "{r}");
    }
}

/// The kernel excludes the gateway's own connections by its process id. Once the gateway is
/// dead, a process that takes its pid (root can ask clone3 for it; anyone can fork until pids
/// wrap) must not inherit that exclusion: its connections are refused like everyone's.
#[test]
fn a_process_that_takes_the_dead_gateways_pid_is_not_the_gateway() {
    if !privileged() {
        return;
    }
    let mut m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let pid = m.gw.pid().unwrap().to_string();
    m.gw.kill9();
    let a = m.node(0).at(443).to_string();
    let r = m.probe(&["talk", &a, "--send", "meant for GitHub", "--as-pid", &pid]);
    assert_ne!(
        r["stage"], "clone3",
        "pid {pid} was taken by another process first; run again: {r}"
    );
    assert_eq!(r["pid"].to_string(), pid, "{r}");
    assert_eq!(
        (&r["ok"], &r["errno"]),
        (&json!(false), &json!(libc::ECONNREFUSED)),
        "the dead gateway's pid went around the gateway: {r}"
    );
    assert!(m.edge.contacts().is_empty(), "{:?}", m.edge.contacts());
}

/// The gateway is told apart by what the kernel knows, not by name: a process calling itself
/// `ghgate` is intercepted like any other.
#[test]
fn a_process_named_ghgate_is_still_intercepted() {
    if !privileged() {
        return;
    }
    let m = Mediated::start(Edge::builder().nodes(1).start(), None, |_| {});
    let r = m.fetch(
        m.node(0).at(443),
        "api.github.com",
        "/mediation/named",
        &["--comm", "ghgate"],
    );
    assert_eq!(r["status"], 200, "{r}");
    m.assert_mediated();
    let line =
        m.gw.wait_log("the exchange's log line", Duration::from_secs(10), |l| {
            l.iter().any(|l| l["tgid"] == r["pid"])
        });
    let line = line.iter().find(|l| l["tgid"] == r["pid"]).unwrap();
    assert_eq!(
        line["comm"], "ghgate",
        "attributed to the caller by its own facts: {line}"
    );
}

/// Domain fronting through a passthrough name: an edge serves many names on one address and
/// routes by the `Host` inside the TLS, so a client that sends a passthrough name and then asks
/// for `Host: api.github.com` would talk to the API unrecorded and unmasked. Before a
/// passthrough connection is dialled, the gateway checks that the destination is an address of
/// the passthrough name (as the gateway resolves it) and that no intercepted name is served
/// there (it handshakes for each, verifying the certificate); either failing refuses it.
#[test]
fn a_passthrough_name_cannot_front_for_the_api() {
    if !privileged() {
        return;
    }
    // The site's name resolves to its own node; GitHub's node serves the API.
    let edge = pinned_site_edge();
    let site_ip = edge.node(SITE).ip;
    let m = Mediated::start(edge, None, |spec| {
        spec.tls_passthrough = vec![PASSTHROUGH.into()];
        resolve_pinned(spec, &[site_ip]);
    });
    let edge_ca = m.edge.ca_file.display().to_string();
    let front = |at: SocketAddr, host: &str| m.fetch_passthrough(at, host);
    // 1. The passthrough name taken to the API's address.
    let r = front(m.node(0).at(443), "api.github.com");
    assert_ne!(
        r["status"], 200,
        "the API answered through a passthrough connection: {r}"
    );
    assert_ne!(r["handshake"], "ok", "{r}");
    let refused = m.gw.wait_log("the refusal", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["reason"] == "passthrough_elsewhere" && l["tgid"] == r["pid"])
    });
    let line = refused
        .iter()
        .find(|l| l["reason"] == "passthrough_elsewhere")
        .unwrap();
    assert_eq!(line["sni"], PASSTHROUGH, "{line}");
    assert!(
        line["detail"].as_str().unwrap().contains(&site_ip.to_string()),
        "the detail says where the name lives: {line}"
    );
    // The same with curl, as a hostile job would write it: the site's name resolved to the
    // API's address, the API's name in the Host header.
    let out =
        m.gw.exec("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &edge_ca,
            ])
            .args(["--resolve", &format!("{PASSTHROUGH}:443:{}", m.node(0).ip)])
            .args(["-H", "Host: api.github.com"])
            .arg(format!("https://{PASSTHROUGH}/user"))
            .output()
            .unwrap();
    assert!(
        !out.status.success(),
        "curl reached the API through a passthrough name: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("handshake failure"),
        "curl names the TLS alert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(relayed_to(m.node(0)).is_empty(), "{:?}", m.node(0).contacts());

    // 2. At its own address the site is relayed untouched (its own certificate), and the
    // gateway's probes asked it only for intercepted names.
    let r = front(m.node(SITE).at(443), PASSTHROUGH);
    assert_eq!(r["handshake"], "ok", "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(relayed_to(m.node(SITE)).len(), 1);
    let probes: Vec<_> = m
        .node(SITE)
        .contacts()
        .into_iter()
        .filter(|c| c.sni.as_deref() != Some(PASSTHROUGH))
        .collect();
    assert!(
        probes.iter().any(|c| c.sni.as_deref() == Some("api.github.com")),
        "the site was asked whether it serves the API: {probes:?}"
    );
    assert!(probes.iter().all(|c| c.pid == m.gw.pid()), "{probes:?}");
    m.assert_mediated();
    let recorded = m.recorded();
    assert!(
        recorded.contains("passthrough_elsewhere"),
        "the refusal is recorded:\n{recorded}"
    );
}

/// The same attack when the passthrough name really lives on an address that also serves the
/// API (the edge hosts both): the name's own address is no defence, the probe is.
#[test]
fn a_passthrough_name_on_the_apis_edge_is_refused() {
    if !privileged() {
        return;
    }
    let edge = Edge::builder().nodes(1).start();
    let api_ip = edge.node(0).ip;
    let metrics = ghgate_e2e::free_port();
    let m = Mediated::start(edge, None, |spec| {
        spec.tls_passthrough = vec![PASSTHROUGH.into()];
        resolve_pinned(spec, &[api_ip]);
        spec.extra_toml = format!("[telemetry]\nmetrics = \"127.0.0.1:{metrics}\"\n");
    });
    for attempt in 0..2 {
        let r = m.fetch_passthrough(m.node(0).at(443), "api.github.com");
        assert_ne!(r["status"], 200, "attempt {attempt}: the API answered: {r}");
        let logs = m.gw.wait_log("the refusal", Duration::from_secs(10), |l| {
            l.iter()
                .any(|l| l["reason"] == "passthrough_fronts" && l["tgid"] == r["pid"])
        });
        let line = logs
            .iter()
            .find(|l| l["reason"] == "passthrough_fronts" && l["tgid"] == r["pid"])
            .unwrap();
        assert!(
            line["detail"].as_str().unwrap().contains("github.com"),
            "the detail names the intercepted name served there: {line}"
        );
    }
    assert!(relayed_to(m.node(0)).is_empty(), "{:?}", m.node(0).contacts());
    let recorded = m.recorded();
    assert!(
        recorded.contains("passthrough_fronts"),
        "the refusal is recorded:\n{recorded}"
    );
    // One probe for both connections, counted; both refusals counted.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{metrics}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ghgate_passthrough_probes_total{verdict=\"serves\"} 1",
        "ghgate_passthrough_probes_total{verdict=\"clean\"} 0",
        "ghgate_connections_refused_total{layer=\"gateway\",reason=\"passthrough_fronts\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
}

/// A hostile process spends the passthrough probe budget: its passthrough name (under a
/// wildcard whose DNS it controls, here pinned) resolves to ever-new addresses, and each new
/// address costs the gateway handshakes to check it. One cgroup may have at most
/// `PROBES_PER_CGROUP` of them checked a minute; past that its connections are refused as not
/// checked, and a process in another cgroup (a nested one, as a container's would be) still
/// has its own share.
#[test]
fn one_cgroup_cannot_spend_the_passthrough_probes_of_another() {
    if !privileged() {
        return;
    }
    const SHARE: usize = 10;
    const MINE: usize = 12;
    const OTHERS: usize = 2;
    let mut builder = Edge::builder().nodes(1 + MINE + OTHERS);
    for i in 1..=MINE + OTHERS {
        builder = builder.serving(i, &[PASSTHROUGH]);
    }
    let edge = builder.start();
    let sites: Vec<Ipv4Addr> = (1..=MINE + OTHERS).map(|i| edge.node(i).ip).collect();
    let m = Mediated::start(edge, None, |spec| {
        spec.tls_passthrough = vec![PASSTHROUGH.into()];
        resolve_pinned(spec, &sites);
    });
    // The hostile process's cgroup: one new address after another, as fast as it can.
    let started = Instant::now();
    let mine: Vec<Value> = (1..=MINE)
        .map(|i| m.fetch_passthrough(m.node(i).at(443), PASSTHROUGH))
        .collect();
    let elapsed = started.elapsed();
    let relayed: Vec<usize> = (1..=MINE)
        .filter(|&i| !relayed_to(m.node(i)).is_empty())
        .collect();
    let answered = mine.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(
        answered,
        relayed.len(),
        "answered exactly where relayed: {mine:?}"
    );
    // The share refills at SHARE a minute: what the attempts' own duration lets back in.
    let refilled = (elapsed.as_secs_f64() * SHARE as f64 / 60.0).floor() as usize;
    assert!(
        relayed.len() >= SHARE && relayed.len() <= SHARE + refilled,
        "{} of {MINE} new addresses relayed in {elapsed:?}, share {SHARE} (+{refilled} refilled): {mine:?}",
        relayed.len()
    );
    assert!(relayed.len() < MINE, "every new address was relayed: {mine:?}");
    let refused: Vec<&Value> = mine.iter().filter(|r| r["status"] != 200).collect();
    for r in &refused {
        assert_ne!(
            r["handshake"], "ok",
            "a refused connection completed its handshake: {r}"
        );
    }
    let logs = m.gw.wait_log("the refusals", Duration::from_secs(10), |l| {
        refused.iter().all(|r| {
            l.iter()
                .any(|l| l["reason"] == "passthrough_fronts" && l["tgid"] == r["pid"])
        })
    });
    for r in &refused {
        let line = logs
            .iter()
            .find(|l| l["reason"] == "passthrough_fronts" && l["tgid"] == r["pid"])
            .unwrap();
        assert!(
            line["detail"].as_str().unwrap().contains(&format!(
                "this cgroup asked for more than {SHARE} new passthrough addresses"
            )),
            "the refusal says whose budget ran out: {line}"
        );
    }
    // Another cgroup's process, right after: its own share is whole.
    let nested = m.cg.child("other-job");
    for i in MINE + 1..=MINE + OTHERS {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&nested)
            .arg(bin("ghgate-probe"))
            .args(m.passthrough_fetch_args(m.node(i).at(443), PASSTHROUGH))
            .output()
            .unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).expect("probe json");
        assert_eq!(r["status"], 200, "the other cgroup was refused: {r}");
        assert_eq!(relayed_to(m.node(i)).len(), 1, "{:?}", m.node(i).contacts());
    }
    m.assert_mediated();
    let recorded = m.recorded();
    assert!(
        recorded.contains("this cgroup asked for more than"),
        "the refusals are recorded with their cause:\n{recorded}"
    );
}
