//! pkt-lines: the framing of every git protocol message, read incrementally and written.
//!
//! A pkt-line is four hex digits giving its whole length, then that many bytes less four; the
//! lengths 0000 (flush), 0001 (delim) and 0002 (response end) carry no data, 0003 is invalid.
//! The reader is fed bytes as they stream, split anywhere, and holds at most one payload. It reads
//! what git's `packet_read_with_status` reads: upper- and lower-case hex digits only (no sign, no
//! space), and payloads of up to 65519 bytes (git's buffer is `LARGE_PACKET_MAX` and keeps one
//! byte for a NUL). Writers send at most `LARGE_PACKET_MAX` (65520) bytes a packet, as git does.
//!
//! Side-band: inside some replies each payload's first byte names a band (1: data, 2: progress,
//! 3: a fatal error), as git's `demultiplex_sideband` reads them.
use crate::oid::preview;

/// The longest pkt-line a writer sends (git's `LARGE_PACKET_MAX`), length digits included.
pub const MAX_PKT_LEN: usize = 65520;
/// The most data one written pkt-line carries.
pub const MAX_DATA_LEN: usize = MAX_PKT_LEN - 4;
/// The most data one pkt-line may carry to be read (git's reader keeps a byte for a NUL).
pub const MAX_READ_DATA_LEN: usize = MAX_PKT_LEN - 1;
/// The most data one side-band packet carries (a band byte besides), as git's `send_sideband`
/// writes for `side-band-64k`.
pub const MAX_SIDEBAND_DATA: usize = MAX_DATA_LEN - 1;

/// One pkt-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Delim,
    ResponseEnd,
    Data(&'a [u8]),
}

impl Pkt<'_> {
    /// What it is, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Pkt::Flush => "flush-pkt",
            Pkt::Delim => "delim-pkt",
            Pkt::ResponseEnd => "response-end-pkt",
            Pkt::Data(_) => "data pkt-line",
        }
    }
}

/// Why bytes are not a pkt-line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    #[error("invalid pkt-line length {}", preview(.0))]
    LengthDigits([u8; 4]),
    #[error("invalid pkt-line length {0:04x}")]
    Length(usize),
    #[error("{0} bytes are more than one pkt-line carries")]
    TooLong(usize),
}

/// Why a stream of pkt-lines ended where it should not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Truncated {
    #[error("the body ended inside a pkt-line")]
    InsidePkt,
    #[error("the body ended before its final flush-pkt")]
    BeforeFlush,
}

/// Splits a byte stream into pkt-lines as it arrives.
#[derive(Debug, Default)]
pub struct PktReader {
    head: [u8; 4],
    head_len: usize,
    in_payload: bool,
    remaining: usize,
    payload: Vec<u8>,
    position: u64,
}

impl PktReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from the front of `input` until one pkt-line is complete; `Ok(None)` when
    /// `input` ran out first (what it held is kept for the next call). A payload that arrives
    /// whole in `input` is borrowed from it, not copied.
    pub fn next<'s, 'c: 's>(&'s mut self, input: &mut &'c [u8]) -> Result<Option<Pkt<'s>>, PktError> {
        if !self.in_payload {
            if self.head_len == 0 && input.len() >= 4 {
                let len = length(&input[..4])?;
                if let Some(pkt) = special(len) {
                    self.take(input, 4);
                    return Ok(Some(pkt));
                }
                if input.len() >= len {
                    let whole: &'c [u8] = input;
                    self.take(input, len);
                    return Ok(Some(Pkt::Data(&whole[4..len])));
                }
            }
            while self.head_len < 4 {
                let Some(&b) = input.first() else {
                    return Ok(None);
                };
                self.head[self.head_len] = b;
                self.head_len += 1;
                self.take(input, 1);
            }
            self.head_len = 0;
            let len = length(&self.head)?;
            if let Some(pkt) = special(len) {
                return Ok(Some(pkt));
            }
            self.in_payload = true;
            self.remaining = len - 4;
            self.payload.clear();
        }
        let n = self.remaining.min(input.len());
        self.payload.extend_from_slice(&input[..n]);
        self.take(input, n);
        self.remaining -= n;
        if self.remaining > 0 {
            return Ok(None);
        }
        self.in_payload = false;
        Ok(Some(Pkt::Data(&self.payload)))
    }

    fn take(&mut self, input: &mut &[u8], n: usize) {
        *input = &input[n..];
        self.position += n as u64;
    }

    /// Whether the input stopped inside a pkt-line.
    pub fn mid_pkt(&self) -> bool {
        self.head_len > 0 || self.in_payload
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The stream ended, `complete` when what it carried was: an error if it ended inside a
    /// pkt-line or before the end of what it carried.
    pub fn end(&self, complete: bool) -> Result<(), Truncated> {
        if self.mid_pkt() {
            Err(Truncated::InsidePkt)
        } else if !complete {
            Err(Truncated::BeforeFlush)
        } else {
            Ok(())
        }
    }
}

