//! A streaming parser for Server-Sent Events (the WHATWG `text/event-stream` format): the
//! recorder stores each event of a streamed response as it passes, the SSE masker masks each.
//!
//! Lines end with CRLF, LF or a lone CR. It must never hold more than one event (its data
//! capped at `MAX_EVENT_DATA`, longer data is cut and the event marked), never buffer a whole
//! body, and never panic: every byte sequence is a valid event stream, and invalid UTF-8 becomes
//! U+FFFD.

/// Data kept per event; the rest is counted in `truncated_from`.
pub const MAX_EVENT_DATA: usize = 1 << 20;
/// Bytes kept of an `event`, `id` or `retry` value.
pub const MAX_FIELD_VALUE: usize = 64 << 10;
/// Longer field names are unknown fields, ignored.
const MAX_FIELD_NAME: usize = 8;
/// The byte order mark a stream may start with, skipped once.
pub(crate) const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` when unset or empty (the client sees type "message").
    pub event: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The last event id as the spec defines it: set by an `id:` line in this or an earlier
    /// event, until an `id:` line empties it.
    pub id: Option<String>,
    /// Length in bytes of the whole data when `data` holds only its first `MAX_EVENT_DATA` bytes.
    pub truncated_from: Option<u64>,
}

/// What a blank line closed: a block of lines, which is an event when it held data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Offset in the chunk just fed of the first byte after the blank line's line ending (for a
    /// CRLF, after its CR: the LF goes with the next block).
    pub end: usize,
    /// The event dispatched, or `None` for a block without data (comments, `event:` alone,
    /// extra blank lines).
    pub event: Option<SseEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Start,
    Name,
    Value(Field),
    Comment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Event,
    Data,
    Id,
    Retry,
    Other,
}

/// Parses an event stream fed in chunks split anywhere (inside a line, a UTF-8 sequence, a CRLF
/// or the BOM); the events are the same for every split.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a leading BOM matched so far; `None` once the start of the stream is decided.
    bom: Option<usize>,
    after_cr: bool,
    line: Line,
    name: [u8; MAX_FIELD_NAME],
    name_len: usize,
    name_long: bool,
    strip_space: bool,
    value: Vec<u8>,
    value_cut: bool,
    data: Vec<u8>,
    /// Length of the data buffer as the spec builds it (each line plus LF), kept or not.
    data_len: u64,
    event_type: Vec<u8>,
    last_id: String,
    retry: Option<u64>,
    /// Bytes since the last blank line, and whether they held a field line.
    block_bytes: u64,
    block_fields: bool,
    dispatched: u64,
    undispatched: u64,
    comments: u64,
    truncated: u64,
    finished: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self {
            bom: Some(0),
            after_cr: false,
            line: Line::Start,
            name: [0; MAX_FIELD_NAME],
            name_len: 0,
            name_long: false,
            strip_space: false,
            value: Vec::new(),
            value_cut: false,
            data: Vec::new(),
            data_len: 0,
            event_type: Vec::new(),
            last_id: String::new(),
            retry: None,
            block_bytes: 0,
            block_fields: false,
            dispatched: 0,
            undispatched: 0,
            comments: 0,
            truncated: 0,
            finished: false,
        }
    }

    /// The events this chunk completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Like `feed`, appending to `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.feed_with(chunk, &mut |block: Block| out.extend(block.event));
    }

    /// Like `feed`, but tells every block a blank line closes, event or not, and where in
    /// `chunk` it ended: for a caller that passes the stream's bytes on block by block.
    pub fn feed_blocks(&mut self, chunk: &[u8], out: &mut Vec<Block>) {
        self.feed_with(chunk, &mut |block| out.push(block));
    }

    fn feed_with(&mut self, mut chunk: &[u8], sink: &mut impl FnMut(Block)) {
        if self.finished {
            return;
        }
        let mut skipped = 0;
        while let Some(matched) = self.bom {
            let Some((&b, rest)) = chunk.split_first() else {
                return;
            };
            if b == BOM[matched] {
                chunk = rest;
                skipped += 1;
                self.bom = (matched + 1 < BOM.len()).then_some(matched + 1);
            } else {
                self.bom = None;
                // A BOM's bytes end no line: these end no block, so their offsets never show.
                self.consume(&BOM[..matched], 0, sink);
            }
        }
        self.consume(chunk, skipped, sink);
    }

    /// Ends the stream. An unterminated last event is not dispatched (the spec discards it), but
    /// is returned here when it held a field line, so its bytes are not lost; `trailing_bytes`
    /// counts them either way. Later feeds are ignored.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.finished {
            return None;
        }
        if let Some(matched) = self.bom.take() {
            self.consume(&BOM[..matched], 0, &mut |_| {});
        }
        self.finished = true;
        if let Line::Name | Line::Value(_) = self.line {
            self.end_line();
        }
        if !self.block_fields {
            return None;
        }
        Some(self.take_event())
    }

    /// Events dispatched so far.
    pub fn dispatched(&self) -> u64 {
        self.dispatched
    }

    /// Blocks that ended with a blank line but had no `data` line: not events, per the spec.
    pub fn undispatched(&self) -> u64 {
        self.undispatched
    }

    /// Comment lines (`:` first), which servers send as keep-alives.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Events whose data, and fields whose value, were cut at their cap.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Bytes after the last blank line: an event the stream never finished.
    pub fn trailing_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The reconnection time the last valid `retry:` line set, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.last_id.as_str()).filter(|id| !id.is_empty())
    }

    /// Parses `input`, whose first byte is at offset `base` of the chunk fed.
    fn consume(&mut self, input: &[u8], base: usize, sink: &mut impl FnMut(Block)) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                i += 1;
                continue;
            }
            match self.line {
                Line::Start => match b {
                    b'\r' | b'\n' => {
                        self.after_cr = b == b'\r';
                        i += 1;
                        self.dispatch(base + i, sink);
                    }
                    b':' => {
                        self.line = Line::Comment;
                        self.comments += 1;
                    }
                    _ => {
                        self.line = Line::Name;
                        self.name_len = 0;
                        self.name_long = false;
                    }
                },
                Line::Name => {
                    i += 1;
                    self.block_bytes += 1;
                    match b {
                        b'\r' | b'\n' => {
                            self.after_cr = b == b'\r';
                            self.end_line();
                        }
                        b':' => {
                            self.line = Line::Value(self.field());
                            self.strip_space = true;
                            self.value.clear();
                            self.value_cut = false;
                        }
                        _ if self.name_len < MAX_FIELD_NAME => {
                            self.name[self.name_len] = b;
                            self.name_len += 1;
                        }
                        _ => self.name_long = true,
                    }
                }
                Line::Value(field) => {
                    if std::mem::take(&mut self.strip_space) && b == b' ' {
                        i += 1;
                        self.block_bytes += 1;
                        continue;
                    }
                    let end = line_end(input, i);
                    self.value_bytes(field, &input[i..end]);
                    if self.rest_of_line(input, &mut i, end) {
                        self.end_line();
                    }
                }
                Line::Comment => {
                    let end = line_end(input, i);
                    if self.rest_of_line(input, &mut i, end) {
                        self.line = Line::Start;
                    }
                }
            }
        }
    }

    /// Moves `i` past the rest of its line (to `end`, where the line's ending is or `input`
    /// ends) and past the line ending when `input` holds it: true when the line ended.
    fn rest_of_line(&mut self, input: &[u8], i: &mut usize, end: usize) -> bool {
        self.block_bytes += (end - *i) as u64;
        *i = end;
        let Some(&eol) = input.get(end) else {
            return false;
        };
        *i += 1;
        self.block_bytes += 1;
        self.after_cr = eol == b'\r';
        true
    }

    fn field(&self) -> Field {
        if self.name_long {
            return Field::Other;
        }
        match &self.name[..self.name_len] {
            b"event" => Field::Event,
            b"data" => Field::Data,
            b"id" => Field::Id,
            b"retry" => Field::Retry,
            _ => Field::Other,
        }
    }

    fn value_bytes(&mut self, field: Field, bytes: &[u8]) {
        match field {
            Field::Data => {
                self.data_len += bytes.len() as u64;
                let room = MAX_EVENT_DATA - self.data.len();
                self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Field::Event | Field::Id | Field::Retry => {
                let room = MAX_FIELD_VALUE - self.value.len();
                if bytes.len() > room && !self.value_cut {
                    self.value_cut = true;
                    self.truncated += 1;
                }
                self.value.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Field::Other => {}
        }
    }

    /// A field line has ended (its value already streamed in): apply it.
    fn end_line(&mut self) {
        let field = match self.line {
            Line::Value(field) => field,
            Line::Name => {
                self.value.clear();
                self.field()
            }
            Line::Start | Line::Comment => return,
        };
        self.line = Line::Start;
        self.block_fields = true;
        match field {
            Field::Data => {
                self.data_len += 1;
                if self.data.len() < MAX_EVENT_DATA {
                    self.data.push(b'\n');
                }
            }
            Field::Event => self.event_type = std::mem::take(&mut self.value),
            Field::Id => {
                if !self.value.contains(&0) {
                    self.last_id = String::from_utf8_lossy(&self.value).into_owned();
                }
            }
            Field::Retry => {
                if !self.value.is_empty() && self.value.iter().all(u8::is_ascii_digit) {
                    let parsed = self
                        .value
                        .iter()
                        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
                    if let Some(ms) = parsed {
                        self.retry = Some(ms);
                    }
                }
            }
            Field::Other => {}
        }
    }

    /// A blank line ending at `end`: the block so far becomes an event if it had data.
    fn dispatch(&mut self, end: usize, sink: &mut impl FnMut(Block)) {
        let event = if self.data_len > 0 {
            self.dispatched += 1;
            Some(self.take_event())
        } else {
            if self.block_fields {
                self.undispatched += 1;
            }
            None
        };
        self.event_type.clear();
        self.block_bytes = 0;
        self.block_fields = false;
        sink(Block { end, event });
    }

    fn take_event(&mut self) -> SseEvent {
        let mut data = std::mem::take(&mut self.data);
        let full = self.data_len.saturating_sub(1);
        self.data_len = 0;
        let truncated_from = if full > data.len() as u64 {
            self.truncated += 1;
            trim_cut_char(&mut data);
            Some(full)
        } else {
            data.truncate(full as usize);
            None
        };
        SseEvent {
            event: (!self.event_type.is_empty())
                .then(|| String::from_utf8_lossy(&self.event_type).into_owned()),
            data: match String::from_utf8(data) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            },
            id: self.last_event_id().map(str::to_owned),
            truncated_from,
        }
    }
}

