//! Exports of a session: HAR 1.2 for HTTP tools, JSON lines (the records exactly as stored) for
//! scripts, and one self-contained HTML page for an auditor.
//!
//! Recorded data is hostile: in the HTML page every recorded byte is escaped text, never markup,
//! never an attribute that loads or runs anything; the page loads nothing from anywhere (its
//! Content-Security-Policy forbids it, and it references no URL), and works without JavaScript.
use std::{borrow::Borrow, fmt::Write as _, io};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    index::host_of,
    model::{
        AnsweredBy, BodySummary, Direction, Exchange, GitOp, GitService, Micros, Record, StreamEvent,
        StreamKind,
    },
    session::{ExchangeView, Fact, SessionView, clock, datetime, duration, iso8601, size},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------------------------------
// HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/)

/// The session as a HAR 1.2 log: one page for the session, one entry per finished exchange.
/// What HAR has no field for (stream events, git operations, body hashes, binary request bodies,
/// unfinished exchanges, the caller's identity) is kept in `_ghgate` custom fields.
pub fn to_har(view: &SessionView) -> Value {
    let page_id = format!("session-{}", view.id());
    let mut finished: Vec<(&ExchangeView, &Exchange)> = view
        .exchanges
        .iter()
        .filter_map(|x| x.exchange.as_ref().map(|e| (x, e)))
        .collect();
    finished.sort_by_key(|(_, e)| e.started_at);
    let entries: Vec<Value> = finished
        .iter()
        .map(|(x, e)| har_entry(view, x, e, &page_id))
        .collect();
    let unfinished: Vec<Value> = view
        .exchanges
        .iter()
        .filter(|x| x.exchange.is_none())
        .map(|x| {
            json!({
                "exchange": x.id,
                "request": x.request,
                "first_at": iso8601(x.first_at),
                "request_body": body_bytes_json(&x.request_body),
                "response_body": body_bytes_json(&x.response_body),
                "stream_events": events_json(&x.events, x.first_at),
                "git": x.git,
                "notes": x.notes,
            })
        })
        .collect();
    let s = &view.start;
    let title = format!(
        "{} (uid {}) — ghgate session {}",
        s.exe.as_deref().unwrap_or(&s.comm),
        s.uid,
        view.id()
    );
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "ghgate", "version": VERSION },
            "pages": [{
                "startedDateTime": iso8601(s.at),
                "id": page_id,
                "title": title,
                "pageTimings": { "onContentLoad": -1, "onLoad": -1 },
            }],
            "entries": entries,
            "comment": "Recorded by ghgate. Credential header values are masked; bodies are as they passed after masking.",
            "_ghgate": {
                "session": s,
                "start_recorded": view.start_recorded,
                "end": view.end,
                "connections": view.connections,
                "passthrough": view.passthrough,
                "unfinished_exchanges": unfinished,
            },
        }
    })
}

fn har_entry(view: &SessionView, x: &ExchangeView, e: &Exchange, page_id: &str) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut request = json!({
        "method": e.method,
        "url": e.url,
        "httpVersion": e.http_version,
        "cookies": [],
        "headers": har_headers(&e.request_headers),
        "queryString": query_string(&e.url),
        "headersSize": -1,
        "bodySize": e.request_body.len,
    });
    let request_text = std::str::from_utf8(&x.request_body).ok();
    if (!x.request_body.is_empty() || e.request_body.len > 0)
        && let Some(text) = request_text
    {
        let mut post = json!({
            "mimeType": mime(&e.request_body, &e.request_headers),
            "text": text,
        });
        if let Some(c) = truncation_comment(&e.request_body) {
            post["comment"] = c.into();
        }
        request["postData"] = post;
    }
    let (text, encoding) = match std::str::from_utf8(&x.response_body) {
        Ok(t) => (t.to_owned(), None),
        Err(_) => (B64.encode(&x.response_body), Some("base64")),
    };
    let mut content = json!({
        "size": e.response_body.len,
        "mimeType": mime(&e.response_body, &e.response_headers),
        "text": text,
    });
    if let Some(enc) = encoding {
        content["encoding"] = enc.into();
    }
    if let Some(c) = truncation_comment(&e.response_body) {
        content["comment"] = c.into();
    }
    let status_text = http::StatusCode::from_u16(e.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let redirect = e
        .response_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .map_or("", |(_, v)| v.as_str());
    let mut request_body = body_json(&e.request_body);
    if request_text.is_none() {
        request_body["base64"] = B64.encode(&x.request_body).into();
    }
    let mut entry = json!({
        "pageref": page_id,
        "startedDateTime": iso8601(e.started_at),
        "time": ms(e.duration_us),
        "request": request,
        "response": {
            "status": e.status,
            "statusText": status_text,
            "httpVersion": e.http_version,
            "cookies": [],
            "headers": har_headers(&e.response_headers),
            "content": content,
            "redirectURL": redirect,
            "headersSize": -1,
            "bodySize": e.response_body.len,
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": ms(e.ttfb_us.min(e.duration_us)),
            "receive": ms(e.duration_us.saturating_sub(e.ttfb_us)),
        },
        "connection": e.conn.to_string(),
        "_ghgate": {
            "exchange": x.id,
            "conn": e.conn,
            "answered_by": e.answered_by,
            "error": e.error,
            "request_body": request_body,
            "response_body": body_json(&e.response_body),
            "stream_events": events_json(&x.events, e.started_at),
            "git": x.git,
            "masked": x.masked,
            "identity": x.identity,
            "decisions": x.decisions,
            "notes": x.notes,
        },
    });
    let server_ip = view
        .connections
        .iter()
        .find(|c| c.conn == e.conn)
        .and_then(|c| c.orig_dst.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip().to_string());
    if let Some(ip) = server_ip {
        entry["serverIPAddress"] = ip.into();
    }
    if let Some(err) = &e.error {
        entry["comment"] = err.as_str().into();
    }
    entry
}

fn har_headers(headers: &[(String, String)]) -> Value {
    headers
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect()
}

fn mime(body: &BodySummary, headers: &[(String, String)]) -> String {
    body.content_type
        .clone()
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default()
}

fn truncation_comment(body: &BodySummary) -> Option<String> {
    (body.stored < body.len).then(|| {
        format!(
            "only the first {} of {} bytes were recorded",
            body.stored, body.len
        )
    })
}

fn body_json(body: &BodySummary) -> Value {
    json!({ "len": body.len, "sha256": body.sha256, "stored": body.stored })
}

fn body_bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!({ "stored": bytes.len(), "text": t }),
        Err(_) => json!({ "stored": bytes.len(), "base64": B64.encode(bytes) }),
    }
}

fn events_json(events: &[StreamEvent], t0: Micros) -> Value {
    events
        .iter()
        .map(|ev| {
            let mut v = json!({
                "index": ev.index,
                "kind": ev.kind,
                "dir": ev.dir,
                "at": iso8601(ev.at),
                "offset_ms": ev.at.saturating_sub(t0) as f64 / 1000.0,
                "name": ev.name,
                "data": ev.data,
            });
            if let Some(n) = ev.truncated_from {
                v["truncated_from"] = n.into();
            }
            v
        })
        .collect()
}

