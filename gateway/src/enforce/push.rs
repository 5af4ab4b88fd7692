//! A git push through the policy, ref by ref.
//!
//! The push's commands are read from the start of its body before anything goes upstream. Each
//! ref update is decided on its own. Whether an update is a fast-forward is worked out for every
//! update, rule or not, so the record labels each (the pushed commits first, then GitHub's
//! compare API for the commits it already has, within `max_api_calls` and the inspection time;
//! `update`, shown as unknown, when that cannot tell). What else a rule needs beyond the ids is
//! found out only when `Policy::needs` says it could change the outcome: which paths the
//! pushed commits change (the pack, read whole up to `max_pack_bytes`, and the trees upstream;
//! annotated tags peeled to their commit; a new ref whose commit the pack does not carry compared
//! with its merge base with the default branch) and which secrets the pushed files carry (every
//! blob of the pack through the masker, each placed in the commit and file that bring it, and
//! marked when the gateway has seen its fingerprint in a response). When that cannot be found
//! out in bounds, the update counts as the riskier kind.
//!
//! Refused or held refs get `ng <ref> <why>` in the report-status git prints. The other refs go
//! up without them, unless the client asked for an atomic push (or signed it), when nothing goes
//! up. Never forwards a ref the policy did not pass.
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use std::collections::{HashMap, HashSet};

use ghgate_git::{
    Oid,
    object::ObjectKind,
    pack::decode::{BlobSink, DecodeLimits, PackObjects, decode, decode_scanning},
    receive::{CommandReader, Commands, ReplyStyle},
    report::{self, RefStatus, Status},
    walk::{self, Budget, Peeled},
};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody};

use super::{Enforcer, decided_ref, decision, held_text, refusal, remote::Api};
use crate::{
    approval::{Gate as ApprovalGate, Operation},
    credentials::Secret,
    http::{BoxError, Exchange, ProxyBody},
    identity::Caller,
    mask::{Masker, Piece, StreamMasker},
    policy::{Action, Paths, PushedSecret, RefKind, RefUpdate, Secrets, Subject, Target},
    record::model::{self, DecisionOutcome as Outcome},
};

/// The most distinct (blob, rule, fingerprint) findings one push keeps.
const MAX_PUSH_FINDINGS: usize = 1000;
/// The most secrets one refused ref names in `remote:` lines.
const MAX_NAMED: usize = 10;

/// Runs the masker over each blob a scanning decode hands out, keeping what it finds by blob.
struct BlobSecrets {
    masker: Masker,
    stream: Option<StreamMasker>,
    current: Vec<(String, String)>,
    found: HashMap<Oid, Vec<(String, String)>>,
    kept: usize,
}

impl BlobSecrets {
    fn new(masker: Masker) -> Self {
        Self {
            masker,
            stream: None,
            current: Vec::new(),
            found: HashMap::new(),
            kept: 0,
        }
    }
}

pub(super) fn keep_finding(current: &mut Vec<(String, String)>, p: Piece<'_>) {
    if let Piece::Masked { finding: f, .. } = p
        && !current.iter().any(|(r, fp)| *r == f.rule && *fp == f.fingerprint)
    {
        current.push((f.rule.clone(), f.fingerprint.clone()));
    }
}

impl BlobSink for BlobSecrets {
    fn start(&mut self, _size: u64) {
        self.stream = Some(self.masker.stream());
        self.current.clear();
    }

    fn data(&mut self, chunk: &[u8]) {
        let current = &mut self.current;
        if let Some(s) = self.stream.as_mut() {
            s.push_pieces(chunk, &mut |p| keep_finding(current, p));
        }
    }

    fn end(&mut self, id: Oid) {
        let current = &mut self.current;
        if let Some(mut s) = self.stream.take() {
            s.finish_pieces(&mut |p| keep_finding(current, p));
        }
        if !current.is_empty() && self.kept < MAX_PUSH_FINDINGS {
            self.kept += current.len();
            self.found.entry(id).or_default().append(current);
        }
    }

