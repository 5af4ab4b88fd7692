//! The SSE masker on completion streams. Most inputs become a well-formed stream (OpenAI chat,
//! OpenAI completions or Anthropic messages; one to three choices; LF or CRLF) whose text carries
//! secrets planted where the input chooses, split over events where the input chooses, and cut
//! into chunks the input chooses. The output must be valid SSE with the same events, each still
//! valid JSON that differs from its input only in its text; no choice's reassembled text may hold
//! a planted secret; and the output must not depend on the chunking. The other inputs are fed to
//! the masker as raw bytes: it must not panic, and its output must not depend on the chunking.
#![no_main]

use std::collections::BTreeMap;

use ghgate_mask::{Masker, Rules};
use ghgate_fuzz::{KEY, Plants, assert_same_output, chunk_sizes, chunks, self_check};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use serde_json::{Value, json};

thread_local! {
    static MASKER: Masker = {
        let masker = Masker::new(Rules::builtin(), KEY);
        self_check(&masker);
        masker
    };
}

#[derive(Clone, Copy, Debug)]
enum Style {
    Chat,
    Completion,
    Anthropic,
}

/// One dispatched SSE event: its `event:` type and its data (lines joined with `\n`).
#[derive(Debug)]
struct Event {
    event: Option<String>,
    data: String,
}

/// Parses an SSE stream as the HTML standard does, but strictly: every line must be blank, a
/// comment or one of the four fields, and the stream must end on an event boundary.
fn parse_sse(stream: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let (mut event, mut data, mut in_event) = (None, String::new(), false);
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest
            .find(['\r', '\n'])
            .ok_or("the last line has no line ending")?;
        let line = &rest[..end];
        let eol = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[end + eol..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(Event {
                    event: event.take(),
                    data: std::mem::take(&mut data),
                });
            }
            (event, in_event) = (None, false);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        in_event = true;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event = Some(value.to_owned()),
            "id" | "retry" => {}
            _ => return Err(format!("line {line:?} is not an SSE field")),
        }
    }
    if in_event {
        return Err("the stream ends inside an event".into());
    }
    Ok(events)
}

/// `text` cut into pieces of `sizes` characters, cycled from `start`.
fn split<'t>(text: &'t str, sizes: &[usize], start: usize) -> Vec<&'t str> {
    let (mut pieces, mut rest, mut k) = (Vec::new(), text, start);
    while !rest.is_empty() {
        let n = sizes[k % sizes.len()];
        k += 1;
        let end = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces
}

/// A completion stream whose every choice carries `text`, split differently per choice, the
/// choices' events interleaved.
fn stream(style: Style, choices: usize, text: &str, sizes: &[usize], eol: &str) -> String {
    let mut events: Vec<(Option<&str>, Value)> = Vec::new();
    let delta = |i: usize, piece: &str| match style {
        Style::Chat => json!({"id": "chatcmpl-fuzz", "object": "chat.completion.chunk",
            "choices": [{"index": i, "delta": {"content": piece}, "finish_reason": null}]}),
        Style::Completion => json!({"id": "cmpl-fuzz", "object": "text_completion",
            "choices": [{"index": i, "text": piece, "finish_reason": null}]}),
        Style::Anthropic => json!({"type": "content_block_delta", "index": i,
            "delta": {"type": "text_delta", "text": piece}}),
    };
    match style {
        Style::Chat => events.extend((0..choices).map(|i| {
            let role = json!({"id": "chatcmpl-fuzz", "object": "chat.completion.chunk",
                "choices": [{"index": i, "delta": {"role": "assistant"}, "finish_reason": null}]});
            (None, role)
        })),
        Style::Completion => {}
        Style::Anthropic => {
            let start = json!({"type": "message_start",
                "message": {"id": "msg_fuzz", "role": "assistant", "content": []}});
            events.push((Some("message_start"), start));
            events.extend((0..choices).map(|i| {
                let block = json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": ""}});
                (Some("content_block_start"), block)
            }));
        }
    }
    let pieces: Vec<Vec<&str>> = (0..choices).map(|i| split(text, sizes, i)).collect();
    let rounds = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..rounds {
        for (i, pieces) in pieces.iter().enumerate() {
            if let Some(piece) = pieces.get(k) {
                let name = matches!(style, Style::Anthropic).then_some("content_block_delta");
                events.push((name, delta(i, piece)));
            }
        }
    }
    let mut out = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            out.push_str(&format!("event: {name}{eol}"));
        }
        out.push_str(&format!("data: {data}{eol}{eol}"));
    }
    match style {
        Style::Chat | Style::Completion => out.push_str(&format!("data: [DONE]{eol}{eol}")),
        Style::Anthropic => out.push_str(&format!(
            "event: message_stop{eol}data: {}{eol}{eol}",
            json!({"type": "message_stop"})
        )),
    }
    out
}

