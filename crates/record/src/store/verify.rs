//! Checking a whole store against its public key: framing, checksums, sequence, the hash chain
//! within and across segments, segment numbering, seals, checkpoints and tombstones.
//!
//! Read-only, and it reports the first bad place rather than guessing how far damage extends.
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::frame::{MAGIC, ScanOptions, ZERO_HASH, scan_segment};
use super::prune::{LoadedTombstone, load_tombstones};
use super::{list_segments, segment_path};
use crate::model::Micros;

/// How far `verify` is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The segment being checked.
    pub segment: u64,
}

/// Segments removed by retention, as their signed tombstone describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedRange {
    pub first_segment: u64,
    pub last_segment: u64,
    /// The last pruned frame (the seal of `last_segment`).
    pub last_seq: u64,
    pub at: Micros,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: u64,
    pub first_segment: u64,
    pub last_segment: u64,
    pub records: u64,
    pub frames: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hash of the last frame: compare with a copy kept elsewhere to detect removal of the newest
    /// segments, which nothing inside the store can reveal.
    pub head_hash: [u8; 32],
    pub pruned: Vec<PrunedRange>,
    pub tail_sealed: bool,
    pub checkpoints: u64,
    /// Records after the last checkpoint or seal: intact, but not yet covered by a signature.
    pub unsigned_records: u64,
    /// Bytes of a frame still being written (or torn by a crash) at the very end.
    pub partial_tail_bytes: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segments ({:012} to {:012}), {} records, {} bytes, seq {} to {}, head {}",
            self.segments,
            self.first_segment,
            self.last_segment,
            self.records,
            self.bytes,
            self.first_seq,
            self.last_seq,
            hex::encode(self.head_hash)
        )?;
        if self.tail_sealed {
            write!(f, "; sealed")?;
        } else {
            write!(
                f,
                "; active tail: {} records not yet under a signature",
                self.unsigned_records
            )?;
        }
        if self.partial_tail_bytes > 0 {
            write!(
                f,
                ", {} bytes of a frame being written (or torn)",
                self.partial_tail_bytes
            )?;
        }
        for p in &self.pruned {
            write!(
                f,
                "; segments {:012} to {:012} pruned at {} ({})",
                p.first_segment,
                p.last_segment,
                rfc3339(p.at),
                p.reason
            )?;
        }
        Ok(())
    }
}

fn rfc3339(micros: Micros) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{micros}µs"))
}

/// The first place where the store is not what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyFailure {
    pub segment: u64,
    pub offset: u64,
    /// Index of the frame in its segment (the header is #0), when the failure is in a frame.
    pub frame: Option<u64>,
    pub seq: Option<u64>,
    pub what: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {:012} offset {}", self.segment, self.offset)?;
        match (self.frame, self.seq) {
            (Some(frame), Some(seq)) => write!(f, " (frame #{frame}, seq {seq})")?,
            (Some(frame), None) => write!(f, " (frame #{frame})")?,
            (None, Some(seq)) => write!(f, " (seq {seq})")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.what)
    }
}

fn fail(segment: u64, offset: u64, what: String) -> VerifyFailure {
    VerifyFailure {
        segment,
        offset,
        frame: None,
        seq: None,
        what,
    }
}

