//! The policy file: its serde model and the one validation that turns it into a `Policy`.
//!
//! Every mistake is refused here, when the text is parsed, with an error that names the file and
//! the rule (or `[approvers.X]`, or the default) and says what to write instead. A rule that
//! could never match, a setting that would be silently ignored, or a name that means nothing to
//! the gateway is a mistake: in a security policy, a rule that quietly does nothing is a hole.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    Action, ApprovalSpec, ApproverGroup, Policy, Rule, RuleRef,
    caller::{
        CallerKeys, ConditionError, SUBJECT_KEYS, each_given, full_refs, non_empty, owner_name_problem,
    },
    classify::{COPILOT_NAMES, GitService},
    duration::{self, DurationError},
    eval::{Condition, RequestField},
    facts::RefKind,
};

/// How long a pending approval lives unless the rule says otherwise.
const DEFAULT_EXPIRES: &str = "24h";

/// Why a policy text is refused. `path` only names the file in messages: nothing here reads it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// TOML syntax, or a key or value the file model does not know, outside any rule.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// `at` names the place: `rule #3 "force-push-main"`, `[approvers.maintainers]`, `default`.
    #[error("{}: {at}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        at: String,
        source: RuleError,
    },
}

/// What is wrong with one rule, the default or an approver group. Each message says what to
/// write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A key or value the rule model does not know (toml's message, on one line).
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Condition(#[from] ConditionError),
    #[error(
        "{keys} describe{s} pushed refs, which only receive-pack carries, but git_service also names \
         {other}; use git_service = [\"receive-pack\"] or leave git_service out",
        keys = keys.join(", "),
        s = if keys.len() == 1 { "s" } else { "" }
    )]
    NotReceivePack {
        keys: Vec<&'static str>,
        other: GitService,
    },
    #[error(
        "copilot \"{0}\" is not a Copilot endpoint name; use one of {names} (or \"*\" for any)",
        names = COPILOT_NAMES.join(", ")
    )]
    UnknownCopilot(String),
    #[error("paths: an empty pattern matches no file; use \"*\" for any file")]
    EmptyPathPattern,
    #[error(
        "secrets: {0:?} is not a masking rule id; name rules as `ghgate mask --list-rules` lists them, \
         or \"*\" for any"
    )]
    BadSecretRule(String),
    #[error("secret_seen = false would match every push; write secret_seen = true, or leave it out")]
    SecretSeenFalse,
    #[error("`name` is empty: give the rule a name or leave `name` out")]
    EmptyName,
    #[error("the name \"{name}\" is already used by rule #{first}; rule names must be unique")]
    DuplicateName { name: String, first: usize },
    /// A rule without conditions that is not the last (`next` is its successor's 1-based index).
    #[error(
        "the rule has no conditions, so it matches everything and {} never reached; make it the \
         last rule, or set `default` instead",
        if next < count { format!("rules #{next}..#{count} are") } else { format!("rule #{next} is") }
    )]
    Unreachable { next: usize, count: usize },
    #[error("the group has no members: give users = [..] or uids = [..]")]
    EmptyGroup,
    #[error("user {0:?} is not a user name")]
    BadUser(String),
    /// `key` is the setting with its prefix (`approvers`, `default_hold`).
    #[error(
        "`{key}` only applies to {action_key} = \"require_approval\", not \"{action}\"; remove it or \
         change the action"
    )]
    OnlyForApproval {
        key: String,
        action_key: &'static str,
        action: &'static str,
    },
    #[error(
        "`{key}` is shown only when a request is denied or held for approval, never for \
         {action_key} = \"{action}\"; remove it"
    )]
    MessageNeverShown {
        key: String,
        action_key: &'static str,
        action: &'static str,
    },
    /// `defined` lists the groups there are ("groups defined: a, b").
    #[error("{action_key} = \"require_approval\" needs `{prefix}approvers = \"<group>\"` ({defined})")]
    NoApprovers {
        action_key: &'static str,
        prefix: &'static str,
        defined: String,
    },
    #[error("{prefix}approvers \"{group}\" is not a group defined under [approvers] ({defined})")]
    UnknownGroup {
        prefix: &'static str,
        group: String,
        defined: String,
    },
    #[error(
        "unknown_write = \"record_only\" is not a choice: use \"require_approval\", \"deny\" or \"allow\""
    )]
    UnknownWriteRecordOnly,
    /// unknown_write_* settings without unknown_write.
    #[error("`{0}` needs unknown_write = \"require_approval\" (or remove it)")]
    UnknownWriteUnset(&'static str),
    #[error("{prefix}approvals = 0: at least one approval is needed (use \"allow\" to need none)")]
    NoApprovals { prefix: &'static str },
    #[error(
        "{prefix}approvals = {approvals}, but group \"{group}\" has only {members} member{s}, so it could \
         never be approved",
        s = if *members == 1 { "" } else { "s" }
    )]
    TooFewApprovers {
        prefix: &'static str,
        approvals: u32,
        group: String,
        members: usize,
    },
    /// `key` is the setting with its prefix (`expires`, `default_hold`).
    #[error("{key}: {source}")]
    Duration { key: String, source: DurationError },
    #[error(
        "{prefix}hold = \"{hold}\" is longer than {prefix}expires = \"{expires}\": a request \
         cannot wait for an approval that has lapsed"
    )]
    HoldOutlivesApproval {
        prefix: &'static str,
        hold: String,
        expires: String,
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
    /// What decides a write the gateway cannot read as ref updates (and no rule names).
    #[serde(default)]
    unknown_write: Option<ActionName>,
    #[serde(default)]
    unknown_write_message: Option<String>,
    #[serde(default)]
    unknown_write_approvers: Option<String>,
    #[serde(default)]
    unknown_write_approvals: Option<u32>,
    #[serde(default)]
    unknown_write_expires: Option<String>,
    #[serde(default)]
    unknown_write_hold: Option<String>,
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
    "secrets",
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
    #[serde(default)]
    secrets: Option<Vec<String>>,
    #[serde(default)]
    secret_seen: Option<bool>,
}

