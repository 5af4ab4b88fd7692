//! A body wrapper that lets the pipeline see each chunk as it passes and learn how the body
//! ended, without buffering anything.
//!
//! The end hook may hand back a future (the recorder's "written" acknowledgement): the body's
//! last frame is held until it completes, so a client never receives the end of a response whose
//! record is not yet safe. If that future fails, the body ends with an error instead.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Sees each chunk; `Err` stops the body there (the peer sees it fail) and names why. A returned
/// future holds the chunk back until it completes (the recorder has written what it took from it).
pub type ChunkHook = Box<dyn FnMut(&mut Bytes) -> Result<Option<EndFuture>, String> + Send + Sync>;
/// What must complete before a body may end; `Err` names why it could not.
pub type EndFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + Sync>>;
/// Called once, when the body ends (`Ok`) or fails or is dropped early (`Err`).
pub type EndHook = Box<dyn FnOnce(Result<(), String>) -> Option<EndFuture> + Send + Sync>;

enum State {
    Streaming,
    /// A chunk waits for its hook's future before it is passed on.
    HoldingChunk(Option<Frame<Bytes>>, EndFuture),
    /// The inner body has ended; its last frame (if any) waits for the end hook's future.
    Holding(Option<Frame<Bytes>>, EndFuture),
    /// The end hook has run and its future (if any) completed.
    Ended,
}

pub struct Observed<B> {
    inner: B,
    on_chunk: ChunkHook,
    on_end: Option<EndHook>,
    state: State,
}

impl<B> Observed<B> {
    pub fn new(inner: B, on_chunk: ChunkHook, on_end: EndHook) -> Self {
        Self {
            inner,
            on_chunk,
            on_end: Some(on_end),
            state: State::Streaming,
        }
    }

    fn end(&mut self, result: Result<(), String>) -> Option<EndFuture> {
        self.on_end.take().and_then(|f| f(result))
    }

