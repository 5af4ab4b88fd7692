//! Repository writes through GitHub's API, end to end: real `curl` through the gateway to the
//! loopback GitHub fake, under the shipped example policy (main may not be deleted; force
//! pushes to main and workflow changes need approval). REST ref, contents and merge writes and
//! GraphQL mutations are decided as the ref updates they make; a refused or held write never
//! reaches the fake, an allowed one does with its body intact, and a write the gateway cannot
//! read is decided by `unknown_write` (implied: the example's first approval). The spellings a
//! hostile client would try (method overrides, path spellings, GraphQL aliases, operation names,
//! batches, the URL's query, gzip bodies, non-JSON bodies) are refused or held the same way.
use std::{path::PathBuf, process::Output};

use ghgate_e2e::{https::TlsGateway, privileged};
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../../gateway/config/examples/policy.toml");
const SHA: &str = "aa218f56b14c9653891f9e74264a383fa43fefbd";

struct Setup {
    s: TlsGateway,
    tmp: tempfile::TempDir,
}

impl Setup {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let s = TlsGateway::with_policy(tmp.path(), EXAMPLE, None);
        Setup { s, tmp }
    }

    /// `curl` through the gateway to the API host: the body and status (last line).
    fn curl(&self, path: &str, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-w", "\n%{http_code}"]);
        let out: Output = self.s.curl("api.github.com", path, &all);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A request the policy must stop: its answer, asserting it never reached the fake.
    fn stopped(&self, what: &str, path: &str, args: &[&str]) -> String {
        let before = self.s.upstream.served();
        let answer = self.curl(path, args);
        assert_eq!(
            self.s.upstream.served(),
            before,
            "{what} reached the upstream: {answer}"
        );
        assert!(
            answer.ends_with("403") || answer.ends_with("400") || answer.ends_with("413"),
            "{what}: {answer}"
        );
        answer
    }

    /// A request the policy lets through: the fake's echo.
    fn passed(&self, what: &str, path: &str, args: &[&str]) -> String {
        let before = self.s.upstream.served();
        let answer = self.curl(path, args);
        assert_eq!(
            self.s.upstream.served(),
            before + 1,
            "{what} did not go up: {answer}"
        );
        assert!(answer.ends_with("200"), "{what}: {answer}");
        answer
    }

    fn body_file(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    /// Every policy decision recorded so far.
    fn decisions(&self) -> Vec<Value> {
        self.s.gw.decisions()
    }
}

fn denied_by(answer: &str, rule: &str) {
    assert!(
        answer.contains(&format!("denied by rule #1 \\\"{rule}\\\"")) && answer.ends_with("403"),
        "not denied by {rule}: {answer}"
    );
}

fn held_by(answer: &str, rule: &str) {
    assert!(
        answer.contains("held for approval apr-") && answer.contains(rule) && answer.ends_with("403"),
        "not held by {rule}: {answer}"
    );
}

fn graphql(query: &str, variables: Value) -> String {
    json!({ "query": query, "variables": variables }).to_string()
}

#[test]
fn api_writes_are_decided_as_the_pushes_they_are_and_stopped_ones_never_go_up() {
    if !privileged() {
        return;
    }
    let t = Setup::start();
    let json_args = |method: &'static str, body: &str| -> Vec<String> {
        vec![
            "-X".into(),
            method.into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            body.to_owned(),
        ]
    };
    let run = |what: &str, path: &str, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        t.stopped(what, path, &args)
    };

    // ---- REST ----
    let a = t.stopped(
        "deleting main",
        "/repos/o/r/git/refs/heads/main",
        &["-X", "DELETE"],
    );
    denied_by(&a, "no-delete-protected");
    assert!(a.contains("main and release branches cannot be deleted"), "{a}");
    let a = run(
        "a force update of main",
        "/repos/o/r/git/refs/heads/main",
        &json_args("PATCH", &json!({"sha": SHA, "force": true}).to_string()),
    );
    held_by(&a, "force-push-protected");
    let a = run(
        "a workflow written through the contents API",
        "/repos/o/r/contents/.github/workflows/x.yml",
        &json_args(
            "PUT",
            &json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string(),
        ),
    );
    held_by(&a, "workflow-changes");
    let a = run(
        "merging a pull request (its changes may touch workflows)",
        "/repos/o/r/pulls/7/merge",
        &json_args("PUT", "{}"),
    );
    held_by(&a, "workflow-changes");
    let a = t.stopped("deleting the repository", "/repos/o/r", &["-X", "DELETE"]);
    denied_by(&a, "no-delete-protected");

    // ---- GraphQL ----
    let create_commit = graphql(
        "mutation($input: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $input) { commit { url } } }",
        json!({"input": {
            "branch": {"repositoryNameWithOwner": "o/r", "branchName": "main"},
            "message": {"headline": "h"},
            "expectedHeadOid": SHA,
            "fileChanges": {"additions": [{"path": ".github/workflows/ci.yml", "contents": "eA=="}]}
        }}),
    );
    let a = run(
        "createCommitOnBranch of a workflow",
        "/graphql",
        &json_args("POST", &create_commit),
    );
    held_by(&a, "workflow-changes");
    let a = run(
        "updateRef with force",
        "/graphql",
        &json_args(
            "POST",
            &graphql(
                "mutation U($id: ID!, $oid: GitObjectID!) { up: updateRef(input: {refId: $id, oid: $oid, force: true}) { clientMutationId } }",
                json!({"id": "REF_kwDOmain", "oid": SHA}),
            ),
        ),
    );
    held_by(&a, "force-push-protected");
    let delete_ref = "mutation { deleteRef(input: {refId: \"REF_kwDOmain\"}) { clientMutationId } }";
    let a = run(
        "deleteRef",
        "/graphql",
        &json_args("POST", &graphql(delete_ref, Value::Null)),
    );
    denied_by(&a, "no-delete-protected");
    let a = run(
        "mergePullRequest",
        "/graphql",
        &json_args(
            "POST",
            &graphql(
                "mutation { mergePullRequest(input: {pullRequestId: \"PR_kwDO1\"}) { clientMutationId } }",
                Value::Null,
            ),
        ),
    );
    held_by(&a, "workflow-changes");

    // ---- what an attacker would try ----
    // A method override asks for DELETE with a POST.
    let a = t.stopped(
        "a delete under X-HTTP-Method-Override",
        "/repos/o/r/git/refs/heads/main",
        &["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE"],
    );
    denied_by(&a, "no-delete-protected");
    // Another case of owner and repository, a trailing slash, an escaped letter.
    for path in [
        "/repos/O/R/git/refs/heads/main/",
        "/REPOS/o/R.git/GIT/REFS/heads/ma%69n",
    ] {
        let a = t.stopped(path, path, &["-X", "DELETE"]);
        denied_by(&a, "no-delete-protected");
    }
    // `refs/heads/` spelled in the path too.
    let a = t.stopped(
        "git/refs/refs/heads/main",
        "/repos/o/r/git/refs/refs/heads/main",
        &["-X", "DELETE"],
    );
    denied_by(&a, "no-delete-protected");
    // Spellings GitHub could read as another path are refused before any rule.
    for path in [
        "/repos/o/r/git/refs/heads%2Fmain",
        "/repos/o/r//git/refs/heads/main",
        "/repos/o/r/git/refs/heads/x/%2e%2e/main",
    ] {
        let a = t.stopped(path, path, &["-X", "DELETE", "--path-as-is"]);
        assert!(a.ends_with("400"), "{path}: {a}");
    }
    // operationName selecting a harmless query, the mutation after it.
    let a = run(
        "a mutation behind operationName",
        "/graphql",
        &json_args(
            "POST",
            &json!({
                "query": format!("query A {{ viewer {{ login }} }}\n# a comment\nmutation B {{ ...F }} fragment F on Mutation {{ keep: deleteRef(input: {{refId: $r}}) {{ clientMutationId }} }}"),
                "operationName": "A",
                "variables": {"r": "REF_1"}
            })
            .to_string(),
        ),
    );
    denied_by(&a, "no-delete-protected");
    // A variable's default value.
    let a = run(
        "a default value",
        "/graphql",
        &json_args(
            "POST",
            &graphql(
                "mutation($f: Boolean = true) { updateRef(input: {refId: \"R\", oid: \"x\", force: $f}) { clientMutationId } }",
                Value::Null,
            ),
        ),
    );
    held_by(&a, "force-push-protected");
    // A batch.
    let batch = json!([{"query": "{ viewer { login } }"}, {"query": delete_ref}]).to_string();
    let a = run("a batched mutation", "/graphql", &json_args("POST", &batch));
    denied_by(&a, "no-delete-protected");
    // The document in the URL, with GET.
    let a = t.stopped(
        "a mutation in GET /graphql?query=",
        "/graphql",
        &["-G", "--data-urlencode", &format!("query={delete_ref}")],
    );
    denied_by(&a, "no-delete-protected");
    // A gzip body.
    let gz = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(graphql(delete_ref, Value::Null).as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let file = t.body_file("gz", &gz);
    let a = t.stopped(
        "a gzip GraphQL body",
        "/graphql",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    );
    denied_by(&a, "no-delete-protected");
    // What the gateway cannot read falls to unknown_write (the example's first approval), never
    // to allow.
    for (what, path, args) in [
        (
            "a body that is not JSON",
            "/graphql",
            json_args("POST", "mutation {{ deleteRef"),
        ),
        (
            "a persisted query",
            "/graphql",
            json_args(
                "POST",
                r#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"abc"}}}"#,
            ),
        ),
        (
            "a key given twice",
            "/repos/o/r/git/refs/heads/main",
            json_args("PATCH", r#"{"sha":"x","force":false,"force":true}"#),
        ),
        (
            "branch protection",
            "/repos/o/r/branches/main/protection",
            json_args("PUT", "{}"),
        ),
        (
            "an unknown mutation",
            "/graphql",
            json_args(
                "POST",
                &graphql(
                    "mutation { updateBranchProtectionRule(input: {branchProtectionRuleId: \"B\"}) { clientMutationId } }",
                    Value::Null,
                ),
            ),
        ),
    ] {
        let a = run(what, path, &args);
        assert!(
            a.contains("held for approval apr-") && a.contains("the unknown_write setting"),
            "{what}: {a}"
        );
    }

    // ---- allowed writes pass, bodies intact ----
    let a = t.passed(
        "deleting a topic branch",
        "/repos/o/r/git/refs/heads/topic",
        &["-X", "DELETE"],
    );
    assert!(
        a.contains("method=DELETE path=/repos/o/r/git/refs/heads/topic"),
        "{a}"
    );
    let readme = json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string();
    let args = json_args("PUT", &readme);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = t.passed("writing README.md", "/repos/o/r/contents/README.md", &args);
    assert!(
        a.contains("method=PUT path=/repos/o/r/contents/README.md")
            && a.contains(&format!("body_bytes={}", readme.len())),
        "{a}"
    );
    let query = graphql("query { viewer { login } }", Value::Null);
    let args = json_args("POST", &query);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = t.passed("a GraphQL query", "/graphql", &args);
    assert!(a.contains(&format!("body_bytes={}", query.len())), "{a}");
    let comment = graphql(
        "mutation { addComment(input: {subjectId: \"I_1\", body: \"deleteRef\"}) { clientMutationId } }",
        Value::Null,
    );
    let args = json_args("POST", &comment);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.passed("a comment through GraphQL", "/graphql", &args);
    t.passed(
        "an issue",
        "/repos/o/r/issues",
        &["-X", "POST", "--data-binary", "{\"title\":\"t\"}"],
    );

    // The decisions are recorded as the ref updates they were.
    let decisions = t.decisions();
    let refs: Vec<(String, String, String, String)> = decisions
        .iter()
        .filter_map(|d| {
            let r = d.get("ref_update")?;
            let f = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            Some((f(&r["name"]), f(&r["kind"]), f(&d["action"]), f(&d["outcome"])))
        })
        .collect();
    for want in [
        ("refs/heads/main", "delete", "deny", "refused"),
        ("refs/heads/main", "non-fast-forward", "require_approval", "held"),
        ("refs/heads/dev", "fast-forward", "require_approval", "held"),
        ("refs/heads/topic", "delete", "allow", "passed"),
    ] {
        let want = (want.0.into(), want.1.into(), want.2.into(), want.3.into());
        assert!(refs.contains(&want), "{want:?} not in {refs:?}");
    }
    let workflow = decisions
        .iter()
        .find(|d| d["ref_update"]["name"] == "refs/heads/dev" && d["action"] == "require_approval")
        .unwrap();
    assert_eq!(
        workflow["ref_update"]["paths"],
        json!([".github/workflows/x.yml"])
    );
}
