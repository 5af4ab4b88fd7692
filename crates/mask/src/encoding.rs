//! Streaming decoding of an HTTP `Content-Encoding` (gzip, deflate, br), so the masker scans the
//! bytes a compressed body really carries rather than its compressed form.
//!
//! Chunks go in and decoded bytes come out as they are produced. This module must never hold a
//! whole body, and never produce more than its output limit however small the compressed input
//! (decompression bombs).
#![forbid(unsafe_code)]

use std::fmt;

use brotli::{BrotliDecompressStream, BrotliResult, BrotliState, HeapAlloc, HuffmanCode};
use flate2::{Decompress, FlushDecompress, Status};

/// Output limit of [`Decoder::new`]: far above any real GitHub body, far below this machine's
/// memory.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 30;

/// Decoded bytes are produced into a buffer of this size and appended from there, so the output
/// limit is checked every block of output, whatever the compression ratio.
const BLOCK: usize = 32 * 1024;

/// A Content-Encoding the decoder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

/// A `Content-Encoding` value this module cannot decode: an unknown coding, or several codings
/// stacked on one body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Content-Encoding {0:?} is not supported: only a single gzip, x-gzip, deflate or br coding \
     (or identity) can be decoded"
)]
pub struct Unsupported(pub String);

impl Coding {
    /// Parses a Content-Encoding header value: `gzip`/`x-gzip`, `deflate`, `br` (case-insensitive,
    /// trimmed). `Ok(None)` for absent/empty/`identity`. A list of several codings ("gzip, br") or
    /// an unknown one is `Err(Unsupported(String))` naming it.
    pub fn parse(value: Option<&str>) -> Result<Option<Coding>, Unsupported> {
        let value = value.unwrap_or("").trim();
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            return Ok(None);
        }
        if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Ok(Some(Coding::Gzip))
        } else if value.eq_ignore_ascii_case("deflate") {
            Ok(Some(Coding::Deflate))
        } else if value.eq_ignore_ascii_case("br") {
            Ok(Some(Coding::Brotli))
        } else {
            Err(Unsupported(value.to_string()))
        }
    }

    /// The coding's token as it appears in a `Content-Encoding` header.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Why a body could not be decoded. Every message names the coding and what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{coding}-encoded body is corrupt: {detail}")]
    Corrupt { coding: Coding, detail: String },
    #[error("{coding}-encoded body has data after the end of its compressed stream")]
    Trailing { coding: Coding },
    #[error("{coding}-encoded body ended {place}: the compressed stream is incomplete")]
    Truncated { coding: Coding, place: &'static str },
    #[error(
        "{coding}-encoded body decodes to more than the limit of {limit} bytes (a decompression \
         bomb, or a body larger than the masker is configured to scan)"
    )]
    TooLarge { coding: Coding, limit: u64 },
}

/// Decodes one body's Content-Encoding, chunk by chunk.
pub struct Decoder {
    coding: Coding,
    inner: Inner,
    scratch: Box<[u8]>,
    limit: u64,
    produced: u64,
    /// Whether any body byte has been pushed: an empty body is accepted as empty whatever the
    /// coding, since servers label empty bodies with the coding they would have used.
    started: bool,
    finished: bool,
    failed: Option<DecodeError>,
}

enum Inner {
    Gzip(Box<Gzip>),
    Deflate(Deflate),
    Brotli(Box<Brotli>),
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("coding", &self.coding)
            .field("limit", &self.limit)
            .field("produced", &self.produced)
            .field("finished", &self.finished)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder whose output is limited to [`DEFAULT_MAX_OUTPUT`] bytes.
    pub fn new(coding: Coding) -> Self {
        Self::new_with_limit(coding, DEFAULT_MAX_OUTPUT)
    }

