//! Evaluation: which rule a request (or a pushed ref) matches, which undecided facts could
//! change that, and a step-by-step explanation for people.
//!
//! Pure: no I/O, no clock. Undecided facts are read the riskier way by `evaluate` and
//! `explain`: an `Update` whose ancestry is unknown counts as non-fast-forward, and changed files
//! or pushed secrets not computed (or not computable) count as matching every `paths` or
//! `secrets` condition of a rule that refuses or holds (`deny`, `require_approval`) and as
//! matching none of a rule that lets through (`allow`, `record_only`): what is unknown never
//! opens a door. `needs` tells the caller which of them to decide to get an exact answer.
//!
//! A `paths` condition holds when any changed file matches any of its patterns, for every action
//! alike; a `secrets` condition when any pushed secret was found by a named rule (or any, `"*"`);
//! `secret_seen` when any pushed secret's fingerprint was seen in a response.
//!
//! Git objects written through the API without a ref (`RefUpdate::objects_only`) are decided by
//! rules on secrets only: a rule with a ref condition (`ref`, `ref_op`, `paths`) but none on
//! secrets does not apply to them, and in one that does, `ref` and `ref_op` read as unknown
//! (the objects may land on any ref), so a rule that refuses or holds counts them as a match.
//!
//! Hosts, methods, request paths and repositories are compared ignoring ASCII case (GitHub does);
//! refs and file paths compare exactly. Conditions on the caller are the caller matcher's
//! (`crate::caller`), which credential rules use too.
use std::fmt;

use super::{
    Action, Policy, Rule, RuleRef, Verdict,
    caller::{CallerCondition, any_glob, list, text_check},
    classify::{GitService, Repo},
    facts::{Paths, RefKind, RefUpdate, Secrets, Subject, Target},
    writes::{ApiRef, Write},
};

/// Conditions on the request compared as globs against one text fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestField {
    Host,
    Method,
    Path,
    Repository,
}

impl RequestField {
    /// The key a policy file writes.
    pub(crate) fn key(self) -> &'static str {
        match self {
            RequestField::Host => "host",
            RequestField::Method => "method",
            RequestField::Path => "path",
            RequestField::Repository => "repository",
        }
    }

    /// Patterns and values are folded alike: GitHub ignores case in these.
    pub(crate) fn fold(self, s: &str) -> String {
        match self {
            RequestField::Method => s.to_ascii_uppercase(),
            RequestField::Host | RequestField::Path | RequestField::Repository => s.to_ascii_lowercase(),
        }
    }

    /// Why the fact can be missing, for explanations.
    fn missing(self) -> &'static str {
        match self {
            RequestField::Repository => "the request names no repository",
            RequestField::Host | RequestField::Method | RequestField::Path => "empty",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Condition {
    /// Who calls: the caller matcher's.
    Caller(CallerCondition),
    Request {
        field: RequestField,
        patterns: Vec<String>,
    },
    GitService(Vec<GitService>),
    Copilot(Vec<String>),
    Ref(Vec<String>),
    /// `ref_op`: the kinds a rule names (`update` names every update, decided or not).
    RefOp(Vec<RefKind>),
    Paths(Vec<String>),
    /// Masking rule ids (or `*`) of a secret the pushed content carries.
    Secrets(Vec<String>),
    /// A pushed secret whose fingerprint the gateway has seen in a response (`secret_seen`).
    SecretSeen,
}

impl Condition {
    pub(crate) fn needs_ref(&self) -> bool {
        matches!(
            self,
            Condition::Ref(_)
                | Condition::RefOp(_)
                | Condition::Paths(_)
                | Condition::Secrets(_)
                | Condition::SecretSeen
        )
    }
}

/// Which undecided facts could change the outcome, so the caller should decide them (and
/// evaluate again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Whether an `Update` is a fast-forward.
    pub fast_forward: bool,
    /// Which files the pushed commits change.
    pub paths: bool,
    /// Which secrets the pushed content carries.
    pub secrets: bool,
}

