//! Repository writes through GitHub's API, read as the ref updates they are: the same facts a
//! push yields (repository, ref, how it moves, which files change where the request says), so
//! that the same rules decide them.
//!
//! REST (`/repos/{o}/{r}/…` and `/repositories/{id}/…`, on the API and uploads hosts, GHES's
//! `/api/v3` prefix apart):
//!
//! | request | ref updates |
//! |---|---|
//! | `POST git/refs` `{ref, sha}` | create `ref` |
//! | `PATCH git/refs/{ref}` `{sha, force}` | `refs/{ref}`: fast-forward, non-fast-forward with `force: true` |
//! | `DELETE git/refs/{ref}` | delete `refs/{ref}` |
//! | `PUT`/`DELETE contents/{path}` `{branch}` | fast-forward of `branch` (the default branch when absent), changing `path` |
//! | `PUT pulls/{n}/merge`, `PUT pulls/{n}/update-branch` | fast-forward of the pull request's base (head) branch, unnamed |
//! | `POST merges` `{base, head}`, `POST merge-upstream` `{branch}` | fast-forward of `base` / `branch` |
//! | `POST branches/{b}/rename` `{new_name}` | delete `b`, create `new_name` |
//! | `POST releases` `{tag_name}`, `PATCH releases/{id}` `{tag_name}` | create `refs/tags/{tag_name}` |
//! | `DELETE` the repository, `POST transfer` | delete of every ref (unnamed) |
//! | `POST git/blobs`, `git/trees`, `git/commits`, `git/tags` | none: the git objects they create (`ApiRef::objects`), carrying the blob, each tree entry's inline `content`, a commit's or tag's text; rules on secrets decide them |
//!
//! Writes that change what protects the refs (branch and tag protection, rulesets, the
//! repository's name, visibility, default branch or archiving) and every write this module does
//! not know are *unknown writes*: the policy's `unknown_write` decides them unless a rule names
//! the request. Writes that touch neither refs nor their protection (issues, comments, reviews,
//! labels, statuses, checks, …) are ordinary requests.
//!
//! GraphQL: see [`graphql`]. `X-HTTP-Method-Override` (and its two other spellings) is read
//! as well as the method: a request is read under each, and what any reading writes counts.
//!
//! Pure: no I/O. Never guesses the safer answer: what it cannot read is unknown, and a ref or
//! repository the request does not name is carried as unknown (`RefUpdate::unknown_name`).
pub mod graphql;
mod json;
#[cfg(test)]
mod tests;

use std::fmt;

use ghgate_git::{ObjectFormat, Oid};
use ghgate_mask::encoding::Decoder;
use http::Method;

use crate::{
    classify::{Classified, GitHub, Kind, Repo},
    facts::{Paths, RefKind, RefUpdate, Secrets, Target},
};

/// The headers a client may use to ask for another method than the one it sends.
pub const METHOD_OVERRIDE_HEADERS: &[&str] =
    &["x-http-method-override", "x-http-method", "x-method-override"];

/// Which repository a ref update is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoFact {
    /// The one the request's URL names.
    Request,
    Named(Repo),
    /// A GraphQL node id ("R_kgDO…"), which the gateway cannot name.
    Node(String),
}

/// A ref's name, or what the request says of a ref it does not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefName {
    Named(String),
    Unknown(String),
}

/// One ref update a write through the API makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRef {
    /// The request it comes from, for people ("DELETE git/refs", "GraphQL deleteRef").
    pub via: String,
    pub repository: RepoFact,
    pub name: RefName,
    pub kind: RefKind,
    /// The commit the ref moves to, when the request gives it.
    pub new: Option<Oid>,
    pub paths: Paths,
    /// The files the request itself carries to the ref, decoded (a contents `PUT`'s
    /// `content`, `createCommitOnBranch`'s additions): what the gateway scans for secrets.
    pub contents: Vec<FileContent>,
    /// The secrets those carry: `Known(none)` when the request carries no file contents (the
    /// ref moves to commits upstream already has, as a push without a pack does), `NotComputed`
    /// until the gateway scans `contents`, `Unknown` when they cannot be decoded.
    pub secrets: Secrets,
    /// Not a ref update but the git objects a request creates without moving a ref (`POST
    /// git/blobs`, `git/trees` with inline content, `git/commits`, `git/tags`): once created they
    /// are on GitHub, reachable by id, and the ref update that later points at them carries
    /// nothing the gateway can scan. Only rules on secrets decide them (`crate::eval`), with
    /// the ref they may land on read as unknown.
    pub objects: bool,
}

