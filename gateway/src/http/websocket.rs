//! WebSocket messages, read off a relayed upgrade as the bytes pass, so the pipeline sees each
//! message (text, binary, close…) in both directions without the relay re-framing anything.
//!
//! A streaming RFC 6455 frame parser: fragments are reassembled per message, client frames are
//! unmasked, and a message's payload is kept up to a cap (its full length is always counted).
//! It never changes the bytes it is shown; a protocol violation just stops the parsing.
use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 text, 2 binary, 8 close, 9 ping, 10 pong.
    pub opcode: u8,
    /// The whole payload length, even past the cap.
    pub len: u64,
    /// The payload, up to the cap.
    pub payload: Bytes,
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self.opcode {
            1 => "text",
            2 => "binary",
            8 => "close",
            9 => "ping",
            10 => "pong",
            _ => "other",
        }
    }
}

enum State {
    /// Collecting a frame header.
    Header,
    /// Inside a frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        offset: usize,
        fin: bool,
        control: Option<u8>,
    },
    /// Saw something that is not WebSocket: stop looking.
    Broken,
}

pub struct Parser {
    state: State,
    header: BytesMut,
    cap: usize,
    /// The data message being reassembled: opcode, length so far, payload so far.
    data: Option<(u8, u64, BytesMut)>,
    /// A control frame being read (never fragmented).
    control: Option<(u64, BytesMut)>,
}

impl Parser {
    pub fn new(cap: usize) -> Self {
        Self {
            state: State::Header,
            header: BytesMut::new(),
            cap,
            data: None,
            control: None,
        }
    }

    /// Feeds relayed bytes; complete messages are pushed to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<Message>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Broken => return,
                State::Header => {
                    // Two bytes tell the header's full length; then take the rest of it.
                    let need = header_len(&self.header).unwrap_or(2);
                    let take = need.saturating_sub(self.header.len()).min(input.len());
                    self.header.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let Some(full) = header_len(&self.header) else {
                        continue;
                    };
                    if self.header.len() < full {
                        continue;
                    }
                    self.start_frame(out);
                }
                State::Payload {
                    remaining,
                    mask,
                    offset,
                    fin,
                    control,
                } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    let mut chunk = input[..n].to_vec();
                    if let Some(key) = mask {
                        for (i, b) in chunk.iter_mut().enumerate() {
                            *b ^= key[(*offset + i) % 4];
                        }
                        *offset += n;
                    }
                    input = &input[n..];
                    *remaining -= n as u64;
                    let (done, fin, control) = (*remaining == 0, *fin, *control);
                    let cap = self.cap;
                    let target = if control.is_some() {
                        self.control.as_mut().map(|(len, buf)| (len, buf))
                    } else {
                        self.data.as_mut().map(|(_, len, buf)| (len, buf))
                    };
                    if let Some((len, buf)) = target {
                        *len += n as u64;
                        let room = cap.saturating_sub(buf.len()).min(chunk.len());
                        buf.extend_from_slice(&chunk[..room]);
                    }
                    if done {
                        self.end_frame(fin, control, out);
                    }
                }
            }
        }
    }

    fn start_frame(&mut self, out: &mut Vec<Message>) {
        let h = std::mem::take(&mut self.header);
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let control = (opcode >= 8).then_some(opcode);
        match opcode {
            0 if self.data.is_none() => return self.state = State::Broken,
            1 | 2 => self.data = Some((opcode, 0, BytesMut::new())),
            0 => {}
            8..=10 => self.control = Some((0, BytesMut::new())),
            _ => return self.state = State::Broken,
        }
        self.state = State::Payload {
            remaining: len,
            mask,
            offset: 0,
            fin,
            control,
        };
        if len == 0 {
            self.end_frame(fin, control, out);
        }
    }

    fn end_frame(&mut self, fin: bool, control: Option<u8>, out: &mut Vec<Message>) {
        self.state = State::Header;
        if let Some(opcode) = control {
            if let Some((len, buf)) = self.control.take() {
                out.push(Message {
                    opcode,
                    len,
                    payload: buf.freeze(),
                });
            }
        } else if fin && let Some((opcode, len, buf)) = self.data.take() {
            out.push(Message {
                opcode,
                len,
                payload: buf.freeze(),
            });
        }
    }
}

/// The length of the frame header that starts `h`, once its first two bytes are known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if h[1] & 0x80 != 0 { 4 } else { 0 })
}

