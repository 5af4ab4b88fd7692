//! Limits on terminated connections: each breach gets the right answer and a log line, and
//! other connections carry on. Clients are real (curl, and Python's ssl module for the
//! misbehaving ones), inside the intercepted cgroup.
use std::time::Duration;

use ghgate_e2e::{https::TlsGateway, privileged};

fn setup(http: &str) -> TlsGateway {
    TlsGateway::start(&["api.github.com"], true, None, &format!("[http]\n{http}\n"))
}

trait Limits {
    fn codes(&self, extra: &[&str], path: &str) -> String;
    fn python(&self, script: &str, args: &[&str]) -> String;
    fn raw_client(&self, payload: &str, pause: f64) -> String;
    fn keep_alive(&self, steps: &[&str]) -> Vec<serde_json::Value>;
    fn probe(&self, mode: &str, name: &str, args: &[&str]) -> serde_json::Value;
    fn limit_logged(&self) -> serde_json::Value;
}

impl Limits for TlsGateway {
    /// The status code of each request of one HTTP/1.1 curl run (`extra` may add URLs).
    fn codes(&self, extra: &[&str], path: &str) -> String {
        let mut args = vec!["--http1.1", "-o", "/dev/null", "-w", "%{http_code}\n"];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&self.curl("api.github.com", path, &args).stdout).into_owned()
    }

    fn raw_client(&self, payload: &str, pause: f64) -> String {
        let script = r#"
payload, pause = sys.argv[4].encode(), float(sys.argv[5])
ctx = tls_context("http/1.1")
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="api.github.com")
s.settimeout(20)
try:
    s.sendall(payload[:-1]); time.sleep(pause); s.sendall(payload[-1:])
    data = s.recv(4096)
    print(data.split(b"\r\n")[0].decode() if data else "CLOSED")
except (ConnectionError, ssl.SSLError, BrokenPipeError):
    print("CLOSED")
except socket.timeout:
    print("TIMEOUT")
