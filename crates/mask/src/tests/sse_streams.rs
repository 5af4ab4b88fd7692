//! SSE completion streams (OpenAI chat and completions, Anthropic messages): a secret split
//! across events is masked; events keep their number, order, names and JSON; the output does not
//! depend on the chunking; a stream without secrets comes out byte for byte.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

// ---------------------------------------------------------------------------------------------
// A strict SSE reader

#[derive(Debug, Clone, PartialEq)]
struct Event {
    name: Option<String>,
    id: Option<String>,
    data: String,
}

/// Reads what these tests write: `event: `, `id: ` and `data: ` fields only, every line ending in `eol`
/// (and no other line break), every event ending with a blank line, nothing after the last.
#[track_caller]
fn parse_sse(bytes: &[u8], eol: &str) -> Vec<Event> {
    let text = std::str::from_utf8(bytes).expect("SSE output is UTF-8");
    let mut lines: Vec<&str> = text.split(eol).collect();
    assert_eq!(
        lines.pop(),
        Some(""),
        "the stream does not end with a line ending: {text:?}"
    );
    let mut events = Vec::new();
    let (mut name, mut id, mut data): (Option<String>, Option<String>, Option<String>) = (None, None, None);
    let mut open = false;
    for line in lines {
        assert!(!line.contains(['\r', '\n']), "a stray line break in {line:?}");
        if line.is_empty() {
            assert!(open, "an empty event in {text:?}");
            events.push(Event {
                name: name.take(),
                id: id.take(),
                data: data.take().expect("every event has data"),
            });
            open = false;
            continue;
        }
        open = true;
        let (field, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not a field line: {line:?}"));
        match field {
            "event" => assert!(
                name.replace(value.to_owned()).is_none(),
                "two event names: {line:?}"
            ),
            "id" => assert!(id.replace(value.to_owned()).is_none(), "two ids: {line:?}"),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => panic!("unexpected field {field:?}"),
        }
    }
    assert!(!open, "the last event is not terminated: {text:?}");
    events
}

fn event(name: Option<&str>, data: &Value, eol: &str) -> String {
    let name = name.map(|n| format!("event: {n}{eol}")).unwrap_or_default();
    format!("{name}data: {data}{eol}{eol}")
}

// ---------------------------------------------------------------------------------------------
// Completion streams

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Chat,
    Completions,
    Anthropic,
}

fn chat_chunk(delta: Value, index: u64, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

fn completion_chunk(text: &str, index: u64, finish: Option<&str>) -> Value {
    json!({
        "id": "cmpl-9", "object": "text_completion", "created": 1_700_000_000u64,
        "choices": [{"text": text, "index": index, "logprobs": null, "finish_reason": finish}],
        "model": "gpt-3.5-turbo-instruct"
    })
}

fn anthropic_delta(index: u64, text: &str) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})
}

/// A whole stream of `shape` carrying `pieces` (choice index, text) in that order.
fn stream_of(shape: Shape, pieces: &[(u64, String)], eol: &str) -> String {
    let mut choices: Vec<u64> = pieces.iter().map(|(c, _)| *c).collect();
    choices.sort_unstable();
    choices.dedup();
    let mut s = String::new();
    match shape {
        Shape::Chat => {
            for &c in &choices {
                s += &event(
                    None,
                    &chat_chunk(json!({"role": "assistant", "content": ""}), c, None),
                    eol,
                );
            }
            for (c, p) in pieces {
                s += &event(None, &chat_chunk(json!({"content": p}), *c, None), eol);
            }
            for &c in &choices {
                s += &event(None, &chat_chunk(json!({}), c, Some("stop")), eol);
            }
            // With `stream_options.include_usage`: a last chunk with no choices.
            let usage = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}});
            s += &event(None, &usage, eol);
            s += &format!("data: [DONE]{eol}{eol}");
        }
        Shape::Completions => {
            for (c, p) in pieces {
                s += &event(None, &completion_chunk(p, *c, None), eol);
            }
            for &c in &choices {
                s += &event(None, &completion_chunk("", c, Some("length")), eol);
            }
            s += &format!("data: [DONE]{eol}{eol}");
        }
        Shape::Anthropic => {
            let start = json!({"type": "message_start", "message": {
                "id": "msg_01", "type": "message", "role": "assistant", "content": [],
                "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 25, "output_tokens": 1}}});
            s += &event(Some("message_start"), &start, eol);
            for &c in &choices {
                let block = json!({"type": "content_block_start", "index": c, "content_block": {"type": "text", "text": ""}});
                s += &event(Some("content_block_start"), &block, eol);
            }
            s += &event(Some("ping"), &json!({"type": "ping"}), eol);
            for (c, p) in pieces {
                s += &event(Some("content_block_delta"), &anthropic_delta(*c, p), eol);
            }
            for &c in &choices {
                s += &event(
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": c}),
                    eol,
                );
            }
            let delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 15}});
            s += &event(Some("message_delta"), &delta, eol);
            s += &event(Some("message_stop"), &json!({"type": "message_stop"}), eol);
        }
    }
    s
}

