//! Reading records back, in order or one at a time, while a gateway may be appending.
//!
//! Readers check each frame's checksum but not the chain or signatures (that is `verify`), and
//! never hold more than one frame in memory.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::frame::{
    FrameReader, KIND_CHECKPOINT, KIND_HEADER, KIND_RECORD, KIND_SEAL, MAGIC, Next, read_full,
};
use super::{Error, Position, Result, list_segments, segment_path};
use crate::model::Record;

/// Every record in the store, in order, across segments. Headers, checkpoints and seals are
/// skipped. A frame being written at the very end of the newest segment ends the iteration
/// cleanly; segments started while iterating are picked up.
pub fn read_records(dir: &Path) -> Result<Records> {
    let pending =
        list_segments(dir).map_err(|e| Error::io("list record segments in", &dir.join("segments"), e))?;
    let listed = pending.last().copied().unwrap_or(0);
    Ok(Records {
        dir: dir.to_owned(),
        pending: pending.into(),
        listed,
        cur: None,
        done: false,
    })
}

/// The iterator of `read_records`. After an error it ends.
pub struct Records {
    dir: PathBuf,
    pending: VecDeque<u64>,
    /// The highest segment number seen in a listing.
    listed: u64,
    cur: Option<Cursor>,
    done: bool,
}

struct Cursor {
    number: u64,
    reader: FrameReader<File>,
    sealed: bool,
    /// The end was reached once while a later segment existed; re-read in case the seal landed.
    retried: bool,
}

