//! Retention: removing the oldest sealed segments under a signed tombstone, so that `verify`
//! can tell pruning from deletion.
//!
//! It must never touch the newest segment (a running gateway appends to it), never delete a
//! segment whose chain or seal does not verify (that would launder tampering into a signed
//! tombstone), and always write the tombstone before the first deletion.
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::frame::{Hash, ScanOptions, ZERO_HASH, scan_segment};
use super::keys::tombstone_message;
use super::{Error, Result, list_segments, open_lock, segment_path, sync_dir};
use crate::model::{Micros, Tombstone, now_micros};

/// What one `prune` removed.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneReport {
    /// First and last segment deleted, including any left by an interrupted earlier prune.
    pub pruned: Option<(u64, u64)>,
    /// The tombstone written for the removed segments (also worth appending to the store as a
    /// `Record::Tombstone` by the process that owns it), or None when nothing was old enough.
    pub tombstone: Option<Tombstone>,
    pub tombstone_path: Option<PathBuf>,
    /// Segments deleted and bytes freed.
    pub segments: u64,
    pub bytes: u64,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pruned {
            None => write!(
                f,
                "nothing to prune: no sealed segment holds only records older than the cutoff"
            ),
            Some((first, last)) => {
                write!(
                    f,
                    "pruned segments {first:012} to {last:012} ({} bytes)",
                    self.bytes
                )?;
                if let Some(path) = &self.tombstone_path {
                    write!(f, "; tombstone {}", path.display())?;
                }
                Ok(())
            }
        }
    }
}

/// A tombstone file: the tombstone's fields and a hex Ed25519 signature over them.
#[derive(Debug, Serialize, Deserialize)]
struct TombstoneFile {
    #[serde(flatten)]
    tombstone: Tombstone,
    signature: String,
}

pub(super) struct LoadedTombstone {
    /// The file name, to name it in messages.
    pub name: String,
    pub t: Tombstone,
    pub last_hash: Hash,
}

fn tombstone_name(first: u64, last: u64) -> String {
    format!("{first:012}-{last:012}.json")
}

fn parse_tombstone_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".json")?.split_once('-')?;
    let digits = |s: &str| s.len() == 12 && s.bytes().all(|c| c.is_ascii_digit());
    (digits(a) && digits(b)).then(|| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
}

/// A tombstone that cannot be trusted (or the tombstone directory that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadTombstone {
    /// The first segment it accounts for (0 when the directory itself could not be read).
    pub segment: u64,
    pub what: String,
}

