//! What a ref update changes, found by walking commits and trees: whether it is a fast-forward
//! ([`fast_forward`]) and which file paths it touches ([`changed_paths`]).
//!
//! Objects come from an [`ObjectSource`]: first the pushed pack ([`PackObjects`], which this
//! crate provides), then another source for what the pack does not hold (the daemon's reads
//! GitHub's API). The walks never answer what they cannot prove: a thin pack's delta against a
//! base the pack does not hold, an object found nowhere, an exhausted [`Budget`] or a source that
//! cannot answer make the answer undecidable (`Err`), which callers treat as the riskier one.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::object::{Commit, ObjectKind, Tag, TreeEntry};
use crate::oid::Oid;
use crate::pack::decode::PackObjects;

/// Where commits and trees come from. `Ok(None)`: the source does not have it. `Err`: it could not
/// tell. `Send` futures, so that the walks are `Send` futures too.
pub trait ObjectSource: Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    fn commit(&self, id: &Oid) -> impl Future<Output = Result<Option<Commit>, Self::Error>> + Send;

    fn tree(&self, id: &Oid) -> impl Future<Output = Result<Option<Vec<TreeEntry>>, Self::Error>> + Send;

    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`, both in the source.
    /// `Ok(None)`: cannot tell (one of them is unknown there, say).
    fn is_ancestor(
        &self,
        ancestor: &Oid,
        descendant: &Oid,
    ) -> impl Future<Output = Result<Option<bool>, Self::Error>> + Send;

    /// The annotated tag `id`, if the source holds one by that id (`Ok(None)`: it has no such
    /// tag, and `id` may be any other kind of object). A source that knows no tags says so.
    fn tag(&self, _id: &Oid) -> impl Future<Output = Result<Option<Tag>, Self::Error>> + Send {
        async { Ok(None) }
    }
}

impl ObjectSource for PackObjects {
    type Error = Infallible;

    async fn commit(&self, id: &Oid) -> Result<Option<Commit>, Infallible> {
        Ok(self.commits.get(id).cloned())
    }

    async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, Infallible> {
        Ok(self.trees.get(id).map(|t| t.to_vec()))
    }

    /// Answered from the pack's commits alone: `None` when the walk leaves the pack (or the pack
    /// has unresolved deltas, any of which may be a commit on the way).
    async fn tag(&self, id: &Oid) -> Result<Option<Tag>, Infallible> {
        Ok(self.tags.get(id).cloned())
    }

    async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, Infallible> {
        let mut seen = HashSet::from([*descendant]);
        let mut stack = vec![*descendant];
        while let Some(id) = stack.pop() {
            if id == *ancestor {
                return Ok(Some(true));
            }
            match self.commits.get(&id) {
                Some(c) => stack.extend(c.parents.iter().filter(|p| seen.insert(**p))),
                None => return Ok(None),
            }
        }
        Ok((self.unresolved == 0).then_some(false))
    }
}

/// How much work on the other source one answer may take. The deadline is checked before each
/// lookup; a lookup that hangs is the caller's to time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_remote_calls: usize,
    pub deadline: Instant,
}

/// Why an answer could not be found.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("the deadline passed before {0}")]
    Deadline(String),
    #[error("more than {max} upstream lookups would be needed (the next: {next})")]
    Budget { max: usize, next: String },
    #[error("{kind} {id} is neither in the pack nor upstream{}", Suffix(.thin))]
    Missing {
        kind: &'static str,
        id: Oid,
        thin: Option<Thin>,
    },
    #[error("reading {kind} {id} upstream: {source}")]
    Source {
        kind: &'static str,
        id: Oid,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upstream cannot tell whether {old} is an ancestor of {id}")]
    Unknown { old: Oid, id: Oid },
    #[error("asking upstream whether {old} is an ancestor of {id}: {source}")]
    Ancestry {
        old: Oid,
        id: Oid,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no path from {new} to the old value was found, but {thin}")]
    NoPath { new: Oid, thin: Thin },
    #[error("tree {id} has two entries named \"{name}\"")]
    Duplicate { id: String, name: String },
    #[error("{id} is a tag of a tag of … more than {MAX_TAG_DEPTH} deep")]
    TagDepth { id: Oid },
}

/// What a thin pack leaves unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thin {
    pub unresolved: usize,
    /// Up to three of the bases the pack does not hold.
    pub bases: Vec<Oid>,
}

impl fmt::Display for Thin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bases: Vec<String> = self.bases.iter().map(Oid::to_string).collect();
        write!(
            f,
            "the pack holds {} deltas against objects it does not hold (a thin pack: bases such as {}), \
             and it may be one of those",
            self.unresolved,
            bases.join(", ")
        )
    }
}

struct Suffix<'a>(&'a Option<Thin>);

impl fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(thin) => write!(f, "; {thin}"),
            None => Ok(()),
        }
    }
}

/// One answer's lookups: the pack first, then the other source (each object asked once).
struct Lookup<'a, R> {
    pack: &'a PackObjects,
    remote: &'a R,
    budget: &'a Budget,
    calls: usize,
    commits: HashMap<Oid, Commit>,
    trees: HashMap<Oid, Arc<[TreeEntry]>>,
}

impl<'a, R: ObjectSource> Lookup<'a, R> {
    fn new(pack: &'a PackObjects, remote: &'a R, budget: &'a Budget) -> Self {
        Self {
            pack,
            remote,
            budget,
            calls: 0,
            commits: HashMap::new(),
            trees: HashMap::new(),
        }
    }

    fn in_time(&self, doing: impl fmt::Display) -> Result<(), WalkError> {
        if Instant::now() > self.budget.deadline {
            return Err(WalkError::Deadline(doing.to_string()));
        }
        Ok(())
    }

    /// Counts one call on the other source against the budget.
    fn spend(&mut self, doing: impl fmt::Display) -> Result<(), WalkError> {
        self.in_time(&doing)?;
        if self.calls >= self.budget.max_remote_calls {
            return Err(WalkError::Budget {
                max: self.budget.max_remote_calls,
                next: doing.to_string(),
            });
        }
        self.calls += 1;
        Ok(())
    }

    fn thin(&self) -> Option<Thin> {
        (self.pack.unresolved > 0).then(|| Thin {
            unresolved: self.pack.unresolved,
            bases: self.pack.missing_bases.iter().take(3).copied().collect(),
        })
    }

    async fn commit(&mut self, id: &Oid) -> Result<Commit, WalkError> {
        if let Some(commit) = self.pack.commits.get(id).or(self.commits.get(id)) {
            return Ok(commit.clone());
        }
        self.spend(format_args!("reading commit {id}"))?;
        match self.remote.commit(id).await {
            Ok(Some(commit)) => {
                self.commits.insert(*id, commit.clone());
                Ok(commit)
            }
            Ok(None) => Err(WalkError::Missing {
                kind: "commit",
                id: *id,
                thin: self.thin(),
            }),
            Err(e) => Err(WalkError::Source {
                kind: "commit",
                id: *id,
                source: Box::new(e),
            }),
        }
    }

    async fn tree(&mut self, id: &Oid) -> Result<Arc<[TreeEntry]>, WalkError> {
        if let Some(tree) = self.pack.trees.get(id).or(self.trees.get(id)) {
            return Ok(Arc::clone(tree));
        }
        self.spend(format_args!("reading tree {id}"))?;
        match self.remote.tree(id).await {
            Ok(Some(tree)) => {
                let tree: Arc<[TreeEntry]> = tree.into();
                self.trees.insert(*id, Arc::clone(&tree));
                Ok(tree)
            }
            Ok(None) => Err(WalkError::Missing {
                kind: "tree",
                id: *id,
                thin: self.thin(),
            }),
            Err(e) => Err(WalkError::Source {
                kind: "tree",
                id: *id,
                source: Box::new(e),
            }),
        }
    }
}

/// Whether updating a ref from `old` to `new` (both non-zero) is a fast-forward: `Ok(true)` when
/// `old` is an ancestor of `new`, `Ok(false)` when it is not, `Err` when that cannot be told
/// (callers treat it as a force push).
///
/// Walks from `new` through the pack's commits; reaching `old` answers at once. Commits outside
/// the pack are the other source's: each is asked whether `old` is its ancestor (any yes is a
/// yes). When `new` itself is not in the pack (`git push --force origin HEAD~1:main` sends no
/// objects), the other source is asked about `new` directly.
pub async fn fast_forward<R: ObjectSource>(
    pack: &PackObjects,
    old: &Oid,
    new: &Oid,
    remote: &R,
    budget: &Budget,
) -> Result<bool, WalkError> {
    if old == new {
        return Ok(true);
    }
    let mut lookup = Lookup::new(pack, remote, budget);
    let mut seen = HashSet::from([*new]);
    let mut stack = vec![*new];
    let mut boundary = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if id == *old {
            return Ok(true);
        }
        match pack.commits.get(&id) {
            Some(commit) => stack.extend(commit.parents.iter().filter(|p| seen.insert(**p))),
            None => {
                boundary.insert(id);
            }
        }
    }
    let mut unknown = None;
    for id in &boundary {
        lookup.spend(format_args!("asking whether {old} is an ancestor of {id}"))?;
        match remote.is_ancestor(old, id).await {
            Ok(Some(true)) => return Ok(true),
            Ok(Some(false)) => {}
            Ok(None) => {
                unknown.get_or_insert(WalkError::Unknown { old: *old, id: *id });
            }
            Err(e) => {
                unknown.get_or_insert(WalkError::Ancestry {
                    old: *old,
                    id: *id,
                    source: Box::new(e),
                });
            }
        }
    }
    if let Some(why) = unknown {
        return Err(why);
    }
    // No: unless unresolved deltas might hold the commit that would have made it yes.
    match lookup.thin() {
        Some(thin) => Err(WalkError::NoPath { new: *new, thin }),
        None => Ok(false),
    }
}

/// The file paths (`dir/sub/file`, sorted) an update of a ref to `new` changes: the difference
/// between the trees of `old` and `new` when `old` is given, and for every commit of the pack
/// reachable from `new`, its difference from each of its parents (every parent of a merge, which
/// may report more than the merge brought, never less) or, for a root commit, all its files.
///
/// A file added, removed, changed, or whose mode or type changed counts; a directory added or
/// removed counts as each file under it (read from the pack or the other source), so a pattern
/// matcher sees the same paths either way. `interesting(dir)` is asked for each directory
/// (`"src"`, `".github/workflows"`) whose content differs: when it says no, nothing under it is
/// read or reported. `Err`: undecidable; callers treat it as touching every protected path.
///
/// With `old` None (a new ref), only the pack's commits are compared: a new ref at a commit the
/// other source already has reports nothing. To ask what a new branch changes relative to the
/// default branch, pass the default branch's head as `old`.
pub async fn changed_paths<R: ObjectSource>(
    pack: &PackObjects,
    old: Option<&Oid>,
    new: &Oid,
    remote: &R,
    interesting: &(dyn Fn(&str) -> bool + Sync),
    budget: &Budget,
) -> Result<Vec<String>, WalkError> {
    let mut lookup = Lookup::new(pack, remote, budget);
    let mut pairs: Vec<(Option<Oid>, Oid)> = Vec::new();
    if let Some(old) = old {
        let from = lookup.commit(old).await?.tree;
        let to = lookup.commit(new).await?.tree;
        pairs.push((Some(from), to));
    }
    let mut seen = HashSet::from([*new]);
    let mut stack = vec![*new];
    while let Some(id) = stack.pop() {
        lookup.in_time(format_args!("walking commit {id}"))?;
        let Some(commit) = pack.commits.get(&id) else {
            continue;
        };
        if commit.parents.is_empty() {
            pairs.push((None, commit.tree));
        }
        for parent in &commit.parents {
            let from = lookup.commit(parent).await?.tree;
            pairs.push((Some(from), commit.tree));
            if seen.insert(*parent) {
                stack.push(*parent);
            }
        }
    }

    let mut paths = BTreeSet::new();
    let mut done = HashSet::new();
    let mut work: Vec<(Vec<u8>, Option<Oid>, Option<Oid>)> =
        pairs.into_iter().map(|(a, b)| (Vec::new(), a, Some(b))).collect();
    while let Some((prefix, a, b)) = work.pop() {
        if a == b || !done.insert((prefix.clone(), a, b)) {
            continue;
        }
        lookup.in_time(format_args!("comparing \"{}\"", String::from_utf8_lossy(&prefix)))?;
        let a_tree = match a {
            Some(id) => lookup.tree(&id).await?,
            None => Arc::from([]),
        };
        let b_tree = match b {
            Some(id) => lookup.tree(&id).await?,
            None => Arc::from([]),
        };
        let (a_map, b_map) = (by_name(&a_tree, a)?, by_name(&b_tree, b)?);
        let names: BTreeSet<&[u8]> = a_map.keys().chain(b_map.keys()).copied().collect();
        for name in names {
            let (x, y) = (a_map.get(name), b_map.get(name));
            if x.map(|e| (e.mode, e.id)) == y.map(|e| (e.mode, e.id)) {
                continue;
            }
            let mut path = prefix.clone();
            path.extend_from_slice(name);
            if x.is_some_and(|e| !e.is_tree()) || y.is_some_and(|e| !e.is_tree()) {
                paths.insert(String::from_utf8_lossy(&path).into_owned());
            }
            let subtree = |e: Option<&&TreeEntry>| e.filter(|e| e.is_tree()).map(|e| e.id);
            let (x, y) = (subtree(x), subtree(y));
            if x != y && interesting(&String::from_utf8_lossy(&path)) {
                path.push(b'/');
                work.push((path, x, y));
            }
        }
    }
    Ok(paths.into_iter().collect())
}

/// Annotated tags nest at most this deep before peeling gives up (git's own limit is lower).
const MAX_TAG_DEPTH: usize = 16;

/// What a ref's new value is once its annotated tags are peeled: a ref may point at a tag that
/// points at a tag that points at a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeled {
    /// A commit (or an object neither the pack nor the other source holds as a tag: taken to
    /// be a commit, which the walks then read and fail on if it is not one).
    Commit(Oid),
    /// A tag of a tree or a blob: it changes no branch's files.
    Other(ObjectKind, Oid),
}

/// Peels `id` through the annotated tags of the pack, then of the other source (each lookup
/// counted against the budget).
pub async fn peel<R: ObjectSource>(
    pack: &PackObjects,
    id: &Oid,
    remote: &R,
    budget: &Budget,
) -> Result<Peeled, WalkError> {
    let mut lookup = Lookup::new(pack, remote, budget);
    let mut at = *id;
    for _ in 0..MAX_TAG_DEPTH {
        if pack.commits.contains_key(&at) {
            return Ok(Peeled::Commit(at));
        }
        let tag = match pack.tags.get(&at) {
            Some(t) => t.clone(),
            None => {
                lookup.spend(format_args!("reading tag {at}"))?;
                match remote.tag(&at).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return Ok(Peeled::Commit(at)),
                    Err(e) => {
                        return Err(WalkError::Source {
                            kind: "tag",
                            id: at,
                            source: Box::new(e),
                        });
                    }
                }
            }
        };
        match tag.kind {
            ObjectKind::Tag => at = tag.object,
            ObjectKind::Commit => return Ok(Peeled::Commit(tag.object)),
            kind => return Ok(Peeled::Other(kind, tag.object)),
        }
    }
    Err(WalkError::TagDepth { id: *id })
}

/// The place [`blob_places`] gives a secret in a commit's message (or its author lines).
pub const COMMIT_MESSAGE: &str = "<commit message>";

/// The place [`blob_places`] gives a secret in the message of the annotated tag `name`.
pub fn tag_message(name: &str) -> String {
    format!("<message of tag {name}>")
}

/// Where each of `blobs` is in the commits of the pack reachable from `new`: for each blob, the
/// (commit, path) pairs where a commit brings it to a path that none of its parents in the pack
/// has it at. Only the pack's trees are read (a tree the pack does not hold is upstream's, and
/// cannot hold a blob upstream does not have); a blob found in no pushed tree is left out.
///
/// `blobs` may name commits and annotated tags too (a secret in a message): a commit of the pack
/// reachable from `new` is placed at itself, path [`COMMIT_MESSAGE`]; a tag of the pack that
/// `new` peels through at the commit it peels to, path [`tag_message`] of its name.
pub fn blob_places(pack: &PackObjects, new: &Oid, blobs: &HashSet<Oid>) -> HashMap<Oid, Vec<(Oid, String)>> {
    fn contents(
        pack: &PackObjects,
        tree: &Oid,
        blobs: &HashSet<Oid>,
        memo: &mut HashMap<Oid, Arc<BTreeSet<(String, Oid)>>>,
        depth: usize,
    ) -> Arc<BTreeSet<(String, Oid)>> {
        if let Some(found) = memo.get(tree) {
            return Arc::clone(found);
        }
        let mut found = BTreeSet::new();
        if let Some(entries) = pack.trees.get(tree).filter(|_| depth < 4096) {
            for e in entries.iter() {
                let name = String::from_utf8_lossy(&e.name);
                if e.is_tree() {
                    for (path, id) in contents(pack, &e.id, blobs, memo, depth + 1).iter() {
                        found.insert((format!("{name}/{path}"), *id));
                    }
                } else if blobs.contains(&e.id) {
                    found.insert((name.into_owned(), e.id));
                }
            }
        }
        let found = Arc::new(found);
        memo.insert(*tree, Arc::clone(&found));
        found
    }
    let mut memo = HashMap::new();
    let mut out: HashMap<Oid, Vec<(Oid, String)>> = HashMap::new();
    // Through the pack's tags to what they tag (a chain as long as git would follow).
    let mut head = *new;
    let mut tags = Vec::new();
    while let Some(tag) = pack.tags.get(&head).filter(|_| tags.len() < MAX_TAG_DEPTH) {
        tags.push((head, tag.name.clone()));
        head = tag.object;
    }
    for (id, name) in tags {
        if blobs.contains(&id) {
            out.entry(id).or_default().push((head, tag_message(&name)));
        }
    }
    let mut seen = HashSet::from([head]);
    let mut stack = vec![head];
    let mut commits = Vec::new();
    while let Some(id) = stack.pop() {
        let Some(commit) = pack.commits.get(&id) else {
            continue;
        };
        commits.push(id);
        if blobs.contains(&id) {
            out.entry(id).or_default().push((id, COMMIT_MESSAGE.to_owned()));
        }
        stack.extend(commit.parents.iter().filter(|p| seen.insert(**p)));
    }
    for id in commits {
        let commit = &pack.commits[&id];
        let here = contents(pack, &commit.tree, blobs, &mut memo, 0);
        let parents: Vec<_> = commit
            .parents
            .iter()
            .filter_map(|p| pack.commits.get(p))
            .map(|p| contents(pack, &p.tree, blobs, &mut memo, 0))
            .collect();
        for (path, blob) in here.iter() {
            if !parents.iter().any(|p| p.contains(&(path.clone(), *blob))) {
                out.entry(*blob).or_default().push((id, path.clone()));
            }
        }
    }
    for places in out.values_mut() {
        places.sort();
    }
    out
}

/// A tree's entries by name; two entries of one name make any diff of it ambiguous.
fn by_name(tree: &[TreeEntry], id: Option<Oid>) -> Result<BTreeMap<&[u8], &TreeEntry>, WalkError> {
    let mut map = BTreeMap::new();
    for entry in tree {
        if map.insert(&entry.name[..], entry).is_some() {
            return Err(WalkError::Duplicate {
                id: id.map_or_else(|| "(none)".to_owned(), |id| id.to_string()),
                name: entry.name.escape_ascii().to_string(),
            });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::ObjectFormat;
    use crate::pack::decode::decode;
    use crate::pack::decode::tests::{check_against_git, limits, reseal};
    use crate::testutil::repo::{GitFailed, GitRemote, Repo, oid};
    use crate::testutil::{big, block_on};

    fn budget() -> Budget {
        Budget {
            max_remote_calls: 10_000,
            deadline: Instant::now() + Duration::from_secs(300),
        }
    }

    fn everything(_: &str) -> bool {
        true
    }

    /// Only what can hold workflows: `.github`, `.github/workflows` and below.
    fn workflows(dir: &str) -> bool {
        dir == ".github" || dir == ".github/workflows" || dir.starts_with(".github/workflows/")
    }

    fn not_many(dir: &str) -> bool {
        dir != "many"
    }

    /// Paths whose every directory `interesting` accepts.
    fn pruned(paths: &BTreeSet<String>, interesting: fn(&str) -> bool) -> BTreeSet<String> {
        paths
            .iter()
            .filter(|p| {
                let mut dirs = p.match_indices('/').map(|(i, _)| &p[..i]);
                dirs.all(interesting)
            })
            .cloned()
            .collect()
    }

    fn unpack(raw: &[u8]) -> PackObjects {
        decode(raw, ObjectFormat::Sha1, &limits()).unwrap()
    }

    fn paths<R: ObjectSource>(
        pack: &PackObjects,
        old: Option<&str>,
        new: &str,
        remote: &R,
        interesting: fn(&str) -> bool,
    ) -> Result<BTreeSet<String>, String> {
        let old = old.map(oid);
        let found = block_on(changed_paths(
            pack,
            old.as_ref(),
            &oid(new),
            remote,
            &interesting,
            &budget(),
        ))
        .map_err(|e| e.to_string())?;
        let sorted = found.windows(2).all(|w| w[0] < w[1]);
        assert!(sorted, "sorted and without duplicates: {found:?}");
        Ok(found.into_iter().collect())
    }

    fn ff<R: ObjectSource>(pack: &PackObjects, old: &str, new: &str, remote: &R) -> Result<bool, String> {
        block_on(fast_forward(pack, &oid(old), &oid(new), remote, &budget())).map_err(|e| e.to_string())
    }

    /// main at `a` upstream; locally `b` and `c` on top of it.
    fn linear() -> (Repo, String, String, String) {
        let r = Repo::new();
        r.write("README", "hello\n");
        r.write("src/lib.rs", &big(300, "v1"));
        r.write("src/deep/nested/x.rs", "x1\n");
        r.write("docs/guide.md", &big(200, "g1"));
        let a = r.commit("a");
        r.publish(&a, "main");
        r.write("src/lib.rs", &big(310, "v2"));
        let b = r.commit("b");
        r.write("src/deep/nested/x.rs", "x2\n");
        r.write("src/deep/nested/new.rs", "new\n");
        let c = r.commit("c");
        (r, a, b, c)
    }

    #[test]
    fn fast_forward_push() {
        let (r, a, b, c) = linear();
        for options in [&["--delta-base-offset"][..], &[]] {
            let pack = unpack(&r.pack(&format!("{c}\n^{a}\n"), options));
            check_against_git(&r, &pack, &[&c, &format!("^{a}")]);
            let remote = r.remote();
            assert_eq!(ff(&pack, &a, &c, &remote), Ok(true));
            assert_eq!(ff(&pack, &b, &c, &remote), Ok(true));
            assert_eq!(
                remote.calls(),
                (0, 0, 0),
                "the old value is a pushed commit's parent"
            );

            let found = paths(&pack, Some(&a), &c, &remote, everything).unwrap();
            assert_eq!(found, r.git_paths(Some(&a), &c, &[&a]));
            assert!(found.contains("src/deep/nested/x.rs") && found.contains("src/deep/nested/new.rs"));
            assert!(!found.contains("docs/guide.md") && !found.contains("README"));
        }
    }

    #[test]
    fn force_push_is_not_a_fast_forward() {
        let (r, a, _, c) = linear();
        r.publish(&c, "main");
        // Rewrite history: drop b and c, commit something else on a.
        r.git(&["reset", "-q", "--hard", &a]);
        r.write("src/lib.rs", "rewritten\n");
        let d = r.commit("d");
        let pack = unpack(&r.pack(&format!("{d}\n^{c}\n"), &[]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &d, &remote), Ok(false));
        assert_eq!(
            remote.calls(),
            (0, 0, 1),
            "one question about the boundary commit a"
        );
        let found = paths(&pack, Some(&c), &d, &remote, everything).unwrap();
        assert_eq!(found, r.git_paths(Some(&c), &d, &[&c]));
        assert!(
            found.contains("src/deep/nested/new.rs"),
            "a file the rewrite drops counts"
        );

        // A history with nothing in common: every ancestor is in the pack and none is `c`.
        r.git(&["checkout", "-q", "--orphan", "other"]);
        r.write("only.txt", "alone\n");
        let e = r.commit("e");
        let pack = unpack(&r.pack(&format!("{e}\n^{c}\n"), &[]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &e, &remote), Ok(false));
        assert_eq!(remote.calls(), (0, 0, 0));
    }

    #[test]
    fn pushing_a_commit_upstream_already_has() {
        let (r, a, b, c) = linear();
        r.publish(&c, "main");
        // `git push --force origin HEAD~1:main`: the pack holds no objects.
        let pack = unpack(&r.pack(&format!("{b}\n^{c}\n"), &[]));
        assert_eq!(pack.objects(), 0);
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &b, &remote), Ok(false));
        assert_eq!(remote.calls(), (0, 0, 1));
        let found = paths(&pack, Some(&c), &b, &remote, everything).unwrap();
        assert_eq!(
            found,
            BTreeSet::from(["src/deep/nested/new.rs".into(), "src/deep/nested/x.rs".into()])
        );

        // Moving main forward to a commit another branch already has upstream.
        r.publish(&a, "main");
        let remote = r.remote();
        assert_eq!(ff(&pack, &a, &c, &remote), Ok(true));
        assert_eq!(remote.calls(), (0, 0, 1));
    }

    #[test]
    fn branch_creation() {
        let (r, a, _, c) = linear();
        let pack = unpack(&r.pack(&format!("{c}\n^{a}\n"), &["--delta-base-offset"]));
        let remote = r.remote();
        let found = paths(&pack, None, &c, &remote, everything).unwrap();
        assert_eq!(found, r.git_paths(None, &c, &[&a]));
        assert!(found.contains("src/lib.rs"));

        // A new ref at a commit upstream has: no objects, nothing new.
        let empty = unpack(&r.pack(&format!("{a}\n^{a}\n"), &[]));
        assert_eq!(paths(&empty, None, &a, &remote, everything), Ok(BTreeSet::new()));
        // Against the default branch instead, what the branch differs by.
        let found = paths(&pack, Some(&a), &c, &remote, everything).unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &c, &[&a]));

        // The first push to an empty repository: root commit and all.
        let pack = unpack(&r.pack(&format!("{c}\n"), &[]));
        let found = paths(&pack, None, &c, &remote, everything).unwrap();
        assert!(found.contains("README") && found.contains("docs/guide.md"));
        assert_eq!(found, r.git_paths(None, &c, &[]));
    }

    #[test]
    fn merge_commits() {
        let (r, a, _, c) = linear();
        r.git(&["checkout", "-q", "-b", "feature", &a]);
        r.write(".github/workflows/ci.yml", "on: push\n");
        r.write("src/feature.rs", "feature\n");
        let f = r.commit("feature");
        r.git(&["checkout", "-q", "main"]);
        r.git(&["merge", "-q", "--no-ff", "-m", "merge", "feature"]);
        let m = r.git(&["rev-parse", "HEAD"]);
        let pack = unpack(&r.pack(&format!("{m}\n^{a}\n"), &["--delta-base-offset"]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &a, &m, &remote), Ok(true));
        assert_eq!(ff(&pack, &f, &m, &remote), Ok(true));
        let found = paths(&pack, Some(&a), &m, &remote, everything).unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &m, &[&a]));
        assert!(found.contains(".github/workflows/ci.yml") && found.contains("src/deep/nested/x.rs"));

        // The feature branch is already upstream: the merge's second parent is a boundary.
        r.publish(&c, "main");
        r.publish(&f, "feature");
        let pack = unpack(&r.pack(&format!("{m}\n^{c}\n^{f}\n"), &[]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &m, &remote), Ok(true));
        let found = paths(&pack, Some(&c), &m, &remote, workflows).unwrap();
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
    }

    #[test]
    fn type_and_mode_changes_count() {
        let r = Repo::new();
        r.write("docs/a.md", "a\n");
        r.write("docs/sub/b.md", "b\n");
        r.write("run.sh", "echo\n");
        r.write("link", "x\n");
        let a = r.commit("a");
        r.publish(&a, "main");
        r.remove("docs");
        r.write("docs", "now a file\n");
        r.git(&["update-index", "--chmod=+x", "run.sh"]);
        r.git(&["commit", "-q", "-m", "chmod"]);
        r.remove("link");
        std::os::unix::fs::symlink("run.sh", r.work.join("link")).unwrap();
        let b = r.commit("b");
        let pack = unpack(&r.pack(&format!("{b}\n^{a}\n"), &[]));
        let found = paths(&pack, Some(&a), &b, &r.remote(), everything).unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &b, &[&a]));
        let expected = ["docs", "docs/a.md", "docs/sub/b.md", "link", "run.sh"];
        assert_eq!(found, expected.iter().map(|p| p.to_string()).collect());
    }

    /// A repository with many directories besides `.github`, upstream at the first commit.
    fn sprawling() -> (Repo, String) {
        let r = Repo::new();
        for dir in ["src/a", "src/b", "src/c", "docs", "tests/x"] {
            for i in 0..20 {
                r.write(&format!("{dir}/file{i}.rs"), &format!("{dir} {i}\n"));
            }
        }
        r.write(".github/CODEOWNERS", "* @owner\n");
        let a = r.commit("a");
        r.publish(&a, "main");
        (r, a)
    }

    #[test]
    fn workflow_changes_are_found_and_other_directories_pruned() {
        let (r, a) = sprawling();
        let check = |old: &str, new: &str| {
            let pack = unpack(&r.pack(&format!("{new}\n^{old}\n"), &["--delta-base-offset"]));
            let truth = r.git_paths(Some(old), new, &[old]);
            let all = r.remote();
            assert_eq!(paths(&pack, Some(old), new, &all, everything).unwrap(), truth);
            let only = r.remote();
            let found = paths(&pack, Some(old), new, &only, workflows).unwrap();
            assert_eq!(found, pruned(&truth, workflows));
            (found, only.calls(), all.calls())
        };

        // Added, alongside changes deep in src/: the pruned walk never reads src/ upstream.
        r.write(".github/workflows/ci.yml", "on: push\n");
        r.write("src/c/file3.rs", "changed\n");
        r.write("docs/file1.rs", "changed\n");
        let b = r.commit("b");
        let (found, only, all) = check(&a, &b);
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        // commit a, then the trees of a at the root and in .github.
        assert_eq!(only, (1, 2, 0));
        // ...against the root, src, src/c, docs and .github without pruning.
        assert_eq!(all, (1, 5, 0));
        r.publish(&b, "main");

        // Modified.
        r.write(".github/workflows/ci.yml", "on: pull_request\n");
        r.write("src/a/file0.rs", "changed\n");
        let c = r.commit("c");
        let (found, only, all) = check(&b, &c);
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        assert_eq!(only, (1, 3, 0));
        assert_eq!(all, (1, 5, 0));
        r.publish(&c, "main");

        // Deleted, with the whole directory: its files are read upstream.
        r.remove(".github/workflows");
        r.write("tests/x/file2.rs", "changed\n");
        let d = r.commit("d");
        let (found, only, _) = check(&c, &d);
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
        assert_eq!(only, (1, 3, 0));

        // Moved under a directory the filter prunes: still reported where it left.
        r.publish(&c, "main");
        r.git(&["reset", "-q", "--hard", &c]);
        r.git(&["mv", ".github/workflows/ci.yml", "docs/ci.yml"]);
        let e = r.commit("e");
        let (found, _, _) = check(&c, &e);
        assert_eq!(found, BTreeSet::from([".github/workflows/ci.yml".into()]));
    }

    #[test]
    fn thin_packs_are_answered_only_when_provable() {
        // A root tree of two entries, which git stores whole.
        let r = Repo::new();
        for i in 0..300 {
            r.write(&format!("many/file-{i:03}.txt"), &format!("file {i}\n"));
        }
        r.write("big.txt", &big(400, "v1"));
        let b = r.commit("b");
        r.publish(&b, "main");

        // Only big.txt changes: its new version is a delta against the upstream blob.
        r.write("big.txt", &big(410, "v2"));
        let c = r.commit("c");
        let pack = unpack(&r.pack(&format!("{c}\n^{b}\n"), &["--thin", "--delta-base-offset"]));
        let old_blob = oid(&r.git(&["rev-parse", &format!("{b}:big.txt")]));
        assert_eq!((pack.unresolved(), pack.missing_bases()), (1, &[old_blob][..]));
        let remote = r.remote();
        assert_eq!(ff(&pack, &b, &c, &remote), Ok(true));
        let found = paths(&pack, Some(&b), &c, &remote, everything);
        assert_eq!(
            found,
            Ok(BTreeSet::from(["big.txt".into()])),
            "the commit and trees are whole"
        );
        r.publish(&c, "main");

        // A file added to many/: its 300-entry tree is a delta against the upstream tree.
        r.write("many/file-new.txt", "new\n");
        r.write("big.txt", &big(420, "v3"));
        let d = r.commit("d");
        let pack = unpack(&r.pack(&format!("{d}\n^{c}\n"), &["--thin"]));
        let old_tree = oid(&r.git(&["rev-parse", &format!("{c}:many")]));
        assert!(
            pack.missing_bases().contains(&old_tree),
            "{:?}",
            pack.missing_bases()
        );
        let root = oid(&r.git(&["rev-parse", &format!("{d}^{{tree}}")]));
        assert!(pack.tree(&root).is_some(), "the root tree is whole");
        let remote = r.remote();
        assert_eq!(ff(&pack, &c, &d, &remote), Ok(true), "the commit itself is whole");
        let error = paths(&pack, Some(&c), &d, &remote, everything).unwrap_err();
        let new_tree = r.git(&["rev-parse", &format!("{d}:many")]);
        assert!(
            error.starts_with(&format!("tree {new_tree} is neither in the pack nor upstream")),
            "{error}"
        );
        assert!(error.contains("(a thin pack: bases such as"), "{error}");
        // Pruned away, the missing tree is not needed.
        let found = paths(&pack, Some(&c), &d, &remote, not_many);
        assert_eq!(found, Ok(BTreeSet::from(["big.txt".into()])));

        // A commit that is a delta against an upstream commit (built by hand: git sends commits
        // whole).
        let amended = thin_commit_pack(&r, &c, &d);
        let pack = unpack(&amended);
        assert_eq!((pack.objects(), pack.unresolved()), (1, 1));
        let remote = r.remote();
        let error = ff(&pack, &c, &d, &remote).unwrap_err();
        assert!(error.contains("upstream cannot tell whether"), "{error}");
        let error = paths(&pack, Some(&c), &d, &remote, workflows).unwrap_err();
        assert!(
            error.starts_with(&format!("commit {d} is neither in the pack nor upstream")),
            "{error}"
        );
        assert!(error.contains("thin pack"), "{error}");
        // Were the upstream to answer "no" for a commit it does not have, the answer stays
        // undecidable: the missing commit may be in the pack.
        let error = ff(&pack, &c, &d, &SaysNo(r.remote())).unwrap_err();
        assert!(
            error.contains("no path from") && error.contains("thin pack"),
            "{error}"
        );
        // The pack as a source knows it cannot tell either.
        assert_eq!(block_on(pack.is_ancestor(&oid(&c), &oid(&d))), Ok(None));
    }

    /// A remote that answers "not an ancestor" for commits it does not have.
    struct SaysNo(GitRemote);

    impl ObjectSource for SaysNo {
        type Error = GitFailed;

        async fn commit(&self, id: &Oid) -> Result<Option<Commit>, GitFailed> {
            self.0.commit(id).await
        }

        async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, GitFailed> {
            self.0.tree(id).await
        }

        async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, GitFailed> {
            Ok(Some(
                self.0.is_ancestor(ancestor, descendant).await?.unwrap_or(false),
            ))
        }
    }

    /// A pack holding only commit `new`, as a REF_DELTA against commit `base` (which the
    /// upstream has): git's delta format, built by hand (insert everything).
    fn thin_commit_pack(r: &Repo, base: &str, new: &str) -> Vec<u8> {
        let base_len: usize = r.git(&["cat-file", "-s", base]).parse().unwrap();
        let content = r.git_in(&["cat-file", "commit", new], b"");
        let varint = |mut n: usize| {
            let mut out = Vec::new();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    return out;
                }
                out.push(b | 0x80);
            }
        };
        let mut delta = [varint(base_len), varint(content.len())].concat();
        for piece in content.chunks(127) {
            delta.push(piece.len() as u8);
            delta.extend_from_slice(piece);
        }
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        pack.extend_from_slice(&crate::pack::tests::entry_header(7, delta.len() as u64));
        pack.extend_from_slice(oid(base).as_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&delta).unwrap();
        pack.extend_from_slice(&z.finish().unwrap());
        pack.extend_from_slice(&[0; 20]);
        reseal(&mut pack);
        pack
    }

    #[test]
    fn budgets_make_answers_undecidable() {
        let (r, a, _, c) = linear();
        r.publish(&c, "main");
        let pack = unpack(&r.pack(&format!("{a}\n^{c}\n"), &[]));
        let remote = r.remote();
        let none = Budget {
            max_remote_calls: 0,
            ..budget()
        };
        let error = block_on(fast_forward(&pack, &oid(&c), &oid(&a), &remote, &none)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("more than 0 upstream lookups would be needed"),
            "{error}"
        );
        let error = block_on(changed_paths(
            &pack,
            Some(&oid(&c)),
            &oid(&a),
            &remote,
            &everything,
            &none,
        ));
        assert!(
            error
                .unwrap_err()
                .to_string()
                .contains("(the next: reading commit")
        );
        let late = Budget {
            deadline: Instant::now() - Duration::from_millis(1),
            ..budget()
        };
        let error = block_on(fast_forward(&pack, &oid(&c), &oid(&a), &remote, &late)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the deadline passed before asking whether"),
            "{error}"
        );
        assert_eq!(remote.calls(), (0, 0, 0));
    }

    #[test]
    fn a_pack_is_a_source_too() {
        // The whole history decoded is an upstream that needs no git: the walks give the same
        // answers from it.
        let (r, a, b, c) = linear();
        let everything_pack = unpack(&r.pack(&format!("{c}\n"), &[]));
        let pushed = unpack(&r.pack(&format!("{c}\n^{b}\n"), &[]));
        assert_eq!(ff(&pushed, &a, &c, &everything_pack), Ok(true));
        assert_eq!(
            block_on(everything_pack.is_ancestor(&oid(&c), &oid(&a))),
            Ok(Some(false))
        );
        let found = paths(&pushed, Some(&a), &c, &everything_pack, everything).unwrap();
        assert_eq!(found, r.git_paths(Some(&a), &c, &[&a]));
    }

    #[test]
    fn answers_are_send_futures() {
        fn send<T: Send>(_: &T) {}
        let (pack, remote, budget) = (PackObjects::default(), Repo::new().remote(), budget());
        let id = Oid::zero(ObjectFormat::Sha1);
        send(&fast_forward(&pack, &id, &id, &remote, &budget));
        send(&changed_paths(&pack, None, &id, &remote, &everything, &budget));
    }

    /// Collects every blob a scanning decode hands out, whole, and every commit and tag.
    #[derive(Default)]
    struct Blobs {
        open: Option<Vec<u8>>,
        done: HashMap<Oid, Vec<u8>>,
        objects: HashMap<Oid, (ObjectKind, Vec<u8>)>,
    }

    impl crate::pack::decode::BlobSink for Blobs {
        fn start(&mut self, _size: u64) {
            self.open = Some(Vec::new());
        }
        fn data(&mut self, chunk: &[u8]) {
            self.open.as_mut().expect("started").extend_from_slice(chunk);
        }
        fn end(&mut self, id: Oid) {
            let data = self.open.take().expect("started");
            assert_eq!(
                crate::object::object_id(ObjectFormat::Sha1, ObjectKind::Blob, &data),
                id
            );
            self.done.insert(id, data);
        }
        fn object(&mut self, kind: ObjectKind, id: Oid, raw: &[u8]) {
            assert_eq!(crate::object::object_id(ObjectFormat::Sha1, kind, raw), id);
            self.objects.insert(id, (kind, raw.to_vec()));
        }
    }

    #[test]
    fn an_annotated_tag_peels_to_its_commit_and_its_paths_are_the_commits() {
        let (r, a, _, c) = linear();
        r.write(".github/workflows/ci.yml", "on: push\n");
        let d = r.commit("d");
        r.git(&["tag", "-a", "-m", "release", "v1", &d]);
        r.git(&["tag", "-a", "-m", "of a tag", "v1-again", "v1"]);
        let tag = r.git(&["rev-parse", "v1-again"]);
        let pack = unpack(&r.pack(&format!("{tag}\n^{a}\n"), &[]));
        let remote = r.remote();
        let peeled = block_on(peel(&pack, &oid(&tag), &remote, &budget())).unwrap();
        assert_eq!(peeled, Peeled::Commit(oid(&d)), "a tag of a tag of d");
        // A commit peels to itself; neither asks upstream.
        assert_eq!(
            block_on(peel(&pack, &oid(&c), &remote, &budget())).unwrap(),
            Peeled::Commit(oid(&c))
        );
        assert_eq!(remote.calls(), (0, 0, 0));
        let found = paths(&pack, None, &d, &remote, everything).unwrap();
        assert!(found.contains(".github/workflows/ci.yml"), "{found:?}");
    }

    #[test]
    fn every_pushed_blob_is_seen_and_placed_in_the_commit_that_brings_it() {
        let (r, a, _, _) = linear();
        // A file changed a little (git stores it as a delta), and a new file.
        let mut text = big(400, "base");
        r.write("src/config.rs", &text);
        let d = r.commit("d");
        text.push_str("let token = \"AKIA-not-really\";\n");
        r.write("src/config.rs", &text);
        r.write("secret.txt", "sensitive\n");
        let e = r.commit("e");
        for options in [&["--delta-base-offset"][..], &[]] {
            let raw = r.pack(&format!("{e}\n^{a}\n"), options);
            let mut blobs = Blobs::default();
            let pack = crate::pack::decode::decode_scanning(&raw, ObjectFormat::Sha1, &limits(), &mut blobs)
                .unwrap();
            assert!(pack.deltas() > 0, "the pack has deltas to rebuild");
            let listed = r.git(&["rev-list", "--objects", &e, &format!("^{a}")]);
            let mut want = HashSet::new();
            for line in listed.lines() {
                let id = line.split(' ').next().unwrap();
                if r.git(&["cat-file", "-t", id]) == "blob" {
                    let content = r.git_in(&["cat-file", "blob", id], b"");
                    assert_eq!(blobs.done.get(&oid(id)), Some(&content), "blob {line}");
                    want.insert(oid(id));
                }
            }
            assert_eq!(blobs.done.len(), want.len(), "every blob once");
            let changed = oid(&r.git(&["rev-parse", &format!("{e}:src/config.rs")]));
            let secret = oid(&r.git(&["rev-parse", &format!("{e}:secret.txt")]));
            let places = blob_places(&pack, &oid(&e), &HashSet::from([changed, secret]));
            assert_eq!(places[&changed], vec![(oid(&e), "src/config.rs".to_owned())]);
            assert_eq!(places[&secret], vec![(oid(&e), "secret.txt".to_owned())]);
            let first = oid(&r.git(&["rev-parse", &format!("{d}:src/config.rs")]));
            let places = blob_places(&pack, &oid(&e), &HashSet::from([first]));
            assert_eq!(
                places[&first],
                vec![(oid(&d), "src/config.rs".to_owned())],
                "d brought it, e changed it"
            );
        }
    }
    #[test]
    fn commit_and_tag_messages_are_seen_and_placed_at_their_commit() {
        let (r, a, _, c) = linear();
        r.write("notes.txt", "nothing to see\n");
        let d = r.commit("d: the token is AKIA-in-a-commit-message");
        r.git(&["tag", "-a", "-m", "release: AKIA-in-a-tag-message", "v1", &d]);
        r.git(&["tag", "-a", "-m", "a tag of a tag", "v1-again", "v1"]);
        let (v1, again) = (r.git(&["rev-parse", "v1"]), r.git(&["rev-parse", "v1-again"]));
        for options in [&["--delta-base-offset"][..], &[]] {
            let raw = r.pack(&format!("{again}\n^{a}\n"), options);
            let mut blobs = Blobs::default();
            let pack = crate::pack::decode::decode_scanning(&raw, ObjectFormat::Sha1, &limits(), &mut blobs)
                .unwrap();
            let (kind, message) = &blobs.objects[&oid(&d)];
            assert_eq!(*kind, ObjectKind::Commit);
            assert!(String::from_utf8_lossy(message).contains("AKIA-in-a-commit-message"));
            let (kind, message) = &blobs.objects[&oid(&v1)];
            assert_eq!(*kind, ObjectKind::Tag);
            assert!(String::from_utf8_lossy(message).contains("AKIA-in-a-tag-message"));
            assert!(
                blobs.objects.contains_key(&oid(&c)),
                "every pushed commit is seen"
            );
            assert!(
                !blobs.objects.contains_key(&oid(&a)),
                "upstream's are not in the pack"
            );

            let wanted = HashSet::from([oid(&d), oid(&v1), oid(&c)]);
            let places = blob_places(&pack, &oid(&again), &wanted);
            assert_eq!(places[&oid(&d)], vec![(oid(&d), COMMIT_MESSAGE.to_owned())]);
            assert_eq!(places[&oid(&c)], vec![(oid(&c), COMMIT_MESSAGE.to_owned())]);
            assert_eq!(
                places[&oid(&v1)],
                vec![(oid(&d), tag_message("v1"))],
                "placed at the commit it peels to"
            );
            // Pushed as the branch, the tags are not what the ref brings.
            let places = blob_places(&pack, &oid(&d), &wanted);
            assert!(!places.contains_key(&oid(&v1)));
            assert_eq!(places[&oid(&d)], vec![(oid(&d), COMMIT_MESSAGE.to_owned())]);
        }
    }
}
