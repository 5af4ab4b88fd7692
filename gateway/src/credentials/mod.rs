//! What the gateway presents upstream: credential profiles (a static token from a file or the
//! gateway's environment, or a GitHub App whose installation tokens are minted per repository),
//! the rules that give callers a profile, and how a token goes on the wire.
//!
//! Callers never see these tokens: whatever credential a caller with a profile sends is
//! stripped, and the profile's token injected only where it belongs ([`scheme`]): GitHub's REST
//! API and GraphQL on the API host, git smart HTTP and LFS on the web host, Copilot's token
//! exchange. Never user content, never any other host, never a WebSocket upgrade. Must never
//! print a token (they are [`Secret`]s), and never hand a caller one.
pub mod app;
pub mod secret;

use std::{collections::BTreeMap, sync::Arc};

use base64::Engine as _;
use ghgate_policy::{
    Subject,
    caller::{CallerMatch, ConditionError},
    classify::{Classified, GitHub, Kind, Repo},
};
use http::{HeaderMap, HeaderValue, header};

pub use self::secret::Secret;
use crate::{
    config::{CredentialsConfig, NoProfile},
    outbound::Outbound,
};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    Config(String),
    /// A `[[credentials.rule]]` whose conditions could never match (`index` from 0, as
    /// configuration errors count).
    #[error("credentials.rule[{index}]: {source}")]
    Rule { index: usize, source: ConditionError },
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
    /// The token for a request to `repo` by a caller in `cgroup` (a static token whatever
    /// the repository).
    pub async fn token(&self, repo: Option<&Repo>, cgroup: u64) -> Result<Secret, CredentialError> {
        match &self.source {
            Source::Static(t) => Ok(t.clone()),
            Source::App(a) => a.token(repo, cgroup).await,
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
    /// Each rule's profile and its conditions, built by the caller matcher the policy uses.
    rules: Vec<(String, CallerMatch)>,
    default: NoProfile,
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
        let rules = cfg
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let caller = r
                    .caller()
                    .map_err(|source| CredentialError::Rule { index, source })?;
                Ok((r.profile.clone(), caller))
            })
            .collect::<Result<_, CredentialError>>()?;
        Ok(Broker {
            profiles,
            rules,
            default: cfg.default,
        })
    }

    /// Whether any profile is configured (else credentials pass as the callers send them).
    pub fn is_active(&self) -> bool {
        !self.profiles.is_empty() || self.default == NoProfile::Refuse
    }

    /// The profile of the first rule the caller matches.
    pub fn profile_for(&self, subject: &Subject) -> Option<Arc<Profile>> {
        self.rules
            .iter()
            .find(|(_, caller)| caller.matches(subject))
            .and_then(|(profile, _)| self.profiles.get(profile).cloned())
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

/// How a brokered token goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Basic auth as `x-access-token:<token>`: git smart HTTP and LFS.
    Basic,
    /// `token <token>`: Copilot's token exchange (as its clients send it).
    Token,
    /// `Bearer <token>`: the REST and GraphQL API.
    Bearer,
}

/// Whether a request takes the brokered token, and how: the REST API and GraphQL (the API
/// host), git smart HTTP and LFS on the web host, Copilot's token exchange. `None` for
/// everything else: user content, Copilot's own hosts, other hosts, WebSocket upgrades.
pub fn scheme(req: &Classified, github: &GitHub) -> Option<Scheme> {
    if req.websocket {
        return None;
    }
    match req.kind {
        Kind::RestApi if req.copilot.is_some() => Some(Scheme::Token),
        Kind::RestApi | Kind::GraphQl => Some(Scheme::Bearer),
        Kind::Git if req.host == github.web_host() => Some(Scheme::Basic),
        _ => None,
    }
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

/// Removes the credential a client sent (for a caller with a profile: its own credential goes
/// nowhere).
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
}

