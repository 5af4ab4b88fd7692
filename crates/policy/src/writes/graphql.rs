//! GraphQL mutations, read as the ref updates they make.
//!
//! The document is parsed by `apollo-parser` (with recursion and token limits: a document past
//! them, or with any syntax error, is an unknown write) and every mutation operation in it is
//! read, whichever `operationName` selects: what any of them would write counts. Aliases are
//! looked through, variables are substituted (from `variables`, else their defaults), fragment
//! spreads and inline fragments on the mutation root are followed, and `@skip`/`@include` are
//! ignored (the field counts as run). A batched body (a JSON array of requests), a document in
//! the URL's `query=`, and a raw `application/graphql` body are read too.
//!
//! | mutation | ref updates |
//! |---|---|
//! | `createCommitOnBranch` | fast-forward of `branch.branchName` in `branch.repositoryNameWithOwner` (unnamed for `branch.id`), changing `fileChanges.additions[].path` and `deletions[].path` |
//! | `createRef` | create `name` |
//! | `updateRef` | fast-forward, non-fast-forward with `force: true`, of an unnamed ref (`refId`) |
//! | `updateRefs` | each of `refUpdates`: create (zero `beforeOid`), delete (zero `afterOid`), else as `force` says |
//! | `deleteRef` | delete of an unnamed ref (`refId`) |
//! | `mergePullRequest`, `enablePullRequestAutoMerge`, `enqueuePullRequest` | fast-forward of the pull request's (unnamed) base branch |
//! | `updatePullRequestBranch` | fast-forward of the pull request's (unnamed) head branch |
//! | `mergeBranch` | fast-forward of `base` |
//! | `revertPullRequest` | create of an (unnamed) revert branch |
//!
//! Mutations that touch neither refs nor their protection (comments, issues, reviews, reactions,
//! pull requests opened or edited, …) write nothing here; every other mutation is unknown.
use std::collections::{HashMap, HashSet};

use apollo_parser::{
    Parser,
    cst::{self, CstNode as _},
};
use serde_json::{Map, Value};

use super::{
    ApiRef, FileContent, RefName, RepoFact, Write, branch_ref, decoded_files, full_ref, json, repo_path,
};
use crate::{
    classify::named,
    facts::{Paths, RefKind},
};

/// How deep a document may nest, and how many tokens it may have.
const RECURSION_LIMIT: usize = 64;
const TOKEN_LIMIT: usize = 100_000;

/// Mutations that move no ref and change no protection.
const PLAIN: &[&str] = &[
    "__typename",
    "addComment",
    "updateIssueComment",
    "deleteIssueComment",
    "minimizeComment",
    "unminimizeComment",
    "addReaction",
    "removeReaction",
    "createIssue",
    "updateIssue",
    "closeIssue",
    "reopenIssue",
    "deleteIssue",
    "pinIssue",
    "unpinIssue",
    "transferIssue",
    "addLabelsToLabelable",
    "removeLabelsFromLabelable",
    "clearLabelsFromLabelable",
    "addAssigneesToAssignable",
    "removeAssigneesFromAssignable",
    "lockLockable",
    "unlockLockable",
    "createPullRequest",
    "updatePullRequest",
    "closePullRequest",
    "reopenPullRequest",
    "markPullRequestReadyForReview",
    "convertPullRequestToDraft",
    "requestReviews",
    "addPullRequestReview",
    "submitPullRequestReview",
    "deletePullRequestReview",
    "dismissPullRequestReview",
    "updatePullRequestReview",
    "addPullRequestReviewComment",
    "addPullRequestReviewThread",
    "addPullRequestReviewThreadReply",
    "updatePullRequestReviewComment",
    "deletePullRequestReviewComment",
    "resolveReviewThread",
    "unresolveReviewThread",
    "markFileAsViewed",
    "unmarkFileAsViewed",
    "disablePullRequestAutoMerge",
    "dequeuePullRequest",
    "addStar",
    "removeStar",
    "updateSubscription",
    "createDiscussion",
    "updateDiscussion",
    "addDiscussionComment",
    "updateDiscussionComment",
    "addProjectV2ItemById",
    "updateProjectV2ItemFieldValue",
    "deleteProjectV2Item",
    "followUser",
    "unfollowUser",
    "changeUserStatus",
];

