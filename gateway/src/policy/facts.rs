//! The facts a policy decides on: who calls (`Subject`), what it asks for (`Target`) and, for
//! pushes, which ref it updates how (`RefUpdate`), with what the gateway derives from a request
//! URL (repository, git service, Copilot endpoint).
//!
//! Pure data and string work: this module never reads a file, a socket or the clock, and never
//! guesses a fact it was not given.
//!
//! Copilot endpoints (`Target::copilot`), by host and path (query stripped, ASCII case ignored):
//!
//! - on `*.githubcopilot.com` and `copilot-proxy.githubusercontent.com`:
//!   - `completions`: `/v1/completions`, `/v1/engines/*/completions`, `/completions`
//!   - `chat`: `/chat/completions`, `/v1/chat/completions`, `/responses`
//!   - `embeddings`: `/embeddings`, `/v1/embeddings`
//!   - `models`: `/models`, `/models/*`
//!   - `agents`: `/agents*`
//!   - `other`: anything else
//! - on `api.github.com`:
//!   - `token`: `/copilot_internal/*token*`
//!   - `user`: `/copilot_internal/user`
//!   - `other`: any other `/copilot_internal/*`
use std::fmt;

use crate::glob::glob;

/// Who is calling, as the identity stage established it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub uid: u32,
    /// The user name of `uid` (from /etc/passwd), when it has one.
    pub user: Option<String>,
    /// The executable, when the process was still there to ask.
    pub exe: Option<String>,
    pub comm: String,
    /// The cgroup v2 path ("/ghgate.clients/job-1").
    pub cgroup: Option<String>,
    /// `GITHUB_REPOSITORY`, `GITHUB_WORKFLOW` and `GITHUB_REF` of the caller's CI job.
    pub ci_repository: Option<String>,
    pub ci_workflow: Option<String>,
    pub ci_ref: Option<String>,
    /// Claims of an OIDC token the caller presented and the gateway validated.
    pub oidc: Option<serde_json::Map<String, serde_json::Value>>,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={}", self.uid)?;
        let fields = [
            ("user", self.user.as_deref()),
            ("comm", Some(self.comm.as_str()).filter(|c| !c.is_empty())),
            ("exe", self.exe.as_deref()),
            ("cgroup", self.cgroup.as_deref()),
            ("ci_repository", self.ci_repository.as_deref()),
            ("ci_workflow", self.ci_workflow.as_deref()),
            ("ci_ref", self.ci_ref.as_deref()),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                write!(f, " {k}={v}")?;
            }
        }
        if let Some(claims) = &self.oidc {
            for (k, v) in claims {
                match v {
                    serde_json::Value::String(s) => write!(f, " oidc.{k}={s}")?,
                    other => write!(f, " oidc.{k}={other}")?,
                }
            }
        }
        Ok(())
    }
}

/// What the caller asks for: one HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The host the client reached (SNI or Host), without port.
    pub host: String,
    pub method: String,
    /// The request target's path; may carry `?query`, which is ignored for matching.
    pub path: String,
}

/// The two git smart-HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GitService {
    /// A push.
    ReceivePack,
    /// A fetch or clone.
    UploadPack,
}

impl GitService {
    pub fn as_str(self) -> &'static str {
        match self {
            GitService::ReceivePack => "receive-pack",
            GitService::UploadPack => "upload-pack",
        }
    }
}

impl fmt::Display for GitService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every name `Target::copilot` can give, which is what a `copilot` condition may list.
pub const COPILOT_NAMES: &[&str] = &[
    "completions",
    "chat",
    "embeddings",
    "models",
    "agents",
    "token",
    "user",
    "other",
];