"#;
        self.python(script, &[payload, &pause.to_string()])
    }

    /// Runs `script` with the upstream's address and the CA file, then `args`: its stdout.
    fn python(&self, script: &str, args: &[&str]) -> String {
        let out = self
            .gw
            .exec("python3")
            .args([
                "-c",
                &format!("{PROLOGUE}{script}"),
                &self.upstream.addr.ip().to_string(),
            ])
            .arg(self.upstream.addr.port().to_string())
            .arg(&self.ca_file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// One connection through `steps` (see [`KEEP_ALIVE_CLIENT`]): a JSON value a step.
    fn keep_alive(&self, steps: &[&str]) -> Vec<serde_json::Value> {
        self.python(KEEP_ALIVE_CLIENT, steps)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `ghgate-probe MODE upstream NAME ca ARGS…`: its JSON answer.
    fn probe(&self, mode: &str, name: &str, args: &[&str]) -> serde_json::Value {
        let out = self
            .gw
            .exec(ghgate_e2e::bin("ghgate-probe"))
            .args([mode, &self.upstream.addr.to_string(), name])
            .arg(&self.ca_file)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn limit_logged(&self) -> serde_json::Value {
        let logs = self
            .gw
            .wait_log("a limit log line", Duration::from_secs(10), |l| {
                l.iter()
                    .any(|l| l["message"] == "client connection closed on a protocol error or limit")
            });
        logs.into_iter()
            .find(|l| l["message"] == "client connection closed on a protocol error or limit")
            .unwrap()
    }
}

#[test]
fn oversized_headers_get_431_and_others_carry_on() {
    if !privileged() {
        return;
    }
    let s = setup("max_header_bytes = 8192");
    let big = format!("X-Big: {}", "a".repeat(20_000));
    assert_eq!(s.codes(&["-H", &big], "/user").trim(), "431");
    let line = s.limit_logged();
    assert_eq!(line["comm"], "curl", "{line}");
    assert_eq!(s.codes(&[], "/user").trim(), "200");
    assert_eq!(
        s.upstream.served(),
        1,
        "the oversized request never reached the upstream"
    );
}

#[test]
fn malformed_http_gets_400() {
    if !privileged() {
        return;
    }
    let s = setup("");
    assert_eq!(s.raw_client("GARBAGE\r\n\r\n", 0.0), "HTTP/1.1 400 Bad Request");
    s.limit_logged();
    assert_eq!(s.codes(&[], "/user").trim(), "200");
}

#[test]
fn slow_request_heads_are_cut_off() {
    if !privileged() {
        return;
    }
    let s = setup("header_read_timeout_secs = 1");
    // The last byte of the head comes after 4 s: past the 1 s limit.
    let start = std::time::Instant::now();
    let answer = s.raw_client("GET /user HTTP/1.1\r\nHost: api.github.com\r\n\r\n", 4.0);
    assert_ne!(answer, "HTTP/1.1 200 OK", "a slowloris head was served");
    let line = s.limit_logged();
    assert!(line["error"].as_str().unwrap().contains("in time"), "{line}");
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(s.upstream.served(), 0);
    assert_eq!(
        s.codes(&[], "/user").trim(),
        "200",
        "other connections are unaffected"
    );
}

#[test]
fn request_rate_per_connection_is_limited_with_429() {
    if !privileged() {
        return;
    }
    let s = setup("max_requests_per_second = 5");
    // One curl, one connection, twelve requests back to back.
    let urls: Vec<String> = (0..11)
        .map(|i| s.url("api.github.com", &format!("/r{i}")).0)
        .collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    // `-o /dev/null` covers only the first URL; the status codes are the three-digit lines.
    let out = s.codes(&args, "/r11");
    let codes: Vec<&str> = out
        .lines()
        .filter(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(codes.len(), 12, "{codes:?}");
    assert!(codes[..5].iter().all(|c| *c == "200"), "{codes:?}");
    assert!(codes.contains(&"429"), "{codes:?}");
    let logs = s.gw.logs();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "request rate limit exceeded on one connection")
    );
}

/// A raw HTTP/1.1 client over TLS (Python's ssl module) that keeps one connection through
/// `steps` (`get PATH`, `sleep SECS`, `trickle HEAD_PREFIX` one byte every 0.25 s until the
/// gateway closes, `post PATH N` whose N body bytes trickle over 3 s, `wait_close`), printing one
/// JSON line per step with what it saw and how long it took.
/// What every script [`Limits::python`] runs starts with: the modules the scripts use, the
/// upstream's address and the CA file from the arguments, and a TLS context offering one
/// protocol.
const PROLOGUE: &str = r#"
import json, os, socket, ssl, struct, subprocess, sys, time
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def tls_context(alpn):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols([alpn])
    return ctx
"#;

/// `connect()`: an HTTP/1.1 connection through the gateway, answered 200 and held open; None
/// if it was refused or not answered.
const HELD_CONNECTION: &str = r#"
ctx = tls_context("http/1.1")
def connect():
    s = socket.create_connection((host, port), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname="api.github.com")
        t.sendall(b"GET /held HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        if not t.recv(64).startswith(b"HTTP/1.1 200"):
            raise OSError("no answer")
        return t
    except (OSError, ssl.SSLError):
        s.close()
        return None
"#;

const KEEP_ALIVE_CLIENT: &str = r#"
ctx = tls_context("http/1.1")
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="api.github.com")
s.settimeout(20)
pending = b""

def response():
    # One whole response: its head, then its Content-Length or chunked body.
    global pending
    data = pending
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    if lengths:
        while len(body) < lengths[0]:
            body += s.recv(65536)
        pending = body[lengths[0]:]
        body = body[:lengths[0]]
    else:
        while b"0\r\n\r\n" not in body:
            body += s.recv(65536)
        body, _, pending = body.partition(b"0\r\n\r\n")
    return {"status": int(head.split(b" ")[1]), "body": body[-40:].decode(errors="replace")}

def closed_after(start):
    try:
        rest = s.recv(4096)
        return {"closed": not rest, "after": time.monotonic() - start}
    except (ConnectionError, ssl.SSLError):
        return {"closed": True, "after": time.monotonic() - start}
    except socket.timeout:
        return {"closed": False, "after": time.monotonic() - start}

for step in sys.argv[4:]:
    verb, _, arg = step.partition(" ")
    start = time.monotonic()
    out = {"step": step}
    try:
        if verb == "get":
            s.sendall(f"GET {arg} HTTP/1.1\r\nHost: api.github.com\r\n\r\n".encode())
            out["response"] = response()
        elif verb == "post":
            path, n = arg.split(" ")
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: {n}\r\n\r\n".encode())
            for _ in range(int(n)):
                time.sleep(3.0 / int(n))
                s.sendall(b"b")
            out["response"] = response()
        elif verb == "sleep":
            time.sleep(float(arg))
        elif verb == "trickle":
            # A head that never ends, one byte at a time: bytes keep moving, so only a head
            # deadline can end it.
            head = arg.encode() + b"\r\nX-Slow: " + b"a" * 200
            for i in range(len(head)):
                s.settimeout(0.25)
                try:
                    s.sendall(head[i:i + 1])
                    if not s.recv(4096):
                        break
                except socket.timeout:
                    continue
                except (ConnectionError, ssl.SSLError, BrokenPipeError):
                    break
            s.settimeout(20)
            out.update(closed_after(start))
        elif verb == "wait_close":
            out.update(closed_after(start))
    except (ConnectionError, ssl.SSLError, BrokenPipeError) as e:
        out["error"] = str(e)
        out["after"] = time.monotonic() - start
    print(json.dumps(out), flush=True)
"#;

#[test]
fn keep_alive_connections_wait_for_the_idle_timeout_not_the_head_timeout() {
    if !privileged() {
        return;
    }
    // Head deadline 1 s, idle 4 s: quiet for 2.5 s between requests is idleness, not a slow head.
    let s = setup("header_read_timeout_secs = 1\nidle_timeout_secs = 4");
    let steps = s.keep_alive(&["get /first", "sleep 2.5", "get /second", "wait_close"]);
    assert_eq!(steps[0]["response"]["status"], 200, "{steps:?}");
    assert_eq!(
        steps[2]["response"]["status"], 200,
        "the second request on a connection quiet for 2.5 s: {steps:?}"
    );
    // Then silence: closed by the idle timeout (4 s, checked each second), not the head timer.
    let close = &steps[3];
    assert_eq!(close["closed"], true, "{steps:?}");
    let after = close["after"].as_f64().unwrap();
    assert!(
        (2.5..12.0).contains(&after),
        "an idle connection closed after {after} s (idle timeout 4 s): {steps:?}"
    );
    s.gw.wait_log("the idle close", Duration::from_secs(5), |lines| {
        lines
            .iter()
            .any(|l| l["message"] == "idle client connection closed")
    });
    assert_eq!(s.upstream.served(), 2);
}

#[test]
fn a_slow_head_after_an_idle_pause_is_cut_at_the_head_deadline() {
    if !privileged() {
        return;
    }
    let s = setup("header_read_timeout_secs = 1\nidle_timeout_secs = 30");
    // A request, a pause longer than the head deadline, then a head that trickles in one byte
    // every 0.25 s and never ends: bytes keep moving (so the idle timeout never fires), and the
    // deadline runs from the head's first byte.
    let steps = s.keep_alive(&[
        "get /first",
        "sleep 2.5",
        "trickle GET /never HTTP/1.1\r\nHost: api.github.com",
    ]);
    assert_eq!(steps[0]["response"]["status"], 200, "{steps:?}");
    let cut = &steps[2];
    assert_eq!(cut["closed"], true, "the slowloris head was not cut: {steps:?}");
    let after = cut["after"].as_f64().unwrap();
    assert!(
        (0.5..10.0).contains(&after),
        "a trickled head cut after {after} s (deadline 1 s from its first byte): {steps:?}"
    );
    let line = s.limit_logged();
    assert!(line["error"].as_str().unwrap().contains("in time"), "{line}");
    assert_eq!(s.upstream.served(), 1, "the trickled head never went upstream");
}

#[test]
fn a_slow_request_body_is_not_a_slow_head() {
    if !privileged() {
        return;
    }
    let s = setup("header_read_timeout_secs = 1\nidle_timeout_secs = 30");
    // The head arrives at once; its 12-byte body trickles over 3 s, past the head deadline.
    let steps = s.keep_alive(&["post /sink 12", "get /after"]);
    assert_eq!(steps[0]["response"]["status"], 200, "{steps:?}");
    assert!(
        steps[0]["response"]["body"]
            .as_str()
            .unwrap()
            .contains("received=12"),
        "{steps:?}"
    );
    assert_eq!(steps[1]["response"]["status"], 200, "{steps:?}");
}

#[test]
fn an_upgraded_connection_is_not_timed_as_a_head() {
    if !privileged() {
        return;
    }
    let s = TlsGateway::start(
        &["api.githubcopilot.com"],
        true,
        None,
        "[http]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 30\n",
    );
    // Messages 2.5 s apart on a WebSocket: each is read by the upgraded connection, never as
    // the first byte of a head.
    let r = s.probe(
        "ws",
        "api.githubcopilot.com",
        &["--pause-ms", "2500", "one", "two", "three"],
    );
    assert_eq!(r["status"], "HTTP/1.1 101 Switching Protocols", "{r}");
    assert_eq!(
        r["replies"],
        serde_json::json!(["echo: one", "echo: two", "echo: three"]),
        "{r}"
    );
}

#[test]
fn an_http2_connection_quiet_past_the_head_timeout_carries_on() {
    if !privileged() {
        return;
    }
    let s = setup("header_read_timeout_secs = 1\nidle_timeout_secs = 4");
    // A first stream, 2.5 s of quiet, a second stream on the same connection, then silence.
    let r = s.probe(
        "h2streams",
        "api.github.com",
        &[
            "/user",
            "--streams",
            "1",
            "--pause-ms",
            "2500",
            "--wait-secs",
            "15",
        ],
    );
    assert_eq!(r["alpn"], "h2", "{r}");
    assert_eq!(r["first"], 200, "{r}");
    assert_eq!(r["statuses"], serde_json::json!([200]), "{r}");
    let closed = r["closed_after"]
        .as_f64()
        .unwrap_or_else(|| panic!("the idle connection was not closed: {r}"));
    assert!(
        (2.5..12.0).contains(&closed),
        "closed after {closed} s idle (idle timeout 4 s): {r}"
    );
}

#[test]
fn http2_streams_beyond_the_limit_wait_and_an_idle_connection_is_closed() {
    if !privileged() {
        return;
    }
    let s = setup("max_concurrent_streams = 2\nidle_timeout_secs = 2");
    // Each /sse?n=2 stream takes about 1.4 s upstream.
    let r = s.probe(
        "h2streams",
        "api.github.com",
        &["/sse?n=2", "--streams", "4", "--wait-secs", "15"],
    );
    assert_eq!(r["alpn"], "h2", "{r}");
    assert_eq!(r["statuses"], serde_json::json!([200, 200, 200, 200]), "{r}");
    // Two at a time: the last two start only when the first two have ended.
    let last = r["done_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        last >= 2.5,
        "4 streams over a limit of 2 ended after {last} s: {r}"
    );
    // Then nothing moves, and the gateway closes the connection after its idle timeout.
    let closed = r["closed_after"]
        .as_f64()
        .unwrap_or_else(|| panic!("the idle connection was not closed: {r}"));
    assert!((1.5..10.0).contains(&closed), "closed after {closed} s idle: {r}");
    s.gw.wait_log("the idle close", Duration::from_secs(5), |lines| {
        lines
            .iter()
            .any(|l| l["message"] == "idle client connection closed")
    });
}

/// Started as a systemd service starts by default (a soft limit of open files far below the
/// hard one; here 256 of 8,192), the gateway raises its own limit to the hard one: 400 clients
/// holding a connection each are all served (their TLS handshakes complete), and one more
/// request gets through after. Left at 256, the gateway handshook 199 and the rest waited.
#[test]
fn many_held_connections_do_not_run_the_gateway_out_of_open_files() {
    if !privileged() {
        return;
    }
    let s = TlsGateway::start_tweaked(
        &["api.github.com"],
        true,
        None,
        None,
        &|_| String::new(),
        &|spec| {
            spec.open_files = Some((256, 8192));
        },
    );
    let pid = s.gw.pid().expect("the gateway's pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open files limit")
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3..5], ["8192", "8192"], "{limits}");
    let raised =
        s.gw.logs()
            .into_iter()
            .find(|l| l["message"] == "raised the open files limit to the hard limit")
            .expect("the raise is logged");
    assert_eq!(
        (raised["from"].as_u64(), raised["to"].as_u64()),
        (Some(256), Some(8192))
    );

    let held = s.python(
        r#"
n = int(sys.argv[4])
ctx = tls_context("http/1.1")
held, failed = [], 0
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        held.append(ctx.wrap_socket(s, server_hostname="api.github.com"))
    except (OSError, ssl.SSLError):
        failed += 1
        if failed >= 3:
            break
print(len(held))
"#,
        &["400"],
    );
    assert_eq!(held, "400", "connections handshaken while the others were held");
    assert_eq!(s.codes(&[], "/after").trim(), "200");
}

