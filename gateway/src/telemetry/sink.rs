//! The event sinks: decisions, refusals, maskings, approval steps, enforcement gaps and
//! unrecorded spans, as JSON lines (each the record as the store holds it), to the local syslog
//! socket or journald, and to an HTTPS webhook.
//!
//! Fed by the recorder once records are written ([`Sinks::tap`]), so a sink sends only what the
//! store holds, already masked: a masking event names its rule and the secret's keyed
//! fingerprint, never the secret. Each sink has a bounded buffer; the tap only appends to it
//! (dropping the oldest event when it is full, counted in `ghgate_telemetry_events_total{result=
//! "dropped"}`), so a slow or absent receiver never holds traffic up. A failed send is retried
//! with backoff, its events still counted against the buffer's bound; a receiver that says the
//! events are bad (4xx) gets them dropped and counted, not retried forever.
//!
//! Must never send a credential, a webhook's URL path or header values to a log line.
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderName, Method};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    config::{SinkWebhookConfig, SyslogConfig, SyslogFormat},
    metrics::Metrics,
};
use crate::{
    approval::{config::shown_url, notify::scrub},
    outbound::Outbound,
    record::model::{self, DecisionOutcome, Record},
};

/// Whether a sink streams this record.
pub fn streamed(r: &Record) -> bool {
    matches!(
        r,
        Record::Decision(_)
            | Record::Refusal(_)
            | Record::Masked(_)
            | Record::Approval(_)
            | Record::EnforcementGap(_)
            | Record::Unrecorded(_)
    )
}

/// The event's name: the record's `type`.
fn event_name(r: &Record) -> &'static str {
    match r {
        Record::Decision(_) => "decision",
        Record::Refusal(_) => "refusal",
        Record::Masked(_) => "masked",
        Record::Approval(_) => "approval",
        Record::EnforcementGap(_) => "enforcement_gap",
        Record::Unrecorded(_) => "unrecorded",
        _ => "record",
    }
}

/// Syslog severity: warning for what stopped something or went unmediated, notice for a
/// masking, informational otherwise.
fn severity(r: &Record) -> u8 {
    match r {
        Record::Refusal(_) | Record::EnforcementGap(_) | Record::Unrecorded(_) => 4,
        Record::Decision(d) if d.outcome != DecisionOutcome::Passed => 4,
        Record::Masked(_) => 5,
        _ => 6,
    }
}

/// The JSON line of an event (without its newline).
pub fn line(r: &Record) -> String {
    serde_json::to_string(r).expect("records serialize")
}

struct Queue {
    events: VecDeque<Arc<Record>>,
    /// Taken by the sender and not yet sent: still counted against the bound.
    in_flight: usize,
}

/// A sink's bounded buffer: the oldest event is dropped (and counted) to make room.
pub struct Buffer {
    sink: &'static str,
    bound: usize,
    queue: Mutex<Queue>,
    ready: Notify,
    metrics: &'static Metrics,
}

impl Buffer {
    pub fn new(sink: &'static str, bound: usize, metrics: &'static Metrics) -> Self {
        Self {
            sink,
            bound: bound.max(1),
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                in_flight: 0,
            }),
            ready: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event; never waits.
    pub fn push(&self, event: Arc<Record>) {
        let mut q = self.lock();
        if q.events.len() + q.in_flight >= self.bound {
            self.metrics.sink_event(self.sink, false, 1);
            if q.events.pop_front().is_none() {
                // Everything held is in flight: the newest makes way.
                return;
            }
        }
        q.events.push_back(event);
        self.metrics
            .sink_buffered(self.sink, q.events.len() + q.in_flight);
        drop(q);
        self.ready.notify_one();
    }

    /// Takes up to `max` of the oldest events, waiting for one.
    async fn take(&self, max: usize) -> Vec<Arc<Record>> {
        loop {
            {
                let mut q = self.lock();
                let n = q.events.len().min(max);
                if n > 0 {
                    q.in_flight += n;
                    return q.events.drain(..n).collect();
                }
            }
            self.ready.notified().await;
        }
    }

