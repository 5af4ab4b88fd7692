//! Push protection for writes through the API, and every ref update labelled, end to end with
//! real `curl` and `git` through the gateway to the loopback GitHub fake.
//!
//! Under a policy whose one rule refuses what carries a secret, a file written through the
//! contents API or GraphQL's `createCommitOnBranch` is scanned by the masker that scans pushes,
//! however a hostile client encodes it (base64 wrapped with line breaks, the URL-safe alphabet,
//! the secret in the second of several additions, GraphQL variables or an inline literal, an
//! alias, a batch); what the gateway cannot read (a body past the cap it reads, a body whose
//! `Content-Encoding` lies) counts as carrying one. Nothing refused reaches the fake; the
//! refusal names the rule, the file and the fingerprint, never the secret; `secrets trace`
//! finds the write. Without any rule, an atomic push creating, fast-forwarding, force-pushing
//! and deleting refs is labelled each way in `sessions show`.
use std::time::Duration;

use base64::Engine as _;
use ghgate_e2e::{
    eventually,
    fixtures::{commit_file, git, github_token, served_repo},
    https::TlsGateway,
    privileged,
};
use serde_json::{Value, json};

const NO_SECRETS: &str = "[[rule]]\nname = \"no-secrets\"\naction = \"deny\"\nsecrets = \"*\"\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Api {
    s: TlsGateway,
    tmp: tempfile::TempDir,
}

impl Api {
    fn start(policy_text: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let s = TlsGateway::with_policy(tmp.path(), policy_text, None);
        Api { s, tmp }
    }

