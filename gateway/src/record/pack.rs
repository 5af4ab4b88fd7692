//! Streaming scanner for the packfile a push sends (the bytes after the command list of a
//! `git-receive-pack` request body): it inflates each object as it passes, so a secret scanner sees
//! what a `git push` uploads, including the literal text that delta objects insert.
//!
//! Packs arrive as chunks split anywhere. The scanner must never buffer the pack or an object: it
//! holds a 12-byte header and one fixed output buffer, whatever the pack's size. It must never
//! panic: malformed input stops it with a one-line error naming the object, and later bytes are
//! ignored. It does not resolve deltas (that needs the base objects) and does not verify the
//! trailing SHA-1: it scans, it does not validate what git will validate again.
#![forbid(unsafe_code)]

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

/// Inflated bytes handed out per `Data` event at most.
const OUT_BUF: usize = 32 * 1024;
/// "PACK", version, object count.
const HEADER_LEN: usize = 12;
/// A REF_DELTA base id and the trailing checksum are SHA-1s.
const OID_LEN: usize = 20;

/// Where scanning stops, so a hostile pack cannot make the scanner run without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Objects scanned before stopping with `truncated`.
    pub max_objects: u64,
    /// Inflated bytes (over all objects) handed out before stopping with `truncated`.
    pub max_inflated_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_objects: 1_000_000,
            max_inflated_bytes: 1 << 30,
        }
    }
}

/// What the scanner saw, in pack order: `Object`, its `Data` events, `ObjectEnd`, next object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackEvent<'a> {
    /// An object starts. `index` counts from 0 in pack order; `size` is the inflated size its
    /// header declares (for deltas, the size of the delta instructions, not of the object they
    /// rebuild).
    Object { index: u64, kind: ObjectKind, size: u64 },
    /// The next inflated bytes of the current object: its content, or for a delta its raw
    /// instructions, whose insert commands carry the new text literally.
    Data(&'a [u8]),
    /// The current object's zlib stream ended, having inflated to exactly its declared size. Not
    /// sent for an object cut short by an error or a limit.
    ObjectEnd,
}

/// An object's type, from bits 4-6 of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Commit,
    Tree,
    Blob,
    Tag,
    /// A delta against an earlier object of the pack, named by its distance back.
    OfsDelta,
    /// A delta against an object named by id, in the pack or (thin packs) already upstream.
    RefDelta,
}

impl ObjectKind {
    fn from_type(bits: u8) -> Option<Self> {
        Some(match bits {
            1 => Self::Commit,
            2 => Self::Tree,
            3 => Self::Blob,
            4 => Self::Tag,
            6 => Self::OfsDelta,
            7 => Self::RefDelta,
            _ => return None,
        })
    }
}

/// What a whole pack held, once it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// Objects scanned to their end (`ObjectEnd` sent).
    pub objects: u64,
    /// Inflated bytes handed out in `Data` events.
    pub inflated_bytes: u64,
    /// Why scanning stopped early: malformed input, or a limit (then `truncated` is set).
    pub error: Option<String>,
    /// Scanning stopped at a limit of `Limits`; the rest of the pack was not scanned.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header {
        buf: [u8; HEADER_LEN],
        len: usize,
    },
    /// The type+size varint; `shift` is 0 before its first byte.
    ObjectHeader {
        bits: u8,
        size: u64,
        shift: u32,
    },
    /// An OFS_DELTA's base offset varint.
    OfsBase {
        offset: u64,
        first: bool,
    },
    /// The rest of a REF_DELTA's base id.
    RefBase {
        left: usize,
    },
    Inflate,
    /// The rest of the trailing checksum.
    Trailer {
        left: usize,
    },
    Done,
    Stopped,
}

enum Stop {
    Malformed(String),
    Limit(String),
}

/// Scans one pack, fed in chunks.
pub struct PackScanner {
    limits: Limits,
    state: State,
    inflater: Decompress,
    out: Box<[u8]>,
    /// Pack bytes consumed so far.
    pos: u64,
    /// Whether any byte arrived: a push with no pack at all (deletes only) is fine.
    seen: bool,
    /// Objects the pack header announced.
    count: u32,
    /// The current object: its index, start in the pack, type, declared and inflated size.
    index: u64,
    start: u64,
    kind: ObjectKind,
    size: u64,
    produced: u64,
    summary: PackSummary,
}

