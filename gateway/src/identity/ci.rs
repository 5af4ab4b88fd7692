//! CI job facts: for a process under a GitHub Actions runner, which repository, run, job and
//! actor it works for — read from the environment of the process (or of the nearest ancestor
//! that has them: the runner's job process).
//!
//! A container's processes descend from the container runtime, not from the job that started it,
//! so a connection from a container scope has no job ancestor: [`JobAttribution`] attributes it
//! to the job running in the governed cgroups when exactly one is (a runner runs one job at a
//! time), and says so; with none or several it attributes nothing and says why.
//!
//! Only the variables in [`ALLOWED`] are ever kept; the environment is scanned in place and no
//! other value (`GITHUB_TOKEN`, `ACTIONS_RUNTIME_TOKEN`, …) is copied, logged or stored.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use lru::LruCache;

use super::Caller;
use crate::config::ContainersConfig;

/// The variables kept, in the order they are reported.
pub const ALLOWED: &[&str] = &[
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_WORKFLOW",
    "GITHUB_JOB",
    "GITHUB_ACTOR",
    "GITHUB_REF",
];

/// How many ancestors are looked at before giving up.
const MAX_ANCESTORS: usize = 16;

/// The allowed variables of `environ` (NUL-separated `NAME=value`), in [`ALLOWED`] order.
pub fn from_environ(environ: &[u8]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for entry in environ.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = &entry[..eq];
        if let Some(&allowed) = ALLOWED.iter().find(|a| a.as_bytes() == name) {
            found.push((
                allowed.to_owned(),
                String::from_utf8_lossy(&entry[eq + 1..]).into_owned(),
            ));
        }
    }
    found.sort_by_key(|(n, _)| ALLOWED.iter().position(|a| a == n));
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

/// How long a walk's answer is reused for a process (and its ancestors): a process's
/// environment is fixed from its exec, and a connection from the same process, or from another
/// child of the same shell or job, then costs one read of /proc/<pid>/stat instead of reading
/// every ancestor's environment (136 µs of a new connection's cost, measured, five ancestors).
const WALK_TTL: Duration = Duration::from_secs(5);

/// The answers of recent walks: (pid, start ticks) → the facts found walking up from it.
type Walks = LruCache<(u32, u64), (Instant, Vec<(String, String)>)>;

fn walks() -> &'static Mutex<Walks> {
    static WALKS: OnceLock<Mutex<Walks>> = OnceLock::new();
    WALKS.get_or_init(|| Mutex::new(LruCache::new(NonZeroUsize::new(4096).expect("non-zero"))))
}

/// The CI job facts of process `tgid`: its own, or those of its nearest ancestor that has a
/// `GITHUB_REPOSITORY` (a step's process may have cleared its environment). Empty outside CI.
/// A process is known by its pid and start time, so a reused pid is never given another
/// process's answer; an answer is reused for [`WALK_TTL`].
pub fn facts(tgid: u32) -> Vec<(String, String)> {
    let mut pid = Some(tgid);
    let mut visited = Vec::new();
    let mut found = Vec::new();
    for _ in 0..MAX_ANCESTORS {
        let Some(p) = pid else { break };
        let Some((ppid, start)) = super::parent_and_start(p) else {
            break;
        };
        let cached = walks()
            .lock()
            .expect("walks lock")
            .get(&(p, start))
            .filter(|(at, _)| at.elapsed() < WALK_TTL)
            .map(|(_, f)| f.clone());
        if let Some(f) = cached {
            found = f;
            break;
        }
        visited.push((p, start));
        if let Some(environ) = super::proc_bytes(format!("/proc/{p}/environ")) {
            let own = from_environ(&environ);
            if own.iter().any(|(n, _)| n == "GITHUB_REPOSITORY") {
                found = own;
                break;
            }
        }
        pid = Some(ppid).filter(|&p| p > 1);
    }
    // Every process walked through has the same answer: the walk from it goes the same way.
    let now = Instant::now();
    let mut cache = walks().lock().expect("walks lock");
    for key in visited {
        cache.put(key, (now, found.clone()));
    }
    found
}

/// The fact that says how a container scope's connection was (or was not) attributed to a job.
pub const ATTRIBUTED_BY: &str = "attributed_by";

/// How many processes [`running_jobs`] reads at most, and how deep it walks.
const MAX_JOB_PROCESSES: usize = 4096;
const MAX_CGROUP_DEPTH: usize = 8;

