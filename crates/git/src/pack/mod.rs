//! Packfiles: the header, each entry's header (type and size, an OFS_DELTA's base offset, a
//! REF_DELTA's base id), zlib inflation bounded by the declared size, delta application, and two
//! readers built on them:
//!
//! - [`scan::PackScanner`] streams a pack of any size, inflating each object as it passes and
//!   holding only a fixed buffer (for a secret scanner: it sees what a push uploads, including
//!   the literal text deltas insert);
//! - [`decode::decode`] reads a buffered pack whole, resolves deltas and computes every object's
//!   id, keeping the commits and trees (for a policy: what a push changes).
//!
//! Both check the pack's trailing checksum, as git does. Errors name the object (its number and
//! byte offset) and what was wrong, and nothing panics on hostile bytes.
pub mod decode;
pub mod delta;
pub mod scan;

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

use crate::object::ObjectKind;
use crate::oid::{ObjectFormat, Oid};

/// "PACK", version, object count.
pub const HEADER_LEN: usize = 12;

/// A pack's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    /// Objects the pack holds.
    pub count: u32,
}

impl Header {
    /// Checks each field of a pack header as soon as `prefix` (the pack's first bytes) holds it,
    /// as git's `read_pack_header` does: `Ok(None)` until all twelve bytes are there.
    pub fn parse(prefix: &[u8]) -> Result<Option<Header>, PackError> {
        let word = |at: usize| {
            prefix
                .get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        };
        if let Some(magic) = prefix.get(..4)
            && magic != b"PACK"
        {
            return Err(PackError::NotAPack(magic.escape_ascii().to_string()));
        }
        if let Some(version) = word(4)
            && version != 2
            && version != 3
        {
            return Err(PackError::Version(version));
        }
        Ok(word(4)
            .zip(word(8))
            .map(|(version, count)| Header { version, count }))
    }
}

/// How an entry's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The object itself.
    Whole(ObjectKind),
    /// A delta against the entry this many bytes before this one's start.
    Ofs(u64),
    /// A delta against the object of this id (in the pack, or, in a thin pack, elsewhere).
    Ref(Oid),
}

/// An entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub base: Base,
    /// The inflated size of its data (for a delta: of the delta's instructions).
    pub size: u64,
}

/// What is wrong with one entry of a pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the pack ended inside its header")]
    EndedInHeader,
    #[error("its size does not fit in 64 bits")]
    SizeOverflow,
    #[error("invalid object type {0}")]
    InvalidType(u8),
    #[error("its delta base offset does not fit in 64 bits")]
    OffsetOverflow,
    #[error("its delta base offset {0} does not point to an earlier object")]
    BadOffset(u64),
    #[error("the pack ended inside its zlib stream")]
    EndedInZlib,
    #[error("corrupt zlib stream ({0})")]
    Zlib(String),
    #[error("it inflates to more than the {0} bytes its header declares")]
    Overlong(u64),
    #[error("it inflates to {got} bytes, but its header declares {declared}")]
    Short { got: u64, declared: u64 },
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
    #[error("its base {0} is not in the pack")]
    MissingBase(Oid),
    #[error(
        "its delta chain is longer than {}, more than git ever writes",
        decode::MAX_DELTA_DEPTH
    )]
    ChainTooLong,
}

