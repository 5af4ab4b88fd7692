//! End-to-end: the kernel redirect, the gateway's relay, fail-closed and takeover, exec, DNS.
//! Every test runs real kernel programs on its own child cgroup and loopback servers; each
//! needs root (under CI=true its absence fails the test).
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ghgate_e2e::{
    Attempts, Gateway, GatewaySpec, GithubSpec, TestCgroup, addr, bin,
    dns::DnsServer,
    eventually, loopback_v4, privileged, probe_outside,
    servers::{Kind, Server, UdpEcho},
};
use serde_json::Value;

fn spec_for(host: &str, ip: IpAddr, port: u16) -> GatewaySpec {
    GatewaySpec {
        intercept: vec![(vec![host.into()], vec![], vec![port])],
        overrides: vec![(host.into(), vec![ip.to_string()])],
        ..Default::default()
    }
}

fn one(mut v: Vec<Value>) -> Value {
    assert_eq!(v.len(), 1, "expected one probe result: {v:?}");
    v.remove(0)
}

#[test]
fn redirects_v4_to_the_gateway_with_destination_and_caller() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );

    let r = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["proxied"], true, "the upstream saw the client itself: {r}");
    // getpeername shows the original destination, not the gateway's listener.
    assert_eq!(r["peer"], upstream.addr.to_string(), "{r}");

    let logs = gw.wait_log("the relay log line", Duration::from_secs(10), |l| {
        l.iter().any(|l| l["message"] == "connection relayed")
    });
    let line = logs
        .iter()
        .find(|l| l["message"] == "connection relayed")
        .unwrap();
    assert_eq!(line["orig_dst"], upstream.addr.to_string(), "{line}");
    assert_eq!(line["tgid"], r["pid"], "{line}");
    assert_eq!(line["uid"], 0, "{line}");
    assert_eq!(line["comm"], "ghgate-probe", "{line}");
    assert_eq!(line["exe"], bin("ghgate-probe").display().to_string(), "{line}");
    assert_eq!(line["client"], r["local"], "{line}");
    // "hello\n" up; "peer=…\n" down.
    assert_eq!(line["bytes_up"], 6, "{line}");
    assert_eq!(
        line["bytes_down"].as_u64().unwrap(),
        6 + r["server_saw"].as_str().unwrap().len() as u64,
        "{line}"
    );
    assert_eq!(upstream.accepted(), 1);
}

#[test]
fn redirects_ipv6_and_v4_mapped_destinations() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let v4 = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let v6 = Server::start(addr("[::1]:0"), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![
                (vec![], vec![format!("{}/32", v4.addr.ip())], vec![v4.addr.port()]),
                (vec![], vec!["::1/128".into()], vec![v6.addr.port()]),
            ],
            ..Default::default()
        },
    );

    let r6 = one(gw.probe(&["connect", &v6.addr.to_string()]));
    assert_eq!(
        (r6["ok"].clone(), r6["proxied"].clone()),
        (true.into(), true.into()),
        "{r6}"
    );
    assert_eq!(r6["peer"], v6.addr.to_string());

    let mapped = SocketAddr::new(
        match v4.addr.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped().into(),
            ip => ip,
        },
        v4.addr.port(),
    );
    let rm = one(gw.probe(&["connect", &mapped.to_string()]));
    assert_eq!(
        (rm["ok"].clone(), rm["proxied"].clone()),
        (true.into(), true.into()),
        "{rm}"
    );
    assert_eq!(
        rm["peer"],
        mapped.to_string(),
        "getpeername of a mapped destination"
    );

    let logs = gw.wait_log("two relays", Duration::from_secs(10), |l| {
        l.iter().filter(|l| l["message"] == "connection relayed").count() == 2
    });
    let dsts: Vec<&str> = logs
        .iter()
        .filter(|l| l["message"] == "connection relayed")
        .map(|l| l["orig_dst"].as_str().unwrap())
        .collect();
    assert!(dsts.contains(&v6.addr.to_string().as_str()), "{dsts:?}");
    assert!(
        dsts.contains(&v4.addr.to_string().as_str()),
        "mapped is relayed to the v4 address: {dsts:?}"
    );
}

