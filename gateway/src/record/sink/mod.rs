//! The record sink: copies the store's segments and signed chain heads (anchors) to
//! S3-compatible object storage, so that the evidence outlives the host and a store cut short or
//! re-signed on the host shows against what was anchored off it.
//!
//! One thread with its own runtime reads the segment files (never the writer's lock) on a timer:
//! each sealed segment is uploaded once, read back and compared (size and SHA-256) before it
//! counts as confirmed; the active segment is copied as a partial object when it has grown by a
//! quarter since its last copy (at least `partial_min_bytes`), or at all for `partial_max_secs`;
//! an anchor of what the bucket holds is written at every seal and copy and at least every
//! minute. With `[record.sink.webhook]`, every anchor of the live store (each seal, and the head
//! each interval it moved, or a minute) also goes to an HTTPS receiver ([`webhook`]), whether or
//! not the bucket can be reached. Failures retry with backoff. It must never hold up traffic: the
//! recorder only asks it how far behind it is (`SinkStatus`), and `on_sink_failure` decides what
//! a backlog over the limit means; a span of being behind is kept in `sink.json`, so one that a
//! stop or crash interrupted is still recorded. It must never overwrite a sealed segment's
//! object, and never print the credentials.
//!
//! Why whole partial copies rather than S3 multipart: each object is at every moment a prefix of
//! the segment that verifies on its own, a PUT replaces it atomically, and a crash leaves nothing
//! half-done to resume or abort (an unfinished multipart upload is invisible to readers, is
//! billed until aborted, and needs parts of 5 MiB). Growth by a quarter bounds what one segment
//! costs to about five times its size.
//!
//! Layout in the bucket, under the runner's prefix:
//!
//! ```text
//! <runner>/runner.pub                    SPKI PEM of the store's key, pinned at first upload
//! <runner>/keys/<µs>.pub                 a different key the runner later presented (reported)
//! <runner>/segments/000000000001.seg     sealed segments, byte for byte
//! <runner>/partial/000000000002.seg      the active segment as of the last copy
//! <runner>/anchors/<seq, 20 digits>.json store::Anchor
//! ```
pub mod config;
pub mod remote;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ed25519_dalek::SigningKey;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStoreExt as _, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

pub use self::config::{OnSinkFailure, SinkConfig};
use super::Recorder;
use super::model::{self, EnforcementGap, GapKind};
use super::store::{self, Anchor, SegmentState};

/// Where the sink keeps, beside the store, the last segment whose remote copy it confirmed.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("sink.json")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SinkState {
    /// Every sealed segment up to this one has a confirmed remote copy.
    confirmed_through: u64,
    /// Over `max_backlog_bytes` since this moment (µs), across stops; absent when not behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    behind_since: Option<u64>,
}

