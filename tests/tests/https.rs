//! End-to-end HTTPS interception through the real redirect: real curl under `ghgate exec`,
//! trusting only ghgate's CA, against a loopback upstream impersonating GitHub with a test CA
//! that only the gateway trusts.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use ghgate_e2e::{
    Gateway, GatewaySpec, TestCgroup, bin,
    https::{TestCa, TlsGateway, Upstream},
    loopback_v4, privileged, rss_kib,
};

fn setup(names: &[&str], gateway_trusts_upstream: bool) -> TlsGateway {
    TlsGateway::start(names, gateway_trusts_upstream, None, "")
}

/// curl through the gateway; prints `\n<http version> <status>` after the body, then `extra`.
fn curl(s: &TlsGateway, host: &str, path: &str, extra: &[&str]) -> Output {
    let mut args = vec!["-w", "\n%{http_version} %{http_code}"];
    args.extend_from_slice(extra);
    s.curl(host, path, &args)
}

/// As `setup`, on one shard: the tests that count upstream connections count one pool's.
fn setup_one_shard(names: &[&str]) -> TlsGateway {
    TlsGateway::start_tweaked(names, true, None, None, &|_| String::new(), &|spec| {
        spec.shards = Some(1)
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn curl_http1_and_http2_through_the_gateway() {
    if !privileged() {
        return;
    }
    // The upstream speaks both: each client is served in its own protocol, end to end, and the
    // second run of each reuses the pooled upstream connection.
    let s = setup_one_shard(&["api.github.com"]);
    for (flag, version, wire) in [
        ("--http1.1", "1.1", "HTTP/1.1"),
        ("--http2", "2", "HTTP/2.0"),
        ("--http1.1", "1.1", "HTTP/1.1"),
        ("--http2", "2", "HTTP/2.0"),
    ] {
        let out = curl(&s, "api.github.com", "/repos/o/r?x=1", &[flag]);
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{flag}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.ends_with(&format!("{version} 200")), "{flag}: {text}");
        assert!(text.contains("path=/repos/o/r"), "{text}");
        assert!(
            text.contains(&format!("host=api.github.com:{}", s.upstream.addr.port())),
            "Host kept: {text}"
        );
        assert!(
            text.contains(&format!("version={wire}")),
            "upstream reached over {wire}: {text}"
        );
    }
    let logs = s.gw.wait_log("four exchanges", Duration::from_secs(10), |l| {
        l.iter().filter(|l| l["message"] == "exchange").count() >= 4
    });
    let ex: Vec<_> = logs.iter().filter(|l| l["message"] == "exchange").collect();
    assert_eq!(ex[0]["status"], 200);
    assert_eq!(ex[0]["sni"], "api.github.com");
    assert_eq!(ex[0]["comm"], "curl");
    assert_eq!(
        ex[0]["url"],
        format!("https://api.github.com:{}/repos/o/r?x=1", s.upstream.addr.port())
    );
    assert_eq!(
        (ex[0]["client_alpn"].as_str(), ex[0]["upstream_alpn"].as_str()),
        (Some("Http1"), Some("Some(Http1)"))
    );
    assert_eq!(
        (ex[1]["client_alpn"].as_str(), ex[1]["upstream_alpn"].as_str()),
        (Some("Http2"), Some("Some(Http2)"))
    );
    assert_eq!(s.upstream.served(), 4);
    assert_eq!(
        s.upstream.connections(),
        2,
        "one HTTP/1.1 and one HTTP/2 upstream connection, each reused"
    );
}

#[test]
fn concurrent_http1_clients_keep_their_upstream_connections_pooled() {
    if !privileged() {
        return;
    }
    // Sixteen HTTP/1.1 requests at once hold sixteen upstream connections (each request's
    // stream lasts over a second upstream); when they end, all sixteen stay pooled, so a second
    // burst of sixteen dials nothing. With eight kept per host, the second burst dialled and
    // handshook eight anew.
    let s = setup_one_shard(&["api.github.com"]);
    let (url, _) = s.url("api.github.com", "/sse?n=2");
    let mut args = vec![
        "--http1.1",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "16",
    ];
    let mut urls = Vec::new();
    for _ in 0..15 {
        urls.extend(["-o", "/dev/null", url.as_str()]);
    }
    args.extend(urls.iter().copied());
    args.extend(["-o", "/dev/null"]);
    for burst in 1..=2 {
        let out = curl(&s, "api.github.com", "/sse?n=2", &args);
        assert!(
            out.status.success(),
            "burst {burst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(s.upstream.served(), 16 * burst, "burst {burst}");
    }
    assert_eq!(
        s.upstream.connections(),
        16,
        "the second burst reused the first burst's upstream connections"
    );
}

#[test]
fn http2_clients_are_translated_to_an_http1_only_upstream() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let upstream = Upstream::builder(&ca, &["api.github.com"])
        .alpn(&[b"http/1.1"])
        .start();
    let port = upstream.addr.port();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec![], vec![format!("{}/32", upstream.addr.ip())], vec![port])],
            tls_ports: vec![port],
            upstream_extra_roots: vec![ca.write_pem(dir.path())],
            // One pool: the count below is of its connections.
            shards: Some(1),
            ..Default::default()
        },
    );
    let ghgate_ca = gw.ca_file();
    // A client offering h2 alone, twice: translated to HTTP/1.1 upstream, then pooled.
    for _ in 0..2 {
        let out = gw
            .exec(bin("ghgate-probe"))
            .args(["h2post", &upstream.addr.to_string(), "api.github.com"])
            .arg(&ghgate_ca)
            .args(["/t", "--bytes", "50000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (r["alpn"].as_str(), r["status"].as_u64()),
            (Some("h2"), Some(200)),
            "{r}"
        );
        let body = r["body"].as_str().unwrap();
        assert!(
            body.contains("version=HTTP/1.1") && body.contains("body_bytes=50000"),
            "translated: {r}"
        );
        assert!(
            body.contains(&format!("host=api.github.com:{port}")),
            ":authority became Host: {r}"
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the idle HTTP/1.1 upstream connection was reused"
    );
}

#[test]
fn post_bodies_stream_upstream() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.github.com"], true);
    let body = s.dir.path().join("body");
    std::fs::write(&body, "x".repeat(300_000)).unwrap();
    let data = format!("@{}", body.display());
    let out = curl(&s, "api.github.com", "/graphql", &["--data-binary", &data]);
    let text = stdout(&out);
    assert!(
        text.contains("method=POST") && text.contains("body_bytes=300000"),
        "{text}"
    );
    let logs = s.gw.wait_log("the exchange", Duration::from_secs(10), |l| {
        l.iter().any(|l| l["message"] == "exchange")
    });
    let ex = logs.iter().find(|l| l["message"] == "exchange").unwrap();
    assert_eq!(ex["bytes_up"], 300_000);
}

