//! Frames: encoding, streaming decoding, and the one scan of a segment file that open, read,
//! verify and prune share (so they cannot disagree about what a valid segment is).
//!
//! Nothing here writes to a segment.
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys;
use crate::model::{Micros, Record};

/// First bytes of every segment file: "ghgrec", NUL, format version 1.
pub(super) const MAGIC: &[u8; 8] = b"ghgrec\0\x01";
/// `u32 body_len | u32 crc32(body)`.
pub(super) const PREFIX: usize = 8;
/// `u64 seq | [u8; 32] prev_hash | u8 kind`.
pub(super) const BODY_HEAD: usize = 41;
/// No frame body is larger: a length beyond it is damage, not a record.
pub(super) const MAX_BODY: usize = 256 << 20;

pub(super) const KIND_HEADER: u8 = 1;
pub(super) const KIND_RECORD: u8 = 2;
pub(super) const KIND_CHECKPOINT: u8 = 3;
pub(super) const KIND_SEAL: u8 = 4;

/// Checkpoint and seal payload: `u64 segment | u64 records | [u8; 64] signature`.
pub(super) const SIGNED_PAYLOAD: usize = 8 + 8 + 64;

pub(super) type Hash = [u8; 32];
pub(super) const ZERO_HASH: Hash = [0; 32];

/// JSON payload of a segment header frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Header {
    pub segment: u64,
    pub created_at: Micros,
    /// Where the chain continues from: the last frame of the previous segment (absent for the
    /// very first frame of the store).
    pub continues: Option<Continues>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Continues {
    pub segment: u64,
    pub seq: u64,
    /// Lowercase hex of the frame hash.
    pub hash: String,
}

/// Appends the placeholder of a frame's prefix and body head; returns where the frame starts.
pub(super) fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; PREFIX + BODY_HEAD]);
    start
}

/// Fills in a frame begun with `begin_frame` whose payload has been appended after it, and returns
/// its hash.
pub(super) fn finish_frame(frame: &mut [u8], seq: u64, prev: &Hash, kind: u8) -> Hash {
    frame[PREFIX..PREFIX + 8].copy_from_slice(&seq.to_le_bytes());
    frame[PREFIX + 8..PREFIX + 40].copy_from_slice(prev);
    frame[PREFIX + 40] = kind;
    let body = &frame[PREFIX..];
    let body_len = body.len() as u32;
    let crc = crc32fast::hash(body);
    let hash: Hash = Sha256::digest(body).into();
    frame[0..4].copy_from_slice(&body_len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    hash
}

/// Appends a whole signed frame (checkpoint or seal) and returns its hash.
pub(super) fn push_signed_frame(
    buf: &mut Vec<u8>,
    key: &ed25519_dalek::SigningKey,
    kind: u8,
    segment: u64,
    seq: u64,
    prev: &Hash,
    records: u64,
) -> Hash {
    let start = begin_frame(buf);
    let sig = keys::sign_frame(key, kind, segment, seq, prev, records);
    buf.extend_from_slice(&segment.to_le_bytes());
    buf.extend_from_slice(&records.to_le_bytes());
    buf.extend_from_slice(&sig);
    finish_frame(&mut buf[start..], seq, prev, kind)
}

/// Appends a whole segment header frame and returns its hash.
pub(super) fn push_header_frame(buf: &mut Vec<u8>, header: &Header, seq: u64, prev: &Hash) -> Hash {
    let start = begin_frame(buf);
    serde_json::to_writer(&mut *buf, header).expect("a segment header always serializes");
    finish_frame(&mut buf[start..], seq, prev, KIND_HEADER)
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HEADER => "segment header",
        KIND_RECORD => "record",
        KIND_CHECKPOINT => "checkpoint",
        KIND_SEAL => "seal",
        _ => "unknown frame",
    }
}

/// Reads into `buf` until it is full or the input ends; returns how much was read.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What the next read of a segment found.
pub(super) enum Next {
    /// A whole frame is in `FrameReader::body` (not yet checked).
    Frame { offset: u64 },
    /// The file ends exactly here.
    End,
    /// The file ends inside a frame: `have` bytes of it are there.
    Partial {
        offset: u64,
        have: u64,
        need: Option<u64>,
    },
    /// The length field cannot be a frame's.
    BadLength { offset: u64, len: u32 },
}

/// Streams frames out of a segment, one body at a time (never the whole file).
pub(super) struct FrameReader<R> {
    inner: BufReader<R>,
    /// Offset of the next unread byte.
    pub offset: u64,
    pub body: Vec<u8>,
    pub crc: u32,
}