/// One file a write through the API carries, decoded as GitHub would store it. A file whose
/// encoding GitHub might read two ways is carried once per reading.
#[derive(Clone, PartialEq, Eq)]
pub struct FileContent {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for FileContent {
    // Never the contents: they may be the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileContent({:?}, {} bytes)", self.path, self.bytes.len())
    }
}

/// File contents as GitHub's API carries them (base64), decoded every way GitHub might read
/// them: line breaks and other whitespace dropped, padding optional; the URL-safe alphabet read
/// both as itself and with its two characters dropped (as a lenient decoder does). Anything
/// else (a character of neither alphabet, padding mid-text, both alphabets at once) is `Err`:
/// the gateway cannot tell what would be stored, so it counts as unscanned.
pub fn base64_readings(text: &str) -> Result<Vec<Vec<u8>>, String> {
    use base64::{
        Engine as _, alphabet,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let standard = GeneralPurpose::new(&alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, config);
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let not_base64 = || "its content is not base64 the gateway can read".to_owned();
    let has = |set: &[char]| compact.contains(set);
    match (has(&['+', '/']), has(&['-', '_'])) {
        (true, true) => Err(not_base64()),
        (_, false) => standard
            .decode(&compact)
            .map(|b| vec![b])
            .map_err(|_| not_base64()),
        (false, true) => {
            let own = url_safe.decode(&compact).map_err(|_| not_base64())?;
            let dropped: String = compact.chars().filter(|c| !matches!(c, '-' | '_')).collect();
            let mut out = vec![own];
            if let Ok(b) = standard.decode(&dropped) {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// The files of `(path, base64 text)` pairs, decoded; `Err` when one cannot be.
fn decoded_files<'a>(
    files: impl IntoIterator<Item = (String, Option<&'a str>)>,
) -> Result<Vec<FileContent>, String> {
    let mut out = Vec::new();
    for (path, text) in files {
        let Some(text) = text else {
            return Err(format!("the content of {path} is not a string"));
        };
        for bytes in base64_readings(text).map_err(|why| format!("{path}: {why}"))? {
            out.push(FileContent {
                path: path.clone(),
                bytes,
            });
        }
    }
    Ok(out)
}

impl ApiRef {
    fn new(via: impl Into<String>, name: RefName, kind: RefKind) -> Self {
        let paths = if kind == RefKind::Delete {
            Paths::Known(Vec::new())
        } else {
            Paths::Unknown("the request does not carry the commits' changes".into())
        };
        ApiRef {
            via: via.into(),
            repository: RepoFact::Request,
            name,
            kind,
            new: None,
            paths,
            contents: Vec::new(),
            secrets: Secrets::Known(Vec::new()),
            objects: false,
        }
    }

    /// The git objects a request creates (see `objects`), carrying `files`.
    fn objects(via: impl Into<String>, paths: Paths, files: Result<Vec<FileContent>, String>) -> Self {
        let mut out = ApiRef::new(
            via,
            RefName::Unknown("no ref yet: the git objects it creates".into()),
            RefKind::Create,
        )
        .with_paths(paths)
        .with_contents(files);
        out.objects = true;
        out
    }

    /// The files the request carries to the ref, decoded (`Err`: why they cannot be).
    pub(crate) fn with_contents(mut self, files: Result<Vec<FileContent>, String>) -> Self {
        match files {
            Ok(files) => {
                self.secrets = if files.is_empty() {
                    Secrets::Known(Vec::new())
                } else {
                    Secrets::NotComputed
                };
                self.contents = files;
            }
            Err(why) => {
                self.contents = Vec::new();
                self.secrets = Secrets::Unknown(why);
            }
        }
        self
    }

    fn in_repo(mut self, repository: RepoFact) -> Self {
        self.repository = repository;
        self
    }

    fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }

    fn with_new(mut self, new: Option<&str>) -> Self {
        self.new = new.and_then(|s| s.parse().ok());
        self
    }

    /// The facts the policy decides on: the request with this ref's repository, and the ref
    /// update (ids the request does not give are zero).
    pub fn facts(&self, target: &Target) -> (Target, RefUpdate) {
        let mut req = target.req.clone();
        if let RepoFact::Named(r) = &self.repository {
            req.repository = Some(r.clone());
        }
        let format = self.new.map_or(ObjectFormat::Sha1, |o| o.format());
        let zero = Oid::zero(format);
        let new = if self.kind == RefKind::Delete {
            zero
        } else {
            self.new.unwrap_or(zero)
        };
        let name = match &self.name {
            RefName::Named(n) => n.clone(),
            RefName::Unknown(_) => String::new(),
        };
        let mut r = RefUpdate::new(ghgate_git::RefUpdate::new(zero, new, name))
            .with_kind(self.kind)
            .with_paths(self.paths.clone())
            .with_secrets(self.secrets.clone());
        if let RefName::Unknown(what) = &self.name {
            r = r.with_unknown_name(what.clone());
        }
        if self.objects {
            r = r.objects_only();
        }
        match &self.repository {
            RepoFact::Node(id) => r = r.with_unknown_repository(format!("node id {id}")),
            RepoFact::Request if req.repository.is_none() => {
                r = r.with_unknown_repository("no repository in its URL")
            }
            _ => {}
        }
        (Target::new(req), r)
    }
}

impl fmt::Display for ApiRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            RefName::Named(n) => write!(f, "{n}")?,
            RefName::Unknown(what) => write!(f, "({what})")?,
        }
        write!(f, " {}", self.kind)?;
        match &self.repository {
            RepoFact::Request => {}
            RepoFact::Named(r) => write!(f, " in {r}")?,
            RepoFact::Node(id) => write!(f, " in repository node {id}")?,
        }
        match &self.paths {
            Paths::Known(p) if !p.is_empty() => write!(f, ", changing {}", p.join(", "))?,
            Paths::Known(_) | Paths::NotComputed => {}
            Paths::Unknown(why) => write!(f, ", changed files unknown ({why})")?,
        }
        write!(f, " [{}]", self.via)
    }
}

/// What a request writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing the policy reads as a repository write: a read, or a write that touches neither
    /// refs nor their protection (an issue comment).
    None,
    /// Ref updates, as a push would make them.
    Refs(Vec<ApiRef>),
    /// A write the gateway cannot read as ref updates, and why: `unknown_write` decides.
    Unknown(String),
    /// Ref updates one reading of the request makes, and another reading the gateway cannot
    /// read (a method override it does not know, a batch with a part it cannot read): both
    /// are decided, the stricter counting.
    Partly(Vec<ApiRef>, String),
    /// A write whose body the gateway could not read (past the cap it reads, or in a
    /// content coding it cannot decode): decided as `Unknown`, and what it carries counts as
    /// unscanned for `secrets` and `secret_seen` rules.
    Unread(String),
}

