//! One request, one meaning: what a request is, computed once from its head before any stage
//! sees it, and read by every stage (policy, credentials, recorder, masking routes, push
//! inspection) instead of the raw head.
//!
//! - `host`: the request's authority (HTTP/1.1 `Host`, HTTP/2 `:authority`, an absolute-form
//!   URI), lower case, port apart, one trailing dot removed. It must name the server the TLS
//!   connection was opened for (its SNI): a request for another host is `421 Misdirected
//!   Request`, never forwarded. No authority, two `Host` headers, or a `Host` that disagrees with
//!   the URI's authority is `400`.
//! - `path`: the canonical path: the query apart, escapes of unreserved characters decoded and
//!   every other escape's hex upper-cased. On the REST API host and for git paths, where GitHub
//!   would read a spelling differently from a rule, an empty segment, an encoded (or
//!   double-encoded) slash or backslash, a dot segment or a control byte is `400`.
//! - `repository`: from `/repos/{o}/{r}/…` and `/repositories/{id}/…` on the API host, and the git
//!   smart-HTTP and LFS paths `/{o}/{r}(.git)/info/refs|git-upload-pack|git-receive-pack|info/lfs/…`
//!   elsewhere; names lower-cased (GitHub ignores their case).
//! - `git`: the smart-HTTP endpoint and service (`service=` of `info/refs`); `copilot`: the
//!   Copilot endpoint; `kind`: REST API, GraphQL, git, user content, Copilot or other.
//! - `body_coding`: the request body's `Content-Encoding`; one ghgate cannot decode is `415`.
//!
//! Copilot endpoints, by host and path (ASCII case ignored):
//!
//! - on `*.githubcopilot.com` and `copilot-proxy.githubusercontent.com`:
//!   - `completions`: `/v1/completions`, `/v1/engines/*/completions`, `/completions`
//!   - `chat`: `/chat/completions`, `/v1/chat/completions`, `/responses`
//!   - `embeddings`: `/embeddings`, `/v1/embeddings`
//!   - `models`: `/models`, `/models/*`
//!   - `agents`: `/agents*`
//!   - `other`: anything else
//! - on the API host (`api.github.com`):
//!   - `token`: `/copilot_internal/*token*` (the token exchange)
//!   - `user`: `/copilot_internal/user`
//!   - `other`: any other `/copilot_internal/*`
//!
//! Pure: no I/O, no clock. Never guesses: what cannot be told is absent, and the stages read
//! an absent fact the riskier way.
use std::fmt;

use ghgate_mask::encoding::Coding;
use ghgate_pattern::glob;
use http::{HeaderMap, Method, StatusCode, Version, header, request::Parts};

/// Where GitHub serves what, from one setting (`policy.api_url`): the REST API and GraphQL
/// host, the host git smart HTTP is served from, and the uploads host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHub {
    api_host: String,
    /// The REST API's path prefix on its host: "" on github.com, "/api/v3" on GitHub Enterprise
    /// Server (whose API shares the web host).
    api_prefix: String,
    web_host: String,
    /// `uploads.github.com` (release assets), when the API has a host of its own.
    uploads_host: Option<String>,
}

impl Default for GitHub {
    fn default() -> Self {
        GitHub::from_api_url(DEFAULT_API_URL).expect("the default API URL parses")
    }
}

/// GitHub's REST API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

impl GitHub {
    /// From the REST API's URL: `https://api.github.com` (the web host is the API host without
    /// `api.`), or `https://ghes.example/api/v3` (one host for both).
    pub fn from_api_url(url: &str) -> Result<GitHub, ApiUrlError> {
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or_else(|| ApiUrlError::NotAbsolute(url.to_owned()))?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
        let (api_host, _) = host_and_port(authority).map_err(|source| ApiUrlError::NoHost {
            url: url.to_owned(),
            source,
        })?;
        let api_prefix = path.trim_end_matches('/').to_ascii_lowercase();
        let (web_host, uploads_host) = match api_host.strip_prefix("api.") {
            Some(web) if api_prefix.is_empty() && web.contains('.') => {
                (web.to_owned(), Some(format!("uploads.{web}")))
            }
            _ => (api_host.clone(), None),
        };
        Ok(GitHub {
            api_host,
            api_prefix,
            web_host,
            uploads_host,
        })
    }