#[test]
fn upstream_with_a_wrong_name_gets_502_and_nothing_is_forwarded() {
    if !privileged() {
        return;
    }
    let s = setup(&["wrong.example"], true);
    let out = curl(&s, "api.github.com", "/user", &[]);
    let text = stdout(&out);
    assert!(text.ends_with(" 502"), "{text}");
    assert!(text.contains("wrong name"), "the body says what failed: {text}");
    assert_eq!(s.upstream.served(), 0, "no request reached the upstream");
}

#[test]
fn upstream_from_an_unknown_issuer_gets_502() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.github.com"], false);
    let out = curl(&s, "api.github.com", "/user", &[]);
    let text = stdout(&out);
    assert!(text.ends_with(" 502"), "{text}");
    assert!(text.contains("unknown issuer"), "{text}");
    assert_eq!(s.upstream.served(), 0);
}

#[test]
fn passthrough_names_are_relayed_untouched_and_other_names_refused() {
    if !privileged() {
        return;
    }
    // The upstream presents its own certificate. A name on the passthrough list is relayed
    // untouched: a client trusting only the upstream's CA succeeds, which it could not if ghgate
    // had terminated. A name neither intercepted nor passed through is refused, never relayed.
    let s = TlsGateway::start_tweaked(
        &["pinned.example", "other.example"],
        false,
        None,
        None,
        &|_| String::new(),
        &|spec| spec.tls_passthrough = vec!["pinned.example".into()],
    );
    let fetch = |name: &str| {
        let (url, resolve) = s.url(name, "/");
        s.gw.exec("curl")
            .args(["-sS", "-w", "\n%{http_version} %{http_code}", "--cacert"])
            .arg(&s.upstream_ca)
            .args(["--resolve", &resolve, &url])
            .output()
            .unwrap()
    };
    let out = fetch("pinned.example");
    assert!(
        stdout(&out).ends_with(" 200"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fetch("other.example");
    assert!(
        !out.status.success(),
        "a foreign name is refused: {}",
        stdout(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unrecognized name"),
        "curl names the TLS alert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.upstream.connections(),
        1,
        "only the passthrough name reached the upstream"
    );
    let gw = &s.gw;
    let logs = gw.wait_log("relay and refusal", Duration::from_secs(10), |l| {
        l.iter().any(|l| l["message"] == "connection relayed")
            && l.iter().any(|l| l["message"] == "connection refused")
    });
    assert!(
        logs.iter()
            .any(|l| l["message"] == "connection relayed" && l["sni"] == "pinned.example"),
        "the SNI is logged at connection level"
    );
    assert!(
        logs.iter().any(|l| l["message"] == "connection refused"
            && l["reason"] == "foreign_sni"
            && l["sni"] == "other.example"),
        "{}",
        gw.log_text()
    );
    assert!(
        !logs.iter().any(|l| l["message"] == "exchange"),
        "no HTTP exchange: nothing was terminated"
    );
}

#[test]
fn a_client_not_speaking_tls_is_closed_and_others_are_unaffected() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.github.com"], true);
    let url = format!("http://{}/", s.upstream.addr);
    let plain =
        s.gw.exec("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .unwrap();
    assert!(!plain.status.success(), "plain HTTP to a TLS port must fail");
    let logs = s.gw.wait_log("the rejection", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "connection refused" && l["reason"] == "not_tls")
    });
    let line = logs
        .iter()
        .find(|l| l["message"] == "connection refused" && l["reason"] == "not_tls")
        .unwrap();
    assert_eq!(line["comm"], "curl", "the log names the caller: {line}");
    let ok = curl(&s, "api.github.com", "/after", &[]);
    assert!(stdout(&ok).ends_with(" 200"), "{}", stdout(&ok));
    assert_eq!(s.upstream.served(), 1);
}

#[test]
fn sse_events_reach_the_client_as_they_are_sent() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.githubcopilot.com"], true);
    let resolve = format!(
        "api.githubcopilot.com:{}:{}",
        s.upstream.addr.port(),
        s.upstream.addr.ip()
    );
    let url = format!("https://api.githubcopilot.com:{}/sse?n=4", s.upstream.addr.port());
    let start = Instant::now();
    let mut child =
        s.gw.exec("curl")
            .args(["-sS", "-N", "--http2", "--cacert"])
            .arg(&s.ca_file)
            .args(["--resolve", &resolve, &url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let first_at = start.elapsed();
    assert_eq!(first, "data: {\"event\":0}");
    let rest: Vec<String> = lines.map_while(Result::ok).filter(|l| !l.is_empty()).collect();
    let all_at = start.elapsed();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest.len(), 3, "{rest:?}");
    // The upstream pauses 0.7 s between events: the first arrived long before the stream ended.
    assert!(
        all_at - first_at > Duration::from_millis(1500),
        "first at {first_at:?}, all at {all_at:?}"
    );
}

#[test]
fn one_gib_down_and_up_with_bounded_gateway_memory() {
    if !privileged() {
        return;
    }
    const GIB: u64 = 1 << 30;
    let s = setup(&["objects.githubusercontent.com"], true);
    let pid = s.gw.pid().unwrap();
    // Warm up (first leaf, first connection), then take the baseline.
    let warm = curl(&s, "objects.githubusercontent.com", "/bytes?n=1", &[]);
    assert!(stdout(&warm).ends_with(" 200"));
    let (rss_before, _) = rss_kib(pid);

    for flag in ["--http1.1", "--http2"] {
        let path = format!("/bytes?n={GIB}");
        let out = curl(
            &s,
            "objects.githubusercontent.com",
            &path,
            &[
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}\n",
                "--max-time",
                "120",
            ],
        );
        let text = stdout(&out);
        assert!(text.starts_with(&format!("{GIB}\n")), "{flag}: downloaded {text}");
    }
    // Upload 1 GiB from a stream (curl reads stdin), counted by the upstream without keeping it.
    let resolve = format!(
        "objects.githubusercontent.com:{}:{}",
        s.upstream.addr.port(),
        s.upstream.addr.ip()
    );
    let url = format!(
        "https://objects.githubusercontent.com:{}/sink",
        s.upstream.addr.port()
    );
    let upload = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {GIB} /dev/zero | \"$0\" exec --config \"$1\" -- curl -sS --max-time 120 --cacert \"$2\" --resolve {resolve} -T - {url}"
        ))
        .arg(bin("ghgate"))
        .arg(&s.gw.config)
        .arg(&s.ca_file)
        .output()
        .unwrap();
    assert!(
        stdout(&upload).contains(&format!("received={GIB}")),
        "{}{}",
        stdout(&upload),
        String::from_utf8_lossy(&upload.stderr)
    );
    let (_, peak) = rss_kib(pid);
    let grown_mib = (peak.saturating_sub(rss_before)) as f64 / 1024.0;
    eprintln!(
        "gateway RSS before {} KiB, peak {} KiB: grew {grown_mib:.1} MiB over 3 GiB moved",
        rss_before, peak
    );
    assert!(
        grown_mib < 16.0,
        "the gateway's peak RSS grew {grown_mib:.1} MiB while streaming 3 GiB"
    );
}

