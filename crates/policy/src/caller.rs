//! The one caller matcher: conditions on who calls (uid, user, executable, comm, cgroup, the CI
//! job's repository, workflow and ref, OIDC claims and groups), as policy rules (`[[rule]]`)
//! and credential rules (`[[credentials.rule]]`) write them, checked against a [`Subject`].
//!
//! Both kinds of rule build their conditions here, so they are validated alike and match alike:
//!
//! - strings are globs (`*` any run) against one fact; a fact the caller lacks (no executable,
//!   not a CI job, no OIDC token) matches nothing;
//! - CI repositories compare ignoring ASCII case (GitHub does); everything else exactly;
//! - an OIDC claim matches by its text (a string as it is, a number or a boolean as written),
//!   and a claim that is a list matches when any such member does; null and objects have no
//!   text and match nothing (nor do such members of a list).
//!
//! Pure: never reads /proc, a file or the clock; the identity stage establishes the facts.
use std::{borrow::Cow, collections::BTreeMap, fmt};

use ghgate_pattern::glob;
use serde_json::Value;

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
    pub oidc: Option<serde_json::Map<String, Value>>,
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
                    Value::String(s) => write!(f, " oidc.{k}={s}")?,
                    other => write!(f, " oidc.{k}={other}")?,
                }
            }
        }
        Ok(())
    }
}

/// The caller facts a rule can name with a plain value (also what `ghgate policy explain --as`
/// takes, besides `oidc.CLAIM`).
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

/// A text fact of the caller, compared as globs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerField {
    User,
    Exe,
    Comm,
    Cgroup,
    CiRepository,
    CiWorkflow,
    CiRef,
}

impl CallerField {
    /// The key rules write.
    fn key(self) -> &'static str {
        match self {
            CallerField::User => "user",
            CallerField::Exe => "exe",
            CallerField::Comm => "comm",
            CallerField::Cgroup => "cgroup",
            CallerField::CiRepository => "ci_repository",
            CallerField::CiWorkflow => "ci_workflow",
            CallerField::CiRef => "ci_ref",
        }
    }

    /// Patterns and values are folded alike: GitHub ignores the case of repository names.
    fn fold(self, s: &str) -> String {
        match self {
            CallerField::CiRepository => s.to_ascii_lowercase(),
            _ => s.to_owned(),
        }
    }

    fn value(self, s: &Subject) -> Option<&str> {
        match self {
            CallerField::User => s.user.as_deref(),
            CallerField::Exe => s.exe.as_deref(),
            CallerField::Comm => Some(&s.comm),
            CallerField::Cgroup => s.cgroup.as_deref(),
            CallerField::CiRepository => s.ci_repository.as_deref(),
            CallerField::CiWorkflow => s.ci_workflow.as_deref(),
            CallerField::CiRef => s.ci_ref.as_deref(),
        }
    }

    /// Why the fact can be missing, for explanations.
    fn missing(self) -> &'static str {
        match self {
            CallerField::User => "uid has no user name",
            CallerField::Exe => "executable unknown (the process had exited)",
            CallerField::Cgroup => "cgroup unknown (the process had exited)",
            CallerField::CiRepository | CallerField::CiWorkflow | CallerField::CiRef => {
                "the caller is not a CI job"
            }
            CallerField::Comm => "empty",
        }
    }
}

/// A condition a rule cannot use: it could never match, or would match what it does not say.
/// In a security rule, a condition that quietly does nothing is a hole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("`{key}` is an empty list, which matches nothing; leave `{key}` out to match any")]
    EmptyList { key: &'static str },
    #[error(
        "{key} \"{pattern}\" is not a full ref name and would never match; write \"refs/heads/{pattern}\" \
         (or \"refs/tags/{pattern}\")"
    )]
    NotFullRef { key: &'static str, pattern: String },
    /// `problem` completes "{key} \"{pattern}\" …".
    #[error("{key} \"{pattern}\" {problem}")]
    BadPattern {
        key: &'static str,
        pattern: String,
        problem: &'static str,
    },
    #[error("`oidc` is an empty table, which matches nothing; remove it to match any caller")]
    EmptyClaims,
    #[error("oidc.{claim} = {value}: give a string (a glob), a number or a boolean")]
    ClaimPattern { claim: String, value: String },
}

