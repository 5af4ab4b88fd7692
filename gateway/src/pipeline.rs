//! The order in which the gateway's concerns see each exchange, in one place.
//!
//! Before any of them, the engine strips hop-by-hop headers and classifies the request once
//! (`classify`: host checked against the SNI, canonical path, repository, git service, Copilot
//! endpoint, body coding); every stage below reads that, never the raw head.
//!
//! For every request: identity (an OIDC token the caller presents is validated; 401 if it is
//! not good) → credentials (the first `[[credentials.rule]]` the caller matches gives a profile
//! whose token replaces whatever the caller sent; 403 when none does and the default refuses) →
//! the caller's own credential and the brokered token join the exchange's maskers → policy
//! from the request head (a refusal answers now; the decision is written with the request's
//! record) → recording admission (refuse while the store cannot write, wait while it is behind)
//! → policy from the body where the head cannot decide (`request_gate`: a push's commands and
//! pack, an API call held for approval), before anything goes upstream → the request is masked
//! and recorded as it streams up → the response is masked (for the client where `[mask]
//! responses` says so, always for the record) and recorded as it streams down → the exchange's
//! record is written before the client sees its end → one log line, masked.
use std::sync::{Arc, Mutex, OnceLock};

use ::http::StatusCode;

use ::http::{Response, header};
use bytes::Bytes;
use http_body_util::BodyExt as _;

