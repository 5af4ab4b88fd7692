//! The policy stage on its own: what it makes of a request head, and of a push's commands and
//! pack, with a real policy, real approvals and an API that cannot be reached (so what the stage
//! cannot learn counts as the riskier kind). No gateway, no kernel.
use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use sha1::Digest as _;

use super::{Enforcer, Head, push::PushGate};
use crate::{
    approval::testutil,
    config::{DnsConfig, PolicyConfig},
    http::{ProxyBody, testing},
    outbound::Outbound,
    policy::{Subject, live::Live},
    record::model,
    resolve::Resolver,
    tls::upstream::UpstreamTls,
};

const ZERO: &str = "0000000000000000000000000000000000000000";
const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

const POLICY: &str = r#"
default = "allow"
[approvers.maintainers]
users = ["nobody-here"]

[[rule]]
name = "no-delete-main"
action = "deny"
ref = "refs/heads/main"
ref_op = "delete"
message = "main cannot be deleted"

[[rule]]
name = "no-force-main"
action = "deny"
ref = "refs/heads/main"
ref_op = "non-fast-forward"

[[rule]]
name = "no-api-deletes"
action = "deny"
host = "api.github.com"
method = "DELETE"

[[rule]]
name = "secrets-api"
action = "require_approval"
approvers = "maintainers"
host = "api.github.com"
method = "PUT"
path = "/repos/*/actions/secrets/*"

[[rule]]
name = "flag-issues"
action = "record_only"
host = "api.github.com"
path = "/repos/*/issues"
"#;

fn enforcer(dir: &Path) -> Enforcer {
    let policy = ghgate_policy::Policy::parse(POLICY, Path::new("unit.toml")).unwrap();
    let (approvals, _, _) = testutil::open(dir, &[], &[]);
    let resolver = Resolver::new(&DnsConfig::default(), &[]).unwrap();
    let outbound = Outbound::new(
        UpstreamTls::new(&[]).unwrap(),
        Arc::new(resolver),
        Duration::from_secs(2),
    );
    let cfg = PolicyConfig {
        // Nothing listens there: the compare API never answers.
        api_url: "http://127.0.0.1:1".into(),
        inspect_timeout_ms: 3_000,
        ..PolicyConfig::default()
    };
    Enforcer::new(Live::fixed(policy), approvals, outbound, cfg)
}

fn pkt(out: &mut Vec<u8>, line: &str) {
    ghgate_git::pktline::write(out, line.as_bytes()).unwrap();
}

/// A receive-pack request body: the commands (capabilities on the first), then a pack with no
/// objects when any command is not a delete.
fn push_body(commands: &[(&str, &str, &str)], caps: &str) -> Bytes {
    let mut body = Vec::new();
    for (i, (old, new, name)) in commands.iter().enumerate() {
        let line = if i == 0 {
            format!("{old} {new} {name}\0{caps}\n")
        } else {
            format!("{old} {new} {name}\n")
        };
        pkt(&mut body, &line);
    }
    body.extend_from_slice(b"0000");
    if commands.iter().any(|(_, new, _)| *new != ZERO) {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
        let sum = sha1::Sha1::digest(&pack);
        pack.extend_from_slice(&sum);
        body.extend_from_slice(&pack);
    }
    Bytes::from(body)
}

fn body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

async fn push(e: &Enforcer, commands: &[(&str, &str, &str)], caps: &str) -> (PushGate, Vec<model::Decision>) {
    let ex = testing::exchange(
        "POST",
        "github.com",
        "/o/r.git/git-receive-pack",
        &[("content-type", "application/x-git-receive-pack-request")],
    );
    let subject = Subject::default();
    let decided = e
        .push(
            &ex,
            &ex.conn.caller,
            &subject,
            None,
            body(push_body(commands, caps)),
        )
        .await;
    (decided.gate, decided.decisions)
}

fn answer_text(gate: &PushGate) -> String {
    match gate {
        PushGate::Answer(r) => String::from_utf8_lossy(r.body()).into_owned(),
        PushGate::Refused { answer, .. } => String::from_utf8_lossy(answer.body()).into_owned(),
        PushGate::Forward { .. } => panic!("the push went up"),
    }
}

