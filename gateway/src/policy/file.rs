//! The policy file: its serde model and the one validation that turns it into a `Policy`.
//!
//! Every mistake is refused here, at load, with an error that names the file and the rule (or
//! `[approvers.X]`, or the default) and says what to write instead. A rule that could never
//! match, a setting that would be silently ignored, or a name that means nothing to the gateway
//! is a mistake: in a security policy, a rule that quietly does nothing is a hole.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    Action, ApprovalSpec, ApproverGroup, Policy, Rule, RuleRef, duration,
    eval::{Condition, TextField},
    facts::RefKind,
    facts::{COPILOT_NAMES, GitService},
};

/// How long a pending approval lives unless the rule says otherwise.
const DEFAULT_EXPIRES: &str = "24h";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, or a key or value the file model does not know, outside any rule.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// `at` names the place: `rule #3 "force-push-main"`, `[approvers.maintainers]`, `default`.
    #[error("{}: {at}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        at: String,
        message: String,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActionName {
    #[default]
    Allow,
    Deny,
    RequireApproval,
    RecordOnly,
}

impl ActionName {
    fn name(self) -> &'static str {
        match self {
            ActionName::Allow => "allow",
            ActionName::Deny => "deny",
            ActionName::RequireApproval => "require_approval",
            ActionName::RecordOnly => "record_only",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// What happens when no rule matches.
    #[serde(default)]
    default: ActionName,
    #[serde(default)]
    default_message: Option<String>,
    #[serde(default)]
    default_approvers: Option<String>,
    #[serde(default)]
    default_approvals: Option<u32>,
    #[serde(default)]
    default_expires: Option<String>,
    #[serde(default)]
    default_hold: Option<String>,
    #[serde(default)]
    approvers: BTreeMap<String, GroupFile>,
    /// Kept as tables so that an error inside a rule can name the rule.
    #[serde(default)]
    rule: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
}

/// The caller facts a rule can match on (also what `ghgate policy explain --as` takes).
pub const SUBJECT_KEYS: &[&str] = &[
    "uid",
    "user",
    "exe",
    "comm",
    "cgroup",
    "ci_repository",
    "ci_workflow",
    "ci_ref",
];

/// The keys whose value is a list (with `SUBJECT_KEYS`); a single value is read as a list of one.
const LIST_KEYS: &[&str] = &[
    "oidc_groups",
    "host",
    "method",
    "path",
    "repository",
    "git_service",
    "copilot",
    "ref",
    "ref_op",
    "paths",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    name: Option<String>,
    action: ActionName,
    #[serde(default)]
    approvers: Option<String>,
    #[serde(default)]
    approvals: Option<u32>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    hold: Option<String>,
    #[serde(default)]
    message: Option<String>,
    // Conditions, in the order they are checked (and explained).
    #[serde(default)]
    uid: Option<Vec<u32>>,
    #[serde(default)]
    user: Option<Vec<String>>,
    #[serde(default)]
    exe: Option<Vec<String>>,
    #[serde(default)]
    comm: Option<Vec<String>>,
    #[serde(default)]
    cgroup: Option<Vec<String>>,
    #[serde(default)]
    ci_repository: Option<Vec<String>>,
    #[serde(default)]
    ci_workflow: Option<Vec<String>>,
    #[serde(default)]
    ci_ref: Option<Vec<String>>,
    #[serde(default)]
    oidc: Option<BTreeMap<String, toml::Value>>,
    #[serde(default)]
    oidc_groups: Option<Vec<String>>,
    #[serde(default)]
    host: Option<Vec<String>>,
    #[serde(default)]
    method: Option<Vec<String>>,
    #[serde(default)]
    path: Option<Vec<String>>,
    #[serde(default)]
    repository: Option<Vec<String>>,
    #[serde(default)]
    git_service: Option<Vec<GitService>>,
    #[serde(default)]
    copilot: Option<Vec<String>>,
    #[serde(default, rename = "ref")]
    ref_: Option<Vec<String>>,
    #[serde(default)]
    ref_op: Option<Vec<RefKind>>,
    #[serde(default)]
    paths: Option<Vec<String>>,
}

/// The approval settings of a rule or of the default, with the key names the file uses.
struct ApprovalKeys<'a> {
    prefix: &'a str,
    approvers: Option<String>,
    approvals: Option<u32>,
    expires: Option<String>,
    hold: Option<String>,
    message: Option<String>,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates policy text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: toml_message(text, &e),
        })?;
        let invalid = |at: String, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            at,
            message,
        };

        let mut groups = BTreeMap::new();
        for (name, g) in file.approvers {
            let at = format!("[approvers.{name}]");
            if g.users.is_empty() && g.uids.is_empty() {
                return Err(invalid(
                    at,
                    "the group has no members: give users = [..] or uids = [..]".into(),
                ));
            }
            if let Some(u) = g.users.iter().find(|u| u.trim().is_empty()) {
                return Err(invalid(at, format!("user {u:?} is not a user name")));
            }
            groups.insert(
                name,
                ApproverGroup {
                    users: dedup(g.users),
                    uids: dedup(g.uids),
                },
            );
        }

        let default = approval_action(
            file.default,
            ApprovalKeys {
                prefix: "default_",
                approvers: file.default_approvers,
                approvals: file.default_approvals,
                expires: file.default_expires,
                hold: file.default_hold,
                message: file.default_message.clone(),
            },
            &groups,
        )
        .map_err(|m| invalid("default".into(), m))?;

        let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let count = file.rule.len();
        for (i, table) in file.rule.into_iter().enumerate() {
            let label = RuleRef {
                index: Some(i + 1),
                name: table.get("name").and_then(|n| n.as_str()).map(str::to_owned),
            };
            let at = label.to_string();
            let rule = rule_from_table(table, &groups).map_err(|m| invalid(at.clone(), m))?;
            if let Some(name) = &rule.name {
                if name.trim().is_empty() {
                    return Err(invalid(
                        at,
                        "`name` is empty: give the rule a name or leave `name` out".into(),
                    ));
                }
                if let Some(first) = names.insert(name.clone(), i + 1) {
                    return Err(invalid(
                        at,
                        format!(
                            "the name \"{name}\" is already used by rule #{first}; rule names must be unique"
                        ),
                    ));
                }
            }
            if rule.conditions.is_empty() && i + 1 < count {
                return Err(invalid(
                    at,
                    format!(
                        "the rule has no conditions, so it matches everything and rule{} #{}{} never reached; \
                         make it the last rule, or set `default` instead",
                        if i + 2 < count { "s" } else { "" },
                        i + 2,
                        if i + 2 < count {
                            format!("..#{count} are")
                        } else {
                            " is".into()
                        },
                    ),
                ));
            }
            rules.push(rule);
        }

        Ok(Policy {
            default,
            default_message: file.default_message,
            rules,
            groups,
            source: Some(path.to_owned()),
        })
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// "line 3, column 5: unknown field `foo`, expected …": toml's position and message on one line.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

