//! `ghgate policy`: checks a policy file, and explains which rule decides a request described on
//! the command line, and why (for an API write, the ref updates it was read as first). Never sends or receives traffic and never writes a file: what it
//! prints is what the gateway would decide, computed by the same `Policy::explain`.
//!
//! Errors that should exit with 2 (an invalid policy file, facts the command line cannot be
//! read as) are returned as `Invalid`.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use ghgate_git::{ObjectFormat, Oid, oid::OidError};
use ghgate_policy::{
    classify::{Classified, GitHub},
    writes::{self, FromHead},
};

use crate::{
    config::ConfigError,
    enforce::SecretScan,
    policy::{self, LoadError, Paths, Policy, RefKind, RefUpdate, SUBJECT_KEYS as AS_KEYS, Subject, Target},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Validate a policy file and summarise it (exit 2 when it is invalid).
    Check(CheckArgs),
    /// Show which rule decides a request (and each pushed ref), and why. No traffic is sent.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The policy file (TOML).
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The policy file (TOML).
    #[arg(long, visible_alias = "config", value_name = "FILE")]
    policy: PathBuf,
    /// The caller, as comma-separated key=value: uid=1000 (required), user=alice,
    /// exe=/usr/bin/git, comm=git, cgroup=/ghgate.clients, ci_repository=org/app,
    /// ci_workflow=deploy, ci_ref=refs/heads/main, oidc.CLAIM=VALUE, oidc.groups=a|b.
    #[arg(long = "as", value_name = "FACTS")]
    as_: String,
    /// The request: "METHOD URL", e.g. "POST https://github.com/org/app.git/git-receive-pack".
    #[arg(long, value_name = "METHOD URL")]
    request: String,
    /// A ref the push updates: "OLD NEW REF" (whole object ids in hex, 0 for none), e.g.
    /// "0 <40 hex digits> refs/heads/topic" creates topic. Repeat for several.
    #[arg(long = "ref-update", value_name = "OLD NEW REF")]
    ref_updates: Vec<String>,
    /// The updates are fast-forwards. Without this or --non-fast-forward, an update is read
    /// as non-fast-forward, as the gateway does when it cannot tell.
    #[arg(long, conflicts_with = "non_fast_forward")]
    fast_forward: bool,
    /// The updates rewrite history.
    #[arg(long)]
    non_fast_forward: bool,
    /// A file the pushed commits change. Repeat for several; none given reads as no files.
    #[arg(long, value_name = "PATH")]
    changes: Vec<String>,
    /// A request header, "Name: value" (Content-Encoding, X-HTTP-Method-Override, ...).
    /// Repeat for several.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request's body, for a write through the API (a REST body, a GraphQL request): the
    /// text itself, or @FILE. An API write without one is read as having an empty body.
    #[arg(long, value_name = "TEXT|@FILE")]
    body: Option<String>,
}

/// A policy file or a command line that cannot be used: `ghgate` exits with 2.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Policy(#[from] LoadError),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{} is a gateway configuration without a [policy] file: nothing to explain", .0.display())]
    NoPolicyFile(PathBuf),
    #[error(transparent)]
    As(#[from] AsError),
    #[error(
        "--request \"{0}\": write \"METHOD URL\", e.g. \"POST https://github.com/org/app.git/git-receive-pack\""
    )]
    Request(String),
    #[error(
        "--ref-update \"{text}\": {why}; write \"OLD NEW REF\" with whole object ids (0 for none), \
         e.g. \"0 1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b refs/heads/topic\""
    )]
    RefUpdate { text: String, why: RefUpdateProblem },
    #[error("--fast-forward and --non-fast-forward describe ref updates; give --ref-update too")]
    FastForwardWithoutRefs,
    #[error("--header \"{0}\": write \"Name: value\", e.g. \"X-HTTP-Method-Override: DELETE\"")]
    Header(String),
    #[error("--body and --header describe an API request; they do not go with --ref-update")]
    BodyWithRefs,
}

/// What `--as` cannot be read as.
#[derive(Debug, thiserror::Error)]
pub enum AsError {
    #[error("--as: \"{0}\" is not key=value; {accepted}", accepted = accepted())]
    NotKeyValue(String),
    #[error("--as: {0} is given twice")]
    Twice(String),
    #[error("--as: uid \"{0}\" is not a number")]
    Uid(String),
    #[error("--as: unknown key \"{0}\"; {accepted}", accepted = accepted())]
    UnknownKey(String),
    #[error("--as needs uid=N (e.g. --as uid=1000,user=alice); {accepted}", accepted = accepted())]
    NoUid,
}

