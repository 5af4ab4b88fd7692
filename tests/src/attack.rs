//! The moves of a hostile process inside the intercepted cgroup, one function per move. Each
//! returns what it saw as one JSON value with `ok` (the move got through the socket layer),
//! `errno` (0 when none), `stage` (the call that failed) and what came back; `unsupported` when
//! the kernel lacks the protocol (so a missing protocol is never mistaken for a refusal).
//! `ghgate-probe` runs them from the command line; the tests read the JSON.
use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How a TCP-like connection is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// socket(SOCK_STREAM, IPPROTO_TCP) + connect().
    Connect,
    /// TCP Fast Open: no connect(); the first bytes go with sendto(MSG_FASTOPEN).
    FastOpen,
    /// socket(SOCK_STREAM, IPPROTO_MPTCP) + connect().
    Mptcp,
}

impl Dial {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(Self::Connect),
            "tfo" => Some(Self::FastOpen),
            "mptcp" => Some(Self::Mptcp),
            _ => None,
        }
    }
}

/// A failed call: which one, and its errno.
struct Failed(&'static str, io::Error);

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The kernel has no such protocol (or family): not a refusal.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT | libc::ENOPROTOOPT)
    )
}

fn start(addr: SocketAddr) -> Value {
    json!({"pid": std::process::id(), "uid": nix::unistd::getuid().as_raw(), "target": addr.to_string()})
}

fn fail(mut out: Value, Failed(stage, e): Failed) -> Value {
    out["ok"] = false.into();
    out["stage"] = stage.into();
    out["errno"] = errno(&e).into();
    out["error"] = e.to_string().into();
    if stage == "socket" && unsupported(&e) {
        out["unsupported"] = true.into();
    }
    out
}

/// A v4-mapped address as the plain IPv4 one a v4 server sees.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        _ => a,
    }
}

/// Opens a connection to `addr` as `dial` says; with [`Dial::FastOpen`], `first` goes out with
/// the SYN, otherwise the caller writes it.
fn open(addr: SocketAddr, dial: Dial, first: &[u8]) -> Result<TcpStream, Failed> {
    let proto = match dial {
        Dial::Mptcp => Protocol::MPTCP,
        _ => Protocol::TCP,
    };
    let sock =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(proto)).map_err(|e| Failed("socket", e))?;
    match dial {
        Dial::FastOpen => {
            sock.send_to_with_flags(first, &SockAddr::from(addr), libc::MSG_FASTOPEN)
                .map_err(|e| Failed("sendto", e))?;
        }
        _ => sock
            .connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))
            .map_err(|e| Failed("connect", e))?,
    }
    Ok(sock.into())
}

/// Reads until the peer closes, resets, or stays silent for `wait`: the bytes and how it ended.
fn read_answer(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, &'static str) {
    s.set_read_timeout(Some(wait)).ok();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, "eof"),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > 1 << 20 {
                    return (got, "enough");
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return (got, "silence");
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, "reset"),
            Err(_) => return (got, "error"),
        }
    }
}

fn connected(out: &mut Value, s: &TcpStream) {
    out["ok"] = true.into();
    out["errno"] = 0.into();
    out["local"] = s
        .local_addr()
        .map(|a| unmapped(a).to_string())
        .unwrap_or_default()
        .into();
    out["peer"] = s.peer_addr().map(|a| a.to_string()).unwrap_or_default().into();
}

/// Connects, sends `send`, and reports whatever comes back within `wait`.
pub fn talk(addr: SocketAddr, dial: Dial, send: &[u8], wait: Duration) -> Value {
    let mut out = start(addr);
    out["dial"] = format!("{dial:?}").into();
    let mut s = match open(addr, dial, send) {
        Ok(s) => s,
        Err(f) => return fail(out, f),
    };
    connected(&mut out, &s);
    if dial != Dial::FastOpen
        && !send.is_empty()
        && let Err(e) = s.write_all(send)
    {
        out["write_error"] = e.to_string().into();
    }
    let (got, ended) = read_answer(&mut s, wait);
    out["received"] = String::from_utf8_lossy(&got).into_owned().into();
    out["ended"] = ended.into();
    out
}