impl Needs {
    pub fn any(&self) -> bool {
        self.fast_forward || self.paths || self.secrets
    }

    fn add(&mut self, other: Needs) {
        self.fast_forward |= other.fast_forward;
        self.paths |= other.paths;
        self.secrets |= other.secrets;
    }
}

/// One rule's part in an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rule: RuleRef,
    pub outcome: StepOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// All conditions held; notes say where a fact was read the riskier way.
    Matched { notes: Vec<String> },
    /// The first condition that did not hold (its key) and why ("ref: refs/heads/dev matches
    /// none of [refs/heads/main]").
    Failed { condition: &'static str, why: String },
}

/// Why a request gets its verdict: each rule tried, up to and including the one that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub steps: Vec<Step>,
    pub verdict: Verdict,
    /// Undecided facts and how they were read.
    pub notes: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        if self.steps.is_empty() {
            writeln!(f, "  (no rules)")?;
        }
        for step in &self.steps {
            match &step.outcome {
                StepOutcome::Matched { notes } => {
                    writeln!(f, "  {}: matches", step.rule)?;
                    for n in notes {
                        writeln!(f, "    ({n})")?;
                    }
                }
                StepOutcome::Failed { why, .. } => writeln!(f, "  {}: no match: {why}", step.rule)?,
            }
        }
        if self.verdict.rule.index.is_none() && !self.steps.is_empty() {
            writeln!(f, "  no rule matches")?;
        }
        writeln!(f, "verdict: {}", self.verdict)?;
        if let Some(m) = &self.verdict.message {
            writeln!(f, "message: {m}")?;
        }
        Ok(())
    }
}

/// One condition's answer.
enum Check {
    Holds(Option<String>),
    Fails(String),
    Undecided(Needs),
    /// The fact cannot be known (a ref or repository the request does not name): it holds for
    /// a rule that refuses or holds, and fails for one that passes — the riskier reading either
    /// way. The text says what is unknown.
    Unknown(String),
}

/// One rule's answer.
enum RuleCheck {
    Matches(Vec<String>),
    Fails(&'static str, String),
    Undecided(Needs),
}

/// The request's facts, as the classifier read them, folded for matching.
struct Facts<'a> {
    subject: &'a Subject,
    host: String,
    method: String,
    path: String,
    repository: Option<&'a Repo>,
    git_service: Option<GitService>,
    copilot: Option<&'static str>,
    ref_update: Option<&'a RefUpdate>,
    /// Why the gateway could not read a write through the API (its body past the cap, an
    /// encoding it cannot decode): what that write carries is unscanned, so a `secrets` or
    /// `secret_seen` condition counts it as a match for a rule that refuses or holds.
    unread: Option<&'a str>,
}

impl<'a> Facts<'a> {
    fn new(subject: &'a Subject, target: &'a Target, ref_update: Option<&'a RefUpdate>) -> Self {
        let req = &target.req;
        Facts {
            subject,
            host: RequestField::Host.fold(&req.host),
            method: RequestField::Method.fold(req.method.as_str()),
            path: RequestField::Path.fold(&req.path),
            repository: req.repository.as_ref(),
            // A write through the API moves refs as a push does, and is one to `git_service`.
            git_service: req.git_service.or(ref_update.map(|_| GitService::ReceivePack)),
            copilot: req.copilot.map(|c| c.as_str()),
            ref_update,
            unread: None,
        }
    }

    fn text(&self, field: RequestField) -> Option<String> {
        match field {
            RequestField::Host => Some(self.host.clone()),
            RequestField::Method => Some(self.method.clone()),
            RequestField::Path => Some(self.path.clone()),
            RequestField::Repository => self.repository.and_then(Repo::full_name).map(|r| field.fold(&r)),
        }
    }
}

