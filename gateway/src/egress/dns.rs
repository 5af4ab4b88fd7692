//! The gateway's resolver for the governed cgroups: the kernel sends it every UDP and TCP packet
//! those processes address to port 53, whatever server they named. It forwards each query as it
//! is to the configured servers (`[dns] servers`, else the system's), and learns the answer
//! (allowed names' addresses into the kernel, every address's name for the records) *before*
//! the caller gets it.
//!
//! It never answers from anything but an upstream's answer to that very query (same id), never
//! changes an answer, and never logs per query.
//!
//! Bounded: each query in flight holds a socket to an upstream for up to [`UPSTREAM_TIMEOUT`],
//! so a process flooding it with queries (to an upstream that is slow, or a name that never
//! answers) would take every open file the gateway has. At most [`MAX_IN_FLIGHT`] queries go
//! upstream at once, and at most [`MAX_TCP_CLIENTS`] TCP clients are served at once; past that
//! a UDP query gets SERVFAIL at once and a TCP client is closed (logged once per run).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use hickory_resolver::proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
    serialize::binary::{BinDecodable, BinEncodable},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{Answer, Egress};
use crate::redirect::exempt;

/// How long one upstream gets to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message over UDP with EDNS that the forwarder relays.
const MAX_UDP: usize = 4096;
/// A TCP client gets this long for each query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries forwarded upstream at once, from every client together.
const MAX_IN_FLIGHT: usize = 1024;
/// TCP clients served at once.
const MAX_TCP_CLIENTS: usize = 256;

/// The resolver's bounds, shared by its listeners.
struct Bounds {
    in_flight: Arc<Semaphore>,
    tcp_clients: Arc<Semaphore>,
    /// Refusing since a bound was reached (logged at the first of a run).
    refusing: std::sync::atomic::AtomicBool,
}

impl Bounds {
    fn new(in_flight: usize, tcp_clients: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(in_flight)),
            tcp_clients: Arc::new(Semaphore::new(tcp_clients)),
            refusing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A permit of `of`, or `None` (the first refusal of a run is logged).
    fn take(&self, of: &Arc<Semaphore>, what: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        match of.clone().try_acquire_owned() {
            Ok(permit) => {
                self.refusing.store(false, Ordering::Relaxed);
                Some(permit)
            }
            Err(_) => {
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    warn!(
                        max_in_flight = MAX_IN_FLIGHT,
                        max_tcp_clients = MAX_TCP_CLIENTS,
                        "egress resolver: too many {what} at once; further ones are refused (SERVFAIL, or the TCP connection closed) until some end"
                    );
                }
                None
            }
        }
    }
}

/// The resolver's sockets, bound before the programs are attached (so the first redirected query
/// finds them).
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

/// Binds UDP and TCP on each address.
pub fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Listeners> {
    let mut out = Listeners {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    for &addr in addrs {
        let udp = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("cannot bind the egress resolver on udp {addr} ([egress] dns_port)"))?;
        udp.set_nonblocking(true)?;
        out.udp.push(UdpSocket::from_std(udp)?);
        let tcp = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot bind the egress resolver on tcp {addr} ([egress] dns_port)"))?;
        tcp.set_nonblocking(true)?;
        out.tcp.push(TcpListener::from_std(tcp)?);
    }
    Ok(out)
}

