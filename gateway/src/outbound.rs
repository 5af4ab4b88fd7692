//! The gateway's own HTTPS requests (OIDC discovery and keys, GitHub App tokens): one request
//! per connection, HTTP/1.1, verified with the same roots as upstream TLS.
//!
//! Plain http is refused except to loopback addresses (test issuers). This module never follows
//! redirects, never disables verification, and never puts a URL's credentials into an error.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    resolve::Resolver,
    tls::upstream::{Proto, UpstreamError, UpstreamTls},
};

/// The largest response body read; a larger one is an error, not a truncation.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{url} is not a usable URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("refusing plain http to {url}: use https (plain http is allowed to loopback addresses only)")]
    PlainHttp { url: String },
    #[error("cannot resolve the host of {url}: {reason}")]
    Resolve { url: String, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("TLS with {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url} did not answer within {timeout:?} (stopped while {phase})")]
    Timeout {
        url: String,
        timeout: Duration,
        phase: &'static str,
    },
    #[error("request to {url} failed while {phase}: {reason}")]
    Http {
        url: String,
        phase: &'static str,
        reason: String,
    },
    #[error("the response from {url} is larger than {limit} bytes")]
    BodyTooLarge { url: String, limit: usize },
}

/// A complete response: status, headers and the whole body (at most [`MAX_BODY`] bytes).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTPS client for the gateway's own requests. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tls: Arc<UpstreamTls>,
    resolver: Arc<Resolver>,
    timeout: Duration,
}

/// Where a request is, for a timeout's message.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Resolving,
    Connecting,
    Sending,
    ReadingStatus,
    ReadingBody,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Resolving,
        Phase::Connecting,
        Phase::Sending,
        Phase::ReadingStatus,
        Phase::ReadingBody,
    ];

    fn describe(self) -> &'static str {
        match self {
            Phase::Resolving => "resolving the host",
            Phase::Connecting => "connecting",
            Phase::Sending => "sending the request",
            Phase::ReadingStatus => "reading the response status",
            Phase::ReadingBody => "reading the response body",
        }
    }
}

/// The parts of a URL a request needs.
struct Target {
    https: bool,
    /// As in the URL, without IPv6 brackets: the TLS server name.
    host: String,
    port: u16,
    /// The Host header: host and any explicit port, never userinfo.
    authority: String,
    path_and_query: String,
}

impl Outbound {
    /// `timeout` bounds a whole request: resolving, connecting, and reading the full response.
    pub fn new(tls: UpstreamTls, resolver: Arc<Resolver>, timeout: Duration) -> Self {
        Self {
            tls: Arc::new(tls),
            resolver,
            timeout,
        }
    }

