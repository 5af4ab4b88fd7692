//! The policy stage of the pipeline: applies the (hot-reloaded) policy to each request, holds
//! risky operations for approvers, and inspects git pushes ref by ref.
//!
//! `ghgate-policy` is the pure rule model; this module is where it meets the traffic: it builds
//! the facts (who is calling, `identity::subject`; what is asked is the request as
//! `ghgate_policy::classify` read it, the reading every stage shares), reads what a decision
//! needs from the request body (a push's commands and pack, an API call's body hash), asks
//! GitHub's API what cannot be told from the bytes (is this push a fast-forward?), and turns
//! verdicts into answers a client understands (`ng <ref> <why>` for git, a JSON message for the
//! API). A signed push is refused whole, policy or not.
//!
//! It must never forward an operation the policy refused or held, never let a decision go
//! unrecorded, and never guess the safer answer when it could not tell: an undecidable push is
//! the riskier kind.
pub mod api_write;
pub mod push;
pub mod remote;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt as _;

use crate::{
    approval::{self, ApprovalError, Approvals, Gate as ApprovalGate, Operation, Requester},
    config::PolicyConfig,
    http::{Exchange, ProxyBody},
    identity::Caller,
    outbound::Outbound,
    policy::{
        Action, RefUpdate, Subject, Target, Verdict,
        live::Live,
        writes::{self, FromHead, Write},
    },
    record::model::{self, DecisionOutcome as Outcome},
};

/// The policy stage of a running gateway.
pub struct Enforcer {
    pub live: Arc<Live>,
    pub approvals: Arc<Approvals>,
    outbound: Outbound,
    cfg: PolicyConfig,
    /// Where GitHub serves what (`policy.api_url`): which requests are API writes.
    github: ghgate_policy::classify::GitHub,
    /// Fast-forward answers per (repository, old, new): the same push retried asks once.
    ff_cache: Mutex<lru::LruCache<String, bool>>,
    /// How pushed files are scanned for secrets (`secrets`, `secret_seen` rules); without it,
    /// what a push carries counts as unscanned.
    secret_scan: Option<SecretScan>,
}

/// What the policy stage scans pushed files with: the records' masker (the gateway's rules and
/// fingerprint key, so fingerprints match the records) and the fingerprints seen in responses.
#[derive(Clone)]
pub struct SecretScan {
    pub masker: crate::mask::Masker,
    pub seen: Arc<crate::mask::seen::SeenSecrets>,
}

/// What the stage made of a request's head.
pub enum Head {
    /// It passes; the decisions to record with it (one per ref update of an API write).
    Pass(Vec<model::Decision>),
    /// It is refused now, with this answer.
    Refuse(Response<Bytes>, Vec<model::Decision>),
    /// A push: its commands decide, ref by ref (`Enforcer::push`).
    Push,
    /// An API call the policy holds for approval: its body's hash binds the approval.
    Approval(Verdict),
    /// A repository write through the API whose body is read to decide it, or to bind its
    /// approval (`Enforcer::api_write`).
    ApiWrite,
}

