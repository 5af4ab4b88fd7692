//! Accepting redirected connections: bind the listeners, recover each connection's original
//! destination and caller, and hand it to the next stage.
//!
//! The original destination comes through the [`OrigDst`] seam, so the proxy core can be tested
//! in-process without the kernel. A connection nobody redirected (someone dialling the listener
//! directly) is closed here: it has no destination, and must never be forwarded anywhere.
pub mod addrs;
pub mod shards;

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, warn};

pub use addrs::{ClientAddr, ListenAddr, OrigDstAddr};

pub use shards::Shards;

use crate::{
    identity::Caller,
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

/// Binds a listener with SO_REUSEADDR, so a restarted gateway can bind at once, and with the
/// gateway's `mark`: the kernel programs redirect only to a listener that carries it (setting a
/// mark needs CAP_NET_ADMIN, so a process that took the port while the gateway was away gets
/// nothing). In-process tests, which the kernel does not redirect to, pass no mark.
pub fn bind(addr: SocketAddr, mark: Option<u32>) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket)
            .set_mark(mark)
            .with_context(|| format!("cannot mark the listener on {addr} (SO_MARK needs CAP_NET_ADMIN)"))?;
    }
    socket.bind(addr).with_context(|| {
        format!("cannot listen on {addr} (another ghgate running? change [listen] in the config)")
    })?;
    Ok(socket.listen(1024)?)
}

/// Accepts forever on `listener`, handing each redirected connection to the next of `shards`.
///
/// The accept loop takes nothing but the kernel's record: the caller's facts are completed
/// from /proc on the connection's shard, so a burst of connections is not accepted one /proc
/// walk at a time.
pub async fn serve<D: OrigDst>(
    listener: TcpListener,
    orig_dst: Arc<D>,
    shards: Arc<Shards>,
) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
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
        shards.dispatch(stream, client, redirected, accepted_at);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}
