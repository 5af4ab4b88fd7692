//! Container scopes: the Docker daemon and containerd start job and service containers in cgroups
//! of their own (`system.slice/docker-<id>.scope`, …), outside the runner's cgroup. With
//! `[redirect.containers] enabled`, the children of the configured parent cgroups whose names
//! match are attached to as they appear (inotify on the parents, and a rescan every
//! [`RESCAN`]), and their links unpinned once they are gone.
//!
//! Each scope's links are pinned in `<pin_dir>/scopes/<key>/`, the key being the scope's path
//! below the cgroup2 mount with `/` escaped, so `ghgate detach` removes them with the rest.
//!
//! A container's first instants may run before its scope is attached (the runtime creates the
//! scope, then starts the process in it): whole-host mode has no such window, which is why it is
//! the recommendation for dedicated runners. This module never attaches to a cgroup that is not
//! a child of a configured parent matching a configured name.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tracing::{info, warn};

use super::{Pins, attach_in, complete, links_in, unpin_link};
use crate::config::ContainersConfig;

/// How often the parents are rescanned even without an inotify event.
pub const RESCAN: Duration = Duration::from_secs(2);

/// Does `name` match `pattern`, where `*` matches any run of characters?
pub fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The pin directory name of a scope at `rel` (below the cgroup2 mount): `%`, `/` and `.`
/// escaped, since bpffs refuses names with a dot.
pub fn key(rel: &Path) -> String {
    rel.to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('.', "%2E")
}

/// The scope's path below the cgroup2 mount, from its key.
pub fn rel_of(key: &str) -> PathBuf {
    PathBuf::from(key.replace("%2E", ".").replace("%2F", "/").replace("%25", "%"))
}