    /// The events taken last are sent (`true`) or given up (`false`, counted dropped).
    fn done(&self, n: usize, sent: bool) {
        let mut q = self.lock();
        q.in_flight -= n;
        self.metrics
            .sink_buffered(self.sink, q.events.len() + q.in_flight);
        drop(q);
        self.metrics.sink_event(self.sink, sent, n as u64);
    }

    /// Events held, in flight included.
    pub fn len(&self) -> usize {
        let q = self.lock();
        q.events.len() + q.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a send failed.
pub enum SendError {
    /// Worth trying again (the receiver is down, busy, or the socket is absent).
    Retry(String),
    /// The events will never be taken (too large, refused as bad): dropped.
    Drop(String),
}

/// Where a sink's events go.
pub trait Output: Send + Sync + 'static {
    /// The most events one send carries.
    fn batch(&self) -> usize;
    fn send<'a>(
        &'a self,
        events: &'a [Arc<Record>],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;
}

/// Backoff between failed sends.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

/// Sends what `buffer` holds through `output`, forever: a failed send is retried after a wait
/// that doubles up to `backoff.max`; logged when sending starts failing and when it recovers.
pub async fn run(buffer: Arc<Buffer>, output: Arc<dyn Output>, backoff: Backoff) {
    let mut failing: Option<String> = None;
    loop {
        let events = buffer.take(output.batch()).await;
        let mut wait = backoff.first;
        let sent = loop {
            match output.send(&events).await {
                Ok(()) => break true,
                Err(SendError::Drop(why)) => {
                    buffer.metrics.sink_failure(buffer.sink);
                    warn!(sink = buffer.sink, events = events.len(), error = %why, "events refused by the sink; dropped");
                    break false;
                }
                Err(SendError::Retry(why)) => {
                    buffer.metrics.sink_failure(buffer.sink);
                    if failing.as_deref() != Some(why.as_str()) {
                        warn!(sink = buffer.sink, error = %why, buffered = buffer.len(), bound = buffer.bound,
                              "cannot send events; retrying with backoff (logged again when it recovers)");
                        failing = Some(why);
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(backoff.max);
                }
            }
        };
        if sent && failing.take().is_some() {
            info!(sink = buffer.sink, "sending events again");
        }
        buffer.done(events.len(), sent);
    }
}

/// The local syslog socket (RFC 5424) or journald's native socket, one datagram per event.
pub struct Syslog {
    socket: PathBuf,
    format: SyslogFormat,
    host: String,
    sock: tokio::net::UnixDatagram,
}

/// Syslog facility `daemon`.
const FACILITY: u8 = 3;

impl Syslog {
    pub fn new(config: &SyslogConfig) -> std::io::Result<Self> {
        Ok(Self {
            socket: config.socket.clone(),
            format: config.format,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty() && !h.contains(' '))
                .unwrap_or_else(|| "-".to_owned()),
            sock: tokio::net::UnixDatagram::unbound()?,
        })
    }

    /// The datagram of one event.
    pub fn datagram(&self, r: &Record) -> String {
        let json = line(r);
        match self.format {
            SyslogFormat::Rfc5424 => format!(
                "<{}>1 {} {} ghgate {} {} - {json}",
                FACILITY * 8 + severity(r),
                model::rfc3339(r.at()),
                self.host,
                std::process::id(),
                event_name(r),
            ),
            SyslogFormat::Journald => format!(
                "MESSAGE={json}\nPRIORITY={}\nSYSLOG_FACILITY={FACILITY}\nSYSLOG_IDENTIFIER=ghgate\nGHGATE_EVENT={}\n",
                severity(r),
                event_name(r),
            ),
        }
    }
}

impl Output for Syslog {
    fn batch(&self) -> usize {
        1
    }

    fn send<'a>(
        &'a self,
        events: &'a [Arc<Record>],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>> {
        Box::pin(async move {
            for e in events {
                let datagram = self.datagram(e);
                if let Err(err) = self.sock.send_to(datagram.as_bytes(), &self.socket).await {
                    let why = format!("{}: {err}", self.socket.display());
                    return Err(if err.raw_os_error() == Some(libc::EMSGSIZE) {
                        SendError::Drop(why)
                    } else {
                        SendError::Retry(why)
                    });
                }
            }
            Ok(())
        })
    }
}

