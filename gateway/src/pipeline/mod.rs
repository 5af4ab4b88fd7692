//! The order in which the gateway's concerns see each exchange, in one place: the `Phases`
//! implementation below. Each concern is a stage of its own module, owning its per-exchange state
//! (no locks, no shared slots): `identity` (who is calling, which credential goes upstream),
//! `masking` (each body decoded, masked and recorded as it streams), `git_push` (the push
//! advertisement, a push's refs decided before anything goes up, git's answer completed), and
//! the policy stage (`enforce`, through `policy_head` and `request_gate` here).
//!
//! Before any of them, the engine (`http`) strips hop-by-hop headers and classifies the request
//! once (`ghgate_policy::classify`: host checked against the SNI, canonical path, repository, git service,
//! Copilot endpoint, body coding); every stage reads that, never the raw head.
//!
//! For every request: identity (an OIDC token is validated; 401 if it is not good) →
//! credentials (the first `[[credentials.rule]]` the caller matches, by the caller matcher
//! policy rules use, gives a profile whose token replaces whatever the caller sent, only where a token
//! belongs; 403 when no profile matches and the default refuses) → the caller's own credential
//! and the brokered token join the exchange's maskers → the git push stage looks at the head →
//! policy from the request head (a refusal answers now; the decision is written with the
//! request's record) → recording admission (refuse while the store cannot write, wait while it
//! is behind) → the request head is recorded (nothing that can write goes upstream before the
//! store holds it; a plain read's record goes with the first recorded of its answer) →
//! policy from the body where the head cannot decide (`request_gate`: a push's commands and
//! pack, a repository write through the API read as its ref updates, an API call held for
//! approval), its decisions recorded before anything goes up → the
//! credential is put in (or stripped) → the request is masked and recorded as it streams up →
//! the response is masked (for the client where `[mask] responses` says so, always for the
//! record) and recorded as it streams down, git's answers completed → the exchange's record is
//! written before the client sees its end → one log line, masked.
mod git_push;
mod identity;
mod masking;

use std::sync::Arc;

use ::http::{Response, StatusCode, header};
use bytes::Bytes;
use ghgate_policy::classify::GitHub;
use http_body_util::BodyExt as _;

use self::{
    git_push::Push,
    identity::{Credential, Decision},
    masking::BodyMask,
};
use crate::{
    credentials::{self, Broker},
    enforce::{Enforcer, Head as PolicyHead},
    http::{
        self, BodyRefusal, ConnInfo, EndFuture, Ended, Exchange, Gate, Outcome, Phases, ProxyBody, websocket,
    },
    identity::oidc::OidcValidator,
    mask::{Masker, ResponseMasking, policy::MaskSet},
    policy::{Subject, Verdict},
    record::{Recorder, model, recorder::ExchangeRecording},
};

pub struct Pipeline {
    /// `None` when `[record] enabled = false`.
    pub recorder: Option<Arc<Recorder>>,
    pub mask: Arc<MaskSet>,
    pub broker: Arc<Broker>,
    /// `None` when no `[[oidc.issuer]]` is configured.
    pub oidc: Option<Arc<OidcValidator>>,
    /// `None` when no `[policy] file` is configured: everything passes (and is recorded).
    pub enforcer: Option<Arc<Enforcer>>,
    /// Where GitHub serves what: which requests take a brokered token.
    pub github: Arc<GitHub>,
}

impl Pipeline {
    /// The pipeline over these parts. The broker's static tokens join every masker from the
    /// start (a brokered token is masked by its exact value, whatever its format), the
    /// recorder's included.
    pub fn new(
        recorder: Option<Arc<Recorder>>,
        mask: MaskSet,
        broker: Arc<Broker>,
        oidc: Option<Arc<OidcValidator>>,
        enforcer: Option<Arc<Enforcer>>,
        github: Arc<GitHub>,
    ) -> Self {
        let statics: Vec<(String, Vec<u8>)> = broker
            .static_tokens()
            .iter()
            .map(|t| ("brokered".to_owned(), t.expose().as_bytes().to_vec()))
            .collect();
        let mask = Arc::new(mask.with_exact(&statics));
        if let Some(r) = &recorder {
            r.set_masker(mask.records.clone());
        }
        Self {
            recorder,
            mask,
            broker,
            oidc,
            enforcer,
            github,
        }
    }
}