/// `text` cut into pieces so that `secret` spans exactly `k` of them; elsewhere cut after
/// each space, as tokenizers do.
fn split(text: &str, secret: &str, k: usize) -> Vec<String> {
    let at = text.find(secret).expect("the secret is in the text");
    let mut cuts: Vec<usize> = text
        .match_indices(' ')
        .map(|(i, _)| i + 1)
        .filter(|&i| i <= at || i >= at + secret.len())
        .collect();
    cuts.extend((1..k).map(|j| at + j * secret.len() / k));
    cuts.push(text.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut from = 0;
    let pieces: Vec<String> = cuts
        .into_iter()
        .map(|c| {
            let p = text[from..c].to_owned();
            from = c;
            p
        })
        .collect();
    let spanning = pieces
        .iter()
        .scan(0, |pos, p| {
            let (s, e) = (*pos, *pos + p.len());
            *pos = e;
            Some(s < at + secret.len() && e > at)
        })
        .filter(|&b| b)
        .count();
    assert_eq!(spanning, k);
    pieces
}

/// Text fields replaced by a marker, to compare everything else.
fn without_text(mut v: Value) -> Value {
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            for ptr in ["/delta/content", "/text"] {
                if let Some(t) = c.pointer_mut(ptr) {
                    *t = json!("<text>");
                }
            }
        }
    } else if v["type"] == "content_block_delta" {
        for ptr in ["/delta/text", "/delta/partial_json"] {
            if let Some(t) = v.pointer_mut(ptr) {
                *t = json!("<text>");
            }
        }
    }
    v
}

/// Each choice's (or content block's) text, reassembled across events.
fn texts_by_choice(events: &[Event]) -> BTreeMap<String, String> {
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for e in events {
        let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
            continue;
        };
        if let Some(choices) = v["choices"].as_array() {
            for c in choices {
                let t = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str);
                if let Some(t) = t {
                    texts
                        .entry(format!("choice {}", c["index"]))
                        .or_default()
                        .push_str(t);
                }
            }
        } else if v["type"] == "content_block_delta" {
            for (ptr, kind) in [("/delta/text", "text"), ("/delta/partial_json", "json")] {
                if let Some(t) = v.pointer(ptr).and_then(Value::as_str) {
                    texts
                        .entry(format!("block {} {kind}", v["index"]))
                        .or_default()
                        .push_str(t);
                }
            }
        }
    }
    texts
}

// ---------------------------------------------------------------------------------------------
// Running and checking

/// Feeds `input` cut at `cuts`.
fn sse_cuts(m: &Masker, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Finding>) {
    feed_cuts(m.sse_stream(), input, cuts)
}

