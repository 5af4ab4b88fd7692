//! A test client: connects where it is told and reports, as one JSON line per attempt, what the
//! kernel and the server saw. Run inside the intercepted cgroup (through `ghgate exec`).
//!
//! The echo servers of the test harness answer a first line with `peer=<addr>`: the address
//! the server saw. For a direct connection that is the client's own local address; through the
//! gateway it is the gateway's upstream socket. So `proxied = server_saw != local`, decided by
//! the kernel's facts, not by anything the gateway says.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!(
        "usage: ghgate-probe connect ADDR [--count N] [--interval-ms MS]\n       ghgate-probe udp ADDR\n       ghgate-probe stream ADDR --bytes N\n       ghgate-probe ws ADDR NAME CA_FILE MESSAGE...\n       ghgate-probe h2post ADDR NAME CA_FILE PATH --bytes N\n       ghgate-probe h2streams ADDR NAME CA_FILE PATH --streams N --wait-secs S\n       ghgate-probe h2reset ADDR NAME CA_FILE PATH --streams N [--reset-after-ms MS]\n\
         attacks (one JSON line each; DIAL is connect, tfo or mptcp; TEXT takes \\r \\n \\0 \\xHH;\n         any mode takes --comm NAME (rename first) and --as-pid PID (run as a child with that pid)):\n       ghgate-probe talk ADDR [--dial DIAL] [--send TEXT] [--wait-ms MS] [--scope-id N]\n       ghgate-probe udp-send ADDR [--connect] [--lite] [--decoy ADDR] [--send TEXT]\n       ghgate-probe sctp ADDR\n       ghgate-probe raw-udp ADDR [--send TEXT]\n       ghgate-probe hello ADDR [--dial DIAL] [--sni NAME]... [--no-sni] [--ech] [--pad N] [--garbage] [--raw TEXT] [--fragment N] [--dribble-ms MS] [--stall-ms MS] [--then TEXT] [--wait-ms MS]\n       ghgate-probe fetch ADDR NAME [--dial DIAL] [--ca FILE|any]... [--host HOST] [--path PATH] [--dribble-ms MS]\n       ghgate-probe bind ADDR [--reuseport] [--hold-ms MS]\n       ghgate-probe flood ADDR --count N [--hold-ms MS]\n       ghgate-probe dns SERVER NAME [--tcp] [--connect PORT]"
    );
    std::process::exit(2)
}