/// The JSON with every `content` and `text` string emptied: what masking may not change.
fn without_text(mut v: Value) -> Value {
    fn blank(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if (k == "content" || k == "text") && v.is_string() {
                        *v = Value::String(String::new());
                    } else {
                        blank(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(blank),
            _ => {}
        }
    }
    blank(&mut v);
    v
}

/// Appends an event's text to the choice it belongs to.
fn collect_text(v: &Value, texts: &mut BTreeMap<u64, String>) {
    let mut add = |index: &Value, text: &Value| {
        if let (Some(i), Some(t)) = (index.as_u64(), text.as_str()) {
            texts.entry(i).or_default().push_str(t);
        }
    };
    if let Some(choices) = v["choices"].as_array() {
        for c in choices {
            add(&c["index"], &c["delta"]["content"]);
            add(&c["index"], &c["text"]);
        }
    } else if v["type"] == "content_block_delta" {
        add(&v["index"], &v["delta"]["text"]);
    }
}

fn mask(masker: &Masker, input: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut sse = masker.sse_stream();
    let mut out = Vec::new();
    for chunk in chunks(input, sizes) {
        sse.push(chunk, &mut out);
    }
    sse.finish(&mut out);
    out
}

fn check_structured(masker: &Masker, mut u: Unstructured) {
    let style = [Style::Chat, Style::Completion, Style::Anthropic][u.choose_index(3).unwrap_or(0)];
    let choices = 1 + u.choose_index(3).unwrap_or(0);
    let eol = if u.arbitrary().unwrap_or(false) {
        "\r\n"
    } else {
        "\n"
    };
    let plants = Plants::arbitrary(&mut u);
    let n = u.int_in_range(1..=8).unwrap_or(1);
    let mut event_sizes: Vec<usize> = (0..n).map(|_| u.int_in_range(0..=48).unwrap_or(1)).collect();
    if event_sizes.iter().all(|&s| s == 0) {
        event_sizes.push(1);
    }
    let sizes = chunk_sizes(&mut u);
    let filler = String::from_utf8_lossy(u.take_rest()).into_owned();
    let text = String::from_utf8(plants.plant(filler.as_bytes(), Some(&filler)))
        .expect("planted at char boundaries");
    let input = stream(style, choices, &text, &event_sizes, eol);

    let out = mask(masker, input.as_bytes(), &sizes);
    let whole = mask(masker, input.as_bytes(), &[input.len().max(1)]);
    assert_same_output(&out, &whole, "SseMasker chunked vs in one push");

    let out = std::str::from_utf8(&out).expect("the SSE output is not UTF-8");
    let got = parse_sse(out).unwrap_or_else(|e| panic!("the output is not valid SSE ({style:?}): {e}"));
    let want = parse_sse(&input).expect("the harness builds valid SSE");
    assert_eq!(
        got.len(),
        want.len(),
        "the output has a different number of events ({style:?})"
    );
    let mut texts = BTreeMap::new();
    for (n, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got.event, want.event, "event {n}: its type changed");
        if want.data == "[DONE]" {
            assert_eq!(got.data, want.data, "event {n}: [DONE] changed");
            continue;
        }
        let value: Value = serde_json::from_str(&got.data)
            .unwrap_or_else(|e| panic!("event {n}: data is not JSON ({e}): {:?}", got.data));
        collect_text(&value, &mut texts);
        let original: Value = serde_json::from_str(&want.data).expect("the harness builds JSON");
        assert_eq!(
            without_text(value),
            without_text(original),
            "event {n}: more than its text changed"
        );
    }
    for (choice, text) in &texts {
        plants.assert_masked(
            text.as_bytes(),
            filler.as_bytes(),
            &format!("choice {choice}'s text"),
        );
    }
}

fn check_raw(masker: &Masker, mut u: Unstructured) {
    let sizes = chunk_sizes(&mut u);
    let input = u.take_rest();
    let out = mask(masker, input, &sizes);
    let whole = mask(masker, input, &[input.len().max(1)]);
    assert_same_output(&out, &whole, "SseMasker on raw bytes, chunked vs in one push");
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    MASKER.with(|masker| {
        if u.ratio(1, 8).unwrap_or(false) {
            check_raw(masker, u);
        } else {
            check_structured(masker, u);
        }
    });
});