impl Target {
    pub fn new(host: impl Into<String>, method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            method: method.into(),
            path: path.into(),
        }
    }

    /// The host as rules see it: lower case, without a trailing dot or a port.
    pub fn norm_host(&self) -> String {
        let mut h = self.host.trim().to_ascii_lowercase();
        if let Some((name, port)) = h.rsplit_once(':')
            && !name.contains(':')
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            h.truncate(name.len());
        }
        while h.ends_with('.') {
            h.pop();
        }
        h
    }

    /// The path as rules see it: no query or fragment, percent-escapes of unreserved characters
    /// decoded (GitHub reads `%61` as `a`, so a rule must too).
    pub fn norm_path(&self) -> String {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        decode_unreserved(&self.path[..end])
    }

    /// The value of one query parameter (undecoded), if the path has it.
    fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.path.split_once('?')?;
        let query = query.split('#').next().unwrap_or_default();
        query.split('&').find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            _ => None,
        })
    }

    /// The repository ("owner/name") the request is about: `/repos/{o}/{r}/…` of the REST API
    /// (also under GHES' `/api/v3`), and the git smart-HTTP and LFS paths
    /// `/{o}/{r}(.git)/info/refs|info/lfs/…|git-upload-pack|git-receive-pack`.
    pub fn repository(&self) -> Option<String> {
        let path = self.norm_path();
        // Matched ignoring case, as a rule matching the path does: the riskier reading.
        let lower = path.to_ascii_lowercase();
        let start = if lower.starts_with("/api/v3/") {
            "/api/v3".len()
        } else {
            0
        };
        let segs: Vec<&str> = path[start..].split('/').skip(1).collect();
        let lsegs: Vec<&str> = lower[start..].split('/').skip(1).collect();
        let (owner, name) = match lsegs.as_slice() {
            ["repos", _, _, ..] => (segs[1], segs[2]),
            [_, _, "info", "refs"] | [_, _, "git-upload-pack"] | [_, _, "git-receive-pack"] => {
                (segs[0], segs[1])
            }
            [_, _, "info", "lfs", ..] => (segs[0], segs[1]),
            _ => return None,
        };
        let name = match name.len().checked_sub(4) {
            Some(cut) if name[cut..].eq_ignore_ascii_case(".git") => &name[..cut],
            _ => name,
        };
        (!owner.is_empty() && !name.is_empty()).then(|| format!("{owner}/{name}"))
    }

    /// The git service of a smart-HTTP request: the POST to `…/git-receive-pack` or
    /// `…/git-upload-pack`, or the ref advertisement `…/info/refs?service=git-…`.
    pub fn git_service(&self) -> Option<GitService> {
        let path = self.norm_path().to_ascii_lowercase();
        let service = if path.ends_with("/info/refs") {
            self.query_param("service")?.to_ascii_lowercase()
        } else {
            path.rsplit('/').next()?.to_owned()
        };
        match service.as_str() {
            "git-receive-pack" => Some(GitService::ReceivePack),
            "git-upload-pack" => Some(GitService::UploadPack),
            _ => None,
        }
    }

    /// Which Copilot endpoint this is (the table in the module doc), `None` when not Copilot.
    pub fn copilot(&self) -> Option<&'static str> {
        let host = self.norm_host();
        let path = self.norm_path().to_ascii_lowercase();
        if host == "api.github.com" {
            return match path.as_str() {
                "/copilot_internal/user" => Some("user"),
                p if glob("/copilot_internal/*token*", p) => Some("token"),
                p if p.starts_with("/copilot_internal/") => Some("other"),
                _ => None,
            };
        }
        if !(glob("*.githubcopilot.com", &host) || host == "copilot-proxy.githubusercontent.com") {
            return None;
        }
        let path = path.trim_end_matches('/');
        let name = match path {
            "/v1/completions" | "/completions" => "completions",
            p if glob("/v1/engines/*/completions", p) => "completions",
            "/chat/completions" | "/v1/chat/completions" | "/responses" => "chat",
            "/embeddings" | "/v1/embeddings" => "embeddings",
            "/models" => "models",
            p if p.starts_with("/models/") => "models",
            p if p.starts_with("/agents") => "agents",
            _ => "other",
        };
        Some(name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}{}", self.method, self.host, self.path)
    }
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3 says those are the same
/// URI either way); every other escape stays as it is.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(c) = hex_pair(b[i + 1], b[i + 2])
            && (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(c as char);
            i += 3;
            continue;
        }
        let ch = path[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn hex_pair(h: u8, l: u8) -> Option<u8> {
    let v = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(v(h)? * 16 + v(l)?)
}

/// How a pushed ref moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Create,
    Delete,
    FastForward,
    NonFastForward,
    /// An update whose ancestry has not been checked yet.
    Update,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Create => "create",
            RefKind::Delete => "delete",
            RefKind::FastForward => "fast-forward",
            RefKind::NonFastForward => "non-fast-forward",
            RefKind::Update => "update",
        }
    }
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The files the pushed commits change, as far as the gateway worked them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// Not looked at yet (the caller computes them only when `Policy::needs` says so).
    NotComputed,
    /// Repository-relative paths ("src/main.rs", ".github/workflows/ci.yml").
    Known(Vec<String>),
    /// Could not be worked out; the reason is shown to people ("the pack exceeded 64 MiB").
    Unknown(String),
}

/// One ref update of a push (one command of the receive-pack request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref name ("refs/heads/main").
    pub name: String,
    /// Object ids in hex; all zeros means none (a create has no old, a delete no new).
    pub old: String,
    pub new: String,
    pub kind: RefKind,
    pub paths: Paths,
}

impl RefUpdate {
    /// A ref update whose kind is told from its ids alone: `Create`, `Delete` or `Update`. A
    /// delete pushes no commits, so its paths are known to be none; otherwise `NotComputed`.
    pub fn new(name: impl Into<String>, old: impl Into<String>, new: impl Into<String>) -> Self {
        let (old, new) = (old.into(), new.into());
        let zero = |id: &str| id.bytes().all(|b| b == b'0');
        let kind = match (zero(&old), zero(&new)) {
            (true, _) => RefKind::Create,
            (false, true) => RefKind::Delete,
            (false, false) => RefKind::Update,
        };
        let paths = if kind == RefKind::Delete {
            Paths::Known(Vec::new())
        } else {
            Paths::NotComputed
        };
        Self {
            name: name.into(),
            old,
            new,
            kind,
            paths,
        }
    }