    /// The host of the REST API and GraphQL (`api.github.com`).
    pub fn api_host(&self) -> &str {
        &self.api_host
    }

    /// The host git smart HTTP is served from (`github.com`).
    pub fn web_host(&self) -> &str {
        &self.web_host
    }

    /// The API path of a request to the API host (`/repos/o/r` of `/api/v3/repos/o/r` on GHES),
    /// `None` when the path is not the API's.
    pub(crate) fn api_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.api_prefix.is_empty() {
            return Some(path);
        }
        let n = self.api_prefix.len();
        match path.get(..n) {
            Some(p) if p.eq_ignore_ascii_case(&self.api_prefix) => match &path[n..] {
                "" => Some("/"),
                rest if rest.starts_with('/') => Some(rest),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether `path` on the API host is GraphQL (`/graphql`, GHES `/api/graphql`).
    fn is_graphql(&self, path: &str) -> bool {
        let graphql = if self.api_prefix.is_empty() {
            "/graphql"
        } else {
            "/api/graphql"
        };
        path.trim_end_matches('/').eq_ignore_ascii_case(graphql)
    }

    /// Whether a path on a shared GHES host belongs to the API (`/api/…`).
    fn shares_host_api_path(&self, path: &str) -> bool {
        !self.api_prefix.is_empty() && path.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("/api/"))
    }
}

/// A `policy.api_url` that names no API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiUrlError {
    #[error("{0:?} is not an absolute URL")]
    NotAbsolute(String),
    #[error("{url:?} does not name a host: {source}")]
    NoHost { url: String, source: Refusal },
}

/// Why the gateway answers a request itself, from its head, without forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request names no host (no Host header, no :authority)")]
    NoAuthority,
    #[error("the request has more than one Host header")]
    TwoHosts,
    #[error("the Host header ({host}) disagrees with the request's URI ({uri})")]
    HostDisagrees { host: String, uri: String },
    #[error("the request's host {0:?} is not a host name")]
    BadHost(String),
    #[error("this connection was opened for {sni}, not for {host}: open a connection to {host} for it")]
    Misdirected { host: String, sni: String },
    #[error("the request's path {path:?} is refused: {why}")]
    BadPath { path: String, why: &'static str },
    #[error(
        "the request body's Content-Encoding {0:?} cannot be decoded by ghgate (only a single gzip, \
         x-gzip, deflate or br coding, or identity), so it cannot be inspected; nothing was forwarded"
    )]
    UnsupportedEncoding(String),
}

impl Refusal {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
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

    fn from_name(name: &str) -> Option<GitService> {
        if name.eq_ignore_ascii_case("git-receive-pack") {
            Some(GitService::ReceivePack)
        } else if name.eq_ignore_ascii_case("git-upload-pack") {
            Some(GitService::UploadPack)
        } else {
            None
        }
    }
}

impl fmt::Display for GitService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which git endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitEndpoint {
    /// `…/info/refs` (the advertisement a fetch or push starts with, `service=` saying which).
    InfoRefs,
    /// `…/git-upload-pack` or `…/git-receive-pack`.
    Rpc(GitService),
    /// `…/info/lfs/…` (Git LFS).
    Lfs,
}

/// A repository a request names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Repo {
    /// Owner and name, lower case.
    Named { owner: String, name: String },
    /// `/repositories/{id}/…`: an id the gateway cannot name.
    Id(u64),
}