/// The query of a URL as HAR name/value pairs, percent-decoded.
fn query_string(url: &str) -> Value {
    let Some((_, query)) = url.split_once('?') else {
        return json!([]);
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": percent_decode(name), "value": percent_decode(value) })
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let digit = |b: u8| (b as char).to_digit(16);
                match (digit(bytes[i + 1]), digit(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// JSON lines

/// Writes one record per line, exactly as stored (the serde form of `Record`), in the order
/// given; returns the number of lines.
pub fn write_jsonl<R: Borrow<Record>>(
    records: impl IntoIterator<Item = R>,
    out: &mut impl io::Write,
) -> io::Result<u64> {
    let mut n = 0;
    for r in records {
        serde_json::to_writer(&mut *out, r.borrow())?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}

/// `write_jsonl` into a string.
pub fn to_jsonl<R: Borrow<Record>>(records: impl IntoIterator<Item = R>) -> String {
    let mut out = Vec::new();
    // Writing into memory cannot fail, and serde_json emits UTF-8.
    let _ = write_jsonl(records, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Characters of a text shown before "show all" in the page.
const PREVIEW_CHARS: usize = 1_500;
/// Characters of one text the page holds at most; the JSON-lines export holds everything.
const MAX_TEXT_CHARS: usize = 1 << 20;
/// Characters of one stream event's data shown in the event table before "show all".
const EVENT_CHARS: usize = 200;

const STYLE: &str = r#"
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg2: #f6f8fa; --ok: #1a7f37; --redir: #0969da;
        --warn: #9a6700; --err: #cf222e; --accent: #8250df; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1200px; padding: 1.5rem 2rem 4rem; background: #fff; }
code, pre, .mono, .url { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h1 code { font-size: 1.1rem; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 2rem 0 .75rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
h3 { font-size: .95rem; margin: .9rem 0 .35rem; color: var(--muted); }
.sub, .muted { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 1rem 0; }
dl.facts dt { font-weight: 600; color: var(--muted); } dl.facts dd { margin: 0; word-break: break-word; }
table { border-collapse: collapse; width: 100%; margin: .3rem 0; }
table.kv { width: auto; }
th, td { text-align: left; vertical-align: top; padding: .2rem .5rem; border-bottom: 1px solid var(--line); }
th { background: var(--bg2); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; white-space: nowrap; }
pre { background: var(--bg2); border: 1px solid var(--line); border-radius: 4px; padding: .5rem .7rem; margin: .3rem 0;
      white-space: pre-wrap; word-break: break-word; max-height: none; }
td pre { margin: 0; padding: .1rem .3rem; border: 0; background: none; }
ol.timeline { list-style: none; margin: 0; padding: 0 0 0 1.4rem; border-left: 3px solid var(--line); }
ol.timeline > li { position: relative; margin: 0 0 1rem; }
ol.timeline > li::before { content: ""; position: absolute; left: -1.4rem; margin-left: -7.5px; top: .45rem;
      width: 12px; height: 12px; border-radius: 50%; background: var(--muted); border: 2px solid #fff; }
li.x { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .8rem; }
li.x.s2::before { background: var(--ok); } li.x.s3::before { background: var(--redir); }
li.x.s4::before { background: var(--warn); } li.x.s5::before, li.x.s0::before { background: var(--err); }
li.x.unfinished { border-style: dashed; } li.x.unfinished::before { background: #fff; border-color: var(--err); }
li.note { color: var(--muted); font-size: 14px; }
.line { display: flex; flex-wrap: wrap; gap: .2rem .7rem; align-items: baseline; }
.t { color: var(--muted); white-space: nowrap; font-variant-numeric: tabular-nums; }
.m { font-weight: 700; } .url { word-break: break-all; }
.st { font-weight: 700; white-space: nowrap; } .s2 .st { color: var(--ok); } .s3 .st { color: var(--redir); }
.s4 .st { color: var(--warn); } .s5 .st, .s0 .st, .unfinished .st { color: var(--err); }
.tm { color: var(--muted); white-space: nowrap; font-size: 13px; }
svg.bar { display: block; width: 100%; height: 6px; margin: .35rem 0 .2rem; background: var(--bg2); }
svg.bar .span { fill: #afb8c1; } svg.bar .wait { fill: var(--accent); }
.msg { margin: .3rem 0; } .role { font-weight: 700; font-size: 13px; color: var(--accent); }
.completion { border-left: 4px solid var(--accent); }
.warn { color: var(--err); font-weight: 600; }
details { margin: .25rem 0; } summary { cursor: pointer; color: var(--muted); }
#controls button { margin-right: .5rem; font: inherit; font-size: 13px; }
footer { margin-top: 3rem; color: var(--muted); font-size: 13px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  #controls { display: none; }
  li.x { break-inside: avoid-page; }
  pre { border: 0; padding: .2rem 0; }
  a { color: inherit; text-decoration: none; }
}
"#;

const SCRIPT: &str = r#"
(function () {
  var details = function () { return Array.prototype.slice.call(document.querySelectorAll('details')); };
  var setAll = function (open) { details().forEach(function (d) { d.open = open; }); };
  var bar = document.getElementById('controls');
  [['Expand all', true], ['Collapse all', false]].forEach(function (b) {
    var button = document.createElement('button');
    button.type = 'button';
    button.textContent = b[0];
    button.addEventListener('click', function () { setAll(b[1]); });
    bar.appendChild(button);
  });
  var before = [];
  window.addEventListener('beforeprint', function () {
    before = details().map(function (d) { return d.open; });
    setAll(true);
  });
  window.addEventListener('afterprint', function () {
    details().forEach(function (d, i) { d.open = !!before[i]; });
  });
})();
"#;

/// The anchor of a pushed secret's line (pushes of other sessions link to it in their own page).
fn push_anchor(p: &crate::model::PushSecret) -> String {
    format!("push-{}-{}-{}", p.exchange, escape_html(&p.fingerprint), p.at)
}

/// A pushed secret on one line: where, and what came of the push.
/// Text safe to place in HTML text or a quoted attribute value.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn csp_hash(source: &str) -> String {
    format!("'sha256-{}'", B64.encode(Sha256::digest(source.as_bytes())))
}

/// The session as one self-contained HTML page.
pub fn to_html(view: &SessionView) -> String {
    to_html_with_pushes(view, &LaterPushes::new())
}

/// Pushes that carried a fingerprint, by fingerprint: found across the store by the caller, so
/// that a secret suggested in this session links to the pushes that later carried it.
pub type LaterPushes = std::collections::HashMap<String, Vec<crate::model::PushSecret>>;

/// [`to_html`], with each secret received in a response followed by the later pushes that
/// carried its fingerprint (from any session), and each push's secrets shown with an anchor.
pub fn to_html_with_pushes(view: &SessionView, later: &LaterPushes) -> String {
    let e = escape_html;
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src {}; script-src {}; \
         base-uri 'none'; form-action 'none'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"ghgate {VERSION}\">\n\
         <title>ghgate session {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        csp_hash(STYLE),
        csp_hash(SCRIPT),
        e(view.id().as_str())
    );
    header_html(&mut h, view);
    let t0 = view.start.at;
    let t1 = session_end(view).max(t0 + 1);
    h.push_str("<main>\n<h2>Timeline</h2>\n<ol class=\"timeline\">\n");
    for item in view.timeline() {
        let rel = format!("+{:.3} s", item.at.saturating_sub(t0) as f64 / 1e6);
        let when = format!(
            "<span class=\"t\">{} <span class=\"rel\">{rel}</span></span>",
            clock(item.at)
        );
        match item.fact {
            Fact::SessionStart(s) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} session started ({})</li>",
                    e(&s.comm)
                );
            }
            Fact::SessionEnd(end) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} session ended ({})</li>",
                    end.reason.as_str()
                );
            }
            Fact::Connection(c) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} TLS connection {} from <span class=\"mono\">{}</span> to \
                     <span class=\"mono\">{}</span>, SNI <span class=\"mono\">{}</span>, ALPN {}{}{}</li>",
                    c.conn,
                    e(&c.client),
                    e(&c.orig_dst),
                    e(&c.sni),
                    e(&c.client_alpn),
                    c.client_tls
                        .as_deref()
                        .map(|t| format!(", client {}", e(t)))
                        .unwrap_or_default(),
                    c.upstream_tls
                        .as_deref()
                        .map(|t| format!(", upstream {}", e(t)))
                        .unwrap_or_default(),
                );
            }
            Fact::Passthrough(p) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} passthrough (not intercepted: {}) from <span class=\"mono\">{}</span> \
                     to <span class=\"mono\">{}</span>{} — ↑ {} ↓ {} in {}</li>",
                    p.reason.as_str(),
                    e(&p.client),
                    e(&p.orig_dst),
                    sni_html(p.sni.as_deref()),
                    size(p.bytes_up),
                    size(p.bytes_down),
                    duration(p.duration_us)
                );
            }
            Fact::Request(x) => exchange_html(&mut h, x, &when, t0, t1, later),
            Fact::Refusal(r) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note refusal\">{when} {}</li>",
                    e(&crate::session::refusal_line(r))
                );
            }
            Fact::Egress(x) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} {}</li>",
                    e(&crate::session::egress_line(x))
                );
            }
            Fact::PassthroughStart(p) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note\">{when} passthrough begins (recorded before the upstream was dialled): \
                     <span class=\"mono\">{}</span> to <span class=\"mono\">{}</span>{}</li>",
                    e(&p.client),
                    e(&p.orig_dst),
                    sni_html(p.sni.as_deref()),
                );
            }
            Fact::Approval(a) => {
                let _ = writeln!(
                    h,
                    "<li class=\"note approval\">{when} {}</li>",
                    e(&crate::session::approval_line(a))
                );
            }
            Fact::ResponseHead(_)
            | Fact::Event(..)
            | Fact::Git(..)
            | Fact::Masked(..)
            | Fact::Decision(..)
            | Fact::ExchangeEnd(_) => {}
        }
    }
    h.push_str("</ol>\n</main>\n");
    let _ = write!(
        h,
        "<footer>Exported by ghgate {VERSION}. Every value on this page is recorded data shown as text; \
         credential header values were masked before recording. The JSON-lines export holds every record \
         exactly as stored.</footer>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    );
    h
}