/// The output at 1-byte chunks, random chunks and whole, checked to be one and the same.
#[track_caller]
fn sse_output(m: &Masker, input: &str) -> (Vec<u8>, Vec<Finding>) {
    let input = input.as_bytes();
    let whole = sse_cuts(m, input, &[]);
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        lossy(&sse_cuts(m, input, &bytewise).0),
        lossy(&whole.0),
        "1-byte chunks"
    );
    let mut rng = Rng::new(input.len() as u64);
    for n in [3, 20, 200] {
        let cuts = random_cuts(&mut rng, input.len(), n);
        let got = sse_cuts(m, input, &cuts);
        assert_eq!(lossy(&got.0), lossy(&whole.0), "{n} random cuts {cuts:?}");
        assert_eq!(got.1, whole.1, "findings at {n} random cuts");
    }
    whole
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Masks an SSE stream and checks it: strict SSE out, the same events in the same order with
/// the same names, data the same JSON but for the text fields, each choice's text masked as one
/// stream, no secret left. Returns the output events.
#[track_caller]
fn assert_sse_masked(m: &Masker, input: &str, eol: &str, secrets: &[&str]) -> Vec<Event> {
    let (out, findings) = sse_output(m, input);
    let ins = parse_sse(input.as_bytes(), eol);
    let outs = parse_sse(&out, eol);
    assert_eq!(ins.len(), outs.len(), "event count");
    for (i, (a, b)) in ins.iter().zip(&outs).enumerate() {
        assert_eq!(a.name, b.name, "event {i}'s name");
        assert_eq!(a.id, b.id, "event {i}'s id");
        match serde_json::from_str::<Value>(&a.data) {
            Ok(va) => {
                let vb: Value = serde_json::from_str(&b.data)
                    .unwrap_or_else(|e| panic!("event {i}'s data is not JSON ({e}): {:?}", b.data));
                assert_eq!(without_text(va), without_text(vb), "event {i}, but for its text");
            }
            Err(_) => assert_eq!(a.data, b.data, "event {i}"),
        }
    }
    let (tin, tout) = (texts_by_choice(&ins), texts_by_choice(&outs));
    assert_eq!(tin.keys().collect::<Vec<_>>(), tout.keys().collect::<Vec<_>>());
    for (choice, text) in &tin {
        assert_eq!(tout[choice], m.mask_str(text).0, "{choice}'s text");
    }
    let out = lossy(&out);
    for s in secrets {
        assert!(!out.contains(s), "a secret is still in the output:\n{out}");
        assert_eq!(
            findings
                .iter()
                .filter(|f| f.fingerprint == m.fingerprint(s.as_bytes()))
                .count(),
            1
        );
    }
    outs
}

fn sentence(secret: &str) -> String {
    format!("Sure — here is the value you asked for: {secret} (rotate it after use, please).")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_secret_split_across_2_3_and_10_events_in_each_shape() {
    let m = masker();
    let mut rng = Rng::new(70);
    for shape in [Shape::Chat, Shape::Completions, Shape::Anthropic] {
        for k in [2, 3, 10] {
            let tok = classic(&mut rng, "ghp");
            let text = sentence(&tok);
            let pieces: Vec<(u64, String)> = split(&text, &tok, k).into_iter().map(|p| (0, p)).collect();
            let input = stream_of(shape, &pieces, "\n");
            let outs = assert_sse_masked(&m, &input, "\n", &[&tok]);
            let text_out = texts_by_choice(&outs).into_values().next().unwrap();
            assert!(
                text_out.contains("[MASKED:github-pat:"),
                "{shape:?}, {k} events: {text_out}"
            );
            assert!(
                text_out.ends_with(" (rotate it after use, please)."),
                "{text_out}"
            );
            match shape {
                Shape::Chat | Shape::Completions => assert_eq!(outs.last().unwrap().data, "[DONE]"),
                Shape::Anthropic => assert_eq!(outs.last().unwrap().name.as_deref(), Some("message_stop")),
            }
        }
    }
}

#[test]
fn secrets_in_two_interleaved_choices() {
    let m = masker();
    let mut rng = Rng::new(71);
    for shape in [Shape::Chat, Shape::Completions] {
        let (t0, t1) = (classic(&mut rng, "ghp"), classic(&mut rng, "ghp"));
        let p0 = split(&sentence(&t0), &t0, 3);
        let p1 = split(&format!("Another one, {t1}, and that is all."), &t1, 3);
        let mut pieces = Vec::new();
        for i in 0..p0.len().max(p1.len()) {
            if let Some(p) = p0.get(i) {
                pieces.push((0, p.clone()));
            }
            if let Some(p) = p1.get(i) {
                pieces.push((1, p.clone()));
            }
        }
        let input = stream_of(shape, &pieces, "\n");
        let outs = assert_sse_masked(&m, &input, "\n", &[&t0, &t1]);
        let texts = texts_by_choice(&outs);
        assert_eq!(texts.len(), 2);
        for t in texts.values() {
            assert_eq!(t.matches("[MASKED:github-pat:").count(), 1, "{t}");
        }
    }
}

#[test]
fn crlf_streams_are_masked_and_keep_their_line_endings() {
    let m = masker();
    let mut rng = Rng::new(72);
    for shape in [Shape::Chat, Shape::Anthropic] {
        let tok = classic(&mut rng, "ghp");
        let text = sentence(&tok);
        let pieces: Vec<(u64, String)> = split(&text, &tok, 3).into_iter().map(|p| (0, p)).collect();
        let input = stream_of(shape, &pieces, "\r\n");
        assert_sse_masked(&m, &input, "\r\n", &[&tok]);
    }
}

/// A lone CR ends a line, as the WHATWG rules (and browsers) read SSE. The masker used to keep a
/// lone CR inside its line: a stream ended that way was one never-ending line to it, held whole
/// until the end of the body and then masked as plain text, where a secret split across events
/// is cut apart by JSON syntax and got through. Read as the client reads it, each event is
/// reassembled and masked, and goes out once decided.
#[test]
fn lone_cr_streams_are_read_as_clients_read_them() {
    let m = masker();
    let mut rng = Rng::new(74);
    for shape in [Shape::Chat, Shape::Completions, Shape::Anthropic] {
        let tok = classic(&mut rng, "ghp");
        let text = sentence(&tok);
        let pieces: Vec<(u64, String)> = split(&text, &tok, 3).into_iter().map(|p| (0, p)).collect();
        let input = stream_of(shape, &pieces, "\r");
        assert_sse_masked(&m, &input, "\r", &[&tok]);

        let mut s = m.sse_stream();
        let mut out = Vec::new();
        s.push(input.as_bytes(), &mut out);
        assert!(
            parse_sse(&out, "\r").len() >= pieces.len(),
            "{shape:?}: events are held until the end of the body"
        );
    }
    // The parser's reading of the same bytes: two data lines, not one holding a CR.
    let mut p = crate::sse::SseParser::new();
    let events = p.feed(b"data: a\rdata: b\r\r");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "a\nb");
}

