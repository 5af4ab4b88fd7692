//! A streaming scan of a pack: each object's header and inflated bytes as they pass, so a secret
//! scanner sees what a `git push` uploads, including the literal text that delta instructions
//! insert.
//!
//! Packs arrive as chunks split anywhere. The scanner never buffers the pack or an object: it
//! holds a 12-byte header, an entry header, the trailing checksum and one fixed output buffer,
//! whatever the pack's size. It does not resolve deltas (that needs the bases); it checks the
//! trailing checksum as git does. Malformed input stops it with an error naming the object, and
//! later bytes are ignored.
use std::fmt;

use super::{Base, EntryError, EntryHeaderReader, HEADER_LEN, Header, InflateStop, Inflater, PackError};
use crate::object::Checksum;
use crate::oid::{ObjectFormat, Oid};

/// Where scanning stops, so a hostile pack cannot make the scanner run without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Objects scanned before stopping.
    pub max_objects: u64,
    /// Inflated bytes (over all objects) handed out before stopping.
    pub max_inflated_bytes: u64,
}

impl Default for ScanLimits {
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
    Object { index: u64, base: Base, size: u64 },
    /// The next inflated bytes of the current object: its content, or for a delta its raw
    /// instructions, whose insert commands carry the new text literally.
    Data(&'a [u8]),
    /// The current object's zlib stream ended, having inflated to exactly its declared size. Not
    /// sent for an object cut short by an error or a limit.
    ObjectEnd,
}

/// What a whole pack held, once it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// Objects scanned to their end (`ObjectEnd` sent).
    pub objects: u64,
    /// Inflated bytes handed out in `Data` events.
    pub inflated_bytes: u64,
    /// Why scanning stopped early: malformed input, or a limit ([`PackError::is_limit`]).
    pub error: Option<PackError>,
}

impl PackSummary {
    /// Scanning stopped at a limit; the rest of the pack was not scanned.
    pub fn truncated(&self) -> bool {
        self.error.as_ref().is_some_and(PackError::is_limit)
    }
}

enum State {
    Header { buf: [u8; HEADER_LEN], len: usize },
    Entry(EntryHeaderReader),
    Inflate,
    Trailer { buf: [u8; 32], have: usize },
    Done,
    Stopped,
}

/// Scans one pack, fed in chunks.
pub struct PackScanner {
    format: ObjectFormat,
    limits: ScanLimits,
    state: State,
    inflater: Inflater,
    checksum: Option<Checksum>,
    /// Pack bytes consumed so far.
    pos: u64,
    /// Whether any byte arrived: a push with no pack at all (deletes only) is fine.
    seen: bool,
    /// Objects the pack header announced.
    count: u32,
    /// The current object: its index and where it starts.
    index: u64,
    start: u64,
    summary: PackSummary,
}

