//! The recorder: turns what the pipeline sees into records and hands them to one writer thread,
//! which owns the store and the index.
//!
//! The proxy never waits on the disk per chunk: chunks are queued. It waits in two places only:
//! before admitting a new request while more than `max_pending_bytes` are queued (backpressure,
//! never dropping), and at the end of each exchange until its record has been written (so a
//! client never sees the end of a response that a kill -9 could lose). While the store cannot
//! write, new requests are refused with 503 (or, opted in, counted as unrecorded).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, oneshot};
use tracing::{error, info, warn};

use super::{
    git,
    index::{Index, index_path},
    model::{
        self, BodySummary, Direction, ExchangeId, GitService, Place, Record, SessionEndReason, SessionId,
        StreamKind,
    },
    store::{self, Store, StoreOptions, key_path},
};
use crate::{
    config::{Config, FsyncPolicy, OnRecordFailure},
    http::{BodyError, ConnInfo, EndFuture, Exchange, Outcome, websocket},
    identity::{self, Caller},
    mask::{Finding, Masker, sse},
};

/// Why records were not written (and so why what they record did not go on, unless
/// `on_record_failure = "allow"`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The store failed to write; until it writes again, new requests are refused.
    #[error("the session recorder cannot write: {0}")]
    CannotWrite(Arc<store::Error>),
    /// The writer thread has stopped (the gateway is stopping).
    #[error("the recorder stopped")]
    Stopped,
    /// The record sink is further behind than `max_backlog_bytes` (`on_sink_failure = "refuse"`).
    #[error("the record sink is {bytes} bytes behind (more than record.sink.max_backlog_bytes){}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    SinkBehind { bytes: u64, cause: Option<String> },
}

/// Says when records are written, or why they were not.
enum Ack {
    /// Written by the caller itself (see `Recorder::submit_acked`).
    Written,
    /// Queued for the writer thread, which answers here.
    Queued(oneshot::Receiver<Result<(), RecordError>>),
}

/// Waits for an acknowledgement.
async fn acknowledged(ack: Ack) -> Result<(), RecordError> {
    match ack {
        Ack::Written => Ok(()),
        Ack::Queued(rx) => rx.await.unwrap_or(Err(RecordError::Stopped)),
    }
}

/// What the writer thread is asked to do.
enum Msg {
    Records {
        records: Vec<Record>,
        bytes: u64,
        ack: Option<oneshot::Sender<Result<(), RecordError>>>,
    },
}

struct Shared {
    /// Bytes queued for the writer and not yet written.
    pending: AtomicU64,
    space: Notify,
    /// Why the store cannot write, while it cannot.
    failed: Mutex<Option<Arc<store::Error>>>,
    /// Set when the store fails, and at start when its filesystem has less than
    /// [`READ_AHEAD_ROOM`] free; cleared by the writer thread once the store's filesystem has
    /// [`READ_AHEAD_ROOM`] free again. Until then a read's request is written before it goes
    /// upstream too. A write that succeeds proves nothing on a full disk: the probe's checkpoint,
    /// or a refused exchange's end, may fit in a segment's last page where a read's answer then
    /// does not, and the read would have gone upstream with no record at all.
    unproven: AtomicBool,
    /// Exchanges let through unrecorded (`on_record_failure = "allow"`) since the failure.
    unrecorded: AtomicU64,
    /// Written since the last sync.
    dirty: AtomicBool,
    /// Set while the writer thread holds the store's lock (it may sync, for milliseconds). A
    /// caller finding the lock held otherwise, by another caller writing through (one write, a
    /// few µs), waits for it rather than hand its records to the writer thread, whose wake-up
    /// (and the acknowledgement's) costs more than that write.
    writer_holds: AtomicBool,
    /// Tries at the lock that found it held by another caller writing through.
    lock_waits: AtomicU64,
    /// Sees every record once it is written (the telemetry sinks); must never wait.
    tap: std::sync::OnceLock<Tap>,
}

/// What [`Recorder::set_tap`] takes.
pub type Tap = Box<dyn Fn(&[Record]) + Send + Sync>;

/// Records written, with where they were written, on their way to the index.
type Indexed = Vec<(store::Position, Record)>;

/// What waits to be indexed. Writers add to it without waking the indexer each time: the indexer
/// is woken only from its rest (see `index_forever`), so a busy gateway pays no cross-thread
/// wake-up per exchange.
#[derive(Default)]
struct IndexQueue {
    state: Mutex<IndexState>,
    wake: Condvar,
}

#[derive(Default)]
struct IndexState {
    items: Indexed,
    /// The indexer's last batch, emptied and handed back (see `give_back`): the next records
    /// queued go into it, instead of a vector grown afresh, page by page, for every batch.
    spare: Indexed,
    resting: bool,
    closed: bool,
}

impl IndexQueue {
    /// Called under the store's lock, so records arrive in store order.
    fn push(&self, items: impl IntoIterator<Item = (store::Position, Record)>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.items.extend(items);
        if st.resting {
            st.resting = false;
            self.wake.notify_one();
        }
    }

    /// Hands an indexed batch's vector back, emptied, for the records queued next; one far
    /// larger than a busy interval's batch is let go instead of kept.
    fn give_back(&self, mut items: Indexed) {
        items.clear();
        if items.capacity() > MAX_SPARE_INDEXED {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.items.is_empty() && st.items.capacity() < items.capacity() {
            st.items = items;
        } else if st.spare.capacity() < items.capacity() {
            st.spare = items;
        }
    }

    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.wake.notify_one();
    }

    /// Everything queued; waits (resting) while nothing is. None once closed and drained.
    fn take(&self) -> Option<Indexed> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !st.items.is_empty() {
                let spare = std::mem::take(&mut st.spare);
                return Some(std::mem::replace(&mut st.items, spare));
            }
            if st.closed {
                return None;
            }
            st.resting = true;
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub struct Recorder {
    tx: Mutex<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
    /// The store, shared by the writer thread and callers that write through (see `submit`);
    /// taken by the writer thread at shutdown.
    store: Arc<Mutex<Option<Store>>>,
    /// Where written records go to be indexed; dropped at shutdown.
    to_index: Arc<IndexQueue>,
    fsync: FsyncPolicy,
    body_cap: u64,
    max_pending: u64,
    on_failure: OnRecordFailure,
    /// Sessions seen by this gateway run, with what later exchanges of the session need.
    sessions: Mutex<Sessions>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    /// Masks what the recorder stores of callers (command lines), once the gateway has set it.
    masker: std::sync::OnceLock<Masker>,
    /// Where the fingerprints of secrets found in responses go (the policy's `secret_seen`).
    seen: std::sync::OnceLock<Arc<crate::mask::seen::SeenSecrets>>,
    /// The copy off the host, when `[record.sink]` is set.
    sink: std::sync::OnceLock<super::sink::Sink>,
}

/// The sessions seen by this gateway run: one entry each, removed when its process exits.
#[derive(Default)]
struct Sessions {
    live: HashMap<SessionId, SessionState>,
    /// Sessions whose process could not be watched (gone before the gateway saw it, or its pid
    /// reused since), oldest first: no exit will remove them, so only the newest
    /// [`MAX_UNWATCHED`] are kept, enough that the connections such a process had in flight
    /// share its session. A process in a loop of connecting and exiting leaves no more.
    unwatched: std::collections::VecDeque<SessionId>,
}

const MAX_UNWATCHED: usize = 1024;

impl Sessions {
    fn unwatched(&mut self, session: SessionId) {
        self.unwatched.push_back(session);
        if self.unwatched.len() > MAX_UNWATCHED
            && let Some(oldest) = self.unwatched.pop_front()
        {
            self.live.remove(&oldest);
        }
    }
}

#[derive(Default)]
struct SessionState {
    /// Refs the server advertised in this session, for naming the ids a fetch wants.
    advertised: Vec<(ghgate_git::Oid, String)>,
}

/// Settings the writer thread needs.
struct WriterSettings {
    /// The store's directory, whose filesystem's free space ends `Shared::unproven`.
    dir: PathBuf,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    /// Makes a segment's writes durable: `PendingSync::sync` (fdatasync), but for tests that
    /// hold or fail it.
    sync: Syncer,
}

/// What [`WriterSettings::sync`] is.
type Syncer = Box<dyn Fn(store::PendingSync) -> store::Result<()> + Send>;

impl Recorder {
    /// Opens the store (recovering a torn tail) and the index, and starts the writer thread.
    pub fn start(config: &Config) -> anyhow::Result<Arc<Self>> {
        Self::start_syncing(config, Box::new(store::PendingSync::sync))
    }