/// The distinct jobs (their facts) of the processes in the cgroup `dir` and below: a process
/// counts when its own environment names a run (`GITHUB_RUN_ID`).
pub fn running_jobs(dir: &Path) -> Vec<Vec<(String, String)>> {
    let mut jobs: Vec<Vec<(String, String)>> = Vec::new();
    let mut seen = 0;
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let procs = super::proc_text(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            seen += 1;
            if seen > MAX_JOB_PROCESSES {
                return jobs;
            }
            let Some(environ) = super::proc_bytes(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let found = from_environ(&environ);
            if get(&found, "GITHUB_RUN_ID").is_some() && !jobs.contains(&found) {
                jobs.push(found);
            }
        }
        if depth < MAX_CGROUP_DEPTH
            && let Ok(rd) = std::fs::read_dir(&dir)
        {
            stack.extend(
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), depth + 1)),
            );
        }
    }
    jobs
}

/// Attributes connections from container scopes to the job running in the governed cgroups.
#[derive(Debug, Clone)]
pub struct JobAttribution {
    /// The cgroup2 mount.
    pub mount: PathBuf,
    /// The governed cgroup (absolute), where the runners' jobs run.
    pub governed: PathBuf,
    pub containers: ContainersConfig,
}

impl JobAttribution {
    /// A caller with no job facts of its own, in a container scope: the job running in the
    /// governed cgroups when exactly one is, with an [`ATTRIBUTED_BY`] fact saying so (or saying
    /// why nothing was attributed). Anyone else is left as they are.
    pub fn attribute(&self, caller: &mut Caller) {
        if !caller.ci.is_empty() {
            return;
        }
        let Some(scope) = caller
            .cgroup
            .as_deref()
            .map(|c| Path::new(c.trim_start_matches('/')))
        else {
            return;
        };
        if !self.containers.is_scope(scope) {
            return;
        }
        let governed = self.governed.strip_prefix(&self.mount).unwrap_or(&self.governed);
        let mut jobs = running_jobs(&self.governed);
        let how = match jobs.len() {
            1 => format!(
                "container scope {}: the one job running in {} when it connected",
                scope.display(),
                governed.display()
            ),
            n => format!(
                "container scope {}: not attributed, {n} jobs running in {} when it connected",
                scope.display(),
                governed.display()
            ),
        };
        caller.ci = if jobs.len() == 1 {
            jobs.remove(0)
        } else {
            Vec::new()
        };
        caller.ci.push((ATTRIBUTED_BY.to_owned(), how));
    }
}

/// The value of one fact.
pub fn get<'a>(facts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    facts.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_variables_are_kept() {
        let env = b"PATH=/bin\0GITHUB_TOKEN=not-this\0GITHUB_REPOSITORY=o/r\0GITHUB_RUN_ID=42\0ACTIONS_RUNTIME_TOKEN=nor-this\0GITHUB_ACTOR=alice\0";
        let got = from_environ(env);
        assert_eq!(
            got,
            vec![
                ("GITHUB_REPOSITORY".to_owned(), "o/r".to_owned()),
                ("GITHUB_RUN_ID".to_owned(), "42".to_owned()),
                ("GITHUB_ACTOR".to_owned(), "alice".to_owned()),
            ]
        );
        assert!(!format!("{got:?}").contains("not-this"));
    }

    #[test]
    fn a_child_inherits_facts_from_its_job_process() {
        use std::process::Command;
        // The children's own environments: cleared (twice), and one of its own; their parent (a
        // shell) has the job's.
        let mut out = Command::new("sh")
            .args([
                "-c",
                "env -i sleep 5 & echo $!; env -i GITHUB_REPOSITORY=o/own sleep 5 & echo $!; \
                 env -i sleep 5 & echo $!; wait",
            ])
            .env("GITHUB_REPOSITORY", "o/ci-test")
            .env("GITHUB_RUN_ID", "7")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out.stdout.take().unwrap()));
        let kids: Vec<u32> = (0..3)
            .map(|_| lines.next().unwrap().unwrap().trim().parse().unwrap())
            .collect();
        // Once the exec'd children are readable as themselves (not the shell's fork).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let got: Vec<_> = kids.iter().map(|k| facts(*k)).collect();
        // Asked again, from the walks remembered: the same answers.
        let again: Vec<_> = kids.iter().map(|k| facts(*k)).collect();
        for k in &kids {
            let _ = Command::new("kill").arg(k.to_string()).status();
        }
        let _ = out.wait();
        assert_eq!(get(&got[0], "GITHUB_REPOSITORY"), Some("o/ci-test"), "{got:?}");
        assert_eq!(get(&got[0], "GITHUB_RUN_ID"), Some("7"));
        assert_eq!(get(&got[1], "GITHUB_REPOSITORY"), Some("o/own"), "{got:?}");
        assert_eq!(get(&got[1], "GITHUB_RUN_ID"), None, "{got:?}");
        assert_eq!(got[2], got[0]);
        assert_eq!(again, got);
    }
}