/// What a GraphQL request writes: the URL's `query` (and `variables`) and the body.
pub fn read(url_query: Option<&str>, body: &[u8]) -> Write {
    let mut parts = Vec::new();
    if let Some(q) = url_query {
        let pairs: Vec<(String, String)> = q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (form_decode(k), form_decode(v)))
            .collect();
        let variables = pairs
            .iter()
            .find(|(k, _)| k == "variables")
            .map(|(_, v)| v.clone());
        for (_, doc) in pairs.iter().filter(|(k, _)| k == "query") {
            let vars = match variables.as_deref() {
                None => Ok(Map::new()),
                Some(v) => variables_of(&Value::String(v.to_owned())),
            };
            parts.push(match vars {
                Ok(vars) => document(doc, &vars),
                Err(why) => Write::Unknown(why),
            });
        }
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        parts.push(read_body(body));
    }
    Write::union(parts)
}

fn form_decode(s: &str) -> String {
    super::percent_decode(&s.replace('+', " "))
}

fn read_body(body: &[u8]) -> Write {
    match json::value(body) {
        Ok(Value::Array(requests)) => Write::union(requests.iter().map(request)),
        Ok(v @ Value::Object(_)) => request(&v),
        Ok(_) => Write::Unknown("the GraphQL body is JSON but not a request".into()),
        Err(json_error) => match std::str::from_utf8(body) {
            // `application/graphql`: the document alone.
            Ok(text) if !text.trim_start().starts_with(['{', '[']) => document(text, &Map::new()),
            _ => Write::Unknown(format!("the GraphQL body is {json_error}")),
        },
    }
}

/// One request object: `query`, `variables`.
fn request(v: &Value) -> Write {
    let Some(obj) = v.as_object() else {
        return Write::Unknown("a batched GraphQL request is not an object".into());
    };
    let Some(query) = obj.get("query").and_then(Value::as_str) else {
        return Write::Unknown(
            "the GraphQL request has no query document (a persisted query, or an unknown shape)".into(),
        );
    };
    match obj.get("variables").map_or(Ok(Map::new()), variables_of) {
        Ok(vars) => document(query, &vars),
        Err(why) => Write::Unknown(why),
    }
}

/// `variables`: an object, null, or a string holding one (as some clients send it).
fn variables_of(v: &Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(o) => Ok(o.clone()),
        Value::String(s) if s.trim().is_empty() => Ok(Map::new()),
        Value::String(s) => json::object(s.as_bytes()).map_err(|e| format!("the GraphQL variables are {e}")),
        _ => Err("the GraphQL variables are not an object".into()),
    }
}

