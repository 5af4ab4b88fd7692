//! Telemetry end to end: exchanges through the real redirect and proxy with real curl (allowed,
//! refused by the policy, one carrying a token, one refused at the TLS peek), then `/metrics`
//! scraped with curl moved by exactly what happened; the events arrive as JSON lines at a syslog
//! socket the test binds and at a loopback HTTPS webhook that was down while the traffic passed
//! (which neither failed nor waited for it), and the token is in none of them, nor in /metrics.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixDatagram,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ghgate_e2e::{
    eventually,
    fixtures::github_token,
    free_port,
    hook::Receiver,
    https::{TestCa, TlsGateway},
    privileged,
};
use serde_json::Value;

const POLICY: &str = r#"
default = "allow"

[[rule]]
name = "no-admin"
action = "deny"
host = ["api.github.com"]
path = ["/admin/*"]
message = "no site administration through agents"
"#;

/// `GET /metrics` with curl, as a Prometheus server would: every sample by its series.
fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-D", "-"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect();
    (body.to_owned(), samples)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    let a = after
        .get(series)
        .copied()
        .unwrap_or_else(|| panic!("{series} not exposed"));
    a - before.get(series).copied().unwrap_or(0.0)
}

/// Whether `events` hold a decision, a refusal and a masking as the traffic made them.
fn has_all(events: &[Value]) -> bool {
    let decision = events.iter().any(|e| {
        e["type"] == "decision"
            && e["action"] == "deny"
            && e["rule"].as_str().unwrap_or("").contains("no-admin")
    });
    let refusal = events
        .iter()
        .any(|e| e["type"] == "refusal" && e["reason"] == "foreign_sni" && e["layer"] == "gateway");
    let masked = events
        .iter()
        .any(|e| e["type"] == "masked" && e["rule"] == "github-pat" && e["place"] == "request body");
    decision && refusal && masked
}