/// `, SNI <name>`, or nothing.
fn sni_html(sni: Option<&str>) -> String {
    sni.map(|s| format!(", SNI <span class=\"mono\">{}</span>", escape_html(s)))
        .unwrap_or_default()
}

fn session_end(view: &SessionView) -> Micros {
    let mut end = view.end.as_ref().map_or(view.start.at, |e| e.at);
    for x in &view.exchanges {
        end = end.max(x.first_at);
        if let Some(e) = &x.exchange {
            end = end.max(e.started_at + e.duration_us);
        }
        end = end.max(x.events.last().map_or(0, |e| e.at));
    }
    for p in &view.passthrough {
        end = end.max(p.at + p.duration_us);
    }
    end
}

fn header_html(h: &mut String, view: &SessionView) {
    let e = escape_html;
    let s = &view.start;
    let _ = writeln!(
        h,
        "<header>\n<h1>Session <code>{}</code></h1>\n<p class=\"sub\">Recorded by ghgate. <span id=\"controls\"></span></p>",
        e(view.id().as_str())
    );
    h.push_str("<dl class=\"facts\">\n");
    let mut fact = |label: &str, value_html: String| {
        let _ = writeln!(h, "<dt>{label}</dt><dd>{value_html}</dd>");
    };
    if view.start_recorded {
        let user = match &s.user {
            Some(u) => format!("{} (uid {}, gid {})", e(u), s.uid, s.gid),
            None => format!("uid {}, gid {}", s.uid, s.gid),
        };
        fact("Who", user);
        fact(
            "Process",
            format!(
                "<span class=\"mono\">{}</span> (pid {}), executable <span class=\"mono\">{}</span>",
                e(&s.comm),
                s.tgid,
                e(s.exe.as_deref().unwrap_or("unknown"))
            ),
        );
        if !s.cmdline.is_empty() {
            let args: Vec<String> = s
                .cmdline
                .iter()
                .map(|a| format!("<code>{}</code>", e(a)))
                .collect();
            fact("Command line", args.join(" "));
        }
        fact(
            "Cgroup",
            format!(
                "<span class=\"mono\">{}</span> (id {})",
                e(s.cgroup.as_deref().unwrap_or("unknown")),
                s.cgroup_id
            ),
        );
        if !s.ci.is_empty() {
            let rows: String =
                s.ci.iter()
                    .map(|(k, v)| {
                        format!(
                            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                            e(k),
                            e(v)
                        )
                    })
                    .collect();
            fact(
                "CI job",
                format!("<table class=\"kv\"><tbody>{rows}</tbody></table>"),
            );
        }
        fact("Started", e(&datetime(s.at)));
    } else {
        fact(
            "Started",
            format!(
                "<span class=\"warn\">before {}: the session's first record was pruned, so who ran it is not known</span>",
                e(&datetime(s.at))
            ),
        );
    }
    match &view.end {
        Some(end) => fact(
            "Ended",
            format!(
                "{} ({}), after {}",
                e(&datetime(end.at)),
                end.reason.as_str(),
                duration(end.at.saturating_sub(s.at))
            ),
        ),
        None => fact(
            "Ended",
            "not recorded: still running, or the gateway stopped abruptly".into(),
        ),
    }
    let mut hosts: Vec<String> = view
        .exchanges
        .iter()
        .filter_map(|x| x.exchange.as_ref().and_then(|e| host_of(&e.url)))
        .collect();
    hosts.sort();
    hosts.dedup();
    let pushes = view
        .exchanges
        .iter()
        .flat_map(|x| &x.git)
        .filter(|g| g.service == GitService::ReceivePack)
        .count();
    let fetches = view
        .exchanges
        .iter()
        .flat_map(|x| &x.git)
        .filter(|g| g.service == GitService::UploadPack)
        .count();
    let unfinished = view.exchanges.iter().filter(|x| x.exchange.is_none()).count();
    let mut summary = format!(
        "{}{}, {}, {}, {}, {}",
        count(view.exchanges.len(), "exchange", "exchanges"),
        if unfinished > 0 {
            format!(" ({unfinished} unfinished)")
        } else {
            String::new()
        },
        count(pushes, "git push", "git pushes"),
        count(fetches, "git fetch", "git fetches"),
        count(view.connections.len(), "TLS connection", "TLS connections"),
        count(
            view.passthrough.len(),
            "passthrough connection",
            "passthrough connections"
        ),
    );
    if !hosts.is_empty() {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("<span class=\"mono\">{}</span>", e(h)))
            .collect();
        let _ = write!(summary, "; hosts {}", list.join(", "));
    }
    fact("Activity", summary);
    h.push_str("</dl>\n</header>\n");
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "s2",
        300..=399 => "s3",
        400..=499 => "s4",
        500..=599 => "s5",
        100..=199 => "s2",
        _ => "s0",
    }
}