#[test]
fn the_head_decides_what_it_can_and_hands_the_rest_on() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    let subject = Subject::default();
    let head = |method, path| e.head(&testing::exchange(method, "api.github.com", path, &[]), &subject);

    match head("DELETE", "/repos/o/r/git/refs/heads/topic") {
        Head::Refuse(resp, d) => {
            assert_eq!(resp.status(), 403);
            assert!(String::from_utf8_lossy(resp.body()).contains("no-api-deletes"));
            assert_eq!((d[0].action.as_str(), d[0].outcome.as_str()), ("deny", "refused"));
            // Recorded as the ref update it is.
            let r = d[0].ref_update.as_ref().expect("the ref update is recorded");
            assert_eq!(
                (r.name.as_str(), r.kind),
                ("refs/heads/topic", model::RefKind::Delete)
            );
        }
        _ => panic!("a denied call is refused from its head"),
    }
    // The same call spelled otherwise is the same call.
    assert!(matches!(
        head("DELETE", "/repos/o/r/git/refs/heads/%74opic"),
        Head::Refuse(..)
    ));
    match head("GET", "/repos/o/r") {
        Head::Pass(d) => assert_eq!((d[0].action.as_str(), d[0].outcome.as_str()), ("allow", "passed")),
        _ => panic!("an allowed call passes"),
    }
    match head("GET", "/repos/o/r/issues") {
        Head::Pass(d) => assert_eq!(
            d[0].action,
            model::DecisionAction::RecordOnly,
            "flagged, and passed"
        ),
        _ => panic!("a record_only call passes"),
    }
    assert!(matches!(
        head("PUT", "/repos/o/r/actions/secrets/TOKEN"),
        Head::Approval(_)
    ));
    // A push is decided from its commands, not its head.
    let push = testing::exchange(
        "POST",
        "github.com",
        "/o/r.git/git-receive-pack",
        &[("content-type", "application/x-git-receive-pack-request")],
    );
    assert!(matches!(e.head(&push, &subject), Head::Push));
}

#[tokio::test]
async fn a_push_deleting_main_is_answered_in_gits_words_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    let (gate, decisions) = push(&e, &[(A, ZERO, "refs/heads/main")], "report-status side-band-64k").await;
    let text = answer_text(&gate);
    assert!(
        text.contains("ng refs/heads/main denied by ghgate rule #1 \"no-delete-main\""),
        "{text:?}"
    );
    assert!(text.contains("main cannot be deleted"), "{text:?}");
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].outcome, model::DecisionOutcome::Refused);
    assert_eq!(
        decisions[0].ref_update.as_ref().unwrap().kind,
        model::RefKind::Delete
    );
}

#[tokio::test]
async fn a_push_with_one_ref_refused_goes_up_without_it_and_git_hears_why() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    let (gate, decisions) = push(
        &e,
        &[(A, ZERO, "refs/heads/main"), (B, ZERO, "refs/heads/topic")],
        "report-status",
    )
    .await;
    let outcomes: Vec<&str> = decisions.iter().map(|d| d.outcome.as_str()).collect();
    assert_eq!(outcomes, ["refused", "passed"]);
    let PushGate::Forward {
        body,
        length,
        rewritten,
        reply,
    } = gate
    else {
        panic!("the allowed ref goes up")
    };
    assert!(rewritten);
    let sent = body.collect().await.unwrap().to_bytes();
    assert_eq!(length, Some(sent.len() as u64));
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.contains("refs/heads/topic"), "{sent:?}");
    assert!(
        !sent.contains("refs/heads/main"),
        "the refused ref never goes up: {sent:?}"
    );
    let reply = reply.expect("git's answer gains the refused ref");
    assert_eq!(reply.held.len(), 1);
    assert_eq!(reply.held[0].0, "refs/heads/main");
}

#[tokio::test]
async fn an_atomic_push_with_one_ref_refused_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    let (gate, decisions) = push(
        &e,
        &[(A, ZERO, "refs/heads/main"), (B, ZERO, "refs/heads/topic")],
        "report-status atomic",
    )
    .await;
    let text = answer_text(&gate);
    assert!(
        text.contains("ng refs/heads/topic atomic push failed"),
        "{text:?}"
    );
    let outcomes: Vec<&str> = decisions.iter().map(|d| d.outcome.as_str()).collect();
    assert_eq!(outcomes, ["refused", "refused (atomic push)"]);
}