/// Every tombstone in `dir/tombstones`, signature-checked, sorted by first segment.
pub(super) fn load_tombstones(dir: &Path, key: &VerifyingKey) -> Result<Vec<LoadedTombstone>, BadTombstone> {
    let tdir = dir.join("tombstones");
    let entries = match fs::read_dir(&tdir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(BadTombstone {
                segment: 0,
                what: format!("cannot list {}: {e}", tdir.display()),
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BadTombstone {
            segment: 0,
            what: format!("cannot list {}: {e}", tdir.display()),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((first, last)) = parse_tombstone_name(&name) else {
            continue;
        };
        let bad = |what: String| BadTombstone {
            segment: first,
            what: format!("tombstone {name}: {what}"),
        };
        let text = fs::read_to_string(entry.path()).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let file: TombstoneFile =
            serde_json::from_str(&text).map_err(|e| bad(format!("does not parse ({e}) — it was altered")))?;
        let t = file.tombstone;
        if (t.first_segment, t.last_segment) != (first, last) || first == 0 || last < first {
            return Err(bad(format!(
                "names segments {:012} to {:012}, unlike its file name — it was renamed or altered",
                t.first_segment, t.last_segment
            )));
        }
        let last_hash: Hash = hex::decode(&t.last_hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("its last_hash is not a SHA-256 in hex — it was altered".into()))?;
        let signature: [u8; 64] = hex::decode(&file.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("its signature is not 64 bytes in hex — it was altered".into()))?;
        let msg = tombstone_message(first, last, t.last_seq, &last_hash, t.at, &t.reason);
        if key
            .verify_strict(&msg, &Signature::from_bytes(&signature))
            .is_err()
        {
            return Err(bad(
                "signature does not verify — it was altered, or signed by another key".into(),
            ));
        }
        out.push(LoadedTombstone { name, t, last_hash });
    }
    out.sort_by_key(|t| t.t.first_segment);
    Ok(out)
}

fn write_tombstone(dir: &Path, key: &SigningKey, t: &Tombstone, last_hash: &Hash) -> Result<PathBuf> {
    let tdir = dir.join("tombstones");
    fs::create_dir_all(&tdir).map_err(|e| Error::io("create tombstone directory", &tdir, e))?;
    let msg = tombstone_message(
        t.first_segment,
        t.last_segment,
        t.last_seq,
        last_hash,
        t.at,
        &t.reason,
    );
    let file = TombstoneFile {
        tombstone: t.clone(),
        signature: hex::encode(key.sign(&msg).to_bytes()),
    };
    let mut json = serde_json::to_vec_pretty(&file)?;
    json.push(b'\n');
    let path = tdir.join(tombstone_name(t.first_segment, t.last_segment));
    let tmp = tdir.join(format!(
        ".{}.tmp",
        tombstone_name(t.first_segment, t.last_segment)
    ));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io("write tombstone", &path, e))?;
    sync_dir(&tdir)?;
    Ok(path)
}

/// Deletes the oldest sealed segments all of whose records are older than `cutoff_micros`
/// (contiguous from the oldest remaining one, never the newest segment), after writing a signed
/// tombstone for them. Safe while a gateway appends to the store; prunes are serialised by
/// `dir/prune.lock`. Refuses to delete anything that does not verify.
pub fn prune(dir: &Path, key: &SigningKey, cutoff_micros: Micros, reason: &str) -> Result<PruneReport> {
    prune_through(dir, key, cutoff_micros, reason, u64::MAX)
}

/// `prune`, never touching a segment numbered above `through` (the record sink's last segment
/// whose remote copy is confirmed: a local segment is removed only once it is kept elsewhere).
pub fn prune_through(
    dir: &Path,
    key: &SigningKey,
    cutoff_micros: Micros,
    reason: &str,
    through: u64,
) -> Result<PruneReport> {
    let lock_path = dir.join("prune.lock");
    let lock = open_lock(&lock_path, "open prune lock")?;
    lock.lock().map_err(|e| Error::io("lock", &lock_path, e))?;
    let mut report = PruneReport {
        pruned: None,
        tombstone: None,
        tombstone_path: None,
        segments: 0,
        bytes: 0,
    };
    let seg_dir = dir.join("segments");
    let numbers = list_segments(dir).map_err(|e| Error::io("list record segments in", &seg_dir, e))?;
    let (Some(&first), Some(&newest)) = (numbers.first(), numbers.last()) else {
        return Ok(report);
    };
    let vkey = key.verifying_key();
    let tombstones = load_tombstones(dir, &vkey).map_err(|bad| Error::Corrupt {
        segment: bad.segment,
        offset: 0,
        what: format!("{}; refusing to prune", bad.what),
    })?;
    let mut expect = if first == 1 {
        Some((1, ZERO_HASH))
    } else {
        match tombstones
            .iter()
            .find(|t| t.t.first_segment < first && first <= t.t.last_segment + 1)
        {
            Some(t) if t.t.last_segment == first - 1 => Some((t.t.last_seq + 1, t.last_hash)),
            Some(_) => None,
            None => {
                return Err(Error::Corrupt {
                    segment: first - 1,
                    offset: 0,
                    what: "segments before the oldest one are missing and no tombstone accounts for them; \
                           refusing to prune (run verify)"
                        .into(),
                });
            }
        }
    };
    if let Some(t) = tombstones.iter().find(|t| t.t.last_segment >= newest) {
        return Err(Error::Corrupt {
            segment: newest,
            offset: 0,
            what: format!(
                "tombstone {} accounts for the newest segment; refusing to prune",
                t.name
            ),
        });
    }
    let mut doomed = Vec::new();
    let mut last_end = None;
    for &n in &numbers[..numbers.len() - 1] {
        let path = segment_path(dir, n);
        let opts = ScanOptions {
            expect_start: expect,
            key: Some(&vkey),
            parse_records: true,
        };
        let scan = scan_segment(&path, n, &opts, &mut |_| {})
            .map_err(|e| Error::io("read record segment", &path, e))?;
        if let Some(p) = scan.problem {
            return Err(Error::Corrupt {
                segment: n,
                offset: p.offset,
                what: format!("{}; refusing to prune", p.what),
            });
        }
        let Some((seq, hash, offset)) = scan.head.filter(|_| scan.sealed) else {
            return Err(Error::Corrupt {
                segment: n,
                offset: scan.good_len,
                what: "segment ends without a seal but is not the newest; refusing to prune".into(),
            });
        };
        if let Some(t) = tombstones.iter().find(|t| t.t.last_segment == n)
            && (t.t.last_seq, t.last_hash) != (seq, hash)
        {
            return Err(Error::Corrupt {
                segment: n,
                offset,
                what: format!("the seal does not match tombstone {}; refusing to prune", t.name),
            });
        }
        // Segments a tombstone already accounts for are what an interrupted prune left: finish it.
        let tombstoned = tombstones
            .iter()
            .any(|t| t.t.first_segment <= n && n <= t.t.last_segment);
        // A segment without records (a run that recorded nothing) is as old as its header.
        let newest = match &scan.header {
            Some(h) if scan.records == 0 => h.created_at,
            _ => scan.newest,
        };
        if !tombstoned && (newest >= cutoff_micros || n > through) {
            break;
        }
        doomed.push((n, scan.file_len, tombstoned));
        if !tombstoned {
            last_end = Some((seq, hash));
        }
        expect = Some((seq + 1, hash));
    }
    if let Some((last_seq, last_hash)) = last_end {
        let fresh: Vec<u64> = doomed.iter().filter(|d| !d.2).map(|d| d.0).collect();
        let t = Tombstone {
            at: now_micros(),
            first_segment: fresh[0],
            last_segment: *fresh.last().expect("not empty"),
            last_seq,
            last_hash: hex::encode(last_hash),
            reason: reason.to_owned(),
        };
        report.tombstone_path = Some(write_tombstone(dir, key, &t, &last_hash)?);
        report.tombstone = Some(t);
    }
    for &(n, len, _) in &doomed {
        let path = segment_path(dir, n);
        fs::remove_file(&path).map_err(|e| Error::io("delete record segment", &path, e))?;
        report.segments += 1;
        report.bytes += len;
    }
    if let (Some(first), Some(last)) = (doomed.first(), doomed.last()) {
        report.pruned = Some((first.0, last.0));
        sync_dir(&seg_dir)?;
    }
    drop(lock);
    Ok(report)
}
