//! A repository write through the API (`ghgate_policy::writes`) through the policy: its body is
//! read (up to `approval_body_cap_bytes`) before anything goes upstream, read as the ref updates
//! it makes, and each is decided as a push's ref would be; the strictest verdict is the
//! request's. A write the gateway cannot read (or whose body is past the cap) is decided by the
//! rules that name the request, else by `unknown_write`.
//!
//! The files a write carries (a contents `PUT`, `createCommitOnBranch`'s additions), decoded
//! by the mapping, go through the masker that scans pushes, so that `secrets` and `secret_seen`
//! rules decide them as they decide a push; what they carry is recorded as a push's is (rule,
//! fingerprint, ref, file; never the secret). Contents that cannot be decoded, and a body past
//! the cap, count as unscanned: a rule on secrets that refuses or holds matches them.
//!
//! Never forwards a write the policy refused or held; every ref update's decision is recorded,
//! with its kind, like a push's.
use bytes::Bytes;
use http::{Response, StatusCode};

use super::{
    Enforcer, Front, SecretScan, decided_ref, decision, push::keep_finding, read_front, refusal, suffix,
    too_big_text,
};
use crate::{
    http::{Exchange, ProxyBody},
    identity::Caller,
    policy::{
        Action, PushedSecret, Secrets, Subject, Target, WriteExplanation,
        writes::{self, Write},
    },
    record::model::{self, DecisionOutcome as Outcome},
};

/// One decision per ref update (and one for the part the gateway cannot read), all with the
/// request's outcome.
pub fn decisions(
    decided: &WriteExplanation,
    outcome: Outcome,
    approval: Option<&str>,
) -> Vec<model::Decision> {
    let approval = approval.map(str::to_owned);
    let mut out: Vec<model::Decision> = decided
        .refs
        .iter()
        .map(|(api, r, e)| {
            decision(
                &e.verdict,
                Some(decided_ref(r, Some(format!("the API request ({})", api.via)))),
                outcome,
                approval.clone(),
            )
        })
        .collect();
    if let Some((why, e)) = &decided.unknown {
        let mut d = decision(&e.verdict, None, outcome, approval);
        d.message = Some(match &d.message {
            Some(m) => format!("{m} (an API write the gateway cannot read: {why})"),
            None => format!("an API write the gateway cannot read: {why}"),
        });
        out.push(d);
    }
    out
}

/// Scans the files each ref update of `write` carries with the masker pushes are scanned with,
/// placing each secret in its file. Without a masker, what they carry counts as unscanned.
pub fn scan(scan: Option<&SecretScan>, write: &mut Write) {
    for api in write.refs_mut() {
        if api.secrets != Secrets::NotComputed {
            continue;
        }
        let Some(scan) = scan else {
            api.secrets = Secrets::Unknown("the gateway has no masker to scan API writes with".into());
            continue;
        };
        let mut out: Vec<PushedSecret> = Vec::new();
        for file in &api.contents {
            let mut found = Vec::new();
            let mut stream = scan.masker.stream();
            stream.push_pieces(&file.bytes, &mut |p| keep_finding(&mut found, p));
            stream.finish_pieces(&mut |p| keep_finding(&mut found, p));
            for (rule, fingerprint) in found {
                let secret = PushedSecret {
                    rule,
                    seen_in_response: scan.seen.contains(&fingerprint),
                    fingerprint,
                    commit: None,
                    path: Some(file.path.clone()),
                };
                if !out.contains(&secret) {
                    out.push(secret);
                }
            }
        }
        out.sort_by(|a, b| (&a.path, &a.rule, &a.fingerprint).cmp(&(&b.path, &b.rule, &b.fingerprint)));
        api.secrets = Secrets::Known(out);
        // The decoded files are no longer needed; a held write keeps only its body.
        api.contents = Vec::new();
    }
}

/// The secrets the write's ref updates carry, for the record, each with what came of its ref.
pub fn secrets(
    ex: &Exchange,
    decided: &WriteExplanation,
    decisions: &[model::Decision],
) -> Vec<model::PushSecret> {
    let mut out = Vec::new();
    for ((api, r, e), d) in decided.refs.iter().zip(decisions) {
        let Secrets::Known(found) = &r.secrets else {
            continue;
        };
        let repository = match &api.repository {
            writes::RepoFact::Named(repo) => repo.full_name(),
            writes::RepoFact::Request => ex.req.repository.as_ref().and_then(|r| r.full_name()),
            writes::RepoFact::Node(_) => None,
        };
        out.extend(found.iter().map(|s| model::PushSecret {
            session: model::SessionId::default(),
            exchange: model::ExchangeId::default(),
            at: model::now_micros(),
            rule: s.rule.clone(),
            fingerprint: s.fingerprint.clone(),
            repository: repository.clone(),
            ref_name: r.name().to_owned(),
            commit: s.commit,
            path: s.path.clone(),
            seen_in_response: s.seen_in_response,
            outcome: d.outcome,
            rule_decided: e.verdict.rule.to_string(),
        }));
    }
    out
}