#[test]
fn websocket_echo_through_the_gateway() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.githubcopilot.com"], true);
    let out =
        s.gw.exec(bin("ghgate-probe"))
            .args(["ws", &s.upstream.addr.to_string(), "api.githubcopilot.com"])
            .arg(&s.ca_file)
            .args(["first prompt", "second prompt"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "HTTP/1.1 101 Switching Protocols", "{r}");
    assert_eq!(
        r["replies"],
        serde_json::json!(["echo: first prompt", "echo: second prompt"]),
        "{r}"
    );
    let logs =
        s.gw.wait_log("the upgrade exchange", Duration::from_secs(10), |l| {
            l.iter().any(|l| l["message"] == "exchange" && l["status"] == 101)
        });
    let ex = logs
        .iter()
        .find(|l| l["message"] == "exchange" && l["status"] == 101)
        .unwrap();
    assert!(ex["url"].as_str().unwrap().ends_with("/ws"), "{ex}");
    // The pipeline saw each message, both ways: two prompts up, two echoes down.
    let logs =
        s.gw.wait_log("the websocket messages", Duration::from_secs(10), |l| {
            l.iter()
                .filter(|l| l["message"] == "websocket message" && l["kind"] == "text")
                .count()
                == 4
        });
    let texts: Vec<(String, u64)> = logs
        .iter()
        .filter(|l| l["message"] == "websocket message" && l["kind"] == "text")
        .map(|l| {
            (
                l["direction"].as_str().unwrap().to_owned(),
                l["len"].as_u64().unwrap(),
            )
        })
        .collect();
    // Each worker thread writes its log lines in bursts (see `cli::logbuf`), so lines logged on
    // two threads may come out of order: the lengths are compared sorted (the replies above show
    // the order the messages went in).
    let lengths = |dir: &str| -> Vec<u64> {
        let mut v: Vec<u64> = texts.iter().filter(|(d, _)| d == dir).map(|(_, n)| *n).collect();
        v.sort_unstable();
        v
    };
    let (ups, downs) = (lengths("Up"), lengths("Down"));
    assert_eq!(
        ups,
        ["first prompt".len() as u64, "second prompt".len() as u64],
        "{texts:?}"
    );
    assert_eq!(
        downs,
        [
            "echo: first prompt".len() as u64,
            "echo: second prompt".len() as u64
        ],
        "{texts:?}"
    );
}