fn accepted() -> String {
    format!(
        "accepted keys: {}, oidc.CLAIM (oidc.groups=a|b for a list)",
        AS_KEYS.join(", ")
    )
}

/// What is wrong with one `--ref-update`.
#[derive(Debug, thiserror::Error)]
pub enum RefUpdateProblem {
    #[error("three words are needed")]
    Words,
    #[error(transparent)]
    Id(#[from] OidError),
    #[error("the two ids are of different object formats")]
    Formats,
    #[error("\"{0}\" is not a full ref name (refs/heads/{0}?)")]
    NotFullRef(String),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check(a) => {
            let policy = policy::load(&a.file).map_err(Invalid::Policy)?;
            println!("{}: ok, {}", a.file.display(), policy.summary());
        }
        Command::Explain(a) => {
            let (policy, github, body_cap, gateway) = load_policy_or_config(&a.policy)?;
            let ff = match (a.fast_forward, a.non_fast_forward) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let body = match a.body.as_deref() {
                None => None,
                Some(text) => Some(match text.strip_prefix('@') {
                    Some(file) => std::fs::read(file).map_err(|source| Invalid::Read {
                        path: file.into(),
                        source,
                    })?,
                    None => text.as_bytes().to_vec(),
                }),
            };
            let scan = Scan::for_explain(gateway.as_ref())?;
            let request = RequestInput {
                line: &a.request,
                headers: &a.headers,
                body: body.as_deref(),
                body_cap,
                scan: Some(&scan),
            };
            let text = explain_request(&policy, &github, &a.as_, &request, &a.ref_updates, ff, &a.changes)?;
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A policy file, or a gateway configuration whose `[policy] file` is followed (and whose
/// `policy.api_url` says where GitHub's API is, and `policy.approval_body_cap_bytes` how much
/// of an API write's body is read; the defaults otherwise).
/// The gateway's configuration comes back too, when that is what `path` is.
fn load_policy_or_config(
    path: &Path,
) -> Result<(Policy, GitHub, usize, Option<crate::config::Config>), Invalid> {
    let text = std::fs::read_to_string(path).map_err(|source| Invalid::Read {
        path: path.to_owned(),
        source,
    })?;
    let is_gateway_config = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("redirect"));
    if !is_gateway_config {
        let policy = Policy::parse(&text, path).map_err(LoadError::from)?;
        let cap = crate::config::PolicyConfig::default().approval_body_cap_bytes;
        return Ok((policy, GitHub::default(), cap, None));
    }
    let config = crate::config::Config::parse(&text, path)?;
    let github = config.github_hosts();
    let cap = config.policy.approval_body_cap_bytes;
    let file = config
        .policy
        .file
        .clone()
        .ok_or_else(|| Invalid::NoPolicyFile(path.to_owned()))?;
    Ok((policy::load(&file)?, github, cap, Some(config)))
}

/// What `explain` scans the files an API write carries with, as the gateway would, and what
/// to tell people of it.
pub struct Scan {
    pub scan: SecretScan,
    pub note: String,
}

impl Scan {
    /// The gateway's masking rules, its fingerprint key and the fingerprints its record saw in
    /// responses, when `gateway` is its configuration and it has them (the key is never made
    /// here); else the built-in rules under a key of this run's own, and nothing seen.
    pub fn for_explain(gateway: Option<&crate::config::Config>) -> anyhow::Result<Scan> {
        let throwaway = || {
            let mut key = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
            ghgate_mask::FingerprintKey::new(key)
        };
        let seen = std::sync::Arc::new(crate::mask::seen::SeenSecrets::default());
        let Some(config) = gateway else {
            let masks = crate::mask::policy::MaskSet::new(&Default::default(), throwaway())?;
            return Ok(Scan {
                scan: SecretScan {
                    masker: masks.records,
                    seen,
                },
                note: "contents are scanned with the built-in masking rules under a key of this run's own: \
                       fingerprints will not match the record, and none counts as seen in a response \
                       (give the gateway's configuration as --policy to use its rules, key and record)"
                    .into(),
            });
        };
        let key_file = crate::mask::key::path(&config.state_dir);
        let (key, mut note) = if key_file.exists() {
            (
                crate::mask::key::load_or_create(&config.state_dir)?,
                "contents are scanned with the gateway's masking rules and fingerprint key".to_owned(),
            )
        } else {
            (
                throwaway(),
                format!(
                    "contents are scanned with the gateway's masking rules under a key of this run's own \
                     (no fingerprint key at {} yet)",
                    key_file.display()
                ),
            )
        };
        let masks = crate::mask::policy::MaskSet::new(&config.mask, key)?;
        match seen.rebuild(&config.record_dir()) {
            Ok(_) => note.push_str(&format!(
                "; {} fingerprint(s) the gateway saw in responses, from its record",
                seen.len()
            )),
            Err(e) => note.push_str(&format!(
                "; no fingerprint counts as seen in a response (the record cannot be read: {e})"
            )),
        }
        Ok(Scan {
            scan: SecretScan {
                masker: masks.records,
                seen,
            },
            note,
        })
    }
}

/// The request `ghgate policy explain` is given: "METHOD URL", its headers and its body.
pub struct RequestInput<'a> {
    pub line: &'a str,
    /// "Name: value" each.
    pub headers: &'a [String],
    pub body: Option<&'a [u8]>,
    /// How much of an API write's body the gateway reads (`policy.approval_body_cap_bytes`).
    pub body_cap: usize,
    /// What the files an API write carries are scanned with (`None`: they count as unscanned).
    pub scan: Option<&'a Scan>,
}

impl<'a> RequestInput<'a> {
    /// A request without headers or body.
    pub fn line(line: &'a str) -> Self {
        RequestInput {
            line,
            headers: &[],
            body: None,
            body_cap: crate::config::PolicyConfig::default().approval_body_cap_bytes,
            scan: None,
        }
    }
}

/// The report `ghgate policy explain` prints: the caller and request, then one explanation per
/// ref update (or one for the request when there is none). `ff` says whether updates are
/// fast-forwards (`None`: unknown); `changes` are the files the push changes (none given: none).
pub fn explain_text(
    policy: &Policy,
    github: &GitHub,
    as_: &str,
    request: &str,
    refs: &[String],
    ff: Option<bool>,
    changes: &[String],
) -> Result<String, Invalid> {
    explain_request(
        policy,
        github,
        as_,
        &RequestInput::line(request),
        refs,
        ff,
        changes,
    )
}

/// `explain_text` of a request with headers and a body: a write through the API is read as the
/// ref updates it makes (`ghgate_policy::writes`), each explained as a push's would be.
pub fn explain_request(
    policy: &Policy,
    github: &GitHub,
    as_: &str,
    request: &RequestInput,
    refs: &[String],
    ff: Option<bool>,
    changes: &[String],
) -> Result<String, Invalid> {
    let subject = parse_subject(as_)?;
    let (method, url) = parse_request(request.line)?;
    if ff.is_some() && refs.is_empty() {
        return Err(Invalid::FastForwardWithoutRefs);
    }
    if !refs.is_empty() && (request.body.is_some() || !request.headers.is_empty()) {
        return Err(Invalid::BodyWithRefs);
    }
    let headers = request
        .headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value.trim())),
            _ => Err(Invalid::Header(h.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Read as the gateway reads it: a request it refuses from its head never meets a rule.
    let target = match Classified::from_url_with_headers(&method, &url, &headers, github) {
        Ok(t) => Target::new(t),
        Err(refusal) => {
            return Ok(format!(
                "caller: {subject}\nrequest: {method} {url}\n\nverdict: refused by the gateway itself with {}, before any rule: {refusal}\n",
                refusal.status()
            ));
        }
    };
    let mut out = format!("caller: {subject}\nrequest: {target}");
    let req = &target.req;
    let derived: Vec<String> = [
        req.repository.as_ref().map(|r| r.describe()),
        req.git_service.map(|s| format!("git {s}")),
        req.copilot.map(|c| format!("copilot {c}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !derived.is_empty() {
        out.push_str(&format!(" ({})", derived.join(", ")));
    }
    out.push('\n');
    if refs.is_empty() {
        out.push('\n');
        let mut write = match writes::from_head(req, github) {
            FromHead::Decided(w) => w,
            FromHead::NeedsBody => {
                if request.body.is_none() {
                    out.push_str("body: none given (--body), so it is read as empty\n");
                }
                let body = request.body.unwrap_or_default();
                if body.len() > request.body_cap {
                    writes::past_cap(req, github, request.body_cap)
                } else {
                    writes::from_body(req, github, body, request.body_cap)
                }
            }
        };
        if write.refs().iter().any(|r| !r.contents.is_empty())
            && let Some(scan) = request.scan
        {
            out.push_str(&format!("note: {}\n", scan.note));
        }
        crate::enforce::api_write::scan(request.scan.map(|s| &s.scan), &mut write);
        match policy.explain_write(&subject, &target, &write) {
            Some(e) => {
                out.push_str(&format!("API write: {}\n", write.summary()));
                out.push_str(&e.to_string());
            }
            None => out.push_str(&policy.explain(&subject, &target, None).to_string()),
        }
        return Ok(out);
    }
    for text in refs {
        let mut r = parse_ref_update(text)?;
        if r.kind == RefKind::Update
            && let Some(ff) = ff
        {
            r.kind = if ff {
                RefKind::FastForward
            } else {
                RefKind::NonFastForward
            };
        }
        out.push_str(&format!("\nref update: {r}\n"));
        if r.paths == Paths::NotComputed {
            if changes.is_empty() {
                // Whether the files matter, with the update read as the explanation will read it.
                let mut probe = r.clone();
                if probe.kind == RefKind::Update {
                    probe.kind = RefKind::NonFastForward;
                }
                if policy.needs(&subject, &target, Some(&probe)).paths {
                    out.push_str(
                        "changed files: none given (--changes), so the push is taken to change no files\n",
                    );
                }
                r.paths = Paths::Known(Vec::new());
            } else {
                out.push_str(&format!("changed files: {}\n", changes.join(", ")));
                let files = changes
                    .iter()
                    .map(|c| c.trim_start_matches('/').to_owned())
                    .collect();
                r.paths = Paths::Known(files);
            }
        }
        out.push_str(&policy.explain(&subject, &target, Some(&r)).to_string());
    }
    Ok(out)
}

fn parse_subject(text: &str) -> Result<Subject, AsError> {
    let mut s = Subject::default();
    let mut uid = None;
    let mut seen = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| AsError::NotKeyValue(pair.to_owned()))?;
        if seen.contains(&key) {
            return Err(AsError::Twice(key.to_owned()));
        }
        seen.push(key);
        let value = value.to_owned();
        match key {
            "uid" => uid = Some(value.parse::<u32>().map_err(|_| AsError::Uid(value))?),
            "user" => s.user = Some(value),
            "exe" => s.exe = Some(value),
            "comm" => s.comm = value,
            "cgroup" => s.cgroup = Some(value),
            "ci_repository" => s.ci_repository = Some(value),
            "ci_workflow" => s.ci_workflow = Some(value),
            "ci_ref" => s.ci_ref = Some(value),
            _ => match key.strip_prefix("oidc.").filter(|c| !c.is_empty()) {
                Some(claim) => {
                    let v = if claim == "groups" {
                        serde_json::Value::Array(value.split('|').map(|g| g.into()).collect())
                    } else {
                        value.into()
                    };
                    s.oidc
                        .get_or_insert_with(Default::default)
                        .insert(claim.to_owned(), v);
                }
                None => return Err(AsError::UnknownKey(key.to_owned())),
            },
        }
    }
    s.uid = uid.ok_or(AsError::NoUid)?;
    Ok(s)
}

/// "METHOD URL" (the scheme optional, user info ignored) as a method and an https URL.
fn parse_request(text: &str) -> Result<(String, String), Invalid> {
    let usage = || Invalid::Request(text.to_owned());
    let mut words = text.split_whitespace();
    let (Some(method), Some(url), None) = (words.next(), words.next(), words.next()) else {
        return Err(usage());
    };
    if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(usage());
    }
    let rest = match url.find("://") {
        Some(i) if url[..i].eq_ignore_ascii_case("https") || url[..i].eq_ignore_ascii_case("http") => {
            &url[i + 3..]
        }
        Some(_) => return Err(usage()),
        None => url,
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(usage());
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok((method.to_ascii_uppercase(), format!("https://{host}{path}")))
}

fn parse_ref_update(text: &str) -> Result<RefUpdate, Invalid> {
    let usage = |why: RefUpdateProblem| Invalid::RefUpdate {
        text: text.to_owned(),
        why,
    };
    let mut words = text.split_whitespace();
    let (Some(old), Some(new), Some(name), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(usage(RefUpdateProblem::Words));
    };
    // "0" (any run of zeros) names no object, in the format of the other id.
    let id = |word: &str| match Oid::from_hex(word.as_bytes()) {
        Ok(id) => Ok(Some(id)),
        Err(_) if !word.is_empty() && word.bytes().all(|b| b == b'0') => Ok(None),
        Err(e) => Err(usage(e.into())),
    };
    let (old, new) = (id(old)?, id(new)?);
    let format = old.or(new).map_or(ObjectFormat::Sha1, |id| id.format());
    let (old, new) = (old.unwrap_or(Oid::zero(format)), new.unwrap_or(Oid::zero(format)));
    if old.format() != new.format() {
        return Err(usage(RefUpdateProblem::Formats));
    }
    if !name.starts_with("refs/") {
        return Err(usage(RefUpdateProblem::NotFullRef(name.to_owned())));
    }
    Ok(RefUpdate::new(ghgate_git::RefUpdate::new(old, new, name)))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    const POLICY: &str = "default = \"allow\"\n\
        [approvers.maintainers]\nusers = [\"alice\", \"bob\"]\n\
        [[rule]]\nname = \"force-push-main\"\naction = \"require_approval\"\napprovers = \"maintainers\"\n\
        ref = \"refs/heads/main\"\nref_op = \"non-fast-forward\"\n\
        [[rule]]\nname = \"workflows\"\naction = \"deny\"\npaths = \".github/workflows/*\"\n\
        [[rule]]\nname = \"ci-deploy\"\naction = \"record_only\"\noidc_groups = \"deployers\"\nci_workflow = \"deploy\"\n";

    fn policy() -> Policy {
        Policy::parse(POLICY, Path::new("policy.toml")).unwrap()
    }

    const PUSH: &str = "POST https://github.com/org/app.git/git-receive-pack";
    const UPDATE: &str =
        "1111111111111111111111111111111111111111 2222222222222222222222222222222222222222 refs/heads/main";
    const ABC: &str = "abcabcabcabcabcabcabcabcabcabcabcabcabca";

    fn explain(as_: &str, request: &str, refs: &[&str], ff: Option<bool>, changes: &[&str]) -> String {
        let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        let changes: Vec<String> = changes.iter().map(|r| r.to_string()).collect();
        explain_text(&policy(), &GitHub::default(), as_, request, &refs, ff, &changes)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn explain_err(as_: &str, request: &str, refs: &[&str]) -> String {
        let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        explain_text(&policy(), &GitHub::default(), as_, request, &refs, None, &[])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_undecided_update_is_explained_as_non_fast_forward() {
        let out = explain("uid=1000,user=alice,comm=git", PUSH, &[UPDATE], None, &[]);
        assert!(
            out.starts_with(
                "caller: uid=1000 user=alice comm=git\n\
                 request: POST github.com/org/app.git/git-receive-pack (repository org/app, git receive-pack)\n\n\
                 ref update: refs/heads/main 1111111..2222222 (update)\n\
                 note: refs/heads/main: not known whether the update is a fast-forward; read as non-fast-forward"
            ),
            "{out}"
        );
        assert!(out.contains("rule #1 \"force-push-main\": matches\n"), "{out}");
        assert!(out.ends_with("by rule #1 \"force-push-main\"\n"), "{out}");
    }

    #[test]
    fn a_fast_forward_without_changes_reads_as_changing_no_files() {
        let out = explain("uid=1000", PUSH, &[UPDATE], Some(true), &[]);
        assert!(
            out.contains("(fast-forward)\nchanged files: none given (--changes)"),
            "{out}"
        );
        assert!(out.contains("paths: refs/heads/main changes no files"), "{out}");
        assert!(out.ends_with("verdict: allow by the default\n"), "{out}");
        assert!(!out.contains("note:"), "{out}");

        let out = explain(
            "uid=1000",
            PUSH,
            &[UPDATE],
            Some(true),
            &[".github/workflows/ci.yml"],
        );
        assert!(out.contains("changed files: .github/workflows/ci.yml\n"), "{out}");
        assert!(out.ends_with("verdict: deny by rule #2 \"workflows\"\n"), "{out}");
    }

    #[test]
    fn one_explanation_per_ref_update_or_one_for_the_request() {
        let out = explain(
            "uid=1000",
            PUSH,
            &[
                UPDATE,
                &format!("0 {ABC} refs/heads/topic"),
                &format!("{ABC} 0 refs/heads/old"),
            ],
            Some(false),
            &[],
        );
        assert_eq!(out.matches("\nverdict: ").count(), 3, "{out}");
        assert!(
            out.contains("refs/heads/topic 0000000..abcabca (create)"),
            "{out}"
        );
        assert!(out.contains("refs/heads/old abcabca..0000000 (delete)"), "{out}");
        // A delete changes no files: nothing to say about --changes.
        assert_eq!(out.matches("changed files: none given").count(), 1, "{out}");

        let out = explain(
            "uid=1000",
            "GET https://api.github.com/repos/org/app/pulls?page=2",
            &[],
            None,
            &[],
        );
        assert_eq!(out.matches("verdict: ").count(), 1);
        assert!(out.contains("request: GET api.github.com/repos/org/app/pulls?page=2 (repository org/app)"));
        assert!(out.contains("ref: not a pushed ref"), "{out}");
    }

    fn explain_api(request: &str, headers: &[&str], body: Option<&str>) -> String {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        let input = RequestInput {
            line: request,
            headers: &headers,
            body: body.map(str::as_bytes),
            body_cap: 1 << 20,
            scan: Some(&Scan::for_explain(None).unwrap()),
        };
        explain_request(&policy(), &GitHub::default(), "uid=1000", &input, &[], None, &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_an_api_write_carries_is_scanned_and_shown_never_the_secret() {
        let token = &ghgate_test_support::fixtures::github_token("Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0");
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(format!("key = {token}\n"))
        };
        let put = format!(r#"{{"message": "m", "content": "{b64}", "branch": "dev"}}"#);
        let out = explain_api(
            "PUT https://api.github.com/repos/org/app/contents/conf.txt",
            &[],
            Some(&put),
        );
        assert!(
            out.contains("note: contents are scanned with the built-in masking rules"),
            "{out}"
        );
        assert!(out.contains("  secrets: a github-pat secret ["), "{out}");
        assert!(out.contains("] in conf.txt\n"), "{out}");
        assert!(!out.contains(token.as_str()) && !out.contains(&b64), "{out}");
        // A blob: git objects no ref points at yet, decided by rules on secrets only.
        let blob = format!(r#"{{"content": "{token}"}}"#);
        let out = explain_api(
            "POST https://api.github.com/repos/org/app/git/blobs",
            &[],
            Some(&blob),
        );
        assert!(
            out.contains("API write: git objects that no ref points at yet\n"),
            "{out}"
        );
        assert!(
            out.contains("git objects (no ref yet: the git objects it creates) create"),
            "{out}"
        );
        assert!(out.contains("] in (the blob)\n"), "{out}");
        assert!(!out.contains(token.as_str()), "{out}");
        // The test policy has no rule on secrets: its ref rules do not hold the blob.
        assert!(
            out.contains("force-push-main\": no match: ref: the request creates git objects"),
            "{out}"
        );
        assert!(out.ends_with("request verdict: allow by the default\n"), "{out}");
        // Unscanned is said so.
        let out = explain_api(
            "POST https://api.github.com/repos/org/app/git/blobs",
            &[],
            Some(r#"{"content": "!!", "encoding": "base64"}"#),
        );
        assert!(
            out.contains("  secrets: not scanned ((the blob): its content is not base64"),
            "{out}"
        );
    }

    #[test]
    fn an_api_write_is_explained_as_the_ref_updates_it_makes() {
        let out = explain_api(
            "PATCH https://api.github.com/repos/org/app/git/refs/heads/main",
            &[],
            Some(r#"{"sha": "1111111111111111111111111111111111111111", "force": true}"#),
        );
        assert!(out.contains("API write: 1 ref update\n"), "{out}");
        assert!(
            out.contains("ref update refs/heads/main non-fast-forward, changed files unknown"),
            "{out}"
        );
        assert!(
            out.contains("[PATCH git/refs]\n  facts: refs/heads/main 0000000..1111111 (non-fast-forward)\n"),
            "{out}"
        );
        assert!(out.contains("request verdict: require_approval"), "{out}");
        assert!(out.ends_with("by rule #1 \"force-push-main\"\n"), "{out}");
        // GraphQL, with a method override and the body's facts.
        let doc = r#"{"query": "mutation { a: createCommitOnBranch(input: {branch: {repositoryNameWithOwner: \"org/app\", branchName: \"dev\"}, fileChanges: {additions: [{path: \".github/workflows/x.yml\", contents: \"\"}]}, message: {headline: \"h\"}, expectedHeadOid: \"x\"}) { clientMutationId } }"}"#;
        let out = explain_api("POST https://api.github.com/graphql", &[], Some(doc));
        assert!(
            out.contains("ref update refs/heads/dev fast-forward in org/app, changing .github/workflows/x.yml [GraphQL createCommitOnBranch]"),
            "{out}"
        );
        assert!(
            out.ends_with("request verdict: deny by rule #2 \"workflows\"\n"),
            "{out}"
        );
        let out = explain_api(
            "POST https://api.github.com/repos/org/app/git/refs/heads/topic",
            &["X-HTTP-Method-Override: DELETE"],
            None,
        );
        assert!(out.contains("refs/heads/topic delete"), "{out}");
        // What it cannot read, and why.
        let out = explain_api("POST https://api.github.com/graphql", &[], Some("not json"));
        assert!(
            out.contains("API write: a write the gateway cannot read as ref updates\n"),
            "{out}"
        );
        assert!(
            out.contains("unknown write: the GraphQL document is not read"),
            "{out}"
        );
        let out = explain_api("POST https://api.github.com/graphql", &[], None);
        assert!(
            out.contains("body: none given (--body), so it is read as empty\n"),
            "{out}"
        );
        // An ordinary request is explained as before.
        let out = explain_api(
            "POST https://api.github.com/repos/org/app/issues",
            &[],
            Some("{}"),
        );
        assert!(!out.contains("API write"), "{out}");
        assert!(out.ends_with("verdict: allow by the default\n"), "{out}");
        // Headers must be headers.
        let input = RequestInput {
            line: "GET api.github.com/x",
            headers: &["no colon".to_owned()],
            body: None,
            body_cap: 10,
            scan: None,
        };
        let e = explain_request(&policy(), &GitHub::default(), "uid=1", &input, &[], None, &[]).unwrap_err();
        assert!(e.to_string().contains("write \"Name: value\""), "{e}");
    }

    #[test]
    fn caller_facts_reach_the_rules() {
        let as_ = "uid=1001,ci_workflow=deploy,oidc.groups=ops|deployers,oidc.sub=repo:org/app";
        let out = explain(as_, "GET api.github.com/user", &[], None, &[]);
        assert!(out.contains("caller: uid=1001 ci_workflow=deploy oidc.groups=[\"ops\",\"deployers\"] oidc.sub=repo:org/app"), "{out}");
        assert!(
            out.ends_with("verdict: record_only by rule #3 \"ci-deploy\"\n"),
            "{out}"
        );
    }

    #[test]
    fn unusable_command_lines_say_what_to_write() {
        let e = explain_err("uid=1000,pid=5", PUSH, &[]);
        assert_eq!(
            e,
            "--as: unknown key \"pid\"; accepted keys: uid, user, exe, comm, cgroup, ci_repository, \
             ci_workflow, ci_ref, oidc.CLAIM (oidc.groups=a|b for a list)"
        );
        assert!(explain_err("user=alice", PUSH, &[]).starts_with("--as needs uid=N"));
        assert!(explain_err("uid=me", PUSH, &[]).contains("uid \"me\" is not a number"));
        assert!(explain_err("uid=1,uid=2", PUSH, &[]).contains("uid is given twice"));
        assert!(explain_err("uid=1,oidc.=x", PUSH, &[]).contains("unknown key \"oidc.\""));
        for bad in [
            "https://github.com/",
            "POST",
            "POST ftp://x/y",
            "POST https:///path",
            "GET a b",
        ] {
            assert!(
                explain_err("uid=1", bad, &[]).contains("write \"METHOD URL\""),
                "{bad}"
            );
        }
        assert!(explain_err("uid=1", PUSH, &["1 2"]).contains("three words are needed"));
        assert!(explain_err("uid=1", PUSH, &["xyz 2 refs/heads/a"]).contains("\"xyz\" is not an object id"));
        // An abbreviated id names no one object: the whole id is needed (or 0).
        assert!(explain_err("uid=1", PUSH, &["0 abc refs/heads/a"]).contains("\"abc\" is not an object id"));
        let long = "ab".repeat(32);
        assert!(
            explain_err("uid=1", PUSH, &[&format!("{ABC} {long} refs/heads/a")])
                .contains("different object formats")
        );
        assert!(explain_err("uid=1", PUSH, &[&format!("0 {ABC} main")]).contains("(refs/heads/main?)"));
        let e = explain_text(&policy(), &GitHub::default(), "uid=1", PUSH, &[], Some(true), &[]).unwrap_err();
        assert!(matches!(e, Invalid::FastForwardWithoutRefs), "{e}");
        assert!(e.to_string().contains("give --ref-update too"), "{e}");
    }

    #[test]
    fn requests_are_read_with_or_without_a_scheme() {
        let target = |text: &str| {
            let (method, url) = parse_request(text).unwrap();
            Target::parse(&method, &url, &GitHub::default()).unwrap().req
        };
        let t = target("post https://user@GitHub.com:443/o/r.git/info/refs?service=git-upload-pack");
        assert_eq!((t.method.as_str(), t.host.as_str()), ("POST", "github.com"));
        assert_eq!(t.path_and_query(), "/o/r.git/info/refs?service=git-upload-pack");
        let t = target("GET api.github.com");
        assert_eq!((t.host.as_str(), t.path.as_str()), ("api.github.com", "/"));
        let t = target("GET api.github.com?x=1");
        assert_eq!(t.path_and_query(), "/?x=1");
    }

    #[test]
    fn a_request_the_gateway_refuses_itself_meets_no_rule() {
        let out = explain(
            "uid=1000",
            "POST https://github.com/org/app.git/../x.git/git-receive-pack",
            &[],
            None,
            &[],
        );
        assert!(
            out.ends_with("verdict: refused by the gateway itself with 400 Bad Request, before any rule: the request's path \"/org/app.git/../x.git/git-receive-pack\" is refused: a dot segment (. or ..)\n"),
            "{out}"
        );
        // The spelling is GitHub's business, not the rule's: /ORG/APP.GIT is org/app.
        let out = explain(
            "uid=1000",
            "POST https://GitHub.com./ORG/%41pp.GIT/git-receive-pack",
            &[UPDATE],
            None,
            &[],
        );
        assert!(
            out.contains(
                "request: POST github.com/ORG/App.GIT/git-receive-pack (repository org/app, git receive-pack)"
            ),
            "{out}"
        );
        assert!(out.ends_with("by rule #1 \"force-push-main\"\n"), "{out}");
    }

    #[test]
    fn check_reports_ok_or_an_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, POLICY).unwrap();
        let cli = Cli::try_parse_from(["policy", "check", good.to_str().unwrap()]).unwrap();
        assert_eq!(run(cli.args).unwrap(), ExitCode::SUCCESS);

        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            POLICY.replace("approvers = \"maintainers\"", "approvers = \"admins\""),
        )
        .unwrap();
        let cli = Cli::try_parse_from(["policy", "check", bad.to_str().unwrap()]).unwrap();
        let e = run(cli.args).unwrap_err();
        let invalid = e.downcast_ref::<Invalid>().expect("an Invalid error");
        assert!(
            invalid
                .to_string()
                .contains("rule #1 \"force-push-main\": approvers \"admins\""),
            "{invalid}"
        );

        let missing = dir.path().join("missing.toml");
        let cli = Cli::try_parse_from(["policy", "check", missing.to_str().unwrap()]).unwrap();
        assert!(run(cli.args).unwrap_err().downcast_ref::<Invalid>().is_some());
    }

    #[test]
    fn explain_takes_config_as_an_alias_and_refuses_both_ff_flags() {
        let args = [
            "policy",
            "explain",
            "--config",
            "p.toml",
            "--as",
            "uid=1",
            "--request",
            PUSH,
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Explain(a) = cli.args.command else {
            panic!("not explain")
        };
        assert_eq!(a.policy, PathBuf::from("p.toml"));
        let both = [&args[..], &["--fast-forward", "--non-fast-forward"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