/// One process holding as many connections as `[http] max_connections_per_process` allows gets
/// its further connections closed at once, logged once; another process is served meanwhile,
/// and the first is served again once it has closed some.
#[test]
fn one_process_cannot_hold_more_connections_than_its_cap() {
    if !privileged() {
        return;
    }
    let s = setup("max_connections_per_process = 50");
    let out = s.python(
        &format!(
            "{HELD_CONNECTION}{}",
            r#"
held, refused = [], 0
for _ in range(60):
    t = connect()
    if t: held.append(t)
    else: refused += 1
other = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
    "--resolve", f"api.github.com:{port}:{host}", f"https://api.github.com:{port}/other"],
    capture_output=True, text=True).stdout
for t in held[:10]: t.close()
time.sleep(0.5)
again = connect() is not None
print(len(held), refused, other, again)
"#
        ),
        &[],
    );
    assert_eq!(
        out, "50 10 200 True",
        "held, refused, another process's status, served again"
    );
    let logged = s.gw.logs_mentioning("max_connections_per_process");
    assert_eq!(logged.len(), 1, "logged once, not per refusal: {logged:?}");
    assert_eq!(logged[0]["held"], 50);
}

/// A process that forks gets a process cap per child, so the processes of one cgroup share
/// `[http] max_connections_per_cgroup`: three children of 20 connections each, under a process
/// cap of 50, hold 40 together and the rest are closed, logged once. A process in a cgroup
/// nested below (as a container's is) has a cap of its own and is served meanwhile; and once the
/// children close theirs, the cgroup is served again.
#[test]
fn forked_processes_cannot_hold_more_connections_than_their_cgroup_s_cap() {
    if !privileged() {
        return;
    }
    let metrics = ghgate_e2e::free_port();
    let s = setup(&format!(
        "max_connections_per_process = 50\nmax_connections_per_cgroup = 40\n\
         [telemetry]\nmetrics = \"127.0.0.1:{metrics}\""
    ));
    let nested = s.cg.child("container");
    let out = s.python(
        &format!(
            "{HELD_CONNECTION}{}",
            r#"
nested = sys.argv[4]
children = []
for _ in range(3):
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r); os.close(go_w)
        held = [t for t in (connect() for _ in range(20)) if t]
        os.write(w, f"{len(held)}\n".encode())
        os.read(go_r, 1)
        for t in held: t.close()
        os.write(w, b"closed\n")
        os._exit(0)
    os.close(w); os.close(go_r)
    f = os.fdopen(r)
    children.append((pid, f, go_w, int(f.readline())))
held = sum(c[3] for c in children)
curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
    "--resolve", f"api.github.com:{port}:{host}", f"https://api.github.com:{port}/other"]
mine = subprocess.run(curl, capture_output=True, text=True).stdout
def in_nested():
    with open(os.path.join(nested, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
other = subprocess.run(curl, capture_output=True, text=True, preexec_fn=in_nested).stdout
for pid, f, go_w, _ in children:
    os.write(go_w, b"x")
    f.readline()
    os.waitpid(pid, 0)
time.sleep(0.5)
again = connect() is not None
print(held, mine, other, again)
"#
        ),
        &[nested.to_str().unwrap()],
    );
    assert_eq!(
        out, "40 000 200 True",
        "held by the children together, the cgroup's next process (000: closed), a nested cgroup's, served again"
    );
    let logged = s.gw.logs_mentioning("max_connections_per_cgroup");
    assert_eq!(logged.len(), 1, "logged once, not per refusal: {logged:?}");
    assert_eq!(logged[0]["held"], 40);
    assert!(
        s.gw.logs_mentioning("max_connections_per_process").is_empty(),
        "no process reached its own cap"
    );
    // Counted: the 20 connections the children were refused, and the cgroup's curl; once the
    // script has exited, none held.
    let scrape = || -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{metrics}/metrics"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = ghgate_e2e::eventually("no connection held", Duration::from_secs(10), || {
        let text = scrape();
        text.lines()
            .any(|l| l == "ghgate_connections_held 0.0")
            .then_some(text)
    });
    for line in [
        "ghgate_connections_capped_total{cap=\"cgroup\"} 21",
        "ghgate_connections_capped_total{cap=\"process\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
}