/// An event whose bytes exceed [`crate::sse::MAX_EVENT_DATA`] (the parser's cap on one event)
/// is not held whole: the masker used to buffer an event until its blank line, without bound.
/// Past the cap its bytes go out masked as plain text as they arrive, after every event
/// before it, and a secret in it is still masked.
#[test]
fn an_event_past_the_cap_streams_through_masked() {
    let m = masker();
    let mut rng = Rng::new(75);
    let tok = classic(&mut rng, "ghp");
    let cap = crate::sse::MAX_EVENT_DATA;
    let before = event(None, &chat_chunk(json!({"content": "held? "}), 0, None), "\n");
    let mut input = before.clone().into_bytes();
    input.extend_from_slice(b"data: ");
    let filler = "lorem ipsum dolor sit amet ".repeat(cap / 27 * 3);
    let (head, tail) = filler.split_at(filler.len() / 2);
    input.extend_from_slice(head.as_bytes());
    input.extend_from_slice(format!(" {tok} ").as_bytes());
    input.extend_from_slice(tail.as_bytes());
    input.extend_from_slice(b"\n\n");
    let after = event(
        None,
        &chat_chunk(json!({"content": "after"}), 0, Some("stop")),
        "\n",
    );
    input.extend_from_slice(after.as_bytes());

    let mut s = m.sse_stream();
    let mut out = Vec::new();
    let mut findings = Vec::new();
    let mut fed = 0;
    for chunk in input.chunks(64 * 1024) {
        findings.extend(s.push(chunk, &mut out));
        fed += chunk.len();
        if fed > before.len() + 2 * cap {
            assert!(
                out.len() + cap >= fed,
                "{} bytes held after {fed} fed",
                fed - out.len()
            );
        }
    }
    findings.extend(s.finish(&mut out));
    let out = lossy(&out);
    assert!(
        out.starts_with(&before),
        "the event before it goes out first, as it was"
    );
    assert!(!out.contains(&tok));
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(out.ends_with(&after));
    assert_eq!(
        out.len(),
        input.len() - tok.len() + findings[0].replacement().len()
    );
    // The same whatever the chunking.
    let (whole, _) = sse_cuts(&m, &input, &[]);
    assert_eq!(lossy(&whole), out);
    let (odd, _) = sse_cuts(&m, &input, &[before.len() + cap - 3, before.len() + cap + 5]);
    assert_eq!(lossy(&odd), out);
}

