use std::{path::Path, time::Duration};

use serde_json::json;

use super::*;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, Path::new("policy.toml"))
}

fn policy(text: &str) -> Policy {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const GROUPS: &str = "[approvers.maintainers]\nusers = [\"alice\", \"bob\"]\nuids = [1001]\n";

fn subject() -> Subject {
    let claims = json!({
        "repository": "org/app",
        "repository_owner": "org",
        "job_workflow_ref": "org/app/.github/workflows/deploy.yml@refs/heads/main",
        "run_attempt": 1,
        "groups": ["devs", "admins"],
        "aud": ["a", "b"],
    });
    Subject {
        uid: 1000,
        user: Some("alice".into()),
        exe: Some("/usr/bin/git".into()),
        comm: "git".into(),
        cgroup: Some("/ghgate.clients/job-1".into()),
        ci_repository: Some("org/app".into()),
        ci_workflow: Some("deploy".into()),
        ci_ref: Some("refs/heads/main".into()),
        oidc: claims.as_object().cloned(),
    }
}

/// A request to `host`, classified as the gateway would on a connection to it.
fn request(host: &str, method: &str, path: &str) -> Target {
    Target::parse(
        method,
        &format!("https://{host}{path}"),
        &crate::classify::GitHub::default(),
    )
    .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"))
}

fn push() -> Target {
    request("github.com", "POST", "/org/app.git/git-receive-pack")
}

fn api(method: &str, path: &str) -> Target {
    request("api.github.com", method, path)
}

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const Z: &str = "0000000000000000000000000000000000000000";

/// A ref update from hex ids.
fn ref_update(name: &str, old: &str, new: &str) -> RefUpdate {
    RefUpdate::new(ghgate_git::RefUpdate::new(
        old.parse().unwrap(),
        new.parse().unwrap(),
        name,
    ))
}

fn update(name: &str) -> RefUpdate {
    ref_update(name, A, B)
}

fn rule_of(policy: &Policy, s: &Subject, t: &Target, r: Option<&RefUpdate>) -> Option<usize> {
    policy.evaluate(s, t, r).rule.index
}

// ---- parsing -------------------------------------------------------------------------------

#[test]
fn the_example_policy_parses() {
    let text = include_str!("../../../gateway/config/examples/policy.toml");
    let p = policy(text);
    assert_eq!(p.rules().len(), 7);
    assert_eq!(p.default_action(), &Action::Allow);
    assert_eq!(p.group("maintainers").unwrap().size(), 3);
    let force = &p.rules()[1];
    assert_eq!(force.name.as_deref(), Some("force-push-protected"));
    assert!(force.needs_ref());
    assert_eq!(
        force.action,
        Action::RequireApproval(ApprovalSpec {
            group: "maintainers".into(),
            approvals: 1,
            expires: Duration::from_secs(3600),
            hold: None,
        })
    );
    assert!(matches!(p.unknown_write(), Action::RequireApproval(a) if a.group == "maintainers"));
    assert!(
        p.summary()
            .starts_with("7 rules, default allow, groups: maintainers"),
        "{}",
        p.summary()
    );

    // And it does what its comments say.
    let s = subject();
    let del = ref_update("refs/heads/release/1.2", A, Z);
    assert_eq!(p.evaluate(&s, &push(), Some(&del)).action, Action::Deny);
    let force = update("refs/heads/main").with_kind(RefKind::NonFastForward);
    assert_eq!(p.evaluate(&s, &push(), Some(&force)).rule.index, Some(2));
    let wf = update("refs/heads/feature")
        .with_kind(RefKind::FastForward)
        .with_paths(Paths::Known(vec![".github/workflows/ci.yml".into()]));
    assert_eq!(p.evaluate(&s, &push(), Some(&wf)).rule.index, Some(3));
    let secrets = api("PUT", "/repos/org/app/actions/secrets/TOKEN");
    assert_eq!(p.evaluate(&s, &secrets, None).rule.index, Some(4));
    let chat = request("api.githubcopilot.com", "POST", "/chat/completions");
    let ci = Subject {
        ci_repository: Some("example-org/app".into()),
        ..s.clone()
    };
    assert_eq!(p.evaluate(&ci, &chat, None).action, Action::Allow);
    let outsider = Subject {
        ci_repository: Some("other/x".into()),
        ..s.clone()
    };
    assert_eq!(p.evaluate(&outsider, &chat, None).action, Action::RecordOnly);
    assert_eq!(p.evaluate(&s, &api("GET", "/user"), None).rule, RuleRef::DEFAULT);
}

#[test]
fn a_missing_rule_reference_reads_as_in_the_issue() {
    let text = "[approvers.admins]\nusers = [\"root\"]\n[[rule]]\naction = \"allow\"\nuid = 1\n\
                [[rule]]\naction = \"allow\"\nuid = 2\n\
                [[rule]]\nname = \"force-push-main\"\naction = \"require_approval\"\napprovers = \"maintainers\"\n";
    assert_eq!(
        error(text),
        "policy.toml: rule #3 \"force-push-main\": approvers \"maintainers\" is not a group defined under \
         [approvers] (groups defined: admins)"
    );
}

#[test]
fn every_validation_error_names_the_place() {
    // (policy text, where, what the message says)
    let r = "[[rule]]\nname = \"r\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{r}action = \"allow\"\nfoo = 1\n"), "rule #1 \"r\"", "unknown field `foo`"),
        (format!("{r}action = \"permit\"\n"), "rule #1 \"r\"", "unknown variant `permit`"),
        (format!("{r}uid = 1\n"), "rule #1 \"r\"", "missing field `action`"),
        (format!("{r}action = \"deny\"\nref_op = \"rewind\"\n"), "rule #1 \"r\"", "unknown variant `rewind`"),
        (format!("{r}action = \"deny\"\ngit_service = \"push\"\n"), "rule #1 \"r\"", "unknown variant `push`"),
        (
            format!("{r}action = \"deny\"\ncopilot = \"chatt\"\n"),
            "rule #1 \"r\"",
            "copilot \"chatt\" is not a Copilot endpoint name",
        ),
        (format!("{r}action = \"deny\"\nuid = \"me\"\n"), "rule #1 \"r\"", "invalid type"),
        (
            format!("{GROUPS}{r}action = \"require_approval\"\napprovers = \"maintainers\"\nexpires = \"1w\"\n"),
            "rule #1 \"r\"",
            "expires: \"1w\" is not a duration",
        ),
        (
            format!("{GROUPS}{r}action = \"require_approval\"\napprovers = \"maintainers\"\nhold = \"0s\"\n"),
            "rule #1 \"r\"",
            "hold: \"0s\" is zero",
        ),
        (
            format!(
                "{GROUPS}{r}action = \"require_approval\"\napprovers = \"maintainers\"\nexpires = \"1m\"\nhold = \"2m\"\n"
            ),
            "rule #1 \"r\"",
            "hold = \"2m\" is longer than expires = \"1m\"",
        ),
        (
            format!("{GROUPS}{r}action = \"require_approval\"\n"),
            "rule #1 \"r\"",
            "needs `approvers = \"<group>\"` (groups defined: maintainers)",
        ),
        (
            format!("{r}action = \"require_approval\"\napprovers = \"x\"\n"),
            "rule #1 \"r\"",
            "no groups are defined under [approvers]",
        ),
        (
            format!("{GROUPS}{r}action = \"require_approval\"\napprovers = \"maintainers\"\napprovals = 0\n"),
            "rule #1 \"r\"",
            "approvals = 0",
        ),
        (
            format!("{GROUPS}{r}action = \"require_approval\"\napprovers = \"maintainers\"\napprovals = 4\n"),
            "rule #1 \"r\"",
            "approvals = 4, but group \"maintainers\" has only 3 members",
        ),
        (
            format!("{GROUPS}{r}action = \"deny\"\napprovers = \"maintainers\"\n"),
            "rule #1 \"r\"",
            "`approvers` only applies to action = \"require_approval\"",
        ),
        (
            format!("{r}action = \"allow\"\nmessage = \"hi\"\n"),
            "rule #1 \"r\"",
            "`message` is shown only when",
        ),
        (
            format!("{r}action = \"deny\"\ngit_service = [\"upload-pack\"]\nref = \"refs/heads/main\"\n"),
            "rule #1 \"r\"",
            "ref describes pushed refs, which only receive-pack carries, but git_service also names upload-pack",
        ),
        (
            format!("{r}action = \"deny\"\ngit_service = [\"receive-pack\", \"upload-pack\"]\npaths = \"x\"\nref_op = \"delete\"\n"),
            "rule #1 \"r\"",
            "ref_op, paths describe pushed refs",
        ),
        (format!("{r}action = \"deny\"\nhost = []\n"), "rule #1 \"r\"", "`host` is an empty list"),
        (format!("{r}action = \"deny\"\noidc = {{}}\n"), "rule #1 \"r\"", "`oidc` is an empty table"),
        (format!("{r}action = \"deny\"\noidc = {{ sub = [1] }}\n"), "rule #1 \"r\"", "oidc.sub = [1]"),
        (
            format!("{r}action = \"deny\"\nref = \"main\"\n"),
            "rule #1 \"r\"",
            "ref \"main\" is not a full ref name and would never match; write \"refs/heads/main\"",
        ),
        (format!("{r}action = \"deny\"\nci_ref = \"main\"\n"), "rule #1 \"r\"", "ci_ref \"main\" is not a full ref"),
        (
            format!("{r}action = \"deny\"\nhost = \"https://github.com\"\n"),
            "rule #1 \"r\"",
            "host \"https://github.com\" is not a host name",
        ),
        (format!("{r}action = \"deny\"\npath = \"repos/*\"\n"), "rule #1 \"r\"", "does not start with /"),
        (format!("{r}action = \"deny\"\npath = \"/x?y=1\"\n"), "rule #1 \"r\"", "has a query"),
        (format!("{r}action = \"deny\"\nrepository = \"org\"\n"), "rule #1 \"r\"", "is not owner/name"),
        (format!("{r}action = \"deny\"\npaths = \"/\"\n"), "rule #1 \"r\"", "an empty pattern"),
        (
            "[[rule]]\nname = \" \"\naction = \"deny\"\nuid = 1\n".into(),
            "rule #1 \" \"",
            "`name` is empty",
        ),
        (
            "[[rule]]\nname = \"a\"\naction = \"deny\"\nuid = 1\n[[rule]]\nname = \"a\"\naction = \"deny\"\nuid = 2\n"
                .into(),
            "rule #2 \"a\"",
            "the name \"a\" is already used by rule #1",
        ),
        (
            "[[rule]]\naction = \"deny\"\n[[rule]]\naction = \"allow\"\nuid = 1\n[[rule]]\naction = \"allow\"\nuid = 2\n"
                .into(),
            "rule #1",
            "matches everything and rules #2..#3 are never reached",
        ),
        (
            "default = \"require_approval\"\n".into(),
            "default",
            "default = \"require_approval\" needs `default_approvers = \"<group>\"`",
        ),
        (
            format!("default = \"deny\"\ndefault_approvers = \"maintainers\"\n{GROUPS}"),
            "default",
            "`default_approvers` only applies to default = \"require_approval\"",
        ),
        (
            format!("default = \"allow\"\ndefault_message = \"x\"\n{GROUPS}"),
            "default",
            "`default_message` is shown only when",
        ),
        (
            format!("default = \"require_approval\"\ndefault_approvers = \"maintainers\"\ndefault_expires = \"soon\"\n{GROUPS}"),
            "default",
            "default_expires: \"soon\" is not a duration",
        ),
        ("[approvers.empty]\n".into(), "[approvers.empty]", "the group has no members"),
    ];
    for (text, at, message) in cases {
        let e = error(&text);
        let prefix = format!("policy.toml: {at}: ");
        assert!(
            e.starts_with(&prefix),
            "expected {prefix:?} in\n  {e}\nfor\n{text}"
        );
        assert!(e.contains(message), "expected {message:?} in\n  {e}\nfor\n{text}");
    }
}