impl Write {
    /// Several readings of one request together: unknown if any is, else every ref update.
    fn union(parts: impl IntoIterator<Item = Write>) -> Write {
        let mut refs = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        // Whether every part that cannot be read is unread (a body past the cap), not unknown.
        let mut unread = true;
        for w in parts {
            unread &= !matches!(w, Write::Unknown(_) | Write::Partly(..));
            match w {
                Write::None => {}
                Write::Refs(r) => refs.extend(r),
                Write::Unknown(why) | Write::Unread(why) => {
                    if !unknown.contains(&why) {
                        unknown.push(why)
                    }
                }
                Write::Partly(r, why) => {
                    refs.extend(r);
                    if !unknown.contains(&why) {
                        unknown.push(why)
                    }
                }
            }
        }
        match (refs.is_empty(), unknown.is_empty()) {
            (true, true) => Write::None,
            (false, true) => Write::Refs(refs),
            (true, false) if unread => Write::Unread(unknown.join("; ")),
            (true, false) => Write::Unknown(unknown.join("; ")),
            (false, false) => Write::Partly(refs, unknown.join("; ")),
        }
    }

    /// The ref updates it makes, as far as they are read.
    pub fn refs(&self) -> &[ApiRef] {
        match self {
            Write::Refs(r) | Write::Partly(r, _) => r,
            Write::None | Write::Unknown(_) | Write::Unread(_) => &[],
        }
    }