#[test]
fn streams_without_secrets_come_out_byte_for_byte() {
    let m = masker();
    let text = "Tokens are created under Settings → Developer settings; a password = manager helps. \
                Use `gh auth token` to print one, never paste it here: https://github.com/settings/tokens \
                — that's all. ✓";
    let pieces: Vec<(u64, String)> = text.split_inclusive(' ').map(|p| (0, p.to_owned())).collect();
    let mut inputs: Vec<String> = [Shape::Chat, Shape::Completions, Shape::Anthropic]
        .into_iter()
        .flat_map(|shape| [stream_of(shape, &pieces, "\n"), stream_of(shape, &pieces, "\r\n")])
        .collect();
    // Comments, ids, retry fields, data over two lines, and no space after the colon.
    inputs.push(format!(
        ": keep-alive\n\nid: 1\nretry: 3000\ndata: {{\"choices\":[{{\"index\":0,\n\
         data: \"delta\":{{\"content\":\"hi\"}}}}]}}\n\ndata:{}\n\ndata: [DONE]\n\n",
        chat_chunk(json!({"content": " there"}), 0, None)
    ));
    for input in inputs {
        let (out, findings) = sse_output(&m, &input);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(lossy(&out), input);
    }
}

#[test]
fn a_stream_cut_off_before_its_end_is_still_masked() {
    let m = masker();
    let mut rng = Rng::new(73);
    let tok = classic(&mut rng, "ghp");
    let text = format!("the value: {tok}");
    let mut input = String::new();
    for p in split(&text, &tok, 4) {
        input += &event(None, &chat_chunk(json!({"content": p}), 0, None), "\n");
    }
    // No finish_reason, no [DONE]: the connection just ended.
    let outs = assert_sse_masked(&m, &input, "\n", &[&tok]);
    assert!(texts_by_choice(&outs)["choice 0"].ends_with(']'));
    // And cut off before the blank line that ends the last event: it still goes out, masked.
    let partial = &input[..input.len() - 2];
    let (out, findings) = sse_output(&m, partial);
    let out = lossy(&out);
    assert!(!out.contains(&tok));
    assert_eq!(findings.len(), 1);
    assert_eq!(out.matches("data: ").count(), partial.matches("data: ").count());
}

#[test]
fn a_secret_in_tool_call_arguments_is_masked_and_the_json_stays_valid() {
    let m = masker();
    let mut rng = Rng::new(74);
    let tok = classic(&mut rng, "ghp");
    let args = json!({"cmd": format!("gh auth login --with-token {tok}"), "cwd": "/src"}).to_string();
    let call = json!({"tool_calls": [{"index": 0, "id": "call_7", "type": "function",
        "function": {"name": "run_shell", "arguments": args}}]});
    let mut input = event(
        None,
        &chat_chunk(json!({"role": "assistant", "content": null}), 0, None),
        "\n",
    );
    input += &event(None, &chat_chunk(call.clone(), 0, None), "\n");
    input += &event(None, &chat_chunk(json!({}), 0, Some("tool_calls")), "\n");
    input += "data: [DONE]\n\n";
    let (out, findings) = sse_output(&m, &input);
    assert_eq!(findings.len(), 1);
    let outs = parse_sse(&out, "\n");
    assert_eq!(outs.len(), 4);
    let v: Value = serde_json::from_str(&outs[1].data).expect("valid JSON");
    let got_args = v
        .pointer("/choices/0/delta/tool_calls/0/function/arguments")
        .unwrap()
        .as_str()
        .unwrap();
    let got: Value = serde_json::from_str(got_args).expect("the arguments are still JSON");
    assert_eq!(
        got["cmd"],
        format!("gh auth login --with-token {}", findings[0].replacement())
    );
    assert_eq!(got["cwd"], "/src");
    let mut same = v.clone();
    *same
        .pointer_mut("/choices/0/delta/tool_calls/0/function/arguments")
        .unwrap() = json!(args);
    assert_eq!(same, chat_chunk(call, 0, None));
    assert!(!lossy(&out).contains(&tok));
}