impl Enforcer {
    pub fn new(live: Arc<Live>, approvals: Arc<Approvals>, outbound: Outbound, cfg: PolicyConfig) -> Self {
        Self {
            live,
            approvals,
            outbound,
            github: ghgate_policy::classify::GitHub::from_api_url(&cfg.api_url).unwrap_or_default(),
            cfg,
            ff_cache: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).expect("non-zero"),
            )),
            secret_scan: None,
        }
    }

    /// Scan pushed files for secrets with `scan`.
    pub fn with_secret_scan(mut self, scan: SecretScan) -> Self {
        self.secret_scan = Some(scan);
        self
    }

    /// Decides on a request from its head alone where it can.
    pub fn head(&self, ex: &Exchange, subject: &Subject) -> Head {
        if ex.req.is_push() {
            return Head::Push;
        }
        let target = Target::new(ex.req.clone());
        let policy = self.live.current();
        match writes::from_head(&ex.req, &self.github) {
            FromHead::NeedsBody => return Head::ApiWrite,
            FromHead::Decided(Write::None) => {}
            FromHead::Decided(w) => {
                let Some(decided) = policy.evaluate_write(subject, &target, &w) else {
                    unreachable!("a write that is not None is decided")
                };
                return match decided.verdict.action {
                    Action::RequireApproval(_) => Head::ApiWrite,
                    Action::Deny => Head::Refuse(
                        refusal(ex, StatusCode::FORBIDDEN, &api_write::refused_text(&decided)),
                        api_write::decisions(&decided, Outcome::Refused, None),
                    ),
                    Action::Allow | Action::RecordOnly => {
                        api_write::warn_record_only(ex, &decided);
                        Head::Pass(api_write::decisions(&decided, Outcome::Passed, None))
                    }
                };
            }
        }
        let verdict = policy.evaluate(subject, &target, None);
        match &verdict.action {
            Action::Allow | Action::RecordOnly => {
                if verdict.action == Action::RecordOnly {
                    tracing::warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), rule = %verdict.rule,
                                   "record_only: a request the policy flags passed");
                }
                Head::Pass(vec![decision(&verdict, None, Outcome::Passed, None)])
            }
            Action::Deny => {
                let text = format!("denied by {}{}", verdict.rule, suffix(verdict.message.as_deref()));
                Head::Refuse(
                    refusal(ex, StatusCode::FORBIDDEN, &text),
                    vec![decision(&verdict, None, Outcome::Refused, None)],
                )
            }
            Action::RequireApproval(_) => Head::Approval(verdict),
        }
    }

    /// An API call held for approval: reads its body (up to the cap) to bind the approval to
    /// it, then forwards it if an approval for exactly this call exists (using it up), or
    /// answers with the approval's id (after holding the request open, where the rule says so).
    pub async fn api_approval(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        verdict: &Verdict,
        body: ProxyBody,
    ) -> Result<(Bytes, model::Decision), (Response<Bytes>, model::Decision)> {
        let cap = self.cfg.approval_body_cap_bytes;
        let body = match read_front(body, cap).await {
            Ok(Front::Whole(b)) => b,
            Ok(Front::Over(..)) => {
                return Err((
                    refusal(ex, StatusCode::PAYLOAD_TOO_LARGE, &too_big_text(verdict, cap)),
                    decision(verdict, None, Outcome::Refused, None),
                ));
            }
            Err(e) => {
                return Err((
                    refusal(
                        ex,
                        StatusCode::BAD_REQUEST,
                        &format!("the request body could not be read: {e}"),
                    ),
                    decision(verdict, None, Outcome::Refused, None),
                ));
            }
        };
        match self.approve(ex, caller, subject, verdict, &body).await {
            Ok(id) => Ok((body, decision(verdict, None, Outcome::Passed, Some(id)))),
            Err(held) => Err((held.answer, decision(verdict, None, held.outcome, held.approval))),
        }
    }

    /// Whether an API call held for approval may go on: the approval's id when an approval for
    /// exactly this call (its body included) exists, used up now; else the answer, after
    /// holding the request open where the rule says so.
    async fn approve(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        verdict: &Verdict,
        body: &[u8],
    ) -> Result<String, Held> {
        let Action::RequireApproval(spec) = &verdict.action else {
            unreachable!("approve is only called for require_approval verdicts")
        };
        let refused = |status, text: String, outcome: Outcome, approval: Option<String>| Held {
            answer: refusal(ex, status, &text),
            outcome,
            approval,
        };
        let op = Operation::Api {
            host: ex.req.host.clone(),
            method: ex.req.method.to_string(),
            path: ex.req.path_and_query(),
            body_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)),
        };
        let requester = requester(caller, subject, &ex.conn.session);
        let store_failed = |e: ApprovalError| {
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the approval store failed: {e}"),
                Outcome::Refused,
                None,
            )
        };
        let mut gate = self.check(&op, &requester, verdict).map_err(store_failed)?;
        if let (ApprovalGate::Pending { id, .. }, Some(hold)) = (&gate, spec.hold) {
            tracing::info!(exchange = ex.id.get(), approval = %id, hold_secs = hold.as_secs(), "holding a request open for its approval");
            let _ = self.approvals.wait(id, hold).await;
            gate = self.check(&op, &requester, verdict).map_err(store_failed)?;
        }
        match gate {
            ApprovalGate::Approved { id } => Ok(id),
            ApprovalGate::Pending { id, .. } => Err(refused(
                StatusCode::FORBIDDEN,
                held_text(&id, verdict),
                Outcome::Held,
                Some(id),
            )),
            ApprovalGate::Denied { id, by, reason } => Err(refused(
                StatusCode::FORBIDDEN,
                format!("approval {id} was denied by {by}{}", suffix(reason.as_deref())),
                Outcome::Refused,
                Some(id),
            )),
            ApprovalGate::TooMany { pending, whose } => Err(refused(
                StatusCode::TOO_MANY_REQUESTS,
                ApprovalGate::too_many_text(pending, whose),
                Outcome::Refused,
                None,
            )),
        }
    }

    /// The approval state of an operation; `Err` when the approval store cannot be written (the
    /// operation is then refused: an approval must never be usable twice).
    fn check(
        &self,
        op: &Operation,
        requester: &Requester,
        verdict: &Verdict,
    ) -> Result<ApprovalGate, ApprovalError> {
        let Action::RequireApproval(spec) = &verdict.action else {
            unreachable!("check is only called for require_approval verdicts")
        };
        self.approvals.check(
            op,
            requester,
            spec,
            &verdict.rule.to_string(),
            verdict.message.as_deref(),
        )
    }

    /// How long a push's inspection may take.
    fn inspect_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.inspect_timeout_ms)
    }

    fn cached_ff(&self, key: &str) -> Option<bool> {
        self.ff_cache.lock().ok()?.get(key).copied()
    }

    fn cache_ff(&self, key: String, ff: bool) {
        if let Ok(mut c) = self.ff_cache.lock() {
            c.put(key, ff);
        }
    }
}