/// Replaces whatever credential the client sent with `token`, in the request's `scheme`.
pub fn inject(headers: &mut HeaderMap, scheme: Scheme, token: &Secret) {
    strip(headers);
    let value = match scheme {
        Scheme::Basic => {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("x-access-token:{}", token.expose()));
            format!("Basic {basic}")
        }
        Scheme::Token => format!("token {}", token.expose()),
        Scheme::Bearer => format!("Bearer {}", token.expose()),
    };
    if let Ok(mut v) = HeaderValue::from_str(&value) {
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::CredentialRule, identity::Caller};

    fn classified(method: &str, url: &str) -> Classified {
        Classified::from_url(method, url, &GitHub::default()).unwrap()
    }

    #[test]
    fn tokens_go_only_where_they_belong() {
        let g = GitHub::default();
        let cases = [
            ("GET", "https://api.github.com/repos/o/r", Some(Scheme::Bearer)),
            ("POST", "https://api.github.com/graphql", Some(Scheme::Bearer)),
            (
                "GET",
                "https://api.github.com/copilot_internal/v2/token",
                Some(Scheme::Token),
            ),
            (
                "POST",
                "https://uploads.github.com/repos/o/r/releases/1/assets",
                Some(Scheme::Bearer),
            ),
            (
                "GET",
                "https://github.com/o/r.git/info/refs?service=git-upload-pack",
                Some(Scheme::Basic),
            ),
            (
                "POST",
                "https://github.com/o/r.git/git-receive-pack",
                Some(Scheme::Basic),
            ),
            (
                "POST",
                "https://github.com/o/r.git/info/lfs/objects/batch",
                Some(Scheme::Basic),
            ),
            (
                "GET",
                "https://raw.githubusercontent.com/o/r/main/README.md",
                None,
            ),
            (
                "GET",
                "https://objects.githubusercontent.com/github-production-release-asset/1",
                None,
            ),
            ("GET", "https://avatars.githubusercontent.com/u/1", None),
            ("GET", "https://o.github.io/r/", None),
            ("POST", "https://api.githubcopilot.com/chat/completions", None),
            ("GET", "https://codeload.github.com/o/r/tar.gz/main", None),
            ("GET", "https://github.com/o/r/pulls", None),
            ("GET", "https://example.com/repos/o/r", None),
        ];
        for (method, url, want) in cases {
            assert_eq!(scheme(&classified(method, url), &g), want, "{method} {url}");
        }
        let mut ws = classified("GET", "https://api.github.com/ws");
        ws.websocket = true;
        assert_eq!(scheme(&ws, &g), None, "never on a WebSocket upgrade");
        // A git path on another host the gateway terminates is still git (the policy sees a
        // push), but no token goes there.
        let elsewhere = classified("POST", "https://gist.github.com/o/r.git/git-receive-pack");
        assert!(elsewhere.is_push());
        assert_eq!(scheme(&elsewhere, &g), None);
    }

    #[test]
    fn injection_replaces_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer placeholder".parse().unwrap());
        let t = Secret::new("minted-token-123");
        inject(&mut h, Scheme::Basic, &t);
        let v = h.get(header::AUTHORIZATION).unwrap().to_str().unwrap().to_owned();
        let b64 = v.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(decoded, b"x-access-token:minted-token-123");
        inject(&mut h, Scheme::Bearer, &t);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Bearer minted-token-123");
        inject(&mut h, Scheme::Token, &t);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "token minted-token-123");
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        strip(&mut h);
        assert!(h.get(header::AUTHORIZATION).is_none());
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

    /// Whether a credential rule with `conditions` gives `subject` its profile.
    fn credential_rule(conditions: &str, subject: &Subject) -> bool {
        toml::from_str::<CredentialRule>(&format!("profile = \"p\"\n{conditions}"))
            .unwrap_or_else(|e| panic!("{conditions}: {e}"))
            .caller()
            .unwrap_or_else(|e| panic!("{conditions}: {e}"))
            .matches(subject)
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
            login: crate::identity::Login::default(),
        };
        let s = crate::identity::subject(&caller, None);
        assert!(credential_rule("uid = [1000]\nexe = [\"/usr/bin/*\"]", &s));
        assert!(!credential_rule("uid = [0]", &s));
        assert!(credential_rule("ci_repository = [\"org/*\"]", &s));
        assert!(credential_rule(
            "cgroup = [\"/system.slice/actions.runner.service\"]",
            &s
        ));
        assert!(
            !credential_rule("oidc = { sub = \"*\" }", &s),
            "no token, no OIDC match"
        );
        assert!(credential_rule("", &s), "no conditions: every caller");
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"repository": "org/app", "groups": ["dev", "ops"]}"#).unwrap();
        let s = crate::identity::subject(&caller, Some(&claims));
        assert!(credential_rule(
            "oidc = { repository = \"org/*\", groups = \"ops\" }",
            &s
        ));
        assert!(!credential_rule("oidc = { groups = \"admins\" }", &s));
    }

    #[test]
    fn rules_that_could_never_match_are_refused() {
        let rule = |conditions: &str| {
            toml::from_str::<CredentialRule>(&format!("profile = \"p\"\n{conditions}"))
                .unwrap()
                .caller()
                .unwrap_err()
                .to_string()
        };
        // An empty list once matched every caller: a profile for everyone, by a typo.
        assert!(rule("uid = []").contains("`uid` is an empty list"));
        assert!(rule("oidc = {}").contains("`oidc` is an empty table"));
        assert!(rule("ci_repository = [\"org\"]").contains("is not owner/name"));
    }

    /// Credential rules and policy rules match callers with one matcher (`ghgate_policy::caller`),
    /// so a condition written alike in both matches the same callers. Before, they disagreed on
    /// array claims (credential rules read only the string members of a list, so `[7]` never
    /// matched "7"), on null and object claims (policy rules globbed their JSON text, so "*"
    /// matched `null`), and on CI repositories (credential rules compared them with case).
    #[test]
    fn credential_rules_and_policy_rules_read_a_caller_alike() {
        use std::path::Path;

        use ghgate_policy::{Policy, Target};

        let claims = serde_json::json!({
            "sub": "repo:Org/App:ref:refs/heads/main",
            "groups": ["dev", 7, true],
            "none": null,
            "object": {"role": "admin"},
        });
        let s = Subject {
            uid: 1000,
            exe: Some("/usr/bin/git".into()),
            comm: "git".into(),
            ci_repository: Some("Org/App".into()),
            oidc: claims.as_object().cloned(),
            ..Subject::default()
        };
        let cases = [
            ("oidc = { groups = \"dev\" }", true),
            ("oidc = { groups = \"d*\" }", true),
            // Members that are numbers or booleans match as their text (credential rules: new).
            ("oidc = { groups = \"7\" }", true),
            ("oidc = { groups = 7 }", true),
            ("oidc = { groups = true }", true),
            ("oidc = { groups = \"ops\" }", false),
            // Null and objects have no text (policy rules: new).
            ("oidc = { none = \"*\" }", false),
            ("oidc = { object = \"*admin*\" }", false),
            ("oidc = { missing = \"*\" }", false),
            // Claims compare exactly; CI repositories ignore case (credential rules: new).
            ("oidc = { sub = \"repo:Org/App:*\" }", true),
            ("oidc = { sub = \"repo:org/app:*\" }", false),
            ("ci_repository = [\"org/app\"]", true),
            ("ci_repository = [\"ORG/*\"]", true),
            ("ci_repository = [\"other/*\"]", false),
            ("exe = [\"/usr/bin/*\"]", true),
            ("exe = [\"/USR/bin/*\"]", false),
            ("uid = [1000]", true),
            ("uid = [0, 1]", false),
            ("cgroup = [\"*\"]", false),
        ];
        let target = Target::parse("GET", "https://api.github.com/user", &GitHub::default()).unwrap();
        for (condition, want) in cases {
            assert_eq!(
                credential_rule(condition, &s),
                want,
                "credential rule: {condition}"
            );
            let policy = Policy::parse(
                &format!("[[rule]]\naction = \"deny\"\n{condition}\n"),
                Path::new("policy.toml"),
            )
            .unwrap();
            let matched = policy.evaluate(&s, &target, None).rule.index == Some(1);
            assert_eq!(matched, want, "policy rule: {condition}");
        }
    }
}
