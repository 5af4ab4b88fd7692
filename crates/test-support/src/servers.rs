//! Loopback servers for the tests: they report the peer address they saw, so a test can tell
//! a direct connection from one relayed by the gateway. Threads, not async: each is a few lines.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

/// What a server does with each accepted connection.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Replies `peer=<addr>` to the first line, then echoes.
    Echo,
    /// Reads to EOF, replies with the byte count.
    Sink,
    /// Answers one HTTP/1.1 request with 200 and body `peer=<addr>`.
    Http,
}

/// A TCP server on a loopback address, stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(bind: SocketAddr, kind: Kind) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        stream.set_nonblocking(false).ok();
                        thread::spawn(move || serve(stream, peer, kind));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, accepted, stop }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, kind: Kind) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    match kind {
        Kind::Echo => {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
            let mut buf = [0u8; 16384];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        Kind::Sink => {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = stream.write_all(format!("{total}\n").as_bytes());
        }
        Kind::Http => {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                line.clear();
            }
            let body = format!("peer={peer}\n");
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    }
}

/// A datagram received: its sender and its bytes.
pub type Datagram = (SocketAddr, Vec<u8>);

/// A UDP server replying `peer=<addr>` to every datagram, keeping what it received; stopped on
/// drop.
pub struct UdpEcho {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    pub fn start(bind: SocketAddr) -> Self {
        let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind udp {bind}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (st, kept) = (stop.clone(), received.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    kept.lock().unwrap().push((from, buf[..n].to_vec()));
                    let _ = sock.send_to(format!("peer={from}").as_bytes(), from);
                }
            }
        });
        Self { addr, received, stop }
    }

    /// Every datagram received so far, with its sender.
    pub fn received(&self) -> Vec<Datagram> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