/// Fails for an empty list: it would match nothing.
pub(crate) fn non_empty<T>(key: &'static str, items: &[T]) -> Result<(), ConditionError> {
    if items.is_empty() {
        return Err(ConditionError::EmptyList { key });
    }
    Ok(())
}

/// Refs are always full names; "main" would silently never match.
pub(crate) fn full_refs(key: &'static str, patterns: &[String]) -> Result<(), ConditionError> {
    match patterns
        .iter()
        .find(|p| !p.starts_with("refs/") && !p.starts_with('*'))
    {
        Some(p) => Err(ConditionError::NotFullRef {
            key,
            pattern: p.clone(),
        }),
        None => Ok(()),
    }
}

/// What is wrong with a repository pattern (`org/*`), if anything.
pub(crate) fn owner_name_problem(pattern: &str) -> Option<&'static str> {
    (pattern != "*" && !pattern.contains('/'))
        .then_some("is not owner/name and would never match; write \"org/*\" for every repository of org")
}

/// `build` for each field a rule gives (`Some` patterns), in order.
pub(crate) fn each_given<F, T, E>(
    fields: impl IntoIterator<Item = (F, Option<Vec<String>>)>,
    build: impl Fn(F, Vec<String>) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    fields
        .into_iter()
        .filter_map(|(field, patterns)| patterns.map(|p| build(field, p)))
        .collect()
}

/// Whether any of `patterns` matches `value`.
pub(crate) fn any_glob(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| glob(p, value))
}

/// "[a, b]", for explanations.
pub(crate) fn list<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Why a condition does not hold, for people: "uid: 1000 is none of [0]".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch(pub(crate) String);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a text fact matches: `Err` says why not, naming the key.
pub(crate) fn text_check(
    key: &str,
    patterns: &[String],
    value: Option<String>,
    missing: &str,
) -> Result<(), Mismatch> {
    match value {
        Some(v) if any_glob(patterns, &v) => Ok(()),
        Some(v) => Err(Mismatch(format!("{key}: {v} matches none of {}", list(patterns)))),
        None => Err(Mismatch(format!("{key}: {missing}"))),
    }
}