/// What a refused write's caller is told: which ref update, and why.
pub fn refused_text(decided: &WriteExplanation) -> String {
    let v = &decided.verdict;
    let what = decided
        .refs
        .iter()
        .find(|(_, _, e)| e.verdict == *v)
        .map(|(api, r, _)| {
            // A refusal over secrets names them (rule, fingerprint, file; never the secret).
            let carried = match &r.secrets {
                Secrets::Known(found) if !found.is_empty() => format!(
                    ", carrying {}{}",
                    crate::policy::described(&found[0]),
                    if found.len() > 1 {
                        format!(" and {} more", found.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                Secrets::Unknown(why) => format!(", its files unscanned: {why}"),
                _ => String::new(),
            };
            format!("{} ({}, {}{carried})", r.name(), r.kind, api.via)
        })
        .or_else(|| {
            decided
                .unknown
                .as_ref()
                .map(|(why, _)| format!("a write the gateway cannot read ({why})"))
        })
        .unwrap_or_default();
    format!("{what}: denied by {}{}", v.rule, suffix(v.message.as_deref()))
}

pub fn warn_record_only(ex: &Exchange, decided: &WriteExplanation) {
    if decided.verdict.action == Action::RecordOnly {
        tracing::warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), rule = %decided.verdict.rule,
                       "record_only: an API write the policy flags passed");
    }
}

impl Enforcer {
    /// Decides an API write from its body: `Ok` with the body to forward, or `Err` with the
    /// answer; the decisions are for the record in either case.
    pub async fn api_write(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        body: ProxyBody,
    ) -> (
        Result<ProxyBody, Response<Bytes>>,
        Vec<model::Decision>,
        Vec<model::PushSecret>,
    ) {
        let mut decided = None;
        let (gate, decisions) = self
            .api_write_inner(ex, caller, subject, body, &mut decided)
            .await;
        let secrets = decided.map_or_else(Vec::new, |d| secrets(ex, &d, &decisions));
        (gate, decisions, secrets)
    }

    /// `api_write`, leaving what the policy made of the write in `decided_out`.
    async fn api_write_inner(
        &self,
        ex: &Exchange,
        caller: &Caller,
        subject: &Subject,
        body: ProxyBody,
        decided_out: &mut Option<WriteExplanation>,
    ) -> (Result<ProxyBody, Response<Bytes>>, Vec<model::Decision>) {
        let cap = self.cfg.approval_body_cap_bytes;
        let front = match read_front(body, cap).await {
            Ok(f) => f,
            Err(e) => {
                return (
                    Err(refusal(
                        ex,
                        StatusCode::BAD_REQUEST,
                        &format!("the request body could not be read: {e}"),
                    )),
                    Vec::new(),
                );
            }
        };
        let mut write = match &front {
            Front::Whole(b) => writes::from_body(&ex.req, &self.github, b, cap),
            Front::Over(..) => writes::past_cap(&ex.req, &self.github, cap),
        };
        if write.refs().iter().any(|r| !r.contents.is_empty()) {
            // The masker's work is bounded by the body cap, but is CPU work all the same.
            let scanner = self.secret_scan.clone();
            let unscanned = write.clone();
            write = tokio::task::spawn_blocking(move || {
                scan(scanner.as_ref(), &mut write);
                write
            })
            .await
            .unwrap_or_else(|e| {
                let mut w = unscanned;
                for r in w.refs_mut() {
                    r.contents = Vec::new();
                    r.secrets = Secrets::Unknown(format!("scanning failed: {e}"));
                }
                w
            });
        } else {
            scan(self.secret_scan.as_ref(), &mut write);
        }
        let target = Target::new(ex.req.clone());
        let policy = self.live.current();
        let Some(decided) = policy.evaluate_write(subject, &target, &write) else {
            // It writes nothing the policy reads as a repository write: an ordinary request.
            let verdict = policy.evaluate(subject, &target, None);
            return match &verdict.action {
                Action::Allow | Action::RecordOnly => (
                    Ok(front.into_body()),
                    vec![decision(&verdict, None, Outcome::Passed, None)],
                ),
                Action::Deny => (
                    Err(refusal(
                        ex,
                        StatusCode::FORBIDDEN,
                        &format!("denied by {}{}", verdict.rule, suffix(verdict.message.as_deref())),
                    )),
                    vec![decision(&verdict, None, Outcome::Refused, None)],
                ),
                Action::RequireApproval(_) => {
                    let Front::Whole(bytes) = front else {
                        return (
                            Err(refusal(
                                ex,
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &too_big_text(&verdict, cap),
                            )),
                            vec![decision(&verdict, None, Outcome::Refused, None)],
                        );
                    };
                    match self.approve(ex, caller, subject, &verdict, &bytes).await {
                        Ok(id) => (
                            Ok(Front::Whole(bytes).into_body()),
                            vec![decision(&verdict, None, Outcome::Passed, Some(id))],
                        ),
                        Err(held) => (
                            Err(held.answer),
                            vec![decision(&verdict, None, held.outcome, held.approval)],
                        ),
                    }
                }
            };
        };
        tracing::info!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), refs = decided.refs.len(),
                       unknown = decided.unknown.is_some(), verdict = %decided.verdict, "API write");
        *decided_out = Some(decided.clone());
        match &decided.verdict.action {
            Action::Allow | Action::RecordOnly => {
                warn_record_only(ex, &decided);
                (Ok(front.into_body()), decisions(&decided, Outcome::Passed, None))
            }
            Action::Deny => (
                Err(refusal(ex, StatusCode::FORBIDDEN, &refused_text(&decided))),
                decisions(&decided, Outcome::Refused, None),
            ),
            Action::RequireApproval(_) => {
                let verdict = &decided.verdict;
                let Front::Whole(bytes) = front else {
                    return (
                        Err(refusal(
                            ex,
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &too_big_text(verdict, cap),
                        )),
                        decisions(&decided, Outcome::Refused, None),
                    );
                };
                match self.approve(ex, caller, subject, verdict, &bytes).await {
                    Ok(id) => (
                        Ok(Front::Whole(bytes).into_body()),
                        decisions(&decided, Outcome::Passed, Some(&id)),
                    ),
                    Err(held) => (
                        Err(held.answer),
                        decisions(&decided, held.outcome, held.approval.as_deref()),
                    ),
                }
            }
        }
    }
}
