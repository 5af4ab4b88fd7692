//! The REST and GraphQL mapping against the shapes GitHub's API documents, the spellings a
//! hostile client would try, and the decisions the example policy makes of them.
use std::path::Path;

use http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::{Action, Policy, Subject, classify::classify};

const SHA: &str = "aa218f56b14c9653891f9e74264a383fa43fefbd";

fn github() -> GitHub {
    GitHub::default()
}

/// A request with headers, classified as the gateway would on a connection to its host.
fn classified_with(method: &str, url: &str, headers: &[(&str, &str)], gh: &GitHub) -> Classified {
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_owned();
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .version(http::Version::HTTP_2);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (head, ()) = b.body(()).unwrap().into_parts();
    classify(&head, &host, gh).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

fn write_in(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8], gh: &GitHub) -> Write {
    let req = classified_with(method, url, headers, gh);
    match from_head(&req, gh) {
        FromHead::Decided(w) => w,
        FromHead::NeedsBody => from_body(&req, gh, body, 1 << 20),
    }
}

fn write(method: &str, url: &str, body: &str) -> Write {
    write_in(method, url, &[], body.as_bytes(), &github())
}

fn api(method: &str, path: &str, body: &str) -> Write {
    write(method, &format!("https://api.github.com{path}"), body)
}

fn gql(body: Value) -> Write {
    api("POST", "/graphql", &body.to_string())
}

/// (ref name or "?what", kind, paths) of each ref update.
fn refs(w: &Write) -> Vec<(String, RefKind, Option<Vec<String>>)> {
    assert!(!w.refs().is_empty(), "not ref updates: {w:?}");
    w.refs()
        .iter()
        .map(|r| {
            let name = match &r.name {
                RefName::Named(n) => n.clone(),
                RefName::Unknown(what) => format!("?{what}"),
            };
            let paths = match &r.paths {
                Paths::Known(p) => Some(p.clone()),
                _ => None,
            };
            (name, r.kind, paths)
        })
        .collect()
}

fn one(w: &Write) -> (String, RefKind, Option<Vec<String>>) {
    let mut r = refs(w);
    assert_eq!(r.len(), 1, "{w:?}");
    r.remove(0)
}

fn unknown(w: &Write) -> &str {
    match w {
        Write::Unknown(why) => why,
        other => panic!("not an unknown write: {other:?}"),
    }
}

use RefKind::{Create, Delete, FastForward as Ff, NonFastForward as NonFf};

fn main_ref() -> String {
    "refs/heads/main".into()
}

// ---- REST ------------------------------------------------------------------------------------

#[test]
fn git_refs_create_update_and_delete() {
    assert_eq!(
        one(&api(
            "POST",
            "/repos/o/r/git/refs",
            &json!({"ref": "refs/heads/feature", "sha": SHA}).to_string()
        )),
        ("refs/heads/feature".into(), Create, None)
    );
    let patch = |body: Value| one(&api("PATCH", "/repos/o/r/git/refs/heads/main", &body.to_string()));
    assert_eq!(patch(json!({"sha": SHA})).1, Ff);
    assert_eq!(patch(json!({"sha": SHA, "force": false})).1, Ff);
    assert_eq!(
        patch(json!({"sha": SHA, "force": true})),
        (main_ref(), NonFf, None)
    );
    // Anything GitHub might take for true is force.
    assert_eq!(patch(json!({"sha": SHA, "force": "true"})).1, NonFf);
    assert_eq!(patch(json!({"sha": SHA, "force": 1})).1, NonFf);
    assert_eq!(
        one(&api("DELETE", "/repos/o/r/git/refs/heads/main", "")),
        (main_ref(), Delete, Some(vec![]))
    );
    assert_eq!(
        one(&api("DELETE", "/repos/o/r/git/refs/tags/v1.0", "")).0,
        "refs/tags/v1.0"
    );
    // A ref with slashes.
    assert_eq!(
        one(&api("DELETE", "/repos/o/r/git/refs/heads/release/1.x", "")).0,
        "refs/heads/release/1.x"
    );
    // The new id is carried.
    let w = api(
        "POST",
        "/repos/o/r/git/refs",
        &json!({"ref": "refs/heads/x", "sha": SHA}).to_string(),
    );
    assert_eq!(w.refs()[0].new.map(|o| o.to_string()).as_deref(), Some(SHA));
    // A ref not named in full is a ref the request does not name: every ref rule that refuses
    // counts it.
    let w = api(
        "POST",
        "/repos/o/r/git/refs",
        &json!({"ref": "heads/main", "sha": SHA}).to_string(),
    );
    assert!(one(&w).0.starts_with("?the ref \"heads/main\""), "{w:?}");
    let w = gql(
        json!({"query": "mutation { createRef(input: {repositoryId: \"R\", name: \"main\", oid: \"x\"}) { clientMutationId } }"}),
    );
    assert!(one(&w).0.starts_with("?the ref \"main\""), "{w:?}");
    // The object database moves no ref: its objects are read for what they carry (below).
    for kind in ["blobs", "trees", "commits", "tags"] {
        let w = api("POST", &format!("/repos/o/r/git/{kind}"), "{}");
        assert!(w.refs().iter().all(|r| r.objects), "{kind}: {w:?}");
    }
}

#[test]
fn contents_writes_change_their_path_on_their_branch() {
    let put = json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string();
    assert_eq!(
        one(&api("PUT", "/repos/o/r/contents/.github/workflows/x.yml", &put)),
        (
            "refs/heads/dev".into(),
            Ff,
            Some(vec![".github/workflows/x.yml".into()])
        )
    );
    // Without a branch: the default branch, which the request does not name.
    let (name, kind, paths) = one(&api(
        "PUT",
        "/repos/o/r/contents/README.md",
        &json!({"message": "m", "content": "eA=="}).to_string(),
    ));
    assert_eq!(name, "?the repository's default branch");
    assert_eq!((kind, paths), (Ff, Some(vec!["README.md".into()])));
    let del = json!({"message": "m", "sha": SHA, "branch": "main"}).to_string();
    assert_eq!(
        one(&api("DELETE", "/repos/o/r/contents/src/lib.rs", &del)),
        (main_ref(), Ff, Some(vec!["src/lib.rs".into()]))
    );
    // Escapes in the path are the file's name.
    assert_eq!(
        one(&api(
            "PUT",
            "/repos/o/r/contents/.github/workflows/a%20b.yml",
            &put
        ))
        .2,
        Some(vec![".github/workflows/a b.yml".into()])
    );
    assert_eq!(
        unknown(&api("PUT", "/repos/o/r/contents/x", "{\"branch\": 5}")),
        "PUT /repos/o/r/contents/x: its \"branch\" is not a string"
    );
    assert_eq!(api("GET", "/repos/o/r/contents/x", ""), Write::None);
}