impl Repo {
    /// "owner/name", when the request names it.
    pub fn full_name(&self) -> Option<String> {
        match self {
            Repo::Named { owner, name } => Some(format!("{owner}/{name}")),
            Repo::Id(_) => None,
        }
    }

    /// "repository owner/name" or "repository id 7", for people.
    pub fn describe(&self) -> String {
        format!("repository {self}")
    }
}

/// "owner/name", or "id 7".
impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repo::Named { owner, name } => write!(f, "{owner}/{name}"),
            Repo::Id(id) => write!(f, "id {id}"),
        }
    }
}

/// A Copilot endpoint (the table in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copilot {
    Completions,
    Chat,
    Embeddings,
    Models,
    Agents,
    /// The token exchange on the API host (`/copilot_internal/v2/token`).
    Token,
    User,
    Other,
}

/// Every name a Copilot endpoint can have, which is what a policy's `copilot` condition lists.
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

impl Copilot {
    pub fn as_str(self) -> &'static str {
        match self {
            Copilot::Completions => "completions",
            Copilot::Chat => "chat",
            Copilot::Embeddings => "embeddings",
            Copilot::Models => "models",
            Copilot::Agents => "agents",
            Copilot::Token => "token",
            Copilot::User => "user",
            Copilot::Other => "other",
        }
    }
}

impl fmt::Display for Copilot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request is, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GitHub's REST API (the API host, and the uploads host).
    RestApi,
    /// GitHub's GraphQL API.
    GraphQl,
    /// Git smart HTTP or Git LFS.
    Git,
    /// User content: `*.githubusercontent.com`, GitHub Pages (`*.github.io`).
    UserContent,
    /// Copilot's own API hosts.
    Copilot,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RestApi => "rest-api",
            Kind::GraphQl => "graphql",
            Kind::Git => "git",
            Kind::UserContent => "user-content",
            Kind::Copilot => "copilot",
            Kind::Other => "other",
        }
    }
}

/// One request's meaning, as every stage reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub method: Method,
    /// Lower case, without port or trailing dot; equal to the connection's SNI.
    pub host: String,
    pub port: Option<u16>,
    /// The canonical path (see the module doc), without the query.
    pub path: String,
    /// The query as the client sent it.
    pub query: Option<String>,
    pub kind: Kind,
    pub repository: Option<Repo>,
    /// The git endpoint the path names, on a host that serves git.
    pub git: Option<GitEndpoint>,
    /// The git service: the endpoint's, or `service=` of `info/refs`.
    pub git_service: Option<GitService>,
    pub copilot: Option<Copilot>,
    /// A WebSocket handshake (HTTP/1.1 `Upgrade: websocket`).
    pub websocket: bool,
    /// The request body's Content-Encoding, when it has one ghgate decodes.
    pub body_coding: Option<Coding>,
    /// The values of method-override headers (`X-HTTP-Method-Override` and its other
    /// spellings, `crate::writes::METHOD_OVERRIDE_HEADERS`): a server may act on them instead of
    /// the method, so what a request writes is read under each.
    pub method_override: Vec<String>,
}

