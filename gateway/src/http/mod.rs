//! The HTTP phase pipeline: each request from a terminated client connection passes fixed,
//! named hooks on its way to the upstream and back, in the spirit of pingora's `ProxyHttp`.
//!
//! In order: `request_filter` (may answer the client itself) → `request_body_filter` (each
//! chunk) → `upstream_request_filter` → upstream → `response_filter` →
//! `response_body_filter` (each chunk) → `logging` (once, when the exchange ends). Every hook is
//! a no-op by default; identity, policy, masking and recording plug in here. Bodies stream: no
//! hook ever sees a whole body, and nothing here buffers one.
mod body;
mod head;
pub mod hop;
pub mod pool;
#[cfg(test)]
pub mod testing;
pub mod websocket;

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use self::{
    body::Observed,
    pool::{Key, Pool, Sender},
};
use ghgate_policy::classify::{self, Classified, GitHub};

use crate::{
    identity::Caller,
    listen::{ClientAddr, OrigDstAddr},
    record::model::{AnsweredBy, ExchangeId, SessionId},
    tls::upstream::Proto,
};

pub use self::body::{BodyError, BoxError, EndFuture};

pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Facts about one terminated client connection, shared by its exchanges.
#[derive(Debug)]
pub struct ConnInfo {
    /// Unique within this gateway run.
    pub id: u64,
    /// The caller's session (see `Caller::session_id`).
    pub session: SessionId,
    pub client: ClientAddr,
    pub orig_dst: OrigDstAddr,
    pub caller: Caller,
    pub sni: String,
    pub client_proto: Proto,
    pub upstream_proto: Option<Proto>,
    /// The TLS version the client negotiated ("TLSv1.3").
    pub client_tls: Option<String>,
}

/// One request/response exchange as the hooks see it.
#[derive(Debug)]
pub struct Exchange {
    pub id: ExchangeId,
    pub conn: Arc<ConnInfo>,
    /// What the request is, computed once before any hook runs: every stage reads this, never
    /// the raw head.
    pub req: Classified,
    /// `https://authority/path?query` of the request as it goes upstream (`Classified::url`).
    pub url: String,
    pub started: Instant,
    /// The request's head ended it: it has no body.
    pub bodyless: bool,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// Why a request body hook stopped the body: the status the client gets (the gateway answers
/// it, the upstream having seen the body fail) and the cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}")]
pub struct BodyRefusal {
    pub status: StatusCode,
    pub cause: String,
}

/// What `Phases::request_gate` decided.
pub enum Gate {
    /// Send this body upstream.
    Forward(ProxyBody),
    /// Answer the client with this; nothing goes upstream.
    Answer(Response<Bytes>),
    /// Answer the client with this, and record the exchange as refused for this reason; nothing
    /// goes upstream.
    Refuse(Response<Bytes>, String),
}

/// How an exchange ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub duration: Duration,
    /// Time to the response head.
    pub ttfb: Duration,
    pub error: Option<String>,
    /// Who answered: the upstream, or the gateway (a hook, or the gateway itself).
    pub answered_by: AnsweredBy,
}