fn exchange_html(h: &mut String, x: &ExchangeView, when: &str, t0: Micros, t1: Micros, later: &LaterPushes) {
    let e = escape_html;
    let span = (t1 - t0) as f64;
    let pos = |at: Micros| (at.saturating_sub(t0) as f64 / span * 1000.0).clamp(0.0, 1000.0);
    match &x.exchange {
        Some(ex) => {
            let reason = http::StatusCode::from_u16(ex.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let _ = writeln!(
                h,
                "<li class=\"x {}\" id=\"x{}\">\n<div class=\"line\">{when}<span class=\"m\">{}</span>\
                 <span class=\"url\">{}</span><span class=\"st\">{} {}</span>\
                 <span class=\"tm\">ttfb {} · total {} · ↑ {} ↓ {} · {}{}</span></div>",
                status_class(ex.status),
                x.id,
                e(&ex.method),
                e(&ex.url),
                ex.status,
                reason,
                duration(ex.ttfb_us),
                duration(ex.duration_us),
                size(ex.request_body.len),
                size(ex.response_body.len),
                e(&ex.http_version),
                match ex.answered_by {
                    AnsweredBy::Upstream => String::new(),
                    other => format!(" · answered by {other}"),
                }
            );
            let x0 = pos(ex.started_at);
            let w = (pos(ex.started_at + ex.duration_us) - x0).max(2.0);
            let ww = (pos(ex.started_at + ex.ttfb_us.min(ex.duration_us)) - x0)
                .max(1.0)
                .min(w);
            let _ = writeln!(
                h,
                "<svg class=\"bar\" viewBox=\"0 0 1000 6\" preserveAspectRatio=\"none\" aria-hidden=\"true\">\
                 <rect class=\"span\" x=\"{x0:.1}\" y=\"0\" width=\"{w:.1}\" height=\"6\"></rect>\
                 <rect class=\"wait\" x=\"{x0:.1}\" y=\"0\" width=\"{ww:.1}\" height=\"6\"></rect></svg>"
            );
            if let Some(err) = &ex.error {
                let _ = writeln!(h, "<p class=\"warn\">error: {}</p>", e(err));
            }
        }
        None => {
            let _ = writeln!(
                h,
                "<li class=\"x unfinished\" id=\"x{}\">\n<div class=\"line\">{when}<span class=\"m\">{}</span>\
                 <span class=\"url\">{}</span><span class=\"st\">unfinished</span><span class=\"tm\">the gateway \
                 stopped before this exchange ended: no status or timings were recorded</span></div>",
                x.id,
                e(x.method().unwrap_or("?")),
                e(x.url().unwrap_or("(URL not recorded)"))
            );
        }
    }
    for note in &x.notes {
        let _ = writeln!(h, "<p class=\"warn\">{}</p>", e(note));
    }
    if let Some(i) = &x.identity {
        let _ = writeln!(
            h,
            "<p class=\"identity\">Identity: {}</p>",
            e(&crate::session::identity_line(i))
        );
    }
    for d in &x.decisions {
        let _ = writeln!(
            h,
            "<p class=\"policy\">Policy: {}</p>",
            e(&crate::session::decision_line(d))
        );
    }
    // Secrets masked in this exchange: an auditor follows one secret by its fingerprint.
    if !x.masked.is_empty() {
        h.push_str("<h3>Secrets masked</h3><ul class=\"masked\">");
        for m in &x.masked {
            let _ = write!(
                h,
                "<li><span class=\"mono\">{}</span> fingerprint <span class=\"mono\">{}</span> in the {}{}",
                e(&m.rule),
                e(&m.fingerprint),
                m.place.as_str(),
                if m.client_masked {
                    ""
                } else {
                    " <span class=\"warn\">(the client received it unmasked)</span>"
                }
            );
            let pushes: Vec<_> = later
                .get(&m.fingerprint)
                .into_iter()
                .flatten()
                .filter(|p| p.at >= m.at)
                .collect();
            if crate::trace::received(m.place) && !pushes.is_empty() {
                h.push_str("<ul class=\"later\">");
                for p in pushes {
                    let _ = write!(
                        h,
                        "<li>later pushed: <a href=\"#{}\">{}</a> (session <span class=\"mono\">{}</span>, {})</li>",
                        push_anchor(p),
                        e(&crate::session::push_line(p)),
                        e(p.session.as_str()),
                        clock(p.at)
                    );
                }
                h.push_str("</ul>");
            }
            h.push_str("</li>");
        }
        h.push_str("</ul>\n");
    }
    if !x.push_secrets.is_empty() {
        h.push_str("<h3>Secrets in the pushed files</h3><ul class=\"masked\">");
        for p in &x.push_secrets {
            let _ = write!(
                h,
                "<li id=\"{}\"><span class=\"mono\">{}</span> fingerprint <span class=\"mono\">{}</span>: {}{}</li>",
                push_anchor(p),
                e(&p.rule),
                e(&p.fingerprint),
                e(&crate::session::push_line(p)),
                if p.seen_in_response {
                    " <span class=\"warn\">(seen in a response before)</span>"
                } else {
                    ""
                }
            );
        }
        h.push_str("</ul>\n");
    }
    let summary = x.exchange.as_ref();
    // The request: a prompt shown as messages, else the body itself.
    if !x.request_body.is_empty() {
        match x.prompt() {
            Some(p) => {
                let _ = writeln!(
                    h,
                    "<h3>Prompt{}</h3>",
                    p.model
                        .as_deref()
                        .map(|m| format!(" to <span class=\"mono\">{}</span>", e(m)))
                        .unwrap_or_default()
                );
                for (role, text) in &p.messages {
                    let _ = write!(h, "<div class=\"msg\"><div class=\"role\">{}</div>", e(role));
                    text_block(h, text);
                    h.push_str("</div>\n");
                }
                if let Some(suffix) = &p.suffix {
                    h.push_str(
                        "<div class=\"msg\"><div class=\"role\">suffix (the answer leads into this)</div>",
                    );
                    text_block(h, suffix);
                    h.push_str("</div>\n");
                }
                h.push_str("<details><summary>Request body as sent</summary>");
                body_html(h, &x.request_body, summary.map(|s| &s.request_body));
                h.push_str("</details>\n");
            }
            None => {
                h.push_str("<h3>Request body</h3>");
                body_html(h, &x.request_body, summary.map(|s| &s.request_body));
            }
        }
    }
    // The response: completions streamed or returned, events, git, the body.
    for c in &x.answers() {
        let _ = writeln!(h, "<h3>Completion: {}</h3>", e(&c.part));
        let _ = writeln!(h, "<pre class=\"completion\">{}</pre>", e(&capped(&c.text)));
    }
    events_html(h, x);
    for g in &x.git {
        git_html(h, g);
    }
    if !x.response_body.is_empty() {
        let sse = x.events.iter().any(|ev| ev.kind == StreamKind::Sse);
        let _ = write!(
            h,
            "<details><summary>Response body ({}{})</summary>",
            size(x.response_body.len() as u64),
            if sse { ", the raw event stream" } else { "" }
        );
        body_html(h, &x.response_body, summary.map(|s| &s.response_body));
        h.push_str("</details>\n");
    }
    if let Some(ex) = summary {
        headers_html(h, "Request headers", &ex.request_headers);
        headers_html(h, "Response headers", &ex.response_headers);
        let _ = writeln!(
            h,
            "<details><summary>Body digests</summary><table><tbody>\
             <tr><th>request</th><td class=\"num\">{} bytes</td><td class=\"mono\">sha256 {}</td><td>{} stored</td></tr>\
             <tr><th>response</th><td class=\"num\">{} bytes</td><td class=\"mono\">sha256 {}</td><td>{} stored</td></tr>\
             </tbody></table></details>",
            ex.request_body.len,
            e(&ex.request_body.sha256),
            ex.request_body.stored,
            ex.response_body.len,
            e(&ex.response_body.sha256),
            ex.response_body.stored
        );
    }
    h.push_str("</li>\n");
}

fn headers_html(h: &mut String, title: &str, headers: &[(String, String)]) {
    if headers.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<details><summary>{title} ({})</summary><table><tbody>",
        headers.len()
    );
    for (k, v) in headers {
        let _ = write!(
            h,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
            escape_html(k),
            escape_html(v)
        );
    }
    h.push_str("</tbody></table></details>\n");
}