/// The servers queries go to: `configured`, else the system's (without the resolver's own
/// addresses, which would loop).
pub fn upstreams(configured: &[SocketAddr], own: &[SocketAddr]) -> Vec<SocketAddr> {
    let servers = if configured.is_empty() {
        match hickory_resolver::system_conf::read_system_conf() {
            Ok((conf, _)) => conf.name_servers().iter().map(|ns| ns.socket_addr).collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the system's DNS servers; the egress resolver answers SERVFAIL");
                Vec::new()
            }
        }
    } else {
        configured.to_vec()
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for s in servers {
        if !own.contains(&s) && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Serves forever.
pub async fn serve(listeners: Listeners, upstreams: Vec<SocketAddr>, egress: Arc<Egress>) {
    serve_bounded(
        listeners,
        upstreams,
        egress,
        Bounds::new(MAX_IN_FLIGHT, MAX_TCP_CLIENTS),
    )
    .await;
}

async fn serve_bounded(
    listeners: Listeners,
    upstreams: Vec<SocketAddr>,
    egress: Arc<Egress>,
    bounds: Arc<Bounds>,
) {
    let upstreams = Arc::new(upstreams);
    let mut tasks = tokio::task::JoinSet::new();
    for sock in listeners.udp {
        tasks.spawn(serve_udp(
            Arc::new(sock),
            upstreams.clone(),
            egress.clone(),
            bounds.clone(),
        ));
    }
    for listener in listeners.tcp {
        tasks.spawn(serve_tcp(
            listener,
            upstreams.clone(),
            egress.clone(),
            bounds.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    upstreams: Arc<Vec<SocketAddr>>,
    egress: Arc<Egress>,
    bounds: Arc<Bounds>,
) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "egress resolver: receive failed");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Some(permit) = bounds.take(&bounds.in_flight, "queries") else {
            if let Some(reply) = Message::from_bytes(&query)
                .ok()
                .filter(|m| m.message_type() == MessageType::Query)
                .and_then(|m| servfail(&m))
            {
                let _ = sock.try_send_to(&reply, client);
            }
            continue;
        };
        let (sock, upstreams, egress) = (sock.clone(), upstreams.clone(), egress.clone());
        tokio::spawn(async move {
            let reply = resolve(&query, &upstreams, &egress, false).await;
            drop(permit);
            if let Some(reply) = reply {
                let _ = sock.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    upstreams: Arc<Vec<SocketAddr>>,
    egress: Arc<Egress>,
    bounds: Arc<Bounds>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Some(client) = bounds.take(&bounds.tcp_clients, "TCP clients") else {
            continue;
        };
        let (upstreams, egress, bounds) = (upstreams.clone(), egress.clone(), bounds.clone());
        tokio::spawn(async move {
            let _client = client;
            loop {
                let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
                    return;
                };
                let Some(_query) = bounds.take(&bounds.in_flight, "queries") else {
                    return;
                };
                let Some(reply) = resolve(&query, &upstreams, &egress, true).await else {
                    return;
                };
                if write_framed(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn read_framed<S: AsyncReadExt + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await?;
    let mut msg = vec![0u8; usize::from(len)];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed<S: AsyncWriteExt + Unpin>(s: &mut S, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend(len.to_be_bytes());
    out.extend(msg);
    s.write_all(&out).await
}

/// The reply for one query: an upstream's answer (learned first), or SERVFAIL. None for bytes
/// that are not a DNS query.
async fn resolve(query: &[u8], upstreams: &[SocketAddr], egress: &Egress, tcp: bool) -> Option<Vec<u8>> {
    let parsed = Message::from_bytes(query).ok()?;
    if parsed.message_type() != MessageType::Query {
        return None;
    }
    for &server in upstreams {
        // UDP first, whatever the caller used (not every server takes TCP); a truncated answer
        // again over TCP, so that what is learned is the whole of what the caller uses. A UDP
        // caller gets the truncated one if TCP fails (it retries over TCP itself).
        let reply = match ask_udp(server, query).await {
            Ok(r) if truncated(&r) => match ask_tcp(server, query).await {
                Ok(whole) => Ok(whole),
                Err(_) if !tcp => Ok(r),
                Err(e) => Err(e),
            },
            other => other,
        };
        match reply {
            Ok(reply) if reply.len() >= 2 && reply[..2] == query[..2] => {
                if let Some(answer) = answer_of(&reply) {
                    egress.learn(&answer);
                }
                return Some(reply);
            }
            Ok(_) => debug!(%server, "egress resolver: an answer for another query"),
            Err(e) => debug!(%server, error = %e, "egress resolver: upstream failed"),
        }
    }
    servfail(&parsed)
}

fn truncated(reply: &[u8]) -> bool {
    reply.len() > 2 && reply[2] & 0x02 != 0
}

async fn ask_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = exempt::udp(local)?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_UDP];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        // Another query's late answer (or junk) is skipped, not taken for this one's.
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut s = exempt::connect(server).await?;
        write_framed(&mut s, query).await?;
        read_framed(&mut s).await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// The name asked and the A/AAAA addresses a reply gives, with their TTLs.
pub fn answer_of(reply: &[u8]) -> Option<Answer> {
    let msg = Message::from_bytes(reply).ok()?;
    if msg.message_type() != MessageType::Response || msg.response_code() != ResponseCode::NoError {
        return None;
    }
    let name = msg.queries().first()?.name().to_ascii();
    let addrs: Vec<(IpAddr, Duration)> = msg
        .answers()
        .iter()
        .filter_map(|r| {
            let ttl = Duration::from_secs(u64::from(r.ttl()));
            match r.data() {
                RData::A(a) => Some((IpAddr::V4(a.0), ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), ttl)),
                _ => None,
            }
        })
        .collect();
    (!addrs.is_empty()).then_some(Answer { name, addrs })
}

fn servfail(query: &Message) -> Option<Vec<u8>> {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::ServFail);
    reply.add_queries(query.queries().to_vec());
    reply.to_bytes().ok()
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::rr::{Name, Record, rdata};

    use super::*;

    /// A query for `name` with `id`, as a client sends it.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(id).set_message_type(MessageType::Query);
        msg.add_query(hickory_resolver::proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            hickory_resolver::proto::rr::RecordType::A,
        ));
        msg.to_bytes().unwrap()
    }

    /// A flood of queries to an upstream that never answers holds at most the bound's upstream
    /// sockets; past it, each query gets SERVFAIL at once; and once the queries in flight have
    /// timed out, queries go upstream again. TCP clients past their bound are closed.
    #[tokio::test]
    async fn a_query_flood_is_bounded_and_answered_servfail_past_it() {
        #[derive(serde::Deserialize)]
        struct Wrap {
            egress: super::super::EgressConfig,
        }
        let config = toml::from_str::<Wrap>("[egress]\n").unwrap().egress;
        let egress = Arc::new(Egress::new(config, None));
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let listeners = bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let (addr, tcp_addr) = (
            listeners.udp[0].local_addr().unwrap(),
            listeners.tcp[0].local_addr().unwrap(),
        );
        tokio::spawn(serve_bounded(
            listeners,
            vec![silent.local_addr().unwrap()],
            egress,
            Bounds::new(8, 2),
        ));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = tokio::time::Instant::now();
        for id in 0..20 {
            client.send_to(&query(id, "flood.example."), addr).await.unwrap();
        }
        let mut buf = vec![0u8; MAX_UDP];
        let mut servfails = Vec::new();
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
        {
            let reply = Message::from_bytes(&buf[..n]).unwrap();
            assert_eq!(reply.response_code(), ResponseCode::ServFail);
            servfails.push(reply.id());
        }
        assert_eq!(servfails.len(), 12, "{servfails:?}");
        assert!(started.elapsed() < UPSTREAM_TIMEOUT, "answered at once");
        let mut upstream_got = 0;
        while tokio::time::timeout(Duration::from_millis(100), silent.recv_from(&mut buf))
            .await
            .is_ok()
        {
            upstream_got += 1;
        }
        assert_eq!(upstream_got, 8, "the bound's worth went upstream");
        // Two TCP clients are served (waiting for a query); a third is closed at once.
        let _a = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(1), c.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        // The 8 in flight time out (and get SERVFAIL); then queries go upstream again.
        tokio::time::sleep(UPSTREAM_TIMEOUT).await;
        while tokio::time::timeout(Duration::from_millis(100), client.recv_from(&mut buf))
            .await
            .is_ok()
        {}
        client.send_to(&query(99, "again.example."), addr).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(1), silent.recv_from(&mut buf))
            .await
            .expect("the query went upstream")
            .unwrap();
        assert_eq!(Message::from_bytes(&buf[..n]).unwrap().id(), 99);
    }

    #[test]
    fn answers_give_the_name_asked_and_each_address_with_its_ttl() {
        let name = Name::from_ascii("pkg.example.").unwrap();
        let mut msg = Message::new();
        msg.set_id(7).set_message_type(MessageType::Response);
        msg.add_query(hickory_resolver::proto::op::Query::query(
            name.clone(),
            hickory_resolver::proto::rr::RecordType::A,
        ));
        let cname = Name::from_ascii("cdn.example.").unwrap();
        msg.add_answer(Record::from_rdata(
            name,
            30,
            RData::CNAME(rdata::CNAME(cname.clone())),
        ));
        msg.add_answer(Record::from_rdata(
            cname.clone(),
            60,
            RData::A(rdata::A("192.0.2.9".parse().unwrap())),
        ));
        msg.add_answer(Record::from_rdata(
            cname,
            90,
            RData::AAAA(rdata::AAAA("2001:db8::9".parse().unwrap())),
        ));
        let got = answer_of(&msg.to_bytes().unwrap()).unwrap();
        assert_eq!(got.name, "pkg.example.");
        assert_eq!(
            got.addrs,
            [
                ("192.0.2.9".parse().unwrap(), Duration::from_secs(60)),
                ("2001:db8::9".parse().unwrap(), Duration::from_secs(90)),
            ]
        );
        msg.set_response_code(ResponseCode::NXDomain);
        assert_eq!(answer_of(&msg.to_bytes().unwrap()), None);
        assert_eq!(answer_of(b"\x00\x07garbage"), None);
    }

    #[test]
    fn servfail_keeps_the_id_and_question() {
        let mut q = Message::new();
        q.set_id(4242).set_message_type(MessageType::Query);
        q.add_query(hickory_resolver::proto::op::Query::query(
            Name::from_ascii("x.example.").unwrap(),
            hickory_resolver::proto::rr::RecordType::AAAA,
        ));
        let r = Message::from_bytes(&servfail(&q).unwrap()).unwrap();
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::ServFail);
        assert_eq!(r.queries(), q.queries());
    }
}