/// OpenAI streams a tool call's arguments a few characters per event, like content.
#[test]
fn a_secret_split_across_tool_call_argument_deltas() {
    let m = masker();
    let mut rng = Rng::new(75);
    let tok = classic(&mut rng, "ghp");
    let args = json!({"cmd": format!("gh auth login --with-token {tok}")}).to_string();
    let mut input = String::new();
    for p in split(&args, &tok, 3) {
        let call = json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]});
        input += &event(None, &chat_chunk(call, 0, None), "\n");
    }
    input += &event(None, &chat_chunk(json!({}), 0, Some("tool_calls")), "\n");
    input += "data: [DONE]\n\n";
    let (out, _) = sse_output(&m, &input);
    let outs = parse_sse(&out, "\n");
    let mut joined = String::new();
    for e in &outs[..outs.len() - 2] {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        joined += v
            .pointer("/choices/0/delta/tool_calls/0/function/arguments")
            .unwrap()
            .as_str()
            .unwrap();
    }
    assert!(
        !joined.contains(&tok[4..20]),
        "the token's characters are in the arguments: {joined}"
    );
    assert!(joined.contains("[MASKED:github-pat:"), "{joined}");
}

#[test]
fn a_secret_in_anthropic_tool_input_json_split_across_events() {
    let m = masker();
    let mut rng = Rng::new(76);
    let tok = classic(&mut rng, "ghp");
    let input_json =
        json!({"command": format!("curl -H 'Authorization: token {tok}' https://api.github.com/user")})
            .to_string();
    let mut input = String::new();
    let start = json!({"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "usage": {"input_tokens": 9, "output_tokens": 1}}});
    input += &event(Some("message_start"), &start, "\n");
    let text_block =
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
    input += &event(Some("content_block_start"), &text_block, "\n");
    input += &event(
        Some("content_block_delta"),
        &anthropic_delta(0, "Let me check."),
        "\n",
    );
    input += &event(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
        "\n",
    );
    let tool_block = json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_01", "name": "bash", "input": {}}});
    input += &event(Some("content_block_start"), &tool_block, "\n");
    for p in split(&input_json, &tok, 5) {
        let d = json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": p}});
        input += &event(Some("content_block_delta"), &d, "\n");
    }
    input += &event(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 1}),
        "\n",
    );
    let delta = json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
        "usage": {"output_tokens": 40}});
    input += &event(Some("message_delta"), &delta, "\n");
    input += &event(Some("message_stop"), &json!({"type": "message_stop"}), "\n");
    let outs = assert_sse_masked(&m, &input, "\n", &[&tok]);
    let json_out = &texts_by_choice(&outs)["block 1 json"];
    let v: Value = serde_json::from_str(json_out).expect("the reassembled tool input is still JSON");
    assert!(
        v["command"]
            .as_str()
            .unwrap()
            .contains("token [MASKED:github-pat:"),
        "{v}"
    );
    assert_eq!(texts_by_choice(&outs)["block 0 text"], "Let me check.");
}

#[test]
fn a_private_key_in_a_non_text_field_of_a_text_event() {
    let m = masker();
    let mut rng = Rng::new(77);
    let full = pem(&mut rng, "RSA ", 600);
    // Without its END line, and followed by a quote the JSON escapes.
    let cut = format!("{}\"end\"", &full[..full.find(&format!("{DASHES}END")).unwrap()]);
    for key in [full.clone(), cut] {
        let mut chunk = chat_chunk(json!({"content": "Here is the config."}), 0, None);
        chunk["debug"] = json!({"deploy_key": key, "n": 1});
        let mut input = event(None, &chunk, "\n");
        input += &event(None, &chat_chunk(json!({}), 0, Some("stop")), "\n");
        input += "data: [DONE]\n\n";
        let (out, findings) = sse_output(&m, &input);
        assert_eq!(
            findings.iter().filter(|f| f.rule == "private-key").count(),
            1,
            "{}",
            lossy(&out)
        );
        let outs = parse_sse(&out, "\n");
        assert_eq!(outs.len(), 3);
        let v: Value = serde_json::from_str(&outs[0].data).expect("still valid JSON");
        assert_eq!(
            v.pointer("/choices/0/delta/content").unwrap(),
            "Here is the config."
        );
        let masked = v.pointer("/debug/deploy_key").unwrap().as_str().unwrap();
        assert!(masked.starts_with("[MASKED:private-key:"), "{masked}");
        assert_eq!(v.pointer("/debug/n").unwrap(), 1);
        for line in full.lines().skip(1).take(5) {
            assert!(!lossy(&out).contains(line));
        }
    }
}