fn events_html(h: &mut String, x: &ExchangeView) {
    let t0 = x.started_at();
    for kind in [StreamKind::Sse, StreamKind::WebSocket] {
        let events: Vec<&StreamEvent> = x.events.iter().filter(|ev| ev.kind == kind).collect();
        if events.is_empty() {
            continue;
        }
        let (title, open) = match kind {
            StreamKind::Sse => (format!("{} server-sent events", events.len()), ""),
            StreamKind::WebSocket => (format!("{} WebSocket messages", events.len()), " open"),
        };
        let _ = write!(
            h,
            "<details{open}><summary>{title}</summary><table><thead><tr><th class=\"num\">#</th>\
             <th class=\"num\">time</th><th>{}</th><th>data</th></tr></thead><tbody>",
            if kind == StreamKind::WebSocket {
                "direction, type"
            } else {
                "event"
            }
        );
        for ev in events {
            let label = match kind {
                StreamKind::Sse => escape_html(ev.name.as_deref().unwrap_or("message")),
                StreamKind::WebSocket => format!(
                    "{} {}",
                    match ev.dir {
                        Direction::Request => "client → server",
                        Direction::Response => "server → client",
                    },
                    escape_html(ev.name.as_deref().unwrap_or("message"))
                ),
            };
            let _ = write!(
                h,
                "<tr><td class=\"num\">{}</td><td class=\"num\">+{:.3} s</td><td>{label}</td><td>",
                ev.index,
                ev.at.saturating_sub(t0) as f64 / 1e6
            );
            let n = ev.data.chars().count();
            if n <= EVENT_CHARS {
                let _ = write!(h, "<pre>{}</pre>", escape_html(&ev.data));
            } else {
                let _ = write!(
                    h,
                    "<details><summary><span class=\"mono\">{}</span>… ({n} characters)</summary><pre>{}</pre></details>",
                    escape_html(&take_chars(&ev.data, EVENT_CHARS)),
                    escape_html(&capped(&ev.data))
                );
            }
            if let Some(total) = ev.truncated_from {
                let _ = write!(
                    h,
                    "<span class=\"muted\">only the start of {} was recorded</span>",
                    size(total)
                );
            }
            h.push_str("</td></tr>");
        }
        h.push_str("</tbody></table></details>\n");
    }
}

fn git_html(h: &mut String, g: &GitOp) {
    let e = escape_html;
    if g.service == GitService::ReceivePack || !g.updates.is_empty() {
        h.push_str("<h3>Git push</h3>\n<table><thead><tr><th>ref</th><th>operation</th><th>old → new</th></tr></thead><tbody>");
        for u in &g.updates {
            let _ = write!(
                h,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{} → {}</td></tr>",
                e(&u.name),
                u.op().as_str(),
                u.old.short(),
                u.new.short()
            );
        }
        h.push_str("</tbody></table>\n");
        if let Some(len) = g.pack_len {
            let _ = writeln!(
                h,
                "<p>Pack: {} ({len} bytes){}</p>",
                size(len),
                g.pack_sha256
                    .as_deref()
                    .map(|s| format!(", sha256 <span class=\"mono\">{}</span>", e(s)))
                    .unwrap_or_default()
            );
        }
    }
    if g.service == GitService::UploadPack || !g.wants.is_empty() {
        let _ = write!(
            h,
            "<h3>Git fetch</h3>\n<table><thead><tr><th>wanted object</th><th>advertised as</th></tr></thead><tbody>"
        );
        for w in &g.wants {
            let _ = write!(
                h,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                w.oid,
                e(&w.refs.join(", "))
            );
        }
        h.push_str("</tbody></table>\n");
    }
}