/// A claim's texts, as globs see them: a string as it is, a number or a boolean as written;
/// a list, its members that are one of those; null and objects, none.
fn claim_texts(v: &Value) -> Vec<Cow<'_, str>> {
    fn scalar(v: &Value) -> Option<Cow<'_, str>> {
        match v {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// Whether an OIDC claim's value matches a glob (the module doc says how).
fn claim_matches(value: &Value, pattern: &str) -> bool {
    claim_texts(value).iter().any(|t| glob(pattern, t))
}

#[derive(Debug, Clone)]
enum Test {
    Uid(Vec<u32>),
    Text {
        field: CallerField,
        patterns: Vec<String>,
    },
    /// (claim, glob) pairs, all of which must hold.
    Oidc(Vec<(String, String)>),
    OidcGroups(Vec<String>),
}

/// One condition on the caller, validated when built.
#[derive(Debug, Clone)]
pub(crate) struct CallerCondition(Test);

impl CallerCondition {
    /// `uid = [..]`: the caller's uid is one of them.
    fn uid(uids: Vec<u32>) -> Result<Self, ConditionError> {
        non_empty("uid", &uids)?;
        Ok(Self(Test::Uid(uids)))
    }

    /// `user`, `exe`, `cgroup`, `ci_repository`, …: the fact matches one of the globs.
    fn text(field: CallerField, patterns: Vec<String>) -> Result<Self, ConditionError> {
        let key = field.key();
        non_empty(key, &patterns)?;
        if field == CallerField::CiRepository
            && let Some((p, problem)) = patterns
                .iter()
                .find_map(|p| owner_name_problem(p).map(|problem| (p, problem)))
        {
            return Err(ConditionError::BadPattern {
                key,
                pattern: p.clone(),
                problem,
            });
        }
        if field == CallerField::CiRef {
            full_refs(key, &patterns)?;
        }
        let patterns = patterns.iter().map(|p| field.fold(p)).collect();
        Ok(Self(Test::Text { field, patterns }))
    }

    /// `oidc = { claim = glob, … }`: every claim named matches its glob. A number or a boolean
    /// is written as the glob of its text (`run_attempt = 1`).
    fn oidc(claims: BTreeMap<String, toml::Value>) -> Result<Self, ConditionError> {
        if claims.is_empty() {
            return Err(ConditionError::EmptyClaims);
        }
        let mut pairs = Vec::with_capacity(claims.len());
        for (claim, v) in claims {
            let pattern = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConditionError::ClaimPattern {
                        claim,
                        value: other.to_string(),
                    });
                }
            };
            pairs.push((claim, pattern));
        }
        Ok(Self(Test::Oidc(pairs)))
    }

    /// `oidc_groups = [..]`: the token's `groups` claim has a member matching one of the globs.
    fn oidc_groups(patterns: Vec<String>) -> Result<Self, ConditionError> {
        non_empty("oidc_groups", &patterns)?;
        Ok(Self(Test::OidcGroups(patterns)))
    }

    /// The key rules write.
    pub(crate) fn key(&self) -> &'static str {
        match &self.0 {
            Test::Uid(_) => "uid",
            Test::Text { field, .. } => field.key(),
            Test::Oidc(_) => "oidc",
            Test::OidcGroups(_) => "oidc_groups",
        }
    }

    /// Whether the condition holds for `s`; `Err` says why not.
    pub(crate) fn check(&self, s: &Subject) -> Result<(), Mismatch> {
        match &self.0 {
            Test::Uid(uids) if uids.contains(&s.uid) => Ok(()),
            Test::Uid(uids) => Err(Mismatch(format!("uid: {} is none of {}", s.uid, list(uids)))),
            Test::Text { field, patterns } => text_check(
                field.key(),
                patterns,
                field.value(s).map(|v| field.fold(v)),
                field.missing(),
            ),
            Test::Oidc(pairs) => {
                let Some(claims) = &s.oidc else {
                    return Err(Mismatch("oidc: the caller presented no OIDC token".into()));
                };
                for (claim, pattern) in pairs {
                    match claims.get(claim) {
                        None => {
                            return Err(Mismatch(format!("oidc.{claim}: the token has no such claim")));
                        }
                        Some(v) if !claim_matches(v, pattern) => {
                            return Err(Mismatch(format!(
                                "oidc.{claim}: {v} does not match \"{pattern}\""
                            )));
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            }
            Test::OidcGroups(patterns) => {
                let Some(claims) = &s.oidc else {
                    return Err(Mismatch("oidc_groups: the caller presented no OIDC token".into()));
                };
                let Some(groups) = claims.get("groups") else {
                    return Err(Mismatch("oidc_groups: the token has no groups claim".into()));
                };
                let groups = claim_texts(groups);
                if groups.iter().any(|g| any_glob(patterns, g)) {
                    Ok(())
                } else {
                    Err(Mismatch(format!(
                        "oidc_groups: {} matches none of {}",
                        list(&groups),
                        list(patterns)
                    )))
                }
            }
        }
    }
}

/// The caller conditions a rule gives, by the keys rules write (each optional). Policy rules
/// and credential rules build their conditions here, so they are validated alike.
#[derive(Debug, Clone, Default)]
pub struct CallerKeys {
    pub uid: Option<Vec<u32>>,
    pub user: Option<Vec<String>>,
    pub exe: Option<Vec<String>>,
    pub comm: Option<Vec<String>>,
    pub cgroup: Option<Vec<String>>,
    pub ci_repository: Option<Vec<String>>,
    pub ci_workflow: Option<Vec<String>>,
    pub ci_ref: Option<Vec<String>>,
    pub oidc: Option<BTreeMap<String, toml::Value>>,
    pub oidc_groups: Option<Vec<String>>,
}

impl CallerKeys {
    /// One condition per key given, in this order (the order rules check them in and
    /// explanations name them); `Err` for one that could never match.
    pub(crate) fn conditions(self) -> Result<Vec<CallerCondition>, ConditionError> {
        let mut out = Vec::new();
        if let Some(uids) = self.uid {
            out.push(CallerCondition::uid(uids)?);
        }
        let texts = [
            (CallerField::User, self.user),
            (CallerField::Exe, self.exe),
            (CallerField::Comm, self.comm),
            (CallerField::Cgroup, self.cgroup),
            (CallerField::CiRepository, self.ci_repository),
            (CallerField::CiWorkflow, self.ci_workflow),
            (CallerField::CiRef, self.ci_ref),
        ];
        out.extend(each_given(texts, CallerCondition::text)?);
        if let Some(claims) = self.oidc {
            out.push(CallerCondition::oidc(claims)?);
        }
        if let Some(groups) = self.oidc_groups {
            out.push(CallerCondition::oidc_groups(groups)?);
        }
        Ok(out)
    }

    /// All the conditions, as one matcher.
    pub fn matcher(self) -> Result<CallerMatch, ConditionError> {
        self.conditions().map(CallerMatch)
    }
}

/// Conditions on the caller, all of which must hold (a credential rule's); none matches every
/// caller.
#[derive(Debug, Clone, Default)]
pub struct CallerMatch(Vec<CallerCondition>);

impl CallerMatch {
    pub fn matches(&self, s: &Subject) -> bool {
        self.0.iter().all(|c| c.check(s).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Subject {
        Subject {
            uid: 1000,
            oidc: v.as_object().cloned(),
            ..Subject::default()
        }
    }

    fn oidc(claim: &str, pattern: toml::Value) -> CallerCondition {
        CallerCondition::oidc(BTreeMap::from([(claim.to_owned(), pattern)])).unwrap()
    }

    #[test]
    fn claims_match_by_their_text_and_lists_by_any_member() {
        let s = claims(json!({
            "sub": "repo:org/app:ref:refs/heads/main",
            "run_attempt": 2,
            "ephemeral": true,
            "groups": ["dev", "ops"],
            "ids": [7, 8],
            "mixed": ["x", 9, false, null, {"y": 1}, ["z"]],
            "none": null,
            "object": {"role": "admin"},
        }));
        let cases: &[(&str, toml::Value, bool)] = &[
            ("sub", "repo:org/*".into(), true),
            ("sub", "repo:other/*".into(), false),
            ("run_attempt", 2.into(), true),
            ("run_attempt", "2".into(), true),
            ("run_attempt", "3".into(), false),
            ("ephemeral", true.into(), true),
            ("groups", "ops".into(), true),
            ("groups", "o*".into(), true),
            ("groups", "admins".into(), false),
            // Members that are numbers or booleans match as their text, as such claims do.
            ("ids", 8.into(), true),
            ("ids", "9".into(), false),
            ("mixed", "x".into(), true),
            ("mixed", "9".into(), true),
            ("mixed", "false".into(), true),
            // Null, objects and nested lists have no text: nothing matches them.
            ("mixed", "null".into(), false),
            ("mixed", "*y*".into(), false),
            ("mixed", "*z*".into(), false),
            ("none", "*".into(), false),
            ("object", "*".into(), false),
            ("object", "*admin*".into(), false),
            ("missing", "*".into(), false),
        ];
        for (claim, pattern, want) in cases {
            let c = oidc(claim, pattern.clone());
            assert_eq!(c.check(&s).is_ok(), *want, "{claim} = {pattern}");
        }
    }

    #[test]
    fn groups_are_a_claim_like_any_other() {
        let s = claims(json!({"groups": ["devs", 7], "solo": "x"}));
        let g = |p: &str| CallerCondition::oidc_groups(vec![p.into()]).unwrap().check(&s);
        assert!(g("dev*").is_ok());
        assert!(g("7").is_ok());
        assert_eq!(
            g("ops").unwrap_err().to_string(),
            "oidc_groups: [devs, 7] matches none of [ops]"
        );
        let single = claims(json!({"groups": "devs"}));
        assert!(
            CallerCondition::oidc_groups(vec!["devs".into()])
                .unwrap()
                .check(&single)
                .is_ok()
        );
    }

    #[test]
    fn facts_the_caller_lacks_match_nothing() {
        let bare = Subject::default();
        for field in [
            CallerField::User,
            CallerField::Exe,
            CallerField::Cgroup,
            CallerField::CiRepository,
            CallerField::CiWorkflow,
            CallerField::CiRef,
        ] {
            let c = CallerCondition::text(field, vec!["*".into()]).unwrap();
            assert!(c.check(&bare).is_err(), "{}", field.key());
        }
        let e = oidc("sub", "*".into()).check(&bare).unwrap_err();
        assert_eq!(e.to_string(), "oidc: the caller presented no OIDC token");
    }

    #[test]
    fn ci_repositories_ignore_case_and_other_facts_do_not() {
        let s = Subject {
            exe: Some("/usr/bin/Git".into()),
            ci_repository: Some("My-Org/App".into()),
            ..Subject::default()
        };
        let text = |f, p: &str| {
            CallerCondition::text(f, vec![p.into()])
                .unwrap()
                .check(&s)
                .is_ok()
        };
        assert!(text(CallerField::CiRepository, "my-org/*"));
        assert!(text(CallerField::CiRepository, "MY-ORG/APP"));
        assert!(text(CallerField::Exe, "/usr/bin/Git"));
        assert!(!text(CallerField::Exe, "/usr/bin/git"));
    }

    #[test]
    fn conditions_that_could_never_match_are_refused() {
        assert_eq!(
            CallerCondition::uid(vec![]).unwrap_err(),
            ConditionError::EmptyList { key: "uid" }
        );
        let e = CallerCondition::text(CallerField::CiRepository, vec!["org".into()]).unwrap_err();
        assert!(
            e.to_string().contains("ci_repository \"org\" is not owner/name"),
            "{e}"
        );
        let e = CallerCondition::text(CallerField::CiRef, vec!["main".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ci_ref \"main\" is not a full ref name"),
            "{e}"
        );
        assert_eq!(
            CallerCondition::oidc(BTreeMap::new()).unwrap_err(),
            ConditionError::EmptyClaims
        );
        let list = toml::Value::Array(vec![1.into()]);
        let e = CallerCondition::oidc(BTreeMap::from([("sub".into(), list)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "oidc.sub = [1]: give a string (a glob), a number or a boolean"
        );
    }

    #[test]
    fn a_match_needs_every_condition() {
        let s = Subject {
            uid: 1000,
            cgroup: Some("/runner/job".into()),
            ..Subject::default()
        };
        let uid = |u| CallerCondition::uid(vec![u]).unwrap();
        let cgroup = CallerCondition::text(CallerField::Cgroup, vec!["/runner/*".into()]).unwrap();
        assert!(CallerMatch::default().matches(&s));
        assert!(CallerMatch(vec![uid(1000), cgroup.clone()]).matches(&s));
        assert!(!CallerMatch(vec![uid(0), cgroup]).matches(&s));
    }
}
