//! The end-to-end harness: test cgroups, a gateway child process, loopback servers, and the
//! probe client. Everything a test creates in the kernel is named `ghgate-test-<pid>-<n>` and
//! removed on drop, even when the test fails; leftovers of dead test processes are swept first.
//!
//! Safety: programs are only ever attached to a cgroup this harness created, holding only
//! processes this harness started. Servers listen on loopback only.
pub mod attack;
pub mod chromium;
pub mod hook;
pub mod https;
pub mod s3;

// The fakes that know nothing of the gateway (TLS upstreams, git, DNS, GitHub's edge, crafted
// ClientHellos) live in ghgate-test-support, shared with the gateway's own in-process tests.
pub use ghgate_test_support::{dns, edge, fixtures, free_port, hello, loopback_v4, servers};

use std::{
    fs,
    io::{BufRead, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// True when this process may load and attach BPF programs. Under `CI=true` a missing
/// capability is a failure, not a skip.
pub fn privileged() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the end-to-end tests are not running as root: they must run in CI");
    }
    if !root {
        eprintln!("skipping: needs root (set CI=true to make this a failure)");
    }
    root
}

/// Paths of the binaries under test, next to this test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("GHGATE_E2E_{}", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first (or set {var})",
        path.display()
    );
    path
}

pub fn cgroup2_mount() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .expect("no cgroup2 mount")
}

/// A unique name for this test's kernel objects.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes cgroups and pins left by test processes that no longer exist.
pub fn sweep_leftovers() {
    let owner =
        |name: &str| -> Option<u32> { name.strip_prefix("ghgate-test-")?.split('-').next()?.parse().ok() };
    if let Ok(rd) = fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = Command::new(bin("ghgate"))
                    .args(["detach", "--config"])
                    .arg(write_pin_only_config(&e.path()))
                    .output();
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(cgroup2_mount()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name).is_some_and(|pid| !pid_alive(pid)) {
                remove_cgroup(&e.path());
            }
        }
    }
}

fn write_pin_only_config(pin_dir: &Path) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ghgate-sweep-{}.toml", std::process::id()));
    fs::write(
        &path,
        format!(
            "[redirect]\ncgroup = \"ghgate-sweep\"\npin_dir = \"{}\"\n[[intercept]]\ncidrs = [\"127.0.0.1/32\"]\nports = [1]\n",
            pin_dir.display()
        ),
    )
    .expect("write sweep config");
    path
}

fn remove_cgroup(dir: &Path) {
    // Children first (a cgroup with children cannot be removed).
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    // Kill whatever is left inside (only our own processes can be there), then remove.
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove test cgroup {}", dir.display());
}

/// A cgroup of this test's own, removed on drop.
pub struct TestCgroup {
    pub name: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        sweep_leftovers();
        let name = unique("ghgate-test");
        let dir = cgroup2_mount().join(&name);
        fs::create_dir(&dir).expect("create test cgroup");
        Self { name, dir }
    }

    /// A sibling cgroup for things that must not be intercepted by this test's programs.
    pub fn child(&self, suffix: &str) -> PathBuf {
        let dir = self.dir.join(suffix);
        fs::create_dir_all(&dir).expect("create child cgroup");
        dir
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    remove_cgroup(&e.path());
                }
            }
        }
        remove_cgroup(&self.dir);
    }
}