/// An HTTPS receiver: each POST carries a batch of JSON lines (`application/x-ndjson`).
pub struct Webhook {
    config: SinkWebhookConfig,
    outbound: Outbound,
    headers: Vec<(HeaderName, String)>,
}

impl Webhook {
    /// `outbound` trusts the system's roots and the configured `ca`.
    pub fn new(config: SinkWebhookConfig, outbound: Outbound) -> anyhow::Result<Self> {
        let mut headers = vec![(http::header::CONTENT_TYPE, "application/x-ndjson".to_owned())];
        for (k, v) in &config.headers {
            headers.push((HeaderName::from_bytes(k.as_bytes())?, v.clone()));
        }
        Ok(Self {
            config,
            outbound,
            headers,
        })
    }

    /// The body of one POST: the records as `sessions export --format jsonl` writes them.
    pub fn body(events: &[Arc<Record>]) -> Vec<u8> {
        crate::record::export::to_jsonl(events.iter().map(|e| &**e)).into_bytes()
    }
}

impl Output for Webhook {
    fn batch(&self) -> usize {
        self.config.batch
    }

    fn send<'a>(
        &'a self,
        events: &'a [Arc<Record>],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>> {
        Box::pin(async move {
            let body = bytes::Bytes::from(Self::body(events));
            let sent = self
                .outbound
                .request(Method::POST, &self.config.url, &self.headers, Some(body));
            let url = shown_url(&self.config.url);
            match tokio::time::timeout(Duration::from_secs(self.config.timeout_secs), sent).await {
                Ok(Ok(r)) if r.status.is_success() => Ok(()),
                // The receiver cannot take these events as they are: retrying would stall
                // every later one behind them.
                Ok(Ok(r))
                    if r.status.is_client_error()
                        && !matches!(r.status.as_u16(), 401 | 403 | 404 | 408 | 429) =>
                {
                    Err(SendError::Drop(format!("{url} answered {}", r.status)))
                }
                Ok(Ok(r)) => Err(SendError::Retry(format!("{url} answered {}", r.status))),
                Ok(Err(e)) => Err(SendError::Retry(scrub(
                    &e.to_string(),
                    &self.config.url,
                    &self.config.headers,
                ))),
                Err(_) => Err(SendError::Retry(format!(
                    "{url} did not answer within {}s",
                    self.config.timeout_secs
                ))),
            }
        })
    }
}

/// The configured sinks' buffers, fed by the recorder.
#[derive(Clone, Default)]
pub struct Sinks {
    buffers: Vec<Arc<Buffer>>,
}