    /// The resolver its names go through (`[dns]`, overrides included).
    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }

    /// One request; follows no redirects. `Err` names the URL (with any userinfo/query secrets
    /// masked via crate::mask::for_logs) and what failed (resolve, connect, TLS, timeout, status read).
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, String)],
        body: Option<Bytes>,
    ) -> Result<Response, OutboundError> {
        let shown = display_url(url);
        let target = parse(url).map_err(|reason| OutboundError::InvalidUrl {
            url: shown.clone(),
            reason,
        })?;
        let request =
            build_request(method, &target, headers, body).map_err(|reason| OutboundError::InvalidUrl {
                url: shown.clone(),
                reason,
            })?;
        let phase = AtomicU8::new(Phase::Resolving as u8);
        match tokio::time::timeout(self.timeout, self.run(&target, request, &shown, &phase)).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout {
                url: shown,
                timeout: self.timeout,
                phase: Phase::ALL[usize::from(phase.load(Ordering::Relaxed))].describe(),
            }),
        }
    }

    async fn run(
        &self,
        target: &Target,
        request: http::Request<Full<Bytes>>,
        shown: &str,
        phase: &AtomicU8,
    ) -> Result<Response, OutboundError> {
        let addrs = self.addresses(target, shown).await?;
        phase.store(Phase::Connecting as u8, Ordering::Relaxed);
        let mut failures = Vec::new();
        let mut tls_failed = false;
        for ip in addrs {
            let addr = SocketAddr::new(ip, target.port);
            if target.https {
                // Whatever is left of the overall deadline; the outer timeout cuts it anyway.
                match self
                    .tls
                    .connect(addr, &target.host, &[Proto::Http1], self.timeout)
                    .await
                {
                    Ok((stream, _)) => return exchange(stream, request, shown, phase).await,
                    Err(e) => {
                        tls_failed |= matches!(
                            e,
                            UpstreamError::Certificate { .. } | UpstreamError::Handshake { .. }
                        );
                        failures.push(crate::mask::for_logs(&e.to_string()));
                    }
                }
            } else {
                match crate::redirect::exempt::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return exchange(stream, request, shown, phase).await;
                    }
                    Err(e) => failures.push(format!("cannot connect to {addr}: {e}")),
                }
            }
        }
        let reason = failures.join("; ");
        let url = shown.to_owned();
        Err(if tls_failed {
            OutboundError::Tls { url, reason }
        } else {
            OutboundError::Connect { url, reason }
        })
    }

    /// The addresses to try, in order; plain http only when every one is loopback.
    async fn addresses(&self, target: &Target, shown: &str) -> Result<Vec<IpAddr>, OutboundError> {
        let addrs =
            match target.host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    let (addrs, _ttl) = self.resolver.lookup(&target.host).await.map_err(|reason| {
                        OutboundError::Resolve {
                            url: shown.to_owned(),
                            reason: format!("{}: {reason}", target.host),
                        }
                    })?;
                    addrs
                }
            };
        if addrs.is_empty() {
            return Err(OutboundError::Resolve {
                url: shown.to_owned(),
                reason: format!("{} has no addresses", target.host),
            });
        }
        if !target.https && !addrs.iter().all(IpAddr::is_loopback) {
            return Err(OutboundError::PlainHttp {
                url: shown.to_owned(),
            });
        }
        Ok(addrs)
    }
}

/// Sends `request` on `stream` and reads the whole response.
async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    shown: &str,
    phase: &AtomicU8,
) -> Result<Response, OutboundError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |phase: Phase, e: &dyn std::fmt::Display| OutboundError::Http {
        url: shown.to_owned(),
        phase: phase.describe(),
        reason: crate::mask::for_logs(&e.to_string()),
    };
    phase.store(Phase::Sending as u8, Ordering::Relaxed);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(Phase::Sending, &e))?;
    // Aborted when this request ends (or is dropped at the deadline): no task outlives it.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    phase.store(Phase::ReadingStatus as u8, Ordering::Relaxed);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(Phase::ReadingStatus, &e))?;
    phase.store(Phase::ReadingBody as u8, Ordering::Relaxed);
    let (parts, mut body) = response.into_parts();
    let too_large = || OutboundError::BodyTooLarge {
        url: shown.to_owned(),
        limit: MAX_BODY,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failed(Phase::ReadingBody, &e))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body: buf.freeze(),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(other) => return Err(format!("the scheme {other:?} is not supported (use https)")),
        None => return Err("an absolute https:// URL is needed".into()),
    };
    let authority = uri.authority().ok_or("the URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported (send them in a header)".into());
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(Target {
        https,
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: authority.as_str().to_owned(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned(),
    })
}

fn build_request(
    method: Method,
    target: &Target,
    headers: &[(HeaderName, String)],
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut request = http::Request::new(Full::new(body.unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = target
        .path_and_query
        .parse()
        .map_err(|e| format!("bad path: {e}"))?;
    let map = request.headers_mut();
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
        map.append(name.clone(), value);
    }
    if !map.contains_key(header::HOST) {
        let host = HeaderValue::from_str(&target.authority).map_err(|e| format!("bad host: {e}"))?;
        map.insert(header::HOST, host);
    }
    if !map.contains_key(header::USER_AGENT) {
        // GitHub's API refuses requests without one.
        map.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("ghgate/", env!("CARGO_PKG_VERSION"))),
        );
    }
    Ok(request)
}