    /// The ref updates, for the gateway to fill in what it scanned of their contents.
    pub fn refs_mut(&mut self) -> &mut [ApiRef] {
        match self {
            Write::Refs(r) | Write::Partly(r, _) => r,
            Write::None | Write::Unknown(_) | Write::Unread(_) => &mut [],
        }
    }

    /// What of it the gateway cannot read.
    pub fn unknown(&self) -> Option<&str> {
        match self {
            Write::Unknown(why) | Write::Partly(_, why) | Write::Unread(why) => Some(why),
            Write::None | Write::Refs(_) => None,
        }
    }

    /// What it was read as, for people ("2 ref updates").
    pub fn summary(&self) -> String {
        let n = self.refs().iter().filter(|r| !r.objects).count();
        let mut refs = format!("{n} ref update{}", if n == 1 { "" } else { "s" });
        if self.refs().iter().any(|r| r.objects) {
            refs = if n == 0 {
                "git objects that no ref points at yet".into()
            } else {
                format!("{refs} and git objects")
            };
        }
        match self {
            Write::None => "nothing the policy reads as a repository write".into(),
            Write::Refs(_) => refs,
            Write::Unknown(_) | Write::Unread(_) => "a write the gateway cannot read as ref updates".into(),
            Write::Partly(..) => format!("{refs}, and a part the gateway cannot read"),
        }
    }

    /// A body larger than the gateway reads.
    pub fn too_big(cap: usize) -> Write {
        Write::Unread(format!(
            "its body is larger than the {cap} bytes the gateway reads to tell what it writes"
        ))
    }
}

/// What the head of a request tells of what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromHead {
    /// Nothing to read: not a repository write, or one decided from the head.
    Decided(Write),
    /// The body tells: read it (capped) and call [`from_body`].
    NeedsBody,
}

/// The methods a request is read under: its own, and any a method-override header asks for
/// (`Err` when one is not a method).
fn methods(req: &Classified) -> Result<Vec<Method>, String> {
    let mut out = vec![req.method.clone()];
    for m in &req.method_override {
        match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
            Ok(m) if !out.contains(&m) => out.push(m),
            Ok(_) => {}
            Err(_) => return Err(format!("its method override {m:?} is not a method")),
        }
    }
    Ok(out)
}

fn reads(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request only reads, whatever host it is for: a read method under every method it
/// may be taken for (its own and any override), and not GraphQL (whose reads and writes share
/// methods). Its body is not looked at: a caller that relies on this checks there is none.
pub fn only_reads(req: &Classified) -> bool {
    req.kind != Kind::GraphQl && methods(req).is_ok_and(|m| m.iter().all(reads))
}

/// A request's body as the mapping is given it.
#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    Whole(&'a [u8]),
    /// Larger than the gateway reads (the cap).
    PastCap(usize),
}

/// What a request's head tells of what it writes.
pub fn from_head(req: &Classified, github: &GitHub) -> FromHead {
    read(req, github, None)
}

/// What a request writes whose body is larger than `cap`, the most the gateway reads: for most
/// writes, [`Write::too_big`]; git objects are still read as the objects they are, unscanned.
pub fn past_cap(req: &Classified, github: &GitHub, cap: usize) -> Write {
    match read(req, github, Some(Body::PastCap(cap))) {
        FromHead::Decided(w) => w,
        FromHead::NeedsBody => unreachable!("a body was given"),
    }
}

/// What a request writes, from its head and its whole (possibly content-encoded) body.
pub fn from_body(req: &Classified, github: &GitHub, body: &[u8], cap: usize) -> Write {
    let decoded;
    let body = match req.body_coding {
        None => body,
        Some(coding) => {
            let mut d = Decoder::new_with_limit(coding, cap as u64);
            let mut out = Vec::new();
            if d.push(body, &mut out).and_then(|()| d.finish(&mut out)).is_err() {
                return Write::Unread(format!(
                    "its {} body cannot be decoded within {cap} bytes",
                    coding.token()
                ));
            }
            decoded = out;
            &decoded[..]
        }
    };
    match read(req, github, Some(Body::Whole(body))) {
        FromHead::Decided(w) => w,
        FromHead::NeedsBody => unreachable!("a body was given"),
    }
}

