//! One session rebuilt from its records: the exchanges with their reassembled bodies, stream
//! events and git operations, the connections and passthrough relays, and a timeline of all of it.
//! `ghgate sessions show`, `replay` and the exports all start from a `SessionView`.
//!
//! It only reads what was recorded; it never invents a fact the records do not hold (an exchange
//! that never finished stays visibly unfinished), and text rendered for a terminal never carries
//! the recorded bytes' control characters through.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::Path,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};

use crate::{
    id::{ExchangeId, SessionId},
    index::{Index, IndexError, RecordSource, StoreDir},
    model::{
        AnsweredBy, ApprovalStep, Connection, Decision, Direction, EgressSeen, Exchange, GitOp, Identity,
        Masked, Micros, Passthrough, PassthroughStart, PushSecret, Record, Refusal, RequestStart, SessionEnd,
        SessionStart, StreamEvent, StreamKind,
    },
    store,
};
use ghgate_mask::payload;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no records were given for the session")]
    Empty,
    #[error("records of two sessions were mixed: {first:?} and {other:?}")]
    Mixed { first: SessionId, other: SessionId },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot read record at segment {segment} offset {offset} of session {session}: {cause}")]
    Store {
        session: SessionId,
        segment: u64,
        offset: u64,
        cause: store::Error,
    },
    #[error(
        "the index says segment {segment} offset {offset} holds a record of session {session}, but the \
         record there belongs to {found}; the index is stale: run `ghgate sessions reindex`"
    )]
    Stale {
        session: SessionId,
        segment: u64,
        offset: u64,
        found: String,
    },
}

/// A session as its records tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub start: SessionStart,
    /// False when the session's first record is not among its records (pruned by retention):
    /// `start` then holds only the id and the first time seen.
    pub start_recorded: bool,
    pub end: Option<SessionEnd>,
    pub connections: Vec<Connection>,
    /// In the order their first record was written.
    pub exchanges: Vec<ExchangeView>,
    pub passthrough: Vec<Passthrough>,
    /// Passthrough relays as they began (recorded before the upstream was dialled).
    pub passthrough_started: Vec<PassthroughStart>,
    /// Connections of this session that were refused (kernel or gateway).
    pub refusals: Vec<Refusal>,
    /// Connections of this session egress control saw and let through (not GitHub's).
    pub egress: Vec<EgressSeen>,
    /// The steps of approvals this session asked for or used, in order.
    pub approvals: Vec<ApprovalStep>,
}

/// One exchange: its final record when it finished, and whatever was recorded while it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeView {
    pub id: ExchangeId,
    /// Written before the request was forwarded (None in stores older than that record).
    pub request: Option<RequestStart>,
    /// None when the exchange never finished (the gateway was stopped mid-stream): its request,
    /// chunks, events and git operations are still here, its status and timings are not.
    pub exchange: Option<Exchange>,
    /// The stored part of each body, reassembled by offset up to the first missing chunk.
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// In stream order.
    pub events: Vec<StreamEvent>,
    pub git: Vec<GitOp>,
    /// Secrets the masking stage found in it.
    pub masked: Vec<Masked>,
    /// Secrets the policy stage found in what a push carried.
    pub push_secrets: Vec<PushSecret>,
    /// Who the caller was taken to be, and which credential went upstream.
    pub identity: Option<Identity>,
    /// What the policy decided (one per ref for a push).
    pub decisions: Vec<Decision>,
    /// When its first record says it began.
    pub first_at: Micros,
    /// What did not add up while reassembling (missing or conflicting chunks).
    pub notes: Vec<String>,
}

/// Text of a streamed completion, reassembled from its SSE events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Which part of the answer: "choice 0", "content block 1", "thinking (block 0)", …
    pub part: String,
    pub text: String,
}

