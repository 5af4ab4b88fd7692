//! The policy in force, reloaded when its file changes.
//!
//! Readers take an `Arc<Policy>` snapshot per request, so a reload never changes the rules under
//! a request half-way. A file that fails to load never replaces the policy in force: the previous
//! one stays, and the error (naming the rule) is reported once per change of the file. This
//! module never evaluates anything and never holds a lock while parsing.
use std::{
    hash::{DefaultHasher, Hash, Hasher},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use super::{LoadError, Policy};

/// The file's identity and change marks: any difference means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What was last looked at: the file's stamp and its content's hash (a touch without a change
/// of content is not a reload).
#[derive(Debug, Default)]
struct Seen {
    stamp: Option<Stamp>,
    hash: Option<u64>,
}

#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Reloaded {
        rules: usize,
    },
    /// The file changed but does not load; the previous policy stays in force.
    Failed(LoadError),
}

#[derive(Debug)]
pub struct Live {
    path: Option<PathBuf>,
    current: RwLock<Arc<Policy>>,
    seen: Mutex<Seen>,
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Live {
    /// Loads the policy file, which must be valid now; later changes are picked up by
    /// `reload_if_changed` (or `watch`).
    pub fn load(path: &Path) -> Result<Arc<Live>, LoadError> {
        let stamp = Stamp::of(path);
        let text = super::read(path)?;
        let policy = Policy::parse(&text, path)?;
        Ok(Arc::new(Live {
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(policy)),
            seen: Mutex::new(Seen {
                stamp,
                hash: Some(hash(&text)),
            }),
        }))
    }

    /// A policy that never changes (`Policy::allow_all()` when no file is configured).
    pub fn fixed(policy: Policy) -> Arc<Live> {
        Arc::new(Live {
            path: None,
            current: RwLock::new(Arc::new(policy)),
            seen: Mutex::new(Seen::default()),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again if its inode, size, mtime or ctime changed and its content differs
    /// from what was last read; a file that does not load leaves the policy in force as it is.
    pub fn reload_if_changed(&self) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = Stamp::of(path);
        if stamp.is_some() && stamp == seen.stamp {
            return Reload::Unchanged;
        }
        let text = match super::read(path) {
            Ok(t) => t,
            Err(e) => {
                if seen.stamp.is_none() && seen.hash.is_none() {
                    // Already reported as unreadable, and still is.
                    return Reload::Unchanged;
                }
                *seen = Seen::default();
                return Reload::Failed(e);
            }
        };
        seen.stamp = stamp;
        let h = hash(&text);
        if seen.hash == Some(h) {
            return Reload::Unchanged;
        }
        seen.hash = Some(h);
        match Policy::parse(&text, path) {
            Ok(policy) => {
                let rules = policy.rules().len();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
                Reload::Reloaded { rules }
            }
            Err(e) => Reload::Failed(e.into()),
        }
    }

    /// Polls the file every `every` and logs each reload (info) and each failed one (error, with
    /// the rule at fault). A fixed policy has nothing to watch: the task ends at once.
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let Some(path) = self.path.clone() else {
                return;
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let live = self.clone();
                match tokio::task::spawn_blocking(move || live.reload_if_changed()).await {
                    Ok(Reload::Unchanged) => {}
                    Ok(Reload::Reloaded { rules }) => {
                        tracing::info!(path = %path.display(), rules, "policy reloaded");
                    }
                    Ok(Reload::Failed(e)) => {
                        tracing::error!(error = %e, "policy not reloaded; the previous policy stays in force");
                    }
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "policy reload panicked"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        // Replace, as editors and config management do: a new inode, never a half-written file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    const ONE: &str = "default = \"allow\"\n[[rule]]\naction = \"deny\"\nhost = \"evil.example\"\n";
    const TWO: &str =
        "default = \"deny\"\n[[rule]]\naction = \"allow\"\nuid = 1\n[[rule]]\naction = \"allow\"\nuid = 2\n";
    const BROKEN: &str = "default = \"deny\"\n[[rule]]\nname = \"bad\"\naction = \"allow\"\nref = \"main\"\n";

    #[test]
    fn picks_up_rewrites_and_keeps_the_old_policy_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, ONE);
        let live = Live::load(&path).unwrap();
        assert_eq!(live.current().rules().len(), 1);
        assert!(matches!(live.reload_if_changed(), Reload::Unchanged));

        write(&path, TWO);
        assert!(matches!(live.reload_if_changed(), Reload::Reloaded { rules: 2 }));
        assert_eq!(live.current().rules().len(), 2);
        assert_eq!(live.current().default_action().name(), "deny");

        write(&path, BROKEN);
        match live.reload_if_changed() {
            Reload::Failed(e) => assert!(e.to_string().contains("rule #1 \"bad\""), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(live.current().rules().len(), 2, "the previous policy stays");
        assert!(
            matches!(live.reload_if_changed(), Reload::Unchanged),
            "reported once"
        );

        write(&path, ONE);
        assert!(matches!(live.reload_if_changed(), Reload::Reloaded { rules: 1 }));
        assert_eq!(live.current().rules().len(), 1);
    }

    #[test]
    fn same_content_is_not_a_reload_and_a_vanished_file_keeps_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, ONE);
        let live = Live::load(&path).unwrap();
        write(&path, ONE);
        assert!(matches!(live.reload_if_changed(), Reload::Unchanged));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            live.reload_if_changed(),
            Reload::Failed(LoadError::Read { .. })
        ));
        assert!(matches!(live.reload_if_changed(), Reload::Unchanged));
        assert_eq!(live.current().rules().len(), 1);

        write(&path, TWO);
        assert!(matches!(live.reload_if_changed(), Reload::Reloaded { rules: 2 }));
    }

    #[test]
    fn a_fixed_policy_never_reloads() {
        let live = Live::fixed(Policy::allow_all());
        assert!(matches!(live.reload_if_changed(), Reload::Unchanged));
        assert!(live.path().is_none());
    }

    #[test]
    fn a_broken_file_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, BROKEN);
        let e = Live::load(&path).unwrap_err();
        assert!(e.to_string().contains("not a full ref name"), "{e}");
    }

    #[tokio::test]
    async fn the_watcher_swaps_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        write(&path, ONE);
        let live = Live::load(&path).unwrap();
        let task = live.clone().watch(Duration::from_millis(10));
        write(&path, TWO);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while live.current().rules().len() != 2 {
            assert!(tokio::time::Instant::now() < deadline, "no reload within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
    }
}
