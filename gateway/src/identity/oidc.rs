//! OIDC ID tokens (JWTs) that callers present instead of a GitHub credential: which strings are
//! candidates, and full validation against the configured issuers' published keys.
//!
//! Keys come from each issuer's JWKS (found by discovery unless configured), cached for
//! `jwks_ttl_secs`; a token naming an unknown key refetches once (at most every
//! `min_refetch_secs`, one fetch at a time), so rotation is picked up without hammering the issuer.
//! Only asymmetric algorithms are accepted: the keys are public, so `none` and HMAC prove nothing.
//! This module never logs or returns the token itself, and never trusts a claim before the
//! signature over it has been verified (the unverified `iss` only picks which keys to check).
use std::{
    str::FromStr as _,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use http::{Method, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use serde_json::{Map, Value};
use tracing::{info, warn};

use crate::{
    config::{OidcConfig, OidcIssuer},
    outbound::Outbound,
};

/// Longer than any real ID token; longer strings are refused before any decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The claims of a validated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    pub audience: Vec<String>,
    pub expires_at: u64,
    /// Every claim of the token, for rules and records.
    pub all: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the OIDC token is malformed: {0}")]
    Malformed(String),
    #[error("the OIDC token's issuer {0:?} is not one of the configured [[oidc.issuer]]s")]
    UnknownIssuer(String),
    #[error(
        "the OIDC token expired at {expired_at} (now {now}, {leeway_secs}s leeway): request a fresh token"
    )]
    Expired {
        expired_at: String,
        now: String,
        leeway_secs: u64,
    },
    #[error(
        "the OIDC token is not valid before {valid_from} (its `{claim}` claim; now {now}): \
         check this host's clock"
    )]
    NotYetValid {
        claim: &'static str,
        valid_from: String,
        now: String,
    },
    #[error(
        "the OIDC token's audience {got:?} is not one of {expected:?} configured for issuer {issuer}: \
         request the token for one of those audiences"
    )]
    WrongAudience {
        issuer: String,
        got: Vec<String>,
        expected: Vec<String>,
    },
    #[error(
        "no key with kid {kid:?} in the issuer's JWKS (fetched {fetched_at} from {url}): the token \
         was not signed by a key this issuer publishes"
    )]
    UnknownKey {
        kid: String,
        fetched_at: String,
        url: String,
    },
    #[error(
        "the OIDC token's signature does not verify with the issuer's key: it was not made by the issuer"
    )]
    BadSignature,
    #[error("{}", refused_alg(.0))]
    AlgorithmNotAllowed(String),
    #[error("the OIDC token says `alg: {alg}`, but the issuer's key {kid:?} is not for {alg}")]
    KeyMismatch { kid: String, alg: String },
    #[error("cannot get the signing keys of OIDC issuer {issuer} from {url}: {reason}")]
    Jwks {
        issuer: String,
        url: String,
        reason: String,
    },
}

fn refused_alg(alg: &str) -> String {
    if alg.eq_ignore_ascii_case("none") {
        format!("`alg: {alg}` tokens are refused: an OIDC token must be signed by its issuer")
    } else if alg.starts_with("HS") {
        format!(
            "`alg: {alg}` tokens are refused: an OIDC issuer's keys are public, so only asymmetric \
             signatures (RS*, PS*, ES256, ES384, EdDSA) prove who made the token"
        )
    } else {
        format!("`alg: {alg}` tokens are refused: use RS*, PS*, ES256, ES384 or EdDSA")
    }
}

/// Validates OIDC tokens against the configured issuers. Shared in an `Arc`.
pub struct OidcValidator {
    issuers: Vec<IssuerKeys>,
    outbound: Outbound,
}

/// One issuer's configuration and its cached keys.
struct IssuerKeys {
    config: OidcIssuer,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held across a fetch: one fetch per issuer at a time; waiters then use its result.
    fetch: tokio::sync::Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<OidcError>,
}

struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
    fetched_at: String,
    url: String,
}

struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key is then for that algorithm only.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

impl KeySet {
    /// The key for `kid` (or the one key that fits when the token names none).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<&Key>, OidcError> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.fits(alg) => Ok(Some(key)),
                Some(_) => Err(OidcError::KeyMismatch {
                    kid: kid.into(),
                    alg: format!("{alg:?}"),
                }),
                None => Ok(None),
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(Some(key)),
                    (None, _) => Ok(None),
                    (Some(_), Some(_)) => Err(OidcError::Malformed(
                        "the token names no key (`kid`) and the issuer publishes several".into(),
                    )),
                }
            }
        }
    }

    fn unknown(&self, kid: Option<&str>) -> OidcError {
        OidcError::UnknownKey {
            kid: kid.unwrap_or("(none)").into(),
            fetched_at: self.fetched_at.clone(),
            url: self.url.clone(),
        }
    }
}

/// The parts of a token read before anything is verified.
struct Unverified {
    alg: String,
    kid: Option<String>,
    iss: Option<String>,
}

impl OidcValidator {
    pub fn new(config: &OidcConfig, outbound: Outbound) -> Self {
        Self {
            issuers: config
                .issuers
                .iter()
                .map(|c| IssuerKeys {
                    config: c.clone(),
                    keys: RwLock::new(None),
                    fetch: tokio::sync::Mutex::new(FetchState::default()),
                })
                .collect(),
            outbound,
        }
    }

    /// Whether this string even looks like a JWT whose `iss` (read unverified from the payload)
    /// is one of the configured issuers — callers use this to decide whether a presented
    /// credential is an OIDC token at all.
    pub fn is_candidate(&self, token: &str) -> bool {
        read_unverified(token)
            .ok()
            .and_then(|u| u.iss)
            .is_some_and(|iss| self.issuer(&iss).is_some())
    }

