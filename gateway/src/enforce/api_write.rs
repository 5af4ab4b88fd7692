//! A repository write through the API (`ghgate_policy::writes`) through the policy: its body is
//! read (up to `approval_body_cap_bytes`) before anything goes upstream, read as the ref updates
//! it makes, and each is decided as a push's ref would be; the strictest verdict is the
//! request's. A write the gateway cannot read (or whose body is past the cap) is decided by the
//! rules that name the request, else by `unknown_write`.
//!
//! Never forwards a write the policy refused or held; every ref update's decision is recorded,
//! with its kind, like a push's.
use bytes::Bytes;
use http::{Response, StatusCode};

use super::{Enforcer, Front, decided_ref, decision, read_front, refusal, suffix, too_big_text};
use crate::{
    http::{Exchange, ProxyBody},
    identity::Caller,
    policy::{
        Action, Subject, Target, WriteExplanation,
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

/// What a refused write's caller is told: which ref update, and why.
pub fn refused_text(decided: &WriteExplanation) -> String {
    let v = &decided.verdict;
    let what = decided
        .refs
        .iter()
        .find(|(_, _, e)| e.verdict == *v)
        .map(|(api, r, _)| format!("{} ({}, {})", r.name(), r.kind, api.via))
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
        let write = match &front {
            Front::Whole(b) => writes::from_body(&ex.req, &self.github, b, cap),
            Front::Over(..) => Write::too_big(cap),
        };
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