/// Where an exchange was when it ended, with the state its stages kept up to there.
pub enum Ended<'a, P: Phases + ?Sized> {
    /// Answered before anything went upstream (a refusal, a limit, a gate's answer).
    BeforeUpstream(&'a mut P::Head),
    /// The upstream answered (or failed mid-response).
    AfterUpstream(&'a mut P::Down),
}

/// The pipeline's hooks, called by the engine in this order for every exchange: `begin` →
/// `request_filter` (may answer the client itself) → `request_gate` (may read the body first) →
/// `upstream_request` → `request_body_filter` (each chunk, as it streams up) → upstream →
/// `response_filter` → `response_body_filter` (each chunk, as it streams down) → `logging`
/// (once, when the exchange ends). Every hook but `begin` and `upstream_request` is a no-op by
/// default.
///
/// The stages' per-exchange state is owned by the exchange, never shared behind locks: `Head`
/// while the request head is decided; at the upstream request it splits into `Up`, which the
/// request body's stream owns, and `Down`, which the response side owns — the two bodies stream
/// at the same time, each with its own half.
pub trait Phases: Send + Sync + 'static {
    type Head: Send + 'static;
    type Up: Send + Unpin + 'static;
    type Down: Send + Unpin + 'static;
    /// What an upgraded (WebSocket) exchange's relay holds, shared by its two directions.
    type Upgraded: Send + Sync + 'static;

    fn begin(&self, ex: &Exchange) -> Self::Head;
    /// A client connection was terminated and will be served; before any of its exchanges.
    fn connection(&self, _conn: &ConnInfo) {}
    /// Sees the request head first; a response answers the client and skips the upstream. May
    /// wait (for an approver, or for the recorder to catch up).
    fn request_filter(
        &self,
        _ex: &Exchange,
        _head: &mut Self::Head,
        _req: &http::request::Parts,
    ) -> impl Future<Output = Option<Response<Bytes>>> + Send {
        async { None }
    }
    /// After `request_filter` let a request on, before anything of it goes upstream: a stage that
    /// must see (part of) the body before deciding (a git push's commands and pack, an API call
    /// held for approval) reads it here and either hands back the body to forward (what it read,
    /// then the rest, possibly rewritten; it fixes `Content-Length` if the length changes) or
    /// answers the client itself. Bodies pass through untouched by default.
    fn request_gate(
        &self,
        _ex: &Exchange,
        _head: &mut Self::Head,
        _req: &mut http::request::Parts,
        body: ProxyBody,
    ) -> impl Future<Output = Gate> + Send {
        async { Gate::Forward(body) }
    }
    /// The request as it will be sent upstream (headers may be changed here); the exchange's
    /// state splits into what streams up with the request body and what waits for the response.
    fn upstream_request(
        &self,
        ex: &Exchange,
        head: Self::Head,
        req: &mut http::request::Parts,
    ) -> (Self::Up, Self::Down);
    /// Each request body chunk on its way up, `end_of_stream` on the last (which may be an empty
    /// chunk the hook can fill); `Err` stops the body (the upstream sees it fail, and the client
    /// gets the refusal's status unless the upstream answered first); a returned future holds the
    /// chunk back until it completes.
    fn request_body_filter(
        &self,
        _ex: &Exchange,
        _up: &mut Self::Up,
        _chunk: &mut Bytes,
        _end_of_stream: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        Ok(None)
    }
    fn response_filter(&self, _ex: &Exchange, _down: &mut Self::Down, _resp: &mut http::response::Parts) {}
    /// Each response body chunk on its way down, `end_of_stream` on the last (which may be an
    /// empty chunk the hook can fill: a stage that held bytes back releases them there); `Err`
    /// stops the body (the client sees it fail); a returned future holds the chunk back until it
    /// completes.
    fn response_body_filter(
        &self,
        _ex: &Exchange,
        _down: &mut Self::Down,
        _chunk: &mut Bytes,
        _end_of_stream: bool,
    ) -> Result<Option<EndFuture>, BodyRefusal> {
        Ok(None)
    }
    /// For an exchange the upstream upgraded: what its relay holds (the masker for the server's
    /// text messages, what records the messages).
    fn upgraded(&self, ex: &Exchange, down: &mut Self::Down) -> Self::Upgraded;
    /// The masker the server's WebSocket text messages go through on their way to the client.
    fn websocket_masker(&self, _up: &Self::Upgraded) -> Option<crate::mask::Masker> {
        None
    }
    /// Each WebSocket message of an upgraded exchange, in either direction, as it passes.
    fn websocket_message(
        &self,
        _ex: &Exchange,
        _up: &Self::Upgraded,
        _dir: websocket::Direction,
        _msg: &websocket::Message,
    ) {
    }
    /// Once per exchange, when it has ended (the response body ended or failed, or the gateway
    /// answered). A returned future must complete before the client sees the end of the
    /// response; if it fails, the response fails.
    fn logging(&self, _ex: &Exchange, _state: Ended<'_, Self>, _outcome: &Outcome) -> Option<EndFuture> {
        None
    }
}

pub fn log_websocket_message(ex: &Exchange, dir: websocket::Direction, msg: &websocket::Message) {
    info!(exchange = ex.id.get(), direction = ?dir, kind = msg.kind(), len = msg.len, "websocket message");
}

