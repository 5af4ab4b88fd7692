//! The masking stage of an exchange: each body is decoded (where it is compressed), masked (for
//! the client where `[mask] responses` says so, always for the record) and handed to the
//! recorder as it streams. One [`BodyMask`] per body, owned by that body's stream.
//!
//! This stage never holds a whole body: what it keeps back is bounded by the masker (the longest
//! possible secret).
use ::http::{Method, StatusCode, header};
use bytes::Bytes;
use ghgate_policy::classify::Classified;

use crate::{
    http::{BodyRefusal, EndFuture},
    mask::{
        Finding, Masker, ResponseMasking, SseMasker, StreamMasker,
        encoding::{Coding, Decoder},
        policy::{self, MaskSet},
    },
    record::{
        model::{Direction, Place},
        recorder::{ExchangeRecording, RecordError},
    },
};

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

/// How one body is decoded, masked and recorded.
pub struct BodyMask {
    dir: Direction,
    /// Decodes a compressed body so it can be scanned.
    decoder: Option<Decoder>,
    masker: Option<BodyMasker>,
    /// The client receives the masked body (responses with `responses = "mask"`).
    for_client: bool,
    /// Set when the body could not be decoded: nothing more of it is stored.
    broken: Option<String>,
}

impl BodyMask {
    fn new(dir: Direction) -> Self {
        Self {
            dir,
            decoder: None,
            masker: None,
            for_client: false,
            broken: None,
        }
    }

    /// A request body: it reaches the upstream as sent, only its record is masked. A
    /// compressed one is decoded whether or not it is stored: git's parsers read it, and one
    /// that does not decode is cut.
    pub fn request(req: &Classified, record: Option<&ExchangeRecording>, for_records: &Masker) -> Self {
        let mut b = Self::new(Direction::Request);
        if let Some(rec) = record {
            b.decoder = req.body_coding.map(Decoder::new);
            if rec.stores_body(Direction::Request) {
                b.masker = Some(BodyMasker::Plain(Box::new(for_records.stream())));
            }
        }
        b
    }

    /// A response body, from its head: masked for the client where the route says so (then it
    /// goes out decoded, its length unknown), else masked for the record when the record keeps
    /// it (SSE events always, one by one).
    pub fn response(
        req: &Classified,
        mask: &MaskSet,
        (for_clients, for_records): &(Masker, Masker),
        record: Option<&ExchangeRecording>,
        resp: &mut ::http::response::Parts,
    ) -> Self {
        let mut b = Self::new(Direction::Response);
        let mode = mask.responses(&req.host, &req.path);
        let ct = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let sse = ct.is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
        let has_body = !(req.method == Method::HEAD
            || resp.status.is_informational()
            || resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED);
        let decoded = decoder(&resp.headers);
        let for_client = mode == ResponseMasking::Mask && has_body && policy::is_text(ct) && decoded.is_ok();
        if for_client {
            b.masker = Some(BodyMasker::new(for_clients, sse));
            b.for_client = true;
            resp.headers.remove(header::CONTENT_LENGTH);
            if matches!(decoded, Ok(Some(_))) {
                resp.headers.remove(header::CONTENT_ENCODING);
            }
        } else if record.is_some_and(|r| sse || r.stores_body(Direction::Response)) {
            b.masker = Some(BodyMasker::new(for_records, sse));
        }
        if let Some(rec) = record {
            rec.response_head(resp);
        }
        // The body is decoded only for a stage that reads it: the masker, git's parsers (which
        // the recorder set up from the head just now).
        let parsed = record.is_some_and(|r| r.parses_git(Direction::Response));
        match decoded {
            Ok(d) if b.masker.is_some() || parsed => b.decoder = d,
            Ok(_) => {}
            Err(why) if b.masker.is_some() => {
                tracing::warn!(error = %why, "a response body in an encoding ghgate cannot decode is not recorded");
                b.broken = Some(why);
            }
            Err(_) => {}
        }
        b
    }

    /// Decodes, masks and records one chunk. A request body that turns out not to decode as
    /// its Content-Encoding says is cut (415): nothing passes that the gateway could not read.
    pub fn chunk(
        &mut self,
        record: Option<&ExchangeRecording>,
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
        if self.broken.is_some() {
            // Nothing more of this body is stored: it could not be decoded, so not masked.
            return Ok(None);
        }
        let dir = self.dir;
        let mut decoded = Vec::new();
        let mut plain: Option<&[u8]> = Some(chunk);
        if let Some(d) = self.decoder.as_mut() {
            let pushed = d
                .push(chunk, &mut decoded)
                .and_then(|()| if end { d.finish(&mut decoded) } else { Ok(()) });
            match pushed {
                Ok(()) => plain = Some(&decoded),
                Err(e) => {
                    let why = format!("cannot decode the {}: {e}", place(dir).as_str());
                    if let Some(rec) = record {
                        rec.observe_failed(dir, &why);
                    }
                    if dir == Direction::Request {
                        return Err(failed(format!(
                            "{why}; the request was cut before it was complete"
                        )));
                    }
                    if self.for_client {
                        // The client was promised an identity-encoded, masked body.
                        return Err(failed(why));
                    }
                    tracing::warn!(error = %why, "the rest of this body is not recorded");
                    self.decoder = None;
                    if self.masker.is_some() {
                        self.broken = Some(why);
                        return Ok(None);
                    }
                    plain = None;
                }
            }
        }
        if let (Some(rec), Some(plain)) = (record, plain) {
            rec.observe(dir, plain);
        }
        let Some(masker) = self.masker.as_mut() else {
            // Nothing is masked for the client, and the record keeps at most the length and
            // hash of this body (a git pack), or recording is off: it passes as it is.
            return match record {
                Some(rec) => rec.chunk(dir, chunk, Vec::new(), end).map_err(unrecorded),
                None => Ok(None),
            };
        };
        let plain = plain.expect("a body with a masker is decoded or broken");
        let mut out = Vec::with_capacity(plain.len());
        let found = masker.push(plain, end, &mut out);
        let masked = Bytes::from(out);
        if self.for_client {
            *chunk = masked.clone();
        }
        match record {
            Some(rec) => {
                let records = rec.masked_records(&found, place(dir), self.for_client);
                rec.chunk(dir, &masked, records, end).map_err(unrecorded)
            }
            None => {
                crate::mask::metrics::count(&found, place(dir).as_str());
                Ok(None)
            }
        }
    }
}

fn place(dir: Direction) -> Place {
    match dir {
        Direction::Request => Place::RequestBody,
        Direction::Response => Place::ResponseBody,
    }
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