/// The HTTP/2 "rapid reset" attack (CVE-2023-44487): one connection opens stream after stream
/// and resets each right after its HEADERS, so no stream counts against the concurrent-stream
/// limit while each may still start work. What reaches the upstream stays within the
/// connection's request rate, and another client is served meanwhile and after.
#[test]
fn http2_rapid_reset_does_not_reach_past_the_request_rate() {
    if !privileged() {
        return;
    }
    let s = setup("max_requests_per_second = 50");
    let served = s.upstream.served();
    // Reset at once: the streams are reset before the server has accepted them, and past a
    // few of those the server ends the connection (GOAWAY, ENHANCE_YOUR_CALM).
    let r = s.probe("h2reset", "api.github.com", &["/user", "--streams", "5000"]);
    let reached = s.upstream.served() - served;
    assert!(r["sent"].as_u64().unwrap() < 5000, "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("too_many_resets")),
        "{r}"
    );
    assert!(reached <= 50, "{reached} reached the upstream: {r}");
    // Reset 2 ms after each stream's HEADERS, once the server has taken it: each stream is a
    // request, and the connection's request rate (50 a second, 50 at once) bounds them.
    let r = s.probe(
        "h2reset",
        "api.github.com",
        &["/user", "--streams", "400", "--reset-after-ms", "2"],
    );
    let reached = s.upstream.served() - served - reached;
    let secs = r["secs"].as_f64().unwrap();
    assert_eq!(r["sent"], 400, "{r}");
    assert!(
        (reached as f64) <= 50.0 + 50.0 * secs + 5.0,
        "{reached} reached the upstream in {secs} s: {r}"
    );
    assert_eq!(s.codes(&[], "/after").trim(), "200");
}