impl fmt::Debug for PackScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackScanner")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("count", &self.count)
            .field("index", &self.index)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl PackScanner {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Header {
                buf: [0; HEADER_LEN],
                len: 0,
            },
            inflater: Decompress::new(true),
            out: vec![0; OUT_BUF].into_boxed_slice(),
            pos: 0,
            seen: false,
            count: 0,
            index: 0,
            start: 0,
            kind: ObjectKind::Blob,
            size: 0,
            produced: 0,
            summary: PackSummary::default(),
        }
    }

    /// Feeds the next bytes of the pack, split anywhere (inside the 12-byte header, an object
    /// header, an OFS_DELTA offset varint, a REF_DELTA base id or a zlib stream), calling `on` for
    /// each event in order. `Data` events carry inflated bytes of the current object; for deltas,
    /// the raw inflated delta instructions, which hold inserted text literally.
    pub fn feed(&mut self, mut chunk: &[u8], on: &mut dyn FnMut(PackEvent<'_>)) {
        if chunk.is_empty() || matches!(self.state, State::Stopped) {
            return;
        }
        self.seen = true;
        while !chunk.is_empty() && !matches!(self.state, State::Stopped) {
            if let Err(stop) = self.step(&mut chunk, on) {
                self.stop(stop);
            }
        }
    }

    /// The pack ended (end of the body). Returns what it held.
    pub fn finish(mut self) -> PackSummary {
        if self.summary.error.is_none() && self.seen {
            let error = match self.state {
                State::Header { len, .. } => Some(format!(
                    "pack: the pack ended inside its {HEADER_LEN}-byte header, after {len} bytes"
                )),
                State::ObjectHeader { .. } | State::OfsBase { .. } | State::RefBase { .. } => {
                    Some(format!("pack: the pack ended inside the header of {}", self.at()))
                }
                State::Inflate => Some(format!(
                    "pack: the pack ended inside the zlib stream of {}",
                    self.at()
                )),
                State::Trailer { .. } => Some("pack: the pack ended inside its trailing checksum".to_owned()),
                State::Done | State::Stopped => None,
            };
            self.summary.error = error;
        }
        self.summary
    }

    fn stop(&mut self, stop: Stop) {
        let error = match stop {
            Stop::Malformed(error) => error,
            Stop::Limit(error) => {
                self.summary.truncated = true;
                error
            }
        };
        self.summary.error.get_or_insert(error);
        self.state = State::Stopped;
    }

    /// The current object, for messages.
    fn at(&self) -> String {
        format!(
            "object {} of {} (at byte {})",
            self.index + 1,
            self.count,
            self.start
        )
    }

    fn malformed(&self, what: impl fmt::Display) -> Stop {
        Stop::Malformed(format!("pack: {}: {what}", self.at()))
    }

    /// Consumes some of `chunk`: one byte of a header, or as much of a skipped id or zlib stream
    /// as it holds.
    fn step(&mut self, chunk: &mut &[u8], on: &mut dyn FnMut(PackEvent<'_>)) -> Result<(), Stop> {
        match self.state {
            State::Header { mut buf, mut len } => {
                let take = (HEADER_LEN - len).min(chunk.len());
                buf[len..len + take].copy_from_slice(&chunk[..take]);
                len += take;
                self.skip(chunk, take);
                self.state = State::Header { buf, len };
                self.header(&buf[..len])
            }
            State::ObjectHeader { bits, size, shift } => {
                let Some(b) = self.byte(chunk) else {
                    return Ok(());
                };
                self.object_header(b, bits, size, shift, on)
            }
            State::OfsBase { offset, first } => {
                let Some(b) = self.byte(chunk) else {
                    return Ok(());
                };
                self.ofs_base(b, offset, first, on)
            }
            State::RefBase { left } => {
                let take = left.min(chunk.len());
                self.skip(chunk, take);
                if take == left {
                    self.begin(on);
                } else {
                    self.state = State::RefBase { left: left - take };
                }
                Ok(())
            }
            State::Inflate => self.inflate(chunk, on),
            State::Trailer { left } => {
                let take = left.min(chunk.len());
                self.skip(chunk, take);
                self.state = if take == left {
                    State::Done
                } else {
                    State::Trailer { left: left - take }
                };
                Ok(())
            }
            State::Done => Err(Stop::Malformed(format!(
                "pack: unexpected data after the trailing checksum, at byte {}",
                self.pos
            ))),
            State::Stopped => {
                *chunk = &[];
                Ok(())
            }
        }
    }

    fn skip(&mut self, chunk: &mut &[u8], n: usize) {
        *chunk = &chunk[n..];
        self.pos += n as u64;
    }

    fn byte(&mut self, chunk: &mut &[u8]) -> Option<u8> {
        let (&b, rest) = chunk.split_first()?;
        *chunk = rest;
        self.pos += 1;
        Some(b)
    }

    /// Checks each field of the pack header as soon as it is complete.
    fn header(&mut self, head: &[u8]) -> Result<(), Stop> {
        if let Some(magic) = head.get(..4)
            && magic != b"PACK"
        {
            return Err(Stop::Malformed(format!(
                "pack: expected a pack (\"PACK\"), found \"{}\"",
                magic.escape_ascii()
            )));
        }
        if let Some(version) = head.get(4..8) {
            let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
            if version != 2 && version != 3 {
                return Err(Stop::Malformed(format!(
                    "pack: unsupported pack version {version} (expected 2 or 3)"
                )));
            }
        }
        if let Some(count) = head.get(8..12) {
            self.count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
            self.next_object()?;
        }
        Ok(())
    }

    /// After the header or an object: the next object's header, or the trailer.
    fn next_object(&mut self) -> Result<(), Stop> {
        if self.index == u64::from(self.count) {
            self.state = State::Trailer { left: OID_LEN };
            return Ok(());
        }
        if self.index >= self.limits.max_objects {
            return Err(Stop::Limit(format!(
                "pack: stopped before object {} of {}: the limit max_objects ({}) was reached",
                self.index + 1,
                self.count,
                self.limits.max_objects
            )));
        }
        self.start = self.pos;
        self.state = State::ObjectHeader {
            bits: 0,
            size: 0,
            shift: 0,
        };
        Ok(())
    }

    fn object_header(
        &mut self,
        b: u8,
        bits: u8,
        size: u64,
        shift: u32,
        on: &mut dyn FnMut(PackEvent<'_>),
    ) -> Result<(), Stop> {
        let (bits, size, shift) = if shift == 0 {
            ((b >> 4) & 7, u64::from(b & 0x0f), 4)
        } else {
            let part = u64::from(b & 0x7f);
            if shift > 63 || (part << shift) >> shift != part {
                return Err(self.malformed("its size does not fit in 64 bits"));
            }
            (bits, size | part << shift, shift + 7)
        };
        if b & 0x80 != 0 {
            self.state = State::ObjectHeader { bits, size, shift };
            return Ok(());
        }
        let Some(kind) = ObjectKind::from_type(bits) else {
            return Err(self.malformed(format_args!("invalid object type {bits}")));
        };
        self.kind = kind;
        self.size = size;
        match kind {
            ObjectKind::OfsDelta => {
                self.state = State::OfsBase {
                    offset: 0,
                    first: true,
                }
            }
            ObjectKind::RefDelta => self.state = State::RefBase { left: OID_LEN },
            _ => self.begin(on),
        }
        Ok(())
    }

    /// git's offset encoding: big-endian 7-bit groups, each continuation adding 1 so that no
    /// offset has two encodings.
    fn ofs_base(
        &mut self,
        b: u8,
        offset: u64,
        first: bool,
        on: &mut dyn FnMut(PackEvent<'_>),
    ) -> Result<(), Stop> {
        let part = u64::from(b & 0x7f);
        let offset = if first {
            part
        } else {
            match offset.checked_add(1) {
                Some(v) if v >> 57 == 0 => (v << 7) | part,
                _ => return Err(self.malformed("its delta base offset does not fit in 64 bits")),
            }
        };
        if b & 0x80 != 0 {
            self.state = State::OfsBase { offset, first: false };
            return Ok(());
        }
        // The base must be an earlier object, and objects start after the pack header.
        if offset == 0 || offset > self.start.saturating_sub(HEADER_LEN as u64) {
            return Err(self.malformed(format_args!(
                "its delta base offset {offset} does not point to an earlier object"
            )));
        }
        self.begin(on);
        Ok(())
    }

    /// The object's header is complete: announce it and start its zlib stream.
    fn begin(&mut self, on: &mut dyn FnMut(PackEvent<'_>)) {
        on(PackEvent::Object {
            index: self.index,
            kind: self.kind,
            size: self.size,
        });
        self.inflater.reset(true);
        self.produced = 0;
        self.state = State::Inflate;
    }

    /// Hands out the first `produced` bytes of the output buffer, up to the object's declared size
    /// and the inflated-bytes limit, whichever comes first. The cut falls at the same byte however
    /// the input was split.
    fn emit(&mut self, produced: usize, on: &mut dyn FnMut(PackEvent<'_>)) -> Result<(), Stop> {
        let to_size = self.size - self.produced;
        let to_limit = self.limits.max_inflated_bytes - self.summary.inflated_bytes;
        let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let give = produced.min(cap(to_size)).min(cap(to_limit));
        if give > 0 {
            on(PackEvent::Data(&self.out[..give]));
            self.produced += give as u64;
            self.summary.inflated_bytes += give as u64;
        }
        if give == produced {
            Ok(())
        } else if to_size <= to_limit {
            Err(self.malformed(format_args!(
                "it inflates to more than the {} bytes its header declares",
                self.size
            )))
        } else {
            Err(Stop::Limit(format!(
                "pack: stopped inside {}: the limit max_inflated_bytes ({}) was reached",
                self.at(),
                self.limits.max_inflated_bytes
            )))
        }
    }

    /// Inflates as much of the current object as `chunk` allows. The zlib stream ends exactly
    /// where the next object starts; `total_in` says where that is.
    fn inflate(&mut self, chunk: &mut &[u8], on: &mut dyn FnMut(PackEvent<'_>)) -> Result<(), Stop> {
        loop {
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self
                .inflater
                .decompress(chunk, &mut self.out, FlushDecompress::None);
            let consumed = (self.inflater.total_in() - in_before) as usize;
            let produced = (self.inflater.total_out() - out_before) as usize;
            self.skip(chunk, consumed.min(chunk.len()));
            // Hand out what inflated even when the stream then failed: the scanner should see
            // as much as there is.
            self.emit(produced, on)?;
            let status = match status {
                Ok(status) => status,
                Err(e) => return Err(self.malformed(format_args!("corrupt zlib stream ({e})"))),
            };
            if status == Status::StreamEnd {
                if self.produced != self.size {
                    return Err(self.malformed(format_args!(
                        "it inflates to {} bytes, but its header declares {}",
                        self.produced, self.size
                    )));
                }
                on(PackEvent::ObjectEnd);
                self.summary.objects += 1;
                self.index += 1;
                return self.next_object();
            }
            if consumed == 0 && produced == 0 {
                // The stream needs more input than this chunk held.
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use flate2::Compression;
    use flate2::write::ZlibEncoder;

    use crate::testgit::git;

    fn git_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        crate::testgit::git_in(dir, args, stdin, &[])
    }

    /// One object as the events showed it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        kind: ObjectKind,
        size: u64,
        data: Vec<u8>,
        ended: bool,
    }

    /// Scans `pack` fed in chunks of the lengths `cuts` yields (0 feeds an empty chunk), checking
    /// that the events come in a well-formed order.
    fn scan(pack: &[u8], limits: Limits, mut cuts: impl FnMut() -> usize) -> (Vec<Seen>, PackSummary) {
        let mut seen: Vec<Seen> = Vec::new();
        let mut on = |event: PackEvent<'_>| match event {
            PackEvent::Object { index, kind, size } => {
                assert!(seen.last().is_none_or(|s| s.ended), "{event:?} inside an object");
                assert_eq!(index, seen.len() as u64);
                seen.push(Seen {
                    kind,
                    size,
                    data: Vec::new(),
                    ended: false,
                });
            }
            PackEvent::Data(data) => {
                let current = seen
                    .last_mut()
                    .filter(|s| !s.ended)
                    .expect("data outside an object");
                assert!(!data.is_empty() && data.len() <= OUT_BUF);
                current.data.extend_from_slice(data);
            }
            PackEvent::ObjectEnd => {
                let current = seen
                    .last_mut()
                    .filter(|s| !s.ended)
                    .expect("end outside an object");
                assert_eq!(current.data.len() as u64, current.size);
                current.ended = true;
            }
        };
        let mut scanner = PackScanner::new(limits);
        let mut rest = pack;
        while !rest.is_empty() {
            let n = cuts().min(rest.len());
            scanner.feed(&rest[..n], &mut on);
            rest = &rest[n..];
        }
        let summary = scanner.finish();
        if summary.error.is_none() {
            assert!(seen.iter().all(|s| s.ended));
        }
        assert_eq!(summary.objects, seen.iter().filter(|s| s.ended).count() as u64);
        let total: usize = seen.iter().map(|s| s.data.len()).sum();
        assert_eq!(summary.inflated_bytes, total as u64);
        (seen, summary)
    }

    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Scans `pack` whole, a byte at a time and at random split points (including empty chunks),
    /// asserting every way gives the same events and summary.
    fn scan_all_ways(pack: &[u8], limits: Limits) -> (Vec<Seen>, PackSummary) {
        let whole = scan(pack, limits, || usize::MAX);
        assert_eq!(scan(pack, limits, || 1), whole, "a byte at a time");
        for (seed, max) in [
            (0x2545_F491_4F6C_DD1D, 7),
            (0x9E37_79B9_7F4A_7C15, 300),
            (7, 70_000),
        ] {
            let mut next = xorshift(seed);
            let got = scan(pack, limits, || (next() % max) as usize);
            assert_eq!(got, whole, "random splits up to {max} bytes (seed {seed:#x})");
        }
        whole
    }

    fn scan_ok(pack: &[u8]) -> Vec<Seen> {
        let (seen, summary) = scan_all_ways(pack, Limits::default());
        assert_eq!((&summary.error, summary.truncated), (&None, false));
        seen
    }

    fn error_of(pack: &[u8]) -> String {
        let (_, summary) = scan_all_ways(pack, Limits::default());
        assert!(!summary.truncated);
        summary.error.expect("an error")
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    // ---- crafted packs --------------------------------------------------------------------------

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A type+size object header.
    fn object_header(bits: u8, size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = (bits << 4) | (size & 0x0f) as u8;
        let mut rest = size >> 4;
        while rest > 0 {
            out.push(b | 0x80);
            b = (rest & 0x7f) as u8;
            rest >>= 7;
        }
        out.push(b);
        out
    }

    /// git's OFS_DELTA offset encoding (pack-objects.c, write_no_reuse_object).
    fn ofs_varint(mut n: u64) -> Vec<u8> {
        let mut out = vec![(n & 0x7f) as u8];
        n >>= 7;
        while n > 0 {
            n -= 1;
            out.push(0x80 | (n & 0x7f) as u8);
            n >>= 7;
        }
        out.reverse();
        out
    }

    fn pack_of(version: u32, count: u32, objects: &[Vec<u8>]) -> Vec<u8> {
        let mut pack = b"PACK".to_vec();
        pack.extend_from_slice(&version.to_be_bytes());
        pack.extend_from_slice(&count.to_be_bytes());
        for object in objects {
            pack.extend_from_slice(object);
        }
        pack.extend_from_slice(&[0xAB; OID_LEN]);
        pack
    }

    fn blob(data: &[u8]) -> Vec<u8> {
        [object_header(3, data.len() as u64), zlib(data)].concat()
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut next = xorshift(42);
        (0..len).map(|_| next() as u8).collect()
    }

    #[test]
    fn no_bytes_and_empty_packs_are_fine() {
        assert_eq!(
            PackScanner::new(Limits::default()).finish(),
            PackSummary::default()
        );
        for version in [2, 3] {
            assert_eq!(scan_ok(&pack_of(version, 0, &[])), vec![]);
        }
    }

    #[test]
    fn crafted_objects_of_every_kind() {
        // A base big enough that the offset back to it needs a two-byte varint.
        let base = noise(300);
        let first = blob(&base);
        let delta_start = (HEADER_LEN + first.len()) as u64;
        let offset = delta_start - HEADER_LEN as u64;
        assert!(offset >= 128);
        let ofs = [object_header(6, 5), ofs_varint(offset), zlib(b"delta")].concat();
        let refd = [object_header(7, 3), vec![0x11; OID_LEN], zlib(b"ref")].concat();
        let commit = [object_header(1, 6), zlib(b"commit")].concat();
        let tree = [object_header(2, 0), zlib(b"")].concat();
        let tag = [object_header(4, 3), zlib(b"tag")].concat();
        let objects = [first, ofs, refd, commit, tree, tag];
        let seen = scan_ok(&pack_of(3, 6, &objects));
        let got: Vec<(ObjectKind, &[u8])> = seen.iter().map(|s| (s.kind, &s.data[..])).collect();
        assert_eq!(
            got,
            vec![
                (ObjectKind::Blob, &base[..]),
                (ObjectKind::OfsDelta, b"delta"),
                (ObjectKind::RefDelta, b"ref"),
                (ObjectKind::Commit, b"commit"),
                (ObjectKind::Tree, b""),
                (ObjectKind::Tag, b"tag"),
            ]
        );

        // One byte further back is the pack header, not an object.
        let beyond = [object_header(6, 5), ofs_varint(offset + 1), zlib(b"delta")].concat();
        let error = error_of(&pack_of(2, 2, &[blob(&base), beyond]));
        assert!(
            error.contains(&format!("object 2 of 2 (at byte {delta_start})")),
            "{error}"
        );
        assert!(error.contains(&format!("offset {}", offset + 1)), "{error}");
        let itself = [object_header(6, 5), ofs_varint(0), zlib(b"delta")].concat();
        assert!(error_of(&pack_of(2, 2, &[blob(&base), itself])).contains("offset 0 does not"));
    }

    #[test]
    fn large_objects_stream_through_a_bounded_buffer() {
        let big = noise(5 * OUT_BUF + 123);
        let seen = scan_ok(&pack_of(2, 2, &[blob(&big), blob(b"after")]));
        assert_eq!(seen[0].data, big);
        assert_eq!(seen[1].data, b"after");
    }

    #[test]
    fn malformed_headers_stop_with_an_error() {
        let ok = blob(b"hello");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"PACX\0\0\0\x02\0\0\0\0".to_vec(),
                "expected a pack (\"PACK\"), found \"PACX\"",
            ),
            (b"0000".to_vec(), "found \"0000\""),
            (pack_of(4, 0, &[]), "unsupported pack version 4"),
            (pack_of(1, 0, &[]), "unsupported pack version 1"),
            (
                pack_of(2, 1, &[[object_header(0, 5), zlib(b"hello")].concat()]),
                "object 1 of 1 (at byte 12): invalid object type 0",
            ),
            (
                pack_of(
                    2,
                    2,
                    &[ok.clone(), [object_header(5, 5), zlib(b"hello")].concat()],
                ),
                "object 2 of 2",
            ),
            (
                pack_of(2, 1, &[[vec![0xB0], vec![0xFF; 9], vec![0x01]].concat()]),
                "its size does not fit in 64 bits",
            ),
            (
                pack_of(2, 1, &[[vec![0x60], vec![0xFF; 9], vec![0x01]].concat()]),
                "its delta base offset does not fit in 64 bits",
            ),
            (
                pack_of(2, 1, &[[object_header(3, 4), zlib(b"hello")].concat()]),
                "it inflates to more than the 4 bytes its header declares",
            ),
            (
                pack_of(2, 1, &[[object_header(3, 6), zlib(b"hello")].concat()]),
                "it inflates to 5 bytes, but its header declares 6",
            ),
            (
                pack_of(2, 1, &[[object_header(3, 5), b"not zlib".to_vec()].concat()]),
                "object 1 of 1 (at byte 12): corrupt zlib stream",
            ),
            (
                [pack_of(2, 1, std::slice::from_ref(&ok)), b"x".to_vec()].concat(),
                "unexpected data after the trailing checksum",
            ),
            // Announcing more objects than follow: the trailer is read as an object header.
            (pack_of(2, 2, std::slice::from_ref(&ok)), "object 2 of 2"),
        ];
        for (pack, want) in cases {
            let error = error_of(&pack);
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                pack.escape_ascii().to_string()
            );
            assert!(error.starts_with("pack: ") && !error.contains('\n'), "{error}");
        }
        // Type 5 is reserved; the error names it.
        let five = pack_of(2, 1, &[[object_header(5, 5), zlib(b"hello")].concat()]);
        assert!(error_of(&five).ends_with("invalid object type 5"));
    }

    #[test]
    fn later_bytes_are_ignored_after_an_error() {
        let mut scanner = PackScanner::new(Limits::default());
        let mut events = 0;
        let mut count = |_: PackEvent<'_>| events += 1;
        scanner.feed(b"PACK\0\0\0\x09", &mut count);
        scanner.feed(&pack_of(2, 1, &[blob(b"hello")]), &mut count);
        let summary = scanner.finish();
        assert_eq!(events, 0);
        assert_eq!(
            summary.error.as_deref(),
            Some("pack: unsupported pack version 9 (expected 2 or 3)")
        );
    }

    #[test]
    fn every_truncation_of_a_pack_is_an_error() {
        let base = noise(40);
        let objects = [
            blob(&base),
            [
                object_header(6, 4),
                ofs_varint(base.len() as u64 + 5),
                zlib(b"abcd"),
            ]
            .concat(),
            [object_header(7, 2), vec![0x22; OID_LEN], zlib(b"xy")].concat(),
        ];
        let pack = pack_of(2, 3, &objects);
        // Sanity: the whole pack is fine, so each error below is about the cut.
        assert_eq!(scan_ok(&pack).len(), 3);
        for len in 1..pack.len() {
            let error = error_of(&pack[..len]);
            let want = if len < HEADER_LEN {
                "inside its 12-byte header"
            } else if len >= pack.len() - OID_LEN {
                "inside its trailing checksum"
            } else {
                "pack: the pack ended inside the "
            };
            assert!(error.contains(want), "cut at {len}: {error}");
        }
    }

    #[test]
    fn limits_stop_scanning_with_truncated() {
        let pack = pack_of(2, 3, &[blob(b"one"), blob(b"two"), blob(b"three")]);
        let limits = |max_objects, max_inflated_bytes| Limits {
            max_objects,
            max_inflated_bytes,
        };

        let (seen, summary) = scan_all_ways(&pack, limits(2, 100));
        assert_eq!((seen.len(), summary.objects, summary.truncated), (2, 2, true));
        assert_eq!(
            summary.error.as_deref(),
            Some("pack: stopped before object 3 of 3: the limit max_objects (2) was reached")
        );
        let (seen, summary) = scan_all_ways(&pack, limits(0, 100));
        assert_eq!((seen.len(), summary.truncated), (0, true));

        let third = HEADER_LEN + blob(b"one").len() + blob(b"two").len();
        let (seen, summary) = scan_all_ways(&pack, limits(3, 8));
        assert_eq!(
            (summary.objects, summary.inflated_bytes, summary.truncated),
            (2, 8, true)
        );
        assert_eq!(seen[2].data, b"th", "the allowed prefix is still scanned");
        assert!(!seen[2].ended);
        let limit = "the limit max_inflated_bytes (8) was reached";
        assert_eq!(
            summary.error,
            Some(format!(
                "pack: stopped inside object 3 of 3 (at byte {third}): {limit}"
            ))
        );

        // Exactly at the limits is not beyond them.
        let (seen, summary) = scan_all_ways(&pack, limits(3, 11));
        assert_eq!((seen.len(), summary.error, summary.truncated), (3, None, false));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same() {
        let seed = pack_of(
            2,
            4,
            &[
                blob(&noise(200)),
                [object_header(6, 4), ofs_varint(100), zlib(b"abcd")].concat(),
                [object_header(7, 2), vec![0x22; OID_LEN], zlib(b"xy")].concat(),
                [object_header(1, 300), zlib(&[b'c'; 300])].concat(),
            ],
        );
        let mut next = xorshift(0xDEAD_BEEF);
        for _ in 0..300 {
            let mut input = seed.clone();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        let end = (at + (next() % 40) as usize).min(input.len());
                        input.drain(at..end);
                    }
                    _ => input.truncate(at.max(1)),
                }
                if input.is_empty() {
                    break;
                }
            }
            scan_all_ways(&input, Limits::default());
        }
    }

    // ---- real git -------------------------------------------------------------------------------

    const SECRET_LINE: &str = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    // Nothing in common with each other, so a delta between the versions must insert each whole.
    const OLD_ONLY: &str = "OLDONLY-7c1f2a secret=q8Zr3pLmW4";
    const NEW_ONLY: &str = "NEWONLY-93be04 password=Vx5tKw2nJ7";

    /// A repository whose main has two commits changing one large file (so packs can hold
    /// deltas) after a first commit of small files and an annotated tag `v1`.
    struct Repo {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    fn big_file(lines: usize, special: &str) -> String {
        let mut text: String = (0..lines)
            .map(|i| format!("line {i}: filler text so that the file is worth a delta\n"))
            .collect();
        text.insert_str(text.len() / 2, &format!("{special}\n"));
        text
    }

    fn repo() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("work");
        git(tmp.path(), &["init", "-q", dir.to_str().unwrap()]);
        std::fs::write(dir.join("README"), "hello\n").unwrap();
        std::fs::create_dir(dir.join("conf")).unwrap();
        std::fs::write(dir.join("conf/aws"), format!("[default]\n{SECRET_LINE}\n")).unwrap();
        git(&dir, &["add", "."]);
        git(&dir, &["commit", "-q", "-m", "first"]);
        git(&dir, &["tag", "-a", "v1", "-m", "release 1"]);
        std::fs::write(dir.join("big.txt"), big_file(400, OLD_ONLY)).unwrap();
        git(&dir, &["add", "big.txt"]);
        git(&dir, &["commit", "-q", "-m", "big"]);
        // Larger than before, so git deltifies the old version against the new one.
        std::fs::write(dir.join("big.txt"), big_file(420, NEW_ONLY)).unwrap();
        git(&dir, &["commit", "-q", "-am", "change big"]);
        Repo { _tmp: tmp, dir }
    }

    impl Repo {
        fn pack(&self, options: &[&str], revs: &str) -> Vec<u8> {
            let mut args = vec!["pack-objects", "--stdout", "-q"];
            args.extend_from_slice(options);
            git_in(&self.dir, &args, revs.as_bytes())
        }

        /// Each object `git rev-list --objects` lists for these revs, with its type and content.
        fn objects(&self, revs: &[&str]) -> Vec<(ObjectKind, Vec<u8>)> {
            let mut args = vec!["rev-list", "--objects"];
            args.extend_from_slice(revs);
            let list = git(&self.dir, &args);
            let mut objects: Vec<_> = list
                .lines()
                .map(|line| {
                    let oid = line.split(' ').next().unwrap();
                    let name = git(&self.dir, &["cat-file", "-t", oid]);
                    let kind = match name.as_str() {
                        "commit" => ObjectKind::Commit,
                        "tree" => ObjectKind::Tree,
                        "blob" => ObjectKind::Blob,
                        "tag" => ObjectKind::Tag,
                        other => panic!("object type {other}"),
                    };
                    (kind, git_in(&self.dir, &["cat-file", &name, oid], b""))
                })
                .collect();
            objects.sort_by_key(|(kind, data)| (format!("{kind:?}"), data.clone()));
            objects
        }
    }

    fn whole(seen: &[Seen]) -> Vec<(ObjectKind, Vec<u8>)> {
        let mut objects: Vec<_> = seen
            .iter()
            .filter(|s| !matches!(s.kind, ObjectKind::OfsDelta | ObjectKind::RefDelta))
            .map(|s| (s.kind, s.data.clone()))
            .collect();
        objects.sort_by_key(|(kind, data)| (format!("{kind:?}"), data.clone()));
        objects
    }

    /// Two varints at the start of delta instructions: the sizes of the base and the result.
    fn delta_sizes(mut data: &[u8]) -> (u64, u64) {
        let mut varint = || {
            let (mut n, mut shift) = (0u64, 0);
            while let Some((&b, rest)) = data.split_first() {
                data = rest;
                n |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            n
        };
        (varint(), varint())
    }

    #[test]
    fn real_pack_without_deltas_inflates_every_object() {
        let r = repo();
        let pack = r.pack(&["--revs", "--window=0"], "main\nv1\n");
        let seen = scan_ok(&pack);
        let got = whole(&seen);
        assert_eq!(got.len(), seen.len(), "no deltas with --window=0");
        assert_eq!(got, r.objects(&["main", "v1"]), "every object, byte for byte");
        assert!(got.iter().any(|(k, _)| *k == ObjectKind::Tag));
        let secret = seen
            .iter()
            .find(|s| contains(&s.data, SECRET_LINE.as_bytes()))
            .expect("the secret line is in some object");
        assert_eq!(secret.kind, ObjectKind::Blob);
    }

    #[test]
    fn real_pack_with_ofs_deltas_shows_their_literal_text() {
        let r = repo();
        let pack = r.pack(&["--revs", "--delta-base-offset"], "main\n");
        let seen = scan_ok(&pack);
        assert_eq!(seen.len(), r.objects(&["main"]).len());
        assert!(seen.iter().all(|s| s.kind != ObjectKind::RefDelta));
        let old_size: u64 = git(&r.dir, &["cat-file", "-s", "main~1:big.txt"])
            .parse()
            .unwrap();
        let delta = seen
            .iter()
            .find(|s| s.kind == ObjectKind::OfsDelta && delta_sizes(&s.data).1 == old_size)
            .expect("the old big.txt is an OFS_DELTA");
        assert!(
            contains(&delta.data, OLD_ONLY.as_bytes()),
            "the line only the old version has is inserted literally by its delta"
        );
        assert!(seen.iter().any(|s| contains(&s.data, NEW_ONLY.as_bytes())));
        assert!(seen.iter().any(|s| contains(&s.data, SECRET_LINE.as_bytes())));
    }

    #[test]
    fn real_pack_with_ref_deltas_and_a_thin_pack() {
        let r = repo();
        let pack = r.pack(&["--revs"], "main\n");
        let seen = scan_ok(&pack);
        assert_eq!(seen.len(), r.objects(&["main"]).len());
        assert!(seen.iter().all(|s| s.kind != ObjectKind::OfsDelta));
        assert!(seen.iter().any(|s| s.kind == ObjectKind::RefDelta));
        assert!(seen.iter().any(|s| contains(&s.data, OLD_ONLY.as_bytes())));

        // What a push of the last commit sends: the new big.txt as a delta against a base the
        // server already has, so the new line is only in the delta's instructions.
        let thin = r.pack(&["--revs", "--thin", "--delta-base-offset"], "main\n^main~1\n");
        let seen = scan_ok(&thin);
        assert_eq!(seen.len(), r.objects(&["main", "^main~1"]).len());
        let new_size: u64 = git(&r.dir, &["cat-file", "-s", "main:big.txt"]).parse().unwrap();
        let delta = seen
            .iter()
            .find(|s| s.kind == ObjectKind::RefDelta)
            .expect("a thin pack's delta against a missing base is a REF_DELTA");
        assert_eq!(delta_sizes(&delta.data).1, new_size);
        assert!(contains(&delta.data, NEW_ONLY.as_bytes()));
    }

    #[test]
    fn real_empty_pack() {
        let r = repo();
        let pack = r.pack(&[], "");
        assert_eq!(scan_ok(&pack), vec![]);
    }

    #[test]
    fn real_pack_corruptions_are_errors() {
        let r = repo();
        let pack = r.pack(&["--revs", "--window=0"], "main\n");
        // Where git itself says the big blob's zlib stream lies.
        let file = r.dir.join("test.pack");
        std::fs::write(&file, &pack).unwrap();
        git(&r.dir, &["index-pack", file.to_str().unwrap()]);
        let idx = r.dir.join("test.idx");
        let verify = git(&r.dir, &["verify-pack", "-v", idx.to_str().unwrap()]);
        let (size_in_pack, offset) = verify
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f.len() >= 5 && f[1] == "blob").then(|| {
                    (
                        f[2].parse::<u64>().unwrap(),
                        f[3].parse::<usize>().unwrap(),
                        f[4].parse::<usize>().unwrap(),
                    )
                })
            })
            .max()
            .map(|(_, in_pack, offset)| (in_pack, offset))
            .unwrap();
        for at in [offset + 4, offset + size_in_pack / 2, offset + size_in_pack - 2] {
            let mut corrupt = pack.clone();
            corrupt[at] ^= 0x55;
            let error = error_of(&corrupt);
            assert!(
                error.contains(&format!("(at byte {offset})")),
                "flipped byte {at}: {error}"
            );
        }

        let mut magic = pack.clone();
        magic[0] = b'K';
        assert!(error_of(&magic).contains("found \"KACK\""));
        let mut version = pack.clone();
        version[7] = 7;
        assert!(error_of(&version).contains("unsupported pack version 7"));
        assert!(error_of(&pack[..pack.len() / 2]).contains("the pack ended inside"));

        // Flipping any byte never panics, and nearly every flip is caught: not those in the
        // trailing checksum, which git verifies and this scanner does not. (A small pack, whole
        // and at random splits: a byte at a time for every flip takes long in a debug build.)
        let pack = r.pack(&["--revs"], "v1\n");
        let mut caught = 0;
        let mut next = xorshift(3);
        for at in 0..pack.len() {
            let mut corrupt = pack.clone();
            corrupt[at] ^= 0x01;
            let (seen, summary) = scan(&corrupt, Limits::default(), || usize::MAX);
            let split = scan(&corrupt, Limits::default(), || (next() % 50) as usize);
            assert_eq!(split, (seen, summary.clone()), "flipped byte {at}");
            caught += usize::from(summary.error.is_some());
        }
        assert!(caught >= pack.len() - OID_LEN - 8, "{caught} of {}", pack.len());
    }
}