impl Condition {
    /// `permissive`: the rule lets through (`allow`, `record_only`), so an unknown fact must
    /// not satisfy it.
    fn check(&self, facts: &Facts<'_>, permissive: bool) -> Check {
        match self {
            Condition::Caller(c) => match c.check(facts.subject) {
                Ok(()) => Check::Holds(None),
                Err(why) => Check::Fails(why.to_string()),
            },
            Condition::Request {
                field: RequestField::Repository,
                ..
            } if facts.ref_update.is_some_and(|r| r.unknown_repository.is_some()) => Check::Unknown(format!(
                "repository: the request names {}, whose name the gateway cannot tell",
                facts
                    .ref_update
                    .and_then(|r| r.unknown_repository.as_deref())
                    .unwrap_or_default()
            )),
            Condition::Request {
                field: RequestField::Repository,
                ..
            } if matches!(facts.repository, Some(Repo::Id(_))) => Check::Unknown(format!(
                "repository: the request names {}, whose name the gateway cannot tell",
                facts.repository.expect("matched").describe()
            )),
            Condition::Request { field, patterns } => {
                match text_check(field.key(), patterns, facts.text(*field), field.missing()) {
                    Ok(()) => Check::Holds(None),
                    Err(why) => Check::Fails(why.to_string()),
                }
            }
            Condition::GitService(services) => match facts.git_service {
                Some(s) if services.contains(&s) => Check::Holds(None),
                Some(s) => Check::Fails(format!("git_service: {s} is none of {}", list(services))),
                None => Check::Fails("git_service: not a git smart-HTTP request".into()),
            },
            Condition::Copilot(names) => match facts.copilot {
                Some(c) if names.iter().any(|n| n == "*" || n == c) => Check::Holds(None),
                Some(c) => Check::Fails(format!("copilot: {c} is none of {}", list(names))),
                None => Check::Fails("copilot: not a Copilot request".into()),
            },
            Condition::Ref(_) if facts.ref_update.is_some_and(|r| r.unknown_name.is_some()) => {
                Check::Unknown(format!(
                    "ref: the request does not name the ref ({})",
                    facts
                        .ref_update
                        .and_then(|r| r.unknown_name.as_deref())
                        .unwrap_or_default()
                ))
            }
            Condition::Ref(patterns) => match facts.ref_update {
                Some(r) if any_glob(patterns, r.name()) => Check::Holds(None),
                Some(r) => Check::Fails(format!("ref: {} matches none of {}", r.name(), list(patterns))),
                None => Check::Fails(no_ref("ref")),
            },
            Condition::RefOp(_) if facts.ref_update.is_some_and(|r| r.objects_only) => {
                Check::Unknown("ref_op: the request creates git objects and moves no ref yet".into())
            }
            Condition::RefOp(ops) => {
                let Some(r) = facts.ref_update else {
                    return Check::Fails(no_ref("ref_op"));
                };
                let holds = |op: RefKind| match (op, r.kind) {
                    (RefKind::Create, RefKind::Create) | (RefKind::Delete, RefKind::Delete) => Some(true),
                    (RefKind::Update, RefKind::Update | RefKind::FastForward | RefKind::NonFastForward) => {
                        Some(true)
                    }
                    (RefKind::FastForward, RefKind::FastForward)
                    | (RefKind::NonFastForward, RefKind::NonFastForward) => Some(true),
                    (RefKind::FastForward | RefKind::NonFastForward, RefKind::Update) => None,
                    _ => Some(false),
                };
                let answers: Vec<Option<bool>> = ops.iter().map(|op| holds(*op)).collect();
                let both = ops.contains(&RefKind::FastForward) && ops.contains(&RefKind::NonFastForward);
                if answers.contains(&Some(true)) || (both && r.kind == RefKind::Update) {
                    Check::Holds(None)
                } else if answers.contains(&None) {
                    Check::Undecided(Needs {
                        fast_forward: true,
                        ..Needs::default()
                    })
                } else {
                    let ops: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
                    Check::Fails(format!("ref_op: {} is none of {}", r.kind, list(&ops)))
                }
            }
            Condition::Paths(patterns) => {
                let Some(r) = facts.ref_update else {
                    return Check::Fails(no_ref("paths"));
                };
                match &r.paths {
                    Paths::NotComputed => Check::Undecided(Needs {
                        paths: true,
                        ..Needs::default()
                    }),
                    Paths::Unknown(why) if permissive => Check::Fails(format!(
                        "paths: the changed files are unknown ({why}), and unknown files never satisfy \
                         a rule that lets through"
                    )),
                    Paths::Unknown(why) => Check::Holds(Some(format!(
                        "paths: the changed files are unknown ({why}), so this counts as a match"
                    ))),
                    Paths::Known(files) if files.iter().any(|f| any_glob(patterns, f)) => Check::Holds(None),
                    Paths::Known(files) if files.is_empty() => {
                        Check::Fails(format!("paths: {} changes no files", r.name()))
                    }
                    Paths::Known(files) => {
                        const SHOWN: usize = 5;
                        let mut shown = files.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
                        if files.len() > SHOWN {
                            shown.push_str(&format!(", … {} in all", files.len()));
                        }
                        Check::Fails(format!(
                            "paths: no changed file ({shown}) matches {}",
                            list(patterns)
                        ))
                    }
                }
            }
            Condition::Secrets(rules) => {
                let key = "secrets";
                match secrets_of(facts, key, permissive) {
                    Err(check) => check,
                    Ok(found) => match found
                        .iter()
                        .find(|s| rules.iter().any(|r| r == "*" || *r == s.rule))
                    {
                        Some(s) => Check::Holds(Some(format!("secrets: {}", described(s)))),
                        None if found.is_empty() => {
                            Check::Fails("secrets: no secret found in what is pushed".into())
                        }
                        None => {
                            Check::Fails(format!("secrets: {} found, none by {}", found.len(), list(rules)))
                        }
                    },
                }
            }
            Condition::SecretSeen => {
                let key = "secret_seen";
                match secrets_of(facts, key, permissive) {
                    Err(check) => check,
                    Ok(found) => match found.iter().find(|s| s.seen_in_response) {
                        Some(s) => Check::Holds(Some(format!(
                            "secret_seen: {}, a fingerprint the gateway saw in a response",
                            described(s)
                        ))),
                        None => Check::Fails(format!(
                            "secret_seen: none of the {} secret(s) pushed was seen in a response",
                            found.len()
                        )),
                    },
                }
            }
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Condition::Caller(c) => c.key(),
            Condition::Request { field, .. } => field.key(),
            Condition::GitService(_) => "git_service",
            Condition::Copilot(_) => "copilot",
            Condition::Ref(_) => "ref",
            Condition::RefOp(_) => "ref_op",
            Condition::Paths(_) => "paths",
            Condition::Secrets(_) => "secrets",
            Condition::SecretSeen => "secret_seen",
        }
    }
}