#[test]
fn metrics_count_exactly_what_happened_and_the_sinks_get_every_event_without_the_secret() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let syslog_path = tmp.path().join("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    syslog.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let metrics_port = free_port();
    let hook_port = free_port();
    let hook_ca = TestCa::new();
    let hook_ca_file = tmp.path().join("siem-ca.pem");
    std::fs::write(&hook_ca_file, hook_ca.pem()).unwrap();
    let sink_secret = "Bearer sink-receiver-secret-4f9a1c";
    let toml = |addr: SocketAddr| {
        format!(
            "[policy]\nfile = \"{}\"\napi_url = \"https://api.github.com:{}\"\n\n\
             [approvals]\nsocket = \"{}\"\n\
             [telemetry]\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
             [telemetry.syslog]\nsocket = \"{}\"\n\
             [telemetry.webhook]\nurl = \"https://siem.test:{hook_port}/ingest/path-secret\"\nca = \"{}\"\n\
             backoff_ms = 100\nmax_backoff_ms = 400\ntimeout_secs = 2\n\
             headers = {{ authorization = \"{sink_secret}\" }}\n",
            policy.display(),
            addr.port(),
            tmp.path().join("control.sock").display(),
            syslog_path.display(),
            hook_ca_file.display(),
        )
    };
    let s = TlsGateway::start_tweaked(&["api.github.com"], true, None, None, &toml, &|spec| {
        spec.overrides
            .push(("siem.test".into(), vec!["127.0.0.1".into()]))
    });
    let (_, before) = scrape(metrics_port);

    let token = github_token("Hx5nQ2wL8rT1yU4iO7pA3sD6fG9jK0");
    let began = Instant::now();
    // Allowed.
    let ok = s.curl("api.github.com", "/zen", &["--fail"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Refused by the policy, answered by the gateway.
    let denied = s.curl(
        "api.github.com",
        "/admin/users",
        &["-o", "/dev/null", "-w", "%{http_code}"],
    );
    assert_eq!(String::from_utf8_lossy(&denied.stdout), "403");
    // Allowed, with a token in its body: masked in the record, counted, streamed by rule.
    let body = format!("{{\"note\": \"my token is {token}\"}}");
    let masked = s.curl("api.github.com", "/sink", &["--fail", "--data", &body]);
    assert!(
        masked.status.success(),
        "{}",
        String::from_utf8_lossy(&masked.stderr)
    );
    // A name the gateway neither intercepts nor passes through: refused at the TLS peek.
    let foreign = s.curl("evil.example", "/", &[]);
    assert!(!foreign.status.success(), "a foreign name got through");
    let took = began.elapsed();
    // The webhook was down all along: nothing waited for it (each curl alone would have
    // timed out after 2 s per POST attempt had it been in the way).
    assert!(
        took < Duration::from_secs(8),
        "traffic took {took:?} with the webhook down"
    );

    let (text, after) = eventually("the counters", Duration::from_secs(10), || {
        let (text, after) = scrape(metrics_port);
        (delta(
            &before,
            &after,
            "ghgate_masked_total{rule=\"github-pat\",place=\"request body\"}",
        ) >= 1.0)
            .then_some((text, after))
    });
    for (series, moved) in [
        ("ghgate_connections_redirected_total", 4.0),
        (
            "ghgate_connections_refused_total{layer=\"gateway\",reason=\"foreign_sni\"}",
            1.0,
        ),
        (
            "ghgate_connections_refused_total{layer=\"kernel\",reason=\"port_not_allowed\"}",
            0.0,
        ),
        (
            "ghgate_exchanges_total{kind=\"rest-api\",answered_by=\"upstream\",status=\"2xx\"}",
            2.0,
        ),
        (
            "ghgate_exchanges_total{kind=\"rest-api\",answered_by=\"gateway\",status=\"4xx\"}",
            1.0,
        ),
        ("ghgate_decisions_total{action=\"allow\",outcome=\"passed\"}", 2.0),
        ("ghgate_decisions_total{action=\"deny\",outcome=\"refused\"}", 1.0),
        (
            "ghgate_masked_total{rule=\"github-pat\",place=\"request body\"}",
            1.0,
        ),
        ("ghgate_approvals_pending", 0.0),
    ] {
        assert_eq!(delta(&before, &after, series), moved, "{series}:\n{text}");
    }
    assert!(after["ghgate_record_store_bytes"] > 0.0, "{text}");
    assert_eq!(after["ghgate_record_failing"], 0.0);
    // The gateway's own log: a line per exchange, and a decision line only where it says more
    // than the exchange line (the refusal by rule); the two allowed by the default are counted
    // above and recorded, not logged twice.
    let logs =
        s.gw.wait_log("three exchange lines", Duration::from_secs(10), |l| {
            l.iter().filter(|l| l["message"] == "exchange").count() >= 3
        });
    let decisions: Vec<_> = logs
        .iter()
        .filter(|l| l["message"] == "policy decision")
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(
        (decisions[0]["action"].as_str(), decisions[0]["rule"].as_str()),
        (Some("deny"), Some("rule #1 \"no-admin\""))
    );
    assert!(!text.contains(&token), "the token is in /metrics");

    // Syslog got each event as an RFC 5424 datagram whose message is the record's JSON.
    let mut datagrams = Vec::new();
    let syslog_events = eventually("the syslog datagrams", Duration::from_secs(10), || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = syslog.recv(&mut buf) {
            datagrams.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let events: Vec<Value> = datagrams
            .iter()
            .map(|d| {
                assert!(
                    d.starts_with('<') && d.contains(">1 ") && d.contains(" ghgate "),
                    "{d}"
                );
                serde_json::from_str(d.split_once(" - ").unwrap().1).unwrap()
            })
            .collect();
        has_all(&events).then_some(events)
    });
    // Anything written after the last of them would come now.
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = syslog.recv(&mut buf) {
        datagrams.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        datagrams.len(),
        syslog_events.len(),
        "events after the last expected one: {datagrams:?}"
    );
    let kinds: Vec<&str> = syslog_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
    assert_eq!(
        (count("decision"), count("masked"), count("refusal"), kinds.len()),
        (3, 1, 1, 5),
        "one decision per exchange, one masking, one refusal: {kinds:?}"
    );
    assert!(
        datagrams.iter().all(|d| !d.contains(&token)),
        "the token reached syslog"
    );
    assert!(
        datagrams
            .iter()
            .any(|d| d.starts_with("<28>1 ") && d.contains(" refusal - ")),
        "a refusal is a daemon.warning entry: {datagrams:?}"
    );

    // The webhook failed meanwhile (counted, logged once), and nothing was sent.
    eventually("failed webhook sends", Duration::from_secs(10), || {
        let (_, m) = scrape(metrics_port);
        (m["ghgate_telemetry_send_failures_total{sink=\"webhook\"}"] >= 2.0).then_some(())
    });
    let (_, m) = scrape(metrics_port);
    assert_eq!(
        m["ghgate_telemetry_events_total{sink=\"webhook\",result=\"sent\"}"],
        0.0
    );
    assert_eq!(
        m["ghgate_telemetry_buffered{sink=\"webhook\"}"] as usize,
        syslog_events.len(),
        "the webhook holds what syslog sent"
    );
    // It comes back: the buffered lines arrive, the same events syslog got, none dropped.
    let receiver = Receiver::start(hook_port, &hook_ca, &["siem.test"]);
    let received = eventually("the webhook's lines", Duration::from_secs(15), || {
        let lines = receiver.lines();
        (lines.len() >= syslog_events.len()).then_some(lines)
    });
    assert_eq!(
        received, syslog_events,
        "the webhook got the events syslog got, in order"
    );
    assert!(has_all(&received));
    for (body, authorization) in receiver.bodies.lock().unwrap().iter() {
        assert!(!body.contains(&token), "the token reached the webhook");
        assert_eq!(authorization, sink_secret, "the configured header is sent");
    }
    let (text, m) = scrape(metrics_port);
    assert_eq!(
        m["ghgate_telemetry_events_total{sink=\"webhook\",result=\"sent\"}"] as usize,
        received.len()
    );
    assert_eq!(
        m["ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"}"],
        0.0
    );
    assert_eq!(m["ghgate_telemetry_buffered{sink=\"webhook\"}"], 0.0, "{text}");
    // The log said when the webhook failed and when it recovered, once each, without the
    // receiver's secrets.
    let log = s.gw.log_text();
    assert_eq!(log.matches("cannot send events").count(), 1, "{log}");
    assert!(log.contains("sending events again"), "{log}");
    assert!(
        !log.contains("sink-receiver-secret") && !log.contains("path-secret"),
        "{log}"
    );
    assert!(!log.contains(&token));
}

#[test]
fn the_metrics_endpoint_answers_only_get_metrics() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let s = TlsGateway::start(
        &["api.github.com"],
        true,
        None,
        &format!("[telemetry]\nmetrics = \"127.0.0.1:{port}\"\n"),
    );
    let status = |args: &[&str], path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(args)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&[], "/metrics"), "200");
    assert_eq!(status(&["-X", "POST"], "/metrics"), "405");
    assert_eq!(status(&[], "/"), "404");
    assert_eq!(status(&[], "/metrics/../debug"), "404");
    // No sinks configured: none is listed.
    let (text, _) = scrape(port);
    assert!(!text.contains("ghgate_telemetry_buffered{"), "{text}");
    drop(s);
}

