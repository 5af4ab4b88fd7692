//! Upstream connections, kept per (server name, address) and shared by client connections:
//! one multiplexed HTTP/2 connection, or idle HTTP/1.1 keep-alive connections, each key.
//!
//! Bounded (keys, idle connections per key) and aged (idle HTTP/1.1 connections expire). A
//! connection is only ever reused for the exact name and address it was verified for; this
//! module never dials a different address than the one it is given.
use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lru::LruCache;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ProxyBody;
use crate::tls::upstream::{Proto, UpstreamError, UpstreamTls};

/// Which upstream a connection goes to: the verified name at the dialled address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub addr: SocketAddr,
}

/// A sender for one request.
/// An HTTP/1.1 upstream connection's sending half.
pub type Http1Sender = http1::SendRequest<ProxyBody>;

pub enum Sender {
    Http1(http1::SendRequest<ProxyBody>),
    Http2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    pub fn proto(&self) -> Proto {
        match self {
            Sender::Http1(_) => Proto::Http1,
            Sender::Http2(_) => Proto::Http2,
        }
    }
}

#[derive(Default)]
struct Entry {
    h2: Option<http2::SendRequest<ProxyBody>>,
    h1_idle: Vec<(http1::SendRequest<ProxyBody>, Instant)>,
    /// Learned when a connection offering both protocols was made: false for an upstream that
    /// chose HTTP/1.1, so HTTP/2 clients reuse its idle HTTP/1.1 connections instead of dialling.
    speaks_h2: Option<bool>,
}

/// The keys, and how many idle HTTP/1.1 connections they hold together.
struct Entries {
    keys: LruCache<Key, Entry>,
    idle: usize,
}

impl Entries {
    /// `key`'s entry, made if missing; a key evicted to make room takes its idle connections
    /// with it.
    fn entry(&mut self, key: &Key) -> &mut Entry {
        if !self.keys.contains(key)
            && let Some((_, evicted)) = self.keys.push(key.clone(), Entry::default())
        {
            self.idle -= evicted.h1_idle.len();
        }
        self.keys.get_mut(key).expect("just made")
    }
}

/// How many idle HTTP/1.1 connections the pool keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    pub per_key: usize,
    pub total: usize,
    pub timeout: Duration,
}

impl Default for IdleLimits {
    /// As many per key as a busy runner keeps in flight to one host (parallel git fetches, gh
    /// and API calls): each HTTP/1.1 request in flight holds an upstream connection, and one
    /// returned while the key already holds `per_key` idle ones is closed, so the next burst
    /// dials and handshakes again. With 8, sixteen busy clients made every fifth request
    /// handshake anew (`ghgate-bench proxy`: 3,626 upstream handshakes in about 20,000 requests).
    fn default() -> Self {
        Self {
            per_key: 64,
            total: 512,
            timeout: Duration::from_secs(90),
        }
    }
}

impl IdleLimits {
    /// The share of these limits each of `pools` pools gets, so that together they keep no
    /// more than one pool would (at least 8 each).
    pub fn shared_by(self, pools: usize) -> Self {
        let total = (self.total / pools.max(1)).max(8);
        Self {
            per_key: self.per_key.min(total),
            total,
            ..self
        }
    }
}

pub struct Pool {
    tls: UpstreamTls,
    entries: Mutex<Entries>,
    connect_timeout: Duration,
    limits: IdleLimits,
}

impl Pool {
    /// Idle HTTP/1.1 connections kept as `limits` says.
    pub fn with_limits(tls: UpstreamTls, connect_timeout: Duration, limits: IdleLimits) -> Self {
        Self {
            tls,
            entries: Mutex::new(Entries {
                keys: LruCache::new(NonZeroUsize::new(1024).expect("non-zero")),
                idle: 0,
            }),
            connect_timeout,
            limits,
        }
    }