/// The pushed secrets a `secrets` or `secret_seen` condition reads, or its answer when they are
/// not known.
fn secrets_of<'a>(
    facts: &Facts<'a>,
    key: &str,
    permissive: bool,
) -> Result<&'a [crate::facts::PushedSecret], Check> {
    let Some(r) = facts.ref_update else {
        return Err(match facts.unread {
            Some(why) if permissive => Check::Fails(format!(
                "{key}: an API write the gateway could not read ({why}) was not scanned, and that \
                 never satisfies a rule that lets through"
            )),
            Some(why) => Check::Holds(Some(format!(
                "{key}: an API write the gateway could not read ({why}) was not scanned, so this \
                 counts as a match"
            ))),
            None => Check::Fails(no_ref(key)),
        });
    };
    match &r.secrets {
        Secrets::NotComputed => Err(Check::Undecided(Needs {
            secrets: true,
            ..Needs::default()
        })),
        Secrets::Unknown(why) if permissive => Err(Check::Fails(format!(
            "{key}: what is pushed could not be scanned whole ({why}), and that never satisfies a \
             rule that lets through"
        ))),
        Secrets::Unknown(why) => Err(Check::Holds(Some(format!(
            "{key}: what is pushed could not be scanned whole ({why}), so this counts as a match"
        )))),
        Secrets::Known(found) => Ok(found),
    }
}