/// What one document's mutations write.
pub fn document(text: &str, variables: &Map<String, Value>) -> Write {
    let tree = Parser::new(text)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if let Some(e) = tree.errors().next() {
        return Write::Unknown(format!(
            "the GraphQL document is not read: {} (at byte {})",
            e.message(),
            e.index()
        ));
    }
    let doc = tree.document();
    let mut fragments: HashMap<String, cst::SelectionSet> = HashMap::new();
    for def in doc.definitions() {
        if let cst::Definition::FragmentDefinition(f) = def {
            let Some(name) = f
                .fragment_name()
                .and_then(|n| n.name())
                .map(|n| n.text().to_string())
            else {
                return Write::Unknown("a GraphQL fragment has no name".into());
            };
            let Some(set) = f.selection_set() else {
                return Write::Unknown(format!("GraphQL fragment {name} has no selections"));
            };
            if fragments.insert(name.clone(), set).is_some() {
                return Write::Unknown(format!("GraphQL fragment {name} is defined twice"));
            }
        }
    }
    let mut parts = Vec::new();
    for def in doc.definitions() {
        match def {
            cst::Definition::OperationDefinition(op) => {
                let is_mutation = op.operation_type().is_some_and(|t| t.mutation_token().is_some());
                if !is_mutation {
                    continue;
                }
                let mut defaults = Map::new();
                if let Some(defs) = op.variable_definitions() {
                    for d in defs.variable_definitions() {
                        let name = d.variable().map(|v| v.text().to_string()).unwrap_or_default();
                        if let Some(v) = d.default_value().and_then(|dv| dv.value()) {
                            match value(&v, &Map::new(), &Map::new()) {
                                Ok(v) => {
                                    defaults.insert(name, v);
                                }
                                Err(why) => parts.push(Write::Unknown(why)),
                            }
                        }
                    }
                }
                let Some(set) = op.selection_set() else {
                    parts.push(Write::Unknown("a GraphQL mutation has no selections".into()));
                    continue;
                };
                let mut fields = Vec::new();
                if let Err(why) = root_fields(&set, &fragments, &mut HashSet::new(), &mut fields) {
                    parts.push(Write::Unknown(why));
                    continue;
                }
                for field in fields {
                    parts.push(field_write(&field, variables, &defaults));
                }
            }
            cst::Definition::FragmentDefinition(_) => {}
            // Type system definitions are no operation; GitHub refuses them.
            other => parts.push(Write::Unknown(format!(
                "the GraphQL document holds a {} definition",
                other.kind()
            ))),
        }
    }
    Write::union(parts)
}

/// The fields a mutation runs at its root, through fragment spreads and inline fragments.
fn root_fields(
    set: &cst::SelectionSet,
    fragments: &HashMap<String, cst::SelectionSet>,
    seen: &mut HashSet<String>,
    out: &mut Vec<cst::Field>,
) -> Result<(), String> {
    for sel in set.selections() {
        match sel {
            cst::Selection::Field(f) => out.push(f),
            cst::Selection::InlineFragment(i) => {
                if let Some(s) = i.selection_set() {
                    root_fields(&s, fragments, seen, out)?;
                }
            }
            cst::Selection::FragmentSpread(s) => {
                let name = s
                    .fragment_name()
                    .and_then(|n| n.name())
                    .map(|n| n.text().to_string())
                    .unwrap_or_default();
                let Some(frag) = fragments.get(&name) else {
                    return Err(format!("GraphQL fragment {name:?} is not defined"));
                };
                if !seen.insert(name.clone()) {
                    // A fragment spread twice on one path runs its fields once; a cycle is refused by GitHub.
                    continue;
                }
                root_fields(frag, fragments, seen, out)?;
            }
        }
    }
    Ok(())
}

/// A CST value as JSON, variables substituted.
fn value(v: &cst::Value, vars: &Map<String, Value>, defaults: &Map<String, Value>) -> Result<Value, String> {
    Ok(match v {
        cst::Value::Variable(var) => {
            let name = var.text().to_string();
            vars.get(&name)
                .or_else(|| defaults.get(&name))
                .cloned()
                .unwrap_or(Value::Null)
        }
        cst::Value::StringValue(s) => Value::String(String::from(s)),
        cst::Value::IntValue(i) => {
            let text = i.syntax().to_string();
            text.trim()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(text))
        }
        cst::Value::FloatValue(f) => Value::String(f.syntax().to_string().trim().to_owned()),
        cst::Value::BooleanValue(b) => Value::Bool(b.true_token().is_some()),
        cst::Value::NullValue(_) => Value::Null,
        cst::Value::EnumValue(e) => Value::String(e.text().to_string()),
        cst::Value::ListValue(l) => Value::Array(
            l.values()
                .map(|v| value(&v, vars, defaults))
                .collect::<Result<_, _>>()?,
        ),
        cst::Value::ObjectValue(o) => {
            let mut m = Map::new();
            for f in o.object_fields() {
                let k = f.name().map(|n| n.text().to_string()).unwrap_or_default();
                let v = match f.value() {
                    Some(v) => value(&v, vars, defaults)?,
                    None => Value::Null,
                };
                if m.insert(k.clone(), v).is_some() {
                    return Err(format!("the GraphQL input field {k:?} is given twice"));
                }
            }
            Value::Object(m)
        }
    })
}

