//! CI job facts: for a process under a GitHub Actions runner, which repository, run, job and
//! actor it works for — read from the environment the runner gave the step it descends from
//! (see [`facts`]), never from the process's own.
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

/// The executable the GitHub Actions runner runs a job in: every step's process is its child,
/// started with the job's environment.
pub const WORKER: &str = "Runner.Worker";

/// How many processes one walk reads before giving up: then the outermost worker above them
/// cannot be told, and the caller gets no facts. (A walk stops earlier at an ancestor whose
/// answer is remembered, which was itself found from init.)
const MAX_ANCESTORS: usize = 64;

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
/// child of the same shell or job, then costs one read of /proc/<pid>/stat instead of walking
/// every ancestor again (136 µs of a new connection's cost, measured, five ancestors).
const WALK_TTL: Duration = Duration::from_secs(5);

/// What a walk found for one process: its job's facts (empty for none) and whether the process
/// is itself a runner's worker.
#[derive(Clone)]
struct Walked {
    facts: Vec<(String, String)>,
    worker: bool,
}

/// The answers of recent walks: (pid, start ticks) → what was found for that process.
type Walks = LruCache<(u32, u64), (Instant, Walked)>;

fn walks() -> &'static Mutex<Walks> {
    static WALKS: OnceLock<Mutex<Walks>> = OnceLock::new();
    WALKS.get_or_init(|| Mutex::new(LruCache::new(NonZeroUsize::new(4096).expect("non-zero"))))
}

/// Whether process `pid` runs the runner's worker executable.
fn is_worker(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .is_some_and(|exe| exe.file_name().is_some_and(|n| n == WORKER))
}