    pub fn tls(&self) -> &UpstreamTls {
        &self.tls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled sender for `key`, if one is alive (only HTTP/1.1 when `http1_only`).
    fn pooled(&self, key: &Key, http1_only: bool) -> Option<Sender> {
        let mut entries = self.lock();
        let entries = &mut *entries;
        let entry = entries.keys.get_mut(key)?;
        if let Some(h2) = entry.h2.as_ref().filter(|_| !http1_only) {
            if !h2.is_closed() {
                return Some(Sender::Http2(h2.clone()));
            }
            entry.h2 = None;
        }
        if !http1_only && entry.speaks_h2 != Some(false) {
            return None; // worth a new connection that may be HTTP/2
        }
        while let Some((h1, since)) = entry.h1_idle.pop() {
            entries.idle -= 1;
            if !h1.is_closed() && since.elapsed() < self.limits.timeout {
                return Some(Sender::Http1(h1));
            }
        }
        None
    }

    /// A sender for `key`: a shared HTTP/2 connection, an idle HTTP/1.1 one, or a new connection
    /// offering both (the upstream chooses; the pipeline translates if the client speaks the other).
    pub async fn get(&self, key: &Key) -> Result<Sender, UpstreamError> {
        match self.pooled(key, false) {
            Some(sender) => Ok(sender),
            None => Box::pin(self.dial(key, false)).await,
        }
    }

    /// An HTTP/1.1 sender for `key`: for HTTP/1.1 clients (one upstream connection per request in
    /// flight, as the client itself does) and WebSocket handshakes, which HTTP/2 cannot carry here.
    pub async fn get_http1(&self, key: &Key) -> Result<Sender, UpstreamError> {
        match self.pooled(key, true) {
            Some(sender) => Ok(sender),
            None => Box::pin(self.dial(key, true)).await,
        }
    }

    /// A new upstream connection. Its future (a TCP connect, a TLS and an HTTP handshake) is
    /// boxed by the callers, so that it is allocated only when a connection is dialled: inline,
    /// every request's future would carry its 6.7 KB, and copy it each time it is moved.
    async fn dial(&self, key: &Key, http1_only: bool) -> Result<Sender, UpstreamError> {
        let offer: &[Proto] = if http1_only {
            &[Proto::Http1]
        } else {
            &[Proto::Http2, Proto::Http1]
        };
        let (tls, proto) = self
            .tls
            .connect(key.addr, &key.name, offer, self.connect_timeout)
            .await?;
        let sender = handshake(tls, proto)
            .await
            .map_err(|reason| UpstreamError::Handshake {
                name: key.name.clone(),
                addr: key.addr,
                reason: format!("HTTP handshake failed: {reason}"),
            })?;
        let mut entries = self.lock();
        let entry = entries.entry(key);
        if !http1_only {
            entry.speaks_h2 = Some(proto == Proto::Http2);
        }
        if let Sender::Http2(h2) = &sender {
            entry.h2 = Some(h2.clone());
        }
        Ok(sender)
    }

    /// Returns an HTTP/1.1 connection whose exchange ended cleanly, for reuse.
    pub fn put_back(&self, key: &Key, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut entries = self.lock();
        if entries.idle >= self.limits.total {
            return;
        }
        let entry = entries.entry(key);
        if entry.h1_idle.len() < self.limits.per_key {
            entry.h1_idle.push((sender, Instant::now()));
            entries.idle += 1;
        }
    }

    /// Drops what is no longer worth keeping: idle HTTP/1.1 connections past the idle timeout or
    /// closed by the upstream, closed HTTP/2 connections, and keys left with nothing. Closing
    /// them here frees their sockets now rather than at the key's next request.
    pub fn sweep(&self) {
        let mut entries = self.lock();
        let entries = &mut *entries;
        let mut empty = Vec::new();
        for (key, e) in entries.keys.iter_mut() {
            let before = e.h1_idle.len();
            e.h1_idle
                .retain(|(h1, since)| !h1.is_closed() && since.elapsed() < self.limits.timeout);
            entries.idle -= before - e.h1_idle.len();
            if e.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
                e.h2 = None;
            }
            if e.h2.is_none() && e.h1_idle.is_empty() {
                empty.push(key.clone());
            }
        }
        for key in empty {
            entries.keys.pop(&key);
        }
    }

    /// Sweeps the pool every few seconds for as long as it exists.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        let every = (self.limits.timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match pool.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        })
    }

    /// Connections currently kept: (HTTP/2, idle HTTP/1.1).
    pub fn kept(&self) -> (usize, usize) {
        let entries = self.lock();
        entries.keys.iter().fold((0, 0), |(h2, h1), (_, e)| {
            (h2 + usize::from(e.h2.is_some()), h1 + e.h1_idle.len())
        })
    }
}

