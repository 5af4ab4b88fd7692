//! What the gateway presents upstream: credential profiles (a static token from a file or the
//! gateway's environment, or a GitHub App whose installation tokens are minted per repository),
//! the rules that give callers a profile, and how a token goes on the wire.
//!
//! Callers never see these tokens: whatever credential a caller sends is stripped, and the
//! profile's token injected. Must never print a token (they are [`Secret`]s), and never hand a
//! caller one.
pub mod app;
pub mod secret;

use std::{collections::BTreeMap, sync::Arc};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};

pub use self::secret::Secret;
use crate::{
    config::{CredentialRule, CredentialsConfig, NoProfile},
    glob::glob,
    identity::{Caller, ci},
    outbound::Outbound,
};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    Config(String),
    #[error("cannot mint a GitHub App installation token: {0}")]
    Mint(String),
    #[error(
        "the repository of this request cannot be told from its URL, and the profile has no fallback_permissions"
    )]
    NoRepository,
}

/// Where a profile's token comes from.
#[derive(Debug)]
enum Source {
    Static(Secret),
    App(Box<app::AppMinter>),
}

/// A named credential profile.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    source: Source,
}

impl Profile {
    /// The token for a request to `repo` (a static token whatever the repository).
    pub async fn token(&self, repo: Option<&Repo>) -> Result<Secret, CredentialError> {
        match &self.source {
            Source::Static(t) => Ok(t.clone()),
            Source::App(a) => a.token(repo).await,
        }
    }

    /// The static token, for masking by exact value from the start.
    pub fn static_token(&self) -> Option<&Secret> {
        match &self.source {
            Source::Static(t) => Some(t),
            Source::App(_) => None,
        }
    }
}

/// The profiles and rules of a running gateway.
#[derive(Debug, Default)]
pub struct Broker {
    profiles: BTreeMap<String, Arc<Profile>>,
    rules: Vec<CredentialRule>,
    default: NoProfile,
}

/// What a rule can see of a caller.
pub struct Who<'a> {
    pub caller: &'a Caller,
    /// Claims of the OIDC token the caller presented, once validated.
    pub oidc: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

fn claim_matches(value: Option<&serde_json::Value>, pattern: &str) -> bool {
    match value {
        Some(serde_json::Value::String(s)) => glob(pattern, s),
        Some(serde_json::Value::Array(items)) => {
            items.iter().any(|i| i.as_str().is_some_and(|s| glob(pattern, s)))
        }
        Some(serde_json::Value::Number(n)) => glob(pattern, &n.to_string()),
        Some(serde_json::Value::Bool(b)) => glob(pattern, &b.to_string()),
        _ => false,
    }
}

/// Whether every condition a rule gives holds for `who`.
fn rule_matches(rule: &CredentialRule, who: &Who<'_>) -> bool {
    let c = who.caller;
    let exe = c.exe.as_ref().map(|p| p.display().to_string());
    (rule.uid.is_empty() || rule.uid.contains(&c.uid))
        && (rule.exe.is_empty()
            || exe
                .as_deref()
                .is_some_and(|e| rule.exe.iter().any(|p| glob(p, e))))
        && (rule.cgroup.is_empty()
            || c.cgroup
                .as_deref()
                .is_some_and(|g| rule.cgroup.iter().any(|p| glob(p, g))))
        && (rule.ci_repository.is_empty()
            || ci::get(&c.ci, "GITHUB_REPOSITORY")
                .is_some_and(|r| rule.ci_repository.iter().any(|p| glob(p, r))))
        && (rule.oidc.is_empty()
            || who
                .oidc
                .is_some_and(|claims| rule.oidc.iter().all(|(k, p)| claim_matches(claims.get(k), p))))
}