    /// A decoder that fails once the body decodes to more than `max_output` bytes.
    pub fn new_with_limit(coding: Coding, max_output: u64) -> Self {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(Box::new(Gzip::new())),
            Coding::Deflate => Inner::Deflate(Deflate::Sniff(None)),
            Coding::Brotli => Inner::Brotli(Box::new(Brotli::new())),
        };
        Decoder {
            coding,
            inner,
            scratch: vec![0; BLOCK].into_boxed_slice(),
            limit: max_output,
            produced: 0,
            started: false,
            finished: false,
            failed: None,
        }
    }

    /// The coding this decoder undoes.
    pub fn coding(&self) -> Coding {
        self.coding
    }

    /// Decoded bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Decodes the next chunk, appending decoded bytes to `out`. `Err` names what was wrong
    /// (corrupt data, trailing garbage); after an error the decoder stays failed.
    ///
    /// When the output limit is exceeded, `out` has received exactly the limit's worth of bytes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let result = if self.finished {
            Err(DecodeError::Trailing { coding: self.coding })
        } else {
            self.started = true;
            self.decode(chunk, out)
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// End of the body: `Err` if the compressed stream was incomplete.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        // Each push drains all the output its input allows, so no decoded bytes are left for
        // `out` here; it is taken so that callers treat the end like any other chunk.
        let _ = out;
        let coding = self.coding;
        let truncated = |place| Err(DecodeError::Truncated { coding, place });
        let result = if !self.started {
            Ok(())
        } else {
            match &self.inner {
                Inner::Gzip(gz) => match gz.phase {
                    GzPhase::Between => Ok(()),
                    GzPhase::Body => truncated("inside a gzip member's compressed data"),
                    GzPhase::Trailer { .. } => truncated("inside a gzip member's 8-byte trailer"),
                    _ => truncated("inside a gzip member header"),
                },
                Inner::Deflate(Deflate::Done) => Ok(()),
                Inner::Deflate(_) => truncated("inside the deflate stream"),
                Inner::Brotli(br) if br.done => Ok(()),
                Inner::Brotli(_) => truncated("inside the brotli stream"),
            }
        };
        match &result {
            Ok(()) => self.finished = true,
            Err(e) => self.failed = Some(e.clone()),
        }
        result
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let Decoder {
            coding,
            inner,
            scratch,
            limit,
            produced,
            ..
        } = self;
        let coding = *coding;
        let mut sink = Sink {
            out,
            produced,
            limit: *limit,
            coding,
        };
        match inner {
            Inner::Gzip(gz) => gz.push(input, scratch, &mut sink),
            Inner::Deflate(deflate) => deflate.push(input, scratch, &mut sink),
            Inner::Brotli(br) => br.push(input, scratch, &mut sink),
        }
    }
}

/// Where decoded bytes go: appended to the caller's buffer, counted against the limit.
struct Sink<'a> {
    out: &'a mut Vec<u8>,
    produced: &'a mut u64,
    limit: u64,
    coding: Coding,
}

impl Sink<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let room = self.limit - *self.produced;
        if bytes.len() as u64 > room {
            // `room` < `bytes.len()`, so it fits in a usize.
            self.out.extend_from_slice(&bytes[..room as usize]);
            *self.produced = self.limit;
            return Err(DecodeError::TooLarge {
                coding: self.coding,
                limit: self.limit,
            });
        }
        self.out.extend_from_slice(bytes);
        *self.produced += bytes.len() as u64;
        Ok(())
    }

    fn corrupt(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::Corrupt {
            coding: self.coding,
            detail: detail.into(),
        }
    }
}

/// Runs `input` through an inflater until it is all consumed or the deflate stream ends.
/// Returns how many bytes were consumed and whether the stream ended.
fn inflate(
    z: &mut Decompress,
    input: &[u8],
    scratch: &mut [u8],
    sink: &mut Sink<'_>,
    mut on_output: impl FnMut(&[u8]),
) -> Result<(usize, bool), DecodeError> {
    let mut used = 0;
    loop {
        let (in_before, out_before) = (z.total_in(), z.total_out());
        let status = z
            .decompress(&input[used..], scratch, FlushDecompress::None)
            .map_err(|e| sink.corrupt(e.to_string()))?;
        // Both deltas are bounded by the slices just passed in.
        let consumed = (z.total_in() - in_before) as usize;
        let produced = (z.total_out() - out_before) as usize;
        used += consumed;
        on_output(&scratch[..produced]);
        sink.emit(&scratch[..produced])?;
        if status == Status::StreamEnd {
            return Ok((used, true));
        }
        // No progress: everything the input allows has been produced.
        if consumed == 0 && produced == 0 {
            return Ok((used, false));
        }
    }
}

/// `deflate` as sent over HTTP: RFC 1950 zlib in the standard, raw RFC 1951 from some servers.
enum Deflate {
    /// Waiting for the two bytes that tell zlib from raw; holds the first if it came alone.
    Sniff(Option<u8>),
    Body(Box<Decompress>),
    Done,
}

/// Whether two bytes open a zlib stream. A raw deflate stream can pass this only if its first
/// block is a non-final stored block whose padding bits are not zero, which encoders never write.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0
}