#[test]
fn leaves_unlisted_destinations_outside_clients_and_udp_alone() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let ip = loopback_v4();
    let listed = Server::start(SocketAddr::new(ip.into(), 0), Kind::Echo);
    let other_port = Server::start(SocketAddr::new(ip.into(), 0), Kind::Echo);
    let udp = UdpEcho::start(SocketAddr::new(ip.into(), listed.addr.port()));
    let gw = Gateway::start(&cg, &spec_for("api.github.test", ip.into(), listed.addr.port()));

    let r = one(gw.probe(&["connect", &other_port.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), false.into()),
        "unlisted port: {r}"
    );

    let outside = one(probe_outside(&["connect", &listed.addr.to_string()]));
    assert_eq!(
        (outside["ok"].clone(), outside["proxied"].clone()),
        (true.into(), false.into()),
        "{outside}"
    );

    // UDP to the very address and port that TCP intercepts reaches the server directly.
    let u = one(gw.probe(&["udp", &udp.addr.to_string()]));
    assert_eq!(
        u["reply"],
        format!("peer={}", u["local"].as_str().unwrap()),
        "{u}"
    );
    assert_eq!(u["from"], udp.addr.to_string());

    // And one listed connection for contrast: only it is relayed.
    let r = one(gw.probe(&["connect", &listed.addr.to_string()]));
    assert_eq!(r["proxied"], true, "{r}");
    gw.assert_exactly_one_relay(Duration::from_secs(10));
    let counters = &gw.status()["counters"];
    assert_eq!(counters["redirected_v4"], 1, "{counters}");
}

#[test]
fn gateway_inside_the_cgroup_never_intercepts_itself() {
    if !privileged() {
        return;
    }
    // The gateway runs in a child of the intercepted cgroup, as in whole-host mode: only its
    // process exclusion keeps its own upstream connections from looping back to itself.
    let cg = TestCgroup::new();
    let own = cg.child("gateway");
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let spec = spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port());
    let gw = Gateway::start_in(&cg, &spec, Some(own.clone()));
    let procs = std::fs::read_to_string(own.join("cgroup.procs")).unwrap();
    assert!(
        procs
            .split_whitespace()
            .any(|p| p == gw.pid().unwrap().to_string()),
        "gateway not in {own:?}"
    );

    let r = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    gw.assert_exactly_one_relay(Duration::from_secs(10));
    assert_eq!(
        upstream.accepted(),
        1,
        "the upstream saw exactly the one relayed connection"
    );
    let counters = &gw.status()["counters"];
    assert!(counters["self_excluded"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(counters["redirected_v4"], 1, "{counters}");
}

#[test]
fn kill9_fails_closed_and_restart_resumes_without_a_bypass() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );

    // One client keeps connecting through the kill and the restart.
    let (mut client, reader) = gw.probe_in_background(&[
        "connect",
        &upstream.addr.to_string(),
        "--count",
        "120",
        "--interval-ms",
        "25",
    ]);
    std::thread::sleep(Duration::from_millis(600));
    gw.kill9();
    // While it is down, the status shows programs attached but no gateway.
    let status = gw.status();
    assert_eq!(status["attached"], true, "{status}");
    assert_eq!(status["gateway"]["running"], false, "{status}");
    std::thread::sleep(Duration::from_millis(900));
    gw.spawn();
    assert!(client.wait().unwrap().success());
    let results = reader.join().unwrap();
    assert_eq!(results.len(), 120);

    let attempts = Attempts::classify(&results);
    attempts.assert_fail_closed();
    let (proxied, refused, cut) = (attempts.proxied.len(), &attempts.refused, &attempts.cut);
    for r in refused {
        assert!(
            r["elapsed_us"].as_u64().unwrap() < 100_000,
            "refusal was not prompt: {r}"
        );
    }
    assert_eq!(proxied + refused.len() + cut.len(), 120);
    // Interception resumed after the restart: the last attempts were relayed.
    assert!(
        results[100..].iter().all(|r| r["proxied"] == true),
        "not resumed: {:?}",
        &results[100..]
    );
    // Every connection the upstream saw came from the gateway.
    // The one relayed at the instant of the kill may have been answered without its log line.
    eventually("relay logs", Duration::from_secs(10), || {
        (gw.relayed().len() + 1 >= proxied).then_some(())
    });
    let seen = upstream.accepted();
    assert!(
        seen >= proxied && seen <= proxied + cut.len(),
        "upstream saw {seen}, relayed {proxied}"
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l["message"] == "gateway ready" && l["took_over"] == true)
    );
}