impl Classified {
    /// `host[:port]`, as the request goes upstream.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The path and query, as the request goes upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// `https://authority/path?query`: the URL logs and records show.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority(), self.path_and_query())
    }

    /// A push: `POST …/git-receive-pack`.
    pub fn is_push(&self) -> bool {
        self.method == Method::POST && self.git == Some(GitEndpoint::Rpc(GitService::ReceivePack))
    }

    /// A fetch or clone's negotiation: `POST …/git-upload-pack`.
    pub fn is_fetch(&self) -> bool {
        self.method == Method::POST && self.git == Some(GitEndpoint::Rpc(GitService::UploadPack))
    }

    /// A smart-HTTP ref advertisement: `…/info/refs?service=git-…`.
    pub fn is_advertisement(&self) -> bool {
        self.git == Some(GitEndpoint::InfoRefs) && self.git_service.is_some()
    }

    /// The advertisement a push starts with: `…/info/refs?service=git-receive-pack`.
    pub fn is_push_advertisement(&self) -> bool {
        self.git == Some(GitEndpoint::InfoRefs) && self.git_service == Some(GitService::ReceivePack)
    }

    /// The facts of a request the gateway refused from its head, for its log line and record:
    /// the host the connection was opened for and the path as sent; nothing else is told.
    pub fn unclassified(head: &Parts, sni: &str) -> Classified {
        Classified {
            method: head.method.clone(),
            host: normal_sni(sni),
            port: None,
            path: head.uri.path().to_owned(),
            query: head.uri.query().map(str::to_owned),
            kind: Kind::Other,
            repository: None,
            git: None,
            git_service: None,
            copilot: None,
            websocket: false,
            body_coding: None,
            method_override: Vec::new(),
        }
    }

    /// A request given as a URL (`ghgate policy explain --request`, tests): classified as if
    /// it came on a connection to its own host.
    pub fn from_url(method: &str, url: &str, github: &GitHub) -> Result<Classified, Refusal> {
        Self::from_url_with_headers(method, url, &[], github)
    }

    /// `from_url`, with request headers (`Content-Encoding`, a method override); a header that
    /// is not one is refused.
    pub fn from_url_with_headers(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        github: &GitHub,
    ) -> Result<Classified, Refusal> {
        let method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
            Refusal::BadPath {
                path: url.to_owned(),
                why: "the method is not an HTTP method",
            }
        })?;
        let uri: http::Uri = url.parse().map_err(|_| Refusal::BadPath {
            path: url.to_owned(),
            why: "not a URL",
        })?;
        let authority = uri.authority().ok_or(Refusal::NoAuthority)?.to_string();
        let (host, _) = host_and_port(&authority)?;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(Version::HTTP_2);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (head, ()) = builder
            .body(())
            .map_err(|_| Refusal::BadPath {
                path: url.to_owned(),
                why: "not a URL, or a header that is not one",
            })?
            .into_parts();
        classify(&head, &host, github)
    }
}

/// Lower case, one trailing dot removed: an SNI as hosts are compared.
fn normal_sni(sni: &str) -> String {
    let s = sni.trim().to_ascii_lowercase();
    s.strip_suffix('.').map(str::to_owned).unwrap_or(s)
}

/// The normalised host and port of an authority (`Host` value), as `ghgate_pattern` normalises
/// every host name; `Err` for userinfo, an empty or malformed name, or a port that is not a port.
pub fn host_and_port(authority: &str) -> Result<(String, Option<u16>), Refusal> {
    ghgate_pattern::host_and_port(authority).ok_or_else(|| Refusal::BadHost(authority.to_owned()))
}

/// The port a scheme implies.
fn default_port(scheme: Option<&http::uri::Scheme>) -> u16 {
    if scheme == Some(&http::uri::Scheme::HTTP) {
        80
    } else {
        443
    }
}

/// The request's authority: `Host` (at most one), or the URI's (HTTP/2's `:authority`, an
/// absolute-form request target), which must then agree.
fn authority(head: &Parts) -> Result<(String, Option<u16>), Refusal> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::TwoHosts);
    }
    let from_header = host_header
        .map(|v| {
            let v = v
                .to_str()
                .map_err(|_| Refusal::BadHost(String::from_utf8_lossy(v.as_bytes()).into()))?;
            host_and_port(v.trim())
        })
        .transpose()?;
    let from_uri = head
        .uri
        .authority()
        .map(|a| host_and_port(a.as_str()))
        .transpose()?;
    let scheme = head.uri.scheme();
    match (from_header, from_uri) {
        (None, None) => Err(Refusal::NoAuthority),
        (Some(h), None) => Ok(h),
        (None, Some(u)) => Ok(u),
        (Some(h), Some(u)) => {
            let port = |p: Option<u16>| p.unwrap_or_else(|| default_port(scheme));
            if h.0 == u.0 && port(h.1) == port(u.1) {
                Ok(u)
            } else {
                Err(Refusal::HostDisagrees {
                    host: host_header
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default(),
                    uri: head.uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                })
            }
        }
    }
}