/// Where the line starting at `from` ends (its CR or LF), or the end of `input`.
fn line_end(input: &[u8], from: usize) -> usize {
    input[from..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(input.len(), |p| from + p)
}

/// The lines of `raw` (bytes of an event stream, from a line's start) as the parser reads them:
/// each line's content and its line ending (CRLF, LF, a lone CR, or nothing for a last line
/// without one). For a caller that rewrites some lines of a block and keeps the others.
pub(crate) fn lines(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = line_end(rest, 0);
        let eol = match &rest[end..] {
            [b'\r', b'\n', ..] => 2,
            [] => 0,
            _ => 1,
        };
        let (line, tail) = rest.split_at(end + eol);
        rest = tail;
        Some(line.split_at(end))
    })
}

/// The field a line sets (its name, before the first colon), as the parser reads it; empty for
/// a comment.
pub(crate) fn field_name(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b':').next().unwrap_or(line)
}

/// Drops a UTF-8 sequence cut in two by truncation, so the cut does not become U+FFFD.
fn trim_cut_char(data: &mut Vec<u8>) {
    let tail = data.len().saturating_sub(3);
    if let Some(lead) = (tail..data.len()).rev().find(|&i| data[i] & 0xC0 != 0x80) {
        let need = match data[lead] {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        if data.len() - lead < need {
            data.truncate(lead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a caller can observe after feeding `input` split at `cuts`.
    #[derive(Debug, PartialEq)]
    struct Seen {
        events: Vec<SseEvent>,
        trailing: Option<SseEvent>,
        trailing_bytes: u64,
        counts: [u64; 4],
        retry: Option<u64>,
    }

    fn parse_split(input: &[u8], cuts: &[usize]) -> Seen {
        let mut p = SseParser::new();
        let mut events = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            events.extend(p.feed(&input[from..cut]));
            from = cut;
        }
        let trailing = p.finish();
        let trailing_bytes = p.trailing_bytes();
        assert!(p.feed(b"data: after finish\n\n").is_empty());
        Seen {
            events,
            trailing,
            trailing_bytes,
            counts: [p.dispatched(), p.undispatched(), p.comments(), p.truncated()],
            retry: p.retry(),
        }
    }

    fn parse(input: &[u8]) -> Seen {
        parse_split(input, &[])
    }

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: event.map(Into::into),
            data: data.into(),
            id: id.map(Into::into),
            truncated_from: None,
        }
    }

    /// Same result whole, in 1-byte chunks, at every single cut, and at random cuts.
    fn assert_split_invariant(input: &[u8]) -> Seen {
        let whole = parse(input);
        let ones: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split(input, &ones), whole, "1-byte chunks");
        if input.len() <= 4096 {
            for cut in 0..=input.len() {
                assert_eq!(parse_split(input, &[cut]), whole, "cut at {cut}");
            }
        }
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..50 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                at += (rng % 17) as usize;
                if at >= input.len() {
                    break;
                }
                cuts.push(at);
            }
            assert_eq!(parse_split(input, &cuts), whole, "cuts {cuts:?}");
        }
        whole
    }

    #[test]
    fn spec_examples() {
        let s = assert_split_invariant(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(s.events, vec![ev(None, "YHOO\n+2\n10", None)]);

        let s = assert_split_invariant(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        );
        assert_eq!(
            s.events,
            vec![
                ev(None, "first event", Some("1")),
                ev(None, "second event", None),
                ev(None, " third event", None),
            ]
        );
        assert_eq!(s.counts, [3, 0, 1, 0], "a comment-only block is not an event");

        // The last "data:" never ends its event: not dispatched, but reported by finish.
        let s = assert_split_invariant(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(s.events, vec![ev(None, "", None), ev(None, "\n", None)]);
        assert_eq!(s.trailing, Some(ev(None, "", None)));
        assert_eq!(s.trailing_bytes, 5);

        let s = assert_split_invariant(b"data:test\n\ndata: test\n\n");
        assert_eq!(s.events, vec![ev(None, "test", None), ev(None, "test", None)]);
    }

    #[test]
    fn fields_follow_the_spec() {
        let input = b"event: add\nid: 7\nretry: 2500\ndata: one\n\n\
            data: two\n\n\
            event: ping\n\n\
            id: bad\0id\nretry: 10s\nfoo: bar\ndata\n\n\
            id:\nevent\ndata: three\n\n";
        let s = assert_split_invariant(input);
        assert_eq!(
            s.events,
            vec![
                ev(Some("add"), "one", Some("7")),
                // The id persists; the event type does not.
                ev(None, "two", Some("7")),
                ev(None, "", Some("7")),
                ev(None, "three", None),
            ]
        );
        assert_eq!(
            s.counts,
            [4, 1, 0, 0],
            "`event: ping` alone is counted, not dispatched"
        );
        assert_eq!(s.retry, Some(2500), "`retry: 10s` is ignored");
        assert_eq!(s.trailing, None);
        assert_eq!(s.trailing_bytes, 0);
    }

    #[test]
    fn openai_style_stream() {
        let mut input = Vec::new();
        for word in ["Hel", "lo", " wor", "ld"] {
            let chunk = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": word}}]
            });
            input.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
        }
        input.extend_from_slice(b": keep-alive\n\ndata: [DONE]\n\n");
        let s = assert_split_invariant(&input);
        assert_eq!(s.events.len(), 5);
        let text: String = s.events[..4]
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                v["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, "Hello world");
        assert_eq!(s.events[4], ev(None, "[DONE]", None));
        assert_eq!(s.counts[2], 1);
    }

    #[test]
    fn crlf_cr_and_lf_all_end_lines() {
        // A CRLF is one line end: were it two, "a" and "b" would be separate events.
        let s = assert_split_invariant(
            b"data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: e\ndata: f\n\r\n\r\r\n",
        );
        assert_eq!(
            s.events,
            vec![
                ev(None, "a\nb", None),
                ev(None, "c\nd", None),
                ev(None, "e\nf", None)
            ]
        );
        assert_eq!(s.counts, [3, 0, 0, 0]);

        // A CR ending one chunk and its LF starting the next.
        let mut p = SseParser::new();
        assert!(p.feed(b"data: x\r").is_empty());
        assert!(p.feed(b"\ndata: y\r").is_empty());
        assert_eq!(p.feed(b"\n\r"), vec![ev(None, "x\ny", None)]);
        assert!(
            p.feed(b"\n").is_empty(),
            "the LF after a dispatching CR is not a second blank line"
        );
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn a_leading_bom_is_skipped_once() {
        let s = assert_split_invariant(b"\xEF\xBB\xBFdata: x\n\n");
        assert_eq!(s.events, vec![ev(None, "x", None)]);
        // A second BOM, or a partial one, is part of the field name: an unknown field.
        let s = assert_split_invariant(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n");
        assert_eq!((s.events.len(), s.counts[1]), (0, 1));
        let s = assert_split_invariant(b"\xEF\xBBdata: x\n\ndata: y\n\n");
        assert_eq!(s.events, vec![ev(None, "y", None)]);
        let s = assert_split_invariant(b"\xEF\xBB");
        assert_eq!((s.trailing_bytes, s.trailing), (2, Some(ev(None, "", None))));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let s = assert_split_invariant(b"event: \xC3\ndata: a\xFFb\xE2\x82\ndata: \xE2\x82\xAC\n\n");
        assert_eq!(
            s.events,
            vec![ev(Some("\u{FFFD}"), "a\u{FFFD}b\u{FFFD}\n\u{20AC}", None)]
        );
    }

    #[test]
    fn oversize_data_is_cut_and_marked() {
        let big = MAX_EVENT_DATA + 10;
        let mut input = b"data: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', big));
        input.extend_from_slice(b"\ndata: tail\n\ndata: next\n\n");
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for chunk in input.chunks(4096) {
            events.extend(p.feed(chunk));
            assert!(p.data.len() <= MAX_EVENT_DATA && p.value.len() <= MAX_FIELD_VALUE);
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data.len(), MAX_EVENT_DATA);
        assert_eq!(events[0].truncated_from, Some((big + 1 + 4) as u64));
        assert_eq!(events[1], ev(None, "next", None));
        assert_eq!(p.truncated(), 1);

        // Data exactly at the cap is whole.
        let mut input = b"data: ".to_vec();
        input.extend(std::iter::repeat_n(b'y', MAX_EVENT_DATA));
        input.extend_from_slice(b"\n\n");
        let events = SseParser::new().feed(&input);
        assert_eq!(
            (events[0].data.len(), events[0].truncated_from),
            (MAX_EVENT_DATA, None)
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is 2 bytes; an odd cap offset puts the cut inside one.
        let mut input = b"data: x".to_vec();
        for _ in 0..MAX_EVENT_DATA {
            input.extend_from_slice("é".as_bytes());
        }
        input.extend_from_slice(b"\n\n");
        let events = SseParser::new().feed(&input);
        let data = &events[0].data;
        assert!(!data.contains('\u{FFFD}'));
        assert_eq!(data.len(), MAX_EVENT_DATA - 1);
        assert_eq!(events[0].truncated_from, Some(1 + 2 * MAX_EVENT_DATA as u64));
    }

    #[test]
    fn oversize_field_values_are_cut() {
        let mut input = b"event: ".to_vec();
        input.extend(std::iter::repeat_n(b'e', MAX_FIELD_VALUE * 3));
        input.extend_from_slice(b"\ndata: d\n\n");
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for chunk in input.chunks(1000) {
            events.extend(p.feed(chunk));
        }
        assert_eq!(events[0].event.as_ref().map(String::len), Some(MAX_FIELD_VALUE));
        assert_eq!(events[0].data, "d");
        assert_eq!(p.truncated(), 1);
    }

    #[test]
    fn an_unfinished_event_is_reported_not_dispatched() {
        let s = assert_split_invariant(b"data: done\n\nevent: partial\ndata: hal");
        assert_eq!(s.events, vec![ev(None, "done", None)]);
        assert_eq!(s.trailing, Some(ev(Some("partial"), "hal", None)));
        assert_eq!(s.trailing_bytes, 24);
        assert_eq!(s.counts[0], 1);
        // Only a comment after the last event: bytes seen, no event.
        let s = assert_split_invariant(b"data: done\n\n: ping");
        assert_eq!((s.trailing, s.trailing_bytes), (None, 6));
    }

    #[test]
    fn blocks_say_where_each_blank_line_ended() {
        let input = b"\xEF\xBB\xBF: hi\n\ndata: a\r\n\r\nevent: x\n\n\ndata: b\rdata: c\r\r";
        let mut p = SseParser::new();
        let mut blocks = Vec::new();
        p.feed_blocks(input, &mut blocks);
        let ends: Vec<usize> = blocks.iter().map(|b| b.end).collect();
        assert_eq!(ends, [9, 19, 30, 31, 48]);
        let events: Vec<Option<&str>> = blocks
            .iter()
            .map(|b| b.event.as_ref().map(|e| e.data.as_str()))
            .collect();
        assert_eq!(events, [None, Some("a"), None, None, Some("b\nc")]);
        assert_eq!(input[ends[1]], b'\n', "a CRLF's LF starts the next block");
        // Offsets are in the chunk fed, a BOM split over chunks included.
        let mut p = SseParser::new();
        let mut blocks = Vec::new();
        p.feed_blocks(b"\xEF\xBB", &mut blocks);
        p.feed_blocks(b"\xBFdata: z\n\n", &mut blocks);
        assert_eq!(blocks.iter().map(|b| b.end).collect::<Vec<_>>(), [10]);
    }

    #[test]
    fn lines_end_as_the_parser_ends_them() {
        let got: Vec<(&[u8], &[u8])> = lines(b"a\r\nb\rc\n\r\rd").collect();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"\r\n"),
            (b"b", b"\r"),
            (b"c", b"\n"),
            (b"", b"\r"),
            (b"", b"\r"),
            (b"d", b""),
        ];
        assert_eq!(got, want);
        assert_eq!(field_name(b"data: x: y"), b"data");
        assert_eq!(field_name(b"data"), b"data");
        assert_eq!(field_name(b": comment"), b"");
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            let len = (rng % 300) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    b"data:event:id:retry: \r\n\r\n:xy\xEF\xBB\xBF\xFF0123"[(rng % 34) as usize]
                })
                .collect();
            let whole = parse(&input);
            let ones: Vec<usize> = (1..input.len()).collect();
            assert_eq!(parse_split(&input, &ones), whole, "{input:?}");
        }
    }
}
