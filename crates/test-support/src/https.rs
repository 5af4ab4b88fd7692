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
        let params = Self::params();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn params() -> CertificateParams {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "ghgate test upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
    }

    /// The CA kept in `dir` (`upstream-ca.pem` and its key `upstream-ca.key`), made there first
    /// if missing: a test upstream that outlives a reboot keeps the CA the gateway was told to
    /// trust. Returns the CA and its certificate's path.
    pub fn load_or_create(dir: &Path) -> std::io::Result<(Self, PathBuf)> {
        let (cert_path, key_path) = (dir.join("upstream-ca.pem"), dir.join("upstream-ca.key"));
        if let (Ok(pem), Ok(key)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            let key = KeyPair::from_pem(&key).map_err(std::io::Error::other)?;
            let ca = Self {
                pem,
                issuer: Issuer::new(Self::params(), key),
            };
            return Ok((ca, cert_path));
        }
        let key = KeyPair::generate().map_err(std::io::Error::other)?;
        let params = Self::params();
        let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        {
            use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_path)?;
            file.write_all(key.serialize_pem().as_bytes())?;
        }
        std::fs::write(&cert_path, cert.pem())?;
        let ca = Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, cert_path))
    }

    /// Writes the CA certificate into `dir` and returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("upstream-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A TLS server configuration presenting a leaf for `names` signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let (chain, key) = self.leaf(names);
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a fresh leaf")
    }

    pub(crate) fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
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

/// GitHub's side of credential brokering, as the test upstream plays it: the GitHub App
/// installation-token endpoint (checking the app JWT with the app's public key) and, for every
/// other request, only tokens it minted (or was told to accept) get through.
pub struct Auth {
    pub app_id: u64,
    pub installation_id: u64,
    /// The app's public key (PEM), to check the app JWTs the gateway signs.
    pub app_public_pem: String,
    /// Tokens accepted besides the minted ones (a static profile's).
    pub accepted: Vec<String>,
    /// Every token minted: (token, repositories asked for, permissions asked for).
    pub minted: std::sync::Mutex<Vec<(String, serde_json::Value, serde_json::Value)>>,
    /// Every Authorization header refused, for the no-leak checks.
    pub refused: AtomicUsize,
    /// Every installation token request, minted or refused.
    pub mint_requests: AtomicUsize,
    /// The installation's repositories, when not all: a token asked for another is refused
    /// (422), as GitHub refuses it.
    pub installed: std::sync::Mutex<Option<Vec<String>>>,
}

impl Auth {
    pub fn new(
        app_id: u64,
        installation_id: u64,
        app_public_pem: String,
        accepted: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            app_id,
            installation_id,
            app_public_pem,
            accepted,
            minted: std::sync::Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
            mint_requests: AtomicUsize::new(0),
            installed: std::sync::Mutex::new(None),
        })
    }

    /// The tokens minted so far.
    pub fn tokens(&self) -> Vec<String> {
        self.minted.lock().unwrap().iter().map(|m| m.0.clone()).collect()
    }

    /// The credential of an Authorization header: a bearer/token value or a basic password.
    fn credential(value: &str) -> Option<String> {
        use base64::Engine as _;
        let (scheme, rest) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            return text.split_once(':').map(|(_, p)| p.to_owned());
        }
        Some(rest.trim().to_owned())
    }

    fn allows(&self, req: &Request<Incoming>) -> bool {
        let Some(cred) = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(Self::credential)
        else {
            return false;
        };
        self.accepted.contains(&cred) || self.minted.lock().unwrap().iter().any(|m| m.0 == cred)
    }

    /// `POST /app/installations/<id>/access_tokens`, as GitHub answers it.
    async fn mint(&self, req: Request<Incoming>) -> Response<Body> {
        self.mint_requests.fetch_add(1, Ordering::SeqCst);
        let jwt = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let Some(jwt) = jwt else {
            return text(
                StatusCode::UNAUTHORIZED,
                "{\"message\":\"A JSON web token could not be decoded\"}".into(),
            );
        };
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(self.app_public_pem.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims = ["exp", "iat", "iss"].iter().map(|s| s.to_string()).collect();
        validation.validate_aud = false;
        let claims = match jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation) {
            Ok(d) => d.claims,
            Err(e) => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    format!("{{\"message\":\"bad app JWT: {e}\"}}"),
                );
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap_or(0),
            claims["exp"].as_u64().unwrap_or(0),
        );
        if claims["iss"] != serde_json::json!(self.app_id.to_string())
            || iat > now + 60
            || exp > iat + 660
            || exp < now
        {
            return text(
                StatusCode::UNAUTHORIZED,
                format!("{{\"message\":\"app JWT claims refused: {claims}\"}}"),
            );
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(installed) = &*self.installed.lock().unwrap()
            && let Some(names) = asked["repositories"].as_array()
            && names.iter().any(|n| {
                !installed
                    .iter()
                    .any(|i| n.as_str().is_some_and(|n| n.eq_ignore_ascii_case(i)))
            })
        {
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "{\"message\":\"There is at least one repository that does not exist or is not accessible to the parent installation.\",\"status\":\"422\"}".into(),
            );
        }
        let token = format!("ghs_{:032x}{:04}", rand_u128(), self.minted.lock().unwrap().len());
        self.minted.lock().unwrap().push((
            token.clone(),
            asked["repositories"].clone(),
            asked["permissions"].clone(),
        ));
        let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let expires = expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let mut r = text(
            StatusCode::CREATED,
            serde_json::json!({"token": token, "expires_at": expires, "permissions": asked["permissions"]})
                .to_string(),
        );
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }
}