/// The one log line of an exchange; its URL and error are masked first.
pub fn log_exchange(ex: &Exchange, o: &Outcome) {
    let url = crate::mask::for_logs(&ex.url);
    let error = o.error.as_deref().map(crate::mask::for_logs).unwrap_or_default();
    info!(
        exchange = ex.id.get(),
        tgid = ex.conn.caller.tgid,
        uid = ex.conn.caller.uid,
        comm = %ex.conn.caller.comm,
        client = %ex.conn.client,
        orig_dst = %ex.conn.orig_dst,
        sni = %ex.conn.sni,
        client_alpn = ?ex.conn.client_proto,
        upstream_alpn = ?ex.conn.upstream_proto,
        method = %ex.req.method,
        url = %url,
        status = o.status,
        answered_by = o.answered_by.as_str(),
        bytes_up = ex.bytes_up.load(Ordering::Relaxed),
        bytes_down = ex.bytes_down.load(Ordering::Relaxed),
        ttfb_ms = o.ttfb.as_millis() as u64,
        duration_ms = o.duration.as_millis() as u64,
        error = %error,
        "exchange"
    );
}

/// Limits applied to client connections (from `[http]` in the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
    pub max_requests_per_second: u32,
    pub idle_timeout: Duration,
}

impl From<&crate::config::HttpConfig> for Limits {
    fn from(c: &crate::config::HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            max_header_bytes: c.max_header_bytes,
            max_concurrent_streams: c.max_concurrent_streams,
            max_requests_per_second: c.max_requests_per_second,
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
        }
    }
}

/// What the engine needs to serve a terminated connection besides its limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// Where GitHub serves what, for the classifier.
    pub github: Arc<GitHub>,
}

/// Where a terminated connection's requests go.
pub struct UpstreamRoute {
    pub pool: Arc<Pool>,
    pub key: Key,
    /// Set when the upstream could not be reached or verified: every request gets 502 with this.
    pub failed: Option<String>,
}

struct ConnState<P> {
    info: Arc<ConnInfo>,
    route: UpstreamRoute,
    phases: Arc<P>,
    github: Arc<GitHub>,
    rate: std::sync::Mutex<crate::bucket::TokenBucket>,
    max_rps: u32,
}

/// Exchange and connection ids start from the clock, so they stay unique across gateway
/// restarts (a session, and so its records, can span several runs).
static NEXT_EXCHANGE: std::sync::LazyLock<AtomicU64> =
    std::sync::LazyLock::new(|| AtomicU64::new(clock_micros()));
static NEXT_CONNECTION: std::sync::LazyLock<AtomicU64> =
    std::sync::LazyLock::new(|| AtomicU64::new(clock_micros()));

fn clock_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

/// A new connection id, unique within this gateway run.
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
}

/// How much of each WebSocket message the pipeline is shown (its length is always counted).
const WS_PAYLOAD_CAP: usize = 1 << 20;