/// What a test configures; rendered to the TOML the gateway reads.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub intercept: Vec<(Vec<String>, Vec<String>, Vec<u16>)>,
    pub overrides: Vec<(String, Vec<String>)>,
    pub dns_servers: Vec<String>,
    pub on_gateway_down: &'static str,
    pub min_ttl_secs: u64,
    pub retry_secs: u64,
    /// Whole-host mode (`cgroup = "host"`): only ever inside a QEMU guest (vm-tests), never on a
    /// development or CI machine.
    pub host_mode: bool,
    /// `[tls]`: ports whose connections are TLS, names terminated, extra upstream roots.
    pub tls_ports: Vec<u16>,
    pub tls_intercept: Option<Vec<String>>,
    /// `[tls] passthrough`: names relayed untouched.
    pub tls_passthrough: Vec<String>,
    pub upstream_extra_roots: Vec<PathBuf>,
    /// The `[github]` table (GitHub's address ranges, mediated as a whole). None: the harness
    /// default, [`GithubSpec::reserved`], so that no test is affected by ranges it did not ask for.
    pub github: Option<GithubSpec>,
    /// Extra TOML appended to the config (e.g. an `[http]` section).
    pub extra_toml: String,
    /// The governed cgroup is this child of the test's cgroup instead of the test cgroup
    /// itself (so that its siblings, e.g. container scopes, are not governed by inheritance).
    pub governed_child: Option<String>,
    /// `[listen] shards`: None leaves the default (one per CPU). One shard makes the upstream
    /// connections a test counts independent of which shard the kernel gave each connection.
    pub shards: Option<usize>,
    /// `[listen] drain_secs`: None leaves the default.
    pub drain_secs: Option<u64>,
    /// The open files limit (soft, hard) the gateway is started with (`prlimit`); None: the
    /// test's own.
    pub open_files: Option<(u64, u64)>,
}

/// The `[github]` table: GitHub's published address ranges, mediated as a whole (every TCP port
/// but the TLS ones refused, UDP refused, TLS ports redirected to the gateway).
///
/// `GithubSpec::ranges(&cidrs).allow_ports(&[22]).refreshed_from(&url, 1)`
#[derive(Clone, Debug)]
pub struct GithubSpec {
    /// `"meta"` or `"off"`.
    pub ranges: &'static str,
    /// The snapshot's content, in the format of GitHub's meta API; written next to the config.
    pub snapshot: Option<String>,
    pub meta_url: Option<String>,
    pub meta_lists: Option<Vec<String>>,
    /// 0: never refresh (every test's default: nothing is fetched unless a test says where from).
    pub refresh_secs: u64,
    pub allow_ports: Vec<u16>,
}

impl GithubSpec {
    /// A loopback range no test uses (`loopback_v4()` never gives 127.254.x.y): the harness's
    /// stand-in for GitHub's ranges in tests that are about something else.
    pub const RESERVED: &'static str = "127.254.254.0/24";

    pub fn reserved() -> Self {
        Self::ranges(&[Self::RESERVED.to_owned()])
    }

    /// A snapshot listing `cidrs` as GitHub's API addresses; never refreshed.
    pub fn ranges(cidrs: &[String]) -> Self {
        Self::snapshot(edge::meta_document(&[("api", cidrs.to_vec())]))
    }

    /// A snapshot with this content (a meta document, or anything a test wants to feed it).
    pub fn snapshot(doc: String) -> Self {
        Self {
            ranges: "meta",
            snapshot: Some(doc),
            meta_url: None,
            meta_lists: None,
            refresh_secs: 0,
            allow_ports: Vec::new(),
        }
    }

    pub fn off() -> Self {
        Self {
            ranges: "off",
            ..Self::reserved()
        }
    }

    /// Other TCP ports let through to GitHub's addresses unmediated.
    pub fn allow_ports(mut self, ports: &[u16]) -> Self {
        self.allow_ports = ports.to_vec();
        self
    }

    /// Refreshed from `url` every `secs` seconds.
    pub fn refreshed_from(mut self, url: &str, secs: u64) -> Self {
        self.meta_url = Some(url.to_owned());
        self.refresh_secs = secs;
        self
    }

    pub fn lists(mut self, lists: &[&str]) -> Self {
        self.meta_lists = Some(lists.iter().map(|l| l.to_string()).collect());
        self
    }

