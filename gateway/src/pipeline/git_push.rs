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
    /// Returns the gate, the decisions and the secrets found, to record before the body is
    /// forwarded.
    pub async fn decide(
        &mut self,
        enforcer: &Enforcer,
        ex: &Exchange,
        subject: &Subject,
        token: Option<&Secret>,
        req: &mut ::http::request::Parts,
        body: ProxyBody,
    ) -> (Gate, Vec<model::Decision>, Vec<model::PushSecret>) {
        let decided = enforcer.push(ex, &ex.conn.caller, subject, token, body).await;
        let (gate, decisions, secrets) = (decided.gate, decided.decisions, decided.secrets);
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
        (gate, decisions, secrets)
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

#[cfg(test)]
mod tests {
    use ::http::{HeaderValue, Response};
    use ghgate_git::receive::ReplyStyle;

    use super::*;
    use crate::{enforce::push::PushReply, http::testing};

    fn pkt(line: &str) -> Vec<u8> {
        let mut out = Vec::new();
        ghgate_git::pktline::write(&mut out, line.as_bytes()).unwrap();
        out
    }

    /// What GitHub answers to `GET info/refs?service=git-receive-pack`.
    fn advertisement() -> Vec<u8> {
        let mut out = pkt("# service=git-receive-pack\n");
        out.extend_from_slice(b"0000");
        out.extend(pkt(&format!(
            "{} refs/heads/main\0report-status side-band-64k push-cert=1700000000-abc atomic\n",
            "1".repeat(40)
        )));
        out.extend_from_slice(b"0000");
        out
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> ::http::response::Parts {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(10));
        r.into_parts().0
    }

    /// The response body as the client gets it, cut in `cut`-byte chunks on its way down.
    fn down(push: &mut Push, body: &[u8], cut: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = body.chunks(cut).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let mut chunk = Bytes::copy_from_slice(piece);
            push.response_chunk(&mut chunk, i + 1 == pieces.len());
            out.extend_from_slice(&chunk);
        }
        out
    }

    fn advert_exchange() -> Exchange {
        testing::exchange(
            "GET",
            "github.com",
            "/o/r.git/info/refs?service=git-receive-pack",
            &[],
        )
    }

    #[test]
    fn the_push_advertisement_loses_push_cert_and_gains_no_thin_under_a_policy() {
        for policy in [true, false] {
            let mut push = Push::head(&advert_exchange(), policy);
            let mut req = ::http::Request::new(()).into_parts().0;
            req.headers
                .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            push.upstream_request(&mut req);
            assert!(
                !req.headers.contains_key(header::ACCEPT_ENCODING),
                "a rewritten answer must come back uncompressed"
            );
            let mut resp = response(200, &[]);
            push.response_head(&mut resp);
            assert!(
                !resp.headers.contains_key(header::CONTENT_LENGTH),
                "its length changes"
            );
            for cut in [1, 7, 4096] {
                let mut push = Push::head(&advert_exchange(), policy);
                push.response_head(&mut response(200, &[]));
                let text = String::from_utf8_lossy(&down(&mut push, &advertisement(), cut)).into_owned();
                assert!(!text.contains("push-cert"), "cut {cut}: {text:?}");
                assert_eq!(text.contains("no-thin"), policy, "cut {cut}: {text:?}");
                assert!(text.contains("report-status side-band-64k"), "{text:?}");
            }
        }
    }

    #[test]
    fn only_a_plain_ok_answer_is_rewritten() {
        for (status, headers) in [(401, vec![]), (200, vec![("content-encoding", "gzip")])] {
            let mut push = Push::head(&advert_exchange(), true);
            let mut resp = response(status, &headers);
            push.response_head(&mut resp);
            assert!(resp.headers.contains_key(header::CONTENT_LENGTH));
            let body = advertisement();
            assert_eq!(down(&mut push, &body, 5), body, "passed on as it came");
        }
        // Other requests are none of this stage's business.
        let other = testing::exchange(
            "GET",
            "github.com",
            "/o/r.git/info/refs?service=git-upload-pack",
            &[],
        );
        let mut push = Push::head(&other, true);
        push.response_head(&mut response(200, &[]));
        let body = advertisement();
        assert_eq!(down(&mut push, &body, 5), body);
    }

    fn partly_sent() -> Push {
        Push {
            advert: None,
            answer: Some(PushAnswer {
                reply: PushReply {
                    style: ReplyStyle {
                        report_status: true,
                        sideband: false,
                    },
                    held: vec![(
                        "refs/heads/main".into(),
                        "denied by ghgate rule #1 \"no-delete-main\"".into(),
                    )],
                    notes: vec![],
                },
                buf: Vec::new(),
                given_up: false,
            }),
        }
    }

    #[test]
    fn the_answer_to_a_push_sent_in_part_names_the_refs_held_back() {
        let mut upstream = pkt("unpack ok\n");
        upstream.extend(pkt("ok refs/heads/topic\n"));
        upstream.extend_from_slice(b"0000");
        for cut in [1, 3, 1000] {
            let mut push = partly_sent();
            push.response_head(&mut response(200, &[]));
            let text = String::from_utf8_lossy(&down(&mut push, &upstream, cut)).into_owned();
            assert!(text.contains("ok refs/heads/topic"), "{text:?}");
            assert!(
                text.contains("ng refs/heads/main denied by ghgate rule #1"),
                "cut {cut}: {text:?}"
            );
            assert!(text.ends_with("0000"), "{text:?}");
        }
    }

    #[test]
    fn an_answer_too_large_or_not_gits_is_passed_on_as_it_came() {
        let mut push = partly_sent();
        push.response_head(&mut response(200, &[]));
        let junk = b"this is not a report-status".to_vec();
        assert_eq!(down(&mut push, &junk, 4), junk);

        let mut push = partly_sent();
        push.response_head(&mut response(200, &[]));
        let big = vec![b'x'; MAX_PUSH_ANSWER + 10];
        assert_eq!(
            down(&mut push, &big, 64 * 1024),
            big,
            "nothing lost past the bound"
        );
    }
}