impl Deflate {
    fn push(&mut self, mut input: &[u8], scratch: &mut [u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        if let Deflate::Sniff(first) = *self {
            let (cmf, flg) = match (first, input) {
                (None, [cmf, flg, ..]) => (*cmf, *flg),
                (Some(cmf), [flg, ..]) => (cmf, *flg),
                (None, [only]) => {
                    *self = Deflate::Sniff(Some(*only));
                    return Ok(());
                }
                (_, []) => return Ok(()),
            };
            let mut z = Box::new(Decompress::new(is_zlib_header(cmf, flg)));
            if let Some(cmf) = first {
                let (_, ended) = inflate(&mut z, &[cmf], scratch, sink, |_| {})?;
                // One byte cannot hold a whole stream, zlib or raw.
                debug_assert!(!ended);
            }
            *self = Deflate::Body(z);
        }
        if let Deflate::Body(z) = self {
            let (used, ended) = inflate(z, input, scratch, sink, |_| {})?;
            if !ended {
                return Ok(());
            }
            *self = Deflate::Done;
            input = &input[used..];
        }
        if input.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing { coding: sink.coding })
        }
    }
}

/// RFC 1952 gzip: one or more members, each a header, raw deflate data and a CRC-32/size
/// trailer. The header's optional fields are skipped as they stream past, never stored.
struct Gzip {
    phase: GzPhase,
    /// Members completed so far; after the first, bytes that do not open a member are trailing.
    members: u64,
    flags: u8,
    /// CRC-32 of the header bytes so far, for the optional header CRC.
    header_crc: crc32fast::Hasher,
    z: Decompress,
    body_crc: crc32fast::Hasher,
    body_len: u32,
}

enum GzPhase {
    Fixed {
        buf: [u8; 10],
        have: usize,
    },
    ExtraLen {
        buf: [u8; 2],
        have: usize,
    },
    Extra {
        left: usize,
    },
    Name,
    Comment,
    HeaderCrc {
        buf: [u8; 2],
        have: usize,
    },
    Body,
    Trailer {
        buf: [u8; 8],
        have: usize,
    },
    /// A member has ended: the body may end here or another member may start.
    Between,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// Copies from `input` into `buf[have..]`, advancing both; true once `buf` is full.
fn fill(buf: &mut [u8], have: &mut usize, input: &mut &[u8], hash: &mut crc32fast::Hasher) -> bool {
    let n = (buf.len() - *have).min(input.len());
    buf[*have..*have + n].copy_from_slice(&input[..n]);
    hash.update(&input[..n]);
    *have += n;
    *input = &input[n..];
    *have == buf.len()
}

impl Gzip {
    fn new() -> Self {
        Gzip {
            phase: GzPhase::Fixed {
                buf: [0; 10],
                have: 0,
            },
            members: 0,
            flags: 0,
            header_crc: crc32fast::Hasher::new(),
            z: Decompress::new(false),
            body_crc: crc32fast::Hasher::new(),
            body_len: 0,
        }
    }

    /// The phase after the header field `done` (0: the fixed part), given the header's flags.
    fn after(&self, done: u8) -> GzPhase {
        // The optional fields, in the order RFC 1952 puts them.
        const ORDER: [u8; 4] = [FEXTRA, FNAME, FCOMMENT, FHCRC];
        let start = ORDER.iter().position(|&f| f == done).map_or(0, |i| i + 1);
        let rest = ORDER[start..].iter().copied().find(|&f| self.flags & f != 0);
        match rest {
            Some(FEXTRA) => GzPhase::ExtraLen { buf: [0; 2], have: 0 },
            Some(FNAME) => GzPhase::Name,
            Some(FCOMMENT) => GzPhase::Comment,
            Some(_) => GzPhase::HeaderCrc { buf: [0; 2], have: 0 },
            None => GzPhase::Body,
        }
    }