    /// `curl` a body (from a file) to the API host: the answer and status (last line), and
    /// whether it reached the fake.
    fn send(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (String, bool) {
        let file = self.tmp.path().join("body");
        std::fs::write(&file, body).unwrap();
        let at = format!("@{}", file.display());
        let mut args = vec!["-X", method, "-H", "Content-Type: application/json"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--data-binary", &at, "-w", "\n%{http_code}"]);
        let before = self.s.upstream.served();
        let out = self.s.curl("api.github.com", path, &args);
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        (answer, self.s.upstream.served() > before)
    }

    /// A write that must be refused by `no-secrets`: its answer.
    fn refused(
        &self,
        what: &str,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
        token: &str,
    ) -> String {
        let (answer, went_up) = self.send(method, path, headers, body);
        assert!(!went_up, "{what} reached the upstream: {answer}");
        assert!(answer.ends_with("403"), "{what}: {answer}");
        assert!(
            answer.contains("no-secrets"),
            "{what}: not refused by the rule: {answer}"
        );
        assert!(!answer.contains(token), "{what}: the answer holds the token");
        answer
    }
}

fn graphql(query: &str, variables: Value) -> Vec<u8> {
    json!({ "query": query, "variables": variables })
        .to_string()
        .into_bytes()
}

const CREATE_COMMIT: &str =
    "mutation($i: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $i) { commit { oid } } }";

fn commit_input(additions: Value) -> Value {
    json!({
        "branch": {"repositoryNameWithOwner": "o/r", "branchName": "main"},
        "message": {"headline": "h"},
        "expectedHeadOid": "aa218f56b14c9653891f9e74264a383fa43fefbd",
        "fileChanges": {"additions": additions}
    })
}

#[test]
fn api_writes_carrying_a_secret_are_refused_however_they_encode_it() {
    if !privileged() {
        return;
    }
    let t = Api::start(NO_SECRETS);
    let token = github_token("Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0");
    let file = format!("# deploy settings\nexport GITHUB_TOKEN={token}\nexport REGION=eu\n");
    let encoded = b64(file.as_bytes());

    // A clean file passes, its body intact.
    let clean = json!({"message": "m", "content": b64(b"hello\n"), "branch": "dev"}).to_string();
    let (answer, went_up) = t.send("PUT", "/repos/o/r/contents/README.md", &[], clean.as_bytes());
    assert!(went_up && answer.ends_with("200"), "{answer}");
    assert!(
        answer.contains(&format!("body_bytes={}", clean.len())),
        "{answer}"
    );

    // The contents API: plain, wrapped at 76 columns as `base64` wraps (the secret across
    // lines and base64 groups), wrapped with CRLF and spaces, without padding.
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let odd: Vec<String> = encoded
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    for (what, content) in [
        ("plain base64", encoded.clone()),
        ("base64 wrapped with newlines", wrapped.join("\n")),
        (
            "base64 broken every 5 characters with CRLF and spaces",
            odd.join("\r\n  "),
        ),
        ("base64 without padding", encoded.trim_end_matches('=').to_owned()),
    ] {
        let body = json!({"message": "m", "content": content, "branch": "dev"}).to_string();
        let a = t.refused(
            what,
            "PUT",
            "/repos/o/r/contents/deploy/prod.env",
            &[],
            body.as_bytes(),
            &token,
        );
        assert!(
            a.contains("github-pat") && a.contains("deploy/prod.env"),
            "{what}: {a}"
        );
        assert!(
            !a.contains(&encoded[8..40]),
            "{what}: the answer holds the encoded token"
        );
    }
    // The URL-safe alphabet (bytes that encode to `-` and `_` before the token).
    let mut bytes = vec![0xfb, 0xff, 0xbf, b'\n'];
    bytes.extend_from_slice(file.as_bytes());
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
    assert!(url_safe.contains(['-', '_']), "{url_safe}");
    let body = json!({"message": "m", "content": url_safe, "branch": "dev"}).to_string();
    t.refused(
        "URL-safe base64",
        "PUT",
        "/repos/o/r/contents/deploy/prod.env",
        &[],
        body.as_bytes(),
        &token,
    );
    // Content no decoder agrees on counts as carrying a secret.
    let body =
        json!({"message": "m", "content": format!("{}!{}", &encoded[..8], &encoded[8..]), "branch": "dev"})
            .to_string();
    let a = t.refused(
        "base64 with a stray character",
        "PUT",
        "/repos/o/r/contents/x",
        &[],
        body.as_bytes(),
        &token,
    );
    assert!(a.contains("not base64"), "{a}");

    // GraphQL createCommitOnBranch: the secret in the second of three additions, through
    // variables, as an inline literal, under an alias, and second in a batch.
    let additions = json!([
        {"path": "a.txt", "contents": b64(b"fine\n")},
        {"path": "deploy/prod.env", "contents": encoded},
        {"path": "c.txt", "contents": b64(b"also fine\n")}
    ]);
    let input = commit_input(additions);
    let literal = serde_json::to_string(&input)
        .unwrap()
        // A GraphQL input object literal: keys unquoted.
        .replace("\"branch\":", "branch:")
        .replace("\"repositoryNameWithOwner\":", "repositoryNameWithOwner:")
        .replace("\"branchName\":", "branchName:")
        .replace("\"message\":", "message:")
        .replace("\"headline\":", "headline:")
        .replace("\"expectedHeadOid\":", "expectedHeadOid:")
        .replace("\"fileChanges\":", "fileChanges:")
        .replace("\"additions\":", "additions:")
        .replace("\"path\":", "path:")
        .replace("\"contents\":", "contents:");
    let inline = json!({"query": format!("mutation {{ createCommitOnBranch(input: {literal}) {{ commit {{ oid }} }} }}")})
        .to_string()
        .into_bytes();
    let aliased = json!({"query": format!(
        "mutation Sneaky {{ harmless: createCommitOnBranch(input: {literal}) {{ commit {{ oid }} }} }}"
    ), "operationName": "Sneaky"})
    .to_string()
    .into_bytes();
    let batch = json!([
        {"query": "query { viewer { login } }"},
        {"query": CREATE_COMMIT, "variables": {"i": input}}
    ])
    .to_string()
    .into_bytes();
    for (what, body) in [
        (
            "createCommitOnBranch with variables",
            graphql(CREATE_COMMIT, json!({"i": input})),
        ),
        ("createCommitOnBranch as an inline literal", inline),
        ("createCommitOnBranch under an alias", aliased),
        ("createCommitOnBranch second in a batch", batch),
    ] {
        let a = t.refused(what, "POST", "/graphql", &[], &body, &token);
        assert!(a.contains("deploy/prod.env"), "{what}: {a}");
    }
    // A clean commit passes.
    let clean = graphql(
        CREATE_COMMIT,
        json!({"i": commit_input(json!([{"path": "a.txt", "contents": b64(b"fine\n")}]))}),
    );
    let (answer, went_up) = t.send("POST", "/graphql", &[], &clean);
    assert!(went_up && answer.ends_with("200"), "{answer}");

    // What the gateway cannot read: a body past the 1 MiB it reads, and a body that says it
    // is gzip and is not.
    let big = json!({"message": "m", "content": b64(&vec![b'a'; 1 << 20]), "branch": "dev"}).to_string();
    let a = t.refused(
        "a body too big to scan",
        "PUT",
        "/repos/o/r/contents/big.txt",
        &[],
        big.as_bytes(),
        &token,
    );
    assert!(a.contains("larger than"), "{a}");
    let body = json!({"message": "m", "content": encoded, "branch": "dev"}).to_string();
    let a = t.refused(
        "a body whose Content-Encoding lies",
        "PUT",
        "/repos/o/r/contents/deploy/prod.env",
        &["Content-Encoding: gzip"],
        body.as_bytes(),
        &token,
    );
    assert!(a.contains("gzip"), "{a}");

    // The record: the writes, each refused, traced by the token's fingerprint (given by value
    // on standard input, never stored), never the token itself.
    let trace = eventually("the writes' records", Duration::from_secs(10), || {
        let (text, _) = t.s.gw.trace_value(&token);
        (text.matches("REFUSED").count() >= 9).then_some(text)
    });
    eprintln!("{trace}");
    assert!(trace.contains("refs/heads/dev"), "{trace}");
    assert!(trace.contains("refs/heads/main"), "{trace}");
    assert!(trace.contains("deploy/prod.env"), "{trace}");
    assert!(trace.contains("no-secrets"), "{trace}");
    assert!(!trace.contains(&token), "{trace}");
    let shown: String =
        t.s.gw
            .ghgate_ok(&["sessions", "list", "--json"])
            .lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                t.s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()])
            })
            .collect();
    assert!(shown.contains("deploy/prod.env"), "{shown}");
    assert!(
        shown.contains("secret github-pat [") && shown.contains("file deploy/prod.env: refused by rule #1"),
        "the exchange shows what its write carried:\n{shown}"
    );
    assert!(!shown.contains(&token), "the record shows the token");
    assert!(
        !shown.contains(&encoded[8..40]),
        "the record shows the encoded token"
    );
}