    /// The TOML table, with the snapshot written into `dir`.
    fn render(&self, dir: &Path) -> String {
        let mut toml = format!(
            "[github]\nranges = \"{}\"\nrefresh_secs = {}\nallow_ports = {:?}\n",
            self.ranges, self.refresh_secs, self.allow_ports
        );
        if let Some(doc) = &self.snapshot {
            let path = edge::write_snapshot(dir, "github-meta.json", doc);
            toml += &format!("snapshot = {}\n", serde_json::to_string(&path).unwrap());
        }
        if let Some(url) = &self.meta_url {
            toml += &format!("meta_url = {}\n", serde_json::to_string(url).unwrap());
        }
        if let Some(lists) = &self.meta_lists {
            toml += &format!("meta_lists = {}\n", serde_json::to_string(lists).unwrap());
        }
        toml
    }
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            intercept: Vec::new(),
            overrides: Vec::new(),
            dns_servers: Vec::new(),
            on_gateway_down: "refuse",
            min_ttl_secs: 1,
            retry_secs: 1,
            host_mode: false,
            tls_ports: vec![443],
            tls_intercept: None,
            tls_passthrough: Vec::new(),
            upstream_extra_roots: Vec::new(),
            github: None,
            extra_toml: String::new(),
            governed_child: None,
            shards: None,
            drain_secs: None,
            open_files: None,
        }
    }
}

/// A `ghgate run` child process with its own config, pins and log; detached on drop.
pub struct Gateway {
    pub config: PathBuf,
    /// The gateway's `state_dir` (its CA, and by default its session store under `record/`).
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    pub listen_port: u16,
    child: Option<Child>,
    /// Cgroup the gateway process itself is started in (None: the test's own).
    run_in: Option<PathBuf>,
    open_files: Option<(u64, u64)>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(cgroup: &TestCgroup, spec: &GatewaySpec) -> Self {
        Self::start_in(cgroup, spec, None)
    }