/// A webhook that accepts connections and never answers (a hung receiver): requests through
/// the gateway take no longer for it, and its buffer holds no more than its bound, the rest
/// counted dropped.
#[test]
fn a_hung_webhook_never_delays_traffic_and_its_buffer_is_bounded() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = hung.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for tcp in hung.incoming().flatten() {
            keep.lock().unwrap().push(tcp); // read nothing, answer nothing, close nothing
        }
    });
    let hook_ca = TestCa::new();
    let hook_ca_file = tmp.path().join("siem-ca.pem");
    std::fs::write(&hook_ca_file, hook_ca.pem()).unwrap();
    let metrics_port = free_port();
    let toml = |_: SocketAddr| {
        format!(
            "[telemetry]\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
             [telemetry.webhook]\nurl = \"https://siem.test:{hook_port}/ingest\"\nca = \"{}\"\n\
             timeout_secs = 30\nbuffer = 2\nbatch = 1\n",
            hook_ca_file.display(),
        )
    };
    let s = TlsGateway::start_tweaked(&["api.github.com"], true, None, None, &toml, &|spec| {
        spec.overrides
            .push(("siem.test".into(), vec!["127.0.0.1".into()]))
    });
    // The first event's POST hangs from here on.
    let warm = s.curl("evil.example", "/", &[]);
    assert!(!warm.status.success());
    eventually("the webhook's connection", Duration::from_secs(10), || {
        (!held.lock().unwrap().is_empty()).then_some(())
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        let began = Instant::now();
        let out = s.curl("evil.example", "/", &[]);
        assert!(!out.status.success(), "a foreign name got through");
        slowest = slowest.max(began.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?} while the webhook hung (its timeout is 30 s)"
    );
    let (text, m) = eventually("the refusals counted", Duration::from_secs(10), || {
        let (text, m) = scrape(metrics_port);
        (m["ghgate_connections_refused_total{layer=\"gateway\",reason=\"foreign_sni\"}"] >= 7.0)
            .then_some((text, m))
    });
    // Seven refusals, at most two held (one of them in flight): five or more dropped.
    let buffered = m["ghgate_telemetry_buffered{sink=\"webhook\"}"];
    let dropped = m["ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"}"];
    assert!(buffered <= 2.0, "{text}");
    assert!(dropped >= 5.0, "{text}");
    assert_eq!(
        m["ghgate_telemetry_events_total{sink=\"webhook\",result=\"sent\"}"],
        0.0
    );
    // Only labels from closed sets: no URL, path or name a client chose.
    assert!(
        !text.contains("evil.example") && !text.contains("siem.test"),
        "{text}"
    );
}