impl Broker {
    /// Loads every profile's secret: token files (refused when others may read them),
    /// environment variables, GitHub App keys. `outbound` mints app tokens.
    pub fn load(cfg: &CredentialsConfig, outbound: &Outbound) -> Result<Broker, CredentialError> {
        let mut profiles = BTreeMap::new();
        for (name, p) in &cfg.profiles {
            let what = |e: String| CredentialError::Config(format!("credentials.profile.{name}: {e}"));
            let source = if let Some(path) = &p.token_file {
                let bytes = crate::keyfile::read_private(path).map_err(|e| what(e.to_string()))?;
                let token =
                    String::from_utf8(bytes).map_err(|_| what(format!("{} is not text", path.display())))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(what(format!("{} is empty", path.display())));
                }
                Source::Static(Secret::new(token))
            } else if let Some(var) = &p.token_env {
                match std::env::var(var) {
                    Ok(t) if !t.trim().is_empty() => Source::Static(Secret::new(t.trim())),
                    _ => return Err(what(format!("the gateway's environment has no {var}"))),
                }
            } else if let Some(a) = &p.github_app {
                let key =
                    crate::keyfile::read_private(&a.private_key_file).map_err(|e| what(e.to_string()))?;
                Source::App(Box::new(
                    app::AppMinter::new(a, &key, outbound.clone()).map_err(|e| what(e.to_string()))?,
                ))
            } else {
                return Err(what("give token_file, token_env or github_app".into()));
            };
            profiles.insert(
                name.clone(),
                Arc::new(Profile {
                    name: name.clone(),
                    source,
                }),
            );
        }
        Ok(Broker {
            profiles,
            rules: cfg.rules.clone(),
            default: cfg.default,
        })
    }

    /// Whether any profile is configured (else credentials pass as the callers send them).
    pub fn is_active(&self) -> bool {
        !self.profiles.is_empty() || self.default == NoProfile::Refuse
    }

    /// The profile of the first rule `who` matches.
    pub fn profile_for(&self, who: &Who<'_>) -> Option<Arc<Profile>> {
        self.rules
            .iter()
            .find(|r| rule_matches(r, who))
            .and_then(|r| self.profiles.get(&r.profile).cloned())
    }

    pub fn default(&self) -> NoProfile {
        self.default
    }

    /// Whether `token` is one of the static tokens (already in the maskers from the start).
    pub fn is_static(&self, token: &Secret) -> bool {
        self.profiles
            .values()
            .any(|p| p.static_token().is_some_and(|s| s.expose() == token.expose()))
    }

    /// Every static token, to be masked by exact value wherever it shows up.
    pub fn static_tokens(&self) -> Vec<Secret> {
        self.profiles
            .values()
            .filter_map(|p| p.static_token().cloned())
            .collect()
    }
}

/// A repository named by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

/// The repository a request is for: git smart HTTP (`/owner/repo(.git)/info/refs`,
/// `…/git-upload-pack`, `…/git-receive-pack`) and the REST API (`/repos/owner/repo/…`).
pub fn repository(path: &str) -> Option<Repo> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ok = |s: &str| {
        !matches!(s, "" | "." | "..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let repo = |owner: &str, name: &str| {
        let name = name.strip_suffix(".git").unwrap_or(name);
        (ok(owner) && ok(name)).then(|| Repo {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    };
    match parts.as_slice() {
        ["repos", owner, name, ..] => repo(owner, name),
        [owner, name, "info", "refs"] | [owner, name, "git-upload-pack" | "git-receive-pack"] => {
            repo(owner, name)
        }
        _ => None,
    }
}

/// Whether a request is git smart HTTP (which authenticates with basic auth).
pub fn is_git(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.ends_with("/info/refs") || path.ends_with("/git-upload-pack") || path.ends_with("/git-receive-pack")
}

/// The credential a client sent: a bearer/token value, or the password of basic auth.
pub fn presented(headers: &HeaderMap) -> Option<Secret> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, p)| Secret::new(p));
    }
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| Secret::new(rest))
}

