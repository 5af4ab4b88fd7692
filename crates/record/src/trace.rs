//! Where a secret went: every record that names one fingerprint, in time order, with who was
//! calling (the session's process), what was asked (the request, and for a model call its
//! prompt) and, for a push, which repository, ref, commit and file carried it and what came of
//! it. And a summary of every fingerprint by first and last sighting.
//!
//! Reads records only (two passes over a [`RecordSource`]: the sightings, then the sessions and
//! requests they belong to); the caller decides over which store, and must verify it first —
//! this module proves nothing by itself. It never holds a secret: records carry fingerprints.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ghgate_mask::payload;

use crate::{
    id::{ExchangeId, SessionId},
    index::RecordSource,
    model::{DecisionOutcome, Direction, Micros, Oid, Place, Record, SessionStart},
    store,
};

/// What a sighting was.
#[derive(Debug, Clone, PartialEq)]
pub enum SightingKind {
    /// In an answer from upstream (a suggestion, an API response, a WebSocket message).
    Received { place: Place, client_masked: bool },
    /// In what a client sent (a request body, headers, a URL, a forwarded pack).
    Sent { place: Place },
    /// In the files of a push, found by the policy stage before anything went upstream.
    Pushed {
        repository: Option<String>,
        ref_name: String,
        commit: Option<Oid>,
        path: Option<String>,
        outcome: DecisionOutcome,
        rule_decided: String,
    },
}

/// Who called: the session's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub comm: String,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(u) = &self.user {
            write!(f, " ({u})")?;
        }
        write!(f, " {}", self.exe.as_deref().unwrap_or(&self.comm))
    }
}

/// One record naming the fingerprint, with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub at: Micros,
    pub seq: u64,
    pub session: SessionId,
    pub exchange: ExchangeId,
    /// The masking rule that found it.
    pub rule: String,
    pub kind: SightingKind,
    /// `None` when the session's start is not in the range read.
    pub caller: Option<Caller>,
    /// "POST https://…", when the exchange's request is in the range read.
    pub request: Option<String>,
    /// For an answer to a model call: the prompt (its last user message, or the prompt of a
    /// completion request), on one line and cut short, as recorded (masked).
    pub prompt: Option<String>,
}

/// Every sighting of one fingerprint, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    pub fingerprint: String,
    pub sightings: Vec<Sighting>,
}

impl Trace {
    pub fn received(&self) -> impl Iterator<Item = &Sighting> {
        self.sightings
            .iter()
            .filter(|s| matches!(s.kind, SightingKind::Received { .. }))
    }

    pub fn pushed(&self) -> impl Iterator<Item = &Sighting> {
        self.sightings
            .iter()
            .filter(|s| matches!(s.kind, SightingKind::Pushed { .. }))
    }

    /// Seen in an answer, and never in a push afterwards, nor in a pack a client sent up.
    pub fn never_pushed(&self) -> bool {
        self.received().next().is_some()
            && !self.sightings.iter().any(|s| {
                matches!(
                    s.kind,
                    SightingKind::Pushed { .. }
                        | SightingKind::Sent {
                            place: Place::GitPushPack
                        }
                )
            })
    }
}

/// The most bytes of a request body read for its prompt.
const MAX_PROMPT_BODY: usize = 1 << 20;
/// The most characters of a prompt shown.
const MAX_PROMPT_CHARS: usize = 300;

