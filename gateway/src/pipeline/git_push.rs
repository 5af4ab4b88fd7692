//! Git pushes, as one stage with its own phases: the receive-pack advertisement is rewritten (no
//! `push-cert`, ever; `no-thin` under a policy, so pushed packs carry every object the policy
//! reads); a push's commands and pack are decided before anything goes upstream (refs the policy
//! holds back are removed from the push, signed pushes refused); and git's answer gains an `ng`
//! line for each ref held back, in git's own report-status format.
//!
//! The decisions themselves are the enforcer's; this module only carries a push through the
//! exchange. It never reads a body whole except through `enforce::push`, within its limits.
use ::http::{StatusCode, header};
use bytes::Bytes;
use ghgate_git::advert::PushAdvert;

use crate::{
    credentials::Secret,
    enforce::{
        self, Enforcer,
        push::{PushGate, PushReply},
    },
    http::{Exchange, Gate, ProxyBody},
    policy::Subject,
    record::model,
};

/// The most of a push's answer held to add the refs held back (a report-status is small).
const MAX_PUSH_ANSWER: usize = 1 << 20;

/// What one exchange's git push stage keeps: the advertisement's rewriter, or the answer of a
/// push some refs of which were held back.
#[derive(Default)]
pub struct Push {
    advert: Option<PushAdvert>,
    answer: Option<PushAnswer>,
}

/// The answer to a push sent up without some of its refs, gathered to add their `ng` lines.
struct PushAnswer {
    reply: PushReply,
    buf: Vec<u8>,
    /// Past its bound: passed on unchanged.
    given_up: bool,
}

impl Push {
    /// From the request head: a push advertisement is rewritten whatever the policy says of
    /// the request (`no-thin` only with a policy).
    pub fn head(ex: &Exchange, policy: bool) -> Self {
        Self {
            advert: ex.req.is_push_advertisement().then(|| PushAdvert::new(policy)),
            answer: None,
        }
    }

    /// Whether this stage rewrites the response: it must then come back uncompressed.
    fn rewrites(&self) -> bool {
        self.advert.is_some() || self.answer.is_some()
    }

    /// The request as it goes upstream.
    pub fn upstream_request(&self, req: &mut ::http::request::Parts) {
        if self.rewrites() {
            req.headers.remove(header::ACCEPT_ENCODING);
        }
    }

    /// The response head: only a plain 200 is rewritten (its length then changes).
    pub fn response_head(&mut self, resp: &mut ::http::response::Parts) {
        let ok = resp.status == StatusCode::OK && !resp.headers.contains_key(header::CONTENT_ENCODING);
        if !ok {
            self.advert = None;
            self.answer = None;
        }
        if self.rewrites() {
            resp.headers.remove(header::CONTENT_LENGTH);
        }
    }

    /// Each chunk of the response on its way down.
    pub fn response_chunk(&mut self, chunk: &mut Bytes, end: bool) {
        if let Some(advert) = self.advert.as_mut() {
            *chunk = Bytes::from(advert.push(chunk, end));
        }
        if let Some(answer) = self.answer.as_mut() {
            add_held_refs(answer, chunk, end);
        }
    }

    /// A push under a policy: its commands and pack decided before anything goes upstream.
    /// Returns the gate and the decisions to record (before the body is forwarded).
    pub async fn decide(
        &mut self,
        enforcer: &Enforcer,
        ex: &Exchange,
        subject: &Subject,
        token: Option<&Secret>,
        req: &mut ::http::request::Parts,
        body: ProxyBody,
    ) -> (Gate, Vec<model::Decision>) {
        let (gate, decisions) = enforcer.push(ex, &ex.conn.caller, subject, token, body).await;
        let gate = match gate {
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
                self.answer = reply.map(|reply| PushAnswer {
                    reply,
                    buf: Vec::new(),
                    given_up: false,
                });
                Gate::Forward(body)
            }
        };
        (gate, decisions)
    }

    /// A push without a policy is read only as far as its commands, to refuse a signed one.
    pub async fn unsigned_only(ex: &Exchange, body: ProxyBody) -> Gate {
        match enforce::push::unsigned_only(ex, body).await {
            PushGate::Forward { body, .. } => Gate::Forward(body),
            PushGate::Answer(resp) => Gate::Answer(resp),
            PushGate::Refused { answer, why } => Gate::Refuse(answer, why),
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
