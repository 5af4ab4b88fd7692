//! End-to-end: a runner host's coverage and health. Container scopes appearing beside the
//! governed cgroup are attached to (and released when gone), and `ghgate doctor` tells a healthy
//! host from one whose CA is not trusted, whose programs are detached, or whose store is full.
//!
//! Every cgroup here is a child of the test's own; every server and client is on loopback.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use ghgate_e2e::{
    Gateway, GatewaySpec, RunnerWorker, TestCgroup, bin, eventually,
    fixtures::SmallDisk,
    loopback_v4, privileged,
    servers::{Kind, Server},
};
use serde_json::Value;

/// The probe, started in the cgroup `dir` (which this test made), with an empty environment as
/// a container's process has (the job's variables are not passed into a `docker run`).
fn probe_in(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new("sh")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(dir)
        .arg(bin("ghgate-probe"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().next().expect("one probe line")).unwrap()
}

fn scope_pins(gw: &Gateway) -> Vec<String> {
    fs::read_dir(gw.pin_dir.join("scopes"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A gateway governing `<test cgroup>/runner` (as a runner's slice) that watches
/// `<test cgroup>/system.slice` for container scopes; and that parent's path below the mount.
fn containers_gateway(cg: &TestCgroup, spec: GatewaySpec) -> (Gateway, String) {
    let slice = format!("{}/system.slice", cg.name);
    let gw = Gateway::start(
        cg,
        &GatewaySpec {
            governed_child: Some("runner".into()),
            extra_toml: format!("[redirect.containers]\nenabled = true\nparents = [\"{slice}\"]\n"),
            ..spec
        },
    );
    (gw, slice)
}

/// [`containers_gateway`] intercepting a loopback echo server's address and port (relayed as
/// TCP); the server.
fn echo_containers_gateway(cg: &TestCgroup) -> (Gateway, String, Server) {
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let (gw, slice) = containers_gateway(
        cg,
        GatewaySpec {
            intercept: vec![(
                vec![],
                vec![format!("{}/32", upstream.addr.ip())],
                vec![upstream.addr.port()],
            )],
            ..Default::default()
        },
    );
    (gw, slice, upstream)
}

/// The runtime makes the scope `name` (and starts the container's process in it after): the
/// gateway attaches to it.
fn new_scope(cg: &TestCgroup, gw: &Gateway, slice: &str, name: &str) -> PathBuf {
    let scope = cg.child(&format!("system.slice/{name}"));
    gw.wait_log("the scope attached", Duration::from_secs(10), |l| {
        l.iter().any(|l| {
            l["message"] == "attached to a container scope" && l["scope"] == format!("{slice}/{name}")
        })
    });
    scope
}

#[test]
fn a_container_scope_is_attached_as_it_appears_and_released_when_it_goes() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let (gw, slice, upstream) = echo_containers_gateway(&cg);
    // A sibling of the governed cgroup that no name matches: never attached.
    let other = cg.child("system.slice/ssh.service");
    let r = probe_in(&other, &["connect", &upstream.addr.to_string()]);
    assert_eq!(r["proxied"], false, "a cgroup nobody governs was redirected: {r}");

    // The runtime makes the scope, then starts the container's process in it.
    let scope = new_scope(&cg, &gw, &slice, "docker-0123abcd.scope");
    let r = probe_in(&scope, &["connect", &upstream.addr.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["proxied"], true,
        "the container's connection went around the gateway: {r}"
    );
    assert_eq!(r["peer"], upstream.addr.to_string(), "{r}");
    let relayed = gw.wait_log("the relay", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "connection relayed" && l["tgid"] == r["pid"])
    });
    let line = relayed
        .iter()
        .find(|l| l["message"] == "connection relayed" && l["tgid"] == r["pid"])
        .unwrap();
    assert_eq!(line["orig_dst"], upstream.addr.to_string(), "{line}");
    assert_eq!(scope_pins(&gw).len(), 1, "{:?}", scope_pins(&gw));
    let sibling = probe_in(&other, &["connect", &upstream.addr.to_string()]);
    assert_eq!(
        sibling["proxied"], false,
        "attaching the scope governed its sibling: {sibling}"
    );

    // The container exits and its scope is removed: the links go with it.
    fs::remove_dir(&scope).unwrap();
    gw.wait_log("the scope released", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "container scope gone; its links are unpinned")
    });
    eventually("the scope's pins removed", Duration::from_secs(5), || {
        scope_pins(&gw).is_empty().then_some(())
    });
}

/// A job's step in the governed runner cgroup: a runner's worker starts it with the job's
/// environment (as a runner gives a step); killed on drop.
struct Job {
    _worker: RunnerWorker,
    process: std::process::Child,
    step: u32,
}

impl Job {
    fn start(governed: &Path, run_id: &str) -> Self {
        let worker = RunnerWorker::default();
        let process = worker
            .sh(None)
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec sleep 120"])
            .arg(governed)
            .env("GITHUB_REPOSITORY", "octo/app")
            .env("GITHUB_RUN_ID", run_id)
            .env("GITHUB_JOB", "build")
            .spawn()
            .unwrap();
        let step = in_cgroup_from(governed, process.id());
        Self {
            _worker: worker,
            process,
            step,
        }
    }
}

/// The pid of the child of `parent` that has moved itself into the cgroup `dir`, once it has.
fn in_cgroup_from(dir: &Path, parent: u32) -> u32 {
    eventually("the process in its cgroup", Duration::from_secs(5), || {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<u32>().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, after)| after.split_whitespace().nth(1)?.parse::<u32>().ok())
                        == Some(parent)
                })
            })
    })
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.step.to_string()).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `sessions show` of the session of process `pid`, once recorded.
fn session_of(gw: &Gateway, pid: &Value) -> String {
    let id = eventually("the container's session", Duration::from_secs(10), || {
        gw.ghgate_ok(&["sessions", "list", "--json"])
            .lines()
            .find_map(|l| {
                let row: Value = serde_json::from_str(l).unwrap();
                (row["tgid"] == *pid).then(|| row["id"].as_str().unwrap().to_owned())
            })
    });
    gw.ghgate_ok(&["sessions", "show", &id])
}