/// What the policy stage still has to decide from a request's body.
enum Plan {
    Push(Subject),
    Approval(Subject, Verdict),
    /// A repository write through the API, decided from its body.
    ApiWrite(Subject),
}

/// One exchange while its request head is decided.
pub struct Head {
    /// The exchange's record; shared by the two bodies' streams, which record side by side.
    record: Option<Arc<ExchangeRecording>>,
    /// The (responses, records) maskers, with the caller's own credentials once the head is
    /// known.
    maskers: (Masker, Masker),
    /// What replaces the caller's credential upstream (for a caller with a profile).
    credential: Option<Credential>,
    plan: Option<Plan>,
    push: Push,
}

/// What streams up with the request body.
pub struct Up {
    record: Option<Arc<ExchangeRecording>>,
    body: BodyMask,
}

/// What the response side owns: its head, its body's stream, and the exchange's end.
pub struct Down {
    record: Option<Arc<ExchangeRecording>>,
    maskers: (Masker, Masker),
    /// Set by `response_filter`, from the response head.
    body: Option<BodyMask>,
    push: Push,
}

/// What an upgraded exchange's relay holds.
pub struct Upgraded {
    record: Option<Arc<ExchangeRecording>>,
    /// The masker of the server's text messages, when responses are masked for clients.
    masker: Option<Masker>,
}