    /// A commit's or tag's message (and author lines) is scanned like a blob, and placed by
    /// [`walk::blob_places`] at the commit (or the tag's commit).
    fn object(&mut self, _kind: ObjectKind, id: Oid, raw: &[u8]) {
        self.start(raw.len() as u64);
        self.data(raw);
        self.end(id);
    }
}

/// The most bytes a push's command list may take (tens of thousands of refs).
const MAX_COMMAND_BYTES: usize = 4 << 20;

/// What the upstream's answer to a push sent up in part needs added: the refs held back.
#[derive(Debug, Clone)]
pub struct PushReply {
    pub style: ReplyStyle,
    /// (ref, why) for each ref not sent up.
    pub held: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// What the policy made of a push.
pub enum PushGate {
    /// Send this body up (`length` when it is known whole); `reply` when refs were held back.
    Forward {
        body: ProxyBody,
        length: Option<u64>,
        rewritten: bool,
        reply: Option<PushReply>,
    },
    Answer(Response<Bytes>),
    /// Answer with this, and record the exchange as refused for `why`.
    Refused {
        answer: Response<Bytes>,
        why: String,
    },
}

/// The push's body failed while the gateway read it (the client's stream broke).
#[derive(Debug, thiserror::Error)]
#[error("the push body failed: {0}")]
struct BodyFailed(crate::http::BoxError);

/// A request body read from the front, whose unread rest can still be forwarded.
struct Reader {
    body: ProxyBody,
    buf: BytesMut,
    ended: bool,
}

impl Reader {
    /// Reads one more frame; `false` once the body has ended.
    async fn more(&mut self) -> Result<bool, BodyFailed> {
        if self.ended {
            return Ok(false);
        }
        match self.body.frame().await {
            None => {
                self.ended = true;
                Ok(false)
            }
            Some(Err(e)) => Err(BodyFailed(e)),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.buf.extend_from_slice(d);
                }
                Ok(true)
            }
        }
    }

    /// Reads until `len` bytes are in or the body ends; `false` if it ended first.
    async fn fill(&mut self, len: usize) -> Result<bool, BodyFailed> {
        while self.buf.len() < len {
            if !self.more().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads and drops the rest (the client is answered once it has sent its body).
    async fn drain(mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            self.buf.clear();
            match tokio::time::timeout(Duration::from_secs(30), self.more()).await {
                Ok(Ok(true)) => {}
                _ => return,
            }
        }
    }

    /// The body as the client sent it: what was read, then the rest.
    fn pass(mut self) -> PushGate {
        let front = std::mem::take(&mut self.buf).freeze();
        let (body, length) = self.forward(front);
        PushGate::Forward {
            body,
            length,
            rewritten: false,
            reply: None,
        }
    }

    /// `front` followed by whatever of the body is unread.
    fn forward(self, front: Bytes) -> (ProxyBody, Option<u64>) {
        if self.ended {
            let len = front.len() as u64;
            return (
                Full::new(front).map_err(|never| match never {}).boxed_unsync(),
                Some(len),
            );
        }
        let head =
            futures_util::stream::once(async move { Ok::<_, BoxError>(http_body::Frame::data(front)) });
        let rest = BodyStream::new(self.body);
        (
            http_body_util::BodyExt::boxed_unsync(StreamBody::new(head.chain(rest))),
            None,
        )
    }
}

/// The answer to a push, in git's own words.
fn answer(style: ReplyStyle, refs: &[RefStatus], notes: &[String]) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(report::reply(style, refs, notes)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-receive-pack-result"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The command list from the front of a push body (what was read stays in `reader`), or the
/// answer when it cannot be read.
async fn read_commands(ex: &Exchange, reader: &mut Reader) -> Result<Commands, PushGate> {
    let refuse = |status, text: String| PushGate::Answer(refusal(ex, status, &text));
    if ex.req.body_coding.is_some() {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a compressed push body cannot be inspected; nothing was forwarded".into(),
        ));
    }
    let mut commands = CommandReader::new();
    // What of `reader.buf` the command reader has taken.
    let mut fed = 0;
    loop {
        let mut rest = &reader.buf[fed..];
        let before = rest.len();
        let read = commands.feed(&mut rest);
        fed += before - rest.len();
        match read {
            Ok(true) => return Ok(commands.into_commands()),
            Ok(false) if reader.buf.len() > MAX_COMMAND_BYTES => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the push's command list is longer than {MAX_COMMAND_BYTES} bytes"),
                ));
            }
            Ok(false) => match reader.more().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "the push body ended inside its command list; nothing was forwarded".into(),
                    ));
                }
                Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
            },
            Err(e) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the push's commands ({e}); nothing was forwarded"),
                ));
            }
        }
    }
}