fn load_state(dir: &Path) -> SinkState {
    std::fs::read(state_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(dir: &Path, state: &SinkState) -> std::io::Result<()> {
    let tmp = dir.join(".sink.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, state_path(dir))
}

/// The last segment with a confirmed remote copy, as the sink last saved it (0 when none).
pub fn confirmed_through(dir: &Path) -> u64 {
    load_state(dir).confirmed_through
}

/// What the recorder reads of the sink, without waiting.
#[derive(Debug)]
pub struct SinkStatus {
    pub on_failure: OnSinkFailure,
    /// Bytes of sealed segments not yet confirmed remotely.
    backlog: AtomicU64,
    /// Over `max_backlog_bytes` since this moment (µs), or 0.
    behind_since: AtomicU64,
    last_error: Mutex<Option<String>>,
    key_changed: AtomicBool,
}

impl SinkStatus {
    /// When the backlog is over the limit: the bytes behind and the last error, for the 503.
    pub fn behind(&self) -> Option<(u64, Option<String>)> {
        (self.behind_since.load(Ordering::Acquire) != 0).then(|| {
            let err = self.last_error.lock().ok().and_then(|e| e.clone());
            (self.backlog.load(Ordering::Relaxed), err)
        })
    }

    pub fn backlog_bytes(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// The running sink: its status and the means to stop it.
pub struct Sink {
    pub status: Arc<SinkStatus>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<thread::JoinHandle<Uploader>>>,
}

impl Sink {
    /// Reads the credentials and starts the uploading thread (and the anchor webhook's, with
    /// its DNS from `config`). Nothing is sent before it runs.
    pub fn start(
        cfg: &SinkConfig,
        config: &crate::config::Config,
        dir: PathBuf,
        key: SigningKey,
        recorder: Weak<Recorder>,
    ) -> Result<Sink> {
        let creds = cfg.credentials()?;
        let hook = cfg
            .webhook
            .as_ref()
            .map(|w| webhook::AnchorHook::start(w, config))
            .transpose()?;
        // reqwest is built without a bundled provider: ring, as everywhere in ghgate.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let status = Arc::new(SinkStatus {
            on_failure: cfg.on_sink_failure,
            backlog: AtomicU64::new(0),
            behind_since: AtomicU64::new(0),
            last_error: Mutex::new(None),
            key_changed: AtomicBool::new(false),
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let mut uploader = Uploader {
            cfg: cfg.clone(),
            runner: cfg.runner(),
            creds,
            dir,
            key,
            status: status.clone(),
            state: SinkState::default(),
            reader: None,
            writer: None,
            pinned: false,
            partial: None,
            last_anchor: None,
            scanned: BTreeMap::new(),
            active: None,
            hook,
            hook_sealed_through: 0,
            hook_head: None,
            recorder,
        };
        uploader.state = load_state(&uploader.dir);
        uploader.hook_sealed_through = uploader.state.confirmed_through;
        if let Some(since) = uploader.state.behind_since {
            // Behind when the last run stopped: the span goes on (and refuses, with "refuse").
            uploader.status.behind_since.store(since, Ordering::Release);
            warn!(since_us = since, on_sink_failure = ?cfg.on_sink_failure, "the record sink was behind more than max_backlog_bytes when the gateway last stopped");
        }
        let reader = uploader.client(None)?;
        uploader.reader = Some(reader);
        let (stop2, interval) = (stop.clone(), Duration::from_millis(cfg.interval_ms));
        info!(runner = %uploader.runner, bucket = %cfg.bucket, url = %cfg.url, "copying records to the record sink");
        let thread = thread::Builder::new()
            .name("ghgate-sink".into())
            .spawn(move || uploader.run(&stop2, interval))
            .context("cannot start the record sink thread")?;
        Ok(Sink {
            status,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for one last pass (the sealed tail of an orderly stop) and waits for it, at most
    /// `limit`: a sink that cannot reach its server does not hold up the stop.
    pub fn finish(&self, limit: Duration) {
        let (lock, cv) = &*self.stop;
        if let Ok(mut s) = lock.lock() {
            *s = true;
        }
        cv.notify_all();
        let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let deadline = Instant::now() + limit;
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if handle.is_finished() {
            if let Ok(uploader) = handle.join()
                && let Some(hook) = &uploader.hook
            {
                // What is left of the limit, at most 5 s: the seal's anchor for the webhook.
                hook.drain(deadline.min(Instant::now() + Duration::from_secs(5)));
            }
        } else {
            warn!("the record sink did not finish its last upload in time; the next start resumes it");
        }
    }
}

struct Uploader {
    cfg: SinkConfig,
    runner: String,
    creds: config::Credentials,
    dir: PathBuf,
    key: SigningKey,
    status: Arc<SinkStatus>,
    state: SinkState,
    /// For reads, heads and unlocked objects.
    reader: Option<AmazonS3>,
    /// For segments and anchors: carries the Object Lock headers, renewed hourly.
    writer: Option<(AmazonS3, Instant)>,
    pinned: bool,
    /// The active segment as last copied, and when.
    partial: Option<(SegmentState, Instant)>,
    /// The last anchor in the bucket: (seq, when).
    last_anchor: Option<(u64, Instant)>,
    /// Sealed segments read and not yet confirmed (they never change).
    scanned: BTreeMap<u64, SegmentState>,
    /// The active segment as last read, with the file's length then.
    active: Option<(u64, SegmentState)>,
    hook: Option<webhook::AnchorHook>,
    /// Every sealed segment up to this one has had its seal anchor offered to the webhook.
    hook_sealed_through: u64,
    /// The last head anchor offered to the webhook: (seq, when).
    hook_head: Option<(u64, Instant)>,
    recorder: Weak<Recorder>,
}

/// An anchor is due after this long even when the head has not moved.
const ANCHOR_EVERY: Duration = Duration::from_secs(55);

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

impl Uploader {
    /// Passes until stopped; gives itself back (its webhook to drain).
    fn run(mut self, stop: &(Mutex<bool>, Condvar), interval: Duration) -> Uploader {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "cannot start the record sink's runtime; records are not leaving the host");
                return self;
            }
        };
        // Backoff for the bucket: doubling from the interval, at most a minute. The store is
        // still read every interval, so that the webhook gets its anchors meanwhile.
        let mut wait = interval;
        let mut next_upload = Instant::now();
        loop {
            let stopping = stop.0.lock().map(|s| *s).unwrap_or(true);
            let states = self.scan().map_err(PassError::from);
            if stopping || Instant::now() >= next_upload {
                let uploaded = match &states {
                    Ok(states) => rt.block_on(self.upload(states)),
                    Err(e) => Err(PassError::Other(anyhow::anyhow!("{e}"))),
                };
                match uploaded {
                    Ok(()) => {
                        wait = interval;
                        if let Ok(mut e) = self.status.last_error.lock() {
                            *e = None;
                        }
                    }
                    Err(e) => {
                        wait = (wait * 2).min(Duration::from_secs(60)).max(interval);
                        warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the record sink cannot upload; will retry");
                        if let Ok(mut last) = self.status.last_error.lock() {
                            *last = Some(e.to_string());
                        }
                    }
                }
                next_upload = Instant::now() + wait;
            }
            if let Ok(states) = &states {
                self.offer_hook(states);
            }
            self.update_backlog();
            if stopping {
                return self;
            }
            let (lock, cv) = stop;
            let Ok(guard) = lock.lock() else { return self };
            let _ = cv.wait_timeout_while(guard, interval, |s| !*s);
        }
    }

    fn client(&self, lock: Option<(config::LockMode, u32)>) -> Result<AmazonS3> {
        let headers = lock.map(|(mode, days)| lock_headers(mode, days)).transpose()?;
        s3_client(
            &self.cfg.url,
            &self.cfg.bucket,
            &self.cfg.region,
            &self.creds,
            headers,
        )
    }

    fn reader(&self) -> &AmazonS3 {
        self.reader.as_ref().expect("made at start")
    }

    fn writer(&mut self) -> Result<&AmazonS3> {
        let Some(lock) = self.cfg.object_lock else {
            return Ok(self.reader());
        };
        let stale = self
            .writer
            .as_ref()
            .is_none_or(|(_, made)| made.elapsed() > Duration::from_secs(3600));
        if stale {
            self.writer = Some((self.client(Some((lock.mode, lock.days)))?, Instant::now()));
        }
        Ok(&self.writer.as_ref().expect("just made").0)
    }

    fn path(&self, rest: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rest}", self.runner))
    }

    /// The states of the segments after the last confirmed one, in order: sealed ones, then the
    /// active one (a crash's unsealed segment stops the list: the next start seals it). Sealed
    /// segments are read once; the active one again only when its file grew.
    fn scan(&mut self) -> Result<Vec<SegmentState>> {
        let numbers = store::segment_numbers(&self.dir).context("cannot list the record segments")?;
        let Some(&newest) = numbers.last() else {
            return Ok(Vec::new());
        };
        let from = self.state.confirmed_through;
        self.scanned.retain(|&n, _| n > from);
        let mut states = Vec::new();
        for &n in numbers.iter().filter(|&&n| n > from) {
            if let Some(s) = self.scanned.get(&n) {
                states.push(s.clone());
                continue;
            }
            let path = store::segment_path(&self.dir, n);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let state = match &self.active {
                Some((l, s)) if s.number == n && *l == len => s.clone(),
                _ => store::segment_state(&self.dir, n)
                    .with_context(|| format!("cannot read record segment {n:012}"))?,
            };
            if state.sealed {
                self.scanned.insert(n, state.clone());
                states.push(state);
            } else if n == newest {
                self.active = Some((len, state.clone()));
                states.push(state);
            } else {
                break;
            }
        }
        Ok(states)
    }

    async fn upload(&mut self, states: &[SegmentState]) -> Result<(), PassError> {
        if !self.pinned {
            self.pin_key().await?;
        }
        for state in states {
            let n = state.number;
            if state.sealed {
                self.upload_sealed(state).await?;
                self.state.confirmed_through = n;
                save_state(&self.dir, &self.state).context("cannot save the sink's progress")?;
                self.anchor(state).await?;
            } else if state.good_len > 0 && self.partial_due(state) {
                let bytes = read_prefix(&store::segment_path(&self.dir, n), state.good_len)?;
                let path = self.path(&format!("partial/{n:012}.seg"));
                self.writer()?.put(&path, PutPayload::from(bytes)).await?;
                self.partial = Some((state.clone(), Instant::now()));
                self.anchor(state).await?;
            }
        }
        // At least every minute, the head of what the bucket holds, anchored again.
        if let Some((copied, _)) = &self.partial
            && self
                .last_anchor
                .is_none_or(|(_, at)| at.elapsed() >= ANCHOR_EVERY)
            && states.iter().any(|s| s.number == copied.number)
        {
            let copied = copied.clone();
            self.anchor(&copied).await?;
        }
        Ok(())
    }

    /// Whether the active segment's copy is worth replacing: it has none yet, or it grew by a
    /// quarter of the last copy (at least `partial_min_bytes`), or it grew at all and the copy
    /// is `partial_max_secs` old.
    fn partial_due(&self, state: &SegmentState) -> bool {
        let Some((last, at)) = self.partial.as_ref().filter(|(p, _)| p.number == state.number) else {
            return true;
        };
        let grown = state.good_len.saturating_sub(last.good_len);
        grown > 0
            && (grown >= (last.good_len / 4).max(self.cfg.partial_min_bytes)
                || at.elapsed() >= Duration::from_secs(self.cfg.partial_max_secs))
    }

    /// Offers the webhook the seal of every segment sealed since the last pass, and the head
    /// when it moved (or a minute passed).
    fn offer_hook(&mut self, states: &[SegmentState]) {
        let Some(hook) = &self.hook else { return };
        let now = model::now_micros();
        for state in states {
            if state.sealed {
                if state.number <= self.hook_sealed_through {
                    continue;
                }
                if let Some(a) = Anchor::sign(&self.key, &self.runner, state, now) {
                    hook.offer(a);
                }
                self.hook_sealed_through = state.number;
            } else if let Some((seq, _)) = state.head {
                let due = self
                    .hook_head
                    .is_none_or(|(last, at)| last != seq || at.elapsed() >= ANCHOR_EVERY);
                if due && let Some(a) = Anchor::sign(&self.key, &self.runner, state, now) {
                    hook.offer(a);
                    self.hook_head = Some((seq, Instant::now()));
                }
            }
        }
    }

    /// Uploads a sealed segment unless an identical copy is already there, then reads it back.
    async fn upload_sealed(&mut self, state: &SegmentState) -> Result<(), PassError> {
        let n = state.number;
        let local = std::fs::read(store::segment_path(&self.dir, n))
            .with_context(|| format!("cannot read record segment {n:012}"))?;
        let want = Sha256::digest(&local);
        let path = self.path(&format!("segments/{n:012}.seg"));
        match self.reader().get(&path).await {
            Ok(got) => {
                let remote = got.bytes().await?;
                if remote.len() == local.len() && Sha256::digest(&remote) == want {
                    return Ok(());
                }
                return Err(anyhow::anyhow!(
                    "the bucket already holds a different segment {n:012} for runner {}; it is never overwritten (run `ghgate sessions verify --remote`)",
                    self.runner
                )
                .into());
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let len = local.len();
        self.writer()?.put(&path, PutPayload::from(local)).await?;
        let remote = self.reader().get(&path).await?.bytes().await?;
        if remote.len() != len || Sha256::digest(&remote) != want {
            return Err(anyhow::anyhow!(
                "the remote copy of segment {n:012} does not match what was uploaded"
            )
            .into());
        }
        // The seal is the segment file's last write: how long it waited for its remote copy.
        let lag_ms = std::fs::metadata(store::segment_path(&self.dir, n))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_millis() as u64);
        info!(
            segment = n,
            bytes = len,
            lag_ms,
            "record segment copied to the sink and confirmed"
        );
        Ok(())
    }

    async fn anchor(&mut self, state: &SegmentState) -> Result<(), PassError> {
        let Some(anchor) = Anchor::sign(&self.key, &self.runner, state, model::now_micros()) else {
            return Ok(());
        };
        let path = self.path(&format!("anchors/{:020}.json", anchor.seq));
        let body = serde_json::to_vec(&anchor).context("anchor")?;
        self.writer()?.put(&path, PutPayload::from(body)).await?;
        self.last_anchor = Some((anchor.seq, Instant::now()));
        Ok(())
    }

    /// Pins the store's public key in the sink unless `ghgate install` (or an earlier run) did;
    /// reports a key that differs.
    async fn pin_key(&mut self) -> Result<(), PassError> {
        let pem = store::public_key_pem(&self.key);
        let writer = self.writer()?.clone();
        match pin(self.reader(), &writer, &self.runner, &pem).await? {
            Pin::Differs => {
                self.status.key_changed.store(true, Ordering::Release);
                error!(
                    runner = %self.runner,
                    "the record signing key differs from the one pinned in the sink; records signed with it will not verify against the pin (the new key is kept under keys/)"
                );
            }
            Pin::Pinned => info!(runner = %self.runner, "record key pinned in the sink"),
            Pin::Same => {}
        }
        self.pinned = true;
        Ok(())
    }

    /// Recomputes the backlog, and opens or closes a span of being behind.
    fn update_backlog(&mut self) {
        let Ok(numbers) = store::segment_numbers(&self.dir) else {
            return;
        };
        let newest = numbers.last().copied().unwrap_or(0);
        let backlog: u64 = numbers
            .iter()
            .filter(|&&n| n > self.state.confirmed_through && n != newest)
            .filter_map(|&n| std::fs::metadata(store::segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum();
        self.status.backlog.store(backlog, Ordering::Relaxed);
        let since = self.status.behind_since.load(Ordering::Acquire);
        let over = backlog > self.cfg.max_backlog_bytes;
        if over && since == 0 {
            let now = model::now_micros();
            self.status.behind_since.store(now, Ordering::Release);
            warn!(backlog_bytes = backlog, on_sink_failure = ?self.cfg.on_sink_failure, "the record sink is behind more than max_backlog_bytes");
            self.keep_behind(Some(now));
        } else if !over && since != 0 {
            self.status.behind_since.store(0, Ordering::Release);
            info!("the record sink caught up");
            if self.cfg.on_sink_failure == OnSinkFailure::Allow
                && let Some(recorder) = self.recorder.upgrade()
            {
                let now = model::now_micros();
                recorder.submit_gap(EnforcementGap {
                    at: now,
                    kind: GapKind::SinkBehind,
                    since,
                    until: now,
                    detail: format!(
                        "the record sink ({}/{}) was more than {} bytes behind; traffic went on (on_sink_failure = \"allow\")",
                        self.cfg.bucket, self.runner, self.cfg.max_backlog_bytes
                    ),
                    refused: 0,
                    bypassed: 0,
                });
            }
            // After the gap is handed over: a crash in between records it twice, never not at all.
            self.keep_behind(None);
        }
    }

    /// Saves the start of a span of being behind (or its end), so that a stop does not lose it.
    fn keep_behind(&mut self, since: Option<u64>) {
        self.state.behind_since = since;
        if let Err(e) = save_state(&self.dir, &self.state) {
            warn!(error = %e, "cannot save the sink's progress");
        }
    }
}

/// What pinning a runner's key found in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// No key was pinned: this one now is.
    Pinned,
    /// This key was already pinned.
    Same,
    /// Another key is pinned (never replaced); this one was kept under `keys/`, where
    /// `sessions verify --remote` reports it.
    Differs,
}

/// Pins `pem` as `runner`'s key (`<runner>/runner.pub`) unless one is pinned already.
async fn pin(reader: &AmazonS3, writer: &AmazonS3, runner: &str, pem: &str) -> object_store::Result<Pin> {
    let path = ObjPath::from(format!("{runner}/runner.pub"));
    match reader.get(&path).await {
        Ok(got) => {
            if got.bytes().await?.as_ref() == pem.as_bytes() {
                return Ok(Pin::Same);
            }
            let changed = ObjPath::from(format!("{runner}/keys/{}.pub", model::now_micros()));
            writer
                .put(&changed, PutPayload::from(pem.as_bytes().to_vec()))
                .await?;
            Ok(Pin::Differs)
        }
        Err(object_store::Error::NotFound { .. }) => {
            writer
                .put(&path, PutPayload::from(pem.as_bytes().to_vec()))
                .await?;
            Ok(Pin::Pinned)
        }
        Err(e) => Err(e),
    }
}

/// Pins `key` for this host's runner in the sink `cfg` describes, from outside the gateway
/// (`ghgate install`): `credentials_file` is read under `root`. Blocks; never prints the
/// credentials.
pub fn pin_now(cfg: &SinkConfig, root: &Path, key: &SigningKey) -> Result<Pin> {
    let creds = config::Credentials::load(
        cfg.credentials_file
            .as_ref()
            .map(|f| root.join(f.strip_prefix("/").unwrap_or(f)))
            .as_deref(),
    )?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reader = s3_client(&cfg.url, &cfg.bucket, &cfg.region, &creds, None)?;
    let writer = match cfg.object_lock {
        Some(l) => s3_client(
            &cfg.url,
            &cfg.bucket,
            &cfg.region,
            &creds,
            Some(lock_headers(l.mode, l.days)?),
        )?,
        None => reader.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pem = store::public_key_pem(key);
    rt.block_on(pin(&reader, &writer, &cfg.runner(), &pem))
        .with_context(|| {
            format!(
                "cannot pin the record key in the sink {}/{}",
                cfg.bucket,
                cfg.runner()
            )
        })
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(len as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(len).read_to_end(&mut buf))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(buf)
}

/// The Object Lock headers for an upload now: `mode`, and `days` (plus an hour: a client lives
/// an hour before its date is renewed) from now.
fn lock_headers(mode: config::LockMode, days: u32) -> Result<http::HeaderMap> {
    let until =
        time::OffsetDateTime::now_utc() + time::Duration::days(days.into()) + time::Duration::hours(1);
    let until = until
        .replace_nanosecond(0)
        .unwrap_or(until)
        .format(&time::format_description::well_known::Rfc3339)
        .context("cannot format the Object Lock date")?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-amz-object-lock-mode",
        http::HeaderValue::from_static(mode.header_value()),
    );
    headers.insert(
        "x-amz-object-lock-retain-until-date",
        http::HeaderValue::from_str(&until).context("Object Lock date")?,
    );
    // S3 requires an integrity header with a lock: it names the SHA-256 checksum object_store
    // sends (`x-amz-checksum-sha256`), as the AWS SDKs do.
    headers.insert(
        "x-amz-sdk-checksum-algorithm",
        http::HeaderValue::from_static("SHA256"),
    );
    Ok(headers)
}

/// An S3 client of `bucket` at `endpoint` (path-style), sending `headers` (signed) with every
/// request.
fn s3_client(
    endpoint: &str,
    bucket: &str,
    region: &str,
    creds: &config::Credentials,
    headers: Option<http::HeaderMap>,
) -> Result<AmazonS3> {
    let mut opts = ClientOptions::new()
        .with_allow_http(true)
        .with_timeout(Duration::from_secs(60))
        .with_connect_timeout(Duration::from_secs(5));
    if let Some(headers) = headers {
        opts = opts.with_default_headers(headers);
    }
    AmazonS3Builder::new()
        .with_endpoint(endpoint.trim_end_matches('/'))
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(creds.access_key_id.expose())
        .with_secret_access_key(creds.secret_access_key.expose())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_checksum_algorithm(Checksum::SHA256)
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        })
        .with_client_options(opts)
        .build()
        .context("cannot set up the S3 client")
}