/// Who asked for an approval: what a retry by the same caller (a new process) still matches.
pub fn requester(caller: &Caller, subject: &Subject, session: &model::SessionId) -> Requester {
    Requester {
        uid: caller.uid,
        user: subject.user.clone(),
        exe: subject.exe.clone(),
        session: session.clone(),
        oidc_subject: subject
            .oidc
            .as_ref()
            .and_then(|c| c.get("sub"))
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        ci_repository: subject.ci_repository.clone(),
        login: caller.login,
    }
}

/// The record of a verdict (the recorder fills in its session and exchange).
pub fn decision(
    verdict: &Verdict,
    ref_update: Option<model::DecidedRef>,
    outcome: Outcome,
    approval: Option<String>,
) -> model::Decision {
    model::Decision {
        session: model::SessionId::default(),
        exchange: model::ExchangeId::default(),
        at: model::now_micros(),
        action: match verdict.action {
            Action::Allow => model::DecisionAction::Allow,
            Action::Deny => model::DecisionAction::Deny,
            Action::RequireApproval(_) => model::DecisionAction::RequireApproval,
            Action::RecordOnly => model::DecisionAction::RecordOnly,
        },
        rule: verdict.rule.to_string(),
        message: verdict.message.clone(),
        ref_update,
        approval,
        outcome,
    }
}

/// A ref update as recorded.
pub fn decided_ref(r: &RefUpdate, kind_from: Option<String>) -> model::DecidedRef {
    use crate::policy::Paths;
    const MAX_PATHS: usize = 200;
    let (paths, paths_unknown) = match &r.paths {
        Paths::Known(p) => (p.iter().take(MAX_PATHS).cloned().collect(), None),
        Paths::Unknown(why) => (Vec::new(), Some(why.clone())),
        Paths::NotComputed => (Vec::new(), None),
    };
    model::DecidedRef {
        name: r.update.name.clone(),
        old: r.update.old,
        new: r.update.new,
        kind: r.kind,
        kind_from,
        paths,
        paths_unknown,
    }
}

/// What a caller is told about an operation held for approval.
pub fn held_text(id: &str, verdict: &Verdict) -> String {
    let group = match &verdict.action {
        Action::RequireApproval(s) => s.group.as_str(),
        _ => "?",
    };
    format!(
        "held for approval {id} by {}{}; an approver in \"{group}\" runs `ghgate approvals approve {id}`, then retry",
        verdict.rule,
        suffix(verdict.message.as_deref())
    )
}

fn suffix(message: Option<&str>) -> String {
    message.map(|m| format!(": {m}")).unwrap_or_default()
}