#[test]
fn both_choices_in_every_event() {
    let m = masker();
    let mut rng = Rng::new(78);
    let (t0, t1) = (classic(&mut rng, "gho"), classic(&mut rng, "ghu"));
    let p0 = split(&sentence(&t0), &t0, 4);
    let p1 = split(&format!("Second: {t1}. Done."), &t1, 4);
    let mut input = String::new();
    for i in 0..p0.len().max(p1.len()) {
        let mut choices = Vec::new();
        for (c, pieces) in [(0, &p0), (1, &p1)] {
            if let Some(p) = pieces.get(i) {
                choices.push(
                    json!({"index": c, "delta": {"content": p}, "logprobs": null, "finish_reason": null}),
                );
            }
        }
        let chunk = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": choices});
        input += &event(None, &chunk, "\n");
    }
    input += "data: [DONE]\n\n";
    let outs = assert_sse_masked(&m, &input, "\n", &[&t0, &t1]);
    let texts = texts_by_choice(&outs);
    assert!(texts["choice 0"].contains("[MASKED:github-oauth:"));
    assert!(texts["choice 1"].contains("[MASKED:github-user-token:"));
}

#[test]
fn an_exact_value_split_across_events() {
    let mut rng = Rng::new(79);
    let value = format!("{} {} {}", rng.alnum(6), rng.alnum(6), rng.alnum(6));
    let m = masker().with_exact(&[("caller".to_owned(), value.clone().into_bytes())]);
    for shape in [Shape::Chat, Shape::Anthropic] {
        let text = format!("Your credential is {value}, keep it.");
        let pieces: Vec<(u64, String)> = split(&text, &value, 3).into_iter().map(|p| (0, p)).collect();
        let outs = assert_sse_masked(&m, &stream_of(shape, &pieces, "\n"), "\n", &[&value]);
        let text_out = texts_by_choice(&outs).into_values().next().unwrap();
        assert_eq!(
            text_out,
            format!(
                "Your credential is [MASKED:caller:{}], keep it.",
                m.fingerprint(value.as_bytes())
            )
        );
    }
}

#[test]
fn event_ids_and_comments_are_kept_on_changed_events() {
    let m = masker();
    let mut rng = Rng::new(80);
    let tok = classic(&mut rng, "ghp");
    let mut input = String::new();
    for (i, p) in split(&sentence(&tok), &tok, 3).iter().enumerate() {
        input += &format!(
            "id: {i}\n{}",
            event(None, &chat_chunk(json!({"content": p}), 0, None), "\n")
        );
    }
    input += "id: end\ndata: [DONE]\n\n";
    let outs = assert_sse_masked(&m, &input, "\n", &[&tok]);
    assert_eq!(outs.last().unwrap().id.as_deref(), Some("end"));
    // A comment line inside a changed event stays where it was.
    let with_comment = input.replacen("id: 1\n", "id: 1\n: a comment\n", 1);
    let (out, _) = sse_output(&m, &with_comment);
    let out = lossy(&out);
    assert!(out.contains("id: 1\n: a comment\ndata: "), "{out}");
    assert!(!out.contains(&tok));
}

#[test]
fn events_are_held_only_while_their_text_is_undecided() {
    let m = masker();
    let mut rng = Rng::new(81);
    let bound = Rules::builtin()
        .iter()
        .flat_map(|r| r.keywords.iter())
        .map(String::len)
        .max()
        .unwrap();
    let mut s = m.sse_stream();
    let mut out = Vec::new();
    let mut pushed_text = 0;
    let mut ends: Vec<usize> = Vec::new();
    for k in 0..60 {
        let n = 4 + rng.below(6);
        let word = format!("{} ", rng.pick(b"abdefghijlmnoqruvxyz", n));
        pushed_text += word.len();
        ends.push(pushed_text);
        s.push(
            event(None, &chat_chunk(json!({"content": word}), 0, None), "\n").as_bytes(),
            &mut out,
        );
        // Every event whose text ends a keyword's length before the text so far is out.
        let due = ends.iter().filter(|&&e| e + bound <= pushed_text).count();
        let emitted = parse_sse(&out, "\n").len();
        assert!(emitted >= due, "after event {k}: {emitted} out, {due} due");
        assert!(emitted <= k + 1);
    }
    s.push(b"data: [DONE]\n\n", &mut out);
    assert_eq!(parse_sse(&out, "\n").len(), 61, "[DONE] releases everything");
    assert!(s.finish(&mut out).is_empty());
}

