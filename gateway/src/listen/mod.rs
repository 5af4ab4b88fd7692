//! Accepting redirected connections: bind the listeners, recover each connection's original
//! destination and caller, and hand it to the next stage.
//!
//! The original destination comes through the [`OrigDst`] seam, so the proxy core can be tested
//! in-process without the kernel. A connection nobody redirected (someone dialling the listener
//! directly) is closed here: it has no destination, and must never be forwarded anywhere.
pub mod addrs;
pub mod caps;
pub mod drain;
pub mod shards;

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

pub use addrs::{ClientAddr, ListenAddr, OrigDstAddr};

pub use shards::Shards;

use crate::{
    identity::{Caller, ci::JobAttribution},
    redirect::{ClientTable, Redirected},
};

/// Where a redirected connection was going, and who opened it.
pub trait OrigDst: Send + Sync + 'static {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected>;
}

impl OrigDst for ClientTable {
    fn lookup(&self, client: ClientAddr) -> Option<Redirected> {
        let record = self.take(client.0)?;
        match Redirected::try_from(&record) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(client = %client, error = %e, "unreadable redirect record");
                None
            }
        }
    }
}

/// Every connection "was going" to one destination, for one caller: the seam's stand-in for the
/// kernel in in-process tests and benchmarks, which dial the gateway's listener themselves.
pub struct FixedOrigDst(pub Redirected);

impl OrigDst for FixedOrigDst {
    fn lookup(&self, _client: ClientAddr) -> Option<Redirected> {
        Some(self.0.clone())
    }
}

/// One accepted, attributed connection.
pub struct Accepted {
    pub stream: TcpStream,
    pub client: ClientAddr,
    pub orig_dst: OrigDstAddr,
    pub caller: Caller,
    pub accepted_at: Instant,
}

/// The stage an accepted connection goes to (a TCP relay now; TLS interception next).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Binds `count` listeners on `addr` (at least one), one per shard, with SO_REUSEPORT: the
/// kernel spreads incoming connections over them, and each shard accepts its own on its own
/// thread. Each also has SO_REUSEADDR, so a restarted gateway can bind at once, and the
/// gateway's `mark`: the kernel programs redirect only to a listener that carries it (setting
/// a mark needs CAP_NET_ADMIN, and joining another uid's SO_REUSEPORT group is refused, so a
/// process that took the port while the gateway was away gets nothing). In-process tests,
/// which the kernel does not redirect to, pass no mark. Port 0 picks one port for all.
pub fn bind(addr: SocketAddr, mark: Option<u32>, count: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut bound: Vec<std::net::TcpListener> = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let at = bound.first().map_or(Ok(addr), |l| l.local_addr())?;
        bound.push(bind_one(at, mark)?);
    }
    Ok(bound)
}

fn bind_one(addr: SocketAddr, mark: Option<u32>) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if let Some(mark) = mark {
        socket
            .set_mark(mark)
            .with_context(|| format!("cannot mark the listener on {addr} (SO_MARK needs CAP_NET_ADMIN)"))?;
    }
    socket.bind(&addr.into()).with_context(|| {
        format!("cannot listen on {addr} (another ghgate running? change [listen] in the config)")
    })?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts forever on `listener`, serving each redirected connection on a task of this thread's
/// runtime (a shard's: see [`shards`]).
pub async fn serve<D: OrigDst, H: Handler>(
    listener: TcpListener,
    orig_dst: Arc<D>,
    handler: Arc<H>,
    jobs: Option<Arc<JobAttribution>>,
) -> io::Result<()> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // The gateway is stopping: the listener closes (new connections are refused, as
            // while the gateway is down) and the connections already accepted carry on.
            () = drain::stopping() => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if is_transient(&e) => {
                warn!(error = %e, "accept failed; continuing");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let accepted_at = Instant::now();
        let client = ClientAddr(peer);
        let Some(redirected) = orig_dst.lookup(client) else {
            warn!(client = %client, "connection was not redirected by ghgate (no kernel record); closing it");
            continue;
        };
        debug!(client = %client, orig_dst = %redirected.orig_dst, "accepted");
        crate::telemetry::metrics().redirected();
        let (handler, jobs) = (handler.clone(), jobs.clone());
        tokio::spawn(async move {
            let _live = drain::Live::enter();
            let mut conn = Accepted {
                stream,
                client,
                orig_dst: OrigDstAddr(redirected.orig_dst),
                caller: Caller::from_kernel(&redirected),
                accepted_at,
            };
            if let Some(jobs) = jobs {
                jobs.attribute(&mut conn.caller);
            }
            handler.handle(conn).await
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}