/// The attack modes (see `ghgate_e2e::attack`), or None for the others.
fn attack(mode: &str, addr: SocketAddr, args: &[String]) -> Option<()> {
    use ghgate_e2e::{
        attack::{self, Dial, Fetch, Pace, Trust, unescape},
        hello::{ClientHello, garbage_record},
    };
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let all = |name: &str| -> Vec<&String> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| *a == name)
            .filter_map(|(i, _)| args.get(i + 1))
            .collect()
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let num = |name: &str, default: u64| opt(name).map_or(default, |v| v.parse().unwrap_or_else(|_| usage()));
    let ms = |name: &str, default: u64| Duration::from_millis(num(name, default));
    let text = |name: &str| opt(name).map(|t| unescape(t)).unwrap_or_default();
    let dial = opt("--dial").map_or(Dial::Connect, |d| Dial::parse(d).unwrap_or_else(|| usage()));
    let mut addr = addr;
    if let (SocketAddr::V6(v6), Some(scope)) = (&mut addr, opt("--scope-id")) {
        v6.set_scope_id(scope.parse().unwrap_or_else(|_| usage()));
    }
    let result = match mode {
        "talk" => attack::talk(addr, dial, &text("--send"), ms("--wait-ms", 1500)),
        "udp-send" => {
            let decoy = opt("--decoy").map(|d| d.parse().unwrap_or_else(|_| usage()));
            attack::udp(addr, flag("--connect"), flag("--lite"), decoy, &text("--send"))
        }
        "sctp" => attack::sctp(addr),
        "raw-udp" => match addr {
            SocketAddr::V4(v4) => attack::raw_udp(v4, &text("--send")),
            SocketAddr::V6(_) => usage(),
        },
        "hello" => {
            let bytes = if flag("--garbage") {
                garbage_record()
            } else if let Some(raw) = opt("--raw") {
                unescape(raw)
            } else {
                let mut hello = ClientHello::from_rustls("api.github.com", &[b"h2", b"http/1.1"]);
                let names: Vec<Vec<u8>> = all("--sni").iter().map(|n| unescape(n)).collect();
                if flag("--no-sni") {
                    hello.remove(ghgate_e2e::hello::SERVER_NAME);
                } else if !names.is_empty() {
                    hello.set_server_names(&names.iter().map(Vec::as_slice).collect::<Vec<_>>());
                }
                if flag("--ech") {
                    hello.push_ech();
                }
                if let Some(n) = opt("--pad") {
                    hello.pad_before_sni(n.parse().unwrap_or_else(|_| usage()));
                }
                hello.records(num("--fragment", 16 * 1024) as usize)
            };
            let pace = match (opt("--dribble-ms"), opt("--stall-ms")) {
                (Some(_), _) => Pace::Dribble(ms("--dribble-ms", 1)),
                (None, Some(_)) => Pace::StallAfter(5, ms("--stall-ms", 0)),
                (None, None) => Pace::AtOnce,
            };
            attack::raw_hello(addr, dial, &bytes, pace, &text("--then"), ms("--wait-ms", 3000))
        }
        "fetch" => {
            let name = args.get(2).unwrap_or_else(|| usage()).clone();
            let cas = all("--ca");
            let trust = if cas.iter().any(|c| *c == "any") {
                Trust::Anything
            } else {
                Trust::Files(cas.iter().map(std::path::PathBuf::from).collect())
            };
            let fetch = Fetch {
                host: opt("--host").cloned().unwrap_or_else(|| name.clone()),
                path: opt("--path").cloned().unwrap_or_else(|| "/".into()),
                dribble: opt("--dribble-ms").map(|_| ms("--dribble-ms", 1)),
                name,
                trust,
            };
            attack::fetch(addr, dial, &fetch)
        }
        "bind" => {
            attack::bind(addr, flag("--reuseport"), ms("--hold-ms", 3000), &mut |v| {
                println!("{v}")
            });
            return Some(());
        }
        "flood" => attack::flood(addr, num("--count", 100) as usize, ms("--hold-ms", 0)),
        "dns" => {
            let name = args.get(2).unwrap_or_else(|| usage());
            let then = opt("--connect").map(|p| p.parse().unwrap_or_else(|_| usage()));
            attack::dns(addr, name, flag("--tcp"), then)
        }
        _ => return None,
    };
    println!("{result}");
    Some(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        usage()
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    // Identity tricks, before any move: another name, another (dead process's) pid.
    let global = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    if let Some(name) = global("--comm") {
        ghgate_e2e::attack::set_comm(name).expect("rename the process");
    }
    if let Some(pid) = global("--as-pid") {
        match ghgate_e2e::attack::become_pid(pid.parse().unwrap_or_else(|_| usage())) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "stage": "clone3", "errno": errno, "error": e.to_string()})
                );
                return;
            }
        }
    }
    if attack(mode, addr, &args).is_some() {
        return;
    }
    let opt = |name: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    match mode.as_str() {
        "connect" => {
            let count = opt("--count").unwrap_or(1);
            let interval = Duration::from_millis(opt("--interval-ms").unwrap_or(0));
            for i in 0..count {
                println!("{}", attempt(addr, i));
                if i + 1 < count {
                    std::thread::sleep(interval);
                }
            }
        }
        "udp" => {
            let sock = UdpSocket::bind(if addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }).expect("bind");
            sock.set_read_timeout(Some(Duration::from_secs(3))).ok();
            sock.send_to(b"hello\n", addr).expect("send");
            let mut buf = [0u8; 256];
            let (n, from) = sock.recv_from(&mut buf).expect("recv");
            let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            println!(
                "{}",
                serde_json::json!({"pid": std::process::id(), "local": sock.local_addr().unwrap().to_string(), "from": from.to_string(), "reply": text})
            );
        }
        "stream" => {
            // Sends N bytes and reads the server's count back: a throughput client.
            let bytes = opt("--bytes").unwrap_or(1 << 20);
            let start = Instant::now();
            let mut s = TcpStream::connect(addr).expect("connect");
            let buf = vec![0x5au8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).expect("write");
                left -= n as u64;
            }
            s.shutdown(std::net::Shutdown::Write).ok();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).ok();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"bytes": bytes, "secs": secs, "reply": line.trim()})
            );
        }
        "h2post" => {
            // An HTTP/2-only client (ALPN offers h2 alone): POST --bytes to PATH over TLS.
            let (Some(name), Some(ca), Some(path)) = (args.get(2), args.get(3), args.get(4)) else {
                usage()
            };
            println!("{}", h2_post(addr, name, ca, path, opt("--bytes").unwrap_or(0)));
        }
        "h2streams" => {
            // One HTTP/2 connection: a first GET, then --streams concurrent GETs of PATH; then it
            // waits up to --wait-secs for the server to close the connection.
            let (Some(name), Some(ca), Some(path)) = (args.get(2), args.get(3), args.get(4)) else {
                usage()
            };
            let streams = opt("--streams").unwrap_or(1) as usize;
            let wait = Duration::from_secs(opt("--wait-secs").unwrap_or(10));
            let pause = Duration::from_millis(opt("--pause-ms").unwrap_or(0));
            println!("{}", h2_streams(addr, name, ca, path, streams, pause, wait));
        }
        "h2reset" => {
            // One HTTP/2 connection: --streams GETs of PATH, each reset (CANCEL) right after its
            // HEADERS, as fast as the connection takes them (the "rapid reset" attack).
            let (Some(name), Some(ca), Some(path)) = (args.get(2), args.get(3), args.get(4)) else {
                usage()
            };
            let streams = opt("--streams").unwrap_or(1000) as usize;
            // `--reset-after-ms N`: wait N ms before each reset (the server has accepted the
            // stream by then, so it is no longer a reset of a stream pending acceptance).
            let after = Duration::from_millis(opt("--reset-after-ms").unwrap_or(0));
            println!("{}", h2_rapid_reset(addr, name, ca, path, streams, after));
        }
        "ws" => {
            let (Some(name), Some(ca)) = (args.get(2), args.get(3)) else {
                usage()
            };
            // `--pause-ms N` first: N ms of quiet before each message after the first.
            let (pause, messages) = match args.get(4).map(String::as_str) {
                Some("--pause-ms") => (opt("--pause-ms").unwrap_or(0), &args[6..]),
                _ => (0, &args[4..]),
            };
            println!(
                "{}",
                websocket(addr, name, ca, Duration::from_millis(pause), messages)
            );
        }
        _ => usage(),
    }
}