#[test]
fn bypass_mode_lets_clients_through_after_kill9() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut spec = spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port());
    spec.on_gateway_down = "bypass";
    let mut gw = Gateway::start(&cg, &spec);
    assert_eq!(
        one(gw.probe(&["connect", &upstream.addr.to_string()]))["proxied"],
        true
    );
    gw.kill9();
    let r = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), false.into()),
        "{r}"
    );
    assert_eq!(r["peer"], upstream.addr.to_string());
    assert_eq!(gw.status()["counters"]["bypassed_gateway_down"], 1);
    gw.spawn();
    assert_eq!(
        one(gw.probe(&["connect", &upstream.addr.to_string()]))["proxied"],
        true,
        "intercepted again"
    );
}

#[test]
fn exec_runs_real_curl_under_interception_and_returns_its_status() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let web = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Http);
    let gw = Gateway::start(&cg, &spec_for("api.github.test", web.addr.ip(), web.addr.port()));
    let url = format!("http://api.github.test:{}/repos/o/r", web.addr.port());
    let resolve = format!("api.github.test:{}:{}", web.addr.port(), web.addr.ip());
    let out = gw
        .exec("curl")
        .args([
            "-sS",
            "--resolve",
            &resolve,
            &url,
            "-w",
            "%{remote_ip}:%{remote_port}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let body = lines.next().unwrap();
    let remote = lines.next().unwrap();
    assert_eq!(remote, web.addr.to_string(), "curl saw the original peer");
    let logs = gw.wait_log("curl relay", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "connection relayed" && l["comm"] == "curl")
    });
    let relay = logs
        .iter()
        .find(|l| l["message"] == "connection relayed")
        .unwrap();
    assert_ne!(
        body,
        format!("peer={}", relay["client"].as_str().unwrap()),
        "upstream saw curl itself"
    );
    assert!(
        body.starts_with("peer=127.0.0.1:"),
        "upstream saw the gateway: {body}"
    );
    assert_eq!(relay["exe"], "/usr/bin/curl");

    let code = gw.exec("sh").args(["-c", "exit 7"]).status().unwrap();
    assert_eq!(
        code.code(),
        Some(7),
        "exec passes the command's exit status through"
    );
}

#[test]
fn dns_changes_update_the_intercept_set_without_restart() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let (a, b) = (loopback_v4(), loopback_v4());
    let first = Server::start(SocketAddr::new(a.into(), 0), Kind::Echo);
    let port = first.addr.port();
    let second = Server::start(SocketAddr::new(b.into(), port), Kind::Echo);
    let dns = DnsServer::start("api.github.test", vec![a.into()], 1);
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec!["api.github.test".into()], vec![], vec![port])],
            dns_servers: vec![dns.addr.to_string()],
            ..Default::default()
        },
    );
    assert_eq!(
        one(gw.probe(&["connect", &first.addr.to_string()]))["proxied"],
        true
    );
    assert_eq!(
        one(gw.probe(&["connect", &second.addr.to_string()]))["proxied"],
        false
    );

    let pid_before = gw.pid();
    dns.set(vec![b.into()]);
    eventually(
        "the new address to be intercepted",
        Duration::from_secs(15),
        || {
            let entries = gw.status()["intercept"].clone();
            entries
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == &format!("{b}/32:{port}"))
                .then_some(())
        },
    );
    assert_eq!(
        one(gw.probe(&["connect", &second.addr.to_string()]))["proxied"],
        true
    );
    assert_eq!(
        one(gw.probe(&["connect", &first.addr.to_string()]))["proxied"],
        false,
        "old address removed"
    );
    assert_eq!(gw.pid(), pid_before, "no restart");
    assert!(dns.queries() >= 2);
    assert!(gw.logs().iter().any(|l| l["message"] == "intercept set updated"));
}

#[test]
fn unresolvable_names_are_retried_and_do_not_stop_the_gateway() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let dns = DnsServer::start("other.test", vec![], 1);
    let port = upstream.addr.port();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![
                (vec!["missing.github.test".into()], vec![], vec![port]),
                (vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port]),
            ],
            dns_servers: vec![dns.addr.to_string()],
            ..Default::default()
        },
    );
    assert_eq!(
        one(gw.probe(&["connect", &upstream.addr.to_string()]))["proxied"],
        true
    );
    // Retried (each lookup asks for A and AAAA), but logged once: when it started failing.
    eventually(
        "three lookups of the missing name",
        Duration::from_secs(15),
        || (dns.queries() >= 6).then_some(()),
    );
    let failures = gw
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot resolve"))
        })
        .count();
    assert_eq!(failures, 1, "{}", gw.log_text());
}

