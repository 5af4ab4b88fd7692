//! SSE-aware masking of completion streams: the text of each choice is reassembled across events
//! and masked as one stream, so a secret a model emits a few tokens at a time is still found;
//! every event goes out in order, still valid SSE and valid JSON, changed only in its text.
//!
//! Events are read by the one SSE parser ([`super::SseParser`]: lines end with CRLF, LF or a
//! lone CR); which JSON strings of an event are model text is [`crate::payload`]'s to say. Other
//! events are masked on their own. A secret split over events is replaced in the event where it
//! began; the events after it lose their part of it. An event is held only while text it carries
//! is undecided, and events never overtake one another. A block of lines larger than
//! [`MAX_EVENT_DATA`] is not held: what was queued before it goes out (its text streams end
//! there) and its bytes are masked as plain text as they pass.
//!
//! Must never reorder, drop or merge events, or emit a byte of a secret it found.
use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use super::parse::{self, BOM, Block, MAX_EVENT_DATA, SseEvent, SseParser};
use crate::{
    Finding, Masker, Piece, StreamMasker,
    payload::{self, Stream},
};

struct Slot {
    /// Where the text is in the event's JSON.
    pointer: String,
    stream: Stream,
    /// The slot's input text, and its masked output as it is decided.
    input: String,
    output: Vec<u8>,
}

/// A block of lines (an event, or comments and blank lines) waiting to go out.
struct Queued {
    seq: u64,
    /// The block's bytes as received (its blank line included), for verbatim output.
    raw: Vec<u8>,
    /// Leading bytes of `raw` that are not part of a line: the stream's BOM, or the LF of a CRLF
    /// whose CR ended the previous block.
    prefix: usize,
    /// The event's data as the parser read it.
    data: String,
    /// Parsed JSON data and the slots in it, for events with choice text.
    json: Option<Value>,
    slots: Vec<Slot>,
    /// Data that is not choice text, masked on its own: `(masked data, changed)`.
    local: Option<(String, bool)>,
}

/// A slot waiting for its stream's masker to decide its input range `[from, to)`.
struct Waiting {
    seq: u64,
    slot: usize,
    from: u64,
    to: u64,
}

struct Choice {
    masker: StreamMasker,
    /// Text bytes pushed so far.
    pushed: u64,
    /// Input offset the decided output has reached.
    reached: u64,
    waiting: VecDeque<Waiting>,
}

pub struct SseMasker {
    masker: Masker,
    parser: SseParser,
    /// Scratch for the parser's blocks of one chunk.
    blocks: Vec<Block>,
    /// Bytes of the block being read.
    raw: Vec<u8>,
    /// Whether the block being read starts the stream (a BOM may open it).
    at_start: bool,
    /// Whether the last byte of the previous block was a CR.
    after_cr: bool,
    /// The last byte taken.
    last: Option<u8>,
    /// Set while the block being read is too large to hold: its bytes are masked as plain text.
    oversize: Option<StreamMasker>,
    queue: VecDeque<Queued>,
    next_seq: u64,
    choices: BTreeMap<Stream, Choice>,
    findings: Vec<Finding>,
    finished: bool,
}

impl SseMasker {
    pub(crate) fn new(masker: Masker) -> SseMasker {
        SseMasker {
            masker,
            parser: SseParser::new(),
            blocks: Vec::new(),
            raw: Vec::new(),
            at_start: true,
            after_cr: false,
            last: None,
            oversize: None,
            queue: VecDeque::new(),
            next_seq: 0,
            choices: BTreeMap::new(),
            findings: Vec::new(),
            finished: false,
        }
    }