#[test]
fn errors_outside_rules_keep_tomls_line_and_column() {
    let e = error("default = \"allow\"\n\n[approvers.x]\nusers = [\"a\"\n");
    assert!(e.starts_with("policy.toml: line 4, column "), "{e}");
    let e = error("default = \"allow\"\nrules = []\n");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("policy.toml: line 2, column 1: unknown field `rules`"),
        "{e}"
    );
    let e = error("default = \"maybe\"\n");
    assert!(
        e.starts_with("policy.toml: line 1, column 11: unknown variant `maybe`"),
        "{e}"
    );
    let e = error("[approvers.x]\nuser = [\"a\"]\n");
    assert!(e.contains("line 2, column 1: unknown field `user`"), "{e}");
}

#[test]
fn single_values_read_as_lists_and_defaults_apply() {
    let p = policy(&format!(
        "{GROUPS}[[rule]]\naction = \"require_approval\"\napprovers = \"maintainers\"\nuid = 1000\nhost = \"GitHub.com\"\n"
    ));
    let Action::RequireApproval(spec) = &p.rules()[0].action else {
        panic!("{:?}", p.rules()[0].action)
    };
    assert_eq!(
        (spec.approvals, spec.expires, spec.hold),
        (1, Duration::from_secs(86400), None)
    );
    assert_eq!(p.evaluate(&subject(), &push(), None).rule.index, Some(1));
    assert_eq!(policy("").default_action(), &Action::Allow);
    assert_eq!(
        policy("").summary(),
        "0 rules, default allow, no approver groups, unknown writes allow (implied by the rules)"
    );
}

