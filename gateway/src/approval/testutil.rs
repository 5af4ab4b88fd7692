//! Test fixtures: a real webhook receiver (hyper, loopback, random port) that records what it
//! gets and can fail or hold requests, a hyper-based `Poster`, HTTP/1.1 calls to the control
//! API over Unix and TLS streams, and a recorder of steps.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ApprovalSpec, Approvals, ApproverGroup, Operation, Poster, Requester, Step, StepHook};

/// What the receiver got: headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    /// Set to true to let held requests be answered.
    pub release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A webhook receiver on 127.0.0.1:0 that answers 500 to its first `fail_first` requests and
/// 204 after; with `hold`, each request waits (recorded already) until `release` is set.
pub async fn receiver(fail_first: usize, hold: bool) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (release, released) = tokio::sync::watch::channel(!hold);
    let seen = Arc::new(AtomicUsize::new(0));
    let got2 = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (got, seen, released) = (got2.clone(), seen.clone(), released.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (got, seen, mut released) = (got.clone(), seen.clone(), released.clone());
                    async move {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                        got.lock().unwrap().push(Received { headers, body });
                        let _ = released.wait_for(|r| *r).await;
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let status = if n < fail_first {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        };
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Receiver {
        url: format!("http://{addr}/hooks/SECRETPATH"),
        got,
        release,
        task,
    }
}

/// A plain-HTTP `Poster` with hyper: one connection per request.
pub struct HyperPoster;

impl Poster for HyperPoster {
    fn post<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [(String, String)],
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<u16, crate::http::BoxError>> + Send + 'a>> {
        Box::pin(async move {
            let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
            let authority = uri.authority().ok_or("no host")?.to_string();
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut req = Request::post(uri.path()).header("host", authority);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let response = sender
                .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
                .await
                .map_err(|e| e.to_string())?;
            Ok(response.status().as_u16())
        })
    }
}

/// One HTTP/1.1 request over `stream`; the status and the JSON answer.
pub async fn request<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

pub async fn over_unix(socket: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    request(stream, method, path, &[], body).await
}

/// A TLS client trusting only `cert` (DER), for "localhost".
pub async fn over_tls(
    addr: SocketAddr,
    cert: &[u8],
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.to_vec()))
        .unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(tls, method, path, &headers, body).await
}

/// Every step emitted, in order.
#[derive(Clone, Default)]
pub struct Steps(pub Arc<Mutex<Vec<(String, Step)>>>);

impl Steps {
    pub fn hook(&self) -> StepHook {
        let steps = self.0.clone();
        Arc::new(move |a, s| steps.lock().unwrap().push((a.id.clone(), s.clone())))
    }

    pub fn of(&self, id: &str) -> Vec<Step> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Waits (up to 10 s) for a step of `id` that `pred` accepts.
    pub async fn wait_for(&self, id: &str, pred: impl Fn(&Step) -> bool) -> Step {
        for _ in 0..1000 {
            if let Some(s) = self.of(id).into_iter().find(&pred) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no such step for {id}; steps: {:?}", self.of(id));
    }
}

pub type Groups = Arc<RwLock<BTreeMap<String, ApproverGroup>>>;

/// Approvals in `dir` with one group, "maintainers", of the given members.
pub fn open(dir: &Path, users: &[&str], uids: &[u32]) -> (Arc<Approvals>, Groups, Steps) {
    let groups: Groups = Arc::new(RwLock::new(BTreeMap::from([(
        "maintainers".to_owned(),
        ApproverGroup {
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            uids: uids.to_vec(),
        },
    )])));
    let steps = Steps::default();
    let approvals = Approvals::open(dir, groups.clone(), steps.hook()).unwrap();
    (approvals, groups, steps)
}

/// This process's uid (the peer uid the control socket will see).
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

pub fn push(new: &str) -> Operation {
    Operation::GitRef {
        repository: "github.com/acme/app".into(),
        ref_name: "refs/heads/main".into(),
        old: "1111111111111111111111111111111111111111".into(),
        new: new.repeat(40 / new.len()),
    }
}

pub fn bob() -> Requester {
    Requester {
        uid: 4242,
        user: Some("bob".into()),
        exe: Some("/usr/bin/git".into()),
        session: "s1".into(),
        oidc_subject: None,
        ci_repository: Some("acme/app".into()),
        login: crate::identity::Login::default(),
    }
}

pub fn spec(approvals: u32, expires: Duration) -> ApprovalSpec {
    ApprovalSpec {
        group: "maintainers".into(),
        approvals,
        expires,
        hold: None,
    }
}

/// This process's login uid and session, as the control socket will read them.
pub fn my_login() -> crate::identity::Login {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/self/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&id| id != u32::MAX)
    };
    crate::identity::Login {
        uid: read("loginuid"),
        session: read("sessionid"),
    }
}
