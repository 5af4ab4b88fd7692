//! The control API approvers decide through: one HTTP/1.1 JSON router served on the Unix socket
//! `<state_dir>/control.sock` (the approver is the socket peer's uid, login uid and login
//! session, from the kernel) and, when configured, on an HTTPS listener (the approver is named
//! by a configured bearer token, or by an OIDC ID token of a configured issuer).
//!
//! Routes: `GET /v1/approvals[?all=1]`, `GET /v1/approvals/{id}`,
//! `POST /v1/approvals/{id}/approve` and `POST /v1/approvals/{id}/deny` with an optional JSON
//! body `{"reason": "…"}`. Errors are `{"error": "…"}`.
//!
//! Must never take an approver's identity from anything the client says (only the kernel's peer
//! credentials, a configured token or a verified ID token), never let root that is nobody in
//! particular decide on the socket unless configured to, never show an approval to someone who is neither an
//! approver, root, nor its requester, and never log or echo a bearer token.
use std::{
    convert::Infallible,
    fs, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::{
    net::{TcpListener, UnixListener},
    task::JoinHandle,
};

use super::{
    ApprovalError, Approvals, Approver, OidcIdentity,
    config::{ApproverOidcConfig, HttpControlConfig},
};
use crate::identity::oidc::OidcValidator;

/// The socket's name in the state directory.
pub const SOCKET_FILE: &str = "control.sock";

const MAX_BODY: usize = 16 * 1024;
const MAX_REASON: usize = 2000;
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another gateway already serves approvals on {}: stop it first", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket: move it away", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot listen on {addr} for approvers: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("approvals.http: {0}")]
    Tls(String),
}

/// Serves the control API on a Unix socket at `path` (mode 0666: anyone may connect, the peer's
/// uid and login decide what they may do). A stale socket is replaced; a live one is an error.
/// `allow_root`: whether root with no other user's login behind it may decide.
pub async fn serve_unix(
    approvals: Arc<Approvals>,
    path: &Path,
    allow_root: bool,
) -> Result<JoinHandle<()>, ControlError> {
    let io_err = |what| {
        move |source| ControlError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(io_err("cannot remove the stale socket"))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot inspect")(e)),
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("cannot create the directory of"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("cannot listen on"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(io_err("cannot chmod"))?;
    tracing::info!(socket = %path.display(), "approvals control socket listening");
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let accepted_at = super::now_micros();
            let approvals = approvals.clone();
            tokio::spawn(async move {
                let (uid, login) = match crate::identity::peer_login(&stream, accepted_at) {
                    Ok(peer) => peer,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: no peer credentials; closing");
                        return;
                    }
                };
                let who = Approver::socket(uid, login);
                let service = service_fn(move |req| {
                    let approvals = approvals.clone();
                    let who = who.clone();
                    async move { Ok::<_, Infallible>(route(&approvals, &who, req, allow_root).await) }
                });
                if let Err(e) = http1().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "control socket: connection ended with an error");
                }
            });
        }
    }))
}