/// The gateway's refusal, in the form the client reads: plain text for git smart HTTP (which
/// prints it as `remote: …`), GitHub's JSON error shape for the API and Git LFS.
pub fn refusal(ex: &Exchange, status: StatusCode, text: &str) -> Response<Bytes> {
    // Git LFS reads errors as JSON, like the API.
    let git = ex
        .req
        .git
        .is_some_and(|g| g != ghgate_policy::classify::GitEndpoint::Lfs);
    let (body, ctype) = if git {
        (format!("ghgate: {text}\n"), "text/plain; charset=utf-8")
    } else {
        (
            serde_json::json!({ "message": format!("ghgate: {text}") }).to_string(),
            "application/json; charset=utf-8",
        )
    };
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

/// An API call held for approval that may not go on: its answer, and what to record.
struct Held {
    answer: Response<Bytes>,
    outcome: Outcome,
    approval: Option<String>,
}

fn too_big_text(verdict: &Verdict, cap: usize) -> String {
    format!(
        "this request needs an approval ({}), and its body is larger than the {cap} bytes an approval can be bound to",
        verdict.rule
    )
}

/// The front of a request body, read up to a cap.
enum Front {
    /// The whole body: it is at most the cap.
    Whole(Bytes),
    /// What was read, past the cap, and the unread rest: forwarded together if it goes on.
    Over(Bytes, ProxyBody),
}

impl Front {
    /// The body as the client sent it.
    fn into_body(self) -> ProxyBody {
        match self {
            Front::Whole(b) => http_body_util::Full::new(b)
                .map_err(|never| match never {})
                .boxed_unsync(),
            Front::Over(front, rest) => {
                use futures_util::StreamExt as _;
                let head = futures_util::stream::once(async move {
                    Ok::<_, crate::http::BoxError>(http_body::Frame::data(front))
                });
                http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(
                    head.chain(http_body_util::BodyStream::new(rest)),
                ))
            }
        }
    }
}

/// Reads a body until it ends or passes `cap` bytes.
async fn read_front(mut body: ProxyBody, cap: usize) -> Result<Front, String> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            buf.extend_from_slice(d);
            if buf.len() > cap {
                return Ok(Front::Over(buf.freeze(), body));
            }
        }
    }
    Ok(Front::Whole(buf.freeze()))
}

/// The approver groups of the current policy (reloads apply at once).
struct PolicyGroups(Arc<Live>);

fn group_of(g: &crate::policy::ApproverGroup) -> approval::ApproverGroup {
    approval::ApproverGroup {
        users: g.users.clone(),
        uids: g.uids.clone(),
    }
}

impl approval::ApproverGroups for PolicyGroups {
    fn group(&self, name: &str) -> Option<approval::ApproverGroup> {
        self.0.current().group(name).map(group_of)
    }

    fn all(&self) -> Vec<(String, approval::ApproverGroup)> {
        self.0
            .current()
            .groups()
            .map(|(n, g)| (n.to_owned(), group_of(g)))
            .collect()
    }
}

/// Webhook deliveries through the gateway's own verified HTTPS client.
struct OutboundPoster(Outbound);