/// The HTTP/2 CONTINUATION flood (CVE-2024-27316 and kin): a HEADERS frame without
/// END_HEADERS, then CONTINUATION frames without end, each a header field. The gateway must not
/// buffer them without bound: it ends the connection once the header list passes
/// `max_header_bytes`, long before the client runs out of frames, and serves others meanwhile.
#[test]
fn http2_continuation_flood_is_cut_off() {
    if !privileged() {
        return;
    }
    let s = setup("max_header_bytes = 8192");
    let out = s.python(
        r#"
ctx = tls_context("h2")
t = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="api.github.com")
assert t.selected_alpn_protocol() == "h2"
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
def literal(name, value):
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value
t.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
head = b"\x82\x87\x84" + bytes([0x41, 14]) + b"api.github.com"
t.sendall(frame(1, 0, 1, head))
sent, closed = 0, None
field = literal(b"x-flood", b"a" * 100)
t.settimeout(0.5)
for i in range(100000):
    try:
        t.sendall(frame(9, 0, 1, field * 10))
        sent += 1
    except (OSError, ssl.SSLError) as e:
        closed = type(e).__name__
        break
    if i % 50 == 0:
        try:
            data = t.recv(65536)
            if not data:
                closed = "eof"
                break
            # A GOAWAY (type 7) among the frames the server sent.
            if b"\x07\x00\x00\x00\x00\x00" in data:
                closed = "goaway"
                break
        except socket.timeout:
            pass
        except (OSError, ssl.SSLError) as e:
            closed = type(e).__name__
            break
print(sent, closed)
"#,
        &[],
    );
    eprintln!("continuation flood: {out}");
    let (sent, closed) = out.split_once(' ').unwrap();
    let sent: u64 = sent.parse().unwrap();
    // Each CONTINUATION frame carries over 1 KB of header fields: 8 KiB are a few frames.
    assert!(sent < 1000, "{out}: the gateway took {sent} CONTINUATION frames");
    assert_ne!(closed, "None", "{out}");
    assert_eq!(s.codes(&[], "/after").trim(), "200");
}
