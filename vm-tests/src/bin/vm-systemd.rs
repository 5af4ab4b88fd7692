//! The systemd guest's test, run at every boot by `ghgate-vm.service` (written into the Debian
//! image by `cargo xtask vm-test`): what a runner admin does, on a host booted by systemd.
//!
//! First boot: a fake GitHub (`fake-github.service`, this program with `fake-github`) and a
//! runner-like unit (`actions.runner.org-repo.runner1.service`, whose job steps use curl, git,
//! node and a container stand-in: a `docker-<id>.scope` made with `systemd-run --scope`), then
//! the real `ghgate install --runner --containers`, the runner restarted into the slice, every
//! step checked to have gone through the gateway and been recorded with its cgroup, `ghgate
//! doctor`, and a reboot. Second boot: the runner's job, started by systemd at boot, was
//! enforced (the gateway was ready before it started), doctor passes again, and `ghgate
//! uninstall --purge` leaves no program, pin, unit, file or trust-store entry behind.
//!
//! The fake GitHub's CA is trusted by the gateway only (not by the system store): a step that
//! went around the gateway fails its TLS handshake, so a passing step was intercepted.
//!
//! Prints one `GHGATE-VM-RESULT:` line on the serial console and powers the guest off, on every
//! path but the planned reboot.
#![allow(
    unsafe_code,
    reason = "adjtimex, to mark the guest's clock synchronised (there is no NTP server to reach)"
)]
use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use ghgate_e2e::https::{TestCa, Upstream};

const STATE: &str = "/var/lib/ghgate-vm";
const STAGE: &str = "/var/lib/ghgate-vm/stage";
const GIT_ROOT: &str = "/srv/git";
const FAKE_DIR: &str = "/etc/ghgate-vm";
/// Where /etc/hosts (written by the image's build) puts GitHub's names.
const FAKE_ADDR: &str = "127.0.1.10:443";
const FAKE_IP: &str = "127.0.1.10";
const RUNNER_UNIT: &str = "actions.runner.org-repo.runner1.service";
const RUNNER_DIR: &str = "/opt/actions-runner";
const GHGATE: &str = "/opt/ghgate-vm/ghgate";
/// The container stand-in's scope, as Docker's systemd cgroup driver names them.
const CONTAINER_SCOPE: &str = "docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

type Result<T> = std::result::Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("fake-github") {
        fake_github();
    }
    let start = Instant::now();
    let stage = fs::read_to_string(STAGE).unwrap_or_default();
    let verdict = match stage.trim() {
        "" => first_boot(),
        "rebooted" => second_boot(),
        other => Err(format!("unexpected stage {other:?} (a third boot?)")),
    };
    say(&format!(
        "boot took {:.1} s of test (since the unit started), {:.1} s since the kernel started",
        start.elapsed().as_secs_f64(),
        uptime()
    ));
    match verdict {
        Ok(Next::Reboot) => {
            say("rebooting");
            let _ = run("systemctl", &["reboot"]);
            // systemd stops this unit on the way down.
            std::thread::sleep(Duration::from_secs(600));
            finish(Err("the reboot did not happen within 600 s".into()));
        }
        Ok(Next::Done) => finish(Ok(())),
        Err(why) => finish(Err(why)),
    }
}

enum Next {
    Reboot,
    Done,
}

fn say(line: &str) {
    println!("vm-systemd: {line}");
    let _ = std::io::stdout().flush();
}

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn finish(verdict: Result<()>) -> ! {
    let line = match verdict {
        Ok(()) => "GHGATE-VM-RESULT: PASS".to_owned(),
        Err(why) => format!("GHGATE-VM-RESULT: FAIL {}", why.replace('\n', " | ")),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    let _ = Command::new("systemctl").arg("poweroff").status();
    std::thread::sleep(Duration::from_secs(600));
    std::process::exit(1);
}

/// Runs a command, its output captured.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))
}