#[test]
fn a_default_can_require_approval() {
    let p = policy(&format!(
        "default = \"require_approval\"\ndefault_approvers = \"maintainers\"\ndefault_approvals = 2\n\
         default_hold = \"30s\"\ndefault_message = \"ask\"\n{GROUPS}"
    ));
    let v = p.evaluate(&subject(), &push(), None);
    assert_eq!(v.rule, RuleRef::DEFAULT);
    assert_eq!(v.message.as_deref(), Some("ask"));
    assert_eq!(
        v.to_string(),
        "require_approval (2 approvals from \"maintainers\", expires after 24h, held up to 30s) by the default"
    );
}

#[test]
fn groups_hold_users_and_uids() {
    let p = policy(GROUPS);
    let g = p.group("maintainers").unwrap();
    assert!(g.contains(Some("bob"), Some(5)));
    assert!(g.contains(None, Some(1001)));
    assert!(g.contains(Some("mallory"), Some(1001)));
    assert!(!g.contains(Some("mallory"), Some(5)));
    assert!(!g.contains(None, None));
    assert!(p.group("nobody").is_none());
}

#[test]
fn allow_all_allows_all() {
    let p = Policy::allow_all();
    let v = p.evaluate(&subject(), &push(), Some(&update("refs/heads/main")));
    assert_eq!((v.action, v.rule), (Action::Allow, RuleRef::DEFAULT));
    assert!(p.rules().is_empty());
}

// ---- evaluation ----------------------------------------------------------------------------

