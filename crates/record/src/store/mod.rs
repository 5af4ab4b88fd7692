//! The record store: an append-only, hash-chained, signed log of `model::Record`s on local disk,
//! which survives `kill -9` and power loss without losing what was written, and which proves any
//! later alteration.
//!
//! It must never rewrite or delete a frame that passed its checks, except whole sealed segments
//! removed by `prune` under a signed tombstone, and a torn tail cut by `Store::open`.
//!
//! # On-disk format (version 1)
//!
//! ```text
//! <dir>/store.lock                    flock held by the one writing `Store`
//! <dir>/prune.lock                    flock serialising `prune` runs
//! <dir>/segments/000000000001.seg     segments, numbered from 1, 12 digits
//! <dir>/tombstones/000000000001-000000000004.json   signed record of pruned segments
//! ```
//!
//! A segment is the 8-byte magic `b"ghgrec\0\x01"` followed by frames:
//!
//! ```text
//! frame = u32 LE body_len | u32 LE crc32(body) | body
//! body  = u64 LE seq | [u8; 32] prev_hash | u8 kind | payload
//! hash(frame) = SHA-256(body)
//! ```
//!
//! `seq` starts at 1 with the first frame of segment 1 and grows by one per frame across all
//! segments; `prev_hash` is the hash of the frame before it, across segments too (all zeros for the
//! very first frame), so each frame's hash commits to everything written before it.
//! `body_len` is at least 41 and at most 256 MiB.
//!
//! Frame kinds and their payloads:
//!
//! ```text
//! 1 header      JSON {"segment": n, "created_at": µs, "continues": C}, where C is null for the
//!               first frame of the store, else {"segment": n-1, "seq": seq-1, "hash": prev_hash hex};
//!               the first frame of every segment, and only there
//! 2 record      JSON of one model::Record, tagged by "kind"
//! 3 checkpoint  u64 LE segment | u64 LE records so far in this segment | [u8; 64] Ed25519 signature
//! 4 seal        same layout, records = all records of the segment; the last frame of a finished segment
//! ```
//!
//! Checkpoints and seals sign `b"ghgate-record-v1\0" | kind | u64 LE segment | u64 LE seq |
//! prev_hash | u64 LE records`, where `seq` and `prev_hash` are the signed frame's own: the
//! signature covers the chain head, i.e. every frame before it. A tombstone file is JSON with the
//! fields of `model::Tombstone` plus `"signature"` (hex) over `b"ghgate-record-v1\0" | 5 |
//! u64 LE first_segment | u64 LE last_segment | u64 LE last_seq | last_hash | u64 LE at |
//! u32 LE reason_len | reason`; `last_seq`/`last_hash` are those of the seal of `last_segment`,
//! to which the header of the segment after it chains.
//!
//! Nothing inside the store can reveal the removal of its newest segments: keep `verify`'s head
//! hash (or a checkpoint) elsewhere to detect that.
//!
//! # Life of a segment
//!
//! `Store::open` starts a new segment (after the last one, sealed by an orderly `close`, or after
//! repairing and sealing one left unsealed by a crash). Appends go to the kernel with one
//! `pwrite(2)` per call and no buffering in between, so a killed process loses nothing it was told
//! was written; durability against power loss comes from `sync`. When a segment would grow beyond
//! `StoreOptions::segment_bytes` it is sealed and the next one begins with a header chained to the
//! seal.

pub use self::anchor::{Anchor, SegmentState, frame_hash, segment_numbers, segment_state};
pub use self::keys::{key_path, load_or_create_key, load_public_key, public_key_pem};
pub use self::prune::{PruneReport, prune, prune_through};
pub use self::read::{Records, read_at, read_raw_at, read_raw_run, read_records, read_run};
pub use self::verify::{PrunedRange, VerifyFailure, VerifyProgress, VerifyReport, verify};

