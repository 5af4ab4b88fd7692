//! The anchor webhook: a second copy of every anchor, POSTed to an HTTPS receiver that neither
//! the runner nor the bucket's keys can rewrite (`[record.sink.webhook]`).
//!
//! The uploader offers each anchor it signs ([`AnchorHook::offer`]: appends, never waits); one
//! thread with its own runtime sends them oldest first, one POST each (`application/json`, the
//! anchor exactly as the bucket holds it), with `Authorization: Bearer …` when a token is set.
//! A receiver that is down gets what it missed, in order, once it is back: failures retry with
//! backoff and the anchors wait in a bounded queue. When the queue is full the oldest *head*
//! anchor makes way (a later anchor of the same chain covers it: the chain is hash-linked), and
//! only if every waiting anchor is a seal the oldest seal. Anchors are offered whether or not the
//! bucket is reachable; those still queued when the gateway stops are not kept (the next start
//! anchors its head again).
//!
//! Must never hold traffic up (the recorder does not know it exists), never print the token or
//! the URL's path.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use http::{HeaderName, Method};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::config::AnchorWebhookConfig;
use crate::approval::{config::shown_url, notify::scrub};
use crate::config::Config;
use crate::outbound::Outbound;
use crate::record::store::Anchor;
use crate::resolve::Resolver;
use crate::tls::upstream::UpstreamTls;

/// Where the uploader hands anchors to the webhook's thread.
pub struct AnchorHook {
    queue: Arc<Queue>,
}

struct Queue {
    bound: usize,
    waiting: Mutex<Waiting>,
    ready: Notify,
}

#[derive(Default)]
struct Waiting {
    anchors: VecDeque<Anchor>,
    /// The front anchor is being sent.
    sending: bool,
    dropped: u64,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, anchor: Anchor) {
        let mut w = self.lock();
        if w.anchors.len() >= self.bound {
            // The one being sent stays; of the rest, the oldest head goes first.
            let skip = usize::from(w.sending);
            let victim = w
                .anchors
                .iter()
                .skip(skip)
                .position(|a| !a.sealed)
                .or_else(|| (w.anchors.len() > skip).then_some(0))
                .map(|i| i + skip);
            match victim {
                Some(i) => {
                    w.anchors.remove(i);
                    w.dropped += 1;
                }
                None => return,
            }
        }
        w.anchors.push_back(anchor);
        drop(w);
        self.ready.notify_one();
    }

    async fn front(&self) -> Anchor {
        loop {
            {
                let mut w = self.lock();
                if let Some(a) = w.anchors.front().cloned() {
                    w.sending = true;
                    return a;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The front anchor was sent (or given up): it leaves the queue.
    fn done(&self) {
        let mut w = self.lock();
        w.anchors.pop_front();
        w.sending = false;
    }

    fn len(&self) -> usize {
        self.lock().anchors.len()
    }
}

/// Why a POST failed.
enum Failed {
    Retry(String),
    /// The receiver says this anchor will never be taken.
    Drop(String),
}

struct Poster {
    url: String,
    outbound: Outbound,
    headers: Vec<(HeaderName, String)>,
    /// What `scrub` hides of an error: the header values.
    secrets: BTreeMap<String, String>,
    timeout: Duration,
}

impl Poster {
    async fn post(&self, anchor: &Anchor) -> Result<(), Failed> {
        let body = serde_json::to_vec(anchor).map_err(|e| Failed::Drop(e.to_string()))?;
        let sent = self
            .outbound
            .request(Method::POST, &self.url, &self.headers, Some(body.into()));
        let url = shown_url(&self.url);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(r)) if r.status.is_success() => Ok(()),
            Ok(Ok(r))
                if r.status.is_client_error()
                    && !matches!(r.status.as_u16(), 401 | 403 | 404 | 408 | 429) =>
            {
                Err(Failed::Drop(format!("{url} answered {}", r.status)))
            }
            Ok(Ok(r)) => Err(Failed::Retry(format!("{url} answered {}", r.status))),
            Ok(Err(e)) => Err(Failed::Retry(scrub(&e.to_string(), &self.url, &self.secrets))),
            Err(_) => Err(Failed::Retry(format!(
                "{url} did not answer within {}s",
                self.timeout.as_secs()
            ))),
        }
    }
}

impl AnchorHook {
    /// Reads the token and the CA, and starts the sending thread.
    pub fn start(cfg: &AnchorWebhookConfig, config: &Config) -> Result<AnchorHook> {
        let token = cfg.token()?;
        let tls = UpstreamTls::new(cfg.ca.as_slice()).context("record.sink.webhook.ca")?;
        let mut headers = vec![(http::header::CONTENT_TYPE, "application/json".to_owned())];
        let mut secrets = BTreeMap::new();
        if let Some(t) = &token {
            let value = format!("Bearer {}", t.expose());
            headers.push((http::header::AUTHORIZATION, value.clone()));
            secrets.insert("authorization".to_owned(), value);
            secrets.insert("token".to_owned(), t.expose().to_owned());
        }
        let queue = Arc::new(Queue {
            bound: cfg.queue,
            waiting: Mutex::default(),
            ready: Notify::new(),
        });
        let (dns, servers) = (config.dns.clone(), config.dns_servers());
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let (first, max) = (
            Duration::from_millis(cfg.backoff_ms),
            Duration::from_millis(cfg.max_backoff_ms),
        );
        let url = cfg.url.clone();
        let q = queue.clone();
        info!(url = %shown_url(&url), bearer = token.is_some(), "sending anchors to a webhook too");
        thread::Builder::new()
            .name("ghgate-anchor-hook".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot start the anchor webhook's runtime; anchors go to the bucket only");
                        return;
                    }
                };
                rt.block_on(async move {
                    let resolver = match Resolver::new(&dns, &servers) {
                        Ok(r) => Arc::new(r),
                        Err(e) => {
                            warn!(error = %e, "the anchor webhook cannot resolve names; anchors go to the bucket only");
                            return;
                        }
                    };
                    let poster = Poster {
                        url,
                        outbound: Outbound::new(tls, resolver, timeout),
                        headers,
                        secrets,
                        timeout,
                    };
                    send_forever(&q, &poster, first, max).await;
                });
            })
            .context("cannot start the anchor webhook thread")?;
        Ok(AnchorHook { queue })
    }

    /// Queues an anchor; never waits.
    pub fn offer(&self, anchor: Anchor) {
        self.queue.push(anchor);
    }

    /// Waits until every queued anchor is sent, at most until `deadline` (an orderly stop).
    pub fn drain(&self, deadline: Instant) {
        while self.queue.len() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let left = self.queue.len();
        if left > 0 {
            warn!(
                anchors = left,
                "the anchor webhook did not take every anchor before the stop; the bucket holds them"
            );
        }
    }
}

