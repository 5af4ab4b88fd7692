//! The streaming masker: bytes in as they arrive, masked bytes out as soon as they are decided.
//!
//! Holds back only from the first place a secret could still begin (see `engine`), so the delay
//! is bounded by the longest possible secret and, in clean text, by the longest keyword. Must
//! never emit a byte of a secret it finds, and its output must not depend on the chunking.
use super::{
    Finding, Masker,
    engine::{self, Scan, Scratch, Step},
};

/// One decided piece of the output, with the stream offset of the input it stands for.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Input bytes passed through unchanged, starting at input offset `offset`.
    Plain { offset: u64, bytes: &'a [u8] },
    /// A secret of `len` input bytes at `offset`, replaced.
    Masked {
        offset: u64,
        len: usize,
        replacement: &'a str,
        finding: &'a Finding,
    },
}

/// Bytes kept before the scan position so a rule's leading `\b` sees the byte before it.
const CONTEXT: usize = 1;

pub struct StreamMasker {
    masker: Masker,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Index in `buf` up to which everything is decided and emitted.
    pos: usize,
    scratch: Scratch,
    finished: bool,
}

impl StreamMasker {
    pub(crate) fn new(masker: Masker) -> StreamMasker {
        StreamMasker {
            buf: Vec::new(),
            base: 0,
            pos: 0,
            scratch: masker.compiled.take_scratch(),
            finished: false,
            masker,
        }
    }

    /// Masks the next chunk, appending what is decided to `out`; returns what it masked.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.push_pieces(chunk, &mut |p| collect(p, out, &mut findings));
        findings
    }

    /// The end of the stream: appends everything still held, masked, to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.finish_pieces(&mut |p| collect(p, out, &mut findings));
        findings
    }

    /// As `push`, handing each decided piece to `sink` with the input offset it stands for.
    pub fn push_pieces(&mut self, chunk: &[u8], sink: &mut dyn FnMut(Piece<'_>)) {
        if self.finished {
            return;
        }
        self.buf.extend_from_slice(chunk);
        self.scan(false, sink);
    }

    /// As `finish`, piece by piece.
    pub fn finish_pieces(&mut self, sink: &mut dyn FnMut(Piece<'_>)) {
        if self.finished {
            return;
        }
        self.scan(true, sink);
        self.finished = true;
    }

    /// Input bytes received but not yet decided.
    pub fn held(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Input offset up to which everything is decided.
    pub fn decided(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn scan(&mut self, final_: bool, sink: &mut dyn FnMut(Piece<'_>)) {
        self.pos = scan_from(
            &self.masker,
            &mut self.scratch,
            &self.buf,
            self.pos,
            self.base,
            final_,
            sink,
        );
        // Keep only what is undecided, plus the context byte before it.
        let keep_from = self.pos.saturating_sub(CONTEXT);
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.base += keep_from as u64;
            self.pos -= keep_from;
        }
        if final_ {
            debug_assert_eq!(self.pos, self.buf.len());
        }
    }
}

/// Scans `buf` (whose first byte is stream offset `base`) from `pos` until what is left must
/// wait for more input, or, when `final_`, to its end; hands each decided piece to `sink` and
/// returns the position up to which everything is decided.
fn scan_from(
    masker: &Masker,
    scratch: &mut Scratch,
    buf: &[u8],
    mut pos: usize,
    base: u64,
    final_: bool,
    sink: &mut dyn FnMut(Piece<'_>),
) -> usize {
    let plain = |from: usize, to: usize, sink: &mut dyn FnMut(Piece<'_>)| {
        if to > from {
            sink(Piece::Plain {
                offset: base + from as u64,
                bytes: &buf[from..to],
            });
        }
    };
    loop {
        let mut scan = Scan {
            compiled: &masker.compiled,
            exact: masker.exact.as_deref(),
            scratch: &mut *scratch,
            base,
            final_,
        };
        match scan.step(buf, pos) {
            Step::Release(to) | Step::Hold(to) => {
                plain(pos, to, sink);
                return to;
            }
            Step::Secret(hits) => {
                for hit in hits {
                    plain(pos, hit.start, sink);
                    let secret = &buf[hit.start..hit.end];
                    let finding = Finding {
                        rule: hit.rule.to_string(),
                        fingerprint: masker.fingerprint(secret),
                        offset: base + hit.start as u64,
                        len: secret.len(),
                    };
                    let replacement = finding.replacement();
                    sink(Piece::Masked {
                        offset: finding.offset,
                        len: finding.len,
                        replacement: &replacement,
                        finding: &finding,
                    });
                    pos = hit.end;
                }
            }
        }
    }
}

fn collect(p: Piece<'_>, out: &mut Vec<u8>, findings: &mut Vec<Finding>) {
    match p {
        Piece::Plain { bytes, .. } => out.extend_from_slice(bytes),
        Piece::Masked {
            replacement, finding, ..
        } => {
            out.extend_from_slice(replacement.as_bytes());
            findings.push(finding.clone());
        }
    }
}

impl Drop for StreamMasker {
    fn drop(&mut self) {
        let scratch = std::mem::replace(&mut self.scratch, Scratch::new());
        self.masker.compiled.give_back(scratch);
    }
}

impl Masker {
    /// A streaming masker for one body.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker::new(self.clone())
    }

    /// Masks a whole input at once: the same output and findings as streaming it.
    ///
    /// One scan of `input` in place, as the end of a stream: nothing is copied aside or held,
    /// and no tail is checked for a keyword still to come.
    pub fn mask_all(&self, input: &[u8]) -> (Vec<u8>, Vec<Finding>) {
        // Where no keyword (or exact value) begins, nothing is masked: no scratch is needed.
        // Most header values and log fields are such. Where one does, everything before it is
        // clean, and the scan starts there (the byte before it stays in view as context).
        let Some(first) = engine::next_keyword(&self.compiled, self.exact.as_deref(), input, 0) else {
            return (input.to_vec(), Vec::new());
        };
        let mut out = Vec::with_capacity(input.len());
        out.extend_from_slice(&input[..first]);
        let mut findings = Vec::new();
        let end = self.compiled.with_scratch(|scratch| {
            scan_from(self, scratch, input, first, 0, true, &mut |p| {
                collect(p, &mut out, &mut findings)
            })
        });
        debug_assert_eq!(end, input.len());
        (out, findings)
    }

    /// Masks a short text (a header value, a URL, a log field). Replacements are ASCII and
    /// secrets end at ASCII delimiters, so the result is still UTF-8.
    pub fn mask_str(&self, text: &str) -> (String, Vec<Finding>) {
        let (out, findings) = self.mask_all(text.as_bytes());
        let out =
            String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (out, findings)
    }
}