#[test]
fn a_container_connection_is_attributed_to_the_one_job_running() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let (gw, slice, upstream) = echo_containers_gateway(&cg);
    let governed = cg.dir.join("runner");
    let scope = new_scope(&cg, &gw, &slice, "docker-a77a77.scope");
    let connect = || {
        let r = probe_in(&scope, &["connect", &upstream.addr.to_string()]);
        assert_eq!(r["proxied"], true, "{r}");
        r
    };

    // No job running: the container's connection is intercepted, recorded, and not attributed.
    let r = connect();
    let shown = session_of(&gw, &r["pid"]);
    assert!(
        shown.contains("attributed_by=container scope") && shown.contains("not attributed, 0 jobs running"),
        "{shown}"
    );
    assert!(!shown.contains("GITHUB_RUN_ID"), "{shown}");

    // One job on the runner: the container it started is its own, though no process of the
    // container descends from it (its environment is empty).
    let job = Job::start(&governed, "777");
    let r = connect();
    let shown = session_of(&gw, &r["pid"]);
    for fact in [
        "GITHUB_REPOSITORY=octo/app",
        "GITHUB_RUN_ID=777",
        "GITHUB_JOB=build",
        "the one job running in",
    ] {
        assert!(shown.contains(fact), "{fact}:\n{shown}");
    }
    let environ = fs::read(format!("/proc/{}/environ", job.step)).unwrap();
    assert!(!environ.is_empty(), "the job's step has its environment");

    // A process in the runner's cgroup that names a job of its own, not started by a worker:
    // no second job (which would stop the attribution), and not the job attributed.
    let mut rogue = Command::new("sh")
        .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec sleep 120"])
        .arg(&governed)
        .env("GITHUB_REPOSITORY", "evil/other")
        .env("GITHUB_RUN_ID", "666")
        .spawn()
        .unwrap();
    let rogue_pid = rogue.id();
    eventually("the rogue in the runner's cgroup", Duration::from_secs(5), || {
        fs::read_to_string(governed.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == rogue_pid.to_string())
            .then_some(())
    });
    let r = connect();
    let shown = session_of(&gw, &r["pid"]);
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert!(
        shown.contains("GITHUB_RUN_ID=777") && shown.contains("the one job running in"),
        "{shown}"
    );
    assert!(
        !shown.contains("GITHUB_RUN_ID=666") && !shown.contains("evil/other"),
        "{shown}"
    );

    // Two jobs at once (two runners on the host): nobody's, said so, never a guess.
    let second = Job::start(&governed, "778");
    let r = connect();
    let shown = session_of(&gw, &r["pid"]);
    assert!(shown.contains("not attributed, 2 jobs running"), "{shown}");
    assert!(!shown.contains("GITHUB_RUN_ID"), "{shown}");

    // A process in the runner's own cgroup is never attributed by scope.
    drop(second);
    let r = probe_in(&governed, &["connect", &upstream.addr.to_string()]);
    assert_eq!(r["proxied"], true, "{r}");
    let shown = session_of(&gw, &r["pid"]);
    assert!(!shown.contains("attributed_by"), "{shown}");
    drop(job);
}