/// Rewrites a server's frames so that its text messages reach the client masked: each text
/// message's payload goes through one streaming masker and out again as frames of the same
/// message (an intermediary may refragment, RFC 6455 §5.4). Binary messages, control frames and
/// compressed (RSV1) messages pass byte for byte; so does everything after something that is not
/// WebSocket. Holds at most one frame's masked output, or 64 KiB of it.
pub struct TextMasker {
    masker: crate::mask::Masker,
    header: BytesMut,
    state: Rewrite,
    /// The text message being masked, and whether its first frame has gone out.
    text: Option<(crate::mask::StreamMasker, bool)>,
    /// A message passed through untouched (binary, compressed) continues in later frames.
    passing: bool,
    out: Vec<u8>,
    found: Vec<crate::mask::Finding>,
}

enum Rewrite {
    Header,
    /// Copy this many payload bytes as they are.
    Copy(u64),
    /// Mask this many payload bytes of a text message; `fin` ends the message.
    Text {
        remaining: u64,
        fin: bool,
    },
    Broken,
}

/// Masked output of a text message is sent as a fragment once this much has gathered.
const FLUSH_AT: usize = 64 * 1024;

fn frame_header(fin: bool, opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match len {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

impl TextMasker {
    pub fn new(masker: crate::mask::Masker) -> Self {
        Self {
            masker,
            header: BytesMut::new(),
            state: Rewrite::Header,
            text: None,
            passing: false,
            out: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Sends what the text message has decided so far as a frame of it.
    fn emit(&mut self, output: &mut Vec<u8>, fin: bool) {
        let Some((_, started)) = self.text.as_mut() else {
            return;
        };
        let opcode = if *started { 0 } else { 1 };
        *started = true;
        frame_header(fin, opcode, self.out.len(), output);
        output.append(&mut self.out);
    }

    /// Takes relayed bytes from the server; appends what the client is to receive to `output`.
    /// Returns what was masked.
    pub fn push(&mut self, mut input: &[u8], output: &mut Vec<u8>) -> Vec<crate::mask::Finding> {
        while !input.is_empty() {
            match &mut self.state {
                Rewrite::Broken => {
                    output.extend_from_slice(input);
                    break;
                }
                Rewrite::Copy(remaining) => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    output.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = Rewrite::Header;
                    }
                }
                Rewrite::Text { remaining, fin } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    *remaining -= n as u64;
                    let (done, fin) = (*remaining == 0, *fin);
                    if let Some((s, _)) = self.text.as_mut() {
                        self.found.extend(s.push(&input[..n], &mut self.out));
                    }
                    input = &input[n..];
                    if done {
                        self.state = Rewrite::Header;
                        self.end_text_frame(fin, output);
                    } else if self.out.len() >= FLUSH_AT {
                        self.emit(output, false);
                    }
                }
                Rewrite::Header => {
                    let need = header_len(&self.header).unwrap_or(2);
                    let take = need.saturating_sub(self.header.len()).min(input.len());
                    self.header.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    match header_len(&self.header) {
                        Some(full) if self.header.len() >= full => self.start(output),
                        _ => {}
                    }
                }
            }
        }
        std::mem::take(&mut self.found)
    }

    fn end_text_frame(&mut self, fin: bool, output: &mut Vec<u8>) {
        if fin {
            if let Some((s, _)) = self.text.as_mut() {
                self.found.extend(s.finish(&mut self.out));
            }
            self.emit(output, true);
            self.text = None;
        } else if !self.out.is_empty() {
            self.emit(output, false);
        }
    }

    fn start(&mut self, output: &mut Vec<u8>) {
        let h = std::mem::take(&mut self.header);
        let fin = h[0] & 0x80 != 0;
        let rsv = h[0] & 0x70;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        let text_frame = !masked
            && rsv == 0
            && ((opcode == 1 && self.text.is_none() && !self.passing)
                || (opcode == 0 && self.text.is_some()));
        if !text_frame {
            match opcode {
                // A continuation of a message ghgate is not masking, or a control frame.
                0 if self.text.is_none() => {}
                1 | 2 => self.passing = !fin,
                0 => {}
                8..=10 => {}
                _ => {
                    // Not WebSocket as ghgate knows it: relay the rest untouched.
                    output.extend_from_slice(&h);
                    self.state = Rewrite::Broken;
                    return;
                }
            }
            if opcode == 0 && fin {
                self.passing = false;
            }
            output.extend_from_slice(&h);
            self.state = if len == 0 {
                Rewrite::Header
            } else {
                Rewrite::Copy(len)
            };
            return;
        }
        if opcode == 1 {
            self.text = Some((self.masker.stream(), false));
        }
        self.state = Rewrite::Text { remaining: len, fin };
        if len == 0 {
            self.state = Rewrite::Header;
            self.end_text_frame(fin, output);
        }
    }
}

/// Relays an upgraded connection both ways, showing each direction's messages to `seen`; with
/// `mask_down`, the server's text messages reach the client masked.
pub async fn relay<A, B>(
    client: A,
    upstream: B,
    cap: usize,
    seen: impl Fn(Direction, &Message) + Send + Sync,
    mask_down: Option<crate::mask::Masker>,
) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = pump(&mut cr, &mut uw, Direction::Up, cap, &seen, None);
    let down = pump(
        &mut ur,
        &mut cw,
        Direction::Down,
        cap,
        &seen,
        mask_down.map(TextMasker::new),
    );
    tokio::try_join!(up, down)
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    dir: Direction,
    cap: usize,
    seen: &(impl Fn(Direction, &Message) + Send + Sync),
    mut rewrite: Option<TextMasker>,
) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut parser = Parser::new(cap);
    let mut buf = vec![0u8; 64 * 1024];
    let mut messages = Vec::new();
    let mut rewritten = Vec::new();
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        match rewrite.as_mut() {
            Some(r) => {
                rewritten.clear();
                let found = r.push(&buf[..n], &mut rewritten);
                crate::mask::metrics::count(&found, "websocket messages");
                to.write_all(&rewritten).await?;
            }
            None => to.write_all(&buf[..n]).await?,
        }
        total += n as u64;
        parser.push(&buf[..n], &mut messages);
        for m in messages.drain(..) {
            seen(dir, &m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn server_text_messages_reach_the_client_masked_at_every_chunking() {
        let masker = crate::mask::Masker::new(crate::mask::Rules::builtin(), [1; 32]);
        let tok = crate::mask::rules::github_classic_token("ghp", "Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy");
        let text = format!("here: {tok} done");
        let (a, b) = text.as_bytes().split_at(12);
        let mut stream = frame(true, 1, text.as_bytes(), None);
        stream.extend(frame(true, 9, b"ping", None));
        stream.extend(frame(false, 1, a, None));
        stream.extend(frame(true, 9, b"", None));
        stream.extend(frame(true, 0, b, None));
        stream.extend(frame(true, 2, tok.as_bytes(), None));
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut r = TextMasker::new(masker.clone());
            let mut out = Vec::new();
            let mut found = 0;
            for c in stream.chunks(chunk) {
                found += r.push(c, &mut out).len();
            }
            let msgs = parse_in_chunks(&out, 5, 1 << 20);
            let texts: Vec<String> = msgs
                .iter()
                .filter(|m| m.opcode == 1)
                .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
                .collect();
            assert_eq!(texts.len(), 2, "chunk {chunk}");
            for t in &texts {
                assert!(
                    t.starts_with("here: [MASKED:github-pat:") && t.ends_with("] done"),
                    "chunk {chunk}: {t}"
                );
            }
            assert_eq!(found, 2);
            let kinds: Vec<&str> = msgs.iter().map(Message::kind).collect();
            assert_eq!(kinds, ["text", "ping", "ping", "text", "binary"], "chunk {chunk}");
            let binary = msgs.last().unwrap();
            assert_eq!(
                &binary.payload[..],
                tok.as_bytes(),
                "binary messages pass as sent"
            );
        }
    }

    fn parse_in_chunks(bytes: &[u8], chunk: usize, cap: usize) -> Vec<Message> {
        let mut p = Parser::new(cap);
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            p.push(c, &mut out);
        }
        out
    }

    #[test]
    fn masked_fragmented_and_interleaved_control_frames_at_every_chunking() {
        let key = Some([1, 2, 3, 4]);
        let big = vec![b'z'; 70_000];
        let mut stream = Vec::new();
        stream.extend(frame(false, 1, b"hello ", key));
        stream.extend(frame(true, 9, b"ping!", key)); // a ping between fragments
        stream.extend(frame(true, 0, b"world", key));
        stream.extend(frame(true, 2, &big, key));
        stream.extend(frame(true, 8, &[0x03, 0xe8], key));
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let got = parse_in_chunks(&stream, chunk, 64);
            let summary: Vec<(&str, u64)> = got.iter().map(|m| (m.kind(), m.len)).collect();
            assert_eq!(
                summary,
                [("ping", 5), ("text", 11), ("binary", 70_000), ("close", 2)],
                "chunk {chunk}"
            );
            assert_eq!(&got[1].payload[..], b"hello world");
            assert_eq!(got[2].payload.len(), 64, "payload kept up to the cap");
        }
    }

    #[test]
    fn unmasked_server_frames_and_garbage() {
        let got = parse_in_chunks(&frame(true, 1, b"from server", None), 5, 1024);
        assert_eq!(&got[0].payload[..], b"from server");
        // A continuation with nothing to continue is not WebSocket: parsing stops quietly.
        let got = parse_in_chunks(&[0x80, 0x00, 0x81, 0x01, b'x'], 1, 1024);
        assert!(got.is_empty());
    }
}