#[test]
fn kernel_records_are_removed_when_connections_close() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );
    let results = gw.probe(&["connect", &upstream.addr.to_string(), "--count", "50"]);
    assert!(results.iter().all(|r| r["proxied"] == true));
    let status = eventually("tracked maps to drain", Duration::from_secs(10), || {
        let s = gw.status();
        (s["tracked"]["open_redirected"] == 0 && s["tracked"]["awaiting_accept"] == 0).then_some(s)
    });
    assert_eq!(status["counters"]["established"], 50, "{status}");
}

#[test]
fn github_ranges_refuse_every_other_port_in_the_kernel_and_record_it() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let edge = loopback_v4();
    let ssh = Server::start(SocketAddr::new(edge.into(), 22), Kind::Echo);
    let https = Server::start(SocketAddr::new(edge.into(), 443), Kind::Echo);
    let other = Server::start(SocketAddr::new(edge.into(), 0), Kind::Echo);
    let outside_the_ranges = Server::start(SocketAddr::new(loopback_v4().into(), 22), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            // A name elsewhere keeps the [[intercept]] table non-empty.
            intercept: vec![(vec![], vec!["127.255.255.254/32".into()], vec![443])],
            github: Some(GithubSpec::ranges(&[format!("{edge}/32")])),
            ..Default::default()
        },
    );

    for server in [&ssh, &other] {
        let r = one(gw.probe(&["connect", &server.addr.to_string()]));
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["errno"], libc::EPERM, "refused at connect() with EPERM: {r}");
        assert_eq!(server.accepted(), 0, "nothing reached {}", server.addr);
    }
    // Port 443 goes to the gateway, which refuses bytes that are not TLS.
    let r = one(gw.probe(&["connect", &https.addr.to_string()]));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(https.accepted(), 0, "the gateway dialled nothing");
    // Outside the ranges nothing changes.
    let r = one(gw.probe(&["connect", &outside_the_ranges.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), false.into()),
        "{r}"
    );

    let logs = gw.wait_log("three refusals", Duration::from_secs(10), |l| {
        l.iter().filter(|l| l["message"] == "connection refused").count() >= 3
    });
    let refused: Vec<(String, String, String)> = logs
        .iter()
        .filter(|l| l["message"] == "connection refused")
        .map(|l| {
            (
                l["layer"].as_str().unwrap().to_owned(),
                l["reason"].as_str().unwrap().to_owned(),
                l["orig_dst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (layer, reason, dst) in [
        ("kernel", "port_not_allowed", ssh.addr),
        ("kernel", "port_not_allowed", other.addr),
        ("gateway", "not_tls", https.addr),
    ] {
        assert!(
            refused.contains(&(layer.into(), reason.into(), dst.to_string())),
            "{layer} {reason} {dst} not in {refused:?}"
        );
    }
    let counters = &gw.status()["counters"];
    assert_eq!(counters["refused_port"], 2, "{counters}");

    // The store holds them, with the caller.
    let records = eventually("three refusal records", Duration::from_secs(10), || {
        let out = gw.ghgate_ok(&["sessions", "refusals", "--json"]);
        let v: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (v.len() >= 3).then_some(v)
    });
    for r in &records {
        assert_eq!(r["type"], "refusal", "{r}");
        assert_eq!(r["comm"], "ghgate-probe", "{r}");
        assert_eq!(r["uid"], 0, "{r}");
    }
}

#[test]
fn an_allowed_port_to_github_passes_untouched_and_other_ports_stay_refused() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let edge = loopback_v4();
    let ssh = Server::start(SocketAddr::new(edge.into(), 22), Kind::Echo);
    let git = Server::start(SocketAddr::new(edge.into(), 9418), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec![], vec!["127.255.255.254/32".into()], vec![443])],
            github: Some(GithubSpec::ranges(&[format!("{edge}/32")]).allow_ports(&[22])),
            ..Default::default()
        },
    );
    let r = one(gw.probe(&["connect", &ssh.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), false.into()),
        "{r}"
    );
    let r = one(gw.probe(&["connect", &git.addr.to_string()]));
    assert_eq!(r["errno"], libc::EPERM, "{r}");
    assert_eq!(git.accepted(), 0);
    let counters = &gw.status()["counters"];
    assert_eq!(counters["passed_allowed_port"], 1, "{counters}");
}