/// `ghgate doctor` with the gateway's config.
fn doctor(gw: &Gateway, extra: &[&str]) -> (i32, String) {
    let out: Output = Command::new(bin("ghgate"))
        .arg("doctor")
        .arg("--config")
        .arg(&gw.config)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

/// The line of one check: (status word, the rest).
fn check<'a>(out: &'a str, name: &str) -> (&'a str, &'a str) {
    out.lines()
        .find_map(|l| {
            let (status, rest) = l.split_once(' ')?;
            let rest = rest.trim_start();
            rest.strip_prefix(name)
                .filter(|r| r.starts_with(' '))
                .map(|r| (status, r.trim()))
        })
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"))
}

/// The environment a runner's jobs get after install, pointing at a bundle that holds the
/// system's roots and this gateway's CA (the host's own trust store is not touched).
fn job_env(gw: &Gateway) -> PathBuf {
    let ca = gw.ca_file();
    let dir = gw.config.parent().unwrap();
    let bundle = dir.join("bundle.pem");
    let system = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    fs::write(&bundle, system + &fs::read_to_string(&ca).unwrap()).unwrap();
    let env = dir.join("runner.env");
    let b = bundle.display();
    fs::write(
        &env,
        format!(
            "LANG=C.UTF-8\nNODE_EXTRA_CA_CERTS={}\nREQUESTS_CA_BUNDLE={b}\nSSL_CERT_FILE={b}\nGIT_SSL_CAINFO={b}\nCURL_CA_BUNDLE={b}\n",
            ca.display()
        ),
    )
    .unwrap();
    env
}

/// `ghgate doctor` with the job environment of [`job_env`], wanting `min_free` in the store.
fn doctor_as_a_job(gw: &Gateway, min_free: &str) -> (i32, String) {
    let env = job_env(gw);
    doctor(gw, &["--env-file", env.to_str().unwrap(), "--min-free", min_free])
}

/// A gateway intercepting one name (answered by a loopback server), as a runner's would.
fn named_spec() -> GatewaySpec {
    let ip = loopback_v4();
    GatewaySpec {
        intercept: vec![(vec!["api.github.test".into()], vec![], vec![443])],
        overrides: vec![("api.github.test".into(), vec![ip.to_string()])],
        ..Default::default()
    }
}

const CA_CLIENTS: [&str; 5] = ["ca: curl", "ca: git", "ca: node", "ca: python3", "ca: go"];