    fn push(&mut self, mut input: &[u8], scratch: &mut [u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        while !input.is_empty() {
            match &mut self.phase {
                GzPhase::Between => {
                    self.phase = GzPhase::Fixed {
                        buf: [0; 10],
                        have: 0,
                    };
                    self.header_crc = crc32fast::Hasher::new();
                }
                GzPhase::Fixed { buf, have } => {
                    let full = fill(buf, have, &mut input, &mut self.header_crc);
                    let magic_ok = buf[..(*have).min(2)] == [0x1f, 0x8b][..(*have).min(2)];
                    if !magic_ok {
                        return Err(if self.members > 0 {
                            DecodeError::Trailing { coding: sink.coding }
                        } else {
                            sink.corrupt("not gzip data (the first two bytes are not 1f 8b)")
                        });
                    }
                    if !full {
                        continue;
                    }
                    if buf[2] != 8 {
                        return Err(sink.corrupt(format!(
                            "gzip member uses compression method {}, only 8 (deflate) exists",
                            buf[2]
                        )));
                    }
                    if buf[3] & FRESERVED != 0 {
                        return Err(sink.corrupt(format!(
                            "gzip member header has reserved flag bits set ({:#04x})",
                            buf[3]
                        )));
                    }
                    self.flags = buf[3];
                    self.phase = self.after(0);
                }
                GzPhase::ExtraLen { buf, have } => {
                    if fill(buf, have, &mut input, &mut self.header_crc) {
                        let left = usize::from(u16::from_le_bytes(*buf));
                        self.phase = if left > 0 {
                            GzPhase::Extra { left }
                        } else {
                            self.after(FEXTRA)
                        };
                    }
                }
                GzPhase::Extra { left } => {
                    let n = (*left).min(input.len());
                    self.header_crc.update(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.phase = self.after(FEXTRA);
                    }
                }
                GzPhase::Name | GzPhase::Comment => {
                    let field = if matches!(self.phase, GzPhase::Name) {
                        FNAME
                    } else {
                        FCOMMENT
                    };
                    match memchr::memchr(0, input) {
                        Some(nul) => {
                            self.header_crc.update(&input[..=nul]);
                            input = &input[nul + 1..];
                            self.phase = self.after(field);
                        }
                        None => {
                            self.header_crc.update(input);
                            input = &[];
                        }
                    }
                }
                GzPhase::HeaderCrc { buf, have } => {
                    let mut ignored = crc32fast::Hasher::new();
                    if fill(buf, have, &mut input, &mut ignored) {
                        let stated = u16::from_le_bytes(*buf);
                        // The header CRC is the low 16 bits of the CRC-32 of the header before it.
                        let actual = self.header_crc.clone().finalize() as u16;
                        if stated != actual {
                            return Err(sink.corrupt(format!(
                                "gzip header CRC is {stated:#06x}, the header's is {actual:#06x}"
                            )));
                        }
                        self.phase = GzPhase::Body;
                    }
                }
                GzPhase::Body => {
                    let (crc, len) = (&mut self.body_crc, &mut self.body_len);
                    let (used, ended) = inflate(&mut self.z, input, scratch, sink, |bytes| {
                        crc.update(bytes);
                        // ISIZE is the length modulo 2^32.
                        *len = len.wrapping_add(bytes.len() as u32);
                    })?;
                    input = &input[used..];
                    if ended {
                        self.phase = GzPhase::Trailer { buf: [0; 8], have: 0 };
                    }
                }
                GzPhase::Trailer { buf, have } => {
                    let mut ignored = crc32fast::Hasher::new();
                    if !fill(buf, have, &mut input, &mut ignored) {
                        continue;
                    }
                    let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    let actual_crc = std::mem::take(&mut self.body_crc).finalize();
                    if crc != actual_crc {
                        return Err(sink.corrupt(format!(
                            "gzip member CRC-32 is {crc:#010x}, its data's is {actual_crc:#010x}"
                        )));
                    }
                    if size != self.body_len {
                        return Err(sink.corrupt(format!(
                            "gzip member states a length of {size} (mod 2^32), its data has {}",
                            self.body_len
                        )));
                    }
                    self.members += 1;
                    self.body_len = 0;
                    self.z.reset(false);
                    self.phase = GzPhase::Between;
                }
            }
        }
        Ok(())
    }
}

type BrotliDecoderState = BrotliState<HeapAlloc<u8>, HeapAlloc<u32>, HeapAlloc<HuffmanCode>>;

/// RFC 7932 brotli, with the standard window of at most 16 MiB: the large-window extension is
/// not part of HTTP's `br` and would let a body make the decoder allocate 1 GiB.
struct Brotli {
    state: BrotliDecoderState,
    total_out: usize,
    done: bool,
}

impl Brotli {
    fn new() -> Self {
        Brotli {
            state: BrotliState::new_strict(HeapAlloc::default(), HeapAlloc::default(), HeapAlloc::default()),
            total_out: 0,
            done: false,
        }
    }