#[test]
fn the_first_matching_rule_wins() {
    let p = policy(
        "default = \"deny\"\n\
         [[rule]]\nname = \"other\"\naction = \"deny\"\nuid = 1\n\
         [[rule]]\nname = \"alice\"\naction = \"record_only\"\nuser = \"alice\"\n\
         [[rule]]\nname = \"git\"\naction = \"allow\"\ncomm = \"git\"\n",
    );
    let v = p.evaluate(&subject(), &push(), None);
    assert_eq!(v.action, Action::RecordOnly);
    assert_eq!(v.rule.to_string(), "rule #2 \"alice\"");
    let bob = Subject {
        user: Some("bob".into()),
        ..subject()
    };
    assert_eq!(
        p.evaluate(&bob, &push(), None).rule.to_string(),
        "rule #3 \"git\""
    );
    let curl = Subject {
        comm: "curl".into(),
        ..bob
    };
    let v = p.evaluate(&curl, &push(), None);
    assert_eq!(
        (v.action, v.rule.to_string()),
        (Action::Deny, "the default".to_owned())
    );
}

/// Each condition, alone in a rule: whether it matches the standard subject and request.
#[test]
fn each_condition_matches_what_it_says() {
    let s = subject();
    let push_main = update("refs/heads/main")
        .with_kind(RefKind::FastForward)
        .with_paths(Paths::Known(vec![
            "src/lib.rs".into(),
            ".github/workflows/ci.yml".into(),
        ]));
    let cases: &[(&str, bool)] = &[
        ("uid = [1, 1000]", true),
        ("uid = 1", false),
        ("user = \"al*\"", true),
        ("user = \"bob\"", false),
        ("exe = \"/usr/bin/*\"", true),
        ("exe = \"/usr/local/*\"", false),
        ("comm = \"git\"", true),
        ("comm = \"Git\"", false),
        ("cgroup = \"/ghgate.clients*\"", true),
        ("cgroup = \"/system.slice/*\"", false),
        ("ci_repository = \"ORG/*\"", true),
        ("ci_repository = \"other/*\"", false),
        ("ci_workflow = \"deploy*\"", true),
        ("ci_workflow = \"test\"", false),
        ("ci_ref = \"refs/heads/*\"", true),
        ("ci_ref = \"refs/tags/*\"", false),
        (
            "oidc = { repository_owner = \"org\", job_workflow_ref = \"org/*\" }",
            true,
        ),
        (
            "oidc = { repository_owner = \"org\", job_workflow_ref = \"other/*\" }",
            false,
        ),
        ("oidc = { run_attempt = 1 }", true),
        ("oidc = { run_attempt = \"2\" }", false),
        ("oidc = { aud = \"b\" }", true),
        ("oidc = { missing = \"*\" }", false),
        ("oidc_groups = \"adm*\"", true),
        ("oidc_groups = \"ops\"", false),
        ("host = \"*.com\"", true),
        ("host = \"api.github.com\"", false),
        ("method = \"post\"", true),
        ("method = [\"GET\", \"HEAD\"]", false),
        ("path = \"/*/git-receive-pack\"", true),
        ("path = \"/repos/*\"", false),
        ("repository = \"org/app\"", true),
        ("repository = \"org/other\"", false),
        ("git_service = \"receive-pack\"", true),
        ("git_service = \"upload-pack\"", false),
        ("ref = [\"refs/heads/release/*\", \"refs/heads/main\"]", true),
        ("ref = \"refs/heads/dev\"", false),
        ("ref_op = [\"fast-forward\"]", true),
        ("ref_op = [\"update\"]", true),
        ("ref_op = [\"create\", \"delete\", \"non-fast-forward\"]", false),
        ("paths = \".github/workflows/*\"", true),
        ("paths = \"/.github/workflows/*\"", true),
        ("paths = \"docs/*\"", false),
    ];
    for (condition, want) in cases {
        let p = policy(&format!("[[rule]]\naction = \"deny\"\n{condition}\n"));
        let got = p.evaluate(&s, &push(), Some(&push_main)).rule.index == Some(1);
        assert_eq!(got, *want, "{condition}");
    }
    let copilot = request("api.githubcopilot.com", "POST", "/chat/completions?stream=1");
    for (condition, want) in [
        ("copilot = \"chat\"", true),
        ("copilot = \"*\"", true),
        ("copilot = [\"completions\", \"embeddings\"]", false),
    ] {
        let p = policy(&format!("[[rule]]\naction = \"deny\"\n{condition}\n"));
        assert_eq!(rule_of(&p, &s, &copilot, None) == Some(1), want, "{condition}");
        assert_eq!(rule_of(&p, &s, &push(), None), None, "{condition} on a push");
    }
}

#[test]
fn facts_the_caller_lacks_never_match() {
    let bare = Subject {
        uid: 1000,
        comm: "git".into(),
        ..Subject::default()
    };
    for condition in [
        "user = \"*\"",
        "exe = \"*\"",
        "cgroup = \"*\"",
        "ci_repository = \"*\"",
        "ci_workflow = \"*\"",
        "ci_ref = \"*\"",
        "oidc = { sub = \"*\" }",
        "oidc_groups = \"*\"",
    ] {
        let p = policy(&format!("[[rule]]\naction = \"deny\"\n{condition}\n"));
        assert_eq!(rule_of(&p, &bare, &push(), None), None, "{condition}");
    }
}