/// 128 bits from the OS, for minted tokens.
fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    u128::from_le_bytes(b)
}

/// As a real edge answers: a `HEAD` gets the head a `GET` would, with no body (hyper leaves
/// that out over HTTP/1.1 itself, not over HTTP/2, where DATA on a HEAD's stream is an error).
async fn handle(
    req: Request<Incoming>,
    served: Arc<AtomicUsize>,
    git_root: Option<Arc<PathBuf>>,
    auth: Option<Arc<Auth>>,
) -> Result<Response<Body>, Infallible> {
    let head = req.method() == http::Method::HEAD;
    let resp = answer(req, served, git_root, auth).await?;
    if !head {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
        parts.headers.insert(http::header::CONTENT_LENGTH, len.into());
    }
    Ok(Response::from_parts(parts, Full::new(Bytes::new()).boxed()))
}

async fn answer(
    req: Request<Incoming>,
    served: Arc<AtomicUsize>,
    git_root: Option<Arc<PathBuf>>,
    auth: Option<Arc<Auth>>,
) -> Result<Response<Body>, Infallible> {
    served.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    if let Some(auth) = &auth {
        let mint_path = format!("/app/installations/{}/access_tokens", auth.installation_id);
        if path == mint_path && req.method() == http::Method::POST {
            return Ok(auth.mint(req).await);
        }
        if !auth.allows(&req) {
            auth.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(text(StatusCode::UNAUTHORIZED, "Bad credentials\n".into()));
        }
    }
    // Owner and repository names are read ignoring case, as GitHub reads them.
    if let Some(root) = git_root
        .as_ref()
        .filter(|_| path.to_ascii_lowercase().contains(".git/"))
    {
        return Ok(git_http_backend(req, root).await);
    }
    if let Some(root) = git_root.as_ref()
        && let Some(resp) = git_api(&path, root).await
    {
        return Ok(resp);
    }
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
    // Which credential scheme arrived (never the credential itself).
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map_or("none".to_owned(), |v| {
            v.split(' ').next().unwrap_or_default().to_owned()
        });
    // `hold_ms=N` on any path: the answer waits N ms, as a slow API's would.
    if let Some(ms) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("hold_ms="))
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.ends_with("/completion") {
        return Ok(completion(&query, Shape::Chat));
    }
    // Legacy completions, as the Copilot language server asks for inline code
    // (`/v1/engines/<engine>/completions`): `choices[].text` events.
    if path.ends_with("/completions") {
        return Ok(completion(&query, Shape::Legacy));
    }
    match path.as_str() {
        "/ws" => Ok(websocket_echo(req)),
        "/gzip-json" => {
            // {"text": TEXT}, gzip-encoded, with its Content-Length: a compressed API answer.
            let text = query_text(&query);
            let json = serde_json::json!({ "text": text }).to_string();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut gz, json.as_bytes()).unwrap();
            let body = gz.finish().unwrap();
            let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            Ok(r)
        }
        "/bytes" => {
            // n bytes, streamed in 64 KiB chunks: never held whole.
            let mut left: u64 = query.strip_prefix("n=").and_then(|v| v.parse().ok()).unwrap_or(0);
            let chunk = Bytes::from(vec![b'g'; 64 * 1024]);
            let stream = futures_util::stream::poll_fn(move |_| {
                if left == 0 {
                    return std::task::Poll::Ready(None);
                }
                let n = left.min(chunk.len() as u64) as usize;
                left -= n as u64;
                std::task::Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(chunk.slice(..n)))))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))))
        }
        "/sink" => {
            // Counts the request body without keeping it.
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                    Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("body failed: {e}\n"))),
                }
            }
            Ok(text(StatusCode::OK, format!("received={total}\n")))
        }
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
                format!(
                    "method={method} path={path} host={host} version={version} body_bytes={body} authorization={authorization}\n"
                ),
            ))
        }
    }
}