    /// `start`, with `sync` making the store's writes durable.
    fn start_syncing(config: &Config, sync: Syncer) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let dir = config.record_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the record directory {}", dir.display()))?;
        let key = store::load_or_create_key(&key_path(&dir))?;
        let prune_key = key.clone();
        let (store, recovery) = Store::open(
            &dir,
            key,
            StoreOptions {
                segment_bytes: config.record.segment_bytes,
            },
        )
        .with_context(|| format!("cannot open the record store in {}", dir.display()))?;
        if let Some(r) = &recovery {
            warn!(
                segment = r.segment,
                kept_bytes = r.kept,
                truncated_bytes = r.truncated,
                records = r.records,
                "the record store had a torn tail (the gateway stopped mid-write); it was cut off and a signed recovery record written"
            );
        }
        let mut index = Index::open(&index_path(&dir))
            .with_context(|| format!("cannot open the record index in {}", dir.display()))?;
        let began = std::time::Instant::now();
        // Rebuilding after an upgrade reads the whole store (about 25 s per ten million
        // records): longer than systemd gives a start by default.
        let extending = crate::notify::Extending::start("indexing the record store");
        let caught_up = index
            .catch_up(&dir)
            .context("cannot bring the record index up to date with the store")?;
        drop(extending);
        if let Some(version) = index.upgraded_from() {
            info!(
                records = caught_up,
                from_schema = version,
                secs = format!("{:.1}", began.elapsed().as_secs_f64()),
                "the record index was made by another version of ghgate: rebuilt it from the store"
            );
        } else if caught_up > 0 {
            info!(
                records = caught_up,
                "indexed records the previous run had not indexed"
            );
        }
        let shared = Arc::new(Shared {
            pending: AtomicU64::new(0),
            space: Notify::new(),
            failed: Mutex::new(None),
            // Started on a filesystem without room for a read's end: reads are written ahead
            // until the writer thread sees room, as after a failure.
            unproven: AtomicBool::new(!roomy(&dir)),
            unrecorded: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            writer_holds: AtomicBool::new(false),
            lock_waits: AtomicU64::new(0),
            tap: std::sync::OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel();
        let settings = WriterSettings {
            dir: dir.clone(),
            fsync: config.record.fsync,
            fsync_interval: Duration::from_millis(config.record.fsync_interval_ms),
            sync,
        };
        let to_index = Arc::new(IndexQueue::default());
        let indexed = to_index.clone();
        let indexer = thread::Builder::new()
            .name("ghgate-indexer".into())
            .spawn(move || index_forever(index, &indexed))
            .context("cannot start the indexer thread")?;
        let store = Arc::new(Mutex::new(Some(store)));
        let writer_shared = shared.clone();
        let (writer_store, writer_index) = (store.clone(), to_index.clone());
        let writer = thread::Builder::new()
            .name("ghgate-recorder".into())
            .spawn(move || {
                write_forever(writer_store, rx, writer_shared, settings, writer_index);
                let _ = indexer.join();
            })
            .context("cannot start the recorder thread")?;
        info!(dir = %dir.display(), "recording sessions");
        let retention_days = config.record.retention_days;
        let recorder = Arc::new(Self {
            tx: Mutex::new(tx),
            shared,
            store,
            to_index,
            fsync: config.record.fsync,
            body_cap: config.record.body_cap_bytes,
            max_pending: config.record.max_pending_bytes,
            on_failure: config.record.on_record_failure,
            sessions: Mutex::new(Sessions::default()),
            writer: Mutex::new(Some(writer)),
            masker: std::sync::OnceLock::new(),
            seen: std::sync::OnceLock::new(),
            sink: std::sync::OnceLock::new(),
        });
        let sinking = config.record.sink.is_some();
        if let Some(cfg) = &config.record.sink {
            let sink = super::sink::Sink::start(
                cfg,
                config,
                dir.clone(),
                prune_key.clone(),
                Arc::downgrade(&recorder),
            )
            .context("cannot start the record sink")?;
            let _ = recorder.sink.set(sink);
        }
        if retention_days > 0 {
            let weak = Arc::downgrade(&recorder);
            thread::Builder::new()
                .name("ghgate-retention".into())
                .spawn(move || retain_forever(dir, prune_key, retention_days, sinking, weak))
                .context("cannot start the retention thread")?;
        }
        Ok(recorder)
    }

    /// Writes or queues records, without waiting for them.
    fn submit(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        if let Err(records) = self.write_through(records) {
            self.queue(records, None);
        }
    }

    /// Writes or queues records; the acknowledgement says when they are written (or why not).
    ///
    /// When nothing is queued ahead of them and the store is free, the caller writes them itself
    /// (one write(2) into the page cache, as the writer thread would): a request then waits for
    /// no other thread to wake up, which on a busy host costs more than the write, and needs no
    /// channel. Otherwise, and whenever something is wrong, they go to the writer thread, which
    /// keeps order, batches, and owns every failure. No records: waits for what is queued.
    fn submit_acked(&self, records: Vec<Record>) -> Ack {
        match self.write_through(records) {
            Ok(()) => Ack::Written,
            Err(records) => {
                let (tx, rx) = oneshot::channel();
                self.queue(records, Some(tx));
                Ack::Queued(rx)
            }
        }
    }

    /// Hands records to the writer thread, to be acknowledged through `ack`.
    fn queue(&self, records: Vec<Record>, ack: Option<oneshot::Sender<Result<(), RecordError>>>) {
        let bytes: u64 = records.iter().map(approx_size).sum();
        self.shared.pending.fetch_add(bytes, Ordering::Relaxed);
        let sent = self
            .tx
            .lock()
            .map(|tx| tx.send(Msg::Records { records, bytes, ack }).is_ok());
        if !matches!(sent, Ok(true)) {
            // The acknowledgement, dropped with the message, says the recorder stopped.
            self.shared.pending.fetch_sub(bytes, Ordering::Relaxed);
            error!("the recorder thread is gone; records are not being written");
        }
    }

    /// Writes `records` on the calling thread if that keeps the store's order and needs no
    /// waiting on the writer thread: nothing queued or being written, the store's lock free (or
    /// held by another write-through, see `lock_for_write_through`), no failure, no sync per
    /// exchange, no segment to seal. Gives them back otherwise (or if the write fails: the
    /// writer thread then retries and reports).
    fn write_through(&self, records: Vec<Record>) -> Result<(), Vec<Record>> {
        if records.is_empty()
            || self.fsync == FsyncPolicy::Exchange
            || self.shared.pending.load(Ordering::Acquire) != 0
            || self.failure().is_some()
        {
            return Err(records);
        }
        // Serialised before the lock is taken: the other shards wait for a shorter write.
        let Ok(mut framed) = store::Framed::new(&records) else {
            return Err(records);
        };
        let Some(mut guard) = self.lock_for_write_through() else {
            return Err(records);
        };
        // Checked again under the lock: the writer thread holds it while it writes what was
        // queued, and only counts it written after.
        let Some(store) = guard
            .as_mut()
            .filter(|s| s.has_room(framed.bytes()) && self.shared.pending.load(Ordering::Acquire) == 0)
        else {
            return Err(records);
        };
        let mut records = records;
        if append_framed_indexed(store, &mut records, &mut framed, &self.shared, &self.to_index).is_err() {
            return Err(records);
        }
        Ok(())
    }

    /// The store's lock, if it is free, or held by another caller writing through (then it is
    /// waited for: a write-through holds it for one write). None while the writer thread holds
    /// it: it may be writing a large batch.
    fn lock_for_write_through(&self) -> Option<std::sync::MutexGuard<'_, Option<Store>>> {
        /// Tries before sleeping on the lock: most holds end within them.
        const SPINS: u32 = 64;
        for i in 0..=SPINS {
            match self.store.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::WouldBlock)
                    if !self.shared.writer_holds.load(Ordering::Acquire) =>
                {
                    if i == 0 {
                        self.shared.lock_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    if i == SPINS {
                        // Sleeps until it is released. Yielding the CPU in a loop instead cost a
                        // context switch for most exchanges with two shards writing through.
                        return self.store.lock().ok();
                    }
                    std::hint::spin_loop();
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits until the store has written everything queued so far (used at shutdown).
    pub async fn flush(&self) -> Result<(), RecordError> {
        acknowledged(self.submit_acked(Vec::new())).await
    }

    /// Stops the writer after it has written everything queued, and seals the segment.
    pub fn stop(&self) {
        // Replacing the sender disconnects the channel once queued messages are drained.
        if let Ok(mut tx) = self.tx.lock() {
            *tx = mpsc::channel().0;
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
        // The writer sealed the last segment: one more pass copies it, if the sink can.
        if let Some(sink) = self.sink.get() {
            sink.finish(Duration::from_secs(10));
        }
    }

    /// A span in which the sink was behind and traffic went on (`on_sink_failure = "allow"`).
    pub(super) fn submit_gap(&self, gap: model::EnforcementGap) {
        self.submit(vec![Record::EnforcementGap(gap)]);
    }

    /// The record sink's state, when one is configured.
    pub fn sink(&self) -> Option<&super::sink::SinkStatus> {
        self.sink.get().map(|s| &*s.status)
    }

    /// Why the store cannot write right now, if it cannot.
    pub fn failure(&self) -> Option<Arc<store::Error>> {
        self.shared.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Hands every record, once written, to `tap` (set once, at start; later calls are
    /// ignored). It runs under the store's lock, possibly on the data path: it must not wait.
    pub fn set_tap(&self, tap: Tap) {
        let _ = self.shared.tap.set(tap);
    }

    /// Bytes queued for the writer and not yet written: how far the store is behind.
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// The masker for what the recorder stores of callers (set once, at start).
    /// Feeds the fingerprints of secrets found in responses to `seen`. Only the first call counts.
    pub fn set_seen(&self, seen: Arc<crate::mask::seen::SeenSecrets>) {
        let _ = self.seen.set(seen);
    }

    pub fn set_masker(&self, masker: Masker) {
        let _ = self.masker.set(masker);
    }

    /// A terminated client connection: its session's first record (once per gateway run) and
    /// the connection's facts.
    pub fn connection(self: &Arc<Self>, conn: &ConnInfo) {
        let mut records = Vec::with_capacity(2);
        self.ensure_session(&conn.session, &conn.caller, &mut records);
        records.push(Record::Connection(model::Connection {
            session: conn.session.clone(),
            conn: conn.id,
            at: model::now_micros(),
            client: conn.client.to_string(),
            orig_dst: conn.orig_dst.to_string(),
            sni: conn.sni.clone(),
            client_alpn: alpn(conn.client_proto).into(),
            upstream_alpn: conn.upstream_proto.map(|p| alpn(p).into()),
            client_tls: conn.client_tls.clone(),
            upstream_tls: None,
        }));
        self.submit(records);
    }

    /// A step of an approval, in the session it belongs to.
    pub fn approval_step(&self, mut step: model::ApprovalStep) {
        if let Some(m) = self.masker.get() {
            step.operation = m.mask_str(&step.operation).0;
            step.reason = step.reason.map(|r| m.mask_str(&r).0);
        }
        self.submit(vec![Record::Approval(step)]);
    }

    /// A connection relayed untouched (not terminated): its facts, once it has ended.
    pub fn passthrough(self: &Arc<Self>, caller: &Caller, facts: model::Passthrough) {
        let mut records = Vec::with_capacity(2);
        self.ensure_session(&facts.session, caller, &mut records);
        records.push(Record::Passthrough(facts));
        self.submit(records);
    }

    /// A relay about to begin (its name is on the passthrough list): written and acknowledged
    /// before the upstream is dialled. `Err` says why it could not be (the relay must not begin
    /// while `on_record_failure = "refuse"`); `Ok` also when failures are allowed (counted).
    pub async fn passthrough_start(
        self: &Arc<Self>,
        caller: &Caller,
        facts: model::PassthroughStart,
    ) -> Result<(), RecordError> {
        if self.on_failure == OnRecordFailure::Refuse
            && let Some(cause) = self.failure()
        {
            return Err(RecordError::CannotWrite(cause));
        }
        let mut records = Vec::with_capacity(2);
        self.ensure_session(&facts.session, caller, &mut records);
        records.push(Record::PassthroughStart(facts));
        match (acknowledged(self.submit_acked(records)).await, self.on_failure) {
            (Ok(()), _) => Ok(()),
            (Err(cause), OnRecordFailure::Refuse) => Err(cause),
            (Err(cause), OnRecordFailure::Allow) => {
                let n = self.shared.unrecorded.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(cause = %cause, unrecorded = n,
                      "passthrough relay begins UNRECORDED: the session recorder cannot write (on_record_failure = \"allow\")");
                Ok(())
            }
        }
    }

    /// A connection or datagram refused because it would have gone around the gateway.
    pub fn refusal(self: &Arc<Self>, caller: &Caller, mut facts: model::Refusal) {
        if let Some(m) = self.masker.get() {
            facts.sni = facts.sni.map(|s| m.mask_str(&s).0);
            facts.detail = facts.detail.map(|d| m.mask_str(&d).0);
        }
        let mut records = Vec::with_capacity(2);
        self.ensure_session(&facts.session, caller, &mut records);
        records.push(Record::Refusal(facts));
        self.submit(records);
    }

    /// A connection egress control let through.
    pub fn egress(self: &Arc<Self>, caller: &Caller, facts: model::EgressSeen) {
        let mut records = Vec::with_capacity(2);
        self.ensure_session(&facts.session, caller, &mut records);
        records.push(Record::Egress(facts));
        self.submit(records);
    }

    /// A span in which the gateway did not mediate as configured; waits until it is written.
    pub async fn enforcement_gap(&self, gap: model::EnforcementGap) -> Result<(), RecordError> {
        acknowledged(self.submit_acked(vec![Record::EnforcementGap(gap)])).await
    }

    fn ensure_session(self: &Arc<Self>, session: &SessionId, caller: &Caller, records: &mut Vec<Record>) {
        let new = match self.sessions.lock() {
            Ok(mut s) => {
                if s.live.contains_key(session) {
                    false
                } else {
                    s.live.insert(session.clone(), SessionState::default());
                    true
                }
            }
            Err(_) => false,
        };
        if !new {
            return;
        }
        records.push(Record::SessionStart(model::SessionStart {
            session: session.clone(),
            at: model::now_micros(),
            tgid: caller.tgid,
            uid: caller.uid,
            user: identity::user_name(caller.uid),
            gid: caller.gid,
            comm: caller.comm.clone(),
            exe: caller.exe.as_ref().map(|p| p.display().to_string()),
            cmdline: model::mask_cmdline(&caller.cmdline())
                .into_iter()
                .map(|arg| match self.masker.get() {
                    Some(m) => m.mask_str(&arg).0,
                    None => arg,
                })
                .collect(),
            cgroup_id: caller.cgroup_id,
            cgroup: caller
                .cgroup
                .clone()
                .or_else(|| identity::cgroup_path(caller.tgid)),
            ci: caller.ci.clone(),
        }));
        self.watch_exit(session.clone(), caller);
    }

    /// Records the session's end when its process exits (pidfd readability).
    fn watch_exit(self: &Arc<Self>, session: SessionId, caller: &Caller) {
        let watched = crate::sys::pidfd_open(caller.tgid)
            // The tgid may have been reused since accept: only watch the same process.
            .filter(|_| {
                caller.start_ticks.is_some() && identity::start_ticks(caller.tgid) == caller.start_ticks
            })
            .and_then(|pidfd| crate::sys::watch_pidfd(pidfd).ok());
        let Some(fd) = watched else {
            if let Ok(mut s) = self.sessions.lock() {
                s.unwatched(session);
            }
            return;
        };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let _ = fd.readable().await;
            let Some(me) = me.upgrade() else { return };
            if let Ok(mut s) = me.sessions.lock() {
                s.live.remove(&session);
            }
            me.submit(vec![Record::SessionEnd(model::SessionEnd {
                session,
                at: model::now_micros(),
                reason: SessionEndReason::Exited,
            })]);
        });
    }

    /// Admission of a new request: refused while the store cannot write (unless allowed), and
    /// held while the writer is too far behind.
    pub async fn admit(&self, ex: &Exchange) -> Option<Response<Bytes>> {
        // With failures allowed, the request goes on: its head's record fails, and is counted.
        if self.on_failure == OnRecordFailure::Refuse
            && let Some(cause) = self.failure()
        {
            return Some(refusal(ex, &RecordError::CannotWrite(cause)));
        }
        if let Some(status) = self.sink()
            && status.on_failure == super::sink::OnSinkFailure::Refuse
            && let Some((bytes, cause)) = status.behind()
        {
            return Some(refusal(ex, &RecordError::SinkBehind { bytes, cause }));
        }
        let mut waited = None;
        while self.shared.pending.load(Ordering::Relaxed) > self.max_pending {
            let since = *waited.get_or_insert_with(Instant::now);
            // Re-check on a timer too: a wake-up between the load and the wait is not lost.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.shared.space.notified()).await;
            if since.elapsed() > Duration::from_secs(5) && since.elapsed().as_millis() % 5000 < 50 {
                warn!(
                    pending = self.shared.pending.load(Ordering::Relaxed),
                    "requests wait for the recorder to catch up"
                );
            }
        }
        None
    }

    /// Per-exchange recording state.
    /// Starts recording an exchange; `masker` masks what is recorded of it (bodies are handed
    /// over already masked).
    pub fn exchange(self: &Arc<Self>, ex: &Exchange, masker: Masker) -> ExchangeRecording {
        let git = git_kind(&ex.req);
        ExchangeRecording {
            recorder: self.clone(),
            session: ex.conn.session.clone(),
            id: ex.id,
            started_at: model::now_micros(),
            git,
            heads: Mutex::new(Heads::default()),
            // A pack is compressed, so masking cannot reach into its bytes: packs are recorded
            // by length and hash only, and a pushed pack's objects are scanned for secrets.
            request: Mutex::new(BodyRecording::new(
                Direction::Request,
                if git == GitKind::Push { 0 } else { self.body_cap },
            )),
            response: Mutex::new(BodyRecording::new(
                Direction::Response,
                if git == GitKind::Fetch { 0 } else { self.body_cap },
            )),
            ws_index: AtomicU64::new(0),
            url: Mutex::new(None),
            last_chunk: Mutex::new(Vec::new()),
            masker: Mutex::new(masker),
            identity: Mutex::new(None),
            noted: Mutex::new(Vec::new()),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer to a request the store cannot record: 503, naming the cause.
fn refusal_text(cause: &RecordError) -> String {
    format!("ghgate: this request was not forwarded because {cause}\n")
}

fn refusal(ex: &Exchange, cause: &RecordError) -> Response<Bytes> {
    warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), cause = %cause, "request refused: the session recorder cannot write");
    let mut resp = Response::new(Bytes::from(refusal_text(cause)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
    resp
}

fn alpn(p: crate::tls::upstream::Proto) -> &'static str {
    match p {
        crate::tls::upstream::Proto::Http1 => "http/1.1",
        crate::tls::upstream::Proto::Http2 => "h2",
    }
}

/// Roughly what a record costs in the queue (for backpressure, not for accounting).
fn approx_size(r: &Record) -> u64 {
    match r {
        Record::BodyChunk(c) => c.data.len() as u64 + 128,
        Record::StreamEvent(e) => e.data.len() as u64 + 128,
        _ => 512,
    }
}

/// While records keep coming, the indexer takes them in one transaction this often; under
/// load (a batch of `INDEX_BUSY_BATCH` records or more), every `INDEX_BUSY_INTERVAL`. Each
/// commit rewrites the tails of the tables and indexes it touched, however few rows it added:
/// at 12,000 exchanges/s (36,000 records/s), indexing in 10 ms batches cost 10.5 µs of CPU per
/// exchange and in 50 ms batches 7.3 (a timing run of `Index::add_batch`, one thread). A light
/// load keeps the shorter lag for listings.
const INDEX_INTERVAL: Duration = Duration::from_millis(10);
const INDEX_BUSY_INTERVAL: Duration = Duration::from_millis(50);
const INDEX_BUSY_BATCH: usize = 256;
/// The largest batch vector kept for reuse: 16,384 records (6.5 MB), eight times a busy
/// interval's batch on a 2-core host recording 8,000 exchanges/s.
const MAX_SPARE_INDEXED: usize = 16_384;

/// The writer thread: batches what is queued into one write, indexes it, syncs per policy,
/// and acknowledges.
fn write_forever(
    store: Arc<Mutex<Option<Store>>>,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    settings: WriterSettings,
    to_index: Arc<IndexQueue>,
) {
    let mut last_sync = Instant::now();
    let mut batch = Vec::new();
    let mut acks = Vec::new();
    loop {
        let failed = shared.failed.lock().map(|f| f.is_some()).unwrap_or(false);
        let wait = if failed {
            Duration::from_secs(1)
        } else {
            settings.fsync_interval
        };
        let first = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if !failed && shared.unproven.load(Ordering::Acquire) && roomy(&settings.dir) {
            shared.unproven.store(false, Ordering::Release);
        }
        let mut bytes = 0;
        if let Some(first) = first {
            let mut next = Some(first);
            while let Some(Msg::Records {
                records,
                bytes: b,
                ack,
            }) = next
            {
                batch.extend(records);
                bytes += b;
                acks.extend(ack);
                // Bounded, so one write's buffer stays small however far behind the queue is.
                if batch.len() >= 4096 || bytes >= 4 << 20 {
                    break;
                }
                next = rx.try_recv().ok();
            }
        }
        // Serialised before the lock is taken, like a write-through.
        let framed = store::Framed::new(&batch);
        let mut guard = store.lock().unwrap_or_else(|e| e.into_inner());
        // Declared after the lock's guard, so cleared before it is released.
        let holding = Holding::new(&shared.writer_holds);
        let Some(store) = guard.as_mut() else { break };
        if failed && batch.is_empty() {
            // Probe: once a signed checkpoint can be written again, and made durable (the
            // failure may have been a sync's), the store is back.
            if store.checkpoint().is_ok() && durable(store, &settings.sync).is_ok() {
                recovered(store, &shared, &to_index);
            }
            continue;
        }
        if !batch.is_empty() {
            match framed.and_then(|mut framed| {
                append_framed_indexed(store, &mut batch, &mut framed, &shared, &to_index)
            }) {
                Ok(()) => {
                    if failed && durable(store, &settings.sync).is_ok() {
                        recovered(store, &shared, &to_index);
                    }
                }
                Err(e) => {
                    let cause = fail(&shared, e);
                    batch.clear();
                    for ack in acks.drain(..) {
                        let _ = ack.send(Err(RecordError::CannotWrite(cause.clone())));
                    }
                }
            }
        }
        let due = match settings.fsync {
            FsyncPolicy::Exchange => !acks.is_empty(),
            FsyncPolicy::Interval => last_sync.elapsed() >= settings.fsync_interval,
        };
        // The sync itself runs after the store's lock is released: it takes milliseconds, in
        // which callers writing through would otherwise fall back to this thread and wait.
        let to_sync = if due && shared.dirty.swap(false, Ordering::AcqRel) {
            last_sync = Instant::now();
            Some(store.sync_later())
        } else {
            None
        };
        drop(holding);
        drop(guard);
        // Written (and synced, where the policy says so): the exchanges may complete. A failed
        // sync fails them where they waited for it.
        let complete = |acks: &mut Vec<oneshot::Sender<Result<(), RecordError>>>,
                        failure: Option<&Arc<store::Error>>| {
            for ack in acks.drain(..) {
                let _ = ack.send(match failure {
                    None => Ok(()),
                    Some(cause) => Err(RecordError::CannotWrite(cause.clone())),
                });
            }
            shared.pending.fetch_sub(bytes, Ordering::AcqRel);
            shared.space.notify_waiters();
        };
        let acked_after_sync = settings.fsync == FsyncPolicy::Exchange;
        if !acked_after_sync {
            complete(&mut acks, None);
        }
        // Not durable: what was written since the last sync may not survive a crash of the
        // host, and the page cache may no longer say so if asked again (a later sync can
        // succeed over lost pages). New requests are refused until a sync succeeds again.
        let unsynced = match to_sync {
            Some(Ok(Some(pending))) => (settings.sync)(pending).err(),
            Some(Err(e)) => Some(e),
            _ => None,
        }
        .map(|e| fail(&shared, e));
        if acked_after_sync {
            complete(&mut acks, unsynced.as_ref());
        }
    }
    to_index.close();
    let taken = store.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(store) = taken
        && let Err(e) = store.close()
    {
        warn!(error = %e, "cannot seal the record store at shutdown");
    }
}

/// Makes what the store holds durable, through `sync`.
fn durable(store: &mut Store, sync: &Syncer) -> store::Result<()> {
    match store.sync_later()? {
        Some(pending) => sync(pending),
        None => Ok(()),
    }
}

/// Free space on the store's filesystem past which reads are written with their answers again
/// after a failure (see `Shared::unproven`): room for a read's end, with a large margin.
const READ_AHEAD_ROOM: u64 = 1 << 20;

/// Whether the filesystem holding `dir` has `READ_AHEAD_ROOM` free (no, if it cannot be asked).
fn roomy(dir: &Path) -> bool {
    crate::sys::disk_space(dir).is_ok_and(|(free, _)| free >= READ_AHEAD_ROOM)
}

/// The store failed (a write or a sync): new requests are refused until it works again.
/// Logged once per failure, not at every retry.
fn fail(shared: &Shared, e: store::Error) -> Arc<store::Error> {
    let cause = Arc::new(e);
    shared.unproven.store(true, Ordering::Release);
    let mut failed = shared.failed.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_none() {
        error!(cause = %cause, "the session recorder cannot write; new requests are refused until it can");
    }
    *failed = Some(cause.clone());
    cause
}

/// Sets a flag for as long as it lives.
struct Holding<'a>(&'a AtomicBool);

impl<'a> Holding<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Holding(flag)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The indexer thread: indexes what was written, off the path of the acknowledgements, until
/// the queue is closed and drained.
///
/// Group commit: the first records after a rest are indexed at once; while more keep coming,
/// they are taken every `INDEX_INTERVAL` (`INDEX_BUSY_INTERVAL` under load) in one transaction.
/// One exchange per commit made SQLite rewrite the same B-tree pages into its WAL for every
/// request, and one wake-up per exchange cost the proxy more than the write. The index lags the
/// store by that interval at most (plus the commit).
fn index_forever(mut index: Index, queue: &IndexQueue) {
    while let Some(items) = queue.take() {
        if let Err(e) = index.add_batch(&items) {
            // Derived data: the next batch catches it up; `ghgate sessions reindex` rebuilds it.
            warn!(error = %e, "cannot index recorded records; they are in the store");
        }
        let busy = items.len() >= INDEX_BUSY_BATCH;
        queue.give_back(items);
        thread::sleep(if busy { INDEX_BUSY_INTERVAL } else { INDEX_INTERVAL });
    }
}

/// Retention: at start and daily, whole sealed segments older than `days` are pruned; the signed
/// tombstone is also recorded in the chain, and the index forgets the segments.
fn retain_forever(
    dir: PathBuf,
    key: ed25519_dalek::SigningKey,
    days: u64,
    sinking: bool,
    recorder: std::sync::Weak<Recorder>,
) {
    loop {
        let Some(me) = recorder.upgrade() else { return };
        let cutoff = model::now_micros().saturating_sub(days * 86_400_000_000);
        // With a sink, only segments whose remote copy is confirmed may go.
        let through = if sinking {
            super::sink::confirmed_through(&dir)
        } else {
            u64::MAX
        };
        let reason = format!("retention: older than {days}d");
        match store::prune_through(&dir, &key, cutoff, &reason, through) {
            Ok(report) => {
                if let (Some((first, last)), Some(tombstone)) = (report.pruned, report.tombstone) {
                    info!(
                        first_segment = first,
                        last_segment = last,
                        "pruned sessions past retention"
                    );
                    me.submit(vec![Record::Tombstone(tombstone)]);
                    match Index::open(&index_path(&dir)) {
                        Ok(mut index) => {
                            if let Err(e) = index.forget_segments(first, last) {
                                warn!(error = %e, "cannot drop pruned segments from the index (run `ghgate sessions reindex`)");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot open the index to drop pruned segments"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "retention pruning failed; will retry"),
        }
        drop(me);
        thread::sleep(Duration::from_secs(86_400));
    }
}

/// Appends `records` (drained once written) and hands them to the indexer, both under the
/// store's lock that the caller holds: the indexer receives records in store order, whoever
/// wrote them (the writer thread or a caller writing through).
fn append_indexed(
    store: &mut Store,
    records: &mut Vec<Record>,
    shared: &Shared,
    to_index: &IndexQueue,
) -> store::Result<()> {
    let mut framed = store::Framed::new(records)?;
    append_framed_indexed(store, records, &mut framed, shared, to_index)
}

/// `append_indexed`, of `records` framed beforehand (`store::Framed::new`).
fn append_framed_indexed(
    store: &mut Store,
    records: &mut Vec<Record>,
    framed: &mut store::Framed,
    shared: &Shared,
    to_index: &IndexQueue,
) -> store::Result<()> {
    let positions = store.append_framed(framed)?;
    shared.dirty.store(true, Ordering::Release);
    if let Some(tap) = shared.tap.get() {
        tap(records);
    }
    records.iter_mut().for_each(ghgate_record::index::lighten);
    to_index.push(positions.into_iter().zip(records.drain(..)));
    Ok(())
}

/// The store writes again: the failure is cleared, and what passed unrecorded meanwhile is
/// recorded (and indexed, like every record, so the index has no hole where it stands).
fn recovered(store: &mut Store, shared: &Shared, to_index: &IndexQueue) {
    let cause = shared.failed.lock().ok().and_then(|mut f| f.take());
    let passed = shared.unrecorded.swap(0, Ordering::Relaxed);
    info!(unrecorded = passed, "the session recorder can write again");
    if passed > 0 {
        let mut record = vec![Record::Unrecorded(model::Unrecorded {
            at: model::now_micros(),
            exchanges: passed,
            cause: cause.map(|c| c.to_string()).unwrap_or_default(),
        })];
        let _ = append_indexed(store, &mut record, shared, to_index);
    }
}

/// Which git body the recorder parses for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GitKind {
    None,
    Push,
    Fetch,
    Advertisement,
}

impl GitKind {
    #[cfg(test)]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GitKind::None => "none",
            GitKind::Push => "push",
            GitKind::Fetch => "fetch",
            GitKind::Advertisement => "advertisement",
        }
    }
}

/// What the recorder parses, as the classifier read the request: what the policy takes for a
/// push is recorded as one.
pub(crate) fn git_kind(req: &ghgate_policy::classify::Classified) -> GitKind {
    if req.is_push() {
        GitKind::Push
    } else if req.is_fetch() {
        GitKind::Fetch
    } else if req.is_advertisement() {
        GitKind::Advertisement
    } else {
        GitKind::None
    }
}

#[derive(Default)]
struct Heads {
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    http_version: String,
}

/// Past this many bytes, a body is hashed on a thread of its own: the proxy's thread then only
/// hands chunks over (reference-counted, not copied), and a large download's SHA-256 runs beside
/// its TLS instead of after it.
const HASH_ASIDE_AFTER: u64 = 4 << 20;
/// Chunks go to a hashing thread in batches of about this many bytes: one wake-up per batch
/// rather than per chunk (the thread, faster than the proxy, would otherwise sleep between any
/// two chunks and be woken for each).
const HASH_BATCH: usize = 256 << 10;
/// Batches queued for a hashing thread before the body waits for it (backpressure, bounded
/// memory: a body holds at most about `HASH_BATCH * (HASH_QUEUE + 1)` of chunks already sent on).
const HASH_QUEUE: usize = 4;
/// Hashing threads at once; past that, bodies are hashed where they pass.
const MAX_HASH_THREADS: usize = 4;
static HASH_THREADS: AtomicU64 = AtomicU64::new(0);

/// The SHA-256 of a body as it passes: computed in place, or on a thread of its own.
enum BodyHash {
    Here(Sha256),
    Aside {
        batch: Vec<Bytes>,
        batched: usize,
        chunks: std::sync::mpsc::SyncSender<Vec<Bytes>>,
        digest: std::thread::JoinHandle<Sha256>,
    },
}

impl BodyHash {
    /// Adds `chunk`; `len` is the body's length so far, this chunk included.
    fn update(&mut self, chunk: &Bytes, len: u64) {
        if let BodyHash::Here(h) = self
            && len > HASH_ASIDE_AFTER
        {
            if HASH_THREADS.fetch_add(1, Ordering::Relaxed) < MAX_HASH_THREADS as u64 {
                // A copy goes to the thread: if it cannot start, hashing carries on here.
                let mut hasher = h.clone();
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(HASH_QUEUE);
                let spawned = std::thread::Builder::new()
                    .name("ghgate-hash".into())
                    .spawn(move || {
                        for batch in rx {
                            for c in batch {
                                hasher.update(&c);
                            }
                        }
                        HASH_THREADS.fetch_sub(1, Ordering::Relaxed);
                        hasher
                    });
                match spawned {
                    Ok(digest) => {
                        *self = BodyHash::Aside {
                            batch: Vec::new(),
                            batched: 0,
                            chunks: tx,
                            digest,
                        }
                    }
                    Err(_) => {
                        HASH_THREADS.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            } else {
                HASH_THREADS.fetch_sub(1, Ordering::Relaxed);
            }
        }
        match self {
            BodyHash::Here(h) => h.update(chunk),
            BodyHash::Aside {
                batch,
                batched,
                chunks,
                ..
            } => {
                batch.push(chunk.clone());
                *batched += chunk.len();
                if *batched >= HASH_BATCH {
                    *batched = 0;
                    send_batch(chunks, std::mem::take(batch));
                }
            }
        }
    }

    fn finish(self) -> sha2::digest::Output<Sha256> {
        match self {
            BodyHash::Here(h) => h.finalize(),
            BodyHash::Aside {
                batch,
                chunks,
                digest,
                ..
            } => {
                if !batch.is_empty() {
                    send_batch(&chunks, batch);
                }
                drop(chunks);
                digest.join().unwrap_or_default().finalize()
            }
        }
    }
}

fn send_batch(chunks: &std::sync::mpsc::SyncSender<Vec<Bytes>>, batch: Vec<Bytes>) {
    if let Err(e) = chunks.send(batch) {
        // The thread is gone (only a panic could do that): say so loudly rather than record a
        // wrong hash quietly.
        error!(error = %e, "the body hashing thread stopped; this body's SHA-256 will be wrong");
    }
}

/// One direction of one exchange.
struct BodyRecording {
    dir: Direction,
    cap: u64,
    len: u64,
    hash: BodyHash,
    content_type: Option<String>,
    // The parsers only some bodies need are boxed: inline, they made every exchange's
    // recording state 4.6 KB, allocated (and written) whole for each GET.
    sse: Option<Box<sse::SseParser>>,
    sse_index: u64,
    push: Option<Box<git::ReceivePackRequest>>,
    fetch: Option<Box<git::Reading<ghgate_git::upload::UploadPackReader>>>,
    advertisement: Option<Box<git::Reading<ghgate_git::advert::AdvertReader>>>,
}

impl BodyRecording {
    fn new(dir: Direction, cap: u64) -> Self {
        Self {
            dir,
            cap,
            len: 0,
            hash: BodyHash::Here(Sha256::new()),
            content_type: None,
            sse: None,
            sse_index: 0,
            push: None,
            fetch: None,
            advertisement: None,
        }
    }

    fn summary(&mut self) -> BodySummary {
        BodySummary {
            len: self.len,
            sha256: hex::encode(std::mem::replace(&mut self.hash, BodyHash::Here(Sha256::new())).finish()),
            stored: self.len.min(self.cap),
            content_type: self.content_type.clone(),
        }
    }
}

/// What the recorder keeps for one exchange while it passes.
pub struct ExchangeRecording {
    recorder: Arc<Recorder>,
    session: SessionId,
    id: ExchangeId,
    started_at: model::Micros,
    git: GitKind,
    heads: Mutex<Heads>,
    request: Mutex<BodyRecording>,
    response: Mutex<BodyRecording>,
    ws_index: AtomicU64,
    /// Masks headers, the URL, WebSocket messages and pushed packs (bodies arrive masked).
    masker: Mutex<Masker>,
    /// The URL as recorded (masked), once the request head is recorded.
    url: Mutex<Option<String>>,
    /// The records of a response's last chunk, written with the exchange's end (the chunk is
    /// held until then: see `chunk`).
    last_chunk: Mutex<Vec<Record>>,
    /// The identity stage's record, written with the request (or at the end, if refused).
    identity: Mutex<Option<model::Identity>>,
    /// Records of this exchange not written yet, to go first with the next of its records that
    /// is: policy decisions made from the request head (written with it, or at the end if it
    /// is refused), and a read's own request records (see `request_head`).
    noted: Mutex<Vec<Record>>,
}

fn header(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl ExchangeRecording {
    /// From now on, mask with `masker` (the pipeline adds the caller's own credentials to it
    /// once it has seen the request head).
    pub fn use_masker(&self, masker: Masker) {
        if let Ok(mut m) = self.masker.lock() {
            *m = masker;
        }
    }

    /// Notes who the caller was taken to be and what credential goes upstream.
    pub fn note_identity(&self, mut identity: model::Identity) {
        identity.session.clone_from(&self.session);
        identity.exchange = self.id;
        if let Ok(mut i) = self.identity.lock() {
            *i = Some(identity);
        }
    }

    /// The policy's decisions as records of this exchange, masked.
    fn decision_records(&self, decisions: Vec<model::Decision>) -> Vec<Record> {
        let masker = self.masker();
        decisions
            .into_iter()
            .map(|mut d| {
                d.session.clone_from(&self.session);
                d.exchange = self.id;
                if let Some(m) = d.message.as_mut() {
                    *m = masker.mask_str(m).0;
                }
                if let Some(r) = d.ref_update.as_mut() {
                    r.name = masker.mask_str(&r.name).0;
                    for p in &mut r.paths {
                        *p = masker.mask_str(p).0;
                    }
                }
                Record::Decision(d)
            })
            .collect()
    }

    /// Notes what the policy decided from the request head: written with the request's own
    /// record (or with the exchange's end, when the request is refused before that).
    pub fn note_decisions(&self, decisions: Vec<model::Decision>) {
        let records = self.decision_records(decisions);
        if let Ok(mut d) = self.noted.lock() {
            d.extend(records);
        }
    }

    /// Records what the policy decided from the request body (one decision per ref of a push),
    /// and waits until it is written: `Err` names why it could not be (the caller refuses the
    /// request, as for its head).
    pub async fn decisions(&self, decisions: Vec<model::Decision>) -> Result<(), RecordError> {
        self.decisions_and_secrets(decisions, Vec::new()).await
    }

    /// `decisions`, with the secrets the policy stage found in what a push carried.
    pub async fn decisions_and_secrets(
        &self,
        decisions: Vec<model::Decision>,
        secrets: Vec<model::PushSecret>,
    ) -> Result<(), RecordError> {
        let mut records = self.decision_records(decisions);
        let masker = self.masker();
        records.extend(secrets.into_iter().map(|mut s| {
            s.session.clone_from(&self.session);
            s.exchange = self.id;
            s.ref_name = masker.mask_str(&s.ref_name).0;
            if let Some(p) = s.path.as_mut() {
                *p = masker.mask_str(p).0;
            }
            Record::PushSecret(s)
        }));
        acknowledged(self.recorder.submit_acked(self.noted_then(records))).await
    }

    /// `records`, after what was noted and not yet written.
    fn noted_then(&self, records: Vec<Record>) -> Vec<Record> {
        let mut all = self.take_noted();
        if all.is_empty() {
            return records;
        }
        all.extend(records);
        all
    }

    /// The identity and the records noted and not yet written.
    fn take_noted(&self) -> Vec<Record> {
        let mut records: Vec<Record> = self.take_identity().into_iter().collect();
        if let Ok(mut d) = self.noted.lock() {
            records.append(&mut d);
        }
        records
    }

    fn take_identity(&self) -> Option<Record> {
        self.identity
            .lock()
            .ok()
            .and_then(|mut i| i.take())
            .map(Record::Identity)
    }

    fn masker(&self) -> Masker {
        match self.masker.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records the request head and waits until it is written: `Some` answers the client
    /// instead (503) when it cannot be.
    ///
    /// A request that only `read`s is noted instead, to be written with the first record of its
    /// exchange that is (see `noted_then`): before the client sees the end of its answer, as
    /// every exchange's record is. While the store is failing, or since it last failed its
    /// filesystem has not had room again (`Shared::unproven`), it is written now, as any other.
    pub async fn request_head(
        &self,
        ex: &Exchange,
        req: &http::request::Parts,
        read: bool,
    ) -> Option<Response<Bytes>> {
        let mut records = self.note_request_head(req);
        let (url, found) = self.masker().mask_str(&ex.url);
        records.extend(self.masked_records(&found, Place::Url, false));
        if let Ok(mut u) = self.url.lock() {
            *u = Some(url.clone());
        }
        records.insert(
            0,
            Record::Request(model::RequestStart {
                session: self.session.clone(),
                conn: ex.conn.id,
                exchange: self.id,
                at: self.started_at,
                method: ex.req.method.to_string(),
                url,
            }),
        );
        records.extend(self.take_noted());
        if read
            && !self.recorder.shared.unproven.load(Ordering::Acquire)
            && self.recorder.failure().is_none()
            && let Ok(mut noted) = self.noted.lock()
        {
            records.append(&mut noted);
            *noted = records;
            return None;
        }
        match acknowledged(self.recorder.submit_acked(records)).await {
            Ok(()) => None,
            Err(cause) => match self.recorder.on_failure {
                OnRecordFailure::Refuse => Some(refusal(ex, &cause)),
                OnRecordFailure::Allow => {
                    let n = self.recorder.shared.unrecorded.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), cause = %cause, unrecorded = n,
                          "request passes UNRECORDED: the session recorder cannot write (on_record_failure = \"allow\")");
                    None
                }
            },
        }
    }

    /// Notes the request head; returns the records of secrets found in its headers.
    fn note_request_head(&self, req: &http::request::Parts) -> Vec<Record> {
        let (headers, found) = model::mask_headers(&req.headers, &self.masker());
        if let Ok(mut h) = self.heads.lock() {
            h.request_headers = headers;
            h.http_version = format!("{:?}", req.version);
        }
        if let Ok(mut b) = self.request.lock() {
            b.content_type = header(&req.headers, http::header::CONTENT_TYPE);
            match self.git {
                GitKind::Push => {
                    b.push = Some(Box::new(
                        git::ReceivePackRequest::new().scanning_secrets(self.masker()),
                    ))
                }
                GitKind::Fetch => {
                    b.fetch = Some(Box::new(git::Reading::new(
                        ghgate_git::upload::UploadPackReader::new(),
                    )))
                }
                _ => {}
            }
        }
        self.masked_records(&found, Place::RequestHeader, false)
    }

    /// Notes the response head. Secrets in its headers are recorded with the exchange.
    pub fn response_head(&self, resp: &http::response::Parts) {
        let (headers, found) = model::mask_headers(&resp.headers, &self.masker());
        if let Ok(mut h) = self.heads.lock() {
            h.response_headers = headers;
        }
        let found = self.masked_records(&found, Place::ResponseHeader, false);
        if !found.is_empty() {
            self.recorder.submit(self.noted_then(found));
        }
        let content_type = header(&resp.headers, http::header::CONTENT_TYPE);
        let ls_refs = self.git == GitKind::Fetch
            && self
                .request
                .lock()
                .ok()
                .and_then(|b| b.fetch.as_ref().map(|f| f.parser().command() == "ls-refs"))
                .unwrap_or(false);
        if let Ok(mut b) = self.response.lock() {
            if content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("text/event-stream"))
            {
                b.sse = Some(Box::new(sse::SseParser::new()));
            }
            if self.git == GitKind::Advertisement {
                b.advertisement = Some(Box::new(git::Reading::new(
                    ghgate_git::advert::AdvertReader::new(),
                )));
            } else if ls_refs {
                b.advertisement = Some(Box::new(git::Reading::new(
                    ghgate_git::advert::AdvertReader::ls_refs(),
                )));
            }
            b.content_type = content_type;
        }
    }

    /// Whether any bytes of this body are stored as body chunks (git packs are kept by length
    /// and hash only, and so is everything when `record.body_cap_bytes = 0`).
    pub fn stores_body(&self, dir: Direction) -> bool {
        let side = match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        side.lock().map(|b| b.cap > 0).unwrap_or(true)
    }

    /// One chunk of a body as it came off the wire, decoded from its Content-Encoding and
    /// before masking: git's framing is parsed from it (and a pushed pack's objects scanned).
    /// Nothing of it is stored.
    pub fn observe(&self, dir: Direction, decoded: &[u8]) {
        let side = match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        let Ok(mut b) = side.lock() else { return };
        if let Some(p) = b.push.as_mut() {
            p.feed(decoded);
        }
        if let Some(p) = b.fetch.as_mut() {
            p.feed(decoded);
        }
        if let Some(p) = b.advertisement.as_mut() {
            p.feed(decoded);
        }
    }

    /// Whether git's framing is parsed from this body (it must then be decoded).
    pub fn parses_git(&self, dir: Direction) -> bool {
        let side = match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        side.lock()
            .map(|b| b.push.is_some() || b.fetch.is_some() || b.advertisement.is_some())
            .unwrap_or(false)
    }

    /// The body could not be decoded: git's parsers of it stop with `why`.
    pub fn observe_failed(&self, dir: Direction, why: &str) {
        let side = match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        let Ok(mut b) = side.lock() else { return };
        if let Some(p) = b.push.as_mut() {
            p.fail(why.to_owned());
        }
        if let Some(p) = b.fetch.as_mut() {
            p.fail(why.to_owned());
        }
        if let Some(p) = b.advertisement.as_mut() {
            p.fail(why.to_owned());
        }
    }

    /// The records of secrets the masking stage found.
    pub fn masked_records(&self, found: &[Finding], place: Place, client_masked: bool) -> Vec<Record> {
        crate::mask::metrics::count(found, place.as_str());
        if crate::mask::seen::SeenSecrets::from_response(place)
            && let Some(seen) = self.recorder.seen.get()
        {
            for f in found {
                seen.insert(&f.fingerprint);
            }
        }
        found
            .iter()
            .map(|f| {
                Record::Masked(model::Masked {
                    session: self.session.clone(),
                    exchange: self.id,
                    at: model::now_micros(),
                    rule: f.rule.clone(),
                    fingerprint: f.fingerprint.clone(),
                    place,
                    client_masked,
                })
            })
            .collect()
    }

    /// One chunk of a body as it is to be stored: masked (`masked` are the records of what was
    /// masked in it). `Err` while the store cannot write (and failures are not allowed): the body
    /// stops rather than pass unrecorded. When the chunk made records (stored body bytes, SSE
    /// events, masking), the returned future completes once they are written: the peer never
    /// receives bytes the record does not hold.
    ///
    /// The records of a response's last chunk (`last`) are not written on their own: they go
    /// with the exchange's end, which the engine runs with that chunk and which holds it back
    /// until written (one write instead of two for a body that comes in one piece).
    pub fn chunk(
        &self,
        dir: Direction,
        chunk: &Bytes,
        masked: Vec<Record>,
        last: bool,
    ) -> Result<Option<EndFuture>, RecordError> {
        if chunk.is_empty() && masked.is_empty() {
            // Nothing to record (the end-of-body call of an empty body): nothing to refuse either.
            return Ok(None);
        }
        if self.recorder.on_failure == OnRecordFailure::Refuse
            && let Some(cause) = self.recorder.failure()
        {
            return Err(RecordError::CannotWrite(cause));
        }
        let side = match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        let Ok(mut b) = side.lock() else {
            return Ok(None);
        };
        let offset = b.len;
        let len = offset + chunk.len() as u64;
        b.hash.update(chunk, len);
        b.len = len;
        let mut records = masked;
        if offset < b.cap {
            let keep = (b.cap - offset).min(chunk.len() as u64) as usize;
            records.push(Record::BodyChunk(model::BodyChunk {
                session: self.session.clone(),
                exchange: self.id,
                dir: b.dir,
                at: model::now_micros(),
                offset,
                data: B64.encode(&chunk[..keep]),
            }));
        }
        let mut index = b.sse_index;
        if let Some(parser) = b.sse.as_mut() {
            for event in parser.feed(chunk) {
                records.push(Record::StreamEvent(model::StreamEvent {
                    session: self.session.clone(),
                    exchange: self.id,
                    kind: StreamKind::Sse,
                    dir,
                    at: model::now_micros(),
                    index,
                    name: event.event,
                    data: event.data,
                    truncated_from: event.truncated_from,
                }));
                index += 1;
            }
        }
        b.sse_index = index;
        drop(b);
        if records.is_empty() {
            return Ok(None);
        }
        let mut records = self.noted_then(records);
        if last
            && dir == Direction::Response
            && crate::http::RESPONSE_ENDS_WITH_LAST_CHUNK
            && let Ok(mut held) = self.last_chunk.lock()
        {
            held.append(&mut records);
            return Ok(None);
        }
        Ok(Some(self.written(self.recorder.submit_acked(records))))
    }

    /// Waits for an acknowledgement; with failures allowed, a failed write lets the bytes pass.
    fn written(&self, ack: Ack) -> EndFuture {
        let allow = self.recorder.on_failure == OnRecordFailure::Allow;
        Box::pin(async move {
            match acknowledged(ack).await {
                Err(why) if allow => {
                    warn!(cause = %why, "body bytes passed UNRECORDED (on_record_failure = \"allow\")");
                    Ok(())
                }
                other => other.map_err(BodyError::unrecorded),
            }
        })
    }

    pub fn websocket_message(&self, dir: websocket::Direction, msg: &websocket::Message) {
        let text = msg.opcode == 1;
        let (payload, found) = self.masker().mask_all(&msg.payload);
        let data = if text {
            String::from_utf8_lossy(&payload).into_owned()
        } else {
            B64.encode(&payload)
        };
        let mut records = self.masked_records(&found, Place::WebSocket, false);
        let record = Record::StreamEvent(model::StreamEvent {
            session: self.session.clone(),
            exchange: self.id,
            kind: StreamKind::WebSocket,
            dir: match dir {
                websocket::Direction::Up => Direction::Request,
                websocket::Direction::Down => Direction::Response,
            },
            at: model::now_micros(),
            index: self.ws_index.fetch_add(1, Ordering::Relaxed),
            name: Some(msg.kind().into()),
            data,
            truncated_from: ((msg.payload.len() as u64) < msg.len).then_some(msg.len),
        });
        records.insert(0, record);
        self.recorder.submit(self.noted_then(records));
    }

    /// The exchange has ended: its record (and any git operation), acknowledged once written.
    pub fn finish(&self, ex: &Exchange, outcome: &Outcome) -> EndFuture {
        let mut records = Vec::with_capacity(2);
        records.extend(self.take_noted());
        if let Ok(mut last) = self.last_chunk.lock() {
            records.append(&mut last);
        }
        let (request_body, push, fetch) = match self.request.lock() {
            Ok(mut b) => (b.summary(), b.push.take(), b.fetch.take()),
            Err(_) => (BodySummary::default(), None, None),
        };
        let (response_body, advertisement) = match self.response.lock() {
            Ok(mut b) => {
                let index = b.sse_index;
                if let Some(p) = b.sse.as_mut()
                    && let Some(event) = p.finish()
                {
                    records.push(Record::StreamEvent(model::StreamEvent {
                        session: self.session.clone(),
                        exchange: self.id,
                        kind: StreamKind::Sse,
                        dir: Direction::Response,
                        at: model::now_micros(),
                        index,
                        name: event.event,
                        data: event.data,
                        truncated_from: event.truncated_from,
                    }));
                }
                (b.summary(), b.advertisement.take())
            }
            Err(_) => (BodySummary::default(), None),
        };
        let at = model::now_micros();
        if let Some(adv) = advertisement {
            let refs = adv.into_parts().0.finish().refs;
            if let Ok(mut s) = self.recorder.sessions.lock()
                && let Some(state) = s.live.get_mut(&self.session)
            {
                state.advertised = refs;
            }
        }
        if let Some(push) = push {
            let p = push.finish();
            records.extend(self.masked_records(&p.secrets, Place::GitPushPack, false));
            if let Some(why) = &p.scan_error {
                warn!(exchange = self.id.get(), error = %why, "a pushed pack could not be scanned for secrets whole");
            }
            records.push(Record::Git(model::GitOp {
                session: self.session.clone(),
                exchange: self.id,
                at,
                service: GitService::ReceivePack,
                updates: p.updates,
                pack_len: p.pack_len,
                pack_sha256: p.pack_sha256,
                wants: Vec::new(),
            }));
        }
        if let Some(fetch) = fetch {
            let f = fetch.into_parts().0.finish();
            if !f.wants.is_empty() {
                let advertised = self
                    .recorder
                    .sessions
                    .lock()
                    .ok()
                    .and_then(|s| s.live.get(&self.session).map(|st| st.advertised.clone()))
                    .unwrap_or_default();
                records.push(Record::Git(model::GitOp {
                    session: self.session.clone(),
                    exchange: self.id,
                    at,
                    service: GitService::UploadPack,
                    updates: Vec::new(),
                    pack_len: None,
                    pack_sha256: None,
                    wants: git::wants_with_refs(&f.wants, &advertised),
                }));
            }
        }
        let heads = self
            .heads
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        records.push(Record::Exchange(model::Exchange {
            session: self.session.clone(),
            conn: ex.conn.id,
            exchange: self.id,
            started_at: self.started_at,
            method: ex.req.method.to_string(),
            // Masked when its head was recorded; an exchange refused before that is masked now.
            url: match self.url.lock().ok().and_then(|u| u.clone()) {
                Some(url) => url,
                None => self.masker().mask_str(&ex.url).0,
            },
            http_version: heads.http_version,
            status: outcome.status,
            request_headers: heads.request_headers,
            response_headers: heads.response_headers,
            request_body,
            response_body,
            ttfb_us: outcome.ttfb.as_micros() as u64,
            duration_us: outcome.duration.as_micros() as u64,
            answered_by: outcome.answered_by,
            error: outcome.error.clone(),
        }));
        let ack = self.recorder.submit_acked(records);
        let allow = self.recorder.on_failure == OnRecordFailure::Allow;
        let shared = self.recorder.shared.clone();
        // Masked for the log only if it is logged (a failed write): masking costs a scan.
        let (id, url) = (self.id.get(), ex.url.clone());
        Box::pin(async move {
            match acknowledged(ack).await {
                Err(why) if allow => {
                    // Counted once, when its request passed (or here, if the store failed since).
                    let n = shared.unrecorded.load(Ordering::Relaxed);
                    let url = crate::mask::for_logs(&url);
                    warn!(exchange = id, url = %url, cause = %why, unrecorded = n,
                          "exchange completed UNRECORDED (on_record_failure = \"allow\")");
                    Ok(())
                }
                other => other.map_err(BodyError::unrecorded),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the store writes again after a failure, the count of exchanges that passed
    /// unrecorded is recorded, and indexed like any record: the index keeps no hole where it
    /// stands (`verify` would report one).
    #[test]
    fn the_unrecorded_count_after_a_failure_is_indexed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = store::load_or_create_key(&key_path(dir.path())).unwrap();
        let verifying = key.verifying_key();
        let (mut store, _) = Store::open(dir.path(), key, StoreOptions::default()).unwrap();
        let mut index = Index::open(&index_path(dir.path())).unwrap();
        let shared = Shared {
            pending: AtomicU64::new(0),
            space: Notify::new(),
            failed: Mutex::new(Some(Arc::new(store::Error::Io {
                action: "write record segment",
                path: dir.path().join("segments/000000000001.seg"),
                cause: std::io::Error::other("disk full"),
            }))),
            unrecorded: AtomicU64::new(3),
            unproven: AtomicBool::new(true),
            dirty: AtomicBool::new(false),
            writer_holds: AtomicBool::new(false),
            lock_waits: AtomicU64::new(0),
            tap: std::sync::OnceLock::new(),
        };
        let queue = IndexQueue::default();
        append_indexed(&mut store, &mut ended("before"), &shared, &queue).unwrap();
        recovered(&mut store, &shared, &queue);
        append_indexed(&mut store, &mut ended("after"), &shared, &queue).unwrap();
        assert!(shared.failed.lock().unwrap().is_none(), "the failure is cleared");
        queue.close();
        while let Some(items) = queue.take() {
            index.add_batch(&items).unwrap();
        }
        let unrecorded: Vec<u64> = store::read_records(dir.path())
            .unwrap()
            .filter_map(|r| match r.unwrap().1 {
                Record::Unrecorded(u) => Some(u.exchanges),
                _ => None,
            })
            .collect();
        assert_eq!(unrecorded, [3]);
        let report = index.check(dir.path()).unwrap();
        assert_eq!(report.unindexed_tail, 0);
        assert_eq!(
            report.verified, 3,
            "both records and the unrecorded count have rows"
        );
        store.close().unwrap();
        assert!(store::verify(dir.path(), &verifying, &mut |_| {}).is_ok());
    }

    /// The indexer's emptied batch comes back as the queue's next vector: records queued after
    /// a batch go into its room, in store order, instead of into a vector grown afresh (page by
    /// page, each busy interval); a vector far larger than a busy batch is let go.
    #[test]
    fn an_indexed_batch_vector_takes_the_next_records_and_a_huge_one_is_let_go() {
        let queue = IndexQueue::default();
        let items = |from: u64, n: u64| {
            (from..from + n).map(|seq| {
                let position = store::Position {
                    segment: 1,
                    offset: seq * 100,
                    seq,
                    hash: [0; 32],
                };
                (position, ended("s").remove(0))
            })
        };
        queue.push(items(1, 600));
        let batch = queue.take().unwrap();
        let room = batch.capacity();
        assert!(room >= 600);
        queue.give_back(batch);
        queue.push(items(601, 3));
        let next = queue.take().unwrap();
        assert_eq!(
            next.capacity(),
            room,
            "the next records went into the batch's room"
        );
        let seqs: Vec<u64> = next.iter().map(|(p, _)| p.seq).collect();
        assert_eq!(seqs, [601, 602, 603]);
        queue.give_back(next);

        let mut huge = Indexed::with_capacity(MAX_SPARE_INDEXED + 1);
        huge.extend(items(604, 1));
        queue.give_back(huge);
        queue.push(items(605, 1));
        assert_eq!(
            queue.take().unwrap().capacity(),
            room,
            "the huge vector was not kept: the one before it was"
        );
    }

    /// What the recorder keeps of an exchange is allocated, and written whole, for every
    /// request: the parsers only some bodies need (a pack, an SSE stream, an advertisement) are
    /// boxed, not inline, where they made it 4.6 KB.
    #[test]
    fn an_exchanges_recording_state_stays_small() {
        let size = size_of::<ExchangeRecording>();
        assert!(size <= 1024, "ExchangeRecording is {size} bytes");
    }

    /// The client's answer names the store's failure once, whether it is known at admission or
    /// learnt from the request head's write (which once said "cannot write: … cannot write: …").
    #[test]
    fn a_refusal_names_the_cause_once() {
        let full = RecordError::CannotWrite(Arc::new(store::Error::Io {
            action: "write record segment",
            path: "/r/segments/000000000001.seg".into(),
            cause: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }));
        let text = refusal_text(&full);
        assert!(
            text.starts_with(
                "ghgate: this request was not forwarded because the session recorder cannot write: \
                 cannot write record segment /r/segments/000000000001.seg: No space left on device"
            ),
            "{text}"
        );
        assert_eq!(text.matches("cannot write:").count(), 1, "{text}");
        assert_eq!(
            refusal_text(&RecordError::Stopped),
            "ghgate: this request was not forwarded because the recorder stopped\n"
        );
    }

    /// A gateway configuration whose state (and so record) directory is `dir`.
    fn config_in(dir: &std::path::Path) -> Config {
        Config::parse(
            &format!(
                "state_dir = {:?}\n[redirect]\ncgroup = \"ghgate.clients\"\n[[intercept]]\nhosts = [\"github.com\"]\nports = [443]\n",
                dir.display().to_string()
            ),
            std::path::Path::new("test.toml"),
        )
        .unwrap()
    }

    /// An I/O error as a failed fdatasync reports it.
    fn sync_failed() -> store::Error {
        store::Error::Io {
            action: "sync record segment",
            path: "/r/segments/000000000001.seg".into(),
            cause: std::io::Error::from_raw_os_error(libc::EIO),
        }
    }

    fn ended(session: &str) -> Vec<Record> {
        vec![Record::SessionEnd(model::SessionEnd {
            session: session.into(),
            at: model::now_micros(),
            reason: SessionEndReason::Exited,
        })]
    }

    /// Waits up to 10 s for `done`.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `fsync = "exchange"`: records are never written through (the writer thread syncs), and
    /// their acknowledgement waits for the sync that makes them durable. A failed sync fails
    /// the acknowledgement, as a failed write does, and new requests are refused until a sync
    /// succeeds again; then the store is back.
    #[test]
    fn under_fsync_exchange_an_acknowledgement_waits_for_the_sync_and_fails_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        config.record.fsync = FsyncPolicy::Exchange;
        // Each sync says it began, then does what it is told: sync (true) or fail (false).
        let (began, syncing) = std::sync::mpsc::channel::<()>();
        let (told, told_rx) = std::sync::mpsc::channel::<bool>();
        let told_rx = Mutex::new(told_rx);
        let sync: Syncer = Box::new(move |pending| {
            let _ = began.send(());
            match told_rx.lock().unwrap().recv() {
                Ok(false) => Err(sync_failed()),
                _ => pending.sync(),
            }
        });
        let recorder = Recorder::start_syncing(&config, sync).unwrap();
        let began = || {
            syncing
                .recv_timeout(Duration::from_secs(10))
                .expect("the writer thread syncs")
        };

        let Ack::Queued(mut ack) = recorder.submit_acked(ended("a")) else {
            panic!("written through under fsync = \"exchange\"");
        };
        began();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            matches!(ack.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "acknowledged before its sync returned"
        );
        told.send(true).unwrap();
        ack.blocking_recv().unwrap().expect("synced");
        assert!(recorder.failure().is_none());

        let Ack::Queued(ack) = recorder.submit_acked(ended("b")) else {
            panic!("written through under fsync = \"exchange\"");
        };
        began();
        told.send(false).unwrap();
        let refused = ack
            .blocking_recv()
            .unwrap()
            .expect_err("acknowledged though not durable");
        assert!(
            refused.to_string().contains("cannot sync record segment"),
            "{refused}"
        );
        assert!(recorder.failure().is_some(), "new requests are refused");

        // The writer thread probes (a checkpoint, then a sync) until the store is back.
        began();
        told.send(false).unwrap();
        began();
        assert!(recorder.failure().is_some(), "back only once a sync succeeds");
        told.send(true).unwrap();
        eventually("the store is back", || recorder.failure().is_none());
        drop(told);
        recorder.stop();
        let sessions: Vec<String> = store::read_records(&config.record_dir())
            .unwrap()
            .filter_map(|r| match r.unwrap().1 {
                Record::SessionEnd(e) => Some(e.session.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(sessions, ["a", "b"], "written, though b was not known durable");
    }

    /// `fsync = "interval"`: exchanges do not wait for the sync, but a failed one still means
    /// what was written since the last may be lost with the host: new requests are refused
    /// until a sync succeeds again.
    #[test]
    fn under_fsync_interval_a_failed_sync_refuses_new_requests_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        config.record.fsync_interval_ms = 20;
        let failing = Arc::new(AtomicBool::new(true));
        let fails = failing.clone();
        let sync: Syncer = Box::new(move |pending| {
            if fails.load(Ordering::Acquire) {
                Err(sync_failed())
            } else {
                pending.sync()
            }
        });
        let recorder = Recorder::start_syncing(&config, sync).unwrap();
        recorder.submit(ended("a"));
        eventually("the failed sync is noticed", || recorder.failure().is_some());
        let cause = recorder.failure().unwrap().to_string();
        assert!(cause.contains("cannot sync record segment"), "{cause}");
        failing.store(false, Ordering::Release);
        eventually("the store is back", || recorder.failure().is_none());
        recorder.stop();
    }

    /// Callers writing through and the writer thread's queue share one store: whatever the
    /// interleaving, every record is written once, in one chain, and indexed in store order —
    /// the index then holds a row for each (an out-of-order batch would leave holes).
    #[test]
    fn writing_through_and_queueing_keep_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let recorder = Recorder::start(&config).unwrap();
        let (threads, per_thread) = (4, 500);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let recorder = &recorder;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        // Each record names its thread and its place in the thread's order.
                        let records = ended(&format!("{t}/{i}"));
                        // Half want an acknowledgement (request heads), half do not.
                        if i % 2 == 0 {
                            match recorder.submit_acked(records) {
                                Ack::Written => {}
                                Ack::Queued(rx) => rx.blocking_recv().unwrap().unwrap(),
                            }
                        } else {
                            recorder.submit(records);
                        }
                    }
                });
            }
        });
        recorder.stop();
        let record_dir = config.record_dir();
        let reasons: Vec<String> = store::read_records(&record_dir)
            .unwrap()
            .filter_map(|r| match r.unwrap().1 {
                Record::SessionEnd(e) => Some(e.session.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), threads * per_thread, "each record written once");
        for t in 0..threads {
            let mine: Vec<&String> = reasons
                .iter()
                .filter(|r| r.starts_with(&format!("{t}/")))
                .collect();
            let want: Vec<String> = (0..per_thread).map(|i| format!("{t}/{i}")).collect();
            assert!(
                mine.iter().zip(&want).all(|(a, b)| *a == b),
                "thread {t}'s records in its order"
            );
        }
        let index = Index::open(&index_path(&record_dir)).unwrap();
        let report = index.check(&record_dir).unwrap();
        assert_eq!(
            report.unindexed_tail, 0,
            "everything indexed by the time the recorder stopped"
        );
        assert!(report.verified >= (threads * per_thread) as u64);
        let key = store::load_or_create_key(&key_path(&record_dir)).unwrap();
        let verified = store::verify(&record_dir, &key.verifying_key(), &mut |_| {});
        assert!(verified.is_ok(), "{verified:?}");
    }

    /// A caller finding the store's lock held by another caller's write-through waits for it
    /// and writes through itself; held by the writer thread (which may be syncing for
    /// milliseconds), it gives up at once and queues.
    #[test]
    fn a_write_through_waits_for_another_but_not_for_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(&config_in(dir.path())).unwrap();
        // The writer thread's hold: the caller gives up while it is still held.
        let guard = recorder.store.lock().unwrap();
        let holding = Holding::new(&recorder.shared.writer_holds);
        let queued = std::thread::scope(|scope| {
            scope
                .spawn(|| recorder.lock_for_write_through().is_none())
                .join()
                .unwrap()
        });
        assert!(queued, "never waits for the writer thread");
        drop(holding);
        drop(guard);
        // Another caller's write-through: the caller waits, and has the lock once released.
        // Released only once the caller has found it held.
        let released = AtomicBool::new(false);
        let guard = recorder.store.lock().unwrap();
        let before = recorder.shared.lock_waits.load(Ordering::Relaxed);
        let waited = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let got = recorder.lock_for_write_through().is_some();
                if got {
                    assert!(released.load(Ordering::Acquire), "had only once released");
                }
                got
            });
            while recorder.shared.lock_waits.load(Ordering::Relaxed) == before {
                std::hint::spin_loop();
            }
            // Held well past the spins: the caller sleeps on the lock rather than give up.
            std::thread::sleep(std::time::Duration::from_millis(50));
            released.store(true, Ordering::Release);
            drop(guard);
            waiter.join().unwrap()
        });
        assert!(waited, "waits for another caller's write-through");
        recorder.stop();
    }

    /// A process gone before the gateway could watch it for its exit (a process connecting and
    /// exiting in a loop) leaves no session entry behind for good: only the newest
    /// `MAX_UNWATCHED` are kept, and a further connection of one of those shares its session.
    #[tokio::test]
    async fn sessions_that_cannot_be_watched_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::start(&config_in(dir.path())).unwrap();
        // Above the kernel's largest pid: no such process can exist.
        let gone = |n: usize| Caller {
            tgid: (1 << 22) + n as u32,
            comm: format!("gone-{n}"),
            ..crate::http::testing::caller()
        };
        let start = |c: &Caller| {
            let mut records = Vec::new();
            recorder.ensure_session(&c.session_id(), c, &mut records);
            records.len()
        };
        for n in 0..MAX_UNWATCHED + 500 {
            assert_eq!(start(&gone(n)), 1, "a session start");
        }
        let held = |r: &Recorder| {
            let s = r.sessions.lock().unwrap();
            (s.live.len(), s.unwatched.len())
        };
        assert_eq!(held(&recorder), (MAX_UNWATCHED, MAX_UNWATCHED));
        assert_eq!(
            start(&gone(MAX_UNWATCHED + 499)),
            0,
            "the newest share their session"
        );
        assert_eq!(start(&gone(0)), 1, "the oldest were forgotten");
        // A live process is watched, and not one of them.
        let me = Caller {
            start_ticks: identity::start_ticks(std::process::id()),
            ..crate::http::testing::caller()
        };
        assert_eq!(start(&me), 1);
        assert_eq!(held(&recorder), (MAX_UNWATCHED + 1, MAX_UNWATCHED));
        recorder.stop();
    }