    fn push(&mut self, input: &[u8], scratch: &mut [u8], sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        if self.done {
            return Err(DecodeError::Trailing { coding: sink.coding });
        }
        let mut available_in = input.len();
        let mut input_offset = 0;
        loop {
            let mut available_out = scratch.len();
            let mut output_offset = 0;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                scratch,
                &mut self.total_out,
                &mut self.state,
            );
            sink.emit(&scratch[..output_offset])?;
            match result {
                BrotliResult::NeedsMoreOutput => continue,
                BrotliResult::NeedsMoreInput => return Ok(()),
                BrotliResult::ResultSuccess => {
                    self.done = true;
                    return if available_in == 0 {
                        Ok(())
                    } else {
                        Err(DecodeError::Trailing { coding: sink.coding })
                    };
                }
                BrotliResult::ResultFailure => {
                    return Err(sink.corrupt(format!("brotli decoder error {:?}", self.state.error_code)));
                }
            }
        }
    }
}

/// Encodes `data` whole with `coding` (deflate as zlib, as HTTP specifies): test inputs.
#[cfg(test)]
pub fn encode_all(coding: Coding, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("write to a Vec");
            e.finish().expect("write to a Vec")
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("write to a Vec");
            e.finish().expect("write to a Vec")
        }
        Coding::Brotli => {
            let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            e.write_all(data).expect("write to a Vec");
            e.into_inner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const ALL: [Coding; 3] = [Coding::Gzip, Coding::Deflate, Coding::Brotli];

    /// Text that compresses well, then bytes that do not, so decoding crosses many output blocks
    /// and both kinds of deflate block.
    fn sample(len: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut i = 0u64;
        while data.len() < len {
            if (i / 500).is_multiple_of(2) {
                data.extend_from_slice(format!("line {i}: token ghp_example{}\n", i % 7).as_bytes());
            } else {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                data.extend_from_slice(&rng.to_le_bytes());
            }
            i += 1;
        }
        data.truncate(len);
        data
    }

    /// Runs `input` through a decoder cut at `cuts`, then finishes it.
    fn decode_split(
        coding: Coding,
        input: &[u8],
        cuts: &[usize],
        limit: u64,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = Decoder::new_with_limit(coding, limit);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            decoder.push(&input[from..cut], &mut out)?;
            from = cut;
        }
        decoder.finish(&mut out)?;
        assert_eq!(decoder.produced(), out.len() as u64);
        Ok(out)
    }