    /// The inner body ended cleanly with `last` as its final frame (or none).
    fn finish(&mut self, last: Option<Frame<Bytes>>) -> Option<Frame<Bytes>> {
        match self.end(Ok(())) {
            Some(wait) => {
                self.state = State::Holding(last, wait);
                None
            }
            None => {
                self.state = State::Ended;
                last
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EndFailed(String);

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::HoldingChunk(chunk, wait) => {
                    let result = ready!(wait.as_mut().poll(cx));
                    let chunk = chunk.take();
                    match result {
                        Ok(()) => {
                            this.state = State::Streaming;
                            let Some(frame) = chunk else { continue };
                            if !this.inner.is_end_stream() {
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            match this.finish(Some(frame)) {
                                Some(frame) => return Poll::Ready(Some(Ok(frame))),
                                None => continue,
                            }
                        }
                        Err(why) => {
                            let _ = this.end(Err(why.clone()));
                            this.state = State::Ended;
                            return Poll::Ready(Some(Err(Box::new(EndFailed(why)))));
                        }
                    }
                }
                State::Holding(last, wait) => {
                    let result = ready!(wait.as_mut().poll(cx));
                    let last = last.take();
                    this.state = State::Ended;
                    return Poll::Ready(match result {
                        Ok(()) => last.map(Ok),
                        Err(why) => Some(Err(Box::new(EndFailed(why)))),
                    });
                }
                State::Ended => return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into),
                State::Streaming => {}
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let frame = match frame.into_data() {
                        Ok(mut data) => match (this.on_chunk)(&mut data) {
                            Ok(None) => Frame::data(data),
                            Ok(Some(wait)) => {
                                this.state = State::HoldingChunk(Some(Frame::data(data)), wait);
                                continue;
                            }
                            Err(why) => {
                                let _ = this.end(Err(why.clone()));
                                this.state = State::Ended;
                                return Poll::Ready(Some(Err(Box::new(EndFailed(why)))));
                            }
                        },
                        Err(other) => other,
                    };
                    if !this.inner.is_end_stream() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    match this.finish(Some(frame)) {
                        Some(frame) => return Poll::Ready(Some(Ok(frame))),
                        None => continue,
                    }
                }
                Some(Err(e)) => {
                    // Nothing to wait for: the body failed, so the exchange is not acknowledged.
                    let _ = this.end(Err(e.to_string()));
                    this.state = State::Ended;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => match this.finish(None) {
                    Some(_) => unreachable!("finish(None) never returns a frame"),
                    None if matches!(this.state, State::Holding(..)) => continue,
                    None => return Poll::Ready(None),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Until the end hook has run, the body is never reported finished: the server would
        // otherwise stop polling and the hook would never see the end.
        matches!(self.state, State::Ended) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Dropped before the end: the peer went away mid-body.
        let _ = self.end(Err("body not finished: the connection closed".into()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn every_chunk_is_seen_and_the_end_reported_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (seen.clone(), ended.clone());
        let body = Observed::new(
            chunks(&["ab", "cd"]),
            Box::new(move |c: &mut Bytes| {
                s.lock().unwrap().push(c.clone());
                Ok(None)
            }),
            Box::new(move |r| {
                e.lock().unwrap().push(r);
                None
            }),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(*ended.lock().unwrap(), vec![Ok(())]);
    }

    #[tokio::test]
    async fn the_last_frame_waits_for_the_end_future() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let released = Arc::new(AtomicBool::new(false));
        let body = Observed::new(
            Full::new(Bytes::from_static(b"last")).map_err(|n| match n {}),
            Box::new(|_| Ok(None)),
            Box::new(move |_| {
                Some(Box::pin(async move { rx.await.unwrap_or(Err("dropped".into())) }) as EndFuture)
            }),
        );
        let r = released.clone();
        let reader = tokio::spawn(async move {
            let bytes = body.collect().await.map(|c| c.to_bytes());
            r.store(true, Ordering::SeqCst);
            bytes
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !released.load(Ordering::SeqCst),
            "the body ended before its record was written"
        );
        tx.send(Ok(())).unwrap();
        assert_eq!(&reader.await.unwrap().unwrap()[..], b"last");
    }

    #[tokio::test]
    async fn a_chunk_waits_for_its_hooks_future() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let mut rx = Some(rx);
        let body = Observed::new(
            chunks(&["held", "next"]),
            Box::new(move |_| {
                Ok(rx.take().map(|rx| {
                    Box::pin(async move { rx.await.unwrap_or(Err("dropped".into())) }) as EndFuture
                }))
            }),
            Box::new(|_| None),
        );
        let mut body = Box::pin(body);
        let first = tokio::time::timeout(std::time::Duration::from_millis(50), body.frame()).await;
        assert!(first.is_err(), "the chunk passed before its record was written");
        tx.send(Ok(())).unwrap();
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"heldnext");
    }

    #[tokio::test]
    async fn a_failing_chunk_hook_stops_the_body() {
        let body = Observed::new(
            chunks(&["ok", "refused", "never"]),
            Box::new(|c: &mut Bytes| {
                if &c[..] == b"refused" {
                    Err("store failed".into())
                } else {
                    Ok(None)
                }
            }),
            Box::new(|_| None),
        );
        let err = body.collect().await.expect_err("the body must fail");
        assert!(err.to_string().contains("store failed"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_end_future_fails_the_body() {
        let body = Observed::new(
            Full::new(Bytes::from_static(b"x")).map_err(|n| match n {}),
            Box::new(|_| Ok(None)),
            Box::new(|_| Some(Box::pin(async { Err("disk full".to_string()) }) as EndFuture)),
        );
        let err = body.collect().await.expect_err("the body must fail");
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_body_still_reports_its_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        let body = Observed::new(
            Full::new(Bytes::new()).map_err(|n| match n {}),
            Box::new(|_| Ok(None)),
            Box::new(move |r| {
                assert!(r.is_ok());
                e.store(true, Ordering::SeqCst);
                None
            }),
        );
        assert!(!body.is_end_stream());
        let _ = body.collect().await.unwrap();
        assert!(ended.load(Ordering::SeqCst));
    }
}