/// The string at a path of keys.
fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn is_zero_oid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// What one root mutation field writes.
fn field_write(field: &cst::Field, vars: &Map<String, Value>, defaults: &Map<String, Value>) -> Write {
    let Some(name) = field.name().map(|n| n.text().to_string()) else {
        return Write::Unknown("a GraphQL field has no name".into());
    };
    let mut args = Map::new();
    if let Some(a) = field.arguments() {
        for arg in a.arguments() {
            let k = arg.name().map(|n| n.text().to_string()).unwrap_or_default();
            let v = match arg.value() {
                Some(v) => match value(&v, vars, defaults) {
                    Ok(v) => v,
                    Err(why) => return Write::Unknown(why),
                },
                None => Value::Null,
            };
            if args.insert(k.clone(), v).is_some() {
                return Write::Unknown(format!("the GraphQL argument {k:?} of {name} is given twice"));
            }
        }
    }
    let input = args.get("input").cloned().unwrap_or(Value::Null);
    mutation(&name, &input)
}

/// What a mutation writes, from its `input`.
pub(crate) fn mutation(name: &str, input: &Value) -> Write {
    let via = format!("GraphQL {name}");
    let node = |key: &str| {
        RepoFact::Node(
            str_at(input, &[key])
                .map(str::to_owned)
                .unwrap_or_else(|| format!("(no {key})")),
        )
    };
    let unknown_paths = |what: &str| Paths::Unknown(what.to_owned());
    let one = |r: ApiRef| Write::Refs(vec![r]);
    match name {
        "createCommitOnBranch" => {
            let branch = input.get("branch").cloned().unwrap_or(Value::Null);
            let (name, repository) = match (
                str_at(&branch, &["repositoryNameWithOwner"]),
                str_at(&branch, &["branchName"]),
            ) {
                (Some(repo), Some(b)) => {
                    let repository = match repo.split_once('/').and_then(|(o, r)| named(o, r)) {
                        Some(r) => RepoFact::Named(r),
                        None => RepoFact::Node(repo.to_owned()),
                    };
                    (RefName::Named(branch_ref(b)), repository)
                }
                _ => (
                    RefName::Unknown(format!(
                        "the branch with node id {}",
                        str_at(&branch, &["id"]).unwrap_or("(none)")
                    )),
                    RepoFact::Node(str_at(&branch, &["id"]).unwrap_or("(none)").to_owned()),
                ),
            };
            let paths = file_changes(input.get("fileChanges"));
            one(ApiRef::new(via, name, RefKind::FastForward)
                .in_repo(repository)
                .with_paths(paths)
                .with_contents(additions(input.get("fileChanges"))))
        }
        "createRef" => {
            let name = match str_at(input, &["name"]) {
                Some(n) => full_ref(n, "the ref"),
                None => RefName::Unknown("a ref createRef does not name".into()),
            };
            one(ApiRef::new(via, name, RefKind::Create)
                .in_repo(node("repositoryId"))
                .with_new(str_at(input, &["oid"]))
                .with_paths(unknown_paths("a new ref's commits are not in the request")))
        }
        "updateRef" | "deleteRef" => {
            let id = str_at(input, &["refId"]).unwrap_or("(none)");
            let kind = if name == "deleteRef" {
                RefKind::Delete
            } else if force(input.get("force")) {
                RefKind::NonFastForward
            } else {
                RefKind::FastForward
            };
            let r = ApiRef::new(via, RefName::Unknown(format!("the ref with node id {id}")), kind)
                .in_repo(RepoFact::Node(format!("of ref {id}")));
            one(if kind == RefKind::Delete {
                r
            } else {
                r.with_new(str_at(input, &["oid"]))
            })
        }
        "updateRefs" => {
            let Some(updates) = input.get("refUpdates").and_then(Value::as_array) else {
                return Write::Unknown("updateRefs without a refUpdates list".into());
            };
            let repository = node("repositoryId");
            let refs = updates
                .iter()
                .map(|u| {
                    let name = match str_at(u, &["name"]) {
                        Some(n) => full_ref(n, "the ref"),
                        None => RefName::Unknown("a ref updateRefs does not name".into()),
                    };
                    let after = str_at(u, &["afterOid"]).unwrap_or_default();
                    let before = str_at(u, &["beforeOid"]).unwrap_or_default();
                    let kind = if is_zero_oid(after) {
                        RefKind::Delete
                    } else if is_zero_oid(before) {
                        RefKind::Create
                    } else if force(u.get("force")) {
                        RefKind::NonFastForward
                    } else {
                        RefKind::FastForward
                    };
                    let r = ApiRef::new(&via, name, kind).in_repo(repository.clone());
                    if kind == RefKind::Delete {
                        r
                    } else {
                        r.with_new(Some(after))
                    }
                })
                .collect::<Vec<_>>();
            if refs.is_empty() {
                Write::None
            } else {
                Write::Refs(refs)
            }
        }
        "mergePullRequest"
        | "enablePullRequestAutoMerge"
        | "enqueuePullRequest"
        | "updatePullRequestBranch" => {
            let pr = str_at(input, &["pullRequestId"]).unwrap_or("(none)");
            let which = if name == "updatePullRequestBranch" {
                "head"
            } else {
                "base"
            };
            one(ApiRef::new(
                via,
                RefName::Unknown(format!("the {which} branch of pull request {pr}")),
                RefKind::FastForward,
            )
            .in_repo(RepoFact::Node(format!("of pull request {pr}")))
            .with_paths(unknown_paths("the pull request's changes")))
        }
        "mergeBranch" => {
            let name = match str_at(input, &["base"]) {
                Some(b) => RefName::Named(branch_ref(b)),
                None => RefName::Unknown("a branch mergeBranch does not name".into()),
            };
            one(ApiRef::new(via, name, RefKind::FastForward)
                .in_repo(node("repositoryId"))
                .with_paths(unknown_paths("the merged changes")))
        }
        "revertPullRequest" => {
            let pr = str_at(input, &["pullRequestId"]).unwrap_or("(none)");
            one(ApiRef::new(
                via,
                RefName::Unknown(format!("the branch reverting pull request {pr}")),
                RefKind::Create,
            )
            .in_repo(RepoFact::Node(format!("of pull request {pr}")))
            .with_paths(unknown_paths("the reverted changes")))
        }
        n if PLAIN.contains(&n) => Write::None,
        n => Write::Unknown(format!("GraphQL mutation {n} is not one the gateway knows")),
    }
}