/// What a signed push is told.
pub const SIGNED_PUSH: &str = "push certificates are not supported through ghgate; push without --signed";

/// A signed push (its commands inside a `push-cert` block, or asking for `push-cert`) is refused
/// whole, in git's words: GitHub does not take push certificates, and the gateway, which strips
/// `push-cert` from the advertisements it passes on, cannot rewrite a certificate's commands.
fn refuse_signed(commands: &Commands) -> Option<PushGate> {
    if !commands.signed() {
        return None;
    }
    let refs: Vec<RefStatus> = commands
        .updates
        .iter()
        .map(|u| RefStatus {
            name: u.name.clone(),
            status: Status::Rejected(SIGNED_PUSH.to_owned()),
            options: Vec::new(),
        })
        .collect();
    let mut style = commands.reply_style();
    // A client that asked for no report still hears why on the side-band; one that asked for
    // neither gets the report (git prints it as an error).
    style.report_status |= !style.sideband;
    let notes = vec![format!("ghgate: {SIGNED_PUSH}")];
    Some(PushGate::Refused {
        answer: answer(style, &refs, &notes),
        why: SIGNED_PUSH.to_owned(),
    })
}

/// A push when no policy is configured: its command list is read only to refuse a signed push;
/// anything else goes up as it came.
pub async fn unsigned_only(ex: &Exchange, body: ProxyBody) -> PushGate {
    let mut reader = Reader {
        body,
        buf: BytesMut::new(),
        ended: false,
    };
    let commands = match read_commands(ex, &mut reader).await {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    match refuse_signed(&commands) {
        Some(answer) => {
            reader.drain().await;
            answer
        }
        None => reader.pass(),
    }
}

impl Enforcer {
    /// Decides a push from its body; the decisions (one per ref) and the secrets found in what
    /// it carries are returned for the record in every case.
    pub async fn push(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        token: Option<&Secret>,
        body: ProxyBody,
    ) -> PushDecided {
        let (gate, decisions, secrets) = self.push_inner(ex, caller, subject, token, body).await;
        PushDecided {
            gate,
            decisions,
            secrets,
        }
    }

    async fn push_inner(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        token: Option<&Secret>,
        body: ProxyBody,
    ) -> (PushGate, Vec<model::Decision>, Vec<model::PushSecret>) {
        let target = Target::new(ex.req.clone());
        let policy = self.live.current();
        let refuse = |status, text: String| {
            (
                PushGate::Answer(refusal(ex, status, &text)),
                Vec::new(),
                Vec::new(),
            )
        };
        let mut reader = Reader {
            body,
            buf: BytesMut::new(),
            ended: false,
        };
        let commands = match read_commands(ex, &mut reader).await {
            Ok(c) => c,
            Err(answer) => return (answer, Vec::new(), Vec::new()),
        };
        if let Some(answer) = refuse_signed(&commands) {
            reader.drain().await;
            return (answer, Vec::new(), Vec::new());
        }
        if commands.updates.is_empty() {
            // git's probe before a large push, or an empty push: nothing to decide.
            return (reader.pass(), Vec::new(), Vec::new());
        }

        let deadline = Instant::now() + self.inspect_timeout();
        let mut refs: Vec<RefUpdate> = commands.updates.iter().cloned().map(RefUpdate::new).collect();
        let needs: Vec<_> = refs
            .iter()
            .map(|r| policy.needs(subject, &target, Some(r)))
            .collect();
        let carries_pack = refs.iter().any(|r| r.kind != RefKind::Delete);
        let wants_secrets = needs.iter().any(|n| n.secrets);
        // Every update is labelled fast-forward or not, whether a rule asks or not.
        let labels_updates = refs.iter().any(|r| r.kind == RefKind::Update);
        // The pack, read whole when a decision or a label needs it; and its blobs' secrets, when
        // asked.
        let mut pack_state: Result<Option<PackObjects>, String> = Ok(None);
        let mut blob_secrets: Result<HashMap<Oid, Vec<(String, String)>>, String> = Ok(HashMap::new());
        if carries_pack && (labels_updates || needs.iter().any(|n| n.any())) {
            let end = commands.end as usize;
            let limit = end + self.cfg.max_pack_bytes as usize;
            // A client that stops sending mid-pack must not hold the push (and a task) forever:
            // past the inspection's deadline what is unread counts as unknown, the riskier way.
            let filled = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                reader.fill(limit + 1),
            )
            .await;
            match filled {
                Err(_elapsed) => {
                    let e = format!(
                        "the pushed pack did not arrive within the inspection time ({} bytes of it read)",
                        reader.buf.len().saturating_sub(end)
                    );
                    tracing::warn!(exchange = ex.id.get(), error = %e, "push inspection timed out reading the pack");
                    pack_state = Err(e);
                }
                Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
                Ok(Ok(true)) => {
                    pack_state = Err(format!(
                        "the pushed pack is larger than the {} bytes the gateway reads",
                        self.cfg.max_pack_bytes
                    ));
                }
                Ok(Ok(false)) => {
                    let pack_bytes = Bytes::copy_from_slice(&reader.buf[end..]);
                    let limits = DecodeLimits::with_deadline(deadline);
                    let format = commands.format.unwrap_or_default();
                    let scanner = wants_secrets
                        .then(|| self.secret_scan.as_ref().map(|s| s.masker.clone()))
                        .flatten();
                    if wants_secrets && scanner.is_none() {
                        blob_secrets = Err("the gateway has no masker to scan pushes with".into());
                    }
                    let decoded = tokio::task::spawn_blocking(move || match scanner {
                        Some(masker) => {
                            let mut sink = BlobSecrets::new(masker);
                            decode_scanning(&pack_bytes, format, &limits, &mut sink)
                                .map(|p| (p, Some(sink.found)))
                        }
                        None => decode(&pack_bytes, format, &limits).map(|p| (p, None)),
                    })
                    .await;
                    pack_state = match decoded {
                        Ok(Ok((p, found))) => {
                            if let Some(found) = found {
                                blob_secrets = if p.unresolved() > 0 {
                                    Err(format!(
                                        "the pack holds {} deltas against objects it does not hold, which could not be scanned",
                                        p.unresolved()
                                    ))
                                } else {
                                    Ok(found)
                                };
                            }
                            Ok(Some(p))
                        }
                        Ok(Err(e)) => Err(format!("the pushed pack could not be read: {e}")),
                        Err(e) => Err(format!("reading the pushed pack failed: {e}")),
                    };
                }
            }
        }
        let repository = ex.req.repository.as_ref();
        let remote = Api::new(
            self.outbound.clone(),
            &self.cfg.api_url,
            repository,
            token.cloned(),
        );
        let budget = Budget {
            max_remote_calls: self.cfg.max_api_calls,
            deadline,
        };
        if let Err(why) = &pack_state {
            blob_secrets = Err(why.clone());
        }
        let empty = PackObjects::default();
        let interesting = policy.paths_of_interest();
        let left = || deadline.saturating_duration_since(Instant::now());
        // Blobs found in no pushed ref's commits are charged to every ref that pushes a pack.
        let mut placed_anywhere: HashSet<Oid> = HashSet::new();
        let mut ref_places: Vec<HashMap<Oid, Vec<(Oid, String)>>> = vec![HashMap::new(); refs.len()];
        if let (Ok(found), Ok(Some(p))) = (&blob_secrets, &pack_state)
            && !found.is_empty()
        {
            let blobs: HashSet<Oid> = found.keys().copied().collect();
            for (i, r) in refs.iter().enumerate() {
                if r.kind == RefKind::Delete {
                    continue;
                }
                // Peeled there through the pack's tags, whose messages are placed too.
                ref_places[i] = walk::blob_places(p, &r.update.new, &blobs);
                placed_anywhere.extend(ref_places[i].keys().copied());
            }
        }

        let mut kind_from: Vec<Option<String>> = vec![None; refs.len()];
        for (i, r) in refs.iter_mut().enumerate() {
            let (old, new) = (r.update.old, r.update.new);
            if r.kind == RefKind::Update {
                let key = format!("{} {old} {new}", repository.map_or("?".into(), |r| r.to_string()),);
                let found = match self.cached_ff(&key) {
                    Some(ff) => Ok(ff),
                    None => {
                        let answer = match &pack_state {
                            Err(why) => Err(why.clone()),
                            Ok(p) => {
                                let p = p.as_ref().unwrap_or(&empty);
                                tokio::time::timeout(
                                    left(),
                                    walk::fast_forward(p, &old, &new, &remote, &budget),
                                )
                                .await
                                .map_err(|_| "the inspection ran out of time".to_owned())
                                .and_then(|found| found.map_err(|e| e.to_string()))
                            }
                        };
                        if let Ok(ff) = answer {
                            self.cache_ff(key, ff);
                        }
                        answer
                    }
                };
                match found {
                    Ok(true) => {
                        r.kind = RefKind::FastForward;
                        kind_from[i] = Some("the pushed commits and the compare API".into());
                    }
                    Ok(false) => {
                        r.kind = RefKind::NonFastForward;
                        kind_from[i] = Some("the pushed commits and the compare API".into());
                    }
                    Err(why) => {
                        // Never guessed: the record says unknown, and the policy reads an
                        // `Update` as a non-fast-forward (the riskier kind).
                        kind_from[i] = Some(format!(
                            "unknown{}: {why}",
                            if needs[i].fast_forward {
                                ", read as non-fast-forward"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
            // With its kind known, the paths may no longer matter.
            if r.paths == Paths::NotComputed && policy.needs(subject, &target, Some(r)).paths {
                let found = match &pack_state {
                    Err(why) => Err(why.clone()),
                    Ok(p) => {
                        let p = p.as_ref().unwrap_or(&empty);
                        tokio::time::timeout(
                            left(),
                            pushed_paths(p, r.kind, &old, &new, &remote, &interesting, &budget),
                        )
                        .await
                        .unwrap_or_else(|_| Err("the inspection ran out of time".to_owned()))
                    }
                };
                r.paths = match found {
                    Ok(p) => Paths::Known(p),
                    Err(why) => Paths::Unknown(why),
                };
            }
            if r.secrets == Secrets::NotComputed && policy.needs(subject, &target, Some(r)).secrets {
                r.secrets = match &blob_secrets {
                    Err(why) => Secrets::Unknown(why.clone()),
                    Ok(found) => {
                        let seen = |fp: &str| self.secret_scan.as_ref().is_some_and(|s| s.seen.contains(fp));
                        let mut out = Vec::new();
                        for (blob, findings) in found {
                            let places: Vec<(Option<Oid>, Option<String>)> = match ref_places[i].get(blob) {
                                Some(places) => {
                                    places.iter().map(|(c, p)| (Some(*c), Some(p.clone()))).collect()
                                }
                                None if placed_anywhere.contains(blob) => continue,
                                None => vec![(None, None)],
                            };
                            for (rule, fingerprint) in findings {
                                for (commit, path) in &places {
                                    out.push(PushedSecret {
                                        rule: rule.clone(),
                                        fingerprint: fingerprint.clone(),
                                        seen_in_response: seen(fingerprint),
                                        commit: *commit,
                                        path: path.clone(),
                                    });
                                }
                            }
                        }
                        out.sort_by(|a, b| {
                            (&a.path, &a.rule, &a.fingerprint).cmp(&(&b.path, &b.rule, &b.fingerprint))
                        });
                        Secrets::Known(out)
                    }
                };
            }
        }

        // Each ref's verdict, and what it means for the push.
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(refs.len());
        let mut decisions = Vec::with_capacity(refs.len());
        let mut notes = Vec::new();
        let requester = super::requester(caller, subject, &ex.conn.session);
        let mut push_secrets = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let verdict = policy.evaluate(subject, &target, Some(r));
            let recorded = Some(decided_ref(r, kind_from[i].clone()));
            // A rule on secrets names them (rule, file, commit; never the secret).
            let named: Vec<&PushedSecret> = match &r.secrets {
                Secrets::Known(found)
                    if verdict
                        .rule
                        .index
                        .and_then(|n| policy.rules().get(n - 1))
                        .is_some_and(|rule| rule.reads_secrets()) =>
                {
                    found.iter().collect()
                }
                _ => Vec::new(),
            };
            let because = named
                .first()
                .map(|s| {
                    format!(
                        " ({}{})",
                        crate::policy::described(s),
                        if named.len() > 1 {
                            format!(", and {} more", named.len() - 1)
                        } else {
                            String::new()
                        }
                    )
                })
                .unwrap_or_default();
            let (result, outcome, approval) = match &verdict.action {
                Action::Allow => (Ok(()), Outcome::Passed, None),
                Action::RecordOnly => {
                    tracing::warn!(exchange = ex.id.get(), r#ref = %r.name(), rule = %verdict.rule,
                                   "record_only: a ref update the policy flags passed");
                    (Ok(()), Outcome::Passed, None)
                }
                Action::Deny => {
                    let why = format!(
                        "denied by ghgate {}{}{because}",
                        verdict.rule,
                        verdict
                            .message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                    notes.push(format!("ghgate: {}: {why}", r.name()));
                    (Err(why), Outcome::Refused, None)
                }
                Action::RequireApproval(_) => {
                    let op = Operation::GitRef {
                        repository: repository.map(|r| r.to_string()).unwrap_or_default(),
                        ref_name: r.name().to_owned(),
                        old: r.update.old.to_string(),
                        new: r.update.new.to_string(),
                    };
                    match self.check(&op, &requester, &verdict) {
                        Err(e) => {
                            let why = format!("the approval store failed: {e}");
                            notes.push(format!("ghgate: {}: {why}", r.name()));
                            (Err(why), Outcome::Refused, None)
                        }
                        Ok(ApprovalGate::Approved { id }) => (Ok(()), Outcome::Passed, Some(id)),
                        Ok(ApprovalGate::Pending { id, .. }) => {
                            notes.push(format!("ghgate: {}: {}", r.name(), held_text(&id, &verdict)));
                            (
                                Err(format!("held for approval {id}{because}")),
                                Outcome::Held,
                                Some(id),
                            )
                        }
                        Ok(ApprovalGate::TooMany { pending, whose }) => {
                            let why = ApprovalGate::too_many_text(pending, whose);
                            notes.push(format!("ghgate: {}: {why}", r.name()));
                            (Err(why), Outcome::Refused, None)
                        }
                        Ok(ApprovalGate::Denied { id, by, reason }) => {
                            let why = format!(
                                "approval {id} was denied by {by}{}",
                                reason.map(|m| format!(": {m}")).unwrap_or_default()
                            );
                            notes.push(format!("ghgate: {}: {why}", r.name()));
                            (Err(why), Outcome::Refused, Some(id))
                        }
                    }
                }
            };
            if outcome != Outcome::Passed {
                for s in named.iter().take(MAX_NAMED) {
                    notes.push(format!(
                        "ghgate: {}: {}{}",
                        r.name(),
                        crate::policy::described(s),
                        if s.seen_in_response {
                            ", a secret the gateway saw in a response"
                        } else {
                            ""
                        }
                    ));
                }
            }
            if let Secrets::Known(found) = &r.secrets {
                push_secrets.extend(found.iter().map(|s| model::PushSecret {
                    session: model::SessionId::default(),
                    exchange: model::ExchangeId::default(),
                    at: model::now_micros(),
                    rule: s.rule.clone(),
                    fingerprint: s.fingerprint.clone(),
                    repository: repository.and_then(|r| r.full_name()),
                    ref_name: r.name().to_owned(),
                    commit: s.commit,
                    path: s.path.clone(),
                    seen_in_response: s.seen_in_response,
                    outcome,
                    rule_decided: verdict.rule.to_string(),
                }));
            }
            decisions.push(decision(&verdict, recorded, outcome, approval));
            results.push(result);
        }

        let style = commands.reply_style();
        let passing = results.iter().filter(|r| r.is_ok()).count();
        if passing == results.len() {
            return (reader.pass(), decisions, push_secrets);
        }
        let all_or_nothing = commands.atomic() || commands.certificate;
        if passing == 0 || all_or_nothing {
            let report: Vec<RefStatus> = commands
                .updates
                .iter()
                .zip(&results)
                .map(|(u, r)| {
                    let status = match r {
                        Ok(()) if all_or_nothing => Status::Rejected("atomic push failed".to_owned()),
                        Ok(()) => Status::Ok,
                        Err(why) => Status::Rejected(why.clone()),
                    };
                    RefStatus {
                        name: u.name.clone(),
                        status,
                        options: Vec::new(),
                    }
                })
                .collect();
            for d in &mut decisions {
                if d.outcome == Outcome::Passed && all_or_nothing {
                    d.outcome = Outcome::RefusedAtomicPush;
                }
            }
            for s in &mut push_secrets {
                if s.outcome == Outcome::Passed && all_or_nothing {
                    s.outcome = Outcome::RefusedAtomicPush;
                }
            }
            reader.drain().await;
            return (
                PushGate::Answer(answer(style, &report, &notes)),
                decisions,
                push_secrets,
            );
        }
        // Some refs go up: the others are taken out of the command list, and put back as `ng`
        // lines in the answer.
        let keep: Vec<bool> = results.iter().map(Result::is_ok).collect();
        let (front, needs_pack) = match rewrite(&commands, &reader.buf, &keep) {
            Ok(f) => f,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
        };
        let held = commands
            .updates
            .iter()
            .zip(&results)
            .filter_map(|(u, r)| r.as_ref().err().map(|why| (u.name.clone(), why.clone())))
            .collect();
        let (body, length) = if needs_pack {
            reader.forward(front)
        } else {
            reader.drain().await;
            let len = front.len() as u64;
            (
                Full::new(front).map_err(|never| match never {}).boxed_unsync(),
                Some(len),
            )
        };
        (
            PushGate::Forward {
                body,
                length,
                rewritten: true,
                reply: Some(PushReply { style, held, notes }),
            },
            decisions,
            push_secrets,
        )
    }
}

/// What the policy made of a push: the gate, and what to record before anything goes on.
pub struct PushDecided {
    pub gate: PushGate,
    pub decisions: Vec<model::Decision>,
    pub secrets: Vec<model::PushSecret>,
}

/// The files a ref update changes, its new value peeled through annotated tags. An update is
/// compared with its old value; a new ref with what the pack brings, or — when the pack does not
/// carry its commit (a new tag or branch at a commit upstream already has) — with its merge base
/// with the default branch, so that a new ref never brings files unseen.
async fn pushed_paths(
    pack: &PackObjects,
    kind: RefKind,
    old: &Oid,
    new: &Oid,
    remote: &Api,
    interesting: &(dyn Fn(&str) -> bool + Sync),
    budget: &Budget,
) -> Result<Vec<String>, String> {
    let peel = |id| async move {
        match walk::peel(pack, id, remote, budget).await {
            Ok(Peeled::Commit(c)) => Ok(Some(c)),
            Ok(Peeled::Other(..)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    let Some(new) = peel(new).await? else {
        // A tag of a tree or a blob changes no branch's files.
        return Ok(Vec::new());
    };
    let old = if kind == RefKind::Create {
        if pack.commit(&new).is_some() {
            None
        } else {
            let head = remote
                .default_head()
                .await
                .map_err(|e| format!("the default branch could not be read: {e}"))?;
            match head {
                None => None,
                Some(head) => Some(
                    remote
                        .merge_base(&head, &new)
                        .await
                        .map_err(|e| {
                            format!("the merge base with the default branch could not be read: {e}")
                        })?
                        .ok_or_else(|| format!("{new} shares no history with the default branch"))?,
                ),
            }
        }
    } else {
        peel(old).await?
    };
    walk::changed_paths(pack, old.as_ref(), &new, remote, interesting, budget)
        .await
        .map_err(|e| e.to_string())
}

/// The command list without the held refs, then what was read of the pack. A pack no kept
/// command needs (only deletes are left) is not sent.
fn rewrite(commands: &Commands, buf: &[u8], keep: &[bool]) -> Result<(Bytes, bool), String> {
    let options = &buf[commands.options.start as usize..commands.options.end as usize];
    let mut out = commands.render(keep, options).map_err(|e| e.to_string())?;
    let needs_pack = commands.needs_pack(keep);
    if needs_pack {
        out.extend_from_slice(&buf[commands.end as usize..]);
    }
    Ok((Bytes::from(out), needs_pack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(out: &mut Vec<u8>, line: &str) {
        ghgate_git::pktline::write(out, line.as_bytes()).unwrap();
    }

    fn commands(body: &[u8]) -> Commands {
        let mut r = CommandReader::new();
        assert!(r.feed(&mut &body[..]).unwrap(), "the whole command list");
        r.into_commands()
    }

    fn refused_text(c: &Commands) -> Option<String> {
        match refuse_signed(c)? {
            PushGate::Refused { answer, why } => {
                assert_eq!(why, SIGNED_PUSH);
                Some(String::from_utf8_lossy(answer.body()).into_owned())
            }
            _ => panic!("a signed push is refused, not answered otherwise"),
        }
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn a_signed_push_is_refused_in_gits_words() {
        // What `git push --signed` sends: the commands inside a push-cert block.
        let mut body = Vec::new();
        for line in [
            "push-cert\0report-status side-band-64k agent=git/2.47\n".to_owned(),
            "certificate version 0.1\n".into(),
            "pusher t <t@t> 1700000000 +0000\n".into(),
            "pushee https://github.com/o/r.git\n".into(),
            "nonce 1700000000-abc\n".into(),
            "\n".into(),
            format!("{A} {B} refs/heads/main\n"),
            "-----BEGIN PGP SIGNATURE-----\n".into(),
            "iQEz\n".into(),
            "-----END PGP SIGNATURE-----\n".into(),
            "push-cert-end\n".into(),
        ] {
            pkt(&mut body, &line);
        }
        body.extend_from_slice(b"0000");
        let c = commands(&body);
        assert!(c.certificate);
        let text = refused_text(&c).expect("refused");
        assert!(
            text.contains("ng refs/heads/main push certificates are not supported through ghgate"),
            "{text:?}"
        );
        assert!(
            text.contains("\u{2}ghgate: push certificates are not supported through ghgate"),
            "the side-band carries a remote: line: {text:?}"
        );

        // Asking for the capability outside a certificate, without report-status: still told.
        let mut body = Vec::new();
        pkt(&mut body, &format!("{A} {B} refs/heads/main\0push-cert\n"));
        body.extend_from_slice(b"0000");
        let text = refused_text(&commands(&body)).expect("refused");
        assert!(text.contains("ng refs/heads/main push certificates"), "{text:?}");

        // An unsigned push is not this refusal's business.
        let mut body = Vec::new();
        pkt(&mut body, &format!("{A} {B} refs/heads/main\0report-status\n"));
        body.extend_from_slice(b"0000");
        assert!(refuse_signed(&commands(&body)).is_none());
    }
}