/// The approval settings of a rule or of the default, with the key names the file uses.
struct ApprovalKeys {
    prefix: &'static str,
    approvers: Option<String>,
    approvals: Option<u32>,
    expires: Option<String>,
    hold: Option<String>,
    message: Option<String>,
}

impl Policy {
    /// Parses and validates policy text; `path` names the file in errors and in
    /// [`Policy::source`] (reading the file is the caller's business).
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: toml_message(text, &e),
        })?;
        let invalid = |at: String, source: RuleError| PolicyError::Invalid {
            path: path.to_owned(),
            at,
            source,
        };

        let mut groups = BTreeMap::new();
        for (name, g) in file.approvers {
            let at = format!("[approvers.{name}]");
            if g.users.is_empty() && g.uids.is_empty() {
                return Err(invalid(at, RuleError::EmptyGroup));
            }
            if let Some(u) = g.users.iter().find(|u| u.trim().is_empty()) {
                return Err(invalid(at, RuleError::BadUser(u.clone())));
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
        .map_err(|e| invalid("default".into(), e))?;

        let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let count = file.rule.len();
        for (i, table) in file.rule.into_iter().enumerate() {
            let label = RuleRef {
                index: Some(i + 1),
                name: table.get("name").and_then(|n| n.as_str()).map(str::to_owned),
            };
            let at = label.to_string();
            let rule = rule_from_table(table, &groups).map_err(|e| invalid(at.clone(), e))?;
            if let Some(name) = &rule.name {
                if name.trim().is_empty() {
                    return Err(invalid(at, RuleError::EmptyName));
                }
                if let Some(first) = names.insert(name.clone(), i + 1) {
                    return Err(invalid(
                        at,
                        RuleError::DuplicateName {
                            name: name.clone(),
                            first,
                        },
                    ));
                }
            }
            if rule.conditions.is_empty() && i + 1 < count {
                return Err(invalid(at, RuleError::Unreachable { next: i + 2, count }));
            }
            rules.push(rule);
        }

        let unknown_keys = ApprovalKeys {
            prefix: "unknown_write_",
            approvers: file.unknown_write_approvers,
            approvals: file.unknown_write_approvals,
            expires: file.unknown_write_expires,
            hold: file.unknown_write_hold,
            message: file.unknown_write_message.clone(),
        };
        let (unknown_write, unknown_write_set) = match file.unknown_write {
            Some(ActionName::RecordOnly) => {
                return Err(invalid("unknown_write".into(), RuleError::UnknownWriteRecordOnly));
            }
            Some(name) => (
                approval_action(name, unknown_keys, &groups)
                    .map_err(|e| invalid("unknown_write".into(), e))?,
                true,
            ),
            None => {
                let given = [
                    ("unknown_write_message", unknown_keys.message.is_some()),
                    ("unknown_write_approvers", unknown_keys.approvers.is_some()),
                    ("unknown_write_approvals", unknown_keys.approvals.is_some()),
                    ("unknown_write_expires", unknown_keys.expires.is_some()),
                    ("unknown_write_hold", unknown_keys.hold.is_some()),
                ];
                if let Some((k, _)) = given.iter().find(|(_, set)| *set) {
                    return Err(invalid("unknown_write".into(), RuleError::UnknownWriteUnset(k)));
                }
                (implied_unknown_write(&rules), false)
            }
        };

        Ok(Policy {
            default,
            default_message: file.default_message,
            unknown_write,
            unknown_write_message: file.unknown_write_message,
            unknown_write_set,
            rules,
            groups,
            source: Some(path.to_owned()),
        })
    }
}