async fn send_forever(queue: &Queue, poster: &Poster, first: Duration, max: Duration) {
    let mut failing: Option<String> = None;
    loop {
        let anchor = queue.front().await;
        let mut wait = first;
        loop {
            match poster.post(&anchor).await {
                Ok(()) => {
                    if failing.take().is_some() {
                        let dropped = std::mem::take(&mut queue.lock().dropped);
                        info!(dropped_heads = dropped, "the anchor webhook takes anchors again");
                    }
                    break;
                }
                Err(Failed::Drop(why)) => {
                    warn!(error = %why, seq = anchor.seq, "the anchor webhook refused an anchor; dropped");
                    break;
                }
                Err(Failed::Retry(why)) => {
                    if failing.as_deref() != Some(why.as_str()) {
                        warn!(error = %why, waiting = queue.len(),
                              "cannot send anchors to the webhook; retrying with backoff (logged again when it recovers)");
                        failing = Some(why);
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(max);
                }
            }
        }
        queue.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(seq: u64, sealed: bool) -> Anchor {
        Anchor {
            runner: "r".into(),
            segment: 1,
            seq,
            hash: String::new(),
            sealed,
            at: seq,
            signature: String::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_head_never_the_one_in_flight_and_seals_last() {
        let q = Queue {
            bound: 3,
            waiting: Mutex::default(),
            ready: Notify::new(),
        };
        q.push(anchor(1, false));
        q.lock().sending = true;
        q.push(anchor(2, true));
        q.push(anchor(3, false));
        q.push(anchor(4, true));
        let seqs = |q: &Queue| q.lock().anchors.iter().map(|a| a.seq).collect::<Vec<_>>();
        // 1 is in flight, 3 is the oldest head.
        assert_eq!(seqs(&q), [1, 2, 4]);
        q.push(anchor(5, true));
        // Only seals wait behind the one in flight: the oldest seal goes.
        assert_eq!(seqs(&q), [1, 4, 5]);
        q.done();
        assert_eq!(seqs(&q), [4, 5]);
        assert_eq!(q.lock().dropped, 2);
    }
}