/// UDP (or UDP-Lite) to `addr`: sendto() on an unconnected socket, or connect() then send();
/// with a `decoy`, the socket is first connected there (an address nobody minds) and then
/// sendto() names `addr`. Any reply within a second.
pub fn udp(addr: SocketAddr, connect: bool, lite: bool, decoy: Option<SocketAddr>, send: &[u8]) -> Value {
    let mut out = start(addr);
    out["connect"] = connect.into();
    let proto = if lite { Protocol::UDPLITE } else { Protocol::UDP };
    let sock = match Socket::new(Domain::for_address(addr), Type::DGRAM, Some(proto)) {
        Ok(s) => s,
        Err(e) => return fail(out, Failed("socket", e)),
    };
    let to = SockAddr::from(addr);
    if let Some(decoy) = decoy
        && let Err(e) = sock.connect(&SockAddr::from(decoy))
    {
        return fail(out, Failed("connect-decoy", e));
    }
    let sent = if connect {
        if let Err(e) = sock.connect(&to) {
            return fail(out, Failed("connect", e));
        }
        sock.send(send).map_err(|e| Failed("send", e))
    } else {
        sock.send_to(send, &to).map_err(|e| Failed("sendto", e))
    };
    if let Err(f) = sent {
        return fail(out, f);
    }
    out["ok"] = true.into();
    out["errno"] = 0.into();
    let udp: std::net::UdpSocket = sock.into();
    udp.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let mut buf = [0u8; 1500];
    if let Ok((n, from)) = udp.recv_from(&mut buf) {
        out["reply"] = String::from_utf8_lossy(&buf[..n]).into_owned().into();
        out["from"] = from.to_string().into();
    }
    out
}

/// An SCTP stream socket connecting to `addr`.
pub fn sctp(addr: SocketAddr) -> Value {
    let out = start(addr);
    let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::SCTP)) {
        Ok(s) => s,
        Err(e) => return fail(out, Failed("socket", e)),
    };
    match sock.connect_timeout(&SockAddr::from(addr), Duration::from_secs(3)) {
        Ok(()) => {
            let mut out = out;
            out["ok"] = true.into();
            out["errno"] = 0.into();
            out
        }
        Err(e) => fail(out, Failed("connect", e)),
    }
}