    pub fn with_kind(mut self, kind: RefKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &str| id.get(..7).unwrap_or(id).to_owned();
        write!(
            f,
            "{} {}..{} ({})",
            self.name,
            short(&self.old),
            short(&self.new),
            self.kind
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, method: &str, path: &str) -> Target {
        Target::new(host, method, path)
    }

    #[test]
    fn repository_of_rest_and_git_paths() {
        let cases = [
            ("/repos/o/r", Some("o/r")),
            ("/repos/o/r/actions/runs?page=2", Some("o/r")),
            ("/api/v3/repos/o/r/pulls", Some("o/r")),
            ("/o/r.git/info/refs?service=git-receive-pack", Some("o/r")),
            ("/o/r/info/refs?service=git-upload-pack", Some("o/r")),
            ("/o/r.git/git-receive-pack", Some("o/r")),
            ("/o/r/git-upload-pack", Some("o/r")),
            ("/o/r.git/info/lfs/objects/batch", Some("o/r")),
            ("/%6F/r/git-upload-pack", Some("o/r")),
            ("/REPOS/O/R/contents", Some("O/R")),
            ("/o/r.GIT/Git-Receive-Pack", Some("o/r")),
            ("/repos/o", None),
            ("/graphql", None),
            ("/o/r/pull/1", None),
            ("/user/repos", None),
        ];
        for (path, want) in cases {
            assert_eq!(
                t("github.com", "GET", path).repository().as_deref(),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn git_service_of_paths() {
        let cases = [
            ("/o/r.git/git-receive-pack", Some(GitService::ReceivePack)),
            ("/o/r.git/git-upload-pack", Some(GitService::UploadPack)),
            (
                "/o/r.git/info/refs?service=git-receive-pack",
                Some(GitService::ReceivePack),
            ),
            (
                "/o/r.git/info/refs?x=1&service=git-upload-pack",
                Some(GitService::UploadPack),
            ),
            ("/o/r.git/info/refs", None),
            ("/o/r.git/GIT-RECEIVE-PACK", Some(GitService::ReceivePack)),
            ("/o/r.git/info/refs?service=git-frob", None),
            ("/repos/o/r/git/refs", None),
        ];
        for (path, want) in cases {
            assert_eq!(t("github.com", "POST", path).git_service(), want, "{path}");
        }
    }

    #[test]
    fn copilot_table() {
        let cases = [
            ("api.githubcopilot.com", "/chat/completions", Some("chat")),
            (
                "api.individual.githubcopilot.com",
                "/v1/chat/completions?x",
                Some("chat"),
            ),
            (
                "copilot-proxy.githubusercontent.com",
                "/v1/engines/copilot-codex/completions",
                Some("completions"),
            ),
            (
                "proxy.individual.githubcopilot.com",
                "/v1/completions",
                Some("completions"),
            ),
            ("api.githubcopilot.com", "/embeddings", Some("embeddings")),
            ("api.githubcopilot.com", "/models", Some("models")),
            ("api.githubcopilot.com", "/models/gpt-4o/policy", Some("models")),
            ("api.githubcopilot.com", "/agents/github/chat", Some("agents")),
            ("api.githubcopilot.com", "/telemetry", Some("other")),
            ("API.GithubCopilot.com.", "/Chat/Completions", Some("chat")),
            ("api.github.com", "/copilot_internal/v2/token", Some("token")),
            ("api.github.com", "/copilot_internal/user", Some("user")),
            (
                "api.github.com",
                "/copilot_internal/content_exclusion",
                Some("other"),
            ),
            ("api.github.com", "/repos/o/r", None),
            ("github.com", "/chat/completions", None),
            ("githubcopilot.com.evil.example", "/chat/completions", None),
        ];
        for (host, path, want) in cases {
            assert_eq!(t(host, "POST", path).copilot(), want, "{host}{path}");
            if let Some(name) = want {
                assert!(COPILOT_NAMES.contains(&name));
            }
        }
    }

    #[test]
    fn hosts_and_paths_are_normalised() {
        assert_eq!(t("GitHub.com.:443", "GET", "/").norm_host(), "github.com");
        assert_eq!(t("[::1]", "GET", "/").norm_host(), "[::1]");
        assert_eq!(t("h", "GET", "/repos/%6Frg/r?q=%6F").norm_path(), "/repos/org/r");
        // An escaped slash is not the same URI as a slash: left alone.
        assert_eq!(t("h", "GET", "/a%2Fb%").norm_path(), "/a%2Fb%");
        assert_eq!(t("h", "GET", "/é%7e").norm_path(), "/é~");
    }

    #[test]
    fn ref_kinds_from_ids() {
        let z = "0".repeat(40);
        let a = "a".repeat(40);
        assert_eq!(RefUpdate::new("refs/heads/x", &z, &a).kind, RefKind::Create);
        let del = RefUpdate::new("refs/heads/x", &a, &z);
        assert_eq!(del.kind, RefKind::Delete);
        assert_eq!(del.paths, Paths::Known(Vec::new()));
        let upd = RefUpdate::new("refs/heads/x", &a, "b".repeat(40));
        assert_eq!(upd.kind, RefKind::Update);
        assert_eq!(upd.paths, Paths::NotComputed);
    }
}