/// `unknown_write` when the file does not set it: where rules guard refs or paths, the approval
/// of the first such rule that asks for one (deny when none does); else allow.
fn implied_unknown_write(rules: &[Rule]) -> Action {
    let guarded: Vec<&Rule> = rules.iter().filter(|r| r.needs_ref()).collect();
    if guarded.is_empty() {
        return Action::Allow;
    }
    guarded
        .iter()
        .find_map(|r| match &r.action {
            a @ Action::RequireApproval(_) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or(Action::Deny)
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

fn rule_from_table(
    mut table: toml::Table,
    groups: &BTreeMap<String, ApproverGroup>,
) -> Result<Rule, RuleError> {
    for key in SUBJECT_KEYS.iter().chain(LIST_KEYS) {
        if let Some(v) = table.get_mut(*key)
            && !v.is_array()
        {
            *v = toml::Value::Array(vec![v.clone()]);
        }
    }
    let r: RuleFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| RuleError::Shape(e.message().trim().replace('\n', "; ")))?;

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

    let caller = CallerKeys {
        uid: r.uid,
        user: r.user,
        exe: r.exe,
        comm: r.comm,
        cgroup: r.cgroup,
        ci_repository: r.ci_repository,
        ci_workflow: r.ci_workflow,
        ci_ref: r.ci_ref,
        oidc: r.oidc,
        oidc_groups: r.oidc_groups,
    };
    let mut conditions: Vec<Condition> = caller.conditions()?.into_iter().map(Condition::Caller).collect();
    let request_fields = [
        (RequestField::Host, r.host),
        (RequestField::Method, r.method),
        (RequestField::Path, r.path),
        (RequestField::Repository, r.repository),
    ];
    conditions.extend(each_given(request_fields, request_condition)?);
    let ref_keys: Vec<&'static str> = [
        ("ref", r.ref_.is_some()),
        ("ref_op", r.ref_op.is_some()),
        ("paths", r.paths.is_some()),
        ("secrets", r.secrets.is_some()),
        ("secret_seen", r.secret_seen.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if let Some(services) = r.git_service {
        non_empty("git_service", &services)?;
        if let Some(other) = services.iter().find(|s| **s != GitService::ReceivePack)
            && !ref_keys.is_empty()
        {
            return Err(RuleError::NotReceivePack {
                keys: ref_keys,
                other: *other,
            });
        }
        conditions.push(Condition::GitService(services));
    }
    if let Some(names) = r.copilot {
        non_empty("copilot", &names)?;
        if let Some(bad) = names
            .iter()
            .find(|n| *n != "*" && !COPILOT_NAMES.contains(&n.as_str()))
        {
            return Err(RuleError::UnknownCopilot(bad.clone()));
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
            return Err(RuleError::EmptyPathPattern);
        }
        conditions.push(Condition::Paths(paths));
    }
    if let Some(rules) = r.secrets {
        non_empty("secrets", &rules)?;
        if let Some(bad) = rules
            .iter()
            .find(|r| r.trim().is_empty() || (r.contains('*') && *r != "*"))
        {
            return Err(RuleError::BadSecretRule(bad.clone()));
        }
        conditions.push(Condition::Secrets(rules));
    }
    match r.secret_seen {
        Some(true) => conditions.push(Condition::SecretSeen),
        Some(false) => return Err(RuleError::SecretSeenFalse),
        None => {}
    }
    Ok(Rule {
        name: r.name,
        action,
        message: r.message,
        conditions,
    })
}

fn request_condition(field: RequestField, patterns: Vec<String>) -> Result<Condition, ConditionError> {
    let key = field.key();
    non_empty(key, &patterns)?;
    for p in &patterns {
        let problem = match field {
            RequestField::Host if p.contains("://") || p.contains('/') => Some(
                "is not a host name; write the name alone, e.g. \"github.com\" or \"*.githubcopilot.com\"",
            ),
            RequestField::Path if !p.starts_with('/') && !p.starts_with('*') => {
                Some("does not start with / and would never match; paths are written \"/repos/*\"")
            }
            RequestField::Path if p.contains('?') => {
                Some("has a query; paths are matched without their query, so leave it out")
            }
            RequestField::Repository => owner_name_problem(p),
            RequestField::Method if p.is_empty() || p.contains(char::is_whitespace) => {
                Some("is not an HTTP method")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(ConditionError::BadPattern {
                key,
                pattern: p.clone(),
                problem,
            });
        }
    }
    Ok(Condition::Request {
        field,
        patterns: patterns.iter().map(|p| field.fold(p)).collect(),
    })
}

/// The action, with its approval settings checked: present only for require_approval, naming
/// a group that can supply the approvals asked for.
fn approval_action(
    name: ActionName,
    keys: ApprovalKeys,
    groups: &BTreeMap<String, ApproverGroup>,
) -> Result<Action, RuleError> {
    let p = keys.prefix;
    let action_key = match p {
        "" => "action",
        "default_" => "default",
        _ => "unknown_write",
    };
    if name != ActionName::RequireApproval {
        let given = [
            ("approvers", keys.approvers.is_some()),
            ("approvals", keys.approvals.is_some()),
            ("expires", keys.expires.is_some()),
            ("hold", keys.hold.is_some()),
        ];
        if let Some((k, _)) = given.iter().find(|(_, set)| *set) {
            return Err(RuleError::OnlyForApproval {
                key: format!("{p}{k}"),
                action_key,
                action: name.name(),
            });
        }
        if keys.message.is_some() && matches!(name, ActionName::Allow | ActionName::RecordOnly) {
            return Err(RuleError::MessageNeverShown {
                key: format!("{p}message"),
                action_key,
                action: name.name(),
            });
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
            let Some(group) = keys.approvers else {
                return Err(RuleError::NoApprovers {
                    action_key,
                    prefix: p,
                    defined,
                });
            };
            let Some(members) = groups.get(&group) else {
                return Err(RuleError::UnknownGroup {
                    prefix: p,
                    group,
                    defined,
                });
            };
            let approvals = keys.approvals.unwrap_or(1);
            if approvals == 0 {
                return Err(RuleError::NoApprovals { prefix: p });
            }
            if approvals as usize > members.size() {
                return Err(RuleError::TooFewApprovers {
                    prefix: p,
                    approvals,
                    group,
                    members: members.size(),
                });
            }
            let duration = |key: &str, text: &str| {
                duration::parse(text).map_err(|source| RuleError::Duration {
                    key: format!("{p}{key}"),
                    source,
                })
            };
            let expires_text = keys.expires.as_deref().unwrap_or(DEFAULT_EXPIRES);
            let expires = duration("expires", expires_text)?;
            let hold = match keys.hold.as_deref() {
                None => None,
                Some(h) => {
                    let hold = duration("hold", h)?;
                    if hold > expires {
                        return Err(RuleError::HoldOutlivesApproval {
                            prefix: p,
                            hold: h.to_owned(),
                            expires: expires_text.to_owned(),
                        });
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