#[test]
fn a_client_without_sni_is_refused_and_recorded() {
    if !privileged() {
        return;
    }
    // The intercept set names api.github.com (resolved to the upstream by an override); a client
    // dialling the bare address sends no SNI. The gateway cannot tell which name it means, so it
    // refuses it (a TLS alert) instead of guessing, and records the refusal.
    let cg = TestCgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let upstream = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &["api.github.com"]);
    let port = upstream.addr.port();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec!["api.github.com".into()], vec![], vec![port])],
            overrides: vec![("api.github.com".into(), vec![upstream.addr.ip().to_string()])],
            tls_ports: vec![port],
            upstream_extra_roots: vec![ca.write_pem(dir.path())],
            ..Default::default()
        },
    );
    let ghgate_ca = gw.ca_file();
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False  # no name to check: the point is that no SNI is sent
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname=None)
s.sendall(b"GET /no-sni HTTP/1.1\r\nHost: api.github.com\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode(errors="replace"))
"#;
    let out = gw
        .exec("python3")
        .args(["-c", script, &upstream.addr.ip().to_string(), &port.to_string()])
        .arg(&ghgate_ca)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNRECOGNIZED_NAME"),
        "the client sees the alert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = gw.wait_log("the refusal", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "connection refused" && l["reason"] == "no_sni")
    });
    let line = logs
        .iter()
        .find(|l| l["message"] == "connection refused" && l["reason"] == "no_sni")
        .unwrap();
    assert_eq!(line["comm"], "python3", "{line}");
    assert_eq!(upstream.served(), 0, "nothing was forwarded");
    let refusals = gw.ghgate_ok(&["sessions", "refusals", "--json"]);
    assert!(refusals.contains("\"no_sni\""), "{refusals}");
}

