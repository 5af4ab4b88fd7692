//! GitHub App installation tokens: ghgate signs an app JWT (RS256, `iss` = the app id) with the
//! app's private key and asks GitHub for an installation token restricted to the request's
//! repository and the profile's permissions. Tokens are cached until shortly before they expire
//! and minted once under concurrency (single flight per repository).
//!
//! Requests name their repository, and a hostile process can name a new one with every
//! request, before the policy has looked at it: each would cost a mint against the app's rate
//! limit, which every runner using the app shares. So a mint GitHub refused is the answer for
//! that repository for [`REFUSED_FOR`], mints are budgeted per cgroup of callers and in all
//! (`mints_per_minute_per_cgroup`, `mints_per_minute`; past a budget, requests that need a new token get 502 and
//! nothing is asked of GitHub, and one cgroup emptying its own leaves the others theirs), and
//! at most [`MAX_SCOPES`] repositories are kept.
//!
//! Must never log, record or return in an error the private key, the app JWT or a token.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderName, Method, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tracing::warn;

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

/// What a repository's slot holds.
enum Held {
    /// A token, and when it expires.
    Token(Secret, SystemTime),
    /// GitHub refused the mint (a 4xx answer: a repository not in the installation, a bad app
    /// key, its rate limit): why, and until when that stands.
    Refused(String, Instant),
}

type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

/// How long a refused mint stays the answer for its repository.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);
/// The default of `github_app.mints_per_minute_per_cgroup`: mints a minute on average for the
/// callers of one cgroup (a job, a container, a service); a job working on a few repositories
/// mints a few tokens an hour, each valid for an hour.
pub const MINTS_PER_CGROUP: u32 = 30;
/// The default of `github_app.mints_per_minute`: for every cgroup together.
pub const MINTS_IN_ALL: u32 = 120;
/// Cgroups whose budgets are kept; past it, full budgets (as good as new ones) are dropped.
const MAX_BUDGETS: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_minute: f64,
    pub burst: f64,
}

impl Rate {
    /// `n` a minute on average, twice as many at once (a job's first minute mints for every
    /// repository it touches).
    pub fn per_minute(n: u32) -> Self {
        Self {
            per_minute: f64::from(n),
            burst: 2.0 * f64::from(n),
        }
    }
}
/// Repositories whose slots are kept; past it, slots not in use are dropped (a valid token
/// dropped is minted again when next needed).
pub const MAX_SCOPES: usize = 4096;

/// A budget of mints.
struct Budget {
    rate: Rate,
    bucket: crate::bucket::TokenBucket,
    /// Refusing since the bucket ran dry (logged at the first).
    refusing: bool,
}

impl Budget {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            bucket: crate::bucket::TokenBucket::new(rate.per_minute / 60.0, rate.burst),
            refusing: false,
        }
    }

    /// Takes one mint, if there is one left; else whether this is the first refusal of a run.
    fn take(&mut self) -> Result<(), bool> {
        if self.bucket.take() {
            self.refusing = false;
            return Ok(());
        }
        Err(!std::mem::replace(&mut self.refusing, true))
    }
}

/// The budgets of mints: each cgroup's, and all cgroups'.
struct Budgets {
    per_cgroup: HashMap<u64, Budget>,
    cgroup_rate: Rate,
    in_all: Budget,
}

impl Budgets {
    fn new(cgroup_rate: Rate, in_all: Rate) -> Self {
        Self {
            per_cgroup: HashMap::new(),
            cgroup_rate,
            in_all: Budget::new(in_all),
        }
    }

    /// Takes one mint for a caller in `cgroup`; or says which budget has none left.
    fn take(&mut self, cgroup: u64) -> Result<(), String> {
        if self.per_cgroup.len() >= MAX_BUDGETS && !self.per_cgroup.contains_key(&cgroup) {
            self.per_cgroup.retain(|_, b| !b.bucket.is_full());
        }
        let rate = self.cgroup_rate;
        let own = self.per_cgroup.entry(cgroup).or_insert_with(|| Budget::new(rate));
        let refused = match own.take() {
            Err(first) => Some((first, "for the callers of one cgroup", rate)),
            Ok(()) => match self.in_all.take() {
                Ok(()) => None,
                Err(first) => {
                    // Not spent after all.
                    own.bucket.give_back();
                    Some((first, "in all", self.in_all.rate))
                }
            },
        };
        let Some((first, which, rate)) = refused else {
            return Ok(());
        };
        if first {
            warn!(
                cgroup_id = cgroup,
                per_minute = rate.per_minute,
                burst = rate.burst,
                "more installation tokens were asked for than the gateway mints {which}; requests that need a new one get 502 until the budget refills"
            );
        }
        Err(format!(
            "the gateway mints at most {} installation tokens a minute {which} (at most {} at once) and has none left",
            rate.per_minute, rate.burst
        ))
    }
}