/// Why a pack could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("pack: expected a pack (\"PACK\"), found \"{0}\"")]
    NotAPack(String),
    #[error("pack: unsupported pack version {0} (expected 2 or 3)")]
    Version(u32),
    #[error("pack: the pack ended inside its {HEADER_LEN}-byte header, after {0} bytes")]
    EndedInHeader(usize),
    #[error("pack: object {} (at byte {offset}): {error}", At(*.index, *.count))]
    Entry {
        /// From 0.
        index: u64,
        count: u32,
        offset: u64,
        error: EntryError,
    },
    #[error("pack: {} bytes follow the last of its {count} objects, before the trailing checksum", .extra)]
    Trailing { extra: u64, count: u32 },
    #[error("pack: the pack ended inside its trailing checksum")]
    EndedInChecksum,
    #[error("pack: the pack is too short to hold its trailing checksum")]
    TooShort,
    #[error(
        "pack: the pack's trailing checksum does not match its content: the pack is corrupt or truncated"
    )]
    Checksum,
    #[error("pack: unexpected data after the trailing checksum, at byte {0}")]
    AfterChecksum(u64),
    #[error("pack: the pack holds {count} objects, more than the limit max_objects ({max})")]
    TooManyObjects { count: u32, max: u64 },
    #[error("pack: stopped before object {}: the limit max_objects ({max}) was reached", At(*.index, *.count))]
    ObjectLimit { index: u64, count: u32, max: u64 },
    #[error(
        "pack: stopped inside object {} (at byte {offset}): the limit max_inflated_bytes ({max}) was reached",
        At(*.index, *.count)
    )]
    InflateLimit {
        index: u64,
        count: u32,
        offset: u64,
        max: u64,
    },
    #[error(
        "pack: object {} (at byte {offset}) needs {size} bytes in memory, more than the limit max_object_bytes ({max})",
        At(*.index, *.count)
    )]
    ObjectTooLarge {
        index: u64,
        count: u32,
        offset: u64,
        size: u64,
        max: usize,
    },
    #[error(
        "pack: the commits and trees of the pack inflate to more than the limit max_inflated_bytes ({max}), at object {}",
        At(*.index, *.count)
    )]
    KeptLimit { index: u64, count: u32, max: u64 },
    #[error("pack: decoding took longer than its deadline ({done} of its {count} objects were read)")]
    Deadline { done: u64, count: u32 },
    #[error("pack: {kind} {id} is malformed: {error}", kind = .kind.name())]
    BadObject {
        kind: ObjectKind,
        id: Oid,
        error: crate::object::ObjectError,
    },
}

impl PackError {
    /// Whether reading stopped at a limit of the reader's, not at something wrong in the pack.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            PackError::ObjectLimit { .. }
                | PackError::InflateLimit { .. }
                | PackError::TooManyObjects { .. }
                | PackError::ObjectTooLarge { .. }
                | PackError::KeptLimit { .. }
                | PackError::Deadline { .. }
        )
    }
}

/// "object 2 of 3", counting from 1.
struct At(u64, u32);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.0 + 1, self.1)
    }
}

#[derive(Debug, Clone, Copy)]
enum HeaderState {
    /// The type+size varint; `shift` is 0 before its first byte.
    TypeSize { bits: u8, size: u64, shift: u32 },
    /// An OFS_DELTA's base offset varint.
    Offset { size: u64, offset: u64, first: bool },
    /// A REF_DELTA's base id.
    RefBase { size: u64, have: usize },
}

/// Reads one entry header, fed bytes as they come (split anywhere).
#[derive(Debug, Clone)]
pub struct EntryHeaderReader {
    format: ObjectFormat,
    state: HeaderState,
    base: [u8; 32],
}

impl EntryHeaderReader {
    pub fn new(format: ObjectFormat) -> Self {
        Self {
            format,
            state: HeaderState::TypeSize {
                bits: 0,
                size: 0,
                shift: 0,
            },
            base: [0; 32],
        }
    }

