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
    /// Who logged in, and in which login session, from /proc at accept (unset when the process
    /// was already gone, or is not descended from a login).
    pub login: Login,
}

impl Caller {
    /// The kernel's facts, completed from /proc where the process still exists.
    pub fn from_kernel(r: &Redirected) -> Self {
        let start_ticks = start_ticks(r.tgid);
        Self {
            exe: std::fs::read_link(format!("/proc/{}/exe", r.tgid)).ok(),
            login: start_ticks.map_or_else(Login::default, |t| Login::of_started(r.tgid, t)),
            start_ticks,
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
            login: Login::default(),
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
        proc_bytes(format!("/proc/{}/cmdline", self.tgid))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The kernel's audit facts of a process: the uid that logged in (`/proc/<pid>/loginuid`, which
/// su, sudo, setpriv and setuid programs do not change, so a person who switches uid is still
/// known) and the login session (`/proc/<pid>/sessionid`, new at each login). `None` where the
/// kernel says unset (4294967295): a process not descended from a login, such as a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Login {
    pub uid: Option<u32>,
    pub session: Option<u32>,
}

/// The kernel's "unset" for both the login uid and the session id.
const AUDIT_UNSET: u32 = u32::MAX;

impl Login {
    /// Reads the login facts of `tgid` now, without asking whether it is the process the caller
    /// means: use [`Login::of_started`] or [`peer_login`], which do.
    fn read(tgid: u32) -> Self {
        let field = |name: &str| proc_text(format!("/proc/{tgid}/{name}")).and_then(|s| parse_audit_id(&s));
        Login {
            uid: field("loginuid"),
            session: field("sessionid"),
        }
    }

    /// The login facts of `tgid` if it is still the process that started at `start_ticks`: read
    /// between two reads of its start time, so a reused pid yields nothing rather than another
    /// process's login.
    pub fn of_started(tgid: u32, started: u64) -> Self {
        if start_ticks(tgid) != Some(started) {
            return Login::default();
        }
        let login = Login::read(tgid);
        if start_ticks(tgid) == Some(started) {
            login
        } else {
            Login::default()
        }
    }

    /// The person: the login uid, or `uid` (the process's own) where no login is recorded.
    pub fn person(&self, uid: u32) -> u32 {
        self.uid.unwrap_or(uid)
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uid {
            Some(uid) => write!(f, "login uid {uid}")?,
            None => f.write_str("no login uid")?,
        }
        if let Some(session) = self.session {
            write!(f, ", session {session}")?;
        }
        Ok(())
    }
}

/// A login uid or session id as /proc writes it; `None` for unset or unreadable.
fn parse_audit_id(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|&id| id != AUDIT_UNSET)
}

/// The uid and login facts of the process at the other end of a Unix socket (its peer when it
/// connected). The pid the kernel reports may be reused once that process is gone, so the facts
/// are read through a pidfd (`SO_PEERPIDFD`) that holds the peer's pid: its pid is read from the
/// pidfd before and after /proc is read, and if the process was reaped meanwhile (the pidfd
/// then reports no pid) nothing is returned. Kernels before 6.5 have no `SO_PEERPIDFD`: there
/// the process found under the pid must have started before `connected_at` (wall-clock micros).
pub fn peer_login(
    stream: &impl std::os::fd::AsFd,
    connected_at: crate::record::model::Micros,
) -> std::io::Result<(u32, Login)> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::io::{Error, ErrorKind};
    let cred = getsockopt(stream, sockopt::PeerCredentials)?;
    let gone = || {
        Error::new(
            ErrorKind::NotFound,
            "the peer process exited before its login could be read",
        )
    };
    let uid = cred.uid();
    match getsockopt(stream, sockopt::PeerPidfd) {
        Ok(pidfd) => {
            let pid = pidfd_pid(&pidfd).ok_or_else(gone)?;
            let login = Login::read(pid);
            if pidfd_pid(&pidfd) != Some(pid) {
                return Err(gone());
            }
            Ok((uid, login))
        }
        Err(nix::errno::Errno::ENOPROTOOPT | nix::errno::Errno::EINVAL) => {
            let pid = u32::try_from(cred.pid()).map_err(|_| gone())?;
            let started = start_ticks(pid).ok_or_else(gone)?;
            let before = ticks_to_wall_micros(started).is_some_and(|s| s <= connected_at);
            if !before {
                return Err(gone());
            }
            let login = Login::of_started(pid, started);
            if start_ticks(pid) != Some(started) {
                return Err(gone());
            }
            Ok((uid, login))
        }
        Err(e) => Err(e.into()),
    }
}