#[test]
fn a_repository_known_only_by_id_counts_as_matching_a_repository_condition() {
    let p = policy(
        "[[rule]]\nname = \"secret\"\naction = \"deny\"\nrepository = \"org/secret\"\n\
         [[rule]]\nname = \"public\"\naction = \"allow\"\nrepository = \"org/public\"\n",
    );
    // `/repositories/{id}` may be org/secret: the riskier reading, as for other undecided facts.
    let by_id = api("PUT", "/repositories/1296269/contents/a");
    assert_eq!(rule_of(&p, &subject(), &by_id, None), Some(1));
    let text = p.explain(&subject(), &by_id, None).to_string();
    assert!(
        text.contains("the request names repository id 1296269, whose name the gateway cannot tell"),
        "{text}"
    );
    // Named, it is what it is.
    assert_eq!(
        rule_of(&p, &subject(), &api("PUT", "/repos/org/public/contents/a"), None),
        Some(2)
    );
    // No repository at all is no match.
    assert_eq!(rule_of(&p, &subject(), &api("GET", "/user"), None), None);
}

#[test]
fn case_and_escapes_do_not_dodge_a_rule() {
    let p =
        policy("[[rule]]\naction = \"deny\"\nrepository = \"org/secret\"\npath = \"/repos/*/contents/*\"\n");
    for path in [
        "/repos/org/secret/contents/a",
        "/repos/ORG/Secret/contents/a",
        "/repos/%6Frg/secret/contents/a?ref=x",
        "/REPOS/org/secret/CONTENTS/a",
    ] {
        assert_eq!(
            rule_of(&p, &subject(), &api("GET", path), None),
            Some(1),
            "{path}"
        );
    }
    let p = policy("[[rule]]\naction = \"deny\"\nhost = \"github.com\"\n");
    for host in ["github.com", "GitHub.COM", "github.com.", "github.com:443"] {
        let t = request(host, "GET", "/");
        assert_eq!(rule_of(&p, &subject(), &t, None), Some(1), "{host}");
    }
}

#[test]
fn ref_rules_never_match_without_a_ref_update() {
    let p = policy(
        "[[rule]]\naction = \"deny\"\nref = \"*\"\n[[rule]]\naction = \"deny\"\nref_op = \"create\"\n",
    );
    assert_eq!(rule_of(&p, &subject(), &push(), None), None);
    let p = policy("[[rule]]\naction = \"deny\"\npaths = \"*\"\n");
    assert_eq!(rule_of(&p, &subject(), &push(), None), None);
    assert_eq!(p.needs(&subject(), &push(), None), Needs::default());
}

#[test]
fn ref_ops_follow_the_kind() {
    let new = ref_update("refs/heads/x", Z, A);
    let del = ref_update("refs/heads/x", A, Z);
    let ff = update("refs/heads/x").with_kind(RefKind::FastForward);
    let nff = update("refs/heads/x").with_kind(RefKind::NonFastForward);
    let p = |op: &str| policy(&format!("[[rule]]\naction = \"deny\"\nref_op = \"{op}\"\n"));
    let cases = [
        ("create", &new, true),
        ("create", &del, false),
        ("delete", &del, true),
        ("delete", &ff, false),
        ("update", &ff, true),
        ("update", &nff, true),
        ("update", &new, false),
        ("fast-forward", &ff, true),
        ("fast-forward", &nff, false),
        ("non-fast-forward", &nff, true),
        ("non-fast-forward", &ff, false),
    ];
    for (op, r, want) in cases {
        assert_eq!(
            rule_of(&p(op), &subject(), &push(), Some(r)) == Some(1),
            want,
            "{op} on {r}"
        );
    }
}

#[test]
fn undecided_facts_are_read_the_riskier_way() {
    let s = subject();
    let t = push();
    let undecided = update("refs/heads/main");
    assert_eq!(
        (undecided.kind, &undecided.paths),
        (RefKind::Update, &Paths::NotComputed)
    );
    let nff = policy("[[rule]]\naction = \"deny\"\nref_op = \"non-fast-forward\"\n");
    let ff = policy("[[rule]]\naction = \"allow\"\nref_op = \"fast-forward\"\n");
    let paths = policy("[[rule]]\naction = \"deny\"\npaths = \"secret/*\"\n");
    assert_eq!(rule_of(&nff, &s, &t, Some(&undecided)), Some(1));
    assert_eq!(rule_of(&ff, &s, &t, Some(&undecided)), None);
    assert_eq!(rule_of(&paths, &s, &t, Some(&undecided)), Some(1));
    // Files that cannot be worked out count as matching, even once decided.
    let unknown = undecided
        .clone()
        .with_paths(Paths::Unknown("the pack exceeded 64 MiB".into()));
    assert_eq!(rule_of(&paths, &s, &t, Some(&unknown)), Some(1));
    assert_eq!(paths.needs(&s, &t, Some(&unknown)), Needs::default());
    let known = undecided.with_paths(Paths::Known(vec!["src/a.rs".into()]));
    assert_eq!(rule_of(&paths, &s, &t, Some(&known)), None);
}

