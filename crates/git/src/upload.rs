//! The request of a fetch or clone (`POST …/git-upload-pack`): protocol v0 (want, have and done
//! lines between flush-pkts) or v2 (`command=…`, capabilities, a delim-pkt, arguments, a
//! flush-pkt), read as it streams. What it keeps: the command, the wanted ids and refs, how many
//! haves, whether negotiation is done.
//!
//! It holds at most one pkt-line and [`crate::bounded::MAX_ITEMS`] wants (more are counted), and never panics:
//! malformed input stops it with an error, and later bytes are ignored.
use crate::bounded::keep;
use crate::oid::{Oid, OidError, preview};
use crate::pktline::{Pkt, PktError, PktReader, Truncated, chomp};

/// What a fetch request body asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadPack {
    /// 0 for a protocol v0/v1 request, 2 for v2.
    pub version: u8,
    /// The v2 command ("fetch", "ls-refs", …); "fetch" for v0, whose requests are always a fetch
    /// negotiation; empty when the body was empty.
    pub command: String,
    /// Ids from `want` lines, in order.
    pub wants: Vec<Oid>,
    /// Ref names from v2 `want-ref` lines.
    pub want_refs: Vec<String>,
    /// How many `have` lines the client sent.
    pub haves: u64,
    /// Whether the client sent `done` (the last round of negotiation).
    pub done: bool,
    /// Wants and want-refs read beyond [`crate::bounded::MAX_ITEMS`] and not kept.
    pub omitted: u64,
    pub error: Option<UploadPackError>,
}

/// Why a fetch request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadPackError {
    #[error(transparent)]
    Pkt(#[from] PktError),
    #[error("malformed want line {0}: {1}")]
    Want(String, OidError),
    #[error("malformed want-ref line {0}")]
    WantRef(String),
    #[error("data after the flush-pkt ending the command")]
    AfterEnd,
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error(transparent)]
    Truncated(#[from] Truncated),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    V0,
    V2Capabilities,
    V2Arguments,
    End,
}

/// Reads the request body of `POST …/git-upload-pack` as it streams.
#[derive(Debug)]
pub struct UploadPackReader {
    pkts: PktReader,
    phase: Phase,
    /// In v0, whether the body may end here (after a flush-pkt or `done`).
    at_boundary: bool,
    out: UploadPack,
}

impl Default for UploadPackReader {
    fn default() -> Self {
        Self::new()
    }
}

