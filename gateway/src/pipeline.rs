//! The order in which the gateway's concerns see each exchange, in one place.
//!
//! For every request: recording admission (refuse while the store cannot write, wait while it
//! is behind) → the request is recorded as it streams up → the response is recorded as it
//! streams down → the exchange's record is written before the client sees its end → one log
//! line. Identity, policy, masking and credentials slot in here, in that order, as they arrive.
use std::sync::Arc;

use ::http::Response;
use bytes::Bytes;

use crate::{
    http::{self, ConnInfo, EndFuture, Exchange, Outcome, Phases, websocket},
    record::{Recorder, model::Direction, recorder::ExchangeRecording},
};

pub struct Pipeline {
    /// `None` when `[record] enabled = false`.
    pub recorder: Option<Arc<Recorder>>,
}

pub struct Ctx {
    record: Option<ExchangeRecording>,
}

impl Phases for Pipeline {
    type Ctx = Ctx;

    fn new_ctx(&self, ex: &Exchange) -> Ctx {
        Ctx {
            record: self.recorder.as_ref().map(|r| r.exchange(ex)),
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
        let (Some(recorder), Some(rec)) = (&self.recorder, &ctx.record) else {
            return None;
        };
        if let Some(refused) = recorder.admit(ex).await {
            return Some(refused);
        }
        // Nothing goes upstream before the store holds the request.
        rec.request_head(ex, req).await
    }

    fn request_body_filter(
        &self,
        _ex: &Exchange,
        ctx: &Ctx,
        chunk: &mut Bytes,
    ) -> Result<Option<EndFuture>, String> {
        match &ctx.record {
            Some(rec) => rec.chunk(Direction::Request, chunk),
            None => Ok(None),
        }
    }

    fn response_filter(&self, _ex: &Exchange, ctx: &Ctx, resp: &mut ::http::response::Parts) {
        if let Some(rec) = &ctx.record {
            rec.response_head(resp);
        }
    }

    fn response_body_filter(
        &self,
        _ex: &Exchange,
        ctx: &Ctx,
        chunk: &mut Bytes,
    ) -> Result<Option<EndFuture>, String> {
        match &ctx.record {
            Some(rec) => rec.chunk(Direction::Response, chunk),
            None => Ok(None),
        }
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
