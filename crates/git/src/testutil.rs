//! Helpers of this crate's unit tests: pkt-lines written by hand, and reading an input split
//! every way.

/// Ids for hand-made bodies.
pub(crate) const A: &str = "1111111111111111111111111111111111111111";
pub(crate) const B: &str = "2222222222222222222222222222222222222222";
pub(crate) const Z: &str = "0000000000000000000000000000000000000000";

/// `data` as one pkt-line (test-side framing, independent of the crate's writer).
pub(crate) fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// Each of `lines` as a pkt-line, but "0000", "0001" and "0002" as they are.
pub(crate) fn pkts<S: AsRef<[u8]>>(lines: &[S]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| match l.as_ref() {
            b"0000" | b"0001" | b"0002" => l.as_ref().to_vec(),
            data => pkt(data),
        })
        .collect()
}

/// `input` cut at `cuts` (ascending): the pieces a reader is fed, in order.
pub(crate) fn pieces<'a>(input: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 0;
    cuts.iter().copied().chain([input.len()]).map(move |end| {
        let piece = &input[from..end];
        from = end;
        piece
    })
}

/// `seed` damaged a few random ways: bytes changed, runs of up to `max_run` bytes removed, the
/// end cut off.
pub(crate) fn mutate(seed: &[u8], next: &mut impl FnMut() -> u64, max_run: u64) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..(next() % 8) {
        if input.is_empty() {
            break;
        }
        let at = (next() as usize) % input.len();
        match next() % 3 {
            0 => input[at] = next() as u8,
            1 => {
                let end = (at + (next() % max_run) as usize).min(input.len());
                input.drain(at..end);
            }
            _ => input.truncate(at.max(1)),
        }
    }
    input
}

pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Runs `read` on `input` whole, in 1-byte pieces, cut once at every offset (small inputs) and
/// at random offsets (`read` gets the cut points), asserting every way gives the same result.
pub(crate) fn split_all_ways<T: PartialEq + std::fmt::Debug>(
    input: &[u8],
    mut read: impl FnMut(&[usize]) -> T,
) -> T {
    let whole = read(&[]);
    let ones: Vec<usize> = (1..input.len()).collect();
    assert_eq!(read(&ones), whole, "1-byte pieces");
    if input.len() <= 2048 {
        for cut in 0..=input.len() {
            assert_eq!(read(&[cut]), whole, "cut at {cut}");
        }
    }
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..30 {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + (next() % 700) as usize;
            if at >= input.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(read(&cuts), whole, "cuts {cuts:?}");
    }
    whole
}

/// Runs a future whose every await is ready at once (the sources of these tests answer from
/// git, synchronously): no runtime needed.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// A text file large enough that git stores its versions as deltas of each other.
pub(crate) fn big(lines: usize, special: &str) -> String {
    let mut text: String = (0..lines)
        .map(|i| format!("line {i}: filler text so that the file is worth a delta\n"))
        .collect();
    text.insert_str(text.len() / 2, &format!("{special}\n"));
    text
}

pub(crate) mod repo {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::object::{Commit, TreeEntry};
    use crate::oid::Oid;
    use crate::testgit::{git, git_in};
    use crate::walk::ObjectSource;

    pub(crate) fn oid(hex: &str) -> Oid {
        hex.parse().unwrap()
    }

    /// An upstream bare repository (what a `GitRemote` reads) and a work tree that pushes to it.
    pub(crate) struct Repo {
        _tmp: tempfile::TempDir,
        pub(crate) up: PathBuf,
        pub(crate) work: PathBuf,
    }

    impl Repo {
        pub(crate) fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let (up, work) = (tmp.path().join("up.git"), tmp.path().join("work"));
            git(tmp.path(), &["init", "-q", "--bare", up.to_str().unwrap()]);
            git(tmp.path(), &["init", "-q", work.to_str().unwrap()]);
            Self { _tmp: tmp, up, work }
        }

        pub(crate) fn write(&self, path: &str, text: &str) {
            let file = self.work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }

        pub(crate) fn remove(&self, path: &str) {
            let path = self.work.join(path);
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }

        pub(crate) fn git(&self, args: &[&str]) -> String {
            git(&self.work, args)
        }

        pub(crate) fn git_in(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
            git_in(&self.work, args, stdin, &[])
        }