/// A UDP datagram built by hand and sent on a raw IP socket (what CAP_NET_RAW allows): no UDP
/// socket, so no UDP hook, is involved.
pub fn raw_udp(addr: SocketAddrV4, send: &[u8]) -> Value {
    let mut out = start(addr.into());
    let sock = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)) {
        Ok(s) => s,
        Err(e) => return fail(out, Failed("socket", e)),
    };
    let mut packet = Vec::with_capacity(8 + send.len());
    packet.extend_from_slice(&40999u16.to_be_bytes());
    packet.extend_from_slice(&addr.port().to_be_bytes());
    packet.extend_from_slice(&((8 + send.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no checksum (allowed over IPv4)
    packet.extend_from_slice(send);
    let to = SocketAddrV4::new(*addr.ip(), 0);
    match sock.send_to(&packet, &SockAddr::from(to)) {
        Ok(_) => {
            out["ok"] = true.into();
            out["errno"] = 0.into();
            out
        }
        Err(e) => fail(out, Failed("sendto", e)),
    }
}

/// How the first bytes are sent.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    AtOnce,
    /// One byte per TCP segment (Nagle off), this long apart.
    Dribble(Duration),
    /// The first `n` bytes, then silence for the duration, then the rest.
    StallAfter(usize, Duration),
}

fn send_paced(s: &mut TcpStream, bytes: &[u8], pace: Pace) -> io::Result<()> {
    match pace {
        Pace::AtOnce => s.write_all(bytes),
        Pace::Dribble(gap) => {
            s.set_nodelay(true)?;
            for b in bytes {
                s.write_all(std::slice::from_ref(b))?;
                std::thread::sleep(gap);
            }
            Ok(())
        }
        Pace::StallAfter(n, gap) => {
            let n = n.min(bytes.len());
            s.write_all(&bytes[..n])?;
            std::thread::sleep(gap);
            s.write_all(&bytes[n..])
        }
    }
}

/// What a TLS server's first bytes say: an alert (and which), a handshake, or nothing.
fn tls_answer(out: &mut Value, got: &[u8], ended: &str) {
    let answer = match got.first() {
        None if ended == "silence" => "silence",
        None if ended == "reset" => "reset",
        None => "closed",
        Some(0x15) => "alert",
        Some(0x16) => "handshake",
        Some(_) => "other",
    };
    out["answer"] = answer.into();
    if answer == "alert" && got.len() >= 7 {
        out["alert"] = got[6].into();
    }
    if answer == "handshake" && got.len() >= 6 {
        out["handshake_type"] = got[5].into();
    }
    out["received_bytes"] = got.len().into();
    out["first_bytes"] = got
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into();
    out["ended"] = ended.into();
}

/// Sends `first` (a crafted ClientHello, or anything else) paced as asked, then `then`, and
/// reports how the other side answered within `wait`.
pub fn raw_hello(
    addr: SocketAddr,
    dial: Dial,
    first: &[u8],
    pace: Pace,
    then: &[u8],
    wait: Duration,
) -> Value {
    let mut out = start(addr);
    out["dial"] = format!("{dial:?}").into();
    let mut s = match open(addr, dial, first) {
        Ok(s) => s,
        Err(f) => return fail(out, f),
    };
    connected(&mut out, &s);
    if dial != Dial::FastOpen
        && let Err(e) = send_paced(&mut s, first, pace)
    {
        out["write_error"] = e.to_string().into();
    }
    if !then.is_empty() {
        let _ = s.write_all(then);
    }
    let (got, ended) = read_answer(&mut s, wait);
    tls_answer(&mut out, &got, ended);
    out
}

/// Whose certificates a TLS client accepts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// CAs from these PEM files.
    Files(Vec<PathBuf>),
    /// Anything at all: an attacker does not care who answers, only whether the bytes get out.
    Anything,
}

/// One HTTPS request over a real rustls handshake.
#[derive(Clone, Debug)]
pub struct Fetch {
    /// The TLS server name (an IP address sends no SNI).
    pub name: String,
    pub trust: Trust,
    /// The `Host:` header.
    pub host: String,
    pub path: String,
    /// Send the ClientHello one byte per segment, this long apart.
    pub dribble: Option<Duration>,
}

fn client_config(trust: &Trust) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let mut config = match trust {
        Trust::Files(files) => {
            let mut roots = rustls::RootCertStore::empty();
            for f in files {
                for cert in CertificateDer::pem_file_iter(f).expect("CA file") {
                    roots.add(cert.expect("CA certificate")).expect("usable CA");
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A real TLS handshake (the hello sent as `dial` and `fetch.dribble` say), then
/// `GET path` with `Host: host` over HTTP/1.1: the status line and body, or where it failed.
pub fn fetch(addr: SocketAddr, dial: Dial, fetch: &Fetch) -> Value {
    let mut out = start(addr);
    out["dial"] = format!("{dial:?}").into();
    out["sni"] = fetch.name.clone().into();
    let name =
        rustls::pki_types::ServerName::try_from(fetch.name.clone()).expect("a server name rustls accepts");
    let mut conn =
        rustls::ClientConnection::new(client_config(&fetch.trust), name).expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    let mut tcp = match open(addr, dial, &hello) {
        Ok(s) => s,
        Err(f) => return fail(out, f),
    };
    connected(&mut out, &tcp);
    if dial != Dial::FastOpen {
        let pace = fetch.dribble.map_or(Pace::AtOnce, Pace::Dribble);
        if let Err(e) = send_paced(&mut tcp, &hello, pace) {
            out["handshake"] = format!("error: {e}").into();
            return out;
        }
    }
    tcp.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            out["handshake"] = format!("error: {e}").into();
            return out;
        }
    }
    out["handshake"] = "ok".into();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ghgate-probe\r\nConnection: close\r\n\r\n",
        fetch.path, fetch.host
    );
    if let Err(e) = tls.write_all(request.as_bytes()) {
        out["error"] = format!("write: {e}").into();
        return out;
    }
    let mut response = Vec::new();
    let read = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    out["status"] = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0)
        .into();
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    out["body"] = if chunked { dechunk(body) } else { body.to_owned() }.into();
    if let Err(e) = read {
        out["read_error"] = e.to_string().into();
    }
    out
}