/// Every record of `source` at or below `last_seq` naming `fingerprint`.
pub fn trace(source: &dyn RecordSource, fingerprint: &str, last_seq: u64) -> store::Result<Trace> {
    let mut sightings = Vec::new();
    for item in source.records()? {
        let (pos, record) = item?;
        if pos.seq > last_seq {
            break;
        }
        let (session, exchange, at, rule, kind) = match record {
            Record::Masked(m) if m.fingerprint == fingerprint => {
                let kind = if received(m.place) {
                    SightingKind::Received {
                        place: m.place,
                        client_masked: m.client_masked,
                    }
                } else {
                    SightingKind::Sent { place: m.place }
                };
                (m.session, m.exchange, m.at, m.rule, kind)
            }
            Record::PushSecret(p) if p.fingerprint == fingerprint => (
                p.session,
                p.exchange,
                p.at,
                p.rule,
                SightingKind::Pushed {
                    repository: p.repository,
                    ref_name: p.ref_name,
                    commit: p.commit,
                    path: p.path,
                    outcome: p.outcome,
                    rule_decided: p.rule_decided,
                },
            ),
            _ => continue,
        };
        sightings.push(Sighting {
            at,
            seq: pos.seq,
            session,
            exchange,
            rule,
            kind,
            caller: None,
            request: None,
            prompt: None,
        });
    }
    if sightings.is_empty() {
        return Ok(Trace {
            fingerprint: fingerprint.to_owned(),
            sightings,
        });
    }
    // The context: each session's caller, each exchange's request, each answered exchange's
    // request body (for its prompt).
    let sessions: HashSet<SessionId> = sightings.iter().map(|s| s.session.clone()).collect();
    let exchanges: HashSet<(SessionId, ExchangeId)> = sightings
        .iter()
        .map(|s| (s.session.clone(), s.exchange))
        .collect();
    let answered: HashSet<(SessionId, ExchangeId)> = sightings
        .iter()
        .filter(|s| matches!(s.kind, SightingKind::Received { .. }))
        .map(|s| (s.session.clone(), s.exchange))
        .collect();
    let mut callers: HashMap<SessionId, Caller> = HashMap::new();
    let mut requests: HashMap<(SessionId, ExchangeId), String> = HashMap::new();
    let mut bodies: HashMap<(SessionId, ExchangeId), BTreeMap<u64, Vec<u8>>> = HashMap::new();
    for item in source.records()? {
        let (pos, record) = item?;
        if pos.seq > last_seq {
            break;
        }
        match record {
            Record::SessionStart(s) if sessions.contains(&s.session) => {
                callers.entry(s.session.clone()).or_insert_with(|| caller(&s));
            }
            Record::Request(r) if exchanges.contains(&(r.session.clone(), r.exchange)) => {
                requests.insert((r.session, r.exchange), format!("{} {}", r.method, r.url));
            }
            Record::Exchange(x) if exchanges.contains(&(x.session.clone(), x.exchange)) => {
                requests
                    .entry((x.session, x.exchange))
                    .or_insert_with(|| format!("{} {}", x.method, x.url));
            }
            Record::BodyChunk(c)
                if c.dir == Direction::Request
                    && (c.offset as usize) < MAX_PROMPT_BODY
                    && answered.contains(&(c.session.clone(), c.exchange)) =>
            {
                if let Ok(bytes) = B64.decode(c.data.as_bytes()) {
                    bodies
                        .entry((c.session, c.exchange))
                        .or_default()
                        .insert(c.offset, bytes);
                }
            }
            _ => {}
        }
    }
    for s in &mut sightings {
        let key = (s.session.clone(), s.exchange);
        s.caller = callers.get(&s.session).cloned();
        s.request = requests.get(&key).cloned();
        if matches!(s.kind, SightingKind::Received { .. }) {
            s.prompt = bodies.get(&key).and_then(|chunks| {
                let mut body = Vec::new();
                for (offset, bytes) in chunks {
                    if *offset as usize != body.len() {
                        break;
                    }
                    body.extend_from_slice(bytes);
                }
                prompt(&body)
            });
        }
    }
    sightings.sort_by_key(|s| (s.at, s.seq));
    Ok(Trace {
        fingerprint: fingerprint.to_owned(),
        sightings,
    })
}

/// Whether a secret found at `place` came from upstream's side.
pub fn received(place: Place) -> bool {
    matches!(
        place,
        Place::ResponseBody | Place::ResponseHeader | Place::WebSocket
    )
}