/// `force`: only `false` and absence are no force (the riskier reading of anything else).
fn force(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)))
}

/// The files `fileChanges.additions` carries (`contents` is base64), decoded.
fn additions(v: Option<&Value>) -> Result<Vec<FileContent>, String> {
    let items = match v.filter(|v| !v.is_null()).map(|v| v.get("additions")) {
        None | Some(None) | Some(Some(Value::Null)) => return Ok(Vec::new()),
        Some(Some(Value::Array(items))) => items,
        Some(Some(_)) => return Err("fileChanges.additions is not a list".into()),
    };
    decoded_files(items.iter().map(|item| {
        (
            str_at(item, &["path"]).map_or_else(|| "(no path)".to_owned(), repo_path),
            str_at(item, &["contents"]),
        )
    }))
}

/// The paths of `fileChanges`.
fn file_changes(v: Option<&Value>) -> Paths {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Paths::Known(Vec::new());
    };
    let mut paths = Vec::new();
    for key in ["additions", "deletions"] {
        match v.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    match str_at(item, &["path"]) {
                        Some(p) => paths.push(repo_path(p)),
                        None => return Paths::Unknown(format!("a fileChanges.{key} entry has no path")),
                    }
                }
            }
            Some(_) => return Paths::Unknown(format!("fileChanges.{key} is not a list")),
        }
    }
    Paths::Known(paths)
}
