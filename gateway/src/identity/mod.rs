//! Who is calling: facts about the process behind a redirected connection.
//!
//! The kernel-sourced facts (captured at connect() time by the eBPF side) are authoritative;
//! /proc adds detail when the process is still there. This module never trusts anything the
//! client sends over the connection.
pub mod ci;
pub mod oidc;

use std::{fmt, path::PathBuf};

use ghgate_policy::Subject;

use crate::{record::model::SessionId, redirect::Redirected};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// From /proc/<tgid>/exe at accept; `None` when the process was already gone (or hidden).
    pub exe: Option<PathBuf>,
    /// The process's start time (clock ticks after boot, /proc/<tgid>/stat), which tells two
    /// processes that had the same tgid apart; `None` when the process was already gone.
    pub start_ticks: Option<u64>,
    /// The cgroup v2 path at accept ("/system.slice/actions.runner.service").
    pub cgroup: Option<String>,
    /// CI job facts (`ci::ALLOWED` variables only), empty outside CI.
    pub ci: Vec<(String, String)>,
}

impl Caller {
    /// The kernel's facts, completed from /proc where the process still exists.
    pub fn from_kernel(r: &Redirected) -> Self {
        Self {
            exe: std::fs::read_link(format!("/proc/{}/exe", r.tgid)).ok(),
            start_ticks: start_ticks(r.tgid),
            cgroup: cgroup_path(r.tgid),
            ci: ci::facts(r.tgid),
            ..Self::kernel_only(r)
        }
    }

    /// The kernel's facts alone, nothing from /proc.
    fn kernel_only(r: &Redirected) -> Self {
        Self {
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            comm: r.comm.clone(),
            exe: None,
            start_ticks: None,
            cgroup: None,
            ci: Vec::new(),
        }
    }

    /// The kernel's facts of something that happened at `at` (wall-clock micros), completed from
    /// /proc only if the process there now is the one that was there then: a refusal recorded
    /// after the gateway was away may name a tgid the system has since given to another process.
    pub fn from_kernel_at(r: &Redirected, at: crate::record::model::Micros) -> Self {
        let started = start_ticks(r.tgid).and_then(ticks_to_wall_micros);
        if started.is_some_and(|s| s <= at.saturating_add(1_000_000)) {
            Self::from_kernel(r)
        } else {
            Self::kernel_only(r)
        }
    }

    /// The session this caller belongs to: one run of one process on this boot. The same
    /// process keeps its session across gateway restarts.
    pub fn session_id(&self) -> SessionId {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(boot_id().as_bytes());
        h.update(self.tgid.to_le_bytes());
        // A process already gone when accepted: its kernel facts still make a stable id.
        match self.start_ticks {
            Some(t) => h.update(t.to_le_bytes()),
            None => h.update(format!("{}:{}:{}", self.comm, self.uid, self.cgroup_id).as_bytes()),
        }
        SessionId::new(hex::encode(&h.finalize()[..8]))
    }

    /// The command line, from /proc while the process exists.
    pub fn cmdline(&self) -> Vec<String> {
        std::fs::read(format!("/proc/{}/cmdline", self.tgid))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The kernel's id of this boot (tgids and start times repeat across boots).
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// A process start time (clock ticks after boot) as wall-clock microseconds.
fn ticks_to_wall_micros(ticks: u64) -> Option<crate::record::model::Micros> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()?;
    let clock = |id| {
        nix::time::clock_gettime(id)
            .ok()
            .map(|t| t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1000)
    };
    let boot = clock(nix::time::ClockId::CLOCK_REALTIME)? - clock(nix::time::ClockId::CLOCK_BOOTTIME)?;
    u64::try_from(boot + i128::from(ticks) * 1_000_000 / i128::from(hz)).ok()
}

/// A process's start time in clock ticks after boot: field 22 of /proc/<tgid>/stat (the one
/// reader of it). The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its closing parenthesis. `None` once the process is gone.
pub fn start_ticks(tgid: u32) -> Option<u64> {
    start_ticks_in(&std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?)
}

fn start_ticks_in(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The facts rules (the policy's and the credentials') know a caller by: the kernel's and
/// /proc's, the CI job's, and the claims of the OIDC token it proved.
pub fn subject(caller: &Caller, oidc: Option<&serde_json::Map<String, serde_json::Value>>) -> Subject {
    let ci_var = |name: &str| ci::get(&caller.ci, name).map(str::to_owned);
    Subject {
        uid: caller.uid,
        user: user_name(caller.uid),
        exe: caller.exe.as_ref().map(|p| p.display().to_string()),
        comm: caller.comm.clone(),
        cgroup: caller.cgroup.clone(),
        ci_repository: ci_var("GITHUB_REPOSITORY"),
        ci_workflow: ci_var("GITHUB_WORKFLOW"),
        ci_ref: ci_var("GITHUB_REF"),
        oidc: oidc.cloned(),
    }
}

/// The user name of a uid, from /etc/passwd (no NSS: the gateway must not block on a directory
/// service while serving). Answers are kept for a minute: the policy asks for every request.
pub fn user_name(uid: u32) -> Option<String> {
    use std::{
        collections::HashMap,
        sync::{LazyLock, Mutex},
        time::{Duration, Instant},
    };
    type Names = HashMap<u32, (Option<String>, Instant)>;
    static NAMES: LazyLock<Mutex<Names>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    const FRESH: Duration = Duration::from_secs(60);
    if let Some((name, at)) = NAMES.lock().ok()?.get(&uid)
        && at.elapsed() < FRESH
    {
        return name.clone();
    }
    let name = read_user_name(uid);
    if let Ok(mut names) = NAMES.lock() {
        if names.len() > 4096 {
            names.clear();
        }
        names.insert(uid, (name.clone(), Instant::now()));
    }
    name
}

fn read_user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// The cgroup v2 path of a live process ("/ghgate.clients"), from /proc/<tgid>/cgroup.
pub fn cgroup_path(tgid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}] uid={}", self.comm, self.tgid, self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_stable_session() {
        let me = std::process::id();
        assert!(start_ticks(me).is_some());
        let caller = Caller {
            tgid: me,
            pid: me,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            comm: "t".into(),
            exe: None,
            start_ticks: start_ticks(me),
            cgroup: None,
            ci: Vec::new(),
        };
        assert_eq!(caller.session_id(), caller.session_id());
        assert_eq!(caller.session_id().as_str().len(), 16);
        let other = Caller {
            start_ticks: caller.start_ticks.map(|t| t + 1),
            ..caller.clone()
        };
        assert_ne!(
            caller.session_id(),
            other.session_id(),
            "a reused tgid is another session"
        );
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    /// A command name may hold spaces and parentheses (a process names itself): the fields are
    /// counted after the last closing parenthesis.
    #[test]
    fn the_start_time_is_read_past_a_hostile_command_name() {
        let stat = "4242 (x) 1 2 3 4 5 (evil) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        assert_eq!(start_ticks_in(stat), Some(987654));
        assert_eq!(start_ticks_in("4242 (no end"), None);
        assert_eq!(start_ticks_in("4242 (short) S 1"), None);
    }
}
