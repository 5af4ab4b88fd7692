//! Which strings of a completion API's JSON are model text: the one place that knows the payload
//! shapes of OpenAI chat completions (`choices[].delta.content`, tool-call arguments), legacy
//! completions (`choices[].text`), the OpenAI Responses API (`response.*.delta` events, `output[]`)
//! and Anthropic messages (`content_block_delta`, `content[]`).
//!
//! The SSE masker reassembles each [`Stream`] across events and masks it as one text; the session
//! view and the exports show the same streams to people. This module only reads JSON: it must
//! never decide what is a secret, and never fail on a shape it does not know (that is no text).
use std::fmt;

use serde_json::Value;

/// A run of model text that continues from event to event: one choice, one tool call's
/// arguments, one content block, one part of a Responses API output item.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// OpenAI chat `delta.content` (or `message.content`) and completions `text` of the choice
    /// with this `index`.
    Choice(u64),
    /// OpenAI chat `function.arguments` of a tool call, by choice and tool-call `index`.
    ToolArguments { choice: u64, call: u64 },
    /// Anthropic `text` of the content block with this `index`.
    BlockText(u64),
    /// Anthropic extended thinking (`thinking`) of a content block.
    BlockThinking(u64),
    /// Anthropic tool input (`partial_json`) of a `tool_use` content block.
    BlockJson(u64),
    /// OpenAI Responses API text of one kind (`output_text`, `function_call_arguments`,
    /// `reasoning_summary_text`, … — the part of `response.<kind>.delta` between the dots) at an
    /// output item and a content part.
    Responses { kind: String, output: u64, content: u64 },
}

impl fmt::Display for Stream {
    /// How people see the stream named: "choice 0", "content block 1", "thinking (block 0)", …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Choice(i) => write!(f, "choice {i}"),
            Stream::ToolArguments { choice, call } => write!(f, "tool call {call} (choice {choice})"),
            Stream::BlockText(b) => write!(f, "content block {b}"),
            Stream::BlockThinking(b) => write!(f, "thinking (block {b})"),
            Stream::BlockJson(b) => write!(f, "tool input (block {b})"),
            Stream::Responses {
                kind,
                output,
                content,
            } => {
                match kind.as_str() {
                    "output_text" => write!(f, "output {output}")?,
                    other => write!(f, "{other} (output {output})")?,
                }
                if *content != 0 {
                    write!(f, ", part {content}")?;
                }
                Ok(())
            }
        }
    }
}

/// One string of model text in a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a> {
    pub stream: Stream,
    /// Where the string is, as a JSON pointer (RFC 6901) into the payload: what
    /// [`Value::pointer_mut`] takes to replace it.
    pub pointer: String,
    pub text: &'a str,
}

/// The texts an event of a streamed completion carries (the JSON of one SSE event's data).
pub fn event_texts(v: &Value) -> Vec<Text<'_>> {
    let mut out = Vec::new();
    if choice_texts(v, "delta", &mut out) {
        return out;
    }
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    if let Some(kind) = responses_kind(kind, ".delta") {
        if let Some(t) = v.get("delta").and_then(Value::as_str) {
            out.push(text(responses_stream(v, kind), "/delta".into(), t));
        }
    } else if kind == "content_block_delta" {
        let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let fields = [
            ("text", Stream::BlockText(block)),
            ("partial_json", Stream::BlockJson(block)),
            ("thinking", Stream::BlockThinking(block)),
        ];
        if let Some((name, stream, t)) = first_string(v.get("delta"), fields) {
            out.push(text(stream, format!("/delta/{name}"), t));
        }
    }
    out
}

/// The streams an event ends: after it, no more of their text comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every stream (`message_stop`, `response.completed`, …).
    All,
    /// These streams; a choice's end also ends its tool calls' arguments.
    Streams(Vec<Stream>),
}

impl End {
    /// Whether `stream` is over after the event.
    pub fn ends(&self, stream: &Stream) -> bool {
        match self {
            End::All => true,
            End::Streams(ended) => {
                ended.contains(stream)
                    || matches!(stream, Stream::ToolArguments { choice, .. }
                        if ended.contains(&Stream::Choice(*choice)))
            }
        }
    }
}

