//! SSE-aware masking of completion streams: the text of each choice is reassembled across
//! events and masked as one stream, so a secret a model emits a few tokens at a time is still
//! found; every event goes out in order, still valid SSE and valid JSON, changed only in its text.
//!
//! Shapes understood: OpenAI chat (`choices[].delta.content`, tool-call arguments), OpenAI
//! completions (`choices[].text`), the OpenAI Responses API (`response.*.delta` events, as
//! Copilot's `/responses` streams them) and Anthropic messages (`content_block_delta` with
//! `delta.text`, `delta.thinking` or `delta.partial_json`). Other events are masked on their own. A secret split over events is
//! replaced in the event where it began; the events after it lose their part of it. An event is
//! held only while text it carries is undecided, and events never overtake one another.
//!
//! Lines end with LF or CRLF (a lone CR is kept as part of its line). Must never reorder, drop
//! or merge events, or emit a byte of a secret it found.
use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use super::{Finding, Masker, Piece, StreamMasker};

/// Where in an event's JSON a piece of choice text sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `choices[j].delta.content`
    ChatContent(usize),
    /// `choices[j].text`
    CompletionText(usize),
    /// `choices[j].delta.tool_calls[k].function.arguments`
    ToolArguments(usize, usize),
    /// `delta.text` of a `content_block_delta`
    BlockText,
    /// `delta.partial_json` of a `content_block_delta`
    BlockJson,
    /// `delta.thinking` of a `content_block_delta`
    BlockThinking,
    /// `delta` of an OpenAI Responses API `response.*.delta` event
    ResponsesDelta,
}

/// Which text stream a piece belongs to: the choice (or content block) index and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ChoiceKey {
    OpenAi(u64),
    /// A tool call's arguments: (choice index, tool call index).
    OpenAiTool(u64, u64),
    AnthropicText(u64),
    AnthropicJson(u64),
    AnthropicThinking(u64),
    /// A Responses API stream: (event kind, output index, content index).
    Responses(u64, u64, u64),
}

/// A Responses API event kind as a number, so keys stay `Copy`: the part of `type` before
/// `.delta` / `.done` (`response.output_text`, `response.function_call_arguments`, …).
fn responses_kind(kind: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    kind.hash(&mut h);
    h.finish()
}

fn responses_key(v: &Value, kind: &str) -> ChoiceKey {
    ChoiceKey::Responses(
        responses_kind(kind),
        v.get("output_index").and_then(Value::as_u64).unwrap_or(0),
        v.get("content_index").and_then(Value::as_u64).unwrap_or(0),
    )
}

struct Slot {
    field: Field,
    choice: ChoiceKey,
    /// The slot's input text, and its masked output as it is decided.
    input: String,
    output: Vec<u8>,
}

/// An event waiting to go out.
struct Queued {
    seq: u64,
    /// The event's lines as received (blank line included), for verbatim output.
    raw: Vec<u8>,
    /// Parsed JSON data and the slots in it, for events with choice text.
    json: Option<Value>,
    slots: Vec<Slot>,
    /// Data that is not choice text, masked on its own: `(masked data, changed)`.
    local: Option<(String, bool)>,
    eol: &'static str,
}

/// A slot waiting for its choice's masker to decide its input range `[from, to)`.
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

/// The event being read.
#[derive(Default)]
struct Reading {
    raw: Vec<u8>,
    data: Option<String>,
    name: Option<String>,
    eol: Option<&'static str>,
}

pub struct SseMasker {
    masker: Masker,
    line: Vec<u8>,
    reading: Reading,
    queue: VecDeque<Queued>,
    next_seq: u64,
    choices: BTreeMap<ChoiceKey, Choice>,
    findings: Vec<Finding>,
    finished: bool,
}

impl SseMasker {
    pub(crate) fn new(masker: Masker) -> SseMasker {
        SseMasker {
            masker,
            line: Vec::new(),
            reading: Reading::default(),
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
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line.extend_from_slice(&rest[..=nl]);
            rest = &rest[nl + 1..];
            let line = std::mem::take(&mut self.line);
            self.on_line(line);
        }
        self.line.extend_from_slice(rest);
        self.drain(out);
        std::mem::take(&mut self.findings)
    }