impl<R: Read> FrameReader<R> {
    /// `offset` is where `inner` is positioned.
    pub fn new(inner: R, offset: u64) -> Self {
        Self::with_capacity(inner, offset, 256 << 10)
    }

    pub fn with_capacity(inner: R, offset: u64, capacity: usize) -> Self {
        FrameReader {
            inner: BufReader::with_capacity(capacity, inner),
            offset,
            body: Vec::new(),
            crc: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut BufReader<R> {
        &mut self.inner
    }

    pub fn next_frame(&mut self) -> io::Result<Next> {
        let offset = self.offset;
        let mut prefix = [0u8; PREFIX];
        let n = read_full(&mut self.inner, &mut prefix)?;
        self.offset += n as u64;
        if n == 0 {
            return Ok(Next::End);
        }
        if n < PREFIX {
            return Ok(Next::Partial {
                offset,
                have: n as u64,
                need: None,
            });
        }
        let len = u32::from_le_bytes(prefix[0..4].try_into().unwrap());
        if (len as usize) < BODY_HEAD || len as usize > MAX_BODY {
            return Ok(Next::BadLength { offset, len });
        }
        self.crc = u32::from_le_bytes(prefix[4..8].try_into().unwrap());
        self.body.clear();
        self.body.resize(len as usize, 0);
        let m = read_full(&mut self.inner, &mut self.body)?;
        self.offset += m as u64;
        if m < len as usize {
            return Ok(Next::Partial {
                offset,
                have: (PREFIX + m) as u64,
                need: Some(PREFIX as u64 + len as u64),
            });
        }
        Ok(Next::Frame { offset })
    }

    pub fn crc_ok(&self) -> bool {
        crc32fast::hash(&self.body) == self.crc
    }

    pub fn seq(&self) -> u64 {
        u64::from_le_bytes(self.body[0..8].try_into().unwrap())
    }

    pub fn prev(&self) -> Hash {
        self.body[8..40].try_into().unwrap()
    }

    pub fn kind(&self) -> u8 {
        self.body[40]
    }

    pub fn payload(&self) -> &[u8] {
        &self.body[BODY_HEAD..]
    }

    pub fn hash(&self) -> Hash {
        Sha256::digest(&self.body).into()
    }
}

/// A checkpoint or seal payload.
pub(super) struct Signed {
    pub segment: u64,
    pub records: u64,
    pub signature: [u8; 64],
}

pub(super) fn parse_signed(payload: &[u8]) -> Option<Signed> {
    if payload.len() != SIGNED_PAYLOAD {
        return None;
    }
    Some(Signed {
        segment: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
        records: u64::from_le_bytes(payload[8..16].try_into().unwrap()),
        signature: payload[16..80].try_into().unwrap(),
    })
}

/// What a scan checks beyond framing, checksums and the chain inside the segment.
#[derive(Default)]
pub(super) struct ScanOptions<'a> {
    /// The seq and previous hash the header must have (the end of the previous segment).
    pub expect_start: Option<(u64, Hash)>,
    /// Check checkpoint and seal signatures against this key.
    pub key: Option<&'a VerifyingKey>,
    /// Parse every record (and note the newest `at`).
    pub parse_records: bool,
}

/// The first bad place a scan found.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub offset: u64,
    /// Index of the frame in its segment (the header is #0).
    pub frame: u64,
    pub seq: Option<u64>,
    pub what: String,
    /// The file ends inside a frame (or before its header): what a crash mid-write leaves.
    pub partial: bool,
    /// Bytes follow a seal: never a crash, always something appended by hand.
    pub after_seal: bool,
}

/// What one pass over a segment file found.
#[derive(Debug, Clone)]
pub(super) struct Scan {
    pub file_len: u64,
    /// End of the last frame that passed every check.
    pub good_len: u64,
    pub frames: u64,
    pub records: u64,
    pub header: Option<Header>,
    /// Seq and hash of the header frame, and the hash it chains to.
    pub start: Option<(u64, Hash)>,
    /// Seq, hash and offset of the last good frame.
    pub head: Option<(u64, Hash, u64)>,
    pub sealed: bool,
    pub checkpoints: u64,
    /// Records covered by the last checkpoint or seal of this segment.
    pub signed_records: u64,
    /// Newest `at` among records (only with `parse_records`).
    pub newest: Micros,
    pub problem: Option<Problem>,
}