/// Runs a command that must succeed; returns its stdout. Its output is printed.
fn must(program: &str, args: &[&str]) -> Result<String> {
    let started = Instant::now();
    let out = run(program, args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    say(&format!(
        "$ {program} {} ({}, {:.1} s)",
        args.join(" "),
        out.status,
        started.elapsed().as_secs_f64()
    ));
    for line in stdout.lines().chain(stderr.lines()) {
        println!("    {line}");
    }
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            stderr
                .lines()
                .last()
                .unwrap_or(stdout.lines().last().unwrap_or(""))
        ));
    }
    Ok(stdout)
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(what()) }
}

fn write(path: &str, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = Path::new(path).parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("write {path}: {e}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {path}: {e}"))
}

/// The guest has no NTP server to reach: its clock is the host's (through the emulated RTC), so
/// it is marked synchronised as an NTP client would, for doctor's clock check.
fn clock_synchronised() -> Result<()> {
    // SAFETY: adjtimex reads and writes the timex we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
    tx.status = 0;
    tx.maxerror = 0;
    tx.esterror = 0;
    // SAFETY: as above.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `fake-github`: GitHub's side on [`FAKE_ADDR`] (the API and git smart HTTP over
/// [`GIT_ROOT`]), with a CA kept across the reboot; tells systemd when it listens.
fn fake_github() -> ! {
    let (ca, _) = TestCa::load_or_create(Path::new(FAKE_DIR)).expect("the fake GitHub's CA");
    let names = ["github.com", "api.github.com", "codeload.github.com"];
    let upstream = Upstream::builder(&ca, &names)
        .bind(FAKE_ADDR.parse().expect("an address"))
        .git(Some(GIT_ROOT.into()))
        .start();
    println!("fake GitHub listening on {}", upstream.addr);
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let socket = std::os::unix::net::UnixDatagram::unbound().expect("a datagram socket");
        socket.send_to(b"READY=1", path).expect("notify systemd");
    }
    loop {
        std::thread::park();
    }
}

const FAKE_UNIT: &str = "[Unit]
Description=A fake GitHub on loopback for the guest test
Before=actions.runner.org-repo.runner1.service

[Service]
Type=notify
ExecStart=/opt/ghgate-vm/vm-systemd fake-github

[Install]
WantedBy=multi-user.target
";

/// As `./svc.sh install` writes it, but a oneshot whose one run is one job (so its end is
/// the job's end).
const RUNNER_UNIT_TEXT: &str = "[Unit]
Description=GitHub Actions Runner (org-repo.runner1)
After=network.target fake-github.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/opt/actions-runner/runsvc.sh
WorkingDirectory=/opt/actions-runner
KillMode=process
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
";

/// The job: reads `.env` as the runner does, then each step with a tool jobs use. One line
/// per step in `job-<boot>.log`: `step <name> ok <detail>` or `step <name> FAIL <why>`.
const RUNSVC: &str = r#"#!/bin/sh
set -u
cd /opt/actions-runner
set -a
. ./.env
set +a
boot=$(cat /var/lib/ghgate-vm/boots 2>/dev/null || echo 0)
log=/var/lib/ghgate-vm/job-$boot.log
: > "$log"
step() {
    name=$1
    shift
    if out=$("$@" 2>&1); then
        echo "step $name ok $(echo "$out" | tr '\n' ' ' | cut -c1-300)" >> "$log"
    else
        echo "step $name FAIL $(echo "$out" | tr '\n' ' ' | cut -c1-300)" >> "$log"
    fi
}
echo "cgroup $(cat /proc/self/cgroup)" >> "$log"
step curl curl -sS --fail --max-time 60 https://api.github.com/repos/o/r
step git-ls-remote git ls-remote https://github.com/o/r.git
rm -rf /tmp/job-clone
step git-clone git clone -q https://github.com/o/r.git /tmp/job-clone
step node node -e "require('https').get('https://api.github.com/repos/o/r',r=>{let b='';r.on('data',d=>b+=d);r.on('end',()=>{if(r.statusCode!==200){console.error(r.statusCode);process.exit(1)}console.log(b.slice(0,80))})}).on('error',e=>{console.error(e.message);process.exit(1)})"
step container systemd-run --quiet --scope --unit=CONTAINER_SCOPE /opt/actions-runner/container.sh
exit 0
"#;