/// Which streams an event ends, if any: a choice with a `finish_reason`, an Anthropic
/// `content_block_stop` or `message_stop`, a Responses API `response.<kind>.done` or the
/// response's end.
pub fn event_end(v: &Value) -> Option<End> {
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        let done: Vec<Stream> = choices
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get("finish_reason").is_some_and(|r| !r.is_null()))
            .map(|(j, c)| Stream::Choice(index_or(c, j)))
            .collect();
        return (!done.is_empty()).then_some(End::Streams(done));
    }
    match v.get("type").and_then(Value::as_str)? {
        "content_block_stop" => {
            let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
            Some(End::Streams(vec![
                Stream::BlockText(block),
                Stream::BlockJson(block),
                Stream::BlockThinking(block),
            ]))
        }
        "message_stop" | "response.completed" | "response.failed" | "response.incomplete" => Some(End::All),
        t => responses_kind(t, ".done").map(|kind| End::Streams(vec![responses_stream(v, kind)])),
    }
}

/// The model text of a whole (not streamed) response body: OpenAI chat `choices[].message`
/// (content and tool-call arguments), completions `choices[].text`, Anthropic `content[]` of a
/// `message`, Responses API `output[]` of a `response`.
pub fn body_texts(v: &Value) -> Vec<Text<'_>> {
    let mut out = Vec::new();
    if choice_texts(v, "message", &mut out) {
        return out;
    }
    match v.get("type").or_else(|| v.get("object")).and_then(Value::as_str) {
        Some("message") => {
            let blocks = v.get("content").and_then(Value::as_array);
            for (n, block) in blocks.into_iter().flatten().enumerate() {
                let fields = [
                    ("text", Stream::BlockText(n as u64)),
                    ("thinking", Stream::BlockThinking(n as u64)),
                ];
                if let Some((name, stream, t)) = first_string(Some(block), fields) {
                    out.push(text(stream, format!("/content/{n}/{name}"), t));
                }
            }
        }
        Some("response") => {
            let items = v.get("output").and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                let output = i as u64;
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        let parts = item.get("content").and_then(Value::as_array);
                        for (j, part) in parts.into_iter().flatten().enumerate() {
                            let kind = part.get("type").and_then(Value::as_str).unwrap_or("output_text");
                            if let Some(t) = part.get("text").and_then(Value::as_str) {
                                let stream = Stream::Responses {
                                    kind: kind.to_owned(),
                                    output,
                                    content: j as u64,
                                };
                                out.push(text(stream, format!("/output/{i}/content/{j}/text"), t));
                            }
                        }
                    }
                    Some("function_call") => {
                        if let Some(t) = item.get("arguments").and_then(Value::as_str) {
                            let stream = Stream::Responses {
                                kind: "function_call_arguments".into(),
                                output,
                                content: 0,
                            };
                            out.push(text(stream, format!("/output/{i}/arguments"), t));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// The texts of OpenAI `choices[]`, each choice's text and tool calls under `part` (`delta` in an
/// event, `message` in a body) or, for legacy completions, its `text`. False when there are no
/// `choices`.
fn choice_texts<'a>(v: &'a Value, part: &str, out: &mut Vec<Text<'a>>) -> bool {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return false;
    };
    for (j, c) in choices.iter().enumerate() {
        let choice = index_or(c, j);
        let inner = c.get(part);
        if let Some(t) = inner.and_then(|d| d.get("content")).and_then(Value::as_str) {
            out.push(text(
                Stream::Choice(choice),
                format!("/choices/{j}/{part}/content"),
                t,
            ));
        } else if let Some(t) = c.get("text").and_then(Value::as_str) {
            out.push(text(Stream::Choice(choice), format!("/choices/{j}/text"), t));
        }
        let calls = inner.and_then(|d| d.get("tool_calls")).and_then(Value::as_array);
        for (k, call) in calls.into_iter().flatten().enumerate() {
            if let Some(t) = call.pointer("/function/arguments").and_then(Value::as_str) {
                let stream = Stream::ToolArguments {
                    choice,
                    call: index_or(call, k),
                };
                let pointer = format!("/choices/{j}/{part}/tool_calls/{k}/function/arguments");
                out.push(text(stream, pointer, t));
            }
        }
    }
    true
}

/// The first of `fields` that `obj` holds as a string: its name, its stream and the string.
fn first_string<'a, const N: usize>(
    obj: Option<&'a Value>,
    fields: [(&'static str, Stream); N],
) -> Option<(&'static str, Stream, &'a str)> {
    let obj = obj?;
    fields
        .into_iter()
        .find_map(|(name, stream)| Some((name, stream, obj.get(name)?.as_str()?)))
}

fn text(stream: Stream, pointer: String, text: &str) -> Text<'_> {
    Text {
        stream,
        pointer,
        text,
    }
}

/// An item's own `index`, or its position in its array when it has none.
fn index_or(item: &Value, position: usize) -> u64 {
    item.get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

/// `kind` of an event type `response.<kind><suffix>`.
fn responses_kind<'t>(event_type: &'t str, suffix: &str) -> Option<&'t str> {
    event_type
        .strip_prefix("response.")?
        .strip_suffix(suffix)
        .filter(|kind| !kind.is_empty())
}