/// A pushed secret as explanations and refusals name it: rule, fingerprint, file and commit.
pub fn described(s: &crate::facts::PushedSecret) -> String {
    let mut out = format!("a {} secret [{}]", s.rule, s.fingerprint);
    if let Some(path) = &s.path {
        out.push_str(&format!(" in {path}"));
    }
    if let Some(commit) = &s.commit {
        out.push_str(&format!(" (commit {})", commit.short()));
    }
    out
}

fn no_ref(key: &str) -> String {
    format!("{key}: not a pushed ref (this rule applies to ref updates of a push only)")
}

impl Rule {
    /// All conditions must hold; one that fails decides, even when another is undecided.
    fn check(&self, facts: &Facts<'_>) -> RuleCheck {
        if facts.ref_update.is_some_and(|r| r.objects_only)
            && !self
                .conditions
                .iter()
                .any(|c| matches!(c, Condition::Secrets(_) | Condition::SecretSeen))
            && let Some(c) = self.conditions.iter().find(|c| c.needs_ref())
        {
            return RuleCheck::Fails(
                c.key(),
                format!(
                    "{}: the request creates git objects and moves no ref; of the rules on refs only \
                     those on secrets decide them",
                    c.key()
                ),
            );
        }
        let mut notes = Vec::new();
        let mut undecided = Needs::default();
        let permissive = matches!(self.action, Action::Allow | Action::RecordOnly);
        for c in &self.conditions {
            match c.check(facts, permissive) {
                Check::Holds(note) => notes.extend(note),
                Check::Fails(why) => return RuleCheck::Fails(c.key(), why),
                Check::Unknown(what) => match self.action {
                    Action::Allow | Action::RecordOnly => {
                        return RuleCheck::Fails(
                            c.key(),
                            format!("{what}, so a rule that lets it pass does not count it as a match"),
                        );
                    }
                    Action::Deny | Action::RequireApproval(_) => {
                        notes.push(format!("{what}, so this counts as a match"));
                    }
                },
                Check::Undecided(n) => undecided.add(n),
            }
        }
        if undecided.any() {
            RuleCheck::Undecided(undecided)
        } else {
            RuleCheck::Matches(notes)
        }
    }
}

/// The ref update as `evaluate` reads it: undecided facts the riskier way.
fn conservative(r: &RefUpdate) -> RefUpdate {
    let mut r = r.clone();
    if r.kind == RefKind::Update {
        r.kind = RefKind::NonFastForward;
    }
    if r.paths == Paths::NotComputed {
        r.paths = Paths::Unknown("not computed".into());
    }
    if r.secrets == Secrets::NotComputed {
        r.secrets = Secrets::Unknown("not scanned".into());
    }
    r
}

impl Policy {
    /// The verdict: the first rule that matches, else the default. Undecided facts are read the
    /// riskier way (see the module doc); ask `needs` first to avoid that.
    pub fn evaluate(&self, s: &Subject, t: &Target, r: Option<&RefUpdate>) -> Verdict {
        self.explain_inner(s, t, r, None, false).verdict
    }

    /// Which undecided facts of `r` could change the verdict: the rules are walked in order, up
    /// to the first that certainly matches, and every rule that might match depending on an
    /// undecided fact asks for it.
    pub fn needs(&self, s: &Subject, t: &Target, r: Option<&RefUpdate>) -> Needs {
        let Some(r) = r else {
            return Needs::default();
        };
        if r.kind != RefKind::Update && r.paths != Paths::NotComputed && r.secrets != Secrets::NotComputed {
            return Needs::default();
        }
        let facts = Facts::new(s, t, Some(r));
        let mut needs = Needs::default();
        for rule in &self.rules {
            match rule.check(&facts) {
                RuleCheck::Matches(_) => break,
                RuleCheck::Fails(..) => {}
                RuleCheck::Undecided(n) => needs.add(n),
            }
        }
        needs
    }

    /// Each rule tried, why it did not match (its first failing condition), up to and including
    /// the one that did, and the verdict — which is always `evaluate`'s.
    pub fn explain(&self, s: &Subject, t: &Target, r: Option<&RefUpdate>) -> Explanation {
        self.explain_inner(s, t, r, None, true)
    }