impl fmt::Debug for PackScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackScanner")
            .field("pos", &self.pos)
            .field("count", &self.count)
            .field("index", &self.index)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl PackScanner {
    pub fn new(format: ObjectFormat, limits: ScanLimits) -> Self {
        Self {
            format,
            limits,
            state: State::Header {
                buf: [0; HEADER_LEN],
                len: 0,
            },
            inflater: Inflater::new(),
            checksum: Some(Checksum::new(format)),
            pos: 0,
            seen: false,
            count: 0,
            index: 0,
            start: 0,
            summary: PackSummary::default(),
        }
    }

    /// Feeds the next bytes of the pack, split anywhere, calling `on` for each event in order.
    pub fn feed(&mut self, mut chunk: &[u8], on: &mut dyn FnMut(PackEvent<'_>)) {
        if chunk.is_empty() || matches!(self.state, State::Stopped) {
            return;
        }
        self.seen = true;
        while !chunk.is_empty() && !matches!(self.state, State::Stopped) {
            let before = chunk;
            // A step consumes bytes of the state it starts in: all but the trailer's are summed.
            let summed = !matches!(self.state, State::Trailer { .. } | State::Done);
            let step = self.step(&mut chunk, on);
            let used = &before[..before.len() - chunk.len()];
            self.pos += used.len() as u64;
            if summed && let Some(c) = self.checksum.as_mut() {
                c.update(used);
            }
            if let Err(e) = step {
                self.summary.error.get_or_insert(e);
                self.state = State::Stopped;
            }
        }
    }

    /// The pack ended (end of the body). Returns what it held.
    pub fn finish(mut self) -> PackSummary {
        if self.summary.error.is_none() && self.seen {
            self.summary.error = match self.state {
                State::Header { len, .. } => Some(PackError::EndedInHeader(len)),
                State::Entry(_) => Some(self.entry_error(EntryError::EndedInHeader)),
                State::Inflate => Some(self.entry_error(EntryError::EndedInZlib)),
                State::Trailer { .. } => Some(PackError::EndedInChecksum),
                State::Done | State::Stopped => None,
            };
        }
        self.summary
    }

    fn entry_error(&self, error: EntryError) -> PackError {
        PackError::Entry {
            index: self.index,
            count: self.count,
            offset: self.start,
            error,
        }
    }

    /// Consumes some of `chunk` (the caller counts and hashes what was consumed).
    fn step(&mut self, chunk: &mut &[u8], on: &mut dyn FnMut(PackEvent<'_>)) -> Result<(), PackError> {
        let len_before = chunk.len();
        match &mut self.state {
            State::Header { buf, len } => {
                let take = (HEADER_LEN - *len).min(chunk.len());
                buf[*len..*len + take].copy_from_slice(&chunk[..take]);
                *len += take;
                *chunk = &chunk[take..];
                if let Some(header) = Header::parse(&buf[..*len])? {
                    self.count = header.count;
                    self.next_object_at(self.pos + take as u64)?;
                }
                Ok(())
            }
            State::Entry(reader) => {
                let Some(header) = reader.feed(chunk, self.start).map_err(|e| self.entry_error(e))? else {
                    return Ok(());
                };
                on(PackEvent::Object {
                    index: self.index,
                    base: header.base,
                    size: header.size,
                });
                self.inflater.start(header.size);
                self.state = State::Inflate;
                Ok(())
            }
            State::Inflate => {
                let left = self.limits.max_inflated_bytes - self.summary.inflated_bytes;
                let before = self.inflater.produced();
                let ended = self
                    .inflater
                    .inflate(chunk, left, &mut |data| on(PackEvent::Data(data)));
                self.summary.inflated_bytes += self.inflater.produced() - before;
                match ended {
                    Ok(false) => Ok(()),
                    Ok(true) => {
                        on(PackEvent::ObjectEnd);
                        self.summary.objects += 1;
                        self.index += 1;
                        // The zlib stream ends exactly where the next entry starts.
                        self.next_object_at(self.pos + (len_before - chunk.len()) as u64)
                    }
                    Err(InflateStop::Entry(e)) => Err(self.entry_error(e)),
                    Err(InflateStop::Limit) => Err(PackError::InflateLimit {
                        index: self.index,
                        count: self.count,
                        offset: self.start,
                        max: self.limits.max_inflated_bytes,
                    }),
                }
            }
            State::Trailer { buf, have } => {
                let want = self.format.raw_len();
                let take = (want - *have).min(chunk.len());
                buf[*have..*have + take].copy_from_slice(&chunk[..take]);
                *have += take;
                *chunk = &chunk[take..];
                if *have == want {
                    let sum = self.checksum.take().map(Checksum::finish);
                    if sum.as_ref().map(Oid::as_bytes) != Some(&buf[..want]) {
                        return Err(PackError::Checksum);
                    }
                    self.state = State::Done;
                }
                Ok(())
            }
            State::Done => Err(PackError::AfterChecksum(self.pos)),
            State::Stopped => {
                *chunk = &[];
                Ok(())
            }
        }
    }

    /// After the header or an object, where the next one starts (`at`): its header, or the
    /// trailer.
    fn next_object_at(&mut self, at: u64) -> Result<(), PackError> {
        if self.index == u64::from(self.count) {
            self.state = State::Trailer {
                buf: [0; 32],
                have: 0,
            };
            return Ok(());
        }
        if self.index >= self.limits.max_objects {
            return Err(PackError::ObjectLimit {
                index: self.index,
                count: self.count,
                max: self.limits.max_objects,
            });
        }
        self.start = at;
        self.state = State::Entry(EntryHeaderReader::new(self.format));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectKind;
    use crate::pack::tests::{blob, entry_header, ofs_varint, pack_of, zlib};
    use crate::testgit::{git, git_in};
    use crate::testutil::{mutate, xorshift};

    const OUT_BUF: usize = 32 * 1024;
    const OID_LEN: usize = 20;

    /// One object as the events showed it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        base: Base,
        size: u64,
        data: Vec<u8>,
        ended: bool,
    }

    impl Seen {
        fn kind(&self) -> Option<ObjectKind> {
            match self.base {
                Base::Whole(kind) => Some(kind),
                _ => None,
            }
        }
    }

    /// Scans `pack` fed in chunks of the lengths `cuts` yields (0 feeds an empty chunk), checking
    /// that the events come in a well-formed order.
    fn scan(pack: &[u8], limits: ScanLimits, mut cuts: impl FnMut() -> usize) -> (Vec<Seen>, PackSummary) {
        let mut seen: Vec<Seen> = Vec::new();
        let mut on = |event: PackEvent<'_>| match event {
            PackEvent::Object { index, base, size } => {
                assert!(seen.last().is_none_or(|s| s.ended), "{event:?} inside an object");
                assert_eq!(index, seen.len() as u64);
                seen.push(Seen {
                    base,
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
        let mut scanner = PackScanner::new(ObjectFormat::Sha1, limits);
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

    /// Scans `pack` whole, a byte at a time and at random split points (including empty chunks),
    /// asserting every way gives the same events and summary.
    fn scan_all_ways(pack: &[u8], limits: ScanLimits) -> (Vec<Seen>, PackSummary) {
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
        let (seen, summary) = scan_all_ways(pack, ScanLimits::default());
        assert_eq!(summary.error, None);
        seen
    }

    fn error_of(pack: &[u8]) -> String {
        let (_, summary) = scan_all_ways(pack, ScanLimits::default());
        assert!(!summary.truncated());
        summary.error.expect("an error").to_string()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut next = xorshift(42);
        (0..len).map(|_| next() as u8).collect()
    }

    // ---- crafted packs --------------------------------------------------------------------------

    #[test]
    fn no_bytes_and_empty_packs_are_fine() {
        let summary = PackScanner::new(ObjectFormat::Sha1, ScanLimits::default()).finish();
        assert_eq!(summary, PackSummary::default());
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
        let ofs = [entry_header(6, 5), ofs_varint(offset), zlib(b"delta")].concat();
        let refd = [entry_header(7, 3), vec![0x11; OID_LEN], zlib(b"ref")].concat();
        let commit = [entry_header(1, 6), zlib(b"commit")].concat();
        let tree = [entry_header(2, 0), zlib(b"")].concat();
        let tag = [entry_header(4, 3), zlib(b"tag")].concat();
        let objects = [first, ofs, refd, commit, tree, tag];
        let seen = scan_ok(&pack_of(3, 6, &objects));
        let got: Vec<(Base, &[u8])> = seen.iter().map(|s| (s.base, &s.data[..])).collect();
        assert_eq!(
            got,
            vec![
                (Base::Whole(ObjectKind::Blob), &base[..]),
                (Base::Ofs(offset), b"delta"),
                (Base::Ref(Oid::sha1([0x11; 20])), b"ref"),
                (Base::Whole(ObjectKind::Commit), b"commit"),
                (Base::Whole(ObjectKind::Tree), b""),
                (Base::Whole(ObjectKind::Tag), b"tag"),
            ]
        );

        // One byte further back is the pack header, not an object.
        let beyond = [entry_header(6, 5), ofs_varint(offset + 1), zlib(b"delta")].concat();
        let error = error_of(&pack_of(2, 2, &[blob(&base), beyond]));
        assert!(
            error.contains(&format!("object 2 of 2 (at byte {delta_start})")),
            "{error}"
        );
        assert!(error.contains(&format!("offset {}", offset + 1)), "{error}");
        let itself = [entry_header(6, 5), ofs_varint(0), zlib(b"delta")].concat();
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
                pack_of(2, 1, &[[entry_header(0, 5), zlib(b"hello")].concat()]),
                "object 1 of 1 (at byte 12): invalid object type 0",
            ),
            (
                pack_of(2, 2, &[ok.clone(), [entry_header(5, 5), zlib(b"hello")].concat()]),
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
                pack_of(2, 1, &[[entry_header(3, 4), zlib(b"hello")].concat()]),
                "it inflates to more than the 4 bytes its header declares",
            ),
            (
                pack_of(2, 1, &[[entry_header(3, 6), zlib(b"hello")].concat()]),
                "it inflates to 5 bytes, but its header declares 6",
            ),
            (
                pack_of(2, 1, &[[entry_header(3, 5), b"not zlib".to_vec()].concat()]),
                "object 1 of 1 (at byte 12): corrupt zlib stream",
            ),
            (
                [pack_of(2, 1, std::slice::from_ref(&ok)), b"x".to_vec()].concat(),
                "unexpected data after the trailing checksum",
            ),
            // Announcing more objects than follow: the trailer is read as an entry header.
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
        let five = pack_of(2, 1, &[[entry_header(5, 5), zlib(b"hello")].concat()]);
        assert!(error_of(&five).ends_with("invalid object type 5"));
    }

    #[test]
    fn later_bytes_are_ignored_after_an_error() {
        let mut scanner = PackScanner::new(ObjectFormat::Sha1, ScanLimits::default());
        let mut events = 0;
        let mut count = |_: PackEvent<'_>| events += 1;
        scanner.feed(b"PACK\0\0\0\x09", &mut count);
        scanner.feed(&pack_of(2, 1, &[blob(b"hello")]), &mut count);
        let summary = scanner.finish();
        assert_eq!(events, 0);
        assert_eq!(summary.error, Some(PackError::Version(9)));
    }

    #[test]
    fn every_truncation_of_a_pack_is_an_error() {
        let base = noise(40);
        let objects = [
            blob(&base),
            [
                entry_header(6, 4),
                ofs_varint(base.len() as u64 + 5),
                zlib(b"abcd"),
            ]
            .concat(),
            [entry_header(7, 2), vec![0x22; OID_LEN], zlib(b"xy")].concat(),
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
                "): the pack ended inside its "
            };
            assert!(error.contains(want), "cut at {len}: {error}");
        }
        // A pack of four bytes is an error, as it is to git (a copy took "PACK" and no more as a
        // pack: it checked the magic alone).
        assert_eq!(
            error_of(b"PACK"),
            "pack: the pack ended inside its 12-byte header, after 4 bytes"
        );
    }

    #[test]
    fn the_trailing_checksum_is_checked() {
        // A copy did not check it: a pack with any trailer passed. git's index-pack refuses it.
        let mut pack = pack_of(2, 1, &[blob(b"hello")]);
        let last = pack.len() - 1;
        pack[last] ^= 1;
        assert!(error_of(&pack).contains("trailing checksum does not match"));
    }

    #[test]
    fn limits_stop_scanning_with_truncated() {
        let pack = pack_of(2, 3, &[blob(b"one"), blob(b"two"), blob(b"three")]);
        let limits = |max_objects, max_inflated_bytes| ScanLimits {
            max_objects,
            max_inflated_bytes,
        };

        let (seen, summary) = scan_all_ways(&pack, limits(2, 100));
        assert_eq!((seen.len(), summary.objects, summary.truncated()), (2, 2, true));
        assert_eq!(
            summary.error.unwrap().to_string(),
            "pack: stopped before object 3 of 3: the limit max_objects (2) was reached"
        );
        let (seen, summary) = scan_all_ways(&pack, limits(0, 100));
        assert_eq!((seen.len(), summary.truncated()), (0, true));

        let third = HEADER_LEN + blob(b"one").len() + blob(b"two").len();
        let (seen, summary) = scan_all_ways(&pack, limits(3, 8));
        assert_eq!(
            (summary.objects, summary.inflated_bytes, summary.truncated()),
            (2, 8, true)
        );
        assert_eq!(seen[2].data, b"th", "the allowed prefix is still scanned");
        assert!(!seen[2].ended);
        assert_eq!(
            summary.error.unwrap().to_string(),
            format!(
                "pack: stopped inside object 3 of 3 (at byte {third}): the limit max_inflated_bytes (8) was reached"
            )
        );

        // Exactly at the limits is not beyond them.
        let (seen, summary) = scan_all_ways(&pack, limits(3, 11));
        assert_eq!((seen.len(), summary.truncated(), summary.error), (3, false, None));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same() {
        let seed = pack_of(
            2,
            4,
            &[
                blob(&noise(200)),
                [entry_header(6, 4), ofs_varint(100), zlib(b"abcd")].concat(),
                [entry_header(7, 2), vec![0x22; OID_LEN], zlib(b"xy")].concat(),
                [entry_header(1, 300), zlib(&[b'c'; 300])].concat(),
            ],
        );
        let mut next = xorshift(0xDEAD_BEEF);
        for _ in 0..300 {
            scan_all_ways(&mutate(&seed, &mut next, 40), ScanLimits::default());
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
        dir: std::path::PathBuf,
    }

    fn big_file(lines: usize, special: &str) -> String {
        let mut text: String = (0..lines)
            .map(|i| format!("line {i}: filler text so that the file is worth a delta\n"))
            .collect();
        text.insert_str(text.len() / 2, &format!("{special}\n"));
        text
    }

    fn repo(format: &str) -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("work");
        let object_format = format!("--object-format={format}");
        git(tmp.path(), &["init", "-q", &object_format, dir.to_str().unwrap()]);
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
            git_in(&self.dir, &args, revs.as_bytes(), &[])
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
                    let kind = ObjectKind::from_name(name.as_bytes()).unwrap();
                    (kind, git_in(&self.dir, &["cat-file", &name, oid], b"", &[]))
                })
                .collect();
            objects.sort_by_key(|(kind, data)| (kind.name(), data.clone()));
            objects
        }
    }

    fn whole(seen: &[Seen]) -> Vec<(ObjectKind, Vec<u8>)> {
        let mut objects: Vec<_> = seen
            .iter()
            .filter_map(|s| Some((s.kind()?, s.data.clone())))
            .collect();
        objects.sort_by_key(|(kind, data)| (kind.name(), data.clone()));
        objects
    }

    /// The size a delta's instructions rebuild.
    fn result_size(delta: &[u8]) -> u64 {
        crate::pack::delta::sizes(delta).unwrap().1
    }

    #[test]
    fn real_pack_without_deltas_inflates_every_object() {
        let r = repo("sha1");
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
        assert_eq!(secret.kind(), Some(ObjectKind::Blob));
    }

    #[test]
    fn real_pack_with_ofs_deltas_shows_their_literal_text() {
        let r = repo("sha1");
        let pack = r.pack(&["--revs", "--delta-base-offset"], "main\n");
        let seen = scan_ok(&pack);
        assert_eq!(seen.len(), r.objects(&["main"]).len());
        assert!(seen.iter().all(|s| !matches!(s.base, Base::Ref(_))));
        let old_size: u64 = git(&r.dir, &["cat-file", "-s", "main~1:big.txt"])
            .parse()
            .unwrap();
        let delta = seen
            .iter()
            .find(|s| matches!(s.base, Base::Ofs(_)) && result_size(&s.data) == old_size)
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
        let r = repo("sha1");
        let pack = r.pack(&["--revs"], "main\n");
        let seen = scan_ok(&pack);
        assert_eq!(seen.len(), r.objects(&["main"]).len());
        assert!(seen.iter().all(|s| !matches!(s.base, Base::Ofs(_))));
        assert!(seen.iter().any(|s| matches!(s.base, Base::Ref(_))));
        assert!(seen.iter().any(|s| contains(&s.data, OLD_ONLY.as_bytes())));

        // What a push of the last commit sends: the new big.txt as a delta against a base the
        // server already has, so the new line is only in the delta's instructions.
        let thin = r.pack(&["--revs", "--thin", "--delta-base-offset"], "main\n^main~1\n");
        let seen = scan_ok(&thin);
        assert_eq!(seen.len(), r.objects(&["main", "^main~1"]).len());
        let new_size: u64 = git(&r.dir, &["cat-file", "-s", "main:big.txt"]).parse().unwrap();
        let delta = seen
            .iter()
            .find(|s| matches!(s.base, Base::Ref(_)))
            .expect("a thin pack's delta against a missing base is a REF_DELTA");
        assert_eq!(result_size(&delta.data), new_size);
        assert!(contains(&delta.data, NEW_ONLY.as_bytes()));
    }

    #[test]
    fn real_sha256_pack() {
        let r = repo("sha256");
        let pack = r.pack(&["--revs"], "main\nv1\n");
        let mut scanner = PackScanner::new(ObjectFormat::Sha256, ScanLimits::default());
        let mut objects = 0;
        scanner.feed(&pack, &mut |e| {
            objects += u64::from(matches!(e, PackEvent::ObjectEnd))
        });
        let summary = scanner.finish();
        assert_eq!(
            (summary.error, summary.objects),
            (None, r.objects(&["main", "v1"]).len() as u64)
        );
        // Read as SHA-1, its 32-byte bases and checksum do not fit.
        let mut wrong = PackScanner::new(ObjectFormat::Sha1, ScanLimits::default());
        wrong.feed(&pack, &mut |_| {});
        assert!(wrong.finish().error.is_some());
    }

    #[test]
    fn real_empty_pack() {
        let r = repo("sha1");
        let pack = r.pack(&[], "");
        assert_eq!(scan_ok(&pack), vec![]);
    }

    #[test]
    fn real_pack_corruptions_are_errors() {
        let r = repo("sha1");
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

        assert!(error_of(&pack[..pack.len() / 2]).contains("the pack ended inside"));

        // Flipping any byte never panics and is always caught, as git catches it: the trailing
        // checksum covers what the structure does not. (A small pack, whole and at random
        // splits: a byte at a time for every flip takes long in a debug build.)
        let pack = r.pack(&["--revs"], "v1\n");
        let mut next = xorshift(3);
        for at in 0..pack.len() {
            let mut corrupt = pack.clone();
            corrupt[at] ^= 0x01;
            let (seen, summary) = scan(&corrupt, ScanLimits::default(), || usize::MAX);
            let split = scan(&corrupt, ScanLimits::default(), || (next() % 50) as usize);
            assert_eq!(split, (seen, summary.clone()), "flipped byte {at}");
            assert!(summary.error.is_some(), "flipped byte {at}");
        }
    }
}