fn read(req: &Classified, github: &GitHub, body: Option<Body<'_>>) -> FromHead {
    let methods = match methods(req) {
        Ok(m) => m,
        Err(why) => return FromHead::Decided(Write::Unknown(why)),
    };
    match req.kind {
        Kind::GraphQl => {
            if methods
                .iter()
                .all(|m| matches!(*m, Method::HEAD | Method::OPTIONS))
            {
                return FromHead::Decided(Write::None);
            }
            match body {
                None => FromHead::NeedsBody,
                Some(Body::Whole(body)) => FromHead::Decided(graphql::read(req.query.as_deref(), body)),
                Some(Body::PastCap(cap)) => FromHead::Decided(Write::too_big(cap)),
            }
        }
        Kind::RestApi => {
            if methods.iter().all(reads) {
                return FromHead::Decided(Write::None);
            }
            let path = github.api_path(&req.path).unwrap_or(&req.path);
            let mut parts = Vec::new();
            for m in methods.iter().filter(|m| !reads(m)) {
                match rest(m, path, req.repository.is_some(), body) {
                    Some(w) => parts.push(w),
                    None => return FromHead::NeedsBody,
                }
            }
            FromHead::Decided(Write::union(parts))
        }
        _ => FromHead::Decided(Write::None),
    }
}

/// The segments of a path, a trailing slash ignored, each percent-decoded.
fn decoded_segments(path: &str) -> Vec<String> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    p.split('/').map(percent_decode).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A branch as the API names it ("main"), as a full ref.
fn branch_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    }
}

/// A ref the request names in full ("refs/heads/x"); GitHub refuses other spellings, and a
/// name that is not one is read as unnamed, so that every ref rule counts it the riskier way.
fn full_ref(name: &str, what: &str) -> RefName {
    if name.starts_with("refs/") && name.len() > "refs/".len() {
        RefName::Named(name.to_owned())
    } else {
        RefName::Unknown(format!("{what} {name:?}, which is not a full ref name"))
    }
}

/// A repository path as git stores it: no leading slash, no empty or `.` segments.
pub(crate) fn repo_path(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The git database's object endpoints (`POST git/{kind}`): objects without a ref.
const GIT_OBJECTS: &[&str] = &["blobs", "trees", "commits", "tags"];

/// The git objects `POST git/{blobs,trees,commits,tags}` creates, with what they carry as GitHub
/// would store it: a blob's content (UTF-8, or base64 read every way GitHub might), each tree
/// entry's inline `content` at its path, every string of a commit or tag (message, names,
/// emails), one after another as git's object has them.
fn git_objects(kind: &str, via: &str, body: &[u8]) -> Write {
    let obj = match json::object(body) {
        Ok(o) => o,
        Err(e) => {
            return Write::Refs(vec![ApiRef::objects(
                via,
                Paths::Unknown("its body is not read".into()),
                Err(format!("its body is not read ({e})")),
            )]);
        }
    };
    let (paths, files) = match kind {
        "blobs" => (
            Paths::Unknown("a blob has no path until a tree names it".into()),
            blob_content(&obj),
        ),
        "trees" => match tree_contents(&obj) {
            Ok((paths, files)) => (Paths::Known(paths), Ok(files)),
            Err(why) => (Paths::Unknown(why.clone()), Err(why)),
        },
        kind => {
            let mut text = String::new();
            strings(&serde_json::Value::Object(obj), &mut text);
            let what = if kind == "tags" {
                "(the tag object)"
            } else {
                "(the commit object)"
            };
            (
                Paths::Unknown("a commit or tag names its files through a tree, not in the request".into()),
                Ok(vec![FileContent {
                    path: what.into(),
                    bytes: text.into_bytes(),
                }]),
            )
        }
    };
    Write::Refs(vec![ApiRef::objects(via, paths, files)])
}

/// A blob's content, read as its `encoding` says; an encoding other than `utf-8` and `base64`
/// is read both ways (GitHub refuses it, but what it would take is not the gateway's guess).
fn blob_content(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<FileContent>, String> {
    let path = "(the blob)".to_owned();
    let Some(serde_json::Value::String(content)) = obj.get("content") else {
        return Err("its \"content\" is not a string".into());
    };
    let raw = || FileContent {
        path: path.clone(),
        bytes: content.clone().into_bytes(),
    };
    match obj.get("encoding") {
        None | Some(serde_json::Value::Null) => Ok(vec![raw()]),
        Some(serde_json::Value::String(e)) => match e.trim().to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Ok(vec![raw()]),
            "base64" => decoded_files([(path.clone(), Some(content.as_str()))]),
            _ => {
                let mut out = vec![raw()];
                out.extend(decoded_files([(path.clone(), Some(content.as_str()))]).unwrap_or_default());
                Ok(out)
            }
        },
        Some(_) => Err("its \"encoding\" is not a string".into()),
    }
}

/// A tree's entry paths, and the inline `content` of those that carry one.
fn tree_contents(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<(Vec<String>, Vec<FileContent>), String> {
    let Some(serde_json::Value::Array(entries)) = obj.get("tree") else {
        return Err("its \"tree\" is not an array".into());
    };
    let mut paths = Vec::new();
    let mut files = Vec::new();
    for e in entries {
        let Some(path) = e.get("path").and_then(|p| p.as_str()) else {
            return Err("a tree entry has no \"path\" string".into());
        };
        let path = repo_path(path);
        match e.get("content") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(c)) => files.push(FileContent {
                path: path.clone(),
                bytes: c.clone().into_bytes(),
            }),
            Some(_) => return Err(format!("the content of {path} is not a string")),
        }
        paths.push(path);
    }
    Ok((paths, files))
}