/// Scans one segment file from its start. I/O errors are errors; everything wrong with the
/// content is a `Problem` (the first one; the scan stops there).
pub(super) fn scan_segment(
    path: &Path,
    number: u64,
    opts: &ScanOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scan = Scan {
        file_len,
        good_len: 0,
        frames: 0,
        records: 0,
        header: None,
        start: None,
        head: None,
        sealed: false,
        checkpoints: 0,
        signed_records: 0,
        newest: 0,
        problem: None,
    };
    let mut reader = FrameReader::new(file, 0);
    let mut magic = [0u8; 8];
    let n = read_full(reader.get_mut(), &mut magic)?;
    reader.offset = n as u64;
    if n < MAGIC.len() || &magic != MAGIC {
        let partial = n < MAGIC.len() && magic[..n] == MAGIC[..n];
        scan.problem = Some(Problem {
            offset: 0,
            frame: 0,
            seq: None,
            what: if partial {
                "the file ends before its segment header".to_owned()
            } else {
                "not a ghgate record segment (bad file magic)".to_owned()
            },
            partial,
            after_seal: false,
        });
        return Ok(scan);
    }
    scan.good_len = MAGIC.len() as u64;
    let mut last_progress = 0;
    loop {
        let next = reader.next_frame()?;
        let frame = scan.frames;
        let problem = |offset, seq, what: String| Problem {
            offset,
            frame,
            seq,
            what,
            partial: false,
            after_seal: false,
        };
        let offset = match next {
            Next::End => {
                if scan.frames == 0 {
                    scan.problem = Some(Problem {
                        partial: true,
                        ..problem(
                            MAGIC.len() as u64,
                            None,
                            "the file ends before its segment header".into(),
                        )
                    });
                }
                break;
            }
            Next::Partial { offset, have, need } => {
                let what = match need {
                    Some(need) => format!("the file ends inside a frame ({have} of {need} bytes)"),
                    None => format!("the file ends inside a frame ({have} bytes of its length field)"),
                };
                scan.problem = Some(Problem {
                    partial: true,
                    after_seal: scan.sealed,
                    ..problem(offset, None, what)
                });
                break;
            }
            Next::BadLength { offset, len } => {
                let what = format!("frame length {len} is impossible — the frame was altered or damaged");
                scan.problem = Some(Problem {
                    after_seal: scan.sealed,
                    ..problem(offset, None, what)
                });
                break;
            }
            Next::Frame { offset } => offset,
        };
        if scan.sealed {
            scan.problem = Some(Problem {
                after_seal: true,
                ..problem(
                    offset,
                    None,
                    "data after the seal — frames were added to a finished segment".into(),
                )
            });
            break;
        }
        if !reader.crc_ok() {
            let what = "checksum mismatch — the frame was altered or damaged".to_owned();
            scan.problem = Some(problem(offset, None, what));
            break;
        }
        let seq = reader.seq();
        let prev = reader.prev();
        let kind = reader.kind();
        let fail = |what: String| Some(problem(offset, Some(seq), what));
        // The chain: seq and prev hash continue from the frame before (or the expected start).
        match scan.head {
            None => {
                if let Some((want_seq, want_prev)) = opts.expect_start {
                    if seq != want_seq {
                        scan.problem = fail(format!(
                            "segment starts at sequence number {seq}, but the chain continues at \
                             {want_seq} — \
                             frames or segments were removed, added or replaced"
                        ));
                        break;
                    }
                    if prev != want_prev {
                        scan.problem = fail(
                            "segment header does not chain to the end of the previous segment — \
                             a segment was replaced or rewritten"
                                .into(),
                        );
                        break;
                    }
                }
            }
            Some((head_seq, head_hash, head_offset)) => {
                if seq != head_seq.wrapping_add(1) {
                    scan.problem = fail(format!(
                        "sequence number jumps from {head_seq} to {seq} — \
                         a frame was removed, added or reordered"
                    ));
                    break;
                }
                if prev != head_hash {
                    scan.problem = fail(format!(
                        "hash chain broken: this frame does not chain to the frame before it \
                         (offset {head_offset}) \
                         — that frame was altered after it was written"
                    ));
                    break;
                }
            }
        }
        if frame == 0 && kind != KIND_HEADER {
            scan.problem = fail(format!(
                "the first frame is a {}, not a segment header",
                kind_name(kind)
            ));
            break;
        }
        match kind {
            KIND_HEADER if frame > 0 => {
                scan.problem = fail("segment header in the middle of a segment".into());
                break;
            }
            KIND_HEADER => {
                let header: Header = match serde_json::from_slice(reader.payload()) {
                    Ok(h) => h,
                    Err(e) => {
                        scan.problem = fail(format!("segment header does not parse: {e}"));
                        break;
                    }
                };
                if header.segment != number {
                    scan.problem = fail(format!(
                        "header names segment {:012} but the file is segment {number:012} — \
                         segments were renamed",
                        header.segment
                    ));
                    break;
                }
                let consistent = match &header.continues {
                    None => seq == 1 && prev == ZERO_HASH && number == 1,
                    Some(c) => c.segment + 1 == number && c.seq + 1 == seq && c.hash == hex::encode(prev),
                };
                if !consistent {
                    scan.problem = fail(
                        "segment header's continuation does not match its chain link — \
                         it was altered"
                            .into(),
                    );
                    break;
                }
                scan.header = Some(header);
                scan.start = Some((seq, prev));
            }
            KIND_RECORD => {
                scan.records += 1;
                if opts.parse_records {
                    match serde_json::from_slice::<Record>(reader.payload()) {
                        Ok(r) => scan.newest = scan.newest.max(r.at()),
                        Err(e) => {
                            scan.problem = fail(format!("record does not parse: {e}"));
                            break;
                        }
                    }
                }
            }
            KIND_CHECKPOINT | KIND_SEAL => {
                let name = kind_name(kind);
                let Some(signed) = parse_signed(reader.payload()) else {
                    scan.problem = fail(format!(
                        "malformed {name} ({} payload bytes)",
                        reader.payload().len()
                    ));
                    break;
                };
                if signed.segment != number {
                    scan.problem = fail(format!("{name} names segment {:012}", signed.segment));
                    break;
                }
                if signed.records != scan.records {
                    scan.problem = fail(format!(
                        "{name} counts {} records but the segment has {} before it",
                        signed.records, scan.records
                    ));
                    break;
                }
                if let Some(key) = opts.key
                    && !keys::verify_frame(key, kind, number, seq, &prev, signed.records, &signed.signature)
                {
                    scan.problem = fail(format!(
                        "{name} signature does not verify — \
                         the segment was rewritten, or signed by another key"
                    ));
                    break;
                }
                scan.signed_records = scan.records;
                if kind == KIND_SEAL {
                    scan.sealed = true;
                } else {
                    scan.checkpoints += 1;
                }
            }
            other => {
                scan.problem = fail(format!("unknown frame kind {other}"));
                break;
            }
        }
        scan.frames += 1;
        scan.head = Some((seq, reader.hash(), offset));
        scan.good_len = reader.offset;
        if reader.offset - last_progress >= 1 << 20 {
            last_progress = reader.offset;
            progress(reader.offset);
        }
    }
    progress(file_len);
    Ok(scan)
}

