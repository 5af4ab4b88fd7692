//! An orderly stop: accepting ends, and connections finish what they are doing.
//!
//! At SIGTERM (a `systemctl restart` in the middle of a job, say) the gateway stops accepting,
//! asks every HTTP connection to end gracefully (an HTTP/1.1 connection closes after the
//! response in flight, or at once when idle; an HTTP/2 one sends GOAWAY and lets its open
//! streams end), and waits for its connections to end, up to `listen.drain_secs`. Only then are
//! the records flushed and the store sealed: an exchange in flight is recorded whole instead of
//! cut. What is still open at the deadline (a long relay, a WebSocket) is cut, and counted.
//!
//! One per process: only `ghgate run` begins it.
use std::{
    sync::{
        LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

struct State {
    stopping: watch::Sender<bool>,
    live: AtomicUsize,
    ended: Notify,
}

static STATE: LazyLock<State> = LazyLock::new(|| State {
    stopping: watch::Sender::new(false),
    live: AtomicUsize::new(0),
    ended: Notify::new(),
});

/// Begins the stop: listeners stop accepting, connections are asked to end.
pub fn begin() {
    STATE.stopping.send_replace(true);
}

/// Resolves once the stop has begun (at once if it has).
pub async fn stopping() {
    let mut rx = STATE.stopping.subscribe();
    let _ = rx.wait_for(|s| *s).await;
}

/// Counts a connection as live while it is held.
pub struct Live(());

impl Live {
    /// Counts one more live connection, until the returned guard is dropped.
    pub fn enter() -> Self {
        STATE.live.fetch_add(1, Ordering::AcqRel);
        Live(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if STATE.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            STATE.ended.notify_waiters();
        }
    }
}

/// Connections being served now.
pub fn live() -> usize {
    STATE.live.load(Ordering::Acquire)
}

/// Waits until no connection is live or `grace` has passed; returns how many are still live.
/// (`Duration::MAX`: no deadline.)
pub async fn until_drained(grace: Duration) -> usize {
    let deadline = Instant::now().checked_add(grace);
    loop {
        let ended = STATE.ended.notified();
        if live() == 0 {
            return 0;
        }
        let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return live();
        }
        // Woken when the last one ends; re-checked at least every 100 ms regardless.
        let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), ended).await;
    }
}
