//! Egress control (issue 19, part 3): the governed cgroup's traffic to anything that is not
//! GitHub's, recorded in audit mode and refused unless allowed in block mode, and DNS answered by
//! the gateway's own resolver whatever server a process asks.
//!
//! The "other hosts" are loopback servers on addresses of their own (127.x.y.z); the upstream DNS
//! server is a loopback fake the gateway is pointed at (`[dns] servers`). Every test runs real
//! kernel programs on its own child cgroup and needs root (under CI=true its absence fails).
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup, bin,
    dns::DnsServer,
    eventually, free_port, loopback_v4, privileged,
    servers::{Kind, Server, UdpEcho},
};
use serde_json::{Value, json};

const NAME: &str = "svc.egress.test";

fn one(mut v: Vec<Value>) -> Value {
    assert_eq!(v.len(), 1, "expected one probe result: {v:?}");
    v.remove(0)
}

/// A gateway with egress control in `mode`, its resolver asking the server at `dns`, and
/// `allow` (TOML `[[egress.allow]]` tables) appended.
fn gateway(cg: &TestCgroup, dns: SocketAddr, mode: &str, allow: &str) -> Gateway {
    Gateway::start(
        cg,
        &GatewaySpec {
            // The config needs one intercept rule; this one is never used.
            intercept: vec![(vec![], vec!["127.254.254.0/24".into()], vec![443])],
            dns_servers: vec![dns.to_string()],
            extra_toml: format!(
                "\n[egress]\nmode = \"{mode}\"\ndns_port = {}\nlearned_min_secs = 1\n{allow}",
                free_port()
            ),
            ..Default::default()
        },
    )
}

/// `ghgate egress list --json --since 1h`.
fn seen(gw: &Gateway) -> Vec<Value> {
    gw.ghgate_ok(&["egress", "list", "--json", "--since", "1h"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("egress list --json prints JSON lines"))
        .collect()
}

fn wait_seen(gw: &Gateway, want: &Value) -> Value {
    let fits = |v: &Value| want.as_object().unwrap().iter().all(|(k, w)| &v[k] == w);
    eventually(
        &format!("an egress record with {want}"),
        Duration::from_secs(10),
        || seen(gw).into_iter().find(|v| fits(v)),
    )
}

fn talk(gw: &Gateway, to: SocketAddr) -> Value {
    one(gw.probe(&["talk", &to.to_string(), "--send", "hi\\n", "--wait-ms", "300"]))
}

#[test]
fn audit_records_every_destination_with_its_caller_and_the_name_it_was_looked_up_by() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let host = loopback_v4();
    let tcp = Server::start(SocketAddr::new(host.into(), 0), Kind::Echo);
    let udp = UdpEcho::start(SocketAddr::new(host.into(), 0));
    let dns = DnsServer::start(NAME, vec![IpAddr::V4(host)], 60);
    let gw = gateway(&cg, dns.addr, "audit", "");

    // Looked up through "some resolver" on port 53: the gateway's resolver answers, from the
    // address the process asked (so resolvers that check the source accept it).
    let asked: SocketAddr = "127.0.0.53:53".parse().unwrap();
    let got = one(gw.probe(&[
        "dns",
        &asked.to_string(),
        NAME,
        "--connect",
        &tcp.addr.port().to_string(),
    ]));
    assert_eq!(got["ok"], true, "{got}");
    assert_eq!(got["answers"], json!([host.to_string()]), "{got}");
    assert_eq!(
        got["from"],
        asked.to_string(),
        "the answer seems to come from the server asked: {got}"
    );
    assert_eq!(got["then"]["ok"], true, "audit refuses nothing: {got}");
    assert!(dns.queries() >= 1, "the upstream server was asked");
    let pid = got["pid"].as_u64().unwrap();

    let rec = wait_seen(
        &gw,
        &json!({"orig_dst": tcp.addr.to_string(), "transport": "tcp"}),
    );
    assert_eq!(rec["name"], NAME, "{rec}");
    assert_eq!(rec["tgid"].as_u64(), Some(pid), "{rec}");
    assert_eq!(rec["comm"], "ghgate-probe", "{rec}");
    assert_eq!(rec["uid"], 0, "{rec}");

    // UDP to the same host, by address: recorded with the name it was looked up by.
    let u = one(gw.probe(&["udp-send", &udp.addr.to_string(), "--send", "ping"]));
    assert_eq!(u["ok"], true, "{u}");
    assert_eq!(udp.received().len(), 1, "the datagram arrived");
    let rec = wait_seen(
        &gw,
        &json!({"orig_dst": udp.addr.to_string(), "transport": "udp"}),
    );
    assert_eq!(rec["name"], NAME, "{rec}");

    // An address never looked up: recorded, without a name.
    let other = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    assert_eq!(talk(&gw, other.addr)["ok"], true);
    let rec = wait_seen(&gw, &json!({"orig_dst": other.addr.to_string()}));
    assert!(rec.get("name").is_none() || rec["name"].is_null(), "{rec}");
    assert!(
        gw.refusal_logs().is_empty(),
        "audit mode refuses nothing: {:?}",
        gw.refusal_logs()
    );

    // The baseline: the name on the ports seen, and the unnamed address as a /32.
    let text = gw.ghgate_ok(&["egress", "baseline", "--since", "1h"]);
    let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed["egress"]["mode"].as_str(), Some("block"), "{text}");
    let rules = parsed["egress"]["allow"].as_array().unwrap();
    let named = rules
        .iter()
        .find(|r| {
            r.get("hosts")
                .is_some_and(|h| h.as_array().unwrap()[0].as_str() == Some(NAME))
        })
        .unwrap_or_else(|| panic!("{NAME} in the baseline:\n{text}"));
    let mut want_ports = vec![tcp.addr.port() as i64, udp.addr.port() as i64];
    want_ports.sort();
    let ports: Vec<i64> = named["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_integer().unwrap())
        .collect();
    assert_eq!(ports, want_ports, "{text}");
    let cidr = format!("{}/32", other.addr.ip());
    assert!(
        rules.iter().any(|r| r
            .get("cidrs")
            .is_some_and(|c| c.as_array().unwrap()[0].as_str() == Some(&cidr))
            && r["ports"].as_array().unwrap()[0].as_integer() == Some(other.addr.port() as i64)),
        "{cidr} in the baseline:\n{text}"
    );
}

