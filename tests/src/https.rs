//! A test upstream impersonating GitHub over TLS on loopback: its own test CA (given to the
//! gateway as `upstream_extra_roots`; clients trust only ghgate's CA), HTTP/1.1 and HTTP/2, and
//! a few endpoints the tests need. It counts the requests it served, so a test can prove that
//! nothing was forwarded.
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA of the test's own, and leaves it signs.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "ghgate test upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate into `dir` and returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("upstream-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(req: Request<Incoming>, served: Arc<AtomicUsize>) -> Result<Response<Body>, Infallible> {
    served.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    match path.as_str() {
        "/sse" => {
            // Events one by one with a pause between them: the client must see the first
            // before the last is sent.
            let n: usize = query.strip_prefix("n=").and_then(|v| v.parse().ok()).unwrap_or(3);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for i in 0..n {
                    let event = format!("data: {{\"event\":{i}}}\n\n");
                    if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            });
            let body = StreamBody::new(tokio_stream_from(rx));
            let mut r = Response::new(BodyExt::boxed(body));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(r)
        }
        _ => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Ok(text(
                StatusCode::OK,
                format!("method={method} path={path} host={host} version={version} body_bytes={body}\n"),
            ))
        }
    }
}

/// A stream over an mpsc receiver (a few lines instead of a tokio-stream dependency).
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A TLS upstream on `bind`, presenting a leaf for `names` signed by `ca`.
pub struct Upstream {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start(bind: SocketAddr, ca: &TestCa, names: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (chain, key) = ca.leaf(names);
        let mut config =
            rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(req, count.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            served,
            _runtime: runtime,
        }
    }

    /// Requests served so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}