    /// `unread`: the request is an API write the gateway could not read, and why.
    fn explain_inner(
        &self,
        s: &Subject,
        t: &Target,
        r: Option<&RefUpdate>,
        unread: Option<&str>,
        steps: bool,
    ) -> Explanation {
        let resolved = r.map(conservative);
        let mut notes = Vec::new();
        // Only readings that could have changed the verdict are worth a note.
        if let Some(r) = r
            && steps
        {
            let needs = self.needs(s, t, Some(r));
            if needs.fast_forward {
                notes.push(format!(
                    "{}: not known whether the update is a fast-forward; read as non-fast-forward (the \
                     riskier reading, as the gateway does when it cannot tell)",
                    r.name()
                ));
            }
            if needs.paths {
                notes.push(format!(
                    "{}: the changed files were not computed; every paths condition of a deny or \
                     require_approval rule counts as a match, none of an allow or record_only rule",
                    r.name()
                ));
            }
            if needs.secrets {
                notes.push(format!(
                    "{}: what is pushed was not scanned for secrets; every secrets condition of a deny \
                     or require_approval rule counts as a match, none of an allow or record_only rule",
                    r.name()
                ));
            }
        }
        let mut facts = Facts::new(s, t, resolved.as_ref());
        facts.unread = unread;
        if unread.is_some() {
            // A write the gateway could not read may move refs: to `git_service`, a push.
            facts.git_service = facts.git_service.or(Some(GitService::ReceivePack));
        }
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let rule_ref = self.rule_ref(i);
            match rule.check(&facts) {
                RuleCheck::Matches(matched) => {
                    if steps {
                        out.push(Step {
                            rule: rule_ref.clone(),
                            outcome: StepOutcome::Matched { notes: matched },
                        });
                    }
                    return Explanation {
                        steps: out,
                        verdict: Verdict {
                            action: rule.action.clone(),
                            rule: rule_ref,
                            message: shown_message(&rule.action, &rule.message),
                        },
                        notes,
                    };
                }
                RuleCheck::Fails(condition, why) => {
                    if steps {
                        out.push(Step {
                            rule: rule_ref,
                            outcome: StepOutcome::Failed { condition, why },
                        });
                    }
                }
                RuleCheck::Undecided(_) => unreachable!("conservative facts leave nothing undecided"),
            }
        }
        Explanation {
            steps: out,
            verdict: Verdict {
                action: self.default.clone(),
                rule: RuleRef::DEFAULT,
                message: shown_message(&self.default, &self.default_message),
            },
            notes,
        }
    }

    /// Whether any `paths` condition could match a file under `dir` ("", ".github",
    /// ".github/workflows"), so that a walk over a pushed tree can skip the others.
    pub fn paths_of_interest(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let prefixes: Vec<(String, bool)> = self
            .rules
            .iter()
            .flat_map(|r| &r.conditions)
            .filter_map(|c| match c {
                Condition::Paths(p) => Some(p),
                _ => None,
            })
            .flatten()
            .map(|p| match p.find('*') {
                Some(i) => (p[..i].to_owned(), true),
                None => (p.clone(), false),
            })
            .collect();
        move |dir: &str| {
            let dir = dir.trim_matches('/');
            let under = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            prefixes.iter().any(|(prefix, wild)| {
                prefix.starts_with(&under) || (*wild && under.starts_with(prefix.as_str()))
            })
        }
    }
}

/// A message is for callers that are refused or held; allowing needs no message.
fn shown_message(action: &Action, message: &Option<String>) -> Option<String> {
    match action {
        Action::Deny | Action::RequireApproval(_) => message.clone(),
        Action::Allow | Action::RecordOnly => None,
    }
}