mod anchor;
mod frame;
mod keys;
mod prune;
mod read;
mod verify;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use self::frame::{
    Continues, Header, KIND_CHECKPOINT, KIND_RECORD, KIND_SEAL, MAGIC, MAX_BODY, PREFIX, ScanOptions,
    ZERO_HASH, begin_frame, finish_frame, good_frame_after, push_header_frame, push_signed_frame,
    scan_segment,
};
use crate::model::{Record, Recovery, now_micros};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// Content that fails its checks where the store cannot repair it without destroying evidence.
    #[error("record segment {segment:012} offset {offset}: {what}")]
    Corrupt { segment: u64, offset: u64, what: String },
    #[error("record signing key {} {what}", path.display())]
    Key { path: PathBuf, what: String },
    #[error(
        "record store {} is in use by another ghgate process (it holds {}/store.lock); stop it first",
        dir.display(), dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("record of {len} bytes is larger than the store accepts ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Error {
    fn io(action: &'static str, path: &Path, cause: io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_owned(),
            cause,
        }
    }

    /// The operating system's error, when that is what failed (to tell a full disk from damage).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a frame is: enough to read it back (`read_at`) and to name it in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub segment: u64,
    /// Offset of the frame's length field in the segment file.
    pub offset: u64,
    pub seq: u64,
    /// SHA-256 of the frame body.
    pub hash: [u8; 32],
}

impl Position {
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// A segment is sealed and the next one started before it would grow beyond this size
    /// (a single batch larger than this still goes into one segment).
    pub segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// The path of segment `number` under a store directory.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join("segments").join(format!("{number:012}.seg"))
}

/// Segment numbers present in `dir/segments`, ascending (files with other names are ignored).
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    let entries = match fs::read_dir(dir.join("segments")) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(numbers),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if stem.len() == 12
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = stem.parse::<u64>()
            && n > 0
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Opens (creating it, mode 0600) a lock file; the caller takes the lock it needs.
fn open_lock(path: &Path, action: &'static str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(action, path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}

/// A sync taken out of the store (`Store::sync_later`).
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    path: PathBuf,
}

impl PendingSync {
    /// Makes durable what the segment held when this was taken. A segment sealed meanwhile was
    /// synced by its seal; syncing it again is harmless.
    pub fn sync(self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync record segment", &self.path, e))
    }
}

/// The segment being appended to.
struct Active {
    number: u64,
    path: PathBuf,
    file: File,
    /// Bytes known good; the next frame goes here.
    len: u64,
    frames: u64,
    records: u64,
    /// A failed write may have left bytes after `len` that could not be cut yet.
    dirty: bool,
    #[cfg(test)]
    fault: Option<tests::Fault>,
}

impl Active {
    /// Writes `bytes` at the end with one `pwrite(2)`; on failure cuts back whatever part of them
    /// reached the file, so the segment stays a sequence of whole frames.
    fn write_end(&mut self, bytes: &[u8]) -> Result<()> {
        if self.dirty {
            self.file
                .set_len(self.len)
                .map_err(|e| Error::io("truncate record segment", &self.path, e))?;
            self.dirty = false;
        }
        if let Err(e) = self.pwrite(bytes) {
            self.dirty = self.truncate_back().is_err();
            return Err(Error::io("write record segment", &self.path, e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    #[cfg(not(test))]
    fn pwrite(&mut self, bytes: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, self.len)
    }

    #[cfg(not(test))]
    fn truncate_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)
    }
}

/// The writer of a record store. One per directory (enforced with a lock file).
///
/// Dropping it without `close` is like a crash: nothing written is lost, and the next `open`
/// seals the segment it left.
pub struct Store {
    dir: PathBuf,
    key: SigningKey,
    opts: StoreOptions,
    active: Option<Active>,
    /// The highest segment number that exists (the active one, or the last sealed one).
    newest: u64,
    /// The last frame written.
    head: Position,
    /// A segment was created since the directory was last synced.
    dir_dirty: bool,
    /// Reused for every batch of records, and for control frames, to avoid allocating per append.
    buf: Vec<u8>,
    ctl: Vec<u8>,
    starts: Vec<usize>,
    positions: Vec<Position>,
    _lock: File,
}

/// Records serialised into frames that are not yet numbered or chained: the part of an append
/// that needs no store, and so no lock around it.
#[derive(Debug, Default)]
pub struct Framed {
    buf: Vec<u8>,
    starts: Vec<usize>,
}

impl Framed {
    pub fn new(recs: &[Record]) -> Result<Self> {
        let mut framed = Framed {
            buf: Vec::with_capacity(recs.len() * 512),
            starts: Vec::with_capacity(recs.len()),
        };
        framed.fill(recs)?;
        Ok(framed)
    }