/// The length four digits give, checked as git's reader checks it.
fn length(digits: &[u8]) -> Result<usize, PktError> {
    let mut n = 0;
    for &d in digits {
        // Only hex digits: not the sign or spaces a general number parser would take.
        let v = (d as char).to_digit(16).ok_or(PktError::LengthDigits([
            digits[0], digits[1], digits[2], digits[3],
        ]))?;
        n = n * 16 + v as usize;
    }
    match n {
        3 => Err(PktError::Length(n)),
        n if n > 3 && n - 4 > MAX_READ_DATA_LEN => Err(PktError::Length(n)),
        n => Ok(n),
    }
}

fn special(len: usize) -> Option<Pkt<'static>> {
    match len {
        0 => Some(Pkt::Flush),
        1 => Some(Pkt::Delim),
        2 => Some(Pkt::ResponseEnd),
        _ => None,
    }
}

/// A pkt-line's text without its one trailing LF (git reads with `PACKET_READ_CHOMP_NEWLINE`).
pub fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// `data` framed as one pkt-line.
pub fn write(out: &mut Vec<u8>, data: &[u8]) -> Result<(), PktError> {
    if data.len() > MAX_DATA_LEN {
        return Err(PktError::TooLong(data.len()));
    }
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// `text` framed as one pkt-line, cut to fit one if it is longer (at a character boundary).
pub fn write_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_DATA_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    write(out, &text.as_bytes()[..end]).expect("cut to fit");
}

pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

pub fn delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

pub fn response_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0002");
}

/// One side-band packet's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band<'a> {
    /// Band 1: the data itself (a pack, or a report-status).
    Data(&'a [u8]),
    /// Band 2: progress and messages for the user (`remote: …`).
    Progress(&'a [u8]),
    /// Band 3: a fatal error.
    Error(&'a [u8]),
}

/// Why bytes are not a side-band stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidebandError {
    #[error("side-band: a packet has no band")]
    Missing,
    #[error("side-band: bad band #{0}")]
    BadBand(u8),
    #[error("side-band: {0}")]
    Pkt(#[from] PktError),
    #[error("side-band: unexpected {0}")]
    Unexpected(&'static str),
    #[error("side-band: the stream ended before its flush-pkt")]
    Truncated,
}

/// A side-band stream up to its flush-pkt, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demultiplexed<'a> {
    /// Band 1's data, joined.
    pub data: Vec<u8>,
    /// The other bands' pkt-lines, whole and in order.
    pub others: Vec<u8>,
    /// What follows the flush-pkt.
    pub rest: &'a [u8],
}

/// Takes a side-band stream apart up to its flush-pkt, as git's `demultiplex_sideband` reads it.
pub fn demultiplex(stream: &[u8]) -> Result<Demultiplexed<'_>, SidebandError> {
    let mut reader = PktReader::new();
    let mut rest = stream;
    let (mut data, mut others) = (Vec::new(), Vec::new());
    loop {
        let before = reader.position() as usize;
        match reader.next(&mut rest)?.ok_or(SidebandError::Truncated)? {
            Pkt::Flush => return Ok(Demultiplexed { data, others, rest }),
            Pkt::Data(payload) => match band(payload)? {
                Band::Data(d) => data.extend_from_slice(d),
                Band::Progress(_) | Band::Error(_) => {
                    others.extend_from_slice(&stream[before..reader.position() as usize])
                }
            },
            other => return Err(SidebandError::Unexpected(other.name())),
        }
    }
}

/// Which band a side-band payload is on, as git's `demultiplex_sideband` reads it.
pub fn band(payload: &[u8]) -> Result<Band<'_>, SidebandError> {
    match payload.split_first() {
        None => Err(SidebandError::Missing),
        Some((1, rest)) => Ok(Band::Data(rest)),
        Some((2, rest)) => Ok(Band::Progress(rest)),
        Some((3, rest)) => Ok(Band::Error(rest)),
        Some((&b, _)) => Err(SidebandError::BadBand(b)),
    }
}