/// Looks for a frame that passes its checksum and carries a sequence number after `min_seq`,
/// anywhere after `from`. A damaged frame followed by such a frame is not a torn write.
///
/// Reads in bounded chunks; only offsets whose length and seq fields are plausible are checked.
pub(super) fn good_frame_after(
    file: &File,
    from: u64,
    file_len: u64,
    min_seq: u64,
) -> io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    const WINDOW: usize = PREFIX + BODY_HEAD;
    let max_seq = min_seq.saturating_add(file_len / WINDOW as u64 + 1);
    let mut buf = vec![0u8; CHUNK + WINDOW];
    let mut body = Vec::new();
    let mut pos = from + 1;
    while pos + WINDOW as u64 <= file_len {
        let n = ((file_len - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)?;
        for i in 0..=(n - WINDOW) {
            let w = &buf[i..i + WINDOW];
            let len = u32::from_le_bytes(w[0..4].try_into().unwrap()) as usize;
            let at = pos + i as u64;
            if !(BODY_HEAD..=MAX_BODY).contains(&len) || at + (PREFIX + len) as u64 > file_len {
                continue;
            }
            let seq = u64::from_le_bytes(w[8..16].try_into().unwrap());
            if seq <= min_seq || seq > max_seq || !(KIND_HEADER..=KIND_SEAL).contains(&w[48]) {
                continue;
            }
            let crc = u32::from_le_bytes(w[4..8].try_into().unwrap());
            body.resize(len, 0);
            file.read_exact_at(&mut body, at + PREFIX as u64)?;
            if crc32fast::hash(&body) == crc {
                return Ok(Some(at));
            }
        }
        pos += (n - WINDOW + 1) as u64;
    }
    Ok(None)
}