fn caller(s: &SessionStart) -> Caller {
    Caller {
        uid: s.uid,
        user: s.user.clone(),
        exe: s.exe.clone(),
        comm: s.comm.clone(),
    }
}

/// The prompt of a model call's request body, as [`payload::request_prompt`] reads it: its last
/// user message (or a completion's `prompt`, a Responses API `input`), else its last message.
pub fn prompt(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let p = payload::request_prompt(&v)?;
    let asked = |role: &str| matches!(role, "user" | "prompt" | "input" | "messages" | "contents");
    let (_, text) = p
        .messages
        .iter()
        .rev()
        .find(|(role, _)| asked(role))
        .or(p.messages.last())?;
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = one_line.chars().take(MAX_PROMPT_CHARS).collect();
    if cut.len() < one_line.len() {
        cut.push('…');
    }
    Some(cut)
}

/// One fingerprint's sightings in sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub fingerprint: String,
    pub rules: BTreeSet<String>,
    pub first: Micros,
    pub last: Micros,
    pub received: u64,
    pub sent: u64,
    pub pushed: u64,
    pub refused: u64,
    pub held: u64,
    pub forwarded: u64,
}

/// Every fingerprint of `source` (records at or below `last_seq`), by first sighting.
pub fn summaries(source: &dyn RecordSource, last_seq: u64) -> store::Result<Vec<Summary>> {
    let mut by: HashMap<String, Summary> = HashMap::new();
    for item in source.records()? {
        let (pos, record) = item?;
        if pos.seq > last_seq {
            break;
        }
        let (fingerprint, rule, at) = match &record {
            Record::Masked(m) => (&m.fingerprint, &m.rule, m.at),
            Record::PushSecret(p) => (&p.fingerprint, &p.rule, p.at),
            _ => continue,
        };
        let s = by.entry(fingerprint.clone()).or_insert_with(|| Summary {
            fingerprint: fingerprint.clone(),
            first: at,
            last: at,
            ..Summary::default()
        });
        s.rules.insert(rule.clone());
        s.first = s.first.min(at);
        s.last = s.last.max(at);
        match &record {
            Record::Masked(m) if received(m.place) => s.received += 1,
            Record::Masked(_) => s.sent += 1,
            Record::PushSecret(p) => {
                s.pushed += 1;
                match p.outcome {
                    DecisionOutcome::Passed => s.forwarded += 1,
                    DecisionOutcome::Held => s.held += 1,
                    DecisionOutcome::Refused | DecisionOutcome::RefusedAtomicPush => s.refused += 1,
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<Summary> = by.into_values().collect();
    out.sort_by(|a, b| (a.first, &a.fingerprint).cmp(&(b.first, &b.fingerprint)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, Masked, PushSecret};
    use crate::store::Position;

    struct Source(Vec<Record>);

    impl RecordSource for Source {
        fn records(&self) -> store::Result<crate::index::SourceRecords<'_>> {
            Ok(Box::new(self.0.iter().cloned().enumerate().map(|(i, r)| {
                Ok((
                    Position {
                        segment: 0,
                        offset: i as u64,
                        seq: i as u64,
                        hash: [0; 32],
                    },
                    r,
                ))
            })))
        }

        fn read_at(&self, _segment: u64, offset: u64) -> store::Result<(Position, Record)> {
            let mut it = self.records()?;
            it.nth(offset as usize).expect("there")
        }
    }

    fn session(id: &str, uid: u32, exe: &str) -> Record {
        Record::SessionStart(SessionStart {
            session: SessionId::from(id.to_owned()),
            at: 1,
            tgid: 1,
            uid,
            user: None,
            gid: 0,
            comm: "x".into(),
            exe: Some(exe.into()),
            cmdline: Vec::new(),
            cgroup_id: 0,
            cgroup: None,
            ci: Vec::new(),
        })
    }

    fn masked(session: &str, ex: u64, at: Micros, fp: &str, place: Place) -> Record {
        Record::Masked(Masked {
            session: SessionId::from(session.to_owned()),
            exchange: ExchangeId::new(ex),
            at,
            rule: "github-pat".into(),
            fingerprint: fp.into(),
            place,
            client_masked: true,
        })
    }

    fn pushed(session: &str, at: Micros, fp: &str, outcome: DecisionOutcome) -> Record {
        Record::PushSecret(PushSecret {
            session: SessionId::from(session.to_owned()),
            exchange: ExchangeId::new(1),
            at,
            rule: "github-pat".into(),
            fingerprint: fp.into(),
            repository: Some("o/r".into()),
            ref_name: "refs/heads/main".into(),
            commit: Some("2222222222222222222222222222222222222222".parse().unwrap()),
            path: Some("config.env".into()),
            seen_in_response: true,
            outcome,
            rule_decided: "rule #1 \"no-suggested-secrets\"".into(),
        })
    }

    fn body(session: &str, ex: u64, text: &str) -> Record {
        Record::BodyChunk(model::BodyChunk {
            session: SessionId::from(session.to_owned()),
            exchange: ExchangeId::new(ex),
            dir: Direction::Request,
            at: 2,
            offset: 0,
            data: B64.encode(text),
        })
    }

    #[test]
    fn a_suggested_then_pushed_secret_is_traced_in_order_with_its_callers() {
        let source = Source(vec![
            session("agent", 1000, "/usr/bin/node"),
            session("pusher", 1001, "/usr/bin/git"),
            body(
                "agent",
                7,
                r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"write the deploy config"}]}"#,
            ),
            masked("agent", 7, 10, "aaaaaaaaaaaa", Place::ResponseBody),
            masked("agent", 8, 11, "bbbbbbbbbbbb", Place::ResponseBody),
            pushed("pusher", 20, "aaaaaaaaaaaa", DecisionOutcome::Refused),
        ]);
        let t = trace(&source, "aaaaaaaaaaaa", u64::MAX).unwrap();
        assert_eq!(t.sightings.len(), 2);
        let (s, p) = (&t.sightings[0], &t.sightings[1]);
        assert!(matches!(s.kind, SightingKind::Received { .. }));
        assert_eq!(s.prompt.as_deref(), Some("write the deploy config"));
        assert_eq!(s.caller.as_ref().unwrap().exe.as_deref(), Some("/usr/bin/node"));
        assert!(matches!(
            p.kind,
            SightingKind::Pushed {
                outcome: DecisionOutcome::Refused,
                ..
            }
        ));
        assert_eq!(p.caller.as_ref().unwrap().uid, 1001);
        assert!(!t.never_pushed());

        let other = trace(&source, "bbbbbbbbbbbb", u64::MAX).unwrap();
        assert!(other.never_pushed(), "suggested, never pushed");
        // Past the verified range nothing counts.
        let early = trace(&source, "aaaaaaaaaaaa", 4).unwrap();
        assert!(early.never_pushed(), "the push is beyond seq 4");

        let list = summaries(&source, u64::MAX).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].fingerprint.as_str(), list[0].received, list[0].refused),
            ("aaaaaaaaaaaa", 1, 1)
        );
        assert_eq!((list[0].first, list[0].last), (10, 20));
    }

    #[test]
    fn prompts_of_each_api_shape() {
        assert_eq!(
            prompt(br#"{"prompt":"fn main() {","suffix":"}"}"#).as_deref(),
            Some("fn main() {")
        );
        assert_eq!(
            prompt(br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"there"}]}]}"#)
                .as_deref(),
            Some("hi there")
        );
        assert_eq!(prompt(br#"{"input":"summarise"}"#).as_deref(), Some("summarise"));
        assert_eq!(prompt(b"not json"), None);
    }
}