/// Extended thinking streams the model's reasoning as `thinking_delta`s of a
/// `content_block_delta`, a few tokens per event, like text.
#[test]
fn a_secret_split_across_anthropic_thinking_deltas() {
    let m = masker();
    let mut rng = Rng::new(82);
    let tok = classic(&mut rng, "ghp");
    let mut input = String::new();
    let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}});
    input += &event(Some("content_block_start"), &block, "\n");
    for p in split(&format!("The user pasted {tok} earlier, so"), &tok, 3) {
        let d = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}});
        input += &event(Some("content_block_delta"), &d, "\n");
    }
    input += &event(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
        "\n",
    );
    input += &event(Some("message_stop"), &json!({"type": "message_stop"}), "\n");
    let (out, _) = sse_output(&m, &input);
    let mut thinking = String::new();
    for e in parse_sse(&out, "\n") {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        if let Some(t) = v.pointer("/delta/thinking").and_then(Value::as_str) {
            thinking += t;
        }
    }
    assert!(
        !thinking.contains(&tok[4..20]),
        "the token's characters are in the thinking: {thinking}"
    );
    assert!(thinking.contains("[MASKED:github-pat:"), "{thinking}");
}

#[test]
fn pings_between_the_pieces_of_a_secret_keep_their_place() {
    let m = masker();
    let mut rng = Rng::new(83);
    let tok = classic(&mut rng, "ghr");
    let mut input = String::new();
    for p in split(&sentence(&tok), &tok, 4) {
        input += &event(Some("content_block_delta"), &anthropic_delta(0, &p), "\n");
        input += &event(Some("ping"), &json!({"type": "ping"}), "\n");
    }
    input += &event(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
        "\n",
    );
    input += &event(Some("message_stop"), &json!({"type": "message_stop"}), "\n");
    let outs = assert_sse_masked(&m, &input, "\n", &[&tok]);
    // The pings stay between the pieces: each went out after the piece before it.
    let names: Vec<Option<String>> = outs.into_iter().map(|e| e.name).collect();
    let want: Vec<Option<String>> = parse_sse(input.as_bytes(), "\n")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, want);
}

#[test]
fn a_secret_split_across_responses_api_deltas() {
    // Copilot's `/responses` streams OpenAI Responses API events: text and function-call
    // arguments arrive as `response.*.delta` events, one stream per output and content index.
    let m = masker();
    let mut rng = Rng::new(84);
    let tok = classic(&mut rng, "ghp");
    let mut input = String::new();
    for (i, p) in split(&sentence(&tok), &tok, 5).into_iter().enumerate() {
        let text = json!({"type": "response.output_text.delta", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": p});
        input += &event(Some("response.output_text.delta"), &text, "\n");
        // Interleaved: a function call's arguments in another output.
        let args = json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1",
            "output_index": 1, "delta": format!("{{\"n\":{i}}}")});
        input += &event(Some("response.function_call_arguments.delta"), &args, "\n");
    }
    let done = json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0});
    input += &event(Some("response.output_text.done"), &done, "\n");
    input += &event(
        Some("response.completed"),
        &json!({"type": "response.completed"}),
        "\n",
    );
    let (out, _) = sse_output(&m, &input);
    let events = parse_sse(&out, "\n");
    assert_eq!(
        events.len(),
        parse_sse(input.as_bytes(), "\n").len(),
        "one event out per event in"
    );
    let mut text = String::new();
    for e in &events {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        if v["type"] == "response.output_text.delta" {
            text += v["delta"].as_str().unwrap();
        }
    }
    assert!(
        !text.contains(&tok[4..20]),
        "the token's characters are in the text: {text}"
    );
    let at = text.find("[MASKED:github-pat:").expect("the token is masked");
    let replacement = &text[at..=at + text[at..].find(']').unwrap()];
    assert_eq!(
        text,
        sentence(&tok).replace(&tok, replacement),
        "only the token changed"
    );
}