    /// The end of the stream: everything still held goes out, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Finding> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        if !self.line.is_empty() {
            // A last line without its line ending: part of the last event.
            let line = std::mem::take(&mut self.line);
            self.reading.raw.extend_from_slice(&line);
            self.field(&line);
        }
        if !self.reading.raw.is_empty() {
            self.dispatch();
        }
        self.finish_choices(|_| true);
        self.drain(out);
        std::mem::take(&mut self.findings)
    }

    fn on_line(&mut self, line: Vec<u8>) {
        let content = strip_eol(&line);
        if self.reading.eol.is_none() {
            self.reading.eol = Some(if line.ends_with(b"\r\n") { "\r\n" } else { "\n" });
        }
        self.reading.raw.extend_from_slice(&line);
        if content.is_empty() {
            self.dispatch();
        } else {
            self.field(content);
        }
    }

    /// One field line of the event being read.
    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match name {
            b"data" => match &mut self.reading.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.reading.data = Some(value),
            },
            b"event" => self.reading.name = Some(value),
            _ => {}
        }
    }

    /// A whole event has been read.
    fn dispatch(&mut self) {
        let reading = std::mem::take(&mut self.reading);
        let seq = self.next_seq;
        self.next_seq += 1;
        let eol = reading.eol.unwrap_or("\n");
        let mut queued = Queued {
            seq,
            raw: reading.raw,
            json: None,
            slots: Vec::new(),
            local: None,
            eol,
        };
        let Some(data) = reading.data else {
            self.queue.push_back(queued);
            return;
        };
        let parsed: Option<Value> = serde_json::from_str(&data).ok();
        let Some(value) = parsed.filter(|v| !texts(v).is_empty() || ends(v).is_some()) else {
            // Not a completion event: masked on its own.
            let (masked, findings) = self.masker.mask_str(&data);
            self.findings.extend(findings);
            let changed = masked != data;
            queued.local = Some((masked, changed));
            self.queue.push_back(queued);
            if data.trim() == "[DONE]" {
                self.finish_choices(|_| true);
            }
            return;
        };
        for (field, choice, text) in texts(&value) {
            queued.slots.push(Slot {
                field,
                choice,
                input: text,
                output: Vec::new(),
            });
        }
        let end = ends(&value);
        queued.json = Some(value);
        let slots: Vec<(usize, ChoiceKey, String)> = queued
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.choice, s.input.clone()))
            .collect();
        self.queue.push_back(queued);
        for (i, key, text) in slots {
            let masker = &self.masker;
            let choice = self.choices.entry(key).or_insert_with(|| Choice {
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
            self.feed(key, Some(text.as_bytes()));
        }
        match end {
            Some(End::All) => self.finish_choices(|_| true),
            Some(End::Choice(keys)) => self.finish_choices(|k| {
                keys.contains(k)
                    || matches!(k, ChoiceKey::OpenAiTool(c, _) if keys.contains(&ChoiceKey::OpenAi(*c)))
            }),
            None => {}
        }
    }

    /// Pushes text into a choice's masker (or finishes it, for `None`) and hands each decided
    /// piece to the slot it came from.
    fn feed(&mut self, key: ChoiceKey, text: Option<&[u8]>) {
        let Some(choice) = self.choices.get_mut(&key) else {
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

    fn finish_choices(&mut self, which: impl Fn(&ChoiceKey) -> bool) {
        let keys: Vec<ChoiceKey> = self.choices.keys().copied().filter(|k| which(k)).collect();
        for key in keys {
            self.feed(key, None);
            self.choices.remove(&key);
        }
    }

    /// Whether the event's every slot is decided.
    fn ready(&self, q: &Queued) -> bool {
        q.slots.iter().enumerate().all(|(i, s)| {
            self.choices
                .get(&s.choice)
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

    fn emit(&mut self, q: Queued, out: &mut Vec<u8>) {
        if let Some((masked, changed)) = &q.local {
            if *changed {
                write_event(&q.raw, masked, q.eol, out);
            } else {
                out.extend_from_slice(&q.raw);
            }
            return;
        }
        let Some(mut value) = q.json else {
            out.extend_from_slice(&q.raw);
            return;
        };
        let mut changed = false;
        for slot in &q.slots {
            let text = String::from_utf8_lossy(&slot.output);
            if text != slot.input {
                changed = true;
                set_text(&mut value, slot.field, &text);
            }
        }
        // What is not choice text (tool arguments, ids) is masked within the event.
        let data = if changed {
            serde_json::to_string(&value).unwrap_or_default()
        } else {
            data_of(&q.raw)
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
            write_event(&q.raw, &masked, q.eol, out);
        }
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The data of an event, from its raw lines.
fn data_of(raw: &[u8]) -> String {
    let mut data: Option<String> = None;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let line = strip_eol(line);
        let value = match line.strip_prefix(b"data") {
            Some(b"") => &b""[..],
            Some(rest) if rest[0] == b':' => rest[1..].strip_prefix(b" ").unwrap_or(&rest[1..]),
            _ => continue,
        };
        let value = String::from_utf8_lossy(value);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => data = Some(value.into_owned()),
        }
    }
    data.unwrap_or_default()
}

/// The event's lines with its data replaced by `data`: the first `data` line carries it (one
/// line per line of `data`), the others are dropped; every other line is kept as it was.
fn write_event(raw: &[u8], data: &str, eol: &str, out: &mut Vec<u8>) {
    let mut wrote = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let content = strip_eol(line);
        let is_data = content == b"data" || content.starts_with(b"data:");
        if !is_data {
            out.extend_from_slice(line);
            continue;
        }
        if !wrote {
            wrote = true;
            for l in data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
        }
    }
}

/// The choice texts an event carries.
fn texts(v: &Value) -> Vec<(Field, ChoiceKey, String)> {
    let mut out = Vec::new();
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for (j, c) in choices.iter().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(j as u64);
            if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                out.push((Field::ChatContent(j), ChoiceKey::OpenAi(index), t.to_owned()));
            } else if let Some(t) = c.get("text").and_then(Value::as_str) {
                out.push((Field::CompletionText(j), ChoiceKey::OpenAi(index), t.to_owned()));
            }
            for (k, call) in c
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let tool = call.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
                if let Some(t) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    out.push((
                        Field::ToolArguments(j, k),
                        ChoiceKey::OpenAiTool(index, tool),
                        t.to_owned(),
                    ));
                }
            }
        }
    } else if let Some(kind) = v
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| t.strip_prefix("response.").and(t.strip_suffix(".delta")))
        && let Some(t) = v.get("delta").and_then(Value::as_str)
    {
        out.push((Field::ResponsesDelta, responses_key(v, kind), t.to_owned()));
    } else if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
            out.push((Field::BlockText, ChoiceKey::AnthropicText(index), t.to_owned()));
        } else if let Some(t) = v.pointer("/delta/partial_json").and_then(Value::as_str) {
            out.push((Field::BlockJson, ChoiceKey::AnthropicJson(index), t.to_owned()));
        } else if let Some(t) = v.pointer("/delta/thinking").and_then(Value::as_str) {
            out.push((
                Field::BlockThinking,
                ChoiceKey::AnthropicThinking(index),
                t.to_owned(),
            ));
        }
    }
    out
}

