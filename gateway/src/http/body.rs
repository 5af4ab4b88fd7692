//! A body wrapper that lets the pipeline see each chunk as it passes and learn how the body
//! ended, without buffering anything.
//!
//! The end hook may hand back a future (the recorder's "written" acknowledgement): the body's
//! last frame is held until it completes, so a client never receives the end of a response whose
//! record is not yet safe. If that future fails, the body ends with an error instead.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What must complete before a body may end; `Err` names why it could not.
pub type EndFuture = Pin<Box<dyn Future<Output = Result<(), BodyError>> + Send + Sync>>;

/// Why a body stopped before its end: what the end hook hears and what the peer's stream fails
/// with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// The other side's stream failed (a reset, a protocol error); its own words.
    #[error("{0}")]
    Stream(String),
    /// The connection went away before the body's end.
    #[error("body not finished: the connection closed")]
    Closed,
    /// A stage stopped the body; the cause is what the peer may be told.
    #[error("{0}")]
    Refused(String),
    /// What the body carried could not be made safe in the record, so it is not sent.
    #[error("stopped: {0}")]
    Unrecorded(Arc<dyn std::error::Error + Send + Sync>),
}

impl BodyError {
    pub fn unrecorded(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unrecorded(Arc::new(cause))
    }
}

/// What watches a body go by. It owns whatever it needs for that (a stage's state for this one
/// body), so it sees the body through `&mut self`: no locks.
pub trait Observer: Send {
    /// Each chunk, with whether it is the body's last; `Err` stops the body there (the peer sees
    /// it fail) and names why. A returned future holds the chunk back until it completes (the
    /// recorder has written what it took from it). When the body ends without a last data chunk
    /// (trailers, or a bare end), this is called once more with an empty chunk marked last, so a
    /// stage that holds bytes back (the masker) can release them; what it puts there is sent.
    fn chunk(&mut self, data: &mut Bytes, last: bool) -> Result<Option<EndFuture>, BodyError>;
    /// Once, when the body ends (`Ok`) or fails or is dropped early (`Err`).
    fn end(&mut self, result: Result<(), BodyError>) -> Option<EndFuture>;
    /// Whether `end` runs as soon as the last chunk has been seen, before that chunk is sent,
    /// which then waits for both futures: a stage may then write the last chunk's record with
    /// the end's (the recorder does, for responses). Otherwise `end` runs once the last chunk
    /// has gone.
    fn ends_with_last_chunk(&self) -> bool {
        false
    }
}

enum End {
    /// The end hook has not run.
    Pending,
    /// The end hook's future must complete before the body ends.
    Waiting(EndFuture),
    /// The end hook has run and its future (if any) completed.
    Done,
}

pub struct Observed<B, O: Observer> {
    inner: B,
    observer: O,
    /// The observer's `end` has run.
    ended: bool,
    /// A frame (or nothing) waiting for its chunk hook's future.
    held: Option<(Option<Frame<Bytes>>, EndFuture)>,
    /// Trailers, sent after the last chunk and the end hook.
    trailers: Option<Frame<Bytes>>,
    inner_done: bool,
    /// The chunk hook has seen the last chunk.
    flushed: bool,
    end: End,
    /// Whether the inner body's size is still the size of this one (no hook changes lengths).
    same_size: bool,
}

impl<B, O: Observer> Observed<B, O> {
    pub fn new(inner: B, observer: O) -> Self {
        Self {
            inner,
            observer,
            ended: false,
            held: None,
            trailers: None,
            inner_done: false,
            flushed: false,
            end: End::Pending,
            same_size: true,
        }
    }

    /// The chunk hook changes lengths (masking): the inner body's size says nothing of this one's.
    pub fn resized(mut self) -> Self {
        self.same_size = false;
        self
    }

