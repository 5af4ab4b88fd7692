//! Where accepted connections are served: one thread per CPU, each with a single-threaded
//! runtime and listeners of its own, and each connection on the thread that accepted it for its
//! whole life.
//!
//! On tokio's work-stealing runtime, a connection's tasks (the client's, the pooled upstream
//! connection's, HTTP/2 streams') ran on whichever worker woke them, so nearly every body chunk
//! and every request crossed threads: one worker woke another (an eventfd write, a futex, on a
//! VM an interprocessor interrupt) to pass it on. `ghgate-bench proxy` with one worker instead of
//! two: the gateway's CPU per request 37 µs instead of 53 to 63. Here each shard accepts on its
//! own SO_REUSEPORT listeners (the kernel spreads connections over them), and a connection, the
//! upstream connections it borrows (each shard has its own pool, see
//! [`crate::http::pool::Pools`]) and every task they spawn stay on that shard's thread.
use std::{cell::Cell, sync::Arc};

use tokio::sync::mpsc;

use super::{Handler, OrigDst};
use crate::identity::ci::JobAttribution;

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

/// The shards' threads. Each runs until one of its listeners fails for good, which
/// [`Shards::stopped`] reports.
pub struct Shards {
    count: usize,
    stopped: mpsc::UnboundedReceiver<(usize, std::io::Error)>,
}

impl Shards {
    /// One shard per entry of `listeners` (that shard's listeners, one per address family, as
    /// [`super::bind`] made them), serving with `handler`; `jobs`, when container scopes are
    /// governed, attributes their connections to the running job. `configure` adds to each
    /// shard's runtime (the gateway gathers log lines per thread).
    pub fn start<D: OrigDst, H: Handler>(
        listeners: Vec<Vec<std::net::TcpListener>>,
        orig_dst: Arc<D>,
        handler: Arc<H>,
        jobs: Option<Arc<JobAttribution>>,
        configure: &dyn Fn(&mut tokio::runtime::Builder),
    ) -> std::io::Result<Self> {
        let (report, stopped) = mpsc::unbounded_channel();
        let count = listeners.len();
        for (shard, listeners) in listeners.into_iter().enumerate() {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            configure(&mut builder);
            let runtime = builder.build()?;
            let (orig_dst, handler, jobs, report) =
                (orig_dst.clone(), handler.clone(), jobs.clone(), report.clone());
            std::thread::Builder::new()
                .name(format!("ghgate-shard-{shard}"))
                .spawn(move || {
                    SHARD.with(|s| s.set(shard));
                    let failed = runtime.block_on(async move {
                        let mut serving = tokio::task::JoinSet::new();
                        for listener in listeners {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            serving.spawn(super::serve(
                                listener,
                                orig_dst.clone(),
                                handler.clone(),
                                jobs.clone(),
                            ));
                        }
                        match serving.join_next().await {
                            Some(Ok(Err(e))) => Err(e),
                            Some(Err(e)) => Err(std::io::Error::other(e)),
                            Some(Ok(Ok(()))) | None => {
                                // Stopping: this runtime runs the shard's connections, so it
                                // lives until they end (or the gateway exits at its deadline).
                                super::drain::until_drained(std::time::Duration::MAX).await;
                                Ok(())
                            }
                        }
                    });
                    if let Err(e) = failed {
                        let _ = report.send((shard, e));
                    }
                })?;
        }
        Ok(Self { count, stopped })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Waits until a shard stops accepting: which, and why.
    pub async fn stopped(&mut self) -> (usize, std::io::Error) {
        match self.stopped.recv().await {
            Some(stop) => stop,
            // Every shard's thread has ended without a word (only if they panicked).
            None => (0, std::io::Error::other("every shard thread ended")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, future::Future, io::Read as _, pin::Pin, sync::Mutex};

    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::{
        listen::{Accepted, FixedOrigDst},
        redirect::Redirected,
    };

    /// Answers each connection with the name of the thread it is served on, having checked
    /// that a task it spawns runs there too.
    #[derive(Default)]
    struct WhereServed(Mutex<Vec<(String, usize)>>);

    impl Handler for WhereServed {
        fn handle(&self, mut conn: Accepted) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move {
                let spawned = tokio::spawn(async {
                    (std::thread::current().name().unwrap_or("").to_owned(), current())
                })
                .await
                .unwrap();
                let here = (std::thread::current().name().unwrap_or("").to_owned(), current());
                assert_eq!(spawned, here, "a task the connection spawned ran elsewhere");
                self.0.lock().unwrap().push(here.clone());
                let _ = conn.stream.write_all(here.0.as_bytes()).await;
            })
        }
    }

    #[test]
    fn each_shard_accepts_on_its_own_listener_and_serves_on_its_own_thread() {
        let served = Arc::new(WhereServed::default());
        let listeners = crate::listen::bind("127.0.0.1:0".parse().unwrap(), None, 3).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert!(
            listeners.iter().all(|l| l.local_addr().unwrap() == addr),
            "one port for all"
        );
        let parks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = parks.clone();
        let orig_dst = Arc::new(FixedOrigDst(Redirected {
            orig_dst: addr,
            tgid: std::process::id(),
            pid: std::process::id(),
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            comm: "test".into(),
        }));
        let shards = Shards::start(
            listeners.into_iter().map(|l| vec![l]).collect(),
            orig_dst,
            served.clone(),
            None,
            &move |b| {
                let counted = counted.clone();
                b.on_thread_park(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
            },
        )
        .unwrap();
        assert_eq!(shards.count(), 3);
        let mut names = BTreeSet::new();
        for _ in 0..60 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let mut name = String::new();
            client.read_to_string(&mut name).unwrap();
            names.insert(name);
        }
        let recorded = served.0.lock().unwrap().clone();
        assert_eq!(recorded.len(), 60);
        for (name, shard) in &recorded {
            assert_eq!(
                name,
                &format!("ghgate-shard-{shard}"),
                "each shard's thread knows which it is"
            );
        }
        // The kernel spreads connections by their addresses: 60 connections all on one of three
        // listeners would be a 1 in 3^59 chance.
        assert!(
            names.len() >= 2,
            "connections were spread over the shards: {names:?}"
        );
        assert!(
            parks.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the shards' runtimes took the configuration"
        );
    }
}