fn rule_from_table(mut table: toml::Table, groups: &BTreeMap<String, ApproverGroup>) -> Result<Rule, String> {
    for key in SUBJECT_KEYS.iter().chain(LIST_KEYS) {
        if let Some(v) = table.get_mut(*key)
            && !v.is_array()
        {
            *v = toml::Value::Array(vec![v.clone()]);
        }
    }
    let r: RuleFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().replace('\n', "; "))?;

    let action = approval_action(
        r.action,
        ApprovalKeys {
            prefix: "",
            approvers: r.approvers,
            approvals: r.approvals,
            expires: r.expires,
            hold: r.hold,
            message: r.message.clone(),
        },
        groups,
    )?;

    let mut conditions = Vec::new();
    if let Some(uids) = r.uid {
        non_empty("uid", &uids)?;
        conditions.push(Condition::Uid(uids));
    }
    let text_fields = [
        (TextField::User, r.user),
        (TextField::Exe, r.exe),
        (TextField::Comm, r.comm),
        (TextField::Cgroup, r.cgroup),
        (TextField::CiRepository, r.ci_repository),
        (TextField::CiWorkflow, r.ci_workflow),
        (TextField::CiRef, r.ci_ref),
    ];
    let request_fields = [
        (TextField::Host, r.host),
        (TextField::Method, r.method),
        (TextField::Path, r.path),
        (TextField::Repository, r.repository),
    ];
    for (field, patterns) in text_fields {
        if let Some(p) = patterns {
            conditions.push(text_condition(field, p)?);
        }
    }
    if let Some(claims) = r.oidc {
        if claims.is_empty() {
            return Err(
                "`oidc` is an empty table, which matches nothing; remove it to match any caller".into(),
            );
        }
        let mut pairs = Vec::new();
        for (claim, v) in claims {
            let pattern = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "oidc.{claim} = {other}: give a string (a glob), a number or a boolean"
                    ));
                }
            };
            pairs.push((claim, pattern));
        }
        conditions.push(Condition::Oidc(pairs));
    }
    if let Some(groups) = r.oidc_groups {
        non_empty("oidc_groups", &groups)?;
        conditions.push(Condition::OidcGroups(groups));
    }
    for (field, patterns) in request_fields {
        if let Some(p) = patterns {
            conditions.push(text_condition(field, p)?);
        }
    }
    let ref_keys: Vec<&str> = [
        ("ref", r.ref_.is_some()),
        ("ref_op", r.ref_op.is_some()),
        ("paths", r.paths.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if let Some(services) = r.git_service {
        non_empty("git_service", &services)?;
        if let Some(other) = services.iter().find(|s| **s != GitService::ReceivePack)
            && !ref_keys.is_empty()
        {
            return Err(format!(
                "{} describe{} pushed refs, which only receive-pack carries, but git_service also names \
                 {other}; use git_service = [\"receive-pack\"] or leave git_service out",
                ref_keys.join(", "),
                if ref_keys.len() == 1 { "s" } else { "" },
            ));
        }
        conditions.push(Condition::GitService(services));
    }
    if let Some(names) = r.copilot {
        non_empty("copilot", &names)?;
        if let Some(bad) = names
            .iter()
            .find(|n| *n != "*" && !COPILOT_NAMES.contains(&n.as_str()))
        {
            return Err(format!(
                "copilot \"{bad}\" is not a Copilot endpoint name; use one of {} (or \"*\" for any)",
                COPILOT_NAMES.join(", ")
            ));
        }
        conditions.push(Condition::Copilot(names));
    }
    if let Some(refs) = r.ref_ {
        non_empty("ref", &refs)?;
        full_refs("ref", &refs)?;
        conditions.push(Condition::Ref(refs));
    }
    if let Some(ops) = r.ref_op {
        non_empty("ref_op", &ops)?;
        conditions.push(Condition::RefOp(ops));
    }
    if let Some(paths) = r.paths {
        non_empty("paths", &paths)?;
        let paths: Vec<String> = paths
            .into_iter()
            .map(|p| p.trim_start_matches('/').to_owned())
            .collect();
        if paths.iter().any(String::is_empty) {
            return Err("paths: an empty pattern matches no file; use \"*\" for any file".into());
        }
        conditions.push(Condition::Paths(paths));
    }
    Ok(Rule {
        name: r.name,
        action,
        message: r.message,
        conditions,
    })
}

fn non_empty<T>(key: &str, items: &[T]) -> Result<(), String> {
    if items.is_empty() {
        return Err(format!(
            "`{key}` is an empty list, which matches nothing; leave `{key}` out to match any"
        ));
    }
    Ok(())
}

/// Refs in a push are always full names; "main" would silently never match.
fn full_refs(key: &str, patterns: &[String]) -> Result<(), String> {
    if let Some(p) = patterns
        .iter()
        .find(|p| !p.starts_with("refs/") && !p.starts_with('*'))
    {
        return Err(format!(
            "{key} \"{p}\" is not a full ref name and would never match; write \"refs/heads/{p}\" \
             (or \"refs/tags/{p}\")"
        ));
    }
    Ok(())
}

fn text_condition(field: TextField, patterns: Vec<String>) -> Result<Condition, String> {
    let key = field.key();
    non_empty(key, &patterns)?;
    for p in &patterns {
        let problem = match field {
            TextField::Host if p.contains("://") || p.contains('/') => Some(
                "is not a host name; write the name alone, e.g. \"github.com\" or \"*.githubcopilot.com\"",
            ),
            TextField::Path if !p.starts_with('/') && !p.starts_with('*') => {
                Some("does not start with / and would never match; paths are written \"/repos/*\"")
            }
            TextField::Path if p.contains('?') => {
                Some("has a query; paths are matched without their query, so leave it out")
            }
            TextField::Repository | TextField::CiRepository if p != "*" && !p.contains('/') => {
                Some("is not owner/name and would never match; write \"org/*\" for every repository of org")
            }
            TextField::Method if p.is_empty() || p.contains(char::is_whitespace) => {
                Some("is not an HTTP method")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(format!("{key} \"{p}\" {problem}"));
        }
    }
    if field == TextField::CiRef {
        full_refs(key, &patterns)?;
    }
    Ok(Condition::Text {
        field,
        patterns: patterns.iter().map(|p| field.fold(p)).collect(),
    })
}

/// The action, with its approval settings checked: present only for require_approval, naming
/// a group that can supply the approvals asked for.
fn approval_action(
    name: ActionName,
    keys: ApprovalKeys<'_>,
    groups: &BTreeMap<String, ApproverGroup>,
) -> Result<Action, String> {
    let p = keys.prefix;
    let action_key = if p.is_empty() { "action" } else { "default" };
    if name != ActionName::RequireApproval {
        let given = [
            ("approvers", keys.approvers.is_some()),
            ("approvals", keys.approvals.is_some()),
            ("expires", keys.expires.is_some()),
            ("hold", keys.hold.is_some()),
        ];
        if let Some((k, _)) = given.iter().find(|(_, set)| *set) {
            return Err(format!(
                "`{p}{k}` only applies to {action_key} = \"require_approval\", not \"{}\"; remove it or \
                 change the action",
                name.name()
            ));
        }
        if keys.message.is_some() && matches!(name, ActionName::Allow | ActionName::RecordOnly) {
            return Err(format!(
                "`{p}message` is shown only when a request is denied or held for approval, never for \
                 {action_key} = \"{}\"; remove it",
                name.name()
            ));
        }
    }
    Ok(match name {
        ActionName::Allow => Action::Allow,
        ActionName::Deny => Action::Deny,
        ActionName::RecordOnly => Action::RecordOnly,
        ActionName::RequireApproval => {
            let defined = if groups.is_empty() {
                "no groups are defined under [approvers]".to_owned()
            } else {
                let names: Vec<&str> = groups.keys().map(String::as_str).collect();
                format!("groups defined: {}", names.join(", "))
            };
            let group = keys.approvers.ok_or_else(|| {
                format!("{action_key} = \"require_approval\" needs `{p}approvers = \"<group>\"` ({defined})")
            })?;
            let members = groups.get(&group).ok_or_else(|| {
                format!("{p}approvers \"{group}\" is not a group defined under [approvers] ({defined})")
            })?;
            let approvals = keys.approvals.unwrap_or(1);
            if approvals == 0 {
                return Err(format!(
                    "{p}approvals = 0: at least one approval is needed (use \"allow\" to need none)"
                ));
            }
            if approvals as usize > members.size() {
                return Err(format!(
                    "{p}approvals = {approvals}, but group \"{group}\" has only {} member{}, so it could \
                     never be approved",
                    members.size(),
                    if members.size() == 1 { "" } else { "s" }
                ));
            }
            let expires_text = keys.expires.as_deref().unwrap_or(DEFAULT_EXPIRES);
            let expires = duration::parse(expires_text).map_err(|e| format!("{p}expires: {e}"))?;
            let hold = match keys.hold.as_deref() {
                None => None,
                Some(h) => {
                    let hold = duration::parse(h).map_err(|e| format!("{p}hold: {e}"))?;
                    if hold > expires {
                        return Err(format!(
                            "{p}hold = \"{h}\" is longer than {p}expires = \"{expires_text}\": a request \
                             cannot wait for an approval that has lapsed"
                        ));
                    }
                    Some(hold)
                }
            };
            Action::RequireApproval(ApprovalSpec {
                group,
                approvals,
                expires,
                hold,
            })
        }
    })
}