/// `data` framed as side-band packets of `band` carrying at most `max` bytes each.
pub fn write_sideband(out: &mut Vec<u8>, band: u8, data: &[u8], max: usize) {
    let max = max.clamp(1, MAX_SIDEBAND_DATA);
    let mut packet = Vec::with_capacity(max + 1);
    for part in data.chunks(max) {
        packet.clear();
        packet.push(band);
        packet.extend_from_slice(part);
        write(out, &packet).expect("at most MAX_SIDEBAND_DATA bytes and a band");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pkt-line as the tests see it: its payload (or the special packet's name), `None` for a
    /// flush.
    type Line = Result<Option<Vec<u8>>, PktError>;

    /// Every pkt-line of `input`, fed in pieces of `step` bytes, owned.
    fn read(input: &[u8], step: usize) -> (Vec<Line>, bool) {
        let mut r = PktReader::new();
        let mut out = Vec::new();
        'chunks: for mut chunk in input.chunks(step.max(1)) {
            loop {
                match r.next(&mut chunk) {
                    Ok(Some(p)) => out.push(Ok(match p {
                        Pkt::Data(d) => Some(d.to_vec()),
                        Pkt::Flush => None,
                        other => Some(other.name().as_bytes().to_vec()),
                    })),
                    Ok(None) => continue 'chunks,
                    Err(e) => {
                        out.push(Err(e));
                        break 'chunks;
                    }
                }
            }
        }
        (out, r.mid_pkt())
    }

    #[test]
    fn lines_and_specials_whatever_the_split() {
        let input = b"0009done\n00000001000200040006ab0008\0\x01\xff\x00";
        let (whole, mid) = read(input, usize::MAX);
        assert!(!mid);
        assert_eq!(
            whole,
            vec![
                Ok(Some(b"done\n".to_vec())),
                Ok(None),
                Ok(Some(b"delim-pkt".to_vec())),
                Ok(Some(b"response-end-pkt".to_vec())),
                Ok(Some(Vec::new())),
                Ok(Some(b"ab".to_vec())),
                Ok(Some(b"\0\x01\xff\x00".to_vec())),
            ]
        );
        for step in 1..input.len() {
            assert_eq!(read(input, step), (whole.clone(), false), "step {step}");
        }
        assert!(read(b"0009do", 3).1, "stopped inside a line");
    }

    #[test]
    fn lengths_are_read_as_git_reads_them() {
        // Upper-case digits are hex digits to git too.
        assert_eq!(read(b"000Aabcdef", 100).0, vec![Ok(Some(b"abcdef".to_vec()))]);
        // A sign or a space is not a digit (a general number parser would take "+fff").
        for bad in [&b"+fff"[..], b" 00a", b"00a ", b"zzzz", b"0x10"] {
            let (got, _) = read(bad, 100);
            assert!(
                matches!(got[..], [Err(PktError::LengthDigits(_))]),
                "{bad:?}: {got:?}"
            );
        }
        assert_eq!(read(b"0003", 1).0, vec![Err(PktError::Length(3))]);
        // git's reader takes payloads of up to 65519 bytes, one fewer than its buffer.
        let mut big = b"fff3".to_vec();
        big.resize(0xfff3, b'x');
        assert_eq!(read(&big, 4096).0.len(), 1);
        assert_eq!(read(b"fff4", 4).0, vec![Err(PktError::Length(0xfff4))]);
        assert_eq!(read(b"ffff", 4).0, vec![Err(PktError::Length(0xffff))]);
    }

    #[test]
    fn a_payload_arriving_whole_is_not_copied() {
        let input = b"0008abcd";
        let mut r = PktReader::new();
        let mut rest = &input[..];
        let Some(Pkt::Data(d)) = r.next(&mut rest).unwrap() else {
            panic!()
        };
        assert_eq!(d.as_ptr(), input[4..].as_ptr());
        assert_eq!((rest.len(), r.position()), (0, 8));
    }

    #[test]
    fn writers_frame_and_refuse_what_does_not_fit() {
        let mut out = Vec::new();
        write(&mut out, b"unpack ok\n").unwrap();
        flush(&mut out);
        delim(&mut out);
        response_end(&mut out);
        assert_eq!(out, b"000eunpack ok\n000000010002");
        assert_eq!(
            write(&mut out, &vec![0; MAX_DATA_LEN + 1]),
            Err(PktError::TooLong(65517))
        );
        let mut out = Vec::new();
        write_text(&mut out, &"€".repeat(30_000));
        assert_eq!(out.len(), 4 + MAX_DATA_LEN - 2, "cut at a character boundary");

        let mut out = Vec::new();
        write_sideband(&mut out, 2, b"hello", 2);
        assert_eq!(out, b"0007\x02he0007\x02ll0006\x02o");
        assert_eq!(band(b"\x01PACK"), Ok(Band::Data(b"PACK")));
        assert_eq!(band(b"\x03fatal"), Ok(Band::Error(b"fatal")));
        assert_eq!(band(b""), Err(SidebandError::Missing));
        assert_eq!(band(b"\x05x"), Err(SidebandError::BadBand(5)));

        let mut stream = Vec::new();
        write_sideband(&mut stream, 2, b"progress\n", 4);
        write_sideband(&mut stream, 1, b"0009done\n", 3);
        flush(&mut stream);
        stream.extend_from_slice(b"after");
        let d = demultiplex(&stream).unwrap();
        assert_eq!((d.data.as_slice(), d.rest), (&b"0009done\n"[..], &b"after"[..]));
        assert_eq!(d.others, stream[..d.others.len()]);
        assert_eq!(demultiplex(&stream[..20]), Err(SidebandError::Truncated));
        assert_eq!(demultiplex(b"0001"), Err(SidebandError::Unexpected("delim-pkt")));
    }
}