/// Replaces whatever credential the client sent with `token`: basic auth as
/// `x-access-token:<token>` for git, `token <token>` for Copilot's token exchange (as its
/// clients send it), `Bearer <token>` for the rest of the API.
pub fn inject(headers: &mut HeaderMap, path: &str, token: &Secret) {
    headers.remove(header::AUTHORIZATION);
    let value = if is_git(path) {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{}", token.expose()));
        format!("Basic {basic}")
    } else if path.starts_with("/copilot_internal/") {
        format!("token {}", token.expose())
    } else {
        format!("Bearer {}", token.expose())
    };
    if let Ok(mut v) = HeaderValue::from_str(&value) {
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_from_urls() {
        let r = |o: &str, n: &str| {
            Some(Repo {
                owner: o.into(),
                name: n.into(),
            })
        };
        assert_eq!(
            repository("/o/r.git/info/refs?service=git-upload-pack"),
            r("o", "r")
        );
        assert_eq!(repository("/o/r/git-receive-pack"), r("o", "r"));
        assert_eq!(repository("/repos/o/r/pulls/1"), r("o", "r"));
        assert_eq!(repository("/graphql"), None);
        assert_eq!(repository("/user"), None);
        assert_eq!(repository("/repos/o/../x"), None);
    }

    #[test]
    fn injection_replaces_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer placeholder".parse().unwrap());
        let t = Secret::new("minted-token-123");
        inject(&mut h, "/o/r.git/git-upload-pack", &t);
        let v = h.get(header::AUTHORIZATION).unwrap().to_str().unwrap().to_owned();
        let b64 = v.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(decoded, b"x-access-token:minted-token-123");
        inject(&mut h, "/repos/o/r", &t);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Bearer minted-token-123");
        inject(&mut h, "/copilot_internal/v2/token", &t);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "token minted-token-123");
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
    }

    #[test]
    fn presented_credentials() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "token abc".parse().unwrap());
        assert_eq!(presented(&h).unwrap().expose(), "abc");
        let basic = base64::engine::general_purpose::STANDARD.encode("x:secretpw");
        h.insert(header::AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(presented(&h).unwrap().expose(), "secretpw");
    }

    #[test]
    fn rules_match_on_every_condition_given() {
        let caller = Caller {
            tgid: 1,
            pid: 1,
            uid: 1000,
            gid: 1000,
            cgroup_id: 1,
            comm: "git".into(),
            exe: Some("/usr/bin/git".into()),
            start_ticks: None,
            cgroup: Some("/system.slice/actions.runner.service".into()),
            ci: vec![("GITHUB_REPOSITORY".into(), "org/app".into())],
        };
        let rule = |toml: &str| toml::from_str::<CredentialRule>(toml).unwrap();
        let who = Who {
            caller: &caller,
            oidc: None,
        };
        assert!(rule_matches(
            &rule("profile = \"p\"\nuid = [1000]\nexe = [\"/usr/bin/*\"]"),
            &who
        ));
        assert!(!rule_matches(&rule("profile = \"p\"\nuid = [0]"), &who));
        assert!(rule_matches(
            &rule("profile = \"p\"\nci_repository = [\"org/*\"]"),
            &who
        ));
        assert!(rule_matches(
            &rule("profile = \"p\"\ncgroup = [\"/system.slice/actions.runner.service\"]"),
            &who
        ));
        assert!(
            !rule_matches(&rule("profile = \"p\"\noidc = { sub = \"*\" }"), &who),
            "no token, no OIDC match"
        );
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"repository": "org/app", "groups": ["dev", "ops"]}"#).unwrap();
        let who = Who {
            caller: &caller,
            oidc: Some(&claims),
        };
        assert!(rule_matches(
            &rule("profile = \"p\"\noidc = { repository = \"org/*\", groups = \"ops\" }"),
            &who
        ));
        assert!(!rule_matches(
            &rule("profile = \"p\"\noidc = { groups = \"admins\" }"),
            &who
        ));
    }
}
