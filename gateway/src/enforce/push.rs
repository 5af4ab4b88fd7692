//! A git push through the policy, ref by ref.
//!
//! The push's commands are read from the start of its body before anything goes upstream. Each
//! ref update is decided on its own; what a rule needs beyond the ids is found out only when
//! `Policy::needs` says it could change the outcome: whether an update is a fast-forward (the
//! pushed commits, then GitHub's compare API for the commits it already has) and which paths the
//! pushed commits change (the pack, read whole up to `max_pack_bytes`, and the trees upstream).
//! When that cannot be found out in bounds, the update counts as the riskier kind.
//!
//! Refused or held refs get `ng <ref> <why>` in the report-status git prints. The other refs go
//! up without them, unless the client asked for an atomic push (or signed it), when nothing goes
//! up. Never forwards a ref the policy did not pass.
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use ghgate_git::{
    pack::decode::{DecodeLimits, PackObjects, decode},
    receive::{CommandReader, Commands, ReplyStyle},
    report::{self, RefStatus, Status},
    walk::{self, Budget},
};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody};

use super::{Enforcer, decided_ref, decision, held_text, refusal, remote::Api};
use crate::{
    approval::{Gate as ApprovalGate, Operation},
    credentials::Secret,
    http::{BoxError, Exchange, ProxyBody},
    identity::Caller,
    policy::{Action, Paths, RefKind, RefUpdate, Subject, Target},
    record::model::{self, DecisionOutcome as Outcome},
};

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
    /// Decides a push from its body; the decisions (one per ref) are returned for the record
    /// in every case.
    pub async fn push(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        token: Option<&Secret>,
        body: ProxyBody,
    ) -> (PushGate, Vec<model::Decision>) {
        let target = Target::new(ex.req.clone());
        let policy = self.live.current();
        let refuse = |status, text: String| (PushGate::Answer(refusal(ex, status, &text)), Vec::new());
        let mut reader = Reader {
            body,
            buf: BytesMut::new(),
            ended: false,
        };
        let commands = match read_commands(ex, &mut reader).await {
            Ok(c) => c,
            Err(answer) => return (answer, Vec::new()),
        };
        if let Some(answer) = refuse_signed(&commands) {
            reader.drain().await;
            return (answer, Vec::new());
        }
        if commands.updates.is_empty() {
            // git's probe before a large push, or an empty push: nothing to decide.
            return (reader.pass(), Vec::new());
        }

        let deadline = Instant::now() + self.inspect_timeout();
        let mut refs: Vec<RefUpdate> = commands.updates.iter().cloned().map(RefUpdate::new).collect();
        let needs: Vec<_> = refs
            .iter()
            .map(|r| policy.needs(subject, &target, Some(r)))
            .collect();
        let carries_pack = refs.iter().any(|r| r.kind != RefKind::Delete);
        // The pack, read whole when a decision needs it.
        let mut pack_state: Result<Option<PackObjects>, String> = Ok(None);
        if carries_pack && needs.iter().any(|n| n.fast_forward || n.paths) {
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
                    let decoded =
                        tokio::task::spawn_blocking(move || decode(&pack_bytes, format, &limits)).await;
                    pack_state = match decoded {
                        Ok(Ok(p)) => Ok(Some(p)),
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
        let empty = PackObjects::default();
        let interesting = policy.paths_of_interest();
        let left = || deadline.saturating_duration_since(Instant::now());

        let mut kind_from: Vec<Option<String>> = vec![None; refs.len()];
        for (i, r) in refs.iter_mut().enumerate() {
            let (old, new) = (r.update.old, r.update.new);
            if needs[i].fast_forward && r.kind == RefKind::Update {
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
                        r.kind = RefKind::NonFastForward;
                        kind_from[i] = Some(format!("undecided, taken as non-fast-forward: {why}"));
                    }
                }
            }
            // With its kind known, the paths may no longer matter.
            if r.paths == Paths::NotComputed && policy.needs(subject, &target, Some(r)).paths {
                let found = match &pack_state {
                    Err(why) => Err(why.clone()),
                    Ok(p) => {
                        let old = (r.kind != RefKind::Create).then_some(&old);
                        let p = p.as_ref().unwrap_or(&empty);
                        tokio::time::timeout(
                            left(),
                            walk::changed_paths(p, old, &new, &remote, &interesting, &budget),
                        )
                        .await
                        .map_err(|_| "the inspection ran out of time".to_owned())
                        .and_then(|found| found.map_err(|e| e.to_string()))
                    }
                };
                r.paths = match found {
                    Ok(p) => Paths::Known(p),
                    Err(why) => Paths::Unknown(why),
                };
            }
        }

        // Each ref's verdict, and what it means for the push.
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(refs.len());
        let mut decisions = Vec::with_capacity(refs.len());
        let mut notes = Vec::new();
        let requester = super::requester(caller, subject, &ex.conn.session);
        for (i, r) in refs.iter().enumerate() {
            let verdict = policy.evaluate(subject, &target, Some(r));
            let recorded = Some(decided_ref(r, kind_from[i].clone()));
            let (result, outcome, approval) = match &verdict.action {
                Action::Allow => (Ok(()), Outcome::Passed, None),
                Action::RecordOnly => {
                    tracing::warn!(exchange = ex.id.get(), r#ref = %r.name(), rule = %verdict.rule,
                                   "record_only: a ref update the policy flags passed");
                    (Ok(()), Outcome::Passed, None)
                }
                Action::Deny => {
                    let why = format!(
                        "denied by ghgate {}{}",
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
                            (Err(format!("held for approval {id}")), Outcome::Held, Some(id))
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
            decisions.push(decision(&verdict, recorded, outcome, approval));
            results.push(result);
        }

        let style = commands.reply_style();
        let passing = results.iter().filter(|r| r.is_ok()).count();
        if passing == results.len() {
            return (reader.pass(), decisions);
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
            reader.drain().await;
            return (PushGate::Answer(answer(style, &report, &notes)), decisions);
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
        )
    }
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
