//! The HTTP/1.1 request-head deadline: a client must send a whole request head within
//! `header_read_timeout` of the head's first byte (slowloris). The quiet time before a request on
//! a keep-alive connection is not a head being read: `idle_timeout` governs it (`until_idle!`).
//!
//! hyper's own `header_read_timeout` (1.12) starts as soon as a connection waits for its next
//! head, so it closed every keep-alive connection that stayed quiet for longer than the head
//! timeout (30 s shipped), long before the idle timeout (300 s). It is off, and this replaces
//! it: the connection's IO ([`HeadDeadline`]) starts the deadline at the first byte it reads
//! while no request is in flight, and fails the read with [`HeadTimedOut`] once the deadline
//! passes before hyper has handed that head to the service. The service counts the heads it
//! gets ([`Heads::parsed`]) and the answers that ended ([`Answer`], dropped with the response
//! body), so request and response bodies are never timed, nor is an upgraded connection.
//!
//! A client that pipelines part of its next head while a response is still streaming has that
//! part go untimed until its next byte; its connection is still closed once idle.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The request heads of one HTTP/1.1 connection: how many the service got, how many answers
/// have ended, and whether the connection became something else (an upgrade).
#[derive(Default)]
pub(super) struct Heads {
    parsed: AtomicU64,
    answered: AtomicU64,
    upgraded: AtomicBool,
}

impl Heads {
    /// hyper handed the service a whole head. The returned guard ends the request's turn when
    /// it is dropped: with the response body once that is sent, or with the exchange if it
    /// never gets that far.
    pub(super) fn parsed(self: &Arc<Self>) -> Answer {
        self.parsed.fetch_add(1, Ordering::AcqRel);
        Answer(self.clone())
    }

    fn in_flight(&self) -> bool {
        self.parsed.load(Ordering::Acquire) != self.answered.load(Ordering::Acquire)
    }
}

/// One request's turn on the connection (see [`Heads::parsed`]).
pub(super) struct Answer(Arc<Heads>);

impl Answer {
    /// The response goes out carrying the turn; a response that switches the connection to
    /// another protocol ends head timing on it for good.
    pub(super) fn attach<B>(self, method: &Method, resp: Response<B>) -> Response<Answered<B>> {
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success()) {
            self.0.upgraded.store(true, Ordering::Release);
        }
        resp.map(|body| Answered { body, _turn: self })
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
    }
}

/// A response body that ends its request's turn when hyper drops it (sent, or abandoned).
pub(super) struct Answered<B> {
    body: B,
    _turn: Answer,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Answered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a connection's read failed: a request head was still incomplete at its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the client did not send a whole request head within {0:?} of its first byte")]
pub(super) struct HeadTimedOut(Duration);

impl HeadTimedOut {
    /// Whether hyper ended a connection because of this deadline.
    pub(super) fn caused(e: &hyper::Error) -> bool {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.is::<HeadTimedOut>() {
                return true;
            }
            if let Some(io) = s.downcast_ref::<io::Error>()
                && io.get_ref().is_some_and(|inner| inner.is::<HeadTimedOut>())
            {
                return true;
            }
            source = s.source();
        }
        false
    }
}

/// A client connection whose request heads must each arrive within `timeout` of their first
/// byte (see the module doc).
pub(super) struct HeadDeadline<T> {
    io: T,
    heads: Arc<Heads>,
    timeout: Duration,
    /// The head being timed, by the `parsed` count it will bump when hyper hands it over.
    timing: Option<u64>,
    /// Kept across heads so a keep-alive connection allocates it once.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> HeadDeadline<T> {
    pub(super) fn new(io: T, heads: Arc<Heads>, timeout: Duration) -> Self {
        Self {
            io,
            heads,
            timeout,
            timing: None,
            deadline: None,
        }
    }

    fn start(&mut self, parsed: u64) {
        let at = Instant::now() + self.timeout;
        match &mut self.deadline {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.timing = Some(parsed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.heads.upgraded.load(Ordering::Acquire) {
            this.timing = None;
            return r;
        }
        let parsed = this.heads.parsed.load(Ordering::Acquire);
        if this.timing.is_some_and(|t| t != parsed) {
            // The head being timed reached the service.
            this.timing = None;
        }
        match &r {
            Poll::Ready(Ok(()))
                if buf.filled().len() > before && this.timing.is_none() && !this.heads.in_flight() =>
            {
                this.start(parsed);
            }
            Poll::Pending if this.timing.is_some() => {
                if let Some(d) = &mut this.deadline {
                    ready!(d.as_mut().poll(cx));
                    this.timing = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        HeadTimedOut(this.timeout),
                    )));
                }
            }
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};

    /// A hyper client on a keep-alive connection, quiet for longer than the head deadline between
    /// requests: the second request is answered (the quiet is not a head being read).
    #[tokio::test]
    async fn a_keep_alive_connection_quiet_past_the_head_deadline_is_still_served() {
        let (client, server) = tokio::io::duplex(64 << 10);
        let heads = Arc::new(Heads::default());
        let io = HeadDeadline::new(server, heads.clone(), Duration::from_millis(200));
        let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
            let turn = heads.parsed();
            async move {
                let resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                Ok::<_, std::convert::Infallible>(turn.attach(&Method::GET, resp))
            }
        });
        let served = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(io), svc),
        );
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..3 {
            send.ready().await.unwrap();
            let req = hyper::Request::get("/x")
                .header("host", "api.github.com")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert!(
                !served.is_finished(),
                "closed after request {i}: {:?}",
                served.await
            );
        }
    }
}
