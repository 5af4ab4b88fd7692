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

use super::{CredentialError, Repo, Secret};
use crate::{config::GithubAppConfig, outbound::Outbound};

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
    cache: Mutex<HashMap<Option<String>, Slot>>,
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
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl AppMinter {
    pub fn new(cfg: &GithubAppConfig, key_pem: &[u8], outbound: Outbound) -> Result<Self, CredentialError> {
        let key = EncodingKey::from_rsa_pem(key_pem).map_err(|e| CredentialError::Config(format!(
            "the GitHub App private key {} is not an RSA private key in PEM ({e})",
            cfg.private_key_file.display()
        )))?;
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

    /// An installation token for `repo` (or, without one, for every repository with the
    /// fallback permissions).
    pub async fn token(&self, repo: Option<&Repo>) -> Result<Secret, CredentialError> {
        let (name, permissions) = match repo {
            Some(r) => (Some(r.name.clone()), &self.permissions),
            None => match &self.fallback {
                Some(p) => (None, p),
                None => return Err(CredentialError::NoRepository),
            },
        };
        let slot = {
            let mut cache = self.cache.lock().map_err(|_| CredentialError::Mint("the token cache failed earlier".into()))?;
            cache.entry(name.clone()).or_default().clone()
        };
        // Single flight: whoever holds the slot mints; the others wait and reuse.
        let mut held = slot.lock().await;
        if let Some((token, expires)) = held.as_ref()
            && SystemTime::now() + REFRESH_BEFORE < *expires
        {
            return Ok(token.clone());
        }
        let (token, expires) = self.mint(name.as_deref(), permissions).await?;
        *held = Some((token.clone(), expires));
        Ok(token)
    }

    async fn mint(&self, repo: Option<&str>, permissions: &BTreeMap<String, String>) -> Result<(Secret, SystemTime), CredentialError> {
        let url = format!("{}/app/installations/{}/access_tokens", self.api_url, self.installation_id);
        let mut body = serde_json::json!({ "permissions": permissions });
        if let Some(r) = repo {
            body["repositories"] = serde_json::json!([r]);
        }
        let jwt = self.app_jwt()?;
        let headers = [
            (header::AUTHORIZATION, format!("Bearer {}", jwt.expose())),
            (header::ACCEPT, "application/vnd.github+json".to_owned()),
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::USER_AGENT, concat!("ghgate/", env!("CARGO_PKG_VERSION")).to_owned()),
            (HeaderName::from_static("x-github-api-version"), "2022-11-28".to_owned()),
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
                repo.map(|r| format!(" (repository {r})")).unwrap_or_default(),
                crate::mask::for_logs(&message)
            )));
        }
        let minted: Minted = serde_json::from_slice(&resp.body)
            .map_err(|e| CredentialError::Mint(format!("the installation token answer is not what GitHub sends ({e})")))?;
        let expires = time::OffsetDateTime::parse(&minted.expires_at, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|e| CredentialError::Mint(format!("the installation token's expires_at is not a time ({e})")))?;
        Ok((Secret::new(minted.token), expires))
    }
}