enum End {
    All,
    /// These text streams (and, for OpenAI choices, their tool calls' arguments) are over.
    Choice(Vec<ChoiceKey>),
}

/// Which text streams an event ends.
fn ends(v: &Value) -> Option<End> {
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        let done: Vec<ChoiceKey> = choices
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get("finish_reason").is_some_and(|r| !r.is_null()))
            .map(|(j, c)| c.get("index").and_then(Value::as_u64).unwrap_or(j as u64))
            .collect::<Vec<u64>>()
            .into_iter()
            .map(ChoiceKey::OpenAi)
            .collect();
        if done.is_empty() {
            return None;
        }
        return Some(End::Choice(done));
    }
    match v.get("type").and_then(Value::as_str) {
        Some("content_block_stop") => {
            let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
            Some(End::Choice(vec![
                ChoiceKey::AnthropicText(index),
                ChoiceKey::AnthropicJson(index),
                ChoiceKey::AnthropicThinking(index),
            ]))
        }
        Some("message_stop" | "response.completed" | "response.failed" | "response.incomplete") => {
            Some(End::All)
        }
        Some(t) if t.starts_with("response.") && t.ends_with(".done") => {
            Some(End::Choice(vec![responses_key(
                v,
                t.strip_suffix(".done").unwrap_or(t),
            )]))
        }
        _ => None,
    }
}

fn set_text(v: &mut Value, field: Field, text: &str) {
    let target = match field {
        Field::ChatContent(j) => v.pointer_mut(&format!("/choices/{j}/delta/content")),
        Field::CompletionText(j) => v.pointer_mut(&format!("/choices/{j}/text")),
        Field::ToolArguments(j, k) => {
            v.pointer_mut(&format!("/choices/{j}/delta/tool_calls/{k}/function/arguments"))
        }
        Field::BlockText => v.pointer_mut("/delta/text"),
        Field::BlockJson => v.pointer_mut("/delta/partial_json"),
        Field::BlockThinking => v.pointer_mut("/delta/thinking"),
        Field::ResponsesDelta => v.pointer_mut("/delta"),
    };
    if let Some(t) = target {
        *t = Value::String(text.to_owned());
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