impl Sinks {
    pub fn new(buffers: Vec<Arc<Buffer>>) -> Self {
        Self { buffers }
    }

    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Records just written: the streamed ones join every sink's buffer. Runs where the
    /// recorder writes (possibly on the data path): appends only, never waits.
    pub fn tap(&self, records: &[Record]) {
        for r in records.iter().filter(|r| streamed(r)) {
            let event = Arc::new(r.clone());
            for b in &self.buffers {
                b.push(event.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::record::model::{DecisionAction, Masked, Place, SessionId};

    fn leaked() -> &'static Metrics {
        Box::leak(Box::default())
    }

    fn masked(i: u64) -> Arc<Record> {
        Arc::new(Record::Masked(Masked {
            session: SessionId::new("s-1"),
            exchange: model::ExchangeId::from(i),
            at: i,
            rule: "github-pat".into(),
            fingerprint: format!("fp{i}"),
            place: Place::RequestBody,
            client_masked: false,
        }))
    }

    fn at(r: &Record) -> u64 {
        r.at()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let m = leaked();
        let b = Buffer::new("webhook", 3, m);
        for i in 0..5 {
            b.push(masked(i));
        }
        assert_eq!(b.len(), 3);
        let kept: Vec<u64> = b.lock().events.iter().map(|e| at(e)).collect();
        assert_eq!(kept, [2, 3, 4]);
        let text = super::super::metrics::encode(&m.registry_for_tests());
        assert!(
            text.contains("ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn events_in_flight_count_against_the_bound() {
        let b = Buffer::new("webhook", 2, leaked());
        b.push(masked(1));
        b.push(masked(2));
        let taken = b.take(2).await;
        assert_eq!(taken.len(), 2);
        // Both held are in flight: the newest makes way, counted dropped.
        b.push(masked(3));
        assert_eq!(b.len(), 2);
        b.done(2, true);
        assert!(b.is_empty());
    }

    /// A receiver that fails until told to come back, then keeps what it gets.
    struct Flaky {
        up: AtomicBool,
        attempts: AtomicUsize,
        got: Mutex<Vec<u64>>,
    }

    impl Output for Flaky {
        fn batch(&self) -> usize {
            10
        }
        fn send<'a>(
            &'a self,
            events: &'a [Arc<Record>],
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>> {
            Box::pin(async move {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                if !self.up.load(Ordering::SeqCst) {
                    return Err(SendError::Retry("down".into()));
                }
                self.got.lock().unwrap().extend(events.iter().map(|e| at(e)));
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_receiver_that_comes_back_gets_what_the_bound_kept() {
        let m = leaked();
        let b = Arc::new(Buffer::new("webhook", 5, m));
        let out = Arc::new(Flaky {
            up: AtomicBool::new(false),
            attempts: AtomicUsize::new(0),
            got: Mutex::new(Vec::new()),
        });
        let backoff = Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(20),
        };
        tokio::spawn(run(b.clone(), out.clone(), backoff));
        for i in 0..8 {
            b.push(masked(i));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while out.attempts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(out.got.lock().unwrap().is_empty());
        out.up.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !b.is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = out.got.lock().unwrap().clone();
        // Five held at most: the first batch taken (event 0) stayed in flight, and of the rest
        // only the newest four were kept.
        assert_eq!(got, [0, 4, 5, 6, 7]);
        let text = super::super::metrics::encode(&m.registry_for_tests());
        for line in [
            "ghgate_telemetry_events_total{sink=\"webhook\",result=\"sent\"} 5",
            "ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        assert!(text.contains("ghgate_telemetry_send_failures_total{sink=\"webhook\"} "));
    }

    #[test]
    fn only_the_streamed_records_are_tapped() {
        let b = Arc::new(Buffer::new("syslog", 10, leaked()));
        let sinks = Sinks::new(vec![b.clone()]);
        let decision = Record::Decision(model::Decision {
            session: SessionId::new("s-1"),
            exchange: model::ExchangeId::from(1),
            at: 1,
            action: DecisionAction::Deny,
            rule: "rule #1 \"no-main\"".into(),
            message: None,
            ref_update: None,
            approval: None,
            outcome: DecisionOutcome::Refused,
        });
        let unrelated = Record::Unrecorded(model::Unrecorded {
            at: 2,
            exchanges: 1,
            cause: "disk full".into(),
        });
        let body = Record::BodyChunk(model::BodyChunk {
            session: SessionId::new("s-1"),
            exchange: model::ExchangeId::from(1),
            dir: model::Direction::Request,
            at: 3,
            offset: 0,
            data: String::new(),
        });
        sinks.tap(&[decision, body, unrelated]);
        assert_eq!(b.len(), 2);
    }

    #[tokio::test]
    async fn syslog_datagrams_are_rfc5424_or_journald_native() {
        let mut s = Syslog::new(&SyslogConfig {
            socket: "/nonexistent".into(),
            format: SyslogFormat::Rfc5424,
            buffer: 1,
        })
        .unwrap();
        let d = s.datagram(&masked(1_000_000));
        assert!(d.starts_with("<29>1 1970-01-01T00:00:01Z "), "{d}");
        assert!(
            d.contains(" ghgate ") && d.contains(" masked - {\"type\":\"masked\""),
            "{d}"
        );
        s.format = SyslogFormat::Journald;
        let d = s.datagram(&masked(1));
        assert!(d.starts_with("MESSAGE={\"type\":\"masked\""), "{d}");
        assert!(
            d.ends_with("\nPRIORITY=5\nSYSLOG_FACILITY=3\nSYSLOG_IDENTIFIER=ghgate\nGHGATE_EVENT=masked\n"),
            "{d}"
        );
    }
}