#[test]
fn block_lets_allowed_names_and_cidrs_through_and_refuses_the_rest_in_the_kernel() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let host = loopback_v4();
    let tcp = Server::start(SocketAddr::new(host.into(), 0), Kind::Http);
    let other_port = Server::start(SocketAddr::new(host.into(), 0), Kind::Echo);
    let udp_host = loopback_v4();
    let udp = UdpEcho::start(SocketAddr::new(udp_host.into(), 0));
    let stranger = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let stranger_udp = UdpEcho::start(SocketAddr::new(stranger.addr.ip(), 0));
    let dns = DnsServer::start(NAME, vec![IpAddr::V4(host)], 60);
    let gw = gateway(
        &cg,
        dns.addr,
        "block",
        &format!(
            "[[egress.allow]]\nhosts = [\"{NAME}\"]\nports = [{}]\n[[egress.allow]]\ncidrs = [\"{udp_host}/32\"]\n",
            tcp.addr.port()
        ),
    );

    // Before the name is looked up its address is not allowed.
    let before = talk(&gw, tcp.addr);
    assert_eq!(
        (before["ok"].clone(), before["errno"].clone()),
        (json!(false), json!(1)),
        "EPERM: {before}"
    );

    // Looked up, then connected at once: the answer is in the kernel before the caller has it.
    let got = one(gw.probe(&[
        "dns",
        "127.0.0.53:53",
        NAME,
        "--connect",
        &tcp.addr.port().to_string(),
    ]));
    assert_eq!(got["then"]["ok"], true, "allowed once looked up: {got}");
    // A real client, resolving through glibc with its own resolv.conf (a server on port 53 that
    // does not exist: the kernel sends the query to the gateway's resolver all the same).
    let resolv = gw.state_dir.with_file_name("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.99\noptions attempts:1 timeout:3\n").unwrap();
    let url = format!("http://{NAME}:{}/", tcp.addr.port());
    let out = gw
        .exec("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$1\" -sS --max-time 10 \"$2\"",
        ])
        .arg(&resolv)
        .arg("curl")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("peer="),
        "curl {url} through glibc's resolver: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The allowed name on another port: refused.
    let r = talk(&gw, other_port.addr);
    assert_eq!(
        (r["ok"].clone(), r["errno"].clone()),
        (json!(false), json!(1)),
        "{r}"
    );
    let (_, record) = gw.expect_refusal(&json!({
        "layer": "kernel", "reason": "not_allowed", "orig_dst": other_port.addr.to_string(),
    }));
    assert!(
        record["detail"].as_str().unwrap_or_default().contains(NAME),
        "the refusal names what the address was looked up as: {record}"
    );

    // An allowed CIDR, any port, UDP: through. Another address, UDP: refused.
    let u = one(gw.probe(&["udp-send", &udp.addr.to_string(), "--send", "ping"]));
    assert_eq!(u["ok"], true, "{u}");
    assert_eq!(udp.received().len(), 1);
    let u = one(gw.probe(&["udp-send", &stranger_udp.addr.to_string(), "--send", "ping"]));
    assert_eq!(
        (u["ok"].clone(), u["errno"].clone()),
        (json!(false), json!(1)),
        "{u}"
    );
    assert!(stranger_udp.received().is_empty(), "nothing reached the stranger");

    // An address never looked up: refused and recorded, with the caller.
    let r = talk(&gw, stranger.addr);
    assert_eq!(
        (r["ok"].clone(), r["errno"].clone()),
        (json!(false), json!(1)),
        "{r}"
    );
    let (line, record) = gw.expect_refusal(&json!({
        "layer": "kernel", "reason": "not_allowed", "orig_dst": stranger.addr.to_string(),
        "transport": "tcp", "comm": "ghgate-probe",
    }));
    assert_eq!(record["tgid"], r["pid"], "{record}");
    assert_eq!(line["tgid"], r["pid"], "{line}");
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("never looked up"),
        "{record}"
    );
    assert_eq!(stranger.accepted(), 0, "nothing reached the stranger");

    // Allowed traffic is recorded in block mode too.
    wait_seen(&gw, &json!({"orig_dst": tcp.addr.to_string(), "name": NAME}));
}