/// The pid a pidfd stands for, in this pid namespace (`Pid:` of its fdinfo); `None` once the
/// process has been reaped, after which its pid may be given to another process.
fn pidfd_pid(pidfd: &std::os::fd::OwnedFd) -> Option<u32> {
    use std::os::fd::AsRawFd as _;
    let info = proc_text(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim();
    pid.parse::<u32>().ok().filter(|&p| p > 0)
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
    start_ticks_in(&proc_text(format!("/proc/{tgid}/stat"))?)
}

/// A kernel pseudo-file's bytes (/proc, cgroupfs; `None` once the process or cgroup is gone).
/// A connection's caller is read from several /proc files on the accept path: `fs::read` asks each for its size (always 0 here) and
/// then reads it 32, 32, 64, 128… bytes at a time, about nine system calls a file. Here: open,
/// one read into a page-sized buffer (grown only for a longer file), one that finds the end,
/// close.
pub(crate) fn proc_bytes(path: impl AsRef<std::path::Path>) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let mut bytes = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    bytes.truncate(len);
    Some(bytes)
}

/// A kernel pseudo-file's text, as [`proc_bytes`] reads it.
pub(crate) fn proc_text(path: impl AsRef<std::path::Path>) -> Option<String> {
    String::from_utf8(proc_bytes(path)?).ok()
}

fn start_ticks_in(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A process's parent and start time, from one read of /proc/<pid>/stat.
pub(crate) fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = proc_text(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')')? + 1..];
    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, start_ticks_in(&stat)?))
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
    let text = proc_text(format!("/proc/{tgid}/cgroup"))?;
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

    /// What `proc_bytes` reads is what `fs::read` reads: a short /proc file, a file longer than
    /// its first buffer, an empty one; and nothing for a process that is not there.
    #[test]
    fn proc_files_read_whole_in_few_calls() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("long");
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&long, &text).unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        for path in [
            long.to_str().unwrap(),
            empty.to_str().unwrap(),
            "/proc/self/cgroup",
        ] {
            assert_eq!(proc_bytes(path), std::fs::read(path).ok(), "{path}");
        }
        let stat = proc_text("/proc/self/stat").unwrap();
        assert!(stat.starts_with(&format!("{} (", std::process::id())), "{stat}");
        assert_eq!(proc_bytes("/proc/4294967295/stat"), None);
    }

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
            login: Login::default(),
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

    #[test]
    fn login_facts_read_unset_as_none() {
        assert_eq!(parse_audit_id("4294967295"), None);
        assert_eq!(parse_audit_id("1000\n"), Some(1000));
        assert_eq!(parse_audit_id("0"), Some(0));
        assert_eq!(parse_audit_id("-1"), None);
        assert_eq!(parse_audit_id(""), None);
        let mine = Login::read(std::process::id());
        let started = start_ticks(std::process::id()).unwrap();
        assert_eq!(Login::of_started(std::process::id(), started), mine);
        // Another start time: another process under a reused pid, whose login is not ours.
        let unset = Login::default();
        assert_eq!(Login::of_started(std::process::id(), started + 1), unset);
        assert_eq!(
            Login {
                uid: Some(0),
                session: Some(3)
            }
            .person(65534),
            0
        );
        assert_eq!(unset.person(65534), 65534);
        assert_eq!(
            Login {
                uid: Some(1000),
                session: Some(3)
            }
            .to_string(),
            "login uid 1000, session 3"
        );
        assert_eq!(unset.to_string(), "no login uid");
    }

    /// The peer of a socket is read through its pidfd: our own uid and login here.
    #[test]
    fn a_socket_peer_is_known_by_uid_and_login() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (uid, login) = peer_login(&a, u64::MAX).unwrap();
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert_eq!(login, Login::read(std::process::id()));
    }

    /// Once a process is reaped its pid may be given to another; its pidfd then names no pid,
    /// so nothing is read under it.
    #[test]
    fn a_reaped_process_pidfd_names_no_pid() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = crate::sys::pidfd_open(child.id()).unwrap();
        assert_eq!(pidfd_pid(&pidfd), Some(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(pidfd_pid(&pidfd), None);
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