/// The CI job facts of process `tgid`: those the runner gave the job's step it descends from,
/// read from the environment of that step's process (the child of the outermost
/// [`WORKER`] among its ancestors). Empty outside a job.
///
/// Never the caller's own environment, nor any other descendant's: what a step runs can have
/// any environment (`GITHUB_WORKFLOW=release git push`), or start a worker of its own to run
/// children with a made-up job, and must not pass for another job by it. The
/// outermost worker is the runner's: one a step starts is below it. A walk that reads
/// [`MAX_ANCESTORS`] processes without reaching init (or an ancestor's remembered answer) gives
/// nothing. The step's own process remains trusted, and the step controls it: a script that
/// replaces itself (`exec env GITHUB_WORKFLOW=release …`) or rewrites its environment in place
/// chooses what its descendants get. Grants that must hold against the job's own code belong
/// on OIDC claims, which GitHub signs.
///
/// A process is known by its pid and start time, so a reused pid is never given another
/// process's answer; an answer is reused for [`WALK_TTL`].
pub fn facts(tgid: u32) -> Vec<(String, String)> {
    // Up from the caller to init, or to an ancestor walked recently.
    let mut chain: Vec<((u32, u64), bool)> = Vec::new();
    let mut above: Option<Walked> = None;
    let mut pid = tgid;
    let reached_top = loop {
        if chain.len() == MAX_ANCESTORS {
            break false;
        }
        let Some((ppid, start)) = super::parent_and_start(pid) else {
            // Gone (or unreadable) while walking: what is above cannot be told (the child may
            // have been reparented), so nothing is said, and nothing remembered.
            break false;
        };
        let cached = walks()
            .lock()
            .expect("walks lock")
            .get(&(pid, start))
            .filter(|(at, _)| at.elapsed() < WALK_TTL)
            .map(|(_, w)| w.clone());
        if let Some(w) = cached {
            above = Some(w);
            break true;
        }
        chain.push(((pid, start), is_worker(pid)));
        if ppid <= 1 {
            break true;
        }
        pid = ppid;
    };
    if !reached_top {
        return Vec::new();
    }
    // Down again: below a job's step, the job; a worker's child is a step, with the facts its
    // environment holds; anything else, nothing.
    let mut answers = Vec::with_capacity(chain.len());
    let mut parent = above;
    for &((pid, start), worker) in chain.iter().rev() {
        let facts = match &parent {
            Some(p) if !p.facts.is_empty() => p.facts.clone(),
            Some(p) if p.worker => super::proc_bytes(format!("/proc/{pid}/environ"))
                .map(|e| from_environ(&e))
                .filter(|f| get(f, "GITHUB_REPOSITORY").is_some())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let walked = Walked { facts, worker };
        answers.push(((pid, start), walked.clone()));
        parent = Some(walked);
    }
    let now = Instant::now();
    let mut cache = walks().lock().expect("walks lock");
    for (key, walked) in answers {
        cache.put(key, (now, walked));
    }
    parent.map(|w| w.facts).unwrap_or_default()
}

/// The fact that says how a container scope's connection was (or was not) attributed to a job.
pub const ATTRIBUTED_BY: &str = "attributed_by";

/// How many processes [`running_jobs`] reads at most, and how deep it walks.
const MAX_JOB_PROCESSES: usize = 4096;
const MAX_CGROUP_DEPTH: usize = 8;

/// The distinct jobs (their facts) of the processes in the cgroup `dir` and below, each known as
/// [`facts`] knows it (a process's own environment names no job: a step cannot make a second
/// job appear, or pass for one).
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
            let found = facts(pid);
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

    /// A copy of a shell named as the runner's worker, in a directory of its own (removed on
    /// drop): what runs it is, by its executable, a worker.
    struct FakeWorker {
        dir: tempfile::TempDir,
    }

    impl FakeWorker {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy("/bin/sh", dir.path().join(WORKER)).unwrap();
            Self { dir }
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join(WORKER)
        }
    }

    /// Runs `script` under `sh` with `env`, reads the pids it echoes (one per line, `count`),
    /// lets them exec, and returns the facts of each (asked twice: the second from the walks
    /// remembered, which must agree), killing them after.
    fn facts_of_echoed(mut cmd: std::process::Command, count: usize) -> Vec<Vec<(String, String)>> {
        let mut out = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out.stdout.take().unwrap()));
        let kids: Vec<u32> = (0..count)
            .map(|_| lines.next().unwrap().unwrap().trim().parse().unwrap())
            .collect();
        // Once the exec'd children are readable as themselves (not the shell's fork).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let got: Vec<_> = kids.iter().map(|k| facts(*k)).collect();
        let again: Vec<_> = kids.iter().map(|k| facts(*k)).collect();
        for k in &kids {
            let _ = std::process::Command::new("kill").arg(k.to_string()).status();
        }
        let _ = out.kill();
        let _ = out.wait();
        assert_eq!(again, got, "remembered walks give the same answers");
        got
    }

    /// Under a worker, every descendant of a step has the step's facts, whatever its own
    /// environment says: cleared, or made up to pass for another repository, workflow or ref, or
    /// under a worker the step started itself (nested below the runner's).
    #[test]
    fn a_step_s_descendants_have_the_job_s_facts_whatever_their_own_environment_says() {
        use std::process::Command;
        let worker = FakeWorker::new();
        // The worker starts a step (its child, with the job's environment); the step starts
        // the children whose facts are asked.
        let step = format!(
            "sleep 30 & echo $!; \
             env -i sleep 30 & echo $!; \
             env GITHUB_REPOSITORY=evil/other GITHUB_WORKFLOW=release GITHUB_REF=refs/heads/main sleep 30 & echo $!; \
             GITHUB_REPOSITORY=evil/nested {worker} -c 'sh -c \"sleep 30 & echo \\$!; wait\" & wait' & \
             wait",
            worker = worker.path().display()
        );
        let mut cmd = Command::new(worker.path());
        cmd.args(["-c", "sh -c \"$0\" & wait", &step])
            .env("GITHUB_REPOSITORY", "o/ci-test")
            .env("GITHUB_RUN_ID", "7")
            .env("GITHUB_WORKFLOW", "tests")
            .env("GITHUB_REF", "refs/pull/1/merge");
        let got = facts_of_echoed(cmd, 4);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(
                get(f, "GITHUB_REPOSITORY"),
                Some("o/ci-test"),
                "child {i}: {got:?}"
            );
            assert_eq!(get(f, "GITHUB_RUN_ID"), Some("7"), "child {i}");
            assert_eq!(get(f, "GITHUB_WORKFLOW"), Some("tests"), "child {i}");
            assert_eq!(get(f, "GITHUB_REF"), Some("refs/pull/1/merge"), "child {i}");
        }
    }

    /// A process too deep to walk to init gets nothing: its outermost worker cannot be told, and
    /// a worker a step nests far enough below the runner's must not become the outermost.
    #[test]
    fn a_process_deeper_than_the_walk_gets_no_facts() {
        use std::process::Command;
        let worker = FakeWorker::new();
        let nest = worker.dir.path().join("nest.sh");
        // `; :` keeps each shell from replacing itself with the next.
        std::fs::write(
            &nest,
            "if [ \"$1\" -gt 0 ]; then /bin/sh \"$0\" $(($1 - 1)); :; else sleep 30 & echo $!; wait; fi\n",
        )
        .unwrap();
        let under = |depth: usize| {
            let mut cmd = Command::new(worker.path());
            cmd.args(["-c", "sh \"$0\" \"$1\" & wait"])
                .arg(&nest)
                .arg(depth.to_string())
                .env("GITHUB_REPOSITORY", "o/deep")
                .env("GITHUB_RUN_ID", "11");
            facts_of_echoed(cmd, 1).remove(0)
        };
        assert_eq!(get(&under(4), "GITHUB_REPOSITORY"), Some("o/deep"));
        assert_eq!(under(MAX_ANCESTORS), Vec::new());
    }

    /// Outside a worker, a process's own environment counts for nothing: setting the job's
    /// variables does not make a job.
    #[test]
    fn without_a_worker_a_made_up_environment_is_no_job() {
        use std::process::Command;
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "env GITHUB_REPOSITORY=o/own GITHUB_RUN_ID=8 sleep 30 & echo $!; sleep 30 & echo $!; wait",
        ])
        .env("GITHUB_REPOSITORY", "o/parent")
        .env("GITHUB_RUN_ID", "9");
        let got = facts_of_echoed(cmd, 2);
        assert!(got.iter().all(Vec::is_empty), "{got:?}");
    }
}