/// One fact of a session at the time it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineItem<'a> {
    pub at: Micros,
    pub fact: Fact<'a>,
    /// The fact on one line, safe for a terminal (what `replay` prints).
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fact<'a> {
    SessionStart(&'a SessionStart),
    Connection(&'a Connection),
    /// The exchange began (its first record, or its start time once finished).
    Request(&'a ExchangeView),
    /// The response head reached the client (finished exchanges only).
    ResponseHead(&'a ExchangeView),
    Event(&'a ExchangeView, &'a StreamEvent),
    Git(&'a ExchangeView, &'a GitOp),
    Masked(&'a ExchangeView, &'a Masked),
    Decision(&'a ExchangeView, &'a Decision),
    Approval(&'a ApprovalStep),
    /// The response body ended (finished exchanges only).
    ExchangeEnd(&'a ExchangeView),
    Passthrough(&'a Passthrough),
    PassthroughStart(&'a PassthroughStart),
    Refusal(&'a Refusal),
    Egress(&'a EgressSeen),
    SessionEnd(&'a SessionEnd),
}

#[derive(Default)]
struct Body {
    chunks: Vec<(u64, Vec<u8>)>,
    bad: Vec<String>,
}

impl SessionView {
    /// Rebuilds a session from its records, in store order. Records that belong to no session
    /// (recovery, tombstones) are ignored; records of another session are an error.
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Result<SessionView, SessionError> {
        let mut id: Option<SessionId> = None;
        let mut first_at = None;
        let mut start = None;
        let mut end = None;
        let mut connections = Vec::new();
        let mut passthrough = Vec::new();
        let mut passthrough_started = Vec::new();
        let mut refusals = Vec::new();
        let mut egress = Vec::new();
        let mut approvals = Vec::new();
        let mut order: Vec<ExchangeId> = Vec::new();
        let mut exchanges: HashMap<ExchangeId, Parts> = HashMap::new();
        for record in records {
            let Some(session) = record.session() else { continue };
            match &id {
                None => id = Some(session.clone()),
                Some(first) if first != session => {
                    return Err(SessionError::Mixed {
                        first: first.clone(),
                        other: session.clone(),
                    });
                }
                Some(_) => {}
            }
            first_at.get_or_insert(record.at());
            match record {
                Record::SessionStart(s) => {
                    start.get_or_insert(s);
                }
                Record::SessionEnd(e) => end = Some(e),
                Record::Connection(c) => connections.push(c),
                Record::Passthrough(p) => passthrough.push(p),
                Record::PassthroughStart(p) => passthrough_started.push(p),
                Record::Refusal(r) => refusals.push(r),
                Record::Egress(e) => egress.push(e),
                Record::Request(r) => {
                    let (view, _, _) = exchange_entry(&mut exchanges, &mut order, r.exchange, r.at);
                    view.first_at = view.first_at.min(r.at);
                    view.request = Some(r);
                }
                Record::Exchange(x) => {
                    let (view, _, _) = exchange_entry(&mut exchanges, &mut order, x.exchange, x.started_at);
                    view.first_at = view.first_at.min(x.started_at);
                    view.exchange = Some(x);
                }
                Record::BodyChunk(c) => {
                    let (_, req, resp) = exchange_entry(&mut exchanges, &mut order, c.exchange, c.at);
                    let body = match c.dir {
                        Direction::Request => req,
                        Direction::Response => resp,
                    };
                    match B64.decode(c.data.as_bytes()) {
                        Ok(bytes) => body.chunks.push((c.offset, bytes)),
                        Err(e) => body
                            .bad
                            .push(format!("a chunk at offset {} is not base64 ({e})", c.offset)),
                    }
                }
                Record::StreamEvent(e) => exchange_entry(&mut exchanges, &mut order, e.exchange, e.at)
                    .0
                    .events
                    .push(e),
                Record::Git(g) => exchange_entry(&mut exchanges, &mut order, g.exchange, g.at)
                    .0
                    .git
                    .push(g),
                Record::Masked(m) => exchange_entry(&mut exchanges, &mut order, m.exchange, m.at)
                    .0
                    .masked
                    .push(m),
                Record::Identity(i) => {
                    let (ex, at) = (i.exchange, i.at);
                    exchange_entry(&mut exchanges, &mut order, ex, at).0.identity = Some(i);
                }
                Record::Decision(d) => exchange_entry(&mut exchanges, &mut order, d.exchange, d.at)
                    .0
                    .decisions
                    .push(d),
                Record::Approval(a) => approvals.push(a),
                Record::PushSecret(p) => exchange_entry(&mut exchanges, &mut order, p.exchange, p.at)
                    .0
                    .push_secrets
                    .push(p),
                Record::Recovery(_)
                | Record::Tombstone(_)
                | Record::Unrecorded(_)
                | Record::EnforcementGap(_) => {}
            }
        }
        let id = id.ok_or(SessionError::Empty)?;
        let start_recorded = start.is_some();
        let start = start.unwrap_or_else(|| SessionStart {
            session: id.clone(),
            at: first_at.unwrap_or(0),
            tgid: 0,
            uid: 0,
            user: None,
            gid: 0,
            comm: String::new(),
            exe: None,
            cmdline: Vec::new(),
            cgroup_id: 0,
            cgroup: None,
            ci: Vec::new(),
        });
        let exchanges = order
            .into_iter()
            .filter_map(|ex| exchanges.remove(&ex))
            .map(|(mut view, req, resp)| {
                view.request_body = assemble(req, "request", &mut view.notes);
                view.response_body = assemble(resp, "response", &mut view.notes);
                // Each stream numbers its events (a WebSocket's two directions share one counter).
                view.events.sort_by_key(|e| e.index);
                view
            })
            .collect();
        Ok(SessionView {
            start,
            start_recorded,
            end,
            connections,
            exchanges,
            passthrough,
            passthrough_started,
            refusals,
            egress,
            approvals,
        })
    }

    /// Reads the session `id` (or a unique id prefix) through the index from the store.
    pub fn load(store_dir: &Path, index: &Index, id: &str) -> Result<SessionView, SessionError> {
        SessionView::load_from(&StoreDir(store_dir), index, id)
    }

    /// `load`, from any source of records.
    pub fn load_from(
        source: &dyn RecordSource,
        index: &Index,
        id: &str,
    ) -> Result<SessionView, SessionError> {
        let session = index.resolve(id)?;
        let mut records = Vec::new();
        for run in index.session_records(session.as_str())? {
            let read = source
                .read_run(run.segment, run.offset, run.records)
                .map_err(|cause| SessionError::Store {
                    session: session.clone(),
                    segment: run.segment,
                    offset: run.offset,
                    cause,
                })?;
            for (pos, record) in read {
                if record.session() != Some(&session) {
                    return Err(SessionError::Stale {
                        session,
                        segment: pos.segment,
                        offset: pos.offset,
                        found: record
                            .session()
                            .map_or("no session", SessionId::as_str)
                            .to_owned(),
                    });
                }
                records.push(record);
            }
        }
        SessionView::from_records(records)
    }

    /// Every fact in time order; facts at the same time keep the order the session produced them.
    pub fn timeline(&self) -> Vec<TimelineItem<'_>> {
        let mut items = Vec::new();
        let mut push = |at, fact| {
            items.push(TimelineItem {
                at,
                fact,
                text: describe(&fact),
            })
        };
        if self.start_recorded {
            push(self.start.at, Fact::SessionStart(&self.start));
        }
        for c in &self.connections {
            push(c.at, Fact::Connection(c));
        }
        for x in &self.exchanges {
            push(x.first_at, Fact::Request(x));
            if let Some(e) = &x.exchange {
                push(e.started_at + e.ttfb_us, Fact::ResponseHead(x));
            }
            for ev in &x.events {
                push(ev.at, Fact::Event(x, ev));
            }
            for g in &x.git {
                push(g.at, Fact::Git(x, g));
            }
            for m in &x.masked {
                push(m.at, Fact::Masked(x, m));
            }
            for d in &x.decisions {
                push(d.at, Fact::Decision(x, d));
            }
            if let Some(e) = &x.exchange {
                push(e.started_at + e.duration_us, Fact::ExchangeEnd(x));
            }
        }
        for p in &self.passthrough {
            push(p.at, Fact::Passthrough(p));
        }
        for p in &self.passthrough_started {
            push(p.at, Fact::PassthroughStart(p));
        }
        for r in &self.refusals {
            push(r.at, Fact::Refusal(r));
        }
        for e in &self.egress {
            push(e.at, Fact::Egress(e));
        }
        for a in &self.approvals {
            push(a.at, Fact::Approval(a));
        }
        if let Some(e) = &self.end {
            push(e.at, Fact::SessionEnd(e));
        }
        items.sort_by_key(|i| i.at);
        items
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.start.session
    }
}

impl ExchangeView {
    /// Where the exchange started: its recorded start, or its first record when unfinished.
    pub fn started_at(&self) -> Micros {
        match (&self.exchange, &self.request) {
            (Some(e), _) => e.started_at,
            (None, Some(r)) => r.at,
            (None, None) => self.first_at,
        }
    }

    /// The request method, when its request or final record was kept.
    pub fn method(&self) -> Option<&str> {
        self.exchange
            .as_ref()
            .map(|e| e.method.as_str())
            .or(self.request.as_ref().map(|r| r.method.as_str()))
    }

    /// The request URL, when its request or final record was kept.
    pub fn url(&self) -> Option<&str> {
        self.exchange
            .as_ref()
            .map(|e| e.url.as_str())
            .or(self.request.as_ref().map(|r| r.url.as_str()))
    }

    /// The prompt the request carried, when its body is a completion API request (as stored:
    /// masked).
    pub fn prompt(&self) -> Option<payload::Prompt> {
        serde_json::from_slice(&self.request_body)
            .ok()
            .and_then(|v| payload::request_prompt(&v))
    }

    /// The model's answer, per choice, tool call or content block: reassembled from the SSE
    /// events when it streamed, else read from the whole response body.
    pub fn answers(&self) -> Vec<Completion> {
        let streamed = self.completions();
        if !streamed.is_empty() {
            return streamed;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.response_body) else {
            return Vec::new();
        };
        payload::body_texts(&v)
            .into_iter()
            .map(|t| Completion {
                part: t.stream.to_string(),
                text: t.text.to_owned(),
            })
            .collect()
    }

    /// The model text streamed back in SSE events, per choice, tool call or content block, in
    /// the shapes [`ghgate_mask::payload`] knows (OpenAI chat, completions and Responses API,
    /// Anthropic messages), each stream's pieces joined, in order of first appearance.
    pub fn completions(&self) -> Vec<Completion> {
        let mut parts: Vec<Completion> = Vec::new();
        for e in &self.events {
            if e.kind != StreamKind::Sse || e.dir != Direction::Response {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(e.data.trim()) else {
                continue;
            };
            for t in payload::event_texts(&v)
                .into_iter()
                .filter(|t| !t.text.is_empty())
            {
                let part = t.stream.to_string();
                match parts.iter_mut().find(|c| c.part == part) {
                    Some(c) => c.text.push_str(t.text),
                    None => parts.push(Completion {
                        part,
                        text: t.text.to_owned(),
                    }),
                }
            }
        }
        parts
    }
}

type Parts = (ExchangeView, Body, Body);

fn exchange_entry<'m>(
    exchanges: &'m mut HashMap<ExchangeId, Parts>,
    order: &mut Vec<ExchangeId>,
    ex: ExchangeId,
    at: Micros,
) -> &'m mut Parts {
    exchanges.entry(ex).or_insert_with(|| {
        order.push(ex);
        let view = ExchangeView {
            id: ex,
            request: None,
            exchange: None,
            request_body: Vec::new(),
            response_body: Vec::new(),
            events: Vec::new(),
            git: Vec::new(),
            masked: Vec::new(),
            push_secrets: Vec::new(),
            identity: None,
            decisions: Vec::new(),
            first_at: at,
            notes: Vec::new(),
        };
        (view, Body::default(), Body::default())
    })
}

/// How a ref moves, as people read it: an update whose ancestry could not be checked is
/// `unknown`, never shown as either kind.
pub fn kind_label(kind: crate::model::RefKind) -> &'static str {
    match kind {
        crate::model::RefKind::Update => "unknown",
        k => k.as_str(),
    }
}

/// A secret found in what a push or an API write carried, on one line (never the secret).
pub fn push_line(p: &PushSecret) -> String {
    format!(
        "{} {} commit {} file {}: {} by {}",
        p.repository.as_deref().unwrap_or("(repository unknown)"),
        p.ref_name,
        p.commit
            .map_or_else(|| "(unknown)".to_owned(), |c| c.short().to_string()),
        p.path.as_deref().unwrap_or("(unknown)"),
        p.outcome.as_str(),
        p.rule_decided
    )
}

/// A policy decision on one line: what was decided, by which rule, and what came of it.
pub fn decision_line(d: &Decision) -> String {
    let what = match &d.ref_update {
        Some(r) => format!(
            "{} {} {} → {}",
            one_line(&r.name, 200),
            kind_label(r.kind),
            r.old.short(),
            r.new.short()
        ),
        None => "request".into(),
    };
    let mut line = format!(
        "{what}: {} by {} → {}",
        d.action.as_str(),
        one_line(&d.rule, 120),
        d.outcome.as_str()
    );
    if let Some(a) = &d.approval {
        let _ = write!(line, " (approval {})", one_line(a, 40));
    }
    if let Some(m) = &d.message {
        let _ = write!(line, ": {}", one_line(m, 200));
    }
    if let Some(r) = &d.ref_update {
        if let Some(from) = &r.kind_from {
            let _ = write!(line, " [kind: {}]", one_line(from, 120));
        }
        if let Some(why) = &r.paths_unknown {
            let _ = write!(line, " [paths unknown: {}]", one_line(why, 120));
        } else if !r.paths.is_empty() {
            let shown: Vec<String> = r.paths.iter().take(5).map(|p| one_line(p, 120)).collect();
            let more = r.paths.len().saturating_sub(5);
            let _ = write!(
                line,
                " [changes {}{}]",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    line
}

/// An approval step on one line.
pub fn approval_line(a: &ApprovalStep) -> String {
    let mut line = format!(
        "approval {} {}: {} ({})",
        one_line(&a.id, 40),
        a.step.as_str(),
        one_line(&a.operation, 300),
        one_line(&a.rule, 120)
    );
    if let Some(by) = &a.by {
        // The approver and how it was known ("alice@example.com (oidc https://… subject …)").
        let _ = write!(line, " by {}", one_line(by, 240));
    }
    if let Some(r) = &a.reason {
        let _ = write!(line, ": {}", one_line(r, 200));
    }
    line
}

/// One line for a fact, as `replay` prints it.
fn describe(fact: &Fact<'_>) -> String {
    let request = |x: &ExchangeView| {
        format!(
            "{} {}",
            one_line(x.method().unwrap_or("?"), 20),
            one_line(x.url().unwrap_or("(URL not recorded)"), 300)
        )
    };
    match *fact {
        Fact::SessionStart(s) => format!(
            "session started: {} (pid {}, uid {}) {}",
            one_line(&s.comm, 40),
            s.tgid,
            s.uid,
            one_line(&s.cmdline.join(" "), 200)
        ),
        Fact::SessionEnd(e) => format!("session ended ({})", e.reason),
        Fact::Connection(c) => format!(
            "connection {} → {} sni {} alpn {}",
            one_line(&c.client, 80),
            one_line(&c.orig_dst, 80),
            one_line(&c.sni, 200),
            one_line(&c.client_alpn, 20)
        ),
        Fact::Request(x) => format!("→ {}", request(x)),
        Fact::ResponseHead(x) => {
            let e = x.exchange.as_ref();
            format!("← {} {}", e.map_or(0, |e| e.status), request(x))
        }
        Fact::Event(_, ev) => {
            let dir = match (&ev.kind, ev.dir) {
                (StreamKind::Sse, _) => "event",
                (StreamKind::WebSocket, Direction::Request) => "ws →",
                (StreamKind::WebSocket, Direction::Response) => "ws ←",
            };
            format!(
                "  {dir} {}  {}",
                one_line(ev.name.as_deref().unwrap_or("message"), 60),
                one_line(&ev.data, 120)
            )
        }
        Fact::Git(_, g) => {
            let mut parts: Vec<String> = g
                .updates
                .iter()
                .map(|u| {
                    format!(
                        "push {} {} {} → {}",
                        one_line(&u.name, 200),
                        u.op().as_str(),
                        u.old.short(),
                        u.new.short()
                    )
                })
                .collect();
            if !g.wants.is_empty() {
                parts.push(format!("fetch {} objects", g.wants.len()));
            }
            if parts.is_empty() {
                parts.push(g.service.as_str().to_owned());
            }
            format!("  git {}", parts.join("; "))
        }
        Fact::Masked(_, m) => format!(
            "  masked {} [{}] in the {}{}",
            one_line(&m.rule, 60),
            one_line(&m.fingerprint, 24),
            m.place.as_str(),
            if m.client_masked {
                ""
            } else {
                " (the client received it unmasked)"
            }
        ),
        Fact::Decision(_, d) => format!("  policy {}", decision_line(d)),
        Fact::Approval(a) => approval_line(a),
        Fact::ExchangeEnd(x) => {
            let e = x.exchange.as_ref();
            format!(
                "✓ {} {}  ↓{} in {}",
                e.map_or(0, |e| e.status),
                request(x),
                size(e.map_or(0, |e| e.response_body.len)),
                duration(e.map_or(0, |e| e.duration_us))
            )
        }
        Fact::Passthrough(p) => format!(
            "passthrough {} → {} ({})  ↑{} ↓{}",
            one_line(&p.client, 80),
            one_line(&p.orig_dst, 80),
            p.reason.as_str(),
            size(p.bytes_up),
            size(p.bytes_down)
        ),
        Fact::PassthroughStart(p) => passthrough_start_line(p),
        Fact::Refusal(r) => refusal_line(r),
        Fact::Egress(e) => egress_line(e),
    }
}

/// One connection egress control let through, as `show` prints it.
pub fn egress_line(e: &EgressSeen) -> String {
    format!(
        "egress: {} {}{}{}",
        one_line(e.transport.as_str(), 40),
        one_line(&e.orig_dst, 80),
        e.name
            .as_deref()
            .map(|n| format!("  name {}", one_line(n, 200)))
            .unwrap_or_default(),
        if e.count > 1 {
            format!("  ×{}", e.count)
        } else {
            String::new()
        },
    )
}

/// `  sni NAME`, or nothing.
fn sni_part(sni: Option<&str>) -> String {
    sni.map(|s| format!("  sni {}", one_line(s, 200)))
        .unwrap_or_default()
}

fn passthrough_start_line(p: &PassthroughStart) -> String {
    format!(
        "passthrough begins {} → {}{}  ({})",
        one_line(&p.client, 80),
        one_line(&p.orig_dst, 80),
        sni_part(p.sni.as_deref()),
        p.reason.as_str()
    )
}

/// One refusal, as `show` and `refusals` print it.
pub fn refusal_line(r: &Refusal) -> String {
    format!(
        "refused by the {} ({}): {} {}{}{}{}",
        r.layer.as_str(),
        r.reason.as_str(),
        one_line(r.transport.as_str(), 40),
        one_line(&r.orig_dst, 80),
        sni_part(r.sni.as_deref()),
        if r.count > 1 {
            format!("  ×{}", r.count)
        } else {
            String::new()
        },
        r.detail
            .as_deref()
            .map(|d| format!("  ({})", one_line(d, 200)))
            .unwrap_or_default()
    )
}

fn assemble(mut body: Body, what: &str, notes: &mut Vec<String>) -> Vec<u8> {
    notes.extend(body.bad.drain(..).map(|b| format!("{what} body: {b}")));
    body.chunks.sort_by_key(|(offset, _)| *offset);
    let mut out: Vec<u8> = Vec::new();
    for (offset, bytes) in body.chunks {
        let offset = offset as usize;
        if offset > out.len() {
            notes.push(format!(
                "{what} body: bytes {}..{offset} were not recorded; what follows them is left out",
                out.len()
            ));
            break;
        }
        let overlap = (out.len() - offset).min(bytes.len());
        if out[offset..offset + overlap] != bytes[..overlap] {
            notes.push(format!(
                "{what} body: two chunks disagree about the bytes at offset {offset}"
            ));
        }
        out.extend_from_slice(&bytes[overlap..]);
    }
    out
}

/// "2026-05-20T10:00:00.123+00:00": ISO 8601 with milliseconds, in UTC.
pub fn iso8601(at: Micros) -> String {
    let t = utc(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// "2026-05-20 10:00:00.123456 UTC"
pub fn datetime(at: Micros) -> String {
    let t = utc(at);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// "10:00:00.123"
pub fn clock(at: Micros) -> String {
    let t = utc(at);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn utc(at: Micros) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// "340 ms", "1.25 s", "850 µs".
pub fn duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..10_000_000 if us < 1_000_000 => format!("{} ms", us / 1_000),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// "512 B", "1.2 KiB", "3.4 MiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Recorded text made safe for one terminal line: control characters (escape sequences
/// included) are shown as escapes, and at most `max` characters are kept.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// How much of a session `ghgate sessions show` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShowOptions {
    /// Every stream event as recorded (SSE, WebSocket), also for model calls whose answers are
    /// shown reassembled; streams without model text list their events anyway.
    pub events: bool,
}

/// At most this many characters of one prompt message or answer are printed; the exports hold
/// everything.
pub const MAX_SHOWN_CHARS: usize = 4000;

/// Recorded text made safe for a terminal as a block of lines under `indent`: control
/// characters other than newlines and tabs (escape sequences included) are shown as escapes,
/// and at most `max` characters are kept (the rest counted).
pub fn text_block(out: &mut String, indent: &str, text: &str, max: usize) {
    let total = text.chars().count();
    let kept: String = text.chars().take(max).collect();
    for line in terminal_text(&kept).split('\n') {
        let _ = writeln!(out, "{indent}{line}");
    }
    if total > max {
        let _ = writeln!(
            out,
            "{indent}[… {} more characters; `ghgate sessions export` holds everything]",
            total - max
        );
    }
}

/// Recorded text made safe for a terminal, keeping its lines: newlines and tabs stay, a CR
/// before a newline goes, every other control character (escape sequences included) and the
/// bidirectional overrides are shown as escapes.
pub fn terminal_text(text: &str) -> String {
    text.replace("\r\n", "\n")
        .split('\n')
        .map(|line| {
            line.split('\t')
                .map(|part| one_line(part, usize::MAX))
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One step of `ghgate sessions replay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStep {
    /// A fact, on a line of its own.
    Line(String),
    /// A piece of a model's answer as it streamed, safe for a terminal; pieces of one answer
    /// (`exchange`, `part`) continue each other.
    Text {
        exchange: ExchangeId,
        part: String,
        text: String,
    },
}

impl SessionView {
    /// The session as it happened, for `replay`: each fact as a line, a model call's prompt
    /// after its request, and its answer's text piece by piece as it streamed (not the raw
    /// events; a stream that carries no model text, or a WebSocket message, is played event by
    /// event). An answer that did not stream comes
    /// whole, when its exchange ended.
    pub fn replay_steps(&self) -> Vec<(Micros, ReplayStep)> {
        // Exchanges whose events carry model text: those are played as text; any other stream
        // (not a model's) is played event by event.
        let models: HashSet<ExchangeId> = self
            .exchanges
            .iter()
            .filter(|x| !x.completions().is_empty())
            .map(|x| x.id)
            .collect();
        let mut steps = Vec::new();
        for item in self.timeline() {
            match item.fact {
                Fact::Event(x, ev) if ev.kind == StreamKind::Sse && models.contains(&x.id) => {
                    if ev.dir != Direction::Response {
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(ev.data.trim()) else {
                        continue;
                    };
                    for t in payload::event_texts(&v)
                        .into_iter()
                        .filter(|t| !t.text.is_empty())
                    {
                        steps.push((
                            item.at,
                            ReplayStep::Text {
                                exchange: x.id,
                                part: t.stream.to_string(),
                                text: terminal_text(t.text),
                            },
                        ));
                    }
                }
                Fact::Request(x) => {
                    steps.push((item.at, ReplayStep::Line(item.text)));
                    if let Some(p) = x.prompt() {
                        for (role, text) in &p.messages {
                            steps.push((
                                item.at,
                                ReplayStep::Line(format!(
                                    "  prompt [{}] {}",
                                    one_line(role, 40),
                                    one_line(text, 300)
                                )),
                            ));
                        }
                        if let Some(suffix) = &p.suffix {
                            steps.push((
                                item.at,
                                ReplayStep::Line(format!("  prompt [suffix] {}", one_line(suffix, 300))),
                            ));
                        }
                    }
                }
                Fact::ExchangeEnd(x) => {
                    if x.completions().is_empty() {
                        for a in x.answers() {
                            steps.push((
                                item.at,
                                ReplayStep::Text {
                                    exchange: x.id,
                                    part: a.part,
                                    text: terminal_text(&a.text),
                                },
                            ));
                        }
                    }
                    steps.push((item.at, ReplayStep::Line(item.text)));
                }
                _ => steps.push((item.at, ReplayStep::Line(item.text))),
            }
        }
        steps
    }
}

/// The session as plain text, for `ghgate sessions show`.
pub fn render_text(view: &SessionView, opts: ShowOptions) -> String {
    let s = &view.start;
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "  {label:<10}{}", one_line(value, 400));
    };
    let _ = writeln!(out, "session {}", one_line(view.id().as_str(), 200));
    if view.start_recorded {
        let user = s
            .user
            .as_deref()
            .map_or_else(|| format!("uid {}", s.uid), |u| format!("{u} (uid {})", s.uid));
        line(&mut out, "user", &format!("{user}, gid {}", s.gid));
        let exe = s.exe.as_deref().unwrap_or("(executable unknown: the process was gone before the gateway looked; the kernel's facts above stand)");
        line(&mut out, "process", &format!("{} (pid {}) {exe}", s.comm, s.tgid));
        if !s.cmdline.is_empty() {
            line(&mut out, "cmdline", &s.cmdline.join(" "));
        }
        let cgroup = s.cgroup.as_deref().unwrap_or("(path unknown)");
        line(&mut out, "cgroup", &format!("{cgroup} (id {})", s.cgroup_id));
        for (k, v) in &s.ci {
            line(&mut out, "CI", &format!("{k}={v}"));
        }
        line(&mut out, "started", &datetime(s.at));
    } else {
        line(
            &mut out,
            "started",
            &format!(
                "before {} (the session's first record was pruned: who and what are unknown)",
                datetime(s.at)
            ),
        );
    }
    match &view.end {
        Some(e) => line(&mut out, "ended", &format!("{} ({})", datetime(e.at), e.reason)),
        None => line(
            &mut out,
            "ended",
            "not recorded (still running, or the gateway stopped abruptly)",
        ),
    }
    let _ = writeln!(out);
    for item in view.timeline() {
        let at = clock(item.at);
        match item.fact {
            Fact::Connection(c) => {
                let _ = writeln!(
                    out,
                    "{at}  connection {} → {}  sni {}  alpn {}{}",
                    one_line(&c.client, 80),
                    one_line(&c.orig_dst, 80),
                    one_line(&c.sni, 200),
                    one_line(&c.client_alpn, 20),
                    c.client_tls
                        .as_deref()
                        .map(|t| format!("  {}", one_line(t, 40)))
                        .unwrap_or_default()
                );
            }
            Fact::Request(x) => render_exchange(&mut out, &at, x, opts),
            Fact::Passthrough(p) => {
                let _ = writeln!(
                    out,
                    "{at}  passthrough {} → {}{}  ({})  ↑{} ↓{}  {}",
                    one_line(&p.client, 80),
                    one_line(&p.orig_dst, 80),
                    sni_part(p.sni.as_deref()),
                    p.reason.as_str(),
                    size(p.bytes_up),
                    size(p.bytes_down),
                    duration(p.duration_us)
                );
            }
            Fact::Approval(a) => {
                let _ = writeln!(out, "{at}  {}", approval_line(a));
            }
            Fact::PassthroughStart(p) => {
                let _ = writeln!(out, "{at}  {}", passthrough_start_line(p));
            }
            Fact::Refusal(r) => {
                let _ = writeln!(out, "{at}  {}", refusal_line(r));
            }
            Fact::Egress(e) => {
                let _ = writeln!(out, "{at}  {}", egress_line(e));
            }
            Fact::SessionStart(_) | Fact::SessionEnd(_) | Fact::ResponseHead(_) | Fact::ExchangeEnd(_) => {}
            Fact::Event(..) | Fact::Git(..) | Fact::Masked(..) | Fact::Decision(..) => {}
        }
    }
    out
}

/// One line on who the caller was taken to be and what went upstream.
pub fn identity_line(i: &Identity) -> String {
    let mut parts = Vec::new();
    if let (Some(iss), Some(sub)) = (&i.oidc_issuer, &i.oidc_subject) {
        parts.push(format!("oidc {sub} ({iss})"));
    }
    if let Some(claims) = &i.oidc_claims {
        parts.push(claims.clone());
    }
    match (&i.profile, i.credential) {
        (Some(p), c) => parts.push(format!("credential {c} from profile {p}")),
        (None, c) => parts.push(format!("credential {c}")),
    }
    if let Some(why) = &i.refused {
        parts.push(format!("refused: {why}"));
    }
    parts.join("; ")
}

fn render_exchange(out: &mut String, at: &str, x: &ExchangeView, opts: ShowOptions) {
    let pad = " ".repeat(at.chars().count() + 2);
    match &x.exchange {
        Some(e) => {
            let _ = writeln!(
                out,
                "{at}  {} {}  {}  ↑{} ↓{}  ttfb {}  total {}{}",
                one_line(&e.method, 20),
                one_line(&e.url, 300),
                e.status,
                size(e.request_body.len),
                size(e.response_body.len),
                duration(e.ttfb_us),
                duration(e.duration_us),
                match e.answered_by {
                    AnsweredBy::Upstream => String::new(),
                    other => format!("  (answered by {other})"),
                }
            );
            if let Some(err) = &e.error {
                let _ = writeln!(out, "{pad}error: {}", one_line(err, 300));
            }
        }
        None => {
            let _ = writeln!(
                out,
                "{at}  {} {}  unfinished: the gateway stopped before it ended  ↑{} ↓{} stored",
                one_line(x.method().unwrap_or("?"), 20),
                one_line(x.url().unwrap_or("(URL not recorded)"), 300),
                size(x.request_body.len() as u64),
                size(x.response_body.len() as u64)
            );
        }
    }
    for note in &x.notes {
        let _ = writeln!(out, "{pad}note: {}", one_line(note, 300));
    }
    if let Some(i) = &x.identity {
        let _ = writeln!(out, "{pad}identity {}", one_line(&identity_line(i), 300));
    }
    // A model call: what was asked, and what came back, reassembled.
    if let Some(p) = x.prompt() {
        let _ = writeln!(
            out,
            "{pad}prompt{}:",
            p.model
                .as_deref()
                .map(|m| format!(" to {}", one_line(m, 80)))
                .unwrap_or_default()
        );
        let inner = format!("{pad}    ");
        for (role, text) in &p.messages {
            let _ = writeln!(out, "{pad}  [{}]", one_line(role, 40));
            text_block(out, &inner, text, MAX_SHOWN_CHARS);
        }
        if let Some(suffix) = &p.suffix {
            let _ = writeln!(out, "{pad}  [suffix: the answer leads into this]");
            text_block(out, &inner, suffix, MAX_SHOWN_CHARS);
        }
    }
    let answers = x.answers();
    for a in &answers {
        let _ = writeln!(
            out,
            "{pad}answer, {} (masked as recorded):",
            one_line(&a.part, 60)
        );
        text_block(out, &format!("{pad}    "), &a.text, MAX_SHOWN_CHARS);
    }
    // A model call's raw events hide behind --events (its answer is shown reassembled above);
    // a stream that carries no model text (a WebSocket's messages, other SSE) is its content.
    let list_events = opts.events || answers.is_empty();
    if !x.events.is_empty() && !list_events {
        let _ = writeln!(
            out,
            "{pad}{} stream events (listed with --events)",
            x.events.len()
        );
    }
    let t0 = x.started_at();
    for e in x.events.iter().filter(|_| list_events) {
        let dir = match (&e.kind, e.dir) {
            (StreamKind::Sse, _) => "",
            (StreamKind::WebSocket, Direction::Request) => "→ ",
            (StreamKind::WebSocket, Direction::Response) => "← ",
        };
        let _ = writeln!(
            out,
            "{pad}  +{:.3}s  {dir}{}  {}{}",
            e.at.saturating_sub(t0) as f64 / 1e6,
            one_line(e.name.as_deref().unwrap_or("message"), 60),
            one_line(&e.data, 120),
            e.truncated_from
                .map(|n| format!("  (of {})", size(n)))
                .unwrap_or_default()
        );
    }
    for g in &x.git {
        for u in &g.updates {
            // The kind the policy stage learnt (create, fast-forward, non-fast-forward, delete),
            // else what the command alone says.
            let decided = x
                .decisions
                .iter()
                .filter_map(|d| d.ref_update.as_ref())
                .find(|r| r.name == u.name && r.old == u.old && r.new == u.new);
            let kind = decided.map_or_else(|| u.op().as_str(), |r| kind_label(r.kind));
            let _ = writeln!(
                out,
                "{pad}push {}  {} {} → {}",
                one_line(&u.name, 200),
                kind,
                u.old.short(),
                u.new.short()
            );
            for d in x.decisions.iter().filter(|d| {
                d.ref_update
                    .as_ref()
                    .is_some_and(|r| r.name == u.name && r.old == u.old && r.new == u.new)
            }) {
                let _ = writeln!(out, "{pad}  policy {}", decision_line(d));
            }
        }
        if let Some(len) = g.pack_len {
            let _ = writeln!(out, "{pad}pack {}", size(len));
        }
        for w in &g.wants {
            let refs = if w.refs.is_empty() {
                String::new()
            } else {
                format!("  ({})", w.refs.join(", "))
            };
            let _ = writeln!(out, "{pad}want {}{}", w.oid.short(), one_line(&refs, 200));
        }
    }
    // Decisions not shown beside a pushed ref above.
    let pushed = |d: &Decision| {
        d.ref_update.as_ref().is_some_and(|r| {
            x.git
                .iter()
                .flat_map(|g| &g.updates)
                .any(|u| r.name == u.name && r.old == u.old && r.new == u.new)
        })
    };
    for d in x.decisions.iter().filter(|d| !pushed(d)) {
        let _ = writeln!(out, "{pad}policy {}", decision_line(d));
    }
    for p in &x.push_secrets {
        let _ = writeln!(
            out,
            "{pad}secret {} [{}] carried to {}{}",
            one_line(&p.rule, 60),
            one_line(&p.fingerprint, 24),
            one_line(&push_line(p), 400),
            if p.seen_in_response {
                "  (seen in a response before)"
            } else {
                ""
            }
        );
    }
    for m in &x.masked {
        let _ = writeln!(
            out,
            "{pad}masked {} [{}] in the {}{}",
            one_line(&m.rule, 60),
            one_line(&m.fingerprint, 24),
            m.place.as_str(),
            if m.client_masked {
                ""
            } else {
                "  (the client received it unmasked)"
            }
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::*;

    pub(crate) const T0: Micros = 1_779_271_200_000_000; // 2026-05-20T10:00:00Z

    pub(crate) fn start(session: &str) -> Record {
        Record::SessionStart(SessionStart {
            session: session.into(),
            at: T0,
            tgid: 4242,
            uid: 1000,
            user: Some("alice".into()),
            gid: 1000,
            comm: "claude".into(),
            exe: Some("/usr/bin/node".into()),
            cmdline: vec!["node".into(), "/usr/lib/claude".into(), "--print".into()],
            cgroup_id: 99,
            cgroup: Some("/ghgate/agents".into()),
            ci: vec![("GITHUB_RUN_ID".into(), "123".into())],
        })
    }

    pub(crate) fn chunk(ex: u64, dir: Direction, at: Micros, offset: u64, data: &[u8]) -> Record {
        Record::BodyChunk(BodyChunk {
            session: "s1".into(),
            exchange: ex.into(),
            dir,
            at,
            offset,
            data: B64.encode(data),
        })
    }

    pub(crate) fn sse(ex: u64, at: Micros, index: u64, name: Option<&str>, data: &str) -> Record {
        Record::StreamEvent(StreamEvent {
            session: "s1".into(),
            exchange: ex.into(),
            kind: StreamKind::Sse,
            dir: Direction::Response,
            at,
            index,
            name: name.map(String::from),
            data: data.into(),
            truncated_from: None,
        })
    }

    pub(crate) fn exchange(ex: u64, at: Micros, method: &str, url: &str, req: &[u8], resp: &[u8]) -> Record {
        let summary = |b: &[u8], ct: &str| BodySummary {
            len: b.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)),
            stored: b.len() as u64,
            content_type: Some(ct.into()),
        };
        Record::Exchange(Exchange {
            session: "s1".into(),
            conn: 1,
            exchange: ex.into(),
            started_at: at,
            method: method.into(),
            url: url.into(),
            http_version: "HTTP/2".into(),
            status: 200,
            request_headers: vec![("content-type".into(), "application/json".into())],
            response_headers: vec![("content-type".into(), "text/event-stream".into())],
            request_body: summary(req, "application/json"),
            response_body: summary(resp, "text/event-stream"),
            ttfb_us: 120_000,
            duration_us: 900_000,
            answered_by: AnsweredBy::Upstream,
            error: None,
        })
    }

    pub(crate) fn request(ex: u64, at: Micros, method: &str, url: &str) -> Record {
        Record::Request(RequestStart {
            session: "s1".into(),
            conn: 1,
            exchange: ex.into(),
            at,
            method: method.into(),
            url: url.into(),
        })
    }

    pub(crate) fn push(ex: u64, at: Micros) -> Record {
        Record::Git(GitOp {
            session: "s1".into(),
            exchange: ex.into(),
            at,
            service: GitService::ReceivePack,
            updates: vec![RefUpdate::new(
                "0".repeat(40).parse().unwrap(),
                format!("a1b2c3d{}", "e".repeat(33)).parse().unwrap(),
                "refs/heads/main",
            )],
            pack_len: Some(12_600),
            pack_sha256: Some("ab".repeat(32)),
            wants: vec![],
        })
    }

    /// An LLM call streamed over SSE, a git push, a passthrough, and an exchange cut off mid-stream.
    pub(crate) fn sample_records() -> Vec<Record> {
        let prompt = br#"{"model":"claude-x","messages":[{"role":"user","content":"Say hi"}],"stream":true}"#;
        let sse1 = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#;
        let sse2 = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo!"}}"#;
        let resp = format!(
            "event: content_block_delta\ndata: {sse1}\n\nevent: content_block_delta\ndata: {sse2}\n\n"
        );
        vec![
            start("s1"),
            Record::Connection(Connection {
                session: "s1".into(),
                conn: 1,
                at: T0 + 1_000,
                client: "127.0.0.1:40000".into(),
                orig_dst: "160.79.104.10:443".into(),
                sni: "api.anthropic.com".into(),
                client_alpn: "h2".into(),
                upstream_alpn: Some("h2".into()),
                client_tls: Some("TLSv1.3".into()),
                upstream_tls: Some("TLSv1.3".into()),
            }),
            request(1, T0 + 2_000, "POST", "https://api.anthropic.com/v1/messages"),
            chunk(1, Direction::Request, T0 + 2_000, 0, &prompt[..10]),
            chunk(1, Direction::Request, T0 + 2_100, 10, &prompt[10..]),
            sse(1, T0 + 130_000, 0, Some("content_block_delta"), sse1),
            chunk(1, Direction::Response, T0 + 130_000, 0, &resp.as_bytes()[..40]),
            sse(1, T0 + 250_000, 1, Some("content_block_delta"), sse2),
            chunk(1, Direction::Response, T0 + 250_000, 40, &resp.as_bytes()[40..]),
            exchange(
                1,
                T0 + 2_000,
                "POST",
                "https://api.anthropic.com/v1/messages",
                prompt,
                resp.as_bytes(),
            ),
            push(2, T0 + 1_500_000),
            exchange(
                2,
                T0 + 1_400_000,
                "POST",
                "https://github.com/o/r.git/git-receive-pack",
                b"",
                b"",
            ),
            Record::Passthrough(Passthrough {
                session: "s1".into(),
                at: T0 + 1_000_000,
                client: "127.0.0.1:40002".into(),
                orig_dst: "140.82.112.4:443".into(),
                sni: Some("objects.githubusercontent.com".into()),
                reason: PassthroughReason::PassthroughList,
                bytes_up: 800,
                bytes_down: 2_000_000,
                duration_us: 2_500_000,
            }),
            request(3, T0 + 3_000_000, "POST", "https://api.openai.com/v1/completions"),
            chunk(3, Direction::Request, T0 + 3_000_000, 0, b"{\"prompt\":\"cut\"}"),
            sse(
                3,
                T0 + 3_100_000,
                0,
                None,
                r#"{"choices":[{"index":0,"delta":{"content":"par"}}]}"#,
            ),
            Record::SessionEnd(SessionEnd {
                session: "s1".into(),
                at: T0 + 4_000_000,
                reason: SessionEndReason::Exited,
            }),
        ]
    }

    #[test]
    fn a_session_is_rebuilt_from_its_records() {
        let view = SessionView::from_records(sample_records()).unwrap();
        assert!(view.start_recorded);
        assert_eq!(view.id(), "s1");
        assert_eq!(view.connections.len(), 1);
        assert_eq!(view.passthrough.len(), 1);
        assert_eq!(view.end.as_ref().unwrap().reason, SessionEndReason::Exited);
        let ids: Vec<u64> = view.exchanges.iter().map(|x| x.id.get()).collect();
        assert_eq!(ids, [1, 2, 3]);
        let llm = &view.exchanges[0];
        assert!(llm.request_body.starts_with(b"{\"model\":\"claude-x\""));
        assert!(llm.request_body.ends_with(b"\"stream\":true}"));
        assert_eq!(
            llm.response_body.len() as u64,
            llm.exchange.as_ref().unwrap().response_body.len
        );
        assert_eq!(llm.events.len(), 2);
        assert_eq!(llm.first_at, T0 + 2_000);
        assert_eq!(
            llm.completions(),
            [Completion {
                part: "content block 0".into(),
                text: "Hello!".into()
            }]
        );
        assert_eq!(view.exchanges[1].git.len(), 1);
        assert_eq!(view.exchanges[1].first_at, T0 + 1_400_000);
        // Killed mid-stream: no exchange record, but what was recorded is there.
        let cut = &view.exchanges[2];
        assert!(cut.exchange.is_none());
        assert_eq!(cut.url(), Some("https://api.openai.com/v1/completions"));
        assert_eq!(cut.started_at(), T0 + 3_000_000);
        assert_eq!(cut.request_body, b"{\"prompt\":\"cut\"}");
        assert_eq!(cut.completions()[0].text, "par");
    }

    /// Every stream of model text the masker reassembles is shown, named: tool-call arguments
    /// and the Responses API's other kinds of text included.
    #[test]
    fn completions_name_every_stream_of_model_text() {
        let events = [
            r#"{"choices":[{"index":0,"delta":{"content":"I'll look"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"ls","arguments":"{\"pa"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\":1}"}}]}}]}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{}"}"#,
            r#"{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"ok"}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
        ];
        let mut recs = vec![start("s1")];
        for (i, e) in events.iter().enumerate() {
            recs.push(sse(1, T0 + i as u64, i as u64, None, e));
        }
        let view = SessionView::from_records(recs).unwrap();
        let got: Vec<(String, String)> = view.exchanges[0]
            .completions()
            .into_iter()
            .map(|c| (c.part, c.text))
            .collect();
        let want = [
            ("choice 0", "I'll look"),
            ("tool call 0 (choice 0)", "{\"path\":1}"),
            ("function_call_arguments (output 1)", "{}"),
            ("output 0", "ok"),
            ("thinking (block 2)", "hm"),
        ];
        assert_eq!(got, want.map(|(p, t)| (p.to_owned(), t.to_owned())));
    }

    #[test]
    fn bodies_are_reassembled_by_offset_and_holes_are_noted() {
        let recs = vec![
            start("s1"),
            chunk(1, Direction::Response, T0, 5, b"world"),
            chunk(1, Direction::Response, T0, 0, b"hello"),
            chunk(1, Direction::Response, T0, 2, b"lXo"), // overlaps, and disagrees: the first kept
            chunk(1, Direction::Request, T0, 0, b"abc"),
            chunk(1, Direction::Request, T0, 10, b"lost"),
        ];
        let view = SessionView::from_records(recs).unwrap();
        let x = &view.exchanges[0];
        assert_eq!(x.response_body, b"helloworld");
        assert_eq!(x.request_body, b"abc");
        assert!(x.notes.iter().any(|n| n.contains("disagree")), "{:?}", x.notes);
        assert!(x.notes.iter().any(|n| n.contains("bytes 3..10")), "{:?}", x.notes);
    }

    /// A decision on one line, its words whole: the outcome "refused (atomic push)" was once cut
    /// to 20 characters ("refused (atomic push…") like free text.
    #[test]
    fn a_decision_reads_on_one_line_whole() {
        let d = Decision {
            session: "s1".into(),
            exchange: ExchangeId::new(7),
            at: T0,
            action: DecisionAction::Allow,
            rule: "rule #1 \"ff\"".into(),
            message: None,
            ref_update: Some(DecidedRef {
                name: "refs/heads/main".into(),
                old: "a1".repeat(20).parse().unwrap(),
                new: "b2".repeat(20).parse().unwrap(),
                kind: RefKind::FastForward,
                kind_from: Some("the pushed commits and the compare API".into()),
                paths: Vec::new(),
                paths_unknown: None,
            }),
            approval: None,
            outcome: DecisionOutcome::RefusedAtomicPush,
        };
        assert_eq!(
            decision_line(&d),
            "refs/heads/main fast-forward a1a1a1a → b2b2b2b: allow by rule #1 \"ff\" → refused (atomic push) \
             [kind: the pushed commits and the compare API]"
        );
    }

    #[test]
    fn records_of_two_sessions_or_none_are_refused() {
        let mut other = start("s2");
        if let Record::SessionStart(s) = &mut other {
            s.at += 1;
        }
        let err = SessionView::from_records(vec![start("s1"), other]).unwrap_err();
        assert!(matches!(err, SessionError::Mixed { .. }), "{err}");
        assert!(matches!(
            SessionView::from_records(vec![]),
            Err(SessionError::Empty)
        ));
    }

    #[test]
    fn a_session_whose_start_was_pruned_still_shows() {
        let recs: Vec<Record> = sample_records().into_iter().skip(1).collect();
        let view = SessionView::from_records(recs).unwrap();
        assert!(!view.start_recorded);
        assert_eq!(view.id(), "s1");
        assert!(render_text(&view, ShowOptions::default()).contains("first record was pruned"));
    }

    #[test]
    fn the_timeline_is_in_time_order() {
        let view = SessionView::from_records(sample_records()).unwrap();
        let t = view.timeline();
        let text: Vec<&str> = t.iter().map(|i| i.text.as_str()).collect();
        assert!(
            text.contains(&"→ POST https://api.anthropic.com/v1/messages"),
            "{text:#?}"
        );
        assert!(
            text.contains(&"  git push refs/heads/main create 0000000 → a1b2c3d"),
            "{text:#?}"
        );
        assert!(
            text.contains(&"→ POST https://api.openai.com/v1/completions"),
            "{text:#?}"
        );
        assert!(t.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(matches!(t[0].fact, Fact::SessionStart(_)));
        assert!(matches!(t.last().unwrap().fact, Fact::SessionEnd(_)));
        let kinds: Vec<&str> = t
            .iter()
            .map(|i| match i.fact {
                Fact::SessionStart(_) => "start",
                Fact::Connection(_) => "conn",
                Fact::Request(_) => "req",
                Fact::ResponseHead(_) => "head",
                Fact::Event(..) => "event",
                Fact::Git(..) => "git",
                Fact::Masked(..) => "masked",
                Fact::Decision(..) => "decision",
                Fact::Approval(_) => "approval",
                Fact::ExchangeEnd(_) => "end-x",
                Fact::Passthrough(_) => "pass",
                Fact::PassthroughStart(_) => "pass-start",
                Fact::Refusal(_) => "refused",
                Fact::Egress(_) => "egress",
                Fact::SessionEnd(_) => "end",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "start", "conn", "req", "head", "event", "event", "end-x", "pass", "req", "git", "head",
                "end-x", "req", "event", "end"
            ]
        );
    }

    #[test]
    fn the_text_view_shows_the_facts_an_auditor_needs() {
        let view = SessionView::from_records(sample_records()).unwrap();
        let text = render_text(&view, ShowOptions { events: true });
        for want in [
            "session s1",
            "alice (uid 1000)",
            "/usr/bin/node",
            "node /usr/lib/claude --print",
            "/ghgate/agents",
            "GITHUB_RUN_ID=123",
            "2026-05-20 10:00:00.000000 UTC",
            "(exited)",
            "10:00:00.002  POST https://api.anthropic.com/v1/messages  200",
            "ttfb 120 ms  total 900 ms",
            "+0.128s  content_block_delta  {\"type\":\"content_block_delta\"",
            "push refs/heads/main  create 0000000 → a1b2c3d",
            "pack 12.3 KiB",
            "passthrough 127.0.0.1:40002 → 140.82.112.4:443  sni objects.githubusercontent.com",
            "10:00:03.000  POST https://api.openai.com/v1/completions  unfinished",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    /// A chat model call: the prompt by role and the answer reassembled, the raw events only
    /// when asked for.
    #[test]
    fn show_prints_the_prompt_and_the_reassembled_answer() {
        let view = SessionView::from_records(sample_records()).unwrap();
        let text = render_text(&view, ShowOptions::default());
        for want in [
            "prompt to claude-x:",
            "  [user]",
            "      Say hi",
            "answer, content block 0 (masked as recorded):",
            "      Hello!",
            "2 stream events (listed with --events)",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(
            !text.contains("content_block_delta  {"),
            "raw events shown without --events:\n{text}"
        );
        let all = render_text(&view, ShowOptions { events: true });
        assert!(all.contains("content_block_delta  {\"type\""), "{all}");
    }

    /// The Copilot language server's inline completion: a legacy completion request (prompt and
    /// suffix) answered by `choices[].text` events, a multi-line answer kept on its lines.
    fn inline_completion() -> Vec<Record> {
        let req = br#"{"prompt":"// path: src/lib.rs\nfn add(a: i32, b: i32) -> i32 {\n","suffix":"\n}\n","max_tokens":500,"n":1,"stream":true}"#;
        let url = "https://copilot-proxy.githubusercontent.com/v1/engines/copilot-codex/completions";
        let piece = |t: &str, finish: bool| {
            json!({"id":"cmpl-1","choices":[{"index":0,"text":t,"finish_reason": if finish { json!("stop") } else { json!(null) }}]})
                .to_string()
        };
        let events = [
            piece("    let sum", false),
            piece(" = a + b;\n", false),
            piece("    sum\u{1b}[31m", true),
        ];
        let resp: String = events
            .iter()
            .map(|e| format!("data: {e}\n\n"))
            .collect::<String>()
            + "data: [DONE]\n\n";
        let mut recs = vec![
            start("s1"),
            request(1, T0 + 1_000, "POST", url),
            chunk(1, Direction::Request, T0 + 1_100, 0, req),
        ];
        for (i, e) in events.iter().enumerate() {
            recs.push(sse(1, T0 + 200_000 + 100_000 * i as u64, i as u64, None, e));
        }
        recs.push(sse(1, T0 + 600_000, 3, None, "[DONE]"));
        recs.push(chunk(1, Direction::Response, T0 + 600_000, 0, resp.as_bytes()));
        recs.push(exchange(1, T0 + 1_000, "POST", url, req, resp.as_bytes()));
        recs
    }

    #[test]
    fn an_inline_completion_shows_its_prompt_suffix_and_code() {
        let view = SessionView::from_records(inline_completion()).unwrap();
        let text = render_text(&view, ShowOptions::default());
        for want in [
            "prompt:\n",
            "  [prompt]\n",
            "      // path: src/lib.rs\n",
            "      fn add(a: i32, b: i32) -> i32 {\n",
            "  [suffix: the answer leads into this]\n",
            "answer, choice 0 (masked as recorded):\n",
            "          let sum = a + b;\n",
            "          sum\\u{1b}[31m\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    }

    #[test]
    fn replay_plays_the_answer_as_it_streamed_not_the_events() {
        let view = SessionView::from_records(inline_completion()).unwrap();
        let steps = view.replay_steps();
        let pieces: Vec<(Micros, &str)> = steps
            .iter()
            .filter_map(|(at, s)| match s {
                ReplayStep::Text { part, text, .. } => {
                    assert_eq!(part, "choice 0");
                    Some((*at - T0, text.as_str()))
                }
                ReplayStep::Line(_) => None,
            })
            .collect();
        assert_eq!(
            pieces,
            [
                (200_000, "    let sum"),
                (300_000, " = a + b;\n"),
                (400_000, "    sum\\u{1b}[31m")
            ]
        );
        let lines: Vec<&str> = steps
            .iter()
            .filter_map(|(_, s)| match s {
                ReplayStep::Line(l) => Some(l.as_str()),
                ReplayStep::Text { .. } => None,
            })
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  prompt [prompt] // path: src/lib.rs\\nfn add")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("  prompt [suffix]")),
            "{lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("cmpl-1") || l.contains("[DONE]")),
            "raw events replayed: {lines:?}"
        );
    }

    #[test]
    fn a_pushed_ref_shows_the_kind_the_policy_learnt_and_its_decision_beside_it() {
        let mut recs = sample_records();
        let Some(Record::Git(g)) = recs.iter().find(|r| matches!(r, Record::Git(_))).cloned() else {
            panic!("the sample has a push");
        };
        let u = &g.updates[0];
        recs.push(Record::Decision(Decision {
            session: "s1".into(),
            exchange: g.exchange,
            at: g.at,
            action: DecisionAction::RequireApproval,
            rule: "rule #2".into(),
            message: None,
            ref_update: Some(DecidedRef {
                name: u.name.clone(),
                old: u.old,
                new: u.new,
                kind: RefKind::Create,
                kind_from: None,
                paths: vec![".github/workflows/ci.yml".into()],
                paths_unknown: None,
            }),
            approval: Some("ap-1".into()),
            outcome: DecisionOutcome::Held,
        }));
        let text = render_text(&SessionView::from_records(recs).unwrap(), ShowOptions::default());
        let at = text.find("push refs/heads/main  create").expect(&text);
        let next = &text[at..];
        let line2 = next.lines().nth(1).unwrap();
        assert!(
            line2.trim_start().starts_with("policy refs/heads/main create")
                && line2.contains("require_approval by rule #2"),
            "{text}"
        );
        assert_eq!(text.matches("require_approval by rule #2").count(), 1, "{text}");
    }

    #[test]
    fn recorded_control_characters_never_reach_the_terminal() {
        let mut recs = sample_records();
        recs.push(sse(
            1,
            T0 + 260_000,
            2,
            Some("x\u{1b}]0;pwned\u{7}"),
            "a\u{1b}[2Jb\r\nc\u{202e}d",
        ));
        let text = render_text(
            &SessionView::from_records(recs).unwrap(),
            ShowOptions { events: true },
        );
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("a\\u{1b}[2Jb\\r\\nc\\u{202e}d"), "{text}");
    }

    #[test]
    fn long_event_data_is_cut_to_one_line() {
        let long = "x".repeat(500);
        assert_eq!(one_line(&long, 120).chars().count(), 121);
        assert_eq!(one_line("é".repeat(3).as_str(), 2), "éé…");
    }

    /// Through the real store: written in small segments (so seqs have holes and positions span
    /// segments), indexed as the recorder does, checked, and loaded back by id prefix.
    #[test]
    fn a_session_loads_back_from_the_store_through_the_index() {
        use crate::store::{Store, StoreOptions, load_or_create_key};
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(&dir.path().join("key.pem")).unwrap();
        let (mut store, _) = Store::open(dir.path(), key, StoreOptions { segment_bytes: 1024 }).unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let records = sample_records();
        let (first, rest) = records.split_at(6);
        for part in [first, rest] {
            let positions = store.append_batch(part).unwrap();
            let items: Vec<_> = positions.into_iter().zip(part.iter().cloned()).collect();
            index.add_batch(&items).unwrap();
        }
        store.close().unwrap();
        let report = index.check(dir.path()).unwrap();
        assert_eq!(report.verified, records.len() as u64);
        assert_eq!(report.unindexed_tail, 0);
        let loaded = SessionView::load(dir.path(), &index, "s").unwrap();
        assert_eq!(loaded, SessionView::from_records(records).unwrap());
        let segments: std::collections::BTreeSet<u64> = index
            .session_records("s1")
            .unwrap()
            .iter()
            .map(|run| run.segment)
            .collect();
        assert!(
            segments.len() > 1,
            "the records should span segments: {segments:?}"
        );
        // A fresh index built from the store agrees.
        let n = Index::rebuild(&dir.path().join("rebuilt.sqlite"), dir.path()).unwrap();
        assert_eq!(n, sample_records().len() as u64);
        let mut again = Index::open(&dir.path().join("rebuilt.sqlite")).unwrap();
        assert_eq!(again.catch_up(dir.path()).unwrap(), 0);
        assert_eq!(
            again.sessions(&Default::default()).unwrap(),
            index.sessions(&Default::default()).unwrap()
        );
    }

    #[test]
    fn formats() {
        assert_eq!(iso8601(T0 + 123_456), "2026-05-20T10:00:00.123+00:00");
        assert_eq!(duration(850), "850 µs");
        assert_eq!(duration(340_000), "340 ms");
        assert_eq!(duration(1_250_000), "1.25 s");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
