//! What several end-to-end tests set up the same way: git repositories served by the test
//! upstream, planted secrets made at run time, and the files a store left behind.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// `git ARGS…` in `dir`; its trimmed standard output. Panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `name` (its content is its name), commits it in `repo`, returns the new commit id.
pub fn commit(repo: &Path, name: &str) -> String {
    commit_file(repo, name, name)
}

/// Writes `content` to `name`, commits it in `repo` (message: the name), returns the commit id.
pub fn commit_file(repo: &Path, name: &str, content: &str) -> String {
    std::fs::write(repo.join(name), content).unwrap();
    git(repo, &["add", "."]);
    git(
        repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            name,
        ],
    );
    git(repo, &["rev-parse", "HEAD"])
}

/// A bare repository `<tmp>/repos/o/r.git` accepting pushes, with one commit (`README.md`) on
/// main: the git root to give the test upstream, the bare repository, and that commit's id.
pub fn served_repo(tmp: &Path) -> (PathBuf, PathBuf, String) {
    let root = tmp.join("repos");
    let bare = root.join("o/r.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(&bare, &["config", "http.receivepack", "true"]);
    let seed = tmp.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    let first = commit(&seed, "README.md");
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    (root, bare, first)
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A classic GitHub token (`ghp_` + 30 characters + their base62 CRC32) with a valid checksum,
/// made at run time so that no source file holds one.
pub fn github_token(random: &str) -> String {
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    assert_eq!(random.len(), 30, "a classic token has 30 random characters");
    let mut crc = crc32fast::hash(random.as_bytes());
    let mut check = [b'0'; 6];
    for d in check.iter_mut().rev() {
        *d = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{}_{random}{}", "ghp", std::str::from_utf8(&check).unwrap())
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(parent: &Path, size: &str) -> Self {
        let dir = parent.join("small-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "ghgate-test",
                dir.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// Writes a file of `bytes` zeros on the filesystem (to leave only so much free); returns
    /// the file.
    pub fn fill_with(&self, bytes: usize) -> PathBuf {
        let filler = self.dir.join("filler");
        std::fs::write(&filler, vec![0u8; bytes]).unwrap();
        filler
    }

    /// Fills the filesystem with a file, leaving nothing free; returns the file.
    pub fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k"])
            .output()
            .unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// `data` framed as one git pkt-line.
pub fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// A hand-made `POST PATH` to `authority` (git smart HTTP's receive-pack) carrying `body`, as
/// an HTTP/1.1 request on its own connection.
pub fn receive_pack_request(authority: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-git-receive-pack-request\r\n\
         Accept: application/x-git-receive-pack-result\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}