#[test]
fn merges_renames_releases_and_the_repository_itself() {
    assert_eq!(
        one(&api(
            "PUT",
            "/repos/o/r/pulls/7/merge",
            "{\"merge_method\":\"squash\"}"
        )),
        ("?the base branch of pull request #7".into(), Ff, None)
    );
    assert_eq!(
        one(&api("PUT", "/repos/o/r/pulls/7/update-branch", "")).0,
        "?the head branch of pull request #7"
    );
    assert_eq!(
        one(&api(
            "POST",
            "/repos/o/r/merges",
            &json!({"base": "main", "head": "feature"}).to_string()
        )),
        (main_ref(), Ff, None)
    );
    assert_eq!(
        one(&api(
            "POST",
            "/repos/o/r/merge-upstream",
            &json!({"branch": "main"}).to_string()
        ))
        .0,
        main_ref()
    );
    assert_eq!(
        refs(&api(
            "POST",
            "/repos/o/r/branches/dev/rename",
            &json!({"new_name": "main"}).to_string()
        )),
        vec![
            ("refs/heads/dev".into(), Delete, Some(vec![])),
            (main_ref(), Create, Some(vec![]))
        ]
    );
    assert_eq!(
        one(&api(
            "POST",
            "/repos/o/r/releases",
            &json!({"tag_name": "v1.0", "target_commitish": "main"}).to_string()
        )),
        ("refs/tags/v1.0".into(), Create, None)
    );
    assert_eq!(
        api("PATCH", "/repos/o/r/releases/1", "{\"name\":\"n\"}"),
        Write::None
    );
    assert_eq!(
        one(&api("PATCH", "/repos/o/r/releases/1", "{\"tag_name\":\"v2\"}")).0,
        "refs/tags/v2"
    );
    assert_eq!(api("DELETE", "/repos/o/r/releases/1", ""), Write::None);
    let every = ("?every ref of the repository".to_owned(), Delete, Some(vec![]));
    assert_eq!(one(&api("DELETE", "/repos/o/r", "")), every);
    assert_eq!(
        one(&api("POST", "/repos/o/r/transfer", "{\"new_owner\":\"x\"}")),
        every
    );
}

#[test]
fn protection_and_settings_are_unknown_writes_and_plain_writes_are_none() {
    for (method, path, body) in [
        ("PATCH", "/repos/o/r", "{\"visibility\":\"public\"}"),
        ("PATCH", "/repos/o/r", "{\"private\":false}"),
        ("PATCH", "/repos/o/r", "{\"default_branch\":\"dev\"}"),
        ("PATCH", "/repos/o/r", "{\"name\":\"other\"}"),
        ("PUT", "/repos/o/r/branches/main/protection", "{}"),
        ("DELETE", "/repos/o/r/branches/main/protection", ""),
        ("POST", "/repos/o/r/branches/main/protection/enforce_admins", ""),
        ("POST", "/repos/o/r/rulesets", "{}"),
        ("PUT", "/repos/o/r/rulesets/42", "{}"),
        ("DELETE", "/repos/o/r/rulesets/42", ""),
        ("POST", "/repos/o/r/tags/protection", "{}"),
        ("POST", "/orgs/acme/rulesets", "{}"),
        ("PUT", "/orgs/acme/rulesets/7", "{}"),
        ("POST", "/repos/o/r/keys", "{}"),
        ("POST", "/repos/o/r/hooks", "{}"),
        ("PUT", "/repos/o/r/collaborators/eve", "{}"),
        ("POST", "/repos/o/r/git/refs/heads/main", "{}"),
        ("PROPFIND", "/repos/o/r/git/refs/heads/main", ""),
        ("PATCH", "/repos/o/r/git/refs/heads/main", "not json"),
    ] {
        let w = api(method, path, body);
        assert!(matches!(w, Write::Unknown(_)), "{method} {path}: {w:?}");
    }
    for (method, path, body) in [
        (
            "PATCH",
            "/repos/o/r",
            "{\"description\":\"d\",\"has_wiki\":false}",
        ),
        ("POST", "/repos/o/r/issues", "{\"title\":\"t\"}"),
        ("POST", "/repos/o/r/issues/1/comments", "{\"body\":\"b\"}"),
        (
            "POST",
            "/repos/o/r/pulls",
            "{\"title\":\"t\",\"head\":\"x\",\"base\":\"main\"}",
        ),
        ("PATCH", "/repos/o/r/pulls/1", "{\"base\":\"main\"}"),
        ("POST", "/repos/o/r/pulls/1/reviews", "{}"),
        ("POST", "/repos/o/r/statuses/abc", "{}"),
        ("POST", "/repos/o/r/check-runs", "{}"),
        ("PUT", "/repos/o/r/actions/secrets/X", "{}"),
        ("POST", "/repos/o/r/dispatches", "{}"),
        ("POST", "/user/repos", "{}"),
        ("DELETE", "/gists/1", ""),
        ("GET", "/repos/o/r/git/refs/heads/main", ""),
        ("HEAD", "/repos/o/r", ""),
    ] {
        assert_eq!(api(method, path, body), Write::None, "{method} {path}");
    }
}

#[test]
fn a_repository_by_id_and_on_ghes() {
    let w = api("PUT", "/repositories/1296269/contents/a", "{\"branch\":\"main\"}");
    assert_eq!(one(&w).0, main_ref());
    let ghes = GitHub::from_api_url("https://ghes.example/api/v3").unwrap();
    let w = write_in(
        "DELETE",
        "https://ghes.example/api/v3/repos/o/r/git/refs/heads/main",
        &[],
        b"",
        &ghes,
    );
    assert_eq!(one(&w), (main_ref(), Delete, Some(vec![])));
    let w = write_in(
        "POST",
        "https://ghes.example/api/graphql",
        &[],
        json!({"query": "mutation { deleteRef(input: {refId: \"R\"}) { clientMutationId } }"})
            .to_string()
            .as_bytes(),
        &ghes,
    );
    assert_eq!(one(&w).1, Delete);
}

#[test]
fn path_spellings_name_the_same_ref_or_are_refused() {
    for path in [
        "/REPOS/O/R/GIT/REFS/heads/main",
        "/repos/o/r/git/refs/heads/main/",
        "/repos/o/r/git/refs/heads/ma%69n",
        "/repos/o/r/git/refs/heads/main?x=/../y",
        "/repos/o/r/git/refs/heads/main?",
        "/repos/O/R.git/git/refs/heads/main",
    ] {
        let w = api("DELETE", path, "");
        assert!(
            refs(&w).iter().any(|r| r.0 == "refs/heads/main" && r.1 == Delete),
            "{path}: {w:?}"
        );
    }
    // `refs/heads/main` after `git/refs/` may be read with or without its `refs/`.
    let w = api("DELETE", "/repos/o/r/git/refs/refs/heads/main", "");
    assert!(refs(&w).iter().any(|r| r.0 == "refs/heads/main"), "{w:?}");
    // What GitHub could read as another path never gets this far.
    for path in [
        "//repos/o/r/git/refs/heads/main",
        "/repos/o/r/git/refs/heads%2Fmain",
        "/repos/o/r/git/refs/heads/x/../main",
        "/repos/o/r/git//refs/heads/main",
        "/repos/o/r/git/refs/heads/%252e%252e/main",
    ] {
        let url = format!("https://api.github.com{path}");
        assert!(
            crate::classify::Classified::from_url("DELETE", &url, &github()).is_err(),
            "{path} was classified"
        );
    }
}

#[test]
fn method_overrides_are_read_as_well_as_the_method() {
    let gh = github();
    let url = "https://api.github.com/repos/o/r/git/refs/heads/main";
    for header in METHOD_OVERRIDE_HEADERS {
        for method in ["POST", "GET"] {
            let w = write_in(method, url, &[(header, "DELETE")], b"", &gh);
            assert!(
                refs(&w).iter().any(|r| r.0 == "refs/heads/main" && r.1 == Delete),
                "{method} with {header}: {w:?}"
            );
        }
    }
    let w = write_in(
        "GET",
        url,
        &[("x-http-method-override", "patch")],
        b"{\"sha\":\"x\",\"force\":true}",
        &gh,
    );
    assert_eq!(one(&w).1, NonFf);
    let w = write_in("POST", url, &[("x-http-method-override", "DE LETE")], b"", &gh);
    assert!(unknown(&w).contains("not a method"), "{w:?}");
}