/// The `text` query parameter, hex-encoded (so any text survives a URL).
fn query_text(query: &str) -> String {
    let hex = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("text="))
        .unwrap_or_default();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An OpenAI-style streamed chat completion whose text (`text`, hex) arrives in `pieces` events,
/// 50 ms apart, then a finishing event and `[DONE]`: what Copilot's completions look like.
/// The event shapes a fake completion streams in.
#[derive(Clone, Copy)]
enum Shape {
    /// OpenAI chat completion chunks (`choices[].delta.content`).
    Chat,
    /// Legacy completions (`choices[].text`), as Copilot's inline completions stream them.
    Legacy,
}

fn completion(query: &str, shape: Shape) -> Response<Body> {
    let text = query_text(query);
    let pieces: usize = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pieces="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(pieces).max(1);
    let mut events = Vec::new();
    match shape {
        Shape::Chat => {
            events.push(
                serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
            );
            for piece in chars.chunks(per) {
                let piece: String = piece.iter().collect();
                events.push(
                    serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
                );
            }
            events.push(
                serde_json::json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            );
        }
        Shape::Legacy => {
            for piece in chars.chunks(per) {
                let piece: String = piece.iter().collect();
                events.push(
                    serde_json::json!({"id": "cmpl-test", "created": 1_765_000_000, "model": "copilot-codex",
                    "choices": [{"text": piece, "index": 0, "finish_reason": null, "logprobs": null}]}),
                );
            }
            events.push(
                serde_json::json!({"id": "cmpl-test", "created": 1_765_000_000, "model": "copilot-codex",
                "choices": [{"text": "", "index": 0, "finish_reason": "stop", "logprobs": null}]}),
            );
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let mut lines: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        lines.push("data: [DONE]\n\n".into());
        for line in lines {
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// A stream over an mpsc receiver (a few lines instead of a tokio-stream dependency).
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Accepts a WebSocket upgrade and echoes every text or binary message, prefixed with `echo: `.
fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n".into());
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use futures_util::{SinkExt as _, StreamExt as _};
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                tungstenite::Message::Text(t) => tungstenite::Message::text(format!("echo: {t}")),
                tungstenite::Message::Binary(b) => tungstenite::Message::binary(b),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    resp
}

/// The parts of GitHub's REST API that read a repository's objects, answered from the served
/// repositories by real git: `GET /repos/{o}/{r}` (its default branch),
/// `/repos/{o}/{r}/compare/{base}...{head}` (with the merge base),
/// `/repos/{o}/{r}/git/commits/{sha}`, `/git/trees/{sha}`, `/git/tags/{sha}` and
/// `/git/ref/{ref}`; `None` for other paths.
async fn git_api(path: &str, root: &Path) -> Option<Response<Body>> {
    let rest = path.strip_prefix("/repos/")?;
    let mut parts = rest.splitn(4, '/');
    let (owner, name) = (parts.next()?, parts.next()?);
    let (kind, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let repo = root.join(owner).join(format!("{name}.git"));
    if !repo.is_dir() {
        return Some(not_found());
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let json = |v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
        r.headers_mut()
            .insert("content-type", "application/json; charset=utf-8".parse().unwrap());
        r
    };
    let exists = |sha: &str, kind: &str| git(&["cat-file", "-t", sha]).is_some_and(|t| t == kind);
    let resp = match kind {
        "" => {
            let head = git(&["symbolic-ref", "--short", "HEAD"])?;
            json(serde_json::json!({ "full_name": format!("{owner}/{name}"), "default_branch": head }))
        }
        "compare" => {
            let (base, head) = arg.split_once("...")?;
            if !exists(base, "commit") || !exists(head, "commit") {
                return Some(not_found());
            }
            let counts = git(&["rev-list", "--left-right", "--count", &format!("{base}...{head}")])?;
            let mut n = counts.split_whitespace().map(|c| c.parse::<u64>().unwrap_or(0));
            let (behind, ahead) = (n.next()?, n.next()?);
            let status = match (ahead, behind) {
                (0, 0) => "identical",
                (_, 0) => "ahead",
                (0, _) => "behind",
                _ => "diverged",
            };
            let base_commit = git(&["merge-base", base, head]).map(|sha| serde_json::json!({ "sha": sha }));
            json(
                serde_json::json!({ "status": status, "ahead_by": ahead, "behind_by": behind,
                                     "merge_base_commit": base_commit }),
            )
        }
        "git" => {
            let (what, sha) = arg.split_once('/')?;
            match what {
                "commits" if exists(sha, "commit") => {
                    let tree = git(&["rev-parse", &format!("{sha}^{{tree}}")])?;
                    let parents = git(&["rev-parse", &format!("{sha}^@")]).unwrap_or_default();
                    let parents: Vec<_> = parents
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(|p| serde_json::json!({ "sha": p }))
                        .collect();
                    json(serde_json::json!({ "sha": sha, "tree": { "sha": tree }, "parents": parents }))
                }
                "trees" if exists(sha, "tree") => {
                    // GitHub writes a subtree's mode as 040000.
                    let entries: Vec<_> = git(&["ls-tree", sha])?
                        .lines()
                        .filter_map(|l| {
                            let (meta, path) = l.split_once('\t')?;
                            let mut m = meta.split(' ');
                            let (mode, kind, sha) = (m.next()?, m.next()?, m.next()?);
                            let mode = if mode == "40000" { "040000" } else { mode };
                            Some(serde_json::json!({ "path": path, "mode": mode, "type": kind, "sha": sha }))
                        })
                        .collect();
                    json(serde_json::json!({ "sha": sha, "tree": entries, "truncated": false }))
                }
                "ref" => match git(&["rev-parse", "--verify", "-q", &format!("refs/{sha}")]) {
                    Some(id) => {
                        let kind = git(&["cat-file", "-t", &id])?;
                        json(
                            serde_json::json!({ "ref": format!("refs/{sha}"), "object": { "sha": id, "type": kind } }),
                        )
                    }
                    None => not_found(),
                },
                "tags" if exists(sha, "tag") => {
                    let raw = git(&["cat-file", "tag", sha])?;
                    let field = |name: &str| {
                        raw.lines()
                            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
                            .map(str::to_owned)
                    };
                    json(serde_json::json!({ "sha": sha, "tag": field("tag")?,
                                             "object": { "sha": field("object")?, "type": field("type")? } }))
                }
                _ => not_found(),
            }
        }
        _ => return None,
    };
    Some(resp)
}

fn not_found() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(br#"{"message":"Not Found"}"#)).boxed());
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// Runs the real `git http-backend` as a CGI program for a smart-HTTP request.
async fn git_http_backend(req: Request<Incoming>, root: &Path) -> Response<Body> {
    use tokio::io::AsyncWriteExt as _;
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = match tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path().to_ascii_lowercase())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run git http-backend: {e}"),
            );
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = child.wait_with_output().await;
    let _ = writer.await;
    let Ok(out) = out else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend failed".into(),
        );
    };
    // CGI output: headers, a blank line, the body.
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else {
        return text(StatusCode::BAD_GATEWAY, "malformed CGI output".into());
    };
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(&out.stdout[at + sep..])).boxed());
    for line in String::from_utf8_lossy(&out.stdout[..at]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            if let Some(code) = v.split_whitespace().next().and_then(|c| c.parse().ok()) {
                *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            }
        } else if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(k.as_bytes()), v.parse()) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// A TLS upstream on `bind`, presenting a leaf for `names` signed by `ca`.