impl Iterator for Records {
    type Item = Result<(Position, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Records {
    fn advance(&mut self) -> Result<Option<(Position, Record)>> {
        loop {
            if self.cur.is_none() {
                let Some(number) = self.next_segment()? else {
                    return Ok(None);
                };
                let path = segment_path(&self.dir, number);
                let mut file = File::open(&path).map_err(|e| Error::io("read record segment", &path, e))?;
                let mut magic = [0u8; 8];
                let n = read_full(&mut file, &mut magic)
                    .map_err(|e| Error::io("read record segment", &path, e))?;
                if magic[..n] != MAGIC[..n] {
                    return Err(Error::Corrupt {
                        segment: number,
                        offset: 0,
                        what: "not a ghgate record segment (bad file magic)".into(),
                    });
                }
                if n < MAGIC.len() {
                    // A segment being created right now: nothing in it yet.
                    if self.later_segment_exists(number)? {
                        return Err(Error::Corrupt {
                            segment: number,
                            offset: 0,
                            what: "segment has no header, but a later segment exists".into(),
                        });
                    }
                    return Ok(None);
                }
                let reader = FrameReader::new(file, MAGIC.len() as u64);
                self.cur = Some(Cursor {
                    number,
                    reader,
                    sealed: false,
                    retried: false,
                });
            }
            let cur = self.cur.as_mut().expect("set above");
            let number = cur.number;
            let path = || segment_path(&self.dir, number);
            let corrupt = |offset, what: String| Error::Corrupt {
                segment: number,
                offset,
                what,
            };
            let next = cur
                .reader
                .next_frame()
                .map_err(|e| Error::io("read record segment", &path(), e))?;
            let end_at = match next {
                Next::Frame { offset } => {
                    if !cur.reader.crc_ok() {
                        return Err(corrupt(
                            offset,
                            "checksum mismatch — the frame was altered or damaged".into(),
                        ));
                    }
                    cur.retried = false;
                    match cur.reader.kind() {
                        KIND_RECORD => {
                            let rec = serde_json::from_slice(cur.reader.payload())
                                .map_err(|e| corrupt(offset, format!("record does not parse: {e}")))?;
                            let pos = Position {
                                segment: number,
                                offset,
                                seq: cur.reader.seq(),
                                hash: cur.reader.hash(),
                            };
                            return Ok(Some((pos, rec)));
                        }
                        KIND_SEAL => cur.sealed = true,
                        KIND_HEADER | KIND_CHECKPOINT => {}
                        other => return Err(corrupt(offset, format!("unknown frame kind {other}"))),
                    }
                    continue;
                }
                Next::End if cur.sealed => {
                    self.cur = None;
                    continue;
                }
                Next::BadLength { offset, len } => {
                    return Err(corrupt(offset, format!("frame length {len} is impossible")));
                }
                Next::End => cur.reader.offset,
                Next::Partial { offset, .. } => offset,
            };
            // The end of a segment without its seal: the tail being written, unless the writer
            // has moved on to a later segment (then look once more: the seal comes first).
            if !self.later_segment_exists(number)? {
                return Ok(None);
            }
            let cur = self.cur.as_mut().expect("set above");
            if cur.retried {
                return Err(Error::Corrupt {
                    segment: number,
                    offset: end_at,
                    what: "segment ends without a seal, but a later segment exists".into(),
                });
            }
            cur.retried = true;
            cur.reader
                .get_mut()
                .seek(SeekFrom::Start(end_at))
                .map_err(|e| Error::io("read record segment", &segment_path(&self.dir, number), e))?;
            cur.reader.offset = end_at;
        }
    }

    fn next_segment(&mut self) -> Result<Option<u64>> {
        if self.pending.is_empty() {
            self.relist()?;
        }
        Ok(self.pending.pop_front())
    }

    fn later_segment_exists(&mut self, number: u64) -> Result<bool> {
        if self.pending.is_empty() {
            self.relist()?;
        }
        Ok(self.pending.front().is_some_and(|&n| n > number))
    }

    fn relist(&mut self) -> Result<()> {
        let numbers = list_segments(&self.dir)
            .map_err(|e| Error::io("list record segments in", &self.dir.join("segments"), e))?;
        for n in numbers {
            if n > self.listed {
                self.pending.push_back(n);
                self.listed = n;
            }
        }
        Ok(())
    }
}

/// Reads the record frame at `offset` of segment `segment` (a `Position` from the writer or
/// from `read_records`).
pub fn read_at(dir: &Path, segment: u64, offset: u64) -> Result<(Position, Record)> {
    let mut run = read_run(dir, segment, offset, 1)?;
    Ok(run.pop().expect("a run of one record"))
}

/// `read_at`, the record as the JSON bytes it was stored as (checksum checked, not parsed): what
/// the JSON-lines export writes, and what a record must serialise back to.
pub fn read_raw_at(dir: &Path, segment: u64, offset: u64) -> Result<(Position, Vec<u8>)> {
    let mut run = read_raw_run(dir, segment, offset, 1)?;
    Ok(run.pop().expect("a run of one record"))
}

/// The `records` records whose seqs follow on from the one at `offset` of segment `segment`:
/// consecutive frames of that segment (no checkpoint between them, which would take a seq), as
/// the index lists a run of them. One open and one buffered read for the whole run.
pub fn read_run(dir: &Path, segment: u64, offset: u64, records: u64) -> Result<Vec<(Position, Record)>> {
    read_raw_run(dir, segment, offset, records)?
        .into_iter()
        .map(|(pos, json)| {
            let rec = serde_json::from_slice(&json).map_err(|e| Error::Corrupt {
                segment,
                offset: pos.offset,
                what: format!("record does not parse: {e}"),
            })?;
            Ok((pos, rec))
        })
        .collect()
}

/// `read_run`, each record as the JSON bytes it was stored as.
pub fn read_raw_run(dir: &Path, segment: u64, offset: u64, records: u64) -> Result<Vec<(Position, Vec<u8>)>> {
    let path = segment_path(dir, segment);
    let io_err = |e| Error::io("read record segment", &path, e);
    let mut file = File::open(&path).map_err(io_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut reader = FrameReader::with_capacity(file, offset, 8 << 10);
    let mut run = Vec::with_capacity(usize::try_from(records).unwrap_or(0).min(4096));
    let mut want_seq = None;
    for _ in 0..records {
        let at = reader.offset;
        let corrupt = |what: String| Error::Corrupt {
            segment,
            offset: at,
            what,
        };
        match reader.next_frame().map_err(io_err)? {
            Next::Frame { .. } => {}
            Next::End | Next::Partial { .. } => {
                return Err(corrupt("no whole frame here (past the end?)".into()));
            }
            Next::BadLength { len, .. } => {
                return Err(corrupt(format!("no frame starts here (length {len})")));
            }
        }
        if !reader.crc_ok() {
            return Err(corrupt(
                "checksum mismatch — the frame was altered or damaged".into(),
            ));
        }
        if reader.kind() != KIND_RECORD {
            return Err(corrupt(format!(
                "the frame here is a {}, not a record",
                super::frame::kind_name(reader.kind())
            )));
        }
        let seq = reader.seq();
        if let Some(want) = want_seq
            && want != seq
        {
            return Err(corrupt(format!(
                "the record here has seq {seq}, the run needs {want}"
            )));
        }
        want_seq = Some(seq + 1);
        run.push((
            Position {
                segment,
                offset: at,
                seq,
                hash: reader.hash(),
            },
            reader.payload().to_vec(),
        ));
    }
    Ok(run)
}