/// A body: JSON pretty-printed, other text as is, binary as its size only.
fn body_html(h: &mut String, body: &[u8], summary: Option<&BodySummary>) {
    if let Some(s) = summary.filter(|s| s.stored < s.len) {
        let _ = write!(
            h,
            "<p class=\"muted\">Only the first {} of {} were recorded.</p>",
            size(s.stored),
            size(s.len)
        );
    }
    match std::str::from_utf8(body) {
        Ok(text) => {
            let pretty = serde_json::from_str::<Value>(text)
                .ok()
                .filter(|v| v.is_object() || v.is_array())
                .and_then(|v| serde_json::to_string_pretty(&v).ok());
            text_block(h, pretty.as_deref().unwrap_or(text));
        }
        Err(_) => {
            let _ = write!(
                h,
                "<p class=\"muted\">Binary, {} (sha256 <span class=\"mono\">{}</span>); the JSON-lines export holds its bytes.</p>",
                size(body.len() as u64),
                hex::encode(Sha256::digest(body))
            );
        }
    }
}

/// A text, shown whole when short, else its start with the rest behind "show all".
fn text_block(h: &mut String, text: &str) {
    let n = text.chars().count();
    if n <= PREVIEW_CHARS {
        let _ = write!(h, "<pre>{}</pre>", escape_html(text));
    } else {
        let _ = write!(
            h,
            "<pre>{}…</pre><details><summary>show all {n} characters</summary><pre>{}</pre></details>",
            escape_html(&take_chars(text, PREVIEW_CHARS)),
            escape_html(&capped(text))
        );
    }
}