/// Every string in a JSON value, in order, each on its own line.
fn strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Families of `/repos/{o}/{r}/…` whose writes touch neither refs nor their protection.
const PLAIN_FAMILIES: &[&str] = &[
    "issues",
    "comments",
    "labels",
    "milestones",
    "statuses",
    "check-runs",
    "check-suites",
    "deployments",
    "dispatches",
    "actions",
    "forks",
    "subscription",
    "notifications",
    "topics",
    "autolinks",
    "code-scanning",
    "dependabot",
    "secret-scanning",
    "codespaces",
    "projects",
    "interaction-limits",
    "properties",
    "attestations",
    "commits",
];

/// Repository settings (`PATCH /repos/{o}/{r}`) that neither move refs nor change what
/// protects them.
const PLAIN_SETTINGS: &[&str] = &[
    "description",
    "homepage",
    "has_issues",
    "has_projects",
    "has_wiki",
    "has_discussions",
    "is_template",
    "allow_squash_merge",
    "allow_merge_commit",
    "allow_rebase_merge",
    "allow_auto_merge",
    "delete_branch_on_merge",
    "allow_update_branch",
    "use_squash_pr_title_as_default",
    "squash_merge_commit_title",
    "squash_merge_commit_message",
    "merge_commit_title",
    "merge_commit_message",
    "allow_forking",
    "web_commit_signoff_required",
];