#[test]
fn doctor_passes_on_a_healthy_host() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let gw = Gateway::start(&cg, &named_spec());
    let (code, out) = doctor_as_a_job(&gw, "1M");
    for name in [
        "programs",
        "listener",
        "open files",
        "github ranges",
        "names",
        "store",
        "recorder key",
        "gaps",
    ] {
        assert_eq!(check(&out, name).0, "ok", "{name}:\n{out}");
    }
    assert!(
        check(&out, "listener")
            .1
            .contains(&format!("pid {}", gw.pid().unwrap())),
        "{out}"
    );
    assert!(check(&out, "programs").1.contains(&cg.name), "{out}");
    assert!(check(&out, "open files").1.contains(" open (pid "), "{out}");
    for name in CA_CLIENTS {
        let (status, detail) = check(&out, name);
        assert_eq!(status, "ok", "{name}: {detail}\n{out}");
        assert!(detail.contains("selftest.ghgate.invalid"), "{out}");
    }
    let (status, detail) = check(&out, "ca: go");
    if which("go") {
        assert_eq!(status, "ok", "{out}");
    } else {
        assert_eq!(
            (status, detail),
            ("skip", "go is not installed: no Go client checked")
        );
    }
    // The clock is the host's: synchronised or not, the line says which, and only it may fail.
    let (clock, _) = check(&out, "clock");
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    if clock == "ok" {
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("checks passed"), "{out}");
    } else {
        assert_eq!(failed.len(), 1, "only the host's clock may fail here:\n{out}");
        assert!(failed[0].contains("clock"), "{out}");
        assert_eq!(code, 1, "{out}");
    }
    // The self-test connections went through the kernel redirect and were answered there.
    let answered = gw
        .logs()
        .iter()
        .filter(|l| l["message"] == "self-test answered")
        .count();
    assert!(answered >= 4, "{answered} self-test answers:\n{}", gw.log_text());
    // Doctor leaves no cgroup of its own behind.
    let left: Vec<_> = fs::read_dir(&cg.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ghgate-doctor"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[test]
fn doctor_fails_when_the_clients_do_not_trust_the_ca() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let gw = Gateway::start(&cg, &named_spec());
    // The jobs' environment without the CA: only the system's roots.
    let env = gw.config.with_file_name("plain.env");
    fs::write(&env, "LANG=C.UTF-8\n").unwrap();
    let (code, out) = doctor(&gw, &["--env-file", env.to_str().unwrap(), "--min-free", "1M"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(check(&out, "programs").0, "ok", "{out}");
    for name in CA_CLIENTS {
        let (status, detail) = check(&out, name);
        assert_eq!(status, "FAIL", "{name}:\n{out}");
        assert!(
            detail.starts_with("handshake or request failed"),
            "{name}: {detail}"
        );
    }
    // What the clients said names the certificate, not something else going wrong.
    let (_, curl) = check(&out, "ca: curl");
    assert!(curl.contains("certificate") || curl.contains("issuer"), "{curl}");
    let failed = gw
        .logs()
        .iter()
        .filter(|l| l["message"] == "self-test failed (does the client trust ghgate's CA?)")
        .count();
    assert!(failed >= 1, "{}", gw.log_text());
}

/// A gateway whose hard limit of open files is low (512 here: it raises its soft limit to that
/// and no further) warns at start, and doctor fails the check naming the limit.
#[test]
fn doctor_fails_when_the_gateway_may_open_too_few_files() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            open_files: Some((256, 512)),
            ..named_spec()
        },
    );
    let warned = gw
        .logs()
        .into_iter()
        .find(|l| l["open_files"] == 512)
        .unwrap_or_else(|| panic!("no warning of the low limit:\n{}", gw.log_text()));
    assert_eq!(warned["level"], "WARN", "{warned}");
    let (code, out) = doctor_as_a_job(&gw, "1M");
    assert_eq!(code, 1, "{out}");
    let (status, detail) = check(&out, "open files");
    assert_eq!(status, "FAIL", "{out}");
    assert!(detail.contains("may open only 512 files"), "{detail}");
}

#[test]
fn doctor_fails_when_the_programs_are_detached() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let mut gw = Gateway::start(&cg, &named_spec());
    gw.terminate();
    gw.ghgate_ok(&["detach"]);
    let (code, out) = doctor_as_a_job(&gw, "1M");
    assert_eq!(code, 1, "{out}");
    let (status, detail) = check(&out, "programs");
    assert_eq!(status, "FAIL", "{out}");
    assert!(detail.starts_with("not attached"), "{detail}");
    assert_eq!(check(&out, "listener").0, "FAIL", "{out}");
    // Not redirected, the clients reach nothing at the self-test address.
    for name in CA_CLIENTS {
        assert_eq!(check(&out, name).0, "FAIL", "{name}:\n{out}");
    }
}