    /// A response's last chunk is not written on its own: its record goes with the exchange's
    /// end, in the same write, before the exchange record; earlier chunks and a request's last
    /// chunk are written (and waited for) on their own.
    #[tokio::test]
    async fn a_responses_last_chunk_is_written_with_the_exchange_end() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let recorder = Recorder::start(&config).unwrap();
        let ex = crate::http::testing::exchange("POST", "api.github.com", "/repos/o/r/issues", &[]);
        let rec = recorder.exchange(
            &ex,
            crate::mask::Masker::new(crate::mask::Rules::builtin(), [7; 32]),
        );
        let (head, ()) = http::Request::post("/repos/o/r/issues")
            .body(())
            .unwrap()
            .into_parts();
        assert!(rec.request_head(&ex, &head, false).await.is_none());
        let chunks =
            |dir, data: &'static [u8], last| rec.chunk(dir, &Bytes::from_static(data), Vec::new(), last);
        let written = |found: &[&[u8]]| -> Vec<String> {
            store::read_records(&config.record_dir())
                .unwrap()
                .filter_map(|r| match r.unwrap().1 {
                    Record::BodyChunk(c) => Some(c.data),
                    Record::Exchange(_) => Some("end".into()),
                    _ => None,
                })
                .filter(|d| d == "end" || found.iter().any(|f| B64.encode(f) == *d))
                .collect()
        };
        for w in [
            chunks(Direction::Request, b"the request, last", true),
            chunks(Direction::Response, b"first piece", false),
        ] {
            w.unwrap().expect("written on their own").await.unwrap();
        }
        assert!(
            chunks(Direction::Response, b"last piece", true)
                .unwrap()
                .is_none(),
            "the last piece waits for the end"
        );
        let all: [&[u8]; 3] = [b"the request, last", b"first piece", b"last piece"];
        assert_eq!(
            written(&all),
            [B64.encode("the request, last"), B64.encode("first piece")],
            "the last piece is not written before the end"
        );
        let outcome = crate::http::Outcome {
            status: 201,
            duration: Duration::from_millis(1),
            ttfb: Duration::from_millis(1),
            error: None,
            answered_by: model::AnsweredBy::Upstream,
        };
        rec.finish(&ex, &outcome).await.unwrap();
        assert_eq!(
            written(&all),
            [
                B64.encode("the request, last"),
                B64.encode("first piece"),
                B64.encode("last piece"),
                "end".to_owned()
            ]
        );
        recorder.stop();
    }