/// A REST write under one method: `None` when the body is needed and not given.
fn rest(method: &Method, path: &str, named: bool, body: Option<Body<'_>>) -> Option<Write> {
    let segs = decoded_segments(path);
    let lit = |i: usize, s: &str| segs.get(i).is_some_and(|x| x.eq_ignore_ascii_case(s));
    let skip = if lit(0, "repos") {
        3
    } else if lit(0, "repositories") {
        2
    } else if segs.iter().any(|s| s.eq_ignore_ascii_case("rulesets")) {
        // An organisation's (or enterprise's) rulesets protect the refs of its repositories.
        return Some(Write::Unknown(format!("{method} {path}: changes rulesets")));
    } else {
        // Not a repository's: users, organisations, gists are outside what this reads.
        return Some(Write::None);
    };
    if !named || segs.len() < skip {
        return Some(Write::Unknown(format!(
            "{method} {path}: a write under /repos whose repository the gateway cannot read"
        )));
    }
    let rest: Vec<&str> = segs[skip..].iter().map(String::as_str).collect();
    let at = |i: usize, s: &str| rest.get(i).is_some_and(|x| x.eq_ignore_ascii_case(s));
    let m = method.as_str();
    let unknown = |why: &str| Some(Write::Unknown(format!("{m} {path}: {why}")));
    let every_ref = |via: &str| {
        Some(Write::Refs(vec![ApiRef::new(
            via,
            RefName::Unknown("every ref of the repository".into()),
            RefKind::Delete,
        )]))
    };
    if m == "POST" && rest.len() == 2 && at(0, "git") {
        let kind = rest[1].to_ascii_lowercase();
        if let Some(via) = GIT_OBJECTS.iter().find(|k| **k == kind) {
            let via = format!("POST git/{via}");
            return match body? {
                Body::Whole(b) => Some(git_objects(&kind, &via, b)),
                Body::PastCap(cap) => Some(Write::Refs(vec![ApiRef::objects(
                    via,
                    Paths::Unknown("its body was not read".into()),
                    Err(format!(
                        "its body is larger than the {cap} bytes the gateway reads"
                    )),
                )])),
            };
        }
    }
    let body = match body {
        Some(Body::PastCap(cap)) => return Some(Write::too_big(cap)),
        Some(Body::Whole(b)) => Some(b),
        None => None,
    };
    let body_json = || body.map(json::object);
    match (m, rest.as_slice()) {
        ("DELETE", []) => every_ref("DELETE the repository"),
        ("POST", [t]) if at(0, "transfer") && !t.is_empty() => every_ref("POST transfer"),
        ("PATCH", []) => {
            let obj = match body_json()? {
                Ok(o) => o,
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            let risky: Vec<&str> = obj
                .keys()
                .map(String::as_str)
                .filter(|k| !PLAIN_SETTINGS.contains(k))
                .collect();
            if risky.is_empty() {
                Some(Write::None)
            } else {
                unknown(&format!(
                    "changes the repository's {} (settings that rename, expose or protect it)",
                    risky.join(", ")
                ))
            }
        }
        (_, [g, r]) if at(0, "git") && at(1, "refs") && !g.is_empty() && !r.is_empty() && m == "POST" => {
            let obj = match body_json()? {
                Ok(o) => o,
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            let Some(name) = obj.get("ref").and_then(|v| v.as_str()) else {
                return unknown("its body has no \"ref\" string");
            };
            Some(Write::Refs(vec![
                ApiRef::new("POST git/refs", full_ref(name, "the ref"), RefKind::Create)
                    .with_new(obj.get("sha").and_then(|v| v.as_str())),
            ]))
        }
        (_, [_, _, tail @ ..]) if at(0, "git") && at(1, "refs") && !tail.is_empty() => {
            let joined = tail.join("/");
            let mut names = vec![format!("refs/{joined}")];
            // `git/refs/refs/heads/x` may be read either way.
            if let Some(stripped) = joined.strip_prefix("refs/") {
                names.push(format!("refs/{stripped}"));
            }
            let kind = match m {
                "DELETE" => RefKind::Delete,
                "PATCH" => {
                    let obj = match body_json()? {
                        Ok(o) => o,
                        Err(e) => return unknown(&format!("its body is not read ({e})")),
                    };
                    match obj.get("force") {
                        None | Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null) => {
                            RefKind::FastForward
                        }
                        Some(serde_json::Value::Bool(true)) => RefKind::NonFastForward,
                        // GitHub may read "true" or 1 as true: the riskier reading.
                        Some(_) => RefKind::NonFastForward,
                    }
                }
                _ => return unknown("not a method git/refs/{ref} takes"),
            };
            let new = match (kind, body) {
                (RefKind::Delete, _) | (_, None) => None,
                (_, Some(b)) => json::object(b)
                    .ok()
                    .and_then(|o| o.get("sha").and_then(|v| v.as_str().map(str::to_owned))),
            };
            let via = format!("{m} git/refs");
            Some(Write::Refs(
                names
                    .into_iter()
                    .map(|n| ApiRef::new(&via, RefName::Named(n), kind).with_new(new.as_deref()))
                    .collect(),
            ))
        }
        (_, [g, _, ..]) if at(0, "git") && !g.is_empty() && m == "POST" => {
            unknown("not a git database endpoint the gateway knows")
        }
        ("PUT" | "DELETE", [_, file @ ..]) if at(0, "contents") && !file.is_empty() => {
            let obj = match body_json()? {
                Ok(o) => o,
                // A DELETE may come without a body: the default branch, then.
                Err(_) if m == "DELETE" && body.is_some_and(|b| b.iter().all(u8::is_ascii_whitespace)) => {
                    serde_json::Map::new()
                }
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            let name = match obj.get("branch") {
                None | Some(serde_json::Value::Null) => {
                    RefName::Unknown("the repository's default branch".into())
                }
                Some(serde_json::Value::String(b)) => RefName::Named(branch_ref(b)),
                Some(_) => return unknown("its \"branch\" is not a string"),
            };
            let file = repo_path(&file.join("/"));
            // A PUT's `content` is the file (base64); a DELETE carries none.
            let contents = match (m, obj.get("content")) {
                ("PUT", Some(c)) => decoded_files([(file.clone(), c.as_str())]),
                _ => Ok(Vec::new()),
            };
            Some(Write::Refs(vec![
                ApiRef::new(format!("{m} contents"), name, RefKind::FastForward)
                    .with_paths(Paths::Known(vec![file]))
                    .with_contents(contents),
            ]))
        }
        ("PUT", [_, n, verb]) if at(0, "pulls") && (at(2, "merge") || at(2, "update-branch")) => {
            let (what, via) = if verb.eq_ignore_ascii_case("merge") {
                (
                    format!("the base branch of pull request #{n}"),
                    "PUT pulls/{n}/merge",
                )
            } else {
                (
                    format!("the head branch of pull request #{n}"),
                    "PUT pulls/{n}/update-branch",
                )
            };
            Some(Write::Refs(vec![
                ApiRef::new(via, RefName::Unknown(what), RefKind::FastForward)
                    .with_paths(Paths::Unknown(format!("the changes of pull request #{n}"))),
            ]))
        }
        ("POST", [_]) if at(0, "merges") || at(0, "merge-upstream") => {
            let obj = match body_json()? {
                Ok(o) => o,
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            let key = if at(0, "merges") { "base" } else { "branch" };
            let Some(branch) = obj.get(key).and_then(|v| v.as_str()) else {
                return unknown(&format!("its body has no \"{key}\" string"));
            };
            Some(Write::Refs(vec![
                ApiRef::new(
                    format!("POST {}", rest[0].to_ascii_lowercase()),
                    RefName::Named(branch_ref(branch)),
                    RefKind::FastForward,
                )
                .with_paths(Paths::Unknown("the merged changes".into())),
            ]))
        }
        (_, [_, ..]) if at(0, "branches") && rest.iter().any(|s| s.eq_ignore_ascii_case("protection")) => {
            unknown("changes branch protection")
        }
        ("POST", [_, branch @ .., last])
            if at(0, "branches") && last.eq_ignore_ascii_case("rename") && !branch.is_empty() =>
        {
            let obj = match body_json()? {
                Ok(o) => o,
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            let Some(new_name) = obj.get("new_name").and_then(|v| v.as_str()) else {
                return unknown("its body has no \"new_name\" string");
            };
            let via = "POST branches/{branch}/rename";
            Some(Write::Refs(vec![
                ApiRef::new(
                    via,
                    RefName::Named(branch_ref(&branch.join("/"))),
                    RefKind::Delete,
                ),
                // The renamed branch has the old one's commits: no file changes.
                ApiRef::new(via, RefName::Named(branch_ref(new_name)), RefKind::Create)
                    .with_paths(Paths::Known(Vec::new())),
            ]))
        }
        (_, [..]) if at(0, "rulesets") => unknown("changes a repository ruleset"),
        (_, [_, p, ..]) if at(0, "tags") && p.eq_ignore_ascii_case("protection") => {
            unknown("changes tag protection")
        }
        ("POST", [_]) | ("PATCH", [_, _]) if at(0, "releases") => {
            let obj = match body_json()? {
                Ok(o) => o,
                Err(e) => return unknown(&format!("its body is not read ({e})")),
            };
            match obj.get("tag_name") {
                Some(serde_json::Value::String(tag)) => {
                    let name = if tag.starts_with("refs/") {
                        tag.clone()
                    } else {
                        format!("refs/tags/{tag}")
                    };
                    Some(Write::Refs(vec![
                        ApiRef::new(format!("{m} releases"), RefName::Named(name), RefKind::Create)
                            .with_paths(Paths::Unknown("a new tag's commit is not in the request".into())),
                    ]))
                }
                None if m == "PATCH" => Some(Write::None),
                _ => unknown("its body has no \"tag_name\" string"),
            }
        }
        (_, [family, ..]) if at(0, "releases") && !family.is_empty() => Some(Write::None),
        (_, [family, ..])
            if at(0, "pulls") && !family.is_empty() || PLAIN_FAMILIES.iter().any(|f| at(0, f)) =>
        {
            Some(Write::None)
        }
        _ => unknown("not a repository write the gateway knows"),
    }
}