#[test]
fn doctor_fails_when_the_store_is_nearly_full() {
    if !privileged() {
        return;
    }
    // The store on a real, small filesystem, filled from outside the gateway.
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(tmp.path(), "8m");
    let cg = TestCgroup::new();
    let gw = Gateway::start(
        &cg,
        &GatewaySpec {
            extra_toml: format!("[record]\ndir = \"{}\"\n", disk.dir.join("record").display()),
            ..named_spec()
        },
    );
    let (_, out) = doctor_as_a_job(&gw, "1M");
    assert_eq!(check(&out, "store").0, "ok", "room to spare: {out}");

    // Half a MiB left where one is wanted: nearly full.
    let free = |dir: &Path| -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut n = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        n.next().unwrap() * n.next().unwrap()
    };
    let filler = disk.dir.join("filler");
    let size = free(&disk.dir) - 512 * 1024;
    let made = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(made.success());
    let (code, out) = doctor_as_a_job(&gw, "1M");
    assert_eq!(code, 1, "{out}");
    let (status, detail) = check(&out, "store");
    assert_eq!(status, "FAIL", "{out}");
    assert!(detail.ends_with("nearly full"), "{detail}");
    assert!(detail.contains("(at least 1.0 MiB wanted)"), "{detail}");
    assert_eq!(check(&out, "programs").0, "ok", "{out}");

    // Nothing left: the store cannot take a write at all, and doctor says so.
    fs::remove_file(&filler).unwrap();
    let _ = disk.fill();
    let (code, out) = doctor_as_a_job(&gw, "1M");
    assert_eq!(code, 1, "{out}");
    let (status, detail) = check(&out, "store");
    assert_eq!(status, "FAIL", "{out}");
    assert!(
        detail.starts_with("cannot write in") && detail.contains("No space left on device"),
        "{detail}"
    );
}

/// A job container's curl, run as the runtime would run it: in a `docker-<id>.scope` beside the
/// governed cgroup, in a mount namespace of its own where `/etc/ssl/certs/ca-certificates.crt` is
/// the image's (the public roots only), with an empty environment (the runner passes neither the
/// host's store nor its `.env` into a container). `$1` is the image's bundle, `$2` the file
/// mounted over it as `-v HOST:/etc/ssl/certs/ca-certificates.crt:ro` would ("" for none).
const CONTAINER: &str = r#"set -e
mount --bind "$1" /etc/ssl/certs/ca-certificates.crt
if [ -n "$2" ]; then mount --bind "$2" /etc/ssl/certs/ca-certificates.crt; fi
shift 2
exec env -i PATH=/usr/local/bin:/usr/bin:/bin "$@"
"#;

fn in_container(scope: &Path, image: &Path, mounted: Option<&Path>) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(scope)
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            CONTAINER,
            "container",
        ])
        .arg(image)
        .arg(mounted.map(|p| p.as_os_str()).unwrap_or_default())
        .args([
            "curl",
            "-sS",
            "--max-time",
            "15",
            "--resolve",
            "selftest.ghgate.invalid:443:127.254.71.71",
            "https://selftest.ghgate.invalid/",
        ])
        .output()
        .unwrap()
}

#[test]
fn a_job_container_trusts_the_ca_only_through_the_documented_mount() {
    if !privileged() {
        return;
    }
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if !system.is_file() {
        panic!("this test needs the Debian system bundle at {}", system.display());
    }
    let cg = TestCgroup::new();
    let (gw, slice) = containers_gateway(&cg, named_spec());
    let dir = gw.config.parent().unwrap();
    // The image's store: the public roots, as a stock image ships them.
    let image = dir.join("image-bundle.pem");
    fs::copy(system, &image).unwrap();
    // The host's store after `ghgate install` (update-ca-certificates appended the CA).
    let host = dir.join("host-bundle.pem");
    fs::write(
        &host,
        fs::read_to_string(system).unwrap() + &fs::read_to_string(gw.ca_file()).unwrap(),
    )
    .unwrap();
    let scope = new_scope(&cg, &gw, &slice, "docker-feedc0de.scope");

    // Without the mount: intercepted all the same, and the client refuses the gateway's leaf.
    let out = in_container(&scope, &image, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "curl trusted the gateway without the CA: {stderr}"
    );
    assert!(
        stderr.contains("certificate") || stderr.contains("issuer"),
        "not a certificate failure: {stderr}"
    );
    gw.wait_log("the refused handshake", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "self-test failed (does the client trust ghgate's CA?)")
    });

    // With the host's bundle mounted over the image's, as the README says.
    let out = in_container(&scope, &image, Some(&host));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ghgate self-test: ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.wait_log("the answered handshake", Duration::from_secs(10), |l| {
        l.iter()
            .any(|l| l["message"] == "self-test answered" && l["comm"] == "curl")
    });
    // The mounts were the container's: the host's bundle is untouched.
    assert!(
        !fs::read_to_string(system)
            .unwrap()
            .contains(fs::read_to_string(gw.ca_file()).unwrap().trim()),
        "the host's bundle changed"
    );
}
