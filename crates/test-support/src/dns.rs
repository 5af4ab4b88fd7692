//! A loopback DNS server whose answers a test can change: A/AAAA records with a chosen TTL.
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, RecordType, rdata},
    serialize::binary::{BinDecodable, BinEncodable},
};

pub struct DnsServer {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Vec<IpAddr>>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Answers every A/AAAA query for `name` with the current addresses and `ttl`; anything else
    /// gets NXDOMAIN.
    pub fn start(name: &str, initial: Vec<IpAddr>, ttl: u32) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let answers = Arc::new(Mutex::new(initial));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ans, q, st, name) = (
            answers.clone(),
            queries.clone(),
            stop.clone(),
            format!("{}.", name.trim_end_matches('.')),
        );
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_available(true);
                reply.add_queries(query.queries().to_vec());
                if let Some(question) = query.queries().first() {
                    if question.name().to_ascii().eq_ignore_ascii_case(&name) {
                        for ip in ans.lock().unwrap().iter() {
                            let rdata = match (ip, question.query_type()) {
                                (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(*v4)),
                                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(*v6)),
                                _ => continue,
                            };
                            reply.add_answer(Record::from_rdata(question.name().clone(), ttl, rdata));
                        }
                    } else {
                        reply.set_response_code(ResponseCode::NXDomain);
                    }
                }
                if let Ok(bytes) = reply.to_bytes() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        Self {
            addr,
            answers,
            queries,
            stop,
        }
    }

    pub fn set(&self, addrs: Vec<IpAddr>) {
        *self.answers.lock().unwrap() = addrs;
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