/// The payload of a chunked HTTP/1.1 body (as far as it is whole).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Binds and listens on `addr` (as an impostor of the gateway's listener would), reports that at
/// once through `emit`, then accepts for `hold` and reports what it got.
pub fn bind(addr: SocketAddr, reuseport: bool, hold: Duration, emit: &mut dyn FnMut(Value)) {
    let mut out = start(addr);
    let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return emit(fail(out, Failed("socket", e))),
    };
    let _ = sock.set_reuse_address(true);
    if reuseport && let Err(e) = sock.set_reuse_port(true) {
        return emit(fail(out, Failed("setsockopt", e)));
    }
    if let Err(e) = sock.bind(&SockAddr::from(addr)) {
        return emit(fail(out, Failed("bind", e)));
    }
    if let Err(e) = sock.listen(64) {
        return emit(fail(out, Failed("listen", e)));
    }
    out["ok"] = true.into();
    out["errno"] = 0.into();
    out["bound"] = true.into();
    emit(out);
    let _ = sock.set_nonblocking(true);
    let listener: std::net::TcpListener = sock.into();
    let deadline = Instant::now() + hold;
    let (mut accepted, mut received) = (0u64, Vec::new());
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, _)) => {
                accepted += 1;
                let _ = s.set_nonblocking(false);
                let (got, _) = read_answer(&mut s, Duration::from_millis(300));
                received.extend_from_slice(&got);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    emit(json!({"accepted": accepted, "received": String::from_utf8_lossy(&received)}));
}

/// Opens `count` connections to `addr` at once without sending anything, holds them for `hold`,
/// and counts how each went: connected, or refused with which errno.
pub fn flood(addr: SocketAddr, count: usize, hold: Duration) -> Value {
    let mut out = start(addr);
    let mut errnos: BTreeMap<String, u64> = BTreeMap::new();
    let (mut open_now, mut pending) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let sock = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => {
                *errnos.entry(format!("socket:{}", errno(&e))).or_default() += 1;
                continue;
            }
        };
        let _ = sock.set_nonblocking(true);
        match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => open_now.push(sock),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => pending.push(sock),
            Err(e) => *errnos.entry(errno(&e).to_string()).or_default() += 1,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for sock in pending {
            match sock.take_error() {
                Ok(Some(e)) => *errnos.entry(errno(&e).to_string()).or_default() += 1,
                _ if sock.peer_addr().is_ok() => open_now.push(sock),
                _ => still.push(sock),
            }
        }
        pending = still;
        std::thread::sleep(Duration::from_millis(20));
    }
    out["ok"] = true.into();
    out["connected"] = open_now.len().into();
    out["pending"] = pending.len().into();
    out["errnos"] = json!(errnos);
    std::thread::sleep(hold);
    out
}

/// Renames this process (its `comm`, what the kernel reports as the caller's name).
pub fn set_comm(name: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    nix::sys::prctl::set_name(&name).map_err(io::Error::from)
}

/// Forks into a child whose pid is exactly `pid` (clone3 with `set_tid`, which root may do), as
/// a process that wants the identity of a dead one would. `Ok(true)` in the child; `Ok(false)`
/// in the parent, once the child has exited.
#[allow(
    unsafe_code,
    reason = "clone3 with set_tid has no safe wrapper in nix or libc; the attack test needs a chosen pid"
)]
pub fn become_pid(pid: i32) -> io::Result<bool> {
    /// `struct clone_args` (linux/sched.h), up to `cgroup`.
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: without CLONE_VM, clone3 duplicates this (single-threaded) process as fork() does;
    // `args` and `tids` outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(true),
        child => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
            Ok(false)
        }
    }
}