impl UploadPackReader {
    pub fn new() -> Self {
        Self {
            pkts: PktReader::new(),
            phase: Phase::Start,
            at_boundary: true,
            out: UploadPack::default(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while self.out.error.is_none() {
            let step = match self.pkts.next(&mut chunk) {
                Ok(Some(pkt)) => step(&mut self.phase, &mut self.at_boundary, pkt, &mut self.out),
                Ok(None) => return,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = step {
                self.out.error = Some(e);
            }
        }
    }

    /// The command seen so far ("fetch", "ls-refs", …; "fetch" for v0), empty before the first
    /// line.
    pub fn command(&self) -> &str {
        &self.out.command
    }

    pub fn error(&self) -> Option<&UploadPackError> {
        self.out.error.as_ref()
    }

    /// The body ended.
    pub fn finish(mut self) -> UploadPack {
        if self.out.error.is_none() {
            let complete = !matches!(self.phase, Phase::V2Capabilities | Phase::V2Arguments)
                && (self.phase != Phase::V0 || self.at_boundary);
            self.out.error = self.pkts.end(complete).err().map(Into::into);
        }
        self.out
    }
}

fn step(
    phase: &mut Phase,
    at_boundary: &mut bool,
    pkt: Pkt<'_>,
    out: &mut UploadPack,
) -> Result<(), UploadPackError> {
    use Phase::*;
    if *phase == Start {
        if let Pkt::Data(line) = pkt
            && let Some(command) = chomp(line).strip_prefix(b"command=")
        {
            out.version = 2;
            out.command = String::from_utf8_lossy(command).into_owned();
            *phase = V2Capabilities;
            return Ok(());
        }
        out.command = "fetch".into();
        *phase = V0;
    }
    match (*phase, pkt) {
        (End, _) => Err(UploadPackError::AfterEnd),
        (V0, Pkt::Flush) => {
            *at_boundary = true;
            Ok(())
        }
        (V0, Pkt::Data(line)) => {
            let line = chomp(line);
            *at_boundary = line == b"done";
            argument(line, out)
        }
        (V2Capabilities, Pkt::Data(_)) => Ok(()),
        (V2Capabilities, Pkt::Delim) => {
            *phase = V2Arguments;
            Ok(())
        }
        (V2Capabilities | V2Arguments, Pkt::Flush) => {
            *phase = End;
            Ok(())
        }
        (V2Arguments, Pkt::Data(line)) => argument(chomp(line), out),
        (_, other @ (Pkt::Delim | Pkt::ResponseEnd)) => Err(UploadPackError::Unexpected(other.name())),
        // Start was resolved to V0 or V2Capabilities above.
        (Start, _) => Ok(()),
    }
}

/// One request line of either protocol; lines it does not need are passed over.
fn argument(line: &[u8], out: &mut UploadPack) -> Result<(), UploadPackError> {
    let (word, rest) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &b""[..]),
    };
    match word {
        b"want" => {
            // v0 puts capabilities after the first want's id.
            let id = rest.split(|&b| b == b' ' || b == 0).next().unwrap_or_default();
            let id = Oid::from_hex(id).map_err(|e| UploadPackError::Want(preview(line), e))?;
            keep(&mut out.wants, &mut out.omitted, id);
        }
        b"want-ref" => {
            if rest.is_empty() {
                return Err(UploadPackError::WantRef(preview(line)));
            }
            let name = String::from_utf8_lossy(rest).into_owned();
            keep(&mut out.want_refs, &mut out.omitted, name);
        }
        b"have" => out.haves += 1,
        b"done" => out.done = true,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{A, B, Z, pieces, pkt, pkts, split_all_ways};

    pub(crate) fn read(body: &[u8]) -> UploadPack {
        split_all_ways(body, |cuts| {
            let mut r = UploadPackReader::new();
            pieces(body, cuts).for_each(|piece| r.feed(piece));
            r.finish()
        })
    }

    fn oid(hex: &str) -> Oid {
        hex.parse().unwrap()
    }

    #[test]
    fn v0_fetch_request() {
        let body = pkts(&[
            format!(
                "want {A} multi_ack_detailed no-done side-band-64k thin-pack ofs-delta agent=git/2.47.3\n"
            ),
            format!("want {B}\n"),
            format!("shallow {A}\n"),
            "deepen 1\n".into(),
            "filter blob:none\n".into(),
            "0000".into(),
            format!("have {A}\n"),
            format!("have {B}\n"),
            "0000".into(),
            format!("have {Z}\n"),
            "done\n".into(),
        ]);
        let r = read(&body);
        assert_eq!(r.error, None);
        assert_eq!((r.version, r.command.as_str()), (0, "fetch"));
        assert_eq!(r.wants, vec![oid(A), oid(B)]);
        assert_eq!((r.haves, r.done), (3, true));
    }

    #[test]
    fn v2_fetch_request_with_want_ref() {
        let body = pkts(&[
            "command=fetch".to_owned(),
            "agent=git/2.47.3".into(),
            "object-format=sha1".into(),
            "0001".into(),
            "thin-pack".into(),
            "ofs-delta".into(),
            format!("want {A}\n"),
            "want-ref refs/heads/main\n".into(),
            "want-ref refs/pull/1/head\n".into(),
            format!("have {B}\n"),
            "done\n".into(),
            "0000".into(),
        ]);
        let r = read(&body);
        assert_eq!(r.error, None);
        assert_eq!((r.version, r.command.as_str()), (2, "fetch"));
        assert_eq!(r.wants, vec![oid(A)]);
        assert_eq!(
            r.want_refs,
            vec!["refs/heads/main".to_owned(), "refs/pull/1/head".to_owned()]
        );
        assert_eq!((r.haves, r.done), (1, true));
    }

    #[test]
    fn v2_ls_refs_request_wants_nothing() {
        let body = pkts(&[
            "command=ls-refs\n",
            "agent=git/2.47.3\n",
            "0001",
            "peel\n",
            "symrefs\n",
            "ref-prefix refs/heads/\n",
            "0000",
        ]);
        let r = read(&body);
        assert_eq!((r.command.as_str(), r.wants.len(), r.error), ("ls-refs", 0, None));
        let mut p = UploadPackReader::new();
        p.feed(&body[..20]);
        assert_eq!(p.command(), "ls-refs", "known as soon as the first line is in");
    }

    #[test]
    fn malformed_fetch_bodies_stop_with_an_error() {
        let v2 = pkts(&["command=fetch", "0001", "done", "0000"]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (pkt("want nothex"), "malformed want line"),
            (pkt(format!("want {}", &A[1..])), "malformed want line"),
            (
                pkts(&["command=fetch", "0001", "want-ref", "0000"]),
                "malformed want-ref",
            ),
            ([v2.clone(), pkt("done")].concat(), "data after the flush-pkt"),
            (pkts(&["command=fetch", "0001", "0001"]), "unexpected delim-pkt"),
            (
                pkts(&[format!("want {A}"), "0001".into()]),
                "unexpected delim-pkt",
            ),
            (pkts(&["command=fetch", "0002"]), "unexpected response-end-pkt"),
            (
                pkts(&["command=fetch", "0001", "done"]),
                "before its final flush-pkt",
            ),
            (pkts(&[format!("want {A}")]), "before its final flush-pkt"),
            (v2[..v2.len() - 2].to_vec(), "inside a pkt-line"),
        ];
        for (body, want) in cases {
            let r = read(&body);
            let error = r.error.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.contains(want),
                "{:?}: {error:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(UploadPackReader::new().finish(), UploadPack::default());
    }
}