#[test]
fn every_ref_update_of_a_push_is_labelled_without_any_rule() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, bare, _) = served_repo(tmp.path());
    // No rule at all: nothing asks whether an update is a fast-forward.
    let s = TlsGateway::with_policy(tmp.path(), "default = \"allow\"\n", Some(root));
    let port = s.upstream.addr.port();
    s.git(
        tmp.path(),
        &[
            "clone",
            "-q",
            &format!("https://github.com:{port}/o/r.git"),
            "work",
        ],
    );
    let work = tmp.path().join("work");
    let base = git(&work, &["rev-parse", "main"]);
    // Upstream (not through the gateway): `side` with a commit the push will drop, and `gone`.
    git(&work, &["checkout", "-q", "-b", "side"]);
    commit_file(&work, "side.txt", "dropped\n");
    git(
        &work,
        &[
            "push",
            "-q",
            bare.to_str().unwrap(),
            "side",
            &format!("{base}:refs/heads/gone"),
        ],
    );
    // Locally: main moves on, side is rewritten from main's base, and a new branch.
    git(&work, &["checkout", "-q", "main"]);
    commit_file(&work, "ff.txt", "fast-forward\n");
    git(&work, &["checkout", "-q", "-B", "side", &base]);
    commit_file(&work, "side.txt", "rewritten\n");
    git(&work, &["checkout", "-q", "-b", "fresh", "main"]);
    commit_file(&work, "fresh.txt", "new\n");

    let out = s.git_output(
        &work,
        &["push", "--atomic", "origin", "main", "+side", "fresh", ":gone"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert_eq!(
        git(&bare, &["rev-parse", "side"]),
        git(&work, &["rev-parse", "side"])
    );

    let shown = eventually("the push's decisions", Duration::from_secs(10), || {
        let text: String =
            s.gw.ghgate_ok(&["sessions", "list", "--json"])
                .lines()
                .map(|l| {
                    let r: Value = serde_json::from_str(l).unwrap();
                    s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()])
                })
                .collect();
        text.contains("refs/heads/gone").then_some(text)
    });
    eprintln!("{shown}");
    for (r, kind) in [
        ("refs/heads/main", "fast-forward"),
        ("refs/heads/side", "non-fast-forward"),
        ("refs/heads/fresh", "create"),
        ("refs/heads/gone", "delete"),
    ] {
        assert!(
            shown.lines().any(|l| l.contains(&format!("{r} {kind} "))),
            "{r} is not labelled {kind}:\n{shown}"
        );
    }
    assert!(!shown.contains(" unknown "), "{shown}");
}