/// The scopes that should be attached now, as (path below the mount, directory), sorted.
pub fn wanted(mount: &Path, config: &ContainersConfig) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for parent in &config.parents {
        let Ok(rd) = std::fs::read_dir(mount.join(parent)) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) && config.is_scope(&parent.join(&name)) {
                out.push((parent.join(&name), e.path()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The scopes with links pinned now: (path below the mount, every program linked).
pub fn attached(pins: &Pins) -> Vec<(PathBuf, bool)> {
    let Ok(rd) = std::fs::read_dir(pins.scopes_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, bool)> = rd
        .filter_map(|e| e.ok())
        .map(|e| {
            let rel = rel_of(&e.file_name().to_string_lossy());
            (rel, complete(&links_in(&e.path())))
        })
        .collect();
    out.sort();
    out
}

/// What one [`Scopes::sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub attached: Vec<PathBuf>,
    pub released: Vec<PathBuf>,
}

/// The watcher of container scopes.
pub struct Scopes {
    pub pins: Pins,
    /// The cgroup2 mount.
    pub mount: PathBuf,
    pub config: ContainersConfig,
}

impl Scopes {
    /// Attaches every wanted scope that is not fully attached, and unpins the links of scopes
    /// that are gone. A scope that vanishes meanwhile is skipped, not an error.
    pub fn sync(&self) -> anyhow::Result<Synced> {
        let wanted = wanted(&self.mount, &self.config);
        let mut done = Synced::default();
        let mut ebpf = None;
        for (rel, dir) in &wanted {
            let links_dir = self.pins.scopes_dir().join(key(rel));
            if complete(&links_in(&links_dir)) {
                continue;
            }
            if ebpf.is_none() {
                ebpf = Some(super::load(&self.pins)?);
            }
            let e = ebpf.as_mut().expect("loaded above");
            match attach_in(e, dir, &links_dir) {
                Ok(_) => done.attached.push(rel.clone()),
                Err(err) if !dir.exists() => {
                    release(&links_dir)?;
                    info!(scope = %rel.display(), error = %format!("{err:#}"), "container scope gone before it was attached");
                }
                Err(err) => return Err(err),
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.pins.scopes_dir()) {
            for e in rd.filter_map(|e| e.ok()) {
                let rel = rel_of(&e.file_name().to_string_lossy());
                if !wanted.iter().any(|(w, _)| *w == rel) {
                    release(&e.path())?;
                    done.released.push(rel);
                }
            }
        }
        Ok(done)
    }

    /// Syncs on every change of a parent directory, and every [`RESCAN`].
    pub async fn run_forever(self) {
        let notify = match self.watch() {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot watch the container parents with inotify; rescanning every 2 s only");
                None
            }
        };
        loop {
            match self.sync() {
                Ok(s) => {
                    for rel in &s.attached {
                        info!(scope = %rel.display(), "attached to a container scope");
                    }
                    for rel in &s.released {
                        info!(scope = %rel.display(), "container scope gone; its links are unpinned");
                    }
                }
                Err(e) => warn!(error = %format!("{e:#}"), "cannot attach to the container scopes"),
            }
            match &notify {
                Some(fd) => {
                    if let Ok(Ok(mut guard)) = tokio::time::timeout(RESCAN, fd.readable()).await {
                        // Drain: one sync answers every event so far.
                        while fd
                            .get_ref()
                            .inotify()
                            .read_events()
                            .is_ok_and(|ev| !ev.is_empty())
                        {}
                        guard.clear_ready();
                    }
                }
                None => tokio::time::sleep(RESCAN).await,
            }
        }
    }

    fn watch(&self) -> anyhow::Result<tokio::io::unix::AsyncFd<crate::sys::Inotified>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        for parent in &self.config.parents {
            let dir = self.mount.join(parent);
            if dir.is_dir() {
                inotify
                    .add_watch(&dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE)
                    .with_context(|| format!("cannot watch {}", dir.display()))?;
            }
        }
        crate::sys::watch_inotify(inotify).context("cannot register the inotify descriptor")
    }
}

/// Unpins a scope's links and removes its directory.
fn release(links_dir: &Path) -> anyhow::Result<()> {
    for (_, path) in links_in(links_dir) {
        unpin_link(&path)?;
    }
    match std::fs::remove_dir(links_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", links_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("docker-*.scope", "docker-0123abcd.scope"));
        assert!(!glob("docker-*.scope", "docker-0123abcd.service"));
        assert!(!glob("docker-*.scope", "xdocker-1.scope"));
        assert!(glob("docker-*.scope", "docker-.scope"));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "a-c"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"), "the ends must not overlap");
    }

    #[test]
    fn keys_round_trip_paths() {
        for rel in ["system.slice/docker-1.scope", "a%2Fb/c%2E.d", "docker/0123"] {
            let k = key(Path::new(rel));
            assert!(!k.contains('/') && !k.contains('.'), "{k}");
            assert_eq!(rel_of(&k), PathBuf::from(rel));
        }
    }

    #[test]
    fn wanted_are_the_matching_children_of_the_parents() {
        let tree = tempfile::tempdir().unwrap();
        for d in [
            "system.slice/docker-aaa.scope",
            "system.slice/docker-bbb.scope/nested",
            "system.slice/containerd.service",
            "system.slice/ssh.service",
            "docker/0123",
            "user.slice/docker-ccc.scope",
        ] {
            std::fs::create_dir_all(tree.path().join(d)).unwrap();
        }
        std::fs::write(tree.path().join("system.slice/docker-file.scope"), "").unwrap();
        let config = ContainersConfig {
            enabled: true,
            parents: vec!["system.slice".into(), "docker".into(), "missing".into()],
            names: vec!["docker-*.scope".into(), "0*".into()],
        };
        let rels: Vec<PathBuf> = wanted(tree.path(), &config).into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            rels,
            vec![
                PathBuf::from("docker/0123"),
                PathBuf::from("system.slice/docker-aaa.scope"),
                PathBuf::from("system.slice/docker-bbb.scope"),
            ]
        );
    }
}