#[test]
fn needs_asks_only_for_facts_that_could_change_the_verdict() {
    let s = subject();
    let t = push();
    let ff_main = "[[rule]]\nname = \"ff-main\"\naction = \"deny\"\nref = \"refs/heads/main\"\nref_op = \"non-fast-forward\"\n";
    let workflows = "[[rule]]\nname = \"wf\"\naction = \"deny\"\npaths = \".github/*\"\n";
    let alice = "[[rule]]\nname = \"alice\"\naction = \"allow\"\nuser = \"alice\"\n";
    let yes = |ff, paths| Needs {
        fast_forward: ff,
        paths,
        secrets: false,
    };
    let undecided = |name: &str| update(name);
    let cases: Vec<(String, RefUpdate, Needs)> = vec![
        (ff_main.into(), undecided("refs/heads/main"), yes(true, false)),
        // The ref condition already fails: ancestry cannot matter.
        (ff_main.into(), undecided("refs/heads/dev"), yes(false, false)),
        (
            format!("{ff_main}{workflows}"),
            undecided("refs/heads/main"),
            yes(true, true),
        ),
        (
            format!("{ff_main}{workflows}"),
            undecided("refs/heads/dev"),
            yes(false, true),
        ),
        // A rule that certainly matches first ends the walk.
        (
            format!("{alice}{ff_main}{workflows}"),
            undecided("refs/heads/main"),
            yes(false, false),
        ),
        (
            format!("{ff_main}{alice}{workflows}"),
            undecided("refs/heads/main"),
            yes(true, false),
        ),
        // Decided facts need nothing.
        (
            format!("{ff_main}{workflows}"),
            undecided("refs/heads/main")
                .with_kind(RefKind::FastForward)
                .with_paths(Paths::Known(vec![])),
            yes(false, false),
        ),
        // A delete pushes no commits: its paths are known to be none.
        (
            workflows.into(),
            ref_update("refs/heads/main", A, Z),
            yes(false, false),
        ),
        // Asking for both kinds of update is no question.
        (
            "[[rule]]\naction = \"deny\"\nref_op = [\"fast-forward\", \"non-fast-forward\"]\n".into(),
            undecided("refs/heads/main"),
            yes(false, false),
        ),
        // One undecided condition and one failing one: the rule cannot match either way.
        (
            "[[rule]]\naction = \"deny\"\nref_op = \"fast-forward\"\nuid = 1\n".into(),
            undecided("refs/heads/main"),
            yes(false, false),
        ),
    ];
    for (text, r, want) in cases {
        let p = policy(&text);
        assert_eq!(p.needs(&s, &t, Some(&r)), want, "{r} under\n{text}");
    }
}

#[test]
fn deciding_the_facts_changes_the_verdict_as_needs_said() {
    let p = policy(
        "[[rule]]\naction = \"deny\"\nref = \"refs/heads/main\"\nref_op = \"non-fast-forward\"\n\
         [[rule]]\naction = \"record_only\"\npaths = \".github/*\"\n",
    );
    let (s, t) = (subject(), push());
    let r = update("refs/heads/main");
    assert_eq!(
        p.needs(&s, &t, Some(&r)),
        Needs {
            fast_forward: true,
            paths: true,
            secrets: false,
        }
    );
    assert_eq!(p.evaluate(&s, &t, Some(&r)).action, Action::Deny);
    let r = r.with_kind(RefKind::FastForward);
    assert_eq!(
        p.needs(&s, &t, Some(&r)),
        Needs {
            fast_forward: false,
            paths: true,
            secrets: false,
        }
    );
    // Unknown files never satisfy a rule that lets through (record_only passes).
    assert_eq!(p.evaluate(&s, &t, Some(&r)).action, Action::Allow);
    let flagged = r
        .clone()
        .with_paths(Paths::Known(vec![".github/workflows/ci.yml".into()]));
    assert_eq!(p.evaluate(&s, &t, Some(&flagged)).action, Action::RecordOnly);
    let r = r.with_paths(Paths::Known(vec!["README.md".into()]));
    assert_eq!(p.evaluate(&s, &t, Some(&r)).action, Action::Allow);
}

#[test]
fn messages_reach_only_refused_or_held_callers() {
    let p = policy(&format!(
        "{GROUPS}[[rule]]\naction = \"deny\"\nuid = 1\nmessage = \"no\"\n\
         [[rule]]\naction = \"require_approval\"\napprovers = \"maintainers\"\nuid = 1000\nmessage = \"wait\"\n"
    ));
    let v = p.evaluate(&subject(), &push(), None);
    assert_eq!(v.message.as_deref(), Some("wait"));
    let one = Subject { uid: 1, ..subject() };
    assert_eq!(p.evaluate(&one, &push(), None).message.as_deref(), Some("no"));
}