#[test]
fn a_hostile_process_cannot_get_around_block_mode() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let host = loopback_v4();
    let tcp = Server::start(SocketAddr::new(host.into(), 0), Kind::Echo);
    let stranger = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let v6 = Server::start("[::1]:0".parse().unwrap(), Kind::Echo);
    // The fake answers the allowed name with the allowed host; ask another server for it and
    // for names it does not know.
    let dns = DnsServer::start(NAME, vec![IpAddr::V4(host)], 1);
    let gw = gateway(
        &cg,
        dns.addr,
        "block",
        &format!(
            "[[egress.allow]]\nhosts = [\"{NAME}\"]\nports = [{}]\n",
            tcp.addr.port()
        ),
    );
    let eperm = |v: &Value, what: &str| {
        assert_eq!(
            (v["ok"].clone(), v["errno"].clone()),
            (json!(false), json!(1)),
            "{what}: {v}"
        );
    };

    // DNS to a resolver of its own choosing (UDP and TCP, v4 and v6): the gateway's resolver
    // answers it, so what the job learns is what the gateway learns.
    for (server, tcp_flag) in [
        ("192.0.2.1:53", false),
        ("192.0.2.1:53", true),
        ("[::1]:53", false),
    ] {
        let mut args = vec!["dns", server, NAME];
        if tcp_flag {
            args.push("--tcp");
        }
        let got = one(gw.probe(&args));
        assert_eq!(got["ok"], true, "DNS to {server} (tcp: {tcp_flag}): {got}");
        assert_eq!(got["answers"], json!([host.to_string()]), "{got}");
        assert_eq!(got["from"], server, "{got}");
    }
    let queries = dns.queries();
    assert!(queries >= 3, "each went to the configured upstream ({queries})");

    // By address, never looked up: v4, v4-mapped, NAT64, IPv6 loopback.
    eperm(&talk(&gw, stranger.addr), "a stranger by address");
    let IpAddr::V4(s4) = stranger.addr.ip() else {
        unreachable!()
    };
    eperm(
        &talk(
            &gw,
            SocketAddr::new(s4.to_ipv6_mapped().into(), stranger.addr.port()),
        ),
        "v4-mapped spelling",
    );
    eperm(&talk(&gw, v6.addr), "IPv6");
    // The allowed host's v4-mapped spelling on its allowed port is the same destination.
    let mapped = SocketAddr::new(host.to_ipv6_mapped().into(), tcp.addr.port());
    assert_eq!(talk(&gw, mapped)["ok"], true, "the allowed host, v4-mapped");
    assert_eq!(
        stranger.accepted() + v6.accepted(),
        0,
        "nothing reached a stranger"
    );

    // Raw and ICMP sockets: refused at creation (they would need no connect()).
    let raw = one(gw.probe(&["raw-udp", &stranger.addr.to_string(), "--send", "x"]));
    assert_eq!(
        (raw["stage"].clone(), raw["errno"].clone()),
        (json!("socket"), json!(1)),
        "{raw}"
    );
    gw.expect_refusal(&json!({"layer": "kernel", "reason": "raw_socket"}));

    // The TTL runs out (1 s, kept at least learned_min_secs = 1 s; swept every 5 s): the address
    // is no longer allowed until it is looked up again.
    std::thread::sleep(Duration::from_secs(7));
    eperm(&talk(&gw, tcp.addr), "after the answer lapsed");
    let again = one(gw.probe(&[
        "dns",
        "127.0.0.53:53",
        NAME,
        "--connect",
        &tcp.addr.port().to_string(),
    ]));
    assert_eq!(again["then"]["ok"], true, "looked up again: {again}");

    // The gateway's own pid cannot be borrowed, and processes outside the cgroup are untouched.
    let outside = Command::new(bin("ghgate-probe"))
        .args([
            "talk",
            &stranger.addr.to_string(),
            "--send",
            "hi\\n",
            "--wait-ms",
            "200",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&outside.stdout).unwrap();
    assert_eq!(v["ok"], true, "outside the governed cgroup nothing changes: {v}");
}