    /// Bytes the frames take in a segment.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    fn fill(&mut self, recs: &[Record]) -> Result<()> {
        self.buf.clear();
        // One huge batch should not pin its buffer for the life of the gateway.
        if self.buf.capacity() > 8 << 20 {
            self.buf.shrink_to(64 << 10);
        }
        self.starts.clear();
        for rec in recs {
            let start = begin_frame(&mut self.buf);
            serde_json::to_writer(&mut self.buf, rec)?;
            let len = self.buf.len() - start - PREFIX;
            if len > MAX_BODY {
                return Err(Error::TooLarge { len, max: MAX_BODY });
            }
            self.starts.push(start);
        }
        Ok(())
    }
}

/// Shows where the store is, never its key.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("active", &self.active.as_ref().map(|a| a.number))
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, repairing a torn tail left by a crash.
    /// Returns what was repaired, which is also recorded in the store as a `Record::Recovery`.
    pub fn open(dir: &Path, key: SigningKey, opts: StoreOptions) -> Result<(Store, Option<Recovery>)> {
        let seg_dir = dir.join("segments");
        fs::create_dir_all(&seg_dir).map_err(|e| Error::io("create record directory", &seg_dir, e))?;
        let lock_path = dir.join("store.lock");
        let lock = open_lock(&lock_path, "open record store lock")?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { dir: dir.to_owned() }),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock record store", &lock_path, e)),
        }
        let mut store = Store {
            dir: dir.to_owned(),
            key,
            opts,
            active: None,
            newest: 0,
            head: Position {
                segment: 0,
                offset: 0,
                seq: 0,
                hash: ZERO_HASH,
            },
            dir_dirty: false,
            buf: Vec::with_capacity(64 << 10),
            ctl: Vec::with_capacity(1024),
            starts: Vec::new(),
            positions: Vec::new(),
            _lock: lock,
        };
        let numbers = list_segments(dir).map_err(|e| Error::io("list record segments in", &seg_dir, e))?;
        let Some(&last) = numbers.last() else {
            store.create_segment(1)?;
            store.sync()?;
            return Ok((store, None));
        };
        store.newest = last;
        let recovery = store.recover(last)?;
        store.sync()?;
        Ok((store, recovery))
    }

    /// Continues after segment `last`: seals it if a crash left it unsealed (cutting a torn tail
    /// first), then starts the next one.
    fn recover(&mut self, last: u64) -> Result<Option<Recovery>> {
        let path = segment_path(&self.dir, last);
        let read_err = |e| Error::io("read record segment", &path, e);
        let scan = scan_segment(&path, last, &ScanOptions::default(), &mut |_| {}).map_err(read_err)?;
        if scan.problem.is_none() && scan.sealed {
            let (seq, hash, offset) = scan.head.expect("a sealed segment has frames");
            self.head = Position {
                segment: last,
                offset,
                seq,
                hash,
            };
            self.create_segment(last + 1)?;
            return Ok(None);
        }
        let (keep, cut) = match &scan.problem {
            None => (scan.file_len, 0),
            Some(p) if p.after_seal => {
                return Err(Error::Corrupt {
                    segment: last,
                    offset: p.offset,
                    what: format!("{}; refusing to start (nothing was changed)", p.what),
                });
            }
            Some(p) => {
                let file = File::open(&path).map_err(read_err)?;
                let min_seq = scan.head.map_or(0, |h| h.0);
                if let Some(next) =
                    good_frame_after(&file, p.offset, scan.file_len, min_seq).map_err(read_err)?
                {
                    return Err(Error::Corrupt {
                        segment: last,
                        offset: p.offset,
                        what: format!(
                            "{}, and an intact frame follows at offset {next}: this is not a torn write \
                             but damage or tampering; refusing to start (nothing was changed; \
                             `ghgate sessions verify` shows the first bad place)",
                            p.what
                        ),
                    });
                }
                (p.offset, scan.file_len - p.offset)
            }
        };
        if let Some((seq, hash, offset)) = scan.head {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open record segment", &path, e))?;
            if cut > 0 {
                file.set_len(keep)
                    .map_err(|e| Error::io("truncate record segment", &path, e))?;
            }
            self.head = Position {
                segment: last,
                offset,
                seq,
                hash,
            };
            self.active = Some(Active {
                number: last,
                path: path.clone(),
                file,
                len: keep,
                frames: scan.frames,
                records: scan.records,
                dirty: false,
                #[cfg(test)]
                fault: None,
            });
        } else {
            // Not even the header survived: rebuild the segment, chained to the previous one.
            if last > 1 {
                let prev_path = segment_path(&self.dir, last - 1);
                let prev = scan_segment(&prev_path, last - 1, &ScanOptions::default(), &mut |_| {})
                    .map_err(|e| Error::io("read record segment", &prev_path, e))?;
                let Some((seq, hash, offset)) = prev.head.filter(|_| prev.sealed && prev.problem.is_none())
                else {
                    return Err(Error::Corrupt {
                        segment: last - 1,
                        offset: prev.good_len,
                        what: format!(
                            "the segment before the torn segment {last:012} is not intact and sealed ({}); \
                             refusing to start",
                            prev.problem.map_or("no seal".into(), |p| p.what)
                        ),
                    });
                };
                self.head = Position {
                    segment: last - 1,
                    offset,
                    seq,
                    hash,
                };
            }
            self.create_segment(last)?;
        }
        let recovery = (cut > 0).then(|| Recovery {
            at: now_micros(),
            segment: last,
            kept: keep,
            truncated: cut,
            records: scan.records,
        });
        if let Some(r) = &recovery {
            self.append(&Record::Recovery(r.clone()))?;
        }
        // A segment holding only its header (a crash right after it was started) is simply reused.
        if recovery.is_some() || self.active.as_ref().is_some_and(|a| a.frames > 1) {
            self.rotate()?;
        }
        Ok(recovery)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last frame written (a record, or a header, checkpoint or seal).
    pub fn head(&self) -> Position {
        self.head
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Appends one record. When this returns, the record is in the kernel (see `sync`).
    pub fn append(&mut self, rec: &Record) -> Result<Position> {
        self.append_records(std::slice::from_ref(rec))?;
        Ok(self.positions[0])
    }

    /// Whether about `bytes` more fit in the active segment without sealing it (sealing signs
    /// and syncs, which a caller on a latency-sensitive thread would rather leave to others).
    pub fn has_room(&self, bytes: u64) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| !a.dirty && a.len + bytes <= self.opts.segment_bytes)
    }

    /// Appends records with a single write: all of them reach the file, or none.
    pub fn append_batch(&mut self, recs: &[Record]) -> Result<Vec<Position>> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        self.append_records(recs)?;
        Ok(self.positions.clone())
    }

    /// `append_batch`, of records the caller framed beforehand (`Framed::new`, which needs no
    /// store): what is left to do is to number and chain the frames and write them, so a caller
    /// holding a lock around the store holds it for less.
    pub fn append_framed(&mut self, framed: &mut Framed) -> Result<Vec<Position>> {
        if framed.starts.is_empty() {
            return Ok(Vec::new());
        }
        self.write_framed(framed)?;
        Ok(self.positions.clone())
    }

    fn append_records(&mut self, recs: &[Record]) -> Result<()> {
        // The store's own buffers, reused for every batch.
        let mut framed = Framed {
            buf: std::mem::take(&mut self.buf),
            starts: std::mem::take(&mut self.starts),
        };
        let result = framed.fill(recs).and_then(|()| self.write_framed(&mut framed));
        (self.buf, self.starts) = (framed.buf, framed.starts);
        result
    }

    fn write_framed(&mut self, framed: &mut Framed) -> Result<()> {
        self.positions.clear();
        self.ensure_active()?;
        let active = self
            .active
            .as_ref()
            .expect("ensure_active leaves an active segment");
        if active.frames > 1 && active.len + framed.buf.len() as u64 > self.opts.segment_bytes {
            self.rotate()?;
        }
        let active = self.active.as_mut().expect("rotate leaves an active segment");
        let (mut seq, mut prev) = (self.head.seq, self.head.hash);
        for (i, &start) in framed.starts.iter().enumerate() {
            let end = framed.starts.get(i + 1).copied().unwrap_or(framed.buf.len());
            seq += 1;
            prev = finish_frame(&mut framed.buf[start..end], seq, &prev, KIND_RECORD);
            self.positions.push(Position {
                segment: active.number,
                offset: active.len + start as u64,
                seq,
                hash: prev,
            });
        }
        active.write_end(&framed.buf)?;
        let n = framed.starts.len() as u64;
        active.frames += n;
        active.records += n;
        self.head = *self.positions.last().expect("at least one record");
        Ok(())
    }

    /// Appends a signed checkpoint of the current head: records before it can no longer be
    /// altered or removed without the key, even before their segment is sealed.
    pub fn checkpoint(&mut self) -> Result<Position> {
        self.ensure_active()?;
        self.write_signed(KIND_CHECKPOINT)
    }

    /// Appends a signed frame of `kind` (checkpoint or seal) over the current head to the active
    /// segment, which must exist.
    fn write_signed(&mut self, kind: u8) -> Result<Position> {
        let active = self
            .active
            .as_mut()
            .expect("a signed frame goes to an active segment");
        self.ctl.clear();
        let seq = self.head.seq + 1;
        let hash = push_signed_frame(
            &mut self.ctl,
            &self.key,
            kind,
            active.number,
            seq,
            &self.head.hash,
            active.records,
        );
        let pos = Position {
            segment: active.number,
            offset: active.len,
            seq,
            hash,
        };
        active.write_end(&self.ctl)?;
        active.frames += 1;
        self.head = pos;
        Ok(pos)
    }

    /// `sync`, with the active segment's data left to `PendingSync::sync`, which needs no
    /// store: a sync takes milliseconds, and appends may go on meanwhile (they are not covered
    /// by it). A new segment's directory entry, once per segment, is synced here.
    pub fn sync_later(&mut self) -> Result<Option<PendingSync>> {
        if self.dir_dirty {
            sync_dir(&self.dir.join("segments"))?;
            self.dir_dirty = false;
        }
        let Some(active) = &self.active else {
            return Ok(None);
        };
        let file = active
            .file
            .try_clone()
            .map_err(|e| Error::io("open record segment to sync", &active.path, e))?;
        Ok(Some(PendingSync {
            file,
            path: active.path.clone(),
        }))
    }

    /// Makes everything appended so far durable (fdatasync, and the directory after a new
    /// segment was created).
    pub fn sync(&mut self) -> Result<()> {
        self.sync_later()?.map_or(Ok(()), PendingSync::sync)
    }

    /// Orderly shutdown: seals the active segment and makes everything durable.
    pub fn close(mut self) -> Result<()> {
        self.seal_active()?;
        self.sync()
    }

    fn ensure_active(&mut self) -> Result<()> {
        if self.active.is_none() {
            self.create_segment(self.newest + 1)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.seal_active()?;
        self.create_segment(self.newest + 1)
    }

    /// Writes the seal of the active segment and makes it durable. Afterwards there is no active
    /// segment until the next one is created (which a failure there leaves for the next append).
    fn seal_active(&mut self) -> Result<()> {
        if self.active.is_none() {
            return Ok(());
        }
        self.write_signed(KIND_SEAL)?;
        let active = self.active.take().expect("checked above");
        active
            .file
            .sync_data()
            .map_err(|e| Error::io("sync record segment", &active.path, e))
    }

    /// Creates (or recreates, after a torn start) segment `number` with its header chained to
    /// the head, and makes it the active segment.
    fn create_segment(&mut self, number: u64) -> Result<()> {
        let path = segment_path(&self.dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("create record segment", &path, e))?;
        self.dir_dirty = true;
        let header = Header {
            segment: number,
            created_at: now_micros(),
            continues: (self.head.seq > 0).then(|| Continues {
                segment: self.head.segment,
                seq: self.head.seq,
                hash: hex::encode(self.head.hash),
            }),
        };
        self.ctl.clear();
        self.ctl.extend_from_slice(MAGIC);
        let seq = self.head.seq + 1;
        let hash = push_header_frame(&mut self.ctl, &header, seq, &self.head.hash);
        let mut active = Active {
            number,
            path,
            file,
            len: 0,
            frames: 1,
            records: 0,
            dirty: false,
            #[cfg(test)]
            fault: None,
        };
        if let Err(e) = active.write_end(&self.ctl) {
            // The next attempt recreates it; a file left behind holds no frame.
            let _ = fs::remove_file(&active.path);
            return Err(e);
        }
        self.head = Position {
            segment: number,
            offset: MAGIC.len() as u64,
            seq,
            hash,
        };
        self.newest = number;
        self.active = Some(active);
        Ok(())
    }
}