#[test]
fn a_listener_that_is_not_the_gateway_gets_nothing() {
    if !privileged() {
        return;
    }
    // The gateway stops; someone else binds its port. Redirected connects must not reach it.
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );
    gw.terminate();
    let impostor = Server::start(addr(&format!("127.0.0.1:{}", gw.listen_port)), Kind::Echo);
    let r = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["errno"], libc::EPERM, "{r}");
    assert_eq!(
        impostor.accepted(),
        0,
        "the impostor received a redirected connection"
    );
    assert_eq!(upstream.accepted(), 0);
    drop(impostor);
    // The next start records what the kernel refused while it was away, and the gap.
    gw.spawn();
    let logs = gw.wait_log("the foreign-listener refusal", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "connection refused" && l["reason"] == "foreign_listener")
    });
    assert!(
        logs.iter()
            .any(|l| l["message"] == "enforcement gap before this start" && l["kind"] == "GatewayStopped"),
        "{}",
        gw.log_text()
    );
}

#[test]
fn exec_through_sudo_runs_the_command_as_the_user_who_invoked_it() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );
    // As sudo leaves things: root, with the invoking user in SUDO_UID/SUDO_GID.
    let as_sudo = |cmd: &mut std::process::Command| {
        cmd.env("SUDO_UID", "65534").env("SUDO_GID", "65534");
    };
    let mut id = gw.exec("sh");
    id.args(["-c", "echo $(id -u) $(id -g) $HOME"]);
    as_sudo(&mut id);
    let out = id.output().unwrap();
    let nobody = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
        .unwrap()
        .expect("a user with uid 65534");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("65534 65534 {}", nobody.dir.display()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kernel attributes its connections to that user too.
    let mut probe = gw.exec(bin("ghgate-probe"));
    probe.args(["connect", &upstream.addr.to_string()]);
    as_sudo(&mut probe);
    let out = probe.output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).expect("probe json");
    assert_eq!(r["proxied"], true, "{r}");
    let logs = gw.wait_log("the relay", Duration::from_secs(10), |l| {
        l.iter().any(|l| l["message"] == "connection relayed")
    });
    let line = logs
        .iter()
        .find(|l| l["message"] == "connection relayed")
        .unwrap();
    assert_eq!(line["uid"], 65534, "{line}");

    // --keep-root keeps root.
    let mut keep = std::process::Command::new(bin("ghgate"));
    keep.args(["exec", "--config"])
        .arg(&gw.config)
        .args(["--keep-root", "--", "id", "-u"]);
    as_sudo(&mut keep);
    let out = keep.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[test]
fn pins_removed_under_a_running_gateway_are_a_recorded_gap_and_come_back() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut gw = Gateway::start(
        &cg,
        &spec_for("api.github.test", upstream.addr.ip(), upstream.addr.port()),
    );
    // Root removes the programs' pins: the programs are detached at once.
    std::fs::remove_dir_all(gw.pin_dir.join("links")).unwrap();
    let logs = gw.wait_log("the watcher's report", Duration::from_secs(15), |l| {
        l.iter()
            .any(|l| l["message"] == "enforcement was lost (pins removed) and is restored")
    });
    assert!(!logs.iter().any(|l| l["level"] == "ERROR"), "{}", gw.log_text());
    // Mediation is back: the connection goes through the gateway.
    let r = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(r["proxied"], true, "{r}");
    // The gap is in the store, in status, and `check` fails on it.
    let gaps = eventually("the gap's record", Duration::from_secs(10), || {
        let out = gw.ghgate_ok(&["sessions", "refusals", "--json"]);
        let v: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &Value| r["type"] == "enforcement_gap")
            .collect();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(gaps[0]["kind"], "detached", "{gaps:?}");
    let status = gw.status();
    assert_eq!(status["enforcement_gaps"][0]["lost_mediation"], true, "{status}");
    let check = gw.ghgate(&["check"]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("mediation LOST"));

    // A crash (kill -9) is a gap too, recorded at the next start; fail-closed, it lost nothing.
    gw.kill9();
    gw.spawn();
    let logs = gw.wait_log("the crash's gap", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "enforcement gap before this start" && l["kind"] == "GatewayDown")
    });
    let line = logs
        .iter()
        .find(|l| l["message"] == "enforcement gap before this start")
        .unwrap();
    assert!(
        line["detail"].as_str().unwrap().contains("refused meanwhile"),
        "{line}"
    );
}