#[test]
fn an_intercept_set_of_every_address_is_decided_by_sni_and_cannot_be_escaped_by_dns() {
    if !privileged() {
        return;
    }
    // 0.0.0.0/0 on the test port: every destination is redirected, and only the SNI decides. The
    // client reaches api.github.com at an address the gateway never resolved (DNS drift) and is
    // still terminated; a name on the passthrough list goes through untouched.
    let cg = TestCgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let github = Upstream::start(SocketAddr::new(loopback_v4().into(), 0), &ca, &["api.github.com"]);
    let port = github.addr.port();
    let other = Upstream::start(SocketAddr::new(loopback_v4().into(), port), &ca, &["example.org"]);
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec![], vec!["0.0.0.0/0".into()], vec![port])],
            tls_ports: vec![port],
            tls_passthrough: vec!["example.org".into()],
            // A passthrough name is relayed only to an address it resolves to.
            overrides: vec![("example.org".into(), vec![other.addr.ip().to_string()])],
            upstream_extra_roots: vec![ca.write_pem(dir.path())],
            ..Default::default()
        },
    );
    let ghgate_ca = gw.ca_file();
    let upstream_ca = ca.write_pem(dir.path());
    let run_curl = |name: &str, addr: SocketAddr, trust: &Path| {
        let out = gw
            .exec("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(trust)
            .args([
                "--resolve",
                &format!("{name}:{port}:{}", addr.ip()),
                &format!("https://{name}:{port}/"),
            ])
            .output()
            .unwrap();
        (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(run_curl("api.github.com", github.addr, &ghgate_ca).0, "200");
    assert_eq!(
        run_curl("example.org", other.addr, &upstream_ca).0,
        "200",
        "not terminated: the upstream's own certificate"
    );
    // A client that does not trust ghgate's CA aborts the handshake: logged with its name.
    let (code, _) = run_curl("api.github.com", github.addr, &upstream_ca);
    assert_eq!(code, "000");
    let logs = gw.wait_log("the aborted handshake", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "client TLS handshake failed (does the client trust ghgate's CA?)")
    });
    let aborted = logs
        .iter()
        .find(|l| l["message"] == "client TLS handshake failed (does the client trust ghgate's CA?)")
        .unwrap();
    assert_eq!(aborted["comm"], "curl", "{aborted}");
    let exchanges: Vec<&str> = logs
        .iter()
        .filter(|l| l["message"] == "exchange")
        .map(|l| l["sni"].as_str().unwrap())
        .collect();
    assert_eq!(
        exchanges,
        ["api.github.com"],
        "only the terminated name produced an exchange"
    );
    assert!(logs.iter().any(
        |l| l["message"] == "TLS name on the passthrough list; relaying it untouched"
            && l["sni"] == "example.org"
    ));
}