fn responses_stream(v: &Value, kind: &str) -> Stream {
    Stream::Responses {
        kind: kind.to_owned(),
        output: v.get("output_index").and_then(Value::as_u64).unwrap_or(0),
        content: v.get("content_index").and_then(Value::as_u64).unwrap_or(0),
    }
}

/// What a completion API request asks: the model and the prompt as a list of (role, text)
/// messages — chat `messages`, Anthropic `system` and `messages`, Responses API `instructions`
/// and `input`, Gemini-like `contents`, legacy completions' `prompt` — and, for a fill-in-the-
/// middle completion (the Copilot language server's inline completions), the `suffix` the answer
/// must lead into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub model: Option<String>,
    pub messages: Vec<(String, String)>,
    pub suffix: Option<String>,
}

/// The prompt a request body carries, if it is one of the shapes above.
pub fn request_prompt(v: &Value) -> Option<Prompt> {
    let obj = v.as_object()?;
    let mut messages = Vec::new();
    for key in ["system", "instructions", "systemInstruction"] {
        if let Some(s) = obj.get(key) {
            messages.push((key.to_owned(), part_text(s)));
        }
    }
    for key in ["messages", "input", "contents"] {
        match obj.get(key) {
            Some(Value::String(s)) => messages.push((key.to_owned(), s.clone())),
            Some(Value::Array(items)) => messages.extend(items.iter().map(message)),
            _ => {}
        }
    }
    match obj.get("prompt") {
        Some(Value::String(s)) => messages.push(("prompt".into(), s.clone())),
        Some(Value::Array(items)) => {
            messages.extend(items.iter().map(|p| ("prompt".to_owned(), part_text(p))))
        }
        _ => {}
    }
    if messages.is_empty() {
        return None;
    }
    Some(Prompt {
        model: obj.get("model").and_then(Value::as_str).map(String::from),
        messages,
        suffix: obj
            .get("suffix")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from),
    })
}

fn message(m: &Value) -> (String, String) {
    let Some(obj) = m.as_object() else {
        return ("message".into(), part_text(m));
    };
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .or_else(|| obj.get("type").and_then(Value::as_str))
        .unwrap_or("message")
        .to_owned();
    let mut text = match obj.get("content").or_else(|| obj.get("parts")) {
        Some(c) => part_text(c),
        None => part_text(m),
    };
    if let Some(calls) = obj.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(call);
            let name = f.get("name").and_then(Value::as_str).unwrap_or("?");
            let args = f
                .get("arguments")
                .map(|a| a.as_str().map_or_else(|| a.to_string(), String::from));
            text.push_str(&format!("\n[tool call {name}] {}", args.unwrap_or_default()));
        }
    }
    (role, text)
}