/// Whether a byte is unreserved (RFC 3986 §2.3): the same URI escaped or not.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte `%XX` at `at` stands for, if `s[at..]` starts with a well-formed escape.
fn escape_at(s: &[u8], at: usize) -> Option<u8> {
    match (s.get(at), s.get(at + 1), s.get(at + 2)) {
        (Some(b'%'), Some(&h), Some(&l)) => Some(hex(h)? * 16 + hex(l)?),
        _ => None,
    }
}

/// A byte GitHub's router must never see in an encoded form on a strict path: a slash or
/// backslash (another segment) or a control byte.
fn dangerous(b: u8) -> Option<&'static str> {
    match b {
        b'/' | b'\\' => Some("an encoded slash or backslash"),
        0..=0x1f | 0x7f => Some("a control byte"),
        _ => None,
    }
}

/// The canonical path: unreserved escapes decoded, the others' hex upper-cased. `strict` (the
/// API host and git paths) refuses what GitHub might read as another path.
fn canonical_path(raw: &str, strict: bool) -> Result<String, Refusal> {
    let refuse = |why| Refusal::BadPath {
        path: raw.to_owned(),
        why,
    };
    if !raw.starts_with('/') {
        return Err(refuse("a request target must be a path starting with '/'"));
    }
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match escape_at(b, i) {
                Some(c) if unreserved(c) => out.push(c as char),
                Some(c) => {
                    if let Some(why) = dangerous(c).filter(|_| strict) {
                        return Err(refuse(why));
                    }
                    out.push_str(&format!("%{c:02X}"));
                }
                None if strict => return Err(refuse("a malformed percent-escape")),
                None => {
                    out.push('%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
            continue;
        }
        if strict && (b[i] == b'\\' || b[i] < 0x20 || b[i] == 0x7f) {
            return Err(refuse("a backslash or control byte"));
        }
        let ch = raw[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    if !strict {
        return Ok(out);
    }
    // An escaped escape (`%252F`, or `%25%32%46` once its unreserved escapes are decoded): a
    // server that decodes twice would see what the first pass refuses.
    let o = out.as_bytes();
    for at in memchr::memmem::find_iter(o, b"%25") {
        let inner = (o.get(at + 3), o.get(at + 4));
        if let (Some(&h), Some(&l)) = inner
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            let c = h * 16 + l;
            if dangerous(c).is_some() || c == b'.' || c == b'%' {
                return Err(refuse(
                    "a double-encoded slash, backslash, dot, escape or control byte",
                ));
            }
        }
    }
    let segments: Vec<&str> = out[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, s) in segments.iter().enumerate() {
        if s.is_empty() && n != last {
            return Err(refuse("an empty path segment (//)"));
        }
        if *s == "." || *s == ".." {
            return Err(refuse("a dot segment (. or ..)"));
        }
    }
    Ok(out)
}

/// Whether a path reads as git's (smart HTTP or LFS) once every escape is undone, however many
/// layers: such a path is held to the strict spelling, so `%2F` cannot hide a push.
fn git_like(raw: &str) -> bool {
    let mut s = raw.to_owned();
    for _ in 0..4 {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match escape_at(b, i) {
                Some(c) => {
                    out.push(c);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == s {
            break;
        }
        s = next;
    }
    let s = s.to_ascii_lowercase().replace('\\', "/");
    let segs: Vec<&str> = s.split('/').collect();
    segs.iter()
        .any(|seg| seg.ends_with(".git") || GitService::from_name(seg).is_some())
        || segs
            .windows(2)
            .any(|w| w[0] == "info" && (w[1] == "refs" || w[1] == "lfs"))
}

/// A GitHub owner or repository name: letters, digits, `-`, `_`, `.`.
fn name_ok(s: &str) -> bool {
    !matches!(s, "" | "." | "..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn named(owner: &str, name: &str) -> Option<Repo> {
    let name = match name.len().checked_sub(4) {
        Some(cut) if name[cut..].eq_ignore_ascii_case(".git") => &name[..cut],
        _ => name,
    };
    (name_ok(owner) && name_ok(name)).then(|| Repo::Named {
        owner: owner.to_ascii_lowercase(),
        name: name.to_ascii_lowercase(),
    })
}

/// The segments of a path, a trailing slash ignored.
fn segments(path: &str) -> Vec<&str> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    p.split('/').collect()
}

/// The repository of an API path (`/repos/{o}/{r}/…`, `/repositories/{id}/…`).
fn api_repository(path: &str) -> Option<Repo> {
    let segs = segments(path);
    match segs.as_slice() {
        [first, owner, name, ..] if first.eq_ignore_ascii_case("repos") => named(owner, name),
        [first, id, ..] if first.eq_ignore_ascii_case("repositories") => (!id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit()))
        .then(|| id.parse().ok().map(Repo::Id))
        .flatten(),
        _ => None,
    }
}

/// The git endpoint a path names (any depth: the riskier reading), and its repository when the
/// path has git's shape `/{o}/{r}(.git)/…`.
fn git_endpoint(path: &str) -> (Option<GitEndpoint>, Option<Repo>) {
    let segs = segments(path);
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let n = segs.len();
    let lfs_at = segs.windows(2).position(|w| eq(w[0], "info") && eq(w[1], "lfs"));
    let endpoint = if n >= 2 && eq(segs[n - 2], "info") && eq(segs[n - 1], "refs") {
        Some((GitEndpoint::InfoRefs, n - 2))
    } else if let Some(s) = segs.last().and_then(|s| GitService::from_name(s)) {
        Some((GitEndpoint::Rpc(s), n - 1))
    } else {
        lfs_at.map(|at| (GitEndpoint::Lfs, at))
    };
    let Some((endpoint, at)) = endpoint else {
        return (None, None);
    };
    let repo = (at == 2).then(|| named(segs[0], segs[1])).flatten();
    (Some(endpoint), repo)
}

/// `service=` of a query: any value naming a service (the riskier reading when several do,
/// receive-pack first), unreserved escapes decoded, case ignored.
fn query_service(query: Option<&str>) -> Option<GitService> {
    let mut found = None;
    for kv in query?.split('&') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let k = canonical_path(&format!("/{k}"), false).ok()?;
        if !k[1..].eq_ignore_ascii_case("service") {
            continue;
        }
        let v = canonical_path(&format!("/{v}"), false).ok()?;
        match GitService::from_name(&v[1..]) {
            Some(GitService::ReceivePack) => return Some(GitService::ReceivePack),
            Some(s) => found = Some(s),
            None => {}
        }
    }
    found
}

fn is_copilot_host(host: &str) -> bool {
    glob("*.githubcopilot.com", host) || host == "copilot-proxy.githubusercontent.com"
}

fn is_user_content_host(host: &str) -> bool {
    ["githubusercontent.com", "github.io"]
        .iter()
        .any(|d| host == *d || host.strip_suffix(d).is_some_and(|h| h.ends_with('.')))
}

/// The Copilot endpoint on a Copilot host.
fn copilot_endpoint(path: &str) -> Copilot {
    let path = path.to_ascii_lowercase();
    let path = path.trim_end_matches('/');
    match path {
        "/v1/completions" | "/completions" => Copilot::Completions,
        p if glob("/v1/engines/*/completions", p) => Copilot::Completions,
        "/chat/completions" | "/v1/chat/completions" | "/responses" => Copilot::Chat,
        "/embeddings" | "/v1/embeddings" => Copilot::Embeddings,
        "/models" => Copilot::Models,
        p if p.starts_with("/models/") => Copilot::Models,
        p if p.starts_with("/agents") => Copilot::Agents,
        _ => Copilot::Other,
    }
}

/// The Copilot endpoint of an API path (`/copilot_internal/…`), if any.
fn copilot_internal(path: &str) -> Option<Copilot> {
    let path = path.to_ascii_lowercase();
    match path.as_str() {
        "/copilot_internal/user" => Some(Copilot::User),
        p if glob("/copilot_internal/*token*", p) => Some(Copilot::Token),
        p if p.starts_with("/copilot_internal/") => Some(Copilot::Other),
        _ => None,
    }
}

/// The request body's Content-Encoding: `Err` for one ghgate cannot decode (several stacked
/// count as one it cannot).
fn body_coding(headers: &HeaderMap) -> Result<Option<Coding>, Refusal> {
    let values: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let joined = values.join(", ");
    Coding::parse(Some(&joined)).map_err(|_| Refusal::UnsupportedEncoding(joined))
}

/// Whether a request head is a WebSocket handshake the gateway relays (HTTP/1.1 `Upgrade:
/// websocket`); hop-by-hop stripping keeps what this reads.
pub fn is_websocket(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Classifies a request head arriving on a connection opened for `sni`. Hop-by-hop headers
/// are already gone (the daemon strips them first).
pub fn classify(head: &Parts, sni: &str, github: &GitHub) -> Result<Classified, Refusal> {
    let (host, port) = authority(head)?;
    let sni = normal_sni(sni);
    if host != sni {
        return Err(Refusal::Misdirected { host, sni });
    }
    let raw = head.uri.path();
    // Which host (and, on a GHES host, which part of it) this is, read from the path as any
    // server would decode it.
    let lenient = canonical_path(raw, false)?;
    let on_api =
        host == github.api_host && (github.api_prefix.is_empty() || github.shares_host_api_path(&lenient));
    let on_uploads = github.uploads_host.as_deref() == Some(host.as_str());
    let copilot_host = is_copilot_host(&host);
    let user_content = !copilot_host && is_user_content_host(&host);
    let serves_git = !(on_api || on_uploads || copilot_host || user_content);
    let strict = on_api || on_uploads || (serves_git && git_like(raw));
    let path = if strict {
        canonical_path(raw, true)?
    } else {
        lenient
    };
    let query = head.uri.query().map(str::to_owned);

    let (mut repository, mut git, mut git_service, mut copilot) = (None, None, None, None);
    let kind = if on_api {
        let api = github.api_path(&path);
        if github.is_graphql(&path) {
            Kind::GraphQl
        } else {
            if let Some(api) = api {
                repository = api_repository(api);
                copilot = copilot_internal(api);
            }
            Kind::RestApi
        }
    } else if on_uploads {
        repository = api_repository(&path);
        Kind::RestApi
    } else if copilot_host {
        copilot = Some(copilot_endpoint(&path));
        Kind::Copilot
    } else if user_content {
        Kind::UserContent
    } else {
        let (endpoint, repo) = git_endpoint(&path);
        git = endpoint;
        repository = repo;
        git_service = match endpoint {
            Some(GitEndpoint::Rpc(s)) => Some(s),
            Some(GitEndpoint::InfoRefs) => query_service(query.as_deref()),
            _ => None,
        };
        if endpoint.is_some() {
            Kind::Git
        } else {
            Kind::Other
        }
    };
    Ok(Classified {
        method: head.method.clone(),
        host,
        port,
        path,
        query,
        kind,
        repository,
        git,
        git_service,
        copilot,
        websocket: is_websocket(head.version, &head.headers),
        body_coding: body_coding(&head.headers)?,
        method_override: crate::writes::METHOD_OVERRIDE_HEADERS
            .iter()
            .flat_map(|h| head.headers.get_all(*h))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect(),
    })
}

#[cfg(test)]
mod tests;
