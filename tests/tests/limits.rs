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
    fn raw_client(&self, payload: &str, pause: f64) -> String;
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
import socket, ssl, sys, time
host, port, ca, payload, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode(), float(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
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
        let out = self
            .gw
            .exec("python3")
            .args(["-c", script, &self.upstream.addr.ip().to_string()])
            .arg(self.upstream.addr.port().to_string())
            .arg(&self.ca_file)
            .arg(payload)
            .arg(pause.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
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

#[test]
fn idle_keep_alive_connections_are_closed() {
    if !privileged() {
        return;
    }
    let s = setup("header_read_timeout_secs = 1");
    // One request, then silence: the gateway closes the idle connection, as it would a slow head.
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))), server_hostname="api.github.com")
s.sendall(b"GET /first HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
s.settimeout(10)
first = b""
# The whole response (head and body may arrive in separate reads), then only the close.
while b"\r\n\r\n" not in first:
    first += s.recv(4096)
head, _, body = first.partition(b"\r\n\r\n")
lengths = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
if lengths:
    while len(body) < lengths[0]:
        body += s.recv(4096)
else:
    # Masked text bodies go out chunked (masking may change their length).
    while not body.endswith(b"0\r\n\r\n"):
        body += s.recv(4096)
start = time.monotonic()
try:
    rest = s.recv(4096)
    print(f"{first.split(b' ')[1].decode()} closed={not rest} after={time.monotonic() - start:.1f}")
except socket.timeout:
    print(f"{first.split(b' ')[1].decode()} still open after 10 s")
"#;
    let out =
        s.gw.exec("python3")
            .args(["-c", script, &s.upstream.addr.ip().to_string()])
            .arg(s.upstream.addr.port().to_string())
            .arg(&s.ca_file)
            .output()
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.starts_with("200 closed=True"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: f64 = text.rsplit('=').next().unwrap().parse().unwrap();
    assert!(after < 5.0, "closed only after {after} s: {text}");
}

#[test]
fn http2_streams_beyond_the_limit_wait_and_an_idle_connection_is_closed() {
    if !privileged() {
        return;
    }
    let s = setup("max_concurrent_streams = 2\nidle_timeout_secs = 2");
    // Each /sse?n=2 stream takes about 1.4 s upstream.
    let out =
        s.gw.exec(ghgate_e2e::bin("ghgate-probe"))
            .args(["h2streams", &s.upstream.addr.to_string(), "api.github.com"])
            .arg(&s.ca_file)
            .args(["/sse?n=2", "--streams", "4", "--wait-secs", "15"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