#[test]
fn paths_of_interest_prunes_directories() {
    let p = policy(
        "[[rule]]\naction = \"deny\"\npaths = [\".github/workflows/*\", \"Cargo.lock\", \"src/*/build.rs\"]\n",
    );
    let wants = p.paths_of_interest();
    for dir in [
        "",
        "/",
        ".github",
        ".github/",
        ".github/workflows",
        ".github/workflows/sub",
        "src",
        "src/a",
    ] {
        assert!(wants(dir), "{dir}");
    }
    for dir in [".git", ".github/actions", "docs", "Cargo.lock", "srcx"] {
        assert!(!wants(dir), "{dir}");
    }
    let any = policy("[[rule]]\naction = \"deny\"\npaths = \"*.sh\"\n").paths_of_interest();
    assert!(any("deep/down"));
    let none = policy("[[rule]]\naction = \"deny\"\nuid = 1\n").paths_of_interest();
    assert!(!none(""));
}

// ---- explanations --------------------------------------------------------------------------

#[test]
fn explanations_read_as_a_report() {
    let text = format!(
        "default = \"allow\"\n{GROUPS}\
         [[rule]]\nname = \"bots\"\naction = \"deny\"\ncomm = \"bot*\"\n\
         [[rule]]\nname = \"force-push-main\"\naction = \"require_approval\"\napprovers = \"maintainers\"\n\
         ref = \"refs/heads/main\"\nref_op = \"non-fast-forward\"\nmessage = \"ask a maintainer\"\n\
         [[rule]]\nname = \"workflows\"\naction = \"deny\"\npaths = \".github/workflows/*\"\n"
    );
    let p = policy(&text);
    let (s, t) = (subject(), push());
    let cases: Vec<(Option<RefUpdate>, &str)> = vec![
        (
            None,
            "  rule #1 \"bots\": no match: comm: git matches none of [bot*]\n\
             \x20 rule #2 \"force-push-main\": no match: ref: not a pushed ref (this rule applies to ref updates of a push only)\n\
             \x20 rule #3 \"workflows\": no match: paths: not a pushed ref (this rule applies to ref updates of a push only)\n\
             \x20 no rule matches\n\
             verdict: allow by the default\n",
        ),
        (
            Some(update("refs/heads/dev").with_paths(Paths::Known(vec!["README.md".into()]))),
            "  rule #1 \"bots\": no match: comm: git matches none of [bot*]\n\
             \x20 rule #2 \"force-push-main\": no match: ref: refs/heads/dev matches none of [refs/heads/main]\n\
             \x20 rule #3 \"workflows\": no match: paths: no changed file (README.md) matches [.github/workflows/*]\n\
             \x20 no rule matches\n\
             verdict: allow by the default\n",
        ),
        (
            Some(update("refs/heads/main")),
            "note: refs/heads/main: not known whether the update is a fast-forward; read as non-fast-forward \
             (the riskier reading, as the gateway does when it cannot tell)\n\
             note: refs/heads/main: the changed files were not computed; every paths condition of a deny or require_approval rule counts as a match, none of an allow or record_only rule\n\
             \x20 rule #1 \"bots\": no match: comm: git matches none of [bot*]\n\
             \x20 rule #2 \"force-push-main\": matches\n\
             verdict: require_approval (1 approval from \"maintainers\", expires after 24h) by rule #2 \"force-push-main\"\n\
             message: ask a maintainer\n",
        ),
        (
            Some(
                update("refs/heads/dev")
                    .with_kind(RefKind::FastForward)
                    .with_paths(Paths::Unknown("the pack exceeded 64 MiB".into())),
            ),
            "  rule #1 \"bots\": no match: comm: git matches none of [bot*]\n\
             \x20 rule #2 \"force-push-main\": no match: ref: refs/heads/dev matches none of [refs/heads/main]\n\
             \x20 rule #3 \"workflows\": matches\n\
             \x20   (paths: the changed files are unknown (the pack exceeded 64 MiB), so this counts as a match)\n\
             verdict: deny by rule #3 \"workflows\"\n",
        ),
        (
            Some(ref_update("refs/heads/main", A, Z)),
            "  rule #1 \"bots\": no match: comm: git matches none of [bot*]\n\
             \x20 rule #2 \"force-push-main\": no match: ref_op: delete is none of [non-fast-forward]\n\
             \x20 rule #3 \"workflows\": no match: paths: refs/heads/main changes no files\n\
             \x20 no rule matches\n\
             verdict: allow by the default\n",
        ),
    ];
    for (r, want) in cases {
        let e = p.explain(&s, &t, r.as_ref());
        assert_eq!(e.to_string(), want, "for {r:?}");
        assert_eq!(
            e.verdict,
            p.evaluate(&s, &t, r.as_ref()),
            "explain and evaluate agree"
        );
    }
}

#[test]
fn explanations_name_the_first_failing_condition() {
    let p = policy("[[rule]]\naction = \"deny\"\nuid = 1000\nhost = \"api.github.com\"\nmethod = \"GET\"\n");
    let e = p.explain(&subject(), &push(), None);
    assert_eq!(
        e.steps[0].outcome,
        StepOutcome::Failed {
            condition: "host",
            why: "host: github.com matches none of [api.github.com]".into()
        }
    );
    let p = policy("[[rule]]\naction = \"deny\"\noidc = { repository_owner = \"other\" }\n");
    let e = p.explain(&subject(), &push(), None);
    assert!(
        e.to_string()
            .contains("oidc.repository_owner: \"org\" does not match \"other\""),
        "{e}"
    );
    let e = p.explain(&Subject::default(), &push(), None);
    assert!(
        e.to_string().contains("oidc: the caller presented no OIDC token"),
        "{e}"
    );
}