/// Git objects written through the git database API (`POST git/blobs`, `git/trees` with inline
/// content, `git/commits`, `git/tags`) move no ref, but once created they are on GitHub, and the
/// ref update that later points at them carries nothing to scan: they are scanned when written.
/// Rules on secrets decide them, however the content is spelled; rules on refs alone do not hold
/// them.
#[test]
fn git_objects_written_through_the_api_are_scanned_when_written() {
    if !privileged() {
        return;
    }
    let t = Api::start(NO_SECRETS);
    let token = github_token("Gq2Wr4Et6Yu8Io0Pa1Sd3Fg5Hj7Kl9");
    let sha = "aa218f56b14c9653891f9e74264a383fa43fefbd";

    let clean = json!({"content": "hello\n", "encoding": "utf-8"}).to_string();
    let (answer, went_up) = t.send("POST", "/repos/o/r/git/blobs", &[], clean.as_bytes());
    assert!(went_up && answer.ends_with("200"), "a clean blob: {answer}");

    let wrapped: String = b64(format!("export TOKEN={token}\n").as_bytes())
        .as_bytes()
        .chunks(7)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let tree = json!({"base_tree": sha, "tree": [
        {"path": "README.md", "mode": "100644", "type": "blob", "sha": sha},
        {"path": "deploy/prod.env", "mode": "100644", "type": "blob", "content": format!("TOKEN={token}\n")},
    ]});
    let commit = json!({"message": format!("deploy with {token}"), "tree": sha, "parents": [sha]});
    let tag = json!({"tag": "v1", "message": format!("token {token}"), "object": sha, "type": "commit",
                     "tagger": {"name": "t", "email": "t@t"}});
    for (what, path, body, place) in [
        (
            "a UTF-8 blob",
            "/repos/o/r/git/blobs",
            json!({"content": token}),
            "(the blob)",
        ),
        (
            "a base64 blob wrapped every 7 characters",
            "/repos/o/r/git/Blobs",
            json!({"content": wrapped, "encoding": "base64"}),
            "(the blob)",
        ),
        (
            "a tree's second entry",
            "/repos/o/r/git/trees",
            tree,
            "deploy/prod.env",
        ),
        (
            "a commit's message",
            "/repos/o/r/git/commits",
            commit,
            "(the commit object)",
        ),
        ("a tag's message", "/repos/o/r/git/tags", tag, "(the tag object)"),
    ] {
        let a = t.refused(what, "POST", path, &[], body.to_string().as_bytes(), &token);
        assert!(a.contains(place), "{what}: {a}");
    }
    // A blob past the 1 MiB the gateway reads is not scanned: refused by the rule on secrets.
    let big = json!({"content": "a".repeat(1 << 20)}).to_string();
    let a = t.refused(
        "a blob too big to scan",
        "POST",
        "/repos/o/r/git/blobs",
        &[],
        big.as_bytes(),
        &token,
    );
    assert!(a.contains("larger than"), "{a}");

    let trace = eventually("the writes' records", Duration::from_secs(10), || {
        let (text, _) = t.s.gw.trace_value(&token);
        (text.matches("REFUSED").count() >= 5).then_some(text)
    });
    eprintln!("{trace}");
    for place in [
        "(the blob)",
        "deploy/prod.env",
        "(the commit object)",
        "(the tag object)",
    ] {
        assert!(trace.contains(place), "{place}: {trace}");
    }
    assert!(!trace.contains(&token), "{trace}");

    // Under a policy whose rules are on refs alone, git objects are ordinary writes: a blob
    // carrying a secret and one too big to scan both go up.
    let t = Api::start(
        "[[rule]]\nname = \"main\"\naction = \"deny\"\nref = \"refs/heads/main\"\nref_op = [\"delete\", \"non-fast-forward\", \"create\"]\n\
         [[rule]]\nname = \"workflows\"\naction = \"deny\"\npaths = \".github/*\"\n",
    );
    let body = json!({"content": token}).to_string();
    let (answer, went_up) = t.send("POST", "/repos/o/r/git/blobs", &[], body.as_bytes());
    assert!(went_up && answer.ends_with("200"), "{answer}");
    let tree = json!({"tree": [{"path": ".github/workflows/x.yml", "mode": "100644", "type": "blob", "content": "on: push\n"}]});
    let (answer, went_up) = t.send("POST", "/repos/o/r/git/trees", &[], tree.to_string().as_bytes());
    assert!(went_up && answer.ends_with("200"), "{answer}");
    let (answer, went_up) = t.send("POST", "/repos/o/r/git/blobs", &[], big.as_bytes());
    assert!(went_up && answer.ends_with("200"), "{answer}");
    assert!(
        answer.contains(&format!("body_bytes={}", big.len())),
        "the big blob went up whole: {}",
        &answer[answer.len().saturating_sub(200)..]
    );
}
