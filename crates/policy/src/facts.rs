//! The facts a policy decides on: who calls (`Subject`, matched by `crate::caller`), what it
//! asks for (`Target`: the request as `classify` read it — host, canonical path, repository, git
//! service, Copilot endpoint) and, for pushes, which ref it updates how (`RefUpdate`).
//!
//! Pure data: this module never reads a file, a socket or the clock, and never guesses a fact
//! it was not given.
use std::fmt;

pub use crate::caller::Subject;
use crate::classify::{Classified, GitHub, Refusal};

/// What the caller asks for: one HTTP request, as the classifier read it (the same reading
/// every other stage has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub req: Classified,
}

impl Target {
    pub fn new(req: Classified) -> Self {
        Self { req }
    }

    /// A request given as a method and URL (`ghgate policy explain`, tests), classified as the
    /// gateway would classify it on a connection to the URL's host.
    pub fn parse(method: &str, url: &str, github: &GitHub) -> Result<Self, Refusal> {
        Classified::from_url(method, url, github).map(Self::new)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}{}",
            self.req.method,
            self.req.host,
            self.req.path_and_query()
        )
    }
}

/// How a pushed ref moves; also what a rule's `ref_op` names (there, `update` names every
/// update, whether its ancestry was checked or not). The git crate's, which records use too.
pub use ghgate_git::RefKind;

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

/// One secret found in what a ref update carries (a pushed file): the masking rule that found
/// it, its keyed fingerprint, whether the gateway has already seen that fingerprint in a response
/// (a suggestion, say), and where it is. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedSecret {
    pub rule: String,
    pub fingerprint: String,
    pub seen_in_response: bool,
    /// The commit that brings it, when the gateway could tell.
    pub commit: Option<ghgate_git::Oid>,
    /// The file it is in, when the gateway could tell.
    pub path: Option<String>,
}

/// The secrets a ref update carries, as far as the gateway scanned them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secrets {
    /// Not scanned yet (the caller scans only when `Policy::needs` says so).
    NotComputed,
    Known(Vec<PushedSecret>),
    /// Could not be scanned whole; the reason is shown to people.
    Unknown(String),
}

/// One ref update of a push (or of a write through the API), as the policy knows it: the update
/// itself (its ids and ref, as the git crate read them), how the ref moves, which files it
/// changes and which secrets it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub update: ghgate_git::RefUpdate,
    pub kind: RefKind,
    pub paths: Paths,
    /// What the request does not tell of the ref: `Some(what it is)` when the ref's name is
    /// unknown ("the base branch of pull request #5"; `update.name` then only describes it). A
    /// condition on it holds for a rule that refuses or holds, and fails for one that passes.
    pub unknown_name: Option<String>,
    /// The same for its repository (a GraphQL node id the gateway cannot name).
    pub unknown_repository: Option<String>,
    pub secrets: Secrets,
    /// Not a ref update but git objects written through the API that no ref points at yet
    /// (`crate::writes::ApiRef::objects`): only rules with a `secrets` or `secret_seen` condition
    /// decide them, their ref conditions read as unknown.
    pub objects_only: bool,
}

impl RefUpdate {
    /// A ref update whose kind is what its ids say (`Create`, `Delete` or `Update`, as
    /// `RefOp` tells them). A delete pushes no commits, so its paths and secrets are known to be
    /// none; otherwise `NotComputed`.
    pub fn new(update: ghgate_git::RefUpdate) -> Self {
        let kind = RefKind::from(update.op());
        let (paths, secrets) = if kind == RefKind::Delete {
            (Paths::Known(Vec::new()), Secrets::Known(Vec::new()))
        } else {
            (Paths::NotComputed, Secrets::NotComputed)
        };
        Self {
            update,
            kind,
            paths,
            unknown_name: None,
            unknown_repository: None,
            secrets,
            objects_only: false,
        }
    }

    /// The ref's full name ("refs/heads/main").
    pub fn name(&self) -> &str {
        &self.update.name
    }

    pub fn with_kind(mut self, kind: RefKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }

    /// A ref the request does not name: `what` describes it, and is what people see as its name.
    pub fn with_unknown_name(mut self, what: impl Into<String>) -> Self {
        let what = what.into();
        self.update.name = format!("({what})");
        self.unknown_name = Some(what);
        self
    }

    pub fn with_unknown_repository(mut self, what: impl Into<String>) -> Self {
        self.unknown_repository = Some(what.into());
        self
    }

    /// Git objects no ref points at yet (see `objects_only`).
    pub fn objects_only(mut self) -> Self {
        self.objects_only = true;
        self
    }

    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }
}

impl fmt::Display for RefUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.update;
        write!(
            f,
            "{} {}..{} ({})",
            u.name,
            u.old.short(),
            u.new.short(),
            self.kind
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(old: &str, new: &str) -> RefUpdate {
        RefUpdate::new(ghgate_git::RefUpdate::new(
            old.parse().unwrap(),
            new.parse().unwrap(),
            "refs/heads/x",
        ))
    }

    #[test]
    fn ref_kinds_from_ids() {
        let z = "0".repeat(40);
        let a = "a".repeat(40);
        assert_eq!(update(&z, &a).kind, RefKind::Create);
        let del = update(&a, &z);
        assert_eq!(del.kind, RefKind::Delete);
        assert_eq!(del.paths, Paths::Known(Vec::new()));
        let upd = update(&a, &"b".repeat(40));
        assert_eq!(upd.kind, RefKind::Update);
        assert_eq!(upd.paths, Paths::NotComputed);
        // Zero to zero deletes, as git's receive-pack reads it (this copy once said create).
        assert_eq!(update(&z, &z).kind, RefKind::Delete);
        assert_eq!(upd.to_string(), "refs/heads/x aaaaaaa..bbbbbbb (update)");
    }
}