/// The readable text of a message content: strings as they are, text parts joined, other parts
/// named by their type with their JSON.
fn part_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().map(part_text).collect::<Vec<_>>().join("\n\n"),
        Value::Object(o) => {
            if let Some(t) = o.get("text").and_then(Value::as_str) {
                return t.to_owned();
            }
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("part");
            match kind {
                "image" | "image_url" | "input_image" => "[image]".into(),
                "tool_result" | "function_call_output" => {
                    let inner = o
                        .get("content")
                        .or_else(|| o.get("output"))
                        .map(part_text)
                        .unwrap_or_default();
                    format!("[{kind}] {inner}")
                }
                _ => {
                    let rest: serde_json::Map<String, Value> = o
                        .iter()
                        .filter(|(k, _)| k.as_str() != "type")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    format!("[{kind}] {}", Value::Object(rest))
                }
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prompts_of_the_common_apis_are_found() {
        let prompt = |body: &[u8]| serde_json::from_slice(body).ok().and_then(|v| request_prompt(&v));
        let p = prompt(br#"{"model":"gpt","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"function":{"name":"ls","arguments":"{}"}}]}]}"#)
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt"));
        assert_eq!(p.messages[0], ("system".into(), "be brief".into()));
        assert_eq!(p.messages[1], ("user".into(), "hi\n\n[image]".into()));
        assert!(p.messages[2].1.contains("[tool call ls] {}"));
        let a = prompt(
            br#"{"system":[{"type":"text","text":"sys"}],"messages":[{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        assert_eq!(
            a.messages,
            [("system".into(), "sys".into()), ("user".into(), "q".into())]
        );
        assert_eq!(
            prompt(br#"{"prompt":"complete me"}"#).unwrap().messages[0].1,
            "complete me"
        );
        assert!(prompt(br#"{"query":"graphql"}"#).is_none());
        assert!(prompt(b"not json").is_none());
        // The Copilot language server's inline completion: a prompt and the suffix to lead into.
        let fim = prompt(
            br#"{"prompt":"// path: src/lib.rs\nfn add(a: i32, b: i32) -> i32 {\n    ","suffix":"\n}\n","max_tokens":500,"temperature":0,"n":1,"stream":true,"extra":{"language":"rust"}}"#,
        )
        .unwrap();
        assert_eq!(
            fim.messages,
            [(
                "prompt".into(),
                "// path: src/lib.rs\nfn add(a: i32, b: i32) -> i32 {\n    ".into()
            )]
        );
        assert_eq!(fim.suffix.as_deref(), Some("\n}\n"));
        assert_eq!(fim.model, None);
    }

    /// (stream label, pointer, text) of each text, and that each pointer finds its text.
    fn seen(v: &Value, texts: Vec<Text<'_>>) -> Vec<(String, String, String)> {
        texts
            .into_iter()
            .map(|t| {
                assert_eq!(
                    v.pointer(&t.pointer).and_then(Value::as_str),
                    Some(t.text),
                    "{}",
                    t.pointer
                );
                (t.stream.to_string(), t.pointer, t.text.to_owned())
            })
            .collect()
    }

    fn one(label: &str, pointer: &str, text: &str) -> (String, String, String) {
        (label.into(), pointer.into(), text.into())
    }

    #[test]
    fn streamed_shapes() {
        let chat = json!({"choices": [
            {"index": 0, "delta": {"content": "Hel"}},
            {"index": 3, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "{\"a\""}}]}},
        ]});
        assert_eq!(
            seen(&chat, event_texts(&chat)),
            [
                one("choice 0", "/choices/0/delta/content", "Hel"),
                one(
                    "tool call 1 (choice 3)",
                    "/choices/1/delta/tool_calls/0/function/arguments",
                    "{\"a\""
                ),
            ]
        );
        let legacy = json!({"choices": [{"text": "lo", "index": 0, "finish_reason": null}]});
        assert_eq!(
            seen(&legacy, event_texts(&legacy)),
            [one("choice 0", "/choices/0/text", "lo")]
        );
        for (field, label) in [
            ("text", "content block 2"),
            ("thinking", "thinking (block 2)"),
            ("partial_json", "tool input (block 2)"),
        ] {
            let v = json!({"type": "content_block_delta", "index": 2, "delta": {field: "x"}});
            assert_eq!(
                seen(&v, event_texts(&v)),
                [one(label, &format!("/delta/{field}"), "x")]
            );
        }
        let responses = json!({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "w"});
        assert_eq!(
            seen(&responses, event_texts(&responses)),
            [one("output 1", "/delta", "w")]
        );
        let args = json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{"});
        assert_eq!(
            seen(&args, event_texts(&args)),
            [one("function_call_arguments (output 2)", "/delta", "{")]
        );
        for none in [
            json!({"type": "message_start", "message": {"content": []}}),
            json!({"type": "response.created", "response": {}}),
            json!({"type": "response..delta", "delta": "x"}),
            json!({"type": "content_block_delta", "delta": {"type": "signature_delta", "signature": "x"}}),
            json!({"choices": [{"delta": {"role": "assistant"}}]}),
            json!("just a string"),
            json!([1, 2]),
        ] {
            assert!(event_texts(&none).is_empty(), "{none}");
        }
    }

    #[test]
    fn what_ends_a_stream() {
        let finish = json!({"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]});
        let end = event_end(&finish).unwrap();
        assert!(end.ends(&Stream::Choice(1)));
        assert!(
            end.ends(&Stream::ToolArguments { choice: 1, call: 4 }),
            "a choice's tool calls end with it"
        );
        assert!(!end.ends(&Stream::Choice(0)));
        assert_eq!(
            event_end(&json!({"choices": [{"index": 0, "finish_reason": null}]})),
            None
        );
        let stop = event_end(&json!({"type": "content_block_stop", "index": 2})).unwrap();
        assert!(stop.ends(&Stream::BlockThinking(2)) && !stop.ends(&Stream::BlockText(1)));
        assert_eq!(event_end(&json!({"type": "message_stop"})), Some(End::All));
        assert_eq!(event_end(&json!({"type": "response.completed"})), Some(End::All));
        let done = event_end(&json!({"type": "response.output_text.done", "output_index": 1})).unwrap();
        let stream = |kind: &str, output| Stream::Responses {
            kind: kind.into(),
            output,
            content: 0,
        };
        assert!(done.ends(&stream("output_text", 1)));
        assert!(!done.ends(&stream("output_text", 0)) && !done.ends(&stream("refusal", 1)));
        assert_eq!(event_end(&json!({"type": "ping"})), None);
    }

    #[test]
    fn whole_bodies() {
        let chat = json!({"choices": [{"index": 0, "message": {"content": "done", "tool_calls": [
            {"function": {"name": "ls", "arguments": "{}"}}]}}]});
        assert_eq!(
            seen(&chat, body_texts(&chat)),
            [
                one("choice 0", "/choices/0/message/content", "done"),
                one(
                    "tool call 0 (choice 0)",
                    "/choices/0/message/tool_calls/0/function/arguments",
                    "{}"
                ),
            ]
        );
        let legacy = json!({"object": "text_completion", "choices": [{"text": "x"}]});
        assert_eq!(
            seen(&legacy, body_texts(&legacy)),
            [one("choice 0", "/choices/0/text", "x")]
        );
        let anthropic = json!({"type": "message", "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "input": {"a": 1}}]});
        assert_eq!(
            seen(&anthropic, body_texts(&anthropic)),
            [
                one("thinking (block 0)", "/content/0/thinking", "hmm"),
                one("content block 1", "/content/1/text", "Hi")
            ]
        );
        let responses = json!({"object": "response", "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "function_call", "name": "f", "arguments": "{\"q\":1}"}]});
        assert_eq!(
            seen(&responses, body_texts(&responses)),
            [
                one("output 1", "/output/1/content/0/text", "ok"),
                one(
                    "function_call_arguments (output 2)",
                    "/output/2/arguments",
                    "{\"q\":1}"
                ),
            ]
        );
        assert!(body_texts(&json!({"query": "graphql"})).is_empty());
    }
}
