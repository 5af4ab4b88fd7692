//! ghgate's policy model: which requests and pushes pass, are refused, are only recorded, or
//! wait for people to approve them. The rule model and its TOML file (validated once, when
//! parsed), evaluation and explanations, the facts they decide on, the one caller matcher
//! ([`caller`], which credential rules use too) and the request classifier ([`classify`]) those
//! facts come from.
//!
//! Pure: this crate never reads a file, a socket, the environment or the clock. The daemon
//! reads the policy file and keeps it current, establishes who calls, and enforces verdicts
//! (holds, approvals, their expiry); `ghgate policy explain` calls the same evaluation, so it
//! shows exactly what the gateway would decide. A file that is not understood in full is
//! refused, never half-applied.
//!
//! Rules are tried in order and the first that matches decides; when none does, the default
//! decides. Facts that cost work to establish (whether an update is a fast-forward, which files
//! a push changes) may be left undecided: `Policy::needs` says whether deciding them could
//! change the outcome, and `Policy::evaluate` reads undecided facts the riskier way.
#![forbid(unsafe_code)]

pub mod caller;
pub mod classify;
pub mod duration;
mod eval;
pub mod facts;
mod file;
pub mod writes;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

pub use caller::{SUBJECT_KEYS, Subject};
pub use eval::{Explanation, Needs, Step, StepOutcome, WriteExplanation, described};
pub use facts::{Paths, PushedSecret, RefKind, RefUpdate, Secrets, Target};
pub use file::{PolicyError, RuleError};

use eval::Condition;

/// What a held request waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// The approver group (a key of `[approvers]`).
    pub group: String,
    /// How many distinct members must approve.
    pub approvals: u32,
    /// How long a pending approval lives before it lapses (and the operation stays refused).
    pub expires: Duration,
    /// How long an API request may be held open waiting for the decision; `None`: refused at
    /// once with a message saying how to get approval.
    pub hold: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    RequireApproval(ApprovalSpec),
    /// Passes, and is recorded in full.
    RecordOnly,
}

impl Action {
    /// The name a policy file uses for it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval(_) => "require_approval",
            Action::RecordOnly => "record_only",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::RequireApproval(a) => {
                let plural = if a.approvals == 1 { "" } else { "s" };
                write!(
                    f,
                    "require_approval ({} approval{plural} from \"{}\", expires after {}",
                    a.approvals,
                    a.group,
                    duration::format(a.expires)
                )?;
                if let Some(h) = a.hold {
                    write!(f, ", held up to {}", duration::format(h))?;
                }
                f.write_str(")")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// Which rule decided: a 1-based index and the rule's name, or the default (`index: None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub index: Option<usize>,
    pub name: Option<String>,
}

/// How the default rule is named in decisions and logs.
pub const DEFAULT_RULE_NAME: &str = "the default";

impl RuleRef {
    pub const DEFAULT: RuleRef = RuleRef {
        index: None,
        name: None,
    };

    /// `unknown_write`, which decides writes the gateway cannot read.
    pub fn unknown_write() -> RuleRef {
        RuleRef {
            index: None,
            name: Some("unknown_write".into()),
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, &self.name) {
            (None, Some(setting)) => write!(f, "the {setting} setting"),
            (None, None) => f.write_str(DEFAULT_RULE_NAME),
            (Some(i), None) => write!(f, "rule #{i}"),
            (Some(i), Some(n)) => write!(f, "rule #{i} \"{n}\""),
        }
    }
}

/// The outcome of evaluating one request (or one ref update of a push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub rule: RuleRef,
    /// For the caller (deny and require_approval).
    pub message: Option<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", self.action, self.rule)
    }
}

/// Who may approve: users by name, or uids (for approvers without an entry in /etc/passwd).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproverGroup {
    pub users: Vec<String>,
    pub uids: Vec<u32>,
}

impl ApproverGroup {
    pub fn contains(&self, user: Option<&str>, uid: Option<u32>) -> bool {
        user.is_some_and(|u| self.users.iter().any(|m| m == u)) || uid.is_some_and(|u| self.uids.contains(&u))
    }