pub struct Upstream {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    /// A plain upstream on `bind`: HTTP/2 and HTTP/1.1, answering every request itself.
    pub fn start(bind: SocketAddr, ca: &TestCa, names: &[&str]) -> Self {
        Self::builder(ca, names).bind(bind).start()
    }

    /// An upstream presenting a leaf for `names` signed by `ca`, on a random loopback port
    /// unless [`UpstreamBuilder::bind`] says otherwise.
    pub fn builder<'a>(ca: &'a TestCa, names: &[&str]) -> UpstreamBuilder<'a> {
        UpstreamBuilder {
            ca,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            bind: SocketAddr::new(crate::loopback_v4().into(), 0),
            git_root: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            auth: None,
            edge: None,
        }
    }

    fn start_full(b: UpstreamBuilder<'_>) -> Self {
        let UpstreamBuilder {
            ca,
            names,
            bind,
            git_root,
            alpn,
            auth,
            edge,
        } = b;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let git_root = git_root.map(Arc::new);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (chain, key) = ca.leaf(&names);
        let mut config =
            rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        config.alpn_protocols = alpn;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (count, conns) = (served.clone(), connections.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                // As real servers do: without it, a streamed event written after the response head
                // waits for the client's delayed ACK (~40 ms), and so would every time-to-first-byte.
                let _ = tcp.set_nodelay(true);
                let (acceptor, count, git_root, auth, edge) = (
                    acceptor.clone(),
                    count.clone(),
                    git_root.clone(),
                    auth.clone(),
                    edge.clone(),
                );
                let conns = conns.clone();
                tokio::spawn(async move {
                    if let Some(edge) = &edge {
                        let first = first_bytes(&tcp).await;
                        (edge.on_accept)(peer, &first);
                        if let Some((name, hold)) = &edge.hold
                            && crate::edge::sni_of(&first).as_deref() == Some(name.as_str())
                        {
                            tokio::time::sleep(*hold).await;
                        }
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let svc = hyper::service::service_fn(move |req| {
                        let (count, git_root, auth) = (count.clone(), git_root.clone(), auth.clone());
                        let by_host = edge.is_some();
                        async move {
                            if by_host && let Some(resp) = edge_answer(&req, addr, git_root.is_some()) {
                                count.fetch_add(1, Ordering::SeqCst);
                                return Ok(resp);
                            }
                            handle(req, count, git_root, auth).await
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            served,
            connections,
            _runtime: runtime,
        }
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// How an [`Upstream`] is set up: `Upstream::builder(&ca, &["api.github.com"]).git(root).start()`.
pub struct UpstreamBuilder<'a> {
    ca: &'a TestCa,
    names: Vec<String>,
    bind: SocketAddr,
    git_root: Option<PathBuf>,
    alpn: Vec<Vec<u8>>,
    auth: Option<Arc<Auth>>,
    edge: Option<EdgeRole>,
}

impl UpstreamBuilder<'_> {
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Also serves `<root>/<owner>/<repo>.git` over smart HTTP with `git http-backend`: the git
    /// server.
    pub fn git(mut self, root: Option<PathBuf>) -> Self {
        self.git_root = root;
        self
    }

    /// Speaks only these ALPN protocols (e.g. only `http/1.1`).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Also plays GitHub's side of credential brokering (see [`Auth`]).
    pub fn auth(mut self, auth: Option<Arc<Auth>>) -> Self {
        self.auth = auth;
        self
    }

    /// Plays one address of GitHub's edge (see [`EdgeRole`]).
    pub fn edge(mut self, role: EdgeRole) -> Self {
        self.edge = Some(role);
        self
    }

    pub fn start(self) -> Upstream {
        Upstream::start_full(self)
    }
}

/// What an upstream does when it plays one address of GitHub's edge: it reports every TCP
/// connection it accepts, and answers by `Host` as the edge does.
#[derive(Clone)]
pub struct EdgeRole {
    /// Called for every accepted TCP connection, before TLS, with its peer and the first bytes
    /// it sent (peeked, so the handshake still reads them; empty when nothing came within 2 s).
    pub on_accept: OnAccept,
    /// A connection whose hello names this server name waits this long, silent, before its
    /// handshake (an upstream slow to answer one name); others are answered at once.
    pub hold: Option<(String, Duration)>,
}

/// What an edge upstream calls for each accepted connection: its peer and its first bytes.
pub type OnAccept = Arc<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

/// The bytes a new connection sent first, without consuming them: whatever arrived within 2 s.
async fn first_bytes(tcp: &tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    match tokio::time::timeout(Duration::from_secs(2), tcp.peek(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// The edge's answer by `Host`: `api.github.com` (and `pinned.github.test`, the name tests put
/// on the passthrough list) gets JSON naming the edge address that served it; `github.com` and `codeload.github.com` fall through to the git server (when there is one,
/// else 404); any other host gets 421, as GitHub's edge answers a name it does not serve.
fn edge_answer(req: &Request<Incoming>, served_by: SocketAddr, git: bool) -> Option<Response<Body>> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let name = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(n, _)| n)
        .to_ascii_lowercase();
    let path = req.uri().path().to_owned();
    match name.as_str() {
        "api.github.com" | "pinned.github.test" => {
            let body = serde_json::json!({
                "edge": served_by.to_string(),
                "host": host,
                "path": path,
                "current_user_url": "https://api.github.com/user",
            });
            let mut r = text(StatusCode::OK, body.to_string());
            r.headers_mut()
                .insert("content-type", "application/json; charset=utf-8".parse().unwrap());
            Some(r)
        }
        "github.com" | "codeload.github.com" if git => None,
        "github.com" | "codeload.github.com" => Some(not_found()),
        _ => Some(text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("edge {served_by} does not serve {host:?}\n"),
        )),
    }
}