/// A process in the cgroup floods the gateway's resolver with queries that the upstream never
/// answers: each one forwarded holds a socket for up to 2 s, so without a bound the flood takes
/// every open file the gateway has. At most 1,024 go upstream at once; the rest get SERVFAIL at
/// once, and the gateway's open files stay within that bound.
#[test]
fn a_query_flood_cannot_take_the_resolvers_open_files() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    // An upstream that takes queries and never answers.
    let silent = std::net::UdpSocket::bind((loopback_v4(), 0)).unwrap();
    silent.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let gw = gateway(&cg, silent.local_addr().unwrap(), "audit", "");
    let pid = gw.pid().expect("the gateway runs");
    let open_files = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let before = open_files();
    let out = gw
        .exec("python3")
        .args([
            "-c",
            r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
def query(i):
    name = b"".join(bytes([len(p)]) + p for p in [b"q%d" % i, b"flood", b"test"]) + b"\0"
    return struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
# In bursts the resolver's receive buffer holds, reading answers between them; all within the
# 2 s an upstream gets, so every SERVFAIL counted is one given at once.
servfail, received = 0, 0
def drain():
    global servfail, received
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        received += 1
        if data[3] & 0x0f == 2:
            servfail += 1
start = time.time()
for i in range(3000):
    s.sendto(query(i), ("192.0.2.53", 53))
    if i % 50 == 49:
        time.sleep(0.01)
        drain()
while time.time() < start + 1.8:
    time.sleep(0.01)
    drain()
print(servfail, received)
"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let during = open_files();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (servfail, received) = text.trim().split_once(' ').unwrap();
    let (servfail, received): (usize, usize) = (servfail.parse().unwrap(), received.parse().unwrap());
    let mut upstream_got = 0;
    let mut buf = [0u8; 512];
    while silent.recv_from(&mut buf).is_ok() {
        upstream_got += 1;
    }
    // The silent upstream's own receive buffer holds a few hundred queries: what it got is
    // shown, not judged.
    assert!(
        during <= before + 1024 + 64,
        "the gateway's open files went from {before} to {during} ({upstream_got} queries reached the upstream)"
    );
    assert!(
        servfail >= 3000 - 1024,
        "{servfail} SERVFAIL answers of 3,000 ({received} answers; {upstream_got} reached the upstream)"
    );
}