    /// Starts the gateway with its own process placed in `run_in` (a cgroup this test made).
    pub fn start_in(cgroup: &TestCgroup, spec: &GatewaySpec, run_in: Option<PathBuf>) -> Self {
        // The safety rule: whole-host mode redirects every process of the machine, so it only
        // ever runs inside a vm-test guest, which sets this variable from its init.
        assert!(
            !spec.host_mode || std::env::var_os("GHGATE_VM_GUEST").is_some(),
            "whole-host mode is only tested inside a QEMU guest (cargo xtask vm-test)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&cgroup.name);
        let listen_port = free_port();
        let shards = spec.shards.map(|n| format!("shards = {n}\n")).unwrap_or_default()
            + &spec
                .drain_secs
                .map(|n| format!("drain_secs = {n}\n"))
                .unwrap_or_default();
        let mut toml = format!(
            "state_dir = \"{}\"\n\n[redirect]\ncgroup = \"{}\"\npin_dir = \"{}\"\non_gateway_down = \"{}\"\n\n[listen]\nipv4 = \"127.0.0.1:{listen_port}\"\nipv6 = \"[::1]:{listen_port}\"\n{shards}\n[log]\nformat = \"json\"\n\n",
            dir.path().join("state").display(),
            if spec.host_mode {
                "host".to_owned()
            } else {
                match &spec.governed_child {
                    Some(child) => format!("{}/{child}", cgroup.name),
                    None => cgroup.name.clone(),
                }
            },
            pin_dir.display(),
            spec.on_gateway_down
        );
        for (hosts, cidrs, ports) in &spec.intercept {
            toml += &format!(
                "[[intercept]]\nhosts = {}\ncidrs = {}\nports = {:?}\n\n",
                serde_json::to_string(hosts).unwrap(),
                serde_json::to_string(cidrs).unwrap(),
                ports
            );
        }
        toml += &format!(
            "[dns]\nservers = {}\nmin_ttl_secs = {}\nretry_secs = {}\n[dns.overrides]\n",
            serde_json::to_string(&spec.dns_servers).unwrap(),
            spec.min_ttl_secs,
            spec.retry_secs
        );
        for (host, addrs) in &spec.overrides {
            toml += &format!("\"{host}\" = {}\n", serde_json::to_string(addrs).unwrap());
        }
        toml += &format!(
            "[tls]\nports = {:?}\nupstream_extra_roots = {}\n",
            spec.tls_ports,
            serde_json::to_string(&spec.upstream_extra_roots).unwrap()
        );
        if let Some(names) = &spec.tls_intercept {
            toml += &format!("intercept = {}\n", serde_json::to_string(names).unwrap());
        }
        if !spec.tls_passthrough.is_empty() {
            toml += &format!(
                "passthrough = {}\n",
                serde_json::to_string(&spec.tls_passthrough).unwrap()
            );
        }
        toml += &spec
            .github
            .clone()
            .unwrap_or_else(GithubSpec::reserved)
            .render(dir.path());
        toml += &spec.extra_toml;
        let config = dir.path().join("ghgate.toml");
        fs::write(&config, toml).expect("write config");
        let log = dir.path().join("gateway.log");
        let mut gw = Self {
            config,
            state_dir: dir.path().join("state"),
            pin_dir,
            log,
            listen_port,
            child: None,
            run_in,
            open_files: spec.open_files,
            _dir: dir,
        };
        gw.spawn();
        gw
    }

    /// (Re)starts the process and waits until it logs that it is ready.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // The program and arguments that become the gateway: `prlimit … -- ghgate` execs it,
        // with the limit set.
        let mut gateway: Vec<std::ffi::OsString> = Vec::new();
        if let Some((soft, hard)) = self.open_files {
            gateway.extend([
                "prlimit".into(),
                format!("--nofile={soft}:{hard}").into(),
                "--".into(),
            ]);
        }
        gateway.push(bin("ghgate").into());
        let mut cmd = match &self.run_in {
            None => {
                let mut c = Command::new(&gateway[0]);
                c.args(&gateway[1..]);
                c
            }
            Some(cg) => {
                // Enter the cgroup first, then become the gateway.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                    .arg(cg)
                    .args(&gateway);
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log);
        let already = self
            .logs()
            .iter()
            .filter(|l| l["message"] == "gateway ready")
            .count();
        self.child = Some(cmd.spawn().expect("spawn ghgate"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .logs()
                .iter()
                .filter(|l| l["message"] == "gateway ready")
                .count()
                > already
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ghgate exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ghgate not ready after 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM without waiting: the gateway begins its orderly stop (a drain, then the record
    /// sealed) while the test watches.
    /// (Nothing when it is not running; a child not yet waited for still takes the signal.)
    pub fn begin_stop(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// SIGTERM (an orderly stop: queued records are written and the segment sealed), and wait
    /// until the process is gone.
    pub fn terminate(&mut self) {
        self.begin_stop();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("ghgate did not stop within 15 s of SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `ghgate ARGS… --config <this config>`, asserting success; its standard output.
    pub fn ghgate_ok(&self, args: &[&str]) -> String {
        let out = self.ghgate(args);
        assert!(
            out.status.success(),
            "ghgate {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ids of the sessions recorded so far, in `sessions list` order.
    pub fn session_ids(&self) -> Vec<String> {
        self.ghgate_ok(&["sessions", "list", "--json"])
            .lines()
            .map(|l| {
                let row: Value = serde_json::from_str(l).unwrap();
                row["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Every session's `sessions show`, joined, once `done` holds of it (waits up to 10 s, then
    /// panics naming `what`).
    pub fn shown_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        eventually(what, Duration::from_secs(10), || {
            let text: String = self
                .session_ids()
                .iter()
                .map(|id| self.ghgate_ok(&["sessions", "show", id]))
                .collect();
            done(&text).then_some(text)
        })
    }

    /// Every policy decision recorded so far (from the HAR export of every session).
    pub fn decisions(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for id in self.session_ids() {
            let har: Value =
                serde_json::from_str(&self.ghgate_ok(&["sessions", "export", &id, "--format", "har"]))
                    .unwrap();
            for e in har["log"]["entries"].as_array().unwrap() {
                all.extend(e["_ghgate"]["decisions"].as_array().cloned().unwrap_or_default());
            }
        }
        all
    }

    /// kill -9, and wait until the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines whose message mentions `text`.
    pub fn logs_mentioning(&self, text: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }

    /// Log lines of relayed connections.
    pub fn relayed(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == "connection relayed")
            .collect()
    }

    /// Waits for the first relayed connection, lets a moment pass for any further (looping or
    /// unexpected) ones, then asserts there was exactly one.
    pub fn assert_exactly_one_relay(&self, timeout: Duration) {
        self.wait_log("a relay", timeout, |l| {
            l.iter().any(|l| l["message"] == "connection relayed")
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.relayed().len(),
            1,
            "expected exactly one relayed connection:\n{}",
            self.log_text()
        );
    }

    /// Waits until `pred` holds over the log lines.
    pub fn wait_log(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if pred(&logs) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; gateway log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ghgate secrets trace --from-value --config <this config>`, the secret given on standard
    /// input as a caller would (never on the command line): what it printed, and whether it
    /// succeeded.
    pub fn trace_value(&self, secret: &str) -> (String, bool) {
        let mut child = Command::new(bin("ghgate"))
            .args(["secrets", "trace", "--from-value", "--config"])
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ghgate");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{secret}\n").as_bytes())
            .expect("write the secret");
        let out = child.wait_with_output().expect("wait for ghgate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (text, out.status.success())
    }

    /// `ghgate <args…> --config <this config>`.
    pub fn ghgate(&self, args: &[&str]) -> Output {
        Command::new(bin("ghgate"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run ghgate")
    }

    /// `ghgate exec --config <this config> -- PROGRAM`: a command for PROGRAM inside the
    /// intercepted cgroup; add its arguments with `.args(…)`.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(bin("ghgate"));
        cmd.arg("exec")
            .arg("--config")
            .arg(&self.config)
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs the probe inside the intercepted cgroup through `ghgate exec`, one JSON per attempt.
    pub fn probe(&self, args: &[&str]) -> Vec<Value> {
        let out = self
            .exec(bin("ghgate-probe"))
            .args(args)
            .output()
            .expect("run ghgate exec");
        parse_probe(out)
    }

    /// ghgate's CA certificate (`ghgate ca export`), written to a file for clients to trust.
    pub fn ca_file(&self) -> PathBuf {
        let out = self.ghgate(&["ca", "export"]);
        assert!(
            out.status.success(),
            "ca export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.config.with_file_name("ghgate-ca.pem");
        fs::write(&path, &out.stdout).expect("write CA");
        path
    }

    pub fn status(&self) -> Value {
        let out = self.ghgate(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

/// `setpriv` arguments that make the probe an unprivileged user (nobody), as most hostile
/// processes would be.
pub const AS_NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups"];

impl Gateway {
    /// The probe inside the intercepted cgroup, run through `setpriv SETPRIV…` (see
    /// [`AS_NOBODY`]): one JSON value per attempt.
    pub fn probe_as(&self, setpriv: &[&str], args: &[&str]) -> Vec<Value> {
        let out = self
            .exec("setpriv")
            .args(setpriv)
            .arg(bin("ghgate-probe"))
            .args(args)
            .output()
            .expect("run ghgate exec setpriv");
        parse_probe(out)
    }

    /// `ghgate sessions refusals --json`: every refusal in the store, one object each.
    pub fn refusals(&self) -> Vec<Value> {
        self.ghgate_ok(&["sessions", "refusals", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("sessions refusals --json prints JSON lines"))
            .collect()
    }

    /// The gateway's `connection refused` log lines.
    pub fn refusal_logs(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == "connection refused")
            .collect()
    }

    /// Waits for the refusal `want` describes to be both logged and recorded (each field of
    /// `want`, e.g. `{"layer": "kernel", "reason": "not_tcp", "orig_dst": "…", "tgid": 123}`,
    /// must match), and returns the log line and the record.
    pub fn expect_refusal(&self, want: &Value) -> (Value, Value) {
        self.try_refusal(want, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\ngateway log:\n{}", self.log_text()))
    }

    /// As [`Gateway::expect_refusal`], waiting at most `timeout` for each of the two, and saying
    /// what is missing instead of panicking.
    pub fn try_refusal(&self, want: &Value, timeout: Duration) -> Result<(Value, Value), String> {
        let fits = |v: &Value| {
            want.as_object()
                .expect("want is an object")
                .iter()
                .all(|(k, w)| &v[k] == w)
        };
        let deadline = Instant::now() + timeout;
        let line = loop {
            if let Some(l) = self.refusal_logs().into_iter().find(|l| fits(l)) {
                break l;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no `connection refused` log line with {want}; those logged: {:?}",
                    self.refusal_logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        for field in ["layer", "reason", "orig_dst", "tgid", "uid", "comm"] {
            if line[field].is_null() {
                return Err(format!("the log line does not name its {field}: {line}"));
            }
        }
        let deadline = Instant::now() + timeout;
        let record = loop {
            let out = self.ghgate(&["sessions", "refusals", "--json"]);
            if !out.status.success() {
                return Err(format!(
                    "`ghgate sessions refusals --json` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let all: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if let Some(r) = all.iter().find(|r| fits(r)) {
                break r.clone();
            }
            if Instant::now() > deadline {
                return Err(format!("no refusal record with {want}; the store has: {all:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for field in ["layer", "reason", "orig_dst", "tgid", "uid", "comm", "at"] {
            if record[field].is_null() {
                return Err(format!("the record does not name its {field}: {record}"));
            }
        }
        Ok((line, record))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        let out = self.ghgate(&["detach"]);
        if !out.status.success() {
            eprintln!("ghgate detach failed: {}", String::from_utf8_lossy(&out.stderr));
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// The probe run directly, outside the intercepted cgroup.
pub fn probe_outside(args: &[&str]) -> Vec<Value> {
    parse_probe(
        Command::new(bin("ghgate-probe"))
            .args(args)
            .output()
            .expect("run probe"),
    )
}

fn parse_probe(out: Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("probe json"))
        .collect()
}

/// Polls `f` until it returns Some, or fails after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a child's stdout lines as they come (for long-running probes).
pub fn lines_of(child: &mut Child) -> impl Iterator<Item = String> + use<> {
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok)
}

/// Checks that nothing of this test is left in the kernel (by asking the kernel, via bpftool).
pub fn assert_cgroup_clean(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(dir)
        .output()
        .context("bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let attached: Vec<&str> = text.lines().filter(|l| l.contains("ghgate")).collect();
    if !attached.is_empty() {
        bail!("programs still attached to {}: {attached:?}", dir.display());
    }
    Ok(())
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().map_err(|e| anyhow!("{s}: {e}")).unwrap()
}

/// Probe attempts made across a gateway's kill and restart, by what happened to each.
pub struct Attempts<'a> {
    /// Relayed by the gateway.
    pub proxied: Vec<&'a Value>,
    /// Reached the destination without the gateway: a bypass.
    pub direct: Vec<&'a Value>,
    /// Refused at connect (ECONNREFUSED): the fail-closed answer.
    pub refused: Vec<&'a Value>,
    /// Reached the gateway in the instant it died (reset): never forwarded anywhere else.
    pub cut: Vec<&'a Value>,
}

impl<'a> Attempts<'a> {
    pub fn classify(results: &'a [Value]) -> Self {
        let pick = |f: &dyn Fn(&Value) -> bool| results.iter().filter(|r| f(r)).collect::<Vec<_>>();
        Self {
            proxied: pick(&|r| r["ok"] == true && r["proxied"] == true),
            direct: pick(&|r| r["ok"] == true && r["proxied"] == false),
            refused: pick(&|r| r["ok"] == false && r["errno"] == libc::ECONNREFUSED),
            cut: pick(&|r| r["ok"] == false && r["errno"] != libc::ECONNREFUSED),
        }
    }

    /// Fail-closed: no bypass, some refusals, at most two connections cut by the kill.
    pub fn assert_fail_closed(&self) {
        assert!(
            self.direct.is_empty(),
            "connections bypassed the gateway: {:?}",
            self.direct
        );
        assert!(
            !self.refused.is_empty(),
            "no connection was refused while the gateway was down"
        );
        assert!(
            self.cut.len() <= 2,
            "more failures than connections in flight at the kill: {:?}",
            self.cut
        );
    }
}

impl Gateway {
    /// Starts the probe in the intercepted cgroup in the background; join the handle for its
    /// results (one JSON value per attempt) once the child has exited.
    pub fn probe_in_background(&self, args: &[&str]) -> (Child, std::thread::JoinHandle<Vec<Value>>) {
        let mut child = self
            .exec(bin("ghgate-probe"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the probe under ghgate exec");
        let lines = lines_of(&mut child);
        let reader = std::thread::spawn(move || {
            lines
                .map(|l| serde_json::from_str::<Value>(&l).expect("probe json"))
                .collect::<Vec<_>>()
        });
        (child, reader)
    }
}

/// A process's resident set and its peak, in KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `cmd` under the kernel login uid `login`, as if that user had logged in: a shell writes
/// /proc/self/loginuid (root may; each write starts a new login session) and execs `cmd`, keeping
/// its directory and environment. `sudo`, `su` and `setpriv` inside keep the login uid, as they
/// keep a real login's.
pub fn with_login(cmd: &Command, login: u32) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg(r#"echo "$0" > /proc/self/loginuid && exec "$@""#)
        .arg(login.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// A GitHub Actions runner's worker, as the gateway knows one: a process whose executable is
/// named `Runner.Worker` (here a copy of `sh`, in a directory removed on drop). A step is its
/// child, started with the job's environment; the gateway takes a job's facts from there only.
pub struct RunnerWorker {
    dir: tempfile::TempDir,
}

impl Default for RunnerWorker {
    fn default() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::copy("/bin/sh", dir.path().join("Runner.Worker")).expect("copy sh");
        Self { dir }
    }
}

impl RunnerWorker {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("Runner.Worker")
    }

    /// A command that runs `sh` with the arguments given to it as a step of this worker (its
    /// child, inheriting the environment set on the command, as a job's), and exits as it does;
    /// with `via`, in the gateway's cgroup (`ghgate exec`).
    pub fn sh(&self, via: Option<&Gateway>) -> Command {
        let mut cmd = match via {
            Some(gw) => gw.exec(self.path()),
            None => Command::new(self.path()),
        };
        cmd.arg("-c").arg(r#"sh "$@" & wait $!"#).arg("worker");
        cmd
    }
}

/// One HTTP/1.1 request read from `conn`, for the tests' hand-made receivers: its head (as
/// text) and its body (`Content-Length` bytes, as text); `None` if the peer closed first.
pub fn read_request(conn: &mut impl std::io::Read) -> Option<(String, String)> {
    let mut req = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = conn.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return None;
        }
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_owned();
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if req.len() >= end + 4 + len {
            return Some((
                head,
                String::from_utf8_lossy(&req[end + 4..end + 4 + len]).into_owned(),
            ));
        }
    }
}

/// The value of header `name` in a request head, if it has one.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}