#[tokio::test]
async fn an_update_whose_kind_cannot_be_learned_counts_as_a_force_push() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    // The pack carries neither commit and the compare API cannot be reached.
    let (gate, decisions) = push(&e, &[(A, B, "refs/heads/main")], "report-status").await;
    let text = answer_text(&gate);
    assert!(
        text.contains("ng refs/heads/main denied by ghgate rule #2"),
        "{text:?}"
    );
    let decided = decisions[0].ref_update.as_ref().unwrap();
    // Recorded as unknown (never guessed), read by the policy as the riskier kind.
    assert_eq!(decided.kind, model::RefKind::Update);
    assert!(
        decided
            .kind_from
            .as_deref()
            .is_some_and(|k| k.starts_with("unknown, read as non-fast-forward: ")),
        "{decided:?}"
    );
    // Another branch's update is nobody's business here: it passes untouched.
    let (gate, decisions) = push(&e, &[(A, B, "refs/heads/topic")], "report-status").await;
    assert!(matches!(gate, PushGate::Forward { rewritten: false, .. }));
    assert_eq!(decisions[0].outcome, model::DecisionOutcome::Passed);
}

#[tokio::test]
async fn a_push_that_is_not_git_is_refused_before_anything_goes_up() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    let ex = testing::exchange(
        "POST",
        "github.com",
        "/o/r.git/git-receive-pack",
        &[("content-type", "application/x-git-receive-pack-request")],
    );
    let super::push::PushDecided { gate, decisions, .. } = e
        .push(
            &ex,
            &ex.conn.caller,
            &Subject::default(),
            None,
            body(Bytes::from_static(b"zzzz not a pkt-line")),
        )
        .await;
    match gate {
        PushGate::Answer(r) => assert_eq!(r.status(), 400),
        _ => panic!("garbage is not forwarded"),
    }
    assert!(decisions.is_empty());
}

async fn api_write(
    e: &Enforcer,
    method: &str,
    path: &str,
    payload: &'static [u8],
) -> (Result<ProxyBody, http::Response<Bytes>>, Vec<model::Decision>) {
    let (result, decisions, _) = api_write_owned(e, method, path, Bytes::from_static(payload)).await;
    (result, decisions)
}

async fn api_write_owned(
    e: &Enforcer,
    method: &str,
    path: &str,
    payload: Bytes,
) -> (
    Result<ProxyBody, http::Response<Bytes>>,
    Vec<model::Decision>,
    Vec<model::PushSecret>,
) {
    let ex = testing::exchange(method, "api.github.com", path, &[]);
    assert!(
        matches!(e.head(&ex, &Subject::default()), Head::ApiWrite),
        "{method} {path} is decided from its body"
    );
    e.api_write(&ex, &ex.conn.caller, &Subject::default(), body(payload))
        .await
}

fn refused(result: Result<ProxyBody, http::Response<Bytes>>) -> String {
    match result {
        Ok(_) => panic!("the write went up"),
        Err(r) => {
            assert_eq!(r.status(), 403);
            String::from_utf8_lossy(r.body()).into_owned()
        }
    }
}