/// `url` as an error may show it: userinfo replaced, secrets masked.
fn display_url(url: &str) -> String {
    let without_userinfo = match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    crate::mask::for_logs(&without_userinfo)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{convert::Infallible, future::Future, path::PathBuf};

    use http_body_util::{StreamBody, combinators::BoxBody};
    use hyper::body::{Frame, Incoming};

    use super::*;
    use crate::config::DnsConfig;

    pub(crate) type TestBody = BoxBody<Bytes, Infallible>;

    pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> http::Response<TestBody> {
        let mut r = http::Response::new(Full::new(body.into()).boxed());
        *r.status_mut() = status;
        r
    }

    /// Serves `handler` on a random loopback port, over TLS when `tls` is given; until the test's
    /// runtime ends.
    pub(crate) async fn serve<F, Fut>(tls: Option<rustls::ServerConfig>, handler: F) -> SocketAddr
    where
        F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = http::Response<TestBody>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        addr
    }

    use ghgate_test_support::https::TestCa;

    const NAME: &str = "keys.example.test";

    pub(crate) fn outbound(ca_pem: Option<&str>, timeout: Duration) -> Outbound {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<PathBuf> = ca_pem
            .map(|pem| {
                let path = dir.path().join("ca.pem");
                std::fs::write(&path, pem).unwrap();
                path
            })
            .into_iter()
            .collect();
        let tls = UpstreamTls::new(&extra).unwrap();
        let dns = DnsConfig {
            overrides: [(NAME.to_owned(), vec![IpAddr::from([127, 0, 0, 1])])].into(),
            ..DnsConfig::default()
        };
        Outbound::new(tls, Arc::new(Resolver::new(&dns, &[]).unwrap()), timeout)
    }

    /// Echoes the method, a header and the body; `/big` streams more than the cap without a
    /// Content-Length, `/big-declared` declares it.
    async fn echo(req: http::Request<Incoming>) -> http::Response<TestBody> {
        match req.uri().path() {
            "/big" => {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let chunks = (MAX_BODY / chunk.len()) + 1;
                let stream = futures_util::stream::iter(
                    (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
                );
                http::Response::new(StreamBody::new(stream).boxed())
            }
            "/big-declared" => full(StatusCode::OK, vec![b'x'; MAX_BODY + 1]),
            "/exact" => full(StatusCode::OK, vec![b'x'; MAX_BODY]),
            _ => {
                let method = req.method().to_string();
                let hello = req
                    .headers()
                    .get("x-hello")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let ua = req.headers()[header::USER_AGENT].to_str().unwrap().to_owned();
                let path = req.uri().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut r = full(
                    StatusCode::CREATED,
                    format!(
                        "{method} {path} hello={hello} ua={ua} body={}",
                        String::from_utf8_lossy(&body)
                    ),
                );
                r.headers_mut()
                    .insert("x-served-by", HeaderValue::from_static("test"));
                r
            }
        }
    }

    async fn tls_server() -> (TestCa, SocketAddr) {
        let ca = TestCa::new();
        let addr = serve(Some(ca.server_config(&[NAME])), echo).await;
        (ca, addr)
    }

    #[tokio::test]
    async fn https_request_reads_status_headers_and_body() {
        let (ca, addr) = tls_server().await;
        let out = outbound(Some(ca.pem()), Duration::from_secs(10));
        let url = format!("https://{NAME}:{}/echo?x=1", addr.port());
        let r = out
            .request(
                Method::POST,
                &url,
                &[(HeaderName::from_static("x-hello"), "world".into())],
                Some(Bytes::from_static(b"payload")),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["x-served-by"], "test");
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(
            body.starts_with("POST /echo?x=1 hello=world ua=ghgate/"),
            "{body}"
        );
        assert!(body.ends_with("body=payload"), "{body}");
    }

    #[tokio::test]
    async fn body_over_the_cap_is_an_error_and_at_the_cap_is_read() {
        let (ca, addr) = tls_server().await;
        let out = outbound(Some(ca.pem()), Duration::from_secs(30));
        let base = format!("https://{NAME}:{}", addr.port());
        let exact = out
            .request(Method::GET, &format!("{base}/exact"), &[], None)
            .await
            .unwrap();
        assert_eq!(exact.body.len(), MAX_BODY);
        for path in ["/big", "/big-declared"] {
            let err = out
                .request(Method::GET, &format!("{base}{path}"), &[], None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, OutboundError::BodyTooLarge { limit: MAX_BODY, .. }),
                "{path}: {err}"
            );
            assert!(err.to_string().contains(&format!("{base}{path}")), "{err}");
        }
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_tls_error() {
        let (_ca, addr) = tls_server().await;
        // The system's roots only: the test CA is not among them.
        let out = outbound(None, Duration::from_secs(10));
        let url = format!("https://{NAME}:{}/", addr.port());
        let err = out.request(Method::GET, &url, &[], None).await.unwrap_err();
        assert!(matches!(err, OutboundError::Tls { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains("unknown issuer"), "{msg}");
    }

    #[tokio::test]
    async fn unreachable_address_is_a_connect_error_naming_the_url() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = outbound(None, Duration::from_secs(10));
        let url = format!("https://{NAME}:{port}/keys");
        let err = out.request(Method::GET, &url, &[], None).await.unwrap_err();
        assert!(matches!(err, OutboundError::Connect { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&url) && msg.contains(&format!("127.0.0.1:{port}")),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn unresolvable_name_is_a_resolve_error() {
        let out = outbound(None, Duration::from_secs(10));
        let dns = DnsConfig {
            overrides: [("nowhere.test".to_owned(), vec![])].into(),
            ..DnsConfig::default()
        };
        let out = Outbound {
            resolver: Arc::new(Resolver::new(&dns, &[]).unwrap()),
            ..out
        };
        let err = out
            .request(Method::GET, "https://nowhere.test/x", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Resolve { .. }), "{err}");
        assert!(err.to_string().contains("https://nowhere.test/x"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_the_phase() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds connections without ever answering.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let out = outbound(None, Duration::from_millis(300));
        let url = format!("http://127.0.0.1:{port}/slow");
        let err = out.request(Method::GET, &url, &[], None).await.unwrap_err();
        assert!(
            matches!(
                err,
                OutboundError::Timeout {
                    phase: "reading the response status",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[tokio::test]
    async fn plain_http_only_to_loopback() {
        let addr = serve(None, echo).await;
        let out = outbound(None, Duration::from_secs(10));
        let r = out
            .request(Method::GET, &format!("http://{addr}/plain"), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let err = out
            .request(Method::GET, "http://192.0.2.1/keys", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::PlainHttp { .. }), "{err}");
        assert!(err.to_string().contains("http://192.0.2.1/keys"), "{err}");
        let err = out
            .request(Method::GET, "ftp://127.0.0.1/keys", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::InvalidUrl { .. }), "{err}");
    }

    #[tokio::test]
    async fn errors_never_show_url_credentials() {
        let out = outbound(None, Duration::from_secs(10));
        let err = out
            .request(
                Method::GET,
                "https://alice:hunter2@keys.example.test/x",
                &[],
                None,
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, OutboundError::InvalidUrl { .. }), "{msg}");
        assert!(
            !msg.contains("hunter2") && msg.contains("https://***@keys.example.test/x"),
            "{msg}"
        );

        // A token in the query of a URL that cannot be reached.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let token = format!("npm_{}", "a1B2c3D4".repeat(4) + "e5F6");
        let url = format!("https://{NAME}:{port}/keys?token={token}");
        let err = out.request(Method::GET, &url, &[], None).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, OutboundError::Connect { .. }), "{msg}");
        assert!(
            !msg.contains(&token) && msg.contains("/keys?token=[MASKED:npm-token:"),
            "{msg}"
        );
    }
}