    /// Takes header bytes from the front of `input`: the header once it is whole, `Ok(None)`
    /// when `input` ran out first. The OFS_DELTA offset is checked against `start` (where the
    /// entry starts): the base must be an earlier object, after the pack header.
    pub fn feed(&mut self, input: &mut &[u8], start: u64) -> Result<Option<EntryHeader>, EntryError> {
        loop {
            if let HeaderState::RefBase { size, have } = self.state {
                let want = self.format.raw_len();
                let n = (want - have).min(input.len());
                self.base[have..have + n].copy_from_slice(&input[..n]);
                *input = &input[n..];
                if have + n < want {
                    self.state = HeaderState::RefBase { size, have: have + n };
                    return Ok(None);
                }
                let id = Oid::from_bytes(self.format, &self.base[..want]).expect("the format's length");
                return Ok(Some(EntryHeader {
                    base: Base::Ref(id),
                    size,
                }));
            }
            let Some((&b, rest)) = input.split_first() else {
                return Ok(None);
            };
            *input = rest;
            match self.state {
                HeaderState::TypeSize { bits, size, shift } => {
                    let (bits, size, shift) = if shift == 0 {
                        ((b >> 4) & 7, u64::from(b & 0x0f), 4)
                    } else {
                        let part = u64::from(b & 0x7f);
                        if shift > 63 || (part << shift) >> shift != part {
                            return Err(EntryError::SizeOverflow);
                        }
                        (bits, size | part << shift, shift + 7)
                    };
                    if b & 0x80 != 0 {
                        self.state = HeaderState::TypeSize { bits, size, shift };
                        continue;
                    }
                    let kind = match bits {
                        1 => ObjectKind::Commit,
                        2 => ObjectKind::Tree,
                        3 => ObjectKind::Blob,
                        4 => ObjectKind::Tag,
                        6 => {
                            self.state = HeaderState::Offset {
                                size,
                                offset: 0,
                                first: true,
                            };
                            continue;
                        }
                        7 => {
                            self.state = HeaderState::RefBase { size, have: 0 };
                            continue;
                        }
                        _ => return Err(EntryError::InvalidType(bits)),
                    };
                    return Ok(Some(EntryHeader {
                        base: Base::Whole(kind),
                        size,
                    }));
                }
                HeaderState::Offset { size, offset, first } => {
                    // git's offset encoding: big-endian 7-bit groups, each continuation adding 1
                    // so that no offset has two encodings.
                    let part = u64::from(b & 0x7f);
                    let offset = if first {
                        part
                    } else {
                        match offset.checked_add(1) {
                            Some(v) if v >> 57 == 0 => (v << 7) | part,
                            _ => return Err(EntryError::OffsetOverflow),
                        }
                    };
                    if b & 0x80 != 0 {
                        self.state = HeaderState::Offset {
                            size,
                            offset,
                            first: false,
                        };
                        continue;
                    }
                    if offset == 0 || offset > start.saturating_sub(HEADER_LEN as u64) {
                        return Err(EntryError::BadOffset(offset));
                    }
                    return Ok(Some(EntryHeader {
                        base: Base::Ofs(offset),
                        size,
                    }));
                }
                HeaderState::RefBase { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// Inflated bytes per zlib call.
const OUT_BUF: usize = 32 * 1024;

/// Why inflating stopped before the object's end.
#[derive(Debug)]
pub(crate) enum InflateStop {
    Entry(EntryError),
    /// The caller's limit on inflated bytes.
    Limit,
}

/// Inflates one entry's zlib stream at a time, which must yield exactly its declared size.
pub(crate) struct Inflater {
    z: Decompress,
    out: Box<[u8]>,
    size: u64,
    produced: u64,
}

impl Inflater {
    pub(crate) fn new() -> Self {
        Self {
            z: Decompress::new(true),
            out: vec![0; OUT_BUF].into_boxed_slice(),
            size: 0,
            produced: 0,
        }
    }

    /// A new stream, of an entry that declares `size` bytes.
    pub(crate) fn start(&mut self, size: u64) {
        self.z.reset(true);
        self.size = size;
        self.produced = 0;
    }

    /// Inflated bytes handed out for the current entry.
    pub(crate) fn produced(&self) -> u64 {
        self.produced
    }

    /// Inflates what `input` holds of the stream (advancing it past what zlib read), handing at
    /// most `limit` bytes to `sink`: `Ok(true)` at the stream's end (where the next entry starts),
    /// `Ok(false)` when it needs more input. The cut at a limit falls at the same byte however
    /// the input was split; what inflated before an error is handed out first.
    pub(crate) fn inflate(
        &mut self,
        input: &mut &[u8],
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, InflateStop> {
        let mut given = 0u64;
        loop {
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let status = self.z.decompress(input, &mut self.out, FlushDecompress::None);
            let consumed = (self.z.total_in() - in_before) as usize;
            let produced = (self.z.total_out() - out_before) as usize;
            *input = &input[consumed.min(input.len())..];
            let to_size = self.size - self.produced;
            let to_limit = limit - given;
            let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            let give = produced.min(cap(to_size)).min(cap(to_limit));
            if give > 0 {
                sink(&self.out[..give]);
                self.produced += give as u64;
                given += give as u64;
            }
            if give < produced {
                return Err(if to_size <= to_limit {
                    InflateStop::Entry(EntryError::Overlong(self.size))
                } else {
                    InflateStop::Limit
                });
            }
            match status {
                Err(e) => return Err(InflateStop::Entry(EntryError::Zlib(e.to_string()))),
                Ok(Status::StreamEnd) if self.produced != self.size => {
                    return Err(InflateStop::Entry(EntryError::Short {
                        got: self.produced,
                        declared: self.size,
                    }));
                }
                Ok(Status::StreamEnd) => return Ok(true),
                Ok(_) if consumed == 0 && produced == 0 => return Ok(false),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::ZlibEncoder;

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A type+size entry header.
    pub(crate) fn entry_header(bits: u8, size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut byte = (bits << 4) | (size & 0x0f) as u8;
        let mut size = size >> 4;
        while size > 0 {
            out.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        out.push(byte);
        out
    }

    /// git's OFS_DELTA offset encoding.
    pub(crate) fn ofs_varint(mut offset: u64) -> Vec<u8> {
        let mut out = vec![(offset & 0x7f) as u8];
        offset >>= 7;
        while offset > 0 {
            offset -= 1;
            out.push(0x80 | (offset & 0x7f) as u8);
            offset >>= 7;
        }
        out.reverse();
        out
    }

    /// A pack of `objects` (raw entries), announcing `count` of them, with a correct checksum.
    pub(crate) fn pack_of(version: u32, count: u32, objects: &[Vec<u8>]) -> Vec<u8> {
        let mut pack = b"PACK".to_vec();
        pack.extend_from_slice(&version.to_be_bytes());
        pack.extend_from_slice(&count.to_be_bytes());
        for o in objects {
            pack.extend_from_slice(o);
        }
        let mut sum = crate::object::Checksum::new(ObjectFormat::Sha1);
        sum.update(&pack);
        pack.extend_from_slice(sum.finish().as_bytes());
        pack
    }

    pub(crate) fn blob(data: &[u8]) -> Vec<u8> {
        [entry_header(3, data.len() as u64), zlib(data)].concat()
    }

    fn header_of(bytes: &[u8], start: u64) -> Result<Option<EntryHeader>, EntryError> {
        let mut r = EntryHeaderReader::new(ObjectFormat::Sha1);
        let whole = r.clone().feed(&mut &bytes[..], start);
        for b in bytes.chunks(1) {
            match r.feed(&mut &b[..], start) {
                Ok(None) => {}
                other => {
                    assert_eq!(other, whole, "a byte at a time");
                    return other;
                }
            }
        }
        whole
    }

    #[test]
    fn headers_are_checked_field_by_field() {
        assert_eq!(Header::parse(b"PA"), Ok(None));
        assert_eq!(Header::parse(b"PACK\0\0\0\x02\0\0"), Ok(None));
        assert_eq!(
            Header::parse(b"PACK\0\0\0\x02\0\0\0\x05"),
            Ok(Some(Header { version: 2, count: 5 }))
        );
        assert_eq!(Header::parse(b"PUCK"), Err(PackError::NotAPack("PUCK".into())));
        assert_eq!(Header::parse(b"PACK\0\0\0\x04"), Err(PackError::Version(4)));
    }

    #[test]
    fn entry_headers_decode_as_git_writes_them() {
        let h = header_of(&entry_header(1, 300), 12).unwrap().unwrap();
        assert_eq!(
            h,
            EntryHeader {
                base: Base::Whole(ObjectKind::Commit),
                size: 300
            }
        );
        for back in [1, 127, 128, 16511, 16512, 1 << 40] {
            let bytes = [entry_header(6, 4), ofs_varint(back)].concat();
            assert_eq!(
                header_of(&bytes, back + 12).unwrap().unwrap().base,
                Base::Ofs(back),
                "{back}"
            );
            assert_eq!(header_of(&bytes, back + 11), Err(EntryError::BadOffset(back)));
        }
        let bytes = [entry_header(7, 2), vec![0x22; 20]].concat();
        assert_eq!(
            header_of(&bytes, 12).unwrap().unwrap().base,
            Base::Ref(Oid::sha1([0x22; 20]))
        );
        assert_eq!(header_of(&bytes[..10], 12), Ok(None));
        assert_eq!(
            header_of(&entry_header(5, 5), 12),
            Err(EntryError::InvalidType(5))
        );
        assert_eq!(header_of(&[0x90; 11], 12), Err(EntryError::SizeOverflow));
        assert_eq!(
            header_of(&[&[0x60][..], &[0xff; 10]].concat(), 1 << 62),
            Err(EntryError::OffsetOverflow)
        );
    }
}