impl approval::Poster for OutboundPoster {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(String, String)],
        body: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, crate::http::BoxError>> + Send + 'a>>
    {
        Box::pin(async move {
            let headers = headers
                .iter()
                .map(|(k, v)| {
                    http::HeaderName::from_bytes(k.as_bytes())
                        .map(|n| (n, v.clone()))
                        .map_err(|_| crate::http::BoxError::from(format!("{k:?} is not a header name")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(self
                .0
                .request(http::Method::POST, url, &headers, Some(Bytes::from(body)))
                .await
                .map(|r| r.status.as_u16())?)
        })
    }
}

/// An approval step, for the session store: in the session that asked for the approval.
fn step_record(a: &approval::Approval, step: &approval::Step) -> model::ApprovalStep {
    use approval::Step;
    use model::ApprovalStepKind as Kind;
    let (kind, by, reason) = match step {
        Step::Requested => (Kind::Requested, None, None),
        Step::Notified {
            ok: true, attempts, ..
        } => (Kind::Notified, None, Some(format!("after {attempts} attempt(s)"))),
        Step::Notified {
            ok: false,
            attempts,
            error,
        } => (
            Kind::NotifyFailed,
            None,
            Some(format!(
                "after {attempts} attempt(s): {}",
                error.as_deref().unwrap_or("no answer")
            )),
        ),
        Step::Approved { by, identity, reason } => {
            (Kind::Approved, Some(format!("{by} ({identity})")), reason.clone())
        }
        Step::Denied { by, identity, reason } => {
            (Kind::Denied, Some(format!("{by} ({identity})")), reason.clone())
        }
        Step::Used => (Kind::Used, None, None),
        Step::Expired => (Kind::Expired, None, None),
    };
    model::ApprovalStep {
        session: a.requester.session.clone(),
        at: model::now_micros(),
        id: a.id.clone(),
        step: kind,
        exchange: None,
        operation: a.operation.to_string(),
        rule: a.rule.clone(),
        by,
        reason,
    }
}

impl Enforcer {
    /// The policy stage for a configuration: `None` without a `[policy] file`. Fails (before
    /// anything is attached) on a policy file that is not valid or an approval store that
    /// cannot be read.
    pub fn start(
        config: &crate::config::Config,
        outbound: Outbound,
        recorder: Option<Arc<crate::record::Recorder>>,
        secret_scan: SecretScan,
    ) -> anyhow::Result<Option<Arc<Enforcer>>> {
        let Some(file) = &config.policy.file else {
            return Ok(None);
        };
        let live = Live::load(file)?;
        let known = secret_scan.masker.rule_ids();
        for rule in live.current().rules() {
            if let Some(bad) = rule.secret_rules().find(|r| !known.iter().any(|k| k == r)) {
                anyhow::bail!(
                    "{}: a rule's `secrets` names {bad:?}, which is not a masking rule of this gateway \
                     (`ghgate mask --list-rules` lists them)",
                    file.display()
                );
            }
        }
        let on_step: approval::StepHook = Arc::new(move |a, step| {
            let record = step_record(a, step);
            tracing::info!(approval = %a.id, step = %record.step, operation = %crate::mask::for_logs(&record.operation),
                           rule = %a.rule, by = record.by.as_deref(), "approval");
            if let Some(r) = &recorder {
                r.approval_step(record);
            }
        });
        let approvals = Approvals::open(&config.state_dir, Arc::new(PolicyGroups(live.clone())), on_step)?;
        approvals.set_pending_caps(config.approvals.pending_caps());
        if let Some(hook) = &config.approvals.webhook {
            approvals.set_webhook(Some(approval::Webhook::new(
                hook.clone(),
                Arc::new(OutboundPoster(outbound.clone())),
                Duration::from_millis(hook.backoff_ms),
            )));
        }
        Ok(Some(Arc::new(
            Enforcer::new(live, approvals, outbound, config.policy.clone()).with_secret_scan(secret_scan),
        )))
    }

    /// Starts what runs beside the proxy: the policy file watcher, approval expiry, and the
    /// control socket (and HTTPS listener, when configured) approvers decide through.
    pub async fn serve(&self, config: &crate::config::Config) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.live
            .clone()
            .watch(Duration::from_millis(config.policy.reload_ms));
        self.approvals.spawn_expiry(Duration::from_secs(1));
        let socket = &config.approvals.socket;
        if let Some(dir) = socket.parent()
            && !dir.exists()
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        approval::control::serve_unix(self.approvals.clone(), socket, config.approvals.allow_root_socket)
            .await
            .with_context(|| format!("cannot serve the control socket {}", socket.display()))?;
        if let Some(http) = &config.approvals.http {
            // Its own validator: approvers' issuers are not callers' (`[oidc]`).
            let oidc = http.oidc.as_ref().map(|o| {
                Arc::new(crate::identity::oidc::OidcValidator::new(
                    &o.issuers(),
                    self.outbound.clone(),
                ))
            });
            let (addr, _) = approval::control::serve_tls(self.approvals.clone(), http, oidc)
                .await
                .context("cannot serve the approvals HTTPS listener")?;
            tracing::info!(listen = %addr, "approvals HTTPS listener ready");
        }
        tracing::info!(policy = %self.live.current().summary(), socket = %socket.display(), "policy active");
        Ok(())
    }
}