/// A TLS client configuration trusting only `ca`, offering `alpn` alone.
fn tls_config(ca: &str, alpn: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("usable CA");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(config)
}

/// A WebSocket client over TLS (trusting only `ca`): the upgrade by hand, then tungstenite.
fn websocket(
    addr: SocketAddr,
    name: &str,
    ca: &str,
    pause: Duration,
    messages: &[String],
) -> serde_json::Value {
    use rustls::pki_types::ServerName;
    let conn = rustls::ClientConnection::new(
        tls_config(ca, b"http/1.1"),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {name}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).expect("send handshake");
    // Read the response head byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if std::io::Read::read(&mut tls, &mut byte).expect("read handshake") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut replies = Vec::new();
    if status.contains(" 101 ") {
        let mut ws = tungstenite::WebSocket::from_raw_socket(tls, tungstenite::protocol::Role::Client, None);
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            ws.send(tungstenite::Message::text(m.clone())).expect("send");
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => replies.push(t.to_string()),
                Ok(other) => replies.push(format!("{other:?}")),
                Err(e) => {
                    replies.push(format!("error: {e}"));
                    break;
                }
            }
        }
        let _ = ws.close(None);
    }
    serde_json::json!({"status": status, "replies": replies})
}

fn attempt(addr: SocketAddr, seq: u64) -> serde_json::Value {
    let start = Instant::now();
    let mut out = serde_json::json!({"seq": seq, "pid": std::process::id(), "target": addr.to_string()});
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Err(e) => {
            out["ok"] = false.into();
            out["error"] = e.to_string().into();
            out["errno"] = e.raw_os_error().unwrap_or(0).into();
            out["elapsed_us"] = (start.elapsed().as_micros() as u64).into();
        }
        Ok(mut s) => {
            out["elapsed_us"] = (start.elapsed().as_micros() as u64).into();
            // A v4-mapped local address is what a v4 server sees as a plain IPv4 peer.
            let local = s.local_addr().map(|a| match a.ip() {
                std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(v4.into(), a.port()),
                    None => a,
                },
                _ => a,
            });
            out["local"] = local.map(|a| a.to_string()).unwrap_or_default().into();
            out["peer"] = s.peer_addr().map(|a| a.to_string()).unwrap_or_default().into();
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = s.write_all(b"hello\n");
            let mut line = String::new();
            let read = BufReader::new(&s).read_line(&mut line);
            let saw = line.trim().strip_prefix("peer=").unwrap_or_default().to_string();
            out["ok"] = (read.is_ok() && !saw.is_empty()).into();
            if let Err(e) = read {
                out["error"] = e.to_string().into();
            }
            out["proxied"] = (!saw.is_empty() && saw != out["local"].as_str().unwrap_or_default()).into();
            out["server_saw"] = saw.into();
        }
    }
    out
}