    /// How many approvers the group can supply at most.
    pub fn size(&self) -> usize {
        self.users.len() + self.uids.len()
    }
}

impl fmt::Display for ApproverGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            parts.push(format!("users {}", self.users.join(", ")));
        }
        if !self.uids.is_empty() {
            let uids: Vec<String> = self.uids.iter().map(u32::to_string).collect();
            parts.push(format!("uids {}", uids.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// One `[[rule]]`: conditions (all must hold) and what happens when they do.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Option<String>,
    pub action: Action,
    pub message: Option<String>,
    conditions: Vec<Condition>,
}

impl Rule {
    /// Whether the rule looks at ref updates (`ref`, `ref_op`, `paths`, `secrets`,
    /// `secret_seen`): it matches only those.
    pub fn needs_ref(&self) -> bool {
        self.conditions.iter().any(Condition::needs_ref)
    }

    /// Whether it looks at the secrets a push carries (`secrets`, `secret_seen`): its refusals
    /// then name them.
    pub fn reads_secrets(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c, Condition::Secrets(_) | Condition::SecretSeen))
    }

    /// The masking rule ids its `secrets` condition names (not `*`), for the gateway to check
    /// against the rules it masks with.
    pub fn secret_rules(&self) -> impl Iterator<Item = &str> {
        self.conditions
            .iter()
            .filter_map(|c| match c {
                Condition::Secrets(rules) => Some(rules),
                _ => None,
            })
            .flatten()
            .map(String::as_str)
            .filter(|r| *r != "*")
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Action,
    default_message: Option<String>,
    rules: Vec<Rule>,
    /// What decides a write the gateway cannot read as ref updates, when no rule names it.
    unknown_write: Action,
    unknown_write_message: Option<String>,
    /// Whether the file sets `unknown_write` (else it is implied by the rules).
    unknown_write_set: bool,
    groups: BTreeMap<String, ApproverGroup>,
    /// Where it was read from, for messages; `None` for built-in policies.
    source: Option<PathBuf>,
}

impl Policy {
    /// What the gateway enforces without a policy file: everything passes.
    pub fn allow_all() -> Policy {
        Policy {
            default: Action::Allow,
            default_message: None,
            rules: Vec::new(),
            unknown_write: Action::Allow,
            unknown_write_message: None,
            unknown_write_set: false,
            groups: BTreeMap::new(),
            source: None,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn group(&self, name: &str) -> Option<&ApproverGroup> {
        self.groups.get(name)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&str, &ApproverGroup)> {
        self.groups.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn default_action(&self) -> &Action {
        &self.default
    }

    /// What decides a write through the API the gateway cannot read as ref updates, when no
    /// rule names the request (the stricter of it and the default decides).
    pub fn unknown_write(&self) -> &Action {
        &self.unknown_write
    }

    /// The file the policy came from, `None` for `allow_all`.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// How a rule is named in messages: `rule #3 "force-push-main"`.
    pub fn rule_ref(&self, index: usize) -> RuleRef {
        RuleRef {
            index: Some(index + 1),
            name: self.rules.get(index).and_then(|r| r.name.clone()),
        }
    }

    /// One line for `ghgate policy check` and the reload log: "3 rules, default allow, groups:
    /// maintainers (users alice, bob)".
    pub fn summary(&self) -> String {
        let n = self.rules.len();
        let mut s = format!(
            "{n} rule{}, default {}",
            if n == 1 { "" } else { "s" },
            self.default
        );
        if self.groups.is_empty() {
            s.push_str(", no approver groups");
        } else {
            let groups: Vec<String> = self.groups.iter().map(|(k, g)| format!("{k} ({g})")).collect();
            s.push_str(&format!(", groups: {}", groups.join(", ")));
        }
        s.push_str(&format!(
            ", unknown writes {}{}",
            self.unknown_write,
            if self.unknown_write_set {
                ""
            } else {
                " (implied by the rules)"
            }
        ));
        s
    }
}

#[cfg(test)]
mod tests;