    /// Cut lists: whole, every byte, one cut at every offset (small inputs), fixed-seed random.
    fn chunkings(len: usize) -> Vec<Vec<usize>> {
        let mut all = vec![vec![], (1..len).collect()];
        if len <= 600 {
            all.extend((0..=len).map(|cut| vec![cut]));
        }
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..20 {
            let mut cuts = Vec::new();
            let mut at = 0;
            let step = [7, 100, 5000][round % 3];
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                at += (rng % step) as usize;
                if at >= len {
                    break;
                }
                cuts.push(at);
            }
            all.push(cuts);
        }
        all
    }

    /// Decodes `input` at every chunking, asserting they all give the same result.
    fn decode_all_ways(coding: Coding, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let whole = decode_split(coding, input, &[], DEFAULT_MAX_OUTPUT);
        for cuts in chunkings(input.len()) {
            let split = decode_split(coding, input, &cuts, DEFAULT_MAX_OUTPUT);
            assert_eq!(split, whole, "{coding} at cuts {cuts:?}");
        }
        whole
    }

    fn run(program: &str, args: &[&str], stdin: &[u8]) -> Option<Vec<u8>> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut pipe = child.stdin.take().expect("stdin piped");
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || pipe.write_all(&input));
        let output = child.wait_with_output().expect("wait for child");
        writer.join().expect("writer thread").expect("write child stdin");
        assert!(output.status.success(), "{program} {args:?} failed");
        Some(output.stdout)
    }

    /// `gzip -c` of `data`, stored under a file name so the header carries the FNAME field.
    fn gzip_cli(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("body.json");
        std::fs::write(&path, data).expect("write temp file");
        let output = Command::new("gzip")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run gzip (part of every Debian system)");
        assert!(output.status.success(), "gzip -c failed");
        assert_ne!(output.stdout[3] & FNAME, 0, "gzip -c FILE stores the name");
        output.stdout
    }

    /// python3's zlib: raw deflate with `wbits` -15, zlib-wrapped with 15. Falls back to flate2
    /// where python3 is missing, saying so.
    fn python_deflate(data: &[u8], wbits: i32, level: u32) -> Vec<u8> {
        let script = format!(
            "import sys, zlib\n\
             c = zlib.compressobj({level}, zlib.DEFLATED, {wbits})\n\
             sys.stdout.buffer.write(c.compress(sys.stdin.buffer.read()) + c.flush())\n"
        );
        if let Some(out) = run("python3", &["-c", &script], data) {
            return out;
        }
        eprintln!("python3 not found: deflate inputs come from flate2 instead");
        let level = flate2::Compression::new(level);
        if wbits < 0 {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }

    /// A brotli stream written by hand from RFC 7932: uncompressed meta-blocks and an empty last
    /// one, so the decoder is checked against something other than the brotli crate's encoder.
    fn brotli_uncompressed(data: &[u8]) -> Vec<u8> {
        let mut bits: Vec<bool> = vec![false]; // WBITS = 16
        let push = |bits: &mut Vec<bool>, value: u32, n: u32| {
            bits.extend((0..n).map(|i| value >> i & 1 == 1));
        };
        let pad = |bits: &mut Vec<bool>| {
            while !bits.len().is_multiple_of(8) {
                bits.push(false);
            }
        };
        let mut bytes = Vec::new();
        let flush = |bits: &mut Vec<bool>, bytes: &mut Vec<u8>| {
            for byte in bits.chunks(8) {
                bytes.push(byte.iter().rev().fold(0u8, |acc, &b| acc << 1 | u8::from(b)));
            }
            bits.clear();
        };
        for block in data.chunks(65536) {
            push(&mut bits, 0, 1); // ISLAST
            push(&mut bits, 0, 2); // MNIBBLES: 4
            push(&mut bits, block.len() as u32 - 1, 16); // MLEN - 1
            push(&mut bits, 1, 1); // ISUNCOMPRESSED
            pad(&mut bits);
            flush(&mut bits, &mut bytes);
            bytes.extend_from_slice(block);
        }
        push(&mut bits, 1, 1); // ISLAST
        push(&mut bits, 1, 1); // ISLASTEMPTY
        pad(&mut bits);
        flush(&mut bits, &mut bytes);
        bytes
    }

    #[test]
    fn round_trips_every_coding_at_every_chunking() {
        for len in [1, 300, 70_000] {
            let data = sample(len);
            for coding in ALL {
                let encoded = encode_all(coding, &data);
                let decoded = decode_all_ways(coding, &encoded);
                assert_eq!(decoded.as_deref(), Ok(&data[..]), "{coding}, {len} bytes");
            }
        }
    }

    #[test]
    fn decodes_what_gzip_writes_including_the_file_name_field() {
        let data = sample(50_000);
        assert_eq!(decode_all_ways(Coding::Gzip, &gzip_cli(&data)), Ok(data));
    }

    #[test]
    fn multi_member_gzip_is_one_body() {
        let (a, b, c) = (sample(40_000), b"second member\n".to_vec(), Vec::new());
        let mut input = gzip_cli(&a);
        input.extend(run("gzip", &["-c"], &b).expect("run gzip"));
        input.extend(encode_all(Coding::Gzip, &c));
        input.extend(encode_all(Coding::Gzip, b"fourth"));
        let want = [&a[..], &b, &c, b"fourth"].concat();
        assert_eq!(decode_all_ways(Coding::Gzip, &input), Ok(want));
    }

    /// A gzip header with every optional field, as hand-written as RFC 1952 allows.
    fn gzip_with_all_fields(data: &[u8], corrupt_header_crc: bool) -> Vec<u8> {
        let mut header = vec![0x1f, 0x8b, 8, FEXTRA | FNAME | FCOMMENT | FHCRC, 1, 2, 3, 4, 0, 3];
        header.extend_from_slice(&6u16.to_le_bytes());
        header.extend_from_slice(b"AB\x02\x00xy");
        header.extend_from_slice(b"name.txt\0");
        header.extend_from_slice(b"a comment\0");
        let mut crc = crc32fast::hash(&header) as u16;
        if corrupt_header_crc {
            crc ^= 1;
        }
        header.extend_from_slice(&crc.to_le_bytes());
        let mut e = flate2::write::DeflateEncoder::new(header, flate2::Compression::default());
        e.write_all(data).unwrap();
        let mut out = e.finish().unwrap();
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn gzip_optional_header_fields_are_skipped_and_their_crc_checked() {
        let data = sample(3000);
        assert_eq!(
            decode_all_ways(Coding::Gzip, &gzip_with_all_fields(&data, false)),
            Ok(data.clone())
        );
        let err = decode_all_ways(Coding::Gzip, &gzip_with_all_fields(&data, true)).unwrap_err();
        assert!(err.to_string().contains("gzip header CRC"), "{err}");
    }

    #[test]
    fn deflate_is_decoded_whether_zlib_wrapped_or_raw() {
        let data = sample(20_000);
        for level in [0, 1, 6, 9] {
            let zlib = python_deflate(&data, 15, level);
            let raw = python_deflate(&data, -15, level);
            assert!(is_zlib_header(zlib[0], zlib[1]), "level {level}");
            assert!(
                !is_zlib_header(raw[0], raw[1]),
                "level {level}: raw looks like zlib"
            );
            assert_eq!(
                decode_all_ways(Coding::Deflate, &zlib),
                Ok(data.clone()),
                "zlib {level}"
            );
            assert_eq!(
                decode_all_ways(Coding::Deflate, &raw),
                Ok(data.clone()),
                "raw {level}"
            );
        }
        // Tiny bodies, whose first block is fixed-Huffman or stored, start with assorted bytes.
        for body in [&b""[..], b"a", b"ab", b"{}", b"\x00\x00\x00"] {
            let raw = python_deflate(body, -15, 6);
            assert!(
                !is_zlib_header(raw[0], raw.get(1).copied().unwrap_or(0)),
                "{body:?}"
            );
            assert_eq!(
                decode_all_ways(Coding::Deflate, &raw),
                Ok(body.to_vec()),
                "{body:?}"
            );
        }
    }

    #[test]
    fn brotli_written_by_hand_decodes() {
        for data in [sample(10), sample(100_000)] {
            let input = brotli_uncompressed(&data);
            assert_eq!(decode_all_ways(Coding::Brotli, &input), Ok(data));
        }
        assert_eq!(
            decode_all_ways(Coding::Brotli, &[0x06]),
            Ok(vec![]),
            "empty stream"
        );
    }

    #[test]
    fn brotli_from_the_cli_decodes_where_installed() {
        let data = sample(30_000);
        match run("brotli", &["-c"], &data) {
            Some(input) => assert_eq!(decode_all_ways(Coding::Brotli, &input), Ok(data)),
            None => eprintln!("brotli CLI not installed: covered by the hand-written streams only"),
        }
    }

    #[test]
    fn large_window_brotli_is_refused() {
        // 0x11 opens a large-window stream (a window of up to 1 GiB, here 2^30): not HTTP's `br`.
        let input = [0x11, 0x1e, 0x03];
        let err = decode_split(Coding::Brotli, &input, &[], DEFAULT_MAX_OUTPUT).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("WINDOW_BITS"), "{err}");
    }

    #[test]
    fn an_empty_body_decodes_to_nothing() {
        for coding in ALL {
            assert_eq!(decode_split(coding, &[], &[], 10), Ok(vec![]), "{coding}");
        }
    }

    #[test]
    fn corrupt_input_is_an_error_that_sticks() {
        let data = sample(5000);
        let gz = encode_all(Coding::Gzip, &data);
        let zlib = encode_all(Coding::Deflate, &data);
        let flip = |bytes: &[u8], at: usize| {
            let mut bytes = bytes.to_vec();
            bytes[at] ^= 0x55;
            bytes
        };
        let cases: Vec<(Coding, Vec<u8>, &str)> = vec![
            (Coding::Gzip, b"{\"plain\": \"json\"}".to_vec(), "not gzip data"),
            (Coding::Gzip, flip(&gz, 2), "compression method"),
            (Coding::Gzip, flip(&gz, 3), "reserved flag bits"),
            (Coding::Gzip, flip(&gz, gz.len() - 6), "CRC-32"),
            (Coding::Gzip, flip(&gz, gz.len() - 2), "states a length"),
            // BTYPE 11 is reserved in every deflate stream.
            (Coding::Deflate, vec![0x07, 0x00, 0x00], "corrupt"),
            (Coding::Deflate, flip(&zlib, zlib.len() - 1), "corrupt"),
            (
                Coding::Brotli,
                b"<html>not brotli</html>".to_vec(),
                "brotli decoder error",
            ),
        ];
        for (coding, input, want) in cases {
            let err = decode_all_ways(coding, &input).unwrap_err();
            assert!(
                matches!(err, DecodeError::Corrupt { .. }),
                "{coding} {want}: {err:?}"
            );
            assert!(err.to_string().contains(want), "{coding}: {err}");
            assert!(
                err.to_string().starts_with(&format!("{coding}-encoded body")),
                "{err}"
            );

            let mut decoder = Decoder::new(coding);
            let mut out = Vec::new();
            let first = decoder
                .push(&input, &mut out)
                .and_then(|()| decoder.finish(&mut out));
            assert_eq!(first, Err(err.clone()));
            let good = encode_all(coding, b"fine");
            assert_eq!(decoder.push(&good, &mut out), Err(err.clone()), "stays failed");
            assert_eq!(decoder.finish(&mut out), Err(err), "stays failed");
        }
    }

    #[test]
    fn damaged_bytes_anywhere_never_panic_and_checksums_catch_changed_data() {
        let data = sample(2000);
        for coding in ALL {
            let encoded = encode_all(coding, &data);
            for at in 0..encoded.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut damaged = encoded.clone();
                    damaged[at] ^= mask;
                    let result = decode_split(coding, &damaged, &[at], 1 << 20);
                    // gzip and zlib carry checksums of the data; raw brotli does not.
                    if coding != Coding::Brotli
                        && let Ok(out) = result
                    {
                        assert_eq!(out, data, "{coding}: byte {at} ^ {mask:#x} changed the data");
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_input_fails_at_finish() {
        let data = sample(3000);
        let raw = python_deflate(&data, -15, 6);
        let inputs = [
            (Coding::Gzip, encode_all(Coding::Gzip, &data)),
            (Coding::Gzip, gzip_with_all_fields(&data, false)),
            (Coding::Deflate, encode_all(Coding::Deflate, &data)),
            (Coding::Deflate, raw),
            (Coding::Brotli, encode_all(Coding::Brotli, &data)),
            (Coding::Brotli, brotli_uncompressed(&data)),
        ];
        for (coding, input) in inputs {
            for len in 1..input.len() {
                let mut decoder = Decoder::new(coding);
                let mut out = Vec::new();
                decoder
                    .push(&input[..len], &mut out)
                    .expect("a prefix is not corrupt");
                assert!(data.starts_with(&out), "{coding}: prefix output is not a prefix");
                let err = decoder.finish(&mut out).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Truncated { .. }),
                    "{coding} at {len}: {err}"
                );
                assert!(err.to_string().contains("incomplete"), "{err}");
            }
        }
    }

    #[test]
    fn data_after_the_stream_is_trailing_garbage() {
        let raw = python_deflate(b"body", -15, 6);
        for (coding, encoded) in ALL
            .map(|c| (c, encode_all(c, b"body")))
            .into_iter()
            .chain([(Coding::Deflate, raw)])
        {
            let mut input = encoded.clone();
            input.extend_from_slice(b"garbage");
            let err = decode_all_ways(coding, &input).unwrap_err();
            assert_eq!(err, DecodeError::Trailing { coding });
            assert!(err.to_string().contains("after the end"), "{err}");

            let mut decoder = Decoder::new(coding);
            let mut out = Vec::new();
            decoder.push(&encoded, &mut out).unwrap();
            decoder.finish(&mut out).unwrap();
            assert_eq!(
                decoder.push(b"x", &mut out),
                Err(DecodeError::Trailing { coding })
            );
        }
    }

    #[test]
    fn output_beyond_the_limit_is_an_error() {
        let zeros = vec![0u8; 4 << 20];
        let inputs = [
            (Coding::Gzip, run("gzip", &["-c"], &zeros).expect("run gzip")),
            (Coding::Deflate, python_deflate(&zeros, -15, 9)),
            (Coding::Brotli, encode_all(Coding::Brotli, &zeros)),
        ];
        for (coding, input) in inputs {
            assert!(input.len() < 10_000, "{coding}: {} bytes is no bomb", input.len());
            for limit in [0, 1, 100_000] {
                let mut decoder = Decoder::new_with_limit(coding, limit);
                let mut out = Vec::new();
                let err = decoder.push(&input, &mut out).unwrap_err();
                assert_eq!(err, DecodeError::TooLarge { coding, limit });
                assert!(
                    err.to_string().contains(&format!("limit of {limit} bytes")),
                    "{err}"
                );
                assert_eq!(out.len() as u64, limit, "{coding}: output stops at the limit");
                assert_eq!(decoder.finish(&mut out), Err(err));
            }
            let exact = decode_split(coding, &input, &[], zeros.len() as u64);
            assert_eq!(
                exact.map(|out| out.len()),
                Ok(zeros.len()),
                "{coding}: at the limit"
            );
        }
    }

    #[test]
    fn parses_content_encoding_values() {
        let ok = [
            (None, None),
            (Some(""), None),
            (Some("  "), None),
            (Some("identity"), None),
            (Some(" Identity "), None),
            (Some("gzip"), Some(Coding::Gzip)),
            (Some("x-gzip"), Some(Coding::Gzip)),
            (Some(" GZIP\t"), Some(Coding::Gzip)),
            (Some("X-Gzip"), Some(Coding::Gzip)),
            (Some("deflate"), Some(Coding::Deflate)),
            (Some("Deflate"), Some(Coding::Deflate)),
            (Some("br"), Some(Coding::Brotli)),
            (Some(" BR "), Some(Coding::Brotli)),
        ];
        for (value, want) in ok {
            assert_eq!(Coding::parse(value), Ok(want), "{value:?}");
        }
        for value in [
            "gzip, br",
            "gzip,gzip",
            "identity, gzip",
            "zstd",
            "compress",
            "brotli",
        ] {
            let err = Coding::parse(Some(value)).unwrap_err();
            assert_eq!(err, Unsupported(value.to_string()));
            assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
        }
        for coding in ALL {
            assert_eq!(Coding::parse(Some(coding.token())), Ok(Some(coding)));
        }
    }

    #[test]
    fn decoders_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Decoder>();
    }
}
