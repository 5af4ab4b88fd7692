//! Finding the GitHub Actions runners of a host: their systemd units (`actions.runner.*.service`,
//! as the runner's `svc.sh install` names them), the directory each runs from (where its `.env`
//! is), and the cgroup each runs in now, from systemd's cgroup tree.
//!
//! Every function takes the directory it reads (a root prefix, a cgroup2 mount), so that tests
//! run them against trees they make. This module only reads; it never writes or attaches.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// How runner units are named: `actions.runner.<owner>-<repo>.<runner>.service`.
pub const UNIT_PREFIX: &str = "actions.runner.";
pub const UNIT_SUFFIX: &str = ".service";

/// Is this the name of a runner's systemd unit (or of the cgroup systemd gives it)?
pub fn is_unit_name(name: &str) -> bool {
    name.len() > UNIT_PREFIX.len() + UNIT_SUFFIX.len()
        && name.starts_with(UNIT_PREFIX)
        && name.ends_with(UNIT_SUFFIX)
        && !name.contains('/')
}

/// A runner's unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerUnit {
    /// The unit's name, e.g. `actions.runner.octo-repo.runner1.service`.
    pub name: String,
    /// The runner's directory (its `.env` lives there): `WorkingDirectory=`, else the directory
    /// of `ExecStart=`'s program (`<runner>/runsvc.sh`).
    pub dir: Option<PathBuf>,
}

impl RunnerUnit {
    /// The runner's `.env` file, as the host sees it (no root prefix).
    pub fn env_file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(".env"))
    }
}

/// The runner units installed in a systemd unit directory (e.g. `<root>/etc/systemd/system`),
/// sorted by name.
pub fn units_in(unit_dir: &Path) -> Vec<RunnerUnit> {
    let Ok(rd) = fs::read_dir(unit_dir) else {
        return Vec::new();
    };
    let mut out: Vec<RunnerUnit> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_unit_name(&name) || !e.path().is_file() {
                return None;
            }
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            Some(RunnerUnit {
                dir: runner_dir(&text),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The runner's directory from a unit file's text.
fn runner_dir(unit: &str) -> Option<PathBuf> {
    let value = |key: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .next_back()
    };
    if let Some(dir) = value("WorkingDirectory").filter(|d| d.starts_with('/')) {
        return Some(PathBuf::from(dir));
    }
    // ExecStart may carry prefixes (`-`, `@`, `+`, …) before an absolute program path.
    let exec = value("ExecStart")?;
    let program = exec
        .split_whitespace()
        .next()?
        .trim_start_matches(['-', '@', '+', '!', ':']);
    Path::new(program)
        .parent()
        .filter(|p| p.is_absolute())
        .map(Path::to_path_buf)
}

/// A runner service running now: its unit name and its cgroup, relative to the cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRunner {
    pub unit: String,
    pub cgroup: PathBuf,
}

/// The deepest a runner's cgroup is looked for (`<slice>/<sub-slice>/<unit>` and a little more).
const MAX_DEPTH: usize = 4;

/// Runner services in the cgroup tree under `mount` (the cgroup2 mount, or a test's tree),
/// sorted by cgroup. Container scopes and runners' own children are not descended into.
pub fn running_in(mount: &Path) -> Vec<RunningRunner> {
    let mut out = Vec::new();
    walk(mount, Path::new(""), 0, &mut out);
    out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    out
}

fn walk(dir: &Path, rel: &Path, depth: usize, out: &mut Vec<RunningRunner>) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(kind) = e.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let child = rel.join(&name);
        if is_unit_name(&name) {
            out.push(RunningRunner {
                unit: name,
                cgroup: child,
            });
        } else if name.ends_with(".slice") || depth == 0 {
            walk(&e.path(), &child, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_recognised_exactly() {
        assert!(is_unit_name("actions.runner.octo-repo.runner1.service"));
        assert!(!is_unit_name("actions.runner..service"));
        assert!(!is_unit_name("actions.runner.x.scope"));
        assert!(!is_unit_name("docker-abc.scope"));
    }

    #[test]
    fn units_and_their_directories_come_from_the_unit_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("actions.runner.octo-a.r1.service"),
            "[Unit]\nDescription=GitHub Actions Runner (octo-a.r1)\n\n[Service]\nExecStart=/home/runner/a/runsvc.sh\nUser=runner\nWorkingDirectory=/home/runner/a\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("actions.runner.octo-b.r2.service"),
            "[Service]\nExecStart=-/opt/runner-b/runsvc.sh --flag\n",
        )
        .unwrap();
        fs::write(dir.path().join("actions.runner.octo-c.r3.service"), "[Service]\n").unwrap();
        fs::write(
            dir.path().join("nginx.service"),
            "[Service]\nExecStart=/usr/sbin/nginx\n",
        )
        .unwrap();
        fs::create_dir(dir.path().join("actions.runner.octo-a.r1.service.d")).unwrap();
        let units = units_in(dir.path());
        assert_eq!(
            units,
            vec![
                RunnerUnit {
                    name: "actions.runner.octo-a.r1.service".into(),
                    dir: Some("/home/runner/a".into())
                },
                RunnerUnit {
                    name: "actions.runner.octo-b.r2.service".into(),
                    dir: Some("/opt/runner-b".into())
                },
                RunnerUnit {
                    name: "actions.runner.octo-c.r3.service".into(),
                    dir: None
                },
            ]
        );
        assert_eq!(units[0].env_file(), Some(PathBuf::from("/home/runner/a/.env")));
        assert!(units_in(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn running_runners_are_found_in_a_fake_cgroup_tree() {
        let tree = tempfile::tempdir().unwrap();
        for d in [
            "system.slice/actions.runner.octo-a.r1.service/runsvc",
            "system.slice/docker-0123.scope",
            "system.slice/ssh.service",
            "ghgate.slice/actions.runner.octo-b.r2.service",
            "user.slice/user-1000.slice/user@1000.service/app.slice/actions.runner.fake.service",
            "init.scope",
        ] {
            fs::create_dir_all(tree.path().join(d)).unwrap();
        }
        assert_eq!(
            running_in(tree.path()),
            vec![
                RunningRunner {
                    unit: "actions.runner.octo-b.r2.service".into(),
                    cgroup: "ghgate.slice/actions.runner.octo-b.r2.service".into()
                },
                RunningRunner {
                    unit: "actions.runner.octo-a.r1.service".into(),
                    cgroup: "system.slice/actions.runner.octo-a.r1.service".into()
                },
            ]
        );
    }

    /// As root: the same discovery against a real cgroup2 tree this test makes (and removes).
    #[test]
    fn running_runners_are_found_in_a_real_cgroup_tree() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true but not root: this test must run"
            );
            eprintln!("skipping: needs root");
            return;
        }
        let mount = crate::redirect::cgroup::cgroup2_mount().unwrap();
        let name = format!("ghgate-unittest-runner-{}", std::process::id());
        let top = mount.join(&name);
        let unit = top.join("system.slice/actions.runner.octo-z.r9.service");
        fs::create_dir_all(&unit).unwrap();
        let found = running_in(&top);
        let _ = fs::remove_dir(&unit);
        let _ = fs::remove_dir(top.join("system.slice"));
        let _ = fs::remove_dir(&top);
        assert_eq!(
            found,
            vec![RunningRunner {
                unit: "actions.runner.octo-z.r9.service".into(),
                cgroup: "system.slice/actions.runner.octo-z.r9.service".into()
            }]
        );
        assert!(!top.exists(), "test cgroup left behind");
    }
}