/// Every exchange record in the store, once at least `n` are there.
fn exchange_records(s: &TlsGateway, n: usize) -> Vec<serde_json::Value> {
    ghgate_e2e::eventually("the exchange records", Duration::from_secs(10), || {
        let records: Vec<serde_json::Value> =
            s.gw.ghgate_ok(&["sessions", "list", "--json"])
                .lines()
                .flat_map(|l| {
                    let session: serde_json::Value = serde_json::from_str(l).unwrap();
                    let id = session["id"].as_str().unwrap().to_owned();
                    s.gw.ghgate_ok(&["sessions", "export", &id, "--format", "jsonl"])
                        .lines()
                        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
                        .filter(|r| r["type"] == "exchange")
                        .collect::<Vec<_>>()
                })
                .collect();
        (records.len() >= n).then_some(records)
    })
}

#[test]
fn a_request_whose_host_or_path_could_mean_two_things_is_answered_by_the_gateway() {
    if !privileged() {
        return;
    }
    let s = setup(&["api.github.com", "github.com"], true);
    let port = s.upstream.addr.port();
    // Host ≠ SNI: 421, over HTTP/1.1 and HTTP/2 (curl sends its Host header as :authority).
    for flag in ["--http1.1", "--http2"] {
        let out = curl(
            &s,
            "api.github.com",
            "/repos/o/r",
            &[flag, "-H", "Host: github.com"],
        );
        let text = stdout(&out);
        assert!(text.ends_with(" 421"), "{flag}: {text}");
        assert!(
            text.contains("this connection was opened for api.github.com, not for github.com"),
            "{flag}: {text}"
        );
    }
    // Hand-made heads, and spellings of a path GitHub's API could read as another.
    let cases = [
        (
            "GET /repos/o/r HTTP/1.1\r\nHost: api.github.com\r\nHost: github.com\r\nConnection: close\r\n\r\n"
                .to_owned(),
            "400",
            "more than one Host header",
        ),
        (
            format!(
                "GET https://github.com/repos/o/r HTTP/1.1\r\nHost: api.github.com:{port}\r\nConnection: close\r\n\r\n"
            ),
            "400",
            "disagrees with the request's URI",
        ),
        (
            "GET /repos/o/r HTTP/1.0\r\nConnection: close\r\n\r\n".to_owned(),
            "400",
            "names no host",
        ),
        (
            "GET /repos/o%2Fr/contents HTTP/1.1\r\nHost: api.github.com\r\nConnection: close\r\n\r\n".to_owned(),
            "400",
            "an encoded slash",
        ),
        (
            "GET /repos/o/r/%2e%2e/x HTTP/1.1\r\nHost: API.github.com.\r\nConnection: close\r\n\r\n".to_owned(),
            "400",
            "a dot segment",
        ),
    ];
    for (request, status, why) in &cases {
        let answer = s.raw("api.github.com", request.as_bytes());
        // An HTTP/1.0 request is answered in HTTP/1.0.
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}"))
                || answer.starts_with(&format!("HTTP/1.0 {status}")),
            "{request:?}: {answer}"
        );
        assert!(answer.contains(why), "{request:?}: {answer}");
    }
    // A Content-Encoding the gateway cannot decode: 415 from the head.
    let out = curl(
        &s,
        "api.github.com",
        "/repos/o/r/issues",
        &["-H", "Content-Encoding: x-unknown", "--data", "{}"],
    );
    let text = stdout(&out);
    assert!(
        text.ends_with(" 415"),
        "{text}\ncurl said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"x-unknown\" cannot be decoded by ghgate"),
        "{text}"
    );
    assert_eq!(s.upstream.served(), 0, "nothing was forwarded");

    // A body that does not decode as its Content-Encoding says: cut before its end, 415.
    let out = curl(
        &s,
        "api.github.com",
        "/repos/o/r/issues",
        &[
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "this is not gzip at all",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.ends_with(" 415"),
        "{text}\ncurl said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cannot decode the request body"), "{text}");
    assert!(
        !text.contains("method=POST"),
        "the upstream never answered it: {text}"
    );

    // The same host spelled otherwise is the same host.
    let out = curl(
        &s,
        "api.github.com",
        "/repos/o/r",
        &["-H", &format!("Host: API.GitHub.com.:{port}")],
    );
    let text = stdout(&out);
    assert!(text.ends_with(" 200"), "{text}");
    assert!(text.contains(&format!("host=api.github.com:{port}")), "{text}");

    // Every refusal is recorded, answered by the gateway, with its status and why.
    let records = exchange_records(&s, 10);
    let refused: Vec<(u64, String)> = records
        .iter()
        .filter(|r| r["answered_by"] == "gateway")
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (status, why) in [
        (421, "not for github.com"),
        (400, "more than one Host header"),
        (400, "disagrees"),
        (400, "names no host"),
        (400, "an encoded slash"),
        (400, "a dot segment"),
        (415, "x-unknown"),
        (415, "cannot decode the request body"),
    ] {
        assert!(
            refused.iter().any(|(s, e)| *s == status && e.contains(why)),
            "no {status} record for {why}: {refused:?}"
        );
    }
}

