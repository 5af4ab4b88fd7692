//! Ref advertisements: the answer to `GET …/info/refs?service=git-…` (smart HTTP: a
//! `# service=` line and a flush-pkt, then protocol v0/v1 refs or a v2 capability list) and the
//! answer to a v2 `ls-refs` command, read as they stream; and the rewrite of a receive-pack
//! advertisement's capabilities ([`PushAdvert`]).
//!
//! v0/v1 refs are read as git's `get_remote_heads` reads them: the first line carries the
//! capabilities after a NUL (an empty repository advertises them on a `capabilities^{}` line
//! with the zero id), then `<oid> SP <ref>` lines (`.have` lines name alternates' objects), then
//! `shallow <oid>` lines, then a flush-pkt. Capabilities on later lines are not read (git warns
//! and ignores them). `ERR <message>` anywhere is the server refusing.
//!
//! It holds at most one pkt-line and [`crate::bounded::MAX_ITEMS`] refs, symrefs and capabilities (more are
//! counted), and never panics: malformed input stops it with an error.
use std::ops::Range;

use crate::bounded::keep;
use crate::caps::{Capabilities, UnknownObjectFormat};
use crate::oid::{ObjectFormat, Oid, OidError, preview};
use crate::pktline::{self, Pkt, PktError, PktReader, Truncated, chomp};

/// What a ref advertisement or an `ls-refs` answer announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    /// 0 (refs with capabilities on the first line), 1 (the same after `version 1`) or 2 (a
    /// capability list, or an `ls-refs` answer).
    pub version: u8,
    /// From the `# service=…` line smart HTTP puts first.
    pub service: Option<String>,
    /// (id, ref name); a peeled tag comes as a second entry named `<tag>^{}`.
    pub refs: Vec<(Oid, String)>,
    /// (ref, target) from v0 `symref=` capabilities and v2 `symref-target:` attributes.
    pub symrefs: Vec<(String, String)>,
    /// v0/v1: the first line's capabilities; v2: one line each.
    pub capabilities: Vec<String>,
    /// v0/v1: where the line carrying the capabilities lies in the body.
    pub caps_line: Option<CapsLine>,
    /// Items read beyond [`crate::bounded::MAX_ITEMS`] and not kept.
    pub omitted: u64,
    pub error: Option<AdvertError>,
}

/// The first ref line of a v0/v1 advertisement, which carries the capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsLine {
    /// Its pkt-line's bytes in the body, length digits included.
    pub at: Range<u64>,
    /// The line before the NUL (`<oid> <ref>`).
    pub line: Vec<u8>,
    pub caps: Capabilities,
}