#[test]
fn bodies_are_read_as_github_would_or_not_at_all() {
    // A key given twice could be read either way.
    let w = api(
        "PATCH",
        "/repos/o/r/git/refs/heads/main",
        "{\"force\": false, \"sha\": \"x\", \"force\": true}",
    );
    assert!(unknown(&w).contains("given twice"), "{w:?}");
    // Escapes in JSON strings are what they stand for.
    let w = api("PUT", "/repos/o/r/contents/a", "{\"branch\": \"ma\\u0069n\"}");
    assert_eq!(one(&w).0, main_ref());
    // A compressed body is read decompressed.
    let body = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(br#"{"sha":"x","force":true}"#).unwrap();
        e.finish().unwrap()
    };
    let w = write_in(
        "PATCH",
        "https://api.github.com/repos/o/r/git/refs/heads/main",
        &[("content-encoding", "gzip")],
        &body,
        &github(),
    );
    assert_eq!(one(&w).1, NonFf);
    // Garbage that claims to be gzip is unknown.
    let w = write_in(
        "PATCH",
        "https://api.github.com/repos/o/r/git/refs/heads/main",
        &[("content-encoding", "gzip")],
        b"not gzip",
        &github(),
    );
    assert!(matches!(w, Write::Unread(_)), "{w:?}");
}

// ---- GraphQL ---------------------------------------------------------------------------------

const CREATE_COMMIT: &str = r#"mutation ($input: CreateCommitOnBranchInput!) {
  createCommitOnBranch(input: $input) { commit { url } }
}"#;