/// A refusal the gateway answers itself.
fn refuse(status: StatusCode, text: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Phases for Pipeline {
    type Head = Head;
    type Up = Up;
    type Down = Down;
    type Upgraded = Upgraded;

    fn begin(&self, ex: &Exchange) -> Head {
        Head {
            record: self
                .recorder
                .as_ref()
                .map(|r| Arc::new(r.exchange(ex, self.mask.records.clone()))),
            maskers: (self.mask.responses.clone(), self.mask.records.clone()),
            credential: None,
            plan: None,
            push: Push::default(),
        }
    }

    fn connection(&self, conn: &ConnInfo) {
        if let Some(r) = &self.recorder {
            r.connection(conn);
        }
    }

    async fn request_filter(
        &self,
        ex: &Exchange,
        head: &mut Head,
        req: &::http::request::Parts,
    ) -> Option<Response<Bytes>> {
        // 1. Identity and credentials.
        let presented = credentials::presented(&req.headers);
        let Decision {
            identity,
            credential,
            refusal,
            claims,
        } = self.decide(ex, presented.as_ref()).await;
        // 2. The caller's own credential and the brokered token are masked wherever they show
        // up, whatever their format (static tokens are in the maskers from the start).
        let mut creds = crate::mask::caller_credentials(&req.headers);
        if let Some(Credential::Inject(t, _)) = &credential
            && !self.broker.is_static(t)
        {
            creds.push(("brokered".to_owned(), t.expose().as_bytes().to_vec()));
        }
        if !creds.is_empty() {
            head.maskers = (
                self.mask.responses.with_exact(&creds),
                self.mask.records.with_exact(&creds),
            );
        }
        if let Some(rec) = &head.record {
            rec.use_masker(head.maskers.1.clone());
            rec.note_identity(identity);
        }
        if let Some(refusal) = refusal {
            return Some(refusal);
        }
        head.credential = credential;
        // 3. Git pushes: the advertisement is rewritten, whatever the policy says of it.
        head.push = Push::head(ex, self.enforcer.is_some());
        // 4. Policy from the head. Its decision is written with the request's own record (a
        // refusal, with the exchange's end): no store round trip of its own.
        if let Some(enforcer) = &self.enforcer {
            let subject = crate::identity::subject(&ex.conn.caller, claims.as_ref());
            let verdict = enforcer.head(ex, &subject);
            if let Some(refused) = policy_head(ex, head, verdict, subject) {
                return Some(refused);
            }
        }
        // 5. Recording: admission, then the request head. Before anything goes upstream, unless
        // the request only reads (a read method under any override, no body, no upgrade, nothing
        // for the policy to read or approve): its record then goes with the first of its answer
        // that is recorded, still before the client sees the answer's end (one write, not two).
        let (Some(rec), Some(recorder)) = (&head.record, &self.recorder) else {
            return None;
        };
        if let Some(refused) = recorder.admit(ex).await {
            return Some(refused);
        }
        let read = ex.bodyless
            && !ex.req.websocket
            && head.plan.is_none()
            && ghgate_policy::writes::only_reads(&ex.req);
        rec.request_head(ex, req, read).await
    }

    async fn request_gate(
        &self,
        ex: &Exchange,
        head: &mut Head,
        req: &mut ::http::request::Parts,
        body: ProxyBody,
    ) -> Gate {
        // What reads a body before deciding is boxed, allocated only for the requests that need
        // it: inline, its state (10 KB) would be in every request's future (see `http::forward`).
        let (Some(plan), Some(enforcer)) = (head.plan.take(), &self.enforcer) else {
            return if ex.req.is_push() {
                Box::pin(Push::unsigned_only(ex, body)).await
            } else {
                Gate::Forward(body)
            };
        };
        Box::pin(self.gate_planned(ex, head, req, body, plan, enforcer)).await
    }

    fn upstream_request(&self, ex: &Exchange, head: Head, req: &mut ::http::request::Parts) -> (Up, Down) {
        match &head.credential {
            Some(Credential::Inject(token, scheme)) => credentials::inject(&mut req.headers, *scheme, token),
            Some(Credential::Strip) => credentials::strip(&mut req.headers),
            None => {}
        }
        head.push.upstream_request(req);
        let up = Up {
            body: BodyMask::request(&ex.req, head.record.as_deref(), &head.maskers.1),
            record: head.record.clone(),
        };
        let down = Down {
            record: head.record,
            maskers: head.maskers,
            body: None,
            push: head.push,
        };
        (up, down)
    }

    fn request_body_filter(
        &self,
        _ex: &Exchange,
        up: &mut Up,
        chunk: &mut Bytes,
        end: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        up.body.chunk(up.record.as_deref(), chunk, end)
    }

    fn response_filter(&self, ex: &Exchange, down: &mut Down, resp: &mut ::http::response::Parts) {
        // A push advertisement gains `no-thin`; a push's report gains the refs held back.
        down.push.response_head(resp);
        down.body = Some(BodyMask::response(
            &ex.req,
            &self.mask,
            &down.maskers,
            down.record.as_deref(),
            resp,
        ));
    }

    fn response_body_filter(
        &self,
        _ex: &Exchange,
        down: &mut Down,
        chunk: &mut Bytes,
        end: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        down.push.response_chunk(chunk, end);
        match down.body.as_mut() {
            Some(body) => body.chunk(down.record.as_deref(), chunk, end),
            None => Ok(None),
        }
    }

    fn upgraded(&self, ex: &Exchange, down: &mut Down) -> Upgraded {
        Upgraded {
            record: down.record.clone(),
            masker: (self.mask.responses(&ex.req.host, &ex.req.path) == ResponseMasking::Mask)
                .then(|| down.maskers.0.clone()),
        }
    }

    fn websocket_masker(&self, up: &Upgraded) -> Option<Masker> {
        up.masker.clone()
    }

    fn websocket_message(
        &self,
        ex: &Exchange,
        up: &Upgraded,
        dir: websocket::Direction,
        msg: &websocket::Message,
    ) {
        http::log_websocket_message(ex, dir, msg);
        if let Some(rec) = &up.record {
            rec.websocket_message(dir, msg);
        }
    }

    fn logging(&self, ex: &Exchange, state: Ended<'_, Self>, outcome: &Outcome) -> Option<EndFuture> {
        http::log_exchange(ex, outcome);
        crate::telemetry::metrics().exchange(
            ex.req.kind,
            outcome.answered_by,
            outcome.status,
            outcome.error.is_some(),
        );
        let record = match state {
            Ended::BeforeUpstream(head) => head.record.as_deref(),
            Ended::AfterUpstream(down) => down.record.as_deref(),
        };
        record.map(|rec| rec.finish(ex, outcome))
    }
}

impl Pipeline {
    /// `request_gate` for a request the policy must read the body of, or hold for approval.
    async fn gate_planned(
        &self,
        ex: &Exchange,
        head: &mut Head,
        req: &mut ::http::request::Parts,
        body: ProxyBody,
        plan: Plan,
        enforcer: &Enforcer,
    ) -> Gate {
        let caller = &ex.conn.caller;
        // The API is asked with what goes upstream: the brokered token, else the caller's own.
        let token = match &head.credential {
            Some(Credential::Inject(t, _)) => Some(t.clone()),
            Some(Credential::Strip) => None,
            None => credentials::presented(&req.headers),
        };
        let (gate, decisions, secrets) = match plan {
            Plan::Push(subject) => {
                head.push
                    .decide(enforcer, ex, &subject, token.as_ref(), req, body)
                    .await
            }
            Plan::Approval(subject, verdict) => {
                match enforcer.api_approval(ex, caller, &subject, &verdict, body).await {
                    Ok((bytes, d)) => (
                        Gate::Forward(
                            http_body_util::Full::new(bytes)
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        ),
                        vec![d],
                        Vec::new(),
                    ),
                    Err((resp, d)) => (Gate::Answer(resp), vec![d], Vec::new()),
                }
            }
            Plan::ApiWrite(subject) => {
                let (gate, decisions, secrets) = enforcer.api_write(ex, caller, &subject, body).await;
                let gate = match gate {
                    Ok(body) => Gate::Forward(body),
                    Err(resp) => Gate::Answer(resp),
                };
                (gate, decisions, secrets)
            }
        };
        // Nothing goes upstream before its decisions are written.
        if let Some(refused) = record_decisions(ex, head.record.as_deref(), decisions, secrets).await {
            return Gate::Answer(refused);
        }
        gate
    }
}

/// Applies what the policy decided from the request head: a refusal answers now; a push or a
/// held API call is decided from its body (`request_gate`).
fn policy_head(
    ex: &Exchange,
    head: &mut Head,
    verdict: PolicyHead,
    subject: Subject,
) -> Option<Response<Bytes>> {
    let (decisions, answer) = match verdict {
        PolicyHead::Pass(d) => (d, None),
        PolicyHead::Refuse(resp, d) => (d, Some(resp)),
        PolicyHead::Push => {
            head.plan = Some(Plan::Push(subject));
            return None;
        }
        PolicyHead::Approval(v) => {
            head.plan = Some(Plan::Approval(subject, v));
            return None;
        }
        PolicyHead::ApiWrite => {
            head.plan = Some(Plan::ApiWrite(subject));
            return None;
        }
    };
    log_decisions(ex, &decisions);
    if let Some(rec) = &head.record {
        rec.note_decisions(decisions);
    }
    answer
}

/// One count per policy decision, and one log line for each that says more than the exchange's
/// own line will: a request the default rule let through plainly (no ref update, no approval)
/// is logged at debug, since its exchange line follows and the record keeps the decision. On a
/// busy gateway that was a second info line for nearly every request.
fn log_decisions(ex: &Exchange, decisions: &[model::Decision]) {
    for d in decisions {
        crate::telemetry::metrics().decision(d);
        let routine = d.action == model::DecisionAction::Allow
            && d.outcome == model::DecisionOutcome::Passed
            && d.ref_update.is_none()
            && d.approval.is_none()
            && d.rule == ghgate_policy::DEFAULT_RULE_NAME;
        if routine {
            tracing::debug!(exchange = ex.id.get(), action = %d.action, rule = %d.rule, "policy decision");
            continue;
        }
        tracing::info!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), action = %d.action, rule = %d.rule,
                       outcome = %d.outcome, r#ref = d.ref_update.as_ref().map(|r| crate::mask::for_logs(&r.name)),
                       approval = d.approval.as_deref(), "policy decision");
    }
}

/// Records the decisions the policy made from a request's body before it goes on: `Some`
/// answers the client instead (503) when they cannot be written, since nothing passes
/// unrecorded.
async fn record_decisions(
    ex: &Exchange,
    record: Option<&ExchangeRecording>,
    decisions: Vec<model::Decision>,
    secrets: Vec<model::PushSecret>,
) -> Option<Response<Bytes>> {
    log_decisions(ex, &decisions);
    for s in &secrets {
        tracing::warn!(exchange = ex.id.get(), rule = %s.rule, fingerprint = %s.fingerprint,
                       r#ref = %crate::mask::for_logs(&s.ref_name), commit = s.commit.map(|c| c.to_string()),
                       path = s.path.as_deref().map(crate::mask::for_logs), seen_in_response = s.seen_in_response,
                       outcome = %s.outcome, "a push or API write carries a secret");
    }
    let rec = record?;
    match rec.decisions_and_secrets(decisions, secrets).await {
        Ok(()) => None,
        Err(why) => Some(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "ghgate: this request was not forwarded because its policy decision could not be recorded: {why}\n"
            ),
        )),
    }
}

#[cfg(test)]
mod readings;

#[cfg(test)]
mod tests;