/// One pool per shard (see [`crate::listen::shards`]): a connection borrows from the pool of
/// the thread it is served on, so the upstream connections it uses, whose tasks were spawned
/// where they were dialled, run on that thread too.
pub struct Pools(Vec<Arc<Pool>>);

impl Pools {
    /// `count` pools (at least one), sharing the default limits.
    pub fn new(count: usize, tls: UpstreamTls, connect_timeout: Duration) -> Self {
        let limits = IdleLimits::default().shared_by(count);
        Self(
            (0..count.max(1))
                .map(|_| Arc::new(Pool::with_limits(tls.clone(), connect_timeout, limits)))
                .collect(),
        )
    }

    /// This thread's shard's pool.
    pub fn here(&self) -> &Arc<Pool> {
        &self.0[crate::listen::shards::current() % self.0.len()]
    }

    pub fn tls(&self) -> &UpstreamTls {
        self.0[0].tls()
    }

    /// Sweeps every pool (see [`Pool::spawn_sweeper`]).
    pub fn spawn_sweepers(&self) {
        for pool in &self.0 {
            pool.spawn_sweeper();
        }
    }
}

/// The largest HTTP/2 frame an upstream may send (SETTINGS_MAX_FRAME_SIZE; 16 KiB when unsaid).
/// A download comes in fewer frames, each decoded and flow-controlled once; the read buffer of a
/// pooled upstream connection may grow to it.
const UPSTREAM_MAX_FRAME: u32 = 256 << 10;

/// HTTP handshake over an established upstream TLS stream; the connection task is spawned.
async fn handshake<T>(io: T, proto: Proto) -> Result<Sender, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match proto {
        Proto::Http1 => {
            let (send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::Http1(send))
        }
        Proto::Http2 => {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_frame_size(UPSTREAM_MAX_FRAME)
                .handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            Ok(Sender::Http2(send))
        }
    }
}

/// Shared by every client connection of the gateway.
pub type SharedPool = Arc<Pool>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 sender over an in-memory pipe (whose far end is kept in `ends`).
    async fn sender(ends: &mut Vec<tokio::io::DuplexStream>) -> http1::SendRequest<ProxyBody> {
        let (near, far) = tokio::io::duplex(1024);
        ends.push(far);
        let (send, conn) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(conn);
        send
    }

    #[test]
    fn pools_share_the_limits_of_one() {
        let one = IdleLimits::default();
        let two = one.shared_by(2);
        assert_eq!((two.per_key, two.total), (64, 256));
        let many = one.shared_by(64);
        assert_eq!((many.per_key, many.total), (8, 8));
        assert_eq!(one.shared_by(0).total, one.total);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_key_and_in_all_and_swept_when_old_or_closed() {
        let tls = UpstreamTls::new(&[]).unwrap();
        let limits = IdleLimits {
            per_key: 3,
            total: 4,
            timeout: Duration::from_millis(300),
        };
        let pool = Pool::with_limits(tls, Duration::from_secs(1), limits);
        let key = |port| Key {
            name: "api.github.com".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let mut ends = Vec::new();
        for _ in 0..5 {
            let s = sender(&mut ends).await;
            pool.put_back(&key(1), s);
        }
        assert_eq!(pool.kept(), (0, 3), "at most 3 idle per key");
        let s = sender(&mut ends).await;
        pool.put_back(&key(2), s);
        assert_eq!(pool.kept(), (0, 4));
        let s = sender(&mut ends).await;
        pool.put_back(&key(3), s);
        assert_eq!(pool.kept(), (0, 4), "at most 4 idle in all");
        // Taking one makes room for another.
        assert!(matches!(pool.pooled(&key(1), true), Some(Sender::Http1(_))));
        let s = sender(&mut ends).await;
        pool.put_back(&key(3), s);
        assert_eq!(pool.kept(), (0, 4));
        // An upstream that hangs up: its idle connection goes at the next sweep.
        ends.remove(5);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep();
        assert_eq!(pool.kept(), (0, 3));
        assert_eq!(pool.lock().idle, 3, "the count follows what the sweep dropped");
        // Past the idle timeout, nothing is kept.
        tokio::time::sleep(Duration::from_millis(350)).await;
        pool.sweep();
        assert_eq!(pool.kept(), (0, 0));
        assert_eq!(pool.lock().keys.len(), 0, "keys with nothing left are dropped");
        assert_eq!(pool.lock().idle, 0);
    }
}