/// Drops slots not in use (and, first, those holding nothing still good) until `cache` has
/// room for one more under `max`.
fn make_room(cache: &mut HashMap<Option<Repo>, Slot>, max: usize) {
    let now = (SystemTime::now(), Instant::now());
    let stale = |slot: &Slot| {
        slot.try_lock().is_ok_and(|held| match &*held {
            None => true,
            Some(Held::Token(_, expires)) => *expires <= now.0 + REFRESH_BEFORE,
            Some(Held::Refused(_, until)) => *until <= now.1,
        })
    };
    cache.retain(|_, slot| !stale(slot));
    while cache.len() >= max {
        let Some(unused) = cache
            .iter()
            .find(|(_, slot)| slot.try_lock().is_ok())
            .map(|(scope, _)| scope.clone())
        else {
            return;
        };
        cache.remove(&unused);
    }
}

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
    max_scopes: usize,
    budgets: Mutex<Budgets>,
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
            max_scopes: MAX_SCOPES,
            budgets: Mutex::new(Budgets::new(
                Rate::per_minute(cfg.mints_per_minute_per_cgroup),
                Rate::per_minute(cfg.mints_per_minute),
            )),
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
    /// without one, for every repository with the fallback permissions; a new one is minted
    /// from the budgets of the caller's `cgroup` and of all.
    pub async fn token(&self, repo: Option<&Repo>, cgroup: u64) -> Result<Secret, CredentialError> {
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
            if !cache.contains_key(&scope) && cache.len() >= self.max_scopes {
                make_room(&mut cache, self.max_scopes);
            }
            cache.entry(scope.clone()).or_default().clone()
        };
        // Single flight: whoever holds the slot mints; the others wait and reuse.
        let mut held = slot.lock().await;
        match held.as_ref() {
            Some(Held::Token(token, expires)) if SystemTime::now() + REFRESH_BEFORE < *expires => {
                return Ok(token.clone());
            }
            Some(Held::Refused(why, until)) if Instant::now() < *until => {
                return Err(CredentialError::Mint(why.clone()));
            }
            _ => {}
        }
        let budgeted = self
            .budgets
            .lock()
            .map_err(|_| "the mint budgets failed earlier".to_owned())
            .and_then(|mut b| b.take(cgroup));
        if let Err(why) = budgeted {
            return Err(CredentialError::Mint(format!(
                "{why}; none was asked for{}",
                scope
                    .as_ref()
                    .map(|r| format!(" ({})", r.describe()))
                    .unwrap_or_default()
            )));
        }
        // Boxed: a mint (an HTTPS request) is rare, and its state inline would be carried, and
        // copied, by every request's future (see `http::forward`).
        match Box::pin(self.mint(scope.as_ref(), permissions)).await {
            Ok((token, expires)) => {
                *held = Some(Held::Token(token.clone(), expires));
                Ok(token)
            }
            Err((why, refused)) => {
                if refused {
                    *held = Some(Held::Refused(why.to_string(), Instant::now() + REFUSED_FOR));
                }
                Err(CredentialError::Mint(why))
            }
        }
    }

    /// A token and when it expires; or why not, and whether GitHub refused (a 4xx answer, which
    /// asking again at once would get again).
    async fn mint(
        &self,
        repo: Option<&Repo>,
        permissions: &BTreeMap<String, String>,
    ) -> Result<(Secret, SystemTime), (String, bool)> {
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
        let jwt = self.app_jwt().map_err(|e| match e {
            CredentialError::Mint(why) => (why, false),
            other => (other.to_string(), false),
        })?;
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
            .map_err(|e| (e.to_string(), false))?;
        if !resp.status.is_success() {
            // GitHub's error message says what is wrong with the app or the request; it never
            // holds the JWT.
            let message = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err((
                format!(
                    "GitHub answered {} to the installation token request for app {} installation {}{}: {}",
                    resp.status,
                    self.app_id,
                    self.installation_id,
                    repo.map(|r| format!(" ({})", r.describe())).unwrap_or_default(),
                    crate::mask::for_logs(&message)
                ),
                resp.status.is_client_error(),
            ));
        }
        let minted: Minted = serde_json::from_slice(&resp.body).map_err(|e| {
            (
                format!("the installation token answer is not what GitHub sends ({e})"),
                false,
            )
        })?;
        let expires =
            time::OffsetDateTime::parse(&minted.expires_at, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| {
                    (
                        format!("the installation token's expires_at is not a time ({e})"),
                        false,
                    )
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
        minter_with(url, fallback, (MINTS_PER_CGROUP, MINTS_IN_ALL))
    }

    /// A minter whose budgets are `(per cgroup, in all)` mints a minute, as configured.
    fn minter_with(url: &str, fallback: bool, (per_cgroup, in_all): (u32, u32)) -> AppMinter {
        let cfg = GithubAppConfig {
            app_id: 1,
            installation_id: 2,
            private_key_file: "app.pem".into(),
            permissions: [("contents".to_owned(), "read".to_owned())].into(),
            fallback_permissions: fallback.then(|| [("metadata".to_owned(), "read".to_owned())].into()),
            api_url: url.to_owned(),
            mints_per_minute_per_cgroup: per_cgroup,
            mints_per_minute: in_all,
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
                tokio::spawn(async move { m.token(Some(&repo("a")), 1).await.unwrap() })
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
        m.token(Some(&repo("a")), 1).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 1, "cached");
        m.token(Some(&repo("b")), 1).await.unwrap();
        assert_eq!(
            mints.load(Ordering::SeqCst),
            2,
            "another repository, another token"
        );
        assert!(matches!(
            m.token(None, 1).await,
            Err(CredentialError::NoRepository)
        ));
        // `/repositories/{id}/…`: the token is scoped by id.
        let by_id = m.token(Some(&Repo::Id(4711)), 1).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 3);
        assert!(by_id.expose().ends_with("-[4711]"), "{}", by_id.expose());
    }

    #[tokio::test]
    async fn tokens_about_to_expire_are_minted_again() {
        let mints = Arc::new(AtomicUsize::new(0));
        // Valid for 2 minutes: inside the 5-minute refresh margin, so never reused.
        let url = mint_server(mints.clone(), 120, false).await;
        let m = minter(&url, true);
        m.token(None, 1).await.unwrap();
        m.token(None, 1).await.unwrap();
        assert_eq!(mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_mint_says_why_and_shows_no_jwt() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints, 3600, true).await;
        let m = minter(&url, false);
        let err = m.token(Some(&repo("a")), 1).await.unwrap_err().to_string();
        assert!(
            err.contains("401") && err.contains("could not be decoded") && err.contains("repository o/a"),
            "{err}"
        );
        assert!(!err.contains("eyJ"), "the app JWT is never shown: {err}");
    }

    /// A mint GitHub refused is the answer for that repository for a while: a process naming the
    /// same repository again, or in a loop, costs no further mint until it has stood its time.
    #[tokio::test]
    async fn a_refused_mint_is_the_answer_for_a_while() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints.clone(), 3600, true).await;
        let m = minter(&url, false);
        let first = m.token(Some(&repo("a")), 1).await.unwrap_err().to_string();
        for _ in 0..5 {
            assert_eq!(m.token(Some(&repo("a")), 1).await.unwrap_err().to_string(), first);
        }
        assert_eq!(mints.load(Ordering::SeqCst), 1);
        m.token(Some(&repo("b")), 1).await.unwrap_err();
        assert_eq!(mints.load(Ordering::SeqCst), 2, "another repository is asked for");
        let slot = m.cache.lock().unwrap()[&Some(repo("a"))].clone();
        match &mut *slot.try_lock().unwrap() {
            Some(Held::Refused(_, until)) => *until = Instant::now(),
            _ => panic!("the refusal is held"),
        }
        m.token(Some(&repo("a")), 1).await.unwrap_err();
        assert_eq!(mints.load(Ordering::SeqCst), 3, "asked again once it has stood");
    }

    /// A process naming a new repository with every request gets at most its cgroup's budget of
    /// mints; past it nothing is asked of GitHub, tokens already minted still serve, another
    /// cgroup still gets tokens, the budget refills with time, and all cgroups together are
    /// bounded too.
    #[tokio::test]
    async fn mints_are_budgeted_per_cgroup_and_in_all() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints.clone(), 3600, false).await;
        let mut m = minter(&url, false);
        // One a ten seconds, five at once per cgroup; eight at once in all.
        let rate = |burst| Rate {
            per_minute: 6.0,
            burst,
        };
        m.budgets = Mutex::new(Budgets::new(rate(5.0), rate(8.0)));
        let mut answers = Vec::new();
        for i in 0..12 {
            answers.push(m.token(Some(&repo(&format!("r{i}"))), 1).await);
        }
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 5);
        assert_eq!(mints.load(Ordering::SeqCst), 5);
        let refused = answers[11].as_ref().unwrap_err().to_string();
        assert!(
            refused.contains("a minute for the callers of one cgroup")
                && refused.contains("repository o/r11"),
            "{refused}"
        );
        m.token(Some(&repo("r0")), 1)
            .await
            .expect("a token minted before still serves");
        // Another cgroup has its own budget, up to what is left in all.
        let mut other = Vec::new();
        for i in 0..5 {
            other.push(m.token(Some(&repo(&format!("t{i}"))), 2).await.is_ok());
        }
        assert_eq!(other, [true, true, true, false, false], "three left in all");
        let refused = m.token(Some(&repo("t9")), 3).await.unwrap_err().to_string();
        assert!(refused.contains("a minute in all"), "{refused}");
        assert_eq!(mints.load(Ordering::SeqCst), 8);
        // Twenty seconds later: two more in all.
        {
            let mut b = m.budgets.lock().unwrap();
            b.in_all.bucket.age(Duration::from_secs(20));
            for own in b.per_cgroup.values_mut() {
                own.bucket.age(Duration::from_secs(20));
            }
        }
        for i in 0..3 {
            let _ = m.token(Some(&repo(&format!("s{i}"))), 1).await;
        }
        assert_eq!(mints.load(Ordering::SeqCst), 10);
    }

    /// The budgets are the configured ones: 2 a minute per cgroup allows 4 at once, 3 a minute
    /// in all allows 6 at once.
    #[tokio::test]
    async fn mint_budgets_are_the_configured_ones() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints.clone(), 3600, false).await;
        let m = minter_with(&url, false, (2, 3));
        let mut got = Vec::new();
        for (cgroup, n) in [(1, 5), (2, 5)] {
            for i in 0..n {
                got.push(
                    m.token(Some(&repo(&format!("c{cgroup}r{i}"))), cgroup)
                        .await
                        .is_ok(),
                );
            }
        }
        assert_eq!(
            got,
            [true, true, true, true, false, true, true, false, false, false],
            "four for the first cgroup, then two more in all"
        );
        assert_eq!(mints.load(Ordering::SeqCst), 6);
    }

    /// Past `max_scopes` repositories, slots not in use are dropped.
    #[tokio::test]
    async fn at_most_max_scopes_repositories_are_kept() {
        let mints = Arc::new(AtomicUsize::new(0));
        let url = mint_server(mints.clone(), 3600, false).await;
        let mut m = minter(&url, false);
        m.max_scopes = 3;
        for i in 0..6 {
            m.token(Some(&repo(&format!("r{i}"))), 1).await.unwrap();
            assert!(m.cache.lock().unwrap().len() <= 3);
        }
        assert!(m.cache.lock().unwrap().contains_key(&Some(repo("r5"))));
        assert_eq!(mints.load(Ordering::SeqCst), 6);
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
        let token = m.token(Some(&repo("a")), 1).await.unwrap();
        let expected = stateless_token(0);
        assert!(expected.len() > 500, "{}", expected.len());
        assert_eq!(token.expose(), expected);
        assert_eq!(m.token(Some(&repo("a")), 1).await.unwrap(), token, "cached whole");
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