#[tokio::test]
async fn api_writes_are_decided_as_the_ref_updates_they_make() {
    let dir = tempfile::tempdir().unwrap();
    let e = enforcer(dir.path());
    // A force update of main through REST: its body says force.
    let (result, d) = api_write(
        &e,
        "PATCH",
        "/repos/o/r/git/refs/heads/main",
        br#"{"sha":"1111111111111111111111111111111111111111","force":true}"#,
    )
    .await;
    let text = refused(result);
    assert!(
        text.contains(
            "refs/heads/main (non-fast-forward, PATCH git/refs): denied by rule #2 \\\"no-force-main\\\""
        ),
        "{text}"
    );
    let r = d[0].ref_update.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.kind),
        ("refs/heads/main", model::RefKind::NonFastForward)
    );
    assert_eq!(r.new.to_string(), A);
    assert_eq!(r.kind_from.as_deref(), Some("the API request (PATCH git/refs)"));
    assert_eq!(d[0].outcome, model::DecisionOutcome::Refused);

    // GraphQL deleteRef names no ref: a rule refusing deletes of main counts it.
    let (result, d) = api_write(
        &e,
        "POST",
        "/graphql",
        br#"{"query":"mutation($r: ID!) { x: deleteRef(input: {refId: $r}) { clientMutationId } }","variables":{"r":"REF_kwDO"}}"#,
    )
    .await;
    let text = refused(result);
    assert!(text.contains("no-delete-main"), "{text}");
    let r = d[0].ref_update.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.kind),
        ("(the ref with node id REF_kwDO)", model::RefKind::Delete)
    );

    // A write the gateway cannot read: no rule here asks for approval, so unknown_write denies,
    // from the head.
    let ex = testing::exchange("POST", "api.github.com", "/repos/o/r/hooks", &[]);
    let Head::Refuse(resp, d) = e.head(&ex, &Subject::default()) else {
        panic!("an unknown write passed")
    };
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    assert!(text.contains("denied by the unknown_write setting"), "{text}");
    assert!(
        d[0].message
            .as_deref()
            .unwrap()
            .contains("not a repository write the gateway knows")
    );
    // Under a method override too.
    let ex = testing::exchange(
        "POST",
        "api.github.com",
        "/repos/o/r/issues",
        &[("x-http-method-override", "PUT")],
    );
    assert!(
        matches!(e.head(&ex, &Subject::default()), Head::Pass(_)),
        "an issue write is plain"
    );
    let ex = testing::exchange(
        "POST",
        "api.github.com",
        "/repos/o/r/git/refs/heads/main",
        &[("x-http-method-override", "DELETE")],
    );
    let Head::Refuse(resp, _) = e.head(&ex, &Subject::default()) else {
        panic!("a delete under an override passed")
    };
    assert!(String::from_utf8_lossy(resp.body()).contains("no-delete-main"));

    // A GraphQL query passes, its body intact.
    let query: &[u8] = br#"{"query":"query { viewer { login } }"}"#;
    let (result, d) = api_write(&e, "POST", "/graphql", query).await;
    let Ok(forwarded) = result else {
        panic!("a query was refused")
    };
    assert_eq!(forwarded.collect().await.unwrap().to_bytes().as_ref(), query);
    assert_eq!((d[0].action.as_str(), d[0].outcome.as_str()), ("allow", "passed"));

    // An allowed write passes with its body, recorded with its ref and path.
    let put: &[u8] = br#"{"message":"m","content":"eA==","branch":"dev"}"#;
    let (result, d) = api_write(&e, "PUT", "/repos/o/r/contents/src/a.rs", put).await;
    let Ok(forwarded) = result else {
        panic!("an allowed write was refused")
    };
    assert_eq!(forwarded.collect().await.unwrap().to_bytes().as_ref(), put);
    let r = d[0].ref_update.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.kind, r.paths.clone()),
        (
            "refs/heads/dev",
            model::RefKind::FastForward,
            vec!["src/a.rs".to_owned()]
        )
    );
}

#[tokio::test]
async fn an_api_write_past_the_body_cap_is_an_unknown_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = enforcer(dir.path());
    e.cfg.approval_body_cap_bytes = 64;
    let mut doc =
        br#"{"query":"mutation { deleteRef(input: {refId: \"R\"}) { clientMutationId } }","pad":""#.to_vec();
    doc.extend(std::iter::repeat_n(b'x', 200));
    doc.extend_from_slice(b"\"}");
    let doc: &'static [u8] = Box::leak(doc.into_boxed_slice());
    let (result, d) = api_write(&e, "POST", "/graphql", doc).await;
    let text = refused(result);
    assert!(text.contains("larger than the 64 bytes"), "{text}");
    assert_eq!(d[0].rule, "the unknown_write setting");
}

/// A repository made by real git in a temporary directory: root commits only, so that a pack of
/// them holds everything a walk needs (the API these tests point at never answers).
struct Local(tempfile::TempDir);

impl Local {
    fn new() -> Self {
        let l = Local(tempfile::tempdir().unwrap());
        l.git(&["init", "-q", "-b", "main"]);
        l
    }

    fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(self.0.path())
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.0.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A root commit of exactly these files, on an orphan branch of its own.
    fn root_commit(&self, branch: &str, files: &[(&str, &str)]) -> String {
        self.git(&["checkout", "-q", "--orphan", branch]);
        let _ = std::process::Command::new("git")
            .current_dir(self.0.path())
            .args(["rm", "-rqf", "--ignore-unmatch", "."])
            .output();
        for (path, text) in files {
            self.write(path, text);
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", branch]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn pack(&self, revs: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("git")
            .current_dir(self.0.path())
            .args(["pack-objects", "--stdout", "--revs"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(revs.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }
}

fn push_with_pack(commands: &[(&str, &str, &str)], caps: &str, pack: &[u8]) -> Bytes {
    let mut body = Vec::new();
    for (i, (old, new, name)) in commands.iter().enumerate() {
        let line = if i == 0 {
            format!("{old} {new} {name}\0{caps}\n")
        } else {
            format!("{old} {new} {name}\n")
        };
        pkt(&mut body, &line);
    }
    body.extend_from_slice(b"0000");
    body.extend_from_slice(pack);
    Bytes::from(body)
}

fn enforcer_with(dir: &Path, policy: &str, scan: Option<super::SecretScan>) -> Enforcer {
    let policy = ghgate_policy::Policy::parse(policy, Path::new("unit.toml")).unwrap();
    let (approvals, _, _) = testutil::open(dir, &[], &[]);
    let resolver = Resolver::new(&DnsConfig::default(), &[]).unwrap();
    let outbound = Outbound::new(
        UpstreamTls::new(&[]).unwrap(),
        Arc::new(resolver),
        Duration::from_secs(2),
    );
    let cfg = PolicyConfig {
        api_url: "http://127.0.0.1:1".into(),
        inspect_timeout_ms: 3_000,
        ..PolicyConfig::default()
    };
    let e = Enforcer::new(Live::fixed(policy), approvals, outbound, cfg);
    match scan {
        Some(s) => e.with_secret_scan(s),
        None => e,
    }
}

async fn push_bytes(e: &Enforcer, bytes: Bytes) -> super::push::PushDecided {
    let ex = testing::exchange(
        "POST",
        "github.com",
        "/o/r.git/git-receive-pack",
        &[("content-type", "application/x-git-receive-pack-request")],
    );
    e.push(&ex, &ex.conn.caller, &Subject::default(), None, body(bytes))
        .await
}

#[tokio::test]
async fn a_new_annotated_tag_is_peeled_to_its_commit_and_a_workflow_change_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let example = include_str!("../../config/examples/policy.toml");
    let scan = super::SecretScan {
        masker: crate::mask::Masker::new(crate::mask::Rules::builtin(), [7; 32]),
        seen: Arc::default(),
    };
    let e = enforcer_with(dir.path(), example, Some(scan));
    let repo = Local::new();
    let workflow = repo.root_commit(
        "wf",
        &[(".github/workflows/ci.yml", "on: push\n"), ("README", "x\n")],
    );
    repo.git(&["tag", "-a", "-m", "release", "v1", &workflow]);
    let tag = repo.git(&["rev-parse", "v1"]);
    assert_ne!(tag, workflow, "an annotated tag is an object of its own");
    let pack = repo.pack(&format!("{tag}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(&[(ZERO, &tag, "refs/tags/v1")], "report-status", &pack),
    )
    .await;
    let text = answer_text(&decided.gate);
    assert!(text.contains("ng refs/tags/v1 held for approval"), "{text:?}");
    let d = &decided.decisions[0];
    assert_eq!(d.rule, "rule #3 \"workflow-changes\"");
    assert_eq!(
        d.ref_update.as_ref().unwrap().paths,
        [".github/workflows/ci.yml", "README"],
        "the tag's paths are its commit's, known (not unknown and read the riskier way)"
    );

    // A tag of a commit that changes no workflow passes: the paths were read, not guessed.
    let docs = repo.root_commit("docs", &[("docs/a.md", "a\n")]);
    repo.git(&["tag", "-a", "-m", "docs", "d1", &docs]);
    let tag = repo.git(&["rev-parse", "d1"]);
    let pack = repo.pack(&format!("{tag}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(&[(ZERO, &tag, "refs/tags/d1")], "report-status", &pack),
    )
    .await;
    assert!(matches!(decided.gate, PushGate::Forward { rewritten: false, .. }));
    assert_eq!(decided.decisions[0].outcome, model::DecisionOutcome::Passed);
}

#[tokio::test]
async fn an_allow_rule_with_paths_does_not_pass_a_push_whose_paths_are_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "default = \"deny\"\n[[rule]]\nname = \"docs\"\naction = \"allow\"\npaths = \"docs/*\"\n";
    let e = enforcer_with(dir.path(), policy, None);
    // The pack carries neither commit and the API cannot be reached: the paths are unknown.
    let (gate, decisions) = push(&e, &[(A, B, "refs/heads/main")], "report-status").await;
    let text = answer_text(&gate);
    assert!(
        text.contains("ng refs/heads/main denied by ghgate the default"),
        "{text:?}"
    );
    assert!(decisions[0].ref_update.as_ref().unwrap().paths_unknown.is_some());
    // With the files known, the same rule lets a docs change through.
    let repo = Local::new();
    let c = repo.root_commit("docs", &[("docs/a.md", "a\n")]);
    let pack = repo.pack(&format!("{c}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(&[(ZERO, &c, "refs/heads/docs")], "report-status", &pack),
    )
    .await;
    assert_eq!(decided.decisions[0].outcome, model::DecisionOutcome::Passed);
}

#[tokio::test]
async fn a_push_carrying_a_secret_seen_in_a_response_is_refused_naming_rule_file_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let masker = crate::mask::Masker::new(crate::mask::Rules::builtin(), [7; 32]);
    let seen = Arc::new(crate::mask::seen::SeenSecrets::default());
    let suggested = ghgate_test_support::fixtures::github_token("abcdefghijklmnopqrstuvwxyz0123");
    let other = ghgate_test_support::fixtures::github_token("ZYXWVUTSRQPONMLKJIHGFEDCBA9876");
    seen.insert(&masker.fingerprint(suggested.as_bytes()));
    let policy = "[[rule]]\nname = \"suggested-secrets\"\naction = \"deny\"\nsecret_seen = true\n\
                  message = \"this secret came from a suggestion\"\n";
    let e = enforcer_with(
        dir.path(),
        policy,
        Some(super::SecretScan {
            masker: masker.clone(),
            seen,
        }),
    );
    let repo = Local::new();
    let c = repo.root_commit(
        "leak",
        &[
            ("deploy/prod.env", &format!("TOKEN={suggested}\n")),
            ("README", "hello\n"),
        ],
    );
    let pack = repo.pack(&format!("{c}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(
            &[(ZERO, &c, "refs/heads/leak")],
            "report-status side-band-64k",
            &pack,
        ),
    )
    .await;
    let text = answer_text(&decided.gate);
    let fp = masker.fingerprint(suggested.as_bytes());
    let short = &c[..7];
    assert!(
        text.contains(&format!(
            "ng refs/heads/leak denied by ghgate rule #1 \"suggested-secrets\": this secret came from a suggestion (a github-pat secret [{fp}] in deploy/prod.env (commit {short}))"
        )),
        "{text:?}"
    );
    assert!(
        text.contains("a secret the gateway saw in a response"),
        "{text:?}"
    );
    assert!(!text.contains(&suggested), "the secret itself is never told");
    assert_eq!(decided.secrets.len(), 1);
    let s = &decided.secrets[0];
    assert_eq!(
        (
            s.fingerprint.as_str(),
            s.path.as_deref(),
            s.outcome,
            s.seen_in_response
        ),
        (
            fp.as_str(),
            Some("deploy/prod.env"),
            model::DecisionOutcome::Refused,
            true
        )
    );
    assert_eq!(s.commit.map(|c| c.to_string()), Some(c.clone()));

    // A secret never seen in a response does not meet `secret_seen`; it is still recorded.
    let c = repo.root_commit("other", &[("x.env", &format!("TOKEN={other}\n"))]);
    let pack = repo.pack(&format!("{c}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(&[(ZERO, &c, "refs/heads/other")], "report-status", &pack),
    )
    .await;
    assert!(matches!(decided.gate, PushGate::Forward { .. }));
    assert_eq!(decided.secrets.len(), 1);
    assert!(!decided.secrets[0].seen_in_response);
    assert_eq!(decided.secrets[0].outcome, model::DecisionOutcome::Passed);
}

#[tokio::test]
async fn a_pack_larger_than_the_limit_is_decided_by_the_secrets_rule_not_let_through() {
    let dir = tempfile::tempdir().unwrap();
    let masker = crate::mask::Masker::new(crate::mask::Rules::builtin(), [7; 32]);
    let policy = "[[rule]]\nname = \"clean-only\"\naction = \"allow\"\nsecrets = \"*\"\n\
                  [[rule]]\nname = \"any-secret\"\naction = \"deny\"\nsecrets = \"*\"\n";
    let mut e = enforcer_with(
        dir.path(),
        policy,
        Some(super::SecretScan {
            masker,
            seen: Arc::default(),
        }),
    );
    e.cfg.max_pack_bytes = 64;
    let repo = Local::new();
    let c = repo.root_commit("big", &[("big.txt", &"x".repeat(10_000))]);
    let pack = repo.pack(&format!("{c}\n"));
    let decided = push_bytes(
        &e,
        push_with_pack(&[(ZERO, &c, "refs/heads/big")], "report-status", &pack),
    )
    .await;
    let text = answer_text(&decided.gate);
    assert!(
        text.contains("ng refs/heads/big denied by ghgate rule #2 \"any-secret\""),
        "{text:?}"
    );
}

#[tokio::test]
async fn api_writes_carry_their_files_through_the_push_scanner() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let masker = crate::mask::Masker::new(crate::mask::Rules::builtin(), [7; 32]);
    let seen = Arc::new(crate::mask::seen::SeenSecrets::default());
    let suggested = ghgate_test_support::fixtures::github_token("abcdefghijklmnopqrstuvwxyz0123");
    let fp = masker.fingerprint(suggested.as_bytes());
    seen.insert(&fp);
    let policy = "[[rule]]\nname = \"suggested-secrets\"\naction = \"deny\"\nsecret_seen = true\n";
    let e = enforcer_with(
        dir.path(),
        policy,
        Some(super::SecretScan {
            masker: masker.clone(),
            seen,
        }),
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // The token across base64 groups and line breaks of a contents PUT.
    let wrapped: Vec<String> = b64(format!("x\nTOKEN={suggested}\n").as_bytes())
        .as_bytes()
        .chunks(6)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let put = serde_json::json!({"message": "m", "content": wrapped.join("\n"), "branch": "dev"});
    let (result, d, secrets) = api_write_owned(
        &e,
        "PUT",
        "/repos/o/r/contents/deploy/prod.env",
        Bytes::from(put.to_string()),
    )
    .await;
    let text = refused(result);
    assert!(
        text.contains(&format!("a github-pat secret [{fp}] in deploy/prod.env")),
        "{text}"
    );
    assert!(!text.contains(&suggested));
    assert_eq!(d[0].outcome, model::DecisionOutcome::Refused);
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let s = &secrets[0];
    assert_eq!(
        (
            s.fingerprint.as_str(),
            s.path.as_deref(),
            s.ref_name.as_str(),
            s.repository.as_deref()
        ),
        (
            fp.as_str(),
            Some("deploy/prod.env"),
            "refs/heads/dev",
            Some("o/r")
        )
    );
    assert!(s.seen_in_response);
    assert_eq!(s.outcome, model::DecisionOutcome::Refused);
    assert_eq!(s.rule_decided, "rule #1 \"suggested-secrets\"");

    // A clean file, and a token never seen in a response, pass; the latter is still recorded.
    let other = ghgate_test_support::fixtures::github_token("ZYXWVUTSRQPONMLKJIHGFEDCBA9876");
    let commit = serde_json::json!({
        "query": "mutation($i: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $i) { commit { oid } } }",
        "variables": {"i": {
            "branch": {"repositoryNameWithOwner": "o/r", "branchName": "main"},
            "message": {"headline": "h"},
            "expectedHeadOid": A,
            "fileChanges": {"additions": [
                {"path": "a.txt", "contents": b64(b"fine\n")},
                {"path": "b.env", "contents": b64(format!("T={other}\n").as_bytes())}
            ]}
        }}
    });
    let (result, d, secrets) = api_write_owned(&e, "POST", "/graphql", Bytes::from(commit.to_string())).await;
    assert!(result.is_ok(), "{d:?}");
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(secrets[0].path.as_deref(), Some("b.env"));
    assert!(!secrets[0].seen_in_response);
    assert_eq!(secrets[0].outcome, model::DecisionOutcome::Passed);

    // Without a masker, what a write carries is unscanned: the rule refuses it.
    let e = enforcer_with(dir.path(), policy, None);
    let put = serde_json::json!({"message": "m", "content": b64(b"hello\n")});
    let (result, _, secrets) =
        api_write_owned(&e, "PUT", "/repos/o/r/contents/a", Bytes::from(put.to_string())).await;
    assert!(refused(result).contains("no masker"));
    assert!(secrets.is_empty());
}
