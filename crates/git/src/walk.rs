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

use crate::object::{Commit, TreeEntry};
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