/// Serves the control API over HTTPS on `config.listen`; approvers authenticate with
/// `Authorization: Bearer <token>`: a configured token, or an ID token that `oidc` (built from
/// `config.oidc`'s issuers) verifies. Returns the bound address (the port may be 0 in config).
pub async fn serve_tls(
    approvals: Arc<Approvals>,
    config: &HttpControlConfig,
    oidc: Option<Arc<OidcValidator>>,
) -> Result<(SocketAddr, JoinHandle<()>), ControlError> {
    let oidc: Option<Arc<(Arc<OidcValidator>, ApproverOidcConfig)>> = match (oidc, &config.oidc) {
        (Some(v), Some(c)) => Some(Arc::new((v, c.clone()))),
        (None, None) => None,
        _ => {
            return Err(ControlError::Tls(
                "[approvals.http.oidc] and the OIDC validator go together".into(),
            ));
        }
    };
    let tokens: Arc<Vec<Token>> = Arc::new(
        config
            .tokens
            .iter()
            .map(|t| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut hash).map_err(|_| {
                    ControlError::Tls(format!("the token hash of {:?} is not 64 hex digits", t.name))
                })?;
                Ok(Token {
                    name: t.name.clone(),
                    hash,
                    user: t.user.clone(),
                })
            })
            .collect::<Result<_, ControlError>>()?,
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(config)?));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ControlError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ControlError::Listen {
        addr: config.listen,
        source,
    })?;
    tracing::info!(%addr, "approvals control listening (HTTPS)");
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "approvals control: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (approvals, tokens, acceptor, oidc) =
                (approvals.clone(), tokens.clone(), acceptor.clone(), oidc.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "approvals control: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let (approvals, tokens, oidc) = (approvals.clone(), tokens.clone(), oidc.clone());
                    async move {
                        let oidc = oidc.as_deref().map(|(v, c)| (&**v, c));
                        let response = match authenticate(&tokens, oidc, req.headers()).await {
                            Ok(who) => route(&approvals, &who, req, true).await,
                            Err(why) => {
                                tracing::warn!(%peer, why = %why, "approvals control: refused a bearer token");
                                let mut r = error(StatusCode::UNAUTHORIZED, &why);
                                r.headers_mut().insert(
                                    header::WWW_AUTHENTICATE,
                                    http::HeaderValue::from_static("Bearer"),
                                );
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                if let Err(e) = http1().serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "approvals control: connection ended with an error");
                }
            });
        }
    });
    Ok((addr, task))
}

fn server_tls(config: &HttpControlConfig) -> Result<rustls::ServerConfig, ControlError> {
    let cert_pem = fs::read(&config.tls_cert_file).map_err(|source| ControlError::Io {
        what: "cannot read",
        path: config.tls_cert_file.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ControlError::Tls(format!("{}: {e}", config.tls_cert_file.display())))?;
    if certs.is_empty() {
        return Err(ControlError::Tls(format!(
            "{}: no PEM certificate in it",
            config.tls_cert_file.display()
        )));
    }
    let key_pem =
        crate::keyfile::read_private(&config.tls_key_file).map_err(|e| ControlError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ControlError::Tls(format!(
            "{}: no usable PEM private key: {e}",
            config.tls_key_file.display()
        ))
    })?;
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ControlError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ControlError::Tls(format!("the certificate and key do not make a server: {e}")))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The approver whose token the request bears: a configured token's name (every configured hash
/// is compared, in constant time, whatever matched), else the named claim of an ID token the
/// approvers' OIDC issuers signed. `Err` says why not, without the token.
async fn authenticate(
    tokens: &[Token],
    oidc: Option<(&OidcValidator, &ApproverOidcConfig)>,
    headers: &http::HeaderMap,
) -> Result<Approver, String> {
    const MISSING: &str = "missing or unknown bearer token: send `Authorization: Bearer <token>` with a \
                           token whose SHA-256 is in [[approvals.http.token]], or an ID token of an \
                           [[approvals.http.oidc.issuer]]";
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(MISSING)?;
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        let diff = hash.iter().zip(&t.hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && found.is_none() {
            found = Some(t);
        }
    }
    if let Some(t) = found {
        return Ok(Approver::http(t.name.clone(), None).with_unix_user(t.user.clone()));
    }
    let Some((validator, config)) = oidc.filter(|_| token.split('.').count() == 3) else {
        return Err(MISSING.into());
    };
    let claims = validator
        .validate(token)
        .await
        .map_err(|e| format!("the ID token does not authenticate an approver: {e}"))?;
    let claim = config.name_claim.as_str();
    if claim == "email" && claims.all.get("email_verified") == Some(&serde_json::Value::Bool(false)) {
        return Err("the ID token's `email` is not verified (`email_verified: false`)".into());
    }
    let name = match claims.all.get(claim) {
        Some(serde_json::Value::String(name)) if !name.trim().is_empty() => name.clone(),
        _ => {
            return Err(format!(
                "the ID token has no `{claim}` claim to name the approver by \
                 ([approvals.http.oidc] name_claim)"
            ));
        }
    };
    let unix_user = match &config.user_claim {
        None => None,
        Some(c) => match claims.all.get(c) {
            Some(serde_json::Value::String(u)) if !u.trim().is_empty() => Some(u.clone()),
            _ => {
                return Err(format!(
                    "the ID token has no `{c}` claim to tell the approver's Unix user by \
                     ([approvals.http.oidc] user_claim)"
                ));
            }
        },
    };
    Ok(Approver::http(
        name,
        Some(OidcIdentity {
            issuer: claims.issuer,
            subject: claims.subject,
        }),
    )
    .with_unix_user(unix_user))
}