    /// Takes the next bytes of the stream; appends the events now decided to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Vec<Finding> {
        if self.finished {
            return Vec::new();
        }
        let mut blocks = std::mem::take(&mut self.blocks);
        self.parser.feed_blocks(chunk, &mut blocks);
        let mut from = 0;
        for block in blocks.drain(..) {
            self.take(&chunk[from..block.end], out);
            from = block.end;
            self.end_block(block.event, out);
        }
        self.blocks = blocks;
        self.take(&chunk[from..], out);
        self.drain(out);
        std::mem::take(&mut self.findings)
    }

    /// The end of the stream: everything still held goes out, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Finding> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        // A last block without its blank line: an event if it held a field line.
        let last = self.parser.finish();
        if self.oversize.is_some() || !self.raw.is_empty() {
            self.end_block(last, out);
        }
        self.finish_choices(|_| true);
        self.drain(out);
        std::mem::take(&mut self.findings)
    }

    /// Bytes of the block being read.
    fn take(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = bytes.last() else {
            return;
        };
        self.last = Some(last);
        if let Some(plain) = &mut self.oversize {
            self.findings.extend(plain.push(bytes, out));
            return;
        }
        if self.raw.len() + bytes.len() <= MAX_EVENT_DATA {
            self.raw.extend_from_slice(bytes);
            return;
        }
        // Too large to hold: the text streams end here, what waited for them goes out, and this
        // block passes masked as plain text. Within a block nothing is queued or decided, so
        // where a chunk crosses the limit does not change the output.
        self.finish_choices(|_| true);
        self.drain(out);
        debug_assert!(self.queue.is_empty());
        let mut plain = self.masker.stream();
        self.findings
            .extend(plain.push(&std::mem::take(&mut self.raw), out));
        self.findings.extend(plain.push(bytes, out));
        self.oversize = Some(plain);
    }

    /// A block has ended (its blank line read, or the stream's end).
    fn end_block(&mut self, event: Option<SseEvent>, out: &mut Vec<u8>) {
        let at_start = std::mem::replace(&mut self.at_start, false);
        let after_cr = std::mem::replace(&mut self.after_cr, self.last == Some(b'\r'));
        if let Some(mut plain) = self.oversize.take() {
            self.findings.extend(plain.finish(out));
            return;
        }
        let raw = std::mem::take(&mut self.raw);
        let prefix = if at_start && raw.starts_with(BOM) {
            BOM.len()
        } else {
            usize::from(after_cr && raw.first() == Some(&b'\n'))
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut queued = Queued {
            seq,
            raw,
            prefix,
            data: String::new(),
            json: None,
            slots: Vec::new(),
            local: None,
        };
        let Some(event) = event else {
            self.queue.push_back(queued);
            return;
        };
        queued.data = event.data;
        let value = serde_json::from_str::<Value>(&queued.data).ok();
        let (texts, end) = match &value {
            Some(v) => (payload::event_texts(v), payload::event_end(v)),
            None => (Vec::new(), None),
        };
        if texts.is_empty() && end.is_none() {
            // Not a completion event: masked on its own.
            let (masked, findings) = self.masker.mask_str(&queued.data);
            self.findings.extend(findings);
            let changed = masked != queued.data;
            let done = queued.data.trim() == "[DONE]";
            queued.local = Some((masked, changed));
            self.queue.push_back(queued);
            if done {
                self.finish_choices(|_| true);
            }
            return;
        }
        queued.slots = texts
            .into_iter()
            .map(|t| Slot {
                pointer: t.pointer,
                stream: t.stream,
                input: t.text.to_owned(),
                output: Vec::new(),
            })
            .collect();
        queued.json = value;
        let slots: Vec<(usize, Stream, String)> = queued
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.stream.clone(), s.input.clone()))
            .collect();
        self.queue.push_back(queued);
        for (i, stream, text) in slots {
            let masker = &self.masker;
            let choice = self.choices.entry(stream.clone()).or_insert_with(|| Choice {
                masker: masker.stream(),
                pushed: 0,
                reached: 0,
                waiting: VecDeque::new(),
            });
            let from = choice.pushed;
            choice.pushed += text.len() as u64;
            choice.waiting.push_back(Waiting {
                seq,
                slot: i,
                from,
                to: choice.pushed,
            });
            self.feed(&stream, Some(text.as_bytes()));
        }
        if let Some(end) = end {
            self.finish_choices(|s| end.ends(s));
        }
    }

    /// Pushes text into a stream's masker (or finishes it, for `None`) and hands each decided
    /// piece to the slot it came from.
    fn feed(&mut self, key: &Stream, text: Option<&[u8]>) {
        let Some(choice) = self.choices.get_mut(key) else {
            return;
        };
        let mut pieces: Vec<(u64, Vec<u8>, usize, Option<Finding>)> = Vec::new();
        let mut sink = |p: Piece<'_>| match p {
            Piece::Plain { offset, bytes } => pieces.push((offset, bytes.to_vec(), bytes.len(), None)),
            Piece::Masked {
                offset,
                len,
                replacement,
                finding,
            } => pieces.push((
                offset,
                replacement.as_bytes().to_vec(),
                len,
                Some(finding.clone()),
            )),
        };
        match text {
            Some(t) => choice.masker.push_pieces(t, &mut sink),
            None => choice.masker.finish_pieces(&mut sink),
        }
        let front = self.queue.front().map_or(0, |q| q.seq);
        for (offset, bytes, len, finding) in pieces {
            debug_assert_eq!(offset, choice.reached);
            match finding {
                Some(f) => {
                    // A replacement goes whole to the slot where the secret began.
                    if let Some(w) = choice.waiting.iter().find(|w| w.to > offset) {
                        self.queue[(w.seq - front) as usize].slots[w.slot]
                            .output
                            .extend_from_slice(&bytes);
                    }
                    self.findings.push(f);
                }
                None => {
                    let mut at = offset;
                    let mut rest = &bytes[..];
                    for w in choice.waiting.iter().filter(|w| w.to > offset) {
                        if rest.is_empty() {
                            break;
                        }
                        let n = ((w.to - at.max(w.from)) as usize).min(rest.len());
                        self.queue[(w.seq - front) as usize].slots[w.slot]
                            .output
                            .extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                        at += n as u64;
                    }
                }
            }
            choice.reached = offset + len as u64;
        }
        let reached = choice.reached;
        while choice.waiting.front().is_some_and(|w| w.to <= reached) {
            choice.waiting.pop_front();
        }
    }

    fn finish_choices(&mut self, which: impl Fn(&Stream) -> bool) {
        let keys: Vec<Stream> = self.choices.keys().filter(|k| which(k)).cloned().collect();
        for key in keys {
            self.feed(&key, None);
            self.choices.remove(&key);
        }
    }

    /// Whether the event's every slot is decided.
    fn ready(&self, q: &Queued) -> bool {
        q.slots.iter().enumerate().all(|(i, s)| {
            self.choices
                .get(&s.stream)
                .is_none_or(|c| !c.waiting.iter().any(|w| w.seq == q.seq && w.slot == i))
        })
    }

    /// Writes out the events at the front of the queue that are decided.
    fn drain(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.queue.front() {
            if !self.ready(front) {
                break;
            }
            let q = self.queue.pop_front().expect("checked");
            self.emit(q, out);
        }
    }

    fn emit(&mut self, mut q: Queued, out: &mut Vec<u8>) {
        if let Some((masked, changed)) = &q.local {
            if *changed {
                write_event(&q, masked, out);
            } else {
                out.extend_from_slice(&q.raw);
            }
            return;
        }
        let Some(mut value) = q.json.take() else {
            out.extend_from_slice(&q.raw);
            return;
        };
        let mut changed = false;
        for slot in &q.slots {
            let text = String::from_utf8_lossy(&slot.output);
            if text != slot.input {
                changed = true;
                if let Some(t) = value.pointer_mut(&slot.pointer) {
                    *t = Value::String(text.into_owned());
                }
            }
        }
        // What is not choice text (tool arguments, ids) is masked within the event.
        let data = if changed {
            serde_json::to_string(&value).unwrap_or_default()
        } else {
            q.data.clone()
        };
        let (masked, findings) = self.masker.mask_str(&data);
        self.findings.extend(findings);
        let masked = if masked != data && serde_json::from_str::<Value>(&masked).is_err() {
            // The event-local mask cut across JSON syntax: mask string values one by one.
            let mut v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            mask_strings(&self.masker, &mut v, &mut self.findings);
            serde_json::to_string(&v).unwrap_or_default()
        } else {
            masked
        };
        if !changed && masked == data {
            out.extend_from_slice(&q.raw);
        } else {
            write_event(&q, &masked, out);
        }
    }
}

/// The block's lines with its data replaced by `data`: the first `data` line carries it (one
/// line per line of `data`, ended as the block's first line is), the others are dropped; every
/// other line is kept as it was.
fn write_event(q: &Queued, data: &str, out: &mut Vec<u8>) {
    let (prefix, lines) = q.raw.split_at(q.prefix);
    out.extend_from_slice(prefix);
    let eol = parse::lines(lines)
        .map(|(_, eol)| eol)
        .find(|eol| !eol.is_empty())
        .unwrap_or(b"\n");
    let mut wrote = false;
    for (content, ending) in parse::lines(lines) {
        if parse::field_name(content) != b"data" {
            out.extend_from_slice(content);
            out.extend_from_slice(ending);
            continue;
        }
        if !wrote {
            wrote = true;
            for l in data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(eol);
            }
        }
    }
}

fn mask_strings(masker: &Masker, v: &mut Value, findings: &mut Vec<Finding>) {
    match v {
        Value::String(s) => {
            let (masked, f) = masker.mask_str(s);
            findings.extend(f);
            *s = masked;
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask_strings(masker, i, findings)),
        Value::Object(map) => map.values_mut().for_each(|i| mask_strings(masker, i, findings)),
        _ => {}
    }
}