use crate::{
    classify::GitHub,
    config::NoProfile,
    credentials::{self, Broker, Scheme, Secret, Who},
    enforce::{
        self, Enforcer, Head,
        push::{PushGate, PushReply},
    },
    http::{self, BodyRefusal, ConnInfo, EndFuture, Exchange, Gate, Outcome, Phases, ProxyBody, websocket},
    identity::oidc::OidcValidator,
    mask::{
        Finding, Masker, ResponseMasking, SseMasker, StreamMasker,
        encoding::{Coding, Decoder},
        policy::{self, MaskSet},
    },
    policy::{Subject, Verdict},
    record::{
        Recorder,
        model::{self, CredentialKind, Direction, Place},
        recorder::{ExchangeRecording, RecordError},
    },
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

/// What goes upstream as a request's credential, for a caller with a profile.
enum Credential {
    /// The profile's token, in the request's scheme.
    Inject(Secret, Scheme),
    /// Nothing: the request goes where no token belongs, and the caller's own is removed.
    Strip,
}

/// What the policy stage still has to decide from a request's body.
enum Plan {
    Push(Subject),
    Approval(Subject, Verdict),
}

/// The answer to a push sent up without some of its refs, gathered to add their `ng` lines.
struct PushAnswer {
    reply: PushReply,
    buf: Vec<u8>,
    /// Past its bound: passed on unchanged.
    given_up: bool,
}

/// The most of a push's answer held to add the refs held back (a report-status is small).
const MAX_PUSH_ANSWER: usize = 1 << 20;

/// A body's masker: SSE-aware for event streams.
enum BodyMasker {
    Plain(Box<StreamMasker>),
    Sse(Box<SseMasker>),
}

impl BodyMasker {
    fn new(masker: &Masker, sse: bool) -> Self {
        if sse {
            BodyMasker::Sse(Box::new(masker.sse_stream()))
        } else {
            BodyMasker::Plain(Box::new(masker.stream()))
        }
    }

    fn push(&mut self, data: &[u8], end: bool, out: &mut Vec<u8>) -> Vec<Finding> {
        let (mut found, more) = match self {
            BodyMasker::Plain(s) => (s.push(data, out), end.then(|| s.finish(out))),
            BodyMasker::Sse(s) => (s.push(data, out), end.then(|| s.finish(out))),
        };
        found.extend(more.into_iter().flatten());
        found
    }
}

/// How one body is masked.
#[derive(Default)]
struct BodyMask {
    /// Decodes a compressed body so it can be scanned.
    decoder: Option<Decoder>,
    masker: Option<BodyMasker>,
    /// The client receives the masked body (responses with `responses = "mask"`).
    for_client: bool,
    /// Set when the body could not be decoded: nothing more of it is stored.
    broken: Option<String>,
}

pub struct Ctx {
    record: Option<ExchangeRecording>,
    /// The exchange's maskers, with the caller's own credentials, once its request head is known.
    maskers: OnceLock<(Masker, Masker)>,
    request: Mutex<BodyMask>,
    response: Mutex<BodyMask>,
    /// What replaces the caller's credential upstream (for a caller with a profile).
    credential: OnceLock<Credential>,
    plan: Mutex<Option<Plan>>,
    push_answer: Mutex<Option<PushAnswer>>,
    /// Rewrites a push advertisement (no `push-cert`; `no-thin` with a policy).
    advert: Mutex<Option<ghgate_git::advert::PushAdvert>>,
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

/// What identity and credentials decided for one request.
struct Decision {
    identity: model::Identity,
    credential: Option<Credential>,
    refusal: Option<Response<Bytes>>,
    /// The claims of the OIDC token the caller proved, for the policy.
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Pipeline {
    /// Identity and credentials: who is calling, and what goes upstream for them.
    async fn decide(&self, ex: &Exchange, presented: Option<&Secret>) -> Decision {
        let mut identity = model::Identity {
            session: ex.conn.session.clone(),
            exchange: ex.id,
            at: model::now_micros(),
            oidc_issuer: None,
            oidc_subject: None,
            oidc_claims: None,
            profile: None,
            credential: if presented.is_some() {
                CredentialKind::Passed
            } else {
                CredentialKind::None
            },
            refused: None,
        };
        let refused = |mut identity: model::Identity, status: StatusCode, why: String| {
            identity.credential = CredentialKind::Refused;
            identity.refused = Some(why.clone());
            Decision {
                identity,
                credential: None,
                refusal: Some(refuse(status, format!("ghgate: {why}\n"))),
                claims: None,
            }
        };
        // An OIDC token stands for an identity, not for a credential GitHub would take.
        let mut claims = None;
        if let (Some(oidc), Some(token)) = (&self.oidc, presented)
            && oidc.is_candidate(token.expose())
        {
            match oidc.validate(token.expose()).await {
                Ok(c) => {
                    identity.oidc_issuer = Some(c.issuer.clone());
                    identity.oidc_subject = Some(c.subject.clone());
                    let shown: serde_json::Map<String, serde_json::Value> = c
                        .all
                        .iter()
                        .filter(|(k, _)| {
                            !matches!(k.as_str(), "iss" | "sub" | "aud" | "exp" | "nbf" | "iat" | "jti")
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    identity.oidc_claims = Some(serde_json::Value::Object(shown).to_string());
                    claims = Some(c.all);
                }
                Err(e) => {
                    return refused(
                        identity,
                        StatusCode::UNAUTHORIZED,
                        format!("the OIDC token was refused: {e}"),
                    );
                }
            }
        }
        if !self.broker.is_active() && claims.is_none() {
            return Decision {
                identity,
                credential: None,
                refusal: None,
                claims,
            };
        }
        let who = Who {
            caller: &ex.conn.caller,
            oidc: claims.as_ref(),
        };
        match self.broker.profile_for(&who) {
            Some(profile) => {
                identity.profile = Some(profile.name.clone());
                // No token where none belongs (user content, other hosts, WebSocket upgrades):
                // nothing is minted, and the caller's own credential goes nowhere either.
                let Some(scheme) = credentials::scheme(&ex.req, &self.github) else {
                    if presented.is_some() {
                        identity.credential = CredentialKind::Stripped;
                    }
                    return Decision {
                        identity,
                        credential: Some(Credential::Strip),
                        refusal: None,
                        claims,
                    };
                };
                match profile.token(ex.req.repository.as_ref()).await {
                    Ok(token) => {
                        identity.credential = CredentialKind::Brokered;
                        Decision {
                            identity,
                            credential: Some(Credential::Inject(token, scheme)),
                            refusal: None,
                            claims,
                        }
                    }
                    Err(e @ credentials::CredentialError::NoRepository) => refused(
                        identity,
                        StatusCode::FORBIDDEN,
                        format!("credential profile {:?}: {e}", profile.name),
                    ),
                    Err(e) => refused(
                        identity,
                        StatusCode::BAD_GATEWAY,
                        format!("nothing was forwarded: {e}"),
                    ),
                }
            }
            None if claims.is_some() => refused(
                identity.clone(),
                StatusCode::FORBIDDEN,
                format!(
                    "no credential profile matches this OIDC identity ({}); add a [[credentials.rule]] with oidc claims for it",
                    identity.oidc_subject.as_deref().unwrap_or("?")
                ),
            ),
            None if self.broker.default() == NoProfile::Refuse => {
                let c = &ex.conn.caller;
                refused(
                    identity,
                    StatusCode::FORBIDDEN,
                    format!(
                        "no credential profile matches this caller (uid {}, exe {}); add a [[credentials.rule]] for it",
                        c.uid,
                        c.exe
                            .as_ref()
                            .map_or("unknown".into(), |e| e.display().to_string())
                    ),
                )
            }
            None => Decision {
                identity,
                credential: None,
                refusal: None,
                claims,
            },
        }
    }

    /// Applies what the policy decided from the request head: a refusal answers now; a push
    /// or a held API call is decided from its body (`request_gate`).
    fn policy_head(
        &self,
        ex: &Exchange,
        ctx: &Ctx,
        head: Option<(Head, Subject)>,
    ) -> Option<Response<Bytes>> {
        let (head, subject) = head?;
        let (decision, answer) = match head {
            Head::Pass(d) => (d, None),
            Head::Refuse(resp, d) => (d, Some(resp)),
            Head::Push => {
                *ctx.plan.lock().ok()? = Some(Plan::Push(subject));
                return None;
            }
            Head::Approval(v) => {
                *ctx.plan.lock().ok()? = Some(Plan::Approval(subject, v));
                return None;
            }
        };
        log_decisions(ex, std::slice::from_ref(&decision));
        if let Some(rec) = &ctx.record {
            rec.note_decisions(vec![decision]);
        }
        answer
    }

    /// The (responses, records) maskers of an exchange.
    fn maskers(&self, ctx: &Ctx) -> (Masker, Masker) {
        ctx.maskers
            .get()
            .cloned()
            .unwrap_or_else(|| (self.mask.responses.clone(), self.mask.records.clone()))
    }

    /// Decodes, masks and records one chunk of a body. A request body that turns out not to
    /// decode as its Content-Encoding says is cut (415): nothing passes that the gateway could
    /// not read.
    fn body_chunk(
        &self,
        ctx: &Ctx,
        dir: Direction,
        chunk: &mut Bytes,
        end: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        let failed = |cause: String| BodyRefusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            cause,
        };
        // The store could not take the body: nothing passes unrecorded.
        let unrecorded = |cause: RecordError| BodyRefusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            cause: format!("stopped: {cause}"),
        };
        let side = match dir {
            Direction::Request => &ctx.request,
            Direction::Response => &ctx.response,
        };
        let mut b = side.lock().map_err(|_| BodyRefusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            cause: "the masking stage failed earlier".to_owned(),
        })?;
        if b.broken.is_some() {
            // Nothing more of this body is stored: it could not be decoded, so not masked.
            return Ok(None);
        }
        let mut decoded = Vec::new();
        let mut plain: Option<&[u8]> = Some(chunk);
        if let Some(d) = b.decoder.as_mut() {
            let pushed = d
                .push(chunk, &mut decoded)
                .and_then(|()| if end { d.finish(&mut decoded) } else { Ok(()) });
            match pushed {
                Ok(()) => plain = Some(&decoded),
                Err(e) => {
                    let why = format!("cannot decode the {}: {e}", place(dir).as_str());
                    if let Some(rec) = &ctx.record {
                        rec.observe_failed(dir, &why);
                    }
                    if dir == Direction::Request {
                        return Err(failed(format!(
                            "{why}; the request was cut before it was complete"
                        )));
                    }
                    if b.for_client {
                        // The client was promised an identity-encoded, masked body.
                        return Err(failed(why));
                    }
                    tracing::warn!(error = %why, "the rest of this body is not recorded");
                    b.decoder = None;
                    if b.masker.is_some() {
                        b.broken = Some(why);
                        return Ok(None);
                    }
                    plain = None;
                }
            }
        }
        if let (Some(rec), Some(plain)) = (&ctx.record, plain) {
            rec.observe(dir, plain);
        }
        let Some(masker) = b.masker.as_mut() else {
            // Nothing is masked for the client, and the record keeps at most the length and
            // hash of this body (a git pack), or recording is off: it passes as it is.
            drop(b);
            return match &ctx.record {
                Some(rec) => rec.chunk(dir, chunk, Vec::new()).map_err(unrecorded),
                None => Ok(None),
            };
        };
        let plain = plain.expect("a body with a masker is decoded or broken");
        let mut out = Vec::with_capacity(plain.len());
        let found = masker.push(plain, end, &mut out);
        let for_client = b.for_client;
        drop(b);
        let masked = Bytes::from(out);
        if for_client {
            *chunk = masked.clone();
        }
        match &ctx.record {
            Some(rec) => {
                let records = rec.masked_records(&found, place(dir), for_client);
                rec.chunk(dir, &masked, records).map_err(unrecorded)
            }
            None => {
                crate::mask::metrics::count(&found, place(dir).as_str());
                Ok(None)
            }
        }
    }
}

/// Gathers the answer to a push sent up in part, and at its end adds an `ng` line for each ref
/// held back (passing the answer on unchanged if it is not what git's report-status looks like).
fn add_held_refs(a: &mut PushAnswer, chunk: &mut Bytes, end: bool) {
    if a.given_up {
        return;
    }
    a.buf.extend_from_slice(chunk);
    if a.buf.len() > MAX_PUSH_ANSWER {
        tracing::warn!(
            "a push's answer is too large to add the refs the policy held back; passed on as it is"
        );
        a.given_up = true;
        *chunk = Bytes::from(std::mem::take(&mut a.buf));
        return;
    }
    if !end {
        *chunk = Bytes::new();
        return;
    }
    let upstream = std::mem::take(&mut a.buf);
    *chunk = match ghgate_git::report::merge(a.reply.style, &upstream, &a.reply.held, &a.reply.notes) {
        Ok(merged) => Bytes::from(merged),
        Err(e) => {
            tracing::warn!(error = %e, "could not add the held refs to a push's answer; passed on as it is");
            Bytes::from(upstream)
        }
    };
}

/// Records the policy's decisions for an exchange before it goes on: `Some` answers the client
/// instead (503) when they cannot be written, since nothing passes unrecorded.
/// One log line per policy decision.
fn log_decisions(ex: &Exchange, decisions: &[model::Decision]) {
    for d in decisions {
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
    ctx: &Ctx,
    decisions: Vec<model::Decision>,
) -> Option<Response<Bytes>> {
    log_decisions(ex, &decisions);
    let rec = ctx.record.as_ref()?;
    match rec.decisions(decisions).await {
        Ok(()) => None,
        Err(why) => Some(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "ghgate: this request was not forwarded because its policy decision could not be recorded: {why}\n"
            ),
        )),
    }
}

fn place(dir: Direction) -> Place {
    match dir {
        Direction::Request => Place::RequestBody,
        Direction::Response => Place::ResponseBody,
    }
}

fn content_type(headers: &::http::HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The decoder for a response body's Content-Encoding: `Err` when it is one ghgate cannot
/// decode (a request's was read by the classifier).
fn decoder(headers: &::http::HeaderMap) -> Result<Option<Decoder>, String> {
    let value = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match Coding::parse(value.as_deref()) {
        Ok(coding) => Ok(coding.map(Decoder::new)),
        Err(e) => Err(e.to_string()),
    }
}

impl Phases for Pipeline {
    type Ctx = Ctx;

    fn new_ctx(&self, ex: &Exchange) -> Ctx {
        Ctx {
            record: self
                .recorder
                .as_ref()
                .map(|r| r.exchange(ex, self.mask.records.clone())),
            maskers: OnceLock::new(),
            request: Mutex::new(BodyMask::default()),
            response: Mutex::new(BodyMask::default()),
            credential: OnceLock::new(),
            plan: Mutex::new(None),
            push_answer: Mutex::new(None),
            advert: Mutex::new(None),
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
        ctx: &Ctx,
        req: &::http::request::Parts,
    ) -> Option<Response<Bytes>> {
        let presented = credentials::presented(&req.headers);
        let decision = self.decide(ex, presented.as_ref()).await;
        // The caller's own credential and the brokered token are masked wherever they show up,
        // whatever their format.
        // Static tokens are in the maskers from the start (`MaskSet::with_exact` at load).
        let mut creds = crate::mask::caller_credentials(&req.headers);
        if let Some(Credential::Inject(t, _)) = &decision.credential
            && !self.broker.is_static(t)
        {
            creds.push(("brokered".to_owned(), t.expose().as_bytes().to_vec()));
        }
        let maskers = if creds.is_empty() {
            (self.mask.responses.clone(), self.mask.records.clone())
        } else {
            (
                self.mask.responses.with_exact(&creds),
                self.mask.records.with_exact(&creds),
            )
        };
        let _ = ctx.maskers.set(maskers.clone());
        if let Some(rec) = &ctx.record {
            rec.use_masker(maskers.1.clone());
            rec.note_identity(decision.identity);
        }
        if let Some(refusal) = decision.refusal {
            return Some(refusal);
        }
        if let Some(c) = decision.credential {
            let _ = ctx.credential.set(c);
        }
        // A push advertisement never offers push certificates (and gains `no-thin` with a
        // policy), whatever the policy says of the request.
        if ex.req.is_push_advertisement()
            && let Ok(mut a) = ctx.advert.lock()
        {
            *a = Some(ghgate_git::advert::PushAdvert::new(self.enforcer.is_some()));
        }
        let head = self.enforcer.as_ref().map(|enforcer| {
            let subject = enforce::subject(&ex.conn.caller, decision.claims.as_ref());
            (enforcer.head(ex, &subject), subject)
        });
        // A decision from the head is written with the request's own record (a refusal, with
        // the exchange's end): no store round trip of its own.
        if let Some(refused) = self.policy_head(ex, ctx, head) {
            return Some(refused);
        }
        let Some(rec) = &ctx.record else {
            return None;
        };
        let recorder = self
            .recorder
            .as_ref()
            .expect("an exchange is recorded only with a recorder");
        if let Ok(mut b) = ctx.request.lock() {
            // Requests reach the upstream as sent; only their record is masked. A compressed
            // body is decoded whether or not it is stored: git's parsers read it, and one that
            // does not decode is cut.
            b.decoder = ex.req.body_coding.map(Decoder::new);
            if rec.stores_body(Direction::Request) {
                b.masker = Some(BodyMasker::Plain(Box::new(maskers.1.stream())));
            }
        }
        if let Some(refused) = recorder.admit(ex).await {
            return Some(refused);
        }
        // Nothing goes upstream before the store holds the request (and its decision).
        rec.request_head(ex, req).await
    }

    async fn request_gate(
        &self,
        ex: &Exchange,
        ctx: &Ctx,
        req: &mut ::http::request::Parts,
        body: ProxyBody,
    ) -> Gate {
        let plan = ctx.plan.lock().ok().and_then(|mut p| p.take());
        let (Some(plan), Some(enforcer)) = (plan, &self.enforcer) else {
            // Without a policy a push is read only as far as its commands, to refuse a signed one.
            if ex.req.is_push() {
                return match enforce::push::unsigned_only(ex, body).await {
                    PushGate::Forward { body, .. } => Gate::Forward(body),
                    PushGate::Answer(resp) => Gate::Answer(resp),
                    PushGate::Refused { answer, why } => Gate::Refuse(answer, why),
                };
            }
            return Gate::Forward(body);
        };
        let caller = &ex.conn.caller;
        // The API is asked with what goes upstream: the brokered token, else the caller's own.
        let token = match ctx.credential.get() {
            Some(Credential::Inject(t, _)) => Some(t.clone()),
            Some(Credential::Strip) => None,
            None => credentials::presented(&req.headers),
        };
        match plan {
            Plan::Push(subject) => {
                let (gate, decisions) = enforcer.push(ex, caller, &subject, token.as_ref(), body).await;
                if let Some(refused) = record_decisions(ex, ctx, decisions).await {
                    return Gate::Answer(refused);
                }
                match gate {
                    PushGate::Answer(resp) => Gate::Answer(resp),
                    PushGate::Refused { answer, why } => Gate::Refuse(answer, why),
                    PushGate::Forward {
                        body,
                        length,
                        rewritten,
                        reply,
                    } => {
                        if rewritten {
                            match length {
                                Some(n) => {
                                    req.headers.insert(header::CONTENT_LENGTH, n.into());
                                }
                                None => {
                                    req.headers.remove(header::CONTENT_LENGTH);
                                }
                            }
                        }
                        if let (Some(reply), Ok(mut a)) = (reply, ctx.push_answer.lock()) {
                            *a = Some(PushAnswer {
                                reply,
                                buf: Vec::new(),
                                given_up: false,
                            });
                        }
                        Gate::Forward(body)
                    }
                }
            }
            Plan::Approval(subject, verdict) => {
                let (result, decision) =
                    match enforcer.api_approval(ex, caller, &subject, &verdict, body).await {
                        Ok((bytes, d)) => (Ok(bytes), d),
                        Err((resp, d)) => (Err(resp), d),
                    };
                if let Some(refused) = record_decisions(ex, ctx, vec![decision]).await {
                    return Gate::Answer(refused);
                }
                match result {
                    Ok(bytes) => Gate::Forward(
                        http_body_util::Full::new(bytes)
                            .map_err(|never| match never {})
                            .boxed(),
                    ),
                    Err(resp) => Gate::Answer(resp),
                }
            }
        }
    }

    fn upstream_request_filter(&self, _ex: &Exchange, ctx: &Ctx, req: &mut ::http::request::Parts) {
        match ctx.credential.get() {
            Some(Credential::Inject(token, scheme)) => credentials::inject(&mut req.headers, *scheme, token),
            Some(Credential::Strip) => credentials::strip(&mut req.headers),
            None => {}
        }
        // Answers the gateway rewrites (a push advertisement, a push's report) must come back
        // uncompressed.
        let rewrites =
            ctx.advert.lock().is_ok_and(|n| n.is_some()) || ctx.push_answer.lock().is_ok_and(|a| a.is_some());
        if rewrites {
            req.headers.remove(header::ACCEPT_ENCODING);
        }
    }

    fn request_body_filter(
        &self,
        _ex: &Exchange,
        ctx: &Ctx,
        chunk: &mut Bytes,
        end: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        self.body_chunk(ctx, Direction::Request, chunk, end)
    }

    fn response_filter(&self, ex: &Exchange, ctx: &Ctx, resp: &mut ::http::response::Parts) {
        // A push advertisement gains `no-thin`; a push's report gains the refs held back.
        let ok = resp.status == StatusCode::OK && !resp.headers.contains_key(header::CONTENT_ENCODING);
        let mut rewriting = false;
        if let Ok(mut n) = ctx.advert.lock() {
            if !ok {
                *n = None;
            }
            rewriting |= n.is_some();
        }
        if let Ok(mut a) = ctx.push_answer.lock() {
            if !ok {
                *a = None;
            }
            rewriting |= a.is_some();
        }
        if rewriting {
            resp.headers.remove(header::CONTENT_LENGTH);
        }
        let (for_clients, for_records) = self.maskers(ctx);
        let mode = self.mask.responses(&ex.req.host, &ex.req.path);
        let ct = content_type(&resp.headers);
        let sse = ct.is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        let has_body = !(ex.req.method == ::http::Method::HEAD
            || resp.status.is_informational()
            || resp.status == ::http::StatusCode::NO_CONTENT
            || resp.status == ::http::StatusCode::NOT_MODIFIED);
        let decoded = decoder(&resp.headers);
        let for_client = mode == ResponseMasking::Mask && has_body && policy::is_text(ct) && decoded.is_ok();
        if let Ok(mut b) = ctx.response.lock() {
            if for_client {
                b.masker = Some(BodyMasker::new(&for_clients, sse));
                b.for_client = true;
                // The body's length changes with masking, and it goes out decoded.
                resp.headers.remove(header::CONTENT_LENGTH);
                if matches!(decoded, Ok(Some(_))) {
                    resp.headers.remove(header::CONTENT_ENCODING);
                }
            } else if ctx
                .record
                .as_ref()
                .is_some_and(|r| sse || r.stores_body(Direction::Response))
            {
                // SSE events are recorded one by one, whatever the body cap.
                b.masker = Some(BodyMasker::new(&for_records, sse));
            }
        }
        if let Some(rec) = &ctx.record {
            rec.response_head(resp);
        }
        // The body is decoded only for a stage that reads it: the masker, git's parsers (which
        // the recorder set up from the head just now).
        let parsed = ctx
            .record
            .as_ref()
            .is_some_and(|r| r.parses_git(Direction::Response));
        if let Ok(mut b) = ctx.response.lock() {
            match decoded {
                Ok(d) if b.masker.is_some() || parsed => b.decoder = d,
                Ok(_) => {}
                Err(why) if b.masker.is_some() => {
                    tracing::warn!(url = %crate::mask::for_logs(&ex.url), error = %why,
                                   "a response body in an encoding ghgate cannot decode is not recorded");
                    b.broken = Some(why);
                }
                Err(_) => {}
            }
        }
    }

    fn response_body_filter(
        &self,
        _ex: &Exchange,
        ctx: &Ctx,
        chunk: &mut Bytes,
        end: bool,
    ) -> Result<Option<EndFuture>, String> {
        if let Ok(mut n) = ctx.advert.lock()
            && let Some(n) = n.as_mut()
        {
            *chunk = Bytes::from(n.push(chunk, end));
        }
        if let Ok(mut a) = ctx.push_answer.lock()
            && let Some(a) = a.as_mut()
        {
            add_held_refs(a, chunk, end);
        }
        self.body_chunk(ctx, Direction::Response, chunk, end)
            .map_err(|r| r.cause)
    }

    fn websocket_masker(&self, ex: &Exchange, ctx: &Ctx) -> Option<Masker> {
        (self.mask.responses(&ex.req.host, &ex.req.path) == ResponseMasking::Mask)
            .then(|| self.maskers(ctx).0)
    }

    fn websocket_message(
        &self,
        ex: &Exchange,
        ctx: &Ctx,
        dir: websocket::Direction,
        msg: &websocket::Message,
    ) {
        http::log_websocket_message(ex, dir, msg);
        if let Some(rec) = &ctx.record {
            rec.websocket_message(dir, msg);
        }
    }

    fn logging(&self, ex: &Exchange, ctx: &Ctx, outcome: &Outcome) -> Option<EndFuture> {
        http::log_exchange(ex, outcome);
        ctx.record.as_ref().map(|rec| rec.finish(ex, outcome))
    }
}