/// `\r`, `\n`, `\t`, `\0`, `\\` and `\xHH` in a command-line argument, as bytes.
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let (byte, used) = match b[i + 1] {
                b'r' => (b'\r', 2),
                b'n' => (b'\n', 2),
                b't' => (b'\t', 2),
                b'0' => (0, 2),
                b'\\' => (b'\\', 2),
                b'x' if i + 4 <= b.len() => {
                    match std::str::from_utf8(&b[i + 2..i + 4])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) => (v, 4),
                        None => (b'\\', 1),
                    }
                }
                _ => (b'\\', 1),
            };
            out.push(byte);
            i += used;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_a_chunked_body() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn unescapes_what_the_tests_pass() {
        assert_eq!(unescape(r"SSH-2.0-x\r\n"), b"SSH-2.0-x\r\n");
        assert_eq!(unescape(r"a\0b\x41\\"), b"a\0bA\\");
    }
}

/// Asks `server` (any address on port 53: the kernel sends it to the gateway's resolver when
/// egress control is on) for `name`'s A records, over UDP (sendto on an unconnected socket) or
/// TCP; reports the addresses and where the answer came from. With `then_port`, connects at
/// once to the first address on that port: what a client does the moment it has an answer.
pub fn dns(server: SocketAddr, name: &str, tcp: bool, then_port: Option<u16>) -> Value {
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, RecordType},
        serialize::binary::{BinDecodable, BinEncodable},
    };
    let mut out = start(server);
    out["name"] = name.into();
    let Ok(qname) = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) else {
        out["ok"] = false.into();
        out["error"] = "bad name".into();
        return out;
    };
    let mut q = Message::new();
    q.set_id((std::process::id() & 0xffff) as u16)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true);
    q.add_query(Query::query(qname, RecordType::A));
    let query = q.to_bytes().expect("encode query");
    let reply = if tcp {
        let mut s = match TcpStream::connect_timeout(&server, Duration::from_secs(3)) {
            Ok(s) => s,
            Err(e) => return fail(out, Failed("connect", e)),
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend(&query);
        if let Err(e) = s.write_all(&framed) {
            return fail(out, Failed("send", e));
        }
        let mut len = [0u8; 2];
        if let Err(e) = s.read_exact(&mut len) {
            return fail(out, Failed("recv", e));
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if let Err(e) = s.read_exact(&mut msg) {
            return fail(out, Failed("recv", e));
        }
        out["from"] = s.peer_addr().map(|a| a.to_string()).unwrap_or_default().into();
        msg
    } else {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = match std::net::UdpSocket::bind(bind) {
            Ok(s) => s,
            Err(e) => return fail(out, Failed("socket", e)),
        };
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
        if let Err(e) = sock.send_to(&query, server) {
            return fail(out, Failed("sendto", e));
        }
        let mut buf = [0u8; 4096];
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                out["from"] = from.to_string().into();
                buf[..n].to_vec()
            }
            Err(e) => return fail(out, Failed("recv", e)),
        }
    };
    let Ok(msg) = Message::from_bytes(&reply) else {
        out["ok"] = false.into();
        out["error"] = "not a DNS answer".into();
        return out;
    };
    let addrs: Vec<IpAddr> = msg
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out["ok"] = true.into();
    out["errno"] = 0.into();
    out["rcode"] = msg.response_code().to_string().into();
    out["answers"] = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().into();
    if let (Some(port), Some(ip)) = (then_port, addrs.first()) {
        let to = SocketAddr::new(*ip, port);
        out["then"] = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
            Ok(_) => json!({"target": to.to_string(), "ok": true, "errno": 0}),
            Err(e) => {
                json!({"target": to.to_string(), "ok": false, "errno": errno(&e), "error": e.to_string()})
            }
        };
    }
    out
}