/// How a write through the API is decided (`crate::writes`): each ref update it makes as a
/// push's would be, or, for a write the gateway cannot read, by the rules that name the request
/// and else `unknown_write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteExplanation {
    /// Each ref update: as the request gave it, the facts the rules saw, and its explanation.
    pub refs: Vec<(ApiRef, RefUpdate, Explanation)>,
    /// A write the gateway cannot read as ref updates: why, and how it was decided.
    pub unknown: Option<(String, Explanation)>,
    /// The request's verdict: the strictest of them (the first, among equals).
    pub verdict: Verdict,
}

impl fmt::Display for WriteExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (api, r, e) in &self.refs {
            if api.objects {
                writeln!(f, "git objects {api}")?;
            } else {
                writeln!(f, "ref update {api}")?;
            }
            writeln!(f, "  facts: {r}")?;
            match &r.secrets {
                Secrets::Known(found) if found.is_empty() => {}
                Secrets::Known(found) => {
                    let found: Vec<String> = found.iter().map(described).collect();
                    writeln!(f, "  secrets: {}", found.join("; "))?;
                }
                Secrets::NotComputed => {}
                Secrets::Unknown(why) => writeln!(f, "  secrets: not scanned ({why})")?,
            }
            for line in e.to_string().lines() {
                writeln!(f, "  {line}")?;
            }
        }
        if let Some((why, e)) = &self.unknown {
            writeln!(f, "unknown write: {why}")?;
            for line in e.to_string().lines() {
                writeln!(f, "  {line}")?;
            }
        }
        writeln!(f, "request verdict: {}", self.verdict)?;
        if let Some(m) = &self.verdict.message {
            writeln!(f, "message: {m}")?;
        }
        Ok(())
    }
}

/// How far an action holds a request back: deny, then require_approval, record_only, allow.
pub(crate) fn severity(a: &Action) -> u8 {
    match a {
        Action::Deny => 3,
        Action::RequireApproval(_) => 2,
        Action::RecordOnly => 1,
        Action::Allow => 0,
    }
}

impl Policy {
    /// Decides a write through the API: `None` when the request writes nothing the policy
    /// reads as a repository write (it is then an ordinary request, `evaluate` with no ref).
    pub fn evaluate_write(&self, s: &Subject, t: &Target, w: &Write) -> Option<WriteExplanation> {
        self.write_inner(s, t, w, false)
    }

    /// `evaluate_write`, with each rule's part explained.
    pub fn explain_write(&self, s: &Subject, t: &Target, w: &Write) -> Option<WriteExplanation> {
        self.write_inner(s, t, w, true)
    }

    fn write_inner(&self, s: &Subject, t: &Target, w: &Write, steps: bool) -> Option<WriteExplanation> {
        if *w == Write::None {
            return None;
        }
        let mut refs = Vec::with_capacity(w.refs().len());
        for api in w.refs() {
            let (target, r) = api.facts(t);
            let e = self.explain_inner(s, &target, Some(&r), None, steps);
            refs.push((api.clone(), r, e));
        }
        let unknown = w.unknown().map(|why| {
            let unread = matches!(w, Write::Unread(_)).then_some(why);
            let mut e = self.explain_inner(s, t, None, unread, steps);
            if e.verdict.rule.index.is_none() && severity(&self.unknown_write) > severity(&self.default) {
                e.verdict = Verdict {
                    action: self.unknown_write.clone(),
                    rule: RuleRef::unknown_write(),
                    message: shown_message(&self.unknown_write, &self.unknown_write_message),
                };
            }
            e.notes.push(format!(
                "the gateway cannot read this write as ref updates; a rule naming the request \
                 decides it, else unknown_write ({}) or the default, whichever is stricter",
                self.unknown_write
            ));
            (why.to_owned(), e)
        });
        let mut verdicts = refs
            .iter()
            .map(|(_, _, e)| &e.verdict)
            .chain(unknown.as_ref().map(|(_, e)| &e.verdict));
        let mut verdict = verdicts.next()?.clone();
        for v in verdicts {
            if severity(&v.action) > severity(&verdict.action) {
                verdict = v.clone();
            }
        }
        Some(WriteExplanation {
            refs,
            unknown,
            verdict,
        })
    }
}