/// The container stand-in: a process in a scope of its own, outside the runner's cgroup, as
/// Docker starts a job's container. It waits for the gateway to have attached to its scope (a
/// real container's first instants may run before that: the documented window), then reaches
/// GitHub.
const CONTAINER: &str = r#"#!/bin/sh
set -u
# Only while ghgate is installed (its pins exist): before install there is nothing to wait for.
if [ -d /sys/fs/bpf/ghgate ]; then
    for i in $(seq 1 120); do
        ls /sys/fs/bpf/ghgate/scopes 2>/dev/null | grep -q docker- && break
        sleep 0.5
    done
fi
echo "cgroup $(cat /proc/self/cgroup)"
curl -sS --fail --max-time 60 https://api.github.com/repos/o/r
"#;

fn first_boot() -> Result<Next> {
    say(&format!("first boot, {:.1} s after the kernel started", uptime()));
    clock_synchronised()?;
    write(&format!("{STATE}/boots"), "1\n", 0o644)?;
    let t = Instant::now();

    // A repository for the fake GitHub to serve.
    let bare = format!("{GIT_ROOT}/o/r.git");
    must("git", &["init", "-q", "--bare", "-b", "main", &bare])?;
    let work = "/tmp/seed";
    must("git", &["init", "-q", "-b", "main", work])?;
    write(&format!("{work}/README"), "seeded by vm-systemd\n", 0o644)?;
    let git_id = ["-c", "user.name=vm", "-c", "user.email=vm@example.test"];
    must("git", &[&["-C", work][..], &git_id, &["add", "README"]].concat())?;
    must(
        "git",
        &[&["-C", work][..], &git_id, &["commit", "-q", "-m", "seed"]].concat(),
    )?;
    must("git", &["-C", work, "push", "-q", &bare, "main"])?;

    write("/etc/systemd/system/fake-github.service", FAKE_UNIT, 0o644)?;
    write(
        &format!("/etc/systemd/system/{RUNNER_UNIT}"),
        RUNNER_UNIT_TEXT,
        0o644,
    )?;
    write(
        &format!("{RUNNER_DIR}/runsvc.sh"),
        &RUNSVC.replace("CONTAINER_SCOPE", CONTAINER_SCOPE),
        0o755,
    )?;
    write(&format!("{RUNNER_DIR}/container.sh"), CONTAINER, 0o755)?;
    write(&format!("{RUNNER_DIR}/.env"), "LANG=C.UTF-8\n", 0o644)?;
    must("systemctl", &["daemon-reload"])?;
    must("systemctl", &["enable", "--now", "fake-github.service"])?;
    must("systemctl", &["enable", RUNNER_UNIT])?;

    // Before install: the runner's job cannot reach the fake GitHub (its CA is trusted by
    // nobody but the gateway), which is what makes a passing step proof of interception.
    must("systemctl", &["start", RUNNER_UNIT])?;
    let before = job_steps(1)?;
    check(before.iter().all(|(_, ok, _)| !ok), || {
        format!("before install a job step reached the fake GitHub directly: {before:?}")
    })?;
    say(&format!("setup done in {:.1} s", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    write_config()?;
    let out = must(
        GHGATE,
        &["install", "--runner", "--containers", "--binary", GHGATE],
    )?;
    check(out.contains("install:"), || format!("install said: {out}"))?;
    let again = must(
        GHGATE,
        &["install", "--runner", "--containers", "--binary", GHGATE],
    )?;
    // Running it twice changes nothing: every file is unchanged, and the one command that runs
    // every time (`systemctl enable --now`, to start a stopped gateway) is a no-op here.
    let changed: Vec<&str> = again
        .lines()
        .filter(|l| l.starts_with("done") && !l.contains("systemctl enable --now ghgate.service"))
        .collect();
    check(changed.is_empty(), || {
        format!("a second install changed something: {changed:?}")
    })?;
    must("systemctl", &["is-active", "ghgate.service"])?;
    say(&format!("install done in {:.1} s", t.elapsed().as_secs_f64()));

    // The install's note: restart the runner so it runs in the slice and reads the new .env.
    let t = Instant::now();
    write(&format!("{STATE}/boots"), "2\n", 0o644)?;
    must("systemctl", &["restart", RUNNER_UNIT])?;
    job_passed(2)?;
    say(&format!("runner job done in {:.1} s", t.elapsed().as_secs_f64()));

    // A process outside the governed cgroups (this unit) still goes direct, and fails.
    let direct = run(
        "curl",
        &["-sS", "--max-time", "30", "https://api.github.com/repos/o/r"],
    )?;
    check(!direct.status.success(), || {
        "curl outside the runner's cgroup reached the fake GitHub: the test proves nothing".into()
    })?;

    records()?;
    // The store check wants 1 GiB free by default; the guest's whole disk is 1 GiB, so the
    // admin's knob for small hosts (`--min-free`) says less.
    let t = Instant::now();
    must(GHGATE, &["doctor", "--min-free", "256M"])?;
    say(&format!("doctor passed in {:.1} s", t.elapsed().as_secs_f64()));
    write(&format!("{STATE}/boots"), "3\n", 0o644)?;
    write(STAGE, "rebooted\n", 0o644)?;
    must("sync", &[])?;
    Ok(Next::Reboot)
}

/// The config an admin would keep in /etc/ghgate: install's own (written under a scratch
/// root), pointed at the fake GitHub. Install keeps an existing valid config.
fn write_config() -> Result<()> {
    let scratch = "/tmp/ghgate-config-root";
    let _ = fs::remove_dir_all(scratch);
    let unit_dir = format!("{scratch}/etc/systemd/system");
    fs::create_dir_all(&unit_dir).map_err(|e| format!("mkdir {unit_dir}: {e}"))?;
    fs::copy(
        format!("/etc/systemd/system/{RUNNER_UNIT}"),
        format!("{unit_dir}/{RUNNER_UNIT}"),
    )
    .map_err(|e| format!("copy the runner unit: {e}"))?;
    must(
        GHGATE,
        &[
            "install",
            "--runner",
            "--containers",
            "--binary",
            GHGATE,
            "--root",
            scratch,
        ],
    )?;
    let shipped = fs::read_to_string(format!("{scratch}/etc/ghgate/ghgate.toml"))
        .map_err(|e| format!("install wrote no config under {scratch}: {e}"))?;
    let _ = fs::remove_dir_all(scratch);
    let config = pointed_at_fake(&shipped)?;
    write("/etc/ghgate/ghgate.toml", &config, 0o600)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions("/etc/ghgate", fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod /etc/ghgate: {e}"))?;
    Ok(())
}

/// The shipped config with: GitHub's published ranges off (no internet), every intercepted
/// name answered by the fake's address, and the fake's CA trusted for upstream connections.
fn pointed_at_fake(shipped: &str) -> Result<String> {
    let mut config = String::new();
    let mut names = Vec::new();
    let mut in_hosts = false;
    let (mut ranges, mut roots) = (false, false);
    for line in shipped.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("hosts = [") {
            in_hosts = true;
        }
        if in_hosts {
            names.extend(trimmed.split('"').skip(1).step_by(2).map(str::to_owned));
            in_hosts = !trimmed.ends_with(']');
        }
        if trimmed == "ranges = \"meta\"" {
            config.push_str("ranges = \"off\"\n");
            ranges = true;
        } else if trimmed == "upstream_extra_roots = []" {
            config.push_str(&format!(
                "upstream_extra_roots = [\"{FAKE_DIR}/upstream-ca.pem\"]\n"
            ));
            roots = true;
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    check(ranges && roots && !names.is_empty(), || {
        format!(
            "the shipped config changed shape (ranges {ranges}, upstream_extra_roots {roots}, {} names)",
            names.len()
        )
    })?;
    config.push_str("\n# vm-systemd: every intercepted name is the fake GitHub.\n[dns.overrides]\n");
    for name in names {
        config.push_str(&format!("\"{name}\" = [\"{FAKE_IP}\"]\n"));
    }
    Ok(config)
}

/// The steps of the job run while `boots` said `boot`: (name, ok, detail).
fn job_steps(boot: u32) -> Result<Vec<(String, bool, String)>> {
    let path = format!("{STATE}/job-{boot}.log");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e} (did the job run?)"))?;
    say(&format!("{path}:"));
    for line in text.lines() {
        println!("    {line}");
    }
    let steps: Vec<(String, bool, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let name = parts.next()?.to_owned();
            let ok = parts.next()? == "ok";
            Some((name, ok, parts.next().unwrap_or("").to_owned()))
        })
        .collect();
    check(steps.len() == 5, || {
        format!("{path}: expected 5 steps, found {}", steps.len())
    })?;
    Ok(steps)
}

/// Every step of the job passed, the job ran in the slice and the container in its scope.
fn job_passed(boot: u32) -> Result<()> {
    let steps = job_steps(boot)?;
    let failed: Vec<String> = steps
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(name, _, why)| format!("{name}: {why}"))
        .collect();
    check(failed.is_empty(), || {
        format!("job steps failed at boot {boot}: {}", failed.join("; "))
    })?;
    let text = fs::read_to_string(format!("{STATE}/job-{boot}.log")).unwrap_or_default();
    check(
        text.contains(&format!("cgroup 0::/ghgate.slice/{RUNNER_UNIT}")),
        || format!("the job did not run in ghgate.slice: {text}"),
    )?;
    let container = steps.iter().find(|(n, _, _)| n == "container");
    check(
        container.is_some_and(|(_, _, out)| out.contains(&format!("0::/system.slice/{CONTAINER_SCOPE}"))),
        || format!("the container stand-in did not run in its own scope: {container:?}"),
    )
}

/// The gateway recorded each tool's session with the cgroup it came from: the runner's for
/// curl, git and node; the container's scope for the stand-in.
fn records() -> Result<()> {
    let out = must(GHGATE, &["sessions", "list", "--json"])?;
    let rows: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let find = |exe: &str, cgroup: &str, host: &str| {
        rows.iter().any(|r| {
            r["exe"].as_str().is_some_and(|e| e.contains(exe))
                && r["cgroup"].as_str().is_some_and(|c| c.contains(cgroup))
                && r["hosts"].as_array().is_some_and(|h| h.iter().any(|h| h == host))
        })
    };
    let runner = format!("ghgate.slice/{RUNNER_UNIT}");
    for (exe, cgroup, host) in [
        ("curl", runner.as_str(), "api.github.com"),
        ("git-remote-http", runner.as_str(), "github.com"),
        ("node", runner.as_str(), "api.github.com"),
        ("curl", CONTAINER_SCOPE, "api.github.com"),
    ] {
        check(find(exe, cgroup, host), || {
            format!("no recorded session of {exe} from {cgroup} to {host}: {out}")
        })?;
    }
    say(&format!(
        "{} sessions recorded, each step's among them",
        rows.len()
    ));
    Ok(())
}

fn monotonic(unit: &str, property: &str) -> Result<u64> {
    let out = must("systemctl", &["show", "--value", "-p", property, unit])?;
    out.trim()
        .parse()
        .map_err(|e| format!("{unit} {property}={out:?}: {e}"))
}

fn second_boot() -> Result<Next> {
    say(&format!(
        "second boot, {:.1} s after the kernel started",
        uptime()
    ));
    clock_synchronised()?;
    // The runner's job ran at boot, ordered after the gateway was ready.
    job_passed(3)?;
    let ready = monotonic("ghgate.service", "ActiveEnterTimestampMonotonic")?;
    let job = monotonic(RUNNER_UNIT, "ExecMainStartTimestampMonotonic")?;
    check(ready > 0 && ready < job, || {
        format!("the runner's job started at {job} µs, before the gateway was ready at {ready} µs")
    })?;
    let t = Instant::now();
    must(GHGATE, &["doctor", "--min-free", "256M"])?;
    say(&format!("doctor passed in {:.1} s", t.elapsed().as_secs_f64()));

    let t = Instant::now();
    must(GHGATE, &["uninstall", "--purge"])?;
    say(&format!("uninstall done in {:.1} s", t.elapsed().as_secs_f64()));
    nothing_left()?;
    // The runner still works, outside the slice.
    write(&format!("{STATE}/boots"), "4\n", 0o644)?;
    must("systemctl", &["restart", RUNNER_UNIT])?;
    let job = fs::read_to_string(format!("{STATE}/job-4.log")).unwrap_or_default();
    check(
        job.contains(&format!("cgroup 0::/system.slice/{RUNNER_UNIT}")),
        || format!("after uninstall the runner's job ran elsewhere: {job}"),
    )?;
    // Nothing names the gateway's unit. The slice's unit file is gone, but systemd keeps the
    // (empty) slice active until it is stopped: left out of this check, a known gap (uninstall
    // cannot stop it while a runner not yet restarted is inside).
    let units = must(
        "systemctl",
        &["list-units", "--all", "--plain", "--no-legend", "ghgate.service"],
    )?;
    check(units.trim().is_empty(), || format!("units left: {units}"))?;
    Ok(Next::Done)
}

/// After uninstall: no ghgate program in the kernel, no pin, no unit, no file install added,
/// the CA out of the system bundle and the runner's `.env` as it was.
fn nothing_left() -> Result<()> {
    let mut programs = Vec::new();
    for _ in 0..50 {
        programs = aya::programs::loaded_programs()
            .filter_map(std::result::Result::ok)
            .filter_map(|p| p.name_as_str().map(str::to_owned))
            .filter(|n| n.starts_with("ghgate_"))
            .collect();
        if programs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check(programs.is_empty(), || {
        format!("programs still loaded after uninstall: {programs:?}")
    })?;
    let left: Vec<&str> = [
        "/sys/fs/bpf/ghgate",
        "/etc/systemd/system/ghgate.service",
        "/etc/systemd/system/ghgate.slice",
        "/etc/systemd/system/actions.runner.org-repo.runner1.service.d",
        "/etc/ghgate",
        "/usr/local/bin/ghgate",
        "/usr/local/share/ghgate",
        "/usr/local/share/ca-certificates/ghgate.crt",
        "/var/lib/ghgate",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    check(left.is_empty(), || format!("left behind by uninstall: {left:?}"))?;
    let bundle = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let ours = fs::read_dir("/etc/ssl/certs")
        .map(|rd| {
            rd.filter_map(std::result::Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("ghgate"))
                .count()
        })
        .unwrap_or(0);
    check(ours == 0 && !bundle.is_empty(), || {
        format!("{ours} ghgate entries left in /etc/ssl/certs")
    })?;
    let env = fs::read_to_string(format!("{RUNNER_DIR}/.env")).unwrap_or_default();
    check(env == "LANG=C.UTF-8\n", || {
        format!("the runner's .env after uninstall: {env:?}")
    })?;
    say("nothing left behind");
    Ok(())
}