    fn run_end(&mut self, result: Result<(), BodyError>) -> Option<EndFuture> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        self.observer.end(result)
    }

    /// The body fails with `why`: the end hook hears of it, and nothing more is sent.
    fn fail(&mut self, why: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.run_end(Err(why.clone()));
        self.end = End::Done;
        self.held = None;
        self.trailers = None;
        Poll::Ready(Some(Err(Box::new(EndFailed(why)))))
    }

    /// Runs the chunk hook on `data`; `Ready(Some)` is a frame to send now, `Ready(None)` means
    /// nothing to send (an empty chunk, or one now held).
    fn chunk(&mut self, mut data: Bytes, last: bool) -> Result<Option<Frame<Bytes>>, BodyError> {
        if last {
            self.flushed = true;
        }
        let mut wait = self.observer.chunk(&mut data, last)?;
        if last && self.observer.ends_with_last_chunk() {
            // The body is over (the inner body has ended): the end hook runs now, and the
            // chunk waits for what both hooks wait for.
            let end = self.run_end(Ok(()));
            self.end = End::Done;
            wait = match (wait, end) {
                (Some(w), Some(e)) => Some(Box::pin(async move {
                    w.await?;
                    e.await
                })),
                (w, e) => w.or(e),
            };
        }
        let frame = (!data.is_empty()).then(|| Frame::data(data));
        match wait {
            Some(wait) => {
                self.held = Some((frame, wait));
                Ok(None)
            }
            None => Ok(frame),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EndFailed(BodyError);

impl<B, O: Observer + Unpin> Body for Observed<B, O>
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
            if let Some((_, wait)) = &mut this.held {
                let result = ready!(wait.as_mut().poll(cx));
                let (frame, _) = this.held.take().expect("held");
                match result {
                    Ok(()) => match frame {
                        Some(frame) => return Poll::Ready(Some(Ok(frame))),
                        None => continue,
                    },
                    Err(why) => return this.fail(why),
                }
            }
            match &mut this.end {
                End::Waiting(wait) => {
                    let result = ready!(wait.as_mut().poll(cx));
                    this.end = End::Done;
                    if let Err(why) = result {
                        return Poll::Ready(Some(Err(Box::new(EndFailed(why)))));
                    }
                    continue;
                }
                End::Done => return Poll::Ready(this.trailers.take().map(Ok)),
                End::Pending => {}
            }
            if this.inner_done {
                if !this.flushed {
                    match this.chunk(Bytes::new(), true) {
                        Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                        Ok(None) => continue,
                        Err(why) => return this.fail(why),
                    }
                }
                this.end = match this.run_end(Ok(())) {
                    Some(wait) => End::Waiting(wait),
                    None => End::Done,
                };
                continue;
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = this.inner.is_end_stream();
                        this.inner_done = last;
                        match this.chunk(data, last) {
                            Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                            Ok(None) => continue,
                            Err(why) => return this.fail(why),
                        }
                    }
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        this.inner_done = true;
                    }
                },
                Some(Err(e)) => {
                    // Nothing to wait for: the body failed, so the exchange is not acknowledged.
                    let _ = this.run_end(Err(BodyError::Stream(e.to_string())));
                    this.end = End::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => this.inner_done = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Until the end hook has run, the body is never reported finished: the server would
        // otherwise stop polling and the hook would never see the end.
        matches!(self.end, End::Done) && self.held.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.same_size {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

impl<B, O: Observer> Drop for Observed<B, O> {
    fn drop(&mut self) {
        // Dropped before the end: the peer went away mid-body.
        let _ = self.run_end(Err(BodyError::Closed));
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

    /// An observer made of two closures, for these tests.
    struct Hooks<C, E>(C, Option<E>);

    impl<C, E> Observer for Hooks<C, E>
    where
        C: FnMut(&mut Bytes, bool) -> Result<Option<EndFuture>, BodyError> + Send,
        E: FnOnce(Result<(), BodyError>) -> Option<EndFuture> + Send,
    {
        fn chunk(&mut self, data: &mut Bytes, last: bool) -> Result<Option<EndFuture>, BodyError> {
            (self.0)(data, last)
        }
        fn end(&mut self, result: Result<(), BodyError>) -> Option<EndFuture> {
            self.1.take().and_then(|f| f(result))
        }
    }

    type OnChunk = Box<dyn FnMut(&mut Bytes, bool) -> Result<Option<EndFuture>, BodyError> + Send>;
    type OnEnd = Box<dyn FnOnce(Result<(), BodyError>) -> Option<EndFuture> + Send>;

    fn observed<B>(inner: B, on_chunk: OnChunk, on_end: OnEnd) -> Observed<B, impl Observer + Unpin> {
        Observed::new(inner, Hooks(on_chunk, Some(on_end)))
    }

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
        let body = observed(
            chunks(&["ab", "cd"]),
            Box::new(move |c: &mut Bytes, last| {
                s.lock().unwrap().push((c.clone(), last));
                Ok(None)
            }),
            Box::new(move |r| {
                e.lock().unwrap().push(r);
                None
            }),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcd");
        // The stream could not say "last" with its last chunk: the hook hears it once more,
        // with an empty chunk it may fill.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (Bytes::from_static(b"ab"), false),
                (Bytes::from_static(b"cd"), false),
                (Bytes::new(), true)
            ]
        );
        let ended = ended.lock().unwrap();
        assert!(matches!(ended[..], [Ok(())]), "{ended:?}");
    }

    #[tokio::test]
    async fn what_the_last_call_adds_is_sent_before_the_end() {
        let body = observed(
            chunks(&["held "]),
            Box::new(|c: &mut Bytes, last| {
                if last {
                    *c = Bytes::from_static(b"released");
                }
                Ok(None)
            }),
            Box::new(|_| None),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"held released");
    }

    #[tokio::test]
    async fn the_last_frame_waits_for_the_end_future() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), BodyError>>();
        let released = Arc::new(AtomicBool::new(false));
        let body = observed(
            Full::new(Bytes::from_static(b"last")).map_err(|n| match n {}),
            Box::new(|_, _| Ok(None)),
            Box::new(move |_| {
                Some(Box::pin(async move { rx.await.unwrap_or(Err(BodyError::Closed)) }) as EndFuture)
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
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), BodyError>>();
        let mut rx = Some(rx);
        let body = observed(
            chunks(&["held", "next"]),
            Box::new(move |_, _| {
                Ok(rx.take().map(|rx| {
                    Box::pin(async move { rx.await.unwrap_or(Err(BodyError::Closed)) }) as EndFuture
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
        let body = observed(
            chunks(&["ok", "refused", "never"]),
            Box::new(|c: &mut Bytes, _| {
                if &c[..] == b"refused" {
                    Err(BodyError::Refused("store failed".into()))
                } else {
                    Ok(None)
                }
            }),
            Box::new(|_| None),
        );
        let err = body.collect().await.expect_err("the body must fail");
        assert!(err.to_string().contains("store failed"), "{err}");
    }

    /// Hooks that ask for the end with the last chunk (the recorder's responses).
    struct EndsWithLast(Hooks<OnChunk, OnEnd>);

    impl Observer for EndsWithLast {
        fn chunk(&mut self, data: &mut Bytes, last: bool) -> Result<Option<EndFuture>, BodyError> {
            self.0.chunk(data, last)
        }
        fn end(&mut self, result: Result<(), BodyError>) -> Option<EndFuture> {
            self.0.end(result)
        }
        fn ends_with_last_chunk(&self) -> bool {
            true
        }
    }

    /// With `ends_with_last_chunk`, the end hook runs as the last chunk is seen, and that chunk
    /// is not sent before the end's future (a write of the chunk's record and the exchange's)
    /// completes; earlier chunks pass as before, and a failed end fails the body before its last
    /// chunk is sent.
    #[tokio::test]
    async fn the_last_chunk_waits_for_an_end_that_runs_with_it() {
        for fails in [false, true] {
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let ended = Arc::new(AtomicBool::new(false));
            let e = ended.clone();
            let mut body = Observed::new(
                Full::new(Bytes::from_static(b"whole")).map_err(|n| match n {}),
                EndsWithLast(Hooks(
                    Box::new(|_: &mut Bytes, _: bool| Ok(None)) as OnChunk,
                    Some(Box::new(move |r: Result<(), BodyError>| {
                        assert!(r.is_ok());
                        e.store(true, Ordering::SeqCst);
                        Some(Box::pin(async move {
                            let _ = released.await;
                            if fails {
                                Err(BodyError::unrecorded(std::io::Error::other("disk full")))
                            } else {
                                Ok(())
                            }
                        }) as EndFuture)
                    }) as OnEnd),
                )),
            );
            let pending = tokio::time::timeout(std::time::Duration::from_millis(100), body.frame()).await;
            assert!(pending.is_err(), "the last chunk went before its end was written");
            assert!(
                ended.load(Ordering::SeqCst),
                "the end hook ran with the last chunk"
            );
            release.send(()).unwrap();
            let frame = body.frame().await.expect("a frame or an error");
            if fails {
                assert!(
                    frame
                        .expect_err("the body fails")
                        .to_string()
                        .contains("disk full")
                );
            } else {
                let data = frame.unwrap().into_data().unwrap();
                assert_eq!(&data[..], b"whole");
                assert!(body.frame().await.is_none());
                assert!(body.is_end_stream());
            }
        }

        // Several chunks: only the last waits, the end runs once.
        let count = Arc::new(Mutex::new(0));
        let c = count.clone();
        let body = Observed::new(
            chunks(&["ab", "cd"]),
            EndsWithLast(Hooks(
                Box::new(|_: &mut Bytes, _: bool| Ok(None)) as OnChunk,
                Some(Box::new(move |_| {
                    *c.lock().unwrap() += 1;
                    None
                }) as OnEnd),
            )),
        );
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcd");
        assert_eq!(*count.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_failed_end_future_fails_the_body() {
        let body = observed(
            Full::new(Bytes::from_static(b"x")).map_err(|n| match n {}),
            Box::new(|_, _| Ok(None)),
            Box::new(|_| {
                Some(
                    Box::pin(async { Err(BodyError::unrecorded(std::io::Error::other("disk full"))) })
                        as EndFuture,
                )
            }),
        );
        let err = body.collect().await.expect_err("the body must fail");
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[tokio::test]
    async fn the_end_hook_hears_why_a_body_stopped() {
        // Dropped mid-body: the peer went away.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut body = observed(
            chunks(&["one", "two"]),
            Box::new(|_, _| Ok(None)),
            Box::new(move |r| {
                tx.send(r).unwrap();
                None
            }),
        );
        assert!(body.frame().await.is_some());
        drop(body);
        assert!(matches!(rx.try_recv(), Ok(Err(BodyError::Closed))));

        // The inner stream failed: its own words, and the peer's body fails too.
        let (tx, rx) = std::sync::mpsc::channel();
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err("stream reset by peer".into()),
        ];
        let body = observed(
            StreamBody::new(futures_util::stream::iter(frames)),
            Box::new(|_, _| Ok(None)),
            Box::new(move |r| {
                tx.send(r).unwrap();
                None
            }),
        );
        assert!(body.collect().await.is_err());
        match rx.try_recv() {
            Ok(Err(BodyError::Stream(why))) => assert_eq!(why, "stream reset by peer"),
            other => panic!("the end hook heard {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_empty_body_still_reports_its_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        let body = observed(
            Full::new(Bytes::new()).map_err(|n| match n {}),
            Box::new(|_, _| Ok(None)),
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