/// Verifies the store in `dir` against `key`. A store whose oldest segments were pruned
/// verifies when signed tombstones account for exactly the missing ones.
pub fn verify(
    dir: &Path,
    key: &VerifyingKey,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport, VerifyFailure> {
    let numbers = list_segments(dir).map_err(|e| {
        fail(
            0,
            0,
            format!("cannot list {}: {e}", dir.join("segments").display()),
        )
    })?;
    let tombstones = load_tombstones(dir, key).map_err(|bad| fail(bad.segment, 0, bad.what))?;
    let (Some(&first), Some(&last)) = (numbers.first(), numbers.last()) else {
        return Err(fail(
            0,
            0,
            format!("no record segments in {}", dir.join("segments").display()),
        ));
    };
    for (i, &n) in numbers.iter().enumerate() {
        let want = first + i as u64;
        if n != want {
            return Err(fail(
                want,
                0,
                format!(
                    "segment {want:012} is missing (segments {first:012} to {last:012} should all be present)"
                ),
            ));
        }
    }
    check_tombstone_ranges(&tombstones, first, last)?;
    let mut expect_start = if first == 1 {
        Some((1, ZERO_HASH))
    } else {
        // When a prune stopped between its tombstone and its last deletion, the first present
        // segment lies inside the tombstone: its start is unknown, but its end must match.
        tombstones
            .iter()
            .find(|t| t.t.last_segment == first - 1)
            .map(|t| (t.t.last_seq + 1, t.last_hash))
    };
    let ends: HashMap<u64, &LoadedTombstone> = tombstones
        .iter()
        .filter(|t| t.t.last_segment >= first)
        .map(|t| (t.t.last_segment, t))
        .collect();
    let pruned = tombstones
        .iter()
        .filter(|t| t.t.first_segment < first)
        .map(|t| PrunedRange {
            first_segment: t.t.first_segment,
            last_segment: t.t.last_segment,
            last_seq: t.t.last_seq,
            at: t.t.at,
            reason: t.t.reason.clone(),
        })
        .collect();

    let mut sizes = Vec::with_capacity(numbers.len());
    for &n in &numbers {
        let path = segment_path(dir, n);
        let len = std::fs::metadata(&path)
            .map_err(|e| fail(n, 0, format!("cannot read {}: {e}", path.display())))?
            .len();
        sizes.push(len);
    }
    let total: u64 = sizes.iter().sum();
    let mut report = VerifyReport {
        segments: numbers.len() as u64,
        first_segment: first,
        last_segment: last,
        records: 0,
        frames: 0,
        bytes: total,
        first_seq: 0,
        last_seq: 0,
        head_hash: ZERO_HASH,
        pruned,
        tail_sealed: false,
        checkpoints: 0,
        unsigned_records: 0,
        partial_tail_bytes: 0,
    };
    let mut done = 0;
    for (&n, &size) in numbers.iter().zip(&sizes) {
        let is_last = n == last;
        let path = segment_path(dir, n);
        let opts = ScanOptions {
            expect_start,
            key: Some(key),
            parse_records: true,
        };
        let mut on_progress = |d: u64| {
            progress(VerifyProgress {
                bytes_done: done + d.min(size),
                bytes_total: total,
                segment: n,
            })
        };
        let scan = scan_segment(&path, n, &opts, &mut on_progress)
            .map_err(|e| fail(n, 0, format!("cannot read {}: {e}", path.display())))?;
        done += size;
        if let Some(p) = &scan.problem {
            if is_last && p.partial && !p.after_seal {
                report.partial_tail_bytes = scan.file_len - p.offset;
            } else {
                return Err(VerifyFailure {
                    segment: n,
                    offset: p.offset,
                    frame: (p.offset >= MAGIC.len() as u64).then_some(p.frame),
                    seq: p.seq,
                    what: p.what.clone(),
                });
            }
        }
        if !scan.sealed && !is_last {
            return Err(fail(
                n,
                scan.good_len,
                "segment ends without a seal but is not the newest segment — it was cut short".into(),
            ));
        }
        if let Some(t) = ends.get(&n) {
            let matches = scan
                .head
                .is_some_and(|(seq, hash, _)| seq == t.t.last_seq && hash == t.last_hash);
            if !scan.sealed || !matches {
                return Err(fail(
                    n,
                    scan.head.map_or(0, |h| h.2),
                    format!(
                        "the end of this segment does not match tombstone {} — \
                         the segment or the tombstone was replaced",
                        t.name
                    ),
                ));
            }
        }
        if let Some((seq, _)) = scan.start
            && report.first_seq == 0
        {
            report.first_seq = seq;
        }
        if let Some((seq, hash, _)) = scan.head {
            report.last_seq = seq;
            report.head_hash = hash;
            expect_start = Some((seq + 1, hash));
        }
        report.records += scan.records;
        report.frames += scan.frames;
        report.checkpoints += scan.checkpoints;
        if is_last {
            report.tail_sealed = scan.sealed;
            report.unsigned_records = scan.records - scan.signed_records;
        }
    }
    Ok(report)
}

/// Tombstones must account for segments 1 up to the first present one, in contiguous ranges, and
/// never for the newest segment.
fn check_tombstone_ranges(
    tombstones: &[LoadedTombstone],
    first: u64,
    last: u64,
) -> Result<(), VerifyFailure> {
    let mut next = 1;
    for t in tombstones {
        if t.t.first_segment != next {
            let what = if t.t.first_segment > next {
                format!(
                    "segments {next:012} to {:012} are missing and no tombstone accounts for them",
                    t.t.first_segment - 1
                )
            } else {
                format!("tombstone {} overlaps the tombstone before it", t.name)
            };
            return Err(fail(next, 0, what));
        }
        next = t.t.last_segment + 1;
    }
    let covered = next - 1;
    if covered + 1 < first {
        let what = format!(
            "segments {:012} to {:012} are missing and no tombstone accounts for them",
            covered + 1,
            first - 1
        );
        return Err(fail(covered + 1, 0, what));
    }
    if covered >= last {
        return Err(fail(
            last,
            0,
            format!("a tombstone accounts for segment {last:012}, the newest one, which is never pruned"),
        ));
    }
    Ok(())
}