#[test]
fn unknown_paths_never_satisfy_an_allow_rule() {
    // The side door: an allow rule with paths ahead of a deny, and a push whose files are
    // unknown. Unknown files must not reach the allow; they must reach the deny.
    let p = policy(
        "[[rule]]\nname = \"docs-anyone\"\naction = \"allow\"\npaths = \"docs/*\"\n\
         [[rule]]\nname = \"main-held\"\naction = \"deny\"\nref = \"refs/heads/main\"\n",
    );
    let (s, t) = (subject(), push());
    let unknown = update("refs/heads/main").with_paths(Paths::Unknown("the pack exceeded 64 MiB".into()));
    assert_eq!(rule_of(&p, &s, &t, Some(&unknown)), Some(2));
    let undecided = update("refs/heads/main");
    assert_eq!(
        rule_of(&p, &s, &t, Some(&undecided)),
        Some(2),
        "not computed reads as unknown"
    );
    let docs =
        update("refs/heads/main").with_paths(Paths::Known(vec!["docs/a.md".into(), "src/x.rs".into()]));
    assert_eq!(
        rule_of(&p, &s, &t, Some(&docs)),
        Some(1),
        "any changed file matching is a match, for allow as for deny"
    );
    let why = p.explain(&s, &t, Some(&unknown)).to_string();
    assert!(
        why.contains("unknown files never satisfy a rule that lets through"),
        "{why}"
    );
}

fn found(rule: &str, fingerprint: &str, seen: bool) -> crate::PushedSecret {
    crate::PushedSecret {
        rule: rule.into(),
        fingerprint: fingerprint.into(),
        seen_in_response: seen,
        commit: Some(B.parse().unwrap()),
        path: Some("config/prod.env".into()),
    }
}

#[test]
fn secrets_conditions_by_rule_by_any_and_by_seen_fingerprint() {
    use crate::Secrets;
    let p = policy(&format!(
        "{GROUPS}[[rule]]\nname = \"suggested\"\naction = \"deny\"\nsecret_seen = true\n\
         [[rule]]\nname = \"cloud\"\naction = \"require_approval\"\napprovers = \"maintainers\"\nsecrets = [\"aws-access-key\", \"gcp-api-key\"]\n\
         [[rule]]\nname = \"any\"\naction = \"record_only\"\nsecrets = \"*\"\n"
    ));
    let (s, t) = (subject(), push());
    let with = |found: Vec<crate::PushedSecret>| update("refs/heads/dev").with_secrets(Secrets::Known(found));
    assert_eq!(rule_of(&p, &s, &t, Some(&with(vec![]))), None);
    assert_eq!(
        rule_of(&p, &s, &t, Some(&with(vec![found("github-pat", "aa", true)]))),
        Some(1)
    );
    assert_eq!(
        rule_of(
            &p,
            &s,
            &t,
            Some(&with(vec![found("aws-access-key", "bb", false)]))
        ),
        Some(2)
    );
    assert_eq!(
        rule_of(&p, &s, &t, Some(&with(vec![found("github-pat", "cc", false)]))),
        Some(3)
    );
    // Not scanned: needed, and read as matching the refusing rule, not the permissive one.
    let undecided = update("refs/heads/dev");
    assert!(p.needs(&s, &t, Some(&undecided)).secrets);
    assert_eq!(rule_of(&p, &s, &t, Some(&undecided)), Some(1));
    let unknown =
        update("refs/heads/dev").with_secrets(Secrets::Unknown("the pack is larger than 64 MiB".into()));
    assert_eq!(rule_of(&p, &s, &t, Some(&unknown)), Some(1));
    let only_any = policy("[[rule]]\naction = \"allow\"\nsecrets = \"*\"\n[[rule]]\naction = \"deny\"\n");
    assert_eq!(
        rule_of(&only_any, &s, &t, Some(&unknown)),
        Some(2),
        "unknown never satisfies an allow"
    );
    // The explanation names rule, fingerprint, file and commit: never a secret.
    let why = p
        .explain(
            &s,
            &t,
            Some(&with(vec![found("github-pat", "0123456789ab", true)])),
        )
        .to_string();
    assert!(
        why.contains("a github-pat secret [0123456789ab] in config/prod.env (commit 2222222)"),
        "{why}"
    );
    // A secrets condition is about pushed refs only.
    assert_eq!(rule_of(&p, &s, &api("GET", "/user"), None), None);
    assert_eq!(
        p.rules()[1].secret_rules().collect::<Vec<_>>(),
        ["aws-access-key", "gcp-api-key"]
    );
}

#[test]
fn secrets_conditions_are_validated() {
    for (text, want) in [
        ("secrets = []", "secrets"),
        ("secrets = \"github-*\"", "not a masking rule id"),
        ("secret_seen = false", "would match every push"),
        (
            "secrets = \"*\"\ngit_service = \"upload-pack\"",
            "describes pushed refs",
        ),
    ] {
        let err = Policy::parse(
            &format!("[[rule]]\naction = \"deny\"\n{text}\n"),
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}