/// Runs a client connection until it ends, closing it gracefully once it has moved no bytes for
/// `idle` (hyper's two connection types share no trait for `graceful_shutdown`).
macro_rules! until_idle {
    ($conn:expr, $activity:expr, $idle:expr, $info:expr) => {{
        let mut conn: std::pin::Pin<Box<_>> = $conn;
        let check = ($idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = crate::listen::drain::stopping(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep(check), if !closing => {
                    if $activity.quiet_for() >= $idle {
                        info!(client = %$info.client, sni = %$info.sni, tgid = $info.caller.tgid,
                              idle_secs = $idle.as_secs(), "idle client connection closed");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }};
}

/// When a connection last moved bytes, in either direction.
#[derive(Clone)]
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            io,
            activity: self.clone(),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.since
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A response's end hook runs as its last chunk is seen, and that chunk waits for it (see
/// [`body::Observer::ends_with_last_chunk`]). The recorder relies on this to write a response's
/// last chunk with the exchange's end instead of on its own: both read this one constant.
pub const RESPONSE_ENDS_WITH_LAST_CHUNK: bool = true;

/// A connection whose reads and writes are noted in its `Activity`.
struct Tracked<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP/2 flow-control windows clients get (hyper's default is 1 MiB each). A client that
/// runs its send window down to zero must then read the WINDOW_UPDATE that reopens it, and curl
/// 7.88 (Debian 12's, so git's on such a runner) does not read its socket while its upload is
/// blocked: a `git push` of a few MiB hung for good, its last kilobyte unsent while 48 bytes (the
/// update) sat unread in its socket. A body smaller than the window never runs it down, so an
/// ordinary push is safe; a larger upload still depends on the client. The connection window is
/// also what a client may have in flight that the gateway has not forwarded yet (memory per
/// uploading connection), which is why it is not larger.
const CLIENT_STREAM_WINDOW: u32 = 4 << 20;
const CLIENT_CONNECTION_WINDOW: u32 = 8 << 20;

/// Serves HTTP on a terminated client connection until it closes.
pub fn serve<T, P>(
    client: T,
    info: ConnInfo,
    route: UpstreamRoute,
    phases: Arc<P>,
    settings: &Settings,
) -> impl Future<Output = ()> + Send + use<T, P>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Phases,
{
    let limits = &settings.limits;
    let proto = info.client_proto;
    let info = Arc::new(info);
    phases.connection(&info);
    let state = Arc::new(ConnState {
        info: info.clone(),
        route,
        phases,
        github: settings.github.clone(),
        rate: std::sync::Mutex::new(crate::bucket::TokenBucket::new(
            f64::from(limits.max_requests_per_second),
            f64::from(limits.max_requests_per_second),
        )),
        max_rps: limits.max_requests_per_second,
    });
    let activity = Activity::default();
    let idle = limits.idle_timeout;
    // Built here, not in an `async fn`: a future keeps its arguments for its whole life, so the
    // client's TLS stream sat in it twice (as the argument, and inside hyper's connection),
    // with the rest of the set-up, all copied (touched) when the connection's future is boxed.
    // hyper's connection is boxed apart: moved into the future that pins it, it would be kept
    // twice again.
    let served = match proto {
        Proto::Http1 => {
            // hyper's head timer would also time the quiet between requests (see `head`).
            let heads = Arc::new(head::Heads::default());
            let io =
                head::HeadDeadline::new(activity.track(client), heads.clone(), limits.header_read_timeout);
            let svc = service_fn(move |req: Request<Incoming>| {
                let turn = heads.parsed();
                let method = req.method().clone();
                let answer = forward(state.clone(), req);
                // Boxed: hyper keeps the slot for a request's future for the connection's whole
                // life, so an unboxed one (tens of KiB: the whole pipeline's state) would stay
                // allocated and touched on every idle keep-alive connection.
                Box::pin(async move {
                    let resp = answer.await?;
                    Ok::<_, Infallible>(turn.attach(&method, resp))
                })
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            let (conn, info) = (Box::pin(conn), info.clone());
            futures_util::future::Either::Left(async move { until_idle!(conn, activity, idle, info) })
        }
        Proto::Http2 => {
            let svc = service_fn(move |req| forward(state.clone(), req));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(limits.max_header_bytes as u32)
                .initial_stream_window_size(CLIENT_STREAM_WINDOW)
                .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
                .serve_connection(TokioIo::new(activity.track(client)), svc);
            let (conn, info) = (Box::pin(conn), info.clone());
            futures_util::future::Either::Right(async move { until_idle!(conn, activity, idle, info) })
        }
    };
    async move {
        if let Err(e) = served.await {
            // Oversized heads (431), malformed requests (400) and slow heads end up here.
            let why = if e.is_timeout() || head::HeadTimedOut::caused(&e) {
                "the client did not send a request head in time".to_string()
            } else {
                e.to_string()
            };
            warn!(client = %info.client, sni = %info.sni, tgid = info.caller.tgid, uid = info.caller.uid,
                  comm = %info.caller.comm, error = %why, "client connection closed on a protocol error or limit");
        }
    }
}

fn full(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// How much of a request body the gateway reads and drops before answering it itself, and for
/// how long. curl 7.88 (Debian 12's) loses an HTTP/2 answer that comes with a reset of the
/// stream it is still sending on (error 92, no response at all): reading a small body to its end
/// first means no reset is needed. A larger or slower body is answered anyway.
const DISCARD_LIMIT: usize = 64 << 10;
const DISCARD_TIME: Duration = Duration::from_millis(500);

/// Reads and drops the rest of a small request body (see [`DISCARD_LIMIT`]).
async fn discard_small(body: &mut Incoming) {
    let mut read = 0;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while read <= DISCARD_LIMIT {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    })
    .await;
}

/// A response the gateway made whole, as a proxy body.
fn boxed(resp: Response<Bytes>) -> Response<ProxyBody> {
    let (parts, bytes) = resp.into_parts();
    Response::from_parts(
        parts,
        Full::new(bytes).map_err(|never| match never {}).boxed_unsync(),
    )
}

/// The gateway answered an exchange itself: it is logged now (waiting for its record), its body
/// being already complete.
async fn answered_here<P: Phases>(
    phases: &P,
    ex: &Exchange,
    head: &mut P::Head,
    response: Response<ProxyBody>,
    error: Option<String>,
) -> Response<ProxyBody> {
    let elapsed = ex.started.elapsed();
    let outcome = Outcome {
        status: response.status().as_u16(),
        duration: elapsed,
        ttfb: elapsed,
        error,
        answered_by: AnsweredBy::Gateway,
    };
    if let Some(wait) = phases.logging(ex, Ended::BeforeUpstream(head), &outcome)
        && let Err(why) = wait.await
    {
        warn!(exchange = ex.id.get(), error = %why, "the gateway's own answer could not be recorded");
    }
    own_answer(ex, response)
}

/// An answer the gateway made itself, as the request gets it: a `HEAD` gets the head a `GET`
/// would, its `Content-Length` included, and no body. hyper leaves the body out over HTTP/1.1;
/// over HTTP/2 it would send it, and a client resets a HEAD's stream that carries DATA (curl:
/// "PROTOCOL_ERROR").
fn own_answer(ex: &Exchange, response: Response<ProxyBody>) -> Response<ProxyBody> {
    if ex.req.method != Method::HEAD {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
        parts.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    Response::from_parts(
        parts,
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// The request body on its way up: each chunk through `request_body_filter`, with the stages'
/// `Up` state; a refusal is kept for the answer the client gets.
struct UpObserver<P: Phases> {
    phases: Arc<P>,
    ex: Arc<Exchange>,
    up: P::Up,
    refused: Arc<std::sync::OnceLock<BodyRefusal>>,
}

impl<P: Phases> body::Observer for UpObserver<P> {
    fn chunk(&mut self, chunk: &mut Bytes, end: bool) -> Result<Option<EndFuture>, BodyError> {
        let wait = self
            .phases
            .request_body_filter(&self.ex, &mut self.up, chunk, end)
            .map_err(|refusal| {
                let cause = BodyError::Refused(refusal.cause.clone());
                let _ = self.refused.set(refusal);
                cause
            })?;
        self.ex.bytes_up.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        // The chunk waits for its record: if that fails, the chunk never goes up and the client
        // hears why (503, the recorder's cause), not the upstream's complaint about a cut stream.
        // The head has gone up by then (its record was written), so the answer says only the
        // body was held back.
        Ok(wait.map(|wait| {
            let refused = self.refused.clone();
            Box::pin(async move {
                let written = wait.await;
                if let Err(BodyError::Unrecorded(why)) = &written {
                    let _ = refused.set(BodyRefusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        cause: format!(
                            "this request's body was not forwarded (the upstream may have seen its head, \
                             then the request cut short) because its body could not be recorded: {why}"
                        ),
                    });
                }
                written
            }) as EndFuture
        }))
    }

    fn end(&mut self, _result: Result<(), BodyError>) -> Option<EndFuture> {
        None
    }
}

/// The response body on its way down: each chunk through `response_body_filter`, then
/// `logging`, with the stages' `Down` state; an HTTP/1.1 upstream connection goes back to the
/// pool once its response has ended cleanly.
struct DownObserver<P: Phases> {
    phases: Arc<P>,
    ex: Arc<Exchange>,
    down: P::Down,
    status: u16,
    ttfb: Duration,
    back: Option<(Arc<Pool>, Key, pool::Http1Sender)>,
}

impl<P: Phases> body::Observer for DownObserver<P> {
    fn chunk(&mut self, chunk: &mut Bytes, end: bool) -> Result<Option<EndFuture>, BodyError> {
        let wait = self
            .phases
            .response_body_filter(&self.ex, &mut self.down, chunk, end)
            .map_err(|refusal| BodyError::Refused(refusal.cause))?;
        self.ex
            .bytes_down
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(wait)
    }

    fn ends_with_last_chunk(&self) -> bool {
        RESPONSE_ENDS_WITH_LAST_CHUNK
    }

    fn end(&mut self, result: Result<(), BodyError>) -> Option<EndFuture> {
        if let (Ok(()), Some((pool, key, send))) = (&result, self.back.take()) {
            pool.put_back(&key, send);
        }
        self.phases.logging(
            &self.ex,
            Ended::AfterUpstream(&mut self.down),
            &Outcome {
                status: self.status,
                duration: self.ex.started.elapsed(),
                ttfb: self.ttfb,
                error: result.err().map(|e| e.to_string()),
                answered_by: AnsweredBy::Upstream,
            },
        )
    }
}

async fn forward<P: Phases>(
    state: Arc<ConnState<P>>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let websocket = classify::is_websocket(req.version(), req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    // Before any stage sees the head: what describes the client's connection goes, and what
    // is left is classified once.
    hop::strip(&mut parts.headers, websocket);
    let (classified, refused) = match classify::classify(&parts, &state.info.sni, &state.github) {
        Ok(c) => (c, None),
        Err(r) => (Classified::unclassified(&parts, &state.info.sni), Some(r)),
    };
    let url = match &refused {
        // The record of a refused request shows what it asked for.
        Some(_) => format!(
            "https://{}{}",
            parts
                .uri
                .authority()
                .map(|a| a.to_string())
                .or_else(|| parts
                    .headers
                    .get(header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()))
                .unwrap_or_else(|| state.info.sni.clone()),
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ),
        None => classified.url(),
    };
    let ex = Arc::new(Exchange {
        id: ExchangeId::new(NEXT_EXCHANGE.fetch_add(1, Ordering::Relaxed)),
        conn: state.info.clone(),
        req: classified,
        url,
        started,
        bodyless: hyper::body::Body::is_end_stream(&body),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
    });
    let phases = state.phases.clone();
    let mut head = phases.begin(&ex);
    // Answers the gateway makes itself, before anything goes upstream: boxed, as every path
    // of a request's future that a plain exchange does not take (see `serve`).
    macro_rules! answer {
        ($response:expr, $error:expr) => {
            return Ok(Box::pin(answered_here(&*phases, &ex, &mut head, $response, $error)).await)
        };
    }
    // Before the body is handed on: the rest of a small body is read first, so an HTTP/2 stream
    // is ended by the client before the answer (no reset follows it).
    macro_rules! answer_unread {
        ($response:expr, $error:expr) => {{
            let mut body = body;
            discard_small(&mut body).await;
            answer!($response, $error)
        }};
    }

    if let Some(refusal) = refused {
        warn!(exchange = ex.id.get(), client = %ex.conn.client, sni = %ex.conn.sni, tgid = ex.conn.caller.tgid,
              comm = %ex.conn.caller.comm, url = %crate::mask::for_logs(&ex.url), status = refusal.status().as_u16(),
              error = %crate::mask::for_logs(&refusal.to_string()), "request refused from its head; nothing was forwarded");
        answer_unread!(
            full(refusal.status(), format!("ghgate: {refusal}\n")),
            Some(refusal.to_string())
        );
    }
    let allowed = state.rate.lock().map(|mut r| r.take()).unwrap_or(true);
    if !allowed {
        warn!(exchange = ex.id.get(), client = %ex.conn.client, tgid = ex.conn.caller.tgid, comm = %ex.conn.caller.comm,
              limit = state.max_rps, "request rate limit exceeded on one connection");
        answer_unread!(
            full(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "ghgate: more than {} requests per second on one connection\n",
                    state.max_rps
                ),
            ),
            Some("rate limited".into())
        );
    }
    if let Some(resp) = phases.request_filter(&ex, &mut head, &parts).await {
        answer_unread!(boxed(resp), None);
    }
    if let Some(reason) = &state.route.failed {
        answer_unread!(
            full(
                StatusCode::BAD_GATEWAY,
                format!("ghgate: nothing was forwarded: {reason}\n"),
            ),
            Some(reason.clone())
        );
    }
    let body = match phases
        .request_gate(
            &ex,
            &mut head,
            &mut parts,
            body.map_err(BoxError::from).boxed_unsync(),
        )
        .await
    {
        Gate::Forward(b) => b,
        Gate::Answer(resp) => answer!(boxed(resp), None),
        Gate::Refuse(resp, why) => {
            warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), error = %crate::mask::for_logs(&why),
                  "request refused from its body; nothing was forwarded");
            answer!(boxed(resp), Some(why));
        }
    };
    let route = &state.route;
    // HTTP/1.1 clients and WebSocket handshakes use HTTP/1.1 upstream connections; HTTP/2 clients
    // share the pooled HTTP/2 connection (or HTTP/1.1 ones, translated, when that is all there is).
    let got = if websocket || state.info.client_proto == Proto::Http1 {
        route.pool.get_http1(&route.key).await
    } else {
        route.pool.get(&route.key).await
    };
    let sender = match got {
        Ok(s) => s,
        Err(e) => {
            warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), error = %e, "upstream unavailable");
            answer!(
                full(
                    StatusCode::BAD_GATEWAY,
                    format!("ghgate: nothing was forwarded: {e}\n"),
                ),
                Some(e.to_string())
            );
        }
    };
    let upstream_proto = sender.proto();
    // The request goes up as it was classified: the canonical path, the normalised host.
    let (authority, path) = (ex.req.authority(), ex.req.path_and_query());
    match upstream_proto {
        Proto::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
            if let Ok(host) = HeaderValue::from_str(&authority) {
                parts.headers.insert(header::HOST, host);
            }
        }
        Proto::Http2 => {
            parts.version = Version::HTTP_2;
            parts.uri = format!("https://{authority}{path}")
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/"));
            parts.headers.remove(header::HOST);
            // HTTP/2 allows no connection-specific headers (a WebSocket handshake relays over
            // HTTP/1.1 only).
            parts.headers.remove(header::CONNECTION);
            parts.headers.remove(header::UPGRADE);
        }
    }
    let (up, mut down) = phases.upstream_request(&ex, head, &mut parts);

    let body_refused = Arc::new(std::sync::OnceLock::<BodyRefusal>::new());
    let req_body: ProxyBody = Observed::new(
        body,
        UpObserver {
            phases: phases.clone(),
            ex: ex.clone(),
            up,
            refused: body_refused.clone(),
        },
    )
    .boxed_unsync();
    let upstream_req = Request::from_parts(parts, req_body);

    // An HTTP/1.1 connection goes back to the pool once its response has ended cleanly.
    let (sent, h1_back) = match sender {
        Sender::Http1(mut send) => match send.ready().await {
            Ok(()) => {
                let r = send.send_request(upstream_req).await;
                (r, Some(send))
            }
            Err(e) => (Err(e), None),
        },
        Sender::Http2(mut send) => match send.ready().await {
            Ok(()) => (send.send_request(upstream_req).await, None),
            Err(e) => (Err(e), None),
        },
    };
    // A failure before the response head: the exchange ends answered by the gateway, with the
    // response side's state (the request is already on its way).
    let failed_here = async |down: &mut P::Down, status: StatusCode, text: String, error: String| {
        let response = full(status, text);
        let elapsed = ex.started.elapsed();
        let outcome = Outcome {
            status: status.as_u16(),
            duration: elapsed,
            ttfb: elapsed,
            error: Some(error),
            answered_by: AnsweredBy::Gateway,
        };
        if let Some(wait) = phases.logging(&ex, Ended::AfterUpstream(down), &outcome)
            && let Err(why) = wait.await
        {
            warn!(exchange = ex.id.get(), error = %why, "the gateway's own answer could not be recorded");
        }
        own_answer(&ex, response)
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(_) if body_refused.get().is_some() => {
            let refusal = body_refused.get().expect("checked").clone();
            warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), status = refusal.status.as_u16(),
                  error = %crate::mask::for_logs(&refusal.cause), "request body refused; the upstream saw it fail");
            return Ok(Box::pin(failed_here(
                &mut down,
                refusal.status,
                format!("ghgate: {}\n", refusal.cause),
                refusal.cause,
            ))
            .await);
        }
        Err(e) => {
            warn!(exchange = ex.id.get(), url = %crate::mask::for_logs(&ex.url), error = %e, "upstream request failed");
            return Ok(Box::pin(failed_here(
                &mut down,
                StatusCode::BAD_GATEWAY,
                format!("ghgate: the upstream request failed: {e}\n"),
                e.to_string(),
            ))
            .await);
        }
    };
    let ttfb = started.elapsed();

    if let Some(client_upgrade) = client_upgrade.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS)
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let upgraded = phases.upgraded(&ex, &mut down);
        let (ws_ex, ws_phases) = (ex.clone(), phases.clone());
        // Live until the relay ends: a stop waits for it (up to `listen.drain_secs`) like for
        // the connection it came from, whose handler returns at the upgrade.
        let live = crate::listen::drain::Live::enter();
        tokio::spawn(async move {
            let _live = live;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mask_down = ws_phases.websocket_masker(&upgraded);
                    let seen = |dir, msg: &websocket::Message| {
                        ws_phases.websocket_message(&ws_ex, &upgraded, dir, msg)
                    };
                    let relayed = websocket::relay(
                        TokioIo::new(client),
                        TokioIo::new(upstream),
                        WS_PAYLOAD_CAP,
                        seen,
                        mask_down,
                    )
                    .await;
                    match relayed {
                        Ok((up, down)) => {
                            ws_ex.bytes_up.fetch_add(up, Ordering::Relaxed);
                            ws_ex.bytes_down.fetch_add(down, Ordering::Relaxed);
                        }
                        Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                    }
                }
                Err(e) => warn!(exchange = ws_ex.id.get(), error = %e, "protocol upgrade failed"),
            }
        });
    }

    let (mut rparts, rbody) = resp.into_parts();
    let upgraded = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    hop::strip(&mut rparts.headers, upgraded);
    rparts.version = client_version;
    let had_length = rparts.headers.contains_key(header::CONTENT_LENGTH);
    phases.response_filter(&ex, &mut down, &mut rparts);
    // A filter that drops the length will change the body's (masking does).
    let resized = had_length && !rparts.headers.contains_key(header::CONTENT_LENGTH);
    let back = h1_back
        .filter(|_| !upgraded)
        .map(|send| (route.pool.clone(), route.key.clone(), send));
    let observed = Observed::new(
        rbody,
        DownObserver {
            phases: phases.clone(),
            ex: ex.clone(),
            down,
            status: rparts.status.as_u16(),
            ttfb,
            back,
        },
    );
    let body: ProxyBody = if resized {
        observed.resized().boxed_unsync()
    } else {
        observed.boxed_unsync()
    };
    Ok(Response::from_parts(rparts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's own answer to a HEAD keeps its head, `Content-Length` included, and loses
    /// its body; to a GET it is left whole.
    #[tokio::test]
    async fn the_gateways_own_answer_to_a_head_has_no_body() {
        let text = "ghgate: the upstream request failed\n";
        for (method, body) in [("HEAD", ""), ("GET", text)] {
            let ex = testing::exchange(method, "api.github.com", "/", &[]);
            let answer = own_answer(&ex, full(StatusCode::BAD_GATEWAY, text.into()));
            assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
            if method == "HEAD" {
                assert_eq!(
                    answer.headers()[header::CONTENT_LENGTH],
                    text.len().to_string().as_str()
                );
            }
            let got = answer.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body.as_bytes(), "{method}");
        }
    }

    /// Phases whose request body chunks wait for a record that then fails to be written.
    struct FailingRecord;

    impl Phases for FailingRecord {
        type Head = ();
        type Up = ();
        type Down = ();
        type Upgraded = ();

        fn begin(&self, _ex: &Exchange) {}
        fn upstream_request(&self, _ex: &Exchange, _head: (), _req: &mut http::request::Parts) -> ((), ()) {
            ((), ())
        }
        fn request_body_filter(
            &self,
            _ex: &Exchange,
            _up: &mut (),
            _chunk: &mut Bytes,
            _end: bool,
        ) -> Result<Option<EndFuture>, BodyRefusal> {
            Ok(Some(Box::pin(async {
                tokio::task::yield_now().await;
                Err(BodyError::unrecorded(std::io::Error::other(
                    "the session recorder cannot write: No space left on device",
                )))
            })))
        }
        fn upgraded(&self, _ex: &Exchange, _down: &mut ()) {}
    }

    #[tokio::test]
    async fn a_request_chunk_whose_record_fails_later_is_refused_with_503_naming_the_recorder() {
        let refused = Arc::new(std::sync::OnceLock::<BodyRefusal>::new());
        let ex = Arc::new(testing::exchange(
            "POST",
            "api.github.com",
            "/repos/o/r/issues",
            &[],
        ));
        let observer = UpObserver {
            phases: Arc::new(FailingRecord),
            ex,
            up: (),
            refused: refused.clone(),
        };
        let body = Observed::new(
            Full::new(Bytes::from_static(b"{\"title\":\"x\"}")).map_err(|never| match never {}),
            observer,
        );
        let sent = body.collect().await;
        assert!(sent.is_err(), "the chunk never goes up");
        let refusal = refused.get().expect("the client is told why");
        assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refusal.cause.contains("could not be recorded")
                && refusal.cause.contains("No space left on device"),
            "{}",
            refusal.cause
        );
        // The head went up before its body (its record was written): the answer must not say
        // the request never reached the upstream.
        assert!(
            refusal.cause.starts_with("this request's body was not forwarded")
                && refusal.cause.contains("may have seen its head"),
            "{}",
            refusal.cause
        );
    }
}
