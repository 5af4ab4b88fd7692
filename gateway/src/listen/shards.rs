//! Where accepted connections are served: one thread per CPU, each with a single-threaded
//! runtime of its own, and each connection on one of them for its whole life.
//!
//! On tokio's work-stealing runtime, a connection's tasks (the client's, the pooled upstream
//! connection's, HTTP/2 streams') ran on whichever worker woke them, so nearly every body chunk
//! and every request crossed threads: one worker woke another (an eventfd write, a futex, on a
//! VM an interprocessor interrupt) to pass it on. `ghgate-bench proxy` with one worker instead of
//! two: the gateway's CPU per request 37 µs instead of 53 to 63. Here a connection, the upstream
//! connections it borrows (each shard has its own pool, see [`crate::http::pool::Pools`]) and
//! every task they spawn stay on one thread; the accept loop hands each connection to the shards
//! in turn.
use std::{
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::{net::TcpStream, sync::mpsc};
use tracing::warn;

use super::{Accepted, ClientAddr, Handler, OrigDstAddr};
use crate::{
    identity::{Caller, ci::JobAttribution},
    redirect::Redirected,
};

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The shard this thread serves (0 on any thread that is not a shard's).
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// How many shards a gateway runs: one per CPU it may use (its affinity and cgroup quota
/// counted), at most 64.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(64))
}

/// A connection on its way to a shard: the socket leaves the accept loop's runtime and joins
/// the shard's.
struct Incoming {
    stream: std::net::TcpStream,
    client: ClientAddr,
    redirected: Redirected,
    accepted_at: Instant,
}

/// The shards' threads, fed in turn. Dropping it ends them once their queues are empty (their
/// connections' tasks end with them).
pub struct Shards {
    queues: Vec<mpsc::UnboundedSender<Incoming>>,
    next: AtomicUsize,
}

impl Shards {
    /// `count` shard threads serving with `handler`; `jobs`, when container scopes are governed,
    /// attributes their connections to the running job. `configure` adds to each shard's
    /// runtime (the gateway gathers log lines per thread).
    pub fn start<H: Handler>(
        count: usize,
        handler: Arc<H>,
        jobs: Option<Arc<JobAttribution>>,
        configure: &dyn Fn(&mut tokio::runtime::Builder),
    ) -> std::io::Result<Self> {
        let mut queues = Vec::with_capacity(count.max(1));
        for shard in 0..count.max(1) {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            configure(&mut builder);
            let runtime = builder.build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (handler, jobs) = (handler.clone(), jobs.clone());
            std::thread::Builder::new()
                .name(format!("ghgate-shard-{shard}"))
                .spawn(move || {
                    SHARD.with(|s| s.set(shard));
                    runtime.block_on(serve_shard(rx, handler, jobs));
                })?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.queues.len()
    }

    /// Hands a connection to the next shard. A socket that cannot leave this runtime is closed.
    pub(super) fn dispatch(
        &self,
        stream: TcpStream,
        client: ClientAddr,
        redirected: Redirected,
        accepted_at: Instant,
    ) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(client = %client, error = %e, "cannot hand the connection to a shard; closing it");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let incoming = Incoming {
            stream,
            client,
            redirected,
            accepted_at,
        };
        if self.queues[i].send(incoming).is_err() {
            warn!(client = %client, shard = i, "the shard has stopped; closing the connection");
        }
    }
}

/// One shard: each connection that arrives is served on a task of this thread's runtime.
async fn serve_shard<H: Handler>(
    mut rx: mpsc::UnboundedReceiver<Incoming>,
    handler: Arc<H>,
    jobs: Option<Arc<JobAttribution>>,
) {
    while let Some(incoming) = rx.recv().await {
        let (handler, jobs) = (handler.clone(), jobs.clone());
        tokio::spawn(async move {
            let Incoming {
                stream,
                client,
                redirected,
                accepted_at,
            } = incoming;
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    warn!(client = %client, error = %e, "cannot serve the connection on this shard; closing it");
                    return;
                }
            };
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

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin, sync::Mutex};

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// Answers each connection with the name of the thread it is served on and the shard that
    /// thread says it is.
    #[derive(Default)]
    struct WhereServed(Mutex<Vec<(String, usize)>>);

    impl Handler for WhereServed {
        fn handle(&self, mut conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move {
                // A task spawned by the connection runs where the connection does.
                let spawned =
                    tokio::spawn(async { (std::thread::current().name().map(str::to_owned), current()) })
                        .await
                        .unwrap();
                let here = (std::thread::current().name().unwrap_or("").to_owned(), current());
                assert_eq!((spawned.0.unwrap_or_default(), spawned.1), here);
                self.0.lock().unwrap().push(here.clone());
                let _ = conn.stream.write_all(here.0.as_bytes()).await;
            })
        }
    }

    #[test]
    fn connections_are_served_on_the_shards_in_turn_each_on_one_thread() {
        let served = Arc::new(WhereServed::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let parks = Arc::new(AtomicUsize::new(0));
        let counted = parks.clone();
        let shards = Shards::start(3, served.clone(), None, &move |b| {
            let counted = counted.clone();
            b.on_thread_park(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            });
        })
        .unwrap();
        assert_eq!(shards.count(), 3);
        let names: Vec<String> = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut names = Vec::new();
            for _ in 0..6 {
                let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (stream, peer) = listener.accept().await.unwrap();
                let redirected = Redirected {
                    orig_dst: addr,
                    tgid: std::process::id(),
                    pid: std::process::id(),
                    uid: 0,
                    gid: 0,
                    cgroup_id: 0,
                    comm: "test".into(),
                };
                shards.dispatch(stream, ClientAddr(peer), redirected, Instant::now());
                let mut name = String::new();
                tokio::io::AsyncReadExt::read_to_string(&mut client, &mut name)
                    .await
                    .unwrap();
                names.push(name);
            }
            names
        });
        assert_eq!(
            names,
            [0, 1, 2, 0, 1, 2].map(|i| format!("ghgate-shard-{i}")),
            "each connection on the next shard, and its reply from that shard's thread"
        );
        let recorded = served.0.lock().unwrap().clone();
        assert_eq!(
            recorded.iter().map(|(_, shard)| *shard).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2],
            "each shard's thread knows which it is"
        );
        assert!(
            parks.load(Ordering::Relaxed) > 0,
            "the shards' runtimes took the configuration"
        );
        drop(shards);
    }
}