/// Why an advertisement could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error(transparent)]
    Pkt(#[from] PktError),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("expected a flush-pkt after the service line, found {0}")]
    NoServiceFlush(String),
    #[error("malformed ref line {0} (expected \"<oid> <refname>\"): {1}")]
    Id(String, OidError),
    #[error("malformed ref line {0} (expected \"<oid> <refname>\")")]
    Malformed(String),
    #[error("unexpected line {0}")]
    Unexpected(String),
    #[error(transparent)]
    UnknownFormat(#[from] UnknownObjectFormat),
    #[error("unexpected {0}")]
    UnexpectedPkt(&'static str),
    #[error("data after the final flush-pkt")]
    AfterEnd,
    #[error(transparent)]
    Truncated(#[from] Truncated),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    /// After `# service=…`: a flush-pkt comes next.
    ServiceFlush,
    /// The first line after the service header, which may announce the version.
    Version,
    V2Capabilities,
    FirstRef,
    Refs,
    Shallow,
    LsRefs,
    End,
}

/// Reads an advertisement as it streams.
#[derive(Debug)]
pub struct AdvertReader {
    pkts: PktReader,
    phase: Phase,
    format: Option<ObjectFormat>,
    seen: bool,
    out: Advertised,
}

impl Default for AdvertReader {
    fn default() -> Self {
        Self::new()
    }
}

impl AdvertReader {
    /// For the answer to `info/refs` (or a v0 advertisement without the smart-HTTP header).
    pub fn new() -> Self {
        Self::starting(Phase::Start)
    }

    /// For the answer to a v2 `ls-refs` command: `<oid|unborn> SP <ref> *(SP <attribute>)`
    /// lines and a flush-pkt.
    pub fn ls_refs() -> Self {
        let mut r = Self::starting(Phase::LsRefs);
        r.out.version = 2;
        r
    }

    fn starting(phase: Phase) -> Self {
        Self {
            pkts: PktReader::new(),
            phase,
            format: None,
            seen: false,
            out: Advertised::default(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.seen |= !chunk.is_empty();
        while self.out.error.is_none() {
            let (pos, len) = (self.pkts.position(), chunk.len());
            let step = match self.pkts.next(&mut chunk) {
                Ok(Some(pkt)) => {
                    let end = pos + (len - chunk.len()) as u64;
                    let at = match pkt {
                        Pkt::Data(d) => end - 4 - d.len() as u64..end,
                        _ => end - 4..end,
                    };
                    step(&mut self.phase, &mut self.format, pkt, at, &mut self.out)
                }
                Ok(None) => return,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = step {
                self.out.error = Some(e);
            }
        }
    }

    /// What it read so far.
    pub fn advertised(&self) -> &Advertised {
        &self.out
    }

    pub fn error(&self) -> Option<&AdvertError> {
        self.out.error.as_ref()
    }

    /// The body ended.
    pub fn finish(mut self) -> Advertised {
        if self.out.error.is_none() && self.seen {
            self.out.error = self.pkts.end(self.phase == Phase::End).err().map(Into::into);
        }
        self.out
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn step(
    phase: &mut Phase,
    format: &mut Option<ObjectFormat>,
    pkt: Pkt<'_>,
    at: Range<u64>,
    out: &mut Advertised,
) -> Result<(), AdvertError> {
    use Phase::*;
    let line = match pkt {
        Pkt::Data(line) => chomp(line),
        Pkt::Flush => {
            *phase = match *phase {
                ServiceFlush => Version,
                End => return Err(AdvertError::AfterEnd),
                _ => End,
            };
            return Ok(());
        }
        other => return Err(AdvertError::UnexpectedPkt(other.name())),
    };
    if let Some(message) = line.strip_prefix(b"ERR ") {
        return Err(AdvertError::Refused(text(message)));
    }
    match *phase {
        Start if line.starts_with(b"# service=") => {
            out.service = Some(text(&line[b"# service=".len()..]));
            *phase = ServiceFlush;
            return Ok(());
        }
        ServiceFlush => return Err(AdvertError::NoServiceFlush(preview(line))),
        End => return Err(AdvertError::AfterEnd),
        Start | Version => {
            if line == b"version 2" {
                out.version = 2;
                *phase = V2Capabilities;
                return Ok(());
            }
            *phase = FirstRef;
            if line == b"version 1" {
                out.version = 1;
                return Ok(());
            }
        }
        _ => {}
    }
    match *phase {
        V2Capabilities => {
            keep(&mut out.capabilities, &mut out.omitted, text(line));
            Ok(())
        }
        FirstRef => first_ref(phase, format, line, at, out),
        // git reads later lines as C strings: what follows a NUL (capabilities sent again) is
        // not read.
        Refs | Shallow => {
            let line = line.split(|&b| b == 0).next().unwrap_or_default();
            if *phase == Shallow {
                return shallow(*format, line);
            }
            if !v0_ref(*format, line, out)? {
                *phase = Shallow;
                shallow(*format, line)?;
            }
            Ok(())
        }
        LsRefs => ls_ref(line, out),
        Start | ServiceFlush | Version | End => unreachable!("handled above"),
    }
}

/// The first line: its capabilities, then a ref, the placeholder of an empty repository, or a
/// shallow line.
fn first_ref(
    phase: &mut Phase,
    format: &mut Option<ObjectFormat>,
    line: &[u8],
    at: Range<u64>,
    out: &mut Advertised,
) -> Result<(), AdvertError> {
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => {
            let caps = Capabilities::parse(&line[nul + 1..]);
            *format = Some(caps.object_format()?.unwrap_or(ObjectFormat::Sha1));
            for word in caps.iter() {
                let word = text(word);
                if let Some((from, to)) = word.strip_prefix("symref=").and_then(|s| s.split_once(':')) {
                    keep(
                        &mut out.symrefs,
                        &mut out.omitted,
                        (from.to_owned(), to.to_owned()),
                    );
                }
                keep(&mut out.capabilities, &mut out.omitted, word);
            }
            out.caps_line = Some(CapsLine {
                at,
                line: line[..nul].to_vec(),
                caps,
            });
            &line[..nul]
        }
        None => line,
    };
    *phase = Phase::Refs;
    if let Some((id, b"capabilities^{}")) = split_ref(*format, line)?
        && id.is_zero()
    {
        *phase = Phase::Shallow;
        return Ok(());
    }
    if !v0_ref(*format, line, out)? {
        *phase = Phase::Shallow;
        shallow(*format, line)?;
    }
    Ok(())
}

/// `<oid> SP <rest>`, when the line starts with an id and a space.
fn split_ref(format: Option<ObjectFormat>, line: &[u8]) -> Result<Option<(Oid, &[u8])>, AdvertError> {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    if line.starts_with(b"shallow ") {
        return Ok(None);
    }
    let id = match format {
        Some(f) => Oid::from_hex_in(f, &line[..sp]),
        None => Oid::from_hex(&line[..sp]),
    }
    .map_err(|e| AdvertError::Id(preview(line), e))?;
    Ok(Some((id, &line[sp + 1..])))
}

/// A v0 ref line; `false` when the line is not one (it may be a shallow line).
fn v0_ref(format: Option<ObjectFormat>, line: &[u8], out: &mut Advertised) -> Result<bool, AdvertError> {
    let Some((id, name)) = split_ref(format, line)? else {
        return Ok(false);
    };
    match name {
        // Objects of alternates: not refs.
        b".have" => {}
        b"capabilities^{}" => return Err(AdvertError::Unexpected(preview(line))),
        b"" => return Err(AdvertError::Malformed(preview(line))),
        name => keep(&mut out.refs, &mut out.omitted, (id, text(name))),
    }
    Ok(true)
}

fn shallow(format: Option<ObjectFormat>, line: &[u8]) -> Result<(), AdvertError> {
    let Some(hex) = line.strip_prefix(b"shallow ") else {
        return Err(AdvertError::Unexpected(preview(line)));
    };
    match format {
        Some(f) => Oid::from_hex_in(f, hex),
        None => Oid::from_hex(hex),
    }
    .map_err(|e| AdvertError::Id(preview(line), e))?;
    Ok(())
}

/// `<oid|unborn> SP <ref> *(SP <attribute>)` of an `ls-refs` answer.
fn ls_ref(line: &[u8], out: &mut Advertised) -> Result<(), AdvertError> {
    let mut words = line.split(|&b| b == b' ');
    let first = words.next().unwrap_or_default();
    let name = match words.next() {
        Some(name) if !name.is_empty() => text(name),
        _ => return Err(AdvertError::Malformed(preview(line))),
    };
    let parse = |hex: &[u8]| Oid::from_hex(hex).map_err(|e| AdvertError::Id(preview(line), e));
    let id = if first == b"unborn" {
        None
    } else {
        Some(parse(first)?)
    };
    let mut peeled = None;
    for attr in words {
        if let Some(target) = attr.strip_prefix(b"symref-target:") {
            keep(&mut out.symrefs, &mut out.omitted, (name.clone(), text(target)));
        } else if let Some(hex) = attr.strip_prefix(b"peeled:") {
            peeled = Some(parse(hex)?);
        }
    }
    if let Some(id) = id {
        let tag = format!("{name}^{{}}");
        keep(&mut out.refs, &mut out.omitted, (id, name));
        if let Some(peeled) = peeled {
            keep(&mut out.refs, &mut out.omitted, (peeled, tag));
        }
    }
    Ok(())
}

/// Rewrites the capabilities of a receive-pack advertisement as it streams by (see
/// [`Capabilities::rewrite_for_push`]): holds bytes only until the line carrying them has been
/// read (at most one pkt-line past the service header), then passes everything through.
/// Anything it cannot read passes unchanged.
#[derive(Debug)]
pub struct PushAdvert {
    no_thin: bool,
    reader: AdvertReader,
    held: Vec<u8>,
    done: bool,
}

impl PushAdvert {
    /// The most it holds before giving up and passing bytes on unchanged.
    const MAX_HELD: usize = 2 * 65536;

    /// `no_thin`: add `no-thin` (a policy that reads pushed trees needs whole packs).
    pub fn new(no_thin: bool) -> Self {
        Self {
            no_thin,
            reader: AdvertReader::new(),
            held: Vec::new(),
            done: false,
        }
    }

    /// The bytes to send for `chunk` (fewer, held back, or more, released); `end` at the body's
    /// end.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        if self.done {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        self.reader.feed(chunk);
        if let Some(line) = &self.reader.advertised().caps_line {
            self.done = true;
            let mut caps = line.caps.clone();
            if !caps.rewrite_for_push(self.no_thin) {
                return std::mem::take(&mut self.held);
            }
            let (start, stop) = (line.at.start as usize, line.at.end as usize);
            let mut payload = line.line.clone();
            payload.push(0);
            payload.extend_from_slice(&caps.render());
            payload.push(b'\n');
            let mut out = self.held[..start].to_vec();
            if pktline::write(&mut out, &payload).is_err() {
                return std::mem::take(&mut self.held);
            }
            out.extend_from_slice(&self.held[stop..]);
            self.held = Vec::new();
            return out;
        }
        if end || self.held.len() >= Self::MAX_HELD || self.reader.error().is_some() {
            self.done = true;
            return std::mem::take(&mut self.held);
        }
        Vec::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{A, B, Z, pieces, pkts, split_all_ways};

    fn oid(hex: &str) -> Oid {
        hex.parse().unwrap()
    }

    pub(crate) fn read_with(body: &[u8], new: fn() -> AdvertReader) -> Advertised {
        split_all_ways(body, |cuts| {
            let mut r = new();
            pieces(body, cuts).for_each(|piece| r.feed(piece));
            r.finish()
        })
    }

    fn read(body: &[u8]) -> Advertised {
        read_with(body, AdvertReader::new)
    }

    #[test]
    fn v0_refs_symrefs_and_capabilities() {
        let body = pkts(&[
            "# service=git-upload-pack\n".to_owned(),
            "0000".into(),
            format!("{A} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/2\n"),
            format!("{A} refs/heads/main\0ignored-cap\n"),
            format!("{B} .have\n"),
            format!("{B} refs/tags/v1\n"),
            format!("{A} refs/tags/v1^{{}}\n"),
            format!("shallow {B}\n"),
            "0000".into(),
        ]);
        let a = read(&body);
        assert_eq!(a.error, None);
        assert_eq!((a.version, a.service.as_deref()), (0, Some("git-upload-pack")));
        assert_eq!(
            a.refs,
            vec![
                (oid(A), "HEAD".to_owned()),
                (oid(A), "refs/heads/main".to_owned()),
                (oid(B), "refs/tags/v1".to_owned()),
                (oid(A), "refs/tags/v1^{}".to_owned()),
            ]
        );
        assert_eq!(a.symrefs, vec![("HEAD".to_owned(), "refs/heads/main".to_owned())]);
        // Capabilities on a later line are not read, as git ignores them (a copy took them).
        assert_eq!(
            a.capabilities,
            vec!["multi_ack", "symref=HEAD:refs/heads/main", "agent=git/2"]
        );
        let line = a.caps_line.unwrap();
        assert_eq!(
            &body[line.at.start as usize..line.at.end as usize],
            &pkts(&[&body_line(&body)])[..]
        );
    }

    /// The third pkt-line of `body` (after the service line and its flush), as text.
    fn body_line(body: &[u8]) -> String {
        let start = 4 + 26 + 4;
        let len = usize::from_str_radix(std::str::from_utf8(&body[start..start + 4]).unwrap(), 16).unwrap();
        String::from_utf8(body[start + 4..start + len].to_vec()).unwrap()
    }

    #[test]
    fn ls_refs_answer_with_symrefs_peeled_tags_and_unborn() {
        let body = pkts(&[
            format!("{A} HEAD symref-target:refs/heads/main\n"),
            format!("{A} refs/heads/main\n"),
            format!("{B} refs/tags/v1 peeled:{A}\n"),
            "unborn refs/heads/none symref-target:refs/heads/x\n".into(),
            "0000".into(),
        ]);
        let r = read_with(&body, AdvertReader::ls_refs);
        assert_eq!(r.error, None);
        assert_eq!(r.version, 2);
        assert_eq!(
            r.refs,
            vec![
                (oid(A), "HEAD".to_owned()),
                (oid(A), "refs/heads/main".to_owned()),
                (oid(B), "refs/tags/v1".to_owned()),
                (oid(A), "refs/tags/v1^{}".to_owned()),
            ]
        );
        assert_eq!(
            r.symrefs,
            vec![
                ("HEAD".to_owned(), "refs/heads/main".to_owned()),
                ("refs/heads/none".to_owned(), "refs/heads/x".to_owned())
            ]
        );
        // An empty ls-refs answer is just a flush-pkt.
        let r = read_with(b"0000", AdvertReader::ls_refs);
        assert_eq!((r.refs.len(), r.error), (0, None));
    }

    #[test]
    fn malformed_advertisements_stop_with_an_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (pkts(&["ERR access denied"]), "the server refused: access denied"),
            (
                pkts(&["# service=git-upload-pack", "version 2"]),
                "expected a flush-pkt",
            ),
            (pkts(&[A]), "unexpected line"),
            (pkts(&["nothex refs/heads/main"]), "malformed ref line"),
            (
                pkts(&[format!("{A} refs/heads/main"), "0000".into(), "0000".into()]),
                "after the final flush",
            ),
            (
                pkts(&[format!("{A} refs/heads/main")]),
                "before its final flush-pkt",
            ),
            (pkts(&["version 2", "0001"]), "unexpected delim-pkt"),
            // git: a ref after the shallow lines, a second placeholder, a placeholder with an id.
            (
                pkts(&[format!("shallow {A}"), format!("{A} refs/heads/x")]),
                "unexpected line",
            ),
            (
                pkts(&[format!("{A} refs/heads/x"), format!("{Z} capabilities^{{}}")]),
                "unexpected line",
            ),
            (
                pkts(&[format!("{A} capabilities^{{}}\0report-status")]),
                "unexpected line",
            ),
        ];
        for (body, want) in cases {
            let error = read(&body).error.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                String::from_utf8_lossy(&body)
            );
        }
        let e = read_with(
            &pkts(&[format!("{B} refs/tags/v1 peeled:xyz")]),
            AdvertReader::ls_refs,
        )
        .error;
        assert!(matches!(e, Some(AdvertError::Id(..))), "{e:?}");
    }

    /// An advertisement through `PushAdvert`, the same whatever the chunks.
    pub(crate) fn rewritten(adv: &[u8], no_thin: bool) -> Vec<u8> {
        split_all_ways(adv, |cuts| {
            let mut n = PushAdvert::new(no_thin);
            let mut out = Vec::new();
            let mut rest = pieces(adv, cuts).peekable();
            while let Some(piece) = rest.next() {
                out.extend(n.push(piece, rest.peek().is_none()));
            }
            out
        })
    }

    fn receive_advert(first: &str) -> Vec<u8> {
        pkts(&[
            "# service=git-receive-pack\n".to_owned(),
            "0000".into(),
            format!("{first}\n"),
            format!("{B} refs/heads/dev\n"),
            "0000".into(),
        ])
    }

    #[test]
    fn no_thin_is_added_to_the_first_ref_line_wherever_the_chunks_split() {
        let adv = receive_advert(&format!("{A} refs/heads/main\0report-status delete-refs"));
        let want = receive_advert(&format!("{A} refs/heads/main\0report-status delete-refs no-thin"));
        assert_eq!(rewritten(&adv, true), want);
        // Without a policy nothing needs adding: the advertisement passes as it came.
        assert_eq!(rewritten(&adv, false), adv);
        // Something else passes unchanged.
        let mut n = PushAdvert::new(true);
        assert_eq!(n.push(b"not a pkt stream", true), b"not a pkt stream");
    }

    #[test]
    fn push_cert_is_taken_out_of_the_advertisement() {
        // As git-receive-pack advertises it with receive.certNonceSeed set.
        let signed = receive_advert(&format!(
            "{A} refs/heads/main\0report-status delete-refs push-cert=1700000000-5f1a2b quiet atomic ofs-delta"
        ));
        let plain = |caps: &str| receive_advert(&format!("{A} refs/heads/main\0{caps}"));
        assert_eq!(
            rewritten(&signed, false),
            plain("report-status delete-refs quiet atomic ofs-delta")
        );
        assert_eq!(
            rewritten(&signed, true),
            plain("report-status delete-refs quiet atomic ofs-delta no-thin")
        );
        // An empty repository advertises its capabilities on a placeholder line.
        let empty = pkts(&[
            format!("{Z} capabilities^{{}}\0report-status push-cert=abc\n"),
            "0000".into(),
        ]);
        let want = pkts(&[format!("{Z} capabilities^{{}}\0report-status\n"), "0000".into()]);
        assert_eq!(rewritten(&empty, false), want);
        let a = read(&want);
        assert_eq!((a.error, a.refs.len()), (None, 0));
    }

    proptest::proptest! {
        /// Whatever arrives, the rewrite passes it on whole or without push-cert, never panics.
        #[test]
        fn hostile_bytes_never_panic(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cut in 0usize..600,
        ) {
            let mut n = PushAdvert::new(true);
            let cut = cut.min(raw.len());
            let mut out = n.push(&raw[..cut], false);
            out.extend(n.push(&raw[cut..], true));
            let cert = raw.windows(9).any(|w| w == b"push-cert");
            proptest::prop_assert!(cert || out.len() >= raw.len(), "only push-cert is ever dropped");
            let mut r = AdvertReader::new();
            r.feed(&raw);
            let _ = r.finish();
            let mut r = AdvertReader::ls_refs();
            r.feed(&raw);
            let _ = r.finish();
        }
    }
}