fn take_chars(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

fn capped(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        None => text.to_owned(),
        Some((i, _)) => format!(
            "{}\n[… {} more bytes not shown here; the JSON-lines export holds everything]",
            &text[..i],
            text.len() - i
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::*,
        session::tests::{T0, chunk, exchange, sample_records, sse, start},
    };

    fn view() -> SessionView {
        SessionView::from_records(sample_records()).unwrap()
    }

    // --- HAR 1.2 structure, field by field from the spec ---------------------------------------

    #[derive(Clone, Copy, Debug)]
    enum Ty {
        Str,
        Num,
        Int,
        Obj,
        Arr,
    }

    fn has_type(v: &Value, ty: Ty) -> bool {
        match ty {
            Ty::Str => v.is_string(),
            Ty::Num => v.is_number(),
            Ty::Int => v.is_i64() || v.is_u64(),
            Ty::Obj => v.is_object(),
            Ty::Arr => v.is_array(),
        }
    }

    /// Checks required and optional fields and their types; any other field must be custom
    /// (start with an underscore).
    fn fields(
        v: &Value,
        path: &str,
        required: &[(&str, Ty)],
        optional: &[(&str, Ty)],
        errors: &mut Vec<String>,
    ) {
        let Some(obj) = v.as_object() else {
            errors.push(format!("{path} is not an object"));
            return;
        };
        for (name, ty) in required {
            match obj.get(*name) {
                None => errors.push(format!("{path}.{name} is required")),
                Some(f) if !has_type(f, *ty) => errors.push(format!("{path}.{name} should be {ty:?}: {f}")),
                _ => {}
            }
        }
        for (name, ty) in optional {
            if let Some(f) = obj.get(*name)
                && !has_type(f, *ty)
            {
                errors.push(format!("{path}.{name} should be {ty:?}: {f}"));
            }
        }
        for key in obj.keys() {
            let known = required.iter().chain(optional).any(|(n, _)| n == key);
            if !known && !key.starts_with('_') {
                errors.push(format!(
                    "{path}.{key} is not a HAR 1.2 field (custom fields start with _)"
                ));
            }
        }
    }

    fn iso_ok(v: &Value) -> bool {
        let s = v.as_str().unwrap_or("");
        // YYYY-MM-DDThh:mm:ss.sss+hh:mm
        s.len() == 29 && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.' && s.ends_with("+00:00")
    }

    fn name_values(v: &Value, path: &str, errors: &mut Vec<String>) {
        for (i, nv) in v.as_array().into_iter().flatten().enumerate() {
            fields(
                nv,
                &format!("{path}[{i}]"),
                &[("name", Ty::Str), ("value", Ty::Str)],
                &[("comment", Ty::Str)],
                errors,
            );
        }
    }

    fn validate_har(har: &Value) -> Vec<String> {
        use Ty::*;
        let mut errors = Vec::new();
        let e = &mut errors;
        fields(har, "", &[("log", Obj)], &[], e);
        let log = &har["log"];
        fields(
            log,
            "log",
            &[("version", Str), ("creator", Obj), ("entries", Arr)],
            &[("browser", Obj), ("pages", Arr), ("comment", Str)],
            e,
        );
        if log["version"] != "1.2" {
            e.push("log.version must be 1.2".into());
        }
        fields(
            &log["creator"],
            "log.creator",
            &[("name", Str), ("version", Str)],
            &[("comment", Str)],
            e,
        );
        let mut page_ids = Vec::new();
        for (i, page) in log["pages"].as_array().into_iter().flatten().enumerate() {
            let p = format!("log.pages[{i}]");
            fields(
                page,
                &p,
                &[
                    ("startedDateTime", Str),
                    ("id", Str),
                    ("title", Str),
                    ("pageTimings", Obj),
                ],
                &[("comment", Str)],
                e,
            );
            fields(
                &page["pageTimings"],
                &format!("{p}.pageTimings"),
                &[],
                &[("onContentLoad", Num), ("onLoad", Num), ("comment", Str)],
                e,
            );
            if !iso_ok(&page["startedDateTime"]) {
                e.push(format!(
                    "{p}.startedDateTime is not ISO 8601 with ms: {}",
                    page["startedDateTime"]
                ));
            }
            page_ids.push(page["id"].clone());
        }
        for (i, entry) in log["entries"].as_array().into_iter().flatten().enumerate() {
            let p = format!("log.entries[{i}]");
            fields(
                entry,
                &p,
                &[
                    ("startedDateTime", Str),
                    ("time", Num),
                    ("request", Obj),
                    ("response", Obj),
                    ("cache", Obj),
                    ("timings", Obj),
                ],
                &[
                    ("pageref", Str),
                    ("serverIPAddress", Str),
                    ("connection", Str),
                    ("comment", Str),
                ],
                e,
            );
            if !iso_ok(&entry["startedDateTime"]) {
                e.push(format!("{p}.startedDateTime is not ISO 8601 with ms"));
            }
            if let Some(r) = entry.get("pageref")
                && !page_ids.contains(r)
            {
                e.push(format!("{p}.pageref names no page"));
            }
            let req = &entry["request"];
            fields(
                req,
                &format!("{p}.request"),
                &[
                    ("method", Str),
                    ("url", Str),
                    ("httpVersion", Str),
                    ("cookies", Arr),
                    ("headers", Arr),
                    ("queryString", Arr),
                    ("headersSize", Int),
                    ("bodySize", Int),
                ],
                &[("postData", Obj), ("comment", Str)],
                e,
            );
            name_values(&req["headers"], &format!("{p}.request.headers"), e);
            name_values(&req["queryString"], &format!("{p}.request.queryString"), e);
            if let Some(post) = req.get("postData") {
                fields(
                    post,
                    &format!("{p}.request.postData"),
                    &[("mimeType", Str)],
                    &[("params", Arr), ("text", Str), ("comment", Str)],
                    e,
                );
                if post.get("params").is_some() == post.get("text").is_some() {
                    e.push(format!(
                        "{p}.request.postData needs exactly one of params and text"
                    ));
                }
            }
            let resp = &entry["response"];
            fields(
                resp,
                &format!("{p}.response"),
                &[
                    ("status", Int),
                    ("statusText", Str),
                    ("httpVersion", Str),
                    ("cookies", Arr),
                    ("headers", Arr),
                    ("content", Obj),
                    ("redirectURL", Str),
                    ("headersSize", Int),
                    ("bodySize", Int),
                ],
                &[("comment", Str)],
                e,
            );
            name_values(&resp["headers"], &format!("{p}.response.headers"), e);
            fields(
                &resp["content"],
                &format!("{p}.response.content"),
                &[("size", Int), ("mimeType", Str)],
                &[
                    ("compression", Int),
                    ("text", Str),
                    ("encoding", Str),
                    ("comment", Str),
                ],
                e,
            );
            fields(
                &entry["cache"],
                &format!("{p}.cache"),
                &[],
                &[("beforeRequest", Obj), ("afterRequest", Obj), ("comment", Str)],
                e,
            );
            let t = &entry["timings"];
            fields(
                t,
                &format!("{p}.timings"),
                &[("send", Num), ("wait", Num), ("receive", Num)],
                &[
                    ("blocked", Num),
                    ("dns", Num),
                    ("connect", Num),
                    ("ssl", Num),
                    ("comment", Str),
                ],
                e,
            );
            // entry.time is the sum of the timings that apply (-1: does not apply).
            let sum: f64 = ["blocked", "dns", "connect", "send", "wait", "receive"]
                .iter()
                .filter_map(|k| t[*k].as_f64())
                .filter(|v| *v >= 0.0)
                .sum();
            if (sum - entry["time"].as_f64().unwrap_or(-1.0)).abs() > 0.001 {
                e.push(format!("{p}.time is not the sum of its timings"));
            }
        }
        errors
    }

    #[test]
    fn har_has_every_required_field_with_its_type() {
        let har = to_har(&view());
        let errors = validate_har(&har);
        assert!(errors.is_empty(), "{errors:#?}\n{har:#}");
        // The validator itself rejects what HAR forbids.
        let mut broken = har.clone();
        broken["log"]["entries"][0]["request"]
            .as_object_mut()
            .unwrap()
            .remove("headersSize");
        broken["log"]["entries"][0]["response"]["status"] = "200".into();
        broken["log"]["entries"][0]["extra"] = 1.into();
        assert_eq!(validate_har(&broken).len(), 3, "{:?}", validate_har(&broken));
    }

    #[test]
    fn har_entries_carry_the_exchange() {
        let har = to_har(&view());
        let log = &har["log"];
        assert_eq!(log["creator"]["name"], "ghgate");
        assert_eq!(log["pages"][0]["id"], "session-s1");
        let entries = log["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "the unfinished exchange is not an entry");
        let llm = &entries[0];
        assert_eq!(llm["startedDateTime"], "2026-05-20T10:00:00.002+00:00");
        assert_eq!(llm["request"]["method"], "POST");
        assert_eq!(llm["request"]["postData"]["mimeType"], "application/json");
        assert!(
            llm["request"]["postData"]["text"]
                .as_str()
                .unwrap()
                .contains("Say hi")
        );
        assert_eq!(llm["response"]["statusText"], "OK");
        assert_eq!(llm["response"]["content"]["mimeType"], "text/event-stream");
        assert!(
            llm["response"]["content"]["text"]
                .as_str()
                .unwrap()
                .contains("lo!")
        );
        assert!(llm["response"]["content"].get("encoding").is_none());
        assert_eq!(llm["time"], 900.0);
        assert_eq!(llm["timings"]["wait"], 120.0);
        assert_eq!(llm["timings"]["receive"], 780.0);
        assert_eq!(llm["serverIPAddress"], "160.79.104.10");
        assert_eq!(llm["_ghgate"]["stream_events"].as_array().unwrap().len(), 2);
        assert_eq!(llm["_ghgate"]["stream_events"][0]["offset_ms"], 128.0);
        let push = &entries[1];
        assert_eq!(push["_ghgate"]["git"][0]["updates"][0]["name"], "refs/heads/main");
        assert!(
            push["request"].get("postData").is_none(),
            "an empty body has no postData"
        );
        let cut = &log["_ghgate"]["unfinished_exchanges"];
        assert_eq!(cut[0]["exchange"], 3);
        assert_eq!(cut[0]["request"]["url"], "https://api.openai.com/v1/completions");
        assert_eq!(log["_ghgate"]["session"]["user"], "alice");
        assert_eq!(log["_ghgate"]["passthrough"][0]["reason"], "passthrough list");
    }

    #[test]
    fn har_keeps_binary_bodies_as_base64_and_parses_the_query() {
        let bin = [0u8, 159, 146, 150, 255];
        let recs = vec![
            start("s1"),
            chunk(1, Direction::Request, T0, 0, &bin),
            chunk(1, Direction::Response, T0, 0, &bin),
            exchange(
                1,
                T0,
                "POST",
                "https://api.github.com/search?q=a%20b+c&page=2&flag#frag",
                &bin,
                &bin,
            ),
        ];
        let har = to_har(&SessionView::from_records(recs).unwrap());
        assert!(validate_har(&har).is_empty(), "{:?}", validate_har(&har));
        let entry = &har["log"]["entries"][0];
        assert!(entry["request"].get("postData").is_none());
        assert_eq!(entry["_ghgate"]["request_body"]["base64"], B64.encode(bin));
        assert_eq!(entry["response"]["content"]["encoding"], "base64");
        assert_eq!(entry["response"]["content"]["text"], B64.encode(bin));
        assert_eq!(entry["response"]["content"]["size"], 5);
        assert_eq!(
            entry["request"]["queryString"],
            json!([{"name": "q", "value": "a b c"}, {"name": "page", "value": "2"}, {"name": "flag", "value": ""}])
        );
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }

    // --- JSON lines -----------------------------------------------------------------------------

    #[test]
    fn jsonl_is_one_record_per_line_as_stored() {
        let records = sample_records();
        let text = to_jsonl(&records);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), records.len());
        for (line, record) in lines.iter().zip(&records) {
            assert_eq!(*line, serde_json::to_string(record).unwrap());
            assert_eq!(&serde_json::from_str::<Record>(line).unwrap(), record);
        }
        let mut out = Vec::new();
        assert_eq!(
            write_jsonl(records.clone(), &mut out).unwrap(),
            records.len() as u64
        );
        assert_eq!(out, text.as_bytes());
    }

    // --- HTML -----------------------------------------------------------------------------------

    const HOSTILE: &str = "</script><script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

    /// Every tag in the page, by name, and its attributes' names.
    fn tags(html: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let close = rest.starts_with('/');
            let body = rest.trim_start_matches('/');
            let name: String = body
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            if name.is_empty() {
                continue;
            }
            let end = rest.find('>').unwrap_or(rest.len());
            let inside = &rest[..end];
            let mut attrs = Vec::new();
            let mut in_quote = None;
            let mut word = String::new();
            for c in inside.chars().skip(name.len() + close as usize) {
                match (in_quote, c) {
                    (Some(q), c) if c == q => in_quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => in_quote = Some(c),
                    (None, c) if c.is_whitespace() || c == '=' || c == '/' => {
                        if !word.is_empty() {
                            attrs.push(std::mem::take(&mut word).to_ascii_lowercase());
                        }
                    }
                    (None, c) => word.push(c),
                }
            }
            if !word.is_empty() {
                attrs.push(word.to_ascii_lowercase());
            }
            out.push((
                format!("{}{}", if close { "/" } else { "" }, name.to_ascii_lowercase()),
                attrs,
            ));
        }
        out
    }

    fn hostile_records() -> Vec<Record> {
        let mut recs = sample_records();
        for r in &mut recs {
            match r {
                Record::SessionStart(s) => {
                    s.user = Some(HOSTILE.into());
                    s.comm = HOSTILE.into();
                    s.exe = Some(HOSTILE.into());
                    s.cmdline.push(HOSTILE.into());
                    s.cgroup = Some(HOSTILE.into());
                    s.ci.push((HOSTILE.into(), HOSTILE.into()));
                }
                Record::Exchange(x) if x.exchange == ExchangeId::new(1) => {
                    x.url = format!("https://evil.example/{HOSTILE}");
                    x.method = HOSTILE.into();
                    x.request_headers.push((HOSTILE.into(), HOSTILE.into()));
                    x.error = Some(HOSTILE.into());
                }
                Record::Git(g) => g.updates[0].name = HOSTILE.into(),
                Record::Passthrough(p) => p.sni = Some(HOSTILE.into()),
                _ => {}
            }
        }
        let body = format!(
            r#"{{"messages":[{{"role":"{0}","content":"{0}"}}]}}"#,
            HOSTILE.replace('"', "\\\"")
        );
        recs.push(chunk(9, Direction::Request, T0 + 5, 0, body.as_bytes()));
        recs.push(chunk(9, Direction::Response, T0 + 6, 0, HOSTILE.as_bytes()));
        recs.push(sse(9, T0 + 7, 0, Some(HOSTILE), HOSTILE));
        recs.push(Record::StreamEvent(StreamEvent {
            session: "s1".into(),
            exchange: ExchangeId::new(9),
            kind: StreamKind::WebSocket,
            dir: Direction::Request,
            at: T0 + 8,
            index: 1,
            name: Some("text".into()),
            data: HOSTILE.repeat(50),
            truncated_from: None,
        }));
        recs
    }

    #[test]
    fn html_escapes_everything_recorded() {
        let html = to_html(&SessionView::from_records(hostile_records()).unwrap());
        const OURS: &[&str] = &[
            "!doctype", "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "code",
            "p", "span", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "main", "ol", "li",
            "div", "svg", "rect", "pre", "details", "summary", "footer", "script",
        ];
        for (name, attrs) in tags(&html) {
            assert!(
                OURS.contains(&name.trim_start_matches('/')),
                "unexpected tag <{name}> in:\n{html}"
            );
            for a in attrs {
                assert!(
                    !a.starts_with("on") && a != "src" && a != "href" && a != "srcdoc",
                    "attribute {a} on <{name}>"
                );
            }
        }
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;"));
    }

    #[test]
    fn html_loads_nothing_from_anywhere() {
        let html = to_html(&SessionView::from_records(hostile_records()).unwrap());
        for bad in [
            "<script src",
            "<link",
            "<img",
            "<iframe",
            "<object",
            "<embed",
            "url(",
            "@import",
            "<base",
        ] {
            assert!(!html.to_ascii_lowercase().contains(bad), "{bad} in the page");
        }
        // A URL may appear only as text (recorded data), never inside a tag, the style or the script.
        let style = html.find("<style>").unwrap()..html.find("</style>").unwrap();
        let script = html.find("<script>").unwrap()..html.find("</script>\n</body>").unwrap();
        for scheme in ["http://", "https://", "//"] {
            for (i, _) in html.match_indices(scheme) {
                let in_tag = html[..i].rfind('<') > html[..i].rfind('>');
                assert!(
                    !in_tag,
                    "{scheme} inside a tag at {i}: {}",
                    &html[i.saturating_sub(80)..i + 20]
                );
                if scheme != "//" {
                    assert!(
                        !style.contains(&i) && !script.contains(&i),
                        "{scheme} in the style or script"
                    );
                }
            }
        }
        let csp = "default-src 'none'";
        assert!(html.find(csp).unwrap() < html.find("<style>").unwrap());
    }

    #[test]
    fn the_csp_hashes_match_the_inline_style_and_script() {
        let html = to_html(&view());
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(html.contains(&format!("style-src {}", csp_hash(STYLE))));
        assert!(html.contains(&format!("script-src {}", csp_hash(SCRIPT))));
    }

    #[test]
    fn html_shows_who_the_prompt_the_completion_and_the_push() {
        let html = to_html(&view());
        for want in [
            "alice (uid 1000, gid 1000)",
            "<code>/usr/lib/claude</code>",
            "/ghgate/agents",
            "GITHUB_RUN_ID",
            "2026-05-20 10:00:00.000000 UTC",
            "https://api.anthropic.com/v1/messages",
            "200 OK",
            "ttfb 120 ms · total 900 ms",
            "Prompt to <span class=\"mono\">claude-x</span>",
            "<div class=\"role\">user</div><pre>Say hi</pre>",
            "Completion: content block 0</h3>\n<pre class=\"completion\">Hello!</pre>",
            "2 server-sent events",
            "+0.128 s",
            "<td class=\"mono\">refs/heads/main</td><td>create</td><td class=\"mono\">0000000 → a1b2c3d</td>",
            "Pack: 12.3 KiB",
            "<span class=\"url\">https://api.openai.com/v1/completions</span><span class=\"st\">unfinished</span>",
            "Completion: choice 0</h3>\n<pre class=\"completion\">par</pre>",
            "passthrough (not intercepted: passthrough list)",
            "objects.githubusercontent.com",
            "session ended (exited)",
        ] {
            assert!(html.contains(want), "missing {want:?}");
        }
    }

    #[test]
    fn long_texts_are_previewed_and_expandable() {
        let mut h = String::new();
        text_block(&mut h, &"y".repeat(PREVIEW_CHARS + 10));
        assert!(h.contains("<details><summary>show all 1510 characters</summary>"));
        assert_eq!(h.matches(&"y".repeat(PREVIEW_CHARS)).count(), 2);
    }
}