#[test]
fn graphql_mutations_that_move_refs() {
    let input = json!({
        "branch": {"repositoryNameWithOwner": "O/R", "branchName": "main"},
        "message": {"headline": "h"},
        "expectedHeadOid": SHA,
        "fileChanges": {
            "additions": [{"path": ".github/workflows/x.yml", "contents": "eA=="}],
            "deletions": [{"path": "old.txt"}]
        }
    });
    let w = gql(json!({"query": CREATE_COMMIT, "variables": {"input": input}}));
    assert_eq!(
        one(&w),
        (
            main_ref(),
            Ff,
            Some(vec![".github/workflows/x.yml".into(), "old.txt".into()])
        )
    );
    assert_eq!(
        w.refs()[0].repository,
        RepoFact::Named(Repo::Named {
            owner: "o".into(),
            name: "r".into()
        })
    );
    let m = |doc: &str| gql(json!({ "query": doc }));
    assert_eq!(
        one(&m(
            r#"mutation { createRef(input: {repositoryId: "R_1", name: "refs/heads/x", oid: "aa218f56b14c9653891f9e74264a383fa43fefbd"}) { ref { id } } }"#
        )),
        ("refs/heads/x".into(), Create, None)
    );
    assert_eq!(
        one(&m(
            r#"mutation { updateRef(input: {refId: "REF_1", oid: "aa218f56b14c9653891f9e74264a383fa43fefbd", force: true}) { ref { id } } }"#
        )),
        ("?the ref with node id REF_1".into(), NonFf, None)
    );
    assert_eq!(
        one(&m(r#"mutation { updateRef(input: {refId: "REF_1", oid: "aa218f56b14c9653891f9e74264a383fa43fefbd"}) { ref { id } } }"#)).1,
        Ff
    );
    assert_eq!(
        one(&m(
            r#"mutation { deleteRef(input: {refId: "REF_1"}) { clientMutationId } }"#
        )),
        ("?the ref with node id REF_1".into(), Delete, Some(vec![]))
    );
    let z = "0".repeat(40);
    assert_eq!(
        refs(&m(&format!(
            r#"mutation {{ updateRefs(input: {{repositoryId: "R_1", refUpdates: [
                {{name: "refs/heads/a", beforeOid: "{z}", afterOid: "{SHA}"}},
                {{name: "refs/heads/main", beforeOid: "{SHA}", afterOid: "{z}"}},
                {{name: "refs/heads/b", beforeOid: "{SHA}", afterOid: "{SHA}", force: true}},
                {{name: "refs/heads/c", beforeOid: "{SHA}", afterOid: "{SHA}"}}
            ]}}) {{ clientMutationId }} }}"#
        ))),
        vec![
            ("refs/heads/a".into(), Create, None),
            (main_ref(), Delete, Some(vec![])),
            ("refs/heads/b".into(), NonFf, None),
            ("refs/heads/c".into(), Ff, None),
        ]
    );
    assert_eq!(
        one(&m(
            r#"mutation { mergePullRequest(input: {pullRequestId: "PR_1", mergeMethod: SQUASH}) { clientMutationId } }"#
        )),
        ("?the base branch of pull request PR_1".into(), Ff, None)
    );
    assert_eq!(
        one(&m(r#"mutation { mergeBranch(input: {repositoryId: "R_1", base: "main", head: "dev"}) { clientMutationId } }"#)).0,
        main_ref()
    );
    assert_eq!(
        one(&m(
            r#"mutation { enablePullRequestAutoMerge(input: {pullRequestId: "PR_1"}) { clientMutationId } }"#
        ))
        .1,
        Ff
    );
    assert_eq!(
        m(r#"mutation { addComment(input: {subjectId: "I_1", body: "deleteRef"}) { clientMutationId } }"#),
        Write::None
    );
    assert_eq!(m("query { viewer { login } }"), Write::None);
    assert_eq!(m("{ repository(owner: \"o\", name: \"r\") { id } }"), Write::None);
    assert!(
        unknown(&m(
            r#"mutation { archiveRepository(input: {repositoryId: "R_1"}) { clientMutationId } }"#
        ))
        .contains("archiveRepository")
    );
    assert!(unknown(&m(r#"mutation { updateBranchProtectionRule(input: {branchProtectionRuleId: "B"}) { clientMutationId } }"#)).contains("updateBranchProtectionRule"));
}

/// Every spelling below is `deleteRef` of REF_1.
fn is_delete(w: &Write) -> bool {
    w.refs()
        .iter()
        .any(|r| r.kind == Delete && r.name == RefName::Unknown("the ref with node id REF_1".into()))
}

#[test]
fn graphql_spellings_do_not_hide_a_mutation() {
    let del = r#"deleteRef(input: {refId: "REF_1"}) { clientMutationId }"#;
    let docs: Vec<Value> = vec![
        // An alias.
        json!({"query": format!("mutation {{ keep: {del} }}")}),
        // A variable holding the input, or one field of it.
        json!({"query": "mutation D($i: DeleteRefInput!) { deleteRef(input: $i) { clientMutationId } }",
               "variables": {"i": {"refId": "REF_1"}}}),
        json!({"query": "mutation D($r: ID!) { deleteRef(input: {refId: $r}) { clientMutationId } }",
               "variables": {"r": "REF_1"}}),
        // A default value.
        json!({"query": "mutation D($r: ID = \"REF_1\") { deleteRef(input: {refId: $r}) { clientMutationId } }"}),
        // Variables as a JSON string.
        json!({"query": "mutation D($r: ID!) { deleteRef(input: {refId: $r}) { clientMutationId } }",
               "variables": "{\"r\": \"REF_1\"}"}),
        // operationName selects the query; the mutation after it still counts.
        json!({"query": format!("query A {{ viewer {{ login }} }} mutation B {{ {del} }}"), "operationName": "A"}),
        // Fragments and inline fragments on the mutation root.
        json!({"query": format!("mutation {{ ...F }} fragment F on Mutation {{ {del} }}")}),
        json!({"query": format!("mutation {{ ... on Mutation {{ {del} }} }}")}),
        json!({"query": format!("mutation {{ ... {{ ...F }} }} fragment F on Mutation {{ ... on Mutation {{ x: {del} }} }}")}),
        // @skip is not trusted to skip.
        json!({"query": format!("mutation {{ deleteRef(input: {{refId: \"REF_1\"}}) @skip(if: true) {{ clientMutationId }} }}")}),
        // Comments and unicode escapes.
        json!({"query": "mutation { # deleteRef is not here\n deleteRef(input: {refId: \"REF\\u005F1\"}) { clientMutationId } }"}),
        // A batch.
        json!([{"query": "query { viewer { login } }"}, {"query": format!("mutation {{ {del} }}")}]),
        // Several mutations in one operation.
        json!({"query": format!("mutation {{ addStar(input: {{starrableId: \"x\"}}) {{ clientMutationId }} {del} }}")}),
    ];
    for doc in docs {
        let w = gql(doc.clone());
        assert!(is_delete(&w), "{doc}: {w:?}");
    }
    // In the URL, with any method.
    let q = "mutation%20%7B%20deleteRef(input%3A%20%7BrefId%3A%20%22REF_1%22%7D)%20%7B%20clientMutationId%20%7D%20%7D";
    for method in ["GET", "POST"] {
        let w = api(method, &format!("/graphql?query={q}"), "");
        assert!(is_delete(&w), "{method}: {w:?}");
    }
    // A raw document body.
    assert!(is_delete(&api(
        "POST",
        "/graphql",
        &format!("mutation {{ {del} }}")
    )));
    // A trailing slash or another case of the path.
    assert!(is_delete(&api(
        "POST",
        "/GraphQL/",
        &json!({"query": format!("mutation {{ {del} }}")}).to_string()
    )));
}

#[test]
fn graphql_it_cannot_read_is_unknown() {
    for body in [
        json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}}).to_string(),
        json!({"id": "abc"}).to_string(),
        json!({"query": "mutation { deleteRef(input: {refId: \"REF_1\"}) { clientMutationId } "}).to_string(),
        json!({"query": "mutation { ...Missing }"}).to_string(),
        json!({"query": "type Mutation { x: Int }"}).to_string(),
        json!({"query": 5}).to_string(),
        json!({"query": "query { a }", "variables": [1]}).to_string(),
        "{\"query\": \"query { viewer { login } }\", \"query\": \"mutation { x }\"}".to_owned(),
        "[1]".to_owned(),
        "\"a string\"".to_owned(),
        "{not json".to_owned(),
    ] {
        let w = api("POST", "/graphql", &body);
        assert!(matches!(w, Write::Unknown(_)), "{body}: {w:?}");
    }
    // Huge or deep documents are refused by the parser's limits, without exhausting the stack.
    let deep = format!("mutation {{ {} }}", "a { ".repeat(100_000));
    let w = gql(json!({ "query": deep }));
    assert!(matches!(w, Write::Unknown(_)), "deep");
    let wide = format!(
        "mutation {{ {} }}",
        "addStar(input: {starrableId: \"x\"}) { clientMutationId } ".repeat(20_000)
    );
    let w = gql(json!({ "query": wide }));
    assert!(matches!(w, Write::Unknown(_)), "wide");
    let deep_value = format!(
        "mutation {{ deleteRef(input: {}) {{ clientMutationId }} }}",
        "[".repeat(10_000)
    );
    assert!(matches!(gql(json!({ "query": deep_value })), Write::Unknown(_)));
    // JSON nested past serde_json's limit.
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(api("POST", "/graphql", &nested), Write::Unknown(_)));
    // Nothing asked is nothing written.
    assert_eq!(api("GET", "/graphql", ""), Write::None);
    assert_eq!(api("OPTIONS", "/graphql", ""), Write::None);
}

// ---- property: aliases and variables change nothing -------------------------------------------

/// One mutation: its name and its input's fields, as literals.
#[derive(Debug, Clone)]
struct Mutation {
    name: &'static str,
    input: Vec<(&'static str, Value)>,
}

fn arb_ref() -> impl Strategy<Value = String> {
    "(heads|tags)/[a-z]{1,6}(/[a-z0-9]{1,4})?".prop_map(|r| format!("refs/{r}"))
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let id = "[A-Z]{1,3}_[a-zA-Z0-9]{1,8}";
    prop_oneof![
        (id, any::<bool>()).prop_map(|(id, force)| Mutation {
            name: "updateRef",
            input: vec![("refId", json!(id)), ("oid", json!(SHA)), ("force", json!(force))],
        }),
        id.prop_map(|id| Mutation {
            name: "deleteRef",
            input: vec![("refId", json!(id))],
        }),
        (id, arb_ref()).prop_map(|(id, name)| Mutation {
            name: "createRef",
            input: vec![("repositoryId", json!(id)), ("name", json!(name)), ("oid", json!(SHA))],
        }),
        ("[a-z]{1,5}", proptest::collection::vec("[a-z.]{1,5}(/[a-z]{1,5})?", 0..3)).prop_map(
            |(branch, files)| Mutation {
                name: "createCommitOnBranch",
                input: vec![
                    (
                        "branch",
                        json!({"repositoryNameWithOwner": "o/r", "branchName": branch})
                    ),
                    (
                        "fileChanges",
                        json!({"additions": files.iter().map(|f| json!({"path": f, "contents": ""})).collect::<Vec<_>>()})
                    ),
                ],
            }
        ),
        id.prop_map(|id| Mutation {
            name: "mergePullRequest",
            input: vec![("pullRequestId", json!(id))],
        }),
        ("[a-z]{1,5}", id).prop_map(|(base, id)| Mutation {
            name: "mergeBranch",
            input: vec![("repositoryId", json!(id)), ("base", json!(base)), ("head", json!("dev"))],
        }),
    ]
}

/// A GraphQL literal for a JSON value.
fn literal(v: &Value) -> String {
    match v {
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k}: {}", literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) => format!("[{}]", a.iter().map(literal).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// How each mutation is disguised: an alias, which input fields become variables, whether the
/// whole input is one variable, and whether it sits in a fragment.
#[derive(Debug, Clone)]
struct Disguise {
    alias: Option<String>,
    as_variables: Vec<bool>,
    whole_input: bool,
    wrap: u8,
}

fn arb_disguise() -> impl Strategy<Value = Disguise> {
    (
        proptest::option::of("[a-z][a-zA-Z0-9_]{0,6}"),
        proptest::collection::vec(any::<bool>(), 3),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(alias, as_variables, whole_input, wrap)| Disguise {
            alias,
            as_variables,
            whole_input,
            wrap,
        })
}

proptest! {
    #[test]
    fn aliases_variables_and_fragments_yield_the_same_facts(
        ms in proptest::collection::vec((arb_mutation(), arb_disguise()), 1..4)
    ) {
        let plain_fields: Vec<String> = ms
            .iter()
            .map(|(m, _)| {
                let input: serde_json::Map<String, Value> =
                    m.input.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
                format!("{}(input: {}) {{ clientMutationId }}", m.name, literal(&Value::Object(input)))
            })
            .collect();
        let plain = format!("mutation {{ {} }}", plain_fields.join(" "));

        let mut vars = serde_json::Map::new();
        let mut defs = Vec::new();
        let mut fields = Vec::new();
        let mut fragments = Vec::new();
        for (i, (m, d)) in ms.iter().enumerate() {
            let input = if d.whole_input {
                let name = format!("in{i}");
                let obj: serde_json::Map<String, Value> =
                    m.input.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
                vars.insert(name.clone(), Value::Object(obj));
                defs.push(format!("${name}: JSON"));
                format!("${name}")
            } else {
                let parts: Vec<String> = m
                    .input
                    .iter()
                    .enumerate()
                    .map(|(j, (k, v))| {
                        if d.as_variables.get(j).copied().unwrap_or(false) {
                            let name = format!("v{i}_{j}");
                            vars.insert(name.clone(), v.clone());
                            defs.push(format!("${name}: JSON"));
                            format!("{k}: ${name}")
                        } else {
                            format!("{k}: {}", literal(v))
                        }
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            };
            let alias = d.alias.as_ref().map(|a| format!("{a}: ")).unwrap_or_default();
            let field = format!("{alias}{}(input: {input}) {{ clientMutationId }}", m.name);
            fields.push(match d.wrap {
                0 => field,
                1 => format!("... on Mutation {{ {field} }}"),
                _ => {
                    fragments.push(format!("fragment F{i} on Mutation {{ {field} }}"));
                    format!("...F{i}")
                }
            });
        }
        let defs = if defs.is_empty() { String::new() } else { format!("({})", defs.join(", ")) };
        let disguised = format!("mutation Op{defs} {{ {} }} {}", fields.join(" "), fragments.join(" "));

        let a = gql(json!({ "query": plain }));
        let b = gql(json!({ "query": disguised, "variables": vars }));
        prop_assert!(matches!(a, Write::Refs(_)), "{:?}", a);
        prop_assert_eq!(a, b);
    }
}

// ---- the example policy decides them as it decides pushes ---------------------------------------

fn example() -> Policy {
    Policy::parse(
        include_str!("../../../../gateway/config/examples/policy.toml"),
        Path::new("policy.toml"),
    )
    .unwrap()
}

fn agent() -> Subject {
    Subject {
        uid: 1000,
        user: Some("agent".into()),
        exe: Some("/usr/bin/curl".into()),
        comm: "curl".into(),
        cgroup: None,
        ci_repository: None,
        ci_workflow: None,
        ci_ref: None,
        oidc: None,
    }
}

/// (action, rule name) the example policy gives a request.
fn decide(method: &str, path: &str, body: &str) -> (&'static str, Option<String>) {
    let p = example();
    let url = format!("https://api.github.com{path}");
    let target = Target::parse(method, &url, &github()).unwrap();
    let mut w = api(method, path, body);
    // The files it carries scanned clean, as the gateway's masker finds "x".
    for r in w.refs_mut() {
        if r.secrets == Secrets::NotComputed {
            r.secrets = Secrets::Known(Vec::new());
        }
    }
    let v = match p.evaluate_write(&agent(), &target, &w) {
        Some(e) => e.verdict,
        None => p.evaluate(&agent(), &target, None),
    };
    let name = v.rule.name.clone();
    (v.action.name(), name)
}

#[test]
fn the_example_policy_decides_api_writes_as_pushes() {
    let named = |a: &'static str, n: &str| (a, Some(n.to_owned()));
    assert_eq!(
        decide("DELETE", "/repos/o/r/git/refs/heads/main", ""),
        named("deny", "no-delete-protected")
    );
    assert_eq!(
        decide("DELETE", "/repos/o/r/git/refs/heads/topic", ""),
        ("allow", None)
    );
    assert_eq!(
        decide(
            "PATCH",
            "/repos/o/r/git/refs/heads/main",
            &json!({"sha": SHA, "force": true}).to_string()
        ),
        named("require_approval", "force-push-protected")
    );
    // A fast-forward to a commit the request does not carry may change workflows.
    assert_eq!(
        decide(
            "PATCH",
            "/repos/o/r/git/refs/heads/main",
            &json!({"sha": SHA}).to_string()
        ),
        named("require_approval", "workflow-changes")
    );
    // A method override is read as what it asks for, the stricter reading counting.
    let p = example();
    let url = "https://api.github.com/repos/o/r/git/refs/heads/main";
    let req = classified_with("POST", url, &[("x-http-method-override", "DELETE")], &github());
    let w = write_in(
        "POST",
        url,
        &[("x-http-method-override", "DELETE")],
        b"",
        &github(),
    );
    let v = p.evaluate_write(&agent(), &Target::new(req), &w).unwrap().verdict;
    assert_eq!(
        (v.action.name(), v.rule.name.as_deref()),
        ("deny", Some("no-delete-protected"))
    );
    assert_eq!(
        decide(
            "PUT",
            "/repos/o/r/contents/.github/workflows/x.yml",
            &json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string()
        ),
        named("require_approval", "workflow-changes")
    );
    assert_eq!(
        decide(
            "PUT",
            "/repos/o/r/contents/README.md",
            &json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string()
        ),
        ("allow", None)
    );
    // Unscanned, the same write counts as carrying a secret seen in a response.
    let w = api(
        "PUT",
        "/repos/o/r/contents/README.md",
        &json!({"message": "m", "content": "eA==", "branch": "dev"}).to_string(),
    );
    let t = Target::parse(
        "PUT",
        "https://api.github.com/repos/o/r/contents/README.md",
        &github(),
    )
    .unwrap();
    assert_eq!(
        p.evaluate_write(&agent(), &t, &w)
            .unwrap()
            .verdict
            .rule
            .name
            .as_deref(),
        Some("suggested-secrets")
    );
    // The merge's changes are not in the request: they may touch workflows.
    assert_eq!(
        decide("PUT", "/repos/o/r/pulls/3/merge", "{}"),
        named("require_approval", "workflow-changes")
    );
    // Deleting the repository deletes main.
    assert_eq!(
        decide("DELETE", "/repos/o/r", ""),
        named("deny", "no-delete-protected")
    );
    // A ref the request does not name counts for a rule that refuses.
    assert_eq!(
        decide(
            "POST",
            "/graphql",
            &json!({"query": "mutation { deleteRef(input: {refId: \"X\"}) { clientMutationId } }"})
                .to_string()
        ),
        named("deny", "no-delete-protected")
    );
    assert_eq!(
        decide("POST", "/graphql", &json!({"query": "mutation { updateRef(input: {refId: \"X\", oid: \"a\", force: true}) { clientMutationId } }"}).to_string()),
        named("require_approval", "force-push-protected")
    );
    // Unknown writes: the implied unknown_write (the first approval a ref rule asks for).
    let (action, rule) = decide("PUT", "/repos/o/r/branches/main/protection", "{}");
    assert_eq!(
        (action, rule.as_deref()),
        ("require_approval", Some("unknown_write"))
    );
    // Plain writes are ordinary requests.
    assert_eq!(
        decide("POST", "/repos/o/r/issues", "{\"title\":\"t\"}"),
        ("allow", None)
    );
    // And the rule on Actions secrets still applies to its path.
    assert_eq!(
        decide("PUT", "/repos/o/r/actions/secrets/X", "{}"),
        named("require_approval", "actions-secrets-api")
    );
}

#[test]
fn unknown_write_settings() {
    let groups = "[approvers.m]\nusers = [\"alice\"]\n";
    let p = |extra: &str| Policy::parse(&format!("{extra}\n{groups}"), Path::new("p.toml"));
    let decide = |p: &Policy| {
        let t = Target::parse("POST", "https://api.github.com/repos/o/r/hooks", &github()).unwrap();
        let w = api("POST", "/repos/o/r/hooks", "{}");
        p.evaluate_write(&agent(), &t, &w).unwrap().verdict
    };
    // No ref or path rules: allowed.
    assert_eq!(decide(&p("").unwrap()).action, Action::Allow);
    // Ref rules that only deny: denied.
    let v = decide(&p("[[rule]]\naction = \"deny\"\nref = \"refs/heads/main\"\n").unwrap());
    assert_eq!(v.action, Action::Deny);
    assert_eq!(v.rule.to_string(), "the unknown_write setting");
    // Explicit settings.
    assert_eq!(
        decide(
            &p("unknown_write = \"allow\"\n[[rule]]\naction = \"deny\"\nref = \"refs/heads/main\"\n")
                .unwrap()
        )
        .action,
        Action::Allow
    );
    let v = decide(&p("unknown_write = \"require_approval\"\nunknown_write_approvers = \"m\"\nunknown_write_message = \"ask\"\n").unwrap());
    assert!(matches!(v.action, Action::RequireApproval(_)), "{v:?}");
    assert_eq!(v.message.as_deref(), Some("ask"));
    // A stricter default still decides.
    assert_eq!(
        decide(&p("default = \"deny\"\nunknown_write = \"allow\"\n").unwrap()).action,
        Action::Deny
    );
    // A rule naming the request decides before unknown_write.
    let v = decide(
        &p("unknown_write = \"deny\"\n[[rule]]\naction = \"allow\"\nmethod = \"POST\"\npath = \"/repos/*/hooks\"\n")
            .unwrap(),
    );
    assert_eq!(v.action, Action::Allow);
    // Mistakes are refused.
    for (text, want) in [
        ("unknown_write = \"record_only\"\n", "not a choice"),
        (
            "unknown_write = \"require_approval\"\n",
            "unknown_write_approvers",
        ),
        (
            "unknown_write_approvers = \"m\"\n",
            "needs unknown_write = \"require_approval\"",
        ),
        (
            "unknown_write = \"deny\"\nunknown_write_approvers = \"m\"\n",
            "only applies to unknown_write",
        ),
        ("unknown_write = \"maybe\"\n", "unknown variant"),
    ] {
        let e = p(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

// ---- the files a write carries, decoded for the secret scan ----------------------------------

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// (path, decoded text) of each file the one ref update carries, and its secrets' state.
fn carried(w: &Write) -> (Vec<(String, String)>, Secrets) {
    assert_eq!(w.refs().len(), 1, "{w:?}");
    let r = &w.refs()[0];
    let files = r
        .contents
        .iter()
        .map(|f| (f.path.clone(), String::from_utf8_lossy(&f.bytes).into_owned()))
        .collect();
    (files, r.secrets.clone())
}

#[test]
fn base64_is_read_every_way_github_might_or_counts_as_unscanned() {
    let text = b"token = ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\n";
    let plain = b64(text);
    assert_eq!(base64_readings(&plain).unwrap(), vec![text.to_vec()]);
    // Wrapped as `base64` wraps it, with JSON's \r\n, spaces and tabs, or without padding.
    let wrapped: String = plain
        .as_bytes()
        .chunks(7)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n \t");
    assert_eq!(base64_readings(&wrapped).unwrap(), vec![text.to_vec()]);
    assert_eq!(
        base64_readings(plain.trim_end_matches('=')).unwrap(),
        vec![text.to_vec()]
    );
    // The URL-safe alphabet: read as itself (and as a lenient decoder would, dropping it).
    let bytes = [0xfbu8, 0xff, 0xbf, b'x', b'y', b'z'];
    let url = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    };
    assert!(url.contains(['-', '_']), "{url}");
    assert!(base64_readings(&url).unwrap().contains(&bytes.to_vec()));
    // What no decoder agrees on is not guessed.
    for bad in ["a+b-", "YWJj!ZA==", "YW=Jj", "Y", "ghp_not-base64!"] {
        assert!(base64_readings(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_contents_put_carries_its_file_decoded_and_a_delete_carries_none() {
    let content = b64(b"AKIA secret here\n");
    let w = api(
        "PUT",
        "/repos/o/r/contents/src/app.env",
        &json!({"message": "m", "content": content, "branch": "dev"}).to_string(),
    );
    let (files, secrets) = carried(&w);
    assert_eq!(
        files,
        [("src/app.env".to_owned(), "AKIA secret here\n".to_owned())]
    );
    assert_eq!(secrets, Secrets::NotComputed);
    // The facts carry the gateway's scan; an unscanned write reads the riskier way.
    let t = Target::parse(
        "PUT",
        "https://api.github.com/repos/o/r/contents/src/app.env",
        &github(),
    )
    .unwrap();
    assert_eq!(w.refs()[0].facts(&t).1.secrets, Secrets::NotComputed);

    let w = api(
        "DELETE",
        "/repos/o/r/contents/src/app.env",
        &json!({"message": "m", "sha": SHA}).to_string(),
    );
    let (files, secrets) = carried(&w);
    assert!(files.is_empty());
    assert_eq!(secrets, Secrets::Known(Vec::new()));
    // Nor does a ref moved to a commit upstream has (as a push without a pack).
    let w = api(
        "PATCH",
        "/repos/o/r/git/refs/heads/main",
        &json!({"sha": SHA, "force": true}).to_string(),
    );
    assert!(w.refs().iter().all(|r| r.secrets == Secrets::Known(Vec::new())));

    // Content that cannot be decoded, or that is not a string, is unscanned.
    for content in [json!("not base64!"), json!(12), json!(["YWJj"])] {
        let w = api(
            "PUT",
            "/repos/o/r/contents/x",
            &json!({"message": "m", "content": content}).to_string(),
        );
        let (files, secrets) = carried(&w);
        assert!(files.is_empty());
        assert!(matches!(secrets, Secrets::Unknown(_)), "{content}: {secrets:?}");
    }
}

#[test]
fn create_commit_on_branch_carries_every_addition_however_spelled() {
    let first = b64(b"fine\n");
    let second = b64(b"the second file\n");
    let input = json!({
        "branch": {"repositoryNameWithOwner": "o/r", "branchName": "main"},
        "message": {"headline": "h"},
        "expectedHeadOid": SHA,
        "fileChanges": {
            "additions": [{"path": "a.txt", "contents": first}, {"path": "b/c.txt", "contents": second}],
            "deletions": [{"path": "old.txt"}]
        }
    });
    let want = vec![
        ("a.txt".to_owned(), "fine\n".to_owned()),
        ("b/c.txt".to_owned(), "the second file\n".to_owned()),
    ];
    // Through variables, inline as a literal, under an alias, and as the second request of a
    // batch: the same files.
    let by_var = gql(json!({
        "query": "mutation($i: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $i) { commit { oid } } }",
        "variables": {"i": input}
    }));
    let literal = gql(json!({"query": format!(
        "mutation {{ x: createCommitOnBranch(input: {}) {{ commit {{ oid }} }} }}",
        literal(&input)
    )}));
    let batch = api(
        "POST",
        "/graphql",
        &json!([
            {"query": "query { viewer { login } }"},
            {"query": "mutation($i: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $i) { commit { oid } } }",
             "variables": {"i": input}}
        ])
        .to_string(),
    );
    for w in [&by_var, &literal, &batch] {
        let (files, secrets) = carried(w);
        assert_eq!(files, want, "{w:?}");
        assert_eq!(secrets, Secrets::NotComputed);
    }
    // One undecodable addition makes the ref update's contents unscanned.
    let mut bad = input.clone();
    bad["fileChanges"]["additions"][1]["contents"] = json!("%%%");
    let w = gql(json!({
        "query": "mutation($i: CreateCommitOnBranchInput!) { createCommitOnBranch(input: $i) { commit { oid } } }",
        "variables": {"i": bad}
    }));
    assert!(matches!(carried(&w).1, Secrets::Unknown(why) if why.contains("b/c.txt")));
}

#[test]
fn a_write_the_gateway_cannot_read_counts_as_unscanned_for_secrets_rules() {
    let p = Policy::parse(
        "[[rule]]\nname = \"no-secrets\"\naction = \"deny\"\nsecrets = \"*\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let t = Target::parse("PUT", "https://api.github.com/repos/o/r/contents/x", &github()).unwrap();
    let v = p
        .evaluate_write(&agent(), &t, &Write::too_big(1024))
        .unwrap()
        .verdict;
    assert_eq!(v.action, Action::Deny);
    assert_eq!(v.rule.name.as_deref(), Some("no-secrets"));
    // A gzip body that does not decode is as unread.
    let w = write_in(
        "PUT",
        "https://api.github.com/repos/o/r/contents/x",
        &[("content-encoding", "gzip")],
        b"not gzip at all",
        &github(),
    );
    assert!(matches!(w, Write::Unread(_)), "{w:?}");
    let v = p.evaluate_write(&agent(), &t, &w).unwrap().verdict;
    assert_eq!(v.action, Action::Deny);
    // The example's rule (on pushes: `git_service = "receive-pack"`) refuses it too.
    let v = example()
        .evaluate_write(&agent(), &t, &Write::too_big(1024))
        .unwrap()
        .verdict;
    assert_eq!(v.rule.name.as_deref(), Some("suggested-secrets"));
    // A rule that lets through never counts it as clean.
    let p = Policy::parse(
        "default = \"deny\"\n[[rule]]\naction = \"allow\"\nsecrets = \"*\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    assert_eq!(
        p.evaluate_write(&agent(), &t, &Write::too_big(1024))
            .unwrap()
            .verdict
            .action,
        Action::Deny
    );
    // An unknown write that is not unread (it carries no contents) is not a secrets match.
    let p = Policy::parse(
        "unknown_write = \"allow\"\n[[rule]]\naction = \"deny\"\nsecrets = \"*\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let hooks = Target::parse("POST", "https://api.github.com/repos/o/r/hooks", &github()).unwrap();
    let w = api("POST", "/repos/o/r/hooks", "{}");
    assert_eq!(
        p.evaluate_write(&agent(), &hooks, &w).unwrap().verdict.action,
        Action::Allow
    );
}

// ---- git objects written without a ref ---------------------------------------------------------

/// (path, text) of each file the objects carry, and their secrets' state.
fn objects_carried(w: &Write) -> (Vec<(String, String)>, Secrets) {
    assert!(w.refs().iter().all(|r| r.objects), "{w:?}");
    carried(w)
}

#[test]
fn git_objects_carry_what_github_would_store() {
    let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";
    // A blob, UTF-8 by default or by name, any case of the encoding's name.
    for body in [
        json!({ "content": token }),
        json!({ "content": token, "encoding": "utf-8" }),
        json!({ "content": token, "encoding": "UTF-8" }),
    ] {
        let (files, secrets) = objects_carried(&api("POST", "/repos/o/r/git/blobs", &body.to_string()));
        assert_eq!(files, vec![("(the blob)".to_owned(), token.to_owned())], "{body}");
        assert_eq!(secrets, Secrets::NotComputed);
    }
    // Base64, read every way GitHub might; an encoding it does not know is read both ways.
    let w = api(
        "POST",
        "/Repos/o/r/GIT/Blobs/",
        &json!({ "content": b64(token.as_bytes()), "encoding": "Base64" }).to_string(),
    );
    assert_eq!(
        objects_carried(&w).0,
        vec![("(the blob)".to_owned(), token.to_owned())]
    );
    let w = api(
        "POST",
        "/repos/o/r/git/blobs",
        &json!({ "content": b64(token.as_bytes()), "encoding": "latin-1" }).to_string(),
    );
    let texts: Vec<String> = objects_carried(&w).0.into_iter().map(|f| f.1).collect();
    assert_eq!(texts, vec![b64(token.as_bytes()), token.to_owned()]);
    // What cannot be read counts as unscanned, never as clean.
    for body in [
        json!({ "content": 5 }).to_string(),
        json!({ "encoding": "utf-8" }).to_string(),
        json!({ "content": "eA==", "encoding": ["base64"] }).to_string(),
        json!({ "content": "not base64 !", "encoding": "base64" }).to_string(),
        r#"{"content": "x", "content": "y"}"#.to_owned(),
        "not json".to_owned(),
    ] {
        let (_, secrets) = objects_carried(&api("POST", "/repos/o/r/git/blobs", &body));
        assert!(matches!(secrets, Secrets::Unknown(_)), "{body}: {secrets:?}");
    }
    // A tree: each entry's inline content at its path; entries by sha carry nothing.
    let tree = json!({ "base_tree": SHA, "tree": [
        { "path": "a/ok.txt", "mode": "100644", "type": "blob", "sha": SHA },
        { "path": "/b//.env", "mode": "100644", "type": "blob", "content": format!("KEY={token}") },
    ]});
    let w = api("POST", "/repos/o/r/git/trees", &tree.to_string());
    assert_eq!(
        objects_carried(&w).0,
        vec![("b/.env".to_owned(), format!("KEY={token}"))]
    );
    assert_eq!(
        w.refs()[0].paths,
        Paths::Known(vec!["a/ok.txt".into(), "b/.env".into()])
    );
    let bad = json!({ "tree": [{ "path": "x", "content": { "a": 1 } }] });
    let (_, secrets) = objects_carried(&api("POST", "/repos/o/r/git/trees", &bad.to_string()));
    assert!(matches!(secrets, Secrets::Unknown(_)), "{secrets:?}");
    let (_, secrets) = objects_carried(&api("POST", "/repos/o/r/git/trees", r#"{"tree": 1}"#));
    assert!(matches!(secrets, Secrets::Unknown(_)), "{secrets:?}");
    // A commit or a tag: every string it carries (message, names, emails).
    let commit = json!({ "message": "fix", "tree": SHA, "parents": [SHA],
                         "author": { "name": token, "email": "a@example.com" } });
    let (files, _) = objects_carried(&api("POST", "/repos/o/r/git/commits", &commit.to_string()));
    assert_eq!(files.len(), 1);
    assert!(
        files[0].1.contains(token) && files[0].1.contains("fix"),
        "{files:?}"
    );
    let tag = json!({ "tag": "v1", "message": format!("release {token}"), "object": SHA, "type": "commit" });
    let (files, _) = objects_carried(&api("POST", "/repos/o/r/git/tags", &tag.to_string()));
    assert_eq!(files[0].0, "(the tag object)");
    assert!(files[0].1.contains(token));
    // Read under a method override too.
    let w = write_in(
        "GET",
        "https://api.github.com/repos/o/r/git/blobs",
        &[("x-http-method-override", "POST")],
        json!({ "content": token }).to_string().as_bytes(),
        &github(),
    );
    assert_eq!(objects_carried(&w).0.len(), 1);
    // A body past the cap: the objects, unscanned; any other write past the cap is unread.
    let req = classified_with(
        "POST",
        "https://api.github.com/repos/o/r/git/blobs",
        &[],
        &github(),
    );
    let w = past_cap(&req, &github(), 1024);
    assert!(matches!(objects_carried(&w).1, Secrets::Unknown(why) if why.contains("1024")));
    let req = classified_with(
        "PUT",
        "https://api.github.com/repos/o/r/contents/x",
        &[],
        &github(),
    );
    let w = past_cap(&req, &github(), 1024);
    assert!(matches!(w, Write::Unread(_)), "{w:?}");
    let req = classified_with("POST", "https://api.github.com/graphql", &[], &github());
    let w = past_cap(&req, &github(), 1024);
    assert!(matches!(w, Write::Unread(_)), "{w:?} {req:?}");
    // A repository by id, and GHES's prefix, are the same endpoint.
    let w = api(
        "POST",
        "/repositories/42/git/blobs",
        &json!({ "content": token }).to_string(),
    );
    assert_eq!(objects_carried(&w).0.len(), 1);
    // Other git database endpoints are not known.
    assert!(matches!(
        api("POST", "/repos/o/r/git/notes", "{}"),
        Write::Unknown(_)
    ));
    assert!(matches!(
        api("POST", "/repos/o/r/git/blobs/x", "{}"),
        Write::Unknown(_)
    ));
}

fn found(fingerprint: &str, seen: bool) -> Secrets {
    Secrets::Known(vec![crate::PushedSecret {
        rule: "github-token".into(),
        fingerprint: fingerprint.into(),
        seen_in_response: seen,
        commit: None,
        path: Some("(the blob)".into()),
    }])
}

/// The verdict a policy gives a blob write whose scan found `secrets`.
fn blob_verdict(p: &Policy, secrets: Secrets) -> crate::Verdict {
    let t = Target::parse("POST", "https://api.github.com/repos/o/r/git/blobs", &github()).unwrap();
    let mut w = api("POST", "/repos/o/r/git/blobs", r#"{"content": "x"}"#);
    w.refs_mut()[0].secrets = secrets;
    p.evaluate_write(&agent(), &t, &w).unwrap().verdict
}

#[test]
fn git_objects_are_decided_by_rules_on_secrets_only() {
    // The example policy: a clean blob passes (no ref rule holds it, not even those on main or
    // on workflows), a blob carrying a suggested secret is refused.
    let p = example();
    let v = blob_verdict(&p, Secrets::Known(Vec::new()));
    assert_eq!((v.action.name(), v.rule.name.as_deref()), ("allow", None));
    let v = blob_verdict(&p, found("fp1", false));
    assert_eq!(v.action, Action::Allow);
    let v = blob_verdict(&p, found("fp1", true));
    assert_eq!(
        (v.action.name(), v.rule.name.as_deref()),
        ("deny", Some("suggested-secrets"))
    );
    // Unscanned counts as a match for a rule that refuses, and never for one that lets through.
    let v = blob_verdict(&p, Secrets::Unknown("past the cap".into()));
    assert_eq!(v.action, Action::Deny);
    let allow = Policy::parse(
        "default = \"deny\"\n[[rule]]\naction = \"allow\"\nsecrets = \"*\"\nref = \"refs/heads/dev\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    assert_eq!(blob_verdict(&allow, found("fp", false)).action, Action::Deny);
    // A rule on secrets that names a ref counts the objects (they may land on it); one on refs
    // alone does not apply to them; one on the request alone does.
    let p = Policy::parse(
        r#"
[[rule]]
name = "main-ops"
action = "deny"
ref = "refs/heads/main"
ref_op = ["delete", "non-fast-forward", "create"]

[[rule]]
name = "workflows"
action = "require_approval"
approvers = "x"
paths = ".github/*"

[[rule]]
name = "main-secrets"
action = "require_approval"
approvers = "x"
ref = "refs/heads/main"
ref_op = "non-fast-forward"
secrets = ["github-token"]

[approvers.x]
users = ["alice"]
"#,
        Path::new("p.toml"),
    )
    .unwrap();
    let v = blob_verdict(&p, Secrets::Known(Vec::new()));
    assert_eq!(v.action, Action::Allow, "{v:?}");
    let v = blob_verdict(&p, found("fp", false));
    assert_eq!(v.rule.name.as_deref(), Some("main-secrets"));
    let e = p
        .explain_write(
            &agent(),
            &Target::parse("POST", "https://api.github.com/repos/o/r/git/blobs", &github()).unwrap(),
            &{
                let mut w = api("POST", "/repos/o/r/git/blobs", r#"{"content": "x"}"#);
                w.refs_mut()[0].secrets = found("fp", false);
                w
            },
        )
        .unwrap()
        .to_string();
    assert!(e.contains("moves no ref"), "{e}");
    assert!(
        e.contains("git objects that no ref points at yet") || e.contains("no ref yet"),
        "{e}"
    );
    let p = Policy::parse(
        "[[rule]]\nname = \"no-git-db\"\naction = \"deny\"\npath = \"/repos/*/git/*\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    assert_eq!(
        blob_verdict(&p, Secrets::Known(Vec::new())).rule.name.as_deref(),
        Some("no-git-db")
    );
}

/// What may be recorded with its answer instead of before it goes upstream: a read under every
/// method it may be taken for, on any host but GraphQL's endpoint.
#[test]
fn only_reads_takes_every_method_a_request_may_be_read_under() {
    let gh = github();
    let reads = |method: &str, url: &str, headers: &[(&str, &str)]| {
        only_reads(&classified_with(method, url, headers, &gh))
    };
    for (method, url) in [
        ("GET", "https://api.github.com/repos/o/r"),
        ("HEAD", "https://api.github.com/repos/o/r"),
        ("OPTIONS", "https://api.github.com/repos/o/r"),
        (
            "GET",
            "https://github.com/o/r.git/info/refs?service=git-upload-pack",
        ),
        ("GET", "https://raw.githubusercontent.com/o/r/main/x"),
    ] {
        assert!(reads(method, url, &[]), "{method} {url}");
    }
    for (method, url, headers) in [
        ("POST", "https://api.github.com/repos/o/r/issues", &[][..]),
        ("PUT", "https://api.github.com/repos/o/r/contents/x", &[][..]),
        ("DELETE", "https://api.github.com/repos/o/r", &[][..]),
        (
            "GET",
            "https://api.github.com/repos/o/r",
            &[("X-HTTP-Method-Override", "DELETE")][..],
        ),
        (
            "GET",
            "https://api.github.com/repos/o/r",
            &[("x-method-override", " patch ")][..],
        ),
        (
            "GET",
            "https://api.github.com/repos/o/r",
            &[("X-HTTP-Method", "not a method")][..],
        ),
        (
            "HEAD",
            "https://api.github.com/repos/o/r",
            &[("X-HTTP-Method", "POST")][..],
        ),
        ("GET", "https://api.github.com/graphql?query=mutation", &[][..]),
        ("HEAD", "https://api.github.com/graphql", &[][..]),
        ("POST", "https://github.com/o/r.git/git-upload-pack", &[][..]),
    ] {
        assert!(!reads(method, url, headers), "{method} {url} {headers:?}");
    }
}