        pub(crate) fn commit(&self, message: &str) -> String {
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "--allow-empty", "-m", message]);
            self.git(&["rev-parse", "HEAD"])
        }

        /// Upstream's `branch` points at `rev` from now on (it receives what it lacks).
        pub(crate) fn publish(&self, rev: &str, branch: &str) {
            let refspec = format!("{rev}:refs/heads/{branch}");
            self.git(&["push", "-q", "--force", self.up.to_str().unwrap(), &refspec]);
        }

        /// What `git pack-objects --revs` writes for these revs (`new\n^old\n`).
        pub(crate) fn pack(&self, revs: &str, options: &[&str]) -> Vec<u8> {
            let mut args = vec!["pack-objects", "--stdout", "-q", "--revs"];
            args.extend_from_slice(options);
            self.git_in(&args, revs.as_bytes())
        }

        pub(crate) fn remote(&self) -> GitRemote {
            GitRemote {
                dir: self.up.clone(),
                commits: AtomicUsize::new(0),
                trees: AtomicUsize::new(0),
                ancestry: AtomicUsize::new(0),
            }
        }

        /// What git says the update changes: `git diff old new`, and each commit of
        /// `new ^not...` against each parent (`diff-tree -m --root`).
        pub(crate) fn git_paths(&self, old: Option<&str>, new: &str, not: &[&str]) -> BTreeSet<String> {
            let split = |out: Vec<u8>| -> Vec<String> {
                out.split(|&b| b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8(p.to_vec()).unwrap())
                    .collect()
            };
            let mut paths = BTreeSet::new();
            if let Some(old) = old {
                let args = ["diff", "--no-renames", "--name-only", "-z", old, new];
                paths.extend(split(self.git_in(&args, b"")));
            }
            let mut args = vec!["rev-list", new];
            let negated: Vec<String> = not.iter().map(|n| format!("^{n}")).collect();
            args.extend(negated.iter().map(String::as_str));
            for commit in self.git(&args).lines() {
                let args = [
                    "diff-tree",
                    "-r",
                    "-m",
                    "--root",
                    "--no-renames",
                    "--no-commit-id",
                    "--name-only",
                    "-z",
                    commit,
                ];
                paths.extend(split(self.git_in(&args, b"")));
            }
            paths
        }
    }

    /// Upstream, read with git from a bare repository, counting each kind of call.
    pub(crate) struct GitRemote {
        dir: PathBuf,
        commits: AtomicUsize,
        trees: AtomicUsize,
        ancestry: AtomicUsize,
    }

    /// `git merge-base --is-ancestor` failed.
    #[derive(Debug, thiserror::Error)]
    #[error("git could not tell")]
    pub(crate) struct GitFailed;

    impl GitRemote {
        /// (commit, tree, is_ancestor) calls so far.
        pub(crate) fn calls(&self) -> (usize, usize, usize) {
            (
                self.commits.load(Ordering::Relaxed),
                self.trees.load(Ordering::Relaxed),
                self.ancestry.load(Ordering::Relaxed),
            )
        }

        fn kind(&self, id: &Oid) -> Option<String> {
            let out = Command::new("git")
                .args(["cat-file", "-t", &id.to_string()])
                .current_dir(&self.dir)
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
        }

        fn dir(&self) -> &Path {
            &self.dir
        }
    }

    impl ObjectSource for GitRemote {
        type Error = GitFailed;

        async fn commit(&self, id: &Oid) -> Result<Option<Commit>, GitFailed> {
            self.commits.fetch_add(1, Ordering::Relaxed);
            if self.kind(id).as_deref() != Some("commit") {
                return Ok(None);
            }
            let text = git(self.dir(), &["cat-file", "commit", &id.to_string()]);
            let mut lines = text.lines();
            let tree = oid(lines.next().unwrap().strip_prefix("tree ").unwrap());
            let parents = lines.map_while(|l| l.strip_prefix("parent ")).map(oid).collect();
            Ok(Some(Commit { tree, parents }))
        }

        async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, GitFailed> {
            self.trees.fetch_add(1, Ordering::Relaxed);
            if self.kind(id).as_deref() != Some("tree") {
                return Ok(None);
            }
            let out = git_in(self.dir(), &["ls-tree", "-z", &id.to_string()], b"", &[]);
            let entries = out
                .split(|&b| b == 0)
                .filter(|r| !r.is_empty())
                .map(|record| {
                    let tab = record.iter().position(|&b| b == b'\t').unwrap();
                    let meta = std::str::from_utf8(&record[..tab]).unwrap();
                    let mut fields = meta.split(' ');
                    let mode = u32::from_str_radix(fields.next().unwrap(), 8).unwrap();
                    let id = oid(fields.nth(1).unwrap());
                    TreeEntry {
                        mode,
                        name: record[tab + 1..].to_vec(),
                        id,
                    }
                })
                .collect();
            Ok(Some(entries))
        }

        async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, GitFailed> {
            self.ancestry.fetch_add(1, Ordering::Relaxed);
            let status = Command::new("git")
                .args(["merge-base", "--is-ancestor"])
                .args([ancestor.to_string(), descendant.to_string()])
                .current_dir(self.dir())
                .stderr(Stdio::null())
                .status()
                .map_err(|_| GitFailed)?;
            Ok(match status.code() {
                Some(0) => Some(true),
                Some(1) => Some(false),
                _ => None,
            })
        }
    }
}