    pub async fn validate(&self, token: &str) -> Result<Claims, OidcError> {
        let unverified = read_unverified(token)?;
        let iss = unverified
            .iss
            .ok_or_else(|| OidcError::Malformed("it has no `iss` claim".into()))?;
        let issuer = self
            .issuer(&iss)
            .ok_or_else(|| OidcError::UnknownIssuer(iss.clone()))?;
        let alg = allowed_alg(&unverified.alg)?;
        let key = self.key_for(issuer, unverified.kid.as_deref(), alg).await?;

        // Signature only: the claims are checked below, with messages a user can act on.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let all = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => OidcError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => OidcError::KeyMismatch {
                    kid: unverified.kid.clone().unwrap_or_default(),
                    alg: unverified.alg.clone(),
                },
                _ => OidcError::Malformed(e.to_string()),
            })?
            .claims;
        check_claims(&issuer.config, all, now_secs())
    }

    fn issuer(&self, iss: &str) -> Option<&IssuerKeys> {
        self.issuers.iter().find(|i| i.config.issuer == iss)
    }

    /// The verification key for `kid`: cached, else fetched (single-flight, rate-limited).
    async fn key_for(
        &self,
        issuer: &IssuerKeys,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, OidcError> {
        let ttl = Duration::from_secs(issuer.config.jwks_ttl_secs);
        let fresh = |set: &KeySet| set.fetched.elapsed() < ttl;
        if let Some(set) = issuer.current().filter(|s| fresh(s))
            && let Some(key) = set.find(kid, alg)?
        {
            return Ok(key.key.clone());
        }

        let mut state = issuer.fetch.lock().await;
        // Another caller may have fetched while this one waited.
        let current = issuer.current();
        if let Some(set) = current.as_ref().filter(|s| fresh(s))
            && let Some(key) = set.find(kid, alg)?
        {
            return Ok(key.key.clone());
        }
        let min_refetch = Duration::from_secs(issuer.config.min_refetch_secs);
        let may_fetch = state.last_attempt.is_none_or(|t| t.elapsed() >= min_refetch);
        if !may_fetch {
            return match current {
                // Stale keys (the last refetch failed) still serve until a refetch succeeds.
                Some(set) => match set.find(kid, alg)? {
                    Some(key) => Ok(key.key.clone()),
                    None => Err(set.unknown(kid)),
                },
                None => Err(state.last_error.clone().unwrap_or_else(|| OidcError::Jwks {
                    issuer: issuer.config.issuer.clone(),
                    url: issuer.config.jwks_uri.clone().unwrap_or_default(),
                    reason: "no keys fetched yet".into(),
                })),
            };
        }

        state.last_attempt = Some(Instant::now());
        match self.fetch_keys(&issuer.config).await {
            Ok(set) => {
                info!(issuer = %issuer.config.issuer, url = %set.url, keys = set.keys.len(),
                      "fetched the OIDC issuer's signing keys");
                state.last_error = None;
                let set = Arc::new(set);
                *issuer.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
                match set.find(kid, alg)? {
                    Some(key) => Ok(key.key.clone()),
                    None => Err(set.unknown(kid)),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot refresh an OIDC issuer's signing keys");
                state.last_error = Some(e.clone());
                match current
                    .as_ref()
                    .map(|set| set.find(kid, alg))
                    .transpose()?
                    .flatten()
                {
                    Some(key) => Ok(key.key.clone()),
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch_keys(&self, config: &OidcIssuer) -> Result<KeySet, OidcError> {
        let url = match &config.jwks_uri {
            Some(url) => url.clone(),
            None => self.discover(config).await?,
        };
        let jwks_error = |reason: String| OidcError::Jwks {
            issuer: config.issuer.clone(),
            url: crate::mask::for_logs(&url),
            reason,
        };
        let doc = self.get_json(&url).await.map_err(jwks_error)?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(jwks_error("the document has no `keys` array".into()));
        };
        let mut keys = Vec::new();
        for entry in entries {
            // One key this gateway cannot use must not hide the others.
            match usable_key(entry) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::debug!(issuer = %config.issuer, why, "skipping a JWKS entry"),
            }
        }
        if keys.is_empty() {
            return Err(jwks_error(format!(
                "none of its {} keys is a usable public signing key",
                entries.len()
            )));
        }
        Ok(KeySet {
            keys,
            fetched: Instant::now(),
            fetched_at: rfc3339(now_secs()),
            url: crate::mask::for_logs(&url),
        })
    }

    /// `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    async fn discover(&self, config: &OidcIssuer) -> Result<String, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        );
        let error = |reason: String| OidcError::Jwks {
            issuer: config.issuer.clone(),
            url: crate::mask::for_logs(&url),
            reason,
        };
        let doc = self.get_json(&url).await.map_err(error)?;
        if let Some(named) = doc.get("issuer").and_then(Value::as_str)
            && named != config.issuer
        {
            return Err(error(format!(
                "the discovery document is for issuer {named:?}, not {:?}",
                config.issuer
            )));
        }
        match doc.get("jwks_uri").and_then(Value::as_str) {
            Some(jwks) => Ok(jwks.to_owned()),
            None => Err(error(
                "the discovery document has no `jwks_uri` (configure jwks_uri for this issuer)".into(),
            )),
        }
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let accept = [(header::ACCEPT, "application/json".to_owned())];
        let response = self
            .outbound
            .request(Method::GET, url, &accept, None)
            .await
            .map_err(|e| e.to_string())?;
        if response.status != StatusCode::OK {
            return Err(format!("answered HTTP {}", response.status));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("not valid JSON: {e}"))
    }
}

impl IssuerKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A JWKS entry as a verification key: public, for signatures, never symmetric.
fn usable_key(entry: &Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return Err("an encryption key".into());
    }
    let alg = match entry.get("alg").and_then(Value::as_str) {
        Some(name) => Some(allowed_alg(name).map_err(|e| e.to_string())?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err("a symmetric key".into());
    }
    Ok(Key {
        kid: jwk.common.key_id,
        alg,
        key,
    })
}

fn allowed_alg(name: &str) -> Result<Algorithm, OidcError> {
    let refused = || OidcError::AlgorithmNotAllowed(name.to_owned());
    let alg = Algorithm::from_str(name).map_err(|_| refused())?;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(refused());
    }
    Ok(alg)
}

/// Header `alg`/`kid` and payload `iss`, unverified: to pick keys, never to trust.
fn read_unverified(token: &str) -> Result<Unverified, OidcError> {
    let malformed = |why: &str| OidcError::Malformed(why.into());
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed("it is longer than any ID token"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    let decode = |part: &str, what: &str| -> Result<Map<String, Value>, OidcError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| OidcError::Malformed(format!("its {what} is not base64url")))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| OidcError::Malformed(format!("its {what} is not a JSON object")))
    };
    let header = decode(header, "header")?;
    let payload = decode(payload, "payload")?;
    let Some(alg) = header.get("alg").and_then(Value::as_str) else {
        return Err(malformed("its header has no `alg`"));
    };
    Ok(Unverified {
        alg: alg.to_owned(),
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        iss: payload.get("iss").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The time claims, audience and subject of signature-verified claims, at `now`.
fn check_claims(config: &OidcIssuer, all: Map<String, Value>, now: u64) -> Result<Claims, OidcError> {
    let leeway = config.leeway_secs;
    // Some issuers write times as floats; a fraction of a second changes nothing here.
    let time = |name: &str| -> Result<Option<u64>, OidcError> {
        match all.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| OidcError::Malformed(format!("its `{name}` claim is not a time"))),
        }
    };
    if all.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
        return Err(OidcError::UnknownIssuer(
            all.get("iss").map(|v| v.to_string()).unwrap_or_default(),
        ));
    }
    let exp = time("exp")?.ok_or_else(|| OidcError::Malformed("it has no `exp` claim".into()))?;
    if exp.saturating_add(leeway) < now {
        return Err(OidcError::Expired {
            expired_at: rfc3339(exp),
            now: rfc3339(now),
            leeway_secs: leeway,
        });
    }
    for claim in ["nbf", "iat"] {
        if let Some(t) = time(claim)?
            && t > now.saturating_add(leeway)
        {
            return Err(OidcError::NotYetValid {
                claim,
                valid_from: rfc3339(t),
                now: rfc3339(now),
            });
        }
    }
    let audience: Vec<String> = match all.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| OidcError::Malformed("its `aud` claim holds a non-string".into()))?,
        Some(_) => {
            return Err(OidcError::Malformed(
                "its `aud` claim is not a string or list".into(),
            ));
        }
        None => Vec::new(),
    };
    if !audience.iter().any(|a| config.audiences.contains(a)) {
        return Err(OidcError::WrongAudience {
            issuer: config.issuer.clone(),
            got: audience,
            expected: config.audiences.clone(),
        });
    }
    let subject = all
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::Malformed("it has no `sub` claim".into()))?
        .to_owned();
    Ok(Claims {
        issuer: config.issuer.clone(),
        subject,
        audience,
        expires_at: exp,
        all,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} (seconds since 1970)"))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use ghgate_test_support::oidc::{Issuer, SigningKey};

    use crate::outbound::tests::outbound;

    const AUD: &str = "ghgate";

    /// The loopback issuer, seen from the gateway's side: its config, a validator for it.
    trait Relying {
        fn config(&self) -> OidcIssuer;
        fn validator(&self) -> OidcValidator;
        fn claims(&self) -> Value;
    }

    impl Relying for Issuer {
        fn config(&self) -> OidcIssuer {
            OidcIssuer {
                issuer: self.url().to_owned(),
                audiences: vec![AUD.into(), "other-audience".into()],
                jwks_uri: None,
                leeway_secs: 60,
                jwks_ttl_secs: 3600,
                min_refetch_secs: 1,
            }
        }

        fn validator(&self) -> OidcValidator {
            validator(self.config())
        }

        /// Claims of a GitHub Actions-like token from this issuer, valid now.
        fn claims(&self) -> Value {
            self.actions_claims(AUD)
        }
    }

    fn start(keys: &[&SigningKey]) -> Issuer {
        Issuer::start(std::net::Ipv4Addr::LOCALHOST.into(), keys)
    }

    /// Shared across connection tasks: must stay `Send + Sync`.
    const _: fn() = || {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<OidcValidator>();
        shared::<Outbound>();
    };

    fn validator(config: OidcIssuer) -> OidcValidator {
        OidcValidator::new(
            &OidcConfig {
                issuers: vec![config],
            },
            outbound(None, Duration::from_secs(5)),
        )
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    #[tokio::test]
    async fn a_valid_token_is_accepted_with_its_claims() {
        let key = SigningKey::rs256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let claims = with(issuer.claims(), "aud", json!(["someone-else", AUD]));
        let token = key.sign(&claims);
        assert!(v.is_candidate(&token));
        let got = v.validate(&token).await.unwrap();
        assert_eq!(got.issuer, issuer.url());
        assert_eq!(got.subject, "repo:octo-org/app:ref:refs/heads/main");
        assert_eq!(got.audience, vec!["someone-else".to_owned(), AUD.to_owned()]);
        assert_eq!(got.expires_at, claims["exp"].as_u64().unwrap());
        assert_eq!(got.all["repository"], "octo-org/app");
        assert_eq!(got.all["workflow"], "ci");
        assert_eq!(got.all["groups"], json!(["dev", "release"]));
        // The keys are cached: a second token costs no fetch.
        v.validate(&token).await.unwrap();
        assert_eq!(issuer.fetches(), 1);
    }

    #[tokio::test]
    async fn es256_tokens_are_accepted_too() {
        let key = SigningKey::es256("ec-1");
        let issuer = start(&[&key]);
        let got = issuer
            .validator()
            .validate(&key.sign(&issuer.claims()))
            .await
            .unwrap();
        assert_eq!(got.all["repository"], "octo-org/app");
    }

    #[tokio::test]
    async fn candidates_are_jwts_from_configured_issuers_only() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let other = with(issuer.claims(), "iss", json!("https://elsewhere.example"));
        assert!(v.is_candidate(&key.sign(&issuer.claims())));
        assert!(!v.is_candidate(&key.sign(&other)));
        assert!(!v.is_candidate("ghp_0123456789abcdefghijklmnopqrstuvwxyz"));
        assert!(!v.is_candidate("a.b.c"));
        assert!(!v.is_candidate(""));
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_leeway() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let now = now_secs();

        let expired = key.sign(&with(issuer.claims(), "exp", json!(now - 3600)));
        let err = v.validate(&expired).await.unwrap_err();
        assert!(matches!(err, OidcError::Expired { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("the OIDC token expired at "), "{msg}");
        assert!(msg.contains(&rfc3339(now - 3600)), "{msg}");

        // Within the leeway: still accepted.
        let just = key.sign(&with(issuer.claims(), "exp", json!(now - 30)));
        v.validate(&just).await.unwrap();

        let early = key.sign(&with(issuer.claims(), "nbf", json!(now + 3600)));
        let err = v.validate(&early).await.unwrap_err();
        assert!(
            matches!(err, OidcError::NotYetValid { claim: "nbf", .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&rfc3339(now + 3600)), "{err}");

        let future = key.sign(&with(issuer.claims(), "iat", json!(now + 3600)));
        let err = v.validate(&future).await.unwrap_err();
        assert!(
            matches!(err, OidcError::NotYetValid { claim: "iat", .. }),
            "{err}"
        );

        let mut no_exp = issuer.claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let err = v.validate(&key.sign(&no_exp)).await.unwrap_err();
        assert!(matches!(err, OidcError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        for aud in [json!("sts.amazonaws.com"), json!(["a", "b"]), json!([])] {
            let err = v
                .validate(&key.sign(&with(issuer.claims(), "aud", aud.clone())))
                .await
                .unwrap_err();
            assert!(matches!(err, OidcError::WrongAudience { .. }), "{aud}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(r#"["ghgate", "other-audience"]"#), "{msg}");
            assert!(msg.contains(issuer.url()), "{msg}");
        }
    }

    #[tokio::test]
    async fn a_token_from_an_unknown_issuer_is_refused_without_fetching() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let token = key.sign(&with(issuer.claims(), "iss", json!("https://evil.example")));
        let err = v.validate(&token).await.unwrap_err();
        assert_eq!(err, OidcError::UnknownIssuer("https://evil.example".into()));
        assert_eq!(issuer.fetches(), 0);
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_with_the_same_kid_is_refused() {
        let key = SigningKey::es256("k1");
        let forger = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let err = issuer
            .validator()
            .validate(&forger.sign(&issuer.claims()))
            .await
            .unwrap_err();
        assert_eq!(err, OidcError::BadSignature);

        // And a valid token with its payload swapped for another.
        let good = key.sign(&issuer.claims());
        let forged_payload = forger.sign(&with(issuer.claims(), "sub", json!("repo:evil/app")));
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = forged_payload.split('.').nth(1).unwrap();
        let err = issuer.validator().validate(&parts.join(".")).await.unwrap_err();
        assert_eq!(err, OidcError::BadSignature);
    }

    #[tokio::test]
    async fn an_unknown_kid_names_the_kid_and_the_jwks() {
        let key = SigningKey::es256("k1");
        let stranger = SigningKey::es256("who-is-this");
        let issuer = start(&[&key]);
        let err = issuer
            .validator()
            .validate(&stranger.sign(&issuer.claims()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OidcError::UnknownKey { kid, .. } if kid == "who-is-this"),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}/jwks", issuer.url())), "{msg}");
        assert!(
            msg.contains("no key with kid \"who-is-this\" in the issuer's JWKS (fetched "),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn alg_none_and_hmac_tokens_are_refused() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        for alg in ["none", "None"] {
            let token = format!(
                "{}.{}.",
                b64(&json!({ "alg": alg, "typ": "JWT", "kid": "k1" })),
                b64(&issuer.claims())
            );
            assert!(v.is_candidate(&token));
            let err = v.validate(&token).await.unwrap_err();
            assert_eq!(err, OidcError::AlgorithmNotAllowed(alg.into()));
            assert!(
                err.to_string()
                    .starts_with(&format!("`alg: {alg}` tokens are refused")),
                "{err}"
            );
        }

        // HS256 with the issuer's public key as the secret: the classic algorithm confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let secret = EncodingKey::from_secret(key.jwk().to_string().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &issuer.claims(), &secret).unwrap();
        let err = v.validate(&token).await.unwrap_err();
        assert_eq!(err, OidcError::AlgorithmNotAllowed("HS256".into()));
        assert!(err.to_string().contains("only asymmetric"), "{err}");
        assert_eq!(issuer.fetches(), 0);
    }

    #[tokio::test]
    async fn key_rotation_is_picked_up_by_a_rate_limited_refetch() {
        let old = SigningKey::es256("2025");
        let new = SigningKey::es256("2026");
        let issuer = start(&[&old]);
        let v = Arc::new(issuer.validator());
        v.validate(&old.sign(&issuer.claims())).await.unwrap();
        assert_eq!(issuer.fetches(), 1);

        issuer.publish(&[&new]);
        let token = new.sign(&issuer.claims());
        // Within min_refetch_secs of the last fetch: no refetch, the kid is unknown.
        let err = v.validate(&token).await.unwrap_err();
        assert!(matches!(err, OidcError::UnknownKey { .. }), "{err}");
        assert_eq!(issuer.fetches(), 1);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let got = v.validate(&token).await.unwrap();
        assert_eq!(got.subject, "repo:octo-org/app:ref:refs/heads/main");
        assert_eq!(issuer.fetches(), 2);
        // Keys no longer published stop working once the new set is fetched.
        let err = v.validate(&old.sign(&issuer.claims())).await.unwrap_err();
        assert!(matches!(err, OidcError::UnknownKey { .. }), "{err}");
        assert_eq!(issuer.fetches(), 2);

        // Many callers meeting the next rotation at once: one fetch serves them all.
        let newer = SigningKey::es256("2027");
        issuer.publish(&[&new, &newer]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let token = newer.sign(&issuer.claims());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (v, token) = (v.clone(), token.clone());
                tokio::spawn(async move { v.validate(&token).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(issuer.fetches(), 3);
    }

    #[tokio::test]
    async fn stale_keys_are_refetched_after_the_ttl() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = validator(OidcIssuer {
            jwks_ttl_secs: 1,
            min_refetch_secs: 0,
            ..issuer.config()
        });
        let token = key.sign(&issuer.claims());
        v.validate(&token).await.unwrap();
        v.validate(&token).await.unwrap();
        assert_eq!(issuer.fetches(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The refetch fails: the keys already held keep serving.
        issuer.set_jwks_status(503);
        v.validate(&token).await.unwrap();
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test]
    async fn a_jwks_that_cannot_be_fetched_names_the_url() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let token = key.sign(&issuer.claims());

        issuer.set_jwks_status(500);
        let err = issuer.validator().validate(&token).await.unwrap_err();
        let jwks_url = format!("{}/jwks", issuer.url());
        assert!(
            matches!(&err, OidcError::Jwks { url, .. } if *url == jwks_url),
            "{err}"
        );
        assert!(err.to_string().contains("HTTP 500"), "{err}");
        // The failure is remembered: an immediate retry does not hammer the issuer.
        let v = issuer.validator();
        v.validate(&token).await.unwrap_err();
        let fetched = issuer.fetches();
        assert!(matches!(v.validate(&token).await, Err(OidcError::Jwks { .. })));
        assert_eq!(issuer.fetches(), fetched);

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let configured = format!("http://127.0.0.1:{closed}/keys.json");
        let v = validator(OidcIssuer {
            jwks_uri: Some(configured.clone()),
            ..issuer.config()
        });
        let err = v.validate(&token).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::Jwks { url, .. } if *url == configured),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&configured) && msg.contains("cannot connect"),
            "{msg}"
        );

        // Discovery itself unreachable: its URL is named.
        let v = validator(OidcIssuer {
            issuer: format!("http://127.0.0.1:{closed}"),
            ..issuer.config()
        });
        let token = key.sign(&with(
            issuer.claims(),
            "iss",
            json!(format!("http://127.0.0.1:{closed}")),
        ));
        let err = v.validate(&token).await.unwrap_err();
        let discovery = format!("http://127.0.0.1:{closed}/.well-known/openid-configuration");
        assert!(
            matches!(&err, OidcError::Jwks { url, .. } if *url == discovery),
            "{err}"
        );
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_without_echoing_them() {
        let key = SigningKey::es256("k1");
        let issuer = start(&[&key]);
        let v = issuer.validator();
        let secretish = "eyJzZWNyZXQiOiJkbyBub3QgZWNobyJ9";
        for token in [
            "not-a-jwt".to_owned(),
            format!("{secretish}.{secretish}"),
            format!("{secretish}.!!!.sig"),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            let err = v.validate(&token).await.unwrap_err();
            assert!(matches!(err, OidcError::Malformed(_)), "{err}");
            assert!(!err.to_string().contains(secretish), "{err}");
        }
    }
}
