//! GitHub App installation tokens: ghgate signs an app JWT (RS256, `iss` = the app id) with the
//! app's private key and asks GitHub for an installation token restricted to the request's
//! repository and the profile's permissions. Tokens are cached until shortly before they expire
//! and minted once under concurrency (single flight per repository).
//!
//! Must never log, record or return in an error the private key, the app JWT or a token.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderName, Method, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::{CredentialError, Secret};
use crate::{config::GithubAppConfig, outbound::Outbound};
use ghgate_policy::classify::Repo;

/// Tokens are used until this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

#[derive(Serialize)]
struct AppClaims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[derive(Deserialize)]
struct Minted {
    token: String,
    expires_at: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<(Secret, SystemTime)>>>;

pub struct AppMinter {
    app_id: u64,
    installation_id: u64,
    key: EncodingKey,
    permissions: BTreeMap<String, String>,
    fallback: Option<BTreeMap<String, String>>,
    api_url: String,
    outbound: Outbound,
    /// One slot per repository (`None`: the fallback, all repositories).
    cache: Mutex<HashMap<Option<Repo>, Slot>>,
}

impl std::fmt::Debug for AppMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppMinter")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppMinter {
    pub fn new(cfg: &GithubAppConfig, key_pem: &[u8], outbound: Outbound) -> Result<Self, CredentialError> {
        let key = EncodingKey::from_rsa_pem(key_pem).map_err(|e| {
            CredentialError::Config(format!(
                "the GitHub App private key {} is not an RSA private key in PEM ({e})",
                cfg.private_key_file.display()
            ))
        })?;
        Ok(Self {
            app_id: cfg.app_id,
            installation_id: cfg.installation_id,
            key,
            permissions: cfg.permissions.clone(),
            fallback: cfg.fallback_permissions.clone(),
            api_url: cfg.api_url.trim_end_matches('/').to_owned(),
            outbound,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The app JWT: valid for 9 minutes, issued a minute in the past (GitHub's clock may lag).
    fn app_jwt(&self) -> Result<Secret, CredentialError> {
        let t = now();
        let claims = AppClaims {
            iat: t.saturating_sub(60),
            exp: t + 540,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| CredentialError::Mint(format!("cannot sign the app JWT ({e})")))
    }

    /// An installation token for `repo` (by name, or by id for `/repositories/{id}/…`), or,
    /// without one, for every repository with the fallback permissions.
    pub async fn token(&self, repo: Option<&Repo>) -> Result<Secret, CredentialError> {
        let (scope, permissions) = match repo {
            Some(r) => (Some(r.clone()), &self.permissions),
            None => match &self.fallback {
                Some(p) => (None, p),
                None => return Err(CredentialError::NoRepository),
            },
        };
        let slot = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| CredentialError::Mint("the token cache failed earlier".into()))?;
            cache.entry(scope.clone()).or_default().clone()
        };
        // Single flight: whoever holds the slot mints; the others wait and reuse.
        let mut held = slot.lock().await;
        if let Some((token, expires)) = held.as_ref()
            && SystemTime::now() + REFRESH_BEFORE < *expires
        {
            return Ok(token.clone());
        }
        let (token, expires) = self.mint(scope.as_ref(), permissions).await?;
        *held = Some((token.clone(), expires));
        Ok(token)
    }

    async fn mint(
        &self,
        repo: Option<&Repo>,
        permissions: &BTreeMap<String, String>,
    ) -> Result<(Secret, SystemTime), CredentialError> {
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.api_url, self.installation_id
        );
        let mut body = serde_json::json!({ "permissions": permissions });
        match repo {
            // Within the installation's account, so by name alone.
            Some(Repo::Named { name, .. }) => body["repositories"] = serde_json::json!([name]),
            Some(Repo::Id(id)) => body["repository_ids"] = serde_json::json!([id]),
            None => {}
        }
        let jwt = self.app_jwt()?;
        let headers = [
            (header::AUTHORIZATION, format!("Bearer {}", jwt.expose())),
            (header::ACCEPT, "application/vnd.github+json".to_owned()),
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::USER_AGENT,
                concat!("ghgate/", env!("CARGO_PKG_VERSION")).to_owned(),
            ),
            (
                HeaderName::from_static("x-github-api-version"),
                "2022-11-28".to_owned(),
            ),
        ];
        let resp = self
            .outbound
            .request(Method::POST, &url, &headers, Some(Bytes::from(body.to_string())))
            .await
            .map_err(|e| CredentialError::Mint(e.to_string()))?;
        if !resp.status.is_success() {
            // GitHub's error message says what is wrong with the app or the request; it never
            // holds the JWT.
            let message = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(CredentialError::Mint(format!(
                "GitHub answered {} to the installation token request for app {} installation {}{}: {}",
                resp.status,
                self.app_id,
                self.installation_id,
                repo.map(|r| format!(" ({})", r.describe())).unwrap_or_default(),
                crate::mask::for_logs(&message)
            )));
        }
        let minted: Minted = serde_json::from_slice(&resp.body).map_err(|e| {
            CredentialError::Mint(format!(
                "the installation token answer is not what GitHub sends ({e})"
            ))
        })?;
        let expires =
            time::OffsetDateTime::parse(&minted.expires_at, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| {
                    CredentialError::Mint(format!("the installation token's expires_at is not a time ({e})"))
                })?;
        Ok((Secret::new(minted.token), expires))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;

    use super::*;

    /// An RSA key in PEM, made by openssl.
    fn rsa_pem() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&path)
            .arg("2048")
            .output()
            .unwrap();
        assert!(ok.status.success());
        std::fs::read(&path).unwrap()
    }

    /// A loopback mint: counts requests, answers with `lifetime` seconds of validity (or 401
    /// when `fail`), after a pause so concurrent callers overlap.
    async fn mint_server(mints: Arc<AtomicUsize>, lifetime: i64, fail: bool) -> String {
        mint_server_with(mints, lifetime, fail, |n, scope| format!("tok-{n}-{scope}")).await
    }

    /// A loopback mint whose `n`th token, for the repositories asked for (`scope`, as JSON), is
    /// `token(n, scope)`.
    async fn mint_server_with(
        mints: Arc<AtomicUsize>,
        lifetime: i64,
        fail: bool,
        token: fn(usize, &serde_json::Value) -> String,
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let mints = mints.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mints = mints.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let n = mints.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let (status, answer) = if fail || auth.is_none() {
                                (
                                    401,
                                    serde_json::json!({"message": "A JSON web token could not be decoded"}),
                                )
                            } else {
                                let expires =
                                    time::OffsetDateTime::now_utc() + time::Duration::seconds(lifetime);
                                let expires = expires
                                    .format(&time::format_description::well_known::Rfc3339)
                                    .unwrap();
                                (
                                    201,
                                    serde_json::json!({"token": token(n, if asked["repositories"].is_null() { &asked["repository_ids"] } else { &asked["repositories"] }), "expires_at": expires}),
                                )
                            };
                            let mut r = http::Response::new(Full::new(Bytes::from(answer.to_string())));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        url
    }

    fn minter(url: &str, fallback: bool) -> AppMinter {
        let cfg = GithubAppConfig {
            app_id: 1,
            installation_id: 2,
            private_key_file: "app.pem".into(),
            permissions: [("contents".to_owned(), "read".to_owned())].into(),
            fallback_permissions: fallback.then(|| [("metadata".to_owned(), "read".to_owned())].into()),
            api_url: url.to_owned(),
        };
        let outbound = crate::outbound::tests::outbound(None, Duration::from_secs(5));
        AppMinter::new(&cfg, &rsa_pem(), outbound).unwrap()
    }

    fn repo(name: &str) -> Repo {
        Repo::Named {
            owner: "o".into(),
            name: name.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_mint_per_repository_under_concurrency_then_cached() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints.clone(), 3600, false).await;
        let m = Arc::new(minter(&url, false));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.token(Some(&repo("a"))).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap().expose().to_owned());
        }
        assert_eq!(mints.load(Ordering::SeqCst), 1, "16 callers, one mint");
        assert!(
            got.iter().all(|t| t == &got[0]) && got[0].contains("[\"a\"]"),
            "{got:?}"
        );
        m.token(Some(&repo("a"))).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 1, "cached");
        m.token(Some(&repo("b"))).await.unwrap();
        assert_eq!(
            mints.load(Ordering::SeqCst),
            2,
            "another repository, another token"
        );
        assert!(matches!(m.token(None).await, Err(CredentialError::NoRepository)));
        // `/repositories/{id}/…`: the token is scoped by id.
        let by_id = m.token(Some(&Repo::Id(4711))).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 3);
        assert!(by_id.expose().ends_with("-[4711]"), "{}", by_id.expose());
    }

    #[tokio::test]
    async fn tokens_about_to_expire_are_minted_again() {
        let mints = Arc::new(AtomicUsize::new(0));
        // Valid for 2 minutes: inside the 5-minute refresh margin, so never reused.
        let url = mint_server(mints.clone(), 120, false).await;
        let m = minter(&url, true);
        m.token(None).await.unwrap();
        m.token(None).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_mint_says_why_and_shows_no_jwt() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints, 3600, true).await;
        let m = minter(&url, false);
        let err = m.token(Some(&repo("a"))).await.unwrap_err().to_string();
        assert!(
            err.contains("401") && err.contains("could not be decoded") && err.contains("repository o/a"),
            "{err}"
        );
        assert!(!err.contains("eyJ"), "the app JWT is never shown: {err}");
    }

    /// An installation token in GitHub's stateless format (`ghs_<app id>_<JWT>`, some 600
    /// characters here), assembled at run time so no source file holds one.
    pub(crate) fn stateless_token(n: usize) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": "github.com", "installation_id": 4_200_000 + n, "exp": 1_780_000_000,
            "permissions": {"contents": "write", "metadata": "read", "pull_requests": "write"},
        });
        let signature: Vec<u8> = (0..256u32)
            .map(|i| (i.wrapping_mul(97) ^ n as u32) as u8)
            .collect();
        format!(
            "gh{}{}_{}.{}.{}",
            "s_",
            123_456,
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(&signature)
        )
    }

    /// Nothing here assumes an installation token is 40 characters: a stateless one is kept
    /// whole, cached, and goes on the wire whole in every scheme; the caller-credential reader
    /// and the masker get it back whole too.
    #[tokio::test]
    async fn stateless_installation_tokens_of_any_length_pass_whole() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server_with(mints.clone(), 3600, false, |n, _| stateless_token(n)).await;
        let m = minter(&url, false);
        let token = m.token(Some(&repo("a"))).await.unwrap();
        let expected = stateless_token(0);
        assert!(expected.len() > 500, "{}", expected.len());
        assert_eq!(token.expose(), expected);
        assert_eq!(m.token(Some(&repo("a"))).await.unwrap(), token, "cached whole");
        assert_eq!(mints.load(Ordering::SeqCst), 1);
        for scheme in [
            super::super::Scheme::Basic,
            super::super::Scheme::Bearer,
            super::super::Scheme::Token,
        ] {
            let mut headers = http::HeaderMap::new();
            super::super::inject(&mut headers, scheme, &token);
            assert_eq!(
                super::super::presented(&headers).as_ref().map(Secret::expose),
                Some(expected.as_str()),
                "{scheme:?}"
            );
            let exact = crate::mask::caller_credentials(&headers);
            assert!(exact.iter().any(|(_, v)| v == expected.as_bytes()), "{scheme:?}");
        }
        let logged = crate::mask::for_logs(&format!("minted {expected} for o/a"));
        assert!(
            !logged.contains(&expected) && logged.contains("[MASKED:github-app-token:"),
            "{logged}"
        );
    }
}