/// A configured approver token: its holder's name, the token's SHA-256, and the Unix user
/// behind it where that is not the name.
struct Token {
    name: String,
    hash: [u8; 32],
    user: Option<String>,
}

/// HTTP/1.1 with a deadline for each request head (an idle or slow client is dropped).
fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    b
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The router: `who` is already authenticated. `allow_root`: whether root with no other user's
/// login behind it may decide.
pub async fn route(
    approvals: &Approvals,
    who: &Approver,
    req: Request<Incoming>,
    allow_root: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/v1/approvals") else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no route {path}: the API is under /v1/approvals"),
        );
    };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (parts.as_slice(), &method) {
        ([], &Method::GET) => {
            let all = req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|kv| matches!(kv, "all" | "all=1" | "all=true" | "all=yes"))
            });
            let see_all = approvals.may_see_all(who);
            let list: Vec<_> = approvals
                .list(all)
                .into_iter()
                .filter(|a| see_all || Approvals::requested_by(a, who))
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "approvals": list }))
        }
        ([id], &Method::GET) => match approvals.get(id) {
            None => from_error(&ApprovalError::Unknown { id: (*id).to_owned() }),
            Some(a) if approvals.may_see_all(who) || Approvals::requested_by(&a, who) => {
                json(StatusCode::OK, &a)
            }
            Some(_) => error(
                StatusCode::FORBIDDEN,
                &format!("{who} may not see approval {id}: only approvers, root and its requester may"),
            ),
        },
        ([id, action @ ("approve" | "deny")], &Method::POST) => {
            let (id, approve) = ((*id).to_owned(), *action == "approve");
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("the request body is unreadable or over {MAX_BODY} bytes"),
                    );
                }
            };
            let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
                DecisionBody::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(b) => b,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("the body must be JSON {{\"reason\": \"…\"}}: {e}"),
                        );
                    }
                }
            };
            let reason = body.reason.filter(|r| !r.trim().is_empty());
            if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the reason is longer than {MAX_REASON} bytes"),
                );
            }
            // The requester's own attempt is refused as that, whoever it is.
            let own = approvals.get(&id).is_some_and(|a| a.requester.is(who));
            if who.is_anonymous_root() && !allow_root && !own {
                return from_error(&ApprovalError::RootSocket {
                    id,
                    approver: who.to_string(),
                });
            }
            let decided = if approve {
                approvals.approve(&id, who, reason)
            } else {
                approvals.deny(&id, who, reason)
            };
            match decided {
                Ok(a) => json(StatusCode::OK, &a),
                Err(e) => from_error(&e),
            }
        }
        ([] | [_], _) | ([_, "approve" | "deny"], _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

fn from_error(e: &ApprovalError) -> Response<Full<Bytes>> {
    let status = match e {
        ApprovalError::Unknown { .. } => StatusCode::NOT_FOUND,
        ApprovalError::NotPending { .. } | ApprovalError::AlreadyApproved { .. } => StatusCode::CONFLICT,
        ApprovalError::NoGroup { .. }
        | ApprovalError::NotInGroup { .. }
        | ApprovalError::SelfDecision { .. }
        | ApprovalError::SamePerson { .. }
        | ApprovalError::RootSocket { .. } => StatusCode::FORBIDDEN,
        ApprovalError::Io { .. } | ApprovalError::Corrupt { .. } => {
            tracing::error!(error = %e, "approvals: cannot record a decision");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, &e.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("JSON serializes");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