/// A HEAD gets the head a GET would and no body, over both protocols, whether the upstream
/// answers (200; over HTTP/2, and over HTTP/1.1 to an upstream that speaks nothing else) or the
/// gateway does (502: an upstream it does not trust). Over HTTP/2 a body on a HEAD's stream made
/// curl fail with "PROTOCOL_ERROR" (error 92).
#[test]
fn a_head_gets_a_head_and_no_body_over_http1_and_http2() {
    if !privileged() {
        return;
    }
    for (trusted, h1_upstream, status) in [(true, false, "200"), (true, true, "200"), (false, false, "502")] {
        let s = if h1_upstream {
            TlsGateway::start_h1_upstream(&["api.github.com"])
        } else {
            setup(&["api.github.com"], trusted)
        };
        for proto in ["--http1.1", "--http2"] {
            let out = curl(&s, "api.github.com", "/head", &["-I", proto]);
            let text = stdout(&out);
            assert!(
                out.status.success(),
                "{proto}, {status}: curl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.trim_end().ends_with(status), "{proto}: {text}");
            let len = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("{proto}, {status}: no Content-Length: {text}"));
            assert!(
                len.parse::<u64>().is_ok_and(|n| n > 0),
                "{proto}, {status}: {text}"
            );
        }
    }
}