/// One POST over an HTTP/2-only TLS connection; reports the negotiated ALPN, status and body.
type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// An HTTP/2-only TLS connection (ALPN offers h2 alone, trusting only `ca`): its sender, the
/// negotiated ALPN, and the connection's task (which ends when the connection closes).
/// A TLS connection to `addr` as `name`, trusting only `ca`, offering HTTP/2 alone.
async fn h2_tls(
    addr: SocketAddr,
    name: &str,
    ca: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(tls_config(ca, b"h2"))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS")
}

async fn h2_connect(
    addr: SocketAddr,
    name: &str,
    ca: &str,
) -> (H2Sender, Option<String>, tokio::task::JoinHandle<()>) {
    let tls = h2_tls(addr, name, ca).await;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, alpn, task)
}

/// A GET on an HTTP/2 connection: its status (0 when the stream failed) once its body has ended.
async fn h2_get(mut send: H2Sender, url: String) -> u16 {
    use http_body_util::BodyExt as _;
    let req = http::Request::get(url)
        .body(http_body_util::Full::default())
        .unwrap();
    match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    }
}

/// Runs `work` on a single-threaded runtime of its own (each HTTP/2 mode is one client).
fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

fn h2_streams(
    addr: SocketAddr,
    name: &str,
    ca: &str,
    path: &str,
    streams: usize,
    pause: Duration,
    wait: Duration,
) -> serde_json::Value {
    block_on(async {
        let (send, alpn, conn) = h2_connect(addr, name, ca).await;
        let url = format!("https://{name}:{}{path}", addr.port());
        // One request first, so the server's SETTINGS (its stream limit) are known.
        let first = h2_get(send.clone(), url.clone()).await;
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let (send, url) = (send.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let status = h2_get(send, url).await;
                (status, start.elapsed().as_secs_f64())
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        // The sender stays alive: a client connection with no sender left closes itself.
        let idle_from = Instant::now();
        let closed_after = tokio::time::timeout(wait, conn)
            .await
            .ok()
            .map(|_| idle_from.elapsed().as_secs_f64());
        drop(send);
        serde_json::json!({
            "alpn": alpn,
            "first": first,
            "statuses": done.iter().map(|d| d.0).collect::<Vec<_>>(),
            "done_after": done.iter().map(|d| d.1).collect::<Vec<_>>(),
            "closed_after": closed_after,
        })
    })
}

/// The rapid-reset attack: how many streams were opened and reset before the connection
/// ended (or all were), in how long, and how it ended.
fn h2_rapid_reset(
    addr: SocketAddr,
    name: &str,
    ca: &str,
    path: &str,
    streams: usize,
    after: Duration,
) -> serde_json::Value {
    block_on(async {
        let tls = h2_tls(addr, name, ca).await;
        let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let url = format!("https://{name}:{}{path}", addr.port());
        let start = Instant::now();
        let mut sent = 0;
        let mut error = None;
        for _ in 0..streams {
            let mut client = match client.clone().ready().await {
                Ok(c) => c,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            let req = http::Request::get(&url).body(()).unwrap();
            match client.send_request(req, true) {
                Ok((_, mut stream)) => {
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
            // Let the connection task write what is queued.
            tokio::task::yield_now().await;
        }
        let secs = start.elapsed().as_secs_f64();
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        serde_json::json!({
            "sent": sent,
            "secs": secs,
            "error": error,
            "ended": match ended {
                Ok(Ok(Ok(()))) => "closed".to_owned(),
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "open".to_owned(),
            },
        })
    })
}

fn h2_post(addr: SocketAddr, name: &str, ca: &str, path: &str, bytes: u64) -> serde_json::Value {
    use http_body_util::{BodyExt as _, Full};
    block_on(async {
        let (mut send, alpn, _conn) = h2_connect(addr, name, ca).await;
        let body = Full::new(bytes::Bytes::from(vec![b'p'; bytes as usize]));
        let req = http::Request::post(format!("https://{name}:{}{path}", addr.port()))
            .body(body)
            .unwrap();
        let resp = send.send_request(req).await.expect("request");
        let status = resp.status().as_u16();
        let version = format!("{:?}", resp.version());
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned());
        serde_json::json!({"alpn": alpn, "status": status, "version": version, "body": text.unwrap_or_default()})
    })
}