    /// A body past the threshold is hashed on a thread of its own from then on; the digest is
    /// the body's, whatever the chunking, and several bodies at once (more than the thread
    /// budget) each get their own.
    #[test]
    fn a_large_body_hashed_aside_gets_the_same_sha256() {
        let body: Vec<u8> = (0..(HASH_ASIDE_AFTER as usize * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let want = Sha256::digest(&body);
        let hashes: Vec<_> = (0..MAX_HASH_THREADS + 2)
            .map(|k| {
                let mut h = BodyHash::Here(Sha256::new());
                let (mut at, step) = (0usize, 1000 + k * 4099);
                while at < body.len() {
                    let end = (at + step).min(body.len());
                    h.update(&Bytes::copy_from_slice(&body[at..end]), end as u64);
                    at = end;
                }
                h
            })
            .collect();
        let aside = hashes
            .iter()
            .filter(|h| matches!(h, BodyHash::Aside { .. }))
            .count();
        assert!(
            (1..=MAX_HASH_THREADS).contains(&aside),
            "{aside} bodies hashed aside"
        );
        for h in hashes {
            assert_eq!(h.finish(), want);
        }
        assert_eq!(
            HASH_THREADS.load(Ordering::Relaxed),
            0,
            "every thread accounted for"
        );
    }
}
